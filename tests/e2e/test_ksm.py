"""Scenario 4: ebbd runs KSM under pressure, stops it without, and puts it back when it stops."""

from __future__ import annotations

import time
from typing import List

import pytest
from e2e_support import Guest, record, release_host, squeeze_host, wait_agents, wait_for
from ebb.lab import hostmem

pytestmark = pytest.mark.e2e

# Settings nobody would choose, so "put back" cannot pass by coincidence.
BEFORE = {"run": 0, "pages_to_scan": 123, "sleep_millisecs": 37}


@pytest.mark.timeout(600)
def test_ksm_runs_under_pressure_stops_without_and_is_restored(
    guests: List[Guest], ebbd_factory, host
) -> None:
    # Pages merged earlier (by another test's ebbd, or before the run) stay merged
    # while KSM is stopped; unmerge them (run=2) so this test sees its own sharing.
    hostmem.set_ksm({"run": 2})
    wait_for(lambda: hostmem.ksm_values()["pages_sharing"] == 0, 120,
             "KSM to unmerge the pages merged before this test", interval_s=1.0,
             last=hostmem.ksm_values)
    hostmem.set_ksm(BEFORE)
    ebbd = ebbd_factory()
    wait_agents(ebbd, guests)
    time.sleep(3)  # a few ticks without pressure
    assert hostmem.ksm_values()["run"] == 0, "KSM started although the host had memory"

    sharing_before = hostmem.ksm_values()["pages_sharing"]
    squeeze_host(0.15, host)
    squeezed_at = time.monotonic()
    wait_for(lambda: hostmem.ksm_values()["run"] == 1, 30, "ebbd to start KSM under pressure",
             last=hostmem.ksm_values)
    record("pressure_to_ksm_run_s", round(time.monotonic() - squeezed_at, 1))
    # The two guests run the same kernel and programs: their pages merge.
    wait_for(lambda: hostmem.ksm_values()["pages_sharing"] > sharing_before + 2000, 120,
             "pages_sharing to grow by 2000 pages across the identical guests",
             interval_s=2.0, last=hostmem.ksm_values)
    record("ksm_pages_sharing_under_pressure", hostmem.ksm_values()["pages_sharing"])
    assert ebbd.status()["host"]["ksm"]["run"] == 1

    release_host(host)
    wait_for(lambda: hostmem.ksm_values()["run"] == 0, 60,
             "ebbd to stop KSM once the host has memory again", last=hostmem.ksm_values)

    assert ebbd.stop() == 0
    after = hostmem.ksm_values()
    assert {k: after[k] for k in BEFORE} == BEFORE, "KSM settings not put back when ebbd stopped"
