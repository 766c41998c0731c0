"""Outputs driven by the desired document, against a real broker and emulated pins and chips.

The agent opens each output of its applied document, drives it to its desired value and
reports what it applied; a bad document is refused whole and the last good one keeps driving.
Safety: a clean stop, a crash (found at the next start by the crash marker) and a broker away
longer than `safe_after_broker_away` hold every output at its safe value, and the reported
document says why. Each assertion on what a load sees reads the emulated hardware itself: the
gpiozero mock pin's level, the PCA9685 emulator's registers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from edgetwin.agent.config import AgentConfig, AgentSection, OutboxSettings
from edgetwin.agent.contract import (
    AppliedOutput,
    ContractError,
    DesiredConfig,
    OutputSettings,
    ReportedConfig,
    SensorBackend,
    SensorSettings,
)
from edgetwin.agent.desired import Rejection, check_outputs, validate_desired
from edgetwin.agent.outputs import MARKER_NAME, Hold, OutputBank
from edgetwin.agent.runtime import Agent
from edgetwin.hardware import EmulatedBackend
from edgetwin.hardware.drivers.gpio_output import OutputPinEmulator, emulator_for
from edgetwin.hardware.drivers.pca9685 import PCA9685Emulator, prescale_for, quantised
from edgetwin.testing import agent as testing_agent
from edgetwin.testing.agent import EmulatedAgent
from edgetwin.testing.broker import Broker
from edgetwin.testing.capture import Capture, Message, publish
from edgetwin.testing.waiting import poll
from tests.conftest import BrokerFactory
from tests.fleet_helpers import agent_mqtt_settings, bme280
from tests.session_subscriber import SessionSubscriber

DEVICE = "pi-outputs"
DESIRED = f"edgetwin/{DEVICE}/config/desired"
REPORTED = f"edgetwin/{DEVICE}/config/reported"
SENSORS = {"env": bme280(0.2)}


def output(driver: str, value: float, **where: Any) -> OutputSettings:
    return OutputSettings.from_builtins(
        {"driver": driver, "value": value, "backend": "emulated", **where}
    )


RELAY = output("digital_output", 1, pin=17)
HEATER = output("pwm_output", 0.25, pin=18)
FAN = output("pca9685", 0.3, channel=3, options={"frequency": 50})
# Safe at a quarter, so that a fresh emulated chip (full off at power-up) cannot pass for safe.
VENT = output("pca9685", 0.75, channel=4, options={"frequency": 50, "safe_value": 0.25})


def desired(version: int, outputs: dict[str, OutputSettings], device: str = DEVICE) -> bytes:
    return DesiredConfig(device=device, version=version, sensors=SENSORS, outputs=outputs).encode()


def config(broker: Broker, state_dir: Path, **agent: Any) -> AgentConfig:
    return AgentConfig(
        agent=AgentSection(
            device_id=DEVICE, state_dir=state_dir, shutdown_timeout=2, twin_wait=0, **agent
        ),
        mqtt=agent_mqtt_settings(
            broker, keepalive=2, reconnect_min_delay=0.05, reconnect_max_delay=0.3
        ),
        outbox=OutboxSettings(commit_interval=0.05),
        sensors=SENSORS,
    )


@contextmanager
def running(agent_config: AgentConfig, backend: EmulatedBackend) -> Iterator[Agent]:
    with testing_agent.agent_thread(agent_config, emulated_backend=backend) as agent:
        yield agent


@pytest.fixture
def backend() -> Iterator[EmulatedBackend]:
    """The agent's emulated hardware, kept by the test so its pins outlive the agent."""
    with EmulatedBackend() as emulated:
        yield emulated


def load(backend: EmulatedBackend, agent: Agent | OutputBank, name: str) -> OutputPinEmulator:
    """The emulated load on the GPIO pin of output `name` of an agent or its output bank."""
    bank = agent.outputs if isinstance(agent, Agent) else agent
    driven = bank.slots[name].output
    assert driven is not None, f"output {name!r} is not open"
    return emulator_for(backend, driven)


def chip(backend: EmulatedBackend, address: int = 0x40) -> PCA9685Emulator:
    found = backend.i2c_bus(1).device_at(address)
    assert isinstance(found, PCA9685Emulator)
    return found


