"""Drop-in for the original simulator's code: its config file, control routes, metrics and
flat payload, against a real broker."""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from edgetwin.agent.config import ConfigError
from edgetwin.agent.contract import SensorSettings, Source, Telemetry, TwinSummary, Value
from edgetwin.gateway.app import create_app
from edgetwin.gateway.broker import free_port
from edgetwin.gateway.config import (
    COMPAT_LABEL,
    GatewayConfig,
    GatewayMqttSettings,
    ManifestDevice,
    load_gateway_config,
)
from edgetwin.testing.broker import Broker
from edgetwin.testing.capture import Capture, Message, connect_client, disconnect_client, publish
from edgetwin.testing.process import start_edgetwin, stop_process
from edgetwin.testing.waiting import poll
from tests.fleet_helpers import REPO, bme280

TOKEN = "compat-test-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
FLAT_KEYS = ["device_id", "timestamp", "temperature", "humidity"]


def device_of(message: Message) -> str:
    """The device a reading on the shared topic belongs to, edgetwin or flat payload."""
    body = json.loads(message.payload)
    return str(body.get("device", body.get("device_id")))


def readings_of(device: str, after: float = 0.0) -> Callable[[Message], bool]:
    def match(message: Message) -> bool:
        return (
            message.topic == "sensors/data"
            and message.received_at > after
            and device_of(message) == device
        )

    return match


def devices_after(sub: Capture, after: float) -> set[str]:
    return {device_of(m) for m in sub.messages("sensors/data") if m.received_at > after}


def ids(*indexes: int) -> list[str]:
    return [f"device_{i:03d}" for i in indexes]


def mqtt(broker: Broker, **extra: Any) -> GatewayMqttSettings:
    return GatewayMqttSettings.from_builtins(
        {
            "host": broker.host,
            "port": broker.port,
            "protocol": broker.protocol,
            "keepalive": 2,
            "topic": "sensors/data",
            "qos": 0,
            **extra,
        }
    )


def config(broker: Broker, mqtt_extra: dict[str, Any] | None = None, **extra: Any) -> GatewayConfig:
    return GatewayConfig.from_builtins(
        {
            "mqtt": mqtt(broker, **(mqtt_extra or {})),
            "presence": {"startup_grace": 0.1},
            "api": {"local_no_auth": True},
            **extra,
        }
    )


@contextmanager
def gateway(config: GatewayConfig) -> Iterator[TestClient]:
    with TestClient(create_app(config)) as client:
        yield client


def metric(text: str, line_start: str) -> float:
    """The value of the one sample line that starts with `line_start`."""
    found = [line for line in text.splitlines() if line.startswith(line_start + " ")]
    assert len(found) == 1, (line_start, text)
    return float(found[0].rsplit(" ", 1)[1])


# --- the original's config file on the CLI ------------------------------------------------


