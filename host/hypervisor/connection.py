"""The host's view of its VMs through libvirt.

:class:`Hypervisor` owns one libvirt connection and keeps the set of active
domains current from lifecycle events (libvirt's event loop runs in its own
thread, see :mod:`.events`), with a periodic full listing as a safety net for
any event lost while libvirtd was away. A supervisor thread reconnects with a
growing back-off when libvirtd restarts (noticed through the connection's close
callback, or through an API call failing on a dead connection) and registers
the events again.

All public methods are safe to call from any thread. Those that act on one VM
raise :class:`DomainGone` when the VM has stopped or vanished (a normal race,
not an error worth a traceback) and :class:`NotConnected` while libvirtd is out
of reach; both derive from :class:`HypervisorError`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ebb.host.hypervisor.domain_xml import (
    AGENT_CHANNEL_NAME,
    EBB_NAMESPACE,
    DomainSettings,
    DomainXmlError,
    ebb_metadata_xml,
    parse_domain_xml,
)
from ebb.host.hypervisor.events import ensure_event_loop
from ebb.host.threads import start_thread

LOG = logging.getLogger(__name__)

#: libvirt's "no limit" for memory tunables (VIR_DOMAIN_MEMORY_PARAM_UNLIMITED), KiB.
MEMORY_PARAM_UNLIMITED = 9007199254740991

_STATE_NAMES = {
    0: "nostate",
    1: "running",
    2: "blocked",
    3: "paused",
    4: "shutdown",
    5: "shutoff",
    6: "crashed",
    7: "pmsuspended",
}

# Lifecycle event types (virDomainEventType).
_EVENT_DEFINED = 0
_EVENT_UNDEFINED = 1
_EVENT_STARTED = 2
_EVENT_STOPPED = 5


class HypervisorError(Exception):
    """A libvirt operation failed; the message says on which VM and what libvirt said."""


class NotConnected(HypervisorError):
    """libvirtd is not reachable right now; the daemon keeps retrying in the background."""


class DomainGone(HypervisorError):
    """The VM stopped or was removed between listing it and acting on it."""


@dataclass(frozen=True)
class DomainInfo:
    """One active VM as libvirt sees it at ``sampled_at`` (time.time()). Memory in KiB."""

    name: str
    uuid: str
    id: int
    state: str
    max_memory_kib: int
    #: The balloon's current size (memoryStats 'actual'; dominfo's current memory when
    #: the balloon driver gives no statistics).
    balloon_cur_kib: int | None
    #: libvirt memoryStats() as returned: actual, unused, available, usable,
    #: disk_caches, swap_in, swap_out, major_fault, minor_fault, rss, last_update ...
    memory_stats: Mapping[str, int]
    qemu_pid: int | None
    settings: DomainSettings
    sampled_at: float = field(default_factory=time.time)


def _patterns(domains: Iterable[str]) -> tuple[str, ...]:
    if isinstance(domains, str):
        raise TypeError("domains must be a list of patterns, not one string")
    patterns = tuple(domains)
    if not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise ValueError(f"domains must be non-empty patterns, got {patterns!r}")
    return patterns


def memory_stats_from_bulk(bulk: Mapping[str, Any]) -> dict[str, int]:
    """``getAllDomainStats`` ``balloon.*`` fields under ``memoryStats()``'s names.

    ``balloon.current`` is memoryStats' ``actual`` and ``balloon.last-update`` its
    ``last_update``; ``balloon.maximum`` is the VM's maximum memory, not a statistic.
    """
    stats: dict[str, int] = {}
    for key, value in bulk.items():
        if not key.startswith("balloon.") or key == "balloon.maximum":
            continue
        name = key[len("balloon."):]
        name = {"current": "actual", "last-update": "last_update"}.get(name, name)
        stats[name] = int(value)
    return stats


def domain_matches(name: str, patterns: Iterable[str]) -> bool:
    """Whether a domain name matches one of the shell-style ``patterns`` (case matters)."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _libvirt() -> Any:
    import libvirt

    return libvirt


def _default_opener(uri: str) -> Any:
    # Looked up at call time so that tests' guard on libvirt.open applies.
    return _libvirt().open(uri)


