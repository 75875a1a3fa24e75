"""The agent's session (PROTOCOL.md section 4) on a fake clock: no thread, no socket.

Each test drives an :class:`AgentSession` with the host's messages and the time,
through :class:`agent_testkit.Conversation`, and asserts exactly what it sends and
when. The timings are the real defaults (1 s reports, 0.5 s watch, 30 s keepalive):
time is fake, so nothing needs shortening.
"""

from __future__ import annotations

import dataclasses
import os
from typing import List

import msgpack
import pytest
from agent_testkit import GIB_KIB, Conversation, ProcTree
from ebb.guest.session import (
    AgentConfig,
    AgentSession,
    BackgroundYieldDue,
    ConnectionState,
    PressureChanged,
    YieldRequested,
)
from ebb.guest.yielding import YieldConfig
from ebb.protocol.framing import MAX_FRAME_BYTES, encode_frame
from ebb.protocol.messages import (
    Bye,
    Decision,
    Error,
    Hello,
    Need,
    Offer,
    Ping,
    Pong,
    Pressure,
    Report,
    Request,
    Welcome,
    Yielded,
    encode_message,
)
from ebb.protocol.stream import MessageReader


@pytest.fixture
def talk(proc_tree: ProcTree) -> Conversation:
    return Conversation(proc_tree)


def welcomed(proc_tree: ProcTree, interval_ms: int = 1000, **options: object) -> Conversation:
    talk = Conversation(proc_tree, **options)  # type: ignore[arg-type]
    talk.welcome(interval_ms)
    return talk


def seqs(talk: Conversation) -> List[int]:
    return [m.seq for m in talk.received if isinstance(m, (Report, Offer, Need))]


# --- handshake ------------------------------------------------------------------------


def test_hello_first_then_report_and_offer_after_the_welcome(talk: Conversation) -> None:
    (hello,) = talk.received
    assert isinstance(hello, Hello)
    assert hello.hostname == "guest-under-test"
    assert hello.protocol_versions == (1,)
    assert "offer" in hello.capabilities and "yield" not in hello.capabilities
    assert talk.session.state is ConnectionState.HELLO_SENT
    talk.advance(0.9)
    assert talk.of_type(Report) == []  # nothing is reported before the welcome

    talk.welcome(1000)
    (report,) = talk.of_type(Report)
    (offer,) = talk.of_type(Offer)
    assert report.mem_total_kib == 4 * GIB_KIB
    assert report.mem_available_kib == 3 * GIB_KIB
    assert report.psi_some_total_us == 1000
    assert offer.kib > GIB_KIB
    # One sequence for report, offer and need, from 0 after the hello.
    assert (report.seq, offer.seq) == (0, 1)
    assert talk.session.state is ConnectionState.ACTIVE
    assert talk.session.interval_s == 1.0
    assert talk.session.take_statuses() == ["STATUS=reporting to the host every 1000 ms"]


def test_hello_is_repeated_with_backoff_until_welcomed(talk: Conversation) -> None:
    talk.advance(40.0)
    # 1 s doubling to 10 s (PROTOCOL.md 4.1).
    assert talk.times_of(Hello) == [0.0, 1.0, 3.0, 7.0, 15.0, 25.0, 35.0]
    talk.welcome(1000)
    assert talk.times_of(Report) == [40.0]


def test_a_yield_capable_session_says_so_in_its_hello(proc_tree: ProcTree) -> None:
    talk = Conversation(proc_tree, has_yielder=True, yield_capable=True)
    assert "yield" in talk.of_type(Hello)[0].capabilities
    talk = Conversation(proc_tree, has_yielder=True, yield_capable=False)
    assert "yield" not in talk.of_type(Hello)[0].capabilities


def test_welcome_with_an_unknown_version_is_refused(talk: Conversation) -> None:
    talk.advance(0.5)
    talk.host_sends(Welcome(protocol_version=9, report_interval_ms=1000, capabilities=()))
    (error,) = talk.of_type(Error)
    assert error.code == "unsupported_version"
    assert talk.session.state is ConnectionState.HELLO_SENT
    talk.advance(0.5)
    assert talk.times_of(Hello) == [0.0, 1.0]  # the hello timer keeps running
    talk.welcome(1000)
    assert len(talk.of_type(Report)) == 1


