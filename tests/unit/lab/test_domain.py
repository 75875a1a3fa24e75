"""A lab guest's domain XML has what ebbd needs and what `lab down` recognises."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from ebb.lab.domain import EBB_NS, LAB_NS, GuestSpec, domain_xml
from ebb.lab.guestinit import parse_cmdline


def _spec(tmp_path: Path, **kwargs) -> GuestSpec:
    return GuestSpec(
        name="ebb-lab-1", memory_mib=512, kernel=tmp_path / "vmlinuz",
        initramfs=tmp_path / "initramfs.img", python=Path("/venv/bin/python3"),
        bin_dir=tmp_path / "bin", guest_dir=tmp_path / "guests/ebb-lab-1", state_dir=tmp_path,
        ebb_metadata={"floor_mib": "192"}, **kwargs,
    )


def test_balloon_channel_metadata_and_marker(tmp_path: Path) -> None:
    root = ET.fromstring(domain_xml(_spec(tmp_path)))
    assert root.get("type") == "qemu"
    assert root.find("memory").text == str(512 * 1024)
    balloon = root.find("devices/memballoon")
    assert balloon.get("model") == "virtio" and balloon.find("stats").get("period") == "2"
    channel = root.find("devices/channel")
    assert channel.find("target").get("name") == "org.ebb.agent.0"
    assert channel.find("source").get("path") == str(tmp_path / "guests/ebb-lab-1/agent.sock")
    ebb = root.find(f"metadata/{{{EBB_NS}}}vm")
    assert ebb.get("enabled") == "yes" and ebb.get("floor_mib") == "192"
    marker = root.find(f"metadata/{{{LAB_NS}}}guest")
    assert marker.get("state-dir") == str(tmp_path)
    shares = {fs.find("target").get("dir"): fs for fs in root.findall("devices/filesystem")}
    assert shares["hostroot"].find("readonly") is not None
    assert shares["labshare"].find("readonly") is None


def test_free_page_reporting_is_on_unless_turned_off(tmp_path: Path) -> None:
    from ebb.host.hypervisor import parse_domain_xml

    assert parse_domain_xml(domain_xml(_spec(tmp_path))).free_page_reporting
    baseline = parse_domain_xml(domain_xml(_spec(tmp_path, free_page_reporting=False)))
    assert baseline.has_balloon and not baseline.free_page_reporting


def test_command_line_round_trips_to_the_guest(tmp_path: Path) -> None:
    spec = _spec(tmp_path, run="memknobs --pattern 200M:30s,400M:1m", agent_args="--interval 2")
    params = parse_cmdline(spec.cmdline())
    assert params["name"] == "ebb-lab-1"
    assert params["python"] == "/venv/bin/python3"
    assert params["run"] == "memknobs --pattern 200M:30s,400M:1m"
    assert params["agent_args"] == "--interval 2"
    assert "psi=1" in spec.cmdline().split()


def test_double_quotes_cannot_reach_the_command_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="double quotes"):
        _spec(tmp_path, run='sh -c "echo hi"').cmdline()


def test_a_checkout_under_tmp_is_bound_back_into_the_guest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The guest's init mounts a tmpfs over /tmp: a checkout there would vanish.
    from ebb.lab import domain, initramfs

    monkeypatch.setattr(domain, "PROJECT_DIR", Path("/tmp/ci/main"))
    assert "ebb.keep=/tmp/ci/main" in _spec(tmp_path).cmdline().split()
    assert 'mount --bind "/hosttmp${KEEP#/tmp}" "/host$KEEP"' in initramfs.INIT_SCRIPT

    monkeypatch.setattr(domain, "PROJECT_DIR", Path("/work/main"))
    assert not any(w.startswith("ebb.keep=") for w in _spec(tmp_path).cmdline().split())


def test_an_emulated_guest_has_a_bounded_translation_cache(tmp_path: Path) -> None:
    # QEMU's default reserves 1 GiB per guest and fills it as new code runs:
    # host memory outside the guest that no balloon can take back.
    cache = ET.fromstring(domain_xml(_spec(tmp_path))).find("features/tcg/tb-cache")
    assert cache is not None and cache.get("unit") == "MiB" and cache.text == "128"
    sized = ET.fromstring(domain_xml(_spec(tmp_path, tb_cache_mib=256)))
    assert sized.find("features/tcg/tb-cache").text == "256"


def test_qemu_default_cache_and_kvm_guests_carry_no_tcg_element(tmp_path: Path) -> None:
    for spec in (_spec(tmp_path, tb_cache_mib=0), _spec(tmp_path, domain_type="kvm")):
        root = ET.fromstring(domain_xml(spec))
        assert root.find("features/acpi") is not None
        assert root.find("features/tcg") is None


def test_the_project_the_guest_runs_is_this_checkout() -> None:
    # After the lab moved from host/lab to lab/, PROJECT_DIR named the checkout's
    # parent: a checkout under /tmp then had /tmp itself bound back, and the
    # guest's Python found no ebb package (its init died at boot).
    from ebb.lab import domain

    root = Path(__file__).resolve().parents[3]
    assert root == domain.PROJECT_DIR
    assert (domain.PROJECT_DIR / "lab" / "domain.py").is_file()
