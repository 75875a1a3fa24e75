"""ebbd's service threads: a crash is reported, not lost; stopping from inside works."""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import List

import pytest
from ebb.host.threads import Waker, join_thread, start_thread

LOG = logging.getLogger("ebb.test.threads")


def test_a_crashing_service_is_logged_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    crashes: List[BaseException] = []

    def body() -> None:
        raise RuntimeError("selector broke")

    with caplog.at_level(logging.ERROR, logger="ebb.test.threads"):
        thread = start_thread("ebbd-test", body, LOG, "test service", crashes.append)
        join_thread(thread)
    assert not thread.is_alive() and thread.daemon and thread.name == "ebbd-test"
    assert [str(e) for e in crashes] == ["selector broke"]
    assert "test service thread died" in caplog.text


def test_a_service_may_stop_itself() -> None:
    done = threading.Event()
    known = threading.Event()
    holder: List[threading.Thread] = []

    def body() -> None:
        known.wait(5.0)
        join_thread(holder[0])  # its own thread: returns at once instead of deadlocking
        done.set()

    holder.append(start_thread("ebbd-test", body, LOG, "test service"))
    known.set()
    assert done.wait(5.0)
    join_thread(holder[0])


def test_a_waker_times_out_unwoken_and_keeps_an_early_wake() -> None:
    waker = Waker()
    assert waker.wait(0.01) is False
    waker.wake()
    waker.wake()  # several wake-ups before a wait are one
    assert waker.wait(5.0) is True
    assert waker.wait(0.01) is False


def test_a_waker_is_woken_by_another_thread() -> None:
    waker = Waker()
    threading.Timer(0.05, waker.wake).start()
    assert waker.wait(10.0) is True


def test_a_signal_handler_wakes_a_waiting_main_thread() -> None:
    waker = Waker()
    old = signal.signal(signal.SIGALRM, lambda *_: waker.wake())
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        started = time.monotonic()
        assert waker.wait(30.0) is True
        assert time.monotonic() - started < 20.0  # woken, not timed out
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
