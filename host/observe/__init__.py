"""Observability: metrics, the tick trace, replay, plots and ``ebbctl top``.

The daemon's composition root builds it in two steps, because the engine
feeds the metrics while the status gauges read the engine::

    ticks = build_tick_observers(config)            # metrics counters, trace
    engine = Engine(..., observers=ticks.observers)
    observability = build_observability(config, status_source=status, tick_observers=ticks)
    observability.start()                           # metrics HTTP, when configured
    ...                                             # control socket "metrics":
    observability.metrics_text()                    #   the exposition text
    ...
    observability.stop()

Nothing here imports matplotlib or rich at daemon start: plot and top are
loaded by ``ebbctl`` only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional

from ebb.host.observe.metrics import EbbMetrics, MetricsExport, MetricsServer, StatusSource
from ebb.host.observe.trace import TraceWriter

LOG = logging.getLogger(__name__)

__all__ = ["Observability", "TickObservers", "build_observability", "build_observers",
           "build_tick_observers"]


@dataclass
class TickObservers:
    """What the engine tells of every tick: the metrics counters and the trace."""

    metrics: EbbMetrics
    trace: Optional[TraceWriter] = None

    @property
    def observers(self) -> List[Any]:
        return [self.metrics] + ([self.trace] if self.trace is not None else [])


def build_tick_observers(config: Any) -> TickObservers:
    """The metrics counters (always) and the trace (``[trace] path``) from ebbd's config."""
    ticks = TickObservers(metrics=EbbMetrics())
    trace_config = getattr(config, "trace", None)
    trace_path = str(getattr(trace_config, "path", "") or "")
    if trace_config is not None and trace_path:
        ticks.trace = TraceWriter(
            trace_path,
            max_bytes=int(trace_config.max_bytes),
            keep_files=int(trace_config.keep_files),
        )
        LOG.info("tracing ticks to %s (%d bytes per file, %d older files kept)",
                 trace_path, trace_config.max_bytes, trace_config.keep_files)
    return ticks


@dataclass
class Observability:
    """What ebbd runs for observability: tick observers, metrics and their HTTP server."""

    metrics: EbbMetrics
    trace: Optional[TraceWriter] = None
    server: Optional[MetricsServer] = None
    observers: List[Any] = field(default_factory=list)
    #: The counters with the status gauges (None without a status source).
    export: Optional[MetricsExport] = None

    def start(self, on_crash: Optional[Callable[[BaseException], None]] = None) -> None:
        """Start the metrics HTTP server when one is configured.

        Raises OSError naming the address when the port cannot be bound: a
        configured endpoint that silently does not exist would be worse.
        ``on_crash`` is told if the server's thread dies later.
        """
        if self.server is not None:
            self.server.start(on_crash=on_crash)

    def stop(self) -> None:
        """Stop the HTTP server and close the trace (safe to call twice)."""
        if self.server is not None:
            self.server.stop()
        if self.trace is not None:
            self.trace.close()

    def metrics_text(self) -> str:
        """The Prometheus exposition text (for the control socket's ``metrics`` command)."""
        return str((self.export or self.metrics).text())


def build_observability(config: Any, status_source: Optional[StatusSource] = None,
                        tick_observers: Optional[TickObservers] = None) -> Observability:
    """Build metrics (always), the trace (``[trace] path``) and the metrics server
    (``[metrics] listen``) from ebbd's config.

    ``tick_observers`` are the engine's (built by :func:`build_tick_observers`
    when not given). ``status_source`` returns the ``ebbctl status --json``
    document; the host and per-VM gauges come from it. Raises
    ``MetricsListenError`` (a ValueError) for a listen address that is not allowed.
    """
    ticks = tick_observers or build_tick_observers(config)
    metrics_config = getattr(config, "metrics", None)
    export = None
    if status_source is not None:
        export = MetricsExport(ticks.metrics, status_source,
                               http_per_vm=bool(getattr(metrics_config, "per_vm", False)))
    observability = Observability(metrics=ticks.metrics, trace=ticks.trace,
                                  observers=ticks.observers, export=export)
    listen = str(getattr(metrics_config, "listen", "") or "")
    if listen:
        allow_remote = bool(getattr(metrics_config, "allow_remote", False))
        observability.server = MetricsServer(export or ticks.metrics, listen,
                                             allow_remote=allow_remote)
    return observability


def build_observers(config: Any, status_source: Optional[StatusSource] = None) -> List[Any]:
    """Just the tick observers of :func:`build_observability` (metrics, trace)."""
    return build_observability(config, status_source).observers
