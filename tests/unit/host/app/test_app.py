"""The composition root: start/stop, signals, reload, crash handling, systemd notify,
and ``ebbd`` itself as a process against libvirt's test driver and fixture trees."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "engine"))

from ebb.host.app import EXIT_FAILURE, EXIT_OK, Components, assemble
from ebb.host.cli_ebbd import main as ebbd_main
from ebb.host.collectors import HostCollector
from ebb.host.control import Authorizer, ControlClient, DaemonUnreachable
from ebb.host.controllers import BalloonController, KsmController
from ebb.host.governor import Governor, GovernorConfig
from ebb.host.notify import SystemdNotifier
from ebb.host.policy import PolicyRunner
from ebb_core_fakes import (
    SHRINK_POLICY,
    FakeHypervisor,
    FakeVm,
    RecordingChannels,
    make_host_tree,
    write_policy,
)

REPO = Path(__file__).resolve().parents[4]


class Rig:
    def __init__(self, tmp_path: Path, *, dry_run: bool = False, vms=None) -> None:
        self.tmp = tmp_path
        self.proc, self.sys = make_host_tree(tmp_path)
        self.policy_dir = tmp_path / "policy.d"
        write_policy(self.policy_dir, "50-shrink.policy", SHRINK_POLICY)
        self.run_dir = tmp_path / "run"
        self.config_path = tmp_path / "ebbd.toml"
        self.write_config()
        from ebb.host.config import load_config

        self.config = load_config(self.config_path)
        self.hypervisor = FakeHypervisor(vms if vms is not None else [FakeVm("web")])
        self.channels = RecordingChannels()
        self.notices: List[str] = []
        self.components = Components(
            hypervisor=self.hypervisor,
            host=HostCollector(self.proc, self.sys),
            channels=self.channels,
            runner=PolicyRunner(),
            governor=Governor(GovernorConfig(default_floor_kib=512 * 1024)),
            balloon=BalloonController(self.hypervisor, dry_run=dry_run),
            ksm=KsmController(self.sys, self.run_dir, dry_run=dry_run),
            memtune=None,
        )
        self.daemon = assemble(
            self.config,
            self.components,
            config_path=self.config_path,
            dry_run_forced=dry_run,
            notifier=SystemdNotifier(
                environ={"NOTIFY_SOCKET": "/unused", "WATCHDOG_USEC": "400000"},
                sender=self._record,
            ),
            authorizer=Authorizer(group_gid=None, lookup_group=False),
        )

    def _record(self, state: str) -> bool:
        self.notices.append(state)
        return True

    def write_config(self, extra: str = "") -> None:
        self.config_path.write_text(
            f"""
[daemon]
libvirt_uri = "test:///default"
policy_interval_s = 0.2
policy_dir = "{self.policy_dir}"
run_dir = "{self.run_dir}"
control_socket = "{self.run_dir}/ebbd.sock"
[host]
proc_root = "{self.proc}"
sys_root = "{self.sys}"
{extra}
"""
        )

    def client(self) -> ControlClient:
        return ControlClient(str(self.run_dir / "ebbd.sock"), timeout_s=5)

    def ksm(self, name: str) -> str:
        return (self.sys / "kernel" / "mm" / "ksm" / name).read_text().strip()


def wait_until(predicate, timeout_s: float = 15.0) -> bool:
    """Poll until ``predicate()`` holds; the deadline only matters when it never does."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture
def rig(tmp_path):
    r = Rig(tmp_path)
    yield r
    r.daemon.stop()


def test_start_serves_status_and_stop_restores_ksm(rig):
    rig.daemon.start()
    assert rig.notices[0].startswith("READY=1")
    assert rig.daemon.engine.tick_count >= 1  # READY comes after the first tick
    status = rig.client().request("status")
    daemon = status["daemon"]
    assert set(daemon) >= {"version", "pid", "uptime_s", "paused", "dry_run", "policy", "tick",
                           "libvirt"}
    assert daemon["pid"] == os.getpid() and daemon["policy"]["errors"] == []
    assert daemon["libvirt"] == {"uri": "test:///fake", "connected": True}
    assert set(daemon["tick"]) == {"count", "last_at", "last_duration_ms", "interval_s"}
    assert status["host"]["mem_total_kib"] > 0
    assert [vm["name"] for vm in status["vms"]] == ["web"]
    assert rig.ksm("run") == "1"  # the policy started KSM
    rig.daemon.stop()
    assert rig.ksm("run") == "0"  # ... and a clean stop put the host's value back
    assert not (rig.run_dir / "ebbd.sock").exists()
    assert "STOPPING=1" in rig.notices
    assert rig.channels.stopped and rig.hypervisor.stopped


