#!/usr/bin/env python3
"""How much memory and CPU ebb-agent uses at a 1 s report interval.

Runs the real ``ebb-agent`` (``python -m ebb.guest.cli``) against a host end that is
a unix socket answering the hello with a 1000 ms welcome, lets it report for a
minute (``--duration`` for shorter), and prints its resident size and the CPU it
used, as a percentage of one core, counted from the welcome (start-up excluded;
it is printed apart). Targets: under 25 MiB RSS and under 0.5 % of a core.

    .venv/bin/python bench/bench_agent_footprint.py [--duration 60] [--proc-root /proc]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import List

import psutil
from ebb.protocol.errors import ProtocolError
from ebb.protocol.messages import (
    CAPABILITIES,
    Hello,
    Message,
    Ping,
    Pong,
    Report,
    Welcome,
    encode_message,
)
from ebb.protocol.stream import MessageReader

RSS_TARGET_MIB = 25.0
CPU_TARGET_PCT = 0.5


def _read_messages(conn: socket.socket, reader: MessageReader, timeout_s: float) -> List[Message]:
    conn.settimeout(timeout_s)
    try:
        data = conn.recv(65536)
    except socket.timeout:
        return []
    if not data:
        raise RuntimeError("the agent closed the connection")
    return [m for m in reader.feed(data) if not isinstance(m, ProtocolError)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds to measure (60)")
    parser.add_argument("--interval-ms", type=int, default=1000, help="report interval (1000)")
    parser.add_argument("--proc-root", default="/proc", help="what the agent reads (/proc)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ebb-bench-") as tmp:
        path = os.path.join(tmp, "channel.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(1)
        listener.settimeout(15.0)
        agent = subprocess.Popen(
            [sys.executable, "-m", "ebb.guest.cli", "--device", f"unix:{path}",
             "--proc-root", args.proc_root, "--log-level", "warning"],
        )
        try:
            proc = psutil.Process(agent.pid)
            conn, _ = listener.accept()
            reader = MessageReader()
            while not any(isinstance(m, Hello) for m in _read_messages(conn, reader, 10.0)):
                pass
            conn.sendall(encode_message(
                Welcome(protocol_version=1, report_interval_ms=args.interval_ms,
                        capabilities=CAPABILITIES)
            ))
            start_cpu = proc.cpu_times()
            start_wall = time.monotonic()
            startup_cpu_s = start_cpu.user + start_cpu.system
            reports = 0
            peak_rss = proc.memory_info().rss
            end = start_wall + args.duration
            while time.monotonic() < end:
                messages = _read_messages(conn, reader, max(0.01, min(1.0, end - time.monotonic())))
                reports += sum(isinstance(m, Report) for m in messages)
                for ping in (m for m in messages if isinstance(m, Ping)):
                    conn.sendall(encode_message(Pong(nonce=ping.nonce)))
                peak_rss = max(peak_rss, proc.memory_info().rss)
            end_cpu = proc.cpu_times()
            wall_s = time.monotonic() - start_wall
            rss = proc.memory_info().rss
            uss = proc.memory_full_info().uss
            # Stop the agent while the host end is still there, as systemd would.
            agent.terminate()
            agent.wait(10)
            conn.close()
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait(10)
            listener.close()

    cpu_s = (end_cpu.user + end_cpu.system) - (start_cpu.user + start_cpu.system)
    cpu_pct = 100.0 * cpu_s / wall_s
    mib = 1024.0 * 1024.0
    print(f"ebb-agent footprint over {wall_s:.1f} s at a {args.interval_ms} ms interval "
          f"(Python {sys.version.split()[0]}):")
    print(f"  reports received   {reports}")
    print(f"  RSS                {rss / mib:.1f} MiB (peak {peak_rss / mib:.1f} MiB, "
          f"USS {uss / mib:.1f} MiB; target < {RSS_TARGET_MIB:.0f} MiB)")
    print(f"  CPU                {cpu_pct:.3f} % of one core ({cpu_s:.2f} s; "
          f"target < {CPU_TARGET_PCT} %)")
    print(f"  start-up CPU       {startup_cpu_s:.2f} s (not counted above)")
    ok = peak_rss / mib < RSS_TARGET_MIB and cpu_pct < CPU_TARGET_PCT
    print(f"  within targets     {'yes' if ok else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
