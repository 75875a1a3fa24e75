"""Property tests: whatever the policy proposes, the governor's limits hold."""

from __future__ import annotations

from typing import List, Optional, Tuple

from ebb.host.governor import Governor, GovernorConfig, GuestView, all_applied
from hypothesis import given, settings
from hypothesis import strategies as st

GiB = 1024 * 1024

maybe_float = st.one_of(st.none(), st.floats(min_value=0, max_value=10_000, allow_nan=False))


@st.composite
def guest_tick(draw: st.DrawFn) -> Tuple[GuestView, Optional[int]]:
    maximum = draw(st.integers(min_value=64 * 1024, max_value=64 * GiB))
    cur = draw(st.integers(min_value=0, max_value=maximum))
    floor = draw(st.one_of(st.none(), st.integers(min_value=0, max_value=2 * maximum)))
    g = GuestView(
        name=draw(st.sampled_from(["a", "b", "c"])),
        balloon_cur_kib=cur,
        balloon_max_kib=maximum,
        floor_kib=floor,
        need_kib=draw(st.sampled_from([0, 0, 0, 1, 500_000])),
        psi_some_avg10=draw(st.one_of(st.none(), st.floats(min_value=0, max_value=100))),
        major_fault_rate=draw(maybe_float),
        swap_in_rate_kib=draw(maybe_float),
    )
    proposed = draw(st.one_of(st.none(), st.integers(min_value=-GiB, max_value=128 * GiB)))
    return g, proposed


ticks = st.lists(
    st.tuples(st.floats(min_value=0, max_value=120, allow_nan=False), guest_tick()),
    min_size=1,
    max_size=20,
)


@settings(max_examples=80, deadline=None)
@given(ticks)
def test_targets_stay_within_limits_whatever_is_proposed(
    seq: List[Tuple[float, Tuple[GuestView, Optional[int]]]],
) -> None:
    cfg = GovernorConfig()
    gov = Governor(cfg)
    now = 0.0
    for dt, (g, proposed) in seq:
        now += dt
        (d,) = gov.decide(now, [g], {g.name: proposed})
        gov.commit(all_applied([d]))
        assert d.reason and d.rule and d.vm == g.name
        if d.target_kib is None:
            assert d.kind == "hold"
            continue
        floor = gov.floor_for(g)
        ceiling = g.balloon_max_kib
        cur = g.balloon_cur_kib
        # Within [floor, ceiling].
        assert floor <= d.target_kib <= ceiling, (d, floor)
        # Per-tick change bound (restoring the floor may exceed it: giving memory is safe).
        if d.target_kib < cur:
            assert cur - d.target_kib <= int(cfg.max_inflate_share * ceiling)
            # Never take from a needy or stalling guest.
            assert g.need_kib == 0
            assert gov.stall_reason(g) is None
            assert d.kind == "inflate"
        elif d.target_kib > cur:
            assert (
                d.target_kib - cur <= int(cfg.max_deflate_share * ceiling) or d.target_kib == floor
            )
            assert d.kind in ("deflate", "rollback", "hold")


@settings(max_examples=30, deadline=None)
# At most 3: there are only three names, and asking for more unique ones makes
# hypothesis discard draw after draw.
@given(st.lists(guest_tick(), min_size=1, max_size=3, unique_by=lambda t: t[0].name))
def test_one_decision_per_guest_in_order(batch: List[Tuple[GuestView, Optional[int]]]) -> None:
    gov = Governor()
    guests = [g for g, _ in batch]
    decisions = gov.decide(0.0, guests, {g.name: p for g, p in batch})
    gov.commit(all_applied(decisions))
    assert [d.vm for d in decisions] == [g.name for g in guests]
    for d in decisions:
        assert gov.guest_state(d.vm) in ("ok", "backoff", "stuck", "uncooperative")
