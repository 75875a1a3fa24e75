"""The agent against a host end that is a socket pair or a unix socket."""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from pathlib import Path
from typing import Iterator, List, Tuple

import msgpack
import pytest
from agent_testkit import FAST_CONFIG, GIB_KIB, HostEnd, ProcTree
from conftest import StartAgent
from ebb.guest.agent import ConnectionState
from ebb.guest.transport import SocketTransport, UnixSocketTransport
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
    Report,
    Request,
    Welcome,
)


@pytest.fixture
def pair() -> Iterator[Tuple[SocketTransport, HostEnd]]:
    guest_sock, host_sock = socket.socketpair()
    host = HostEnd(host_sock)
    yield SocketTransport(guest_sock), host
    host.close()


def _handshake(host: HostEnd, interval_ms: int = 1000) -> Report:
    hello = host.wait_for(Hello)[0]
    assert hello.protocol_versions == (1,)
    host.welcome(interval_ms)
    return host.wait_for(Report)[0]


def test_handshake_then_report_offer(
    pair: Tuple[SocketTransport, HostEnd], proc_tree: ProcTree, start_agent: StartAgent
) -> None:
    transport, host = pair
    running = start_agent(transport, proc_tree)
    hello = host.wait_for(Hello)[0]
    assert hello.hostname == "guest-under-test"
    assert "offer" in hello.capabilities
    assert running.agent.state is ConnectionState.HELLO_SENT
    assert host.of_type(Report) == []  # nothing is reported before the welcome

    host.welcome(1000)
    report = host.wait_for(Report)[0]
    offer = host.wait_for(Offer)[0]
    assert report.mem_total_kib == 4 * GIB_KIB
    assert report.mem_available_kib == 3 * GIB_KIB
    assert report.psi_some_total_us == 1000
    assert offer.kib > GIB_KIB
    # One sequence for report, offer and need, from 0 after the hello.
    assert (report.seq, offer.seq) == (0, 1)
    assert running.agent.state is ConnectionState.ACTIVE
    assert running.agent.interval_s == 1.0
    assert "READY=1" in running.notifications


def test_reports_follow_the_hosts_interval(
    pair: Tuple[SocketTransport, HostEnd], proc_tree: ProcTree, start_agent: StartAgent
) -> None:
    transport, host = pair
    start_agent(transport, proc_tree)
    _handshake(host, interval_ms=200)
    start = time.monotonic()
    host.pump(1.0)
    elapsed = time.monotonic() - start
    reports = host.of_type(Report)
    # One at the welcome, then one per 200 ms: about 6 in the first second (fewer
    # when the machine is loaded, never a burst).
    assert 3 <= len(reports) <= 8, (len(reports), elapsed)
    seqs = [r.seq for r in reports]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_big_change_is_reported_at_once(
    pair: Tuple[SocketTransport, HostEnd], proc_tree: ProcTree, start_agent: StartAgent
) -> None:
    transport, host = pair
    start_agent(transport, proc_tree)
    _handshake(host, interval_ms=10_000)
    host.pump(0.3)
    assert len(host.of_type(Report)) == 1  # the next one is 10 s away

    proc_tree.write(MemAvailable=2 * GIB_KIB)  # moves by 25 % of MemTotal
    changed_at = time.monotonic()
    reports = host.wait_for(Report, timeout_s=8.0, count=2)
    assert time.monotonic() - changed_at < 5.0  # not the 10 s interval, even under load
    assert reports[-1].mem_available_kib == 2 * GIB_KIB


def test_small_change_waits_for_the_interval(
    pair: Tuple[SocketTransport, HostEnd], proc_tree: ProcTree, start_agent: StartAgent
) -> None:
    transport, host = pair
    start_agent(transport, proc_tree)
    _handshake(host, interval_ms=10_000)
    proc_tree.write(MemAvailable=3 * GIB_KIB - 50 * 1024)  # about 1 % of MemTotal
    host.pump(0.5)
    assert len(host.of_type(Report)) == 1


