"""The composition root: ebbd built from one validated config, started and stopped.

:func:`build_daemon` makes every component from an :class:`EbbdConfig` and
passes dependencies in (TuneD-style); nothing else in ebbd reads the config.
:class:`Daemon` owns their life cycle:

- ``start``: restore KSM settings left by a crash, connect libvirt, start the
  guest channels, the engine and the control socket, tell systemd READY=1
  after the first tick;
- ``run_forever``: the main thread waits for signals: SIGTERM/SIGINT stop
  within a second (every wait in every thread is interruptible), SIGHUP
  reloads the config and policies (a bad policy keeps the last good one);
  STATUS= and WATCHDOG=1 go to systemd while the engine keeps ticking;
- ``stop``: the engine and channels stop, memtune limits are removed, KSM
  gets its original settings back. Balloons stay where they are: a guest keeps
  the memory it has, and the next ebbd (or an administrator) takes it from
  there (docs/ebbd.md "What happens when ebbd stops").

A thread that dies (engine, channels, control socket) is logged and stops
the daemon with exit status 1, so systemd restarts it rather than leaving a
daemon half alive.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from ebb.host.channels import ChannelLimits, GuestChannels, YieldUnavailable
from ebb.host.collectors import HostCollector
from ebb.host.config import ConfigError, EbbdConfig, load_config
from ebb.host.control import Authorizer, ControlError, ControlServer, ControlService
from ebb.host.controllers import BalloonController, KsmController, MemtuneController
from ebb.host.engine import (
    Engine,
    EngineSettings,
    SettingsUpdate,
    TickRecord,
    read_freeable_share,
)
from ebb.host.governor import Governor, GovernorConfig
from ebb.host.hypervisor import Hypervisor
from ebb.host.hypervisor.connection import domain_matches
from ebb.host.logsetup import set_level
from ebb.host.notify import SystemdNotifier
from ebb.host.policy import PolicyRunner, PolicyStartError
from ebb.host.pressure import pressure_thresholds
from ebb.host.rundir import prepare_run_dir
from ebb.host.threads import Waker, start_thread
from ebb.host.units import PAGE_KIB
from ebb.host.yielding import YIELD_RESULT, ManualYields

LOG = logging.getLogger(__name__)

#: Exit statuses of ebbd.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

#: How long ``start`` waits for libvirt and for the first tick before going on.
STARTUP_WAIT_S = 5.0


def daemon_version() -> str:
    try:
        from importlib.metadata import version

        return version("ebb")
    except Exception:
        return "0+unknown"


def governor_config(config: EbbdConfig) -> GovernorConfig:
    """``[governor]`` and ``[balloon]`` as the governor's own config."""
    section = config.governor
    return GovernorConfig(
        default_floor_kib=section.default_floor_mib * 1024,
        min_floor_kib=min(GovernorConfig.min_floor_kib, section.default_floor_mib * 1024),
        max_inflate_share=section.max_change_share,
        take_offers_at_once=section.take_offers_at_once,
        max_deflate_share=max(section.max_change_share, section.max_deflate_share),
        min_change_kib=config.balloon.min_change_kib,
        stall_psi_some_avg10=section.stall_psi_some_avg10,
        stall_major_fault_rate=section.stall_major_faults_per_s,
        stall_swap_in_rate_kib=section.stall_swap_in_per_s * PAGE_KIB,
        rollback_window_s=section.rollback_window_s,
        rollback_psi_rise=section.rollback_psi_some_avg10,
        rollback_major_fault_rise=section.rollback_major_faults_per_s,
        rollback_swap_in_rise_kib=section.rollback_swap_in_per_s * PAGE_KIB,
        backoff_initial_s=section.backoff_initial_s,
        backoff_growth=section.backoff_growth,
        backoff_max_s=max(section.backoff_max_s, section.backoff_initial_s),
        backoff_reset_s=section.backoff_reset_s,
        stuck_after_s=section.stuck_after_s,
        uncooperative_after_s=max(section.uncooperative_after_s, section.stuck_after_s),
        uncooperative_retry_s=section.uncooperative_retry_s,
        step_interval_s=config.daemon.policy_interval_s,
        host_reserve_share=section.host_reserve_share,
    )


