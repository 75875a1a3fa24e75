"""Bringing a lab of real guests up and down under the local libvirtd.

:class:`Lab` is what ``ebbctl lab`` and the end-to-end tests use::

    lab = Lab(LabSettings(prefix="ebb-lab"))
    guests = lab.up(count=2, memory_mib=512, progress=print)
    lab.shell("ebb-lab-1").run(["cat", "/proc/meminfo"])
    lab.down()

Every domain the lab defines carries the lab marker (``urn:ebb:lab:1``
metadata, see :mod:`ebb.lab.domain`); ``down`` and ``status`` look only at
domains with that marker and the lab's name prefix, so other VMs on the host are
never touched.
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import logging
import os
import pwd
import shutil
import socket
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from ebb.lab import domain as domain_xml
from ebb.lab import guestenv, initramfs
from ebb.lab.errors import LabError
from ebb.lab.guestcmd import GuestShell

LOG = logging.getLogger(__name__)

DEFAULT_STATE_DIR = Path("/var/lib/ebb-lab")
DEFAULT_URI = "qemu:///system"
DEFAULT_PREFIX = "ebb-lab"
DEFAULT_MEMORY_MIB = 512
#: Host memory left free beyond the guests' when checking whether they fit.
HOST_RESERVE_MIB = 1024
#: Lab agents look for the host every 2 s at most (default 10 s), so a restarted
#: ebbd is found again quickly.
DEFAULT_AGENT_ARGS = "--backoff-max 2"
#: Stages of a booting guest, in order, as ``lab up`` reports them.
STAGES = ("defined", "started", "kernel up", "init", "runner", "agent running",
          "agent connected")

Progress = Callable[[str], None]


@dataclass
class LabSettings:
    """Where the lab keeps its files, which libvirtd, and how its guests are named."""

    state_dir: Path = DEFAULT_STATE_DIR
    uri: str = DEFAULT_URI
    prefix: str = DEFAULT_PREFIX


@dataclass
class GuestInfo:
    """One lab guest as ``lab status`` shows it."""

    name: str
    state: str
    memory_mib: int
    guest_dir: Path
    channel_socket: Path
    share_dir: Path
    console_log: Path
    domain_type: str = "qemu"
    agent_running: Optional[bool] = None
    uptime_s: Optional[float] = None
    balloon_actual_kib: Optional[int] = None
    #: ``<memballoon freePageReporting='on'>`` in the guest's live XML.
    free_page_reporting: Optional[bool] = None
    extra: Dict[str, Any] = field(default_factory=dict)


def _libvirt() -> Any:
    try:
        import libvirt
    except ImportError as err:
        raise LabError(
            "the libvirt Python binding is not installed",
            hint="./dev/bootstrap.sh (or: apt-get install libvirt-dev pkg-config gcc && "
            ".venv/bin/pip install libvirt-python)",
        ) from err
    # Errors reach the lab as exceptions with their message; without this libvirt
    # also prints each one to stderr.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


_STATE_NAMES = {0: "no state", 1: "running", 2: "blocked", 3: "paused", 4: "shutting down",
                5: "shut off", 6: "crashed", 7: "suspended"}


def _as_float(value: object) -> float:
    """A number the guest wrote in its status file; anything else reads as 0."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return 0.0


