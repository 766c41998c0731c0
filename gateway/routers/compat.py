"""/start, /scale, /stop, /status: the original simulator's control routes, answering as its did.

They are GET routes because the original's are: its users' curl commands and scripts keep
working. But /start, /scale and /stop change state, so like every write of this API they need
`Authorization: Bearer <token>` (the `[api] token`, or EDGETWIN_API_TOKEN), unless the gateway
runs with `[api] local_no_auth = true` on a loopback address. A GET that writes is not safe in
the HTTP sense (a crawler or a link prefetcher may follow it): one more reason for the token.
/status only reads and needs none.

The devices are ordinary manifest devices (see gateway/compat.py): GET /devices lists them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel

from edgetwin.gateway.auth import Writer
from edgetwin.gateway.compat import CompatConflictError, SimulatorControl
from edgetwin.gateway.deps import ControlDep

router = APIRouter(tags=["simulator control (original simulator's routes)"])

WRITE_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "no token"},
    403: {"description": "wrong token, or writes disabled"},
    409: {"description": "a device id the group needs belongs to another manifest device"},
}

STATE_CHANGE = (
    " Changes state although it is a GET, for compatibility with the original simulator: "
    "it needs the bearer token like every write."
)


class Started(BaseModel):
    status: Literal["started"] = "started"
    started: int
    running: int


class Scaled(BaseModel):
    status: Literal["scaled up", "scaled down", "unchanged"]
    added: int | None = None
    removed: int | None = None
    running: int


class Stopped(BaseModel):
    status: Literal["stopped"] = "stopped"
    running: int = 0


class SimulatorStatus(BaseModel):
    status: Literal["running", "stopped"]
    count: int
    devices: list[str]


def _conflict(exc: CompatConflictError) -> HTTPException:
    return HTTPException(status.HTTP_409_CONFLICT, str(exc))


@router.get(
    "/start",
    dependencies=[Writer],
    responses=WRITE_RESPONSES,
    summary="Stop the simulator's devices, then start device_000 ... afresh",
    description="Starts `count` devices (capped at `[simulation] max_devices`), each publishing "
    "every `frequency_sec`." + STATE_CHANGE,
)
def start(
    control: ControlDep,
    count: Annotated[int, Query(ge=1, description="devices to run")] = 1,
) -> Started:
    try:
        started = control.start(count)
    except CompatConflictError as exc:
        raise _conflict(exc) from None
    return Started(started=started, running=_running(control))


@router.get(
    "/scale",
    dependencies=[Writer],
    responses=WRITE_RESPONSES,
    response_model_exclude_none=True,
    summary="Add or remove devices at the top of the simulator's group",
    description="Grows or shrinks the group to `count` devices (capped at `[simulation] "
    "max_devices`); the others run on undisturbed." + STATE_CHANGE,
)
def scale(
    control: ControlDep,
    count: Annotated[int, Query(ge=0, description="devices to run")] = 0,
) -> Scaled:
    try:
        result = control.scale(count)
    except CompatConflictError as exc:
        raise _conflict(exc) from None
    if result.status == "scaled up":
        return Scaled(status=result.status, added=result.changed, running=result.running)
    if result.status == "scaled down":
        return Scaled(status=result.status, removed=result.changed, running=result.running)
    return Scaled(status=result.status, running=result.running)


@router.get(
    "/stop",
    dependencies=[Writer],
    responses=WRITE_RESPONSES,
    summary="Stop every device of the simulator's group",
    description="Other manifest devices are not affected." + STATE_CHANGE,
)
def stop(control: ControlDep) -> Stopped:
    control.stop()
    return Stopped(running=0)


@router.get("/status", summary="The simulator's group: running or stopped, and its devices")
def simulator_status(control: ControlDep) -> SimulatorStatus:
    devices = control.running_ids()
    return SimulatorStatus(
        status="running" if devices else "stopped", count=len(devices), devices=devices
    )


def _running(control: SimulatorControl) -> int:
    return len(control.running_ids())
