"""Simulated devices answer like real ones and close the loop (issue 17, item 5): a device the
gateway plays while its agent is away applies its desired outputs, reports them, answers
commands, and its signals answer its outputs through the first-order model its manifest entry
declares, so a thermostat rule (here, in the test) can be run against a fleet that reacts, with
real agents in it too. Against a real broker."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient

from edgetwin.agent.config import AgentConfig, AgentSection
from edgetwin.agent.contract import AppliedOutput, ReportedConfig, Telemetry, Topics
from edgetwin.gateway.app import create_app
from edgetwin.gateway.config import GatewayConfig, ManifestDevice
from edgetwin.gateway.scenario.model import ResponseSpec
from edgetwin.gateway.standins import standin_stream
from edgetwin.hardware import EmulatedBackend
from edgetwin.hardware.drivers.gpio_output import emulator_for
from edgetwin.hardware.signals import FirstOrderResponse, response_parts
from edgetwin.testing import agent as testing_agent
from edgetwin.testing.broker import Broker
from edgetwin.testing.capture import connect_client, disconnect_client
from edgetwin.testing.waiting import poll
from tests.fleet_helpers import agent_mqtt_settings, bme280, mqtt_settings

TOKEN = "loop-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TOPICS = Topics()
ROOM = "room-sim"  # never has an agent: the gateway plays it
REAL = "room-real"  # a live agent on emulated pins
TAU = 1.5  # seconds: the simulated room's time constant
HEATER_GAIN = 8.0  # °C the heater adds at steady state
FAN_GAIN = -6.0
INTERVAL = 0.1
RESPONSE = ResponseSpec(
    sensor="env",
    quantity="temperature",
    time_constant=TAU,
    gains={"heater": HEATER_GAIN, "fan": FAN_GAIN},
)
ENV = {"driver": "bme280", "address": 0x76, "interval": INTERVAL, "backend": "emulated"}
HEATER = {"driver": "digital_output", "pin": 17, "value": 0, "backend": "emulated"}
FAN = {"driver": "pca9685", "channel": 2, "value": 0, "backend": "emulated"}


# -- the model --------------------------------------------------------------------------------


def test_the_response_is_exact_for_held_inputs_whatever_the_sampling() -> None:
    """Sampled every 0.1 s or once: the same offset, the textbook step response."""
    t0 = 1_000_000.0
    fine, coarse = (
        FirstOrderResponse({"heater": 8.0}, 10.0),
        FirstOrderResponse({"heater": 8.0}, 10.0),
    )
    for model in (fine, coarse):
        model.sample(t0)
        model.drive({"heater": 1.0, "unrelated": 5.0}, t0)
    for k in range(1, 301):
        fine.sample(t0 + k * 0.1)
    assert coarse.sample(t0 + 30.0) == pytest.approx(fine.offset, abs=1e-9)
    assert fine.offset == pytest.approx(8.0 * (1 - math.exp(-3.0)), abs=1e-9)
    # Off at t0 + 30: it decays from where it stood, one time constant to 1/e of it.
    for model in (fine, coarse):
        model.drive({"heater": 0.0}, t0 + 30.0)
    assert coarse.sample(t0 + 40.0) == pytest.approx(fine.offset * math.exp(-1.0), abs=1e-9)
    assert fine.inputs == {"heater": 0.0}, "an output without a gain is not its business"
    # Time never goes back: a change for an instant already sampled acts from the last sample.
    late = coarse.offset
    coarse.drive({"heater": 1.0}, t0 + 35.0)
    assert coarse.sample(t0 + 40.0) == pytest.approx(late)


def test_a_standin_stream_carries_the_declared_response_with_the_outputs_as_they_are() -> None:
    stream = standin_stream(
        ROOM, "env", bme280(1.0), seed=3, responses=(RESPONSE,), inputs={"heater": 1.0}
    )
    names = [q.name for q in stream.quantities]
    by_quantity = dict(zip(names, stream.signals, strict=True))
    (response,) = response_parts(by_quantity["temperature"])
    assert response.inputs == {"heater": 1.0}
    assert response.time_constant == TAU
    assert not response_parts(by_quantity["humidity"]), "only the declared quantity answers"


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        ({"sensor": "env", "quantity": "illuminance"}, "sensor 'env' reads"),
        ({"sensor": "door", "quantity": "temperature"}, "no sensor 'door'"),
        ({"time_constant": 0}, "time_constant must be above 0"),
        ({"time_constant": "soon"}, "not a duration"),
        ({"gains": {}}, "gains"),
        ({"gains": {"heater": math.inf}}, "must be finite"),
    ],
)
def test_a_response_that_cannot_be_played_is_refused_with_the_reason(
    response: dict[str, Any], reason: str
) -> None:
    spec = {**msgspec.to_builtins(RESPONSE), **response}
    with pytest.raises((msgspec.ValidationError, ValueError), match=reason):
        msgspec.convert({"id": ROOM, "responses": [spec]}, ManifestDevice)


def test_one_quantity_has_one_response() -> None:
    spec = msgspec.to_builtins(RESPONSE)
    with pytest.raises(msgspec.ValidationError, match="declared twice"):
        msgspec.convert({"id": ROOM, "responses": [spec, spec]}, ManifestDevice)


# -- against a broker -------------------------------------------------------------------------


def gateway_config(broker: Broker, devices: list[ManifestDevice]) -> GatewayConfig:
    return GatewayConfig.from_builtins(
        {
            "mqtt": mqtt_settings(
                broker, keepalive=2, reconnect_min_delay=0.1, reconnect_max_delay=0.5
            ),
            "presence": {"startup_grace": 0.3},
            "api": {"token": TOKEN},
            "devices": devices,
        }
    )


T = TypeVar("T")


def until(condition: Callable[[], T | None], timeout: float, what: str) -> T:
    """`condition`'s first truthy value, polled for up to `timeout` seconds."""
    found: list[T] = []

    def check() -> bool:
        value = condition()
        if value:
            found.append(value)
        return bool(value)

    poll(check, timeout, what=what)
    return found[-1]


