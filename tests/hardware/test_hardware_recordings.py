"""Recording files as the hardware layer reads them: column tables and telemetry recordings."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from edgetwin.hardware.recordings import (
    HEAD,
    TAIL,
    RecordingError,
    encode_line,
    parse_quantity_column,
    quantity_column,
    read_columns,
    read_stored,
    recording_format,
)

T0 = 1_700_000_000.0


def reading(ts: float, sensor: str = "env", **values: float) -> bytes:
    units = {"temperature": "°C", "humidity": "%RH"}
    document = {
        "v": 1,
        "device": "dev-1",
        "sensor": sensor,
        "ts": ts,
        "seq": 0,
        "source": "real",
        "values": {n: {"value": v, "unit": units[n]} for n, v in values.items()},
    }
    return json.dumps(document, ensure_ascii=False).encode()


def jsonl(path: Path, payloads: list[bytes]) -> Path:
    lines = [encode_line("edgetwin/dev-1/telemetry/env", T0, p).decode() for p in payloads]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_json_lines_recording_is_a_column_table_per_stream(tmp_path: Path) -> None:
    path = jsonl(
        tmp_path / "rec.jsonl",
        [
            reading(T0 + 10, temperature=21.0, humidity=40.0),
            reading(T0, temperature=20.0),  # out of order: sorted by time
            reading(T0 + 5, sensor="probe", temperature=4.0),
            reading(T0 + 10, temperature=99.0, humidity=1.0),  # a duplicate: dropped
        ],
    )
    with pytest.raises(RecordingError, match="streams found: dev-1/env, dev-1/probe"):
        read_columns(path)
    columns = read_columns(path, sensor="env")
    assert columns["temperature"] == ([T0, T0 + 10], [20.0, 21.0])
    times, humidity = columns["humidity"]
    assert times == [T0, T0 + 10]
    assert math.isnan(humidity[0])
    assert humidity[1] == 40.0
    assert read_columns(path, device="dev-1", sensor="probe") == {"temperature": ([T0 + 5], [4.0])}


def test_stored_readings_keep_the_line_and_the_payload_as_received(tmp_path: Path) -> None:
    payload = reading(T0, temperature=20.0)
    path = jsonl(tmp_path / "rec.ndjson", [payload])
    (stored,) = read_stored(path)
    assert (stored.line, stored.payload, stored.topic, stored.received) == (
        1,
        payload,
        "edgetwin/dev-1/telemetry/env",
        T0,
    )


def test_a_csv_row_stands_for_its_payload_document(tmp_path: Path) -> None:
    path = tmp_path / "rec.csv"
    header = [
        *HEAD,
        quantity_column("temperature", "°C"),
        quantity_column("humidity", "%RH"),
        *TAIL,
    ]
    path.write_text(
        ",".join(header)
        + "\n"
        + "dev-1,env,1700000000.0,4,real,21.5,,spike,s-1,1700000000.0,\n"
        + "dev-2,,1700000001.0,,,20.0,40.0,,,,\n",
        encoding="utf-8",
    )
    first, flat = read_stored(path)
    assert first.line == 2
    assert first.payload == {
        "device": "dev-1",
        "sensor": "env",
        "ts": T0,
        "seq": 4,
        "source": "real",
        "values": {"temperature": {"value": 21.5, "unit": "°C"}},
        "anomaly": {"type": "spike", "id": "s-1", "start": T0},
    }
    assert flat.payload == {
        "device_id": "dev-2",
        "timestamp": T0 + 1,
        "temperature": 20.0,
        "humidity": 40.0,
    }
    assert read_columns(path, device="dev-2") == {
        "temperature": ([T0 + 1], [20.0]),
        "humidity": ([T0 + 1], [40.0]),
    }


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("t.csv", "time,temperature\n0,20\n", "need a 'timestamp' column"),
        ("t.csv", "timestamp,temperature\n0,20\nyesterday,21\n", "t.csv, line 3"),
        ("r.csv", "device,sensor,ts,t[°C]\n", "missing columns"),
        ("r.jsonl", "{not json\n", "r.jsonl, line 1"),
        ("r.jsonl", '{"topic": null, "received": null, "payload": [1]}\n', "line 1: not a reading"),
        ("r.jsonl", "\n", "no readings"),
    ],
)
def test_every_failure_to_read_is_a_recording_error(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(RecordingError, match=message):
        read_columns(path)


def test_a_missing_file_is_a_recording_error(tmp_path: Path) -> None:
    for name in ("absent.csv", "absent.jsonl"):
        with pytest.raises(RecordingError, match="cannot read"):
            read_columns(tmp_path / name)
    with pytest.raises(RecordingError, match="unknown recording format"):
        recording_format("day.txt")


def test_quantity_columns_name_the_unit() -> None:
    assert quantity_column("temperature", "°C") == "temperature[°C]"
    assert parse_quantity_column("temperature[°C]") == ("temperature", "°C")
    assert parse_quantity_column("temperature") is None
    assert parse_quantity_column("anomaly") is None
