"""Helpers for the agent's tests: a fake /proc tree, a host end, a running agent.

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
from ebb.guest.collect import MemoryCollector
from ebb.guest.reclaim import Reclaimer
from ebb.guest.transport import Transport
from ebb.guest.yielder import Yielder
from ebb.protocol.errors import ProtocolError
from ebb.protocol.messages import CAPABILITIES, Message, Welcome, encode_message
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
