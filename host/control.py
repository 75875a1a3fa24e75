"""ebbd's control socket: ``ebbctl status``, ``explain``, ``reload``, ``pause`` ...

Wire format: newline-delimited JSON over a unix stream socket. A request is one
line ``{"cmd": "status", ...arguments}``; the answer is one line
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "what went wrong"}``.
A client may send several requests on one connection.

Who may do what:

- Connecting at all is governed by the socket file's permissions. ebbd creates
  it mode 0660 with group ``ebb`` when that group exists, else 0600 (root only).
- Reading (``status``, ``explain``) is allowed to anyone who could connect. An
  administrator who wants unprivileged users to read status can widen the
  socket's mode; nothing else changes.
- Changing (``reload``, ``pause``, ``resume``, ``set-floor``) is allowed only to
  uid 0 or members of group ``ebb``, checked on the peer's credentials
  (SO_PEERCRED), never on anything the client says about itself.

Anyone who can connect is treated as hostile to the daemon's availability:
a request line is at most :data:`MAX_REQUEST_BYTES` and nested at most
:data:`MAX_REQUEST_DEPTH` deep (checked before it is decoded), lines are cut
in linear time, a connection that completes no request for
:data:`CLIENT_IDLE_TIMEOUT_S` is closed, a non-root uid holds at most
:data:`MAX_CLIENTS_PER_UID` of the :data:`MAX_CLIENTS` connections and the
last :data:`ROOT_RESERVED_SLOTS` are root's, and any error while serving one
client closes that client only.

This module is the transport: the socket, its bounds, the server thread and
the client. What each request does and the permission check are
:mod:`ebb.host.control_requests`.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import json
import logging
import os
import re
import selectors
import socket
import stat
import struct
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional

from .control_requests import (
    CHANGE_COMMANDS,
    CONTROL_GROUP,
    MAX_FLOOR_MIB,
    READ_COMMANDS,
    Authorizer,
    ControlError,
    ControlService,
    DaemonControl,
    DaemonUnreachable,
    NoAnswer,
    PeerCred,
    PermissionDenied,
    failure_reply,
)
from .threads import join_thread, start_thread

# The request side lives in control_requests; these names stay importable from here.
__all__ = [
    "CHANGE_COMMANDS",
    "CLIENT_IDLE_TIMEOUT_S",
    "CONTROL_GROUP",
    "DEFAULT_SOCKET_PATH",
    "MAX_CLIENTS",
    "MAX_CLIENTS_PER_UID",
    "MAX_FLOOR_MIB",
    "MAX_PENDING_REPLY_BYTES",
    "MAX_REQUESTS_PER_READ",
    "MAX_REQUEST_BYTES",
    "MAX_REQUEST_DEPTH",
    "READ_COMMANDS",
    "ROOT_RESERVED_SLOTS",
    "Authorizer",
    "ControlClient",
    "ControlError",
    "ControlServer",
    "ControlService",
    "DaemonControl",
    "DaemonUnreachable",
    "LineBuffer",
    "NoAnswer",
    "PeerCred",
    "PermissionDenied",
    "decode_request",
    "json_depth_exceeds",
    "peer_credentials",
]

LOG = logging.getLogger(__name__)

DEFAULT_SOCKET_PATH = "/run/ebb/ebbd.sock"
#: A request line longer than this closes the connection (nobody needs more).
MAX_REQUEST_BYTES = 64 * 1024
#: Deepest nesting of arrays and objects in a request (a request is one flat
#: object; checked before decoding, so no decoder recursion is ever reached).
MAX_REQUEST_DEPTH = 8
#: Requests answered from one read; a client sending more at once is closed.
MAX_REQUESTS_PER_READ = 64
#: Answers waiting to be written to one client, beyond which it is dropped.
MAX_PENDING_REPLY_BYTES = 16 * 1024 * 1024
#: Clients served at once; more are refused so a flood cannot exhaust fds.
MAX_CLIENTS = 32
#: Of MAX_CLIENTS, the last ones only root (uid 0) may take, so that an
#: administrator can always reach a daemon that others keep busy.
ROOT_RESERVED_SLOTS = 1
#: Connections one non-root uid may hold at once.
MAX_CLIENTS_PER_UID = 8
#: A connection that completes no request (and takes none of its answer) for
#: this long is closed. ebbctl sends its request at once and waits 10 s at most.
CLIENT_IDLE_TIMEOUT_S = 10.0

_PEERCRED = struct.Struct("3i")


# --------------------------------------------------------------------------- credentials


def peer_credentials(sock: socket.socket) -> PeerCred:
    """SO_PEERCRED of a connected unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    pid, uid, gid = _PEERCRED.unpack(raw)
    return PeerCred(pid=pid, uid=uid, gid=gid)


