"""The offer and need formulas (docs/agent.md, "Offer and need")."""

from __future__ import annotations

import dataclasses

from agent_testkit import GIB_KIB, MIB_KIB, ProcTree
from ebb.guest.collect import MemoryCollector, MemorySample
from ebb.guest.yielding import (
    RecentMinimum,
    YieldConfig,
    assess,
    cache_refaulting,
    compute_need,
    compute_offer_kib,
    need_changed,
    offer_changed,
    offer_floor_kib,
    reserve_kib,
)

CONFIG = YieldConfig()


def _sample(proc_tree: ProcTree, **changes: object) -> MemorySample:
    sample = MemoryCollector(str(proc_tree.root)).sample()
    return dataclasses.replace(sample, **changes)  # type: ignore[arg-type]


def test_reserve_defaults_to_64_mib_or_5_percent() -> None:
    assert reserve_kib(512 * MIB_KIB, CONFIG) == 64 * MIB_KIB
    assert reserve_kib(16 * GIB_KIB, CONFIG) == int(16 * GIB_KIB * 0.05)
    assert reserve_kib(16 * GIB_KIB, YieldConfig(reserve_kib=300 * MIB_KIB)) == 300 * MIB_KIB


def test_offer_is_free_plus_clean_inactive_cache_above_the_floor(proc_tree: ProcTree) -> None:
    sample = _sample(proc_tree)  # 2 GiB free, 512 MiB inactive file, 1 MiB dirty
    reserve = reserve_kib(sample.mem_total_kib, CONFIG)  # 4 GiB * 5 % = 204.8 MiB
    # The floor is the need watermark (2 x reserve) and half a reserve of headroom.
    expected = 2 * GIB_KIB + 512 * MIB_KIB - MIB_KIB - (2 * reserve + reserve // 2)
    assert compute_offer_kib(sample, CONFIG) == expected - expected % MIB_KIB


def test_giving_the_whole_offer_leaves_no_need(proc_tree: ProcTree) -> None:
    # A 512 MiB guest with 400 MiB available, all of it free or clean cache.
    reserve = 64 * MIB_KIB
    before = _sample(proc_tree, mem_total_kib=512 * MIB_KIB, mem_free_kib=300 * MIB_KIB,
                     inactive_file_kib=100 * MIB_KIB, dirty_kib=0, writeback_kib=0,
                     mem_available_kib=400 * MIB_KIB)
    offer = compute_offer_kib(before, CONFIG)
    assert offer == 400 * MIB_KIB - 2 * reserve - reserve // 2
    # The balloon takes the whole offer, and the guest's cache churns by a few MiB.
    after = dataclasses.replace(before, mem_free_kib=before.mem_free_kib - offer,
                                mem_available_kib=before.mem_available_kib - offer - 8 * MIB_KIB)
    assert after.mem_available_kib >= offer_floor_kib(reserve) - 8 * MIB_KIB
    assert compute_need(before, after, 1.0, CONFIG) is None
    assert compute_offer_kib(after, CONFIG) == 0


def test_dirty_pages_and_shmem_are_not_offered(proc_tree: ProcTree) -> None:
    clean = compute_offer_kib(_sample(proc_tree), CONFIG)
    dirty = compute_offer_kib(_sample(proc_tree, dirty_kib=300 * MIB_KIB), CONFIG)
    assert clean - dirty == 299 * MIB_KIB
    # Shmem is in Cached but not in Inactive(file): more of it changes nothing.
    assert compute_offer_kib(_sample(proc_tree, shmem_kib=900 * MIB_KIB), CONFIG) == clean


def test_offer_never_exceeds_what_the_kernel_calls_available(proc_tree: ProcTree) -> None:
    sample = _sample(proc_tree, mem_available_kib=1 * GIB_KIB)
    reserve = reserve_kib(sample.mem_total_kib, CONFIG)
    assert compute_offer_kib(sample, CONFIG) == GIB_KIB - offer_floor_kib(reserve) - (
        (GIB_KIB - offer_floor_kib(reserve)) % MIB_KIB)


def test_nothing_to_offer_below_the_reserve(proc_tree: ProcTree) -> None:
    sample = _sample(
        proc_tree, mem_free_kib=50 * MIB_KIB, inactive_file_kib=10 * MIB_KIB,
        mem_available_kib=300 * MIB_KIB,
    )
    assert compute_offer_kib(sample, CONFIG) == 0


def test_nothing_to_offer_just_above_the_need_watermark(proc_tree: ProcTree) -> None:
    # Above twice the reserve (no need) but within the headroom: no offer either.
    sample = _sample(proc_tree, mem_total_kib=512 * MIB_KIB, mem_free_kib=150 * MIB_KIB,
                     mem_available_kib=150 * MIB_KIB)
    assert compute_need(None, sample, 0.0, CONFIG) is None
    assert compute_offer_kib(sample, CONFIG) == 0


def test_a_healthy_guest_needs_nothing(proc_tree: ProcTree) -> None:
    sample = _sample(proc_tree)
    assert compute_need(sample, sample, 1.0, CONFIG) is None


def test_low_available_memory_asks_back_to_the_low_watermark(proc_tree: ProcTree) -> None:
    reserve = reserve_kib(4 * GIB_KIB, CONFIG)
    low = _sample(proc_tree, mem_available_kib=reserve + 10 * MIB_KIB)
    need = compute_need(None, low, 0.0, CONFIG)
    assert need is not None
    assert need.urgency == "low"
    assert need.kib >= 2 * reserve - low.mem_available_kib
    assert need.kib % MIB_KIB == 0
    assert "mem_available_kib" in need.reason

    lower = _sample(proc_tree, mem_available_kib=reserve - MIB_KIB)
    need_lower = compute_need(None, lower, 0.0, CONFIG)
    assert need_lower is not None and need_lower.urgency == "high"
    assert need_lower.kib > need.kib
    critical = compute_need(None, _sample(proc_tree, mem_available_kib=reserve // 3), 0.0, CONFIG)
    assert critical is not None and critical.urgency == "critical"


def test_pressure_stalls_raise_a_need_graded_by_urgency(proc_tree: ProcTree) -> None:
    base = _sample(proc_tree)
    levels = {}
    for some, full in ((12.0, 0.0), (30.0, 0.0), (12.0, 15.0)):
        need = compute_need(base, _sample(proc_tree, psi_some_avg10=some, psi_full_avg10=full),
                            1.0, CONFIG)
        assert need is not None
        levels[(some, full)] = need
    assert levels[(12.0, 0.0)].urgency == "low"
    assert levels[(30.0, 0.0)].urgency == "high"
    assert levels[(12.0, 15.0)].urgency == "critical"
    reserve = reserve_kib(base.mem_total_kib, CONFIG)
    assert levels[(12.0, 0.0)].kib == -(-reserve // MIB_KIB) * MIB_KIB
    assert levels[(12.0, 15.0)].kib > levels[(30.0, 0.0)].kib > levels[(12.0, 0.0)].kib
    assert "psi_some_avg10=30.0%" in levels[(30.0, 0.0)].reason


def test_major_fault_and_swap_in_rates_use_elapsed_time(proc_tree: ProcTree) -> None:
    before = _sample(proc_tree)
    after = dataclasses.replace(before, pgmajfault=before.pgmajfault + 300)
    # 300 faults in 1 s is over the 200/s threshold; in 2 s it is not.
    fast = compute_need(before, after, 1.0, CONFIG)
    assert fast is not None and "pgmajfault=300/s" in fast.reason
    assert compute_need(before, after, 2.0, CONFIG) is None

    swapping = dataclasses.replace(before, pswpin=before.pswpin + 3000)
    need = compute_need(before, swapping, 1.0, CONFIG)
    assert need is not None and need.urgency == "high" and "pswpin" in need.reason


def test_swapping_out_is_a_need_although_memory_looks_available(proc_tree: ProcTree) -> None:
    before = _sample(proc_tree)
    # 150 pages in 0.5 s is 300/s: the guest is pushing memory out to make room.
    after = dataclasses.replace(before, pswpout=before.pswpout + 150)
    need = compute_need(before, after, 0.5, CONFIG)
    assert need is not None and need.urgency == "low" and "pswpout=300/s" in need.reason
    assert need.kib == reserve_kib(before.mem_total_kib, CONFIG) // MIB_KIB * MIB_KIB + (
        MIB_KIB if reserve_kib(before.mem_total_kib, CONFIG) % MIB_KIB else 0)
    assert assess(before, after, 0.5, CONFIG).offer_kib == 0
    heavy = dataclasses.replace(before, pswpout=before.pswpout + 3000)
    need_heavy = compute_need(before, heavy, 1.0, CONFIG)
    assert need_heavy is not None and need_heavy.urgency == "high"
    # A trickle (100 pages/s) is not.
    assert compute_need(before, dataclasses.replace(before, pswpout=before.pswpout + 100),
                        1.0, CONFIG) is None


def test_counter_reset_is_not_activity(proc_tree: ProcTree) -> None:
    before = _sample(proc_tree, pgmajfault=10**9)
    assert compute_need(before, _sample(proc_tree), 1.0, CONFIG) is None


def test_a_guest_in_need_offers_nothing(proc_tree: ProcTree) -> None:
    stalled = _sample(proc_tree, psi_some_avg10=40.0)
    assessment = assess(None, stalled, 0.0, CONFIG)
    assert assessment.need is not None
    assert assessment.offer_kib == 0
    assert assess(None, _sample(proc_tree), 0.0, CONFIG).offer_kib > 0


def test_small_changes_are_not_worth_a_message() -> None:
    total = 4 * GIB_KIB
    assert offer_changed(None, 0, total)
    assert offer_changed(100 * MIB_KIB, 0, total)
    assert not offer_changed(100 * MIB_KIB, 110 * MIB_KIB, total)
    assert offer_changed(100 * MIB_KIB, 150 * MIB_KIB, total)
    assert not need_changed(None, None, total)


def test_refaults_are_a_need(proc_tree: ProcTree) -> None:
    before = _sample(proc_tree)
    slow = compute_need(before, dataclasses.replace(
        before, workingset_refault=before.workingset_refault + 200), 1.0, CONFIG)
    low = compute_need(before, dataclasses.replace(
        before, workingset_refault=before.workingset_refault + 300), 1.0, CONFIG)
    high = compute_need(before, dataclasses.replace(
        before, workingset_refault=before.workingset_refault + 3000), 1.0, CONFIG)
    assert slow is None
    assert low is not None and low.urgency == "low"
    assert "workingset_refault=300/s" in low.reason
    assert high is not None and high.urgency == "high"
    # Asked in reserve steps, as for swapping: refaults do not say how much is missing.
    reserve = reserve_kib(before.mem_total_kib, CONFIG)
    assert low.kib == -(-reserve // MIB_KIB) * MIB_KIB


def test_the_cache_offered_is_capped(proc_tree: ProcTree) -> None:
    sample = _sample(proc_tree)  # 2 GiB free, 512 MiB inactive file, 1 MiB dirty
    uncapped = compute_offer_kib(sample, CONFIG)
    held = compute_offer_kib(sample, CONFIG, cache_cap_kib=0)
    assert uncapped - held == 511 * MIB_KIB
    assert compute_offer_kib(sample, CONFIG, cache_cap_kib=100 * MIB_KIB) == held + 100 * MIB_KIB
    assert compute_offer_kib(sample, CONFIG, cache_cap_kib=4 * GIB_KIB) == uncapped
    assert assess(None, sample, 0.0, CONFIG, cache_cap_kib=0).offer_kib == held


def test_recent_minimum_slides_over_its_window() -> None:
    window = RecentMinimum(10.0)
    assert window.minimum() is None and not window.full(0.0)
    for t, value in ((0.0, 25), (5.0, 300), (9.0, 320)):
        window.add(t, value)
    assert window.minimum() == 25 and not window.full(9.0)
    window.add(10.0, 310)
    assert window.minimum() == 25 and window.full(10.0)
    # The early small value leaves the window: the cache that stayed is 300.
    window.add(12.0, 330)
    assert window.minimum() == 300
    window.add(16.0, 200)
    assert window.minimum() == 200


def test_cache_refaulting_needs_a_rate_over_the_threshold(proc_tree: ProcTree) -> None:
    before = _sample(proc_tree)
    after = dataclasses.replace(before, workingset_refault=before.workingset_refault + 40)
    assert cache_refaulting(before, after, 1.0, CONFIG)
    assert not cache_refaulting(before, after, 2.0, CONFIG)  # 20 pages/s
    assert not cache_refaulting(None, after, 1.0, CONFIG)
    # A counter reset is no activity.
    assert not cache_refaulting(after, before, 1.0, CONFIG)
