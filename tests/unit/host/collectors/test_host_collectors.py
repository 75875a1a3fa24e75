"""The host collector on fixture /proc and sysfs trees."""

from __future__ import annotations

from pathlib import Path

import pytest
from ebb.host.collectors import CollectorError, HostCollector, find_kernel_thread, qemu_rss_kib
from ebb.host.collectors.procfs import clock_ticks_per_s, parse_stat_cpu_ticks
from ebb.host.policy.fields import HOST_FIELDS

MEMINFO = """\
MemTotal:       16384000 kB
MemFree:         4000000 kB
MemAvailable:    9000000 kB
Buffers:          100000 kB
Cached:          2000000 kB
SwapCached:            0 kB
AnonPages:       6000000 kB
SwapTotal:       2097148 kB
SwapFree:        1097148 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
"""

PRESSURE = """\
some avg10=1.50 avg60=0.80 avg300=0.20 total=123456
full avg10=0.25 avg60=0.10 avg300=0.00 total=6789
"""

KSM = {
    "run": 1,
    "pages_to_scan": 100,
    "sleep_millisecs": 20,
    "merge_across_nodes": 1,
    "pages_shared": 300,
    "pages_sharing": 1200,
    "pages_unshared": 50,
    "pages_volatile": 7,
    "full_scans": 9,
}


def ksmd_stat(pid: int, utime: int, stime: int, ppid: int = 2) -> str:
    # Fields after "(comm)": state ppid pgrp session tty tpgid flags minflt cminflt majflt
    # cmajflt utime stime ...
    return f"{pid} (ksmd) S {ppid} 0 0 0 -1 2097216 0 0 0 0 {utime} {stime} 0 0 25 5 1 0 16\n"


class Tree:
    """A fixture /proc and /sys the test can change between samples."""

    def __init__(self, root: Path) -> None:
        self.proc = root / "proc"
        self.sys = root / "sys"
        self.proc.mkdir()
        (self.sys / "kernel" / "mm").mkdir(parents=True)
        self.write("meminfo", MEMINFO)
        self.vmstat(pswpin=100, pswpout=200)
        self.write("pressure/memory", PRESSURE)
        self.ksm_dir = self.sys / "kernel" / "mm" / "ksm"
        self.ksm_dir.mkdir()
        for name, value in KSM.items():
            (self.ksm_dir / name).write_text(f"{value}\n")
        # A user process called ksmd must not be mistaken for the kernel thread.
        self.process(7, "ksmd", ksmd_stat(7, 5000, 5000, ppid=1))
        self.process(36, "ksmd", ksmd_stat(36, 10, 5))

    def write(self, relative: str, text: str) -> None:
        path = self.proc / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def vmstat(self, pswpin: int, pswpout: int) -> None:
        self.write("vmstat", f"nr_free_pages 1000\npswpin {pswpin}\npswpout {pswpout}\n"
                             "pgmajfault 42\n")

    def process(self, pid: int, comm: str, stat: str) -> None:
        self.write(f"{pid}/comm", f"{comm}\n")
        self.write(f"{pid}/stat", stat)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return Tree(tmp_path)


def test_fields_follow_mom_semantics(tree: Tree) -> None:
    sample = HostCollector(tree.proc, tree.sys).collect(vm_assigned_kib=4_000_000)
    f = sample.fields
    assert f["mem_available"] == 16384000  # MemTotal (no hugepages reserved here)
    assert f["mem_unused"] == 4000000  # MemFree
    assert f["mem_free"] == 4000000 + 100000 + 2000000  # MemFree + Buffers + Cached
    assert f["anon_pages"] == 6000000
    assert f["swap_total"] == 2097148
    assert f["swap_usage"] == 1000000
    assert f["swap_in"] == 100 and f["swap_out"] == 200  # cumulative pages
    assert f["ksm_run"] == 1
    assert f["ksm_pages_to_scan"] == 100
    assert f["ksm_sleep_millisecs"] == 20
    assert f["ksm_pages_shared"] == 300
    assert f["ksm_pages_sharing"] == 1200
    assert f["ksm_pages_unshared"] == 50
    assert f["ksm_pages_volatile"] == 7
    assert f["ksm_full_scans"] == 9
    assert f["ksm_merge_across_nodes"] == 1
    assert f["ksm_shareable"] == 4_000_000
    assert f["psi_some_avg10"] == 1.5
    assert f["psi_full_avg10"] == 0.25
    assert sample.mem_available_kib == 9000000  # the kernel's own MemAvailable
    assert sample.freeable_share == pytest.approx(6100000 / 16384000)


