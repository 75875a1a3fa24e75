#!/usr/bin/env python3
"""ebbd's cost and reaction time with many guests.

ebbd's engine and guest channels manage N simulated guests (default 32) that
speak the real protocol over socketpairs and report every second. The guests
run in a forked child process, so the figures are the daemon's alone:

- CPU: the daemon process's user+system time over the run, as % of one core;
- RSS: the daemon process's resident memory at the end (and its peak);
- need -> deflate latency: from a guest writing a ``need`` message to the
  balloon call that deflates its balloon (median and p95 over all the needs
  sent; a need that got no deflate is counted and named).

A need can only be met by a balloon that is inflated. Every guest's balloon is
inflated before the run (2 GiB of its 8 GiB) and stays inflated between needs:
the host collector reads a scratch /proc whose host sits between the policy's
pressure threshold and its release line (22 % of 64 GiB freeable), where the
cooperative policy neither takes memory nor gives it back, but serves needs.
(On a comfortable host the policy deflates every balloon to its maximum within
a few ticks, and every later need finds nothing to deflate.)

Everything but libvirt and the host's memory figures is real: the packaged
cooperative policy (or --policy), the governor, the balloon controller, the
host collector. libvirt is a fake hypervisor with the same interface (the
balloon call is where the latency is measured). KSM is read from and written to
a scratch sysfs tree, never the host's.

Usage: .venv/bin/python bench/bench_ebbd.py [--duration 60] [--guests 32] [--needs 50]
Targets: < 2 % of one core, < 60 MiB RSS, need -> deflate < 100 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import selectors
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ebb.host.channels import ChannelLimits, GuestChannels
from ebb.host.collectors import HostCollector
from ebb.host.config import packaged_policy_dir
from ebb.host.controllers import BalloonController, KsmController
from ebb.host.engine import Engine, EngineSettings
from ebb.host.governor import Governor, GovernorConfig
from ebb.host.hypervisor import DomainGone, DomainInfo, DomainSettings
from ebb.host.policy import PolicyRunner
from ebb.lab.simulated import SimulatedAgent
from ebb.protocol import Decision

GIB_KIB = 1024 * 1024
NEED_KIB = 64 * 1024
#: Each guest's balloon before the run: inflated, far below its maximum.
INFLATED_KIB = 2 * GIB_KIB
MAX_KIB = 8 * GIB_KIB
#: The scratch host: 64 GiB, 22 % freeable (the cooperative policy's hold band
#: is 20 % to 25 %: no inflation, no deflation, needs served).
HOST_TOTAL_KIB = 64 * GIB_KIB
HOST_FREEABLE_SHARE = 0.22


# --- the daemon side --------------------------------------------------------------------


class BenchHypervisor:
    """libvirt's part, faked: N running VMs whose balloons follow their targets."""

    uri = "bench:///fake"
    connected = True

    def __init__(self, names: List[str]) -> None:
        # Inflated first, far below their maximum, so that every need has
        # something to deflate.
        self.cur_kib = {name: INFLATED_KIB for name in names}
        self.max_kib = MAX_KIB
        #: (vm, monotonic time, target KiB, balloon KiB before the call)
        self.calls: List[Tuple[str, float, int, int]] = []
        self._lock = threading.Lock()
        self._settings = {
            name: DomainSettings(
                name=name, uuid=f"00000000-0000-4000-8000-{i:012d}", max_memory_kib=self.max_kib,
                has_balloon=True, channel_path=f"sim://{name}", stats_period_s=2,
                free_page_reporting=True,
            )
            for i, name in enumerate(names)
        }

    def domain_infos(self) -> List[DomainInfo]:
        infos = []
        for name, settings in self._settings.items():
            cur = self.cur_kib[name]
            infos.append(DomainInfo(
                name=name, uuid=settings.uuid, id=1, state="running",
                max_memory_kib=self.max_kib, balloon_cur_kib=cur,
                memory_stats={"actual": cur, "unused": cur // 3, "available": cur,
                              "disk_caches": cur // 4, "major_fault": 0, "minor_fault": 0,
                              "swap_in": 0, "swap_out": 0, "rss": cur},
                qemu_pid=None, settings=settings,
            ))
        return infos

    def balloon_actual_kib(self, name: str) -> int:
        if name not in self.cur_kib:
            raise DomainGone(name)
        return self.cur_kib[name]

    def set_balloon_target(self, name: str, target_kib: int) -> None:
        now = time.monotonic()
        with self._lock:
            self.calls.append((name, now, int(target_kib), self.cur_kib[name]))
        self.cur_kib[name] = int(target_kib)

    def deflated_after(self, vm: str, sent_at: float) -> Optional[float]:
        """When ``vm``'s balloon was first deflated at or after ``sent_at`` (None: never)."""
        with self._lock:
            times = [at for name, at, target, before in self.calls
                     if name == vm and at >= sent_at and target > before]
        return min(times) if times else None


