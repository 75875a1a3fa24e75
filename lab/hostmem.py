"""Making the host short of memory, and putting it back: ballast, hugepages, KSM, swap.

Two ways to shrink the host:

- A :class:`Ballast`: memory this process allocates and locks. The host (and
  ebbd, which counts the host as MemTotal less reserved hugepages) sees it as
  used, so freeable memory falls as it grows. It is freed when the process ends,
  however it ends. The end-to-end tests and ``dev/demo.sh`` use it, through
  :func:`squeeze` (``python -m ebb.lab.hostmem hold SHARE`` from a shell).
- Hugepages (``/proc/sys/vm/nr_hugepages``), as the MOM article shrank its host:
  the reserved pages leave the host's memory altogether, so the host is simply
  smaller. The benchmark (``bench/overcommit/hostctl.py``) does this.

Everything else is undone by :meth:`HostSnapshot.restore`, which the end-to-end
tests and ``dev/demo.sh`` call on every exit path, so no run leaves the host
smaller, with KSM retuned or with extra swap.

Hugepages, swap and KSM are host-wide, so every harness that changes them
(the e2e tests, ``dev/demo.sh``, the benchmark's ``bench/overcommit/hostctl.py``)
first takes an exclusive ``flock`` on :data:`LOCK_PATH` for its whole run
(:func:`host_memory_lock`); the holder writes ``PID NAME`` into the file, so
whoever waits can say who it waits for.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import functools
import logging
import mmap
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

from ebb.host.collectors.procfs import (
    freeable_kib,
    freeable_share,
    host_memory_kib,
    parse_meminfo,
)
from ebb.lab.errors import LabError

LOG = logging.getLogger(__name__)

HUGEPAGE_KIB = 2048
PR_SET_PDEATHSIG = 1
KSM_SETTINGS = ("run", "pages_to_scan", "sleep_millisecs")

#: The lock every harness that changes hugepages, swap or KSM holds for its whole run
#: (the same path as ``bench/overcommit/hostctl.py``).
LOCK_PATH = Path("/run/ebb-host-memory.lock")


def lock_holder(path: Path = LOCK_PATH) -> str:
    """Who holds (or last held) the host-memory lock, from the file: ``pid N (NAME)``."""
    try:
        words = path.read_text(encoding="utf-8", errors="replace").split()
    except OSError:
        words = []
    if not words:
        return "a process that did not write its pid"
    name = f" ({' '.join(words[1:])})" if len(words) > 1 else ""
    return f"pid {words[0]}{name}"


@contextlib.contextmanager
def host_memory_lock(
    name: str,
    path: Path = LOCK_PATH,
    timeout_s: float = 1800.0,
    say: Optional[Callable[[str], None]] = None,
    poll_s: float = 1.0,
    say_every_s: float = 30.0,
) -> Iterator[Path]:
    """Hold the exclusive host-memory lock for the ``with`` block.

    Waits up to ``timeout_s`` for another holder (saying "waiting for PATH held
    by pid N (NAME)" through ``say``, or the log, at once and every
    ``say_every_s``), then writes ``PID NAME`` into the file. Raises
    :class:`LabError` when the lock stays held, naming the holder. The lock is
    released when the block ends, also on errors (and by the kernel if the
    process dies), and is not inherited by programs this process starts.
    """
    tell = say or LOG.warning
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as err:
        raise LabError(f"cannot open the host-memory lock {path}: {err.strerror}",
                       "run as root (it lives in /run), or pass another path") from err
    try:
        deadline = time.monotonic() + timeout_s
        next_note = 0.0
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as err:
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
            now = time.monotonic()
            if now >= deadline:
                raise LabError(
                    f"{path} is still held by {lock_holder(path)} after {timeout_s:g} s: "
                    "another harness is changing the host's hugepages, swap or KSM",
                    "wait for it to finish (or stop it), then run again",
                )
            if now >= next_note:
                tell(f"waiting for {path} held by {lock_holder(path)} "
                     f"(it is changing the host's memory; up to {timeout_s:g} s)")
                next_note = now + say_every_s
            time.sleep(min(poll_s, max(0.0, deadline - now)))
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {name}\n".encode(), 0)
        LOG.info("holding %s for %s", path, name)
        try:
            yield path
        finally:
            # Leave no stale pid behind: an empty file means nobody holds it.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@dataclass
class HostPaths:
    """Where the host's knobs are (tests of this module point them at a tree)."""

    proc: Path = Path("/proc")
    sys: Path = Path("/sys")

    @property
    def nr_hugepages(self) -> Path:
        return self.proc / "sys/vm/nr_hugepages"

    @property
    def ksm(self) -> Path:
        return self.sys / "kernel/mm/ksm"


def meminfo_kib(paths: Optional[HostPaths] = None) -> Dict[str, int]:
    """``/proc/meminfo`` as ``{field: KiB}`` (HugePages_* are page counts)."""
    paths = paths or HostPaths()
    return parse_meminfo((paths.proc / "meminfo").read_text())


