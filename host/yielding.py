"""Asking guests to yield before the balloon takes memory by force.

A policy sets the guest control ``yield_kib``; :class:`YieldCoordinator` turns
it into a ``request`` kind ``yield`` to the guest's agent and follows it up:

- the size asked is capped by the guest's size and by the cache (or offer) its
  agent reports: an agent cannot give back cache it does not have;
- while a request is outstanding, and for a bounded time after the answer
  (``wait_ticks`` ticks), no balloon of that guest is inflated: the host waits
  for the VM's QEMU RSS to drop (with free page reporting, the reclaimed pages
  leave the host within seconds). Memory given to a guest is never held back;
- the result is what the host measured, QEMU RSS before minus after, never what
  the agent says it freed (PROTOCOL.md "yield": the host does not believe it);
- a request not answered in time, or a yield that gave the host nothing, falls
  back to the balloon on the next tick (the hold ends);
- a guest whose yields give the host nothing ``fruitless_limit`` times in a row
  is treated like a guest without an agent for ``fruitless_backoff_s``.

:class:`ManualYield` is the same exchange for ``ebbctl yield``, run from the
control socket without blocking it: started once, then polled.

Nothing here does I/O itself: the channels, the RSS reader and the clock are
passed in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ebb.host.channels import GuestChannelState, YieldHandle, YieldUnavailable
from ebb.host.channels.yields import BUSY
from ebb.host.governor import GuestView, fmt_kib
from ebb.host.pressure import LEVEL_NAMES, HostPressure
from ebb.protocol.logs import printable

LOG = logging.getLogger(__name__)

#: Journal kinds (``ebbctl explain``).
YIELD_REQUEST = "yield-request"
YIELD_RESULT = "yield-result"

#: Outcomes of a yield, as the journal and ``ebbctl yield`` show them.
RETURNED = "returned"  # the QEMU RSS dropped
NOTHING = "nothing"  # answered, but the RSS did not drop
TIMEOUT = "timeout"  # not answered in time
FAILED = "failed"  # not sent, or the session ended


class YieldChannels(Protocol):
    """What yields need from the guest channels (GuestChannels)."""

    def request_yield(self, vm: str, kib: int, deadline_ms: int) -> YieldHandle: ...

    def set_pressure(self, level: int, reason: str) -> None: ...


@dataclass(frozen=True)
class YieldSettings:
    """How the engine asks for yields and judges them."""

    #: Ticks to wait for the RSS to drop (from the request, and after the answer);
    #: also the pause after a yield before the next request to the same guest.
    wait_ticks: float = 2.0
    #: Smaller requests are not sent (the cost of a message and a reclaim pass).
    min_request_kib: int = 8 * 1024
    #: An RSS drop smaller than this is "nothing" (QEMU's own RSS moves by a few MiB).
    min_returned_kib: int = 4 * 1024
    #: Yields in a row that return nothing before the guest is treated as having no agent.
    fruitless_limit: int = 3
    #: How long it is then not asked to yield.
    fruitless_backoff_s: float = 600.0


@dataclass
class _Pending:
    handle: YieldHandle
    asked_kib: int
    policy_kib: int
    rss_before_kib: int | None
    sent_mono: float
    answered_mono: float | None = None


@dataclass
class _GuestYields:
    pending: _Pending | None = None
    fruitless: int = 0
    fruitless_until: float = 0.0
    #: No new request before this (the balloon gets its turn after each yield).
    next_ask_mono: float = 0.0
    last_returned_kib: int | None = None
    last: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


def rss_drop_kib(before: int | None, after: int | None) -> int | None:
    """What came back to the host: QEMU RSS before minus after (None when unknown)."""
    if before is None or after is None:
        return None
    return max(0, int(before) - int(after))


def yield_capped_kib(asked_kib: float, sample: Mapping[str, Any]) -> int:
    """``asked_kib`` capped by the guest's size and the cache (or offer) its agent reports."""
    size = sample.get("balloon_cur") or sample.get("balloon_max") or 0
    cold = max(int(sample.get("cache") or 0), int(sample.get("offer") or 0))
    return max(0, int(min(float(asked_kib), float(size), float(cold))))


