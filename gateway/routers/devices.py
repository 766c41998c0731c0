"""/devices: the fleet, one entry per device the gateway knows of."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, HTTPException, Path
from pydantic import BaseModel

from agent.contract import ID_PATTERN, Server
from gateway.deps import ServiceDep
from gateway.fleet import DeviceRecord

router = APIRouter(prefix="/devices", tags=["devices"])


class DeviceView(BaseModel):
    id: str
    in_manifest: bool
    presence: Literal["online", "offline", "unknown"]
    served_by: Server | None
    simulated: bool
    sensors: list[str]
    boot: int | None
    agent_version: str | None
    last_seen: float | None
    site: str | None
    labels: dict[str, str]

    @classmethod
    def of(cls, record: DeviceRecord, simulated: bool) -> DeviceView:
        return cls(
            id=record.id,
            in_manifest=record.in_manifest,
            presence=record.presence.value,
            served_by=record.served_by,
            simulated=simulated,
            sensors=sorted(record.sensors),
            boot=record.boot,
            agent_version=record.agent_version,
            last_seen=record.last_seen,
            site=record.site,
            labels=record.labels,
        )


@router.get("", summary="Every device: presence, and whether an agent or the simulation serves it")
def list_devices(service: ServiceDep) -> list[DeviceView]:
    active = service.engine.active_devices()
    return [DeviceView.of(record, record.id in active) for record in service.fleet.snapshot()]


@router.get("/{device_id}", responses={404: {"description": "no such device"}})
def get_device(
    service: ServiceDep, device_id: str = Path(pattern=ID_PATTERN, description="device id")
) -> DeviceView:
    record = service.fleet.get(device_id)
    if record is None:
        raise HTTPException(status_code=404, detail=f"device {device_id!r} is not in the fleet")
    return DeviceView.of(record, service.engine.is_active(device_id))
