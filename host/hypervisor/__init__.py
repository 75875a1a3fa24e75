"""libvirt: the active VMs (event-driven), their balloons, statistics and XML settings.

- :class:`Hypervisor` (``connection``): one self-healing connection, lifecycle
  events, per-VM :class:`DomainInfo`, balloon and memtune setters.
- :func:`parse_domain_xml` (``domain_xml``): ebb's ``<ebb:vm>`` metadata,
  ``min_guarantee``, the agent channel's socket path.
- :func:`guest_sample` (``stats``): the policy's guest fields from balloon statistics.
- :func:`ensure_event_loop` (``events``): libvirt's event loop thread.
"""

from ebb.host.hypervisor.connection import (
    MEMORY_PARAM_UNLIMITED,
    DomainGone,
    DomainInfo,
    Hypervisor,
    HypervisorError,
    NotConnected,
)
from ebb.host.hypervisor.domain_xml import (
    AGENT_CHANNEL_NAME,
    EBB_NAMESPACE,
    DomainSettings,
    DomainXmlError,
    ebb_metadata_xml,
    memory_to_kib,
    parse_domain_xml,
)
from ebb.host.hypervisor.events import ensure_event_loop
from ebb.host.hypervisor.stats import guest_sample

__all__ = [
    "AGENT_CHANNEL_NAME",
    "EBB_NAMESPACE",
    "MEMORY_PARAM_UNLIMITED",
    "DomainGone",
    "DomainInfo",
    "DomainSettings",
    "DomainXmlError",
    "Hypervisor",
    "HypervisorError",
    "NotConnected",
    "ebb_metadata_xml",
    "ensure_event_loop",
    "guest_sample",
    "memory_to_kib",
    "parse_domain_xml",
]
