"""``ebbctl replay``: what another policy would have decided on a recorded run.

Every tick of a trace carries the policy's input (``state``, the STATE.json
shape of ``ebbctl policy eval``). A replay plans each tick again with ebbd's
own :func:`~ebb.host.tick.plan_tick`, in order, with a fresh
:class:`PolicyRunner` loaded with the policy to try, a fresh :class:`Governor`,
the trace's own clock and the governor's views built from ``state`` as ebbd
builds them, and compares the decisions with the recorded ones (the recorded
``views`` give the balloon sizes the recorded movement is counted from).

A replayed policy that asks for other balloon sizes than the recorded one
would have changed what followed; the trace only holds what really happened.
By default the replay carries that difference forward with a first-order
model: each guest's balloon is taken to be where it really was, shifted by the
difference between the replayed and the recorded target in force
(``balloon_cur``, ``mem_unused`` and ``mem_free`` of the guest move by that
shift, the host's ``mem_free`` and ``mem_unused`` by minus the sum of them).
A guest that really lagged behind its target lags the same way in the replay.
Everything else (guest pressure, swap, KSM) is as recorded. ``open_loop=True``
replays the recorded inputs unchanged instead. Either way, the policy that
produced the trace, with the same governor limits, reproduces the recorded
decisions tick for tick; that is how the replay itself is checked.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

from ebb.host.governor import (
    DEFLATE,
    INFLATE,
    ROLLBACK,
    Decision,
    Governor,
    GovernorConfig,
)
from ebb.host.observe.trace import read_trace
from ebb.host.policy import Entity, PolicyInput, PolicyRunner
from ebb.host.tick import TickInput, TickPlan, guest_views, host_spare_from_policy, plan_tick

LOG = logging.getLogger(__name__)

KIB_PER_MIB = 1024

PathLike = Union[str, Path]


class ReplayError(Exception):
    """The replay cannot run: the policy does not load, or the trace lacks what it needs."""


@dataclass
class Difference:
    """One VM whose decision differs at one tick."""

    tick: int
    ts: float
    vm: str
    recorded_target_kib: Optional[int]
    recorded_kind: str
    recorded_rule: str
    replayed_target_kib: Optional[int]
    replayed_kind: str
    replayed_rule: str
    replayed_reason: str

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Movement:
    """What a run did to the balloons: total |change of target| and counts by kind."""

    total_kib: int = 0
    inflations: int = 0
    deflations: int = 0
    rollbacks: int = 0
    # Per VM, the target in force (starts at the first balloon size seen).
    targets_in_force: Dict[str, int] = field(default_factory=dict, repr=False)

    def account(self, decision: Mapping[str, Any], balloon_cur_kib: Optional[int]) -> None:
        vm = str(decision.get("vm"))
        if vm not in self.targets_in_force and balloon_cur_kib is not None:
            self.targets_in_force[vm] = int(balloon_cur_kib)
        kind = decision.get("kind")
        if kind == INFLATE:
            self.inflations += 1
        elif kind == DEFLATE:
            self.deflations += 1
        elif kind == ROLLBACK:
            self.rollbacks += 1
        target = decision.get("target_kib")
        if target is None:
            return
        previous = self.targets_in_force.get(vm, int(target))
        self.total_kib += abs(int(target) - previous)
        self.targets_in_force[vm] = int(target)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "total_mib": round(self.total_kib / KIB_PER_MIB, 1),
            "inflations": self.inflations,
            "deflations": self.deflations,
            "rollbacks": self.rollbacks,
        }


@dataclass
class HostControlDifference:
    """A tick where the replayed policy set KSM (host controls) differently."""

    tick: int
    recorded: Dict[str, Any]
    replayed: Dict[str, Any]


@dataclass
class ReplayReport:
    """The outcome of a replay: per-tick differences and a summary."""

    trace: str
    policy: List[str]
    open_loop: bool = False
    ticks: int = 0
    ticks_differing: int = 0
    ticks_skipped: int = 0
    ticks_paused: int = 0
    daemon_restarts: int = 0
    policy_errors_recorded: int = 0
    policy_errors_replayed: int = 0
    first_policy_error: Optional[str] = None
    differences: List[Difference] = field(default_factory=list)
    host_control_differences: List[HostControlDifference] = field(default_factory=list)
    recorded: Movement = field(default_factory=Movement)
    replayed: Movement = field(default_factory=Movement)

    def to_dict(self) -> Dict[str, Any]:
        """The ``--json`` document (documented in docs/observability.md)."""
        return {
            "trace": self.trace,
            "policy": self.policy,
            "model": "open-loop" if self.open_loop else "shifted-balloons",
            "summary": {
                "ticks": self.ticks,
                "ticks_differing": self.ticks_differing,
                "ticks_skipped": self.ticks_skipped,
                "ticks_paused": self.ticks_paused,
                "daemon_restarts": self.daemon_restarts,
                "ticks_host_controls_differing": len(self.host_control_differences),
                "policy_errors_recorded": self.policy_errors_recorded,
                "policy_errors_replayed": self.policy_errors_replayed,
                "first_policy_error": self.first_policy_error,
                "recorded": self.recorded.to_dict(),
                "replayed": self.replayed.to_dict(),
            },
            "differences": [d.to_dict() for d in self.differences],
            "host_control_differences": [dataclasses.asdict(d)
                                         for d in self.host_control_differences],
        }


def recorded_balloons(views: Sequence[Any]) -> Dict[str, int]:
    """Each recorded view's balloon (``name`` -> ``balloon_cur_kib``): where the
    recorded movement is counted from. Raises ValueError for a malformed view."""
    balloons: Dict[str, int] = {}
    for view in views:
        if not isinstance(view, Mapping) or not isinstance(view.get("name"), str):
            raise ValueError("a recorded view needs a 'name'")
        cur = view.get("balloon_cur_kib")
        if isinstance(cur, bool) or not isinstance(cur, (int, float)):
            raise ValueError(f"recorded view {view['name']!r} needs a number 'balloon_cur_kib'")
        balloons[view["name"]] = int(cur)
    return balloons


def policy_input(state: Mapping[str, Any]) -> PolicyInput:
    """The policy input of a recorded tick.

    Like ``PolicyInput.from_json`` but each sample is checked once, on the
    line where it is newest, not again on each of the next ticks that keep it
    in their history (a replay of a large host spends most of its time there
    otherwise). Raises ValueError naming what is wrong.
    """
    def entity(data: Any, where: str) -> Entity:
        if not isinstance(data, Mapping):
            raise ValueError(f"state {where} must be an object with 'props' and 'samples'")
        props, samples = data.get("props", {}), data.get("samples", [])
        if not isinstance(props, Mapping) or not isinstance(samples, list):
            raise ValueError(f"state {where} needs 'props' (object) and 'samples' (list)")
        if samples:
            newest = samples[-1]
            if not isinstance(newest, Mapping):
                raise ValueError(f"state {where}.samples[-1] must be an object")
            for key, value in newest.items():
                if value is not None and (isinstance(value, bool)
                                          or not isinstance(value, (int, float))
                                          or not math.isfinite(value)):
                    raise ValueError(f"state {where}.samples[-1].{key} must be a finite number")
        return Entity(props, samples)

    raw_guests = state.get("guests", [])
    if not isinstance(raw_guests, list):
        raise ValueError("state 'guests' must be a list")
    guests = [entity(g, f"guests[{i}]") for i, g in enumerate(raw_guests)]
    names = [g.name for g in guests]
    if "" in names or len(set(names)) != len(names):
        raise ValueError("state guests need distinct props.name")
    return PolicyInput(host=entity(state.get("host", {}), "host"), guests=guests)



def _decision_summary(decision: Decision) -> Dict[str, Any]:
    """What the replay compares and prints of a decision (``inputs`` left out: it is
    the costly part of ``Decision.to_json``)."""
    return {"vm": decision.vm, "target_kib": decision.target_kib, "kind": decision.kind,
            "rule": decision.rule, "reason": decision.reason}


def _decision_dict(decision: Any) -> Dict[str, Any]:
    if isinstance(decision, Mapping):
        return dict(decision)
    if isinstance(decision, Decision):
        return dict(decision.to_json())
    return dict(vars(decision))


class Replayer:
    """Runs recorded ticks through a policy and a fresh governor, one tick at a time."""

    def __init__(
        self,
        runner: PolicyRunner,
        governor: Optional[Governor] = None,
        report: Optional[ReplayReport] = None,
        open_loop: bool = False,
    ) -> None:
        self.runner = runner
        self.governor = governor or Governor()
        self.report = report or ReplayReport(trace="", policy=[])
        self.open_loop = open_loop
        self._shift_kib: Dict[str, int] = {}
        self._last_tick: Optional[int] = None

    def _restart(self) -> None:
        """ebbd restarted here (its tick count went back): so do its policy and governor."""
        self.report.daemon_restarts += 1
        self.runner = PolicyRunner(self.runner.program)
        self.governor = Governor(self.governor.config)

    def feed(self, record: Mapping[str, Any]) -> Optional[TickPlan]:
        """Replay one trace record (a decoded trace line); its replayed plan, or None
        when the record cannot be replayed (skipped)."""
        report = self.report
        tick = int(record.get("tick", report.ticks))
        if self._last_tick is not None and tick <= self._last_tick:
            self._restart()
        self._last_tick = tick
        state = record.get("state")
        views_raw = record.get("views")
        if not isinstance(state, Mapping) or not isinstance(views_raw, list):
            report.ticks_skipped += 1
            return None
        try:
            recorded_cur = recorded_balloons(views_raw)
            if not self.open_loop:
                state = self._shift_state(state)
            inp = policy_input(state)
        except (ValueError, TypeError) as err:
            LOG.warning("tick %s: cannot rebuild its inputs (%s); skipped", tick, err)
            report.ticks_skipped += 1
            return None
        report.ticks += 1
        if record.get("policy_error"):
            report.policy_errors_recorded += 1

        # The governor's own clock when the trace has it (ebbd's monotonic
        # clock), else wall time: only differences between ticks matter.
        now_s = float(record.get("mono", record.get("ts", 0.0)))
        # Like ebbd: while paused the policy is evaluated (SetVar goes on) but
        # the governor is not consulted; a failing policy sets nothing this
        # tick, and the governor still runs (floors, rollback, stuck guests).
        paused = bool(record.get("paused"))
        plan = plan_tick(
            TickInput(now_s, inp, guest_views(inp),
                      host_spare_from_policy(inp, self.governor.config.host_reserve_share),
                      paused=paused),
            self.runner, self.governor,
        )
        # The trace holds what ebbd decided; the replay follows its own plan as
        # if every target reached its guest.
        self.governor.commit(plan.all_applied())
        if plan.policy_error is not None:
            report.policy_errors_replayed += 1
            if report.first_policy_error is None:
                report.first_policy_error = f"tick {tick}: {plan.policy_error}"
        host_controls = dict(plan.controls["host"])
        if paused:
            report.ticks_paused += 1
            return plan
        replayed = [_decision_summary(d) for d in plan.decisions]
        recorded = [_decision_dict(d) for d in record.get("decisions") or []]

        for decision in recorded:
            report.recorded.account(decision, recorded_cur.get(str(decision.get("vm"))))
        for decision in replayed:
            report.replayed.account(decision, recorded_cur.get(str(decision.get("vm"))))
        self._update_shifts(recorded_cur)

        differs = False
        by_vm = {str(d.get("vm")): d for d in recorded}
        for new in replayed:
            old = by_vm.get(str(new["vm"]), {})
            if old.get("target_kib") != new["target_kib"]:
                differs = True
                report.differences.append(Difference(
                    tick=tick,
                    ts=now_s,
                    vm=str(new["vm"]),
                    recorded_target_kib=old.get("target_kib"),
                    recorded_kind=str(old.get("kind", "-")),
                    recorded_rule=str(old.get("rule", "-")),
                    replayed_target_kib=new["target_kib"],
                    replayed_kind=str(new["kind"]),
                    replayed_rule=str(new["rule"]),
                    replayed_reason=str(new["reason"]),
                ))
        if differs:
            report.ticks_differing += 1
        controls = record.get("controls")
        if isinstance(controls, Mapping):
            recorded_host = dict(controls.get("host") or {})
            if recorded_host != host_controls:
                report.host_control_differences.append(
                    HostControlDifference(tick=tick, recorded=recorded_host,
                                          replayed=host_controls)
                )
        return plan

    # -- the first-order model of a different past

    def _update_shifts(self, recorded_cur: Mapping[str, int]) -> None:
        """Shift of each guest: replayed target in force minus recorded target in force."""
        present = set(recorded_cur)
        self._shift_kib = {}
        for name, cur in recorded_cur.items():
            recorded = self.report.recorded.targets_in_force.get(name, cur)
            replayed = self.report.replayed.targets_in_force.get(name, cur)
            if recorded != replayed and not self.open_loop:
                self._shift_kib[name] = replayed - recorded
        for movement in (self.report.recorded, self.report.replayed):
            for gone in [vm for vm in movement.targets_in_force if vm not in present]:
                del movement.targets_in_force[gone]

    def _shifted_cur(self, name: str, cur_kib: int, max_kib: int) -> int:
        shift = self._shift_kib.get(name, 0)
        return max(0, min(cur_kib + shift, max_kib)) if shift else cur_kib

    def _shift_state(self, state: Mapping[str, Any]) -> Mapping[str, Any]:
        if not self._shift_kib:
            return state
        given_back = 0  # memory the host has in the replay that it did not have really
        guests = []
        for guest in state.get("guests") or []:
            name = str((guest.get("props") or {}).get("name", ""))
            samples = list(guest.get("samples") or [])
            if name in self._shift_kib and samples:
                newest = dict(samples[-1])
                cur = newest.get("balloon_cur")
                if isinstance(cur, (int, float)):
                    top = newest.get("balloon_max")
                    top = int(top) if isinstance(top, (int, float)) else int(cur) + abs(
                        self._shift_kib[name])
                    shifted = self._shifted_cur(name, int(cur), top)
                    delta = shifted - int(cur)
                    given_back -= delta
                    newest["balloon_cur"] = shifted
                    for key in ("mem_unused", "mem_free"):
                        value = newest.get(key)
                        if isinstance(value, (int, float)):
                            newest[key] = max(0, int(value) + delta)
                samples[-1] = newest
                guest = dict(guest, samples=samples)
            guests.append(guest)
        host = dict(state.get("host") or {})
        host_samples = list(host.get("samples") or [])
        if host_samples and given_back:
            newest = dict(host_samples[-1])
            for key in ("mem_free", "mem_unused"):
                value = newest.get(key)
                if isinstance(value, (int, float)):
                    newest[key] = max(0, int(value) + given_back)
            host_samples[-1] = newest
            host["samples"] = host_samples
        return dict(state, host=host, guests=guests)


def load_runner(policy: Union[PathLike, Sequence[PathLike]]) -> PolicyRunner:
    """A PolicyRunner with ``policy`` (files or a directory) loaded, or ReplayError."""
    runner = PolicyRunner()
    if isinstance(policy, (list, tuple)):
        errors = runner.reload([Path(p) for p in policy])
    else:
        errors = runner.reload(Path(str(policy)))
    if errors:
        raise ReplayError("the policy does not load:\n" + "\n".join(str(e) for e in errors))
    return runner


def replay_records(
    records: Iterable[Mapping[str, Any]],
    runner: PolicyRunner,
    governor_config: Optional[GovernorConfig] = None,
    trace_name: str = "",
    policy_names: Sequence[str] = (),
    open_loop: bool = False,
) -> ReplayReport:
    """Replay decoded trace records through ``runner`` and a fresh governor."""
    report = ReplayReport(trace=trace_name, policy=list(policy_names), open_loop=open_loop)
    replayer = Replayer(runner, Governor(governor_config), report, open_loop=open_loop)
    for record in records:
        replayer.feed(record)
    if report.ticks == 0:
        raise ReplayError(
            f"{trace_name or 'trace'}: no tick with recorded state and views to replay"
        )
    return report


def replay_trace(
    trace: PathLike,
    policy: Union[PathLike, Sequence[PathLike]],
    governor_config: Optional[GovernorConfig] = None,
    open_loop: bool = False,
) -> ReplayReport:
    """Replay the trace at ``trace`` (rotated files included) through ``policy``."""
    runner = load_runner(policy)
    names = [str(p) for p in policy] if isinstance(policy, (list, tuple)) else [str(policy)]
    return replay_records(read_trace(trace), runner, governor_config, str(trace), names,
                          open_loop)


def _mib(kib: Optional[int]) -> str:
    return "none" if kib is None else f"{kib / KIB_PER_MIB:.0f} MiB"


def format_report(report: ReplayReport, limit: int = 50) -> str:
    """The human-readable replay: differing ticks (at most ``limit``), then the summary."""
    lines: List[str] = []
    shown = report.differences[:limit] if limit >= 0 else report.differences
    for diff in shown:
        lines.append(
            f"tick {diff.tick:>6}  {diff.vm:<16} recorded {diff.recorded_kind} "
            f"{_mib(diff.recorded_target_kib)} [{diff.recorded_rule}]  ->  replayed "
            f"{diff.replayed_kind} {_mib(diff.replayed_target_kib)} [{diff.replayed_rule}] "
            f"{diff.replayed_reason}"
        )
    if len(report.differences) > len(shown):
        lines.append(f"... {len(report.differences) - len(shown)} more differences "
                     "(--limit N or --json to see them)")
    if lines:
        lines.append("")
    rec, rep = report.recorded, report.replayed
    lines.append(f"replayed {report.ticks} ticks of {report.trace} through "
                 f"{', '.join(report.policy)}")
    if report.ticks_skipped:
        lines.append(f"skipped {report.ticks_skipped} records without state or views")
    if report.daemon_restarts:
        lines.append(f"ebbd restarted {report.daemon_restarts} times in the trace "
                     "(the replay restarted its policy and governor with it)")
    if report.ticks_paused:
        lines.append(f"{report.ticks_paused} ticks were paused (no decisions to compare)")
    lines.append(f"ticks that differ: {report.ticks_differing} of {report.ticks} "
                 f"({len(report.differences)} VM decisions)")
    if report.host_control_differences:
        lines.append(f"ticks where KSM controls differ: {len(report.host_control_differences)}")
    lines.append(f"{'':24}{'recorded':>12}{'replayed':>12}")
    lines.append(f"{'balloon movement (MiB)':<24}{rec.total_kib / KIB_PER_MIB:>12.0f}"
                 f"{rep.total_kib / KIB_PER_MIB:>12.0f}")
    lines.append(f"{'inflations':<24}{rec.inflations:>12}{rep.inflations:>12}")
    lines.append(f"{'deflations':<24}{rec.deflations:>12}{rep.deflations:>12}")
    lines.append(f"{'rollbacks':<24}{rec.rollbacks:>12}{rep.rollbacks:>12}")
    lines.append(f"{'policy errors':<24}{report.policy_errors_recorded:>12}"
                 f"{report.policy_errors_replayed:>12}")
    if report.first_policy_error:
        lines.append(f"first replayed policy error: {report.first_policy_error}")
    return "\n".join(lines) + "\n"