def make_scratch_proc(root: Path) -> Path:
    """A /proc whose host is in the policy's hold band (see HOST_FREEABLE_SHARE)."""
    (root / "pressure").mkdir(parents=True)
    free_kib = int(HOST_TOTAL_KIB * HOST_FREEABLE_SHARE)
    (root / "meminfo").write_text(
        f"MemTotal: {HOST_TOTAL_KIB} kB\nMemFree: {free_kib} kB\n"
        f"MemAvailable: {free_kib} kB\nBuffers: 0 kB\nCached: 0 kB\n"
        "SwapTotal: 0 kB\nSwapFree: 0 kB\nAnonPages: 1048576 kB\n"
        "HugePages_Total: 0\nHugepagesize: 2048 kB\n")
    (root / "vmstat").write_text("pswpin 0\npswpout 0\npgmajfault 0\n")
    (root / "pressure" / "memory").write_text(
        "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
        "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
    return root


def make_scratch_sys(root: Path) -> Path:
    ksm = root / "kernel" / "mm" / "ksm"
    ksm.mkdir(parents=True)
    for name, value in {"run": 0, "pages_to_scan": 100, "sleep_millisecs": 20,
                        "pages_shared": 0, "pages_sharing": 0, "pages_unshared": 0,
                        "pages_volatile": 0, "full_scans": 0, "merge_across_nodes": 1}.items():
        (ksm / name).write_text(f"{value}\n")
    return root


def rss_kib() -> Tuple[int, int]:
    """(VmRSS, VmHWM) of this process in KiB."""
    values = {"VmRSS:": 0, "VmHWM:": 0}
    with open("/proc/self/status") as status:
        for line in status:
            parts = line.split()
            if parts and parts[0] in values:
                values[parts[0]] = int(parts[1])
    return values["VmRSS:"], values["VmHWM:"]


def thread_cpu_s() -> Dict[str, float]:
    """CPU seconds per thread of this process, by thread name (from /proc/self/task)."""
    ticks = os.sysconf("SC_CLK_TCK")
    out: Dict[str, float] = {}
    names = {t.native_id: t.name for t in threading.enumerate()}
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = names.get(int(task), f"task-{task}")
        out[name] = (int(fields[11]) + int(fields[12])) / ticks
    return out


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- the guests (child process) ------------------------------------------------------------


def run_guests(socks: Dict[str, socket.socket], duration_s: float, needs: int,
               interval_s: float, seed: int, out_fd: int) -> None:
    """Simulated agents: hello, a report every interval, offers, needs; results to out_fd."""
    rng = random.Random(seed)
    agents = {name: SimulatedAgent(sock, name=name) for name, sock in socks.items()}
    selector = selectors.DefaultSelector()
    for name, agent in agents.items():
        agent.sock.setblocking(False)
        selector.register(agent.sock, selectors.EVENT_READ, name)
        agent.hello()
    start = time.monotonic()
    names = sorted(agents)
    offset = interval_s / len(names)
    next_report = {name: start + 0.5 + i * offset for i, name in enumerate(names)}
    # Needs: spread over the run, after a warm-up, each to a VM not already needing.
    first, last = start + 5.0, start + duration_s - 3.0
    times = sorted(rng.uniform(first, last) for _ in range(needs))
    pending: Dict[str, float] = {}  # vm -> when its need was sent
    sent: List[Tuple[str, float]] = []
    welcomed = set()
    end = start + duration_s
    while True:
        now = time.monotonic()
        if now >= end:
            break
        deadline = min([end, *next_report.values()] + ([times[0]] if times else []))
        for key, _ in selector.select(max(0.0, min(deadline - now, 0.5))):
            name = key.data
            agent = agents[name]
            for msg in agent.pump(0.0):
                if msg.TYPE == "welcome":
                    welcomed.add(name)
                    agent.offer(1 * GIB_KIB)  # plenty: the policy does not grow it back
                elif isinstance(msg, Decision) and name in pending:
                    del pending[name]
                    agent.need(0)
        now = time.monotonic()
        for name in names:
            if now >= next_report[name] and name in welcomed:
                agents[name].report(mem_total_kib=4 * GIB_KIB, mem_available_kib=2 * GIB_KIB)
                next_report[name] += interval_s
        while times and now >= times[0]:
            times.pop(0)
            idle = [n for n in names if n not in pending and n in welcomed]
            if not idle:
                continue
            name = rng.choice(idle)
            pending[name] = time.monotonic()
            sent.append((name, pending[name]))
            agents[name].need(NEED_KIB, urgency="high", reason="bench")
        for name, at in list(pending.items()):
            if now - at > 5.0:  # never answered: withdraw and go on
                del pending[name]
                agents[name].need(0)
    os.write(out_fd, json.dumps({"needs": sent, "welcomed": len(welcomed)}).encode())
    os.close(out_fd)


# --- putting it together --------------------------------------------------------------------


def percentile(values: List[float], share: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))
    return ordered[index]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    parser.add_argument("--guests", type=int, default=32, help="simulated guests (default 32)")
    parser.add_argument("--needs", type=int, default=50, help="need messages sent (default 50)")
    parser.add_argument("--interval", type=float, default=2.0, help="policy interval s")
    parser.add_argument("--report-interval-ms", type=int, default=1000)
    parser.add_argument("--policy", default=None, help="policy dir (default: cooperative)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    # What ebbd itself loads, so that RSS is the daemon's: libvirt, systemd, and
    # the metrics observer (prometheus-client) that every tick feeds.
    for module in ("libvirt", "systemd.daemon", "systemd.journal"):
        try:
            __import__(module)
        except ImportError:
            print(f"  (note: {module} is not installed; RSS is lower than ebbd's)")
    from ebb.host.config import EbbdConfig
    from ebb.host.observe import build_observability

    names = [f"vm{i:02d}" for i in range(args.guests)]
    pairs = {name: socket.socketpair() for name in names}
    read_fd, write_fd = os.pipe()
    child = os.fork()
    if child == 0:  # the guests
        try:
            os.close(read_fd)
            for host_end, _ in pairs.values():
                host_end.close()
            run_guests({n: pair[1] for n, pair in pairs.items()}, args.duration, args.needs,
                       args.report_interval_ms / 1000.0, args.seed, write_fd)
        finally:
            os._exit(0)
    os.close(write_fd)
    host_ends = {f"sim://{name}": pair[0] for name, pair in pairs.items()}
    for _, guest_end in pairs.values():
        guest_end.close()

    def connector(path: str) -> socket.socket:
        sock = host_ends.pop(path, None)
        if sock is None:
            raise FileNotFoundError(2, "simulated channel already used", path)
        return sock

    scratch = Path(tempfile.mkdtemp(prefix="ebb-bench-"))
    sys_root = make_scratch_sys(scratch / "sys")
    proc_root = make_scratch_proc(scratch / "proc")
    hypervisor = BenchHypervisor(names)
    runner = PolicyRunner()
    errors = runner.reload(args.policy or packaged_policy_dir())
    if errors:
        for error in errors:
            print(error, file=sys.stderr)
        return 2
    holder: Dict[str, Engine] = {}
    channels = GuestChannels(
        ChannelLimits(report_interval_ms=args.report_interval_ms),
        connector=connector,
        on_need=lambda vm: holder["engine"].on_need(vm),
    )
    engine = Engine(
        EngineSettings(interval_s=args.interval),
        host=HostCollector(proc_root, sys_root),
        hypervisor=hypervisor,  # type: ignore[arg-type]
        channels=channels,
        runner=runner,
        governor=Governor(GovernorConfig()),
        balloon=BalloonController(hypervisor),
        ksm=KsmController(sys_root, scratch / "run"),
        pressure_probe=None,
    )
    holder["engine"] = engine
    observability = build_observability(EbbdConfig())
    engine.observers.extend(observability.observers)
    durations_ms: List[float] = []

    class Durations:
        def on_tick(self, record: Any) -> None:
            durations_ms.append(record.duration_ms)
            if record.duration_ms > 100:
                # Wall time: on a busy machine a tick may wait for a CPU.
                print(f"  (slow tick {record.tick}: {record.duration_ms:.0f} ms)",
                      file=sys.stderr)

    engine.observers.append(Durations())
    stop = threading.Event()
    channels.start()
    thread = threading.Thread(target=engine.run, args=(stop,), name="ebbd-engine", daemon=True)
    thread.start()

    # Measure after the sessions are up (the first second), until the guests finish.
    stop.wait(1.0)
    cpu_before, wall_before = cpu_s(), time.monotonic()
    threads_before = thread_cpu_s()
    chunks = []
    while True:
        data = os.read(read_fd, 65536)
        if not data:
            break
        chunks.append(data)
    os.waitpid(child, 0)
    cpu_after, wall_after = cpu_s(), time.monotonic()
    threads_after = thread_cpu_s()
    rss, peak = rss_kib()
    stop.set()
    engine.stop_waiting()
    thread.join(2)
    channels.stop()

    result: Dict[str, Any] = json.loads(b"".join(chunks) or b"{}")
    latencies_ms: List[float] = []
    undeflated: List[str] = []
    for vm, sent_at in result.get("needs", []):
        deflated_at = hypervisor.deflated_after(vm, sent_at)
        if deflated_at is not None:
            latencies_ms.append((deflated_at - sent_at) * 1000.0)
        else:
            undeflated.append(vm)
    balloons = sorted(hypervisor.cur_kib.values())
    cpu_percent = 100.0 * (cpu_after - cpu_before) / (wall_after - wall_before)
    print(f"ebbd with {args.guests} simulated guests reporting every "
          f"{args.report_interval_ms} ms, policy every {args.interval:g} s, "
          f"{wall_after - wall_before:.0f} s measured")
    print(f"  guests in session: {result.get('welcomed', 0)}/{args.guests}; "
          f"ticks: {engine.tick_count}; balloon calls: {len(hypervisor.calls)}")
    print(f"  CPU: {cpu_percent:.2f} % of one core (target < 2 %)")
    wall = wall_after - wall_before
    per_thread = ", ".join(
        f"{name} {100 * (threads_after[name] - threads_before.get(name, 0.0)) / wall:.2f} %"
        for name in sorted(threads_after)
        if name in ("ebbd-engine", "ebbd-channels", "MainThread")
    )
    print(f"    by thread: {per_thread}")
    if durations_ms:
        print(f"  tick duration: median {statistics.median(durations_ms):.1f} ms, "
              f"max {max(durations_ms):.1f} ms")
    print(f"  RSS: {rss / 1024:.1f} MiB at the end, peak {peak / 1024:.1f} MiB (target < 60 MiB)")
    print(f"  balloons at the end: {balloons[0] / GIB_KIB:.2f} to {balloons[-1] / GIB_KIB:.2f} "
          f"GiB of {MAX_KIB / GIB_KIB:.0f} GiB (inflated to "
          f"{INFLATED_KIB / GIB_KIB:.0f} GiB before the run)")
    sent = len(result.get("needs", []))
    if latencies_ms:
        print(f"  need -> deflate: median {statistics.median(latencies_ms):.1f} ms, "
              f"p95 {percentile(latencies_ms, 0.95):.1f} ms, max {max(latencies_ms):.1f} ms "
              f"over {len(latencies_ms)} of {sent} needs (target < 100 ms)")
    if undeflated:
        print(f"  {len(undeflated)} of {sent} need(s) got no deflate: "
              f"{', '.join(sorted(set(undeflated)))}")
    if not latencies_ms:
        print(f"  need -> deflate: no need was met ({sent} sent)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
