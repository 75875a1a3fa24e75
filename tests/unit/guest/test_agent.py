"""The agent's I/O loop: the session driven over a transport.

Most tests run the loop one turn at a time on a scripted transport and a fake
clock (no thread, no socket, no sleep), so reopen waits and schedules are exact.
Two run the real loop in a thread over real sockets: a socket pair and a unix
socket the host goes away from and comes back on.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Iterator, Tuple

import pytest
from agent_testkit import (
    SESSION_CONFIG,
    FakeClock,
    HostEnd,
    ProcTree,
    ScriptedTransport,
    loop_agent,
    run_until,
)
from conftest import StartAgent
from ebb.guest.agent import ConnectionState
from ebb.guest.transport import SocketTransport, UnixSocketTransport
from ebb.protocol.messages import (
    Bye,
    Hello,
    Offer,
    Ping,
    Pong,
    Report,
    Welcome,
)

WELCOME = Welcome(protocol_version=1, report_interval_ms=1000,
                  capabilities=("offer", "need", "decision", "prepare_release"))


# --- the loop on a fake clock -------------------------------------------------------------


def test_the_loop_says_hello_then_reports_on_the_hosts_interval(proc_tree: ProcTree) -> None:
    transport = ScriptedTransport(FakeClock())
    agent = loop_agent(transport, proc_tree)
    run_until(agent, 2.5)
    assert transport.sent.times_of(Hello) == [0.0, 1.0]
    transport.host_sends(WELCOME)
    run_until(agent, 6.0)
    assert transport.sent.times_of(Report) == [2.5, 3.5, 4.5, 5.5]
    assert agent.state is ConnectionState.ACTIVE
    assert agent.counters.reports_sent == 4
    transport.host_sends(Ping(nonce=9))
    run_until(agent, 6.0)
    assert transport.sent.of_type(Pong)[-1].nonce == 9


def test_an_absent_host_is_retried_after_a_doubling_wait(proc_tree: ProcTree) -> None:
    transport = ScriptedTransport(FakeClock(), fail_opens=6)
    agent = loop_agent(transport, proc_tree)
    run_until(agent, 60.0)
    # One open per wait, 1 s doubling to 10 s: never a busy loop, never a longer wait.
    assert transport.opened_at == [0.0, 1.0, 3.0, 7.0, 15.0, 25.0, 35.0]
    assert agent.state is ConnectionState.HELLO_SENT
    assert transport.sent.times_of(Hello)[0] == 35.0
    assert agent.counters.connect_attempts == 7


def test_a_transport_can_ask_for_quick_reopens(proc_tree: ProcTree) -> None:
    """A virtio-serial port is probed every second whatever the backoff (see transport)."""
    transport = ScriptedTransport(FakeClock(), fail_opens=5, reopen_max_s=1.0)
    agent = loop_agent(transport, proc_tree)
    run_until(agent, 5.5)
    assert transport.opened_at == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert agent.state is ConnectionState.HELLO_SENT


def test_a_port_without_a_host_is_checked_once_per_wait(proc_tree: ProcTree) -> None:
    """Like a virtio-serial port with nothing on the host side: it opens, then hangs up."""

    class HungUpPort(ScriptedTransport):
        def open(self) -> None:
            super().open()
            self.hang_up = True

    transport = HungUpPort(FakeClock(), reopen_max_s=1.0)
    agent = loop_agent(transport, proc_tree)
    run_until(agent, 4.5)
    # One 1 s wait per attempt: not two, not none.
    assert transport.opened_at == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert transport.sent.times_of(Hello) == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert agent.state is ConnectionState.DISCONNECTED
    assert agent.counters.disconnects == 5


def test_a_write_that_fails_drops_the_connection_and_reopens(proc_tree: ProcTree) -> None:
    transport = ScriptedTransport(FakeClock())
    agent = loop_agent(transport, proc_tree)
    transport.host_sends(WELCOME)
    run_until(agent, 1.5)
    transport.fail_writes = True  # the host end stopped reading
    run_until(agent, 2.5)
    assert agent.state is ConnectionState.DISCONNECTED
    assert not transport.is_open
    transport.fail_writes = False
    run_until(agent, 5.5)
    # The write at 2 s timed out after 2 s; reopened 1 s later with a hello.
    assert transport.opened_at == [0.0, 5.0]
    assert transport.sent.times_of(Hello) == [0.0, 5.0]
    assert agent.state is ConnectionState.HELLO_SENT


def test_an_unreadable_proc_is_a_pause_not_a_crash(proc_tree: ProcTree) -> None:
    transport = ScriptedTransport(FakeClock())
    agent = loop_agent(transport, proc_tree)
    transport.host_sends(WELCOME)
    run_until(agent, 1.5)
    (proc_tree.root / "meminfo").unlink()
    run_until(agent, 4.5)
    proc_tree.write()
    run_until(agent, 5.5)
    assert transport.sent.times_of(Report) == [0.0, 1.0, 5.0]
    assert agent.state is ConnectionState.ACTIVE


# --- the real loop over real sockets ------------------------------------------------------


@pytest.fixture
def pair() -> Iterator[Tuple[SocketTransport, HostEnd]]:
    guest_sock, host_sock = socket.socketpair()
    host = HostEnd(host_sock)
    yield SocketTransport(guest_sock), host
    host.close()


def _handshake(host: HostEnd, interval_ms: int = 1000) -> Report:
    host.wait_for(Hello)
    host.welcome(interval_ms)
    return host.wait_for(Report)[0]


def test_over_a_socket_pair_handshake_report_offer_and_stop_says_bye(
    pair: Tuple[SocketTransport, HostEnd], proc_tree: ProcTree, start_agent: StartAgent
) -> None:
    transport, host = pair
    running = start_agent(transport, proc_tree)
    assert host.wait_for(Hello)[0].hostname == "guest-under-test"
    host.welcome(10_000)
    assert host.wait_for(Report)[0].seq == 0
    assert host.wait_for(Offer)[0].seq == 1
    assert "READY=1" in running.notifications
    assert "STATUS=reporting to the host every 10000 ms" in running.notifications
    running.stop()  # ends the loop's wait at once (the next report is 10 s away)
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


def test_over_a_unix_socket_the_host_goes_away_and_comes_back(
    tmp_path: Path, proc_tree: ProcTree, start_agent: StartAgent
) -> None:
    listener = _Listener(tmp_path / "channel.sock")
    running = start_agent(UnixSocketTransport(str(listener.path)), proc_tree)
    try:
        host = listener.accept()
        _handshake(host, interval_ms=200)
        host.close()  # the host daemon goes away mid-session

        host = listener.accept()  # the agent comes back on its own
        assert _handshake(host, interval_ms=200).seq == 0
        host.wait_for(Report, count=2)
        assert running.agent.state is ConnectionState.ACTIVE
        assert running.agent.counters.disconnects >= 1
        assert running.agent.counters.welcomes == 2
        host.close()
    finally:
        listener.close()


def test_stop_ends_a_reopen_wait_at_once(tmp_path: Path, proc_tree: ProcTree,
                                         start_agent: StartAgent) -> None:
    import dataclasses

    slow = dataclasses.replace(SESSION_CONFIG, backoff_min_s=30.0, backoff_max_s=30.0)
    running = start_agent(UnixSocketTransport(str(tmp_path / "nobody.sock")), proc_tree, slow)
    deadline = time.monotonic() + 15.0
    while running.agent.counters.connect_attempts == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert running.agent.state is ConnectionState.DISCONNECTED
    running.stop(timeout_s=10.0)  # not 30 s: the stop pipe ends the wait
    assert running.agent.state is ConnectionState.STOPPED
