"""Reading the guest's memory state from /proc.

Everything is read under one ``proc_root`` (``/proc`` in a guest, a fixture tree in
tests): ``meminfo`` for the memory figures, ``vmstat`` for the cumulative counters
and ``pressure/memory`` for pressure stall information (PSI).

The figures are parsed from the kernel's files rather than taken from psutil:
the protocol ships the kernel's raw fields (psutil's ``cached`` adds
SReclaimable, and its ``available`` substitutes its own estimate on old kernels),
the offer needs fields psutil does not expose (``Inactive(file)``, ``Dirty``,
``Writeback``), and psutil reads /proc through a process-wide ``PROCFS_PATH``
global, which would make ``proc_root`` a shared mutable setting. Not importing
psutil also keeps the agent's resident size down.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, FrozenSet, Mapping, Optional, Tuple

LOG = logging.getLogger(__name__)

DEFAULT_PROC_ROOT = "/proc"

# meminfo key -> sample attribute. Values in meminfo are in kB (KiB).
_MEMINFO_FIELDS: Tuple[Tuple[str, str], ...] = (
    ("MemTotal", "mem_total_kib"),
    ("MemFree", "mem_free_kib"),
    ("MemAvailable", "mem_available_kib"),
    ("Buffers", "buffers_kib"),
    ("Cached", "cached_kib"),
    ("SwapTotal", "swap_total_kib"),
    ("SwapFree", "swap_free_kib"),
    ("AnonPages", "anon_pages_kib"),
    ("Shmem", "shmem_kib"),
    ("Dirty", "dirty_kib"),
    ("Writeback", "writeback_kib"),
    ("Active(file)", "active_file_kib"),
    ("Inactive(file)", "inactive_file_kib"),
)
_VMSTAT_COUNTERS: FrozenSet[str] = frozenset(
    (
        "pswpin",
        "pswpout",
        "pgmajfault",
        "pgfault",
        "workingset_refault",
        "workingset_refault_anon",
        "workingset_refault_file",
    )
)

# Only the lines we use, found by one regex pass each: the agent samples twice a
# second and a line-by-line parse of vmstat's ~170 lines dominated its CPU use.
_MEMINFO_KEYS = "|".join(re.escape(key) for key, _ in (*_MEMINFO_FIELDS, ("SReclaimable", "")))
_MEMINFO_LINE = re.compile(r"^(" + _MEMINFO_KEYS + r"):\s+(\d+)", re.MULTILINE)
_VMSTAT_LINE = re.compile(r"^(" + "|".join(sorted(_VMSTAT_COUNTERS)) + r") (\d+)$", re.MULTILINE)

#: The fields of a protocol ``Report`` (besides ``seq``), in the spec's order.
REPORT_FIELDS: Tuple[str, ...] = (
    "mem_total_kib",
    "mem_free_kib",
    "mem_available_kib",
    "buffers_kib",
    "cached_kib",
    "swap_total_kib",
    "swap_free_kib",
    "anon_pages_kib",
    "shmem_kib",
    "dirty_kib",
    "pswpin",
    "pswpout",
    "pgmajfault",
    "pgfault",
    "workingset_refault",
    "psi_some_avg10",
    "psi_full_avg10",
    "psi_some_total_us",
    "psi_full_total_us",
)


class CollectError(Exception):
    """The guest's memory state cannot be read (a missing or unreadable /proc file)."""


@dataclass(frozen=True)
class MemorySample:
    """One reading of the guest's memory state.

    Memory figures in KiB as the kernel reports them; ``pswpin`` .. ``workingset_refault``
    are cumulative counters (pages or events since boot); PSI averages are percentages
    of wall time, totals are microseconds; PSI fields are ``None`` when the kernel has
    no PSI. ``monotonic_s`` is the local monotonic clock when the sample was taken.
    """

    monotonic_s: float
    mem_total_kib: int
    mem_free_kib: int
    mem_available_kib: int
    buffers_kib: int
    cached_kib: int
    swap_total_kib: int
    swap_free_kib: int
    anon_pages_kib: int
    shmem_kib: int
    dirty_kib: int
    writeback_kib: int
    active_file_kib: int
    inactive_file_kib: int
    pswpin: int
    pswpout: int
    pgmajfault: int
    pgfault: int
    workingset_refault: int
    psi_some_avg10: Optional[float]
    psi_full_avg10: Optional[float]
    psi_some_total_us: Optional[int]
    psi_full_total_us: Optional[int]

    def report_fields(self) -> Dict[str, Any]:
        """The fields of a protocol ``Report`` (all but ``seq``), by their spec names."""
        return {name: getattr(self, name) for name in REPORT_FIELDS}


@dataclass(frozen=True)
class Pressure:
    """The memory line pair of ``/proc/pressure/memory``."""

    some_avg10: float
    full_avg10: Optional[float]
    some_total_us: int
    full_total_us: Optional[int]


def parse_meminfo(text: str) -> Dict[str, int]:
    """The fields of ``/proc/meminfo`` the agent uses, as ``{key: KiB}``."""
    return {key: int(value) for key, value in _MEMINFO_LINE.findall(text)}


def parse_vmstat(text: str) -> Dict[str, int]:
    """The counters of ``/proc/vmstat`` the agent uses, as ``{name: value}``."""
    return {key: int(value) for key, value in _VMSTAT_LINE.findall(text)}


