"""``ebbctl``: the administrator's view of ebb and its tools.

Each group of subcommands lives in its own module under ``ebb.host.ctl`` and
registers itself here. The list is explicit on purpose: no command is loaded by
a name taken from configuration.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from ebb.host.ctl import daemon as daemon_cmds
from ebb.host.ctl import lab as lab_cmds
from ebb.host.ctl import observe as observe_cmds
from ebb.host.ctl import policy as policy_cmds
from ebb.host.ctl import yielding as yield_cmds

DEFAULT_CONTROL_SOCKET = "/run/ebb/ebbd.sock"

COMMAND_GROUPS = (daemon_cmds, yield_cmds, policy_cmds, lab_cmds, observe_cmds)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ebbctl",
        description="See what ebbd is doing and why, check and try policies, run a lab of VMs.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument(
        "--socket",
        default=DEFAULT_CONTROL_SOCKET,
        metavar="PATH",
        help=f"ebbd's control socket (default {DEFAULT_CONTROL_SOCKET})",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for group in COMMAND_GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
