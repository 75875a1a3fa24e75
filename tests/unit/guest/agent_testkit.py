"""Helpers for the agent's tests: a fake /proc tree and clock, a session driven on
that clock, a scripted transport for the I/O loop, a host end over a real socket.

Imported by the test modules; the fixtures that use them are in conftest.py.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Type, TypeVar

from ebb.guest.agent import Agent, AgentConfig
from ebb.guest.collect import CollectError, MemoryCollector
from ebb.guest.reclaim import Reclaimer
from ebb.guest.session import AgentSession
from ebb.guest.transport import Transport, TransportClosed, TransportError
from ebb.guest.yielder import Yielder
from ebb.protocol.errors import ProtocolError
from ebb.protocol.messages import (
    CAPABILITIES,
    Message,
    Ping,
    Pong,
    Welcome,
    encode_message,
)
from ebb.protocol.stream import MessageReader

GIB_KIB = 1024 * 1024
MIB_KIB = 1024

#: A healthy 4 GiB guest with 1 GiB of page cache.
DEFAULT_MEMINFO: Dict[str, int] = {
    "MemTotal": 4 * GIB_KIB,
    "MemFree": 2 * GIB_KIB,
    "MemAvailable": 3 * GIB_KIB,
    "Buffers": 64 * MIB_KIB,
    "Cached": 1 * GIB_KIB,
    "SwapCached": 0,
    "Active(file)": 512 * MIB_KIB,
    "Inactive(file)": 512 * MIB_KIB,
    "SwapTotal": 1 * GIB_KIB,
    "SwapFree": 1 * GIB_KIB,
    "Dirty": 1 * MIB_KIB,
    "Writeback": 0,
    "AnonPages": 512 * MIB_KIB,
    "Shmem": 32 * MIB_KIB,
    "SReclaimable": 64 * MIB_KIB,
}
DEFAULT_VMSTAT: Dict[str, int] = {
    "nr_free_pages": 524288,
    "workingset_refault_anon": 10,
    "workingset_refault_file": 990,
    "pgfault": 100000,
    "pgmajfault": 500,
    "pswpin": 0,
    "pswpout": 0,
}


class ProcTree:
    """A fake /proc with meminfo, vmstat and pressure/memory that tests rewrite."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.meminfo = dict(DEFAULT_MEMINFO)
        self.vmstat = dict(DEFAULT_VMSTAT)
        # some avg10, full avg10, some total us, full total us; None: no PSI file.
        self.pressure: Optional[Tuple[float, float, int, int]] = (0.0, 0.0, 1000, 500)
        (root / "pressure").mkdir(parents=True, exist_ok=True)
        self.write()

    def write(self, **meminfo: int) -> None:
        """Rewrite the files (atomically) after applying ``meminfo`` overrides."""
        self.meminfo.update({key.replace("_file", "(file)"): v for key, v in meminfo.items()})
        lines = [f"{key}:{value:>16} kB" for key, value in self.meminfo.items()]
        self._put("meminfo", "\n".join(lines) + "\n")
        self._put("vmstat", "".join(f"{k} {v}\n" for k, v in self.vmstat.items()))
        pressure_path = self.root / "pressure" / "memory"
        if self.pressure is None:
            if pressure_path.exists():
                pressure_path.unlink()
        else:
            some, full, some_total, full_total = self.pressure
            self._put(
                os.path.join("pressure", "memory"),
                f"some avg10={some:.2f} avg60=0.00 avg300=0.00 total={some_total}\n"
                f"full avg10={full:.2f} avg60=0.00 avg300=0.00 total={full_total}\n",
            )

    def _put(self, name: str, text: str) -> None:
        path = self.root / name
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)


