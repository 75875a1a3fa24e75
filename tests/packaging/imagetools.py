"""Real Debian images for the packaging tests: debootstrap, dpkg, QEMU.

An image is a debootstrap tree (cached in /var/cache/ebb-test/, keyed by its
package list, so reruns skip the download; a fresh machine builds it) copied into
a scratch directory, given the host kernel package's modules, turned into a raw
ext4 disk with ``mkfs.ext4 -d`` and booted under plain QEMU (TCG) with the host's
kernel and Debian's initrd, systemd as init, the serial console in a file and a
QMP socket. Everything lives in one scratch directory that is removed at the end
(kept when EBB_KEEP_TEST_FILES is set, for debugging).
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
from typing import Dict, Iterator, List, Optional, Sequence, Set, Tuple

import pytest
from pkgtools import run

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
CACHE_DIR = Path("/var/cache/ebb-test")
#: Every image has an init, udev and Python; the tests add their packages' deps.
BASE_INCLUDES = ("kmod", "python3", "systemd-sysv", "udev")
DEBOOTSTRAP_TIMEOUT_S = 900

#: Paths (relative to the image root) whose contents change with any dpkg run,
#: whatever the package: dpkg's database and logs, debconf's backups.
VOLATILE_PREFIXES = ("var/lib/dpkg/", "var/log/", "var/cache/debconf/")
#: Account databases: compared by content, since purge must take groups away.
ACCOUNT_FILES = ("etc/passwd", "etc/group", "etc/shadow", "etc/gshadow")


def cached_rootfs(includes: Sequence[str]) -> Path:
    """The debootstrap tree (minbase plus ``includes``), made on first use."""
    packages = sorted(set(BASE_INCLUDES) | set(includes))
    key = hashlib.sha256(f"{SUITE} minbase {','.join(packages)}".encode()).hexdigest()[:12]
    tree = CACHE_DIR / f"rootfs-{SUITE}-{key}"
    done = CACHE_DIR / f"rootfs-{SUITE}-{key}.done"
    if done.exists() and tree.is_dir():
        return tree
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    partial = CACHE_DIR / f"rootfs-{SUITE}-{key}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(tree, ignore_errors=True)
    run(
        ["debootstrap", "--variant=minbase", f"--include={','.join(packages)}",
         SUITE, str(partial), MIRROR],
        timeout_s=DEBOOTSTRAP_TIMEOUT_S,
    )  # fmt: skip
    partial.rename(tree)
    done.touch()
    return tree


def host_kernel() -> Tuple[str, Path, Path]:
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


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    """A directory under /var/tmp for one image, removed afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix="ebb-image-test.", dir="/var/tmp"))
    try:
        yield workdir
    finally:
        if os.environ.get("EBB_KEEP_TEST_FILES"):
            print(f"\nkept {workdir} (EBB_KEEP_TEST_FILES is set)")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def prepare_tree(workdir: Path, includes: Sequence[str], kernel_version: str) -> Path:
    """A private copy of the cached tree, with the kernel's modules, ready to boot."""
    root = workdir / "rootfs"
    run(["cp", "-a", str(cached_rootfs(includes)), str(root)], timeout_s=300)
    # The guest kernel is the host's kernel package: udev needs its modules
    # (virtio_console) in the image, or the port never appears.
    modules = root / "lib" / "modules"
    modules.mkdir(parents=True, exist_ok=True)
    run(["cp", "-a", f"/lib/modules/{kernel_version}", str(modules)], timeout_s=300)
    (root / "etc" / "hostname").write_text("ebb-image-test\n")
    (root / "etc" / "fstab").write_text("/dev/vda / ext4 rw,errors=remount-ro 0 1\n")
    return root


def file_list(root: Path) -> Set[str]:
    """Every path under ``root`` (files, directories, links), relative to it."""
    paths: Set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for name in dirnames + filenames:
            path = name if rel == "." else f"{rel}/{name}"
            if not path.startswith(VOLATILE_PREFIXES):
                paths.add(path)
    return paths


def accounts(root: Path) -> Dict[str, bytes]:
    return {name: (root / name).read_bytes() for name in ACCOUNT_FILES}


def chroot(root: Path, *cmd: str, timeout_s: float = 300) -> str:
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "LC_ALL": "C",
        "DEBIAN_FRONTEND": "noninteractive",
    }
    return run(["chroot", str(root), *cmd], timeout_s=timeout_s, env=env).stdout


def dpkg_install(root: Path, debs: Sequence[Path]) -> None:
    """``dpkg -i`` in the tree, as an image builder does (nothing running)."""
    for deb in debs:
        shutil.copy(deb, root / "tmp")
    try:
        chroot(root, "dpkg", "-i", *(f"/tmp/{deb.name}" for deb in debs))
    finally:
        for deb in debs:
            (root / "tmp" / deb.name).unlink()


def make_image(root: Path, image: Path) -> None:
    run(["mkfs.ext4", "-q", "-F", "-L", "ebb-test", "-d", str(root), str(image), "2G"],
        timeout_s=300)  # fmt: skip


class Vm:
    """The host's view of a test VM: its sockets and console log."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.qmp_path = workdir / "qmp.sock"
        self.console = workdir / "console.log"
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.started = time.monotonic()

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
            answer: Dict[str, object] = {}
            for cmd, args in (("qmp_capabilities", {}), (command, arguments)):
                stream.write(json.dumps({"execute": cmd, "arguments": args}) + "\n")
                stream.flush()
                while "return" not in answer and "error" not in answer:
                    answer = json.loads(stream.readline())
                if "error" in answer:
                    raise AssertionError(f"QMP {cmd}: {answer['error']}")
                if cmd == "qmp_capabilities":
                    answer = {}
        return answer

    def wait_console(self, pattern: str, deadline: float) -> re.Match[str]:
        """Wait until a console line matches ``pattern``; the first match."""
        regex = re.compile(pattern)
        while True:
            for line in self.console_text().splitlines():
                match = regex.search(line)
                if match:
                    return match
            self.check_running()
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no console line matching {pattern!r}\n{self.console_tail()}"
                )
            time.sleep(0.5)


@contextlib.contextmanager
def boot(
    workdir: Path, image: Path, vmlinuz: Path, initrd: Path, extra_args: Sequence[str] = ()
) -> Iterator[Vm]:
    """A VM booting ``image``; killed on exit, whatever happened."""
    vm = Vm(workdir)
    cmd: List[str] = [
        "qemu-system-x86_64",
        "-machine", "pc,accel=tcg",
        "-cpu", "max",
        "-m", "768",
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
        *extra_args,
    ]  # fmt: skip
    vm.proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    vm.started = time.monotonic()
    try:
        yield vm
    finally:
        vm.kill()
