"""What the built packages contain, and that the linters accept them.

The host package is checked by its contents (no VM boots it): the daemon, its
unit, tmpfiles and sysusers entries, the default configuration and policies as
conffiles, and nothing of the guest; the guest package holds the agent, its unit,
udev rule and configuration file (a conffile) and nothing of the host; the lab
(``ebb.lab``, with the simulated agent) is in ebb-lab and nowhere else. Each
unit in a package must be the one copy in packaging/systemd/. The Debian
packages must pass lintian and the RPMs rpmlint without errors.
"""

from __future__ import annotations

import configparser
import importlib.util
import re
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Dict, List, Set

import pytest
from pkgtools import REPO, require_root, require_tools, run

SYSTEMD = REPO / "packaging" / "systemd"
DEBIAN = REPO / "packaging" / "deb" / "debian"
SPEC = REPO / "packaging" / "rpm" / "ebb.spec"

#: Installed path -> the single source copy, per package (Debian paths).
DEB_SYSTEM_FILES = {
    "ebb-host": {
        "lib/systemd/system/ebbd.service": SYSTEMD / "ebbd.service",
        "usr/lib/tmpfiles.d/ebbd.conf": SYSTEMD / "tmpfiles.d" / "ebbd.conf",
        "usr/lib/sysusers.d/ebbd.conf": SYSTEMD / "sysusers.d" / "ebbd.conf",
    },
    "ebb-guest": {
        "lib/systemd/system/ebb-agent.service": SYSTEMD / "ebb-agent.service",
        "lib/udev/rules.d/60-ebb-agent.rules": SYSTEMD / "udev" / "60-ebb-agent.rules",
        "usr/lib/sysusers.d/ebb-agent.conf": SYSTEMD / "sysusers.d" / "ebb-agent.conf",
    },
}
#: The default policy set, installed as /etc/ebb/policy.d/*.policy.
DEFAULT_POLICIES = sorted(
    p.name for p in (REPO / "host" / "policies" / "cooperative").glob("*.policy")
)
PACKAGES = ("ebb-host", "ebb-guest", "python3-ebb-protocol", "ebb-lab")
SITE = "usr/lib/python3/dist-packages/"


def _deb_files(deb: Path) -> List[str]:
    """Paths of the files and links in a .deb, without the leading "./"."""
    with tempfile.TemporaryFile() as tmp:
        subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=tmp, check=True,
                       timeout=60)  # fmt: skip
        tmp.seek(0)
        with tarfile.open(fileobj=tmp) as tar:
            return [m.name[2:] for m in tar.getmembers() if m.isfile() or m.issym()]


def _deb_member(deb: Path, name: str) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        run(["dpkg-deb", "-x", str(deb), tmp], timeout_s=60)
        return (Path(tmp) / name).read_bytes()


def _deb_field(deb: Path, field: str) -> str:
    return run(["dpkg-deb", "-f", str(deb), field], timeout_s=30).stdout.strip()


