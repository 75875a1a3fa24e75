"""Asking the guest's kernel to reclaim: cgroup v2 ``memory.reclaim`` of the root cgroup.

The thin I/O layer under the agent's yield (the decisions are in ``yielding``):
find or mount cgroup2, check that ``memory.reclaim`` is there and writable
(Linux 5.19+), learn whether it takes the ``swappiness=`` key (Linux 6.9+), and
write one reclaim request. Every path comes in as a parameter (``proc_root``, the
cgroup directory, the runtime directory) so tests run against a temporary tree.

Writing ``N`` (bytes, with a K/M/G suffix) to ``memory.reclaim`` makes the kernel
reclaim about that much from the cgroup, here the whole guest; the write fails with
EAGAIN when the kernel could not reclaim that much. Writing ``0`` reclaims nothing
and succeeds, which is how support is checked without changing anything; a kernel
without the ``swappiness=`` key refuses ``0 swappiness=0`` with EINVAL.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
from dataclasses import dataclass
from typing import Optional

LOG = logging.getLogger(__name__)

DEFAULT_CGROUP_ROOT = "/sys/fs/cgroup"
#: The agent's own runtime directory; cgroup2 is mounted under it when the guest has not.
DEFAULT_RUNTIME_DIR = "/run/ebb-agent"
RECLAIM_FILE = "memory.reclaim"

_MS_NOSUID = 0x2
_MS_NODEV = 0x4
_MS_NOEXEC = 0x8
_MNT_DETACH = 0x2


@dataclass(frozen=True)
class ReclaimSupport:
    """Whether the agent can reclaim in this guest, and how.

    ``path`` is the root cgroup's ``memory.reclaim`` (``None`` when unusable, with
    ``why_not`` saying why for people); ``swappiness_arg`` tells whether the kernel
    takes ``swappiness=0`` (page cache only, no swapping); ``mounted_at`` is the
    cgroup2 mount point the agent made itself and must unmount at exit.
    """

    path: Optional[str]
    swappiness_arg: bool = False
    why_not: str = ""
    mounted_at: Optional[str] = None

    @property
    def supported(self) -> bool:
        return self.path is not None


def find_cgroup2(proc_root: str) -> Optional[str]:
    """Where cgroup v2 is mounted, from ``PROC_ROOT/self/mounts``; ``None`` if nowhere.

    The usual ``/sys/fs/cgroup`` is preferred when cgroup2 is mounted in several places.
    Raises OSError when the mount table cannot be read.
    """
    with open(os.path.join(proc_root, "self", "mounts"), encoding="utf-8",
              errors="replace") as mounts:
        lines = mounts.read().splitlines()
    found = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "cgroup2":
            # The kernel escapes blanks in mount points as octal (\040).
            found.append(fields[1].encode().decode("unicode_escape"))
    if DEFAULT_CGROUP_ROOT in found:
        return DEFAULT_CGROUP_ROOT
    return found[0] if found else None


class Reclaimer:
    """Writes reclaim requests to one ``memory.reclaim`` file.

    ``_write`` is the only system call; tests subclass it to play the kernel.
    """

    def __init__(self, path: str, swappiness_arg: bool) -> None:
        self.path = path
        self.swappiness_arg = swappiness_arg

    def request(self, kib: int, anon: bool) -> None:
        """Ask the kernel to reclaim ``kib`` KiB; page cache only unless ``anon``.

        ``swappiness=0`` keeps the kernel off anonymous memory where it takes the
        key (Linux 6.9+); older kernels get the bare size and the caller caps it at
        the clean page cache. Raises OSError (EAGAIN: could not reclaim that much).
        """
        text = f"{kib}K"
        if self.swappiness_arg and not anon:
            text += " swappiness=0"
        self._write(text.encode("ascii"))

    def _write(self, data: bytes) -> None:
        _write_file(self.path, data)


def _write_file(path: str, data: bytes) -> None:
    """One write(2) of ``data`` to a kernel control file. Raises OSError."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


#: Writing to it makes the kernel compact all of the guest's memory (CONFIG_COMPACTION).
COMPACT_FILE = os.path.join("sys", "vm", "compact_memory")