def test_balloons_stay_where_they_are_at_stop(rig):
    rig.daemon.start()
    assert wait_until(lambda: rig.hypervisor.balloon_calls)
    rig.daemon.stop()
    calls = list(rig.hypervisor.balloon_calls)
    assert rig.hypervisor.vms["web"].cur_kib == calls[-1][1]


def test_signal_handlers_take_no_lock(rig, monkeypatch):
    """A handler runs on the main thread between two bytecodes, perhaps while that thread
    holds a lock inside Event.wait(); a handler taking the same lock would hang ebbd."""
    signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    rig.daemon.install_signal_handlers()
    try:
        handlers = {sig: signal.getsignal(sig) for sig in signals}
    finally:
        for sig in signals:
            signal.signal(sig, signal.SIG_DFL)

    def no_lock(self: Any, *args: Any) -> None:
        raise AssertionError("a signal handler took a lock")

    monkeypatch.setattr(threading.Condition, "__enter__", no_lock)
    for sig, handler in handlers.items():
        assert callable(handler)
        handler(sig, None)
    monkeypatch.undo()
    assert rig.daemon.run_forever() == EXIT_OK  # the SIGTERM was not lost


def test_sigterm_stops_within_a_second_and_sighup_reloads(rig):
    rig.daemon.start()
    rig.daemon.install_signal_handlers()
    try:
        reloads: List[Dict[str, Any]] = []
        original = rig.daemon.reload

        def counting_reload() -> Dict[str, Any]:
            result = original()
            reloads.append(result)
            return result

        rig.daemon.reload = counting_reload  # type: ignore[method-assign]
        terminated_at: List[float] = []

        def signals() -> None:
            # SIGTERM only once the SIGHUP was handled, however slowly a loaded
            # machine runs the main thread; the main thread must run_forever.
            os.kill(os.getpid(), signal.SIGHUP)
            wait_until(lambda: bool(reloads), timeout_s=15.0)
            terminated_at.append(time.monotonic())
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Timer(0.1, signals).start()
        code = rig.daemon.run_forever()
        stopped_at = time.monotonic()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
    assert code == EXIT_OK
    assert len(reloads) == 1 and reloads[0]["policy"] == "reloaded"
    # "Within a second", with room for a loaded machine; waiting out any timer
    # (the engine join, a reconnect, the watchdog period) would take longer.
    assert stopped_at - terminated_at[0] < 1.5
    assert any(n.startswith("STATUS=tick") for n in rig.notices)
    assert "WATCHDOG=1" in rig.notices


def test_reload_with_a_broken_policy_keeps_the_last_good_one(rig):
    rig.daemon.start()
    (rig.policy_dir / "60-broken.policy").write_text("(defvar x (+ 1 2)\n")
    result = rig.client().request("reload")
    assert result["policy"].startswith("error") and result["policy_errors"]
    status = rig.client().request("status")
    errors = status["daemon"]["policy"]["errors"]
    assert errors and "60-broken.policy" in errors[0]
    before = len(rig.hypervisor.balloon_calls)
    assert wait_until(lambda: len(rig.hypervisor.balloon_calls) > before)  # still shrinking
    journal = rig.client().request("explain", vm="web")["decisions"]
    assert journal[-1]["kind"] == "inflate" and journal[-1]["policy_error"] is None


def test_reload_with_a_bad_config_keeps_the_running_one(rig):
    rig.daemon.start()
    rig.config_path.write_text(rig.config_path.read_text() + "\n[nonsense]\nkey = 1\n")
    result = rig.daemon.reload()
    assert result["config"].startswith("error") and "nonsense" in result["config"]
    assert rig.daemon.engine.settings.interval_s == 0.2


