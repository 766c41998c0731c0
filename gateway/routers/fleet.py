"""/fleet: the whole fleet at a glance."""

from __future__ import annotations

from collections import Counter

from fastapi import APIRouter
from pydantic import BaseModel

from edgetwin.gateway.deps import ServiceDep

router = APIRouter(tags=["fleet"])


class FleetSummary(BaseModel):
    devices: int
    in_manifest: int
    by_presence: dict[str, int]
    simulated_devices: int
    simulated_streams: int
    config: dict[str, int]


@router.get("/fleet", summary="Counts by presence, simulation and config sync")
def fleet_summary(service: ServiceDep) -> FleetSummary:
    twins = service.fleet.snapshot()
    streams = sum(len(service.standins.simulated_streams(t.id)) for t in twins)
    return FleetSummary(
        devices=len(twins),
        in_manifest=sum(t.in_manifest for t in twins),
        by_presence=dict(Counter(t.presence.value for t in twins)),
        simulated_devices=len(service.standins.active_devices()),
        simulated_streams=streams,
        config=dict(Counter(t.config_sync() for t in twins if t.in_manifest)),
    )
