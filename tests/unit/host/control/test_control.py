"""The control socket: permissions (SO_PEERCRED rule with injected credentials),
the request/answer protocol, the client's errors and ebbctl's daemon commands."""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
from ebb.host.cli_ebbctl import main as ebbctl
from ebb.host.control import (
    Authorizer,
    ControlClient,
    ControlError,
    ControlServer,
    ControlService,
    DaemonUnreachable,
    PeerCred,
    PermissionDenied,
    peer_credentials,
)

EBB_GID = 4242
STATUS: Dict[str, Any] = {
    "daemon": {
        "version": "0.1.0", "pid": 123, "uptime_s": 75.0, "paused": False, "dry_run": False,
        "policy": {"dir": "/etc/ebb/policy.d", "loaded_at": 1.0, "errors": []},
        "tick": {"count": 9, "last_at": 2.0, "last_duration_ms": 3.5, "interval_s": 2.0},
        "libvirt": {"uri": "qemu:///system", "connected": True},
    },
    "host": {
        "mem_total_kib": 16777216, "mem_free_kib": 8388608, "freeable_kib": 9000000,
        "mem_available_kib": 9500000, "swap_total_kib": 0, "swap_used_kib": 0,
        "swap_in_per_s": 0.0, "swap_out_per_s": 0.0, "psi_some_avg10": 0.5,
        "ksm": {"run": 1, "pages_to_scan": 100, "sleep_millisecs": 20, "pages_shared": 5,
                "pages_sharing": 50},
    },
    "vms": [{
        "name": "web1", "uuid": "u", "state": "running", "balloon_cur_kib": 2097152,
        "balloon_target_kib": 1887437, "balloon_max_kib": 4194304, "floor_kib": 524288,
        "managed": True,
        "agent": {"connected": True, "last_report_age_s": 0.8, "protocol_errors": 0,
                  "cut_off_until": None},
        "offer_kib": 102400, "need_kib": None, "need_urgency": None, "psi_some_avg10": 0.0,
        "mem_available_kib": 1500000, "cooperation": "ok",
        "last_action": {"at": 1.0, "kind": "inflate", "target_kib": 1887437,
                        "rule": "policy", "reason": "host short of memory"},
    }],
}


class FakeDaemon:
    def __init__(self) -> None:
        self.calls: List[tuple] = []
        self.paused = False

    def status(self) -> Dict[str, Any]:
        return STATUS

    def explain(self, vm: str) -> Dict[str, Any]:
        if vm != "web1":
            raise ControlError(f"ebbd knows no VM named {vm!r}")
        return {"vm": vm, "status": STATUS["vms"][0], "decisions": [{
            "at": 1.0, "tick": 4, "kind": "inflate", "target_kib": 1887437, "rule": "policy",
            "reason": "host short of memory", "inputs": {"balloon_cur_kib": 2097152},
            "outcome": "applied", "detail": "", "policy_error": None, "repeats": 1}],
            "paused": False, "dry_run": False}

    def reload(self) -> Dict[str, Any]:
        self.calls.append(("reload",))
        return {"config": "reloaded", "policy": "reloaded", "policy_errors": [],
                "restart_needed": []}

    def pause(self) -> Dict[str, Any]:
        self.calls.append(("pause",))
        self.paused = True
        return {"paused": True}

    def resume(self) -> Dict[str, Any]:
        self.calls.append(("resume",))
        return {"paused": False}

    def set_floor(self, vm: str, floor_mib: Optional[float]) -> Dict[str, Any]:
        self.calls.append(("set-floor", vm, floor_mib))
        return {"vm": vm, "floor_kib": None if floor_mib is None else int(floor_mib * 1024),
                "note": "until ebbd restarts"}

    def metrics(self) -> str:
        return "ebb_ticks_total 9.0\n"


def authorizer(**kwargs: Any) -> Authorizer:
    kwargs.setdefault("group_gid", EBB_GID)
    kwargs.setdefault("lookup_group", False)
    kwargs.setdefault("user_name_of", lambda uid: {1000: "alice", 1001: "bob"}.get(uid))
    return Authorizer(**kwargs)


# --- the permission rule ---------------------------------------------------------------


def test_root_may_change(tmp_path):
    assert authorizer(proc_root=str(tmp_path)).may_change(PeerCred(pid=1, uid=0, gid=0))


def test_primary_group_ebb_may_change(tmp_path):
    assert authorizer(proc_root=str(tmp_path)).may_change(PeerCred(pid=5, uid=1000, gid=EBB_GID))


def test_supplementary_group_from_the_peer_process_may_change(tmp_path):
    (tmp_path / "77").mkdir()
    (tmp_path / "77" / "status").write_text(f"Name:\tebbctl\nGroups:\t24 {EBB_GID} 100\n")
    auth = authorizer(proc_root=str(tmp_path))
    assert auth.may_change(PeerCred(pid=77, uid=1000, gid=1000))