def test_reload_applies_a_new_interval_and_reports_restart_only_keys(rig):
    rig.daemon.start()
    text = rig.config_path.read_text().replace("policy_interval_s = 0.2", "policy_interval_s = 5")
    text = text.replace('libvirt_uri = "test:///default"', 'libvirt_uri = "test:///other"')
    rig.config_path.write_text(text)
    result = rig.daemon.reload()
    assert result["config"] == "reloaded"
    # The engine swaps its settings in at the start of its next tick (asked for by the reload).
    assert wait_until(lambda: rig.daemon.engine.settings.interval_s == 5)
    assert result["restart_needed"] == ["daemon.libvirt_uri"]


def test_a_reload_during_a_tick_applies_whole_at_the_next_tick(rig):
    """SIGHUP while a tick runs: that tick ends on the settings it began with, and
    the next one runs on all the new ones (engine, governor, balloon controller)."""
    engine = rig.daemon.engine
    seen: List[tuple] = []

    def settings_now() -> tuple:
        return (engine.settings.interval_s, engine.settings.pressure_threshold_share,
                engine.governor.config.max_inflate_share, engine.governor.config.min_change_kib,
                engine.balloon.min_change_kib)

    class ReloadingHost(HostCollector):
        reloads = 1

        def collect(self, vm_assigned_kib=None):  # type: ignore[no-untyped-def]
            seen.append(settings_now())  # what this tick began with
            if self.reloads:
                self.reloads -= 1
                rig.write_config("[governor]\nmax_change_share = 0.2\n"
                                 "[balloon]\nmin_change_kib = 4096\n")
                text = rig.config_path.read_text().replace(
                    "policy_interval_s = 0.2", "policy_interval_s = 3"
                ).replace("[host]\n", "[host]\npressure_tick_threshold = 0.3\n")
                rig.config_path.write_text(text)
                assert rig.daemon.reload()["config"] == "reloaded"
            return super().collect(vm_assigned_kib)

    class Recorder:
        def on_tick(self, record: Any) -> None:
            seen.append(settings_now())  # what the same tick ended with

    engine.host = ReloadingHost(rig.proc, rig.sys)
    engine.observers.append(Recorder())
    rig.hypervisor.connect_now()
    engine.tick()
    engine.tick()
    began, ended, began_next, ended_next = seen
    assert began == ended  # the reload did not reach into the running tick
    assert began_next == ended_next == (3, 0.3, 0.2, 4096, 4096)
    assert began != began_next


def test_pause_resume_and_set_floor_through_the_socket(rig):
    rig.daemon.engine.settings.interval_s = 0.05  # the ticks below come quicker
    rig.daemon.start()
    client = rig.client()
    client.request("pause")
    assert client.request("status")["daemon"]["paused"] is True
    # A tick that began before the pause may still apply; the next one may not.
    paused_at_tick = rig.daemon.engine.tick_count
    assert wait_until(lambda: rig.daemon.engine.tick_count >= paused_at_tick + 2)
    calls = len(rig.hypervisor.balloon_calls)
    assert wait_until(lambda: rig.daemon.engine.tick_count >= paused_at_tick + 4)
    assert len(rig.hypervisor.balloon_calls) == calls
    client.request("resume")
    result = client.request("set-floor", vm="web", floor_mib=3000)
    assert result["floor_kib"] == 3000 * 1024
    assert wait_until(lambda: client.request("status")["vms"][0]["floor_kib"] == 3000 * 1024)


def test_dry_run_daemon_touches_nothing(tmp_path):
    r = Rig(tmp_path, dry_run=True)
    r.daemon.engine.settings.interval_s = 0.05  # three ticks without waiting 0.6 s
    try:
        r.daemon.start()
        assert wait_until(lambda: r.daemon.engine.tick_count >= 3)
        assert r.hypervisor.balloon_calls == []
        assert r.ksm("run") == "0"
        assert r.client().request("status")["daemon"]["dry_run"] is True
    finally:
        r.daemon.stop()


