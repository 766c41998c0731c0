"""edgetwin.testing.agent: an EmulatedAgent on a thread and as a process, its chips broken
while it runs, its outbox read from outside."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from edgetwin.agent.contract import DeviceState, Telemetry
from edgetwin.testing.agent import EmulatedAgent, agent_config_toml
from edgetwin.testing.broker import Broker
from edgetwin.testing.capture import Capture
from edgetwin.testing.endpoint import MqttEndpoint
from edgetwin.testing.waiting import poll

pytestmark = pytest.mark.integration

DEVICE = "testing-agent"
INTERVAL = 0.05


def endpoint(broker: Broker) -> MqttEndpoint:
    return MqttEndpoint(broker.host, broker.port, "5" if broker.protocol == "5" else "3.1.1")


def config(**agent: Any) -> dict[str, Any]:
    return {
        "agent": {"device_id": DEVICE, "twin_wait": 0, "shutdown_timeout": 2, **agent},
        "sensors": {
            "env": {"driver": "bme280", "address": 0x76, "interval": INTERVAL},
            "outdoor": {"driver": "bme280", "address": 0x77, "interval": INTERVAL},
        },
        "outbox": {"commit_interval": 0.02},
    }


def telemetry(sensor: str) -> str:
    return f"edgetwin/{DEVICE}/telemetry/{sensor}"


def seqs(sub: Capture, sensor: str) -> list[int]:
    return [Telemetry.decode(m.payload).seq for m in sub.messages(telemetry(sensor))]


def health(sensor: str, wanted: str, reason: str = "") -> Callable[[DeviceState], bool]:
    def match(state: DeviceState) -> bool:
        found = state.sensors.get(sensor)
        return found is not None and found.health == wanted and reason in (found.reason or "")

    return match


def test_the_config_file_reads_back_as_the_dict() -> None:
    import tomllib

    data = {
        "agent": {"device_id": "pi", "state_dir": '/tmp/a "b"'},
        "mqtt": {"host": "h", "port": 1, "tls": {"ca_file": "/ca.pem"}},
        "sensors": {"adc 1": {"driver": "ads1115", "options": {"gain": 2.048}, "enabled": False}},
    }
    assert tomllib.loads(agent_config_toml(data)) == data


def test_thread_agent_publishes_emulated_readings(broker: Broker) -> None:
    with Capture(broker, telemetry("+")) as sub:
        started = time.monotonic()
        with EmulatedAgent(endpoint(broker), config()) as agent:
            first = sub.wait_for(telemetry("env"), timeout=10)[0]
            sub.wait_for(telemetry("env"), count=3, timeout=10)
            status = agent.status()
            assert status is not None
            assert status.state == "online"
            assert status.boot == 1
        reading = Telemetry.decode(first.payload)
    print(f"thread mode: first reading {first.received_at - started:.2f} s after start")
    assert reading.source == "emulated"
    assert reading.device == DEVICE
    assert set(reading.values) == {"temperature", "humidity", "pressure"}
    assert not agent.state_dir.exists(), "the temporary state directory is removed"


@dataclass(frozen=True)
class Fault:
    name: str
    inject: Callable[[EmulatedAgent], None]
    clear: Callable[[EmulatedAgent], None]
    health: str
    reason: str


FAULTS = [
    Fault(
        "nack",
        lambda a: a.nack("outdoor"),
        lambda a: a.clear_faults("outdoor"),
        "missing",
        "Remote I/O error",
    ),
    Fault(
        "eio",
        lambda a: a.eio("outdoor"),
        lambda a: a.clear_faults("outdoor"),
        "faulted",
        "Input/output error",
    ),
    Fault(
        "unplug",
        lambda a: a.unplug("outdoor"),
        lambda a: a.replug("outdoor"),
        "missing",
        "No such device or address",
    ),
    Fault(
        "stuck",
        lambda a: a.stick_bits("outdoor", or_mask=0xFF),
        lambda a: a.clear_faults("outdoor"),
        "faulted",
        "chip id 0xff",
    ),
]


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.name)
def test_thread_agent_reports_an_injected_fault_and_recovers(broker: Broker, fault: Fault) -> None:
    with (
        Capture(broker, telemetry("+")) as sub,
        EmulatedAgent(endpoint(broker), config(state_interval=0.5)) as agent,
    ):
        sub.wait_for(telemetry("outdoor"), count=2, timeout=10)
        fault.inject(agent)
        faulted = agent.wait_for_state(health("outdoor", fault.health, fault.reason))
        assert faulted.sensors["env"].health == "ok", "the other sensor is untouched"
        fault.clear(agent)
        cleared = time.monotonic()
        agent.wait_for_state(lambda s: health("outdoor", "ok")(s) and time.monotonic() > cleared)
        sub.wait_for(lambda m: m.topic == telemetry("outdoor") and m.received_at > cleared)
    outdoor = sorted(seqs(sub, "outdoor"))  # the first CONNACK may follow the first readings
    assert outdoor == list(range(1, len(outdoor) + 1)), "the stream paused, without a gap"


def test_process_agent_faults_kill_and_restart_keep_one_numbering(
    broker: Broker,
) -> None:
    with Capture(broker, telemetry("env")) as sub:
        started = time.monotonic()
        agent = EmulatedAgent(endpoint(broker), config(), mode="process").start()
        try:
            first = sub.wait_for(telemetry("env"), timeout=15)[0]
            print(f"process mode: first reading {first.received_at - started:.2f} s after start")
            assert Telemetry.decode(first.payload).source == "emulated"
            # A fault crosses into the process through its fault channel.
            agent.nack("env")
            agent.wait_for_state(health("env", "missing", "Remote I/O error"))
            agent.clear_faults("env")
            agent.wait_for_state(health("env", "ok"))
            before = len(sub.messages())
            sub.wait_for(telemetry("env"), count=before + 3, timeout=10)

            agent.kill()
            assert agent.exit_code == -9
            killed_at = len(sub.messages())
            agent.restart()
            assert agent.status() is not None
            assert agent.status().boot == 2  # type: ignore[union-attr]
            sub.wait_for(telemetry("env"), count=killed_at + 5, timeout=15)
        finally:
            agent.close()
        assert agent.exit_code == 0
    numbers = seqs(sub, "env")
    assert sorted(set(numbers)) == list(range(1, max(numbers) + 1)), "a gap in seq"


def test_outbox_is_readable_while_the_broker_is_away(broker: Broker) -> None:
    with EmulatedAgent(endpoint(broker), config()) as agent:
        poll(lambda: agent.outbox.last_seq("env") >= 3, 10, what="readings committed")
        broker.stop()
        poll(lambda: agent.outbox.pending() >= 10, 10, what="readings kept while offline")
        waiting = agent.outbox.readings("env")
        assert waiting, "the outbox holds the env stream"
        numbers = [r.seq for r in waiting]
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
        assert all(r.telemetry.source == "emulated" for r in waiting)
        assert agent.outbox.boot == 1
        offline_last = agent.outbox.last_seq("env")
        broker.start()
        poll(
            lambda: all(r.seq > offline_last for r in agent.outbox.readings("env")),
            20,
            what="the backlog drained",
        )