@pytest.mark.integration
def test_code_variant_config_runs_via_the_cli(broker: Broker, tmp_path: Path) -> None:
    """config/simulator-code.toml with only the broker address and the ports edited: nothing
    runs at start; /start, /scale, /stop, /status answer as the original's did, and
    sensors/data carries exactly the running devices' readings, every frequency_sec (1 s)."""
    api_port, prometheus_port = free_port(), free_port()
    text = (REPO / "config" / "simulator-code.toml").read_text()
    for old, new in [
        ('host = "mqtt"', f'host = "{broker.host}"'),
        ("port = 1883", f"port = {broker.port}"),
        ("prometheus_port = 8001", f"prometheus_port = {prometheus_port}"),
        ("port = 8000", f"port = {api_port}"),
    ]:
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / "config.toml"
    path.write_text(text)
    # The file listens on 0.0.0.0; tests stay on loopback. The token enables the writes.
    env = {
        "EDGETWIN_SERVER_HOST": "127.0.0.1",
        "EDGETWIN_PROMETHEUS_HOST": "127.0.0.1",
        "EDGETWIN_API_TOKEN": TOKEN,
    }
    api = f"http://127.0.0.1:{api_port}"

    def get(route: str, **headers: str) -> httpx.Response:
        return httpx.get(api + route, headers=headers, timeout=5)

    def answers() -> bool:
        try:
            return get("/health").json()["mqtt_connected"] is True
        except httpx.TransportError:
            return False

    with Capture(broker, "sensors/#") as sub:
        process = start_edgetwin(["gateway", "--config", str(path)], env=env)
        try:
            poll(answers, timeout=15, what="gateway API with its broker connection")
            # Nothing runs until /start: the code variant starts devices through its API.
            assert get("/status").json() == {"status": "stopped", "count": 0, "devices": []}
            assert get("/devices").json() == []
            assert get("/start?count=3").status_code == 401
            assert get("/start?count=3", Authorization="Bearer wrong").status_code == 403
            assert sub.messages() == []

            started = time.monotonic()
            assert get("/start?count=3", **BEARER).json() == {
                "status": "started",
                "started": 3,
                "running": 3,
            }
            for device in ids(0, 1, 2):
                sub.wait_for(readings_of(device), count=3, timeout=10)
            assert devices_after(sub, 0) == set(ids(0, 1, 2))
            assert get("/status").json() == {
                "status": "running",
                "count": 3,
                "devices": ids(0, 1, 2),
            }
            # A fleet of the engine, in the gateway's own process at this size, not twins.
            assert get("/devices").json() == []
            engine = get("/engine/status").json()
            assert (engine["fleet"], engine["devices"], engine["workers"]) == ("simulator", 3, 0)
            for device in ids(0, 1, 2):
                times = [m.received_at for m in sub.messages() if readings_of(device)(m)]
                assert all(0.6 < b - a < 1.4 for a, b in itertools.pairwise(times)), times
                assert times[0] - started < 2.5  # the first reading comes at once (+ grace)

            scaled = time.monotonic()
            assert get("/scale?count=5", **BEARER).json() == {
                "status": "scaled up",
                "added": 2,
                "running": 5,
            }
            for device in ids(3, 4):
                sub.wait_for(readings_of(device, after=scaled), count=2, timeout=10)
            assert devices_after(sub, scaled) == set(ids(0, 1, 2, 3, 4))
            assert get("/scale?count=5", **BEARER).json() == {"status": "unchanged", "running": 5}

            shrunk = time.monotonic()
            assert get("/scale?count=2", **BEARER).json() == {
                "status": "scaled down",
                "removed": 3,
                "running": 2,
            }
            # Two more periods of the survivors; a reading in flight at the response aside,
            # the removed ones are silent.
            settled = shrunk + 0.5
            for device in ids(0, 1):
                sub.wait_for(readings_of(device, after=settled), count=2, timeout=10)
            assert devices_after(sub, settled) == set(ids(0, 1))
            assert get("/status").json()["devices"] == ids(0, 1)

            assert get("/stop", **BEARER).json() == {"status": "stopped", "running": 0}
            assert get("/status").json() == {"status": "stopped", "count": 0, "devices": []}
            assert get("/devices").json() == []

            scrape = httpx.get(f"http://127.0.0.1:{prometheus_port}/metrics", timeout=5).text
            on_api = get("/metrics").text
        finally:
            code, stderr = stop_process(process)
    assert code == 0, stderr
    assert "Traceback" not in stderr
    # The original's metrics, on prometheus_port and on /metrics: one counter per device,
    # matching what the subscriber received (QoS 0 on a local broker loses nothing).
    assert metric(scrape, "running_devices") == 0
    assert metric(on_api, "running_devices") == 0
    for device in ids(0, 1, 2, 3, 4):
        sent = metric(scrape, f'mqtt_sent_total{{device_id="{device}"}}')
        received = sub.wait_for(readings_of(device), count=int(sent), timeout=5)
        assert len(received) == sent >= 2
    assert all(Telemetry.decode(m.payload).source == "simulated" for m in sub.messages())
    assert {m.topic for m in sub.messages()} == {"sensors/data"}
    assert all(m.qos == 0 for m in sub.messages())


def test_shipped_code_variant_config_loads() -> None:
    config = load_gateway_config(REPO / "config" / "simulator-code.toml", environ={})
    assert config.manifest() == []
    plan = config.fleet_plan()
    assert (plan.interval, plan.max_devices, plan.launch) == (1.0, 100, None)
    assert [plan.ids.device_id(i) for i in (0, 7, 99)] == ["device_000", "device_007", "device_099"]
    assert (config.server.host, config.server.port) == ("0.0.0.0", 8000)
    assert config.mqtt.topics().telemetry("device_000", "env") == "sensors/data"
    assert (config.mqtt.qos, config.mqtt.payload) == (0, "edgetwin")
    assert config.observability.prometheus_port == 8001


def test_both_simulator_formats_in_one_file_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "both.toml"
    path.write_text(
        "[simulator]\ndevice_count = 10\npublish_interval = 2\n\n"
        "[simulation]\nfrequency_sec = 1.0\nmax_devices = 100\n"
    )
    with pytest.raises(ConfigError) as info:
        load_gateway_config(path, environ={})
    message = str(info.value)
    assert message.startswith(f"{path}: [simulator]")
    assert "[simulation]" in message
    assert "cannot be used together" in message
    # On the command line: exit code 2 and the same sentence, before anything starts.
    process = start_edgetwin(["gateway", "--config", str(path)])
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "cannot be used together" in stderr.decode()
    assert "Traceback" not in stderr.decode()