class Compactor:
    """Asks the guest's kernel to compact its memory after a yield.

    Free page reporting hands the host only whole free blocks (2 MiB on x86); the
    page cache a yield frees is scattered between pages still in use, so little of
    it comes back until the kernel moves those pages together. Writing ``1`` to
    ``/proc/sys/vm/compact_memory`` does that for every zone, synchronously.
    ``_write`` is the only system call; tests subclass it.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def compact(self) -> None:
        """Compact all memory now. Raises OSError."""
        _write_file(self.path, b"1")


def probe_compaction(proc_root: str) -> Optional[Compactor]:
    """A :class:`Compactor` when ``PROC_ROOT/sys/vm/compact_memory`` is writable, else None.

    Nothing is written: a test write would compact. A kernel without compaction has
    no such file; under the shipped systemd unit the file is the one writable entry
    of ``/proc/sys`` (ProtectKernelTunables makes the rest read-only).
    """
    path = os.path.join(proc_root, COMPACT_FILE)
    if os.path.exists(path) and os.access(path, os.W_OK):
        return Compactor(path)
    return None


def probe(cgroup_dir: Optional[str], proc_root: str, runtime_dir: str,
          may_mount: bool = True) -> ReclaimSupport:
    """Find the root cgroup's ``memory.reclaim`` and check that it can be used.

    ``cgroup_dir`` names the cgroup2 directory outright (tests, unusual guests);
    ``None`` finds it in the mount table, and if the guest has not mounted cgroup2,
    mounts it at ``RUNTIME_DIR/cgroup2`` (``may_mount``).

    Why a plain mount under the agent's runtime directory, and not a private mount
    namespace: ``unshare(CLONE_NEWNS)`` would change the mount view of the whole
    agent, needs ``/`` remounted private first so nothing propagates back, and
    gains little: the mount is of the same hierarchy the kernel already has, harms
    nothing if left behind by a crash (the next start reuses it), and under the
    shipped systemd unit the agent already runs in a mount namespace of its own.
    The agent unmounts what it mounted when it stops (:func:`release`).
    """
    mounted_at: Optional[str] = None
    if cgroup_dir is None:
        try:
            cgroup_dir = find_cgroup2(proc_root)
        except OSError as err:
            # Never mount blind: without the mount table cgroup2 may well be there.
            return ReclaimSupport(None, why_not=f"cannot read the mount table: {err}")
        if cgroup_dir is None:
            target = os.path.join(runtime_dir, "cgroup2")
            if not may_mount:
                return ReclaimSupport(None, why_not=f"cgroup2 is not mounted (the agent "
                                      f"would mount it at {target})")
            try:
                _mount_cgroup2(target)
            except OSError as err:
                return ReclaimSupport(None, why_not=_mount_failure(target, err))
            cgroup_dir = mounted_at = target
            LOG.info("cgroup2 was not mounted in this guest: mounted it at %s", target)
    path = os.path.join(cgroup_dir, RECLAIM_FILE)
    if not os.path.exists(path):
        support = ReclaimSupport(None, mounted_at=mounted_at, why_not=(
            f"{path} does not exist: the kernel has no memory.reclaim (Linux 5.19 or "
            "newer has it) or the memory controller is not on cgroup v2"))
        return release(support)
    reclaimer = Reclaimer(path, swappiness_arg=False)
    try:
        reclaimer._write(b"0")  # reclaims nothing: checks that the write is allowed
    except OSError as err:
        why = f"cannot write {path}: {os.strerror(err.errno) if err.errno else err}"
        if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            why += " (the agent needs root, and a writable cgroup file system)"
        return release(ReclaimSupport(None, mounted_at=mounted_at, why_not=why))
    try:
        reclaimer._write(b"0 swappiness=0")
        swappiness_arg = True
    except OSError:
        swappiness_arg = False  # before Linux 6.9: EINVAL
    return ReclaimSupport(path, swappiness_arg=swappiness_arg, mounted_at=mounted_at)


def release(support: ReclaimSupport) -> ReclaimSupport:
    """Unmount what :func:`probe` mounted; returns ``support`` with ``mounted_at`` cleared."""
    if support.mounted_at is None:
        return support
    try:
        _umount(support.mounted_at)
        os.rmdir(support.mounted_at)
    except OSError as err:
        LOG.warning("cannot unmount cgroup2 from %s: %s", support.mounted_at, err)
    return ReclaimSupport(None, support.swappiness_arg,
                          support.why_not or f"cgroup2 unmounted from {support.mounted_at}")


def _mount_failure(target: str, err: OSError) -> str:
    why = f"cgroup2 is not mounted and mounting it at {target} failed: "
    why += os.strerror(err.errno) if err.errno else str(err)
    if err.errno in (errno.EPERM, errno.EACCES):
        why += " (the agent needs root to mount it; or mount cgroup2 in the guest)"
    elif err.errno == errno.ENODEV:
        why += " (the kernel has no cgroup v2)"
    return why


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _mount_cgroup2(target: str) -> None:
    os.makedirs(target, mode=0o700, exist_ok=True)
    flags = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
    if _libc().mount(b"cgroup2", os.fsencode(target), b"cgroup2", flags, None) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), target)


def _umount(target: str) -> None:
    if _libc().umount2(os.fsencode(target), _MNT_DETACH) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), target)
