"""``ebbctl top``: a live view of ebbd, refreshed every second.

It draws the ``ebbctl status --json`` document (docs/contracts: daemon, host,
vms) with rich: a header line for the daemon, two lines for host memory,
pressure and KSM, and one row per VM. Everything fits an 80-column terminal;
long reasons are cut with an ellipsis. ``q`` or Ctrl-C leaves and gives the
terminal back as it was.
"""

from __future__ import annotations

import io
import logging
import os
import select
import sys
import termios
import time
import tty
from typing import Any, Callable, Dict, List, Mapping, Optional, TextIO

from ebb.host.fmt import duration
from ebb.host.kinds import ActionKind, GuestState
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

LOG = logging.getLogger(__name__)

Status = Mapping[str, Any]
StatusSource = Callable[[], Status]

DEFAULT_WIDTH = 80
KIB_PER_MIB = 1024
KIB_PER_GIB = 1024 * 1024


# -- formatting helpers ---------------------------------------------------


def _gib(kib: Any) -> str:
    if not isinstance(kib, (int, float)):
        return "-"
    return f"{kib / KIB_PER_GIB:.1f}G"


def _mib(kib: Any) -> str:
    if not isinstance(kib, (int, float)):
        return "-"
    return f"{kib / KIB_PER_MIB:.0f}"


def _num(value: Any, fmt: str = "{:.1f}") -> str:
    if not isinstance(value, (int, float)):
        return "-"
    return fmt.format(value)


def _age(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return ""
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 600:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.0f}m"


# -- the frame ------------------------------------------------------------


def _line(width: int, *parts: Any) -> Text:
    """Join ``parts`` (str or (str, style)) into one line cut to ``width`` columns."""
    text = Text(no_wrap=True, overflow="ellipsis")
    for part in parts:
        if isinstance(part, tuple):
            text.append(part[0], style=part[1])
        else:
            text.append(part)
    text.truncate(width, overflow="ellipsis")
    return text


def _header(status: Status, width: int) -> Text:
    daemon = status.get("daemon") or {}
    tick = daemon.get("tick") or {}
    policy = daemon.get("policy") or {}
    parts: List[Any] = [
        ("ebbd", "bold"),
        f" {daemon.get('version', '?')} pid {daemon.get('pid', '?')}"
        f" up {duration(daemon.get('uptime_s'))}"
        f"  tick {tick.get('count', '?')} /{_num(tick.get('interval_s'))}s"
        f" {_num(tick.get('last_duration_ms'))}ms  ",
    ]
    errors = policy.get("errors") or []
    if errors:
        parts.append((f"policy: {len(errors)} error(s)", "bold red"))
    else:
        parts.append(("policy ok", "green"))
    if daemon.get("paused"):
        parts.append(("  PAUSED", "bold yellow"))
    if daemon.get("dry_run"):
        parts.append(("  DRY-RUN", "bold yellow"))
    libvirt = daemon.get("libvirt") or {}
    if libvirt and not libvirt.get("connected", True):
        parts.append(("  libvirt down", "bold red"))
    return _line(width, *parts)


