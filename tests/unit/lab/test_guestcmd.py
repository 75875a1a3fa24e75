"""Commands through the guest's share: the host side and the guest's runner together."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from ebb.lab.guestcmd import GuestShell
from ebb.lab.guestinit import Runner


def _serve(runner: Runner, stop: threading.Event) -> None:
    while not stop.is_set():
        runner.reap()
        runner.take_requests()
        runner.enforce_deadlines()
        time.sleep(0.01)


def test_run_returns_output_and_status(tmp_path: Path) -> None:
    runner = Runner({"name": "t", "agent": "0"}, share=str(tmp_path))
    runner.boot()
    stop = threading.Event()
    thread = threading.Thread(target=_serve, args=(runner, stop), daemon=True)
    thread.start()
    try:
        shell = GuestShell("t", tmp_path)
        result = shell.run(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout_s=10)
        assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
        missing = shell.run(["/no/such/program"], timeout_s=10)
        assert missing.returncode == 127 and "cannot start" in missing.stderr
        slow = shell.run(["sleep", "30"], timeout_s=0.3)
        assert slow.returncode == -9  # killed at its timeout
        job = shell.spawn(["sleep", "30"])
        assert job.pid is not None and job.returncode is None
        shell.signal(job, 15)
        assert shell.wait(job.job_id, 10).returncode == -15
    finally:
        stop.set()
        thread.join(5)
