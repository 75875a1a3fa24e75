"""The names a policy can read and set: fields, properties and controls.

This table is the sandbox's allow-list. A policy reaches data only through
these names (looked up in plain dictionaries, never as Python attributes), and
anything else is an error at load time (when the name is written literally) or
at evaluation time. docs/policy.md renders the same table for administrators;
keep the two together.

Memory quantities are KiB, as in MOM. Fields added by ebb (agent reports,
pressure, rates) are ``nil`` when their source is not available, for example
for a guest without a connected agent.
"""

from __future__ import annotations

from typing import Dict, FrozenSet

#: Host sample fields: name -> description (KiB unless stated).
HOST_FIELDS: Dict[str, str] = {
    # MOM names
    "mem_available": "MemTotal of the host less reserved hugepages",
    "mem_unused": "MemFree",
    "mem_free": "freeable memory: MemFree + Buffers + Cached",
    "swap_in": "pages swapped in (cumulative, /proc/vmstat pswpin)",
    "swap_out": "pages swapped out (cumulative, /proc/vmstat pswpout)",
    "anon_pages": "AnonPages",
    "swap_total": "SwapTotal",
    "swap_usage": "SwapTotal - SwapFree",
    "ksm_run": "KSM run state (0 stopped, 1 running, 2 unmerge)",
    "ksm_pages_to_scan": "pages KSM scans per wake-up",
    "ksm_sleep_millisecs": "ms KSM sleeps between scans",
    "ksm_pages_shared": "KSM pages shared",
    "ksm_pages_sharing": "KSM pages sharing",
    "ksm_pages_unshared": "KSM pages unshared",
    "ksm_pages_volatile": "KSM pages volatile",
    "ksm_full_scans": "KSM full scans done",
    "ksm_merge_across_nodes": "KSM merge_across_nodes (0/1)",
    "ksm_shareable": "memory assigned to all running VMs (KiB)",
    "ksmd_cpu_usage": "ksmd CPU use, % of one CPU",
    # ebb additions
    "psi_some_avg10": "host memory PSI some avg10 (%)",
    "psi_full_avg10": "host memory PSI full avg10 (%)",
    "swap_in_rate": "pages swapped in per second",
    "swap_out_rate": "pages swapped out per second",
    "meminfo_available": "MemAvailable: what the kernel can hand out without swapping",
    "pressure_level": (
        "how short the host is: 0 none, 1 low, 2 high, 3 critical "
        "(swapping, memory PSI and MemAvailable; docs/policy.md)"
    ),
}

#: Guest sample fields: name -> description (KiB unless stated).
GUEST_FIELDS: Dict[str, str] = {
    # MOM names (virtio-balloon statistics and libvirt; no agent needed)
    "mem_available": "memory the guest sees (balloon stats 'available')",
    "mem_unused": "memory the guest leaves unused (balloon stats 'unused')",
    "mem_free": "unused + disk caches (balloon stats)",
    "major_fault": "major page faults (cumulative)",
    "minor_fault": "minor page faults (cumulative)",
    "swap_in": "KiB swapped in (cumulative)",
    "swap_out": "KiB swapped out (cumulative)",
    "swap_total": "SwapTotal of the guest",
    "swap_usage": "swap in use in the guest",
    "balloon_cur": "current balloon size: memory the guest has now",
    "balloon_max": "maximum memory of the VM",
    "balloon_min": "floor for this VM (ebb metadata floor, memtune min_guarantee or default)",
    "rss": "resident memory of the VM's QEMU process on the host (libvirt memory stats "
    "'rss', else the process's resident set): what the guest really costs the host",
    "free_page_reporting": "1 when the VM's balloon reports freed pages to the host "
    "(freePageReporting='on'), else 0",
    "autodeflate": "1 when QEMU deflates the balloon on guest OOM (autodeflate='on'), else 0",
    # ebb additions (from ebb-agent reports; nil without an agent)
    "agent_connected": "1 when an ebb-agent is connected and reporting, else 0",
    "report_age": "seconds since the agent's last report (nil without agent)",
    "offer": "KiB the agent says the guest can give back now",
    "need": "KiB the agent says the guest needs (0 when none)",
    "need_urgency": "0 none, 1 wants memory, 2 urgent (stalling)",
    "psi_some_avg10": "guest memory PSI some avg10 (%)",
    "psi_full_avg10": "guest memory PSI full avg10 (%)",
    "cache": "page cache in the guest (Cached + Buffers)",
    "cold": (
        "KiB of clean page cache the agent counts as cold (unused for its cache_hold_s); "
        "nil from agents that do not say"
    ),
    "meminfo_available": "MemAvailable as the guest kernel reports it",
    "major_fault_rate": "major faults per second (host clock)",
    "swap_in_rate": "KiB swapped in per second (host clock)",
    "yield_capable": (
        "1 when the agent can yield (capability yield) and its yields give the host "
        "memory; 0 otherwise; nil without a channel"
    ),
    "yield_fruitless": "1 when its last yields gave the host nothing (handled as no agent)",
    "yield_pending": "1 while a yield request is outstanding or its RSS drop is awaited",
    "yield_returned": "KiB the last yield gave back, measured by the drop of QEMU RSS",
}

#: Properties readable as ``x.name`` as well as ``(x.Prop "name")``.
GUEST_PROPS: FrozenSet[str] = frozenset({"name", "uuid"})
HOST_PROPS: FrozenSet[str] = frozenset({"name"})

#: Controls a policy may set with ``(x.Control name value)``.
HOST_CONTROLS: Dict[str, str] = {
    "ksm_run": "0 stop, 1 run, 2 unmerge all",
    "ksm_pages_to_scan": "pages to scan per wake-up",
    "ksm_sleep_millisecs": "ms to sleep between scans",
    "ksm_merge_across_nodes": "0/1",
}
GUEST_CONTROLS: Dict[str, str] = {
    "balloon_target": "memory the guest should have (KiB); the governor has the last word",
    "yield_kib": (
        "KiB to ask the guest's agent to yield (reclaim cold cache); capped by its size "
        "and reported cache; inflation waits for the QEMU RSS to drop"
    ),
}

#: Methods callable as ``(x.Method args...)``: name -> number of arguments.
METHODS: Dict[str, int] = {
    "Stat": 1,
    "StatAvg": 1,
    "Prop": 1,
    "Control": 2,
    "GetControl": 1,
    "SetVar": 2,
    "GetVar": 1,
}

ALL_FIELDS: FrozenSet[str] = frozenset(HOST_FIELDS) | frozenset(GUEST_FIELDS)
ALL_DOT_NAMES: FrozenSet[str] = ALL_FIELDS | GUEST_PROPS | HOST_PROPS
ALL_CONTROLS: FrozenSet[str] = frozenset(HOST_CONTROLS) | frozenset(GUEST_CONTROLS)