def test_need_and_offer_follow_the_proc_tree(
    pair: Tuple[SocketTransport, HostEnd], proc_tree: ProcTree, start_agent: StartAgent
) -> None:
    transport, host = pair
    start_agent(transport, proc_tree)
    _handshake(host, interval_ms=200)
    first_offer = host.wait_for(Offer)[0]
    assert first_offer.kib > 0
    assert host.of_type(Need) == []

    # The guest runs short: little available, stalling on memory.
    proc_tree.pressure = (35.0, 1.0, 5_000_000, 100_000)
    proc_tree.write(MemAvailable=150 * 1024, MemFree=40 * 1024, Inactive_file=20 * 1024)
    need = host.wait_for(Need)[0]
    assert need.urgency in ("high", "critical")
    assert need.kib >= 200 * 1024
    assert "psi_some_avg10=35.0%" in need.reason
    withdrawn = host.wait_for(Offer, count=2)[-1]
    assert withdrawn.kib == 0

    # It recovers: the need is withdrawn and memory is offered again.
    proc_tree.pressure = (0.0, 0.0, 5_000_000, 100_000)
    proc_tree.write(MemAvailable=3 * GIB_KIB, MemFree=2 * GIB_KIB, Inactive_file=512 * 1024)
    needs = host.wait_for(Need, count=2)
    assert needs[-1].kib == 0
    offers = host.wait_for(Offer, count=3)
    assert offers[-1].kib > 0


def test_ping_is_answered_and_decisions_are_kept(
    pair: Tuple[SocketTransport, HostEnd], proc_tree: ProcTree, start_agent: StartAgent
) -> None:
    transport, host = pair
    running = start_agent(transport, proc_tree)
    _handshake(host)
    host.send(Ping(nonce=4242))
    assert host.wait_for(Pong)[0].nonce == 4242
    host.send(Decision(balloon_target_kib=3 * GIB_KIB, reason="host under pressure"))
    host.send(Ping(nonce=1))
    host.wait_for(Pong, count=2)
    assert running.agent.last_decision is not None
    assert running.agent.last_decision.balloon_target_kib == 3 * GIB_KIB


def test_prepare_release_re_offers_at_once(
    pair: Tuple[SocketTransport, HostEnd], proc_tree: ProcTree, start_agent: StartAgent
) -> None:
    transport, host = pair
    start_agent(transport, proc_tree)
    _handshake(host, interval_ms=10_000)
    host.wait_for(Offer)
    host.send(Request(kind="prepare_release", kib=GIB_KIB))
    offers = host.wait_for(Offer, count=2, timeout_s=5.0)  # the interval is 10 s
    assert offers[-1].kib == offers[0].kib  # the same offer, repeated on request

    host.send(Request(kind="defragment", kib=0))
    error = host.wait_for(Error)[0]
    assert (error.code, error.ref_type) == ("unknown_request", "request")


def test_host_garbage_never_stops_the_agent(
    pair: Tuple[SocketTransport, HostEnd], proc_tree: ProcTree, start_agent: StartAgent
) -> None:
    transport, host = pair
    running = start_agent(transport, proc_tree)
    _handshake(host, interval_ms=200)

    host.send_raw(os.urandom(20_000))
    host.send_raw(b"\x00" + b"\x01" * (MAX_FRAME_BYTES * 2) + b"\x00")  # oversized
    host.send_raw(encode_frame(msgpack.packb({"type": "frobnicate", "x": 1})))
    host.send_raw(encode_frame(msgpack.packb([1, 2, 3])))
    host.send_raw(encode_frame(msgpack.packb({"type": "welcome", "protocol_version": "1"})))
    errors = host.wait_for(Error, count=3)
    by_code = {e.code: e for e in errors}
    assert by_code["unknown_type"].ref_type == "frobnicate"
    assert "not_a_map" in by_code
    assert any(code in by_code for code in ("bad_type", "missing_field"))

    # Still alive and talking: reports continue, pings are answered.
    count = len(host.of_type(Report))
    host.send(Ping(nonce=7))
    assert host.wait_for(Pong)[-1].nonce == 7
    host.wait_for(Report, count=count + 2)
    assert running.agent.state is ConnectionState.ACTIVE
    assert running.agent.counters.protocol_errors >= 4


