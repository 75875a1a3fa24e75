"""Policies written the way MOM's published defaults are written load and run.

The texts below follow the idioms of MOM/vdsm's 00-defines, balloon and KSM
policies (constants as defvars, True/False defined by the policy, helpers
with dynamic scoping, ``(def name() ...)`` without a space, ``debug`` with
objects, ``valid`` over several values, ``Host.StatAvg``).
"""

from __future__ import annotations

from ebb.host.policy import Entity, PolicyInput, PolicyRunner, load_policy_texts
from policy_testkit import GiB, guest

DEFINES = """
# Constants the management layer may override
(defvar False 0)
(defvar True 1)
(defvar ksmMergeAcrossNodes 1)
(defvar ksmEnabled 1)
(defvar balloonEnabled 1)
"""

BALLOON = """
### Constants
(defvar pressure_threshold 0.20)
(defvar pressure_critical 0.05)
(defvar min_guest_free_percent 0.20)
(defvar max_balloon_change_percent 0.05)
(defvar min_balloon_change_percent 0.0025)

(def change_big_enough (guest new_val)
{
    (if (> (abs (- new_val guest.balloon_cur))
           (* min_balloon_change_percent guest.balloon_cur))
        1 0)
})

(def shrink_guest (guest)
{
    (if (<= host_free_percent pressure_critical)
        (defvar guest_free_percent (+ -0.05 host_free_percent))
        (defvar guest_free_percent (* min_guest_free_percent
                                    (/ host_free_percent pressure_threshold))))
    (defvar guest_used_mem (- (guest.StatAvg "balloon_cur")
                              (guest.StatAvg "mem_unused")))
    (defvar balloon_min (max guest.balloon_min (+ guest_used_mem
                           (* guest_free_percent guest.balloon_cur))))
    (defvar balloon_size (* guest.balloon_cur
                            (- 1 max_balloon_change_percent)))
    (if (< balloon_size balloon_min)
        (set balloon_size balloon_min)
        0)
    (if (and (<= balloon_size guest.balloon_cur)
            (change_big_enough guest balloon_size))
        (guest.Control "balloon_target" balloon_size)
        0)
})

(def grow_guest (guest)
{
    (defvar guest_free_percent (* min_guest_free_percent
                                (/ host_free_percent pressure_threshold)))
    (if (< guest.balloon_cur guest.balloon_max) {
        (defvar balloon_size (* guest.balloon_cur (+ 1 max_balloon_change_percent)))
        (if (> balloon_size guest.balloon_max)
            (set balloon_size guest.balloon_max) 0)
        (if (change_big_enough guest balloon_size)
            (guest.Control "balloon_target" balloon_size) 0)
    } 0)
})

(defvar host_free_percent (/ (Host.StatAvg "mem_free") Host.mem_available))

(def balloon_logic (g) {
    (if (and (< host_free_percent pressure_threshold) balloonEnabled)
        (shrink_guest g)
        (grow_guest g))
})

(with Guests guest
    (if (valid guest.balloon_cur (guest.Stat "mem_unused"))
        (balloon_logic guest)
        (debug "Memory information is missing, ballooning for" guest "disabled")))

(def guest_qos (unused_name)
{
    (if (< guest.balloon_cur guest.balloon_min)
        (guest.Control "balloon_target" guest.balloon_min) 0)
})

(with Guests guest (guest_qos guest))
"""

