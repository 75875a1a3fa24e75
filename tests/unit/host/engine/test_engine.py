"""The engine's tick with fakes: fake hypervisor, fixture /proc and sysfs, real policy,
governor, controllers and (where it matters) real channels over socketpairs."""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path
from typing import List, Optional

import pytest
from ebb.host.channels import ChannelLimits, GuestChannels
from ebb.host.collectors import HostCollector
from ebb.host.controllers import BalloonController, KsmController, MemtuneController
from ebb.host.engine import Engine, EngineSettings, TickRecord
from ebb.host.governor import Governor, GovernorConfig
from ebb.host.policy import PolicyRunner
from ebb.lab.simulated import SimulatedAgent
from ebb_core_fakes import (
    GIB_KIB,
    NEED_POLICY,
    SHRINK_POLICY,
    FakeHypervisor,
    FakeVm,
    RecordingChannels,
    RecordingObserver,
    make_host_tree,
    write_policy,
)

CONTRACT_VM_KEYS = {
    "name", "uuid", "state", "balloon_cur_kib", "balloon_target_kib", "balloon_max_kib",
    "floor_kib", "managed", "agent", "offer_kib", "need_kib", "need_urgency",
    "psi_some_avg10", "mem_available_kib", "cooperation", "last_action",
}
CONTRACT_HOST_KEYS = {
    "mem_total_kib", "mem_free_kib", "freeable_kib", "mem_available_kib", "swap_total_kib",
    "swap_used_kib", "swap_in_per_s", "swap_out_per_s", "psi_some_avg10", "ksm",
}


class Rig:
    """An engine over fakes, with handles on every part."""

    def __init__(
        self,
        tmp_path: Path,
        vms: List[FakeVm],
        policy: str,
        *,
        dry_run: bool = False,
        channels=None,
        interval_s: float = 60.0,
        memtune: bool = False,
        pressure_probe=None,
    ) -> None:
        self.proc, self.sys = make_host_tree(tmp_path)
        self.policy_dir = tmp_path / "policy.d"
        write_policy(self.policy_dir, "50-test.policy", policy)
        self.run_dir = tmp_path / "run"
        self.hypervisor = FakeHypervisor(vms)
        self.channels = channels if channels is not None else RecordingChannels()
        self.runner = PolicyRunner()
        assert self.runner.reload(self.policy_dir) == []
        self.balloon = BalloonController(self.hypervisor, dry_run=dry_run)
        self.ksm = KsmController(self.sys, self.run_dir, dry_run=dry_run)
        self.memtune = MemtuneController(self.hypervisor, dry_run=dry_run) if memtune else None
        self.observer = RecordingObserver()
        self.engine = Engine(
            EngineSettings(interval_s=interval_s, memtune_uncooperative=memtune),
            host=HostCollector(self.proc, self.sys),
            hypervisor=self.hypervisor,
            channels=self.channels,
            runner=self.runner,
            governor=Governor(GovernorConfig(default_floor_kib=512 * 1024)),
            balloon=self.balloon,
            ksm=self.ksm,
            memtune=self.memtune,
            observers=[self.observer],
            pressure_probe=pressure_probe,
        )

    def ksm_value(self, name: str) -> str:
        return (self.sys / "kernel" / "mm" / "ksm" / name).read_text().strip()


def test_a_tick_applies_the_policy_within_the_governor_and_tells_the_guest(tmp_path):
    rig = Rig(tmp_path, [FakeVm("web", max_kib=4 * GIB_KIB, cur_kib=4 * GIB_KIB)], SHRINK_POLICY)
    record = rig.engine.tick()
    expected = 4 * GIB_KIB - (4 * GIB_KIB) // 10
    assert rig.hypervisor.balloon_calls == [("web", expected)]
    assert rig.channels.decisions and rig.channels.decisions[0][:2] == ("web", expected)
    assert rig.ksm_value("run") == "1"  # the policy's host control reached sysfs
    assert record.policy_error is None
    assert record.decisions[0]["kind"] == "inflate"
    assert record.decisions[0]["rule"] in ("policy", "max_step")
    assert record.applied[0]["outcome"] == "applied"
    assert record.controls["guests"]["web"]["balloon_target"] == pytest.approx(expected, abs=1)
    assert [g["props"]["name"] for g in record.state["guests"]] == ["web"]
    assert rig.observer.records == [record]
    # The trace line is JSON and replayable state is in it.
    assert '"balloon_target"' in record.to_json()


