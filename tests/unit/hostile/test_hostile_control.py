"""Hostile inputs to ebbd's control socket, ebbctl, and ebbd's runtime files.

Whoever can connect to the control socket (read-only users included) tries to
stop or freeze ebbd: deep nesting, huge lines, floods of newlines, idle
connections held open, errors of any class in one client's turn. ebbctl meets
a daemon end that resets, closes, stalls or answers garbage. The run directory
and the state files in it (KSM originals, memtune limits) are planted by
someone else or hold values out of range.

The server is driven by hand (``serve_once``) with a fake clock wherever time
matters, so nothing here waits for a timeout or asserts a duration.
"""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest
from ebb.host import control
from ebb.host.cli_ebbctl import main as ebbctl
from ebb.host.control import (
    CLIENT_IDLE_TIMEOUT_S,
    MAX_CLIENTS,
    MAX_CLIENTS_PER_UID,
    MAX_REQUEST_BYTES,
    MAX_REQUEST_DEPTH,
    Authorizer,
    ControlClient,
    ControlError,
    ControlServer,
    ControlService,
    LineBuffer,
    PeerCred,
    json_depth_exceeds,
)
from ebb.host.controllers.ksm import KsmController
from ebb.host.controllers.memtune import MemtuneController
from ebb.host.ctl import daemon as daemon_cmds
from ebb.host.hypervisor.connection import DomainGone, HypervisorError
from ebb.host.rundir import RunDirError, prepare_run_dir
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

# --------------------------------------------------------------------------- rig


class FakeDaemon:
    def __init__(self) -> None:
        self.calls: List[str] = []

    def status(self) -> Dict[str, Any]:
        return {"daemon": {"pid": 1}, "host": {}, "vms": []}

    def explain(self, vm: str) -> Dict[str, Any]:
        return {"vm": vm, "decisions": []}

    def reload(self) -> Dict[str, Any]:
        self.calls.append("reload")
        return {"config": "unchanged", "policy": "reloaded", "policy_errors": []}

    def pause(self) -> Dict[str, Any]:
        self.calls.append("pause")
        return {"paused": True}

    def resume(self) -> Dict[str, Any]:
        return {"paused": False}

    def set_floor(self, vm: str, floor_mib: Optional[float]) -> Dict[str, Any]:
        self.calls.append(f"set-floor {vm} {floor_mib}")
        return {"vm": vm}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _service(daemon: Optional[FakeDaemon] = None) -> ControlService:
    auth = Authorizer(group_gid=None, lookup_group=False)
    return ControlService(daemon or FakeDaemon(), auth)


class Rig:
    """A control server in tmp_path, served by hand from the test's thread."""

    def __init__(self, tmp_path: Path, service: Optional[ControlService] = None) -> None:
        self.clock = Clock()
        self.path = str(tmp_path / "run" / "ebbd.sock")
        self.server = ControlServer(self.path, service or _service(), group_name="x-no-group",
                                    clock=self.clock)
        self.server.bind()
        self.socks: List[socket.socket] = []
        self._unread: Dict[int, bytes] = {}

    def connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5)
        sock.connect(self.path)
        self.socks.append(sock)
        return sock

    def pump(self, rounds: int = 3) -> None:
        for _ in range(rounds):
            self.server.serve_once(0.0)

    def ask(self, sock: socket.socket, data: bytes) -> Dict[str, Any]:
        """Send ``data``; serve; the first answer line, decoded."""
        sock.sendall(data)
        return json.loads(self.read_line(sock))

    def read_line(self, sock: socket.socket) -> bytes:
        received = self._unread.pop(id(sock), b"")
        for _ in range(200):
            if b"\n" in received:
                break
            self.pump(1)
            # The server answers within serve_once: what it wrote is there already.
            try:
                sock.setblocking(False)
                chunk = sock.recv(65536)
            except BlockingIOError:
                continue
            finally:
                sock.settimeout(5)
            if not chunk:
                break
            received += chunk
            if b"\n" in received:
                break
        line, newline, rest = received.partition(b"\n")
        assert newline, f"no answer line, got {received[:200]!r}"
        self._unread[id(sock)] = rest
        return line

    def closed_by_server(self, sock: socket.socket) -> bool:
        self.pump()
        sock.settimeout(1)
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    return True
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def close(self) -> None:
        for sock in self.socks:
            sock.close()
        self.server.stop()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.close()


