"""Reading ebb's per-VM settings from domain XML (canned documents and the doc's example)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from ebb.host.hypervisor import (
    DomainXmlError,
    ebb_metadata_xml,
    memory_to_kib,
    parse_domain_xml,
)

DOC = Path(__file__).resolve().parents[4] / "docs" / "vm-xml.md"


def domain(metadata: str = "", devices: str = "", extra: str = "") -> str:
    return f"""<domain type='kvm' id='3'>
  <name>vm1</name>
  <uuid>11111111-2222-3333-4444-555555555555</uuid>
  <metadata>{metadata}</metadata>
  <memory unit='KiB'>2097152</memory>
  <currentMemory unit='KiB'>1048576</currentMemory>
  {extra}
  <devices>{devices}</devices>
</domain>"""


def test_the_documented_example_parses_as_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    example = re.search(r"## A complete example\n\n```xml\n(.*?)```", text, re.S)
    assert example, "docs/vm-xml.md lost its complete example"
    settings = parse_domain_xml(example.group(1))
    assert settings.name == "web1"
    assert settings.has_ebb_metadata and settings.enabled
    assert settings.ebb_floor_kib == 512 * 1024
    assert settings.floor_kib == 512 * 1024  # ebb's floor wins over min_guarantee
    assert settings.min_guarantee_kib == 384 * 1024
    assert settings.priority == 10
    assert settings.max_memory_kib == 2048 * 1024
    assert settings.channel_path == "/run/libvirt/qemu/channel/ebb/web1.sock"
    assert settings.has_balloon and settings.stats_period_s == 2
    assert settings.free_page_reporting  # the documentation recommends it
    assert settings.problems == ()


def test_without_ebb_element_the_vm_is_managed_with_defaults() -> None:
    settings = parse_domain_xml(domain())
    assert not settings.has_ebb_metadata
    assert settings.enabled
    assert settings.floor_kib is None
    assert settings.priority == 0
    assert settings.channel_path is None
    assert not settings.has_balloon


def test_min_guarantee_is_the_floor_when_ebb_sets_none() -> None:
    xml = domain(extra="<memtune><min_guarantee unit='MiB'>300</min_guarantee>"
                       "<soft_limit unit='G'>1</soft_limit></memtune>")
    settings = parse_domain_xml(xml)
    assert settings.floor_kib == 300 * 1024
    assert settings.soft_limit_kib == 1024 * 1024


def test_any_prefix_for_the_namespace_works() -> None:
    xml = domain(metadata='<x:vm xmlns:x="urn:ebb:policy:1" enabled="no" floor_mib="64"/>')
    settings = parse_domain_xml(xml)
    assert settings.has_ebb_metadata
    assert not settings.enabled
    assert settings.floor_kib == 64 * 1024


def test_other_namespaces_are_not_ours() -> None:
    xml = domain(metadata='<ovirt:qos xmlns:ovirt="http://ovirt.org/vm/tune/1.0"/>'
                          '<vm xmlns="urn:other:1" enabled="no"/>')
    assert not parse_domain_xml(xml).has_ebb_metadata


@pytest.mark.parametrize(
    ("attributes", "enabled", "floor_kib", "priority", "problem"),
    [
        ('enabled="maybe"', False, None, 0, "must be yes or no; VM treated as not managed"),
        ('floor_mib="lots"', True, None, 0, "floor_mib='lots'>: must be a whole number"),
        ('floor_mib="-1"', True, None, 0, "must be a whole number of MiB >= 0"),
        ('priority="500"', True, None, 0, "must be an integer from -100 to 100"),
        ('flor_mib="512"', True, None, 0, "flor_mib=...>: unknown attribute"),
    ],
)
def test_bad_values_are_ignored_with_a_readable_problem(
    attributes: str, enabled: bool, floor_kib: int | None, priority: int, problem: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    xml = domain(metadata=f'<ebb:vm xmlns:ebb="urn:ebb:policy:1" {attributes}/>')
    settings = parse_domain_xml(xml)
    assert settings.enabled is enabled
    assert settings.floor_kib == floor_kib
    assert settings.priority == priority
    assert any(problem in p for p in settings.problems), settings.problems
    assert "VM vm1: domain XML" in caplog.text


def test_agent_channel_is_found_among_other_channels() -> None:
    devices = """
      <channel type='unix'>
        <source mode='bind' path='/var/lib/libvirt/qemu/channel/target/qga.0'/>
        <target type='virtio' name='org.qemu.guest_agent.0'/>
      </channel>
      <channel type='pty'><target type='virtio' name='org.ebb.agent.0'/></channel>
      <channel type='unix'>
        <source mode='bind' path='/srv/ebb/vm1.sock'/>
        <target type='virtio' name='org.ebb.agent.0' state='disconnected'/>
      </channel>
      <memballoon model='virtio'/>"""
    settings = parse_domain_xml(domain(devices=devices))
    assert settings.channel_path == "/srv/ebb/vm1.sock"
    assert settings.has_balloon and settings.stats_period_s is None


def test_balloon_features_are_read() -> None:
    settings = parse_domain_xml(domain(devices=(
        "<memballoon model='virtio' autodeflate='on' freePageReporting='on'>"
        "<stats period='5'/></memballoon>")))
    assert settings.free_page_reporting and settings.autodeflate
    assert settings.stats_period_s == 5
    assert settings.problems == ()


def test_balloon_features_are_off_unless_said_on() -> None:
    plain = parse_domain_xml(domain(devices="<memballoon model='virtio'/>"))
    assert not plain.free_page_reporting and not plain.autodeflate
    off = parse_domain_xml(domain(devices=(
        "<memballoon model='virtio' autodeflate='off' freePageReporting='off'/>")))
    assert not off.free_page_reporting and not off.autodeflate
    assert off.problems == ()
    # Without a balloon there is nothing to report pages through.
    none = parse_domain_xml(domain(devices="<memballoon model='none' freePageReporting='on'/>"))
    assert not none.free_page_reporting


def test_an_unreadable_balloon_feature_is_off_with_a_problem() -> None:
    settings = parse_domain_xml(domain(devices=(
        "<memballoon model='virtio' freePageReporting='maybe'/>")))
    assert not settings.free_page_reporting
    assert any("freePageReporting='maybe'" in p for p in settings.problems)


def test_the_free_page_reporting_warning_names_the_vms_and_the_line_to_add() -> None:
    from ebb.host.hypervisor.domain_xml import free_page_reporting_warning

    assert free_page_reporting_warning([]) is None
    warning = free_page_reporting_warning(["web2", "db1"])
    assert warning is not None
    assert "db1, web2" in warning
    assert "<memballoon model='virtio' freePageReporting='on'>" in warning
    assert "restarted" in warning


def test_balloon_model_none_is_no_balloon() -> None:
    assert not parse_domain_xml(domain(devices="<memballoon model='none'/>")).has_balloon


@pytest.mark.parametrize(
    ("value", "unit", "kib"),
    [("1", "GiB", 1048576), ("1", "G", 1048576), ("1000", "KB", 976), ("2048", None, 2048),
     ("1048576", "bytes", 1024), ("512", "MiB", 524288)],
)
def test_memory_units(value: str, unit: str | None, kib: int) -> None:
    assert memory_to_kib(value, unit) == kib


def test_unknown_unit_is_a_problem_not_a_crash() -> None:
    xml = domain(extra="<memtune><min_guarantee unit='parsecs'>3</min_guarantee></memtune>")
    settings = parse_domain_xml(xml)
    assert settings.min_guarantee_kib is None
    assert any("unknown memory unit" in p for p in settings.problems)


def test_not_a_domain_is_an_error() -> None:
    with pytest.raises(DomainXmlError, match="not well-formed"):
        parse_domain_xml("<domain><name>x</name>")
    with pytest.raises(DomainXmlError, match="expected a <domain>"):
        parse_domain_xml("<network/>")


def test_metadata_element_round_trips() -> None:
    element = ebb_metadata_xml(enabled=False, floor_mib=768, priority=-5)
    xml = domain(metadata=element.replace("<vm ", '<vm xmlns="urn:ebb:policy:1" ', 1))
    settings = parse_domain_xml(xml)
    assert settings.has_ebb_metadata
    assert (settings.enabled, settings.floor_kib, settings.priority) == (False, 768 * 1024, -5)


def test_the_agent_channel_is_found_by_the_configured_port_name() -> None:
    devices = (
        "<channel type='unix'><source mode='bind' path='/run/a.sock'/>"
        "<target type='virtio' name='org.ebb.agent.0'/></channel>"
        "<channel type='unix'><source mode='bind' path='/run/b.sock'/>"
        "<target type='virtio' name='org.ebb.bench.0'/></channel>"
    )
    assert parse_domain_xml(domain(devices=devices)).channel_path == "/run/a.sock"
    bench = parse_domain_xml(domain(devices=devices), agent_channel="org.ebb.bench.0")
    assert bench.channel_path == "/run/b.sock"
    assert parse_domain_xml(domain(devices=devices), agent_channel="x.y").channel_path is None