def test_unchanged_target_is_not_sent_to_the_guest_twice(tmp_path):
    vm = FakeVm("web", follows_target=False)
    rig = Rig(tmp_path, [vm], SHRINK_POLICY)
    rig.engine.tick()
    rig.engine.tick()
    assert len(rig.channels.decisions) == 1


def test_dry_run_decides_and_applies_nothing(tmp_path):
    rig = Rig(tmp_path, [FakeVm("web")], SHRINK_POLICY, dry_run=True)
    record = rig.engine.tick()
    assert rig.hypervisor.balloon_calls == []
    assert rig.ksm_value("run") == "0"
    assert not (rig.run_dir / "ksm-original.json").exists()
    assert record.dry_run
    assert {a["outcome"] for a in record.applied} == {"dry-run"}
    assert rig.channels.decisions == []
    assert rig.engine.journal("web")[-1]["outcome"] == "dry-run"


def test_policy_runtime_error_is_logged_with_position_and_no_policy_control_applies(
    tmp_path, caplog
):
    rig = Rig(tmp_path, [FakeVm("web", cur_kib=4 * GIB_KIB)], SHRINK_POLICY)
    broken = rig.policy_dir / "60-broken.policy"
    broken.write_text(
        '(with Guests guest (guest.Control "balloon_target" (/ guest.balloon_cur 0)))\n'
    )
    assert rig.runner.reload(rig.policy_dir) == []
    caplog.set_level(logging.ERROR, logger="ebb.host.engine")
    record = rig.engine.tick()
    assert record.policy_error is not None and "60-broken.policy:1:" in record.policy_error
    assert any("60-broken.policy:1:" in r.getMessage() for r in caplog.records)
    assert rig.hypervisor.balloon_calls == []
    assert rig.ksm_value("run") == "0"
    assert record.decisions[0]["rule"] == "no_proposal"
    # The daemon goes on: the next tick runs again.
    assert rig.engine.tick().tick == 2


def test_governor_safety_still_acts_when_the_policy_fails(tmp_path):
    # A guest below its floor gets memory back even with a failing policy.
    vm = FakeVm("small", max_kib=4 * GIB_KIB, cur_kib=256 * 1024, floor_kib=1024 * 1024)
    rig = Rig(tmp_path, [vm], "(with Guests guest (guest.Control \"balloon_target\" (/ 1 0)))\n")
    record = rig.engine.tick()
    assert record.policy_error is not None
    assert rig.hypervisor.balloon_calls and rig.hypervisor.balloon_calls[0][1] > 256 * 1024


def test_excluded_paused_and_balloonless_vms_are_not_managed(tmp_path):
    vms = [
        FakeVm("excluded", enabled=False),
        FakeVm("paused", state="paused"),
        FakeVm("noballoon", has_balloon=False),
        FakeVm("web"),
    ]
    rig = Rig(tmp_path, vms, SHRINK_POLICY)
    rig.engine.tick()
    assert [name for name, _ in rig.hypervisor.balloon_calls] == ["web"]
    rows = {row["name"]: row for row in rig.engine.status_vms()}
    assert {name: row["managed"] for name, row in rows.items()} == {
        "excluded": False, "paused": False, "noballoon": False, "web": True,
    }


def test_pause_changes_nothing_and_resume_applies_again(tmp_path):
    rig = Rig(tmp_path, [FakeVm("web")], SHRINK_POLICY)
    rig.engine.pause()
    record = rig.engine.tick()
    assert record.paused and record.applied == [] and rig.hypervisor.balloon_calls == []
    rig.engine.resume()
    rig.engine.tick()
    assert len(rig.hypervisor.balloon_calls) == 1


def test_set_floor_overrides_the_vm_floor(tmp_path):
    rig = Rig(tmp_path, [FakeVm("web", max_kib=4 * GIB_KIB, cur_kib=1024 * 1024)],
              SHRINK_POLICY)
    rig.engine.set_floor("web", 3 * GIB_KIB)
    rig.engine.tick()
    # Below the new floor: the governor gives memory back instead of taking it.
    _name, target = rig.hypervisor.balloon_calls[0]
    assert target > 1024 * 1024
    row = rig.engine.status_vms()[0]
    assert row["floor_kib"] == 3 * GIB_KIB and row["floor_override_kib"] == 3 * GIB_KIB


