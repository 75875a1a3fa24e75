"""The Python a lab guest runs: the project's own environment, seen through 9p.

The guest reads the host's root file system through QEMU, and QEMU runs as the
unprivileged ``libvirt-qemu`` user: a file that user cannot read does not exist
for the guest. The project's venv is usually readable, but its interpreter may
not be (a pyenv Python under ``/root``, mode 0700). Then the lab builds a small
stand-in environment in its state directory: a ``pyvenv.cfg`` whose ``home`` is
the system's Python of the same version and whose ``site-packages`` is the
venv's, so the guest runs the same packages and the same ebb checkout.

Wrapper scripts for ebb's commands (``ebb-agent``, ``ebbctl``, ...) and for the
lab's workload (``memknobs``) go in ``STATE/bin``, which the guest puts first on
its ``PATH``.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

from ebb.lab.errors import LabError

LOG = logging.getLogger(__name__)

QEMU_CONF = Path("/etc/libvirt/qemu.conf")
DEFAULT_QEMU_USER = "libvirt-qemu"
#: Commands of the lab that are modules rather than console scripts.
LAB_COMMANDS: Dict[str, str] = {"memknobs": "ebb.lab.memknobs"}
_CHECK_IMPORTS = "import ebb.guest, ebb.protocol, msgpack, psutil"


@dataclass(frozen=True)
class GuestPython:
    """How the guest starts Python: ``python`` (a path in the host's tree) and ``bin_dir``.

    ``qemu_as_root``: QEMU's own user cannot read the project (a checkout under
    ``/root``, say), so the lab's QEMU processes run as root instead.
    """

    python: Path
    bin_dir: Path
    qemu_as_root: bool = False


def qemu_user(conf: Path = QEMU_CONF) -> str:
    """The user QEMU runs as under ``qemu:///system`` (``user =`` in qemu.conf)."""
    try:
        text = conf.read_text()
    except OSError:
        return DEFAULT_QEMU_USER
    match = re.search(r'^\s*user\s*=\s*"([^"]+)"', text, re.MULTILINE)
    if match and not match.group(1).startswith("+"):
        return match.group(1)
    return DEFAULT_QEMU_USER


def runs_as(user: str, python: Path) -> Optional[str]:
    """None if ``user`` can start ``python`` and import ebb; else the error text."""
    try:
        result = subprocess.run(
            ["runuser", "-u", user, "--", str(python), "-c", _CHECK_IMPORTS],
            capture_output=True, text=True, timeout=60, cwd="/",
        )
    except FileNotFoundError:
        return "runuser not found"
    except subprocess.TimeoutExpired:
        return "timed out"
    if result.returncode != 0:
        return (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]
    return None


def _venv_python() -> Path:
    """The interpreter of the environment ebb runs from (the venv, not its base)."""
    return Path(sys.prefix) / "bin" / "python3"


def _shim(state_dir: Path) -> Path:
    """Build ``STATE/python``: a venv made of the system Python and our site-packages."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    system_python = Path(f"/usr/bin/python{version}")
    if not system_python.exists():
        raise LabError(
            f"the guest cannot run {_venv_python()} (QEMU's user cannot read it) and there "
            f"is no {system_python} to stand in for it",
            hint="create the venv with the system Python: "
            "rm -rf .venv && EBB_PYTHON=/usr/bin/python3 ./dev/bootstrap.sh",
        )
    site_packages = Path(sysconfig.get_paths()["purelib"])
    root = state_dir / "python"
    (root / "bin").mkdir(parents=True, exist_ok=True)
    (root / "lib" / f"python{version}").mkdir(parents=True, exist_ok=True)
    (root / "pyvenv.cfg").write_text(
        f"home = {system_python.parent}\ninclude-system-site-packages = false\n"
        f"version = {version}\n"
    )
    for name, target in (
        (root / "bin" / "python3", system_python),
        (root / "lib" / f"python{version}" / "site-packages", site_packages),
    ):
        if name.is_symlink() or name.exists():
            name.unlink()
        name.symlink_to(target)
    return root / "bin" / "python3"


def _console_scripts() -> Dict[str, str]:
    """``name -> "module:function"`` of ebb's console scripts."""
    from importlib.metadata import entry_points

    scripts: Dict[str, str] = {}
    for entry in entry_points(group="console_scripts"):
        if entry.value.startswith("ebb."):
            scripts[entry.name] = entry.value
    return scripts


def _write_wrapper(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.chmod(0o755)
    os.replace(tmp, path)


def prepare(state_dir: Path, user: Optional[str] = None) -> GuestPython:
    """Make sure a guest can run ebb; return the interpreter and wrapper folder to use."""
    user = user or qemu_user()
    python = _venv_python()
    as_root = os.environ.get("EBB_LAB_QEMU_AS_ROOT") == "1"
    problem = None if as_root else runs_as(user, python)
    if problem is not None:
        LOG.info("guest cannot use %s (%s); building a stand-in in %s", python, problem,
                 state_dir / "python")
        shim = _shim(state_dir)
        problem = runs_as(user, shim)
        if problem is None:
            python = shim
        else:
            # The project itself is out of QEMU's reach (e.g. under /root): the lab's
            # QEMU runs as root rather than asking the user to change permissions.
            LOG.warning("user %s (QEMU) cannot run ebb (%s); the lab's QEMU runs as root",
                        user, problem)
            as_root = True
    bin_dir = state_dir / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    py = shlex.quote(str(python))
    for name, value in _console_scripts().items():
        module, _, func = value.partition(":")
        code = (f"import sys; sys.argv[0] = {name!r}; from {module} import {func}; "
                f"sys.exit({func}())")
        _write_wrapper(bin_dir / name, f"#!/bin/sh\nexec {py} -c {shlex.quote(code)} \"$@\"\n")
    for name, module in LAB_COMMANDS.items():
        _write_wrapper(bin_dir / name, f"#!/bin/sh\nexec {py} -m {module} \"$@\"\n")
    _write_wrapper(bin_dir / "python3", f"#!/bin/sh\nexec {py} \"$@\"\n")
    return GuestPython(python=python, bin_dir=bin_dir, qemu_as_root=as_root)