def test_a_host_that_speaks_before_welcoming_gets_a_hello_at_most_once_a_second(
    proc_tree: ProcTree,
) -> None:
    slow_hellos = AgentConfig(hostname="g", hello_retry_min_s=30.0, hello_retry_max_s=60.0)
    talk = Conversation(proc_tree, slow_hellos)
    talk.advance(0.5)
    talk.host_sends(Ping(nonce=5))  # e.g. ebbd started after the agent's hello got lost
    assert talk.of_type(Pong)[0].nonce == 5  # answered in every state
    talk.advance(1.0)
    talk.host_sends(Ping(nonce=6))
    talk.host_sends(Error(code="hello_required", message="no session", ref_type="report"))
    assert talk.times_of(Hello) == [0.0, 1.5]  # not at 0.5: less than a second after the first


# --- reports ---------------------------------------------------------------------------


def test_one_report_per_interval_exactly(proc_tree: ProcTree) -> None:
    talk = welcomed(proc_tree, interval_ms=250)
    talk.advance(10.0)
    # One at the welcome, then one per 250 ms: 40 in 10 s, never a burst.
    assert talk.times_of(Report) == [i * 0.25 for i in range(41)]
    assert seqs(talk) == list(range(len(seqs(talk))))


def test_a_big_change_is_reported_at_the_next_watch_sample(proc_tree: ProcTree) -> None:
    talk = welcomed(proc_tree, interval_ms=10_000)
    talk.advance(2.0)
    proc_tree.write(MemAvailable=2 * GIB_KIB)  # moves by 25 % of MemTotal
    talk.advance(8.0)
    # A calm guest is watched every second (0.5 s, then doubled): the change at 2.0
    # is seen at 2.5; the interval's schedule goes on (the next report at 10).
    assert talk.times_of(Report) == [0.0, 2.5, 10.0]
    assert talk.of_type(Report)[1].mem_available_kib == 2 * GIB_KIB


def test_a_small_change_waits_for_the_interval(proc_tree: ProcTree) -> None:
    talk = welcomed(proc_tree, interval_ms=10_000)
    talk.advance(2.0)
    proc_tree.write(MemAvailable=3 * GIB_KIB - 50 * 1024)  # about 1 % of MemTotal
    talk.advance(8.0)
    assert talk.times_of(Report) == [0.0, 10.0]


def test_a_psi_rise_is_reported_at_once(proc_tree: ProcTree) -> None:
    talk = welcomed(proc_tree, interval_ms=10_000)
    talk.advance(2.0)
    proc_tree.pressure = (6.0, 0.0, 9000, 500)  # 6 points up: more than 5
    proc_tree.write()
    talk.advance(1.0)
    assert talk.times_of(Report) == [0.0, 2.5]


def test_early_reports_are_at_least_100_ms_apart(proc_tree: ProcTree) -> None:
    config = AgentConfig(hostname="g", watch_interval_s=0.03125)
    talk = welcomed(proc_tree, interval_ms=10_000, config=config)
    available = 3 * GIB_KIB
    for _ in range(8):  # a big change (6 %) at every watch sample, 31.25 ms apart
        available -= 256 * 1024
        proc_tree.write(MemAvailable=available)
        talk.advance(0.03125)
    assert talk.times_of(Report) == [0.0, 0.125, 0.25]


def test_need_and_offer_follow_the_guest(proc_tree: ProcTree) -> None:
    talk = welcomed(proc_tree)
    assert talk.of_type(Offer)[0].kib > 0
    talk.advance(1.5)
    assert talk.of_type(Need) == []

    # The guest runs short: little available, stalling on memory.
    proc_tree.pressure = (35.0, 1.0, 5_000_000, 100_000)
    proc_tree.write(MemAvailable=150 * 1024, MemFree=40 * 1024, Inactive_file=20 * 1024)
    talk.advance(0.5)
    (need,) = talk.of_type(Need)
    assert talk.times_of(Need) == [2.0]
    assert need.urgency in ("high", "critical")
    assert need.kib >= 200 * 1024
    assert "psi_some_avg10=35.0%" in need.reason
    assert talk.of_type(Offer)[-1].kib == 0  # withdrawn with the need

    # It recovers: the need is withdrawn and memory is offered again.
    talk.advance(1.25)
    proc_tree.pressure = (0.0, 0.0, 5_000_000, 100_000)
    proc_tree.write(MemAvailable=3 * GIB_KIB, MemFree=2 * GIB_KIB, Inactive_file=512 * 1024)
    talk.advance(0.25)
    assert talk.times_of(Need) == [2.0, 3.5]  # sampled every 0.5 s while in need
    assert talk.of_type(Need)[-1].kib == 0
    assert talk.of_type(Offer)[-1].kib > 0
    assert seqs(talk) == list(range(len(seqs(talk))))


