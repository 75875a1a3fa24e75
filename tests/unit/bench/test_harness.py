"""bench/overcommit/harness.py: what a run's figures count, and over which span."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[3] / "bench"
sys.path.insert(0, str(BENCH))

import ebb.host.observe.trace  # noqa: E402,F401 - imported here: prometheus_client reads /proc
from overcommit import cpu  # noqa: E402
from overcommit.harness import (  # noqa: E402
    balloon_movements,
    freeable_during,
    guest_vm_figures,
    ksm_peak,
    yield_outcomes,
)
from overcommit.report import yield_figures  # noqa: E402


def _tick(ts: float, before_kib: int, target_kib: int) -> dict:
    return {"ts": ts, "tick": int(ts), "state": {"host": {"samples": []}, "guests": []},
            "applied": [{"vm": "g1", "before_kib": before_kib, "target_kib": target_kib,
                         "outcome": "applied"}]}


def test_balloon_moves_after_the_workload_are_not_counted(tmp_path: Path) -> None:
    # ebbd keeps ticking while the benchmark reads its figures in the guests;
    # what it does then changes nothing the run measured.
    trace = tmp_path / "trace.jsonl"
    ticks = [_tick(100.0, 524288, 500000), _tick(102.0, 500000, 480000),
             _tick(130.0, 480000, 400000)]
    trace.write_text("".join(json.dumps(t) + "\n" for t in ticks))
    everything = balloon_movements(trace)
    assert everything["count"] == 3
    during = balloon_movements(trace, until=120.0)
    assert during == {"count": 2, "moved_mib": round((524288 - 480000) / 1024, 1),
                      "inflations": 2, "deflations": 0}


def test_freeable_memory_is_read_over_the_workload_window_only() -> None:
    samples = [{"t_s": t, "host": {"freeable_kib": mib * 1024}}
               for t, mib in ((0.0, 1200), (10.0, 700), (20.0, 650), (30.0, 600), (40.0, 100))]
    assert freeable_during(samples, 10.0, 30.0) == {"median": 650, "min": 600}
    assert freeable_during(samples, 50.0, 60.0) == {"median": None, "min": None}


def test_ksm_counters_left_over_from_an_earlier_run_are_not_counted() -> None:
    # ksmd keeps its last counters while off: a run without KSM shares nothing.
    def sample(run: int, sharing: int) -> dict:
        return {"t_s": 0.0, "host": {"ksm_run": run, "ksm_pages_sharing": sharing,
                                     "ksm_pages_shared": sharing // 2}}

    assert ksm_peak([sample(0, 53804), sample(0, 53804)]) == {"sharing": 0, "shared": 0}
    assert ksm_peak([sample(0, 53804), sample(1, 1200), sample(1, 9000)]) == \
        {"sharing": 9000, "shared": 4500}


def test_cpu_shares_end_when_the_workload_ends(tmp_path: Path, monkeypatch) -> None:
    # The host and the processes are read at end(); stop() may come later (after
    # ebbd is stopped) and must not count what happened in between.
    ticks = iter([(100, 1000), (150, 1100), (190, 1200)])
    monkeypatch.setattr(cpu, "host_cpu_ticks", lambda: next(ticks))
    monkeypatch.setattr(cpu, "qemu_pid", lambda name: None)
    monkeypatch.setattr(cpu, "ksmd_pid", lambda: None)
    monkeypatch.setattr(cpu, "agent_cpu_s", lambda shell: None)
    meter = cpu.CpuMeter(names=["g1"])
    meter.start([])
    meter.end()
    assert meter.stop([])["host_cpu_busy_pct"] == 50.0


def test_yields_are_counted_with_what_came_back_and_how_long_it_took(tmp_path: Path) -> None:
    def tick(ts: float, *events: dict) -> dict:
        return {"ts": ts, "tick": int(ts), "state": {"host": {"samples": []}, "guests": []},
                "applied": [], "yields": list(events)}

    def result(outcome: str, returned_kib: int, took_s: float) -> dict:
        return {"vm": "g1", "kind": "yield-result", "outcome": outcome,
                "inputs": {"returned_kib": returned_kib, "took_s": took_s}}

    request = {"vm": "g1", "kind": "yield-request", "outcome": "sent", "inputs": {}}
    trace = tmp_path / "trace.jsonl"
    ticks = [tick(100.0, request), tick(102.0, result("returned", 40 * 1024, 2.0), request),
             tick(106.0, result("nothing", 0, 5.0)), tick(130.0, request)]
    trace.write_text("".join(json.dumps(t) + "\n" for t in ticks))
    got = yield_outcomes(trace, until=120.0)
    assert got == {"requests": 2, "outcomes": {"returned": 1, "nothing": 1},
                   "returned_mib": 40.0, "took_s": [2.0]}
    figures = yield_figures(got)
    assert figures["yield_took_median_s"] == 2.0 and figures["yield_returned"] == 1


def test_the_benchmark_ebbd_is_scoped_by_its_config(tmp_path: Path) -> None:
    """Plain ebbd, told by its ebbd.toml which VMs and which agent port are the benchmark's."""
    from ebb.host.config import load_config
    from ebb.host.hypervisor.connection import domain_matches
    from overcommit.harness import EbbdProcess
    from overcommit.labguests import BENCH_PORT

    ebbd = EbbdProcess(tmp_path, tmp_path / "policies", prefix="ebb-bench[1]")
    config = load_config(ebbd.config)
    assert config.hypervisor.manage_opted_out is True
    assert config.guests.agent_channel == BENCH_PORT != "org.ebb.agent.0"
    patterns = config.hypervisor.domains
    assert domain_matches("ebb-bench[1]-2", patterns)
    assert not domain_matches("ebb-bench1-2", patterns)  # the prefix is literal
    assert not domain_matches("ebb-lab-1", patterns)
    assert config.guests.report_interval_ms == 2000  # ebbd's default unless asked
    (tmp_path / "b").mkdir()
    slower = EbbdProcess(tmp_path / "b", tmp_path / "policies", prefix="p-",
                         report_interval_ms=1000)
    assert load_config(slower.config).guests.report_interval_ms == 1000


def test_a_guests_counters_say_what_it_swapped_and_read_back_from_disk() -> None:
    # Cache a guest read back after it was evicted (refaults) is what squeezing its
    # page cache costs it: counted apart from its swapping.
    before = {"pswpin": 10, "pswpout": 20, "pgmajfault": 5, "workingset_refault_file": 100,
              "pgpgin": 4000}
    after = {"pswpin": 15, "pswpout": 20, "pgmajfault": 8, "workingset_refault_file": 350,
             "pgpgin": 5024}
    assert guest_vm_figures(before, after) == {
        "swap_in_pages": 5, "swap_out_pages": 0, "major_faults": 3, "cache_refaults": 250,
        "disk_read_kib": 1024}
    # A kernel before 5.9 counts refaults in one counter (file pages only then).
    old = guest_vm_figures({"workingset_refault": 7}, {"workingset_refault": 9})
    assert old["cache_refaults"] == 2
    # Without either counter nothing is claimed.
    assert "cache_refaults" not in guest_vm_figures({}, {})
