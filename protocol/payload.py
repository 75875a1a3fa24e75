"""Checking a payload's msgpack structure before any object is built.

:func:`scan_payload` walks the msgpack bytes header by header, from the first
byte, and stops at the first problem (PROTOCOL.md 6.2, "Which error"): it never
builds the containers, so a hostile payload costs a pass over its bytes and no
memory, whatever it holds. Only a payload that passes is handed to msgpack,
whose own limits (``max_array_len`` and the others) are set to the same values
as a second guard.

The limits (PROTOCOL.md section 7): at most :data:`MAX_VALUES` msgpack
values in all, maps of at most :data:`MAX_KEYS` keys, arrays of at most
:data:`MAX_ARRAY_ITEMS` items, nesting at most :data:`MAX_DEPTH` deep (the
top-level map is depth 1), strings of at most :data:`MAX_STRING_CHARS` code
points, ``bin`` values of at most :data:`MAX_BIN_BYTES` bytes, no ext types,
map keys that are strings and appear once per map, exactly one object (a map)
in the payload.
"""

from __future__ import annotations

import struct
from typing import List, Optional, Set, Tuple

from .errors import DecodeError

__all__ = [
    "MAX_ARRAY_ITEMS",
    "MAX_BIN_BYTES",
    "MAX_DEPTH",
    "MAX_KEYS",
    "MAX_STRING_BYTES",
    "MAX_STRING_CHARS",
    "MAX_VALUES",
    "scan_payload",
]

#: Most keys in any map of a payload.
MAX_KEYS = 64
#: Deepest nesting of maps and arrays; the top-level map is depth 1.
MAX_DEPTH = 4
#: Most items in any array of a payload.
MAX_ARRAY_ITEMS = 64
#: Longest string anywhere in a payload, in characters (fields have tighter limits).
MAX_STRING_CHARS = 4096
#: A string of MAX_STRING_CHARS code points takes at most this many UTF-8 bytes.
MAX_STRING_BYTES = 4 * MAX_STRING_CHARS
#: Longest msgpack ``bin`` value anywhere in a payload, in bytes.
MAX_BIN_BYTES = 4096
#: Most msgpack values in a payload, counting every key, value and container
#: (the top-level map included). A report has about 45. The bound keeps what one
#: payload costs to check and to build small, whatever its shape.
MAX_VALUES = 1024
#: The longest ``ref_type`` an error reply carries.
_REF_TYPE_CHARS = 64

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")

# What a header byte announces, for the bytes that are not fix* ranges:
# (kind, size of the length or of the value that follows the byte).
_SCALAR, _STR, _BIN, _ARRAY, _MAP, _EXT, _INVALID = range(7)
_FIXED_SIZE = {
    0xC0: 0, 0xC2: 0, 0xC3: 0,  # nil, false, true
    0xCA: 4, 0xCB: 8,  # float 32, float 64
    0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8,  # uint 8..64
    0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8,  # int 8..64
}
_LENGTH_OF = {
    0xC4: (_BIN, 1), 0xC5: (_BIN, 2), 0xC6: (_BIN, 4),
    0xC7: (_EXT, 1), 0xC8: (_EXT, 2), 0xC9: (_EXT, 4),
    0xD9: (_STR, 1), 0xDA: (_STR, 2), 0xDB: (_STR, 4),
    0xDC: (_ARRAY, 2), 0xDD: (_ARRAY, 4),
    0xDE: (_MAP, 2), 0xDF: (_MAP, 4),
}


