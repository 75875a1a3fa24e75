"""bench/overcommit/stall.py: the memory stall of a run, inside the guests and on the host."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[3] / "bench"
sys.path.insert(0, str(BENCH))

from overcommit import stall  # noqa: E402

PSI = ("some avg10=1.00 avg60=0.50 avg300=0.10 total={some}\n"
       "full avg10=0.50 avg60=0.20 avg300=0.05 total={full}\n")


def _stat(majflt: int, blkio: int) -> str:
    # pid (comm with) spaces) state ... : majflt is field 12, delayacct_blkio_ticks 42.
    fields = ["S"] + ["0"] * 49
    fields[12 - 3] = str(majflt)
    fields[42 - 3] = str(blkio)
    return "4242 (qemu-system x86) " + " ".join(fields) + "\n"


def test_psi_totals_become_seconds_of_stall_over_the_workload() -> None:
    before = stall.parse_psi(PSI.format(some=1_000_000, full=400_000))
    after = stall.parse_psi(PSI.format(some=13_500_000, full=2_400_000))
    assert stall.psi_delta_s(before, after) == {"some": 12.5, "full": 2.0}
    # A kernel without PSI: nothing to subtract, no figure (not a zero).
    assert stall.psi_delta_s({}, after) == {}


def test_host_events_are_counted_over_the_run() -> None:
    before = {"compact_stall": 100, "thp_fault_fallback": 7, "pgmajfault": 50, "pswpin": 1}
    after = {"compact_stall": 160, "thp_fault_fallback": 9, "pgmajfault": 50, "pswpin": 5,
             "thp_fault_alloc": 3}
    assert stall.host_event_deltas(before, after) == {
        "compact_stall": 60, "thp_fault_fallback": 2, "pgmajfault": 0}


def test_the_host_side_reads_the_guests_own_cgroup_and_its_qemu(tmp_path: Path) -> None:
    proc, run = tmp_path / "proc", tmp_path / "run"
    cg = tmp_path / "cgroup2"
    group = cg / "machine" / "qemu-3-g1.libvirt-qemu"
    for d in (proc / "4242", proc / "sys/kernel", run, group / "vcpu0", group / "emulator"):
        d.mkdir(parents=True)
    (proc / "mounts").write_text(f"cgroup2 {cg} cgroup2 rw 0 0\n")
    (proc / "sys/kernel/task_delayacct").write_text("0\n")
    (run / "g1.pid").write_text("4242\n")
    (proc / "4242/cgroup").write_text("4:memory:/machine/qemu-3-g1.libvirt-qemu\n"
                                      "0::/machine/qemu-3-g1.libvirt-qemu/emulator\n")

    def state(majflt: int, some: int, vcpu_some: int, vcpu_io: int, vcpu_cpu: int) -> None:
        (proc / "4242/stat").write_text(_stat(majflt, 7))
        (group / "memory.pressure").write_text(PSI.format(some=some, full=0))
        (group / "vcpu0/memory.pressure").write_text(PSI.format(some=vcpu_some, full=0))
        (group / "vcpu0/io.pressure").write_text(PSI.format(some=vcpu_io, full=0))
        (group / "vcpu0/cpu.pressure").write_text(PSI.format(some=vcpu_cpu, full=vcpu_cpu))

    meter = stall.HostStallMeter(["g1"], proc=proc, run_dir=run)
    state(100, 1_000_000, 500_000, 0, 2_000_000)
    meter.start()
    state(350, 9_000_000, 6_500_000, 10_000_000, 5_250_000)
    meter.end()
    figures = meter.figures()["g1"]
    assert figures["qemu_major_faults"] == 250
    assert figures["host_stall_some_s"] == 8.0 and figures["host_stall_vcpu_s"] == 6.0
    # Swap-ins of pages evicted long ago are I/O waits: the vCPU waited 10 s in all.
    assert figures["host_io_vcpu_s"] == 10.0
    assert stall.host_vcpu_wait_s(figures) == 10.0
    # Its vCPU was ready but waited 3.25 s for a host CPU: reported, never a memory stall.
    assert figures["host_cpu_wait_vcpu_s"] == 3.25
    # The sampler's per-second timeline reads only that counter.
    assert meter.cpu_wait_us("g1") == 5_250_000
    assert meter.cpu_wait_us("absent") is None
    assert stall.guest_total_stall_s(figures) == 10.0
    # Delay accounting is off: its block I/O delay is not reported as if it were 0.
    assert "qemu_blkio_delay_s" not in figures


def test_a_guest_in_the_root_cgroup_has_no_group_of_its_own() -> None:
    assert stall.cgroup_v2_dir("0::/\n", Path("/sys/fs/cgroup")) is None
    assert stall.cgroup_v2_dir("0::/machine/qemu-1-a.libvirt-qemu/vcpu1\n",
                               Path("/cg")) == Path("/cg/machine/qemu-1-a.libvirt-qemu")


def test_the_total_stall_adds_the_guests_psi_and_the_host_stall_of_its_vcpus() -> None:
    per_guest = {"g1": {"guest_stall_some_s": 3.0, "host_stall_vcpu_s": 2.0,
                        "host_io_vcpu_s": 1.5, "host_stall_some_s": 2.5},
                 "g2": {"guest_stall_some_s": 1.0, "host_stall_some_s": 4.0}}
    for figures in per_guest.values():
        figures["stall_s"] = stall.guest_total_stall_s(figures)
    assert per_guest["g1"]["stall_s"] == 5.0
    assert per_guest["g2"]["stall_s"] == 5.0  # no vCPU group: the whole QEMU's
    summary = stall.stall_summary(per_guest, elapsed_s=100.0)
    assert summary["stall_s"] == 10.0
    assert summary["stall_share_pct"] == 5.0  # 10 s of 2 guests x 100 s
    assert stall.guest_total_stall_s({}) is None
