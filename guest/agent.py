"""The agent's I/O loop: drives an :class:`~ebb.guest.session.AgentSession` over a transport.

One thread, one loop: wait on the transport (and a stop pipe) until the session's
next deadline, feed it what the host sent and the time, take a sample when it asks,
run the yield work it hands out on the :class:`~ebb.guest.yielder.Yielder`, and write
the frames it queued. Every protocol rule (handshake, schedule, sequence numbers,
keepalive, backoff) is the session's; this module only moves bytes, reads the
clock and the collector, and waits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import time
from typing import Callable, Optional

from .collect import CollectError, MemoryCollector
from .session import (
    AgentConfig,
    AgentCounters,
    AgentSession,
    BackgroundYieldDue,
    ConnectionState,
    PressureChanged,
    YieldRequested,
)
from .transport import Transport, TransportError
from .yielder import Yielder

__all__ = ["Agent", "AgentConfig", "AgentCounters", "ConnectionState"]

LOG = logging.getLogger(__name__)


class Agent:
    """Talks to the host over ``transport``, reporting what ``collector`` reads.

    Call :meth:`run` (blocks until :meth:`stop`); :meth:`stop` may be called from
    another thread or a signal handler. ``notify`` receives systemd notification
    strings (``READY=1``, ``STATUS=...``, ``STOPPING=1``). ``sleep``, when given,
    replaces the waits between reopen attempts (tests pass a fake clock's); by
    default they poll the stop pipe so :meth:`stop` ends them at once.
    """

    def __init__(
        self,
        transport: Transport,
        collector: MemoryCollector,
        config: Optional[AgentConfig] = None,
        notify: Optional[Callable[[str], object]] = None,
        clock: Callable[[], float] = time.monotonic,
        yielder: Optional[Yielder] = None,
        sleep: Optional[Callable[[float], None]] = None,
    ) -> None:
        self.transport = transport
        #: Runs yields (reclaim in the guest); None: the agent never yields.
        self.yielder = yielder
        self.collector = collector
        self.config = config if config is not None else AgentConfig()
        self.session = AgentSession(
            self.config,
            description=transport.description,
            reopen_max_s=transport.reopen_max_s,
            has_yielder=yielder is not None,
            yield_capable=yielder is not None and yielder.capable,
        )
        self._notify = notify
        self._clock = clock
        self._sleep = sleep
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)

    # --- public -------------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        """The current connection state."""
        return self.session.state

    @property
    def counters(self) -> AgentCounters:
        """What the agent has done since it started."""
        return self.session.counters

    def stop(self) -> None:
        """Ask :meth:`run` to say bye and return; safe from signal handlers and threads."""
        self._stopping = True
        if self._wake_w < 0:
            return  # already closed
        # A full pipe means a wake-up is already pending.
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"x")

    def run(self) -> None:
        """Talk to the host until :meth:`stop` is called. Never raises on host input."""
        self._tell("READY=1")
        self._tell(f"STATUS=connecting through {self.transport.description}")
        try:
            while not self._stopping:
                self._step()
        finally:
            self._shutdown()

    def close(self) -> None:
        """Release the stop pipe; call after :meth:`run` has returned (or never ran)."""
        fds, self._wake_r, self._wake_w = (self._wake_r, self._wake_w), -1, -1
        for fd in fds:
            if fd >= 0:
                os.close(fd)

    # --- the loop -------------------------------------------------------------------

    def _step(self) -> None:
        """One turn: reopen when due, or wait for host bytes until the session's deadline."""
        session = self.session
        if session.state is ConnectionState.DISCONNECTED:
            wait_s = session.wake_at() - self._clock()
            if wait_s > 0:
                self._wait(wait_s)
            else:
                self._connect()
            return
        timeout_s = max(0.0, self._deadline() - self._clock())
        try:
            data = self.transport.read(timeout_s, self._wake_r)
        except TransportError as err:
            self._lost(str(err))
            return
        self._drain_wake()
        now = self._clock()
        if data:
            session.receive(data, now)
            self._run_yield_work()
        # stop() may have come during the read: then only the bye is left to send.
        if not self._stopping and self._talking():
            session.tick(now)
            if self._yield_busy():
                assert self.yielder is not None
                session.yielded([self.yielder.step()])
            if session.sample_due(now):
                try:
                    sample = self.collector.sample()
                except CollectError as err:
                    session.sample_failed(str(err), now)
                else:
                    session.sampled(sample, now)
            self._run_yield_work()
        self._flush()

    def _talking(self) -> bool:
        return self.session.state in (ConnectionState.HELLO_SENT, ConnectionState.ACTIVE)

    def _deadline(self) -> float:
        if self._yield_busy():
            return self._clock()  # the next step of a yield, after answering the host
        return self.session.wake_at()

    def _yield_busy(self) -> bool:
        """A yield is under way and the session is reporting: step it on every turn."""
        return (self.yielder is not None and self.yielder.busy
                and self.session.state is ConnectionState.ACTIVE)

    def _connect(self) -> None:
        """Open the transport: the session says hello; on failure it schedules a retry."""
        try:
            self.transport.open()
        except TransportError as err:
            self.session.open_failed(str(err), self._clock())
            return
        self.session.opened(self._clock())
        self._flush()

    def _run_yield_work(self) -> None:
        yielder = self.yielder
        for work in self.session.take_yield_work():
            if yielder is None:
                continue
            if isinstance(work, PressureChanged):
                yielder.set_pressure(work.level, work.reason)
            elif isinstance(work, YieldRequested):
                self.session.yielded(
                    list(yielder.request(work.kib, work.request_id, work.deadline_ms)))
            elif isinstance(work, BackgroundYieldDue):
                yielder.background(work.now_s, work.cold_kib)

    def _flush(self) -> None:
        """Write what the session queued; a failed write means the host end is gone."""
        for status in self.session.take_statuses():
            self._tell(status)
        for frame in self.session.take_frames():
            try:
                self.transport.write(frame, self.config.write_timeout_s)
            except TransportError as err:
                self._lost(str(err))
                return

    def _lost(self, why: str) -> None:
        self.transport.close()
        self.session.lost(why, self._clock())
        for status in self.session.take_statuses():
            self._tell(status)

    # --- small helpers ---------------------------------------------------------------

    def _tell(self, status: str) -> None:
        if self._notify is not None:
            try:
                self._notify(status)
            except Exception as err:  # a notification must never stop the agent
                LOG.debug("notify(%r) failed: %s", status, err)

    def _wait(self, timeout_s: float) -> None:
        """Sleep up to ``timeout_s``, waking at once when stop() is called."""
        if self._stopping:
            return
        if self._sleep is not None:
            self._sleep(timeout_s)
            return
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        poller.poll(max(1, int(timeout_s * 1000 + 0.999)))
        self._drain_wake()

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 64):
                pass
        except BlockingIOError:
            pass

    def _shutdown(self) -> None:
        self._tell("STOPPING=1")
        bye = self.session.stop()
        if self.transport.is_open:
            if bye is not None:
                try:
                    self.transport.write(bye, min(1.0, self.config.write_timeout_s))
                except TransportError as err:
                    LOG.debug("could not say bye: %s", err)
            self.transport.close()
        LOG.info("stopped")
