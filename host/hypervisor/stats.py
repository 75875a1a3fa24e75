"""A guest's policy sample from what libvirt knows (no agent needed).

The names are the policy language's guest fields (``ebb.host.policy.fields``),
with MOM's libvirt semantics: cumulative counters as the balloon driver reports
them, memory in KiB. Fields whose source is missing (a guest without a balloon
driver, an old guest kernel without 'usable') are ``None``, never guessed.
Fields that come from the agent (offer, need, PSI, swap_total ...) are filled in
by the engine from the guest's channel.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ebb.host.hypervisor.connection import DomainInfo

#: libvirt memoryStats key -> policy guest field, copied as they are.
_DIRECT = {
    "available": "mem_available",
    "unused": "mem_unused",
    "major_fault": "major_fault",
    "minor_fault": "minor_fault",
    "swap_in": "swap_in",
    "swap_out": "swap_out",
    "rss": "rss",
    "disk_caches": "disk_caches",
    "usable": "usable",
}


def guest_sample(info: DomainInfo, floor_kib: int,
                 qemu_rss_kib: int | None = None) -> dict[str, Any]:
    """The libvirt part of a guest's policy sample.

    ``floor_kib`` is the VM's floor as the governor enforces it
    (:func:`ebb.host.governor.guest_floor_kib`), the policy's ``balloon_min``.

    ``qemu_rss_kib`` (from :func:`ebb.host.collectors.qemu_rss_kib`) is used for
    ``rss`` when the balloon statistics carry none.
    """
    stats: Mapping[str, int] = info.memory_stats
    sample: dict[str, Any] = {field: stats.get(key) for key, field in _DIRECT.items()}
    unused = stats.get("unused")
    caches = stats.get("disk_caches")
    if unused is not None and caches is not None:
        sample["mem_free"] = unused + caches
    else:
        # Older guests report no disk_caches; 'usable' (their MemAvailable) is the
        # closest figure that still counts reclaimable cache as free.
        sample["mem_free"] = stats.get("usable", unused)
    if sample["rss"] is None:
        sample["rss"] = qemu_rss_kib
    sample["balloon_cur"] = info.balloon_cur_kib
    sample["balloon_max"] = info.max_memory_kib
    sample["balloon_min"] = int(floor_kib)
    sample["free_page_reporting"] = int(info.settings.free_page_reporting)
    sample["autodeflate"] = int(info.settings.autodeflate)
    return sample
