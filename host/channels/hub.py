"""All guest channels on one thread: connect, read, write, back off.

:class:`GuestChannels` owns one unix socket per running VM that has an agent
channel (QEMU listens on it; we connect). A single thread waits on all of them
with a selector. Fairness between guests comes from three rules:

- each wakeup reads at most ``read_chunk_bytes`` from each ready guest, so a
  guest that floods cannot starve the others of the loop;
- writes never block: each guest has a bounded output buffer, and a guest that
  does not read loses messages, not the host's time;
- a guest past its limits (see :class:`ChannelLimits`) is cut off: its socket
  is closed for a growing backoff, with one WARNING naming the VM.

Other threads talk to the loop only through :meth:`set_guests`,
:meth:`send_decision` (queued, then the loop is woken) and :meth:`snapshot`
(copies taken under a lock).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, List, Mapping, Optional

from ebb.protocol import Decision, Message, Request, encode_message

from ..threads import join_thread, start_thread
from .session import CutOff, GuestSession
from .state import ChannelLimits, GuestChannelState, SessionState
from .yields import (
    BUSY,
    NO_AGENT,
    NO_CAPABILITY,
    NOT_SENT,
    TIMED_OUT,
    UNKNOWN_VM,
    YieldHandle,
    YieldUnavailable,
)

LOG = logging.getLogger(__name__)

#: Timers (pings, staleness, reconnects) run at most this often.
TIMER_GRANULARITY_S = 0.2

#: Opens a connected, non-blocking socket to a channel path; raises OSError.
Connector = Callable[[str], socket.socket]


def connect_unix(path: str) -> socket.socket:
    """Connect to the unix socket QEMU created for a guest's channel."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        # A local connect completes at once or fails; it never waits on the peer.
        sock.settimeout(1.0)
        sock.connect(path)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


@dataclass
class _Channel:
    """The hub's side of one guest: its socket and buffers."""

    session: GuestSession
    path: Optional[str] = None
    sock: Optional[socket.socket] = None
    outbox: bytearray = field(default_factory=bytearray)
    next_connect_mono: float = 0.0
    connect_backoff_s: float = 0.0
    connect_failures: int = 0
    stale_logged: bool = False
    writing: bool = False


