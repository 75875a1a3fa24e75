"""Putting the host back: hugepages and KSM as they were, but never someone else's change."""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

import pytest
from ebb.lab import hostmem
from ebb.lab.errors import LabError


def _tree(tmp_path: Path) -> hostmem.HostPaths:
    paths = hostmem.HostPaths(proc=tmp_path / "proc", sys=tmp_path / "sys")
    (paths.proc / "sys/vm").mkdir(parents=True)
    paths.nr_hugepages.write_text("0\n")
    (paths.proc / "swaps").write_text("Filename Type Size Used Priority\n")
    (paths.proc / "meminfo").write_text("MemTotal: 1000 kB\nMemFree: 600 kB\nBuffers: 50 kB\n"
                                        "Cached: 100 kB\n")
    paths.ksm.mkdir(parents=True)
    for name, value in (("run", 0), ("pages_to_scan", 100), ("sleep_millisecs", 20)):
        (paths.ksm / name).write_text(f"{value}\n")
    return paths


def test_restore_puts_hugepages_and_ksm_back(tmp_path: Path) -> None:
    paths = _tree(tmp_path)
    snapshot = hostmem.HostSnapshot.take(paths)
    hostmem.set_hugepages(5, paths)
    hostmem.set_ksm({"run": 1, "pages_to_scan": 1250}, paths)
    changed = snapshot.restore()
    assert paths.nr_hugepages.read_text().strip() == "0"
    assert hostmem.ksm_values(paths)["run"] == 0
    assert hostmem.ksm_values(paths)["pages_to_scan"] == 100
    assert len(changed) == 2


def test_someone_elses_hugepages_are_left_alone(tmp_path: Path) -> None:
    paths = _tree(tmp_path)
    snapshot = hostmem.HostSnapshot.take(paths)
    hostmem.set_hugepages(5, paths)
    paths.nr_hugepages.write_text("7\n")  # another tool on the same host took over
    snapshot.restore()
    assert paths.nr_hugepages.read_text().strip() == "7"


def test_freeable_is_free_plus_buffers_plus_cached(tmp_path: Path) -> None:
    assert hostmem.freeable_kib(hostmem.meminfo_kib(_tree(tmp_path))) == 750


# -------------------------------------------------------- the host-memory lock ----


