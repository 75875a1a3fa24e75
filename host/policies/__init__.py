"""The default policies shipped with ebb.

Each policy is a directory of ``*.policy`` files evaluated in name order as one
program, with every parameter in its ``00-defines.policy``:

- ``cooperative`` (the default, installed as ``/etc/ebb/policy.d``): uses what
  ebb-agent reports; guests without an agent get the classic rule.
- ``classic``: the MOM article's policy (ksmtuned KSM, ballooning by host
  freeable memory), using only virtio-balloon statistics.

See README.md next to these files and docs/policy.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Tuple

POLICY_NAMES: Tuple[str, ...] = ("classic", "cooperative")
DEFAULT_POLICY = "cooperative"
#: Where packages install the default policy for ebbd.
SYSTEM_POLICY_DIR = "/etc/ebb/policy.d"


def policy_dir(name: str = DEFAULT_POLICY) -> Path:
    """The directory of a shipped policy; ValueError for an unknown name."""
    if name not in POLICY_NAMES:
        raise ValueError(
            f"unknown default policy {name!r}; choose one of {', '.join(POLICY_NAMES)}"
        )
    return Path(__file__).resolve().parent / name
