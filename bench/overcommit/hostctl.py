"""The host's memory for a benchmark run: an exclusive lock, hugepages, a swap file, KSM.

Other engineers' tests also shrink this host with hugepages, so every change is
made under an exclusive ``flock`` on :data:`LOCK_PATH`, held for the whole run,
and undone on every exit path (also Ctrl-C) by :class:`HostMemory`'s ``__exit__``:
``nr_hugepages`` back to 0, our swap file off and removed, KSM's knobs as found.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import time
from pathlib import Path
from types import FrameType, TracebackType
from typing import Callable, Dict, List, Optional, Type

from ebb.lab import hostmem

LOG = logging.getLogger(__name__)

LOCK_PATH = Path("/run/ebb-host-memory.lock")
SWAP_FILE = Path("/var/lib/ebb-bench/host-swap.img")
HUGEPAGE_MIB = 2
KSM_PATH = Path("/sys/kernel/mm/ksm")
KSM_KNOBS = ("run", "pages_to_scan", "sleep_millisecs", "merge_across_nodes")

Progress = Callable[[str], None]


class HostMemoryError(RuntimeError):
    """The host cannot be prepared (lock held too long, hugepages left by someone)."""


def read_vmstat(proc: Path = Path("/proc")) -> Dict[str, int]:
    values = {}
    for line in (proc / "vmstat").read_text().splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            values[key] = int(value)
    return values


def ksm_counters() -> Dict[str, int]:
    return hostmem.ksm_values()


class HostMemory:
    """``with HostMemory(...) as host:`` lock taken, host snapshot kept, restored on exit."""

    def __init__(self, lock_timeout_s: float = 1800.0, progress: Optional[Progress] = None,
                 swap_file: Path = SWAP_FILE) -> None:
        self.lock_timeout_s = lock_timeout_s
        self.say = progress or (lambda _m: None)
        self.swap_file = swap_file
        self._lock_fd: Optional[int] = None
        self.snapshot: Optional[hostmem.HostSnapshot] = None
        self._ksm_before: Dict[str, int] = {}
        self._old_handlers: List[object] = []
        self.swap_size_mib = 0

    # -- the lock ---------------------------------------------------------------
    def _acquire(self) -> None:
        fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.lock_timeout_s
        next_note = 0.0
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                now = time.monotonic()
                if now > deadline:
                    os.close(fd)
                    raise HostMemoryError(
                        f"{LOCK_PATH} still held by someone else after "
                        f"{self.lock_timeout_s:.0f} s (another test shrinks the host)",
                        ) from None
                if now >= next_note:
                    self.say(f"waiting for {LOCK_PATH} (someone else is shrinking the host)")
                    next_note = now + 30.0
                time.sleep(1.0)
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} ebb-bench\n".encode())
        self._lock_fd = fd

    def _release(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
            self._lock_fd = None

    # -- context ----------------------------------------------------------------
    def __enter__(self) -> HostMemory:
        self._acquire()
        try:
            self.wait_no_hugepages()
            self.snapshot = hostmem.HostSnapshot.take()
            self._ksm_before = {k: v for k, v in ksm_counters().items() if k in KSM_KNOBS}
            # SIGTERM (and SIGHUP) restore too: turn them into KeyboardInterrupt-like exits.
            for sig in (signal.SIGTERM, signal.SIGHUP):
                self._old_handlers.append(signal.signal(sig, _raise_interrupt))
        except BaseException:
            self._release()
            raise
        return self

    def wait_no_hugepages(self) -> None:
        """Wait until nobody holds hugepages (a test not using the lock may be running)."""
        deadline = time.monotonic() + self.lock_timeout_s
        next_note = 0.0
        while True:
            hugepages = int(Path("/proc/sys/vm/nr_hugepages").read_text().split()[0])
            if hugepages == 0:
                return
            now = time.monotonic()
            if now > deadline:
                raise HostMemoryError(
                    f"nr_hugepages is {hugepages}, not 0, although {LOCK_PATH} is ours, "
                    f"and stayed so for {self.lock_timeout_s:.0f} s: someone reserves "
                    "hugepages without the lock or left a reservation; find who before "
                    "echo 0 > /proc/sys/vm/nr_hugepages")
            if now >= next_note:
                self.say(f"waiting: nr_hugepages is {hugepages} (someone else's test "
                         "shrinks the host without taking the lock)")
                next_note = now + 30.0
            time.sleep(2.0)

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.restore()
        self._release()

    def restore(self) -> List[str]:
        """Put hugepages, swap and KSM back as found; return what changed."""
        changed: List[str] = []
        if self.snapshot is not None:
            # Hugepages first: giving memory back makes swapoff cheap.
            changed = self.snapshot.restore()
            with contextlib.suppress(FileNotFoundError):
                self.swap_file.unlink()
        try:
            now = {k: v for k, v in ksm_counters().items() if k in KSM_KNOBS}
            different = {k: v for k, v in self._ksm_before.items() if now.get(k) != v}
            if different:
                # merge_across_nodes can only change with run=0 and no merged pages.
                hostmem.set_ksm({k: v for k, v in different.items()
                                 if k != "merge_across_nodes"})
                changed.append(f"KSM {different}")
        except OSError as err:
            LOG.error("cannot restore KSM %s: %s", self._ksm_before, err)
        if changed:
            self.say("host put back: " + "; ".join(changed))
        return changed

    # -- changes ----------------------------------------------------------------
    def ensure_swap(self) -> None:
        """Our swap file on again if someone's restore turned it off meanwhile."""
        if self.swap_size_mib and str(self.swap_file) not in hostmem.swaps():
            self.say(f"host swap file {self.swap_file} was turned off by someone: on again")
            self.add_swap(self.swap_size_mib)

    def add_swap(self, size_mib: int) -> None:
        assert self.snapshot is not None
        self.swap_file.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.swap_file.unlink()
        self.swap_size_mib = size_mib
        if self.swap_file not in self.snapshot.added_swap_files:
            self.snapshot.add_swap_file(self.swap_file, size_mib)
        else:
            hostmem.HostSnapshot(0, {}, [], added_swap_files=[]).add_swap_file(
                self.swap_file, size_mib)
        self.say(f"host swap file {self.swap_file} ({size_mib} MiB) on")

    def shrink_to(self, budget_mib: int) -> int:
        """Reserve hugepages until MemAvailable is about ``budget_mib``; return nr_hugepages.

        ``budget_mib`` is what is left for the benchmark's guests on top of what the
        host uses now (other VMs, daemons): the reservation is MemAvailable minus it.
        """
        got = int(Path("/proc/sys/vm/nr_hugepages").read_text().split()[0])
        # Clean page cache counts as available but the reservation does not always
        # reclaim it: drop it first (only clean cache; it refills as files are read).
        with contextlib.suppress(OSError):
            Path("/proc/sys/vm/drop_caches").write_text("1\n")
        for _attempt in range(20):
            # The kernel reclaims page cache while reserving, but may stop short:
            # measure again and ask for the rest, a few times.
            available_mib = hostmem.meminfo_kib()["MemAvailable"] // 1024
            excess_mib = available_mib - budget_mib
            if excess_mib < 64:
                break
            with contextlib.suppress(OSError):
                Path("/proc/sys/vm/compact_memory").write_text("1\n")
            got = hostmem.set_hugepages(got + excess_mib // HUGEPAGE_MIB)
            time.sleep(0.5)
        after = hostmem.meminfo_kib()
        self.say(f"host shrunk: {got} hugepages ({got * HUGEPAGE_MIB} MiB) reserved, "
                 f"MemAvailable {after['MemAvailable'] // 1024} MiB (asked "
                 f"{budget_mib} MiB), MemFree {after['MemFree'] // 1024} MiB")
        return got

    def unshrink(self) -> None:
        hostmem.set_hugepages(0)

    def ksm_off(self) -> None:
        """KSM stopped (run=0, merged pages kept), as a host without a manager has it."""
        with contextlib.suppress(OSError):
            (KSM_PATH / "run").write_text("0\n")


def _raise_interrupt(signum: int, frame: Optional[FrameType]) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
