"""The lab guest's first process after the initramfs: starts the agent, runs commands.

This runs *inside* a lab guest, as PID 1, chrooted into the host's root file
system (mounted read-only over 9p), with the project's environment. It uses the
standard library only and imports nothing else of ebb, so a broken ebb module
cannot keep a guest from booting or from answering commands.

What it does:

- starts ``ebb-agent`` (unless ``ebb.agent=0`` is on the kernel command line) and
  an optional workload (``ebb.run="CMD ARGS"``);
- serves the host's commands through the guest's share, a read-write 9p mount of
  ``STATE/guests/NAME/share`` at :data:`SHARE_MOUNT` (see :mod:`ebb.lab.guestcmd`
  for the host side): a request ``cmd/ID.json`` is claimed, its process started
  with output in ``out/ID.out`` / ``out/ID.err``, its pid written to ``out/ID.pid``
  and its exit status to ``out/ID.rc``;
- writes ``status.json`` (uptime, agent pid and whether it runs) every second;
- reaps every orphan, as a PID 1 must.

A file share is slower than a socket by a poll interval (0.1 s) but has no
connection state: the host side can come and go, and neither end can wedge the
other.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional

LOG = logging.getLogger("ebb-lab-guest")

SHARE_MOUNT = "/run/ebb-lab"
POLL_INTERVAL_S = 0.1
STATUS_INTERVAL_S = 1.0
# Where lab wrappers (ebb-agent, memknobs, ...) live; set by the host from ebb.bin=.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def parse_cmdline(text: str) -> Dict[str, str]:
    """The ``ebb.*`` parameters of a kernel command line, keys without the prefix."""
    params: Dict[str, str] = {}
    try:
        words = shlex.split(text)
    except ValueError:
        words = text.split()
    for word in words:
        key, sep, value = word.partition("=")
        if sep and key.startswith("ebb."):
            params[key[4:]] = value
    return params


def _write_atomic(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        handle.write(text)
    os.rename(tmp, path)


def _uptime_s() -> float:
    try:
        with open("/proc/uptime") as handle:
            return float(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return -1.0


def _console(message: str) -> None:
    """A line on the serial console, which the host keeps as console.log."""
    try:
        with open("/dev/console", "w") as console:
            console.write(f"ebb-lab: {message}\n")
    except OSError:
        pass


class Job:
    """One process the runner started: a command, the agent or the workload."""

    def __init__(self, job_id: str, argv: List[str], popen: subprocess.Popen[bytes],
                 deadline: Optional[float]) -> None:
        self.job_id = job_id
        self.argv = argv
        self.popen = popen
        self.deadline = deadline
        self.returncode: Optional[int] = None


class Runner:
    """The loop of PID 1: start jobs, reap children, answer the share."""

    def __init__(self, params: Dict[str, str], share: str = SHARE_MOUNT) -> None:
        self.params = params
        self.share = share
        self.cmd_dir = os.path.join(share, "cmd")
        self.out_dir = os.path.join(share, "out")
        self.jobs: Dict[int, Job] = {}
        self.agent_pid: Optional[int] = None
        self.env = dict(os.environ)
        path = DEFAULT_PATH
        if params.get("bin"):
            path = params["bin"] + ":" + path
        self.env.update({"PATH": path, "HOME": "/root", "LANG": "C.UTF-8",
                         "EBB_LAB_GUEST": params.get("name", "")})
        self.env.pop("PYTHONHOME", None)

    # -- starting and reaping -------------------------------------------------
    def start(self, job_id: str, argv: List[str], timeout_s: Optional[float] = None,
              env: Optional[Dict[str, str]] = None) -> Optional[Job]:
        """Start ``argv`` with its output in ``out/JOB.out``/``.err``; None if it cannot."""
        out = os.path.join(self.out_dir, job_id)
        job_env = dict(self.env)
        if env:
            job_env.update(env)
        try:
            with open(out + ".out", "wb") as stdout, open(out + ".err", "wb") as stderr:
                popen = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                    env=job_env, cwd="/", start_new_session=True, close_fds=True,
                )
        except OSError as err:
            with open(out + ".err", "a") as stderr_text:
                stderr_text.write(f"ebb-lab: cannot start {argv!r}: {err}\n")
            _write_atomic(out + ".rc", "127\n")
            return None
        deadline = time.monotonic() + timeout_s if timeout_s else None
        job = Job(job_id, argv, popen, deadline)
        self.jobs[popen.pid] = job
        _write_atomic(out + ".pid", f"{popen.pid}\n")
        return job

    def reap(self) -> None:
        """Collect every exited child (ours and orphans) without blocking."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            job = self.jobs.pop(pid, None)
            if job is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            job.returncode = code
            job.popen.returncode = code  # so Popen never waits for it again
            if pid == self.agent_pid:
                _console(f"ebb-agent (pid {pid}) exited with {code}")
            _write_atomic(os.path.join(self.out_dir, job.job_id + ".rc"), f"{code}\n")

    def enforce_deadlines(self) -> None:
        now = time.monotonic()
        for pid, job in list(self.jobs.items()):
            if job.deadline is not None and now > job.deadline:
                job.deadline = None
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGKILL)

    # -- the share --------------------------------------------------------------
    def take_requests(self) -> None:
        try:
            names = sorted(os.listdir(self.cmd_dir))
        except OSError:
            return
        for name in names:
            if not name.endswith(".json"):
                continue
            path = os.path.join(self.cmd_dir, name)
            job_id = name[: -len(".json")]
            try:
                with open(path) as handle:
                    request = json.load(handle)
                os.unlink(path)
            except (OSError, ValueError) as err:
                LOG.warning("bad request %s: %s", name, err)
                with contextlib.suppress(OSError):
                    os.unlink(path)
                continue
            argv = request.get("argv")
            if not isinstance(argv, list) or not argv:
                _write_atomic(os.path.join(self.out_dir, job_id + ".rc"), "2\n")
                continue
            self.start(job_id, [str(a) for a in argv], request.get("timeout_s"),
                       request.get("env"))

    def write_status(self) -> None:
        agent_running = self.agent_pid is not None and self.agent_pid in self.jobs
        status = {
            "uptime_s": _uptime_s(),
            "agent_pid": self.agent_pid,
            "agent_running": agent_running,
            "jobs": len(self.jobs),
            "time": time.time(),
        }
        try:
            _write_atomic(os.path.join(self.share, "status.json"), json.dumps(status) + "\n")
        except OSError as err:
            LOG.warning("cannot write status: %s", err)

    # -- main loop ------------------------------------------------------------
    def boot(self) -> None:
        for folder in (self.cmd_dir, self.out_dir):
            os.makedirs(folder, exist_ok=True)
        bin_dir = self.params.get("bin", "")
        if self.params.get("agent", "1") != "0":
            agent = os.path.join(bin_dir, "ebb-agent") if bin_dir else "ebb-agent"
            args = shlex.split(self.params.get("agent_args", ""))
            job = self.start("agent", [agent, *args])
            if job is not None:
                self.agent_pid = job.popen.pid
                _console(f"ebb-agent started (pid {self.agent_pid})")
        if self.params.get("run"):
            self.start("workload", shlex.split(self.params["run"]))
            _console(f"workload started: {self.params['run']}")

    def loop(self) -> None:
        next_status = 0.0
        while True:
            self.reap()
            self.take_requests()
            self.enforce_deadlines()
            now = time.monotonic()
            if now >= next_status:
                self.write_status()
                next_status = now + STATUS_INTERVAL_S
            time.sleep(POLL_INTERVAL_S)


def _power_off() -> None:
    try:
        subprocess.call(["/bin/busybox", "poweroff", "-f"])
    finally:
        os._exit(1)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="ebb-lab-guest: %(message)s")
    # No signal is set to SIG_IGN here: ignored signals would be inherited by every
    # process started (an agent deaf to SIGTERM). As PID 1 the kernel already
    # drops signals that have no handler.
    try:
        with open("/proc/cmdline") as handle:
            params = parse_cmdline(handle.read())
        runner = Runner(params)
        runner.boot()
        _console(f"runner up after {_uptime_s():.1f} s")
        runner.loop()
    except BaseException as err:  # PID 1 must not return: say why and stop the VM
        _console(f"runner failed: {err!r}; powering off")
        if os.getpid() == 1:
            _power_off()
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
