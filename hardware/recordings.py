"""Recording files: every format a recorded signal or reading is read from, and its one error.

Two kinds of file, each read by one function:

- **A column table** (CSV): a `timestamp` column, seconds since the epoch or ISO 8601 (UTC
  when no offset is given), and one column per quantity; an empty cell, or one reading `nan`,
  is a missing measurement. `read_columns` reads it as (times, values) per column: what the
  `Replay` signal model plays (`hardware.signals.Replay.from_csv`, a scenario's `replay` part).
- **A telemetry recording**, written by `edgetwin record` (`gateway.recording.Recorder`) in a
  format chosen by the file's suffix:

  - JSON lines (``.jsonl``, ``.ndjson``): one object per reading, ``{"topic", "received",
    "payload"}``, the payload exactly as it came off the wire (an edgetwin `Telemetry` or the
    original simulator's `FlatReading`, see `agent.contract`).
  - CSV (``.csv``): columns `HEAD` (``device, sensor, ts, seq, source``), then one column per
    quantity named ``name[unit]`` (``temperature[°C]``, see `quantity_column`), then `TAIL`
    (``anomaly`` (the label's type), ``anomaly_id, anomaly_start, anomaly_end``). A flat
    reading leaves sensor, seq and source empty and fills temperature and humidity in the
    vocabulary's units.

  `read_stored` gives its readings as stored, their payloads not yet held to the contract
  (the hardware layer does not know it): `gateway.recording.read_readings` does that.
  `read_columns` also reads one stream of a telemetry recording, in either format, as a
  column table, so a recorded day can drive an emulator or a scenario.

Every failure to read is a `RecordingError` naming the file and, where there is one, the line.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

import msgspec

from edgetwin.hardware.quantities import UNITS

Format = Literal["csv", "jsonl"]
Columns = dict[str, tuple[list[float], list[float]]]
"""A column table: (times, values) per column, times in seconds since the epoch."""

SUFFIXES: Final[Mapping[str, Format]] = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
HEAD: Final = ("device", "sensor", "ts", "seq", "source")
TAIL: Final = ("anomaly", "anomaly_id", "anomaly_start", "anomaly_end")
TIMESTAMP: Final = "timestamp"
"""The time column of a column table."""
FLAT_QUANTITIES: Final = ("temperature", "humidity")
"""What a flat reading measures, in the order of its payload."""

_QUANTITY_COLUMN: Final = re.compile(r"^([a-z][a-z0-9_]{0,31})\[([^\[\]]{1,16})\]$")


class RecordingError(ValueError):
    """A recording that cannot be read, written or replayed; says which file and line."""


def recording_format(path: str | Path) -> Format:
    """The telemetry recording format of `path`, from its suffix."""
    suffix = Path(path).suffix.lower()
    try:
        return SUFFIXES[suffix]
    except KeyError:
        raise RecordingError(
            f"{path}: unknown recording format {suffix or '(no suffix)'!r}; "
            f"use one of {', '.join(SUFFIXES)}"
        ) from None


def quantity_column(name: str, unit: str) -> str:
    """A telemetry CSV's column of quantity `name` in `unit`: ``name[unit]``."""
    return f"{name}[{unit}]"


def parse_quantity_column(column: str) -> tuple[str, str] | None:
    """(name, unit) of a ``name[unit]`` column; None for any other column."""
    match = _QUANTITY_COLUMN.fullmatch(column)
    return None if match is None else (match[1], match[2])


class _Line(msgspec.Struct, frozen=True):
    topic: str | None
    received: float | None
    payload: msgspec.Raw


_line_encoder: Final = msgspec.json.Encoder()
_line_decoder: Final = msgspec.json.Decoder(_Line)


def encode_line(topic: str | None, received: float | None, payload: bytes) -> bytes:
    """One JSON lines entry, without its newline; `payload` is JSON text on one line."""
    return _line_encoder.encode(_Line(topic, received, msgspec.Raw(payload)))


# -- telemetry recordings --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredReading:
    """One reading of a telemetry recording as the file holds it."""

    line: int
    """Where it is in the file (1 is the first line), for error messages."""
    payload: bytes | dict[str, Any]
    """JSON lines: the payload's JSON text as received. CSV: the payload document the row
    stands for (an edgetwin reading, or a flat one when the row names no sensor)."""
    topic: str | None = None
    received: float | None = None
    """Seconds since the epoch when the recorder got it; JSON lines only, like `topic`."""


