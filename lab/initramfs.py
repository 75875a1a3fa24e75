"""The lab guest's boot path: the installed kernel and an initramfs built here.

The guest boots the kernel Debian's ``linux-image-amd64`` put in ``/boot`` (not
the kernel this machine runs, which may be another one with no modules on
disk), with an initramfs holding busybox, the virtio modules that kernel needs,
and an ``/init`` script. The script loads the modules, mounts the host's root
over 9p read-only, binds ``/proc``, ``/sys`` and ``/dev``, puts tmpfs on
``/tmp`` and ``/run``, mounts the guest's read-write share and chroots into the
host's root to start :mod:`ebb.lab.guestinit` with the project's Python.

The archive is written directly (cpio "newc", gzip) so building needs neither
root nor ``cpio``: device nodes are entries in the archive, not files on disk.
"""

from __future__ import annotations

import gzip
import io
import logging
import lzma
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from ebb.lab.errors import LabError

LOG = logging.getLogger(__name__)

#: What the guest needs: PCI transport, balloon, the serial channel, 9p.
#: Dependencies (from ``modinfo``) are added before each; the result for
#: Debian 12's 6.1 kernel is the order shared/LAB.md gives.
ROOT_MODULES = ("virtio_pci", "virtio_balloon", "virtio_console", "9pnet_virtio", "9p")
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
#: Kernel parameter prefix read by the init script and the guest runner.
INIT_SCRIPT = r"""#!/bin/busybox sh
# ebb lab guest init: load virtio modules, mount the host's root over 9p, chroot.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
say() { echo "ebb-lab: $*" > /dev/console; }
fail() { say "FAILED: $*"; sleep 2; poweroff -f; }
say "init started"
for m in $(cat /modules.order); do
    insmod "/lib/modules/$m" || say "insmod $m failed"
done
PY=""
KEEP=""
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        ebb.python=*) PY="${arg#ebb.python=}" ;;
        ebb.name=*) hostname "${arg#ebb.name=}" ;;
        ebb.keep=/tmp/*) KEEP="${arg#ebb.keep=}" ;;
    esac
done
[ -n "$PY" ] || fail "no ebb.python= on the kernel command line"
mkdir -p /host
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot /host \
    || fail "cannot mount the host root (9p tag hostroot)"
# The guest gets its own /tmp; a checkout under the host's /tmp (ebb.keep) is
# bound back through so the guest still sees the project it runs.
mkdir -p /hosttmp
mount --bind /host/tmp /hosttmp
mount -t tmpfs -o mode=1777 tmpfs /host/tmp || fail "tmpfs /tmp"
if [ -n "$KEEP" ]; then
    mkdir -p "/host$KEEP"
    mount --bind "/hosttmp${KEEP#/tmp}" "/host$KEEP" || fail "cannot bind $KEEP"
fi
mount -t tmpfs -o mode=755 tmpfs /host/run || fail "tmpfs /run"
mount --bind /proc /host/proc
mount --bind /sys /host/sys
mount --bind /dev /host/dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /host/dev/pts
mount -t tmpfs -o mode=1777 tmpfs /host/dev/shm
mkdir -p /host/run/ebb-lab
mount -t 9p -o trans=virtio,version=9p2000.L,rw,msize=262144 labshare /host/run/ebb-lab \
    || fail "cannot mount the lab share (9p tag labshare)"
# What udev would do: name the virtio-serial ports.
mkdir -p /dev/virtio-ports
for port in /sys/class/virtio-ports/*; do
    [ -e "$port/name" ] || continue
    name=$(cat "$port/name")
    [ -n "$name" ] && ln -sf "../${port##*/}" "/dev/virtio-ports/$name"
done
[ -x "/host$PY" ] || [ -L "/host$PY" ] || fail "no Python at $PY in the host root"
say "starting the runner with $PY"
exec chroot /host "$PY" -m ebb.lab.guestinit
"""


@dataclass(frozen=True)
class Kernel:
    """An installed kernel: its image and the version its modules are under."""

    version: str
    image: Path
    modules_dir: Path


def _version_key(version: str) -> Tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


def find_kernel(boot_dir: Path = Path("/boot"), modules_root: Path = Path("/lib/modules"),
                version: Optional[str] = None) -> Kernel:
    """The newest kernel in ``boot_dir`` that has modules, or the one asked for.

    Raises :class:`LabError` naming the package to install when there is none.
    """
    candidates: List[Kernel] = []
    for image in boot_dir.glob("vmlinuz-*"):
        ver = image.name[len("vmlinuz-"):]
        modules = modules_root / ver
        if (modules / "modules.dep").exists() or (modules / "kernel").is_dir():
            candidates.append(Kernel(ver, image, modules))
    if version is not None:
        for kernel in candidates:
            if kernel.version == version:
                return kernel
        raise LabError(
            f"kernel {version} not found with its modules in {boot_dir} and {modules_root}",
            hint="install it (apt-get install linux-image-amd64) or omit --kernel-version",
        )
    if not candidates:
        raise LabError(
            f"no kernel with modules in {boot_dir} "
            f"(looked for vmlinuz-VERSION with {modules_root}/VERSION)",
            hint="apt-get install linux-image-amd64 (the lab boots that kernel in its guests)",
        )
    return max(candidates, key=lambda k: _version_key(k.version))


