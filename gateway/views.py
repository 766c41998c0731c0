"""What the API returns: twins as JSON, built from the registry and the simulation engine."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Literal, Protocol

from pydantic import BaseModel

from edgetwin.agent.contract import Server
from edgetwin.gateway.fleet import ConfigSync, DeviceTwin, Fleet, Serving
from edgetwin.gateway.history import Series


class SimulatedStreams(Protocol):
    """Who plays which simulated streams (gateway/ownership.py, `PlayedStreams`)."""

    def simulated_streams(self, device: str) -> Mapping[str, int]: ...
    def active_devices(self) -> set[str]: ...
    def stream_count(self) -> int: ...
    def tally(self) -> tuple[set[str], int]: ...


SensorSource = Literal["agent-hardware", "agent-emulation", "simulation", "none"]


class LastReading(BaseModel):
    ts: float | None
    seq: int
    source: str | None
    values: dict[str, tuple[float, str]]


class SensorView(BaseModel):
    served_by: Server
    source: SensorSource
    health: str | None
    last: LastReading | None


class DeviceView(BaseModel):
    id: str
    in_manifest: bool
    presence: Literal["online", "offline", "unknown"]
    served_by: Server | None
    simulated: bool
    sensors: dict[str, SensorView]
    config: ConfigSync
    desired_version: int | None
    applied_version: int | None
    boot: int | None
    agent_version: str | None
    last_seen: float | None
    site: str | None
    labels: dict[str, str]
    # Why more than one agent seems to run with this id, while that lasts; else null.
    duplicate_id: str | None = None


class HandOverView(BaseModel):
    """One change of who serves a sensor's stream, as the gateway decided it."""

    ts: float
    sensor: str
    served_by: Serving
    previous: Serving | None
    seq: int
    presence: str


class StatusView(BaseModel):
    """The agent's last status (birth or last will) as the twin folded it in."""

    state: Literal["online", "offline", "unknown"]
    reason: str | None
    boot: int | None
    session: str | None
    agent_version: str | None


class TwinView(DeviceView):
    # The contract's documents as they are on the wire (DesiredConfig, ReportedConfig,
    # DeviceState in the schemas).
    desired: dict[str, Any] | None
    reported: dict[str, Any] | None
    state: dict[str, Any] | None
    delta: dict[str, Any]
    status: StatusView
    # The manifest entry's sensors (null for a device not in the manifest): what the device
    # runs while it has no desired document, and what an edit of its config starts from then.
    manifest_sensors: dict[str, Any] | None = None
    # Who served each sensor when, newest last (the gateway's memory since it started, at most
    # fleet.HANDOVERS_KEPT changes).
    handovers: list[HandOverView] = []


def _sensor_views(twin: DeviceTwin, simulated: set[str]) -> dict[str, SensorView]:
    names = set(twin.expected_sensors()) | set(twin.state.sensors if twin.state else {})
    views = {}
    for name in sorted(names):
        state = twin.state.sensors.get(name) if twin.state else None
        source: SensorSource
        if name in simulated:
            source = "simulation"
        elif twin.presence.value == "online" and state is not None:
            source = "agent-hardware" if state.backend == "real" else "agent-emulation"
        else:
            source = "none"
        stream = twin.streams.get(name)
        views[name] = SensorView(
            served_by=Server.SIMULATION if name in simulated else Server.AGENT,
            source=source,
            health=state.health.value if state else None,
            last=LastReading(
                ts=stream.ts, seq=stream.seq, source=stream.source, values=stream.values
            )
            if stream
            else None,
        )
    return views


def device_view(twin: DeviceTwin, engine: SimulatedStreams) -> DeviceView:
    simulated = set(engine.simulated_streams(twin.id))
    served: Server | None
    if twin.presence.value == "online":
        served = Server.AGENT
    else:
        served = Server.SIMULATION if twin.in_manifest else None
    return DeviceView(
        id=twin.id,
        in_manifest=twin.in_manifest,
        presence=twin.presence.value,
        served_by=served,
        simulated=bool(simulated),
        sensors=_sensor_views(twin, simulated),
        config=twin.config_sync(),
        desired_version=twin.desired.version if twin.desired else None,
        applied_version=twin.reported.applied_version if twin.reported else None,
        boot=twin.boot,
        agent_version=twin.agent_version,
        last_seen=twin.last_seen,
        site=twin.site,
        labels=twin.labels,
        duplicate_id=twin.duplicate_suspected(time.monotonic()),
    )


