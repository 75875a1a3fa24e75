"""Encode and decode throughput of ebb protocol reports.

Prints how many report frames per second one core encodes and decodes, the
frame size, and how fast the reader drops garbage. At the default 1 s report
interval a host reads one report per guest per second, so the decode figure is
the number of guests one core could serve on protocol work alone.

Run: .venv/bin/python bench/bench_protocol.py [--seconds 1.0]
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Callable, List

from ebb.protocol import MessageReader, Report, decode_message, encode_message, encode_payload
from ebb.protocol.framing import FrameDecoder


def sample_report(seq: int) -> Report:
    return Report(
        seq=seq,
        mem_total_kib=4_028_536,
        mem_free_kib=1_203_112,
        mem_available_kib=2_904_880,
        buffers_kib=51_200,
        cached_kib=1_620_004,
        swap_total_kib=1_048_572,
        swap_free_kib=1_000_000,
        anon_pages_kib=980_112,
        shmem_kib=12_004,
        dirty_kib=88,
        pswpin=120,
        pswpout=4_410,
        pgmajfault=3_310,
        pgfault=98_776_001,
        workingset_refault=5_120,
        psi_some_avg10=1.25,
        psi_full_avg10=0.0,
        psi_some_total_us=8_123_456,
        psi_full_total_us=1_004_000,
    )


def rate(label: str, seconds: float, batch: int, step: Callable[[], object]) -> float:
    """Run ``step`` (which handles ``batch`` items) for about ``seconds``; items per second."""
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        step()
        done += batch
    elapsed = time.perf_counter() - start
    per_s = done / elapsed
    print(f"{label:<44} {per_s:>12,.0f} /s  ({1e6 / per_s:7.2f} us each)")
    return per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    args = parser.parse_args()

    report = sample_report(7)
    frame = encode_message(report)
    payload = encode_payload(report)
    batch = 100
    stream = b"".join(encode_message(sample_report(i)) for i in range(batch))
    print(f"report payload {len(payload)} bytes, frame {len(frame)} bytes")

    rate("build + validate Report", args.seconds, 1, lambda: sample_report(7))
    rate("encode_message(Report) -> frame", args.seconds, 1, lambda: encode_message(report))
    rate("decode_message(payload) -> Report", args.seconds, 1, lambda: decode_message(payload))

    def read_stream() -> List[object]:
        out = MessageReader().feed(stream)
        assert len(out) == batch
        return list(out)

    per_s = rate("MessageReader.feed, 100 frames per call", args.seconds, batch, read_stream)
    mib = per_s * len(frame) / 2**20
    print(f"{'':<44} {mib:>12,.1f} MiB/s of frames")

    garbage = os.urandom(1 << 20)

    def drop_garbage() -> None:
        FrameDecoder().feed(garbage)

    rate("FrameDecoder.feed, random garbage (MiB)", args.seconds, 1, drop_garbage)


if __name__ == "__main__":
    main()
