"""The cooperative policy with ebbd's pressure level: yields first, the balloon as backstop.

A 16 GiB host (16777216 KiB); available_target 20 % = 3355443.2 KiB.
"""

from __future__ import annotations

from typing import Any, Dict, List

from ebb.host.policies import policy_dir
from ebb.host.policy import Entity, Evaluation, PolicyInput, PolicyRunner, load_policy_dir
from policy_testkit import GiB, guest

HOST_16G = 16 * GiB
MiB = 1024
#: What a 4 GiB guest's agent keeps of its cache by default: 5 % of its memory.
KEEP_4G = 0.05 * 4 * GiB


def host(host_fields: Dict[str, Any]) -> Entity:
    fields = {
        "mem_available": HOST_16G,
        "mem_free": 2 * GiB,  # under the freeable line: the old measure says "pressure"
        "meminfo_available": 5 * GiB,
        "pressure_level": 0,
        "ksm_pages_to_scan": 100,
        "ksm_shareable": 4 * GiB,
    }
    fields.update(host_fields)
    return Entity({"name": "host"}, [fields])


def critical_host() -> Entity:
    """MemAvailable 2 % of a 16 GiB host, pressure level critical, nothing for KSM."""
    avail = int(0.02 * HOST_16G)
    return host({"mem_free": avail, "meminfo_available": avail, "pressure_level": 3,
                 "ksm_shareable": 0})


def run(host_fields: Dict[str, Any], guests: List[Entity], name: str = "cooperative") -> Evaluation:
    runner = PolicyRunner(load_policy_dir(policy_dir(name)))
    return runner.evaluate(PolicyInput(host(host_fields), list(guests)))


def yielder(name: str, cache: int, **extra: Any) -> Entity:
    fields = dict(
        balloon_cur=4 * GiB, balloon_max=4 * GiB, balloon_min=512 * MiB, mem_unused=GiB,
        rss=4 * GiB, agent_connected=1, report_age=1.0, offer=0, need=0, need_urgency=0,
        psi_some_avg10=0.0, swap_in_rate=0, cache=cache, yield_capable=1, yield_pending=0,
        yield_fruitless=0,
    )
    fields.update(extra)
    return guest(name, **fields)


def legacy(name: str, **extra: Any) -> Entity:
    fields = dict(balloon_cur=4 * GiB, balloon_max=4 * GiB, balloon_min=512 * MiB,
                  mem_unused=2 * GiB, rss=4 * GiB)
    fields.update(extra)
    return guest(name, **fields)


def yields(ev: Evaluation) -> Dict[str, int]:
    return {n: c["yield_kib"] for n, c in ev.guest_controls.items() if "yield_kib" in c}


def test_a_host_that_lacks_nothing_is_left_alone_whatever_its_freeable_share() -> None:
    # The free page reporting run: little MemFree + cache, but 5 GiB available, no swap.
    guests = [yielder("a", cache=GiB), legacy("b")]
    ev = run({"pressure_level": 0}, guests)
    assert yields(ev) == {}
    assert all(t is None for t in ev.proposed_targets().values())


def test_yields_by_cache_that_cover_the_deficit_take_nothing_by_force() -> None:
    # MemAvailable 2 GiB: short by 3355443 - 2097152 = 1258291 KiB.
    guests = [yielder("big", cache=3 * GiB), yielder("small", cache=GiB), legacy("old")]
    ev = run({"pressure_level": 1, "meminfo_available": 2 * GiB}, guests)
    asked = yields(ev)
    assert set(asked) == {"big", "small"}
    # In proportion to the cache each holds above what its agent keeps.
    ratio = (3 * GiB - KEEP_4G) / (GiB - KEEP_4G)
    assert abs(asked["big"] - ratio * asked["small"]) <= 3
    assert abs(sum(asked.values()) - 1258291) < 4
    assert all(t is None for t in ev.proposed_targets().values())  # the yields cover it


