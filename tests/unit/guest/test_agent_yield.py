"""The agent's side of the yield protocol (PROTOCOL.md 4.7): its loop, its Yielder
and a fake kernel, on a fake clock (no thread, no socket, no sleep)."""

from __future__ import annotations

import dataclasses

from agent_testkit import (
    MIB_KIB,
    SESSION_CONFIG,
    FakeClock,
    FakeKernel,
    ProcTree,
    ScriptedTransport,
    loop_agent,
    run_until,
)
from ebb.guest.agent import Agent
from ebb.guest.collect import MemoryCollector
from ebb.guest.reclaim import ReclaimSupport
from ebb.guest.session import AgentConfig
from ebb.guest.yielder import Yielder
from ebb.guest.yielding import ReclaimLimits, YieldConfig
from ebb.protocol.messages import CAPABILITIES, Hello, Pressure, Request, Welcome, Yielded

SUPPORTED = ReclaimSupport("/fake/memory.reclaim", swappiness_arg=True)
WELCOME = Welcome(protocol_version=1, report_interval_ms=1000, capabilities=CAPABILITIES)


def yielding_agent(proc_tree: ProcTree, kernel: FakeKernel, config: AgentConfig = SESSION_CONFIG,
                   enabled: bool = True) -> Agent:
    transport = ScriptedTransport(FakeClock())
    clock = transport.clock
    yielder = Yielder(SUPPORTED, MemoryCollector(str(proc_tree.root), clock=clock),
                      config.yield_config, ReclaimLimits(enabled=enabled), reclaimer=kernel,
                      clock=clock)
    return loop_agent(transport, proc_tree, config, yielder=yielder)


def sent(agent: Agent) -> ScriptedTransport:
    assert isinstance(agent.transport, ScriptedTransport)
    return agent.transport


def test_a_yield_request_is_answered_with_yielded(proc_tree: ProcTree) -> None:
    kernel = FakeKernel(proc_tree)
    agent = yielding_agent(proc_tree, kernel)
    run_until(agent, 0.5)
    assert "yield" in sent(agent).sent.of_type(Hello)[0].capabilities
    sent(agent).host_sends(WELCOME)
    run_until(agent, 1.5)
    sent(agent).host_sends(Request(kind="yield", kib=100 * MIB_KIB, request_id=41,
                                   deadline_ms=5000))
    run_until(agent, 2.0)
    (answer,) = sent(agent).sent.of_type(Yielded)
    assert answer.request_id == 41
    assert answer.stopped == "done"
    assert answer.asked_kib == 100 * MIB_KIB
    assert answer.freed_kib == 100 * MIB_KIB  # what the fake kernel moved to MemFree
    assert len(kernel.written) == 4  # 32 + 32 + 32 + 4 MiB
    assert sent(agent).sent.times_of(Yielded) == [1.5]  # steps do not wait for the clock


def test_an_agent_that_may_not_yield_leaves_it_out_of_the_hello(proc_tree: ProcTree) -> None:
    kernel = FakeKernel(proc_tree)
    agent = yielding_agent(proc_tree, kernel, enabled=False)
    run_until(agent, 0.5)
    hello = sent(agent).sent.of_type(Hello)[0]
    assert "yield" not in hello.capabilities
    assert "offer" in hello.capabilities
    # A host that asks all the same is told why, and nothing is reclaimed.
    sent(agent).host_sends(WELCOME)
    run_until(agent, 1.5)
    sent(agent).host_sends(Request(kind="yield", kib=100 * MIB_KIB, request_id=5))
    run_until(agent, 2.0)
    (answer,) = sent(agent).sent.of_type(Yielded)
    assert (answer.request_id, answer.stopped, answer.asked_kib) == (5, "disabled", 0)
    assert kernel.written == []


def test_under_host_pressure_cold_cache_is_yielded_by_itself(proc_tree: ProcTree) -> None:
    kernel = FakeKernel(proc_tree)
    agent = yielding_agent(proc_tree, kernel)
    sent(agent).host_sends(WELCOME)
    run_until(agent, 200.0)
    # At pressure 0 the agent never yields by itself, however cold its cache.
    assert sent(agent).sent.of_type(Yielded) == [] and kernel.written == []

    sent(agent).host_sends(Pressure(level=2, reason="host swapping"))
    run_until(agent, 202.0)
    (answer,) = sent(agent).sent.of_type(Yielded)
    assert sent(agent).sent.times_of(Yielded) == [201.0]  # the next sample after the pressure
    assert answer.request_id is None
    assert answer.freed_kib > 0
    assert kernel.written


def test_young_cache_is_not_yielded_under_pressure(proc_tree: ProcTree) -> None:
    kernel = FakeKernel(proc_tree)
    config = dataclasses.replace(SESSION_CONFIG, yield_config=YieldConfig(cache_hold_s=120.0))
    agent = yielding_agent(proc_tree, kernel, config)
    sent(agent).host_sends(WELCOME, Pressure(level=2, reason="host swapping"))
    run_until(agent, 119.5)
    # Until the agent has watched the cache for cache_hold_s, none of it counts as cold.
    assert kernel.written == []
    run_until(agent, 121.0)
    assert kernel.written
