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
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from ebb.host.observe.replay import policy_input
from ebb.host.tick import host_spare_from_policy

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "host" / "engine"))

from ebb_core_fakes import (
    FakeHypervisor,
    FakeVm,
    RecordingChannels,
    make_host_tree,
    write_policy,
)

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
        from ebb.host.collectors import HostCollector
        from ebb.host.controllers import BalloonController
        from ebb.host.engine import Engine, EngineSettings
        from ebb.host.governor import Governor, GovernorConfig
        from ebb.host.policy import PolicyRunner

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
    from ebb.host.governor import Governor, GuestView, all_applied

    def loss(ticks_per_s: float) -> int:
        governor = Governor(FlapRig(tmp_path).governor_config)
        cur, now = 7782 * 1024, 0.0
        while now <= SIMULATED_S:
            guest = GuestView("no-agent", balloon_cur_kib=cur, balloon_max_kib=8 * GIB_KIB)
            (decision,) = governor.decide(now, [guest], {"no-agent": 0})
            governor.commit(all_applied([decision]))
            if decision.target_kib is not None:
                cur = decision.target_kib
            now += 1 / ticks_per_s
        return 7782 * 1024 - cur

    assert loss(48) <= loss(1 / INTERVAL_S) + 1024


# --- claims beyond what a guest has ------------------------------------------------------------

KIB_MAX = 2**53 - 1  # the largest KiB figure the protocol lets through
NOW_S = 5000.0


def _claims_rig(tmp_path: Path, vms: list[Any], states: dict[str, Any], *, free_kib: int,
                policy: str | None = None) -> Any:
    from ebb.host.collectors import HostCollector
    from ebb.host.controllers import BalloonController
    from ebb.host.engine import Engine, EngineSettings
    from ebb.host.governor import Governor, GovernorConfig
    from ebb.host.policies import policy_dir
    from ebb.host.policy import PolicyRunner

    proc, sys_root = make_host_tree(tmp_path, total_kib=16 * GIB_KIB, free_kib=free_kib)
    runner = PolicyRunner()
    if policy is None:
        assert runner.reload(policy_dir("cooperative")) == []
    else:
        write_policy(tmp_path / "policy.d", "50-test.policy", policy)
        assert runner.reload(tmp_path / "policy.d") == []
    hypervisor = FakeHypervisor(vms)
    channels = RecordingChannels()
    channels.states.update(states)
    return Engine(
        EngineSettings(interval_s=2.0, ksm_enabled=False),
        host=HostCollector(proc, sys_root),
        hypervisor=hypervisor,
        channels=channels,
        runner=runner,
        governor=Governor(GovernorConfig(default_floor_kib=512 * 1024)),
        balloon=BalloonController(hypervisor),
        clock=lambda: NOW_S,
        wall_clock=lambda: 0.0,
    ), hypervisor


def _agent_state(vm: str, *, offer_kib: int = 0, need_kib: int = 0, **report: Any) -> Any:
    from ebb.host.channels import GuestChannelState
    from ebb.host.channels.state import (
        ReceivedNeed,
        ReceivedOffer,
        ReceivedReport,
        SessionState,
    )
    from ebb.lab.simulated import DEFAULT_REPORT
    from ebb.protocol import Need, Offer, Report

    return GuestChannelState(
        vm=vm, socket_path=f"/run/{vm}.sock", session=SessionState.ACTIVE, connected=True,
        agent_active=True, stale=False,
        latest=ReceivedReport(mono=NOW_S, wall=0.0,
                              report=Report(seq=1, **{**DEFAULT_REPORT, **report})),
        offer=ReceivedOffer(mono=NOW_S, wall=0.0, offer=Offer(seq=2, kib=offer_kib))
        if offer_kib else None,
        need=ReceivedNeed(mono=NOW_S, wall=0.0, need=Need(seq=3, kib=need_kib, urgency="high",
                                                         reason="trust me"))
        if need_kib else None,
    )


def test_an_offer_beyond_the_balloon_does_not_spare_the_others_at_critical_pressure(
    tmp_path: Path,
) -> None:

    # The liar sits at its floor and offers 2^53 KiB; the host is critical (3 % freeable).
    liar = FakeVm("liar", max_kib=4 * GIB_KIB, cur_kib=512 * 1024, channel_path="/run/liar.sock")
    plain = FakeVm("plain", max_kib=4 * GIB_KIB, cur_kib=4 * GIB_KIB)
    engine, hypervisor = _claims_rig(
        tmp_path, [liar, plain], {"liar": _agent_state("liar", offer_kib=KIB_MAX)},
        free_kib=int(0.03 * 16 * GIB_KIB),
    )
    record = engine.tick()
    decisions = {d["vm"]: d for d in record.decisions}
    assert decisions["plain"]["kind"] == "inflate", decisions["plain"]["reason"]
    assert any(vm == "plain" and kib < 4 * GIB_KIB for vm, kib in hypervisor.balloon_calls)
    # The policy saw what the liar can give: nothing.
    liar_sample = next(g for g in record.state["guests"] if g["props"]["name"] == "liar")
    assert liar_sample["samples"][-1]["offer"] == 0
    # explain says the claim was capped.
    explained = engine.journal("liar")[-1]
    assert "offer of" in explained["reason"] and "capped at 0 KiB" in explained["reason"]


