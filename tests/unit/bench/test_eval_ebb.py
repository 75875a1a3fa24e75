"""bench/eval_ebb.py: a run that never got the host leaves other runs alone."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

BENCH = Path(__file__).resolve().parents[3] / "bench"
sys.path.insert(0, str(BENCH))

import eval_ebb  # noqa: E402
from overcommit import report  # noqa: E402
from overcommit.hostctl import HostMemoryError  # noqa: E402


class _NeverHeld:
    """The host-memory lock, held by another run the whole time."""

    def __init__(self, error: BaseException, **_: Any) -> None:
        self.error = error

    def __enter__(self) -> None:
        raise self.error

    def __exit__(self, *exc: object) -> None:
        raise AssertionError("never entered")


@pytest.mark.parametrize("error", [KeyboardInterrupt(), HostMemoryError("lock held 1800 s")])
def test_a_run_waiting_for_the_host_removes_no_guests(
        error: BaseException, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    removed: List[str] = []
    monkeypatch.setattr(eval_ebb.os, "geteuid", lambda: 0)
    monkeypatch.setattr(eval_ebb, "_mem_total_gib", lambda: 24.0)
    monkeypatch.setattr(eval_ebb, "HostMemory", lambda **kw: _NeverHeld(error, **kw))
    monkeypatch.setattr(eval_ebb.harness, "_down", removed.append)
    (tmp_path / "evaluation.json").write_text("{}")

    code = eval_ebb.main(["--short", "--results", str(tmp_path), "--workdir", str(tmp_path)])

    assert code in (2, 130)
    assert removed == [], "a run that never held the host removed guests of the run that does"
    assert (tmp_path / "evaluation.json").read_text() == "{}", "earlier results overwritten"


def _run(config: str, rep: int, p95: float, cpu: Any = None) -> Any:
    run = {"config": config, "rep": rep, "host_swap_in_pages": 0, "host_swap_out_pages": 0,
           "host_swap_ops": 0, "guest_swap_ops": 0, "ksm_pages_sharing_max": 0,
           "balloon": {"count": 0, "moved_mib": 0.0},
           "guests": {"g1": {"latency_p95_ms": p95, "rate_per_s": 16.0,
                             "throughput_kib_s": 8000.0}}}
    if cpu is not None:
        run["cpu"] = cpu
    return run


def test_cpu_used_is_summarised_and_shown_next_to_the_latency() -> None:
    runs = [
        _run("none", 0, 5.0, {"host_cpu_busy_pct": 60.0, "qemu_cpu_pct": 110.0,
                              "ebbd_cpu_pct": None, "agent_cpu_pct_mean": 0.5}),
        _run("cooperative", 0, 6.0, {"host_cpu_busy_pct": 70.0, "qemu_cpu_pct": 125.0,
                                     "ebbd_cpu_pct": 3.25, "agent_cpu_pct_mean": 2.75}),
        # A run from before CPU was measured still counts for latency.
        _run("cooperative", 1, 8.0),
        _run("none", 1, 6.0),
    ]
    summary = eval_ebb.summarise("pagecache", runs)
    coop = summary["medians"]["cooperative"]
    assert coop["latency_p95_ms"] == 7.0
    assert coop["ebbd_cpu_pct"] == 3.25 and coop["agent_cpu_pct_mean"] == 2.75
    assert "ebbd_cpu_pct" not in summary["medians"]["none"]
    assert summary["ratios_to_none"]["cooperative"]["agent_cpu_pct_mean"] == 5.5

    table = "\n".join(eval_ebb.cpu_table({"pagecache": summary}))
    assert "| pagecache | none | 60.0 | 110.0 | - | 0.50 |" in table
    assert "| pagecache | cooperative | 70.0 | 125.0 | 3.25 | 2.75 |" in table
    assert "others (% of a core)" not in table  # not measured by these runs


def test_a_run_the_host_shared_with_other_work_is_listed_with_what_they_took() -> None:
    # Tests run on the host during a run took 48 % of a core, where quiet runs
    # leave 0-10 % to the harness and the kernel: the page must say so.
    quiet = _run("none", 0, 5.0, {"host_cpu_busy_pct": 37.0, "qemu_cpu_pct": 71.0,
                                  "others_cpu_pct": 3.0})
    shared = _run("none", 1, 11.0, {"host_cpu_busy_pct": 60.0, "qemu_cpu_pct": 71.0,
                                    "others_cpu_pct": 47.6})
    lines = "\n".join(report.disturbed_lines({"runs": {"pagecache": [quiet, shared]}}))
    assert "pagecache/none (repetition 2): other processes used 47.6 % of a core" in lines
    assert "repetition 1" not in lines
    table = "\n".join(eval_ebb.cpu_table({"pagecache": eval_ebb.summarise(
        "pagecache", [quiet, shared])}))
    assert "| pagecache | none | 48.5 | 71.0 | - | - | 25.3 |" in table


def _memknobs_run(config: str, rep: int, mb_per_s: float) -> Any:
    return {"config": config, "rep": rep, "host_swap_in_pages": 10, "host_swap_out_pages": 90,
            "host_swap_ops": 100, "guest_swap_ops": 0, "ksm_pages_sharing_max": 0,
            "balloon": {"count": 0, "moved_mib": 0.0},
            "guests": {"g1": {"mb_per_s": mb_per_s}}}


def test_the_unshrunk_host_is_a_reference_row_and_no_target() -> None:
    runs = [_memknobs_run("none", 0, 100.0), _memknobs_run("unconstrained", 0, 150.0),
            _memknobs_run("cooperative", 0, 90.0)]
    summary = {"overcommit": eval_ebb.summarise("overcommit", runs)}
    text = eval_ebb.markdown({"mode": "full", "started": "s", "finished": "f", "host": "h",
                              "reps": 1, "summary": summary, "targets": [], "plots": [],
                              "runs": {"overcommit": runs}})

    row = next(line for line in text.splitlines() if line.startswith("| `unconstrained`"))
    # One repetition: a ratio without an interval, not claimed as a difference.
    assert "| 150 | +50 % (one repetition) |" in row, row
    assert all("unconstrained" not in t["target"] for t in eval_ebb.targets(summary))


def test_runs_of_another_set_up_are_not_mixed_in(tmp_path: Path) -> None:
    scen = eval_ebb.scenarios(short=False, duration_s=None)["overcommit"]
    old = {"mode": "full", "started": "then", "scenarios": {"overcommit": scen.describe()},
           "runs": {"overcommit": [_memknobs_run("classic", 0, 90.0)]}, "plots": []}
    (tmp_path / "evaluation.json").write_text(json.dumps(old))

    def fresh(budget: int) -> Any:
        scen.host_budget_mib = budget
        return {"mode": "full", "reps": 1, "scenarios": {"overcommit": scen.describe()},
                "runs": {"overcommit": []}, "summary": {}, "plots": []}

    same = fresh(2048)
    eval_ebb._carry_over(same, tmp_path / "evaluation.json", {"overcommit": ["none"]}, False)
    assert [r["config"] for r in same["runs"]["overcommit"]] == ["classic"]
    tighter = fresh(1536)
    eval_ebb._carry_over(tighter, tmp_path / "evaluation.json", {"overcommit": ["none"]}, False)
    assert tighter["runs"]["overcommit"] == [], "runs with another host budget mixed in"


@pytest.mark.parametrize("option, value, shown, why", [
    ("disk_iops", 200, "the guests sharing 200 IOPS on the host disk",
     "runs on an unlimited disk mixed in"),
    ("agent_args", "--watch-interval 2", "agents run with `--watch-interval 2`",
     "runs with the default agents mixed in"),
    ("report_interval_ms", 1000, "agents report every 1000 ms",
     "runs at ebbd's report interval mixed in"),
])
def test_a_set_up_option_is_part_of_the_set_up_and_shown(
        tmp_path: Path, option: str, value: Any, shown: str, why: str) -> None:
    scen = eval_ebb.scenarios(short=False, duration_s=None)["overcommit"]
    assert option not in scen.describe()  # results of before the option still match
    old = {"mode": "full", "started": "then", "scenarios": {"overcommit": scen.describe()},
           "runs": {"overcommit": [_memknobs_run("classic", 0, 90.0)]}, "plots": []}
    (tmp_path / "evaluation.json").write_text(json.dumps(old))
    setattr(scen, option, value)
    changed = {"mode": "full", "reps": 1, "scenarios": {"overcommit": scen.describe()},
               "runs": {"overcommit": []}, "summary": {}, "plots": []}
    eval_ebb._carry_over(changed, tmp_path / "evaluation.json", {"overcommit": ["none"]}, False)
    assert changed["runs"]["overcommit"] == [], why

    text = eval_ebb.markdown({"mode": "full", "started": "s", "finished": "f", "host": "h",
                              "reps": 1, "summary": {}, "targets": [], "plots": [],
                              "runs": {}, "scenarios": {"overcommit": scen.describe()}})
    assert ("- overcommit: 4 guests x 768 MiB, host budget 2048 MiB, host swap 4096 MiB, "
            f"240 s of workload, {shown}") in text


def test_a_disk_limit_sets_both_knobs_and_counts_the_guests_ios(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from overcommit import labguests

    root = tmp_path / "blkio"
    root.mkdir()
    (root / "blkio.throttle.read_iops_device").write_text("")
    monkeypatch.setattr(labguests, "BLKIO_ROOT", root)
    disk = labguests.DiskLimit("ebb-bench-oc", "/dev/null", 100)  # 1:3, a device node
    assert (root / "ebb-bench-oc/blkio.throttle.read_iops_device").read_text() == "1:3 100\n"
    assert (root / "ebb-bench-oc/blkio.throttle.write_iops_device").read_text() == "1:3 100\n"
    disk.add(4242)
    assert (root / "ebb-bench-oc/cgroup.procs").read_text() == "4242\n"
    (root / "ebb-bench-oc/blkio.throttle.io_serviced").write_text(
        "254:0 Read 7\n1:3 Read 1088\n1:3 Write 45\n1:3 Sync 1133\n1:3 Total 1133\nTotal 1140\n")
    assert disk.ios() == {"read": 1088, "write": 45}


def test_a_disk_limit_says_when_there_is_no_blkio_throttling(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ebb.lab.errors import LabError
    from overcommit import labguests

    monkeypatch.setattr(labguests, "BLKIO_ROOT", tmp_path)
    with pytest.raises(LabError, match="no blkio throttling"):
        labguests.DiskLimit("ebb-bench-oc", "/dev/null", 100)


def test_the_page_cache_table_says_how_short_the_host_was() -> None:
    # Whether a policy acted at all depends on the host being under its line
    # while the requests were timed: the table shows the freeable memory then.
    runs = [_run("none", 0, 2.0), _run("classic", 0, 2.2)]
    runs[0]["host_freeable_mib"] = {"median": 480, "min": 455}
    runs[1]["host_freeable_mib"] = {"median": 610, "min": 470}
    summary = eval_ebb.summarise("pagecache", runs)
    assert summary["medians"]["classic"]["host_freeable_mib"] == 610
    text = eval_ebb.markdown(_results(summary))
    rows = [line for line in text.splitlines() if line.startswith("| classic |")]
    assert rows and rows[0].endswith("| 610 |")
    # Runs from before the figure was recorded show a dash, not a zero.
    old = eval_ebb.summarise("pagecache", [_run("none", 0, 2.0)])
    text = eval_ebb.markdown(_results(old))
    none_row = next(line for line in text.splitlines() if line.startswith("| none |"))
    assert none_row.endswith("| - |")


def _results(pagecache: Any) -> Any:
    return {"mode": "full", "started": "t0", "host": "h", "reps": 1,
            "summary": {"pagecache": pagecache}, "runs": {}}


def test_appending_twice_keeps_the_first_runs_start(tmp_path: Path) -> None:
    # Each --append run starts from the page the last one wrote; the page must still
    # say when its oldest runs began, not when the run before this one did.
    scen = eval_ebb.scenarios(short=False, duration_s=None)["overcommit"]
    old = {"mode": "full", "started": "2026-12-07 06:11 UTC", "earlier": "2026-12-06 12:41 UTC",
           "scenarios": {"overcommit": scen.describe()},
           "runs": {"overcommit": [_memknobs_run("none", 0, 90.0)]}, "plots": []}
    (tmp_path / "evaluation.json").write_text(json.dumps(old))
    new = {"mode": "full", "reps": 3, "started": "2026-12-07 07:00 UTC",
           "scenarios": {"overcommit": scen.describe()}, "runs": {"overcommit": []},
           "summary": {}, "plots": []}
    eval_ebb._carry_over(new, tmp_path / "evaluation.json", {"overcommit": ["none"]}, True)
    assert new["earlier"] == "2026-12-06 12:41 UTC"


def _sweep_setup(ratios: Dict[float, int]) -> Dict[str, Any]:
    scen = eval_ebb.scenarios(short=False, duration_s=None)["sweep"]
    return dict(scen.describe(), ratios=list(ratios), budgets_mib=list(ratios.values()), reps=1)


def test_one_more_sweep_ratio_joins_the_points_already_measured(tmp_path: Path) -> None:
    # The sweep is long, so its ratios are run a few at a time into one page: a run at
    # 1.25x must keep the 2.5x and 2x points of the same configurations, as one
    # repetition each, and the page must list all three ratios.
    old_runs = [dict(_memknobs_run(c, 0, 90.0), ratio=r, budget_mib=b)
                for c in ("none", "cooperative") for r, b in ((2.5, 1229), (2.0, 1536))]
    old = {"mode": "full", "started": "then",
           "scenarios": {"sweep": _sweep_setup({2.5: 1229, 2.0: 1536})},
           "runs": {"sweep": old_runs}, "plots": []}
    (tmp_path / "evaluation.json").write_text(json.dumps(old))
    new = {"mode": "full", "reps": 3, "started": "now",
           "scenarios": {"sweep": _sweep_setup({1.25: 2458})}, "runs": {"sweep": []},
           "summary": {}, "plots": []}
    first = eval_ebb._carry_over(new, tmp_path / "evaluation.json",
                                 {"sweep": ["none", "cooperative"]}, False)
    assert first == 0
    assert sorted((r["config"], r["ratio"]) for r in new["runs"]["sweep"]) == sorted(
        (r["config"], r["ratio"]) for r in old_runs)
    assert new["scenarios"]["sweep"]["ratios"] == [1.25, 2.0, 2.5]
    assert new["scenarios"]["sweep"]["budgets_mib"] == [2458, 1536, 1229]
    # Running a ratio again replaces that point, not the others.
    again = {"mode": "full", "reps": 3, "started": "now",
             "scenarios": {"sweep": _sweep_setup({2.0: 1536})}, "runs": {"sweep": []},
             "summary": {}, "plots": []}
    eval_ebb._carry_over(again, tmp_path / "evaluation.json", {"sweep": ["none"]}, False)
    assert sorted((r["config"], r["ratio"]) for r in again["runs"]["sweep"]) == [
        ("cooperative", 2.0), ("cooperative", 2.5), ("none", 2.5)]


def test_the_page_cache_table_shows_the_cpu_share_the_latency_followed() -> None:
    # A p95 that rose with the time the vCPUs waited for a host CPU followed the CPU
    # share, not memory: the table shows that wait beside the latency, against none.
    runs = []
    for rep, (none_wait, coop_wait) in enumerate(((4.0, 6.0), (5.0, 6.5), (4.0, 5.0))):
        for config, wait in (("none", none_wait), ("cooperative", coop_wait)):
            run = _run(config, rep, 2.0 + wait / 10)
            run["stall"] = {"stall_s": 0.1, "host_cpu_wait_vcpu_s": wait}
            runs.append(run)
    summary = eval_ebb.summarise("pagecache", runs)
    text = eval_ebb.markdown(_results(summary))
    header = next(line for line in text.splitlines() if "worst guest p95" in line)
    assert "vCPUs' wait for a host CPU (s) | vs none |" in header
    coop = next(line for line in text.splitlines() if line.startswith("| cooperative |"))
    none = next(line for line in text.splitlines() if line.startswith("| none |"))
    assert "| 6.0 | +30 % [+25 % .. +50 %] |" in coop, coop
    assert "| 4.0 | - |" in none, none


def test_a_table_says_when_its_medians_come_from_different_repetitions() -> None:
    # none ran in six repetitions, ksm only in the last three: their medians come from
    # different sittings, and the page says so and points to the paired columns.
    runs = [_run("none", rep, p95) for rep, p95 in enumerate((2.0, 2.1, 2.2, 3.0, 3.1, 3.2))]
    runs += [_run("cooperative", rep, 2.5) for rep in range(3)]
    runs += [_run("ksm", rep, 3.1) for rep in (3, 4, 5)]
    text = eval_ebb.markdown(_results(eval_ebb.summarise("pagecache", runs)))
    note = next((line for line in text.splitlines() if line.startswith("Medians from different")),
                None)
    assert note is not None, text
    assert "`none` 1-6" in note and "`cooperative` 1-3" in note and "`ksm` 4-6" in note, note
    assert "vs" in note

    same = [_run(c, rep, 2.0) for rep in range(3) for c in ("none", "cooperative")]
    text = eval_ebb.markdown(_results(eval_ebb.summarise("pagecache", same)))
    assert "Medians from different" not in text


def test_the_page_cache_table_counts_the_cache_the_guests_read_back() -> None:
    # Whether anything took cache the guests still read shows in their refaults, not in
    # a p95 that follows the CPU share: the table shows them, summed over the guests.
    runs = []
    for rep in range(3):
        for config, refaults in (("none", 0), ("classic", 1200)):
            run = _run(config, rep, 2.0)
            run["guests"]["g2"] = dict(run["guests"]["g1"])
            for guest in run["guests"].values():
                guest["cache_refaults"] = refaults
            runs.append(run)
    runs.append(_run("cooperative", 0, 2.0))  # measured before refaults were counted
    text = eval_ebb.markdown(_results(eval_ebb.summarise("pagecache", runs)))
    header = next(line for line in text.splitlines() if "worst guest p95" in line)
    assert "cache read back (refaults) |" in header, header
    rows = {line.split(" | ")[0]: line for line in text.splitlines()
            if line.startswith(("| none |", "| classic |", "| cooperative |"))}
    assert rows["| classic"].split(" | ")[-2] == "2400", rows["| classic"]
    assert rows["| none"].split(" | ")[-2] == "0", rows["| none"]
    assert rows["| cooperative"].split(" | ")[-2] == "-", rows["| cooperative"]


class _Host:
    """The host-memory lock, free; nothing on the host is changed."""

    def __init__(self, **_: Any) -> None:
        pass

    def __enter__(self) -> _Host:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def add_swap(self, mib: int) -> None:
        pass


def test_an_appended_sweep_numbers_its_repetitions_after_the_earlier_ones(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # More repetitions of a sweep point are added a sitting at a time with --append:
    # they must not take the numbers of the ones already there (each repetition is
    # one sample), and the configurations' order must keep alternating.
    old_runs = [dict(_memknobs_run(c, 0, 90.0), ratio=1.25, budget_mib=2458)
                for c in ("none", "cooperative")]
    old = {"mode": "full", "started": "then",
           "scenarios": {"sweep": _sweep_setup({1.25: 2458})},
           "runs": {"sweep": old_runs}, "plots": []}
    (tmp_path / "evaluation.json").write_text(json.dumps(old))
    ran: List[Any] = []

    def run_config(scenario: Any, config: str, rundir: Path, host: Any, say: Any) -> Any:
        ran.append(config)
        return _memknobs_run(config, -1, 80.0)

    monkeypatch.setattr(eval_ebb.os, "geteuid", lambda: 0)
    monkeypatch.setattr(eval_ebb, "_mem_total_gib", lambda: 24.0)
    monkeypatch.setattr(eval_ebb, "HostMemory", _Host)
    monkeypatch.setattr(eval_ebb.harness, "run_config", run_config)
    monkeypatch.setattr(eval_ebb.harness, "_down", lambda prefix: None)  # no lab guests here

    code = eval_ebb.main(["--only", "sweep:none", "--only", "sweep:cooperative",
                          "--sweep-ratios", "1.25", "--sweep-reps", "2", "--append",
                          "--results", str(tmp_path), "--workdir", str(tmp_path)])

    assert code == 0
    runs = json.loads((tmp_path / "evaluation.json").read_text())["runs"]["sweep"]
    assert sorted((r["rep"], r["config"]) for r in runs) == [
        (0, "cooperative"), (0, "none"), (1, "cooperative"), (1, "none"),
        (2, "cooperative"), (2, "none")]
    # Repetition 0 ran none first; 1 reverses it, 2 rotates it.
    assert ran == ["cooperative", "none", "cooperative", "none"]
