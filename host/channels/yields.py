"""Yield requests to one guest's agent, and what came back.

A yield is the agent asking its own kernel to reclaim (PROTOCOL.md "yield").
The host asks with a ``request`` kind ``yield`` and a ``request_id``; the agent
answers with ``yielded``, or does a background yield by itself and reports it
the same way without a ``request_id``.

Each guest has at most one yield request outstanding: a :class:`YieldHandle`
the asker (engine or control socket) can wait on for a bounded time. The
channel thread resolves it when the answer comes, or fails it at the deadline,
when the session ends, or when the message could not be sent. Nothing queues
behind it: asking again while one is outstanding is refused (``busy``).

What the agent says it freed is its own figure; the host believes only its
measurement of the VM's QEMU RSS (the engine and ``ebbctl yield`` measure it).
"""

from __future__ import annotations

import threading
from typing import Optional

from .state import ReceivedYield

#: Why a yield request could not be made (``YieldUnavailable.code``).
UNKNOWN_VM = "unknown_vm"
NO_AGENT = "no_agent"
NO_CAPABILITY = "no_capability"
BUSY = "busy"

#: Why an outstanding request ended without an answer (``YieldHandle.failure``).
TIMED_OUT = "timeout"
SESSION_ENDED = "session_ended"
NOT_SENT = "not_sent"


class YieldUnavailable(Exception):
    """The guest cannot be asked to yield now; ``code`` says why, the message for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class YieldHandle:
    """One outstanding yield request; resolved by the channel thread.

    :meth:`wait` returns when the answer came or the request failed, or after
    ``timeout_s``; then :attr:`answer` or :attr:`failure` says which.
    """

    def __init__(
        self, vm: str, request_id: int, asked_kib: int, deadline_ms: int, sent_mono: float
    ) -> None:
        self.vm = vm
        self.request_id = request_id
        self.asked_kib = asked_kib
        self.deadline_ms = deadline_ms
        self.sent_mono = sent_mono
        self.deadline_mono = sent_mono + deadline_ms / 1000.0
        self.answer: Optional[ReceivedYield] = None
        self.failure: Optional[str] = None
        self._event = threading.Event()

    @property
    def done(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the answer or a failure; True when done."""
        return self._event.wait(max(0.0, timeout_s))

    def resolve(self, answer: ReceivedYield) -> None:
        if not self._event.is_set():
            self.answer = answer
            self._event.set()

    def fail(self, why: str) -> None:
        if not self._event.is_set():
            self.failure = why
            self._event.set()

    def __repr__(self) -> str:
        state = "answered" if self.answer else (self.failure or "outstanding")
        return f"<YieldHandle {self.vm} #{self.request_id} {self.asked_kib} KiB {state}>"


__all__ = [
    "BUSY",
    "NOT_SENT",
    "NO_AGENT",
    "NO_CAPABILITY",
    "SESSION_ENDED",
    "TIMED_OUT",
    "UNKNOWN_VM",
    "ReceivedYield",
    "YieldHandle",
    "YieldUnavailable",
]
