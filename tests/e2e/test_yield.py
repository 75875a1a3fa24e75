"""Yields on real guests: cold cache goes back to the host; agents that cannot yield are ballooned.

The lab guests' balloons have free page reporting on (lab/domain.py), so
what a guest frees leaves its QEMU process within seconds. Cold page cache is
made by reading a file the test writes under the lab's state directory: the
guest's root is the host's / over 9p with caching, so the file's pages land in
the guest's page cache (the guest's /tmp is tmpfs and would not count).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest
from e2e_support import (
    COLD_FILE_MIB,
    MIB,
    Ebbd,
    Guest,
    fill_cache,
    record,
    release_host,
    restart_agent,
    squeeze_host,
    wait_agents,
    wait_for,
)

pytestmark = pytest.mark.e2e

def yield_status(ebbd: Ebbd, guest: Guest) -> Dict[str, Any]:
    return dict(ebbd.vm(guest.name).get("yield") or {})


def journal_kinds(ebbd: Ebbd, guest: Guest) -> List[str]:
    explained = json.loads(ebbd.ctl("explain", guest.name, "--json", "-n", "50").stdout)
    return [str(d.get("kind")) for d in explained.get("decisions") or []]


@pytest.mark.timeout(600)
def test_ebbctl_yield_turns_cold_cache_into_host_memory_at_full_balloon(
    guests: List[Guest], ebbd_factory, cold_file: Path
) -> None:
    guest = guests[0]
    ebbd = ebbd_factory()
    wait_agents(ebbd, guests)
    wait_for(lambda: yield_status(ebbd, guest).get("capable"), 30,
             f"{guest.name}'s agent to agree the yield capability",
             last=lambda: yield_status(ebbd, guest))
    grown = fill_cache(guest, cold_file)
    time.sleep(3)  # the page cache's pages are resident at the host now

    result = ebbd.ctl("yield", guest.name, f"{COLD_FILE_MIB}M", "--json", check=False)
    assert result.returncode == 0, f"ebbctl yield failed: {result.stderr}{result.stdout}"
    answer = json.loads(result.stdout)
    returned = answer["returned_kib"]
    record("yield_cache_read_mib", grown // MIB)
    record("yield_rss_returned_mib", returned // MIB)
    record("yield_agent_freed_mib", (answer["agent_freed_kib"] or 0) // MIB)
    record("yield_answer_s", answer["answered_after_s"])
    # Most of the cold cache came back at the host, measured by QEMU's RSS ...
    assert returned >= COLD_FILE_MIB * MIB // 3, answer
    # ... and the guest kept its full size: no balloon moved.
    assert guest.actual_kib() == guest.max_kib()
    assert ebbd.vm(guest.name)["balloon_cur_kib"] == guest.max_kib()
    kinds = journal_kinds(ebbd, guest)
    assert "yield-request" in kinds and "yield-result" in kinds, kinds


@pytest.mark.timeout(300)
def test_ebbd_still_manages_an_agent_without_the_yield_capability(
    guests: List[Guest], ebbd_factory
) -> None:
    plain, other = guests
    restart_agent(plain, "--no-yield")
    try:
        ebbd = ebbd_factory()
        wait_agents(ebbd, guests)
        wait_for(lambda: ebbd.vm(plain.name).get("offer_kib") is not None, 30,
                 f"{plain.name}'s offer to reach ebbd")
        row = ebbd.vm(plain.name)
        assert row["agent"]["connected"] and row["cooperation"] == "ok", row
        assert row["yield"]["capable"] is False
        assert yield_status(ebbd, other)["capable"] is True
        refused = ebbd.ctl("yield", plain.name, "64M", check=False)
        assert refused.returncode == 1
        assert "no yield capability" in refused.stderr
    finally:
        restart_agent(plain)


@pytest.mark.timeout(900)
def test_an_agent_started_with_no_yield_is_ballooned_instead(
    guests: List[Guest], ebbd_factory, host, cold_file: Path
) -> None:
    plain, yielder = guests
    restart_agent(plain, "--no-yield")
    try:
        ebbd = ebbd_factory()
        wait_agents(ebbd, guests)
        wait_for(lambda: yield_status(ebbd, yielder).get("capable")
                 and yield_status(ebbd, plain).get("capable") is False,
                 30, "the capabilities of both agents",
                 last=lambda: [yield_status(ebbd, g) for g in guests])
        # Both guests hold resident cache: something a balloon or a yield can return.
        fill_cache(plain, cold_file)
        fill_cache(yielder, cold_file)
        # ebbd asks a yield for the cache the agent counts as cold: unread for its
        # cache_hold_s (120 s by default), so the pressure comes once it is.
        wait_for(lambda: (ebbd.vm(yielder.name).get("cold_kib") or 0) >= COLD_FILE_MIB * MIB // 2,
                 240, f"{yielder.name}'s agent to count the cache it read as cold",
                 interval_s=2.0, last=lambda: ebbd.vm(yielder.name).get("cold_kib"))

        assert plain.actual_kib() == plain.max_kib()  # nothing taken before the pressure
        share = squeeze_host(0.15, host)
        level = wait_for(lambda: (ebbd.status()["host"].get("pressure_level") or 0) >= 1,
                         30, "ebbd to see the host short of memory")
        assert level
        started = time.monotonic()
        wait_for(lambda: plain.actual_kib() < plain.max_kib(), 240,
                 f"the balloon of {plain.name} (agent --no-yield) to inflate",
                 last=lambda: (ebbd.vm(plain.name).get("last_action"),
                               ebbd.status()["host"].get("pressure_reason")))
        record("no_yield_ballooned_after_s", round(time.monotonic() - started, 1))
        record("no_yield_pressure_share", round(share, 3))
        # The guest that cannot yield was never asked to; the other one was asked first.
        assert "yield-request" not in journal_kinds(ebbd, plain)
        wait_for(lambda: "yield-request" in journal_kinds(ebbd, yielder), 30,
                 f"ebbd to ask {yielder.name} to yield")
        release_host(host)
    finally:
        release_host(host)
        restart_agent(plain)
