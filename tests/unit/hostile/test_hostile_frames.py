"""Hostile byte streams against both readers: the agent's and ebbd's.

What a peer sends may be anything. Whatever it is, the reader returns messages
or the protocol's own errors, holds one bounded buffer, and keeps nothing of a
refused payload: a frame crafted to decode into tens of thousands of objects
costs a pass over its bytes, not megabytes per frame.
"""

from __future__ import annotations

import contextlib
import gc
import random
import socket
import sys
import tracemalloc
from pathlib import Path
from typing import Any, Iterator, List

import msgpack
import pytest
from ebb.guest.agent import Agent, AgentConfig, ConnectionState
from ebb.guest.collect import MemoryCollector
from ebb.guest.session import AgentSession
from ebb.guest.transport import SocketTransport
from ebb.host.channels.session import CutOff, GuestSession
from ebb.host.channels.state import ChannelLimits
from ebb.protocol import (
    MAX_BUFFER_BYTES,
    MAX_FRAME_BYTES,
    MESSAGE_TYPES,
    FrameDecoder,
    MessageReader,
    ProtocolError,
    encode_frame,
)
from ebb.protocol.messages import (
    MAX_ARRAY_ITEMS,
    MAX_BIN_BYTES,
    MAX_KEYS,
    MAX_STRING_BYTES,
    MAX_STRING_CHARS,
    decode_result,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

#: Decoders get at least 10^4 examples; inputs are kept small so this takes seconds.
MANY = settings(
    max_examples=10_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

#: The whole path of both sides (session rules, replies) is slower per example.
FEWER = settings(MANY, max_examples=2_000)

MiB = 1024 * 1024
HOSTILE_FRAMES = 150


def amplifying_payload() -> bytes:
    """Under 64 KiB, but 65000 empty maps in an unknown field once decoded."""
    payload: bytes = msgpack.packb({"type": "report", "pad": [{}] * 65000})
    assert len(payload) <= MAX_FRAME_BYTES
    return payload


#: msgpack interns map keys. Held here, they stay in the interpreter's table of
#: interned strings, so its resizing (a one-off allocation) is not measured as growth.
PADDING_KEYS = tuple(sys.intern(f"k{i}") for i in range(MAX_KEYS - 1))


def within_limits_payload() -> bytes:
    """Within every limit (1000 values), but refused as a message: fields are missing."""
    # type first, then 63 keys of arrays of 13 empty maps.
    data: dict = {"type": "report"}
    for key in PADDING_KEYS:
        data[key] = [{}] * 13
    payload: bytes = msgpack.packb(data)
    assert len(payload) <= MAX_FRAME_BYTES
    return payload


# --- memory: 150 crafted frames leave nothing behind --------------------------------


class AgentUnderAttack:
    """An agent in its loop, fed by a host end that sends hostile frames."""

    def __init__(self, proc_root: Path) -> None:
        proc_root.mkdir(exist_ok=True)
        self.host, guest = socket.socketpair()
        self.host.setblocking(False)
        config = AgentConfig(hello_retry_min_s=60.0, hello_retry_max_s=60.0,
                             keepalive_s=600.0, hostname="guest")
        self.agent = Agent(SocketTransport(guest), MemoryCollector(str(proc_root)), config)
        self.agent._connect()  # opens the transport and says hello, as run() does
        assert self.agent.state is ConnectionState.HELLO_SENT

    def feed(self, frame: bytes) -> None:
        """Send one frame and let the agent's loop read it all."""
        offset = 0
        while offset < len(frame):
            with contextlib.suppress(BlockingIOError):
                offset += self.host.send(frame[offset:])
            self.agent._step()
            self.drain()
        while self.agent.session.buffered_bytes:
            self.agent._step()
            self.drain()

    def drain(self) -> None:
        try:
            while self.host.recv(65536):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        self.agent.transport.close()
        self.agent.close()
        self.host.close()


@pytest.fixture
def attacked_agent(tmp_path: Path) -> Iterator[AgentUnderAttack]:
    under = AgentUnderAttack(tmp_path / "proc")
    yield under
    under.close()


def ebbd_session() -> GuestSession:
    # Limits raised so that every frame is read: by default ebbd cuts the guest
    # off after 20 bad frames, and this is about what each frame costs.
    limits = ChannelLimits(max_errors_per_window=10**6, max_bytes_per_s=1 << 40,
                           max_frames_per_s=10**6)
    session = GuestSession("vm1", limits)
    session.connected(0.0)
    return session


def growth_while(feed_one: Any, frame: bytes, count: int) -> int:
    """Bytes still allocated after feeding ``count`` frames, with the collector off.

    With the cyclic garbage collector off, anything a refused frame left in a
    reference cycle stays counted: only what plain reference counting frees is
    freed, as in a process where collections are rare.
    """
    feed_one(frame)  # warm up: first-use allocations are not growth
    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for _ in range(count):
            feed_one(frame)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        gc.enable()
    return after - before


@pytest.mark.parametrize("payload", [amplifying_payload(), within_limits_payload()],
                         ids=["over-the-limits", "within-the-limits"])
def test_agent_keeps_nothing_of_hostile_frames(
    attacked_agent: AgentUnderAttack, payload: bytes
) -> None:
    frame = encode_frame(payload)
    errors_before = attacked_agent.agent.counters.protocol_errors
    growth = growth_while(attacked_agent.feed, frame, HOSTILE_FRAMES)
    assert attacked_agent.agent.counters.protocol_errors - errors_before == HOSTILE_FRAMES + 1
    assert growth < 1 * MiB, f"{HOSTILE_FRAMES} refused frames left {growth / MiB:.1f} MiB"


@pytest.mark.parametrize("payload", [amplifying_payload(), within_limits_payload()],
                         ids=["over-the-limits", "within-the-limits"])
def test_ebbd_keeps_nothing_of_hostile_frames(payload: bytes) -> None:
    session = ebbd_session()
    frame = encode_frame(payload)
    clock = [0.0]

    def feed_one(data: bytes) -> None:
        clock[0] += 1.0
        # The hub hands the session at most read_chunk_bytes per wakeup.
        step = session.limits.read_chunk_bytes
        for start in range(0, len(data), step):
            session.feed(data[start : start + step], clock[0], clock[0])

    growth = growth_while(feed_one, frame, HOSTILE_FRAMES)
    assert session.protocol_errors == HOSTILE_FRAMES + 1
    assert growth < 1 * MiB, f"{HOSTILE_FRAMES} refused frames left {growth / MiB:.1f} MiB"


def test_a_refused_payload_is_refused_before_its_objects_are_built() -> None:
    """The limit is enforced on the bytes: no 65000 maps exist, even for a moment."""
    payload = amplifying_payload()
    tracemalloc.start()
    try:
        outcome = decode_result(payload)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(outcome, ProtocolError) and outcome.code == "too_long"
    assert outcome.ref_type == "report"
    assert outcome.__traceback__ is None and outcome.__context__ is None
    assert peak < 512 * 1024  # 65000 dicts would be several MiB


# --- arbitrary input: only protocol errors, bounded buffers ---------------------------


def check_results(results: List[Any]) -> None:
    for item in results:
        assert isinstance(item, (ProtocolError, *tuple(MESSAGE_TYPES.values()))), item
        if isinstance(item, ProtocolError):
            # Refused input is reported by value, holding none of the input's objects.
            assert item.__traceback__ is None


class Pairs(list):  # type: ignore[type-arg]
    """A map given as (key, value) pairs: keys may repeat or be any value."""


def pack(value: Any, packer: msgpack.Packer) -> bytes:
    if isinstance(value, Pairs):
        out = packer.pack_map_header(len(value))
        for key, item in value:
            out += pack(key, packer) + pack(item, packer)
        return bytes(out)
    if isinstance(value, list):
        if not any(isinstance(item, list) for item in value):  # Pairs is a list too
            return bytes(packer.pack(value))
        return bytes(packer.pack_array_header(len(value))) + b"".join(
            pack(item, packer) for item in value
        )
    return bytes(packer.pack(value))


KEYS = ["type", "seq", "nonce", "kib", "code", "message", "ref_type", "reason", "x", ""]
TEXTS = ["", "ping", "error", "report", "a\nb\x1b[31m", "\u202e\U0001f600", "é" * 5]


class Budget:
    """How many more containers may be nested with content (keeps payloads small)."""

    def __init__(self, containers: int) -> None:
        self.containers = containers

    def take(self) -> bool:
        self.containers -= 1
        return self.containers >= 0


def random_value(rng: random.Random, depth: int, budget: Budget) -> Any:
    """A msgpack value as a hostile peer might send: any type, any size, any depth."""
    roll = rng.random()
    if depth < 7 and roll < 0.45 and budget.take():
        if roll < 0.25:
            size = rng.choice([0, 1, 2, 3, MAX_ARRAY_ITEMS, MAX_ARRAY_ITEMS + 1])
            return [random_value(rng, depth + 1, budget) if rng.random() < 0.05 else 0
                    for _ in range(size)]
        return random_map(rng, depth + 1, budget)
    return rng.choice([
        None, True, False, 0, -1, 2**53, 2**64 - 1, -(2**63), 1.5, float("nan"),
        float("inf"), rng.choice(TEXTS), b"\x00\xff", b"x" * (MAX_BIN_BYTES + rng.randint(0, 1)),
        "x" * (MAX_STRING_CHARS + rng.randint(0, 1)), "é" * rng.randint(0, 9),
    ])


def random_map(rng: random.Random, depth: int, budget: Budget) -> Pairs:
    size = rng.choice([0, 1, 2, 3, 4, 5, MAX_KEYS, MAX_KEYS + 1])
    pairs = Pairs()
    if depth == 1 and rng.random() < 0.8:
        pairs.append(("type", rng.choice(sorted(MESSAGE_TYPES) + TEXTS)))
    for i in range(size - len(pairs)):
        if rng.random() < 0.05:
            key: Any = rng.choice([1, b"k", None, 1.0, [], "type"])  # odd or repeated keys
        elif size > 8:
            key = f"k{i}"
        else:
            key = rng.choice(KEYS)
        value = random_value(rng, depth, budget) if size < 8 or rng.random() < 0.1 else 0
        pairs.append((key, value))
    return pairs


def hostile_payload(seed: int, edits: bytes) -> bytes:
    """A payload built from ``seed``, then damaged by ``edits`` (3 bytes per edit)."""
    rng = random.Random(seed)
    budget = Budget(12)
    top = random_map(rng, 1, budget) if rng.random() < 0.9 else random_value(rng, 1, budget)
    packer = msgpack.Packer(use_bin_type=rng.random() < 0.9)
    payload = bytearray(pack(top, packer))
    for n in range(0, len(edits) - 2, 3):
        action, where, byte = edits[n] % 4, edits[n + 1], edits[n + 2]
        at = (where * len(payload)) // 256
        if action == 0:
            del payload[at:]  # cut short
        elif action == 1:
            payload.insert(at, byte)
        elif action == 2 and payload:
            payload[min(at, len(payload) - 1)] = byte
        else:
            payload += bytes((byte,))
    return bytes(payload[:MAX_FRAME_BYTES])


@pytest.mark.many_examples  # seconds of CPU: run apart (make test), not in every quick run
@MANY
@given(seed=st.integers(0, 2**32 - 1), noise=st.binary(max_size=36))
def test_decoders_return_messages_or_protocol_errors(seed: int, noise: bytes) -> None:
    """The framing reader and the message decoder, as both sides run them."""
    # One draw for everything else keeps each example cheap: 10^4 of them run here.
    edits, cuts, garbage = noise[:9], list(noise[9:12]), noise[12:]
    payload = hostile_payload(seed, edits)
    outcome = decode_result(payload)
    check_results([outcome])
    if not isinstance(outcome, ProtocolError):
        # What was accepted, msgpack decodes within the same limits, without duplicates.
        pairs: List[int] = []

        def count_pairs(items: Any) -> dict:
            pairs.append(len(items))
            return dict(items)

        data = msgpack.unpackb(
            payload, raw=False, max_array_len=MAX_ARRAY_ITEMS, max_map_len=MAX_KEYS,
            max_str_len=MAX_STRING_BYTES, max_bin_len=MAX_BIN_BYTES, max_ext_len=0,
            object_pairs_hook=count_pairs,
        )
        assert isinstance(data, dict) and len(data) == pairs[-1]
    # The same payload in a frame, between garbage, cut anywhere.
    stream = garbage + encode_frame(payload) + garbage[::-1]
    points = sorted((cut * len(stream)) // 256 for cut in cuts)
    frames = FrameDecoder()
    reader = MessageReader()
    seen: List[Any] = []
    for a, b in zip([0, *points], [*points, len(stream)]):
        for item in frames.feed(stream[a:b]):
            assert isinstance(item, (bytes, ProtocolError))
        seen += reader.feed(stream[a:b])
        assert frames.buffered_bytes <= MAX_BUFFER_BYTES
        assert reader.buffered_bytes <= MAX_BUFFER_BYTES
    check_results(seen)
    # The frame after the garbage is read as the payload alone would be.
    if b"\x00" in garbage or not garbage:
        assert any(type(item) is type(outcome) for item in seen)


class BothSides:
    """The agent's session and ebbd's session for one guest, fed the same bytes."""

    def __init__(self) -> None:
        self.session = ebbd_session()
        config = AgentConfig(hello_retry_min_s=60.0, hello_retry_max_s=60.0,
                             keepalive_s=600.0, hostname="guest")
        self.agent = AgentSession(config)
        self.agent.opened(0.0)
        self.clock = 0.0

    def feed(self, chunks: List[bytes]) -> None:
        for chunk in chunks:
            self.clock += 0.001
            try:
                replies = self.session.feed(chunk, self.clock, self.clock)
            except CutOff:
                # The hub closes the socket; the guest gets a fresh reader later.
                self.session.cut_off("test", self.clock, self.clock)
                self.session.cut_off_over()
                self.session.connected(self.clock)
                replies = []
            assert all(isinstance(reply, bytes) for reply in replies)
            assert self.session._reader.buffered_bytes <= MAX_BUFFER_BYTES
            # What AgentSession.receive does, with the reader's items checked on the way.
            items = self.agent._reader.feed(chunk)
            check_results(items)
            for item in items:
                self.agent._handle(item, self.clock)
            assert self.agent.buffered_bytes <= MAX_BUFFER_BYTES
            assert all(isinstance(frame, bytes) for frame in self.agent.take_frames())
            self.agent.take_yield_work()
            self.agent.take_statuses()


@pytest.fixture(scope="module")
def both_sides() -> Iterator[BothSides]:
    yield BothSides()


@FEWER
@given(seeds=st.lists(st.integers(0, 2**32 - 1), max_size=2), garbage=st.binary(max_size=12),
       cuts=st.lists(st.integers(0, 255), max_size=3))
def test_both_readers_take_any_byte_stream(
    both_sides: BothSides, seeds: List[int], garbage: bytes, cuts: List[int]
) -> None:
    """Frames of hostile payloads, valid frames and raw garbage, cut anywhere."""
    ping = encode_frame(msgpack.packb({"type": "ping", "nonce": 1}))
    parts = [encode_frame(hostile_payload(seed, garbage[:3])) for seed in seeds]
    data = garbage + b"".join(parts) + ping + garbage[::-1]
    points = sorted((cut * len(data)) // 256 for cut in cuts)
    both_sides.feed([data[a:b] for a, b in zip([0, *points], [*points, len(data)])])


def test_a_run_without_delimiters_costs_one_bounded_buffer() -> None:
    reader = MessageReader()
    results: List[Any] = []
    for _ in range(40):
        results += reader.feed(b"\x01" * 8192)
        assert reader.buffered_bytes <= MAX_BUFFER_BYTES
    assert [r.code for r in results] == ["frame_too_large"]


def test_valid_messages_still_get_through_both_sides(both_sides: BothSides) -> None:
    ping = encode_frame(msgpack.packb({"type": "ping", "nonce": 7}))
    session = ebbd_session()
    replies = session.feed(b"garbage\x00" + ping, 1.0, 1.0)
    assert any(b"pong" in reply for reply in replies)
    items = MessageReader().feed(b"\x00\xff\xfe" + ping)
    assert [type(i).__name__ for i in items] == ["FramingError", "Ping"]
