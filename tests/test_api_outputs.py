"""Outputs through the gateway's API: `PUT /devices/{id}/desired` with outputs, the same
If-Match versioning as sensors, a 422 with the reason for anything an agent would refuse
(never a 500), and `GET /devices/{id}` showing what is desired and what the agent applied."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgetwin.agent.config import AgentConfig, AgentSection
from edgetwin.gateway.app import create_app
from edgetwin.gateway.config import GatewayConfig, ManifestDevice
from edgetwin.hardware import EmulatedBackend
from edgetwin.hardware.drivers.pca9685 import PCA9685Emulator, quantised
from edgetwin.testing import agent as testing_agent
from edgetwin.testing.broker import Broker
from edgetwin.testing.waiting import poll
from tests.fleet_helpers import agent_mqtt_settings, bme280, mqtt_settings

TOKEN = "outputs-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DEVICE = "greenhouse-07"
ENV = {"driver": "bme280", "address": 0x76, "interval": 0.2, "backend": "emulated"}
RELAY = {"driver": "digital_output", "pin": 17, "value": 1, "backend": "emulated"}
FAN = {"driver": "pca9685", "channel": 2, "value": 0.4, "backend": "emulated"}


def gateway_config(broker: Broker) -> GatewayConfig:
    return GatewayConfig.from_builtins(
        {
            "mqtt": mqtt_settings(
                broker, keepalive=2, reconnect_min_delay=0.1, reconnect_max_delay=0.5
            ),
            "presence": {"startup_grace": 0.3},
            "api": {"token": TOKEN},
            "devices": [ManifestDevice(id=DEVICE, sensors={"env": bme280(0.2)})],
        }
    )


@contextmanager
def gateway(broker: Broker) -> Iterator[TestClient]:
    with TestClient(create_app(gateway_config(broker))) as client:
        yield client


def put(client: TestClient, body: dict[str, Any], version: int | None = None) -> Any:
    headers = AUTH if version is None else {**AUTH, "If-Match": f'"{version}"'}
    return client.put(f"/devices/{DEVICE}/desired", json=body, headers=headers)


def twin(client: TestClient) -> dict[str, Any]:
    answer = client.get(f"/devices/{DEVICE}")
    assert answer.status_code == 200, answer.text
    view: dict[str, Any] = answer.json()
    return view


@pytest.mark.integration
def test_outputs_are_versioned_with_the_sensors_and_reach_the_agent(
    broker: Broker, tmp_path: Path
) -> None:
    agent_config = AgentConfig(
        agent=AgentSection(device_id=DEVICE, state_dir=tmp_path, state_interval=0.5),
        mqtt=agent_mqtt_settings(
            broker, keepalive=2, reconnect_min_delay=0.1, reconnect_max_delay=0.5
        ),
        sensors={"env": bme280(0.2)},
    )
    with (
        EmulatedBackend() as backend,
        gateway(broker) as client,
        testing_agent.agent_thread(agent_config, emulated_backend=backend) as agent,
    ):
        poll(lambda: twin(client)["presence"] == "online", 10, what="agent online")
        first = put(client, {"sensors": {"env": ENV}, "outputs": {"relay": RELAY, "fan": FAN}}, 0)
        assert first.status_code == 200, first.text
        assert first.headers["ETag"] == '"1"'
        assert first.json()["outputs"]["fan"]["value"] == 0.4
        poll(lambda: twin(client)["config"] == "in_sync", 10, what="version 1 applied")
        poll(lambda: "outputs" in (twin(client)["reported"] or {}), 10, what="outputs reported")
        view = twin(client)
        assert view["desired"]["outputs"]["relay"]["value"] == 1.0
        assert view["reported"]["outputs"] == {
            "relay": {"value": 1.0, "backend": "emulated"},
            "fan": {"value": quantised(0.4), "backend": "emulated"},
        }
        pca = backend.i2c_bus(1).device_at(0x40)
        assert isinstance(pca, PCA9685Emulator)
        assert pca.output_duty(2) == quantised(0.4)

        # The sensor form's write names no outputs: they are kept, under a new version.
        sensors_only = put(client, {"sensors": {"env": {**ENV, "interval": 0.5}}}, 1)
        assert sensors_only.status_code == 200, sensors_only.text
        assert set(sensors_only.json()["outputs"]) == {"relay", "fan"}
        # One output's value, as a merge patch.
        patched = client.patch(
            f"/devices/{DEVICE}/desired",
            json={"outputs": {"fan": {"value": 0.9}}},
            headers={**AUTH, "If-Match": '"2"'},
        )
        assert patched.status_code == 200, patched.text
        assert patched.json()["outputs"]["fan"]["value"] == 0.9
        assert patched.json()["outputs"]["relay"] == first.json()["outputs"]["relay"]
        poll(lambda: pca.output_duty(2) == quantised(0.9), 10, what="the new duty on the chip")
        # If-Match guards outputs as it guards sensors.
        stale = put(client, {"sensors": {"env": ENV}, "outputs": {}}, 2)
        assert stale.status_code == 409, stale.text
        removed = put(client, {"sensors": {"env": ENV}, "outputs": {}}, 3)
        assert removed.status_code == 200, removed.text
        assert "outputs" not in removed.json()
        poll(lambda: not agent.outputs.slots, 10, what="outputs closed")
        assert pca.output_duty(2) == 0.0


# (label, outputs, sensors beyond env, a fragment of the 422's reason)
REFUSED: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    (
        "duty out of range",
        {"fan": {**FAN, "value": 1.5}},
        {},
        "output 'fan': pca9685 value takes 0..1, got 1.5; values outside the range are refused, "
        "not clamped",
    ),
    ("relay half on", {"relay": {**RELAY, "value": 0.5}}, {}, "takes 0 or 1, got 0.5"),
    ("huge value", {"fan": {**FAN, "value": 10**30}}, {}, "got 1e+30"),
    ("unknown driver", {"valve": {**RELAY, "driver": "valve"}}, {}, "no output driver named"),
    ("unknown option", {"fan": {**FAN, "options": {"duty": 1}}}, {}, "no option 'duty'"),
    ("GPIO output on a channel", {"relay": {**RELAY, "channel": 1}}, {}, "no I2C address"),
    ("no channel", {"fan": {**FAN, "channel": None}}, {}, "needs its channel"),
    ("All Call address", {"fan": {**FAN, "address": 0x70}}, {}, "cannot be at 0x70"),
    (
        "one pin twice",
        {"relay": RELAY, "lamp": {**RELAY, "value": 0}},
        {},
        "GPIO17 is already taken by output",
    ),
    (
        "two frequencies",
        {"fan": FAN, "vent": {**FAN, "channel": 3, "options": {"frequency": 1000}}},
        {},
        "one chip has one PWM frequency",
    ),
    (
        "a sensor's pin",
        {"relay": RELAY},
        {"door": {"driver": "button", "pins": {"pin": 17}}},
        "already taken by sensor 'door'",
    ),
]


@pytest.mark.integration
def test_outputs_an_agent_would_refuse_get_422_with_the_reason(broker: Broker) -> None:
    with gateway(broker) as client:
        for label, outputs, sensors, reason in REFUSED:
            answer = put(client, {"sensors": {"env": ENV, **sensors}, "outputs": outputs})
            assert answer.status_code == 422, f"{label}: {answer.text}"
            assert reason in answer.json()["detail"], f"{label}: {answer.text}"
        # Refused by the schema itself, with where it lies.
        for bad in ({**RELAY, "value": True}, {**RELAY, "value": "1"}, {"driver": "pwm_output"}):
            answer = put(client, {"sensors": {"env": ENV}, "outputs": {"relay": bad}})
            assert answer.status_code == 422, answer.text
            assert answer.json()["detail"][0]["loc"][:2] == ["body", "outputs"]
        nan = client.put(
            f"/devices/{DEVICE}/desired",
            content=b'{"sensors": {}, "outputs": {"fan": {"driver": "pca9685", "channel": 1, '
            b'"value": NaN}}}',
            headers={**AUTH, "Content-Type": "application/json"},
        )
        assert nan.status_code == 422, nan.text
        out_of_range = client.patch(
            f"/devices/{DEVICE}/desired",
            json={"outputs": {"fan": {**FAN, "value": -1}}},
            headers=AUTH,
        )
        assert out_of_range.status_code == 422, out_of_range.text
        assert "got -1" in out_of_range.json()["detail"]
        assert (
            client.patch(
                f"/devices/{DEVICE}/desired", json={"outputs": [1]}, headers=AUTH
            ).status_code
            == 422
        )
        # Nothing refused was published: the device still has no desired document.
        assert twin(client)["desired"] is None


numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.text(max_size=4),
    st.none(),
)
outputs_bodies = st.dictionaries(
    st.sampled_from(["relay", "fan", "Bad/Name", ""]),
    st.dictionaries(
        st.sampled_from(
            ["driver", "value", "pin", "bus", "address", "channel", "options", "backend", "x"]
        ),
        st.sampled_from(["digital_output", "pwm_output", "pca9685", "servo", "auto", "emulated"])
        | numbers
        | st.dictionaries(
            st.sampled_from(["frequency", "safe_value", "active_high", "Bad"]), numbers, max_size=3
        ),
        max_size=8,
    ),
    max_size=3,
)


@pytest.mark.integration
def test_no_outputs_body_is_a_server_error(broker: Broker) -> None:
    with gateway(broker) as client:

        @settings(
            max_examples=300,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture],
        )
        @given(outputs=outputs_bodies)
        def check(outputs: dict[str, Any]) -> None:
            body = json.dumps({"sensors": {"env": ENV}, "outputs": outputs}, allow_nan=False)
            answer = client.put(
                f"/devices/{DEVICE}/desired",
                content=body.encode(),
                headers={**AUTH, "Content-Type": "application/json"},
            )
            assert answer.status_code in (200, 422), answer.text
            if answer.status_code == 200:
                for name, written in answer.json().get("outputs", {}).items():
                    assert math.isfinite(written["value"]), name

        check()
