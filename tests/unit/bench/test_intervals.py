"""bench/overcommit/intervals.py: ratios to a baseline, their intervals, and the words."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[3] / "bench"
sys.path.insert(0, str(BENCH))

from overcommit.intervals import paired_ratios, ratio_interval, words  # noqa: E402


def test_fewer_than_five_repetitions_give_the_smallest_and_largest_ratio() -> None:
    interval = ratio_interval([1.10, 1.30, 1.20])
    assert interval is not None
    assert (interval.method, interval.low, interval.high) == ("min-max", 1.10, 1.30)
    assert interval.ratio == 1.20 and not interval.no_difference


def test_five_repetitions_get_a_bootstrap_interval_inside_the_range() -> None:
    ratios = [0.80, 0.95, 1.05, 1.10, 1.40]
    interval = ratio_interval(ratios)
    assert interval is not None and interval.method == "bootstrap95"
    assert min(ratios) <= interval.low <= interval.ratio <= interval.high <= max(ratios)
    # The same data gives the same interval: a report can be written again.
    assert ratio_interval(ratios) == interval


def test_an_interval_holding_no_change_is_written_no_difference() -> None:
    same = ratio_interval([0.96, 1.05, 1.18])
    assert same is not None and same.no_difference
    assert words(same.as_dict()) == "no difference (-4 % .. +18 %)"
    better = ratio_interval([0.40, 0.51, 0.62])
    assert better is not None
    assert words(better.as_dict()) == "-49 % [-60 % .. -38 %]"
    assert words(None) == "n/a"


def test_ratios_pair_repetitions_and_skip_a_baseline_of_zero() -> None:
    # Repetition 2 has no baseline run, repetition 3's baseline did nothing.
    assert paired_ratios({0: 10.0, 1: 30.0, 2: 5.0, 3: 4.0},
                         {0: 20.0, 1: 15.0, 3: 0.0}) == [0.5, 2.0]
    assert ratio_interval([]) is None


def test_one_repetition_has_no_interval_and_is_never_a_difference() -> None:
    single = ratio_interval([1.87])
    assert single is not None and single.method == "single" and single.no_difference
    assert words(single.as_dict()) == "+87 % (one repetition)"


def test_two_repetitions_are_too_few_to_call_a_difference() -> None:
    # Two ratios on one side of "no change" happen by chance one time in two: a
    # baseline added in 2 repetitions beside others in 5 must not make a headline.
    two = ratio_interval([0.82, 0.84])
    assert two is not None and two.method == "min-max" and two.no_difference
    assert words(two.as_dict()) == "-17 % (2 repetitions, too few to tell: -18 % .. -16 %)"
    three = ratio_interval([0.82, 0.84, 0.86])
    assert three is not None and not three.no_difference


def test_a_ratio_of_ten_times_or_more_is_written_as_times() -> None:
    # Against a baseline that swapped twice, "+1681420 %" reads as noise; "16815x" does not.
    many = ratio_interval([130.4, 16815.2, 38579.5])
    assert many is not None
    assert words(many.as_dict()) == "16815x [130x .. 38580x]"
    mixed = ratio_interval([0.5, 3.0, 12.0])
    assert mixed is not None
    assert words(mixed.as_dict()) == "no difference (-50 % .. 12x)"
