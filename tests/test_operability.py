"""What an operator sees of trouble: /health, logs that name the cause, metrics."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from edgetwin.agent.config import AgentConfig, AgentSection, MqttSettings
from edgetwin.agent.contract import Source, Telemetry
from edgetwin.agent.mqtt import MqttLink
from edgetwin.gateway.app import create_app
from edgetwin.gateway.config import GatewayConfig
from edgetwin.gateway.lograte import LogLimiter
from edgetwin.testing.agent import agent_thread
from edgetwin.testing.broker import Broker
from edgetwin.testing.capture import connect_client, disconnect_client, publish
from edgetwin.testing.waiting import poll
from tests.fleet_helpers import agent_mqtt_settings, bme280, mqtt_settings

pytestmark = pytest.mark.integration

TOKEN = "ops-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def gateway_config(broker: Broker, **extra: Any) -> GatewayConfig:
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


def test_health_is_503_with_the_reason_while_the_broker_is_away(broker: Broker) -> None:
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


def test_a_deleted_device_leaves_metrics(broker: Broker) -> None:
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


def metric(client: TestClient, series: str) -> float:
    """The value of one series (name and labels as exposed), 0 when absent."""
    for line in client.get("/metrics").text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == series:
            return float(value)
    return 0.0


MALFORMED = [
    b"[" * 100_000,  # nested past Python's recursion limit: was an ERROR with a traceback
    b"\xff\xfe",
    b"not json",
    b'{"v": 1}',
    b'{"v": 1, "device": "noisy-01", "sensor": "env", "ts": 1e999}',
]


def test_malformed_telemetry_is_counted_and_logged_once_per_device(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    device = {"id": "noisy-01", "sensors": {"env": {"driver": "bme280", "interval": 1}}}
    rounds = 10
    with gateway(gateway_config(broker)) as client:
        assert client.post("/devices", json=device).status_code == 201
        # A good reading first: once the twin shows it, the gateway reads the device's topics.
        reading = Telemetry(
            device="noisy-01", sensor="env", ts=1.0, seq=7, source=Source.EMULATED, values={}
        )
        publish(broker, "edgetwin/noisy-01/telemetry/env", reading.encode())
        poll(
            lambda: (
                (client.get("/devices/noisy-01").json()["sensors"]["env"]["last"] or {}).get("seq")
                == 7
            ),
            10,
            what="the good reading in the twin",
        )
        flooder = connect_client(broker)
        try:
            sent = [
                flooder.publish(f"edgetwin/noisy-01/{topic}", payload, qos=1)
                for _ in range(rounds)
                for payload in MALFORMED
                for topic in ("telemetry/env", "status")
            ]
            for info in sent:
                info.wait_for_publish(10)
        finally:
            disconnect_client(flooder)
        total = rounds * len(MALFORMED)
        name = "edgetwin_malformed_messages_total"
        poll(
            lambda: (
                metric(client, name + '{kind="telemetry"}') == total
                and metric(client, name + '{kind="status"}') == total
            ),
            15,
            what="every malformed message counted: "
            + str(
                [line for line in client.get("/metrics").text.splitlines() if "malformed" in line]
            ),
        )
    lines = [r for r in caplog.records if r.getMessage() == "ignoring malformed message"]
    assert len(lines) == 1, [r.__dict__.get("topic") for r in lines]
    assert lines[0].levelno == logging.WARNING
    assert lines[0].exc_info is None
    assert getattr(lines[0], "device", None) == "noisy-01"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [
        r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR
    ]


def twin_agent(broker: Broker, state_dir: Path) -> AgentConfig:
    return AgentConfig(
        agent=AgentSection(device_id="twin-01", state_dir=state_dir, twin_wait=0),
        mqtt=agent_mqtt_settings(
            broker, keepalive=2, reconnect_min_delay=0.1, reconnect_max_delay=0.3
        ),
        sensors={"env": bme280(1.0)},
    )


def test_two_agents_with_one_device_id_are_reported(
    broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: 50 agents with one id flapped 374 times in 25 s and nothing said why."""
    caplog.set_level(logging.INFO)
    device = {"id": "twin-01", "sensors": {"env": {"driver": "bme280", "interval": 1}}}
    with gateway(gateway_config(broker)) as client:
        assert client.post("/devices", json=device).status_code == 201
        assert client.get("/devices/twin-01").json()["duplicate_id"] is None
        with (
            agent_thread(twin_agent(broker, tmp_path / "a")),
            agent_thread(twin_agent(broker, tmp_path / "b")),
        ):
            poll(
                lambda: client.get("/devices/twin-01").json()["duplicate_id"] is not None,
                20,
                what="the duplicate id flagged",
            )
            assert metric(client, "edgetwin_duplicate_device_ids") == 1
        reason = client.get("/devices/twin-01").json()["duplicate_id"]
        assert "more than one agent" in reason
        listed = {d["id"]: d for d in client.get("/devices").json()}
        assert listed["twin-01"]["duplicate_id"] == reason
        assert client.delete("/devices/twin-01").status_code == 204
    warnings = [
        r for r in caplog.records if r.getMessage() == "device id used by more than one agent"
    ]
    assert len(warnings) == 1, [r.__dict__.get("reason") for r in warnings]
    assert getattr(warnings[0], "device", None) == "twin-01"


