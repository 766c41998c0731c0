"""edgetwin.testing.fleet: a simulated fleet on a real mosquitto (what it publishes, resize,
injected faults and their labels, stop, worker processes) and scenarios in virtual time."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from edgetwin.agent.contract import FaultLabel, Source, Status, Telemetry
from edgetwin.gateway.scenario import parse_scenario
from edgetwin.testing.broker import Broker
from edgetwin.testing.capture import Capture, publish
from edgetwin.testing.endpoint import MqttEndpoint
from edgetwin.testing.fleet import (
    FAULT_KINDS,
    PlayedMessage,
    SimulatedFleet,
    load_played,
    play_scenario,
)

pytestmark = pytest.mark.integration

INTERVAL = 0.2
TELEMETRY = "edgetwin/+/telemetry/+"


@pytest.fixture
def endpoint(broker: Broker) -> MqttEndpoint:
    return MqttEndpoint(broker.host, broker.port)


def wait_for_devices(capture: Capture, devices: list[str], count: int = 1) -> None:
    for device in devices:
        capture.wait_for(f"edgetwin/{device}/telemetry/+", count=count, timeout=5)


def seen(capture: Capture) -> set[str]:
    return {r.device for r in capture.readings(TELEMETRY)}


def test_a_fleet_publishes_every_device_and_the_broker_delivers_all_it_sent(
    endpoint: MqttEndpoint,
) -> None:
    with Capture(endpoint, TELEMETRY) as capture:
        with SimulatedFleet(endpoint, 20, interval=INTERVAL, seed=3) as fleet:
            devices = fleet.devices()
            assert devices == [f"device_{i:03d}" for i in range(20)]
            wait_for_devices(capture, devices, count=3)
            running = fleet.stats()
            assert running.state == "running"
            assert running.devices == 20
            assert running.workers == 0  # a thread of this process
        final = fleet.stats()
        assert final.state == "stopped"
        assert final.lost == 0
        # QoS 1 both ways: every reading the broker acknowledged reaches the subscriber.
        capture.wait_for(TELEMETRY, count=final.acked)
        readings = capture.readings(TELEMETRY)
        assert len(readings) == final.acked == final.sent
    assert seen(capture) == set(devices)
    assert {r.source for r in readings} == {Source.SIMULATED}
    assert {frozenset(r.values) for r in readings} == {
        frozenset({"temperature", "humidity", "pressure"})
    }
    for device in devices:
        capture.assert_sequence_complete(device, "env", start=1, allow_duplicates=False)


def test_resize_changes_the_devices_seen(endpoint: MqttEndpoint) -> None:
    with (
        Capture(endpoint, TELEMETRY) as capture,
        SimulatedFleet(endpoint, 6, interval=INTERVAL) as fleet,
    ):
        wait_for_devices(capture, fleet.devices())
        fleet.resize(9)
        assert fleet.devices()[6:] == ["device_006", "device_007", "device_008"]
        wait_for_devices(capture, fleet.devices()[6:])

        fleet.resize(3)
        # Readings already on their way when the worker took the new size may still come:
        # two further readings of a kept device span an interval after it.
        capture.clear()
        capture.wait_for("edgetwin/device_000/telemetry/env", count=2)
        capture.clear()
        wait_for_devices(capture, ["device_000", "device_001", "device_002"], count=2)
        assert seen(capture) == {"device_000", "device_001", "device_002"}
        # The kept devices kept their numbering through both resizes.
        capture.assert_sequence_complete("device_000", "env")


def test_an_injected_drift_is_labelled_in_the_telemetry_and_in_labels(
    endpoint: MqttEndpoint,
) -> None:
    with (
        Capture(endpoint, "edgetwin/#") as capture,
        SimulatedFleet(endpoint, 5, interval=INTERVAL, seed=1) as fleet,
    ):
        wait_for_devices(capture, ["device_003"], count=2)
        before = capture.readings(device="device_003")[-1]
        fault = fleet.inject("device_003", "drift", per_hour=36_000, duration=1.0)
        assert fault.type == "drift"
        assert fleet.injected == [fault]

        (start,) = fleet.wait_for_label(fault.id, "start")
        assert start == FaultLabel(
            event="start",
            id=fault.id,
            type="drift",
            device="device_003",
            sensor="env",
            start=fault.start,
            end=fault.end,
            params={"per_hour": 36_000.0},
        )
        fleet.wait_for_label(fault.id, "end")
        assert [label.event for label in fleet.labels(fault_id=fault.id)] == ["start", "end"]
        assert fleet.labels(device="device_000") == []

        # The readings during the fault carry its anomaly label, and drift by 10 units a second.
        capture.wait_for(
            "edgetwin/device_003/telemetry/env", lambda m: m.telemetry().ts >= fault.end
        )
        during = [r for r in capture.readings(device="device_003") if r.anomaly is not None]
        assert during
        assert {(r.anomaly.type, r.anomaly.id) for r in during if r.anomaly} == {
            ("drift", fault.id)
        }
        assert all(fault.start <= r.ts < fault.end for r in during)
        assert all(
            r.values["pressure"].value > before.values["pressure"].value + 1 for r in during[1:]
        )
        # The labels went over the broker, where any consumer sees them.
        assert [label.id for label in capture.labels("edgetwin/labels")] == [fault.id, fault.id]
        assert not [r for r in capture.readings() if r.anomaly and r.device != "device_003"]


def test_inject_refuses_unknown_kinds_and_foreign_parameters(endpoint: MqttEndpoint) -> None:
    assert set(FAULT_KINDS) == {
        "spike",
        "drift",
        "stuck",
        "dropout",
        "noise",
        "offline",
        "clock_skew",
        "duplicate",
    }
    fleet = SimulatedFleet(endpoint, 2, interval=INTERVAL)
    with pytest.raises(RuntimeError, match="not running"):
        fleet.inject("device_000", "spike")
    with fleet:
        with pytest.raises(ValueError, match="unknown fault kind 'melt'"):
            fleet.inject("device_000", "melt")
        with pytest.raises(ValueError, match="takes no 'per_hour'"):
            fleet.inject("device_000", "spike", per_hour=3)


def test_stop_stops_publishing(endpoint: MqttEndpoint) -> None:
    with Capture(endpoint, ["edgetwin/#", "marker"]) as capture:
        fleet = SimulatedFleet(endpoint, 4, interval=INTERVAL)
        fleet.start()
        wait_for_devices(capture, fleet.devices())
        final = fleet.stop()
        assert final is not None
        assert final.state == "stopped"
        assert not fleet.running
        assert fleet.stop() is None
        # Every reading the broker acknowledged came before the stop returned.
        publish(endpoint, "marker", b"stopped")
        (marker,) = capture.wait_for("marker")
        # Silence needs a window: three intervals without a reading after the marker.
        with pytest.raises(AssertionError, match="0 matched"):
            capture.wait_for(
                TELEMETRY, lambda m: m.received_at > marker.received_at, timeout=3 * INTERVAL
            )
        assert fleet.stats() == final


def test_a_fleet_in_a_worker_process(endpoint: MqttEndpoint) -> None:
    with (
        Capture(endpoint, TELEMETRY) as capture,
        SimulatedFleet(endpoint, 4, interval=INTERVAL, workers=1) as fleet,
    ):
        wait_for_devices(capture, fleet.devices(), count=2)
        stats = fleet.stats()
        assert stats.workers == 1
        assert stats.per_worker[0].pid != 0
    capture.assert_sequence_complete("device_000", "env", start=1)


def test_a_scenario_file_with_its_own_prefix_and_faults(
    endpoint: MqttEndpoint, tmp_path: Path
) -> None:
    scenario = tmp_path / "fleet.toml"
    scenario.write_text(
        """
