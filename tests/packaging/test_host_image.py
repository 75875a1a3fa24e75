"""The host package in a real VM image: ebbd runs under its hardened unit.

Installs python3-ebb-protocol and ebb-host with dpkg into a minimal Debian 12
image whose other packages come from Debian's archive through debootstrap, boots
it under QEMU with systemd as init, and lets a probe service inside the image
report on the console: ebbd.service must be active (it sent READY=1 under
Type=notify) with every hardening option of the unit in force, /run/ebb and the
control socket must belong to group ebb, `ebbctl status --json` must answer and
`systemctl reload ebbd` must work. The image has no libvirtd: ebbd runs without
it and keeps retrying, as it does on a host whose libvirtd is down. Then the
packages are purged in the image's tree and no file may be left behind.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Dict

import imagetools
import pytest
from pkgtools import require_root, require_tools

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(1800)]

#: ebb-host's Depends, so that dpkg -i resolves them from the image.
INCLUDES = (
    "python3-libvirt",
    "python3-msgpack",
    "python3-prometheus-client",
    "python3-psutil",
    "python3-serial",
    "python3-systemd",
)
PACKAGES = ("python3-ebb-protocol", "ebb-host")
#: From QEMU start to the probe's last line (boot about 110 s, ebbd start, reload).
PROBE_TIMEOUT_S = 600

PROBE_UNIT = """\
[Unit]
Description=ebb packaging test probe
After=ebbd.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/ebb-test-probe
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0

[Install]
WantedBy=multi-user.target
"""

# One "EBB-PROBE key=value" line per fact, on the serial console.
PROBE_SCRIPT = """\
#!/bin/sh
p() { echo "EBB-PROBE $1=$2"; }
i=0
until [ "$(systemctl is-active ebbd.service)" = active ] || [ $i -ge 180 ]; do
    sleep 1; i=$((i + 1))
done
p active "$(systemctl is-active ebbd.service)"
p rundir "$(stat -c '%a %U %G' /run/ebb 2>&1)"
p socket "$(stat -c '%a %U %G %F' /run/ebb/ebbd.sock 2>&1)"
p status "$(ebbctl status --json 2>&1 | tr -d '\\n')"
systemctl reload ebbd.service >/dev/null 2>&1
p reload "$?"
sleep 3
p after_reload "$(systemctl is-active ebbd.service)"
p restarts "$(systemctl show -p NRestarts --value ebbd.service)"
pid=$(systemctl show -p MainPID --value ebbd.service)
p ksm_rw "$(grep -c ' /sys/kernel/mm/ksm rw' /proc/$pid/mountinfo)"
p sys_ro "$(grep -c ' /sys ro,' /proc/$pid/mountinfo)"
p caps "$(grep CapBnd /proc/$pid/status | cut -f2)"
bad='permission denied|read-only file system|operation not permitted'
p denied "$(journalctl -u ebbd.service -o cat --no-pager | grep -ciE "$bad")"
journalctl -u ebbd.service -o cat --no-pager | sed 's/^/EBB-LOG /'
p done 1
"""

#: CAP_CHOWN (bit 0) and CAP_DAC_OVERRIDE (bit 1): what ebbd.service keeps.
KEPT_CAPS = (1 << 0) | (1 << 1)


def _probe(vm: imagetools.Vm, key: str, deadline: float) -> str:
    return vm.wait_console(rf"EBB-PROBE {key}=(.*)$", deadline).group(1).strip()


def test_host_package_runs_ebbd_hardened_and_purges_clean(debs: Dict[str, Path]) -> None:
    require_root()
    require_tools("debootstrap", "mkfs.ext4", "qemu-system-x86_64")
    started = time.monotonic()
    version, vmlinuz, initrd = imagetools.host_kernel()
    with imagetools.scratch_dir() as workdir:
        root = imagetools.prepare_tree(workdir, INCLUDES, version)
        before_files = imagetools.file_list(root)
        before_accounts = imagetools.accounts(root)

        imagetools.dpkg_install(root, [debs[name] for name in PACKAGES])
        assert (root / "etc/systemd/system/multi-user.target.wants/ebbd.service").is_symlink()
        assert b"\nebb:" in b"\n" + (root / "etc/group").read_bytes()

        probe_files = [
            root / "etc/systemd/system/ebb-test-probe.service",
            root / "etc/systemd/system/multi-user.target.wants/ebb-test-probe.service",
            root / "usr/local/sbin/ebb-test-probe",
        ]
        probe_files[0].write_text(PROBE_UNIT)
        probe_files[1].symlink_to("/etc/systemd/system/ebb-test-probe.service")
        probe_files[2].write_text(PROBE_SCRIPT)
        probe_files[2].chmod(0o755)
        image = workdir / "image.raw"
        imagetools.make_image(root, image)
        for path in probe_files:
            path.unlink()

        with imagetools.boot(workdir, image, vmlinuz, initrd) as vm:
            deadline = vm.started + PROBE_TIMEOUT_S
            _probe(vm, "done", deadline)
            ready_s = time.monotonic() - vm.started
            facts = {
                key: _probe(vm, key, deadline)
                for key in ("active", "rundir", "socket", "status", "reload", "after_reload",
                            "restarts", "ksm_rw", "sys_ro", "caps", "denied")
            }  # fmt: skip
            log = "\n".join(
                line for line in vm.console_text().splitlines() if "EBB-LOG " in line
            )
        context = f"{facts}\n--- ebbd's journal ---\n{log}"
        assert facts["active"] == "active", context
        assert facts["rundir"] == "750 root ebb", context
        assert facts["socket"] == "660 root ebb socket", context
        status = json.loads(facts["status"])
        assert status["daemon"]["pid"] > 1, status
        assert status["host"]["mem_total_kib"] > 300 * 1024, status
        assert status["daemon"]["libvirt"]["connected"] is False, status
        assert facts["reload"] == "0", context
        assert facts["after_reload"] == "active", context
        assert facts["restarts"] == "0", context
        # The unit's file system view: /sys read-only except the KSM knobs.
        assert int(facts["ksm_rw"]) >= 1 and int(facts["sys_ro"]) >= 1, context
        assert int(facts["caps"], 16) == KEPT_CAPS, context
        assert facts["denied"] == "0", context

        imagetools.chroot(root, "dpkg", "--purge", *reversed(PACKAGES))
        after_files = imagetools.file_list(root)
        assert sorted(after_files - before_files) == [], "purge left files behind"
        assert sorted(before_files - after_files) == [], "install or purge removed files"
        assert imagetools.accounts(root) == before_accounts, "purge left account entries"
        assert not re.search(r"\bebb\b", (root / "etc/group").read_text())

        print(
            f"\nebbd active and probed {ready_s:.0f} s after QEMU started, "
            f"total {time.monotonic() - started:.0f} s"
        )
