"""Yields run against a fake kernel: a memory.reclaim that drops cache in a fake /proc."""

from __future__ import annotations

import errno
import logging
from pathlib import Path
from typing import List, Optional

import pytest
from agent_testkit import MIB_KIB, FakeKernel, ProcTree
from ebb.guest.collect import MemoryCollector
from ebb.guest.reclaim import Compactor, ReclaimSupport, probe_compaction
from ebb.guest.yielder import BACKGROUND_CREDIT_S, COMPACT_INTERVAL_S, Yielder
from ebb.guest.yielding import ReclaimLimits, YieldConfig
from ebb.protocol.messages import Yielded


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        self.now_s += 0.01  # every reading moves time on a little
        return self.now_s


LIMITS = ReclaimLimits()
SUPPORTED = ReclaimSupport("/fake/memory.reclaim", swappiness_arg=True)


def make_yielder(proc_tree: ProcTree, kernel: FakeKernel,
                 limits: ReclaimLimits = LIMITS,
                 support: ReclaimSupport = SUPPORTED,
                 clock: Optional[FakeClock] = None) -> Yielder:
    clock = clock or FakeClock()
    return Yielder(support, MemoryCollector(str(proc_tree.root), clock=clock), YieldConfig(),
                   limits, reclaimer=kernel, clock=clock)


def run(yielder: Yielder, started: List[Yielded]) -> Yielded:
    if started:
        return started[-1]
    for _ in range(100):
        done = yielder.step()
        if done is not None:
            return done
    raise AssertionError("the yield did not end in 100 steps")


def test_a_host_request_is_answered_with_what_came_back(
    proc_tree: ProcTree, caplog: pytest.LogCaptureFixture
) -> None:
    kernel = FakeKernel(proc_tree)
    yielder = make_yielder(proc_tree, kernel)
    assert yielder.capable
    caplog.set_level(logging.INFO, logger="ebb.guest.yielder")
    answer = run(yielder, yielder.request(80 * MIB_KIB, request_id=7, deadline_ms=60_000))
    assert answer.request_id == 7
    assert answer.stopped == "done"
    assert answer.asked_kib == 80 * MIB_KIB
    assert answer.freed_kib == 80 * MIB_KIB
    assert answer.cache_before_kib - answer.cache_after_kib == 80 * MIB_KIB
    assert kernel.written == [b"32768K swappiness=0", b"32768K swappiness=0",
                              b"16384K swappiness=0"]
    assert not yielder.busy
    # Logged with its sizes, for the guest's operator.
    assert "yield for host request 7: asked 80 MiB of 80 MiB in 3 step(s)" in caplog.text
    assert "(+80 MiB)" in caplog.text


def test_the_kernel_giving_up_ends_the_yield(proc_tree: ProcTree) -> None:
    kernel = FakeKernel(proc_tree, fail_with=errno.EAGAIN)
    yielder = make_yielder(proc_tree, kernel)
    answer = run(yielder, yielder.request(64 * MIB_KIB, request_id=1, deadline_ms=None))
    assert answer.stopped == "nothing_cold"
    assert "could not reclaim" in answer.reason
    assert len(kernel.written) == 1

    kernel.fail_with = errno.EBADF
    answer = run(yielder, yielder.request(64 * MIB_KIB, request_id=2, deadline_ms=None))
    assert answer.stopped == "error"


def test_turned_off_or_unsupported_answers_at_once_and_writes_nothing(
    proc_tree: ProcTree,
) -> None:
    kernel = FakeKernel(proc_tree)
    off = make_yielder(proc_tree, kernel, limits=ReclaimLimits(enabled=False))
    assert not off.capable
    (answer,) = off.request(64 * MIB_KIB, request_id=3, deadline_ms=1000)
    assert (answer.stopped, answer.request_id, answer.freed_kib) == ("disabled", 3, 0)
    assert "--no-yield" in answer.reason

    unsupported = ReclaimSupport(None, why_not="no memory.reclaim")
    old_kernel = make_yielder(proc_tree, kernel, support=unsupported)
    (answer,) = old_kernel.request(64 * MIB_KIB, request_id=4, deadline_ms=1000)
    assert answer.reason == "no memory.reclaim"
    old_kernel.set_pressure(3, "test")
    old_kernel.background(2000.0, 500 * MIB_KIB)
    assert kernel.written == []


