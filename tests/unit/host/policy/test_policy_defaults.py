"""The shipped policies on hand-computed states.

Numbers: a 16 GiB host is 16777216 KiB; the 20 % threshold is 3355443.2 KiB.
"""

from __future__ import annotations

import filecmp
from typing import Any, Dict, List

import pytest
from ebb.host.policies import DEFAULT_POLICY, POLICY_NAMES, policy_dir
from ebb.host.policy import Entity, Evaluation, PolicyInput, PolicyRunner, load_policy_dir
from policy_testkit import GiB, guest

HOST_16G = 16 * GiB


def run(name: str, host_fields: Dict[str, Any], guests: List[Entity] = ()) -> Evaluation:  # type: ignore[assignment]
    fields = {"mem_available": HOST_16G, "ksm_pages_to_scan": 100, "ksm_shareable": 4 * GiB}
    fields.update(host_fields)
    runner = PolicyRunner(load_policy_dir(policy_dir(name)))
    return runner.evaluate(PolicyInput(Entity({"name": "host"}, [fields]), list(guests)))


def vm(name: str, cur: int, unused: int, maximum: int = 4 * GiB, **extra: Any) -> Entity:
    fields = {
        "balloon_cur": cur,
        "balloon_max": maximum,
        "balloon_min": 512 * 1024,
        "mem_unused": unused,
    }
    fields.update(extra)
    return guest(name, **fields)


def test_shipped_policies_exist_and_share_their_common_files() -> None:
    assert DEFAULT_POLICY == "cooperative"
    for name in POLICY_NAMES:
        files = sorted(p.name for p in policy_dir(name).glob("*.policy"))
        assert files[0] == "00-defines.policy"
        load_policy_dir(policy_dir(name))
    assert filecmp.cmp(policy_dir("classic") / "20-balloon-functions.policy",
                       policy_dir("cooperative") / "20-balloon-functions.policy", shallow=False)
    # The cooperative KSM file is ksmtuned's (classic's) with a gate added before it.
    classic_ksm = (policy_dir("classic") / "10-ksm.policy").read_text()
    coop_ksm = (policy_dir("cooperative") / "10-ksm.policy").read_text()
    assert classic_ksm.split("(def ksm_change_npages")[1].split("(def ksm_tune")[0] in coop_ksm


def test_the_ksm_level_is_set_in_the_file_that_reads_it() -> None:
    # Policy files are conffiles: an upgrade keeps an edited 00-defines.policy and
    # brings the new 10-ksm.policy. Set only in 00-defines, ksm_level would be
    # undefined there and ebbd would find no policy to load.
    coop = policy_dir("cooperative")
    assert "(defvar ksm_level " in (coop / "10-ksm.policy").read_text()
    assert "ksm_level" not in (coop / "00-defines.policy").read_text()


# ---------------------------------------------------------------- KSM ----


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_ksm_stops_when_free_and_vms_fit(name: str) -> None:
    # free 8 GiB > 3.2 GiB and 4 GiB of VMs + 3.2 GiB < 16 GiB: not needed.
    ev = run(name, {"mem_free": 8 * GiB, "ksm_shareable": 4 * GiB})
    assert ev.host_controls == {"ksm_run": 0}


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_ksm_runs_when_vms_do_not_fit_and_decays(name: str) -> None:
    # free is fine but 14 GiB of VMs + 3.2 GiB > 16 GiB: run, pages decay by 50.
    ev = run(name, {"mem_free": 8 * GiB, "ksm_shareable": 14 * GiB, "ksm_pages_to_scan": 500})
    assert ev.host_controls == {"ksm_run": 1, "ksm_sleep_millisecs": 10, "ksm_pages_to_scan": 450}


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_ksm_boosts_under_pressure(name: str) -> None:
    ev = run(name, {"mem_free": 2 * GiB, "ksm_pages_to_scan": 500})
    assert ev.host_controls["ksm_run"] == 1
    assert ev.host_controls["ksm_pages_to_scan"] == 800