def test_status_rows_and_host_follow_the_contract(tmp_path):
    rig = Rig(tmp_path, [FakeVm("web")], SHRINK_POLICY)
    assert rig.engine.status_host() is None
    rig.engine.tick()
    host = rig.engine.status_host()
    assert set(host) >= CONTRACT_HOST_KEYS
    assert host["mem_total_kib"] == 16 * GIB_KIB
    row = rig.engine.status_vms()[0]
    assert set(row) >= CONTRACT_VM_KEYS
    assert set(row["agent"]) >= {"connected", "last_report_age_s", "protocol_errors",
                                 "cut_off_until"}
    assert row["cooperation"] == "no-agent"
    assert row["last_action"]["kind"] == "inflate"
    assert row["balloon_target_kib"] == rig.hypervisor.balloon_calls[0][1]


def test_journal_keeps_recent_decisions_and_collapses_repeats(tmp_path):
    vm = FakeVm("web", cur_kib=600 * 1024)  # near the default floor: governor holds
    rig = Rig(tmp_path, [vm], "(with Guests guest (guest.Control \"balloon_target\" 1))\n")
    for _ in range(5):
        rig.engine.tick()
    journal = rig.engine.journal("web")
    assert journal, "explain would have nothing to show"
    last = journal[-1]
    assert last["rule"] and last["reason"] and "inputs" in last
    assert sum(entry["repeats"] for entry in journal) == 5
    assert len(journal) < 5


def test_an_observer_that_raises_does_not_stop_the_tick(tmp_path, caplog):
    class Broken:
        def on_tick(self, record: TickRecord) -> None:
            raise RuntimeError("observer bug")

    rig = Rig(tmp_path, [FakeVm("web")], SHRINK_POLICY)
    rig.engine.observers.insert(0, Broken())
    caplog.set_level(logging.ERROR, logger="ebb.host.engine")
    rig.engine.tick()
    assert len(rig.observer.records) == 1
    assert any("observer" in r.getMessage() for r in caplog.records)


def test_vms_that_leave_are_forgotten(tmp_path):
    rig = Rig(tmp_path, [FakeVm("web"), FakeVm("db")], SHRINK_POLICY)
    rig.engine.tick()
    assert set(rig.channels.paths) == {"web", "db"}
    del rig.hypervisor.vms["db"]
    rig.engine.tick()
    assert set(rig.channels.paths) == {"web"}
    assert [row["name"] for row in rig.engine.status_vms()] == ["web"]
    assert rig.balloon.last_requested_kib("db") is None


def test_uncooperative_guest_gets_a_soft_limit_when_enabled(tmp_path):
    vm = FakeVm("stubborn", follows_target=False)
    rig = Rig(tmp_path, [vm], SHRINK_POLICY, memtune=True)
    clock = [1000.0]
    rig.engine._clock = lambda: clock[0]  # the governor's notion of time follows ticks
    for _ in range(30):
        rig.engine.tick()
        clock[0] += 2.0
    assert rig.engine.governor.guest_state("stubborn") == "uncooperative"
    assert rig.hypervisor.soft_limits.get("stubborn") is not None
    assert rig.engine.status_vms()[0]["cooperation"] == "uncooperative"


# --- the loop: immediate ticks and stopping -----------------------------------------------


def run_in_thread(engine: Engine):
    stop = threading.Event()
    thread = threading.Thread(target=engine.run, args=(stop,), daemon=True)
    thread.start()
    return stop, thread


