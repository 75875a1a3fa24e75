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
"""

from __future__ import annotations

import contextlib
import errno
import grp
import json
import logging
import os
import selectors
import socket
import stat
import struct
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Protocol, Set

from .threads import join_thread, start_thread

LOG = logging.getLogger(__name__)

DEFAULT_SOCKET_PATH = "/run/ebb/ebbd.sock"
#: Group whose members may change ebbd's behaviour (besides root).
CONTROL_GROUP = "ebb"
#: Commands anyone who can connect may run.
READ_COMMANDS = frozenset({"status", "explain", "metrics", "ping"})
#: Commands that change the daemon: root or group ``ebb`` only.
CHANGE_COMMANDS = frozenset({"reload", "pause", "resume", "set-floor", "yield"})
#: A request line longer than this closes the connection (nobody needs more).
MAX_REQUEST_BYTES = 64 * 1024
#: Answers waiting to be written to one client, beyond which it is dropped.
MAX_PENDING_REPLY_BYTES = 16 * 1024 * 1024
#: Clients served at once; more are refused so a flood cannot exhaust fds.
MAX_CLIENTS = 32

_PEERCRED = struct.Struct("3i")


class ControlError(Exception):
    """A control request failed; the message is fit to show the user."""


class DaemonUnreachable(ControlError):
    """Nothing (or nothing that answers) is listening on the control socket."""


class PermissionDenied(ControlError):
    """The peer may not run that command."""


# --------------------------------------------------------------------------- credentials


@dataclass(frozen=True)
class PeerCred:
    """Who is on the other end of a unix socket, as the kernel reports it."""

    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket) -> PeerCred:
    """SO_PEERCRED of a connected unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    pid, uid, gid = _PEERCRED.unpack(raw)
    return PeerCred(pid=pid, uid=uid, gid=gid)


class Authorizer:
    """Decides whether a peer may change the daemon: root, or a member of ``ebb``.

    Membership is the peer process's own groups (primary gid, and supplementary
    groups from ``<proc_root>/<pid>/status``), falling back to the group's member
    list in the group database. ``group_gid`` and ``proc_root`` are injectable so
    the rule is tested without real users.
    """

    def __init__(
        self,
        group_name: str = CONTROL_GROUP,
        group_gid: Optional[int] = None,
        group_members: Optional[Iterable[str]] = None,
        proc_root: str = "/proc",
        user_name_of: Optional[Callable[[int], Optional[str]]] = None,
        lookup_group: bool = True,
    ) -> None:
        self.group_name = group_name
        self.group_gid = group_gid
        self._members: Set[str] = set(group_members or ())
        if group_gid is None and lookup_group:
            try:
                entry = grp.getgrnam(group_name)
            except KeyError:
                pass
            else:
                self.group_gid = entry.gr_gid
                self._members |= set(entry.gr_mem)
        self._proc_root = proc_root
        self._user_name_of = user_name_of or _user_name

    def may_change(self, cred: PeerCred) -> bool:
        """True when this peer may run a changing command."""
        if cred.uid == 0:
            return True
        if self.group_gid is None:
            return False
        if cred.gid == self.group_gid:
            return True
        if self.group_gid in self._process_groups(cred.pid):
            return True
        name = self._user_name_of(cred.uid)
        return name is not None and name in self._members

    def _process_groups(self, pid: int) -> Set[int]:
        if pid <= 0:
            return set()
        path = os.path.join(self._proc_root, str(pid), "status")
        try:
            with open(path, encoding="ascii", errors="replace") as handle:
                for line in handle:
                    if line.startswith("Groups:"):
                        return {int(g) for g in line.split()[1:] if g.isdigit()}
        except OSError:
            pass
        return set()


def _user_name(uid: int) -> Optional[str]:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


# --------------------------------------------------------------------------- service


class DaemonControl(Protocol):
    """What the control socket needs from the daemon (implemented by the app)."""

    def status(self) -> Dict[str, Any]: ...

    def explain(self, vm: str) -> Dict[str, Any]: ...

    def reload(self) -> Dict[str, Any]: ...

    def pause(self) -> Dict[str, Any]: ...

    def resume(self) -> Dict[str, Any]: ...

    def set_floor(self, vm: str, floor_mib: Optional[float]) -> Dict[str, Any]: ...

    def yield_memory(self, vm: str, kib: Optional[int], poll: bool) -> Dict[str, Any]: ...


