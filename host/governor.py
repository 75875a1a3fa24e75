"""The governor: safety limits that stand between any policy and the hypervisor.

Every tick, after the policy has proposed balloon targets, the governor decides
what is actually asked of each guest, whatever the policy said:

- ``floor`` / ``ceiling``: a target is kept within [floor, maximum memory]; the
  floor comes from the VM's settings (ebb metadata floor, memtune
  min_guarantee) or ``default_floor_kib``, never below ``min_floor_kib``.
  A guest found below its floor is given memory back up to the floor.
- ``max_step``: a guest changes by at most a share of its maximum memory per
  ``step_interval_s`` of the governor's clock (``max_inflate_share`` when taking,
  ``max_deflate_share`` when giving): a budget per guest that refills with time,
  up to one interval's worth, so ticks that come early (a guest's need, host
  pressure) cannot take more than ticks at the regular interval would.
  What a guest's agent offers (a report at most ``offer_max_age_s`` old) may be
  taken at once, even when it is more: the guest said it does not need it
  (``take_offers_at_once``, on by default).
- ``needy`` / ``stalling``: no memory is taken from a guest that reports a need
  or memory stalls (PSI, major faults, swap-in above thresholds).
- ``rollback``: when, within ``rollback_window_s`` after taking memory, the
  guest's PSI, major faults or swap-in rise past a threshold, the memory taken
  is given back and the guest is left alone for a backoff that grows with each
  rollback (``backoff``).
- ``stuck`` / ``uncooperative`` (Xen squeezed's rule): a guest that makes no
  progress toward its target for ``stuck_after_s`` is stuck, for
  ``uncooperative_after_s`` uncooperative; neither is asked for more memory,
  and an uncooperative guest's request is cancelled (target = what it has).
  Only targets that reached the guest count (see below).

Every decision names the rule that decided it, a sentence for people and the
inputs it used, for logs, the journal and ``ebbctl explain``. The governor is
pure: the clock is a parameter, nothing here does I/O.

A tick is two calls. :meth:`Governor.decide` returns the decisions and changes
nothing the governor keeps; :meth:`Governor.commit` then takes the outcome of
each target (:class:`~ebb.host.kinds.Outcome`) and keeps, per guest, what the
tick observed (progress, harm, budgets refilled) and, for a target that
reached the guest, what the decision did (the target to watch, the inflation
to judge, the step budget spent). A target that never reached the guest (dry
run, libvirt refused, VM gone) is not held against it: its balloon not moving
toward it is no sign of anything.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ebb.host.kinds import ActionKind, GuestState, Outcome
from ebb.host.units import fmt_kib as fmt_kib  # re-exported: host/yielding.py imports it here

LOG = logging.getLogger(__name__)

# Decision kinds and guest states, by their short names.
INFLATE = ActionKind.INFLATE
DEFLATE = ActionKind.DEFLATE
HOLD = ActionKind.HOLD
ROLLBACK = ActionKind.ROLLBACK
OK = GuestState.OK
BACKOFF = GuestState.BACKOFF
STUCK = GuestState.STUCK
UNCOOPERATIVE = GuestState.UNCOOPERATIVE


@dataclass(frozen=True)
class GovernorConfig:
    """Limits the governor enforces. Shares are of the guest's maximum memory."""

    default_floor_kib: int = 512 * 1024
    min_floor_kib: int = 128 * 1024
    max_inflate_share: float = 0.10
    max_deflate_share: float = 0.25
    min_change_kib: int = 1024
    take_offers_at_once: bool = True
    offer_max_age_s: float = 10.0
    stall_psi_some_avg10: float = 10.0
    stall_major_fault_rate: float = 1000.0
    stall_swap_in_rate_kib: float = 1024.0
    rollback_window_s: float = 30.0
    rollback_psi_rise: float = 10.0
    rollback_major_fault_rise: float = 200.0
    rollback_swap_in_rise_kib: float = 512.0
    backoff_initial_s: float = 60.0
    backoff_growth: float = 2.0
    backoff_max_s: float = 1800.0
    backoff_reset_s: float = 1800.0
    stuck_after_s: float = 5.0
    uncooperative_after_s: float = 20.0
    uncooperative_retry_s: float = 300.0
    progress_min_kib: int = 1024
    #: The time over which ``max_inflate_share`` / ``max_deflate_share`` may be used
    #: once (the policy interval): the rate limits hold per second, not per tick.
    step_interval_s: float = 2.0
    #: Share of host memory the host keeps: guests are given memory (beyond their
    #: floors and rollbacks) only from freeable host memory above it.
    host_reserve_share: float = 0.10

    def __post_init__(self) -> None:
        problems = []
        if not 0 < self.max_inflate_share <= 1:
            problems.append("max_inflate_share must be in (0, 1]")
        if not 0 < self.max_deflate_share <= 1:
            problems.append("max_deflate_share must be in (0, 1]")
        if self.backoff_growth < 1:
            problems.append("backoff_growth must be at least 1")
        if not 0 < self.stuck_after_s <= self.uncooperative_after_s:
            problems.append("need 0 < stuck_after_s <= uncooperative_after_s")
        if not 0 <= self.host_reserve_share < 1:
            problems.append("host_reserve_share must be in [0, 1)")
        if not 0 < self.step_interval_s < float("inf"):
            problems.append("step_interval_s must be > 0 and finite")
        if self.min_floor_kib < 0 or self.default_floor_kib < 0:
            problems.append("floors must not be negative")
        if problems:
            raise ValueError("governor config: " + "; ".join(problems))


