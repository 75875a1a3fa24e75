"""What was done to each VM and why: the decision journal ``ebbctl explain`` reads.

Each tick's balloon decisions, with what became of them (:class:`BalloonAction`),
and the yield requests and results become :class:`JournalEntry` values in a
bounded per-VM history. A decision repeated tick after tick (same kind, target,
rule and outcome) is one entry with a count (``repeats``, ``last_at``).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Deque, TypeVar

from ebb.host.controllers.balloon import BalloonResult
from ebb.host.governor import Decision
from ebb.host.kinds import ActionKind, Outcome

#: VMs whose journals are kept (VMs come and go; memory stays bounded).
MAX_VMS = 512

_E = TypeVar("_E", ActionKind, Outcome)


def _typed(kind: type[_E], value: Any) -> _E | str | None:
    """``value`` as a member of ``kind`` when it is one, else as it came (a newer
    peer's word is shown, not dropped)."""
    if value is None:
        return None
    try:
        return kind(value)
    except ValueError:
        return str(value)


@dataclass(frozen=True)
class BalloonAction:
    """One balloon target applied (or not): the controller's result and the decision's
    kind and rule. Its :meth:`to_dict` is an ``applied`` entry of the tick record."""

    result: BalloonResult
    kind: ActionKind
    rule: str

    @property
    def vm(self) -> str:
        return self.result.vm

    @property
    def outcome(self) -> Outcome:
        return Outcome(self.result.outcome)

    def to_dict(self) -> dict[str, Any]:
        entry = self.result.to_dict()
        entry["kind"] = self.kind
        entry["rule"] = self.rule
        return entry


@dataclass
class JournalEntry:
    """One line of ``ebbctl explain``."""

    at: float
    tick: int
    kind: ActionKind | str | None
    target_kib: int | None
    rule: str | None
    reason: str | None
    inputs: dict[str, Any] = field(default_factory=dict)
    outcome: Outcome | str | None = None
    detail: str = ""
    policy_error: str | None = None
    repeats: int = 1
    #: When the last repeat was journalled (None until the entry repeats).
    last_at: float | None = None

    def repeats_entry(self, other: JournalEntry) -> bool:
        """True when ``other`` does the same as this entry (only its figures differ)."""
        return (self.kind, self.target_kib, self.rule, self.outcome) == (
            other.kind, other.target_kib, other.rule, other.outcome)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of ``ebbctl explain`` (``last_at`` only once it repeats)."""
        out: dict[str, Any] = {
            "at": self.at, "tick": self.tick, "kind": self.kind,
            "target_kib": self.target_kib, "rule": self.rule, "reason": self.reason,
            "inputs": dict(self.inputs), "outcome": self.outcome, "detail": self.detail,
            "policy_error": self.policy_error, "repeats": self.repeats,
        }
        if self.last_at is not None:
            out["last_at"] = self.last_at
        return out


class Journal:
    """Bounded per-VM journals (thread-safe: ticks write, the control socket reads)."""

    def __init__(self, per_vm: int) -> None:
        self.per_vm = per_vm
        self._lock = threading.Lock()
        self._by_vm: dict[str, Deque[JournalEntry]] = collections.OrderedDict()

    def _journal(self, vm: str) -> Deque[JournalEntry]:
        journal = self._by_vm.get(vm)
        if journal is None:
            journal = self._by_vm[vm] = collections.deque(maxlen=self.per_vm)
            while len(self._by_vm) > MAX_VMS:
                self._by_vm.pop(next(iter(self._by_vm)))
        return journal

    def add_decisions(
        self,
        at: float,
        tick: int,
        decisions: Sequence[Decision],
        actions: Mapping[str, BalloonAction],
        *,
        paused: bool = False,
        policy_error: str | None = None,
    ) -> None:
        """Journal a tick's decisions with what became of their targets (``actions``
        by VM; while ``paused`` a target's outcome is ``paused``)."""
        with self._lock:
            for decision in decisions:
                action = actions.get(decision.vm)
                if action is not None:
                    outcome: Outcome | None = action.outcome
                elif paused and decision.target_kib is not None:
                    outcome = Outcome.PAUSED
                else:
                    outcome = None
                entry = JournalEntry(
                    at, tick, decision.kind, decision.target_kib, decision.rule, decision.reason,
                    dict(decision.inputs), outcome, action.result.detail if action else "",
                    policy_error,
                )
                journal = self._journal(decision.vm)
                last = journal[-1] if journal else None
                if last is not None and last.repeats_entry(entry):
                    last.repeats += 1
                    last.last_at = at
                    last.reason = entry.reason
                    last.inputs = entry.inputs
                else:
                    journal.append(entry)

    def add_events(self, at: float, tick: int, events: Iterable[Mapping[str, Any]],
                   policy_error: str | None = None) -> None:
        """Journal entries that are not balloon decisions (yield requests and results:
        dicts with ``vm``, ``kind``, ``rule``, ``reason``, ``outcome``, ``inputs``)."""
        with self._lock:
            for event in events:
                self._journal(str(event["vm"])).append(JournalEntry(
                    at, tick, _typed(ActionKind, event.get("kind")), None, event.get("rule"),
                    event.get("reason"), dict(event.get("inputs") or {}),
                    _typed(Outcome, event.get("outcome")), "", policy_error,
                ))

    def entries(self, vm: str) -> list[dict[str, Any]]:
        """The recent entries for ``vm``, oldest first, as ``ebbctl explain`` shows them."""
        with self._lock:
            return [e.to_dict() for e in self._by_vm.get(vm, ())]

    def knows(self, vm: str) -> bool:
        with self._lock:
            return vm in self._by_vm
