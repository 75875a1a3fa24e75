"""Units the host side shares: the page size, and KiB as people read them.

The kernel counts swap-in and swap-out (``/proc/vmstat`` ``pswpin``,
``pswpout``, the agent's report) in pages; ebb speaks KiB everywhere else.
:data:`PAGE_KIB` is the one conversion, read from the host (``SC_PAGE_SIZE``).
"""

from __future__ import annotations

import os

#: KiB per page on this host (4 on x86-64; guests of the same architecture match).
PAGE_KIB: int = (os.sysconf("SC_PAGE_SIZE") // 1024) if hasattr(os, "sysconf") else 4


def pages_to_kib(pages: float) -> float:
    """``pages`` (a count or a rate) in KiB."""
    return pages * PAGE_KIB


def fmt_kib(kib: float) -> str:
    """KiB as people read it: 1.5 GiB, 300 MiB, 512 KiB."""
    size = abs(kib)
    sign = "-" if kib < 0 else ""
    if size >= 1024 * 1024:
        return f"{sign}{size / (1024 * 1024):.2f} GiB"
    if size >= 1024:
        return f"{sign}{size / 1024:.0f} MiB"
    return f"{sign}{size:.0f} KiB"
