"""The tick trace: one JSON line per tick, bounded, rotating, readable after a crash."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict

import pytest
from ebb.host.observe.trace import TraceError, TraceWriter, read_trace, rotated_path


class _Record:
    """Stands in for engine.TickRecord: only ``to_json()`` matters to the writer."""

    def __init__(self, tick: int, padding: int = 0) -> None:
        self.tick = tick
        self.padding = padding

    def to_json(self) -> str:
        return json.dumps({"tick": self.tick, "ts": 1000.0 + self.tick, "pad": "x" * self.padding})


def test_each_tick_is_one_json_line_read_back_in_order(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    writer = TraceWriter(path)
    for tick in range(5):
        writer.on_tick(_Record(tick))
    writer.close()
    assert len(path.read_text().splitlines()) == 5
    assert [r["tick"] for r in read_trace(path)] == [0, 1, 2, 3, 4]


def test_plain_dict_records_are_written_too(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    writer = TraceWriter(path)
    writer.on_tick({"tick": 7, "decisions": []})
    writer.close()
    assert list(read_trace(path)) == [{"tick": 7, "decisions": []}]


def test_rotation_keeps_the_size_bounded_and_the_newest_ticks(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    writer = TraceWriter(path, max_bytes=1000, keep_files=2)
    for tick in range(100):
        writer.on_tick(_Record(tick, padding=80))  # ~120 bytes a line
    writer.close()
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["trace.jsonl", "trace.jsonl.1", "trace.jsonl.2"]
    assert all(f.stat().st_size <= 1000 for f in files)
    ticks = [r["tick"] for r in read_trace(path)]
    # Oldest first across the rotated set, contiguous, ending with the newest tick.
    assert ticks == list(range(ticks[0], 100))
    assert ticks[0] > 0  # the oldest ticks were dropped


def test_keep_files_zero_keeps_only_the_current_file(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    writer = TraceWriter(path, max_bytes=500, keep_files=0)
    for tick in range(30):
        writer.on_tick(_Record(tick, padding=80))
    writer.close()
    assert [f.name for f in tmp_path.iterdir()] == ["trace.jsonl"]
    assert [r["tick"] for r in read_trace(path)][-1] == 29


def test_a_restarted_daemon_appends_and_rotates_by_the_existing_size(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    first = TraceWriter(path, max_bytes=1000, keep_files=1)
    for tick in range(5):
        first.on_tick(_Record(tick, padding=80))
    first.close()
    second = TraceWriter(path, max_bytes=1000, keep_files=1)
    for tick in range(5, 12):
        second.on_tick(_Record(tick, padding=80))
    second.close()
    assert rotated_path(path, 1).exists()
    assert [r["tick"] for r in read_trace(path)] == list(range(12))


def test_torn_last_line_and_garbage_are_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "trace.jsonl"
    rotated_path(path, 1).write_text('{"tick": 1}\nnot json\n{"tick": 2}\n')
    path.write_text('{"tick": 3}\n{"tick": 4, "sta')  # crash mid-line
    with caplog.at_level(logging.WARNING):
        ticks = [r["tick"] for r in read_trace(path)]
    assert ticks == [1, 2, 3]
    assert "torn last line" in caplog.text
    assert "trace.jsonl.1:2" in caplog.text


def test_disk_errors_are_logged_once_and_writing_resumes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")  # a file where the trace's directory should be
    path = blocker / "trace.jsonl"
    writer = TraceWriter(path)
    with caplog.at_level(logging.WARNING):
        for tick in range(3):
            writer.on_tick(_Record(tick))  # must not raise
    assert writer.lines_dropped == 3
    assert caplog.text.count("cannot write") == 1
    blocker.unlink()
    writer.on_tick(_Record(3))
    writer.close()
    assert [r["tick"] for r in read_trace(path)] == [3]


def test_a_missing_trace_is_an_error_the_user_can_act_on(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match=r"no trace at .*\[trace\] path"):
        read_trace(tmp_path / "nothing.jsonl")


@pytest.mark.parametrize("kwargs", [{"max_bytes": 0}, {"keep_files": -1}])
def test_bad_limits_are_refused(tmp_path: Path, kwargs: Dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        TraceWriter(tmp_path / "t", **kwargs)


def test_trace_files_are_not_world_readable(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    writer = TraceWriter(path, max_bytes=300, keep_files=1)
    for tick in range(10):
        writer.on_tick(_Record(tick, padding=80))
    writer.close()
    for file in (path, rotated_path(path, 1)):
        assert file.stat().st_mode & 0o007 == 0


def test_a_line_torn_by_a_crash_does_not_spoil_the_next_run(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    first = TraceWriter(path)
    for tick in range(3):
        first.on_tick({"tick": tick, "state": {"host": {"samples": [{"x": tick}]},
                                               "guests": []}})
    first.close()
    with path.open("ab") as handle:
        handle.write(b'{"tick": 3, "sta')  # the daemon died mid-line
    second = TraceWriter(path)
    for tick in range(4, 6):
        second.on_tick({"tick": tick, "state": {"host": {"samples": [{"x": tick}]},
                                                "guests": []}})
    second.close()
    assert [r["tick"] for r in read_trace(path)] == [0, 1, 2, 4, 5]