def push(broker: Broker, payload: bytes) -> None:
    """Publish a desired document as the gateway does: retained, so that an agent still
    subscribing gets it too."""
    publish(broker, DESIRED, payload, retain=True)


def report_where(
    match: Callable[[ReportedConfig], bool], *, retained: bool = False
) -> Callable[[Message], bool]:
    """A report that `match`es, published now; or also the broker's retained copy of one
    published earlier, with `retained`."""

    def matches(message: Message) -> bool:
        return (
            message.topic == REPORTED
            and (retained or not message.retain)
            and match(ReportedConfig.decode(message.payload))
        )

    return matches


def applied(version: int) -> Callable[[Message], bool]:
    return report_where(lambda r: r.status == "applied" and r.applied_version == version)


def rejected(version: int | None) -> Callable[[Message], bool]:
    return report_where(lambda r: r.status == "rejected" and r.rejected_version == version)


def last_report(sub: Capture, match: Callable[[Message], bool]) -> ReportedConfig:
    return ReportedConfig.decode(sub.wait_for(match)[-1].payload)


def retained_report(broker: Broker) -> ReportedConfig:
    with Capture(broker, REPORTED) as late:
        return ReportedConfig.decode(late.wait_for(lambda m: m.retain)[0].payload)


# -- round trip -----------------------------------------------------------------------------------


@pytest.mark.integration
def test_desired_outputs_round_trip_to_emulated_pins_and_chips(
    broker: Broker, tmp_path: Path, backend: EmulatedBackend
) -> None:
    with (
        Capture(broker, REPORTED) as sub,
        running(config(broker, tmp_path), backend) as agent,
    ):
        push(broker, desired(1, {"relay": RELAY, "heater": HEATER, "fan": FAN}))
        first = last_report(sub, applied(1))
        relay, heater = load(backend, agent, "relay"), load(backend, agent, "heater")
        assert (relay.level, relay.driven) == (1.0, True)
        assert heater.level == 0.25
        assert heater.frequency == 100.0  # pwm_output's default
        assert chip(backend).output_duty(3) == quantised(0.3)
        assert chip(backend).prescale == prescale_for(50)
        fan = agent.outputs.slots["fan"].output

        # Values only: the same outputs stay open and are driven anew. An output left out of
        # the document is closed: driven safe, then released.
        push(broker, desired(2, {"relay": RELAY.replace(value=0), "fan": FAN.replace(value=0.8)}))
        second = last_report(sub, applied(2))
        assert agent.outputs.slots["fan"].output is fan
        assert set(agent.outputs.slots) == {"relay", "fan"}
        assert relay.level == 0.0
        assert chip(backend).output_duty(3) == quantised(0.8)
        assert (heater.level, heater.driven) == (0.0, False)

    assert first.outputs == {
        "relay": AppliedOutput(value=1.0, backend="emulated"),
        "heater": AppliedOutput(value=0.25, backend="emulated"),
        # What the chip's 12 bits make of 0.3, not 0.3: the report says what the load gets.
        "fan": AppliedOutput(value=quantised(0.3), backend="emulated"),
    }
    assert second.outputs["fan"].value == quantised(0.8)
    assert set(second.outputs) == {"relay", "fan"}


# -- refused documents -------------------------------------------------------------------------


def raw(outputs: dict[str, Any], version: int, **sensors: Any) -> bytes:
    document = {
        "v": 1,
        "device": DEVICE,
        "version": version,
        "sensors": {name: s.to_builtins() for name, s in SENSORS.items()} | sensors,
        "outputs": outputs,
    }
    return json.dumps(document).encode()


RELAY_DATA = RELAY.to_builtins()
FAN_DATA = FAN.to_builtins()

