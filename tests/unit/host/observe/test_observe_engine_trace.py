"""The real engine writes the trace; replay and plot read it back.

The engine runs over the daemon core's fakes (a fake hypervisor, fixture /proc
and sysfs) with the TraceWriter as its observer, while host memory goes
through a pressure episode. The trace it writes replays to the same decisions
with the same policy, and plots.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, List

# The daemon core's fakes live with the engine's tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))

from ebb.host.collectors import HostCollector
from ebb.host.controllers import BalloonController, KsmController
from ebb.host.engine import Engine, EngineSettings
from ebb.host.governor import Governor
from ebb.host.observe.plot import build_figure, extract_series
from ebb.host.observe.replay import replay_trace
from ebb.host.observe.trace import TraceWriter, read_trace
from ebb.host.policy import PolicyRunner
from ebb_core_fakes import (
    GIB_KIB,
    FakeHypervisor,
    FakeVm,
    RecordingChannels,
    RecordingObserver,
    make_host_tree,
    write_meminfo,
)
from synthetic_trace import DAEMON_LIMITS, write_policy

HOST_KIB = 16 * GIB_KIB


class _Clock:
    """Monotonic and wall clocks moving together, one tick interval per tick."""

    def __init__(self, wall_step_at_mono_s: float | None = None, wall_step_s: float = 0.0) -> None:
        self.mono_s = 1000.0
        #: A wall-clock step (NTP, an administrator) from this monotonic time on.
        self.wall_step_at_mono_s = wall_step_at_mono_s
        self.wall_step_s = wall_step_s

    def mono(self) -> float:
        return self.mono_s

    def wall(self) -> float:
        stepped = self.wall_step_at_mono_s is not None and self.mono_s >= self.wall_step_at_mono_s
        return 1_764_000_000.0 + self.mono_s + (self.wall_step_s if stepped else 0.0)


def _run_engine(
    tmp_path: Path, policy: Path, ticks: int, max_bytes: int = 1_000_000,
    clock: _Clock | None = None, beta_follows_target: bool = True,
) -> Dict[str, Any]:
    proc, sys_root = make_host_tree(tmp_path / "host", total_kib=HOST_KIB)
    hypervisor = FakeHypervisor([FakeVm("alpha", max_kib=4 * GIB_KIB, cur_kib=4 * GIB_KIB),
                                 FakeVm("beta", max_kib=4 * GIB_KIB, cur_kib=4 * GIB_KIB,
                                        follows_target=beta_follows_target)])
    runner = PolicyRunner()
    assert runner.reload(policy) == []
    trace_path = tmp_path / "ebbd-trace.jsonl"
    writer = TraceWriter(trace_path, max_bytes=max_bytes, keep_files=3)
    observer = RecordingObserver()
    clock = clock or _Clock()
    engine = Engine(
        EngineSettings(interval_s=2.0),
        host=HostCollector(proc, sys_root),
        hypervisor=hypervisor,
        channels=RecordingChannels(),
        runner=runner,
        governor=Governor(DAEMON_LIMITS),
        balloon=BalloonController(hypervisor, dry_run=False),
        ksm=KsmController(sys_root, tmp_path / "run", dry_run=False),
        observers=[writer, observer],
        clock=clock.mono,
        wall_clock=clock.wall,
    )
    for tick in range(ticks):
        # Freeable memory: 40 % of the host, 12 % during ticks 5..19, then 40 % again;
        # what the balloons took comes back to the host.
        taken = sum(4 * GIB_KIB - vm.cur_kib for vm in hypervisor.vms.values())
        share = 0.12 if 5 <= tick < 20 else 0.40
        write_meminfo(proc, total_kib=HOST_KIB, free_kib=int(share * HOST_KIB) + taken)
        engine.tick()
        clock.mono_s += 2.0
    writer.close()
    return {"trace": trace_path, "calls": list(hypervisor.balloon_calls),
            "records": [json.loads(r.to_json()) for r in observer.records]}


def test_engine_trace_replays_to_the_same_decisions_and_plots(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, 0.20)
    run = _run_engine(tmp_path, policy, ticks=30)
    trace = run["trace"]
    assert isinstance(trace, Path)
    records: List[Dict[str, object]] = list(read_trace(trace))
    assert [r["tick"] for r in records] == list(range(1, 31))
    assert run["calls"], "the pressure episode should have moved balloons"

    same = replay_trace(trace, policy, governor_config=DAEMON_LIMITS)
    assert same.ticks == 30
    assert same.ticks_differing == 0, same.differences[:3]
    assert same.recorded.inflations > 0
    assert same.recorded.to_dict() == same.replayed.to_dict()

    eager = replay_trace(trace, write_policy(tmp_path, 0.45), governor_config=DAEMON_LIMITS)
    assert eager.ticks_differing > 0
    assert eager.replayed.inflations > eager.recorded.inflations

    series = extract_series(read_trace(trace))
    assert series.vms == ["alpha", "beta"]
    figure = build_figure(series)
    assert sum(len(ax.get_lines()) for ax in figure.axes[:4]) == 2 + 4 + 4 + 2


def test_trace_reads_back_exactly_what_the_engine_recorded_in_a_fraction_of_the_space(
    tmp_path: Path,
) -> None:
    policy = write_policy(tmp_path, 0.20)
    run = _run_engine(tmp_path, policy, ticks=40)
    assert list(read_trace(run["trace"])) == run["records"]
    full_bytes = sum(len(json.dumps(r, separators=(",", ":"))) + 1 for r in run["records"])
    written = run["trace"].stat().st_size
    assert written < full_bytes / 4, (written, full_bytes)


def test_every_rotated_file_reads_on_its_own(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, 0.20)
    run = _run_engine(tmp_path, policy, ticks=40, max_bytes=12_000)
    trace = run["trace"]
    older = trace.with_name(trace.name + ".1")
    assert older.exists(), "the run should have rotated"
    # The whole set reads back exactly (the oldest files were dropped by rotation) ...
    records = list(read_trace(trace))
    assert records == run["records"][-len(records):]
    # ... and so does each file alone, starting with full histories.
    alone = list(read_trace(older))
    first = alone[0]["tick"]
    assert alone == run["records"][first - 1:first - 1 + len(alone)]


def test_trace_records_the_governors_clock_and_replay_follows_it(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, 0.20)
    # The wall clock jumps an hour ahead early in the pressure episode (NTP),
    # while beta ignores its balloon: by the wall clock beta would be stuck and
    # uncooperative at once; ebbd's governor runs on the monotonic clock and
    # gives it its full time.
    clock = _Clock(wall_step_at_mono_s=1000.0 + 2 * 6, wall_step_s=3600.0)
    run = _run_engine(tmp_path, policy, ticks=30, clock=clock, beta_follows_target=False)
    records = list(read_trace(run["trace"]))
    assert [r["mono"] for r in records] == [1000.0 + 2 * i for i in range(30)]
    assert records[6]["ts"] - records[5]["ts"] > 3600

    same = replay_trace(run["trace"], policy, governor_config=DAEMON_LIMITS)
    assert same.ticks_differing == 0, same.differences[:3]


def test_trace_records_the_policys_variables_and_plot_draws_its_threshold(
    tmp_path: Path,
) -> None:
    policy = tmp_path / "setvar.policy"
    policy.write_text(
        write_policy(tmp_path, 0.25).read_text()
        + '(Host.SetVar "balloon_threshold" threshold)\n'
        + '(Host.SetVar "ticks" (+ 1 (if (Host.GetVar "ticks") (Host.GetVar "ticks") 0)))\n'
    )
    run = _run_engine(tmp_path, policy, ticks=3)
    records = list(read_trace(run["trace"]))
    assert [r["variables"]["host"] for r in records] == [
        {"balloon_threshold": 0.25, "ticks": n} for n in (1, 2, 3)]
    assert all(r["variables"]["guests"] == {} for r in records)

    series = extract_series(records)
    assert series.threshold_from_policy
    total_gib = HOST_KIB / (1024 * 1024)
    assert series.threshold_gib == [0.25 * total_gib] * 3
