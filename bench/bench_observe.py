#!/usr/bin/env python3
"""What observability costs ebbd per tick, and how fast replay and plot read a night.

Builds tick records shaped like the ones ebbd wrote in the lab (the samples,
views and decisions of tests/unit/host/observe/data/lab-pressure, cloned to N
guests with values moving every tick) and prints, for 1, 8 and 32 guests:

- trace: milliseconds to write one tick (TraceWriter.on_tick) and bytes per
  tick on disk, and the hours that the default 6 x 64 MiB hold at a 2 s interval;
- read: milliseconds per record to read the trace back (histories rebuilt);
- metrics: milliseconds for the tick counters (on_tick) and for one scrape
  (exposition text of every gauge) with N guests in the status;
- replay: ticks per second through the packaged cooperative policy.

    .venv/bin/python bench/bench_observe.py [--ticks 600]
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Deque, Dict, List

from ebb.host.app import governor_config
from ebb.host.config import config_from_dict, packaged_policy_dir
from ebb.host.observe.metrics import EbbMetrics
from ebb.host.observe.replay import replay_trace
from ebb.host.observe.trace import DEFAULT_KEEP_FILES, DEFAULT_MAX_BYTES, TraceWriter, read_trace

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE_TRACE = ROOT / "tests/unit/host/observe/data/lab-pressure/trace.jsonl"
STATUS_SAMPLE = ROOT / "tests/unit/host/observe/status_sample.json"
HISTORY = 10
INTERVAL_S = 2.0


def make_records(guests: int, ticks: int) -> List[Dict[str, Any]]:
    template = list(read_trace(TEMPLATE_TRACE))[-1]
    host_sample = template["state"]["host"]["samples"][-1]
    guest_sample = template["state"]["guests"][0]["samples"][-1]
    view = template["views"][0]
    decision = template["decisions"][0]
    host_history: Deque[Dict[str, Any]] = collections.deque(maxlen=HISTORY)
    histories = [collections.deque(maxlen=HISTORY) for _ in range(guests)]
    records = []
    for tick in range(ticks):
        host = dict(host_sample, mem_free=host_sample["mem_free"] + tick * 4096,
                    swap_out=tick * 10)
        host_history.append(host)
        state_guests, views, decisions = [], [], []
        for index in range(guests):
            name = f"vm{index:03d}"
            sample = dict(guest_sample, balloon_cur=guest_sample["balloon_cur"] - tick,
                          mem_unused=guest_sample.get("mem_unused", 0) or 0 + index,
                          major_fault=tick * index, swap_in=tick)
            histories[index].append(sample)
            state_guests.append({"props": {"name": name, "uuid": f"uuid-{index}"},
                                 "samples": list(histories[index])})
            views.append(dict(view, name=name, balloon_cur_kib=sample["balloon_cur"]))
            decisions.append(dict(copy.deepcopy(decision), vm=name))
        records.append({
            "ts": 1_764_000_000.0 + tick * INTERVAL_S, "tick": tick + 1, "duration_ms": 3.0,
            "state": {"host": {"props": {"name": "host"}, "samples": list(host_history)},
                      "guests": state_guests},
            "views": views, "controls": {"host": {"ksm_run": 1}, "guests": {}},
            "decisions": decisions, "applied": [], "policy_error": None,
            "paused": False, "dry_run": False, "reasons": [],
        })
    return records


def status_for(guests: int) -> Dict[str, Any]:
    status = json.loads(STATUS_SAMPLE.read_text())
    row = status["vms"][0]
    status["vms"] = [dict(row, name=f"vm{index:03d}") for index in range(guests)]
    return status


def bench(guests: int, ticks: int, workdir: Path) -> Dict[str, float]:
    records = make_records(guests, ticks)
    path = workdir / f"trace-{guests}.jsonl"
    writer = TraceWriter(path, max_bytes=1 << 30, keep_files=1)
    started = time.perf_counter()
    for record in records:
        writer.on_tick(record)
    write_ms = (time.perf_counter() - started) * 1000 / ticks
    writer.close()
    bytes_per_tick = path.stat().st_size / ticks
    started = time.perf_counter()
    count = sum(1 for _ in read_trace(path))
    read_ms = (time.perf_counter() - started) * 1000 / count

    status = status_for(guests)
    metrics = EbbMetrics(lambda: status)
    started = time.perf_counter()
    for record in records:
        metrics.on_tick(record)
    tick_metrics_ms = (time.perf_counter() - started) * 1000 / ticks
    started = time.perf_counter()
    scrapes = 50
    for _ in range(scrapes):
        metrics.exposition()
    scrape_ms = (time.perf_counter() - started) * 1000 / scrapes

    limits = governor_config(config_from_dict({}))
    started = time.perf_counter()
    report = replay_trace(path, packaged_policy_dir("cooperative"), governor_config=limits)
    replay_tps = report.ticks / (time.perf_counter() - started)
    night_h = DEFAULT_MAX_BYTES * (DEFAULT_KEEP_FILES + 1) / bytes_per_tick * INTERVAL_S / 3600
    return {"write_ms": write_ms, "bytes": bytes_per_tick, "hours": night_h,
            "read_ms": read_ms, "tick_metrics_ms": tick_metrics_ms, "scrape_ms": scrape_ms,
            "replay_tps": replay_tps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=600)
    args = parser.parse_args()
    print(f"{'guests':>6} {'write ms':>9} {'bytes/tick':>11} {'hours kept':>11} "
          f"{'read ms':>8} {'metrics ms':>11} {'scrape ms':>10} {'replay t/s':>11}")
    with tempfile.TemporaryDirectory() as tmp:
        for guests in (1, 8, 32):
            r = bench(guests, args.ticks, Path(tmp))
            print(f"{guests:>6} {r['write_ms']:>9.3f} {r['bytes']:>11.0f} {r['hours']:>11.1f} "
                  f"{r['read_ms']:>8.3f} {r['tick_metrics_ms']:>11.4f} {r['scrape_ms']:>10.2f} "
                  f"{r['replay_tps']:>11.0f}")
    print(f"(hours kept: default [trace] max_bytes x (keep_files + 1) at a "
          f"{INTERVAL_S:g} s interval)")


if __name__ == "__main__":
    main()
