"""End-to-end helpers: lab guests and ebbd as the tests drive them (fixtures are in conftest).

The session boots the lab once (``ebb-e2e-1`` and ``ebb-e2e-2``, 512 MiB each,
``ebb-agent`` running in both) and removes it at the end. Each test gets its
own ebbd (``ebbd_factory``), guests reset to a known state (agent running,
balloon at the maximum, no workload), and a host snapshot that is restored
after the test whatever happens: hugepages, KSM settings, swap.

Missing prerequisites (root, qemu, libvirtd, a kernel) fail the tests with
what is missing and how to get it; they are never skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, TypeVar

import pytest
from ebb.host.collectors import procfs
from ebb.lab import hostmem
from ebb.lab.errors import LabError
from ebb.lab.guestcmd import CommandResult, GuestShell
from ebb.lab.manager import Lab, LabSettings

PREFIX = os.environ.get("EBB_E2E_PREFIX", "ebb-e2e")
STATE_DIR = Path(os.environ.get("EBB_LAB_STATE_DIR", "/var/lib/ebb-lab"))
GUEST_MEMORY_MIB = 512
#: KiB in a MiB: the unit the tests' sizes are written in.
MIB = 1024
GUEST_COUNT = 2
#: Lab agents retry the host every 2 s at most, so a restarted ebbd is seen fast.
AGENT_ARGS = "--backoff-max 2"
BIN = Path(sys.executable).parent
#: The cooperative policy's pressure threshold (freeable share of host memory).
POLICY_THRESHOLD = 0.20
#: Host memory kept free while shrinking the host (others work on it too).
KEEP_FREE_MIB = 3072
RESULTS = Path(os.environ.get("EBB_E2E_RESULTS", STATE_DIR / "e2e-results"))

T = TypeVar("T")


def _say(config: pytest.Config, message: str) -> None:
    """A progress line on the terminal, past pytest's output capture."""
    capture = config.pluginmanager.getplugin("capturemanager")
    cm = capture.global_and_fixture_disabled() if capture else contextlib.nullcontext()
    with cm:
        print(f"[e2e] {message}", file=sys.stderr, flush=True)


def wait_for(check: Callable[[], Optional[T]], timeout_s: float, what: str,
             interval_s: float = 0.5, last: Optional[Callable[[], Any]] = None) -> T:
    """Call ``check`` until it returns something truthy; fail naming ``what`` at the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"; last seen: {last()!r}" if last else ""
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}{extra}")
        time.sleep(interval_s)


def record(name: str, value: Any) -> None:
    """Keep a measured figure in RESULTS/figures.json (boot time, reaction times)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "figures.json"
    try:
        figures = json.loads(path.read_text())
    except (OSError, ValueError):
        figures = {}
    figures[name] = value
    path.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")


# -- prerequisites -------------------------------------------------------------------
def require_host() -> None:
    """Fail (never skip) with what is missing for real guests and how to get it."""
    problems = []
    if os.geteuid() != 0:
        problems.append("not root: run the end-to-end tests as root (sudo ./dev/test.sh)")
    if shutil.which("qemu-system-x86_64") is None:
        problems.append("no qemu-system-x86_64: apt-get install qemu-system-x86 "
                        "(or ./dev/bootstrap.sh)")
    try:
        import libvirt  # noqa: F401
    except ImportError:
        problems.append("no libvirt Python binding: ./dev/bootstrap.sh installs libvirt-python")
    if not problems:
        try:
            Lab(LabSettings(state_dir=STATE_DIR, prefix=PREFIX)).check_prerequisites()
        except LabError as err:
            problems.append(str(err))
    if problems:
        pytest.fail("end-to-end tests need real guests:\n  " + "\n  ".join(problems),
                    pytrace=False)


