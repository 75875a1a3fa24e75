"""``ebbctl plot``: a run over time, from its trace, as one PNG.

Five panels sharing the time axis, the first four the kind of figure the MOM
article used to show its results:

1. host memory: freeable memory (MemFree+Buffers+Cached) and the ballooning
   threshold (the policy's: recorded in the trace, or read from the policy
   given with ``--policy``; else 20 % of MemTotal);
2. balloons: each VM's current size (solid) and the target ebbd set (dashed,
   same colour);
3. swap: host swap-in and swap-out, and each guest's swap-in+out, in MiB/s;
4. KSM: pages shared and pages sharing;
5. memory stall: each guest's memory PSI ``some`` avg10 (from its agent's
   reports; guests without an agent have none) and the host's, in % of time.

Drawn with matplotlib's Agg canvas (no display, no pyplot global state).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from ebb.host.kinds import ActionKind
from ebb.host.observe.trace import read_trace
from ebb.host.units import PAGE_KIB

LOG = logging.getLogger(__name__)

KIB_PER_MIB = 1024
KIB_PER_GIB = 1024 * 1024
#: The article's threshold: ballooning starts under 20 % freeable memory.
DEFAULT_THRESHOLD_SHARE = 0.20
#: Names under which a policy holds its ballooning threshold: host SetVar values
#: recorded in the trace's ``variables``, or global variables of a policy file
#: (the packaged policies' ``pressure_threshold``), in KiB or as a share of MemTotal.
THRESHOLD_KIB_VARIABLES = ("balloon_threshold_kib", "pressure_threshold_kib")
THRESHOLD_SHARE_VARIABLES = ("pressure_threshold", "balloon_threshold", "threshold")

PathLike = Union[str, Path]


class PlotError(Exception):
    """The trace holds nothing to plot, or the PNG cannot be written."""


@dataclass
class Series:
    """The time series the figure draws, extracted from a trace."""

    t_s: List[float] = field(default_factory=list)
    freeable_gib: List[Optional[float]] = field(default_factory=list)
    threshold_gib: List[Optional[float]] = field(default_factory=list)
    threshold_from_policy: bool = False
    balloon_cur_mib: Dict[str, List[Optional[float]]] = field(default_factory=dict)
    balloon_target_mib: Dict[str, List[Optional[float]]] = field(default_factory=dict)
    host_swap_in_mib_s: List[Optional[float]] = field(default_factory=list)
    host_swap_out_mib_s: List[Optional[float]] = field(default_factory=list)
    guest_swap_mib_s: Dict[str, List[Optional[float]]] = field(default_factory=dict)
    ksm_pages_shared: List[Optional[float]] = field(default_factory=list)
    ksm_pages_sharing: List[Optional[float]] = field(default_factory=list)
    ksm_run: List[Optional[float]] = field(default_factory=list)
    inflations: List[Tuple[float, str]] = field(default_factory=list)
    host_psi_some_pct: List[Optional[float]] = field(default_factory=list)
    guest_psi_some_pct: Dict[str, List[Optional[float]]] = field(default_factory=dict)

    @property
    def vms(self) -> List[str]:
        return sorted(self.balloon_cur_mib)


def _newest(entity: Any) -> Mapping[str, Any]:
    if not isinstance(entity, Mapping):
        return {}
    samples = entity.get("samples") or []
    return samples[-1] if samples and isinstance(samples[-1], Mapping) else {}


def _num(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _rate(now: Optional[float], before: Optional[float], dt_s: float) -> Optional[float]:
    if now is None or before is None or dt_s <= 0 or now < before:
        return None  # first tick, or a counter reset (guest reboot)
    return (now - before) / dt_s


def policy_threshold_share(
    policy: Sequence[PathLike], state: Mapping[str, Any]
) -> Optional[float]:
    """The ballooning threshold a policy defines (a share of MemTotal), or None.

    Evaluates the policy once on ``state`` (a recorded tick's input) with one
    more top-level expression naming the variable, so whatever the policy
    computes for it (a ``defvar`` or a ``set``) is what is drawn.
    """
    from ebb.host.policy import PolicyError, PolicyInput, PolicyLoadError, PolicyRunner
    from ebb.host.policy.program import load_policy_texts, policy_files_in

    files: List[Path] = []
    for raw in policy:
        path = Path(raw)
        files.extend(policy_files_in(path) if path.is_dir() else [path])
    try:
        sources = [(str(f), f.read_text(encoding="utf-8")) for f in files]
        inp = PolicyInput.from_json(state)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise PlotError(f"cannot read the policy for its threshold: {err}") from err
    for name in THRESHOLD_SHARE_VARIABLES:
        try:
            program = load_policy_texts([*sources, ("<ebbctl plot>", name)])
            value = PolicyRunner(program).evaluate(inp).results[-1]
        except (PolicyLoadError, PolicyError):
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1:
            return float(value)
    return None


def _threshold_kib(record: Mapping[str, Any], mem_total_kib: Optional[float]) -> Tuple[
        Optional[float], bool]:
    """The ballooning threshold at this tick and whether the policy said so."""
    variables = record.get("variables")
    host_vars = variables.get("host") if isinstance(variables, Mapping) else None
    if isinstance(host_vars, Mapping):
        for key in THRESHOLD_KIB_VARIABLES:
            value = _num(host_vars.get(key))
            if value is not None:
                return value, True
        for key in THRESHOLD_SHARE_VARIABLES:
            value = _num(host_vars.get(key))
            if value is not None and 0 < value < 1 and mem_total_kib:
                return value * mem_total_kib, True
    if mem_total_kib:
        return DEFAULT_THRESHOLD_SHARE * mem_total_kib, False
    return None, False


def _pad(series: Dict[str, List[Optional[float]]], name: str, length: int) -> List[Optional[float]]:
    values = series.setdefault(name, [])
    values.extend([None] * (length - len(values)))
    return values


def extract_series(
    records: Iterable[Mapping[str, Any]], threshold_share: Optional[float] = None
) -> Series:
    """Pull the plotted quantities out of decoded trace records (oldest first).

    ``threshold_share`` (from :func:`policy_threshold_share`) is drawn as the
    threshold unless the trace records the policy's own.
    """
    out = Series()
    start_ts: Optional[float] = None
    previous: Dict[str, Any] = {}
    targets_in_force: Dict[str, Optional[float]] = {}
    for record in records:
        ts = _num(record.get("ts"))
        state = record.get("state")
        if ts is None or not isinstance(state, Mapping):
            continue
        if start_ts is None:
            start_ts = ts
        index = len(out.t_s)
        out.t_s.append(ts - start_ts)
        dt_s = ts - previous.get("ts", ts)

        host = _newest(state.get("host"))
        total = _num(host.get("mem_available"))
        freeable = _num(host.get("mem_free"))
        out.freeable_gib.append(None if freeable is None else freeable / KIB_PER_GIB)
        threshold, from_policy = _threshold_kib(record, total)
        if not from_policy and threshold_share is not None and total:
            threshold, from_policy = threshold_share * total, True
        out.threshold_gib.append(None if threshold is None else threshold / KIB_PER_GIB)
        out.threshold_from_policy = out.threshold_from_policy or from_policy

        for direction, values in (("in", out.host_swap_in_mib_s), ("out", out.host_swap_out_mib_s)):
            pages = _num(host.get(f"swap_{direction}"))
            rate = _rate(pages, previous.get(f"host_swap_{direction}"), dt_s)
            if rate is None:
                rate = _num(host.get(f"swap_{direction}_rate"))
            values.append(None if rate is None else rate * PAGE_KIB / KIB_PER_MIB)
            previous[f"host_swap_{direction}"] = pages
        out.ksm_pages_shared.append(_num(host.get("ksm_pages_shared")))
        out.ksm_pages_sharing.append(_num(host.get("ksm_pages_sharing")))
        out.ksm_run.append(_num(host.get("ksm_run")))
        out.host_psi_some_pct.append(_num(host.get("psi_some_avg10")))

        for decision in record.get("decisions") or []:
            if not isinstance(decision, Mapping):
                continue
            vm = str(decision.get("vm"))
            target = _num(decision.get("target_kib"))
            if target is not None:
                targets_in_force[vm] = target
                if decision.get("kind") == ActionKind.INFLATE:
                    out.inflations.append((ts - start_ts, vm))

        for guest in state.get("guests") or []:
            if not isinstance(guest, Mapping):
                continue
            name = str((guest.get("props") or {}).get("name", "?"))
            sample = _newest(guest)
            cur = _num(sample.get("balloon_cur"))
            _pad(out.balloon_cur_mib, name, index).append(
                None if cur is None else cur / KIB_PER_MIB)
            target = targets_in_force.get(name)
            _pad(out.balloon_target_mib, name, index).append(
                None if target is None else target / KIB_PER_MIB)
            swapped = None
            swap_in, swap_out = _num(sample.get("swap_in")), _num(sample.get("swap_out"))
            if swap_in is not None or swap_out is not None:
                swapped = (swap_in or 0.0) + (swap_out or 0.0)
            rate = _rate(swapped, previous.get(f"guest_swap:{name}"), dt_s)
            if rate is None and previous.get(f"guest_swap:{name}") is None:
                rate = _num(sample.get("swap_in_rate"))
            _pad(out.guest_swap_mib_s, name, index).append(
                None if rate is None else rate / KIB_PER_MIB)
            previous[f"guest_swap:{name}"] = swapped
            _pad(out.guest_psi_some_pct, name, index).append(_num(sample.get("psi_some_avg10")))
        previous["ts"] = ts
    length = len(out.t_s)
    for table in (out.balloon_cur_mib, out.balloon_target_mib, out.guest_swap_mib_s,
                  out.guest_psi_some_pct):
        for name in list(table):
            _pad(table, name, length)
    return out


def _xs(values: Sequence[Optional[float]]) -> List[float]:
    return [float("nan") if v is None else v for v in values]


def build_figure(series: Series, title: str = "") -> Any:
    """The matplotlib Figure for ``series`` (five panels sharing the time axis)."""
    from matplotlib.figure import Figure

    minutes = bool(series.t_s) and series.t_s[-1] > 600
    t = [x / 60.0 for x in series.t_s] if minutes else list(series.t_s)
    unit = "min" if minutes else "s"

    figure = Figure(figsize=(11, 13), dpi=100, layout="constrained")
    axes = figure.subplots(5, 1, sharex=True, height_ratios=[1.0, 1.3, 1.0, 0.8, 0.9])
    mem_ax, balloon_ax, swap_ax, ksm_ax, stall_ax = axes

    mem_ax.plot(t, _xs(series.freeable_gib), color="tab:blue", linewidth=1.8,
                label="host freeable (MemFree+Buffers+Cached)")
    label = "ballooning threshold (policy)" if series.threshold_from_policy else \
        "ballooning threshold (20 % of MemTotal)"
    mem_ax.plot(t, _xs(series.threshold_gib), color="tab:red", linestyle="--", linewidth=1.2,
                label=label)
    mem_ax.set_ylabel("GiB")
    mem_ax.set_title("Host memory", loc="left", fontsize=11)
    _below = [f is not None and h is not None and f < h
              for f, h in zip(series.freeable_gib, series.threshold_gib)]
    if any(_below):
        _shade_runs(mem_ax, t, _below, color="tab:red", alpha=0.12, label="under threshold")
    mem_ax.set_ylim(bottom=0)

    colours = _colours(len(series.vms))
    # Identical guests often sit at the same size: later lines are drawn
    # thinner on top of earlier ones, so every colour stays visible.
    widths = _stacked_widths(len(series.vms))
    for colour, width, vm in zip(colours, widths, series.vms):
        balloon_ax.plot(t, _xs(series.balloon_cur_mib[vm]), color=colour, linewidth=width,
                        label=f"{vm} balloon")
        balloon_ax.plot(t, _xs(series.balloon_target_mib[vm]), color=colour, linewidth=1.1,
                        linestyle="--", drawstyle="steps-post", label=f"{vm} target")
    balloon_ax.set_ylabel("MiB")
    balloon_ax.set_title("Guest memory (balloon size: memory the guest has)", loc="left",
                         fontsize=11)

    swap_ax.plot(t, _xs(series.host_swap_in_mib_s), color="black", linewidth=1.6,
                 label="host swap-in")
    swap_ax.plot(t, _xs(series.host_swap_out_mib_s), color="grey", linewidth=1.6,
                 linestyle="--", label="host swap-out")
    for colour, width, vm in zip(colours, widths, series.vms):
        swap_ax.plot(t, _xs(series.guest_swap_mib_s.get(vm, [])), color=colour,
                     linewidth=width * 0.7, label=f"{vm} swap in+out")
    swap_ax.set_ylabel("MiB/s")
    swap_ax.set_title("Swap", loc="left", fontsize=11)
    swap_ax.set_ylim(bottom=0)

    ksm_ax.plot(t, _xs(series.ksm_pages_shared), color="tab:green", linewidth=1.6,
                label="pages shared")
    ksm_ax.plot(t, _xs(series.ksm_pages_sharing), color="tab:olive", linewidth=1.6,
                linestyle="--", label="pages sharing")
    running = [r is not None and r >= 1 for r in series.ksm_run]
    if any(running):
        _shade_runs(ksm_ax, t, running, color="tab:green", alpha=0.08, label="KSM running")
    ksm_ax.set_ylabel("pages")
    ksm_ax.set_title("KSM", loc="left", fontsize=11)
    ksm_ax.set_ylim(bottom=0)

    # The time the guests' tasks waited for memory: where a policy that takes memory
    # from a guest shows what it cost that guest.
    stall_ax.plot(t, _xs(series.host_psi_some_pct), color="black", linewidth=1.6,
                  label="host")
    for colour, width, vm in zip(colours, widths, series.vms):
        stall_ax.plot(t, _xs(series.guest_psi_some_pct.get(vm, [])), color=colour,
                      linewidth=width * 0.7, label=f"{vm}")
    stall_ax.set_ylabel("% of time")
    stall_ax.set_title("Memory stall (PSI some, avg10; guests from their agents)", loc="left",
                       fontsize=11)
    stall_ax.set_ylim(bottom=0)
    stall_ax.set_xlabel(f"time since the first tick ({unit})")

    for ax in axes:
        ax.grid(True, alpha=0.3)
        handles = None
        if ax is balloon_ax and series.vms:
            # One entry per VM and one for "dashed = target" keeps the legend short.
            from matplotlib.lines import Line2D

            handles = [line for line in ax.get_lines() if line.get_linestyle() == "-"]
            handles.append(Line2D([], [], color="black", linestyle="--", linewidth=1.1,
                                  label="target (dashed, same colour)"))
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
                  frameon=False)
    if title:
        figure.suptitle(title, fontsize=12)
    return figure


def _shade_runs(ax: Any, t: Sequence[float], flags: Sequence[bool], color: str, alpha: float,
                label: str) -> None:
    """Shade the spans of ticks where ``flags`` holds (half a tick each side, so one
    tick alone still shows)."""
    labelled = False
    index = 0
    while index < len(flags):
        if not flags[index]:
            index += 1
            continue
        end = index
        while end + 1 < len(flags) and flags[end + 1]:
            end += 1
        left = t[index] - (t[index] - t[index - 1]) / 2 if index > 0 else t[index]
        right = t[end] + (t[end + 1] - t[end]) / 2 if end + 1 < len(t) else t[end]
        ax.axvspan(left, right, color=color, alpha=alpha, linewidth=0,
                   label=None if labelled else label)
        labelled = True
        index = end + 1


def _stacked_widths(count: int, thinnest: float = 1.4, thickest: float = 4.0) -> List[float]:
    if count <= 1:
        return [1.8] * count
    step = (thickest - thinnest) / (count - 1)
    return [thickest - i * step for i in range(count)]


def _colours(count: int) -> List[Any]:
    from matplotlib import colormaps

    palette = colormaps["tab10" if count <= 10 else "tab20"]
    return [palette(i % palette.N) for i in range(count)]


def save_figure(figure: Any, output: PathLike) -> None:
    """Write ``figure`` as a PNG (Agg canvas, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    try:
        figure.savefig(str(output), format="png")
    except OSError as err:
        raise PlotError(f"cannot write {output}: {err.strerror or err}") from err


def plot_trace(
    trace: PathLike,
    output: PathLike,
    title: Optional[str] = None,
    policy: Sequence[PathLike] = (),
) -> str:
    """Draw the trace at ``trace`` into ``output``; returns a one-line summary.

    ``policy`` (files or a directory) supplies the ballooning threshold when
    the trace does not record it.
    """
    share: Optional[float] = None
    if policy:
        first = next((r for r in read_trace(trace) if isinstance(r.get("state"), Mapping)), None)
        if first is not None:
            share = policy_threshold_share(policy, first["state"])
            if share is None:
                LOG.warning("the policy defines none of %s; drawing 20 %% of MemTotal",
                            ", ".join(THRESHOLD_SHARE_VARIABLES))
    series = extract_series(read_trace(trace), threshold_share=share)
    if not series.t_s:
        raise PlotError(f"{trace}: no tick with a recorded state to plot")
    figure = build_figure(series, title if title is not None else f"ebb trace {Path(trace).name}")
    save_figure(figure, output)
    span = series.t_s[-1] if series.t_s else 0.0
    return (f"{len(series.t_s)} ticks over {span:.0f} s, {len(series.vms)} VMs, "
            f"{len(series.inflations)} inflations")