def _host_lines(status: Status, width: int) -> List[Text]:
    host = status.get("host") or {}
    total = host.get("mem_total_kib")
    freeable = host.get("freeable_kib")
    share = ""
    share_style = ""
    if isinstance(total, (int, float)) and isinstance(freeable, (int, float)) and total > 0:
        percent = 100.0 * freeable / total
        share = f" ({percent:.0f}%)"
        # The article's policies start ballooning under 20 % freeable.
        share_style = "bold red" if percent < 20 else ""
    mem = _line(
        width,
        ("mem  ", "bold"),
        f"total {_gib(total)}  free {_gib(host.get('mem_free_kib'))}  freeable ",
        (f"{_gib(freeable)}{share}", share_style),
        f"  avail {_gib(host.get('mem_available_kib'))}"
        f"  psi {_num(host.get('psi_some_avg10'), '{:.2f}')}",
    )
    swap = _line(
        width,
        ("swap ", "bold"),
        f"used {_gib(host.get('swap_used_kib'))} of {_gib(host.get('swap_total_kib'))}"
        f"  in {_num(host.get('swap_in_per_s'))}/s  out {_num(host.get('swap_out_per_s'))}/s",
    )
    ksm = host.get("ksm") or {}
    run = ksm.get("run")
    state = "running" if run == 1 else "stopped" if run == 0 else f"run={run}"
    sharing = ksm.get("pages_sharing")
    saved = ""
    if isinstance(sharing, int):
        # pages_sharing counts the pages deduplicated away, 4 KiB each on x86.
        saved = f" (~{sharing * 4 // KIB_PER_MIB} MiB saved)"
    ksm_line = _line(
        width,
        ("ksm  ", "bold"),
        (state, "green" if run == 1 else ""),
        f"  {ksm.get('pages_to_scan', '-')} pages/{ksm.get('sleep_millisecs', '-')}ms"
        f"  shared {ksm.get('pages_shared', '-')}"
        f"  sharing {sharing if sharing is not None else '-'}{saved}",
    )
    return [mem, swap, ksm_line]


_AGENT_STYLE: Dict[str, str] = {
    GuestState.OK: "green",
    GuestState.NO_AGENT: "dim",
    GuestState.STALE: "yellow",
    GuestState.BACKOFF: "yellow",
    GuestState.STUCK: "red",
    GuestState.UNCOOPERATIVE: "bold red",
}

# Fixed columns of a VM row: name, cur, target, max, rss, agent, offer, need, psi.
_VM_COLUMNS = "{:<14} {:>6} {:>6} {:>6} {:>6} {:<13} {:>6} {:>6} {:>5}"


def _cell(text: str, width: int, align: str = "<") -> str:
    if len(text) > width:
        text = text[: width - 1] + "\u2026"
    return f"{text:{align}{width}}"


def _vm_rows(vm: Mapping[str, Any], width: int, now: float) -> List[Text]:
    agent = vm.get("agent") or {}
    cooperation = str(vm.get("cooperation") or (
        GuestState.OK if agent.get("connected") else GuestState.NO_AGENT))
    age = _age(agent.get("last_report_age_s")) if agent.get("connected") else ""
    agent_text = _cell(f"{cooperation} {age}".strip(), 13)
    need = vm.get("need_kib")
    urgency = vm.get("need_urgency")
    need_text = _mib(need)
    need_style = ""
    if isinstance(need, (int, float)) and need > 0:
        urgent = urgency in ("high", "critical")
        need_text += "!" if urgent else ""
        need_style = "bold red" if urgent else "yellow"
    row = _line(
        width,
        (_cell(str(vm.get("name", "?")), 14), "" if vm.get("managed", True) else "dim"),
        " ",
        _cell(_mib(vm.get("balloon_cur_kib")), 6, ">"),
        " ",
        _cell(_mib(vm.get("balloon_target_kib")), 6, ">"),
        " ",
        _cell(_mib(vm.get("balloon_max_kib")), 6, ">"),
        " ",
        _cell(_mib(vm.get("rss_kib")), 6, ">"),
        " ",
        (agent_text, _AGENT_STYLE.get(cooperation, "")),
        " ",
        _cell(_mib(vm.get("offer_kib")), 6, ">"),
        " ",
        (_cell(need_text, 6, ">"), need_style),
        " ",
        _cell(_num(vm.get("psi_some_avg10")), 5, ">"),
    )
    # Free page reporting off is worth a look (memory the guest frees stays on the host).
    fpr_off: List[Any] = (["  \u2514 ", ("fpr off", "yellow"), " \u00b7 "]
                          if vm.get("free_page_reporting") is False else ["  \u2514 "])
    action = vm.get("last_action")
    if not action:
        idle = "no action yet" if vm.get("managed", True) else "not managed by ebb"
        return [row, _line(width, *fpr_off, (idle, "dim"))]
    kind = str(action.get("kind", "?"))
    parts: List[Any] = [*fpr_off, (kind, "magenta" if kind == ActionKind.INFLATE else "cyan")]
    target = action.get("target_kib")
    if isinstance(target, (int, float)):
        parts.append(f" to {_mib(target)} MiB")
    at = action.get("at")
    if isinstance(at, (int, float)):
        parts.append((f" {_age(max(0.0, now - at))} ago", "dim"))
    rule = action.get("rule")
    if rule:
        parts.append((f" [{rule}]", "bold"))
    reason = action.get("reason")
    if reason:
        parts.append(f" {reason}")
    return [row, _line(width, *parts)]


