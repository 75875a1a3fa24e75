"""Telling systemd how ebbd is doing: READY, STATUS, WATCHDOG, STOPPING.

``systemd.daemon.notify`` (systemd-python) is used when it imports; otherwise
the datagram is written to ``$NOTIFY_SOCKET`` directly, which is all the
protocol is. Outside systemd (no ``NOTIFY_SOCKET``) every call is a no-op, so
the daemon never needs to ask whether it runs under systemd.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Callable, Mapping, Optional

LOG = logging.getLogger(__name__)

Sender = Callable[[str], bool]


def _systemd_python_sender() -> Optional[Sender]:
    try:
        from systemd import daemon as systemd_daemon  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None

    def send(state: str) -> bool:
        return bool(systemd_daemon.notify(state))

    return send


def _socket_sender(address: str) -> Sender:
    # An address starting with '@' is in the abstract namespace (leading NUL).
    target = "\0" + address[1:] if address.startswith("@") else address

    def send(state: str) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode("utf-8", "replace"), target)
        return True

    return send


class SystemdNotifier:
    """sd_notify for ebbd; every method is safe to call when not under systemd.

    ``sender`` replaces the transport (tests pass a list's ``append`` wrapper).
    """

    def __init__(
        self,
        environ: Optional[Mapping[str, str]] = None,
        sender: Optional[Sender] = None,
    ) -> None:
        env = os.environ if environ is None else environ
        self._address = env.get("NOTIFY_SOCKET", "")
        self.watchdog_usec = _parse_watchdog_usec(env)
        self._sender: Optional[Sender]
        if sender is not None:
            self._sender = sender
        elif not self._address:
            self._sender = None
        elif environ is None:
            self._sender = _systemd_python_sender() or _socket_sender(self._address)
        else:
            # systemd-python reads the process environment; an injected one needs
            # the socket written directly.
            self._sender = _socket_sender(self._address)
        self._failed_once = False

    @property
    def enabled(self) -> bool:
        """True when notifications go somewhere."""
        return self._sender is not None

    @property
    def watchdog_interval_s(self) -> Optional[float]:
        """How often to send WATCHDOG=1 (half the timeout systemd set), or None."""
        if not self.watchdog_usec:
            return None
        return self.watchdog_usec / 2_000_000

    def ready(self, status: str = "") -> None:
        """The daemon is up: the control socket listens and the engine runs."""
        self._send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, line: str) -> None:
        """One-line summary shown by ``systemctl status ebbd``."""
        self._send("STATUS=" + line.replace("\n", " "))

    def watchdog(self) -> None:
        """Tell systemd the daemon is alive (only when WatchdogSec= is set)."""
        if self.watchdog_usec:
            self._send("WATCHDOG=1")

    def reloading(self) -> None:
        """A SIGHUP reload is in progress."""
        self._send("RELOADING=1")

    def reloaded(self) -> None:
        """The reload finished."""
        self._send("READY=1")

    def stopping(self) -> None:
        """Shutdown has started."""
        self._send("STOPPING=1")

    def _send(self, state: str) -> None:
        if self._sender is None:
            return
        try:
            self._sender(state)
        except OSError as err:
            # A notification is advisory; the daemon goes on. Say it once.
            if not self._failed_once:
                LOG.warning("cannot notify systemd at %s: %s", self._address, err)
                self._failed_once = True


def _parse_watchdog_usec(env: Mapping[str, str]) -> int:
    raw = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return 0  # the watchdog is meant for another process
    try:
        value = int(raw)
    except ValueError:
        return 0
    return max(value, 0)