def channel_limits(config: EbbdConfig) -> ChannelLimits:
    """``[guests]`` as the channels' limits."""
    guests = config.guests
    return ChannelLimits(
        report_interval_ms=guests.report_interval_ms,
        heartbeat_interval_s=guests.heartbeat_interval_s,
        stale_after_s=guests.stale_after_s,
        max_frames_per_s=guests.flood_max_frames_per_s,
        max_bytes_per_s=guests.flood_max_bytes_per_s,
        cut_off_backoff_s=guests.cut_off_backoff_s,
        cut_off_backoff_max_s=max(guests.cut_off_backoff_max_s, guests.cut_off_backoff_s),
        connect_retry_s=guests.connect_retry_s,
    )


def engine_settings(config: EbbdConfig) -> EngineSettings:
    return EngineSettings(
        interval_s=config.daemon.policy_interval_s,
        pressure_threshold_share=config.host.pressure_tick_threshold,
        ksm_enabled=config.ksm.enabled,
        memtune_uncooperative=config.memtune.soft_limit_uncooperative,
        pressure=pressure_thresholds(config.pressure),
    )


@dataclass
class Components:
    """Everything ebbd is made of (built by :func:`build_daemon`, replaceable in tests)."""

    hypervisor: Any
    host: Any
    channels: Any
    runner: PolicyRunner
    governor: Governor
    balloon: Any
    ksm: Any | None
    memtune: Any | None
    observability: Any | None = None
    extra_observers: list[Any] = field(default_factory=list)