def _hold(path: Path, content: str) -> int:
    """Another harness holding the lock (two open files conflict, even in one process)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, content.encode())
    return fd


def test_the_lock_is_held_for_the_block_with_our_pid_and_released_after(tmp_path: Path) -> None:
    lock = tmp_path / "ebb-host-memory.lock"
    with hostmem.host_memory_lock("ebb-e2e", path=lock, timeout_s=1.0) as held:
        assert held == lock
        assert lock.read_text() == f"{os.getpid()} ebb-e2e\n"
        # A second harness cannot take it meanwhile.
        other = hostmem.host_memory_lock("other", path=lock, timeout_s=0.0, say=lambda m: None)
        with pytest.raises(LabError), other:
            pass
    assert lock.read_text() == ""  # no stale pid left behind
    os.close(_hold(lock, "1 next"))  # and free for the next one


def test_a_held_lock_is_waited_for_naming_the_holder_then_fails_clearly(tmp_path: Path) -> None:
    lock = tmp_path / "ebb-host-memory.lock"
    fd = _hold(lock, "4242 ebb-bench\n")
    said: list = []
    try:
        waiting = hostmem.host_memory_lock("ebb-e2e", path=lock, timeout_s=0.3,
                                           say=said.append, poll_s=0.05)
        with pytest.raises(LabError) as failure, waiting:
            pytest.fail("the block ran without the lock")
    finally:
        os.close(fd)
    assert said and said[0].startswith(f"waiting for {lock} held by pid 4242 (ebb-bench)")
    assert "held by pid 4242 (ebb-bench) after 0.3 s" in str(failure.value)
    assert lock.read_text() == "4242 ebb-bench\n"  # the holder's file is not touched


def test_the_lock_is_taken_as_soon_as_the_holder_lets_go(tmp_path: Path) -> None:
    lock = tmp_path / "ebb-host-memory.lock"
    fd = _hold(lock, "4242 ebb-bench\n")
    threading.Timer(0.2, os.close, args=(fd,)).start()
    said: list = []
    with hostmem.host_memory_lock("ebb-demo", path=lock, timeout_s=10.0, say=said.append,
                                  poll_s=0.05):
        assert lock.read_text() == f"{os.getpid()} ebb-demo\n"
    assert len(said) == 1 and "pid 4242" in said[0]


def test_the_lock_fails_early_when_it_cannot_be_opened(tmp_path: Path) -> None:
    lock = hostmem.host_memory_lock("x", path=tmp_path / "missing" / "lock", timeout_s=0.0)
    with pytest.raises(LabError, match="cannot open the host-memory lock"), lock:
        pass


# -------------------------------------------------------------- squeezing ----


class _MeminfoBallast:
    """A ballast whose size the fixture meminfo reflects (MemFree falls as it grows)."""

    chunk_bytes = 1024 * 1024

    def __init__(self, paths: hostmem.HostPaths, free_kib: int, extra: str = "") -> None:
        self.paths, self.free_kib, self.extra, self.kib = paths, free_kib, extra, 0
        self.resize(0)

    def resize(self, kib: int) -> int:
        self.kib = max(0, kib) // 1024 * 1024
        (self.paths.proc / "meminfo").write_text(
            f"MemTotal: 8388608 kB\nMemFree: {self.free_kib - self.kib} kB\n"
            f"Buffers: 0 kB\nCached: 0 kB\n{self.extra}")
        return self.kib


def test_squeeze_reaches_the_share_ebbd_sees(tmp_path: Path) -> None:
    paths = _tree(tmp_path)
    # 8 GiB, 4 GiB of it reserved as hugepages: ebbd counts 4 GiB of host memory.
    ballast = _MeminfoBallast(paths, free_kib=3 * 1024 * 1024,
                              extra="HugePages_Total: 2048\nHugepagesize: 2048 kB\n")
    hostmem.squeeze(0.15, ballast, keep_free_mib=100, paths=paths, settle_s=0)  # type: ignore[arg-type]
    assert hostmem.host_share(paths) == pytest.approx(0.15, abs=0.01)


def test_squeeze_keeps_memory_free_for_the_host(tmp_path: Path) -> None:
    paths = _tree(tmp_path)
    ballast = _MeminfoBallast(paths, free_kib=6 * 1024 * 1024)
    hostmem.squeeze(0.01, ballast, keep_free_mib=2048, paths=paths, settle_s=0)  # type: ignore[arg-type]
    assert hostmem.freeable_kib(hostmem.meminfo_kib(paths)) >= 2048 * 1024


def test_ballast_grows_shrinks_and_releases() -> None:
    with hostmem.Ballast(chunk_kib=1024) as ballast:
        assert ballast.resize(3 * 1024 + 500) == 3 * 1024  # whole chunks
        assert ballast.resize(1024) == 1024
    assert ballast.kib == 0


def test_the_safety_net_neither_saves_nor_restores_while_another_harness_holds_the_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # dev/test.sh saved the host while a benchmark had it shrunk (20 GiB of
    # hugepages), and its exit trap later reserved them again after the benchmark
    # had put them back: the next test run found a host of 3.9 GiB.
    lock = tmp_path / "ebb-host-memory.lock"
    touched: list = []
    monkeypatch.setattr(hostmem.HostSnapshot, "take", classmethod(
        lambda cls: touched.append("take") or cls(nr_hugepages=0, ksm={}, swaps=[])))
    monkeypatch.setattr(hostmem.HostSnapshot, "restore",
                        lambda self: touched.append("restore") or [])
    saved = '{"nr_hugepages": 10120, "ksm": {}, "swaps": []}'
    fd = _hold(lock, "4242 ebb-bench\n")
    try:
        for args in (["save"], ["restore", saved]):
            with pytest.raises(LabError):
                hostmem.main(args, lock_path=lock, lock_timeout_s=0.1)
        assert touched == []
    finally:
        os.close(fd)
    assert hostmem.main(["save"], lock_path=lock, lock_timeout_s=0.1) == 0
    assert hostmem.main(["restore", saved], lock_path=lock, lock_timeout_s=0.1) == 0
    assert touched == ["take", "restore"]
    assert '"nr_hugepages": 0' in capsys.readouterr().out
