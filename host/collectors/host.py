"""The host's memory state: /proc/meminfo, /proc/vmstat, PSI and KSM sysfs.

:class:`HostCollector` reads everything under one ``proc_root`` and one
``sys_root`` (``/proc`` and ``/sys`` on a host, fixture trees in tests) and
returns a :class:`HostSample`: the policy's host fields (names as in
``ebb.host.policy.fields.HOST_FIELDS``, KiB, MOM semantics) plus the figures
``ebbctl status`` shows.

Semantics worth knowing (docs/policy.md has the table):

- ``mem_available`` is MemTotal less reserved hugepages (MOM uses MemTotal, which
  counts them), and ``mem_free`` is MemFree+Buffers+Cached, as in MOM (the
  kernel's own MemAvailable is ``HostSample.mem_available_kib``). The pressure
  share is freeable memory over that total.
- ``swap_in``/``swap_out`` are cumulative pages (pswpin/pswpout); policies that
  want activity use ``swap_in_rate``/``swap_out_rate`` (pages/s, measured with
  the host's monotonic clock over the last interval, or over the newest span of
  at least :data:`SWAP_RATE_WINDOW_S` when samples come closer: ebbd ticks
  again within 0.25 s when the host crosses a threshold, and a few pages in a
  quarter second would read as heavy swapping; 0 on the first sample).
- ``ksmd_cpu_usage`` is ksmd's CPU time over the last interval, in % of one CPU
  (0 on the first sample). ksmd is found as the kernel thread named ``ksmd``.
- A kernel without KSM or PSI gives ``None`` for those fields; nothing raises
  except a missing /proc/meminfo (then ``host.proc_root`` is wrong).
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ebb.host.collectors.procfs import (
    clock_ticks_per_s,
    freeable_kib,
    host_memory_kib,
    hugetlb_kib,
    parse_meminfo,
    parse_pressure,
    parse_stat_cpu_ticks,
    parse_vmstat,
    read_ksm,
)
from ebb.host.pressure import sample_pressure
from ebb.host.units import PAGE_KIB

LOG = logging.getLogger(__name__)


class CollectorError(RuntimeError):
    """The host's memory state cannot be read at all (wrong ``host.proc_root``?)."""


@dataclass(frozen=True)
class HostSample:
    """One reading of the host. ``fields`` is what the policy sees as ``Host.<field>``."""

    #: time.time() when taken.
    taken_at: float
    #: Policy host fields (KiB unless the field table says otherwise); None = unavailable.
    fields: dict[str, Any]
    #: MemTotal less reserved hugepages (see :func:`host_memory_kib`).
    mem_total_kib: int
    mem_free_kib: int
    #: MemFree + Buffers + Cached (the article's "freeable" memory).
    freeable_kib: int
    #: The kernel's MemAvailable estimate (None on kernels before 3.14).
    mem_available_kib: int | None
    swap_total_kib: int
    swap_used_kib: int
    #: Pages (not KiB) swapped in / out per second: /proc/vmstat counts pages, and
    #: ``ebbctl status`` shows these as they are (``host.pressure`` converts).
    swap_in_per_s: float
    swap_out_per_s: float
    psi_some_avg10: float | None
    psi_full_avg10: float | None
    #: The KSM files that exist, by file name (run, pages_to_scan, ...); empty without KSM.
    ksm: dict[str, int] = field(default_factory=dict)
    #: Memory reserved as hugepages (already left out of ``mem_total_kib``).
    hugetlb_kib: int = 0

    @property
    def freeable_share(self) -> float:
        """Freeable memory as a share of the host's memory (the article's pressure measure)."""
        return self.freeable_kib / self.mem_total_kib if self.mem_total_kib else 0.0

    def status_dict(self) -> dict[str, Any]:
        """The ``host`` object of ``ebbctl status --json`` (shared/contracts)."""
        return {
            "mem_total_kib": self.mem_total_kib,
            "hugetlb_kib": self.hugetlb_kib,
            "mem_free_kib": self.mem_free_kib,
            "freeable_kib": self.freeable_kib,
            "mem_available_kib": self.mem_available_kib,
            "swap_total_kib": self.swap_total_kib,
            "swap_used_kib": self.swap_used_kib,
            "swap_in_per_s": round(self.swap_in_per_s, 3),
            "swap_out_per_s": round(self.swap_out_per_s, 3),
            "psi_some_avg10": self.psi_some_avg10,
            "ksm": {
                key: self.ksm.get(key)
                for key in ("run", "pages_to_scan", "sleep_millisecs", "pages_shared",
                            "pages_sharing")
            },
        }


#: Shortest span a swap rate is measured over when samples come closer together.
SWAP_RATE_WINDOW_S = 1.0


