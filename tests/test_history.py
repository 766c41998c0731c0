"""The recent history per stream (gateway/history.py) and GET /devices/{id}/history."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from edgetwin.agent.contract import Anomaly, Presence, Source, Status, Telemetry, Value
from edgetwin.gateway.app import create_app
from edgetwin.gateway.config import GatewayConfig, ManifestDevice
from edgetwin.gateway.history import History
from edgetwin.testing.broker import Broker
from edgetwin.testing.capture import publish
from edgetwin.testing.waiting import poll
from tests.fleet_helpers import bme280, mqtt_settings

T0 = 1_795_000_000.0


def reading(
    seq: int,
    *,
    device: str = "dev-1",
    sensor: str = "env",
    source: Source = Source.EMULATED,
    anomaly: str | None = None,
    **values: float,
) -> Telemetry:
    quantities = values or {"temperature": 20.0 + seq / 100, "humidity": 50.0}
    units = {"temperature": "°C", "humidity": "%RH", "pressure": "hPa"}
    return Telemetry(
        device=device,
        sensor=sensor,
        ts=T0 + seq,
        seq=seq,
        source=source,
        values={q: Value(value=v, unit=units.get(q, "")) for q, v in quantities.items()},
        anomaly=Anomaly(type=anomaly, id="f1", start=T0) if anomaly else None,
    )


def test_a_ring_keeps_the_last_points_oldest_first() -> None:
    history = History(points=5)
    for seq in range(1, 13):
        history.record(reading(seq, source=Source.SIMULATED if seq > 9 else Source.EMULATED))
    series = history.series("dev-1", "env")
    assert series is not None
    assert series.seq == [8, 9, 10, 11, 12]
    assert series.ts == [T0 + s for s in range(8, 13)]
    assert series.source == ["emulated", "emulated", "simulated", "simulated", "simulated"]
    unit, values = series.quantities["temperature"]
    assert unit == "°C"
    # float32 inside, the decimal it stood for outside.
    assert values == [20.08, 20.09, 20.1, 20.11, 20.12]
    since = history.series("dev-1", "env", since=T0 + 10)
    assert since is not None
    assert since.seq == [11, 12]


def test_anomalies_and_changing_quantities_are_kept() -> None:
    history = History(points=10)
    history.record(reading(1, temperature=20.0))
    history.record(reading(2, anomaly="spike", temperature=30.0, pressure=1000.0))
    history.record(reading(3, temperature=21.0))
    series = history.series("dev-1", "env")
    assert series is not None
    assert series.anomaly == [None, "spike", None]
    assert series.quantities["temperature"][1] == [20.0, 30.0, 21.0]
    assert series.quantities["pressure"] == ("hPa", [None, 1000.0, None])
    spark = history.spark("dev-1", "env", 2)
    assert spark == {"q": "temperature", "t": [T0 + 2, T0 + 3], "v": [30.0, 21.0], "s": "ee"}


def test_streams_beyond_the_bound_evict_the_least_recently_heard() -> None:
    history = History(points=3, max_streams=3)
    for device in ("a", "b", "c"):
        history.record(reading(1, device=device))
    history.record(reading(2, device="a"))  # a is heard again: b is now the oldest
    history.record(reading(1, device="d"))
    assert history.evicted == 1
    assert len(history) == 3
    assert history.series("b", "env") is None
    assert history.sensors("b") == []
    assert all(history.series(d, "env") is not None for d in ("a", "c", "d"))
    history.forget("a")
    assert history.series("a", "env") is None
    assert len(history) == 2


def test_zero_points_keeps_nothing() -> None:
    history = History(points=0)
    history.record(reading(1))
    assert len(history) == 0
    assert not history.enabled


def test_many_anomaly_types_end_in_other() -> None:
    history = History(points=300)
    for i in range(300):
        history.record(
            reading(i + 1, anomaly="t" + "abcdefghijklmnopqrstuvwxyz"[i % 26] * (i // 26 + 1))
        )
    series = history.series("dev-1", "env")
    assert series is not None
    assert series.anomaly[0] == "ta"
    assert series.anomaly[-1] == "other"


# --- the API --------------------------------------------------------------------------------


def history_config(broker: Broker, points: int = 50) -> GatewayConfig:
    return GatewayConfig.from_builtins(
        {
            "mqtt": mqtt_settings(broker),
            "presence": {"startup_grace": 0.2},
            "history": {"points": points},
            "devices": [ManifestDevice(id="dev-1", sensors={"env": bme280(60)})],
        }
    )


@pytest.mark.integration
def test_history_api_from_readings_on_the_broker(broker: Broker) -> None:
    with TestClient(create_app(history_config(broker))) as client:
        service = client.app.state.service  # type: ignore[attr-defined]
        poll(lambda: service.link.connected, 10, what="gateway connected")
        # A birth heard live: the device is online, so no stand-in adds simulated readings.
        birth = Status(
            device="dev-1",
            state=Presence.ONLINE,
            ts=time.time(),
            boot=1,
            agent_version="test",
            reason="birth",
        )
        publish(broker, "edgetwin/dev-1/status", birth.encode(), retain=True)
        poll(lambda: client.get("/devices/dev-1").json()["presence"] == "online", 10)
        for seq in range(1, 61):
            publish(broker, "edgetwin/dev-1/telemetry/env", reading(seq).encode())

        def last_seq() -> int:
            answer = client.get("/devices/dev-1/history", params={"sensor": "env"})
            seqs: list[int] = answer.json()["sensors"].get("env", {}).get("seq", [0])
            return seqs[-1]

        poll(lambda: last_seq() == 60, 10, what="sixty readings in the history")
        body: dict[str, Any] = client.get("/devices/dev-1/history").json()
        assert body["device"] == "dev-1"
        assert body["points"] == 50
        env = body["sensors"]["env"]
        assert env["seq"] == list(range(11, 61))
        assert set(env["source"]) == {"emulated"}
        assert env["anomaly"] == [None] * 50
        assert env["quantities"]["humidity"] == {"unit": "%RH", "values": [50.0] * 50}
        since = client.get("/devices/dev-1/history", params={"since": T0 + 58}).json()
        assert since["sensors"]["env"]["seq"] == [59, 60]
        assert math.isclose(since["sensors"]["env"]["ts"][0], T0 + 59)


@pytest.mark.integration
def test_history_api_refuses_with_reasons(broker: Broker) -> None:
    with TestClient(create_app(history_config(broker))) as client:
        missing = client.get("/devices/nobody/history")
        assert missing.status_code == 404
        assert "nobody" in missing.json()["detail"]
        no_stream = client.get("/devices/dev-1/history", params={"sensor": "outdoor"})
        assert no_stream.status_code == 404
        assert "outdoor" in no_stream.json()["detail"]
        assert client.get("/devices/dev-1/history").json()["sensors"] == {}
        for params in ({"sensor": "Bad Name"}, {"since": "nan"}, {"since": "inf"}, {"since": "x"}):
            answer = client.get("/devices/dev-1/history", params=params)
            assert answer.status_code == 422, params
            assert answer.json()["detail"], params
        assert client.get("/devices/BAD/history").status_code == 422
    with TestClient(create_app(history_config(broker, points=0))) as client:
        off = client.get("/devices/dev-1/history")
        assert off.status_code == 404
        assert "points = 0" in off.json()["detail"]


@pytest.mark.integration
def test_a_removed_device_takes_its_history_along(broker: Broker) -> None:
    config = GatewayConfig.from_builtins(
        {**history_config(broker).to_builtins(), "api": {"local_no_auth": True}}
    )
    with TestClient(create_app(config)) as client:
        service = client.app.state.service  # type: ignore[attr-defined]
        service.fleet.apply_telemetry(reading(1))
        assert service.history.sensors("dev-1") == ["env"]
        assert client.delete("/devices/dev-1").status_code == 204
        assert service.history.sensors("dev-1") == []
        metrics = client.get("/metrics").text
        assert "edgetwin_history_streams 0.0" in metrics
        assert "edgetwin_history_evicted_streams_total 0.0" in metrics
