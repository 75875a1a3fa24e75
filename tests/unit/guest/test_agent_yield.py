"""The agent's side of the yield protocol (PROTOCOL.md 4.7) against a host end."""

from __future__ import annotations

import dataclasses
import socket
from typing import Iterator, Tuple

import pytest
from agent_testkit import FAST_CONFIG, MIB_KIB, FakeKernel, HostEnd, ProcTree
from conftest import StartAgent
from ebb.guest.collect import MemoryCollector
from ebb.guest.reclaim import ReclaimSupport
from ebb.guest.transport import SocketTransport
from ebb.guest.yielder import Yielder
from ebb.guest.yielding import ReclaimLimits, YieldConfig
from ebb.protocol.messages import Hello, Pressure, Report, Request, Yielded

SUPPORTED = ReclaimSupport("/fake/memory.reclaim", swappiness_arg=True)


@pytest.fixture
def pair() -> Iterator[Tuple[SocketTransport, HostEnd]]:
    guest_sock, host_sock = socket.socketpair()
    host = HostEnd(host_sock)
    yield SocketTransport(guest_sock), host
    host.close()


def yielder_for(proc_tree: ProcTree, kernel: FakeKernel, config: YieldConfig,
                enabled: bool = True) -> Yielder:
    return Yielder(SUPPORTED, MemoryCollector(str(proc_tree.root)), config,
                   ReclaimLimits(enabled=enabled), reclaimer=kernel)


def test_a_yield_request_is_answered_with_yielded(
    pair: Tuple[SocketTransport, HostEnd], proc_tree: ProcTree, start_agent: StartAgent
) -> None:
    transport, host = pair
    kernel = FakeKernel(proc_tree)
    start_agent(transport, proc_tree, yielder=yielder_for(proc_tree, kernel, YieldConfig()))
    assert "yield" in host.wait_for(Hello)[0].capabilities
    host.welcome(10_000)
    host.wait_for(Report)
    host.send(Request(kind="yield", kib=100 * MIB_KIB, request_id=41, deadline_ms=5000))
    (answer,) = host.wait_for(Yielded)
    assert answer.request_id == 41
    assert answer.stopped == "done"
    assert answer.asked_kib == 100 * MIB_KIB
    assert answer.freed_kib == 100 * MIB_KIB  # what the fake kernel moved to MemFree
    assert len(kernel.written) == 4  # 32 + 32 + 32 + 4 MiB


def test_an_agent_that_may_not_yield_leaves_it_out_of_the_hello(
    pair: Tuple[SocketTransport, HostEnd], proc_tree: ProcTree, start_agent: StartAgent
) -> None:
    transport, host = pair
    kernel = FakeKernel(proc_tree)
    yielder = yielder_for(proc_tree, kernel, YieldConfig(), enabled=False)
    start_agent(transport, proc_tree, yielder=yielder)
    hello = host.wait_for(Hello)[0]
    assert "yield" not in hello.capabilities
    assert "offer" in hello.capabilities
    # A host that asks all the same is told why, and nothing is reclaimed.
    host.welcome(10_000)
    host.wait_for(Report)
    host.send(Request(kind="yield", kib=100 * MIB_KIB, request_id=5))
    (answer,) = host.wait_for(Yielded)
    assert (answer.request_id, answer.stopped, answer.asked_kib) == (5, "disabled", 0)
    assert kernel.written == []


def test_under_host_pressure_cold_cache_is_yielded_by_itself(
    pair: Tuple[SocketTransport, HostEnd], proc_tree: ProcTree, start_agent: StartAgent
) -> None:
    transport, host = pair
    kernel = FakeKernel(proc_tree)
    # Cache counts as cold after 0.2 s of not growing: the test does not wait minutes.
    config = YieldConfig(cache_hold_s=0.2)
    agent_config = dataclasses.replace(FAST_CONFIG, yield_config=config)
    start_agent(transport, proc_tree, agent_config,
                yielder=yielder_for(proc_tree, kernel, config))
    host.wait_for(Hello)
    host.welcome(200)
    host.wait_for(Report)
    host.send(Pressure(level=2, reason="host swapping"))
    answer = host.wait_for(Yielded)[0]
    assert answer.request_id is None
    assert answer.freed_kib > 0
    assert kernel.written