# --- routes, through the app --------------------------------------------------------------


@pytest.mark.integration
def test_bad_counts_get_422_with_a_reason_and_writes_need_the_token(
    broker: Broker,
) -> None:
    cfg = config(broker, simulation={"frequency_sec": 1.0, "max_devices": 4}, api={"token": TOKEN})
    with gateway(cfg) as client:
        for route in ("/start?count=2", "/scale?count=2", "/stop"):
            assert client.get(route).status_code == 401, route
            assert client.get(route, headers={"Authorization": "Bearer no"}).status_code == 403
        assert client.get("/status").json()["count"] == 0  # nothing happened; reads are open
        for route in (
            "/start?count=-1",
            "/start?count=0",
            "/start?count=abc",
            "/start?count=1.5",
            "/scale?count=-3",
            "/scale?count=",
            "/scale?count=two",
        ):
            response = client.get(route, headers=BEARER)
            assert response.status_code == 422, (route, response.text)
            [error] = response.json()["detail"]
            assert error["loc"] == ["query", "count"], route
            assert error["msg"], route
        # Counts above max_devices are capped, as the original did.
        assert client.get("/start?count=1000000000000", headers=BEARER).json() == {
            "status": "started",
            "started": 4,
            "running": 4,
        }
        assert client.get("/scale?count=99", headers=BEARER).json() == {
            "status": "unchanged",
            "running": 4,
        }
        # /start without a count starts one device, /scale without one stops all: the original's
        # defaults.
        assert client.get("/start", headers=BEARER).json()["started"] == 1
        assert client.get("/scale", headers=BEARER).json() == {
            "status": "scaled down",
            "removed": 1,
            "running": 0,
        }


@pytest.mark.integration
def test_control_routes_are_disabled_without_a_configured_token(broker: Broker) -> None:
    """As every write: without `[api] token` (and without local_no_auth), refused."""
    with gateway(config(broker, simulation={}, api={})) as client:
        for route in ("/start?count=2", "/scale?count=2", "/stop"):
            for headers in ({}, BEARER):
                refused = client.get(route, headers=headers)
                assert refused.status_code == 403, (route, refused.text)
                assert "writes are disabled" in refused.json()["detail"]
        assert client.get("/status").json() == {"status": "stopped", "count": 0, "devices": []}


