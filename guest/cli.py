"""``ebb-agent``: the guest agent's command line.

Builds the collector, the transport and the agent from the options, installs the
signal handlers and runs; or, with ``--once``, prints one reading and exits.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from types import FrameType
from typing import Any, Callable, Dict, List, Optional, Sequence

from . import __version__
from .agent import Agent, AgentConfig
from .collect import DEFAULT_PROC_ROOT, CollectError, MemoryCollector
from .sdnotify import notify
from .transport import (
    DEFAULT_DEV_ROOT,
    DEFAULT_SYS_ROOT,
    PORT_NAME,
    TransportError,
    transport_for_device,
)
from .yielding import MIB_KIB, YieldConfig, assess, reserve_kib

LOG = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1


def build_parser() -> argparse.ArgumentParser:
    """The ``ebb-agent`` argument parser (every option documented in ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="ebb-agent",
        description=(
            "Report this VM's memory state to the ebb host daemon (ebbd) over a "
            "virtio-serial port, offer memory the guest does not need and ask for "
            "memory when it is short. See docs/agent.md."
        ),
        epilog=(
            f"Without --device the agent uses the virtio-serial port named {PORT_NAME} "
            f"(/dev/virtio-ports/{PORT_NAME}, or the /dev/vportNpM whose "
            "/sys/class/virtio-ports/*/name says so). Exit status: 0 after a clean stop "
            "(SIGTERM/SIGINT), 1 when the port or /proc cannot be used, 2 for bad options."
        ),
    )
    parser.add_argument(
        "--device",
        metavar="PATH",
        help=(
            "where the host is: a virtio-serial port (/dev/vport1p1), an emulated serial "
            "port opened with pyserial (/dev/ttyS1, any tty* or /dev/pts/N), or "
            "unix:PATH for a unix stream socket (default: find the virtio-serial port "
            f"named {PORT_NAME})"
        ),
    )
    parser.add_argument(
        "--proc-root",
        default=DEFAULT_PROC_ROOT,
        metavar="DIR",
        help="read meminfo, vmstat and pressure/memory under DIR (default: %(default)s)",
    )
    parser.add_argument(
        "--sys-root",
        default=DEFAULT_SYS_ROOT,
        metavar="DIR",
        help="sysfs to search for the port by name, for chroots and tests "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--dev-root",
        default=DEFAULT_DEV_ROOT,
        metavar="DIR",
        help="device directory to find the port in, for chroots and tests "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--interval",
        type=_positive_float,
        default=1.0,
        metavar="SECONDS",
        help="report interval until the host's welcome sets one; with --once, the time "
        "between the two samples that rates are computed from (default: %(default)s)",
    )
    parser.add_argument(
        "--watch-interval",
        type=_positive_float,
        default=0.5,
        metavar="SECONDS",
        help="sample at least this often between reports, so a big change (MemAvailable "
        "moving by more than 5%% of MemTotal, PSI rising) is reported at once; twice "
        "this while the guest is calm (default: %(default)s)",
    )
    parser.add_argument(
        "--reserve-mib",
        type=_non_negative_int,
        default=None,
        metavar="MIB",
        help="memory the guest always keeps and never offers (default: the larger of "
        "64 MiB and 5%% of MemTotal); needs start below twice this much available, "
        "offers keep 2.5 times it",
    )
    parser.add_argument(
        "--backoff-max",
        type=_positive_float,
        default=10.0,
        metavar="SECONDS",
        help="longest wait between attempts to reach an absent host over a socket or "
        "serial line; waits start at 1 s and double (a virtio-serial port is checked "
        "every second) (default: %(default)s)",
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="take one reading (two samples --interval apart), print it with the computed "
        "offer and need, and exit without contacting the host",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="with --once: print JSON {\"report\": ..., \"offer\": ..., \"need\": ...} with "
        "the protocol's message field names",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="how much to log to stderr (default: %(default)s)",
    )
    parser.add_argument("--version", action="version", version=f"ebb-agent {__version__}")
    return parser


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