def test_a_dying_engine_thread_stops_the_daemon_with_failure(rig):
    rig.hypervisor.fail_listing = 1000
    rig.daemon.engine.settings.interval_s = 0.01
    rig.daemon.engine.settings.min_tick_gap_s = 0.0
    rig.daemon.start()
    started = time.monotonic()
    code = rig.daemon.run_forever()
    assert code == EXIT_FAILURE
    assert time.monotonic() - started < 5
    assert rig.daemon.crash is not None


def test_a_dying_libvirt_thread_stops_the_daemon_and_restores_ksm(rig):
    ksm_dir = rig.sys / "kernel" / "mm" / "ksm"
    before = (ksm_dir / "pages_to_scan").read_text().strip()
    rig.daemon.start()
    assert rig.hypervisor.on_crash is not None, "the libvirt threads need the crash hook"
    rig.daemon.c.ksm.apply({"ksm_pages_to_scan": 999})  # as a policy would
    assert (ksm_dir / "pages_to_scan").read_text().strip() == "999"
    rig.hypervisor.on_crash(RuntimeError("libvirt supervisor died"))
    assert rig.daemon.run_forever() == EXIT_FAILURE
    assert rig.ksm("pages_to_scan") == before


def test_ksm_left_by_a_crashed_run_is_restored_at_start(rig):
    ksm_dir = rig.sys / "kernel" / "mm" / "ksm"
    rig.run_dir.mkdir(parents=True, exist_ok=True)
    (rig.run_dir / "ksm-original.json").write_text(json.dumps({"values": {"run": 0,
                                                                          "pages_to_scan": 64}}))
    (ksm_dir / "pages_to_scan").write_text("1250\n")
    rig.components.runner = PolicyRunner()
    write_policy(rig.policy_dir, "50-shrink.policy", "(defvar quiet 1)\n")
    rig.daemon.start()
    assert rig.ksm("pages_to_scan") == "64"


# --- the real process ------------------------------------------------------------------------


