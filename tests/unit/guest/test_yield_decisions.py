"""The yield's decisions: how much to reclaim next and when to stop (docs/agent.md, "Yield").

Pure functions over samples and times: a fake clock is just numbers.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from agent_testkit import MIB_KIB, ProcTree
from ebb.guest.collect import MemoryCollector, MemorySample
from ebb.guest.yielding import (
    STOP_DONE,
    STOP_NOTHING_COLD,
    STOP_PSI,
    STOP_RATE_LIMIT,
    STOP_REFAULTS,
    STOP_RESERVE,
    ReclaimLimits,
    ReclaimWindow,
    YieldConfig,
    after_step,
    background_yield_kib,
    file_cache_kib,
    next_step,
    per_minute_limit_kib,
    reclaimable_kib,
    start_yield,
)

CONFIG = YieldConfig()  # 4 GiB guest: reserve 204.8 MiB
LIMITS = ReclaimLimits()
PLENTY = 10**9
GIB = 1024 * MIB_KIB


@pytest.fixture
def sample(proc_tree: ProcTree) -> MemorySample:
    # 4 GiB guest, 2 GiB free, 1 GiB of file cache (512 MiB active, 512 inactive).
    return MemoryCollector(str(proc_tree.root)).sample()


def changed(sample: MemorySample, **changes: Any) -> MemorySample:
    return dataclasses.replace(sample, **changes)


def reclaimed(sample: MemorySample, kib: int) -> MemorySample:
    """``sample`` after the kernel dropped ``kib`` of inactive cache."""
    return changed(sample, inactive_file_kib=sample.inactive_file_kib - kib,
                   mem_free_kib=sample.mem_free_kib + kib)


def test_a_yield_goes_in_steps_until_it_has_asked_for_the_target(sample: MemorySample) -> None:
    progress = start_yield(80 * MIB_KIB, 0.0, sample, LIMITS)
    asked = []
    current = sample
    for now_s in (0.1, 0.2, 0.3, 0.4):
        decision = next_step(progress, current, now_s, CONFIG, LIMITS, PLENTY)
        if decision.stop is not None:
            break
        asked.append(decision.kib)
        progress = after_step(progress, decision.kib, file_cache_kib(current), 0.05)
        current = reclaimed(current, decision.kib)
    assert asked == [32 * MIB_KIB, 32 * MIB_KIB, 16 * MIB_KIB]
    assert decision.stop == STOP_DONE


def test_what_the_kernel_took_beyond_the_ask_counts(sample: MemorySample) -> None:
    # Linux 6.1 in the lab: 32 MiB asked, about 48 MiB of cache gone.
    progress = start_yield(100 * MIB_KIB, 0.0, sample, LIMITS)
    current, asked = sample, []
    for now_s in (0.1, 0.2, 0.3, 0.4):
        decision = next_step(progress, current, now_s, CONFIG, LIMITS, PLENTY)
        if decision.stop is not None:
            break
        asked.append(decision.kib // MIB_KIB)
        progress = after_step(progress, decision.kib, file_cache_kib(current), 0.05)
        current = reclaimed(current, decision.kib * 3 // 2)
    assert asked == [32, 32, 4]  # not a fourth full step once 96 MiB were gone
    assert decision.stop == STOP_DONE
    assert file_cache_kib(sample) - file_cache_kib(current) < 110 * MIB_KIB


def test_never_below_the_reserve_of_cache(sample: MemorySample) -> None:
    reserve = 204 * MIB_KIB + 819  # 5 % of 4 GiB
    # 21 MiB of clean cache above the reserve is left. The kernel may take more than
    # asked, so the yield closes in on the reserve by halves ...
    small = changed(sample, active_file_kib=0, inactive_file_kib=reserve + 21 * MIB_KIB,
                    dirty_kib=0)
    progress = start_yield(GIB, 0.0, small, LIMITS)
    current, asked = small, []
    for now_s in range(1, 20):
        decision = next_step(progress, current, now_s / 10, CONFIG, LIMITS, PLENTY)
        if decision.stop is not None:
            break
        asked.append(decision.kib // MIB_KIB)
        progress = after_step(progress, decision.kib, file_cache_kib(current), 0.05)
        current = reclaimed(current, decision.kib)
    assert asked[:3] == [10, 5, 3] and sum(asked) <= 21
    # ... and stops there, with the reserve still in the cache.
    assert decision.stop == STOP_RESERVE
    assert file_cache_kib(current) >= reserve


def test_nothing_above_the_reserve_is_nothing_cold(sample: MemorySample) -> None:
    bare = changed(sample, active_file_kib=0, inactive_file_kib=100 * MIB_KIB)
    decision = next_step(start_yield(GIB, 0.0, bare, LIMITS), bare, 0.0, CONFIG, LIMITS, PLENTY)
    assert decision.stop == STOP_NOTHING_COLD


def test_dirty_cache_is_not_reclaimable_and_anon_only_with_swap(sample: MemorySample) -> None:
    reserve = 100 * MIB_KIB
    dirty = changed(sample, active_file_kib=0, inactive_file_kib=300 * MIB_KIB,
                    dirty_kib=150 * MIB_KIB, writeback_kib=50 * MIB_KIB)
    assert reclaimable_kib(dirty, reserve, anon=False) == 0
    no_swap = changed(dirty, swap_free_kib=0)
    assert reclaimable_kib(no_swap, reserve, anon=True) == 0
    with_swap = changed(dirty, swap_free_kib=64 * MIB_KIB, anon_pages_kib=512 * MIB_KIB)
    assert reclaimable_kib(with_swap, reserve, anon=True) == 64 * MIB_KIB


def test_the_per_minute_limit_caps_and_then_stops(sample: MemorySample) -> None:
    window = ReclaimWindow()
    limit = per_minute_limit_kib(sample.mem_total_kib, LIMITS)
    assert limit == GIB  # a quarter of 4 GiB
    window.add(0.0, limit - 8 * MIB_KIB)
    progress = start_yield(GIB, 1.0, sample, LIMITS)
    decision = next_step(progress, sample, 1.0, CONFIG, LIMITS, window.allowance_kib(1.0, limit))
    assert decision.kib == 8 * MIB_KIB
    window.add(1.0, decision.kib)
    assert next_step(progress, sample, 2.0, CONFIG, LIMITS,
                     window.allowance_kib(2.0, limit)).stop == STOP_RATE_LIMIT
    # A minute after the big yield, its share is allowed again.
    assert window.allowance_kib(60.5, limit) == limit - 8 * MIB_KIB
    assert window.allowance_kib(61.0, limit) == limit
    assert per_minute_limit_kib(sample.mem_total_kib, ReclaimLimits(per_minute_kib=0)) == 0


def test_refaults_during_the_yield_stop_it(sample: MemorySample) -> None:
    progress = after_step(start_yield(GIB, 0.0, sample, LIMITS), 32 * MIB_KIB,
                          file_cache_kib(sample), 0.05)
    after = reclaimed(sample, 32 * MIB_KIB)
    # A few refaults (the agent's own pages, daemons) are not the working set ...
    few = changed(after, workingset_refault=sample.workingset_refault + 300)
    assert next_step(progress, few, 0.1, CONFIG, LIMITS, PLENTY).stop is None
    # ... a tenth of what was asked, read back, is.
    many = changed(after, workingset_refault=sample.workingset_refault + 820)
    decision = next_step(progress, many, 0.1, CONFIG, LIMITS, PLENTY)
    assert decision.stop == STOP_REFAULTS
    assert "820 pages" in decision.reason


def test_memory_stalls_during_the_yield_stop_it(sample: MemorySample) -> None:
    progress = start_yield(GIB, 0.0, sample, LIMITS)
    assert sample.psi_some_total_us is not None
    stalled = changed(sample, psi_some_total_us=sample.psi_some_total_us + 60_000)
    assert next_step(progress, stalled, 0.5, CONFIG, LIMITS, PLENTY).stop == STOP_PSI
    calm = changed(sample, psi_some_total_us=sample.psi_some_total_us + 10_000)
    assert next_step(progress, calm, 0.5, CONFIG, LIMITS, PLENTY).stop is None
    rising = changed(sample, psi_some_avg10=6.0)
    assert next_step(progress, rising, 0.5, CONFIG, LIMITS, PLENTY).stop == STOP_PSI
    no_psi = changed(sample, psi_some_avg10=None, psi_some_total_us=None)
    assert next_step(start_yield(GIB, 0.0, no_psi, LIMITS), no_psi, 0.5, CONFIG, LIMITS,
                     PLENTY).stop is None


def test_swapping_stops_a_page_cache_yield_but_not_an_anon_one(sample: MemorySample) -> None:
    swapped = changed(sample, pswpout=sample.pswpout + 10)
    decision = next_step(start_yield(GIB, 0.0, sample, LIMITS), swapped, 0.1, CONFIG, LIMITS,
                         PLENTY)
    assert decision.stop == STOP_NOTHING_COLD
    assert "swapped out 10 pages" in decision.reason
    anon = ReclaimLimits(anon=True)
    assert next_step(start_yield(GIB, 0.0, sample, anon), swapped, 0.1, CONFIG, anon,
                     PLENTY).stop is None


def test_a_cache_that_stops_dropping_ends_the_yield(sample: MemorySample) -> None:
    progress = after_step(start_yield(GIB, 0.0, sample, LIMITS), 32 * MIB_KIB,
                          file_cache_kib(sample), 0.05)
    barely = reclaimed(sample, 4 * MIB_KIB)  # asked 32 MiB, 4 MiB came off
    assert next_step(progress, barely, 0.1, CONFIG, LIMITS, PLENTY).stop == STOP_NOTHING_COLD
    # The kernel often takes more than asked: that is progress.
    more = reclaimed(sample, 45 * MIB_KIB)
    assert next_step(progress, more, 0.1, CONFIG, LIMITS, PLENTY).stop is None


def test_a_yield_ends_in_time_for_the_hosts_deadline(sample: MemorySample) -> None:
    progress = start_yield(GIB, 100.0, sample, LIMITS, deadline_s=2.0)
    assert progress.end_s == pytest.approx(101.6)
    progress = after_step(progress, 32 * MIB_KIB, file_cache_kib(sample), 0.3)
    after = reclaimed(sample, 32 * MIB_KIB)
    assert next_step(progress, after, 101.2, CONFIG, LIMITS, PLENTY).stop is None
    # The next step would take about as long as the last: it would end too late.
    late = next_step(progress, after, 101.4, CONFIG, LIMITS, PLENTY)
    assert late.stop == STOP_RATE_LIMIT
    # Without a deadline, max_duration_s bounds it.
    assert start_yield(GIB, 0.0, sample, LIMITS).end_s == LIMITS.max_duration_s


def test_background_yields_only_under_host_pressure(sample: MemorySample) -> None:
    cold = 300 * MIB_KIB + 5
    assert background_yield_kib(0, cold, 500.0, None, CONFIG, LIMITS) == 0
    assert background_yield_kib(1, cold, 500.0, None, CONFIG, LIMITS) == 300 * MIB_KIB
    assert background_yield_kib(3, cold, 500.0, None, CONFIG, LIMITS) == 300 * MIB_KIB
    # Not again until cache_hold_s has passed: what is left must stay unused that long.
    assert background_yield_kib(1, cold, 500.0 + CONFIG.cache_hold_s - 1, 500.0, CONFIG,
                                LIMITS) == 0
    assert background_yield_kib(1, cold, 500.0 + CONFIG.cache_hold_s, 500.0, CONFIG,
                                LIMITS) == 300 * MIB_KIB
    # Too little cold cache, or yield turned off: nothing.
    assert background_yield_kib(1, 8 * MIB_KIB, 500.0, None, CONFIG, LIMITS) == 0
    off = ReclaimLimits(enabled=False)
    assert background_yield_kib(2, cold, 500.0, None, CONFIG, off) == 0


def test_a_zero_request_asks_nothing(sample: MemorySample) -> None:
    decision = next_step(start_yield(0, 0.0, sample, LIMITS), sample, 0.0, CONFIG, LIMITS, PLENTY)
    assert (decision.kib, decision.stop) == (0, STOP_NOTHING_COLD)


def test_limits_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="step_kib"):
        ReclaimLimits(step_kib=10)
    with pytest.raises(ValueError, match="per_minute_kib"):
        ReclaimLimits(per_minute_kib=-1)
