"""Figures over time of one configuration run, from the benchmark's own samples.

The same panels for every configuration, ``none`` included (it has no ebbd
trace): host freeable memory, each balloon's size, host swap rates, guest swap
rates, KSM sharing, and each guest's workload throughput. Runs with ebbd also
get ``ebbctl plot`` of their trace.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

PAGE_KIB = 4


def _rates(t: List[float], values: List[float]) -> List[float]:
    out = [0.0]
    for i in range(1, len(values)):
        dt = t[i] - t[i - 1]
        out.append(max(0.0, (values[i] - values[i - 1]) / dt) if dt > 0 else 0.0)
    return out


def plot_run(workdir: Path, output: Path, title: str,
             guest_lines: Optional[Dict[str, List[Dict[str, Any]]]] = None,
             rate_key: str = "mb_per_s", rate_label: str = "memknobs MB/s") -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    samples = json.loads((workdir / "samples.json").read_text())
    t = [s["t_s"] for s in samples if "host" in s]
    hosts = [s["host"] for s in samples if "host" in s]
    fig = Figure(figsize=(8, 9), dpi=72)
    FigureCanvasAgg(fig)
    axes = fig.subplots(5, 1, sharex=True)
    fig.suptitle(title, fontsize=11)
    ax = axes[0]
    ax.plot(t, [h["freeable_kib"] / 1024 for h in hosts], label="freeable")
    ax.plot(t, [h["swap_used_kib"] / 1024 for h in hosts], label="swap used")
    ax.set_ylabel("host MiB")
    ax.legend(fontsize=7, loc="upper right")
    ax = axes[1]
    names = sorted({n for s in samples for n in s.get("guests", {})})
    for name in names:
        ts = [s["t_s"] for s in samples if name in s.get("guests", {})]
        ax.plot(ts, [s["guests"][name].get("actual", 0) / 1024 for s in samples
                     if name in s.get("guests", {})], label=name)
    ax.set_ylabel("balloon MiB")
    ax.legend(fontsize=7, loc="lower left", ncol=4)
    ax = axes[2]
    ax.plot(t, [r * PAGE_KIB / 1024 for r in _rates(t, [h["pswpin"] for h in hosts])],
            label="host swap-in")
    ax.plot(t, [r * PAGE_KIB / 1024 for r in _rates(t, [h["pswpout"] for h in hosts])],
            label="host swap-out")
    for name in names:
        rows = [s for s in samples if name in s.get("guests", {})]
        ts = [s["t_s"] for s in rows]
        total = [s["guests"][name].get("swap_in", 0) + s["guests"][name].get("swap_out", 0)
                 for s in rows]
        ax.plot(ts, [r / 1024 for r in _rates(ts, total)], linestyle=":", label=f"{name} swap")
    ax.set_ylabel("swap MiB/s")
    ax.legend(fontsize=6, loc="upper right", ncol=2)
    ax = axes[3]
    ax.plot(t, [h["ksm_pages_sharing"] for h in hosts], label="pages_sharing")
    ax.plot(t, [h["ksm_pages_shared"] for h in hosts], label="pages_shared")
    ax.set_ylabel("KSM pages")
    ax.legend(fontsize=7, loc="upper left")
    ax = axes[4]
    for name, lines in sorted((guest_lines or {}).items()):
        ax.plot([ln["t_s"] for ln in lines], [ln.get(rate_key, 0) for ln in lines],
                label=name, linewidth=0.8)
    ax.set_ylabel(rate_label, fontsize=8)
    ax.set_yscale("symlog")
    ax.set_xlabel("seconds")
    if guest_lines:
        ax.legend(fontsize=7, loc="lower left", ncol=4)
    fig.tight_layout()
    fig.savefig(str(output))


def memknobs_lines(text: str) -> List[Dict[str, Any]]:
    out = []
    for raw in text.splitlines():
        try:
            out.append(json.loads(raw))
        except ValueError:
            continue
    return out
