"""The messages agent and host exchange, validated when built and when received.

Each message type is a frozen dataclass with a class attribute ``TYPE`` (the
string in the ``type`` key on the wire) and ``SENT_BY`` (``"guest"``, ``"host"``
or ``"either"``). A message is checked field by field when it is constructed,
whether by local code or by :func:`decode_message`, so a message object that
exists is valid: types, ranges, string lengths and allowed values all hold.

On the wire a message is a msgpack map: ``{"type": "report", "seq": 7, ...}``
with the dataclass field names as keys. Unknown keys are ignored (forward
compatibility); a nullable field may be absent or nil. PROTOCOL.md is the
normative description; the tables there are checked against this module by the
unit tests.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from dataclasses import dataclass, field
from typing import (
    Any,
    ClassVar,
    Dict,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Type,
    Union,
)

import msgpack

from .errors import DecodeError, ProtocolError, UnknownMessageType, ValidationError
from .framing import MAX_FRAME_BYTES, encode_frame
from .payload import (
    MAX_ARRAY_ITEMS,
    MAX_BIN_BYTES,
    MAX_DEPTH,
    MAX_KEYS,
    MAX_STRING_BYTES,
    MAX_STRING_CHARS,
    scan_payload,
)

LOG = logging.getLogger(__name__)

__all__ = [
    "CAPABILITIES",
    "ERR_HELLO_REQUIRED",
    "ERR_UNEXPECTED_MESSAGE",
    "ERR_UNKNOWN_REQUEST",
    "ERR_UNSUPPORTED_VERSION",
    "MAX_ARRAY_ITEMS",
    "MAX_DEPTH",
    "MAX_KEYS",
    "MAX_STRING_CHARS",
    "MESSAGE_TYPES",
    "PRESSURE_LEVELS",
    "PROTOCOL_VERSION",
    "REQUEST_YIELD",
    "SUPPORTED_VERSIONS",
    "URGENCIES",
    "YIELD_STOPS",
    "Bye",
    "Decision",
    "Error",
    "FieldSpec",
    "Hello",
    "Message",
    "Need",
    "Offer",
    "Ping",
    "Pong",
    "Pressure",
    "Report",
    "Request",
    "Welcome",
    "Yielded",
    "choose_version",
    "decode_message",
    "decode_result",
    "encode_message",
    "encode_payload",
    "error_reply",
    "field_specs",
    "from_dict",
    "to_dict",
]

#: The message protocol version this code speaks (negotiated by hello/welcome).
PROTOCOL_VERSION = 1
#: Every message protocol version this code can speak, oldest first.
SUPPORTED_VERSIONS: Tuple[int, ...] = (1,)
#: Capabilities defined by version 1 (see PROTOCOL.md "Capabilities").
CAPABILITIES: Tuple[str, ...] = ("offer", "need", "decision", "prepare_release", "yield")
#: Allowed values of ``Need.urgency``, least urgent first.
URGENCIES: Tuple[str, ...] = ("low", "high", "critical")
#: ``Request.kind`` asking the agent to reclaim (capability ``yield``).
REQUEST_YIELD = "yield"
#: Allowed values of ``Yielded.stopped``: why a yield ended.
YIELD_STOPS: Tuple[str, ...] = (
    "done",
    "reserve",
    "refaults",
    "psi",
    "rate_limit",
    "nothing_cold",
    "error",
    "disabled",
)
#: Meaning of ``Pressure.level``, by value.
PRESSURE_LEVELS: Tuple[str, ...] = ("none", "low", "high", "critical")

#: ``error`` codes for session-level refusals (decoding errors carry their own,
#: from :mod:`ebb.protocol.errors`). The full list is in PROTOCOL.md "Error codes".
ERR_HELLO_REQUIRED = "hello_required"
ERR_UNSUPPORTED_VERSION = "unsupported_version"
ERR_UNKNOWN_REQUEST = "unknown_request"
ERR_UNEXPECTED_MESSAGE = "unexpected_message"

#: The report intervals a host may ask for in ``welcome`` (ms, inclusive).
REPORT_INTERVAL_MS_MIN = 100
REPORT_INTERVAL_MS_MAX = 3_600_000

_KIB_MAX = 2**53 - 1  # exact in a double, so JSON consumers read it unchanged
_U64_MAX = 2**64 - 1
_U32_MAX = 2**32 - 1
_TOKEN = re.compile(r"[a-z0-9][a-z0-9_.-]*\Z")


# --- field kinds ---------------------------------------------------------------


class _Kind:
    """How one field is typed and bounded; ``check`` returns the normalised value."""

    wire_type = "?"

    def check(self, value: Any) -> Any:
        raise NotImplementedError

    def describe(self) -> str:
        """The range or limit, as PROTOCOL.md's tables print it."""
        raise NotImplementedError