def test_member_listed_in_the_group_database_may_change(tmp_path):
    auth = authorizer(proc_root=str(tmp_path), group_members=["bob"])
    assert auth.may_change(PeerCred(pid=99, uid=1001, gid=1001))


def test_other_users_may_not_change(tmp_path):
    (tmp_path / "78").mkdir()
    (tmp_path / "78" / "status").write_text("Groups:\t24 100\n")
    auth = authorizer(proc_root=str(tmp_path), group_members=["bob"])
    assert not auth.may_change(PeerCred(pid=78, uid=1000, gid=1000))


def test_without_an_ebb_group_only_root_may_change(tmp_path):
    auth = Authorizer(group_name="no-such-group-ebb", lookup_group=True, proc_root=str(tmp_path))
    assert auth.group_gid is None
    assert auth.may_change(PeerCred(pid=1, uid=0, gid=0))
    assert not auth.may_change(PeerCred(pid=1, uid=1000, gid=1000))


def test_service_lets_anyone_read_and_only_members_change(tmp_path):
    daemon = FakeDaemon()
    service = ControlService(daemon, authorizer(proc_root=str(tmp_path)))
    stranger = PeerCred(pid=1, uid=1000, gid=1000)
    assert service.handle({"cmd": "status"}, stranger) == {"ok": True, "result": STATUS}
    assert service.handle({"cmd": "explain", "vm": "web1"}, stranger)["ok"]
    for request in ({"cmd": "reload"}, {"cmd": "pause"}, {"cmd": "resume"},
                    {"cmd": "set-floor", "vm": "web1", "floor_mib": 512}):
        reply = service.handle(request, stranger)
        assert reply["ok"] is False and reply.get("denied") is True
        assert "root" in reply["error"] and "'ebb'" in reply["error"]
    assert daemon.calls == []
    member = PeerCred(pid=1, uid=1000, gid=EBB_GID)
    assert service.handle({"cmd": "pause"}, member)["ok"]
    assert daemon.calls == [("pause",)]


def test_service_rejects_bad_requests_with_a_reason(tmp_path):
    service = ControlService(FakeDaemon(), authorizer(proc_root=str(tmp_path)))
    root = PeerCred(pid=1, uid=0, gid=0)
    assert "unknown command" in service.handle({"cmd": "format-disk"}, root)["error"]
    assert '"cmd"' in service.handle({}, root)["error"]
    assert '"vm"' in service.handle({"cmd": "explain"}, root)["error"]
    bad_floor = service.handle({"cmd": "set-floor", "vm": "web1", "floor_mib": "lots"}, root)
    assert "floor_mib" in bad_floor["error"]
    assert "no VM named 'nope'" in service.handle({"cmd": "explain", "vm": "nope"}, root)["error"]


# --- the socket ---------------------------------------------------------------------------


@pytest.fixture
def server(tmp_path):
    daemon = FakeDaemon()
    path = str(tmp_path / "run" / "ebbd.sock")
    srv = ControlServer(path, ControlService(daemon, authorizer(proc_root=str(tmp_path))),
                        group_name="no-such-group-ebb")
    srv.start()
    yield srv, daemon
    srv.stop()


def test_socket_is_root_only_without_an_ebb_group(server):
    srv, _ = server
    mode = stat.S_IMODE(os.stat(srv.path).st_mode)
    assert mode == 0o600


def test_socket_takes_the_group_and_0660_when_the_group_exists(tmp_path):
    path = str(tmp_path / "ebbd.sock")
    srv = ControlServer(path, ControlService(FakeDaemon(), authorizer()), group_name="root")
    srv.bind()
    try:
        info = os.stat(path)
        assert stat.S_IMODE(info.st_mode) == 0o660 and info.st_gid == 0
    finally:
        srv.stop()
    assert not os.path.exists(path)


def test_client_round_trip_and_peer_credentials(server):
    srv, daemon = server
    client = ControlClient(srv.path, timeout_s=5)
    assert client.request("status") == STATUS
    assert client.request("set-floor", vm="web1", floor_mib=768)["floor_kib"] == 768 * 1024
    assert daemon.calls == [("set-floor", "web1", 768)]
    with pytest.raises(ControlError, match="no VM named"):
        client.request("explain", vm="nope")
    a, b = socket.socketpair(socket.AF_UNIX)
    try:
        cred = peer_credentials(a)
        assert cred.uid == os.getuid() and cred.pid == os.getpid()
    finally:
        a.close()
        b.close()


def test_denied_changes_raise_permission_denied(tmp_path):
    path = str(tmp_path / "ebbd.sock")
    nobody = Authorizer(group_gid=None, lookup_group=False)
    nobody.may_change = lambda cred: False  # type: ignore[method-assign]
    srv = ControlServer(path, ControlService(FakeDaemon(), nobody), group_name="no-such-group")
    srv.start()
    try:
        with pytest.raises(PermissionDenied):
            ControlClient(path).request("pause")
    finally:
        srv.stop()


