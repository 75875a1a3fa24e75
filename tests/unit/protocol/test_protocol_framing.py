"""Framing: frames out, frames back, and recovery from every kind of damage."""

from __future__ import annotations

import zlib
from typing import List, Union

import pytest
from ebb.protocol import (
    MAX_BUFFER_BYTES,
    MAX_FRAME_BYTES,
    FrameDecoder,
    FrameTooLarge,
    FramingError,
    ProtocolError,
    UnsupportedFrameVersion,
    encode_frame,
)
from ebb.protocol.framing import MAX_ENCODED_BYTES, cobs_decode, cobs_encode

Item = Union[bytes, ProtocolError]


def feed_bytewise(decoder: FrameDecoder, data: bytes) -> List[Item]:
    out: List[Item] = []
    for i in range(len(data)):
        out.extend(decoder.feed(data[i : i + 1]))
    return out


def payloads(items: List[Item]) -> List[bytes]:
    return [item for item in items if isinstance(item, bytes)]


def errors(items: List[Item]) -> List[ProtocolError]:
    return [item for item in items if isinstance(item, ProtocolError)]


# --- COBS ------------------------------------------------------------------------


def test_cobs_matches_the_spec_example() -> None:
    assert cobs_encode(bytes.fromhex("11000022")) == bytes.fromhex("0211010222")
    assert cobs_decode(bytes.fromhex("0211010222")) == bytes.fromhex("11000022")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",
        b"\x00\x00",
        b"\x01" * 253,
        b"\x01" * 254,
        b"\x01" * 255,
        b"\x01" * 254 + b"\x00",
        b"\x00" + b"\x02" * 508 + b"\x00",
        bytes(range(256)) * 3,
    ],
)
def test_cobs_round_trips_block_boundaries_without_zeros(data: bytes) -> None:
    encoded = cobs_encode(data)
    assert 0 not in encoded
    assert len(encoded) <= len(data) + len(data) // 254 + 1
    assert cobs_decode(encoded) == data


@pytest.mark.parametrize("bad", [b"\x05\x01\x02", b"\x02\x01\x00", b"\x00"])
def test_cobs_decode_refuses_invalid_input(bad: bytes) -> None:
    assert cobs_decode(bad) is None


# --- encoding ----------------------------------------------------------------------


def test_frame_layout_is_delimited_cobs_of_version_payload_crc() -> None:
    payload = b"\x81\xa1a\x00"
    frame = encode_frame(payload)
    assert frame[0] == 0 and frame[-1] == 0
    assert 0 not in frame[1:-1]
    body = cobs_decode(frame[1:-1])
    assert body is not None
    assert body[0] == 1
    assert body[1:-4] == payload
    assert int.from_bytes(body[-4:], "big") == zlib.crc32(body[:-4])


def test_encode_refuses_payload_over_the_limit() -> None:
    encode_frame(b"\x01" * MAX_FRAME_BYTES)  # exactly the limit is fine
    with pytest.raises(FrameTooLarge):
        encode_frame(b"\x01" * (MAX_FRAME_BYTES + 1))


def test_largest_frame_fits_the_decoder_buffer() -> None:
    # No zero bytes: the COBS worst case.
    frame = encode_frame(b"\x01" * MAX_FRAME_BYTES)
    assert len(frame) - 2 == MAX_ENCODED_BYTES
    decoder = FrameDecoder()
    assert decoder.feed(frame) == [b"\x01" * MAX_FRAME_BYTES]
    assert MAX_BUFFER_BYTES <= 2 * 8 + MAX_FRAME_BYTES + 512  # header + limit + small margin


# --- decoding ------------------------------------------------------------------------


def test_frames_split_at_every_byte_come_back_in_order() -> None:
    sent = [b"", b"\x00", b"hello", b"\x00" * 300, bytes(range(256)) * 2]
    stream = b"".join(encode_frame(p) for p in sent)
    decoder = FrameDecoder()
    assert feed_bytewise(decoder, stream) == sent
    assert decoder.buffered_bytes == 0
    assert decoder.frames_ok == len(sent)
    assert decoder.garbage_bytes == 0


