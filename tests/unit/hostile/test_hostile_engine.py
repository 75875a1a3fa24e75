"""A hostile guest against the engine and governor, and threads that must not die quietly.

- A guest that flaps its need (or alternates hello and need) at 48 frames/s must
  not make the engine tick at that rate, and extra ticks must not take more memory
  from anyone than the per-interval limits allow in the same wall time.
- A guest's offer or need beyond what it has (or can have) is capped before the
  policy sees it, and ``ebbctl explain`` says so.
- Every ebbd thread starts through the one helper that reports a crash, and the
  libvirt supervisor survives any exception.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

HOST = Path(__file__).resolve().parents[3] / "host"


# --- threads ----------------------------------------------------------------------------


def test_every_host_thread_starts_through_the_crash_reporting_helper() -> None:
    raw = [
        f"{path.relative_to(HOST.parent)}:{n}"
        for path in sorted(HOST.rglob("*.py"))
        if path.name != "threads.py"
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(r"threading\.Thread\(|Thread\(target", line)
    ]
    assert raw == [], f"threads started without ebb.host.threads.start_thread: {raw}"


def _wait_for(predicate: Any, timeout_s: float = 15.0) -> bool:
    """Poll until ``predicate()`` holds; the deadline only matters when it never does."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


def test_libvirt_supervisor_keeps_reconnecting_after_an_unexpected_exception() -> None:
    libvirt = pytest.importorskip("libvirt")
    from ebb.host.hypervisor import Hypervisor

    attempts: list[int] = []

    def opener(uri: str) -> Any:
        attempts.append(1)
        if len(attempts) < 3:
            raise RuntimeError("surprise from a libvirt binding")
        return libvirt.open(uri)

    crashes: list[BaseException] = []
    hv = Hypervisor("test:///default", relist_interval_s=60.0, reconnect_initial_s=0.01,
                    reconnect_max_s=0.02, qemu_run_dir="/nonexistent", opener=opener)
    hv.start(on_crash=crashes.append)
    try:
        assert hv.wait_connected(15.0), "the supervisor gave up after an unexpected exception"
        assert len(attempts) == 3
        assert crashes == []
    finally:
        hv.stop()


def test_a_dying_libvirt_supervisor_is_reported() -> None:
    pytest.importorskip("libvirt")
    from ebb.host.hypervisor import Hypervisor

    class Fatal(BaseException):
        pass

    def opener(uri: str) -> Any:
        raise Fatal("not an Exception: nothing may swallow it")

    crashes: list[BaseException] = []
    hv = Hypervisor("test:///default", relist_interval_s=60.0, reconnect_initial_s=0.01,
                    reconnect_max_s=0.02, qemu_run_dir="/nonexistent", opener=opener)
    hv.start(on_crash=crashes.append)
    try:
        assert _wait_for(lambda: len(crashes) == 1)
        assert isinstance(crashes[0], Fatal)
    finally:
        hv.stop()