def test_several_requests_on_one_connection_and_garbage_lines(server):
    srv, _ = server
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(srv.path)
        sock.sendall(b'{"cmd": "ping"}\nnot json\n{"cmd": "metrics"}\n')
        data = b""
        while data.count(b"\n") < 3:
            data += sock.recv(65536)
    replies = [json.loads(line) for line in data.splitlines()]
    assert replies[0] == {"ok": True, "result": {"pong": True}}
    assert replies[1]["ok"] is False and "not JSON" in replies[1]["error"]
    assert replies[2]["result"].startswith("ebb_ticks_total")


def test_client_says_ebbd_is_not_running(tmp_path):
    path = str(tmp_path / "missing.sock")
    with pytest.raises(DaemonUnreachable) as caught:
        ControlClient(path).request("status")
    assert f"cannot reach ebbd at {path}: is ebbd running?" in str(caught.value)


def test_a_stale_socket_file_is_replaced_and_a_live_one_is_not_stolen(tmp_path):
    path = str(tmp_path / "ebbd.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # file left behind, nobody listening
    first = ControlServer(path, ControlService(FakeDaemon(), authorizer()), group_name="x-none")
    first.start()
    try:
        second = ControlServer(path, ControlService(FakeDaemon(), authorizer()), group_name="x")
        with pytest.raises(ControlError, match="already listening"):
            second.bind()
        assert ControlClient(path).request("ping") == {"pong": True}
    finally:
        first.stop()


# --- ebbctl -------------------------------------------------------------------------------


def test_ebbctl_status_prints_a_table_and_the_exact_json(server, capsys):
    srv, _ = server
    assert ebbctl(["--socket", srv.path, "status"]) == 0
    out = capsys.readouterr().out
    assert "web1" in out and "VM" in out and "COOP" in out
    assert "inflate -> 1843 [policy] host short of memory" in out
    assert ebbctl(["--socket", srv.path, "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == STATUS


def test_ebbctl_explain(server, capsys):
    srv, _ = server
    assert ebbctl(["--socket", srv.path, "explain", "web1"]) == 0
    out = capsys.readouterr().out
    assert "[policy]" in out and "why: host short of memory" in out
    assert "balloon_cur_kib=2097152" in out
    assert ebbctl(["--socket", srv.path, "explain", "web1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["decisions"][0]["rule"] == "policy"
    assert ebbctl(["--socket", srv.path, "explain", "nope"]) == 1
    assert "no VM named 'nope'" in capsys.readouterr().err


def test_ebbctl_changes(server, capsys):
    srv, daemon = server
    assert ebbctl(["--socket", srv.path, "pause"]) == 0
    assert ebbctl(["--socket", srv.path, "resume"]) == 0
    assert ebbctl(["--socket", srv.path, "reload"]) == 0
    assert ebbctl(["--socket", srv.path, "set-floor", "web1", "512"]) == 0
    assert ebbctl(["--socket", srv.path, "set-floor", "web1", "default"]) == 0
    assert ebbctl(["--socket", srv.path, "set-floor", "web1", "lots"]) == 2
    assert daemon.calls == [("pause",), ("resume",), ("reload",), ("set-floor", "web1", 512.0),
                            ("set-floor", "web1", None)]


def test_ebbctl_status_when_ebbd_is_down(tmp_path, capsys):
    path = str(Path(tmp_path) / "ebbd.sock")
    assert ebbctl(["--socket", path, "status"]) == 1
    assert f"cannot reach ebbd at {path}: is ebbd running?" in capsys.readouterr().err


def test_socket_directory_is_reachable_even_under_a_strict_umask(tmp_path):
    path = str(tmp_path / "run" / "ebb" / "ebbd.sock")
    old = os.umask(0o077)
    try:
        srv = ControlServer(path, ControlService(FakeDaemon(), authorizer()), group_name="x-no")
        srv.bind()
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o755
    finally:
        srv.stop()


def test_the_socket_file_appears_only_once_ebbd_listens(tmp_path, monkeypatch):
    # A client starting with ebbd (ebbctl, systemd's ExecStartPost) must never
    # find the socket file and get "connection refused" from it.
    path = str(tmp_path / "ebbd.sock")
    seen: List[str] = []
    real_chmod = os.chmod

    def chmod_then_try_the_socket(target: Any, mode: int, *args: Any, **kwargs: Any) -> None:
        real_chmod(target, mode, *args, **kwargs)
        if os.path.lexists(path):
            probe = socket.socket(socket.AF_UNIX)
            try:
                probe.connect(path)
                seen.append("listening")
            except OSError as err:
                seen.append(f"refused: {err}")
            finally:
                probe.close()

    monkeypatch.setattr(os, "chmod", chmod_then_try_the_socket)
    srv = ControlServer(path, ControlService(FakeDaemon(), authorizer()), group_name="x-none")
    srv.bind()
    try:
        assert all(s == "listening" for s in seen), seen
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert os.listdir(tmp_path) == ["ebbd.sock"]  # no temporary name left behind
        srv.start()
        assert ControlClient(path).request("ping") == {"pong": True}
    finally:
        srv.stop()
    assert os.listdir(tmp_path) == []