# (label, outputs, extra sensors, a fragment of the reason)
BAD_OUTPUTS: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    (
        "duty above 1",
        {"fan": {**FAN_DATA, "value": 1.5}},
        {},
        "output 'fan': pca9685 value takes 0..1, got 1.5; values outside the range are refused, "
        "not clamped",
    ),
    ("half a relay", {"relay": {**RELAY_DATA, "value": 0.5}}, {}, "takes 0 or 1, got 0.5"),
    ("negative duty", {"fan": {**FAN_DATA, "value": -0.1}}, {}, "got -0.1"),
    ("a boolean", {"relay": {**RELAY_DATA, "value": True}}, {}, "output 'relay'"),
    ("unknown driver", {"servo": {**RELAY_DATA, "driver": "servo"}}, {}, "no output driver"),
    ("unknown option", {"relay": {**RELAY_DATA, "options": {"inverted": True}}}, {}, "inverted"),
    (
        "safe value out of range",
        {"fan": {**FAN_DATA, "options": {"safe_value": 2}}},
        {},
        "safe_value",
    ),
    ("no pin", {"relay": {**RELAY_DATA, "pin": None}}, {}, "no default pin"),
    (
        "two outputs on one pin",
        {"relay": RELAY_DATA, "lamp": {**RELAY_DATA, "value": 0}},
        {},
        "output 'relay': GPIO17 is already taken by output 'lamp'",
    ),
    (
        "two outputs on one channel",
        {"fan": FAN_DATA, "vent": {**FAN_DATA, "value": 0.1}},
        {},
        "channel 3 of the pca9685 at 0x40 on I2C bus 1 is already taken",
    ),
    (
        "two frequencies on one chip",
        {"fan": FAN_DATA, "vent": {**FAN_DATA, "channel": 4, "options": {"frequency": 400}}},
        {},
        "one chip has one PWM frequency for all its channels",
    ),
    (
        "a sensor's pin",
        {"relay": RELAY_DATA},
        {"motion": {"driver": "pir", "pins": {"pin": 17}, "backend": "emulated"}},
        "GPIO17 is already taken by sensor 'motion'",
    ),
    (
        "a sensor's address",
        {"fan": {**FAN_DATA, "address": 0x76}},
        {},
        "the pca9685 at 0x76 on I2C bus 1 is already taken by sensor 'env'",
    ),
]


@pytest.mark.integration
def test_bad_outputs_are_refused_whole_and_the_last_good_document_keeps_driving(
    broker: Broker, tmp_path: Path, backend: EmulatedBackend
) -> None:
    with (
        Capture(broker, REPORTED) as sub,
        running(config(broker, tmp_path), backend) as agent,
    ):
        push(broker, desired(1, {"relay": RELAY, "fan": FAN}))
        sub.wait_for(applied(1))
        relay = load(backend, agent, "relay")
        for version, (label, outputs, sensors, reason) in enumerate(BAD_OUTPUTS, start=2):
            sub.clear()
            push(broker, raw(outputs, version, **sensors))
            report = last_report(sub, rejected(version))
            assert report.reason is not None
            assert reason in report.reason, f"{label}: {report.reason}"
            assert report.applied_version == 1, label
            # Still driving version 1, and saying so.
            assert report.outputs["relay"] == AppliedOutput(value=1.0, backend="emulated"), label
            assert relay.level == 1.0, label
            assert chip(backend).output_duty(3) == quantised(0.3), label
        assert agent.applied_version == 1
        assert set(agent.outputs.slots) == {"relay", "fan"}


@pytest.mark.integration
def test_an_output_the_hardware_refuses_is_reported_unavailable(
    broker: Broker, tmp_path: Path, backend: EmulatedBackend
) -> None:
    """A PIR takes GPIO17 when its settings name no pin: a default of its driver's code, which
    no metadata tells the validation. The output on that pin cannot open, and says why."""
    motion = SensorSettings(driver="pir", interval=0.5, backend=SensorBackend.EMULATED)
    document = DesiredConfig(
        device=DEVICE,
        version=1,
        sensors={**SENSORS, "motion": motion},
        outputs={"relay": RELAY, "fan": FAN},
    )
    with (
        Capture(broker, REPORTED) as sub,
        running(config(broker, tmp_path), backend) as agent,
    ):
        push(broker, document.encode())
        report = last_report(sub, applied(1))
        assert agent.slots["motion"].sensor is not None
    assert report.outputs["relay"].value is None
    assert report.outputs["relay"].reason is not None
    assert report.outputs["relay"].reason.startswith("unavailable: digital_output unavailable")
    assert "GPIO17" in report.outputs["relay"].reason
    assert report.outputs["fan"] == AppliedOutput(value=quantised(0.3), backend="emulated")


