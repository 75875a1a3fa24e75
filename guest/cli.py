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
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import __version__
from .agent import Agent, AgentConfig
from .collect import DEFAULT_PROC_ROOT, CollectError, MemoryCollector
from .reclaim import (
    COMPACT_FILE,
    DEFAULT_RUNTIME_DIR,
    ReclaimSupport,
    probe,
    probe_compaction,
    release,
)
from .sdnotify import notify
from .transport import (
    DEFAULT_DEV_ROOT,
    DEFAULT_SYS_ROOT,
    PORT_NAME,
    TransportError,
    transport_for_device,
)
from .yielder import Yielder
from .yielding import (
    MIB_KIB,
    ReclaimLimits,
    YieldConfig,
    assess,
    clean_cache_kib,
    per_minute_limit_kib,
    reclaimable_kib,
    reserve_kib,
)

LOG = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

#: The agent's configuration file: ``key = value`` lines (a TOML subset), keys as the
#: long options with "_" for "-"; options on the command line win over the file.
DEFAULT_CONFIG = "/etc/ebb/ebb-agent.conf"
#: Config file key -> (argparse destination, value type).
CONFIG_KEYS: Dict[str, Tuple[str, type]] = {
    "yield": ("yield_enabled", bool),
    "yield_anon": ("yield_anon", bool),
    "yield_max_mib_per_min": ("yield_max_mib_per_min", int),
    "yield_step_mib": ("yield_step_mib", int),
    "reserve_mib": ("reserve_mib", int),
}


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
        "--no-yield",
        dest="yield_enabled",
        action="store_false",
        default=True,
        help="never reclaim in the guest: leave the yield capability out of the hello, so "
        "the host balloons instead (config: yield = false)",
    )
    parser.add_argument(
        "--yield-anon",
        action="store_true",
        default=False,
        help="let yields reclaim anonymous memory too, into swap (guests with swap only); "
        "by default only page cache is reclaimed (config: yield_anon = true)",
    )
    parser.add_argument(
        "--yield-max-mib-per-min",
        type=_non_negative_int,
        default=None,
        metavar="MIB",
        help="ask the kernel to reclaim at most this much in any minute (default: the "
        "larger of 256 MiB and a quarter of MemTotal)",
    )
    parser.add_argument(
        "--yield-step-mib",
        type=_step_mib,
        default=32,
        metavar="MIB",
        help="largest single reclaim request, 1..1024 (default: %(default)s)",
    )
    parser.add_argument(
        "--cgroup-root",
        default=None,
        metavar="DIR",
        help="the cgroup v2 directory whose memory.reclaim yields write (default: where "
        "cgroup2 is mounted, or mounted by the agent at "
        f"{DEFAULT_RUNTIME_DIR}/cgroup2 and unmounted when it stops)",
    )
    parser.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="read options from FILE, 'key = value' lines with the keys "
        f"{', '.join(CONFIG_KEYS)} (default: {DEFAULT_CONFIG} if it exists)",
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


def _step_mib(text: str) -> int:
    value = _non_negative_int(text)
    if not 1 <= value <= 1024:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1..1024")
    return value


class ConfigError(Exception):
    """The agent's configuration file cannot be used; the message names file:line."""


