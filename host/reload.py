"""The running config, the policies, and their reload (SIGHUP, ``ebbctl reload``).

A reload re-reads the config file and the policy directory and keeps what is
good (a bad config keeps the running one, a bad policy the last good one). It
runs on the thread that asked (the main thread for SIGHUP, the control thread
for ``ebbctl reload``) and writes nothing another thread reads: each component
is handed its new settings and applies them on its own thread (the engine at
the start of its next tick, together with the governor's and the balloon
controller's; the channel hub in its next turn).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from ebb.host.channels import ChannelLimits
from ebb.host.config import ConfigError, EbbdConfig, load_config
from ebb.host.engine import Engine, SettingsUpdate
from ebb.host.governor import GovernorConfig
from ebb.host.hypervisor.connection import domain_matches
from ebb.host.logsetup import set_level
from ebb.host.notify import SystemdNotifier
from ebb.host.policy import PolicyRunner
from ebb.host.settings import channel_limits, engine_settings, governor_config

LOG = logging.getLogger(__name__)


class Policies:
    """The policy directory as loaded: its errors and when it last loaded cleanly."""

    def __init__(self, runner: PolicyRunner) -> None:
        self.runner = runner
        self.errors: list[str] = []
        self.loaded_at: float | None = None

    @property
    def loaded(self) -> bool:
        """A policy runs (this load's or the last good one)."""
        return self.runner.program is not None

    def load(self, directory: Path) -> list[str]:
        """(Re)load ``directory``; the errors as ``PATH:LINE:COL: message``."""
        errors = [str(e) for e in self.runner.reload(directory)]
        self.errors = errors
        if not errors:
            self.loaded_at = time.time()
        elif not self.loaded:
            LOG.error(
                "no policy is loaded (%s): only the governor's safety rules apply until "
                "the policy is fixed and ebbd reloaded (systemctl reload ebbd)",
                directory,
            )
        return errors


class LimitedChannels(Protocol):
    """The channel hub as a reload sees it."""

    def update_limits(self, limits: ChannelLimits) -> None: ...


class LiveConfig:
    """The config ebbd runs on, and its reload."""

    def __init__(
        self,
        config: EbbdConfig,
        *,
        config_path: Path | str | None,
        dry_run_forced: bool,
        engine: Engine,
        channels: LimitedChannels,
        hypervisor: Any,
        memtune: Any | None,
        policies: Policies,
        notifier: SystemdNotifier,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.dry_run_forced = dry_run_forced
        self._engine = engine
        self._channels = channels
        self._hypervisor = hypervisor
        self._memtune = memtune
        self._policies = policies
        self._notifier = notifier
        self._lock = threading.Lock()

    @property
    def dry_run(self) -> bool:
        return self.dry_run_forced or self.config.daemon.dry_run

    def load_policies(self) -> list[str]:
        return self._policies.load(self.config.daemon.policy_dir)

    def reload(self) -> dict[str, Any]:
        """Re-read the config and the policies; keep what is good (SIGHUP, ebbctl reload)."""
        with self._lock:
            self._notifier.reloading()
            try:
                return self._reload()
            finally:
                self._notifier.reloaded()

    def _reload(self) -> dict[str, Any]:
        result: dict[str, Any] = {"config": "unchanged", "restart_needed": []}
        try:
            new = load_config(self.config_path)
        except ConfigError as err:
            LOG.error("reload: %s; keeping the running configuration", err)
            result["config"] = f"error: {err}"
            new = self.config
        if new is not self.config:
            result["restart_needed"] = restart_needed(self.config, new)
            for key in result["restart_needed"]:
                LOG.warning("reload: %s changed; it takes effect when ebbd restarts", key)
            self.config = new
            self._apply(new)
            result["config"] = "reloaded"
        errors = self.load_policies()
        result["policy_errors"] = errors
        result["policy"] = "error, kept the last good policy" if errors else "reloaded"
        LOG.info("reloaded: config %s, policy %s", result["config"], result["policy"])
        self._engine.request_tick("reloaded")
        return result

    def _apply(self, config: EbbdConfig) -> None:
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
        self._engine.update_settings(SettingsUpdate(
            engine=engine_settings(config),
            governor=governor,
            balloon_min_change_kib=config.balloon.min_change_kib,
            dry_run=self.dry_run,
        ))
        self._channels.update_limits(channel_limits(config))
        self._apply_domain_scope(config.hypervisor.domains)

    def _apply_domain_scope(self, patterns: tuple[str, ...]) -> None:
        """``[hypervisor] domains`` changed: hand VMs leaving the scope back as they are."""
        set_patterns = getattr(self._hypervisor, "set_domain_patterns", None)
        if set_patterns is None:
            return
        if self._memtune is not None:
            # The engine forgets a VM it no longer sees as if it had stopped; this
            # one still runs, so the soft limit ebbd put on it must come off.
            for vm in list(self._memtune.limited()):
                if not domain_matches(vm, patterns):
                    self._memtune.release(vm, "no longer in hypervisor.domains")
        set_patterns(patterns)


#: Settings read once at start: changing them needs a restart.
_RESTART_KEYS = (
    ("daemon", "libvirt_uri"), ("daemon", "run_dir"), ("daemon", "control_socket"),
    ("host", "proc_root"), ("host", "sys_root"), ("hypervisor", "stats_period_s"),
    ("hypervisor", "qemu_run_dir"), ("hypervisor", "manage_opted_out"),
    ("guests", "agent_channel"), ("ksm", "enabled"), ("memtune", "soft_limit_uncooperative"),
    ("trace", "path"), ("trace", "max_bytes"), ("trace", "keep_files"), ("metrics", "listen"),
    ("metrics", "allow_remote"), ("metrics", "per_vm"),
)


def restart_needed(old: EbbdConfig, new: EbbdConfig) -> list[str]:
    """The restart-only keys that differ between ``old`` and ``new``."""
    return [
        f"{section}.{key}"
        for section, key in _RESTART_KEYS
        if getattr(getattr(old, section), key) != getattr(getattr(new, section), key)
    ]
