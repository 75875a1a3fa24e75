"""A cgroup memory soft limit for guests that ignore their balloon.

When the governor finds a guest uncooperative (no progress toward its balloon
target), the balloon is not working for it; a soft limit on its QEMU cgroup
makes the host reclaim from that guest first when the host is short, without
capping it while memory is plentiful. The limit is removed (the VM's own value
put back) as soon as the guest cooperates again, and for every guest on stop.
Off unless ``memtune.soft_limit_uncooperative`` is true.

Every limit set is recorded (with the VM's own value) in
``RUN_DIR/memtune-limits.json`` before it is applied, and the record removed
once it is released: if ebbd dies, :meth:`MemtuneController.start` at the next
start puts each recorded VM's own value back, as the KSM controller does with
``ksm-original.json``. The recorded values pass range checks first; a bad entry
is logged and skipped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from ebb.host.hypervisor.connection import MEMORY_PARAM_UNLIMITED, DomainGone, HypervisorError
from ebb.host.rundir import RunDirError, read_state, remove_state, write_state

LOG = logging.getLogger(__name__)

#: The record of the limits ebbd has set, under ``daemon.run_dir``.
STATE_FILE_NAME = "memtune-limits.json"
#: Longest VM name taken from the record (libvirt's own limit is far below).
_MAX_NAME_CHARS = 1024


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
                 run_dir: Path | str | None = None,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.hypervisor = hypervisor
        self.dry_run = dry_run
        self.state_path = Path(run_dir) / STATE_FILE_NAME if run_dir is not None else None
        self._wall_clock = wall_clock
        # vm -> (limit we set, the VM's own limit before us)
        self._limited: dict[str, tuple[int, int | None]] = {}

    def start(self) -> list[MemtuneResult]:
        """Release the limits a previous ebbd recorded and did not release (it crashed).

        Call once, before the first tick, when libvirt is connected. A VM that
        libvirt cannot reach now keeps its entry: it is released on stop, or by
        the engine when the VM is seen cooperating. In a dry run nothing is
        changed and the record stays for a real run.
        """
        recorded = self._read_record()
        if not recorded:
            return []
        if self.dry_run:
            LOG.info("memtune: dry run: would remove the soft limits a previous run left on %s",
                     ", ".join(sorted(recorded)))
            return []
        LOG.warning("found %s from a previous run that did not stop cleanly: removing the "
                    "memory soft limits it set on %s", self.state_path,
                    ", ".join(sorted(recorded)))
        self._limited.update(recorded)
        results = []
        for vm in sorted(recorded):
            result = self.release(vm, "left by a previous run")
            if result is not None:
                results.append(result)
        self._save_record_logged()
        return results

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
            # Recorded before it is applied: a crash in between leaves a record of a
            # limit that may not be there, and releasing it again is harmless.
            self._limited[vm] = (soft_limit_kib, original)
            self._save_record()
            self.hypervisor.set_memory_soft_limit(vm, soft_limit_kib)
        except DomainGone as err:
            self._limited.pop(vm, None)
            self._save_record_logged()
            return self._result(vm, "vm-gone", soft_limit_kib, str(err))
        except (HypervisorError, OSError) as err:
            self._restore_entry(vm, entry)
            LOG.warning("VM %s: %s", vm, err)
            return self._result(vm, "failed", soft_limit_kib, str(err))
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
            self._save_record_logged()
            return self._result(vm, "vm-gone", original, str(err))
        except HypervisorError as err:
            LOG.warning("VM %s: cannot remove the memory soft limit: %s", vm, err)
            return self._result(vm, "failed", original, str(err))
        self._limited.pop(vm, None)
        self._save_record_logged()
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
        if self._limited.pop(vm, None) is not None:
            self._save_record_logged()

    # --- the record under run_dir -------------------------------------------------

    def _restore_entry(self, vm: str, entry: tuple[int, int | None] | None) -> None:
        if entry is None:
            self._limited.pop(vm, None)
        else:
            self._limited[vm] = entry
        self._save_record_logged()

    def _save_record_logged(self) -> None:
        """:meth:`_save_record` where failing to record is only worth a log line.

        (A stale entry in the record means one more harmless release at the next start.)
        """
        try:
            self._save_record()
        except OSError as err:
            LOG.error("memtune: cannot update %s: %s", self.state_path, err)

    def _save_record(self) -> None:
        """Write what is limited now (or remove the record when nothing is)."""
        if self.state_path is None or self.dry_run:
            return
        if not self._limited:
            remove_state(self.state_path)
            return
        write_state(self.state_path, {
            "saved_at": self._wall_clock(),
            "limits": {vm: {"limit_kib": limit, "original_kib": original}
                       for vm, (limit, original) in sorted(self._limited.items())},
        })

    def _read_record(self) -> dict[str, tuple[int, int | None]]:
        """The recorded limits that pass the checks; bad entries are logged and skipped."""
        if self.state_path is None:
            return {}
        try:
            saved = read_state(self.state_path)
        except RunDirError as err:
            LOG.error("not releasing recorded memory soft limits: %s", err)
            return {}
        except (OSError, ValueError) as err:
            LOG.error("cannot read recorded memory soft limits %s: %s; removing it",
                      self.state_path, err)
            remove_state(self.state_path)
            return {}
        limits = saved.get("limits") if isinstance(saved, dict) else None
        if saved is not None and not isinstance(limits, dict):
            LOG.error("%s holds no \"limits\" table; nothing to release", self.state_path)
        recorded: dict[str, tuple[int, int | None]] = {}
        for vm, entry in (limits or {}).items():
            problem = _check_entry(vm, entry)
            if problem:
                LOG.error("%s: entry skipped: %s", self.state_path, problem)
                continue
            recorded[vm] = (int(entry["limit_kib"]), entry["original_kib"])
        return recorded

    def _result(self, vm: str, outcome: str, soft_limit_kib: int | None,
                detail: str = "") -> MemtuneResult:
        return MemtuneResult(vm=vm, outcome=outcome, soft_limit_kib=soft_limit_kib,
                             at=self._wall_clock(), detail=detail)


def _valid_kib(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)
            and 0 <= value <= MEMORY_PARAM_UNLIMITED)


def _check_entry(vm: Any, entry: Any) -> str | None:
    """Why one recorded limit cannot be trusted (None when it can)."""
    if not isinstance(vm, str) or not vm or len(vm) > _MAX_NAME_CHARS:
        return f"VM name {str(vm)[:64]!r} is not a domain name"
    if not isinstance(entry, dict):
        return f"VM {vm[:64]!r}: not a table"
    if not _valid_kib(entry.get("limit_kib")):
        return f"VM {vm[:64]!r}: limit_kib is not a KiB count"
    original = entry.get("original_kib")
    if original is not None and not _valid_kib(original):
        return f"VM {vm[:64]!r}: original_kib is not a KiB count (or null for none)"
    return None
