"""How the agent reaches the host: a virtio-serial port, a serial line, or a socket.

Every transport is a byte stream behind the same small interface
(:class:`Transport`): ``open``, ``read(timeout_s)``, ``write(data, timeout_s)``,
``close``. All I/O is non-blocking under ``poll``, because a virtio-serial port
whose host end is not connected makes blocking writes hang and reports HUP to
``poll`` at once: with the timeouts here the agent neither hangs nor spins.

``read`` can also be woken early through a file descriptor (the agent's stop pipe),
so a SIGTERM ends a wait at once.

Which transport a ``--device`` means is decided by :func:`transport_for_device`;
without one, :func:`find_agent_port` looks for the virtio-serial port by name.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import stat
import time
from typing import Any, List, Optional, Tuple

LOG = logging.getLogger(__name__)

PORT_NAME = "org.ebb.agent.0"
DEFAULT_DEV_ROOT = "/dev"
DEFAULT_SYS_ROOT = "/sys"
DEFAULT_BAUDRATE = 115200
UNIX_PREFIX = "unix:"
#: Largest chunk read at once; the frame decoder bounds what is kept.
READ_CHUNK_BYTES = 65536

_POLL_IN = select.POLLIN | select.POLLPRI
_POLL_GONE = select.POLLHUP | select.POLLERR | select.POLLNVAL


class TransportError(Exception):
    """The host cannot be reached through this transport (open, read or write failed)."""


class TransportClosed(TransportError):
    """The host end went away (EOF, hang-up); reopen later to talk again."""


class PortNotFound(TransportError):
    """No virtio-serial port named org.ebb.agent.0 exists in this VM."""


class Transport:
    """A byte stream to the host. Subclasses provide ``_open_fd`` and ``_close_fd``.

    ``open`` may be called again after ``close`` (or after a
    :class:`TransportClosed`) to reconnect.
    """

    #: Human description used in logs and errors ("virtio-serial /dev/vport1p1").
    description = "transport"
    #: Longest wait between reopen attempts this transport wants, if shorter than the
    #: agent's backoff (None: the agent's backoff as configured).
    reopen_max_s: Optional[float] = None

    def __init__(self) -> None:
        self._fd: Optional[int] = None

    @property
    def is_open(self) -> bool:
        """Whether ``open`` succeeded and ``close`` has not been called since."""
        return self._fd is not None

    def fileno(self) -> int:
        """The file descriptor being polled; raises TransportError when closed."""
        if self._fd is None:
            raise TransportError(f"{self.description} is not open")
        return self._fd

    def open(self) -> None:
        """Open (or reopen) the stream; raises :class:`TransportError` on failure."""
        if self._fd is not None:
            return
        fd = self._open_fd()
        os.set_blocking(fd, False)
        self._fd = fd

    def close(self) -> None:
        """Close the stream; safe to call when already closed."""
        fd, self._fd = self._fd, None
        if fd is not None:
            self._close_fd(fd)

    def read(self, timeout_s: float, wake_fd: Optional[int] = None) -> bytes:
        """Bytes the host sent, waiting up to ``timeout_s``; ``b""`` on timeout or wake-up.

        Raises :class:`TransportClosed` when the host end is gone.
        """
        fd = self.fileno()
        poller = select.poll()
        poller.register(fd, _POLL_IN)
        if wake_fd is not None:
            poller.register(wake_fd, select.POLLIN)
        events = poller.poll(max(0, int(timeout_s * 1000)))
        fd_events = 0
        for polled_fd, mask in events:
            if polled_fd == fd:
                fd_events = mask
        if not fd_events:
            return b""
        try:
            data = os.read(fd, READ_CHUNK_BYTES)
        except BlockingIOError:
            data = None
        except OSError as err:
            # A pty whose other end closed answers EIO.
            raise TransportClosed(f"{self.description}: read failed: {err}") from err
        if data:
            return data
        if data is None and not fd_events & _POLL_GONE:
            return b""
        raise TransportClosed(f"{self.description}: the host end is not connected")

    def write(self, data: bytes, timeout_s: float) -> None:
        """Write all of ``data`` within ``timeout_s``; raises TransportError otherwise."""
        fd = self.fileno()
        view = memoryview(data)
        deadline = time.monotonic() + timeout_s
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        while view:
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                written = 0
            except OSError as err:
                if err.errno in (errno.EPIPE, errno.ECONNRESET, errno.EIO, errno.ENOTCONN):
                    raise TransportClosed(f"{self.description}: write failed: {err}") from err
                raise TransportError(f"{self.description}: write failed: {err}") from err
            view = view[written:]
            if not view:
                break
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                raise TransportError(
                    f"{self.description}: write timed out after {timeout_s:.1f} s "
                    "(is the host end connected?)"
                )
            for _fd, mask in poller.poll(max(1, int(remaining_s * 1000))):
                if mask & _POLL_GONE and not mask & select.POLLOUT:
                    raise TransportClosed(f"{self.description}: the host end is not connected")

    def _open_fd(self) -> int:
        raise NotImplementedError

    def _close_fd(self, fd: int) -> None:
        os.close(fd)


class VirtioPortTransport(Transport):
    """A virtio-serial port (``/dev/virtio-ports/org.ebb.agent.0`` or ``/dev/vportNpM``).

    The guest can hold the port open while the host end comes and goes; when it is
    away, reads see EOF and poll reports HUP, which this transport turns into
    :class:`TransportClosed` so the agent backs off instead of spinning.
    """

    #: Checking for the host costs one open and poll of a local device and nothing on
    #: the host, so it is done every second: the agent says hello within about a
    #: second of ebbd connecting, instead of after a backoff of up to 10 s.
    reopen_max_s: Optional[float] = 1.0

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.description = f"virtio-serial port {path}"

    def _open_fd(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
        except OSError as err:
            hint = ""
            if err.errno == errno.EBUSY:
                hint = " (another process holds it open: is a second ebb-agent running?)"
            elif err.errno == errno.EACCES:
                hint = " (run ebb-agent as root or give it access to the port)"
            raise TransportError(f"cannot open {self.description}: {err.strerror}{hint}") from err


class SerialTransport(Transport):
    """An emulated serial line (``/dev/ttyS1``) opened raw and exclusive through pyserial.

    A serial line has no notion of the other end being connected: the agent finds
    out by the host not answering (handshake retries, keepalive pings).
    """

    def __init__(self, path: str, baudrate: int = DEFAULT_BAUDRATE) -> None:
        super().__init__()
        self.path = path
        self.baudrate = baudrate
        self.description = f"serial port {path}"
        self._serial: Any = None

    def _open_fd(self) -> int:
        # pyserial is imported only here so the virtio path does not pay for it.
        import serial

        try:
            port = serial.Serial(self.path, self.baudrate, timeout=0, exclusive=True)
        except (serial.SerialException, OSError, ValueError) as err:
            raise TransportError(f"cannot open {self.description}: {err}") from err
        # Whatever is queued is from before this agent (a host that spoke to a
        # previous one, boot noise): drop it rather than parse stale frames.
        port.reset_input_buffer()
        self._serial = port
        fd = port.fileno()
        assert isinstance(fd, int)
        return fd

    def _close_fd(self, fd: int) -> None:
        port, self._serial = self._serial, None
        if port is not None:
            try:
                port.close()
            except OSError as err:
                LOG.debug("closing %s: %s", self.description, err)


class UnixSocketTransport(Transport):
    """A connection to a unix stream socket at ``path`` (tests, benchmarks, custom set-ups)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.description = f"unix socket {path}"

    def _open_fd(self) -> int:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(2.0)
            sock.connect(self.path)
        except OSError as err:
            sock.close()
            raise TransportError(f"cannot connect to {self.description}: {err}") from err
        return sock.detach()


