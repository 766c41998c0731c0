"""Settings and configs of edgetwin's own programs for the repository's tests.

Starting them (agents, gateways, processes, threads) and waiting on them is in
`edgetwin.testing` (agent, gateway, process, waiting), shared with users' tests.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from edgetwin.agent.config import AgentMqttSettings, MqttSettings
from edgetwin.agent.contract import SensorSettings
from edgetwin.testing.agent import agent_config_toml
from edgetwin.testing.capture import BrokerAddress, Message, as_endpoint

REPO = Path(__file__).resolve().parent.parent


def mqtt_settings(broker: BrokerAddress, **extra: object) -> MqttSettings:
    return MqttSettings.from_builtins(
        {"host": broker.host, "port": broker.port, "protocol": broker.protocol, **extra}
    )


def agent_mqtt_settings(broker: BrokerAddress, **extra: object) -> AgentMqttSettings:
    """An agent's settings: its persistent session (session_expiry) stays on, as in production."""
    return AgentMqttSettings.from_builtins(
        {"host": broker.host, "port": broker.port, "protocol": broker.protocol, **extra}
    )


def bme280(interval: float, address: int = 0x76) -> SensorSettings:
    return SensorSettings.from_builtins(
        {"driver": "bme280", "interval": interval, "address": address, "backend": "emulated"}
    )


def one_bme280(device: str, interval: float = 0.2) -> dict[str, Any]:
    """An `EmulatedAgent` config: `device` with one emulated BME280 named "env"."""
    return {
        "agent": {"device_id": device},
        "sensors": {"env": {"driver": "bme280", "address": 0x76, "interval": interval}},
    }


def agent_toml(
    broker: BrokerAddress,
    device: str,
    state_dir: Path,
    *,
    interval: float = 0.2,
    keepalive: int = 2,
    outdoor: bool = True,
) -> str:
    """An agent config file with two emulated BME280s, "env" and "outdoor" (disabled unless
    `outdoor`), as the process tests start it."""
    sensor = {"driver": "bme280", "interval": interval, "backend": "emulated"}
    return agent_config_toml(
        {
            "agent": {"device_id": device, "state_dir": str(state_dir)},
            "mqtt": as_endpoint(broker).mqtt_settings(
                keepalive=keepalive, reconnect_min_delay=0.2, reconnect_max_delay=1
            ),
            "sensors": {
                "env": {**sensor, "address": 0x76},
                "outdoor": {**sensor, "address": 0x77, "enabled": outdoor},
            },
        }
    )


def payload(message: Message) -> dict[str, object]:
    decoded: dict[str, object] = json.loads(message.payload)
    return decoded


def sse_events(response: httpx.Response) -> Iterator[tuple[str, Any]]:
    """(event, data) pairs as they arrive; comments and `retry` lines skipped."""
    kind, data = "message", ""
    for line in response.iter_lines():
        if not line:
            if data:
                yield kind, json.loads(data)
            kind, data = "message", ""
        elif line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            data += line[6:]