class Daemon:
    """ebbd: components, threads, signals, control commands."""

    def __init__(
        self,
        config: EbbdConfig,
        components: Components,
        *,
        config_path: Path | str | None = None,
        dry_run_forced: bool = False,
        notifier: SystemdNotifier | None = None,
        authorizer: Authorizer | None = None,
        control_socket: bool = True,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.c = components
        self.dry_run_forced = dry_run_forced
        self.notifier = notifier or SystemdNotifier()
        self.version = daemon_version()
        self.started_wall = time.time()
        self.started_mono = time.monotonic()
        self.stop_event = threading.Event()
        self._main_wake = Waker()
        self._reload_requested = False
        self._stop_signalled = False
        self._reload_lock = threading.Lock()
        self.crash: BaseException | None = None
        self.policy_errors: list[str] = []
        self.policy_loaded_at: float | None = None
        self.engine = Engine(
            engine_settings(config),
            host=components.host,
            hypervisor=components.hypervisor,
            channels=components.channels,
            runner=components.runner,
            governor=components.governor,
            balloon=components.balloon,
            ksm=components.ksm,
            memtune=components.memtune,
            observers=list(components.extra_observers),
            pressure_probe=lambda: read_freeable_share(config.host.proc_root),
        )
        self.engine.set_dry_run(self.dry_run)
        if components.observability is not None:
            self.engine.observers.extend(components.observability.observers)
        self._engine_thread: threading.Thread | None = None
        self._started = False
        self._manual_yields = ManualYields()
        self._manual_yields_lock = threading.Lock()
        self.control: ControlServer | None = None
        if control_socket:
            self.control = ControlServer(
                str(config.daemon.control_socket),
                ControlService(self, authorizer or Authorizer()),
            )

    # --- properties ------------------------------------------------------------------

    @property
    def dry_run(self) -> bool:
        return self.dry_run_forced or self.config.daemon.dry_run

    # --- policy -----------------------------------------------------------------------

    def load_policies(self) -> list[str]:
        """(Re)load the policy directory; the errors as ``PATH:LINE:COL: message``."""
        directory = self.config.daemon.policy_dir
        errors = [str(e) for e in self.c.runner.reload(directory)]
        self.policy_errors = errors
        if not errors:
            self.policy_loaded_at = time.time()
        elif self.c.runner.program is None:
            LOG.error(
                "no policy is loaded (%s): only the governor's safety rules apply until "
                "the policy is fixed and ebbd reloaded (systemctl reload ebbd)",
                directory,
            )
        return errors

    # --- life cycle -------------------------------------------------------------------

    def start(self) -> None:
        """Start every thread; returns after the first tick (or STARTUP_WAIT_S)."""
        if self.dry_run:
            LOG.warning("dry run: decisions are logged, nothing is applied")
        # Before anything is read from it or written to it: refused when someone
        # other than root or ebbd could have planted the state it holds.
        prepare_run_dir(self.config.daemon.run_dir)
        if self.control is not None:
            # First, so that a second ebbd stops here, before touching the host
            # state (saved KSM values) that belongs to the first one.
            self.control.bind()
        self._started = True
        if self.load_policies() and self.c.runner.program is None:
            # Before the host is touched: a daemon without any policy would run
            # on the governor's safety rules alone, which nobody asked for.
            raise PolicyStartError(self.policy_errors)
        if self.c.ksm is not None and not self.dry_run:
            self.c.ksm.start()
        self.c.hypervisor.start(on_crash=self._thread_died)
        deadline = time.monotonic() + STARTUP_WAIT_S
        # Short waits, so that SIGTERM during startup still stops within a second.
        while not self.c.hypervisor.wait_connected(0.1):
            if self.stop_event.is_set() or time.monotonic() >= deadline:
                LOG.warning("libvirt at %s not reachable yet; retrying in the background",
                            self.c.hypervisor.uri)
                break
        if self.c.memtune is not None and not self.dry_run:
            self.c.memtune.start()  # limits a crashed run left on the VMs come off
        self.c.channels.start(on_crash=self._thread_died)
        if self.control is not None:
            self.control.start(on_crash=self._thread_died)
        if self.c.observability is not None:
            self.c.observability.start(on_crash=self._thread_died)
        self._engine_thread = start_thread(
            "ebbd-engine", lambda: self.engine.run(self.stop_event), LOG, "engine",
            self._thread_died,
        )
        deadline = time.monotonic() + STARTUP_WAIT_S
        while self.engine.tick_count == 0 and not self.stop_event.is_set():
            if time.monotonic() >= deadline:
                break
            self.stop_event.wait(0.02)
        self.notifier.ready(self.status_line())
        LOG.info("ebbd %s started (pid %d)", self.version, os.getpid())

    def _thread_died(self, err: BaseException) -> None:
        if self.crash is None:
            self.crash = err
        self.request_stop()

    def request_stop(self) -> None:
        """Ask every loop to end (signal handlers, control, crashes)."""
        self.stop_event.set()
        self.engine.stop_waiting()
        self._main_wake.wake()

    def request_reload(self) -> None:
        self._reload_requested = True
        self._main_wake.wake()

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop, SIGHUP reloads (main thread only).

        The handlers only set a flag and wake the main loop, which does the work: a
        handler that set an Event or logged could need a lock the interrupted main
        thread holds (see :class:`Waker`).
        """

        def on_stop(signum: int, frame: FrameType | None) -> None:
            self._stop_signalled = True
            self._main_wake.wake()

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, lambda *_: self.request_reload())

    def run_forever(self) -> int:
        """Main thread loop until stopped; returns the exit status."""
        watchdog_s = self.notifier.watchdog_interval_s
        last_reported_tick = -1
        while not self.stop_event.is_set():
            self._main_wake.wait(min(watchdog_s or 1.0, 1.0))
            if self._stop_signalled:
                LOG.info("asked to stop by a signal")
                break
            if self.stop_event.is_set():
                break
            if self._reload_requested:
                self._reload_requested = False
                self.reload()
            if self.engine.tick_count != last_reported_tick:
                last_reported_tick = self.engine.tick_count
                self.notifier.status(self.status_line())
            if self._engine_healthy():
                self.notifier.watchdog()
        self.stop()
        return EXIT_FAILURE if self.crash is not None else EXIT_OK

    def _engine_healthy(self) -> bool:
        """True when the engine ticked recently (so the watchdog means something)."""
        last = self.engine.last_tick_mono
        if last is None:
            return True
        allowed = max(3 * self.engine.settings.interval_s, 10.0)
        return bool(time.monotonic() - last <= allowed)

    def stop(self) -> None:
        """Stop everything; restore KSM and memtune; balloons stay as they are."""
        self.notifier.stopping()
        self.request_stop()
        if not self._started:
            return  # nothing of ours to put back
        if self._engine_thread is not None:
            self._engine_thread.join(timeout=2.0)
        if self.control is not None:
            self.control.stop()
        self.c.channels.stop()
        if self.c.memtune is not None:
            self.c.memtune.release_all()
        if self.c.ksm is not None:
            self.c.ksm.restore()
        if self.c.observability is not None:
            self.c.observability.stop()
        self.c.hypervisor.stop()
        LOG.info("ebbd stopped%s", " after a thread died" if self.crash else "")

    # --- once ---------------------------------------------------------------------------

    def run_once(self) -> TickRecord:
        """One tick without the background threads (``ebbd --once``)."""
        self._started = True
        self.load_policies()
        if self.c.ksm is not None and not self.dry_run:
            self.c.ksm.start()  # a crashed run's saved originals come first
        self.c.hypervisor.connect_now()
        try:
            return self.engine.tick()
        finally:
            self.c.hypervisor.stop()
            self.c.channels.close()

    # --- reload ------------------------------------------------------------------------

    def reload(self) -> dict[str, Any]:
        """Re-read the config and the policies; keep what is good (SIGHUP, ebbctl reload)."""
        with self._reload_lock:
            self.notifier.reloading()
            try:
                return self._reload()
            finally:
                self.notifier.reloaded()

    def _reload(self) -> dict[str, Any]:
        result: dict[str, Any] = {"config": "unchanged", "restart_needed": []}
        try:
            new = load_config(self.config_path)
        except ConfigError as err:
            LOG.error("reload: %s; keeping the running configuration", err)
            result["config"] = f"error: {err}"
            new = self.config
        if new is not self.config:
            result["restart_needed"] = _restart_needed(self.config, new)
            for key in result["restart_needed"]:
                LOG.warning("reload: %s changed; it takes effect when ebbd restarts", key)
            self.config = new
            self._apply_live_config(new)
            result["config"] = "reloaded"
        errors = self.load_policies()
        result["policy_errors"] = errors
        result["policy"] = "error, kept the last good policy" if errors else "reloaded"
        LOG.info("reloaded: config %s, policy %s", result["config"], result["policy"])
        self.engine.request_tick("reloaded")
        return result

    def _apply_live_config(self, config: EbbdConfig) -> None:
        """Hand each component its new settings; each applies them on its own thread.

        The engine takes its settings, the governor's and the balloon controller's
        at the start of its next tick (all at once); the channel thread swaps its
        whole ``ChannelLimits`` and welcomes the agents again when the report
        interval changed. Nothing here writes a field another thread reads.
        """
        try:
            set_level(config.daemon.log_level)
        except ValueError as err:
            LOG.error("reload: %s", err)
        try:
            governor: GovernorConfig | None = governor_config(config)
        except ValueError as err:
            LOG.error("reload: governor: %s; keeping the previous limits", err)
            governor = None
        self.engine.update_settings(SettingsUpdate(
            engine=engine_settings(config),
            governor=governor,
            balloon_min_change_kib=config.balloon.min_change_kib,
            dry_run=self.dry_run,
        ))
        self.c.channels.update_limits(channel_limits(config))
        self._apply_domain_scope(config.hypervisor.domains)

    def _apply_domain_scope(self, patterns: tuple[str, ...]) -> None:
        """``[hypervisor] domains`` changed: hand VMs leaving the scope back as they are."""
        set_patterns = getattr(self.c.hypervisor, "set_domain_patterns", None)
        if set_patterns is None:
            return
        if self.c.memtune is not None:
            # The engine forgets a VM it no longer sees as if it had stopped; this
            # one still runs, so the soft limit ebbd put on it must come off.
            for vm in list(self.c.memtune.limited()):
                if not domain_matches(vm, patterns):
                    self.c.memtune.release(vm, "no longer in hypervisor.domains")
        set_patterns(patterns)

    # --- control commands (DaemonControl) ------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The document of ``ebbctl status --json`` (contracts.md)."""
        engine = self.engine
        host = engine.status_host()
        return {
            "daemon": {
                "version": self.version,
                "pid": os.getpid(),
                "uptime_s": round(time.monotonic() - self.started_mono, 3),
                "paused": engine.paused,
                "dry_run": self.dry_run,
                "policy": {
                    "dir": str(self.config.daemon.policy_dir),
                    "loaded_at": self.policy_loaded_at,
                    "errors": list(self.policy_errors),
                    "last_error": engine.last_policy_error,
                },
                "tick": {
                    "count": engine.tick_count,
                    "last_at": engine.last_tick_wall,
                    "last_duration_ms": engine.last_duration_ms,
                    "interval_s": engine.settings.interval_s,
                },
                "libvirt": {
                    "uri": str(self.c.hypervisor.uri),
                    "connected": bool(self.c.hypervisor.connected),
                },
                "config": str(self.config.source) if self.config.source else None,
            },
            "host": host if host is not None else _empty_host(),
            "vms": engine.status_vms(self.c.channels.snapshot()),
        }

    def explain(self, vm: str) -> dict[str, Any]:
        engine = self.engine
        if not engine.known_vm(vm):
            names = sorted(row["name"] for row in engine.status_vms())
            known = ", ".join(names) if names else "none"
            raise ControlError(f"ebbd knows no VM named {vm!r} (running VMs: {known})")
        rows = [row for row in engine.status_vms(self.c.channels.snapshot()) if row["name"] == vm]
        return {
            "vm": vm,
            "status": rows[0] if rows else None,
            "decisions": engine.journal(vm),
            "paused": engine.paused,
            "dry_run": self.dry_run,
        }

    def pause(self) -> dict[str, Any]:
        self.engine.pause()
        return {"paused": True}

    def resume(self) -> dict[str, Any]:
        self.engine.resume()
        return {"paused": False}

    def set_floor(self, vm: str, floor_mib: float | None) -> dict[str, Any]:
        if not self.engine.known_vm(vm):
            raise ControlError(f"ebbd knows no VM named {vm!r}")
        floor_kib = None if floor_mib is None else int(floor_mib * 1024)
        self.engine.set_floor(vm, floor_kib)
        return {"vm": vm, "floor_kib": floor_kib,
                "note": "until ebbd restarts; set floor_mib in the VM's <ebb:vm> to keep it"}

    def yield_memory(self, vm: str, kib: int | None, poll: bool) -> dict[str, Any]:
        """``ebbctl yield``: ask VM's agent to yield ``kib`` KiB now, then poll the result.

        The result measures the VM's QEMU RSS before the request and a few seconds
        after the answer; ``error`` says why nothing (or nothing measurable) came back.
        """
        engine = self.engine
        now = time.monotonic()
        with self._manual_yields_lock:
            if poll:
                record = self._manual_yields.get(vm)
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
                names = sorted(row["name"] for row in engine.status_vms())
                known = ", ".join(names) if names else "none"
                raise ControlError(f"ebbd knows no VM named {vm!r} (running VMs: {known})")
            size = engine.balloon_cur_kib(vm)
            asked = min(int(kib or 0), size) if size else int(kib or 0)
            try:
                record = self._manual_yields.start(
                    vm, asked, now, engine.measure_rss_kib(vm), self.c.channels.request_yield
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
        if self.c.observability is None:
            return ""
        return str(self.c.observability.metrics_text())

    def status_line(self) -> str:
        """One line for systemd's STATUS=."""
        record = self.engine.last_record
        if record is None:
            return "starting"
        return str(record.summary())


def _empty_host() -> dict[str, Any]:
    return {
        "mem_total_kib": None, "mem_free_kib": None, "freeable_kib": None,
        "mem_available_kib": None, "swap_total_kib": None, "swap_used_kib": None,
        "swap_in_per_s": None, "swap_out_per_s": None, "psi_some_avg10": None,
        "ksm": {"run": None, "pages_to_scan": None, "sleep_millisecs": None,
                "pages_shared": None, "pages_sharing": None},
    }


#: Settings read once at start: changing them needs a restart.
_RESTART_KEYS = (
    ("daemon", "libvirt_uri"), ("daemon", "run_dir"), ("daemon", "control_socket"),
    ("host", "proc_root"), ("host", "sys_root"), ("hypervisor", "stats_period_s"),
    ("hypervisor", "qemu_run_dir"), ("hypervisor", "manage_opted_out"),
    ("guests", "agent_channel"), ("ksm", "enabled"), ("memtune", "soft_limit_uncooperative"),
    ("trace", "path"), ("trace", "max_bytes"), ("trace", "keep_files"), ("metrics", "listen"),
    ("metrics", "allow_remote"), ("metrics", "per_vm"),
)


def _restart_needed(old: EbbdConfig, new: EbbdConfig) -> list[str]:
    return [
        f"{section}.{key}"
        for section, key in _RESTART_KEYS
        if getattr(getattr(old, section), key) != getattr(getattr(new, section), key)
    ]


def build_components(
    config: EbbdConfig,
    *,
    dry_run: bool,
    on_need: Callable[[str], None],
    on_domains_changed: Callable[[frozenset[str]], None],
    status_source: Callable[[], Any] | None = None,
) -> Components:
    """Build every component from the config (real libvirt, /proc, sysfs)."""
    hv = config.hypervisor
    hypervisor = Hypervisor(
        config.daemon.libvirt_uri,
        stats_period_s=hv.stats_period_s,
        relist_interval_s=hv.relist_interval_s,
        reconnect_initial_s=hv.reconnect_initial_s,
        reconnect_max_s=hv.reconnect_max_s,
        qemu_run_dir=hv.qemu_run_dir,
        domains=hv.domains,
        agent_channel=config.guests.agent_channel,
        manage_opted_out=hv.manage_opted_out,
        on_change=on_domains_changed,
    )
    observability = None
    if status_source is not None:
        from ebb.host.observe import build_observability

        observability = build_observability(config, status_source=status_source)
    return Components(
        hypervisor=hypervisor,
        host=HostCollector(config.host.proc_root, config.host.sys_root),
        channels=GuestChannels(channel_limits(config), on_need=on_need),
        runner=PolicyRunner(),
        governor=Governor(governor_config(config)),
        balloon=BalloonController(
            hypervisor, dry_run=dry_run, min_change_kib=config.balloon.min_change_kib
        ),
        ksm=(
            KsmController(config.host.sys_root, config.daemon.run_dir, dry_run=dry_run)
            if config.ksm.enabled
            else None
        ),
        # Built even when memtune.soft_limit_uncooperative is off: limits a crashed
        # run recorded must still come off (the engine sets none unless it is on).
        memtune=MemtuneController(hypervisor, dry_run=dry_run, run_dir=config.daemon.run_dir),
        observability=observability,
    )


def build_daemon(
    config: EbbdConfig,
    *,
    config_path: Path | str | None = None,
    dry_run: bool = False,
    control_socket: bool = True,
    observability: bool = True,
) -> Daemon:
    """ebbd from a validated config, wired to the real host."""
    holder: dict[str, Daemon] = {}

    def on_need(vm: str) -> None:
        daemon = holder.get("daemon")
        if daemon is not None:
            daemon.engine.on_need(vm)

    def on_domains_changed(names: frozenset[str]) -> None:
        daemon = holder.get("daemon")
        if daemon is not None:
            daemon.engine.on_domains_changed(names)

    def status_source() -> Any:
        return holder["daemon"].status()

    effective_dry_run = dry_run or config.daemon.dry_run
    components = build_components(
        config,
        dry_run=effective_dry_run,
        on_need=on_need,
        on_domains_changed=on_domains_changed,
        status_source=status_source if observability else None,
    )
    daemon = Daemon(
        config,
        components,
        config_path=config_path,
        dry_run_forced=dry_run,
        control_socket=control_socket,
    )
    holder["daemon"] = daemon
    return daemon
