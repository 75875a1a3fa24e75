"""cooperative: memory given to a guest that asked is not taken back at once.

Seen in the lab: the agent withdraws its need once served and offers again; with
the host still under pressure the next tick took the offer, the guest asked
again, and the balloon swung every tick.
"""

from __future__ import annotations

from typing import Any, Dict

from ebb.host.policies import policy_dir
from ebb.host.policy import Entity, PolicyInput, PolicyRunner, load_policy_dir

GiB = 1024 * 1024
HOST_16G = 16 * GiB


def _state(need: int, offer: int) -> PolicyInput:
    host: Dict[str, Any] = {"mem_available": HOST_16G, "mem_free": int(0.12 * HOST_16G),
                            "ksm_pages_to_scan": 100, "ksm_shareable": 4 * GiB}
    guest: Dict[str, Any] = {
        "balloon_cur": 2 * GiB, "balloon_max": 4 * GiB, "balloon_min": 512 * 1024,
        "mem_unused": GiB, "agent_connected": 1, "report_age": 0.5, "offer": offer,
        "need": need, "need_urgency": 1 if need else 0, "psi_some_avg10": 0.0,
        "swap_in_rate": 0,
    }
    return PolicyInput(Entity({"name": "host"}, [host]),
                       [Entity({"name": "vm1", "uuid": "u1"}, [guest])])


def test_an_offer_right_after_a_need_is_not_taken_under_pressure() -> None:
    runner = PolicyRunner(load_policy_dir(policy_dir("cooperative")))
    served = runner.evaluate(_state(need=256 * 1024, offer=0)).proposed_targets()["vm1"]
    assert served is not None and served > 2 * GiB

    after = runner.evaluate(_state(need=0, offer=300 * 1024)).proposed_targets()["vm1"]
    assert after is None, "the guest's memory was taken back the tick after its need"


def test_the_quiet_spell_ends_and_offers_are_taken_again() -> None:
    runner = PolicyRunner(load_policy_dir(policy_dir("cooperative")))
    runner.evaluate(_state(need=256 * 1024, offer=0))
    quiet = runner.evaluate(_state(need=0, offer=0)).proposed_targets()["vm1"]
    assert quiet is None
    for _ in range(30):
        target = runner.evaluate(_state(need=0, offer=300 * 1024)).proposed_targets()["vm1"]
    assert target is not None and target < 2 * GiB


def test_without_a_recent_need_an_offer_is_taken_at_once() -> None:
    runner = PolicyRunner(load_policy_dir(policy_dir("cooperative")))
    target = runner.evaluate(_state(need=0, offer=300 * 1024)).proposed_targets()["vm1"]
    assert target is not None and target < 2 * GiB


def test_a_need_that_got_nothing_starts_no_quiet_spell() -> None:
    # At boot a guest at its maximum may report a need; nothing can be given, and
    # the next pressure must still take its offer at once.
    runner = PolicyRunner(load_policy_dir(policy_dir("cooperative")))
    at_max = _state(need=256 * 1024, offer=0)
    at_max.guests[0].samples[-1]["balloon_cur"] = 4 * GiB  # type: ignore[index]
    runner.evaluate(at_max)
    target = runner.evaluate(_state(need=0, offer=300 * 1024)).proposed_targets()["vm1"]
    assert target is not None and target < 2 * GiB