def test_no_offer_or_need_unless_the_host_takes_them(talk: Conversation,
                                                     proc_tree: ProcTree) -> None:
    talk.welcome(1000, capabilities=())
    proc_tree.pressure = (60.0, 20.0, 1, 1)
    proc_tree.write()
    talk.advance(3.0)
    # At once for the PSI rise at 0.5, then on the interval.
    assert talk.times_of(Report) == [0.0, 0.5, 1.0, 2.0, 3.0]
    assert talk.of_type(Offer) == [] and talk.of_type(Need) == []
    # An unasked welcome turns them on without starting a new session.
    talk.welcome(1000)
    talk.advance(1.0)
    (need,) = talk.of_type(Need)
    assert need.urgency == "critical"
    assert need.seq == 5  # after reports 0 to 4
    assert seqs(talk) == list(range(len(seqs(talk))))
    assert len(talk.of_type(Hello)) == 1


def test_an_unasked_welcome_changes_the_interval_at_once(proc_tree: ProcTree) -> None:
    talk = welcomed(proc_tree, interval_ms=10_000)
    talk.advance(2.0)
    talk.welcome(1000)
    talk.advance(3.0)
    assert talk.times_of(Report) == [0.0, 3.0, 4.0, 5.0]
    assert seqs(talk)[:3] == [0, 1, 2]  # the session goes on


def test_a_calm_guest_is_sampled_half_as_often(proc_tree: ProcTree) -> None:
    # Under emulation every sample costs the guest milliseconds of CPU, so while
    # nothing moves the watch between reports slows down; any sign of trouble
    # brings it back.
    talk = welcomed(proc_tree, interval_ms=10_000)
    session = talk.session

    def gap_after_next_sample() -> float:
        talk.advance(session.wake_at() - talk.now)
        return round(session.wake_at() - talk.now, 6)

    watch = talk.config.watch_interval_s
    assert round(session.wake_at() - talk.now, 6) == watch  # after the first sample
    assert gap_after_next_sample() == 2 * watch  # calm
    proc_tree.vmstat["pswpout"] += 500
    proc_tree.write()
    assert gap_after_next_sample() == watch  # swapping out
    assert gap_after_next_sample() == 2 * watch  # stopped
    proc_tree.pressure = (3.0, 0.0, 5000, 500)
    proc_tree.write()
    assert gap_after_next_sample() == watch  # a memory stall, however small
    proc_tree.pressure = (0.0, 0.0, 5000, 500)
    proc_tree.write(MemAvailable=3 * GIB_KIB - 100 * 1024)  # 2.4 % of MemTotal
    assert gap_after_next_sample() == watch
    assert gap_after_next_sample() == 2 * watch


def test_unreadable_proc_pauses_reports_and_they_resume(proc_tree: ProcTree) -> None:
    talk = welcomed(proc_tree)
    talk.advance(2.5)
    (proc_tree.root / "meminfo").unlink()
    talk.advance(2.0)
    talk.host_sends(Ping(nonce=3))  # still connected
    assert talk.of_type(Pong)[0].nonce == 3
    proc_tree.write()
    talk.advance(2.5)
    # Nothing at 3 and 4; the next sample after 4 is a report, then the schedule again.
    assert talk.times_of(Report) == [0.0, 1.0, 2.0, 5.0, 6.0, 7.0]
    assert talk.session.state is ConnectionState.ACTIVE


def test_offers_say_how_much_cache_is_cold(proc_tree: ProcTree) -> None:
    # The host asks for yields by it (PROTOCOL.md, offer): only cache that has stayed
    # unused for cache_hold_s, none while evicted pages are read back.
    config = dataclasses.replace(talk_config(), yield_config=YieldConfig(
        refault_cache_per_s=1.0, refault_low_per_s=1e9, refault_high_per_s=1e9))
    talk = welcomed(proc_tree, config=config)
    assert talk.of_type(Offer)[0].cold_kib == 0  # just started: nothing known to be cold
    talk.advance(130.0)
    assert talk.of_type(Offer)[-1].cold_kib == 511 * 1024
    proc_tree.vmstat["workingset_refault_file"] += 50
    proc_tree.write()
    talk.advance(1.0)
    assert talk.of_type(Offer)[-1].cold_kib == 0