def read_config(path: str) -> Dict[str, Any]:
    """The ``key = value`` lines of ``path`` as argparse destinations and values.

    Values are ``true``/``false``, whole numbers or quoted strings (TOML's syntax for
    them); ``#`` starts a comment. Raises :class:`ConfigError`.
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read {path}: {err}") from err
    values: Dict[str, Any] = {}
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        key, sep, raw = (part.strip() for part in text.partition("="))
        where = f"{path}:{number}:1"
        if not sep or not key:
            raise ConfigError(f"{where}: expected 'key = value', got {line.strip()!r}")
        if key not in CONFIG_KEYS:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(CONFIG_KEYS)})")
        dest, kind = CONFIG_KEYS[key]
        if kind is bool and raw in ("true", "false"):
            values[dest] = raw == "true"
        elif kind is int and raw.isdigit():
            values[dest] = int(raw)
        else:
            wanted = "true or false" if kind is bool else "a whole number"
            raise ConfigError(f"{where}: {key} must be {wanted}, got {raw!r}")
    if "yield_step_mib" in values and not 1 <= values["yield_step_mib"] <= 1024:
        raise ConfigError(f"{path}: yield_step_mib must be 1..1024")
    return values


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """Options from the command line over those of the config file."""
    parser = build_parser()
    args = parser.parse_args(argv)
    path = args.config
    if path is None and os.path.exists(DEFAULT_CONFIG):
        path = DEFAULT_CONFIG
    if path is None:
        return args
    try:
        parser.set_defaults(**read_config(path))
    except ConfigError as err:
        parser.error(str(err))
    return parser.parse_args(argv)


def reclaim_limits(args: argparse.Namespace) -> ReclaimLimits:
    """The yield limits the options ask for."""
    per_minute = args.yield_max_mib_per_min
    return ReclaimLimits(
        enabled=args.yield_enabled,
        anon=args.yield_anon,
        step_kib=args.yield_step_mib * MIB_KIB,
        per_minute_kib=per_minute * MIB_KIB if per_minute is not None else None,
    )


def probe_support(args: argparse.Namespace, limits: ReclaimLimits) -> ReclaimSupport:
    """Whether yields can run here (nothing is probed or mounted with --no-yield)."""
    if not limits.enabled:
        return ReclaimSupport(None, why_not="turned off (--no-yield or yield = false)")
    return probe(args.cgroup_root, args.proc_root, DEFAULT_RUNTIME_DIR)


def _setup_logging(level: str) -> None:
    # Under systemd the journal adds its own timestamps.
    if os.environ.get("JOURNAL_STREAM"):
        fmt = "%(levelname)s %(name)s: %(message)s"
    else:
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=getattr(logging, level.upper()), format=fmt, stream=sys.stderr)


def once_result(collector: MemoryCollector, interval_s: float,
                yield_config: YieldConfig,
                limits: Optional[ReclaimLimits] = None,
                support: Optional[ReclaimSupport] = None) -> Dict[str, Any]:
    """One reading as printed by ``--once --json``: report, offer and need maps."""
    from ebb.protocol.messages import Need, Offer, Report, to_dict

    first = collector.sample()
    time.sleep(interval_s)  # a one-shot command, not a daemon loop
    second = collector.sample()
    assessment = assess(first, second, second.monotonic_s - first.monotonic_s, yield_config)
    result: Dict[str, Any] = {
        "report": to_dict(Report(seq=1, **second.report_fields())),
        "offer": to_dict(Offer(seq=2, kib=assessment.offer_kib,
                               cold_kib=clean_cache_kib(second))),
        "need": None,
        "reserve_kib": reserve_kib(second.mem_total_kib, yield_config),
    }
    if limits is not None and support is not None:
        # No history here, as for the offer: all clean inactive cache counts as cold.
        reserve = reserve_kib(second.mem_total_kib, yield_config)
        result["yield"] = {
            "supported": support.supported and limits.enabled,
            "why_not": None if support.supported else support.why_not,
            "swappiness_arg": support.swappiness_arg,
            "anon": limits.anon,
            "cold_cache_kib": clean_cache_kib(second),
            "reclaimable_kib": reclaimable_kib(second, reserve, limits.anon),
            "per_minute_kib": per_minute_limit_kib(second.mem_total_kib, limits),
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
    yielding = result.get("yield")
    if yielding is not None:
        if yielding["supported"]:
            how = "page cache" + (" and anonymous memory" if yielding["anon"] else "")
            if not yielding["swappiness_arg"]:
                how += ", capped at clean cache (kernel without swappiness=)"
            lines.append(f"{'yield':<20} supported ({how})")
        else:
            lines.append(f"{'yield':<20} not supported: {yielding['why_not']}")
        for key in ("cold_cache_kib", "reclaimable_kib", "per_minute_kib"):
            lines.append(f"{key:<20} {yielding[key]}")
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
    args = parse_args(argv)
    _setup_logging(args.log_level)
    yield_config = YieldConfig(
        reserve_kib=args.reserve_mib * MIB_KIB if args.reserve_mib is not None else None
    )
    limits = reclaim_limits(args)
    collector = MemoryCollector(args.proc_root)
    if args.once:
        support = release(probe_support(args, limits))
        try:
            result = once_result(collector, args.interval, yield_config, limits, support)
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
        return EXIT_USAGE

    try:
        first = collector.sample()  # fail now, clearly, rather than in the loop
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
    if limits.anon and first.swap_total_kib == 0:
        LOG.warning("--yield-anon: this guest has no swap; yields take page cache only")
    support = probe_support(args, limits)
    if support.supported:
        LOG.info("yield: reclaiming through %s (%s)", support.path,
                 "page cache only, swappiness=0" if support.swappiness_arg and not limits.anon
                 else "anonymous memory too" if limits.anon
                 else "capped at clean page cache: the kernel has no swappiness= key")
    else:
        LOG.info("yield: not offered to the host: %s", support.why_not)
    compactor = probe_compaction(args.proc_root) if support.supported else None
    if support.supported and compactor is None:
        LOG.info("yield: %s is not writable: memory freed by a yield is not compacted, and "
                 "free page reporting returns less of it", os.path.join(args.proc_root,
                                                                        COMPACT_FILE))
    yielder = Yielder(support, collector, yield_config, limits, compactor=compactor)
    agent = Agent(transport, collector, config, notify=notify, yielder=yielder)

    stop_signals = StopSignals(agent.stop)
    stop_signals.install()
    LOG.info("ebb-agent %s starting on %s", __version__, transport.description)
    try:
        agent.run()
    finally:
        agent.close()
        release(support)
    if stop_signals.received is not None:
        LOG.info("received %s; said bye to the host", stop_signals.received.name)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
