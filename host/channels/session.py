"""One conversation with one guest's agent, without any socket.

:class:`GuestSession` is fed the bytes a guest sent (and the host's clocks) and
answers with the bytes to send back; it keeps the guest's published state and
decides when the guest has misbehaved enough to be cut off. The socket work
(connecting, reading, writing, backing off) is :mod:`ebb.host.channels.hub`'s;
keeping it out of here lets the protocol rules be tested byte for byte.

Session rules (PROTOCOL.md "Session"):

- The agent speaks first with ``hello``; the host answers ``welcome`` with the
  chosen version and the report interval. A new ``hello`` in session means the
  agent restarted: the session starts again.
- Anything else before ``hello`` gets an ``error`` (``hello_required``).
- ``report``/``offer``/``need`` update the guest's state; a ``need`` for more
  than zero KiB asks the engine for an immediate tick.
- Unknown types and bad messages get an ``error`` reply and the session goes
  on; damaged frames get no reply. Too many of either, an oversized frame, or a
  flood (frames or bytes per second) cut the guest off.
"""

from __future__ import annotations

import collections
import logging
from typing import Callable, Deque, List, Optional, Tuple

from ebb.protocol import (
    CAPABILITIES,
    ERR_HELLO_REQUIRED,
    ERR_UNEXPECTED_MESSAGE,
    ERR_UNSUPPORTED_VERSION,
    URGENCIES,
    Bye,
    Error,
    FrameTooLarge,
    Hello,
    Message,
    MessageReader,
    Need,
    Offer,
    Ping,
    Pong,
    Pressure,
    ProtocolError,
    Report,
    Welcome,
    Yielded,
    choose_version,
    encode_message,
    error_reply,
    needs_error_reply,
)
from ebb.protocol.logs import RefusedInputLog, printable

from .state import (
    ChannelLimits,
    GuestChannelState,
    ReceivedNeed,
    ReceivedOffer,
    ReceivedReport,
    ReceivedYield,
    SessionState,
)
from .yields import SESSION_ENDED, YieldHandle

LOG = logging.getLogger(__name__)

#: Message types only the host sends; a guest sending one is a protocol error.
_HOST_ONLY = ("welcome", "decision", "request", "pressure")

#: The capability under which ``request`` kind ``yield``, ``yielded`` and ``pressure`` flow.
YIELD_CAPABILITY = "yield"

#: A guest that yields by itself while the host is not short is logged at most this often.
UNASKED_YIELD_LOG_INTERVAL_S = 300.0


class CutOff(Exception):
    """The guest misbehaved; the caller closes its socket and backs off."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Window:
    """Counts events in the current fixed window of ``length_s`` seconds."""

    def __init__(self, length_s: float) -> None:
        self.length_s = length_s
        self.started = float("-inf")
        self.count = 0

    def add(self, now: float, amount: int = 1) -> int:
        if now - self.started >= self.length_s:
            self.started = now
            self.count = 0
        self.count += amount
        return self.count


class _LogLimit:
    """At most ``per_window`` INFO lines per ``window_s`` on one subject of one guest;
    the others go to DEBUG and are counted in the next INFO line, so that a guest
    cannot write the host's log at its frame rate."""

    def __init__(self, window_s: float = 60.0, per_window: int = 3) -> None:
        self._window = _Window(window_s)
        self.per_window = per_window
        self.suppressed = 0

    def level(self, now: float, wanted: int = logging.INFO) -> Tuple[int, str]:
        """The level of the next line (``wanted`` or DEBUG), and a note to append to it."""
        if self._window.add(now) <= self.per_window:
            note = f" ({self.suppressed} similar not logged)" if self.suppressed else ""
            self.suppressed = 0
            return wanted, note
        self.suppressed += 1
        return logging.DEBUG, ""


