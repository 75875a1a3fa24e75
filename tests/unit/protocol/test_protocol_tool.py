"""``python -m ebb.protocol``: captured frames to JSON and back."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Dict, List, Tuple

from ebb.protocol import Need, Ping, Pong, encode_message
from ebb.protocol.tool import main


def run(argv: List[str], stdin: bytes = b"") -> Tuple[int, bytes, str]:
    out = io.BytesIO()
    err = io.StringIO()
    status = main(argv, stdin=io.BytesIO(stdin), stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


def test_decode_prints_messages_and_refusals_as_json_lines(tmp_path: Path) -> None:
    capture = tmp_path / "capture.bin"
    need = Need(seq=3, kib=4096, urgency="high", reason="psi some avg10 40%")
    capture.write_bytes(b"noise" + encode_message(Ping(nonce=9)) + encode_message(need))
    status, out, err = run(["decode", str(capture)])
    lines = [json.loads(line) for line in out.decode().splitlines()]
    assert lines[0]["error"] in ("bad_stuffing", "short_frame", "bad_crc")
    assert lines[1:] == [{"type": "ping", "nonce": 9}, {"type": "need", **_fields(need)}]
    assert status == 1  # refused input is reported in the exit status
    assert "2 message(s), 1 error(s), 5 garbage byte(s)" in err


def test_decode_hex_reads_the_spec_style_dump() -> None:
    dump = " ".join(f"{b:02x}" for b in encode_message(Ping(nonce=0)))
    status, out, _ = run(["decode", "--hex"], stdin=(dump[:20] + "\n" + dump[20:]).encode())
    assert status == 0
    assert json.loads(out) == {"type": "ping", "nonce": 0}


def test_decode_hex_refuses_non_hex_text() -> None:
    status, _, err = run(["decode", "--hex"], stdin=b"zz zz")
    assert status == 2
    assert "not hex" in err


def test_encode_then_decode_round_trips_and_names_bad_lines() -> None:
    lines = b'{"type": "ping", "nonce": 5}\n\n{"type": "frob"}\n[1]\n{"type": "pong", "nonce": 5}\n'
    status, frames, err = run(["encode"], stdin=lines)
    assert status == 1
    assert "-:3: not a valid message: unknown_type" in err
    assert "-:4: not a valid message" in err
    assert frames == encode_message(Ping(nonce=5)) + encode_message(Pong(nonce=5))
    status, out, _ = run(["decode"], stdin=frames)
    assert status == 0
    assert [json.loads(x) for x in out.decode().splitlines()] == [
        {"type": "ping", "nonce": 5},
        {"type": "pong", "nonce": 5},
    ]


def test_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    status, _, err = run(["decode", str(tmp_path / "absent.bin")])
    assert status == 2
    assert "cannot open" in err and "absent.bin" in err


def _fields(need: Need) -> Dict[str, Any]:
    return {"seq": need.seq, "kib": need.kib, "urgency": need.urgency, "reason": need.reason}
