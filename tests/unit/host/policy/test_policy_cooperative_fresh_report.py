"""A needy guest whose report is brand new is served, not squeezed (lab regression).

The lab's ``test_offers_are_taken_first_and_needs_met_at_once`` run traced this
tick: the immediate tick after ``ebb-e2e-1`` reported a need of 34 MiB, with the
host under pressure (freeable 17 % < 20 %) but 1.7 GiB above its reserve. The
report had arrived within the millisecond, so ``report_age`` was ``0.0``; the
policy read ``(or g.report_age agent_report_max_age)``, i.e. a fresh report as
"no age" = too old, treated the guest as agent-less and proposed the classic
5 % inflation. The governor held it (needy) and the deflation only came a tick
later. The numbers below are the tick's own.
"""

from __future__ import annotations

from typing import Any, Dict

import pytest
from ebb.host.policies import policy_dir
from ebb.host.policy import Entity, PolicyInput, PolicyRunner, load_policy_dir
from policy_testkit import guest

#: Host sample of the traced tick (KiB).
LAB_HOST = {
    "mem_available": 24683656,
    "mem_free": 4232828,
    "ksm_pages_to_scan": 1250,
    "ksm_shareable": 2621440,
}

#: ebb-e2e-1's newest sample on that tick: need 34816 KiB, report 0.0 s old.
LAB_NEEDY: Dict[str, Any] = {
    "mem_available": 201052,
    "mem_unused": 135912,
    "mem_free": 155208,
    "balloon_cur": 252828,
    "balloon_max": 524288,
    "balloon_min": 196608,
    "report_age": 0.0,
    "offer": 0,
    "need": 34816,
    "need_urgency": 1,
    "psi_some_avg10": 0.0,
    "psi_full_avg10": 0.0,
    "major_fault_rate": 0.0,
    "swap_in_rate": 0.0,
    "agent_connected": 1,
}


def targets(needy: Dict[str, Any]) -> Dict[str, Any]:
    runner = PolicyRunner(load_policy_dir(policy_dir("cooperative")))
    inp = PolicyInput(Entity({"name": "host"}, [dict(LAB_HOST)]), [guest("ebb-e2e-1", **needy)])
    return dict(runner.evaluate(inp).proposed_targets())


@pytest.mark.parametrize("report_age", [0.0, 0.001, 9.9])
def test_a_needy_guest_with_a_fresh_report_gets_its_need_under_pressure(report_age: float) -> None:
    t = targets(dict(LAB_NEEDY, report_age=report_age))
    assert t == {"ebb-e2e-1": 252828 + 34816}


@pytest.mark.parametrize("report_age", [None, 10.0, 60.0])
def test_a_missing_or_old_report_age_still_means_no_agent(report_age: Any) -> None:
    # The classic rule under pressure: 5 % off the balloon, the need is not read.
    t = targets(dict(LAB_NEEDY, report_age=report_age))
    assert t == {"ebb-e2e-1": pytest.approx(252828 * 0.95, abs=1)}