class Hypervisor:
    """A self-healing libvirt connection with an event-driven list of active VMs.

    ``on_change(names)`` is called (from a libvirt thread: keep it short) with the
    new set of active domain names whenever it changes; ``changed`` is a
    :class:`threading.Event` set at the same moment, for an engine that waits on it.

    Only domains whose names match one of ``domains`` (shell-style patterns,
    ``[hypervisor] domains``) exist for it: the others are never listed, so
    nothing built on it (engine, channels, status) sees them. A VM's agent is
    on the virtio-serial port named ``agent_channel`` (``[guests]
    agent_channel``); with ``manage_opted_out`` (``[hypervisor]
    manage_opted_out``) a VM whose XML says ``<ebb:vm enabled="no">`` is read
    as enabled.
    """

    def __init__(
        self,
        uri: str = "qemu:///system",
        *,
        stats_period_s: int = 2,
        relist_interval_s: float = 30.0,
        reconnect_initial_s: float = 1.0,
        reconnect_max_s: float = 30.0,
        qemu_run_dir: Path | str = Path("/run/libvirt/qemu"),
        domains: Iterable[str] = ("*",),
        agent_channel: str = AGENT_CHANNEL_NAME,
        manage_opted_out: bool = False,
        on_change: Callable[[frozenset[str]], None] | None = None,
        opener: Callable[[str], Any] | None = None,
    ) -> None:
        self.uri = uri
        self.stats_period_s = stats_period_s
        self.relist_interval_s = relist_interval_s
        self.reconnect_initial_s = reconnect_initial_s
        self.reconnect_max_s = reconnect_max_s
        self.qemu_run_dir = Path(qemu_run_dir)
        self._patterns: tuple[str, ...] = _patterns(domains)
        self.agent_channel = agent_channel
        self.manage_opted_out = manage_opted_out
        self.changed = threading.Event()
        self._on_change = on_change
        self._opener = opener or _default_opener
        self._lock = threading.RLock()
        self._conn: Any = None
        self._callback_ids: list[int] = []
        self._close_callback_registered = False
        self._lost = False
        self._domains: dict[str, str] = {}  # name -> uuid
        self._settings_cache: dict[str, DomainSettings] = {}
        self._stats_period_set: set[str] = set()  # uuids
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._connected_event = threading.Event()
        self._thread: threading.Thread | None = None
        self.reconnects = 0

    # --- life cycle -------------------------------------------------------------

    def start(self, on_crash: Callable[[BaseException], None] | None = None) -> None:
        """Start the supervisor thread; it connects (retrying with back-off) and lists VMs.

        Returns at once: use :meth:`wait_connected` to wait for the first connection.
        The supervisor survives any exception of an attempt (logged, then retried with
        back-off); ``on_crash`` hears of it if the thread dies all the same.
        """
        if self._thread is not None:
            return
        ensure_event_loop(on_crash)
        self._stop.clear()
        self._thread = start_thread(
            "ebb-libvirt", self._supervise, LOG, "libvirt supervisor", on_crash
        )

    def connect_now(self) -> None:
        """Connect synchronously (for ``--once`` and tools); raises NotConnected on failure."""
        ensure_event_loop()
        with self._lock:
            if self._conn is not None:
                return
        self._connect()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop the supervisor and close the connection. Safe to call twice."""
        self._stop.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
        self._drop_connection(reason="stopping")

    def wait_connected(self, timeout_s: float) -> bool:
        """Wait until connected (or ``timeout_s``); True when connected."""
        return self._connected_event.wait(timeout_s)

    @property
    def connected(self) -> bool:
        """Whether a live libvirt connection is held right now."""
        with self._lock:
            return self._conn is not None and not self._lost

    def refresh(self) -> None:
        """Ask the supervisor for a full listing now (e.g. after SIGHUP)."""
        self._wake.set()

    @property
    def domain_patterns(self) -> tuple[str, ...]:
        """The patterns of the domain names managed (``[hypervisor] domains``)."""
        with self._lock:
            return self._patterns

    def manages(self, name: str) -> bool:
        """Whether the domain ``name`` is in scope (matches a pattern)."""
        return domain_matches(name, self.domain_patterns)

    def set_domain_patterns(self, domains: Iterable[str]) -> None:
        """Change the scope (on reload): domains leaving it are dropped at once,
        those entering it are listed now when connected (else at the next listing)."""
        patterns = _patterns(domains)
        with self._lock:
            if patterns == self._patterns:
                return
            self._patterns = patterns
            kept = {n: u for n, u in self._domains.items() if domain_matches(n, patterns)}
            dropped = set(self._domains) - set(kept)
            for name in dropped:
                self._settings_cache.pop(name, None)
                self._stats_period_set.discard(self._domains[name])
            self._domains = kept
            names = frozenset(kept)
        LOG.info("managing domains matching %s", ", ".join(patterns))
        if dropped:
            LOG.info("no longer managed: %s", ", ".join(sorted(dropped)))
            self._notify(names)
        if self.connected:
            try:
                self._relist()
                return
            except HypervisorError as err:
                LOG.warning("listing domains failed: %s", err)
        self._wake.set()

    # --- queries ----------------------------------------------------------------

    def running_domains(self) -> dict[str, str]:
        """Active domains (running or paused): name -> uuid. A copy."""
        with self._lock:
            return dict(self._domains)

    def domain_settings(self, name: str) -> DomainSettings:
        """ebb's per-VM settings from the live domain XML (cached until the VM changes)."""
        with self._lock:
            cached = self._settings_cache.get(name)
        if cached is not None:
            return cached
        dom = self._lookup(name)
        xml = self._call(name, "read the domain XML", dom.XMLDesc, 0)
        try:
            settings = parse_domain_xml(xml, agent_channel=self.agent_channel)
        except DomainXmlError as err:
            raise HypervisorError(f"VM {name}: {err}") from err
        if self.manage_opted_out and not settings.enabled:
            settings = dataclasses.replace(settings, enabled=True)
        with self._lock:
            if name in self._domains:
                self._settings_cache[name] = settings
        return settings

    def domain_info(self, name: str) -> DomainInfo:
        """Everything ebb needs about one active VM, read now."""
        dom = self._lookup(name)
        info = self._call(name, "read domain info", dom.info)
        state_code, max_memory_kib, current_kib = int(info[0]), int(info[1]), int(info[2])
        stats: dict[str, int] = {}
        try:
            stats = {str(k): int(v) for k, v in self._call(name, "read memory stats",
                                                            dom.memoryStats).items()}
        except DomainGone:
            raise
        except HypervisorError as err:
            # A VM without a balloon driver (or not yet booted) has no statistics.
            LOG.debug("%s", err)
        settings = self.domain_settings(name)
        uuid = settings.uuid or self._call(name, "read the UUID", dom.UUIDString)
        self._ensure_stats_period(name, dom, uuid, settings.stats_period_s)
        return DomainInfo(
            name=name,
            uuid=uuid,
            id=int(self._call(name, "read the domain id", dom.ID)),
            state=_STATE_NAMES.get(state_code, f"state-{state_code}"),
            max_memory_kib=max_memory_kib,
            balloon_cur_kib=stats.get("actual", current_kib),
            memory_stats=stats,
            qemu_pid=self.qemu_pid(name),
            settings=settings,
        )

    def domain_infos(self) -> list[DomainInfo]:
        """:class:`DomainInfo` for every active VM, skipping those that vanish meanwhile.

        Balloon figures come from one bulk ``getAllDomainStats`` call with ``NOWAIT``:
        a VM whose QEMU monitor is busy or hung then reports only its balloon size
        instead of holding up every other VM for libvirt's job timeout. Drivers
        without bulk balloon statistics (the test driver) are asked per VM.
        """
        names = self.running_domains()
        bulk = self._bulk_stats()
        infos = []
        for name in sorted(names):
            try:
                entry = bulk.get(name)
                if entry is not None and "balloon.current" in entry[1]:
                    infos.append(self._info_from_bulk(name, entry[0], entry[1]))
                else:
                    infos.append(self.domain_info(name))
            except DomainGone:
                continue
            except NotConnected:
                break
            except HypervisorError as err:
                LOG.warning("%s", err)
        return infos

    def _bulk_stats(self) -> dict[str, tuple[Any, dict[str, Any]]]:
        libvirt = _libvirt()
        try:
            conn = self._connection()
            records = conn.getAllDomainStats(
                libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_BALLOON,
                libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE
                | libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT,
            )
            return {dom.name(): (dom, dict(stats)) for dom, stats in records}
        except NotConnected:
            return {}
        except libvirt.libvirtError as err:
            if not self._connection_alive():
                self._mark_lost(err.get_error_message())
            else:
                LOG.debug("bulk domain stats unavailable: %s", err.get_error_message())
            return {}

    def _info_from_bulk(self, name: str, dom: Any, bulk: Mapping[str, Any]) -> DomainInfo:
        settings = self.domain_settings(name)
        uuid = settings.uuid or str(dom.UUIDString())
        self._ensure_stats_period(name, dom, uuid, settings.stats_period_s)
        state_code = int(bulk.get("state.state", 0))
        max_memory_kib = int(bulk.get("balloon.maximum") or settings.max_memory_kib or 0)
        return DomainInfo(
            name=name,
            uuid=uuid,
            id=int(dom.ID()),
            state=_STATE_NAMES.get(state_code, f"state-{state_code}"),
            max_memory_kib=max_memory_kib,
            balloon_cur_kib=int(bulk["balloon.current"]),
            memory_stats=memory_stats_from_bulk(bulk),
            qemu_pid=self.qemu_pid(name),
            settings=settings,
        )

    def balloon_actual_kib(self, name: str) -> int:
        """The balloon's current size, read from libvirt right now.

        ``virDomainGetInfo``'s current memory is the balloon's actual size, which
        libvirt keeps up to date from QEMU's BALLOON_CHANGE events. Reading it does
        not wait on the QEMU monitor, unlike ``memoryStats()``, so a controller
        checking a balloon right before changing it cannot hang on a busy VM.
        """
        dom = self._lookup(name)
        return int(self._call(name, "read domain info", dom.info)[2])

    def qemu_pid(self, name: str) -> int | None:
        """The VM's QEMU process id from libvirt's pid file (None when not found)."""
        try:
            text = (self.qemu_run_dir / f"{name}.pid").read_text(encoding="ascii").strip()
            return int(text)
        except (OSError, ValueError):
            return None

    def memory_soft_limit_kib(self, name: str) -> int | None:
        """The VM's live cgroup soft limit, or None when unlimited."""
        dom = self._lookup(name)
        params = self._call(name, "read memory parameters", dom.memoryParameters, 0)
        value = params.get("soft_limit")
        if value is None or int(value) >= MEMORY_PARAM_UNLIMITED:
            return None
        return int(value)

    # --- actions ----------------------------------------------------------------

    def set_balloon_target(self, name: str, target_kib: int) -> None:
        """Set the balloon target of a running VM (``setMemoryFlags(kib, AFFECT_LIVE)``)."""
        libvirt = _libvirt()
        dom = self._lookup(name)
        self._call(name, f"set the balloon to {target_kib} KiB", dom.setMemoryFlags,
                   int(target_kib), libvirt.VIR_DOMAIN_AFFECT_LIVE)

    def set_memory_soft_limit(self, name: str, soft_limit_kib: int | None) -> None:
        """Set (or with None remove) the VM's live cgroup memory soft limit."""
        libvirt = _libvirt()
        dom = self._lookup(name)
        value = MEMORY_PARAM_UNLIMITED if soft_limit_kib is None else int(soft_limit_kib)
        self._call(name, f"set the memory soft limit to {soft_limit_kib} KiB",
                   dom.setMemoryParameters, {"soft_limit": value},
                   libvirt.VIR_DOMAIN_AFFECT_LIVE)

    def set_ebb_metadata(self, name: str, *, enabled: bool = True, floor_mib: int | None = None,
                         priority: int | None = None, persistent: bool = True) -> None:
        """Write the VM's ``<ebb:vm>`` element (live, and in the saved definition)."""
        libvirt = _libvirt()
        dom = self._lookup(name)
        flags = libvirt.VIR_DOMAIN_AFFECT_LIVE
        if persistent and self._call(name, "check whether it is persistent", dom.isPersistent):
            flags |= libvirt.VIR_DOMAIN_AFFECT_CONFIG
        xml = ebb_metadata_xml(enabled=enabled, floor_mib=floor_mib, priority=priority)
        self._call(name, "write ebb metadata", dom.setMetadata,
                   libvirt.VIR_DOMAIN_METADATA_ELEMENT, xml, "ebb", EBB_NAMESPACE, flags)
        with self._lock:
            self._settings_cache.pop(name, None)

    # --- internals: calls and errors ----------------------------------------------

    def _connection(self) -> Any:
        with self._lock:
            if self._conn is None or self._lost:
                raise NotConnected(f"not connected to libvirt at {self.uri} (retrying)")
            return self._conn

    def _lookup(self, name: str) -> Any:
        conn = self._connection()
        return self._call(name, "look it up", conn.lookupByName, name)

    def _call(self, name: str, what: str, func: Callable[..., Any], *args: Any) -> Any:
        libvirt = _libvirt()
        try:
            return func(*args)
        except libvirt.libvirtError as err:
            raise self._classify(name, what, err) from err

    def _classify(self, name: str, what: str, err: Any) -> HypervisorError:
        libvirt = _libvirt()
        code = err.get_error_code()
        message = err.get_error_message() or str(err)
        if code in (libvirt.VIR_ERR_NO_DOMAIN,) or (
            code == libvirt.VIR_ERR_OPERATION_INVALID and "not running" in message
        ):
            self._forget(name)
            return DomainGone(f"VM {name}: gone while trying to {what}: {message}")
        if not self._connection_alive():
            self._mark_lost(f"call failed: {message}")
            return NotConnected(f"VM {name}: cannot {what}: lost libvirt at {self.uri}: {message}")
        return HypervisorError(f"VM {name}: cannot {what}: {message}")

    def _connection_alive(self) -> bool:
        with self._lock:
            conn = self._conn
        if conn is None:
            return False
        try:
            return bool(conn.isAlive())
        except Exception:  # any failure here means "not alive"
            return False

    def _forget(self, name: str) -> None:
        with self._lock:
            if name not in self._domains:
                return
            uuid = self._domains.pop(name)
            self._settings_cache.pop(name, None)
            self._stats_period_set.discard(uuid)
            names = frozenset(self._domains)
        self._notify(names)

    def _mark_lost(self, why: str) -> None:
        with self._lock:
            if self._lost or self._conn is None:
                return
            self._lost = True
            self._connected_event.clear()
        LOG.warning("lost the libvirt connection to %s (%s); reconnecting", self.uri, why)
        self._wake.set()

    def _notify(self, names: frozenset[str]) -> None:
        self.changed.set()
        if self._on_change is not None:
            try:
                self._on_change(names)
            except Exception:  # never let a listener break the event thread
                LOG.exception("domain-change listener failed")

    def _ensure_stats_period(self, name: str, dom: Any, uuid: str,
                             configured_s: int | None) -> None:
        """Ask the balloon driver for statistics every ``stats_period_s`` (once per run).

        A period already set in the VM's XML is the administrator's choice and is kept.
        """
        with self._lock:
            if uuid in self._stats_period_set:
                return
            self._stats_period_set.add(uuid)
        if configured_s:
            return
        libvirt = _libvirt()
        try:
            dom.setMemoryStatsPeriod(self.stats_period_s, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError as err:
            LOG.info("VM %s: cannot set the balloon statistics period to %d s: %s "
                     "(add <memballoon model='virtio'><stats period='%d'/></memballoon>)",
                     name, self.stats_period_s, err.get_error_message(), self.stats_period_s)

    # --- internals: connection supervisor -----------------------------------------

    def _supervise(self) -> None:
        backoff_s = self.reconnect_initial_s
        failures = 0
        while not self._stop.is_set():
            if not self.connected:
                try:
                    self._drop_connection(reason="reconnecting")
                    self._connect()
                    backoff_s = self.reconnect_initial_s
                    failures = 0
                except Exception as err:
                    failures += 1
                    # The first failure is news; the retries that follow are not. A
                    # surprise (not a HypervisorError) gets its traceback, but ends
                    # nothing: without this thread ebbd would never reconnect.
                    level = logging.WARNING if failures == 1 else logging.INFO
                    if isinstance(err, HypervisorError):
                        LOG.log(level, "%s; attempt %d, next in %.1f s", err, failures, backoff_s)
                    else:
                        LOG.exception("connecting to libvirt at %s failed unexpectedly; "
                                      "attempt %d, next in %.1f s", self.uri, failures, backoff_s)
                    self._stop.wait(backoff_s)
                    backoff_s = min(backoff_s * 2, self.reconnect_max_s)
                    continue
            self._wake.wait(self.relist_interval_s)
            self._wake.clear()
            if self._stop.is_set():
                break
            if self.connected:
                try:
                    self._relist()
                except HypervisorError as err:
                    LOG.warning("listing domains failed: %s", err)
                except Exception:  # the supervisor must survive surprises
                    LOG.exception("listing domains failed unexpectedly")

    def _connect(self) -> None:
        libvirt = _libvirt()
        try:
            conn = self._opener(self.uri)
        except libvirt.libvirtError as err:
            raise NotConnected(
                f"cannot connect to libvirt at {self.uri}: {err.get_error_message()} "
                "(is libvirtd running? check daemon.libvirt_uri)"
            ) from err
        if conn is None:
            raise NotConnected(f"cannot connect to libvirt at {self.uri}")
        callback_ids: list[int] = []
        close_registered = False
        try:
            try:
                conn.registerCloseCallback(self._on_close, None)
                close_registered = True
            except libvirt.libvirtError as err:
                LOG.debug("no close callback on %s: %s", self.uri, err.get_error_message())
            callback_ids.append(conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None))
            metadata_event = getattr(libvirt, "VIR_DOMAIN_EVENT_ID_METADATA_CHANGE", None)
            if metadata_event is not None:
                # Older drivers lack it: the periodic listing refreshes the cache instead.
                with contextlib.suppress(libvirt.libvirtError):
                    callback_ids.append(conn.domainEventRegisterAny(
                        None, metadata_event, self._on_metadata_change, None))
            if not self.uri.startswith("test:"):
                # Notice a libvirtd that hangs (not only one that exits).
                with contextlib.suppress(libvirt.libvirtError):
                    conn.setKeepAlive(5, 3)
        except libvirt.libvirtError as err:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()
            raise NotConnected(
                f"connected to {self.uri} but cannot register for domain events: "
                f"{err.get_error_message()}"
            ) from err
        with self._lock:
            self._conn = conn
            self._callback_ids = callback_ids
            self._close_callback_registered = close_registered
            self._lost = False
            self._stats_period_set.clear()
            self._settings_cache.clear()
        self.reconnects += 1
        LOG.info("connected to libvirt at %s", self.uri)
        self._relist()
        self._connected_event.set()

    def _drop_connection(self, reason: str) -> None:
        libvirt = _libvirt()
        with self._lock:
            conn, self._conn = self._conn, None
            callback_ids, self._callback_ids = self._callback_ids, []
            close_registered, self._close_callback_registered = (
                self._close_callback_registered, False)
            self._connected_event.clear()
        if conn is None:
            return
        LOG.debug("closing libvirt connection (%s)", reason)
        for callback_id in callback_ids:
            # A dead connection has no registrations left to remove.
            with contextlib.suppress(libvirt.libvirtError):
                conn.domainEventDeregisterAny(callback_id)
        if close_registered:
            with contextlib.suppress(libvirt.libvirtError):
                conn.unregisterCloseCallback()
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()

    def _relist(self) -> None:
        libvirt = _libvirt()
        conn = self._connection()
        try:
            domains = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
            patterns = self.domain_patterns
            current = {dom.name(): dom.UUIDString() for dom in domains
                       if domain_matches(dom.name(), patterns)}
        except libvirt.libvirtError as err:
            if not self._connection_alive():
                self._mark_lost(err.get_error_message())
                raise NotConnected(f"lost libvirt at {self.uri}") from err
            raise HypervisorError(f"cannot list domains: {err.get_error_message()}") from err
        with self._lock:
            changed = current != self._domains
            for name in set(self._domains) - set(current):
                self._settings_cache.pop(name, None)
            # The periodic listing also refreshes settings (an XML edit without an event).
            self._settings_cache.clear()
            self._domains = current
            names = frozenset(current)
        if changed:
            LOG.info("active VMs: %s", ", ".join(sorted(names)) or "none")
            self._notify(names)

    # --- libvirt callbacks (event loop thread: keep them short) -------------------

    def _on_close(self, conn: Any, reason: int, opaque: Any) -> None:
        self._mark_lost(f"connection closed, reason {reason}")

    def _on_lifecycle(self, conn: Any, dom: Any, event: int, detail: int, opaque: Any) -> None:
        try:
            name, uuid = dom.name(), dom.UUIDString()
        except Exception:  # a domain that vanished mid-callback
            self._wake.set()
            return
        if not self.manages(name):
            return  # out of scope ([hypervisor] domains): not even worth a log line
        LOG.debug("VM %s: lifecycle event %d detail %d", name, event, detail)
        with self._lock:
            self._settings_cache.pop(name, None)
            before = dict(self._domains)
            if event == _EVENT_STARTED:
                self._domains[name] = uuid
            elif event in (_EVENT_STOPPED, _EVENT_UNDEFINED):
                self._domains.pop(name, None)
                self._stats_period_set.discard(uuid)
            elif event != _EVENT_DEFINED and name not in self._domains:
                # Resumed/suspended/... for a VM we did not know: list everything again.
                self._wake.set()
            changed = before != self._domains
            names = frozenset(self._domains)
        if changed:
            LOG.info("VM %s %s", name, "started" if event == _EVENT_STARTED else "stopped")
            self._notify(names)

    def _on_metadata_change(self, conn: Any, dom: Any, mtype: int, nsuri: Any,
                            opaque: Any) -> None:
        try:
            name = dom.name()
        except Exception:
            return
        with self._lock:
            self._settings_cache.pop(name, None)
