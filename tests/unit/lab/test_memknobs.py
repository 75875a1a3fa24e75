"""memknobs: the pattern a user writes, and that every page really gets written."""

from __future__ import annotations

import io
import json

import pytest
from ebb.lab.memknobs import PAGE_BYTES, PatternError, Step, Toucher, parse_pattern, run

MIB = 1024 * 1024


def test_pattern_of_sizes_and_durations() -> None:
    assert parse_pattern("200M:30s,600M:1m") == [Step(200 * MIB, 30.0), Step(600 * MIB, 60.0)]
    assert parse_pattern("1G:2h") == [Step(1024 * MIB, 7200.0)]
    assert parse_pattern("0:10,64:5s") == [Step(0, 10.0), Step(64 * MIB, 5.0)]
    assert parse_pattern("512K:1s") == [Step(512 * 1024, 1.0)]


def test_percentage_of_memtotal() -> None:
    assert parse_pattern("50%:1m", mem_total=1000 * MIB) == [Step(500 * MIB, 60.0)]


@pytest.mark.parametrize("bad, where", [
    ("200M", "step 1"),
    ("200M:30s,lots:1m", "step 2"),
    ("200M:0s", "more than 0"),
    ("200X:1s", "size"),
    ("", "empty"),
    ("150%:1s", "100%"),
])
def test_bad_patterns_say_which_step(bad: str, where: str) -> None:
    with pytest.raises(PatternError, match=where):
        parse_pattern(bad, mem_total=MIB)


def test_every_page_is_written_each_pass() -> None:
    toucher = Toucher(10 * PAGE_BYTES + 1)
    assert toucher.touch() == 11 * PAGE_BYTES
    assert all(toucher.buf[i] == 1 for i in range(0, len(toucher.buf), PAGE_BYTES))
    toucher.touch()
    assert all(toucher.buf[i] == 2 for i in range(0, len(toucher.buf), PAGE_BYTES))


def test_rate_lines_are_printed() -> None:
    out = io.StringIO()
    run([Step(MIB, 10.0)], interval_s=0.05, as_json=True, out=out, stop_after_s=0.3)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines, "no rate line in 0.3 s"
    assert lines[0]["size_mib"] == 1
    assert lines[0]["mb_per_s"] > 0