class FakeKernel(Reclaimer):
    """Plays memory.reclaim: each write drops inactive cache into MemFree."""

    def __init__(self, proc_tree: ProcTree, fail_with: Optional[int] = None) -> None:
        super().__init__("/fake/memory.reclaim", swappiness_arg=True)
        self.proc_tree = proc_tree
        self.fail_with = fail_with
        self.written: List[bytes] = []

    def _write(self, data: bytes) -> None:
        self.written.append(data)
        if self.fail_with is not None:
            raise OSError(self.fail_with, "fake")
        kib = int(data.split()[0].rstrip(b"K"))
        meminfo = self.proc_tree.meminfo
        taken = min(kib, meminfo["Inactive(file)"])
        self.proc_tree.write(Inactive_file=meminfo["Inactive(file)"] - taken,
                             Cached=meminfo["Cached"] - taken, MemFree=meminfo["MemFree"] + taken)


M = TypeVar("M")


class HostEnd:
    """The host's side of a connection: sends frames, collects what the agent says."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(0.05)
        self.reader = MessageReader()
        self.received: List[Message] = []
        self.errors: List[ProtocolError] = []
        self.closed = False

    def send(self, msg: Message) -> None:
        self.send_raw(encode_message(msg))

    def send_raw(self, data: bytes, deadline_s: float = 15.0) -> None:
        """Send everything, reading what the agent says meanwhile.

        A large send fills the socket buffer; the agent may at that moment be
        writing to us, so we must keep reading or both ends wait on each other.
        The deadline is generous: only a failing test waits it out on a loaded machine.
        """
        view = memoryview(data)
        deadline = time.monotonic() + deadline_s
        while view:
            if time.monotonic() > deadline:
                raise AssertionError(f"agent did not take {len(view)} more bytes in {deadline_s} s")
            readable, writable, _ = select.select([self.sock], [self.sock], [], 0.05)
            if readable:
                self._read_once()
            if writable:
                with contextlib.suppress(BlockingIOError, socket.timeout):
                    view = view[self.sock.send(view) :]

    def welcome(
        self, interval_ms: int = 1000, capabilities: Tuple[str, ...] = CAPABILITIES
    ) -> None:
        self.send(
            Welcome(protocol_version=1, report_interval_ms=interval_ms, capabilities=capabilities)
        )

    def pump(self, duration_s: float) -> None:
        """Read for ``duration_s`` seconds, collecting messages."""
        deadline = time.monotonic() + duration_s
        while time.monotonic() < deadline and not self.closed:
            self._read_once()

    def _read_once(self) -> None:
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return
        except OSError:
            self.closed = True
            return
        if not data:
            self.closed = True
            return
        for item in self.reader.feed(data):
            if isinstance(item, ProtocolError):
                self.errors.append(item)
            else:
                self.received.append(item)

    def of_type(self, cls: Type[M]) -> List[M]:
        return [m for m in self.received if isinstance(m, cls)]

    def wait_for(self, cls: Type[M], timeout_s: float = 15.0, count: int = 1) -> List[M]:
        """Read until ``count`` messages of ``cls`` arrived; fail after ``timeout_s``.

        The default is generous: it only matters when the message never comes,
        and a loaded machine may take seconds to schedule the agent thread.
        """
        deadline = time.monotonic() + timeout_s
        while len(self.of_type(cls)) < count:
            if time.monotonic() > deadline or self.closed:
                got = [type(m).__name__ for m in self.received]
                raise AssertionError(
                    f"expected {count} {cls.__name__} within {timeout_s} s; got {got}"
                )
            self._read_once()
        return self.of_type(cls)

    def close(self) -> None:
        self.closed = True
        self.sock.close()


#: Fast timings so that the agent tests take seconds.
FAST_CONFIG = AgentConfig(
    default_interval_s=0.2,
    watch_interval_s=0.05,
    backoff_min_s=0.05,
    backoff_max_s=0.2,
    hello_retry_min_s=0.05,
    hello_retry_max_s=0.2,
    write_timeout_s=0.5,
    keepalive_s=30.0,
    hostname="guest-under-test",
)


class RunningAgent:
    """An agent running in a thread; stopped and joined by the fixture."""

    def __init__(self, transport: Transport, proc_tree: ProcTree, config: AgentConfig,
                 yielder: Optional[Yielder] = None) -> None:
        self.notifications: List[str] = []
        self.agent = Agent(
            transport,
            MemoryCollector(str(proc_tree.root)),
            config,
            notify=self.notifications.append,
            yielder=yielder,
        )
        self.thread = threading.Thread(target=self.agent.run, name="ebb-agent", daemon=True)
        self.thread.start()

    def stop(self, timeout_s: float = 3.0) -> None:
        self.agent.stop()
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "the agent did not stop"
        self.agent.close()


# --- fake clock, session driver, scripted transport ----------------------------------


class FakeClock:
    """A monotonic clock that moves only when a test (or a fake wait) moves it."""

    def __init__(self, start_s: float = 0.0) -> None:
        self.now = start_s

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        assert seconds >= 0, seconds
        self.now += seconds


class _Sent:
    """What a fake host end has received, decoded, with the time each message was sent."""

    def __init__(self) -> None:
        self.reader = MessageReader()
        self.timed: List[Tuple[float, Message]] = []
        self.errors: List[ProtocolError] = []

    def add(self, frame: bytes, now: float) -> None:
        for item in self.reader.feed(frame):
            if isinstance(item, ProtocolError):
                self.errors.append(item)
            else:
                self.timed.append((now, item))

    @property
    def received(self) -> List[Message]:
        return [msg for _at, msg in self.timed]

    def of_type(self, cls: Type[M]) -> List[M]:
        return [m for _at, m in self.timed if isinstance(m, cls)]

    def times_of(self, cls: Type[Message]) -> List[float]:
        return [round(at, 6) for at, m in self.timed if isinstance(m, cls)]

    def clear(self) -> None:
        self.timed.clear()


class Conversation(_Sent):
    """An :class:`AgentSession` driven as the agent's loop drives it, on a fake clock.

    The host's messages go in with :meth:`host_sends`; :meth:`advance` moves the
    clock from one of the session's deadlines to the next, taking a sample from
    ``proc_tree`` whenever the session asks. What the session sends is collected
    with its time. No thread, no socket, no sleep.
    """

    def __init__(self, proc_tree: ProcTree, config: Optional[AgentConfig] = None,
                 answer_pings: bool = True, **session_options: object) -> None:
        super().__init__()
        #: The host answers the agent's keepalive pings at once, as ebbd does.
        self.answer_pings = answer_pings
        self.clock = FakeClock()
        self.config = config if config is not None else SESSION_CONFIG
        self.session = AgentSession(self.config, description="test link",
                                    **session_options)  # type: ignore[arg-type]
        self.collector = MemoryCollector(str(proc_tree.root), clock=self.clock)
        self.session.opened(self.clock.now)
        self._collect()

    @property
    def now(self) -> float:
        return self.clock.now

    def host_sends(self, *messages: Message) -> None:
        self.host_sends_raw(b"".join(encode_message(m) for m in messages))

    def host_sends_raw(self, data: bytes) -> None:
        self.session.receive(data, self.clock.now)
        self.turn()

    def welcome(self, interval_ms: int = 1000,
                capabilities: Tuple[str, ...] = CAPABILITIES) -> None:
        self.host_sends(Welcome(protocol_version=1, report_interval_ms=interval_ms,
                                capabilities=capabilities))

    def turn(self) -> None:
        """What the loop does after each wake-up: timers, a due sample, then writes."""
        now = self.clock.now
        self.session.tick(now)
        if self.session.sample_due(now):
            try:
                sample = self.collector.sample()
            except CollectError as err:
                self.session.sample_failed(str(err), now)
            else:
                self.session.sampled(sample, now)
        self._collect()

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass, waking the session at each of its deadlines."""
        end = self.clock.now + seconds
        for _ in range(100_000):
            wake_at = self.session.wake_at()
            if wake_at > end + 1e-9:
                self.clock.now = end
                return
            self.clock.now = max(self.clock.now, wake_at)
            self.turn()
        raise AssertionError("the session never stops asking to wake up")

    def _collect(self) -> None:
        frames = self.session.take_frames()
        for frame in frames:
            self.add(frame, self.clock.now)
        if not self.answer_pings:
            return
        pings = [item for frame in frames for item in MessageReader().feed(frame)
                 if isinstance(item, Ping)]
        for ping in pings:
            self.session.receive(encode_message(Pong(nonce=ping.nonce)), self.clock.now)
        if pings:
            self._collect()