def test_error_replies_are_rate_limited(
    pair: Tuple[SocketTransport, HostEnd], proc_tree: ProcTree, start_agent: StartAgent
) -> None:
    transport, host = pair
    start_agent(transport, proc_tree)
    _handshake(host, interval_ms=1000)
    bad = encode_frame(msgpack.packb({"type": "nonsense"}))
    host.send_raw(bad * 500)
    host.wait_for(Error)  # however long a loaded machine takes for the first
    host.pump(0.5)
    assert 1 <= len(host.of_type(Error)) <= 20


def test_messages_only_a_guest_sends_are_refused(
    pair: Tuple[SocketTransport, HostEnd], proc_tree: ProcTree, start_agent: StartAgent
) -> None:
    transport, host = pair
    start_agent(transport, proc_tree)
    _handshake(host)
    host.send(Offer(seq=1, kib=5))
    error = host.wait_for(Error)[0]
    assert (error.code, error.ref_type) == ("unexpected_message", "offer")


def test_hello_is_repeated_with_backoff_until_welcomed(
    pair: Tuple[SocketTransport, HostEnd], proc_tree: ProcTree, start_agent: StartAgent
) -> None:
    transport, host = pair
    start_agent(transport, proc_tree)
    host.pump(1.0)
    # Backoff 0.05, 0.1, 0.2, 0.2 ...: about 6 hellos in a second, not hundreds.
    hellos = len(host.of_type(Hello))
    assert 2 <= hellos <= 9
    host.welcome(200)
    host.wait_for(Report)


def test_stop_says_bye(
    pair: Tuple[SocketTransport, HostEnd], proc_tree: ProcTree, start_agent: StartAgent
) -> None:
    transport, host = pair
    running = start_agent(transport, proc_tree)
    _handshake(host)
    stop_at = time.monotonic()
    running.stop()
    assert time.monotonic() - stop_at < 0.5
    assert host.wait_for(Bye)[0].reason == "agent stopping"
    assert running.agent.state is ConnectionState.STOPPED
    assert "STOPPING=1" in running.notifications


