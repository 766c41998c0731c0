"""/engine through the gateway's API: token on writes, 4xx with a reason on bad input or a
command the engine's state refuses, and the commands reaching the workers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from edgetwin.agent.config import ConfigError
from edgetwin.agent.contract import FaultLabel, Telemetry
from edgetwin.gateway.app import create_app
from edgetwin.gateway.config import load_gateway_config
from edgetwin.gateway.engine import EngineInputError
from edgetwin.testing.broker import Broker
from edgetwin.testing.capture import Capture
from edgetwin.testing.waiting import poll
from tests.engine_helpers import TestScenario
from tests.fleet_helpers import REPO

pytestmark = pytest.mark.integration

TOKEN = "engine-test-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


class TestScenarios:
    """The gateway's scenario source, backed by tests.engine_helpers."""

    __test__ = False

    def load(self, name: str) -> TestScenario:
        raise EngineInputError(f"{name}: no such scenario file")

    def default(self, devices: int, interval: float, seed: int) -> TestScenario:
        return TestScenario(devices=devices, interval=interval, seed=seed)


@pytest.fixture
def client(broker: Broker, tmp_path: Path) -> Iterator[TestClient]:
    config_file = tmp_path / "gateway.toml"
    config_file.write_text(
        f"""
[mqtt]
host = "{broker.host}"
port = {broker.port}
protocol = "{broker.protocol}"
keepalive = 2

[presence]
startup_grace = 0.1

[api]
token = "{TOKEN}"
"""
    )
    config = load_gateway_config(config_file, environ={})
    with TestClient(create_app(config, engine_scenarios=TestScenarios())) as test_client:
        yield test_client


def test_writes_need_the_token(client: TestClient) -> None:
    assert client.post("/engine/start", json={"devices": 2}).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert client.post("/engine/pause", headers=wrong).status_code == 403
    assert client.get("/engine/status").json()["state"] == "stopped"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "JSON is malformed"),
        (b'{"devices": 0}', ">= 1"),
        (b'{"devices": 2, "qos": 2}', "qos"),
        (b'{"devices": 2, "payload": "xml"}', "payload"),
        (b'{"devices": 2, "colour": "red"}', "colour"),
        (b'{"devices": 2, "workers": -1}', "workers"),
        (b'{"devices": 2, "workers": 60}', "workers must be 0..8"),
        (b"{}", "exactly one"),
        (b'{"devices": 2, "scenario": "a.toml"}', "exactly one"),
        (b'{"devices": 100000000}', "devices must be"),
        (b'{"scenario": "/nowhere/fleet.toml"}', "no such scenario"),
    ],
)
def test_bad_start_bodies_answer_422_with_the_reason(
    client: TestClient, body: bytes, reason: str
) -> None:
    response = client.post("/engine/start", content=body, headers=BEARER)
    assert response.status_code == 422, response.text
    assert reason in str(response.json()["detail"])


def test_commands_the_state_refuses_answer_409(client: TestClient) -> None:
    for path in ("/engine/pause", "/engine/resume"):
        response = client.post(path, headers=BEARER)
        assert response.status_code == 409
        assert "stopped" in response.json()["detail"]
    assert client.put("/engine/rate", json={"multiplier": 2}, headers=BEARER).status_code == 409
    assert client.put("/engine/size", json={"devices": 3}, headers=BEARER).status_code == 409
    assert client.put("/engine/rate", json={"multiplier": 0}, headers=BEARER).status_code == 422
    assert client.put("/engine/size", json={"devices": -1}, headers=BEARER).status_code == 422
    # Stopping a stopped engine is harmless.
    assert client.post("/engine/stop", headers=BEARER).json()["state"] == "stopped"