def test_check_outputs_accepts_what_can_work() -> None:
    sensors = {"env": bme280(1.0), "motion": SensorSettings(driver="pir", pins={"pin": 5})}
    check_outputs(
        {
            "relay": RELAY,
            "heater": HEATER,
            "fan": FAN,
            "vent": VENT,  # another channel of the same chip, at the same frequency
            "other": output("pca9685", 1, channel=3, bus=2, options={"frequency": 400}),
            "elsewhere": output("pca9685", 0, channel=3, address=0x41),
        },
        sensors,
    )
    # A disabled sensor holds no pin.
    idle = {"motion": SensorSettings(driver="pir", pins={"pin": 17}, enabled=False)}
    check_outputs({"relay": RELAY}, idle)
    with pytest.raises(ContractError, match="sensor 'motion'"):
        check_outputs({"relay": RELAY}, {"motion": idle["motion"].replace(enabled=True)})


def test_a_rejection_names_the_output_at_fault() -> None:
    payload = raw({"relay": RELAY_DATA, "fan": {**FAN_DATA, "value": "high"}}, 3)
    with pytest.raises(Rejection) as refused:
        validate_desired(payload, DEVICE, 1)
    assert refused.value.version == 3
    assert refused.value.reason.startswith("output 'fan': ")


# -- safety ------------------------------------------------------------------------------------


@pytest.mark.integration
def test_a_clean_stop_drives_outputs_safe_and_the_next_start_drives_them_again(
    broker: Broker, tmp_path: Path, backend: EmulatedBackend
) -> None:
    marker = tmp_path / MARKER_NAME
    with Capture(broker, REPORTED) as sub:
        with running(config(broker, tmp_path), backend) as agent:
            push(broker, desired(1, {"relay": RELAY, "vent": VENT}))
            sub.wait_for(applied(1))
            relay = load(backend, agent, "relay")
            assert relay.level == 1.0
            assert chip(backend).output_duty(4) == 0.75
            assert marker.exists(), "outputs driven away from safe leave the crash marker"
        # Stopped: driven safe, then released; a released digital pin keeps its last level.
        assert (relay.level, relay.driven) == (0.0, False)
        assert chip(backend).output_duty(4) == 0.25
        assert not marker.exists()
        stopped = retained_report(broker)
        assert stopped.outputs == {
            "relay": AppliedOutput(value=0.0, backend="emulated", reason="safe: shutdown"),
            "vent": AppliedOutput(value=0.25, backend="emulated", reason="safe: shutdown"),
        }

        # A clean stop is no crash: the next start drives the applied document again.
        sub.clear()
        with running(config(broker, tmp_path), backend) as agent:
            restarted = last_report(
                sub, report_where(lambda r: r.outputs.get("relay", AppliedOutput(None)).value == 1)
            )
            assert load(backend, agent, "relay").level == 1.0
            assert chip(backend).output_duty(4) == 0.75
    assert all(o.reason is None for o in restarted.outputs.values())


@pytest.mark.integration
def test_an_agent_killed_with_outputs_on_comes_back_with_them_safe_and_says_why(
    broker: Broker, tmp_path: Path, backend: EmulatedBackend
) -> None:
    settings = {"agent": {"device_id": DEVICE, "twin_wait": 0}}
    with EmulatedAgent(broker.endpoint, settings, mode="process", state_dir=tmp_path) as first:
        push(broker, desired(1, {"relay": RELAY, "vent": VENT}))
        on = first.wait_for_reported(lambda r: r.applied_version == 1 and bool(r.outputs))
        assert on.outputs["relay"].value == 1.0
        assert (tmp_path / MARKER_NAME).exists()
        first.kill()  # SIGKILL: no shutdown runs, nothing makes the outputs safe
        agent_config = first.config

    barrier = desired(99, {}, device="someone-else")
    with (
        Capture(broker, REPORTED) as sub,
        running(agent_config, backend) as agent,
    ):
        recovered = last_report(
            sub, report_where(lambda r: r.outputs["relay"].reason == "safe: crash recovery")
        )
        relay = load(backend, agent, "relay")
        assert relay.level == 0.0
        assert chip(backend).output_duty(4) == 0.25  # driven there: a fresh chip is full off
        # The retained document came again at the subscription: it is no new order, and the
        # outputs stay safe (documents are handled in order, so the barrier's report comes
        # after whatever that redelivery did).
        publish(broker, DESIRED, barrier)  # not retained: the retained copy stays version 1
        held = last_report(sub, rejected(99))
        assert relay.level == 0.0
        assert agent.applied_version == 1
        # A new version is a new order: the outputs follow it.
        push(broker, desired(2, {"relay": RELAY, "vent": VENT}))
        resumed = last_report(sub, applied(2))
        assert relay.level == 1.0
        assert chip(backend).output_duty(4) == 0.75

    why = "safe: crash recovery"
    assert recovered.outputs == {
        "relay": AppliedOutput(value=0.0, backend="emulated", reason=why),
        "vent": AppliedOutput(value=0.25, backend="emulated", reason=why),
    }
    assert held.outputs == recovered.outputs
    assert all(o.reason is None for o in resumed.outputs.values())
    assert not (tmp_path / MARKER_NAME).exists(), "the clean stop at the end removed the marker"