def module_path(kernel: Kernel, name: str) -> Path:
    """File of module ``name`` for ``kernel`` (``modinfo -k VERSION -F filename``)."""
    try:
        out = subprocess.run(
            ["modinfo", "-k", kernel.version, "-F", "filename", name],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
    except FileNotFoundError as err:
        raise LabError("modinfo not found", hint="apt-get install kmod") from err
    except subprocess.CalledProcessError as err:
        raise LabError(
            f"module {name} not found for kernel {kernel.version}: {err.stderr.strip()}",
            hint="reinstall the kernel's package: "
            f"apt-get install --reinstall linux-image-{kernel.version}",
        ) from err
    if not out or out == "(builtin)" or out.startswith("(builtin)"):
        return Path()
    return Path(out.splitlines()[0])


def module_depends(kernel: Kernel, name: str) -> List[str]:
    out = subprocess.run(
        ["modinfo", "-k", kernel.version, "-F", "depends", name],
        check=False, capture_output=True, text=True,
    ).stdout.strip()
    return [dep for dep in out.replace("\n", ",").split(",") if dep]


def resolve_modules(kernel: Kernel, roots: Iterable[str] = ROOT_MODULES) -> List[Tuple[str, Path]]:
    """Modules to load, dependencies first; built-in ones are left out."""
    order: List[Tuple[str, Path]] = []
    seen: Dict[str, bool] = {}

    def visit(name: str) -> None:
        if name in seen:
            return
        seen[name] = True
        for dep in module_depends(kernel, name):
            visit(dep)
        path = module_path(kernel, name)
        if path != Path():
            order.append((name, path))

    for root in roots:
        visit(root)
    return order


def _read_module(path: Path) -> bytes:
    """A module's bytes, uncompressed (busybox insmod wants a plain .ko)."""
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix == ".gz":
        return gzip.decompress(data)
    if path.suffix == ".zst":
        if shutil.which("zstd") is None:
            raise LabError(f"module {path} is zstd-compressed", hint="apt-get install zstd")
        return subprocess.run(["zstd", "-dc", str(path)], check=True,
                              capture_output=True).stdout
    return data


class CpioWriter:
    """A cpio archive in the "newc" format the kernel unpacks as initramfs."""

    def __init__(self) -> None:
        self._out = io.BytesIO()
        self._ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: Tuple[int, int] = (0, 0),
               nlink: int = 1) -> None:
        encoded = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1],
                  len(encoded), 0)
        self._ino += 1
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._out.write(header + encoded)
        self._pad()
        self._out.write(data)
        self._pad()

    def _pad(self) -> None:
        self._out.write(b"\0" * (-self._out.tell() % 4))

    def directory(self, name: str) -> None:
        self._entry(name, 0o040755, nlink=2)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, 0o100000 | perm, data)

    def chardev(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._entry(name, 0o020000 | perm, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self._out.getvalue()


def find_busybox() -> Path:
    """The host's busybox; it must be static, as the initramfs has no libraries."""
    for candidate in BUSYBOX_CANDIDATES:
        path = Path(candidate)
        if path.exists():
            if shutil.which("file") and not _is_static(path):
                raise LabError(f"{path} is not statically linked",
                               hint="apt-get install busybox-static")
            return path
    raise LabError("busybox not found", hint="apt-get install busybox-static")


def _is_static(path: Path) -> bool:
    out = subprocess.run(["file", "-L", str(path)], capture_output=True, text=True,
                         check=False).stdout
    return "statically linked" in out or "static-pie" in out or not out


def build_initramfs(kernel: Kernel, busybox: Optional[Path] = None,
                    modules: Optional[Sequence[Tuple[str, Path]]] = None) -> bytes:
    """The gzip-compressed initramfs for ``kernel``, as bytes."""
    busybox = busybox or find_busybox()
    modules = list(modules) if modules is not None else resolve_modules(kernel)
    cpio = CpioWriter()
    for folder in ("bin", "dev", "proc", "sys", "host", "lib", "lib/modules"):
        cpio.directory(folder)
    cpio.chardev("dev/console", 5, 1)
    cpio.chardev("dev/null", 1, 3, 0o666)
    cpio.file("bin/busybox", busybox.read_bytes(), 0o755)
    cpio.file("init", INIT_SCRIPT.encode(), 0o755)
    names = []
    for name, path in modules:
        filename = f"{name}.ko"
        cpio.file(f"lib/modules/{filename}", _read_module(path))
        names.append(filename)
    cpio.file("modules.order", ("\n".join(names) + "\n").encode())
    return gzip.compress(cpio.finish(), compresslevel=6)
