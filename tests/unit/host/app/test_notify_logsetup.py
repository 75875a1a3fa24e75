"""systemd notifications over a real datagram socket, and where the log goes."""

from __future__ import annotations

import logging
import socket

from ebb.host.logsetup import configure_logging, parse_level, under_journald
from ebb.host.notify import SystemdNotifier


def test_notifications_reach_the_notify_socket(tmp_path):
    path = str(tmp_path / "notify.sock")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    receiver.settimeout(2)
    try:
        notifier = SystemdNotifier(environ={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000"})
        assert notifier.enabled and notifier.watchdog_interval_s == 5.0
        notifier.ready("tick 1")
        notifier.status("tick 2: 3 VM(s)\nsecond line")
        notifier.watchdog()
        notifier.stopping()
        got = [receiver.recv(4096).decode() for _ in range(4)]
    finally:
        receiver.close()
    assert got == ["READY=1\nSTATUS=tick 1", "STATUS=tick 2: 3 VM(s) second line",
                   "WATCHDOG=1", "STOPPING=1"]


def test_without_systemd_notifications_are_no_ops():
    notifier = SystemdNotifier(environ={})
    assert not notifier.enabled and notifier.watchdog_interval_s is None
    notifier.ready()
    notifier.watchdog()


def test_watchdog_for_another_pid_is_ignored():
    notifier = SystemdNotifier(
        environ={"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"},
        sender=lambda state: True,
    )
    assert notifier.watchdog_interval_s is None


def test_a_missing_notify_socket_is_reported_once_and_not_raised(tmp_path, caplog):
    notifier = SystemdNotifier(environ={"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    caplog.set_level(logging.WARNING, logger="ebb.host.notify")
    notifier.status("a")
    notifier.status("b")
    assert len([r for r in caplog.records if "cannot notify systemd" in r.getMessage()]) == 1


def test_stderr_log_shows_structured_fields(capsys):
    level = logging.getLogger().level
    handler = configure_logging("debug", environ={})
    try:
        logging.getLogger("ebb.test").info(
            "balloon changed", extra={"VM": "web1", "ACTION": "balloon", "REASON": "pressure"}
        )
        err = capsys.readouterr().err
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(level)
    assert "INFO ebb.test: balloon changed [vm=web1 action=balloon reason=pressure]" in err


def test_journald_is_used_when_systemd_says_so():
    assert under_journald({"JOURNAL_STREAM": "8:1234"})
    assert not under_journald({})
    level = logging.getLogger().level
    handler = configure_logging("info", environ={"JOURNAL_STREAM": "8:1234"})
    try:
        assert type(handler).__name__ == "JournalHandler"
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(level)


def test_bad_level_names_the_choices():
    try:
        parse_level("loud")
    except ValueError as err:
        assert "debug, info, warning, error, critical" in str(err)
    else:
        raise AssertionError("accepted a bad level")