# -- guests ----------------------------------------------------------------------------
class Guest:
    """One lab guest as the tests drive it."""

    def __init__(self, lab: Lab, name: str) -> None:
        self.lab = lab
        self.name = name
        self.shell: GuestShell = lab.shell(name)
        self.jobs: List[CommandResult] = []

    @property
    def dom(self) -> Any:
        return self.lab.conn.lookupByName(self.name)

    def stats(self) -> Dict[str, int]:
        return {k: int(v) for k, v in self.dom.memoryStats().items()}

    def actual_kib(self) -> int:
        """The balloon as libvirt reports it: memory the guest has now."""
        return self.stats()["actual"]

    def max_kib(self) -> int:
        return int(self.dom.maxMemory())

    def set_balloon(self, kib: int) -> None:
        import libvirt

        self.dom.setMemoryFlags(kib, libvirt.VIR_DOMAIN_AFFECT_LIVE)

    def run(self, *argv: str, timeout_s: float = 60.0) -> CommandResult:
        result = self.shell.run(list(argv), timeout_s=timeout_s)
        return result

    def spawn(self, *argv: str) -> CommandResult:
        job = self.shell.spawn(list(argv))
        self.jobs.append(job)
        return job

    def agent_pids(self) -> List[int]:
        out = self.run("pgrep", "-f", "ebb.guest.cli").stdout
        return [int(p) for p in out.split()]

    def kill_agent(self, signum: int = signal.SIGKILL) -> None:
        for pid in self.agent_pids():
            self.run("kill", "-s", str(int(signum)), str(pid))

    def start_agent(self, *extra: str) -> CommandResult:
        return self.spawn("ebb-agent", *AGENT_ARGS.split(), *extra)

    def memknobs(self, pattern: str) -> CommandResult:
        return self.spawn("memknobs", "--pattern", pattern, "--json")

    def stop_jobs(self) -> None:
        for job in self.jobs:
            if job.pid is not None:
                with contextlib.suppress(LabError):
                    self.run("kill", "-s", "KILL", "--", f"-{job.pid}", timeout_s=20)
        self.jobs.clear()

    def reset(self) -> None:
        """Agent running (exactly one), balloon at the maximum, no workload left."""
        self.stop_jobs()
        # pgrep -f run directly (not under sh -c, whose own command line would match).
        for pid in self.run("pgrep", "-f", "ebb[.]lab[.](memknobs|hostile)").stdout.split():
            self.run("kill", "-s", "KILL", pid)
        self.set_balloon(self.max_kib())
        if not self.agent_pids():
            self.start_agent()


