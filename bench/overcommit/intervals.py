"""Ratios to a baseline with an interval over repetitions, and how to say them.

Every configuration runs once per repetition next to its baselines (the order
alternated between repetitions), so each repetition gives one ratio
``configuration / baseline``. The point figure is the median of those ratios;
the interval is

- a 95 % percentile bootstrap of that median when there are at least
  :data:`BOOTSTRAP_MIN_REPS` repetitions,
- the smallest and the largest ratio when there are fewer (a bootstrap of two or
  three values only says the same, less honestly).

A result whose interval holds 1.0 ("no change") is written "no difference".
One repetition has no interval at all: its ratio is shown as such and never
counts as a difference. Two are shown with their range but do not count either:
both ratios fall on one side of "no change" by chance one time in two.
Pure functions; the bootstrap's generator is seeded, so a report is reproducible.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence

BOOTSTRAP_MIN_REPS = 5
#: Fewer repetitions than this never make a difference (2: one time in two by chance).
MIN_REPS_TO_TELL = 3
BOOTSTRAP_RESAMPLES = 2000
SEED = 20


@dataclass(frozen=True)
class RatioInterval:
    """A ratio to a baseline: median over repetitions and its interval."""

    ratio: float
    low: float
    high: float
    reps: int
    method: str  # "bootstrap95", "min-max", or "single" (one repetition: no interval)

    @property
    def no_difference(self) -> bool:
        """The interval holds "no change" (or there are too few repetitions to tell)."""
        return self.reps < MIN_REPS_TO_TELL or self.low <= 1.0 <= self.high

    def as_dict(self) -> Dict[str, Any]:
        return {"ratio": round(self.ratio, 3), "low": round(self.low, 3),
                "high": round(self.high, 3), "reps": self.reps, "method": self.method,
                "no_difference": self.no_difference}


def ratio_interval(ratios: Sequence[float], seed: int = SEED,
                   resamples: int = BOOTSTRAP_RESAMPLES) -> Optional[RatioInterval]:
    """The median of per-repetition ratios with its interval (``None``: no ratios)."""
    values = [float(r) for r in ratios]
    if not values:
        return None
    point = statistics.median(values)
    if len(values) == 1:
        return RatioInterval(point, point, point, 1, "single")
    if len(values) < BOOTSTRAP_MIN_REPS:
        return RatioInterval(point, min(values), max(values), len(values), "min-max")
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values)))
                     for _ in range(resamples))
    low = medians[int(0.025 * (resamples - 1))]
    high = medians[round(0.975 * (resamples - 1))]
    return RatioInterval(point, low, high, len(values), "bootstrap95")


def paired_ratios(values: Dict[int, float], baseline: Dict[int, float]) -> Sequence[float]:
    """Per repetition ``value / baseline`` where both ran and the baseline is not 0."""
    return [values[rep] / baseline[rep] for rep in sorted(values)
            if baseline.get(rep)]


def _pct(ratio: float) -> str:
    """``+12 %``; ten times or more as ``16815x`` (a count against a baseline near 0)."""
    if ratio >= 10:
        return f"{ratio:.0f}x"
    return f"{(ratio - 1) * 100:+.0f} %"


def words(interval: Optional[Dict[str, Any]], median: bool = False) -> str:
    """``+12 % [+3 % .. +20 %]``, ``no difference (-4 % .. +18 %)``, ``+12 % (one
    repetition)``, or ``n/a``.

    ``median``: a "no difference" also gives the median ratio (``median +17 %, no
    difference (...)``), for a target judged on the median that the interval alone hides.
    """
    if not interval:
        return "n/a"
    if interval.get("reps", 2) < 2:
        return f"{_pct(interval['ratio'])} (one repetition)"
    span = f"{_pct(interval['low'])} .. {_pct(interval['high'])}"
    if interval.get("reps", MIN_REPS_TO_TELL) < MIN_REPS_TO_TELL:
        reps = interval["reps"]
        return f"{_pct(interval['ratio'])} ({reps} repetitions, too few to tell: {span})"
    if interval.get("no_difference"):
        if median:
            return f"median {_pct(interval['ratio'])}, no difference ({span})"
        return f"no difference ({span})"
    return f"{_pct(interval['ratio'])} [{span}]"
