"""Stand-ins on the simulation engine, against a real mosquitto: streams placed one device at a
time into a running engine, their numbering carried on and handed back, what the driver's
metadata says they publish, and many devices taken over at once."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator

import pytest

from edgetwin.agent.contract import SensorSettings, Source, Telemetry, Topics
from edgetwin.gateway.engine import Endpoint, EngineController, EngineSettings
from edgetwin.gateway.engine.controller import EngineStateError
from edgetwin.gateway.scenario import PlacedFleet
from edgetwin.gateway.scenario.generator import PlacedStreams
from edgetwin.gateway.standins import StandIns, standin_stream
from edgetwin.hardware.registry import reading_quantities
from edgetwin.testing.broker import Broker
from edgetwin.testing.capture import Capture, Message
from edgetwin.testing.waiting import poll
from tests.engine_helpers import TestScenario

TELEMETRY = "edgetwin/+/telemetry/+"
FAST = SensorSettings(driver="bme280", address=0x76, interval=0.05)


def endpoint(broker: Broker) -> Endpoint:
    return Endpoint(host=broker.host, port=broker.port, protocol=broker.protocol, keepalive=2)


@pytest.fixture
def standins(broker: Broker) -> Iterator[StandIns]:
    engine = EngineController(endpoint(broker), EngineSettings(stats_interval=0.2))
    stand_ins = StandIns(engine)
    stand_ins.start()
    yield stand_ins
    stand_ins.stop()


def readings(messages: list[Message], device: str, sensor: str = "env") -> list[Telemetry]:
    topic = f"edgetwin/{device}/telemetry/{sensor}"
    return [Telemetry.decode(m.payload) for m in messages if m.topic == topic]


@pytest.mark.integration
def test_a_stand_in_continues_the_numbering_and_hands_back_its_last_seq(
    broker: Broker, standins: StandIns
) -> None:
    with Capture(broker, TELEMETRY, qos=0) as sub:
        assert standins.serve("pi", {"env": FAST}, {"env": 100})
        assert not standins.serve("pi", {"env": FAST}, {"env": 100})  # nothing to change
        sub.wait_for("edgetwin/pi/telemetry/env", timeout=10, count=5)
        assert standins.simulated_streams("pi") == {"env": 100}
        assert standins.serve("pi", {})
        last = standins.last_seq("pi", "env")
        # Whatever was handed to the socket before the stop reaches the subscriber; nothing
        # comes after it.
        poll(
            lambda: readings(sub.messages(), "pi")[-1].seq == last,
            timeout=5,
            what=f"reading {last}",
        )
        sub.clear()
        # A barrier on the same engine: while another device's readings arrive, none of the
        # stopped stream's may.
        standins.serve("barrier", {"env": FAST})
        sub.wait_for("edgetwin/barrier/telemetry/env", timeout=10, count=3)
    assert readings(sub.messages(), "pi") == []
    assert not standins.is_active("pi")


@pytest.mark.integration
def test_readings_carry_the_drivers_quantities_units_and_resolution(
    broker: Broker, standins: StandIns
) -> None:
    adc = SensorSettings(driver="ads1115", address=0x48, interval=0.05, options={"channels": "0,2"})
    with Capture(broker, TELEMETRY, qos=0) as sub:
        standins.serve("lab", {"env": FAST, "adc": adc})
        sub.wait_for("edgetwin/lab/telemetry/adc", timeout=10, count=2)
        sub.wait_for("edgetwin/lab/telemetry/env", timeout=10, count=2)
        messages = sub.messages()
    for sensor, settings in (("env", FAST), ("adc", adc)):
        quantities = reading_quantities(settings.driver, settings.options)
        for reading in readings(messages, "lab", sensor):
            assert reading.source is Source.SIMULATED
            assert list(reading.values) == [q.name for q in quantities]
            for q in quantities:
                value = reading.values[q.name]
                assert value.unit == q.unit
                assert value.value == round(value.value, q.decimals)
        body = json.loads(messages[-1].payload)
        assert body["v"] == 1


@pytest.mark.integration
def test_changed_settings_restart_a_stream_and_its_numbering_goes_on(
    broker: Broker, standins: StandIns
) -> None:
    slow = SensorSettings(driver="bme280", address=0x76, interval=0.1)
    with Capture(broker, "edgetwin/pi/telemetry/env", qos=0) as sub:
        standins.serve("pi", {"env": FAST})
        sub.wait_for(timeout=10, count=4)
        standins.serve("pi", {"env": slow})
        before = len(sub.messages())
        sub.wait_for(timeout=10, count=before + 4)
        standins.serve("pi", {})
        seqs = [r.seq for r in readings(sub.messages(), "pi")]
    # One numbering across the restart: no gap, no number twice.
    assert seqs == list(range(1, len(seqs) + 1))


@pytest.mark.integration
def test_a_neighbour_keeps_running_while_one_sensor_is_handed_back(
    broker: Broker, standins: StandIns
) -> None:
    other = SensorSettings(driver="sht3x", interval=0.05)
    with Capture(broker, TELEMETRY, qos=0) as sub:
        standins.serve("pi", {"env": FAST, "other": other})
        sub.wait_for("edgetwin/pi/telemetry/other", timeout=10, count=3)
        standins.serve("pi", {"other": other})
        assert standins.simulated_streams("pi").keys() == {"other"}
        count = len(readings(sub.messages(), "pi", "other"))
        sub.wait_for("edgetwin/pi/telemetry/other", timeout=10, count=count + 3)
    seqs = [r.seq for r in readings(sub.messages(), "pi", "other")]
    assert seqs == list(range(1, len(seqs) + 1))


@pytest.mark.integration
def test_a_thousand_devices_taken_over_at_once_all_publish(
    broker: Broker, standins: StandIns
) -> None:
    """Each placement is one message down a pipe; the worker folds the ones that arrive
    together into one schedule rebuild, so a whole fleet failing over is no slower per device
    than one."""
    one_second = SensorSettings(driver="bme280", address=0x76, interval=1.0)
    devices = [f"pi-{i:04d}" for i in range(1000)]
    with Capture(broker, TELEMETRY, qos=0) as sub:
        for i, device in enumerate(devices):
            standins.serve(device, {"env": one_second}, {"env": i})
        sub.wait_for(TELEMETRY, timeout=20, count=len(devices))
        first: dict[str, int] = {}
        for message in sub.messages():
            reading = Telemetry.decode(message.payload)
            first.setdefault(reading.device, reading.seq)
    assert len(standins.active_devices()) == 1000
    assert standins.stats().devices == 1000
    assert first == {device: i + 1 for i, device in enumerate(devices)}


def test_many_devices_stop_together_with_their_last_seqs(
    broker: Broker, standins: StandIns
) -> None:
    """A gateway handing a third of its devices to another stops them in one round trip per
    worker, and each stopped stream's last seq is the last reading on the wire."""
    devices = [f"pi-{i:03d}" for i in range(300)]
    leaving = devices[::3]
    with Capture(broker, TELEMETRY, qos=0) as sub:
        with standins.batch():
            for i, device in enumerate(devices):
                standins.serve(device, {"env": FAST}, {"env": 10 * i})
        sub.wait_for(TELEMETRY, timeout=20, count=3 * len(devices))
        standins.stop_devices([*leaving, "never-played"])
        assert standins.active_devices() == set(devices) - set(leaving)
        last = {device: standins.last_seq(device, "env") for device in leaving}

        def on_the_wire() -> dict[str, int]:
            seen: dict[str, int] = {}
            for message in sub.messages():
                reading = Telemetry.decode(message.payload)
                if reading.device in last:
                    seen[reading.device] = max(seen.get(reading.device, 0), reading.seq)
            return seen

        poll(lambda: on_the_wire() == last, 5, what="every stopped stream's last reading")
    assert all(last[d] > 10 * devices.index(d) for d in leaving)