def _deb_control_file(deb: Path, name: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        run(["dpkg-deb", "-e", str(deb), tmp], timeout_s=30)
        path = Path(tmp) / name
        return path.read_text() if path.exists() else ""


def _python_modules(files: List[str]) -> Set[str]:
    """Dotted names of the .py files under the Python site directory."""
    return {
        f[len(SITE) : -3].replace("/", ".")
        for f in files
        if f.startswith(SITE) and f.endswith(".py")
    }


def _source_modules(folder: str, package: str) -> Set[str]:
    base = REPO / folder
    return {
        package + "." + str(p.relative_to(base).with_suffix("")).replace("/", ".")
        for p in base.rglob("*.py")
    }


# --- without building ------------------------------------------------------------


def test_versions_agree() -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', pyproject, re.M)
    assert version, "no version in pyproject.toml"
    changelog = (DEBIAN / "changelog").read_text().splitlines()[0]
    assert changelog.startswith(f"ebb ({version.group(1)})"), changelog
    spec_version = re.search(r"^Version:\s*(\S+)", SPEC.read_text(), re.M)
    assert spec_version and spec_version.group(1) == version.group(1)


def _render(script: str) -> str:
    """The file ``packaging/SCRIPT.py`` makes from this tree at package build time."""
    spec = importlib.util.spec_from_file_location(script, REPO / "packaging" / f"{script}.py")
    assert spec is not None and spec.loader is not None
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    return str(maker.render())


def _default_config() -> str:
    """The /etc/ebb/ebbd.toml the package build makes from this tree's config."""
    return _render("make_ebbd_toml")


def _agent_config() -> str:
    """The /etc/ebb/ebb-agent.conf the package build makes from this tree's agent."""
    return _render("make_agent_conf")


def test_default_config_shows_every_key_with_the_daemons_default(tmp_path: Path) -> None:
    """Every commented-out line of the shipped ebbd.toml, uncommented, is valid and
    is the daemon's default (policy_dir: the installed one), and none is missing."""
    from ebb.host import config

    text = _default_config()
    active = re.sub(r"^#(\w+ = .+)$", r"\1", text, flags=re.M)
    path = tmp_path / "ebbd.toml"
    path.write_text(active)
    shown = config.load_config(path).to_dict()
    defaults = config.EbbdConfig().to_dict()
    assert set(shown) == set(defaults)
    for section, keys in defaults.items():
        for key, value in keys.items():
            if (section, key) != ("daemon", "policy_dir"):
                assert shown[section][key] == value, (section, key)
    assert shown["daemon"]["policy_dir"] == "/etc/ebb/policy.d"
    assert len(re.findall(r"^#\w+ = ", text, re.M)) == sum(map(len, defaults.values()))


def test_agent_config_names_every_key_and_changes_nothing(tmp_path: Path) -> None:
    """The shipped ebb-agent.conf is read by the agent as empty; each "#key = value"
    line, uncommented, is valid and is the agent's default; each key whose default
    is computed shows a valid example after "# "; and no key is missing."""
    from ebb.guest import cli

    text = _agent_config()
    shipped = tmp_path / "shipped.conf"
    shipped.write_text(text)
    assert cli.read_config(str(shipped)) == {}

    defaults = re.findall(r"^#(\w+) = (.+)$", text, re.M)
    examples = re.findall(r"^# (\w+) = (.+)$", text, re.M)
    assert sorted(k for k, _ in defaults + examples) == sorted(cli.CONFIG_KEYS)
    active = tmp_path / "active.conf"
    active.write_text(re.sub(r"^# ?(\w+ = .+)$", r"\1", text, flags=re.M))
    values = cli.read_config(str(active))
    parser = cli.build_parser()
    for key, _ in defaults:
        dest = cli.CONFIG_KEYS[key][0]
        assert values[dest] == parser.get_default(dest), key
    for key, _ in examples:
        assert parser.get_default(cli.CONFIG_KEYS[key][0]) is None, key


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """The units parse without unknown keys or bad values (Exec*= pointed at
    /bin/true: the programs are not installed on the build machine)."""
    require_tools("systemd-analyze")
    copies = []
    for unit in ("ebbd.service", "ebb-agent.service"):
        text = (SYSTEMD / unit).read_text()
        text = re.sub(r"^(Exec\w+)=/usr/bin/\S+", r"\1=/bin/true", text, flags=re.M)
        copy = tmp_path / unit
        copy.write_text(text)
        copies.append(str(copy))
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *copies],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    # Outside a booted systemd (containers, CI) verify cannot load the targets the
    # units hang off; that is the machine, not the units.
    noise = re.compile(r"Unit \S+\.target not found|Failed to create \S+/start")
    problems = [line for line in proc.stderr.splitlines() if not noise.search(line)]
    assert problems == [], proc.stderr


