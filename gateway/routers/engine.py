"""/engine: the scale engine for purely simulated fleets (gateway/engine).

Writes need the bearer token like every write of this API. Bodies are validated with msgspec
against the structs below (gateway/structs.py); a bad body, a value out of range or a command
the engine's state does not allow answers 4xx with the reason, never 500.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Literal

import msgspec
from fastapi import APIRouter, Body, HTTPException, status
from starlette.concurrency import run_in_threadpool

from edgetwin.gateway.auth import Writer
from edgetwin.gateway.deps import ApiDep, EngineDep, ScenariosDep
from edgetwin.gateway.engine import EngineError, EngineInputError, EngineStateError, EngineStats
from edgetwin.gateway.limits import check_interval
from edgetwin.gateway.scenario import FaultRequest
from edgetwin.gateway.scenario.model import matches
from edgetwin.gateway.structs import StructResponse, parse_body, request_body, response_schema

router = APIRouter(prefix="/engine", tags=["scale engine"])
# Starlette renamed the 422 constant (…_CONTENT) and deprecates the old name; the number stays.
_UNPROCESSABLE = 422


class StartRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Either `devices` (the default scenario, `interval` seconds apart) or `scenario` (a file
    in the gateway's `[engine] scenarios_dir`, named relative to it)."""

    devices: Annotated[int, msgspec.Meta(ge=1)] | None = None
    scenario: str | None = None
    interval: Annotated[float, msgspec.Meta(gt=0, le=86_400)] = 1.0
    seed: int = 0
    # Worker processes; 0 runs the fleet in the gateway's process; none: chosen from its rate.
    workers: Annotated[int, msgspec.Meta(ge=0, le=64)] | None = None
    qos: Literal[0, 1] | None = None
    payload: Literal["edgetwin", "flat"] | None = None


class RateRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    multiplier: Annotated[float, msgspec.Meta(gt=0, le=1000)]


class SizeRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    devices: Annotated[int, msgspec.Meta(ge=1)]


RESPONSES: dict[int | str, dict[str, Any]] = {
    200: response_schema(EngineStats, "the engine's state and figures"),
    401: {"description": "no token"},
    403: {"description": "wrong token, or writes disabled"},
    409: {"description": "not allowed in the engine's current state"},
    413: {"description": "body above [api] max_body_bytes"},
    422: {"description": "bad body or value out of range"},
}


@contextmanager
def _http_errors() -> Iterator[None]:
    """The engine's refusals as 4xx (503 when workers cannot reach the broker), never 500."""
    try:
        yield
    except EngineError as exc:
        raise _translate(exc) from exc


def _translate(exc: EngineError) -> HTTPException:
    if isinstance(exc, EngineInputError):
        return HTTPException(_UNPROCESSABLE, str(exc))
    if isinstance(exc, EngineStateError):
        return HTTPException(status.HTTP_409_CONFLICT, str(exc))
    # Workers that could not reach the broker.
    return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc))


@router.get(
    "/status",
    response_model=None,
    responses={200: RESPONSES[200]},
    summary="State and figures of the scale engine",
)
def engine_status(engine: EngineDep) -> StructResponse:
    return StructResponse(engine.stats())


@router.post(
    "/start",
    dependencies=[Writer],
    response_model=None,
    responses={**RESPONSES, 503: {"description": "workers could not connect to the broker"}},
    summary="Start worker processes for a scenario",
    openapi_extra=request_body(StartRequest),
)
async def start(
    data: Annotated[Any, Body()], engine: EngineDep, scenarios: ScenariosDep, api: ApiDep
) -> StructResponse:
    body = parse_body(StartRequest, data)
    check_interval(api, body.interval, "interval")
    if (body.devices is None) == (body.scenario is None):
        raise HTTPException(_UNPROCESSABLE, "give exactly one of 'devices' and 'scenario'")
    if engine.state != "stopped":
        raise HTTPException(status.HTTP_409_CONFLICT, f"the engine is {engine.state}: stop it")
    if body.devices is not None and body.devices > engine.settings.max_devices:
        raise HTTPException(
            _UNPROCESSABLE,
            f"devices must be 1..{engine.settings.max_devices}, not {body.devices}",
        )
    with _http_errors():
        if body.scenario is not None:
            scenario = scenarios.load(body.scenario)
        else:
            assert body.devices is not None
            scenario = scenarios.default(body.devices, body.interval, body.seed)
        # Starting blocks until every worker has connected: keep it off the event loop.
        stats = await run_in_threadpool(
            engine.start, scenario, body.workers, body.qos, body.payload
        )
    return StructResponse(stats)


@router.post(
    "/stop",
    dependencies=[Writer],
    response_model=None,
    responses=RESPONSES,
    summary="Stop every worker",
)
def stop(engine: EngineDep) -> StructResponse:
    return StructResponse(engine.stop())


@router.post(
    "/pause",
    dependencies=[Writer],
    response_model=None,
    responses=RESPONSES,
    summary="Hold every stream",
)
def pause(engine: EngineDep) -> StructResponse:
    with _http_errors():
        return StructResponse(engine.pause())


@router.post(
    "/resume",
    dependencies=[Writer],
    response_model=None,
    responses=RESPONSES,
    summary="Carry on after a pause",
)
def resume(engine: EngineDep) -> StructResponse:
    with _http_errors():
        return StructResponse(engine.resume())


@router.put(
    "/rate",
    dependencies=[Writer],
    response_model=None,
    responses=RESPONSES,
    summary="Publish `multiplier` times as often as the scenario says",
    openapi_extra=request_body(RateRequest),
)
def rate(data: Annotated[Any, Body()], engine: EngineDep) -> StructResponse:
    body = parse_body(RateRequest, data)
    with _http_errors():
        return StructResponse(engine.set_rate(body.multiplier))


@router.put(
    "/size",
    dependencies=[Writer],
    response_model=None,
    responses=RESPONSES,
    summary="Run this many devices in all, same mix, without a restart",
    openapi_extra=request_body(SizeRequest),
)
def size(data: Annotated[Any, Body()], engine: EngineDep) -> StructResponse:
    body = parse_body(SizeRequest, data)
    with _http_errors():
        # Building and sending the resized scenario may take a while for a big fleet (a sync
        # route: FastAPI runs it on its thread pool, off the event loop).
        return StructResponse(engine.resize(body.devices))


@router.post(
    "/faults",
    dependencies=[Writer],
    response_model=None,
    responses=RESPONSES,
    summary="Inject a fault now (or `after` seconds) into devices of the running fleet",
    description="Labelled like a scheduled fault: `anomaly` in the readings it touches and a "
    "start and an end document on the labels topic.",
    openapi_extra=request_body(
        FaultRequest, example={"type": "spike", "devices": "device_00*", "duration": 60}
    ),
)
def inject_fault(data: Annotated[Any, Body()], engine: EngineDep) -> StructResponse:
    fault = parse_body(FaultRequest, data).at(time.time())
    with _http_errors():
        engine.inject(fault, touches=lambda device, sensor: matches(fault, device, sensor))
    return StructResponse({"fault": fault, "engine": engine.stats()})
