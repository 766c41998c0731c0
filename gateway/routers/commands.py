"""/devices/{id}/commands/{name}: run a command on a device and wait for its answer.

The answer is the device's own (`CommandResponse`): 200 when it ran, whether it succeeded
(`ok`) or the hardware failed it (`failed`); 422 when the device rejected it, with its reason.
A device the gateway simulates while its agent is away answers as its agent would
(gateway/simulated.py). A command that got no answer is a 504 with the reason: the device is
offline (at once: no agent is connected and no gateway simulates it, so nobody could answer),
or it did not answer in time.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Path, status

from edgetwin.agent.contract import ID_PATTERN, CommandResponse
from edgetwin.agent.mqtt import PublishError
from edgetwin.gateway.auth import Writer
from edgetwin.gateway.commands import (
    MAX_TIMEOUT,
    CommandCall,
    CommandRefusal,
    CommandTimeout,
    Unanswered,
)
from edgetwin.gateway.deps import ServiceDep
from edgetwin.gateway.fleet import PresenceState
from edgetwin.gateway.routers.devices import DeviceIdPath
from edgetwin.gateway.structs import StructResponse, parse_body, request_body, response_schema

router = APIRouter(prefix="/devices/{device_id}/commands", tags=["commands"])

CommandNamePath = Annotated[
    str, Path(pattern=ID_PATTERN, description="the command: read_sensor, diagnostics, ...")
]

RESPONSES: dict[int | str, dict[str, Any]] = {
    200: response_schema(CommandResponse, "the device's answer: status ok, or failed and why"),
    401: {"description": "no token"},
    403: {"description": "wrong token, or writes disabled"},
    404: {"description": "no such device"},
    422: response_schema(
        CommandRefusal, "the device rejected the command (reason, and its answer); or a bad body"
    ),
    501: {"description": "the gateway's broker link is MQTT 3.1.1: commands need MQTT 5"},
    503: response_schema(CommandRefusal, "the gateway cannot reach the broker now"),
    504: response_schema(CommandRefusal, "the device is offline, or did not answer in time"),
}

EXAMPLE = {"args": {"sensor": "env"}, "timeout": 5}
_UNPROCESSABLE = 422  # Starlette's constant changed its name; the number did not


def _refusal(
    code: int, reason: Unanswered, detail: str, answer: CommandResponse | None = None
) -> StructResponse:
    return StructResponse(CommandRefusal(reason=reason, detail=detail, answer=answer), code)


@router.post(
    "/{name}",
    dependencies=[Writer],
    response_model=None,
    responses=RESPONSES,
    openapi_extra=request_body(CommandCall, EXAMPLE),
    summary="Run a command on the device and wait for its answer",
    description=(
        "Built in: `read_sensor` {sensor}, `restart_sensors` {sensor?}, `diagnostics`, "
        f"`pulse_output` {{output, value, seconds}}. `timeout` is at most {MAX_TIMEOUT:g} s; "
        "the same `id` sent again is answered again and not run twice."
    ),
)
async def run_command(
    service: ServiceDep,
    device_id: DeviceIdPath,
    name: CommandNamePath,
    data: Annotated[Any, Body()] = None,
) -> StructResponse:
    twin = service.fleet.get(device_id)
    if twin is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"device {device_id!r} is not in the fleet")
    call = parse_body(CommandCall, {} if data is None else data)
    commands = service.commands
    if not service.link.mqtt5:
        raise HTTPException(
            status.HTTP_501_NOT_IMPLEMENTED,
            'commands need MQTT 5 (response topic, correlation data): [mqtt] protocol = "5"',
        )
    if twin.presence is not PresenceState.ONLINE and not service.simulates(device_id):
        # Nobody could answer: no agent is connected, and no gateway plays the device.
        commands.count("offline")
        return _refusal(
            status.HTTP_504_GATEWAY_TIMEOUT,
            "offline",
            f"device {device_id!r} has no agent online (presence {twin.presence.value}) and "
            "no gateway simulates it",
        )
    if not service.link.connected:
        commands.count("unavailable")
        return _refusal(
            status.HTTP_503_SERVICE_UNAVAILABLE, "unavailable", "the gateway has no broker now"
        )
    try:
        answer = await commands.call(device_id, name, call.args, call.id, call.timeout)
    except CommandTimeout as exc:
        return _refusal(status.HTTP_504_GATEWAY_TIMEOUT, "timed out", str(exc))
    except PublishError as exc:
        commands.count("unavailable")
        return _refusal(status.HTTP_503_SERVICE_UNAVAILABLE, "unavailable", str(exc))
    if answer.status == "rejected":
        return _refusal(_UNPROCESSABLE, "rejected", answer.reason or "", answer)
    return StructResponse(answer)
