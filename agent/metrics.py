"""The agent's Prometheus metrics, served on an optional port.

prometheus_client is imported only when a port is configured: an agent nobody scrapes should
not pay for it in memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable

    from prometheus_client import CollectorRegistry


class AgentMetrics(Protocol):
    def reading(self, sensor: str, seconds: float) -> None: ...
    def sensor_error(self, sensor: str) -> None: ...
    def published(self, count: int = 1) -> None: ...
    def publish_failed(self, count: int = 1) -> None: ...
    def reconnected(self) -> None: ...
    def config(self, outcome: str) -> None: ...
    def committed(self, seconds: float) -> None: ...
    def close(self) -> None: ...


class NoMetrics:
    def reading(self, sensor: str, seconds: float) -> None:
        pass

    def sensor_error(self, sensor: str) -> None:
        pass

    def published(self, count: int = 1) -> None:
        pass

    def publish_failed(self, count: int = 1) -> None:
        pass

    def reconnected(self) -> None:
        pass

    def config(self, outcome: str) -> None:
        pass

    def committed(self, seconds: float) -> None:
        pass

    def close(self) -> None:
        pass


class PrometheusMetrics:
    def __init__(
        self,
        port: int,
        host: str,
        *,
        outbox_depth: Callable[[], float],
        outbox_dropped: Callable[[], float],
        storage_failing: Callable[[], float] = lambda: 0.0,
        unstored: Callable[[], float] = lambda: 0.0,
    ) -> None:
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Gauge,
            Histogram,
            ProcessCollector,
            start_http_server,
        )

        self.registry: CollectorRegistry = CollectorRegistry()
        registry = self.registry
        # The agent's own CPU and memory (process_cpu_seconds_total, process_resident_memory_
        # bytes, ...): the figures its 1 % of a core and ~32 MiB budget are judged by. A
        # registry of our own does not get the default registry's process collector.
        ProcessCollector(registry=registry)
        self._readings = Histogram(
            "edgetwin_agent_read_seconds",
            "Sensor read latency; the count is the number of readings",
            ["sensor"],
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5),
            registry=registry,
        )
        self._sensor_errors = Counter(
            "edgetwin_agent_sensor_errors", "Failed sensor reads", ["sensor"], registry=registry
        )
        self._published = Counter(
            "edgetwin_agent_published", "Readings acknowledged by the broker", registry=registry
        )
        self._failed = Counter(
            "edgetwin_agent_publish_failed", "Publishes the client refused", registry=registry
        )
        self._reconnects = Counter(
            "edgetwin_agent_reconnects",
            "Connections to the broker after the first",
            registry=registry,
        )
        self._configs = Counter(
            "edgetwin_agent_config_messages",
            "Desired configs by outcome",
            ["outcome"],
            registry=registry,
        )
        # An fsync on an SD card is the agent's slowest step: a card wearing out shows here first.
        self._commits = Histogram(
            "edgetwin_agent_commit_seconds",
            "Outbox commit latency (one transaction, fsync included), of commits that wrote",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=registry,
        )
        depth = Gauge(
            "edgetwin_agent_outbox_depth", "Readings waiting in the outbox", registry=registry
        )
        depth.set_function(outbox_depth)
        dropped = Gauge(
            "edgetwin_agent_outbox_dropped",
            "Readings dropped at the outbox bound, ever",
            registry=registry,
        )
        dropped.set_function(outbox_dropped)
        failing = Gauge(
            "edgetwin_agent_storage_failing",
            "1 while the outbox cannot write to the state directory (disk full, I/O error)",
            registry=registry,
        )
        failing.set_function(storage_failing)
        not_stored = Gauge(
            "edgetwin_agent_unstored",
            "Readings published without reaching the outbox while it could not write, "
            "since the agent started",
            registry=registry,
        )
        not_stored.set_function(unstored)
        self._server, self._thread = start_http_server(port, host, registry=registry)

    def reading(self, sensor: str, seconds: float) -> None:
        self._readings.labels(sensor).observe(seconds)

    def sensor_error(self, sensor: str) -> None:
        self._sensor_errors.labels(sensor).inc()

    def published(self, count: int = 1) -> None:
        self._published.inc(count)

    def publish_failed(self, count: int = 1) -> None:
        self._failed.inc(count)

    def reconnected(self) -> None:
        self._reconnects.inc()

    def config(self, outcome: str) -> None:
        self._configs.labels(outcome).inc()

    def committed(self, seconds: float) -> None:
        self._commits.observe(seconds)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
