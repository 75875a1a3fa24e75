"""Transports: sockets, a pty standing in for a serial line, finding the port by name."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Iterator, Tuple

import pytest
from agent_testkit import HostEnd, ProcTree
from conftest import StartAgent
from ebb.guest.agent import ConnectionState
from ebb.guest.transport import (
    PortNotFound,
    SerialTransport,
    SocketTransport,
    TransportClosed,
    TransportError,
    UnixSocketTransport,
    VirtioPortTransport,
    find_agent_port,
    transport_for_device,
)
from ebb.protocol.messages import Hello, Ping, Pong, Report, Welcome, encode_message
from ebb.protocol.stream import MessageReader


@pytest.fixture
def pair() -> Iterator[Tuple[SocketTransport, socket.socket]]:
    guest, host = socket.socketpair()
    transport = SocketTransport(guest)
    transport.open()
    yield transport, host
    transport.close()
    host.close()


def test_socket_read_write_and_timeout(pair: Tuple[SocketTransport, socket.socket]) -> None:
    transport, host = pair
    started = time.monotonic()
    assert transport.read(0.1) == b""
    assert 0.08 <= time.monotonic() - started < 0.5
    host.sendall(b"abc")
    assert transport.read(1.0) == b"abc"
    transport.write(b"xyz", 1.0)
    assert host.recv(10) == b"xyz"


def test_read_wakes_early_on_the_wake_fd(pair: Tuple[SocketTransport, socket.socket]) -> None:
    transport, _host = pair
    wake_r, wake_w = os.pipe()
    try:
        os.write(wake_w, b"x")
        started = time.monotonic()
        assert transport.read(5.0, wake_r) == b""
        assert time.monotonic() - started < 0.5
    finally:
        os.close(wake_r)
        os.close(wake_w)


def test_peer_gone_is_transport_closed(pair: Tuple[SocketTransport, socket.socket]) -> None:
    transport, host = pair
    host.close()
    with pytest.raises(TransportClosed):
        transport.read(1.0)


def test_write_to_a_peer_that_never_reads_times_out(
    pair: Tuple[SocketTransport, socket.socket],
) -> None:
    transport, _host = pair
    started = time.monotonic()
    with pytest.raises(TransportError, match="timed out"):
        for _ in range(10_000):
            transport.write(b"x" * 65536, 0.2)
    assert time.monotonic() - started < 2.0


def test_socket_transport_cannot_reopen(pair: Tuple[SocketTransport, socket.socket]) -> None:
    transport, _host = pair
    transport.close()
    with pytest.raises(TransportError, match="cannot be reopened"):
        transport.open()


def test_unix_socket_connect_failure_says_where(tmp_path: Path) -> None:
    transport = UnixSocketTransport(str(tmp_path / "absent.sock"))
    with pytest.raises(TransportError, match=r"absent\.sock"):
        transport.open()
    assert not transport.is_open


def test_virtio_port_open_failure_says_where(tmp_path: Path) -> None:
    with pytest.raises(TransportError, match="vport9p9"):
        VirtioPortTransport(str(tmp_path / "vport9p9")).open()


def _sysfs_port(sys_root: Path, entry: str, name: str) -> None:
    port = sys_root / "class" / "virtio-ports" / entry
    port.mkdir(parents=True)
    (port / "name").write_text(name + "\n")


def test_port_found_by_udev_link(tmp_path: Path) -> None:
    link = tmp_path / "dev" / "virtio-ports" / "org.ebb.agent.0"
    link.parent.mkdir(parents=True)
    link.write_text("")
    assert find_agent_port(str(tmp_path / "dev"), str(tmp_path / "sys")) == str(link)


def test_port_found_by_name_in_sysfs(tmp_path: Path) -> None:
    _sysfs_port(tmp_path / "sys", "vport1p1", "org.qemu.guest_agent.0")
    _sysfs_port(tmp_path / "sys", "vport1p2", "org.ebb.agent.0")
    found = find_agent_port(str(tmp_path / "dev"), str(tmp_path / "sys"))
    assert found == str(tmp_path / "dev" / "vport1p2")


def test_no_port_says_where_it_looked_and_what_the_vm_needs(tmp_path: Path) -> None:
    _sysfs_port(tmp_path / "sys", "vport1p1", "org.qemu.guest_agent.0")
    with pytest.raises(PortNotFound) as caught:
        find_agent_port(str(tmp_path / "dev"), str(tmp_path / "sys"))
    text = str(caught.value)
    assert str(tmp_path / "dev" / "virtio-ports" / "org.ebb.agent.0") in text
    assert str(tmp_path / "sys" / "class" / "virtio-ports") in text
    assert "vport1p1=org.qemu.guest_agent.0" in text
    assert "<target type='virtio' name='org.ebb.agent.0'/>" in text
    assert "--device /dev/ttyS1" in text


def test_device_option_picks_the_transport(tmp_path: Path) -> None:
    assert isinstance(transport_for_device("unix:/run/x.sock"), UnixSocketTransport)
    assert isinstance(transport_for_device("/dev/ttyS1"), SerialTransport)
    port = tmp_path / "vport1p1"
    port.write_text("")
    assert isinstance(transport_for_device(str(port)), VirtioPortTransport)
    sock_path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(sock_path))
        assert isinstance(transport_for_device(str(sock_path)), UnixSocketTransport)
    with pytest.raises(TransportError, match="nowhere"):
        transport_for_device(str(tmp_path / "nowhere"))


class _PtyHost:
    """The host end of a pty, standing in for the host side of an emulated serial port."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        self.path = os.ttyname(self.slave)
        os.set_blocking(self.master, False)
        self.reader = MessageReader()
        self.received: list = []  # type: ignore[type-arg]

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def wait_for(self, cls: type, timeout_s: float = 15.0) -> object:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for item in self.received:
                if isinstance(item, cls):
                    self.received.remove(item)
                    return item
            try:
                data = os.read(self.master, 65536)
            except (BlockingIOError, OSError):
                time.sleep(0.01)
                continue
            self.received.extend(self.reader.feed(data))
        raise AssertionError(f"no {cls.__name__} on the pty within {timeout_s} s")

    def close(self) -> None:
        os.close(self.slave)
        os.close(self.master)


def test_agent_over_a_serial_line(proc_tree: ProcTree, start_agent: StartAgent) -> None:
    pty = _PtyHost()
    try:
        running = start_agent(SerialTransport(pty.path), proc_tree)
        hello = pty.wait_for(Hello)
        assert isinstance(hello, Hello)
        pty.send(encode_message(Welcome(protocol_version=1, report_interval_ms=200,
                                        capabilities=())))
        report = pty.wait_for(Report)
        assert isinstance(report, Report) and report.mem_total_kib > 0
        pty.send(encode_message(Ping(nonce=99)))
        pong = pty.wait_for(Pong)
        assert isinstance(pong, Pong) and pong.nonce == 99
        assert running.agent.state is ConnectionState.ACTIVE
        running.stop()
    finally:
        pty.close()


def test_serial_transport_open_failure_says_where(tmp_path: Path) -> None:
    with pytest.raises(TransportError, match="ttyS77"):
        SerialTransport(str(tmp_path / "ttyS77")).open()


def test_host_end_helper_reads_frames() -> None:
    # Guard against the helper itself hiding failures: it must see a message it is sent.
    a, b = socket.socketpair()
    host = HostEnd(b)
    a.sendall(encode_message(Ping(nonce=1)))
    assert host.wait_for(Ping)[0].nonce == 1
    a.close()
    host.close()
