"""bench/eval_ebb.py: a run that never got the host leaves other runs alone."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, List

import pytest

BENCH = Path(__file__).resolve().parents[3] / "bench"
sys.path.insert(0, str(BENCH))

import eval_ebb  # noqa: E402
from overcommit.hostctl import HostMemoryError  # noqa: E402


class _NeverHeld:
    """The host-memory lock, held by another run the whole time."""

    def __init__(self, error: BaseException, **_: Any) -> None:
        self.error = error

    def __enter__(self) -> None:
        raise self.error

    def __exit__(self, *exc: object) -> None:
        raise AssertionError("never entered")


@pytest.mark.parametrize("error", [KeyboardInterrupt(), HostMemoryError("lock held 1800 s")])
def test_a_run_waiting_for_the_host_removes_no_guests(
        error: BaseException, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    removed: List[str] = []
    monkeypatch.setattr(eval_ebb.os, "geteuid", lambda: 0)
    monkeypatch.setattr(eval_ebb, "_mem_total_gib", lambda: 24.0)
    monkeypatch.setattr(eval_ebb, "HostMemory", lambda **kw: _NeverHeld(error, **kw))
    monkeypatch.setattr(eval_ebb.harness, "_down", removed.append)
    (tmp_path / "evaluation.json").write_text("{}")

    code = eval_ebb.main(["--short", "--results", str(tmp_path), "--workdir", str(tmp_path)])

    assert code in (2, 130)
    assert removed == [], "a run that never held the host removed guests of the run that does"
    assert (tmp_path / "evaluation.json").read_text() == "{}", "earlier results overwritten"