def test_agent_unit_lets_it_write_memory_reclaim_and_nothing_more() -> None:
    """Root (the owner of memory.reclaim) without capabilities, two writable files."""
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(SYSTEMD / "ebb-agent.service")
    service = unit["Service"]
    assert service.get("DynamicUser", "no") == "no" and service.get("User", "root") == "root"
    assert service["CapabilityBoundingSet"] == "" and service["AmbientCapabilities"] == ""
    assert service["NoNewPrivileges"] == "yes"
    assert service["ReadWritePaths"].split() == [
        "-/sys/fs/cgroup/memory.reclaim", "-/proc/sys/vm/compact_memory"]
    for key in ("ProtectControlGroups", "ProtectKernelTunables"):
        assert service[key] == "yes", key
    assert service["ProtectSystem"] == "strict"


def test_ebbd_unit_keeps_what_the_daemon_needs() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(SYSTEMD / "ebbd.service")
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["Restart"] == "on-failure"
    # A config or policy error (exit 2) is not retried in a loop.
    assert service["RestartPreventExitStatus"] == "2"
    assert service["WatchdogSec"]
    assert "/sys/kernel/mm/ksm" in service["ReadWritePaths"].split()
    assert "/run/ebb" in service["ReadWritePaths"].split()
    assert service["ProtectSystem"] == "strict"
    assert set(service["CapabilityBoundingSet"].split()) == {"CAP_DAC_OVERRIDE", "CAP_CHOWN"}
    assert "libvirtd.service" in unit["Unit"]["After"].split()


def test_tmpfiles_and_sysusers_make_the_run_dir_for_group_ebb(tmp_path: Path) -> None:
    """sysusers creates group ebb, then tmpfiles /run/ebb root:ebb 0750 (in a scratch root)."""
    require_root()
    require_tools("systemd-sysusers", "systemd-tmpfiles")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (tmp_path / "etc" / "group").write_text("root:x:0:\n")
    run(["systemd-sysusers", f"--root={tmp_path}", str(SYSTEMD / "sysusers.d" / "ebbd.conf")],
        timeout_s=30)  # fmt: skip
    group = (tmp_path / "etc" / "group").read_text()
    gid = int(re.search(r"^ebb:x:(\d+):", group, re.M).group(1))  # type: ignore[union-attr]
    run(["systemd-tmpfiles", f"--root={tmp_path}", "--create",
         str(SYSTEMD / "tmpfiles.d" / "ebbd.conf")], timeout_s=30)  # fmt: skip
    st = (tmp_path / "run" / "ebb").stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, gid, 0o750)


# --- Debian ----------------------------------------------------------------------


@pytest.mark.slow
def test_debs_split_host_and_guest_code(debs: Dict[str, Path]) -> None:
    files = {name: _deb_files(debs[name]) for name in PACKAGES}
    modules = {name: _python_modules(f) for name, f in files.items()}

    assert modules["python3-ebb-protocol"] == _source_modules("protocol", "ebb.protocol")
    assert modules["ebb-guest"] == _source_modules("guest", "ebb.guest")
    assert modules["ebb-host"] == _source_modules("host", "ebb.host")
    assert modules["ebb-lab"] == _source_modules("lab", "ebb.lab")

    assert "usr/bin/ebb-agent" in files["ebb-guest"]
    assert {"usr/bin/ebbd", "usr/bin/ebbctl"} <= set(files["ebb-host"])
    # `man ebbd` works wherever the command is installed.
    assert "usr/share/man/man8/ebb-agent.8.gz" in files["ebb-guest"]
    assert {"usr/share/man/man8/ebbd.8.gz", "usr/share/man/man8/ebbctl.8.gz",
            "usr/share/man/man5/ebbd.toml.5.gz"} <= set(files["ebb-host"])
    for name, system_files in DEB_SYSTEM_FILES.items():
        for other, other_files in files.items():
            for path in system_files:
                assert (path in other_files) == (other == name), (path, other)
    assert "etc/ebb/ebbd.toml" in files["ebb-host"]
    assert "etc/ebb/ebb-agent.conf" in files["ebb-guest"]
    for path in files["ebb-host"]:
        assert "/ebb/guest/" not in path and path != "usr/bin/ebb-agent", path
        assert "udev" not in path, path
    for path in files["ebb-guest"]:
        assert "/ebb/host/" not in path and "ebbd" not in path and "ebbctl" not in path, path
    policies = sorted(Path(p).name for p in files["ebb-host"] if p.startswith("etc/ebb/policy.d/"))
    assert policies == DEFAULT_POLICIES


