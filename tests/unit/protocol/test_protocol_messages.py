"""Messages: round trips, validation on construction and on receipt, limits."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, List

import msgpack
import pytest
from ebb.protocol import (
    MESSAGE_TYPES,
    Bye,
    Decision,
    DecodeError,
    Error,
    FrameTooLarge,
    Hello,
    Message,
    MessageReader,
    Need,
    Offer,
    Ping,
    Pong,
    Pressure,
    ProtocolError,
    Report,
    Request,
    UnknownMessageType,
    ValidationError,
    Welcome,
    Yielded,
    choose_version,
    decode_message,
    encode_frame,
    encode_message,
    encode_payload,
    error_reply,
    from_dict,
    needs_error_reply,
    to_dict,
)


def make_report(**changes: Any) -> Report:
    fields: Dict[str, Any] = {
        "seq": 7,
        "mem_total_kib": 4_028_536,
        "mem_free_kib": 1_203_112,
        "mem_available_kib": 2_904_880,
        "buffers_kib": 51_200,
        "cached_kib": 1_620_004,
        "swap_total_kib": 1_048_572,
        "swap_free_kib": 1_000_000,
        "anon_pages_kib": 980_112,
        "shmem_kib": 12_004,
        "dirty_kib": 88,
        "pswpin": 120,
        "pswpout": 4_410,
        "pgmajfault": 3_310,
        "pgfault": 98_776_001,
        "workingset_refault": 5_120,
        "psi_some_avg10": 1.25,
        "psi_full_avg10": 0.0,
        "psi_some_total_us": 8_123_456,
        "psi_full_total_us": 1_004_000,
    }
    fields.update(changes)
    return Report(**fields)


ONE_OF_EACH: List[Message] = [
    Hello(
        agent_version="0.1.0",
        protocol_versions=(1,),
        capabilities=("offer", "need", "decision", "prepare_release"),
        hostname="web-3",
    ),
    Hello(agent_version="0.1.0", protocol_versions=(1, 2), capabilities=()),
    Welcome(protocol_version=1, report_interval_ms=1000, capabilities=("offer",)),
    make_report(),
    make_report(
        psi_some_avg10=None, psi_full_avg10=None, psi_some_total_us=None, psi_full_total_us=None
    ),
    Offer(seq=8, kib=524_288),
    Offer(seq=9, kib=0),
    Need(seq=10, kib=262_144, urgency="high", reason="psi some avg10 34.2%"),
    Decision(balloon_target_kib=3_145_728, reason="host free 12% < 20%: reclaim"),
    Request(kind="prepare_release", kib=131_072),
    Ping(nonce=2**64 - 1),
    Pong(nonce=0),
    Bye(reason="agent stopping (SIGTERM)"),
    Error(code="unknown_type", message="unknown message type 'frob'", ref_type="frob"),
    Error(code="bad_crc", message="CRC mismatch"),
    Request(kind="yield", kib=262_144, request_id=2**32 - 1, deadline_ms=2000),
    Yielded(
        asked_kib=262_144,
        freed_kib=250_000,
        cache_before_kib=330_000,
        cache_after_kib=13_000,
        duration_ms=420,
        stopped="done",
        reason="reclaimed 256 MiB in 4 steps",
        request_id=17,
    ),
    Yielded(
        asked_kib=65_536,
        freed_kib=0,
        cache_before_kib=9_000,
        cache_after_kib=9_000,
        duration_ms=0,
        stopped="nothing_cold",
        reason="no cache cold for 300 s",
    ),
    Pressure(level=2, reason="host swapping 12 MiB/s"),
]


def payload_of(data: Dict[str, Any]) -> bytes:
    packed: bytes = msgpack.packb(data, use_bin_type=True)
    return packed


def ping_with(**extra: Any) -> bytes:
    return payload_of({"type": "ping", "nonce": 1, **extra})


# --- round trips -------------------------------------------------------------------


def test_every_message_type_is_covered_by_the_round_trip_list() -> None:
    assert {m.TYPE for m in ONE_OF_EACH} == set(MESSAGE_TYPES)


@pytest.mark.parametrize("msg", ONE_OF_EACH, ids=lambda m: m.TYPE)
def test_round_trip_through_a_frame(msg: Message) -> None:
    reader = MessageReader()
    assert reader.feed(encode_message(msg)) == [msg]
    assert reader.frames_ok == 1
    assert reader.errors == 0


@pytest.mark.parametrize("msg", ONE_OF_EACH, ids=lambda m: m.TYPE)
def test_round_trip_through_dict_and_json(msg: Message) -> None:
    as_json = json.dumps(to_dict(msg))
    assert from_dict(json.loads(as_json)) == msg
    assert decode_message(encode_payload(msg)) == msg


def test_to_dict_uses_the_spec_names_type_first() -> None:
    data = to_dict(make_report(psi_full_total_us=None))
    assert next(iter(data)) == "type"
    assert data["type"] == "report"
    assert data["mem_available_kib"] == 2_904_880
    assert data["workingset_refault"] == 5_120
    assert data["psi_full_total_us"] is None
    assert set(data) == {"type"} | {f.name for f in dataclasses.fields(Report)}


def test_report_frame_is_small() -> None:
    # Documented in PROTOCOL.md section 7 ("a report is about 400 bytes").
    assert len(encode_message(make_report())) < 500


# --- validation when built ------------------------------------------------------------


def test_construction_normalises_lists_and_ints() -> None:
    hello = Hello(agent_version="1", protocol_versions=[1], capabilities=["offer"])  # type: ignore[arg-type]
    assert hello.protocol_versions == (1,)
    assert hello.capabilities == ("offer",)
    report = make_report(psi_some_avg10=3)
    assert isinstance(report.psi_some_avg10, float)
    assert hash(hello)  # frozen value types stay hashable


@pytest.mark.parametrize(
    ("build", "code", "field"),
    [
        (lambda: make_report(mem_free_kib=-1), "out_of_range", "mem_free_kib"),
        (lambda: make_report(mem_free_kib=2**53), "out_of_range", "mem_free_kib"),
        (lambda: make_report(mem_free_kib="1024"), "bad_type", "mem_free_kib"),
        (lambda: make_report(mem_free_kib=True), "bad_type", "mem_free_kib"),
        (lambda: make_report(mem_free_kib=1.5), "bad_type", "mem_free_kib"),
        (lambda: make_report(pswpin=2**64), "out_of_range", "pswpin"),
        (lambda: make_report(psi_some_avg10=100.5), "out_of_range", "psi_some_avg10"),
        (lambda: make_report(psi_some_avg10=float("nan")), "out_of_range", "psi_some_avg10"),
        (lambda: make_report(psi_full_total_us=-5), "out_of_range", "psi_full_total_us"),
        (lambda: Need(seq=1, kib=1, urgency="urgent", reason=""), "bad_value", "urgency"),
        (lambda: Need(seq=1, kib=1, urgency="low", reason="x" * 257), "too_long", "reason"),
        (lambda: Welcome(1, 50, ()), "out_of_range", "report_interval_ms"),
        (lambda: Welcome(0, 1000, ()), "out_of_range", "protocol_version"),
        (lambda: Hello("", (1,), ()), "out_of_range", "agent_version"),
        (lambda: Hello("1", (), ()), "out_of_range", "protocol_versions"),
        (lambda: Hello("1", (1,), ("Has Space",)), "bad_value", "capabilities"),
        (lambda: Hello("1", (1,), ("x",) * 33), "out_of_range", "capabilities"),
        (lambda: Request(kind="", kib=1), "out_of_range", "kind"),
        (lambda: Error(code="x", message="m", ref_type=7), "bad_type", "ref_type"),  # type: ignore[arg-type]
    ],
)
def test_invalid_values_are_refused_when_built(build: Any, code: str, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        build()
    assert caught.value.code == code
    assert caught.value.field == field
    assert field in str(caught.value)


# --- validation on receipt ---------------------------------------------------------------


def test_unknown_fields_are_ignored() -> None:
    assert decode_message(ping_with(future_field={"a": [1, 2]}, x=None)) == Ping(nonce=1)


def test_optional_fields_may_be_absent_or_nil() -> None:
    data = to_dict(make_report())
    for name in ("psi_some_avg10", "psi_full_avg10"):
        del data[name]
    data["psi_some_total_us"] = None
    decoded = decode_message(payload_of(data))
    assert isinstance(decoded, Report)
    assert decoded.psi_some_avg10 is None
    assert decoded.psi_some_total_us is None
    assert decoded.psi_full_total_us == 1_004_000


def test_float_fields_accept_msgpack_integers() -> None:
    data = to_dict(make_report())
    data["psi_some_avg10"] = 12
    decoded = decode_message(payload_of(data))
    assert isinstance(decoded, Report)
    assert decoded.psi_some_avg10 == 12.0


def test_missing_required_field() -> None:
    data = to_dict(make_report())
    del data["mem_total_kib"]
    with pytest.raises(ValidationError) as caught:
        decode_message(payload_of(data))
    assert caught.value.code == "missing_field"
    assert caught.value.field == "mem_total_kib"
    assert caught.value.ref_type == "report"


def test_nil_for_a_required_field_is_a_type_error() -> None:
    with pytest.raises(ValidationError) as caught:
        decode_message(payload_of({"type": "pong", "nonce": None}))
    assert caught.value.code == "bad_type"


def test_missing_or_non_string_type() -> None:
    with pytest.raises(ValidationError) as caught:
        decode_message(payload_of({"nonce": 1}))
    assert caught.value.code == "missing_field"
    with pytest.raises(ValidationError) as caught:
        decode_message(payload_of({"type": 3}))
    assert caught.value.code == "bad_type"


def test_unknown_type_names_the_type() -> None:
    with pytest.raises(UnknownMessageType) as caught:
        decode_message(payload_of({"type": "frobnicate", "n": 1}))
    assert caught.value.type_name == "frobnicate"
    assert caught.value.code == "unknown_type"
    reply = error_reply(caught.value)
    assert reply == Error(
        code="unknown_type", message="unknown message type 'frobnicate'", ref_type="frobnicate"
    )


def test_unknown_type_reply_survives_an_absurd_type_name() -> None:
    with pytest.raises(UnknownMessageType) as caught:
        decode_message(payload_of({"type": "t" * 4000}))
    reply = error_reply(caught.value)
    assert reply.ref_type is not None and len(reply.ref_type) <= 64
    assert len(encode_message(reply)) < 1024


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"", "bad_msgpack"),
        (b"\xc1", "bad_msgpack"),
        (b"\x81\xa4type", "bad_msgpack"),  # truncated
        (ping_with() + b"\x00", "bad_msgpack"),  # data after the map
        (b"\x81\xa4type\xa2\xff\xfe", "bad_msgpack"),  # invalid UTF-8
        (b"\x93\x01\x02\x03", "not_a_map"),
        (b"\xa4ping", "not_a_map"),
        (b"\x81\x01\x02", "bad_value"),  # integer key: PROTOCOL.md 6.1, not a string
        (b"\x82\xa4type\xa4ping\xc4\x01k\x01", "bad_value"),  # binary key
        (b"\x82\xa4type\xa4ping\xa5nonce\xd6\xff\x00\x00\x00\x01", "bad_msgpack"),  # timestamp ext
    ],
)
def test_malformed_payloads(payload: bytes, code: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_message(payload)
    assert caught.value.code == code


def test_nesting_limit() -> None:
    assert decode_message(ping_with(x=[[[1]]])) == Ping(nonce=1)  # depth 4: allowed
    with pytest.raises(DecodeError) as caught:
        decode_message(ping_with(x=[[[[1]]]]))
    assert caught.value.code == "too_deep"
    with pytest.raises(DecodeError) as caught:
        decode_message(ping_with(x={"a": {"b": {"c": {}}}}))
    assert caught.value.code == "too_deep"


def test_nesting_far_beyond_the_decoders_stack_is_too_deep() -> None:
    deep = b"\x82\xa4type\xa4ping\xa1x" + b"\x91" * 20_000 + b"\x01"
    with pytest.raises(DecodeError) as caught:
        decode_message(deep)
    assert caught.value.code == "too_deep"


def test_key_count_limit() -> None:
    extra = {f"k{i}": i for i in range(62)}
    assert decode_message(ping_with(**extra)) == Ping(nonce=1)  # 64 keys
    extra["k62"] = 62
    with pytest.raises(DecodeError) as caught:
        decode_message(ping_with(**extra))
    assert caught.value.code == "too_many_keys"


def test_array_and_string_limits() -> None:
    with pytest.raises(DecodeError) as caught:
        decode_message(ping_with(x=list(range(65))))
    assert caught.value.code == "too_long"
    with pytest.raises(DecodeError) as caught:
        decode_message(ping_with(x="s" * 4097))
    assert caught.value.code == "too_long"


def test_oversized_payload_is_refused() -> None:
    with pytest.raises(DecodeError):
        decode_message(ping_with(x=b"b" * 70_000))
    with pytest.raises(FrameTooLarge):
        encode_frame(b"\x01" * 70_000)


def test_wrong_field_type_on_the_wire() -> None:
    data = to_dict(make_report())
    data["cached_kib"] = "lots"
    with pytest.raises(ValidationError) as caught:
        decode_message(payload_of(data))
    assert caught.value.code == "bad_type"
    assert caught.value.field == "cached_kib"
    assert "report.cached_kib" in str(caught.value)


# --- the reader and replies -----------------------------------------------------------


def test_reader_returns_errors_as_values_and_goes_on() -> None:
    reader = MessageReader()
    stream = (
        b"\x00noise\x00"
        + encode_message(Ping(nonce=1))
        + encode_frame(payload_of({"type": "frobnicate"}))
        + encode_frame(payload_of({"type": "offer", "seq": 1}))
        + encode_message(Offer(seq=2, kib=4096))
    )
    items = reader.feed(stream)
    kinds = [type(i).__name__ for i in items]
    assert kinds == ["FramingError", "Ping", "UnknownMessageType", "ValidationError", "Offer"]
    assert reader.frames_ok == 2
    assert reader.errors == 3
    assert reader.garbage_bytes == len(b"noise")
    replies = [
        error_reply(e) for e in items if isinstance(e, ProtocolError) and needs_error_reply(e)
    ]
    assert [(r.code, r.ref_type) for r in replies] == [
        ("unknown_type", "frobnicate"),
        ("missing_field", "offer"),
    ]


def test_choose_version() -> None:
    assert choose_version([1]) == 1
    assert choose_version([1, 2, 3], supported=(1, 2)) == 2
    assert choose_version([2]) is None
