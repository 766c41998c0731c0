"""The engine's Prometheus figures, read from the controller at scrape time.

No per-device labels (a fleet has 10,000+ devices): fleet totals, a skip reason, and the
lateness histogram summed from the workers' fixed buckets.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from edgetwin.gateway.engine.controller import EngineController
from edgetwin.gateway.engine.stats import BUCKETS_PER_DECADE, LATENESS_EDGES, add_counts

# Every 10th fine edge (two per decade, 10 µs to 100 s) is enough for dashboards.
_EXPOSED = range(0, len(LATENESS_EDGES), BUCKETS_PER_DECADE // 2)


class EngineCollector(Collector):
    def __init__(self, engine: EngineController) -> None:
        self._engine = engine

    def collect(self) -> Iterator[Metric]:
        engine = self._engine
        retired = engine.retired
        stats = engine.stats()
        live = stats.state != "stopped"
        ticks = retired.ticks + (stats.ticks if live else 0)
        sent = retired.sent + (stats.sent if live else 0)
        acked = retired.acked + (stats.acked if live else 0)
        late = retired.late_skipped + (stats.late_skipped if live else 0)
        backlog = retired.backlog_skipped + (stats.backlog_skipped if live else 0)
        counts = add_counts(retired.lateness, stats.lateness_counts) if live else retired.lateness
        total = retired.lateness_sum + (stats.lateness_sum if live else 0.0)

        messages = CounterMetricFamily(
            "edgetwin_engine_messages", "Messages the scale engine handed to the socket"
        )
        messages.add_metric([], sent)
        yield messages
        acknowledged = CounterMetricFamily(
            "edgetwin_engine_acked_messages", "QoS 1 messages of the scale engine the broker acked"
        )
        acknowledged.add_metric([], acked)
        yield acknowledged
        readings = CounterMetricFamily(
            "edgetwin_engine_ticks", "Stream deadlines the scale engine served"
        )
        readings.add_metric([], ticks)
        yield readings
        skipped = CounterMetricFamily(
            "edgetwin_engine_skipped_ticks",
            "Deadlines skipped, by reason: late (behind by max_lateness, or coalesced) or "
            "backlog (socket backlog full, or not connected)",
            labels=["reason"],
        )
        skipped.add_metric(["late"], late)
        skipped.add_metric(["backlog"], backlog)
        yield skipped
        buckets = []
        cumulative = 0
        exposed = set(_EXPOSED)
        for i, count in enumerate(counts[: len(LATENESS_EDGES)]):
            cumulative += count
            if i in exposed:
                buckets.append((f"{LATENESS_EDGES[i]:.6g}", float(cumulative)))
        buckets.append(("+Inf", float(sum(counts))))
        lateness = HistogramMetricFamily(
            "edgetwin_engine_lateness_seconds",
            "Publish time minus deadline of the scale engine's readings",
        )
        lateness.add_metric([], buckets, total)
        yield lateness
        for name, help_text, value in (
            ("edgetwin_engine_devices", "Devices the scale engine simulates", stats.devices),
            ("edgetwin_engine_workers", "Worker processes of the scale engine", stats.workers),
            ("edgetwin_engine_target_rate", "Readings per second asked for", stats.target_per_s),
            (
                "edgetwin_engine_rate",
                "Messages per second delivered: handed to the socket (QoS 0) or acked (QoS 1)",
                stats.delivered_per_s,
            ),
            (
                "edgetwin_engine_scheduled_rate",
                "Readings per second the workers served, delivered or not",
                stats.scheduled_per_s,
            ),
            ("edgetwin_engine_worker_rss_bytes", "Resident memory of all workers", stats.rss_bytes),
        ):
            gauge = GaugeMetricFamily(name, help_text)
            gauge.add_metric([], value if live else 0)
            yield gauge
