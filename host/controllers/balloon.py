"""Apply balloon targets through the hypervisor, without noise and without stale data.

The governor decides a target from a sample that may be a tick old. Right
before changing a balloon the controller reads the guest's balloon again (as
earlyoom re-reads memory before killing): if the guest is already within
``min_change_kib`` of the target, nothing is sent. A target equal to the one
sent last is not sent again while the guest is still moving toward it (libvirt
would only repeat the same request), unless ``resend_after_s`` has passed.
Every call returns a :class:`BalloonResult` for the decision journal.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from ebb.host.hypervisor.connection import DomainGone, HypervisorError

LOG = logging.getLogger(__name__)


class BalloonHypervisor(Protocol):
    """What the balloon controller needs from :class:`~ebb.host.hypervisor.Hypervisor`."""

    def balloon_actual_kib(self, name: str) -> int: ...

    def set_balloon_target(self, name: str, target_kib: int) -> None: ...


#: Outcomes, as they appear in the journal and in ``applied``.
APPLIED = "applied"
DRY_RUN = "dry-run"
UNCHANGED = "unchanged"
ALREADY_REQUESTED = "already-requested"
VM_GONE = "vm-gone"
FAILED = "failed"


@dataclass(frozen=True)
class BalloonResult:
    """What the controller did about one target."""

    vm: str
    outcome: str
    target_kib: int
    #: The balloon as re-read right before deciding (None when it could not be read).
    before_kib: int | None
    at: float
    detail: str = ""

    @property
    def changed(self) -> bool:
        """True when a new target went to libvirt."""
        return self.outcome == APPLIED

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for the tick record and the journal."""
        return asdict(self)


class BalloonController:
    """Sends balloon targets to libvirt when they make a difference."""

    def __init__(
        self,
        hypervisor: BalloonHypervisor,
        dry_run: bool = False,
        *,
        min_change_kib: int = 1024,
        resend_after_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.hypervisor = hypervisor
        self.dry_run = dry_run
        self.min_change_kib = min_change_kib
        self.resend_after_s = resend_after_s
        self._clock = clock
        self._wall_clock = wall_clock
        # vm -> (target sent, monotonic time sent)
        self._requested: dict[str, tuple[int, float]] = {}

    def last_requested_kib(self, vm: str) -> int | None:
        """The last target sent to ``vm`` (None when none since start or since it left)."""
        entry = self._requested.get(vm)
        return entry[0] if entry else None

    def forget(self, vm: str) -> None:
        """Drop what is known about a VM that stopped (its next start begins afresh)."""
        self._requested.pop(vm, None)

    def apply(self, vm: str, target_kib: int, reason: str = "") -> BalloonResult:
        """Set ``vm``'s balloon to ``target_kib`` if that changes anything. Never raises
        for libvirt trouble: the result says what happened."""
        target_kib = int(target_kib)
        try:
            before_kib = self.hypervisor.balloon_actual_kib(vm)
        except DomainGone as err:
            self.forget(vm)
            return self._result(vm, VM_GONE, target_kib, None, str(err))
        except HypervisorError as err:
            LOG.warning("VM %s: not changing the balloon: %s", vm, err)
            return self._result(vm, FAILED, target_kib, None, str(err))

        # A change of exactly min_change_kib is made: an agent's smallest need is 1 MiB.
        if abs(before_kib - target_kib) < self.min_change_kib:
            # The guest is there (or the situation changed since the decision).
            return self._result(vm, UNCHANGED, target_kib, before_kib,
                                f"balloon already at {before_kib} KiB")
        requested = self._requested.get(vm)
        if requested is not None and abs(requested[0] - target_kib) <= self.min_change_kib:
            age_s = self._clock() - requested[1]
            if age_s < self.resend_after_s:
                return self._result(
                    vm, ALREADY_REQUESTED, target_kib, before_kib,
                    f"{requested[0]} KiB requested {age_s:.1f} s ago; guest at {before_kib} KiB",
                )
        if self.dry_run:
            LOG.info("VM %s: dry run: would set balloon %d -> %d KiB (%s)",
                     vm, before_kib, target_kib, reason,
                     extra={"VM": vm, "ACTION": "balloon", "REASON": reason})
            return self._result(vm, DRY_RUN, target_kib, before_kib, "dry run: not applied")
        try:
            self.hypervisor.set_balloon_target(vm, target_kib)
        except DomainGone as err:
            self.forget(vm)
            return self._result(vm, VM_GONE, target_kib, before_kib, str(err))
        except HypervisorError as err:
            LOG.warning("VM %s: %s", vm, err)
            return self._result(vm, FAILED, target_kib, before_kib, str(err))
        self._requested[vm] = (target_kib, self._clock())
        LOG.info("VM %s: balloon %d -> %d KiB (%s)", vm, before_kib, target_kib, reason,
                 extra={"VM": vm, "ACTION": "balloon", "REASON": reason})
        return self._result(vm, APPLIED, target_kib, before_kib)

    def _result(self, vm: str, outcome: str, target_kib: int, before_kib: int | None,
                detail: str = "") -> BalloonResult:
        return BalloonResult(vm=vm, outcome=outcome, target_kib=target_kib,
                             before_kib=before_kib, at=self._wall_clock(), detail=detail)
