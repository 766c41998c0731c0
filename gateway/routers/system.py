"""Health, metrics, and the gateways on this prefix."""

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
    # This gateway's id, and the gateways on its prefix it sees live, itself included.
    gateway: str
    gateways_live: int


class GatewayView(BaseModel):
    """A live gateway, as its lease on the broker describes it."""

    id: str
    session: str
    since: float  # when this life of it started (seconds since the Unix epoch)
    ts: float  # its last birth
    version: str
    api: str | None
    this: bool  # the gateway that answers


class GatewaysView(BaseModel):
    this: str  # the answering gateway's id
    session: str  # its session, drawn at its start
    gateways: list[GatewayView]


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
        simulated=len(service.played.active_devices()),
        # Without the broker the twin goes stale and no stand-in reading goes out: a load
        # balancer or an orchestrator must see that, not a 200.
        reason=None
        if connected
        else f"not connected to the MQTT broker at {mqtt.host}:{mqtt.port}",
        gateway=service.gateway_id,
        gateways_live=len(service.membership.live_ids()),
    )
    if not connected:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return answer


@router.get("/metrics", response_class=Response, summary="Prometheus text exposition")
def metrics(metrics: MetricsDep) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/gateways",
    summary="the gateways on this prefix that this one sees live, from their leases",
)
def gateways(service: ServiceDep) -> GatewaysView:
    # Each gateway folds the same leases, so every one lists the same gateways once the
    # broker has delivered them; the device owner function (gateway/membership.py) runs
    # over these ids.
    return GatewaysView(
        this=service.gateway_id,
        session=service.session,
        gateways=[
            GatewayView(
                id=member.id,
                session=member.session,
                since=member.since,
                ts=member.ts,
                version=member.version,
                api=member.api,
                this=member.id == service.gateway_id and member.session == service.session,
            )
            for member in service.membership.members()
        ],
    )