class _Int(_Kind):
    wire_type = "int"

    def __init__(self, lo: int, hi: int) -> None:
        self.lo = lo
        self.hi = hi

    def check(self, value: Any) -> Any:
        # bool is an int in Python but a distinct type in msgpack: refuse it.
        if not isinstance(value, int) or isinstance(value, bool):
            raise _Bad("bad_type", f"expected an integer, got {_type_name(value)}")
        if not self.lo <= value <= self.hi:
            raise _Bad("out_of_range", f"{value} is outside {self.describe()}")
        return int(value)

    def describe(self) -> str:
        return f"{self.lo}..{_bound(self.hi)}"


class _Float(_Kind):
    wire_type = "float"

    def __init__(self, lo: float, hi: float) -> None:
        self.lo = lo
        self.hi = hi

    def check(self, value: Any) -> Any:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise _Bad("bad_type", f"expected a number, got {_type_name(value)}")
        number = float(value)
        if not math.isfinite(number) or not self.lo <= number <= self.hi:
            raise _Bad("out_of_range", f"{value!r} is outside {self.describe()}")
        return number

    def describe(self) -> str:
        return f"{self.lo:g}..{self.hi:g}"


class _Str(_Kind):
    wire_type = "str"

    def __init__(
        self,
        max_chars: int,
        *,
        min_chars: int = 0,
        token: bool = False,
        choices: Optional[Sequence[str]] = None,
    ) -> None:
        self.max_chars = max_chars
        self.min_chars = min_chars
        self.token = token
        self.choices = tuple(choices) if choices is not None else None

    def check(self, value: Any) -> Any:
        if not isinstance(value, str):
            raise _Bad("bad_type", f"expected a string, got {_type_name(value)}")
        if len(value) > self.max_chars:
            raise _Bad("too_long", f"{len(value)} characters, at most {self.max_chars} allowed")
        if len(value) < self.min_chars:
            raise _Bad("out_of_range", f"empty; at least {self.min_chars} character(s) needed")
        if self.choices is not None and value not in self.choices:
            raise _Bad("bad_value", f"{value!r} is not one of {', '.join(self.choices)}")
        if self.token and not _TOKEN.match(value):
            raise _Bad("bad_value", f"{value!r} is not a token ([a-z0-9][a-z0-9_.-]*)")
        return value

    def describe(self) -> str:
        if self.choices is not None:
            return " \\| ".join(f'"{c}"' for c in self.choices)
        if self.token:
            return f"token, 1..{self.max_chars} chars"
        return f"{self.min_chars}..{self.max_chars} chars"


class _Array(_Kind):
    def __init__(self, item: _Kind, *, min_items: int, max_items: int) -> None:
        self.item = item
        self.min_items = min_items
        self.max_items = max_items
        self.wire_type = f"array of {item.wire_type}"

    def check(self, value: Any) -> Any:
        if not isinstance(value, (list, tuple)):
            raise _Bad("bad_type", f"expected an array, got {_type_name(value)}")
        if not self.min_items <= len(value) <= self.max_items:
            raise _Bad(
                "out_of_range",
                f"{len(value)} items, {self.min_items}..{self.max_items} allowed",
            )
        checked = []
        for position, item in enumerate(value):
            try:
                checked.append(self.item.check(item))
            except _Bad as bad:
                raise _Bad(bad.code, f"item {position}: {bad.detail}") from None
        return tuple(checked)

    def describe(self) -> str:
        return f"{self.min_items}..{self.max_items} items, each {self.item.describe()}"


