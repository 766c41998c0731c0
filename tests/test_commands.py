"""Commands with an answer, against a real broker: an agent on emulated chips and the gateway's
`POST /devices/{id}/commands/{name}`, and raw MQTT 5 requesters where the API cannot reach
(a request sent twice with one id, a deadline already past, a device that never answers)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgetwin.agent.config import AgentConfig, AgentSection, OutboxSettings
from edgetwin.agent.contract import (
    CommandRequest,
    CommandResponse,
    Presence,
    Status,
    Topics,
)
from edgetwin.agent.runtime import Agent
from edgetwin.gateway.app import create_app
from edgetwin.gateway.config import GatewayConfig, ManifestDevice
from edgetwin.hardware import EmulatedBackend
from edgetwin.hardware.drivers.gpio_output import emulator_for
from edgetwin.testing import agent as testing_agent
from edgetwin.testing.broker import Broker
from edgetwin.testing.capture import connect_client, disconnect_client
from edgetwin.testing.waiting import poll
from tests.fleet_helpers import agent_mqtt_settings, bme280, mqtt_settings

pytestmark = pytest.mark.integration

DEVICE = "pi-cmd"
ABSENT = "pi-absent"
MUTE = "pi-mute"
TOKEN = "command-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TOPICS = Topics()


def gateway_config(broker: Broker) -> GatewayConfig:
    return GatewayConfig.from_builtins(
        {
            "mqtt": mqtt_settings(
                broker, keepalive=2, reconnect_min_delay=0.1, reconnect_max_delay=0.5
            ),
            "presence": {"startup_grace": 0.3},
            "api": {"token": TOKEN},
            "devices": [
                ManifestDevice(id=d, sensors={"env": bme280(0.5)}) for d in (DEVICE, ABSENT, MUTE)
            ],
        }
    )


def agent_config(broker: Broker, state_dir: Path) -> AgentConfig:
    return AgentConfig(
        agent=AgentSection(device_id=DEVICE, state_dir=state_dir, shutdown_timeout=2),
        mqtt=agent_mqtt_settings(
            broker, keepalive=2, reconnect_min_delay=0.05, reconnect_max_delay=0.3
        ),
        outbox=OutboxSettings(commit_interval=0.05),
        sensors={"env": bme280(0.5)},
    )


@contextmanager
def fleet(
    broker: Broker, tmp_path: Path, backend: EmulatedBackend | None = None
) -> Iterator[tuple[TestClient, Agent]]:
    """The gateway's API and a live agent for DEVICE, once the twin has it online; its
    emulated hardware `backend` when given."""
    with (
        TestClient(create_app(gateway_config(broker))) as api,
        testing_agent.agent_thread(
            agent_config(broker, tmp_path / "state"), emulated_backend=backend
        ) as agent,
    ):
        poll(lambda: presence(api, DEVICE) == "online", 15, what="agent online")
        yield api, agent


def presence(api: TestClient, device: str) -> str:
    body: dict[str, Any] = api.get(f"/devices/{device}").json()
    return str(body["presence"])


def command(
    api: TestClient, name: str, device: str = DEVICE, **body: Any
) -> tuple[int, dict[str, Any]]:
    response = api.post(f"/devices/{device}/commands/{name}", json=body, headers=AUTH)
    return response.status_code, response.json()


def diagnostics(api: TestClient) -> dict[str, Any]:
    status, answer = command(api, "diagnostics")
    assert status == 200, answer
    result: dict[str, Any] = answer["result"]
    return result


class Requester:
    """A raw MQTT 5 client that sends command requests as any caller may, and keeps every
    answer on its response topic with the correlation data it quoted."""

    def __init__(self, broker: Broker, device: str = DEVICE, name: str = "tester") -> None:
        self.device = device
        self.response_topic = TOPICS.response(device, name)
        self._cond = threading.Condition()
        self.answers: list[tuple[bytes, bytes | None]] = []
        self.client = connect_client(broker)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.subscribe(self.response_topic, qos=1)
        assert subscribed.wait(5), "no SUBACK"

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        correlation = getattr(message.properties, "CorrelationData", None)
        with self._cond:
            self.answers.append((bytes(message.payload), correlation))
            self._cond.notify_all()

    def send(self, name: str, request: CommandRequest, correlation: bytes) -> None:
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.ResponseTopic = self.response_topic
        properties.CorrelationData = correlation
        info = self.client.publish(
            TOPICS.command(self.device, name), request.encode(), qos=1, properties=properties
        )
        info.wait_for_publish(5)

    def wait_answers(self, count: int, timeout: float = 10) -> list[tuple[bytes, bytes | None]]:
        with self._cond:
            arrived = self._cond.wait_for(lambda: len(self.answers) >= count, timeout)
            assert arrived, f"{len(self.answers)} of {count} answers: {self.answers}"
            return list(self.answers)

    def close(self) -> None:
        disconnect_client(self.client)


@contextmanager
def requester(broker: Broker, device: str = DEVICE) -> Iterator[Requester]:
    raw = Requester(broker, device)
    try:
        yield raw
    finally:
        raw.close()


def status_of(device: str, state: Presence, reason: Literal["birth", "connection_lost"]) -> Status:
    """A status as a raw client that stands for an agent publishes it (boot 1)."""
    return Status(
        device=device,
        state=state,
        ts=time.time(),
        boot=1,
        agent_version=device,
        reason=reason,
        session="0123456789abcdef",
    )


def request(command_id: str, deadline_in: float = 10, **args: Any) -> CommandRequest:
    return CommandRequest(
        device=DEVICE, id=command_id, deadline=time.time() + deadline_in, args=args
    )


# -- answers through the API ----------------------------------------------------------------------


def test_read_sensor_and_diagnostics_answer_through_the_api(broker: Broker, tmp_path: Path) -> None:
    with fleet(broker, tmp_path) as (api, agent):
        status, answer = command(api, "read_sensor", args={"sensor": "env"}, timeout=5)
        assert status == 200, answer
        assert (answer["device"], answer["name"], answer["status"]) == (DEVICE, "read_sensor", "ok")
        result = answer["result"]
        assert result["sensor"] == "env"
        assert result["backend"] == "emulated"
        assert result["values"]["temperature"]["unit"] == "°C"
        assert set(result["values"]) == {"temperature", "humidity", "pressure"}

        figures = diagnostics(api)
        assert figures["boot"] == agent.boot
        assert figures["session"] == agent.session
        assert figures["agent_version"] == agent.version
        assert figures["sensors"] == {"env": {"health": "ok", "backend": "emulated"}}
        assert figures["broker"]["connected"] is True
        assert figures["broker"]["connects"] >= 1
        assert figures["outbox"]["dropped"] == 0
        # Counted when done: a diagnostics answer counts the commands that ran before it.
        assert figures["commands"]["run"] == {"read_sensor": 1}
        assert diagnostics(api)["commands"]["run"] == {"diagnostics": 1, "read_sensor": 1}


def test_one_id_sent_twice_runs_once_and_gets_one_answer_twice(
    broker: Broker, tmp_path: Path
) -> None:
    """restart_sensors counts its runs in diagnostics: the side effect that shows run-once."""
    with fleet(broker, tmp_path) as (api, _agent), requester(broker) as raw:
        once = request("restart-1")
        raw.send("restart_sensors", once, b"first")
        raw.send("restart_sensors", once, b"second")  # a redelivery, or a caller's retry
        (first, cd1), (second, cd2) = raw.wait_answers(2)
        assert (cd1, cd2) == (b"first", b"second")
        assert first == second
        answer = CommandResponse.decode(first)
        assert (answer.status, answer.id) == ("ok", "restart-1")
        assert answer.result == {"restarted": {"env": {"health": "ok", "backend": "emulated"}}}

        # The same through the API: a caller's retry with its id gets the stored answer.
        twice = [command(api, "restart_sensors", id="restart-2") for _ in range(2)]
        assert twice[0] == twice[1]
        assert twice[0][0] == 200

        figures = diagnostics(api)["commands"]
        assert figures["run"]["restart_sensors"] == 2  # restart-1 and restart-2, once each
        assert figures["answered_again"] == 2

        # An id belongs to one command: reused for another, it is refused, nothing runs.
        status, refusal = command(api, "read_sensor", id="restart-2", args={"sensor": "env"})
        assert status == 422
        assert "already used for 'restart_sensors'" in refusal["detail"]
        assert "read_sensor" not in diagnostics(api)["commands"]["run"]


def test_a_pulse_drives_the_agents_output_then_returns_it(broker: Broker, tmp_path: Path) -> None:
    """The relay of the desired document, on an emulated GPIO pin whose level the test reads:
    on for the pulse, then back at its desired value (off); a value outside its range is
    refused, never clamped."""
    relay = {"driver": "digital_output", "pin": 17, "value": 0, "backend": "emulated"}
    with EmulatedBackend() as backend, fleet(broker, tmp_path, backend) as (api, agent):
        put = api.put(
            f"/devices/{DEVICE}/desired",
            json={"sensors": {"env": bme280(0.5).to_builtins()}, "outputs": {"relay": relay}},
            headers=AUTH,
        )
        assert put.status_code == 200, put.text
        # The slot is made before its output opens, on the agent's thread: wait for the open.
        poll(
            lambda: (
                (slot := agent.outputs.slots.get("relay")) is not None and slot.output is not None
            ),
            10,
            what="relay open",
        )
        driven = agent.outputs.slots["relay"].output
        assert driven is not None
        pin = emulator_for(backend, driven)
        assert pin.level == 0.0

        status, refusal = command(
            api, "pulse_output", args={"output": "relay", "value": 0.5, "seconds": 1}
        )
        assert (status, refusal["reason"]) == (422, "rejected")
        assert "takes 0 or 1, got 0.5" in refusal["detail"]
        assert pin.level == 0.0

        started = time.monotonic()
        status, answer = command(
            api, "pulse_output", args={"output": "relay", "value": 1, "seconds": 0.5}
        )
        assert status == 200, answer
        assert answer["result"] == {"output": "relay", "applied": 1.0, "seconds": 0.5}
        assert pin.level == 1.0  # answered once driven
        poll(lambda: pin.level == 0.0, 10, interval=0.02, what="relay back off")
        assert time.monotonic() - started >= 0.5
        assert pin.levels()[-3:] == [0.0, 1.0, 0.0]


def test_many_commands_wait_at_once(broker: Broker, tmp_path: Path) -> None:
    with fleet(broker, tmp_path) as (api, _agent), ThreadPoolExecutor(16) as pool:
        ids = [f"many-{i}" for i in range(32)]
        calls = [
            pool.submit(command, api, "read_sensor", id=i, args={"sensor": "env"}) for i in ids
        ]
        answers = [call.result(timeout=30) for call in calls]
        assert [status for status, _ in answers] == [200] * len(ids)
        assert [answer["id"] for _, answer in answers] == ids
        assert diagnostics(api)["commands"]["run"]["read_sensor"] == len(ids)


# -- no answer, or a refusal ----------------------------------------------------------------------


def test_a_device_nobody_plays_is_offline_at_once(broker: Broker, tmp_path: Path) -> None:
    """An agent outside the manifest that went offline: no agent to answer, and no gateway
    simulates it (a manifest device without its agent is answered by the simulation:
    tests/test_closed_loop.py)."""
    gone = "pi-gone"
    with fleet(broker, tmp_path) as (api, _agent):
        client = connect_client(broker)
        try:
            offline = status_of(gone, Presence.OFFLINE, "connection_lost")
            client.publish(TOPICS.status(gone), offline.encode(), qos=1, retain=True)
            poll(lambda: api.get(f"/devices/{gone}").status_code == 200, 10, what="device known")
        finally:
            disconnect_client(client)
        started = time.monotonic()
        status, refusal = command(api, "diagnostics", device=gone, timeout=30)
        assert time.monotonic() - started < 5, "an offline device must not be waited for"
        assert status == 504
        assert refusal["reason"] == "offline"
        assert "no gateway simulates it" in refusal["detail"]
        assert presence(api, gone) == "offline"
        # The manifest's device without an agent is played by the gateway, and answers.
        service = api.app.state.service  # type: ignore[attr-defined]
        poll(lambda: service.simulates(ABSENT), 10, what="the absent device simulated")
        status, answer = command(api, "diagnostics", device=ABSENT, timeout=5)
        assert status == 200, answer
        assert answer["result"]["simulated_by"] == service.gateway_id


def test_a_device_that_never_answers_times_out(broker: Broker) -> None:
    """MUTE's "agent" is a raw client: online by its status, it takes commands and says
    nothing. The request reaches it with what it needs to answer."""
    received: list[mqtt.MQTTMessage] = []
    arrived = threading.Event()
    with TestClient(create_app(gateway_config(broker))) as api:
        poll(lambda: api.get("/health").json()["mqtt_connected"], 10, what="gateway connected")
        mute = connect_client(broker)
        try:

            def swallow(_c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
                received.append(message)
                arrived.set()

            mute.on_message = swallow
            mute.subscribe(TOPICS.commands(MUTE), qos=1)
            online = status_of(MUTE, Presence.ONLINE, "birth")
            mute.publish(TOPICS.status(MUTE), online.encode(), qos=1, retain=True)
            poll(lambda: presence(api, MUTE) == "online", 10, what="mute device online")
            started = time.monotonic()
            status, refusal = command(api, "diagnostics", device=MUTE, timeout=0.5)
            waited = time.monotonic() - started
        finally:
            disconnect_client(mute)
    assert status == 504
    assert refusal["reason"] == "timed out"
    assert "within 0.5 s" in refusal["detail"]
    assert waited >= 0.5
    assert arrived.is_set()
    properties: Any = received[0].properties
    assert properties.ResponseTopic.startswith(f"edgetwin/{MUTE}/responses/")
    assert len(properties.CorrelationData) == 16
    assert 0 < properties.MessageExpiryInterval <= 1
    body = CommandRequest.decode(bytes(received[0].payload))
    assert body.device == MUTE
    assert body.deadline == pytest.approx(time.time(), abs=5)


def test_rejections_are_422_with_the_devices_reason(broker: Broker, tmp_path: Path) -> None:
    with fleet(broker, tmp_path) as (api, _agent):
        cases = {
            "launch": ({}, "unknown command 'launch'"),
            "read_sensor": ({"sensor": "nope"}, "no sensor 'nope' runs here"),
            "restart_sensors": ({"sensors": "env"}, "bad arguments for 'restart_sensors'"),
            "pulse_output": (
                {"output": "fan", "value": 1, "seconds": 1},
                "no output 'fan' here; outputs: none",
            ),
        }
        for name, (args, reason) in cases.items():
            status, refusal = command(api, name, args=args)
            assert status == 422, (name, refusal)
            assert refusal["reason"] == "rejected"
            assert reason in refusal["detail"], (name, refusal)
            assert refusal["answer"]["status"] == "rejected"
            assert refusal["answer"]["reason"] == refusal["detail"]
        status, refusal = command(api, "read_sensor", args={"sensor": 5})
        assert (status, refusal["reason"]) == (422, "rejected")
        assert "Expected `str`, got `int`" in refusal["detail"]
        # Nothing that was rejected ran.
        assert diagnostics(api)["commands"]["run"] == {}


def test_an_expired_command_is_not_run(broker: Broker, tmp_path: Path) -> None:
    with fleet(broker, tmp_path) as (api, _agent), requester(broker) as raw:
        raw.send("restart_sensors", request("late-1", deadline_in=-1), b"late")
        raw.send("restart_sensors", request("far-1", deadline_in=3600), b"far")
        answers = [CommandResponse.decode(payload) for payload, _ in raw.wait_answers(2)]
        assert [(a.id, a.status) for a in answers] == [
            ("late-1", "rejected"),
            ("far-1", "rejected"),
        ]
        assert answers[0].reason == "expired"
        assert "more than 600 s" in str(answers[1].reason)
        assert "restart_sensors" not in diagnostics(api)["commands"]["run"]


def test_a_request_answers_only_on_the_devices_own_response_topics(
    broker: Broker, tmp_path: Path
) -> None:
    """A request naming another device's (or no contract) response topic is dropped unread:
    without an ACL, a forged request must not make an agent write elsewhere."""
    with fleet(broker, tmp_path) as (_api, agent), requester(broker) as raw:
        client = raw.client
        for elsewhere in (TOPICS.response(ABSENT, "tester"), TOPICS.status(DEVICE), None):
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if elsewhere is not None:
                properties.ResponseTopic = elsewhere
            properties.CorrelationData = b"x"
            client.publish(
                TOPICS.command(DEVICE, "restart_sensors"),
                request(f"elsewhere-{uuid.uuid4().hex[:6]}").encode(),
                qos=1,
                properties=properties,
            ).wait_for_publish(5)
        raw.send("diagnostics", request("after"), b"after")
        # One connection's messages are handled in order: when "after" is answered, the three
        # before it were seen.
        ((payload, _),) = raw.wait_answers(1)
        result = CommandResponse.decode(payload).result
        assert result is not None
        assert result["commands"]["unanswerable"] == 3
        assert "restart_sensors" not in result["commands"]["run"]
        assert agent.commands.unanswerable == 3


# -- the API's own refusals -----------------------------------------------------------------------


def test_the_api_refuses_bad_calls_with_reasons(broker: Broker) -> None:
    with TestClient(create_app(gateway_config(broker))) as api:
        url = f"/devices/{DEVICE}/commands/diagnostics"
        assert api.post(url, json={}).status_code == 401
        assert api.post(url, json={}, headers={"Authorization": "Bearer wrong"}).status_code == 403
        missing = api.post("/devices/nobody/commands/diagnostics", json={}, headers=AUTH)
        assert missing.status_code == 404
        assert "not in the fleet" in missing.json()["detail"]
        for body, where in [
            ({"timeout": 61}, "timeout"),
            ({"timeout": 0}, "timeout"),
            ({"args": {"x": {"nested": 1}}}, "args"),
            ({"id": "no spaces"}, "id"),
            ({"other": 1}, "other"),
        ]:
            refused = api.post(url, json=body, headers=AUTH)
            assert refused.status_code == 422, (body, refused.text)
            error = refused.json()["detail"][0]
            assert where in f"{error['loc']} {error['msg']}", error
        bad_name = api.post(f"/devices/{DEVICE}/commands/Not-A-Name", json={}, headers=AUTH)
        assert bad_name.status_code == 422
        not_json = api.post(url, content=b"{", headers={**AUTH, "content-type": "application/json"})
        assert not_json.status_code == 422


def test_commands_need_mqtt_5(broker: Broker) -> None:
    config = gateway_config(broker)
    config = GatewayConfig.from_builtins(
        {**config.to_builtins(), "mqtt": {**config.mqtt.to_builtins(), "protocol": "3.1.1"}}
    )
    with TestClient(create_app(config)) as api:
        refused = api.post(f"/devices/{DEVICE}/commands/diagnostics", json={}, headers=AUTH)
        assert refused.status_code == 501
        assert "MQTT 5" in refused.json()["detail"]
