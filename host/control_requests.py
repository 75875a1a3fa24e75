"""What each control request does, and who may make it.

:class:`ControlService` turns one decoded request (``{"cmd": ..., ...}``) into
one reply (``{"ok": true, "result": ...}`` or ``{"ok": false, "error": ...}``)
and checks every argument; :class:`Authorizer` decides from the peer's kernel
credentials whether it may run a changing command. Neither touches a socket:
the transport and its bounds are :mod:`ebb.host.control`, which re-exports
these names. The exception tree of the control socket, for ebbd and ebbctl
alike, is here.
"""

from __future__ import annotations

import grp
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Protocol, Set

LOG = logging.getLogger(__name__)

#: Group whose members may change ebbd's behaviour (besides root).
CONTROL_GROUP = "ebb"
#: Commands anyone who can connect may run.
READ_COMMANDS = frozenset({"status", "explain", "metrics", "ping"})
#: Commands that change the daemon: root or group ``ebb`` only.
CHANGE_COMMANDS = frozenset({"reload", "pause", "resume", "set-floor", "yield"})
#: Largest floor ``set-floor`` accepts (1 PiB, in MiB): beyond any VM.
MAX_FLOOR_MIB = 1 << 30


class ControlError(Exception):
    """A control request failed; the message is fit to show the user."""


class DaemonUnreachable(ControlError):
    """Nothing (or nothing that answers) is listening on the control socket."""


class PermissionDenied(ControlError):
    """The peer may not run that command."""


class NoAnswer(DaemonUnreachable):
    """ebbd took the connection but gave no answer (reset, end of stream, timeout,
    or something that is not an answer)."""


# --------------------------------------------------------------------------- credentials


@dataclass(frozen=True)
class PeerCred:
    """Who is on the other end of a unix socket, as the kernel reports it."""

    pid: int
    uid: int
    gid: int


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
            return failure_reply('request needs a "cmd" string')
        if cmd not in READ_COMMANDS and cmd not in CHANGE_COMMANDS:
            known = ", ".join(sorted(READ_COMMANDS | CHANGE_COMMANDS))
            return failure_reply(f"unknown command {cmd!r}; known: {known}")
        if cmd in CHANGE_COMMANDS and not self._authorizer.may_change(cred):
            return failure_reply(
                f"permission denied: {cmd!r} needs root or membership of group "
                f"{self._authorizer.group_name!r} (you are uid {cred.uid})",
                denied=True,
            )
        try:
            result = self._dispatch(cmd, request)
        except ControlError as err:
            return failure_reply(str(err))
        except Exception as err:  # the daemon must survive a bug in one command
            LOG.exception("control command %r failed", cmd)
            return failure_reply(f"internal error in {cmd!r}: {err}")
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
                isinstance(floor, bool) or not isinstance(floor, (int, float))
                or not 0 <= floor <= MAX_FLOOR_MIB  # also refuses NaN
            ):
                raise ControlError(
                    f"floor_mib must be a number of MiB from 0 to {MAX_FLOOR_MIB} (or null)"
                )
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


def failure_reply(message: str, denied: bool = False) -> Dict[str, Any]:
    """The reply for a request that failed (``denied``: for want of permission)."""
    reply: Dict[str, Any] = {"ok": False, "error": message}
    if denied:
        reply["denied"] = True
    return reply