@pytest.mark.parametrize(
    ("pages", "free", "expected"),
    [
        (1000, 2 * GiB, 1250),
        (1250, 2 * GiB, 1250),
        (100, 2 * GiB, 400),
        (100, 8 * GiB, 64),
        (64, 8 * GiB, 64),
    ],
)
def test_ksm_pages_are_clamped(pages: int, free: int, expected: int) -> None:
    ev = run("classic", {"mem_free": free, "ksm_shareable": 14 * GiB, "ksm_pages_to_scan": pages})
    assert ev.host_controls["ksm_pages_to_scan"] == expected


@pytest.mark.parametrize(
    ("total", "sleep_ms"),
    [(16 * GiB, 10), (8 * GiB, 20), (4 * GiB, 40), (12 * GiB, 13), (64 * GiB, 10)],
)
def test_ksm_sleep_scales_inversely_with_host_memory(total: int, sleep_ms: int) -> None:
    # ksmtuned: 10 ms for 16 GiB, sleep = 10 * 16 GiB / total, at least 10 ms.
    ev = run("classic", {"mem_available": total, "mem_free": total // 10, "ksm_shareable": total})
    assert ev.host_controls["ksm_sleep_millisecs"] == sleep_ms


def test_cooperative_runs_ksm_only_while_the_host_is_short() -> None:
    # ksmtuned's rule says run (14 GiB of VMs do not fit beside its 20 %), but
    # ebbd's level says the host lacks nothing: KSM's scanning would only take
    # CPU from the guests, for memory nobody needs.
    fits_not = {"mem_free": 8 * GiB, "ksm_shareable": 14 * GiB, "ksm_pages_to_scan": 500}
    assert run("cooperative", {**fits_not, "pressure_level": 0}).host_controls == {"ksm_run": 0}
    short = run("cooperative", {**fits_not, "pressure_level": 1}).host_controls
    assert short["ksm_run"] == 1 and short["ksm_pages_to_scan"] == 450


def test_classic_runs_ksm_as_ksmtuned_whatever_the_level() -> None:
    ev = run("classic", {"mem_free": 8 * GiB, "ksm_shareable": 14 * GiB, "pressure_level": 0})
    assert ev.host_controls["ksm_run"] == 1


def test_ksm_left_alone_without_ksm_statistics() -> None:
    ev = run("classic", {"mem_free": 2 * GiB, "ksm_pages_to_scan": None})
    assert ev.host_controls == {}
    assert any("KSM left alone" in line for line in ev.debug)


# ------------------------------------------------------------ balloon ----


def test_classic_balloons_guests_with_more_unused_memory_most() -> None:
    # freeable 2 GiB of 16 = 12.5 % < 20 %: guests keep 0.2 * 0.125 / 0.2 = 12.5 % free,
    # at most 5 % of their size taken per tick.
    guests = [
        vm("a", 4 * GiB, unused=2 * GiB),  # wants 2 GiB + 512 MiB; 5 % cap: 3984588.8
        vm("b", 4 * GiB, unused=300 * 1024),  # wants 3887104 + 524288 > 4 GiB: nothing
        vm("c", 4 * GiB, unused=700 * 1024),  # wants 3477504 + 524288 = 4001792
    ]
    ev = run("classic", {"mem_free": 2 * GiB}, guests)
    assert ev.proposed_targets() == {"a": 3984588, "b": None, "c": 4001792}
    taken = {n: 4 * GiB - (t or 4 * GiB) for n, t in ev.proposed_targets().items()}
    assert taken["a"] > taken["c"] > taken["b"] == 0


def test_classic_critical_pressure_pushes_guests_past_their_unused_memory() -> None:
    # 4 % freeable: guests keep -0.05 + 0.04 = -1 % free: the target is below what
    # the guest uses (4 GiB - 100 MiB - 1 % of 4 GiB), so it must evict cache or swap.
    ev = run("classic", {"mem_free": int(0.04 * HOST_16G)}, [vm("a", 4 * GiB, unused=100 * 1024)])
    assert ev.proposed_targets() == {"a": 4049960}
    assert 4 * GiB - 100 * 1024 > 4049960


def test_classic_deflates_when_pressure_subsides() -> None:
    # 50 % freeable: guests may keep 50 % free. "a": used 2 GiB of 3 GiB, grows to
    # max(3 GiB * 1.05, 2 GiB + 0.5 * 3 GiB) = 3.5 GiB; "full" is at its maximum.
    guests = [vm("a", 3 * GiB, unused=1 * GiB), vm("full", 4 * GiB, unused=1 * GiB)]
    ev = run("classic", {"mem_free": 8 * GiB}, guests)
    assert ev.proposed_targets() == {"a": 3670016, "full": None}


def test_classic_grows_by_at_least_five_percent_and_never_past_max() -> None:
    guests = [vm("a", 3 * GiB, unused=int(2.9 * GiB)), vm("b", 4 * GiB - 1000, unused=3 * GiB)]
    ev = run("classic", {"mem_free": 8 * GiB}, guests)
    # b is closer to its maximum than the smallest change, but the last step to the
    # maximum is always proposed (the governor skips what is under a MiB).
    assert ev.proposed_targets() == {"a": int(3 * GiB * 1.05), "b": 4 * GiB}


def test_classic_never_goes_below_the_guest_floor() -> None:
    g = vm("a", 1 * GiB, unused=1 * GiB - 10, balloon_min=1 * GiB - 100)
    ev = run("classic", {"mem_free": 2 * GiB}, [g])
    assert ev.proposed_targets() == {"a": None}


def test_classic_uses_the_mean_of_the_history() -> None:
    g = guest(
        "a",
        samples=[
            {"balloon_cur": 4 * GiB, "balloon_max": 4 * GiB, "balloon_min": 0, "mem_unused": 0},
            {
                "balloon_cur": 4 * GiB,
                "balloon_max": 4 * GiB,
                "balloon_min": 0,
                "mem_unused": 1 * GiB,
            },
        ],
    )
    # used = 4 GiB - mean(0, 1 GiB) = 3.5 GiB; + 12.5 % of 4 GiB = 4 GiB: nothing to take.
    ev = run("classic", {"mem_free": 2 * GiB}, [g])
    assert ev.proposed_targets() == {"a": None}


def test_guest_without_balloon_statistics_is_left_alone() -> None:
    ev = run("classic", {"mem_free": 2 * GiB}, [guest("x", balloon_cur=GiB, balloon_max=GiB)])
    assert ev.proposed_targets() == {"x": None}
    assert any("balloon statistics missing for x" in line for line in ev.debug)


# -------------------------------------------------------- cooperative ----


def agent(name: str, cur: int, unused: int, offer: int = 0, need: int = 0, **extra: Any) -> Entity:
    fields = dict(
        agent_connected=1,
        report_age=1.0,
        offer=offer,
        need=need,
        need_urgency=0,
        psi_some_avg10=0.0,
        swap_in_rate=0,
    )
    fields.update(extra)
    return vm(name, cur, unused, **fields)


def test_cooperative_takes_only_from_offers_when_they_cover_the_deficit() -> None:
    # freeable 3 GiB: deficit = 3355443.2 - 3145728 = 209715.2 KiB. "giver" offers
    # 400 MiB, so it gives 209715 KiB; nobody else is touched.
    guests = [
        agent("giver", 4 * GiB, unused=GiB, offer=400 * 1024),
        agent("quiet", 4 * GiB, unused=2 * GiB),
        vm("legacy", 4 * GiB, unused=2 * GiB),
    ]
    ev = run("cooperative", {"mem_free": 3 * GiB}, guests)
    assert ev.proposed_targets() == {
        "giver": int(4 * GiB - 209715.2),
        "quiet": None,
        "legacy": None,
    }


def test_cooperative_takes_all_offers_then_squeezes_guests_without_an_agent() -> None:
    # freeable 2 GiB (12.5 %): deficit 1.2 GiB > the 100 MiB offered.
    guests = [
        agent("giver", 4 * GiB, unused=GiB, offer=100 * 1024),
        agent("quiet", 4 * GiB, unused=2 * GiB),
        vm("legacy", 4 * GiB, unused=2 * GiB),
    ]
    ev = run("cooperative", {"mem_free": 2 * GiB}, guests)
    assert ev.proposed_targets() == {
        "giver": 4 * GiB - 100 * 1024,
        # Its agent offers nothing: its memory is in use, and the host is not critical.
        "quiet": None,
        "legacy": 3984588,  # classic shrink, as in the classic test
    }


def test_cooperative_squeezes_agent_guests_that_offer_nothing_when_critical() -> None:
    # freeable 0.5 GiB: 3 %, below pressure_critical (5 %).
    guests = [
        agent("giver", 4 * GiB, unused=GiB, offer=100 * 1024),
        agent("quiet", 4 * GiB, unused=2 * GiB),
        vm("legacy", 4 * GiB, unused=2 * GiB),
    ]
    ev = run("cooperative", {"mem_free": GiB // 2}, guests)
    assert ev.proposed_targets() == {
        "giver": 4 * GiB - 100 * 1024,
        "quiet": 3984588,  # classic shrink: 5 % of the guest per tick
        "legacy": 3984588,
    }


def test_cooperative_never_takes_from_needy_or_stalling_guests() -> None:
    guests = [
        agent("stalling", 4 * GiB, unused=2 * GiB, offer=GiB, psi_some_avg10=25.0),
        agent("swapping", 4 * GiB, unused=2 * GiB, swap_in_rate=5000),
        agent("needy", 3 * GiB, unused=2 * GiB, offer=GiB, need=0, need_urgency=1),
    ]
    # freeable 2 GiB (pressure); spare above the 1.6 GiB reserve: 0.4 GiB.
    ev = run("cooperative", {"mem_free": 2 * GiB}, guests)
    t = ev.proposed_targets()
    assert t["stalling"] is None and t["swapping"] is None
    # urgent with no amount: as much as the spare allows, up to its maximum.
    assert t["needy"] == int(3 * GiB + 0.4 * GiB)


def test_cooperative_gives_a_need_at_once_while_the_host_has_spare() -> None:
    # Host at 20-25 %: holding, not comfortable. spare = 3.5 GiB freeable - 10 %
    # reserve (1.6 GiB) = 1.9 GiB: the 700 MiB asked for are given in one tick.
    ev = run("cooperative", {"mem_free": int(3.5 * GiB)},
             [agent("a", 2 * GiB, unused=0, need=700 * 1024)])
    assert ev.proposed_targets() == {"a": 2 * GiB + 700 * 1024}


def test_cooperative_a_small_need_on_a_comfortable_host_still_gets_the_refill() -> None:
    # Seen in the lab: after pressure ended, a guest kept asking for 1 MiB and got
    # exactly that (too small to apply) while the other guest went back to its maximum.
    cur, maximum = 239616, 524288
    g = agent("a", cur, unused=100 * 1024, need=1024, maximum=maximum)
    ev = run("cooperative", {"mem_free": 8 * GiB}, [g])
    target = ev.proposed_targets()["a"]
    assert target is not None and target >= cur + 0.05 * cur


def test_cooperative_shares_the_spare_between_needy_guests_by_what_they_ask() -> None:
    # freeable 2 GiB, reserve 1.6 GiB: 0.4 GiB = 419430.4 KiB to share; asked 400 MiB
    # in all: each gets all it asked.
    enough = run("cooperative", {"mem_free": 2 * GiB}, [
        agent("first", 2 * GiB, unused=0, need=300 * 1024),
        agent("second", 2 * GiB, unused=0, need=100 * 1024),
    ])
    assert enough.proposed_targets() == {"first": 2 * GiB + 300 * 1024,
                                         "second": 2 * GiB + 100 * 1024}
    # Asked 800 MiB: each gets 419430.4 / 819200 of what it asked, whatever its place.
    short = run("cooperative", {"mem_free": 2 * GiB}, [
        agent("first", 2 * GiB, unused=0, need=300 * 1024),
        agent("second", 2 * GiB, unused=0, need=100 * 1024),
        agent("last", 2 * GiB, unused=0, need=400 * 1024),
    ])
    scale = 419430.4 / (800 * 1024)
    assert short.proposed_targets() == {
        "first": int(2 * GiB + scale * 300 * 1024),
        "second": int(2 * GiB + scale * 100 * 1024),
        "last": int(2 * GiB + scale * 400 * 1024),
    }


def test_cooperative_the_last_needy_guest_is_not_starved() -> None:
    # Seen in the evaluation: with the spare short of the needs, the guest last in
    # the list got nothing for two minutes while it swapped and the others were served.
    guests = [agent(name, 2 * GiB, unused=0, need=256 * 1024, swap_in_rate=4096)
              for name in ("oc-1", "oc-2", "oc-3", "oc-4")]
    ev = run("cooperative", {"mem_free": int(1.7 * GiB)}, guests)  # 100 MiB above the reserve
    targets = ev.proposed_targets()
    assert targets["oc-4"] is not None and targets["oc-4"] > 2 * GiB
    assert len(set(targets.values())) == 1, targets


def test_cooperative_gives_nothing_when_the_host_is_at_its_reserve() -> None:
    ev = run("cooperative", {"mem_free": GiB}, [agent("a", 2 * GiB, unused=0, need=300 * 1024)])
    assert ev.proposed_targets() == {"a": None}


def test_cooperative_need_is_capped_at_the_guest_maximum() -> None:
    ev = run("cooperative", {"mem_free": 8 * GiB}, [agent("a", 4 * GiB - 1024, unused=0, need=GiB)])
    assert ev.proposed_targets() == {"a": 4 * GiB}


def test_cooperative_refills_every_guest_once_the_host_is_comfortable() -> None:
    # Pressure over, balloons deflate back towards the maximum: also for a guest
    # that offers memory (an idle guest always does), or it would stay squeezed
    # on a host with memory to spare.
    guests = [
        agent("offering", 2 * GiB, unused=GiB, offer=GiB),
        agent("busy", 2 * GiB, unused=0),
    ]
    ev = run("cooperative", {"mem_free": 8 * GiB}, guests)
    t = ev.proposed_targets()
    assert t["offering"] is not None and t["offering"] > 2 * GiB
    assert t["busy"] == 3145728  # classic growth: 2 GiB used + 50 % free


def test_cooperative_stale_agent_falls_back_to_classic() -> None:
    guests = [agent("stale", 4 * GiB, unused=2 * GiB, offer=0, report_age=60.0, need=GiB)]
    ev = run("cooperative", {"mem_free": 2 * GiB}, guests)
    assert ev.proposed_targets() == {"stale": 3984588}


def test_cooperative_and_classic_agree_for_guests_without_agents() -> None:
    guests = [vm("a", 4 * GiB, unused=2 * GiB), vm("b", 3 * GiB, unused=GiB)]
    for free in (int(0.04 * HOST_16G), 2 * GiB, 8 * GiB):
        assert (
            run("cooperative", {"mem_free": free}, guests).guest_controls
            == run("classic", {"mem_free": free}, guests).guest_controls
        )


# ------------------------------------------- reaction time and hysteresis ----
# ebbd keeps 10 samples per host (EngineSettings.history_len); these states do too.

HISTORY = 10


def run_history(name: str, free_shares: List[float], guests: List[Entity]) -> Evaluation:
    """Evaluate a shipped policy on a host whose freeable share went through ``free_shares``
    (oldest first; the last one is the newest sample)."""
    samples = [
        {
            "mem_available": HOST_16G,
            "mem_free": int(share * HOST_16G),
            "ksm_pages_to_scan": 100,
            "ksm_shareable": 4 * GiB,
        }
        for share in free_shares
    ]
    runner = PolicyRunner(load_policy_dir(policy_dir(name)))
    return runner.evaluate(PolicyInput(Entity({"name": "host"}, samples), list(guests)))


def balloon_moves(ev: Evaluation, guests: List[Entity]) -> str:
    """'inflate' when some guest would be given a smaller target, 'deflate' when some
    would get more memory, else 'hold'."""
    cur = {g.props["name"]: g.samples[-1]["balloon_cur"] for g in guests}
    moves = {
        "inflate" if t < cur[n] else "deflate"
        for n, t in ev.proposed_targets().items()
        if t is not None and t != cur[n]
    }
    assert len(moves) <= 1, moves
    return moves.pop() if moves else "hold"


def sliding(levels: List[float], name: str, guests: List[Entity]) -> List[str]:
    """What the policy does at each tick as the host goes through ``levels``, with the
    last HISTORY samples kept, as ebbd keeps them."""
    return [
        balloon_moves(run_history(name, levels[max(0, i + 1 - HISTORY) : i + 1], guests), guests)
        for i in range(HISTORY, len(levels))
    ]


def shrinkable() -> List[Entity]:
    # Both guests have room to give and room to grow (3 of 4 GiB, 1 GiB unused).
    return [agent("quiet", 3 * GiB, unused=GiB), vm("legacy", 3 * GiB, unused=GiB)]


def test_cooperative_inflates_on_the_first_sample_under_the_threshold() -> None:
    # Nine comfortable samples (50 %) and the newest at 12.5 %: the mean is 46.25 %, but the
    # host is short now. The guest without an agent is shrunk by the classic rule at the
    # current 12.5 %: 5 % of 3 GiB at most (wanted: 2 GiB used + 12.5 % of 3 GiB =
    # 2490368 KiB). The agent guest offers nothing and the host is not critical: kept.
    guests = shrinkable()
    ev = run_history("cooperative", [0.50] * 9 + [0.125], guests)
    assert ev.proposed_targets() == {"quiet": None, "legacy": 2988441}
    # At 4 % (critical) the agent guest is squeezed the same way.
    ev = run_history("cooperative", [0.50] * 9 + [0.04], guests)
    assert ev.proposed_targets() == {"quiet": 2988441, "legacy": 2988441}


def test_cooperative_sizes_what_it_takes_by_the_current_deficit() -> None:
    # Newest 3 GiB freeable (18.75 %) after nine at 50 %: the deficit is what the host lacks
    # now, 3355443.2 - 3145728 = 209715.2 KiB, taken from the offer alone.
    guests = [
        agent("giver", 4 * GiB, unused=GiB, offer=400 * 1024),
        agent("quiet", 4 * GiB, 2 * GiB),
    ]
    ev = run_history("cooperative", [0.50] * 9 + [3 / 16], guests)
    assert ev.proposed_targets() == {"giver": int(4 * GiB - 209715.2), "quiet": None}


def test_classic_keeps_the_moms_averaging_on_the_same_state() -> None:
    # Same state: the mean (46.25 %) is above 20 %, so MOM's rule gives memory back.
    guests = shrinkable()
    assert balloon_moves(run_history("classic", [0.50] * 9 + [0.125], guests), guests) == "deflate"


@pytest.mark.parametrize("newest", [0.21, 0.24])
def test_cooperative_does_not_deflate_when_the_host_is_barely_back(newest: float) -> None:
    # One sample under the threshold, then the newest just above it: no pressure any more,
    # but not comfortable (25 %) either: balloons hold. Classic, on its mean, deflates.
    guests = shrinkable()
    levels = [0.50] * 8 + [0.125, newest]
    assert balloon_moves(run_history("cooperative", levels, guests), guests) == "hold"
    assert balloon_moves(run_history("classic", levels, guests), guests) == "deflate"


def test_cooperative_deflates_only_when_current_and_mean_are_comfortable() -> None:
    guests = shrinkable()
    # Newest at 50 % after a long episode at 15 %: the mean (18.5 %) is not comfortable.
    assert balloon_moves(run_history("cooperative", [0.15] * 9 + [0.50], guests), guests) == "hold"
    # Mean 26 % and newest 30 %: both above 25 %: memory goes back by the classic rule.
    ev = run_history("cooperative", [0.25] * 9 + [0.30], guests)
    assert balloon_moves(ev, guests) == "deflate"


def test_cooperative_follows_a_dip_at_once_and_holds_until_the_host_is_comfortable() -> None:
    # Ten ticks at 50 %, three at 15 %, four at 21 %, then 50 % again.
    levels = [0.50] * HISTORY + [0.15] * 3 + [0.21] * 4 + [0.50] * 2
    guests = shrinkable()
    assert sliding(levels, "cooperative", guests) == (
        ["inflate"] * 3 + ["hold"] * 4 + ["deflate"] * 2
    )
    # MOM's mean never falls under 20 % during that dip: classic never takes anything.
    assert "inflate" not in sliding(levels, "classic", guests)


@pytest.mark.parametrize(
    ("comfortable", "pressured", "lag_ticks"),
    # docs/policy.md: classic first inflates on the k-th sample under the threshold,
    # k = floor(N (c - T) / (c - p)) + 1 with N = 10 samples, T = 20 %.
    [(0.30, 0.15, 7), (0.25, 0.14, 5), (0.60, 0.15, 9), (0.94, 0.15, 10), (0.205, 0.10, 1)],
)
def test_classic_reacts_after_the_averaging_lag(
    comfortable: float, pressured: float, lag_ticks: int
) -> None:
    levels = [comfortable] * HISTORY + [pressured] * HISTORY
    guests = shrinkable()
    classic = sliding(levels, "classic", guests)
    assert classic.index("inflate") + 1 == lag_ticks
    assert sliding(levels, "cooperative", guests).index("inflate") + 1 == 1


def test_after_an_episode_cooperative_holds_then_deflates_and_classic_lags() -> None:
    # Ten ticks at 15 %, then 60 %. Cooperative: the newest is comfortable at once but the
    # mean reaches 25 % only on the 3rd sample (ceil(10 * (25 - 15) / (60 - 15)) = 3).
    # Classic: its mean is still under 20 % on the 1st sample, so it inflates once more,
    # and deflates from the 2nd (ceil(10 * (20 - 15) / 45) = 2).
    levels = [0.15] * HISTORY + [0.60] * 4
    guests = shrinkable()
    assert sliding(levels, "cooperative", guests) == ["hold", "hold", "deflate", "deflate"]
    assert sliding(levels, "classic", guests) == ["inflate", "deflate", "deflate", "deflate"]


def test_cooperative_rules_for_needy_and_stalling_guests_hold_on_the_newest_sample() -> None:
    guests = [
        agent("stalling", 3 * GiB, unused=GiB, offer=GiB, psi_some_avg10=25.0),
        agent("needy", 3 * GiB, unused=0, need=200 * 1024),
        agent("quiet", 3 * GiB, unused=GiB),
    ]
    # Newest 12.5 % after nine at 50 %: pressure now. The stalling guest's offer is not
    # taken and it is not squeezed; the needy guest gets its need from the 2.5 % above the
    # 10 % reserve (419430 KiB); the quiet one offers nothing and the host is not
    # critical: it keeps its memory.
    ev = run_history("cooperative", [0.50] * 9 + [0.125], guests)
    assert ev.proposed_targets() == {
        "stalling": None,
        "needy": 3 * GiB + 200 * 1024,
        "quiet": None,
    }
    # Newest 21 % (between the threshold and the release line): balloons hold, but the
    # guest that asks is still given memory at once and the stalling one gets memory back.
    ev = run_history("cooperative", [0.50] * 8 + [0.125, 0.21], guests)
    t = ev.proposed_targets()
    assert t["needy"] == 3 * GiB + 200 * 1024
    assert t["stalling"] is not None and t["stalling"] > 3 * GiB
    assert t["quiet"] is None