@pytest.mark.integration
def test_outputs_go_safe_when_the_broker_is_away_and_follow_the_document_when_it_is_back(
    broker_factory: BrokerFactory, tmp_path: Path, backend: EmulatedBackend
) -> None:
    broker = broker_factory(persistence=True)  # keeps the retained document and our session
    with (
        SessionSubscriber(broker, REPORTED) as reports,
        running(config(broker, tmp_path, safe_after_broker_away=1.0), backend) as agent,
    ):
        push(broker, desired(1, {"relay": RELAY}))
        reports.wait(lambda: any(r["applied_version"] == 1 for r in reports.payloads), 10, "v1")
        relay = load(backend, agent, "relay")
        assert relay.level == 1.0

        stopped = time.monotonic()
        broker.stop()
        poll(lambda: relay.level == 0.0, 15, what="relay safe without the broker")
        assert time.monotonic() - stopped >= 1.0, "held safe before the broker was away 1 s"
        assert agent.outputs.hold_reason == "broker away 1 s"
        heard = len(reports.payloads)

        broker.start()

        def relay_reports() -> list[AppliedOutput]:
            # The subscriber's persistent session queued what the agent published while it was
            # reconnecting itself; its new subscription also brings the retained copy again.
            return [ReportedConfig.from_builtins(r).outputs["relay"] for r in reports.payloads]

        safe = AppliedOutput(value=0.0, backend="emulated", reason="safe: broker away 1 s")
        on = AppliedOutput(value=1.0, backend="emulated")

        def safe_then_on() -> bool:
            seen = relay_reports()[heard:]
            return safe in seen and on in seen[seen.index(safe) :]

        reports.wait(safe_then_on, 15, "reported safe when back, then the document obeyed")
        assert relay.level == 1.0
        assert agent.outputs.hold_reason is None


@pytest.mark.integration
def test_without_a_retained_document_on_the_returning_broker_the_outputs_stay_safe(
    broker: Broker, tmp_path: Path, backend: EmulatedBackend
) -> None:
    """A broker that lost its retained documents (no persistence) gives no order to follow:
    the outputs stay safe until the gateway publishes one again."""
    with running(config(broker, tmp_path, safe_after_broker_away=0.5), backend) as agent:
        with Capture(broker, REPORTED) as sub:
            push(broker, desired(1, {"relay": RELAY}))
            sub.wait_for(applied(1))
        relay = load(backend, agent, "relay")
        broker.stop()
        poll(lambda: relay.level == 0.0, 15, what="relay safe without the broker")
        broker.start()
        with Capture(broker, REPORTED) as sub:
            # Live, or retained when the agent was back before this subscription.
            back = last_report(
                sub,
                report_where(
                    lambda r: r.outputs["relay"].reason == "safe: broker away 0.5 s", retained=True
                ),
            )
            poll(lambda: agent.link.wait_subscribed(0), 10, what="subscribed again")
            push(broker, desired(99, {}, device="someone-else"))
            sub.wait_for(rejected(99))
            assert relay.level == 0.0
            push(broker, desired(2, {"relay": RELAY}))
            sub.wait_for(applied(2))
            assert relay.level == 1.0
    assert back.outputs["relay"].value == 0.0


