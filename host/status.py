"""``ebbctl status``: one VM's row, from what the engine knew at its last tick.

The row's keys are the contract of ``ebbctl status --json`` (docs/ebbd.md,
contracts.md); the engine gathers the pieces under its lock and calls
:func:`vm_row`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ebb.host.channels import GuestChannelState
from ebb.host.hypervisor import DomainInfo
from ebb.host.kinds import GuestState


def vm_row(
    info: DomainInfo,
    channel: GuestChannelState | None,
    now_mono: float,
    *,
    managed: bool,
    floor_kib: int | None,
    floor_override_kib: int | None,
    balloon_target_kib: int | None,
    guest_state: GuestState,
    last_action: Mapping[str, Any] | None,
    latest_sample: Mapping[str, Any] | None,
    yield_status: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The status row of one VM (``guest_state``: the governor's, as of the last plan)."""
    agent_active = channel is not None and channel.agent_active
    latest = channel.latest.report if channel is not None and channel.latest else None
    need = channel.need.need if agent_active and channel and channel.need else None
    offer = channel.offer.offer if agent_active and channel and channel.offer else None
    return {
        "name": info.name,
        "uuid": info.uuid,
        "state": info.state,
        "balloon_cur_kib": info.balloon_cur_kib,
        "balloon_target_kib": balloon_target_kib,
        "balloon_max_kib": info.max_memory_kib,
        "floor_kib": floor_kib,
        "managed": managed,
        "agent": {
            "connected": bool(agent_active),
            "last_report_age_s": (
                round(channel.report_age_s(now_mono) or 0.0, 3)
                if channel is not None and channel.latest is not None
                else None
            ),
            "protocol_errors": channel.protocol_errors if channel is not None else 0,
            "cut_off_until": channel.cut_off_until if channel is not None else None,
        },
        "offer_kib": offer.kib if offer else None,
        "cold_kib": offer.cold_kib if offer else None,
        "need_kib": need.kib if need else None,
        "need_urgency": need.urgency if need and need.kib else None,
        "psi_some_avg10": latest.psi_some_avg10 if latest else None,
        "mem_available_kib": latest.mem_available_kib if latest else None,
        "cooperation": cooperation(guest_state, channel),
        "last_action": dict(last_action) if last_action else None,
        "floor_override_kib": floor_override_kib,
        "channel": info.settings.channel_path,
        "rss_kib": rss_kib(info, latest_sample),
        "free_page_reporting": info.settings.free_page_reporting,
        "autodeflate": info.settings.autodeflate,
        "stats_period_s": info.settings.stats_period_s,
        "yield": _yield_row(yield_status or {}, channel),
    }


def _yield_row(status: Mapping[str, Any], channel: GuestChannelState | None) -> dict[str, Any]:
    return {
        "capable": bool(
            channel is not None and channel.agent_active and "yield" in channel.capabilities
        ),
        "pending": bool(status.get("pending") or (channel and channel.yield_pending)),
        "last": status.get("last"),
        "unasked": channel.yields_unasked if channel is not None else 0,
    }


def cooperation(state: GuestState, channel: GuestChannelState | None) -> GuestState:
    """The governor's state when not ``ok``; else whether the agent is there and fresh."""
    if state != GuestState.OK:
        return state
    if channel is None or not channel.agent_active:
        return GuestState.NO_AGENT
    if channel.stale:
        return GuestState.STALE
    return GuestState.OK


def rss_kib(info: DomainInfo, sample: Mapping[str, Any] | None) -> int | None:
    """The VM's QEMU resident memory: libvirt's stats, else the last policy sample's.

    The sample has the process's own figure when libvirt's stats have none.
    """
    rss = info.memory_stats.get("rss")
    if rss is None and sample is not None:
        rss = sample.get("rss")
    return int(rss) if rss is not None else None