seed = 5
interval = 0.2
[templates.room]
count = 3
[templates.room.sensors.air.quantities.temperature]
[[faults]]
type = "spike"
devices = "room-001"
after = 0
duration = 60
magnitude = 50
"""
    )
    with (
        Capture(endpoint, "lab/#") as capture,
        SimulatedFleet(endpoint, scenario=scenario, prefix="lab") as fleet,
    ):
        assert fleet.devices() == ["room-000", "room-001", "room-002"]
        (label,) = fleet.wait_for_label("spike-0")
        assert (label.device, label.sensor, label.params) == (
            "room-001",
            "air",
            {"magnitude": 50.0},
        )
        spiked = capture.wait_for(
            "lab/room-001/telemetry/air", lambda m: m.telemetry().anomaly is not None
        )
        assert spiked[0].telemetry().values["temperature"].unit == "°C"


# -- virtual time --------------------------------------------------------------------------

SCENARIO = """
seed = 9
start = 2026-03-01T00:00:00Z
interval = 10
[templates.dev]
count = 3
id_format = "dev-{index}"
[templates.dev.sensors.env.quantities.temperature]
[templates.dev.sensors.env.quantities.humidity]
[[faults]]
type = "drift"
devices = "dev-1"
after = "1m"
duration = "2m"
per_hour = 6
[[faults]]
type = "offline"
devices = "dev-2"
after = "4m"
duration = "1m"
"""


def test_play_scenario_into_a_list_and_into_a_file_gives_the_same_messages(
    tmp_path: Path,
) -> None:
    scenario = parse_scenario(tomllib.loads(SCENARIO))
    played = play_scenario(scenario, "10m")
    counts = play_scenario(scenario, "10m", into=tmp_path / "run.jsonl")
    assert load_played(tmp_path / "run.jsonl") == played
    assert counts.total == len(played)
    assert (counts.labels, counts.status) == (4, 2)

    kinds = [type(m.document) for m in played]
    assert kinds.count(FaultLabel) == 4
    assert kinds.count(Status) == 2
    assert kinds.count(Telemetry) == counts.telemetry
    assert [m.t for m in played] == sorted(m.t for m in played)
    drifted = [
        m.document for m in played if isinstance(m.document, Telemetry) and m.document.anomaly
    ]
    assert {d.device for d in drifted} == {"dev-1"}

    again: list[PlayedMessage] = []
    assert play_scenario(scenario, "10m", into=again) is again
    assert again == played
    other = play_scenario(scenario, "10m", seed=10)
    assert [m.payload for m in other] != [m.payload for m in played]


def test_play_default_devices_from_a_start(tmp_path: Path) -> None:
    played = play_scenario(None, 5, devices=2, interval=1, start="2026-01-02T00:00:00")
    assert len(played) == 10
    first = played[0].document
    assert isinstance(first, Telemetry)
    assert first.seq == 1
    assert 1_767_312_000 <= first.ts < 1_767_312_001
    assert {m.topic for m in played} == {
        "edgetwin/device_000/telemetry/env",
        "edgetwin/device_001/telemetry/env",
    }
