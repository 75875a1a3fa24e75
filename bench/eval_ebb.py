"""The evaluation of issue 8: the MOM article's two experiments on the lab, with ebb.

One command runs it all (as root; it boots lab guests and shrinks the host)::

    sudo .venv/bin/python bench/eval_ebb.py                 # full: tens of minutes
    sudo .venv/bin/python bench/eval_ebb.py --short         # a few minutes (CI)
    sudo .venv/bin/python bench/eval_ebb.py --only overcommit:classic --reps 1

Scenarios: ``overcommit`` (Memknobs guests whose demand shifts between them;
configurations none, ksm, classic, cooperative, and unconstrained: the host not
shrunk, a reference for what the workload gets when memory is not short) and
``pagecache`` (guests reading a working set of files from a virtio disk; none,
classic, cooperative).
Every configuration runs on freshly booted guests, with the same pattern and
duration; repetitions alternate the order of the configurations. Results go to
``--results`` (default ``results/``): ``evaluation.json``, ``evaluation.md`` and
one PNG per configuration; docs/evaluation.md explains them.

While it runs it holds ``/run/ebb-host-memory.lock`` and puts the host back
(hugepages, swap file, KSM, its ``ebb-bench-*`` guests) on every exit, Ctrl-C
included.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ebb.host.lab.errors import LabError
from overcommit import harness, plots
from overcommit.hostctl import HostMemory, HostMemoryError
from overcommit.memknobs_eval import MemknobsScenario
from pagecache.scenario import PageCacheScenario

REPO = Path(__file__).resolve().parent.parent
PREFIX = "ebb-bench"
OVERCOMMIT_CONFIGS = ("none", "ksm", "classic", "cooperative", "unconstrained")
PAGECACHE_CONFIGS = ("none", "classic", "cooperative")
WORKDIR = Path("/var/lib/ebb-bench/runs")


def scenarios(short: bool, duration_s: Optional[float]) -> Dict[str, harness.Scenario]:
    if short:
        oc = MemknobsScenario(name="overcommit", prefix=f"{PREFIX}-oc", guests=2,
                              memory_mib=512, floor_mib=128, duration_s=duration_s or 40,
                              host_budget_mib=700, host_swap_mib=2048, slot_s=10,
                              guest_swap_mib=512)
        pc = PageCacheScenario(name="pagecache", prefix=f"{PREFIX}-pc", guests=2,
                               memory_mib=384, floor_mib=96, duration_s=duration_s or 30,
                               host_budget_mib=600, host_swap_mib=2048, files=200,
                               file_kib=512, guest_swap_mib=256)
    else:
        oc = MemknobsScenario(name="overcommit", prefix=f"{PREFIX}-oc", guests=4,
                              memory_mib=768, floor_mib=192, duration_s=duration_s or 240,
                              host_budget_mib=2048, host_swap_mib=4096, slot_s=40,
                              guest_swap_mib=1024)
        pc = PageCacheScenario(name="pagecache", prefix=f"{PREFIX}-pc", guests=3,
                               memory_mib=512, floor_mib=128, duration_s=duration_s or 90,
                               host_budget_mib=1024, host_swap_mib=4096, files=600,
                               file_kib=512, guest_swap_mib=512)
    return {"overcommit": oc, "pagecache": pc}


def order_for(configs: Sequence[str], rep: int) -> List[str]:
    """Repetition 0 in the given order, 1 reversed, 2 rotated by one, ..."""
    items = list(configs)
    if rep % 2 == 1:
        items.reverse()
    shift = rep // 2
    return items[shift % len(items):] + items[:shift % len(items)]


# -- summaries -------------------------------------------------------------------------------
def total_throughput(run: Dict[str, Any]) -> float:
    return round(sum(g.get("mb_per_s", 0.0) for g in run["guests"].values()), 1)


def pagecache_figures(run: Dict[str, Any]) -> Dict[str, float]:
    guests = list(run["guests"].values())
    p95 = [g.get("latency_p95_ms", 0.0) for g in guests]
    return {
        "latency_p95_ms": round(statistics.mean(p95), 2) if p95 else 0.0,
        "latency_p95_worst_ms": round(max(p95), 2) if p95 else 0.0,
        "rate_per_s_per_guest": round(statistics.mean(g.get("rate_per_s", 0) for g in guests),
                                      2) if guests else 0.0,
        "throughput_kib_s_per_guest": round(statistics.mean(
            g.get("throughput_kib_s", 0) for g in guests), 1) if guests else 0.0,
    }


def figures_of(scenario: str, run: Dict[str, Any]) -> Dict[str, float]:
    out = {
        "host_swap_in_pages": run["host_swap_in_pages"],
        "host_swap_out_pages": run["host_swap_out_pages"],
        "host_swap_ops": run["host_swap_ops"],
        "guest_swap_ops": run["guest_swap_ops"],
        "total_swap_ops": run["host_swap_ops"] + run["guest_swap_ops"],
        "balloon_moves": run["balloon"]["count"],
        "balloon_moved_mib": run["balloon"]["moved_mib"],
        "ksm_pages_sharing_max": run["ksm_pages_sharing_max"],
    }
    freeable = (run.get("host_freeable_mib") or {}).get("median")
    if freeable is not None:
        # How short the host was while the workload ran (runs before 2026-12-05 lack it).
        out["host_freeable_mib"] = freeable
    if scenario == "overcommit":
        out["throughput_mb_s"] = total_throughput(run)
    else:
        out.update(pagecache_figures(run))
    out.update(cpu_figures(run))
    return out


#: CPU figures of a run (runs from before they were measured have none).
CPU_KEYS = ("host_cpu_busy_pct", "qemu_cpu_pct", "ebbd_cpu_pct", "agent_cpu_pct_mean")


def cpu_figures(run: Dict[str, Any]) -> Dict[str, float]:
    cpu = run.get("cpu") or {}
    return {k: float(cpu[k]) for k in CPU_KEYS if cpu.get(k) is not None}


def summarise(scenario: str, runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Medians per configuration, and medians of the per-repetition ratios to none."""
    by_config: Dict[str, List[Dict[str, float]]] = {}
    by_rep: Dict[int, Dict[str, Dict[str, float]]] = {}
    for run in runs:
        fig = figures_of(scenario, run)
        by_config.setdefault(run["config"], []).append(fig)
        by_rep.setdefault(run["rep"], {})[run["config"]] = fig
    medians = {c: {k: statistics.median(f[k] for f in figs if k in f)
                   for k in sorted({k for f in figs for k in f})}
               for c, figs in by_config.items()}
    ratios: Dict[str, Dict[str, Optional[float]]] = {}
    for config in by_config:
        per_key: Dict[str, List[float]] = {}
        for rep_figs in by_rep.values():
            if "none" not in rep_figs or config not in rep_figs:
                continue
            for key, value in rep_figs[config].items():
                base = rep_figs["none"].get(key)
                if base:
                    per_key.setdefault(key, []).append(value / base)
        ratios[config] = {k: round(statistics.median(v), 3) for k, v in per_key.items()}
    return {"medians": medians, "ratios_to_none": ratios,
            "repetitions": {c: len(f) for c, f in by_config.items()}}


