"""The Hypervisor against libvirt's own test driver (test:///default).

test:///default keeps one in-process state shared by every connection, so each
test creates its own ``ebb-unit-*`` domains and removes them, also on failure.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

libvirt = pytest.importorskip("libvirt")

from ebb.host.governor import GovernorConfig, guest_floor_kib  # noqa: E402
from ebb.host.hypervisor import (  # noqa: E402 - after the libvirt check
    DomainGone,
    Hypervisor,
    NotConnected,
    guest_sample,
)

URI = "test:///default"

DOMAIN_XML = """<domain type='test'>
  <name>{name}</name>
  <metadata>
    <ebb:vm xmlns:ebb="urn:ebb:policy:1" enabled="yes" floor_mib="300" priority="7"/>
  </metadata>
  <memory unit='MiB'>1024</memory>
  <currentMemory unit='MiB'>1024</currentMemory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>
    <channel type='unix'>
      <source mode='bind' path='/tmp/ebb-unit/{name}.sock'/>
      <target type='virtio' name='org.ebb.agent.0'/>
    </channel>
    {balloon}
  </devices>
</domain>"""
BALLOON_WITH_STATS = "<memballoon model='virtio'><stats period='2'/></memballoon>"


def wait_for(predicate: Any, timeout_s: float = 15.0) -> bool:
    """Poll until ``predicate()`` holds; the deadline only matters when it never does."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


@pytest.fixture
def admin() -> Iterator[Any]:
    """A second connection playing the administrator; removes what it created."""
    conn = libvirt.open(URI)
    created: list[str] = []

    def start(name: str, balloon: str = BALLOON_WITH_STATS, xml: str = DOMAIN_XML) -> Any:
        dom = conn.defineXML(xml.format(name=name, balloon=balloon))
        created.append(name)
        dom.create()
        return dom

    conn.start = start  # type: ignore[attr-defined]
    yield conn
    for name in created:
        try:
            dom = conn.lookupByName(name)
        except libvirt.libvirtError:
            continue
        if dom.isActive():
            dom.destroy()
        dom.undefine()
    conn.close()


@pytest.fixture
def hypervisor() -> Iterator[Hypervisor]:
    hv = Hypervisor(URI, relist_interval_s=60.0, reconnect_initial_s=0.01,
                    reconnect_max_s=0.05, qemu_run_dir="/nonexistent")
    hv.start()
    assert hv.wait_connected(5.0)
    yield hv
    hv.stop()


def test_lists_active_domains_on_connect(hypervisor: Hypervisor) -> None:
    assert hypervisor.connected
    assert "test" in hypervisor.running_domains()


def test_lifecycle_events_keep_the_list_current(hypervisor: Hypervisor, admin: Any) -> None:
    seen: list[frozenset[str]] = []
    hypervisor._on_change = seen.append  # the engine's hook; set late to skip the first list
    hypervisor.changed.clear()
    dom = admin.start("ebb-unit-events")
    # The relist interval is 60 s: only an event can make this appear in time.
    assert wait_for(lambda: "ebb-unit-events" in hypervisor.running_domains())
    assert hypervisor.changed.is_set()
    assert seen and "ebb-unit-events" in seen[-1]
    dom.destroy()
    assert wait_for(lambda: "ebb-unit-events" not in hypervisor.running_domains())


def test_domain_info_reads_settings_stats_and_balloon(hypervisor: Hypervisor,
                                                      admin: Any) -> None:
    admin.start("ebb-unit-info")
    assert wait_for(lambda: "ebb-unit-info" in hypervisor.running_domains())
    info = hypervisor.domain_info("ebb-unit-info")
    assert info.state == "running"
    assert info.max_memory_kib == 1024 * 1024
    assert info.balloon_cur_kib is not None
    assert info.settings.floor_kib == 300 * 1024
    assert info.settings.priority == 7
    assert info.settings.channel_path == "/tmp/ebb-unit/ebb-unit-info.sock"
    assert info.qemu_pid is None  # no pid file for the test driver
    floor = guest_floor_kib(info.settings.floor_kib, info.max_memory_kib,
                            GovernorConfig(default_floor_kib=256 * 1024))
    sample = guest_sample(info, floor)
    assert sample["balloon_max"] == 1024 * 1024
    assert sample["balloon_min"] == 300 * 1024
    assert sample["balloon_cur"] == info.balloon_cur_kib
    assert sample["mem_available"] == info.memory_stats.get("available")


