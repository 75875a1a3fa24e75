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


# --- a guest that drives the tick rate -------------------------------------------------------

GIB_KIB = 1024 * 1024
FRAMES_PER_S = 48  # under the default flood limit of 50
SIMULATED_S = 10.0
INTERVAL_S = 2.0

#: Whatever the policy wants, the governor's limits decide: this one asks for every
#: guest without an agent to be emptied, every tick.
SQUEEZE_POLICY = """
(with Guests g (if (== (or g.agent_connected 0) 1) 0 (g.Control "balloon_target" 0)))
"""


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class SessionChannels:
    """Real guest sessions fed frames by the test, on the engine's fake clock."""

    def __init__(self, clock: FakeClock) -> None:
        from ebb.host.channels import ChannelLimits

        self.clock = clock
        self.limits = ChannelLimits()
        self.sessions: dict[str, Any] = {}
        self.decisions: list[tuple[str, int, str]] = []

    def add(self, vm: str, on_need: Any) -> Any:
        from ebb.host.channels.session import GuestSession

        session = GuestSession(vm, self.limits, on_need=on_need)
        session.connected(self.clock())
        self.sessions[vm] = session
        return session

    def feed(self, vm: str, msg: Any) -> None:
        from ebb.protocol import encode_message

        self.sessions[vm].feed(encode_message(msg), self.clock(), self.clock())

    def snapshot(self) -> dict[str, Any]:
        return {vm: s.snapshot(self.clock(), connected=True) for vm, s in self.sessions.items()}

    def set_guests(self, paths: Any) -> None:
        pass

    def send_decision(self, vm: str, balloon_target_kib: int, reason: str) -> None:
        self.decisions.append((vm, balloon_target_kib, reason))


class FlapRig:
    """An engine on a fake clock: one guest without an agent, one agent that flaps."""

    def __init__(self, tmp_path: Path) -> None:
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "host" / "engine"))
        from ebb.host.collectors import HostCollector
        from ebb.host.controllers import BalloonController
        from ebb.host.engine import Engine, EngineSettings
        from ebb.host.governor import Governor, GovernorConfig
        from ebb.host.policy import PolicyRunner
        from ebb_core_fakes import FakeHypervisor, FakeVm, make_host_tree, write_policy

        self.clock = FakeClock()
        proc, sys_root = make_host_tree(tmp_path)
        policy_dir = tmp_path / "policy.d"
        write_policy(policy_dir, "50-squeeze.policy", SQUEEZE_POLICY)
        runner = PolicyRunner()
        assert runner.reload(policy_dir) == []
        self.no_agent = FakeVm("no-agent", max_kib=8 * GIB_KIB, cur_kib=7782 * 1024)
        self.flapper = FakeVm("flapper", max_kib=4 * GIB_KIB, cur_kib=2 * GIB_KIB)
        self.hypervisor = FakeHypervisor([self.no_agent, self.flapper])
        self.channels = SessionChannels(self.clock)
        self.governor_config = GovernorConfig(default_floor_kib=512 * 1024,
                                              step_interval_s=INTERVAL_S)
        self.engine = Engine(
            EngineSettings(interval_s=INTERVAL_S, ksm_enabled=False),
            host=HostCollector(proc, sys_root),
            hypervisor=self.hypervisor,
            channels=self.channels,
            runner=runner,
            governor=Governor(self.governor_config),
            balloon=BalloonController(self.hypervisor, clock=self.clock, wall_clock=self.clock),
            clock=self.clock,
            wall_clock=self.clock,
        )
        self.channels.add("flapper", self.engine.on_need)

    def hello(self) -> Any:
        from ebb.protocol import Hello

        return Hello(agent_version="hostile", protocol_versions=(1,),
                     capabilities=("offer", "need"))

    def run(self, frame: Any) -> int:
        """``frame(i)`` is the guest's i-th message, sent at FRAMES_PER_S for
        SIMULATED_S; the engine's loop runs between frames. Returns the ticks."""
        self.channels.feed("flapper", self.hello())
        start, ticks = self.clock.now, 0
        for i in range(int(FRAMES_PER_S * SIMULATED_S)):
            self.clock.now = start + i / FRAMES_PER_S
            message = frame(i)
            if message is not None:
                self.channels.feed("flapper", message)
            ticks += self.engine.tick_if_due()
        return ticks


def _need(i: int) -> Any:
    from ebb.protocol import Need

    return Need(seq=i + 1, kib=64 * 1024 * (1 + i % 2), urgency=("low", "high")[i % 2],
                reason="flapping")


#: At most one regular tick per interval plus one early tick per guest per interval.
MAX_TICKS = 2 * (int(SIMULATED_S / INTERVAL_S) + 1)


@pytest.mark.parametrize("pattern", ["need flapping", "hello and need"])
def test_a_guest_flapping_at_48_frames_per_s_cannot_drive_the_tick_rate(
    tmp_path: Path, pattern: str, caplog: pytest.LogCaptureFixture
) -> None:
    rig = FlapRig(tmp_path)
    if pattern == "need flapping":
        frame = _need
    else:
        def frame(i: int) -> Any:
            return rig.hello() if i % 2 else _need(i)
    caplog.set_level("INFO")
    before_kib = rig.no_agent.cur_kib
    ticks = rig.run(frame)
    assert ticks <= MAX_TICKS, f"{ticks} ticks in {SIMULATED_S:g} s"
    # The guest without an agent loses no more than the limits allow in that time,
    # however many ticks there were: a step per interval, the first one at once.
    step_kib = int(rig.governor_config.max_inflate_share * rig.no_agent.max_kib)
    allowed_kib = step_kib * (1 + SIMULATED_S / INTERVAL_S)
    assert before_kib - rig.no_agent.cur_kib <= allowed_kib
    # The flapping is not logged at the frame rate either.
    lines = [r for r in caplog.records if r.levelno >= 20 and "flapper" in r.getMessage()]
    assert len(lines) <= 2 * (SIMULATED_S / INTERVAL_S + 1), [r.getMessage() for r in lines[:5]]


def test_extra_ticks_take_no_more_than_regular_ticks(tmp_path: Path) -> None:
    """The governor's budget is per interval of time: ticking at 48/s (whatever
    made it tick) takes what ticking every interval would."""
    from ebb.host.governor import Governor, GuestView

    def loss(ticks_per_s: float) -> int:
        governor = Governor(FlapRig(tmp_path).governor_config)
        cur, now = 7782 * 1024, 0.0
        while now <= SIMULATED_S:
            guest = GuestView("no-agent", balloon_cur_kib=cur, balloon_max_kib=8 * GIB_KIB)
            (decision,) = governor.decide(now, [guest], {"no-agent": 0})
            if decision.target_kib is not None:
                cur = decision.target_kib
            now += 1 / ticks_per_s
        return 7782 * 1024 - cur

    assert loss(48) <= loss(1 / INTERVAL_S) + 1024