def test_the_broker_watch_holds_after_the_limit_and_never_at_zero(
    tmp_path: Path, backend: EmulatedBackend
) -> None:
    bank = OutputBank(tmp_path / MARKER_NAME, lambda _: [backend])
    bank.install({"relay": RELAY}, new_version=True)
    relay = load(backend, bank, "relay")
    assert relay.level == 1.0
    assert not bank.watch_broker(False, 0.0), "0 disables the hold"
    assert bank.broker_hold_in(0.0) is None
    assert not bank.watch_broker(False, 0.2)  # away since the first look, not yet long enough
    wait = bank.broker_hold_in(0.2)
    assert wait is not None
    assert 0 <= wait <= 0.2
    poll(lambda: bank.watch_broker(False, 0.2), 5, what="the hold after 0.2 s away")
    assert (relay.level, bank.hold_reason) == (0.0, "broker away 0.2 s")
    assert not bank.watch_broker(False, 0.2), "held once, not again"
    assert bank.resume(Hold.BROKER_AWAY)
    assert relay.level == 1.0
    assert not bank.watch_broker(True, 0.2)
    assert bank.broker_hold_in(0.2) is None, "no hold is due while the broker is there"
    bank.close()
    assert relay.level == 0.0


def test_a_stronger_hold_is_never_replaced_or_ended_by_a_weaker_one(
    tmp_path: Path, backend: EmulatedBackend
) -> None:
    (tmp_path / MARKER_NAME).write_text("left by a run that crashed")
    bank = OutputBank(tmp_path / MARKER_NAME, lambda _: [backend])
    assert bank.hold is Hold.CRASH_RECOVERY
    bank.install({"relay": RELAY}, new_version=False)
    relay = load(backend, bank, "relay")
    assert relay.level == 0.0
    assert not bank.hold_safe(Hold.BROKER_AWAY, "broker away 1 s")
    assert not bank.resume(Hold.BROKER_AWAY)
    assert bank.report()["relay"].reason == "safe: crash recovery"
    bank.install({"relay": RELAY}, new_version=True)
    assert (relay.level, bank.hold) == (1.0, None)
    bank.close()
    assert not (tmp_path / MARKER_NAME).exists()


def test_an_output_that_cannot_be_made_safe_keeps_the_crash_marker(
    tmp_path: Path, backend: EmulatedBackend
) -> None:
    """A chip that stops answering: its output is reported unavailable with the bus error,
    and a clean stop that could not drive it safe leaves the marker, so the next start holds."""
    marker = tmp_path / MARKER_NAME
    bank = OutputBank(marker, lambda _: [backend])
    bank.install({"vent": VENT}, new_version=True)
    assert chip(backend).output_duty(4) == 0.75
    assert marker.exists()
    backend.i2c_bus(1).unplug(0x40)
    bank.install({"vent": VENT.replace(value=0.5)}, new_version=True)
    report = bank.report()["vent"]
    assert report.value == 0.75, "the last value written"
    assert report.reason is not None
    assert report.reason.startswith("unavailable: ")
    bank.close()
    assert marker.exists()
    assert OutputBank(marker, lambda _: [backend]).hold is Hold.CRASH_RECOVERY


def test_a_momentary_drive_marks_the_outputs_and_returns_to_the_desired_or_safe_value(
    tmp_path: Path, backend: EmulatedBackend
) -> None:
    """What a command that pulses an output needs: the open outputs (with the crash marker
    down first, as the pulse may leave safe) and the value each goes back to afterwards."""
    marker = tmp_path / MARKER_NAME
    bank = OutputBank(marker, lambda _: [backend])
    bank.install({"relay": RELAY.replace(value=0)}, new_version=True)
    assert not marker.exists(), "the relay's desired value is its safe value"
    running = bank.running_outputs()
    assert set(running) == {"relay"}
    assert marker.exists()
    running["relay"].apply(1)
    assert load(backend, bank, "relay").level == 1.0
    assert bank.resting_value("relay") == 0.0
    bank.install({"relay": RELAY}, new_version=True)
    assert bank.resting_value("relay") == 1.0
    bank.hold_safe(Hold.BROKER_AWAY, "broker away 1 s")
    assert bank.resting_value("relay") == 0.0
    with pytest.raises(KeyError):
        bank.resting_value("vent")
    bank.close()
