"""PROTOCOL.md, the agent and ebbd say the same thing about the session.

The numbers and rules the document states for the reference agent and host
(hello retries, the first sequence number, keepalive, timeouts, cut-offs) are
read out of the document and compared with what the two implementations do.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import ebb.protocol
import msgpack
import pytest
from ebb.guest.session import AgentConfig, AgentSession, ConnectionState
from ebb.host.channels.session import GuestSession
from ebb.host.channels.state import ChannelLimits
from ebb.protocol import Hello, MessageReader, encode_frame, encode_message
from ebb.protocol.logs import RefusedInputLog, printable

SPEC = (Path(ebb.protocol.__file__).parent / "PROTOCOL.md").read_text(encoding="utf-8")


def number(pattern: str) -> float:
    """The number captured by ``pattern`` in PROTOCOL.md (whitespace-insensitive)."""
    flat = " ".join(SPEC.split())
    match = re.search(pattern, flat)
    assert match is not None, f"PROTOCOL.md no longer says {pattern!r}"
    return float(match.group(1))


@pytest.fixture
def agent_session() -> AgentSession:
    """The agent's side without any I/O: fed bytes and times, it queues frames."""
    return AgentSession(AgentConfig(hostname="guest"))


def test_hello_retry_is_what_the_document_says() -> None:
    config = AgentConfig(hostname="guest")
    assert config.hello_retry_min_s == number(r"reference agent waits (\d+) s, doubling")
    assert config.hello_retry_max_s == number(r"doubling up to (\d+) s\), never more")


def test_first_sequence_number_is_what_the_document_says(agent_session: AgentSession) -> None:
    agent_session.opened(0.0)
    assert agent_session.state is ConnectionState.HELLO_SENT
    assert agent_session._next_seq() == number(r"reference agent starts at (\d+)\)")
    assert "report seq=0 " in SPEC


def test_keepalive_and_timeouts_are_what_the_document_says() -> None:
    config = AgentConfig(hostname="guest")
    assert config.keepalive_s == number(r"heard nothing from the host for (\d+) s")
    assert config.write_timeout_s == number(r"Agent writes\*\* never wait more than (\d+) s")
    assert config.backoff_min_s == number(r"reopens it after a wait \((\d+) s for a virtio")
    assert config.backoff_max_s == number(r"1 s doubling to (\d+) s otherwise")
    limits = ChannelLimits()
    assert limits.heartbeat_interval_s == number(r"in session every (\d+) s")
    assert limits.stale_after_s == number(r"the longer of (\d+) s")
    assert limits.max_output_bytes == number(r"each guest has a (\d+) KiB output") * 1024


def test_cut_off_rules_are_what_the_document_says() -> None:
    limits = ChannelLimits()
    assert limits.max_frames_per_s == number(r"more than (\d+) frames")
    assert limits.max_bytes_per_s == number(r"or more than (\d+) KiB") * 1024
    assert limits.max_errors_per_window == number(r"more than (\d+) refused frames")
    assert limits.error_window_s == number(r"refused frames or messages within (\d+) s")
    assert limits.cut_off_backoff_s == number(r"reopened after (\d+) s")
    assert limits.cut_off_backoff_max_s == number(r"doubling on each repeat up to (\d+) s")
    assert "A connection is never closed" not in SPEC


INVALID_ERROR = msgpack.packb({"type": "error", "code": "NOT A TOKEN", "message": "x"})
ERROR_WITH_A_LONG_ARRAY = msgpack.packb({"type": "error", "x": list(range(65))})


@pytest.mark.parametrize("payload", [INVALID_ERROR, ERROR_WITH_A_LONG_ARRAY],
                         ids=["bad-code", "payload-limit"])
def test_ebbd_never_answers_an_error_with_an_error(payload: bytes) -> None:
    session = GuestSession("vm1", ChannelLimits())
    session.connected(0.0)
    assert session.feed(encode_frame(payload), 1.0, 1.0) == []
    assert session.protocol_errors == 1
    # A refused message of another type is still answered.
    other = msgpack.packb({"type": "ping", "x": list(range(65))})
    (reply,) = session.feed(encode_frame(other), 2.0, 2.0)
    (error,) = MessageReader().feed(reply)
    assert error.code == "too_long" and error.ref_type == "ping"


@pytest.mark.parametrize("payload", [INVALID_ERROR, ERROR_WITH_A_LONG_ARRAY],
                         ids=["bad-code", "payload-limit"])
def test_agent_never_answers_an_error_with_an_error(agent_session: AgentSession,
                                                   payload: bytes) -> None:
    agent_session.opened(0.0)
    agent_session.take_frames()  # the hello
    agent_session.receive(encode_frame(payload), 0.5)
    assert agent_session.counters.protocol_errors == 1
    assert agent_session.take_frames() == []


