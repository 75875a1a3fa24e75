"""Benchmark guests: lab guests with extra virtio disks (a swap disk, a data disk).

``ebbctl lab up`` boots guests without disks. The article's guests had swap, and
the page-cache workload needs a disk to read from, so the benchmark defines its
guests itself from the lab's own pieces (kernel, initramfs, guest Python, domain
XML with the lab marker) and adds ``<disk>`` elements. ``Lab.down(prefix)`` and
``ebbctl lab down --prefix`` still recognise and remove them.

In the guest the disks appear once ``virtio_blk`` is loaded (the lab's initramfs
does not load it); :func:`enable_swap` and :func:`mount_data` do that through
the guest's command share.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ebb.lab import domain as domain_xml
from ebb.lab import guestenv
from ebb.lab.errors import LabError
from ebb.lab.guestcmd import GuestShell
from ebb.lab.manager import DEFAULT_AGENT_ARGS, Lab, LabSettings, kvm_usable

from .stall import parse_psi

LOG = logging.getLogger(__name__)

Progress = Callable[[str], None]

#: The benchmark guests' agent channel. Not ``org.ebb.agent.0``: other ebbds on this
#: shared host (other people's tests) connect to every VM's agent channel and would
#: take ours; only the benchmark's ebbd (``[guests] agent_channel``) looks for this name.
BENCH_PORT = "org.ebb.bench.0"
#: The agent in the guest opens that port by name.
AGENT_ARGS = f"{DEFAULT_AGENT_ARGS} --device /dev/virtio-ports/{BENCH_PORT}"


@dataclass
class Disk:
    """An extra virtio disk: an image file on the host, ``vdX`` in the guest."""

    path: Path
    target: str  # vda, vdb, ...
    readonly: bool = False
    cache: str = "none"

    def xml(self) -> str:
        ro = "\n      <readonly/>\n      <shareable/>" if self.readonly else ""
        return f"""    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' cache='{self.cache}' io='threads'/>
      <source file='{self.path}'/>
      <target dev='{self.target}' bus='virtio'/>{ro}
    </disk>
"""


def make_swap_image(path: Path, size_mib: int) -> None:
    """A sparse raw image the guest turns into swap (mkswap runs in the guest)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    with open(path, "wb") as handle:
        handle.truncate(size_mib * 1024 * 1024)
    path.chmod(0o660)


def _prepare_guest_dir(lab: Lab, name: str) -> Path:
    """The lab's guest folder layout (share/cmd, share/out), owned by QEMU's user."""
    entry = pwd.getpwnam(guestenv.qemu_user())
    gdir = lab.guest_dir(name)
    if gdir.exists():
        shutil.rmtree(gdir)
    share = gdir / "share"
    for folder in (gdir, share, share / "cmd", share / "out"):
        folder.mkdir(parents=True, exist_ok=True)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
        folder.chmod(0o755)
    with contextlib.suppress(KeyError):
        os.chown(gdir, entry.pw_uid, grp.getgrgid(entry.pw_gid).gr_gid)
    return gdir


