"""What an operator sees of trouble: /health, logs that name the cause, metrics (issue 12)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.config import GatewayConfig
from tests.brokers import BrokerUnderTest
from tests.fleet_helpers import mqtt_settings, poll

pytestmark = pytest.mark.integration

TOKEN = "ops-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def gateway_config(broker: BrokerUnderTest, **extra: Any) -> GatewayConfig:
    return GatewayConfig.from_builtins(
        {
            "mqtt": mqtt_settings(
                broker, keepalive=2, reconnect_min_delay=0.1, reconnect_max_delay=0.3
            ),
            "presence": {"startup_grace": 0.3},
            "api": {"token": TOKEN},
            **extra,
        }
    )


@contextmanager
def gateway(config: GatewayConfig) -> Iterator[TestClient]:
    with TestClient(create_app(config), headers=BEARER) as client:
        yield client


def test_health_is_503_with_the_reason_while_the_broker_is_away(broker: BrokerUnderTest) -> None:
    with gateway(gateway_config(broker)) as client:
        poll(lambda: client.get("/health").status_code == 200, 10, what="connected")
        assert client.get("/health").json()["status"] == "ok"
        broker.stop()
        poll(lambda: client.get("/health").status_code == 503, 10, what="503 without broker")
        health = client.get("/health").json()
        assert health["status"] == "unavailable"
        assert health["mqtt_connected"] is False
        assert f"{broker.host}:{broker.port}" in health["reason"]
        broker.start()
        poll(lambda: client.get("/health").status_code == 200, 15, what="back")
        assert client.get("/health").json()["reason"] is None


def test_a_deleted_device_leaves_metrics(broker: BrokerUnderTest) -> None:
    series = 'mqtt_sent_total{device_id="gone-01"}'
    with gateway(gateway_config(broker)) as client:
        added = client.post(
            "/devices",
            json={"id": "gone-01", "sensors": {"env": {"driver": "bme280", "interval": 0.1}}},
        )
        assert added.status_code == 201, added.text
        poll(lambda: series in client.get("/metrics").text, 10, what="its series")
        assert client.delete("/devices/gone-01").status_code == 204
        poll(lambda: series not in client.get("/metrics").text, 10, what="series removed")