def _mib(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.0f}"


def _pct(ratio: Optional[float]) -> str:
    return "n/a" if ratio is None else f"{(ratio - 1) * 100:+.0f} %"


def setup_line(setup: Dict[str, Any]) -> str:
    """One scenario's set-up in words (from :meth:`harness.Scenario.describe`)."""
    words = (f"{setup['guests']} guests x {setup['memory_mib']} MiB, host budget "
             f"{setup['host_budget_mib']} MiB, host swap {setup['host_swap_mib']} MiB, "
             f"{setup['duration_s']:.0f} s of workload")
    if setup.get("disk_iops"):
        words += f", the guests sharing {setup['disk_iops']} IOPS on the host disk"
    return words


def markdown(results: Dict[str, Any]) -> str:
    lines = [f"# ebb evaluation results ({results['mode']} mode)", "",
             f"Run {results['started']} .. {results.get('finished', '(running)')} on "
             f"{results['host']}; repetitions: {results['reps']}. Medians over repetitions; "
             "ratios are medians of the ratio to `none` measured in the same repetition.", ""]
    for name, setup in (results.get("scenarios") or {}).items():
        if setup:
            lines.append(f"- {name}: {setup_line(setup)}")
    if results.get("scenarios"):
        lines.append("")
    oc = results["summary"].get("overcommit")
    if oc:
        lines += ["## Memknobs total average throughput (the article's Table 1, plus rows)", "",
                  "| configuration | total average throughput (MB/s) | vs none | host swap-in "
                  "(pages) | host swap-out (pages) | host swap ops vs none | guest swap ops "
                  "(pages) | host + guest swap ops vs none | balloon moves (count / MiB) | "
                  "KSM pages sharing (max) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        labels = {"none": "None", "ksm": "KSM only", "classic": "KSM and ballooning (classic)",
                  "cooperative": "ebb cooperative",
                  "unconstrained": "Host not shrunk (reference)"}
        for config in OVERCOMMIT_CONFIGS:
            med = oc["medians"].get(config)
            if med is None:
                continue
            ratio = oc["ratios_to_none"].get(config, {})
            lines.append(
                f"| {labels[config]} | {med['throughput_mb_s']:.1f} | "
                f"{_pct(ratio.get('throughput_mb_s')) if config != 'none' else '-'} | "
                f"{med['host_swap_in_pages']:.0f} | {med['host_swap_out_pages']:.0f} | "
                f"{_pct(ratio.get('host_swap_ops')) if config != 'none' else '-'} | "
                f"{med['guest_swap_ops']:.0f} | "
                f"{_pct(ratio.get('total_swap_ops')) if config != 'none' else '-'} | "
                f"{med['balloon_moves']:.0f} / "
                f"{med['balloon_moved_mib']:.0f} | {med['ksm_pages_sharing_max']:.0f} |")
        lines.append("")
    pc = results["summary"].get("pagecache")
    if pc:
        lines += ["## Page-cache workload (the article's Table 2 shape)", "",
                  "| configuration | p95 latency (ms, mean over guests) | vs none | worst guest "
                  "p95 (ms) | requests/s per guest | throughput (KiB/s per guest) | vs none | "
                  "host swap ops | guest swap ops | balloon moves (count / MiB) | "
                  "host freeable while it ran (MiB, median) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for config in PAGECACHE_CONFIGS:
            med = pc["medians"].get(config)
            if med is None:
                continue
            ratio = pc["ratios_to_none"].get(config, {})
            lines.append(
                f"| {config} | {med['latency_p95_ms']:.1f} | "
                f"{_pct(ratio.get('latency_p95_ms')) if config != 'none' else '-'} | "
                f"{med['latency_p95_worst_ms']:.1f} | {med['rate_per_s_per_guest']:.2f} | "
                f"{med['throughput_kib_s_per_guest']:.0f} | "
                f"{_pct(ratio.get('throughput_kib_s_per_guest')) if config != 'none' else '-'}"
                f" | {med['host_swap_ops']:.0f} | {med['guest_swap_ops']:.0f} | "
                f"{med['balloon_moves']:.0f} / {med['balloon_moved_mib']:.0f} | "
                f"{_mib(med.get('host_freeable_mib'))} |")
        lines.append("")
    lines += cpu_table(results["summary"])
    targets = results.get("targets") or []
    if targets:
        lines += ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
        for t in targets:
            lines.append(f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else 'NO'} |")
        lines.append("")
    disturbed = [(name, r) for name, runs in results["runs"].items() for r in runs
                 if r.get("disturbed") or r.get("foreign_ballooning")
                 or r.get("ksm_on_by_others")]
    if disturbed:
        lines += ["## Runs disturbed by other work on the host", ""]
        for name, r in disturbed:
            why = list(r.get("disturbed") or [])
            if r.get("ksm_on_by_others"):
                why.append("KSM was running (run=1) although no ebbd of ours ran: another "
                           "ebbd on the host turned it on")
            if r.get("foreign_ballooning"):
                why.append("balloon below maximum without our ebbd: "
                           + ", ".join(r["foreign_ballooning"]))
            lines.append(f"- {name}/{r['config']} (repetition {r.get('rep', 0) + 1}): "
                         + "; ".join(why))
        lines.append("")
    if results.get("plots"):
        lines += ["## Figures", ""]
        for name in results["plots"]:
            lines.append(f"- [{name}]({name})")
        lines.append("")
    return "\n".join(lines)


def cpu_table(summary: Dict[str, Any]) -> List[str]:
    """What the host, the guests, ebbd and the agents used while the workloads ran."""
    rows = []
    for name, configs in (("overcommit", OVERCOMMIT_CONFIGS), ("pagecache", PAGECACHE_CONFIGS)):
        scenario = summary.get(name) or {}
        for config in configs:
            med = (scenario.get("medians") or {}).get(config)
            if not med or "host_cpu_busy_pct" not in med:
                continue
            cells = [f"{med[k]:.{d}f}" if k in med else "-"
                     for k, d in zip(CPU_KEYS, (1, 1, 2, 2))]
            rows.append(f"| {name} | {config} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    return ["## CPU while the workloads ran", "",
            "Medians. Host busy is a share of all the host's CPUs; the others are "
            "shares of one core: all the guests' QEMU processes together, ebbd, and one "
            "guest's ebb-agent (mean over the guests, measured inside the guest).", "",
            "| scenario | configuration | host busy (%) | QEMU, all guests (% of a core) | "
            "ebbd (% of a core) | agent per guest (% of its vCPU) |",
            "|---|---|---:|---:|---:|---:|", *rows, ""]


def targets(summary: Dict[str, Any]) -> List[Dict[str, Any]]:
    out: List[Dict[str, Any]] = []
    oc = summary.get("overcommit")
    if oc and "none" in oc["medians"]:
        r = oc["ratios_to_none"]
        med = oc["medians"]
        if "classic" in r:
            t, s = r["classic"].get("throughput_mb_s"), r["classic"].get("host_swap_ops")
            out.append({"target": "classic vs none: >= +20 % throughput, fewer host swap ops",
                        "measured": f"throughput {_pct(t)}, host swap ops {_pct(s)}",
                        "met": bool(t and t >= 1.20 and s is not None and s < 1.0)})
        if "cooperative" in r:
            t, s = r["cooperative"].get("throughput_mb_s"), r["cooperative"].get("host_swap_ops")
            out.append({"target": "cooperative vs none: >= +30 % throughput, >= 60 % fewer "
                                  "host swap ops",
                        "measured": f"throughput {_pct(t)}, host swap ops {_pct(s)}",
                        "met": bool(t and t >= 1.30 and s is not None and s <= 0.40)})
        if "classic" in med and "cooperative" in med:
            tc, tk = med["cooperative"]["throughput_mb_s"], med["classic"]["throughput_mb_s"]
            bc, bk = med["cooperative"]["balloon_moves"], med["classic"]["balloon_moves"]
            out.append({"target": "cooperative vs classic: more throughput, fewer balloon moves",
                        "measured": f"throughput {tc:.1f} vs {tk:.1f} MB/s, balloon moves "
                                    f"{bc:.0f} vs {bk:.0f}",
                        "met": tc > tk and bc < bk})
    pc = summary.get("pagecache")
    if pc and "none" in pc["medians"]:
        worst = []
        for config, ratio in pc["ratios_to_none"].items():
            if config == "none":
                continue
            lat = ratio.get("latency_p95_ms")
            thr = ratio.get("throughput_kib_s_per_guest")
            worst.append((config, lat, thr))
        met = all((lat is None or lat <= 1.05) and (thr is None or thr >= 0.95)
                  for _, lat, thr in worst)
        out.append({"target": "page cache: no configuration worse than none by > 5 % "
                              "(p95 latency, throughput)",
                    "measured": ", ".join(f"{c}: p95 {_pct(lat)}, throughput {_pct(thr)}"
                                          for c, lat, thr in worst),
                    "met": met})
    return out


# -- running ---------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run ebb's evaluation (issue 8): overcommit and page-cache scenarios.")
    parser.add_argument("--short", action="store_true",
                        help="a few minutes, 2 small guests, 2 configurations per scenario "
                        "(proves the benchmark works; figures are not meaningful)")
    parser.add_argument("--only", action="append", default=[], metavar="SCENARIO[:CONFIG]",
                        help="run only this scenario (overcommit, pagecache), or one "
                        "configuration of it (e.g. overcommit:classic); repeatable")
    parser.add_argument("--reps", type=int, default=None, metavar="N",
                        help="repetitions (default 1 short, 3 full)")
    parser.add_argument("--duration", type=float, default=None, metavar="S",
                        help="workload seconds per configuration (default 240/90 full, "
                        "40/30 short)")
    parser.add_argument("--host-budget", type=int, default=None, metavar="MIB",
                        help="host MemAvailable left to the guests, for every scenario run "
                        "(default 2048 overcommit, 1024 pagecache; 700/600 short): how far "
                        "the host is overcommitted")
    parser.add_argument("--guests", type=int, default=None, metavar="N",
                        help="guests per scenario (default 4 overcommit, 3 pagecache; 2 short); "
                        "with fewer guests than CPUs a guest that waits for memory leaves its "
                        "CPU idle instead of to the other guests (pair with --host-budget)")
    parser.add_argument("--disk-iops", type=int, default=None, metavar="N",
                        help="the guests' QEMU processes together may do at most N reads and N "
                        "writes a second on the host disk (host swap-ins and guest disk I/O "
                        "alike), as one disk of the article's era would; default: unlimited")
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
        for scenario in scen.values():
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
    reps = args.reps or (1 if args.short else 3)
    plan: Dict[str, List[str]] = {}
    if args.short:
        default = {"overcommit": ["none", "cooperative"], "pagecache": ["none", "cooperative"]}
    else:
        default = {"overcommit": list(OVERCOMMIT_CONFIGS), "pagecache": list(PAGECACHE_CONFIGS)}
    if args.only:
        for item in args.only:
            name, _, config = item.partition(":")
            if name not in scen:
                parser.error(f"--only {item}: unknown scenario (overcommit, pagecache)")
            known = OVERCOMMIT_CONFIGS if name == "overcommit" else PAGECACHE_CONFIGS
            if config and config not in known:
                parser.error(f"--only {item}: unknown configuration (known: {', '.join(known)})")
            plan.setdefault(name, [])
            for c in ([config] if config else default[name]):
                if c not in plan[name]:
                    plan[name].append(c)
    else:
        plan = default

    results_dir = Path(args.results)
    results_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(args.workdir)
    total = sum(len(c) for c in plan.values()) * reps
    started = time.monotonic()
    results: Dict[str, Any] = {
        "mode": "short" if args.short else "full",
        "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "host": f"{os.uname().nodename}, {os.cpu_count()} CPUs, "
                f"{_mem_total_gib():.0f} GiB, TCG guests",
        "reps": reps,
        "command": " ".join(["bench/eval_ebb.py", *(argv if argv is not None else sys.argv[1:])]),
        "scenarios": {n: scen[n].describe() for n in plan},
        "runs": {n: [] for n in plan},
        "summary": {},
        "plots": [],
    }
    first_rep = _carry_over(results, results_dir / "evaluation.json", plan, args.append)
    done = completed = 0

    def say(message: str) -> None:
        el = time.monotonic() - started
        print(f"[{el / 60:5.1f} min] {message}", flush=True)

    holding = False  # the host-memory lock; until then the guests are not ours to remove
    try:
        with HostMemory(lock_timeout_s=args.lock_timeout, progress=say) as host:
            holding = True
            host.add_swap(max(s.host_swap_mib for n, s in scen.items() if n in plan))
            for name, configs in plan.items():
                scenario = scen[name]
                for rep in range(first_rep, first_rep + reps):
                    for config in order_for(configs, rep):
                        done += 1
                        say(f"({done}/{total}) {name} {config}, repetition {rep + 1}")
                        rundir = workdir / name / f"rep{rep + 1}-{config}"
                        run = None
                        for attempt in range(1 + args.retries):
                            try:
                                run = harness.run_config(scenario, config, rundir, host, say)
                            except LabError as err:
                                say(f"{name}/{config} failed: {err}")
                                run = None
                                continue
                            if not run.get("disturbed"):
                                break
                            say(f"{name}/{config} disturbed: {'; '.join(run['disturbed'])}"
                                + ("; running it again" if attempt < args.retries else ""))
                        if run is None:
                            continue
                        run["rep"] = rep
                        completed += 1
                        results["runs"][name].append(run)
                        say(f"{name}/{config}: " + _one_line(name, run))
                        if rep == first_rep and not any(
                                p.startswith(f"{name}-{config}.") for p in results["plots"]):
                            results["plots"] += _plots(name, config, rundir, results_dir)
                        results["summary"][name] = summarise(name, results["runs"][name])
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
    results["summary"] = {n: summarise(n, runs) for n, runs in results["runs"].items() if runs}
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
        if name in plan and was is not None and was != results["scenarios"].get(name):
            # Another set-up (host budget, duration, guests): its runs measured something
            # else and would not mix with this run's.
            print(f"eval_ebb: the {name} runs in {path} used another set-up; not kept",
                  file=sys.stderr)
            continue
        keep = [r for r in runs if append or r.get("config") not in plan.get(name, [])]
        if append and name in plan:
            first_rep = max([first_rep] + [r.get("rep", 0) + 1 for r in keep])
        if not keep:
            continue
        results["runs"].setdefault(name, [])
        results["runs"][name] = keep + results["runs"][name]
        results["scenarios"].setdefault(name, (old.get("scenarios") or {}).get(name))
        results["summary"][name] = summarise(name, results["runs"][name])
        kept_configs = {r["config"] for r in keep}
        results["plots"] += [p for p in old.get("plots") or []
                             if p.startswith(f"{name}-") and
                             p[len(name) + 1:].split("-")[0].split(".")[0] in kept_configs]
    results["earlier"] = old.get("started")
    results["reps"] = max(results["reps"], first_rep + results["reps"])
    return first_rep


def _one_line(name: str, run: Dict[str, Any]) -> str:
    fig = figures_of(name, run)
    head = (f"throughput {fig['throughput_mb_s']:.1f} MB/s" if name == "overcommit" else
            f"p95 {fig['latency_p95_ms']:.1f} ms, {fig['throughput_kib_s_per_guest']:.0f} KiB/s")
    return (f"{head}, host swap {fig['host_swap_ops']} pages, guest swap "
            f"{fig['guest_swap_ops']} pages, balloon {fig['balloon_moves']} moves / "
            f"{fig['balloon_moved_mib']} MiB, KSM sharing {fig['ksm_pages_sharing_max']}")


def _plots(name: str, config: str, rundir: Path, results_dir: Path) -> List[str]:
    made = []
    png = results_dir / f"{name}-{config}.png"
    guest_lines = {}
    rate_key, label = ("mb_per_s", "memknobs MB/s")
    for out in sorted(rundir.glob("*.out")):
        if name == "overcommit":
            guest_lines[out.stem] = plots.memknobs_lines(out.read_text())
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
