"""A tick's input from libvirt and the guest channels: the adapter before :func:`plan_tick`.

:class:`TickInputs` turns what the engine read this tick (the host sample, the
managed domains, the channels' snapshot) into a :class:`~ebb.host.tick.TickInput`:

- one policy sample per guest (``ebb.host.hypervisor.guest_sample`` for what
  libvirt knows, the agent's report for the rest, the yield fields), kept for
  ``history_len`` ticks so the policy's ``StatAvg`` has a history;
- the guest's claims capped at what it can have or show (:func:`weigh_need`),
  the notes saying what was capped;
- the governor's view of each guest, from that sample
  (:func:`~ebb.host.tick.guest_view`), with the floor from
  :func:`~ebb.host.governor.guest_floor_kib`.

Rates are per second of the host's clock. ``swap_in_rate`` is in KiB/s (pages
from the agent's ``pswpin`` times :data:`~ebb.host.units.PAGE_KIB`, or libvirt's
``swap_in`` counter, which is in KiB).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Deque

from ebb.host.channels import GuestChannelState
from ebb.host.collectors import HostSample
from ebb.host.governor import GovernorConfig, guest_floor_kib
from ebb.host.hypervisor import DomainInfo, guest_sample
from ebb.host.policy import GUEST_FIELDS, Entity, PolicyInput
from ebb.host.tick import TickInput, guest_view, host_spare_kib
from ebb.host.units import PAGE_KIB, fmt_kib
from ebb.protocol.messages import Report

#: Need urgency as the policy field ``need_urgency`` reads it (docs/policy.md).
URGENCY_LEVELS = {"low": 1, "high": 2, "critical": 2}

#: A guest's need counts as shown by its own report when one of these holds (the
#: agent's own need triggers, docs/agent.md "Offer and need"); without any, the
#: need is believed only up to one reserve (:func:`weigh_need`).
EVIDENCE_PSI_SOME_AVG10 = 10.0
EVIDENCE_PSI_FULL_AVG10 = 2.0
EVIDENCE_MAJOR_FAULTS_PER_S = 200.0
EVIDENCE_SWAP_IN_PAGES_PER_S = 256.0
EVIDENCE_REFAULTS_PER_S = 256.0
#: The agent's reserve: 5 % of the guest's memory, at least 64 MiB.
RESERVE_SHARE = 0.05
RESERVE_MIN_KIB = 64 * 1024

#: Guest fields filled from the agent's channel (nil without a fresh agent).
_AGENT_FIELDS = (
    "report_age",
    "offer",
    "need",
    "need_urgency",
    "psi_some_avg10",
    "psi_full_avg10",
    "cache",
    "cold",
    "meminfo_available",
    "major_fault_rate",
    "swap_in_rate",
)

#: The policy's yield fields of a guest (``YieldCoordinator.guest_fields``).
YieldFields = Callable[[str, "GuestChannelState | None", float], Mapping[str, Any]]


@dataclass
class _History:
    samples: Deque[dict[str, Any]]
    sample_monos: Deque[float]


class TickInputs:
    """Builds each tick's :class:`TickInput`; keeps the samples' history between ticks."""

    def __init__(
        self,
        limits: Callable[[], GovernorConfig],
        history_len: int,
        *,
        qemu_rss_kib: Callable[[int], int | None],
        yield_fields: YieldFields | None = None,
        host_name: str = "",
    ) -> None:
        #: The governor's limits now (a reload may replace them): the floors and
        #: the host's reserve are the governor's.
        self._limits = limits
        self.history_len = history_len
        self._qemu_rss_kib = qemu_rss_kib
        self._yield_fields = yield_fields
        self._host_name = host_name
        self._host_samples: Deque[dict[str, Any]] = collections.deque(maxlen=history_len)
        self._guests: dict[str, _History] = {}

    # --- bookkeeping ------------------------------------------------------------------

    def keep_only(self, present: set[str]) -> None:
        """Forget the history of VMs that are gone; start one for new VMs."""
        for vm in [name for name in self._guests if name not in present]:
            del self._guests[vm]
        for vm in present:
            if vm not in self._guests:
                n = self.history_len
                self._guests[vm] = _History(collections.deque(maxlen=n),
                                            collections.deque(maxlen=n))

    def latest_sample(self, vm: str) -> Mapping[str, Any] | None:
        """The VM's newest policy sample (None before its first)."""
        history = self._guests.get(vm)
        return history.samples[-1] if history is not None and history.samples else None

    def floor_kib(self, info: DomainInfo, floor_override_kib: int | None) -> int:
        """The floor the governor enforces for this VM (and the policy's ``balloon_min``)."""
        own = floor_override_kib if floor_override_kib is not None else info.settings.floor_kib
        return guest_floor_kib(own, int(info.max_memory_kib), self._limits())

    # --- the input -----------------------------------------------------------------------

    def build(
        self,
        now_mono: float,
        host_sample: HostSample,
        managed: Sequence[DomainInfo],
        channels: Mapping[str, GuestChannelState],
        floor_overrides_kib: Mapping[str, int],
        *,
        paused: bool = False,
    ) -> TickInput:
        """This tick's input; the samples join the history."""
        self._host_samples.append(dict(host_sample.fields))
        guests: list[Entity] = []
        views = []
        notes: dict[str, list[str]] = {}
        for info in managed:
            channel = channels.get(info.name)
            override = floor_overrides_kib.get(info.name)
            sample = self._guest_sample(info, channel, now_mono, override)
            capped = self._cap_claims(info, sample, channel)
            if capped:
                notes[info.name] = capped
            if self._yield_fields is not None:
                sample.update(self._yield_fields(info.name, channel, now_mono))
            history = self._guests.get(info.name)
            if history is None:
                self.keep_only({*self._guests, info.name})
                history = self._guests[info.name]
            history.samples.append(sample)
            history.sample_monos.append(now_mono)
            guests.append(Entity({"name": info.name, "uuid": info.uuid}, list(history.samples)))
            views.append(guest_view(info.name, sample))
        host = Entity({"name": self._host_name}, list(self._host_samples))
        spare = host_spare_kib(
            host_sample.freeable_kib, host_sample.mem_total_kib, self._limits().host_reserve_share
        )
        return TickInput(now_mono, PolicyInput(host=host, guests=guests), views, spare,
                         paused=paused, claim_notes=notes)

    def _guest_sample(
        self,
        info: DomainInfo,
        channel: GuestChannelState | None,
        now_mono: float,
        floor_override_kib: int | None,
    ) -> dict[str, Any]:
        rss = None
        if "rss" not in info.memory_stats and info.qemu_pid:
            rss = self._qemu_rss_kib(info.qemu_pid)
        floor = self.floor_kib(info, floor_override_kib)
        raw = guest_sample(info, floor, rss)
        sample: dict[str, Any] = {k: v for k, v in raw.items() if k in GUEST_FIELDS}
        for name in _AGENT_FIELDS:
            sample[name] = None
        sample["agent_connected"] = 0
        fresh = channel is not None and channel.agent_active and not channel.stale
        if channel is not None and channel.agent_active and channel.latest is not None:
            sample["report_age"] = round(channel.report_age_s(now_mono) or 0.0, 3)
        if fresh and channel is not None:
            sample["agent_connected"] = 1
            sample["offer"] = channel.offer.offer.kib if channel.offer else 0
            sample["cold"] = channel.offer.offer.cold_kib if channel.offer else None
            need = channel.need.need if channel.need else None
            sample["need"] = need.kib if need else 0
            sample["need_urgency"] = URGENCY_LEVELS.get(need.urgency, 1) if need and need.kib else 0
            latest = channel.latest
            if latest is not None:
                report = latest.report
                sample["psi_some_avg10"] = report.psi_some_avg10
                sample["psi_full_avg10"] = report.psi_full_avg10
                sample["cache"] = report.cached_kib + report.buffers_kib
                sample["meminfo_available"] = report.mem_available_kib
                sample["swap_total"] = report.swap_total_kib
                sample["swap_usage"] = max(0, report.swap_total_kib - report.swap_free_kib)
            rates = _agent_rates(channel)
            if rates is not None:
                sample["major_fault_rate"], sample["swap_in_rate"] = rates
        if sample["major_fault_rate"] is None:
            sample["major_fault_rate"], sample["swap_in_rate"] = self._libvirt_rates(
                info.name, sample, now_mono
            )
        return sample

    def _cap_claims(
        self,
        info: DomainInfo,
        sample: dict[str, Any],
        channel: GuestChannelState | None,
    ) -> list[str]:
        """Cap the guest's offer and need at what it has and can have, before the policy
        and the governor see them; the notes say what was capped (for the journal).

        A guest is not trusted: an offer of more than its balloon can still take would
        make the policy believe offers cover the host's shortage; a need of more than
        its maximum, or with nothing in its own report to show it, would be paid from
        the host's memory.
        """
        notes: list[str] = []
        cur = int(info.balloon_cur_kib or info.max_memory_kib)
        maximum = int(info.max_memory_kib)
        offer = int(sample.get("offer") or 0)
        if offer > 0:
            room = max(0, cur - int(sample["balloon_min"]))
            if offer > room:
                sample["offer"] = room
                notes.append(f"its offer of {fmt_kib(offer)} capped at {fmt_kib(room)}, "
                             f"what its balloon can still take above its floor")
        need = int(sample.get("need") or 0)
        if need > 0:
            latest = channel.latest.report if channel is not None and channel.latest else None
            believed, why = weigh_need(
                need, maximum - cur, min(maximum, latest.mem_total_kib if latest else maximum),
                latest, sample.get("major_fault_rate"), sample.get("swap_in_rate"),
                _refault_rate(channel) if channel is not None else None,
            )
            if believed < need:
                sample["need"] = believed
                notes.append(f"its need of {fmt_kib(need)} capped at {fmt_kib(believed)}: {why}")
        return notes

    def _libvirt_rates(
        self, vm: str, sample: Mapping[str, Any], now_mono: float
    ) -> tuple[float | None, float | None]:
        """Major faults/s and KiB swapped in/s from libvirt's counters (swap_in is KiB)."""
        history = self._guests.get(vm)
        if history is None or not history.samples:
            return None, None
        previous, at = history.samples[-1], history.sample_monos[-1]
        dt = now_mono - at
        if dt <= 0:
            return None, None
        return (
            _rate(previous.get("major_fault"), sample.get("major_fault"), dt),
            _rate(previous.get("swap_in"), sample.get("swap_in"), dt),
        )


