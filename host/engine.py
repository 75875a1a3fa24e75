"""The tick: host and guest state in, policy and governor, controllers out.

Every ``interval_s`` (and at once when a guest reports a need, host pressure
crosses the threshold, or libvirt reports domains coming or going) the engine:

1. reads the host (:class:`~ebb.host.collectors.HostCollector`), the active
   domains (:class:`~ebb.host.hypervisor.Hypervisor`) and every guest's channel
   (:class:`~ebb.host.channels.GuestChannels`);
2. has :class:`~ebb.host.inputs.TickInputs` build the tick's input: the policy
   input (host and guest samples with ``history_len`` of history) and the
   governor's view of each managed guest;
3. plans the tick with :func:`~ebb.host.tick.plan_tick`: the policy, the yield
   stage, the governor. A policy run-time error is logged with its
   file:line:col and the tick goes on with no policy proposals, so only the
   governor's own safety moves (floors, rollbacks) apply;
4. applies the plan (balloon, KSM, memtune for uncooperative guests), unless
   paused, and tells the governor what became of each target (dry run,
   libvirt refused, VM gone), so that it does not judge guests by targets
   they never saw;
5. tells each guest whose target changed (``decision`` message), records the
   decisions in a bounded per-VM journal (``ebbctl explain``) and hands a
   :class:`TickRecord` to the observers (trace, metrics).

Nothing here opens a file or socket itself: every source and actuator is
passed in, so the tests drive the engine with fakes.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ebb.host import status
from ebb.host.channels import GuestChannelState
from ebb.host.collectors import HostSample
from ebb.host.collectors.procfs import freeable_share, parse_meminfo
from ebb.host.controllers.balloon import BalloonResult
from ebb.host.governor import Decision, Governor, GovernorConfig, GuestView
from ebb.host.hypervisor import DomainInfo
from ebb.host.hypervisor.domain_xml import free_page_reporting_warning
from ebb.host.inputs import TickInputs
from ebb.host.journal import BalloonAction, Journal
from ebb.host.kinds import ActionKind, GuestState, Outcome
from ebb.host.policy import PolicyRunner
from ebb.host.pressure import LEVEL_NAMES, HostPressure, PressureThresholds, sample_pressure
from ebb.host.record import TickRecord as TickRecord  # re-exported: observers import it here
from ebb.host.record import decision_dict, json_friendly, shallow_dict
from ebb.host.tick import TickStage, YieldStage, plan_tick
from ebb.host.tick_requests import TickRequests
from ebb.host.units import PAGE_KIB
from ebb.host.yielding import YieldCoordinator

LOG = logging.getLogger(__name__)


# --- what the engine needs from its collaborators ---------------------------------------


class HostSource(Protocol):
    """Reads the host (HostCollector)."""

    def collect(self, vm_assigned_kib: int | None = None) -> HostSample: ...

    def qemu_rss_kib(self, pid: int) -> int | None: ...


class DomainSource(Protocol):
    """The active VMs (Hypervisor)."""

    uri: str

    @property
    def connected(self) -> bool: ...

    def domain_infos(self) -> list[DomainInfo]: ...


class ChannelSource(Protocol):
    """The guests' agent channels (GuestChannels)."""

    def snapshot(self) -> dict[str, GuestChannelState]: ...

    def set_guests(self, paths: Mapping[str, str | None]) -> None: ...

    def send_decision(self, vm: str, balloon_target_kib: int, reason: str) -> None: ...


class BalloonActuator(Protocol):
    dry_run: bool

    def apply(self, vm: str, target_kib: int, reason: str = "") -> BalloonResult: ...

    def last_requested_kib(self, vm: str) -> int | None: ...

    def forget(self, vm: str) -> None: ...


class KsmActuator(Protocol):
    dry_run: bool

    def apply(self, controls: Mapping[str, Any]) -> list[Any]: ...


class MemtuneActuator(Protocol):
    dry_run: bool

    def limited(self) -> dict[str, int]: ...

    def limit(self, vm: str, soft_limit_kib: int, reason: str = "") -> Any: ...

    def release(self, vm: str, reason: str = "") -> Any: ...

    def forget(self, vm: str) -> None: ...