@pytest.mark.integration
def test_flat_payload_from_the_first_climate_sensor(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    """`[mqtt] payload = "flat"`: the original's {device_id, timestamp, temperature,
    humidity}, one per device and period. Over MQTT 3.1.1 the gateway's own readings come back
    to it (no no-local there): they are recognised, not logged as malformed."""

    def sensor(driver: str, **extra: Any) -> SensorSettings:
        return SensorSettings.from_builtins(
            {"driver": driver, "interval": 0.2, "backend": "emulated", **extra}
        )

    weather = ManifestDevice(
        id="weather-01",
        sensors={
            "light": sensor("bh1750"),
            "outdoor": sensor("bme280", address=0x77),
            "indoor": sensor("sht3x"),
        },
    )
    cfg = config(
        broker,
        {"payload": "flat", "protocol": "3.1.1"},
        simulation={"frequency_sec": 0.2},
        devices=[weather],
    )
    caplog.set_level(logging.WARNING, logger="gateway")
    with Capture(broker, "sensors/data") as sub, gateway(cfg) as client:
        assert client.get("/start?count=2").json()["running"] == 2
        for device in ["weather-01", *ids(0, 1)]:
            sub.wait_for(readings_of(device), count=4, timeout=10)
        view = client.get("/devices/weather-01").json()
    messages = sub.messages()
    assert {device_of(m) for m in messages} == {"weather-01", *ids(0, 1)}
    now = time.time()
    for message in messages:
        body = json.loads(message.payload)
        assert list(body) == FLAT_KEYS, body
        assert isinstance(body["timestamp"], float)
        assert now - 30 < body["timestamp"] <= now
        for quantity in ("temperature", "humidity"):
            assert isinstance(body[quantity], float)
            assert round(body[quantity], 2) == body[quantity]
    # One stream per device on the wire: readings a period apart, never two at once.
    for device in ["weather-01", *ids(0, 1)]:
        times = [m.received_at for m in messages if device_of(m) == device]
        assert all(b - a > 0.1 for a, b in itertools.pairwise(times)), (device, times)
    # The first sensor with both quantities speaks; the others stay silent.
    sensors = view["sensors"]
    assert sensors["outdoor"]["last"] is not None
    assert sensors["light"]["last"] is None
    assert sensors["indoor"]["last"] is None
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.integration
def test_agent_readings_on_the_shared_topic_reach_the_twin(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    """On `sensors/data` the payload names the device: an edgetwin reading reaches that
    device's twin, a flat one (no seq, no source) is passed over quietly, garbage is logged.
    The gateway listens there because its twin has a device (one of the manifest's)."""
    caplog.set_level(logging.WARNING, logger="gateway")
    reading = Telemetry(
        device="greenhouse-09",
        sensor="env",
        ts=time.time(),
        seq=41,
        source=Source.REAL,
        values={"temperature": Value(value=20.5, unit="°C")},
    )
    flat = {"device_id": "flat-07", "timestamp": time.time(), "temperature": 1.0, "humidity": 2.0}
    listed = ManifestDevice(id="greenhouse-01", sensors={"env": bme280(1.0)})
    with gateway(config(broker, simulation={}, devices=[listed])) as client:
        poll(lambda: client.get("/health").json()["mqtt_connected"], timeout=10, what="connect")
        publish(broker, "sensors/data", json.dumps(flat))
        publish(broker, "sensors/data", reading.encode())
        publish(broker, "sensors/data", b'{"device": "x"}')
        poll(
            lambda: any("malformed" in r.getMessage() for r in caplog.records),
            timeout=10,
            what="the garbage's warning",
        )
        twin = client.get("/devices/greenhouse-09")
        assert twin.status_code == 200, twin.text
        assert twin.json()["in_manifest"] is False
        assert client.get("/devices/flat-07").status_code == 404
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].__dict__["topic"] == "sensors/data"


@pytest.mark.integration
def test_readme_format_devices_are_the_routes_group(broker: Broker) -> None:
    """Under the README-style `[simulator]`, its devices run from the start and the routes
    stop and scale them."""
    cfg = config(broker, simulator={"device_count": 3, "publish_interval": 0.5})
    with gateway(cfg) as client:
        assert client.get("/status").json() == {
            "status": "running",
            "count": 3,
            "devices": ids(0, 1, 2),
        }
        assert client.get("/scale?count=5").json() == {
            "status": "scaled up",
            "added": 2,
            "running": 5,
        }
        assert client.get("/status").json()["devices"] == ids(0, 1, 2, 3, 4)
        assert client.get("/devices").json() == []  # the twin follows the manifest only
        assert client.get("/stop").json() == {"status": "stopped", "running": 0}
        assert client.get("/engine/status").json()["state"] == "stopped"
        assert client.get("/start?count=2").json() == {
            "status": "started",
            "started": 2,
            "running": 2,
        }


@pytest.mark.integration
def test_ids_of_other_manifest_devices_are_not_taken(broker: Broker) -> None:
    mine = ManifestDevice(id="device_001", sensors={"env": bme280(1.0)})
    with gateway(config(broker, simulation={}, devices=[mine])) as client:
        refused = client.get("/start?count=3")
        assert refused.status_code == 409
        assert "device_001" in refused.json()["detail"]
        assert client.get("/status").json()["count"] == 0
        assert [d["id"] for d in client.get("/devices").json()] == ["device_001"]
        assert client.get("/scale?count=1").json()["running"] == 1
        assert client.get("/scale?count=2").status_code == 409
        # Nor the other way round: a running group's id cannot join the manifest.
        refused = client.post("/devices", json={"id": "device_000"})
        assert refused.status_code == 409
        assert "simulator's group" in refused.json()["detail"]
        assert client.get("/stop").json()["running"] == 0
        assert [d["id"] for d in client.get("/devices").json()] == ["device_001"]
        assert client.post("/devices", json={"id": "device_000"}).status_code == 201


@pytest.mark.integration
def test_the_group_and_an_api_fleet_share_one_engine(broker: Broker) -> None:
    """One engine runs one fleet: /start refuses while /engine/start's fleet runs, and the
    other way round, each with its reason."""
    with gateway(config(broker, simulation={"frequency_sec": 0.5})) as client:
        started = client.post("/engine/start", json={"devices": 2, "interval": 0.5})
        assert started.status_code == 200, started.text
        assert started.json()["fleet"] == "api"
        refused = client.get("/start?count=2")
        assert refused.status_code == 409
        assert "POST /engine/stop" in refused.json()["detail"]
        assert client.get("/status").json()["count"] == 0
        assert client.post("/engine/stop").status_code == 200
        assert client.get("/start?count=2").json()["running"] == 2
        poll(
            lambda: client.get("/engine/status").json()["state"] == "running",
            timeout=10,
            what="the group's run",
        )
        assert client.post("/engine/start", json={"devices": 2}).status_code == 409


@pytest.mark.integration
def test_route_devices_are_no_twins_and_do_not_outlive_their_gateway(
    broker: Broker,
) -> None:
    """The group is an engine fleet: no twin documents, and it ends with its gateway. A twin
    document with the group's label (left by an older gateway, or published by another one)
    never enters the manifest."""
    cfg = config(broker, simulation={"frequency_sec": 0.5})

    with Capture(broker, "#") as sub:
        with gateway(cfg) as client:
            client.get("/start?count=2")
            for device in ids(0, 1):
                sub.wait_for(readings_of(device), count=2, timeout=10)
        stopped = time.monotonic()
        assert not [t for t in threading.enumerate() if t.name.startswith("engine-worker")]
        # Two periods of silence: the fleet stopped with the gateway (absence needs a window).
        with pytest.raises(TimeoutError):
            sub.wait_for(readings_of("device_000", after=stopped), timeout=1.0)
    assert not [m for m in sub.messages() if m.topic.endswith("/twin")]

    leftover = TwinSummary(
        device="device_007",
        ts=time.time(),
        presence="unknown",
        sensors={},
        labels={COMPAT_LABEL[0]: COMPAT_LABEL[1]},
    )
    kept = TwinSummary(device="kept-01", ts=time.time(), presence="unknown", sensors={})
    with gateway(cfg) as client:
        poll(lambda: client.get("/health").json()["mqtt_connected"], timeout=10, what="connect")
        # One client, in this order: the gateway handles the first before the second.
        publisher = connect_client(broker)
        try:
            for summary in (leftover, kept):
                info = publisher.publish(
                    f"edgetwin/{summary.device}/twin", summary.encode(), qos=1, retain=True
                )
                info.wait_for_publish(5)
        finally:
            disconnect_client(publisher)
        poll(
            lambda: "kept-01" in [d["id"] for d in client.get("/devices").json()],
            timeout=10,
            what="the unlabelled twin document in the manifest",
        )
        assert client.get("/devices/device_007").status_code == 404
        assert client.get("/status").json()["count"] == 0


# --- the fleet plan decides what the routes control and what is counted per device ---------


def sent_by_device(client: TestClient) -> list[str]:
    return [
        line
        for line in client.get("/metrics").text.splitlines()
        if line.startswith("mqtt_sent_total{")
    ]


@pytest.mark.integration
def test_routes_leave_an_engine_sections_fleet_alone(broker: Broker) -> None:
    """`[engine] start_devices`: an /engine fleet from the start, which /start and /scale do
    not control (409, naming the section), and without the per-device metric."""
    cfg = config(broker, engine={"start_devices": 2, "start_interval": 0.2, "workers": 0})
    with Capture(broker, "sensors/data") as sub, gateway(cfg) as client:
        for device in ids(0, 1):
            sub.wait_for(readings_of(device), count=2, timeout=10)
        engine = client.get("/engine/status").json()
        assert (engine["state"], engine["fleet"], engine["devices"]) == ("running", "api", 2)
        for route in ("/start?count=3", "/scale?count=3"):
            refused = client.get(route)
            assert refused.status_code == 409, route
            assert "[engine] start_devices" in refused.json()["detail"]
        assert client.get("/status").json() == {"status": "stopped", "count": 0, "devices": []}
        assert client.post("/engine/stop").status_code == 200
        # Stopped, still not the routes' to start.
        assert client.get("/start?count=1").status_code == 409
        assert sent_by_device(client) == []


@pytest.mark.integration
def test_without_a_fleet_section_the_routes_group_has_no_per_device_metric(
    broker: Broker,
) -> None:
    """No `[simulator]` or `[simulation]`: the routes start the default devices, and only the
    original's formats pay for `mqtt_sent_total{device_id}`."""
    with Capture(broker, "sensors/data") as sub, gateway(config(broker)) as client:
        assert client.get("/start?count=2").json() == {
            "status": "started",
            "started": 2,
            "running": 2,
        }
        for device in ids(0, 1):
            sub.wait_for(readings_of(device), count=1, timeout=10)
        assert client.get("/status").json()["devices"] == ids(0, 1)
        assert client.get("/stop").json() == {"status": "stopped", "running": 0}
        assert sent_by_device(client) == []
        assert metric(client.get("/metrics").text, "running_devices") == 0
