"""The engine shows each VM's balloon features and warns about VMs without free page reporting."""

from __future__ import annotations

import logging

from ebb_core_fakes import GIB_KIB, FakeVm, write_policy
from test_engine import SHRINK_POLICY, Rig

FPR_POLICY = """
(with Guests guest
  (if (== (guest.Stat "free_page_reporting") 1)
      (guest.Control "balloon_target" (- (guest.Stat "balloon_cur") 1048576))
      0))
"""


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "free page reporting is off" in r.getMessage()]


def test_status_rows_show_balloon_features_and_qemu_rss(tmp_path):
    vms = [FakeVm("fpr", free_page_reporting=True, autodeflate=True),
           FakeVm("plain", stats={"rss": 700 * 1024})]
    rig = Rig(tmp_path, vms, SHRINK_POLICY)
    rig.engine.tick()
    rows = {row["name"]: row for row in rig.engine.status_vms()}
    assert rows["fpr"]["free_page_reporting"] is True and rows["fpr"]["autodeflate"] is True
    assert rows["plain"]["free_page_reporting"] is False and rows["plain"]["autodeflate"] is False
    assert rows["fpr"]["stats_period_s"] == 2
    assert rows["plain"]["rss_kib"] == 700 * 1024


def test_policies_see_the_balloon_features_as_guest_fields(tmp_path):
    vms = [FakeVm("fpr", free_page_reporting=True), FakeVm("plain")]
    rig = Rig(tmp_path, vms, SHRINK_POLICY)
    write_policy(rig.policy_dir, "50-test.policy", FPR_POLICY)
    assert rig.runner.reload(rig.policy_dir) == []
    rig.engine.tick()
    assert [name for name, _ in rig.hypervisor.balloon_calls] == ["fpr"]
    samples = {g["props"]["name"]: g["samples"][-1] for g in rig.engine.last_record.state["guests"]}
    assert samples["plain"]["free_page_reporting"] == 0 and samples["fpr"]["autodeflate"] == 0


def test_one_warning_names_the_vms_without_free_page_reporting(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="ebb.host.engine")
    vms = [FakeVm("web2"), FakeVm("db1"), FakeVm("good", free_page_reporting=True),
           FakeVm("excluded", enabled=False)]
    rig = Rig(tmp_path, vms, SHRINK_POLICY)
    rig.engine.tick()
    rig.engine.tick()
    warnings = _warnings(caplog)
    assert len(warnings) == 1
    assert "db1, web2:" in warnings[0]
    assert "<memballoon model='virtio' freePageReporting='on'>" in warnings[0]
    assert "good" not in warnings[0] and "excluded" not in warnings[0]


def test_the_warning_comes_again_when_the_domains_change(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="ebb.host.engine")
    rig = Rig(tmp_path, [FakeVm("web2", max_kib=GIB_KIB, cur_kib=GIB_KIB)], SHRINK_POLICY)
    rig.engine.tick()
    rig.hypervisor.vms["new"] = FakeVm("new")
    rig.engine.tick()
    warnings = _warnings(caplog)
    assert len(warnings) == 2 and "new, web2:" in warnings[1]
    # Every VM reports freed pages now: nothing more to say.
    for name in list(rig.hypervisor.vms):
        rig.hypervisor.vms[name].free_page_reporting = True
    rig.engine.tick()
    assert len(_warnings(caplog)) == 2


def test_rss_of_a_vm_no_longer_managed_is_current_not_its_last_sample(tmp_path):
    vm = FakeVm("web", stats={"rss": 900 * 1024})
    rig = Rig(tmp_path, [vm], SHRINK_POLICY)
    rig.engine.tick()
    vm.enabled = False  # excluded in its XML: no more policy samples
    vm.stats["rss"] = 300 * 1024  # its guest freed memory since
    rig.engine.tick()
    row = rig.engine.status_vms()[0]
    assert row["managed"] is False
    assert row["rss_kib"] == 300 * 1024
