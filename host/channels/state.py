"""What the host knows about one guest's agent, as the engine reads it.

Everything here is a value published by the channel thread: the engine gets
copies (:meth:`GuestChannels.snapshot`), never the live objects, so it needs no
lock and sees one consistent picture per tick. Every received message carries
the host's own clocks (monotonic for ages and rates, wall for people), because
guest clocks are not trusted.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional, Tuple

from ebb.protocol import Need, Offer, Report, Yielded


class SessionState(enum.Enum):
    """Where the conversation with one guest's agent stands."""

    #: No socket (VM has no channel, socket not there yet, or closed: retrying).
    DISCONNECTED = "disconnected"
    #: Socket open; the agent has not said hello (yet, or since it restarted).
    AWAITING_HELLO = "awaiting_hello"
    #: Hello answered with welcome: reports flow.
    ACTIVE = "active"
    #: Closed on purpose because the guest misbehaved; reopened after ``cut_off_until``.
    CUT_OFF = "cut_off"


@dataclass(frozen=True)
class Received:
    """A message as the host received it, stamped with the host's clocks."""

    mono: float  #: time.monotonic() at receipt
    wall: float  #: time.time() at receipt


@dataclass(frozen=True)
class ReceivedReport(Received):
    report: Report


@dataclass(frozen=True)
class ReceivedOffer(Received):
    offer: Offer


@dataclass(frozen=True)
class ReceivedNeed(Received):
    need: Need


@dataclass(frozen=True)
class ReceivedYield(Received):
    """A ``yielded`` message as the host received it."""

    yielded: Yielded
    #: True when it answered a host request (it carries a request_id).
    requested: bool
    #: The host's pressure level when it arrived.
    host_level: int


@dataclass(frozen=True)
class GuestChannelState:
    """One guest's channel as of a snapshot (immutable copy)."""

    vm: str
    socket_path: Optional[str]
    session: SessionState
    #: The socket to the guest's channel is open.
    connected: bool
    #: The agent has said hello and is in session.
    agent_active: bool
    #: In session, but no report or pong within ``stale_after_s``.
    stale: bool
    agent_version: Optional[str] = None
    hostname: Optional[str] = None
    protocol_version: Optional[int] = None
    capabilities: Tuple[str, ...] = ()
    latest: Optional[ReceivedReport] = None
    #: Recent reports, oldest first (bounded).
    history: Tuple[ReceivedReport, ...] = ()
    offer: Optional[ReceivedOffer] = None
    need: Optional[ReceivedNeed] = None
    #: Protocol errors since ebbd started (all sessions).
    protocol_errors: int = 0
    #: Times this guest was cut off since ebbd started.
    cut_offs: int = 0
    #: Wall time until which the guest stays cut off, or None.
    cut_off_until: Optional[float] = None
    cut_off_reason: Optional[str] = None
    #: Monotonic time of the last byte received (any message), or None.
    last_heard_mono: Optional[float] = None
    #: Sessions started (hellos answered) since ebbd started.
    sessions: int = 0
    #: Messages the output buffer could not take (the guest does not read).
    dropped_outgoing: int = 0
    #: The latest ``yielded`` (answer to a request or background yield), or None.
    last_yield: Optional[ReceivedYield] = None
    #: ``yielded`` messages received since ebbd started.
    yields: int = 0
    #: Background yields while the host said it was not short (level 0).
    yields_unasked: int = 0
    #: A yield request to this guest is outstanding.
    yield_pending: bool = False

    def report_age_s(self, now_mono: float) -> Optional[float]:
        """Seconds since the latest report, or None when there is none."""
        if self.latest is None:
            return None
        return max(0.0, now_mono - self.latest.mono)


@dataclass
class ChannelLimits:
    """How much a guest may send before it is cut off, and the timings of a session."""

    #: Welcome tells the agent to report this often.
    report_interval_ms: int = 2000
    #: Ping an active agent this often.
    heartbeat_interval_s: float = 5.0
    #: No report and no pong for this long: stale.
    stale_after_s: float = 5.0
    #: More frames than this in one second: flood.
    max_frames_per_s: int = 50
    #: More bytes than this in one second: flood.
    max_bytes_per_s: int = 256 * 1024
    #: More protocol errors than this within ``error_window_s``: garbage.
    max_errors_per_window: int = 20
    error_window_s: float = 10.0
    #: Cut-off backoff: first wait, doubled per cut-off up to the maximum.
    cut_off_backoff_s: float = 10.0
    cut_off_backoff_max_s: float = 300.0
    #: Wait between attempts to open a socket that is missing or refuses.
    connect_retry_s: float = 2.0
    connect_retry_max_s: float = 30.0
    #: Most bytes read from one guest per wakeup (fairness between guests).
    read_chunk_bytes: int = 16 * 1024
    #: Most bytes waiting to be written to one guest; beyond, messages are dropped.
    max_output_bytes: int = 64 * 1024
    #: Reports kept per guest.
    history_len: int = 16
    #: A guest's changing need asks for an immediate tick at most this often
    #: (a need more urgent than the last always does).
    need_tick_min_interval_s: float = 1.0

