"""``python -m ebb.protocol``: see :mod:`ebb.protocol.tool`."""

from __future__ import annotations

from .tool import main

if __name__ == "__main__":
    raise SystemExit(main())