def read_stored(path: str | Path) -> list[StoredReading]:
    """Every reading of a telemetry recording, in file order; RecordingError naming the line
    for anything that does not follow the format."""
    path = Path(path)
    return _read_stored(path, recording_format(path))


def _read_stored(path: Path, fmt: Format) -> list[StoredReading]:
    try:
        with path.open(encoding="utf-8", newline="") as file:
            stored = list(_jsonl(path, file) if fmt == "jsonl" else _csv(path, file))
    except OSError as exc:
        raise RecordingError(f"cannot read {path}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise RecordingError(f"{path}: not UTF-8 text: {exc}") from exc
    if not stored:
        raise RecordingError(f"{path}: no readings")
    return stored


def _jsonl(path: Path, file: io.TextIOBase) -> Iterator[StoredReading]:
    for number, text in enumerate(file, 1):
        if not text.strip():
            continue
        try:
            line = _line_decoder.decode(text)
        except msgspec.DecodeError as exc:
            raise RecordingError(f"{path}, line {number}: {exc}") from exc
        yield StoredReading(number, bytes(line.payload), line.topic, line.received)


def _csv(path: Path, file: io.TextIOBase) -> Iterator[StoredReading]:
    rows = csv.reader(file)
    header = next(rows, None)
    if header is None:
        raise RecordingError(f"{path}: empty file")
    missing = [name for name in (*HEAD, *TAIL) if name not in header]
    if missing:
        raise RecordingError(
            f"{path}: not an edgetwin recording, missing columns {missing}; "
            f"expected {', '.join(HEAD)}, quantity[unit]..., {', '.join(TAIL)}"
        )
    quantities: dict[int, tuple[str, str]] = {}
    for index, name in enumerate(header):
        if name in HEAD or name in TAIL:
            continue
        parsed = parse_quantity_column(name)
        if parsed is None:
            raise RecordingError(f"{path}: column {name!r} is not a quantity named 'name[unit]'")
        quantities[index] = parsed
    at = {name: header.index(name) for name in (*HEAD, *TAIL)}
    for row in rows:
        if not any(row):
            continue
        if len(row) != len(header):
            raise RecordingError(
                f"{path}, line {rows.line_num}: {len(row)} cells, the header has {len(header)}"
            )
        try:
            document = _csv_document(row, at, quantities)
        except ValueError as exc:
            raise RecordingError(f"{path}, line {rows.line_num}: {exc}") from exc
        yield StoredReading(rows.line_num, document)


def _csv_document(
    row: list[str], at: Mapping[str, int], quantities: Mapping[int, tuple[str, str]]
) -> dict[str, Any]:
    def cell(name: str) -> str:
        return row[at[name]].strip()

    values: dict[str, dict[str, Any]] = {}
    for index, (name, unit) in quantities.items():
        text = row[index].strip()
        if not text:
            continue
        if name in values:
            raise ValueError(f"two values for {name!r}")
        values[name] = {"value": float(text), "unit": unit}
    document: dict[str, Any]
    if not cell("sensor"):
        document = {"device_id": cell("device"), "timestamp": float(cell("ts"))}
        for name in FLAT_QUANTITIES:
            if name not in values or values[name]["unit"] != UNITS[name]:
                raise ValueError(
                    f"a flat reading (no sensor) needs {quantity_column(name, UNITS[name])}"
                )
            document[name] = values[name]["value"]
        return document
    document = {
        "device": cell("device"),
        "sensor": cell("sensor"),
        "ts": float(cell("ts")),
        "seq": int(cell("seq")),
        "source": cell("source"),
        "values": values,
    }
    if cell("anomaly"):
        document["anomaly"] = {
            "type": cell("anomaly"),
            "id": cell("anomaly_id"),
            "start": float(cell("anomaly_start")),
        }
        if cell("anomaly_end"):
            document["anomaly"]["end"] = float(cell("anomaly_end"))
    return document


# -- column tables ---------------------------------------------------------------------------


def read_columns(
    path: str | Path, *, device: str | None = None, sensor: str | None = None
) -> Columns:
    """(times, values) per column of a column table, or of one stream of a telemetry recording.

    A CSV (any file not named as JSON lines) with a `timestamp` column is a column table. A
    CSV with a telemetry recording's columns, or a JSON lines file, is a telemetry recording:
    its `ts` gives the times and its quantities the columns, by name. Such a file may hold
    several (device, sensor) streams; `device` and `sensor` pick one (a flat reading's sensor
    is ""). Its readings are put in time order, a reading at the same time as the one before
    (a duplicate) is dropped, and a quantity the stream did not measure in a reading is NaN
    there.
    """
    path = Path(path)
    if SUFFIXES.get(path.suffix.lower()) != "jsonl":
        try:
            with path.open(newline="", encoding="utf-8") as file:
                header = next(csv.reader(file), [])
                if TIMESTAMP in header or not set(header) >= {"device", "sensor", "ts"}:
                    file.seek(0)
                    return _read_table(path, file)
        except OSError as exc:
            raise RecordingError(f"cannot read {path}: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise RecordingError(f"{path}: not UTF-8 text: {exc}") from exc
        return _read_stream(path, _read_stored(path, "csv"), device, sensor)
    return _read_stream(path, _read_stored(path, "jsonl"), device, sensor)


def _read_table(path: Path, file: io.TextIOBase) -> Columns:
    reader = csv.DictReader(file)
    columns = [name for name in reader.fieldnames or () if name != TIMESTAMP]
    if TIMESTAMP not in (reader.fieldnames or ()) or not columns:
        raise RecordingError(
            f"{path}: need a {TIMESTAMP!r} column and at least one other, or the columns of "
            f"an edgetwin recording ({', '.join(HEAD)}, ...)"
        )
    times: list[float] = []
    values: dict[str, list[float]] = {name: [] for name in columns}
    for row in reader:
        try:
            times.append(_parse_timestamp(row[TIMESTAMP]))
            for name in columns:
                cell = (row[name] or "").strip()
                values[name].append(float(cell) if cell else math.nan)
        except ValueError as exc:
            raise RecordingError(f"{path}, line {reader.line_num}: {exc}") from exc
    return {name: (times, values[name]) for name in columns}


def _read_stream(
    path: Path, stored: list[StoredReading], device: str | None, sensor: str | None
) -> Columns:
    rows: list[tuple[float, dict[str, float]]] = []
    streams: set[tuple[str, str]] = set()
    names: dict[str, None] = {}  # quantities in order of first appearance
    for reading in stored:
        try:
            at, measured = _stream_reading(reading.payload)
        except (ValueError, TypeError, KeyError, msgspec.DecodeError) as exc:
            raise RecordingError(f"{path}, line {reading.line}: not a reading: {exc}") from exc
        if (device is not None and at[0] != device) or (sensor is not None and at[1] != sensor):
            continue
        streams.add((at[0], at[1]))
        rows.append((at[2], measured))
        names.update(dict.fromkeys(measured))
    if len(streams) != 1:
        found = ", ".join(f"{d}/{s}" if s else d for d, s in sorted(streams)[:10]) or "none"
        raise RecordingError(
            f"{path}: choose one stream by device and sensor; streams found: {found}"
        )
    rows.sort(key=lambda row: row[0])
    rows = [row for i, row in enumerate(rows) if i == 0 or row[0] > rows[i - 1][0]]
    times = [t for t, _ in rows]
    return {name: (times, [m.get(name, math.nan) for _, m in rows]) for name in names}


def _stream_reading(
    payload: bytes | dict[str, Any],
) -> tuple[tuple[str, str, float], dict[str, float]]:
    """((device, sensor, time), value per quantity) of a stored payload, edgetwin or flat."""
    document = msgspec.json.decode(payload) if isinstance(payload, bytes) else payload
    if "device_id" in document and "sensor" not in document:
        at = (str(document["device_id"]), "", float(document["timestamp"]))
        return at, {name: float(document[name]) for name in FLAT_QUANTITIES}
    at = (str(document["device"]), str(document["sensor"]), float(document["ts"]))
    return at, {name: float(v["value"]) for name, v in document["values"].items()}


def _parse_timestamp(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    moment = datetime.fromisoformat(text.strip())
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