class SocketTransport(Transport):
    """An already-connected socket (one end of a socketpair). Cannot reopen once closed."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.description = "socket"
        self._sock: Optional[socket.socket] = sock

    def _open_fd(self) -> int:
        if self._sock is None:
            raise TransportError("the socket was closed and cannot be reopened")
        return self._sock.fileno()

    def _close_fd(self, fd: int) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


def _port_paths_by_name(sys_root: str, dev_root: str) -> Tuple[Optional[str], List[str]]:
    """The /dev node of the virtio port named PORT_NAME, and the names seen on the way."""
    class_dir = os.path.join(sys_root, "class", "virtio-ports")
    seen: List[str] = []
    try:
        entries = sorted(os.listdir(class_dir))
    except OSError:
        return None, seen
    for entry in entries:
        try:
            with open(os.path.join(class_dir, entry, "name"), "rb") as f:
                name = f.read().decode("utf-8", "replace").strip()
        except OSError:
            continue
        seen.append(f"{entry}={name or '(unnamed)'}")
        if name == PORT_NAME:
            return os.path.join(dev_root, entry), seen
    return None, seen


def find_agent_port(dev_root: str = DEFAULT_DEV_ROOT, sys_root: str = DEFAULT_SYS_ROOT) -> str:
    """The path of the virtio-serial port named ``org.ebb.agent.0``.

    Tries ``/dev/virtio-ports/org.ebb.agent.0`` (made by udev) first, then the port
    whose ``/sys/class/virtio-ports/*/name`` is the name (for guests without udev).
    Raises :class:`PortNotFound` saying where it looked and what the VM needs.
    """
    by_link = os.path.join(dev_root, "virtio-ports", PORT_NAME)
    if os.path.exists(by_link):
        return by_link
    path, seen = _port_paths_by_name(sys_root, dev_root)
    if path is not None:
        return path
    class_dir = os.path.join(sys_root, "class", "virtio-ports")
    found = ", ".join(seen) if seen else "none"
    raise PortNotFound(
        f"no virtio-serial port named {PORT_NAME}: {by_link} does not exist and no port "
        f"under {class_dir} has that name (ports found: {found}). The VM needs a "
        "virtio-serial controller and a channel in its libvirt XML: <channel type='unix'>"
        f"<target type='virtio' name='{PORT_NAME}'/></channel>, and the guest kernel needs "
        "the virtio_console module. For an emulated serial port pass --device /dev/ttyS1."
    )


def transport_for_device(device: Optional[str], dev_root: str = DEFAULT_DEV_ROOT,
                         sys_root: str = DEFAULT_SYS_ROOT) -> Transport:
    """The transport a ``--device`` value means.

    ``None``: the virtio-serial port found by :func:`find_agent_port`;
    ``unix:PATH``: a unix stream socket; a ``tty*`` node (``/dev/ttyS1``,
    ``/dev/ttyAMA0``, ``/dev/pts/3``): a serial line; anything else: a virtio-serial port.
    """
    if device is None:
        return VirtioPortTransport(find_agent_port(dev_root, sys_root))
    if device.startswith(UNIX_PREFIX):
        return UnixSocketTransport(device[len(UNIX_PREFIX):])
    real = os.path.realpath(device)
    name = os.path.basename(real)
    if name.startswith("tty") or real.startswith(os.path.join(dev_root, "pts") + os.sep):
        return SerialTransport(device)
    try:
        mode = os.stat(real).st_mode
    except OSError as err:
        raise TransportError(f"--device {device}: {err.strerror}") from err
    if stat.S_ISSOCK(mode):
        return UnixSocketTransport(device)
    return VirtioPortTransport(device)
