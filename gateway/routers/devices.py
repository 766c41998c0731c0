"""/devices: the fleet manifest and each device's twin."""

from __future__ import annotations

import shlex
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Path, Query, Response, status
from pydantic import BaseModel

from edgetwin.agent.config import MqttSettings
from edgetwin.agent.contract import ID_PATTERN
from edgetwin.gateway.auth import Writer
from edgetwin.gateway.config import ManifestDevice
from edgetwin.gateway.deps import ControlDep, ServiceDep
from edgetwin.gateway.limits import check_sensors
from edgetwin.gateway.service import ConflictError, UnknownDeviceError
from edgetwin.gateway.structs import StructResponse, parse_body, request_body
from edgetwin.gateway.views import DeviceView, TwinView, device_view, history_view, twin_view

router = APIRouter(prefix="/devices", tags=["devices"])

DeviceIdPath = Annotated[str, Path(pattern=ID_PATTERN, description="device id")]

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "no such device"}}


@router.get("", summary="Every device: presence, who serves each sensor, config sync")
def list_devices(service: ServiceDep) -> list[DeviceView]:
    return [device_view(twin, service.played) for twin in service.fleet.snapshot()]


@router.get("/{device_id}", responses=NOT_FOUND, summary="One device's twin")
def get_device(service: ServiceDep, device_id: DeviceIdPath) -> TwinView:
    twin = service.fleet.get(device_id)
    if twin is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"device {device_id!r} is not in the fleet")
    return twin_view(twin, service.played)


@router.get(
    "/{device_id}/history",
    responses={404: {"description": "no such device, no history of that sensor, or history off"}},
    response_class=StructResponse,
    summary="Recent readings of a device's streams, as columns",
)
def get_history(
    service: ServiceDep,
    device_id: DeviceIdPath,
    sensor: Annotated[
        str | None, Query(pattern=ID_PATTERN, description="one sensor; all when absent")
    ] = None,
    since: Annotated[
        float | None,
        Query(allow_inf_nan=False, description="only points with ts after this (Unix seconds)"),
    ] = None,
) -> StructResponse:
    """Up to `[history] points` recent points per stream, oldest first: `ts`, `seq`, `source`
    and `anomaly` (the injected fault's type, else null) columns, and per quantity its unit and
    values (null where a point lacks it)."""
    history = service.history
    if not history.enabled:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, "the gateway keeps no history ([history] points = 0)"
        )
    if service.fleet.get(device_id) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"device {device_id!r} is not in the fleet")
    sensors = history.sensors(device_id) if sensor is None else [sensor]
    series = {name: history.series(device_id, name, since) for name in sensors}
    if sensor is not None and series[sensor] is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"no history of sensor {sensor!r} of device {device_id!r}: no reading kept",
        )
    return StructResponse(history_view(device_id, history.points, series))


class WatchCommand(BaseModel):
    title: str
    command: str


class WatchView(BaseModel):
    device: str
    broker: str
    topics: dict[str, str]
    commands: list[WatchCommand]


def watch_view(mqtt: MqttSettings, device_id: str) -> WatchView:
    """Shell commands that follow one device's messages on the gateway's broker, with the
    gateway's own prefix, telemetry topic and broker: what an operator types to see what the
    page shows, straight from the wire. The password is never in them (it comes from
    EDGETWIN_MQTT_PASSWORD), only the user name and the CA file the gateway uses."""
    topics = mqtt.topics()
    everything = f"{topics.prefix}/{device_id}/#"
    # Every sensor's stream; a template without {sensor} gives the device's one shared topic.
    telemetry = topics.telemetry(device_id, "+")
    filters = [everything]
    if not telemetry.startswith(f"{topics.prefix}/{device_id}/"):
        filters.append(telemetry)  # a telemetry template outside the prefix: watched too
    q = shlex.quote
    watch = ["edgetwin", "watch", "--broker", q(mqtt.url)]
    sub = ["mosquitto_sub", "-h", q(mqtt.host), "-p", str(mqtt.port)]
    if mqtt.username:
        sub += ["-u", q(mqtt.username), "-P", '"$EDGETWIN_MQTT_PASSWORD"']
    if mqtt.tls is not None and mqtt.tls.ca_file is not None:
        watch += ["--ca-file", q(str(mqtt.tls.ca_file))]
        sub += ["--cafile", q(str(mqtt.tls.ca_file))]
    elif mqtt.tls is not None:
        sub += ["--capath", "/etc/ssl/certs"]  # the system's CAs, as the gateway uses them
    for topic in filters:
        watch += ["--topic", q(topic)]
    every = " ".join(f"-t {q(t)}" for t in filters)
    return WatchView(
        device=device_id,
        broker=mqtt.url,
        topics={
            "all": everything,
            "status": topics.status(device_id),
            "state": topics.state(device_id),
            "desired": topics.desired(device_id),
            "reported": topics.reported(device_id),
            "twin": topics.twin(device_id),
            "telemetry": telemetry,
        },
        commands=[
            WatchCommand(title="every message of the device", command=" ".join(watch)),
            WatchCommand(
                title="the same with mosquitto_sub", command=" ".join([*sub, "-v", every])
            ),
            WatchCommand(
                title="its telemetry only",
                command=" ".join([*sub, "-v", "-t", q(telemetry)]),
            ),
            WatchCommand(
                title="its config: desired (gateway) and reported (agent)",
                command=" ".join(
                    [
                        *sub,
                        "-v",
                        "-t",
                        q(topics.desired(device_id)),
                        "-t",
                        q(topics.reported(device_id)),
                    ]
                ),
            ),
        ],
    )


@router.get(
    "/{device_id}/watch",
    responses=NOT_FOUND,
    summary="Shell commands that follow the device's messages on the broker",
)
def get_watch(service: ServiceDep, device_id: DeviceIdPath) -> WatchView:
    if service.fleet.get(device_id) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"device {device_id!r} is not in the fleet")
    return watch_view(service.config.mqtt, device_id)


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
    return twin_view(added, service.played)


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
