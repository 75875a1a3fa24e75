"""Yields before balloons: the engine asks agents to yield and judges them by QEMU RSS."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ebb.host.channels import GuestChannelState, ReceivedReport, SessionState
from ebb.host.channels.state import ReceivedOffer, ReceivedYield
from ebb.host.channels.yields import YieldHandle
from ebb.host.collectors import HostCollector
from ebb.host.controllers import BalloonController
from ebb.host.engine import Engine, EngineSettings
from ebb.host.governor import Governor, GovernorConfig
from ebb.host.policy import PolicyRunner
from ebb.lab.simulated import DEFAULT_REPORT
from ebb.protocol import Offer, Report, Yielded
from ebb_core_fakes import GIB_KIB, FakeHypervisor, FakeVm, make_host_tree, write_policy

MIB = 1024
CACHE_KIB = DEFAULT_REPORT["cached_kib"] + DEFAULT_REPORT["buffers_kib"]

#: Asks for a yield and a 200 MiB inflation of every guest, every tick.
YIELD_AND_SHRINK = """
(with Guests g {
    (g.Control "yield_kib" (* 400 1024))
    (g.Control "balloon_target" (- g.balloon_cur (* 200 1024)))
})
"""


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class YieldChannels:
    """Channels with one agent per VM that can yield; the test answers for it."""

    def __init__(self, clock: Clock, capabilities: Tuple[str, ...] = ("offer", "yield")) -> None:
        self.clock = clock
        self.capabilities = capabilities
        self.handles: List[YieldHandle] = []
        self.levels: List[int] = []
        self.decisions: List[Tuple[str, int, str]] = []
        self.vms: List[str] = []
        self.offer: Optional[Offer] = None

    def snapshot(self) -> Dict[str, GuestChannelState]:
        report = Report(seq=1, **DEFAULT_REPORT)
        pending = any(not h.done for h in self.handles)
        return {
            vm: GuestChannelState(
                vm=vm, socket_path=f"/run/{vm}.sock", session=SessionState.ACTIVE,
                connected=True, agent_active=True, stale=False,
                capabilities=self.capabilities,
                latest=ReceivedReport(mono=self.clock.now, wall=0.0, report=report),
                yield_pending=pending,
                offer=(ReceivedOffer(mono=self.clock.now, wall=0.0, offer=self.offer)
                       if self.offer is not None else None),
            )
            for vm in self.vms
        }

    def set_guests(self, paths) -> None:  # type: ignore[no-untyped-def]
        self.vms = sorted(paths)

    def send_decision(self, vm: str, balloon_target_kib: int, reason: str) -> None:
        self.decisions.append((vm, balloon_target_kib, reason))

    def set_pressure(self, level: int, reason: str) -> None:
        self.levels.append(level)

    def request_yield(self, vm: str, kib: int, deadline_ms: int) -> YieldHandle:
        handle = YieldHandle(vm, len(self.handles) + 1, kib, deadline_ms, self.clock.now)
        self.handles.append(handle)
        return handle

    def answer(self, freed_kib: int) -> None:
        handle = self.handles[-1]
        msg = Yielded(asked_kib=handle.asked_kib, freed_kib=freed_kib, cache_before_kib=CACHE_KIB,
                      cache_after_kib=0, duration_ms=300, stopped="done", reason="",
                      request_id=handle.request_id)
        handle.resolve(ReceivedYield(mono=self.clock.now, wall=0.0, yielded=msg,
                                     requested=True, host_level=2))


class YieldRig:
    def __init__(self, tmp_path: Path, rss_kib: int = 3 * GIB_KIB,
                 capabilities: Tuple[str, ...] = ("offer", "yield")) -> None:
        proc, sys_root = make_host_tree(tmp_path)
        policy_dir = tmp_path / "policy.d"
        write_policy(policy_dir, "50-test.policy", YIELD_AND_SHRINK)
        self.clock = Clock()
        self.vm = FakeVm("web", channel_path="/run/web.sock", stats={"rss": rss_kib})
        self.hypervisor = FakeHypervisor([self.vm])
        self.channels = YieldChannels(self.clock, capabilities)
        runner = PolicyRunner()
        assert runner.reload(policy_dir) == []
        self.engine = Engine(
            EngineSettings(interval_s=2.0),
            host=HostCollector(proc, sys_root),
            hypervisor=self.hypervisor,
            channels=self.channels,
            runner=runner,
            governor=Governor(GovernorConfig(default_floor_kib=512 * MIB)),
            balloon=BalloonController(self.hypervisor),
            clock=self.clock,
        )

    def tick(self, advance_s: float = 1.0) -> None:
        self.clock.now += advance_s
        self.engine.tick()

    def set_rss(self, kib: int) -> None:
        self.vm.stats["rss"] = kib

    def kinds(self) -> List[Optional[str]]:
        return [e["kind"] for e in self.engine.journal("web")]

    def last_result(self) -> Dict[str, object]:
        return [e for e in self.engine.journal("web") if e["kind"] == "yield-result"][-1]


def test_a_yield_is_asked_capped_by_the_cache_and_the_balloon_waits_for_it(tmp_path):
    rig = YieldRig(tmp_path)
    rig.tick()
    assert [h.asked_kib for h in rig.channels.handles] == [CACHE_KIB]  # 400 MiB asked
    assert rig.hypervisor.balloon_calls == []
    rig.tick()  # still unanswered, within two ticks: still waiting
    assert rig.hypervisor.balloon_calls == []
    assert len(rig.channels.handles) == 1  # one outstanding request per guest
    assert "yield-request" in rig.kinds()


def test_what_came_back_is_the_rss_drop_not_the_agents_word(tmp_path):
    rig = YieldRig(tmp_path)
    rig.tick()
    rig.channels.answer(freed_kib=CACHE_KIB)  # the agent claims everything...
    rig.tick()
    assert rig.hypervisor.balloon_calls == []  # ...the host waits for the RSS
    rig.tick(advance_s=5.0)  # ...which never falls
    result = rig.last_result()
    assert result["outcome"] == "nothing"
    assert result["inputs"]["returned_kib"] == 0
    assert result["inputs"]["agent_freed_kib"] == CACHE_KIB
    # The wait is over: the balloon takes memory this very tick.
    assert rig.hypervisor.balloon_calls


def test_a_yield_that_returns_memory_is_recorded_by_its_rss_drop(tmp_path):
    rig = YieldRig(tmp_path)
    rig.tick()
    rig.channels.answer(freed_kib=10 * MIB)  # the agent undersells it
    rig.set_rss(3 * GIB_KIB - 200 * MIB)
    rig.tick()
    result = rig.last_result()
    assert result["outcome"] == "returned"
    assert result["inputs"]["returned_kib"] == 200 * MIB
    rig.tick()
    sample = rig.engine.last_record.state["guests"][0]["samples"][-1]
    assert sample["yield_returned"] == 200 * MIB


def test_an_unanswered_request_falls_back_to_the_balloon(tmp_path):
    rig = YieldRig(tmp_path)
    rig.tick()
    rig.channels.handles[-1].fail("timeout")
    rig.tick()
    assert rig.last_result()["outcome"] == "timeout"
    assert rig.hypervisor.balloon_calls


def test_a_guest_that_keeps_yielding_nothing_is_no_longer_asked(tmp_path):
    rig = YieldRig(tmp_path)
    for _ in range(3):
        rig.tick(advance_s=5.0)  # past the pause after the last yield: asked again
        rig.channels.handles[-1].fail("timeout")
        rig.tick(advance_s=5.0)  # judged: nothing came back
    rig.tick(advance_s=5.0)
    asked = len(rig.channels.handles)
    sample = rig.engine.last_record.state["guests"][0]["samples"][-1]
    assert sample["yield_capable"] == 0 and sample["yield_fruitless"] == 1
    rig.tick(advance_s=5.0)
    assert len(rig.channels.handles) == asked == 3


def test_an_agent_without_the_capability_is_never_asked(tmp_path):
    rig = YieldRig(tmp_path, capabilities=("offer", "need"))
    rig.tick()
    assert rig.channels.handles == []
    assert rig.hypervisor.balloon_calls  # ballooned instead


def test_the_host_level_is_a_policy_field_and_reaches_the_agents(tmp_path):
    rig = YieldRig(tmp_path)
    rig.tick()
    host = rig.engine.last_record.state["host"]["samples"][-1]
    assert host["pressure_level"] == 0  # half the fixture host is free
    assert rig.channels.levels == [0]
    rig.tick()
    assert rig.channels.levels == [0]  # told again only when it changes
    assert rig.engine.status_host()["pressure"] == "none"


def test_yield_requests_and_results_are_in_the_trace(tmp_path):
    # The trace is what the evaluation and `ebbctl replay` read: a yield must show
    # there with what the host measured, not only in the journal.
    rig = YieldRig(tmp_path)
    rig.tick()
    sent = rig.engine.last_record.to_dict()["yields"]
    assert [(e["vm"], e["kind"], e["outcome"]) for e in sent] == [("web", "yield-request", "sent")]
    rig.channels.answer(freed_kib=10 * MIB)
    rig.set_rss(3 * GIB_KIB - 200 * MIB)
    rig.tick()
    judged = rig.engine.last_record.to_dict()["yields"]
    assert [(e["kind"], e["outcome"]) for e in judged] == [("yield-result", "returned")]
    assert judged[0]["inputs"]["returned_kib"] == 200 * MIB


def test_the_cold_cache_an_agent_reports_is_a_policy_field(tmp_path):
    rig = YieldRig(tmp_path)
    rig.tick()
    sample = rig.engine.last_record.state["guests"][0]["samples"][-1]
    assert sample["offer"] == 0 and sample["cold"] is None  # no offer yet: not known
    rig.channels.offer = Offer(seq=2, kib=100 * MIB, cold_kib=300 * MIB)
    rig.tick()
    sample = rig.engine.last_record.state["guests"][0]["samples"][-1]
    assert (sample["offer"], sample["cold"]) == (100 * MIB, 300 * MIB)
    row = rig.engine.status_vms()[0]
    assert (row["offer_kib"], row["cold_kib"]) == (100 * MIB, 300 * MIB)