@dataclass(slots=True)
class GuestView:
    """What the governor knows of one guest this tick (KiB, seconds, per-second rates).

    ``floor_kib`` is the VM's floor: ebbd and replays pass it already resolved
    by :func:`guest_floor_kib` (resolving it again changes nothing); None stands
    for ``default_floor_kib``. Rates and PSI are None when unknown;
    ``swap_in_rate_kib`` is KiB per second.
    """

    name: str
    balloon_cur_kib: int
    balloon_max_kib: int
    floor_kib: Optional[int] = None
    agent_connected: bool = False
    report_age_s: Optional[float] = None
    need_kib: int = 0
    offer_kib: int = 0
    psi_some_avg10: Optional[float] = None
    psi_full_avg10: Optional[float] = None
    major_fault_rate: Optional[float] = None
    swap_in_rate_kib: Optional[float] = None


@dataclass(slots=True)
class Decision:
    """What to do with one guest this tick, and why.

    ``target_kib`` None means "leave the balloon alone". ``rule`` is a short
    stable name (``policy``, ``floor``, ``ceiling``, ``max_step``, ``needy``,
    ``stalling``, ``backoff``, ``stuck``, ``uncooperative``, ``rollback``,
    ``too_small``, ``no_proposal``, ``at_target``, ``unknown_max``); ``reason``
    is a sentence; ``inputs`` holds the figures used.
    """

    vm: str
    target_kib: Optional[int]
    kind: ActionKind
    rule: str
    reason: str
    inputs: Dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)

    @property
    def guest_state(self) -> GuestState:
        """The guest's state as of this decision (``ok`` when the guest was not judged)."""
        return GuestState(self.inputs.get("state", GuestState.OK))


@dataclass(slots=True)
class _Inflation:
    last_at_s: float
    restore_kib: int
    psi_some_avg10: Optional[float]
    major_fault_rate: Optional[float]
    swap_in_rate_kib: Optional[float]


@dataclass(slots=True)
class _State:
    target_kib: Optional[int] = None
    direction: int = 0
    progress_cur_kib: int = 0
    progress_at_s: float = 0.0
    status: GuestState = OK
    uncooperative_since_s: float = 0.0
    inflation: Optional[_Inflation] = None
    backoff_until_s: float = 0.0
    next_backoff_s: float = 0.0
    last_rollback_s: Optional[float] = None
    #: What may still be taken / given, in steps (1.0 = one interval's worth), and
    #: when the budgets were last refilled (None: never, they start full).
    take_budget: float = 1.0
    give_budget: float = 1.0
    budget_at_s: Optional[float] = None

    def copy(self) -> _State:
        # Spelled out: dataclasses.replace costs a tick dearly at 1000 guests.
        return _State(
            self.target_kib, self.direction, self.progress_cur_kib, self.progress_at_s,
            self.status, self.uncooperative_since_s, self.inflation, self.backoff_until_s,
            self.next_backoff_s, self.last_rollback_s, self.take_budget, self.give_budget,
            self.budget_at_s,
        )


