"""The composition root: ebbd built from one validated config, started and stopped.

:func:`build_daemon` builds every component from an :class:`EbbdConfig`
first (TuneD-style: dependencies are passed in, nothing else in ebbd reads
the config) and hands them to a :class:`Daemon`, which starts them:

- the :class:`~ebb.host.tick_requests.TickRequests` the channels (a guest's
  need) and the hypervisor (domains changed) ask for a tick through, so that
  neither needs the engine to exist first;
- the hypervisor, the host collector, the guest channels, the policy runner,
  the governor and the controllers (:func:`build_components`; tests pass
  fakes to :func:`assemble` instead);
- the engine, the running config and its reload
  (:class:`~ebb.host.reload.LiveConfig`), the status document, the
  observability (tick observers first, the status gauges once the status
  exists), and the control socket, which gets
  :class:`~ebb.host.commands.DaemonCommands` only (the
  :class:`~ebb.host.control.DaemonControl` protocol), not the daemon.

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
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from ebb.host.channels import GuestChannels
from ebb.host.collectors import HostCollector
from ebb.host.commands import DaemonCommands, StatusReport
from ebb.host.config import EbbdConfig
from ebb.host.control import Authorizer, ControlServer, ControlService
from ebb.host.controllers import BalloonController, KsmController, MemtuneController
from ebb.host.engine import Engine, TickRecord, read_freeable_share
from ebb.host.governor import Governor
from ebb.host.hypervisor import Hypervisor
from ebb.host.notify import SystemdNotifier
from ebb.host.observe import Observability, TickObservers, build_observability, build_tick_observers
from ebb.host.policy import PolicyRunner, PolicyStartError
from ebb.host.reload import LiveConfig, Policies
from ebb.host.rundir import prepare_run_dir
from ebb.host.settings import channel_limits, engine_settings, governor_config
from ebb.host.threads import Waker, start_thread
from ebb.host.tick_requests import TickRequests

__all__ = [
    "EXIT_CONFIG", "EXIT_FAILURE", "EXIT_OK", "Components", "Daemon", "assemble",
    "build_components", "build_daemon",
    # Re-exported from ebb.host.settings (their home) for older imports.
    "channel_limits", "engine_settings", "governor_config",
]

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


@dataclass
class Components:
    """ebbd's edges and core, built before the engine (by :func:`build_components`,
    or by tests with fakes)."""

    hypervisor: Any
    host: Any
    channels: Any
    runner: PolicyRunner
    governor: Governor
    balloon: Any
    ksm: Any | None
    memtune: Any | None
    #: The engine's metrics counters and trace (None: no observability).
    tick_observers: TickObservers | None = None
    extra_observers: list[Any] = field(default_factory=list)


class Daemon:
    """ebbd's life cycle: start, signals, reload on SIGHUP, stop (components built)."""

    def __init__(
        self,
        *,
        components: Components,
        engine: Engine,
        live: LiveConfig,
        policies: Policies,
        status: StatusReport,
        commands: DaemonCommands,
        control: ControlServer | None,
        observability: Observability | None,
        notifier: SystemdNotifier,
    ) -> None:
        self.c = components
        self.engine = engine
        self.live = live
        self.policies = policies
        self.status_report = status
        self.commands = commands
        self.control = control
        self.observability = observability
        self.notifier = notifier
        self.stop_event = threading.Event()
        self._main_wake = Waker()
        self._reload_requested = False
        self._stop_signalled = False
        self.crash: BaseException | None = None
        self._engine_thread: threading.Thread | None = None
        self._started = False

    @property
    def config(self) -> EbbdConfig:
        """The config ebbd runs on (the last good one reloaded)."""
        return self.live.config

    @property
    def dry_run(self) -> bool:
        return self.live.dry_run

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
        if self.live.load_policies() and not self.policies.loaded:
            # Before the host is touched: a daemon without any policy would run
            # on the governor's safety rules alone, which nobody asked for.
            raise PolicyStartError(self.policies.errors)
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
        if self.observability is not None:
            self.observability.start(on_crash=self._thread_died)
        self._engine_thread = start_thread(
            "ebbd-engine", lambda: self.engine.run(self.stop_event), LOG, "engine",
            self._thread_died,
        )
        deadline = time.monotonic() + STARTUP_WAIT_S
        while self.engine.tick_count == 0 and not self.stop_event.is_set():
            if time.monotonic() >= deadline:
                break
            self.stop_event.wait(0.02)
        self.notifier.ready(self.status_report.line())
        LOG.info("ebbd %s started (pid %d)", self.status_report.version, os.getpid())

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
                self.notifier.status(self.status_report.line())
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
        if self.observability is not None:
            self.observability.stop()
        self.c.hypervisor.stop()
        LOG.info("ebbd stopped%s", " after a thread died" if self.crash else "")

    # --- once ---------------------------------------------------------------------------

    def run_once(self) -> TickRecord:
        """One tick without the background threads (``ebbd --once``)."""
        self._started = True
        self.live.load_policies()
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
        return self.live.reload()


