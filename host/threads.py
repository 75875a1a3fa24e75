"""The background threads of ebbd's services (guest channels, control socket)."""

from __future__ import annotations

import logging
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
