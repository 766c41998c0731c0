"""Record live telemetry to a file and replay a file as a simulated device.

A recording is CSV or JSON lines, chosen by the file's suffix; both formats, and the
`RecordingError` every failure to read, write or replay one raises, are defined in
`hardware.recordings`. Numbers are written to a CSV in Python's shortest round-trip form, so a
replay reproduces them exactly. A CSV's quantity columns appear as quantities first do: when a
new one arrives, the file is rewritten once with the wider header (to a temporary file, then
renamed).

`Recorder` writes readings as they come and flushes them to the operating system every few
hundred rows or half a second, so a crash loses at most that much. `LiveRecorder` feeds one
from a broker subscription. `read_readings` reads either format back as contract payloads,
`Replayer` plays a recording again as simulated devices on the simulation engine, on a timeline
shifted to the run's start (`replay_command` is `edgetwin replay`).

A recording is also a signal source: `hardware.signals.Replay.from_csv(path, "temperature",
device=..., sensor=...)` (or `replay_csv`) plays one of its streams to an emulator or scenario.
"""

from __future__ import annotations

import csv
import io
import itertools
import logging
import math
import os
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, Final, Self

import msgspec

from edgetwin.agent.config import MqttSettings
from edgetwin.agent.contract import (
    Anomaly,
    ContractError,
    FlatReading,
    Source,
    Telemetry,
    Topics,
    check_id,
)
from edgetwin.agent.mqtt import Message, MqttLink
from edgetwin.hardware.quantities import UNITS
from edgetwin.hardware.recordings import (
    HEAD,
    TAIL,
    RecordingError,
    encode_line,
    quantity_column,
    read_stored,
    recording_format,
)

if TYPE_CHECKING:
    from edgetwin.gateway.engine import EngineController

log = logging.getLogger(__name__)

Payload = Telemetry | FlatReading


_SKIP_WARNINGS: Final = 5  # skipped messages logged at WARNING; the rest at DEBUG


@dataclass(frozen=True, slots=True)
class RecordedReading:
    """One reading of a recording. `topic` and `received` (seconds since the epoch, when the
    recorder got it) are known for JSON lines recordings; CSV keeps neither."""

    payload: Payload
    topic: str | None = None
    received: float | None = None

    @property
    def device(self) -> str:
        return (
            self.payload.device if isinstance(self.payload, Telemetry) else self.payload.device_id
        )

    @property
    def sensor(self) -> str | None:
        """None for a flat reading, which names no sensor."""
        return self.payload.sensor if isinstance(self.payload, Telemetry) else None

    @property
    def ts(self) -> float:
        return self.payload.ts if isinstance(self.payload, Telemetry) else self.payload.timestamp

    def quantities(self) -> dict[str, tuple[float, str]]:
        """Value and unit per quantity."""
        if isinstance(self.payload, Telemetry):
            return {name: (v.value, v.unit) for name, v in self.payload.values.items()}
        return {
            "temperature": (self.payload.temperature, UNITS["temperature"]),
            "humidity": (self.payload.humidity, UNITS["humidity"]),
        }


