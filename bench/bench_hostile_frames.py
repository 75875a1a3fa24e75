"""Memory left behind by hostile frames, on the agent's and on ebbd's reader.

Feeds 150 crafted frames (by default) to each side in-process and prints the
resident set size before and after. Each frame is well-formed and within the
64 KiB payload limit, but its payload holds an unknown field with an array of
65000 empty maps, which a receiver must refuse (arrays hold at most 64 items).
A receiver that builds the objects before checking the limits, or keeps a
refused payload reachable (through an exception's traceback), grows by
megabytes per frame.

- agent: a real :class:`Agent` loop in a thread, fed through a socket pair, as
  a host would send;
- ebbd: one guest's :class:`GuestSession`, fed the same bytes, with the cut-off
  limits raised so that every frame is read (by default ebbd cuts a guest off
  after 20 bad frames in 10 s, which would end the test early).

Each side runs in its own child process, so one side's growth does not hide
the other's. No explicit garbage collection is made: the figures are what the
process holds.

Run: .venv/bin/python bench/bench_hostile_frames.py [--frames 150]
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgpack


def rss_kib() -> int:
    """This process's resident set size, from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def crafted_frame() -> bytes:
    """A valid frame whose payload decodes to 65000 empty maps in an unknown field."""
    from ebb.protocol import encode_frame

    payload = msgpack.packb({"type": "report", "pad": [{}] * 65000}, use_bin_type=True)
    frame: bytes = encode_frame(payload)
    return frame


def run_agent(frames: int) -> None:
    from ebb.guest.agent import Agent, AgentConfig
    from ebb.guest.collect import MemoryCollector
    from ebb.guest.transport import SocketTransport

    frame = crafted_frame()
    host, guest = socket.socketpair()
    config = AgentConfig(hello_retry_min_s=60.0, hello_retry_max_s=60.0, keepalive_s=600.0,
                         hostname="bench")
    with tempfile.TemporaryDirectory() as proc_root:
        agent = Agent(SocketTransport(guest), MemoryCollector(proc_root), config)
        import threading

        thread = threading.Thread(target=agent.run, daemon=True)
        thread.start()
        time.sleep(0.2)  # the thread's stack and first allocations are not the frames' doing
        before = rss_kib()
        host.setblocking(False)
        frames_sent, offset = 0, 0
        deadline = time.monotonic() + 120.0
        while agent.counters.protocol_errors < frames and time.monotonic() < deadline:
            if frames_sent < frames:
                with contextlib.suppress(BlockingIOError):
                    offset += host.send(frame[offset:])
                if offset == len(frame):
                    frames_sent, offset = frames_sent + 1, 0
            with contextlib.suppress(BlockingIOError):
                host.recv(65536)  # the agent's hello and (rate-limited) error replies
            time.sleep(0.001)
        after = rss_kib()
        refused = agent.counters.protocol_errors
        agent.stop()
        thread.join(5.0)
        agent.close()
    host.close()
    report("agent", frames, refused, before, after)


def run_ebbd(frames: int) -> None:
    from ebb.host.channels.session import GuestSession
    from ebb.host.channels.state import ChannelLimits

    frame = crafted_frame()
    limits = ChannelLimits(max_errors_per_window=10 * frames, max_bytes_per_s=1 << 30,
                           max_frames_per_s=10 * frames)
    session = GuestSession("bench-vm", limits)
    session.connected(0.0)
    before = rss_kib()
    now = 0.0
    for _ in range(frames):
        now += 1.0
        # The hub reads 16 KiB per wakeup; feed the same way.
        for start in range(0, len(frame), limits.read_chunk_bytes):
            session.feed(frame[start : start + limits.read_chunk_bytes], now, now)
    after = rss_kib()
    report("ebbd", frames, session.protocol_errors, before, after)


def report(side: str, frames: int, refused: int, before: int, after: int) -> None:
    print(
        f"{side:5s}: {frames} crafted frames, {refused} refused; RSS {before / 1024:.1f} MiB "
        f"before, {after / 1024:.1f} MiB after ({(after - before) / 1024:+.1f} MiB)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--side", choices=("agent", "ebbd"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side == "agent":
        run_agent(args.frames)
        return
    if args.side == "ebbd":
        run_ebbd(args.frames)
        return
    for side in ("agent", "ebbd"):
        subprocess.run(
            [sys.executable, __file__, "--side", side, "--frames", str(args.frames)], check=True
        )


if __name__ == "__main__":
    main()
