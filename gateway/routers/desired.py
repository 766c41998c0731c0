"""/devices/{id}/desired: the device's desired configuration, versioned, with optimistic locking.

The ETag of a desired document is its version; a write with `If-Match` (or a `version` in the
body) that no longer matches gets 409, so two operators never overwrite each other unknowingly.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Body, Header, HTTPException, status

from edgetwin.agent.contract import (
    ContractError,
    DesiredConfig,
    OutputName,
    OutputSettings,
    SensorName,
    SensorSettings,
    Struct,
)
from edgetwin.gateway.auth import Writer
from edgetwin.gateway.deps import ServiceDep
from edgetwin.gateway.fleet import MAX_VERSION
from edgetwin.gateway.limits import check_sensors
from edgetwin.gateway.routers.devices import NOT_FOUND, DeviceIdPath
from edgetwin.gateway.service import ConflictError, GatewayService, UnknownDeviceError
from edgetwin.gateway.structs import StructResponse, parse_body, request_body, response_schema

router = APIRouter(prefix="/devices/{device_id}/desired", tags=["desired config"])

DESIRED: dict[int | str, dict[str, Any]] = {
    200: response_schema(DesiredConfig, "the desired config; its version is the ETag")
}
WRITE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **DESIRED,
    **NOT_FOUND,
    401: {"description": "no token"},
    403: {"description": "wrong token, or writes disabled"},
    409: {"description": "the document changed since the version given"},
    413: {"description": "body above [api] max_body_bytes"},
    422: {
        "description": "a body that breaks the schema, or outputs that can never work: a value "
        "outside the output's range (refused, never clamped), an unknown driver, two outputs on "
        "one pin or channel, two frequencies on one PWM chip"
    },
}


class DesiredWrite(Struct, frozen=True):
    sensors: dict[SensorName, SensorSettings]
    outputs: (
        Annotated[
            dict[OutputName, OutputSettings],
            msgspec.Meta(description="absent: the current document's outputs are kept"),
        ]
        | None
    ) = None
    version: (
        Annotated[
            int,
            msgspec.Meta(ge=0, le=MAX_VERSION, description="the version this change is based on"),
        ]
        | None
    ) = None


def etag(version: int) -> str:
    return f'"{version}"'


def _expected_version(if_match: str | None, body_version: int | None) -> int | None:
    if if_match is None or if_match.strip() == "*":
        return body_version
    match = re.fullmatch(r'\s*(?:W/)?"(\d+)"\s*', if_match)
    if match is None:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, f'If-Match must be an ETag like "3", not {if_match!r}'
        )
    version = int(match[1])
    if version > MAX_VERSION:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, f"If-Match names a version above {MAX_VERSION}"
        )
    if body_version is not None and body_version != version:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "If-Match and body version disagree")
    return version


def _answer(desired: DesiredConfig) -> StructResponse:
    return StructResponse(desired, headers={"ETag": etag(desired.version)})


def _write(
    service: GatewayService,
    device_id: str,
    sensors: dict[str, SensorSettings],
    expected: int | None,
    outputs: dict[str, OutputSettings] | None = None,
) -> StructResponse:
    check_sensors(service.config.api, sensors)
    try:
        desired = service.set_desired(
            device_id, sensors, expected_version=expected, outputs=outputs
        )
    except ContractError as exc:
        raise HTTPException(422, str(exc)) from None
    except UnknownDeviceError:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"device {device_id!r} is not in the manifest"
        ) from None
    except ConflictError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return _answer(desired)


@router.get(
    "",
    response_model=None,
    responses={**DESIRED, **NOT_FOUND},
    summary="The desired config and its ETag",
)
def get_desired(service: ServiceDep, device_id: DeviceIdPath) -> StructResponse:
    twin = service.fleet.get(device_id)
    if twin is None or twin.desired is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"device {device_id!r} has no desired config"
        )
    return _answer(twin.desired)


@router.put(
    "",
    dependencies=[Writer],
    response_model=None,
    responses=WRITE_RESPONSES,
    openapi_extra=request_body(DesiredWrite),
    summary="Replace the desired config",
)
def put_desired(
    service: ServiceDep,
    device_id: DeviceIdPath,
    data: Annotated[Any, Body()],
    if_match: Annotated[str | None, Header()] = None,
) -> StructResponse:
    body = parse_body(DesiredWrite, data)
    return _write(
        service, device_id, body.sensors, _expected_version(if_match, body.version), body.outputs
    )


@router.patch(
    "",
    dependencies=[Writer],
    response_model=None,
    responses=WRITE_RESPONSES,
    summary="Change the desired config with a JSON merge patch of its sensors and outputs",
    description='{"sensors": {"env": {"interval": 2}, "old": null}} sets fields; null removes. '
    '{"outputs": {"fan": {"value": 0.4}}} sets an output\'s value.',
)
def patch_desired(
    service: ServiceDep,
    device_id: DeviceIdPath,
    patch: Annotated[dict[str, Any], Body(examples=[{"sensors": {"env": {"interval": 2}}}])],
    if_match: Annotated[str | None, Header()] = None,
) -> StructResponse:
    unknown = set(patch) - {"sensors", "outputs", "version"}
    if unknown:
        raise HTTPException(422, f"unknown fields {sorted(unknown)}")
    body_version = patch.get("version")
    if body_version is not None and (
        not isinstance(body_version, int) or isinstance(body_version, bool)
    ):
        raise HTTPException(422, "version must be an integer")
    if body_version is not None and not 0 <= body_version <= MAX_VERSION:
        raise HTTPException(422, f"version must be between 0 and {MAX_VERSION}")
    changes = patch.get("sensors", {})
    output_changes = patch.get("outputs", {})
    if not isinstance(changes, dict):
        raise HTTPException(422, "sensors must be an object")
    if not isinstance(output_changes, dict):
        raise HTTPException(422, "outputs must be an object")
    twin = service.fleet.get(device_id)
    if twin is None or not twin.in_manifest:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"device {device_id!r} is not in the manifest"
        )
    current = {name: s.to_builtins() for name, s in twin.expected_sensors().items()}
    body: dict[str, Any] = {"sensors": _merge(current, changes)}
    if "outputs" in patch:
        outputs = twin.desired.outputs if twin.desired else {}
        body["outputs"] = _merge({n: o.to_builtins() for n, o in outputs.items()}, output_changes)
    write = parse_body(DesiredWrite, body)
    return _write(
        service,
        device_id,
        write.sensors,
        _expected_version(if_match, body_version),
        write.outputs,
    )


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge(result.get(key), value)
    return result
