"""Reading meminfo, vmstat and PSI from a fixture /proc tree."""

from __future__ import annotations

from pathlib import Path

import pytest
from agent_testkit import GIB_KIB, MIB_KIB, ProcTree
from ebb.guest.collect import CollectError, MemoryCollector, parse_pressure
from ebb.protocol.messages import Report


def test_sample_reads_every_report_field(proc_tree: ProcTree) -> None:
    sample = MemoryCollector(str(proc_tree.root)).sample()

    assert sample.mem_total_kib == 4 * GIB_KIB
    assert sample.mem_free_kib == 2 * GIB_KIB
    assert sample.mem_available_kib == 3 * GIB_KIB
    assert sample.buffers_kib == 64 * MIB_KIB
    assert sample.cached_kib == GIB_KIB
    assert sample.swap_total_kib == sample.swap_free_kib == GIB_KIB
    assert sample.anon_pages_kib == 512 * MIB_KIB
    assert sample.shmem_kib == 32 * MIB_KIB
    assert sample.dirty_kib == MIB_KIB
    assert sample.inactive_file_kib == 512 * MIB_KIB
    assert (sample.pgfault, sample.pgmajfault, sample.pswpin, sample.pswpout) == (
        100000, 500, 0, 0,
    )
    assert sample.psi_some_avg10 == 0.0
    assert sample.psi_some_total_us == 1000
    assert sample.psi_full_total_us == 500
    # The sample fills a protocol report as it is.
    report = Report(seq=1, **sample.report_fields())
    assert report.mem_available_kib == 3 * GIB_KIB


def test_newer_kernels_split_refaults_into_anon_and_file(proc_tree: ProcTree) -> None:
    assert MemoryCollector(str(proc_tree.root)).sample().workingset_refault == 1000

    del proc_tree.vmstat["workingset_refault_anon"]
    del proc_tree.vmstat["workingset_refault_file"]
    proc_tree.vmstat["workingset_refault"] = 77
    proc_tree.write()
    assert MemoryCollector(str(proc_tree.root)).sample().workingset_refault == 77


def test_changes_between_reads_are_seen(proc_tree: ProcTree) -> None:
    collector = MemoryCollector(str(proc_tree.root))
    before = collector.sample()
    proc_tree.vmstat["pgmajfault"] += 250
    proc_tree.pressure = (12.5, 3.25, 900000, 40000)
    proc_tree.write(MemAvailable=GIB_KIB)
    after = collector.sample()

    assert before.mem_available_kib == 3 * GIB_KIB
    assert after.mem_available_kib == GIB_KIB
    assert after.pgmajfault - before.pgmajfault == 250
    assert (after.psi_some_avg10, after.psi_full_avg10) == (12.5, 3.25)
    assert after.psi_some_total_us == 900000


def test_without_psi_the_fields_are_none(proc_tree: ProcTree) -> None:
    proc_tree.pressure = None
    proc_tree.write()
    sample = MemoryCollector(str(proc_tree.root)).sample()
    assert sample.psi_some_avg10 is None
    assert sample.psi_full_avg10 is None
    assert sample.psi_some_total_us is None
    assert Report(seq=1, **sample.report_fields()).psi_full_total_us is None


def test_old_kernel_without_memavailable_gets_an_estimate(proc_tree: ProcTree) -> None:
    del proc_tree.meminfo["MemAvailable"]
    proc_tree.write()
    sample = MemoryCollector(str(proc_tree.root)).sample()
    # MemFree + file LRU + SReclaimable
    assert sample.mem_available_kib == 2 * GIB_KIB + GIB_KIB + 64 * MIB_KIB


def test_psi_some_only_file_is_accepted() -> None:
    # Kernels before 5.x printed no "full" line for cpu; be as lenient for memory.
    pressure = parse_pressure("some avg10=1.50 avg60=0.00 avg300=0.00 total=42\n")
    assert pressure is not None
    assert pressure.some_avg10 == 1.5
    assert pressure.full_avg10 is None
    assert parse_pressure("garbage\n") is None


def test_missing_meminfo_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CollectError, match="cannot read the guest's memory state"):
        MemoryCollector(str(tmp_path)).sample()


def test_meminfo_without_memtotal_is_refused(proc_tree: ProcTree) -> None:
    (proc_tree.root / "meminfo").write_text("this is not meminfo\n")
    with pytest.raises(CollectError, match="no MemTotal"):
        MemoryCollector(str(proc_tree.root)).sample()