def _alive(rig: Rig) -> None:
    """The server still answers a new client."""
    assert rig.ask(rig.connect(), b'{"cmd": "ping"}\n') == {"ok": True, "result": {"pong": True}}


# --------------------------------------------------------------------------- nesting


def test_a_line_of_5001_brackets_is_refused_and_ebbd_keeps_serving(tmp_path: Path) -> None:
    # This took the control thread, and with it ebbd, down with a RecursionError.
    rig = Rig(tmp_path)
    rig.server.start()
    try:
        with pytest.raises(ControlError, match="nested deeper"):
            _raw_request(rig.path, b"[" * 5001 + b"\n")
        assert ControlClient(rig.path, timeout_s=5).request("ping") == {"pong": True}
        assert rig.server.thread is not None and rig.server.thread.is_alive()
    finally:
        rig.server.stop()


def _raw_request(path: str, data: bytes) -> Any:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(path)
        sock.sendall(data)
        received = b""
        while b"\n" not in received:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    return control._result_of(received.partition(b"\n")[0])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                   max_size=3),
    max_leaves=30,
)


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


@settings(max_examples=150, deadline=None)
@given(value=json_values, wrap=st.integers(min_value=0, max_value=12))
def test_the_depth_check_agrees_with_the_real_nesting(value: Any, wrap: int) -> None:
    for _ in range(wrap):
        value = {"cmd": [value, "]]]\"[{\\"]}  # brackets and escapes inside strings
    text = json.dumps(value).encode()
    assert json_depth_exceeds(text, MAX_REQUEST_DEPTH) == (_depth(value) > MAX_REQUEST_DEPTH)


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(line=st.binary(max_size=300) | st.builds(
    lambda opener, n, tail: opener * n + tail,
    st.sampled_from([b"[", b"{", b'{"a":', b'["\\"', b"[1,"]),
    st.integers(min_value=0, max_value=20000), st.binary(max_size=20)))
def test_any_line_gets_an_answer_or_nothing_and_never_stops_the_server(
        rig: Rig, line: bytes) -> None:
    line = line.replace(b"\n", b" ")
    sock = rig.connect()
    sock.sendall(line + b"\n" + b'{"cmd":"ping"}\n')
    first = json.loads(rig.read_line(sock))
    assert isinstance(first, dict) and isinstance(first["ok"], bool)
    if len(line) > MAX_REQUEST_BYTES:
        assert first["ok"] is False and "longer than" in first["error"]
        assert rig.closed_by_server(sock)
    else:
        if line.strip():
            assert first["ok"] is False  # nothing here is a valid request
            first = json.loads(rig.read_line(sock))
        assert first == {"ok": True, "result": {"pong": True}}
    sock.close()
    rig.socks.remove(sock)
    rig.pump()


# --------------------------------------------------------------------------- size and newlines


def test_a_line_longer_than_the_limit_is_refused_and_closed(rig: Rig) -> None:
    sock = rig.connect()
    reply = rig.ask(sock, b"x" * (MAX_REQUEST_BYTES + 10))
    assert reply["ok"] is False and f"longer than {MAX_REQUEST_BYTES}" in reply["error"]
    assert rig.closed_by_server(sock)
    _alive(rig)


def test_a_long_complete_line_in_one_piece_is_refused_too(rig: Rig) -> None:
    sock = rig.connect()
    sock.sendall(b"{" + b" " * (MAX_REQUEST_BYTES - 100))  # no newline yet: within limit
    rig.pump()
    reply = rig.ask(sock, b" " * 200 + b"}\n")
    assert reply["ok"] is False and "longer than" in reply["error"]
    _alive(rig)


def test_64_kib_of_newlines_is_cut_in_linear_work() -> None:
    # Cutting with partition and copying the rest per line was quadratic
    # (about 2 GiB of copying for 64 KiB of newlines); count the work, not time.
    size = 64 * 1024
    for pieces in (1, 16, size // 7):
        buffer = LineBuffer()
        lines: List[bytes] = []
        step = -(-size // pieces)
        for start in range(0, size, step):
            lines += buffer.feed(b"\n" * min(step, size - start))
        assert len(lines) == size and set(lines) == {b""} and len(buffer) == 0
        assert buffer.bytes_searched <= 2 * size
        assert buffer.bytes_copied <= 3 * size


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=4000).map(lambda b: b.replace(b"x", b"\n")),
       cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=30))
