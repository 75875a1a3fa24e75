"""Telling systemd the agent is ready (``Type=notify``) and what it is doing.

Uses systemd-python when it is installed; otherwise writes the datagram to
``$NOTIFY_SOCKET`` itself (the protocol is one ``KEY=value`` datagram per call), so
the guest package does not need systemd-python. Without ``$NOTIFY_SOCKET`` (not
started by systemd) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Mapping, Optional

LOG = logging.getLogger(__name__)


def notify(state: str, environ: Optional[Mapping[str, str]] = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``, ``"STATUS=..."``) to systemd; True if sent."""
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    if environ is None:
        try:
            from systemd import daemon  # type: ignore[import-not-found, unused-ignore]
        except ImportError:
            pass
        else:
            return bool(daemon.notify(state))
    if address.startswith("@"):
        # Abstract namespace socket: a leading NUL instead of '@'.
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode("utf-8"))
    except OSError as err:
        LOG.warning("cannot notify systemd through %s: %s", env.get("NOTIFY_SOCKET"), err)
        return False
    return True
