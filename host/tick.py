"""One tick, planned: the policy, the stages after it and the governor, as one function.

:func:`plan_tick` is the whole decision of a tick. It takes a :class:`TickInput`
(the policy's input, the governor's clock, the host memory that may be given)
and returns a :class:`TickPlan` (balloon decisions with their reasons, the
policy's controls, its error if it failed). It opens nothing and sends nothing
itself: ebbd's engine (``host/engine.py``), ``ebbctl replay``
(``host/observe/replay.py``), ``ebbctl policy eval --governed``
(``host/ctl/policy.py``) and ``bench/bench_policy.py`` all call it, so what they
decide is the same by construction.

The order inside a tick::

    PolicyInput --evaluate--> proposals + controls
                --stages----> proposals (e.g. no inflation while a yield is awaited)
                --governor--> decisions (floors, steps, rollback, stuck guests)

The policy runner (``SetVar`` values) and the governor keep state between
ticks; both are passed in. The governor only learns what became of its
decisions through :meth:`~ebb.host.governor.Governor.commit`, called by whoever
applies the plan (the engine with the balloon's outcomes; replays and
evaluations with :meth:`TickPlan.all_applied`).

A stage (:class:`TickStage`) reshapes the proposals between the policy and the
governor. The yield stage (:class:`YieldStage`) is ebbd's: it hands the policy's
``yield_kib`` to :class:`~ebb.host.yielding.YieldCoordinator`, which asks the
agents through the channels it was built with, and holds back inflations of
guests whose yield is awaited.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ebb.host.governor import Decision, Governor, GuestView, all_applied
from ebb.host.kinds import Outcome
from ebb.host.policy import PolicyError, PolicyInput
from ebb.host.policy.program import Evaluation


class PolicyEvaluator(Protocol):
    """Evaluates the policy on one tick's input (:class:`~ebb.host.policy.PolicyRunner`)."""

    def evaluate(self, inp: PolicyInput) -> Evaluation: ...


@dataclass(frozen=True)
class TickInput:
    """Everything one tick decides from.

    ``now_s`` is the governor's clock (monotonic seconds: only differences
    count). ``views`` has one :class:`GuestView` per guest of ``policy``, in the
    same order (see :func:`guest_view`). ``host_spare_kib`` is the host memory
    that may be given to guests (freeable above the reserve; see
    :func:`host_spare_kib`), None when unknown. While ``paused`` the policy is
    evaluated (its variables go on) but the governor is not consulted.
    ``claim_notes`` holds, per VM, what the input adapter capped of the guest's
    own claims (offer, need); they are added to its decision's reason.
    """

    now_s: float
    policy: PolicyInput
    views: Sequence[GuestView]
    host_spare_kib: int | None = None
    paused: bool = False
    claim_notes: Mapping[str, Sequence[str]] = field(default_factory=dict)

    def newest_samples(self) -> dict[str, Mapping[str, Any]]:
        """Each guest's newest policy sample, by VM name."""
        return {g.name: g.latest for g in self.policy.guests}


@dataclass
class TickPlan:
    """What a tick decided: balloon decisions, the policy's controls, its error."""

    decisions: list[Decision]
    #: ``{"host": {knob: value}, "guests": {VM: {control: value}}}``; empty when
    #: the policy failed (only the governor's own safety moves apply then).
    controls: dict[str, Any]
    #: The policy's targets after the stages, as the governor was given them.
    proposed: dict[str, int | None]
    policy_error: PolicyError | None = None
    #: Lines the policy printed with ``(debug ...)``.
    debug: list[str] = field(default_factory=list)
    #: Journal events from the stages (yield requests and results): dicts with
    #: ``vm``, ``kind``, ``rule``, ``reason``, ``outcome``, ``inputs``.
    events: list[dict[str, Any]] = field(default_factory=list)
    #: The policy's whole evaluation (None when it failed).
    evaluation: Evaluation | None = None

    @property
    def policy_ok(self) -> bool:
        return self.policy_error is None

    def all_applied(self) -> dict[str, Outcome]:
        """Every target as applied (for :meth:`Governor.commit` in replays and evaluations)."""
        return all_applied(self.decisions)


class TickStage(Protocol):
    """A step between the policy and the governor."""

    def shape(
        self, inp: TickInput, proposed: dict[str, int | None], guest_controls: Mapping[str, Any]
    ) -> tuple[dict[str, int | None], list[dict[str, Any]]]:
        """The proposals to go on with, and journal events."""
        ...


class YieldCoordinatorLike(Protocol):
    def step(
        self,
        now_mono: float,
        samples: Mapping[str, Mapping[str, Any]],
        guest_controls: Mapping[str, Mapping[str, Any]],
    ) -> list[dict[str, Any]]: ...

    def hold_inflation(
        self,
        proposed: Mapping[str, int | None],
        views: Sequence[GuestView],
        samples: Mapping[str, Mapping[str, Any]],
    ) -> dict[str, int | None]: ...


