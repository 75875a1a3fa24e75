"""Prometheus metrics of ebbd: host and per-VM gauges, action counters, tick timing.

Two sources feed one private :class:`~prometheus_client.CollectorRegistry`
(never the process-global one, so tests and embedders get exactly ebb's metrics):

- the daemon's status document (the ``ebbctl status --json`` shape), read at
  scrape time by :class:`StatusCollector`: every gauge is as fresh as the
  status, and a VM that goes away disappears from the next scrape;
- the tick records, through :class:`MetricsObserver.on_tick`: counters of
  ticks, actions by kind and rule, policy errors, and the tick duration
  histogram.

Quantities are exposed in bytes and seconds (Prometheus conventions), not the
KiB ebb uses inside. The names are listed in docs/observability.md.

The text is served through the control socket's ``metrics`` command, and on
an opt-in loopback HTTP port (:class:`MetricsServer`, config ``[metrics]
listen``). The two readers are not the same people: the control socket is
mode 0660 for group ``ebb`` (like ``ebbctl status``, which shows every VM
anyway), while any local user can fetch a loopback port. So the HTTP endpoint
serves host-wide and daemon metrics only, without a series per VM (whose name
and memory would tell one tenant about the others), unless
``[metrics] per_vm = true`` says whoever reaches the port may see them.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import socket
import socketserver
import threading
from typing import Any, Callable, Dict, Iterable, Iterator, Mapping, Optional, Tuple
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from ebb.host.kinds import CHANGED_OUTCOMES, GuestState
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    make_wsgi_app,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

LOG = logging.getLogger(__name__)

StatusSource = Callable[[], Mapping[str, Any]]

BYTES_PER_KIB = 1024

#: Outcomes of a balloon change that count as an action (``applied`` entries).
ACTION_OUTCOMES = CHANGED_OUTCOMES

#: Tick duration buckets (seconds): a tick normally takes a few ms; a slow
#: libvirt makes it take seconds.
TICK_DURATION_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                           2.5, 5.0, 10.0)


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)):
        return float(value)
    return None


def _bytes(kib: Any) -> Optional[float]:
    value = _number(kib)
    return None if value is None else value * BYTES_PER_KIB


# (metric name, help, path into the status document, converter)
_HOST_GAUGES: Tuple[Tuple[str, str, Tuple[str, ...], Callable[[Any], Optional[float]]], ...] = (
    ("ebb_host_memory_total_bytes", "Host memory: MemTotal less reserved hugepages.",
     ("mem_total_kib",), _bytes),
    ("ebb_host_memory_free_bytes", "Host MemFree.", ("mem_free_kib",), _bytes),
    ("ebb_host_memory_freeable_bytes", "Host MemFree+Buffers+Cached (the article's "
     "freeable memory).", ("freeable_kib",), _bytes),
    ("ebb_host_memory_available_bytes", "Host MemAvailable.", ("mem_available_kib",), _bytes),
    ("ebb_host_swap_total_bytes", "Host SwapTotal.", ("swap_total_kib",), _bytes),
    ("ebb_host_swap_used_bytes", "Host swap in use (SwapTotal-SwapFree).",
     ("swap_used_kib",), _bytes),
    ("ebb_host_swap_in_pages_per_second", "Host pages swapped in per second (pswpin rate).",
     ("swap_in_per_s",), _number),
    ("ebb_host_swap_out_pages_per_second", "Host pages swapped out per second (pswpout rate).",
     ("swap_out_per_s",), _number),
    ("ebb_host_memory_pressure_some_avg10", "Host memory PSI 'some' avg10, percent of time.",
     ("psi_some_avg10",), _number),
    ("ebb_host_memory_pressure_level", "Host pressure level ebbd judged (0 none, 1 low, "
     "2 high, 3 critical; docs/policy.md).", ("pressure_level",), _number),
    ("ebb_host_ksm_run", "KSM run mode (/sys/kernel/mm/ksm/run: 0 stopped, 1 running).",
     ("ksm", "run"), _number),
    ("ebb_host_ksm_pages_to_scan", "KSM pages scanned per wake-up.",
     ("ksm", "pages_to_scan"), _number),
    ("ebb_host_ksm_sleep_seconds", "KSM sleep between scans.", ("ksm", "sleep_millisecs"),
     lambda ms: None if _number(ms) is None else float(ms) / 1000.0),
    ("ebb_host_ksm_pages_shared", "KSM shared pages (distinct pages kept).",
     ("ksm", "pages_shared"), _number),
    ("ebb_host_ksm_pages_sharing", "KSM pages sharing (pages deduplicated away).",
     ("ksm", "pages_sharing"), _number),
)

_VM_GAUGES: Tuple[Tuple[str, str, Tuple[str, ...], Callable[[Any], Optional[float]]], ...] = (
    ("ebb_vm_balloon_current_bytes", "Guest memory as the balloon leaves it now (libvirt "
     "'actual').", ("balloon_cur_kib",), _bytes),
    ("ebb_vm_balloon_target_bytes", "Balloon target last set by ebbd.",
     ("balloon_target_kib",), _bytes),
    ("ebb_vm_balloon_max_bytes", "Guest maximum memory (balloon fully deflated).",
     ("balloon_max_kib",), _bytes),
    ("ebb_vm_floor_bytes", "Least memory ebbd will leave the guest.", ("floor_kib",), _bytes),
    ("ebb_vm_offer_bytes", "Memory the guest agent offers to give back.", ("offer_kib",),
     _bytes),
    ("ebb_vm_need_bytes", "Memory the guest agent asks for.", ("need_kib",), _bytes),
    ("ebb_vm_memory_available_bytes", "Guest MemAvailable as its agent reports it.",
     ("mem_available_kib",), _bytes),
    ("ebb_vm_memory_pressure_some_avg10", "Guest memory PSI 'some' avg10, percent of time.",
     ("psi_some_avg10",), _number),
    ("ebb_vm_agent_connected", "1 when the guest agent is connected.",
     ("agent", "connected"), _number),
    ("ebb_vm_report_age_seconds", "Age of the guest agent's newest report.",
     ("agent", "last_report_age_s"), _number),
    ("ebb_vm_managed", "1 when ebbd manages this VM (metadata enabled, not excluded).",
     ("managed",), _number),
    ("ebb_vm_free_page_reporting", "1 when the VM's balloon reports the pages its guest "
     "frees to the host (freePageReporting='on').", ("free_page_reporting",), _number),
    ("ebb_vm_autodeflate", "1 when QEMU deflates the VM's balloon on guest OOM "
     "(autodeflate='on').", ("autodeflate",), _number),
    ("ebb_vm_rss_bytes", "Resident memory of the VM's QEMU process on the host: what the "
     "guest really costs it.", ("rss_kib",), _bytes),
)

#: The cooperation states a VM can be in (``ebb_vm_cooperation`` has one series each).
COOPERATION_STATES = (GuestState.OK, GuestState.NO_AGENT, GuestState.STALE, GuestState.BACKOFF,
                      GuestState.STUCK, GuestState.UNCOOPERATIVE)


def _dig(data: Mapping[str, Any], path: Iterable[str]) -> Any:
    value: Any = data
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


class StatusCollector(Collector):
    """Gauges read from the daemon's status document at scrape time."""

    def __init__(self, status_source: StatusSource, per_vm: bool = True) -> None:
        self._status_source = status_source
        self._per_vm = per_vm

    def describe(self) -> Iterator[Metric]:
        # Nothing up front: registering must not ask a daemon that is still starting.
        return iter(())

    def collect(self) -> Iterator[Metric]:
        try:
            status = self._status_source()
        except Exception as err:  # a scrape must not take the daemon's status code down
            LOG.warning("metrics: cannot read the daemon status: %s", err)
            return
        yield from self._daemon_metrics(status)
        host = status.get("host") or {}
        for name, doc, path, convert in _HOST_GAUGES:
            value = convert(_dig(host, path))
            if value is not None:
                yield GaugeMetricFamily(name, doc, value=value)
        if self._per_vm:
            yield from self._vm_metrics(status.get("vms") or [])

    @staticmethod
    def _daemon_metrics(status: Mapping[str, Any]) -> Iterator[Metric]:
        daemon = status.get("daemon") or {}
        info = GaugeMetricFamily("ebb_build_info", "ebbd version (value is always 1).",
                                 labels=["version"])
        info.add_metric([str(daemon.get("version", "unknown"))], 1.0)
        yield info
        for name, doc, path in (
            ("ebb_daemon_paused", "1 while ebbd is paused (deciding nothing).", ("paused",)),
            ("ebb_daemon_dry_run", "1 when ebbd decides but applies nothing.", ("dry_run",)),
            ("ebb_libvirt_connected", "1 while ebbd is connected to libvirt.",
             ("libvirt", "connected")),
            ("ebb_daemon_uptime_seconds", "Seconds since ebbd started.", ("uptime_s",)),
        ):
            value = _number(_dig(daemon, path))
            if value is not None:
                yield GaugeMetricFamily(name, doc, value=value)
        errors = _dig(daemon, ("policy", "errors"))
        if isinstance(errors, list):
            yield GaugeMetricFamily(
                "ebb_policy_load_errors",
                "Errors in the policy files last loaded (0 when the policy is good).",
                value=float(len(errors)),
            )

    @staticmethod
    def _vm_metrics(vms: Iterable[Mapping[str, Any]]) -> Iterator[Metric]:
        families: Dict[str, GaugeMetricFamily] = {
            name: GaugeMetricFamily(name, doc, labels=["vm"]) for name, doc, _, _ in _VM_GAUGES
        }
        cooperation = GaugeMetricFamily(
            "ebb_vm_cooperation",
            "1 for the VM's current cooperation state, 0 for the others.",
            labels=["vm", "state"],
        )
        protocol_errors = CounterMetricFamily(
            "ebb_vm_guest_protocol_errors",
            "Protocol errors seen on the VM's guest channel since ebbd started.",
            labels=["vm"],
        )
        for vm in vms:
            name = str(vm.get("name", "?"))
            for metric, _, path, convert in _VM_GAUGES:
                value = convert(_dig(vm, path))
                if value is not None:
                    families[metric].add_metric([name], value)
            state = vm.get("cooperation")
            if isinstance(state, str):
                for known in COOPERATION_STATES:
                    cooperation.add_metric([name, known], 1.0 if known == state else 0.0)
            errors = _number(_dig(vm, ("agent", "protocol_errors")))
            if errors is not None:
                protocol_errors.add_metric([name], errors)
        yield from families.values()
        yield cooperation
        yield protocol_errors