# --------------------------------------------------------------------------- server


class LineBuffer:
    """Bytes from one client, cut into request lines in time linear in what arrives.

    Each byte is searched for a newline at most twice and copied at most three
    times: the complete lines of one :meth:`feed` are cut by one ``split`` of
    one copy, and the consumed prefix is dropped once, however many lines
    there are (cutting with ``partition`` and copying the rest for each line
    was quadratic: 64 KiB of newlines cost 170 ms of CPU and 2 GiB of copying).
    ``bytes_searched`` and ``bytes_copied`` count the work done, for tests.
    """

    def __init__(self, max_line_bytes: int = MAX_REQUEST_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self._buffer = bytearray()
        self._searched = 0  # bytes at the start of _buffer known to hold no newline
        self.bytes_searched = 0
        self.bytes_copied = 0

    def __len__(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> List[bytes]:
        """Add ``data``; return the complete lines it ends (without their newline)."""
        buffer = self._buffer
        buffer += data
        self.bytes_copied += len(data)
        last = buffer.rfind(b"\n", self._searched)  # looks at the new bytes only
        if last < 0:
            self.bytes_searched += len(buffer) - self._searched
            self._searched = len(buffer)
            return []
        self.bytes_searched += len(buffer) - last  # rfind, from the end back to ``last``
        with memoryview(buffer) as view:
            complete = bytes(view[:last])
        lines = complete.split(b"\n")
        self.bytes_searched += last  # split
        self.bytes_copied += 2 * last  # the copy, and the lines split out of it
        del buffer[:last + 1]
        self.bytes_copied += len(buffer)  # the unfinished line moves to the front
        self._searched = len(buffer)
        return lines

    def overflowing(self) -> bool:
        """True when the unfinished line is already longer than a request may be."""
        return len(self._buffer) > self.max_line_bytes

    def clear(self) -> None:
        self._buffer = bytearray()
        self._searched = 0


_JSON_STRUCTURE = re.compile(rb'[\[\]{}"\\]')


def json_depth_exceeds(line: bytes, max_depth: int) -> bool:
    """True when ``line`` nests arrays/objects deeper than ``max_depth``.

    A linear scan of the bytes that matter (brackets, quotes, backslashes),
    skipping string contents, so that the decoder is never handed a nesting it
    would recurse into (5000 ``[`` raised RecursionError inside ``json``).
    Malformed input is judged as far as it goes; the decoder rejects the rest.
    """
    depth = 0
    in_string = False
    escaped_at = -1
    for match in _JSON_STRUCTURE.finditer(line):
        at = match.start()
        if at == escaped_at:
            continue
        char = line[at]
        if in_string:
            if char == 0x5C:  # backslash: the next byte is escaped
                escaped_at = at + 1
            elif char == 0x22:
                in_string = False
        elif char == 0x22:
            in_string = True
        elif char in (0x5B, 0x7B):
            depth += 1
            if depth > max_depth:
                return True
        elif char in (0x5D, 0x7D):
            depth -= 1
    return False


def decode_request(line: bytes) -> Any:
    """One request line as JSON, within the bounds; raises :class:`ControlError` if not."""
    if len(line) > MAX_REQUEST_BYTES:
        raise ControlError(f"request longer than {MAX_REQUEST_BYTES} bytes")
    if json_depth_exceeds(line, MAX_REQUEST_DEPTH):
        raise ControlError(f"request nested deeper than {MAX_REQUEST_DEPTH} levels")
    try:
        return json.loads(line, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        raise ControlError(f"request is not JSON: {err}") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


@dataclass
class _Client:
    sock: socket.socket
    cred: PeerCred
    deadline: float
    inbox: LineBuffer = field(default_factory=LineBuffer)
    outbox: bytearray = field(default_factory=bytearray)
    closing: bool = False


class ControlServer:
    """Serves the control socket from one thread with a selector.

    Requests are answered in the server thread: they only read the daemon's
    published state or set flags, so none of them blocks. ``clock`` and
    ``idle_timeout_s`` are injectable so that idle clients are tested without
    waiting.
    """

    def __init__(
        self,
        path: str,
        service: ControlService,
        mode: Optional[int] = None,
        group_name: str = CONTROL_GROUP,
        *,
        idle_timeout_s: float = CLIENT_IDLE_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self._service = service
        self._group_name = group_name
        self._mode = mode
        self._idle_timeout_s = idle_timeout_s
        self._clock = clock
        self._listener: Optional[socket.socket] = None
        self._selector = selectors.DefaultSelector()
        self._clients: Dict[int, _Client] = {}
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # -- lifecycle

    def bind(self) -> None:
        """Create the socket file with the right owner and mode, already listening.

        The socket's directory must be one only root or ebbd can write
        (:func:`ebb.host.rundir.prepare_run_dir` creates or checks it). The
        socket is bound inside a fresh private directory (mode 0700, made by
        ``mkdtemp`` in that directory), given its group and mode there, set
        listening, and only then renamed into place. Why not set them on the
        open socket: on Linux ``fchmod``/``fchown`` of a socket descriptor
        change the socket's own inode, not the file ``bind`` created, so they
        must go by path; inside a 0700 directory of ebbd's nobody else can
        reach that path (to connect early, or to swap the file for a link that
        ``chown``/``chmod`` would follow) until the rename, which is atomic. A
        client never finds the file before ebbd accepts on it, and a live
        socket at ``path`` (another ebbd) stops this before anything is created.
        """
        from ebb.host.rundir import prepare_run_dir

        directory = os.path.dirname(self.path) or "."
        prepare_run_dir(directory, self._group_name)
        _remove_stale_socket(self.path)
        private = tempfile.mkdtemp(prefix=f".{os.path.basename(self.path)}.", dir=directory)
        temporary = os.path.join(private, "socket")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            # A restrictive umask as well: the file is never more open than it will be.
            old_umask = os.umask(0o177)
            try:
                listener.bind(temporary)
            finally:
                os.umask(old_umask)
            gid = _group_gid(self._group_name)
            mode = self._mode
            if mode is None:
                mode = 0o660 if gid is not None else 0o600
            if gid is not None and os.geteuid() == 0:
                os.chown(temporary, 0, gid)
            os.chmod(temporary, mode)
            listener.listen(16)
            os.rename(temporary, self.path)
        except BaseException:
            listener.close()
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        finally:
            with contextlib.suppress(OSError):
                os.rmdir(private)
        listener.setblocking(False)
        self._listener = listener
        self._selector.register(listener, selectors.EVENT_READ, None)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        LOG.info(
            "control socket %s (mode %o%s)",
            self.path,
            mode,
            f", group {self._group_name}" if gid is not None else ", root only",
        )

    def start(self, on_crash: Optional[Callable[[BaseException], None]] = None) -> None:
        """Serve in a background thread (binds first if needed)."""
        if self._listener is None:
            self.bind()

        self._thread = start_thread("ebbd-control", self.serve, LOG, "control socket", on_crash)

    @property
    def thread(self) -> Optional[threading.Thread]:
        return self._thread

    @property
    def client_count(self) -> int:
        """Connections being served now."""
        return len(self._clients)

    def stop(self) -> None:
        """Stop serving, close every connection and remove the socket file."""
        self._stop.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        join_thread(self._thread)
        self._close_all()

    def _close_all(self) -> None:
        for client in list(self._clients.values()):
            self._drop(client)
        if self._listener is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(self._listener)
            self._listener.close()
            self._listener = None
            try:
                if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                    os.unlink(self.path)
            except OSError:
                pass
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1

    # -- loop

    def serve(self) -> None:
        """Run until :meth:`stop`."""
        while not self._stop.is_set():
            self.serve_once(1.0)

    def serve_once(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` (less when a client's deadline comes first) and
        handle what is ready, then close the clients that stayed idle too long."""
        if self._clients:
            next_deadline = min(client.deadline for client in self._clients.values())
            timeout_s = max(0.0, min(timeout_s, next_deadline - self._clock()))
        for key, events in self._selector.select(timeout=timeout_s):
            if key.fileobj is self._listener:
                self._accept()
            elif key.fileobj == self._wake_r:
                with contextlib.suppress(OSError):
                    os.read(self._wake_r, 64)
            else:
                self._serve_client(key.data, events)
        self._close_idle()

    def _serve_client(self, client: _Client, events: int) -> None:
        """One client's turn. Whatever goes wrong closes this client, never the server."""
        try:
            if events & selectors.EVENT_READ:
                self._read(client)
            if events & selectors.EVENT_WRITE and client.sock.fileno() >= 0:
                self._write(client)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as err:  # RecursionError, MemoryError, a bug: one client only
            LOG.error("control socket: %s while serving uid %d (pid %d); closing that "
                      "connection", type(err).__name__, client.cred.uid, client.cred.pid,
                      exc_info=not isinstance(err, (RecursionError, MemoryError)))
            self._drop(client)

    def _close_idle(self) -> None:
        now = self._clock()
        for client in [c for c in self._clients.values() if c.deadline <= now]:
            LOG.debug("control socket: closing a connection of uid %d (pid %d) idle for "
                      "%g s", client.cred.uid, client.cred.pid, self._idle_timeout_s)
            self._drop(client)

    def _accept(self) -> None:
        assert self._listener is not None
        # A bounded number per turn: a flood of connections cannot keep the
        # thread from serving the clients it already has.
        for _ in range(2 * MAX_CLIENTS):
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                LOG.warning("control socket accept failed: %s", err)
                return
            try:
                self._admit(sock)
            except (KeyboardInterrupt, SystemExit):
                sock.close()
                raise
            except BaseException as err:  # e.g. MemoryError: this connection only
                LOG.error("control socket: %s while accepting a connection; closing it",
                          type(err).__name__, exc_info=True)
                self._clients.pop(sock.fileno(), None)
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(sock)
                sock.close()

    def _admit(self, sock: socket.socket) -> None:
        """Serve a new connection, or tell it why not and close it."""
        try:
            sock.setblocking(False)
            cred = peer_credentials(sock)
        except OSError:
            sock.close()
            return
        refusal = self._refusal(cred)
        if refusal is not None:
            _refuse(sock, refusal)
            return
        client = _Client(sock=sock, cred=cred, deadline=self._clock() + self._idle_timeout_s)
        self._clients[sock.fileno()] = client
        self._selector.register(sock, selectors.EVENT_READ, client)

    def _refusal(self, cred: PeerCred) -> Optional[str]:
        """Why a new connection from ``cred`` is not served now (None: it is)."""
        count = len(self._clients)
        if count >= MAX_CLIENTS:
            return f"ebbd is serving {MAX_CLIENTS} control connections already; try again"
        if cred.uid == 0:
            return None
        if count >= MAX_CLIENTS - ROOT_RESERVED_SLOTS:
            return (f"ebbd is serving {count} control connections; the rest are kept for "
                    "root; try again")
        same_uid = sum(1 for c in self._clients.values() if c.cred.uid == cred.uid)
        if same_uid >= MAX_CLIENTS_PER_UID:
            return (f"uid {cred.uid} holds {same_uid} control connections already "
                    f"(at most {MAX_CLIENTS_PER_UID}); close some and try again")
        return None

    def _read(self, client: _Client) -> None:
        try:
            data = client.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(client)
            return
        if not data:
            client.closing = True
            if not client.outbox:
                self._drop(client)
            return
        if client.closing:
            return  # answered its last; the rest is not read
        answered = 0
        for line in client.inbox.feed(data):
            if not line.strip():
                continue  # blank lines cost nothing and get no answer
            if answered >= MAX_REQUESTS_PER_READ:
                self._close_with(client, f"more than {MAX_REQUESTS_PER_READ} requests at once")
                break
            answered += 1
            self._answer(client, line)
            if client.closing:
                break
        if answered:
            client.deadline = self._clock() + self._idle_timeout_s
        if not client.closing and client.inbox.overflowing():
            self._close_with(client, f"request longer than {MAX_REQUEST_BYTES} bytes")
        self._write(client)

    def _close_with(self, client: _Client, message: str) -> None:
        """Answer ``message`` as an error, then close once it is written."""
        self._queue(client, failure_reply(message))
        client.closing = True
        client.inbox.clear()

    def _answer(self, client: _Client, line: bytes) -> None:
        if len(line) > MAX_REQUEST_BYTES:
            self._close_with(client, f"request longer than {MAX_REQUEST_BYTES} bytes")
            return
        try:
            request = decode_request(line)
        except ControlError as err:
            self._queue(client, failure_reply(str(err)))
            return
        if not isinstance(request, dict):
            self._queue(client, failure_reply("request must be a JSON object"))
            return
        self._queue(client, self._service.handle(request, client.cred))

    def _queue(self, client: _Client, reply: Mapping[str, Any]) -> None:
        client.outbox += json.dumps(reply, separators=(",", ":"), default=str).encode() + b"\n"
        if len(client.outbox) > MAX_PENDING_REPLY_BYTES:
            client.closing = True
            client.outbox = bytearray()

    def _write(self, client: _Client) -> None:
        if client.sock.fileno() < 0:
            return
        while client.outbox:
            try:
                sent = client.sock.send(client.outbox)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._drop(client)
                return
            del client.outbox[:sent]
            if sent:
                client.deadline = self._clock() + self._idle_timeout_s  # it is reading
        if not client.outbox and client.closing:
            self._drop(client)
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.outbox else 0)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.modify(client.sock, events, client)

    def _drop(self, client: _Client) -> None:
        fd = client.sock.fileno()
        self._clients.pop(fd, None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(client.sock)
        client.sock.close()


def _refuse(sock: socket.socket, message: str) -> None:
    """Tell a client it is not served (one error line, best effort), and close."""
    with contextlib.suppress(OSError):
        sock.send(json.dumps(failure_reply(message)).encode() + b"\n")
        # Half-close first: the answer is then read before the end of the stream.
        sock.shutdown(socket.SHUT_WR)
    sock.close()


def _group_gid(name: str) -> Optional[int]:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def _remove_stale_socket(path: str) -> None:
    """Remove a socket file left by a crashed ebbd; refuse to steal a live one."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ControlError(
            f"{path} exists and is not a socket; remove it or set daemon.control_socket"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    probe.settimeout(0.5)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens: a leftover
        return
    finally:
        probe.close()
    raise ControlError(f"another ebbd is already listening on {path}")


# --------------------------------------------------------------------------- client


class ControlClient:
    """Client side of the control socket, used by ``ebbctl``.

    Every way of getting no answer (refused, reset, end of stream, timeout, an
    answer that is not one) raises a :class:`ControlError` subclass with a
    sentence saying which, so that ``ebbctl`` exits non-zero with it.
    """

    def __init__(self, path: str = DEFAULT_SOCKET_PATH, timeout_s: float = 10.0) -> None:
        self.path = path
        self.timeout_s = timeout_s

    def request(self, cmd: str, **arguments: Any) -> Any:
        """Send one request; return its ``result`` or raise :class:`ControlError`."""
        message = dict(arguments)
        message["cmd"] = cmd
        sock = self._connect()
        try:
            try:
                sock.sendall(json.dumps(message).encode() + b"\n")
            except socket.timeout:
                raise
            except OSError as err:
                # ebbd may have said why before closing (too many connections): read it.
                try:
                    reply = _read_line(sock, self.path)
                except NoAnswer:
                    raise NoAnswer(
                        f"ebbd at {self.path} closed the connection before taking the "
                        f"request ({err.strerror or err})"
                    ) from None
            else:
                reply = _read_line(sock, self.path)
        except socket.timeout:
            raise NoAnswer(
                f"ebbd at {self.path} did not answer within {self.timeout_s:g} s"
            ) from None
        finally:
            sock.close()
        return _result_of(reply)

    def _connect(self) -> socket.socket:
        """A socket connected to ebbd (tests override this to fake the other end)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(self.timeout_s)
        try:
            sock.connect(self.path)
        except FileNotFoundError:
            sock.close()
            raise DaemonUnreachable(self._unreachable("no such socket")) from None
        except ConnectionRefusedError:
            sock.close()
            raise DaemonUnreachable(self._unreachable("connection refused")) from None
        except PermissionError:
            sock.close()
            raise PermissionDenied(
                f"cannot connect to ebbd at {self.path}: permission denied "
                f"(run as root or as a member of group {CONTROL_GROUP!r})"
            ) from None
        except socket.timeout:
            sock.close()
            raise NoAnswer(
                f"ebbd at {self.path} did not accept the connection within {self.timeout_s:g} s"
            ) from None
        except OSError as err:
            sock.close()
            raise DaemonUnreachable(self._unreachable(err.strerror or str(err))) from None
        return sock

    def _unreachable(self, why: str) -> str:
        return f"cannot reach ebbd at {self.path}: is ebbd running? ({why})"


def _result_of(reply: bytes) -> Any:
    """The ``result`` of one answer line, or the :class:`ControlError` it stands for."""
    try:
        decoded = json.loads(reply)
    except (ValueError, RecursionError) as err:
        raise NoAnswer(f"ebbd sent an answer that is not JSON: {err}") from None
    if not isinstance(decoded, dict) or not isinstance(decoded.get("ok"), bool):
        raise NoAnswer('ebbd sent a malformed answer (not an object with "ok")')
    if not decoded["ok"]:
        text = str(decoded.get("error", "unknown error"))
        if decoded.get("denied"):
            raise PermissionDenied(text)
        raise ControlError(text)
    if "result" not in decoded:
        raise NoAnswer('ebbd sent a malformed answer (no "result")')
    return decoded["result"]


def _read_line(sock: socket.socket, path: str) -> bytes:
    """The first line ebbd sends; :class:`NoAnswer` when the stream ends before it."""
    chunks = bytearray()
    searched = 0
    while True:
        newline = chunks.find(b"\n", searched)
        if newline >= 0:
            return bytes(chunks[:newline])
        searched = len(chunks)
        if len(chunks) > MAX_PENDING_REPLY_BYTES:
            raise NoAnswer(f"ebbd at {path} sent an answer longer than "
                           f"{MAX_PENDING_REPLY_BYTES} bytes")
        try:
            data = sock.recv(65536)
        except socket.timeout:
            raise
        except OSError as err:
            if err.errno in (errno.ECONNRESET, errno.EPIPE):
                raise NoAnswer(
                    f"ebbd at {path} reset the connection without answering"
                ) from None
            raise NoAnswer(f"reading ebbd's answer from {path}: {err.strerror or err}") from None
        if not data:
            raise NoAnswer(f"ebbd at {path} closed the connection without answering")
        chunks += data
