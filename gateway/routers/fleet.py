"""/fleet: the whole fleet at a glance."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from edgetwin.gateway.deps import ServiceDep
from edgetwin.gateway.views import fleet_counts

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
    return FleetSummary(**fleet_counts(service.fleet, service.played))
