"""Durations read the same in ``ebbctl status`` and ``ebbctl top``."""

from __future__ import annotations

import pytest
from ebb.host.fmt import duration


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(42.9, "42s"), (185, "3m05s"), (3723.5, "1h02m"), (2 * 86400 + 3 * 3600, "2d03h"),
     (None, "-"), ("soon", "-")],
)
def test_duration(seconds: object, shown: str) -> None:
    assert duration(seconds) == shown