class ControlService:
    """Turns one request (a dict) into one reply (a dict), enforcing permissions."""

    def __init__(self, daemon: DaemonControl, authorizer: Authorizer) -> None:
        self._daemon = daemon
        self._authorizer = authorizer

    def handle(self, request: Mapping[str, Any], cred: PeerCred) -> Dict[str, Any]:
        """Answer ``request``; never raises."""
        cmd = request.get("cmd")
        if not isinstance(cmd, str):
            return _failure('request needs a "cmd" string')
        if cmd not in READ_COMMANDS and cmd not in CHANGE_COMMANDS:
            known = ", ".join(sorted(READ_COMMANDS | CHANGE_COMMANDS))
            return _failure(f"unknown command {cmd!r}; known: {known}")
        if cmd in CHANGE_COMMANDS and not self._authorizer.may_change(cred):
            return _failure(
                f"permission denied: {cmd!r} needs root or membership of group "
                f"{self._authorizer.group_name!r} (you are uid {cred.uid})",
                denied=True,
            )
        try:
            result = self._dispatch(cmd, request)
        except ControlError as err:
            return _failure(str(err))
        except Exception as err:  # the daemon must survive a bug in one command
            LOG.exception("control command %r failed", cmd)
            return _failure(f"internal error in {cmd!r}: {err}")
        if cmd in CHANGE_COMMANDS:
            LOG.info("control: %s by uid %d (pid %d): %s", cmd, cred.uid, cred.pid, result)
        return {"ok": True, "result": result}

    def _dispatch(self, cmd: str, request: Mapping[str, Any]) -> Any:
        if cmd == "ping":
            return {"pong": True}
        if cmd == "status":
            return self._daemon.status()
        if cmd == "explain":
            return self._daemon.explain(_vm_argument(request))
        if cmd == "metrics":
            metrics = getattr(self._daemon, "metrics", None)
            if metrics is None:
                raise ControlError("this ebbd has no metrics")
            return metrics()
        if cmd == "reload":
            return self._daemon.reload()
        if cmd == "pause":
            return self._daemon.pause()
        if cmd == "resume":
            return self._daemon.resume()
        if cmd == "set-floor":
            floor = request.get("floor_mib")
            if floor is not None and (
                isinstance(floor, bool) or not isinstance(floor, (int, float)) or floor < 0
            ):
                raise ControlError("floor_mib must be a non-negative number of MiB (or null)")
            return self._daemon.set_floor(_vm_argument(request), floor)
        if cmd == "yield":
            # Started once ({"vm", "kib"}), then polled ({"vm", "poll": true}) until
            # its "state" is "done": the server thread never waits for a guest.
            poll = request.get("poll") is True
            kib = request.get("kib")
            if not poll and (
                isinstance(kib, bool) or not isinstance(kib, int) or not 0 < kib < 2**53
            ):
                raise ControlError("kib must be a positive whole number of KiB")
            return self._daemon.yield_memory(_vm_argument(request), kib, poll)
        raise ControlError(f"unknown command {cmd!r}")  # pragma: no cover - guarded above


def _vm_argument(request: Mapping[str, Any]) -> str:
    vm = request.get("vm")
    if not isinstance(vm, str) or not vm:
        raise ControlError('this command needs a "vm" (domain name)')
    return vm


def _failure(message: str, denied: bool = False) -> Dict[str, Any]:
    reply: Dict[str, Any] = {"ok": False, "error": message}
    if denied:
        reply["denied"] = True
    return reply


# --------------------------------------------------------------------------- server


@dataclass
class _Client:
    sock: socket.socket
    cred: PeerCred
    inbox: bytearray = field(default_factory=bytearray)
    outbox: bytearray = field(default_factory=bytearray)
    closing: bool = False


