"""The evaluation's summaries and ``results/evaluation.md``: pure functions of the runs.

A run (one configuration of one scenario in one repetition) becomes a flat dict
of figures (:func:`figures_of`); a scenario's runs become medians per
configuration and, for every figure, a ratio to each baseline (``none`` and
``fpr``) with its interval over repetitions (:mod:`overcommit.intervals`). The
page opens with at most ten lines: what each configuration wins or loses against
``none`` and ``fpr`` on the memory stall and on the scenario's work figure.
"""

from __future__ import annotations

import statistics
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from pagecache.coldcache import coldcache_figures
from pagecache.scenario import cache_refaults

from .intervals import MIN_REPS_TO_TELL, paired_ratios, ratio_interval, words

#: Every configuration, in table order. ``none``, ``fpr`` and ``unconstrained``
#: are the baselines; ``unconstrained`` is the ceiling (the host not shrunk).
CONFIGS = ("none", "fpr", "ksm", "classic", "cooperative", "unconstrained")
BASELINES = ("none", "fpr")
LABELS = {"none": "`none`", "fpr": "`fpr` (free page reporting, no ebbd)",
          "ksm": "`ksm` (KSM only)", "classic": "`classic` (KSM and ballooning)",
          "cooperative": "`cooperative` (ebb)",
          "unconstrained": "`unconstrained` (host not shrunk)"}

#: What each scenario's workload is (which figures it has).
KIND = {"overcommit": "memknobs", "slowdisk": "memknobs", "pagecache": "pagecache",
        "coldcache": "coldcache", "sweep": "memknobs"}
TITLES = {"overcommit": "Memknobs (the article's Table 1)",
          "pagecache": "Page cache (the article's Table 2 shape)",
          "coldcache": "Cold cache + growth",
          "slowdisk": "Two guests on a slow disk (Memknobs, 100 IOPS)"}
#: The work figure of each kind: key, label, and whether higher is better.
WORK: Dict[str, Tuple[str, str, bool]] = {
    "memknobs": ("throughput_mb_s", "throughput (MB/s)", True),
    "pagecache": ("latency_p95_ms", "p95 latency (ms)", False),
    "coldcache": ("grower_mb_s", "growing guest's throughput (MB/s)", True),
}
#: Further figures a kind is judged on in the opening lines and in "which differences
#: are real": key, label, whether higher is better. The cold-cache scenario's cache
#: guests must stay served while the grower is helped.
ALSO_JUDGED: Dict[str, Tuple[Tuple[str, str, bool], ...]] = {
    "coldcache": (("cache_latency_p95_ms", "cache guests' p95 (ms)", False),),
}
#: The primary figure: seconds the guests' workloads waited for memory.
STALL = "stall_s"
#: The operator's line: memory stall under this share of the guests' wall time.
STALL_LIMIT_PCT = 5.0

#: CPU figures of a run (runs from before they were measured have none).
CPU_KEYS = ("host_cpu_busy_pct", "qemu_cpu_pct", "ebbd_cpu_pct", "agent_cpu_pct_mean",
            "others_cpu_pct")
#: A run whose other processes took this share of a core (%) or more is listed
#: as shared: quiet runs left 0-10 % to the harness and the kernel (more on a
#: slower machine), runs with someone's tests beside them 33-48 %.
OTHERS_SHARED_PCT = 20.0
STALL_KEYS = ("stall_s", "stall_share_pct", "guest_stall_some_s", "guest_stall_full_s",
              "host_stall_some_s", "host_stall_vcpu_s", "host_io_vcpu_s", "host_wait_s",
              "qemu_major_faults", "host_cpu_wait_vcpu_s",
              "qemu_blkio_delay_s")


# -- one run ---------------------------------------------------------------------------------
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
        **cache_refaults(guests),
    }


def cpu_figures(run: Dict[str, Any]) -> Dict[str, float]:
    cpu = run.get("cpu") or {}
    return {k: float(cpu[k]) for k in CPU_KEYS if cpu.get(k) is not None}


def stall_figures(run: Dict[str, Any]) -> Dict[str, float]:
    stall = run.get("stall") or {}
    return {k: float(stall[k]) for k in STALL_KEYS if stall.get(k) is not None}


