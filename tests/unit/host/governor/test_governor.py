"""The governor's rules, one by one, with a hand-driven clock."""

from __future__ import annotations

from typing import Any, Optional

import pytest
from ebb.host.governor import Decision, Governor, GovernorConfig, GuestView, all_applied
from ebb.host.kinds import Outcome

GiB = 1024 * 1024
MiB = 1024


def view(cur: int = 4 * GiB, maximum: int = 4 * GiB, **kw: Any) -> GuestView:
    return GuestView(name=kw.pop("name", "vm"), balloon_cur_kib=cur, balloon_max_kib=maximum, **kw)


def one(gov: Governor, now: float, g: GuestView, target: Optional[int],
        outcome: Outcome = Outcome.APPLIED) -> Decision:
    """One tick: decide, then commit with ``outcome`` for the target (if any)."""
    (d,) = gov.decide(now, [g], {g.name: target})
    assert d.vm == g.name
    assert d.reason  # every decision says why
    gov.commit({d.vm: outcome} if d.target_kib is not None else {})
    return d


def test_passes_a_reasonable_inflation_through() -> None:
    d = one(Governor(), 0, view(), 4 * GiB - 200 * MiB)
    assert (d.target_kib, d.kind, d.rule) == (4 * GiB - 200 * MiB, "inflate", "policy")
    assert d.inputs["balloon_cur_kib"] == 4 * GiB
    assert d.inputs["proposed_kib"] == 4 * GiB - 200 * MiB


def test_limits_inflation_per_tick() -> None:
    d = one(Governor(), 0, view(), 1 * GiB)
    assert d.kind == "inflate" and d.rule == "max_step"
    assert d.target_kib == 4 * GiB - int(0.10 * 4 * GiB)
    assert "at most" in d.reason


def test_what_the_agent_offers_is_taken_in_one_tick() -> None:
    offering = view(agent_connected=True, report_age_s=1.0, offer_kib=1 * GiB)
    d = one(Governor(), 0, offering, 4 * GiB - 1 * GiB)
    assert (d.kind, d.rule, d.target_kib) == ("inflate", "policy", 3 * GiB)
    # More than the offer is still limited, to the offer.
    d = one(Governor(), 0, offering, 1 * GiB)
    assert (d.rule, d.target_kib) == ("max_step", 3 * GiB)
    assert "offers" in d.reason


@pytest.mark.parametrize("how", [dict(agent_connected=False, report_age_s=1.0),
                                 dict(agent_connected=True, report_age_s=None),
                                 dict(agent_connected=True, report_age_s=60.0)])
def test_an_offer_without_a_live_agent_takes_one_step(how: Any) -> None:
    d = one(Governor(), 0, view(offer_kib=1 * GiB, **how), 4 * GiB - 1 * GiB)
    assert (d.rule, d.target_kib) == ("max_step", 4 * GiB - int(0.10 * 4 * GiB))


def test_offers_can_be_held_to_the_step_too() -> None:
    gov = Governor(GovernorConfig(take_offers_at_once=False))
    offering = view(agent_connected=True, report_age_s=1.0, offer_kib=1 * GiB)
    d = one(gov, 0, offering, 4 * GiB - 1 * GiB)
    assert (d.rule, d.target_kib) == ("max_step", 4 * GiB - int(0.10 * 4 * GiB))


def test_limits_deflation_per_tick() -> None:
    d = one(Governor(), 0, view(cur=2 * GiB, maximum=8 * GiB), 8 * GiB)
    assert (d.kind, d.rule, d.target_kib) == ("deflate", "max_step", 2 * GiB + 2 * GiB)


def test_floor_and_ceiling() -> None:
    gov = Governor()
    d = one(gov, 0, view(cur=700 * MiB, floor_kib=600 * MiB), 100 * MiB)
    assert (d.target_kib, d.rule) == (600 * MiB, "floor")
    d = one(Governor(), 0, view(cur=3 * GiB), 9 * GiB)
    assert (d.target_kib, d.kind, d.rule) == (4 * GiB, "deflate", "ceiling")