@pytest.mark.parametrize(
    ("payload", "code", "ref_type"),
    [
        (msgpack.packb({"type": "report", "x": [{}] * 65}), "too_long", "report"),
        (msgpack.packb({"type": "need", "x": {f"k{i}": 0 for i in range(65)}}),
         "too_many_keys", "need"),
        (msgpack.packb({"type": "offer", "x": [[[[1]]]]}), "too_deep", "offer"),
        (msgpack.packb({"x": [{}] * 65, "type": "report"}), "too_long", None),
        (b"\x82\xa4type\xa4ping\x01\x02", "bad_value", "ping"),  # integer key
        (b"\x83\xa4type\xa4ping\xa5nonce\x01\xa5nonce\x02", "bad_value", "ping"),  # repeated
        (b"\x83\xa4type\xa4ping\xa5nonce\x01\xa1x\xc4\x02ab", None, None),  # bin, unknown field
        (b"\x82\xa4type\xa3bye\xa6reason\xc4\x02ab", "bad_type", "bye"),  # bin for a str
    ],
)
def test_payload_errors_name_the_type_when_it_came_first(
    payload: bytes, code: str, ref_type: str
) -> None:
    (item,) = MessageReader().feed(encode_frame(payload))
    if code is None:
        assert not isinstance(item, ebb.protocol.ProtocolError)
        return
    assert isinstance(item, ebb.protocol.ProtocolError)
    assert (item.code, item.ref_type) == (code, ref_type)


def test_the_first_problem_in_the_payload_wins() -> None:
    # An over-long array, then invalid UTF-8: the array comes first.
    first = b"\x83\xa4type\xa4ping\xa1x\xdc\x00\x41" + b"\x00" * 65 + b"\xa1y\xa2\xff\xfe"
    (item,) = MessageReader().feed(encode_frame(first))
    assert item.code == "too_long"
    # The other way round.
    second = b"\x83\xa4type\xa4ping\xa1y\xa2\xff\xfe\xa1x\xdc\x00\x41" + b"\x00" * 65
    (item,) = MessageReader().feed(encode_frame(second))
    assert item.code == "bad_msgpack"


# --- logs --------------------------------------------------------------------------


def test_guest_strings_are_escaped_in_ebbd_logs(caplog: pytest.LogCaptureFixture) -> None:
    session = GuestSession("vm1", ChannelLimits())
    session.connected(0.0)
    hostname = "evil\nebbd: guest vm2 cut off\x1b[2J\u202e"
    hello = Hello(agent_version="1\r\n2", protocol_versions=(1,), capabilities=("need",),
                  hostname=hostname)
    with caplog.at_level(logging.INFO, logger="ebb.host.channels"):
        session.feed(encode_message(hello), 1.0, 1.0)
        session.feed(encode_message(ebb.protocol.Bye(reason="bye\n\x1b[31mred")), 2.0, 2.0)
        session.feed(encode_message(ebb.protocol.Error(
            code="x", message="line\nbreak\x07", ref_type="a\nb")), 3.0, 3.0)
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert len(caplog.records) == 3
    for record in caplog.records:
        line = record.getMessage()
        assert "\n" not in line and "\r" not in line and "\x1b" not in line
        assert "\u202e" not in line and "\x07" not in line
    assert "evil\\nebbd: guest vm2 cut off\\x1b[2J\\u202e" in text


def test_printable_escapes_control_characters_and_backslashes() -> None:
    assert printable("vm1") == "vm1"
    assert printable("a\nb\\n") == "a\\nb\\\\n"
    assert printable("x" * 300).endswith("...")
    assert printable("é日本🙂") == "é日本🙂"


def test_refused_input_is_logged_at_warning_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    session = GuestSession("vm1", ChannelLimits(max_errors_per_window=10**6))
    session.connected(0.0)
    garbage = encode_frame(msgpack.packb({"type": "ping", "x": [0] * 65}))
    with caplog.at_level(logging.WARNING, logger="ebb.host.channels"):
        for second in range(121):
            session.feed(garbage, float(second), float(second))
            session.refused.flush(float(second))
    lines = [r for r in caplog.records if r.levelno == logging.WARNING]
    # The first refusal at once, then one summary per minute.
    assert len(lines) == 3
    assert "vm1" in lines[0].getMessage() and "too_long" in lines[0].getMessage()
    assert "refused 60 frame(s)" in lines[1].getMessage()
    assert "too_long 60" in lines[1].getMessage()


def test_refused_input_log_keeps_no_error() -> None:
    log = RefusedInputLog(logging.getLogger("test"), "peer")
    err = ebb.protocol.DecodeError("x\ny", code="too_long")
    log.record(err, 0.0)
    assert log.total == 1
    assert all(value is not err for value in vars(log).values())
