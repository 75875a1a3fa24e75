"""Replay and plot on a trace recorded by the real ebbd in the lab.

data/lab-pressure/trace.jsonl was written by ebbd (cooperative policy, default
limits) during the end-to-end host-pressure test: 512 MiB guests under libvirt,
the host shrunk with hugepages until freeable memory fell under 20 %, balloons
inflating, then the hugepages released and the balloons deflating.

``policy/`` is the cooperative policy as it was then and ``ebbd.toml`` pins the
governor limits, so the replay does not move when the packaged policy or the
defaults evolve. (A change of the governor's own rules would make the recorded
decisions differ: re-record the trace then.)
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from ebb.host.cli_ebbctl import main as ebbctl
from ebb.host.config import load_config
from ebb.host.observe.plot import build_figure, extract_series, policy_threshold_share
from ebb.host.observe.replay import ReplayReport, replay_trace
from ebb.host.observe.trace import read_trace
from ebb.host.settings import governor_config

LAB = Path(__file__).with_name("data") / "lab-pressure"
TRACE = LAB / "trace.jsonl"


def _replay(policy: Path) -> ReplayReport:
    limits = governor_config(load_config(LAB / "ebbd.toml"))
    return replay_trace(TRACE, policy, governor_config=limits)


def _policy_with_threshold(tmp_path: Path, share: float) -> Path:
    policy = tmp_path / f"policy-{share:g}"
    shutil.copytree(LAB / "policy", policy)
    defines = policy / "00-defines.policy"
    text = defines.read_text()
    assert "(defvar pressure_threshold 0.20)" in text
    defines.write_text(text.replace("(defvar pressure_threshold 0.20)",
                                    f"(defvar pressure_threshold {share})"))
    return policy


def test_the_recording_policy_reproduces_every_decision() -> None:
    report = _replay(LAB / "policy")
    assert report.ticks == 78
    assert report.ticks_differing == 0
    assert report.recorded.inflations == report.replayed.inflations == 17
    assert report.recorded.deflations == report.replayed.deflations == 24
    assert report.recorded.total_kib == report.replayed.total_kib > 0


def test_a_higher_threshold_takes_more_memory_sooner(tmp_path: Path) -> None:
    report = _replay(_policy_with_threshold(tmp_path, 0.30))
    assert report.ticks_differing > 0
    assert report.replayed.inflations > report.recorded.inflations
    assert report.replayed.total_kib > report.recorded.total_kib
    # The first difference comes before the recorded run started inflating.
    first_recorded_inflation = min(
        r["tick"] for r in read_trace(TRACE)
        if any(d["kind"] == "inflate" for d in r["decisions"])
    )
    assert report.differences[0].tick < first_recorded_inflation
    assert report.differences[0].replayed_kind == "inflate"


def test_a_lower_threshold_leaves_the_guests_alone(tmp_path: Path) -> None:
    report = _replay(_policy_with_threshold(tmp_path, 0.10))
    assert report.ticks_differing > 0
    assert report.replayed.inflations < report.recorded.inflations
    assert report.replayed.total_kib < report.recorded.total_kib


def test_ebbctl_replay_on_the_lab_trace(capsys: pytest.CaptureFixture[str]) -> None:
    assert ebbctl(["replay", str(TRACE), "--policy", str(LAB / "policy"),
                   "--config", str(LAB / "ebbd.toml")]) == 0
    assert "ticks that differ: 0 of 78" in capsys.readouterr().out


def test_the_lab_run_plots_with_the_policy_threshold() -> None:
    records = list(read_trace(TRACE))
    share = policy_threshold_share([LAB / "policy"], records[0]["state"])
    assert share == pytest.approx(0.20)
    series = extract_series(records, threshold_share=share)
    assert len(series.vms) == 4
    # Freeable memory went from ~90 % of the host to under the threshold and back.
    freeable = [v for v in series.freeable_gib if v is not None]
    assert freeable[0] > 4 * series.threshold_gib[0]
    assert min(freeable) < series.threshold_gib[0] < freeable[-1]
    # Balloons were inflated, then given back.
    e2e_1 = [v for v in series.balloon_cur_mib["ebb-e2e-1"] if v is not None]
    assert min(e2e_1) < 300 and e2e_1[-1] > 500
    figure = build_figure(series)
    assert [len(ax.get_lines()) for ax in figure.axes[:4]] == [2, 8, 6, 2]


def test_ebbctl_replay_does_not_load_the_daemon(tmp_path: Path) -> None:
    """A replay needs the config's governor limits, not ebbd: it must not import it."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from ebb.host.cli_ebbctl import main\n"
        f"code = main(['replay', {str(TRACE)!r}, '--policy', {str(LAB / 'policy')!r},"
        f" '--config', {str(LAB / 'ebbd.toml')!r}, '--json'])\n"
        "assert code == 0, code\n"
        "print('ebb.host.app' in sys.modules, file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "False"
