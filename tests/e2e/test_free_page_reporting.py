"""Free page reporting: memory a guest frees goes back to the host without a balloon move.

The lab's guests have ``<memballoon model='virtio' freePageReporting='on'>``. A
workload in a guest touches memory, which the host then holds (the VM's QEMU
process grows); when the workload exits, the guest kernel reports the freed pages
and QEMU drops them, so the host gets that memory back by itself while the balloon
stays at the guest's maximum. ebbd shows the feature on for every lab guest.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import pytest
from e2e_support import Guest, record, wait_for
from ebb.host.collectors import qemu_rss_kib

pytestmark = pytest.mark.e2e

#: What the workload touches in a 512 MiB guest (about 420 MiB are free after boot).
TOUCH_MIB = 300
#: The QEMU process must grow by at least this much while the workload runs...
GROWN_MIB = 200
#: ...and give back at least this share of what it grew by once the workload ends.
RETURNED_SHARE = 0.6
#: The kernel reports freed pages after about 2 s; software emulation is slow.
RETURN_TIMEOUT_S = 90.0


def _qemu_pid(name: str) -> int:
    return int(Path(f"/run/libvirt/qemu/{name}.pid").read_text().strip())


def _rss_kib(pid: int) -> int:
    rss = qemu_rss_kib(pid)
    if rss is None:
        pytest.fail(f"QEMU process {pid} is gone")
    return rss


@pytest.mark.timeout(900)  # includes booting the lab when this test runs first
def test_freed_guest_memory_returns_to_the_host_without_a_balloon_move(
        guests: List[Guest], ebbd_factory) -> None:
    ebbd = ebbd_factory()
    guest = guests[0]
    pid = _qemu_pid(guest.name)
    max_kib = guest.max_kib()
    before_kib = _rss_kib(pid)

    guest.memknobs(f"{TOUCH_MIB}M:10m")
    peak: List[int] = [before_kib]

    def grown() -> Optional[int]:
        peak.append(_rss_kib(pid))
        return peak[-1] if peak[-1] - before_kib >= GROWN_MIB * 1024 else None

    wait_for(grown, 180, f"{guest.name}'s QEMU to grow by {GROWN_MIB} MiB while the "
             f"workload touches {TOUCH_MIB} MiB", interval_s=1.0,
             last=lambda: f"RSS {peak[-1] // 1024} MiB, before {before_kib // 1024} MiB")
    time.sleep(3)  # let the workload finish touching its buffer
    peak_kib = max(peak[-1], _rss_kib(pid))
    grown_kib = peak_kib - before_kib
    guest.stop_jobs()
    freed_at = time.monotonic()
    now: List[int] = [peak_kib]

    def returned() -> bool:
        now.append(_rss_kib(pid))
        return peak_kib - now[-1] >= RETURNED_SHARE * grown_kib

    wait_for(returned, RETURN_TIMEOUT_S,
             f"{guest.name}'s QEMU to give back {RETURNED_SHARE:.0%} of the "
             f"{grown_kib // 1024} MiB it grew by", interval_s=1.0,
             last=lambda: f"RSS {now[-1] // 1024} MiB, peak {peak_kib // 1024} MiB, "
                          f"before {before_kib // 1024} MiB")
    record("fpr_return_s", round(time.monotonic() - freed_at, 1))
    record("fpr_returned_mib", (peak_kib - now[-1]) // 1024)

    # No balloon did it: the guest kept its full size, and ebbd took no action.
    assert guest.actual_kib() == max_kib
    vm = ebbd.vm(guest.name)
    assert vm["last_action"] is None, vm["last_action"]
    assert vm["balloon_cur_kib"] == max_kib


@pytest.mark.timeout(900)
def test_status_shows_free_page_reporting_on_for_the_lab_guests(
        guests: List[Guest], ebbd_factory) -> None:
    ebbd = ebbd_factory()
    names = [g.name for g in guests]

    def rows():
        status = ebbd.status()
        found = {vm["name"]: vm for vm in status["vms"] if vm["name"] in names}
        return found if len(found) == len(names) else None

    vms = wait_for(rows, 30, "both lab guests in ebbctl status")
    for name in names:
        assert vms[name]["free_page_reporting"] is True, vms[name]
        assert vms[name]["stats_period_s"] == 2
        assert vms[name]["rss_kib"] and vms[name]["rss_kib"] > 0
    text = ebbd.ctl("status").stdout
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("VM "))
    fpr = header.split().index("FPR")
    for name in names:
        row = next(line for line in lines if line.startswith(name + " "))
        assert row.split()[fpr] == "on", text
    assert "free page reporting is off" not in text
    explain = ebbd.ctl("explain", names[0]).stdout
    assert "free page reporting on" in explain, explain
    # No warning about them in the log either.
    assert "free page reporting is off" not in ebbd.log.read_text(errors="replace")
