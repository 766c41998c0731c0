"""Traces reach an OTLP/HTTP collector; a missing collector costs one warning and nothing else."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from edgetwin.agent.config import (
    AgentConfig,
    AgentObservability,
    AgentSection,
    ObservabilitySettings,
)
from edgetwin.agent.runtime import Agent
from edgetwin.agent.tracing import setup_tracing
from edgetwin.gateway.app import create_app
from edgetwin.gateway.broker import free_port
from edgetwin.gateway.config import GatewayConfig, ManifestDevice
from edgetwin.testing.broker import Broker
from edgetwin.testing.waiting import poll
from tests.fleet_helpers import agent_mqtt_settings, bme280, mqtt_settings


@dataclass(frozen=True)
class SpanRecord:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str


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

    def span_records(self) -> list[SpanRecord]:
        records = []
        for request in self.requests:
            for resource_spans in request.resource_spans:
                attributes = {
                    a.key: a.value.string_value for a in resource_spans.resource.attributes
                }
                for scope_spans in resource_spans.scope_spans:
                    records += [
                        SpanRecord(
                            attributes["service.name"],
                            span.name,
                            span.trace_id.hex(),
                            span.span_id.hex(),
                            span.parent_span_id.hex(),
                        )
                        for span in scope_spans.spans
                    ]
        return records

    def spans(self) -> list[tuple[str, str]]:
        """(service.name, span name) of every span received."""
        return [(record.service, record.name) for record in self.span_records()]


@pytest.fixture
def collector() -> Iterator[Collector]:
    running = Collector()
    running.thread.start()
    yield running
    running.server.shutdown()
    running.server.server_close()


@pytest.mark.integration
def test_api_requests_and_sampled_publishes_are_traced(
    broker: Broker, collector: Collector
) -> None:
    config = GatewayConfig.from_builtins(
        {
            "mqtt": mqtt_settings(broker),
            "observability": ObservabilitySettings(
                service_name="traced-gateway", trace_endpoint=collector.url
            ),
            "presence": {"startup_grace": 0.1},
            "devices": [ManifestDevice(id="pi", sensors={"env": bme280(0.1)})],
        }
    )
    with TestClient(create_app(config)) as client:
        assert client.get("/devices").status_code == 200
        assert client.get("/devices/nobody").status_code == 404
        engine = client.app.state.service.standins  # type: ignore[attr-defined]
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


@pytest.mark.integration
def test_config_push_and_its_application_share_one_trace(
    broker: Broker, collector: Collector, tmp_path: Path
) -> None:
    """The gateway's config.push span and the agent's config.apply span are one trace: the
    context travels in MQTT 5 user properties of the desired message."""
    token = "trace-token"
    config = GatewayConfig.from_builtins(
        {
            "mqtt": mqtt_settings(broker),
            "observability": {"service_name": "traced-gateway", "trace_endpoint": collector.url},
            "presence": {"startup_grace": 0.1},
            "api": {"token": token},
            "devices": [{"id": "pi", "sensors": {"env": {"driver": "bme280", "interval": 0.5}}}],
        }
    )
    agent_config = AgentConfig(
        agent=AgentSection(device_id="pi", state_dir=tmp_path, twin_wait=0),
        mqtt=agent_mqtt_settings(broker),
        observability=AgentObservability(service_name="traced-agent", trace_endpoint=collector.url),
        sensors={"env": bme280(0.5)},
    )
    agent = Agent(agent_config)
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    with TestClient(create_app(config)) as client:
        thread.start()
        try:
            poll(
                lambda: client.get("/devices/pi").json()["presence"] == "online", 10, what="online"
            )
            response = client.put(
                "/devices/pi/desired",
                json={"sensors": {"env": {"driver": "bme280", "interval": 0.3}}},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert response.status_code == 200
            poll(
                lambda: client.get("/devices/pi").json()["config"] == "in_sync", 10, what="applied"
            )
        finally:
            stop.set()
            thread.join(timeout=15)
    spans = collector.span_records()
    push = [s for s in spans if s.name == "config.push"]
    apply = [s for s in spans if s.name == "config.apply" and s.service == "traced-agent"]
    assert len(push) == 1
    assert push[0].service == "traced-gateway"
    applied = [s for s in apply if s.trace_id == push[0].trace_id]
    assert applied, (
        f"no config.apply span in the push's trace; spans: {[(s.service, s.name) for s in spans]}"
    )
    assert applied[0].parent_span_id == push[0].span_id
