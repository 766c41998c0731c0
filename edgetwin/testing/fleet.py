"""Simulated fleets for tests and notebooks: in real time on a broker, or in virtual time.

`SimulatedFleet` runs the simulation engine that `edgetwin simulate` and the gateway's
`[engine]` run (`edgetwin.gateway.engine.EngineController`): N default devices, or a scenario
file, publishing the wire contract's telemetry to a broker in real time, in this process or in
worker processes. A test can grow or shrink it, inject a labelled fault into a device on
demand and read back the ground-truth labels the fleet published.

    with SimulatedFleet(endpoint, devices=20, interval=0.2, seed=7) as fleet:
        fault = fleet.inject("device_003", "drift", per_hour=3600, duration=30)
        fleet.wait_for_label(fault.id)
        ...

`play_scenario` plays a scenario in virtual time instead (`edgetwin simulate --virtual`): a
day of a fleet in seconds, in time order, with no broker, into a list of `PlayedMessage` or a
JSON lines file. Same scenario, seed and start: same messages, byte for byte.

A scenario (`edgetwin.gateway.scenario.Scenario`) is described in README's "Scenarios"; fault
kinds and their parameters are those of a scenario file's `[[faults]]` (`FAULT_KINDS`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Self, overload

import msgspec

from edgetwin.agent.contract import (
    ContractError,
    FaultLabel,
    FlatReading,
    Status,
    Telemetry,
    Topics,
)
from edgetwin.gateway.engine import Endpoint, EngineController, EngineSettings, EngineStats
from edgetwin.gateway.scenario import (
    FAULT_TYPES,
    FaultRequest,
    FaultSpec,
    Scenario,
    ScenarioError,
    default_scenario,
    load_scenario,
    parse_duration,
)
from edgetwin.gateway.scenario.generator import Message as GeneratedMessage
from edgetwin.gateway.scenario.model import utc_seconds
from edgetwin.gateway.scenario.virtual import Counts, JsonLinesSink, run_virtual
from edgetwin.testing.capture import DEFAULT_TIMEOUT, Capture
from edgetwin.testing.endpoint import MqttEndpoint

__all__ = [
    "DEFAULT_START",
    "FAULT_KINDS",
    "Counts",
    "PlayedMessage",
    "SimulatedFleet",
    "load_played",
    "play_scenario",
]

FAULT_KINDS: Final[tuple[str, ...]] = FAULT_TYPES
"""What `SimulatedFleet.inject` takes as `kind`, with its parameter (default):
spike (`magnitude` 10, added to the value), drift (`per_hour` 1, units per hour since the
start), stuck (the last value held), noise (`sigma` 1), dropout (nothing published), offline
(the whole device: retained offline status, nothing published, then online), clock_skew
(`skew` 300 s added to `ts`), duplicate (`copies` 1 extra of every reading)."""

DEFAULT_START: Final = 1_767_225_600.0
"""2026-01-01T00:00:00Z: where `play_scenario` starts a scenario that names no `start`, so
that two plays of one scenario and seed give the same messages."""

ScenarioArg = Scenario | str | Path


def _scenario(
    scenario: ScenarioArg | None,
    devices: int | None,
    *,
    seed: int | None,
    interval: float | None,
    device_prefix: str,
) -> Scenario:
    """The scenario to run: the file (or `Scenario`) resized to `devices` when given, or the
    default fleet of `devices` devices; `seed` and `interval` override the file's."""
    try:
        if scenario is None:
            return default_scenario(
                10 if devices is None else devices,
                1.0 if interval is None else interval,
                0 if seed is None else seed,
                prefix=device_prefix,
            )
        chosen = scenario if isinstance(scenario, Scenario) else load_scenario(Path(scenario))
        if devices is not None:
            chosen = chosen.resized(devices)
        if seed is not None:
            chosen = msgspec.structs.replace(chosen, seed=seed)
        if interval is not None:
            chosen = msgspec.structs.replace(chosen, interval=interval)
        return chosen
    except msgspec.ValidationError as exc:
        raise ScenarioError(str(exc)) from exc


def _engine_endpoint(endpoint: MqttEndpoint, topics: Topics) -> Endpoint:
    """The engine workers' picklable endpoint for `endpoint` (same identity and TLS files)."""
    return Endpoint(
        host=endpoint.host,
        port=endpoint.port,
        protocol=endpoint.protocol,
        username=endpoint.username,
        password=endpoint.password,
        tls=endpoint.tls,
        ca_file=None if endpoint.ca_file is None else str(endpoint.ca_file),
        cert_file=None if endpoint.cert_file is None else str(endpoint.cert_file),
        key_file=None if endpoint.key_file is None else str(endpoint.key_file),
        prefix=topics.prefix,
        telemetry_template=topics.telemetry_template,
        client_id_prefix="edgetwin-testing-fleet",
    )


