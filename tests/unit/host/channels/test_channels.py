"""Guest channels against simulated agents speaking the real protocol over socketpairs."""

from __future__ import annotations

import dataclasses
import errno
import logging
import socket
from typing import Dict, List, Optional

import msgpack
import pytest
from ebb.host.channels import ChannelLimits, GuestChannels, SessionState
from ebb.lab.simulated import SimulatedAgent
from ebb.protocol import Decision, Error, Welcome, encode_frame


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class PairConnector:
    """Stands in for QEMU's channel sockets: each connect makes a socketpair."""

    def __init__(self) -> None:
        self.agents: Dict[str, List[SimulatedAgent]] = {}
        self.missing: set = set()

    def __call__(self, path: str) -> socket.socket:
        if path in self.missing:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        host_end, guest_end = socket.socketpair()
        self.agents.setdefault(path, []).append(SimulatedAgent(guest_end, name=path))
        return host_end

    def agent(self, path: str) -> SimulatedAgent:
        return self.agents[path][-1]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def connector() -> PairConnector:
    return PairConnector()


@pytest.fixture
def needs() -> List[str]:
    return []


@pytest.fixture
def hub(clock: FakeClock, connector: PairConnector, needs: List[str]):
    limits = ChannelLimits(
        report_interval_ms=1500,
        heartbeat_interval_s=5.0,
        stale_after_s=5.0,
        max_frames_per_s=50,
        max_bytes_per_s=256 * 1024,
        max_errors_per_window=5,
        cut_off_backoff_s=10.0,
        cut_off_backoff_max_s=300.0,
        connect_retry_s=2.0,
        history_len=4,
    )
    channels = GuestChannels(
        limits, on_need=needs.append, connector=connector, clock=clock, wall_clock=lambda: 5e8
    )
    yield channels
    channels.close()


def turn(hub: GuestChannels, times: int = 3) -> None:
    for _ in range(times):
        hub.step(0.0)


def active_agent(hub: GuestChannels, connector: PairConnector, vm: str = "vm1") -> SimulatedAgent:
    hub.set_guests({vm: f"/run/{vm}.sock"})
    turn(hub)
    agent = connector.agent(f"/run/{vm}.sock")
    agent.hello()
    turn(hub)
    assert agent.wait_for("welcome") is not None
    return agent


def test_handshake_answers_hello_with_the_configured_report_interval(hub, connector):
    agent = active_agent(hub, connector)
    welcome = next(m for m in agent.received if isinstance(m, Welcome))
    assert welcome.report_interval_ms == 1500
    assert welcome.protocol_version == 1
    state = hub.get("vm1")
    assert state is not None and state.session is SessionState.ACTIVE
    assert state.agent_active and state.connected


def test_reports_are_stamped_with_host_clocks_and_history_is_bounded(hub, connector, clock):
    agent = active_agent(hub, connector)
    for i in range(6):
        clock.advance(1.0)
        agent.report(mem_free_kib=1000 + i)
        turn(hub)
    state = hub.get("vm1")
    assert state.latest is not None
    assert state.latest.report.mem_free_kib == 1005
    assert state.latest.mono == clock.now
    assert state.latest.wall == 5e8
    assert [r.report.mem_free_kib for r in state.history] == [1002, 1003, 1004, 1005]
    assert state.report_age_s(clock.now + 2.5) == pytest.approx(2.5)


def test_need_calls_back_for_an_immediate_tick_and_offer_is_kept(hub, connector, needs):
    agent = active_agent(hub, connector)
    agent.offer(50_000)
    agent.need(0)
    turn(hub)
    assert needs == []
    agent.need(200_000, urgency="critical", reason="PSI 40%")
    turn(hub)
    assert needs == ["vm1"]
    state = hub.get("vm1")
    assert state.offer.offer.kib == 50_000
    assert state.need.need.kib == 200_000 and state.need.need.urgency == "critical"


def test_messages_before_hello_get_hello_required(hub, connector):
    hub.set_guests({"vm1": "/run/vm1.sock"})
    turn(hub)
    agent = connector.agent("/run/vm1.sock")
    agent.report()
    turn(hub)
    error = agent.wait_for("error")
    assert isinstance(error, Error) and error.code == "hello_required"
    assert hub.get("vm1").latest is None


