"""``ebbctl lab``: a lab of real VMs under the local libvirtd (see docs/lab.md).

``lab up`` boots guests from the host's kernel and root file system with
``ebb-agent`` running in each, ``lab status`` lists them, ``lab run`` runs a
command inside one, ``lab workload`` starts the memory-touching workload, and
``lab down`` removes them and their files.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, List

from ebb.lab.domain import DEFAULT_TB_CACHE_MIB
from ebb.lab.errors import LabError
from ebb.lab.manager import (
    DEFAULT_AGENT_ARGS,
    DEFAULT_MEMORY_MIB,
    DEFAULT_PREFIX,
    DEFAULT_STATE_DIR,
    DEFAULT_URI,
    Lab,
    LabSettings,
)


def _tb_cache(text: str) -> int:
    """``--tb-cache``: a MiB count, 0 for QEMU's default; QEMU needs at least 1 MiB."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of MiB") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value}: must be 0 (QEMU's default) or more")
    return value


def _lab(args: argparse.Namespace) -> Lab:
    return Lab(LabSettings(state_dir=Path(args.state_dir), uri=args.uri, prefix=args.prefix))


def _progress(message: str) -> None:
    print(f"lab: {message}", file=sys.stderr, flush=True)


def _fail(err: LabError) -> int:
    print(f"ebbctl lab: {err}", file=sys.stderr)
    return 1


