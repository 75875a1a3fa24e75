"""A hostile guest process: garbage, oversized frames and a flood on the agent's port.

Run inside a lab guest (with ebb-agent stopped, since the port has one user)
to check that ebbd cuts such a guest off and keeps serving the others::

    ebbctl lab run ebb-lab-2 -- python3 -m ebb.lab.hostile --seconds 20

It writes, in a loop for ``--seconds``: random bytes, a run of non-zero bytes
longer than any frame, well-formed frames holding messages that are not valid,
and a flood of valid-looking frames far above any sane report rate.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional, Sequence

PORT = "/dev/virtio-ports/org.ebb.agent.0"


def _frames() -> list[bytes]:
    """Complete frames: a bad message, an unknown type, a hello with wrong types."""
    import msgpack
    from ebb.protocol.framing import encode_frame

    payloads = [
        msgpack.packb({"type": "report", "seq": "not a number"}),
        msgpack.packb({"type": "no-such-type", "x": 1}),
        msgpack.packb({"type": "hello", "version": -5, "agent": 7}),
        msgpack.packb([1, 2, 3]),
        b"\xc1\xc1\xc1",  # not msgpack at all
    ]
    return [encode_frame(p) for p in payloads]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="hostile", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=PORT)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args(argv)
    fd = os.open(args.device, os.O_RDWR | os.O_NONBLOCK)
    frames = _frames()
    oversized = b"\x01" * 200_000  # no zero byte: longer than any frame may be
    end = time.monotonic() + args.seconds
    written = 0
    while time.monotonic() < end:
        for chunk in (os.urandom(4096), oversized, b"\x00", *frames * 50):
            try:
                written += os.write(fd, chunk)
            except BlockingIOError:
                time.sleep(0.01)
            except OSError:
                time.sleep(0.2)  # host end closed (cut off): keep trying
    os.close(fd)
    print(f"hostile: wrote {written} bytes in {args.seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