class _Bad(Exception):
    """Internal: a field check failed; turned into ValidationError with context."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def _type_name(value: Any) -> str:
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (bytes, bytearray)):
        return "binary"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, dict):
        return "a map"
    return type(value).__name__


def _bound(value: int) -> str:
    if value == _KIB_MAX:
        return "2^53-1"
    if value == _U64_MAX:
        return "2^64-1"
    if value == _U32_MAX:
        return "2^32-1"
    return str(value)


_KIB = _Int(0, _KIB_MAX)
_COUNTER = _Int(0, _U64_MAX)
_SEQ = _Int(0, _KIB_MAX)
_USEC = _Int(0, _U64_MAX)
_PERCENT = _Float(0.0, 100.0)
_VERSION = _Int(1, 65535)
_REASON = _Str(256)
_TOKEN_KIND = _Str(64, min_chars=1, token=True)
_CAPS = _Array(_TOKEN_KIND, min_items=0, max_items=32)


def _f(kind: _Kind, unit: str, doc: str, **kwargs: Any) -> Any:
    """Declare a message field: its kind, unit and one-line meaning."""
    return field(metadata={"kind": kind, "unit": unit, "doc": doc}, **kwargs)


def _opt(kind: _Kind, unit: str, doc: str) -> Any:
    """Declare a nullable field: absent or nil on the wire means None."""
    return field(default=None, metadata={"kind": kind, "unit": unit, "doc": doc, "null": True})


# --- messages ------------------------------------------------------------------


class _MessageBase:
    """Validation shared by every message dataclass."""

    TYPE: ClassVar[str] = ""
    SENT_BY: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for name, kind, nullable in _schema(type(self)):
            value = getattr(self, name)
            if value is None and nullable:
                continue
            try:
                checked = kind.check(value)
            except _Bad as bad:
                raise ValidationError(
                    f"{self.TYPE}.{name}: {bad.detail}",
                    code=bad.code,
                    ref_type=self.TYPE,
                    field=name,
                ) from None
            if checked is not value:
                # Frozen dataclass: normalise (list -> tuple, int -> float) in place.
                object.__setattr__(self, name, checked)


_Schema = Tuple[Tuple[str, _Kind, bool], ...]
_SCHEMAS: Dict[type, _Schema] = {}


def _schema(cls: type) -> _Schema:
    """(name, kind, nullable) of each field of a message class, computed once."""
    schema = _SCHEMAS.get(cls)
    if schema is None:
        schema = tuple(
            (f.name, f.metadata["kind"], bool(f.metadata.get("null", False)))
            for f in dataclasses.fields(cls)
        )
        _SCHEMAS[cls] = schema
    return schema


@dataclass(frozen=True)
class Hello(_MessageBase):
    """Guest -> host, first message of a session: who the agent is, what it speaks."""

    TYPE: ClassVar[str] = "hello"
    SENT_BY: ClassVar[str] = "guest"

    agent_version: str = _f(_Str(64, min_chars=1), "-", "version of the agent software")
    protocol_versions: Tuple[int, ...] = _f(
        _Array(_VERSION, min_items=1, max_items=16), "-", "message protocol versions it speaks"
    )
    capabilities: Tuple[str, ...] = _f(_CAPS, "-", "optional features it supports")
    hostname: Optional[str] = _opt(_Str(255), "-", "the guest's host name, for logs")


@dataclass(frozen=True)
class Welcome(_MessageBase):
    """Host -> guest, answer to every hello: chosen version, interval, features."""

    TYPE: ClassVar[str] = "welcome"
    SENT_BY: ClassVar[str] = "host"

    protocol_version: int = _f(_VERSION, "-", "version both sides use from now on")
    report_interval_ms: int = _f(
        _Int(REPORT_INTERVAL_MS_MIN, REPORT_INTERVAL_MS_MAX), "ms", "how often to send a report"
    )
    capabilities: Tuple[str, ...] = _f(_CAPS, "-", "the hello's capabilities the host will use")


@dataclass(frozen=True)
class Report(_MessageBase):
    """Guest -> host, every interval: the guest's memory state, flat."""

    TYPE: ClassVar[str] = "report"
    SENT_BY: ClassVar[str] = "guest"

    seq: int = _f(_SEQ, "-", "session sequence number (see Sequence numbers)")
    mem_total_kib: int = _f(_KIB, "KiB", "MemTotal from /proc/meminfo")
    mem_free_kib: int = _f(_KIB, "KiB", "MemFree")
    mem_available_kib: int = _f(_KIB, "KiB", "MemAvailable")
    buffers_kib: int = _f(_KIB, "KiB", "Buffers")
    cached_kib: int = _f(_KIB, "KiB", "Cached")
    swap_total_kib: int = _f(_KIB, "KiB", "SwapTotal")
    swap_free_kib: int = _f(_KIB, "KiB", "SwapFree")
    anon_pages_kib: int = _f(_KIB, "KiB", "AnonPages")
    shmem_kib: int = _f(_KIB, "KiB", "Shmem")
    dirty_kib: int = _f(_KIB, "KiB", "Dirty")
    pswpin: int = _f(_COUNTER, "pages", "pages swapped in since boot (/proc/vmstat)")
    pswpout: int = _f(_COUNTER, "pages", "pages swapped out since boot")
    pgmajfault: int = _f(_COUNTER, "faults", "major page faults since boot")
    pgfault: int = _f(_COUNTER, "faults", "page faults (minor and major) since boot")
    workingset_refault: int = _f(
        _COUNTER, "pages", "refaults of evicted pages since boot (file + anon summed)"
    )
    psi_some_avg10: Optional[float] = _opt(
        _PERCENT, "%", "/proc/pressure/memory some avg10; nil without PSI"
    )
    psi_full_avg10: Optional[float] = _opt(_PERCENT, "%", "full avg10; nil without PSI")
    psi_some_total_us: Optional[int] = _opt(_USEC, "us", "some total stall time since boot")
    psi_full_total_us: Optional[int] = _opt(_USEC, "us", "full total stall time since boot")