#: The defaults a real guest runs with (time is fake: nothing is shortened).
SESSION_CONFIG = AgentConfig(hostname="guest-under-test")


class ScriptedTransport(Transport):
    """A transport whose host end is the test, on a fake clock.

    ``read`` returns what the test queued with :meth:`host_sends`, or advances the
    clock by the whole timeout when nothing is queued; ``open_results`` scripts
    opens that fail (a TransportError) before they succeed; ``hang_up`` makes the
    next read find the host end gone. Everything the agent writes is decoded into
    ``sent`` with its time; its pings are answered.
    """

    description = "scripted link"

    def __init__(self, clock: FakeClock, fail_opens: int = 0,
                 reopen_max_s: Optional[float] = None, answer_pings: bool = True) -> None:
        super().__init__()
        #: The host answers the agent's keepalive pings at once, as ebbd does.
        self.answer_pings = answer_pings
        self.clock = clock
        self.fail_opens = fail_opens
        self.reopen_max_s = reopen_max_s
        self.opened_at: List[float] = []
        self.inbox = b""
        self.hang_up = False
        self.fail_writes = False
        self.sent = _Sent()
        #: Waits and reads never move the clock past this (run_until sets it).
        self.limit_s = float("inf")

    def wait(self, seconds: float) -> None:
        """The agent's wait between reopen attempts: the clock moves, nothing else."""
        self.clock.now = min(self.clock.now + seconds, max(self.clock.now, self.limit_s))

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    def open(self) -> None:
        self.opened_at.append(self.clock.now)
        if self.fail_opens > 0:
            self.fail_opens -= 1
            raise TransportError("connection refused (scripted)")
        self._fd = -1
        self.hang_up = False

    def close(self) -> None:
        self._fd = None

    def host_sends(self, *messages: Message) -> None:
        self.inbox += b"".join(encode_message(m) for m in messages)

    def read(self, timeout_s: float, wake_fd: Optional[int] = None) -> bytes:
        if self.hang_up:
            raise TransportClosed(f"{self.description}: the host end is not connected")
        data, self.inbox = self.inbox, b""
        if not data:
            self.wait(timeout_s)
        return data

    def write(self, data: bytes, timeout_s: float) -> None:
        if self.fail_writes:
            self.clock.advance(timeout_s)
            raise TransportError(f"{self.description}: write timed out")
        before = len(self.sent.timed)
        self.sent.add(data, self.clock.now)
        if self.answer_pings:
            for _at, msg in self.sent.timed[before:]:
                if isinstance(msg, Ping):
                    self.host_sends(Pong(nonce=msg.nonce))


def loop_agent(transport: ScriptedTransport, proc_tree: ProcTree,
               config: Optional[AgentConfig] = None,
               yielder: Optional[Yielder] = None) -> Agent:
    """An agent whose loop runs on ``transport``'s fake clock: call ``_step()`` to turn it."""
    clock = transport.clock
    return Agent(transport, MemoryCollector(str(proc_tree.root), clock=clock),
                 config if config is not None else SESSION_CONFIG,
                 clock=clock, yielder=yielder, sleep=transport.wait)


def run_until(agent: Agent, until_s: float) -> None:
    """Turn ``agent``'s loop until its fake clock reaches ``until_s``."""
    transport = agent.transport
    assert isinstance(transport, ScriptedTransport)
    transport.limit_s = until_s
    for _ in range(100_000):
        if transport.clock.now >= until_s and not transport.inbox:
            return
        agent._step()
    raise AssertionError("the loop never lets the clock reach the end")