def test_young_or_refaulting_cache_is_not_offered(proc_tree: ProcTree) -> None:
    # No refault rate is a need here: only the cache hold is under test.
    config = dataclasses.replace(talk_config(), yield_config=YieldConfig(
        refault_cache_per_s=1.0, refault_low_per_s=1e9, refault_high_per_s=1e9))
    talk = welcomed(proc_tree, config=config)
    # Just started: the agent cannot tell how old the cache is, so offers free memory.
    free_only = talk.of_type(Offer)[0].kib
    # 120 s on (cache_hold_s), the 512 MiB of inactive cache (less the dirty MiB) too.
    talk.advance(130.0)
    assert talk.times_of(Offer) == [0.0, 120.0]
    full = talk.of_type(Offer)[-1].kib
    assert full - free_only == 511 * 1024

    # Evicted pages are read back: the cache is in use and held out of offers.
    proc_tree.vmstat["workingset_refault_file"] += 50
    proc_tree.write()
    talk.advance(1.0)
    assert talk.of_type(Offer)[-1].kib == free_only
    assert talk.of_type(Need) == []
    assert talk.session.cache_held(talk.now)
    # 120 quiet seconds later it is offered again.
    talk.advance(130.0)
    assert talk.times_of(Offer)[2:] == [131.0, 251.0]
    assert talk.of_type(Offer)[-1].kib == full

    # The guest reads 1 GiB more: that cache is too young to offer for 120 s.
    proc_tree.write(Cached=2 * GIB_KIB, Inactive_file=1536 * 1024, MemFree=GIB_KIB,
                    MemAvailable=3 * GIB_KIB)
    talk.advance(130.0)
    assert talk.times_of(Offer)[4:] == [262.0, 382.0]
    young, aged = (offer.kib for offer in talk.of_type(Offer)[4:])
    assert young == full - GIB_KIB
    assert aged == full


def talk_config() -> AgentConfig:
    return AgentConfig(hostname="guest-under-test")


# --- what the host sends -------------------------------------------------------------


def test_ping_is_answered_and_decisions_are_kept(proc_tree: ProcTree) -> None:
    talk = welcomed(proc_tree)
    talk.host_sends(Ping(nonce=4242))
    assert talk.of_type(Pong)[0].nonce == 4242
    talk.host_sends(Decision(balloon_target_kib=3 * GIB_KIB, reason="host under pressure"))
    assert talk.session.last_decision is not None
    assert talk.session.last_decision.balloon_target_kib == 3 * GIB_KIB


def test_prepare_release_re_offers_at_once(proc_tree: ProcTree) -> None:
    talk = welcomed(proc_tree, interval_ms=10_000)
    talk.advance(3.2)
    talk.host_sends(Request(kind="prepare_release", kib=GIB_KIB))
    assert talk.times_of(Offer) == [0.0, 3.2]  # not at the next report
    first, again = talk.of_type(Offer)
    assert again.kib == first.kib  # the same offer, repeated on request

    talk.host_sends(Request(kind="defragment", kib=0))
    (error,) = talk.of_type(Error)
    assert (error.code, error.ref_type) == ("unknown_request", "request")


def test_a_yield_request_without_a_yielder_is_an_unknown_request(proc_tree: ProcTree) -> None:
    talk = welcomed(proc_tree)
    talk.host_sends(Request(kind="yield", kib=GIB_KIB, request_id=3))
    assert talk.session.take_yield_work() == []
    assert talk.of_type(Error)[0].code == "unknown_request"


def test_host_garbage_never_stops_the_session(proc_tree: ProcTree) -> None:
    talk = welcomed(proc_tree)
    talk.host_sends_raw(os.urandom(20_000))
    talk.host_sends_raw(b"\x00" + b"\x01" * (MAX_FRAME_BYTES * 2) + b"\x00")  # oversized
    talk.host_sends_raw(encode_frame(msgpack.packb({"type": "frobnicate", "x": 1})))
    talk.host_sends_raw(encode_frame(msgpack.packb([1, 2, 3])))
    talk.host_sends_raw(encode_frame(msgpack.packb({"type": "welcome", "protocol_version": "1"})))
    by_code = {e.code: e for e in talk.of_type(Error)}
    assert by_code["unknown_type"].ref_type == "frobnicate"
    assert "not_a_map" in by_code
    assert any(code in by_code for code in ("bad_type", "missing_field"))

    # Still talking: pings are answered, reports continue.
    talk.host_sends(Ping(nonce=7))
    assert talk.of_type(Pong)[-1].nonce == 7
    talk.advance(2.0)
    assert talk.times_of(Report) == [0.0, 1.0, 2.0]
    assert talk.session.state is ConnectionState.ACTIVE
    assert talk.session.counters.protocol_errors >= 4