def test_field_names_are_exactly_the_policy_table(tree: Tree) -> None:
    sample = HostCollector(tree.proc, tree.sys).collect()
    assert set(sample.fields) == set(HOST_FIELDS)


def test_rates_use_the_interval_between_samples(tree: Tree) -> None:
    clock = FakeClock()
    collector = HostCollector(tree.proc, tree.sys, clock=clock)
    first = collector.collect()
    assert first.fields["swap_in_rate"] == 0.0
    assert first.fields["ksmd_cpu_usage"] == 0.0
    clock.now += 2.0
    tree.vmstat(pswpin=300, pswpout=210)
    ticks = clock_ticks_per_s()
    # ksmd used one CPU-second (utime + stime) in those 2 s: 50 % of a core.
    tree.process(36, "ksmd", ksmd_stat(36, 10 + ticks // 2, 5 + ticks // 2))
    second = collector.collect()
    assert second.fields["swap_in_rate"] == pytest.approx(100.0)
    assert second.fields["swap_out_rate"] == pytest.approx(5.0)
    assert second.swap_in_per_s == pytest.approx(100.0)
    assert second.fields["ksmd_cpu_usage"] == pytest.approx(50.0)
    assert second.fields["swap_in"] == 300


def test_a_quick_tick_does_not_read_a_few_pages_as_heavy_swapping(tree: Tree) -> None:
    # ebbd ticks again as soon as 0.25 s after a tick when the host crosses a
    # threshold. 64 pages in those 0.25 s are 1 MiB/s, the "high" swap line,
    # though the host swapped them over more than two seconds: rates are taken
    # over at least the last second.
    clock = FakeClock()
    collector = HostCollector(tree.proc, tree.sys, clock=clock)
    collector.collect()
    clock.now += 2.0
    collector.collect()
    clock.now += 0.25
    tree.vmstat(pswpin=164, pswpout=200)
    quick = collector.collect()
    assert quick.fields["swap_in_rate"] == pytest.approx(64 / 2.25)
    assert quick.fields["pressure_level"] < 2  # not "high"


def test_rates_over_the_last_second_follow_a_burst(tree: Tree) -> None:
    # Samples 0.25 s apart: the rate is over the newest span of at least a
    # second, so a burst shows within a second and is not diluted for longer.
    clock = FakeClock()
    collector = HostCollector(tree.proc, tree.sys, clock=clock)
    collector.collect()
    swapped = 100
    rates = []
    for _ in range(8):
        clock.now += 0.25
        swapped += 1000
        tree.vmstat(pswpin=swapped, pswpout=200)
        rates.append(collector.collect().fields["swap_in_rate"])
    assert rates[3:] == [pytest.approx(4000.0)] * 5
    assert rates[0] == pytest.approx(4000.0)  # nothing older than the first sample
    assert len(collector._swap_history) <= 6  # a second's worth, not every sample


def test_no_ksm_and_no_psi_give_nil_fields(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "meminfo").write_text(MEMINFO)
    sample = HostCollector(proc, tmp_path / "sys").collect()
    for name in ("ksm_run", "ksm_pages_sharing", "ksmd_cpu_usage", "psi_some_avg10",
                 "psi_full_avg10", "swap_in", "swap_out"):
        assert sample.fields[name] is None, name
    assert sample.fields["swap_in_rate"] == 0.0
    assert sample.ksm == {}
    assert sample.status_dict()["ksm"]["run"] is None


def test_unreadable_psi_is_nil_not_a_crash(tree: Tree) -> None:
    # A kernel booted with psi=0 fails the read (EOPNOTSUPP); a directory fails it too.
    (tree.proc / "pressure" / "memory").unlink()
    (tree.proc / "pressure" / "memory").mkdir()
    sample = HostCollector(tree.proc, tree.sys).collect()
    assert sample.psi_some_avg10 is None
    assert sample.fields["mem_available"] == 16384000


def test_missing_meminfo_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(CollectorError, match="proc_root"):
        HostCollector(tmp_path / "nowhere", tmp_path).collect()


def test_status_dict_has_the_contract_keys(tree: Tree) -> None:
    status = HostCollector(tree.proc, tree.sys).collect().status_dict()
    assert status == {
        "mem_total_kib": 16384000,
        "hugetlb_kib": 0,
        "mem_free_kib": 4000000,
        "freeable_kib": 6100000,
        "mem_available_kib": 9000000,
        "swap_total_kib": 2097148,
        "swap_used_kib": 1000000,
        "swap_in_per_s": 0.0,
        "swap_out_per_s": 0.0,
        "psi_some_avg10": 1.5,
        "ksm": {"run": 1, "pages_to_scan": 100, "sleep_millisecs": 20, "pages_shared": 300,
                "pages_sharing": 1200},
    }


def test_ksmd_is_the_kernel_thread_not_a_namesake(tree: Tree) -> None:
    assert find_kernel_thread(tree.proc, "ksmd") == 36
    assert find_kernel_thread(tree.proc, "kswapd0") is None


def test_stat_parsing_survives_odd_command_names() -> None:
    line = "99 (a) b (c) S 1 0 0 0 -1 0 0 0 0 0 17 4 0 0 20 0 1 0 5\n"
    assert parse_stat_cpu_ticks(line) == 21


def test_qemu_rss_from_statm(tree: Tree) -> None:
    import os

    page_kib = os.sysconf("SC_PAGE_SIZE") // 1024
    tree.write("4242/statm", "500000 25000 3000 1 0 400000 0\n")
    assert qemu_rss_kib(4242, tree.proc) == 25000 * page_kib
    assert HostCollector(tree.proc, tree.sys).qemu_rss_kib(4242) == 25000 * page_kib
    assert qemu_rss_kib(4243, tree.proc) is None


def test_reserved_hugepages_are_not_host_memory(tree: Tree) -> None:
    """Hugepages reserved on the host cannot hold a ballooned guest's memory, and a
    balloon cannot give them back: the host's total and pressure leave them out."""
    tree.write("meminfo", MEMINFO.replace("HugePages_Total:       0",
                                          "HugePages_Total:    5000"))
    sample = HostCollector(tree.proc, tree.sys).collect()
    usable = 16384000 - 5000 * 2048
    assert sample.fields["mem_available"] == usable
    assert sample.hugetlb_kib == 5000 * 2048
    assert sample.freeable_share == pytest.approx(6100000 / usable)
    assert sample.status_dict()["hugetlb_kib"] == 5000 * 2048


def test_hugetlb_line_counts_pages_of_every_size(tree: Tree) -> None:
    # Kernels from 5.x add "Hugetlb:" (all sizes, KiB); it wins over the default-size count.
    tree.write("meminfo", MEMINFO.replace("HugePages_Total:       0",
                                          "HugePages_Total:    1000\nHugetlb:     3096576 kB"))
    sample = HostCollector(tree.proc, tree.sys).collect()
    assert sample.fields["mem_available"] == 16384000 - 3096576


def test_pressure_probe_agrees_with_the_collector(tree: Tree) -> None:
    from ebb.host.engine import read_freeable_share

    tree.write("meminfo", MEMINFO.replace("HugePages_Total:       0",
                                          "HugePages_Total:    5000"))
    sample = HostCollector(tree.proc, tree.sys).collect()
    assert read_freeable_share(tree.proc) == pytest.approx(sample.freeable_share)