@dataclass(slots=True)
class _Step:
    """A decided tick not yet committed: each guest's state as the decision left it,
    and (for decisions that set a target) as it was before the decision."""

    now_s: float
    decided: Dict[str, _State]
    observed: Dict[str, _State]
    restarted: bool


def all_applied(decisions: Sequence[Decision]) -> Dict[str, Outcome]:
    """Every target of ``decisions`` as applied: what :meth:`Governor.commit` is told
    where nothing is really applied but the run goes on as if it were (a replay,
    ``ebbctl policy eval``, the benchmark)."""
    return {d.vm: Outcome.APPLIED for d in decisions if d.target_kib is not None}


def guest_floor_kib(own_floor_kib: Optional[int], max_kib: int, config: GovernorConfig) -> int:
    """The floor of a guest: the one rule, for the governor and the policy's ``balloon_min``.

    ``own_floor_kib`` is the VM's own (ebb metadata ``floor_mib``, memtune
    ``min_guarantee``, an ``ebbctl floor`` override), None for
    ``config.default_floor_kib``; never below ``config.min_floor_kib``, never above
    the VM's maximum memory.
    """
    floor = own_floor_kib if own_floor_kib is not None else config.default_floor_kib
    floor = max(floor, config.min_floor_kib)
    return max(0, min(floor, max_kib))