def test_background_yields_wait_for_host_pressure(proc_tree: ProcTree) -> None:
    kernel = FakeKernel(proc_tree)
    yielder = make_yielder(proc_tree, kernel)
    yielder.background(2000.0, 64 * MIB_KIB)
    assert not yielder.busy and kernel.written == []
    yielder.set_pressure(1, "host swapping")
    yielder.background(2000.0, 64 * MIB_KIB)
    assert yielder.busy
    answer = run(yielder, [])
    assert answer.request_id is None
    assert answer.asked_kib == 64 * MIB_KIB
    # Not again before cache_hold_s.
    yielder.background(2010.0, 64 * MIB_KIB)
    assert not yielder.busy


def test_a_new_request_ends_the_yield_under_way(proc_tree: ProcTree) -> None:
    yielder = make_yielder(proc_tree, FakeKernel(proc_tree))
    assert yielder.request(200 * MIB_KIB, request_id=1, deadline_ms=None) == []
    assert yielder.step() is None  # one step done
    answers = yielder.request(32 * MIB_KIB, request_id=2, deadline_ms=None)
    assert [a.request_id for a in answers] == [1]
    assert answers[0].asked_kib == 32 * MIB_KIB
    assert run(yielder, []).request_id == 2


class FakeCompactor(Compactor):
    def __init__(self, fail_with: int = 0) -> None:
        super().__init__("/fake/compact_memory")
        self.calls = 0
        self.fail_with = fail_with

    def compact(self) -> None:
        self.calls += 1
        if self.fail_with:
            raise OSError(self.fail_with, "fake")


def test_a_yield_that_freed_enough_is_followed_by_one_compaction(
    proc_tree: ProcTree, caplog: pytest.LogCaptureFixture
) -> None:
    # Free page reporting returns whole 2 MiB blocks: what a yield frees reaches the
    # host only once the kernel has compacted the pages still in use.
    kernel = FakeKernel(proc_tree)
    compactor = FakeCompactor()
    clock = FakeClock()
    yielder = Yielder(SUPPORTED, MemoryCollector(str(proc_tree.root), clock=clock),
                      YieldConfig(), LIMITS, reclaimer=kernel, clock=clock, compactor=compactor)
    caplog.set_level(logging.INFO, logger="ebb.guest.yielder")
    run(yielder, yielder.request(80 * MIB_KIB, request_id=1, deadline_ms=60_000))
    assert compactor.calls == 1
    assert "compacted memory" in caplog.text
    # A second yield within the interval is not followed by another compaction...
    run(yielder, yielder.request(40 * MIB_KIB, request_id=2, deadline_ms=60_000))
    assert compactor.calls == 1
    # ...one after it is.
    clock.now_s += COMPACT_INTERVAL_S
    run(yielder, yielder.request(40 * MIB_KIB, request_id=3, deadline_ms=60_000))
    assert compactor.calls == 2
    # A small yield is not worth a compaction.
    clock.now_s += COMPACT_INTERVAL_S
    run(yielder, yielder.request(8 * MIB_KIB, request_id=4, deadline_ms=60_000))
    assert compactor.calls == 2


def test_a_failing_compaction_is_logged_once_and_the_yield_still_answers(
    proc_tree: ProcTree, caplog: pytest.LogCaptureFixture
) -> None:
    kernel = FakeKernel(proc_tree)
    compactor = FakeCompactor(fail_with=errno.EROFS)
    clock = FakeClock()
    yielder = Yielder(SUPPORTED, MemoryCollector(str(proc_tree.root), clock=clock),
                      YieldConfig(), LIMITS, reclaimer=kernel, clock=clock, compactor=compactor)
    answer = run(yielder, yielder.request(80 * MIB_KIB, request_id=1, deadline_ms=60_000))
    assert answer.freed_kib == 80 * MIB_KIB and answer.stopped == "done"
    assert "cannot compact memory" in caplog.text
    clock.now_s += COMPACT_INTERVAL_S
    run(yielder, yielder.request(80 * MIB_KIB, request_id=2, deadline_ms=60_000))
    assert compactor.calls == 1  # not tried again


