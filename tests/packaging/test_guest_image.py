"""The guest package in a real VM image: installed, booted, reporting, purged.

Builds the ebb-guest .deb, makes a minimal Debian 12 image with debootstrap,
installs the package there with dpkg (its dependencies come from Debian's
archive through debootstrap), boots the image under plain QEMU (TCG) with the
host's kernel and Debian's initrd, systemd as init and the virtio-serial channel
``org.ebb.agent.0`` on a unix socket, and checks on the host end of that socket
that the agent's hello and reports arrive: udev and systemd must start the agent
by themselves. Then the port is unplugged and the agent's service must stop.
Finally the package is purged in the image's tree and no file may be left
behind.

The debootstrap tree is cached in /var/cache/ebb-test/ (keyed by the package
list), so a second run skips the 1-3 minute download; a fresh machine builds it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

import pytest
from pkgtools import require_root, require_tools, run

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(1800)]

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
#: What the image has besides minbase: an init, udev, and the agent's
#: dependencies (the .deb's Depends, so that dpkg -i resolves them offline).
INCLUDES = (
    "kmod",
    "python3",
    "python3-msgpack",
    "python3-psutil",
    "python3-serial",
    "systemd-sysv",
    "udev",
)
CACHE_DIR = Path("/var/cache/ebb-test")
PORT_NAME = "org.ebb.agent.0"
PACKAGES = ("python3-ebb-protocol", "ebb-guest")

DEBOOTSTRAP_TIMEOUT_S = 900
#: From QEMU start to the first hello. Measured: 20-40 s under TCG on 2 cores;
#: the margin covers a loaded machine.
HELLO_TIMEOUT_S = 300
REPORTS_WANTED = 3
REPORTS_TIMEOUT_S = 60
UNPLUG_TIMEOUT_S = 60

#: Paths (relative to the image root) whose contents change with any dpkg run,
#: whatever the package: dpkg's database and logs, debconf's backups.
VOLATILE_PREFIXES = ("var/lib/dpkg/", "var/log/", "var/cache/debconf/")
#: Account databases: compared by content, since purge must take the group away.
ACCOUNT_FILES = ("etc/passwd", "etc/group", "etc/shadow", "etc/gshadow")


# --- the image -------------------------------------------------------------------


def _cached_rootfs() -> Path:
    """The debootstrap tree for INCLUDES, made on first use."""
    key = hashlib.sha256(
        f"{SUITE} minbase {','.join(sorted(INCLUDES))}".encode()
    ).hexdigest()[:12]
    tree = CACHE_DIR / f"rootfs-{SUITE}-{key}"
    done = CACHE_DIR / f"rootfs-{SUITE}-{key}.done"
    if done.exists() and tree.is_dir():
        return tree
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    partial = CACHE_DIR / f"rootfs-{SUITE}-{key}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(tree, ignore_errors=True)
    run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(INCLUDES)}",
            SUITE,
            str(partial),
            MIRROR,
        ],
        timeout_s=DEBOOTSTRAP_TIMEOUT_S,
    )
    partial.rename(tree)
    done.touch()
    return tree


def _host_kernel() -> Tuple[str, Path, Path]:
    """(version, vmlinuz, initrd) of the newest Debian kernel package installed."""
    candidates = []
    for vmlinuz in Path("/boot").glob("vmlinuz-*"):
        version = vmlinuz.name[len("vmlinuz-") :]
        initrd = Path("/boot") / f"initrd.img-{version}"
        if initrd.exists() and Path("/lib/modules", version).is_dir():
            numbers = tuple(int(n) for n in re.findall(r"\d+", version))
            candidates.append((numbers, version, vmlinuz, initrd))
    if not candidates:
        pytest.fail(
            "no /boot/vmlinuz-V with /boot/initrd.img-V and /lib/modules/V: "
            "run dev/bootstrap.sh (installs linux-image-amd64)"
        )
    _, version, vmlinuz, initrd = max(candidates)
    return version, vmlinuz, initrd


def _file_list(root: Path) -> Set[str]:
    """Every path under ``root`` (files, directories, links), relative to it."""
    paths: Set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for name in dirnames + filenames:
            path = name if rel == "." else f"{rel}/{name}"
            if not path.startswith(VOLATILE_PREFIXES):
                paths.add(path)
    return paths


def _accounts(root: Path) -> Dict[str, bytes]:
    return {name: (root / name).read_bytes() for name in ACCOUNT_FILES}


def _chroot(root: Path, *cmd: str, timeout_s: float = 300) -> str:
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "LC_ALL": "C",
        "DEBIAN_FRONTEND": "noninteractive",
    }
    return run(["chroot", str(root), *cmd], timeout_s=timeout_s, env=env).stdout


# --- QEMU ------------------------------------------------------------------------


@contextlib.contextmanager
def _qemu(workdir: Path, image: Path, vmlinuz: Path, initrd: Path) -> Iterator[Vm]:
    """A booting VM; killed (and its files removed with workdir) on exit."""
    vm = Vm(workdir)
    cmd = [
        "qemu-system-x86_64",
        "-machine", "pc,accel=tcg",
        "-cpu", "max",
        "-m", "512",
        "-smp", "1",
        "-display", "none",
        "-monitor", "none",
        "-nic", "none",
        "-no-reboot",
        "-serial", f"file:{vm.console}",
        "-qmp", f"unix:{vm.qmp_path},server=on,wait=off",
        "-kernel", str(vmlinuz),
        "-initrd", str(initrd),
        "-append",
        "root=/dev/vda rw console=ttyS0 panic=-1 systemd.show_status=1 "
        "systemd.journald.forward_to_console=1 systemd.log_color=0",
        "-drive", f"file={image},format=raw,if=virtio",
        "-chardev", f"socket,path={vm.channel_path},server=on,wait=off,id=c0",
        "-device", "virtio-serial,id=vser0",
        "-device", f"virtserialport,chardev=c0,name={PORT_NAME},id=port0",
    ]  # fmt: skip
    vm.proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        yield vm
    finally:
        vm.kill()


class Vm:
    """The host's view of the test VM: its channel, QMP socket and console log."""

    def __init__(self, workdir: Path) -> None:
        self.channel_path = workdir / "agent.sock"
        self.qmp_path = workdir / "qmp.sock"
        self.console = workdir / "console.log"
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def kill(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def check_running(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            out = self.proc.stdout.read().decode(errors="replace") if self.proc.stdout else ""
            raise AssertionError(
                f"qemu exited with {self.proc.returncode}: {out}\n{self.console_tail()}"
            )

    def console_text(self) -> str:
        try:
            return self.console.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def console_tail(self, lines: int = 60) -> str:
        tail = "\n".join(self.console_text().splitlines()[-lines:])
        return f"--- last {lines} lines of the guest console ---\n{tail}"

    def connect(self, path: Path, deadline: float) -> socket.socket:
        """Connect to a unix socket QEMU creates, once it is there."""
        while True:
            self.check_running()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(path))
                return sock
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
            if time.monotonic() > deadline:
                raise AssertionError(f"qemu never created {path}\n{self.console_tail()}")
            time.sleep(0.2)

    def qmp(self, command: str, **arguments: object) -> Dict[str, object]:
        """One QMP command on a fresh connection; its answer."""
        sock = self.connect(self.qmp_path, time.monotonic() + 30)
        with sock, sock.makefile("rw") as stream:
            json.loads(stream.readline())  # greeting
            for cmd, args in (("qmp_capabilities", {}), (command, arguments)):
                stream.write(json.dumps({"execute": cmd, "arguments": args}) + "\n")
                stream.flush()
                while True:
                    answer = json.loads(stream.readline())
                    if "return" in answer or "error" in answer:
                        break
                if "error" in answer:
                    raise AssertionError(f"QMP {cmd}: {answer['error']}")
        return answer

    def wait_console(self, pattern: str, deadline: float) -> str:
        """Wait until the console log has a line matching ``pattern``; return it."""
        regex = re.compile(pattern)
        while True:
            for line in self.console_text().splitlines():
                if regex.search(line):
                    return line
            self.check_running()
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no console line matching {pattern!r}\n{self.console_tail()}"
                )
            time.sleep(0.5)


