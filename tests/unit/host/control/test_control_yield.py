"""The ``yield`` control command: who may run it and what it accepts."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from ebb.host.control import Authorizer, ControlService, PeerCred

ROOT = PeerCred(pid=1, uid=0, gid=0)


class YieldDaemon:
    def __init__(self) -> None:
        self.calls: List[Tuple[str, Optional[int], bool]] = []

    def yield_memory(self, vm: str, kib: Optional[int], poll: bool) -> Dict[str, Any]:
        self.calls.append((vm, kib, poll))
        return {"vm": vm, "state": "waiting"}


def service(daemon: YieldDaemon) -> ControlService:
    auth = Authorizer(group_gid=4242, lookup_group=False, user_name_of=lambda uid: None)
    return ControlService(daemon, auth)  # type: ignore[arg-type]


def test_yield_starts_then_polls() -> None:
    daemon = YieldDaemon()
    svc = service(daemon)
    assert svc.handle({"cmd": "yield", "vm": "web", "kib": 204800}, ROOT)["ok"]
    assert svc.handle({"cmd": "yield", "vm": "web", "poll": True}, ROOT)["ok"]
    assert daemon.calls == [("web", 204800, False), ("web", None, True)]


def test_yield_needs_a_positive_size_and_a_vm() -> None:
    daemon = YieldDaemon()
    svc = service(daemon)
    for bad in (0, -5, "1G", True, 2**60, None):
        reply = svc.handle({"cmd": "yield", "vm": "web", "kib": bad}, ROOT)
        assert not reply["ok"] and "kib" in reply["error"]
    assert "vm" in svc.handle({"cmd": "yield", "kib": 1024}, ROOT)["error"]
    assert daemon.calls == []


def test_yield_changes_a_guest_so_it_needs_the_ebb_group(tmp_path) -> None:
    daemon = YieldDaemon()
    auth = Authorizer(group_gid=4242, lookup_group=False, proc_root=str(tmp_path),
                      user_name_of=lambda uid: None)
    reply = ControlService(daemon, auth).handle(  # type: ignore[arg-type]
        {"cmd": "yield", "vm": "web", "kib": 1024}, PeerCred(pid=9, uid=1000, gid=1000)
    )
    assert not reply["ok"] and reply.get("denied")
    assert daemon.calls == []