def test_balloon_target_is_applied_live(hypervisor: Hypervisor, admin: Any) -> None:
    admin.start("ebb-unit-balloon")
    assert wait_for(lambda: "ebb-unit-balloon" in hypervisor.running_domains())
    hypervisor.set_balloon_target("ebb-unit-balloon", 700 * 1024)
    assert hypervisor.balloon_actual_kib("ebb-unit-balloon") == 700 * 1024
    assert admin.lookupByName("ebb-unit-balloon").info()[2] == 700 * 1024


def test_soft_limit_set_and_removed(hypervisor: Hypervisor, admin: Any) -> None:
    admin.start("ebb-unit-memtune")
    assert wait_for(lambda: "ebb-unit-memtune" in hypervisor.running_domains())
    assert hypervisor.memory_soft_limit_kib("ebb-unit-memtune") is None
    hypervisor.set_memory_soft_limit("ebb-unit-memtune", 500 * 1024)
    assert hypervisor.memory_soft_limit_kib("ebb-unit-memtune") == 500 * 1024
    hypervisor.set_memory_soft_limit("ebb-unit-memtune", None)
    assert hypervisor.memory_soft_limit_kib("ebb-unit-memtune") is None


def test_set_ebb_metadata_is_read_back(hypervisor: Hypervisor, admin: Any) -> None:
    admin.start("ebb-unit-meta")
    assert wait_for(lambda: "ebb-unit-meta" in hypervisor.running_domains())
    assert hypervisor.domain_settings("ebb-unit-meta").floor_kib == 300 * 1024  # cached now
    hypervisor.set_ebb_metadata("ebb-unit-meta", floor_mib=640, priority=-3)
    settings = hypervisor.domain_settings("ebb-unit-meta")
    assert (settings.floor_kib, settings.priority) == (640 * 1024, -3)
    # Persisted in the definition too, as an administrator would see it.
    assert "floor_mib=\"640\"" in admin.lookupByName("ebb-unit-meta").XMLDesc(
        libvirt.VIR_DOMAIN_XML_INACTIVE)


def test_unknown_or_stopped_vm_is_domain_gone(hypervisor: Hypervisor, admin: Any) -> None:
    with pytest.raises(DomainGone, match="ebb-unit-nothing"):
        hypervisor.domain_info("ebb-unit-nothing")
    dom = admin.start("ebb-unit-gone")
    assert wait_for(lambda: "ebb-unit-gone" in hypervisor.running_domains())
    dom.destroy()
    with pytest.raises(DomainGone):
        hypervisor.set_balloon_target("ebb-unit-gone", 512 * 1024)
    assert "ebb-unit-gone" not in hypervisor.running_domains()
    assert [i.name for i in hypervisor.domain_infos()].count("ebb-unit-gone") == 0


