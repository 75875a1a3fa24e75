"""Turning a byte stream into messages: framing and decoding in one reader.

Both ends use :class:`MessageReader`: feed it what the transport delivered and
get back messages and errors, in stream order. Errors are values, not
exceptions, so one bad frame never stops the reader; the caller decides what to
answer (see PROTOCOL.md "Error handling": an ``error`` reply for a frame that
arrived intact but held a bad message, silence for damaged frames).
"""

from __future__ import annotations

import logging
from typing import List, Union

from .errors import FramingError, ProtocolError, UnsupportedFrameVersion
from .framing import FrameDecoder
from .messages import Error, Message, decode_result

LOG = logging.getLogger(__name__)

__all__ = ["MessageReader", "ReadResult", "needs_error_reply"]

#: One item of :meth:`MessageReader.feed`'s result.
ReadResult = Union[Message, ProtocolError]


class MessageReader:
    """Incremental reader of messages from one byte stream; never raises on input.

    Counters (cumulative since creation): ``frames_ok`` frames that became valid
    messages, ``errors`` error values returned, ``garbage_bytes`` bytes dropped by
    the framing layer (damaged frames, garbage, over-long runs).
    """

    def __init__(self) -> None:
        self._frames = FrameDecoder()
        self.frames_ok = 0
        self.errors = 0

    @property
    def garbage_bytes(self) -> int:
        """Bytes the framing layer dropped so far."""
        return self._frames.garbage_bytes

    @property
    def buffered_bytes(self) -> int:
        """Bytes of an incomplete frame held (bounded by framing.MAX_BUFFER_BYTES)."""
        return self._frames.buffered_bytes

    def reset(self) -> None:
        """Forget any partial frame, e.g. after the transport reconnected."""
        self._frames.reset()

    def feed(self, data: bytes) -> List[ReadResult]:
        """Consume ``data``; return the messages and errors it completed, in order."""
        results: List[ReadResult] = []
        for frame in self._frames.feed(data):
            if isinstance(frame, ProtocolError):
                results.append(frame)
                continue
            # Errors come back as values without a traceback: nothing of a
            # refused payload outlives this loop (PROTOCOL.md 7, "memory").
            results.append(decode_result(frame))
        for item in results:
            if isinstance(item, ProtocolError):
                self.errors += 1
            else:
                self.frames_ok += 1
        return results


def needs_error_reply(err: ProtocolError) -> bool:
    """Whether the spec asks the receiver to answer ``err`` with an ``error`` message.

    Damaged frames (framing errors) get no reply: their sender is unknown or
    restarting, and answering garbage could feed an echo loop. A frame that
    arrived intact but held a bad message gets one, so its sender can log it; so
    does an intact frame of an unknown framing version, so a newer peer learns to
    fall back. An ``error`` message is never answered, not even an invalid one
    (one whose ``type`` could be read as ``error``): two sides that each refuse
    the other's errors would otherwise answer each other for ever.
    """
    if err.ref_type == Error.TYPE:
        return False
    return isinstance(err, UnsupportedFrameVersion) or not isinstance(err, FramingError)