def test_error_replies_are_rate_limited_to_ten_a_second(proc_tree: ProcTree) -> None:
    talk = welcomed(proc_tree)
    bad = encode_frame(msgpack.packb({"type": "nonsense"}))
    talk.host_sends_raw(bad * 500)
    assert len(talk.of_type(Error)) == 10
    talk.advance(0.5)
    talk.host_sends_raw(bad * 500)
    assert len(talk.of_type(Error)) == 15  # half a second refills five
    assert talk.session.counters.protocol_errors == 1000


def test_messages_only_a_guest_sends_are_refused(proc_tree: ProcTree) -> None:
    talk = welcomed(proc_tree)
    talk.host_sends(Offer(seq=1, kib=5))
    (error,) = talk.of_type(Error)
    assert (error.code, error.ref_type) == ("unexpected_message", "offer")


def test_the_agent_never_answers_an_error_with_an_error(talk: Conversation) -> None:
    talk.host_sends_raw(encode_frame(msgpack.packb({"type": "error", "code": "NOT A TOKEN"})))
    assert talk.session.counters.protocol_errors == 1
    assert talk.of_type(Error) == []


# --- the session's end and its restarts ---------------------------------------------------


def test_bye_from_the_host_stops_reports_until_the_next_welcome(proc_tree: ProcTree) -> None:
    talk = welcomed(proc_tree)
    talk.advance(2.5)
    talk.host_sends(Bye(reason="ebbd restarting"))
    assert talk.session.state is ConnectionState.HELLO_SENT
    talk.advance(2.0)
    assert talk.times_of(Hello) == [0.0, 3.5, 4.5]  # 1 s, 1 s, doubling from there
    assert talk.times_of(Report) == [0.0, 1.0, 2.0]
    talk.welcome(1000)
    assert talk.of_type(Report)[-1].seq == 0
    assert talk.session.counters.welcomes == 2


def test_hello_required_starts_a_new_session(proc_tree: ProcTree) -> None:
    talk = welcomed(proc_tree)
    talk.advance(3.5)
    # A restarted host has no session: it asks for a hello instead of taking reports.
    talk.host_sends(Error(code="hello_required", message="no session", ref_type="report"))
    assert talk.times_of(Hello) == [0.0, 3.5]
    assert talk.session.state is ConnectionState.HELLO_SENT
    talk.clear()
    talk.welcome(1000)
    assert talk.of_type(Report)[0].seq == 0


def test_a_silent_host_is_pinged_after_30_s_and_greeted_again_30_s_later(
    proc_tree: ProcTree,
) -> None:
    talk = welcomed(proc_tree, answer_pings=False)
    talk.advance(45.0)
    (ping,) = talk.of_type(Ping)
    assert talk.times_of(Ping) == [30.0]
    talk.host_sends(Pong(nonce=ping.nonce))  # answered at 45: the next ping at 75
    talk.advance(40.0)
    assert talk.times_of(Ping) == [30.0, 75.0]
    assert talk.session.state is ConnectionState.ACTIVE
    # The host does not answer (a serial line whose other end went away) ...
    talk.advance(27.0)
    assert talk.times_of(Hello) == [0.0, 105.0, 106.0, 108.0, 112.0]  # from 1 s again
    assert talk.session.state is ConnectionState.HELLO_SENT


