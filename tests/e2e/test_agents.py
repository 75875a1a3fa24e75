"""Scenario 1: agents in real guests connect to ebbd and report."""

from __future__ import annotations

import time
from typing import List

import pytest
from e2e_support import Guest, fresh, record, wait_for

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(600)  # includes booting the lab when this test runs first
def test_agents_connect_and_report_within_60s(guests: List[Guest], ebbd_factory) -> None:
    started = time.monotonic()
    ebbd = ebbd_factory()
    names = [g.name for g in guests]

    def both_fresh():
        status = ebbd.status()
        vms = {vm["name"]: vm for vm in status["vms"]}
        return all(name in vms and fresh(vms[name]) for name in names) and vms

    vms = wait_for(both_fresh, 60, "both agents connected with fresh reports",
                   last=lambda: [ebbd.vm(n) for n in names])
    record("agents_connected_after_ebbd_start_s", round(time.monotonic() - started, 1))
    for name in names:
        vm = vms[name]
        assert vm["state"] == "running"
        assert vm["managed"] is True
        assert vm["cooperation"] == "ok"
        assert vm["agent"]["protocol_errors"] == 0
        # The agent's own view of the guest arrived: MemAvailable of a 512 MiB guest.
        assert 0 < vm["mem_available_kib"] <= guests[0].max_kib()
        assert vm["balloon_max_kib"] == guests[0].max_kib()

    # Reports keep coming: ages stay small over several report intervals.
    time.sleep(4)
    status = ebbd.status()
    for name in names:
        assert fresh(ebbd.vm(name, status), max_age_s=3.0), ebbd.vm(name, status)