# -- ebbd --------------------------------------------------------------------------------
class Ebbd:
    """ebbd as a separate process with its own config, run dir and control socket."""

    def __init__(self, workdir: Path, settings: Dict[str, Dict[str, Any]]) -> None:
        self.workdir = workdir
        # Unix socket paths must stay under 108 bytes: the run dir is short, under /run.
        self.run_dir = Path("/run/ebb-e2e") / workdir.name
        self.socket = self.run_dir / "ebbd.sock"
        self.config = workdir / "ebbd.toml"
        self.log = workdir / "ebbd.log"
        self.trace = workdir / "trace.jsonl"
        sections: Dict[str, Dict[str, Any]] = {
            "daemon": {"run_dir": str(self.run_dir), "control_socket": str(self.socket),
                       "policy_interval_s": 1.0, "log_level": "debug"},
            # One report per tick, as with ebbd's defaults (2 s and 2000 ms).
            "guests": {"report_interval_ms": 1000},
            "trace": {"path": str(self.trace)},
            # Only the test's own guests: other VMs on the machine are none of its business.
            "hypervisor": {"domains": [f"{PREFIX}-*"]},
        }
        for section, values in settings.items():
            sections.setdefault(section, {}).update(values)
        self.config.write_text("".join(
            f"[{section}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())
            for section, values in sections.items()
        ))
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def start(self, timeout_s: float = 30.0) -> None:
        log = open(self.log, "ab")  # noqa: SIM115 (the child keeps it)
        self.proc = subprocess.Popen(
            [str(BIN / "ebbd"), "--config", str(self.config)], stdout=log, stderr=log,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        wait_for(self._answers, timeout_s, f"ebbd to answer on {self.socket}",
                 last=self.log_tail)

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            pytest.fail(f"ebbd exited with {self.proc.returncode}:\n{self.log_tail()}")
        return self.socket.exists() and self.try_status() is not None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(BIN / "ebbctl"), "--socket", str(self.socket), *args],
                                capture_output=True, text=True, timeout=30)
        if check and result.returncode != 0:
            pytest.fail(f"ebbctl {' '.join(args)} failed ({result.returncode}): "
                        f"{result.stderr.strip()}")
        return result

    def try_status(self) -> Optional[Dict[str, Any]]:
        result = self.ctl("status", "--json", check=False)
        if result.returncode != 0:
            return None
        try:
            data = json.loads(result.stdout)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def status(self) -> Dict[str, Any]:
        data = self.try_status()
        if data is None:
            pytest.fail(f"ebbctl status --json gave nothing usable; ebbd log:\n{self.log_tail()}")
        return data

    def vm(self, name: str, status: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        for vm in (status or self.status())["vms"]:
            if vm["name"] == name:
                return dict(vm)
        return {}

    def stop(self, timeout_s: float = 30.0) -> Optional[int]:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            pytest.fail(f"ebbd did not stop within {timeout_s:.0f} s of SIGTERM")
        return None

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def fresh(vm: Dict[str, Any], max_age_s: float = 5.0) -> bool:
    """Whether ebbd shows this VM's agent connected with a report younger than ``max_age_s``."""
    agent = vm.get("agent") or {}
    age = agent.get("last_report_age_s")
    return bool(agent.get("connected")) and age is not None and age < max_age_s


# -- host pressure ---------------------------------------------------------------------
def host_share() -> float:
    """Freeable memory as a share of the host's memory, as ebbd computes it."""
    return hostmem.host_share()


def host_memory_kib() -> int:
    """The host's memory as ebbd counts it (MemTotal less reserved hugepages)."""
    return procfs.host_memory_kib(hostmem.meminfo_kib())


_ballast: Optional[hostmem.Ballast] = None


def squeeze_host(share: float, snapshot: hostmem.HostSnapshot) -> float:
    """Take memory (a locked ballast in this process) until freeable memory is ``share``
    of the host; return the share reached.

    Fails the test when the host cannot be brought under the policy's 20 % while
    keeping ~3 GiB free.
    """
    global _ballast, _keeper
    stop_pressure_keeper()
    if _ballast is None:
        _ballast = hostmem.Ballast()
    hostmem.squeeze(share, _ballast, keep_free_mib=KEEP_FREE_MIB)
    reached = host_share()
    if reached >= POLICY_THRESHOLD:
        held_mib = _ballast.kib // 1024
        release_host(snapshot)
        pytest.fail(
            f"could not bring freeable memory under {POLICY_THRESHOLD:.0%} of "
            f"{host_memory_kib() // 1024} MiB while keeping {KEEP_FREE_MIB} MiB free "
            f"(reached {reached:.1%} holding {held_mib} MiB of ballast)",
            pytrace=False,
        )
    _keeper = _PressureKeeper(share, _ballast)
    _keeper.start()
    return reached


class _PressureKeeper(threading.Thread):
    """Keeps the host squeezed: memory freed elsewhere on the host (other work ending,
    page cache dropped) would otherwise end the pressure mid-test."""

    def __init__(self, share: float, ballast: hostmem.Ballast) -> None:
        super().__init__(name="pressure-keeper", daemon=True)
        self.share = share
        self.ballast = ballast
        self.stop_event = threading.Event()
        self.resqueezed = 0

    def run(self) -> None:
        while not self.stop_event.wait(1.0):
            if host_share() >= POLICY_THRESHOLD:
                hostmem.squeeze(self.share, self.ballast, keep_free_mib=KEEP_FREE_MIB,
                                settle_s=0.2)
                self.resqueezed += 1


_keeper: Optional[_PressureKeeper] = None


def stop_pressure_keeper() -> None:
    global _keeper
    if _keeper is not None:
        _keeper.stop_event.set()
        _keeper.join(10)
        _keeper = None


def release_host(snapshot: hostmem.HostSnapshot) -> None:
    """End the pressure: the ballast freed, hugepages back to what they were."""
    stop_pressure_keeper()
    if _ballast is not None:
        _ballast.release()
    hostmem.set_hugepages(snapshot.nr_hugepages)


def both_fresh(ebbd: Ebbd, names: List[str]) -> Optional[Dict[str, Dict[str, Any]]]:
    status = ebbd.status()
    vms = {vm["name"]: vm for vm in status["vms"]}
    if all(name in vms and fresh(vms[name]) for name in names):
        return vms
    return None


def wait_agents(ebbd: Ebbd, guests: List[Guest], timeout_s: float = 60.0) -> Dict[str, Any]:
    names = [g.name for g in guests]
    return wait_for(lambda: both_fresh(ebbd, names), timeout_s,
                    "both agents connected with fresh reports",
                    last=lambda: [ebbd.vm(n) for n in names])


#: Size of the file read into a guest's page cache (the guests have 512 MiB).
COLD_FILE_MIB = 160
#: Where the cold-cache file lives: under the lab's state dir, which the guests
#: see over 9p with caching (their /tmp is tmpfs and would not count).
COLD_FILE = STATE_DIR / "e2e-cold-cache.bin"


def guest_meminfo(guest: Guest) -> Dict[str, int]:
    out = guest.run("cat", "/proc/meminfo").stdout
    values = {}
    for line in out.splitlines():
        name, _, rest = line.partition(":")
        if rest.split():
            values[name.strip()] = int(rest.split()[0])
    return values


def fill_cache(guest: Guest, path: Path) -> int:
    """Read ``path`` in the guest; return KiB its page cache grew by (fails if it did not).

    The guest's clean caches are dropped first: an earlier test may have read the
    same file, and pages already cached would not grow the cache again. Its
    memory is not compacted here: after the earlier tests' workloads its pages
    are scattered, and that the freed cache still reaches the host (free page
    reporting hands over only whole 2 MiB blocks) is the agent's compaction
    after a yield at work.
    """
    guest.run("sh", "-c", "sync; echo 1 > /proc/sys/vm/drop_caches")
    before = guest_meminfo(guest)["Cached"]
    guest.run("dd", f"if={path}", "of=/dev/null", "bs=1M", timeout_s=300)
    grown = guest_meminfo(guest)["Cached"] - before
    if grown < COLD_FILE_MIB * MIB // 2:
        pytest.fail(f"reading {path} in {guest.name} grew its page cache by only "
                    f"{grown // MIB} MiB: is the guest's root still 9p with caching?")
    return grown


def restart_agent(guest: Guest, *extra: str) -> None:
    guest.kill_agent()
    wait_for(lambda: not guest.agent_pids(), 30, f"the agent in {guest.name} to stop")
    guest.start_agent(*extra)
    wait_for(guest.agent_pids, 30, f"the agent in {guest.name} to start")
