"""Health and metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from edgetwin.gateway.deps import MetricsDep, ServiceDep

router = APIRouter(tags=["system"])


class Health(BaseModel):
    status: str
    mqtt_connected: bool
    devices: int
    simulated: int
    reason: str | None = None


@router.get(
    "/health",
    responses={503: {"model": Health, "description": "the gateway cannot reach its broker"}},
    summary="ok, or 503 with the reason while the broker is out of reach",
)
def health(service: ServiceDep, response: Response) -> Health:
    connected = service.link.connected
    mqtt = service.config.mqtt
    answer = Health(
        status="ok" if connected else "unavailable",
        mqtt_connected=connected,
        devices=len(service.fleet.snapshot()),
        simulated=len(service.standins.active_devices()),
        # Without the broker the twin goes stale and no stand-in reading goes out: a load
        # balancer or an orchestrator must see that, not a 200.
        reason=None
        if connected
        else f"not connected to the MQTT broker at {mqtt.host}:{mqtt.port}",
    )
    if not connected:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return answer


@router.get("/metrics", response_class=Response, summary="Prometheus text exposition")
def metrics(metrics: MetricsDep) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