class FlakyOpener:
    """libvirtd that refuses the first ``failures`` connections (restarting)."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts = 0
        self.lock = threading.Lock()

    def __call__(self, uri: str) -> Any:
        with self.lock:
            self.attempts += 1
            if self.attempts <= self.failures:
                raise libvirt.libvirtError("Failed to connect socket: Connection refused")
        return libvirt.open(uri)


def test_reconnects_with_backoff_until_libvirtd_answers() -> None:
    opener = FlakyOpener(failures=3)
    hv = Hypervisor(URI, reconnect_initial_s=0.01, reconnect_max_s=0.02, opener=opener)
    try:
        with pytest.raises(NotConnected, match="not connected to libvirt at test:///default"):
            hv.running_domains() or hv.domain_info("test")
        hv.start()
        assert hv.wait_connected(5.0)
        assert opener.attempts == 4
        assert "test" in hv.running_domains()
    finally:
        hv.stop()


def test_lost_connection_reconnects_and_events_work_again(admin: Any) -> None:
    opener = FlakyOpener(failures=0)
    hv = Hypervisor(URI, relist_interval_s=60.0, reconnect_initial_s=0.01,
                    reconnect_max_s=0.02, opener=opener)
    hv.start()
    try:
        assert hv.wait_connected(5.0)
        opener.failures = 3  # libvirtd restarting: the next attempts are refused
        hv._on_close(None, libvirt.VIR_CONNECT_CLOSE_REASON_EOF, None)  # what libvirt calls
        assert not hv.connected
        with pytest.raises(NotConnected):
            hv.set_balloon_target("test", 1 << 20)
        assert wait_for(lambda: hv.connected, 5.0)
        assert opener.attempts == 4
        # Events were registered again on the new connection.
        admin.start("ebb-unit-after-reconnect")
        assert wait_for(lambda: "ebb-unit-after-reconnect" in hv.running_domains())
    finally:
        hv.stop()


def test_stop_is_prompt_while_waiting_to_reconnect() -> None:
    hv = Hypervisor(URI, reconnect_initial_s=30.0, reconnect_max_s=30.0,
                    opener=FlakyOpener(failures=1000))
    hv.start()
    assert wait_for(lambda: hv._thread is not None)
    time.sleep(0.05)
    started = time.monotonic()
    hv.stop()
    assert time.monotonic() - started < 1.0
    assert not hv.connected


@pytest.mark.parametrize(("balloon", "period_after"), [
    ("<memballoon model='virtio'/>", 2),  # none configured: ebb asks for its own
    ("<memballoon model='virtio'><stats period='7'/></memballoon>", 7),  # the admin's stays
])
def test_stats_period_is_set_only_where_missing(hypervisor: Hypervisor, admin: Any,
                                                balloon: str, period_after: int) -> None:
    name = f"ebb-unit-period-{period_after}"
    admin.start(name, balloon)
    assert wait_for(lambda: name in hypervisor.running_domains())
    hypervisor.domain_info(name)
    live_xml = admin.lookupByName(name).XMLDesc(0)
    assert f"<stats period='{period_after}'/>" in live_xml


class BulkStatsConnection:
    """A test-driver connection whose bulk stats carry balloon figures, as qemu's do."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.bulk_calls: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def getAllDomainStats(self, stats: int, flags: int) -> list[tuple[Any, dict[str, int]]]:
        self.bulk_calls.append(flags)
        return [
            (dom, {"state.state": 1, "balloon.current": 777 * 1024,
                   "balloon.maximum": 1024 * 1024, "balloon.unused": 100 * 1024,
                   "balloon.available": 760 * 1024, "balloon.last-update": 1700000000,
                   "balloon.disk_caches": 50 * 1024})
            for dom in self._real.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        ]


def test_tick_listing_uses_bulk_stats_that_never_wait(admin: Any) -> None:
    connections: list[BulkStatsConnection] = []

    def opener(uri: str) -> Any:
        connections.append(BulkStatsConnection(libvirt.open(uri)))
        return connections[-1]

    hv = Hypervisor(URI, opener=opener)
    hv.connect_now()
    try:
        admin.start("ebb-unit-bulk")
        assert wait_for(lambda: "ebb-unit-bulk" in hv.running_domains())
        infos = {i.name: i for i in hv.domain_infos()}
        info = infos["ebb-unit-bulk"]
        assert connections[-1].bulk_calls
        assert connections[-1].bulk_calls[-1] & libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT
        assert info.balloon_cur_kib == 777 * 1024  # from the bulk call, not memoryStats()
        assert info.memory_stats == {"actual": 777 * 1024, "unused": 100 * 1024,
                                     "available": 760 * 1024, "last_update": 1700000000,
                                     "disk_caches": 50 * 1024}
        assert info.max_memory_kib == 1024 * 1024
        assert info.settings.floor_kib == 300 * 1024
        sample = guest_sample(info, floor_kib=0)
        assert sample["mem_free"] == 150 * 1024
    finally:
        hv.stop()


