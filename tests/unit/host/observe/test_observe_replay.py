"""Replay: the recorded policy reproduces its decisions; another policy shows where it differs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

import pytest
from ebb.host.cli_ebbctl import main as ebbctl
from ebb.host.observe.replay import ReplayError, ReplayReport, format_report, replay_trace
from synthetic_trace import DAEMON_LIMITS, write_policy


def _replay(trace: Path, policy: Path, open_loop: bool = False) -> ReplayReport:
    """Replay with the limits of the daemon that recorded the trace."""
    return replay_trace(trace, policy, governor_config=DAEMON_LIMITS, open_loop=open_loop)


def test_same_policy_gives_the_same_decisions(recorded_trace: Dict[str, Path]) -> None:
    report = _replay(recorded_trace["trace"], recorded_trace["policy"])
    assert report.ticks == 60
    assert report.ticks_differing == 0
    assert report.differences == []
    assert report.host_control_differences == []
    assert report.recorded.to_dict() == report.replayed.to_dict()
    assert report.recorded.inflations > 0 and report.recorded.deflations > 0
    assert report.recorded.total_kib > 0


def test_a_higher_threshold_balloons_earlier_and_more(
    recorded_trace: Dict[str, Path], tmp_path: Path
) -> None:
    eager = write_policy(tmp_path, 0.35)
    report = _replay(recorded_trace["trace"], eager)
    assert report.ticks_differing > 0
    # At 35 % the host (31 % freeable at rest) counts as short from the first tick.
    first = report.differences[0]
    assert first.tick == 0
    assert first.recorded_target_kib is None and first.replayed_kind == "inflate"
    assert report.replayed.inflations > report.recorded.inflations
    assert report.replayed.total_kib != report.recorded.total_kib
    assert report.host_control_differences  # KSM would have run at other times too
    text = format_report(report, limit=3)
    assert "ticks that differ: " in text
    assert "more differences" in text


def test_ebbctl_replay_json(recorded_trace: Dict[str, Path], tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    lazy = write_policy(tmp_path, 0.10)
    assert ebbctl(["replay", str(recorded_trace["trace"]), "--policy", str(lazy), "--json",
                   "--config", str(recorded_trace["config"])]) == 0
    result = json.loads(capsys.readouterr().out)
    summary = result["summary"]
    assert summary["ticks"] == 60
    assert result["model"] == "shifted-balloons"
    # At 10 % the host counts as short later and less often: less ballooning.
    assert summary["replayed"]["inflations"] < summary["recorded"]["inflations"]
    assert summary["replayed"]["total_mib"] < summary["recorded"]["total_mib"]
    assert summary["ticks_differing"] == len({d["tick"] for d in result["differences"]})
    # The first difference: the recording inflated again while the replay gives back.
    first = result["differences"][0]
    assert first["recorded_kind"] == "inflate" and first["replayed_kind"] == "deflate"


def test_open_loop_replays_the_recorded_balloons_unchanged(
    recorded_trace: Dict[str, Path], tmp_path: Path
) -> None:
    eager = write_policy(tmp_path, 0.35)
    shifted = _replay(recorded_trace["trace"], eager)
    open_loop = _replay(recorded_trace["trace"], eager, open_loop=True)
    assert open_loop.to_dict()["model"] == "open-loop"
    # Balloons that really stayed full never follow the replayed requests: the
    # replayed governor finds them making no progress and stops asking.
    rules = {d.replayed_rule for d in open_loop.differences}
    assert rules & {"stuck", "uncooperative"}
    assert not {d.replayed_rule for d in shifted.differences} & {"stuck", "uncooperative"}
    assert open_loop.replayed.inflations < shifted.replayed.inflations


def test_ebbctl_replay_text_with_the_same_policy(
    recorded_trace: Dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["replay", str(recorded_trace["trace"]), "--policy", str(recorded_trace["policy"]),
            "--config", str(recorded_trace["config"])]
    assert ebbctl(args) == 0
    out = capsys.readouterr().out
    assert "ticks that differ: 0 of 60" in out


def test_a_broken_policy_is_reported_with_its_position(
    recorded_trace: Dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.policy"
    broken.write_text("(defvar x 1)\n(frobnicate x)\n")
    with pytest.raises(ReplayError, match=r"broken.policy:2:"):
        _replay(recorded_trace["trace"], broken)
    args = ["replay", str(recorded_trace["trace"]), "--policy", str(broken),
            "--config", str(recorded_trace["config"])]
    assert ebbctl(args) == 1
    assert "broken.policy:2:" in capsys.readouterr().err


def test_a_policy_failing_at_run_time_counts_errors_and_sets_nothing(
    recorded_trace: Dict[str, Path], tmp_path: Path
) -> None:
    failing = tmp_path / "failing.policy"
    failing.write_text('(with Guests g (g.Control "balloon_target" (+ g.balloon_cur nil)))\n')
    report = _replay(recorded_trace["trace"], failing)
    assert report.policy_errors_replayed == 60
    assert report.first_policy_error is not None
    assert "failing.policy:1:" in report.first_policy_error
    assert report.replayed.inflations == 0


def test_a_trace_without_states_cannot_be_replayed(tmp_path: Path,
                                                   recorded_trace: Dict[str, Path]) -> None:
    trace = tmp_path / "empty.jsonl"
    trace.write_text('{"tick": 1, "ts": 1.0}\n')
    with pytest.raises(ReplayError, match="no tick with recorded state"):
        _replay(trace, recorded_trace["policy"])


def test_a_daemon_restart_in_the_trace_restarts_the_replayed_governor(
    recorded_trace: Dict[str, Path], tmp_path: Path
) -> None:
    # Two runs of ebbd appended to one trace: the second starts again at tick 0,
    # with a fresh governor, as the synthetic recorder does.
    records = [json.loads(line) for line in recorded_trace["trace"].read_text().splitlines()]
    twice = tmp_path / "twice.jsonl"
    twice.write_text("".join(json.dumps(r) + "\n" for r in records + records))
    report = _replay(twice, recorded_trace["policy"])
    assert report.daemon_restarts == 1
    assert report.ticks == 120
    assert report.ticks_differing == 0