KSM = """
(defvar ksm_pages_boost 300)
(defvar ksm_pages_decay -50)
(defvar ksm_npages_min 64)
(defvar ksm_npages_max 1250)
(defvar ksm_sleep_ms_baseline 10)
(defvar ksm_free_percent 0.20)

(def change_npages (delta)
{
    (defvar newval (+ Host.ksm_pages_to_scan delta))
    (if (> newval ksm_npages_max) (set newval ksm_npages_max) 1)
    (if (< newval ksm_npages_min) (set newval ksm_npages_min) 0)
    (Host.Control "ksm_pages_to_scan" newval)
})

(def apply_NUMA_policy()
{
    (debug "entry: apply_NUMA_policy")
    (if (and (> Host.ksm_pages_shared 0)
             (or (!= Host.ksm_merge_across_nodes ksmMergeAcrossNodes)
                 (not ksmEnabled)))
        { (debug Host.ksm_pages_shared " pages to unmerge") 2 }
        0)
})

(defvar ksm_pressure_threshold (* Host.mem_available ksm_free_percent))
(defvar ksm_committed Host.ksm_shareable)

(if (== Host.ksm_pages_shared 0)
    { (Host.Control "ksm_merge_across_nodes" ksmMergeAcrossNodes) }
    (debug "There are still " Host.ksm_pages_shared " shared pages"))

(defvar ksm_action (apply_NUMA_policy))

(if (or (and (< (+ ksm_pressure_threshold ksm_committed) Host.mem_available)
             (> (Host.StatAvg "mem_free") ksm_pressure_threshold))
        (or (not ksmEnabled) (!= ksm_action 0)))
    (Host.Control "ksm_run" ksm_action)
    {
        (Host.Control "ksm_run" 1)
        (Host.Control "ksm_sleep_millisecs"
            (max 10 (/ (* ksm_sleep_ms_baseline 16777216) Host.mem_available)))
        (if (< (Host.StatAvg "mem_free") ksm_pressure_threshold)
            (change_npages ksm_pages_boost)
            (change_npages ksm_pages_decay))
    })
"""


def load() -> PolicyRunner:
    return PolicyRunner(
        load_policy_texts(
            [
                ("00-defines.policy", DEFINES),
                ("02-balloon.policy", BALLOON),
                ("03-ksm.policy", KSM),
            ]
        )
    )


def host(**extra: object) -> Entity:
    fields = dict(
        mem_available=16 * GiB,
        mem_free=2 * GiB,
        ksm_pages_to_scan=100,
        ksm_shareable=12 * GiB,
        ksm_pages_shared=0,
        ksm_merge_across_nodes=1,
    )
    fields.update(extra)
    return Entity({"name": "host"}, [fields])


def test_mom_style_policy_runs_under_pressure() -> None:
    guests = [
        guest("a", balloon_cur=4 * GiB, balloon_max=4 * GiB, balloon_min=0, mem_unused=2 * GiB),
        guest(
            "low", balloon_cur=256 * 1024, balloon_max=4 * GiB, balloon_min=512 * 1024, mem_unused=0
        ),
        guest("nostats", balloon_cur=GiB, balloon_max=GiB, balloon_min=0),
    ]
    ev = load().evaluate(PolicyInput(host(), guests))
    assert ev.host_controls == {
        "ksm_merge_across_nodes": 1,
        "ksm_run": 1,
        "ksm_sleep_millisecs": 10,
        "ksm_pages_to_scan": 400,
    }
    assert ev.proposed_targets() == {"a": 3984588, "low": 512 * 1024, "nostats": None}
    assert any("ballooning for <Guest nostats> disabled" in line for line in ev.debug)


def test_mom_style_policy_unmerges_when_numa_policy_changes() -> None:
    ev = load().evaluate(
        PolicyInput(host(ksm_pages_shared=10, ksm_merge_across_nodes=0, mem_free=8 * GiB), [])
    )
    assert ev.host_controls == {"ksm_run": 2}


def test_mom_style_policy_grows_without_pressure() -> None:
    g = guest("a", balloon_cur=3 * GiB, balloon_max=4 * GiB, balloon_min=0, mem_unused=GiB)
    ev = load().evaluate(PolicyInput(host(mem_free=8 * GiB, ksm_shareable=GiB), [g]))
    assert ev.proposed_targets() == {"a": int(3 * GiB * 1.05)}
    assert ev.host_controls == {"ksm_merge_across_nodes": 1, "ksm_run": 0}