def test_metadata_edited_by_an_administrator_is_picked_up(hypervisor: Hypervisor,
                                                          admin: Any) -> None:
    dom = admin.start("ebb-unit-virsh-metadata")
    assert wait_for(lambda: "ebb-unit-virsh-metadata" in hypervisor.running_domains())
    assert hypervisor.domain_settings("ebb-unit-virsh-metadata").enabled  # now cached
    # What `virsh metadata VM urn:ebb:policy:1 --key ebb --set '<vm enabled="no"/>' --live`
    # does; the relist interval is 60 s, so only the metadata-change event can refresh it.
    dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, '<vm enabled="no"/>', "ebb",
                    "urn:ebb:policy:1", libvirt.VIR_DOMAIN_AFFECT_LIVE)
    assert wait_for(lambda: not hypervisor.domain_settings("ebb-unit-virsh-metadata").enabled)


def test_only_domains_matching_the_patterns_are_seen(admin: Any) -> None:
    admin.start("ebb-unit-scope-a")
    admin.start("ebb-unit-other")
    hv = Hypervisor(URI, relist_interval_s=60.0, reconnect_initial_s=0.01,
                    reconnect_max_s=0.05, qemu_run_dir="/nonexistent",
                    domains=["ebb-unit-scope-*"])
    hv.start()
    try:
        assert hv.wait_connected(5.0)
        assert set(hv.running_domains()) == {"ebb-unit-scope-a"}
        assert [d.name for d in hv.domain_infos()] == ["ebb-unit-scope-a"]
        # Started later: the lifecycle events of other VMs are ignored too. Events
        # arrive in order, so once scope-b is seen, other-late was passed over.
        admin.start("ebb-unit-other-late")
        admin.start("ebb-unit-scope-b")
        assert wait_for(lambda: "ebb-unit-scope-b" in hv.running_domains())
        assert set(hv.running_domains()) == {"ebb-unit-scope-a", "ebb-unit-scope-b"}

        # A new scope (SIGHUP) drops what left it at once and lists what entered it.
        seen: list[frozenset[str]] = []
        hv._on_change = seen.append
        hv.set_domain_patterns(["ebb-unit-other*", "ebb-unit-scope-[b]"])
        scope = {"ebb-unit-other", "ebb-unit-other-late", "ebb-unit-scope-b"}
        assert set(hv.running_domains()) == scope
        assert hv.domain_patterns == ("ebb-unit-other*", "ebb-unit-scope-[b]")
        assert seen and seen[-1] == frozenset(scope)
    finally:
        hv.stop()


def test_a_dedicated_ebbd_manages_opted_out_vms_on_its_own_agent_channel(admin: Any) -> None:
    # VMs every other ebbd must leave alone: enabled="no", agent on another port.
    bench_xml = (DOMAIN_XML.replace('enabled="yes"', 'enabled="no"')
                 .replace("org.ebb.agent.0", "org.ebb.bench.0"))
    admin.start("ebb-unit-bench-1", xml=bench_xml)
    admin.start("ebb-unit-plain")
    dedicated = Hypervisor(URI, relist_interval_s=60.0, reconnect_initial_s=0.01,
                           reconnect_max_s=0.05, qemu_run_dir="/nonexistent",
                           domains=["ebb-unit-bench-*"], agent_channel="org.ebb.bench.0",
                           manage_opted_out=True)
    other = Hypervisor(URI, relist_interval_s=60.0, reconnect_initial_s=0.01,
                       reconnect_max_s=0.05, qemu_run_dir="/nonexistent")
    dedicated.start()
    other.start()
    try:
        assert dedicated.wait_connected(5.0) and other.wait_connected(5.0)
        assert set(dedicated.running_domains()) == {"ebb-unit-bench-1"}
        mine = dedicated.domain_settings("ebb-unit-bench-1")
        assert mine.enabled
        assert mine.channel_path == "/tmp/ebb-unit/ebb-unit-bench-1.sock"
        # Any other ebbd: the VM opted out and has no agent channel it knows.
        theirs = other.domain_settings("ebb-unit-bench-1")
        assert not theirs.enabled
        assert theirs.channel_path is None
        assert other.domain_settings("ebb-unit-plain").channel_path is not None
    finally:
        dedicated.stop()
        other.stop()
