"""Putting the host back: hugepages and KSM as they were, but never someone else's change."""

from __future__ import annotations

from pathlib import Path

from ebb.host.lab import hostmem


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
