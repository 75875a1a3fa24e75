"""A synthetic trace: ticks made by the real policy runner and governor on a simulated host.

The simulated host has 8 GiB; two guests of 2 GiB each. Outside pressure on
the host (a pattern over time) pushes its freeable memory under the policy's
threshold and back; balloons reach their targets by the next tick, and memory
taken from guests comes back to the host. Every tick is recorded in the
TickRecord JSON shape (docs/observability.md), as ebbd's trace writes it.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List

from ebb.host.config import config_from_dict
from ebb.host.governor import Governor, GuestView, all_applied
from ebb.host.policy import PolicyInput, PolicyRunner
from ebb.host.settings import governor_config

#: The governor limits of an ebbd with an empty ebbd.toml.
DAEMON_LIMITS = governor_config(config_from_dict({}))

KIB_PER_GIB = 1024 * 1024
HOST_TOTAL_KIB = 8 * KIB_PER_GIB
GUEST_MAX_KIB = 2 * KIB_PER_GIB

POLICY_TEMPLATE = """\
# Balloon every guest by 64 MiB a tick while host freeable memory is under the
# threshold; give back 64 MiB a tick otherwise. KSM runs under pressure.
(defvar threshold {threshold})
(defvar step 65536)
(defvar pressure (< Host.mem_free (* threshold Host.mem_available)))
(Host.Control "ksm_run" (if pressure 1 0))
(if pressure
    (with Guests guest (guest.Control "balloon_target" (- guest.balloon_cur step)))
    (with Guests guest (guest.Control "balloon_target" (+ guest.balloon_cur step))))
"""


def write_policy(directory: Path, threshold: float) -> Path:
    """A policy file like the test policy with the given threshold (share of MemTotal)."""
    path = directory / f"balloon-{threshold:g}.policy"
    path.write_text(POLICY_TEMPLATE.format(threshold=threshold))
    return path


def _outside_use_kib(tick: int) -> int:
    """Host memory used by things other than the guests' balloons: a pressure episode."""
    if 10 <= tick < 40:
        return int(3.3 * KIB_PER_GIB)
    return int(1.5 * KIB_PER_GIB)


def synthesise_records(
    policy: Path, ticks: int = 60, interval_s: float = 2.0
) -> List[Dict[str, Any]]:
    runner = PolicyRunner()
    assert runner.reload(policy) == []
    governor = Governor(DAEMON_LIMITS)
    balloon = {"vm1": GUEST_MAX_KIB, "vm2": GUEST_MAX_KIB}
    swapped_in = {"vm1": 0, "vm2": 0}
    host_swap_out = 0
    ksm_run = 0
    ksm_sharing = 0
    records: List[Dict[str, Any]] = []
    for tick in range(ticks):
        ts = 1_700_000_000.0 + tick * interval_s
        guests_total = sum(balloon.values())
        freeable = HOST_TOTAL_KIB - _outside_use_kib(tick) - guests_total
        if freeable < 0.15 * HOST_TOTAL_KIB:
            host_swap_out += 200
        ksm_sharing = ksm_sharing + 500 if ksm_run else max(0, ksm_sharing - 300)
        host_sample = {
            "mem_available": HOST_TOTAL_KIB, "mem_free": freeable, "mem_unused": freeable // 2,
            "swap_in": 0, "swap_out": host_swap_out, "swap_in_rate": 0.0,
            "swap_out_rate": 100.0 if freeable < 0.15 * HOST_TOTAL_KIB else 0.0,
            "ksm_run": ksm_run, "ksm_pages_shared": ksm_sharing // 4,
            "ksm_pages_sharing": ksm_sharing,
        }
        guest_states = []
        views = []
        for name in sorted(balloon):
            if balloon[name] < 1.6 * KIB_PER_GIB:
                swapped_in[name] += 1024
            sample = {"balloon_cur": balloon[name], "balloon_max": GUEST_MAX_KIB,
                      "mem_unused": balloon[name] // 3, "agent_connected": 1,
                      "swap_in": swapped_in[name], "swap_out": swapped_in[name] * 2}
            guest_states.append({"props": {"name": name, "uuid": f"uuid-{name}"},
                                 "samples": [sample]})
            views.append(GuestView(name=name, balloon_cur_kib=balloon[name],
                                   balloon_max_kib=GUEST_MAX_KIB, agent_connected=True,
                                   report_age_s=0.5))
        state = {"host": {"props": {"name": "host"}, "samples": [host_sample]},
                 "guests": guest_states}
        evaluation = runner.evaluate(PolicyInput.from_json(state))
        decisions = governor.decide(ts, views, evaluation.proposed_targets())
        governor.commit(all_applied(decisions))
        applied = []
        for decision in decisions:
            if decision.target_kib is not None:
                balloon[decision.vm] = decision.target_kib
                applied.append({"vm": decision.vm, "balloon_target_kib": decision.target_kib})
        ksm_run = evaluation.host_controls.get("ksm_run", ksm_run)
        records.append({
            "ts": ts,
            "tick": tick,
            "duration_ms": 1.5,
            "state": state,
            "views": [asdict(view) for view in views],
            "controls": evaluation.to_json()["controls"],
            "decisions": [d.to_json() for d in decisions],
            "applied": applied,
            "policy_error": None,
        })
    return records
