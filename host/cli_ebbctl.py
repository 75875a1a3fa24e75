"""``ebbctl``: the administrator's view of ebb and its tools.

Each group of subcommands lives in its own module under ``ebb.host.ctl`` and
registers itself here. The list is explicit on purpose: no command is loaded by
a name taken from configuration. ``lab`` comes from ``ebb.lab`` (a clone, or
the ``ebb-lab`` package); where that is not installed, a stand-in says how to
get it.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from typing import Any, Callable, Sequence

from ebb.host.ctl import daemon as daemon_cmds
from ebb.host.ctl import observe as observe_cmds
from ebb.host.ctl import policy as policy_cmds
from ebb.host.ctl import yielding as yield_cmds

DEFAULT_CONTROL_SOCKET = "/run/ebb/ebbd.sock"

#: What ``ebbctl lab`` says where the lab is not installed.
LAB_MISSING = (
    "ebbctl lab: the lab is not installed (module ebb.lab): install the ebb-lab package "
    "(apt install ebb-lab, or dnf install ebb-lab), or run ebbctl from a clone of the "
    "repository (see docs/lab.md)"
)

Register = Callable[["argparse._SubParsersAction[Any]"], None]


def _lab_missing(args: argparse.Namespace) -> int:
    print(LAB_MISSING, file=sys.stderr)
    return 1


def _register_lab_missing(sub: argparse._SubParsersAction[Any]) -> None:
    """A ``lab`` command that says how to get the lab, instead of argparse calling it unknown."""
    lab = sub.add_parser("lab", help="a lab of real VMs (needs the ebb-lab package)",
                         description=LAB_MISSING.removeprefix("ebbctl lab: "))
    lab.add_argument("lab_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    lab.set_defaults(func=_lab_missing)


def _register_lab() -> Register:
    """``ebbctl lab`` from ``ebb.lab`` (a clone, or the ebb-lab package) if it is installed.

    The lab is tooling for trying and testing ebb, so the ebb-host package does
    not hold it.
    """
    if importlib.util.find_spec("ebb.lab") is None:
        return _register_lab_missing
    from ebb.lab import ctl

    return ctl.register


def command_groups() -> Sequence[Register]:
    """Each group's ``register``, in the order ``ebbctl --help`` lists them."""
    return (daemon_cmds.register, yield_cmds.register, policy_cmds.register, _register_lab(),
            observe_cmds.register)


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
    for register in command_groups():
        register(sub)
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