def real_agent(broker: Broker, tmp_path: Path) -> AgentConfig:
    """The config of REAL's agent: one emulated BME280 read as often as the simulated room."""
    return AgentConfig(
        agent=AgentSection(device_id=REAL, state_dir=tmp_path, state_interval=0.5),
        mqtt=agent_mqtt_settings(
            broker, keepalive=2, reconnect_min_delay=0.1, reconnect_max_delay=0.5
        ),
        sensors={"env": bme280(INTERVAL)},
    )


def room(device: str = ROOM) -> ManifestDevice:
    return ManifestDevice(id=device, sensors={"env": bme280(INTERVAL)}, responses=[RESPONSE])


@dataclass
class Watcher:
    """A subscriber of its own, as a thermostat service would be: every temperature reading of
    the fleet, and the last reported document of each device."""

    readings: dict[str, list[tuple[float, float, str]]] = field(default_factory=dict)
    reported: dict[str, ReportedConfig] = field(default_factory=dict)
    cond: threading.Condition = field(default_factory=threading.Condition)
    listeners: list[Callable[[str, float, float], None]] = field(default_factory=list)

    def on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        parsed = TOPICS.parse(message.topic)
        if parsed.kind == "telemetry":
            reading = Telemetry.decode(bytes(message.payload))
            value = reading.values["temperature"].value
            with self.cond:
                self.readings.setdefault(reading.device, []).append(
                    (time.monotonic(), value, reading.source.value)
                )
                self.cond.notify_all()
            for listener in self.listeners:
                listener(reading.device, time.monotonic(), value)
        elif parsed.kind == "reported" and message.payload:
            with self.cond:
                self.reported[str(parsed.device)] = ReportedConfig.decode(bytes(message.payload))
                self.cond.notify_all()

    def latest(self, device: str) -> float:
        with self.cond:
            return self.readings[device][-1][1]

    def since(self, device: str, moment: float) -> list[float]:
        with self.cond:
            return [v for t, v, _ in self.readings.get(device, []) if t >= moment]

    def wait_warming(self, device: str, moment: float, what: str) -> None:
        """Until `device` reads half the heater's gain above its first reading after
        `moment`: within three time constants of a heater switched on then."""
        poll(lambda: len(self.since(device, moment)) >= 1, 5, what=f"{device} read after it")
        start = self.since(device, moment)[0]
        poll(lambda: self.latest(device) > start + 0.5 * HEATER_GAIN, 3 * TAU + 2, what=what)


@contextmanager
def watcher(broker: Broker) -> Iterator[Watcher]:
    seen = Watcher()
    client = connect_client(broker)
    client.on_message = seen.on_message
    subscribed = threading.Event()
    client.on_subscribe = lambda *_: subscribed.set()
    client.subscribe([(TOPICS.all_telemetry(), 0), (TOPICS.all_reported(), 1)])
    assert subscribed.wait(5), "no SUBACK"
    try:
        yield seen
    finally:
        disconnect_client(client)


