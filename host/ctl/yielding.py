"""``ebbctl yield VM SIZE``: ask a guest's agent to give memory back now.

The agent reclaims cold page cache in its guest (PROTOCOL.md "yield"); with free
page reporting the pages leave the host within seconds. ebbd measures the VM's
QEMU RSS before the request and a few seconds after the answer, and that drop
is what this command reports as come back, next to the agent's own figure.

Exit status: 0 when memory came back; 1 when the VM is unknown, has no agent or
no yield capability, did not answer in time, or gave nothing back (the reason is
printed), or ebbd cannot be reached; 2 for a bad SIZE.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
from typing import Any, Dict

from ebb.host.control import ControlClient, ControlError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

#: Poll ebbd this often while the yield is under way.
POLL_INTERVAL_S = 0.5

#: Units as virsh reads them (setmem, setmaxmem): KiB by default; powers of
#: 1024 for k/KiB, M/MiB, G/GiB, T/TiB; powers of 1000 for KB, MB, GB, TB.
_UNIT_BYTES = {
    "": 1024, "b": 1, "byte": 1, "bytes": 1,
    "k": 1024, "kib": 1024, "kb": 1000,
    "m": 1024**2, "mib": 1024**2, "mb": 1000**2,
    "g": 1024**3, "gib": 1024**3, "gb": 1000**3,
    "t": 1024**4, "tib": 1024**4, "tb": 1000**4,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*\Z")


def parse_size_kib(text: str) -> int:
    """A size as virsh takes it (``200M``, ``1G``, ``204800K``, ``204800`` = KiB) in KiB.

    Raises ValueError with a message naming the problem.
    """
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(
            f"size {text!r} is not a number with an optional unit (e.g. 200M, 1G, 204800K)"
        )
    number, unit = match.groups()
    factor = _UNIT_BYTES.get(unit.lower())
    if factor is None:
        raise ValueError(
            f"size {text!r}: unknown unit {unit!r} (use K, M, G, T, KiB..TiB, KB..TB or B)"
        )
    kib = int(float(number) * factor // 1024)
    if kib <= 0:
        raise ValueError(f"size {text!r} is less than 1 KiB")
    return kib


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``yield`` to ``ebbctl``."""
    parser = sub.add_parser(
        "yield",
        help="ask a VM's agent to give back memory now (cold page cache)",
        description="Ask VM's ebb-agent to reclaim up to SIZE of cold page cache now, for "
        "example before starting a big VM. Prints what came back at the host (the VM's "
        "QEMU RSS before and after, measured by ebbd a few seconds after the answer), the "
        "agent's own figure, and how long it took. The guest keeps its memory size: this "
        "needs free page reporting on the VM's balloon to reach the host.",
    )
    parser.add_argument("vm", metavar="VM", help="domain name")
    parser.add_argument(
        "size", metavar="SIZE",
        help="how much, as virsh takes sizes: 200M, 1G, 204800K; a plain number is KiB",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--timeout", type=float, default=60.0, metavar="S",
        help="give up waiting for ebbd after S seconds (default 60)",
    )
    parser.set_defaults(func=cmd_yield)


def cmd_yield(args: argparse.Namespace) -> int:
    """``ebbctl yield VM SIZE``."""
    try:
        kib = parse_size_kib(args.size)
    except ValueError as err:
        print(f"ebbctl yield: {err}", file=sys.stderr)
        return EXIT_USAGE
    client = ControlClient(args.socket)
    pause = threading.Event()
    try:
        result = client.request("yield", vm=args.vm, kib=kib)
        give_up = time.monotonic() + max(1.0, float(args.timeout))
        while result.get("state") != "done":
            if time.monotonic() >= give_up:
                print(
                    f"ebbctl yield: no result from ebbd for VM {args.vm!r} within "
                    f"{args.timeout:g} s",
                    file=sys.stderr,
                )
                return EXIT_FAILURE
            pause.wait(POLL_INTERVAL_S)
            result = client.request("yield", vm=args.vm, poll=True)
    except ControlError as err:
        print(f"ebbctl yield: {err}", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_yield(result))
    if result.get("error"):
        print(f"ebbctl yield: {result['error']}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _mib(kib: Any) -> str:
    return "?" if kib is None else f"{int(kib) / 1024:.0f} MiB"


def format_yield(result: Dict[str, Any]) -> str:
    """The result for people: what was asked, what the agent says, what the host measured."""
    vm = result.get("vm")
    lines = [f"{vm}: asked {_mib(result.get('asked_kib'))}"]
    if result.get("agent_freed_kib") is not None:
        answered = result.get("answered_after_s")
        lines.append(
            f"  agent: freed {_mib(result.get('agent_freed_kib'))} "
            f"({result.get('stopped')}"
            f"{': ' + str(result['agent_reason']) if result.get('agent_reason') else ''})"
            f"{f', answered after {answered:.1f} s' if answered is not None else ''}"
        )
    else:
        lines.append("  agent: no answer")
    before, after = result.get("rss_before_kib"), result.get("rss_after_kib")
    if after is not None or before is not None:
        lines.append(
            f"  host: QEMU RSS {_mib(before)} -> {_mib(after)}: "
            f"{_mib(result.get('returned_kib'))} back"
            " (lowest after the answer, once it stopped falling)"
        )
    lines.append(f"  took {float(result.get('elapsed_s') or 0):.1f} s")
    return "\n".join(lines) + "\n"