def test_compaction_is_used_only_where_the_file_is_writable(tmp_path: Path) -> None:
    assert probe_compaction(str(tmp_path)) is None  # a kernel without compaction
    vm = tmp_path / "sys" / "vm"
    vm.mkdir(parents=True)
    (vm / "compact_memory").write_text("")
    found = probe_compaction(str(tmp_path))
    assert found is not None and found.path == str(vm / "compact_memory")


def _background_yield(yielder: Yielder, kib: int) -> Yielded:
    yielder.set_pressure(1, "host short")
    yielder.background(2000.0, kib)
    answer = run(yielder, [])
    assert answer.request_id is None
    return answer


def test_a_host_request_sized_before_a_background_yield_does_not_take_the_cache_twice(
    proc_tree: ProcTree, caplog: pytest.LogCaptureFixture
) -> None:
    kernel = FakeKernel(proc_tree)
    yielder = make_yielder(proc_tree, kernel)
    cache_before = proc_tree.meminfo["Inactive(file)"]
    _background_yield(yielder, 64 * MIB_KIB)
    caplog.set_level(logging.INFO, logger="ebb.guest.yielder")
    # The host asked for 96 MiB from the offer it had before that yield: 32 MiB more.
    answer = run(yielder, yielder.request(96 * MIB_KIB, request_id=9, deadline_ms=60_000))
    assert (answer.request_id, answer.stopped) == (9, "done")
    assert answer.asked_kib == 32 * MIB_KIB
    assert cache_before - proc_tree.meminfo["Inactive(file)"] == 96 * MIB_KIB
    assert "64 MiB of it were just yielded by a background yield" in caplog.text


def test_a_host_request_the_background_yield_already_served_is_answered_at_once(
    proc_tree: ProcTree,
) -> None:
    kernel = FakeKernel(proc_tree)
    yielder = make_yielder(proc_tree, kernel)
    _background_yield(yielder, 64 * MIB_KIB)
    written = len(kernel.written)
    (answer,) = yielder.request(48 * MIB_KIB, request_id=10, deadline_ms=60_000)
    assert (answer.request_id, answer.stopped, answer.asked_kib) == (10, "done", 0)
    assert "background yield took 65536 KiB" in answer.reason
    assert len(kernel.written) == written and not yielder.busy
    # The credit is used once: the next request is served in full.
    answer = run(yielder, yielder.request(16 * MIB_KIB, request_id=11, deadline_ms=60_000))
    assert answer.asked_kib == 16 * MIB_KIB


def test_a_background_yield_under_way_counts_against_the_request_that_ends_it(
    proc_tree: ProcTree,
) -> None:
    yielder = make_yielder(proc_tree, FakeKernel(proc_tree))
    yielder.set_pressure(1, "host short")
    yielder.background(2000.0, 200 * MIB_KIB)
    assert yielder.step() is None  # 32 MiB taken, then the host asks
    answers = yielder.request(40 * MIB_KIB, request_id=12, deadline_ms=None)
    assert [a.request_id for a in answers] == [None]
    answer = run(yielder, [])
    assert (answer.request_id, answer.asked_kib) == (12, 8 * MIB_KIB)


def test_a_request_long_after_a_background_yield_is_served_in_full(
    proc_tree: ProcTree,
) -> None:
    clock = FakeClock()
    yielder = make_yielder(proc_tree, FakeKernel(proc_tree), clock=clock)
    _background_yield(yielder, 32 * MIB_KIB)
    clock.now_s += BACKGROUND_CREDIT_S + 1
    answer = run(yielder, yielder.request(32 * MIB_KIB, request_id=13, deadline_ms=None))
    assert answer.asked_kib == 32 * MIB_KIB
