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
    ProtocolError,
    Report,
    Welcome,
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
    SessionState,
)

LOG = logging.getLogger(__name__)

#: Message types only the host sends; a guest sending one is a protocol error.
_HOST_ONLY = ("welcome", "decision", "request")


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
            LOG.info(
                "guest %s refused a %s message: %s: %s",
                self.vm, printable(msg.ref_type or "(unknown)"), msg.code,
                printable(msg.message),
            )
            return
        if isinstance(msg, Bye):
            LOG.info("guest %s: agent said bye (%s)", self.vm, printable(msg.reason))
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
                reason = printable(msg.reason)
                LOG.info(
                    "guest %s needs %d KiB (%s): %s",
                    self.vm, msg.kib, msg.urgency, reason,
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

    def _on_hello(self, hello: Hello, now_mono: float, replies: List[bytes]) -> None:
        version = choose_version(hello.protocol_versions)
        if version is None:
            LOG.warning(
                "guest %s: agent %s speaks protocol versions %s; this ebbd speaks %s",
                self.vm, printable(hello.agent_version), list(hello.protocol_versions), [1],
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
        replies.append(
            encode_message(
                Welcome(
                    protocol_version=version,
                    report_interval_ms=self.limits.report_interval_ms,
                    capabilities=self.capabilities,
                )
            )
        )
        LOG.info(
            "guest %s: agent %s%s in session (protocol %d%s)",
            self.vm,
            printable(hello.agent_version),
            f" on {printable(hello.hostname)}" if hello.hostname else "",
            version,
            ", restarted" if restarted else "",
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
            agent_version=hello.agent_version if hello else None,
            hostname=hello.hostname if hello else None,
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
        )


def _urgency_rank(urgency: str) -> int:
    return URGENCIES.index(urgency) + 1 if urgency in URGENCIES else 0


class _Unexpected(ProtocolError):  # type: ignore[misc,unused-ignore]
    """A guest sent a message type only the host may send."""

    default_code = ERR_UNEXPECTED_MESSAGE

    def __init__(self, message: str, ref_type: str) -> None:
        super().__init__(message, ref_type=ref_type)
