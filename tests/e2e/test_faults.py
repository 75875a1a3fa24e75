"""Scenarios 5 and 6: a dead agent, a restarted libvirtd, a killed ebbd, a hostile guest."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from typing import List

import pytest
from e2e_support import (
    Guest,
    fresh,
    record,
    release_host,
    restart_agent,
    squeeze_host,
    wait_agents,
    wait_for,
)
from ebb.lab import hostmem

pytestmark = pytest.mark.e2e

KSM_BEFORE = {"run": 0, "pages_to_scan": 123, "sleep_millisecs": 37}


def _libvirtd_pids() -> List[int]:
    out = subprocess.run(["pgrep", "-x", "libvirtd"], capture_output=True, text=True).stdout
    pids = []
    for pid in out.split():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                args = handle.read().split(b"\0")
        except OSError:
            continue
        if b"--timeout" not in args:  # session daemons started by other users' virsh
            pids.append(int(pid))
    return pids


def _restart_libvirtd() -> None:
    """Stop the system libvirtd and start it again (the VMs keep running meanwhile)."""
    if shutil.which("systemctl") and os.path.exists("/run/systemd/system"):
        subprocess.run(["systemctl", "restart", "libvirtd"], check=True)
        return
    for pid in _libvirtd_pids():
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not _libvirtd_pids(), 30, "libvirtd to stop")
    subprocess.run(["libvirtd", "-d"], check=True)
    wait_for(lambda: subprocess.run(["virsh", "-c", "qemu:///system", "version"],
                                    capture_output=True).returncode == 0,
             30, "libvirtd to answer again")


@pytest.mark.timeout(600)
def test_dead_agent_is_not_trusted_and_the_other_guest_stays_managed(
    guests: List[Guest], ebbd_factory, host
) -> None:
    victim, other = guests
    # The live guest's agent runs without yield, so the host takes memory from it by
    # balloon below the critical level too (a guest that reports free pages and
    # yields is only asked to yield there; test_yield.py).
    restart_agent(other, "--no-yield")
    try:
        _dead_agent_not_trusted(victim, other, guests, ebbd_factory, host)
    finally:
        restart_agent(other)


def _dead_agent_not_trusted(victim: Guest, other: Guest, guests: List[Guest], ebbd_factory,
                            host) -> None:
    ebbd = ebbd_factory()
    wait_agents(ebbd, guests)
    victim.kill_agent()
    killed_at = time.monotonic()
    vm = wait_for(lambda: (v := ebbd.vm(victim.name)).get("cooperation") != "ok" and v, 30,
                  f"{victim.name} to be shown as not cooperating",
                  last=lambda: ebbd.vm(victim.name))
    record("agent_killed_to_not_cooperating_s", round(time.monotonic() - killed_at, 1))
    assert vm["cooperation"] in ("no-agent", "stale"), vm
    assert fresh(ebbd.vm(other.name)), ebbd.vm(other.name)
    assert ebbd.vm(other.name)["cooperation"] == "ok"

    # Under pressure: the live guest is inflated and keeps being served; the one whose
    # agent died stays marked as not cooperating the whole time (its stale report is
    # never taken for a live one), so only its balloon statistics count for it.
    squeeze_host(0.15, host)
    wait_for(lambda: other.actual_kib() < other.max_kib(), 60,
             f"{other.name} (live agent) to be inflated under pressure",
             last=lambda: ebbd.vm(other.name))
    for _ in range(10):
        status = ebbd.status()
        assert ebbd.vm(victim.name, status)["cooperation"] in ("no-agent", "stale")
        assert fresh(ebbd.vm(other.name, status)), "the other guest stopped being served"
        time.sleep(1)
    release_host(host)

    victim.start_agent()
    # Python starts slowly in an emulated guest on a busy host (15-30 s).
    wait_for(lambda: ebbd.vm(victim.name).get("cooperation") == "ok", 120,
             f"{victim.name}'s restarted agent to be back", last=lambda: ebbd.vm(victim.name))


@pytest.mark.timeout(600)
def test_libvirtd_restart_and_ebbd_sigkill(guests: List[Guest], ebbd_factory, host) -> None:
    hostmem.set_ksm(KSM_BEFORE)
    ebbd = ebbd_factory()
    wait_agents(ebbd, guests)

    ticks = ebbd.status()["daemon"]["tick"]["count"]
    _restart_libvirtd()
    restarted_at = time.monotonic()
    wait_for(lambda: (s := ebbd.status())["daemon"]["libvirt"]["connected"]
             and s["daemon"]["tick"]["count"] > ticks + 2, 60,
             "ebbd to reconnect to the restarted libvirtd and keep ticking",
             last=lambda: ebbd.status()["daemon"])
    record("libvirtd_restart_to_reconnected_s", round(time.monotonic() - restarted_at, 1))
    wait_agents(ebbd, guests)

    # Under pressure ebbd changes KSM; SIGKILL leaves it changed ...
    squeeze_host(0.15, host)
    wait_for(lambda: hostmem.ksm_values()["run"] == 1, 30, "KSM to run under pressure",
             last=hostmem.ksm_values)
    ebbd.kill9()
    changed = hostmem.ksm_values()
    assert changed["run"] == 1
    release_host(host)

    # ... and the next ebbd (same run dir) puts the saved settings back and carries on.
    again = type(ebbd)(ebbd.workdir, {})
    again.config = ebbd.config
    again.start()
    try:
        wait_for(lambda: all(hostmem.ksm_values()[k] == v for k, v in KSM_BEFORE.items()), 30,
                 "the restarted ebbd to restore the KSM settings saved before the crash",
                 last=hostmem.ksm_values)
        wait_agents(again, guests)
    finally:
        again.stop()


@pytest.mark.timeout(600)
def test_hostile_guest_is_cut_off_and_the_other_is_served(
    guests: List[Guest], ebbd_factory, host
) -> None:
    hostile, good = guests
    ebbd = ebbd_factory()
    wait_agents(ebbd, guests)
    hostile.kill_agent()
    time.sleep(1)
    hostile.spawn("python3", "-m", "ebb.lab.hostile", "--seconds", "90")
    worst_age = 0.0
    cut_off_seen_at = None
    errors = 0
    # Until 15 s after the cut-off (the hostile process takes a while to start).
    end = time.monotonic() + 120
    while time.monotonic() < end:
        status = ebbd.status()
        bad = ebbd.vm(hostile.name, status)
        agent = bad.get("agent") or {}
        errors = max(errors, agent.get("protocol_errors") or 0)
        if cut_off_seen_at is None and agent.get("cut_off_until") is not None:
            cut_off_seen_at = time.monotonic()
            end = min(end, cut_off_seen_at + 15)
        age = (ebbd.vm(good.name, status).get("agent") or {}).get("last_report_age_s")
        assert age is not None, "the good guest lost its agent session"
        worst_age = max(worst_age, age)
        time.sleep(0.5)
    cut_off_seen = cut_off_seen_at is not None
    record("hostile_good_guest_worst_report_age_s", round(worst_age, 2))
    assert errors > 0, "ebbd counted no protocol errors from the hostile guest"
    assert cut_off_seen, "the hostile guest was never cut off"
    assert worst_age < 3.0, f"the good guest's reports were {worst_age:.1f} s late"
    assert ebbd.vm(good.name)["cooperation"] == "ok"
