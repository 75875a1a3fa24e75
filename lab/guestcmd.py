"""Running a command inside a lab guest, from the host.

The host writes a request into the guest's share (``STATE/guests/NAME/share``,
a read-write 9p mount in the guest); :mod:`ebb.lab.guestinit` in the guest
polls for requests every 0.1 s, runs them and writes the output, pid and exit
status back into the share. See guestinit's docstring for the file names.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ebb.lab.errors import LabError

LOG = logging.getLogger(__name__)

POLL_S = 0.05


@dataclass
class CommandResult:
    """What a finished (or detached) command left: exit status and output."""

    job_id: str
    returncode: Optional[int]
    stdout: str
    stderr: str
    pid: Optional[int] = None


class GuestShell:
    """Commands for one guest through its share folder."""

    def __init__(self, name: str, share_dir: Path) -> None:
        self.name = name
        self.share_dir = Path(share_dir)

    @property
    def out_dir(self) -> Path:
        return self.share_dir / "out"

    def status(self) -> Optional[Dict[str, object]]:
        """The guest runner's ``status.json``, or None before it first wrote one."""
        try:
            data = json.loads((self.share_dir / "status.json").read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def submit(self, argv: Sequence[str], timeout_s: Optional[float] = None,
               env: Optional[Dict[str, str]] = None, job_id: Optional[str] = None) -> str:
        """Hand ``argv`` to the guest; return the job id without waiting."""
        cmd_dir = self.share_dir / "cmd"
        if not cmd_dir.is_dir():
            raise LabError(f"{self.name} has no command folder {cmd_dir}: is the guest up?",
                           hint="ebbctl lab status; ebbctl lab up")
        job_id = job_id or f"{int(time.time() * 1000)}-{uuid.uuid4().hex[:8]}"
        request = {"argv": list(argv), "timeout_s": timeout_s, "env": env or {}}
        tmp = cmd_dir / f".{job_id}.tmp"
        tmp.write_text(json.dumps(request))
        tmp.chmod(0o644)
        os.replace(tmp, cmd_dir / f"{job_id}.json")
        return job_id

    def _read(self, job_id: str, suffix: str) -> str:
        try:
            return (self.out_dir / f"{job_id}{suffix}").read_text(errors="replace")
        except OSError:
            return ""

    def result(self, job_id: str) -> CommandResult:
        """What is known of ``job_id`` now (``returncode`` None while it runs)."""
        rc_text = self._read(job_id, ".rc").strip()
        pid_text = self._read(job_id, ".pid").strip()
        return CommandResult(
            job_id=job_id,
            returncode=int(rc_text) if rc_text else None,
            stdout=self._read(job_id, ".out"),
            stderr=self._read(job_id, ".err"),
            pid=int(pid_text) if pid_text else None,
        )

    def wait(self, job_id: str, timeout_s: float, started: bool = False) -> CommandResult:
        """Wait until the job ended (or only started, with ``started``); LabError on timeout."""
        deadline = time.monotonic() + timeout_s
        suffix = ".pid" if started else ".rc"
        while time.monotonic() < deadline:
            if (self.out_dir / f"{job_id}{suffix}").exists() or (
                self.out_dir / f"{job_id}.rc").exists():
                return self.result(job_id)
            time.sleep(POLL_S)
        what = "start" if started else "finish"
        raise LabError(
            f"command {job_id} did not {what} in {self.name} within {timeout_s:.0f} s",
            hint=f"see {self.share_dir}/status.json and the guest's console.log",
        )

    def run(self, argv: Sequence[str], timeout_s: float = 60.0,
            env: Optional[Dict[str, str]] = None) -> CommandResult:
        """Run ``argv`` in the guest and wait for it (killed in the guest at the timeout)."""
        job_id = self.submit(argv, timeout_s=timeout_s, env=env)
        return self.wait(job_id, timeout_s + 10.0)

    def spawn(self, argv: Sequence[str], env: Optional[Dict[str, str]] = None,
              timeout_s: Optional[float] = None, wait_s: float = 30.0) -> CommandResult:
        """Start ``argv`` in the guest and return once it runs (pid known)."""
        job_id = self.submit(argv, timeout_s=timeout_s, env=env)
        return self.wait(job_id, wait_s, started=True)

    def signal(self, job: CommandResult, signum: int = 15, timeout_s: float = 30.0) -> None:
        """Send ``signum`` to the process group of a spawned job."""
        if job.pid is None:
            return
        self.run(["kill", "-s", str(signum), "--", f"-{job.pid}"], timeout_s=timeout_s)

    def cleanup(self, job_ids: List[str]) -> None:
        for job_id in job_ids:
            for suffix in (".out", ".err", ".pid", ".rc"):
                with contextlib.suppress(OSError):
                    (self.out_dir / f"{job_id}{suffix}").unlink()
