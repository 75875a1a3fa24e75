"""Drive KSM through sysfs, and always give the host its own settings back.

Only the knobs a policy may control are written (``run``, ``pages_to_scan``,
``sleep_millisecs``, ``merge_across_nodes``), and only when the value differs
from what the file holds now. Before the first write the original values are
saved (atomically) to ``RUN_DIR/ksm-original.json``; :meth:`KsmController.restore`
writes them back on a clean stop and removes the file. If ebbd died without
restoring, the file is still there on the next :meth:`KsmController.start`, which
restores it first, as TuneD does with its own saved state. The saved values pass
the same range checks as a policy's before they are written back, and the file
is read only from a run directory that nobody but root or ebbd can write
(:mod:`ebb.host.rundir`).
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ebb.host.rundir import RunDirError, read_state, remove_state, write_state

LOG = logging.getLogger(__name__)

#: Policy control name -> sysfs file under /sys/kernel/mm/ksm.
CONTROL_FILES = {
    "ksm_run": "run",
    "ksm_pages_to_scan": "pages_to_scan",
    "ksm_sleep_millisecs": "sleep_millisecs",
    "ksm_merge_across_nodes": "merge_across_nodes",
}
#: Write order: merge_across_nodes can only change while nothing is merged, so it is
#: written before run is (re)started; run last so a new rate is in place when it starts.
_WRITE_ORDER = ("merge_across_nodes", "pages_to_scan", "sleep_millisecs", "run")
_LIMITS = {
    "run": (0, 2),
    "merge_across_nodes": (0, 1),
    "pages_to_scan": (0, 100_000),
    "sleep_millisecs": (0, 60_000),
}
SAVED_FILE_NAME = "ksm-original.json"
_EBUSY_TEXT = "merge_across_nodes can only change while no pages are merged"


@dataclass(frozen=True)
class KsmWrite:
    """One knob the controller wrote (or would have, in a dry run, or failed to)."""

    knob: str
    before: int | None
    value: int
    outcome: str  # "applied" | "dry-run" | "failed" | "rejected"
    at: float
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for the tick record and the journal."""
        return asdict(self)