@pytest.mark.slow
def test_ebb_host_holds_no_lab_and_no_simulated_agent(debs: Dict[str, Path]) -> None:
    host = _deb_files(debs["ebb-host"])
    lab_names = ("simulated", "memknobs", "hostile", "hostmem", "guestinit", "initramfs")
    lab_files = [p for p in host if "/ebb/lab/" in p or p.endswith("/ctl/lab.py")
                 or any(name in p for name in lab_names)]
    assert lab_files == []
    lab = _deb_files(debs["ebb-lab"])
    assert {SITE + "ebb/lab/memknobs.py", SITE + "ebb/lab/hostile.py",
            SITE + "ebb/lab/simulated.py"} <= set(lab)
    assert all(p.startswith((SITE + "ebb/lab/", "usr/share/doc/ebb-lab/")) for p in lab), lab
    depends = _deb_field(debs["ebb-lab"], "Depends")
    assert "ebb-host" in depends and "ebb-guest" in depends, depends


@pytest.mark.slow
def test_debs_ship_the_one_copy_of_each_system_file(debs: Dict[str, Path]) -> None:
    for name, system_files in DEB_SYSTEM_FILES.items():
        for path, source in system_files.items():
            assert _deb_member(debs[name], path) == source.read_bytes(), path
    shipped = _deb_member(debs["ebb-host"], "etc/ebb/ebbd.toml").decode()
    assert shipped == _default_config()
    shipped = _deb_member(debs["ebb-guest"], "etc/ebb/ebb-agent.conf").decode()
    assert shipped == _agent_config()


@pytest.mark.slow
def test_deb_conffiles_and_dependencies(debs: Dict[str, Path]) -> None:
    conffiles = _deb_control_file(debs["ebb-host"], "conffiles").split()
    assert sorted(conffiles) == sorted(
        ["/etc/ebb/ebbd.toml"] + [f"/etc/ebb/policy.d/{p}" for p in DEFAULT_POLICIES]
    )
    assert _deb_control_file(debs["ebb-guest"], "conffiles").split() == [
        "/etc/ebb/ebb-agent.conf"
    ]

    def names(field: str) -> Set[str]:
        return {re.split(r"[ (]", d.strip())[0] for d in re.split(r"[,|]", field) if d.strip()}

    guest = names(_deb_field(debs["ebb-guest"], "Depends"))
    python_deps = {d for d in guest if d.startswith("python3")}
    assert python_deps == {
        "python3-ebb-protocol", "python3-msgpack", "python3-psutil", "python3-serial",
        "python3:any",
    }  # fmt: skip
    assert names(_deb_field(debs["python3-ebb-protocol"], "Depends")) == {
        "python3-msgpack", "python3:any",
    }  # fmt: skip
    host = names(_deb_field(debs["ebb-host"], "Depends"))
    # ebbd imports prometheus_client at start (ebb.host.observe), so it is a Depends.
    assert {
        "python3-libvirt", "python3-systemd", "python3-ebb-protocol", "python3-prometheus-client",
    } <= host  # fmt: skip
    assert "ebb-guest" not in host


@pytest.mark.slow
def test_guest_postinst_creates_the_port_group_and_host_postinst_starts_ebbd(
    debs: Dict[str, Path],
) -> None:
    guest = _deb_control_file(debs["ebb-guest"], "postinst")
    assert "systemd-sysusers" in guest and "ebb-agent.conf" in guest
    host = _deb_control_file(debs["ebb-host"], "postinst")
    sysusers, tmpfiles = host.find("systemd-sysusers"), host.find("systemd-tmpfiles")
    assert 0 <= sysusers < tmpfiles, "group ebb must exist before /run/ebb is made"
    assert "deb-systemd-helper enable 'ebbd.service'" in host


