"""Traces reach an OTLP/HTTP collector; a missing collector costs one warning and nothing else."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from agent.config import ObservabilitySettings
from agent.tracing import setup_tracing
from gateway.app import create_app
from gateway.broker import free_port
from gateway.config import GatewayConfig, ManifestDevice
from tests.brokers import BrokerUnderTest
from tests.fleet_helpers import bme280, mqtt_settings, poll


class Collector:
    """A real HTTP server that accepts OTLP/HTTP protobuf exports and keeps them."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                collector.requests.append(request)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def spans(self) -> list[tuple[str, str]]:
        """(service.name, span name) of every span received."""
        found = []
        for request in self.requests:
            for resource_spans in request.resource_spans:
                attributes = {
                    a.key: a.value.string_value for a in resource_spans.resource.attributes
                }
                for scope_spans in resource_spans.scope_spans:
                    found += [(attributes["service.name"], span.name) for span in scope_spans.spans]
        return found


@pytest.fixture
def collector() -> Iterator[Collector]:
    running = Collector()
    running.thread.start()
    yield running
    running.server.shutdown()
    running.server.server_close()


@pytest.mark.integration
def test_api_requests_and_sampled_publishes_are_traced(
    broker: BrokerUnderTest, collector: Collector
) -> None:
    config = GatewayConfig(
        mqtt=mqtt_settings(broker),
        observability=ObservabilitySettings(
            service_name="traced-gateway", trace_endpoint=collector.url
        ),
        presence={"startup_grace": 0.1},
        devices=[ManifestDevice(id="pi", sensors={"env": bme280(0.1)})],
    )
    with TestClient(create_app(config)) as client:
        assert client.get("/devices").status_code == 200
        assert client.get("/devices/nobody").status_code == 404
        engine = client.app.state.service.engine  # type: ignore[attr-defined]
        poll(lambda: engine.published >= 3, timeout=10, what="three simulated readings")
    # Leaving the client ran the lifespan's shutdown, which flushes the span processor.
    spans = collector.spans()
    assert ("traced-gateway", "GET /devices") in spans
    assert ("traced-gateway", "GET /devices/nobody") in spans
    simulated = [name for _, name in spans if name == "simulation.publish"]
    # One span for a sample of publishes, never one per message.
    assert len(simulated) == 1


def test_unreachable_collector_costs_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    tracing = setup_tracing(
        f"http://127.0.0.1:{free_port()}/v1/traces", "lonely", export_timeout=0.5
    )
    tracer = tracing.tracer("test")
    with caplog.at_level(logging.WARNING):
        for batch in range(3):
            with tracer.start_as_current_span(f"work-{batch}"):
                pass
            tracing.force_flush()
        tracing.shutdown()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in warnings] == ["trace export failing; spans are dropped"]
    assert not any(r.exc_info for r in caplog.records)