class Governor:
    """Applies the limits every tick; keeps per-guest state between ticks."""

    def __init__(self, config: Optional[GovernorConfig] = None) -> None:
        self.config = config or GovernorConfig()
        self._states: Dict[str, _State] = {}
        self._now_s = 0.0
        self._restart_timers = False
        self._spare_left_kib: Optional[int] = None
        #: The last decide(), until commit() says what became of it.
        self._pending: Optional[_Step] = None
        self._observed: Optional[_State] = None

    # -- queries

    def guest_state(self, vm: str) -> GuestState:
        """``ok``, ``backoff``, ``stuck`` or ``uncooperative`` as of the last commit()."""
        st = self._states.get(vm)
        if st is None:
            return OK
        if st.status != OK:
            return st.status
        if self._now_s < st.backoff_until_s:
            return BACKOFF
        return OK

    def backoff_remaining_s(self, vm: str) -> float:
        """Seconds before this guest may be asked for memory again (0 when it may)."""
        st = self._states.get(vm)
        return max(0.0, st.backoff_until_s - self._now_s) if st else 0.0

    def floor_for(self, guest: GuestView) -> int:
        """The floor the governor enforces for a guest (never above its maximum)."""
        return guest_floor_kib(guest.floor_kib, guest.balloon_max_kib, self.config)

    def restart_timers(self) -> None:
        """Progress timers start again at the next committed tick (safe from any thread).

        For a resume after a pause: while nothing was applied, a guest had no
        reason to move, so the time before is not held against it. Outstanding
        targets stay; a stuck guest is ok again and gets its full
        ``stuck_after_s`` / ``uncooperative_after_s``. An uncooperative guest
        stays so until ``uncooperative_retry_s`` has passed, as before.
        """
        self._restart_timers = True

    # -- the decision

    def decide(
        self,
        now_s: float,
        guests: Sequence[GuestView],
        proposed_targets: Mapping[str, Optional[int]],
        host_spare_kib: Optional[int] = None,
    ) -> List[Decision]:
        """One decision per guest, in the order given. ``now_s`` is a monotonic clock.

        ``host_spare_kib``, when known, is the host memory that may be given to guests
        this tick (freeable memory above the host's reserve): what the policy gives
        beyond it is not given (floors and rollbacks excepted).
        """
        self._spare_left_kib = host_spare_kib
        restart = self._restart_timers
        decided: Dict[str, _State] = {}
        observed: Dict[str, _State] = {}
        decisions = []
        for guest in guests:
            kept = self._states.get(guest.name)
            if kept is None:
                st = _State(next_backoff_s=self.config.backoff_initial_s)
            else:
                st = kept.copy()
                if restart:
                    st.progress_at_s = now_s
                    st.progress_cur_kib = int(guest.balloon_cur_kib)
                    if st.status == STUCK:
                        st.status = OK
            self._observed = None
            decisions.append(self._decide_one(now_s, guest, st,
                                              proposed_targets.get(guest.name)))
            decided[guest.name] = st
            if self._observed is not None:
                observed[guest.name] = self._observed
        self._pending = _Step(now_s, decided, observed, restart)
        return decisions

    def commit(self, outcomes: Mapping[str, Outcome]) -> None:
        """What became of the last :meth:`decide`'s targets: ``outcomes`` maps a VM to
        the outcome of its balloon target (a decision without a target needs none).

        A target whose outcome is missing or did not reach the guest
        (:attr:`Outcome.reached_guest`) leaves that guest as the tick observed it,
        as if the decision had not been made; every other guest keeps what its
        decision did. Guests not in the last decide() are forgotten. Without a
        decide() since the last commit, nothing happens.
        """
        step, self._pending = self._pending, None
        if step is None:
            return
        states = step.decided
        for vm, before in step.observed.items():
            outcome = outcomes.get(vm)
            if outcome is None or not Outcome(outcome).reached_guest:
                states[vm] = before
        self._states = states
        self._now_s = step.now_s
        if step.restarted:
            self._restart_timers = False

    def _decide_one(
        self, now_s: float, g: GuestView, st: _State, proposed: Optional[float]
    ) -> Decision:
        """The decision for one guest; ``st`` (a copy of its state) is changed to what
        the tick observed and the decision did (``self._observed``: the state before
        the decision, when it sets a target)."""
        cfg = self.config
        self._refill_budgets(now_s, st)
        cur = int(g.balloon_cur_kib)
        ceiling = int(g.balloon_max_kib)
        floor = self.floor_for(g)
        inputs: Dict[str, Any] = {
            "balloon_cur_kib": cur,
            "balloon_max_kib": ceiling,
            "floor_kib": floor,
            "proposed_kib": None if proposed is None else int(proposed),
            "need_kib": g.need_kib,
            "psi_some_avg10": g.psi_some_avg10,
            "major_fault_rate": g.major_fault_rate,
            "swap_in_rate_kib": g.swap_in_rate_kib,
        }

        def decision(target: Optional[int], kind: ActionKind, rule: str, reason: str) -> Decision:
            if st.status != OK:
                inputs["state"] = st.status
            else:
                inputs["state"] = BACKOFF if now_s < st.backoff_until_s else OK
            return Decision(g.name, target, kind, str(rule), reason, inputs)

        if ceiling <= 0:
            return decision(None, HOLD, "unknown_max", "maximum memory unknown; nothing is changed")

        cancel = None
        if st.target_kib is not None or st.status != OK:
            cancel = self._track_progress(now_s, st, g, cur)
        if cancel is not None:
            target = min(max(cur, floor), ceiling)
            st.target_kib = None
            return decision(
                target,
                HOLD,
                UNCOOPERATIVE,
                f"no progress toward {fmt_kib(cancel)} for {now_s - st.progress_at_s:.0f} s: "
                f"uncooperative; request cancelled at {fmt_kib(target)}, no inflation for "
                f"{cfg.uncooperative_retry_s:.0f} s",
            )

        rollback = None
        if st.inflation is not None or st.last_rollback_s is not None:
            rollback = self._check_rollback(now_s, st, g, cur, floor, ceiling)
        # What follows is this tick's decision; what came before was observed
        # (progress, harm) and stays even when the decision is not applied. Each
        # path that sets a target keeps that observed state first (``_observed``);
        # a hold changes nothing from here on, so it needs no copy.
        if rollback is not None:
            target, why = rollback
            self._observed = st.copy()
            self._set_target(now_s, st, cur, target)
            return decision(target, ROLLBACK, ROLLBACK, why)

        if proposed is None:
            if cur < floor:
                self._observed = st.copy()
                self._set_target(now_s, st, cur, floor)
                return decision(
                    floor,
                    DEFLATE,
                    "floor",
                    f"below its floor ({fmt_kib(cur)} < {fmt_kib(floor)}): memory given back",
                )
            return decision(None, HOLD, "no_proposal", "the policy set no target")

        want = int(proposed)
        target = want
        rule = "policy"
        notes: List[str] = []
        if target > ceiling:
            target, rule = ceiling, "ceiling"
            notes.append(f"capped at the maximum {fmt_kib(ceiling)}")
        if target < floor:
            target, rule = floor, "floor"
            notes.append(f"raised to the floor {fmt_kib(floor)}")

        if target < cur:
            blocked = self._inflation_blocker(now_s, st, g)
            if blocked is not None:
                block_rule, why = blocked
                return decision(None, HOLD, block_rule, f"policy asked {fmt_kib(want)}; {why}")
            full_step = int(cfg.max_inflate_share * ceiling)
            # What an earlier tick asked for and the guest has not given yet was paid
            # for then: asking for it again costs nothing.
            asked = min(full_step, self._outstanding_kib(st, cur, -1))
            step = min(full_step, asked + int(full_step * st.take_budget))
            offered = self._fresh_offer_kib(g)
            if offered > step:
                step = offered
            if cur - target > step:
                target, rule = max(cur - step, floor), "max_step"
                if step == offered:
                    notes.append(f"at most {fmt_kib(step)} taken now (what the guest offers)")
                else:
                    notes.append(self._step_note("taken", step, full_step))
            if cur - target < cfg.min_change_kib and rule == "max_step":
                return decision(None, HOLD, "max_step",
                                f"policy asked {fmt_kib(want)}; " + self._budget_spent("taken"))
            if cur - target < cfg.min_change_kib:
                return decision(
                    None,
                    HOLD,
                    "too_small",
                    f"policy asked {fmt_kib(want)}; "
                    f"a change of {fmt_kib(cur - target)} is too small",
                )
            self._observed = st.copy()
            if st.inflation is None:
                st.inflation = _Inflation(
                    now_s, cur, g.psi_some_avg10, g.major_fault_rate, g.swap_in_rate_kib
                )
            else:
                # A new record, not a change to the old one: ``_observed`` holds the old.
                st.inflation = replace(st.inflation, last_at_s=now_s)
            self._spend(st, "take_budget", cur - target - asked, full_step)
            self._set_target(now_s, st, cur, target)
            return decision(
                target,
                INFLATE,
                rule,
                f"take {fmt_kib(cur - target)} (policy asked {fmt_kib(want)})"
                + ("; " + "; ".join(notes) if notes else ""),
            )

        if target > cur:
            full_step = int(cfg.max_deflate_share * ceiling)
            asked = min(full_step, self._outstanding_kib(st, cur, 1))
            step = min(full_step, asked + int(full_step * st.give_budget))
            limit = max(cur + step, floor)
            if target > limit:
                target, rule = limit, "max_step"
                notes.append(self._step_note("given", step, full_step))
            spare = self._spare_left_kib
            if spare is not None and target > max(cur, floor) + spare:
                target, rule = max(cur, floor) + spare, "host_reserve"
                notes.append(f"only {fmt_kib(spare)} of host memory is free above its reserve")
            if target - cur < cfg.min_change_kib and cur >= floor and rule == "host_reserve":
                return decision(None, HOLD, "host_reserve", (
                    f"policy asked {fmt_kib(want)}; the host has no memory free above its "
                    f"reserve ({cfg.host_reserve_share:.0%} of its memory) to give"))
            if target - cur < cfg.min_change_kib and cur >= floor and rule == "max_step":
                return decision(None, HOLD, "max_step",
                                f"policy asked {fmt_kib(want)}; " + self._budget_spent("given"))
            if target - cur < cfg.min_change_kib and cur >= floor:
                return decision(
                    None,
                    HOLD,
                    "too_small",
                    f"policy asked {fmt_kib(want)}; "
                    f"a change of {fmt_kib(target - cur)} is too small",
                )
            self._observed = st.copy()
            self._spend(st, "give_budget", target - max(cur, floor) - asked, full_step)
            if self._spare_left_kib is not None:
                self._spare_left_kib = max(0, self._spare_left_kib - (target - max(cur, floor)))
            self._set_target(now_s, st, cur, target)
            return decision(
                target,
                DEFLATE,
                rule,
                f"give {fmt_kib(target - cur)} (policy asked {fmt_kib(want)})"
                + ("; " + "; ".join(notes) if notes else ""),
            )

        return decision(None, HOLD, "at_target", f"already at {fmt_kib(cur)}")

    # -- rate budgets

    def _refill_budgets(self, now_s: float, st: _State) -> None:
        """Budgets grow by one step per ``step_interval_s`` elapsed, up to one step."""
        if st.budget_at_s is not None:
            gained = max(0.0, now_s - st.budget_at_s) / self.config.step_interval_s
            st.take_budget = min(1.0, st.take_budget + gained)
            st.give_budget = min(1.0, st.give_budget + gained)
        st.budget_at_s = now_s

    @staticmethod
    def _outstanding_kib(st: _State, cur: int, direction: int) -> int:
        """How far the last target, still in force, is from ``cur`` in ``direction``."""
        if st.target_kib is None or st.direction != direction:
            return 0
        return max(0, (st.target_kib - cur) * direction)

    @staticmethod
    def _spend(st: _State, budget: str, kib: int, full_step_kib: int) -> None:
        if full_step_kib <= 0 or kib <= 0:
            return
        left = getattr(st, budget) - kib / full_step_kib
        setattr(st, budget, max(0.0, left))

    def _budget_spent(self, verb: str) -> str:
        return (f"what may be {verb} per {self.config.step_interval_s:g} s was used by the "
                "last ticks: nothing more now")

    def _step_note(self, verb: str, step_kib: int, full_step_kib: int) -> str:
        interval = self.config.step_interval_s
        if step_kib >= full_step_kib:
            return f"at most {fmt_kib(step_kib)} {verb} per {interval:g} s"
        return (f"at most {fmt_kib(step_kib)} {verb} now ({fmt_kib(full_step_kib)} per "
                f"{interval:g} s, part used by the last ticks)")

    # -- rules

    def _fresh_offer_kib(self, g: GuestView) -> int:
        """What the guest's agent offers now; 0 without an agent or with an old report."""
        age = g.report_age_s
        if (not self.config.take_offers_at_once or not g.agent_connected or age is None
                or age > self.config.offer_max_age_s):
            return 0
        return max(0, int(g.offer_kib))

    def _inflation_blocker(
        self, now_s: float, st: _State, g: GuestView
    ) -> Optional[Tuple[str, str]]:
        cfg = self.config
        if g.need_kib > 0:
            return "needy", f"the guest reports it needs {fmt_kib(g.need_kib)}: nothing is taken"
        stall = self.stall_reason(g)
        if stall is not None:
            return "stalling", f"the guest is stalling ({stall}): nothing is taken"
        if st.status == UNCOOPERATIVE:
            return (
                UNCOOPERATIVE,
                "the guest did not cooperate with earlier requests: nothing is taken",
            )
        if st.status == STUCK:
            return (
                STUCK,
                "the guest makes no progress toward its last target: nothing more is taken",
            )
        if now_s < st.backoff_until_s:
            return BACKOFF, (
                f"backing off after a rollback for {st.backoff_until_s - now_s:.0f} s more"
            )
        del cfg
        return None

    def stall_reason(self, g: GuestView) -> Optional[str]:
        """Why the guest counts as stalling, or None."""
        cfg = self.config
        if g.psi_some_avg10 is not None and g.psi_some_avg10 >= cfg.stall_psi_some_avg10:
            return f"memory PSI some {g.psi_some_avg10:.1f}% >= {cfg.stall_psi_some_avg10:g}%"
        if g.major_fault_rate is not None and g.major_fault_rate >= cfg.stall_major_fault_rate:
            return f"{g.major_fault_rate:.0f} major faults/s >= {cfg.stall_major_fault_rate:g}"
        if g.swap_in_rate_kib is not None and g.swap_in_rate_kib >= cfg.stall_swap_in_rate_kib:
            limit = fmt_kib(cfg.stall_swap_in_rate_kib)
            return f"swap-in {fmt_kib(g.swap_in_rate_kib)}/s >= {limit}/s"
        return None

    def _set_target(self, now_s: float, st: _State, cur: int, target: int) -> None:
        direction = -1 if target < cur else 1
        if st.target_kib is None or direction != st.direction:
            st.progress_at_s = now_s
            st.progress_cur_kib = cur
        st.direction = direction
        st.target_kib = target

    def _track_progress(self, now_s: float, st: _State, g: GuestView, cur: int) -> Optional[int]:
        """Update stuck/uncooperative state.

        Returns the abandoned target when the guest turns uncooperative, else None.
        """
        cfg = self.config
        if (
            st.status == UNCOOPERATIVE
            and now_s - st.uncooperative_since_s >= cfg.uncooperative_retry_s
        ):
            st.status = OK
        if st.target_kib is None:
            if st.status == STUCK:
                st.status = OK
            return None
        if abs(cur - st.target_kib) <= cfg.progress_min_kib:
            st.target_kib = None
            if st.status == STUCK:
                st.status = OK
            return None
        moved = (cur - st.progress_cur_kib) * st.direction
        if moved >= cfg.progress_min_kib:
            st.progress_cur_kib = cur
            st.progress_at_s = now_s
            if st.status == STUCK:
                st.status = OK
            return None
        idle_s = now_s - st.progress_at_s
        if idle_s >= cfg.uncooperative_after_s:
            if st.status != UNCOOPERATIVE:
                LOG.info("guest %s made no progress for %.0f s: uncooperative", g.name, idle_s)
            abandoned = st.target_kib
            st.status = UNCOOPERATIVE
            st.uncooperative_since_s = now_s
            st.inflation = None
            return abandoned
        if idle_s >= cfg.stuck_after_s and st.status == OK:
            st.status = STUCK
        return None

    def _check_rollback(
        self, now_s: float, st: _State, g: GuestView, cur: int, floor: int, ceiling: int
    ) -> Optional[Tuple[int, str]]:
        cfg = self.config
        if st.last_rollback_s is not None and now_s - st.last_rollback_s >= cfg.backoff_reset_s:
            st.next_backoff_s = cfg.backoff_initial_s
            st.last_rollback_s = None
        inf = st.inflation
        if inf is None:
            return None
        if now_s - inf.last_at_s > cfg.rollback_window_s:
            st.inflation = None
            return None
        hurt: List[str] = []
        if (
            g.psi_some_avg10 is not None
            and g.psi_some_avg10 - (inf.psi_some_avg10 or 0.0) > cfg.rollback_psi_rise
        ):
            hurt.append(f"PSI some {inf.psi_some_avg10 or 0.0:.1f}% -> {g.psi_some_avg10:.1f}%")
        if (
            g.major_fault_rate is not None
            and g.major_fault_rate - (inf.major_fault_rate or 0.0) > cfg.rollback_major_fault_rise
        ):
            hurt.append(
                f"major faults {inf.major_fault_rate or 0.0:.0f}/s -> {g.major_fault_rate:.0f}/s"
            )
        if (
            g.swap_in_rate_kib is not None
            and g.swap_in_rate_kib - (inf.swap_in_rate_kib or 0.0) > cfg.rollback_swap_in_rise_kib
        ):
            hurt.append(
                f"swap-in {fmt_kib(inf.swap_in_rate_kib or 0.0)}/s -> "
                f"{fmt_kib(g.swap_in_rate_kib)}/s"
            )
        if not hurt:
            return None
        step = int(cfg.max_deflate_share * ceiling)
        target = min(inf.restore_kib, ceiling, max(cur + step, floor))
        target = max(target, floor, cur)
        backoff = st.next_backoff_s
        st.backoff_until_s = now_s + backoff
        st.next_backoff_s = min(cfg.backoff_max_s, backoff * cfg.backoff_growth)
        st.last_rollback_s = now_s
        st.inflation = None
        why = (
            f"taking memory hurt ({', '.join(hurt)}): back to {fmt_kib(target)}, "
            f"no inflation for {backoff:.0f} s"
        )
        LOG.info("guest %s: rollback: %s", g.name, why)
        return target, why
