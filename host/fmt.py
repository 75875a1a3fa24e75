"""Formatting shared by ebbctl's text views (``status``, ``top``)."""

from __future__ import annotations

from typing import Any


def duration(seconds: Any) -> str:
    """A long span compactly: ``42s``, ``3m05s``, ``1h02m``, ``2d03h``; ``-`` when unknown."""
    if not isinstance(seconds, (int, float)):
        return "-"
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
