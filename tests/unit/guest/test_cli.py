"""``ebb-agent`` as a user runs it."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import List

import ebb.guest
import pytest
from agent_testkit import GIB_KIB, HostEnd, ProcTree
from ebb.guest.cli import StopSignals, build_parser, main
from ebb.guest.sdnotify import notify
from ebb.protocol.messages import Bye, Hello, Report

ROOT = Path(__file__).resolve().parents[3]


def test_once_json_prints_report_offer_and_need(
    proc_tree: ProcTree, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["--once", "--json", "--interval", "0.05", "--proc-root", str(proc_tree.root)])
    assert status == 0
    out = json.loads(capsys.readouterr().out)
    report = out["report"]
    assert report["type"] == "report"
    assert report["mem_total_kib"] == 4 * GIB_KIB
    assert report["mem_available_kib"] == 3 * GIB_KIB
    assert report["workingset_refault"] == 1000
    assert report["psi_some_avg10"] == 0.0
    assert out["offer"]["type"] == "offer" and out["offer"]["kib"] > 0
    assert out["need"] is None


def test_once_json_shows_a_need_and_honours_the_reserve(
    proc_tree: ProcTree, capsys: pytest.CaptureFixture[str]
) -> None:
    proc_tree.pressure = None
    proc_tree.write(MemAvailable=300 * 1024)
    status = main(["--once", "--json", "--interval", "0.05", "--reserve-mib", "256",
                   "--proc-root", str(proc_tree.root)])
    assert status == 0
    out = json.loads(capsys.readouterr().out)
    assert out["reserve_kib"] == 256 * 1024
    assert out["report"]["psi_some_avg10"] is None
    assert out["offer"]["kib"] == 0
    assert out["need"]["urgency"] == "low"
    assert out["need"]["kib"] == 512 * 1024 - 300 * 1024


def test_once_without_json_is_readable(
    proc_tree: ProcTree, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--once", "--interval", "0.05", "--proc-root", str(proc_tree.root)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^mem_available_kib\s+3145728$", out, re.M)
    assert re.search(r"^need\s+none$", out, re.M)


def test_unreadable_proc_is_a_clear_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert main(["--once", "--json", "--proc-root", str(tmp_path)]) == 1
    assert "cannot read the guest's memory state" in caplog.text


def test_no_port_found_fails_with_what_the_vm_needs(
    proc_tree: ProcTree, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    status = main(["--proc-root", str(proc_tree.root), "--sys-root", str(tmp_path / "sys"),
                   "--dev-root", str(tmp_path / "dev")])
    assert status == 1
    assert "no virtio-serial port named org.ebb.agent.0" in caplog.text
    assert "<channel type='unix'>" in caplog.text


def test_help_documents_every_option() -> None:
    parser = build_parser()
    text = parser.format_help()
    for action in parser._actions:
        for flag in action.option_strings:
            assert flag in text
        if action.option_strings and action.dest not in ("help", "version"):
            assert action.help, f"{action.option_strings} has no help text"
    for option in ("--device", "--proc-root", "--interval", "--reserve-mib", "--once",
                   "--json", "--log-level"):
        assert option in text


def test_version_matches_the_distribution() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    match = re.search(r'^version = "([^"]+)"', pyproject, re.M)
    assert match is not None
    assert ebb.guest.__version__ == match.group(1)


def test_notify_writes_to_the_notify_socket(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        assert notify("READY=1", {"NOTIFY_SOCKET": str(path)})
        assert server.recv(100) == b"READY=1"
    assert not notify("READY=1", {})


def test_sigterm_says_bye_and_exits_cleanly(proc_tree: ProcTree, tmp_path: Path) -> None:
    """The real command: systemd readiness, handshake, reports, SIGTERM -> bye, exit 0."""
    channel = tmp_path / "channel.sock"
    notify_path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(channel))
    listener.listen(1)
    listener.settimeout(10.0)
    notify_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_sock.bind(str(notify_path))
    notify_sock.settimeout(10.0)
    env = dict(os.environ, NOTIFY_SOCKET=str(notify_path))
    env.pop("JOURNAL_STREAM", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ebb.guest.cli", "--device", f"unix:{channel}",
         "--proc-root", str(proc_tree.root), "--log-level", "debug"],
        env=env, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert notify_sock.recv(100) == b"READY=1"
        conn, _ = listener.accept()
        host = HostEnd(conn)
        host.wait_for(Hello, timeout_s=5.0)
        host.welcome(200)
        host.wait_for(Report, count=2)
        proc.send_signal(signal.SIGTERM)
        assert host.wait_for(Bye)[0].reason == "agent stopping"
        assert proc.wait(timeout=5.0) == 0
        assert "received SIGTERM" in (proc.stderr.read() if proc.stderr else "")
        host.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
        listener.close()
        notify_sock.close()


def test_a_stop_signal_landing_inside_a_log_call_does_not_log() -> None:
    """A signal that arrives while the agent writes a log line must not write one itself.

    The handler runs between two bytecodes of whatever the main thread does; when that
    is a write to stderr, a log call from the handler re-enters the buffered writer.
    """
    stops: List[str] = []
    stop_signals = StopSignals(lambda: stops.append("stop"))
    reentered: List[str] = []

    class SignalMidWrite(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.writing = False

        def emit(self, record: logging.LogRecord) -> None:
            if self.writing:
                reentered.append(record.getMessage())
                return
            self.writing = True
            try:
                stop_signals(signal.SIGTERM, None)  # what the interpreter does mid-write
            finally:
                self.writing = False

    handler = SignalMidWrite()
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.DEBUG)
    try:
        logging.getLogger("ebb.guest.session").warning("lost the host; reconnecting")
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    assert reentered == []
    assert stops == ["stop"]
    assert stop_signals.received is signal.SIGTERM


# --- yield options and the config file ------------------------------------------------


def test_once_json_shows_what_could_be_yielded(
    proc_tree: ProcTree, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    (cgroup / "memory.reclaim").write_bytes(b"")
    status = main(["--once", "--json", "--interval", "0.05", "--proc-root", str(proc_tree.root),
                   "--cgroup-root", str(cgroup)])
    assert status == 0
    yielding = json.loads(capsys.readouterr().out)["yield"]
    assert yielding["supported"] is True and yielding["why_not"] is None
    assert yielding["cold_cache_kib"] == 511 * 1024  # inactive file cache less 1 MiB dirty
    # Active + inactive file cache, less dirty, less the 204.8 MiB reserve.
    assert yielding["reclaimable_kib"] == GIB_KIB - 1024 - 209715
    assert yielding["per_minute_kib"] == GIB_KIB


def test_once_says_why_it_cannot_yield(
    proc_tree: ProcTree, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["--once", "--interval", "0.05", "--proc-root", str(proc_tree.root),
                   "--cgroup-root", str(tmp_path)])
    assert status == 0
    out = capsys.readouterr().out
    assert "yield                not supported: " in out
    assert "5.19" in out
    status = main(["--once", "--json", "--interval", "0.05", "--proc-root", str(proc_tree.root),
                   "--no-yield"])
    assert json.loads(capsys.readouterr().out)["yield"]["why_not"].startswith("turned off")


def test_the_config_file_sets_options_and_the_command_line_wins(tmp_path: Path) -> None:
    from ebb.guest.cli import parse_args, reclaim_limits

    conf = tmp_path / "ebb-agent.conf"
    conf.write_text("# the agent\nyield = false   # ballooning only\n"
                    "yield_max_mib_per_min = 128\nreserve_mib = 100\n")
    args = parse_args(["--config", str(conf)])
    limits = reclaim_limits(args)
    assert limits.enabled is False
    assert limits.per_minute_kib == 128 * 1024
    assert args.reserve_mib == 100
    args = parse_args(["--config", str(conf), "--yield-max-mib-per-min", "64"])
    assert reclaim_limits(args).per_minute_kib == 64 * 1024
    assert reclaim_limits(parse_args([])).enabled  # on by default


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("yeild = false\n", ":1:1: unknown key 'yeild'"),
        ("\nyield = no\n", ":2:1: yield must be true or false, got 'no'"),
        ("reserve_mib\n", ":1:1: expected 'key = value'"),
        ("yield_step_mib = 4096\n", "yield_step_mib must be 1..1024"),
    ],
)
def test_config_file_errors_name_the_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    conf = tmp_path / "ebb-agent.conf"
    conf.write_text(text)
    with pytest.raises(SystemExit) as exited:
        main(["--once", "--config", str(conf)])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert str(conf) in err and expected in err