class SimulatedFleet:
    """A purely simulated fleet publishing to a broker in real time, on the gateway's engine.

    `devices` default devices (`device_000`..., one sensor "env" with temperature, humidity
    and pressure, one reading every `interval` seconds), or the scenario file or `Scenario`
    `scenario` (resized to `devices` when given too). `seed` fixes every value (the same seed
    gives the same values at the same times); `prefix` and `topic` are the topic prefix and
    optional telemetry template of the wire contract, so parallel tests can keep apart on one
    broker. `workers=0` runs the fleet on a thread of this process; N > 0 in N worker
    processes (each its own connection; a few tenths of a second to start them; they are
    spawned, so a script that starts them needs the `if __name__ == "__main__":` guard
    of `multiprocessing`). `qos` is the
    telemetry's QoS (1: the broker acknowledges each reading). `record_labels` subscribes to
    the labels topic to make `labels()` work; turn it off for an identity that may publish
    there but not read.

    Nothing is published until `start()` (or entering the `with` block); `stop()` (or leaving
    it) ends the fleet. A scenario without a `start` is anchored at `start()`: faults given
    `after` a duration count from then.
    """

    def __init__(
        self,
        endpoint: MqttEndpoint,
        devices: int | None = None,
        *,
        scenario: ScenarioArg | None = None,
        seed: int | None = None,
        interval: float | None = None,
        prefix: str = "edgetwin",
        topic: str | None = None,
        device_prefix: str = "device_",
        workers: int = 0,
        qos: Literal[0, 1] = 1,
        payload: Literal["edgetwin", "flat"] = "edgetwin",
        record_labels: bool = True,
    ) -> None:
        self.endpoint = endpoint
        self.topics = Topics(prefix=prefix, telemetry_template=topic)
        """Topic names of this fleet: `fleet.topics.all_telemetry()`, `.labels()`..."""
        self.scenario = _scenario(
            scenario, devices, seed=seed, interval=interval, device_prefix=device_prefix
        )
        """The scenario running (anchored at `start()`, resized by `resize`)."""
        self._workers = workers
        self._qos: Literal[0, 1] = qos
        self._payload: Literal["edgetwin", "flat"] = payload
        self._record_labels = record_labels
        self._lock = threading.Lock()
        self._engine: EngineController | None = None
        self._labels: Capture | None = None
        self._injected: list[FaultSpec] = []
        self._final: EngineStats | None = None

    # -- running ------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the fleet has been started and not stopped."""
        return self._engine is not None

    def start(self) -> EngineStats:
        """Connect the fleet and start publishing; returns once every worker is connected.

        The first readings follow within one interval (each stream has its own phase within
        it). Raises RuntimeError if running already, and the engine's EngineError when the
        workers cannot connect.
        """
        with self._lock:
            if self._engine is not None:
                raise RuntimeError("the fleet is running already")
            if self._record_labels:
                self._labels = Capture(self.endpoint, self.topics.labels())
            if self.scenario.origin is None:
                self.scenario = self.scenario.with_start(time.time())
            settings = EngineSettings(
                workers=self._workers,
                max_workers=max(self._workers, 1),
                qos=self._qos,
                payload=self._payload,
            )
            engine = EngineController(_engine_endpoint(self.endpoint, self.topics), settings)
            try:
                stats = engine.start(self.scenario, self._workers, fleet="testing")
            except BaseException:
                self._close_labels()
                raise
            self._engine = engine
            return stats

    def stop(self) -> EngineStats | None:
        """Stop publishing and disconnect; returns the run's final figures (None if the fleet
        was not running). What was recorded (`labels()`, `injected`, `stats()`) stays
        readable."""
        with self._lock:
            engine, self._engine = self._engine, None
            if engine is None:
                return None
            try:
                engine.close()
                self._final = engine.stats()
                return self._final
            finally:
                self._close_labels()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- steering -----------------------------------------------------------------------------

    def devices(self) -> list[str]:
        """The ids of the fleet's devices, in the scenario's order."""
        return self.scenario.device_ids()

    def resize(self, devices: int) -> EngineStats:
        """Run `devices` devices in all, with the same mix of templates. Existing devices keep
        their ids and numbering; growing adds devices at the end, shrinking removes the last
        ones (README, "Scenarios": `--devices`)."""
        engine = self._running()
        stats = engine.resize(devices)
        scenario = engine.scenario
        assert isinstance(scenario, Scenario)
        self.scenario = scenario
        return stats

    def inject(
        self,
        device: str,
        kind: str,
        *,
        duration: float | str = 60.0,
        sensor: str = "*",
        after: float | str = 0.0,
        fault_id: str | None = None,
        quantities: Sequence[str] | None = None,
        magnitude: float | None = None,
        per_hour: float | None = None,
        sigma: float | None = None,
        skew: float | None = None,
        copies: int | None = None,
    ) -> FaultSpec:
        """Inject a labelled fault of `kind` (see `FAULT_KINDS`) into `device` (an id or a glob
        such as "device_0*") now, or `after` a delay, for `duration` (seconds, or "10m").

        `sensor` (name or glob) and `quantities` narrow it; the parameter of the kind goes by
        its name (`magnitude`, `per_hour`, `sigma`, `skew`, `copies`), and one of another kind
        is refused. Each stream the fault touches publishes a `FaultLabel` on the labels topic
        at its next reading (event "start", and "end" when the fault is over), and its readings
        meanwhile carry `anomaly` with the fault's type and id. Returns the fault, with its id
        and absolute `start` and `end`. Raises ValueError for a bad kind or parameter.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; choose one of {', '.join(FAULT_KINDS)}")
        fields: dict[str, Any] = {
            "type": kind,
            "devices": device,
            "sensor": sensor,
            "duration": parse_duration(duration),
            "after": parse_duration(after),
        }
        extra = {
            "id": fault_id,
            "quantities": None if quantities is None else list(quantities),
            "magnitude": magnitude,
            "per_hour": per_hour,
            "sigma": sigma,
            "skew": skew,
            "copies": copies,
        }
        fields.update({k: v for k, v in extra.items() if v is not None})
        try:
            request = msgspec.convert(fields, FaultRequest)
        except msgspec.ValidationError as exc:
            raise ValueError(f"fault {kind!r} on {device!r}: {exc}") from exc
        engine = self._running()
        fault = request.at(time.time())
        engine.inject(fault)
        with self._lock:
            self._injected.append(fault)
        return fault

    @property
    def injected(self) -> list[FaultSpec]:
        """The faults `inject` handed to the fleet, in order."""
        with self._lock:
            return list(self._injected)

    # -- reading back -------------------------------------------------------------------------

    def labels(
        self,
        *,
        device: str | None = None,
        fault_id: str | None = None,
        event: Literal["start", "end"] | None = None,
    ) -> list[FaultLabel]:
        """The fault labels the fleet has published so far (injected faults and the
        scenario's own), as received back from the broker, in order; optionally only those of
        one `device`, fault id or event. Needs `record_labels`."""
        return [
            label
            for label in self._label_capture().labels()
            if (device is None or label.device == device)
            and (fault_id is None or label.id == fault_id)
            and (event is None or label.event == event)
        ]

    def wait_for_label(
        self,
        fault_id: str,
        event: Literal["start", "end"] = "start",
        *,
        count: int = 1,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> list[FaultLabel]:
        """Block until `count` labels of `event` for fault `fault_id` have come back from the
        broker (one per stream the fault touches); return them. Raises an AssertionError
        listing what did arrive after `timeout` seconds."""

        def wanted(message: Any) -> bool:
            try:
                label = FaultLabel.decode(message.payload)
            except ContractError:
                return False
            return label.id == fault_id and label.event == event

        messages = self._label_capture().wait_for(wanted, count=count, timeout=timeout)
        return [FaultLabel.decode(m.payload) for m in messages]

    def stats(self) -> EngineStats:
        """The engine's figures: messages sent and acknowledged, rates, lateness, per worker
        (fresh from the workers while running; the last run's once stopped)."""
        engine = self._engine
        if engine is not None:
            return engine.refresh()
        if self._final is None:
            raise RuntimeError("the fleet has not been started")
        return self._final

    def _running(self) -> EngineController:
        engine = self._engine
        if engine is None:
            raise RuntimeError("the fleet is not running: start() it first")
        return engine

    def _label_capture(self) -> Capture:
        if self._labels is None:
            if not self._record_labels:
                raise RuntimeError("this fleet records no labels (record_labels=False)")
            raise RuntimeError("the fleet has not been started")
        return self._labels

    def _close_labels(self) -> None:
        # Closed but kept: what it recorded stays readable after the stop.
        if self._labels is not None:
            self._labels.close()


# -- virtual time ------------------------------------------------------------------------------

Document = Telemetry | FaultLabel | Status | FlatReading


@dataclass(frozen=True, slots=True)
class PlayedMessage:
    """One message of a scenario played in virtual time (`play_scenario`)."""

    t: float
    """virtual time it was due, seconds since the epoch"""
    topic: str
    retain: bool
    payload: bytes
    """the bytes a broker would have carried"""
    document: Document
    """the payload decoded: `Telemetry` (or `FlatReading` for the flat payload), `FaultLabel`
    on the labels topic, `Status` for a device's retained status (offline faults)"""


def _decode(topic: str, retain: bool, payload: bytes, label_topic: str) -> Document:
    if retain:
        return Status.decode(payload)
    if topic == label_topic:
        return FaultLabel.decode(payload)
    if payload.startswith(b'{"device_id"'):
        return FlatReading.decode(payload)
    return Telemetry.decode(payload)


class _ListSink:
    def __init__(self, into: list[PlayedMessage], label_topic: str) -> None:
        self._into = into
        self._label_topic = label_topic

    def write(self, t: float, message: GeneratedMessage) -> None:
        topic, payload, retain = message
        # The file sink keeps six decimals of `t`: the same here, so both give equal messages.
        document = _decode(topic, retain, payload, self._label_topic)
        self._into.append(PlayedMessage(t, topic, retain, payload, document))

    def close(self) -> None:
        pass


def _start(scenario: Scenario, start: float | datetime | str | None) -> float:
    if start is None:
        return scenario.origin if scenario.origin is not None else DEFAULT_START
    if isinstance(start, str):
        start = datetime.fromisoformat(start)
    return utc_seconds(start) if isinstance(start, datetime) else float(start)


@overload
def play_scenario(
    scenario: ScenarioArg | None = ...,
    duration: float | str = ...,
    *,
    devices: int | None = ...,
    seed: int | None = ...,
    interval: float | None = ...,
    start: float | datetime | str | None = ...,
    prefix: str = ...,
    topic: str | None = ...,
    payload: Literal["edgetwin", "flat"] = ...,
    into: list[PlayedMessage] | None = ...,
) -> list[PlayedMessage]: ...


@overload
def play_scenario(
    scenario: ScenarioArg | None = ...,
    duration: float | str = ...,
    *,
    devices: int | None = ...,
    seed: int | None = ...,
    interval: float | None = ...,
    start: float | datetime | str | None = ...,
    prefix: str = ...,
    topic: str | None = ...,
    payload: Literal["edgetwin", "flat"] = ...,
    into: Path,
) -> Counts: ...


def play_scenario(
    scenario: ScenarioArg | None = None,
    duration: float | str = 60.0,
    *,
    devices: int | None = None,
    seed: int | None = None,
    interval: float | None = None,
    start: float | datetime | str | None = None,
    prefix: str = "edgetwin",
    topic: str | None = None,
    payload: Literal["edgetwin", "flat"] = "edgetwin",
    into: list[PlayedMessage] | Path | None = None,
) -> list[PlayedMessage] | Counts:
    """Play a scenario for `duration` (seconds, or "1h", "1d") of virtual time, as fast as the
    machine allows, and return its messages in time order (ties in stream order).

    `scenario` is a scenario file, a `Scenario`, or None for `devices` default devices;
    `devices`, `seed` and `interval` override the file's as in `SimulatedFleet`. It starts at
    `start` (seconds since the epoch, a datetime or an ISO string; UTC without an offset),
    else at the file's `start`, else at `DEFAULT_START`. `prefix`, `topic` and `payload` shape
    topics and payloads as in a real-time run.

    `into` a list (or None, a new list): every message appended as a decoded `PlayedMessage`
    and the list returned; mind the memory (a day of 100 devices at 1 Hz is 8.6 million).
    `into` a Path: a JSON lines file as `edgetwin simulate --virtual --out` writes it (one
    `{"t", "topic", "retain", "payload"}` a line; `load_played` reads it back), and the counts
    of telemetry, labels and statuses returned.
    """
    chosen = _scenario(scenario, devices, seed=seed, interval=interval, device_prefix="device_")
    begin = _start(chosen, start)
    seconds = parse_duration(duration)
    topics = Topics(prefix=prefix, telemetry_template=topic)
    if isinstance(into, Path):
        sink = JsonLinesSink(into)
        try:
            return run_virtual(chosen, begin, seconds, sink, topics=topics, payload=payload)
        finally:
            sink.close()
    played: list[PlayedMessage] = [] if into is None else into
    run_virtual(
        chosen, begin, seconds, _ListSink(played, topics.labels()), topics=topics, payload=payload
    )
    return played


class _Line(msgspec.Struct):
    t: float
    topic: str
    retain: bool
    payload: msgspec.Raw


def load_played(path: Path, *, prefix: str = "edgetwin") -> list[PlayedMessage]:
    """The messages of a JSON lines file written by `play_scenario(..., into=path)` or
    `edgetwin simulate --virtual --out`, decoded as `play_scenario` returns them (payload
    bytes as played). `prefix` is the topic prefix the file was played with."""
    label_topic = Topics(prefix=prefix).labels()
    decoder = msgspec.json.Decoder(_Line)
    played: list[PlayedMessage] = []
    with path.open("rb") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                row = decoder.decode(line)
                payload = bytes(row.payload)
                document = _decode(row.topic, row.retain, payload, label_topic)
            except (msgspec.DecodeError, ContractError) as exc:
                raise ValueError(f"{path}:{number}: {exc}") from exc
            played.append(PlayedMessage(row.t, row.topic, row.retain, payload, document))
    return played
