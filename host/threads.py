"""The background threads of ebbd's services (guest channels, control socket)."""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
from typing import Callable, Optional


def start_thread(name: str, body: Callable[[], None], log: logging.Logger, what: str,
                 on_crash: Optional[Callable[[BaseException], None]] = None) -> threading.Thread:
    """Run ``body`` in a daemon thread; if it raises, log that ``what`` died and tell
    ``on_crash`` (ebbd then stops rather than run on without the service)."""

    def run() -> None:
        try:
            body()
        except BaseException as err:
            log.exception("%s thread died", what)
            if on_crash is not None:
                on_crash(err)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


def join_thread(thread: Optional[threading.Thread], timeout_s: float = 2.0) -> None:
    """Wait for a service thread to end, unless the caller is that thread."""
    if thread is not None and thread is not threading.current_thread():
        thread.join(timeout=timeout_s)


class Waker:
    """Wake a thread blocked in :meth:`wait`, from other threads or from a signal handler.

    A pipe rather than a :class:`threading.Event`: ``Event.set()`` takes a lock, and a
    signal handler runs on the main thread between two bytecodes, possibly while that
    thread holds the same lock inside ``Event.wait()`` -- the handler would then wait
    for itself forever. A write to a non-blocking pipe takes no lock. The pipe lives as
    long as the process: closing it while a handler may still write could hand its
    descriptor number to another file.
    """

    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        for fd in (self._r, self._w):
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)

    def wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # full: a wake-up is already pending
            os.write(self._w, b"x")

    def wait(self, timeout_s: float) -> bool:
        """Block until woken or ``timeout_s`` passes; True if woken. Clears pending wake-ups."""
        ready, _, _ = select.select([self._r], [], [], max(timeout_s, 0.0))
        if not ready:
            return False
        with contextlib.suppress(BlockingIOError):
            while os.read(self._r, 4096):
                pass
        return True
