"""``ebbctl yield`` measures what came back once the VM's QEMU RSS stops falling.

Free page reporting hands freed pages to the host in batches, seconds apart, as
they form large enough free blocks: a fixed wait after the agent's answer
undercounts a yield whose pages are still being reported.
"""

from __future__ import annotations

from typing import Iterator, List

from ebb.host.channels import YieldHandle
from ebb.host.channels.state import ReceivedYield
from ebb.host.yielding import ManualYields
from ebb.protocol import Yielded

MIB = 1024


def answered_handle(now: float) -> YieldHandle:
    handle = YieldHandle("vm1", request_id=1, asked_kib=160 * MIB, deadline_ms=15000,
                         sent_mono=now)
    handle.resolve(ReceivedYield(
        mono=now, wall=0.0, requested=True, host_level=0,
        yielded=Yielded(asked_kib=160 * MIB, freed_kib=150 * MIB, cache_before_kib=200 * MIB,
                        cache_after_kib=50 * MIB, duration_ms=100, stopped="done",
                        reason="", request_id=1),
    ))
    return handle


def poll_until_done(rss_by_poll: Iterator[int], step_s: float = 0.5) -> dict:
    yields = ManualYields()
    now = 100.0
    handle = answered_handle(now)
    record = yields.start("vm1", 160 * MIB, now, rss_before_kib=600 * MIB,
                          request=lambda vm, kib, ms: handle)
    last: List[int] = [600 * MIB]

    def rss_now() -> int:
        last[0] = next(rss_by_poll, last[0])
        return last[0]

    for _ in range(200):
        result = record.poll(now, rss_now)
        if result["state"] == "done":
            return result
        now += step_s
    raise AssertionError("the yield never finished")


def test_pages_reported_over_several_seconds_are_all_counted() -> None:
    # 10 MiB every half second for 7 s after the answer: 140 MiB in all.
    falling = iter([600 * MIB - 10 * MIB * i for i in range(15)])
    result = poll_until_done(falling)
    assert result["returned_kib"] == 140 * MIB
    assert result["error"] is None


def test_a_yield_that_returns_nothing_still_ends_and_says_so() -> None:
    result = poll_until_done(iter([]))
    assert result["returned_kib"] == 0
    assert result["error"] is not None and "gave nothing back" in result["error"]
    assert result["elapsed_s"] <= 16


def test_a_drop_that_never_stops_is_cut_at_the_longest_wait() -> None:
    forever = (600 * MIB - MIB * i for i in range(10**6))
    result = poll_until_done(forever)
    assert result["elapsed_s"] <= 16