def test_many_frames_in_one_feed() -> None:
    sent = [bytes([i]) * i for i in range(1, 50)]
    assert FrameDecoder().feed(b"".join(encode_frame(p) for p in sent)) == sent


def test_accepts_bytearray_and_memoryview() -> None:
    frame = encode_frame(b"abc")
    assert FrameDecoder().feed(bytearray(frame)) == [b"abc"]
    assert FrameDecoder().feed(memoryview(frame)) == [b"abc"]  # type: ignore[arg-type]


def test_garbage_before_a_frame_is_reported_and_skipped() -> None:
    decoder = FrameDecoder()
    items = decoder.feed(b"login: \x00Linux 6.1 console noise" + encode_frame(b"ok"))
    assert payloads(items) == [b"ok"]
    assert all(isinstance(e, FramingError) for e in errors(items))
    assert len(errors(items)) == 2
    assert decoder.garbage_bytes == len(b"login: ") + len(b"Linux 6.1 console noise")


def test_torn_frame_from_a_restarted_writer_costs_only_itself() -> None:
    first = encode_frame(b"report seq 41, cut short")
    second = encode_frame(b"hello after restart")
    decoder = FrameDecoder()
    items = decoder.feed(first[: len(first) // 2] + second)
    assert payloads(items) == [b"hello after restart"]
    assert len(errors(items)) == 1


def test_reader_starting_mid_frame_recovers_at_the_next_frame() -> None:
    stream = encode_frame(b"one") + encode_frame(b"two")
    items = FrameDecoder().feed(stream[3:])
    assert payloads(items) == [b"two"]


def test_bad_crc_is_a_framing_error_with_its_code() -> None:
    frame = bytearray(encode_frame(b"payload"))
    frame[5] ^= 0x01
    items = FrameDecoder().feed(bytes(frame) + encode_frame(b"next"))
    assert payloads(items) == [b"next"]
    (err,) = errors(items)
    assert isinstance(err, FramingError)
    assert err.code == "bad_crc"


def test_short_frame_is_reported() -> None:
    (err,) = FrameDecoder().feed(b"\x00\x03\x01\x02\x00")
    assert isinstance(err, FramingError)
    assert err.code == "short_frame"


def test_unknown_frame_version_is_its_own_error() -> None:
    body = b"\x02payload"
    body += zlib.crc32(body).to_bytes(4, "big")
    (err,) = FrameDecoder().feed(b"\x00" + cobs_encode(body) + b"\x00")
    assert isinstance(err, UnsupportedFrameVersion)
    assert err.code == "unsupported_frame_version"


def test_oversized_run_is_dropped_without_buffering_it() -> None:
    decoder = FrameDecoder()
    found: List[Item] = []
    chunk = b"\x01" * 65536
    for _ in range(40):  # 2.5 MiB without a delimiter
        found.extend(decoder.feed(chunk))
        assert decoder.buffered_bytes <= MAX_BUFFER_BYTES
    found.extend(decoder.feed(encode_frame(b"still alive")))
    assert payloads(found) == [b"still alive"]
    (err,) = errors(found)
    assert isinstance(err, FrameTooLarge)
    assert err.code == "frame_too_large"
    assert decoder.garbage_bytes == 40 * 65536


def test_frame_one_byte_over_the_limit_is_refused_then_next_frame_read() -> None:
    # Build by hand what encode_frame refuses to build.
    body = b"\x01" + b"\x01" * (MAX_FRAME_BYTES + 1)
    body += zlib.crc32(body).to_bytes(4, "big")
    oversized = b"\x00" + cobs_encode(body) + b"\x00"
    decoder = FrameDecoder()
    items = decoder.feed(oversized + encode_frame(b"next"))
    assert payloads(items) == [b"next"]
    assert [type(e) for e in errors(items)] == [FrameTooLarge]


def test_reset_drops_a_partial_frame() -> None:
    decoder = FrameDecoder()
    frame = encode_frame(b"abcdef")
    decoder.feed(frame[:-3])
    assert decoder.buffered_bytes > 0
    decoder.reset()
    assert decoder.buffered_bytes == 0
    # The old frame's tail is now damage; the next frame is read whole.
    items = decoder.feed(frame[-3:] + frame)
    assert payloads(items) == [b"abcdef"]
    assert len(errors(items)) == 1
