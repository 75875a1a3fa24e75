"""ebb's evaluation on the lab: the MOM article's experiments and the baselines users pick.

One command runs it all (as root; it boots lab guests and shrinks the host)::

    sudo .venv/bin/python bench/eval_ebb.py                 # full: hours
    sudo .venv/bin/python bench/eval_ebb.py --short         # a few minutes (CI)
    sudo .venv/bin/python bench/eval_ebb.py --only overcommit:classic --reps 1

Scenarios (docs/evaluation.md describes each): ``overcommit`` (Memknobs guests
whose demand shifts between them), ``pagecache`` (guests reading a working set
of files from a virtio disk), ``coldcache`` (guests holding page cache they read
once while another guest grows), ``slowdisk`` (Memknobs, two guests sharing 100
IOPS), and ``sweep`` (Memknobs at overcommit ratios 1.25x to 2.5x: the host
budget each configuration needs to keep the memory stall under 5 %).
Configurations: ``none``, ``fpr`` (free page reporting, no ebbd),
``unconstrained`` (the host not shrunk) as baselines, and ``ksm``, ``classic``,
``cooperative``. Every configuration runs on freshly booted guests, with the
same pattern and duration; repetitions alternate the order of the
configurations. Results go to ``--results`` (default ``results/``):
``evaluation.json``, ``evaluation.md`` and one PNG per configuration.

While it runs it holds ``/run/ebb-host-memory.lock`` and puts the host back
(hugepages, swap file, KSM, its ``ebb-bench-*`` guests) on every exit, Ctrl-C
included.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ebb.lab.errors import LabError
from overcommit import harness, plots
from overcommit.hostctl import HostMemory, HostMemoryError
from overcommit.memknobs_eval import MemknobsScenario
from overcommit.report import (  # noqa: F401
    CONFIGS,
    CPU_KEYS,
    KIND,
    cpu_figures,
    cpu_table,
    figures_of,
    markdown,
    operator_figure,
    pagecache_figures,
    summarise,
    sweep_points,
    targets,
    total_throughput,
)
from pagecache.coldcache import ColdCacheScenario
from pagecache.scenario import PageCacheScenario

REPO = Path(__file__).resolve().parent.parent
PREFIX = "ebb-bench"
SCENARIOS = ("overcommit", "pagecache", "coldcache", "slowdisk", "sweep")
#: The sweep leaves out the ceiling: the unshrunk host has no budget to sweep.
SWEEP_CONFIGS = ("none", "fpr", "ksm", "classic", "cooperative")
SWEEP_RATIOS = (1.25, 1.5, 2.0, 2.5)
#: What ``--short`` runs: every scenario but the sweep, end to end, with the
#: configurations that exercise each path (free page reporting, ebbd, the disk limit).
SHORT_PLAN = {"overcommit": ["none", "fpr"], "pagecache": ["cooperative"],
              "coldcache": ["cooperative"], "slowdisk": ["none"]}
WORKDIR = Path("/var/lib/ebb-bench/runs")
# Kept for scripts that import them.
OVERCOMMIT_CONFIGS = CONFIGS
PAGECACHE_CONFIGS = CONFIGS


def scenarios(short: bool, duration_s: Optional[float]) -> Dict[str, harness.Scenario]:
    if short:
        oc = MemknobsScenario(name="overcommit", prefix=f"{PREFIX}-oc", guests=2,
                              memory_mib=512, floor_mib=128, duration_s=duration_s or 30,
                              host_budget_mib=700, host_swap_mib=2048, slot_s=10,
                              guest_swap_mib=512)
        pc = PageCacheScenario(name="pagecache", prefix=f"{PREFIX}-pc", guests=2,
                               memory_mib=384, floor_mib=96, duration_s=duration_s or 30,
                               host_budget_mib=600, host_swap_mib=2048, files=200,
                               file_kib=512, guest_swap_mib=256)
        cc = ColdCacheScenario(name="coldcache", prefix=f"{PREFIX}-cc", guests=3,
                               memory_mib=384, floor_mib=96, duration_s=duration_s or 40,
                               host_budget_mib=800, host_swap_mib=2048, files=200,
                               file_kib=512, guest_swap_mib=256, grower_memory_mib=512,
                               grower_high_mib=384, hold_s=15, grow_steps=3, step_s=5)
        # Short of memory only a little: at 100 IOPS a host that swaps much stretches
        # the 30 s of workload to minutes, and the short mode only proves the limit works.
        sd = MemknobsScenario(name="slowdisk", prefix=f"{PREFIX}-sd", guests=2,
                              memory_mib=512, floor_mib=128, duration_s=duration_s or 30,
                              host_budget_mib=900, host_swap_mib=2048, slot_s=10,
                              guest_swap_mib=512, disk_iops=100)
    else:
        oc = MemknobsScenario(name="overcommit", prefix=f"{PREFIX}-oc", guests=4,
                              memory_mib=768, floor_mib=192, duration_s=duration_s or 240,
                              host_budget_mib=2048, host_swap_mib=4096, slot_s=40,
                              guest_swap_mib=1024)
        pc = PageCacheScenario(name="pagecache", prefix=f"{PREFIX}-pc", guests=3,
                               memory_mib=512, floor_mib=128, duration_s=duration_s or 90,
                               host_budget_mib=1024, host_swap_mib=4096, files=600,
                               file_kib=512, guest_swap_mib=512)
        # Three cache guests hold 300 MiB of cache each; the grower's 768 MiB do not
        # fit beside that cache, and fit once the cold cache is given back. At 1792
        # MiB and above free page reporting alone fits on most runs (docs/evaluation.md,
        # "calibrated"): 1600 MiB.
        cc = ColdCacheScenario(name="coldcache", prefix=f"{PREFIX}-cc", guests=4,
                               memory_mib=512, floor_mib=128, duration_s=duration_s or 300,
                               host_budget_mib=1600, host_swap_mib=4096, files=600,
                               file_kib=512, guest_swap_mib=512, grower_memory_mib=1024,
                               grower_high_mib=768, hold_s=150, grow_steps=4, step_s=15)
        # The regime where the unshrunk host beat none by 25 % (results/log-2026-12.md).
        sd = MemknobsScenario(name="slowdisk", prefix=f"{PREFIX}-sd", guests=2,
                              memory_mib=768, floor_mib=192, duration_s=duration_s or 240,
                              host_budget_mib=1024, host_swap_mib=4096, slot_s=40,
                              guest_swap_mib=1024, disk_iops=100)
    if duration_s is not None:
        # A shorter run keeps the cold-cache pattern's shape: half cold, then growth.
        cc.hold_s = min(cc.hold_s, float(int(duration_s / 2)))
        cc.step_s = min(cc.step_s, float(max(1, int(duration_s / (4 * cc.grow_steps)))))
    sweep = dataclasses.replace(oc, name="sweep", prefix=f"{PREFIX}-sw")
    return {"overcommit": oc, "pagecache": pc, "coldcache": cc, "slowdisk": sd,
            "sweep": sweep}


def sweep_budgets(scenario: harness.Scenario,
                  ratios: Sequence[float] = SWEEP_RATIOS) -> Dict[float, int]:
    """Host budget (MiB) per overcommit ratio: the guests' memory over the ratio."""
    return {r: round(scenario.total_memory_mib / r) for r in ratios}