def _get(record: Any, name: str) -> Any:
    """Field ``name`` of a tick record, whether it is a TickRecord or its JSON dict."""
    if isinstance(record, Mapping):
        return record.get(name)
    return getattr(record, name, None)


def _as_dict(item: Any) -> Mapping[str, Any]:
    if isinstance(item, Mapping):
        return item
    to_dict = getattr(item, "to_dict", None)
    if callable(to_dict):
        result = to_dict()
        if isinstance(result, Mapping):
            return result
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        return dataclasses.asdict(item)
    return vars(item) if hasattr(item, "__dict__") else {}


class EbbMetrics:
    """ebbd's metrics: a private registry, the counters a tick updates, the status gauges.

    ``status_source`` returns the status document (``ebbctl status --json``);
    without it only the tick counters and histogram are exposed.

    Two registries share the counters: :attr:`registry` has everything (the
    control socket's ``metrics``), :attr:`http_registry` what the HTTP
    endpoint serves, which has the per-VM series only when ``http_per_vm``.
    """

    def __init__(self, status_source: Optional[StatusSource] = None, *,
                 http_per_vm: bool = False) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.http_registry = CollectorRegistry(auto_describe=True)
        self.ticks = Counter("ebb_ticks", "Ticks run (policy evaluations).",
                             registry=self.registry)
        self.tick_duration = Histogram(
            "ebb_tick_duration_seconds",
            "Time from a tick's start to its decisions applied.",
            buckets=TICK_DURATION_BUCKETS_S,
            registry=self.registry,
        )
        self.decisions = Counter(
            "ebb_decisions",
            "Governor decisions (one per managed VM and tick), by kind and deciding rule.",
            labelnames=["kind", "rule"],
            registry=self.registry,
        )
        self.actions = Counter(
            "ebb_actions",
            "Balloon targets sent to libvirt (or that would be, in a dry run), by kind and rule.",
            labelnames=["kind", "rule"],
            registry=self.registry,
        )
        self.policy_errors = Counter(
            "ebb_policy_errors",
            "Ticks where the policy failed (the last good decisions were kept).",
            registry=self.registry,
        )
        self.yields = Counter(
            "ebb_yields",
            "Yields ebbd judged, by outcome (returned: the VM's QEMU RSS fell; nothing; "
            "timeout; failed).",
            labelnames=["outcome"],
            registry=self.registry,
        )
        self.yield_returned = Counter(
            "ebb_yield_returned_bytes",
            "Memory yields gave back to the host, measured by the fall of QEMU RSS.",
            registry=self.registry,
        )
        for counter in self.tick_metrics():
            self.http_registry.register(counter)
        if status_source is not None:
            self.registry.register(StatusCollector(status_source))
            self.http_registry.register(StatusCollector(status_source, per_vm=http_per_vm))

    def tick_metrics(self) -> Tuple[Collector, ...]:
        """The counters and the histogram each tick updates."""
        return (self.ticks, self.tick_duration, self.decisions, self.actions,
                self.policy_errors, self.yields, self.yield_returned)

    def on_tick(self, record: Any) -> None:
        """Count one tick (a TickRecord or its JSON dict). Never raises."""
        try:
            self._count(record)
        except Exception:  # metrics must never stop a tick
            LOG.exception("metrics: cannot account for a tick")

    def _count(self, record: Any) -> None:
        self.ticks.inc()
        duration_ms = _number(_get(record, "duration_ms"))
        if duration_ms is not None:
            self.tick_duration.observe(duration_ms / 1000.0)
        if _get(record, "policy_error"):
            self.policy_errors.inc()
        for decision in _get(record, "decisions") or ():
            fields = _as_dict(decision)
            self.decisions.labels(kind=str(fields.get("kind") or "unknown"),
                                  rule=str(fields.get("rule") or "unknown")).inc()
        for entry in _get(record, "applied") or ():
            fields = _as_dict(entry)
            # Balloon entries only (KSM and memtune entries name their controller).
            if "controller" in fields or fields.get("outcome") not in ACTION_OUTCOMES:
                continue
            self.actions.labels(kind=str(fields.get("kind") or "unknown"),
                                rule=str(fields.get("rule") or "unknown")).inc()
        for event in _get(record, "yields") or ():
            fields = _as_dict(event)
            if fields.get("kind") != "yield-result":
                continue
            self.yields.labels(outcome=str(fields.get("outcome") or "unknown")).inc()
            returned = _bytes(_as_dict(fields.get("inputs") or {}).get("returned_kib"))
            if returned is not None and returned > 0:
                self.yield_returned.inc(returned)

    def exposition(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

    def http_exposition(self) -> bytes:
        """What the HTTP endpoint serves (per-VM series only with ``http_per_vm``)."""
        return generate_latest(self.http_registry)

    def text(self) -> str:
        """:meth:`exposition` as str (what the control socket's ``metrics`` returns)."""
        return self.exposition().decode("utf-8")


class MetricsExport:
    """What ebbd exposes: the tick counters of an :class:`EbbMetrics` and the status gauges.

    Built after the engine (whose observer the counters are) and the status
    document it reads, so that neither needs the other to exist first. Its two
    registries are :class:`EbbMetrics`'s: everything, and what HTTP serves.
    """

    def __init__(self, counters: EbbMetrics, status_source: StatusSource, *,
                 http_per_vm: bool = False) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.http_registry = CollectorRegistry(auto_describe=True)
        for metric in counters.tick_metrics():
            self.registry.register(metric)
            self.http_registry.register(metric)
        self.registry.register(StatusCollector(status_source))
        self.http_registry.register(StatusCollector(status_source, per_vm=http_per_vm))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def http_exposition(self) -> bytes:
        return generate_latest(self.http_registry)

    def text(self) -> str:
        return self.exposition().decode("utf-8")


# -- HTTP -------------------------------------------------------------------


class MetricsListenError(ValueError):
    """``[metrics] listen`` is not an address ebbd may or can listen on."""


def parse_listen(listen: str, allow_remote: bool = False) -> Tuple[str, int]:
    """``"127.0.0.1:9677"`` / ``"[::1]:9677"`` / ``"localhost:9677"`` -> (address, port).

    Refuses an address that is not loopback unless ``allow_remote``: metrics
    reveal every VM's name and memory, and the endpoint has no authentication.
    """
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise MetricsListenError(
            f"metrics.listen: expected HOST:PORT such as \"127.0.0.1:9677\", got {listen!r}"
        )
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost":
        host = "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise MetricsListenError(
            f"metrics.listen: {host!r} is not an IP address; use 127.0.0.1 or ::1"
        ) from None
    if not address.is_loopback and not allow_remote:
        raise MetricsListenError(
            f"metrics.listen: {host} is not a loopback address; the metrics endpoint has no "
            "authentication, so ebbd only listens on 127.0.0.1 or ::1 unless "
            "metrics.allow_remote = true"
        )
    return str(address), int(port_text)