@dataclass(frozen=True)
class Offer(_MessageBase):
    """Guest -> host: memory the guest can give back now; replaces earlier offers."""

    TYPE: ClassVar[str] = "offer"
    SENT_BY: ClassVar[str] = "guest"

    seq: int = _f(_SEQ, "-", "session sequence number")
    kib: int = _f(_KIB, "KiB", "memory the guest can give back now; 0 withdraws")
    cold_kib: Optional[int] = _opt(
        _KIB, "KiB", "clean page cache unused for cache_hold_s: what a yield takes first"
    )


@dataclass(frozen=True)
class Need(_MessageBase):
    """Guest -> host: memory the guest wants; replaces earlier needs."""

    TYPE: ClassVar[str] = "need"
    SENT_BY: ClassVar[str] = "guest"

    seq: int = _f(_SEQ, "-", "session sequence number")
    kib: int = _f(_KIB, "KiB", "memory wanted; 0 withdraws the need")
    urgency: str = _f(_Str(16, choices=URGENCIES), "-", "how soon it is needed")
    reason: str = _f(_REASON, "-", "what showed the shortage, for people")


@dataclass(frozen=True)
class Decision(_MessageBase):
    """Host -> guest: the balloon target the host set for this guest, and why."""

    TYPE: ClassVar[str] = "decision"
    SENT_BY: ClassVar[str] = "host"

    balloon_target_kib: int = _f(_KIB, "KiB", "memory the guest is left with")
    reason: str = _f(_REASON, "-", "why, for people")


@dataclass(frozen=True)
class Request(_MessageBase):
    """Host -> guest: ask the agent to do something, e.g. prepare a release."""

    TYPE: ClassVar[str] = "request"
    SENT_BY: ClassVar[str] = "host"

    kind: str = _f(_TOKEN_KIND, "-", 'what to do: "prepare_release" or "yield"')
    kib: int = _f(_KIB, "KiB", "amount the request is about")
    request_id: Optional[int] = _opt(
        _Int(0, _U32_MAX), "-", "echoed in the answer (kind yield: in yielded)"
    )
    deadline_ms: Optional[int] = _opt(
        _Int(1, 600_000), "ms", "how long the host waits for the answer"
    )


@dataclass(frozen=True)
class Ping(_MessageBase):
    """Either side: are you there? Answered by a pong with the same nonce."""

    TYPE: ClassVar[str] = "ping"
    SENT_BY: ClassVar[str] = "either"

    nonce: int = _f(_COUNTER, "-", "any value; echoed in the pong")


@dataclass(frozen=True)
class Pong(_MessageBase):
    """Either side: answer to a ping."""

    TYPE: ClassVar[str] = "pong"
    SENT_BY: ClassVar[str] = "either"

    nonce: int = _f(_COUNTER, "-", "the ping's nonce")