class KsmController:
    """Writes changed KSM knobs; saves and restores the host's original values."""

    def __init__(
        self,
        sys_root: Path | str = "/sys",
        run_dir: Path | str = "/run/ebb",
        dry_run: bool = False,
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.ksm_dir = Path(sys_root) / "kernel" / "mm" / "ksm"
        self.saved_path = Path(run_dir) / SAVED_FILE_NAME
        self.dry_run = dry_run
        self._wall_clock = wall_clock
        self._saved = False
        self._failed: set[tuple[str, int]] = set()

    @property
    def available(self) -> bool:
        """Whether this kernel has KSM (``/sys/kernel/mm/ksm/run`` exists)."""
        return (self.ksm_dir / "run").exists()

    def start(self) -> bool:
        """Restore values left by a previous run that did not stop cleanly.

        Returns True when something was restored. Call once, before the first tick.
        """
        if not os.path.lexists(self.saved_path):
            return False
        LOG.warning("found %s from a previous run that did not stop cleanly: "
                    "restoring the host's original KSM settings", self.saved_path)
        self._saved = True
        return self.restore()

    def read(self) -> dict[str, int]:
        """The current values of the controllable knobs that exist."""
        values: dict[str, int] = {}
        for knob in CONTROL_FILES.values():
            value = self._read(knob)
            if value is not None:
                values[knob] = value
        return values

    def apply(self, controls: Mapping[str, Any]) -> list[KsmWrite]:
        """Write the knobs among ``controls`` whose value differs from sysfs.

        ``controls`` uses the policy's names (``ksm_run``, ``ksm_pages_to_scan``,
        ``ksm_sleep_millisecs``, ``ksm_merge_across_nodes``); other keys and ``None``
        values are ignored. Returns one :class:`KsmWrite` per knob that needed a change.
        """
        wanted: dict[str, int] = {}
        results: list[KsmWrite] = []
        for control, knob in CONTROL_FILES.items():
            value = controls.get(control)
            if value is None:
                continue
            problem = _check_value(knob, value)
            if problem:
                results.append(KsmWrite(knob, None, _as_int_or_zero(value), "rejected",
                                        self._wall_clock(), problem))
                LOG.warning("KSM: not writing %s: %s", knob, problem)
                continue
            wanted[knob] = int(value)
        if not wanted:
            return results
        if not self.available:
            return results
        current = self.read()
        changes = [(knob, wanted[knob]) for knob in _WRITE_ORDER
                   if knob in wanted and knob in current and current[knob] != wanted[knob]]
        if not changes:
            return results
        if self.dry_run:
            for knob, value in changes:
                LOG.info("KSM: dry run: would set %s %d -> %d", knob, current[knob], value,
                         extra={"ACTION": "ksm"})
                results.append(KsmWrite(knob, current[knob], value, "dry-run",
                                        self._wall_clock(), "dry run: not applied"))
            return results
        if not self._saved:
            self._save_originals(current)
        for knob, value in changes:
            results.append(self._write(knob, current[knob], value))
        return results

    def restore(self) -> bool:
        """Write the saved original values back (only those that differ); remove the file.

        Returns True when the originals were restored. Safe to call when nothing was saved.
        """
        try:
            saved = read_state(self.saved_path)
        except RunDirError as err:
            # Not ebbd's file (or not in ebbd's directory): neither trusted nor removed.
            LOG.error("not restoring KSM settings: %s", err)
            self._saved = False
            return False
        except (OSError, ValueError, UnicodeDecodeError) as err:
            LOG.error("cannot read saved KSM settings %s: %s; leaving KSM as it is and "
                      "removing the file", self.saved_path, err)
            self._remove_saved()
            return False
        if saved is None:
            self._saved = False
            return False
        originals = self._valid_originals(saved)
        if self.dry_run:
            # Keep the file: a later real run must still find the true originals.
            LOG.info("KSM: dry run: would restore %s from %s",
                     ", ".join(f"{k}={v}" for k, v in sorted(originals.items())),
                     self.saved_path)
            return False
        ok = True
        current = self.read()
        for knob in _WRITE_ORDER:
            value = originals.get(knob)
            if value is None or knob not in current:
                continue
            if current[knob] == value:
                continue
            result = self._write(knob, current[knob], value)
            if (result.outcome != "applied" and knob == "merge_across_nodes"
                    and result.detail.startswith(_EBUSY_TEXT)):
                # Merged pages pin merge_across_nodes: unmerge everything (run=2),
                # then the original run value is written last, as always.
                self._write("run", current.get("run"), 2)
                result = self._write(knob, current[knob], value)
            ok = result.outcome == "applied" and ok
        if ok:
            LOG.info("KSM: original settings restored (%s)",
                     ", ".join(f"{k}={v}" for k, v in sorted(originals.items())))
            self._remove_saved()
        return ok

    # --- internals --------------------------------------------------------------

    def _valid_originals(self, saved: Any) -> dict[str, int]:
        """The saved values that pass the checks every write passes; the rest logged, skipped.

        The file is ebbd's own, but what it holds goes to sysfs at the next start
        with nobody watching: it gets no more trust than a policy's value.
        """
        values = saved.get("values") if isinstance(saved, dict) else None
        if not isinstance(values, dict):
            LOG.error("saved KSM settings %s hold no \"values\" table; nothing to restore",
                      self.saved_path)
            return {}
        originals: dict[str, int] = {}
        for knob, value in values.items():
            if knob not in _LIMITS:
                LOG.error("saved KSM settings %s: unknown knob %r skipped",
                          self.saved_path, str(knob)[:64])
                continue
            problem = _check_value(knob, value)
            if problem:
                LOG.error("saved KSM settings %s: %s not restored: %s",
                          self.saved_path, knob, problem[:200])
                continue
            originals[knob] = int(value)
        return originals

    def _read(self, knob: str) -> int | None:
        try:
            return int((self.ksm_dir / knob).read_text(encoding="ascii").strip())
        except (OSError, ValueError):
            return None

    def _write(self, knob: str, before: int | None, value: int) -> KsmWrite:
        path = self.ksm_dir / knob
        try:
            self._write_file(path, f"{value}\n")
        except OSError as err:
            detail = err.strerror or str(err)
            if knob == "merge_across_nodes" and err.errno == errno.EBUSY:
                detail = f"{_EBUSY_TEXT} ({detail}): set ksm_run to 2 first"
            # A policy asking for the same impossible value every tick is one problem.
            level = logging.DEBUG if (knob, value) in self._failed else logging.WARNING
            self._failed.add((knob, value))
            LOG.log(level, "KSM: cannot write %d to %s: %s", value, path, detail)
            return KsmWrite(knob, before, value, "failed", self._wall_clock(), detail)
        self._failed.discard((knob, value))
        LOG.info("KSM: %s %s -> %d", knob, before, value, extra={"ACTION": "ksm"})
        return KsmWrite(knob, before, value, "applied", self._wall_clock())

    def _write_file(self, path: Path, text: str) -> None:
        """The one place that writes sysfs (tests subclass it to act like the kernel)."""
        with open(path, "w", encoding="ascii") as handle:
            handle.write(text)

    def _save_originals(self, current: Mapping[str, int]) -> None:
        payload = {"saved_at": self._wall_clock(), "ksm_dir": str(self.ksm_dir),
                   "values": dict(current)}
        write_state(self.saved_path, payload)
        self._saved = True
        LOG.info("KSM: saved the host's original settings to %s", self.saved_path)

    def _remove_saved(self) -> None:
        remove_state(self.saved_path)
        self._saved = False


def _check_value(knob: str, value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{_short_repr(value)} is not a number"
    if isinstance(value, float) and not value.is_integer():
        return f"{value!r} is not a whole number"
    low, high = _LIMITS[knob]
    if not low <= value <= high:  # compared before any int(): no huge-integer conversion
        return f"{_short_repr(value)} is outside {low}..{high}"
    return None


def _short_repr(value: Any) -> str:
    """``repr(value)`` cut to a log-friendly length (an integer of any size included)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    try:
        text = repr(value)
    except Exception:  # a value whose repr fails is still only a bad value
        text = f"a {type(value).__name__}"
    return text if len(text) <= 80 else text[:77] + "..."


def _as_int_or_zero(value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        return 0
    # A refused value is recorded in the journal and the trace: keep it printable.
    return number if number.bit_length() <= 63 else 0
