"""Cutting a byte stream into frames, and finding the next frame after damage.

Wire format (PROTOCOL.md section "Framing" is the normative text)::

    0x00  COBS( version:u8 | payload | crc32:u32be )  0x00

Every frame is wrapped in zero bytes and byte-stuffed with COBS (Consistent
Overhead Byte Stuffing), so a 0x00 never occurs inside a frame. A reader that
starts mid-stream, meets garbage, or holds half a frame from a writer that
restarted therefore loses at most the damaged frame: the next 0x00 always ends
it and the next frame is read intact. A length-prefixed format cannot promise
that: a torn header's length swallows the frames after it until that many bytes
have arrived, which may be never on a quiet link.

The CRC-32 (the zlib/IEEE polynomial) covers the version byte and the payload,
and catches what a delimiter alone cannot: two torn pieces glued together, bit
errors, random bytes between zeros.

:class:`FrameDecoder` keeps one buffer, bounded by :data:`MAX_BUFFER_BYTES`
whatever it is fed: bytes past that bound without a delimiter are counted as
garbage, reported once as :class:`FrameTooLarge`, and dropped until the next
0x00, so an oversized frame never gets allocated.
"""

from __future__ import annotations

import logging
import struct
import zlib
from typing import List, Optional, Union

from .errors import FrameTooLarge, FramingError, ProtocolError, UnsupportedFrameVersion

LOG = logging.getLogger(__name__)

__all__ = [
    "DELIMITER",
    "FRAME_VERSION",
    "MAX_BUFFER_BYTES",
    "MAX_ENCODED_BYTES",
    "MAX_FRAME_BYTES",
    "FrameDecoder",
    "cobs_decode",
    "cobs_encode",
    "encode_frame",
]

#: Largest payload (the msgpack bytes) a frame may carry.
MAX_FRAME_BYTES = 65536
#: Version of the framing itself (not of the messages); first byte of every body.
FRAME_VERSION = 1
#: Frame delimiter; never occurs inside a COBS-encoded frame.
DELIMITER = 0x00

_CRC = struct.Struct(">I")
_VERSION_BYTES = 1
_CRC_BYTES = _CRC.size
#: Smallest decoded body: a version byte and a CRC (an empty payload).
_MIN_BODY_BYTES = _VERSION_BYTES + _CRC_BYTES
#: Largest decoded body: version, largest payload, CRC.
_MAX_BODY_BYTES = _VERSION_BYTES + MAX_FRAME_BYTES + _CRC_BYTES
#: COBS adds one byte per started block of 254 bytes (plus one).
_COBS_BLOCK = 254
#: Largest COBS-encoded frame between two delimiters.
MAX_ENCODED_BYTES = _MAX_BODY_BYTES + _MAX_BODY_BYTES // _COBS_BLOCK + 1
#: Upper bound of :attr:`FrameDecoder.buffered_bytes`, whatever the input.
MAX_BUFFER_BYTES = MAX_ENCODED_BYTES

_ZERO = b"\x00"


def cobs_encode(data: bytes) -> bytes:
    """Byte-stuff ``data`` so that the result contains no zero byte.

    Standard COBS: each block is a code byte ``n`` (1..255) followed by ``n - 1``
    non-zero bytes; a code below 255 stands for a zero after its block, except
    after the last block.
    """
    out = bytearray()
    for chunk in data.split(_ZERO):
        start = 0
        # Full blocks of 254 non-zero bytes carry no implied zero (code 0xFF).
        while len(chunk) - start >= _COBS_BLOCK:
            out.append(0xFF)
            out += chunk[start : start + _COBS_BLOCK]
            start += _COBS_BLOCK
        out.append(len(chunk) - start + 1)
        out += chunk[start:]
    return bytes(out)


def cobs_decode(data: bytes) -> Optional[bytes]:
    """Undo :func:`cobs_encode`; ``None`` when ``data`` is not valid COBS.

    Invalid means empty (the encoding of nothing is ``01``), a zero byte inside,
    or a code byte pointing past the end.
    """
    if not data or _ZERO in data:
        return None
    # Each code byte but the first sits exactly where its zero belongs in the
    # output, so the output is the input with those bytes zeroed; the first code
    # byte, and a code byte following a full 0xFF block, stand for no zero and are
    # cut out instead. One pass over the code bytes, no copying per block.
    out = bytearray(data)
    size = len(data)
    cut = [0]
    index = 0
    previous = 0xFF  # treat the first code byte like one after a full block
    while index < size:
        code = data[index]
        if index + code > size:
            return None
        if index:
            if previous == 0xFF:
                cut.append(index)
            else:
                out[index] = 0
        previous = code
        index += code
    for position in reversed(cut):
        del out[position]
    return bytes(out)