def desire(api: TestClient, device: str, outputs: dict[str, Any]) -> None:
    response = api.put(
        f"/devices/{device}/desired",
        json={"sensors": {"env": ENV}, "outputs": outputs},
        headers=AUTH,
    )
    assert response.status_code == 200, response.text


def switch(api: TestClient, device: str, output: str, value: float) -> None:
    response = api.patch(
        f"/devices/{device}/desired", json={"outputs": {output: {"value": value}}}, headers=AUTH
    )
    assert response.status_code == 200, response.text


def command(api: TestClient, device: str, name: str, **body: Any) -> tuple[int, dict[str, Any]]:
    response = api.post(f"/devices/{device}/commands/{name}", json=body, headers=AUTH)
    return response.status_code, response.json()


def test_a_simulated_device_applies_reports_and_answers_like_its_agent(broker: Broker) -> None:
    with (
        watcher(broker) as seen,
        TestClient(create_app(gateway_config(broker, [room()]))) as api,
    ):
        poll(lambda: len(seen.readings.get(ROOM, [])) >= 3, 10, what="the room simulated")
        desire(api, ROOM, {"heater": {**HEATER, "value": 1}, "fan": {**FAN, "value": 0.3}})

        def applied() -> ReportedConfig | None:
            report = seen.reported.get(ROOM)
            return report if report is not None and report.outputs else None

        report = until(applied, 10, what="the simulated device's report")
        assert report.status == "applied"
        assert report.applied_version == 1
        assert report.outputs["heater"].value == 1.0
        assert report.outputs["heater"].backend == "simulated"
        # Quantised as the PCA9685 would: 4096 steps.
        assert report.outputs["fan"].value == pytest.approx(round(0.3 * 4096) / 4096)
        view = api.get(f"/devices/{ROOM}").json()
        assert view["config"] == "in_sync"

        status, answer = command(api, ROOM, "diagnostics", id="diag-1")
        assert status == 200, answer
        result = answer["result"]
        assert result["simulated_by"] == api.app.state.service.gateway_id  # type: ignore[attr-defined]
        assert result["outputs"]["heater"] == {"value": 1.0, "backend": "simulated"}
        assert result["sensors"] == {"env": {"health": "ok", "backend": "simulated"}}
        # The same id again: the stored answer, not a second run.
        again_status, again = command(api, ROOM, "diagnostics", id="diag-1")
        assert (again_status, again) == (status, answer)
        status, answer = command(api, ROOM, "diagnostics")
        # Counted when done: this answer counts the first run, not itself nor the repeat.
        assert answer["result"]["commands"]["run"] == {"diagnostics": 1}
        assert answer["result"]["commands"]["answered_again"] == 1

        status, answer = command(api, ROOM, "read_sensor", args={"sensor": "env"})
        assert status == 200, answer
        assert answer["result"]["backend"] == "simulated"
        assert answer["result"]["values"]["temperature"]["unit"] == "°C"

        # Refused as an agent refuses: outside the range, an output it does not have.
        status, answer = command(
            api, ROOM, "pulse_output", args={"output": "heater", "value": 0.5, "seconds": 1}
        )
        assert status == 422, answer
        assert "takes 0 or 1, got 0.5" in answer["detail"]
        status, answer = command(
            api, ROOM, "pulse_output", args={"output": "valve", "value": 1, "seconds": 1}
        )
        assert status == 422, answer
        assert "no output 'valve'" in answer["detail"]

        # A document the agent would refuse, were it published anyway: reported rejected,
        # the last good outputs stay.
        bad = msgspec.json.encode(
            {
                "v": 1,
                "device": ROOM,
                "version": 7,
                "sensors": {"env": ENV},
                "outputs": {"heater": {**HEATER, "value": 3}},
            }
        )
        client = connect_client(broker)
        try:
            client.publish(TOPICS.desired(ROOM), bad, qos=1, retain=True).wait_for_publish(5)
        finally:
            disconnect_client(client)

        def refused() -> ReportedConfig | None:
            report = seen.reported.get(ROOM)
            return report if report is not None and report.status == "rejected" else None

        rejected = until(refused, 10, what="the rejection")
        assert rejected.rejected_version == 7
        assert rejected.applied_version == 1
        assert "takes 0 or 1, got 3" in (rejected.reason or "")
        assert rejected.outputs["heater"].value == 1.0

        status, answer = command(api, "nobody", "diagnostics")
        assert status == 404, answer