def test_default_floor_and_minimum_floor() -> None:
    gov = Governor(GovernorConfig(default_floor_kib=1 * GiB, min_floor_kib=256 * MiB))
    assert gov.floor_for(view()) == 1 * GiB
    assert gov.floor_for(view(floor_kib=10 * MiB)) == 256 * MiB
    assert gov.floor_for(view(maximum=512 * MiB, cur=512 * MiB)) == 512 * MiB  # never above max


def test_guest_below_its_floor_gets_memory_back_even_without_a_proposal() -> None:
    d = one(Governor(), 0, view(cur=300 * MiB, floor_kib=1 * GiB), None)
    assert (d.target_kib, d.kind, d.rule) == (1 * GiB, "deflate", "floor")


def test_no_proposal_is_a_hold() -> None:
    d = one(Governor(), 0, view(), None)
    assert (d.target_kib, d.kind, d.rule) == (None, "hold", "no_proposal")


def test_tiny_changes_are_held() -> None:
    d = one(Governor(), 0, view(), 4 * GiB - 100)
    assert (d.target_kib, d.kind, d.rule) == (None, "hold", "too_small")


@pytest.mark.parametrize(
    ("kw", "rule"),
    [
        ({"need_kib": 1}, "needy"),
        ({"psi_some_avg10": 12.0}, "stalling"),
        ({"major_fault_rate": 5000.0}, "stalling"),
        ({"swap_in_rate_kib": 4096.0}, "stalling"),
    ],
)
def test_needy_or_stalling_guests_are_not_inflated(kw: Any, rule: str) -> None:
    d = one(Governor(), 0, view(**kw), 3 * GiB)
    assert (d.target_kib, d.kind, d.rule) == (None, "hold", rule)


def test_needy_guest_may_still_be_deflated() -> None:
    d = one(Governor(), 0, view(cur=2 * GiB, need_kib=100 * MiB), 2 * GiB + 100 * MiB)
    assert (d.kind, d.target_kib) == ("deflate", 2 * GiB + 100 * MiB)


def test_rollback_when_inflation_hurts_then_growing_backoff() -> None:
    cfg = GovernorConfig(backoff_initial_s=60, backoff_growth=2)
    gov = Governor(cfg)
    d = one(gov, 0, view(psi_some_avg10=1.0), 4 * GiB - 300 * MiB)
    assert d.kind == "inflate"
    # The guest shrank; 10 s later its PSI is up by more than 10 points.
    d = one(gov, 10, view(cur=4 * GiB - 300 * MiB, psi_some_avg10=15.0), 4 * GiB - 600 * MiB)
    assert (d.kind, d.rule, d.target_kib) == ("rollback", "rollback", 4 * GiB)
    assert "PSI" in d.reason and "60 s" in d.reason
    assert gov.guest_state("vm") == "backoff"
    # Backing off: no inflation for 60 s, even once it is calm again.
    d = one(gov, 30, view(cur=4 * GiB, psi_some_avg10=1.0), 3 * GiB)
    assert (d.kind, d.rule) == ("hold", "backoff")
    # After the backoff, inflation is allowed; a second hurt doubles the wait.
    d = one(gov, 71, view(cur=4 * GiB, psi_some_avg10=1.0), 4 * GiB - 100 * MiB)
    assert d.kind == "inflate"
    d = one(
        gov, 75, view(cur=4 * GiB - 100 * MiB, major_fault_rate=900.0, psi_some_avg10=1.0), None
    )
    assert d.kind == "rollback" and "120 s" in d.reason
    assert gov.backoff_remaining_s("vm") == pytest.approx(120)


