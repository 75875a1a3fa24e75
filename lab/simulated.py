"""A simulated guest agent speaking the real protocol over a socket.

Used by the channel tests and by ``bench/bench_ebbd.py`` to stand in for
``ebb-agent`` inside a VM: it writes real frames (hello, report, offer, need)
and answers pings, so the host code under test cannot tell it from a guest.
It is deliberately simpler than the agent: no collectors, no timers of its own.
"""

from __future__ import annotations

import select
import socket
from typing import Any, Dict, List, Optional, Tuple

from ebb.protocol import (
    CAPABILITIES,
    SUPPORTED_VERSIONS,
    Hello,
    Message,
    MessageReader,
    Need,
    Offer,
    Ping,
    Pong,
    ProtocolError,
    Report,
    Yielded,
    encode_message,
)

#: A plausible idle 1 GiB guest (KiB and counters), overridable per report.
DEFAULT_REPORT: Dict[str, Any] = {
    "mem_total_kib": 1_000_000,
    "mem_free_kib": 400_000,
    "mem_available_kib": 700_000,
    "buffers_kib": 20_000,
    "cached_kib": 250_000,
    "swap_total_kib": 0,
    "swap_free_kib": 0,
    "anon_pages_kib": 200_000,
    "shmem_kib": 1_000,
    "dirty_kib": 100,
    "pswpin": 0,
    "pswpout": 0,
    "pgmajfault": 100,
    "pgfault": 100_000,
    "workingset_refault": 0,
    "psi_some_avg10": 0.0,
    "psi_full_avg10": 0.0,
    "psi_some_total_us": 0,
    "psi_full_total_us": 0,
}


class SimulatedAgent:
    """The guest end of one channel socket."""

    def __init__(self, sock: socket.socket, name: str = "guest") -> None:
        self.sock = sock
        self.name = name
        self.reader = MessageReader()
        self.received: List[Message] = []
        self.errors: List[ProtocolError] = []
        self.seq = 0
        self.closed = False

    # --- sending ------------------------------------------------------------

    def send(self, msg: Message) -> None:
        self.send_raw(encode_message(msg))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def hello(
        self,
        versions: Tuple[int, ...] = SUPPORTED_VERSIONS,
        capabilities: Tuple[str, ...] = CAPABILITIES,
    ) -> None:
        self.send(
            Hello(
                agent_version="sim-1",
                protocol_versions=versions,
                capabilities=capabilities,
                hostname=self.name,
            )
        )

    def report(self, **fields: Any) -> Report:
        self.seq += 1
        values = dict(DEFAULT_REPORT)
        values.update(fields)
        msg = Report(seq=self.seq, **values)
        self.send(msg)
        return msg

    def offer(self, kib: int) -> None:
        self.seq += 1
        self.send(Offer(seq=self.seq, kib=kib))

    def need(self, kib: int, urgency: str = "high", reason: str = "simulated") -> None:
        self.seq += 1
        self.send(Need(seq=self.seq, kib=kib, urgency=urgency, reason=reason))

    def yielded(
        self,
        freed_kib: int,
        request_id: Optional[int] = None,
        asked_kib: int = 0,
        stopped: str = "done",
        reason: str = "simulated",
    ) -> None:
        """Answer a yield request (``request_id``) or report a background yield."""
        self.send(
            Yielded(
                asked_kib=asked_kib,
                freed_kib=freed_kib,
                cache_before_kib=300_000,
                cache_after_kib=max(0, 300_000 - freed_kib),
                duration_ms=120,
                stopped=stopped,
                reason=reason,
                request_id=request_id,
            )
        )

    # --- receiving ----------------------------------------------------------

    def pump(self, timeout_s: float = 0.0) -> List[Message]:
        """Read what the host sent (waiting up to ``timeout_s``), answer pings."""
        new: List[Message] = []
        wait = timeout_s
        while True:
            ready, _, _ = select.select([self.sock], [], [], wait)
            if not ready:
                break
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                data = b""
            if not data:
                self.closed = True
                break
            for item in self.reader.feed(data):
                if isinstance(item, ProtocolError):
                    self.errors.append(item)
                    continue
                if isinstance(item, Ping):
                    self.send(Pong(nonce=item.nonce))
                new.append(item)
            wait = 0.0
        self.received.extend(new)
        return new

    def wait_for(self, type_name: str, timeout_s: float = 2.0) -> Optional[Message]:
        """Pump until a message of ``type_name`` arrives; None on timeout."""
        import time

        deadline = time.monotonic() + timeout_s
        while True:
            for msg in self.pump(0.0):
                if type_name == msg.TYPE:
                    return msg
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.closed:
                return None
            self.pump_wait(min(remaining, 0.05))

    def pump_wait(self, timeout_s: float) -> None:
        select.select([self.sock], [], [], timeout_s)

    def close(self) -> None:
        self.closed = True
        self.sock.close()