def test_a_thermostat_rule_closes_the_loop_over_simulated_and_real_devices(
    broker: Broker, tmp_path: Path
) -> None:
    """The rule (what a user's thermostat service does): heater on below the set point, off
    above it, for a zone of two rooms: one simulated by the gateway, one with a live agent
    whose relay is an emulated GPIO pin. The simulated room warms and cools as its model says,
    within its time constant; the real room's pin follows the same rule."""
    agent_config = real_agent(broker, tmp_path)
    real = ManifestDevice(id=REAL, sensors={"env": bme280(INTERVAL)})
    with (
        EmulatedBackend() as backend,
        watcher(broker) as seen,
        TestClient(create_app(gateway_config(broker, [room(), real]))) as api,
        testing_agent.agent_thread(agent_config, emulated_backend=backend) as agent,
    ):
        poll(lambda: api.get(f"/devices/{REAL}").json()["presence"] == "online", 10, what="agent")
        poll(lambda: len(seen.readings.get(ROOM, [])) >= 5, 10, what="the room simulated")
        for device in (ROOM, REAL):
            desire(api, device, {"heater": HEATER})
        # The slot is made before its output opens, on the agent's thread: wait for the open.
        poll(
            lambda: (
                (slot := agent.outputs.slots.get("heater")) is not None and slot.output is not None
            ),
            10,
            what="the agent's relay open",
        )
        relay = emulator_for(backend, agent.outputs.slots["heater"].output)  # type: ignore[arg-type]
        ambient = seen.latest(ROOM)
        set_point = ambient + HEATER_GAIN / 2
        band = 0.5

        # The rule, on the watcher's thread: one switch per crossing, as a thermostat does.
        heating = {"on": False}
        switches: list[tuple[float, bool]] = []
        lock = threading.Lock()

        def thermostat(device: str, at: float, temperature: float) -> None:
            if device != ROOM:
                return
            with lock:
                want = (
                    True
                    if temperature < set_point - band
                    else False
                    if temperature > set_point + band
                    else heating["on"]
                )
                if want == heating["on"]:
                    return
                heating["on"] = want
                switches.append((at, want))
            threading.Thread(target=zone, args=(1.0 if want else 0.0,), daemon=True).start()

        def zone(value: float) -> None:
            for device in (ROOM, REAL):
                switch(api, device, "heater", value)

        seen.listeners.append(thermostat)
        # Two heating cycles: on, past the band, off, below it, on again.
        poll(lambda: len(switches) >= 3, 12 * TAU + 10, what="two switches of the heater")
        with lock:
            (on_at, on), (off_at, off), (again_at, again) = switches[:3]
        assert (on, off, again) == (True, False, True)
        # From ambient to set point + band is 4.5 of the heater's 8 °C: 0.83 time constants.
        # With the readings' interval and the round trips of the rule, within two.
        warm_up = off_at - on_at
        assert warm_up < 2 * TAU + 1.0, f"{warm_up:.2f} s to warm up; the model says {0.83 * TAU}"
        assert warm_up > 0.4 * TAU, f"{warm_up:.2f} s: warmer than the model allows"
        # Off from ~set point + band to set point - band: ~1 °C down of an offset of ~4.5.
        assert again_at - off_at < 2 * TAU + 1.0
        peak = max(seen.since(ROOM, on_at))
        assert peak < ambient + HEATER_GAIN, "never above the heater's steady state"
        # The real room's relay followed the same rule.
        poll(lambda: relay.level == 1, 10, what="the real relay on")
        report = until(lambda: seen.reported.get(REAL), 5, what="the agent's report")
        assert report.outputs["heater"].backend == "emulated"
        assert seen.reported[ROOM].outputs["heater"].backend == "simulated"
        seen.listeners.clear()