class ControlServer:
    """Serves the control socket from one thread with a selector.

    Requests are answered in the server thread: they only read the daemon's
    published state or set flags, so none of them blocks.
    """

    def __init__(
        self,
        path: str,
        service: ControlService,
        mode: Optional[int] = None,
        group_name: str = CONTROL_GROUP,
    ) -> None:
        self.path = path
        self._service = service
        self._group_name = group_name
        self._mode = mode
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

        The socket is bound under a temporary name in the same directory, set
        listening and given its mode and group, then renamed into place: a
        client never finds the file before ebbd accepts on it (no "connection
        refused" while ebbd starts). A live socket at ``path`` (another ebbd)
        stops this before anything is created.
        """
        directory = os.path.dirname(self.path) or "."
        if not os.path.isdir(directory):
            os.makedirs(directory, exist_ok=True)
            # Explicitly: under systemd's UMask=0077 makedirs would give 0700, and
            # members of group ebb could not reach the socket inside.
            os.chmod(directory, 0o755)
        _remove_stale_socket(self.path)
        temporary = os.path.join(
            directory, f".{os.path.basename(self.path)}.{os.getpid()}.tmp"
        )
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)  # left by a crash of a process with our pid
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            # Bind under a restrictive umask so there is no moment when the socket
            # is more open than it will be.
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
            for key, events in self._selector.select(timeout=1.0):
                if key.fileobj is self._listener:
                    self._accept()
                elif key.fileobj == self._wake_r:
                    with contextlib.suppress(OSError):
                        os.read(self._wake_r, 64)
                else:
                    client = key.data
                    if events & selectors.EVENT_READ:
                        self._read(client)
                    if events & selectors.EVENT_WRITE and client.sock.fileno() >= 0:
                        self._write(client)

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                LOG.warning("control socket accept failed: %s", err)
                return
            if len(self._clients) >= MAX_CLIENTS:
                sock.close()
                continue
            sock.setblocking(False)
            try:
                cred = peer_credentials(sock)
            except OSError:
                sock.close()
                continue
            client = _Client(sock=sock, cred=cred)
            self._clients[sock.fileno()] = client
            self._selector.register(sock, selectors.EVENT_READ, client)

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
        client.inbox += data
        while b"\n" in client.inbox:
            line, _, rest = bytes(client.inbox).partition(b"\n")
            client.inbox = bytearray(rest)
            self._answer(client, line)
        if len(client.inbox) > MAX_REQUEST_BYTES:
            self._queue(client, _failure(f"request longer than {MAX_REQUEST_BYTES} bytes"))
            client.closing = True
            client.inbox = bytearray()
        self._write(client)

    def _answer(self, client: _Client, line: bytes) -> None:
        if not line.strip():
            return
        try:
            request = json.loads(line)
        except ValueError as err:
            self._queue(client, _failure(f"request is not JSON: {err}"))
            return
        if not isinstance(request, dict):
            self._queue(client, _failure("request must be a JSON object"))
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
    """Client side of the control socket, used by ``ebbctl``."""

    def __init__(self, path: str = DEFAULT_SOCKET_PATH, timeout_s: float = 10.0) -> None:
        self.path = path
        self.timeout_s = timeout_s

    def request(self, cmd: str, **arguments: Any) -> Any:
        """Send one request; return its ``result`` or raise :class:`ControlError`."""
        message = dict(arguments)
        message["cmd"] = cmd
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(self.timeout_s)
        try:
            try:
                sock.connect(self.path)
            except FileNotFoundError:
                raise DaemonUnreachable(self._unreachable("no such socket")) from None
            except ConnectionRefusedError:
                raise DaemonUnreachable(self._unreachable("connection refused")) from None
            except PermissionError:
                raise PermissionDenied(
                    f"cannot connect to ebbd at {self.path}: permission denied "
                    f"(run as root or as a member of group {CONTROL_GROUP!r})"
                ) from None
            except OSError as err:
                raise DaemonUnreachable(self._unreachable(err.strerror or str(err))) from None
            sock.sendall(json.dumps(message).encode() + b"\n")
            reply = _read_line(sock, self.path)
        except socket.timeout:
            raise ControlError(
                f"ebbd at {self.path} did not answer within {self.timeout_s:g} s"
            ) from None
        finally:
            sock.close()
        try:
            decoded = json.loads(reply)
        except ValueError as err:
            raise ControlError(f"ebbd sent an answer that is not JSON: {err}") from None
        if not isinstance(decoded, dict):
            raise ControlError("ebbd sent an answer that is not a JSON object")
        if not decoded.get("ok"):
            text = str(decoded.get("error", "unknown error"))
            if decoded.get("denied"):
                raise PermissionDenied(text)
            raise ControlError(text)
        return decoded.get("result")

    def _unreachable(self, why: str) -> str:
        return f"cannot reach ebbd at {self.path}: is ebbd running? ({why})"


def _read_line(sock: socket.socket, path: str) -> bytes:
    chunks = bytearray()
    while b"\n" not in chunks:
        try:
            data = sock.recv(65536)
        except OSError as err:
            if err.errno in (errno.ECONNRESET, errno.EPIPE):
                data = b""
            else:
                raise
        if not data:
            raise DaemonUnreachable(f"ebbd at {path} closed the connection without answering")
        chunks += data
    return bytes(chunks).partition(b"\n")[0]