class TickObserver(Protocol):
    """Receives every tick's record; must not raise (the engine catches and logs)."""

    def on_tick(self, record: TickRecord) -> None: ...


# --- settings ----------------------------------------------------------------------------


@dataclass
class EngineSettings:
    """How often and how the engine ticks (built from the config by the app)."""

    interval_s: float = 2.0
    #: Samples kept per host and guest for the policy's StatAvg.
    history_len: int = 10
    #: Share of host memory (MemTotal less hugepages); freeable memory crossing it
    #: triggers a tick at once.
    pressure_threshold_share: float = 0.20
    #: How often host pressure is probed between ticks.
    pressure_check_s: float = 0.5
    #: Immediate ticks come no closer together than this (after any tick), whoever
    #: asks: together with one early tick per guest per ``interval_s``, this bounds
    #: the tick rate a guest (or several) can cause.
    min_tick_gap_s: float = 0.25
    #: Decisions kept per VM for ``ebbctl explain``.
    journal_len: int = 50
    ksm_enabled: bool = True
    memtune_uncooperative: bool = False
    #: Ticks in a row that may fail with an unexpected error before the engine gives up.
    max_failed_ticks: int = 5
    #: Where each host pressure level starts (config ``[pressure]``).
    pressure: PressureThresholds = field(default_factory=PressureThresholds)


@dataclass(frozen=True)
class SettingsUpdate:
    """A reload's new settings for everything that runs on the engine's thread.

    :meth:`Engine.update_settings` stores one; the tick thread swaps all of it in
    at the start of its next tick, so no tick runs half on the old settings and
    half on the new. ``None`` leaves that part as it is.
    """

    engine: EngineSettings
    governor: GovernorConfig | None = None
    #: The balloon controller's smallest change (``[balloon] min_change_kib``).
    balloon_min_change_kib: int | None = None
    dry_run: bool | None = None


# --- per-VM knowledge kept between ticks -----------------------------------------------------


@dataclass
class _VmMemory:
    """What the engine applied to a VM (its samples' history is in :class:`TickInputs`)."""

    last_sent_target_kib: int | None = None
    last_action: dict[str, Any] | None = None