def parse_ratios(text: str) -> List[float]:
    """``"2.5,2"`` -> [2.5, 2.0]: overcommit ratios above 1, each once, in the order given.

    ValueError says which item is wrong.
    """
    ratios: List[float] = []
    for item in text.split(","):
        try:
            ratio = float(item)
        except ValueError:
            raise ValueError(f"{item.strip()!r} is not a number") from None
        if not 1.0 < ratio <= 10.0:
            raise ValueError(f"{item.strip()}: a ratio is guests' memory over the host budget, "
                             "above 1 and at most 10")
        if ratio in ratios:
            raise ValueError(f"{item.strip()} is given twice")
        ratios.append(ratio)
    return ratios


def summarise_any(name: str, runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """A scenario's summary; the sweep's is the operator's figure."""
    if name == "sweep":
        ratios = sorted({float(r["ratio"]) for r in runs})
        return {"operator": operator_figure(sweep_points(runs)),
                "ratios": {f"{ratio:g}": summarise(name, [r for r in runs
                                                          if float(r["ratio"]) == ratio])
                           for ratio in ratios}}
    return summarise(name, runs)


def order_for(configs: Sequence[str], rep: int) -> List[str]:
    """Repetition 0 in the given order, 1 reversed, 2 rotated by one, ..."""
    items = list(configs)
    if rep % 2 == 1:
        items.reverse()
    shift = rep // 2
    return items[shift % len(items):] + items[:shift % len(items)]


def next_rep(runs: Sequence[Dict[str, Any]], ratio: float) -> int:
    """The first repetition number not yet taken at one of the sweep's ratios.

    An appended sweep numbers its repetitions after the ones already measured, so
    they are told apart and the configurations' order keeps alternating.
    """
    return max([0] + [r.get("rep", 0) + 1 for r in runs if r.get("ratio") == ratio])


# -- running ---------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run ebb's evaluation: Memknobs, page cache, cold cache + growth, the slow "
                    "disk, and the overcommit sweep, against none, fpr and the unshrunk host.")
    parser.add_argument("--short", action="store_true",
                        help="a few minutes, small guests, every scenario but the sweep with "
                        "one or two configurations (proves the benchmark works; figures are "
                        "not meaningful)")
    parser.add_argument("--only", action="append", default=[], metavar="SCENARIO[:CONFIG]",
                        help="run only this scenario (" + ", ".join(SCENARIOS) + "), or one "
                        "configuration of it (e.g. overcommit:classic); repeatable")
    parser.add_argument("--reps", type=int, default=None, metavar="N",
                        help="repetitions (default 1 short, 3 full)")
    parser.add_argument("--sweep-reps", type=int, default=1, metavar="N",
                        help="repetitions of each point of the sweep (default 1)")
    parser.add_argument("--sweep-ratios", default=None, metavar="R,R,...",
                        help="the sweep's overcommit ratios, run in this order (default "
                        + ",".join(f"{r:g}" for r in SWEEP_RATIOS) + "); e.g. 2.5,2 to "
                        "measure the ratios where configurations part first")
    parser.add_argument("--duration", type=float, default=None, metavar="S",
                        help="workload seconds per configuration (default 240 Memknobs, 90 "
                        "page cache, 300 cold cache; 30-50 short)")
    parser.add_argument("--host-budget", type=int, default=None, metavar="MIB",
                        help="host MemAvailable left to the guests, for every scenario run "
                        "but the sweep (defaults in docs/evaluation.md): how far the host is "
                        "overcommitted")
    parser.add_argument("--guests", type=int, default=None, metavar="N",
                        help="guests per scenario (default 4 overcommit, 3 pagecache, 3+1 "
                        "coldcache, 2 slowdisk; 2 short); with fewer guests than CPUs a guest "
                        "that waits for memory leaves its CPU idle instead of to the other "
                        "guests (pair with --host-budget)")
    parser.add_argument("--disk-iops", type=int, default=None, metavar="N",
                        help="the guests' QEMU processes together may do at most N reads and N "
                        "writes a second on the host disk (host swap-ins and guest disk I/O "
                        "alike), as one disk of the article's era would; default: unlimited "
                        "(100 for slowdisk)")
    parser.add_argument("--agent-args", default="", metavar="ARGS",
                        help="added to every guest's ebb-agent command line, e.g. "
                        "'--no-yield' to measure what the yields cost")
    parser.add_argument("--report-interval-ms", type=int, default=None, metavar="MS",
                        help="ebbd's guests.report_interval_ms: how often agents report "
                        "(default: ebbd's, 2000)")
    parser.add_argument("--results", default=str(REPO / "results"), metavar="DIR",
                        help="where evaluation.json/.md and the PNGs go (default results/)")
    parser.add_argument("--workdir", default=str(WORKDIR), metavar="DIR",
                        help=f"per-run files: traces, samples, logs (default {WORKDIR})")
    parser.add_argument("--append", action="store_true",
                        help="keep the runs already in --results as earlier repetitions and "
                        "add this run's after them")
    parser.add_argument("--retries", type=int, default=1, metavar="N",
                        help="run a configuration again when someone else changed the host's "
                        "hugepages or swap during it (default 1); kept flagged otherwise")
    parser.add_argument("--report", action="store_true",
                        help="only rewrite evaluation.md (summaries, targets) from the "
                        "evaluation.json in --results; runs nothing")
    parser.add_argument("--lock-timeout", type=float, default=1800.0, metavar="S")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.report:
        return _report(Path(args.results))
    if os.geteuid() != 0:
        print("eval_ebb: needs root (lab guests, hugepages, swap, KSM)", file=sys.stderr)
        return 2

    scen = scenarios(args.short, args.duration)
    if args.host_budget is not None:
        if args.host_budget <= 0:
            parser.error(f"--host-budget {args.host_budget}: must be a positive MiB count")
        for name, scenario in scen.items():
            if name != "sweep":
                scenario.host_budget_mib = args.host_budget
    if args.guests is not None:
        if args.guests < 2:
            parser.error(f"--guests {args.guests}: at least 2 (demand shifts between guests)")
        for scenario in scen.values():
            scenario.guests = args.guests
    if args.disk_iops is not None:
        if args.disk_iops <= 0:
            parser.error(f"--disk-iops {args.disk_iops}: must be a positive count")
        for scenario in scen.values():
            scenario.disk_iops = args.disk_iops
    if args.agent_args:
        try:
            shlex.split(args.agent_args)
        except ValueError as err:
            parser.error(f"--agent-args {args.agent_args!r}: {err}")
        for scenario in scen.values():
            scenario.agent_args = args.agent_args
    if args.report_interval_ms is not None:
        if not 100 <= args.report_interval_ms <= 3_600_000:
            parser.error(f"--report-interval-ms {args.report_interval_ms}: from 100 to 3600000")
        for scenario in scen.values():
            scenario.report_interval_ms = args.report_interval_ms
    if args.sweep_reps < 1:
        parser.error(f"--sweep-reps {args.sweep_reps}: at least 1")
    reps = args.reps or (1 if args.short else 3)
    try:
        plan = make_plan(args.short, args.only)
    except ValueError as err:
        parser.error(str(err))
    try:
        ratios = parse_ratios(args.sweep_ratios) if args.sweep_ratios else SWEEP_RATIOS
    except ValueError as err:
        parser.error(f"--sweep-ratios {args.sweep_ratios}: {err}")
    budgets = sweep_budgets(scen["sweep"], ratios)

    results_dir = Path(args.results)
    results_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(args.workdir)
    total = sum(len(c) * (len(budgets) * args.sweep_reps if n == "sweep" else reps)
                for n, c in plan.items())
    started = time.monotonic()
    described = {n: scen[n].describe() for n in plan}
    if "sweep" in described:
        described["sweep"].update({"ratios": list(budgets), "budgets_mib": list(
            budgets.values()), "reps": args.sweep_reps})
    results: Dict[str, Any] = {
        "mode": "short" if args.short else "full",
        "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "host": f"{os.uname().nodename}, {os.cpu_count()} CPUs, "
                f"{_mem_total_gib():.0f} GiB, TCG guests",
        "reps": reps,
        "command": " ".join(["bench/eval_ebb.py", *(argv if argv is not None else sys.argv[1:])]),
        "scenarios": described,
        "runs": {n: [] for n in plan},
        "summary": {},
        "plots": [],
    }
    first_rep = _carry_over(results, results_dir / "evaluation.json", plan, args.append)
    done = completed = 0

    def say(message: str) -> None:
        el = time.monotonic() - started
        print(f"[{el / 60:5.1f} min] {message}", flush=True)

    def one(name: str, config: str, rep: int, rundir: Path,
            label: str) -> Optional[Dict[str, Any]]:
        nonlocal done, completed
        done += 1
        say(f"({done}/{total}) {name} {config}{label}, repetition {rep + 1}")
        run = None
        for attempt in range(1 + args.retries):
            try:
                run = harness.run_config(scen[name], config, rundir, host, say)
            except LabError as err:
                say(f"{name}/{config} failed: {err}")
                run = None
                continue
            if not run.get("disturbed"):
                break
            say(f"{name}/{config} disturbed: {'; '.join(run['disturbed'])}"
                + ("; running it again" if attempt < args.retries else ""))
        if run is None:
            return None
        run["rep"] = rep
        completed += 1
        say(f"{name}/{config}{label}: " + _one_line(name, run))
        return run

    holding = False  # the host-memory lock; until then the guests are not ours to remove
    try:
        with HostMemory(lock_timeout_s=args.lock_timeout, progress=say) as host:
            holding = True
            host.add_swap(max(s.host_swap_mib for n, s in scen.items() if n in plan))
            for name, configs in plan.items():
                if name == "sweep":
                    for ratio, budget in budgets.items():
                        scen[name].host_budget_mib = budget
                        start = (next_rep(results["runs"][name], ratio=ratio)
                                 if args.append else 0)
                        for rep in range(start, start + args.sweep_reps):
                            for config in order_for(configs, rep):
                                rundir = workdir / name / f"{ratio:g}x" / f"rep{rep + 1}-{config}"
                                run = one(name, config, rep, rundir,
                                          f" at {ratio:g}x ({budget} MiB)")
                                if run is None:
                                    continue
                                run.update({"ratio": ratio, "budget_mib": budget})
                                results["runs"][name].append(run)
                                results["summary"][name] = summarise_any(
                                    name, results["runs"][name])
                                _write(results, results_dir)
                    continue
                for rep in range(first_rep, first_rep + reps):
                    for config in order_for(configs, rep):
                        rundir = workdir / name / f"rep{rep + 1}-{config}"
                        run = one(name, config, rep, rundir, "")
                        if run is None:
                            continue
                        results["runs"][name].append(run)
                        if rep == first_rep and not any(
                                p.startswith(f"{name}-{config}.") for p in results["plots"]):
                            results["plots"] += _plots(name, config, rundir, results_dir)
                        results["summary"][name] = summarise_any(name, results["runs"][name])
                        _write(results, results_dir)
    except HostMemoryError as err:
        print(f"eval_ebb: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if not holding:
            say("interrupted while waiting for the host: nothing was changed")
            return 130
        say("interrupted: host put back, guests removed; partial results written")
        _write(results, results_dir)
        return 130
    finally:
        # Another run that holds the lock may be booting guests of the same names.
        if holding:
            for scenario in scen.values():
                harness._down(scenario.prefix)
    results["finished"] = datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M UTC")
    results["targets"] = targets(results["summary"])
    _write(results, results_dir)
    print(markdown(results))
    say(f"done; results in {results_dir}")
    return 1 if completed < total else 0


def make_plan(short: bool, only: Sequence[str]) -> Dict[str, List[str]]:
    """Scenario -> configurations to run, from ``--short`` and ``--only`` items.

    ValueError names an unknown scenario or configuration.
    """
    if short:
        default = {n: list(c) for n, c in SHORT_PLAN.items()}
        default["sweep"] = ["none", "cooperative"]
    else:
        default = {n: list(SWEEP_CONFIGS if n == "sweep" else CONFIGS) for n in SCENARIOS}
    if not only:
        return {n: c for n, c in default.items() if not (short and n == "sweep")}
    plan: Dict[str, List[str]] = {}
    for item in only:
        name, _, config = item.partition(":")
        if name not in SCENARIOS:
            raise ValueError(f"--only {item}: unknown scenario (known: {', '.join(SCENARIOS)})")
        known = SWEEP_CONFIGS if name == "sweep" else CONFIGS
        if config and config not in known:
            raise ValueError(f"--only {item}: unknown configuration (known: {', '.join(known)})")
        plan.setdefault(name, [])
        for c in ([config] if config else default[name]):
            if c not in plan[name]:
                plan[name].append(c)
    return plan


def _report(results_dir: Path) -> int:
    path = results_dir / "evaluation.json"
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        print(f"eval_ebb: cannot read {path}: {err}", file=sys.stderr)
        return 2
    for name, runs in results["runs"].items():
        for run in runs:
            rundir = WORKDIR / name / f"rep{run.get('rep', 0) + 1}-{run['config']}"
            if run["config"] != "none" and not run.get("agents_connected"):
                run["agents_connected"] = _agents_in_trace(rundir / "trace.jsonl")
            if "ksm_run_seen" in run:
                continue
            # Runs from before the KSM check: read it from their samples if still there.
            samples_path = WORKDIR / name / f"rep{run.get('rep', 0) + 1}-{run['config']}" / \
                "samples.json"
            try:
                samples = json.loads(samples_path.read_text())
            except (OSError, ValueError):
                continue
            seen = sorted({s["host"].get("ksm_run") for s in samples if "host" in s} - {None})
            run["ksm_run_seen"] = seen
            if run["config"] == "none" and 1 in seen:
                run["ksm_on_by_others"] = True
    results["summary"] = {n: summarise_any(n, runs) for n, runs in results["runs"].items()
                          if runs}
    results["targets"] = targets(results["summary"])
    _write(results, results_dir)
    print(markdown(results))
    return 0


def _agents_in_trace(trace: Path) -> List[str]:
    """Guests whose agent ebbd saw connected at some tick of its trace."""
    from ebb.host.observe.trace import TraceError, read_trace

    seen = set()
    try:
        for record in read_trace(trace):
            for guest in (record.get("state") or {}).get("guests") or []:
                samples = guest.get("samples") or [{}]
                if samples[-1].get("agent_connected") == 1:
                    seen.add((guest.get("props") or {}).get("name"))
    except TraceError:
        return []
    return sorted(n for n in seen if n)


#: What says where a sweep point is, not how the sweep is set up: runs of other
#: ratios still mix with this run's.
_SWEEP_POINTS = ("ratios", "budgets_mib", "reps")


def _set_up(name: str, described: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The part of a scenario's description that decides whether two runs can mix."""
    if name != "sweep" or not described:
        return described
    return {k: v for k, v in described.items() if k not in _SWEEP_POINTS}


def _carry_over(results: Dict[str, Any], path: Path, plan: Dict[str, List[str]],
                append: bool) -> int:
    """Keep earlier runs (same mode) of the scenario/configurations this run does not redo.

    So ``--only overcommit`` and ``--only pagecache`` can run one after the other
    and still give one results file. With ``append`` every earlier run is kept and
    this run's repetitions are numbered after them; returns the first number.
    """
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return 0
    if old.get("mode") != results["mode"]:
        return 0
    first_rep = 0
    for name, runs in (old.get("runs") or {}).items():
        was = (old.get("scenarios") or {}).get(name)
        now = results["scenarios"].get(name)
        if name in plan and was is not None and _set_up(name, was) != _set_up(name, now):
            # Another set-up (host budget, duration, guests): its runs measured something
            # else and would not mix with this run's.
            print(f"eval_ebb: the {name} runs in {path} used another set-up; not kept",
                  file=sys.stderr)
            continue
        if name == "sweep" and name in plan and was is not None:
            # The sweep runs a few ratios at a time: a point this run does not measure
            # stays, and the page lists every ratio measured.
            redo = set(now["ratios"])
            keep = [r for r in runs if append or r.get("config") not in plan[name]
                    or r.get("ratio") not in redo]
            points = dict(zip(was.get("ratios") or [], was.get("budgets_mib") or []))
            points.update(zip(now["ratios"], now["budgets_mib"]))
            now["ratios"] = sorted(points)
            now["budgets_mib"] = [points[r] for r in now["ratios"]]
        else:
            keep = [r for r in runs if append or r.get("config") not in plan.get(name, [])]
        if append and name in plan:
            first_rep = max([first_rep] + [r.get("rep", 0) + 1 for r in keep])
        if not keep:
            continue
        results["runs"].setdefault(name, [])
        results["runs"][name] = keep + results["runs"][name]
        results["scenarios"].setdefault(name, (old.get("scenarios") or {}).get(name))
        results["summary"][name] = summarise_any(name, results["runs"][name])
        kept_configs = {r["config"] for r in keep}
        results["plots"] += [p for p in old.get("plots") or []
                             if p.startswith(f"{name}-") and
                             p[len(name) + 1:].split("-")[0].split(".")[0] in kept_configs]
    results["earlier"] = old.get("earlier") or old.get("started")
    results["reps"] = max(results["reps"], first_rep + results["reps"])
    return first_rep


def _one_line(name: str, run: Dict[str, Any]) -> str:
    fig = figures_of(name, run)
    kind = KIND.get(name, "memknobs")
    if kind == "memknobs":
        head = f"throughput {fig['throughput_mb_s']:.1f} MB/s"
    elif kind == "pagecache":
        head = (f"p95 {fig['latency_p95_ms']:.1f} ms, "
                f"{fig['throughput_kib_s_per_guest']:.0f} KiB/s")
    else:
        head = (f"grower {fig.get('grower_mb_s', 0):.1f} MB/s, cache p95 "
                f"{fig.get('cache_latency_p95_ms', 0):.1f} ms")
    stall = (f"memory stall {fig['stall_s']:.1f} s ({fig.get('stall_share_pct', 0):.1f} %)"
             if "stall_s" in fig else "memory stall not measured")
    if "host_cpu_wait_vcpu_s" in fig:
        stall += f", vCPUs waited {fig['host_cpu_wait_vcpu_s']:.1f} s for a host CPU"
    return (f"{head}, {stall}, host swap {fig['host_swap_ops']} pages, guest swap "
            f"{fig['guest_swap_ops']} pages, balloon {fig['balloon_moves']} moves / "
            f"{fig['balloon_moved_mib']} MiB, KSM sharing {fig['ksm_pages_sharing_max']}")


def _plots(name: str, config: str, rundir: Path, results_dir: Path) -> List[str]:
    made = []
    png = results_dir / f"{name}-{config}.png"
    guest_lines = {}
    rate_key, label = ("mb_per_s", "memknobs MB/s")
    for out in sorted(rundir.glob("*.out")):
        if KIND.get(name) == "memknobs":
            guest_lines[out.stem] = plots.memknobs_lines(out.read_text())
        elif KIND.get(name) == "coldcache":
            lines = plots.memknobs_lines(out.read_text())
            if any("mb_per_s" in ln for ln in lines):  # the growing guest
                guest_lines[out.stem] = lines
    if name == "pagecache":
        # The request loop's p95 latency per 10 s window, per guest.
        try:
            guests = json.loads((rundir / "result.json").read_text())["guests"]
        except (OSError, ValueError, KeyError):
            guests = {}
        guest_lines = {g: [{"t_s": 10 * k + 5, "p95_ms": v}
                           for k, v in enumerate(fig.get("p95_per_10s_ms") or [])]
                       for g, fig in guests.items()}
        rate_key, label = ("p95_ms", "p95 latency ms (10 s)")
    try:
        plots.plot_run(rundir, png, f"{name}: {config}", guest_lines, rate_key, label)
        made.append(png.name)
    except Exception as err:  # a figure must not lose the run's figures
        print(f"plot {png}: {err}", file=sys.stderr)
    trace = rundir / "trace.jsonl"
    if trace.exists():
        tpng = results_dir / f"{name}-{config}-ebbd.png"
        res = subprocess.run([str(harness.BIN / "ebbctl"), "plot", str(trace), "-o", str(tpng),
                              "--title", f"{name}: {config} (ebbd trace)"],
                             capture_output=True, text=True)
        if res.returncode == 0:
            made.append(tpng.name)
        else:
            print(f"ebbctl plot {trace}: {res.stderr.strip()}", file=sys.stderr)
    return made


def _write(results: Dict[str, Any], results_dir: Path) -> None:
    (results_dir / "evaluation.json").write_text(json.dumps(results, indent=1) + "\n")
    (results_dir / "evaluation.md").write_text(markdown(results))


def _mem_total_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024 / 1024
    return 0.0


if __name__ == "__main__":
    sys.exit(main())
