"""``ebbctl`` subcommands that talk to a running ebbd over its control socket.

``status [--json]``, ``explain VM [--json]`` (anyone who can connect), and
``reload``, ``pause``, ``resume``, ``set-floor VM MIB`` (root or group ``ebb``).
Exit status: 0 on success, 1 when ebbd cannot be reached or refuses, 2 for a
bad argument.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from ebb.host.control import ControlClient, ControlError
from ebb.host.fmt import duration
from ebb.host.hypervisor.domain_xml import FREE_PAGE_REPORTING_XML

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add this group's subcommands to ``ebbctl``."""
    status = sub.add_parser(
        "status",
        help="what ebbd sees and does: host memory, KSM, and a row per VM",
        description="Show ebbd's view: host memory and pressure, KSM, and for every VM its "
        "balloon (current/target/max), floor, agent, offer/need and last action.",
    )
    status.add_argument("--json", action="store_true", help="print the status document as JSON")
    status.set_defaults(func=cmd_status)

    explain = sub.add_parser(
        "explain",
        help="the last decisions about one VM, with rule, reason and inputs",
        description="Show ebbd's recent decisions about VM: what it decided, which rule "
        "decided it, why, and the figures it used.",
    )
    explain.add_argument("vm", metavar="VM", help="domain name")
    explain.add_argument("--json", action="store_true", help="print as JSON")
    explain.add_argument("-n", "--last", type=int, default=10, metavar="N",
                         help="how many decisions to show (default 10)")
    explain.set_defaults(func=cmd_explain)

    reload_ = sub.add_parser(
        "reload", help="re-read the config and the policies (like SIGHUP)",
        description="Re-read /etc/ebb/ebbd.toml and the policy directory. A policy that "
        "does not load is reported and the last good one stays in force.",
    )
    reload_.set_defaults(func=cmd_reload)

    pause = sub.add_parser(
        "pause", help="stop changing balloons and KSM (decisions still logged)",
        description="Stop applying anything until `ebbctl resume`; ebbd keeps reading "
        "and reporting.",
    )
    pause.set_defaults(func=cmd_simple, command_name="pause")

    resume = sub.add_parser("resume", help="apply decisions again after `ebbctl pause`")
    resume.set_defaults(func=cmd_simple, command_name="resume")

    floor = sub.add_parser(
        "set-floor",
        help="set a VM's floor (MiB it always keeps) until ebbd restarts",
        description="Override VM's floor: the governor never leaves it with less than MIB "
        "MiB. 'default' removes the override. Lasts until ebbd restarts; to keep it, set "
        "floor_mib in the VM's <ebb:vm> metadata (docs/vm-xml.md).",
    )
    floor.add_argument("vm", metavar="VM", help="domain name")
    floor.add_argument("mib", metavar="MIB", help="floor in MiB, or 'default'")
    floor.set_defaults(func=cmd_set_floor)


def _client(args: argparse.Namespace) -> ControlClient:
    return ControlClient(args.socket)


def _fail(command: str, err: Exception) -> int:
    print(f"ebbctl {command}: {err}", file=sys.stderr)
    return EXIT_FAILURE


# --- status ------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    """``ebbctl status``."""
    try:
        status = _client(args).request("status")
    except ControlError as err:
        return _fail("status", err)
    if args.json:
        json.dump(status, sys.stdout, indent=2, sort_keys=False)
        sys.stdout.write("\n")
        return EXIT_OK
    sys.stdout.write(format_status(status))
    return EXIT_OK


def _mib(kib: Any) -> str:
    if kib is None:
        return "-"
    return f"{int(kib) / 1024:.0f}"


def _gib(kib: Any) -> str:
    if kib is None:
        return "?"
    return f"{int(kib) / (1024 * 1024):.1f} GiB"