def cmd_up(args: argparse.Namespace) -> int:
    started = time.monotonic()
    try:
        guests = _lab(args).up(
            count=args.guests, memory_mib=args.memory, kvm=args.kvm, run=args.run,
            agent=not args.no_agent, agent_args=args.agent_args, timeout_s=args.timeout,
            floor_mib=args.floor, tb_cache_mib=args.tb_cache,
            free_page_reporting=args.free_page_reporting, progress=_progress,
        )
    except LabError as err:
        return _fail(err)
    _progress(f"{len(guests)} guest(s) up in {time.monotonic() - started:.1f} s")
    for guest in guests:
        print(f"{guest.name}\tchannel {guest.channel_socket}\tconsole {guest.console_log}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    try:
        removed = _lab(args).down()
    except LabError as err:
        return _fail(err)
    if removed:
        _progress("removed " + ", ".join(removed))
    else:
        _progress(f"no lab guests named {args.prefix}-* in {args.state_dir}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    try:
        guests = _lab(args).status()
    except LabError as err:
        return _fail(err)
    if args.json:
        rows = [{
            "name": g.name, "state": g.state, "domain_type": g.domain_type,
            "memory_mib": g.memory_mib, "balloon_actual_kib": g.balloon_actual_kib,
            "agent_running": g.agent_running, "uptime_s": g.uptime_s,
            "free_page_reporting": g.free_page_reporting,
            "channel_socket": str(g.channel_socket), "share_dir": str(g.share_dir),
            "console_log": str(g.console_log),
        } for g in guests]
        print(json.dumps(rows, indent=2))
        return 0
    if not guests:
        print(f"no lab guests named {args.prefix}-* (ebbctl lab up --guests 2)")
        return 0
    print(f"{'NAME':<14} {'STATE':<9} {'TYPE':<5} {'MAX':>8} {'BALLOON':>9} {'FPR':<4} "
          f"{'AGENT':<8} UPTIME")
    for g in guests:
        balloon = f"{g.balloon_actual_kib // 1024} MiB" if g.balloon_actual_kib else "-"
        fpr = {True: "on", False: "off", None: "-"}[g.free_page_reporting]
        agent = {True: "running", False: "stopped", None: "-"}[g.agent_running]
        uptime = f"{g.uptime_s:.0f} s" if g.uptime_s is not None else "-"
        print(f"{g.name:<14} {g.state:<9} {g.domain_type:<5} {g.memory_mib:>4} MiB "
              f"{balloon:>9} {fpr:<4} {agent:<8} {uptime}")
    return 0


def _command(args: argparse.Namespace) -> List[str]:
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    return argv


def cmd_run(args: argparse.Namespace) -> int:
    argv = _command(args)
    if not argv:
        print("ebbctl lab run: no command (ebbctl lab run VM -- CMD ARGS...)", file=sys.stderr)
        return 2
    shell = _lab(args).shell(args.vm)
    try:
        if args.detach:
            job = shell.spawn(argv)
            print(f"started {job.job_id} (pid {job.pid} in {args.vm}); output in "
                  f"{shell.out_dir}/{job.job_id}.out")
            return 0
        result = shell.run(argv, timeout_s=args.timeout)
    except LabError as err:
        return _fail(err)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.returncode if result.returncode is not None else 1


def cmd_workload(args: argparse.Namespace) -> int:
    argv = ["memknobs", "--pattern", args.pattern, "--interval", str(args.interval)]
    if args.once:
        argv.append("--once")
    shell = _lab(args).shell(args.vm)
    try:
        if args.wait:
            result = shell.run(argv, timeout_s=args.timeout)
            sys.stdout.write(result.stdout)
            sys.stderr.write(result.stderr)
            return result.returncode if result.returncode is not None else 1
        job = shell.spawn(argv)
    except LabError as err:
        return _fail(err)
    print(f"memknobs started in {args.vm} (job {job.job_id}, pid {job.pid}); "
          f"rates in {shell.out_dir}/{job.job_id}.out; stop it with: "
          f"ebbctl lab run {args.vm} -- kill -s TERM -- -{job.pid}")
    return 0


def cmd_console(args: argparse.Namespace) -> int:
    lab = _lab(args)
    path = lab.guest_dir(args.vm) / "console.log"
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as err:
        print(f"ebbctl lab console: cannot read {path}: {err.strerror}", file=sys.stderr)
        return 1
    print("\n".join(lines[-args.lines:]))
    return 0


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``ebbctl lab ...`` to ``ebbctl``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR), metavar="DIR",
                        help=f"where the lab keeps its files (default {DEFAULT_STATE_DIR})")
    common.add_argument("--uri", default=DEFAULT_URI,
                        help=f"libvirt connection (default {DEFAULT_URI})")
    common.add_argument("--prefix", default=DEFAULT_PREFIX,
                        help=f"guest names are PREFIX-1, PREFIX-2, ... (default {DEFAULT_PREFIX})")

    lab = sub.add_parser("lab", help="a lab of real VMs running ebb-agent (docs/lab.md)",
                         description=__doc__)
    lab_sub = lab.add_subparsers(dest="lab_command", metavar="LAB_COMMAND")
    lab_sub.required = True

    up = lab_sub.add_parser("up", parents=[common], help="define and boot lab guests")
    up.add_argument("--guests", type=int, default=2, metavar="N", help="how many (default 2)")
    up.add_argument("--memory", type=int, default=DEFAULT_MEMORY_MIB, metavar="MIB",
                    help=f"maximum memory of each guest (default {DEFAULT_MEMORY_MIB})")
    up.add_argument("--floor", type=int, metavar="MIB",
                    help="ebbd never balloons a guest below this (<ebb:vm floor_mib>; "
                    "default 3/8 of --memory, at least 128)")
    kvm = up.add_mutually_exclusive_group()
    kvm.add_argument("--kvm", dest="kvm", action="store_true", default=None,
                     help="use KVM (default: only when /dev/kvm works and the CPU has vmx/svm)")
    kvm.add_argument("--no-kvm", dest="kvm", action="store_false",
                     help="use software emulation (domain type qemu)")
    up.add_argument("--tb-cache", type=_tb_cache, default=DEFAULT_TB_CACHE_MIB, metavar="MIB",
                    help="software emulation only: QEMU's translated-code cache per guest, "
                    "host memory no balloon can take back (default "
                    f"{DEFAULT_TB_CACHE_MIB}; 0: QEMU's default, 1 GiB, filled as guest code runs)")
    up.add_argument("--no-free-page-reporting", dest="free_page_reporting",
                    action="store_false", default=True,
                    help="give the guests' balloons no free page reporting: memory a guest "
                    "frees stays on the host until a balloon takes it (the balloon-only "
                    "baseline; default: on)")
    up.add_argument("--run", metavar="CMD",
                    help='a command each guest starts at boot, e.g. "memknobs --pattern 200M:60s"')
    up.add_argument("--no-agent", action="store_true", help="do not start ebb-agent in guests")
    up.add_argument("--agent-args", default=DEFAULT_AGENT_ARGS, metavar="ARGS",
                    help=f'options for ebb-agent in the guests (default "{DEFAULT_AGENT_ARGS}")')
    up.add_argument("--timeout", type=float, default=240.0, metavar="S",
                    help="give up when the guests are not ready after this long (default 240)")
    up.set_defaults(func=cmd_up)

    down = lab_sub.add_parser("down", parents=[common], help="remove lab guests and their files")
    down.set_defaults(func=cmd_down)

    status = lab_sub.add_parser("status", parents=[common], help="list lab guests")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)

    run = lab_sub.add_parser("run", parents=[common], help="run a command inside a lab guest",
                             usage="ebbctl lab run [options] VM -- CMD [ARGS...]")
    run.add_argument("vm")
    run.add_argument("--timeout", type=float, default=60.0, metavar="S",
                     help="kill the command after this long (default 60)")
    run.add_argument("--detach", action="store_true",
                     help="start the command and return (output stays in the guest's share)")
    run.add_argument("argv", nargs=argparse.REMAINDER)
    run.set_defaults(func=cmd_run)

    workload = lab_sub.add_parser(
        "workload", parents=[common], help="start memknobs (memory-touching workload) in a guest")
    workload.add_argument("vm")
    workload.add_argument("--pattern", default="200M:60s", metavar="PATTERN",
                          help='sizes over time, e.g. "100M:30s,300M:60s" (docs/lab.md)')
    workload.add_argument("--interval", type=float, default=1.0, metavar="S",
                          help="seconds between rate lines (default 1)")
    workload.add_argument("--once", action="store_true",
                          help="stop after the pattern instead of repeating it")
    workload.add_argument("--wait", action="store_true",
                          help="wait for it to end (with --once) and print its output")
    workload.add_argument("--timeout", type=float, default=600.0, metavar="S",
                          help="with --wait: kill it after this long (default 600)")
    workload.set_defaults(func=cmd_workload)

    console = lab_sub.add_parser("console", parents=[common],
                                 help="show the end of a guest's serial console log")
    console.add_argument("vm")
    console.add_argument("-n", "--lines", type=int, default=40)
    console.set_defaults(func=cmd_console)