def _read_messages(
    sock: socket.socket, reader: object, wanted: type, count: int, deadline: float, vm: Vm
) -> List[object]:
    """Messages from the channel until ``count`` of type ``wanted`` arrived."""
    got: List[object] = []
    while sum(isinstance(m, wanted) for m in got) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            kinds = [type(m).__name__ for m in got]
            raise AssertionError(
                f"waited for {count} {wanted.__name__}; got {kinds}\n{vm.console_tail()}"
            )
        vm.check_running()
        sock.settimeout(min(remaining, 1.0))
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        if not data:
            raise AssertionError(f"QEMU closed the channel\n{vm.console_tail()}")
        got.extend(reader.feed(data))  # type: ignore[attr-defined]
    return got


# --- the test --------------------------------------------------------------------


def test_guest_package_boots_reports_and_purges_clean(debs: Dict[str, Path]) -> None:
    require_root()
    require_tools("debootstrap", "mkfs.ext4", "qemu-system-x86_64")
    from ebb.protocol import MessageReader, ProtocolError
    from ebb.protocol.messages import Hello, Report, Welcome, choose_version, encode_message

    started = time.monotonic()
    version, vmlinuz, initrd = _host_kernel()
    cached = _cached_rootfs()
    workdir = Path(tempfile.mkdtemp(prefix="ebb-image-test.", dir="/var/tmp"))
    try:
        root = workdir / "rootfs"
        run(["cp", "-a", str(cached), str(root)], timeout_s=300)
        # The guest kernel is the host's kernel package: udev needs its modules
        # (virtio_console) in the image, or the port never appears.
        modules = root / "lib" / "modules"
        modules.mkdir(parents=True, exist_ok=True)
        run(["cp", "-a", f"/lib/modules/{version}", str(modules)], timeout_s=300)
        (root / "etc" / "hostname").write_text("ebb-image-test\n")
        (root / "etc" / "fstab").write_text("/dev/vda / ext4 rw,errors=remount-ro 0 1\n")

        before_files = _file_list(root)
        before_accounts = _accounts(root)

        # Install as an image builder would: dpkg in a chroot, nothing running.
        for name in PACKAGES:
            shutil.copy(debs[name], root / "tmp")
        _chroot(root, "dpkg", "-i", *(f"/tmp/{debs[n].name}" for n in PACKAGES))
        for name in PACKAGES:
            (root / "tmp" / debs[name].name).unlink()
        installed = _file_list(root) - before_files
        assert "usr/lib/udev/rules.d/60-ebb-agent.rules" in installed or (
            "lib/udev/rules.d/60-ebb-agent.rules" in installed
        ), sorted(installed)
        assert b"\nebb-agent-port:" in b"\n" + (root / "etc/group").read_bytes()

        image = workdir / "image.raw"
        run(["mkfs.ext4", "-q", "-F", "-L", "ebb-test", "-d", str(root), str(image), "2G"],
            timeout_s=300)  # fmt: skip
        prepared_s = time.monotonic() - started

        with _qemu(workdir, image, vmlinuz, initrd) as vm:
            boot = time.monotonic()
            channel = vm.connect(vm.channel_path, boot + 30)
            with channel:
                reader = MessageReader()
                got = _read_messages(channel, reader, Hello, 1, boot + HELLO_TIMEOUT_S, vm)
                hello_s = time.monotonic() - boot
                hello = next(m for m in got if isinstance(m, Hello))
                assert not [m for m in got if isinstance(m, ProtocolError)], got
                chosen = choose_version(hello.protocol_versions)
                assert chosen is not None, hello
                channel.sendall(
                    encode_message(
                        Welcome(protocol_version=chosen, report_interval_ms=500, capabilities=())
                    )
                )
                got = _read_messages(
                    channel, reader, Report, REPORTS_WANTED,
                    time.monotonic() + REPORTS_TIMEOUT_S, vm,
                )  # fmt: skip
                reports = [m for m in got if isinstance(m, Report)]
                assert reports[-1].mem_total_kib > 300 * 1024, reports[-1]
                assert 0 < reports[-1].mem_available_kib <= reports[-1].mem_total_kib
                assert reader.errors == 0
            # It was the unit that udev asked for, not some other way in.
            vm.wait_console(r"Started ebb-agent\.service", time.monotonic() + 30)

            # Unplugging the port must stop the agent (BindsTo the device unit).
            vm.qmp("device_del", id="port0")
            vm.wait_console(
                r"ebb-agent\.service: Deactivated successfully|Stopped ebb-agent\.service",
                time.monotonic() + UNPLUG_TIMEOUT_S,
            )
            assert "ebb-agent.service: Failed" not in vm.console_text(), vm.console_tail()

        # Purge in the image's tree: nothing the package made may stay.
        _chroot(root, "dpkg", "--purge", *reversed(PACKAGES))
        after_files = _file_list(root)
        assert sorted(after_files - before_files) == [], "purge left files behind"
        assert sorted(before_files - after_files) == [], "install or purge removed files"
        assert _accounts(root) == before_accounts, "purge left account entries behind"

        print(
            f"\nimage prepared in {prepared_s:.0f} s, hello {hello_s:.0f} s after QEMU "
            f"started, {len(reports)} reports, total {time.monotonic() - started:.0f} s"
        )
    finally:
        if os.environ.get("EBB_KEEP_TEST_FILES"):
            print(f"\nkept {workdir} (EBB_KEEP_TEST_FILES is set)")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