def test_high_pressure_balloons_only_what_yields_do_not_cover_starting_without_agents() -> None:
    # Short by 1258291 KiB; the yielder has 512 MiB of cache: the rest is ballooned,
    # from the guest without an agent, not from the yielder.
    guests = [yielder("y", cache=512 * MiB, offer=600 * MiB), legacy("old")]
    ev = run({"pressure_level": 2, "meminfo_available": 2 * GiB}, guests)
    assert abs(yields(ev)["y"] - (512 * MiB - KEEP_4G)) < 1
    targets = ev.proposed_targets()
    assert targets["old"] is not None and targets["old"] < 4 * GiB
    # The yielder's offer is taken only for what the guest without an agent does not
    # give: here the deficit beyond the yield is 734003 KiB and its offer share covers it.
    assert targets.get("y") is None or targets["y"] >= 4 * GiB - 600 * MiB


def test_a_guest_with_no_cache_above_what_it_keeps_is_not_asked_to_yield() -> None:
    # A 512 MiB guest holding 19 MiB of cache keeps all of it (its reserve is 64 MiB):
    # asking would cost a round trip and give nothing. The balloon takes its offer.
    small = yielder("s", cache=19 * MiB, balloon_cur=512 * MiB, balloon_max=512 * MiB,
                    balloon_min=128 * MiB, rss=512 * MiB, offer=240 * MiB)
    ev = run({"pressure_level": 1, "meminfo_available": 3 * GiB}, [small])
    assert yields(ev) == {}
    assert ev.proposed_targets()["s"] is not None and ev.proposed_targets()["s"] < 512 * MiB
    # With 100 MiB of cache it is asked for what lies above the 64 MiB it keeps.
    cached = yielder("s", cache=100 * MiB, balloon_cur=512 * MiB, balloon_max=512 * MiB,
                     balloon_min=128 * MiB, rss=512 * MiB, offer=240 * MiB)
    ev = run({"pressure_level": 1, "meminfo_available": 3 * GiB}, [cached])
    assert yields(ev) == {"s": 36 * MiB}


def test_yields_that_cover_the_deficit_spare_every_balloon() -> None:
    guests = [yielder("y", cache=3 * GiB), legacy("old")]
    ev = run({"pressure_level": 2, "meminfo_available": 2 * GiB}, guests)
    assert yields(ev)["y"] > 0
    assert all(t is None for t in ev.proposed_targets().values())


def test_awaited_yields_count_and_fruitless_ones_do_not() -> None:
    waiting = yielder("y", cache=3 * GiB, yield_pending=1)
    ev = run({"pressure_level": 2, "meminfo_available": 2 * GiB}, [waiting, legacy("old")])
    # Its earlier ask is not known to this evaluation (no SetVar): the legacy guest pays.
    assert ev.proposed_targets()["old"] is not None
    fruitless = yielder("y", cache=3 * GiB, yield_capable=0, yield_fruitless=1)
    ev = run({"pressure_level": 2, "meminfo_available": 2 * GiB}, [fruitless])
    assert yields(ev) == {}
    assert ev.proposed_targets()["y"] is not None  # handled like a guest without an agent


def test_memory_returned_by_free_page_reporting_is_not_ballooned() -> None:
    # The guest has 4 GiB, but only 1.5 GiB of it is resident at the host: its free
    # memory is back already, a balloon would give the host nothing.
    reported = legacy("fpr", rss=int(1.5 * GiB))
    ev = run({"pressure_level": 2, "meminfo_available": 2 * GiB}, [reported])
    assert ev.proposed_targets().get("fpr") is None
    resident = legacy("plain")
    ev = run({"pressure_level": 2, "meminfo_available": 2 * GiB}, [resident])
    assert ev.proposed_targets()["plain"] < 4 * GiB


def test_a_needy_guest_is_served_at_once_and_never_asked_to_yield() -> None:
    needy = yielder("n", cache=GiB, balloon_cur=3 * GiB, need=256 * MiB, need_urgency=2,
                    mem_free=0)
    ev = run({"pressure_level": 1, "meminfo_available": 2 * GiB, "mem_free": 4 * GiB}, [needy])
    assert yields(ev) == {}
    assert ev.proposed_targets()["n"] == 3 * GiB + 256 * MiB


