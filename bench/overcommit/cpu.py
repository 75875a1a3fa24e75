"""CPU used during a run: the host's, ebbd's, each guest's QEMU and each guest's agent.

Monitoring is not free under TCG: the agent's Python runs emulated, and every
guest's vCPU is a host thread competing for the host's few cores. These figures
let a run say what ebbd and its agents cost next to the workload, instead of
guessing. All are measured over the workload window only.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

from ebb.host.collectors import find_kernel_thread
from ebb.lab.guestcmd import GuestShell

#: /proc/PID/stat counts in USER_HZ ticks, the same in the guests (same kernel).
CLK_TCK = os.sysconf("SC_CLK_TCK")
QEMU_RUN_DIR = Path("/run/libvirt/qemu")

# utime+stime of every ebb-agent process in the guest, in ticks. The pattern's
# brackets keep this shell and its grep from matching themselves.
_AGENT_TICKS = ("t=0; for f in /proc/[0-9]*/cmdline; do "
                "if grep -q 'ebb[.]guest[.]cli' \"$f\" 2>/dev/null; then "
                "set -- $(cat \"${f%/cmdline}/stat\" 2>/dev/null | sed 's/.*) //'); "
                "[ $# -ge 13 ] && t=$((t + ${12} + ${13})); fi; done; echo $t")


def host_cpu_ticks(proc: Path = Path("/proc")) -> Tuple[int, int]:
    """(busy, total) ticks over all CPUs since boot, from /proc/stat's ``cpu`` line."""
    fields = (proc / "stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def process_cpu_s(pid: int, proc: Path = Path("/proc")) -> Optional[float]:
    """User + system CPU seconds of a process (``None`` once it is gone)."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    after_comm = stat.rsplit(")", 1)[1].split()
    return (int(after_comm[11]) + int(after_comm[12])) / CLK_TCK


def others_pct(busy_ticks: int, span_s: float, known_pcts: Sequence[Optional[float]]) -> float:
    """Share of one core (%) the host was busy beyond the processes measured.

    ``busy_ticks``: the host's busy ticks over ``span_s`` (all CPUs, the
    hypervisor's steal included); ``known_pcts``: what the measured processes
    used, in shares of one core. What is left is everything else: the harness,
    the kernel's threads, someone's tests, another VM of the hypervisor. In a
    quiet run it is 0-10 % of a core; much more says the run was shared.
    """
    busy_pct = busy_ticks / CLK_TCK / max(span_s, 1e-6) * 100
    return round(max(0.0, busy_pct - sum(v for v in known_pcts if v is not None)), 1)


def ksmd_pid() -> Optional[int]:
    """KSM's kernel thread (``None`` on a kernel without KSM)."""
    return find_kernel_thread("/proc", "ksmd")


def qemu_pid(name: str, run_dir: Path = QEMU_RUN_DIR) -> Optional[int]:
    try:
        return int((run_dir / f"{name}.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def agent_cpu_s(shell: GuestShell) -> Optional[float]:
    """CPU seconds the guest's ebb-agent used since it started (``None``: unreadable)."""
    result = shell.run(["sh", "-c", _AGENT_TICKS], timeout_s=60.0)
    try:
        return int(result.stdout.strip().splitlines()[-1]) / CLK_TCK
    except (ValueError, IndexError):
        return None


@dataclass
class CpuMeter:
    """Readings at the workload's start, turned into shares at its end."""

    names: Sequence[str]
    ebbd_pid: Optional[int] = None
    _host: Tuple[int, int] = (0, 0)
    _procs: Dict[str, Optional[float]] = field(default_factory=dict)
    _agents: Dict[str, Optional[float]] = field(default_factory=dict)
    _ksmd: Optional[int] = None
    _procs_at: float = 0.0
    _agents_at: float = 0.0
    _end: Optional[Tuple[Tuple[int, int], Dict[str, Optional[float]], float]] = None

    def _read_procs(self) -> Dict[str, Optional[float]]:
        out: Dict[str, Optional[float]] = {}
        for name in self.names:
            pid = qemu_pid(name)
            out[f"qemu:{name}"] = process_cpu_s(pid) if pid else None
        if self.ebbd_pid is not None:
            out["ebbd"] = process_cpu_s(self.ebbd_pid)
        out["ksmd"] = process_cpu_s(self._ksmd) if self._ksmd is not None else None
        return out

    def start(self, shells: Sequence[GuestShell]) -> None:
        self._ksmd = ksmd_pid()
        self._agents_at = time.monotonic()
        self._agents = {sh.name: agent_cpu_s(sh) for sh in shells}
        self._procs_at = time.monotonic()
        self._host = host_cpu_ticks()
        self._procs = self._read_procs()

    def end(self) -> None:
        """Read the host and the processes now, at the workload's end (:meth:`stop`
        then only reads the agents, so ebbd may be stopped in between)."""
        self._end = (host_cpu_ticks(), self._read_procs(),
                     max(time.monotonic() - self._procs_at, 1e-6))

    def stop(self, shells: Sequence[GuestShell]) -> Dict[str, object]:
        """Shares of one core (%), except ``host_cpu_busy_pct``: of all the host's CPUs.

        The host and the processes are read at :meth:`end` (now if it was not
        called). The agents are read through the guests' shells, which takes a
        moment: their share is over the span between the two readings, not the
        workload's.
        """
        if self._end is None:
            self.end()
        assert self._end is not None
        (busy, total), procs, procs_s = self._end
        agents = {sh.name: agent_cpu_s(sh) for sh in shells}
        agents_s = max(time.monotonic() - self._agents_at, 1e-6)

        def pct(before: Optional[float], after: Optional[float],
                span_s: float = procs_s) -> Optional[float]:
            if before is None or after is None:
                return None
            return round((after - before) / span_s * 100, 2)

        qemu = [pct(self._procs.get(k), procs.get(k)) for k in procs if k.startswith("qemu:")]
        ebbd = pct(self._procs.get("ebbd"), procs.get("ebbd"))
        ksmd = pct(self._procs.get("ksmd"), procs.get("ksmd"))
        agent = {n: pct(self._agents.get(n), agents.get(n), agents_s) for n in agents}
        known_agents = [v for v in agent.values() if v is not None]
        out: Dict[str, object] = {
            "host_cpu_busy_pct": round((busy - self._host[0])
                                       / max(1, total - self._host[1]) * 100, 1),
            "qemu_cpu_pct": (round(sum(v for v in qemu if v is not None), 1)
                             if any(v is not None for v in qemu) else None),
            "ebbd_cpu_pct": ebbd,
            "ksmd_cpu_pct": ksmd,
            "others_cpu_pct": others_pct(busy - self._host[0], procs_s, [*qemu, ebbd, ksmd]),
            "agent_cpu_pct_mean": (round(sum(known_agents) / len(known_agents), 2)
                                   if known_agents else None),
            "agent_cpu_pct": agent,
        }
        return out