def test_lines_come_out_whole_however_the_bytes_arrive_in_linear_work(
        data: bytes, cuts: List[int]) -> None:
    buffer = LineBuffer(max_line_bytes=1 << 20)
    bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    lines: List[bytes] = []
    for start, end in zip(bounds, bounds[1:]):
        lines += buffer.feed(data[start:end])
    assert lines == data.split(b"\n")[:-1]
    n = len(data)
    assert buffer.bytes_searched <= 2 * n
    # Each byte is copied in, out and split once; an unfinished line moves
    # to the front once per piece that completes lines.
    longest_line = max((len(x) for x in data.split(b"\n")), default=0)
    assert buffer.bytes_copied <= 3 * n + len(bounds) * longest_line


def test_blank_lines_get_no_answer_and_do_not_delay_the_request_after_them(rig: Rig) -> None:
    sock = rig.connect()
    reply = rig.ask(sock, b"\n" * (64 * 1024) + b'{"cmd": "ping"}\n')
    assert reply == {"ok": True, "result": {"pong": True}}


def test_a_burst_of_requests_beyond_the_limit_closes_that_client(rig: Rig) -> None:
    sock = rig.connect()
    sock.sendall(b'{"cmd":"ping"}\n' * (control.MAX_REQUESTS_PER_READ + 5))
    answers = []
    while True:
        answer = json.loads(rig.read_line(sock))
        answers.append(answer)
        if not answer["ok"]:
            break
    assert len(answers) == control.MAX_REQUESTS_PER_READ + 1
    assert "requests at once" in answers[-1]["error"]
    assert rig.closed_by_server(sock)
    _alive(rig)


# --------------------------------------------------------------------------- idle and slots


def test_idle_connections_are_closed_after_the_documented_timeout(rig: Rig) -> None:
    held = [rig.connect() for _ in range(MAX_CLIENTS_PER_UID)]
    rig.pump()
    assert rig.server.client_count == MAX_CLIENTS_PER_UID
    rig.clock.now += CLIENT_IDLE_TIMEOUT_S - 1
    rig.pump()
    assert rig.server.client_count == MAX_CLIENTS_PER_UID  # not yet
    rig.clock.now += 2
    rig.pump()
    assert rig.server.client_count == 0
    assert all(rig.closed_by_server(sock) for sock in held)
    _alive(rig)


def test_a_client_trickling_bytes_without_a_request_still_times_out(rig: Rig) -> None:
    sock = rig.connect()
    for piece in (b'{"cmd"', b': "pi', b"ng"):
        sock.sendall(piece)
        rig.pump()
        rig.clock.now += CLIENT_IDLE_TIMEOUT_S / 2 + 0.1
    rig.pump()
    assert rig.closed_by_server(sock)


def test_a_client_making_requests_is_not_idle(rig: Rig) -> None:
    sock = rig.connect()
    for _ in range(4):
        rig.clock.now += CLIENT_IDLE_TIMEOUT_S - 1
        assert rig.ask(sock, b'{"cmd": "ping"}\n')["ok"]


def _fake_peers(monkeypatch: pytest.MonkeyPatch, uids: List[int]) -> None:
    """Connections are accepted in order: give the n-th one uid ``uids[n]``."""
    queue = iter(uids)
    monkeypatch.setattr(control, "peer_credentials",
                        lambda sock: PeerCred(pid=os.getpid(), uid=next(queue), gid=100))