def test_swapping_alone_asks_one_step() -> None:
    # Level 2 from swapping with 5 GiB available: one step of 2 % of the host.
    ev = run({"pressure_level": 2, "meminfo_available": 5 * GiB}, [yielder("y", cache=3 * GiB)])
    assert abs(yields(ev)["y"] - 0.02 * HOST_16G) < 2


def test_classic_is_unchanged_by_the_level() -> None:
    guests = [legacy("old", mem_unused=2 * GiB)]
    with_level = run({"pressure_level": 0}, guests, name="classic")
    assert with_level.proposed_targets()["old"] is not None  # classic: freeable 12.5 % < 20 %


def test_an_agent_that_cannot_yield_is_ballooned_for_what_the_yields_miss() -> None:
    # Level 1, short by 1258291 KiB; the yielder's 256 MiB of cache cannot cover it.
    plain = yielder("plain", cache=GiB, offer=800 * MiB, yield_capable=0)
    small = yielder("y", cache=256 * MiB, offer=800 * MiB)
    ev = run({"pressure_level": 1, "meminfo_available": 2 * GiB}, [plain, small])
    assert set(yields(ev)) == {"y"}
    targets = ev.proposed_targets()
    assert targets["plain"] is not None and targets["plain"] < 4 * GiB
    # The yielding guest's offer is taken only for what the other's offer leaves.
    assert targets.get("y") is None or targets["y"] > targets["plain"]


def test_a_guest_that_reports_and_yields_is_not_ballooned_until_the_host_is_critical() -> None:
    # Free page reporting gives its free memory back and yields its cold cache: a balloon
    # below the critical level would only take memory it wants again (on the lab the
    # growing guest's offer was ballooned and the guest then swapped while it deflated).
    def reporting() -> Entity:
        return yielder("r", cache=256 * MiB, offer=2 * GiB, free_page_reporting=1,
                       rss=3 * GiB)

    for level in (1, 2):
        ev = run({"pressure_level": level, "meminfo_available": 2 * GiB}, [reporting()])
        assert yields(ev)["r"] > 0
        assert ev.proposed_targets().get("r") is None, level
    # The same guest without free page reporting is ballooned for what its yield misses.
    plain = yielder("r", cache=256 * MiB, offer=2 * GiB, rss=3 * GiB)
    ev = run({"pressure_level": 2, "meminfo_available": 2 * GiB}, [plain])
    assert ev.proposed_targets()["r"] < 4 * GiB
    # Critical: the balloon is the backstop for every guest.
    ev = run({"pressure_level": 3, "meminfo_available": 512 * MiB}, [reporting()])
    assert ev.proposed_targets()["r"] < 4 * GiB


def test_only_the_cache_its_agent_counts_as_cold_is_asked_for() -> None:
    # 1 GiB of cache, of which the agent counts 100 MiB as cold (clean, unused for its
    # cache_hold_s): the rest is the guest's working set, and a yield of it would cost
    # the guest that cache again. The host is short by far more.
    hot = yielder("hot", cache=GiB, cold=100 * MiB)
    ev = run({"pressure_level": 1, "meminfo_available": 2 * GiB}, [hot])
    assert yields(ev) == {"hot": 100 * MiB}
    # An agent that says nothing of its cold cache is asked by its cache above what it keeps.
    older = yielder("older", cache=GiB)
    ev = run({"pressure_level": 1, "meminfo_available": 2 * GiB}, [older])
    assert abs(yields(ev)["older"] - (GiB - KEEP_4G)) < 1
    # Nothing cold: not asked at all.
    warm = yielder("warm", cache=GiB, cold=0)
    ev = run({"pressure_level": 1, "meminfo_available": 2 * GiB}, [warm])
    assert yields(ev) == {}


def reporting_guest(name: str, offer: int, **extra: Any) -> Entity:
    """A guest with free page reporting and a yielding agent, with no cold cache."""
    return yielder(name, cache=0, offer=offer, free_page_reporting=1, **extra)


