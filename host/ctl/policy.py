"""``ebbctl policy``: check policy files, and evaluate a policy on a saved state.

``ebbctl policy check PATH...`` loads the files (a directory stands for its
``*.policy`` files) as one program: exit 0 when everything loads, else exit 2
with one ``PATH:LINE:COL: message`` line per error on stderr.

``ebbctl policy eval --state STATE.json PATH... [--governed]`` evaluates the
policy once and prints ``{"results": [...], "controls": {"host": {...},
"guests": {...}}}``; with ``--governed`` also the governor's decisions.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, List

from ebb.host.governor import Governor
from ebb.host.policy import (
    PolicyError,
    PolicyInput,
    PolicyLoadError,
    PolicyRunner,
    load_policy_files,
)
from ebb.host.tick import TickInput, guest_views, host_spare_from_policy, plan_tick

EXIT_OK = 0
EXIT_POLICY_ERROR = 2


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``ebbctl policy check`` and ``ebbctl policy eval``."""
    parser = sub.add_parser(
        "policy",
        help="check policy files, or evaluate a policy on a saved state",
        description="Check policy files, or evaluate a policy once on a saved state.",
    )
    actions = parser.add_subparsers(dest="policy_command", metavar="ACTION")
    actions.required = True

    check = actions.add_parser(
        "check",
        help="load policy files and report every error as PATH:LINE:COL: message",
        description="Load the files (a directory means its *.policy files, in name order) "
        "as one program. Exit 0 when they load, 2 with one line per error otherwise.",
    )
    check.add_argument("paths", nargs="+", metavar="PATH", help="policy file or directory")
    check.set_defaults(func=run_check)

    ev = actions.add_parser(
        "eval",
        help="evaluate a policy once on a state file and print the controls as JSON",
        description="Evaluate the policy once on STATE.json and print "
        '{"results": [...], "controls": {"host": {...}, "guests": {...}}}. '
        "Policy only, unless --governed.",
    )
    ev.add_argument(
        "--state",
        required=True,
        metavar="STATE.json",
        help='{"host": {"props": {}, "samples": [...]}, "guests": [...]} (samples oldest first)',
    )
    ev.add_argument(
        "--governed",
        action="store_true",
        help="also apply the governor (fresh state, clock 0) and print its decisions",
    )
    ev.add_argument("paths", nargs="+", metavar="PATH", help="policy file or directory")
    ev.set_defaults(func=run_eval)


def _report(errors: List[PolicyError]) -> int:
    for err in errors:
        print(str(err), file=sys.stderr)
    return EXIT_POLICY_ERROR


def run_check(args: argparse.Namespace) -> int:
    try:
        program = load_policy_files(args.paths)
    except PolicyLoadError as err:
        return _report(err.errors)
    print(f"ok: {len(program.paths)} file(s) load: {', '.join(program.paths)}")
    return EXIT_OK


def run_eval(args: argparse.Namespace) -> int:
    try:
        program = load_policy_files(args.paths)
    except PolicyLoadError as err:
        return _report(err.errors)
    try:
        with open(args.state, encoding="utf-8") as fh:
            raw = json.load(fh)
        inp = PolicyInput.from_json(raw)
    except OSError as err:
        print(f"{args.state}: cannot read: {err.strerror or err}", file=sys.stderr)
        return EXIT_POLICY_ERROR
    except json.JSONDecodeError as err:
        print(f"{args.state}:{err.lineno}:{err.colno}: not valid JSON: {err.msg}", file=sys.stderr)
        return EXIT_POLICY_ERROR
    except ValueError as err:
        print(f"{args.state}: {err}", file=sys.stderr)
        return EXIT_POLICY_ERROR
    # The tick's own planning (host/tick.py), with a fresh governor at time 0.
    governor = Governor()
    plan = plan_tick(
        TickInput(0.0, inp, guest_views(inp),
                  host_spare_from_policy(inp, governor.config.host_reserve_share)),
        PolicyRunner(program), governor,
    )
    governor.commit(plan.all_applied())
    if plan.evaluation is None:
        return _report([plan.policy_error] if plan.policy_error else [])
    for line in plan.debug:
        print(f"debug: {line}", file=sys.stderr)
    out: Dict[str, Any] = plan.evaluation.to_json()
    if args.governed:
        out["governor"] = [d.to_json() for d in plan.decisions]
    json.dump(out, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")
    return EXIT_OK