def read_freeable_share(proc_root: Path | str = "/proc") -> float | None:
    """Freeable memory as a share of the host's (as the collector computes it).

    Cheap enough to probe twice a second between ticks; None when unreadable.
    """
    try:
        text = (Path(proc_root) / "meminfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    return freeable_share(parse_meminfo(text))


class Engine:
    """Runs ticks; keeps the state ``ebbctl status`` and ``explain`` read."""

    def __init__(
        self,
        settings: EngineSettings,
        *,
        host: HostSource,
        hypervisor: DomainSource,
        channels: ChannelSource,
        runner: PolicyRunner,
        governor: Governor,
        balloon: BalloonActuator,
        ksm: KsmActuator | None = None,
        memtune: MemtuneActuator | None = None,
        observers: Sequence[TickObserver] = (),
        pressure_probe: Callable[[], float | None] | None = None,
        requests: TickRequests | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        #: Asks for immediate ticks (channels, hypervisor, control); built before the
        #: engine by the composition root, so that they need not know the engine.
        self.requests = requests or TickRequests(settings.interval_s, clock)
        self.requests.set_guest_interval(settings.interval_s)
        self.host = host
        self.hypervisor = hypervisor
        self.channels = channels
        self.runner = runner
        self.governor = governor
        self.balloon = balloon
        self.ksm = ksm
        self.memtune = memtune
        self.observers: list[TickObserver] = list(observers)
        self._pressure_probe = pressure_probe
        self._clock = clock
        self._wall = wall_clock
        self._hostname = socket.gethostname()

        self._settings_lock = threading.Lock()
        self._lock = threading.RLock()  # guards what status/explain read
        self._paused = False
        self._floor_overrides_kib: dict[str, int] = {}
        #: A reload's settings, waiting for the start of the next tick (_settings_lock).
        self._pending_settings: SettingsUpdate | None = None

        self.tick_count = 0
        self.last_tick_wall: float | None = None
        self.last_tick_mono: float | None = None
        self.last_duration_ms: float | None = None
        self.last_record: TickRecord | None = None
        self.last_policy_error: str | None = None
        self._last_host: HostSample | None = None
        self._domains: list[DomainInfo] = []
        self._channel_states: dict[str, GuestChannelState] = {}
        self._views: dict[str, GuestView] = {}
        #: Each managed guest's state as of the last plan (``ebbctl status`` cooperation).
        self._guest_states: dict[str, GuestState] = {}
        self._managed: set[str] = set()
        self._vms: dict[str, _VmMemory] = {}
        self._journal = Journal(settings.journal_len)
        self._channel_paths: dict[str, str | None] | None = None
        self._last_share: float | None = None
        self._failed_ticks = 0
        #: Yield requests the policy asks for (yield_kib) and their RSS follow-up.
        self.yields = YieldCoordinator(channels, settings.interval_s)
        #: Builds each tick's input (host/inputs.py); the stages run between the
        #: policy and the governor (host/tick.py).
        self.inputs = TickInputs(
            lambda: self.governor.config, settings.history_len,
            qemu_rss_kib=lambda pid: self.host.qemu_rss_kib(pid),
            yield_fields=self.yields.guest_fields, host_name=self._hostname,
        )
        self.stages: list[TickStage] = [YieldStage(self.yields)]
        self.last_pressure: HostPressure | None = None
        #: VMs last named in the free page reporting warning (None: not checked yet).
        self._without_fpr: frozenset[str] | None = None
        self._last_tick_started: float | None = None
        self._next_tick_mono: float | None = None

    # --- control (any thread) ------------------------------------------------------------

    def request_tick(self, reason: str) -> None:
        """Tick as soon as possible (a need, pressure, domains changed, a control command)."""
        self.requests.request(reason)

    def update_settings(self, update: SettingsUpdate) -> None:
        """Hand the engine a reload's settings (any thread).

        They take effect at the start of the next tick, on the engine's thread,
        all at once: the engine's, the governor's and the controllers' settings
        never change while a tick reads them. A second update before that tick
        replaces the first.
        """
        with self._settings_lock:
            self._pending_settings = update

    def _swap_settings(self) -> None:
        """Take a pending :class:`SettingsUpdate` (the tick thread, before a tick)."""
        with self._settings_lock:
            update, self._pending_settings = self._pending_settings, None
        if update is None:
            self.requests.set_guest_interval(self.settings.interval_s)
            return
        self.settings = update.engine
        self.requests.set_guest_interval(update.engine.interval_s)
        if update.governor is not None:
            self.governor.config = update.governor
        if update.balloon_min_change_kib is not None and hasattr(self.balloon, "min_change_kib"):
            self.balloon.min_change_kib = update.balloon_min_change_kib
        if update.dry_run is not None:
            self.set_dry_run(update.dry_run)

    def on_need(self, vm: str) -> None:
        """A guest asked for memory (see :meth:`TickRequests.on_need`)."""
        self.requests.on_need(vm)

    def on_domains_changed(self, names: frozenset[str]) -> None:
        """VMs started or stopped."""
        self.requests.on_domains_changed(names)

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        """Keep deciding and logging, but change nothing until :meth:`resume`."""
        with self._lock:
            self._paused = True
        LOG.warning("paused: decisions are logged but not applied", extra={"ACTION": "pause"})

    def resume(self) -> None:
        """Apply decisions again; the guests' progress is judged afresh from now."""
        with self._lock:
            self._paused = False
            # While paused nothing was applied, so a guest that did not move had
            # no reason to: it must not be found stuck or uncooperative at once.
            self.governor.restart_timers()
        LOG.info("resumed", extra={"ACTION": "resume"})
        self.request_tick("resumed")

    def set_floor(self, vm: str, floor_kib: int | None) -> None:
        """Override a VM's floor until ebbd restarts (None removes the override)."""
        with self._lock:
            if floor_kib is None:
                self._floor_overrides_kib.pop(vm, None)
            else:
                self._floor_overrides_kib[vm] = int(floor_kib)
        LOG.info(
            "VM %s: floor %s", vm,
            "override removed" if floor_kib is None else f"set to {floor_kib} KiB",
            extra={"VM": vm, "ACTION": "set-floor"},
        )
        self.request_tick(f"floor of {vm} changed")

    def floor_overrides_kib(self) -> dict[str, int]:
        with self._lock:
            return dict(self._floor_overrides_kib)

    @property
    def dry_run(self) -> bool:
        return bool(self.balloon.dry_run)

    def set_dry_run(self, dry_run: bool) -> None:
        """Switch every controller between applying and simulating.

        Call it before the engine's thread starts; a reload goes through
        :meth:`update_settings`.
        """
        for actuator in (self.balloon, self.ksm, self.memtune):
            if actuator is not None:
                actuator.dry_run = dry_run

    # --- the loop ---------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Tick until ``stop`` is set; every wait ends at once when it is."""
        self._next_tick_mono = self._clock()
        while not stop.is_set():
            if self.tick_if_due():
                continue
            now = self._clock()
            due = self.next_tick_due(now)
            wait_s = min(due - now, self.settings.pressure_check_s)
            if self.requests.pending():
                # An immediate tick was asked for, but the last tick was too recent:
                # wait for the gap (the wake-up stays pending).
                stop.wait(wait_s)
                continue
            if self.requests.wait(max(0.0, wait_s)):
                continue
            if stop.is_set():
                break
            if self._pressure_crossed():
                self.request_tick("host pressure crossed the threshold")

    def tick_if_due(self) -> bool:
        """Run a tick when one is due (see :meth:`next_tick_due`); True if it ran."""
        now = self._clock()
        if self._next_tick_mono is None:
            self._next_tick_mono = now
        if now < self.next_tick_due(now):
            return False
        self.requests.clear()
        self._safe_tick()
        self._next_tick_mono = self._clock() + self.settings.interval_s
        return True

    def next_tick_due(self, now: float) -> float:
        """When the next tick is due (``_clock``): the regular tick, or sooner when an
        immediate one was asked for, but never within ``min_tick_gap_s`` of the last
        tick's start: a burst of requests does not run ticks back to back."""
        due = self._next_tick_mono if self._next_tick_mono is not None else now
        if self.requests.pending():
            earliest = (
                self._last_tick_started + self.settings.min_tick_gap_s
                if self._last_tick_started is not None
                else now
            )
            due = min(due, max(earliest, now))
        return due

    def stop_waiting(self) -> None:
        """Wake the loop (used with the stop event on shutdown)."""
        self.requests.wake()

    def _pressure_crossed(self) -> bool:
        if self._pressure_probe is None:
            return False
        share = self._pressure_probe()
        if share is None:
            return False
        previous, self._last_share = self._last_share, share
        if previous is None:
            return False
        threshold = self.settings.pressure_threshold_share
        return (previous >= threshold) != (share >= threshold)

    def _safe_tick(self) -> None:
        try:
            self.tick()
        except Exception:
            self._failed_ticks += 1
            LOG.exception(
                "tick failed (%d in a row); nothing applied this tick", self._failed_ticks
            )
            if self._failed_ticks >= self.settings.max_failed_ticks:
                raise
        else:
            self._failed_ticks = 0

    # --- one tick ------------------------------------------------------------------------

    def tick(self) -> TickRecord:
        """Run one tick now and return its record."""
        self._swap_settings()
        started = self._clock()
        self._last_tick_started = started
        reasons = self.requests.take_reasons()

        libvirt_up = bool(self.hypervisor.connected)
        if libvirt_up:
            domains = self.hypervisor.domain_infos()
            self._warn_free_page_reporting(domains)
            self._update_channels(domains)
            self._forget_gone({d.name for d in domains})
        else:
            # libvirtd is away (restarting?): keep the guests' channels and what we
            # knew for status, but decide nothing about guests we cannot see.
            domains = list(self._domains)
            reasons.append("libvirt not connected: guests left alone")
        channel_states = self.channels.snapshot()
        assigned_kib = sum(d.max_memory_kib for d in domains)
        host_sample = self.host.collect(vm_assigned_kib=assigned_kib if domains else None)
        self._last_share = host_sample.freeable_share if host_sample.mem_total_kib else None
        self._judge_pressure(host_sample)

        managed = [d for d in domains if _manageable(d)] if libvirt_up else []
        paused = self._paused
        inp = self.inputs.build(started, host_sample, managed, channel_states,
                                self.floor_overrides_kib(), paused=paused)
        plan = plan_tick(inp, self.runner, self.governor, self.stages)
        policy_error = str(plan.policy_error) if plan.policy_error is not None else None
        if policy_error is not None and policy_error != self.last_policy_error:
            LOG.error("policy failed, no policy controls this tick: %s", policy_error)
        elif policy_error is not None:
            LOG.debug("policy failed again: %s", policy_error)
        for line in plan.debug:
            LOG.debug("policy debug: %s", line)
        self.last_policy_error = policy_error
        decisions, controls = plan.decisions, plan.controls
        actions, writes = self._apply(decisions, controls, plan.policy_ok, paused)
        now_wall = self._wall()
        duration_ms = (self._clock() - started) * 1000.0
        self.tick_count += 1
        record = TickRecord(
            ts=now_wall,
            tick=self.tick_count,
            duration_ms=round(duration_ms, 3),
            state={
                "host": {"props": dict(inp.policy.host.props),
                         "samples": list(inp.policy.host.samples)},
                "guests": [{"props": dict(g.props), "samples": list(g.samples)}
                           for g in inp.policy.guests],
            },
            views=[shallow_dict(v) for v in inp.views],
            controls=controls,
            decisions=[decision_dict(d) for d in decisions],
            applied=[a.to_dict() for a in actions] + writes,
            policy_error=policy_error,
            paused=paused,
            dry_run=self.dry_run,
            reasons=reasons,
            mono=started,
            variables=self._policy_variables(),
            yields=[dict(e) for e in plan.events],
        )
        self._journal_decisions(record, decisions, actions)
        self._journal.add_events(record.ts, record.tick, plan.events, record.policy_error)
        with self._lock:
            self._last_host = host_sample
            self._domains = domains
            self._channel_states = channel_states
            self._views = {v.name: v for v in inp.views}
            if not paused:  # while paused the governor judges nobody: states stand
                self._guest_states = {d.vm: d.guest_state for d in decisions}
            self._managed = {d.name for d in managed}
            self.last_record = record
            self.last_tick_wall = now_wall
            self.last_tick_mono = self._clock()
            self.last_duration_ms = record.duration_ms
        for observer in list(self.observers):
            try:
                observer.on_tick(record)
            except Exception:
                LOG.exception("tick observer %r failed", observer)
        return record

    def _warn_free_page_reporting(self, domains: Sequence[DomainInfo]) -> None:
        """Warn once, and again when the set changes, about VMs without free page reporting."""
        without = frozenset(
            d.name for d in domains
            if d.state == "running" and d.settings.enabled and not d.settings.free_page_reporting
        )
        if without == self._without_fpr:
            return
        self._without_fpr = without
        warning = free_page_reporting_warning(without)
        if warning is not None:
            LOG.warning("%s", warning)

    def _update_channels(self, domains: Sequence[DomainInfo]) -> None:
        paths = {d.name: d.settings.channel_path for d in domains}
        if paths != self._channel_paths:
            self._channel_paths = paths
            self.channels.set_guests(paths)

    def _judge_pressure(self, host_sample: HostSample) -> HostPressure:
        """The host's pressure level as a Host field; agents told when it changes."""
        pressure = sample_pressure(host_sample, PAGE_KIB, self.settings.pressure)
        host_sample.fields["pressure_level"] = pressure.level
        host_sample.fields["meminfo_available"] = host_sample.mem_available_kib
        self.last_pressure = pressure
        self.yields.set_pressure(pressure)
        return pressure

    def _forget_gone(self, present: set[str]) -> None:
        self.yields.forget(present)
        self.inputs.keep_only(present)
        for vm in [name for name in self._vms if name not in present]:
            del self._vms[vm]
            self.balloon.forget(vm)
            if self.memtune is not None:
                self.memtune.forget(vm)
        for vm in present:
            if vm not in self._vms:
                self._vms[vm] = _VmMemory()

    def _apply(
        self,
        decisions: Sequence[Decision],
        controls: Mapping[str, Any],
        policy_ok: bool,
        paused: bool,
    ) -> tuple[list[BalloonAction], list[dict[str, Any]]]:
        """Apply the plan: the balloon actions, and the KSM and memtune writes."""
        if paused:
            return [], []
        # Giving memory first: a guest that asked for memory (or is being rolled
        # back) should not wait behind other guests' inflations.
        ordered = sorted(decisions, key=lambda d: not ActionKind(d.kind).gives)
        actions: list[BalloonAction] = []
        for decision in ordered:
            if decision.target_kib is None:
                continue
            result = self.balloon.apply(decision.vm, decision.target_kib, decision.reason)
            action = BalloonAction(result, decision.kind, decision.rule)
            actions.append(action)
            memory = self._vms.get(decision.vm)
            if (
                action.outcome == Outcome.APPLIED
                and memory is not None
                and memory.last_sent_target_kib != decision.target_kib
            ):
                memory.last_sent_target_kib = decision.target_kib
                self.channels.send_decision(decision.vm, decision.target_kib, decision.reason)
        # The governor judges guests only by targets that reached them: a dry run
        # would otherwise find every guest stuck, then uncooperative.
        self.governor.commit({a.vm: a.outcome for a in actions})
        writes: list[dict[str, Any]] = []
        if self.ksm is not None and self.settings.ksm_enabled and policy_ok:
            host_controls = controls.get("host") or {}
            if host_controls:
                for write in self.ksm.apply(host_controls):
                    entry = write.to_dict() if hasattr(write, "to_dict") else dict(write)
                    entry["controller"] = "ksm"
                    writes.append(entry)
        if self.memtune is not None and self.settings.memtune_uncooperative:
            writes.extend(self._apply_memtune(decisions))
        return actions, writes

    def _apply_memtune(self, decisions: Sequence[Decision]) -> list[dict[str, Any]]:
        assert self.memtune is not None
        results: list[dict[str, Any]] = []
        limited = self.memtune.limited()
        for decision in decisions:
            vm = decision.vm
            result = None
            if decision.guest_state == GuestState.UNCOOPERATIVE:
                target = self.balloon.last_requested_kib(vm)
                if target is not None:
                    result = self.memtune.limit(
                        vm, target, f"uncooperative: balloon target {target} KiB not reached"
                    )
            elif vm in limited:
                result = self.memtune.release(vm, "cooperating again")
            if result is not None:
                entry = result.to_dict() if hasattr(result, "to_dict") else dict(result)
                entry["controller"] = "memtune"
                results.append(entry)
        return results

    # --- journal -------------------------------------------------------------------------

    def _policy_variables(self) -> dict[str, Any] | None:
        """The runner's kept SetVar values for the trace (None when it keeps none)."""
        variables = getattr(self.runner, "variables", None)
        if not callable(variables):
            return None
        try:
            kept = json_friendly(variables())
        except Exception:  # the trace must not cost a tick
            LOG.exception("cannot read the policy's variables for the tick record")
            return None
        return kept if isinstance(kept, dict) else None

    def _journal_decisions(
        self, record: TickRecord, decisions: Sequence[Decision], actions: Sequence[BalloonAction]
    ) -> None:
        by_vm = {a.vm: a for a in actions}
        self._journal.add_decisions(record.ts, record.tick, decisions, by_vm,
                                    paused=record.paused, policy_error=record.policy_error)
        with self._lock:
            for decision in decisions:
                action = by_vm.get(decision.vm)
                memory = self._vms.get(decision.vm)
                if memory is not None and action is not None and action.outcome.changed:
                    memory.last_action = {
                        "at": record.ts,
                        "kind": decision.kind,
                        "target_kib": decision.target_kib,
                        "rule": decision.rule,
                        "reason": decision.reason,
                    }

    def journal_event(self, vm: str, event: Mapping[str, Any]) -> None:
        """Add a yield request or result made outside a tick (``ebbctl yield``)."""
        record = self.last_record
        self._journal.add_events(self._wall(), record.tick if record else 0,
                                 [{**event, "vm": vm}])

    def measure_rss_kib(self, vm: str) -> int | None:
        """The VM's QEMU RSS now (the QEMU process, else libvirt's memory stats)."""
        with self._lock:
            info = next((d for d in self._domains if d.name == vm), None)
        if info is not None and info.qemu_pid:
            rss = self.host.qemu_rss_kib(info.qemu_pid)
            if rss is not None:
                return int(rss)
        domain_info = getattr(self.hypervisor, "domain_info", None)
        try:
            fresh = domain_info(vm) if domain_info is not None else None
        except Exception as err:  # libvirt away, VM gone: no measurement
            LOG.debug("cannot read the memory stats of VM %s: %s", vm, err)
            return None
        rss = fresh.memory_stats.get("rss") if fresh is not None else None
        return int(rss) if rss is not None else None

    def balloon_cur_kib(self, vm: str) -> int | None:
        """The VM's memory as of the last tick (its balloon), None when unknown."""
        with self._lock:
            info = next((d for d in self._domains if d.name == vm), None)
        if info is None:
            return None
        return int(info.balloon_cur_kib or info.max_memory_kib)

    def journal(self, vm: str) -> list[dict[str, Any]]:
        """The recent decisions for ``vm``, oldest first (copies)."""
        return self._journal.entries(vm)

    def known_vm(self, vm: str) -> bool:
        if self._journal.knows(vm):
            return True
        with self._lock:
            return any(d.name == vm for d in self._domains)

    # --- status ---------------------------------------------------------------------------

    def status_host(self) -> dict[str, Any] | None:
        """The ``host`` object of ``ebbctl status --json`` (None before the first tick)."""
        with self._lock:
            if self._last_host is None:
                return None
            host = self._last_host.status_dict()
            if self.last_pressure is not None:
                host["pressure_level"] = self.last_pressure.level
                host["pressure"] = LEVEL_NAMES[self.last_pressure.level]
                host["pressure_reason"] = self.last_pressure.reason
            return host

    def status_vms(self, live_channels: Mapping[str, GuestChannelState] | None = None) -> list[
        dict[str, Any]
    ]:
        """The ``vms`` list of ``ebbctl status --json``, as of the last tick.

        ``live_channels`` (a fresh channel snapshot) makes agent ages current.
        """
        now_mono = self._clock()
        with self._lock:
            channels = dict(self._channel_states)
            if live_channels is not None:
                channels.update(live_channels)
            rows = []
            for info in self._domains:
                channel = channels.get(info.name)
                view = self._views.get(info.name)
                memory = self._vms.get(info.name)
                rows.append(
                    self._status_row(info, channel, view, memory, now_mono)
                )
            return rows

    def _status_row(
        self,
        info: DomainInfo,
        channel: GuestChannelState | None,
        view: GuestView | None,
        memory: _VmMemory | None,
        now_mono: float,
    ) -> dict[str, Any]:
        override = self._floor_overrides_kib.get(info.name)
        if view is not None:
            floor: int | None = view.floor_kib  # the floor enforced (inputs.floor_kib)
        else:
            floor = override if override is not None else info.settings.floor_kib
        return status.vm_row(
            info, channel, now_mono,
            managed=info.name in self._managed,
            floor_kib=floor,
            floor_override_kib=override,
            balloon_target_kib=self.balloon.last_requested_kib(info.name),
            guest_state=self._guest_states.get(info.name, GuestState.OK),
            last_action=memory.last_action if memory else None,
            latest_sample=self.inputs.latest_sample(info.name),
            yield_status=self.yields.status(info.name),
        )

def _manageable(info: DomainInfo) -> bool:
    """A VM ebb may balloon: running, with a balloon, not excluded in its XML."""
    settings = info.settings
    return bool(info.state == "running" and settings.enabled and settings.has_balloon)


