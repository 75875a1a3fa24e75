"""Fixtures of the observability tests: a recorded (synthetic) trace."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

import pytest
from synthetic_trace import synthesise_records, write_policy


@pytest.fixture()
def recorded_trace(tmp_path: Path) -> Dict[str, Path]:
    """A trace file made with the 20 % policy, that policy, and the (empty) ebbd.toml."""
    policy = write_policy(tmp_path, 0.20)
    trace = tmp_path / "trace.jsonl"
    with trace.open("w") as handle:
        for record in synthesise_records(policy):
            handle.write(json.dumps(record) + "\n")
    config = tmp_path / "ebbd.toml"
    config.write_text("# all defaults\n")
    return {"trace": trace, "policy": policy, "config": config}
