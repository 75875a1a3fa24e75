"""Memory stall: the time a guest's workload waited for memory, inside and outside it.

Two places can make a guest wait for memory, and neither sees the other:

- **inside the guest**: its own reclaim, swap-ins from its swap disk, page cache it
  has to read again (the guest kernel's PSI, ``/proc/pressure/memory``);
- **on the host**: the guest's QEMU threads faulting in pages the host swapped out
  or reclaimed. The guest does not know (its clock simply moves on). libvirt puts
  every guest's QEMU in its own cgroup v2 group (``machine/qemu-N-NAME.libvirt-qemu``
  with ``emulator`` and ``vcpuN`` below it), and the host kernel's PSI counts the
  stalls of that group in its ``memory.pressure``. PSI memory counts reclaim and
  refaults of recently evicted pages; a swap-in of a page evicted long ago is an
  I/O wait (``io.pressure``), so the vCPU groups' I/O stall is read too. The
  major faults of the QEMU process (``/proc/PID/stat``) say how many such faults
  there were, and, where the host has delay accounting on
  (``kernel.task_delayacct``), its block I/O delay (``delayacct_blkio_ticks``)
  how long they took.

Beside memory, the vCPU groups' ``cpu.pressure`` says how long a vCPU was ready to
run but waited for a host CPU (``host_cpu_wait_vcpu_s``): the CPU share a guest lost
to the others, to QEMU's own threads and to ebbd. It is not a memory stall and is not
added to one; it explains latency that no memory figure does.

PSI ``total`` counters are cumulative microseconds; a run's figure is the delta
over the workload. Everything here but :class:`HostStallMeter` is pure.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

CLK_TCK = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")
QEMU_RUN_DIR = Path("/run/libvirt/qemu")


def parse_psi(text: str) -> Dict[str, int]:
    """``/proc/pressure/memory`` (or a cgroup's ``memory.pressure``) -> its totals (µs).

    ``{"some": ..., "full": ...}``; a line that is missing or unreadable is left out.
    """
    out: Dict[str, int] = {}
    for line in text.splitlines():
        words = line.split()
        if not words or words[0] not in ("some", "full"):
            continue
        for word in words[1:]:
            key, _, value = word.partition("=")
            if key == "total":
                with contextlib.suppress(ValueError):
                    out[words[0]] = int(value)
    return out


def psi_delta_s(before: Mapping[str, int], after: Mapping[str, int]) -> Dict[str, float]:
    """Seconds of ``some`` and ``full`` stall between two readings (keys both have)."""
    return {k: round(max(0, after[k] - before[k]) / 1e6, 3)
            for k in ("some", "full") if k in before and k in after}


#: Host /proc/vmstat counters a run records as deltas (``host_events``): what the
#: guests' memory cost the host outside swap. ``compact_stall``: a fault waited for
#: the kernel to assemble a huge page; ``thp_fault_fallback``: it got small pages
#: instead. QEMU asks for huge pages (MADV_HUGEPAGE) for guest memory. On the lab's
#: page cache runs these counts were the same with and without free page reporting.
HOST_EVENTS = ("compact_stall", "compact_fail", "thp_fault_alloc", "thp_fault_fallback",
               "pgmajfault")


def host_event_deltas(before: Mapping[str, int], after: Mapping[str, int]) -> Dict[str, int]:
    """:data:`HOST_EVENTS` counted between two ``/proc/vmstat`` readings (keys both have)."""
    return {k: max(0, after[k] - before[k]) for k in HOST_EVENTS if k in before and k in after}


def parse_proc_stat(text: str) -> Dict[str, int]:
    """Major faults and block-I/O delay ticks of a process, from ``/proc/PID/stat``.

    The counters are the whole thread group's. ``delayacct_blkio_ticks`` stays 0
    unless the kernel accounts delays (``kernel.task_delayacct=1``).
    """
    fields = text.rsplit(")", 1)[1].split()
    # Fields after the command: state is field 3 of proc(5), so field N is index N-3.
    out = {"majflt": int(fields[12 - 3])}
    if len(fields) > 42 - 3:
        out["delayacct_blkio_ticks"] = int(fields[42 - 3])
    return out


def cgroup_v2_dir(proc_cgroup: str, mount: Path) -> Optional[Path]:
    """The guest's own cgroup v2 group from its QEMU's ``/proc/PID/cgroup``.

    libvirt puts the process in ``.../qemu-N-NAME.libvirt-qemu/emulator`` and the
    vCPU threads in ``.../vcpuN``; the group above both holds every QEMU thread.
    ``None`` when the process sits in the root group (no group of its own).
    """
    for line in proc_cgroup.splitlines():
        if line.startswith("0::"):
            path = line[3:].strip()
            parts = [p for p in path.split("/") if p]
            if parts and (parts[-1] == "emulator" or parts[-1].startswith("vcpu")):
                parts = parts[:-1]
            if not parts:
                return None
            return mount.joinpath(*parts)
    return None


def cgroup_v2_mount(mounts: str) -> Optional[Path]:
    """Where the cgroup v2 hierarchy is mounted (``/sys/fs/cgroup`` or ``.../unified``)."""
    for line in mounts.splitlines():
        words = line.split()
        if len(words) >= 3 and words[2] == "cgroup2":
            return Path(words[1])
    return None


@dataclass
class GuestReading:
    """One reading of a guest's host-side counters."""

    majflt: Optional[int] = None
    blkio_ticks: Optional[int] = None
    psi: Dict[str, int] = field(default_factory=dict)
    vcpu_psi: Dict[str, int] = field(default_factory=dict)
    vcpu_io: Dict[str, int] = field(default_factory=dict)
    vcpu_cpu: Dict[str, int] = field(default_factory=dict)


def host_delta(before: GuestReading, after: GuestReading,
               delayacct: bool) -> Dict[str, Any]:
    """One guest's host-side figures over the workload."""
    out: Dict[str, Any] = {}
    if before.majflt is not None and after.majflt is not None:
        out["qemu_major_faults"] = max(0, after.majflt - before.majflt)
    if delayacct and before.blkio_ticks is not None and after.blkio_ticks is not None:
        out["qemu_blkio_delay_s"] = round(max(0, after.blkio_ticks - before.blkio_ticks)
                                          / CLK_TCK, 2)
    psi = psi_delta_s(before.psi, after.psi)
    if psi:
        out["host_stall_some_s"] = psi.get("some")
        out["host_stall_full_s"] = psi.get("full")
    vcpu = psi_delta_s(before.vcpu_psi, after.vcpu_psi)
    if vcpu:
        out["host_stall_vcpu_s"] = vcpu.get("some")
    vcpu_io = psi_delta_s(before.vcpu_io, after.vcpu_io)
    if vcpu_io:
        out["host_io_vcpu_s"] = vcpu_io.get("some")
    vcpu_cpu = psi_delta_s(before.vcpu_cpu, after.vcpu_cpu)
    if vcpu_cpu:
        out["host_cpu_wait_vcpu_s"] = vcpu_cpu.get("some")
    return out


def host_vcpu_wait_s(figures: Mapping[str, Any]) -> Optional[float]:
    """Seconds the guest's vCPUs waited on the host for memory or for a swap-in.

    A vCPU thread under TCG does no other synchronous I/O (the disks run on
    QEMU's I/O threads), so its I/O stall is its host swap-ins. A refault of a
    recently evicted page is both a memory and an I/O stall, so the two cannot
    be added: the larger is a lower bound of their union. Without vCPU groups,
    the whole QEMU group's memory stall.
    """
    mem, io = figures.get("host_stall_vcpu_s"), figures.get("host_io_vcpu_s")
    if mem is None and io is None:
        return figures.get("host_stall_some_s")
    return max(mem or 0.0, io or 0.0)


def guest_total_stall_s(figures: Mapping[str, Any]) -> Optional[float]:
    """The primary figure of one guest: seconds its workload waited for memory.

    Its own PSI ``some`` plus what its vCPUs waited on the host
    (:func:`host_vcpu_wait_s`). Under a 1-vCPU guest both stop the workload; they
    are counted by different kernels and do not overlap (the guest's clock does not
    see the host's stalls). ``None`` when neither side could be read.
    """
    inside = figures.get("guest_stall_some_s")
    outside = host_vcpu_wait_s(figures)
    if inside is None and outside is None:
        return None
    return round((inside or 0.0) + (outside or 0.0), 3)


def stall_summary(per_guest: Mapping[str, Mapping[str, Any]], elapsed_s: float
                  ) -> Dict[str, Any]:
    """A run's stall figures: totals over the guests and the share of wall time.

    ``stall_share_pct`` is the total stall divided by the guests' combined wall
    time (guests x workload seconds): 5 % means each guest waited, on average,
    one second in twenty.
    """
    def total(key: str) -> Optional[float]:
        values = [g[key] for g in per_guest.values() if g.get(key) is not None]
        return round(sum(values), 3) if values else None

    out: Dict[str, Any] = {
        "guest_stall_some_s": total("guest_stall_some_s"),
        "guest_stall_full_s": total("guest_stall_full_s"),
        "host_stall_some_s": total("host_stall_some_s"),
        "host_stall_vcpu_s": total("host_stall_vcpu_s"),
        "host_io_vcpu_s": total("host_io_vcpu_s"),
        "host_wait_s": total("host_wait_s"),
        "qemu_major_faults": total("qemu_major_faults"),
        "host_cpu_wait_vcpu_s": total("host_cpu_wait_vcpu_s"),
        "qemu_blkio_delay_s": total("qemu_blkio_delay_s"),
        "stall_s": total("stall_s"),
    }
    if out["stall_s"] is not None and elapsed_s > 0 and per_guest:
        out["stall_share_pct"] = round(out["stall_s"] / (elapsed_s * len(per_guest)) * 100, 2)
    return {k: v for k, v in out.items() if v is not None}


def _vcpu_psi(group: Path, resource: str) -> Dict[str, int]:
    """PSI totals of ``resource`` summed over the group's ``vcpuN`` subgroups."""
    out: Dict[str, int] = {}
    for vdir in sorted(group.glob("vcpu*")):
        try:
            text = (vdir / f"{resource}.pressure").read_text()
        except OSError:
            continue
        for key, value in parse_psi(text).items():
            out[key] = out.get(key, 0) + value
    return out


class HostStallMeter:
    """Reads each guest's QEMU counters at the workload's start and end."""

    def __init__(self, names: Sequence[str], proc: Path = PROC,
                 run_dir: Path = QEMU_RUN_DIR) -> None:
        self.names = list(names)
        self.proc = proc
        self.run_dir = run_dir
        try:
            self.delayacct = (proc / "sys/kernel/task_delayacct").read_text().strip() == "1"
        except OSError:
            self.delayacct = False
        try:
            self.mount = cgroup_v2_mount((proc / "mounts").read_text())
        except OSError:
            self.mount = None
        self._before: Dict[str, GuestReading] = {}
        self._after: Dict[str, GuestReading] = {}

    def _pid(self, name: str) -> Optional[int]:
        try:
            return int((self.run_dir / f"{name}.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def read(self, name: str) -> GuestReading:
        reading = GuestReading()
        pid = self._pid(name)
        if pid is None:
            return reading
        try:
            stat = parse_proc_stat((self.proc / str(pid) / "stat").read_text())
            reading.majflt = stat["majflt"]
            reading.blkio_ticks = stat.get("delayacct_blkio_ticks")
        except (OSError, ValueError, IndexError):
            pass
        group = self._group(pid)
        if group is None:
            return reading
        with contextlib.suppress(OSError):
            reading.psi = parse_psi((group / "memory.pressure").read_text())
        reading.vcpu_psi = _vcpu_psi(group, "memory")
        reading.vcpu_io = _vcpu_psi(group, "io")
        reading.vcpu_cpu = _vcpu_psi(group, "cpu")
        return reading

    def cpu_wait_us(self, name: str) -> Optional[int]:
        """Cumulative µs the guest's vCPUs waited for a host CPU (``None``: unreadable)."""
        pid = self._pid(name)
        group = self._group(pid) if pid is not None else None
        return _vcpu_psi(group, "cpu").get("some") if group is not None else None

    def _group(self, pid: int) -> Optional[Path]:
        if self.mount is None:
            return None
        try:
            return cgroup_v2_dir((self.proc / str(pid) / "cgroup").read_text(), self.mount)
        except OSError:
            return None

    def start(self) -> None:
        self._before = {n: self.read(n) for n in self.names}

    def end(self) -> None:
        self._after = {n: self.read(n) for n in self.names}

    def figures(self) -> Dict[str, Dict[str, Any]]:
        return {n: host_delta(self._before.get(n, GuestReading()),
                              self._after.get(n, GuestReading()), self.delayacct)
                for n in self.names}
