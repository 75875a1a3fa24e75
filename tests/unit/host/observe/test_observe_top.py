"""``ebbctl top``: a frame an administrator can read in an 80-column terminal."""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest
from ebb.host.cli_ebbctl import main as ebbctl
from ebb.host.observe.top import render_text

SAMPLE_STATUS = Path(__file__).with_name("status_sample.json")
NOW = 1764303700.0


def _status() -> Dict[str, Any]:
    return json.loads(SAMPLE_STATUS.read_text())


def test_frame_fits_80_columns_and_shows_every_vm() -> None:
    frame = render_text(_status(), width=80, now=NOW)
    lines = frame.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "freeable 4.0G (17%)" in frame
    assert "sharing 40960" in frame and "running" in frame
    assert "DRY-RUN" in frame
    rows = {line.split()[0]: line for line in lines if line.startswith(("vm2", "legacy", "ebblab"))}
    assert set(rows) == {"vm2", "legacy", "ebblab-guest-…"}
    # vm2: balloon 1024/1024/1024 MiB, needs 200 MiB urgently, PSI 14.5.
    assert rows["vm2"].split()[1:4] == ["1024", "1024", "1024"]
    assert "200!" in rows["vm2"] and "14.5" in rows["vm2"]
    assert "no-agent" in rows["legacy"]
    # max, then the QEMU process's resident memory.
    assert rows["vm2"].split()[3:5] == ["1024", "977"]


def test_a_vm_without_free_page_reporting_is_marked() -> None:
    lines = render_text(_status(), width=80, now=NOW).splitlines()
    below = {lines[i].split()[0]: lines[i + 1] for i in range(len(lines) - 1)
             if lines[i].startswith(("vm2", "legacy"))}
    assert "fpr off" in below["legacy"]
    assert "fpr off" not in below["vm2"]


def test_long_reasons_are_cut_not_wrapped() -> None:
    frame = render_text(_status(), width=80, now=NOW)
    action = next(line for line in frame.splitlines() if "cooperative-offer" in line)
    assert action.endswith("…")
    assert "inflate to 640 MiB 10s ago" in action
    assert "not managed by ebb" in frame  # the VM ebb does not manage says so


def test_narrow_terminal_still_one_line_per_item() -> None:
    status = _status()
    wide = render_text(status, width=80, now=NOW).splitlines()
    narrow = render_text(status, width=60, now=NOW).splitlines()
    assert len(narrow) == len(wide)
    assert max(len(line) for line in narrow) <= 60


def test_empty_host_and_policy_errors() -> None:
    status = _status()
    status["vms"] = []
    status["daemon"]["policy"]["errors"] = ["/etc/ebb/policy.d/10-x.policy:3:7: unknown function"]
    frame = render_text(status, width=80, now=NOW)
    assert "no VMs" in frame
    assert "policy: 1 error(s)" in frame
    assert "10-x.policy:3:7" in frame


@pytest.fixture()
def fake_ebbd(tmp_path: Path) -> Iterator[str]:
    """A control socket answering ``status`` and ``metrics`` like ebbd's."""
    path = str(tmp_path / "ebbd.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                request = json.loads(conn.makefile("rb").readline())
                if request["cmd"] == "status":
                    reply = {"ok": True, "result": _status()}
                elif request["cmd"] == "metrics":
                    reply = {"ok": True, "result": "# TYPE ebb_ticks_total counter\n"
                             "ebb_ticks_total 3.0\n"}
                else:
                    reply = {"ok": False, "error": "unknown command"}
                conn.sendall(json.dumps(reply).encode() + b"\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield path
    stop.set()
    thread.join(timeout=2)
    server.close()


def test_ebbctl_top_once_prints_one_frame(
    fake_ebbd: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ebbctl(["--socket", fake_ebbd, "top", "--once", "--width", "80"]) == 0
    out = capsys.readouterr().out
    assert "vm2" in out and "ksm" in out
    assert max(len(line) for line in out.splitlines()) <= 80


def test_ebbctl_metrics_prints_the_daemon_text(
    fake_ebbd: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ebbctl(["--socket", fake_ebbd, "metrics"]) == 0
    assert "ebb_ticks_total 3.0" in capsys.readouterr().out


def test_top_without_a_daemon_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = os.path.join(tmp_path, "none.sock")
    assert ebbctl(["--socket", missing, "top", "--once"]) == 1
    assert "is ebbd running" in capsys.readouterr().err


def test_live_view_quits_on_q_and_restores_the_terminal() -> None:
    import io
    import termios

    from ebb.host.observe.top import run_top
    from rich.console import Console

    master, slave = os.openpty()
    try:
        before = termios.tcgetattr(slave)
        stdin = os.fdopen(slave, "r", closefd=False)
        frames = []

        def fetch() -> Dict[str, Any]:
            frames.append(1)
            if len(frames) == 3:
                os.write(master, b"q")  # the user presses q after the third frame
            return _status()

        console = Console(file=io.StringIO(), width=80)
        done = threading.Event()
        result: Dict[str, int] = {}

        def run() -> None:
            result["rc"] = run_top(fetch, interval_s=0.01, console=console, stdin=stdin)
            done.set()

        threading.Thread(target=run, daemon=True).start()
        assert done.wait(5), "top did not quit on q"
        assert result["rc"] == 0
        assert len(frames) >= 3
        assert termios.tcgetattr(slave) == before
        assert "vm2" in console.file.getvalue()  # type: ignore[attr-defined]
    finally:
        os.close(master)
        os.close(slave)