def test_unknown_message_type_gets_an_error_and_the_session_goes_on(hub, connector):
    agent = active_agent(hub, connector)
    agent.send_raw(encode_frame(msgpack.packb({"type": "frobnicate", "x": 1})))
    turn(hub)
    error = agent.wait_for("error")
    assert isinstance(error, Error) and error.code == "unknown_type"
    agent.report(mem_free_kib=4242)
    turn(hub)
    state = hub.get("vm1")
    assert state.session is SessionState.ACTIVE
    assert state.latest.report.mem_free_kib == 4242
    assert state.protocol_errors == 1


def test_garbage_cuts_the_guest_off_with_one_warning_and_growing_backoff(
    hub, connector, clock, caplog
):
    caplog.set_level(logging.WARNING, logger="ebb.host.channels")
    agent = active_agent(hub, connector)
    for _ in range(10):
        agent.send_raw(b"\x00\x05garbage\x00")
    turn(hub)
    state = hub.get("vm1")
    assert state.session is SessionState.CUT_OFF
    assert not state.connected
    assert state.cut_off_until == pytest.approx(5e8 + 10.0)
    warnings = [r for r in caplog.records if "cut off" in r.getMessage()]
    assert len(warnings) == 1 and "vm1" in warnings[0].getMessage()
    assert agent.wait_for("never", timeout_s=0.1) is None and agent.closed

    clock.advance(9.0)
    turn(hub)
    assert len(connector.agents["/run/vm1.sock"]) == 1  # still backing off
    clock.advance(1.5)
    turn(hub)
    assert len(connector.agents["/run/vm1.sock"]) == 2  # reconnected after 10 s

    again = connector.agent("/run/vm1.sock")
    again.hello()
    turn(hub)
    for _ in range(10):
        again.send_raw(b"\x00\x05garbage\x00")
    turn(hub)
    assert hub.get("vm1").cut_off_until == pytest.approx(5e8 + 20.0)  # doubled


def test_oversized_frame_cuts_off_at_once(hub, connector):
    agent = active_agent(hub, connector)
    agent.send_raw(b"\x00" + b"\x01" * 70_000)
    turn(hub, 8)
    assert hub.get("vm1").session is SessionState.CUT_OFF


def test_frame_flood_cuts_off(hub, connector):
    agent = active_agent(hub, connector)
    for _ in range(60):
        agent.report()
    turn(hub, 5)
    state = hub.get("vm1")
    assert state.session is SessionState.CUT_OFF
    assert "frames" in (state.cut_off_reason or "")


def test_hostile_guest_does_not_delay_a_good_one(hub, connector, needs):
    good = active_agent(hub, connector, "good")
    hub.set_guests({"good": "/run/good.sock", "bad": "/run/bad.sock"})
    turn(hub)
    bad = connector.agent("/run/bad.sock")
    bad.hello()
    turn(hub)
    bad.sock.setblocking(False)
    sent = 0
    try:
        while sent < 4_000_000:
            sent += bad.sock.send(b"\x01" * 65536)
    except BlockingIOError:
        pass
    good.need(100_000)
    hub.step(0.0)  # one wakeup: the good guest's need is handled despite the flood
    assert needs == ["good"]
    turn(hub, 20)
    assert hub.get("bad").session is SessionState.CUT_OFF
    assert hub.get("good").session is SessionState.ACTIVE


def test_reconnects_when_the_vm_restarts(hub, connector, clock):
    agent = active_agent(hub, connector)
    agent.close()
    turn(hub)
    state = hub.get("vm1")
    assert state.session is SessionState.DISCONNECTED and not state.connected
    connector.missing.add("/run/vm1.sock")  # QEMU not yet back
    clock.advance(2.1)
    turn(hub)
    assert len(connector.agents["/run/vm1.sock"]) == 1
    connector.missing.clear()
    clock.advance(4.1)  # retry backoff doubled to 4 s
    turn(hub)
    assert len(connector.agents["/run/vm1.sock"]) == 2
    again = connector.agent("/run/vm1.sock")
    again.hello()
    turn(hub)
    assert again.wait_for("welcome") is not None
    assert hub.get("vm1").sessions == 2


def test_heartbeat_pings_and_silence_makes_the_guest_stale(hub, connector, clock):
    agent = active_agent(hub, connector)
    clock.advance(5.1)
    turn(hub)
    assert agent.wait_for("ping") is not None  # SimulatedAgent answers with a pong
    turn(hub)
    assert not hub.get("vm1").stale
    clock.advance(4.0)
    assert not hub.get("vm1").stale
    clock.advance(2.0)  # 6 s since the pong, no report
    assert hub.get("vm1").stale
    agent.report()
    turn(hub)
    assert not hub.get("vm1").stale


