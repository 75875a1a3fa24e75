"""Per-VM settings read from a libvirt domain XML.

What ebb needs from a domain's XML (docs/vm-xml.md shows a full example):

- ``<metadata><ebb:vm xmlns:ebb="urn:ebb:policy:1" enabled="yes" floor_mib="512"
  priority="0"/></metadata>``: whether ebb manages the VM, its floor, its priority;
- ``<memtune><min_guarantee>``: the floor when ebb's element sets none (as MOM);
- the unix socket of ``<channel type='unix'>`` whose ``<target type='virtio'
  name='org.ebb.agent.0'/>``: where the guest agent is reached;
- ``<memballoon model='virtio' freePageReporting='on' autodeflate='on'><stats
  period='N'/>``: whether there is a balloon, whether the guest reports the pages
  it frees (they go back to the host by themselves), whether the balloon deflates
  when the guest runs out of memory, and how often its statistics come.

Parsing never raises for a bad ebb element: a value that cannot be used is
ignored (the default applies) and described in :attr:`DomainSettings.problems`,
so one mistyped VM never stops the daemon from managing the others.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field

LOG = logging.getLogger(__name__)

#: The XML namespace of ebb's metadata element.
EBB_NAMESPACE = "urn:ebb:policy:1"
#: The element's local name: ``<ebb:vm .../>``.
EBB_ELEMENT = "vm"
#: The virtio-serial port name the agent listens on (``[guests] agent_channel``'s default).
AGENT_CHANNEL_NAME = "org.ebb.agent.0"

PRIORITY_MIN = -100
PRIORITY_MAX = 100

# libvirt's memory units (docs: formatdomain "Memory Allocation"), in bytes.
_UNIT_BYTES = {
    "b": 1, "bytes": 1,
    "kb": 1000, "k": 1024, "kib": 1024,
    "mb": 1000**2, "m": 1024**2, "mib": 1024**2,
    "gb": 1000**3, "g": 1024**3, "gib": 1024**3,
    "tb": 1000**4, "t": 1024**4, "tib": 1024**4,
}

_TRUE_WORDS = frozenset({"yes", "true", "1", "on"})
_FALSE_WORDS = frozenset({"no", "false", "0", "off"})


class DomainXmlError(ValueError):
    """The domain XML itself cannot be parsed (not a problem in ebb's element)."""


@dataclass(frozen=True)
class DomainSettings:
    """What ebb reads from one domain's XML. Memory in KiB."""

    name: str
    uuid: str
    #: ``<memory>``: the VM's maximum memory (balloon fully deflated).
    max_memory_kib: int | None = None
    #: ``<currentMemory>``: the balloon target libvirt last recorded.
    current_memory_kib: int | None = None
    #: True when the XML carries an ``<ebb:vm>`` element.
    has_ebb_metadata: bool = False
    #: ``enabled`` of the ebb element; True when the element is absent (MOM manages all).
    enabled: bool = True
    #: ``floor_mib`` of the ebb element, in KiB.
    ebb_floor_kib: int | None = None
    #: ``priority`` of the ebb element: higher is ballooned later and deflated first.
    priority: int = 0
    #: ``<memtune><min_guarantee>``.
    min_guarantee_kib: int | None = None
    #: ``<memtune><soft_limit>`` as configured (None when unset).
    soft_limit_kib: int | None = None
    #: Host path of the agent channel's unix socket, or None when the VM has none.
    channel_path: str | None = None
    #: A ``<memballoon>`` other than ``model='none'`` is present.
    has_balloon: bool = False
    #: ``<memballoon><stats period=...>``, 0/None when statistics are off.
    stats_period_s: int | None = None
    #: ``<memballoon freePageReporting='on'>``: pages the guest frees go back to
    #: the host within seconds, without a balloon move (guest Linux 5.7+, QEMU 5.1+,
    #: libvirt 6.9+).
    free_page_reporting: bool = False
    #: ``<memballoon autodeflate='on'>``: QEMU deflates the balloon when the guest
    #: is about to run out of memory (its OOM notifier), whatever ebbd set.
    autodeflate: bool = False
    #: Values ignored because they could not be used, as user-readable sentences.
    problems: tuple[str, ...] = field(default=())

    @property
    def floor_kib(self) -> int | None:
        """The VM's own floor: ebb's ``floor_mib``, else ``min_guarantee``, else None.

        None means "use the configured default floor" (``governor.default_floor_mib``).
        """
        if self.ebb_floor_kib is not None:
            return self.ebb_floor_kib
        return self.min_guarantee_kib


def memory_to_kib(value: str, unit: str | None = None) -> int:
    """Convert a libvirt memory quantity (``unit`` attribute, default KiB) to KiB."""
    factor = _UNIT_BYTES.get((unit or "KiB").strip().lower())
    if factor is None:
        raise ValueError(f"unknown memory unit {unit!r}")
    amount = int(value.strip())
    if amount < 0:
        raise ValueError(f"negative memory amount {amount}")
    return amount * factor // 1024


def _memory_element(root: ET.Element, path: str, problems: list[str]) -> int | None:
    element = root.find(path)
    if element is None or element.text is None:
        return None
    try:
        return memory_to_kib(element.text, element.get("unit"))
    except ValueError as err:
        problems.append(f"<{path}>: {err}; ignored")
        return None


def parse_domain_xml(xml: str, agent_channel: str = AGENT_CHANNEL_NAME) -> DomainSettings:
    """Read ebb's per-VM settings from a domain XML document (``virDomain.XMLDesc``).

    ``channel_path`` is the socket of the virtio-serial port named ``agent_channel``.

    Raises :class:`DomainXmlError` only when the document is not XML or not a
    ``<domain>``; problems in ebb's own element end up in ``problems``.
    """
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as err:
        raise DomainXmlError(f"domain XML is not well-formed: {err}") from err
    if root.tag != "domain":
        raise DomainXmlError(f"expected a <domain> document, got <{root.tag}>")
    name = (root.findtext("name") or "").strip()
    uuid = (root.findtext("uuid") or "").strip()
    problems: list[str] = []

    max_memory_kib = _memory_element(root, "memory", problems)
    current_memory_kib = _memory_element(root, "currentMemory", problems)
    min_guarantee_kib = _memory_element(root, "memtune/min_guarantee", problems)
    soft_limit_kib = _memory_element(root, "memtune/soft_limit", problems)

    ebb = _parse_ebb_element(root, problems)
    channel_path = _agent_channel_path(root, agent_channel)
    balloon = _memballoon(root, problems)

    for problem in problems:
        LOG.warning("VM %s: domain XML: %s", name or uuid, problem)
    return DomainSettings(
        name=name,
        uuid=uuid,
        max_memory_kib=max_memory_kib,
        current_memory_kib=current_memory_kib,
        has_ebb_metadata=ebb.present,
        enabled=ebb.enabled,
        ebb_floor_kib=ebb.floor_kib,
        priority=ebb.priority,
        min_guarantee_kib=min_guarantee_kib,
        soft_limit_kib=soft_limit_kib,
        channel_path=channel_path,
        has_balloon=balloon.present,
        stats_period_s=balloon.stats_period_s,
        free_page_reporting=balloon.free_page_reporting,
        autodeflate=balloon.autodeflate,
        problems=tuple(problems),
    )


@dataclass
class _EbbElement:
    present: bool = False
    enabled: bool = True
    floor_kib: int | None = None
    priority: int = 0


def _parse_ebb_element(root: ET.Element, problems: list[str]) -> _EbbElement:
    result = _EbbElement()
    element = root.find(f"metadata/{{{EBB_NAMESPACE}}}{EBB_ELEMENT}")
    if element is None:
        return result
    result.present = True
    known = {"enabled", "floor_mib", "priority"}
    for attribute in sorted(set(element.attrib) - known):
        problems.append(
            f"<ebb:vm {attribute}=...>: unknown attribute (known: {', '.join(sorted(known))}); "
            "ignored"
        )
    enabled = element.get("enabled")
    if enabled is not None:
        word = enabled.strip().lower()
        if word in _TRUE_WORDS:
            result.enabled = True
        elif word in _FALSE_WORDS:
            result.enabled = False
        else:
            # Unclear intent: do not manage a VM its administrator may have meant to exclude.
            result.enabled = False
            problems.append(
                f"<ebb:vm enabled={enabled!r}>: must be yes or no; VM treated as not managed"
            )
    floor = element.get("floor_mib")
    if floor is not None:
        try:
            floor_mib = int(floor.strip())
            if floor_mib < 0:
                raise ValueError
            result.floor_kib = floor_mib * 1024
        except ValueError:
            problems.append(
                f"<ebb:vm floor_mib={floor!r}>: must be a whole number of MiB >= 0; "
                "default floor used"
            )
    priority = element.get("priority")
    if priority is not None:
        try:
            value = int(priority.strip())
            if not PRIORITY_MIN <= value <= PRIORITY_MAX:
                raise ValueError
            result.priority = value
        except ValueError:
            problems.append(
                f"<ebb:vm priority={priority!r}>: must be an integer from {PRIORITY_MIN} "
                f"to {PRIORITY_MAX}; 0 used"
            )
    return result


def _agent_channel_path(root: ET.Element, port_name: str) -> str | None:
    for channel in root.findall("devices/channel"):
        if channel.get("type") != "unix":
            continue
        target = channel.find("target")
        if target is None or target.get("type") != "virtio":
            continue
        if target.get("name") != port_name:
            continue
        source = channel.find("source")
        path = source.get("path") if source is not None else None
        # An inactive definition may omit the path (libvirt generates one at start).
        return path or None
    return None


@dataclass
class _Balloon:
    present: bool = False
    stats_period_s: int | None = None
    free_page_reporting: bool = False
    autodeflate: bool = False


def _memballoon(root: ET.Element, problems: list[str]) -> _Balloon:
    balloon = root.find("devices/memballoon")
    if balloon is None or balloon.get("model", "none") == "none":
        return _Balloon()
    result = _Balloon(present=True)
    stats = balloon.find("stats")
    if stats is not None:
        try:
            result.stats_period_s = int(stats.get("period", "0"))
        except ValueError:
            result.stats_period_s = None
    result.free_page_reporting = _on_off(balloon, "freePageReporting", problems)
    result.autodeflate = _on_off(balloon, "autodeflate", problems)
    return result


def _on_off(element: ET.Element, attribute: str, problems: list[str]) -> bool:
    """libvirt's ``on``/``off`` attribute; absent or unreadable is off, as in QEMU."""
    value = element.get(attribute)
    if value is None:
        return False
    word = value.strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word not in _FALSE_WORDS:
        problems.append(f"<memballoon {attribute}={value!r}>: must be on or off; read as off")
    return False


#: What to add to a VM's XML for free page reporting (docs/vm-xml.md).
FREE_PAGE_REPORTING_XML = "<memballoon model='virtio' freePageReporting='on'>"


def free_page_reporting_warning(vms: Iterable[str]) -> str | None:
    """The warning for the VMs ``vms`` that run without free page reporting, or None.

    Memory such a guest frees stays resident on the host until a balloon takes
    it, so it names them and the exact line to add.
    """
    names = sorted(vms)
    if not names:
        return None
    return (
        f"free page reporting is off for {', '.join(names)}: memory these guests free "
        f"stays on the host until a balloon takes it. Add {FREE_PAGE_REPORTING_XML} to "
        "each VM's XML (virsh edit VM; guest Linux 5.7+, QEMU 5.1+, libvirt 6.9+); it "
        "takes effect after the VM is restarted (docs/vm-xml.md)"
    )


def ebb_metadata_xml(*, enabled: bool = True, floor_mib: int | None = None,
                     priority: int | None = None) -> str:
    """The ``<ebb:vm>`` element as a string, for ``virDomain.setMetadata``.

    libvirt adds the namespace prefix itself when given ``key="ebb"`` and the
    namespace URI, so the element is written without a prefix here.
    """
    element = ET.Element(EBB_ELEMENT)
    element.set("enabled", "yes" if enabled else "no")
    if floor_mib is not None:
        element.set("floor_mib", str(int(floor_mib)))
    if priority is not None:
        element.set("priority", str(int(priority)))
    return ET.tostring(element, encoding="unicode")
