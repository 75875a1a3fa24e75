"""The yield additions: request_id / deadline_ms on request, yielded, pressure.

Old peers must keep working: the new request fields are optional, and a
version-1 request without them still decodes to the same message.
"""

from __future__ import annotations

from typing import Any, Dict

import msgpack
import pytest
from ebb.protocol import (
    CAPABILITIES,
    Pressure,
    Request,
    ValidationError,
    Yielded,
    decode_message,
    from_dict,
    to_dict,
)
from ebb.protocol.messages import REQUEST_YIELD, YIELD_STOPS


def payload_of(data: Dict[str, Any]) -> bytes:
    packed: bytes = msgpack.packb(data, use_bin_type=True)
    return packed


def yielded(**changes: Any) -> Yielded:
    fields: Dict[str, Any] = {
        "asked_kib": 65_536,
        "freed_kib": 60_000,
        "cache_before_kib": 300_000,
        "cache_after_kib": 240_000,
        "duration_ms": 150,
        "stopped": "done",
        "reason": "",
    }
    fields.update(changes)
    return Yielded(**fields)


def test_yield_is_a_capability() -> None:
    assert "yield" in CAPABILITIES
    assert REQUEST_YIELD == "yield"


def test_an_old_request_without_the_new_fields_still_decodes() -> None:
    msg = decode_message(payload_of({"type": "request", "kind": "prepare_release", "kib": 4}))
    assert msg == Request(kind="prepare_release", kib=4)
    assert isinstance(msg, Request)
    assert msg.request_id is None
    assert msg.deadline_ms is None


def test_a_yield_request_carries_its_id_and_deadline() -> None:
    wire = {"type": "request", "kind": "yield", "kib": 1024, "request_id": 9, "deadline_ms": 1500}
    msg = decode_message(payload_of(wire))
    assert msg == Request(kind="yield", kib=1024, request_id=9, deadline_ms=1500)
    assert to_dict(msg) == wire


def test_a_background_yield_has_no_request_id() -> None:
    msg = decode_message(payload_of(to_dict(yielded())))
    assert isinstance(msg, Yielded)
    assert msg.request_id is None
    assert to_dict(msg)["request_id"] is None


@pytest.mark.parametrize("stopped", YIELD_STOPS)
def test_every_stop_token_is_accepted(stopped: str) -> None:
    assert yielded(stopped=stopped).stopped == stopped


@pytest.mark.parametrize(
    ("build", "code", "field"),
    [
        (lambda: Request(kind="yield", kib=1, request_id=-1), "out_of_range", "request_id"),
        (lambda: Request(kind="yield", kib=1, request_id=2**32), "out_of_range", "request_id"),
        (lambda: Request(kind="yield", kib=1, deadline_ms=0), "out_of_range", "deadline_ms"),
        (lambda: Request(kind="yield", kib=1, deadline_ms=600_001), "out_of_range", "deadline_ms"),
        (lambda: Request(kind="yield", kib=1, deadline_ms=1.5), "bad_type", "deadline_ms"),
        (lambda: yielded(freed_kib=-1), "out_of_range", "freed_kib"),
        (lambda: yielded(asked_kib=2**53), "out_of_range", "asked_kib"),
        (lambda: yielded(duration_ms=2**32), "out_of_range", "duration_ms"),
        (lambda: yielded(stopped="timeout"), "bad_value", "stopped"),
        (lambda: yielded(reason="x" * 257), "too_long", "reason"),
        (lambda: yielded(request_id=True), "bad_type", "request_id"),
        (lambda: Pressure(level=4, reason=""), "out_of_range", "level"),
        (lambda: Pressure(level=-1, reason=""), "out_of_range", "level"),
        (lambda: Pressure(level="high", reason=""), "bad_type", "level"),
    ],
)
def test_invalid_values_are_refused_when_built(build: Any, code: str, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        build()
    assert caught.value.code == code
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("data", "code", "field"),
    [
        ({"type": "pressure", "reason": "x"}, "missing_field", "level"),
        ({"type": "pressure", "level": None, "reason": "x"}, "bad_type", "level"),
        ({**to_dict(yielded()), "stopped": "later"}, "bad_value", "stopped"),
        ({**to_dict(yielded()), "cache_after_kib": None}, "bad_type", "cache_after_kib"),
    ],
)
def test_invalid_messages_are_refused_on_receipt(
    data: Dict[str, Any], code: str, field: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        decode_message(payload_of(data))
    assert caught.value.code == code
    assert caught.value.field == field
    assert caught.value.ref_type == data["type"]


def test_unknown_fields_in_the_new_messages_are_ignored() -> None:
    data = {"type": "pressure", "level": 1, "reason": "swap", "host_free_kib": 5}
    assert from_dict(data) == Pressure(level=1, reason="swap")