class YieldCoordinator:
    """Sends the policy's yield requests and judges them by the guests' RSS."""

    def __init__(
        self,
        channels: Any,
        interval_s: float,
        settings: YieldSettings | None = None,
    ) -> None:
        # Channels without yields (old fakes, a hub that cannot) get no requests.
        self._channels = channels
        self.interval_s = interval_s
        self.settings = settings or YieldSettings()
        self._guests: dict[str, _GuestYields] = {}
        self._level: int | None = None
        #: Guests that had a request of ours outstanding when this tick began.
        self._owned: set[str] = set()

    @property
    def wait_s(self) -> float:
        return max(0.5, self.settings.wait_ticks * self.interval_s)

    # --- pressure -----------------------------------------------------------------

    def set_pressure(self, pressure: HostPressure) -> None:
        """Tell the agents the host's level when it changes."""
        if pressure.level == self._level:
            return
        if self._level is not None:
            LOG.info(
                "host pressure %s -> %s: %s",
                LEVEL_NAMES[self._level], pressure.name, pressure.reason,
                extra={"ACTION": "pressure", "REASON": pressure.reason},
            )
        self._level = pressure.level
        set_pressure = getattr(self._channels, "set_pressure", None)
        if set_pressure is not None:
            set_pressure(pressure.level, pressure.reason)

    # --- per guest -------------------------------------------------------------------

    def forget(self, present: set[str]) -> None:
        for vm in [v for v in self._guests if v not in present]:
            del self._guests[vm]

    def guest_fields(
        self, vm: str, channel: GuestChannelState | None, now_mono: float
    ) -> dict[str, Any]:
        """The policy's yield fields for one guest (docs/policy.md)."""
        st = self._guests.get(vm)
        able = (
            channel is not None
            and channel.agent_active
            and not channel.stale
            and "yield" in channel.capabilities
        )
        fruitless = st is not None and now_mono < st.fruitless_until
        pending = (st is not None and st.pending is not None) or bool(
            channel is not None and channel.yield_pending
        )
        return {
            "yield_capable": (1 if able and not fruitless else 0) if channel else None,
            "yield_fruitless": 1 if fruitless else 0,
            "yield_pending": 1 if pending else 0,
            "yield_returned": st.last_returned_kib if st is not None else None,
        }

    def status(self, vm: str) -> dict[str, Any] | None:
        """The last yield of ``vm`` as ``ebbctl status`` shows it (None when none)."""
        st = self._guests.get(vm)
        if st is None:
            return None
        return {
            "pending": st.pending is not None,
            "fruitless_in_a_row": st.fruitless,
            "last": dict(st.last) if st.last else None,
        }

    def step(
        self,
        now_mono: float,
        samples: Mapping[str, Mapping[str, Any]],
        guest_controls: Mapping[str, Mapping[str, Any]],
    ) -> list[dict[str, Any]]:
        """Judge outstanding yields, then send the ones the policy asked for.

        ``samples`` is this tick's guest sample per VM (``rss``, ``cache``,
        ``offer``, ``balloon_cur``); ``guest_controls`` the policy's controls.
        Returns journal events (``vm``, ``kind``, ``reason``, ``outcome``, ``inputs``).
        """
        events: list[dict[str, Any]] = []
        self._owned = {vm for vm, st in self._guests.items() if st.pending is not None}
        for vm, st in self._guests.items():
            if st.pending is not None:
                event = self._follow_up(vm, st, now_mono, samples.get(vm) or {})
                if event is not None:
                    events.append(event)
        if not hasattr(self._channels, "request_yield"):
            return events
        for vm, controls in guest_controls.items():
            wanted = controls.get("yield_kib")
            if wanted is None or isinstance(wanted, bool):
                continue
            try:
                wanted_kib = float(wanted)
            except (TypeError, ValueError):
                continue
            if not wanted_kib > 0:
                continue
            sample = samples.get(vm)
            if sample is None:
                continue
            event = self._ask(vm, wanted_kib, sample, now_mono)
            if event is not None:
                events.append(event)
        return events

    def hold_inflation(
        self,
        proposed: Mapping[str, int | None],
        views: Sequence[GuestView],
        samples: Mapping[str, Mapping[str, Any]],
    ) -> dict[str, int | None]:
        """The policy's targets, less inflations of guests whose yield is awaited.

        Deflations stand: a guest's need is served at once. A request of ours
        that ended this tick holds nothing; one made by ``ebbctl yield`` (seen in
        the sample's ``yield_pending``) holds until it ends.
        """
        out = dict(proposed)
        current = {v.name: v.balloon_cur_kib for v in views}
        for vm, target in proposed.items():
            if target is None or vm not in current or target >= current[vm]:
                continue
            st = self._guests.get(vm)
            waiting = st is not None and st.pending is not None
            manual = vm not in self._owned and (samples.get(vm) or {}).get("yield_pending") == 1
            if waiting or manual:
                out.pop(vm, None)
        return out

    # --- internals ------------------------------------------------------------------

    def _ask(
        self, vm: str, wanted_kib: float, sample: Mapping[str, Any], now_mono: float
    ) -> dict[str, Any] | None:
        st = self._guests.setdefault(vm, _GuestYields())
        if st.pending is not None or now_mono < max(st.fruitless_until, st.next_ask_mono):
            return None
        if sample.get("yield_capable") != 1:
            return None
        kib = yield_capped_kib(wanted_kib, sample)
        if kib < self.settings.min_request_kib:
            return None
        deadline_ms = int(self.wait_s * 1000)
        try:
            handle = self._channels.request_yield(vm, kib, deadline_ms)
        except YieldUnavailable as err:
            if err.code != BUSY:  # busy: ebbctl yield is asking; its answer will show
                LOG.debug("VM %s: yield not asked: %s", vm, err)
            return None
        st.pending = _Pending(
            handle=handle,
            asked_kib=kib,
            policy_kib=int(wanted_kib),
            rss_before_kib=_int_or_none(sample.get("rss")),
            sent_mono=now_mono,
        )
        cache = sample.get("cache")
        return {
            "vm": vm,
            "kind": YIELD_REQUEST,
            "rule": "yield",
            "outcome": "sent",
            "reason": (
                f"asked the agent to yield {fmt_kib(kib)} (policy asked {fmt_kib(wanted_kib)}, "
                f"capped by the guest's size and its cache {fmt_kib(float(cache or 0))}); "
                f"balloon inflation waits up to {self.wait_s:.0f} s for QEMU RSS to drop"
            ),
            "inputs": {
                "yield_kib": int(wanted_kib),
                "asked_kib": kib,
                "cache_kib": cache,
                "offer_kib": sample.get("offer"),
                "rss_kib": sample.get("rss"),
                "request_id": handle.request_id,
            },
        }

    def _follow_up(
        self, vm: str, st: _GuestYields, now_mono: float, sample: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        pending = st.pending
        assert pending is not None
        handle = pending.handle
        rss_now = _int_or_none(sample.get("rss"))
        returned = rss_drop_kib(pending.rss_before_kib, rss_now)
        if handle.answer is not None and pending.answered_mono is None:
            pending.answered_mono = now_mono
        if handle.answer is not None:
            claimed = handle.answer.yielded.freed_kib
            expected = max(self.settings.min_returned_kib, min(claimed, pending.asked_kib) // 2)
            settled = pending.answered_mono is not None and (
                now_mono - pending.answered_mono >= self.wait_s
            )
            if not settled and (returned is None or returned < expected):
                return None  # the RSS may still be falling: keep holding the balloon
            outcome = (
                RETURNED
                if returned is not None and returned >= self.settings.min_returned_kib
                else NOTHING
            )
        elif handle.failure is not None:
            outcome = TIMEOUT if handle.failure == "timeout" else FAILED
        elif now_mono - pending.sent_mono >= self.wait_s + self.interval_s:
            outcome = TIMEOUT  # the channel thread has not failed it yet: do not wait longer
        else:
            return None
        st.pending = None
        # Whatever came of it, the balloon has its turn before the next request:
        # a policy asking every tick must not hold the balloon back for ever.
        st.next_ask_mono = now_mono + self.wait_s
        st.last_returned_kib = returned if outcome == RETURNED else 0
        if outcome == RETURNED:
            st.fruitless = 0
        else:
            st.fruitless += 1
            if st.fruitless >= self.settings.fruitless_limit:
                st.fruitless_until = now_mono + self.settings.fruitless_backoff_s
                LOG.warning(
                    "VM %s: %d yields in a row gave the host nothing; handled like a guest "
                    "without an agent for %.0f s",
                    vm, st.fruitless, self.settings.fruitless_backoff_s,
                    extra={"VM": vm, "ACTION": "yield-fruitless"},
                )
        answer = handle.answer.yielded if handle.answer is not None else None
        took_s = now_mono - pending.sent_mono
        if outcome == RETURNED:
            reason = f"QEMU RSS fell by {fmt_kib(returned or 0)} within {took_s:.1f} s"
        elif outcome == NOTHING:
            reason = (
                f"QEMU RSS did not fall ({fmt_kib(returned or 0)} in {took_s:.1f} s): "
                "the balloon may take memory"
            )
        elif outcome == TIMEOUT:
            reason = f"no answer within {took_s:.1f} s: the balloon may take memory"
        else:
            reason = f"the request did not reach the agent ({handle.failure})"
        if answer is not None:
            reason += (
                f"; the agent says it freed {fmt_kib(answer.freed_kib)} ({answer.stopped})"
            )
        st.last = {
            "outcome": outcome,
            "asked_kib": pending.asked_kib,
            "returned_kib": returned,
            "agent_freed_kib": answer.freed_kib if answer is not None else None,
            "stopped": answer.stopped if answer is not None else None,
            "duration_s": round(took_s, 3),
        }
        return {
            "vm": vm,
            "kind": YIELD_RESULT,
            "rule": "yield",
            "outcome": outcome,
            "reason": reason,
            "inputs": {
                "asked_kib": pending.asked_kib,
                "rss_before_kib": pending.rss_before_kib,
                "rss_after_kib": rss_now,
                "returned_kib": returned,
                "agent_freed_kib": answer.freed_kib if answer is not None else None,
                "fruitless_in_a_row": st.fruitless,
                "took_s": round(took_s, 3),
            },
        }


def _int_or_none(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# --- ebbctl yield ----------------------------------------------------------------------


#: A fall of the RSS smaller than this is noise, not pages still being reported.
RSS_FALL_KIB = 1024


@dataclass
class ManualYield:
    """One ``ebbctl yield``: asked once, then polled until it is over.

    Over means: the agent answered and the VM's QEMU RSS has stopped falling
    (no new low for ``quiet_s``, and at least ``settle_s`` after the answer, at
    most ``settle_max_s``), or the request failed. Free page reporting hands the
    freed pages to the host in batches, seconds apart, so a fixed wait would
    undercount. The RSS is sampled on each poll; the lowest is what came back.
    ``result()`` is what the control
    socket returns; ``error`` is set when the yield gave the host nothing or
    never happened, so ``ebbctl`` exits non-zero with that reason.
    """

    vm: str
    asked_kib: int
    handle: YieldHandle
    rss_before_kib: int | None
    started_mono: float
    settle_s: float
    settle_max_s: float = 15.0
    quiet_s: float = 2.0
    answered_mono: float | None = None
    rss_after_kib: int | None = None
    #: When the RSS last reached a new low (by at least ``RSS_FALL_KIB``).
    rss_fell_mono: float | None = None
    finished: bool = False
    error: str | None = None

    def poll(self, now_mono: float, rss_now: Callable[[], int | None]) -> dict[str, Any]:
        """Advance (measuring the RSS when due) and return the state for the client."""
        if not self.finished:
            self._advance(now_mono, rss_now)
        return self.result(now_mono)

    def _advance(self, now_mono: float, rss_now: Callable[[], int | None]) -> None:
        handle = self.handle
        if handle.answer is not None:
            if self.answered_mono is None:
                self.answered_mono = now_mono
                self.rss_fell_mono = now_mono
            rss = rss_now()
            if rss is not None:
                low = self.rss_after_kib
                if low is None or rss < low:
                    if low is None or low - rss >= RSS_FALL_KIB:
                        self.rss_fell_mono = now_mono
                    self.rss_after_kib = rss
            since_answer = now_mono - self.answered_mono
            quiet = now_mono - (self.rss_fell_mono or self.answered_mono)
            if since_answer < self.settle_max_s and (
                since_answer < self.settle_s or quiet < self.quiet_s
            ):
                return
            self.finished = True
            returned = rss_drop_kib(self.rss_before_kib, self.rss_after_kib)
            freed = handle.answer.yielded.freed_kib
            if returned is None:
                self.error = f"QEMU RSS of VM {self.vm!r} could not be measured"
            elif returned < YieldSettings().min_returned_kib:
                hint = (
                    " (the agent freed memory: is free page reporting on? "
                    "<memballoon model='virtio' freePageReporting='on'>)"
                    if freed >= YieldSettings().min_returned_kib
                    else ""
                )
                self.error = (
                    f"VM {self.vm!r} gave nothing back: QEMU RSS fell by {fmt_kib(returned)}; "
                    f"the agent says it freed {fmt_kib(freed)} "
                    f"({handle.answer.yielded.stopped}){hint}"
                )
            return
        if handle.failure is not None:
            self.finished = True
            if handle.failure == "timeout":
                self.error = (
                    f"the agent of VM {self.vm!r} did not answer within "
                    f"{handle.deadline_ms / 1000:.0f} s"
                )
            else:
                self.error = f"the yield request to VM {self.vm!r} failed ({handle.failure})"

    def result(self, now_mono: float) -> dict[str, Any]:
        answer = self.handle.answer.yielded if self.handle.answer is not None else None
        answered_s = (
            self.handle.answer.mono - self.handle.sent_mono
            if self.handle.answer is not None
            else None
        )
        return {
            "vm": self.vm,
            "state": "done" if self.finished else "waiting",
            "asked_kib": self.asked_kib,
            "rss_before_kib": self.rss_before_kib,
            "rss_after_kib": self.rss_after_kib,
            "returned_kib": rss_drop_kib(self.rss_before_kib, self.rss_after_kib),
            "agent_freed_kib": answer.freed_kib if answer is not None else None,
            "agent_asked_kib": answer.asked_kib if answer is not None else None,
            "stopped": answer.stopped if answer is not None else None,
            "agent_reason": printable(answer.reason) if answer is not None else None,
            "agent_duration_ms": answer.duration_ms if answer is not None else None,
            "answered_after_s": round(answered_s, 3) if answered_s is not None else None,
            "elapsed_s": round(now_mono - self.started_mono, 3),
            "settle_s": self.settle_s,
            "error": self.error,
        }


class ManualYields:
    """The ``ebbctl yield`` requests in progress, at most one per VM (as the channels allow).

    Finished ones are kept ``keep_s`` so a client polling late still gets the answer.
    """

    def __init__(self, settle_s: float = 4.0, deadline_ms: int = 15_000,
                 keep_s: float = 120.0) -> None:
        self.settle_s = settle_s
        self.deadline_ms = deadline_ms
        self.keep_s = keep_s
        self._by_vm: dict[str, ManualYield] = {}

    def start(
        self,
        vm: str,
        kib: int,
        now_mono: float,
        rss_before_kib: int | None,
        request: Callable[[str, int, int], YieldHandle],
    ) -> ManualYield:
        """Send the request (raises :class:`YieldUnavailable` when it cannot be)."""
        self._expire(now_mono)
        handle = request(vm, kib, self.deadline_ms)
        record = ManualYield(
            vm=vm, asked_kib=kib, handle=handle, rss_before_kib=rss_before_kib,
            started_mono=now_mono, settle_s=self.settle_s,
        )
        self._by_vm[vm] = record
        return record

    def get(self, vm: str) -> ManualYield | None:
        return self._by_vm.get(vm)

    def _expire(self, now_mono: float) -> None:
        for vm in [v for v, r in self._by_vm.items()
                   if r.finished and now_mono - r.started_mono > self.keep_s]:
            del self._by_vm[vm]
