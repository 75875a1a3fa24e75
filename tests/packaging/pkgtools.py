"""Helpers shared by the packaging tests: paths, running commands, required tools."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Sequence

import pytest

REPO = Path(__file__).resolve().parents[2]
DEB_BUILD = REPO / "packaging" / "deb" / "build.sh"
RPM_BUILD = REPO / "packaging" / "rpm" / "build.sh"

#: Debian packages these tests use, as dev/bootstrap.sh installs them.
DEB_TOOLS = {
    "dpkg-buildpackage": "dpkg-dev",
    "dh": "debhelper",
    "pybuild": "dh-python",
    "lintian": "lintian",
    "rpmbuild": "rpm",
    "rpmlint": "rpmlint",
    "debootstrap": "debootstrap",
    "mkfs.ext4": "e2fsprogs",
    "qemu-system-x86_64": "qemu-system-x86",
}


def run(
    cmd: Sequence[str], timeout_s: float, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``; on failure raise with its output, so the test report shows why."""
    proc = subprocess.run(
        list(cmd),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout_s,
        **kwargs,  # type: ignore[arg-type]
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited with {proc.returncode}:\n{proc.stdout[-6000:]}"
        )
    return proc


def require_tools(*tools: str) -> None:
    """Fail with the install command when a tool is missing."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pkgs = sorted({DEB_TOOLS.get(t, t) for t in missing})
        pytest.fail(
            f"missing {', '.join(missing)}: run dev/bootstrap.sh as root "
            f"(or apt-get install {' '.join(pkgs)})"
        )


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("packaging tests need root (debootstrap, chroot, dpkg in an image)")