def test_a_lost_host_is_reopened_after_a_doubling_wait(talk: Conversation) -> None:
    session = talk.session
    talk.welcome(1000)
    assert session.lost("EOF", 2.0) == 3.0
    assert session.state is ConnectionState.DISCONNECTED
    assert session.wake_at() == 3.0
    assert session.take_statuses()[-1] == "STATUS=waiting for the host on test link"
    # 1 s doubling to 10 s.
    reopen = [session.open_failed("refused", at) for at in (3.0, 5.0, 9.0, 17.0, 27.0)]
    assert reopen == [5.0, 9.0, 17.0, 27.0, 37.0]
    session.opened(37.0)
    assert session.state is ConnectionState.HELLO_SENT
    assert isinstance(MessageReader().feed(session.take_frames()[0])[0], Hello)
    # A welcome ends the absence: the next loss waits 1 s again.
    session.receive(encode_message(
        Welcome(protocol_version=1, report_interval_ms=1000, capabilities=())), 37.5)
    assert session.lost("EOF", 40.0) == 41.0
    assert session.counters.disconnects == 2


def test_a_transport_can_cap_the_reopen_wait(proc_tree: ProcTree) -> None:
    # A virtio-serial port is probed every second whatever the backoff.
    session = AgentSession(talk_config(), reopen_max_s=1.0)
    reopen = [session.open_failed("no host", float(at)) for at in range(5)]
    assert reopen == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_frames_queued_before_a_loss_are_dropped(talk: Conversation) -> None:
    talk.session.receive(encode_message(Ping(nonce=2)), 0.1)
    talk.session.lost("write timed out", 0.1)
    assert talk.session.take_frames() == []
    assert talk.session.state is ConnectionState.DISCONNECTED


def test_stop_says_bye_only_in_a_conversation(talk: Conversation) -> None:
    bye = talk.session.stop()
    assert bye is not None
    (msg,) = MessageReader().feed(bye)
    assert isinstance(msg, Bye) and msg.reason == "agent stopping"
    assert talk.session.state is ConnectionState.STOPPED
    never_connected = AgentSession(talk_config())
    assert never_connected.stop() is None


# --- yield work: what the session hands its loop ------------------------------------------


def test_yield_requests_and_pressure_become_yield_work_in_order(proc_tree: ProcTree) -> None:
    talk = Conversation(proc_tree, has_yielder=True, yield_capable=True)
    talk.welcome(1000)
    session = talk.session
    # A new session starts at pressure 0 until the host says otherwise (PROTOCOL.md 4.7) ...
    assert session.take_yield_work()[0] == PressureChanged(0, "new session")
    talk.host_sends(Pressure(level=1, reason="host short"),
                    Request(kind="yield", kib=64 * 1024, request_id=7, deadline_ms=2000))
    assert session.take_yield_work() == [
        PressureChanged(1, "host short"), YieldRequested(64 * 1024, 7, 2000)]
    # ... and what a yield gave back is sent while the session agrees on yield.
    answer = Yielded(asked_kib=64 * 1024, freed_kib=60 * 1024, cache_before_kib=1,
                     cache_after_kib=0, duration_ms=5, stopped="done", reason="",
                     request_id=7)
    session.yielded([None, answer])
    talk.turn()
    assert talk.of_type(Yielded) == [answer]


def test_a_sample_without_a_need_may_start_a_background_yield(proc_tree: ProcTree) -> None:
    talk = Conversation(proc_tree, has_yielder=True, yield_capable=True)
    talk.welcome(1000)
    talk.advance(1.0)
    work = [w for w in talk.session.take_yield_work() if isinstance(w, BackgroundYieldDue)]
    # One per sample, with what the cache hold lets count as cold (nothing yet: too young).
    assert work == [BackgroundYieldDue(0.0, 0), BackgroundYieldDue(0.5, 0),
                    BackgroundYieldDue(1.0, 0)]
    # In need, the guest yields nothing.
    proc_tree.pressure = (60.0, 20.0, 1, 1)
    proc_tree.write()
    talk.advance(1.0)
    assert not [w for w in talk.session.take_yield_work() if isinstance(w, BackgroundYieldDue)]


def test_no_yield_work_or_yielded_without_the_capability_agreed(proc_tree: ProcTree) -> None:
    talk = Conversation(proc_tree, has_yielder=True, yield_capable=True)
    talk.welcome(1000, capabilities=("offer", "need"))
    talk.advance(2.0)
    assert [w for w in talk.session.take_yield_work()
            if not isinstance(w, PressureChanged)] == []
    talk.session.yielded([Yielded(asked_kib=0, freed_kib=0, cache_before_kib=0,
                                  cache_after_kib=0, duration_ms=0, stopped="disabled",
                                  reason="", request_id=None)])
    talk.turn()
    assert talk.of_type(Yielded) == []