class GuestChannels:
    """Every guest's agent channel, served by one thread.

    ``on_need(vm)`` is called from the channel thread when a guest reports a
    need; it must be quick (the engine sets an event).
    """

    def __init__(
        self,
        limits: Optional[ChannelLimits] = None,
        on_need: Optional[Callable[[str], None]] = None,
        connector: Connector = connect_unix,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.limits = limits or ChannelLimits()
        self._on_need = on_need
        self._connector = connector
        self._clock = clock
        self._wall = wall_clock
        self._channels: Dict[str, _Channel] = {}
        self._lock = threading.Lock()
        self._commands: Deque[Callable[[], None]] = collections.deque()
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._closed = False
        self._timers_due_mono: Optional[float] = None
        self._host_level = 0
        self._host_level_reason = "host has memory to spare"

    # --- API for other threads ----------------------------------------------------

    def set_guests(self, paths: Mapping[str, Optional[str]]) -> None:
        """The VMs to talk to, by name, with their channel socket paths.

        A VM missing from ``paths`` is forgotten (its socket closed); ``None`` as
        a path keeps the VM known (so status can show "no agent") without a socket.
        """
        wanted = dict(paths)
        self._call(lambda: self._apply_guests(wanted))

    def send_decision(self, vm: str, balloon_target_kib: int, reason: str) -> None:
        """Tell a guest's agent its new balloon target (if it takes decisions)."""
        decision = Decision(balloon_target_kib=int(balloon_target_kib), reason=reason[:256])
        self._call(lambda: self._send_if(vm, decision, capability="decision"))

    def send(self, vm: str, msg: Message) -> None:
        """Send any host message to a guest in session (queued; never blocks)."""
        self._call(lambda: self._send_if(vm, msg, capability=None))

    def set_pressure(self, level: int, reason: str) -> None:
        """The host's pressure level (0..3): every agent that agreed ``yield`` is
        told when it changes, and a new session is told after its welcome."""
        level = max(0, min(3, int(level)))
        self._call(lambda: self._apply_pressure(level, reason))

    def request_yield(self, vm: str, kib: int, deadline_ms: int) -> YieldHandle:
        """Ask ``vm``'s agent to yield ``kib`` KiB within ``deadline_ms``.

        Returns a handle to wait on. Raises :class:`YieldUnavailable` when the VM
        is unknown, has no agent in session, did not agree ``yield``, or already
        has a request outstanding (at most one per guest).
        """
        kib = max(0, int(kib))
        deadline_ms = max(1, min(600_000, int(deadline_ms)))
        now = self._clock()
        with self._lock:
            ch = self._channels.get(vm)
            if ch is None:
                raise YieldUnavailable(UNKNOWN_VM, f"no guest channel known for VM {vm!r}")
            session = ch.session
            if ch.sock is None or session.state is not SessionState.ACTIVE:
                raise YieldUnavailable(
                    NO_AGENT, f"VM {vm!r} has no ebb-agent in session ({session.state.value})"
                )
            if not session.may_yield():
                raise YieldUnavailable(
                    NO_CAPABILITY,
                    f"the agent of VM {vm!r} cannot yield (no yield capability: kernel "
                    "without cgroup2 memory.reclaim, or started with --no-yield)",
                )
            pending = session.pending_yield
            if pending is not None:
                raise YieldUnavailable(
                    BUSY,
                    f"VM {vm!r} already has a yield request outstanding (#{pending.request_id},"
                    f" {max(0.0, pending.deadline_mono - now):.1f} s left)",
                )
            request_id = session.next_request_id
            session.next_request_id = (request_id + 1) & 0xFFFFFFFF
            handle = YieldHandle(vm, request_id, kib, deadline_ms, now)
            session.pending_yield = handle
        self._call(lambda: self._send_yield(vm, handle))
        return handle

    def update_limits(self, limits: ChannelLimits) -> None:
        """A reload's limits (any thread): the channel thread swaps them in whole.

        Every session gets the new object at once, so a guest is never judged by
        half old, half new limits; when the report interval changed, every agent
        in session is welcomed again with it.
        """
        self._call(lambda: self._apply_limits(limits))

    def _apply_limits(self, limits: ChannelLimits) -> None:
        with self._lock:
            old, self.limits = self.limits, limits
            for ch in self._channels.values():
                ch.session.limits = limits
            if old.report_interval_ms != limits.report_interval_ms:
                self._welcome_all()

    def _welcome_all(self) -> None:
        for ch in self._channels.values():
            frame = ch.session.welcome_again()
            if frame is not None:
                self._queue(ch, frame)

    def snapshot(self) -> Dict[str, GuestChannelState]:
        """Copies of every known guest's channel state."""
        now = self._clock()
        with self._lock:
            return {
                vm: ch.session.snapshot(now, connected=ch.sock is not None)
                for vm, ch in self._channels.items()
            }

    def get(self, vm: str) -> Optional[GuestChannelState]:
        """One guest's channel state, or None when the VM is not known."""
        now = self._clock()
        with self._lock:
            ch = self._channels.get(vm)
            return None if ch is None else ch.session.snapshot(now, ch.sock is not None)

    # --- running ---------------------------------------------------------------

    def start(self, on_crash: Optional[Callable[[BaseException], None]] = None) -> None:
        """Serve every channel in a background thread until :meth:`stop`."""

        def serve() -> None:
            while not self._stop.is_set():
                self.step(1.0)

        self._thread = start_thread("ebbd-channels", serve, LOG, "guest channel", on_crash)

    @property
    def thread(self) -> Optional[threading.Thread]:
        return self._thread

    def stop(self) -> None:
        """Stop the thread and close every socket (the agents reconnect later)."""
        self._stop.set()
        self._wake()
        join_thread(self._thread)
        self.close()

    def close(self) -> None:
        """Close every socket and the selector (after :meth:`stop`, or in tests)."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            for ch in self._channels.values():
                self._close_socket(ch)
        self._selector.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def step(self, max_wait_s: float) -> None:
        """One turn of the loop: wait for input or a timer, handle it (tests call this)."""
        now = self._clock()
        if self._timers_due_mono is None:
            self._timers_due_mono = self._next_timer_mono(now)
        wait_s = max(0.0, min(max_wait_s, self._timers_due_mono - now))
        events = self._selector.select(wait_s)
        if self._commands:
            self._timers_due_mono = float("-inf")  # a new guest may need connecting now
        for key, mask in events:
            ch = key.data
            if ch is None:
                self._drain_wake()
                continue
            if mask & selectors.EVENT_READ and ch.sock is not None:
                self._read(ch)
            if mask & selectors.EVENT_WRITE and ch.sock is not None:
                with self._lock:
                    self._flush(ch)
        self._run_commands()
        now = self._clock()
        # Timers (connects, pings, staleness, cut-off ends) are looked at when one
        # is due, at most every TIMER_GRANULARITY_S, not on every report received:
        # with dozens of guests reporting every second that is most wakeups.
        if self._timers_due_mono is None or now >= self._timers_due_mono:
            self._timers(now)
            self._timers_due_mono = max(
                self._next_timer_mono(now), now + TIMER_GRANULARITY_S
            )

    # --- commands ----------------------------------------------------------------

    def _call(self, command: Callable[[], None]) -> None:
        self._commands.append(command)
        self._wake()

    def _wake(self) -> None:
        # BlockingIOError: a wakeup is already pending; OSError: we are closed.
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _run_commands(self) -> None:
        while self._commands:
            command = self._commands.popleft()
            command()

    def _apply_guests(self, wanted: Dict[str, Optional[str]]) -> None:
        with self._lock:
            for vm in list(self._channels):
                if vm not in wanted:
                    self._close_socket(self._channels.pop(vm))
            for vm, path in wanted.items():
                ch = self._channels.get(vm)
                if ch is None:
                    session = GuestSession(vm, self.limits, on_need=self._on_need)
                    session.set_host_level(self._host_level, self._host_level_reason)
                    ch = self._channels[vm] = _Channel(session=session)
                if ch.path != path:
                    if ch.sock is not None:
                        self._close_socket(ch)
                        ch.session.disconnected()
                    ch.path = path
                    ch.session.socket_path = path
                    # A new path (VM restarted, channel added): try at once.
                    ch.next_connect_mono = 0.0
                    ch.connect_backoff_s = 0.0
                    ch.connect_failures = 0

    def _apply_pressure(self, level: int, reason: str) -> None:
        with self._lock:
            self._host_level, self._host_level_reason = level, reason
            for ch in self._channels.values():
                ch.session.set_host_level(level, reason)
                frame = ch.session.due_pressure() if ch.sock is not None else None
                if frame is not None:
                    self._queue(ch, frame)

    def _send_yield(self, vm: str, handle: YieldHandle) -> None:
        with self._lock:
            ch = self._channels.get(vm)
            if ch is None or ch.session.pending_yield is not handle:
                handle.fail(NOT_SENT)
                return
            if ch.sock is None or not ch.session.may_yield():
                ch.session.end_pending_yield(NOT_SENT)
                return
            dropped = ch.session.dropped_outgoing
            self._queue(
                ch,
                encode_message(
                    Request(
                        kind="yield",
                        kib=handle.asked_kib,
                        request_id=handle.request_id,
                        deadline_ms=handle.deadline_ms,
                    )
                ),
            )
            if ch.session.dropped_outgoing != dropped:
                ch.session.end_pending_yield(NOT_SENT)

    def _send_if(self, vm: str, msg: Message, capability: Optional[str]) -> None:
        with self._lock:
            ch = self._channels.get(vm)
            if ch is None or ch.sock is None or ch.session.state is not SessionState.ACTIVE:
                return
            if capability is not None and capability not in ch.session.capabilities:
                return
            self._queue(ch, encode_message(msg))

    # --- sockets -------------------------------------------------------------------

    def _connect(self, ch: _Channel, now: float) -> None:
        assert ch.path is not None
        try:
            sock = self._connector(ch.path)
        except OSError as err:
            ch.connect_failures += 1
            base = self.limits.connect_retry_s
            ch.connect_backoff_s = min(
                self.limits.connect_retry_max_s,
                base if ch.connect_backoff_s == 0.0 else ch.connect_backoff_s * 2,
            )
            ch.next_connect_mono = now + ch.connect_backoff_s
            log = LOG.info if ch.connect_failures == 1 else LOG.debug
            why = err.strerror or str(err)
            if err.errno == errno.EAGAIN:
                # QEMU serves one client per channel and queues the next.
                why += " (another program, perhaps a second ebbd, holds this channel)"
            log(
                "guest %s: cannot open agent channel %s: %s; retrying in %.0f s",
                ch.session.vm, ch.path, why, ch.connect_backoff_s,
            )
            return
        sock.setblocking(False)
        ch.sock = sock
        ch.outbox = bytearray()
        ch.writing = False
        ch.connect_failures = 0
        ch.connect_backoff_s = 0.0
        ch.stale_logged = False
        ch.session.connected(now)
        self._selector.register(sock, selectors.EVENT_READ, ch)
        LOG.debug("guest %s: agent channel %s open", ch.session.vm, ch.path)

    def _close_socket(self, ch: _Channel) -> None:
        if ch.sock is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(ch.sock)
        ch.sock.close()
        ch.sock = None
        ch.outbox = bytearray()
        ch.writing = False

    def _lost(self, ch: _Channel, why: str) -> None:
        """The socket closed under us: the VM stopped or QEMU went away."""
        LOG.info("guest %s: agent channel closed (%s); reconnecting", ch.session.vm, why)
        self._close_socket(ch)
        ch.session.disconnected()
        ch.next_connect_mono = self._clock() + self.limits.connect_retry_s
        ch.connect_backoff_s = self.limits.connect_retry_s

    def _read(self, ch: _Channel) -> None:
        assert ch.sock is not None
        try:
            data = ch.sock.recv(self.limits.read_chunk_bytes)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:
            with self._lock:
                self._lost(ch, err.strerror or str(err))
            return
        with self._lock:
            if not data:
                self._lost(ch, "end of stream")
                return
            try:
                replies = ch.session.feed(data, self._clock(), self._wall())
            except CutOff as cut:
                self._cut_off(ch, cut.reason)
                return
            for frame in replies:
                self._queue(ch, frame)

    def _cut_off(self, ch: _Channel, reason: str) -> None:
        backoff_s = ch.session.cut_off(reason, self._clock(), self._wall())
        self._close_socket(ch)
        LOG.warning(
            "guest %s cut off: %s; ignoring its channel for %.0f s",
            ch.session.vm, reason, backoff_s,
            extra={"VM": ch.session.vm, "ACTION": "cut-off", "REASON": reason},
        )

    def _queue(self, ch: _Channel, frame: bytes) -> None:
        if ch.sock is None:
            return
        if len(ch.outbox) + len(frame) > self.limits.max_output_bytes:
            ch.session.dropped_outgoing += 1
            if ch.session.dropped_outgoing == 1:
                LOG.warning(
                    "guest %s does not read its channel; dropping messages to it",
                    ch.session.vm, extra={"VM": ch.session.vm},
                )
            return
        ch.outbox += frame
        self._flush(ch)

    def _flush(self, ch: _Channel) -> None:
        if ch.sock is None:
            return
        while ch.outbox:
            try:
                sent = ch.sock.send(ch.outbox)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as err:
                self._lost(ch, err.strerror or str(err))
                return
            del ch.outbox[:sent]
        want_write = bool(ch.outbox)
        if want_write != ch.writing:
            ch.writing = want_write
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want_write else 0)
            self._selector.modify(ch.sock, events, ch)

    # --- timers ----------------------------------------------------------------------

    def _next_timer_mono(self, now: float) -> float:
        soonest = now + 1.0
        with self._lock:
            for ch in self._channels.values():
                session = ch.session
                if session.state is SessionState.CUT_OFF:
                    if session.cut_off_until_mono is not None:
                        soonest = min(soonest, session.cut_off_until_mono)
                elif ch.sock is None and ch.path is not None:
                    soonest = min(soonest, ch.next_connect_mono)
                elif session.next_ping_mono is not None:
                    soonest = min(soonest, session.next_ping_mono)
                if session.pending_yield is not None:
                    soonest = min(soonest, session.pending_yield.deadline_mono)
        return soonest

    def _timers(self, now: float) -> None:
        with self._lock:
            for ch in self._channels.values():
                session = ch.session
                if session.state is SessionState.CUT_OFF:
                    if session.cut_off_until_mono is not None and now >= session.cut_off_until_mono:
                        LOG.info("guest %s: cut-off over; reconnecting", session.vm)
                        session.cut_off_over()
                        ch.next_connect_mono = now
                    else:
                        continue
                if ch.sock is None:
                    if ch.path is not None and now >= ch.next_connect_mono:
                        self._connect(ch, now)
                    continue
                pending = session.pending_yield
                if pending is not None and now >= pending.deadline_mono:
                    LOG.info(
                        "guest %s: yield request #%d (%d KiB) not answered within %d ms",
                        session.vm, pending.request_id, pending.asked_kib, pending.deadline_ms,
                        extra={"VM": session.vm, "ACTION": "yield-timeout"},
                    )
                    session.end_pending_yield(TIMED_OUT)
                session.refused.flush(now)
                ping = session.due_ping(now)
                if ping is not None:
                    self._queue(ch, ping)
                stale = session.is_stale(now)
                if stale and not ch.stale_logged:
                    ch.stale_logged = True
                    LOG.warning(
                        "guest %s: agent silent for %.0f s (no report, no pong): stale",
                        session.vm, self.limits.stale_after_s, extra={"VM": session.vm},
                    )
                elif not stale and ch.stale_logged:
                    ch.stale_logged = False
                    LOG.info("guest %s: agent reporting again", session.vm)
                if (
                    session.cut_offs
                    and session.state is SessionState.ACTIVE
                    and session.session_age_s(now) > self.limits.cut_off_backoff_max_s
                ):
                    session.reset_backoff()


__all__: List[str] = ["Connector", "GuestChannels", "connect_unix"]