class YieldStage:
    """Yields before balloons: the policy's ``yield_kib`` goes to the agents, and a
    guest whose yield is awaited is not inflated meanwhile (host/yielding.py).

    While paused no yield is asked or judged, but the hold still stands.
    """

    def __init__(self, yields: YieldCoordinatorLike) -> None:
        self.yields = yields

    def shape(
        self, inp: TickInput, proposed: dict[str, int | None], guest_controls: Mapping[str, Any]
    ) -> tuple[dict[str, int | None], list[dict[str, Any]]]:
        samples = inp.newest_samples()
        events = [] if inp.paused else self.yields.step(inp.now_s, samples, guest_controls)
        return self.yields.hold_inflation(proposed, inp.views, samples), events


def plan_tick(
    inp: TickInput,
    policy: PolicyEvaluator,
    governor: Governor,
    stages: Sequence[TickStage] = (),
) -> TickPlan:
    """Evaluate the policy, run the stages, let the governor decide: one tick's plan.

    A policy that fails at run time sets nothing this tick (its error is in the
    plan); the governor still runs, so floors and rollbacks still apply.
    """
    proposed: dict[str, int | None] = {}
    controls: dict[str, Any] = {"host": {}, "guests": {}}
    error: PolicyError | None = None
    debug: list[str] = []
    evaluation: Evaluation | None = None
    try:
        evaluation = policy.evaluate(inp.policy)
    except PolicyError as err:
        error = err
    else:
        proposed = dict(evaluation.proposed_targets())
        controls = {
            "host": dict(evaluation.host_controls),
            "guests": {k: dict(v) for k, v in evaluation.guest_controls.items()},
        }
        debug = list(evaluation.debug)
    events: list[dict[str, Any]] = []
    for stage in stages:
        proposed, stage_events = stage.shape(inp, proposed, controls["guests"])
        events.extend(stage_events)
    decisions: list[Decision] = []
    if not inp.paused:
        # While paused the governor is not consulted: it would count the targets
        # nobody applies as guests making no progress (stuck).
        decisions = governor.decide(inp.now_s, inp.views, proposed,
                                    host_spare_kib=inp.host_spare_kib)
        for decision in decisions:
            notes = inp.claim_notes.get(decision.vm)
            if notes:
                # ``ebbctl explain`` shows this: what the guest claimed, what was used.
                decision.reason += "; " + "; ".join(notes)
                decision.inputs["claims_capped"] = list(notes)
    return TickPlan(decisions, controls, proposed, error, debug, events, evaluation)


# --- building the input ----------------------------------------------------------------


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def guest_view(name: str, sample: Mapping[str, Any]) -> GuestView:
    """The governor's view of a guest from its newest policy sample (the one builder).

    Reads the policy field names: ``balloon_cur`` (the maximum when unknown),
    ``balloon_max``, ``balloon_min`` (the floor, see
    :func:`~ebb.host.governor.guest_floor_kib`), ``agent_connected``,
    ``report_age``, ``need``, ``offer``, ``psi_some_avg10``, ``psi_full_avg10``,
    ``major_fault_rate`` (per second) and ``swap_in_rate`` (KiB per second).
    """
    get = sample.get
    floor = get("balloon_min")
    maximum = int(get("balloon_max") or 0)
    return GuestView(
        name,
        int(get("balloon_cur") or maximum),
        maximum,
        None if floor is None else int(floor),
        bool(get("agent_connected")),
        _opt_float(get("report_age")),
        int(get("need") or 0),
        int(get("offer") or 0),
        _opt_float(get("psi_some_avg10")),
        _opt_float(get("psi_full_avg10")),
        _opt_float(get("major_fault_rate")),
        _opt_float(get("swap_in_rate")),
    )


def guest_views(inp: PolicyInput) -> list[GuestView]:
    """One view per guest of the policy input, in its order."""
    return [guest_view(g.name, g.latest) for g in inp.guests]


def host_spare_kib(freeable_kib: float | None, total_kib: float | None,
                   reserve_share: float) -> int | None:
    """Host memory that may be given to guests: freeable memory above the reserve
    (``reserve_share`` of the host's memory); None when either is unknown."""
    if freeable_kib is None or not total_kib:
        return None
    return max(0, int(freeable_kib - reserve_share * total_kib))


def host_spare_from_policy(inp: PolicyInput, reserve_share: float) -> int | None:
    """:func:`host_spare_kib` from the host's newest policy sample (``mem_free`` is
    freeable memory and ``mem_available`` the total, MOM's names)."""
    newest = inp.host.latest
    freeable, total = newest.get("mem_free"), newest.get("mem_available")
    if not isinstance(freeable, (int, float)) or not isinstance(total, (int, float)):
        return None
    return host_spare_kib(freeable, total, reserve_share)
