"""The record of one tick: what the engine hands its observers (trace, metrics).

A trace line is :meth:`TickRecord.to_json`; docs/observability.md describes
its fields, and ``ebbctl replay`` reads them back (``host/observe/replay.py``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ebb.host.governor import Decision
from ebb.host.kinds import CHANGED_OUTCOMES


@dataclass
class TickRecord:
    """Everything one tick saw and did (contracts.md "Engine -> observers").

    ``state`` has the shape of ``ebbctl policy eval --state`` STATE.json, so a
    trace line can be replayed through a policy.
    """

    ts: float
    tick: int
    duration_ms: float
    state: dict[str, Any]
    views: list[dict[str, Any]]
    controls: dict[str, Any]
    decisions: list[dict[str, Any]]
    applied: list[dict[str, Any]]
    policy_error: str | None = None
    paused: bool = False
    dry_run: bool = False
    reasons: list[str] = field(default_factory=list)
    #: The governor's clock for this tick (``time.monotonic``): what replay times
    #: rollback windows and back-offs by, immune to wall-clock steps.
    mono: float | None = None
    #: The policy's ``SetVar`` values kept after this tick:
    #: ``{"host": {...}, "guests": {VM: {...}}}`` (JSON-friendly).
    variables: dict[str, Any] | None = None
    #: Yield requests sent and yield results judged this tick (the journal's
    #: ``yield-request`` / ``yield-result`` entries: vm, kind, outcome, reason, inputs).
    yields: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        """The trace line (one JSON object, no newline)."""
        return json.dumps(self.to_dict(), separators=(",", ":"), default=str)

    def summary(self) -> str:
        """One line for ``STATUS=`` and ``ebbd --once``."""
        changes = [a for a in self.applied if a.get("outcome") in CHANGED_OUTCOMES]
        acted = ", ".join(
            f"{a.get('vm') or a.get('knob')}={a.get('target_kib', a.get('value'))}"
            for a in changes[:4]
        )
        more = f" (+{len(changes) - 4})" if len(changes) > 4 else ""
        state = "paused; " if self.paused else ("dry run; " if self.dry_run else "")
        error = f"; policy error: {self.policy_error}" if self.policy_error else ""
        return (
            f"tick {self.tick}: {state}{len(self.views)} VM(s) managed, "
            f"{len(changes)} change(s){': ' + acted + more if changes else ''}"
            f" in {self.duration_ms:.0f} ms{error}"
        )


def json_friendly(value: Any) -> Any:
    """``value`` with only JSON types (policy values may be any Python object)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): json_friendly(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_friendly(v) for v in value]
    return str(value)


def shallow_dict(value: Any) -> dict[str, Any]:
    """A flat dataclass as a dict (``asdict`` deep-copies, which costs a tick dearly)."""
    return {f.name: getattr(value, f.name) for f in fields(value)}


def decision_dict(decision: Decision) -> dict[str, Any]:
    """What ``Decision.to_json()`` gives, without the deep copy."""
    out = shallow_dict(decision)
    out["inputs"] = dict(decision.inputs)
    return out
