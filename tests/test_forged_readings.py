"""A forged reading or twin document cannot crash-loop an agent.

Any client on the broker can publish telemetry for a manifest device. One reading with
`"seq": 18446744073709551616` used to be adopted by the gateway, reach the agent through the
retained twin document, and end the agent at its first commit (OverflowError from SQLite),
again at every start.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import msgspec
import pytest
from fastapi.testclient import TestClient

from edgetwin.agent.config import AgentConfig, AgentSection
from edgetwin.agent.contract import (
    MAX_INT,
    ContractError,
    DesiredConfig,
    DeviceState,
    FaultLabel,
    ReportedConfig,
    Status,
    Telemetry,
    TwinSummary,
)
from edgetwin.gateway.app import create_app
from edgetwin.gateway.config import GatewayConfig, ManifestDevice
from edgetwin.testing.agent import EmulatedAgent, agent_thread
from edgetwin.testing.broker import Broker
from edgetwin.testing.capture import Capture, Message, as_endpoint, publish
from edgetwin.testing.waiting import poll
from tests.fleet_helpers import agent_mqtt_settings, bme280, mqtt_settings, one_bme280, payload

DEVICE = "forged-01"
TOO_LARGE = 2**64  # the tester's number, beyond SQLite's INTEGER (2**63 - 1)
INTERVAL = 0.2


def telemetry_json(seq: int, source: str = "real", device: str = DEVICE) -> bytes:
    """A reading as a forger writes it, by hand: our own encoder would not build it."""
    return json.dumps(
        {
            "v": 1,
            "device": device,
            "sensor": "env",
            "ts": 1_700_000_000.0,
            "seq": seq,
            "source": source,
            "values": {"temperature": {"value": 21.5, "unit": "°C"}},
        }
    ).encode()


def twin_json(seq: int, device: str = DEVICE) -> bytes:
    return json.dumps(
        {
            "v": 1,
            "device": device,
            "ts": 1_700_000_000.0,
            "presence": "offline",
            "sensors": {"env": {"served_by": "simulation", "seq": seq}},
            "boot": 7,
        }
    ).encode()


def test_every_integer_of_the_contract_is_bounded_to_what_json_and_sqlite_hold() -> None:
    assert Telemetry.decode(telemetry_json(MAX_INT)).seq == MAX_INT
    for too_large in (MAX_INT + 1, TOO_LARGE):
        with pytest.raises(ContractError, match="<= 9007199254740991"):
            Telemetry.decode(telemetry_json(too_large))
        with pytest.raises(ContractError, match="<= 9007199254740991"):
            TwinSummary.decode(twin_json(too_large))
    documents: list[tuple[type[msgspec.Struct], dict[str, object], str]] = [
        (
            Status,
            {
                "device": DEVICE,
                "state": "online",
                "ts": 1.0,
                "agent_version": "1",
                "reason": "birth",
            },
            "boot",
        ),
        (DesiredConfig, {"device": DEVICE, "sensors": {}}, "version"),
        (ReportedConfig, {"device": DEVICE, "ts": 1.0, "status": "applied"}, "applied_version"),
        (
            DeviceState,
            {"device": DEVICE, "ts": 1.0, "agent_version": "1", "uptime_s": 1.0, "sensors": {}},
            "dropped",
        ),
    ]
    for kind, fields, key in documents:
        good = json.dumps({"v": 1, **fields, key: MAX_INT}).encode()
        kind.decode(good)  # type: ignore[attr-defined]
        bad = json.dumps({"v": 1, **fields, key: MAX_INT + 1}).encode()
        with pytest.raises(ContractError, match=re.escape(f"$.{key}")):
            kind.decode(bad)  # type: ignore[attr-defined]
    label = {
        "v": 1,
        "event": "start",
        "id": "f1",
        "type": "drift",
        "device": DEVICE,
        "start": 1.0,
        "params": {"rate": TOO_LARGE},
    }
    with pytest.raises(ContractError):
        FaultLabel.decode(json.dumps(label).encode())
    desired = {
        "v": 1,
        "device": DEVICE,
        "version": 1,
        "sensors": {"adc": {"driver": "ads1115", "options": {"gain": TOO_LARGE}}},
    }
    with pytest.raises(ContractError):
        DesiredConfig.decode(json.dumps(desired).encode())


def agent_config(broker: Broker, state_dir: Path) -> AgentConfig:
    return AgentConfig(
        agent=AgentSection(device_id=DEVICE, state_dir=state_dir, twin_wait=2),
        mqtt=agent_mqtt_settings(
            broker, keepalive=2, reconnect_min_delay=0.1, reconnect_max_delay=0.5
        ),
        sensors={"env": bme280(0.05)},
    )


def seq_of(message: Message) -> int:
    return Telemetry.decode(message.payload).seq


@pytest.mark.integration
@pytest.mark.parametrize(
    "seq", [TOO_LARGE, MAX_INT], ids=["beyond_the_contract", "at_the_bound_with_no_room_left"]
)
def test_an_agent_treats_an_unusable_twin_document_as_absent(
    broker: Broker, tmp_path: Path, seq: int, caplog: pytest.LogCaptureFixture
) -> None:
    publish(broker, f"edgetwin/{DEVICE}/twin", twin_json(seq), retain=True)
    with (
        Capture(broker, f"edgetwin/{DEVICE}/telemetry/env") as sub,
        agent_thread(agent_config(broker, tmp_path)) as agent,
    ):
        readings = sub.wait_for(count=10, timeout=15)
        # agent_thread fails the test if the loop died: it must still be running here.
        assert agent.outbox.commits > 0
    # Its own numbering, from the start: the forged number was not taken.
    assert [seq_of(m) for m in readings][:10] == list(range(1, 11))
    warnings = [r for r in caplog.records if "twin document" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]


def gateway_config(broker: Broker) -> GatewayConfig:
    return GatewayConfig.from_builtins(
        {
            "mqtt": mqtt_settings(
                broker, keepalive=2, reconnect_min_delay=0.1, reconnect_max_delay=0.5
            ),
            "presence": {"startup_grace": 0.3},
            "api": {"token": "t0ken"},
            "devices": [ManifestDevice(id=DEVICE, sensors={"env": bme280(INTERVAL)})],
        }
    )


def ignored(client: TestClient, reason: str) -> float:
    match = re.search(
        rf'^edgetwin_telemetry_ignored_total{{reason="{reason}"}} (\S+)$',
        client.get("/metrics").text,
        re.MULTILINE,
    )
    return float(match[1]) if match else 0.0


def twin_seq(client: TestClient) -> int:
    last = client.get(f"/devices/{DEVICE}").json()["sensors"]["env"]["last"]
    return int(last["seq"]) if last else 0


@pytest.mark.integration
def test_a_forged_seq_neither_moves_the_twin_nor_kills_the_returning_agent(
    broker: Broker, tmp_path: Path
) -> None:
    agent = EmulatedAgent(as_endpoint(broker), one_bme280(DEVICE), mode="process")
    telemetry = f"edgetwin/{DEVICE}/telemetry/env"
    with (
        Capture(broker, telemetry) as sub,
        TestClient(create_app(gateway_config(broker))) as client,
    ):
        # The device has no agent: the gateway simulates it, and sees its own readings back.
        poll(lambda: twin_seq(client) >= 3, 15, what="the simulation's readings in the twin")
        # Readings claiming to be the agent's while the simulation serves the stream: one far
        # ahead but inside the contract, one beyond it.
        publish(broker, telemetry, telemetry_json(MAX_INT - 10))
        publish(broker, telemetry, telemetry_json(TOO_LARGE))
        poll(lambda: ignored(client, "seq_jump") == 1, 5, what="the seq jump counted")
        poll(lambda: ignored(client, "malformed") == 1, 5, what="the malformed reading counted")
        assert twin_seq(client) < 1_000
        twin_topic = f"edgetwin/{DEVICE}/twin"
        with Capture(broker, twin_topic) as twins:
            twins.wait_for(twin_topic, timeout=5)
            assert all(
                serving["seq"] < 1_000
                for m in twins.messages()
                for serving in payload(m)["sensors"].values()  # type: ignore[attr-defined]
            )
        simulated_last = max(
            seq_of(m) for m in sub.messages() if payload(m)["source"] == "simulated"
        )
        with agent:
            back = sub.wait_for(
                lambda m: payload(m)["source"] == "emulated" and seq_of(m) > simulated_last,
                count=5,
                timeout=20,
            )
            agent.stop()
            assert agent.exit_code == 0, agent.log_text()
    assert max(seq_of(m) for m in back) < 1_000
