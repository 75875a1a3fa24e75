"""A cgroup memory soft limit for guests that ignore their balloon.

When the governor finds a guest uncooperative (no progress toward its balloon
target), the balloon is not working for it; a soft limit on its QEMU cgroup
makes the host reclaim from that guest first when the host is short, without
capping it while memory is plentiful. The limit is removed (the VM's own value
put back) as soon as the guest cooperates again, and for every guest on stop.
Off unless ``memtune.soft_limit_uncooperative`` is true.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from ebb.host.hypervisor.connection import DomainGone, HypervisorError

LOG = logging.getLogger(__name__)


class MemtuneHypervisor(Protocol):
    """What the memtune controller needs from :class:`~ebb.host.hypervisor.Hypervisor`."""

    def memory_soft_limit_kib(self, name: str) -> int | None: ...

    def set_memory_soft_limit(self, name: str, soft_limit_kib: int | None) -> None: ...


@dataclass(frozen=True)
class MemtuneResult:
    """What the controller did about one VM's soft limit."""

    vm: str
    outcome: str  # "applied" | "released" | "unchanged" | "dry-run" | "vm-gone" | "failed"
    soft_limit_kib: int | None
    at: float
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for the tick record and the journal."""
        return asdict(self)


class MemtuneController:
    """Sets and removes soft limits; remembers each VM's own value to put it back."""

    def __init__(self, hypervisor: MemtuneHypervisor, dry_run: bool = False, *,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.hypervisor = hypervisor
        self.dry_run = dry_run
        self._wall_clock = wall_clock
        # vm -> (limit we set, the VM's own limit before us)
        self._limited: dict[str, tuple[int, int | None]] = {}

    def limited(self) -> dict[str, int]:
        """VMs that carry a soft limit set by ebb: name -> limit (KiB)."""
        return {vm: entry[0] for vm, entry in self._limited.items()}

    def limit(self, vm: str, soft_limit_kib: int, reason: str = "") -> MemtuneResult:
        """Put a soft limit of ``soft_limit_kib`` on ``vm`` (e.g. its balloon target)."""
        soft_limit_kib = int(soft_limit_kib)
        entry = self._limited.get(vm)
        if entry is not None and entry[0] == soft_limit_kib:
            return self._result(vm, "unchanged", soft_limit_kib)
        if self.dry_run:
            LOG.info("VM %s: dry run: would set memory soft limit %d KiB (%s)", vm,
                     soft_limit_kib, reason,
                     extra={"VM": vm, "ACTION": "memtune", "REASON": reason})
            return self._result(vm, "dry-run", soft_limit_kib, "dry run: not applied")
        try:
            original = entry[1] if entry else self.hypervisor.memory_soft_limit_kib(vm)
            self.hypervisor.set_memory_soft_limit(vm, soft_limit_kib)
        except DomainGone as err:
            self._limited.pop(vm, None)
            return self._result(vm, "vm-gone", soft_limit_kib, str(err))
        except HypervisorError as err:
            LOG.warning("VM %s: %s", vm, err)
            return self._result(vm, "failed", soft_limit_kib, str(err))
        self._limited[vm] = (soft_limit_kib, original)
        LOG.info("VM %s: memory soft limit %d KiB (%s)", vm, soft_limit_kib, reason,
                 extra={"VM": vm, "ACTION": "memtune", "REASON": reason})
        return self._result(vm, "applied", soft_limit_kib)

    def release(self, vm: str, reason: str = "") -> MemtuneResult | None:
        """Remove ebb's soft limit from ``vm`` (restoring its own); None if it had none."""
        entry = self._limited.get(vm)
        if entry is None:
            return None
        original = entry[1]
        if self.dry_run:
            self._limited.pop(vm, None)
            return self._result(vm, "dry-run", original, "dry run: not applied")
        try:
            self.hypervisor.set_memory_soft_limit(vm, original)
        except DomainGone as err:
            self._limited.pop(vm, None)
            return self._result(vm, "vm-gone", original, str(err))
        except HypervisorError as err:
            LOG.warning("VM %s: cannot remove the memory soft limit: %s", vm, err)
            return self._result(vm, "failed", original, str(err))
        self._limited.pop(vm, None)
        LOG.info("VM %s: memory soft limit removed (%s)", vm, reason,
                 extra={"VM": vm, "ACTION": "memtune", "REASON": reason})
        return self._result(vm, "released", original)

    def release_all(self) -> list[MemtuneResult]:
        """Remove every limit ebb set (on stop)."""
        results = []
        for vm in list(self._limited):
            result = self.release(vm, "ebbd stopping")
            if result is not None:
                results.append(result)
        return results

    def forget(self, vm: str) -> None:
        """A VM stopped: its cgroup is gone with it, nothing to restore."""
        self._limited.pop(vm, None)

    def _result(self, vm: str, outcome: str, soft_limit_kib: int | None,
                detail: str = "") -> MemtuneResult:
        return MemtuneResult(vm=vm, outcome=outcome, soft_limit_kib=soft_limit_kib,
                             at=self._wall_clock(), detail=detail)
