"""OpenTelemetry set-up, imported only when a trace endpoint is configured.

An unreachable collector must cost one rate-limited warning, never a traceback per export and
never a stall of the caller: spans are exported from the SDK's batch thread, and failures are
summarised here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
    from opentelemetry.trace import Tracer

log = logging.getLogger(__name__)

WARNING_INTERVAL_SECONDS = 300.0
EXPORT_TIMEOUT_SECONDS = 3.0


class _QuietExporter:
    """Wraps the OTLP exporter: failures are counted and reported at most every few minutes."""

    def __init__(self, inner: SpanExporter, endpoint: str) -> None:
        self._inner = inner
        self._endpoint = endpoint
        self._lock = threading.Lock()
        self._last_warning = float("-inf")
        self.failed_batches = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        from opentelemetry.sdk.trace.export import SpanExportResult

        try:
            result = self._inner.export(spans)
        except Exception as exc:
            result = SpanExportResult.FAILURE
            reason = str(exc)
        else:
            reason = "collector did not accept the batch"
        if result is SpanExportResult.FAILURE:
            with self._lock:
                self.failed_batches += 1
                now = time.monotonic()
                if now - self._last_warning >= WARNING_INTERVAL_SECONDS:
                    self._last_warning = now
                    log.warning(
                        "trace export failing; spans are dropped",
                        extra={
                            "endpoint": self._endpoint,
                            "failed_batches": self.failed_batches,
                            "reason": reason,
                        },
                    )
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._inner.force_flush(timeout_millis)


class Tracing:
    """A tracer provider owned by the caller (never the global one), closed with `shutdown`."""

    def __init__(self, provider: TracerProvider | None, service_name: str) -> None:
        self._provider = provider
        self.service_name = service_name

    @property
    def enabled(self) -> bool:
        return self._provider is not None

    def tracer(self, name: str) -> Tracer:
        if self._provider is None:
            from opentelemetry.trace import NoOpTracer

            return NoOpTracer()
        return self._provider.get_tracer(name)

    def force_flush(self) -> None:
        if self._provider is not None:
            self._provider.force_flush()

    def shutdown(self) -> None:
        if self._provider is not None:
            self._provider.shutdown()


def setup_tracing(
    endpoint: str | None,
    service_name: str,
    *,
    export_timeout: float = EXPORT_TIMEOUT_SECONDS,
    **resource: Any,
) -> Tracing:
    if not endpoint:
        return Tracing(None, service_name)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # The exporter logs every failed attempt with a traceback; our wrapper reports instead.
    logging.getLogger("opentelemetry.exporter").setLevel(logging.CRITICAL)
    logging.getLogger("opentelemetry.sdk").setLevel(logging.ERROR)
    provider = TracerProvider(resource=Resource.create({"service.name": service_name, **resource}))
    exporter = _QuietExporter(OTLPSpanExporter(endpoint=endpoint, timeout=export_timeout), endpoint)
    provider.add_span_processor(BatchSpanProcessor(exporter))  # type: ignore[arg-type]
    return Tracing(provider, service_name)
