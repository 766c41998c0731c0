"""/devices: the fleet manifest and each device's twin."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Path, Response, status

from edgetwin.agent.contract import ID_PATTERN
from edgetwin.gateway.auth import Writer
from edgetwin.gateway.config import ManifestDevice
from edgetwin.gateway.deps import ControlDep, ServiceDep
from edgetwin.gateway.limits import check_sensors
from edgetwin.gateway.service import ConflictError, UnknownDeviceError
from edgetwin.gateway.structs import parse_body, request_body
from edgetwin.gateway.views import DeviceView, TwinView, device_view, twin_view

router = APIRouter(prefix="/devices", tags=["devices"])

DeviceIdPath = Annotated[str, Path(pattern=ID_PATTERN, description="device id")]

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "no such device"}}


@router.get("", summary="Every device: presence, who serves each sensor, config sync")
def list_devices(service: ServiceDep) -> list[DeviceView]:
    return [device_view(twin, service.standins) for twin in service.fleet.snapshot()]


@router.get("/{device_id}", responses=NOT_FOUND, summary="One device's twin")
def get_device(service: ServiceDep, device_id: DeviceIdPath) -> TwinView:
    twin = service.fleet.get(device_id)
    if twin is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"device {device_id!r} is not in the fleet")
    return twin_view(twin, service.standins)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    dependencies=[Writer],
    responses={
        409: {"description": "already in the manifest, or a device of the simulator's group"},
        401: {},
        403: {},
        413: {"description": "body above [api] max_body_bytes"},
        422: {"description": "bad body, or sensors beyond [api] max_sensors or min_interval"},
    },
    openapi_extra=request_body(ManifestDevice),
    summary="Add a device to the manifest; it is simulated until its agent comes online",
)
def add_device(service: ServiceDep, control: ControlDep, data: Annotated[Any, Body()]) -> TwinView:
    device = parse_body(ManifestDevice, data)
    check_sensors(service.config.api, device.sensors)
    existing = service.fleet.get(device.id)
    if existing is not None and existing.in_manifest:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"device {device.id!r} is already in the manifest"
        )
    if control.owns(device.id):
        # Its twin would simulate it beside the engine: two writers of one stream.
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"device {device.id!r} is a device of the simulator's group (/status); "
            "scale the group below it or stop it first",
        )
    try:
        added = service.add_device(device)
    except ConflictError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return twin_view(added, service.standins)


@router.delete(
    "/{device_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[Writer],
    responses={**NOT_FOUND, 401: {}, 403: {}},
    summary="Remove a device from the manifest; its simulation stops",
)
def remove_device(service: ServiceDep, device_id: DeviceIdPath) -> Response:
    try:
        service.remove_device(device_id)
    except UnknownDeviceError:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"device {device_id!r} is not in the fleet"
        ) from None
    return Response(status_code=status.HTTP_204_NO_CONTENT)