def _rate(before: Any, after: Any, dt_s: float) -> float | None:
    if before is None or after is None or dt_s <= 0:
        return None
    return max(0.0, (float(after) - float(before)) / dt_s)


def weigh_need(
    need_kib: int,
    room_kib: int,
    guest_total_kib: int,
    report: Any,
    major_fault_rate: float | None,
    swap_in_rate_kib: float | None,
    refault_rate: float | None,
) -> tuple[int, str]:
    """How much of a guest's need to believe, and why (pure).

    Never more than the VM can have (``room_kib``: maximum less current). Beyond
    that, the guest's own report must show the shortage, as the agent's own need
    triggers do: memory stalls (PSI some or full), major faults, swap-in or
    refaults at a rate that shows pressure believe the need in full; a low
    MemAvailable alone, up to the agent's need watermark (two reserves); nothing
    at all, one reserve (5 % of the guest's memory, at least 64 MiB).
    """
    room = max(0, room_kib)
    if need_kib > room:
        capped, why = room, "more than the VM can have"
    else:
        capped, why = need_kib, ""
    reserve = max(RESERVE_MIN_KIB, int(RESERVE_SHARE * max(0, guest_total_kib)))
    psi_some = getattr(report, "psi_some_avg10", None)
    psi_full = getattr(report, "psi_full_avg10", None)
    stalling = (
        (psi_some is not None and psi_some >= EVIDENCE_PSI_SOME_AVG10)
        or (psi_full is not None and psi_full >= EVIDENCE_PSI_FULL_AVG10)
        or (major_fault_rate is not None and major_fault_rate >= EVIDENCE_MAJOR_FAULTS_PER_S)
        or (swap_in_rate_kib is not None
            and swap_in_rate_kib >= EVIDENCE_SWAP_IN_PAGES_PER_S * PAGE_KIB)
        or (refault_rate is not None and refault_rate >= EVIDENCE_REFAULTS_PER_S)
    )
    if stalling:
        return capped, why
    available = getattr(report, "mem_available_kib", None)
    if available is not None and available < 2 * reserve:
        limit, limit_why = 2 * reserve, "only its MemAvailable shows a shortage"
    else:
        limit, limit_why = reserve, "nothing in its reports shows a shortage"
    if capped > limit:
        return limit, limit_why
    return capped, why


def _last_two(channel: GuestChannelState) -> tuple[Report, Report, float] | None:
    """The last two reports and the seconds between them (host clock), if usable."""
    history = channel.history
    if len(history) < 2:
        return None
    older, newer = history[-2], history[-1]
    dt = newer.mono - older.mono
    return (older.report, newer.report, dt) if dt > 0 else None


def _refault_rate(channel: GuestChannelState) -> float | None:
    """Workingset refaults per second from the last two reports (host clock)."""
    last = _last_two(channel)
    if last is None:
        return None
    older, newer, dt = last
    return max(0, newer.workingset_refault - older.workingset_refault) / dt


def _agent_rates(channel: GuestChannelState) -> tuple[float, float] | None:
    """Major faults/s and KiB swapped in/s from the last two reports (host clock)."""
    last = _last_two(channel)
    if last is None:
        return None
    older, newer, dt = last
    faults = max(0, newer.pgmajfault - older.pgmajfault) / dt
    swap_in_kib = max(0, newer.pswpin - older.pswpin) * PAGE_KIB / dt
    return round(faults, 3), round(swap_in_kib, 3)
