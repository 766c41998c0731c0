"""/engine: the scale engine for purely simulated fleets (gateway/engine).

Writes need the bearer token like every write of this API. Bodies are decoded with msgspec
against the structs below; a bad body, a value out of range or a command the engine's state
does not allow answers 4xx with the reason, never 500.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from fastapi import APIRouter, HTTPException, Request, Response, status
from starlette.concurrency import run_in_threadpool

from gateway.auth import Writer
from gateway.deps import EngineDep, ScenariosDep
from gateway.engine import (
    EngineError,
    EngineInputError,
    EngineStateError,
    EngineStats,
)
from gateway.engine.sources import EngineUnavailableError

router = APIRouter(prefix="/engine", tags=["scale engine"])
T = TypeVar("T")
# Starlette renamed the 422 constant (…_CONTENT) and deprecates the old name; the number stays.
_UNPROCESSABLE = 422


class StartRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Either `devices` (the default scenario, `interval` seconds apart) or `scenario` (the path
    of a scenario file on the gateway's machine)."""

    devices: Annotated[int, msgspec.Meta(ge=1)] | None = None
    scenario: str | None = None
    interval: Annotated[float, msgspec.Meta(gt=0, le=86_400)] = 1.0
    seed: int = 0
    workers: Annotated[int, msgspec.Meta(ge=1, le=64)] | None = None
    qos: Literal[0, 1] | None = None
    payload: Literal["edgetwin", "flat"] | None = None


class RateRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    multiplier: Annotated[float, msgspec.Meta(gt=0, le=1000)]


class SizeRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    devices: Annotated[int, msgspec.Meta(ge=1)]


def _body_schema(struct: type[msgspec.Struct]) -> dict[str, Any]:
    schema = msgspec.json.schema(struct)
    inline: dict[str, Any] = schema["$defs"][struct.__name__]
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": inline}},
        }
    }


async def _decode(request: Request, struct: type[T]) -> T:
    try:
        return msgspec.json.decode(await request.body(), type=struct)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise HTTPException(_UNPROCESSABLE, f"bad body: {exc}") from exc


RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "no token"},
    403: {"description": "wrong token, or writes disabled"},
    409: {"description": "not allowed in the engine's current state"},
    422: {"description": "bad body or value out of range"},
}


def _answer(stats: EngineStats) -> Response:
    return Response(msgspec.json.encode(stats), media_type="application/json")


def _translate(exc: EngineError) -> HTTPException:
    if isinstance(exc, EngineInputError):
        return HTTPException(_UNPROCESSABLE, str(exc))
    if isinstance(exc, EngineStateError):
        return HTTPException(status.HTTP_409_CONFLICT, str(exc))
    if isinstance(exc, EngineUnavailableError):
        # 424 Failed Dependency: the request is fine, a package it needs is missing. A 4xx on
        # purpose: nothing failed on the server's side, and retrying will not help.
        return HTTPException(status.HTTP_424_FAILED_DEPENDENCY, str(exc))
    # Workers that could not reach the broker.
    return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc))


@router.get("/status", summary="State and figures of the scale engine")
def engine_status(engine: EngineDep) -> Response:
    return _answer(engine.stats())


@router.post(
    "/start",
    dependencies=[Writer],
    responses={
        **RESPONSES,
        424: {"description": "the gateway.scenario package is not installed"},
        503: {"description": "workers could not connect to the broker"},
    },
    summary="Start worker processes for a scenario",
    openapi_extra=_body_schema(StartRequest),
)
async def start(request: Request, engine: EngineDep, scenarios: ScenariosDep) -> Response:
    body = await _decode(request, StartRequest)
    if (body.devices is None) == (body.scenario is None):
        raise HTTPException(_UNPROCESSABLE, "give exactly one of 'devices' and 'scenario'")
    if engine.state != "stopped":
        raise HTTPException(status.HTTP_409_CONFLICT, f"the engine is {engine.state}: stop it")
    if body.devices is not None and body.devices > engine.settings.max_devices:
        raise HTTPException(
            _UNPROCESSABLE,
            f"devices must be 1..{engine.settings.max_devices}, not {body.devices}",
        )
    try:
        if body.scenario is not None:
            scenario = scenarios.load(Path(body.scenario))
        else:
            assert body.devices is not None
            scenario = scenarios.default(body.devices, body.interval, body.seed)
        # Starting blocks until every worker has connected: keep it off the event loop.
        stats = await run_in_threadpool(
            engine.start, scenario, body.workers, body.qos, body.payload
        )
    except EngineError as exc:
        raise _translate(exc) from exc
    return _answer(stats)


@router.post("/stop", dependencies=[Writer], responses=RESPONSES, summary="Stop every worker")
def stop(engine: EngineDep) -> Response:
    return _answer(engine.stop())


@router.post("/pause", dependencies=[Writer], responses=RESPONSES, summary="Hold every stream")
def pause(engine: EngineDep) -> Response:
    try:
        return _answer(engine.pause())
    except EngineError as exc:
        raise _translate(exc) from exc


@router.post(
    "/resume", dependencies=[Writer], responses=RESPONSES, summary="Carry on after a pause"
)
def resume(engine: EngineDep) -> Response:
    try:
        return _answer(engine.resume())
    except EngineError as exc:
        raise _translate(exc) from exc


@router.put(
    "/rate",
    dependencies=[Writer],
    responses=RESPONSES,
    summary="Publish `multiplier` times as often as the scenario says",
    openapi_extra=_body_schema(RateRequest),
)
async def rate(request: Request, engine: EngineDep) -> Response:
    body = await _decode(request, RateRequest)
    try:
        return _answer(engine.set_rate(body.multiplier))
    except EngineError as exc:
        raise _translate(exc) from exc


@router.put(
    "/size",
    dependencies=[Writer],
    responses=RESPONSES,
    summary="Run this many devices in all, same mix, without a restart",
    openapi_extra=_body_schema(SizeRequest),
)
async def size(request: Request, engine: EngineDep) -> Response:
    body = await _decode(request, SizeRequest)
    try:
        # Building and sending the resized scenario may take a while for a big fleet.
        return _answer(await run_in_threadpool(engine.resize, body.devices))
    except EngineError as exc:
        raise _translate(exc) from exc
