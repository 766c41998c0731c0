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
`Replayer` publishes a recording again as a simulated device, on a timeline shifted to now.

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
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Final, Self

import msgspec

from agent.config import MqttSettings
from agent.contract import (
    DEFAULT_PREFIX,
    Anomaly,
    ContractError,
    FlatReading,
    Source,
    Telemetry,
    Topics,
    check_id,
)
from agent.mqtt import Delivery, Message, MqttLink, PublishError
from hardware.quantities import UNITS
from hardware.recordings import (
    HEAD,
    TAIL,
    RecordingError,
    encode_line,
    quantity_column,
    read_stored,
    recording_format,
)

log = logging.getLogger(__name__)

Payload = Telemetry | FlatReading
Publish = Callable[[str, bytes], object]


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


@dataclass(frozen=True, slots=True)
class Scheduled:
    """One message of a replay: publish `payload` on `topic` at `due` (seconds since the epoch)."""

    due: float
    topic: str
    payload: bytes


class Replayer:
    """Publishes a recording again as a simulated device.

    Readings are played in the order of their `ts`: the first falls on the moment `run`
    starts, the others follow at their recorded gaps divided by `speed`, and each payload's
    timestamps (ts, anomaly start and end) are moved to the time it is due. Telemetry goes out
    with source "simulated". With `loop`, the recording repeats, one period being its span
    plus its median gap, and each stream's seq goes on counting from pass to pass.

    `device` publishes every reading as that device (a recording of several devices needs
    `only` to pick one); `only` keeps one recorded device. Topics are the recorded ones, unless
    `topics` is given, the device is renamed or the recording (CSV) has none: then they are
    built from `topics` (default: the contract's default prefix).
    """

    def __init__(
        self,
        readings: Sequence[RecordedReading],
        publish: Publish,
        *,
        speed: float = 1.0,
        device: str | None = None,
        only: str | None = None,
        topics: Topics | None = None,
        loop: bool = False,
        clock: Callable[[], float] = time.time,
        wait: Callable[[float], bool] | None = None,
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
        self._publish = publish
        self.speed = speed
        self._device = device
        self._rebuild = topics is not None or device is not None
        self._topics = topics or Topics()
        self.loop = loop
        self._clock = clock
        self._wait = wait
        times = [r.ts for r in self._readings]
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
        self.published = 0

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

    def schedule(self, start: float) -> Iterator[Scheduled]:
        """The messages of the replay, in order, for a run starting at `start`; endless with
        `loop`."""
        first = self._readings[0].ts
        for cycle in itertools.count():
            offset = cycle * self.period
            for reading, topic in zip(self._readings, self._topic_of, strict=True):

                def shift(t: float, offset: float = offset) -> float:
                    return start + (t - first + offset) / self.speed

                due = shift(reading.ts)
                yield Scheduled(due, topic, self._payload(reading, cycle, shift).encode())
            if not self.loop:
                return

    def _payload(
        self, reading: RecordedReading, cycle: int, shift: Callable[[float], float]
    ) -> Payload:
        payload = reading.payload
        if isinstance(payload, FlatReading):
            return FlatReading(
                device_id=self._device or payload.device_id,
                timestamp=shift(payload.timestamp),
                temperature=payload.temperature,
                humidity=payload.humidity,
            )
        anomaly = payload.anomaly
        if anomaly is not None:
            anomaly = Anomaly(
                type=anomaly.type,
                id=anomaly.id,
                start=shift(anomaly.start),
                end=None if anomaly.end is None else shift(anomaly.end),
            )
        step = self._seq_step[(payload.device, payload.sensor)]
        return Telemetry(
            device=self._device or payload.device,
            sensor=payload.sensor,
            ts=shift(payload.ts),
            seq=payload.seq + cycle * step,
            source=Source.SIMULATED,
            values=payload.values,
            anomaly=anomaly,
        )

    def run(
        self,
        stop: threading.Event | None = None,
        *,
        duration: float | None = None,
        count: int | None = None,
    ) -> int:
        """Publish until the recording ends (never, with `loop`), `stop` is set, `duration`
        seconds have passed or `count` messages are out; returns how many were published."""
        stop = stop or threading.Event()
        wait = self._wait or stop.wait
        start = self._clock()
        end = math.inf if duration is None else start + duration
        published = 0
        for item in self.schedule(start):
            if stop.is_set() or item.due > end or (count is not None and published >= count):
                break
            delay = item.due - self._clock()
            if delay > 0 and wait(delay):
                break
            self._publish(item.topic, item.payload)
            published += 1
            self.published += 1
        return published


# -- command line --------------------------------------------------------------------------------


def parse_broker(text: str) -> tuple[str, int]:
    """HOST:PORT (port 1883 when left out; brackets around an IPv6 address)."""
    host, sep, port = text.rpartition(":")
    if not sep or (host.count(":") and not host.startswith("[")):
        host, port = text, "1883"
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"broker {text!r}: expected HOST:PORT")
    return host, int(port)


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
    broker: str,
    out: Path,
    *,
    topic_filters: Sequence[str] | None = None,
    prefix: str = DEFAULT_PREFIX,
    duration: float | None = None,
    count: int | None = None,
    overwrite: bool = False,
    connect_timeout: float = 10.0,
) -> int:
    """`edgetwin record`: returns the exit status; prints the count at the end."""
    stop = threading.Event()
    try:
        if count is not None and count < 1:
            raise ValueError(f"--count must be at least 1, got {count}")
        if duration is not None and not duration > 0:
            raise ValueError(f"--duration must be positive, got {duration}")
        host, port = parse_broker(broker)
        settings = MqttSettings(host=host, port=port, protocol="3.1.1", prefix=prefix)
        recorder = Recorder(out, overwrite=overwrite)
    except (RecordingError, ValueError) as exc:
        print(f"edgetwin record: {exc}", file=sys.stderr)
        return 2
    live = LiveRecorder(settings, recorder, topic_filters, count=count)
    with _StopOnSignal(stop), live:
        if not live.wait_ready(connect_timeout):
            print(f"edgetwin record: no broker answered on {host}:{port}", file=sys.stderr)
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


