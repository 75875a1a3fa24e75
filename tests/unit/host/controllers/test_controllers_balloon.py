"""The balloon controller: skip noise, re-read before acting, say what it did."""

from __future__ import annotations

import pytest
from ebb.host.controllers import BalloonController
from ebb.host.hypervisor import DomainGone, HypervisorError

MiB = 1024


class FakeHypervisor:
    """A hypervisor whose guests reach their targets only when the test says so."""

    def __init__(self, **balloons_kib: int) -> None:
        self.balloons = dict(balloons_kib)
        self.set_calls: list[tuple[str, int]] = []
        self.fail_with: HypervisorError | None = None

    def balloon_actual_kib(self, name: str) -> int:
        if name not in self.balloons:
            raise DomainGone(f"VM {name}: gone")
        return self.balloons[name]

    def set_balloon_target(self, name: str, target_kib: int) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.set_calls.append((name, target_kib))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_applies_a_real_change_and_reports_it() -> None:
    hv = FakeHypervisor(vm1=2048 * MiB)
    result = BalloonController(hv).apply("vm1", 1536 * MiB, reason="host pressure")
    assert hv.set_calls == [("vm1", 1536 * MiB)]
    assert result.changed and result.outcome == "applied"
    assert result.before_kib == 2048 * MiB
    assert result.to_dict()["target_kib"] == 1536 * MiB


def test_target_within_epsilon_of_the_balloon_is_not_sent() -> None:
    hv = FakeHypervisor(vm1=2048 * MiB)
    result = BalloonController(hv, min_change_kib=1024).apply("vm1", 2048 * MiB - 1000)
    assert hv.set_calls == []
    assert result.outcome == "unchanged" and not result.changed


def test_a_change_of_exactly_the_epsilon_is_sent() -> None:
    # A guest asking for 1 MiB (the agent's smallest need) gets it.
    hv = FakeHypervisor(vm1=2048 * MiB)
    result = BalloonController(hv, min_change_kib=1024).apply("vm1", 2048 * MiB + 1024)
    assert hv.set_calls == [("vm1", 2048 * MiB + 1024)]
    assert result.outcome == "applied"


def test_rereads_the_balloon_right_before_acting() -> None:
    # The decision was made when the guest was at 2 GiB; by now it has already
    # moved to the target on its own (e.g. an agent gave memory back).
    hv = FakeHypervisor(vm1=2048 * MiB)
    controller = BalloonController(hv)
    hv.balloons["vm1"] = 1024 * MiB
    result = controller.apply("vm1", 1024 * MiB)
    assert hv.set_calls == []
    assert result.before_kib == 1024 * MiB and result.outcome == "unchanged"


def test_same_target_is_not_resent_while_the_guest_moves_toward_it() -> None:
    hv = FakeHypervisor(vm1=2048 * MiB)
    clock = Clock()
    controller = BalloonController(hv, resend_after_s=30.0, clock=clock)
    controller.apply("vm1", 1024 * MiB)
    hv.balloons["vm1"] = 1800 * MiB  # on its way
    clock.now += 2
    again = controller.apply("vm1", 1024 * MiB)
    assert again.outcome == "already-requested"
    assert len(hv.set_calls) == 1
    clock.now += 30  # still not there long after: ask again
    assert controller.apply("vm1", 1024 * MiB).outcome == "applied"
    assert len(hv.set_calls) == 2
    # A different target is sent at once.
    assert controller.apply("vm1", 1200 * MiB).outcome == "applied"
    assert controller.last_requested_kib("vm1") == 1200 * MiB


def test_dry_run_decides_and_logs_but_never_sets(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    hv = FakeHypervisor(vm1=2048 * MiB)
    result = BalloonController(hv, dry_run=True).apply("vm1", 1024 * MiB, reason="rule x")
    assert hv.set_calls == []
    assert result.outcome == "dry-run" and not result.changed
    assert "would set balloon 2097152 -> 1048576 KiB (rule x)" in caplog.text


def test_vanished_vm_and_libvirt_errors_are_results_not_exceptions() -> None:
    hv = FakeHypervisor(vm1=2048 * MiB)
    controller = BalloonController(hv)
    assert controller.apply("ghost", 1024 * MiB).outcome == "vm-gone"
    hv.fail_with = HypervisorError("VM vm1: cannot set the balloon: internal error")
    failed = controller.apply("vm1", 1024 * MiB)
    assert failed.outcome == "failed" and "internal error" in failed.detail
    assert controller.last_requested_kib("vm1") is None  # nothing was sent
