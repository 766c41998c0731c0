"""The gateway against a real broker: simulation of missing devices, failover and failback."""

from __future__ import annotations

import itertools
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from edgetwin.agent.contract import Source, Telemetry, TwinSummary
from edgetwin.gateway.app import create_app
from edgetwin.gateway.broker import free_port
from edgetwin.gateway.config import GatewayConfig, ManifestDevice
from edgetwin.testing.agent import EmulatedAgent
from edgetwin.testing.broker import Broker
from edgetwin.testing.capture import Capture, Message, as_endpoint
from edgetwin.testing.process import start_edgetwin, stop_process
from edgetwin.testing.waiting import poll
from tests.fleet_helpers import REPO, agent_toml, bme280, mqtt_settings, one_bme280, payload

pytestmark = pytest.mark.integration

DEVICE = "greenhouse-01"
INTERVAL = 0.2


def gateway_config(broker: Broker, *devices: str, interval: float = INTERVAL) -> GatewayConfig:
    return GatewayConfig.from_builtins(
        {
            "mqtt": mqtt_settings(
                broker, keepalive=2, reconnect_min_delay=0.2, reconnect_max_delay=1
            ),
            "presence": {"startup_grace": 0.3},
            "devices": [ManifestDevice(id=d, sensors={"env": bme280(interval)}) for d in devices],
        }
    )


@contextmanager
def gateway(config: GatewayConfig) -> Iterator[TestClient]:
    with TestClient(create_app(config)) as client:
        yield client


def simulated(device: str) -> Callable[[Message], bool]:
    def match(message: Message) -> bool:
        return (
            f"/{device}/telemetry/" in message.topic and payload(message)["source"] == "simulated"
        )

    return match


def from_agent(device: str) -> Callable[[Message], bool]:
    def match(message: Message) -> bool:
        return (
            f"/{device}/telemetry/" in message.topic and payload(message)["source"] != "simulated"
        )

    return match


def served_by(client: TestClient, device: str) -> str | None:
    view = client.get(f"/devices/{device}").json()
    return view["served_by"]  # type: ignore[no-any-return]


def test_gateway_simulates_a_device_without_agent(broker: Broker) -> None:
    with (
        Capture(broker, "edgetwin/#") as sub,
        gateway(gateway_config(broker, DEVICE, "greenhouse-02")) as client,
    ):
        for device in (DEVICE, "greenhouse-02"):
            readings = sub.wait_for(simulated(device), count=5, timeout=10)
            telemetry = [Telemetry.decode(m.payload) for m in readings]
            assert [t.seq for t in telemetry] == list(range(1, len(telemetry) + 1))
            assert all(t.source is Source.SIMULATED for t in telemetry)
            assert set(telemetry[0].values) == {"temperature", "humidity", "pressure"}
        twins = sub.wait_for(lambda m: m.topic == f"edgetwin/{DEVICE}/twin", timeout=5)
        assert TwinSummary.decode(twins[-1].payload).sensors["env"].served_by == "simulation"
        devices = client.get("/devices").json()
        assert [(d["id"], d["presence"], d["served_by"], d["simulated"]) for d in devices] == [
            (DEVICE, "unknown", "simulation", True),
            ("greenhouse-02", "unknown", "simulation", True),
        ]
        metrics = client.get("/metrics").text
        assert 'edgetwin_devices{presence="unknown",served_by="simulation"} 2.0' in metrics
        assert "edgetwin_simulated_messages_total" in metrics
        assert client.get("/health").json()["mqtt_connected"] is True


def test_failback_when_agent_starts_and_failover_when_it_stops(
    broker: Broker, tmp_path: Path
) -> None:
    with Capture(broker, "edgetwin/#") as sub, gateway(gateway_config(broker, DEVICE)) as client:
        sub.wait_for(simulated(DEVICE), count=3, timeout=10)
        with EmulatedAgent(
            as_endpoint(broker), one_bme280(DEVICE, INTERVAL), state_dir=tmp_path / "state"
        ):
            sub.wait_for(from_agent(DEVICE), count=3, timeout=10)
            poll(lambda: served_by(client, DEVICE) == "agent", timeout=5, what="failback")
            handed_back = time.monotonic()
            sub.wait_for(
                lambda m: from_agent(DEVICE)(m) and m.received_at > handed_back + 1.0, timeout=10
            )
            late = [
                m for m in sub.messages() if simulated(DEVICE)(m) and m.received_at > handed_back
            ]
            assert late == [], "simulation went on after the agent came online"
            assert client.get(f"/devices/{DEVICE}").json()["simulated"] is False
        stopped = time.monotonic()
        resumed = sub.wait_for(
            lambda m: simulated(DEVICE)(m) and m.received_at > stopped, timeout=10
        )
        assert resumed
        view = client.get(f"/devices/{DEVICE}").json()
        assert (view["presence"], view["served_by"], view["simulated"]) == (
            "offline",
            "simulation",
            True,
        )