class GuestSession:
    """Protocol state of one guest, across reconnects of its socket.

    ``on_need(vm)`` is called (from the channel thread) when the guest reports a
    need for memory, so the engine can tick at once.
    """

    def __init__(
        self,
        vm: str,
        limits: ChannelLimits,
        on_need: Optional[Callable[[str], None]] = None,
    ) -> None:
        self.vm = vm
        self.limits = limits
        self._on_need = on_need
        self.state = SessionState.DISCONNECTED
        self.socket_path: Optional[str] = None
        self._reader = MessageReader()
        self._history: Deque[ReceivedReport] = collections.deque(maxlen=limits.history_len)
        self.latest: Optional[ReceivedReport] = None
        self.offer: Optional[ReceivedOffer] = None
        self.need: Optional[ReceivedNeed] = None
        self.hello: Optional[Hello] = None
        self.protocol_version: Optional[int] = None
        self.capabilities: Tuple[str, ...] = ()
        self.protocol_errors = 0
        self.cut_offs = 0
        self.cut_off_until_wall: Optional[float] = None
        self.cut_off_until_mono: Optional[float] = None
        self.cut_off_reason: Optional[str] = None
        self.sessions = 0
        self.dropped_outgoing = 0
        self.last_heard_mono: Optional[float] = None
        self.last_alive_mono: Optional[float] = None  # report or pong
        self.next_ping_mono: Optional[float] = None
        self._ping_nonce = 0
        self._frames = _Window(1.0)
        self._bytes = _Window(1.0)
        self._errors = _Window(limits.error_window_s)
        self._hello_required_at = float("-inf")
        self._need_tick_mono = float("-inf")
        self._connected_mono: Optional[float] = None
        # Yields (PROTOCOL.md "yield"): the host's level as last told to agents,
        # the one outstanding request, and what came back.
        self.host_level = 0
        self.host_level_reason = "host has memory to spare"
        self.pressure_sent: Optional[int] = None
        self.pending_yield: Optional[YieldHandle] = None
        self.next_request_id = 1
        self.last_yield: Optional[ReceivedYield] = None
        self.yields = 0
        self.yields_unasked = 0
        self._unasked_logged_mono = float("-inf")
        self._need_log = _LogLimit()
        self._session_log = _LogLimit()
        self._error_log = _LogLimit()
        # Refused input is logged at WARNING, one summary line a minute at most.
        self.refused = RefusedInputLog(LOG, f"guest {vm}")

    # --- connection lifecycle (called by the hub) -------------------------------

    def connected(self, now_mono: float) -> None:
        """A socket to the guest's channel was opened."""
        self._reader.reset()
        self.state = SessionState.AWAITING_HELLO
        self._connected_mono = now_mono
        self.next_ping_mono = None
        self._frames = _Window(1.0)
        self._bytes = _Window(1.0)
        self._errors = _Window(self.limits.error_window_s)

    def disconnected(self) -> None:
        """The socket closed (VM stopped, QEMU restarted, or we closed it)."""
        self._reader.reset()
        self.end_pending_yield(SESSION_ENDED)
        self.pressure_sent = None
        if self.state is not SessionState.CUT_OFF:
            self.state = SessionState.DISCONNECTED
        self.next_ping_mono = None

    def cut_off(self, reason: str, now_mono: float, now_wall: float) -> float:
        """Record a cut-off; returns the backoff in seconds (doubling per cut-off)."""
        backoff_s = min(
            self.limits.cut_off_backoff_max_s,
            self.limits.cut_off_backoff_s * (2 ** min(self.cut_offs, 30)),
        )
        self.cut_offs += 1
        self.state = SessionState.CUT_OFF
        self.cut_off_reason = reason
        self.cut_off_until_mono = now_mono + backoff_s
        self.cut_off_until_wall = now_wall + backoff_s
        self._reader.reset()
        return float(backoff_s)

    def cut_off_over(self) -> None:
        """The backoff ended; the hub may reconnect."""
        self.state = SessionState.DISCONNECTED
        self.cut_off_until_mono = None
        self.cut_off_until_wall = None

    # --- input ------------------------------------------------------------------

    def feed(self, data: bytes, now_mono: float, now_wall: float) -> List[bytes]:
        """Take bytes from the guest; return frames to send back.

        Raises :class:`CutOff` when the guest must be cut off.
        """
        self.last_heard_mono = now_mono
        if self._bytes.add(now_mono, len(data)) > self.limits.max_bytes_per_s:
            raise CutOff(
                f"flood: more than {self.limits.max_bytes_per_s} bytes in one second"
            )
        replies: List[bytes] = []
        for item in self._reader.feed(data):
            if self._frames.add(now_mono) > self.limits.max_frames_per_s:
                raise CutOff(
                    f"flood: more than {self.limits.max_frames_per_s} frames in one second"
                )
            if isinstance(item, ProtocolError):
                self._protocol_error(item, now_mono, replies)
            else:
                self._handle(item, now_mono, now_wall, replies)
        return replies

    def _protocol_error(self, err: ProtocolError, now_mono: float, replies: List[bytes]) -> None:
        self.protocol_errors += 1
        if isinstance(err, FrameTooLarge):
            raise CutOff(f"oversized frame: {printable(err.message)}")
        count = self._errors.add(now_mono)
        self.refused.record(err, now_mono)
        if count > self.limits.max_errors_per_window:
            raise CutOff(
                f"garbage: {count} protocol errors within {self.limits.error_window_s:g} s "
                f"(last: {printable(err)})"
            )
        if needs_error_reply(err):
            replies.append(encode_message(error_reply(err)))

    def _handle(
        self, msg: Message, now_mono: float, now_wall: float, replies: List[bytes]
    ) -> None:
        if isinstance(msg, Hello):
            self._on_hello(msg, now_mono, replies)
            return
        if isinstance(msg, Ping):
            replies.append(encode_message(Pong(nonce=msg.nonce)))
            return
        if isinstance(msg, Pong):
            if msg.nonce == self._ping_nonce:
                self.last_alive_mono = now_mono
            return
        if isinstance(msg, Error):
            level, note = self._error_log.level(now_mono)
            LOG.log(
                level, "guest %s refused a %s message: %s: %s%s",
                self.vm, printable(msg.ref_type or "(unknown)"), msg.code,
                printable(msg.message), note,
            )
            return
        if isinstance(msg, Bye):
            level, note = self._session_log.level(now_mono)
            LOG.log(level, "guest %s: agent said bye (%s)%s", self.vm, printable(msg.reason), note)
            self.end_pending_yield(SESSION_ENDED)
            self.state = SessionState.AWAITING_HELLO
            self.next_ping_mono = None
            return
        if msg.TYPE in _HOST_ONLY:
            self._protocol_error(
                _Unexpected(f"{msg.TYPE} is sent by the host, not by a guest", msg.TYPE),
                now_mono,
                replies,
            )
            return
        if self.state is not SessionState.ACTIVE:
            # An agent still in a session with an ebbd that restarted: ask it to
            # say hello again, at most once a second.
            if now_mono - self._hello_required_at >= 1.0:
                self._hello_required_at = now_mono
                replies.append(
                    encode_message(
                        Error(
                            code=ERR_HELLO_REQUIRED,
                            message="say hello first (the host restarted or reconnected)",
                            ref_type=msg.TYPE,
                        )
                    )
                )
            return
        if isinstance(msg, Report):
            received = ReceivedReport(mono=now_mono, wall=now_wall, report=msg)
            self.latest = received
            self._history.append(received)
            self.last_alive_mono = now_mono
        elif isinstance(msg, Offer):
            # PROTOCOL.md 4.3: an offer or need older than one acted on is ignored.
            if self.offer is not None and msg.seq < self.offer.offer.seq:
                return
            self.offer = ReceivedOffer(mono=now_mono, wall=now_wall, offer=msg)
        elif isinstance(msg, Need):
            previous = self.need.need if self.need is not None else None
            if previous is not None and msg.seq < previous.seq:
                return
            self.need = ReceivedNeed(mono=now_mono, wall=now_wall, need=msg)
            changed = previous is None or (previous.kib, previous.urgency) != (
                msg.kib, msg.urgency
            )
            if msg.kib > 0 and changed:
                level, note = self._need_log.level(now_mono)
                reason = printable(msg.reason)
                LOG.log(
                    level, "guest %s needs %d KiB (%s): %s%s",
                    self.vm, msg.kib, msg.urgency, reason, note,
                    extra={"VM": self.vm, "ACTION": "need", "REASON": reason},
                )
                # A guest may change its need often; it earns an immediate tick
                # at most once per need_tick_min_interval_s (a more urgent need
                # always does), so needs cannot make the engine tick without pause.
                more_urgent = previous is None or _urgency_rank(msg.urgency) > _urgency_rank(
                    previous.urgency if previous.kib > 0 else ""
                )
                if self._on_need is not None and (
                    more_urgent
                    or now_mono - self._need_tick_mono >= self.limits.need_tick_min_interval_s
                ):
                    self._need_tick_mono = now_mono
                    self._on_need(self.vm)
        elif isinstance(msg, Yielded):
            self._on_yielded(msg, now_mono, now_wall, replies)

    def _on_yielded(
        self, msg: Yielded, now_mono: float, now_wall: float, replies: List[bytes]
    ) -> None:
        if YIELD_CAPABILITY not in self.capabilities:
            self._protocol_error(
                _Unexpected("yielded needs capability yield, not agreed in hello", msg.TYPE),
                now_mono,
                replies,
            )
            return
        received = ReceivedYield(
            mono=now_mono,
            wall=now_wall,
            yielded=msg,
            requested=msg.request_id is not None,
            host_level=self.host_level,
        )
        self.last_yield = received
        self.yields += 1
        pending = self.pending_yield
        if pending is not None and msg.request_id == pending.request_id:
            self.pending_yield = None
            pending.resolve(received)
        LOG.info(
            "guest %s yielded %d KiB of %d asked in %d ms (%s%s)%s",
            self.vm, msg.freed_kib, msg.asked_kib, msg.duration_ms, msg.stopped,
            f": {printable(msg.reason)}" if msg.reason else "",
            "" if received.requested else ", by itself",
            extra={"VM": self.vm, "ACTION": "yielded", "REASON": msg.stopped},
        )
        if not received.requested and self.host_level == 0:
            # The agent is told the host is not short, and background yields
            # only cost the guest its cache then (PROTOCOL.md "pressure").
            self.yields_unasked += 1
            if now_mono - self._unasked_logged_mono >= UNASKED_YIELD_LOG_INTERVAL_S:
                self._unasked_logged_mono = now_mono
                LOG.warning(
                    "guest %s yields by itself (%d KiB) while the host is not short "
                    "(pressure level 0); %d such yield(s) so far: check the agent's "
                    "version and configuration",
                    self.vm, msg.freed_kib, self.yields_unasked,
                    extra={"VM": self.vm, "ACTION": "unasked-yield"},
                )

    def _on_hello(self, hello: Hello, now_mono: float, replies: List[bytes]) -> None:
        version = choose_version(hello.protocol_versions)
        if version is None:
            level, note = self._session_log.level(now_mono, logging.WARNING)
            LOG.log(
                level, "guest %s: agent %s speaks protocol versions %s; this ebbd speaks %s%s",
                self.vm, printable(hello.agent_version), list(hello.protocol_versions), [1], note,
            )
            replies.append(
                encode_message(
                    Error(
                        code=ERR_UNSUPPORTED_VERSION,
                        message="no common protocol version; upgrade ebb-agent or ebbd",
                        ref_type=Hello.TYPE,
                    )
                )
            )
            return
        restarted = self.state is SessionState.ACTIVE
        self.hello = hello
        self.protocol_version = version
        self.capabilities = tuple(c for c in hello.capabilities if c in CAPABILITIES)
        self.state = SessionState.ACTIVE
        self.sessions += 1
        self.last_alive_mono = now_mono
        self.next_ping_mono = now_mono + self.limits.heartbeat_interval_s
        # A new session's offer and need replace the old ones; until they come,
        # the old ones are no longer promises.
        self.offer = None
        self.need = None
        # A request of the old session will not be answered by the new one.
        self.end_pending_yield(SESSION_ENDED)
        self.pressure_sent = None
        replies.append(
            encode_message(
                Welcome(
                    protocol_version=version,
                    report_interval_ms=self.limits.report_interval_ms,
                    capabilities=self.capabilities,
                )
            )
        )
        pressure = self.due_pressure()
        if pressure is not None:
            replies.append(pressure)
        level, note = self._session_log.level(now_mono)
        LOG.log(
            level,
            "guest %s: agent %s%s in session (protocol %d%s)%s",
            self.vm,
            printable(hello.agent_version),
            f" on {printable(hello.hostname)}" if hello.hostname else "",
            version,
            ", restarted" if restarted else "",
            note,
        )

    def welcome_again(self) -> Optional[bytes]:
        """An unasked ``welcome`` carrying the current report interval (PROTOCOL.md 4.1:
        the agent applies it at once; it does not start a new session)."""
        if self.state is not SessionState.ACTIVE or self.protocol_version is None:
            return None
        frame: bytes = encode_message(
            Welcome(
                protocol_version=self.protocol_version,
                report_interval_ms=self.limits.report_interval_ms,
                capabilities=self.capabilities,
            )
        )
        return frame

    # --- yields -----------------------------------------------------------------

    def may_yield(self) -> bool:
        """In session with an agent that agreed the ``yield`` capability."""
        return self.state is SessionState.ACTIVE and YIELD_CAPABILITY in self.capabilities

    def set_host_level(self, level: int, reason: str) -> None:
        self.host_level = level
        self.host_level_reason = reason

    def due_pressure(self) -> Optional[bytes]:
        """A ``pressure`` frame when the agent has not been told the current level."""
        if not self.may_yield() or self.pressure_sent == self.host_level:
            return None
        self.pressure_sent = self.host_level
        frame: bytes = encode_message(
            Pressure(level=self.host_level, reason=self.host_level_reason[:256])
        )
        return frame

    def end_pending_yield(self, why: str) -> None:
        """Fail the outstanding yield request (deadline passed, session over)."""
        pending, self.pending_yield = self.pending_yield, None
        if pending is not None:
            pending.fail(why)

    # --- timers -----------------------------------------------------------------

    def due_ping(self, now_mono: float) -> Optional[bytes]:
        """A ping frame when one is due (active sessions only)."""
        if self.state is not SessionState.ACTIVE or self.next_ping_mono is None:
            return None
        if now_mono < self.next_ping_mono:
            return None
        self._ping_nonce = (self._ping_nonce + 1) & 0xFFFFFFFF
        self.next_ping_mono = now_mono + self.limits.heartbeat_interval_s
        frame: bytes = encode_message(Ping(nonce=self._ping_nonce))
        return frame

    def is_stale(self, now_mono: float) -> bool:
        """In session but silent (no report, no pong) for ``stale_after_s``."""
        if self.state is not SessionState.ACTIVE or self.last_alive_mono is None:
            return False
        return now_mono - self.last_alive_mono > max(
            self.limits.stale_after_s, self.limits.report_interval_ms / 1000.0 * 2
        )

    def session_age_s(self, now_mono: float) -> float:
        if self._connected_mono is None:
            return 0.0
        return now_mono - self._connected_mono

    def reset_backoff(self) -> None:
        """The guest behaved long enough: the next cut-off starts from the first step."""
        self.cut_offs = 0

    # --- output -----------------------------------------------------------------

    def snapshot(self, now_mono: float, connected: bool) -> GuestChannelState:
        """An immutable copy for the engine."""
        hello = self.hello
        active = self.state is SessionState.ACTIVE
        return GuestChannelState(
            vm=self.vm,
            socket_path=self.socket_path,
            session=self.state,
            connected=connected,
            agent_active=active,
            stale=self.is_stale(now_mono),
            # Guest-chosen text reaches ebbctl's screen: escaped like log lines.
            agent_version=printable(hello.agent_version) if hello else None,
            hostname=printable(hello.hostname) if hello else None,
            protocol_version=self.protocol_version if active else None,
            capabilities=self.capabilities if active else (),
            latest=self.latest,
            history=tuple(self._history),
            offer=self.offer,
            need=self.need,
            protocol_errors=self.protocol_errors,
            cut_offs=self.cut_offs,
            cut_off_until=self.cut_off_until_wall,
            cut_off_reason=self.cut_off_reason if self.state is SessionState.CUT_OFF else None,
            last_heard_mono=self.last_heard_mono,
            sessions=self.sessions,
            dropped_outgoing=self.dropped_outgoing,
            last_yield=self.last_yield,
            yields=self.yields,
            yields_unasked=self.yields_unasked,
            yield_pending=self.pending_yield is not None,
        )


def _urgency_rank(urgency: str) -> int:
    return URGENCIES.index(urgency) + 1 if urgency in URGENCIES else 0


class _Unexpected(ProtocolError):  # type: ignore[misc,unused-ignore]
    """A guest sent a message type only the host may send."""

    default_code = ERR_UNEXPECTED_MESSAGE

    def __init__(self, message: str, ref_type: str) -> None:
        super().__init__(message, ref_type=ref_type)