def test_past_its_lease_a_run_publishes_nothing_and_then_continues_its_numbering(
    broker: Broker, standins: StandIns
) -> None:
    """A gateway among others holds its stand-ins to the time the broker keeps it alive
    (`EngineController.hold_after`): past it, nothing goes out and no seq is used up."""
    with Capture(broker, TELEMETRY, qos=0) as sub:
        standins.serve("held", {"env": FAST})
        sub.wait_for(TELEMETRY, timeout=10, count=3)
        standins.engine.hold_after(time.monotonic())
        # A batch the worker had begun may still arrive: wait until the stream is quiet.
        poll(
            lambda: time.monotonic() - sub.messages()[-1].received_at > 10 * FAST.interval,
            5,
            what="the held stream quiet",
        )
        held = len(sub.messages())
        time.sleep(10 * FAST.interval)  # a window in which 10 readings were due
        assert len(sub.messages()) == held
        standins.engine.hold_after(math.inf)
        sub.wait_for(TELEMETRY, timeout=10, count=held + 3)
    seqs = [r.seq for r in readings(sub.messages(), "held")]
    assert seqs == list(range(1, len(seqs) + 1))


@pytest.mark.integration
def test_a_large_manifest_places_its_stand_ins_in_a_worker_process(
    broker: Broker,
) -> None:
    """Past what a thread of the gateway holds (`in_process_rate`), the stand-ins' run goes to
    a worker process: placement and hand-back cross a process boundary, learned signals and
    all, and the numbering still carries on."""
    stand_ins = StandIns(EngineController(endpoint(broker), EngineSettings(stats_interval=0.2)))
    stand_ins.start(rate=10_000.0)
    try:
        assert stand_ins.stats().workers == 1
        assert stand_ins.engine.worker_pids() != [os.getpid()]
        with Capture(broker, "edgetwin/far/telemetry/env", qos=0) as sub:
            stand_ins.serve("far", {"env": FAST}, {"env": 40})
            sub.wait_for(timeout=20, count=3)
            stand_ins.serve("far", {})
            last = stand_ins.last_seq("far", "env")
            poll(lambda: readings(sub.messages(), "far")[-1].seq == last, 5, what=f"reading {last}")
        seqs = [r.seq for r in readings(sub.messages(), "far")]
        assert seqs == list(range(41, last + 1))
    finally:
        stand_ins.stop()