def test_no_rollback_after_the_window() -> None:
    gov = Governor(GovernorConfig(rollback_window_s=30))
    one(gov, 0, view(swap_in_rate_kib=0.0), 4 * GiB - 300 * MiB)
    d = one(gov, 40, view(cur=4 * GiB - 300 * MiB, swap_in_rate_kib=900.0), None)
    assert d.kind == "hold"


def test_stuck_then_uncooperative_guest() -> None:
    gov = Governor(
        GovernorConfig(stuck_after_s=5, uncooperative_after_s=20, uncooperative_retry_s=300)
    )
    one(gov, 0, view(), 4 * GiB - 300 * MiB)
    # The balloon does not move.
    d = one(gov, 2, view(), 4 * GiB - 300 * MiB)
    assert gov.guest_state("vm") == "ok"
    d = one(gov, 6, view(), 4 * GiB - 300 * MiB)
    assert gov.guest_state("vm") == "stuck"
    assert (d.kind, d.rule) == ("hold", "stuck")
    d = one(gov, 21, view(), 4 * GiB - 300 * MiB)
    assert (d.kind, d.rule, d.target_kib) == ("hold", "uncooperative", 4 * GiB)  # request cancelled
    assert gov.guest_state("vm") == "uncooperative"
    d = one(gov, 100, view(), 3 * GiB)
    assert (d.kind, d.rule) == ("hold", "uncooperative")
    # Deflation is still allowed for an uncooperative guest.
    d = one(gov, 101, view(cur=3 * GiB), 3 * GiB + 100 * MiB)
    assert d.kind == "deflate"
    # After the retry period it may be asked again.
    d = one(gov, 401, view(cur=3 * GiB + 100 * MiB), 3 * GiB)
    assert d.kind == "inflate"


def test_progress_keeps_a_slow_guest_ok() -> None:
    gov = Governor()
    one(gov, 0, view(), 4 * GiB - 400 * MiB)
    for t, cur in ((4, 4 * GiB - 50 * MiB), (8, 4 * GiB - 100 * MiB), (12, 4 * GiB - 150 * MiB)):
        one(gov, t, view(cur=cur), 4 * GiB - 400 * MiB)
        assert gov.guest_state("vm") == "ok"


def test_guest_reaching_its_target_is_ok_again() -> None:
    gov = Governor()
    one(gov, 0, view(), 4 * GiB - 300 * MiB)
    one(gov, 6, view(), None)
    assert gov.guest_state("vm") == "stuck"
    one(gov, 7, view(cur=4 * GiB - 300 * MiB), None)
    assert gov.guest_state("vm") == "ok"


def test_state_of_vanished_guests_is_dropped_and_order_kept() -> None:
    gov = Governor()
    ds = gov.decide(0, [view(name="b"), view(name="a")], {"a": 3 * GiB})
    gov.commit(all_applied(ds))
    assert [d.vm for d in ds] == ["b", "a"]
    gov.commit(all_applied(gov.decide(1, [view(name="b")], {})))
    assert gov.guest_state("a") == "ok"


def test_unknown_maximum_holds() -> None:
    d = one(Governor(), 0, view(cur=0, maximum=0), 1 * GiB)
    assert (d.kind, d.rule) == ("hold", "unknown_max")


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="max_inflate_share"):
        GovernorConfig(max_inflate_share=0)
    with pytest.raises(ValueError, match="stuck_after_s"):
        GovernorConfig(stuck_after_s=30, uncooperative_after_s=20)


def test_decision_is_json_ready() -> None:
    import json

    d = one(Governor(), 0, view(), 3 * GiB)
    json.dumps(d.to_json())
    assert set(d.to_json()) == {"vm", "target_kib", "kind", "rule", "reason", "inputs"}


def test_a_target_that_was_not_applied_is_not_held_against_the_guest() -> None:
    # Nothing reached the guest (dry run, libvirt failed): its balloon cannot
    # move, which must not make it stuck, then uncooperative.
    gov = Governor(GovernorConfig(stuck_after_s=5, uncooperative_after_s=20))
    for t in range(0, 60, 2):
        d = one(gov, t, view(), 4 * GiB - 300 * MiB, Outcome.DRY_RUN)
        assert (d.kind, d.rule) == ("inflate", "policy"), f"at {t} s: {d.rule}: {d.reason}"
    assert gov.guest_state("vm") == "ok"