def test_decision_reaches_the_guest(hub, connector):
    agent = active_agent(hub, connector)
    hub.send_decision("vm1", 512_000, "host short of memory")
    turn(hub)
    decision = agent.wait_for("decision")
    assert isinstance(decision, Decision)
    assert decision.balloon_target_kib == 512_000 and decision.reason == "host short of memory"


def test_a_guest_that_does_not_read_costs_dropped_messages_not_blocking(hub, connector):
    agent = active_agent(hub, connector)
    agent.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    for sent in range(1, 5001):
        hub.send_decision("vm1", 512_000, "x" * 200)
        hub.step(0.0)
        if sent % 100 == 0 and hub.get("vm1").dropped_outgoing:
            break  # the buffers are full: no need to go on
    state = hub.get("vm1")
    assert state.dropped_outgoing > 0
    assert state.session is SessionState.ACTIVE


def test_forgetting_a_vm_closes_its_channel(hub, connector):
    agent = active_agent(hub, connector)
    hub.set_guests({})
    turn(hub)
    assert hub.get("vm1") is None
    assert agent.wait_for("never", timeout_s=0.1) is None and agent.closed


def test_a_vm_without_a_channel_is_known_but_not_connected(hub, connector):
    hub.set_guests({"plain": None})
    turn(hub)
    state: Optional = hub.get("plain")
    assert state is not None and not state.connected and state.session is SessionState.DISCONNECTED
    assert connector.agents == {}


def test_runs_in_its_own_thread_and_stops_promptly(connector, needs):
    import time

    channels = GuestChannels(ChannelLimits(), on_need=needs.append, connector=connector)
    channels.start()
    try:
        channels.set_guests({"vm1": "/run/vm1.sock"})
        # Generous deadlines: they only matter when the test fails, and a loaded
        # machine may take seconds to schedule the channel thread.
        deadline = time.monotonic() + 15
        while "/run/vm1.sock" not in connector.agents and time.monotonic() < deadline:
            time.sleep(0.01)
        agent = connector.agent("/run/vm1.sock")
        agent.hello()
        assert agent.wait_for("welcome", timeout_s=15.0) is not None
        agent.need(1000)
        deadline = time.monotonic() + 15
        while not needs and time.monotonic() < deadline:
            time.sleep(0.01)
        assert needs == ["vm1"]
    finally:
        started = time.monotonic()
        channels.stop()
        assert time.monotonic() - started < 1.0


def test_a_guest_cannot_make_the_engine_tick_without_pause(hub, connector, needs, clock):
    agent = active_agent(hub, connector)
    for kib in range(1000, 1020):
        agent.need(kib, urgency="low")
    turn(hub)
    assert needs == ["vm1"]  # twenty changing needs, one immediate tick
    agent.need(5000, urgency="critical")  # more urgent: at once
    turn(hub)
    assert needs == ["vm1", "vm1"]
    clock.advance(1.1)
    agent.need(6000, urgency="critical")
    turn(hub)
    assert needs == ["vm1", "vm1", "vm1"]
    assert hub.get("vm1").need.need.kib == 6000  # the newest need is what counts


def test_new_limits_take_effect_whole_on_the_channel_thread(hub, connector):
    agent = active_agent(hub, connector)
    old = hub.limits
    new = dataclasses.replace(old, report_interval_ms=3000, max_frames_per_s=5)
    hub.update_limits(new)  # a reload, from the main thread
    assert hub.limits is old and old.max_frames_per_s == 50  # nothing changed under the hub
    turn(hub)  # the channel thread's next turn
    assert hub.limits is new
    welcome = agent.wait_for("welcome")
    assert isinstance(welcome, Welcome) and welcome.report_interval_ms == 3000
    assert hub.get("vm1").sessions == 1  # not a new session
    for _ in range(10):  # the running session is judged by the new flood limit
        agent.report(mem_free_kib=1000)
    turn(hub)
    assert hub.get("vm1").cut_offs == 1


def test_new_limits_without_a_new_interval_welcome_nobody(hub, connector):
    agent = active_agent(hub, connector)
    agent.pump(0.0)
    agent.received.clear()
    hub.update_limits(dataclasses.replace(hub.limits, max_bytes_per_s=1024 * 1024))
    hub.send_decision("vm1", 4096, "after the reload")  # frames arrive in order
    turn(hub)
    assert hub.limits.max_bytes_per_s == 1024 * 1024
    assert agent.wait_for("decision") is not None
    assert not any(isinstance(m, Welcome) for m in agent.received)
