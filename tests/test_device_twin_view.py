"""What a device's page reads beyond the fleet table: the hand-over log in GET /devices/{id}
(who served each sensor when, as the gateway decided it) and GET /devices/{id}/watch (the
shell commands that follow the device on the broker, which must work as printed)."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from edgetwin.agent.contract import Telemetry
from edgetwin.gateway.app import create_app
from edgetwin.gateway.config import GatewayConfig, ManifestDevice
from edgetwin.gateway.fleet import HANDOVERS_KEPT, Fleet
from edgetwin.testing.agent import EmulatedAgent
from edgetwin.testing.broker import Broker
from edgetwin.testing.capture import Capture, as_endpoint, publish
from edgetwin.testing.waiting import poll
from tests.fleet_helpers import bme280, mqtt_settings, one_bme280

DEVICE = "greenhouse-01"
INTERVAL = 0.2


def config(broker: Broker, **mqtt: object) -> GatewayConfig:
    return GatewayConfig.from_builtins(
        {
            "mqtt": mqtt_settings(
                broker, keepalive=2, reconnect_min_delay=0.1, reconnect_max_delay=0.5, **mqtt
            ),
            "presence": {"startup_grace": 0.3},
            "api": {"token": "t"},
            "devices": [ManifestDevice(id=DEVICE, sensors={"env": bme280(INTERVAL)})],
        }
    )


def test_the_hand_over_log_keeps_changes_only_and_is_bounded() -> None:
    fleet = Fleet([ManifestDevice(id=DEVICE, sensors={"env": bme280(1)})])
    # Nobody serving a stream the gateway has not decided on yet is no hand-over.
    assert fleet.note_serving(DEVICE, {"env": "none"}, {}, ts=1.0) == []
    made = fleet.note_serving(DEVICE, {"env": "agent"}, {"env": 0}, ts=2.0)
    assert [(h.sensor, h.previous, h.served_by) for h in made] == [("env", "none", "agent")]
    # The same decision again (every state document reconciles) adds nothing.
    assert fleet.note_serving(DEVICE, {"env": "agent"}, {"env": 40}, ts=3.0) == []
    made = fleet.note_serving(DEVICE, {"env": "simulation"}, {"env": 41}, ts=4.0)
    assert [(h.previous, h.served_by, h.seq, h.ts) for h in made] == [
        ("agent", "simulation", 41, 4.0)
    ]
    # A sensor left out of the config is served by nobody from then on.
    made = fleet.note_serving(DEVICE, {}, {"env": 50}, ts=5.0)
    assert [(h.sensor, h.served_by) for h in made] == [("env", "none")]
    for i in range(HANDOVERS_KEPT * 2):
        fleet.note_serving(DEVICE, {"env": "agent" if i % 2 else "simulation"}, {}, ts=10.0 + i)
    twin = fleet.get(DEVICE)
    assert twin is not None
    assert len(twin.handovers) == HANDOVERS_KEPT
    assert twin.handovers[-1].ts == 10.0 + HANDOVERS_KEPT * 2 - 1  # the newest are kept
    assert fleet.note_serving("nobody", {"env": "agent"}, {}, ts=1.0) == []


@pytest.mark.integration
def test_the_twin_view_tells_who_served_each_sensor_when(broker: Broker, tmp_path: Path) -> None:
    topic = f"edgetwin/{DEVICE}/telemetry/env"
    with (
        Capture(broker, topic) as sub,
        TestClient(create_app(config(broker))) as client,
    ):

        def view() -> dict[str, Any]:
            answer: dict[str, Any] = client.get(f"/devices/{DEVICE}").json()
            return answer

        # No agent: after the grace the gateway stands in.
        poll(lambda: [h["served_by"] for h in view()["handovers"]] == ["simulation"], 10)
        with EmulatedAgent(
            as_endpoint(broker), one_bme280(DEVICE, INTERVAL), state_dir=tmp_path / "state"
        ):
            poll(lambda: view()["handovers"][-1]["served_by"] == "agent", 10, what="failback")
            sub.wait_for(
                lambda m: Telemetry.decode(m.payload).source.value == "emulated", timeout=5
            )
        # The agent said goodbye: the simulation takes over after the agent's last number.
        poll(lambda: view()["handovers"][-1]["served_by"] == "simulation", 10, what="failover")
        after = view()["handovers"][-1]
        simulated = sub.wait_for(
            lambda m: (
                Telemetry.decode(m.payload).source.value == "simulated"
                and Telemetry.decode(m.payload).seq > after["seq"]
            ),
            timeout=10,
        )
        twin = view()
    assert [(h["previous"], h["served_by"]) for h in twin["handovers"]] == [
        (None, "simulation"),
        ("simulation", "agent"),
        ("agent", "simulation"),
    ]
    failback, failover = twin["handovers"][1:]
    assert failback["presence"] == "online"
    assert failover["presence"] == "offline"
    assert failback["ts"] <= failover["ts"]
    # The hand-over's seq is where the new server continues: one numbering.
    assert Telemetry.decode(simulated[0].payload).seq == failover["seq"] + 1
    assert twin["status"]["state"] == "offline"
    assert twin["status"]["reason"] == "shutdown"
    assert twin["status"]["boot"] == 1
    assert twin["manifest_sensors"]["env"]["driver"] == "bme280"


@pytest.mark.integration
def test_the_watch_commands_follow_the_device_on_the_broker(broker: Broker) -> None:
    gateway = config(broker, prefix="plant/a", topic="sensors/{device_id}")
    with TestClient(create_app(gateway)) as client:
        answer = client.get(f"/devices/{DEVICE}/watch")
        assert client.get("/devices/nobody/watch").status_code == 404
    assert answer.status_code == 200, answer.text
    watch = answer.json()
    assert watch["topics"]["all"] == f"plant/a/{DEVICE}/#"
    assert watch["topics"]["telemetry"] == f"sensors/{DEVICE}"
    commands = [c["command"] for c in watch["commands"]]
    assert all("password" not in c.lower() or "EDGETWIN_MQTT_PASSWORD" in c for c in commands)
    # Run them as printed: a retained status and a reading on the template's topic arrive.
    publish(broker, f"plant/a/{DEVICE}/status", b'{"hello": 1}', retain=True)
    edgetwin_watch = shlex.split(commands[0])
    assert edgetwin_watch[:2] == ["edgetwin", "watch"]
    argv = [sys.executable, "-m", "edgetwin", *edgetwin_watch[1:], "--count", "1"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=True).stdout
    assert f"plant/a/{DEVICE}/status (retained)" in out
    mosquitto = shlex.split(commands[1])
    assert mosquitto[0] == "mosquitto_sub"
    assert f"sensors/{DEVICE}" in mosquitto
    try:
        done = subprocess.run(
            [*mosquitto, "-C", "1", "-W", "10"],
            check=False,
            capture_output=True,
            text=True,
            timeout=20,
        )
    except FileNotFoundError:
        pytest.skip("mosquitto_sub not installed (mosquitto-clients)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"plant/a/{DEVICE}/status ")