class _Problem(Exception):
    """Internal: the first problem met; carries the code and the message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Container:
    """A map or array still being read: how many items are left, and the keys seen."""

    __slots__ = ("is_map", "key", "keys", "left", "want_key")

    def __init__(self, is_map: bool, count: int) -> None:
        self.is_map = is_map
        # A map of n entries is 2n objects, key and value alternating.
        self.left = 2 * count if is_map else count
        self.keys: Set[str] = set()
        self.want_key = is_map
        self.key: Optional[str] = None


def scan_payload(payload: bytes) -> Tuple[Optional[DecodeError], Optional[str]]:
    """Check ``payload``'s structure; (the first problem or None, the message type if read).

    The type is the value of the top-level ``type`` key when it is a string read
    before the problem (truncated to 64 characters), else None. Never raises.
    """
    reader = _Scanner(payload)
    try:
        reader.run()
    except _Problem as problem:
        code, message = problem.code, problem.message
    else:
        return None, reader.type_name
    # Built outside the except block: the error carries no traceback or context,
    # so nothing of the payload stays reachable through it.
    return DecodeError(message, code=code, ref_type=reader.type_name), reader.type_name


class _Scanner:
    def __init__(self, payload: bytes) -> None:
        self.data = bytes(payload)
        self.pos = 0
        self.type_name: Optional[str] = None

    def _take(self, count: int) -> int:
        """Position of the next ``count`` bytes, which must be there."""
        start = self.pos
        if start + count > len(self.data):
            raise _Problem("bad_msgpack", f"payload ends inside a msgpack value at byte {start}")
        self.pos = start + count
        return start

    def _length(self, size: int) -> int:
        start = self._take(size)
        if size == 1:
            return self.data[start]
        if size == 2:
            return int(_U16.unpack_from(self.data, start)[0])
        return int(_U32.unpack_from(self.data, start)[0])

    def run(self) -> None:
        data = self.data
        if not data:
            raise _Problem("bad_msgpack", "empty payload")
        stack: List[_Container] = []
        values = 0
        while True:
            at = self.pos
            if at >= len(data):
                raise _Problem("bad_msgpack", f"payload ends inside a msgpack value at byte {at}")
            values += 1
            if values > MAX_VALUES:
                raise _Problem(
                    "too_long", f"payload holds more than {MAX_VALUES} msgpack values (byte {at})"
                )
            parent = stack[-1] if stack else None
            is_key = parent is not None and parent.want_key
            byte = data[at]
            self.pos = at + 1
            # What the first byte announces; a length in the following bytes is
            # read only once the kind is known to be acceptable here.
            length, size = 0, 0
            if byte <= 0x7F or byte >= 0xE0:
                kind = _SCALAR
            elif byte <= 0x8F:
                kind, length = _MAP, byte & 0x0F
            elif byte <= 0x9F:
                kind, length = _ARRAY, byte & 0x0F
            elif byte <= 0xBF:
                kind, length = _STR, byte & 0x1F
            elif byte in _FIXED_SIZE:
                kind = _SCALAR
            elif byte in _LENGTH_OF:
                kind, size = _LENGTH_OF[byte]
            elif 0xD4 <= byte <= 0xD8:
                kind = _EXT
            else:
                raise _Problem("bad_msgpack", f"byte {at} ({byte:#04x}) is not a msgpack value")
            if kind == _EXT:
                raise _Problem("bad_msgpack", f"ext type at byte {at}: ext types are not allowed")
            if parent is None and kind != _MAP:
                raise _Problem("not_a_map", "payload must be a msgpack map")
            if is_key and kind != _STR:
                raise _Problem("bad_value", f"map key at byte {at} is not a string")
            if size:
                length = self._length(size)
            elif kind == _SCALAR and byte in _FIXED_SIZE:
                self._take(_FIXED_SIZE[byte])
            value: Optional[str] = None
            if kind == _STR:
                value = self._string(at, length)
            elif kind == _BIN:
                if length > MAX_BIN_BYTES:
                    raise _Problem(
                        "too_long",
                        f"binary value at byte {at} has {length} bytes, "
                        f"at most {MAX_BIN_BYTES} allowed",
                    )
                self._take(length)
            if parent is not None:
                parent.left -= 1
                if is_key:
                    assert value is not None
                    if value in parent.keys:
                        raise _Problem(
                            "bad_value", f"map key {value[:64]!r} appears twice in one map"
                        )
                    parent.keys.add(value)
                    parent.key = value
                    parent.want_key = False
                elif parent.is_map:
                    if len(stack) == 1 and parent.key == "type" and value is not None:
                        self.type_name = value[:_REF_TYPE_CHARS]
                    parent.want_key = True
            if kind in (_MAP, _ARRAY):
                depth = len(stack) + 1
                if depth > MAX_DEPTH:
                    raise _Problem(
                        "too_deep",
                        f"maps/arrays nested deeper than {MAX_DEPTH} levels at byte {at}",
                    )
                if kind == _MAP and length > MAX_KEYS:
                    raise _Problem(
                        "too_many_keys",
                        f"a map at byte {at} has {length} keys, at most {MAX_KEYS} allowed",
                    )
                if kind == _ARRAY and length > MAX_ARRAY_ITEMS:
                    raise _Problem(
                        "too_long",
                        f"an array at byte {at} has {length} items, "
                        f"at most {MAX_ARRAY_ITEMS} allowed",
                    )
                stack.append(_Container(kind == _MAP, length))
            # Close every container this value completed.
            while stack and stack[-1].left == 0:
                stack.pop()
            if not stack:
                break
        if self.pos != len(data):
            raise _Problem(
                "bad_msgpack",
                f"{len(data) - self.pos} bytes after the map: a payload is exactly one object",
            )

    def _string(self, at: int, length: int) -> str:
        if length > MAX_STRING_BYTES:
            raise _Problem(
                "too_long",
                f"a string at byte {at} has {length} bytes, more than "
                f"{MAX_STRING_CHARS} characters can take",
            )
        start = self._take(length)
        raw = self.data[start : start + length]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is None:
            raise _Problem("bad_msgpack", f"a string at byte {at} is not valid UTF-8")
        if len(text) > MAX_STRING_CHARS:
            raise _Problem(
                "too_long",
                f"a string at byte {at} has {len(text)} characters, "
                f"at most {MAX_STRING_CHARS} allowed",
            )
        return text