def render(
    status: Status, width: int = DEFAULT_WIDTH, now: Optional[float] = None
) -> RenderableType:
    """One frame of ``ebbctl top`` for the status document ``status``, ``width`` columns wide."""
    now = time.time() if now is None else now
    lines: List[Text] = [_header(status, width), *_host_lines(status, width)]
    errors = ((status.get("daemon") or {}).get("policy") or {}).get("errors") or []
    for error in errors[:2]:
        lines.append(_line(width, ("policy error: ", "bold red"), str(error)))
    lines.append(Text(""))
    heading = _VM_COLUMNS.format("VM", "cur", "target", "max", "rss", "agent", "offer", "need",
                                 "psi")
    lines.append(_line(width, (heading, "bold"), (" MiB", "dim")))
    vms = sorted(status.get("vms") or [], key=lambda v: str(v.get("name", "")))
    for vm in vms:
        lines.extend(_vm_rows(vm, width, now))
    if not vms:
        lines.append(_line(width, ("no VMs", "dim")))
    return Group(*lines)


def render_error(message: str) -> RenderableType:
    """The frame shown while the daemon cannot be reached."""
    return Group(
        Text("ebbd: not reachable", style="bold red"),
        Text(message, overflow="fold"),
        Text("retrying every second; q to quit", style="dim"),
    )


def render_text(
    status: Status, width: int = DEFAULT_WIDTH, color: bool = False, now: Optional[float] = None
) -> str:
    """The frame as text ``width`` columns wide (``--once``, tests)."""
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        width=width,
        force_terminal=color,
        color_system="standard" if color else None,
        soft_wrap=False,
    )
    console.print(render(status, width=width, now=now), crop=True)
    return buffer.getvalue()


# -- the live loop ---------------------------------------------------------


def _frame(fetch_status: StatusSource, width: int) -> RenderableType:
    try:
        return render(fetch_status(), width=width)
    except Exception as err:  # any failure to reach the daemon is shown, not fatal
        return render_error(str(err))


class _CbreakStdin:
    """Puts a terminal stdin in cbreak mode (keys without Enter, Ctrl-C still a signal)."""

    def __init__(self, stream: TextIO) -> None:
        self._fd: Optional[int] = None
        self._saved: Optional[List[Any]] = None
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, io.UnsupportedOperation):
            return
        if os.isatty(fd):
            self._fd = fd

    def __enter__(self) -> _CbreakStdin:
        if self._fd is not None:
            self._saved = termios.tcgetattr(self._fd)
            tty.setcbreak(self._fd)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None and self._saved is not None:
            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)

    def wait_for_quit(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for a key; True when it was ``q``/``Q``."""
        if self._fd is None:
            time.sleep(timeout_s)  # not a terminal: nothing to read, just pace the refresh
            return False
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            ready, _, _ = select.select([self._fd], [], [], remaining)
            if not ready:
                return False
            key = os.read(self._fd, 32)
            if not key or any(ch in key for ch in (b"q", b"Q")):
                return True


def run_top(
    fetch_status: StatusSource,
    interval_s: float = 1.0,
    console: Optional[Console] = None,
    stdin: Optional[TextIO] = None,
) -> int:
    """Show the live view until ``q`` or Ctrl-C; returns the exit code (0)."""
    console = console or Console()
    keys = _CbreakStdin(stdin or sys.stdin)
    try:
        with keys, Live(
            _frame(fetch_status, console.width),
            console=console,
            auto_refresh=False,
            screen=console.is_terminal,
            transient=False,
        ) as live:
            while not keys.wait_for_quit(interval_s):
                live.update(_frame(fetch_status, console.width), refresh=True)
    except KeyboardInterrupt:
        pass
    return 0