def test_start_steer_and_stop_through_the_api(client: TestClient) -> None:
    started = client.post(
        "/engine/start", json={"devices": 5, "interval": 0.5, "workers": 1}, headers=BEARER
    )
    assert started.status_code == 200, started.text
    assert started.json()["state"] == "running"
    assert started.json()["devices"] == 5
    again = client.post("/engine/start", json={"devices": 5}, headers=BEARER)
    assert again.status_code == 409

    assert client.put("/engine/rate", json={"multiplier": 2}, headers=BEARER).json()["rate"] == 2
    resized = client.put("/engine/size", json={"devices": 8}, headers=BEARER)
    assert resized.json()["devices"] == 8
    assert client.post("/engine/pause", headers=BEARER).json()["state"] == "paused"
    assert client.post("/engine/resume", headers=BEARER).json()["state"] == "running"

    status = client.get("/engine/status").json()
    assert status["workers"] == 1
    assert set(status) >= {"target_per_s", "delivered_per_s", "lateness_p99_ms", "per_worker"}
    metrics = client.get("/metrics").text
    assert "edgetwin_engine_messages_total" in metrics
    assert 'edgetwin_engine_skipped_ticks_total{reason="late"}' in metrics
    assert "edgetwin_engine_lateness_seconds_bucket" in metrics

    client.get("/engine/status")
    poll(lambda: sent_total(client) > 0, 10, what="messages counted")
    before_stop = sent_total(client)

    stopped = client.post("/engine/stop", headers=BEARER)
    assert stopped.json()["state"] == "stopped"
    assert client.get("/engine/status").json()["devices"] == 0
    # The run's messages stay counted once its workers are gone: a counter never goes down.
    assert sent_total(client) >= before_stop


def sent_total(client: TestClient) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("edgetwin_engine_messages_total "):
            return float(line.split()[1])
    raise AssertionError("edgetwin_engine_messages_total missing")


def gateway_toml(broker: Broker, directory: Path, engine: str = "") -> Path:
    config_file = directory / "gateway.toml"
    config_file.write_text(
        f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\nprotocol = "{broker.protocol}"\n'
        f'[api]\ntoken = "{TOKEN}"\n[engine]\nworkers = 1\n{engine}'
    )
    return config_file


def test_scenario_files_only_from_the_scenarios_directory(broker: Broker, tmp_path: Path) -> None:
    """The API names scenario files; it must not read any file on the gateway's machine."""
    outside = tmp_path / "outside.toml"
    outside.write_text((REPO / "config" / "scenario.toml").read_text())
    closed = load_gateway_config(gateway_toml(broker, tmp_path), environ={})
    with TestClient(create_app(closed)) as client:
        refused = client.post("/engine/start", json={"scenario": "outside.toml"}, headers=BEARER)
        assert refused.status_code == 422
        assert "scenarios_dir" in refused.json()["detail"]
    shelf = tmp_path / "scenarios"
    shelf.mkdir()
    opened = load_gateway_config(
        gateway_toml(broker, tmp_path, f'scenarios_dir = "{shelf}"\n'), environ={}
    )
    with TestClient(create_app(opened)) as client:
        for name in ("../outside.toml", str(outside)):
            refused = client.post("/engine/start", json={"scenario": name}, headers=BEARER)
            assert refused.status_code == 422, name
            assert "outside the scenarios directory" in refused.json()["detail"]
        missing = client.post("/engine/start", json={"scenario": "nope.toml"}, headers=BEARER)
        assert missing.status_code == 422
        assert "nope.toml" in missing.json()["detail"]
        assert client.get("/engine/status").json()["state"] == "stopped"


def test_a_fault_injected_through_the_api_is_in_the_stream_and_labelled(
    broker: Broker, tmp_path: Path
) -> None:
    """The real scenario package through the engine's workers: the default fleet's readings
    decode as the contract's Telemetry, and an on-demand spike on one device carries its
    `anomaly` while it lasts and a start and an end document on the labels topic."""
    config = load_gateway_config(gateway_toml(broker, tmp_path), environ={})
    with (
        Capture(broker, "edgetwin/#") as sub,
        TestClient(create_app(config)) as client,
    ):
        started = client.post("/engine/start", json={"devices": 3, "interval": 0.1}, headers=BEARER)
        assert started.status_code == 200, started.text
        sub.wait_for("edgetwin/device_002/telemetry/env", count=3)
        early = client.post("/engine/faults", json={"type": "spike"}, headers=BEARER)
        assert early.status_code == 422  # no devices, no duration
        for devices, reason in [
            ("", "name at least one device"),
            (["device_001", " "], "none blank"),
            ("room-*", "touches no device or sensor of the fleet"),
        ]:
            refused = client.post(
                "/engine/faults",
                json={"type": "spike", "devices": devices, "duration": 1},
                headers=BEARER,
            )
            assert refused.status_code == 422, devices
            assert reason in refused.text, refused.text
        stray = {"type": "spike", "devices": "device_001", "sensor": "gps", "duration": 1}
        assert client.post("/engine/faults", json=stray, headers=BEARER).status_code == 422
        injected = client.post(
            "/engine/faults",
            json={"type": "spike", "devices": "device_001", "duration": 0.5, "magnitude": 50},
            headers=BEARER,
        )
        assert injected.status_code == 200, injected.text
        fault = injected.json()["fault"]
        labels = [
            FaultLabel.decode(m.payload)
            for m in sub.wait_for("edgetwin/labels", count=2, timeout=10)
        ]
        assert [(label.event, label.id, label.device) for label in labels] == [
            ("start", fault["id"], "device_001"),
            ("end", fault["id"], "device_001"),
        ]
        assert labels[0].params == {"magnitude": 50.0}
        client.post("/engine/stop", headers=BEARER)
    readings = [Telemetry.decode(m.payload) for m in sub.messages("edgetwin/+/telemetry/+")]
    hit = [r for r in readings if r.anomaly is not None]
    assert hit
    assert {r.device for r in hit} == {"device_001"}
    assert all(r.anomaly is not None and r.anomaly.id == fault["id"] for r in hit)
    assert all(fault["start"] <= r.ts < fault["start"] + 0.5 for r in hit)
    clean = [r for r in readings if r.device == "device_001" and r.anomaly is None]
    spiked = hit[0].values["temperature"].value
    assert spiked > max(r.values["temperature"].value for r in clean) + 40


