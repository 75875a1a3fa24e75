"""Balloons go all the way back to the maximum when the host is comfortable.

Seen in the lab: a guest given memory for a need ended 1156 KiB below its
maximum; growing to the maximum was a change smaller than
min_balloon_change_percent of its size, so no tick ever gave back the rest.
"""

from __future__ import annotations

from typing import Any, Dict

import pytest
from ebb.host.policies import policy_dir
from ebb.host.policy import Entity, PolicyInput, PolicyRunner, load_policy_dir

MiB = 1024
GiB = 1024 * MiB
HOST_16G = 16 * GiB
MAX = 512 * MiB


def _state(cur: int, agent: bool) -> PolicyInput:
    host: Dict[str, Any] = {"mem_available": HOST_16G, "mem_free": int(0.9 * HOST_16G),
                            "ksm_pages_to_scan": 100, "ksm_shareable": 4 * GiB}
    guest: Dict[str, Any] = {
        "balloon_cur": cur, "balloon_max": MAX, "balloon_min": 192 * MiB,
        "mem_unused": 300 * MiB, "agent_connected": 1 if agent else 0,
        "report_age": 0.5 if agent else None, "offer": 200 * MiB if agent else None,
        "need": 0 if agent else None, "need_urgency": 0 if agent else None,
        "psi_some_avg10": 0.0 if agent else None, "swap_in_rate": 0 if agent else None,
    }
    return PolicyInput(Entity({"name": "host"}, [host]),
                       [Entity({"name": "vm1", "uuid": "u1"}, [guest])])


@pytest.mark.parametrize("policy, agent", [("classic", False), ("cooperative", False),
                                           ("cooperative", True)])
def test_the_last_bit_below_the_maximum_is_given_back(policy: str, agent: bool) -> None:
    runner = PolicyRunner(load_policy_dir(policy_dir(policy)))
    target = runner.evaluate(_state(MAX - 1156, agent)).proposed_targets()["vm1"]
    assert target == MAX
