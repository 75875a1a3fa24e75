"""One configuration of one scenario on freshly booted guests, measured.

A :class:`Scenario` says which guests to boot (memory, disks), how to prepare
them, what workload each runs and how to read its output. :func:`run_config`
boots the guests, shrinks the host to the scenario's budget, starts ebbd with
the configuration's policy (none: no ebbd), runs the workloads for the same
duration, samples the host and the balloons every second, and returns the
figures: host swap operations (/proc/vmstat deltas), guest swap operations
(each guest's /proc/vmstat), balloon movements (ebbd's trace), KSM sharing, and
whatever the scenario reads from its workload; and the memory stall of every
guest, inside it (its PSI) and on the host (its QEMU's PSI group and major
faults; :mod:`overcommit.stall`).
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

from ebb.host.collectors.procfs import freeable_kib
from ebb.lab import hostmem
from ebb.lab.errors import LabError
from ebb.lab.guestcmd import CommandResult, GuestShell

from . import labguests
from .cpu import CpuMeter
from .hostctl import HostMemory, ksm_counters, read_vmstat
from .stall import (
    HostStallMeter,
    guest_total_stall_s,
    host_event_deltas,
    host_vcpu_wait_s,
    psi_delta_s,
    stall_summary,
)

LOG = logging.getLogger(__name__)

BENCH_DIR = Path(__file__).resolve().parent.parent
REPO = BENCH_DIR.parent
BIN = Path(sys.executable).parent
#: Policy directory per configuration (None: ebbd does not run).
POLICIES: Dict[str, Optional[Path]] = {
    "none": None,
    # Free page reporting on, no ebbd: what a user does instead of installing ebb.
    "fpr": None,
    # A reference, not a contender: no ebbd and the host not shrunk, so the guests
    # never wait for host memory. It measures what the workload gets when memory is
    # not short, the ceiling that no policy can beat.
    "unconstrained": None,
    "ksm": BENCH_DIR / "overcommit" / "policies" / "ksm",
    "classic": REPO / "host" / "policies" / "classic",
    "cooperative": REPO / "host" / "policies" / "cooperative",
}
#: Configurations whose guests' balloons report free pages to the host
#: (``<memballoon freePageReporting='on'>``). ebb's own configurations run with it,
#: as a user who installs ebb would (and as ebb's lab does): what they add is then
#: measured against ``fpr``. ``none``, ``ksm`` and ``unconstrained`` keep the
#: article's balloon-only guests.
FREE_PAGE_REPORTING: Dict[str, bool] = {
    "none": False, "unconstrained": False, "ksm": False,
    "fpr": True, "classic": True, "cooperative": True,
}
SAMPLE_INTERVAL_S = 1.0
PAGE_KIB = 4

Progress = Callable[[str], None]


@dataclass
class Scenario:
    """What a configuration run boots and runs; subclasses fill the hooks."""

    name: str
    prefix: str
    guests: int
    memory_mib: int
    floor_mib: int
    duration_s: float
    #: MemAvailable left on the host for the guests (the rest is hugepages).
    host_budget_mib: int
    host_swap_mib: int
    images_dir: Path = Path("/var/lib/ebb-bench/images")
    #: Reads and writes a second the guests' QEMU processes together may do on the
    #: host disk (host swap-ins and guest disk I/O); None: the disk as it is.
    disk_iops: Optional[int] = None
    #: Added to every guest's ebb-agent command line (``--agent-args``): to measure
    #: what the agent's own settings cost the workload.
    agent_args: str = ""
    #: ebbd's ``guests.report_interval_ms`` (``--report-interval-ms``); None: its default.
    report_interval_ms: Optional[int] = None

    @property
    def names(self) -> List[str]:
        return [f"{self.prefix}-{i}" for i in range(1, self.guests + 1)]

    def disks(self) -> Dict[str, List[labguests.Disk]]:
        return {}

    def memory_of(self) -> Dict[str, int]:
        """Guests whose size is not :attr:`memory_mib` (MiB by name)."""
        return {}

    @property
    def total_memory_mib(self) -> int:
        sizes = self.memory_of()
        return sum(sizes.get(n, self.memory_mib) for n in self.names)

    def prepare_images(self, say: Progress) -> None:
        """Create disk images (before guests boot)."""

    def setup_guest(self, index: int, shell: GuestShell) -> Dict[str, Any]:
        """Prepare one booted guest (swap on, disk mounted); returns facts to record."""
        return {}

    def workload(self, index: int) -> List[str]:
        raise NotImplementedError

    def analyse(self, index: int, output: str) -> Dict[str, Any]:
        raise NotImplementedError

    def describe(self) -> Dict[str, Any]:
        return {"guests": self.guests, "memory_mib": self.memory_mib,
                "floor_mib": self.floor_mib, "duration_s": self.duration_s,
                "host_budget_mib": self.host_budget_mib, "host_swap_mib": self.host_swap_mib,
                **({"disk_iops": self.disk_iops} if self.disk_iops else {}),
                **({"agent_args": self.agent_args} if self.agent_args else {}),
                **({"report_interval_ms": self.report_interval_ms}
                   if self.report_interval_ms else {})}


class Sampler(threading.Thread):
    """Host memory, swap counters, KSM and each guest's balloon, every second."""

    def __init__(self, names: Sequence[str], uri: str = "qemu:///system",
                 hold_hugepages: int = 0) -> None:
        super().__init__(daemon=True, name="bench-sampler")
        self.names = list(names)
        #: Our reservation, held under the lock: put back when someone lowers it.
        self.hold_hugepages = hold_hugepages
        self.reasserted = 0
        self.uri = uri
        self.samples: List[Dict[str, Any]] = []
        self._stall = HostStallMeter(self.names)
        self._halt = threading.Event()
        self.t0 = time.time()

    def stop(self) -> None:
        self._halt.set()
        self.join(10)

    def run(self) -> None:
        import libvirt

        conn = None
        while not self._halt.is_set():
            sample: Dict[str, Any] = {"t_s": round(time.time() - self.t0, 2)}
            try:
                meminfo = hostmem.meminfo_kib()
                vmstat = read_vmstat()
                ksm = ksm_counters()
                sample["host"] = {
                    "mem_free_kib": meminfo.get("MemFree", 0),
                    "freeable_kib": freeable_kib(meminfo),
                    "mem_available_kib": meminfo.get("MemAvailable", 0),
                    "swap_used_kib": meminfo.get("SwapTotal", 0) - meminfo.get("SwapFree", 0),
                    "pswpin": vmstat.get("pswpin", 0), "pswpout": vmstat.get("pswpout", 0),
                    "ksm_run": ksm.get("run"), "ksm_pages_shared": ksm.get("pages_shared", 0),
                    "ksm_pages_sharing": ksm.get("pages_sharing", 0),
                    "hugepages": meminfo.get("HugePages_Total", 0),
                }
            except OSError as err:
                LOG.warning("host sample: %s", err)
            guests: Dict[str, Any] = {}
            try:
                if conn is None:
                    conn = libvirt.open(self.uri)
                for name in self.names:
                    try:
                        stats = conn.lookupByName(name).memoryStats()
                    except libvirt.libvirtError:
                        if not conn.isAlive():  # libvirtd restarted: reconnect next time
                            raise
                        continue
                    guests[name] = {k: int(stats[k]) for k in
                                    ("actual", "unused", "available", "usable", "swap_in",
                                     "swap_out", "rss") if k in stats}
                    # Cumulative µs its vCPUs waited for a host CPU (a timeline of
                    # the run's host_cpu_wait_vcpu_s).
                    cpu_wait = self._stall.cpu_wait_us(name)
                    if cpu_wait is not None:
                        guests[name]["cpu_wait_us"] = cpu_wait
            except libvirt.libvirtError as err:
                LOG.warning("guest sample: %s", err)
                conn = None
            sample["guests"] = guests
            self.samples.append(sample)
            self._hold()
            self._halt.wait(SAMPLE_INTERVAL_S)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


    def _hold(self) -> None:
        """Put our hugepage reservation back if someone lowered it under our lock.

        Others' tests that do not take the lock restore ``nr_hugepages`` from
        their own snapshot, which can be 0 in the middle of our run. Raising it
        back keeps the run's host the size it was measured at; more hugepages
        than ours (someone squeezing further) are left alone.
        """
        if not self.hold_hugepages:
            return
        path = Path("/proc/sys/vm/nr_hugepages")
        try:
            now = int(path.read_text().split()[0])
            if now < self.hold_hugepages:
                path.write_text(f"{self.hold_hugepages}\n")
                self.reasserted += 1
        except (OSError, ValueError) as err:
            LOG.warning("cannot hold nr_hugepages at %d: %s", self.hold_hugepages, err)


