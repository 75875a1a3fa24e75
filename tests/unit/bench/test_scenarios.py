"""The evaluation's scenarios, plan, baselines and opening lines."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

BENCH = Path(__file__).resolve().parents[3] / "bench"
sys.path.insert(0, str(BENCH))

import eval_ebb  # noqa: E402
from overcommit import harness, report  # noqa: E402

BALLOON = "    <memballoon model='virtio'>\n      <stats period='2'/>\n    </memballoon>\n"


def test_ebbs_configurations_run_with_free_page_reporting_and_the_article_rows_without() -> None:
    fpr = harness.FREE_PAGE_REPORTING
    assert [c for c in report.CONFIGS if fpr[c]] == ["fpr", "classic", "cooperative"]
    assert harness.POLICIES["fpr"] is None  # no ebbd: what a user does instead of ebb


@pytest.mark.parametrize("config", [c for c, d in harness.POLICIES.items() if d is not None])
def test_every_configurations_policy_evaluates_on_a_short_host(config: str) -> None:
    # The ksm row links the shipped KSM file: a name it uses must be defined here too.
    from ebb.host.policy import Entity, PolicyInput, PolicyRunner, load_policy_dir
    host = Entity({"name": "host"}, [{
        "mem_available": 4 * 1024 * 1024, "mem_free": 200 * 1024, "pressure_level": 2,
        "ksm_pages_to_scan": 100, "ksm_shareable": 4 * 1024 * 1024}])
    ev = PolicyRunner(load_policy_dir(harness.POLICIES[config])).evaluate(PolicyInput(host, []))
    assert ev.host_controls.get("ksm_run") == 1


@pytest.mark.parametrize("short", [True, False])
def test_the_growing_guest_grows_after_the_cache_went_cold_and_for_the_whole_run(
        short: bool) -> None:
    cc = eval_ebb.scenarios(short, None)["coldcache"]
    steps = [step.split(":") for step in cc.grower_pattern().split(",")]
    seconds = [float(d.rstrip("s")) for _, d in steps]
    sizes = [int(s.rstrip("M")) for s, _ in steps]
    assert sum(seconds) == cc.duration_s
    assert sizes == sorted(sizes) and sizes[-1] == cc.grower_high_mib
    assert seconds[0] == cc.hold_s
    assert cc.memory_of() == {cc.grower: cc.grower_memory_mib}
    # The grower has no data disk; the cache guests share the page-cache image.
    disks = cc.disks()
    assert [d.target for d in disks[cc.grower]] == ["vda"]
    assert [d.target for d in disks[cc.names[0]]] == ["vda", "vdb"]
    # A shorter --duration keeps a pattern that fits.
    cc_short = eval_ebb.scenarios(short, 40.0)["coldcache"]
    assert sum(float(s.split(":")[1].rstrip("s"))
               for s in cc_short.grower_pattern().split(",")) == 40.0


def test_the_short_mode_runs_every_scenario_but_the_sweep() -> None:
    plan = eval_ebb.make_plan(True, [])
    assert set(plan) == set(eval_ebb.SCENARIOS) - {"sweep"}
    assert "fpr" in plan["overcommit"] and "cooperative" in plan["coldcache"]
    full = eval_ebb.make_plan(False, [])
    assert full["coldcache"] == list(report.CONFIGS)
    assert "unconstrained" not in full["sweep"]
    assert eval_ebb.make_plan(False, ["slowdisk:fpr"]) == {"slowdisk": ["fpr"]}
    with pytest.raises(ValueError, match="unknown scenario"):
        eval_ebb.make_plan(False, ["memknobs"])
    with pytest.raises(ValueError, match="unknown configuration"):
        eval_ebb.make_plan(False, ["sweep:unconstrained"])


def test_the_slow_disk_regime_is_a_named_scenario() -> None:
    sd = eval_ebb.scenarios(False, None)["slowdisk"]
    assert (sd.guests, sd.disk_iops) == (2, 100)


def test_the_sweep_steps_are_the_overcommit_ratios() -> None:
    sweep = eval_ebb.scenarios(False, None)["sweep"]
    assert sweep.total_memory_mib == 4 * 768
    assert eval_ebb.sweep_budgets(sweep) == {1.25: 2458, 1.5: 2048, 2.0: 1536, 2.5: 1229}


def test_the_sweep_runs_the_ratios_asked_for_in_their_order() -> None:
    sweep = eval_ebb.scenarios(False, None)["sweep"]
    budgets = eval_ebb.sweep_budgets(sweep, eval_ebb.parse_ratios("2.5, 2"))
    assert list(budgets.items()) == [(2.5, 1229), (2.0, 1536)]


def test_the_sweeps_set_up_names_a_budget_per_ratio_not_the_scenarios_own() -> None:
    sweep = eval_ebb.scenarios(False, None)["sweep"]
    setup = {**sweep.describe(), "ratios": [2.5, 2.0], "budgets_mib": [1229, 1536]}
    line = report.setup_line(setup)
    assert "overcommit ratios 2.5x (1229 MiB), 2x (1536 MiB)" in line
    assert "2048" not in line


@pytest.mark.parametrize("text, says", [("2,x", "'x' is not a number"),
                                        ("1", "above 1"), ("2,2.0", "given twice")])
def test_a_wrong_sweep_ratio_is_named(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        eval_ebb.parse_ratios(text)


def test_the_operator_figure_is_the_highest_ratio_under_five_percent_stall() -> None:
    points: List[Dict[str, Any]] = []
    for config, shares in (("none", (2.0, 7.0, 12.0, 30.0)),
                           ("cooperative", (1.0, 2.0, 4.0, 9.0)),
                           # A lucky run past a failed one does not count.
                           ("fpr", (6.0, 3.0, 4.0, 20.0))):
        for ratio, budget, share in zip((1.25, 1.5, 2.0, 2.5), (2458, 2048, 1536, 1229), shares):
            points.append({"config": config, "ratio": ratio, "budget_mib": budget,
                           "stall_share_pct": share})
    fig = report.operator_figure(points)
    assert (fig["none"]["max_ratio"], fig["none"]["min_budget_mib"]) == (1.25, 2458)
    assert (fig["cooperative"]["max_ratio"], fig["cooperative"]["min_budget_mib"]) == (2.0, 1536)
    assert fig["fpr"]["max_ratio"] is None
    table = "\n".join(report.sweep_table(fig))
    assert "| cooperative | 1.0 % | 2.0 % | 4.0 % | 9.0 % | 2x (1536 MiB) |" in table
    assert "| fpr | 6.0 % | 3.0 % | 4.0 % | 20.0 % | none of them |" in table


def test_a_configuration_that_never_crossed_the_line_carries_at_least_the_highest_ratio() -> None:
    # Under 5 % at every ratio measured: the sweep found no limit, and the page
    # must not read as if the highest ratio were one.
    points = [{"config": "none", "ratio": r, "budget_mib": b, "stall_share_pct": 1.0}
              for r, b in ((1.25, 2458), (1.5, 2048), (2.0, 1536), (2.5, 1229))]
    fig = report.operator_figure(points)
    assert fig["none"]["max_ratio"] == 2.5
    assert fig["none"]["beyond_sweep"] is True
    table = "\n".join(report.sweep_table(fig))
    assert "| none | 1.0 % | 1.0 % | 1.0 % | 1.0 % | 2.5x or more (1229 MiB or less) |" in table
    assert "none of the configurations reached" in table


def _run(config: str, rep: int, stall_s: float, mb_s: float) -> Dict[str, Any]:
    return {"config": config, "rep": rep, "host_swap_in_pages": 0, "host_swap_out_pages": 0,
            "host_swap_ops": 0, "guest_swap_ops": 0, "ksm_pages_sharing_max": 0,
            "balloon": {"count": 0, "moved_mib": 0.0}, "guests": {"g1": {"mb_per_s": mb_s}},
            "stall": {"stall_s": stall_s, "stall_share_pct": stall_s / 2.4}}


def test_the_page_opens_with_what_each_configuration_wins_or_loses() -> None:
    runs = []
    for rep in range(3):
        runs += [_run("none", rep, 100.0 + rep, 1000.0 + rep),
                 _run("fpr", rep, 60.0 + rep, 1000.0 - rep),
                 _run("cooperative", rep, 20.0 + rep, 1000.0 + 2 * rep)]
    summary = {"overcommit": report.summarise("overcommit", runs)}
    results = {"mode": "full", "started": "s", "finished": "f", "host": "h", "reps": 3,
               "summary": summary, "runs": {"overcommit": runs}}
    text = report.markdown(results)
    opening = text.split("\nRun s ..")[0].strip().splitlines()
    assert len(opening) <= 10
    coop = next(line for line in opening if line.startswith("- **cooperative**"))
    assert "vs `none`: wins on memory stall in overcommit -79 % [-80 % .. -78 %]" in coop
    assert "vs `fpr`: wins on memory stall in overcommit -66 % [-67 % .. -64 %]" in coop
    assert "No difference in the other 2 of 4 comparisons" in coop  # throughput
    real = text.split("## Which differences are real")[1]
    assert "overcommit, cooperative vs fpr, stall_s" in real
    assert "throughput_mb_s" not in real
    # 3 repetitions: a quarter of the comparisons would be "real" by chance alone.
    assert "in 1 comparison of 4 where nothing differs" in real
    assert "Of these 8 comparisons about 2 would be listed here" in real


def test_a_bootstrap_page_states_the_bootstraps_chance_not_the_min_max_one() -> None:
    # 44 comparisons of 6 repetitions each: about 2 clear of "no change" by chance.
    text = " ".join(report.chance_caveat(2.2, 44, min_max=False))
    assert "fewer than 5 repetitions" not in text
    assert "about 1 comparison of 20" in text
    assert "Of these 44 comparisons about 2 would be listed" in text
    assert report.chance_caveat(0.4, 8, min_max=False) == []


def test_the_chance_of_an_interval_clear_of_no_change_without_any_effect() -> None:
    assert report.chance_clear({"reps": 3, "method": "min-max"}) == 0.25
    assert report.chance_clear({"reps": 4, "method": "min-max"}) == 0.125
    assert report.chance_clear({"reps": 6, "method": "bootstrap95"}) == 0.05
    assert report.chance_clear({"reps": 1, "method": "single"}) == 0.0


def test_the_growers_throughput_counts_only_after_it_started_growing() -> None:
    from overcommit.memknobs_eval import throughput

    lines = "\n".join(
        json.dumps({"t_s": t, "size_mib": size, "mb_per_s": rate})
        for t, size, rate in ((10, 64, 9000), (20, 64, 9000), (30, 400, 100), (40, 400, 300)))
    assert throughput(lines)["mb_per_s"] == round((9000 * 20 + 100 * 10 + 300 * 10) / 40, 1)
    assert throughput(lines, since_s=20)["mb_per_s"] == 200.0


def test_the_cold_cache_figures_separate_the_grower_from_the_cache_guests() -> None:
    from pagecache.coldcache import coldcache_figures

    run = {"guests": {
        "cc-1": {"role": "cache", "latency_p95_ms": 3.0, "cache_refaults": 100},
        "cc-2": {"role": "cache", "latency_p95_ms": 5.0, "cache_refaults": 20},
        "cc-3": {"role": "grower", "mb_per_s": 1200.0, "stall_s": 14.5,
                 "swap_in_pages": 10, "swap_out_pages": 30, "cache_refaults": 9000}}}
    # The refaults are the cache guests': the grower's are its own binaries and files.
    assert coldcache_figures(run) == {
        "grower_mb_s": 1200.0, "grower_stall_s": 14.5, "grower_swap_ops": 40.0,
        "cache_latency_p95_ms": 4.0, "cache_latency_p95_worst_ms": 5.0,
        "cache_refaults": 120.0}


def _coldcache_run(config: str, rep: int, p95: float, host_swap: int = 0,
                   grower_stall: float = 0.0, grower_mb_s: float = 100.0) -> Any:
    return {"config": config, "rep": rep, "host_swap_in_pages": host_swap,
            "host_swap_out_pages": 0, "host_swap_ops": host_swap, "guest_swap_ops": 0,
            "ksm_pages_sharing_max": 0, "balloon": {"count": 0, "moved_mib": 0.0},
            "guests": {"c1": {"role": "cache", "latency_p95_ms": p95},
                       "g": {"role": "grower", "mb_per_s": grower_mb_s,
                             "stall_s": grower_stall}}}


def test_the_cold_cache_target_compares_cooperative_with_fpr() -> None:
    def run(config: str, rep: int, host_swap: int, grower_stall: float, p95: float) -> Any:
        return _coldcache_run(config, rep, p95, host_swap=host_swap, grower_stall=grower_stall)

    runs = [run("fpr", r, 10000, 40.0, 3.0) for r in range(3)]
    good = runs + [run("cooperative", r, 500, 10.0, 3.1) for r in range(3)]
    target = report.targets({"coldcache": report.summarise("coldcache", good)})[0]
    assert target["met"], target
    slow_cache = runs + [run("cooperative", r, 500, 10.0, 3.3) for r in range(3)]
    target = report.targets({"coldcache": report.summarise("coldcache", slow_cache)})[0]
    assert not target["met"] and "cache p95 +10 %" in target["measured"]


def test_a_cold_cache_run_that_slows_the_cache_guests_says_so_at_the_top() -> None:
    # The grower gains, the cache guests lose: both belong in the opening lines.
    runs = []
    for rep in range(3):
        runs += [_coldcache_run("fpr", rep, 4.0 + 0.1 * rep),
                 _coldcache_run("cooperative", rep, 5.0 + 0.1 * rep, grower_mb_s=110.0 + rep)]
    summary = {"coldcache": report.summarise("coldcache", runs)}
    text = report.markdown({"mode": "full", "started": "s", "finished": "f", "host": "h",
                            "reps": 3, "summary": summary, "runs": {"coldcache": runs}})
    coop = next(line for line in text.splitlines() if line.startswith("- **cooperative**"))
    assert "wins on growing guest's throughput in coldcache" in coop
    assert "loses on cache guests' p95 in coldcache +2" in coop
    assert "coldcache, cooperative vs fpr, cache_latency_p95_ms" in \
        text.split("## Which differences are real")[1]


def test_a_scenario_merged_from_more_repetitions_says_how_many() -> None:
    # One scenario re-run with 6 repetitions beside others with 3: the page's "repetitions:
    # 3" must not stand for it, nor "min-max over 3" for its bootstrap intervals.
    runs = {"overcommit": [], "pagecache": []}
    for rep in range(6):
        for config in ("none", "cooperative"):
            if rep < 3:
                runs["overcommit"].append(_run(config, rep, 10.0 + rep, 1000.0))
            runs["pagecache"].append(_run(config, rep, 10.0 + rep, 1000.0))
    setup = {"guests": 3, "memory_mib": 512, "host_budget_mib": 1024, "host_swap_mib": 4096,
             "duration_s": 90}
    results = {"mode": "full", "started": "s", "finished": "f", "host": "h", "reps": 3,
               "scenarios": {"overcommit": dict(setup), "pagecache": dict(setup)},
               "summary": {n: report.summarise(n, r) for n, r in runs.items()}, "runs": runs}
    lines = report.markdown(results).splitlines()
    assert next(x for x in lines if x.startswith("- pagecache:")).endswith(
        "; 6 repetitions (bootstrap 95 % intervals)")
    # The header gives a range, so every scenario says its own count.
    assert next(x for x in lines if x.startswith("- overcommit:")).endswith(
        "; 3 repetitions (min-max intervals)")


def test_a_page_of_scenarios_with_different_repetition_counts_claims_no_one_count() -> None:
    # `--append` made Memknobs 7 repetitions beside a page cache of 3, and the page was
    # started in an earlier run: the header must give neither 7 for all nor the last
    # run's start, and must not call the 3-repetition intervals bootstrap.
    runs = {"overcommit": [], "pagecache": []}
    for rep in range(7):
        for config in ("none", "cooperative"):
            stall = (10.0 if config == "none" else 5.0) + rep
            runs["overcommit"].append(_run(config, rep, stall, 1000.0))
            if rep < 3:
                runs["pagecache"].append(_run(config, rep, stall, 1000.0))
    setup = {"guests": 3, "memory_mib": 512, "host_budget_mib": 1024, "host_swap_mib": 4096,
             "duration_s": 90}
    results = {"mode": "full", "started": "2026-12-07 06:11 UTC", "earlier": "2026-12-06 12:41 UTC",
               "finished": "2026-12-07 07:00 UTC", "host": "h", "reps": 7,
               "scenarios": {"overcommit": dict(setup), "pagecache": dict(setup)},
               "summary": {n: report.summarise(n, r) for n, r in runs.items()}, "runs": runs}
    lines = report.markdown(results).splitlines()
    run_line = next(x for x in lines if x.startswith("Run"))
    assert run_line.startswith("Runs 2026-12-06 12:41 UTC .. 2026-12-07 07:00 UTC"), run_line
    assert "repetitions: 3 to 7" in run_line, run_line
    note = next(x for x in lines if x.startswith("Memory stall:"))
    assert "bootstrap 95 % over the repetitions" not in note, note
    assert next(x for x in lines if x.startswith("- overcommit:")).endswith(
        "; 7 repetitions (bootstrap 95 % intervals)")
    assert next(x for x in lines if x.startswith("- pagecache:")).endswith(
        "; 3 repetitions (min-max intervals)")


def test_the_sweep_says_how_often_each_point_ran() -> None:
    setup = {"guests": 4, "memory_mib": 768, "host_budget_mib": 2048, "host_swap_mib": 4096,
             "duration_s": 240, "ratios": [2.5], "budgets_mib": [1229], "reps": 1}
    runs = {"sweep": [dict(_run(c, 0, 1.0, 1000.0), ratio=2.5) for c in ("none", "fpr")]}
    text = report.markdown({"mode": "full", "started": "s", "finished": "f", "host": "h",
                            "reps": 3, "scenarios": {"sweep": setup}, "summary": {},
                            "runs": runs})
    line = next(x for x in text.splitlines() if x.startswith("- sweep:"))
    assert line.endswith("; 1 repetition (no intervals) of each point"), line


def _sweep_run(config: str, rep: int, ratio: float, stall_s: float, mb_s: float,
               guest_swap: int = 0) -> Dict[str, Any]:
    budget = {1.25: 2458, 2.0: 1536, 3.0: 1024}[ratio]
    return dict(_run(config, rep, stall_s, mb_s), ratio=ratio, budget_mib=budget,
                guest_swap_ops=guest_swap)


def _sweep_page(runs: List[Dict[str, Any]]) -> List[str]:
    ratios = sorted({r["ratio"] for r in runs})
    setup = {"guests": 4, "memory_mib": 768, "host_budget_mib": 2048, "host_swap_mib": 4096,
             "duration_s": 240, "ratios": ratios, "budgets_mib": [2458, 1536, 1024][:len(ratios)],
             "reps": 1}
    results = {"mode": "full", "started": "s", "finished": "f", "host": "h", "reps": 3,
               "scenarios": {"sweep": setup},
               "summary": {"sweep": eval_ebb.summarise_any("sweep", runs)},
               "runs": {"sweep": runs}}
    return report.markdown(results).splitlines()


def test_a_sweep_point_run_three_times_shows_its_spread_and_its_cost_against_none() -> None:
    # The operator's figure only says whether the stall crossed 5 %; a point run three
    # times must show how far its repetitions spread, and what a configuration paid on
    # the way (here cooperative's guests swap at 2x in every repetition).
    runs = []
    for rep in range(3):
        runs += [_sweep_run("none", rep, 1.25, 0.1 * (rep + 1), 100.0),
                 _sweep_run("cooperative", rep, 1.25, 0.1, 100.0 + rep),
                 _sweep_run("none", rep, 2.0, 2.4, 100.0, guest_swap=1000 + rep),
                 _sweep_run("cooperative", rep, 2.0, 2.4 * (rep + 1), 80.0 - rep,
                            guest_swap=4000 + 4 * rep)]
    runs += [_sweep_run("none", 0, 3.0, 2.4, 90.0), _sweep_run("cooperative", 0, 3.0, 2.4, 70.0)]
    lines = _sweep_page(runs)

    head = next(x for x in lines if x.startswith("- sweep:"))
    assert head.endswith("; 3 repetitions of each point at 1.25x and 2x, 1 at 3x "
                         "(min-max intervals)"), head
    row = next(x for x in lines if x.startswith("| cooperative |"))
    # 2.4, 4.8 and 7.2 s of 240 s: 1 %, 2 % and 3 %; the single 3x run has no spread.
    assert "| 2.0 % (1.0-3.0) |" in row
    assert row.endswith("| 1.0 % | 3x or more (1024 MiB or less) |"), row
    at_2x = next(x for x in lines if x.startswith("| 2x | `cooperative` |"))
    assert "-21 % [-22 % .. -20 %]" in at_2x  # throughput 80, 79, 78 against 100
    real = lines[lines.index("## Which differences are real"):]
    assert any(x.startswith("- sweep 2x, cooperative vs none, guest_swap_ops: +300 %")
               for x in real), real
    assert not any("sweep 3x" in x for x in real), "one repetition is not a difference"


def test_a_baseline_run_in_two_repetitions_makes_no_headline() -> None:
    # `none` added to a scenario in 2 repetitions beside 5 of the others: its two
    # ratios may both fall on one side by chance, so the opening lines must not
    # call them a win or a loss, and must say why they are left out.
    runs = []
    for rep in range(5):
        runs += [_run("fpr", rep, 10.0 + rep, 1000.0), _run("cooperative", rep, 10.0 + rep, 1000.0)]
        if rep >= 3:
            runs.append(_run("none", rep, 20.0 + rep, 1200.0))
    summary = {"overcommit": report.summarise("overcommit", runs)}
    coop = next(line for line in report.headline(summary) if line.startswith("- **cooperative**"))
    assert "vs `none`" not in coop, coop
    assert "2 comparisons of 2 repetitions, too few to tell" in coop, coop
    real = "\n".join(report.real_differences(summary))
    assert "vs none" not in real, real
    assert "more of 2 repetitions are too few to tell" in real, real


def test_the_cold_cache_table_counts_the_cache_guests_read_back() -> None:
    runs = []
    for rep in range(3):
        for config, refaults in (("fpr", 0), ("cooperative", 300)):
            run = _coldcache_run(config, rep, 3.0)
            run["guests"]["c1"]["cache_refaults"] = refaults
            runs.append(run)
    lines = report.scenario_table("coldcache", report.summarise("coldcache", runs))
    header = next(line for line in lines if "growing guest's stall" in line)
    assert "| cache guests' refaults |" in header, header
    coop = next(line for line in lines if line.startswith("| cooperative |"))
    assert coop.split(" | ")[-2] == "300", coop


def test_the_page_cache_target_shows_the_median_it_is_judged_on() -> None:
    # The target is judged on the median ratio; "no difference (-19 % .. +43 %)" alone
    # hides the +17 % that fails it.
    def run(config: str, rep: int, p95: float) -> Any:
        return {"config": config, "rep": rep, "host_swap_in_pages": 0,
                "host_swap_out_pages": 0, "host_swap_ops": 0, "guest_swap_ops": 0,
                "ksm_pages_sharing_max": 0, "balloon": {"count": 0, "moved_mib": 0.0},
                "guests": {"g1": {"latency_p95_ms": p95}}}

    runs = []
    for rep, (none, coop) in enumerate(((4.0, 3.2), (3.0, 3.5), (2.5, 2.95), (2.5, 3.6))):
        runs += [run("none", rep, none), run("cooperative", rep, coop)]
    target = report.targets({"pagecache": report.summarise("pagecache", runs)})[-1]
    assert not target["met"]
    assert target["measured"] == ("cooperative: median +17 %, no difference (-20 % .. +44 %)")


def test_a_scenario_whose_configurations_ran_unequal_repetitions_says_so() -> None:
    # `none` ran beside `cooperative` in repetitions 1-3 and beside `ksm` in 4-6: six
    # repetitions of the scenario, but every comparison holds three, and min-max they are.
    runs = {"slowdisk": [], "overcommit": []}
    for rep in range(6):
        runs["slowdisk"] += [_run("none", rep, 10.0 + rep, 1000.0),
                             _run("cooperative" if rep < 3 else "ksm", rep, 12.0, 990.0)]
    for rep in range(3):
        runs["overcommit"] += [_run(c, rep, 10.0, 1000.0) for c in ("none", "fpr")]
    setup = {"guests": 2, "memory_mib": 768, "host_budget_mib": 1024, "host_swap_mib": 4096,
             "duration_s": 240}
    results = {"mode": "full", "started": "s", "finished": "f", "host": "h", "reps": 3,
               "scenarios": {"slowdisk": dict(setup), "overcommit": dict(setup)},
               "summary": {n: report.summarise(n, r) for n, r in runs.items()}, "runs": runs}
    text = report.markdown(results)
    line = next(x for x in text.splitlines() if x.startswith("- slowdisk:"))
    assert line.endswith("; 6 repetitions of `none`, 3 of `ksm` and `cooperative` "
                         "(min-max intervals)"), line
    note = next(x for x in text.splitlines() if x.startswith("Memory stall:"))
    assert "intervals: min-max over 3 repetitions." in note, note
