"""The words a tick's records are made of: action kinds, outcomes, guest states.

They are ``StrEnum`` members, so they compare equal to, print as and serialise
(JSON, the trace, the journal, metrics labels) as the plain strings that
docs/observability.md and ``ebbctl explain`` show; code names them here once
instead of retyping the strings.
"""

from __future__ import annotations

from enum import StrEnum


class ActionKind(StrEnum):
    """What a journal entry or decision does to a guest."""

    INFLATE = "inflate"  # take memory from the guest (balloon grows, target < current)
    DEFLATE = "deflate"  # give memory to the guest
    HOLD = "hold"  # leave as is (no target), or cancel a request (target = current)
    ROLLBACK = "rollback"  # give back what was taken: the inflation hurt
    YIELD_REQUEST = "yield-request"  # the agent was asked to yield (host/yielding.py)
    YIELD_RESULT = "yield-result"  # what a yield gave the host, by QEMU RSS

    @property
    def gives(self) -> bool:
        """True for kinds that give memory to the guest (applied first)."""
        return self in (ActionKind.DEFLATE, ActionKind.ROLLBACK)


class Outcome(StrEnum):
    """What became of an action (``applied`` in the tick record, the journal)."""

    APPLIED = "applied"  # sent to libvirt / written to sysfs
    UNCHANGED = "unchanged"  # the guest was already there: nothing sent
    ALREADY_REQUESTED = "already-requested"  # the same target is on its way
    DRY_RUN = "dry-run"  # decided, not applied (--dry-run)
    FAILED = "failed"  # libvirt or sysfs refused
    VM_GONE = "vm-gone"  # the VM went away
    PAUSED = "paused"  # ebbd is paused: decided, not applied
    # yields (host/yielding.py)
    SENT = "sent"
    RETURNED = "returned"
    NOTHING = "nothing"
    TIMEOUT = "timeout"

    @property
    def reached_guest(self) -> bool:
        """True when the balloon target is in force at the guest (the governor judges
        the guest's progress by it)."""
        return self in (Outcome.APPLIED, Outcome.UNCHANGED, Outcome.ALREADY_REQUESTED)

    @property
    def changed(self) -> bool:
        """True for the outcomes ``ebbctl status`` and metrics count as actions."""
        return self in (Outcome.APPLIED, Outcome.DRY_RUN)


class GuestState(StrEnum):
    """How a guest cooperates (``ebbctl status`` ``cooperation``, ``ebbctl top``)."""

    OK = "ok"
    BACKOFF = "backoff"  # a rollback happened: no inflation for a while
    STUCK = "stuck"  # no progress toward its target for stuck_after_s
    UNCOOPERATIVE = "uncooperative"  # no progress for uncooperative_after_s
    NO_AGENT = "no-agent"  # no agent connected
    STALE = "stale"  # the agent's reports stopped


#: Outcomes that count as a change made (``ebbctl status``, metrics, the tick summary).
CHANGED_OUTCOMES = frozenset(o for o in Outcome if o.changed)