def taken(ev: Evaluation, guests: List[Entity]) -> int:
    targets = ev.proposed_targets()
    return sum(4 * GiB - t for t in targets.values() if t is not None)


def test_the_critical_backstop_takes_from_self_returning_guests_only_what_ends_critical() -> None:
    # MemAvailable 2 % of the host: critical. Balloons take from guests that give memory
    # back by themselves only what brings it to critical_available_target (8 %), 6 % of
    # the host, not the 18 % up to available_target: on the lab a backstop sized to
    # available_target took a third of one guest at once and the guest then swapped.
    avail = int(0.02 * HOST_16G)
    guests = [reporting_guest("a", offer=2 * GiB), reporting_guest("b", offer=GiB)]
    ev = run({"pressure_level": 3, "meminfo_available": avail}, guests)
    assert abs(taken(ev, guests) - 0.06 * HOST_16G) < 4
    targets = ev.proposed_targets()
    # In proportion to the offers.
    assert abs((4 * GiB - targets["a"]) - 2 * (4 * GiB - targets["b"])) < 4
    # A guest without free page reporting is still ballooned for the whole deficit.
    plain = [yielder("p", cache=0, offer=3 * GiB)]
    ev = run({"pressure_level": 3, "meminfo_available": avail}, plain)
    assert abs(taken(ev, plain) - 0.18 * HOST_16G) < 4


def test_critical_by_swapping_alone_takes_one_step_from_self_returning_guests() -> None:
    guests = [reporting_guest("a", offer=2 * GiB)]
    ev = run({"pressure_level": 3, "meminfo_available": 5 * GiB}, guests)
    assert abs(taken(ev, guests) - 0.02 * HOST_16G) < 4


def test_a_self_returning_guest_offering_nothing_is_not_squeezed_when_offers_end_critical() -> None:
    # The other guest's offer covers what ends the critical level: the guest whose
    # memory is all in use keeps it, although the offer is short of available_target.
    avail = int(0.02 * HOST_16G)
    busy = reporting_guest("busy", offer=0, mem_unused=0)
    guests = [reporting_guest("giver", offer=2 * GiB), busy]
    ev = run({"pressure_level": 3, "meminfo_available": avail, "mem_free": avail}, guests)
    assert ev.proposed_targets().get("busy") is None
    # When no offer covers it, the backstop squeezes it (the host is nearly out).
    ev = run({"pressure_level": 3, "meminfo_available": avail, "mem_free": avail},
             [reporting_guest("busy", offer=0, mem_unused=0)])
    assert ev.proposed_targets()["busy"] < 4 * GiB


def test_memory_a_reporting_guest_just_freed_is_left_to_come_back_by_itself() -> None:
    # Critical (MemAvailable 2 %) just as a guest with free page reporting frees 1 GiB:
    # the guest kernel hands it back within seconds, so no balloon takes it. Only if it
    # is still not back two ticks on is it offered like any other memory.
    runner = PolicyRunner(load_policy_dir(policy_dir("cooperative")))
    critical = critical_host()

    def tick(mem_unused: int) -> Evaluation:
        freeing = reporting_guest("f", offer=max(0, mem_unused - 256 * MiB),
                                  mem_unused=mem_unused)
        return runner.evaluate(PolicyInput(critical, [freeing]))

    tick(200 * MiB)
    tick(200 * MiB)
    freed = tick(200 * MiB + GiB)  # freed 1 GiB since the last tick
    assert freed.proposed_targets().get("f") is None
    tick(200 * MiB + GiB)
    still = tick(200 * MiB + GiB)  # two ticks on, the host is still critical
    assert still.proposed_targets()["f"] < 4 * GiB


def test_below_critical_a_self_returning_guests_balloon_goes_back() -> None:
    # Inflated by the backstop at the critical level; now the host is at level 1 or 2.
    # Its balloon costs the host only what the guest uses again (reporting returns the
    # rest): it deflates, where a guest without free page reporting holds.
    for level in (1, 2):
        back = reporting_guest("r", offer=100 * MiB, balloon_cur=3 * GiB)
        ev = run({"pressure_level": level, "meminfo_available": 2 * GiB}, [back])
        assert ev.proposed_targets()["r"] > 3 * GiB, level
        plain = yielder("p", cache=0, offer=0, balloon_cur=3 * GiB, mem_unused=0)
        ev = run({"pressure_level": level, "meminfo_available": 2 * GiB}, [plain])
        assert ev.proposed_targets().get("p") in (None, 3 * GiB), level


