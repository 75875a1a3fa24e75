"""Fixtures for the packaging tests: build the packages once per session.

These tests build real .deb and .rpm files, so they need root (debootstrap,
chroot) and the Debian packaging tools that ``dev/bootstrap.sh`` installs. They
fail, with the command to run, when those are missing: a skip would hide that
the packages were never checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import pytest
from pkgtools import DEB_BUILD, RPM_BUILD, require_tools, run


@pytest.fixture(scope="session")
def debs(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    """The .debs built from this tree: {package name: path}."""
    require_tools("dpkg-buildpackage", "dh", "pybuild")
    out = tmp_path_factory.mktemp("deb")
    run([str(DEB_BUILD), str(out)], timeout_s=600)
    found = {p.name.split("_", 1)[0]: p for p in out.glob("*.deb")}
    assert set(found) == {"ebb-host", "ebb-guest", "python3-ebb-protocol", "ebb-lab"}, found
    changes = list(out.glob("*.changes"))
    assert len(changes) == 1, changes
    found["changes"] = changes[0]
    return found


@pytest.fixture(scope="session")
def rpms(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    """The .rpms built from this tree: {package name: path}."""
    require_tools("rpmbuild")
    out = tmp_path_factory.mktemp("rpm")
    run([str(RPM_BUILD), str(out)], timeout_s=600)
    found: Dict[str, Path] = {}
    for path in out.glob("*.rpm"):
        name = run(["rpm", "-qp", "--qf", "%{NAME}", str(path)], timeout_s=30).stdout.strip()
        found[name] = path
    assert set(found) == {"ebb-host", "ebb-guest", "python3-ebb-protocol", "ebb-lab"}, found
    return found

