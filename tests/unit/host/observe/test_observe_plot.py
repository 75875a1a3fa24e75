"""Plot: the figure of a run has the panels and series an administrator expects."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict

import pytest
from ebb.host.cli_ebbctl import main as ebbctl
from ebb.host.observe.plot import (
    PlotError,
    build_figure,
    extract_series,
    plot_trace,
    policy_threshold_share,
)
from ebb.host.observe.trace import read_trace

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_figure_has_one_series_per_quantity_and_vm(recorded_trace: Dict[str, Path]) -> None:
    series = extract_series(read_trace(recorded_trace["trace"]))
    assert series.vms == ["vm1", "vm2"]
    figure = build_figure(series)
    mem, balloons, swap, ksm = figure.axes[:4]
    labels = {ax.get_title(loc="left"): [line.get_label() for line in ax.get_lines()]
              for ax in (mem, balloons, swap, ksm)}
    assert labels["Host memory"] == ["host freeable (MemFree+Buffers+Cached)",
                                     "ballooning threshold (20 % of MemTotal)"]
    assert labels["Guest memory (balloon size: memory the guest has)"] == [
        "vm1 balloon", "vm1 target", "vm2 balloon", "vm2 target"]
    assert labels["Swap"] == ["host swap-in", "host swap-out", "vm1 swap in+out",
                              "vm2 swap in+out"]
    assert labels["KSM"] == ["pages shared", "pages sharing"]
    for ax in (mem, balloons, swap, ksm):
        for line in ax.get_lines():
            assert len(line.get_xdata()) == 60


def test_series_values_follow_the_trace(recorded_trace: Dict[str, Path]) -> None:
    series = extract_series(read_trace(recorded_trace["trace"]))
    # 8 GiB host: the threshold is 20 % of it throughout.
    assert {round(v, 3) for v in series.threshold_gib if v is not None} == {1.6}
    # The pressure episode (ticks 10..39) takes freeable memory under the threshold.
    assert series.freeable_gib[5] > 1.6 > series.freeable_gib[10]
    # Balloons start full (2048 MiB) and were inflated during the episode.
    assert series.balloon_cur_mib["vm1"][0] == 2048
    assert min(v for v in series.balloon_cur_mib["vm1"] if v is not None) < 1700
    # The target is drawn from the first decision that set one, then carried forward.
    targets = series.balloon_target_mib["vm1"]
    assert targets[0] is None and targets[-1] == 2048
    # Host swap-out happened (200 pages a tick = 0.39 MiB/s at 2 s ticks).
    assert max(v for v in series.host_swap_out_mib_s if v is not None) == pytest.approx(
        200 * 4 / 1024 / 2.0)
    assert not any(v is not None and math.isnan(v) for v in series.ksm_pages_sharing)


def test_threshold_recorded_by_the_policy_is_drawn(recorded_trace: Dict[str, Path],
                                                   tmp_path: Path) -> None:
    records = list(read_trace(recorded_trace["trace"]))
    for record in records:
        record["variables"] = {"host": {"balloon_threshold": 0.25}, "guests": {}}
    series = extract_series(records)
    assert series.threshold_from_policy
    assert {round(v, 3) for v in series.threshold_gib if v is not None} == {2.0}
    labels = [line.get_label() for line in build_figure(series).axes[0].get_lines()]
    assert "ballooning threshold (policy)" in labels


def test_ebbctl_plot_writes_a_png(recorded_trace: Dict[str, Path], tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "run.png"
    assert ebbctl(["plot", str(recorded_trace["trace"]), "-o", str(output)]) == 0
    assert output.read_bytes()[:8] == PNG_MAGIC
    assert output.stat().st_size > 20_000
    assert "60 ticks" in capsys.readouterr().out


def test_a_trace_without_states_is_refused(tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_text(json.dumps({"tick": 1, "ts": 5.0}) + "\n")
    with pytest.raises(PlotError, match="no tick"):
        plot_trace(trace, tmp_path / "x.png")


def test_threshold_read_from_the_policy_given(recorded_trace: Dict[str, Path],
                                              tmp_path: Path) -> None:
    # The packaged policies keep theirs in `pressure_threshold`; so can any policy.
    policy = tmp_path / "p.policy"
    policy.write_text("(defvar pressure_threshold 0.30)\n")
    output = tmp_path / "run.png"
    assert ebbctl(["plot", str(recorded_trace["trace"]), "-o", str(output),
                   "--policy", str(policy)]) == 0
    records = list(read_trace(recorded_trace["trace"]))
    share = policy_threshold_share([policy], records[0]["state"])
    assert share == pytest.approx(0.30)
    series = extract_series(records, threshold_share=share)
    assert {round(v, 3) for v in series.threshold_gib if v is not None} == {2.4}


def test_packaged_policy_threshold_is_found(recorded_trace: Dict[str, Path]) -> None:
    from ebb.host.config import packaged_policy_dir

    records = list(read_trace(recorded_trace["trace"]))
    share = policy_threshold_share([packaged_policy_dir("cooperative")], records[0]["state"])
    assert share == pytest.approx(0.20)


def test_the_stall_panel_shows_each_guests_psi_from_the_trace(tmp_path: Path) -> None:
    def record(ts: float, host_psi: float, vm1_psi: object) -> Dict[str, object]:
        return {"ts": ts, "state": {
            "host": {"samples": [{"mem_available": 4194304, "mem_free": 1048576,
                                  "psi_some_avg10": host_psi}]},
            "guests": [{"props": {"name": "vm1"},
                        "samples": [{"balloon_cur": 524288, "psi_some_avg10": vm1_psi}]},
                       {"props": {"name": "vm2"}, "samples": [{"balloon_cur": 524288}]}]}}

    trace = tmp_path / "trace.jsonl"
    trace.write_text("".join(json.dumps(r) + "\n" for r in (
        record(100.0, 0.5, 12.0), record(102.0, 1.5, 30.0), record(104.0, 0.0, None))))
    series = extract_series(read_trace(trace))
    assert series.host_psi_some_pct == [0.5, 1.5, 0.0]
    assert series.guest_psi_some_pct["vm1"] == [12.0, 30.0, None]
    assert series.guest_psi_some_pct["vm2"] == [None, None, None]  # no agent: no PSI
    stall = build_figure(series).axes[4]
    assert stall.get_title(loc="left").startswith("Memory stall")
    assert [line.get_label() for line in stall.get_lines()] == ["host", "vm1", "vm2"]
    assert list(stall.get_lines()[1].get_ydata()[:2]) == [12.0, 30.0]