# --- the composition root -------------------------------------------------------------------


def build_components(
    config: EbbdConfig,
    *,
    dry_run: bool,
    requests: TickRequests,
    observability: bool = True,
) -> Components:
    """Every component below the engine, from the config (real libvirt, /proc, sysfs).

    The channels and the hypervisor ask for ticks through ``requests``.
    """
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
        on_change=requests.on_domains_changed,
    )
    return Components(
        hypervisor=hypervisor,
        host=HostCollector(config.host.proc_root, config.host.sys_root),
        channels=GuestChannels(channel_limits(config), on_need=requests.on_need),
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
        tick_observers=build_tick_observers(config) if observability else None,
    )


def assemble(
    config: EbbdConfig,
    components: Components,
    *,
    requests: TickRequests | None = None,
    config_path: Path | str | None = None,
    dry_run_forced: bool = False,
    notifier: SystemdNotifier | None = None,
    authorizer: Authorizer | None = None,
    control_socket: bool = True,
) -> Daemon:
    """The engine and everything above it, on ``components``; nothing started yet."""
    notifier = notifier or SystemdNotifier()
    policies = Policies(components.runner)
    ticks = components.tick_observers
    engine = Engine(
        engine_settings(config),
        host=components.host,
        hypervisor=components.hypervisor,
        channels=components.channels,
        runner=components.runner,
        governor=components.governor,
        balloon=components.balloon,
        ksm=components.ksm,
        memtune=components.memtune,
        observers=list(components.extra_observers) + (ticks.observers if ticks else []),
        pressure_probe=lambda: read_freeable_share(config.host.proc_root),
        requests=requests,
    )
    live = LiveConfig(
        config, config_path=config_path, dry_run_forced=dry_run_forced, engine=engine,
        channels=components.channels, hypervisor=components.hypervisor,
        memtune=components.memtune, policies=policies, notifier=notifier,
    )
    # Before any thread runs: the controllers simulate when the config says so.
    engine.set_dry_run(live.dry_run)
    status = StatusReport(engine=engine, channels=components.channels,
                          hypervisor=components.hypervisor, policies=policies, live=live,
                          version=daemon_version())
    observability = None
    if ticks is not None:
        observability = build_observability(config, status_source=status.document,
                                            tick_observers=ticks)
    commands = DaemonCommands(
        engine=engine, channels=components.channels, status=status, live=live,
        metrics_text=observability.metrics_text if observability is not None else None,
    )
    control = None
    if control_socket:
        control = ControlServer(str(config.daemon.control_socket),
                                ControlService(commands, authorizer or Authorizer()))
    return Daemon(components=components, engine=engine, live=live, policies=policies,
                  status=status, commands=commands, control=control,
                  observability=observability, notifier=notifier)


def build_daemon(
    config: EbbdConfig,
    *,
    config_path: Path | str | None = None,
    dry_run: bool = False,
    control_socket: bool = True,
    observability: bool = True,
) -> Daemon:
    """ebbd from a validated config, wired to the real host (the composition root)."""
    requests = TickRequests(config.daemon.policy_interval_s)
    components = build_components(
        config,
        dry_run=dry_run or config.daemon.dry_run,
        requests=requests,
        observability=observability,
    )
    return assemble(config, components, requests=requests, config_path=config_path,
                    dry_run_forced=dry_run, control_socket=control_socket)
