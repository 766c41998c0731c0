"""edgetwin.testing.gateway: a RunningGateway with a manifest and a token, an agent joining
it, and a desired config pushed through its API reaching the agent."""

from __future__ import annotations

import time
from typing import Any

import pytest

from edgetwin.testing.agent import EmulatedAgent
from edgetwin.testing.broker import Broker
from edgetwin.testing.endpoint import MqttEndpoint
from edgetwin.testing.gateway import GatewayClient, GatewayError, RunningGateway
from edgetwin.testing.waiting import poll

pytestmark = pytest.mark.integration

DEVICE = "testing-gw-01"
INTERVAL = 0.2


def endpoint(broker: Broker) -> MqttEndpoint:
    return MqttEndpoint(broker.host, broker.port, "5" if broker.protocol == "5" else "3.1.1")


def manifest() -> list[dict[str, Any]]:
    return [{"id": DEVICE, "sensors": {"env": {"driver": "bme280", "interval": INTERVAL}}}]


def served_by(client: GatewayClient, sensor: str = "env") -> str | None:
    sensors = client.device(DEVICE)["sensors"]
    return str(sensors[sensor]["served_by"]) if sensor in sensors else None


def test_gateway_follows_an_agent_and_pushes_it_a_desired_config(
    broker: Broker,
) -> None:
    started = time.monotonic()
    with RunningGateway(endpoint(broker), manifest()) as gateway:
        print(f"thread mode: gateway answers {time.monotonic() - started:.2f} s after start")
        client = gateway.client
        assert gateway.url.startswith("http://127.0.0.1:")
        assert [d["id"] for d in client.devices()] == [DEVICE]
        # No agent yet: the gateway simulates the device.
        poll(lambda: served_by(client) == "simulation", 10, what="the simulation")
        config = {
            "agent": {"device_id": DEVICE, "state_interval": 0.5},
            "sensors": {"env": {"driver": "bme280", "interval": INTERVAL}},
        }
        with EmulatedAgent(endpoint(broker), config) as agent:
            poll(lambda: client.device(DEVICE)["presence"] == "online", 10, what="agent online")
            poll(lambda: served_by(client) == "agent", 10, what="the agent serving env")

            sensors = {
                "env": {"driver": "bme280", "interval": INTERVAL},
                "outdoor": {"driver": "bme280", "address": 0x77, "interval": INTERVAL},
            }
            desired, version = client.put_desired(DEVICE, sensors, if_match=0)
            assert version == 1
            assert sorted(desired["sensors"]) == ["env", "outdoor"]
            reported = agent.wait_for_reported(lambda r: r.applied_version == 1)
            assert reported.status == "applied"
            assert sorted(agent.agent.slots) == ["env", "outdoor"]
            poll(lambda: client.device(DEVICE)["config"] == "in_sync", 10, what="in sync")
            poll(lambda: served_by(client, "outdoor") == "agent", 10, what="outdoor served")

            with pytest.raises(GatewayError) as stale:
                client.put_desired(DEVICE, {}, if_match=0)
            assert stale.value.status == 409
            unauthorised = GatewayClient(gateway.url, token="wrong")
            with pytest.raises(GatewayError) as refused:
                unauthorised.put_desired(DEVICE, {}, if_match=1)
            assert refused.value.status == 403


def test_gateway_process_answers_and_stops_cleanly(broker: Broker) -> None:
    started = time.monotonic()
    gateway = RunningGateway(endpoint(broker), manifest(), mode="process").start()
    try:
        print(f"process mode: gateway answers {time.monotonic() - started:.2f} s after start")
        client = gateway.client
        poll(lambda: client.health().status == 200, 10, what="broker reached")
        added = client.add_device("testing-gw-02", site="lab")
        assert added["id"] == "testing-gw-02"
        assert sorted(d["id"] for d in client.devices()) == [DEVICE, "testing-gw-02"]
        with pytest.raises(GatewayError) as unknown:
            client.device("nobody")
        assert unknown.value.status == 404
    finally:
        gateway.stop()
    assert gateway.exit_code == 0
