"""Everything that can go wrong on the wire between ebb-agent and ebbd.

One tree, rooted at :class:`ProtocolError`. Decoding a byte stream or a payload
raises (or, from the stream readers, returns as a value) only these types, so a
caller that catches ``ProtocolError`` has caught everything hostile input can
cause::

    ProtocolError
    +-- FramingError                 the byte stream does not cut into good frames
    |   +-- FrameTooLarge            a frame is longer than MAX_FRAME_BYTES
    |   +-- UnsupportedFrameVersion  a good frame of a framing version we do not know
    +-- DecodeError                  a frame's payload is not an acceptable msgpack map
    +-- ValidationError              the map is not a valid message (types, ranges, fields)
        +-- UnknownMessageType       the map names a message type we do not know

Every error carries ``code``, a short machine-readable string that goes into the
``code`` field of an ``error`` reply (the list is in PROTOCOL.md), and a human
message saying what was wrong and where.
"""

from __future__ import annotations

from typing import Optional

__all__ = [
    "DecodeError",
    "FrameTooLarge",
    "FramingError",
    "ProtocolError",
    "UnknownMessageType",
    "UnsupportedFrameVersion",
    "ValidationError",
]


class ProtocolError(Exception):
    """Base of every error the protocol layer reports.

    ``code`` is the machine-readable reason (``bad_crc``, ``missing_field``, ...);
    ``ref_type`` is the wire type of the message the error is about, when known.
    """

    #: Default machine-readable code for this class; instances may carry a more
    #: specific one.
    default_code = "protocol_error"

    def __init__(
        self,
        message: str,
        *,
        code: Optional[str] = None,
        ref_type: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code: str = code if code is not None else self.default_code
        self.ref_type: Optional[str] = ref_type

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


class FramingError(ProtocolError):
    """Bytes that do not form a good frame: bad CRC, bad byte stuffing, too short.

    The reader has already skipped to the next frame delimiter when this is
    reported; nothing needs resetting.
    """

    default_code = "bad_frame"


class FrameTooLarge(FramingError):
    """A frame (or a run of bytes with no delimiter) longer than the limit.

    The reader stops buffering at the limit and discards until the next delimiter.
    """

    default_code = "frame_too_large"


class UnsupportedFrameVersion(FramingError):
    """A frame whose CRC is good but whose framing version byte we do not know."""

    default_code = "unsupported_frame_version"


class DecodeError(ProtocolError):
    """A payload that is not msgpack, not a map, nested too deep, or too big.

    Codes: ``bad_msgpack``, ``not_a_map``, ``too_deep``, ``too_many_keys``,
    ``too_long``, ``bad_value``.
    """

    default_code = "bad_msgpack"


class ValidationError(ProtocolError):
    """A well-formed map that is not a valid message.

    Codes: ``missing_field``, ``bad_type``, ``out_of_range``, ``too_long``,
    ``bad_value``, ``unknown_type``. ``field`` names the offending field when
    there is one.
    """

    default_code = "bad_value"

    def __init__(
        self,
        message: str,
        *,
        code: Optional[str] = None,
        ref_type: Optional[str] = None,
        field: Optional[str] = None,
    ) -> None:
        super().__init__(message, code=code, ref_type=ref_type)
        self.field: Optional[str] = field


class UnknownMessageType(ValidationError):
    """A message whose ``type`` this side does not know.

    The receiver answers with an ``error`` message and carries on; ``type_name``
    is the type string as received (possibly truncated for display).
    """

    default_code = "unknown_type"

    def __init__(self, type_name: str, message: Optional[str] = None) -> None:
        super().__init__(
            message if message is not None else f"unknown message type {type_name!r}",
            ref_type=type_name,
            field="type",
        )
        self.type_name = type_name