def wait_until(predicate, timeout_s: float = 15.0) -> bool:
    """Poll until ``predicate()`` holds. The deadline is generous because it only
    matters when the test fails: a loaded machine may take seconds to schedule
    the engine and channel threads."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def _has_report(channels: GuestChannels, vm: str) -> bool:
    state = channels.snapshot().get(vm)
    return state is not None and state.latest is not None


def test_a_need_from_a_guest_triggers_an_immediate_tick_and_a_deflation(tmp_path):
    agents: List[SimulatedAgent] = []

    def connector(path: str) -> socket.socket:
        host_end, guest_end = socket.socketpair()
        agents.append(SimulatedAgent(guest_end, name=path))
        return host_end

    holder: dict = {}
    channels = GuestChannels(ChannelLimits(), connector=connector,
                             on_need=lambda vm: holder["engine"].on_need(vm))
    vm = FakeVm("web", max_kib=4 * GIB_KIB, cur_kib=2 * GIB_KIB, channel_path="/run/web.sock")
    rig = Rig(tmp_path, [vm], NEED_POLICY, channels=channels, interval_s=60.0)
    holder["engine"] = rig.engine
    channels.start()
    stop, thread = run_in_thread(rig.engine)
    try:
        assert wait_until(lambda: rig.engine.tick_count >= 1 and agents)
        agent = agents[0]
        agent.hello()
        assert agent.wait_for("welcome", timeout_s=15.0) is not None
        agent.report(psi_some_avg10=30.0)  # what shows the need (PSI), see weigh_need
        assert wait_until(lambda: _has_report(channels, "web"))
        ticks_before = rig.engine.tick_count
        assert rig.hypervisor.balloon_calls == []
        agent.need(256 * 1024, urgency="high", reason="PSI 30%")
        # With a 60 s interval only the need can explain a balloon call within 15 s.
        assert wait_until(lambda: rig.hypervisor.balloon_calls)
        # The balloon call is made during the tick; the count goes up at its end.
        assert wait_until(lambda: rig.engine.tick_count > ticks_before)
        assert rig.hypervisor.balloon_calls[0] == ("web", 2 * GIB_KIB + 256 * 1024)
        decision = agent.wait_for("decision", timeout_s=15.0)
        assert decision is not None and decision.balloon_target_kib == 2 * GIB_KIB + 256 * 1024
        row = rig.engine.status_vms(channels.snapshot())[0]
        assert row["agent"]["connected"] and row["need_kib"] == 256 * 1024
        assert row["need_urgency"] == "high" and row["cooperation"] == "ok"
    finally:
        stop.set()
        rig.engine.stop_waiting()
        thread.join(10)
        channels.stop()
    assert not thread.is_alive()


def test_host_pressure_crossing_the_threshold_triggers_a_tick(tmp_path):
    shares = iter([0.5, 0.5, 0.1])
    last: List[Optional[float]] = [0.5]

    def probe() -> Optional[float]:
        last[0] = next(shares, last[0])
        return last[0]

    rig = Rig(tmp_path, [FakeVm("web")], NEED_POLICY, interval_s=60.0, pressure_probe=probe)
    rig.engine.settings.pressure_check_s = 0.02
    stop, thread = run_in_thread(rig.engine)
    try:
        # tick_count goes up before last_record is published: wait for the record itself.
        assert wait_until(lambda: rig.engine.last_record is not None
                          and rig.engine.last_record.tick >= 2)
        assert "host pressure crossed the threshold" in rig.engine.last_record.reasons
    finally:
        stop.set()
        rig.engine.stop_waiting()
        thread.join(10)


def test_stop_ends_the_loop_at_once(tmp_path):
    rig = Rig(tmp_path, [FakeVm("web")], NEED_POLICY, interval_s=60.0)
    # Nothing but the stop can end the wait early: a loop that noticed it only at
    # its next wake-up would take 60 s, far beyond the (load-proof) 5 s allowed.
    rig.engine.settings.pressure_check_s = 60.0
    stop, thread = run_in_thread(rig.engine)
    assert wait_until(lambda: rig.engine.tick_count >= 1)
    started = time.monotonic()
    stop.set()
    rig.engine.stop_waiting()
    thread.join(10)
    assert not thread.is_alive() and time.monotonic() - started < 5.0


def test_repeated_tick_failures_end_the_loop_instead_of_spinning(tmp_path):
    rig = Rig(tmp_path, [FakeVm("web")], NEED_POLICY, interval_s=0.01)
    rig.hypervisor.fail_listing = 100
    rig.engine.settings.min_tick_gap_s = 0.0
    with pytest.raises(RuntimeError):
        rig.engine.run(threading.Event())
    assert rig.engine.tick_count == 0


def test_while_libvirt_is_away_guests_keep_their_channels_and_are_left_alone(tmp_path):
    rig = Rig(tmp_path, [FakeVm("web", channel_path="/run/web.sock")], SHRINK_POLICY)
    rig.engine.tick()
    calls = len(rig.hypervisor.balloon_calls)
    rig.hypervisor.connected = False
    record = rig.engine.tick()
    assert rig.channels.paths == {"web": "/run/web.sock"}
    assert len(rig.hypervisor.balloon_calls) == calls and record.decisions == []
    assert [row["name"] for row in rig.engine.status_vms()] == ["web"]
    assert "libvirt not connected: guests left alone" in record.reasons


def test_memory_is_given_before_it_is_taken(tmp_path):
    vms = [FakeVm("a-big", max_kib=4 * GIB_KIB, cur_kib=4 * GIB_KIB),
           FakeVm("z-small", max_kib=4 * GIB_KIB, cur_kib=1 * GIB_KIB)]
    policy = (
        '(with Guests g (if (< g.balloon_cur (* 2 1048576))'
        ' (g.Control "balloon_target" (+ g.balloon_cur 262144))'
        ' (g.Control "balloon_target" (- g.balloon_cur 262144))))\n'
    )
    rig = Rig(tmp_path, vms, policy)
    rig.engine.tick()
    assert [name for name, _ in rig.hypervisor.balloon_calls] == ["z-small", "a-big"]


def test_a_dry_run_does_not_find_guests_uncooperative(tmp_path):
    rig = Rig(tmp_path, [FakeVm("web")], SHRINK_POLICY, dry_run=True)
    clock = [1000.0]
    rig.engine._clock = lambda: clock[0]
    for _ in range(15):
        record = rig.engine.tick()
        clock[0] += 2.0
    assert rig.engine.governor.guest_state("web") == "ok"
    assert record.decisions[0]["kind"] == "inflate"
    assert record.applied[0]["outcome"] == "dry-run"


def test_a_balloon_target_libvirt_refused_is_not_held_against_the_guest(tmp_path):
    from ebb.host.hypervisor import HypervisorError

    rig = Rig(tmp_path, [FakeVm("web")], SHRINK_POLICY)
    clock = [1000.0]
    rig.engine._clock = lambda: clock[0]

    def refuse(name: str, target_kib: int) -> None:
        raise HypervisorError(f"cannot set the balloon of {name} (fake)")

    rig.hypervisor.on_balloon_call = refuse
    for _ in range(15):
        record = rig.engine.tick()
        clock[0] += 2.0
    assert record.applied[0]["outcome"] == "failed"
    assert record.decisions[0]["kind"] == "inflate"
    assert rig.engine.governor.guest_state("web") == "ok"
    assert rig.engine.status_vms()[0]["cooperation"] != "uncooperative"


def test_after_a_long_pause_a_guest_gets_its_full_time_again(tmp_path):
    vm = FakeVm("web", follows_target=False)  # the balloon never moves
    rig = Rig(tmp_path, [vm], SHRINK_POLICY)
    clock = [1000.0]
    rig.engine._clock = lambda: clock[0]
    first = rig.engine.tick()
    assert first.applied[0]["outcome"] == "applied"
    rig.engine.pause()
    clock[0] += 600.0  # an hour-long maintenance would do the same
    rig.engine.tick()
    rig.engine.resume()
    record = rig.engine.tick()
    assert record.decisions[0]["rule"] not in ("stuck", "uncooperative"), record.decisions[0]
    assert rig.engine.governor.guest_state("web") == "ok"
    # The timers run again from the resume: 20 s without progress is uncooperative.
    for _ in range(11):
        clock[0] += 2.0
        rig.engine.tick()
    assert rig.engine.governor.guest_state("web") == "uncooperative"


def test_the_policy_reads_the_floor_the_governor_enforces(tmp_path):
    # balloon_min is the governor's floor: its default (512 MiB here) for a VM
    # that sets none, never below min_floor_kib (128 MiB) for one that sets less.
    rig = Rig(tmp_path, [FakeVm("plain"), FakeVm("tiny", floor_kib=64 * 1024)], SHRINK_POLICY)
    record = rig.engine.tick()
    floors = {g["props"]["name"]: g["samples"][-1]["balloon_min"]
              for g in record.state["guests"]}
    assert floors == {"plain": 512 * 1024, "tiny": 128 * 1024}
    for decision in record.decisions:
        assert decision["inputs"]["floor_kib"] == floors[decision["vm"]]


def test_new_settings_wait_for_the_next_tick_and_the_last_update_wins(tmp_path):
    from ebb.host.engine import SettingsUpdate

    rig = Rig(tmp_path, [FakeVm("web", max_kib=4 * GIB_KIB, cur_kib=4 * GIB_KIB)], SHRINK_POLICY)
    old_settings, old_governor = rig.engine.settings, rig.engine.governor.config
    rig.engine.update_settings(SettingsUpdate(engine=EngineSettings(interval_s=5.0),
                                              dry_run=False))
    rig.engine.update_settings(SettingsUpdate(  # a second reload before the tick
        engine=EngineSettings(interval_s=7.0),
        governor=GovernorConfig(default_floor_kib=1024 * 1024),
        balloon_min_change_kib=4096,
        dry_run=True,
    ))
    # Nothing changes until the engine's thread starts its next tick.
    assert rig.engine.settings is old_settings and rig.engine.governor.config is old_governor
    assert rig.balloon.min_change_kib == 1024 and not rig.balloon.dry_run
    record = rig.engine.tick()
    assert rig.engine.settings.interval_s == 7.0
    assert rig.engine.governor.config.default_floor_kib == 1024 * 1024
    assert rig.balloon.min_change_kib == 4096
    assert record.dry_run and rig.hypervisor.balloon_calls == []  # this tick simulated