def test_at_critical_a_busy_self_returning_guest_is_squeezed_only_while_the_host_suffers() -> None:
    # MemAvailable 2 %, so critical, and no offer covers it. On a host with swap that
    # neither swaps nor stalls, the guest whose memory is all in use keeps it: on the
    # lab such a squeeze was given back within 10 s and cost the page cache p95 20 %.
    avail = int(0.02 * HOST_16G)
    calm = {"pressure_level": 3, "meminfo_available": avail, "mem_free": avail,
            "swap_total": 4 * GiB, "swap_in_rate": 0, "swap_out_rate": 2,
            "psi_some_avg10": 0.7}
    ev = run(calm, [reporting_guest("busy", offer=0, mem_unused=0)])
    assert ev.proposed_targets().get("busy") is None
    for distress in ({"swap_out_rate": 400}, {"swap_in_rate": 300}, {"psi_some_avg10": 6.0},
                     {"swap_total": 0}):
        ev = run({**calm, **distress}, [reporting_guest("busy", offer=0, mem_unused=0)])
        assert ev.proposed_targets()["busy"] < 4 * GiB, distress
    # A guest that does not return memory by itself is squeezed as before.
    plain = yielder("plain", cache=0, offer=0, mem_unused=0)
    assert run(calm, [plain]).proposed_targets()["plain"] < 4 * GiB


def test_memory_just_freed_is_seen_in_the_agents_report_before_the_balloon_statistics() -> None:
    # Memknobs on the lab: the host critical, a reporting guest's agent offers the
    # 239 MiB its workload just freed while the balloon statistics still read 105 MiB
    # unused. That memory is on its way back by free page reporting: no balloon takes it.
    runner = PolicyRunner(load_policy_dir(policy_dir("cooperative")))
    critical = critical_host()

    def tick(agent_free: int) -> Evaluation:
        freeing = yielder("f", cache=300 * MiB, offer=max(0, agent_free - 256 * MiB),
                          free_page_reporting=1,
                          mem_unused=200 * MiB,  # the lagging balloon statistic
                          meminfo_available=agent_free + 300 * MiB)
        return runner.evaluate(PolicyInput(critical, [freeing]))

    tick(200 * MiB)
    tick(200 * MiB)
    freed = tick(200 * MiB + GiB)  # the agent's report: 1 GiB freed since the last tick
    assert freed.proposed_targets().get("f") is None


def test_the_page_cache_warm_up_is_not_distress() -> None:
    # The lab's page cache scenario, three guests reading their files into their
    # caches: MemAvailable 3 % for 30 s, the host's memory PSI some at most 1.4-2.1 %
    # and at most 117 pages/s swapped, on a few ticks. The squeeze this caused was
    # given back 2-7 s later as the guests refaulted their cache, and their p95 was
    # 5.3-6.4 ms against 3.9-4.4 ms without ebbd. Real distress on the lab: 800-28000
    # pages/s and PSI 11-27 % (slow disk), 800-6700 pages/s (a cold cache trial).
    avail = int(0.03 * HOST_16G)
    for warm_up in ({"swap_out_rate": 117, "psi_some_avg10": 1.44},
                    {"swap_in_rate": 5, "swap_out_rate": 63, "psi_some_avg10": 2.1}):
        host = {"pressure_level": 3, "meminfo_available": avail, "mem_free": avail,
                "swap_total": 4 * GiB, "swap_in_rate": 0, **warm_up}
        guests = [reporting_guest(f"pc{i}", offer=0, mem_unused=0) for i in range(3)]
        ev = run(host, guests)
        assert all(ev.proposed_targets().get(f"pc{i}") is None for i in range(3)), warm_up