def test_ebbd_once_prints_the_tick(tmp_path, capsys):
    r = Rig(tmp_path)
    code = ebbd_main(["--config", str(r.config_path), "--once", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith("tick 1: dry run; 1 VM(s) managed")  # libvirt's test domain
    assert "test:" in out


def test_logging_still_works_after_an_ebbd_main_in_an_earlier_test():
    # ebbd's main installs a handler on the stderr of its moment: in a test, the capture of
    # the test before this one, closed since. Every later log line would then print
    # "--- Logging error ---" instead of the record.
    import logging

    streams = [getattr(h, "stream", None) for h in logging.getLogger().handlers]
    assert not [s for s in streams if getattr(s, "closed", False)]


def test_ebbd_rejects_a_bad_config_naming_the_key(tmp_path, capsys):
    path = tmp_path / "ebbd.toml"
    path.write_text("[daemon]\npolicy_interval_s = -1\n")
    assert ebbd_main(["--config", str(path), "--once"]) == 2
    assert "daemon.policy_interval_s" in capsys.readouterr().err


def _ticks_or_none(rig: Rig) -> Any:
    """ebbd's tick count, or None while it does not answer yet (still starting)."""
    try:
        return rig.client().request("status")["daemon"]["tick"]["count"]
    except (DaemonUnreachable, OSError):
        return None


def test_ebbd_process_serves_status_reloads_on_sighup_and_stops_on_sigterm(tmp_path):
    r = Rig(tmp_path)
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    env.pop("JOURNAL_STREAM", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ebb.host.cli_ebbd", "--config", str(r.config_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=str(REPO),
    )
    try:
        assert wait_until(lambda: (r.run_dir / "ebbd.sock").exists(), timeout_s=15)
        # The socket file appears a moment before ebbd listens on it.
        assert wait_until(lambda: _ticks_or_none(r) is not None and _ticks_or_none(r) >= 1)
        status = r.client().request("status")
        assert status["daemon"]["pid"] == proc.pid
        assert [vm["name"] for vm in status["vms"]] == ["test"]
        loaded_at = status["daemon"]["policy"]["loaded_at"]
        proc.send_signal(signal.SIGHUP)
        assert wait_until(
            lambda: r.client().request("status")["daemon"]["policy"]["loaded_at"] != loaded_at
        )
        assert proc.poll() is None
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=5)
        assert time.monotonic() - started < 1.5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    assert proc.returncode == 0, stderr
    assert "reloaded" in stderr
    assert r.ksm("run") == "0"


def test_a_second_ebbd_on_the_same_socket_stops_before_touching_the_host(rig):
    from ebb.host.control import ControlError

    rig.daemon.start()
    assert rig.ksm("run") == "1" and (rig.run_dir / "ksm-original.json").exists()
    second = assemble(
        rig.config,
        Components(
            hypervisor=FakeHypervisor([FakeVm("web")]),
            host=HostCollector(rig.proc, rig.sys),
            channels=RecordingChannels(),
            runner=PolicyRunner(),
            governor=Governor(),
            balloon=BalloonController(FakeHypervisor()),
            ksm=KsmController(rig.sys, rig.run_dir),
            memtune=None,
        ),
        notifier=SystemdNotifier(environ={}),
    )
    with pytest.raises(ControlError, match="already listening"):
        second.start()
    second.stop()
    assert rig.ksm("run") == "1"  # the first ebbd's KSM state is left alone
    assert (rig.run_dir / "ksm-original.json").exists()
    assert rig.client().request("ping") == {"pong": True}


def test_ebbd_once_json_is_the_tick_record(tmp_path, capsys):
    r = Rig(tmp_path)
    assert ebbd_main(["--config", str(r.config_path), "--once", "--dry-run", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert set(record) >= {"ts", "tick", "duration_ms", "state", "views", "controls",
                           "decisions", "applied", "policy_error"}
    assert set(record["state"]) == {"host", "guests"}
    assert record["decisions"][0]["vm"] == "test"
    assert set(record["decisions"][0]) >= {"vm", "kind", "target_kib", "rule", "reason",
                                           "inputs"}


def test_guest_and_governor_keys_reach_the_channels_and_the_governor(tmp_path):
    from ebb.host.config import config_from_dict
    from ebb.host.settings import channel_limits, governor_config

    config = config_from_dict({
        "guests": {"flood_max_bytes_per_s": 128 * 1024},
        "governor": {
            "max_change_share": 0.05, "max_deflate_share": 0.5,
            "stall_psi_some_avg10": 25.0, "stall_major_faults_per_s": 300.0,
            "stall_swap_in_per_s": 64.0, "backoff_growth": 3.0, "backoff_reset_s": 900.0,
            "uncooperative_retry_s": 60.0,
        },
    })
    assert channel_limits(config).max_bytes_per_s == 128 * 1024
    gov = governor_config(config)
    assert (gov.max_inflate_share, gov.max_deflate_share) == (0.05, 0.5)
    assert gov.stall_psi_some_avg10 == 25.0
    assert gov.stall_major_fault_rate == 300.0
    assert gov.stall_swap_in_rate_kib == 64.0 * 4  # pages of 4 KiB
    assert (gov.backoff_growth, gov.backoff_reset_s) == (3.0, 900.0)
    assert gov.uncooperative_retry_s == 60.0
    # Memory is never given back more slowly than it is taken.
    slow_giving = config_from_dict(
        {"governor": {"max_change_share": 0.3, "max_deflate_share": 0.1}}
    )
    assert governor_config(slow_giving).max_deflate_share == 0.3


def test_reload_applies_a_new_flood_limit_to_the_running_channels(rig):
    from ebb.host.channels import ChannelLimits

    rig.channels.limits = ChannelLimits()
    rig.write_config("[guests]\nflood_max_bytes_per_s = 1048576\n")
    assert rig.daemon.reload()["config"] == "reloaded"
    assert rig.channels.limits.max_bytes_per_s == 1048576


def test_hypervisor_domains_scope_what_ebbd_manages(tmp_path, capsys):
    r = Rig(tmp_path)
    r.write_config('[hypervisor]\ndomains = ["ebb-unit-none-*"]\n')
    assert ebbd_main(["--config", str(r.config_path), "--once", "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("tick 1: dry run; 0 VM(s) managed")
    r.write_config('[hypervisor]\ndomains = ["ebb-unit-none-*", "te?t"]\n')
    assert ebbd_main(["--config", str(r.config_path), "--once", "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("tick 1: dry run; 1 VM(s) managed")


def test_reload_applies_new_hypervisor_domains(tmp_path):
    from ebb.host.app import build_daemon
    from ebb.host.config import load_config

    r = Rig(tmp_path)
    r.write_config('[hypervisor]\ndomains = ["ebb-unit-none-*"]\n')
    daemon = build_daemon(load_config(r.config_path), config_path=r.config_path, dry_run=True,
                          control_socket=False, observability=False)
    daemon.c.hypervisor.connect_now()
    try:
        daemon.engine.tick()
        assert daemon.commands.status()["vms"] == []
        r.write_config('[hypervisor]\ndomains = ["test"]\n')
        result = daemon.reload()
        assert result["config"] == "reloaded" and result["restart_needed"] == []
        daemon.engine.tick()
        assert [vm["name"] for vm in daemon.commands.status()["vms"]] == ["test"]
    finally:
        daemon.c.hypervisor.stop()
        daemon.c.channels.close()


def test_the_built_daemon_ticks_at_once_for_a_guest_need_and_for_domains_changing(tmp_path):
    """build_daemon wires the channels and libvirt to the engine's tick requests
    when it builds them, before the engine exists."""
    from ebb.host.app import build_daemon
    from ebb.host.config import load_config

    r = Rig(tmp_path)
    daemon = build_daemon(load_config(r.config_path), config_path=r.config_path, dry_run=True,
                          control_socket=False, observability=False)
    daemon.c.hypervisor.connect_now()
    try:
        daemon.engine.tick()
        daemon.c.channels._on_need("test")  # what a guest's session calls on a need
        daemon.c.hypervisor._on_change(frozenset({"test"}))  # what libvirt's events call
        assert daemon.engine.tick().reasons == ["need from test", "domains changed"]
    finally:
        daemon.c.hypervisor.stop()
        daemon.c.channels.close()


def test_a_vm_leaving_the_domains_on_reload_gets_its_own_soft_limit_back(tmp_path):
    from ebb.host.controllers import MemtuneController

    class ScopedHypervisor(FakeHypervisor):
        patterns: Any = None

        def set_domain_patterns(self, patterns: Any) -> None:
            self.patterns = tuple(patterns)

    r = Rig(tmp_path, vms=[FakeVm("web-1"), FakeVm("db-1")])
    hypervisor = ScopedHypervisor([FakeVm("web-1"), FakeVm("db-1")])
    hypervisor.soft_limits = {"web-1": None, "db-1": None}
    memtune = MemtuneController(hypervisor)
    memtune.limit("web-1", 1024 * 1024)
    memtune.limit("db-1", 1024 * 1024)
    r.components.hypervisor = hypervisor
    r.components.memtune = memtune
    daemon = assemble(r.config, r.components, config_path=r.config_path,
                    notifier=SystemdNotifier(environ={}), control_socket=False)
    r.write_config('[hypervisor]\ndomains = ["web-*"]\n')
    assert daemon.reload()["config"] == "reloaded"
    assert hypervisor.patterns == ("web-*",)
    assert memtune.limited() == {"web-1": 1024 * 1024}
    assert hypervisor.soft_limits["db-1"] is None  # its own value (unlimited) again


def test_start_gives_back_the_soft_limits_a_crashed_run_left(tmp_path):
    # They were kept only in memory: a crash left them on the VMs for good.
    from ebb.host.controllers import MemtuneController

    r = Rig(tmp_path)
    r.hypervisor.soft_limits = {"web": 2048 * 1024}
    MemtuneController(r.hypervisor, run_dir=r.run_dir).limit("web", 1024 * 1024)
    # ... ebbd dies here; the next one starts (with memtune now off: still released)
    r.components.memtune = MemtuneController(r.hypervisor, run_dir=r.run_dir)
    daemon = assemble(r.config, r.components, config_path=r.config_path,
                    notifier=SystemdNotifier(environ={}), control_socket=False)
    daemon.start()
    try:
        assert r.hypervisor.soft_limits["web"] == 2048 * 1024
        assert not (r.run_dir / "memtune-limits.json").exists()
    finally:
        daemon.stop()
