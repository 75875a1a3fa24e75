"""In-guest request loop: read files of a working set at a fixed request rate.

Stands in for the MediaWiki instances of the MOM article's Cloudy workload: each
request reads one whole file from a directory on a virtio disk. Requests are
scheduled open-loop at ``--rate`` per second (as a load generator at a constant
rate sends them); a request's latency runs from its scheduled time to the end of
its read, so time spent waiting behind a slow request counts, as a client would
see it. Files are picked with a skew: ``--hot-share`` of the requests go to the
first ``--hot-files`` share of the files, the rest spread over all of them.

With ``--warm`` every file is read once first, outside the timing.
Prints one JSON object when done: requests, rate achieved, latency percentiles
(ms), throughput (KiB/s), p95 per 10 s window, and the warm-up's duration. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from typing import Dict, List, Optional, Sequence


def percentile(values: Sequence[float], share: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))
    return ordered[index]


def _read_whole(path: str) -> int:
    read = 0
    with open(path, "rb", buffering=0) as handle:
        while True:
            chunk = handle.read(1 << 20)
            if not chunk:
                return read
            read += len(chunk)


def run(directory: str, rate: float, duration_s: float, seed: int, hot_files: float,
        hot_share: float, warm: bool = False) -> Dict[str, object]:
    files = sorted(os.path.join(directory, f) for f in os.listdir(directory))
    if not files:
        raise SystemExit(f"reader: no files in {directory}")
    warm_s = 0.0
    if warm:
        # Every file once, before the clock starts: the cache fills as a server's
        # would, and the requests are then timed against a warm cache.
        began = time.monotonic()
        for path in files:
            _read_whole(path)
        warm_s = time.monotonic() - began
    rng = random.Random(seed)
    hot = files[: max(1, int(len(files) * hot_files))]
    latencies: List[float] = []
    windows: Dict[int, List[float]] = {}
    read_bytes = 0
    interval = 1.0 / rate
    start = time.monotonic()
    next_at = start
    while True:
        now = time.monotonic()
        if now - start >= duration_s:
            break
        if next_at > now:
            time.sleep(next_at - now)
        path = rng.choice(hot) if rng.random() < hot_share else rng.choice(files)
        read_bytes += _read_whole(path)
        done = time.monotonic()
        latency_ms = (done - next_at) * 1000.0
        latencies.append(latency_ms)
        windows.setdefault(int((next_at - start) // 10), []).append(latency_ms)
        next_at += interval
    elapsed = time.monotonic() - start
    return {
        "requests": len(latencies),
        "rate_per_s": round(len(latencies) / elapsed, 2),
        "latency_p50_ms": round(percentile(latencies, 0.50), 2),
        "latency_p95_ms": round(percentile(latencies, 0.95), 2),
        "latency_p99_ms": round(percentile(latencies, 0.99), 2),
        "latency_mean_ms": round(sum(latencies) / len(latencies), 2) if latencies else 0.0,
        "throughput_kib_s": round(read_bytes / 1024 / elapsed, 1),
        "p95_per_10s_ms": [round(percentile(windows[k], 0.95), 2) for k in sorted(windows)],
        "elapsed_s": round(elapsed, 1),
        "warm_s": round(warm_s, 1),
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True)
    parser.add_argument("--rate", type=float, default=16.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--hot-files", type=float, default=0.2)
    parser.add_argument("--hot-share", type=float, default=0.8)
    parser.add_argument("--warm", action="store_true",
                        help="read every file once before the clock starts")
    args = parser.parse_args(argv)
    result = run(args.dir, args.rate, args.duration, args.seed, args.hot_files, args.hot_share,
                 warm=args.warm)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