def _setup_logging(level: str) -> None:
    # Under systemd the journal adds its own timestamps.
    if os.environ.get("JOURNAL_STREAM"):
        fmt = "%(levelname)s %(name)s: %(message)s"
    else:
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=getattr(logging, level.upper()), format=fmt, stream=sys.stderr)


def once_result(collector: MemoryCollector, interval_s: float,
                yield_config: YieldConfig) -> Dict[str, Any]:
    """One reading as printed by ``--once --json``: report, offer and need maps."""
    from ebb.protocol.messages import Need, Offer, Report, to_dict

    first = collector.sample()
    time.sleep(interval_s)  # a one-shot command, not a daemon loop
    second = collector.sample()
    assessment = assess(first, second, second.monotonic_s - first.monotonic_s, yield_config)
    result: Dict[str, Any] = {
        "report": to_dict(Report(seq=1, **second.report_fields())),
        "offer": to_dict(Offer(seq=2, kib=assessment.offer_kib)),
        "need": None,
        "reserve_kib": reserve_kib(second.mem_total_kib, yield_config),
    }
    if assessment.need is not None:
        need = assessment.need
        result["need"] = to_dict(
            Need(seq=3, kib=need.kib, urgency=need.urgency, reason=need.reason[:256])
        )
    return result


def _print_human(result: Dict[str, Any]) -> None:
    report = result["report"]
    lines: List[str] = []
    for key, value in report.items():
        if key in ("type", "seq"):
            continue
        lines.append(f"{key:<20} {'-' if value is None else value}")
    lines.append(f"{'reserve_kib':<20} {result['reserve_kib']}")
    lines.append(f"{'offer_kib':<20} {result['offer']['kib']}")
    need = result["need"]
    if need is None:
        lines.append(f"{'need':<20} none")
    else:
        lines.append(f"{'need':<20} {need['kib']} KiB, {need['urgency']}: {need['reason']}")
    print("\n".join(lines))


class StopSignals:
    """SIGTERM and SIGINT ask the agent to stop.

    The handler only records the signal and wakes the agent (a flag and a pipe
    write). It must not log: a signal can land while the main thread is inside a
    logging call, and a second write to stderr's buffered writer from the handler
    raises "reentrant call", which took the clean stop down with it.
    """

    def __init__(self, stop: Callable[[], None]) -> None:
        self._stop = stop
        self.received: Optional[signal.Signals] = None

    def __call__(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.received is None:
            self.received = signal.Signals(signum)
        self._stop()

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self)
        signal.signal(signal.SIGINT, self)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``ebb-agent``; returns the exit status."""
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level)
    yield_config = YieldConfig(
        reserve_kib=args.reserve_mib * MIB_KIB if args.reserve_mib is not None else None
    )
    collector = MemoryCollector(args.proc_root)
    if args.once:
        try:
            result = once_result(collector, args.interval, yield_config)
        except CollectError as err:
            LOG.error("%s", err)
            return EXIT_FAILURE
        if args.json:
            import json

            print(json.dumps(result, indent=2))
        else:
            _print_human(result)
        return EXIT_OK
    if args.json:
        LOG.error("--json only applies with --once")
        return 2

    try:
        collector.sample()  # fail now, clearly, rather than in the loop
        transport = transport_for_device(args.device, args.dev_root, args.sys_root)
    except (CollectError, TransportError) as err:
        LOG.error("%s", err)
        return EXIT_FAILURE
    config = AgentConfig(
        default_interval_s=args.interval,
        watch_interval_s=args.watch_interval,
        backoff_max_s=max(args.backoff_max, 1.0),
        yield_config=yield_config,
    )
    agent = Agent(transport, collector, config, notify=notify)

    stop_signals = StopSignals(agent.stop)
    stop_signals.install()
    LOG.info("ebb-agent %s starting on %s", __version__, transport.description)
    try:
        agent.run()
    finally:
        agent.close()
    if stop_signals.received is not None:
        LOG.info("received %s; said bye to the host", stop_signals.received.name)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
