"""Fakes for the daemon core's tests: a hypervisor with libvirt's interface and
fixture /proc and sysfs trees. Shared by tests/unit/host/engine and .../app."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ebb.host.hypervisor import DomainGone, DomainInfo, DomainSettings

GIB_KIB = 1024 * 1024

MEMINFO = """MemTotal:       {total} kB
MemFree:        {free} kB
MemAvailable:   {available} kB
Buffers:        {buffers} kB
Cached:         {cached} kB
SwapTotal:      0 kB
SwapFree:       0 kB
AnonPages:      1000000 kB
"""

VMSTAT = """pswpin 0
pswpout 0
pgmajfault 10
"""

PRESSURE = """some avg10=0.00 avg60=0.00 avg300=0.00 total=0
full avg10=0.00 avg60=0.00 avg300=0.00 total=0
"""

KSM_DEFAULTS = {
    "run": 0,
    "pages_to_scan": 100,
    "sleep_millisecs": 20,
    "pages_shared": 0,
    "pages_sharing": 0,
    "pages_unshared": 0,
    "pages_volatile": 0,
    "full_scans": 0,
    "merge_across_nodes": 1,
}


def make_host_tree(root: Path, *, total_kib: int = 16 * GIB_KIB, free_kib: int = 8 * GIB_KIB,
                   buffers_kib: int = 0, cached_kib: int = 0) -> Tuple[Path, Path]:
    """A fixture /proc and /sys under ``root``; returns (proc_root, sys_root)."""
    proc = root / "proc"
    sys_root = root / "sys"
    (proc / "pressure").mkdir(parents=True, exist_ok=True)
    write_meminfo(proc, total_kib=total_kib, free_kib=free_kib, buffers_kib=buffers_kib,
                  cached_kib=cached_kib)
    (proc / "vmstat").write_text(VMSTAT)
    (proc / "pressure" / "memory").write_text(PRESSURE)
    ksm = sys_root / "kernel" / "mm" / "ksm"
    ksm.mkdir(parents=True, exist_ok=True)
    for name, value in KSM_DEFAULTS.items():
        (ksm / name).write_text(f"{value}\n")
    return proc, sys_root


def write_meminfo(proc: Path, *, total_kib: int, free_kib: int, buffers_kib: int = 0,
                  cached_kib: int = 0) -> None:
    (proc / "meminfo").write_text(MEMINFO.format(
        total=total_kib, free=free_kib, available=free_kib + cached_kib,
        buffers=buffers_kib, cached=cached_kib,
    ))


@dataclass
class FakeVm:
    name: str
    max_kib: int = 4 * GIB_KIB
    cur_kib: int = 4 * GIB_KIB
    state: str = "running"
    floor_kib: Optional[int] = None
    channel_path: Optional[str] = None
    enabled: bool = True
    has_balloon: bool = True
    free_page_reporting: bool = False
    autodeflate: bool = False
    #: When False, set_balloon_target is recorded but the balloon does not move.
    follows_target: bool = True
    stats: Dict[str, int] = field(default_factory=dict)


class FakeHypervisor:
    """The parts of :class:`ebb.host.hypervisor.Hypervisor` the daemon uses."""

    def __init__(self, vms: Optional[List[FakeVm]] = None, uri: str = "test:///fake") -> None:
        self.uri = uri
        self.vms: Dict[str, FakeVm] = {vm.name: vm for vm in vms or []}
        self.balloon_calls: List[Tuple[str, int]] = []
        self.soft_limits: Dict[str, Optional[int]] = {}
        self.connected = True
        self.started = False
        self.stopped = False
        self.fail_listing = 0
        self.on_balloon_call = None  # optional callback(name, kib)
        self._lock = threading.Lock()

    # life cycle
    def start(self, on_crash: object = None) -> None:
        self.started = True
        self.on_crash = on_crash

    def stop(self, timeout_s: float = 2.0) -> None:
        self.stopped = True

    def wait_connected(self, timeout_s: float) -> bool:
        return self.connected

    def connect_now(self) -> None:
        self.started = True

    def refresh(self) -> None:
        pass

    # queries
    def running_domains(self) -> Dict[str, str]:
        return {name: _uuid(name) for name in self.vms}

    def domain_infos(self) -> List[DomainInfo]:
        if self.fail_listing:
            self.fail_listing -= 1
            raise RuntimeError("libvirt listing broke (fake)")
        with self._lock:
            return [self._info(vm) for vm in sorted(self.vms.values(), key=lambda v: v.name)]

    def domain_info(self, name: str) -> DomainInfo:
        vm = self.vms.get(name)
        if vm is None:
            raise DomainGone(f"VM {name} is gone")
        with self._lock:
            return self._info(vm)

    def _info(self, vm: FakeVm) -> DomainInfo:
        settings = DomainSettings(
            name=vm.name,
            uuid=_uuid(vm.name),
            max_memory_kib=vm.max_kib,
            current_memory_kib=vm.cur_kib,
            has_ebb_metadata=vm.floor_kib is not None,
            enabled=vm.enabled,
            ebb_floor_kib=vm.floor_kib,
            channel_path=vm.channel_path,
            has_balloon=vm.has_balloon,
            stats_period_s=2,
            free_page_reporting=vm.free_page_reporting,
            autodeflate=vm.autodeflate,
        )
        stats = {"actual": vm.cur_kib, "unused": vm.cur_kib // 2, "available": vm.cur_kib,
                 "disk_caches": 0, "major_fault": 0, "minor_fault": 0, "swap_in": 0,
                 "swap_out": 0, "rss": vm.cur_kib}
        stats.update(vm.stats)
        return DomainInfo(
            name=vm.name, uuid=_uuid(vm.name), id=1, state=vm.state,
            max_memory_kib=vm.max_kib, balloon_cur_kib=vm.cur_kib, memory_stats=stats,
            qemu_pid=None, settings=settings,
        )

    def balloon_actual_kib(self, name: str) -> int:
        vm = self.vms.get(name)
        if vm is None:
            raise DomainGone(f"VM {name} is gone")
        return vm.cur_kib

    def set_balloon_target(self, name: str, target_kib: int) -> None:
        vm = self.vms.get(name)
        if vm is None:
            raise DomainGone(f"VM {name} is gone")
        self.balloon_calls.append((name, int(target_kib)))
        if self.on_balloon_call is not None:
            self.on_balloon_call(name, int(target_kib))
        if vm.follows_target:
            vm.cur_kib = int(target_kib)

    def memory_soft_limit_kib(self, name: str) -> Optional[int]:
        return self.soft_limits.get(name)

    def set_memory_soft_limit(self, name: str, soft_limit_kib: Optional[int]) -> None:
        self.soft_limits[name] = soft_limit_kib


class RecordingChannels:
    """Stands in for GuestChannels when a test needs no sockets."""

    def __init__(self) -> None:
        self.paths: Dict[str, Optional[str]] = {}
        self.decisions: List[Tuple[str, int, str]] = []
        self.states: Dict[str, object] = {}
        self.limits = None
        self.started = False
        self.stopped = False

    def snapshot(self) -> Dict[str, object]:
        return dict(self.states)

    def set_guests(self, paths) -> None:  # type: ignore[no-untyped-def]
        self.paths = dict(paths)

    def send_decision(self, vm: str, balloon_target_kib: int, reason: str) -> None:
        self.decisions.append((vm, balloon_target_kib, reason))

    def update_limits(self, limits) -> None:  # type: ignore[no-untyped-def]
        self.limits = limits  # GuestChannels swaps them on its own thread

    def start(self, on_crash=None) -> None:  # type: ignore[no-untyped-def]
        self.started = True

    def stop(self) -> None:
        self.stopped = True

    def close(self) -> None:
        self.stopped = True


class RecordingObserver:
    def __init__(self) -> None:
        self.records: list = []

    def on_tick(self, record) -> None:  # type: ignore[no-untyped-def]
        self.records.append(record)


def _uuid(name: str) -> str:
    digits = "".join(f"{ord(c):02x}" for c in name)[:12].ljust(12, "0")
    return f"00000000-0000-4000-8000-{digits}"


def write_policy(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    return path


#: Takes 10 % of every guest's maximum each tick; gives a guest what it needs.
SHRINK_POLICY = """
(def shrink (guest)
  (if (and (valid guest.need) (> guest.need 0))
      (guest.Control "balloon_target" (+ guest.balloon_cur guest.need))
      (guest.Control "balloon_target" (- guest.balloon_cur (/ guest.balloon_max 10)))))
(with Guests guest (shrink guest))
(Host.Control "ksm_run" 1)
"""

#: Gives every guest what it needs; leaves the others alone.
NEED_POLICY = """
(def give (guest)
  (if (and (valid guest.need) (> guest.need 0))
      (guest.Control "balloon_target" (+ guest.balloon_cur guest.need))
      0))
(with Guests guest (give guest))
"""
