"""The agent's conversation with the host, without any I/O (a sans-I/O session).

:class:`AgentSession` is a state machine. Its inputs are the transport's events
(:meth:`~AgentSession.opened`, :meth:`~AgentSession.open_failed`,
:meth:`~AgentSession.lost`), the bytes the host sent (:meth:`~AgentSession.receive`),
the guest's memory samples (:meth:`~AgentSession.sampled`) and what yields gave back
(:meth:`~AgentSession.yielded`), each with the time now. Its outputs are the frames
to send (:meth:`~AgentSession.take_frames`), the yield work to run
(:meth:`~AgentSession.take_yield_work`), systemd status lines
(:meth:`~AgentSession.take_statuses`) and when it wants to be called next
(:meth:`~AgentSession.wake_at`). It reads no clock, opens no file and writes to no
socket, so tests drive it on a fake clock, message by message. The loop that
drives it over a real transport is :mod:`ebb.guest.agent`. States::

    DISCONNECTED --opened: hello--> HELLO_SENT --welcome--> ACTIVE
         ^                  hello again  |  ^  bye, hello_required,  |
         |         (1 s doubling to 10 s)   |  unanswered keepalive   |
         +-- lost (EOF/HUP, write failed): reopen after 1 s doubling to 10 s
    STOPPED after stop(): a bye is the last frame when the transport is open.

The session rules (hello retries, sequence numbers, hello_required, capabilities)
follow PROTOCOL.md section 4.

Nothing the host sends can raise out of :meth:`~AgentSession.receive`: protocol
errors come back from the reader as values and are answered with an ``error``
message (rate-limited), and everything kept is bounded (one frame buffer, the
last two samples, counters).
"""

from __future__ import annotations

import enum
import logging
import socket
from dataclasses import dataclass, field
from typing import List, Optional, Union

from ebb.protocol.errors import ProtocolError
from ebb.protocol.logs import RefusedInputLog, printable
from ebb.protocol.messages import (
    CAPABILITIES,
    REQUEST_YIELD,
    SUPPORTED_VERSIONS,
    Bye,
    Decision,
    Error,
    Hello,
    Message,
    Need,
    Offer,
    Ping,
    Pong,
    Pressure,
    Report,
    Request,
    Welcome,
    Yielded,
    encode_message,
    error_reply,
)
from ebb.protocol.stream import MessageReader, needs_error_reply

from . import __version__
from .collect import MemorySample
from .yielding import (
    MIB_KIB,
    Assessment,
    ColdCache,
    NeedEstimate,
    YieldConfig,
    assess,
    need_changed,
    offer_changed,
)

LOG = logging.getLogger(__name__)

#: Request kinds the agent understands (PROTOCOL.md "request").
PREPARE_RELEASE = "prepare_release"
#: The error code by which a host without a session for us asks for a hello.
HELLO_REQUIRED = "hello_required"
#: PROTOCOL.md 4.2: no more than one early report per 100 ms.
MIN_EARLY_REPORT_GAP_S = 0.1
#: When a host shows up while no welcome came yet, say hello again at most this often.
HELLO_NUDGE_GAP_S = 1.0


class ConnectionState(enum.Enum):
    """Where the agent is in its conversation with the host."""

    DISCONNECTED = "disconnected"  # transport closed; waiting before (re)opening it
    HELLO_SENT = "hello_sent"  # transport open, hello sent, waiting for a welcome
    ACTIVE = "active"  # welcomed: reporting every interval
    STOPPED = "stopped"  # stop() was called and the loop has ended