def test_a_target_not_applied_leaves_the_earlier_applied_one_in_force() -> None:
    gov = Governor(GovernorConfig(stuck_after_s=5, uncooperative_after_s=20))
    big = view(cur=4 * GiB, maximum=8 * GiB)
    one(gov, 0, big, 4 * GiB - 300 * MiB)  # applied; the guest never moves
    # The policy changes its mind, but libvirt refuses that one.
    d = one(gov, 2, big, 5 * GiB, Outcome.FAILED)
    assert d.kind == "deflate"
    # The first target was sent and is still outstanding: it counts from 0 s.
    one(gov, 4, big, None)
    assert gov.guest_state("vm") == "ok"
    one(gov, 21, big, None)
    assert gov.guest_state("vm") == "uncooperative"


def test_an_inflation_not_applied_cannot_be_rolled_back() -> None:
    gov = Governor()
    one(gov, 0, view(psi_some_avg10=0.0), 4 * GiB - 300 * MiB, Outcome.VM_GONE)
    # The guest is hurting, but not because of us: nothing to give back.
    d = one(gov, 2, view(psi_some_avg10=50.0), None)
    assert (d.kind, d.rule) == ("hold", "no_proposal")
    assert gov.guest_state("vm") == "ok"


def test_outcomes_for_unknown_guests_or_without_a_decide_are_harmless() -> None:
    gov = Governor()
    gov.commit({"nobody": Outcome.FAILED})
    one(gov, 0, view(), 4 * GiB - 300 * MiB)
    gov.commit({"vm": Outcome.FAILED})  # no decide since the last commit: nothing changes
    assert gov.guest_state("nobody") == "ok"
    one(gov, 6, view(), None)
    assert gov.guest_state("vm") == "stuck"  # the first target stood


def test_decide_changes_nothing_until_commit() -> None:
    gov = Governor(GovernorConfig(stuck_after_s=5, uncooperative_after_s=20))
    one(gov, 0, view(), 4 * GiB - 300 * MiB)
    gov.decide(6, [view()], {"vm": None})  # never committed (the tick failed)
    assert gov.guest_state("vm") == "ok"
    one(gov, 6, view(), None)
    assert gov.guest_state("vm") == "stuck"


def test_a_target_that_reached_the_guest_without_a_call_counts() -> None:
    # The balloon was already there, or the same target was on its way: the
    # target is in force at the guest, and a guest that does not move is stuck.
    for outcome in (Outcome.UNCHANGED, Outcome.ALREADY_REQUESTED):
        gov = Governor(GovernorConfig(stuck_after_s=5, uncooperative_after_s=20))
        one(gov, 0, view(), 4 * GiB - 300 * MiB, outcome)
        one(gov, 6, view(), None)
        assert gov.guest_state("vm") == "stuck", outcome


def test_restarted_timers_give_a_guest_its_full_time_again() -> None:
    gov = Governor(GovernorConfig(stuck_after_s=5, uncooperative_after_s=20))
    one(gov, 0, view(), 4 * GiB - 300 * MiB)
    one(gov, 6, view(), None)
    assert gov.guest_state("vm") == "stuck"
    gov.restart_timers()  # e.g. ebbd was paused from 6 s to 1000 s
    d = one(gov, 1000, view(), None)
    assert d.rule != "uncooperative" and gov.guest_state("vm") == "ok"
    one(gov, 1004, view(), None)
    assert gov.guest_state("vm") == "ok"
    one(gov, 1005, view(), None)
    assert gov.guest_state("vm") == "stuck"
    one(gov, 1020, view(), None)
    assert gov.guest_state("vm") == "uncooperative"