def _age(seconds: Any) -> str:
    if seconds is None:
        return "-"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def format_status(status: Dict[str, Any], now: Optional[float] = None) -> str:
    """The human form of ``ebbctl status``."""
    now = time.time() if now is None else now
    daemon = status.get("daemon") or {}
    host = status.get("host") or {}
    lines: List[str] = []
    tick = daemon.get("tick") or {}
    libvirt = daemon.get("libvirt") or {}
    policy = daemon.get("policy") or {}
    flags = []
    if daemon.get("paused"):
        flags.append("PAUSED")
    if daemon.get("dry_run"):
        flags.append("DRY RUN")
    last_ms = tick.get("last_duration_ms")
    lines.append(
        f"ebbd {daemon.get('version', '?')} pid {daemon.get('pid', '?')}, "
        f"up {duration(daemon.get('uptime_s'))}, "
        f"tick {tick.get('count', 0)} every {tick.get('interval_s', '?')} s"
        + (f" (last took {float(last_ms):.0f} ms)" if last_ms is not None else "")
        + (f"  [{', '.join(flags)}]" if flags else "")
    )
    lines.append(
        f"libvirt {libvirt.get('uri', '?')}: "
        f"{'connected' if libvirt.get('connected') else 'NOT CONNECTED (retrying)'}; "
        f"policy {policy.get('dir', '?')}"
    )
    for error in policy.get("errors") or []:
        lines.append(f"  policy error: {error}")
    if policy.get("last_error"):
        lines.append(f"  policy failed last tick: {policy['last_error']}")
    total = host.get("mem_total_kib")
    freeable = host.get("freeable_kib")
    share = f" ({100 * freeable / total:.0f}%)" if total and freeable is not None else ""
    psi = host.get("psi_some_avg10")
    lines.append(
        f"host: {_gib(total)} total, {_gib(freeable)} freeable{share}, "
        f"{_gib(host.get('mem_available_kib'))} available; swap "
        f"{_gib(host.get('swap_used_kib'))}/{_gib(host.get('swap_total_kib'))}, "
        f"in {float(host.get('swap_in_per_s') or 0):.0f}/s out "
        f"{float(host.get('swap_out_per_s') or 0):.0f}/s; PSI some "
        f"{'-' if psi is None else f'{float(psi):.1f}%'}"
    )
    ksm = host.get("ksm") or {}
    if ksm.get("run") is not None:
        lines.append(
            f"KSM: run={ksm.get('run')} pages_to_scan={ksm.get('pages_to_scan')} "
            f"sleep={ksm.get('sleep_millisecs')} ms, shared={ksm.get('pages_shared')} "
            f"sharing={ksm.get('pages_sharing')} pages"
        )
    else:
        lines.append("KSM: not available")
    vms = sorted(status.get("vms") or [], key=lambda v: str(v.get("name", "")))
    lines.append("")
    if not vms:
        lines.append("no running VMs")
        return "\n".join(lines) + "\n"
    header = ("VM", "STATE", "CUR", "TARGET", "MAX", "FLOOR", "RSS", "FPR", "AGENT", "AGE",
              "OFFER", "NEED", "COOP", "LAST ACTION")
    rows: List[Sequence[str]] = [header]
    for vm in vms:
        agent = vm.get("agent") or {}
        if agent.get("cut_off_until") and float(agent["cut_off_until"]) > now:
            agent_text = "cut-off"
        elif agent.get("connected"):
            agent_text = "yes"
        else:
            agent_text = "no"
        need = _mib(vm.get("need_kib"))
        if vm.get("need_urgency"):
            need += f" ({vm['need_urgency']})"
        action = vm.get("last_action")
        if action:
            action_text = (
                f"{_age(now - float(action.get('at') or now))} ago {action.get('kind')} "
                f"-> {_mib(action.get('target_kib'))} [{action.get('rule')}] "
                f"{action.get('reason', '')}"
            )
        else:
            action_text = "-"
        rows.append((
            str(vm.get("name")) + ("" if vm.get("managed") else " (unmanaged)"),
            str(vm.get("state", "?")),
            _mib(vm.get("balloon_cur_kib")),
            _mib(vm.get("balloon_target_kib")),
            _mib(vm.get("balloon_max_kib")),
            _mib(vm.get("floor_kib")),
            _mib(vm.get("rss_kib")),
            _on_off(vm.get("free_page_reporting")),
            agent_text,
            _age(agent.get("last_report_age_s")),
            _mib(vm.get("offer_kib")),
            need,
            str(vm.get("cooperation", "?")),
            action_text,
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    for row in rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    lines.append("(memory in MiB; RSS: the VM's QEMU resident memory on the host; "
                 "FPR: free page reporting)")
    without = [str(vm.get("name")) for vm in vms
               if vm.get("free_page_reporting") is False and vm.get("state") == "running"]
    if without:
        lines.append(
            f"free page reporting is off for {', '.join(without)}: memory they free stays "
            f"on the host. Add {FREE_PAGE_REPORTING_XML} to their XML; it takes effect after "
            "the VM is restarted (docs/vm-xml.md)"
        )
    return "\n".join(lines) + "\n"


def _on_off(value: Any) -> str:
    if value is None:
        return "-"
    return "on" if value else "off"


def _balloon_features(row: Dict[str, Any]) -> str:
    """``free page reporting on, autodeflate off, stats every 2 s, QEMU RSS 316 MiB``."""
    period = row.get("stats_period_s")
    return (
        f"free page reporting {_on_off(row.get('free_page_reporting'))}, "
        f"autodeflate {_on_off(row.get('autodeflate'))}, "
        f"stats {f'every {period} s' if period else 'off'}, "
        f"QEMU RSS {_mib(row.get('rss_kib'))} MiB"
    )


# --- explain -----------------------------------------------------------------------


def cmd_explain(args: argparse.Namespace) -> int:
    """``ebbctl explain VM``."""
    try:
        result = _client(args).request("explain", vm=args.vm)
    except ControlError as err:
        return _fail("explain", err)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return EXIT_OK
    sys.stdout.write(format_explain(result, last=args.last))
    return EXIT_OK


def format_explain(result: Dict[str, Any], last: int = 10, now: Optional[float] = None) -> str:
    """The human form of ``ebbctl explain``."""
    now = time.time() if now is None else now
    lines = []
    vm = result.get("vm")
    row = result.get("status") or {}
    if row:
        agent = row.get("agent") or {}
        lines.append(
            f"{vm}: balloon {_mib(row.get('balloon_cur_kib'))} MiB of "
            f"{_mib(row.get('balloon_max_kib'))} MiB, floor {_mib(row.get('floor_kib'))} MiB, "
            f"agent {'connected' if agent.get('connected') else 'not connected'}, "
            f"cooperation {row.get('cooperation')}"
        )
        if "free_page_reporting" in row:
            lines.append(f"  balloon: {_balloon_features(row)}")
    else:
        lines.append(f"{vm}: not running")
    if result.get("paused"):
        lines.append("ebbd is paused: nothing is decided or applied")
    if result.get("dry_run"):
        lines.append("ebbd runs in dry-run mode: decisions are not applied")
    decisions = (result.get("decisions") or [])[-max(1, last):]
    if not decisions:
        lines.append("no decisions yet")
    for entry in reversed(decisions):
        at = float(entry.get("last_at") or entry.get("at") or now)
        repeats = int(entry.get("repeats") or 1)
        target = entry.get("target_kib")
        outcome = entry.get("outcome")
        lines.append(
            f"- {_age(now - at)} ago (tick {entry.get('tick')}"
            f"{f', x{repeats}' if repeats > 1 else ''}): {entry.get('kind')}"
            f"{f' -> {_mib(target)} MiB' if target is not None else ''}"
            f" [{entry.get('rule')}]{f' {outcome}' if outcome else ''}"
        )
        lines.append(f"    why: {entry.get('reason')}")
        if entry.get("detail"):
            lines.append(f"    controller: {entry['detail']}")
        if entry.get("policy_error"):
            lines.append(f"    policy error that tick: {entry['policy_error']}")
        inputs = entry.get("inputs") or {}
        if inputs:
            shown = ", ".join(f"{k}={v}" for k, v in inputs.items() if v is not None)
            lines.append(f"    inputs: {shown}")
    return "\n".join(lines) + "\n"


# --- changes -----------------------------------------------------------------------


def cmd_reload(args: argparse.Namespace) -> int:
    """``ebbctl reload``."""
    try:
        result = _client(args).request("reload")
    except ControlError as err:
        return _fail("reload", err)
    result = result or {}
    print(f"config: {result.get('config')}; policy: {result.get('policy')}")
    for error in result.get("policy_errors") or []:
        print(f"  {error}")
    for key in result.get("restart_needed") or []:
        print(f"  {key} changed: takes effect when ebbd restarts")
    return EXIT_FAILURE if result.get("policy_errors") else EXIT_OK


def cmd_simple(args: argparse.Namespace) -> int:
    """``ebbctl pause`` / ``ebbctl resume``."""
    name = args.command_name
    try:
        _client(args).request(name)
    except ControlError as err:
        return _fail(name, err)
    print("paused: ebbd decides but changes nothing" if name == "pause" else "resumed")
    return EXIT_OK


def cmd_set_floor(args: argparse.Namespace) -> int:
    """``ebbctl set-floor VM MIB``."""
    floor_mib: Optional[float]
    if args.mib.lower() in ("default", "none", "-"):
        floor_mib = None
    else:
        try:
            floor_mib = float(args.mib)
        except ValueError:
            print(f"ebbctl set-floor: MIB must be a number of MiB or 'default', got {args.mib!r}",
                  file=sys.stderr)
            return EXIT_USAGE
        if floor_mib < 0:
            print("ebbctl set-floor: MIB must not be negative", file=sys.stderr)
            return EXIT_USAGE
    try:
        result = _client(args).request("set-floor", vm=args.vm, floor_mib=floor_mib)
    except ControlError as err:
        return _fail("set-floor", err)
    if floor_mib is None:
        print(f"{args.vm}: floor override removed")
    else:
        print(f"{args.vm}: floor {floor_mib:g} MiB ({(result or {}).get('note', '')})")
    return EXIT_OK
