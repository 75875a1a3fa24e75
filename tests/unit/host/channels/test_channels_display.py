"""Text a guest chooses (its hostname, agent version, a yield's reason) reaches
``ebbctl status`` and ``explain`` escaped, so a guest cannot write terminal
control sequences or fake lines on an administrator's screen."""

from __future__ import annotations

import logging

from ebb.protocol import Hello
from test_channels import turn

HOSTILE = "web1\x1b[2J\nfake line\x07"


def test_a_hostile_hostname_and_version_are_escaped_in_the_channel_state(hub, connector):
    hub.set_guests({"vm1": "/run/vm1.sock"})
    turn(hub)
    agent = connector.agent("/run/vm1.sock")
    agent.send(Hello(agent_version=HOSTILE, protocol_versions=(1,),
                     capabilities=("offer",), hostname=HOSTILE))
    turn(hub)
    assert agent.wait_for("welcome") is not None
    state = hub.get("vm1")
    assert state is not None and state.hostname is not None and state.agent_version is not None
    for text in (state.hostname, state.agent_version):
        assert text.isprintable(), text
        assert "fake line" in text


def test_a_hostile_yield_reason_is_escaped_in_the_log(hub, connector, caplog):
    caplog.set_level(logging.INFO)
    hub.set_guests({"vm1": "/run/vm1.sock"})
    turn(hub)
    agent = connector.agent("/run/vm1.sock")
    agent.hello()
    turn(hub)
    assert agent.wait_for("welcome") is not None
    agent.yielded(1024, asked_kib=2048, reason=HOSTILE)
    turn(hub)
    lines = [r.getMessage() for r in caplog.records if "yielded" in r.getMessage()]
    assert lines and all("\x1b" not in line and "\n" not in line for line in lines)
