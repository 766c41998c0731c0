"""Sensor faults inside a running agent: reported in the state document, contained to the
sensor that has them, and recovered from without a restart.

The agent runs on an `EmulatedBackend` the test owns, so the test reaches the very fake I2C bus
the agent's drivers talk to and breaks one chip on it the way real chips break.
"""

from __future__ import annotations

import errno
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgetwin.agent.config import AgentConfig, AgentSection, OutboxSettings, load_agent_config
from edgetwin.agent.contract import DeviceState, SensorSettings, SensorState, Telemetry
from edgetwin.hardware import EmulatedBackend, RealBackend
from edgetwin.hardware.bus import FakeI2CBus
from edgetwin.testing.agent import agent_thread
from edgetwin.testing.broker import Broker
from edgetwin.testing.capture import Capture, Message
from tests.fleet_helpers import agent_mqtt_settings, bme280

pytestmark = pytest.mark.integration

DEVICE = "pi-faults"
HEALTHY, BROKEN = 0x76, 0x77  # "env" and "outdoor", two BME280s on bus 1
STATE = f"edgetwin/{DEVICE}/state"


def telemetry(sensor: str) -> str:
    return f"edgetwin/{DEVICE}/telemetry/{sensor}"


def section(state_dir: Path) -> AgentSection:
    # No gateway in these tests: no twin document to wait for at start.
    return AgentSection(device_id=DEVICE, state_dir=state_dir, shutdown_timeout=2, twin_wait=0)


def agent_config(broker: Broker, state_dir: Path) -> AgentConfig:
    return AgentConfig(
        agent=section(state_dir),
        mqtt=agent_mqtt_settings(
            broker, keepalive=2, reconnect_min_delay=0.05, reconnect_max_delay=0.3
        ),
        outbox=OutboxSettings(commit_interval=0.02),
        sensors={"env": bme280(0.04, address=HEALTHY), "outdoor": bme280(0.04, address=BROKEN)},
    )


def bme280_on(backend: str, address: int = 0x76) -> SensorSettings:
    return SensorSettings.from_builtins(
        {"driver": "bme280", "interval": 0.05, "address": address, "backend": backend}
    )


@pytest.fixture
def backend() -> Iterator[EmulatedBackend]:
    with EmulatedBackend(seed=7) as emulated:
        yield emulated


def sensor_state(sensor: str, health: str, reason: str | None = None) -> Callable[[Message], bool]:
    """Matches a state document where `sensor` has `health` (and a reason containing `reason`)."""

    def match(m: Message) -> bool:
        if m.topic != STATE:
            return False
        state = DeviceState.decode(m.payload).sensors.get(sensor)
        if state is None or state.health != health:
            return False
        return reason is None or (state.reason is not None and reason in state.reason)

    return match


def states_of(sub: Capture, sensor: str) -> list[SensorState]:
    documents = [DeviceState.decode(m.payload) for m in sub.messages(STATE)]
    return [d.sensors[sensor] for d in documents if sensor in d.sensors]


def seqs(sub: Capture, sensor: str) -> list[int]:
    return [Telemetry.decode(m.payload).seq for m in sub.messages(telemetry(sensor))]


@dataclass(frozen=True)
class Fault:
    """One way a chip breaks: how to break it, how to mend it, and what the agent should say."""

    name: str
    inject: Callable[[FakeI2CBus], None]
    clear: Callable[[FakeI2CBus], None]
    health: str
    reason: str


FAULTS = [
    Fault(
        "EIO on every transfer",
        lambda bus: bus.inject_error(BROKEN, errno.EIO, count=100_000),
        lambda bus: bus.clear_faults(BROKEN),
        "faulted",
        "Input/output error",
    ),
    Fault(
        "unplugged",
        lambda bus: bus.unplug(BROKEN),
        lambda bus: bus.replug(BROKEN),
        "missing",
        "no answer (No such device or address)",
    ),
    Fault(
        "NACKs",
        lambda bus: bus.inject_nack(BROKEN, count=100_000),
        lambda bus: bus.clear_faults(BROKEN),
        "missing",
        "Remote I/O error",
    ),
    Fault(
        "stuck at all ones",
        lambda bus: bus.stick_bits(BROKEN, or_mask=0xFF),
        lambda bus: bus.clear_faults(BROKEN),
        "faulted",
        "chip id 0xff, expected 0x60",
    ),
]


