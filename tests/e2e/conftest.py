"""End-to-end fixtures: two real lab guests, ebbd as a separate process, a host put back.

The session boots the lab once (``ebb-e2e-1`` and ``ebb-e2e-2``, 512 MiB each,
``ebb-agent`` running in both) and removes it at the end. Each test gets its
own ebbd (``ebbd_factory``), guests reset to a known state (agent running,
balloon at the maximum, no workload), and a host snapshot that is restored
after the test whatever happens: hugepages, KSM settings, swap.

Hugepages, swap and KSM are host-wide: the whole session holds the host-memory
lock (``hostmem.host_memory_lock``, the one the benchmark takes too), so two
harnesses on one machine never shrink the host at the same time. A session that
finds it held waits (``EBB_E2E_LOCK_TIMEOUT_S``, default 30 minutes), saying
for whom.

Missing prerequisites (root, qemu, libvirtd, a kernel) fail the tests with
what is missing and how to get it; they are never skipped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import pytest
from e2e_support import (
    AGENT_ARGS,
    COLD_FILE,
    COLD_FILE_MIB,
    GUEST_COUNT,
    GUEST_MEMORY_MIB,
    MIB,
    POLICY_THRESHOLD,
    PREFIX,
    RESULTS,
    STATE_DIR,
    Ebbd,
    Guest,
    _say,
    host_memory_kib,
    host_share,
    record,
    release_host,
    require_host,
)
from ebb.lab import hostmem
from ebb.lab.errors import LabError
from ebb.lab.manager import Lab, LabSettings

#: How long a test waits for someone else's memory pressure on the host to end.
QUIET_HOST_WAIT_S = 300.0

#: How long the session waits for another harness's host-memory lock.
HOST_LOCK_TIMEOUT_S = float(os.environ.get("EBB_E2E_LOCK_TIMEOUT_S", "1800"))


@pytest.fixture(scope="session")
def host_lock(request: pytest.FixtureRequest) -> Iterator[None]:
    """The host-memory lock, held from before the first change to after the last restore."""
    require_host()
    try:
        with hostmem.host_memory_lock(PREFIX, timeout_s=HOST_LOCK_TIMEOUT_S,
                                      say=lambda m: _say(request.config, m)):
            yield
    except LabError as err:
        pytest.fail(str(err), pytrace=False)


@pytest.fixture(scope="session")
def host_snapshot(request: pytest.FixtureRequest,
                  host_lock: None) -> Iterator[hostmem.HostSnapshot]:
    """The host as it was before the whole run; put back at the very end too."""
    snapshot = hostmem.HostSnapshot.take()
    yield snapshot
    changed = snapshot.restore()
    if changed:
        _say(request.config, "host put back: " + "; ".join(changed))


@pytest.fixture(scope="session")
def lab(request: pytest.FixtureRequest, host_snapshot: hostmem.HostSnapshot) -> Iterator[Lab]:
    """Two booted lab guests with agents, for the whole session."""
    the_lab = Lab(LabSettings(state_dir=STATE_DIR, prefix=PREFIX))
    keep = os.environ.get("EBB_E2E_KEEP_LAB") == "1"
    running = [g for g in the_lab.status() if g.state == "running"]
    if keep and len(running) == GUEST_COUNT:
        # While developing tests: reuse the guests a previous run kept.
        _say(request.config, "reusing the running lab (EBB_E2E_KEEP_LAB=1)")
        yield the_lab
        return
    the_lab.down()  # whatever an interrupted earlier run left
    started = time.monotonic()
    try:
        the_lab.up(count=GUEST_COUNT, memory_mib=GUEST_MEMORY_MIB, agent_args=AGENT_ARGS,
                   timeout_s=300, progress=lambda m: _say(request.config, m))
    except LabError as err:
        the_lab.down()
        pytest.fail(f"the lab did not come up: {err}", pytrace=False)
    boot_s = time.monotonic() - started
    record("lab_boot_s", round(boot_s, 1))
    _say(request.config, f"lab of {GUEST_COUNT} guests up in {boot_s:.1f} s")
    yield the_lab
    if not keep:
        removed = the_lab.down()
        _say(request.config, "lab removed: " + ", ".join(removed))


@pytest.fixture
def host(host_snapshot: hostmem.HostSnapshot) -> Iterator[hostmem.HostSnapshot]:
    """A snapshot of the host restored after this test (hugepages, KSM, swap)."""
    snapshot = hostmem.HostSnapshot.take()
    yield snapshot
    release_host(snapshot)
    snapshot.restore()


@pytest.fixture
def guests(lab: Lab, host: hostmem.HostSnapshot) -> Iterator[List[Guest]]:
    """Both guests reset to a known state before the test and cleaned after it."""
    # These tests decide when the host is short of memory. On a shared machine someone
    # else may be shrinking it (hugepages are host-wide): wait for that to end, and say
    # so plainly if it does not, rather than fail later in a confusing way.
    deadline = time.monotonic() + QUIET_HOST_WAIT_S
    while host_share() < POLICY_THRESHOLD + 0.1:
        if time.monotonic() > deadline:
            info = hostmem.meminfo_kib()
            pytest.fail(
                f"the host is already short of memory before the test: freeable "
                f"{host_share():.0%} of {host_memory_kib() // 1024} MiB, nr_hugepages "
                f"{info.get('HugePages_Total')} (something else on this machine is "
                f"shrinking it); waited {QUIET_HOST_WAIT_S:.0f} s", pytrace=False)
        time.sleep(5)
    pair = [Guest(lab, name) for name in lab.guest_names(GUEST_COUNT)]
    for guest in pair:
        if not guest.dom.isActive():
            pytest.fail(f"{guest.name} is not running any more; see {guest.shell.share_dir}/..")
        guest.reset()
    yield pair
    for guest in pair:
        with contextlib.suppress(Exception):
            guest.stop_jobs()


@pytest.fixture
def ebbd_factory(request: pytest.FixtureRequest,
                 lab: Lab) -> Iterator[Callable[..., Ebbd]]:
    """Make (and start) ebbd processes; all are stopped after the test."""
    made: List[Ebbd] = []
    base = RESULTS / request.node.name
    shutil.rmtree(base, ignore_errors=True)
    shutil.rmtree("/run/ebb-e2e", ignore_errors=True)

    def make(start: bool = True, **settings: Dict[str, Any]) -> Ebbd:
        workdir = base / f"ebbd-{len(made) + 1}"
        workdir.mkdir(parents=True, exist_ok=True)
        daemon = Ebbd(workdir, settings)
        made.append(daemon)
        if start:
            daemon.start()
        return daemon

    yield make
    for daemon in made:
        with contextlib.suppress(BaseException):
            daemon.stop()


@pytest.fixture(scope="session")
def cold_file() -> Iterator[Path]:
    """A file of random bytes the guests can read over 9p (random: nothing merges it)."""
    path = COLD_FILE
    if not path.exists() or path.stat().st_size != COLD_FILE_MIB * MIB * 1024:
        with open(path, "wb") as out:
            for _ in range(COLD_FILE_MIB):
                out.write(os.urandom(1024 * 1024))
    path.chmod(0o644)
    yield path
    path.unlink(missing_ok=True)
