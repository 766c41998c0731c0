"""Request dependencies: everything a route needs comes from app.state, built in the lifespan."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from edgetwin.gateway.compat import SimulatorControl
from edgetwin.gateway.config import ApiSection
from edgetwin.gateway.engine import EngineController
from edgetwin.gateway.engine.sources import ScenarioSource
from edgetwin.gateway.metrics import GatewayMetrics
from edgetwin.gateway.service import GatewayService


def _service(request: Request) -> GatewayService:
    service: GatewayService = request.app.state.service
    return service


def _metrics(request: Request) -> GatewayMetrics:
    metrics: GatewayMetrics = request.app.state.metrics
    return metrics


def _control(request: Request) -> SimulatorControl:
    control: SimulatorControl = request.app.state.control
    return control


def _engine(request: Request) -> EngineController:
    engine: EngineController = request.app.state.engine
    return engine


def _api(request: Request) -> ApiSection:
    api: ApiSection = request.app.state.config.api
    return api


def _engine_scenarios(request: Request) -> ScenarioSource:
    source: ScenarioSource = request.app.state.engine_scenarios
    return source


ServiceDep = Annotated[GatewayService, Depends(_service)]
MetricsDep = Annotated[GatewayMetrics, Depends(_metrics)]
ControlDep = Annotated[SimulatorControl, Depends(_control)]
EngineDep = Annotated[EngineController, Depends(_engine)]
ScenariosDep = Annotated[ScenarioSource, Depends(_engine_scenarios)]
ApiDep = Annotated[ApiSection, Depends(_api)]
