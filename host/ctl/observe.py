"""``ebbctl`` subcommands that look at what ebbd did: top, metrics, replay, plot."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Dict

LOG = logging.getLogger(__name__)

#: Exit code for a command that could not run (daemon unreachable, bad trace ...).
EXIT_FAILURE = 1


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add this group's subcommands to ``ebbctl``."""
    top = sub.add_parser(
        "top",
        help="live view of host memory, KSM and every VM (q or Ctrl-C to leave)",
        description="A live view of ebbd refreshed every second: host memory and pressure, "
        "KSM sharing, one row per VM with its balloon, agent, offer, need, PSI and last "
        "action. Reads the same status as `ebbctl status --json`.",
    )
    top.add_argument("--once", action="store_true",
                     help="print one frame and exit (for scripts)")
    top.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                     help="refresh period (default 1)")
    top.add_argument("--width", type=int, default=None, metavar="COLUMNS",
                     help="with --once: frame width (default: terminal width, at most 80)")
    top.set_defaults(func=cmd_top)

    metrics = sub.add_parser(
        "metrics",
        help="print ebbd's current metrics (Prometheus text format)",
        description="Print the metrics ebbd exposes, in the Prometheus text exposition "
        "format, read through the control socket (no HTTP port needed).",
    )
    metrics.set_defaults(func=cmd_metrics)

    replay = sub.add_parser(
        "replay",
        help="re-run a recorded trace through another policy and show where decisions differ",
        description="Re-run every tick of a trace (ebbd's [trace] file) through the policy "
        "at PATH and a fresh governor, and print, tick by tick, the VMs whose balloon "
        "target would have differed, then a summary (ticks that differ, total balloon "
        "movement, inflations and deflations under each).",
    )
    replay.add_argument("trace", metavar="TRACE",
                        help="trace file (its rotated older files TRACE.1 ... are read too)")
    replay.add_argument("--policy", required=True, metavar="PATH", nargs="+",
                        help="policy file(s) or directory to try")
    replay.add_argument("--json", action="store_true", help="print the result as JSON")
    replay.add_argument(
        "--config",
        metavar="PATH",
        default=None,
        help="ebbd.toml whose [governor] limits the replay uses (default: ebbd's default "
        "config file, or the built-in defaults when there is none)",
    )
    replay.add_argument(
        "--open-loop",
        action="store_true",
        help="feed the recorded inputs unchanged (default: shift each balloon, and the "
        "host's free memory, by the difference between replayed and recorded targets)",
    )
    replay.add_argument("--limit", type=int, default=50, metavar="N",
                        help="print at most N differing ticks (default 50; the summary "
                        "counts all)")
    replay.set_defaults(func=cmd_replay)

    plot = sub.add_parser(
        "plot",
        help="draw a trace over time into a PNG",
        description="Draw a trace over time: host freeable memory and the ballooning "
        "threshold, each VM's balloon size and target, host and guest swap rates, KSM "
        "pages shared and sharing.",
    )
    plot.add_argument("trace", metavar="TRACE", help="trace file (rotated files read too)")
    plot.add_argument("-o", "--output", required=True, metavar="FILE.png", help="PNG to write")
    plot.add_argument("--title", default=None, help="figure title (default: the trace name)")
    plot.add_argument(
        "--policy",
        nargs="+",
        default=(),
        metavar="PATH",
        help="policy file(s) or directory whose pressure_threshold is drawn (default: "
        "20 %% of MemTotal unless the trace records the policy's)",
    )
    plot.set_defaults(func=cmd_plot)


# -- top / metrics ------------------------------------------------------------


def _client(args: argparse.Namespace) -> Any:
    from ebb.host.control import ControlClient

    return ControlClient(args.socket)


def _fetch_status(args: argparse.Namespace) -> Dict[str, Any]:
    status = _client(args).request("status")
    if not isinstance(status, dict):
        raise ValueError("ebbd answered status with something that is not a JSON object")
    return status


def cmd_top(args: argparse.Namespace) -> int:
    """``ebbctl top``."""
    from ebb.host.control import ControlError
    from ebb.host.observe import top

    if args.once:
        try:
            status = _fetch_status(args)
        except ControlError as err:
            print(f"ebbctl top: {err}", file=sys.stderr)
            return EXIT_FAILURE
        width = args.width
        if width is None:
            import shutil

            width = min(shutil.get_terminal_size((top.DEFAULT_WIDTH, 24)).columns,
                        top.DEFAULT_WIDTH)
        sys.stdout.write(top.render_text(status, width=width, color=sys.stdout.isatty()))
        return 0
    if args.interval <= 0:
        print("ebbctl top: --interval must be positive", file=sys.stderr)
        return 2
    return int(top.run_top(lambda: _fetch_status(args), interval_s=float(args.interval)))


def cmd_metrics(args: argparse.Namespace) -> int:
    """``ebbctl metrics``."""
    from ebb.host.control import ControlError

    try:
        text = _client(args).request("metrics")
    except ControlError as err:
        print(f"ebbctl metrics: {err}", file=sys.stderr)
        return EXIT_FAILURE
    if isinstance(text, dict):  # tolerate {"text": ...}
        text = text.get("text", "")
    sys.stdout.write(str(text))
    return 0


# -- replay / plot ----------------------------------------------------------------


def cmd_replay(args: argparse.Namespace) -> int:
    """``ebbctl replay``."""
    from ebb.host.config import ConfigError, load_config
    from ebb.host.observe.replay import ReplayError, format_report, replay_trace
    from ebb.host.observe.trace import TraceError
    from ebb.host.settings import governor_config

    if not getattr(args, "verbose", False):
        # A replay loads the policy and runs the governor over hours of ticks:
        # their per-tick INFO lines would bury the report.
        for name in ("ebb.host.policy", "ebb.host.governor"):
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        # The same limits as the daemon that recorded the trace, so that the
        # recorded policy reproduces its own decisions.
        limits = governor_config(load_config(args.config))
        report = replay_trace(args.trace, args.policy, governor_config=limits,
                              open_loop=args.open_loop)
    except (TraceError, ReplayError, ConfigError) as err:
        print(f"ebbctl replay: {err}", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        json.dump(report.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_report(report, limit=args.limit))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """``ebbctl plot``."""
    from ebb.host.observe.plot import PlotError, plot_trace
    from ebb.host.observe.trace import TraceError

    try:
        summary = plot_trace(args.trace, args.output, title=args.title, policy=args.policy)
    except (TraceError, PlotError) as err:
        print(f"ebbctl plot: {err}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"wrote {args.output}: {summary}")
    return 0