def encode_frame(payload: bytes) -> bytes:
    """Wrap ``payload`` in a complete frame, delimiters included, ready to write.

    Raises :class:`FrameTooLarge` when the payload exceeds :data:`MAX_FRAME_BYTES`.
    """
    if len(payload) > MAX_FRAME_BYTES:
        raise FrameTooLarge(
            f"payload of {len(payload)} bytes exceeds the {MAX_FRAME_BYTES}-byte frame limit"
        )
    body = bytes((FRAME_VERSION,)) + bytes(payload)
    body += _CRC.pack(zlib.crc32(body) & 0xFFFFFFFF)
    return _ZERO + cobs_encode(body) + _ZERO


class FrameDecoder:
    """Incremental frame reader for one byte stream; never raises on bad input.

    Feed it whatever the transport delivered; it returns the payloads of the
    complete frames found, and :class:`ProtocolError` values for damaged ones, in
    stream order. Damage costs only the damaged frame: the next delimiter always
    starts afresh.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        # True while dropping the rest of an over-long run up to the next delimiter.
        self._discarding = False
        self.frames_ok = 0
        self.frames_bad = 0
        self.garbage_bytes = 0

    @property
    def buffered_bytes(self) -> int:
        """Bytes of an incomplete frame held; never above :data:`MAX_BUFFER_BYTES`."""
        return len(self._buffer)

    def reset(self) -> None:
        """Forget any partial frame, e.g. after the transport reconnected."""
        self.garbage_bytes += len(self._buffer)
        self._buffer = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> List[Union[bytes, ProtocolError]]:
        """Consume ``data``; return complete payloads and errors in stream order."""
        results: List[Union[bytes, ProtocolError]] = []
        raw = bytes(data)
        view = memoryview(raw)
        start = 0
        size = len(raw)
        while start < size:
            end = raw.find(_ZERO, start)
            piece_end = size if end < 0 else end
            self._take(view[start:piece_end], results)
            if end < 0:
                break
            self._end_of_frame(results)
            start = end + 1
        return results

    def _take(self, piece: memoryview, results: List[Union[bytes, ProtocolError]]) -> None:
        """Append the bytes of a frame in progress, enforcing the buffer bound."""
        if not piece:
            return
        if self._discarding:
            self.garbage_bytes += len(piece)
            return
        if len(self._buffer) + len(piece) > MAX_ENCODED_BYTES:
            # Either a frame longer than the limit or garbage without zeros: stop
            # buffering now, before it costs memory, and skip to the next delimiter.
            dropped = len(self._buffer) + len(piece)
            self.garbage_bytes += dropped
            self.frames_bad += 1
            self._buffer = bytearray()
            self._discarding = True
            results.append(
                FrameTooLarge(
                    f"more than {MAX_ENCODED_BYTES} bytes without a frame delimiter "
                    f"(payload limit {MAX_FRAME_BYTES} bytes); skipping to the next frame"
                )
            )
            return
        self._buffer += piece

    def _end_of_frame(self, results: List[Union[bytes, ProtocolError]]) -> None:
        """A delimiter arrived: whatever is buffered is a whole frame (or damage)."""
        if self._discarding:
            self._discarding = False
            return
        if not self._buffer:
            return  # two delimiters in a row: the normal gap between frames
        encoded = bytes(self._buffer)
        self._buffer = bytearray()
        outcome = _parse_body(encoded)
        if isinstance(outcome, ProtocolError):
            self.frames_bad += 1
            self.garbage_bytes += len(encoded)
        else:
            self.frames_ok += 1
        results.append(outcome)


def _parse_body(encoded: bytes) -> Union[bytes, ProtocolError]:
    """Check one COBS-encoded frame; its payload, or the reason it is bad."""
    body = cobs_decode(encoded)
    if body is None:
        return FramingError(
            f"{len(encoded)} bytes between delimiters are not a valid COBS frame",
            code="bad_stuffing",
        )
    if len(body) < _MIN_BODY_BYTES:
        return FramingError(
            f"frame of {len(body)} bytes is shorter than the {_MIN_BODY_BYTES}-byte minimum",
            code="short_frame",
        )
    (crc_received,) = _CRC.unpack_from(body, len(body) - _CRC_BYTES)
    crc_computed = zlib.crc32(memoryview(body)[: len(body) - _CRC_BYTES]) & 0xFFFFFFFF
    if crc_received != crc_computed:
        return FramingError(
            f"CRC mismatch in a {len(body)}-byte frame "
            f"(received {crc_received:#010x}, computed {crc_computed:#010x})",
            code="bad_crc",
        )
    if body[0] != FRAME_VERSION:
        return UnsupportedFrameVersion(
            f"frame version {body[0]} is not supported (this side speaks {FRAME_VERSION})"
        )
    if len(body) > _MAX_BODY_BYTES:
        return FrameTooLarge(
            f"payload of {len(body) - _MIN_BODY_BYTES} bytes exceeds the "
            f"{MAX_FRAME_BYTES}-byte frame limit"
        )
    return body[_VERSION_BYTES : len(body) - _CRC_BYTES]