def test_one_user_cannot_hold_every_connection(rig: Rig,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_peers(monkeypatch, [1000] * (MAX_CLIENTS_PER_UID + 1) + [1001])
    for _ in range(MAX_CLIENTS_PER_UID):
        rig.connect()
    rig.pump()
    refused = rig.connect()
    line = rig.read_line(refused)
    assert f"uid 1000 holds {MAX_CLIENTS_PER_UID}" in json.loads(line)["error"]
    assert rig.ask(rig.connect(), b'{"cmd": "ping"}\n')["ok"]  # another user is served


def test_a_slot_stays_free_for_root_when_the_others_are_taken(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    # Thirty-one users holding idle connections locked root out before.
    others = [2000 + n for n in range(MAX_CLIENTS - 1)]
    _fake_peers(monkeypatch, [*others, 3000, 0, 0])
    for _ in others:
        rig.connect()
        rig.pump(1)  # accepted one by one: the listen backlog is short
    assert rig.server.client_count == MAX_CLIENTS - 1
    refused = rig.connect()
    reply = json.loads(rig.read_line(refused))
    assert reply["ok"] is False and "kept for root" in reply["error"]
    assert rig.ask(rig.connect(), b'{"cmd": "ping"}\n')["ok"]  # root gets the last slot
    full = rig.connect()
    assert "try again" in json.loads(rig.read_line(full))["error"]


def test_ebbctl_refused_for_lack_of_slots_says_so_and_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rig = Rig(tmp_path)
    _fake_peers(monkeypatch, [1000] * (MAX_CLIENTS_PER_UID + 1))
    try:
        for _ in range(MAX_CLIENTS_PER_UID):
            rig.connect()
        rig.pump()
        rig.server.start()
        assert ebbctl(["--socket", rig.path, "status"]) == 1
        assert "holds 8 control connections" in capsys.readouterr().err
    finally:
        rig.close()


# --------------------------------------------------------------------------- errors in one client


class Boom(BaseException):
    """Neither an Exception nor KeyboardInterrupt/SystemExit."""


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(error=st.sampled_from([RecursionError("deep"), MemoryError(), ValueError("json"),
                              Boom(), UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"),
                              OSError(5, "EIO"), KeyError("x")]))
def test_any_error_while_serving_one_client_closes_only_that_client(
        tmp_path_factory: pytest.TempPathFactory, error: BaseException) -> None:
    service = _service()
    rig = Rig(tmp_path_factory.mktemp("rig"), service)
    try:
        bystander = rig.connect()
        rig.pump()
        real_handle = service.handle

        def handle(request: Any, cred: PeerCred) -> Dict[str, Any]:
            if request.get("cmd") == "status":
                raise error
            return real_handle(request, cred)

        service.handle = handle  # type: ignore[method-assign]
        victim = rig.connect()
        victim.sendall(b'{"cmd": "status"}\n')
        assert rig.closed_by_server(victim)
        assert rig.ask(bystander, b'{"cmd": "ping"}\n')["ok"]
        _alive(rig)
    finally:
        rig.close()


def test_an_error_while_accepting_drops_that_connection_only(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    real = control.peer_credentials
    failures = [MemoryError()]

    def credentials(sock: socket.socket) -> PeerCred:
        if failures:
            raise failures.pop()
        return real(sock)

    monkeypatch.setattr(control, "peer_credentials", credentials)
    victim = rig.connect()
    rig.pump()
    assert rig.closed_by_server(victim)
    _alive(rig)


def test_keyboard_interrupt_is_not_swallowed(rig: Rig) -> None:
    service = rig.server._service

    def handle(request: Any, cred: PeerCred) -> Dict[str, Any]:
        raise KeyboardInterrupt

    service.handle = handle  # type: ignore[method-assign]
    rig.connect().sendall(b'{"cmd": "status"}\n')
    with pytest.raises(KeyboardInterrupt):
        rig.pump()


@pytest.mark.parametrize("floor", ["1e999", "NaN", "-Infinity", "1e300", "-1"])
def test_set_floor_refuses_numbers_that_are_not_a_floor(rig: Rig, floor: str) -> None:
    daemon = FakeDaemon()
    rig.server._service = _service(daemon)
    reply = rig.ask(rig.connect(),
                    b'{"cmd": "set-floor", "vm": "a", "floor_mib": ' + floor.encode() + b"}\n")
    assert reply["ok"] is False
    assert daemon.calls == []


# --------------------------------------------------------------------------- ebbctl, no answer


class FakeEnd(ControlClient):
    """ebbctl's client whose daemon end does ``behave`` with the request."""

    behave = "reset"
    answer = b""

    def _connect(self) -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.settimeout(self.timeout_s)
        if self.behave == "reset":
            theirs.close()  # gone before the request is written
        elif self.behave == "eof":
            theirs.shutdown(socket.SHUT_WR)  # takes the request, ends without answering
            self._keep = theirs
        elif self.behave == "answer":
            theirs.sendall(self.answer)
            theirs.close()
        elif self.behave == "silent":
            self._keep = theirs
        return ours


@pytest.mark.parametrize("behave,words", [
    ("reset", "closed the connection"),
    ("eof", "without answering"),
    ("silent", "did not answer"),
])
def test_ebbctl_fails_clearly_when_it_gets_no_answer(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        behave: str, words: str) -> None:
    # A reset connection used to end as a BrokenPipeError that ebbctl took for success.
    end = type("End", (FakeEnd,), {"behave": behave})
    monkeypatch.setattr(daemon_cmds, "ControlClient",
                        lambda path: end(path, timeout_s=0.05))
    for command in (["status"], ["pause"], ["reload"], ["set-floor", "vm", "1"]):
        assert ebbctl(["--socket", "/nonexistent/ebbd.sock", *command]) == 1
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err


@settings(max_examples=200, deadline=None)
@given(answer=st.binary(max_size=200) | st.sampled_from([
    b"[" * 5000, b"{}", b'{"ok": "yes"}', b'{"ok": true}', b"null", b'"ok"', b"{\"ok\":1}",
    b"\xff\xfe", b"1" * 5000]))
def test_ebbctl_fails_clearly_on_an_answer_that_is_not_one(answer: bytes) -> None:
    end = type("End", (FakeEnd,), {"behave": "answer", "answer": answer.split(b"\n")[0] + b"\n"})
    client = end("/x.sock", timeout_s=1)
    try:
        result = client.request("status")
    except ControlError as err:
        assert str(err)
        return
    # Only a true answer gets through: an object with ok true and a result.
    decoded = json.loads(answer.split(b"\n")[0])
    assert decoded["ok"] is True and decoded["result"] == result


# --------------------------------------------------------------------------- run_dir


def _make_foreign(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``path`` look owned by another user (chown as root, else a changed euid)."""
    if os.geteuid() == 0:
        os.chown(path, 4321, -1)
    else:
        real = os.geteuid()
        monkeypatch.setattr(os, "geteuid", lambda: real + 1)


def test_a_run_dir_owned_by_another_user_is_refused_naming_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o755)
    _make_foreign(run_dir, monkeypatch)
    with pytest.raises(RunDirError, match=rf"{run_dir} is owned by uid"):
        prepare_run_dir(run_dir)
    server = ControlServer(str(run_dir / "ebbd.sock"), _service(), group_name="x-none")
    with pytest.raises(RunDirError, match=str(run_dir)):
        server.bind()
    assert not (run_dir / "ebbd.sock").exists()


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757, 0o1777])
def test_a_run_dir_others_can_write_is_refused(tmp_path: Path, mode: int) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run_dir.chmod(mode)
    with pytest.raises(RunDirError, match="writable by group or others"):
        prepare_run_dir(run_dir)


def test_a_run_dir_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "run").symlink_to(tmp_path / "real")
    with pytest.raises(RunDirError, match="symbolic link"):
        prepare_run_dir(tmp_path / "run")


def test_a_missing_run_dir_is_created_reachable_and_not_writable_by_others(
        tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        made = prepare_run_dir(tmp_path / "a" / "ebb")
    finally:
        os.umask(old)
    assert stat.S_IMODE(made.stat().st_mode) in (0o750, 0o755)


def test_ebbd_refuses_to_start_on_a_planted_run_dir(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ebb.host.app import Components, assemble
    from ebb.host.config import config_from_dict

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run_dir.chmod(0o777)
    config = config_from_dict({"daemon": {"run_dir": str(run_dir),
                                          "control_socket": str(run_dir / "ebbd.sock")}})

    class Unused:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"ebbd touched {name} before checking its run_dir")

    unused: Any = Unused()
    daemon = assemble(config, Components(hypervisor=unused, host=unused, channels=unused,
                                       runner=unused, governor=unused, balloon=unused,
                                       ksm=unused, memtune=unused))
    with pytest.raises(RunDirError, match=str(run_dir)):
        daemon.start()


def test_the_socket_gets_its_mode_where_no_one_else_can_reach_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # chown/chmod go by path (on Linux they cannot be set on the open socket):
    # the path must be in a directory only ebbd can enter until it is final.
    run_dir = tmp_path / "run"
    seen: List[str] = []
    real_chmod, real_rename = os.chmod, os.rename

    def chmod(target: Any, mode: int, *args: Any, **kwargs: Any) -> None:
        parent = os.path.dirname(str(target))
        if stat.S_ISSOCK(os.lstat(target).st_mode):
            seen.append(f"{parent == str(run_dir)} {stat.S_IMODE(os.stat(parent).st_mode):o}")
        real_chmod(target, mode, *args, **kwargs)

    monkeypatch.setattr(os, "chmod", chmod)
    monkeypatch.setattr(os, "rename", real_rename)
    server = ControlServer(str(run_dir / "ebbd.sock"), _service(), group_name="x-none")
    server.bind()
    try:
        assert seen == ["False 700"]
        assert sorted(os.listdir(run_dir)) == ["ebbd.sock"]
        assert stat.S_IMODE(os.stat(run_dir / "ebbd.sock").st_mode) == 0o600
    finally:
        server.stop()


# --------------------------------------------------------------------------- saved KSM originals


class Sysfs:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.ksm = root / "kernel" / "mm" / "ksm"
        self.ksm.mkdir(parents=True)
        for knob, value in {"run": 0, "pages_to_scan": 100, "sleep_millisecs": 20,
                            "merge_across_nodes": 1}.items():
            (self.ksm / knob).write_text(f"{value}\n")

    def values(self) -> Dict[str, int]:
        return {p.name: int(p.read_text()) for p in self.ksm.iterdir()}


def test_saved_ksm_values_out_of_range_are_skipped_and_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sysfs = Sysfs(tmp_path / "sys")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "ksm-original.json").write_text(json.dumps({"values": {
        "run": 1, "pages_to_scan": 10**9, "sleep_millisecs": -5, "merge_across_nodes": "x"}}))
    KsmController(sysfs.root, run_dir).start()
    assert sysfs.values() == {"run": 1, "pages_to_scan": 100, "sleep_millisecs": 20,
                              "merge_across_nodes": 1}
    assert "pages_to_scan not restored: 1000000000 is outside 0..100000" in caplog.text
    assert "sleep_millisecs not restored" in caplog.text


knob_values = st.one_of(st.integers(min_value=-(2**80), max_value=2**80), st.floats(),
                        st.text(max_size=5), st.none(), st.booleans(),
                        st.lists(st.integers(), max_size=2))


@settings(max_examples=100, deadline=None)
@given(values=st.dictionaries(st.sampled_from(["run", "pages_to_scan", "sleep_millisecs",
                                               "merge_across_nodes", "evil"]),
                              knob_values, max_size=5))
def test_restoring_any_saved_file_writes_only_values_in_range(
        tmp_path_factory: pytest.TempPathFactory, values: Dict[str, Any]) -> None:
    base = tmp_path_factory.mktemp("ksm")
    sysfs = Sysfs(base / "sys")
    run_dir = base / "run"
    run_dir.mkdir()
    (run_dir / "ksm-original.json").write_text(json.dumps({"values": values}))
    KsmController(sysfs.root, run_dir).start()
    limits = {"run": (0, 2), "pages_to_scan": (0, 100_000), "sleep_millisecs": (0, 60_000),
              "merge_across_nodes": (0, 1)}
    for knob, value in sysfs.values().items():
        assert limits[knob][0] <= value <= limits[knob][1]


def test_saved_ksm_values_in_a_planted_run_dir_are_not_applied(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sysfs = Sysfs(tmp_path / "sys")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "ksm-original.json").write_text(json.dumps({"values": {"run": 2}}))
    run_dir.chmod(0o777)
    KsmController(sysfs.root, run_dir).start()
    assert sysfs.values()["run"] == 0


def test_a_saved_ksm_file_that_is_a_symlink_is_not_followed(tmp_path: Path) -> None:
    sysfs = Sysfs(tmp_path / "sys")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (tmp_path / "elsewhere.json").write_text(json.dumps({"values": {"run": 2}}))
    (run_dir / "ksm-original.json").symlink_to(tmp_path / "elsewhere.json")
    KsmController(sysfs.root, run_dir).start()
    assert sysfs.values()["run"] == 0


# --------------------------------------------------------------------------- memtune record


class FakeHypervisor:
    def __init__(self, **limits: Optional[int]) -> None:
        self.limits = dict(limits)
        self.calls: List[tuple] = []
        self.down = False

    @classmethod
    def of(cls, limits: Dict[str, Optional[int]]) -> FakeHypervisor:
        """VMs of any name (keyword arguments cannot be called "self" or "")."""
        hv = cls()
        hv.limits = dict(limits)
        return hv

    def memory_soft_limit_kib(self, name: str) -> Optional[int]:
        if name not in self.limits:
            raise DomainGone(f"no domain {name}")
        return self.limits[name]

    def set_memory_soft_limit(self, name: str, soft_limit_kib: Optional[int]) -> None:
        if self.down:
            raise HypervisorError("libvirt is not connected")
        if name not in self.limits:
            raise DomainGone(f"no domain {name}")
        self.calls.append((name, soft_limit_kib))
        self.limits[name] = soft_limit_kib


def test_memtune_limits_left_by_a_crash_are_released_at_the_next_start(tmp_path: Path) -> None:
    hv = FakeHypervisor(web=None, db=2048)
    crashed = MemtuneController(hv, run_dir=tmp_path)
    crashed.limit("web", 1024)
    crashed.limit("db", 1000)
    assert hv.limits == {"web": 1024, "db": 1000}
    # ... ebbd is killed here; a new one starts
    results = MemtuneController(hv, run_dir=tmp_path).start()
    assert {r.vm: r.outcome for r in results} == {"web": "released", "db": "released"}
    assert hv.limits == {"web": None, "db": 2048}
    assert not (tmp_path / "memtune-limits.json").exists()


def test_a_clean_stop_leaves_no_memtune_record(tmp_path: Path) -> None:
    hv = FakeHypervisor(web=None)
    controller = MemtuneController(hv, run_dir=tmp_path)
    controller.limit("web", 1024)
    assert json.loads((tmp_path / "memtune-limits.json").read_text())["limits"] == {
        "web": {"limit_kib": 1024, "original_kib": None}}
    controller.release_all()
    assert not (tmp_path / "memtune-limits.json").exists()


def test_a_recorded_limit_libvirt_cannot_reach_is_kept_for_later(tmp_path: Path) -> None:
    hv = FakeHypervisor(web=None)
    MemtuneController(hv, run_dir=tmp_path).limit("web", 1024)
    hv.down = True
    later = MemtuneController(hv, run_dir=tmp_path)
    assert [r.outcome for r in later.start()] == ["failed"]
    assert later.limited() == {"web": 1024}
    hv.down = False
    later.release_all()
    assert hv.limits == {"web": None}
    assert not (tmp_path / "memtune-limits.json").exists()


@settings(max_examples=100, deadline=None)
# A VM may be called anything, "self" too (it once clashed with a keyword argument here).
@example(limits={"self": {"limit_kib": 1024, "original_kib": None}})
@given(limits=st.dictionaries(
    st.text(max_size=8),
    st.fixed_dictionaries({"limit_kib": knob_values, "original_kib": knob_values}) | knob_values,
    max_size=4))
def test_a_memtune_record_with_bad_entries_releases_only_valid_values(
        tmp_path_factory: pytest.TempPathFactory, limits: Dict[str, Any]) -> None:
    run_dir = tmp_path_factory.mktemp("memtune")
    (run_dir / "memtune-limits.json").write_text(json.dumps({"limits": limits}))
    hv = FakeHypervisor.of({name: 1 for name in limits})
    MemtuneController(hv, run_dir=run_dir).start()
    for _, value in hv.calls:
        assert value is None or (isinstance(value, int) and not isinstance(value, bool)
                                 and 0 <= value <= 2**53)


def test_a_dry_run_keeps_the_memtune_record_for_a_real_run(tmp_path: Path) -> None:
    hv = FakeHypervisor(web=None)
    MemtuneController(hv, run_dir=tmp_path).limit("web", 1024)
    assert MemtuneController(hv, dry_run=True, run_dir=tmp_path).start() == []
    assert hv.limits == {"web": 1024}
    assert (tmp_path / "memtune-limits.json").exists()