def host_share(paths: Optional[HostPaths] = None) -> float:
    """Freeable memory as a share of the host's, exactly as ebbd computes it."""
    paths = paths or HostPaths()
    share = freeable_share(meminfo_kib(paths))
    return 1.0 if share is None else share


def ksm_values(paths: Optional[HostPaths] = None) -> Dict[str, int]:
    """Every readable integer of ``/sys/kernel/mm/ksm``."""
    paths = paths or HostPaths()
    values = {}
    for entry in sorted(paths.ksm.iterdir()) if paths.ksm.is_dir() else []:
        try:
            values[entry.name] = int(entry.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return values


def set_ksm(settings: Dict[str, int], paths: Optional[HostPaths] = None) -> None:
    paths = paths or HostPaths()
    for name, value in settings.items():
        (paths.ksm / name).write_text(f"{value}\n")


def swaps(paths: Optional[HostPaths] = None) -> List[str]:
    """Active swap areas (file or device paths)."""
    paths = paths or HostPaths()
    lines = (paths.proc / "swaps").read_text().splitlines()[1:]
    return [line.split()[0] for line in lines if line.strip()]


#: The last nr_hugepages this process set (None: it never set one).
_last_set_hugepages: Optional[int] = None


def set_hugepages(count: int, paths: Optional[HostPaths] = None) -> int:
    """Ask for ``count`` hugepages; return how many the kernel really reserved."""
    global _last_set_hugepages
    paths = paths or HostPaths()
    paths.nr_hugepages.write_text(f"{count}\n")
    _last_set_hugepages = int(paths.nr_hugepages.read_text().split()[0])
    return _last_set_hugepages


@dataclass
class HostSnapshot:
    """What a test or the demo may change on the host, as it was before."""

    nr_hugepages: int
    ksm: Dict[str, int]
    swaps: List[str]
    paths: HostPaths = field(default_factory=HostPaths)
    #: Swap files this run added (removed on restore).
    added_swap_files: List[Path] = field(default_factory=list)

    @classmethod
    def take(cls, paths: Optional[HostPaths] = None) -> HostSnapshot:
        paths = paths or HostPaths()
        ksm = ksm_values(paths)
        return cls(
            nr_hugepages=int(paths.nr_hugepages.read_text().split()[0]),
            ksm={k: ksm[k] for k in KSM_SETTINGS if k in ksm},
            swaps=swaps(paths),
            paths=paths,
        )

    def restore(self) -> List[str]:
        """Put everything back; return what had to be changed (for the log)."""
        changed = []
        try:
            now = int(self.paths.nr_hugepages.read_text().split()[0])
            if now != self.nr_hugepages and _last_set_hugepages not in (None, now):
                # Someone else set it after us (hugepages are host-wide): theirs to undo.
                LOG.warning("nr_hugepages is %d, set by something else since; left alone",
                            now)
            elif now != self.nr_hugepages:
                set_hugepages(self.nr_hugepages, self.paths)
                changed.append(f"nr_hugepages {now} -> {self.nr_hugepages}")
        except OSError as err:
            LOG.error("cannot restore nr_hugepages to %d: %s", self.nr_hugepages, err)
        try:
            current = ksm_values(self.paths)
            different = {k: v for k, v in self.ksm.items() if current.get(k) != v}
            if different:
                set_ksm(different, self.paths)
                changed.append(f"KSM {different}")
        except OSError as err:
            LOG.error("cannot restore KSM settings %s: %s", self.ksm, err)
        # Only swap this run added is turned off: other work on the host may add its own.
        active = swaps(self.paths)
        for path in self.added_swap_files:
            if str(path) in active:
                subprocess.run(["swapoff", str(path)], check=False)
                changed.append(f"swapoff {path}")
        for path in self.added_swap_files:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        return changed

    def add_swap_file(self, path: Path, size_mib: int) -> None:
        """A swap file of ``size_mib``, turned on now and off again by :meth:`restore`."""
        self.added_swap_files.append(path)
        subprocess.run(["fallocate", "-l", f"{size_mib}M", str(path)], check=True)
        os.chmod(path, 0o600)
        subprocess.run(["mkswap", "-q", str(path)], check=True, capture_output=True)
        subprocess.run(["swapon", str(path)], check=True)


@functools.lru_cache(maxsize=None)
def _libc() -> ctypes.CDLL:
    """The C library, with the signatures the ballast calls need."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc


class Ballast:
    """Memory held and locked by this process, to make the host short of memory.

    Grown and shrunk in chunks of ``chunk_kib`` (each its own mapping, so shrinking
    gives memory back at once); locked with ``mlock`` so the host cannot swap it
    out (without the privilege to lock, every page is written instead, and a host
    with swap may page it out). Released by :meth:`release`, on ``with`` exit, and
    by the kernel when the process ends in any way.
    """

    def __init__(self, chunk_kib: int = 64 * 1024) -> None:
        self.chunk_bytes = chunk_kib * 1024
        self._chunks: List[int] = []
        self._libc = _libc()
        self._warned_unlocked = False

    @property
    def kib(self) -> int:
        return len(self._chunks) * self.chunk_bytes // 1024

    def resize(self, kib: int) -> int:
        """Hold about ``kib`` (rounded down to whole chunks); return what is held."""
        wanted = max(0, kib) * 1024 // self.chunk_bytes
        while len(self._chunks) > wanted:
            self._libc.munmap(self._chunks.pop(), self.chunk_bytes)
        while len(self._chunks) < wanted:
            self._chunks.append(self._new_chunk())
        return self.kib

    def release(self) -> None:
        self.resize(0)

    def __enter__(self) -> Ballast:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _new_chunk(self) -> int:
        addr = self._libc.mmap(None, self.chunk_bytes, mmap.PROT_READ | mmap.PROT_WRITE,
                               mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            err = ctypes.get_errno()
            raise LabError(f"cannot allocate {self.chunk_bytes >> 20} MiB of ballast: "
                           f"{os.strerror(err)} (held so far: {self.kib // 1024} MiB)")
        # Transparent hugepages where allowed: about 3x faster to fill than 4 KiB pages.
        self._libc.madvise(addr, self.chunk_bytes, getattr(mmap, "MADV_HUGEPAGE", 14))
        if self._libc.mlock(addr, self.chunk_bytes) != 0:
            if not self._warned_unlocked:
                LOG.warning("cannot lock ballast memory (%s): writing it instead; the host "
                            "may swap it out", os.strerror(ctypes.get_errno()))
                self._warned_unlocked = True
            ctypes.memset(addr, 1, self.chunk_bytes)
        return int(addr)


def squeeze(target_freeable_share: float, ballast: Ballast, keep_free_mib: int = 3072,
            paths: Optional[HostPaths] = None, settle_s: float = 0.5) -> int:
    """Grow or shrink ``ballast`` until freeable memory is about ``target_freeable_share``
    of the host's memory (MemTotal less reserved hugepages, as ebbd counts it).

    Never leaves less than ``keep_free_mib`` freeable (other work on the host needs
    memory too). Returns the ballast's size in KiB; the caller checks
    :func:`host_share` if the share must be reached.
    """
    paths = paths or HostPaths()
    total = host_memory_kib(meminfo_kib(paths))
    target_kib = max(int(total * target_freeable_share), keep_free_mib * 1024)
    for _attempt in range(4):
        excess_kib = freeable_kib(meminfo_kib(paths)) - target_kib
        if abs(excess_kib) < ballast.chunk_bytes // 1024:
            break
        ballast.resize(ballast.kib + excess_kib)
        time.sleep(settle_s)
    return ballast.kib


def hold(share: float, keep_free_mib: int = 3072) -> int:
    """Squeeze the host to ``share`` and hold it until SIGTERM or SIGINT (for shells)."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    # Die with the parent (a demo script killed hard must not leave the memory held).
    _libc().prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() == 1:
        return 0
    with Ballast() as ballast:
        held = squeeze(share, ballast, keep_free_mib=keep_free_mib)
        print(f"holding {held // 1024} MiB: freeable memory is {host_share():.0%} of the "
              f"host's", file=sys.stderr, flush=True)
        stop.wait()
    return 0


#: How long the safety net's ``save`` and ``restore`` wait for another harness.
NET_LOCK_TIMEOUT_S = 1800.0


def main(argv: Optional[List[str]] = None, lock_path: Path = LOCK_PATH,
         lock_timeout_s: float = NET_LOCK_TIMEOUT_S) -> int:
    """``python -m ebb.lab.hostmem save`` prints the host's settings as JSON;
    ``... restore JSON`` puts them back (a shell script's safety net); ``... hold
    SHARE`` squeezes the host with a ballast until it is stopped.

    ``save`` and ``restore`` take the host-memory lock: a snapshot taken while a
    benchmark has the host shrunk would record its hugepages, and restoring it
    after the benchmark put them back reserved them again for good.
    """
    import json

    args = list(sys.argv[1:] if argv is None else argv)

    def say(message: str) -> None:
        print(message, file=sys.stderr)

    if args[:1] == ["save"]:
        with host_memory_lock("ebb-test-net", lock_path, lock_timeout_s, say=say):
            snap = HostSnapshot.take()
        print(json.dumps({"nr_hugepages": snap.nr_hugepages, "ksm": snap.ksm,
                          "swaps": snap.swaps}))
        return 0
    if args[:1] == ["hold"] and len(args) in (2, 3):
        return hold(float(args[1]), int(args[2]) if len(args) == 3 else 3072)
    if args[:1] == ["restore"] and len(args) == 2:
        saved = json.loads(args[1])
        snap = HostSnapshot(nr_hugepages=saved["nr_hugepages"], ksm=saved["ksm"],
                            swaps=saved["swaps"])
        with host_memory_lock("ebb-test-net", lock_path, lock_timeout_s, say=say):
            for change in snap.restore():
                print(f"host put back: {change}", file=sys.stderr)
        return 0
    print("usage: python -m ebb.lab.hostmem save | restore JSON | "
          "hold SHARE [KEEP_FREE_MIB]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