def _swaps() -> List[str]:
    lines = Path("/proc/swaps").read_text().splitlines()[1:]
    return [line.split()[0] for line in lines if line.strip()]


class EbbdProcess:
    """ebbd with its own config, socket and trace, scoped to the benchmark's guests.

    Plain ebbd: its config names the guests (``[hypervisor] domains``), manages
    them although their XML opts out (``manage_opted_out``: every other ebbd on
    this shared host leaves them alone) and finds their agents on the
    benchmark's own port (``[guests] agent_channel``).
    """

    def __init__(self, workdir: Path, policy_dir: Path, prefix: str,
                 report_interval_ms: Optional[int] = None) -> None:
        self.workdir = workdir
        self.run_dir = workdir / "run"
        self.socket = self.run_dir / "ebbd.sock"
        self.trace = workdir / "trace.jsonl"
        self.config = workdir / "ebbd.toml"
        self.log = workdir / "ebbd.log"
        self.prefix = prefix
        self.config.write_text(
            "[daemon]\n"
            f'policy_dir = "{policy_dir}"\n'
            f'run_dir = "{self.run_dir}"\n'
            f'control_socket = "{self.socket}"\n'
            "policy_interval_s = 2.0\n"
            "[hypervisor]\n"
            f"domains = [{json.dumps(glob.escape(prefix) + '*')}]\n"
            "manage_opted_out = true\n"
            "[guests]\n"
            f"agent_channel = {json.dumps(labguests.BENCH_PORT)}\n"
            + (f"report_interval_ms = {report_interval_ms}\n" if report_interval_ms else "")
            + f"[trace]\npath = \"{self.trace}\"\n"
        )
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def start(self, timeout_s: float = 60.0) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(BIN / "ebbd"), "--config", str(self.config)],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd=str(REPO),
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LabError(f"ebbd exited with {self.proc.returncode}; see {self.log}")
            if self.status() is not None:
                return
            time.sleep(0.5)
        raise LabError(f"ebbd did not answer on {self.socket} in {timeout_s:.0f} s; "
                       f"see {self.log}")

    def status(self) -> Optional[Dict[str, Any]]:
        if not self.socket.exists():
            return None
        result = subprocess.run([str(BIN / "ebbctl"), "--socket", str(self.socket), "status",
                                 "--json"], capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            return None
        try:
            return json.loads(result.stdout)
        except ValueError:
            return None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def _records_until(trace: Path, until: Optional[float]) -> Iterator[Dict[str, Any]]:
    """ebbd's trace records up to ``until`` (wall clock); none past a broken trace."""
    from ebb.host.observe.trace import TraceError, read_trace

    try:
        for record in read_trace(trace):
            if until is not None and record.get("ts", 0.0) > until:
                return
            yield record
    except TraceError:
        return


def guest_vm_figures(before: Dict[str, int], after: Dict[str, int]) -> Dict[str, int]:
    """What a guest's /proc/vmstat says of its workload window.

    Swap operations, major faults, and the page cache it read back after the
    cache had been evicted: ``cache_refaults`` (``workingset_refault_file``, or
    ``workingset_refault`` on kernels before 5.9, when it counted file pages only)
    is what squeezing a guest's cache costs it, whoever squeezed. ``disk_read_kib``
    is everything read from its disks (``pgpgin``, KiB): cache misses and swap-ins.
    A counter the kernel lacks is left out, not read as 0.
    """
    def delta(key: str) -> int:
        return max(0, after.get(key, 0) - before.get(key, 0))

    out = {"swap_in_pages": delta("pswpin"), "swap_out_pages": delta("pswpout"),
           "major_faults": delta("pgmajfault")}
    for key in ("workingset_refault_file", "workingset_refault"):
        if key in before and key in after:
            out["cache_refaults"] = delta(key)
            break
    if "pgpgin" in before and "pgpgin" in after:
        out["disk_read_kib"] = delta("pgpgin")
    return out


def balloon_movements(trace: Path, until: Optional[float] = None) -> Dict[str, Any]:
    """Balloon changes ebbd applied, from its trace: count, MiB moved, per direction.

    Only ticks up to ``until`` (wall-clock time, the end of the workload) count:
    what ebbd does while the benchmark reads its figures afterwards changes
    nothing the run measured.
    """
    count = inflations = deflations = 0
    moved_kib = 0
    for record in _records_until(trace, until):
        for entry in record.get("applied") or []:
            if "controller" in entry or entry.get("outcome") != "applied":
                continue
            before, target = entry.get("before_kib"), entry.get("target_kib")
            if before is None or target is None or before == target:
                continue
            count += 1
            moved_kib += abs(target - before)
            if target < before:
                inflations += 1
            else:
                deflations += 1
    return {"count": count, "moved_mib": round(moved_kib / 1024, 1),
            "inflations": inflations, "deflations": deflations}


def yield_outcomes(trace: Path, until: Optional[float] = None) -> Dict[str, Any]:
    """Yields ebbd asked for and judged, from its trace (up to ``until``, wall clock).

    ``took_s`` of each yield that returned memory is the time from the request to the
    tick on which the host saw its QEMU RSS fall (tick granularity).
    """
    requests = 0
    outcomes: Dict[str, int] = {}
    returned_kib = 0
    took_s: List[float] = []
    for record in _records_until(trace, until):
        for event in record.get("yields") or []:
            if event.get("kind") == "yield-request":
                requests += 1
            elif event.get("kind") == "yield-result":
                outcome = str(event.get("outcome"))
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
                inputs = event.get("inputs") or {}
                if outcome == "returned":
                    returned_kib += int(inputs.get("returned_kib") or 0)
                    if inputs.get("took_s") is not None:
                        took_s.append(float(inputs["took_s"]))
    return {"requests": requests, "outcomes": outcomes,
            "returned_mib": round(returned_kib / 1024, 1), "took_s": took_s}


def freeable_during(samples: Sequence[Dict[str, Any]], start_s: float,
                    end_s: float) -> Dict[str, Optional[int]]:
    """The host's freeable memory (MiB) while the workload ran: median and least."""
    values = sorted(s["host"]["freeable_kib"] // 1024 for s in samples
                    if "host" in s and start_s <= s["t_s"] <= end_s)
    if not values:
        return {"median": None, "min": None}
    return {"median": values[len(values) // 2], "min": values[0]}


def ksm_peak(samples: Sequence[Dict[str, Any]]) -> Dict[str, int]:
    """The most pages KSM shared (``shared``) and saved (``sharing``) while it ran.

    ksmd updates its counters only while it runs: with ``run`` 0 they keep the
    figures of the last run that had it on (a ``none`` run after a ``ksm`` one
    showed 53804 pages sharing), so samples taken with KSM off count as 0.
    """
    on = [s["host"] for s in samples if "host" in s and s["host"].get("ksm_run") == 1]
    return {"sharing": max((h["ksm_pages_sharing"] for h in on), default=0),
            "shared": max((h["ksm_pages_shared"] for h in on), default=0)}


def _wait_jobs(shells: Sequence[GuestShell], jobs: Sequence[CommandResult],
               timeout_s: float) -> List[CommandResult]:
    deadline = time.monotonic() + timeout_s
    results: List[Optional[CommandResult]] = [None] * len(jobs)
    while time.monotonic() < deadline and any(r is None for r in results):
        for i, (shell, job) in enumerate(zip(shells, jobs)):
            if results[i] is None:
                res = shell.result(job.job_id)
                if res.returncode is not None:
                    results[i] = res
        time.sleep(1.0)
    return [r if r is not None else shell.result(job.job_id)
            for r, shell, job in zip(results, shells, jobs)]


def run_config(scenario: Scenario, config: str, workdir: Path, host: HostMemory,
               say: Progress) -> Dict[str, Any]:
    """Boot fresh guests, run the workload under ``config``, return the figures."""
    if config not in POLICIES:
        raise ValueError(f"unknown configuration {config!r} (known: {', '.join(POLICIES)})")
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    lab = labguests.make_lab(scenario.prefix)
    names = scenario.names
    ebbd: Optional[EbbdProcess] = None
    sampler: Optional[Sampler] = None
    agents: List[str] = []
    disk: Optional[labguests.DiskLimit] = None
    try:
        host.wait_no_hugepages()  # someone else's test may hold some (without the lock)
        host.ksm_off()
        scenario.prepare_images(say)
        started = time.monotonic()
        sizes = scenario.memory_of()
        say(f"[{scenario.name}/{config}] booting {len(names)} x {scenario.memory_mib} MiB"
            + "".join(f", {n} {m} MiB" for n, m in sizes.items())
            + f", free page reporting {'on' if FREE_PAGE_REPORTING.get(config) else 'off'}")
        fpr = FREE_PAGE_REPORTING.get(config, False)
        labguests.boot_guests(lab, names, scenario.memory_mib, scenario.disks(),
                              floor_mib=scenario.floor_mib, progress=lambda m: LOG.info(m),
                              free_page_reporting=fpr, memory_of=scenario.memory_of(),
                              agent_args=scenario.agent_args)
        say(f"[{scenario.name}/{config}] guests up in {time.monotonic() - started:.0f} s")
        shells = [lab.shell(n) for n in names]
        setup = {n: scenario.setup_guest(i, sh) for i, (n, sh) in enumerate(zip(names, shells))}
        host.ensure_swap()
        if scenario.disk_iops:
            disk = labguests.DiskLimit(scenario.prefix, labguests.whole_disk(host.swap_file),
                                       scenario.disk_iops)
            for name in names:
                disk.add(labguests.qemu_pid(name))
            say(f"[{scenario.name}/{config}] the guests share {disk.iops} read and "
                f"{disk.iops} write IOPS on {disk.device}")
        host.wait_no_hugepages()
        reserved = 0 if config == "unconstrained" else host.shrink_to(scenario.host_budget_mib)
        policy = POLICIES[config]
        if policy is not None:
            ebbd = EbbdProcess(workdir, policy, scenario.prefix + "-",
                               report_interval_ms=scenario.report_interval_ms)
            ebbd.start()
            say(f"[{scenario.name}/{config}] ebbd running with {policy}")
            agents = _agents_connected(ebbd, names, timeout_s=30.0)
            if len(agents) < len(names):
                say(f"[{scenario.name}/{config}] only {len(agents)}/{len(names)} agents "
                    "connected to ebbd (another ebbd may hold their channels)")
        guest_before = [labguests.guest_counters(sh) for sh in shells]
        host_before = read_vmstat()
        disk_before = disk.ios() if disk is not None else None
        host.ensure_swap()
        sampler = Sampler(names, hold_hugepages=reserved)
        sampler.start()
        cpu = CpuMeter(names, ebbd.proc.pid if ebbd is not None and ebbd.proc else None)
        cpu.start(shells)
        stall = HostStallMeter(names)
        stall.start()
        jobs = [sh.spawn(scenario.workload(i)) for i, sh in enumerate(shells)]
        t_start = time.monotonic()
        say(f"[{scenario.name}/{config}] workload running for {scenario.duration_s:.0f} s")
        t_start_wall = time.time()
        results = _wait_jobs(shells, jobs, scenario.duration_s + 120.0)
        elapsed = time.monotonic() - t_start
        t_end_wall = time.time()
        stall.end()
        host_after = read_vmstat()
        disk_after = disk.ios() if disk is not None else None
        # The run is over: stop sampling and ebbd before reading anything in the
        # guests (every command started there is new code for QEMU to translate,
        # host memory ebbd would react to).
        cpu.end()
        sampler.stop()
        if ebbd is not None:
            ebbd.stop()
        cpu_used = cpu.stop(shells)
        guest_after = [labguests.guest_counters(sh) for sh in shells]
        host_stall = stall.figures()
        per_guest = {}
        for i, (name, res) in enumerate(zip(names, results)):
            (workdir / f"{name}.out").write_text(res.stdout)
            figures = scenario.analyse(i, res.stdout)
            figures["exit"] = res.returncode
            if res.returncode not in (0, None):
                figures["stderr"] = res.stderr[-500:]
            (vm_before, psi_before), (vm_after, psi_after) = guest_before[i], guest_after[i]
            figures.update(guest_vm_figures(vm_before, vm_after))
            guest_psi = psi_delta_s(psi_before, psi_after)
            if guest_psi:
                figures["guest_stall_some_s"] = guest_psi.get("some")
                figures["guest_stall_full_s"] = guest_psi.get("full")
            figures.update(host_stall.get(name, {}))
            figures["host_wait_s"] = host_vcpu_wait_s(figures)
            figures["stall_s"] = guest_total_stall_s(figures)
            figures["setup"] = setup[name]
            per_guest[name] = figures
        ksm = ksm_peak(sampler.samples)
        result: Dict[str, Any] = {
            "config": config,
            "elapsed_s": round(elapsed, 1),
            "host_swap_in_pages": host_after["pswpin"] - host_before["pswpin"],
            "host_swap_out_pages": host_after["pswpout"] - host_before["pswpout"],
            "guest_swap_in_pages": sum(g["swap_in_pages"] for g in per_guest.values()),
            "guest_swap_out_pages": sum(g["swap_out_pages"] for g in per_guest.values()),
            "ksm_pages_sharing_max": ksm["sharing"],
            "ksm_pages_shared_max": ksm["shared"],
            # Seconds of samples.json (its t_s) between which the workload ran.
            "workload_window_s": [round(t_start_wall - sampler.t0, 2),
                                  round(t_end_wall - sampler.t0, 2)],
            "host_freeable_mib": freeable_during(sampler.samples, t_start_wall - sampler.t0,
                                                 t_end_wall - sampler.t0),
            "balloon": (balloon_movements(ebbd.trace, until=t_end_wall) if ebbd is not None else
                        {"count": 0, "moved_mib": 0.0, "inflations": 0, "deflations": 0}),
            "yields": yield_outcomes(ebbd.trace, until=t_end_wall) if ebbd is not None else None,
            "guests": per_guest,
            # Seconds the guests' workloads waited for memory, inside and outside them.
            "stall": stall_summary(per_guest, elapsed),
            "free_page_reporting": fpr,
            "delayacct": stall.delayacct,
            # Agents in session with our ebbd when the workload started.
            "agents_connected": agents,
            # What the host, the guests, ebbd and the agents used while the workload ran.
            "cpu": cpu_used,
        }
        if disk_before is not None and disk_after is not None:
            # What the guests did on the limited disk while the workload ran.
            result["disk_ios"] = {k: disk_after[k] - disk_before[k] for k in disk_after}
        result["host_swap_ops"] = result["host_swap_in_pages"] + result["host_swap_out_pages"]
        result["guest_swap_ops"] = result["guest_swap_in_pages"] + result["guest_swap_out_pages"]
        result["host_events"] = host_event_deltas(host_before, host_after)
        # Others' tests on this host may change hugepages or swap under us (they do not
        # all take the lock): say so in the result rather than report a wrong figure.
        disturbed = []
        hp = {s["host"].get("hugepages") for s in sampler.samples if "host" in s}
        lowered = sorted(v for v in hp if v is not None and v < reserved)
        result["hugepages_seen"] = sorted(v for v in hp if v is not None)
        result["hugepages_put_back"] = sampler.reasserted
        # Put back within a second: noted, not a disturbance. Lowered for longer is one.
        low_samples = sum(1 for s in sampler.samples
                          if "host" in s and (s["host"].get("hugepages") or 0) < reserved)
        if lowered and low_samples > 2 * max(1, sampler.reasserted):
            disturbed.append(f"nr_hugepages lowered by someone during the run: {lowered} "
                             f"(we reserved {reserved}) in {low_samples} samples")
        if str(host.swap_file) not in _swaps():
            disturbed.append("our host swap file was turned off by someone during the run")
        result["disturbed"] = disturbed
        result["hugepages"] = reserved
        ksm_runs = sorted({s["host"].get("ksm_run") for s in sampler.samples if "host" in s}
                          - {None})
        result["ksm_run_seen"] = ksm_runs
        if ebbd is None and any(v == 1 for v in ksm_runs):
            # Not run again (it would be again while another ebbd runs): flagged.
            result["ksm_on_by_others"] = True
        # Someone else's ebbd could balloon our guests: with no ebbd of ours, any balloon
        # below the maximum says so.
        if ebbd is None:
            sizes = scenario.memory_of()
            low = [n for s in sampler.samples for n, g in s.get("guests", {}).items()
                   if g.get("actual", 1 << 62) < sizes.get(n, scenario.memory_mib) * 1024]
            result["foreign_ballooning"] = sorted(set(low))
        (workdir / "samples.json").write_text(json.dumps(sampler.samples))
        (workdir / "result.json").write_text(json.dumps(result, indent=1))
        return result
    finally:
        cleanups: List[Callable[[], Any]] = []
        if sampler is not None:
            cleanups.append(sampler.stop)
        if ebbd is not None:
            cleanups.append(ebbd.stop)
        cleanups += [host.unshrink, lambda: _down(scenario.prefix)]
        if disk is not None:
            cleanups.append(disk.close)
        for cleanup in cleanups:
            try:
                cleanup()
            except Exception as err:  # every cleanup runs whatever the others do
                LOG.error("cleanup %s: %s", cleanup, err)


def _agents_connected(ebbd: Optional[EbbdProcess], names: Sequence[str],
                      timeout_s: float) -> List[str]:
    """Names of our guests whose agent is connected to our ebbd (waiting up to timeout_s)."""
    deadline = time.monotonic() + timeout_s
    connected: List[str] = []
    while ebbd is not None:
        status = ebbd.status() or {}
        connected = sorted(vm["name"] for vm in status.get("vms", [])
                           if vm.get("name") in names and (vm.get("agent") or {}).get("connected"))
        if len(connected) == len(names) or time.monotonic() >= deadline:
            break
        time.sleep(1.0)
    return connected


def _down(prefix: str) -> None:
    """Remove our guests, with a fresh connection (libvirtd may have been restarted)."""
    for attempt in range(3):
        try:
            labguests.make_lab(prefix).down()
            return
        except Exception as err:  # libvirt errors of any kind: retry, then report
            LOG.warning("removing %s-* (attempt %d): %s", prefix, attempt + 1, err)
            time.sleep(2.0)
    LOG.error("could not remove the %s-* guests: run ebbctl lab down --prefix %s", prefix,
              prefix)