def decode_payload(payload: bytes) -> Payload:
    """An edgetwin reading or a flat one; ContractError for anything else."""
    try:
        document = msgspec.json.decode(payload)
    except msgspec.DecodeError as exc:
        raise ContractError(f"not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise ContractError("not a JSON object")
    if "device_id" in document and "sensor" not in document:
        return FlatReading.decode(payload)
    return Telemetry.decode(payload)


# -- writing -------------------------------------------------------------------------------------


def _float(value: float | None) -> str:
    return "" if value is None else repr(value)


class Recorder:
    """Appends readings to a CSV or JSON lines file; thread-safe, a context manager.

    Rows are flushed to the operating system once `flush_rows` are pending or `flush_interval`
    seconds have passed since the last flush (checked on every row and by `flush_if_due`, which
    a caller with an idle stream calls now and then). An existing file is refused unless
    `overwrite`.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        overwrite: bool = False,
        flush_rows: int = 256,
        flush_interval: float = 0.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.format = recording_format(self.path)
        self._flush_rows = flush_rows
        self._flush_interval = flush_interval
        self._clock = clock
        self._lock = threading.Lock()
        try:
            self._file: io.TextIOWrapper | None = self.path.open(
                "w" if overwrite else "x", encoding="utf-8", newline=""
            )
        except FileExistsError:
            raise RecordingError(
                f"{self.path} exists; choose another file or overwrite it"
            ) from None
        except OSError as exc:
            raise RecordingError(f"cannot write {self.path}: {exc}") from exc
        self._columns: list[str] = []  # CSV quantity columns, in order of first appearance
        self._writer = csv.writer(self._file)
        if self.format == "csv":
            self._writer.writerow([*HEAD, *TAIL])
        self._pending = 0
        self._last_flush = clock()
        self.count = 0
        self.skipped = 0

    def add_message(self, topic: str, payload: bytes, received: float | None = None) -> bool:
        """Record one MQTT message if it is a reading; returns whether it was recorded."""
        try:
            reading = decode_payload(payload)
        except ContractError as exc:
            with self._lock:
                self.skipped += 1
                skipped = self.skipped
            level = logging.WARNING if skipped <= _SKIP_WARNINGS else logging.DEBUG
            log.log(level, "not a reading, skipped", extra={"topic": topic, "error": str(exc)})
            return False
        # JSON lines keep the bytes as they came; a payload spread over lines is compacted.
        raw = payload if b"\n" not in payload and b"\r" not in payload else reading.encode()
        when = self._clock() if received is None else received
        self._add(RecordedReading(reading, topic, when), raw)
        return True

    def add(self, reading: RecordedReading) -> None:
        self._add(reading, None)

    def _add(self, reading: RecordedReading, raw: bytes | None) -> None:
        with self._lock:
            if self._file is None:
                raise RecordingError(f"{self.path} is closed")
            if self.format == "jsonl":
                if raw is None:
                    raw = reading.payload.encode()
                line = encode_line(reading.topic, reading.received, raw)
                self._file.write(line.decode() + "\n")
            else:
                self._write_row(reading)
            self.count += 1
            self._pending += 1
            if self._pending >= self._flush_rows:
                self._flush_locked()
        self.flush_if_due()

    def _write_row(self, reading: RecordedReading) -> None:
        quantities = reading.quantities()
        cells = {quantity_column(name, unit): value for name, (value, unit) in quantities.items()}
        new = [column for column in cells if column not in self._columns]
        if new:
            self._widen(new)
        payload = reading.payload
        anomaly = payload.anomaly if isinstance(payload, Telemetry) else None
        row = [
            reading.device,
            reading.sensor or "",
            repr(reading.ts),
            str(payload.seq) if isinstance(payload, Telemetry) else "",
            payload.source.value if isinstance(payload, Telemetry) else "",
            *(_float(cells.get(column)) for column in self._columns),
            anomaly.type if anomaly else "",
            anomaly.id if anomaly else "",
            _float(anomaly.start) if anomaly else "",
            _float(anomaly.end) if anomaly else "",
        ]
        self._writer.writerow(row)

    def _widen(self, new: list[str]) -> None:
        """Rewrite the file with `new` quantity columns: a CSV header cannot grow in place."""
        assert self._file is not None
        self._file.close()
        old = len(self._columns)
        self._columns.extend(new)
        temporary = self.path.with_name(self.path.name + ".tmp")
        with (
            self.path.open(encoding="utf-8", newline="") as source,
            temporary.open("w", encoding="utf-8", newline="") as target,
        ):
            rows = csv.reader(source)
            next(rows, None)
            writer = csv.writer(target)
            writer.writerow([*HEAD, *self._columns, *TAIL])
            cut = len(HEAD) + old
            padding = [""] * len(new)
            writer.writerows(row[:cut] + padding + row[cut:] for row in rows)
        os.replace(temporary, self.path)
        self._file = self.path.open("a", encoding="utf-8", newline="")
        self._writer = csv.writer(self._file)

    def flush_if_due(self) -> None:
        with self._lock:
            if self._pending and self._clock() - self._last_flush >= self._flush_interval:
                self._flush_locked()

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if self._file is not None:
            self._file.flush()
        self._pending = 0
        self._last_flush = self._clock()

    def close(self) -> None:
        with self._lock:
            if self._file is None:
                return
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class LiveRecorder:
    """A broker subscription feeding a `Recorder` until `count` readings are in or it is
    closed. Messages that are not readings (a status under a broad filter) are skipped."""

    def __init__(
        self,
        settings: MqttSettings,
        recorder: Recorder,
        topic_filters: Sequence[str] | None = None,
        *,
        count: int | None = None,
        qos: int = 1,
    ) -> None:
        self.recorder = recorder
        self.topic_filters = list(topic_filters or [settings.topics().all_telemetry()])
        self._count = count
        self._lock = threading.Lock()
        self.done = threading.Event()
        self.error: RecordingError | None = None
        """Why recording stopped early (the disk is full...); `done` is set with it."""
        self._link = MqttLink(settings, on_message=self._on_message)
        self._link.subscribe(self.topic_filters, qos=qos)

    def _on_message(self, message: Message) -> None:
        with self._lock:
            if self.done.is_set():
                return
            if message.retain:
                return  # telemetry is never retained; a retained one is old news, not live
            try:
                recorded = self.recorder.add_message(message.topic, message.payload)
            except (OSError, RecordingError) as exc:
                self.error = RecordingError(f"cannot write {self.recorder.path}: {exc}")
                log.error("recording stopped", extra={"error": str(self.error)})
                self.done.set()
                return
            if recorded and self._count is not None and self.recorder.count >= self._count:
                self.done.set()

    def start(self) -> Self:
        self._link.start()
        return self

    def wait_connected(self, timeout: float) -> str | None:
        """None once connected, else why the first attempt failed (see MqttLink.wait_attempt)."""
        return self._link.wait_attempt(timeout)

    def wait_ready(self, timeout: float) -> bool:
        """Whether the broker acknowledged the subscription within `timeout` seconds."""
        return self._link.wait_subscribed(timeout)

    def close(self) -> None:
        self.done.set()
        self._link.close()
        self.recorder.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# -- reading -------------------------------------------------------------------------------------


def read_readings(path: str | Path) -> list[RecordedReading]:
    """Every reading of a CSV or JSON lines recording, in file order, held to the contract;
    RecordingError naming the line for anything that does not parse or follow it."""
    readings = []
    for stored in read_stored(path):
        payload = stored.payload
        try:
            if isinstance(payload, bytes):
                reading = decode_payload(payload)
            else:
                # Through the contract's own decoder: a CSV is held to the wire's rules.
                document = msgspec.json.encode(payload)
                reading = (
                    Telemetry.decode(document)
                    if "sensor" in payload
                    else FlatReading.decode(document)
                )
        except ContractError as exc:
            raise RecordingError(f"{path}, line {stored.line}: {exc}") from exc
        readings.append(RecordedReading(reading, stored.topic, stored.received))
    return readings


# -- replaying -----------------------------------------------------------------------------------

_EARLY: Final = 1e-5
"""Seconds: a reading due this little after a tick goes out with it. A reading on its stream's
grid and the tick meant for it are the same instant computed two ways (the engine's timeline,
the replay's shift), a few units in the last place apart."""

_MIN_TICK: Final = 0.005
"""Wall seconds: no stream ticks more often than the engine's workers wake (`EngineSettings
.tick`); readings closer together than that go out on one tick."""


@dataclass(frozen=True, slots=True)
class Scheduled:
    """One message of a replay: publish `payload` on `topic` at `due` (seconds since the epoch)."""

    due: float
    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class ReplayStream:
    """One (device, sensor) stream of a replay as the engine schedules it (a StreamSpecLike).

    `interval` and `phase` are in recorded seconds from the recording's first reading: the
    engine runs a replay at a rate of `speed`, so schedule time is recording time. `positions`
    are the stream's readings in the replayer's (time) order, `times` their recorded ts."""

    index: int
    device: str
    sensor: str  # "flat" for the original simulator's flat readings, which name none
    interval: float
    phase: float
    positions: tuple[int, ...]
    times: tuple[float, ...]  # the readings' recorded ts


class Replayer:
    """A recording played again as simulated devices: a scenario of the simulation engine.

    Each message is due where it was recorded, shifted: the first reading falls on the run's
    start, the others follow at their recorded gaps divided by `speed`, and each payload's
    timestamps (ts, anomaly start and end) are moved to the time it is due (`schedule` lists
    them). Telemetry goes out with source "simulated". With `loop`, the recording repeats, one
    period being its span plus its median gap, and each stream's seq goes on counting from
    pass to pass.

    `device` publishes every reading as that device (a recording of several devices needs
    `only` to pick one); `only` keeps one recorded device. Topics are the recorded ones, unless
    `topics` is given, the device is renamed or the recording (CSV) has none: then they are
    built from `topics` (default: the contract's default prefix).

    It plays on the simulation engine as a scenario (`gateway.engine.interface.ScenarioLike`):
    `EngineController.start(replayer, rate=replayer.speed)`, as `edgetwin replay` does, so the
    engine's timeline rate is the replay's speed and schedule time is recorded time. Each
    recorded (device, sensor) is one stream, ticking at its typical interval: the median
    spacing of its readings (at least `_MIN_TICK` of wall time; with `loop`, rounded so that a
    whole number of ticks fills a period). Its ticks are placed just after its readings: at its
    first reading plus the largest delay, behind the grid that reading starts, of the readings
    within a quarter interval of it (their jitter). At each tick the generator sends the
    stream's readings whose due time has come and that have not gone out yet, so a gap in the
    recording stays a gap and no reading is lost or sent twice, even when the engine coalesces
    or skips ticks (the next tick served takes their readings).

    Timing resolution: a reading goes out on its stream's first tick at or after its due time
    (never before it), so, in wall time over the speed, within the spread of its stream's
    jitter when it sits on the stream's grid (a regularly spaced stream: an agent's, or the
    engine's own, which has none), and within one interval when it does not (an irregular
    stream, or readings after an outage that moved an agent's phase); plus the worker's
    batching tick, 5 ms. Readings of one stream keep their recorded order; between streams,
    order holds to that resolution.
    """

    seed = 0  # a recording draws no random numbers

    def __init__(
        self,
        readings: Sequence[RecordedReading],
        *,
        speed: float = 1.0,
        device: str | None = None,
        only: str | None = None,
        topics: Topics | None = None,
        loop: bool = False,
    ) -> None:
        if not (speed > 0 and math.isfinite(speed)):
            raise RecordingError(f"replay speed must be a positive number, got {speed}")
        if device is not None:
            check_id(device)
        if only is not None:
            readings = [r for r in readings if r.device == only]
            if not readings:
                raise RecordingError(f"the recording holds no device {only!r}")
        devices = sorted({r.device for r in readings})
        if not devices:
            raise RecordingError("nothing to replay: the recording is empty")
        if device is not None and len(devices) > 1:
            raise RecordingError(
                f"the recording holds {len(devices)} devices ({', '.join(devices[:5])}"
                f"{', ...' if len(devices) > 5 else ''}); pick the one to replay as {device!r}"
            )
        self._readings = sorted(readings, key=lambda r: r.ts)
        self.speed = speed
        self._device = device
        self._rebuild = topics is not None or device is not None
        self._topics = topics or Topics()
        self.loop = loop
        times = [r.ts for r in self._readings]
        self.first = times[0]  # recorded time of the first reading: the run's start
        span = times[-1] - times[0]
        gaps = [b - a for a, b in itertools.pairwise(times) if b > a]
        self.period = span + (statistics.median(gaps) if gaps else 0.0)
        if loop and self.period <= 0:
            raise RecordingError("cannot loop a recording whose readings all share one time")
        # Per stream, how far seq moves from one pass to the next.
        seqs: dict[tuple[str, str], list[int]] = {}
        for reading in self._readings:
            if isinstance(reading.payload, Telemetry):
                seqs.setdefault((reading.device, reading.payload.sensor), []).append(
                    reading.payload.seq
                )
        self._seq_step = {key: max(s) - min(s) + 1 for key, s in seqs.items()}
        self._topic_of = [self._topic(r) for r in self._readings]
        self._streams = self._plan()
        self._devices = len({stream.device for stream in self._streams})

    def __len__(self) -> int:
        """Readings in one pass."""
        return len(self._readings)

    def _topic(self, reading: RecordedReading) -> str:
        if reading.topic is not None and not self._rebuild:
            return reading.topic
        device = self._device or reading.device
        if isinstance(reading.payload, Telemetry):
            return self._topics.telemetry(device, reading.payload.sensor)
        if self._topics.telemetry_template is None:
            raise RecordingError(
                "flat readings name no sensor, so their topic cannot be built from the default "
                "edgetwin topics: give a telemetry topic template (e.g. 'sensors/data')"
            )
        return self._topics.telemetry(device, "flat")

    # -- the timeline -------------------------------------------------------------------------

    def shift(self, t: float, start: float, cycle: int = 0) -> float:
        """Recorded time `t` in pass `cycle` of a run starting at `start`."""
        offset = cycle * self.period
        return start + (t - self.first + offset) / self.speed

    def topic(self, position: int) -> str:
        """The topic of reading `position` (in time order)."""
        return self._topic_of[position]

    def payload(self, position: int, cycle: int, start: float) -> bytes:
        """Reading `position` (in time order) as published in pass `cycle` of a run starting
        at `start`: timestamps shifted, seq moved on by the passes before, source simulated."""
        reading = self._readings[position]
        payload = reading.payload
        if isinstance(payload, FlatReading):
            return FlatReading(
                device_id=self._device or payload.device_id,
                timestamp=self.shift(payload.timestamp, start, cycle),
                temperature=payload.temperature,
                humidity=payload.humidity,
            ).encode()
        anomaly = payload.anomaly
        if anomaly is not None:
            anomaly = Anomaly(
                type=anomaly.type,
                id=anomaly.id,
                start=self.shift(anomaly.start, start, cycle),
                end=None if anomaly.end is None else self.shift(anomaly.end, start, cycle),
            )
        step = self._seq_step[(payload.device, payload.sensor)]
        return Telemetry(
            device=self._device or payload.device,
            sensor=payload.sensor,
            ts=self.shift(payload.ts, start, cycle),
            seq=payload.seq + cycle * step,
            source=Source.SIMULATED,
            values=payload.values,
            anomaly=anomaly,
        ).encode()

    def schedule(self, start: float) -> Iterator[Scheduled]:
        """The messages of the replay, in order, each with the time it is due, for a run
        starting at `start`; endless with `loop`."""
        for cycle in itertools.count():
            for position, reading in enumerate(self._readings):
                yield Scheduled(
                    self.shift(reading.ts, start, cycle),
                    self._topic_of[position],
                    self.payload(position, cycle, start),
                )
            if not self.loop:
                return

    # -- engine streams (gateway.engine.interface.ScenarioLike) ---------------------------------

    def _plan(self) -> list[ReplayStream]:
        by_stream: dict[tuple[str, str | None], list[int]] = {}
        for position, reading in enumerate(self._readings):
            by_stream.setdefault((reading.device, reading.sensor), []).append(position)
        streams: list[ReplayStream] = []
        for (device, sensor), positions in by_stream.items():
            times = [self._readings[p].ts - self.first for p in positions]
            interval = self._interval(times)
            phase = math.fmod(times[0] + _lag(times, interval), interval)
            streams.append(
                ReplayStream(
                    index=len(streams),
                    device=self._device or device,
                    sensor=sensor or "flat",
                    interval=interval,
                    phase=phase,
                    positions=tuple(positions),
                    times=tuple(self._readings[p].ts for p in positions),
                )
            )
        return streams

    def _interval(self, times: Sequence[float]) -> float:
        """A stream's tick interval in recorded seconds (see the class docstring)."""
        gaps = [b - a for a, b in itertools.pairwise(times) if b > a]
        interval = statistics.median(gaps) if gaps else (self.period or 1.0)
        interval = max(interval, _MIN_TICK * self.speed)
        if self.loop:
            interval = self.period / max(1, round(self.period / interval))
        return interval

    def streams(self) -> list[ReplayStream]:
        return self._streams

    def iter_streams(self) -> Iterator[ReplayStream]:
        return iter(self._streams)

    def streams_at(self, indices: Collection[int]) -> dict[int, ReplayStream]:
        return {i: self._streams[i] for i in indices}

    def device_count(self) -> int:
        return self._devices

    def resized(self, devices: int) -> Replayer:
        if devices != self._devices:
            raise RecordingError(f"a replay plays the {self._devices} devices it recorded")
        return self

    def generator(
        self,
        topics: Topics | None = None,
        streams: Sequence[int] | None = None,
        payload: str = "edgetwin",
    ) -> ReplayGenerator:
        """The generator of `streams` (all by default). `topics` and `payload` are the run's
        defaults, which a replay does not use: its topics and payloads are the recording's."""
        return ReplayGenerator(self, streams)


def _lag(times: Sequence[float], interval: float) -> float:
    """How far after the grid of `interval` from the first time the on-grid times fall at
    most: the largest residual in [0, interval / 4)."""
    base = times[0]
    lag = 0.0
    for t in times:
        d = t - base
        residual = d - round(d / interval) * interval
        if lag < residual < interval / 4:
            lag = residual
    return lag


class ReplayGenerator:
    """A replay's messages on the engine's ticks (a GeneratorLike): at each tick of a stream,
    its readings due by then (wall time) that have not gone out yet.

    The run's start, the wall time its first reading is due, is taken from the first tick this
    generator serves, which the engine places at the run's origin plus the stream's phase over
    the speed (each worker process's generator takes its own: the same origin). Should the
    engine have coalesced that tick into a later one (a worker more than an interval late at
    the very start), the replay starts that much later, whole: nothing is sent early or lost.
    """

    def __init__(self, replayer: Replayer, streams: Sequence[int] | None) -> None:
        self._replayer = replayer
        specs = replayer.streams()
        ours = range(len(specs)) if streams is None else sorted(set(streams))
        bad = [i for i in ours if not 0 <= i < len(specs)]
        if bad:
            raise RecordingError(f"no stream {bad[0]}: the replay has {len(specs)}")
        self._specs = {i: specs[i] for i in ours}
        # Per stream: the next reading (its place among the stream's) and pass.
        self._next = {i: [0, 0] for i in ours}
        self.start: float | None = None
        self.emitted = 0

    def streams(self) -> list[ReplayStream]:
        return list(self._specs.values())

    def warm(self) -> None:
        """Nothing to build ahead: a payload is encoded when it goes out."""

    def inject(self, fault: Any) -> None:
        """A recording carries its own anomaly labels; injected faults do not apply to it."""

    def emit(self, index: int, t: float) -> list[tuple[str, bytes, bool]]:
        spec = self._specs.get(index)
        if spec is None:
            raise RecordingError(f"stream {index} is not served by this generator")
        replayer = self._replayer
        start = self.start
        if start is None:
            start = self.start = t - spec.phase / replayer.speed
        state = self._next[index]
        at, cycle = state
        positions, times = spec.positions, spec.times
        first, period, speed, loop = replayer.first, replayer.period, replayer.speed, replayer.loop
        topic, payload = replayer.topic, replayer.payload
        out: list[tuple[str, bytes, bool]] = []
        limit = t + _EARLY
        n = len(positions)
        while True:
            if at == n:
                if not loop:
                    break
                at, cycle = 0, cycle + 1
            # Replayer.shift, inline.
            if start + (times[at] - first + cycle * period) / speed > limit:
                break
            position = positions[at]
            out.append((topic(position), payload(position, cycle, start), False))
            at += 1
        state[0], state[1] = at, cycle
        self.emitted += len(out)
        return out


# -- command line --------------------------------------------------------------------------------


class _StopOnSignal:
    """SIGINT and SIGTERM set `event` instead of raising, restored on exit."""

    def __init__(self, event: threading.Event) -> None:
        self._event = event
        self._saved: dict[int, Any] = {}

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                self._saved[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number: int, frame: FrameType | None) -> None:
        self._event.set()

    def __exit__(self, *exc: object) -> None:
        for number, handler in self._saved.items():
            signal.signal(number, handler)


def record_command(
    settings: MqttSettings,
    out: Path,
    *,
    topic_filters: Sequence[str] | None = None,
    duration: float | None = None,
    count: int | None = None,
    overwrite: bool = False,
    connect_timeout: float = 10.0,
) -> int:
    """`edgetwin record`: returns the exit status; prints the count at the end. The default
    filter is all telemetry under `settings.prefix`."""
    stop = threading.Event()
    try:
        if count is not None and count < 1:
            raise ValueError(f"--count must be at least 1, got {count}")
        if duration is not None and not duration > 0:
            raise ValueError(f"--duration must be positive, got {duration}")
        recorder = Recorder(out, overwrite=overwrite)
    except (RecordingError, ValueError) as exc:
        print(f"edgetwin record: {exc}", file=sys.stderr)
        return 2
    live = LiveRecorder(settings, recorder, topic_filters, count=count)
    with _StopOnSignal(stop), live:
        error = live.wait_connected(connect_timeout)
        if error is None and not live.wait_ready(connect_timeout):
            error = f"{settings.url} did not acknowledge the subscription"
        if error is not None:
            print(f"edgetwin record: {error}", file=sys.stderr)
            return 1
        print(f"recording {', '.join(live.topic_filters)} to {out} (Ctrl-C stops)", file=sys.stderr)
        deadline = math.inf if duration is None else time.monotonic() + duration
        while not (stop.is_set() or live.done.is_set()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            # Bounded waits: an idle stream still gets its rows flushed every half second.
            stop.wait(min(0.5, remaining))
            recorder.flush_if_due()
    print(f"recorded {recorder.count} readings to {out} ({recorder.skipped} skipped)")
    if live.error is not None:
        print(f"edgetwin record: {live.error}", file=sys.stderr)
        return 1
    return 0


def replay_command(
    path: Path,
    settings: MqttSettings,
    *,
    speed: float = 1.0,
    device: str | None = None,
    only: str | None = None,
    loop: bool = False,
    topics: Topics | None = None,
    duration: float | None = None,
    qos: int = 1,
    connect_timeout: float = 10.0,
) -> int:
    """`edgetwin replay`: the recording on the simulation engine (a worker in this process, or
    processes for a large one: chosen from the rate), at a rate of `speed`, to the broker of
    `settings`. `topics` rebuilds every topic (else JSONL keeps its recorded ones). Returns the
    exit status; prints at the end what reached the socket (and, at QoS 1, the broker's
    PUBACK)."""
    from edgetwin.gateway.engine import (
        EngineController,
        EngineError,
        EngineInputError,
        EngineSettings,
    )
    from edgetwin.gateway.engine.link import endpoint_from_mqtt, probe

    stop = threading.Event()
    try:
        if duration is not None and not duration > 0:
            raise ValueError(f"--duration must be positive, got {duration}")
        if qos not in (0, 1):
            raise ValueError(f"--qos must be 0 or 1, got {qos}")
        readings = read_readings(path)
        replayer = Replayer(
            readings, speed=speed, device=device, only=only, topics=topics, loop=loop
        )
    except (RecordingError, ContractError, ValueError) as exc:
        print(f"edgetwin replay: {exc}", file=sys.stderr)
        return 2
    endpoint = msgspec.structs.replace(
        endpoint_from_mqtt(settings), client_id_prefix="edgetwin-replay"
    )
    error = probe(endpoint, connect_timeout)
    if error is not None:
        print(f"edgetwin replay: {error}", file=sys.stderr)
        return 1
    engine = EngineController(
        endpoint, EngineSettings(qos=1 if qos else 0, start_timeout=connect_timeout)
    )
    with _StopOnSignal(stop):
        try:
            engine.start(replayer, qos=qos, rate=speed, fleet="replay")
        except EngineInputError as exc:
            print(f"edgetwin replay: {exc}", file=sys.stderr)
            return 2
        except EngineError as exc:
            print(f"edgetwin replay: {exc}", file=sys.stderr)
            return 1
        try:
            print(
                f"replaying {len(replayer)} readings from {path} at {speed}x (Ctrl-C stops)",
                file=sys.stderr,
            )
            _wait_replayed(engine, replayer, stop, duration, qos)
        finally:
            engine.close()
    final = engine.stats()
    missing = final.refused + final.lost
    if qos == 1:
        missing = max(missing, final.sent - final.acked)
    line = f"replayed {final.sent} readings"
    if not loop and final.sent < len(replayer):
        line += f" of {len(replayer)}"
    if qos == 1:
        line += f", {final.acked} acknowledged"
    if final.rejected:
        line += f", {final.rejected} rejected"
    if final.refused or final.lost:
        line += f", {final.refused} refused, {final.lost} lost"
    print(line)
    return 1 if missing else 0


def _wait_replayed(
    engine: EngineController,
    replayer: Replayer,
    stop: threading.Event,
    duration: float | None,
    qos: int,
) -> None:
    """Until `stop`, `duration` seconds, or the end of a replay that does not loop: every
    reading accounted for (handed to the socket, or at QoS 1 acknowledged or refused), or,
    once the last is past due, nothing moving any more."""
    began = time.monotonic()
    deadline = math.inf if duration is None else began + duration
    # The last reading is due a span over the speed after the start (about now), and goes out
    # on its stream's next tick at the latest.
    longest = max(stream.interval for stream in replayer.streams())
    due_end = began + (replayer.period + longest) / replayer.speed + 0.5
    total = len(replayer)
    last: tuple[int, ...] | None = None
    while not stop.wait(min(0.1, max(deadline - time.monotonic(), 0.0))):
        now = time.monotonic()
        if now >= deadline:
            return
        if replayer.loop:
            continue
        stats = engine.refresh()
        done = stats.acked + stats.rejected + stats.refused if qos == 1 else stats.sent
        if done >= total:
            return
        counters = (stats.sent, stats.acked, stats.refused, stats.lost)
        if now >= due_end and counters == last:
            return
        last = counters