def boot_guests(lab: Lab, names: Sequence[str], memory_mib: int,
                disks: Dict[str, List[Disk]], floor_mib: Optional[int] = None,
                timeout_s: float = 300.0, progress: Optional[Progress] = None,
                free_page_reporting: bool = False,
                memory_of: Optional[Dict[str, int]] = None, agent_args: str = "") -> None:
    """Define and start ``names`` (replacing earlier ones of ours); wait for their agents.

    ``memory_of`` gives some guests another size than ``memory_mib``;
    ``free_page_reporting`` switches the balloon's free page reporting on;
    ``agent_args`` is added to the agents' command line.
    """
    say = progress or (lambda _m: None)
    lab.check_prerequisites()
    kernel_image, initrd, _kernel = lab.prepare_boot(say)
    guest_py = guestenv.prepare(lab.state_dir)
    domain_type = "kvm" if kvm_usable() else "qemu"
    libvirt = __import__("libvirt")
    existing = {d.name(): d for d in lab.conn.listAllDomains(0)}
    for name in names:
        if name in existing and not lab._is_lab_domain(existing[name]):
            raise LabError(f"a domain named {name} exists and is not a lab guest",
                           hint="choose another prefix; the benchmark never touches it")
    lab.down()  # our own leftovers (prefix + lab marker only)
    specs = []
    for name in names:
        gdir = _prepare_guest_dir(lab, name)
        spec = domain_xml.GuestSpec(
            name=name, memory_mib=(memory_of or {}).get(name, memory_mib),
            kernel=kernel_image, initramfs=initrd,
            python=guest_py.python, bin_dir=guest_py.bin_dir, guest_dir=gdir,
            state_dir=lab.state_dir, domain_type=domain_type, agent=True,
            agent_args=f"{AGENT_ARGS} {agent_args}".strip(),
            free_page_reporting=free_page_reporting,
            # enabled="no": other ebbds on this host leave the balloon alone; the
            # benchmark's ebbd manages them anyway ([hypervisor] manage_opted_out).
            ebb_metadata={"enabled": "no",
                          **({"floor_mib": str(floor_mib)} if floor_mib is not None else {})},
        )
        xml = domain_xml.domain_xml(spec).replace(
            f"name='{domain_xml.AGENT_PORT}'", f"name='{BENCH_PORT}'")
        extra = "".join(d.xml() for d in disks.get(name, []))
        xml = xml.replace("  </devices>", extra + "  </devices>")
        (gdir / "domain.xml").write_text(xml)
        try:
            dom = lab.conn.defineXML(xml)
        except libvirt.libvirtError as err:
            raise LabError(f"libvirt refused {name}: {err.get_error_message()}",
                           hint=f"the XML is in {gdir / 'domain.xml'}") from err
        specs.append((spec, dom))
    started = time.monotonic()
    for spec, dom in specs:
        try:
            dom.create()
        except libvirt.libvirtError as err:
            raise LabError(f"{spec.name} did not start: {err.get_error_message()}",
                           hint=f"see /var/log/libvirt/qemu/{spec.name}.log") from err
    # Up to "agent running", not "agent connected": another ebbd on this host (someone
    # else's test) may hold the channel, and the probe would wait for nothing.
    lab.wait_ready([s for s, _ in specs], started, timeout_s, False, say)


def run_checked(shell: GuestShell, argv: Sequence[str], timeout_s: float = 120.0) -> str:
    """Run ``argv`` in the guest; LabError with its stderr when it fails."""
    result = shell.run(list(argv), timeout_s=timeout_s)
    if result.returncode != 0:
        raise LabError(f"{shell.name}: {' '.join(argv)} exited with {result.returncode}: "
                       f"{result.stderr.strip()[-400:]}")
    return result.stdout


def enable_swap(shell: GuestShell, device: str = "/dev/vda") -> int:
    """Load virtio_blk, mkswap and swapon ``device`` in the guest; return its swap KiB."""
    run_checked(shell, ["modprobe", "virtio_blk"])
    script = (f"for i in $(seq 50); do [ -b {device} ] && break; sleep 0.1; done; "
              f"mkswap {device} >/dev/null && swapon {device} && "
              "awk '/SwapTotal/ {print $2}' /proc/meminfo")
    out = run_checked(shell, ["sh", "-c", script])
    return int(out.split()[-1])


def mount_data(shell: GuestShell, device: str, mountpoint: str) -> None:
    """Mount an ext4 data disk read-only in the guest (under its tmpfs /run)."""
    run_checked(shell, ["modprobe", "virtio_blk"])
    run_checked(shell, ["modprobe", "ext4"])
    script = (f"for i in $(seq 50); do [ -b {device} ] && break; sleep 0.1; done; "
              f"mkdir -p {mountpoint} && mount -t ext4 -o ro,noload {device} {mountpoint}")
    run_checked(shell, ["sh", "-c", script])


def guest_vmstat(shell: GuestShell) -> Dict[str, int]:
    """The guest's /proc/vmstat counters."""
    return guest_counters(shell)[0]


#: Between /proc/vmstat and /proc/pressure/memory in :func:`guest_counters`' output.
_PSI_MARK = "--- psi ---"


