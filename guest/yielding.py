"""How much memory the guest can give back (offer) and how much it is short of (need).

Pure functions over memory samples: no I/O, no clock. The formulas are documented in
docs/agent.md ("Offer and need"); keep the two in step.

Offer (KiB the guest can give now without harm)::

    reserve   = reserve_kib if configured else max(64 MiB, 5 % of MemTotal)
    keep      = 2 * reserve + reserve / 2      # the need watermark, plus headroom
    clean     = max(0, Inactive(file) - Dirty - Writeback)       # clean, inactive file cache
    cheap     = MemFree + min(clean, cache_cap)                # cache_cap: see below
    offer     = max(0, min(cheap, MemAvailable) - keep)          # 0 while there is a need
    offer     = offer rounded down to a whole MiB

A guest that gives its whole offer keeps half a reserve above the point where it
would ask for memory, so giving an offer never by itself turns into a need.

Only cache older than ``cache_hold_s`` is offered, and none of it for ``cache_hold_s``
after the guest last re-read evicted pages (workingset refaults at
``refault_cache_per_s`` or more). Pages read once sit on the inactive list whether or
not they will be read again: a guest that has just read its working set looks like a
guest with a large idle cache. Cache that has stayed inactive for minutes is cold; a
cache that refaults is in use. The agent keeps the clock and passes the cap
(``cache_cap_kib``: the clean cache less what Cached grew by over the last
``cache_hold_s``, since new pages enter the inactive list; 0 while refaulting).

Need (KiB wanted, with urgency) from two consecutive samples ``elapsed_s`` apart::

    rates     = delta(pgmajfault), delta(pswpin), delta(pswpout),
                delta(workingset_refault), each / elapsed_s
    triggers  = MemAvailable < 2 * reserve                      low   (< reserve: high,
                                                                      < reserve / 2: critical)
                PSI some avg10 >= 10 %                          low   (>= 25 %: high,
                                                                      >= 50 %: critical)
                PSI full avg10 >= 10 %                          critical (>= 2 %: high)
                major faults >= 200/s                           low   (>= 1000/s: high)
                swap-in >= 256 pages/s                          low   (>= 2560/s: high)
                swap-out >= 256 pages/s                         low   (>= 2560/s: high)
                refaults >= 256 pages/s                         low   (>= 2560/s: high)
    urgency   = the highest level of any trigger
    kib       = max(2 * reserve - MemAvailable,                  # back to the low watermark
                    reserve * {low: 1, high: 2, critical: 4}[urgency])   # when stalling
    kib       = kib rounded up to a whole MiB
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass
from typing import Deque, List, Optional, Tuple

from .collect import MemorySample

MIB_KIB = 1024
URGENCIES: Tuple[str, ...] = ("low", "high", "critical")
_STEP_FACTOR = {"low": 1, "high": 2, "critical": 4}


@dataclass(frozen=True)
class YieldConfig:
    """Thresholds of the offer/need formulas (see the module docstring).

    ``reserve_kib`` of ``None`` means the default ``max(reserve_min_kib,
    reserve_fraction * MemTotal)``.
    """

    reserve_kib: Optional[int] = None
    reserve_min_kib: int = 64 * MIB_KIB
    reserve_fraction: float = 0.05
    psi_some_low_pct: float = 10.0
    psi_some_high_pct: float = 25.0
    psi_some_critical_pct: float = 50.0
    psi_full_high_pct: float = 2.0
    psi_full_critical_pct: float = 10.0
    majfault_low_per_s: float = 200.0
    majfault_high_per_s: float = 1000.0
    swapin_low_pages_per_s: float = 256.0
    swapin_high_pages_per_s: float = 2560.0
    swapout_low_pages_per_s: float = 256.0
    swapout_high_pages_per_s: float = 2560.0
    refault_low_per_s: float = 256.0
    refault_high_per_s: float = 2560.0
    refault_cache_per_s: float = 32.0
    cache_hold_s: float = 120.0

    def __post_init__(self) -> None:
        if self.reserve_kib is not None and self.reserve_kib < 0:
            raise ValueError(f"reserve_kib must be >= 0, got {self.reserve_kib}")
        if not 0.0 <= self.reserve_fraction < 1.0:
            raise ValueError(f"reserve_fraction must be in [0, 1), got {self.reserve_fraction}")
        if self.cache_hold_s < 0:
            raise ValueError(f"cache_hold_s must be >= 0, got {self.cache_hold_s}")


@dataclass(frozen=True)
class NeedEstimate:
    """Memory the guest is short of: ``kib`` wanted, ``urgency`` and a short reason."""

    kib: int
    urgency: str
    reason: str


@dataclass(frozen=True)
class Assessment:
    """What the guest can offer and what it needs, from one pair of samples."""

    offer_kib: int
    need: Optional[NeedEstimate]


def reserve_kib(mem_total_kib: int, config: YieldConfig) -> int:
    """Memory the guest always keeps for itself and never offers."""
    if config.reserve_kib is not None:
        return config.reserve_kib
    return max(config.reserve_min_kib, int(mem_total_kib * config.reserve_fraction))


def clean_cache_kib(sample: MemorySample) -> int:
    """Clean, inactive file cache: what the kernel drops first and cheapest.

    Shmem/tmpfs pages sit on the anon LRU lists, so Inactive(file) never includes them;
    dirty and under-writeback pages must be written before they can go, so they are
    taken out (all of them, although some are on the active list: conservative).
    """
    return max(0, sample.inactive_file_kib - sample.dirty_kib - sample.writeback_kib)


def need_watermark_kib(reserve: int) -> int:
    """MemAvailable below this is a need (twice the reserve)."""
    return 2 * reserve


def offer_floor_kib(reserve: int) -> int:
    """MemAvailable an offer never goes below: the need watermark and half a reserve.

    Offering down to the reserve alone would leave a guest that gave its whole offer
    below the need watermark, asking for part of it back at once.
    """
    return need_watermark_kib(reserve) + reserve // 2


def compute_offer_kib(sample: MemorySample, config: YieldConfig,
                      cache_cap_kib: Optional[int] = None) -> int:
    """KiB the guest can give back now without harm (0 when it has nothing to spare).

    ``cache_cap_kib`` caps the clean cache offered (``None``: no cap): the cache that
    has been there long enough to be cold, 0 while the guest re-reads evicted pages.
    """
    clean_kib = clean_cache_kib(sample)
    if cache_cap_kib is not None:
        clean_kib = min(clean_kib, max(0, cache_cap_kib))
    cheap_kib = sample.mem_free_kib + clean_kib
    keep_kib = offer_floor_kib(reserve_kib(sample.mem_total_kib, config))
    spare_kib = min(cheap_kib, sample.mem_available_kib) - keep_kib
    if spare_kib <= 0:
        return 0
    return spare_kib - spare_kib % MIB_KIB


class RecentMinimum:
    """The smallest value seen over the last ``window_s`` seconds (a sliding minimum).

    Values are added with their time; each is kept only while it could still be the
    minimum, so the deque stays short for a value that mostly grows or holds.
    ``full`` tells whether values span the whole window yet.
    """

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._first_s: Optional[float] = None
        self._values: Deque[Tuple[float, int]] = deque()

    def add(self, now_s: float, value: int) -> None:
        if self._first_s is None:
            self._first_s = now_s
        while self._values and self._values[-1][1] >= value:
            self._values.pop()
        self._values.append((now_s, value))
        while self._values[0][0] < now_s - self.window_s:
            self._values.popleft()

    def minimum(self) -> Optional[int]:
        return self._values[0][1] if self._values else None

    def full(self, now_s: float) -> bool:
        return self._first_s is not None and now_s - self._first_s >= self.window_s


def _rate_per_s(previous: int, current: int, elapsed_s: float) -> float:
    # A counter that went backwards (a reset, or a fixture rewritten) is no activity.
    if elapsed_s <= 0 or current < previous:
        return 0.0
    return (current - previous) / elapsed_s


def cache_refaulting(previous: Optional[MemorySample], current: MemorySample,
                     elapsed_s: float, config: YieldConfig) -> bool:
    """Whether the guest re-read evicted pages fast enough that its cache is in use.

    Each refault is a page the kernel evicted and had to read back: the cache was
    smaller than what the guest uses, so none of it is spare.
    """
    if previous is None:
        return False
    rate = _rate_per_s(previous.workingset_refault, current.workingset_refault, elapsed_s)
    return rate >= config.refault_cache_per_s


class ColdCache:
    """How much clean page cache is cold enough to offer or yield: the cache-hold state.

    Fed every sample in order, :meth:`cap_kib` answers the clean inactive cache less
    what Cached grew by over the last ``hold_s`` (its smallest value then; 0 until
    it has watched that long, since new pages enter the inactive list), and 0 for
    ``hold_s`` after the guest re-read evicted pages (:func:`cache_refaulting`).
    Times are the samples' own; no clock is read.
    """

    def __init__(self, hold_s: float) -> None:
        self.hold_s = hold_s
        #: Until when (the samples' clock, s) the page cache is not offered: it refaulted.
        self.held_until = float("-inf")
        self._cached = RecentMinimum(hold_s)

    def held(self, now_s: float) -> bool:
        """Whether the page cache is kept out of offers at ``now_s`` (it refaulted lately)."""
        return now_s < self.held_until

    def cap_kib(self, previous: Optional[MemorySample], sample: MemorySample,
                elapsed_s: float, config: YieldConfig) -> int:
        """Add ``sample``; the clean cache that may be offered (``cache_cap_kib`` of assess)."""
        now_s = sample.monotonic_s
        self._cached.add(now_s, sample.cached_kib)
        if cache_refaulting(previous, sample, elapsed_s, config):
            self.held_until = now_s + self.hold_s
        if self.held(now_s) or not self._cached.full(now_s):
            return 0
        # New pages enter the inactive list: what Cached grew by in the window is young.
        young_kib = sample.cached_kib - (self._cached.minimum() or 0)
        return max(0, clean_cache_kib(sample) - young_kib)


def _level(value: float, low: float, high: float, critical: Optional[float] = None) -> int:
    """0 = below every threshold, 1 = low, 2 = high, 3 = critical."""
    if critical is not None and value >= critical:
        return 3
    if value >= high:
        return 2
    if value >= low:
        return 1
    return 0


def compute_need(
    previous: Optional[MemorySample],
    current: MemorySample,
    elapsed_s: float,
    config: YieldConfig,
) -> Optional[NeedEstimate]:
    """The memory ``current`` shows the guest is short of, or ``None``.

    ``previous`` is the sample taken ``elapsed_s`` seconds before (``None`` for the
    first one: rates are then taken as zero and only MemAvailable and PSI count).
    """
    reserve = reserve_kib(current.mem_total_kib, config)
    low_watermark_kib = need_watermark_kib(reserve)
    level = 0
    reasons: List[str] = []

    available = current.mem_available_kib
    if available < low_watermark_kib:
        avail_level = 3 if available < reserve // 2 else 2 if available < reserve else 1
        level = max(level, avail_level)
        reasons.append(f"mem_available_kib={available}<{low_watermark_kib}")

    stalling = 0
    if current.psi_some_avg10 is not None:
        some_level = _level(
            current.psi_some_avg10,
            config.psi_some_low_pct,
            config.psi_some_high_pct,
            config.psi_some_critical_pct,
        )
        if some_level:
            stalling = max(stalling, some_level)
            reasons.append(f"psi_some_avg10={current.psi_some_avg10:.1f}%")
    if current.psi_full_avg10 is not None:
        full_level = _level(
            current.psi_full_avg10,
            config.psi_full_high_pct,
            config.psi_full_high_pct,
            config.psi_full_critical_pct,
        )
        if full_level:
            stalling = max(stalling, full_level)
            reasons.append(f"psi_full_avg10={current.psi_full_avg10:.1f}%")
    if previous is not None:
        # Rates of counters that show the guest short of memory. Swap-out counts: a
        # guest making room by pushing memory it will want back out to disk is short
        # although MemAvailable, refilled by that reclaim, may look fine.
        rates = (
            ("pgmajfault", previous.pgmajfault, current.pgmajfault,
             config.majfault_low_per_s, config.majfault_high_per_s),
            ("pswpin", previous.pswpin, current.pswpin,
             config.swapin_low_pages_per_s, config.swapin_high_pages_per_s),
            ("pswpout", previous.pswpout, current.pswpout,
             config.swapout_low_pages_per_s, config.swapout_high_pages_per_s),
            # Evicted pages read back: file cache (or swapped memory) the guest uses.
            ("workingset_refault", previous.workingset_refault, current.workingset_refault,
             config.refault_low_per_s, config.refault_high_per_s),
        )
        for name, before, after, low, high in rates:
            rate = _rate_per_s(before, after, elapsed_s)
            rate_level = _level(rate, low, high)
            if rate_level:
                stalling = max(stalling, rate_level)
                reasons.append(f"{name}={rate:.0f}/s")

    level = max(level, stalling)
    if level == 0:
        return None
    urgency = URGENCIES[level - 1]
    kib = max(0, low_watermark_kib - available)
    if stalling:
        kib = max(kib, reserve * _STEP_FACTOR[urgency])
    kib = -(-kib // MIB_KIB) * MIB_KIB
    return NeedEstimate(kib=max(kib, MIB_KIB), urgency=urgency, reason=", ".join(reasons))


def assess(
    previous: Optional[MemorySample],
    current: MemorySample,
    elapsed_s: float,
    config: YieldConfig,
    cache_cap_kib: Optional[int] = None,
) -> Assessment:
    """Offer and need together: a guest that needs memory offers none."""
    need = compute_need(previous, current, elapsed_s, config)
    offer_kib = 0 if need is not None else compute_offer_kib(current, config, cache_cap_kib)
    return Assessment(offer_kib=offer_kib, need=need)


def offer_changed(last_sent_kib: Optional[int], offer_kib: int, mem_total_kib: int) -> bool:
    """Whether an offer differs enough from the last one sent to be worth a message.

    Any change to or from zero counts; otherwise a move of at least
    max(16 MiB, 1 % of MemTotal), so the host is not told of every page.
    """
    if last_sent_kib is None:
        return True
    if (last_sent_kib == 0) != (offer_kib == 0):
        return True
    return abs(offer_kib - last_sent_kib) >= max(16 * MIB_KIB, mem_total_kib // 100)


def need_changed(
    last_sent: Optional[NeedEstimate], need: Optional[NeedEstimate], mem_total_kib: int
) -> bool:
    """Whether a need appeared, went away, changed urgency or moved by a meaningful amount."""
    if last_sent is None or need is None:
        return (last_sent is None) != (need is None)
    if last_sent.urgency != need.urgency:
        return True
    return abs(need.kib - last_sent.kib) >= max(16 * MIB_KIB, mem_total_kib // 100)


# --- yield: giving memory back by reclaim in the guest ------------------------------
#
# A yield asks the guest's own kernel to reclaim (cgroup v2 memory.reclaim, written
# by ebb.guest.reclaim); the pages it frees go back to the host by free page
# reporting while the guest keeps its memory size. These functions decide how much
# to ask for next and when to stop, from samples and times the caller passes in.
# Documented in docs/agent.md ("Yield"); keep the two in step.

#: Why a yield ended: the ``stopped`` tokens of the protocol's ``yielded`` message.
STOP_DONE = "done"
STOP_RESERVE = "reserve"
STOP_REFAULTS = "refaults"
STOP_PSI = "psi"
STOP_RATE_LIMIT = "rate_limit"
STOP_NOTHING_COLD = "nothing_cold"
STOP_ERROR = "error"
STOP_DISABLED = "disabled"

#: Page size assumed when comparing refaults (pages) with amounts asked (KiB).
PAGE_KIB = 4
#: The per-minute limit is counted over this window.
RATE_WINDOW_S = 60.0


@dataclass(frozen=True)
class ReclaimLimits:
    """How far and how fast the agent reclaims in its guest (docs/agent.md, "Yield").

    ``per_minute_kib`` of ``None`` means ``max(256 MiB, MemTotal / 4)`` per minute.
    """

    #: Off (``--no-yield``): nothing is written, ``yield`` is left out of the hello.
    enabled: bool = True
    #: Also reclaim anonymous memory (``--yield-anon``; only with swap).
    anon: bool = False
    #: Largest amount asked of the kernel in one write.
    step_kib: int = 32 * MIB_KIB
    per_minute_kib: Optional[int] = None
    #: Refaults since the yield began that stop it: the guest reads back what was
    #: reclaimed, so the cache was in use. At least this many pages, and at least
    #: this fraction of the pages asked so far (a few refaults are the agent itself
    #: and the guest's daemons touching pages evicted long before).
    refault_stop_pages: int = 256
    refault_stop_fraction: float = 0.1
    #: PSI memory "some" stall time during the yield, as a fraction of its duration,
    #: that stops it; or a rise of PSI some avg10 by this many points.
    psi_stall_stop_fraction: float = 0.10
    psi_rise_stop_pct: float = 5.0
    #: A step whose file cache dropped by less than this fraction of what it asked
    #: shows the cache stopped dropping: what is left is not cheap to reclaim.
    min_progress_fraction: float = 0.25
    #: A yield never runs longer than this (nor past 80 % of the host's deadline).
    max_duration_s: float = 5.0
    #: Background yields: not for less cold cache than this ...
    background_min_kib: int = 16 * MIB_KIB

    def __post_init__(self) -> None:
        if self.step_kib < MIB_KIB:
            raise ValueError(f"step_kib must be at least 1 MiB (1024), got {self.step_kib}")
        if self.per_minute_kib is not None and self.per_minute_kib < 0:
            raise ValueError(f"per_minute_kib must be >= 0, got {self.per_minute_kib}")
        if self.max_duration_s <= 0:
            raise ValueError(f"max_duration_s must be > 0, got {self.max_duration_s}")


def per_minute_limit_kib(mem_total_kib: int, limits: ReclaimLimits) -> int:
    """Most KiB the agent asks the kernel to reclaim in any 60 s."""
    if limits.per_minute_kib is not None:
        return limits.per_minute_kib
    return max(256 * MIB_KIB, mem_total_kib // 4)


def file_cache_kib(sample: MemorySample) -> int:
    """Page cache on the file LRU lists (Active(file) + Inactive(file)): what a yield takes."""
    return sample.active_file_kib + sample.inactive_file_kib


def reclaimable_kib(sample: MemorySample, reserve: int, anon: bool) -> int:
    """What a yield may still ask the kernel for, keeping ``reserve`` KiB of cache.

    Clean file cache (the file LRU less dirty and under-writeback pages) above the
    reserve; with ``anon``, also anonymous memory that fits in free swap.
    """
    clean = max(0, file_cache_kib(sample) - sample.dirty_kib - sample.writeback_kib)
    kib = max(0, clean - reserve)
    if anon:
        kib += max(0, min(sample.anon_pages_kib, sample.swap_free_kib))
    return kib


class ReclaimWindow:
    """What was asked of the kernel over the last minute, for the per-minute limit."""

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self.window_s = window_s
        self._asked: Deque[Tuple[float, int]] = deque()

    def add(self, now_s: float, kib: int) -> None:
        self._asked.append((now_s, kib))

    def used_kib(self, now_s: float) -> int:
        while self._asked and self._asked[0][0] <= now_s - self.window_s:
            self._asked.popleft()
        return sum(kib for _, kib in self._asked)

    def allowance_kib(self, now_s: float, limit_kib: int) -> int:
        return max(0, limit_kib - self.used_kib(now_s))


@dataclass(frozen=True)
class YieldProgress:
    """One yield under way: what it was asked for and what it has done so far."""

    target_kib: int
    started_s: float
    #: When the yield must have ended (its deadline share, or ``max_duration_s``).
    end_s: float
    start: MemorySample
    asked_kib: int = 0
    steps: int = 0
    #: The last step: what it asked, the file cache before it, how long it took.
    last_step_kib: int = 0
    last_cache_kib: int = 0
    last_step_s: float = 0.0


@dataclass(frozen=True)
class StepDecision:
    """The next step of a yield: ``kib`` to ask for, or ``stop`` (a STOP_* token)."""

    kib: int
    stop: Optional[str] = None
    reason: str = ""


def start_yield(target_kib: int, now_s: float, sample: MemorySample, limits: ReclaimLimits,
                deadline_s: Optional[float] = None) -> YieldProgress:
    """A new yield of up to ``target_kib``, ending by 80 % of ``deadline_s`` at the latest.

    The margin leaves time to measure and answer before the host stops waiting.
    """
    duration_s = limits.max_duration_s
    if deadline_s is not None:
        duration_s = min(duration_s, 0.8 * deadline_s)
    return YieldProgress(target_kib=max(0, target_kib), started_s=now_s, end_s=now_s + duration_s,
                         start=sample, last_cache_kib=file_cache_kib(sample))


def after_step(progress: YieldProgress, kib: int, cache_before_kib: int,
               step_s: float) -> YieldProgress:
    """``progress`` once a step that asked ``kib`` has been written."""
    return dataclasses.replace(progress, asked_kib=progress.asked_kib + kib,
                               steps=progress.steps + 1, last_step_kib=kib,
                               last_cache_kib=cache_before_kib, last_step_s=max(0.0, step_s))


def next_step(progress: YieldProgress, current: MemorySample, now_s: float,
              config: YieldConfig, limits: ReclaimLimits, allowance_kib: int) -> StepDecision:
    """How much to ask the kernel for next, or why to stop.

    ``current`` is a sample taken after the last step; ``allowance_kib`` is what the
    per-minute limit still allows. Checked in order: done, the guest reading back
    what was reclaimed (refaults) or stalling (PSI), swap-out without ``anon``, a
    cache that stopped dropping, time, the reserve, the rate limit. The yield is done
    when it has asked for ``target_kib`` or the file cache has fallen by as much.
    """
    start = progress.start
    # The kernel often reclaims more than asked: what the cache already lost counts.
    dropped_kib = file_cache_kib(start) - file_cache_kib(current)
    left_kib = progress.target_kib - max(progress.asked_kib, dropped_kib)
    if left_kib < MIB_KIB:
        if progress.steps == 0:
            return StepDecision(0, STOP_NOTHING_COLD, "nothing asked")
        return StepDecision(0, STOP_DONE, f"asked the kernel for {progress.asked_kib} KiB, "
                            f"the page cache fell by {max(0, dropped_kib)} KiB")
    refaults = current.workingset_refault - start.workingset_refault
    asked_pages = progress.asked_kib // PAGE_KIB
    if refaults >= max(limits.refault_stop_pages, limits.refault_stop_fraction * asked_pages):
        return StepDecision(0, STOP_REFAULTS, f"{refaults} pages read back during the yield")
    elapsed_s = now_s - progress.started_s
    psi = _psi_stop(start, current, elapsed_s, limits)
    if psi:
        return StepDecision(0, STOP_PSI, psi)
    swapped = current.pswpout - start.pswpout
    if not limits.anon and swapped > 0:
        return StepDecision(0, STOP_NOTHING_COLD,
                            f"the kernel swapped out {swapped} pages: no clean cache left to take")
    if progress.steps and not limits.anon:
        step_drop_kib = progress.last_cache_kib - file_cache_kib(current)
        if step_drop_kib < limits.min_progress_fraction * progress.last_step_kib:
            return StepDecision(0, STOP_NOTHING_COLD,
                                f"cache dropped {max(0, step_drop_kib)} KiB for "
                                f"{progress.last_step_kib} KiB asked: it stopped dropping")
    if now_s + progress.last_step_s >= progress.end_s:
        return StepDecision(0, STOP_RATE_LIMIT,
                            f"out of time after {elapsed_s:.2f} s (deadline or "
                            f"{limits.max_duration_s:g} s limit)")
    reserve = reserve_kib(current.mem_total_kib, config)
    room_kib = reclaimable_kib(current, reserve, limits.anon)
    if room_kib < MIB_KIB:
        return StepDecision(0, STOP_RESERVE if progress.steps else STOP_NOTHING_COLD,
                            f"{file_cache_kib(current)} KiB of cache left, reserve {reserve} KiB")
    if allowance_kib < MIB_KIB:
        return StepDecision(0, STOP_RATE_LIMIT, "per-minute limit reached")
    if room_kib < 2 * limits.step_kib:
        # The kernel reclaims in batches and often takes half as much again as asked
        # (measured on Linux 6.1): near the reserve, ask for half of what is left.
        room_kib = max(MIB_KIB, room_kib // 2)
    kib = min(limits.step_kib, left_kib, room_kib, allowance_kib)
    return StepDecision(kib - kib % MIB_KIB)


def _psi_stop(start: MemorySample, current: MemorySample, elapsed_s: float,
              limits: ReclaimLimits) -> str:
    """Why PSI says stop, or "" (the guest stalls on memory during the yield)."""
    if (start.psi_some_total_us is not None and current.psi_some_total_us is not None
            and elapsed_s > 0):
        stall_s = (current.psi_some_total_us - start.psi_some_total_us) / 1e6
        if stall_s >= limits.psi_stall_stop_fraction * elapsed_s:
            return f"memory stalls {stall_s:.3f} s in {elapsed_s:.3f} s"
    if start.psi_some_avg10 is not None and current.psi_some_avg10 is not None:
        rise = current.psi_some_avg10 - start.psi_some_avg10
        if rise >= limits.psi_rise_stop_pct:
            return f"psi_some_avg10 rose {rise:.1f} points"
    return ""


def background_yield_kib(pressure_level: int, cold_kib: int, now_s: float,
                         last_background_s: Optional[float], config: YieldConfig,
                         limits: ReclaimLimits) -> int:
    """KiB of cold cache to yield by itself now, or 0.

    Only while the host says it is short (``pressure_level`` >= 1), only cache the
    agent counts as cold (clean, older than ``cache_hold_s``, none while refaulting),
    at least ``background_min_kib`` of it, and at most once per ``cache_hold_s``: what
    the kernel moves to the inactive list after a yield must then stay unused that
    long before it counts as cold.
    """
    if not limits.enabled or pressure_level < 1 or cold_kib < limits.background_min_kib:
        return 0
    if last_background_s is not None and now_s - last_background_s < config.cache_hold_s:
        return 0
    return cold_kib - cold_kib % MIB_KIB