@contextmanager
def silent_broker() -> Iterator[tuple[str, int, list[socket.socket]]]:
    """A TCP listener that takes connections and never says a word (no CONNACK)."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(server.accept()[0])
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield "127.0.0.1", server.getsockname()[1], accepted
    finally:
        server.close()
        for sock in accepted:
            sock.close()


def link_logs(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name == "edgetwin.agent.mqtt" and message in r.getMessage()
    ]


def test_a_broker_that_never_answers_is_logged_once_per_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    with silent_broker() as (host, port, accepted):
        settings = MqttSettings(
            host=host, port=port, keepalive=1, reconnect_min_delay=0.05, reconnect_max_delay=0.1
        )
        link = MqttLink(settings, client_id="edgetwin-gateway-test")
        link.start()
        try:
            poll(lambda: len(accepted) >= 3, 15, what="three connection attempts")
        finally:
            link.close()
    lines = link_logs(caplog, "no CONNACK")
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert lines[0].levelno == logging.WARNING
    assert getattr(lines[0], "broker", None) == f"{host}:{port}"
    assert getattr(lines[0], "timeout_s", None) == 1


def test_a_session_taken_over_says_so(broker: Broker, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    settings = mqtt_settings(broker, keepalive=5, reconnect_min_delay=0.5, reconnect_max_delay=1)
    first = MqttLink(settings, client_id="edgetwin-gateway-same")
    second = MqttLink(settings, client_id="edgetwin-gateway-same")
    first.start()
    try:
        assert first.wait_connected(10)
        second.start()
        poll(lambda: link_logs(caplog, "lost broker connection"), 10, what="the loss logged")
    finally:
        second.close()
        first.close()
    reason = getattr(link_logs(caplog, "lost broker connection")[0], "reason", "")
    assert "Unspecified error" not in reason
    assert "another client connected with client id 'edgetwin-gateway-same'" in reason


def test_the_log_limiter_holds_lines_back_and_keeps_few_keys() -> None:
    now = [0.0]
    limiter = LogLimiter(60.0, max_keys=4, clock=lambda: now[0])
    assert limiter.allow("a") == 0
    assert [limiter.allow("a") for _ in range(3)] == [None, None, None]
    now[0] = 61.0
    assert limiter.allow("a") == 3  # the next line says how many were held back
    # Devices named by the network: the table stays bounded.
    for i in range(100):
        limiter.allow(f"flood-{i}")
    assert len(limiter) <= 4
