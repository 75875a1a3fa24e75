"""The memtune controller: a soft limit for uncooperative guests, removed when they cooperate."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from ebb.host.controllers import MemtuneController
from ebb.host.hypervisor import DomainGone, Hypervisor, HypervisorError

MiB = 1024


class FakeHypervisor:
    def __init__(self, **limits: int | None) -> None:
        self.limits = dict(limits)
        self.calls: list[tuple[str, int | None]] = []

    def memory_soft_limit_kib(self, name: str) -> int | None:
        if name not in self.limits:
            raise DomainGone(f"VM {name}: gone")
        return self.limits[name]

    def set_memory_soft_limit(self, name: str, soft_limit_kib: int | None) -> None:
        if name not in self.limits:
            raise DomainGone(f"VM {name}: gone")
        if soft_limit_kib == -1:
            raise HypervisorError("VM: refused")
        self.calls.append((name, soft_limit_kib))
        self.limits[name] = soft_limit_kib


def test_limit_then_release_puts_the_vms_own_value_back() -> None:
    hv = FakeHypervisor(vm1=None, vm2=3000 * MiB)
    controller = MemtuneController(hv)
    assert controller.limit("vm1", 1024 * MiB, "uncooperative").outcome == "applied"
    assert controller.limit("vm2", 1024 * MiB).outcome == "applied"
    assert controller.limited() == {"vm1": 1024 * MiB, "vm2": 1024 * MiB}
    assert controller.limit("vm1", 1024 * MiB).outcome == "unchanged"
    assert controller.limit("vm1", 900 * MiB).outcome == "applied"
    released = controller.release("vm1", "cooperates again")
    assert released is not None and released.outcome == "released"
    assert hv.limits["vm1"] is None
    assert [r.vm for r in controller.release_all()] == ["vm2"]
    assert hv.limits["vm2"] == 3000 * MiB
    assert controller.limited() == {}
    assert controller.release("vm1") is None


def test_dry_run_changes_nothing() -> None:
    hv = FakeHypervisor(vm1=None)
    controller = MemtuneController(hv, dry_run=True)
    assert controller.limit("vm1", 1024 * MiB).outcome == "dry-run"
    assert hv.calls == []


def test_gone_and_failing_vms_are_reported() -> None:
    hv = FakeHypervisor(vm1=None)
    controller = MemtuneController(hv)
    assert controller.limit("ghost", 1024 * MiB).outcome == "vm-gone"
    assert controller.limit("vm1", -1).outcome == "failed"
    assert controller.limited() == {}


@pytest.fixture
def test_driver() -> Iterator[Hypervisor]:
    pytest.importorskip("libvirt")
    hv = Hypervisor("test:///default")
    hv.connect_now()
    yield hv
    hv.stop()


def test_against_libvirt_test_driver(test_driver: Any) -> None:
    controller = MemtuneController(test_driver)
    controller.limit("test", 512 * MiB)
    assert test_driver.memory_soft_limit_kib("test") == 512 * MiB
    controller.release_all()
    assert test_driver.memory_soft_limit_kib("test") is None