@dataclass(frozen=True)
class AgentConfig:
    """Timing and limits of the agent. Defaults suit a real guest."""

    #: Report interval until the host's welcome sets one.
    default_interval_s: float = 1.0
    #: Sample at least this often between reports, to report big changes at once.
    #: While the guest is calm (see ``calm_change_fraction``) the watch runs at half
    #: this rate: under emulation each sample costs the guest milliseconds of CPU.
    watch_interval_s: float = 0.5
    #: Wait before reopening a transport the host is absent from: doubles from min to max.
    backoff_min_s: float = 1.0
    backoff_max_s: float = 10.0
    #: Wait for a welcome before saying hello again: doubles from min to max (PROTOCOL.md 4.1).
    #: 1 s to 10 s: on a serial line the host may start listening at any time and
    #: the agent learns it only from a welcome, so the wait stays short; a hello is
    #: about 100 bytes, nothing for a line nobody reads.
    hello_retry_min_s: float = 1.0
    hello_retry_max_s: float = 10.0
    #: A write that cannot complete in this time means the host end is gone.
    write_timeout_s: float = 2.0
    #: Ping a host not heard from for this long; re-handshake if the ping goes unanswered
    #: for as long again (a serial line never reports that its other end went away).
    keepalive_s: float = 30.0
    #: Report at once when MemAvailable moved by more than this fraction of MemTotal ...
    big_change_fraction: float = 0.05
    #: ... or PSI some avg10 rose by this many percentage points since the last report.
    psi_rise_pct: float = 5.0
    #: Calm: no need, no memory stall (PSI some avg10 0), no swapping, and MemAvailable
    #: moved by less than this fraction of MemTotal since the previous sample.
    calm_change_fraction: float = 0.01
    #: At most this many error replies per second (garbage must not make us chatty).
    error_replies_per_s: float = 10.0
    #: Sent in the hello, for the host's logs.
    hostname: str = field(default_factory=socket.gethostname)
    yield_config: YieldConfig = field(default_factory=YieldConfig)

    def __post_init__(self) -> None:
        for name in ("default_interval_s", "watch_interval_s", "backoff_min_s", "write_timeout_s",
                     "keepalive_s", "hello_retry_min_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.backoff_max_s < self.backoff_min_s:
            raise ValueError("backoff_max_s must be >= backoff_min_s")
        if self.hello_retry_max_s < self.hello_retry_min_s:
            raise ValueError("hello_retry_max_s must be >= hello_retry_min_s")


@dataclass
class AgentCounters:
    """What the agent has done since it started (for tests, logs and the benchmark)."""

    connect_attempts: int = 0
    connects: int = 0
    hellos_sent: int = 0
    welcomes: int = 0
    reports_sent: int = 0
    offers_sent: int = 0
    needs_sent: int = 0
    errors_sent: int = 0
    errors_received: int = 0
    protocol_errors: int = 0
    disconnects: int = 0


# --- yield work: what the session asks the loop to run on its Yielder -----------------


@dataclass(frozen=True)
class YieldRequested:
    """The host asked for a yield (``request`` kind ``yield``): start it, send the answers."""

    kib: int
    request_id: Optional[int]
    deadline_ms: Optional[int]


@dataclass(frozen=True)
class BackgroundYieldDue:
    """A sample found no need: a background yield of ``cold_kib`` may start if the host is short."""

    now_s: float
    cold_kib: int


@dataclass(frozen=True)
class PressureChanged:
    """The host's pressure level (PROTOCOL.md 4.7), or 0 again for a new session."""

    level: int
    reason: str


YieldWork = Union[YieldRequested, BackgroundYieldDue, PressureChanged]


class _TokenBucket:
    """Allows ``rate_per_s`` events per second on average, bursts of up to that many."""

    def __init__(self, rate_per_s: float) -> None:
        self._rate = rate_per_s
        self._capacity = max(1.0, rate_per_s)
        self._tokens = self._capacity
        self._last: Optional[float] = None

    def take(self, now: float) -> bool:
        if self._last is not None:
            self._tokens = min(self._capacity, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class AgentSession:
    """The agent's side of PROTOCOL.md section 4, fed events and the time; no I/O.

    ``description`` names the transport in logs and status lines;
    ``reopen_max_s`` caps the reopen backoff (see ``Transport.reopen_max_s``).
    ``has_yielder``: yield requests and pressure are passed on as yield work (else
    a yield request is an unknown request); ``yield_capable``: ``yield`` is in the
    hello. All times are seconds on one monotonic clock, the caller's.
    """

    def __init__(
        self,
        config: Optional[AgentConfig] = None,
        *,
        description: str = "transport",
        reopen_max_s: Optional[float] = None,
        has_yielder: bool = False,
        yield_capable: bool = False,
    ) -> None:
        self.config = config if config is not None else AgentConfig()
        self.description = description
        self.reopen_max_s = reopen_max_s
        self.has_yielder = has_yielder
        self.yield_capable = has_yielder and yield_capable
        self.counters = AgentCounters()
        self._state = ConnectionState.DISCONNECTED
        self._frames: List[bytes] = []
        self._yield_work: List[YieldWork] = []
        self._statuses: List[str] = []
        self._reader = MessageReader()
        # Refused input is logged at WARNING, one summary line a minute at most.
        self._refused = RefusedInputLog(LOG, "host")
        self._error_budget = _TokenBucket(self.config.error_replies_per_s)
        self._backoff_s = self.config.backoff_min_s
        self._reopen_at = 0.0
        self._hello_retry_s = self.config.hello_retry_min_s
        self._hello_sent_at = -HELLO_NUDGE_GAP_S
        self._absence_logged = False
        # Session state, reset by _start_session.
        #: The report interval in force (the welcome's, or the default until then).
        self.interval_s = self.config.default_interval_s
        self._seq = 0
        self._hello_due_at = 0.0
        self._next_sample_at = 0.0
        self._next_report_at = 0.0
        self._last_report_at = float("-inf")
        self._last_heard_at = 0.0
        self._ping_nonce: Optional[int] = None
        self._ping_sent_at = 0.0
        self._previous: Optional[MemorySample] = None
        self._cold_cache = ColdCache(self.config.yield_config.cache_hold_s)
        self._last_reported: Optional[MemorySample] = None
        self._last_offer_kib: Optional[int] = None
        self._last_cold_kib: Optional[int] = None
        self._last_need: Optional[NeedEstimate] = None
        self._force_offer = False
        self._collect_failing = False
        self._may_offer = False
        self._may_need = False
        self._may_yield = False
        #: The last decision the host sent (balloon target and reason), if any.
        self.last_decision: Optional[Decision] = None
        #: The last offer/need assessment made.
        self.last_assessment: Optional[Assessment] = None

    # --- state and outputs --------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        """The current connection state."""
        return self._state

    @property
    def buffered_bytes(self) -> int:
        """Bytes of an incomplete frame kept from the host (bounded by the frame reader)."""
        return self._reader.buffered_bytes

    def take_frames(self) -> List[bytes]:
        """The encoded frames to write to the host, in order; the queue is emptied."""
        frames, self._frames = self._frames, []
        return frames

    def take_yield_work(self) -> List[YieldWork]:
        """The yield work to run on the Yielder, in order; the queue is emptied."""
        work, self._yield_work = self._yield_work, []
        return work

    def take_statuses(self) -> List[str]:
        """systemd notification strings (``STATUS=...``) since the last call."""
        statuses, self._statuses = self._statuses, []
        return statuses

    def wake_at(self) -> float:
        """When the session next has something to do (reopen, hello, sample, ping)."""
        if self._state is ConnectionState.DISCONNECTED:
            return self._reopen_at
        if self._state is ConnectionState.HELLO_SENT:
            return self._hello_due_at
        if self._state is ConnectionState.STOPPED:
            return float("inf")
        keepalive_at = (
            self._ping_sent_at if self._ping_nonce is not None else self._last_heard_at
        ) + self.config.keepalive_s
        return min(self._next_sample_at, keepalive_at)

    def sample_due(self, now: float) -> bool:
        """Whether the caller should take a sample and pass it to :meth:`sampled` now."""
        return self._state is ConnectionState.ACTIVE and now >= self._next_sample_at

    def cache_held(self, now_s: float) -> bool:
        """Whether the page cache is kept out of offers at ``now_s`` (it refaulted lately)."""
        return self._cold_cache.held(now_s)

    # --- transport events ---------------------------------------------------------------

    def opened(self, now: float) -> None:
        """The transport is open: a new conversation starts with a hello."""
        self.counters.connect_attempts += 1
        self.counters.connects += 1
        self._reader.reset()
        self._frames.clear()
        self._hello_retry_s = self.config.hello_retry_min_s
        self._set_state(ConnectionState.HELLO_SENT)
        self._send_hello(now)

    def open_failed(self, why: str, now: float) -> float:
        """Opening the transport failed; returns when to try again (also :meth:`wake_at`)."""
        self.counters.connect_attempts += 1
        self._log_absence("cannot reach the host: %s; retrying", why)
        self._reopen_at = now + self._next_backoff_s()
        return self._reopen_at

    def lost(self, why: str, now: float) -> float:
        """The host end is gone or a write failed; the caller closes the transport.

        Frames not yet written are dropped. Returns when to reopen.
        """
        if self._state is ConnectionState.ACTIVE:
            LOG.warning("lost the host: %s; reconnecting", why)
            self._absence_logged = True
        else:
            self._log_absence("the host is not there: %s; retrying", why)
        self.counters.disconnects += 1
        self._frames.clear()
        self._set_state(ConnectionState.DISCONNECTED)
        self._reopen_at = now + self._next_backoff_s()
        return self._reopen_at

    def stop(self) -> Optional[bytes]:
        """The agent stops: the bye frame to write if the transport is open, else None."""
        say_bye = self._state in (ConnectionState.ACTIVE, ConnectionState.HELLO_SENT)
        self._frames.clear()
        self._state = ConnectionState.STOPPED
        return encode_message(Bye(reason="agent stopping")) if say_bye else None

    # --- inputs -------------------------------------------------------------------------

    def receive(self, data: bytes, now: float) -> None:
        """Bytes from the host: handle every complete message in them."""
        if self._state in (ConnectionState.DISCONNECTED, ConnectionState.STOPPED) or not data:
            return
        self._last_heard_at = now
        for item in self._reader.feed(data):
            self._handle(item, now)

    def tick(self, now: float) -> None:
        """Run the timers: hello retries, keepalive pings, the refused-input log."""
        self._refused.flush(now)
        if self._state is ConnectionState.HELLO_SENT:
            if now >= self._hello_due_at:
                LOG.debug("no welcome yet; sending hello again")
                self._send_hello(now)
            return
        if self._state is not ConnectionState.ACTIVE:
            return
        if self._ping_nonce is not None:
            if now - self._ping_sent_at >= self.config.keepalive_s:
                self._handshake_again(
                    f"the host did not answer a ping within {self.config.keepalive_s:.0f} s", now
                )
        elif now - self._last_heard_at >= self.config.keepalive_s:
            self._ping_nonce = int(now * 1000) & 0xFFFFFFFF
            self._ping_sent_at = now
            self._send(Ping(nonce=self._ping_nonce))

    def sample_failed(self, why: str, now: float) -> None:
        """The guest's memory state could not be read: no report until it can."""
        # Said once, not every half second, until reading works again.
        if not self._collect_failing:
            LOG.error("%s; no reports until it can be read again", why)
            self._collect_failing = True
        self._next_sample_at = now + self.interval_s

    def sampled(self, sample: MemorySample, now: float) -> None:
        """A sample taken because :meth:`sample_due`: report, offer, need as due."""
        if self._state is not ConnectionState.ACTIVE:
            return
        if self._collect_failing:
            LOG.info("the guest's memory state can be read again")
            self._collect_failing = False
        next_report_at = self._next_report_at
        previous = self._previous
        elapsed_s = sample.monotonic_s - previous.monotonic_s if previous is not None else 0.0
        yield_config = self.config.yield_config
        was_held = self._cold_cache.held(sample.monotonic_s)
        cold_kib = self._cold_cache.cap_kib(previous, sample, elapsed_s, yield_config)
        if not was_held and self._cold_cache.held(sample.monotonic_s):
            LOG.info("evicted pages are being read back: the page cache is in use, "
                     "not offered for %.0f s", yield_config.cache_hold_s)
        assessment = assess(previous, sample, elapsed_s, yield_config, cache_cap_kib=cold_kib)
        self._previous = sample
        self.last_assessment = assessment

        due = now >= next_report_at
        early_allowed = now - self._last_report_at >= MIN_EARLY_REPORT_GAP_S
        if due or (early_allowed and self._changed_a_lot(sample)):
            self._send(Report(seq=self._next_seq(), **sample.report_fields()))
            self.counters.reports_sent += 1
            self._last_reported = sample
            self._last_report_at = now
            self._next_report_at = (next_report_at + self.interval_s) if due else next_report_at
            if self._next_report_at <= now:
                # Fell behind (a stalled guest): restart the schedule instead of bursting.
                self._next_report_at = now + self.interval_s
        self._send_offer_need(sample, assessment, cold_kib)
        if self.yield_capable and self._may_yield and assessment.need is None:
            self._yield_work.append(BackgroundYieldDue(now, cold_kib))
        watch_s = self.config.watch_interval_s
        if self._calm(previous, sample, assessment):
            watch_s *= 2
        self._next_sample_at = min(self._next_report_at, now + min(self.interval_s, watch_s))

    def yielded(self, answers: List[Optional[Yielded]]) -> None:
        """What yields gave back: sent if the session still agrees on yield."""
        for msg in answers:
            if msg is not None and self._state is ConnectionState.ACTIVE and self._may_yield:
                self._send(msg)

    # --- connecting ---------------------------------------------------------------------

    def _send_hello(self, now: float) -> None:
        """Start a new session: sequence numbers restart at 0 (PROTOCOL.md 4.3)."""
        self._seq = 0
        hello = Hello(
            agent_version=__version__,
            protocol_versions=SUPPORTED_VERSIONS,
            capabilities=tuple(c for c in CAPABILITIES if c != "yield" or self.yield_capable),
            hostname=self.config.hostname[:255] or None,
        )
        if self._send(hello):
            self.counters.hellos_sent += 1
            self._hello_sent_at = now
            self._hello_due_at = now + self._hello_retry_s
            self._hello_retry_s = min(self.config.hello_retry_max_s, self._hello_retry_s * 2)

    def _handshake_again(self, why: str, now: float) -> None:
        """Back to HELLO_SENT on the open transport, with a hello now."""
        LOG.info("%s; saying hello again", why)
        self._hello_retry_s = self.config.hello_retry_min_s
        self._set_state(ConnectionState.HELLO_SENT)
        self._send_hello(now)

    def _next_backoff_s(self) -> float:
        """The current wait, doubling the next one up to the maximum."""
        longest_s = self.config.backoff_max_s
        if self.reopen_max_s is not None:
            longest_s = min(longest_s, self.reopen_max_s)
        wait_s = min(self._backoff_s, longest_s)
        self._backoff_s = min(longest_s, self._backoff_s * 2)
        return wait_s

    def _log_absence(self, fmt: str, err: object) -> None:
        # Said once at INFO; the retries every few seconds only at DEBUG.
        if self._absence_logged:
            LOG.debug(fmt, err)
        else:
            LOG.info(fmt, err)
            self._absence_logged = True

    def _start_session(self, welcome: Welcome, now: float) -> None:
        self.interval_s = welcome.report_interval_ms / 1000.0
        self._backoff_s = self.config.backoff_min_s
        self._absence_logged = False
        self._ping_nonce = None
        self._last_heard_at = now
        self._last_reported = None
        self._last_offer_kib = None
        self._last_cold_kib = None
        self._last_need = None
        self._next_report_at = now
        self._next_sample_at = now
        if self.has_yielder:
            self._yield_work.append(PressureChanged(0, "new session"))  # PROTOCOL.md 4.7
        self._apply_capabilities(welcome)
        self.counters.welcomes += 1
        self._set_state(ConnectionState.ACTIVE)
        LOG.info(
            "connected to the host through %s: protocol %d, report every %d ms",
            self.description,
            welcome.protocol_version,
            welcome.report_interval_ms,
        )

    # --- what the host sends ---------------------------------------------------------------

    def _handle(self, item: object, now: float) -> None:
        if isinstance(item, ProtocolError):
            self.counters.protocol_errors += 1
            self._refused.record(item, now)
            if needs_error_reply(item):
                self._reply_error(error_reply(item), now)
            return
        hello_sent = self._state is ConnectionState.HELLO_SENT
        if hello_sent and not isinstance(item, (Welcome, Error, Bye)):
            self._nudge_hello(now)
        if isinstance(item, Welcome):
            self._on_welcome(item, now)
        elif isinstance(item, Ping):
            self._send(Pong(nonce=item.nonce))
        elif isinstance(item, Pong):
            if item.nonce == self._ping_nonce:
                self._ping_nonce = None
        elif isinstance(item, Decision):
            self.last_decision = item
            LOG.info(
                "host set this guest's balloon target to %d KiB: %s",
                item.balloon_target_kib,
                item.reason,
            )
        elif isinstance(item, Request):
            self._on_request(item, now)
        elif isinstance(item, Pressure):
            if self.has_yielder:
                self._yield_work.append(PressureChanged(item.level, item.reason))
        elif isinstance(item, Bye):
            # PROTOCOL.md 4.4: back to the handshake, first hello after the usual wait.
            LOG.info("the host said bye (%s); waiting for it to come back", item.reason)
            self.counters.disconnects += 1
            self._hello_retry_s = self.config.hello_retry_min_s
            self._set_state(ConnectionState.HELLO_SENT)
            self._hello_due_at = now + self._hello_retry_s
        elif isinstance(item, Error):
            self.counters.errors_received += 1
            if item.code == HELLO_REQUIRED:
                if self._state is ConnectionState.ACTIVE:
                    self._handshake_again(
                        "the host has no session for this guest (restarted?)", now)
                else:
                    self._nudge_hello(now)
                return
            LOG.warning(
                "the host refused a %s message: %s: %s",
                printable(item.ref_type or "(unknown)"),
                item.code,
                printable(item.message),
            )
        else:
            assert isinstance(item, (Hello, Report, Offer, Need, Yielded))
            self._reply_error(
                Error(
                    code="unexpected_message",
                    message=f"a {item.TYPE} message is sent by the guest, not the host",
                    ref_type=item.TYPE,
                ),
                now,
            )

    def _on_welcome(self, welcome: Welcome, now: float) -> None:
        if welcome.protocol_version not in SUPPORTED_VERSIONS:
            LOG.error(
                "the host chose protocol version %d; this agent speaks %s: upgrade ebb-agent",
                welcome.protocol_version,
                ", ".join(str(v) for v in SUPPORTED_VERSIONS),
            )
            self._reply_error(
                Error(
                    code="unsupported_version",
                    message=f"agent speaks protocol versions {list(SUPPORTED_VERSIONS)}",
                    ref_type=Welcome.TYPE,
                ),
                now,
            )
            return
        if self._state is ConnectionState.ACTIVE:
            # An unasked welcome changes the interval or capabilities, not the session.
            self.interval_s = welcome.report_interval_ms / 1000.0
            self._apply_capabilities(welcome)
            self._next_report_at = min(self._next_report_at, now + self.interval_s)
            self._next_sample_at = min(self._next_sample_at, self._next_report_at)
            LOG.info("the host changed the report interval to %d ms", welcome.report_interval_ms)
        else:
            self._start_session(welcome, now)
        self._statuses.append(f"STATUS=reporting to the host every {welcome.report_interval_ms} ms")

    def _apply_capabilities(self, welcome: Welcome) -> None:
        # PROTOCOL.md 4.6: offer and need only when the host said it acts on them.
        self._may_offer = "offer" in welcome.capabilities
        self._may_need = "need" in welcome.capabilities
        self._may_yield = "yield" in welcome.capabilities

    def _nudge_hello(self, now: float) -> None:
        """The host is there but has not welcomed us: say hello now (at most once a second)."""
        if now - self._hello_sent_at >= HELLO_NUDGE_GAP_S:
            self._hello_retry_s = self.config.hello_retry_min_s
            self._send_hello(now)

    def _on_request(self, request: Request, now: float) -> None:
        if request.kind == PREPARE_RELEASE:
            # The agent does not drop caches or touch the guest: the offer already
            # counts clean cache the kernel reclaims itself when the balloon inflates.
            # It answers with a fresh offer so the host sees what it may take now.
            LOG.info("host asks to prepare a release of %d KiB; re-offering now", request.kib)
            self._force_offer = True
            self._next_sample_at = now
            return
        if request.kind == REQUEST_YIELD and self.has_yielder:
            LOG.info("host asks for a yield of %d KiB (request %s)", request.kib,
                     request.request_id)
            self._yield_work.append(
                YieldRequested(request.kib, request.request_id, request.deadline_ms))
            return
        self._reply_error(
            Error(
                code="unknown_request",
                message=f"request kind {request.kind!r} is not supported by this agent",
                ref_type=Request.TYPE,
            ),
            now,
        )

    def _reply_error(self, error: Error, now: float) -> None:
        if self._error_budget.take(now):
            if self._send(error):
                self.counters.errors_sent += 1
        else:
            LOG.debug("not answering %s: error replies are rate-limited", error.code)

    # --- what the agent sends ----------------------------------------------------------

    def _next_seq(self) -> int:
        """One counter for report, offer and need; 0 first after each hello."""
        seq = self._seq
        self._seq += 1
        return seq

    def _calm(self, previous: Optional[MemorySample], sample: MemorySample,
              assessment: Assessment) -> bool:
        """Nothing is moving: the watch between reports may slow down."""
        if previous is None or assessment.need is not None:
            return False
        if sample.psi_some_avg10:
            return False
        if sample.pswpin != previous.pswpin or sample.pswpout != previous.pswpout:
            return False
        moved_kib = abs(sample.mem_available_kib - previous.mem_available_kib)
        return moved_kib < self.config.calm_change_fraction * sample.mem_total_kib

    def _changed_a_lot(self, sample: MemorySample) -> bool:
        last = self._last_reported
        if last is None:
            return True
        moved_kib = abs(sample.mem_available_kib - last.mem_available_kib)
        if moved_kib > self.config.big_change_fraction * sample.mem_total_kib:
            return True
        if sample.psi_some_avg10 is not None:
            before = last.psi_some_avg10 or 0.0
            if sample.psi_some_avg10 - before >= self.config.psi_rise_pct:
                return True
        return False

    def _send_offer_need(self, sample: MemorySample, assessment: Assessment,
                         cold_kib: int) -> None:
        total = sample.mem_total_kib
        if self._may_need and need_changed(self._last_need, assessment.need, total):
            need = assessment.need
            if need is None:
                msg = Need(seq=self._next_seq(), kib=0, urgency="low", reason="recovered")
            else:
                msg = Need(
                    seq=self._next_seq(), kib=need.kib, urgency=need.urgency,
                    reason=need.reason[:256],
                )
            if not self._send(msg):
                return
            self.counters.needs_sent += 1
            self._last_need = need
            if need is not None:
                LOG.info("asking the host for %d KiB (%s): %s", need.kib, need.urgency,
                         need.reason)
        if not self._may_offer:
            return
        cold_kib -= cold_kib % MIB_KIB
        if (self._force_offer
                or offer_changed(self._last_offer_kib, assessment.offer_kib, total)
                or offer_changed(self._last_cold_kib, cold_kib, total)):
            offer = Offer(seq=self._next_seq(), kib=assessment.offer_kib, cold_kib=cold_kib)
            if not self._send(offer):
                return
            self.counters.offers_sent += 1
            self._last_offer_kib = assessment.offer_kib
            self._last_cold_kib = cold_kib
            self._force_offer = False

    def _send(self, msg: Message) -> bool:
        """Queue one message for the host; False only if it cannot be encoded."""
        try:
            self._frames.append(encode_message(msg))
        except ProtocolError as err:  # only a bug could build an unencodable message
            LOG.error("cannot encode a %s message: %s", msg.TYPE, err)
            return False
        return True

    def _set_state(self, state: ConnectionState) -> None:
        if state is not self._state:
            LOG.debug("state %s -> %s", self._state.value, state.value)
            if state is ConnectionState.DISCONNECTED and self._state is ConnectionState.ACTIVE:
                self._statuses.append(f"STATUS=waiting for the host on {self.description}")
            self._state = state
