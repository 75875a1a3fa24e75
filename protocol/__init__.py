"""ebb's wire protocol between the guest agent and the host daemon.

``framing`` cuts a byte stream into frames and resynchronises after damage,
``messages`` defines and validates the messages, ``stream`` combines the two into
a reader, ``errors`` is everything that can go wrong. PROTOCOL.md in this folder
is the specification.
"""

from __future__ import annotations

from .errors import (
    DecodeError,
    FrameTooLarge,
    FramingError,
    ProtocolError,
    UnknownMessageType,
    UnsupportedFrameVersion,
    ValidationError,
)
from .framing import (
    FRAME_VERSION,
    MAX_BUFFER_BYTES,
    MAX_FRAME_BYTES,
    FrameDecoder,
    encode_frame,
)
from .messages import (
    CAPABILITIES,
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    URGENCIES,
    Bye,
    Decision,
    Error,
    Hello,
    Message,
    Need,
    Offer,
    Ping,
    Pong,
    Report,
    Request,
    Welcome,
    choose_version,
    decode_message,
    encode_message,
    encode_payload,
    error_reply,
    from_dict,
    to_dict,
)
from .stream import MessageReader, ReadResult, needs_error_reply

__all__ = [
    "CAPABILITIES",
    "FRAME_VERSION",
    "MAX_BUFFER_BYTES",
    "MAX_FRAME_BYTES",
    "MESSAGE_TYPES",
    "PROTOCOL_VERSION",
    "SUPPORTED_VERSIONS",
    "URGENCIES",
    "Bye",
    "Decision",
    "DecodeError",
    "Error",
    "FrameDecoder",
    "FrameTooLarge",
    "FramingError",
    "Hello",
    "Message",
    "MessageReader",
    "Need",
    "Offer",
    "Ping",
    "Pong",
    "ProtocolError",
    "ReadResult",
    "Report",
    "Request",
    "UnknownMessageType",
    "UnsupportedFrameVersion",
    "ValidationError",
    "Welcome",
    "choose_version",
    "decode_message",
    "encode_frame",
    "encode_message",
    "encode_payload",
    "error_reply",
    "from_dict",
    "needs_error_reply",
    "to_dict",
]