def test_a_need_nothing_shows_gets_a_bounded_amount(tmp_path: Path) -> None:

    vm = FakeVm("greedy", max_kib=4 * GIB_KIB, cur_kib=2 * GIB_KIB,
                channel_path="/run/greedy.sock")
    # No PSI, no faults, MemAvailable comfortable: nothing shows a shortage.
    state = _agent_state("greedy", need_kib=KIB_MAX, mem_total_kib=2 * GIB_KIB,
                         mem_available_kib=GIB_KIB)
    engine, _ = _claims_rig(tmp_path, [vm], {"greedy": state}, free_kib=8 * GIB_KIB)
    record = engine.tick()
    (decision,) = record.decisions
    given = (decision["target_kib"] or 2 * GIB_KIB) - 2 * GIB_KIB
    reserve = max(64 * 1024, int(0.05 * 2 * GIB_KIB))
    assert 0 < given <= reserve, decision["reason"]
    sample = record.state["guests"][0]["samples"][-1]
    assert sample["need"] == reserve
    explained = engine.journal("greedy")[-1]
    assert "need of" in explained["reason"] and "nothing in its reports shows" in (
        explained["reason"])


def test_a_need_shown_by_stalls_is_believed_up_to_what_the_vm_can_have(tmp_path: Path) -> None:

    vm = FakeVm("busy", max_kib=4 * GIB_KIB, cur_kib=3 * GIB_KIB, channel_path="/run/busy.sock")
    state = _agent_state("busy", need_kib=KIB_MAX, psi_some_avg10=40.0)
    engine, _ = _claims_rig(tmp_path, [vm], {"busy": state}, free_kib=8 * GIB_KIB)
    record = engine.tick()
    assert record.state["guests"][0]["samples"][-1]["need"] == GIB_KIB  # max - current
    assert "more than the VM can have" in engine.journal("busy")[-1]["reason"]


def test_memory_is_never_given_beyond_what_the_host_has_above_its_reserve(tmp_path: Path) -> None:

    # A policy that gives every guest its maximum; the host has 100 MiB above its
    # 10 % reserve (1.6 GiB of 16 GiB).
    give_all = '(with Guests g (g.Control "balloon_target" g.balloon_max))'
    vms = [FakeVm(f"vm{i}", max_kib=4 * GIB_KIB, cur_kib=2 * GIB_KIB) for i in range(3)]
    spare_kib = 100 * 1024
    reserve_kib = int(0.10 * 16 * GIB_KIB)
    engine, hypervisor = _claims_rig(tmp_path, vms, {}, free_kib=reserve_kib + spare_kib,
                                     policy=give_all)
    record = engine.tick()
    given = sum(kib - 2 * GIB_KIB for _, kib in hypervisor.balloon_calls)
    assert 0 < given <= spare_kib
    assert any(d["rule"] == "host_reserve" for d in record.decisions)


def test_a_replay_applies_the_host_reserve_as_ebbd_did() -> None:
    state = {"host": {"samples": [{"mem_free": 1700 * 1024, "mem_available": 16 * GIB_KIB}]}}
    spare = host_spare_from_policy(policy_input(state), 0.10)
    assert spare == int(1700 * 1024 - 0.10 * 16 * GIB_KIB)
    assert host_spare_from_policy(policy_input({"host": {"samples": []}}), 0.10) is None


@pytest.mark.parametrize(
    "report,rates,believed",
    [
        # Nothing shows a shortage: one reserve (5 % of 4 GiB).
        ({"psi_some_avg10": 0.0, "mem_available_kib": 3 * GIB_KIB}, (0.0, 0.0, 0.0),
         int(0.05 * 4 * GIB_KIB)),
        # Only MemAvailable is low: two reserves.
        ({"psi_some_avg10": 0.0, "mem_available_kib": 100 * 1024}, (0.0, 0.0, 0.0),
         2 * int(0.05 * 4 * GIB_KIB)),
        # Stalls show it: everything the VM can have.
        ({"psi_some_avg10": 12.0, "mem_available_kib": 3 * GIB_KIB}, (0.0, 0.0, 0.0), GIB_KIB),
        ({"psi_full_avg10": 3.0, "mem_available_kib": 3 * GIB_KIB}, (0.0, 0.0, 0.0), GIB_KIB),
        ({"mem_available_kib": 3 * GIB_KIB}, (500.0, 0.0, 0.0), GIB_KIB),
        ({"mem_available_kib": 3 * GIB_KIB}, (0.0, 4096.0, 0.0), GIB_KIB),
        ({"mem_available_kib": 3 * GIB_KIB}, (0.0, 0.0, 1000.0), GIB_KIB),
    ],
)
def test_a_need_is_believed_as_far_as_the_guests_own_reports_show_it(
    report: dict[str, Any], rates: tuple[float, float, float], believed: int
) -> None:
    from types import SimpleNamespace

    from ebb.host.inputs import weigh_need

    fields = {"psi_some_avg10": None, "psi_full_avg10": None, **report}
    kib, why = weigh_need(KIB_MAX, GIB_KIB, 4 * GIB_KIB, SimpleNamespace(**fields), *rates)
    assert kib == believed
    assert why
