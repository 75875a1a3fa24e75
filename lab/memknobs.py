"""memknobs: a workload that keeps a buffer's every page in use, its size changing over time.

In the spirit of the "Memknobs" program of the MOM article: allocate a buffer
of a given size, write every page of it in a loop, and report how many MB of
pages were touched per second. A guest short of memory shows it as a falling
rate (its pages are being swapped or reclaimed under it).

The pattern is a comma-separated list of ``SIZE:DURATION`` steps, repeated
until stopped (or run once with ``--once``)::

    200M:30s,600M:60s      200 MiB for 30 s, then 600 MiB for 60 s, again and again
    1G:2m                  1 GiB, re-announced every 2 minutes
    0:10s,300M:20s         idle (no buffer) for 10 s, then 300 MiB for 20 s
    50%:1m                 half of the guest's MemTotal for a minute

SIZE is a number with a unit ``K``, ``M`` or ``G`` (binary: KiB, MiB, GiB; a
bare number is MiB) or a percentage of ``MemTotal``; DURATION is a number with
``s``, ``m`` or ``h`` (a bare number is seconds).

Each ``--interval`` a line goes to stdout::

    t_s=12.0 size_mib=200 mb_per_s=48.3 passes=14

(``--json`` prints the same as a JSON object per line). ``mb_per_s`` is 10^6
bytes of pages written per second. One byte per 4 KiB page is written with an
extended-slice assignment (``buf[::4096] = ...``), which runs at C speed even
under software emulation, so the figure measures memory, not Python.

Run it in a lab guest with ``ebbctl lab workload VM --pattern ...``. It needs
only the standard library.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence, TextIO

PAGE_BYTES = 4096
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg%]?)i?b?\s*$", re.IGNORECASE)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*$", re.IGNORECASE)
_SIZE_UNITS = {"k": 1024, "m": 1024**2, "g": 1024**3, "": 1024**2}
_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "": 1.0}


class PatternError(ValueError):
    """A pattern that cannot be read; the message points at the bad step."""


@dataclass(frozen=True)
class Step:
    """Keep ``size_bytes`` of buffer in use for ``duration_s``."""

    size_bytes: int
    duration_s: float


def mem_total_bytes(meminfo: str = "/proc/meminfo") -> int:
    with open(meminfo) as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise PatternError("no MemTotal in /proc/meminfo for a percentage size")


def parse_size(text: str, mem_total: Optional[int] = None) -> int:
    match = _SIZE.match(text)
    if not match:
        raise PatternError(f"size {text!r}: expected a number with K, M, G or %, e.g. 200M")
    number, unit = float(match.group(1)), match.group(2).lower()
    if unit == "%":
        if number > 100:
            raise PatternError(f"size {text!r}: more than 100% of MemTotal")
        total = mem_total if mem_total is not None else mem_total_bytes()
        return int(total * number / 100)
    return int(number * _SIZE_UNITS[unit])


def parse_duration(text: str) -> float:
    match = _DURATION.match(text)
    if not match:
        raise PatternError(f"duration {text!r}: expected a number with s, m or h, e.g. 30s")
    seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]
    if seconds <= 0:
        raise PatternError(f"duration {text!r}: must be more than 0")
    return seconds


def parse_pattern(text: str, mem_total: Optional[int] = None) -> List[Step]:
    """``"200M:30s,600M:60s"`` -> steps; :class:`PatternError` says which step is wrong."""
    steps = []
    for index, part in enumerate(p for p in text.split(",") if p.strip()):
        size, sep, duration = part.partition(":")
        if not sep:
            raise PatternError(f"step {index + 1} {part!r}: expected SIZE:DURATION, e.g. 200M:30s")
        try:
            steps.append(Step(parse_size(size, mem_total), parse_duration(duration)))
        except PatternError as err:
            raise PatternError(f"step {index + 1} {part!r}: {err}") from None
    if not steps:
        raise PatternError("empty pattern: give at least one SIZE:DURATION step")
    return steps


class Toucher:
    """A buffer whose every page is written once per :meth:`touch`."""

    def __init__(self, size_bytes: int) -> None:
        self.size_bytes = size_bytes
        self.buf = bytearray(size_bytes)
        self.pages = len(range(0, size_bytes, PAGE_BYTES))
        # Two alternating fills, so every pass really writes (and dirties) each page.
        self._fills = (b"\x01" * self.pages, b"\x02" * self.pages)
        self.passes = 0

    def touch(self) -> int:
        """Write one byte in every page; return the bytes of pages touched."""
        if self.pages:
            self.buf[::PAGE_BYTES] = self._fills[self.passes & 1]
        self.passes += 1
        return self.pages * PAGE_BYTES


def run(steps: Sequence[Step], interval_s: float = 1.0, once: bool = False,
        as_json: bool = False, out: Optional[TextIO] = None,
        stop_after_s: Optional[float] = None) -> int:
    """Follow ``steps``; print a rate line every ``interval_s``; return passes done."""
    stream = out or sys.stdout
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    start = time.monotonic()
    total_passes = 0
    index = 0
    while not stopping:
        step = steps[index]
        toucher: Optional[Toucher] = None
        toucher = Toucher(step.size_bytes) if step.size_bytes else None
        step_end = time.monotonic() + step.duration_s
        window_start, window_bytes, window_passes = time.monotonic(), 0, 0
        while not stopping:
            now = time.monotonic()
            if stop_after_s is not None and now - start >= stop_after_s:
                stopping.append(True)
                break
            if now >= step_end:
                break
            if toucher is not None:
                window_bytes += toucher.touch()
                window_passes += 1
            else:
                time.sleep(min(0.1, step_end - now))
            now = time.monotonic()
            if now - window_start >= interval_s:
                rate = window_bytes / (now - window_start) / 1e6
                line = {"t_s": round(now - start, 1), "size_mib": step.size_bytes // 1024**2,
                        "mb_per_s": round(rate, 1), "passes": window_passes}
                if as_json:
                    print(json.dumps(line), file=stream, flush=True)
                else:
                    print(" ".join(f"{k}={v}" for k, v in line.items()), file=stream, flush=True)
                total_passes += window_passes
                window_start, window_bytes, window_passes = now, 0, 0
        del toucher  # give the memory back before the next step allocates
        index += 1
        if index == len(steps):
            if once:
                break
            index = 0
    return total_passes


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="memknobs",
        description="Write every page of a buffer in a loop, its size following a pattern; "
        "print MB of pages touched per second.",
        epilog='Pattern: SIZE:DURATION,... e.g. "200M:30s,600M:60s", "0:10s,50%%:1m".',
    )
    parser.add_argument("--pattern", default="200M:60s", help="sizes over time (default 200M:60s)")
    parser.add_argument("--interval", type=float, default=1.0, metavar="S",
                        help="seconds between rate lines (default 1)")
    parser.add_argument("--once", action="store_true", help="run the pattern once, then exit")
    parser.add_argument("--duration", type=float, metavar="S",
                        help="stop after this many seconds whatever the pattern")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    args = parser.parse_args(argv)
    try:
        steps = parse_pattern(args.pattern)
    except PatternError as err:
        parser.error(str(err))
    try:
        run(steps, interval_s=args.interval, once=args.once, as_json=args.json,
            stop_after_s=args.duration)
    except MemoryError:
        print("memknobs: out of memory allocating the buffer", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
