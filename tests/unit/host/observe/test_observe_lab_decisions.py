"""Every decision the lab trace replays to, figure for figure, against a committed file.

data/lab-pressure/expected-decisions.json holds, per replayed tick, the
decisions ebbd's planning (host/tick.py: policy, yield stage, governor) makes
on the lab trace with the recording policy and limits: vm, target, kind, rule,
reason and the figures used (``inputs``). The replay runs the same function as
ebbd, so a change anywhere in the tick's planning that changes a decision, a
reason or a figure fails here. When such a change is meant, regenerate the file
and review its diff:

    .venv/bin/python tests/unit/host/observe/test_observe_lab_decisions.py --write
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, List

from ebb.host.config import load_config
from ebb.host.governor import Governor
from ebb.host.observe.replay import Replayer, load_runner
from ebb.host.observe.trace import read_trace
from ebb.host.settings import governor_config

LAB = Path(__file__).with_name("data") / "lab-pressure"
EXPECTED = LAB / "expected-decisions.json"


def replayed_decisions() -> List[Dict[str, Any]]:
    """One entry per trace line: its tick and the replayed decisions (JSON-ready)."""
    limits = governor_config(load_config(LAB / "ebbd.toml"))
    replayer = Replayer(load_runner(LAB / "policy"), Governor(limits))
    ticks = []
    for record in read_trace(LAB / "trace.jsonl"):
        plan = replayer.feed(record)
        decisions = [] if plan is None else [d.to_json() for d in plan.decisions]
        ticks.append({"tick": record.get("tick"), "decisions": decisions})
    # Through JSON, as the file holds them (enums become their strings).
    result: List[Dict[str, Any]] = json.loads(json.dumps(ticks))
    return result


def test_the_lab_trace_replays_to_the_committed_decisions() -> None:
    expected = json.loads(EXPECTED.read_text())
    actual = replayed_decisions()
    assert len(actual) == len(expected) == 78
    for want, got in zip(expected, actual):
        assert got == want, f"tick {want['tick']} decides differently"


def test_the_committed_decisions_are_not_trivial() -> None:
    # The file must hold what makes the comparison worth having: every kind.
    expected = json.loads(EXPECTED.read_text())
    kinds = {d["kind"] for t in expected for d in t["decisions"]}
    assert {"inflate", "deflate", "hold"} <= kinds
    assert all(d["reason"] and d["inputs"] for t in expected for d in t["decisions"])


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    EXPECTED.write_text(json.dumps(replayed_decisions(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {EXPECTED}")