@pytest.mark.parametrize("fault", FAULTS, ids=lambda fault: fault.name)
def test_fault_is_reported_contained_and_recovered(
    broker: Broker, backend: EmulatedBackend, tmp_path: Path, fault: Fault
) -> None:
    bus = backend.i2c_bus(1)
    with (
        Capture(broker, f"edgetwin/{DEVICE}/#") as sub,
        agent_thread(agent_config(broker, tmp_path), emulated_backend=backend),
    ):
        sub.wait_for(telemetry("outdoor"), count=3, timeout=10)
        fault.inject(bus)
        sub.wait_for(sensor_state("outdoor", fault.health, fault.reason))
        # While it lasts: "env" goes on, "outdoor" publishes nothing (readings taken before
        # the fault may still be in flight when the state document comes, hence two steps).
        sub.wait_for(telemetry("env"), count=len(seqs(sub, "env")) + 3)
        outdoor_during = len(seqs(sub, "outdoor"))
        sub.wait_for(telemetry("env"), count=len(seqs(sub, "env")) + 6)
        assert len(seqs(sub, "outdoor")) == outdoor_during
        assert states_of(sub, "env")[-1].health == "ok"

        cleared_at = time.monotonic()
        fault.clear(bus)
        sub.wait_for(lambda m: m.received_at > cleared_at and sensor_state("outdoor", "ok")(m))
        sub.wait_for(telemetry("outdoor"), count=outdoor_during + 3)

    # Sorted: readings stored before the first CONNACK go after the first live one.
    env, outdoor = sorted(seqs(sub, "env")), sorted(seqs(sub, "outdoor"))
    assert env == list(range(1, len(env) + 1)), "the healthy sensor's stream has no gap"
    # The broken sensor's stream just pauses: no reading was numbered and then lost.
    assert outdoor == list(range(1, len(outdoor) + 1))
    faulty = [s for s in states_of(sub, "outdoor") if s.health != "ok"]
    assert all(s.reason for s in faulty), "every fault carries its reason"
    assert all(s.backend == "emulated" for s in states_of(sub, "outdoor"))
    assert all(s.health == "ok" for s in states_of(sub, "env"))


def test_transient_fault_recovers_on_its_own(
    broker: Broker, backend: EmulatedBackend, tmp_path: Path
) -> None:
    """One bus glitch, then noise on SDA flipping the next byte read: the chip id comes back
    wrong once (0x61, a BME680's), and the very next bring-up succeeds."""
    bus = backend.i2c_bus(1)
    with (
        Capture(broker, f"edgetwin/{DEVICE}/#") as sub,
        agent_thread(agent_config(broker, tmp_path), emulated_backend=backend),
    ):
        sub.wait_for(telemetry("outdoor"), count=3, timeout=10)
        bus.inject_error(BROKEN, errno.EIO)  # forces a bring-up, which reads the chip id first
        bus.corrupt_reads(BROKEN, count=1, mask=0x01)
        faulted = sub.wait_for(sensor_state("outdoor", "faulted", "chip id 0x61, expected 0x60"))
        faulted_at = faulted[0].received_at
        sub.wait_for(lambda m: m.received_at > faulted_at and sensor_state("outdoor", "ok")(m))
        before = len(seqs(sub, "outdoor"))
        sub.wait_for(telemetry("outdoor"), count=before + 3)
    reasons = [s.reason for s in states_of(sub, "outdoor") if s.health == "faulted"]
    assert any(r and "Input/output error" in r for r in reasons)
    assert any(r and "(a BME680)" in r for r in reasons)
    env = sorted(seqs(sub, "env"))  # the first CONNACK may come after the first readings
    assert env == list(range(1, len(env) + 1))


def test_real_backend_without_i2c_reports_missing_and_the_rest_runs(
    broker: Broker, backend: EmulatedBackend, tmp_path: Path
) -> None:
    """A board sensor on a machine with no /dev/i2c-1: missing with the reason, retried, and
    the emulated sensor beside it publishes. `auto` falls back to the emulator."""
    config = AgentConfig(
        agent=section(tmp_path / "state"),
        mqtt=agent_mqtt_settings(broker, keepalive=2, reconnect_min_delay=0.05),
        outbox=OutboxSettings(commit_interval=0.02),
        sensors={
            "board": bme280_on("real"),
            "auto": bme280_on("auto", address=0x77),
            "env": bme280(0.05),
        },
    )
    (tmp_path / "dev").mkdir()  # a /dev without i2c-1, whatever this machine has
    with (
        RealBackend(dev_dir=tmp_path / "dev") as real,
        Capture(broker, f"edgetwin/{DEVICE}/#") as sub,
        agent_thread(config, emulated_backend=backend, real_backend=real) as agent,
    ):
        sub.wait_for(telemetry("env"), count=5, timeout=10)
        sub.wait_for(telemetry("auto"), count=5)
        states = sub.wait_for(sensor_state("board", "missing"))
        assert agent.slots["board"].sensor is None
    board = DeviceState.decode(states[-1].payload).sensors["board"]
    assert board.backend == "real"
    assert board.reason is not None
    assert "i2c-1 does not exist" in board.reason
    assert "enable I2C" in board.reason
    auto = DeviceState.decode(states[-1].payload).sensors["auto"]
    assert (auto.health, auto.backend) == ("ok", "emulated")
    assert sub.messages(telemetry("board")) == []