@dataclass(frozen=True)
class Bye(_MessageBase):
    """Either side: the sender is stopping this session on purpose."""

    TYPE: ClassVar[str] = "bye"
    SENT_BY: ClassVar[str] = "either"

    reason: str = _f(_REASON, "-", "why, for people")


@dataclass(frozen=True)
class Error(_MessageBase):
    """Either side: a received frame or message was refused; the session goes on."""

    TYPE: ClassVar[str] = "error"
    SENT_BY: ClassVar[str] = "either"

    code: str = _f(_TOKEN_KIND, "-", "machine-readable reason (see Error codes)")
    message: str = _f(_Str(512), "-", "what was wrong, for people")
    ref_type: Optional[str] = _opt(_Str(64), "-", "type of the refused message, when known")


@dataclass(frozen=True)
class Yielded(_MessageBase):
    """Guest -> host: what one yield (reclaim in the guest) gave back.

    Answers a ``request`` kind ``yield`` (same ``request_id``), or reports a
    background yield the agent did by itself (no ``request_id``).
    """

    TYPE: ClassVar[str] = "yielded"
    SENT_BY: ClassVar[str] = "guest"

    asked_kib: int = _f(_KIB, "KiB", "what the agent tried to reclaim")
    freed_kib: int = _f(_KIB, "KiB", "MemFree after minus before, at least 0")
    cache_before_kib: int = _f(_KIB, "KiB", "reclaimable page cache before")
    cache_after_kib: int = _f(_KIB, "KiB", "reclaimable page cache after")
    duration_ms: int = _f(_Int(0, _U32_MAX), "ms", "how long the yield took")
    stopped: str = _f(_Str(16, choices=YIELD_STOPS), "-", "why the yield ended")
    reason: str = _f(_REASON, "-", "what happened, for people")
    request_id: Optional[int] = _opt(
        _Int(0, _U32_MAX), "-", "the request's request_id; nil for a background yield"
    )


@dataclass(frozen=True)
class Pressure(_MessageBase):
    """Host -> guest: how short of memory the host is; gates background yields."""

    TYPE: ClassVar[str] = "pressure"
    SENT_BY: ClassVar[str] = "host"

    level: int = _f(_Int(0, 3), "-", "0 none, 1 low, 2 high, 3 critical")
    reason: str = _f(_REASON, "-", "why, for people")


Message = Union[
    Hello,
    Welcome,
    Report,
    Offer,
    Need,
    Decision,
    Request,
    Ping,
    Pong,
    Bye,
    Error,
    Yielded,
    Pressure,
]

#: Every message class by its wire type string.
MESSAGE_TYPES: Dict[str, Type[Message]] = {
    cls.TYPE: cls
    for cls in (Hello, Welcome, Report, Offer, Need, Decision, Request, Ping, Pong, Bye, Error)
}
MESSAGE_TYPES[Yielded.TYPE] = Yielded
MESSAGE_TYPES[Pressure.TYPE] = Pressure


# --- describing fields (for documentation and tests) -----------------------------


@dataclass(frozen=True)
class FieldSpec:
    """One field of a message type as PROTOCOL.md documents it."""

    name: str
    wire_type: str
    unit: str
    limits: str
    required: bool
    doc: str


def field_specs(cls: Type[Message]) -> List[FieldSpec]:
    """The fields of a message type, in declaration order."""
    specs = []
    for spec in dataclasses.fields(cls):
        kind: _Kind = spec.metadata["kind"]
        nullable = bool(spec.metadata.get("null", False))
        specs.append(
            FieldSpec(
                name=spec.name,
                wire_type=kind.wire_type + (" or nil" if nullable else ""),
                unit=spec.metadata["unit"],
                limits=kind.describe(),
                required=not nullable,
                doc=spec.metadata["doc"],
            )
        )
    return specs


# --- dict and wire conversion ---------------------------------------------------


def to_dict(msg: Message) -> Dict[str, Any]:
    """The message as a JSON- and msgpack-friendly map, ``type`` first.

    Keys are the wire names (the spec's names); tuples become lists; None stays
    None (nil / null).
    """
    out: Dict[str, Any] = {"type": msg.TYPE}
    for name, _kind, _nullable in _schema(type(msg)):
        value = getattr(msg, name)
        out[name] = list(value) if isinstance(value, tuple) else value
    return out


