"""Host collectors: /proc/meminfo, /proc/vmstat, memory PSI, KSM sysfs, QEMU RSS.

Everything is read under an injectable ``proc_root`` / ``sys_root``.
"""

from ebb.host.collectors.host import (
    CollectorError,
    HostCollector,
    HostSample,
    find_kernel_thread,
    qemu_rss_kib,
)

__all__ = ["CollectorError", "HostCollector", "HostSample", "find_kernel_thread", "qemu_rss_kib"]
