"""``python -m ebb.protocol``: turn captured frames into JSON and JSON into frames.

For people debugging a channel or writing another implementation::

    python -m ebb.protocol decode capture.bin        # one JSON line per message or error
    python -m ebb.protocol decode --hex frame.txt    # hex text, as in PROTOCOL.md's examples
    python -m ebb.protocol encode messages.jsonl > frames.bin

``decode`` prints messages in their JSON form (PROTOCOL.md section 10) and
refused frames as ``{"error": CODE, "message": ..., "ref_type": ...}``, then a
summary on stderr. ``encode`` reads one JSON object per line (the form
``decode`` and ``ebb-agent --once --json`` print) and writes the frames.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import BinaryIO, Callable, Iterable, List, Optional, TextIO

from .errors import ProtocolError
from .messages import encode_message, from_dict, to_dict
from .stream import MessageReader

LOG = logging.getLogger(__name__)

__all__ = ["main"]

_CHUNK_BYTES = 65536


def _decode(source: BinaryIO, hex_input: bool, out: Callable[[str], None], err: TextIO) -> int:
    reader = MessageReader()
    chunks: Iterable[bytes]
    if hex_input:
        text = source.read().decode("ascii", errors="replace")
        try:
            chunks = [bytes.fromhex("".join(text.split()))]
        except ValueError as exc:
            err.write(f"error: the input is not hex text ({exc}); drop --hex for raw bytes\n")
            return 2
    else:
        chunks = iter(lambda: source.read(_CHUNK_BYTES), b"")
    for chunk in chunks:
        for item in reader.feed(chunk):
            if isinstance(item, ProtocolError):
                record = {"error": item.code, "message": item.message, "ref_type": item.ref_type}
                out(json.dumps(record) + "\n")
            else:
                out(json.dumps(to_dict(item)) + "\n")
    err.write(
        f"{reader.frames_ok} message(s), {reader.errors} error(s), "
        f"{reader.garbage_bytes} garbage byte(s), {reader.buffered_bytes} byte(s) "
        "of an unfinished frame at the end\n"
    )
    return 0 if reader.errors == 0 else 1


def _encode(source: BinaryIO, name: str, out: BinaryIO, err: TextIO) -> int:
    status = 0
    for number, raw_line in enumerate(source, start=1):
        line = raw_line.decode("utf-8", errors="replace")
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            if not isinstance(data, dict):
                raise ValueError("expected a JSON object")
            out.write(encode_message(from_dict(data)))
        except (ValueError, ProtocolError) as exc:
            err.write(f"{name}:{number}: not a valid message: {exc}\n")
            status = 1
    return status


def main(
    argv: Optional[List[str]] = None,
    *,
    stdin: Optional[BinaryIO] = None,
    stdout: Optional[BinaryIO] = None,
    stderr: Optional[TextIO] = None,
) -> int:
    """Run the tool; returns the exit status (0 ok, 1 refused input, 2 usage)."""
    parser = argparse.ArgumentParser(
        prog="python -m ebb.protocol",
        description="Decode ebb protocol frames to JSON lines, or encode JSON lines to frames.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    dec = sub.add_parser("decode", help="frames (raw bytes or --hex text) -> JSON lines")
    dec.add_argument("file", nargs="?", default="-", help="input file; - for stdin (default)")
    dec.add_argument("--hex", action="store_true", help="input is hex text; whitespace ignored")
    enc = sub.add_parser("encode", help="JSON lines -> frames on stdout")
    enc.add_argument("file", nargs="?", default="-", help="input file; - for stdin (default)")
    args = parser.parse_args(argv)

    raw_in = stdin if stdin is not None else sys.stdin.buffer
    raw_out = stdout if stdout is not None else sys.stdout.buffer
    err = stderr if stderr is not None else sys.stderr
    try:
        source = raw_in if args.file == "-" else open(args.file, "rb")  # noqa: SIM115
    except OSError as exc:
        err.write(f"error: cannot open {args.file}: {exc.strerror}\n")
        return 2
    try:
        if args.command == "decode":
            return _decode(source, args.hex, lambda text: _write_text(raw_out, text), err)
        return _encode(source, args.file, raw_out, err)
    finally:
        if source is not raw_in:
            source.close()
        raw_out.flush()


def _write_text(raw: BinaryIO, text: str) -> None:
    raw.write(text.encode("utf-8"))
