"""ebbd's service threads: a crash is reported, not lost; stopping from inside works."""

from __future__ import annotations

import logging
import threading
from typing import List

import pytest
from ebb.host.threads import join_thread, start_thread

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
