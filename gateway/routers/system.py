"""Health and metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from gateway.deps import MetricsDep, ServiceDep

router = APIRouter(tags=["system"])


class Health(BaseModel):
    status: str
    mqtt_connected: bool
    devices: int
    simulated: int


@router.get("/health")
def health(service: ServiceDep) -> Health:
    return Health(
        status="ok",
        mqtt_connected=service.link.connected,
        devices=len(service.fleet.snapshot()),
        simulated=len(service.standins.active_devices()),
    )


@router.get("/metrics", response_class=Response, summary="Prometheus text exposition")
def metrics(metrics: MetricsDep) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