class _Listener:
    """A host that listens on a unix socket, as ebbd's side of a channel would."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(1)
        self.sock.settimeout(15.0)  # generous: only a failing test waits it out

    def accept(self) -> HostEnd:
        conn, _ = self.sock.accept()
        return HostEnd(conn)

    def close(self) -> None:
        self.sock.close()


def test_host_disconnect_and_reconnect(
    tmp_path: Path, proc_tree: ProcTree, start_agent: StartAgent
) -> None:
    listener = _Listener(tmp_path / "channel.sock")
    running = start_agent(UnixSocketTransport(str(listener.path)), proc_tree)
    try:
        host = listener.accept()
        _handshake(host, interval_ms=200)
        host.close()  # the host daemon goes away mid-session

        host = listener.accept()  # the agent comes back on its own
        _handshake(host, interval_ms=200)
        host.wait_for(Report, count=2)
        assert running.agent.state is ConnectionState.ACTIVE
        assert running.agent.counters.disconnects >= 1
        assert running.agent.counters.welcomes == 2
        host.close()
    finally:
        listener.close()


def test_absent_host_is_retried_without_busy_looping(
    tmp_path: Path, proc_tree: ProcTree, start_agent: StartAgent
) -> None:
    path = tmp_path / "later.sock"
    running = start_agent(UnixSocketTransport(str(path)), proc_tree)
    cpu_before = time.process_time()
    time.sleep(1.0)
    cpu_used = time.process_time() - cpu_before
    assert running.agent.state is ConnectionState.DISCONNECTED
    assert cpu_used < 0.2, f"the agent burnt {cpu_used:.2f} s of CPU waiting for the host"

    listener = _Listener(path)  # the host appears
    try:
        host = listener.accept()
        _handshake(host)
        host.close()
    finally:
        listener.close()


def test_welcome_with_an_unknown_version_is_refused(
    pair: Tuple[SocketTransport, HostEnd], proc_tree: ProcTree, start_agent: StartAgent
) -> None:
    transport, host = pair
    running = start_agent(transport, proc_tree)
    host.wait_for(Hello)
    host.send(Welcome(protocol_version=9, report_interval_ms=1000, capabilities=()))
    error = host.wait_for(Error)[0]
    assert error.code == "unsupported_version"
    assert running.agent.state is ConnectionState.HELLO_SENT
    host.welcome(1000)
    host.wait_for(Report)


def test_bye_from_the_host_stops_reports_until_the_next_welcome(
    tmp_path: Path, proc_tree: ProcTree, start_agent: StartAgent
) -> None:
    listener = _Listener(tmp_path / "channel.sock")
    running = start_agent(UnixSocketTransport(str(listener.path)), proc_tree)
    try:
        host = listener.accept()
        _handshake(host, interval_ms=100)
        host.send(Bye(reason="ebbd restarting"))
        host.wait_for(Hello, count=2)
        assert running.agent.state is ConnectionState.HELLO_SENT
        reports = len(host.of_type(Report))
        host.pump(0.3)
        assert len(host.of_type(Report)) <= reports + 1  # one may have crossed the bye
        host.close()  # ebbd goes away for good; the agent waits for the next one
        host = listener.accept()
        _handshake(host)
        host.close()
    finally:
        listener.close()


def test_hello_required_starts_a_new_session(
    pair: Tuple[SocketTransport, HostEnd], proc_tree: ProcTree, start_agent: StartAgent
) -> None:
    transport, host = pair
    start_agent(transport, proc_tree)
    _handshake(host, interval_ms=100)
    host.wait_for(Report, count=3)
    # A restarted host has no session: it asks for a hello instead of taking reports.
    host.send(Error(code="hello_required", message="no session", ref_type="report"))
    host.wait_for(Hello, count=2)
    host.received.clear()
    host.welcome(100)
    assert host.wait_for(Report)[0].seq == 0


def test_a_host_that_speaks_before_welcoming_gets_a_hello(
    pair: Tuple[SocketTransport, HostEnd], proc_tree: ProcTree, start_agent: StartAgent
) -> None:
    import dataclasses

    transport, host = pair
    slow_hellos = dataclasses.replace(FAST_CONFIG, hello_retry_min_s=30.0, hello_retry_max_s=60.0)
    start_agent(transport, proc_tree, slow_hellos)
    host.wait_for(Hello)
    time.sleep(1.0)  # the nudge is limited to one a second
    host.send(Ping(nonce=5))  # e.g. ebbd started after the agent's hello got lost
    assert host.wait_for(Pong)[0].nonce == 5
    host.wait_for(Hello, count=2, timeout_s=10.0)  # the hello retry is 30 s


def test_no_offer_or_need_unless_the_host_takes_them(
    pair: Tuple[SocketTransport, HostEnd], proc_tree: ProcTree, start_agent: StartAgent
) -> None:
    transport, host = pair
    start_agent(transport, proc_tree)
    host.wait_for(Hello)
    host.welcome(100, capabilities=())
    proc_tree.pressure = (60.0, 20.0, 1, 1)
    proc_tree.write()
    host.wait_for(Report, count=4)
    assert host.of_type(Offer) == [] and host.of_type(Need) == []
    # An unasked welcome turns them on without starting a new session.
    last_seq = host.of_type(Report)[-1].seq
    host.welcome(100)
    need = host.wait_for(Need)[0]
    assert need.urgency == "critical"
    assert need.seq > last_seq


def test_unanswered_keepalive_leads_to_a_new_handshake(
    pair: Tuple[SocketTransport, HostEnd], proc_tree: ProcTree, start_agent: StartAgent
) -> None:
    import dataclasses

    transport, host = pair
    config = dataclasses.replace(FAST_CONFIG, keepalive_s=0.3)
    start_agent(transport, proc_tree, config)
    _handshake(host, interval_ms=200)
    host.wait_for(Ping, timeout_s=10.0)
    # The host does not answer (a serial line whose other end went away) ...
    host.wait_for(Hello, count=2, timeout_s=10.0)


def test_unreadable_proc_pauses_reports_and_they_resume(
    pair: Tuple[SocketTransport, HostEnd], proc_tree: ProcTree, start_agent: StartAgent
) -> None:
    transport, host = pair
    running = start_agent(transport, proc_tree)
    _handshake(host, interval_ms=100)
    (proc_tree.root / "meminfo").unlink()
    host.pump(0.3)
    count = len(host.of_type(Report))
    host.pump(0.4)
    assert len(host.of_type(Report)) == count  # nothing to report; still connected
    host.send(Ping(nonce=3))
    assert host.wait_for(Pong)[0].nonce == 3
    proc_tree.write()
    host.wait_for(Report, count=count + 2)
    assert running.agent.state is ConnectionState.ACTIVE


def test_a_transport_can_ask_for_quick_reopens(
    tmp_path: Path, proc_tree: ProcTree, start_agent: StartAgent
) -> None:
    """A virtio-serial port is probed every second whatever the backoff (see transport)."""
    import dataclasses

    opened_at: List[float] = []

    class QuickProbe(UnixSocketTransport):
        reopen_max_s = 0.1

        def _open_fd(self) -> int:
            opened_at.append(time.monotonic())
            return super()._open_fd()

    path = tmp_path / "late.sock"
    slow_backoff = dataclasses.replace(FAST_CONFIG, backoff_min_s=0.05, backoff_max_s=30.0)
    start_agent(QuickProbe(str(path)), proc_tree, slow_backoff)
    time.sleep(1.0)  # without the cap the backoff would have reached 0.8 s and growing
    gaps = [b - a for a, b in zip(opened_at, opened_at[1:])]
    assert len(gaps) >= 3 and max(gaps[2:]) < 0.3, gaps
    listener = _Listener(path)
    try:
        appeared = time.monotonic()
        host = listener.accept()
        host.wait_for(Hello)
        assert time.monotonic() - appeared < 0.5
        host.close()
    finally:
        listener.close()


def test_port_without_a_host_is_checked_once_per_wait(
    proc_tree: ProcTree, start_agent: StartAgent
) -> None:
    """Like a virtio-serial port with nothing on the host side: it opens, then hangs up."""
    import dataclasses

    from ebb.guest.transport import Transport

    opened_at: List[float] = []

    class HungUpPort(Transport):
        description = "hung-up port"
        reopen_max_s = 0.1

        def _open_fd(self) -> int:
            opened_at.append(time.monotonic())
            mine, theirs = socket.socketpair()
            theirs.close()
            return mine.detach()

    config = dataclasses.replace(FAST_CONFIG, backoff_min_s=0.1, backoff_max_s=10.0)
    running = start_agent(HungUpPort(), proc_tree, config)
    cpu_before = time.process_time()
    time.sleep(1.0)
    cpu_used = time.process_time() - cpu_before
    gaps = sorted(b - a for a, b in zip(opened_at, opened_at[1:]))
    assert len(gaps) >= 3, opened_at
    # One 0.1 s wait per attempt: not two (0.2 s), not none (a busy loop).
    assert 0.09 <= gaps[len(gaps) // 2] < 0.18, gaps
    assert running.agent.state is ConnectionState.DISCONNECTED
    assert cpu_used < 0.2


def test_a_calm_guest_is_sampled_half_as_often(proc_tree: ProcTree) -> None:
    # Under emulation every sample costs the guest milliseconds of CPU, so while
    # nothing moves the watch between reports slows down; any sign of trouble
    # brings it back. Driven with a fake clock: the schedule is the behaviour.
    from ebb.guest.agent import Agent
    from ebb.guest.collect import MemoryCollector

    guest_sock, host_sock = socket.socketpair()
    now = [0.0]
    agent = Agent(SocketTransport(guest_sock), MemoryCollector(str(proc_tree.root)),
                  FAST_CONFIG, clock=lambda: now[0])
    agent.transport.open()
    watch = FAST_CONFIG.watch_interval_s
    agent.interval_s = 10.0  # reports far apart: only the watch samples in between

    def gap_after_sample() -> float:
        agent._sample_and_send(now[0])
        gap = agent._next_sample_at - now[0]
        now[0] = agent._next_sample_at
        return round(gap, 6)

    try:
        assert gap_after_sample() == watch  # the first sample: nothing to compare yet
        assert gap_after_sample() == 2 * watch  # calm
        proc_tree.vmstat["pswpout"] += 500
        proc_tree.write()
        assert gap_after_sample() == watch  # swapping out
        assert gap_after_sample() == 2 * watch  # stopped
        proc_tree.pressure = (3.0, 0.0, 5000, 500)
        proc_tree.write()
        assert gap_after_sample() == watch  # a memory stall, however small
        proc_tree.pressure = (0.0, 0.0, 5000, 500)
        proc_tree.write(MemAvailable=3 * GIB_KIB - 100 * 1024)  # 2.4 % of MemTotal
        assert gap_after_sample() == watch
        assert gap_after_sample() == 2 * watch
    finally:
        agent.close()
        host_sock.close()


def test_young_or_refaulting_cache_is_not_offered(
    pair: Tuple[SocketTransport, HostEnd], proc_tree: ProcTree, start_agent: StartAgent
) -> None:
    transport, host = pair
    # Cache counts once it is a second old; any refault holds it for a second; no
    # refault rate is a need.
    config = dataclasses.replace(FAST_CONFIG, yield_config=YieldConfig(
        refault_cache_per_s=1.0, refault_low_per_s=1e9, refault_high_per_s=1e9,
        cache_hold_s=1.0))
    running = start_agent(transport, proc_tree, config)
    _handshake(host, interval_ms=200)
    # Just started: the agent cannot tell how old the cache is, so offers free memory.
    free_only = host.wait_for(Offer)[0].kib
    # A second on, the 512 MiB of inactive cache (less the dirty MiB) is offered too.
    full = host.wait_for(Offer, timeout_s=5.0, count=2)[-1].kib
    assert full - free_only == 511 * 1024

    # Evicted pages are read back: the cache is in use and held out of offers.
    proc_tree.vmstat["workingset_refault_file"] += 50
    proc_tree.write()
    held = host.wait_for(Offer, count=3)[-1].kib
    assert held == free_only
    assert host.of_type(Need) == []
    assert running.agent.cache_held(time.monotonic())

    # A quiet second later it is offered again.
    assert host.wait_for(Offer, timeout_s=5.0, count=4)[-1].kib == full

    # The guest reads 1 GiB more: that cache is too young to offer for a second.
    proc_tree.write(Cached=2 * GIB_KIB, Inactive_file=1536 * 1024, MemFree=GIB_KIB,
                    MemAvailable=3 * GIB_KIB)
    young = host.wait_for(Offer, count=5)[-1].kib
    assert young == full - GIB_KIB
    aged = host.wait_for(Offer, timeout_s=5.0, count=6)[-1].kib
    assert aged == young + GIB_KIB == full
