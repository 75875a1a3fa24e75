"""Yield requests, yielded answers and pressure levels over the real protocol."""

from __future__ import annotations

import logging

import pytest
from ebb.host.channels import YieldUnavailable
from ebb.host.channels.yields import BUSY, NO_AGENT, NO_CAPABILITY, SESSION_ENDED, TIMED_OUT
from ebb.protocol import Error, Pressure, Request
from test_channels import active_agent, turn

NO_YIELD = ("offer", "need", "decision", "prepare_release")


def test_a_yield_request_reaches_the_agent_and_its_answer_resolves_the_handle(hub, connector):
    agent = active_agent(hub, connector)
    handle = hub.request_yield("vm1", 200_000, deadline_ms=4000)
    turn(hub)
    request = agent.wait_for("request")
    assert isinstance(request, Request)
    assert (request.kind, request.kib, request.deadline_ms) == ("yield", 200_000, 4000)
    assert request.request_id == handle.request_id
    assert not handle.done
    assert hub.get("vm1").yield_pending

    agent.yielded(150_000, request_id=request.request_id, asked_kib=200_000)
    turn(hub)
    assert handle.wait(1.0)
    assert handle.answer is not None and handle.answer.yielded.freed_kib == 150_000
    state = hub.get("vm1")
    assert not state.yield_pending
    assert state.last_yield is not None and state.last_yield.requested
    assert state.yields == 1


def test_one_request_outstanding_per_guest(hub, connector):
    active_agent(hub, connector)
    hub.request_yield("vm1", 1000, deadline_ms=4000)
    with pytest.raises(YieldUnavailable) as err:
        hub.request_yield("vm1", 1000, deadline_ms=4000)
    assert err.value.code == BUSY


def test_an_unanswered_request_times_out_at_its_deadline(hub, connector, clock):
    agent = active_agent(hub, connector)
    handle = hub.request_yield("vm1", 1000, deadline_ms=3000)
    turn(hub)
    clock.advance(2.0)
    turn(hub)
    assert not handle.done
    clock.advance(1.5)
    turn(hub)
    assert handle.done and handle.failure == TIMED_OUT
    # A late answer is recorded but resolves nothing, and a new request may go.
    agent.yielded(500, request_id=handle.request_id)
    turn(hub)
    assert hub.get("vm1").last_yield is not None
    assert hub.request_yield("vm1", 1000, deadline_ms=3000).request_id != handle.request_id


def test_a_restarted_agent_ends_the_outstanding_request(hub, connector):
    agent = active_agent(hub, connector)
    handle = hub.request_yield("vm1", 1000, deadline_ms=60_000)
    turn(hub)
    agent.hello()
    turn(hub)
    assert handle.done and handle.failure == SESSION_ENDED


def test_guests_that_cannot_yield_are_refused_with_the_reason(hub, connector):
    hub.set_guests({"vm1": "/run/vm1.sock", "novm": None})
    turn(hub)
    agent = connector.agent("/run/vm1.sock")
    with pytest.raises(YieldUnavailable) as err:
        hub.request_yield("vm1", 1000, deadline_ms=1000)
    assert err.value.code == NO_AGENT
    agent.hello(capabilities=NO_YIELD)
    turn(hub)
    with pytest.raises(YieldUnavailable) as err:
        hub.request_yield("vm1", 1000, deadline_ms=1000)
    assert err.value.code == NO_CAPABILITY
    assert "--no-yield" in str(err.value)
    with pytest.raises(YieldUnavailable) as err:
        hub.request_yield("novm", 1000, deadline_ms=1000)
    assert err.value.code == NO_AGENT


def test_pressure_goes_after_welcome_and_on_change_only_to_yield_agents(hub, connector):
    hub.set_pressure(2, "host swapping")
    turn(hub)
    agent = active_agent(hub, connector)
    turn(hub)
    agent.pump(0.1)
    assert [m.level for m in agent.received if isinstance(m, Pressure)] == [2]
    hub.set_guests({"vm1": "/run/vm1.sock", "vm2": "/run/vm2.sock"})
    turn(hub)
    plain_hub_agent = connector.agent("/run/vm2.sock")
    plain_hub_agent.hello(capabilities=NO_YIELD)
    turn(hub)
    hub.set_pressure(2, "still swapping")
    hub.set_pressure(0, "host has memory to spare")
    turn(hub)
    levels = [m.level for m in agent.pump(0.1) if isinstance(m, Pressure)]
    assert levels == [0]
    assert plain_hub_agent.wait_for("pressure", timeout_s=0.2) is None


def test_a_background_yield_while_the_host_is_not_short_is_noticed(hub, connector, caplog):
    agent = active_agent(hub, connector)
    with caplog.at_level(logging.WARNING, logger="ebb.host.channels.session"):
        agent.yielded(4000)
        agent.yielded(4000)
        turn(hub)
    state = hub.get("vm1")
    assert state.yields_unasked == 2
    warnings = [r for r in caplog.records if "while the host is not short" in r.getMessage()]
    assert len(warnings) == 1  # rate-limited

    hub.set_pressure(1, "available memory short")
    turn(hub)
    agent.yielded(4000)
    turn(hub)
    assert hub.get("vm1").yields_unasked == 2


def test_yielded_from_an_agent_without_the_capability_is_refused(hub, connector):
    hub.set_guests({"vm1": "/run/vm1.sock"})
    turn(hub)
    agent = connector.agent("/run/vm1.sock")
    agent.hello(capabilities=NO_YIELD)
    turn(hub)
    agent.yielded(4000)
    turn(hub)
    error = agent.wait_for("error")
    assert isinstance(error, Error) and error.ref_type == "yielded"
    assert hub.get("vm1").last_yield is None