@pytest.mark.slow
def test_lintian_reports_no_errors(debs: Dict[str, Path]) -> None:
    require_tools("lintian")
    proc = subprocess.run(
        ["lintian", "--no-tag-display-limit", str(debs["changes"])],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    errors = [line for line in proc.stdout.splitlines() if line.startswith("E:")]
    assert errors == [], proc.stdout
    assert "no-manual-page" not in proc.stdout, proc.stdout
    print("\nlintian:\n" + proc.stdout)


# --- RPM -------------------------------------------------------------------------


@pytest.mark.slow
def test_rpms_split_and_ship_the_same_units(rpms: Dict[str, Path], tmp_path: Path) -> None:
    listing = {
        name: run(["rpm", "-qlp", str(path)], timeout_s=30).stdout.split()
        for name, path in rpms.items()
    }
    assert "/usr/bin/ebb-agent" in listing["ebb-guest"]
    assert "/usr/bin/ebbd" in listing["ebb-host"]
    assert any(p.startswith("/usr/share/man/man8/ebb-agent.8") for p in listing["ebb-guest"])
    assert any(p.startswith("/usr/share/man/man8/ebbd.8") for p in listing["ebb-host"])
    for path in listing["ebb-guest"]:
        assert "/ebb/host/" not in path and "ebbd" not in path, path
    for path in listing["ebb-host"]:
        assert "/ebb/guest/" not in path and "ebb-agent" not in path, path
        assert "/ebb/lab/" not in path and "simulated" not in path, path
    assert any(p.endswith("/ebb/lab/memknobs.py") for p in listing["ebb-lab"])
    for name, path in rpms.items():
        unpacked = tmp_path / name
        unpacked.mkdir()
        rpm2cpio = subprocess.Popen(["rpm2cpio", str(path)], stdout=subprocess.PIPE)
        subprocess.run(["cpio", "-idm", "--quiet"], stdin=rpm2cpio.stdout, cwd=unpacked,
                       check=True, timeout=60)  # fmt: skip
        assert rpm2cpio.wait(timeout=60) == 0
    pairs = {
        "ebb-host/usr/lib/systemd/system/ebbd.service": SYSTEMD / "ebbd.service",
        "ebb-guest/usr/lib/systemd/system/ebb-agent.service": SYSTEMD / "ebb-agent.service",
        "ebb-guest/usr/lib/udev/rules.d/60-ebb-agent.rules": (
            SYSTEMD / "udev" / "60-ebb-agent.rules"
        ),
    }
    for installed, source in pairs.items():
        assert (tmp_path / installed).read_bytes() == source.read_bytes(), installed
    assert (tmp_path / "ebb-host/etc/ebb/ebbd.toml").read_text() == _default_config()
    assert (tmp_path / "ebb-guest/etc/ebb/ebb-agent.conf").read_text() == _agent_config()
    config = run(["rpm", "-qcp", str(rpms["ebb-host"])], timeout_s=30).stdout.split()
    assert "/etc/ebb/ebbd.toml" in config
    guest_config = run(["rpm", "-qcp", str(rpms["ebb-guest"])], timeout_s=30).stdout.split()
    assert guest_config == ["/etc/ebb/ebb-agent.conf"]
    assert sorted(Path(c).name for c in config if "/policy.d/" in c) == DEFAULT_POLICIES


@pytest.mark.slow
def test_rpmlint_reports_no_errors(rpms: Dict[str, Path]) -> None:
    require_tools("rpmlint")
    rc = REPO / "packaging" / "rpm" / "ebb.rpmlintrc"
    proc = subprocess.run(
        ["rpmlint", "-r", str(rc), str(SPEC), *map(str, rpms.values())],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    summary = [line for line in proc.stdout.splitlines() if "checked;" in line]
    assert summary and " 0 errors" in summary[-1], proc.stdout
    print("\nrpmlint:\n" + proc.stdout)

