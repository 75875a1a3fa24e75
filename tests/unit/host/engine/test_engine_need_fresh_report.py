"""The tick a need triggers gives the memory, even when the report is brand new.

In the lab the agent sends its report and its need together; the immediate tick
read a report 0.0 s old, the shipped cooperative policy took that for "no agent"
and proposed an inflation (held by the governor), so the guest waited a whole
interval for its memory. Here the engine's clock stands still, so the report's
age is exactly 0.0 on the tick.
"""

from __future__ import annotations

from pathlib import Path

from ebb.host.channels import GuestChannelState
from ebb.host.channels.state import ReceivedNeed, ReceivedReport, SessionState
from ebb.host.collectors import HostCollector
from ebb.host.controllers import BalloonController
from ebb.host.engine import Engine, EngineSettings
from ebb.host.governor import Governor, GovernorConfig
from ebb.host.policies import policy_dir
from ebb.host.policy import PolicyRunner
from ebb.lab.simulated import DEFAULT_REPORT
from ebb.protocol import Need, Report
from ebb_core_fakes import GIB_KIB, FakeHypervisor, FakeVm, RecordingChannels, make_host_tree

NOW_S = 1000.0


def test_an_immediate_tick_on_a_need_with_a_fresh_report_deflates_under_pressure(
    tmp_path: Path,
) -> None:
    # Host: 16 GiB, 2.7 GiB freeable (17 %: under the 20 % threshold, above the 10 % reserve).
    proc, sys_root = make_host_tree(tmp_path, free_kib=2700 * 1024)
    vm = FakeVm("web", max_kib=4 * GIB_KIB, cur_kib=2 * GIB_KIB, channel_path="/run/web.sock")
    hypervisor = FakeHypervisor([vm])
    channels = RecordingChannels()
    need_kib = 256 * 1024
    channels.states["web"] = GuestChannelState(
        vm="web",
        socket_path="/run/web.sock",
        session=SessionState.ACTIVE,
        connected=True,
        agent_active=True,
        stale=False,
        # The guest stalls (PSI): its report shows the need (a need nothing shows is
        # believed only up to a reserve).
        latest=ReceivedReport(mono=NOW_S, wall=0.0, report=Report(
            seq=1, **{**DEFAULT_REPORT, "psi_some_avg10": 30.0})),
        need=ReceivedNeed(
            mono=NOW_S, wall=0.0, need=Need(seq=2, kib=need_kib, urgency="low", reason="lab")
        ),
    )
    runner = PolicyRunner()
    assert runner.reload(policy_dir("cooperative")) == []
    engine = Engine(
        EngineSettings(interval_s=60.0),
        host=HostCollector(proc, sys_root),
        hypervisor=hypervisor,
        channels=channels,
        runner=runner,
        governor=Governor(GovernorConfig(default_floor_kib=512 * 1024)),
        balloon=BalloonController(hypervisor),
        clock=lambda: NOW_S,
        wall_clock=lambda: 0.0,
    )
    engine.on_need("web")
    record = engine.tick()

    assert record.reasons == ["need from web"]
    assert record.state["guests"][0]["samples"][-1]["report_age"] == 0.0
    assert [(d["kind"], d["target_kib"]) for d in record.decisions] == [
        ("deflate", 2 * GIB_KIB + need_kib)
    ]
    assert hypervisor.balloon_calls == [("web", 2 * GIB_KIB + need_kib)]
