"""Running yields: the host's requests and the agent's own background yields.

Joins the decisions of ``yielding`` (how much next, when to stop) to the writes of
``reclaim`` and the samples of ``collect``. A yield runs one step (one write of at
most ``step_kib``) per call of :meth:`Yielder.step`, so the agent's loop answers the
host between steps; when a yield ends, ``step`` returns the ``yielded`` message to
send. docs/agent.md ("Yield") describes the behaviour.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

from ebb.protocol.messages import Yielded

from .collect import CollectError, MemoryCollector, MemorySample
from .reclaim import Compactor, Reclaimer, ReclaimSupport
from .yielding import (
    MIB_KIB,
    STOP_DISABLED,
    STOP_DONE,
    STOP_ERROR,
    STOP_NOTHING_COLD,
    ReclaimLimits,
    ReclaimWindow,
    YieldConfig,
    YieldProgress,
    after_step,
    background_yield_kib,
    file_cache_kib,
    next_step,
    per_minute_limit_kib,
    start_yield,
)

LOG = logging.getLogger(__name__)

#: A yield that freed at least this much is followed by a compaction of the guest's
#: memory (free page reporting returns only whole 2 MiB blocks; see Compactor).
COMPACT_MIN_FREED_KIB = 16 * MIB_KIB
#: At most one compaction in this many seconds: it costs the guest CPU time.
COMPACT_INTERVAL_S = 30.0
#: A host request that arrives this soon after a background yield ended was sized
#: from an offer sent before it (the new offer goes with the next report, the policy
#: reads it at the next tick): what the background yield took counts against the
#: request, so the same cold cache is not given twice and the hot cache kept.
BACKGROUND_CREDIT_S = 6.0


@dataclass
class _Job:
    progress: YieldProgress
    request_id: Optional[int]
    last: MemorySample
    #: The agent's own yield (a host request may also come without a request_id).
    background: bool = False

    @property
    def what(self) -> str:
        if self.background:
            return "background yield"
        return f"yield for host request {self.request_id}"


class Yielder:
    """The agent's yields: one at a time, a step per :meth:`step` call.

    ``support`` says whether (and how) the kernel can be asked; without support,
    or with ``limits.enabled`` off, nothing is ever written and requests are
    answered at once with ``stopped`` = ``disabled``.
    """

    def __init__(
        self,
        support: ReclaimSupport,
        collector: MemoryCollector,
        config: YieldConfig,
        limits: ReclaimLimits,
        reclaimer: Optional[Reclaimer] = None,
        clock: Callable[[], float] = time.monotonic,
        compactor: Optional[Compactor] = None,
    ) -> None:
        self.support = support
        self.collector = collector
        self.config = config
        self.limits = limits
        self._clock = clock
        if reclaimer is None and support.path is not None:
            reclaimer = Reclaimer(support.path, support.swappiness_arg)
        self._reclaimer = reclaimer
        self._compactor = compactor
        self._last_compact_s: Optional[float] = None
        self._window = ReclaimWindow()
        self._job: Optional[_Job] = None
        self._last_background_s: Optional[float] = None
        #: The last background yield: when it ended and how much page cache it took.
        self._background_taken: Optional[Tuple[float, int]] = None
        #: The host's last ``pressure`` level (0 until it sends one).
        self.pressure_level = 0

    @property
    def capable(self) -> bool:
        """Whether the agent announces ``yield``: supported, and not turned off."""
        return self.limits.enabled and self.support.supported and self._reclaimer is not None

    @property
    def why_not(self) -> str:
        """Why the agent cannot yield, for people ("" when it can)."""
        if not self.limits.enabled:
            return "turned off (--no-yield or yield = false)"
        return self.support.why_not

    @property
    def busy(self) -> bool:
        """Whether a yield is under way (the agent calls :meth:`step` at once)."""
        return self._job is not None

    def set_pressure(self, level: int, reason: str) -> None:
        if level != self.pressure_level:
            LOG.info("host memory pressure %d (was %d): %s", level, self.pressure_level, reason)
        self.pressure_level = level

    def request(self, kib: int, request_id: Optional[int],
                deadline_ms: Optional[int]) -> List[Yielded]:
        """Start a yield the host asked for; returns messages to send now.

        A yield already under way ends first (its answer is sent); a yield that
        cannot run is answered at once.
        """
        out: List[Yielded] = []
        if self._job is not None:
            out.append(self._finish(self._job, self._sample_or(self._job.last), STOP_DONE,
                                    "ended early: the host asked for another yield"))
        if not self.capable:
            out.append(Yielded(asked_kib=0, freed_kib=0, cache_before_kib=0, cache_after_kib=0,
                               duration_ms=0, stopped=STOP_DISABLED,
                               reason=self.why_not[:256], request_id=request_id))
            return out
        credit_kib = self._take_background_credit()
        if credit_kib:
            LOG.info("host request %s for %d MiB: %d MiB of it were just yielded by a "
                     "background yield", request_id, kib // MIB_KIB, credit_kib // MIB_KIB)
            if kib - credit_kib < MIB_KIB:
                out.append(self._credited(kib, credit_kib, request_id))
                return out
            kib -= credit_kib
        deadline_s = deadline_ms / 1000.0 if deadline_ms is not None else None
        started = self._start(kib, request_id, deadline_s)
        if started is not None:
            out.append(started)
        return out

    def background(self, now_s: float, cold_kib: int) -> None:
        """Start a background yield of ``cold_kib`` if the host is short and it is due."""
        if self._job is not None or not self.capable:
            return
        kib = background_yield_kib(self.pressure_level, cold_kib, now_s, self._last_background_s,
                                   self.config, self.limits)
        if kib > 0:
            self._last_background_s = now_s
            LOG.debug("host pressure %d: yielding %d KiB of cold cache", self.pressure_level, kib)
            self._start(kib, None, None, background=True)

    def step(self) -> Optional[Yielded]:
        """One step of the yield under way; its ``yielded`` message once it ends."""
        job = self._job
        if job is None:
            return None
        try:
            sample = self.collector.sample()
        except CollectError as err:
            return self._finish(job, job.last, STOP_ERROR, str(err))
        job.last = sample
        now_s = self._clock()
        allowance = self._window.allowance_kib(
            now_s, per_minute_limit_kib(sample.mem_total_kib, self.limits))
        decision = next_step(job.progress, sample, now_s, self.config, self.limits, allowance)
        if decision.stop is not None:
            return self._finish(job, sample, decision.stop, decision.reason)
        assert self._reclaimer is not None  # a job only starts when capable
        started_s = self._clock()
        try:
            self._reclaimer.request(decision.kib, anon=self.limits.anon)
        except OSError as err:
            self._window.add(now_s, decision.kib)
            if err.errno == errno.EAGAIN:
                # The kernel tried and could not reclaim that much: nothing cheap is left.
                return self._finish(job, self._sample_or(sample), STOP_NOTHING_COLD,
                                    f"the kernel could not reclaim {decision.kib} KiB more")
            return self._finish(job, self._sample_or(sample), STOP_ERROR,
                                f"writing {self._reclaimer.path}: {err}")
        step_s = self._clock() - started_s
        self._window.add(now_s, decision.kib)
        LOG.debug("%s: asked %d KiB in %.3f s", job.what, decision.kib, step_s)
        job.progress = after_step(job.progress, decision.kib, file_cache_kib(sample), step_s)
        return None

    # --- helpers -----------------------------------------------------------------------

    def _take_background_credit(self) -> int:
        """KiB a background yield took within ``BACKGROUND_CREDIT_S``, once."""
        taken, self._background_taken = self._background_taken, None
        if taken is None or self._clock() - taken[0] > BACKGROUND_CREDIT_S:
            return 0
        return taken[1]

    def _credited(self, kib: int, credit_kib: int, request_id: Optional[int]) -> Yielded:
        """The answer to a request a background yield has already served."""
        cache_kib = 0
        with contextlib.suppress(CollectError):
            cache_kib = file_cache_kib(self.collector.sample())
        return Yielded(asked_kib=0, freed_kib=0, cache_before_kib=cache_kib,
                       cache_after_kib=cache_kib, duration_ms=0, stopped=STOP_DONE,
                       reason=(f"a background yield took {credit_kib} KiB of page cache just "
                               f"before this request for {kib} KiB")[:256],
                       request_id=request_id)

    def _start(self, kib: int, request_id: Optional[int], deadline_s: Optional[float],
               background: bool = False) -> Optional[Yielded]:
        try:
            sample = self.collector.sample()
        except CollectError as err:
            return Yielded(asked_kib=0, freed_kib=0, cache_before_kib=0, cache_after_kib=0,
                           duration_ms=0, stopped=STOP_ERROR, reason=str(err)[:256],
                           request_id=request_id)
        progress = start_yield(kib, self._clock(), sample, self.limits, deadline_s)
        self._job = _Job(progress, request_id, sample, background)
        return None

    def _sample_or(self, fallback: MemorySample) -> MemorySample:
        try:
            return self.collector.sample()
        except CollectError:
            return fallback

    def _compact_after(self, freed_kib: int) -> None:
        """Compact the guest's memory after a yield that freed enough, at most so often."""
        if self._compactor is None or freed_kib < COMPACT_MIN_FREED_KIB:
            return
        now_s = self._clock()
        if self._last_compact_s is not None and now_s - self._last_compact_s < COMPACT_INTERVAL_S:
            return
        self._last_compact_s = now_s
        try:
            self._compactor.compact()
        except OSError as err:
            LOG.warning("cannot compact memory after a yield (%s: %s); yields go on without",
                        self._compactor.path, err)
            self._compactor = None
            return
        LOG.info("compacted memory in %d ms, so the %d MiB freed reach the host in whole "
                 "blocks", int((self._clock() - now_s) * 1000), freed_kib // MIB_KIB)

    def _finish(self, job: _Job, after: MemorySample, stopped: str, reason: str) -> Yielded:
        self._job = None
        start = job.progress.start
        if job.background:
            self._background_taken = (
                self._clock(), max(0, file_cache_kib(start) - file_cache_kib(after)))
        freed_kib = max(0, after.mem_free_kib - start.mem_free_kib)
        # Before the answer: the host measures the RSS drop from the answer on.
        self._compact_after(freed_kib)
        duration_ms = max(0, int((self._clock() - job.progress.started_s) * 1000))
        msg = Yielded(
            asked_kib=job.progress.asked_kib,
            freed_kib=freed_kib,
            cache_before_kib=file_cache_kib(start),
            cache_after_kib=file_cache_kib(after),
            duration_ms=min(duration_ms, 2**32 - 1),
            stopped=stopped,
            reason=reason[:256],
            request_id=job.request_id,
        )
        LOG.info(
            "%s: asked %d MiB of %d MiB in %d step(s), %d ms; MemFree %d -> %d MiB "
            "(+%d MiB), page cache %d -> %d MiB; stopped: %s (%s)",
            job.what, msg.asked_kib // MIB_KIB, job.progress.target_kib // MIB_KIB,
            job.progress.steps, msg.duration_ms, start.mem_free_kib // MIB_KIB,
            after.mem_free_kib // MIB_KIB, freed_kib // MIB_KIB,
            msg.cache_before_kib // MIB_KIB, msg.cache_after_kib // MIB_KIB, stopped, reason,
        )
        return msg
