"""Finding memory.reclaim and writing to it, against a fake cgroup and /proc tree."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import List

import pytest
from ebb.guest import reclaim
from ebb.guest.reclaim import Reclaimer, find_cgroup2, probe


def cgroup_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "cgroup"
    directory.mkdir()
    (directory / "memory.reclaim").write_bytes(b"")
    return directory


def proc_with_mounts(tmp_path: Path, *lines: str) -> Path:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "mounts").write_text("".join(line + "\n" for line in lines))
    return proc


class RecordingReclaimer(Reclaimer):
    def __init__(self, swappiness_arg: bool) -> None:
        super().__init__("/nonexistent/memory.reclaim", swappiness_arg)
        self.written: List[bytes] = []

    def _write(self, data: bytes) -> None:
        self.written.append(data)


def test_a_writable_memory_reclaim_is_supported(tmp_path: Path) -> None:
    directory = cgroup_dir(tmp_path)
    support = probe(str(directory), str(tmp_path / "no-proc"), str(tmp_path / "run"))
    assert support.supported
    assert support.path == str(directory / "memory.reclaim")
    assert support.mounted_at is None
    # The probe only wrote requests that reclaim nothing.
    assert (directory / "memory.reclaim").read_bytes() == b"0 swappiness=0"


def test_without_memory_reclaim_the_kernel_is_named(tmp_path: Path) -> None:
    directory = tmp_path / "cgroup"
    directory.mkdir()
    support = probe(str(directory), "/nonexistent", str(tmp_path / "run"))
    assert not support.supported
    assert "memory.reclaim" in support.why_not and "5.19" in support.why_not


def test_an_unwritable_memory_reclaim_says_why(tmp_path: Path) -> None:
    directory = tmp_path / "cgroup"
    (directory / "memory.reclaim").mkdir(parents=True)  # writing a directory fails
    support = probe(str(directory), "/nonexistent", str(tmp_path / "run"))
    assert not support.supported
    assert support.why_not.startswith(f"cannot write {directory / 'memory.reclaim'}")


def test_the_mounted_cgroup2_is_found_in_the_mount_table(tmp_path: Path) -> None:
    directory = cgroup_dir(tmp_path)
    proc = proc_with_mounts(
        tmp_path,
        "proc /proc proc rw 0 0",
        f"cgroup2 {directory} cgroup2 rw,nosuid 0 0",
    )
    support = probe(None, str(proc), str(tmp_path / "run"))
    assert support.path == str(directory / "memory.reclaim")
    assert support.mounted_at is None


def test_mount_points_are_unescaped_and_sys_fs_cgroup_preferred(tmp_path: Path) -> None:
    proc = proc_with_mounts(tmp_path, r"none /run/my\040cg cgroup2 rw 0 0")
    assert find_cgroup2(str(proc)) == "/run/my cg"
    proc2 = proc_with_mounts(tmp_path / "b", "none /elsewhere cgroup2 rw 0 0",
                             "cgroup2 /sys/fs/cgroup cgroup2 rw 0 0")
    assert find_cgroup2(str(proc2)) == "/sys/fs/cgroup"


def test_nothing_is_mounted_without_a_mount_table(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(target: str) -> None:
        raise AssertionError("mounted without knowing whether cgroup2 is there")

    monkeypatch.setattr(reclaim, "_mount_cgroup2", refuse)
    support = probe(None, str(tmp_path / "fake-proc"), str(tmp_path / "run"))
    assert not support.supported
    assert "mount table" in support.why_not


def test_an_unmounted_cgroup2_is_mounted_under_the_runtime_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proc = proc_with_mounts(tmp_path, "proc /proc proc rw 0 0")
    mounted: List[str] = []

    def fake_mount(target: str) -> None:  # plays the kernel: the files appear
        Path(target).mkdir(parents=True)
        (Path(target) / "memory.reclaim").write_bytes(b"")
        mounted.append(target)

    monkeypatch.setattr(reclaim, "_mount_cgroup2", fake_mount)
    unmounted: List[str] = []
    monkeypatch.setattr(reclaim, "_umount", unmounted.append)
    support = probe(None, str(proc), str(tmp_path / "run"))
    assert mounted == [str(tmp_path / "run" / "cgroup2")]
    assert support.mounted_at == mounted[0]
    assert support.supported
    released = reclaim.release(support)
    assert unmounted == mounted
    assert not released.supported and released.mounted_at is None

    # With --once-style probing that may not mount, it only says what it would do.
    assert "not mounted" in probe(None, str(proc), str(tmp_path / "run2"), may_mount=False).why_not


def test_a_mount_refused_for_want_of_root_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proc = proc_with_mounts(tmp_path, "proc /proc proc rw 0 0")

    def refuse(target: str) -> None:
        raise OSError(errno.EPERM, "Operation not permitted", target)

    monkeypatch.setattr(reclaim, "_mount_cgroup2", refuse)
    support = probe(None, str(proc), str(tmp_path / "run"))
    assert not support.supported
    assert "Operation not permitted" in support.why_not and "root" in support.why_not


@pytest.mark.parametrize(
    ("swappiness_arg", "anon", "written"),
    [
        (True, False, b"32768K swappiness=0"),  # Linux 6.9+: page cache only
        (False, False, b"32768K"),  # older: the caller caps the size at clean cache
        (True, True, b"32768K"),  # --yield-anon: the kernel's own swappiness
    ],
)
def test_reclaim_requests(swappiness_arg: bool, anon: bool, written: bytes) -> None:
    reclaimer = RecordingReclaimer(swappiness_arg)
    reclaimer.request(32 * 1024, anon=anon)
    assert reclaimer.written == [written]