def parse_pressure(text: str) -> Optional[Pressure]:
    """``/proc/pressure/memory``; ``None`` when it has no ``some`` line."""
    lines: Dict[str, Dict[str, str]] = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        fields: Dict[str, str] = {}
        for item in parts[1:]:
            key, sep, value = item.partition("=")
            if sep:
                fields[key] = value
        lines[parts[0]] = fields
    try:
        some = lines["some"]
        some_avg10 = float(some["avg10"])
        some_total_us = int(some["total"])
    except (KeyError, ValueError):
        return None
    full_avg10: Optional[float] = None
    full_total_us: Optional[int] = None
    full = lines.get("full")
    if full is not None:
        try:
            full_avg10 = float(full["avg10"])
            full_total_us = int(full["total"])
        except (KeyError, ValueError):
            full_avg10 = full_total_us = None
    return Pressure(some_avg10, full_avg10, some_total_us, full_total_us)


def estimate_available_kib(meminfo: Mapping[str, int]) -> int:
    """MemAvailable for kernels older than 3.14, which do not report it.

    Free memory plus the file cache on the LRU lists (shmem lives on the anon lists,
    so it is not counted) and reclaimable slab: the kernel's own estimate without
    its watermark corrections, hence slightly optimistic.
    """
    file_lru = meminfo.get("Active(file)", 0) + meminfo.get("Inactive(file)", 0)
    if not file_lru:
        file_lru = max(
            0, meminfo.get("Cached", 0) + meminfo.get("Buffers", 0) - meminfo.get("Shmem", 0)
        )
    return meminfo.get("MemFree", 0) + file_lru + meminfo.get("SReclaimable", 0)


class MemoryCollector:
    """Takes :class:`MemorySample` readings from a /proc tree.

    ``proc_root`` is ``/proc`` in a guest and a fixture directory in tests;
    ``clock`` supplies ``monotonic_s``.
    """

    def __init__(
        self,
        proc_root: str = DEFAULT_PROC_ROOT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.proc_root = proc_root
        self._clock = clock
        self._psi_missing_logged = False

    def _path(self, *parts: str) -> str:
        return os.path.join(self.proc_root, *parts)

    def _read(self, *parts: str) -> str:
        path = self._path(*parts)
        with open(path, "rb") as f:
            return f.read().decode("ascii", "replace")

    def read_pressure(self) -> Optional[Pressure]:
        """Memory PSI, or ``None`` when the kernel has none (pre-4.20, CONFIG_PSI=n, psi=0)."""
        try:
            text = self._read("pressure", "memory")
        except OSError as err:
            # ENOENT: no PSI in this kernel; EOPNOTSUPP: booted with psi=0.
            if not self._psi_missing_logged:
                LOG.info(
                    "no memory pressure information (%s): reports carry no PSI; "
                    "kernels from 4.20 with CONFIG_PSI=y (and not booted with psi=0) have it",
                    os.strerror(err.errno) if err.errno else err,
                )
                self._psi_missing_logged = True
            if err.errno not in (errno.ENOENT, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EACCES):
                LOG.debug("reading %s failed: %s", self._path("pressure", "memory"), err)
            return None
        pressure = parse_pressure(text)
        if pressure is None and not self._psi_missing_logged:
            LOG.warning("cannot parse %s; reports carry no PSI", self._path("pressure", "memory"))
            self._psi_missing_logged = True
        return pressure

    def sample(self) -> MemorySample:
        """Read meminfo, vmstat and PSI now.

        Raises :class:`CollectError` when meminfo or vmstat cannot be read or meminfo has
        no MemTotal; a missing PSI file only leaves the PSI fields ``None``.
        """
        try:
            meminfo = parse_meminfo(self._read("meminfo"))
            vmstat = parse_vmstat(self._read("vmstat"))
        except OSError as err:
            raise CollectError(
                f"cannot read the guest's memory state: {err}; "
                f"is {self.proc_root!r} a mounted procfs?"
            ) from err
        if meminfo.get("MemTotal", 0) <= 0:
            raise CollectError(f"{self._path('meminfo')} has no MemTotal: not a Linux meminfo")
        pressure = self.read_pressure()
        kib = {attr: meminfo.get(key, 0) for key, attr in _MEMINFO_FIELDS}
        if "MemAvailable" not in meminfo:
            kib["mem_available_kib"] = min(kib["mem_total_kib"], estimate_available_kib(meminfo))
        if "workingset_refault" in vmstat:
            refault = vmstat["workingset_refault"]
        else:
            # Linux 5.9 split the counter into anon and file refaults.
            refault = vmstat.get("workingset_refault_anon", 0) + vmstat.get(
                "workingset_refault_file", 0
            )
        return MemorySample(
            monotonic_s=self._clock(),
            pswpin=vmstat.get("pswpin", 0),
            pswpout=vmstat.get("pswpout", 0),
            pgmajfault=vmstat.get("pgmajfault", 0),
            pgfault=vmstat.get("pgfault", 0),
            workingset_refault=refault,
            psi_some_avg10=pressure.some_avg10 if pressure else None,
            psi_full_avg10=pressure.full_avg10 if pressure else None,
            psi_some_total_us=pressure.some_total_us if pressure else None,
            psi_full_total_us=pressure.full_total_us if pressure else None,
            **kib,
        )
