"""libvirt's default event loop, run in its own daemon thread.

libvirt delivers domain events and connection-close notifications only while an
event loop runs. The default implementation must be registered *before* the
first connection is opened, once per process, and then driven by calling
``virEventRunDefaultImpl`` forever. :func:`ensure_event_loop` does both; it is
idempotent and thread-safe, so every :class:`~ebb.host.hypervisor.Hypervisor`
simply calls it before connecting.

The thread is a daemon thread and is never stopped: libvirt offers no way to
unregister the default implementation, and a process has one loop for its whole
life (as libvirt's own examples and virt-manager do).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from ebb.host.threads import start_thread

LOG = logging.getLogger(__name__)

_LOCK = threading.Lock()
_THREAD: threading.Thread | None = None


def _run_forever(libvirt: Any) -> None:
    while True:
        try:
            libvirt.virEventRunDefaultImpl()
        except Exception:
            # A failing iteration is logged and the loop goes on: without it no event
            # (and no close notification) would ever arrive again.
            LOG.exception("libvirt event loop iteration failed; continuing")


def _ignore_error(opaque: Any, error: Any) -> None:
    """libvirt's error callback: errors reach ebb as exceptions instead."""


def ensure_event_loop(
    on_crash: Callable[[BaseException], None] | None = None,
) -> threading.Thread:
    """Register libvirt's default event loop (once) and start its thread (once).

    ``on_crash`` hears of the thread dying (it survives every ``Exception``), so that
    ebbd stops rather than run on without events.
    """
    global _THREAD
    import libvirt

    with _LOCK:
        if _THREAD is not None and _THREAD.is_alive():
            return _THREAD
        if _THREAD is None:
            # libvirt prints every error to stderr by default ("libvirt: XML-RPC error :
            # ..."), even those ebb handles (a VM that just stopped, a reconnect attempt).
            # ebb logs what matters itself, with the VM's name.
            libvirt.registerErrorHandler(_ignore_error, None)
            libvirt.virEventRegisterDefaultImpl()
        _THREAD = start_thread(
            "libvirt-events", lambda: _run_forever(libvirt), LOG, "libvirt event loop", on_crash
        )
        LOG.debug("libvirt event loop thread started")
        return _THREAD


def event_loop_running() -> bool:
    """Whether the event loop thread is alive (for status and tests)."""
    return _THREAD is not None and _THREAD.is_alive()