def test_a_pulse_on_a_simulated_heater_warms_the_room_and_ends_by_itself(broker: Broker) -> None:
    with (
        watcher(broker) as seen,
        TestClient(create_app(gateway_config(broker, [room()]))) as api,
    ):
        poll(lambda: len(seen.readings.get(ROOM, [])) >= 5, 10, what="the room simulated")
        desire(api, ROOM, {"heater": HEATER})
        poll(lambda: ROOM in seen.reported, 10, what="the simulated device's report")
        before = seen.latest(ROOM)
        status, answer = command(
            api, ROOM, "pulse_output", args={"output": "heater", "value": 1, "seconds": TAU}
        )
        assert status == 200, answer
        assert answer["result"] == {"output": "heater", "applied": 1.0, "seconds": TAU}
        started = time.monotonic()
        # One time constant on: 63 % of 8 °C, less what the readings' spacing hides.
        poll(lambda: seen.latest(ROOM) > before + 0.5 * HEATER_GAIN, 3 * TAU, what="the room warms")
        # The pulse ended by itself: the room cools back towards where it was.
        poll(
            lambda: (
                time.monotonic() - started > 2 * TAU
                and seen.latest(ROOM) < before + 0.25 * HEATER_GAIN
            ),
            6 * TAU,
            what="the room cools once the pulse is over",
        )


def test_a_device_whose_agent_leaves_is_played_with_its_outputs_and_handed_back(
    broker: Broker, tmp_path: Path
) -> None:
    """The agent drives its heater, then stops: the gateway plays the device from then on
    (the heater as desired, reported `simulated`, commands answered by the simulation, the
    room warmed by it), and the agent that comes back answers for itself again."""
    agent_config = real_agent(broker, tmp_path)
    real = ManifestDevice(id=REAL, sensors={"env": bme280(INTERVAL)}, responses=[RESPONSE])

    def presence() -> str:
        return str(api.get(f"/devices/{REAL}").json()["presence"])

    def last_report() -> ReportedConfig | None:
        with seen.cond:
            return seen.reported.get(REAL)

    with (
        EmulatedBackend() as backend,
        watcher(broker) as seen,
        TestClient(create_app(gateway_config(broker, [real]))) as api,
    ):
        with testing_agent.agent_thread(agent_config, emulated_backend=backend):
            poll(lambda: presence() == "online", 10, what="agent online")
            desire(api, REAL, {"heater": {**HEATER, "value": 1}})
            poll(
                lambda: (
                    (r := last_report()) is not None
                    and "heater" in r.outputs
                    and r.outputs["heater"].backend == "emulated"
                ),
                10,
                what="the agent's report",
            )
            status, answer = command(api, REAL, "diagnostics")
            assert status == 200, answer
            assert "boot" in answer["result"], "the agent's own answer"
        poll(lambda: presence() == "offline", 10, what="agent gone")

        def simulated_report() -> ReportedConfig | None:
            report = last_report()
            heater = None if report is None else report.outputs.get("heater")
            return report if heater is not None and heater.backend == "simulated" else None

        played = until(simulated_report, 10, what="the simulated device's report")
        assert played.outputs["heater"].value == 1.0
        assert played.applied_version == 1
        status, answer = command(api, REAL, "diagnostics")
        assert status == 200, answer
        assert "simulated_by" in answer["result"]
        # The heater the agent left on warms the simulated room.
        seen.wait_warming(REAL, time.monotonic(), "the heater warms the simulated room")

        with testing_agent.agent_thread(agent_config, emulated_backend=backend):
            poll(lambda: presence() == "online", 10, what="agent back")
            poll(
                lambda: (
                    (r := last_report()) is not None
                    and r.outputs.get("heater", AppliedOutput(None)).backend == "emulated"
                ),
                10,
                what="the agent's own report again",
            )
            status, answer = command(api, REAL, "diagnostics")
            assert status == 200, answer
            assert "boot" in answer["result"], "answered by the agent, not the simulation"


def test_a_device_added_through_the_api_carries_its_responses(broker: Broker) -> None:
    """`POST /devices` takes `responses` like the TOML manifest: refused with the reason when
    they cannot be played (422, never a 500), played when they can."""
    added = "room-added"
    spec = msgspec.to_builtins(RESPONSE)
    with watcher(broker) as seen, TestClient(create_app(gateway_config(broker, []))) as api:
        bad = api.post(
            "/devices",
            json={"id": added, "responses": [{**spec, "quantity": "illuminance"}]},
            headers=AUTH,
        )
        assert bad.status_code == 422, bad.text
        assert "sensor 'env' reads" in bad.text
        assert api.get(f"/devices/{added}").status_code == 404, "nothing was added"
        good = api.post(
            "/devices",
            json={"id": added, "sensors": {"env": ENV}, "responses": [spec]},
            headers=AUTH,
        )
        assert good.status_code == 201, good.text
        poll(lambda: len(seen.readings.get(added, [])) >= 3, 10, what="the device simulated")
        desire(api, added, {"heater": {**HEATER, "value": 1}})
        seen.wait_warming(added, time.monotonic(), "the heater warms the room added by the API")