@pytest.mark.skipif(Path("/dev/i2c-1").exists(), reason="this machine has an I2C adapter 1")
def test_real_backend_default_dev_on_a_machine_without_i2c(
    broker: Broker, backend: EmulatedBackend, tmp_path: Path
) -> None:
    """The same with the agent's own RealBackend on this machine's real /dev."""
    config = AgentConfig(
        agent=section(tmp_path),
        mqtt=agent_mqtt_settings(broker, keepalive=2, reconnect_min_delay=0.05),
        outbox=OutboxSettings(commit_interval=0.02),
        sensors={"board": bme280_on("real"), "env": bme280(0.05)},
    )
    with (
        Capture(broker, f"edgetwin/{DEVICE}/#") as sub,
        agent_thread(config, emulated_backend=backend),
    ):
        sub.wait_for(telemetry("env"), count=3, timeout=10)
        states = sub.wait_for(sensor_state("board", "missing", "/dev/i2c-1 does not exist"))
    assert DeviceState.decode(states[-1].payload).sensors["board"].backend == "real"


GPIO_AND_SYSFS = """
[agent]
device_id = "{device}"
state_dir = "{state_dir}"
twin_wait = 0

[mqtt]
host = "{host}"
port = {port}
protocol = "{protocol}"
keepalive = 2

[outbox]
commit_interval = 0.02

[sensors.probe]
driver = "ds18b20"
device = "28-000005e2fdc3"
interval = 0.05
backend = "emulated"

[sensors.soc]
driver = "soc_thermal"
interval = 0.05
backend = "emulated"

[sensors.hall]
driver = "pir"
pins = {{ pin = 17 }}
interval = 0.3
backend = "emulated"

[sensors.range]
driver = "hcsr04"
pins = {{ trigger = 23, echo = 24 }}
interval = 0.3
backend = "emulated"
"""

UNITS = {
    "probe": {"temperature": "°C"},
    "soc": {"temperature": "°C"},
    "hall": {"motion": "bool"},
    "range": {"distance": "m"},
}


def test_gpio_and_sysfs_sensors_run_emulated(
    broker: Broker, backend: EmulatedBackend, tmp_path: Path
) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        GPIO_AND_SYSFS.format(
            device=DEVICE,
            state_dir=tmp_path / "state",
            host=broker.host,
            port=broker.port,
            protocol=broker.protocol,
        )
    )
    config = load_agent_config(path)
    with (
        Capture(broker, f"edgetwin/{DEVICE}/#") as sub,
        agent_thread(config, emulated_backend=backend),
    ):
        for sensor in UNITS:
            sub.wait_for(telemetry(sensor), count=2, timeout=10)
        states = sub.wait_for(
            lambda m: m.topic == STATE and set(DeviceState.decode(m.payload).sensors) == set(UNITS)
        )
    for sensor, units in UNITS.items():
        readings = [Telemetry.decode(m.payload) for m in sub.messages(telemetry(sensor))]
        for reading in readings:
            assert reading.source == "emulated"
            assert {q: v.unit for q, v in reading.values.items()} == units, sensor
    state = DeviceState.decode(states[-1].payload)
    assert {name: (s.health, s.backend) for name, s in state.sensors.items()} == dict.fromkeys(
        UNITS, ("ok", "emulated")
    )
    soc = Telemetry.decode(sub.messages(telemetry("soc"))[0].payload).values["temperature"]
    assert 20 < soc.value < 100
    motion = Telemetry.decode(sub.messages(telemetry("hall"))[0].payload).values["motion"]
    assert motion.value in (0.0, 1.0)
    distance = Telemetry.decode(sub.messages(telemetry("range"))[0].payload).values["distance"]
    assert 0.02 <= distance.value <= 4.0


def test_agent_closes_the_back_ends_it_made(
    broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without an injected back end the agent makes its own; the emulated sysfs tree it holds
    is a temporary directory, gone once the agent stops (not one more per restart)."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # the documented default for dir=
    config = AgentConfig(
        agent=section(tmp_path / "state"),
        mqtt=agent_mqtt_settings(broker, keepalive=2, reconnect_min_delay=0.05),
        outbox=OutboxSettings(commit_interval=0.02),
        sensors={
            "probe": SensorSettings.from_builtins(
                {
                    "driver": "ds18b20",
                    "device": "28-000005e2fdc3",
                    "interval": 0.05,
                    "backend": "emulated",
                }
            ),
            "board": bme280_on("real"),  # the agent makes a RealBackend for it, too
        },
    )
    with Capture(broker, telemetry("probe")) as sub, agent_thread(config):
        sub.wait_for(count=3, timeout=10)
        assert [p.name.startswith("edgetwin-sysfs-") for p in temp.iterdir()] == [True]
    assert list(temp.iterdir()) == []