def device_summary(twin: DeviceTwin, engine: SimulatedStreams, now: float) -> dict[str, Any]:
    """`device_view` as plain JSON-ready data, for the live feed: the same fields and values
    (tests/test_live.py compares them), at a fraction of a pydantic model's cost."""
    simulated = set(engine.simulated_streams(twin.id))
    online = twin.presence.value == "online"
    states = twin.state.sensors if twin.state else {}
    sensors: dict[str, Any] = {}
    for name in sorted(set(twin.expected_sensors()) | set(states)):
        state = states.get(name)
        if name in simulated:
            source = "simulation"
        elif online and state is not None:
            source = "agent-hardware" if state.backend == "real" else "agent-emulation"
        else:
            source = "none"
        stream = twin.streams.get(name)
        sensors[name] = {
            "served_by": "simulation" if name in simulated else "agent",
            "source": source,
            "health": state.health.value if state else None,
            "last": {
                "ts": stream.ts,
                "seq": stream.seq,
                "source": stream.source,
                "values": stream.values,
            }
            if stream
            else None,
        }
    return {
        "id": twin.id,
        "in_manifest": twin.in_manifest,
        "presence": twin.presence.value,
        "served_by": "agent" if online else ("simulation" if twin.in_manifest else None),
        "simulated": bool(simulated),
        "sensors": sensors,
        "config": twin.config_sync(),
        "desired_version": twin.desired.version if twin.desired else None,
        "applied_version": twin.reported.applied_version if twin.reported else None,
        "boot": twin.boot,
        "agent_version": twin.agent_version,
        "last_seen": twin.last_seen,
        "site": twin.site,
        "labels": twin.labels,
        "duplicate_id": twin.duplicate_suspected(now),
    }


def fleet_counts(fleet: Fleet, engine: SimulatedStreams) -> dict[str, Any]:
    """GET /fleet's counts: by presence, simulation and config sync."""
    devices, in_manifest, presence, config = fleet.tally()
    simulated, streams = engine.tally()
    return {
        "devices": devices,
        "in_manifest": in_manifest,
        "by_presence": presence,
        "simulated_devices": len(simulated),
        "simulated_streams": streams,
        "config": config,
    }


def twin_view(twin: DeviceTwin, engine: SimulatedStreams) -> TwinView:
    return TwinView(
        **device_view(twin, engine).model_dump(),
        desired=twin.desired.to_builtins() if twin.desired else None,
        reported=twin.reported.to_builtins() if twin.reported else None,
        state=twin.state.to_builtins() if twin.state else None,
        delta=twin.delta(),
        status=StatusView(
            state=twin.presence.value,
            reason=twin.last_reason,
            boot=twin.boot,
            session=twin.session,
            agent_version=twin.agent_version,
        ),
        manifest_sensors={n: s.to_builtins() for n, s in twin.manifest_sensors.items()}
        if twin.in_manifest
        else None,
        handovers=[
            HandOverView(
                ts=h.ts,
                sensor=h.sensor,
                served_by=h.served_by,
                previous=h.previous,
                seq=h.seq,
                presence=h.presence,
            )
            for h in twin.handovers
        ],
    )


def history_view(device_id: str, capacity: int, series: dict[str, Series | None]) -> dict[str, Any]:
    """GET /devices/{id}/history: columns per sensor, not an object per point, which would
    repeat every key 300 times."""
    return {
        "device": device_id,
        "points": capacity,
        "sensors": {
            name: {
                "ts": s.ts,
                "seq": s.seq,
                "source": s.source,
                "anomaly": s.anomaly,
                "quantities": {
                    q: {"unit": unit, "values": values}
                    for q, (unit, values) in s.quantities.items()
                },
            }
            for name, s in series.items()
            if s is not None
        },
    }
