"""Requests for an immediate tick, and who may make them how often.

The guest channels (a guest reports a need), the hypervisor (domains came or
went), the control socket and the engine's own pressure probe ask for a tick
here; the engine's loop waits on it. It is built before all of them, so each
is handed it (or one of its methods) when it is made: nobody needs the engine
to exist first.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

#: Reasons kept for the next tick's record (a burst of requests keeps the first ones).
MAX_REASONS = 16
#: Guests remembered for the per-guest limit (VMs come and go; this stays bounded).
MAX_GUESTS = 4096


class TickRequests:
    """The engine's wake-up: reasons for the next tick, and a per-guest limit.

    Any thread may ask; only the engine's thread waits and takes the reasons.
    """

    def __init__(self, interval_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._reasons: list[str] = []
        #: One early tick per guest per this many seconds (the engine's interval).
        self._guest_interval_s = interval_s
        #: When each guest last earned an immediate tick (``clock``), and how many
        #: of its requests were left to the regular tick since.
        self._guest_tick_mono: dict[str, float] = {}
        self._guest_ticks_deferred = 0

    # --- any thread ------------------------------------------------------------------

    def request(self, reason: str) -> None:
        """Tick as soon as possible (a need, pressure, domains changed, a control command)."""
        with self._lock:
            if len(self._reasons) < MAX_REASONS:
                self._reasons.append(reason)
        self._event.set()

    def on_need(self, vm: str) -> None:
        """For the channels: a guest asked for memory.

        One guest earns at most one immediate tick per interval: a guest that
        flaps its need (or says hello and need again and again) is served by the
        regular ticks, and cannot make the engine tick at the rate it sends frames.
        """
        now = self._clock()
        with self._lock:
            interval_s = self._guest_interval_s
            last = self._guest_tick_mono.get(vm)
            if last is not None and now - last < interval_s:
                self._guest_ticks_deferred += 1
                return
            if len(self._guest_tick_mono) >= MAX_GUESTS:
                horizon = now - interval_s
                self._guest_tick_mono = {
                    k: t for k, t in self._guest_tick_mono.items() if t > horizon
                }
            self._guest_tick_mono[vm] = now
        self.request(f"need from {vm}")

    def on_domains_changed(self, names: frozenset[str]) -> None:
        """For the hypervisor: VMs started or stopped."""
        self.request("domains changed")

    def wake(self) -> None:
        """Wake the waiting loop without a reason (shutdown)."""
        self._event.set()

    # --- the engine's thread --------------------------------------------------------------

    def pending(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout_s: float) -> bool:
        return self._event.wait(timeout_s)

    def clear(self) -> None:
        self._event.clear()

    def set_guest_interval(self, interval_s: float) -> None:
        """The engine's interval, as of its current tick."""
        with self._lock:
            self._guest_interval_s = interval_s

    def take_reasons(self) -> list[str]:
        """The reasons for this tick, including the needs left to it."""
        with self._lock:
            reasons, self._reasons = self._reasons, []
            if self._guest_ticks_deferred:
                # Needs that came too soon after the guest's last immediate tick are
                # served now, by this tick.
                reasons.append(
                    f"{self._guest_ticks_deferred} need(s) left to this tick "
                    "(at most one immediate tick per guest per interval)"
                )
                self._guest_ticks_deferred = 0
        return reasons