class _Window:
    """Publishes through a link, holding at most `size` unacknowledged messages: a replay at
    high speed waits for the broker instead of queueing the whole file in memory."""

    def __init__(self, link: MqttLink, qos: int, size: int = 1000, timeout: float = 10.0) -> None:
        self._link = link
        self._qos = qos
        self._size = size
        self._timeout = timeout
        self._outstanding: deque[Delivery] = deque()

    def publish(self, topic: str, payload: bytes) -> None:
        while len(self._outstanding) >= self._size:
            if not self._outstanding.popleft().wait(self._timeout):
                raise PublishError(f"broker acknowledged nothing for {self._timeout} s")
        self._outstanding.append(self._link.publish(topic, payload, qos=self._qos))

    def drain(self) -> bool:
        return all(delivery.wait(self._timeout) for delivery in self._outstanding)


def replay_command(
    path: Path,
    broker: str,
    *,
    speed: float = 1.0,
    device: str | None = None,
    only: str | None = None,
    loop: bool = False,
    prefix: str | None = None,
    topic_template: str | None = None,
    duration: float | None = None,
    qos: int = 1,
    connect_timeout: float = 10.0,
) -> int:
    """`edgetwin replay`: returns the exit status; prints the count at the end."""
    stop = threading.Event()
    try:
        if duration is not None and not duration > 0:
            raise ValueError(f"--duration must be positive, got {duration}")
        host, port = parse_broker(broker)
        readings = read_readings(path)
        topics = None
        if prefix is not None or topic_template is not None:
            topics = Topics(prefix=prefix or DEFAULT_PREFIX, telemetry_template=topic_template)
        settings = MqttSettings(host=host, port=port, protocol="3.1.1")
        link = MqttLink(settings)
        window = _Window(link, qos)
        replayer = Replayer(
            readings,
            window.publish,
            speed=speed,
            device=device,
            only=only,
            topics=topics,
            loop=loop,
        )
    except (RecordingError, ContractError, ValueError) as exc:
        print(f"edgetwin replay: {exc}", file=sys.stderr)
        return 2
    link.start()
    try:
        with _StopOnSignal(stop):
            if not link.wait_connected(connect_timeout):
                print(f"edgetwin replay: no broker answered on {host}:{port}", file=sys.stderr)
                return 1
            print(
                f"replaying {len(readings)} readings from {path} at {speed}x (Ctrl-C stops)",
                file=sys.stderr,
            )
            published = replayer.run(stop, duration=duration)
            delivered = window.drain()
    except PublishError as exc:
        print(f"edgetwin replay: {exc}", file=sys.stderr)
        return 1
    finally:
        link.close()
    print(f"replayed {published} readings{'' if delivered else ' (some not acknowledged)'}")
    return 0
