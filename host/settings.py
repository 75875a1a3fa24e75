"""ebbd's config as each component's own settings.

Pure functions of a validated :class:`~ebb.host.config.EbbdConfig`: the
composition root (host/app.py) builds components with them and a reload hands
their results to the running components; ``ebbctl replay`` uses
:func:`governor_config` without importing the daemon.
"""

from __future__ import annotations

from ebb.host.channels import ChannelLimits
from ebb.host.config import EbbdConfig
from ebb.host.engine import EngineSettings
from ebb.host.governor import GovernorConfig
from ebb.host.pressure import pressure_thresholds
from ebb.host.units import PAGE_KIB

__all__ = ["channel_limits", "engine_settings", "governor_config"]


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
