"""The FastAPI application: built by a factory, its state made in the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from opentelemetry.trace import SpanKind
from prometheus_client import start_http_server

from edgetwin.agent.runtime import agent_version
from edgetwin.agent.tracing import setup_tracing
from edgetwin.gateway.compat import SimulatorControl
from edgetwin.gateway.config import GatewayConfig
from edgetwin.gateway.engine import EngineController, EngineSettings
from edgetwin.gateway.engine.link import endpoint_from_mqtt
from edgetwin.gateway.engine.metrics import EngineCollector
from edgetwin.gateway.engine.sources import Scenarios, ScenarioSource
from edgetwin.gateway.limits import RequestGuard
from edgetwin.gateway.live import LiveHub
from edgetwin.gateway.metrics import GatewayMetrics
from edgetwin.gateway.routers import (
    commands,
    compat,
    desired,
    devices,
    engine,
    fleet,
    live,
    page,
    system,
)
from edgetwin.gateway.service import GatewayService
from edgetwin.gateway.structs import answer_bad_requests, document_structs
from edgetwin.hardware.sensor import Clock

log = logging.getLogger(__name__)


def _open_engine(
    app: FastAPI,
    config: GatewayConfig,
    metrics: GatewayMetrics,
    scenarios: ScenarioSource | None,
    settings: EngineSettings | None,
) -> EngineController:
    """The scale engine, idle: it starts no process until asked."""
    engine = EngineController(
        endpoint_from_mqtt(config.mqtt, config.engine), settings or config.engine
    )
    metrics.registry.register(EngineCollector(engine))
    app.state.engine = engine
    app.state.engine_scenarios = scenarios or Scenarios(
        engine.settings.scenarios_dir, config.engine.shard_spec()
    )
    return engine


def _open_simulator_group(
    app: FastAPI, config: GatewayConfig, service: GatewayService, engine: EngineController
) -> SimulatorControl:
    """The gateway's fleet (`config.fleet_plan()`, whichever section described it) and the
    original simulator's routes' group, on the engine, with its metrics."""

    def in_manifest(ids: Iterable[str]) -> list[str]:
        return [i for i in ids if (twin := service.fleet.get(i)) and twin.in_manifest]

    control = SimulatorControl(
        engine, config.fleet_plan(), taken=in_manifest, scenarios=app.state.engine_scenarios
    )
    app.state.control = control
    metrics = service.metrics
    metrics.mqtt_sent.add_source(engine.sent_by_device)
    metrics.running_devices.set_function(
        lambda: len(service.standins.active_devices()) + control.running_count()
    )
    return control


def create_app(
    config: GatewayConfig,
    *,
    clock: Clock = time.time,
    engine_scenarios: ScenarioSource | None = None,
    engine_settings: EngineSettings | None = None,
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        observability = config.observability
        metrics = GatewayMetrics()
        tracing = setup_tracing(observability.trace_endpoint, observability.service_name)
        service = GatewayService(config, metrics, tracing, clock=clock)
        app.state.metrics = metrics
        app.state.config = config
        app.state.tracer = tracing.tracer("edgetwin.gateway.api")
        app.state.service = service
        scale_engine = _open_engine(app, config, metrics, engine_scenarios, engine_settings)
        control = _open_simulator_group(app, config, service, scale_engine)
        exporter = None
        if (
            observability.prometheus_port is not None
            and observability.prometheus_port != config.server.port
        ):
            exporter, _ = start_http_server(
                observability.prometheus_port,
                observability.prometheus_host,
                registry=metrics.registry,
            )
        hub = app.state.live = LiveHub(
            service, metrics, config.live.interval, config.live.queue, engine=scale_engine
        )
        service.start()
        control.start_at_launch()
        live_task = asyncio.create_task(hub.run(), name="live-feed")
        log.info(
            "gateway started",
            extra={
                "devices": len(service.fleet.snapshot()),
                "broker": f"{config.mqtt.host}:{config.mqtt.port}",
                "prometheus_port": observability.prometheus_port,
            },
        )
        try:
            yield
        finally:
            hub.shutdown()
            live_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await live_task
            control.stop()  # the group lives as long as the gateway
            scale_engine.close()
            service.stop()
            if exporter is not None:
                exporter.shutdown()
            tracing.shutdown()
            log.info("gateway stopped")

    app = FastAPI(
        title="edgetwin gateway",
        version=agent_version(),
        description="Digital twin of an MQTT sensor fleet; simulates every device that is missing.",
        lifespan=lifespan,
    )
    routers = [
        devices.router,
        desired.router,
        commands.router,
        fleet.router,
        live.router,
        system.router,
        compat.router,
        engine.router,
        page.router,
    ]
    for router in routers:
        app.include_router(router)
    document_structs(app)
    answer_bad_requests(app)

    # Inside `observe`, so refused requests are counted too.
    app.add_middleware(RequestGuard, routers=routers, api=config.api)

    @app.middleware("http")
    async def observe(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        tracer = request.app.state.tracer
        with tracer.start_as_current_span(
            f"{request.method} {request.url.path}", kind=SpanKind.SERVER
        ) as span:
            response = await call_next(request)
            route = request.scope.get("route")
            route_path = getattr(route, "path", "unmatched")
            span.set_attribute("http.route", route_path)
            span.set_attribute("http.response.status_code", response.status_code)
        request.app.state.metrics.http_requests.labels(
            request.method, route_path, str(response.status_code)
        ).observe(time.perf_counter() - started)
        return response

    return app