def test_failover_on_agent_crash_within_last_will_delay(broker: Broker, tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(agent_toml(broker, DEVICE, tmp_path / "state", keepalive=1))
    with Capture(broker, "edgetwin/#") as sub, gateway(gateway_config(broker, DEVICE)) as client:
        process = start_edgetwin(["agent", "--config", str(config)])
        try:
            sub.wait_for(from_agent(DEVICE), count=3, timeout=10)
            poll(lambda: served_by(client, DEVICE) == "agent", timeout=5, what="failback")
            process.kill()
            killed = time.monotonic()
            # The broker notices after 1.5 x keepalive; allow for its one-second timer tick.
            resumed = sub.wait_for(
                lambda m: simulated(DEVICE)(m) and m.received_at > killed, timeout=6
            )
        finally:
            stop_process(process, signal.SIGKILL)
        assert resumed[0].received_at - killed < 5
        assert served_by(client, DEVICE) == "simulation"


def test_api_rejects_bad_ids_with_reasons(broker: Broker) -> None:
    with gateway(gateway_config(broker, DEVICE)) as client:
        missing = client.get("/devices/nobody")
        assert missing.status_code == 404
        assert "nobody" in missing.json()["detail"]
        malformed = client.get("/devices/Not%20An%20Id")
        assert malformed.status_code == 422


def test_seed_simulator_config_runs_unchanged(broker: Broker, tmp_path: Path) -> None:
    """The original simulator's file, with only the broker address and the ports edited."""
    prometheus_port, api_port = free_port(), free_port()
    text = (REPO / "config" / "simulator.toml").read_text()
    text = text.replace('host = "mqtt"', f'host = "{broker.host}"')
    text = text.replace("port = 1883", f"port = {broker.port}")
    text = text.replace("prometheus_port = 8000", f"prometheus_port = {prometheus_port}")
    config = tmp_path / "simulator.toml"
    config.write_text(text)
    environment = {"EDGETWIN_SERVER_PORT": str(api_port), "EDGETWIN_PROMETHEUS_HOST": "127.0.0.1"}
    with Capture(broker, "sensors/#") as sub:
        process = start_edgetwin(["gateway", "--config", str(config)], env=environment)
        try:
            # Ten devices, every 2 s: two rounds of all ten within a few seconds.
            messages = sub.wait_for("sensors/+", count=20, timeout=15)
            scrape = httpx.get(f"http://127.0.0.1:{prometheus_port}/metrics", timeout=5)
            devices = httpx.get(f"http://127.0.0.1:{api_port}/devices", timeout=5).json()
            group = httpx.get(f"http://127.0.0.1:{api_port}/status", timeout=5).json()
        finally:
            code, stderr = stop_process(process)
    assert code == 0, stderr
    topics = {m.topic for m in messages}
    assert topics == {f"sensors/device_{i:03d}" for i in range(10)}
    assert all(payload(m)["source"] == "simulated" for m in messages)
    assert all(m.qos == 0 for m in messages)
    per_device = [m.received_at for m in messages if m.topic == "sensors/device_000"]
    assert all(1.5 < b - a < 2.5 for a, b in itertools.pairwise(per_device))
    assert scrape.status_code == 200
    # The original's metrics: its devices running, and what each one sent.
    assert "running_devices 10.0" in scrape.text.splitlines()
    assert 'mqtt_sent_total{device_id="device_009"}' in scrape.text
    # Its devices are one engine fleet (GET /status), not twins of the manifest.
    assert group == {"status": "running", "count": 10, "devices": sorted(group["devices"])}
    assert devices == []
    # The collector at otel-collector:4318 does not exist here: that costs a single warning.
    assert '"service": "simulator"' in stderr
    assert "Traceback" not in stderr
    assert stderr.count("trace export failing") <= 1