def yield_figures(yields: Dict[str, Any]) -> Dict[str, float]:
    """A run's yields: how many, what came back at the host, request -> RSS drop seconds."""
    took = sorted(yields.get("took_s") or [])
    out = {"yield_requests": float(yields["requests"]),
           "yield_returned": float((yields.get("outcomes") or {}).get("returned", 0)),
           "yield_returned_mib": float(yields.get("returned_mib") or 0.0)}
    if took:
        out["yield_took_median_s"] = took[len(took) // 2]
        out["yield_took_p95_s"] = took[min(len(took) - 1, round(0.95 * (len(took) - 1)))]
    return out


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
    yields = run.get("yields")
    if yields and yields.get("requests"):
        out.update(yield_figures(yields))
    kind = KIND.get(scenario, "memknobs")
    if kind == "memknobs":
        out["throughput_mb_s"] = total_throughput(run)
    elif kind == "pagecache":
        out.update(pagecache_figures(run))
    else:
        out.update(coldcache_figures(run))
    out.update(cpu_figures(run))
    out.update(stall_figures(run))
    return out


# -- a scenario's runs ------------------------------------------------------------------------
def summarise(scenario: str, runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Medians per configuration; per-repetition ratios to each baseline, with intervals."""
    by_config: Dict[str, List[Dict[str, float]]] = {}
    by_rep: Dict[str, Dict[int, Dict[str, float]]] = {}
    for run in runs:
        fig = figures_of(scenario, run)
        by_config.setdefault(run["config"], []).append(fig)
        by_rep.setdefault(run["config"], {})[run.get("rep", 0)] = fig
    medians = {c: {k: statistics.median(f[k] for f in figs if k in f)
                   for k in sorted({k for f in figs for k in f})}
               for c, figs in by_config.items()}
    intervals: Dict[str, Dict[str, Dict[str, Any]]] = {}
    for baseline in BASELINES:
        if baseline not in by_rep:
            continue
        per_config: Dict[str, Dict[str, Any]] = {}
        for config, reps in by_rep.items():
            per_key: Dict[str, Any] = {}
            for key in sorted({k for f in reps.values() for k in f}):
                ratios = paired_ratios({r: f[key] for r, f in reps.items() if key in f},
                                       {r: f[key] for r, f in by_rep[baseline].items()
                                        if key in f})
                interval = ratio_interval(ratios)
                if interval is not None:
                    per_key[key] = interval.as_dict()
            per_config[config] = per_key
        intervals[baseline] = per_config
    ratios_to_none = {c: {k: v["ratio"] for k, v in keys.items()}
                      for c, keys in intervals.get("none", {}).items()}
    return {"medians": medians, "ratios_to_none": ratios_to_none, "intervals": intervals,
            "repetitions": {c: len(f) for c, f in by_config.items()},
            "rep_sets": {c: sorted(reps) for c, reps in by_rep.items()}}


def interval_of(summary: Dict[str, Any], baseline: str, config: str,
                key: str) -> Optional[Dict[str, Any]]:
    return (((summary.get("intervals") or {}).get(baseline) or {}).get(config) or {}).get(key)


def _vs(summary: Dict[str, Any], baseline: str, config: str, key: str) -> str:
    """A table cell: ``config``'s ratio to ``baseline`` in words, ``-`` on the baseline's row."""
    return "-" if config == baseline else words(interval_of(summary, baseline, config, key))


# -- the opening lines ------------------------------------------------------------------------
def _verdict(interval: Optional[Dict[str, Any]], higher_is_better: bool) -> Optional[str]:
    """"wins", "loses" or None (no difference, or nothing to compare)."""
    if not interval or interval.get("no_difference"):
        return None
    better = interval["ratio"] > 1.0 if higher_is_better else interval["ratio"] < 1.0
    return "wins" if better else "loses"


def headline(summary: Dict[str, Any]) -> List[str]:
    """One line per configuration: what it wins or loses against ``none`` and ``fpr``.

    Judged on the memory stall (less is better) and on each scenario's work
    figure; a comparison whose interval holds "no change" is counted, not
    listed. At most :data:`CONFIGS` minus ``none`` lines.
    """
    lines = []
    for config in CONFIGS:
        if config == "none":
            continue
        parts: List[str] = []
        same = compared = single = few = 0
        for baseline in BASELINES:
            if baseline == config:
                continue
            items = []
            for name, scen in summary.items():
                kind = KIND.get(name)
                if kind is None or name == "sweep" or config not in scen.get("medians", {}):
                    continue
                judged = ((STALL, "memory stall", False), WORK[kind], *ALSO_JUDGED.get(kind, ()))
                for key, label, up in judged:
                    label = label.split(" (")[0]
                    interval = interval_of(scen, baseline, config, key)
                    if interval is None:
                        continue
                    if interval.get("reps", 2) < 2:
                        single += 1
                        continue
                    if interval["reps"] < MIN_REPS_TO_TELL:
                        few += 1
                        continue
                    compared += 1
                    verdict = _verdict(interval, up)
                    if verdict is None:
                        same += 1
                        continue
                    items.append(f"{verdict} on {label} in {name} {words(interval)}")
            if items:
                parts.append(f"vs `{baseline}`: " + "; ".join(items))
        too_few = (f"{few} comparisons of 2 repetitions, too few to tell (in the tables "
                   "below)" if few else "")
        if not compared:
            if single:
                lines.append(f"- **{config}**: one repetition, so no interval: {single} "
                             "ratios to the baselines, in the tables below.")
            elif few:
                lines.append(f"- **{config}**: {too_few}.")
            continue
        if not parts:
            tail = f"no difference in any of {compared} comparisons with the baselines"
        elif same:
            tail = f"No difference in the other {same} of {compared} comparisons"
        else:
            tail = ""
        text = ". ".join(p for p in [*parts, tail] if p)
        if few:
            # After "no difference in ..." it reads on; after a list of wins, it starts anew.
            text += f"; {too_few}" if tail else f". {too_few[0].upper()}{too_few[1:]}"
        lines.append(f"- **{config}**: {text}.")
    return lines


# -- the page ---------------------------------------------------------------------------------
def _num(value: Optional[float], digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def setup_line(setup: Dict[str, Any]) -> str:
    """One scenario's set-up in words (from :meth:`harness.Scenario.describe`)."""
    guests = f"{setup['guests']} guests x {setup['memory_mib']} MiB"
    if setup.get("grower_memory_mib"):
        guests = (f"{setup['cache_guests']} cache guests x {setup['memory_mib']} MiB and a "
                  f"growing guest of {setup['grower_memory_mib']} MiB "
                  f"(`{setup.get('grower_pattern', '')}`)")
    budget = f"host budget {setup['host_budget_mib']} MiB"
    if setup.get("ratios"):
        # The sweep's budget is one per ratio, not the scenario's own.
        budget = "overcommit ratios " + ", ".join(
            f"{r:g}x ({b} MiB)" for r, b in zip(setup["ratios"], setup.get("budgets_mib", [])))
    words_ = (f"{guests}, {budget}, host swap "
              f"{setup['host_swap_mib']} MiB, {setup['duration_s']:.0f} s of workload")
    if setup.get("disk_iops"):
        words_ += f", the guests sharing {setup['disk_iops']} IOPS on the host disk"
    if setup.get("agent_args"):
        words_ += f", agents run with `{setup['agent_args']}`"
    if setup.get("report_interval_ms"):
        words_ += f", agents report every {setup['report_interval_ms']} ms"
    return words_


def scenario_table(name: str, scen: Dict[str, Any]) -> List[str]:
    """The scenario's table: work figure and stall beside each other, with intervals."""
    kind = KIND.get(name, "memknobs")
    work_key, work_label, _ = WORK[kind]
    head = [f"## {TITLES.get(name, name)}", "",
            f"| configuration | {work_label} | vs none | vs fpr | memory stall (s, % of wall) "
            "| vs none | vs fpr | guest PSI some / full (s) | vCPUs' wait on the host (s) | QEMU "
            "major faults | host swap ops | guest swap ops | balloon moves (count / MiB) |",
            "|---|---:|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    rows = []
    for config in CONFIGS:
        med = scen["medians"].get(config)
        if med is None:
            continue
        work_digits = 2 if kind == "pagecache" else 0
        cells = [
            LABELS[config],
            _num(med.get(work_key), work_digits),
            _vs(scen, "none", config, work_key),
            _vs(scen, "fpr", config, work_key),
            (f"{_num(med.get(STALL), 1)} ({_num(med.get('stall_share_pct'), 1)} %)"
             if med.get(STALL) is not None else "-"),
            _vs(scen, "none", config, STALL),
            _vs(scen, "fpr", config, STALL),
            f"{_num(med.get('guest_stall_some_s'), 1)} / {_num(med.get('guest_stall_full_s'), 1)}",
            _num(med.get("host_wait_s", med.get("host_stall_some_s")), 1),
            _num(med.get("qemu_major_faults")),
            _num(med.get("host_swap_ops")),
            _num(med.get("guest_swap_ops")),
            f"{_num(med.get('balloon_moves'))} / {_num(med.get('balloon_moved_mib'))}",
        ]
        rows.append("| " + " | ".join(cells) + " |")
    extra: List[str] = []
    if kind == "pagecache":
        extra = _pagecache_extra(scen)
    elif kind == "coldcache":
        extra = _coldcache_extra(scen)
    return head + rows + [""] + _sittings_note(scen) + extra + _yields_extra(scen)


def _sittings_note(scen: Dict[str, Any]) -> List[str]:
    """Which repetitions each row's medians cover, when the rows do not share them.

    A configuration added later with ``--append`` has its medians from another sitting
    than the baselines'; the host's mood between sittings then reads as a difference
    between configurations. The paired columns do not mix sittings, so the note sends
    the reader there.
    """
    sets = scen.get("rep_sets") or {}
    if len({tuple(reps) for reps in sets.values()}) < 2:
        return []
    groups: Dict[str, List[str]] = {}
    for config in CONFIGS:
        if config in sets:
            groups.setdefault(_rep_ranges(sets[config]), []).append(f"`{config}`")
    covered = "; ".join(f"{', '.join(names)} {ranges}" for ranges, names in groups.items())
    return [f"Medians from different repetitions: {covered}. Two medians from different "
            "repetitions differ by the sitting as well as the configuration; the vs columns "
            "pair each repetition with its baseline's.", ""]


def _rep_ranges(reps: Sequence[int]) -> str:
    """Repetition numbers as people count them, runs joined: ``[0, 1, 2, 5]`` -> ``1-3, 6``."""
    spans: List[List[int]] = []
    for rep in sorted(reps):
        if spans and rep == spans[-1][1] + 1:
            spans[-1][1] = rep
        else:
            spans.append([rep, rep])
    return ", ".join(f"{a + 1}" if a == b else f"{a + 1}-{b + 1}" for a, b in spans)


def _yields_extra(scen: Dict[str, Any]) -> List[str]:
    """Yields per configuration that asked for any (medians over repetitions)."""
    lines = ["| configuration | yields asked | returned memory | MiB back at the host | "
             "request -> RSS drop, median / p95 (s) |", "|---|---:|---:|---:|---:|"]
    rows = 0
    for config in CONFIGS:
        med = scen["medians"].get(config)
        if not med or not med.get("yield_requests"):
            continue
        rows += 1
        lines.append(f"| {config} | {_num(med.get('yield_requests'))} | "
                     f"{_num(med.get('yield_returned'))} | "
                     f"{_num(med.get('yield_returned_mib'))} | "
                     f"{_num(med.get('yield_took_median_s'), 1)} / "
                     f"{_num(med.get('yield_took_p95_s'), 1)} |")
    return [*lines, ""] if rows else []


def _pagecache_extra(scen: Dict[str, Any]) -> List[str]:
    # The vCPUs' wait for a host CPU is not a memory stall: a p95 that moved with it
    # followed the CPU share the guests got, not their memory.
    lines = ["| configuration | worst guest p95 (ms) | requests/s per guest | throughput "
             "(KiB/s per guest) | vCPUs' wait for a host CPU (s) | vs none | "
             "cache read back (refaults) | host freeable while it ran (MiB, median) |",
             "|---|---:|---:|---:|---:|---|---:|---:|"]
    for config in CONFIGS:
        med = scen["medians"].get(config)
        if med is None:
            continue
        vs = _vs(scen, "none", config, "host_cpu_wait_vcpu_s")
        lines.append(f"| {config} | {_num(med.get('latency_p95_worst_ms'), 1)} | "
                     f"{_num(med.get('rate_per_s_per_guest'), 2)} | "
                     f"{_num(med.get('throughput_kib_s_per_guest'))} | "
                     f"{_num(med.get('host_cpu_wait_vcpu_s'), 1)} | {vs} | "
                     f"{_num(med.get('cache_refaults'))} | "
                     f"{_num(med.get('host_freeable_mib'))} |")
    return [*lines, ""]


def _coldcache_extra(scen: Dict[str, Any]) -> List[str]:
    lines = ["| configuration | growing guest's stall (s) | vs fpr | its swap ops | cache guests' "
             "p95 (ms) | vs fpr | cache guests' refaults | host freeable while it ran (MiB, "
             "median) |",
             "|---|---:|---|---:|---:|---|---:|---:|"]
    for config in CONFIGS:
        med = scen["medians"].get(config)
        if med is None:
            continue
        vs = _vs(scen, "fpr", config, "grower_stall_s")
        vs_p95 = _vs(scen, "fpr", config, "cache_latency_p95_ms")
        lines.append(f"| {config} | {_num(med.get('grower_stall_s'), 1)} | {vs} | "
                     f"{_num(med.get('grower_swap_ops'))} | "
                     f"{_num(med.get('cache_latency_p95_ms'), 2)} | {vs_p95} | "
                     f"{_num(med.get('cache_refaults'))} | "
                     f"{_num(med.get('host_freeable_mib'))} |")
    return [*lines, ""]


def cpu_table(summary: Dict[str, Any]) -> List[str]:
    """What the host, the guests, ebbd and the agents used while the workloads ran."""
    meds = [(name, config, med) for name, scenario in summary.items() for config in CONFIGS
            for med in [((scenario or {}).get("medians") or {}).get(config)]
            if med and "host_cpu_busy_pct" in med]
    if not meds:
        return []
    # Runs from before "others" was measured leave the column out.
    keys = [k for k in CPU_KEYS if k != "others_cpu_pct"
            or any("others_cpu_pct" in med for _, _, med in meds)]
    digits = {"host_cpu_busy_pct": 1, "qemu_cpu_pct": 1, "others_cpu_pct": 1}
    rows = [f"| {name} | {config} | "
            + " | ".join(f"{med[k]:.{digits.get(k, 2)}f}" if k in med else "-" for k in keys)
            + " |" for name, config, med in meds]
    heads = {"host_cpu_busy_pct": "host busy (%)",
             "qemu_cpu_pct": "QEMU, all guests (% of a core)",
             "ebbd_cpu_pct": "ebbd (% of a core)",
             "agent_cpu_pct_mean": "agent per guest (% of its vCPU)",
             "others_cpu_pct": "others (% of a core)"}
    others = (", and everything else the host was busy with (the harness, kernel threads "
              "but KSM's ksmd, the hypervisor's steal, anyone else's work)"
              if "others_cpu_pct" in keys else "")
    return ["## CPU while the workloads ran", "",
            "Medians. Host busy is a share of all the host's CPUs; the others are "
            "shares of one core: all the guests' QEMU processes together, ebbd, and one "
            "guest's ebb-agent (mean over the guests, measured inside the guest)"
            + others + ".", "",
            "| scenario | configuration | " + " | ".join(heads[k] for k in keys) + " |",
            "|---|---|" + "---:|" * len(keys), *rows, ""]


# -- the operator's figure --------------------------------------------------------------------
def operator_figure(points: Sequence[Dict[str, Any]],
                    limit_pct: float = STALL_LIMIT_PCT) -> Dict[str, Any]:
    """Per configuration: the stall share at each overcommit ratio, and the highest
    ratio (smallest host budget) at which it stays under ``limit_pct``.

    ``points`` are sweep runs' ``{"config", "ratio", "budget_mib", "stall_share_pct"}``.
    A configuration "carries" a ratio when the median stall share there is under
    the limit and it carried every smaller ratio too (a lucky run past a failed
    one does not count).
    """
    table: Dict[str, Dict[float, List[float]]] = {}
    budgets: Dict[float, int] = {}
    for p in points:
        if p.get("stall_share_pct") is None:
            continue
        table.setdefault(p["config"], {}).setdefault(float(p["ratio"]), []).append(
            float(p["stall_share_pct"]))
        budgets[float(p["ratio"])] = int(p["budget_mib"])
    out: Dict[str, Any] = {}
    for config, by_ratio in table.items():
        shares = {r: round(statistics.median(v), 2) for r, v in sorted(by_ratio.items())}
        spread = {f"{r:g}": [round(min(v), 2), round(max(v), 2)]
                  for r, v in sorted(by_ratio.items()) if len(v) > 1}
        carried: Optional[float] = None
        for ratio, share in shares.items():
            if share >= limit_pct:
                break
            carried = ratio
        out[config] = {"stall_share_pct": {f"{r:g}": s for r, s in shares.items()},
                       # Smallest and largest share where the point ran more than once.
                       "stall_share_range": spread,
                       "max_ratio": carried,
                       "min_budget_mib": budgets.get(carried) if carried else None,
                       # Under the line at every ratio measured: the limit lies beyond.
                       "beyond_sweep": carried is not None and carried == max(shares)}
    return out


def sweep_points(runs: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return [{"config": r["config"], "ratio": r["ratio"], "budget_mib": r["budget_mib"],
             "stall_share_pct": (r.get("stall") or {}).get("stall_share_pct")} for r in runs]


def sweep_table(fig: Dict[str, Any]) -> List[str]:
    if not fig:
        return []
    ratios = sorted({float(r) for c in fig.values() for r in c["stall_share_pct"]})
    lines = ["## The operator's figure: how far each configuration overcommits", "",
             f"Memknobs at each overcommit ratio (guests' memory / host budget); the cells "
             f"are the memory stall as a share of wall time: the median, and the smallest and "
             f"largest share where the point ran more than once. The last column is the "
             f"highest ratio at which the median stays under {STALL_LIMIT_PCT:g} %.", "",
             "| configuration | " + " | ".join(f"{r:g}x" for r in ratios)
             + " | carries up to |", "|---|" + "---:|" * (len(ratios) + 1)]
    for config in CONFIGS:
        c = fig.get(config)
        if c is None:
            continue
        cells = [_share_cell(c, f"{r:g}") for r in ratios]
        if c.get("beyond_sweep"):
            best = f"{c['max_ratio']:g}x or more ({c['min_budget_mib']} MiB or less)"
        elif c["max_ratio"]:
            best = f"{c['max_ratio']:g}x ({c['min_budget_mib']} MiB)"
        else:
            best = "none of them"
        lines.append(f"| {config} | " + " | ".join(cells) + f" | {best} |")
    beyond = [config for config in CONFIGS if (fig.get(config) or {}).get("beyond_sweep")]
    if beyond and len(beyond) == len(fig):
        lines += ["", f"At every ratio measured none of the configurations reached "
                      f"{STALL_LIMIT_PCT:g} %: this sweep does not tell them apart. Higher "
                      f"ratios (`--sweep-ratios`) or a slower disk (`--disk-iops`) would."]
    elif beyond:
        lines += ["", ", ".join(f"`{c}`" for c in beyond)
                  + f" stayed under {STALL_LIMIT_PCT:g} % at every ratio measured: "
                  "the limit lies beyond the sweep."]
    return [*lines, ""]


def _share_cell(point: Dict[str, Any], ratio: str) -> str:
    """``1.0 %``, or ``1.0 % (0.8-1.3)`` where the point ran more than once."""
    share = point["stall_share_pct"].get(ratio)
    if share is None:
        return "-"
    spread = (point.get("stall_share_range") or {}).get(ratio)
    return f"{_num(share, 1)} %" + (f" ({_num(spread[0], 1)}-{_num(spread[1], 1)})"
                                    if spread else "")


def sweep_ratio_table(by_ratio: Dict[str, Any]) -> List[str]:
    """At each ratio of the sweep: work, stall and swapping against ``none`` and ``fpr``.

    The operator's figure says only whether the stall crossed the line; this says what
    each configuration paid or won on the way there, with intervals.
    """
    if not by_ratio:
        return []
    work_key, work_label, _ = WORK["memknobs"]
    lines = ["### Each ratio against the baselines", "",
             f"| ratio | configuration | {work_label} | vs none | vs fpr | memory stall (s) "
             "| vs none | vs fpr | host swap ops | guest swap ops | balloon moved (MiB) |",
             "|---|---|---:|---|---|---:|---|---|---:|---:|---:|"]
    for ratio in sorted(by_ratio, key=float):
        scen = by_ratio[ratio]
        for config in CONFIGS:
            med = (scen.get("medians") or {}).get(config)
            if med is None:
                continue
            lines.append("| " + " | ".join([
                f"{ratio}x", f"`{config}`", _num(med.get(work_key)),
                _vs(scen, "none", config, work_key), _vs(scen, "fpr", config, work_key),
                _num(med.get(STALL), 1), _vs(scen, "none", config, STALL),
                _vs(scen, "fpr", config, STALL), _num(med.get("host_swap_ops")),
                _num(med.get("guest_swap_ops")), _num(med.get("balloon_moved_mib"))]) + " |")
    return [*lines, ""]


# -- targets ----------------------------------------------------------------------------------
def _median(summary: Dict[str, Any], config: str, key: str) -> Optional[float]:
    return ((summary.get("medians") or {}).get(config) or {}).get(key)


def targets(summary: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The targets of the yield work, each judged on medians and intervals."""
    out: List[Dict[str, Any]] = []
    cc = summary.get("coldcache")
    if cc and "fpr" in cc["medians"] and "cooperative" in cc["medians"]:
        swap = (_median(cc, "cooperative", "host_swap_ops"), _median(cc, "fpr", "host_swap_ops"))
        stall = (_median(cc, "cooperative", "grower_stall_s"),
                 _median(cc, "fpr", "grower_stall_s"))
        p95 = interval_of(cc, "fpr", "cooperative", "cache_latency_p95_ms")
        out.append({"target": "cold cache + growth, cooperative vs fpr: host swap ops <= 10 %, "
                              "growing guest's stall <= 50 %, cache guests' p95 within 5 %",
                    "measured": f"host swap ops {_num(swap[0])} vs {_num(swap[1])}, growing "
                                f"guest's stall {_num(stall[0], 1)} vs {_num(stall[1], 1)} s, "
                                f"cache p95 {words(p95)}",
                    "met": bool(None not in swap and None not in stall and p95
                                and swap[0] <= 0.10 * swap[1]  # type: ignore[operator]
                                and stall[0] <= 0.5 * stall[1]  # type: ignore[operator]
                                and p95["ratio"] <= 1.05)})
    oc = summary.get("overcommit")
    if oc and "none" in oc["medians"] and "cooperative" in oc["medians"]:
        hs = (_median(oc, "cooperative", "host_swap_ops"), _median(oc, "none", "host_swap_ops"))
        gs = (_median(oc, "cooperative", "guest_swap_ops"),
              _median(oc, "none", "guest_swap_ops"))
        thr = interval_of(oc, "none", "cooperative", "throughput_mb_s")
        out.append({"target": "Memknobs, cooperative vs none: host swap ops <= 10 %, guest "
                              "swap ops <= 1.2x, throughput not below none beyond its interval",
                    "measured": f"host swap ops {_num(hs[0])} vs {_num(hs[1])}, guest swap ops "
                                f"{_num(gs[0])} vs {_num(gs[1])}, throughput {words(thr)}",
                    "met": bool(None not in hs and None not in gs and thr
                                and hs[0] <= 0.10 * hs[1]  # type: ignore[operator]
                                and gs[0] <= 1.2 * gs[1]  # type: ignore[operator]
                                and thr["high"] >= 1.0)})
    if oc and "none" in oc["medians"]:
        # The article's result (issue 8): ballooning beat no policy by about 25 %.
        for config, gain in (("classic", 1.20), ("cooperative", 1.30)):
            thr = interval_of(oc, "none", config, "throughput_mb_s")
            fewer_swap = interval_of(oc, "none", config, "host_swap_ops")
            if thr is None:
                continue
            out.append({"target": f"Memknobs, {config} vs none: throughput >= "
                                  f"{(gain - 1) * 100:+.0f} % beyond its interval, fewer "
                                  "host swap ops",
                        "measured": f"throughput {words(thr)}, host swap ops "
                                    f"{words(fewer_swap)}",
                        "met": bool(thr["low"] >= gain and fewer_swap
                                    and fewer_swap["high"] < 1.0)})
    pc = summary.get("pagecache")
    if pc and "none" in pc["medians"]:
        worst = []
        for config in CONFIGS:
            if config == "none" or config not in pc["medians"]:
                continue
            worst.append((config, interval_of(pc, "none", config, "latency_p95_ms")))
        out.append({"target": "page cache: no configuration's p95 more than 5 % above none",
                    "measured": ", ".join(f"{c}: {words(i, median=True)}" for c, i in worst),
                    "met": all(i is None or i["ratio"] <= 1.05 for _, i in worst)})
    return out


# -- which differences are real --------------------------------------------------------------
def real_differences(summary: Dict[str, Any]) -> List[str]:
    """Every comparison of the key figures whose interval is clear of "no change"."""
    lines = []
    kept = few = 0
    by_chance = 0.0  # comparisons expected clear of "no change" if nothing differed
    min_max = False  # any interval is the smallest and largest ratio (under 5 repetitions)
    for name, scen in summary.items():
        kind = KIND.get(name.split(" ")[0])  # "sweep 2x": one ratio of the sweep
        if kind is None or name == "sweep":
            continue
        keys = (STALL, WORK[kind][0], *(k for k, _l, _u in ALSO_JUDGED.get(kind, ())),
                "host_swap_ops", "guest_swap_ops")
        for baseline in BASELINES:
            for config in CONFIGS:
                if config == baseline:
                    continue
                for key in keys:
                    interval = interval_of(scen, baseline, config, key)
                    if interval is None:
                        continue
                    if 2 <= interval.get("reps", 0) < MIN_REPS_TO_TELL:
                        few += 1
                        continue
                    by_chance += chance_clear(interval)
                    min_max = min_max or interval.get("method") == "min-max"
                    if interval["no_difference"]:
                        kept += 1
                        continue
                    lines.append(f"- {name}, {config} vs {baseline}, {key}: {words(interval)}")
    if not lines and not kept:
        return []
    return (["## Which differences are real", "",
             "Intervals clear of \"no change\" (the rest, "
             f"{kept} comparisons, are no difference"
             + (f"; {few} more of 2 repetitions are too few to tell" if few else "") + "):", ""]
            + (lines or ["- none"]) + [""] + chance_caveat(by_chance, kept + len(lines), min_max))


def chance_caveat(by_chance: float, comparisons: int, min_max: bool) -> List[str]:
    """The paragraph on how many listed differences noise alone would give, when about one."""
    if by_chance < 0.5:
        return []
    how = ("With fewer than 5 repetitions the interval is the smallest and largest ratio, "
           "and with 3 it misses \"no change\" in 1 comparison of 4 where nothing differs "
           "(all three ratios on one side)." if min_max else
           "A 95 % bootstrap interval misses \"no change\" in about 1 comparison of 20 "
           "where nothing differs.")
    return [f"{how} Of these {comparisons} comparisons about {by_chance:.0f} would be listed "
            "here if no configuration made any difference: a difference that is small "
            "against the spread of its repetitions needs more of them.", ""]


def chance_clear(interval: Dict[str, Any]) -> float:
    """How likely this interval is clear of "no change" when nothing differs.

    A min-max interval over n repetitions misses 1.0 exactly when all n ratios fall
    on one side of it, which noise alone does with probability 2 / 2**n. The
    bootstrap (5 repetitions and more) aims at 5 %; one repetition never counts.
    """
    reps = interval.get("reps", 0)
    if reps < 2:
        return 0.0
    if interval.get("method") == "min-max":
        return 2.0 / 2 ** reps
    return 0.05


def markdown(results: Dict[str, Any]) -> str:
    summary = results.get("summary") or {}
    lines = [f"# ebb evaluation results ({results['mode']} mode)", ""]
    top = headline(summary)
    if top:
        measured = any(STALL in med for scen in summary.values()
                       for med in (scen.get("medians") or {}).values())
        if measured:
            note = ("Memory stall: seconds the workloads waited for memory (guest PSI plus "
                    "the time their vCPUs waited on the host); intervals: "
                    + _interval_words(results) + ". Details below.")
        else:
            note = ("These runs were measured before the memory stall and the `fpr` "
                    "baseline existed: throughput and latency only; intervals: "
                    + _interval_words(results) + ".")
        lines += [*top[:7], "", note, ""]
    counts = sorted(set(_rep_counts(results).values())) or [results["reps"]]
    reps = (f"{counts[0]}" if len(counts) == 1
            else f"{counts[0]} to {counts[-1]} (beside each scenario)")
    # A page that --append grew spans every run it holds, not only the last one.
    first = results.get("earlier") or results["started"]
    lines += [f"{'Runs' if results.get('earlier') else 'Run'} {first} .. "
              f"{results.get('finished', '(running)')} on "
              f"{results['host']}; repetitions: {reps}. Medians over repetitions; "
              "ratios are medians of the ratio to the baseline measured in the same "
              "repetition, with the interval over repetitions (bootstrap 95 % from 5 "
              "repetitions, min-max below); \"no difference\" when it holds no change.", ""]
    for name, setup in (results.get("scenarios") or {}).items():
        if setup:
            lines.append(f"- {name}: {setup_line(setup)}{_own_reps(results, name)}")
    if results.get("scenarios"):
        lines.append("")
    for name, scen in summary.items():
        if name == "sweep" or not scen.get("medians"):
            continue
        lines += scenario_table(name, scen)
    sweep = summary.get("sweep") or {}
    if sweep:
        lines += sweep_table(sweep.get("operator") or {})
        lines += sweep_ratio_table(sweep.get("ratios") or {})
    lines += cpu_table({n: s for n, s in summary.items() if n != "sweep"})
    targets_ = results.get("targets") or []
    if targets_:
        lines += ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
        for t in targets_:
            lines.append(f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else 'NO'} |")
        lines.append("")
    lines += disturbed_lines(results)
    at_ratios = {f"sweep {r}x": s for r, s in (sweep.get("ratios") or {}).items()}
    lines += real_differences({**{n: s for n, s in summary.items() if n != "sweep"},
                               **at_ratios})
    if results.get("plots"):
        lines += ["## Figures", ""]
        for name in results["plots"]:
            lines.append(f"- [{name}]({name})")
        lines.append("")
    return "\n".join(lines)


def _rep_counts(results: Dict[str, Any]) -> Dict[str, int]:
    """Repetitions of each scenario but the sweep (whose points have their own count)."""
    return {name: len({r.get("rep") for r in runs})
            for name, runs in (results.get("runs") or {}).items() if runs and name != "sweep"}


def _own_reps(results: Dict[str, Any], name: str) -> str:
    """A scenario says its own repetition count when the page's scenarios differ in it.

    The sweep always says its own: the page's count never speaks for its points.
    """
    if name == "sweep":
        return _sweep_reps_words((results.get("runs") or {}).get(name) or [])
    counts = _rep_counts(results)
    reps = counts.get(name, 0)
    per_config = _config_reps((results.get("runs") or {}).get(name) or [])
    if len({len(done) for done in per_config.values()}) > 1:
        return "; " + _uneven_reps_words(per_config)
    if not reps or set(counts.values()) == {results.get("reps")}:
        return ""
    return f"; {_reps_words(reps)}"


def _sweep_reps_words(runs: Sequence[Dict[str, Any]]) -> str:
    """``; 3 repetitions (min-max intervals) of each point`` or, when the ratios ran
    different counts, ``; 3 repetitions of each point at 1.25x to 2.5x, 1 at 3x and 4x
    (min-max intervals)``."""
    points: Dict[float, Dict[str, Set[Any]]] = {}
    for r in runs:
        points.setdefault(float(r["ratio"]), {}).setdefault(r["config"], set()).add(r.get("rep"))
    if not points:
        return ""
    counts = {ratio: min(len(reps) for reps in by_config.values())
              for ratio, by_config in sorted(points.items())}
    if len(set(counts.values())) == 1:
        return f"; {_reps_words(next(iter(counts.values())))} of each point"
    groups = _by_count(counts)
    parts = []
    for i, (n, ratios) in enumerate(groups):
        where = (f"{ratios[0]:g}x" if len(ratios) == 1 else
                 f"{ratios[0]:g}x and {ratios[1]:g}x" if len(ratios) == 2 else
                 f"{ratios[0]:g}x to {ratios[-1]:g}x")
        head = f"{n} repetition{'s' if n != 1 else ''} of each point" if i == 0 else str(n)
        parts.append(f"{head} at {where}")
    return "; " + ", ".join(parts) + f" ({_method_words([n for n, _ in groups])})"


def _by_count(counts: Dict[Any, int]) -> List[Tuple[int, List[Any]]]:
    """The keys grouped by their count, largest count first, each group in key order."""
    groups: Dict[int, List[Any]] = {}
    for key, n in counts.items():
        groups.setdefault(n, []).append(key)
    return sorted(groups.items(), reverse=True)


def _config_reps(runs: Sequence[Dict[str, Any]]) -> Dict[str, Set[Any]]:
    """The repetitions each configuration ran, in the page's order of configurations."""
    reps: Dict[str, Set[Any]] = {}
    for r in runs:
        reps.setdefault(r["config"], set()).add(r.get("rep"))
    order = {c: i for i, c in enumerate(CONFIGS)}
    return {c: reps[c] for c in sorted(reps, key=lambda c: order.get(c, len(order)))}


def _pair_counts(per_config: Dict[str, Set[Any]]) -> List[int]:
    """The repetitions each comparison with a baseline holds (those of 2 or more)."""
    pairs = [len(per_config[b] & reps) for b in BASELINES if b in per_config
             for c, reps in per_config.items() if c != b]
    return [n for n in pairs if n >= 2]


def _uneven_reps_words(per_config: Dict[str, Set[Any]]) -> str:
    """``6 repetitions of `none`, 3 of `ksm` and `cooperative` (min-max intervals)``.

    A comparison holds only the repetitions both of its configurations ran, so the
    scenario's own count would overstate it, and its interval method with it.
    """
    parts = []
    for i, (n, names) in enumerate(_by_count(
            {f"`{config}`": len(reps) for config, reps in per_config.items()})):
        who = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        parts.append(f"{n} repetition{'s' if n != 1 else ''} of {who}" if i == 0
                     else f"{n} of {who}")
    return ", ".join(parts) + f" ({_method_words(_pair_counts(per_config) or [0])})"


def _reps_words(reps: int) -> str:
    return f"{reps} repetition{'s' if reps != 1 else ''} ({_method_words([reps])})"


def _method_words(pairs: Sequence[int]) -> str:
    """How intervals over comparisons of these repetition counts are made."""
    if min(pairs) >= 5:
        return "bootstrap 95 % intervals"
    if max(pairs) >= 5:
        return "bootstrap 95 % intervals where a comparison holds 5 repetitions, min-max below"
    return "min-max intervals" if max(pairs) >= 2 else "no intervals"


def _interval_words(results: Dict[str, Any]) -> str:
    """How the page's intervals were made, from the repetitions its comparisons hold
    (a comparison holds the repetitions both its configurations ran)."""
    pairs = [n for name, runs in (results.get("runs") or {}).items() if name != "sweep"
             for n in _pair_counts(_config_reps(runs))]
    if not pairs:
        reps = results.get("reps", 0)
        pairs = [reps] if reps >= 2 else []
    if not pairs:
        return "none (one repetition)"
    if min(pairs) >= 5:
        return "bootstrap 95 % over the repetitions"
    if max(pairs) < 5:
        return (f"min-max over {pairs[0]} repetitions" if len(set(pairs)) == 1
                else f"min-max over {min(pairs)} to {max(pairs)} repetitions")
    return ("bootstrap 95 % where a comparison holds 5 repetitions or more, min-max where "
            "it holds fewer")


def _others_pct(run: Dict[str, Any]) -> float:
    return float((run.get("cpu") or {}).get("others_cpu_pct") or 0.0)


def disturbed_lines(results: Dict[str, Any]) -> List[str]:
    disturbed = [(name, r) for name, runs in (results.get("runs") or {}).items() for r in runs
                 if r.get("disturbed") or r.get("foreign_ballooning")
                 or r.get("ksm_on_by_others") or _others_pct(r) >= OTHERS_SHARED_PCT]
    if not disturbed:
        return []
    lines = ["## Runs disturbed by other work on the host", ""]
    for name, r in disturbed:
        why = list(r.get("disturbed") or [])
        if r.get("ksm_on_by_others"):
            why.append("KSM was running (run=1) although no ebbd of ours ran: another "
                       "ebbd on the host turned it on")
        if _others_pct(r) >= OTHERS_SHARED_PCT:
            why.append(f"other processes used {_others_pct(r):g} % of a core while the "
                       f"workload ran (0-10 % in a quiet run; KSM's ksmd counted apart)")
        if r.get("foreign_ballooning"):
            why.append("balloon below maximum without our ebbd: "
                       + ", ".join(r["foreign_ballooning"]))
        lines.append(f"- {name}/{r['config']} (repetition {r.get('rep', 0) + 1}): "
                     + "; ".join(why))
    return [*lines, ""]
