"""What ``ebbctl`` can ask of ebbd: the status document and the control commands.

:class:`StatusReport` builds the ``ebbctl status --json`` document (also the
source of the metrics' status gauges and of systemd's STATUS=);
:class:`DaemonCommands` is the :class:`~ebb.host.control.DaemonControl` the
control socket is given: the commands and nothing else of the daemon.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from ebb.host.channels import GuestChannelState, YieldHandle, YieldUnavailable
from ebb.host.control import ControlError
from ebb.host.engine import Engine
from ebb.host.reload import LiveConfig, Policies
from ebb.host.yielding import YIELD_RESULT, ManualYields


class StatusChannels(Protocol):
    """The guest channels as status and the commands see them."""

    def snapshot(self) -> dict[str, GuestChannelState]: ...

    def request_yield(self, vm: str, kib: int, deadline_ms: int) -> YieldHandle: ...


class StatusReport:
    """The document of ``ebbctl status --json`` (contracts.md), read from any thread."""

    def __init__(
        self,
        *,
        engine: Engine,
        channels: StatusChannels,
        hypervisor: Any,
        policies: Policies,
        live: LiveConfig,
        version: str,
    ) -> None:
        self._engine = engine
        self._channels = channels
        self._hypervisor = hypervisor
        self._policies = policies
        self._live = live
        self.version = version
        self.started_mono = time.monotonic()

    def document(self) -> dict[str, Any]:
        engine = self._engine
        config = self._live.config
        host = engine.status_host()
        return {
            "daemon": {
                "version": self.version,
                "pid": os.getpid(),
                "uptime_s": round(time.monotonic() - self.started_mono, 3),
                "paused": engine.paused,
                "dry_run": self._live.dry_run,
                "policy": {
                    "dir": str(config.daemon.policy_dir),
                    "loaded_at": self._policies.loaded_at,
                    "errors": list(self._policies.errors),
                    "last_error": engine.last_policy_error,
                },
                "tick": {
                    "count": engine.tick_count,
                    "last_at": engine.last_tick_wall,
                    "last_duration_ms": engine.last_duration_ms,
                    "interval_s": engine.settings.interval_s,
                },
                "libvirt": {
                    "uri": str(self._hypervisor.uri),
                    "connected": bool(self._hypervisor.connected),
                },
                "config": str(config.source) if config.source else None,
            },
            "host": host if host is not None else _empty_host(),
            "vms": engine.status_vms(self._channels.snapshot()),
        }

    def line(self) -> str:
        """One line for systemd's STATUS=."""
        record = self._engine.last_record
        if record is None:
            return "starting"
        return str(record.summary())


class DaemonCommands:
    """The control socket's commands (:class:`~ebb.host.control.DaemonControl`)."""

    def __init__(
        self,
        *,
        engine: Engine,
        channels: StatusChannels,
        status: StatusReport,
        live: LiveConfig,
        metrics_text: Callable[[], str] | None = None,
    ) -> None:
        self._engine = engine
        self._channels = channels
        self._status = status
        self._live = live
        self._metrics_text = metrics_text
        self.manual_yields = ManualYields()
        self._manual_yields_lock = threading.Lock()

    def status(self) -> dict[str, Any]:
        return self._status.document()

    def reload(self) -> dict[str, Any]:
        return self._live.reload()

    def explain(self, vm: str) -> dict[str, Any]:
        engine = self._engine
        if not engine.known_vm(vm):
            raise ControlError(f"ebbd knows no VM named {vm!r} (running VMs: {self._known()})")
        rows = [row for row in engine.status_vms(self._channels.snapshot()) if row["name"] == vm]
        return {
            "vm": vm,
            "status": rows[0] if rows else None,
            "decisions": engine.journal(vm),
            "paused": engine.paused,
            "dry_run": self._live.dry_run,
        }

    def pause(self) -> dict[str, Any]:
        self._engine.pause()
        return {"paused": True}

    def resume(self) -> dict[str, Any]:
        self._engine.resume()
        return {"paused": False}

    def set_floor(self, vm: str, floor_mib: float | None) -> dict[str, Any]:
        if not self._engine.known_vm(vm):
            raise ControlError(f"ebbd knows no VM named {vm!r}")
        floor_kib = None if floor_mib is None else int(floor_mib * 1024)
        self._engine.set_floor(vm, floor_kib)
        return {"vm": vm, "floor_kib": floor_kib,
                "note": "until ebbd restarts; set floor_mib in the VM's <ebb:vm> to keep it"}

    def yield_memory(self, vm: str, kib: int | None, poll: bool) -> dict[str, Any]:
        """``ebbctl yield``: ask VM's agent to yield ``kib`` KiB now, then poll the result.

        The result measures the VM's QEMU RSS before the request and a few seconds
        after the answer; ``error`` says why nothing (or nothing measurable) came back.
        """
        engine = self._engine
        now = time.monotonic()
        with self._manual_yields_lock:
            if poll:
                record = self.manual_yields.get(vm)
                if record is None:
                    raise ControlError(f"no ebbctl yield to VM {vm!r} is in progress")
                was_finished = record.finished
                result = record.poll(now, lambda: engine.measure_rss_kib(vm))
                if record.finished and not was_finished:
                    engine.journal_event(vm, {
                        "kind": YIELD_RESULT, "rule": "ebbctl-yield",
                        "outcome": "nothing" if record.error else "returned",
                        "reason": record.error or (
                            f"ebbctl yield: QEMU RSS fell by {result['returned_kib']} KiB"
                        ),
                        "inputs": {k: result[k] for k in (
                            "asked_kib", "rss_before_kib", "rss_after_kib", "returned_kib",
                            "agent_freed_kib")},
                    })
                return result
            if not engine.known_vm(vm):
                raise ControlError(
                    f"ebbd knows no VM named {vm!r} (running VMs: {self._known()})"
                )
            size = engine.balloon_cur_kib(vm)
            asked = min(int(kib or 0), size) if size else int(kib or 0)
            try:
                record = self.manual_yields.start(
                    vm, asked, now, engine.measure_rss_kib(vm), self._channels.request_yield
                )
            except YieldUnavailable as err:
                raise ControlError(str(err)) from None
            engine.journal_event(vm, {
                "kind": "yield-request", "rule": "ebbctl-yield", "outcome": "sent",
                "reason": f"ebbctl yield asked for {asked} KiB",
                "inputs": {"asked_kib": asked, "rss_kib": record.rss_before_kib},
            })
            return record.result(now)

    def metrics(self) -> str:
        return self._metrics_text() if self._metrics_text is not None else ""

    def _known(self) -> str:
        names = sorted(row["name"] for row in self._engine.status_vms())
        return ", ".join(names) if names else "none"


def _empty_host() -> dict[str, Any]:
    return {
        "mem_total_kib": None, "mem_free_kib": None, "freeable_kib": None,
        "mem_available_kib": None, "swap_total_kib": None, "swap_used_kib": None,
        "swap_in_per_s": None, "swap_out_per_s": None, "psi_some_avg10": None,
        "ksm": {"run": None, "pages_to_scan": None, "sleep_millisecs": None,
                "pages_shared": None, "pages_sharing": None},
    }