def test_placements_wait_for_the_engine_to_run(broker: Broker) -> None:
    stand_ins = StandIns(EngineController(endpoint(broker)))
    assert stand_ins.serve("early", {"env": FAST}, {"env": 7})
    assert stand_ins.is_active("early")
    with Capture(broker, "edgetwin/early/telemetry/env", qos=0) as sub:
        stand_ins.start()
        try:
            [message] = sub.wait_for(timeout=10)[:1]
        finally:
            stand_ins.stop()
    assert Telemetry.decode(message.payload).seq == 8


def test_a_placed_run_takes_no_scenario_streams_and_a_scenario_run_no_placements(
    broker: Broker,
) -> None:
    engine = EngineController(endpoint(broker))
    with pytest.raises(EngineStateError):
        engine.place("pi", (), ())
    try:
        engine.start(TestScenario(devices=1, interval=1.0), workers=0)
        with pytest.raises(EngineStateError, match="no placed run"):
            engine.place("pi", (), ())
    finally:
        engine.close()
    with pytest.raises(Exception, match="no size"):
        PlacedFleet().resized(3)


def test_flat_payloads_speak_for_a_device_from_its_first_climate_stream() -> None:
    streams = PlacedStreams(Topics(), payload="flat")
    light = SensorSettings(driver="bh1750", interval=1.0)
    indoor = SensorSettings(driver="sht3x", interval=1.0)
    placed = [
        standin_stream("w", "light", light, seed=0),
        standin_stream("w", "outdoor", FAST, seed=0),
        standin_stream("w", "indoor", indoor, seed=0),
    ]
    streams.place("w", [], placed, 0.0)
    spoken = {s.sensor: streams.emit(s.index, 1_800_000_000.0) for s in streams.streams()}
    assert spoken["light"] == []
    assert spoken["indoor"] == []
    [(topic, payload, _)] = spoken["outdoor"]
    assert list(json.loads(payload)) == ["device_id", "timestamp", "temperature", "humidity"]
    # The speaker handed back: the next climate stream speaks for the device.
    streams.place("w", ["light", "indoor"], [], 0.0)
    by_sensor = {s.sensor: s.index for s in streams.streams()}
    assert streams.emit(by_sensor["indoor"], 1_800_000_001.0) != []
    assert topic == "edgetwin/w/telemetry/outdoor"
