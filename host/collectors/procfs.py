"""Parsers for the kernel files the host collector reads.

Each takes the file's text (or a root directory) and returns plain values, so
tests feed them fixture text. A missing file is the caller's business: these
functions only parse.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

LOG = logging.getLogger(__name__)

#: The KSM knobs and counters under /sys/kernel/mm/ksm, in the order ksmtuned lists them.
KSM_FILES = (
    "run",
    "pages_to_scan",
    "sleep_millisecs",
    "merge_across_nodes",
    "pages_shared",
    "pages_sharing",
    "pages_unshared",
    "pages_volatile",
    "full_scans",
)


def parse_meminfo(text: str) -> dict[str, int]:
    """``/proc/meminfo`` -> {key: KiB} (values without a unit, e.g. HugePages_Total, as is)."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        if not sep:
            continue
        parts = rest.split()
        if not parts:
            continue
        try:
            values[key.strip()] = int(parts[0])
        except ValueError:
            continue
    return values


def hugetlb_kib(meminfo: dict[str, int]) -> int:
    """Memory reserved as hugepages, KiB: the ``Hugetlb`` line (every page size, kernels
    5.x and later) or else ``HugePages_Total`` x ``Hugepagesize``."""
    if "Hugetlb" in meminfo:
        return max(0, meminfo["Hugetlb"])
    return max(0, meminfo.get("HugePages_Total", 0) * meminfo.get("Hugepagesize", 0))


def host_memory_kib(meminfo: dict[str, int]) -> int:
    """The host's memory as ebb counts it: MemTotal without reserved hugepages.

    Hugepages, once reserved, are neither free nor freeable for anything that is
    not hugepage-backed, and a balloon cannot return them: counting them would make
    a host that reserves most of its memory look comfortable (or, as a share, under
    pressure forever).
    """
    return max(0, meminfo.get("MemTotal", 0) - hugetlb_kib(meminfo))


def freeable_kib(meminfo: dict[str, int]) -> int:
    """MemFree + Buffers + Cached: the article's (and the policy's) freeable memory."""
    return meminfo.get("MemFree", 0) + meminfo.get("Buffers", 0) + meminfo.get("Cached", 0)


def freeable_share(meminfo: dict[str, int]) -> float | None:
    """:func:`freeable_kib` / :func:`host_memory_kib`: the article's pressure measure;
    None when the total is unknown."""
    total = host_memory_kib(meminfo)
    return freeable_kib(meminfo) / total if total > 0 else None


def parse_vmstat(text: str) -> dict[str, int]:
    """``/proc/vmstat`` -> {counter: value}."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 2:
            continue
        try:
            values[parts[0]] = int(parts[1])
        except ValueError:
            continue
    return values


def parse_pressure(text: str) -> dict[str, float | int]:
    """``/proc/pressure/memory`` -> psi_{some,full}_{avg10,avg60,avg300} (%), _total_us."""
    values: dict[str, float | int] = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts or parts[0] not in ("some", "full"):
            continue
        kind = parts[0]
        for item in parts[1:]:
            key, sep, raw = item.partition("=")
            if not sep:
                continue
            try:
                if key == "total":
                    values[f"psi_{kind}_total_us"] = int(raw)
                elif key in ("avg10", "avg60", "avg300"):
                    values[f"psi_{kind}_{key}"] = float(raw)
            except ValueError:
                continue
    return values


def read_ksm(ksm_dir: Path) -> dict[str, int]:
    """The KSM files that exist and parse under ``ksm_dir`` -> {file name: value}."""
    values: dict[str, int] = {}
    for name in KSM_FILES:
        try:
            values[name] = int((ksm_dir / name).read_text(encoding="ascii").strip())
        except (OSError, ValueError):
            continue
    return values


def parse_stat_cpu_ticks(text: str) -> int:
    """``/proc/PID/stat`` -> utime + stime in clock ticks.

    The command name (field 2) may contain spaces and parentheses, so fields are
    counted from the last ``)``.
    """
    after = text[text.rindex(")") + 2:].split()
    # after[0] is field 3 (state); utime and stime are fields 14 and 15.
    return int(after[11]) + int(after[12])


def clock_ticks_per_s() -> int:
    """The kernel's USER_HZ (what /proc/PID/stat counts in)."""
    try:
        return int(os.sysconf("SC_CLK_TCK"))
    except (ValueError, OSError):
        return 100