class HostCollector:
    """Reads the host's memory state; keeps just enough history for rates."""

    def __init__(
        self,
        proc_root: Path | str = "/proc",
        sys_root: Path | str = "/sys",
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.proc_root = Path(proc_root)
        self.sys_root = Path(sys_root)
        self.ksm_dir = self.sys_root / "kernel" / "mm" / "ksm"
        self._clock = clock
        self._wall_clock = wall_clock
        self._ticks_per_s = clock_ticks_per_s()
        self._previous_at: float | None = None
        # (clock, pswpin, pswpout) of recent samples: one at least
        # SWAP_RATE_WINDOW_S old and those after it (a few at most).
        self._swap_history: deque[tuple[float, int, int]] = deque(maxlen=64)
        self._previous_ksmd_ticks: int | None = None
        self._ksmd_pid: int | None = None
        self._missing_logged: set[str] = set()

    # --- public -----------------------------------------------------------------

    def collect(self, vm_assigned_kib: int | None = None) -> HostSample:
        """Read the host now.

        ``vm_assigned_kib`` (memory assigned to all running VMs, from the
        hypervisor) becomes ``ksm_shareable``, as ksmtuned computes it.
        """
        now = self._clock()
        meminfo = self._read_meminfo()
        vmstat = self._read_optional("vmstat", parse_vmstat) or {}
        pressure = self._read_pressure()
        ksm = read_ksm(self.ksm_dir)
        if not ksm:
            self._log_missing_once("ksm", "no KSM in %s: KSM fields are nil", self.ksm_dir)

        interval_s = None if self._previous_at is None else now - self._previous_at
        swap_in, swap_out = vmstat.get("pswpin"), vmstat.get("pswpout")
        swap_in_rate = swap_out_rate = 0.0
        if swap_in is not None and swap_out is not None:
            swap_in_rate, swap_out_rate = self._swap_rates(now, swap_in, swap_out)
        ksmd_cpu = self._ksmd_cpu_usage(interval_s) if ksm else None
        self._previous_at = now

        mem_total = host_memory_kib(meminfo)
        mem_free = meminfo.get("MemFree", 0)
        freeable = freeable_kib(meminfo)
        swap_total = meminfo.get("SwapTotal", 0)
        swap_used = max(0, swap_total - meminfo.get("SwapFree", 0))
        psi_some = pressure.get("psi_some_avg10") if pressure else None
        psi_full = pressure.get("psi_full_avg10") if pressure else None

        fields: dict[str, Any] = {
            "mem_available": mem_total,
            "mem_unused": mem_free,
            "mem_free": freeable,
            "swap_in": swap_in,
            "swap_out": swap_out,
            "anon_pages": meminfo.get("AnonPages"),
            "swap_total": swap_total,
            "swap_usage": swap_used,
            "ksm_run": ksm.get("run"),
            "ksm_pages_to_scan": ksm.get("pages_to_scan"),
            "ksm_sleep_millisecs": ksm.get("sleep_millisecs"),
            "ksm_pages_shared": ksm.get("pages_shared"),
            "ksm_pages_sharing": ksm.get("pages_sharing"),
            "ksm_pages_unshared": ksm.get("pages_unshared"),
            "ksm_pages_volatile": ksm.get("pages_volatile"),
            "ksm_full_scans": ksm.get("full_scans"),
            "ksm_merge_across_nodes": ksm.get("merge_across_nodes"),
            "ksm_shareable": vm_assigned_kib,
            "ksmd_cpu_usage": ksmd_cpu,
            "psi_some_avg10": psi_some,
            "psi_full_avg10": psi_full,
            "swap_in_rate": swap_in_rate,
            "swap_out_rate": swap_out_rate,
        }
        fields["meminfo_available"] = meminfo.get("MemAvailable")
        sample = HostSample(
            taken_at=self._wall_clock(),
            fields=fields,
            mem_total_kib=mem_total,
            mem_free_kib=mem_free,
            freeable_kib=freeable,
            mem_available_kib=meminfo.get("MemAvailable"),
            swap_total_kib=swap_total,
            swap_used_kib=swap_used,
            swap_in_per_s=swap_in_rate,
            swap_out_per_s=swap_out_rate,
            psi_some_avg10=psi_some,
            psi_full_avg10=psi_full,
            ksm=ksm,
            hugetlb_kib=hugetlb_kib(meminfo),
        )
        # What the host lacks, as one level (ebb.host.pressure); the engine sets it too.
        fields["pressure_level"] = sample_pressure(sample, PAGE_KIB).level
        return sample

    def _swap_rates(self, now: float, swap_in: int, swap_out: int) -> tuple[float, float]:
        """Pages/s swapped in and out since the newest sample a window old (module doc)."""
        history = self._swap_history
        while len(history) >= 2 and now - history[1][0] >= SWAP_RATE_WINDOW_S:
            history.popleft()
        rates = (0.0, 0.0)
        if history and now > history[0][0]:
            then, swap_in_then, swap_out_then = history[0]
            span = now - then
            rates = (max(0, swap_in - swap_in_then) / span, max(0, swap_out - swap_out_then) / span)
        history.append((now, swap_in, swap_out))
        return rates

    def qemu_rss_kib(self, pid: int) -> int | None:
        """Resident memory of a VM's QEMU process (see :func:`qemu_rss_kib`)."""
        return qemu_rss_kib(pid, self.proc_root)

    # --- internals --------------------------------------------------------------

    def _read_meminfo(self) -> dict[str, int]:
        path = self.proc_root / "meminfo"
        try:
            meminfo: dict[str, int] = parse_meminfo(
                path.read_text(encoding="ascii", errors="replace"))
        except OSError as err:
            raise CollectorError(
                f"cannot read {path}: {err.strerror} (is host.proc_root right?)"
            ) from err
        if "MemTotal" not in meminfo:
            raise CollectorError(f"{path} has no MemTotal line: not a Linux meminfo file")
        return meminfo

    def _read_optional(self, relative: str, parse: Callable[[str], Any]) -> Any:
        path = self.proc_root / relative
        try:
            return parse(path.read_text(encoding="ascii", errors="replace"))
        except OSError as err:
            self._log_missing_once(relative, "cannot read %s (%s): its fields are nil",
                                   path, err.strerror)
            return None

    def _read_pressure(self) -> dict[str, float | int] | None:
        path = self.proc_root / "pressure" / "memory"
        try:
            pressure: dict[str, float | int] = parse_pressure(
                path.read_text(encoding="ascii", errors="replace"))
            return pressure
        except OSError as err:
            # ENOENT: kernel without PSI; EOPNOTSUPP: booted with psi=0.
            hint = "boot with psi=1" if err.errno == errno.EOPNOTSUPP else "kernel has no PSI"
            self._log_missing_once("psi", "no memory PSI at %s (%s): PSI fields are nil",
                                   path, hint)
            return None

    def _ksmd_cpu_usage(self, interval_s: float | None) -> float | None:
        ticks = self._ksmd_ticks()
        if ticks is None:
            self._previous_ksmd_ticks = None
            return None
        previous, self._previous_ksmd_ticks = self._previous_ksmd_ticks, ticks
        if previous is None or not interval_s or interval_s <= 0:
            return 0.0
        used_s = max(0, ticks - previous) / self._ticks_per_s
        usage: float = round(100.0 * used_s / interval_s, 2)
        return usage

    def _ksmd_ticks(self) -> int | None:
        for attempt in range(2):
            if self._ksmd_pid is None:
                self._ksmd_pid = find_kernel_thread(self.proc_root, "ksmd")
                if self._ksmd_pid is None:
                    self._log_missing_once("ksmd", "no ksmd thread under %s: "
                                           "ksmd_cpu_usage is nil", self.proc_root)
                    return None
            try:
                text = (self.proc_root / str(self._ksmd_pid) / "stat").read_text(
                    encoding="ascii", errors="replace")
                ticks: int = parse_stat_cpu_ticks(text)
                return ticks
            except (OSError, ValueError, IndexError):
                # Kernel threads do not come and go, but be safe: look it up once more.
                self._ksmd_pid = None
                if attempt:
                    return None
        return None

    def _log_missing_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._missing_logged:
            self._missing_logged.add(key)
            LOG.info(message, *args)


def find_kernel_thread(proc_root: Path | str, name: str) -> int | None:
    """The pid of the kernel thread called ``name`` (child of kthreadd, pid 2)."""
    root = Path(proc_root)
    try:
        entries: Iterable[str] = os.listdir(root)
    except OSError:
        return None
    # kthreadd starts its threads early: low pids first finds ksmd quickly.
    for entry in sorted((e for e in entries if e.isdigit()), key=int):
        try:
            comm = (root / entry / "comm").read_text(encoding="ascii", errors="replace").strip()
        except OSError:
            continue
        if comm != name:
            continue
        try:
            stat = (root / entry / "stat").read_text(encoding="ascii", errors="replace")
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == 2:
            return int(entry)
    return None


def qemu_rss_kib(pid: int, proc_root: Path | str = "/proc") -> int | None:
    """Resident memory (KiB) of process ``pid``, None when it is gone.

    Read from ``PROC_ROOT/PID/statm`` (resident pages), which is what psutil's
    ``memory_info().rss`` reads too; reading it directly keeps ``proc_root``
    injectable without touching psutil's process-wide ``PROCFS_PATH``.
    """
    try:
        text = (Path(proc_root) / str(int(pid)) / "statm").read_text(encoding="ascii")
        return int(text.split()[1]) * PAGE_KIB
    except (OSError, ValueError, IndexError):
        return None
