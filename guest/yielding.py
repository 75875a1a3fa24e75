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