def from_dict(data: Mapping[Any, Any]) -> Message:
    """Build and validate a message from a decoded map; unknown keys are ignored.

    Raises :class:`ValidationError` (or :class:`UnknownMessageType`).
    """
    if "type" not in data:
        raise ValidationError("message has no 'type' key", code="missing_field", field="type")
    type_name = data["type"]
    if not isinstance(type_name, str):
        raise ValidationError(
            f"'type' must be a string, got {_type_name(type_name)}",
            code="bad_type",
            field="type",
        )
    cls = MESSAGE_TYPES.get(type_name)
    if cls is None:
        raise UnknownMessageType(type_name[:64])
    kwargs: Dict[str, Any] = {}
    for name, _kind, nullable in _schema(cls):
        if name in data:
            kwargs[name] = data[name]
        elif not nullable:
            raise ValidationError(
                f"{type_name}.{name}: required field is missing",
                code="missing_field",
                ref_type=type_name,
                field=name,
            )
    return cls(**kwargs)


def encode_payload(msg: Message) -> bytes:
    """The message as msgpack bytes (a frame's payload, without framing)."""
    packed: bytes = msgpack.packb(to_dict(msg), use_bin_type=True)
    return packed


def encode_message(msg: Message) -> bytes:
    """The message as a complete frame, delimiters included, ready to write."""
    return encode_frame(encode_payload(msg))


def decode_message(payload: bytes) -> Message:
    """Decode and validate one frame payload.

    Raises only :class:`ProtocolError` subclasses: :class:`DecodeError` for bytes
    that are not an acceptable msgpack map, :class:`ValidationError` (and
    :class:`UnknownMessageType`) for a map that is not a valid message.
    """
    outcome = decode_result(payload)
    if isinstance(outcome, ProtocolError):
        raise outcome
    return outcome


def decode_result(payload: bytes) -> Union[Message, ProtocolError]:
    """Like :func:`decode_message`, with the error as the return value.

    A returned error has no traceback and no chained exception: it keeps nothing
    of the refused payload alive, so a reader may hold on to it (to log it or
    count it) without holding the decoded objects.
    """
    if len(payload) > MAX_FRAME_BYTES:
        return DecodeError(
            f"payload of {len(payload)} bytes exceeds the {MAX_FRAME_BYTES}-byte limit",
            code="too_long",
        )
    # The structure is checked on the bytes first (no object is built for a
    # payload that breaks a limit); msgpack's own limits are a second guard.
    problem, type_name = scan_payload(payload)
    if problem is not None:
        return problem
    data: Any = None
    failure: Optional[str] = None
    try:
        data = msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_str_len=MAX_STRING_BYTES,
            max_bin_len=MAX_BIN_BYTES,
            max_array_len=MAX_ARRAY_ITEMS,
            max_map_len=MAX_KEYS,
            max_ext_len=0,
        )
    except Exception as err:
        # Not expected after the scan; whatever it is, the payload is refused.
        failure = f"payload is not valid msgpack: {err}"
    if failure is not None or not isinstance(data, dict):
        return DecodeError(failure or "payload must be a msgpack map", code="bad_msgpack",
                           ref_type=type_name)
    try:
        return from_dict(data)
    except ProtocolError as err:
        error = err
    finally:
        data = None
    # The traceback would reach the frames that held the decoded map, and the
    # chained exceptions the field checks' frames: drop both.
    error.__traceback__ = None
    error.__context__ = None
    error.__cause__ = None
    return error


# --- helpers for both ends -------------------------------------------------------


def error_reply(err: ProtocolError) -> Error:
    """The ``error`` message that answers a refused frame or message."""
    return Error(
        code=err.code if _TOKEN.match(err.code) and len(err.code) <= 64 else "protocol_error",
        message=err.message[:512],
        ref_type=err.ref_type[:64] if err.ref_type is not None else None,
    )


def choose_version(
    offered: Sequence[int], supported: Sequence[int] = SUPPORTED_VERSIONS
) -> Optional[int]:
    """The highest message protocol version both sides speak, or None."""
    common = set(offered) & set(supported)
    return max(common) if common else None
