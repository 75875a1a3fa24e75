"""``ebbd``: the host daemon's command line.

``ebbd [--config PATH] [--dry-run] [--once] [--log-level LEVEL]``

Exit status: 0 after a clean stop, 1 when a thread died or startup failed
(systemd restarts the service), 2 for a configuration error or when no policy loads.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ebb.host.app import build_daemon
from ebb.host.config import DEFAULT_CONFIG_PATH, LOG_LEVELS, ConfigError, load_config
from ebb.host.control import ControlError
from ebb.host.logsetup import configure_logging
from ebb.host.policy import PolicyStartError

LOG = logging.getLogger("ebb.host.ebbd")

# Exit statuses (the same as ebb.host.app's).
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ebbd",
        description="Manage memory overcommitment on this KVM host: balloon guests and "
        "tune KSM according to the policies in the configured policy directory.",
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=None,
        help=f"configuration file (default {DEFAULT_CONFIG_PATH}; missing = all defaults)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="decide and log every action, apply none (balloons, KSM, memtune untouched)",
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="run one tick, print what was decided, and exit",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="with --once: print the tick record as JSON instead of a summary",
    )
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default=None,
        help="log level (default: daemon.log_level from the config, else info)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level or "info")
    try:
        config = load_config(args.config)
    except ConfigError as err:
        LOG.error("%s", err)
        print(f"ebbd: {err}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(args.log_level or config.daemon.log_level)

    if args.once:
        return _once(config, args)

    try:
        daemon = build_daemon(config, config_path=args.config, dry_run=args.dry_run)
    except (ValueError, OSError) as err:
        LOG.error("cannot build ebbd: %s", err)
        return EXIT_FAILURE
    daemon.install_signal_handlers()
    try:
        daemon.start()
    except PolicyStartError as err:
        LOG.error("cannot start: %s", err)
        print(f"ebbd: {err}", file=sys.stderr)
        daemon.stop()
        return EXIT_CONFIG
    except (ControlError, OSError) as err:
        LOG.error("cannot start: %s", err)
        daemon.stop()
        return EXIT_FAILURE
    return int(daemon.run_forever())


def _once(config, args: argparse.Namespace) -> int:  # type: ignore[no-untyped-def]
    from ebb.host.hypervisor import HypervisorError

    daemon = build_daemon(
        config,
        config_path=args.config,
        dry_run=args.dry_run,
        control_socket=False,
        observability=False,
    )
    try:
        record = daemon.run_once()
    except HypervisorError as err:
        LOG.error("%s", err)
        print(f"ebbd --once: {err}", file=sys.stderr)
        return EXIT_FAILURE
    if daemon.c.ksm is not None:
        # One tick is not a run: leave the host's KSM as it was before it.
        daemon.c.ksm.restore()
    if args.json:
        print(record.to_json())
        return EXIT_OK
    print(record.summary())
    for decision in record.decisions:
        target = decision.get("target_kib")
        print(
            f"  {decision['vm']}: {decision['kind']}"
            f"{f' -> {target} KiB' if target is not None else ''}"
            f" [{decision['rule']}] {decision['reason']}"
        )
    for entry in record.applied:
        who = entry.get("vm") or entry.get("knob")
        print(f"  applied: {who}: {entry.get('outcome')} {entry.get('detail') or ''}".rstrip())
    if daemon.policies.errors:
        for error in daemon.policies.errors:
            print(f"  policy error: {error}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