def guest_counters(shell: GuestShell) -> Tuple[Dict[str, int], Dict[str, int]]:
    """The guest's /proc/vmstat counters and its memory PSI totals (µs), in one command.

    The PSI totals are empty when the guest kernel has no PSI (``psi=1`` is on the
    lab's kernel command line; a kernel built without it has no /proc/pressure).
    """
    out = run_checked(shell, ["sh", "-c", f"cat /proc/vmstat; echo '{_PSI_MARK}'; "
                              "cat /proc/pressure/memory 2>/dev/null || true"], timeout_s=60.0)
    vmstat_text, _, psi_text = out.partition(_PSI_MARK)
    values = {}
    for line in vmstat_text.splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            values[key] = int(value)
    return values, parse_psi(psi_text)


#: The benchmark's own lab state folder: kernel, initramfs, guest Python and the
#: wrapper scripts live there, so other people's ``lab up`` rewriting the shared
#: /var/lib/ebb-lab/bin cannot break a run halfway.
STATE_DIR = Path("/var/lib/ebb-bench/lab")


def make_lab(prefix: str) -> Lab:
    return Lab(LabSettings(state_dir=STATE_DIR, prefix=prefix))


def mkfs_ext4_from_dir(image: Path, source: Path, size_mib: int) -> None:
    """An ext4 image holding ``source``'s files (``mkfs.ext4 -d``, no mounting)."""
    with contextlib.suppress(FileNotFoundError):
        image.unlink()
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(source), str(image), f"{size_mib}M"],
                   check=True, capture_output=True)
    image.chmod(0o644)


def conn_domain(lab: Lab, name: str) -> Any:
    return lab.conn.lookupByName(name)


def whole_disk(path: Path) -> str:
    """The device node of the whole disk holding ``path`` (blkio limits apply to disks)."""
    st = os.stat(path)
    sysdir = Path(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}")
    if not sysdir.exists():
        raise LabError(f"{path} is not on a block device ({sysdir} is missing)",
                       hint="put the host swap file and the images on a local disk")
    sysdir = sysdir.resolve()
    if (sysdir / "partition").exists():
        sysdir = sysdir.parent
    for line in (sysdir / "uevent").read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "DEVNAME":
            return f"/dev/{value}"
    raise LabError(f"no DEVNAME in {sysdir / 'uevent'}")


BLKIO_ROOT = Path("/sys/fs/cgroup/blkio")


def qemu_pid(name: str) -> int:
    """The pid of a running guest's QEMU (libvirt's pid file)."""
    path = Path(f"/run/libvirt/qemu/{name}.pid")
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError) as err:
        raise LabError(f"{name}: no QEMU pid in {path}: {err}") from err


class DiskLimit:
    """One slow disk shared by the guests: their QEMU processes go into one blkio cgroup
    that may do at most ``iops`` reads and ``iops`` writes a second on ``device``.

    That covers the host swap-ins a guest's memory faults in (the faulting QEMU thread
    reads them) and the guests' own disk I/O; the host's swap-out, done by kswapd, is not
    limited. The cgroup is removed by :meth:`close`, once the guests are gone.
    """

    def __init__(self, name: str, device: str, iops: int) -> None:
        st = os.stat(device)
        self.device = device
        self.devno = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
        self.iops = iops
        self.path = BLKIO_ROOT / name
        if not (BLKIO_ROOT / "blkio.throttle.read_iops_device").exists():
            raise LabError(f"no blkio throttling here ({BLKIO_ROOT} has no "
                           "blkio.throttle.read_iops_device)",
                           hint="--disk-iops needs the cgroup v1 blkio controller")
        self.path.mkdir(exist_ok=True)
        for knob in ("blkio.throttle.read_iops_device", "blkio.throttle.write_iops_device"):
            (self.path / knob).write_text(f"{self.devno} {iops}\n")

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(f"{pid}\n")

    def ios(self) -> Dict[str, int]:
        """Reads and writes done on the device by the guests so far."""
        done = {"read": 0, "write": 0}
        for line in (self.path / "blkio.throttle.io_serviced").read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == self.devno and parts[1].lower() in done:
                done[parts[1].lower()] = int(parts[2])
        return done

    def close(self) -> None:
        """Move whatever is left back to the root group and remove the cgroup."""
        if not self.path.exists():
            return
        for pid in (self.path / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):  # gone meanwhile
                (BLKIO_ROOT / "cgroup.procs").write_text(f"{pid}\n")
        self.path.rmdir()
