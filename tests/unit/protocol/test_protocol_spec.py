"""PROTOCOL.md and the code say the same thing.

The worked examples are parsed out of the document exactly as written and
decoded; the field tables are compared with the message definitions; the
documented limits and error codes are compared with the constants.
"""

from __future__ import annotations

import json
import re
import zlib
from pathlib import Path
from typing import Dict, List

import ebb.protocol
import pytest
from ebb.protocol import (
    ERR_HELLO_REQUIRED,
    ERR_UNEXPECTED_MESSAGE,
    ERR_UNKNOWN_REQUEST,
    ERR_UNSUPPORTED_VERSION,
    MAX_BUFFER_BYTES,
    MAX_FRAME_BYTES,
    MESSAGE_TYPES,
    DecodeError,
    FrameTooLarge,
    Hello,
    MessageReader,
    Ping,
    UnknownMessageType,
    UnsupportedFrameVersion,
    encode_message,
    encode_payload,
    from_dict,
)
from ebb.protocol.framing import cobs_decode
from ebb.protocol.messages import (
    MAX_ARRAY_ITEMS,
    MAX_DEPTH,
    MAX_KEYS,
    MAX_STRING_CHARS,
    field_specs,
)

SPEC_PATH = Path(ebb.protocol.__file__).parent / "PROTOCOL.md"


@pytest.fixture(scope="module")
def spec() -> str:
    return SPEC_PATH.read_text(encoding="utf-8")


def fenced_block(spec: str, info: str) -> str:
    """The body of the fenced code block whose info string is exactly ``info``."""
    match = re.search(r"^```" + re.escape(info) + r"\n(.*?)^```$", spec, re.M | re.S)
    assert match is not None, f"PROTOCOL.md has no ```{info} block"
    return match.group(1)


@pytest.mark.parametrize(("name", "expected"), [("ping", Ping(nonce=0)), ("hello", None)])
def test_worked_example_decodes_as_written(spec: str, name: str, expected: object) -> None:
    frame = bytes.fromhex(fenced_block(spec, f"hex {name}-frame"))
    message = from_dict(json.loads(fenced_block(spec, f"json {name}-message")))
    reader = MessageReader()
    assert reader.feed(frame) == [message]
    assert reader.errors == 0
    # Byte-exact both ways: our encoder writes exactly the documented frame.
    assert encode_message(message) == frame
    if expected is not None:
        assert message == expected


def test_hello_example_fields(spec: str) -> None:
    frame = bytes.fromhex(fenced_block(spec, "hex hello-frame"))
    (hello,) = MessageReader().feed(frame)
    assert hello == Hello(
        agent_version="0.1.0",
        protocol_versions=(1,),
        capabilities=("offer", "need"),
        hostname="vm1",
    )


def section_table(spec: str, heading: str) -> List[List[str]]:
    """Rows (cells stripped, header and rule dropped) of the first table after ``heading``."""
    start = spec.index(heading + "\n")
    rows: List[List[str]] = []
    for line in spec[start:].splitlines()[1:]:
        if line.startswith("#"):
            break
        if line.startswith("|"):
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            rows.append(cells)
        elif rows:
            break
    assert len(rows) >= 2, f"no table under {heading!r}"
    return rows[2:]


@pytest.mark.parametrize("type_name", sorted(MESSAGE_TYPES))
def test_field_table_matches_the_message_definition(spec: str, type_name: str) -> None:
    cls = MESSAGE_TYPES[type_name]
    rows = section_table(spec, f"### `{type_name}` ({cls.SENT_BY})")
    documented = [tuple(row) for row in rows]
    defined = [
        (
            f"`{f.name}`",
            f.wire_type,
            f.unit,
            f.limits.replace("\\|", "|"),
            "yes" if f.required else "no",
            f.doc,
        )
        for f in field_specs(cls)
    ]
    assert documented == defined


def test_every_message_type_has_a_section(spec: str) -> None:
    documented = set(re.findall(r"^### `([a-z_]+)` \(", spec, re.M))
    assert documented == set(MESSAGE_TYPES)


def documented_error_codes(spec: str) -> Dict[str, str]:
    return {row[0].strip("`"): row[1] for row in section_table(spec, "### 6.1 Error codes")}


def test_error_codes_the_code_can_produce_are_documented(spec: str) -> None:
    codes = documented_error_codes(spec)
    produced = {
        FrameTooLarge.default_code,
        UnsupportedFrameVersion.default_code,
        DecodeError.default_code,
        UnknownMessageType.default_code,
        ERR_HELLO_REQUIRED,
        ERR_UNSUPPORTED_VERSION,
        ERR_UNKNOWN_REQUEST,
        ERR_UNEXPECTED_MESSAGE,
    }
    # Codes passed explicitly where errors are raised in protocol/.
    source = "".join(p.read_text(encoding="utf-8") for p in SPEC_PATH.parent.glob("*.py"))
    produced |= set(re.findall(r'code="([a-z_]+)"', source))
    produced |= set(re.findall(r'_Bad\(\s*"([a-z_]+)"', source))
    produced |= set(re.findall(r'_Problem\(\s*"([a-z_]+)"', source))
    produced.discard("protocol_error")  # fallback for a code that is not a token
    assert produced - set(codes) == set()
    assert set(codes) - produced == set()


def test_documented_limits_match_the_constants(spec: str) -> None:
    limits = {row[0]: row[1] for row in section_table(spec, "## 7. Limits")}
    assert limits["payload size"] == f"{MAX_FRAME_BYTES} bytes"
    assert limits["reader buffer"] == f"{MAX_BUFFER_BYTES} bytes"
    assert limits["keys per map"] == str(MAX_KEYS)
    assert limits["nesting depth"].startswith(f"{MAX_DEPTH} ")
    assert limits["items per array"] == str(MAX_ARRAY_ITEMS)
    assert limits["string length"].startswith(f"{MAX_STRING_CHARS} ")


def annotated_hex(block: str) -> bytes:
    """The bytes of an annotated dump: leading two-digit hex tokens of each line."""
    out = bytearray()
    for line in block.splitlines():
        for token in line.split():
            if not re.fullmatch(r"[0-9a-f]{2}", token):
                break
            out.append(int(token, 16))
    return bytes(out)


def test_intermediate_steps_of_the_examples(spec: str) -> None:
    ping_frame = bytes.fromhex(fenced_block(spec, "hex ping-frame"))
    ping_body = bytes.fromhex(fenced_block(spec, "hex ping-body"))
    assert cobs_decode(ping_frame[1:-1]) == ping_body
    assert ping_body[1:-4] == encode_payload(Ping(nonce=0))

    hello_payload = annotated_hex(fenced_block(spec, "text hello-payload"))
    hello = from_dict(json.loads(fenced_block(spec, "json hello-message")))
    assert hello_payload == encode_payload(hello)
    assert len(hello_payload) == 90  # as the text says


def test_crc_check_value_quoted_in_the_spec(spec: str) -> None:
    assert 'crc32("123456789") = 0xCBF43926' in spec
    assert zlib.crc32(b"123456789") == 0xCBF43926