def default_floor_mib(memory_mib: int) -> int:
    """A lab guest's floor: 3/8 of its memory, at least 128 MiB (192 for 512 MiB).

    The guest runs only its kernel, Python, the agent and the lab's runner (about
    60 MiB), so most of its memory is the balloon's to move. ebbd's own default
    floor (512 MiB) would leave a small lab guest nothing to give.
    """
    return max(128, memory_mib * 3 // 8)


def kvm_usable() -> bool:
    """Whether hardware virtualisation works here (``/dev/kvm`` and vmx/svm in the CPU).

    ``/dev/kvm`` alone is not enough: inside a VM without nested virtualisation
    it exists but guests hang, and the CPU flags then lack vmx/svm.
    """
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    words = set(flags.split())
    return "vmx" in words or "svm" in words


class Lab:
    """The lab's guests under one libvirtd, prefix and state folder."""

    def __init__(self, settings: Optional[LabSettings] = None, conn: Any = None) -> None:
        self.settings = settings or LabSettings()
        self._conn = conn

    # -- prerequisites ----------------------------------------------------------
    @property
    def conn(self) -> Any:
        """The libvirt connection, reopened when libvirtd was restarted under it."""
        if self._conn is not None:
            try:
                # A cheap call: isAlive() still says yes on a socket libvirtd closed.
                self._conn.getLibVersion()
                alive = True
            except Exception:
                alive = False
            if not alive:
                LOG.info("libvirt connection lost; reconnecting to %s", self.settings.uri)
                with contextlib.suppress(Exception):
                    self._conn.close()
                self._conn = None
        if self._conn is None:
            libvirt = _libvirt()
            try:
                self._conn = libvirt.open(self.settings.uri)
            except libvirt.libvirtError as err:
                raise LabError(
                    f"cannot connect to libvirtd at {self.settings.uri}: "
                    f"{err.get_error_message()}",
                    hint="start it: virtlogd -d && libvirtd -d (or systemctl start libvirtd); "
                    "install it: apt-get install libvirt-daemon-system",
                ) from err
        return self._conn

    def check_prerequisites(self) -> None:
        """Fail with what is missing (root, qemu, kernel, busybox, libvirtd) and how to get it."""
        if os.geteuid() != 0:
            raise LabError("the lab needs root (it defines VMs under qemu:///system and "
                           f"writes {self.settings.state_dir})", hint="run it with sudo")
        if shutil.which("qemu-system-x86_64") is None:
            raise LabError("qemu-system-x86_64 not found", hint="apt-get install qemu-system-x86")
        initramfs.find_kernel()
        initramfs.find_busybox()
        if shutil.which("modinfo") is None:
            raise LabError("modinfo not found", hint="apt-get install kmod")
        self.conn.getVersion()

    # -- files --------------------------------------------------------------------
    @property
    def state_dir(self) -> Path:
        return self.settings.state_dir

    def guest_dir(self, name: str) -> Path:
        return self.state_dir / "guests" / name

    def _qemu_ids(self) -> tuple[int, int]:
        user = guestenv.qemu_user()
        try:
            entry = pwd.getpwnam(user)
        except KeyError as err:
            raise LabError(f"user {user} (QEMU's, from /etc/libvirt/qemu.conf) does not exist",
                           hint="apt-get install libvirt-daemon-system") from err
        return entry.pw_uid, entry.pw_gid

    def prepare_boot(self, progress: Progress) -> tuple[Path, Path, initramfs.Kernel]:
        """Copy the kernel and build the initramfs into ``STATE/boot`` (cached)."""
        kernel = initramfs.find_kernel()
        boot = self.state_dir / "boot"
        boot.mkdir(parents=True, exist_ok=True)
        self.state_dir.chmod(0o755)
        image = boot / f"vmlinuz-{kernel.version}"
        if not image.exists() or image.stat().st_size != kernel.image.stat().st_size:
            tmp = image.with_suffix(".tmp")
            shutil.copyfile(kernel.image, tmp)
            tmp.chmod(0o644)
            os.replace(tmp, image)
        modules = initramfs.resolve_modules(kernel)
        digest = hashlib.sha256(initramfs.INIT_SCRIPT.encode())
        for name, path in modules:
            digest.update(f"{name}:{path}:{path.stat().st_mtime_ns}".encode())
        img = boot / f"initramfs-{kernel.version}-{digest.hexdigest()[:12]}.img"
        if not img.exists():
            progress(f"building the initramfs for kernel {kernel.version} "
                     f"({len(modules)} modules: {' '.join(n for n, _ in modules)})")
            data = initramfs.build_initramfs(kernel, modules=modules)
            tmp = img.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.chmod(0o644)
            os.replace(tmp, img)
        return image, img, kernel

    def _prepare_guest_dir(self, name: str) -> Path:
        uid, gid = self._qemu_ids()
        gdir = self.guest_dir(name)
        if gdir.exists():
            shutil.rmtree(gdir)
        share = gdir / "share"
        for folder in (gdir, share, share / "cmd", share / "out"):
            folder.mkdir(parents=True, exist_ok=True)
            os.chown(folder, uid, gid)
            folder.chmod(0o755)
        # The kvm group of QEMU's user should also be able to write, root reads it all.
        with contextlib.suppress(KeyError):
            os.chown(gdir, uid, grp.getgrgid(gid).gr_gid)
        return gdir

    # -- domains ------------------------------------------------------------------
    def _is_lab_domain(self, dom: Any) -> bool:
        libvirt = _libvirt()
        try:
            marker = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, domain_xml.LAB_NS, 0)
        except libvirt.libvirtError:
            return False
        try:
            state_dir = ET.fromstring(marker).get("state-dir")
        except ET.ParseError:
            return False
        return state_dir == str(self.state_dir)

    def domains(self, prefix: Optional[str] = None) -> List[Any]:
        """Lab domains (marked, in this state folder) whose names start with the prefix."""
        prefix = self.settings.prefix if prefix is None else prefix
        found = []
        for dom in self.conn.listAllDomains(0):
            if dom.name().startswith(prefix) and self._is_lab_domain(dom):
                found.append(dom)
        return sorted(found, key=lambda d: _natural_key(d.name()))

    def guest_names(self, count: int) -> List[str]:
        return [f"{self.settings.prefix}-{i}" for i in range(1, count + 1)]

    def _remove_domain(self, dom: Any) -> None:
        libvirt = _libvirt()
        name = dom.name()
        try:
            if dom.isActive():
                dom.destroy()
        except libvirt.libvirtError as err:
            LOG.warning("destroying %s: %s", name, err.get_error_message())
        try:
            dom.undefineFlags(0)
        except libvirt.libvirtError as err:
            LOG.warning("undefining %s: %s", name, err.get_error_message())

    def up(self, count: int = 2, memory_mib: int = DEFAULT_MEMORY_MIB,
           kvm: Optional[bool] = None, run: Optional[str] = None, agent: bool = True,
           agent_args: str = DEFAULT_AGENT_ARGS, timeout_s: float = 180.0, wait_agent: bool = True,
           floor_mib: Optional[int] = None, tb_cache_mib: int = domain_xml.DEFAULT_TB_CACHE_MIB,
           free_page_reporting: bool = True,
           progress: Optional[Progress] = None) -> List[GuestInfo]:
        """Define and start ``count`` guests; wait until each agent runs (and talks).

        Each guest's ``<ebb:vm floor_mib>`` is ``floor_mib`` (default
        :func:`default_floor_mib`), so ebbd may balloon it down that far. Under
        software emulation QEMU's translated-code cache is ``tb_cache_mib``
        (0: QEMU's own default, 1 GiB). The balloon has free page reporting
        unless ``free_page_reporting`` is False (the balloon-only baseline).
        Guests of the same names left by an earlier lab are replaced. Raises
        :class:`LabError` when something is missing or a guest does not come up in
        ``timeout_s``; the guests are left running for inspection then.
        """
        say = progress or (lambda _m: None)
        self.check_prerequisites()
        self._check_host_memory(count * memory_mib)
        kernel_image, initrd, kernel = self.prepare_boot(say)
        guest_py = guestenv.prepare(self.state_dir)
        use_kvm = kvm_usable() if kvm is None else kvm
        domain_type = "kvm" if use_kvm else "qemu"
        say(f"{count} guest(s) x {memory_mib} MiB, domain type {domain_type}"
            f"{'' if use_kvm else ' (software emulation: no usable KVM here)'}, "
            f"kernel {kernel.version}, Python {guest_py.python}, free page reporting "
            f"{'on' if free_page_reporting else 'off'}")
        libvirt = _libvirt()
        names = self.guest_names(count)
        existing = {d.name(): d for d in self.conn.listAllDomains(0)}
        for name in names:
            if name in existing:
                if not self._is_lab_domain(existing[name]):
                    raise LabError(f"a domain named {name} exists and is not a lab guest",
                                   hint="choose another --prefix; the lab never touches it")
                self._remove_domain(existing[name])
        specs = []
        for name in names:
            gdir = self._prepare_guest_dir(name)
            spec = domain_xml.GuestSpec(
                name=name, memory_mib=memory_mib, kernel=kernel_image, initramfs=initrd,
                python=guest_py.python, bin_dir=guest_py.bin_dir, guest_dir=gdir,
                state_dir=self.state_dir, domain_type=domain_type, run=run, agent=agent,
                agent_args=agent_args, qemu_as_root=guest_py.qemu_as_root,
                tb_cache_mib=tb_cache_mib, free_page_reporting=free_page_reporting,
                ebb_metadata={"floor_mib": str(floor_mib if floor_mib is not None
                                               else default_floor_mib(memory_mib))},
            )
            (gdir / "domain.xml").write_text(domain_xml.domain_xml(spec))
            try:
                dom = self.conn.defineXML(domain_xml.domain_xml(spec))
            except libvirt.libvirtError as err:
                raise LabError(f"libvirt refused the domain {name}: {err.get_error_message()}",
                               hint=f"the XML is in {gdir / 'domain.xml'}") from err
            say(f"{name}: defined")
            specs.append((spec, dom))
        started = time.monotonic()
        for spec, dom in specs:
            try:
                dom.create()
            except libvirt.libvirtError as err:
                raise LabError(f"{spec.name} did not start: {err.get_error_message()}",
                               hint="see /var/log/libvirt/qemu/" + spec.name + ".log") from err
            say(f"{spec.name}: started")
        self.wait_ready([s for s, _ in specs], started, timeout_s, agent and wait_agent, say)
        return self.status(names)

    def _check_host_memory(self, needed_mib: int) -> None:
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    available_mib = int(line.split()[1]) // 1024
                    break
            else:
                return
        except OSError:
            return
        if available_mib < needed_mib + HOST_RESERVE_MIB:
            raise LabError(
                f"the guests need {needed_mib} MiB and the host has {available_mib} MiB "
                f"available (keeping {HOST_RESERVE_MIB} MiB for itself)",
                hint="use fewer or smaller guests (--guests, --memory), or free host memory "
                "(cat /proc/sys/vm/nr_hugepages: reserved hugepages count as used)",
            )

    def wait_ready(self, specs: List[domain_xml.GuestSpec], started: float, timeout_s: float,
                   want_agent: bool, say: Progress) -> None:
        """Report each guest's boot stages; return when all reached the last one."""
        last = "agent connected" if want_agent else ("agent running" if specs and specs[0].agent
                                                     else "runner")
        reached: Dict[str, int] = {s.name: STAGES.index("started") for s in specs}
        goal = STAGES.index(last)
        deadline = started + timeout_s
        while True:
            for spec in specs:
                stage = reached[spec.name]
                while stage < goal:
                    if not self._stage_done(spec, STAGES[stage + 1]):
                        break
                    stage += 1
                    say(f"{spec.name}: {STAGES[stage]} ({time.monotonic() - started:.1f} s)")
                reached[spec.name] = stage
            if all(v >= goal for v in reached.values()):
                return
            if time.monotonic() > deadline:
                late = [f"{n} (at '{STAGES[v]}')" for n, v in reached.items() if v < goal]
                raise LabError(
                    f"guests not ready after {timeout_s:.0f} s: {', '.join(late)}",
                    hint="read STATE/guests/NAME/console.log and share/out/agent.err; "
                    "ebbctl lab down to clean up",
                )
            for spec in specs:
                self._check_alive(spec)
            time.sleep(0.5)

    def _check_alive(self, spec: domain_xml.GuestSpec) -> None:
        libvirt = _libvirt()
        try:
            dom = self.conn.lookupByName(spec.name)
            active = dom.isActive()
        except libvirt.libvirtError:
            active = False
        if not active:
            tail = _tail(spec.console_log, 15)
            raise LabError(f"{spec.name} stopped while booting; console:\n{tail}",
                           hint=f"full console log: {spec.console_log}")

    def _stage_done(self, spec: domain_xml.GuestSpec, stage: str) -> bool:
        if stage == "kernel up":
            # The banner (with loglevel=6), or our init's first line if it was missed.
            return _file_contains(spec.console_log, "Linux version") or _file_contains(
                spec.console_log, "ebb-lab: init started")
        if stage == "init":
            return _file_contains(spec.console_log, "ebb-lab: init started")
        shell = GuestShell(spec.name, spec.share_dir)
        status = shell.status()
        if stage == "runner":
            return status is not None
        if stage == "agent running":
            return bool(status and status.get("agent_running"))
        if stage == "agent connected":
            return probe_agent(spec.channel_socket, timeout_s=5.0) is not None
        return True

    # -- using guests ---------------------------------------------------------------
    def shell(self, name: str) -> GuestShell:
        """Run commands in guest ``name``."""
        return GuestShell(name, self.guest_dir(name) / "share")

    def status(self, names: Optional[List[str]] = None) -> List[GuestInfo]:
        """Every lab guest with the prefix (or just ``names``) and its state."""
        libvirt = _libvirt()
        result = []
        for dom in self.domains():
            name = dom.name()
            if names is not None and name not in names:
                continue
            state, _reason = dom.state()
            gdir = self.guest_dir(name)
            info = GuestInfo(
                name=name, state=_STATE_NAMES.get(state, str(state)),
                memory_mib=dom.maxMemory() // 1024, guest_dir=gdir,
                channel_socket=gdir / "agent.sock", share_dir=gdir / "share",
                console_log=gdir / "console.log",
            )
            with contextlib.suppress(libvirt.libvirtError, ET.ParseError):
                root = ET.fromstring(dom.XMLDesc(0))
                info.domain_type = root.get("type", "?")
                balloon = root.find("devices/memballoon")
                info.free_page_reporting = (
                    balloon is not None and balloon.get("freePageReporting") == "on")
            if dom.isActive():
                with contextlib.suppress(libvirt.libvirtError):
                    info.balloon_actual_kib = int(dom.memoryStats().get("actual", 0)) or None
                guest_status = self.shell(name).status()
                if guest_status:
                    # The guest writes status every second: older than 10 s means it's stuck.
                    age = time.time() - _as_float(guest_status.get("time"))
                    info.agent_running = bool(guest_status.get("agent_running"))
                    info.uptime_s = _as_float(guest_status.get("uptime_s"))
                    info.extra["status_age_s"] = age
            result.append(info)
        return result

    def down(self, prefix: Optional[str] = None) -> List[str]:
        """Remove every lab guest with the prefix (domain and files); return their names."""
        removed = []
        for dom in self.domains(prefix):
            name = dom.name()
            self._remove_domain(dom)
            shutil.rmtree(self.guest_dir(name), ignore_errors=True)
            removed.append(name)
        return removed


def probe_agent(sock_path: Path, timeout_s: float = 5.0) -> Optional[str]:
    """Connect to a guest's channel socket and wait for the agent's first message.

    Returns the message type (``hello``, ``report``, ...) or None when nothing
    valid arrived (no socket, someone else connected, agent silent).
    """
    from ebb.protocol.errors import ProtocolError
    from ebb.protocol.stream import MessageReader

    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError:
        return None
    reader = MessageReader()
    deadline = time.monotonic() + timeout_s
    try:
        sock.settimeout(1.0)
        sock.connect(str(sock_path))
        while time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
            except socket.timeout:
                continue
            if not data:
                return None
            for item in reader.feed(data):
                if not isinstance(item, ProtocolError):
                    return str(getattr(item, "TYPE", None) or type(item).__name__.lower())
    except OSError:
        return None
    finally:
        sock.close()
    return None


def _file_contains(path: Path, text: str) -> bool:
    try:
        with open(path, "rb") as handle:
            return text.encode() in handle.read()
    except OSError:
        return False


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no console log)"


def _natural_key(name: str) -> tuple[str, int]:
    head, _, tail = name.rpartition("-")
    return (head, int(tail)) if tail.isdigit() else (name, 0)