class _QuietHandler(WSGIRequestHandler):
    """Logs each scrape at debug level instead of printing it on stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        LOG.debug("metrics: %s %s", self.address_string(), format % args)


class _HTTPServer(socketserver.ThreadingMixIn, WSGIServer):
    """One thread per scrape, so a slow client does not hold up the next one."""

    daemon_threads = True


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class MetricsServer:
    """Serves ``/metrics`` of ``metrics`` over HTTP on one address, in a thread.

    The serving thread is started with :func:`ebb.host.threads.start_thread`, like
    ebbd's other services, so that its death is logged and reported (ebbd stops)
    instead of the endpoint vanishing in silence.
    """

    def __init__(self, metrics: EbbMetrics | MetricsExport, listen: str,
                 allow_remote: bool = False) -> None:
        self.address, self.port = parse_listen(listen, allow_remote)
        self._metrics = metrics
        self._server: Optional[WSGIServer] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def thread(self) -> Optional[threading.Thread]:
        """The serving thread while it runs."""
        return self._thread

    def start(self, on_crash: Optional[Callable[[BaseException], None]] = None) -> None:
        """Bind and serve; raises OSError (with the address in it) when the port is taken.

        ``on_crash`` is told if the serving thread dies.
        """
        from ebb.host.threads import start_thread

        server_class = _HTTPServer6 if ":" in self.address else _HTTPServer
        try:
            server = make_server(self.address, self.port,
                                 make_wsgi_app(self._metrics.http_registry),
                                 server_class=server_class, handler_class=_QuietHandler)
        except OSError as err:
            raise OSError(
                err.errno,
                f"metrics: cannot listen on {self.address}:{self.port}: {err.strerror}; "
                "change [metrics] listen or stop what uses the port",
            ) from err
        self._server = server
        # Port 0 picks a free port (tests): report the real one.
        self.port = int(server.server_address[1])
        self._thread = start_thread("ebbd-metrics", server.serve_forever, LOG,
                                    "metrics HTTP server", on_crash)
        LOG.info("metrics on http://%s/metrics", self.url_host())

    def url_host(self) -> str:
        """``address:port`` as it goes in a URL."""
        if ":" in self.address:
            return f"[{self.address}]:{self.port}"
        return f"{self.address}:{self.port}"

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is not None:
            # shutdown() waits for serve_forever to return: not if its thread is gone.
            if self._thread is not None and self._thread.is_alive():
                self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None