def test_a_configured_fleet_starts_with_the_gateway(broker: Broker, tmp_path: Path) -> None:
    """`[engine] start_devices`: the original simulator's job, N devices from the start."""
    toml = gateway_toml(broker, tmp_path, "start_devices = 4\nstart_interval = 0.2\n")
    config = load_gateway_config(toml, environ={})
    with (
        Capture(broker, "edgetwin/+/telemetry/+") as sub,
        TestClient(create_app(config)) as client,
    ):
        for device in ("device_000", "device_003"):
            sub.wait_for(f"edgetwin/{device}/telemetry/env", count=2)
        status = client.get("/engine/status").json()
        assert (status["state"], status["devices"]) == ("running", 4)
        # The engine's fleet is not the twin's: its readings make no device records.
        assert client.get("/devices").json() == []
    assert {Telemetry.decode(m.payload).device for m in sub.messages()} == {
        f"device_{i:03d}" for i in range(4)
    }


@pytest.mark.parametrize(
    ("engine", "reason"),
    [
        ('start_devices = 2\nstart_scenario = "a.toml"\n', "cannot be used together"),
        ('start_scenario = "a.toml"\n', "needs scenarios_dir"),
        ("start_devices = 300000\n", "above max_devices"),
        ('shard = "2/2"\n', "shards count from 0"),
        ('shard = "half"\n', "K/N"),
    ],
)
def test_contradictory_engine_sections_are_refused(
    broker: Broker, tmp_path: Path, engine: str, reason: str
) -> None:
    with pytest.raises(ConfigError, match=reason):
        load_gateway_config(gateway_toml(broker, tmp_path, engine), environ={})


def test_a_replicas_engine_plays_its_shard_of_every_fleet(broker: Broker, tmp_path: Path) -> None:
    """`[engine] shard` (here from EDGETWIN_SHARD): of the 4-device fleet the gateway starts,
    and of one started through the API, this replica plays the second half, with the fleet's
    device ids."""
    toml = gateway_toml(broker, tmp_path, "start_devices = 4\nstart_interval = 0.2\n")
    config = load_gateway_config(toml, environ={"EDGETWIN_SHARD": "1/2"})
    assert config.engine.shard == "1/2"
    with (
        Capture(broker, "edgetwin/+/telemetry/+") as sub,
        TestClient(create_app(config)) as client,
    ):
        sub.wait_for("edgetwin/device_003/telemetry/env", count=2)
        assert client.get("/engine/status").json()["devices"] == 2
        assert {Telemetry.decode(m.payload).device for m in sub.messages()} == {
            "device_002",
            "device_003",
        }
        client.post("/engine/stop", headers=BEARER)
        started = client.post("/engine/start", json={"devices": 6, "interval": 0.2}, headers=BEARER)
        assert started.status_code == 200, started.text
        assert started.json()["devices"] == 3
        sub.clear()
        sub.wait_for("edgetwin/device_005/telemetry/env", count=2)
        assert {Telemetry.decode(m.payload).device for m in sub.messages()} <= {
            "device_003",
            "device_004",
            "device_005",
        }
