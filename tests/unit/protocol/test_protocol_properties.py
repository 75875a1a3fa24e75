"""Property tests: whatever arrives, the reader returns messages or protocol errors.

Hypothesis feeds arbitrary bytes, damaged streams of real frames and arbitrary
msgpack values, cut into arbitrary chunks, and checks that nothing but
``ProtocolError`` values ever comes out, that the buffer stays bounded, and that
intact frames after the damage are all recovered.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, List, Sequence

import msgpack
from ebb.protocol import (
    MAX_BUFFER_BYTES,
    MESSAGE_TYPES,
    Message,
    MessageReader,
    ProtocolError,
    ReadResult,
    decode_message,
    encode_frame,
    encode_message,
    to_dict,
)
from ebb.protocol.messages import _Array, _Float, _Int, _Kind, _Str
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# Modest example counts keep the whole protocol suite to a few seconds.
FAST = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

MESSAGE_CLASSES = [MESSAGE_TYPES[name] for name in sorted(MESSAGE_TYPES)]


def values_for(kind: _Kind) -> st.SearchStrategy[Any]:
    """Valid values for one field kind, built from the same definitions the code checks."""
    if isinstance(kind, _Int):
        return st.integers(kind.lo, kind.hi)
    if isinstance(kind, _Float):
        return st.floats(kind.lo, kind.hi, allow_nan=False, allow_infinity=False)
    if isinstance(kind, _Str):
        if kind.choices is not None:
            return st.sampled_from(kind.choices)
        if kind.token:
            head = st.sampled_from("az09")
            return st.builds(str.__add__, head, st.text(alphabet="abz09_.-", max_size=15))
        return st.text(min_size=kind.min_chars, max_size=min(kind.max_chars, 40))
    if isinstance(kind, _Array):
        return st.lists(values_for(kind.item), min_size=kind.min_items, max_size=4).map(tuple)
    raise AssertionError(f"no strategy for {kind!r}")


def messages_of(cls: Any) -> st.SearchStrategy[Message]:
    fields = {}
    for spec in dataclasses.fields(cls):
        values = values_for(spec.metadata["kind"])
        if spec.metadata.get("null", False):
            values = st.none() | values
        fields[spec.name] = values
    return st.builds(cls, **fields)


any_message: st.SearchStrategy[Message] = st.one_of([messages_of(c) for c in MESSAGE_CLASSES])


def chunked(data: bytes, cuts: Sequence[int]) -> List[bytes]:
    """``data`` cut at the given positions (taken modulo its length)."""
    if not data:
        return [data]
    points = sorted({c % len(data) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


def read_all(reader: MessageReader, pieces: Sequence[bytes]) -> List[ReadResult]:
    out: List[ReadResult] = []
    for piece in pieces:
        got = reader.feed(piece)
        assert reader.buffered_bytes <= MAX_BUFFER_BYTES
        for item in got:
            assert isinstance(item, (ProtocolError, *MESSAGE_CLASSES)), repr(item)
        out.extend(got)
    return out


def only_messages(items: Sequence[ReadResult]) -> List[Message]:
    return [i for i in items if not isinstance(i, ProtocolError)]


cuts = st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=12)


@FAST
@given(msgs=st.lists(any_message, min_size=1, max_size=5), cuts=cuts)
def test_valid_messages_round_trip_in_any_chunking(msgs: List[Message], cuts: List[int]) -> None:
    stream = b"".join(encode_message(m) for m in msgs)
    reader = MessageReader()
    assert read_all(reader, chunked(stream, cuts)) == msgs
    assert reader.errors == 0
    assert reader.buffered_bytes == 0


@FAST
@given(data=st.binary(max_size=3000), cuts=cuts)
def test_arbitrary_bytes_give_only_protocol_errors(data: bytes, cuts: List[int]) -> None:
    read_all(MessageReader(), chunked(data, cuts))


@FAST
@given(
    run=st.integers(min_value=0, max_value=200_000),
    byte=st.integers(min_value=1, max_value=255),
    cuts=cuts,
    tail=any_message,
)
def test_long_runs_without_delimiter_stay_bounded_and_the_next_frame_is_read(
    run: int, byte: int, cuts: List[int], tail: Message
) -> None:
    stream = bytes([byte]) * run + encode_message(tail)
    items = read_all(MessageReader(), chunked(stream, cuts))
    assert only_messages(items) == [tail]


@st.composite
def damaged_streams(draw: st.DrawFn) -> bytes:
    """Valid frames, then mutated: bits flipped, bytes cut out, garbage put in."""
    msgs = draw(st.lists(any_message, min_size=1, max_size=4))
    stream = bytearray(b"".join(encode_message(m) for m in msgs))
    for _ in range(draw(st.integers(min_value=1, max_value=6))):
        if not stream:
            break
        pos = draw(st.integers(min_value=0, max_value=len(stream) - 1))
        action = draw(st.sampled_from(["flip", "delete", "insert", "zero", "duplicate"]))
        if action == "flip":
            stream[pos] ^= 1 << draw(st.integers(min_value=0, max_value=7))
        elif action == "delete":
            del stream[pos : pos + draw(st.integers(min_value=1, max_value=40))]
        elif action == "insert":
            stream[pos:pos] = draw(st.binary(min_size=1, max_size=40))
        elif action == "zero":
            stream[pos] = 0
        else:
            stream[pos:pos] = stream[pos : pos + draw(st.integers(min_value=1, max_value=60))]
    return bytes(stream)


@FAST
@given(stream=damaged_streams(), cuts=cuts)
def test_damaged_frames_give_only_protocol_errors(stream: bytes, cuts: List[int]) -> None:
    read_all(MessageReader(), chunked(stream, cuts))


@FAST
@given(
    garbage=st.binary(max_size=500),
    torn=any_message,
    torn_at=st.integers(min_value=0, max_value=1 << 16),
    msgs=st.lists(any_message, min_size=1, max_size=4),
    cuts=cuts,
)
def test_frames_after_garbage_and_a_torn_frame_are_all_recovered(
    garbage: bytes, torn: Message, torn_at: int, msgs: List[Message], cuts: List[int]
) -> None:
    torn_frame = encode_message(torn)
    stream = garbage + torn_frame[: torn_at % len(torn_frame)]
    stream += b"".join(encode_message(m) for m in msgs)
    items = read_all(MessageReader(), chunked(stream, cuts))
    recovered = only_messages(items)
    # The garbage or the torn piece may, by chance, be a whole frame of their own
    # (a torn cut right after the delimiter); what follows must all be there.
    assert recovered[len(recovered) - len(msgs) :] == msgs


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=12,
)


@FAST
@given(value=msgpack_values)
def test_arbitrary_msgpack_values_give_only_protocol_errors(value: Any) -> None:
    payload = msgpack.packb(value, use_bin_type=True)
    with contextlib.suppress(ProtocolError):
        decode_message(payload)


@settings(FAST, max_examples=40)
@given(cls=st.sampled_from(MESSAGE_CLASSES), data=st.data())
def test_known_types_with_arbitrary_field_values_validate_or_refuse(
    cls: Any, data: st.DataObject
) -> None:
    # Start from a valid message, then overwrite some of its fields (or add
    # unknown ones) with arbitrary values, or drop some.
    base = to_dict(data.draw(messages_of(cls)))
    names = st.sampled_from([f.name for f in dataclasses.fields(cls)])
    base.update(data.draw(st.dictionaries(names | st.text(max_size=8), msgpack_values, max_size=3)))
    for name in data.draw(st.lists(names, max_size=2)):
        base.pop(name, None)
    try:
        decoded = decode_message(msgpack.packb(base, use_bin_type=True))
    except ProtocolError:
        return
    assert isinstance(decoded, cls)
    # What was accepted re-encodes into something that decodes to the same message.
    assert decode_message(msgpack.packb(to_dict(decoded), use_bin_type=True)) == decoded


@FAST
@given(payload=st.binary(max_size=600), cuts=cuts)
def test_intact_frames_of_garbage_payloads_give_only_protocol_errors(
    payload: bytes, cuts: List[int]
) -> None:
    items = read_all(MessageReader(), chunked(encode_frame(payload), cuts))
    assert len(items) == 1
