"""Scenarios: file format and validation, determinism, faults with their labels, resizing."""

from __future__ import annotations

import json
import pickle
import re
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from edgetwin.agent.contract import FaultLabel, FlatReading, Status, Telemetry, Topics
from edgetwin.gateway.scenario import (
    FAULT_TYPES,
    FaultSpec,
    Message,
    Scenario,
    ScenarioError,
    default_scenario,
    load_scenario,
    parse_scenario,
)
from edgetwin.gateway.scenario.model import (
    AutoShard,
    Shard,
    parse_shard,
    shard_from_environment,
)
from edgetwin.gateway.scenario.virtual import run_virtual
from edgetwin.hardware.quantities import VOCABULARY, default_signal
from edgetwin.hardware.signals import LightRandom, derive_seed

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "scenario.toml"
START = 1_795_737_600.0  # 2026-11-27T00:00:00Z
TOPICS = Topics()
LABELS = "edgetwin/labels"


class ListSink:
    def __init__(self) -> None:
        self.messages: list[tuple[float, Message]] = []

    def write(self, t: float, message: Message) -> None:
        self.messages.append((t, message))

    def close(self) -> None:
        pass


def play(
    scenario: Scenario, duration: float, *, start: float = START, payload: str = "edgetwin"
) -> list[tuple[float, Message]]:
    sink = ListSink()
    assert payload in ("edgetwin", "flat")
    run_virtual(
        scenario, start, duration, sink, payload="flat" if payload == "flat" else "edgetwin"
    )
    return sink.messages


def telemetry(messages: list[tuple[float, Message]]) -> list[tuple[float, Telemetry]]:
    return [
        (t, Telemetry.decode(payload))
        for t, (topic, payload, retain) in messages
        if topic != LABELS and not retain
    ]


def labels(messages: list[tuple[float, Message]]) -> list[dict[str, Any]]:
    found = [payload for _, (topic, payload, _) in messages if topic == LABELS]
    for payload in found:
        FaultLabel.decode(payload)  # the contract's document, or ContractError
    return [json.loads(payload) for payload in found]


# -- the default fleet and the wire format ------------------------------------------------------


def test_default_scenario_names_devices_like_the_original_simulator() -> None:
    assert [s.device for s in default_scenario(3).streams()] == [
        "device_000",
        "device_001",
        "device_002",
    ]
    streams = default_scenario(1500).streams()
    assert streams[0].device == "device_0000"
    assert streams[-1].device == "device_1499"
    assert {s.sensor for s in streams} == {"env"}
    assert default_scenario(0).streams() == []


def test_streams_have_deterministic_phases_within_their_interval() -> None:
    streams = default_scenario(200, interval=2.0, seed=7).streams()
    assert [s.index for s in streams] == list(range(200))
    assert all(0 <= s.phase < 2.0 and s.interval == 2.0 for s in streams)
    assert len({s.phase for s in streams}) == 200  # spread, not all due at once
    assert streams == default_scenario(200, interval=2.0, seed=7).streams()
    assert streams != default_scenario(200, interval=2.0, seed=8).streams()


def test_payloads_decode_with_the_contract_and_count_seq_from_one() -> None:
    scenario = default_scenario(2)
    readings = telemetry(play(scenario, 5.0))
    assert len(readings) == 10
    first = readings[0][1]
    assert first.source == "simulated"
    assert {q: v.unit for q, v in first.values.items()} == {
        "temperature": "°C",
        "humidity": "%RH",
        "pressure": "hPa",
    }
    assert 15 < first.values["temperature"].value < 30
    assert 20 < first.values["humidity"].value < 80
    assert 1000 < first.values["pressure"].value < 1030
    for device in ("device_000", "device_001"):
        mine = [r for _, r in readings if r.device == device]
        assert [r.seq for r in mine] == [1, 2, 3, 4, 5]
        assert all(r.anomaly is None for r in mine)
    # Each reading's ts is its scheduled time.
    assert all(abs(r.ts - t) < 1e-5 for t, r in readings)


def test_values_are_the_hardware_signal_models_own() -> None:
    """The generator flattens models for speed; the numbers must stay the models' own."""
    scenario = default_scenario(3, seed=9)
    stream = scenario.streams()[2]
    generator = scenario.generator(TOPICS, streams=[2])
    models = {
        q: default_signal(q, derive_seed(9, stream.device, "env", q), rng=LightRandom)
        for q in ("temperature", "humidity", "pressure")
    }
    for k in range(50):
        t = START + stream.phase + k
        (message,) = generator.emit(2, t)
        reading = Telemetry.decode(message[1])
        for quantity, model in models.items():
            assert reading.values[quantity].value == round(model.sample(t), 2)


def test_flat_payload_is_the_original_simulators() -> None:
    messages = play(default_scenario(2), 3.0, payload="flat")
    readings = [FlatReading.decode(payload) for _, (_, payload, _) in messages]
    assert len(readings) == 6
    assert {r.device_id for r in readings} == {"device_000", "device_001"}
    assert all(r.temperature == round(r.temperature, 2) for r in readings)


def test_flat_payload_uses_only_a_devices_first_climate_sensor(tmp_path: Path) -> None:
    scenario = scenario_from(
        tmp_path,
        """
        [templates.box]
        count = 1
        [templates.box.sensors.light.quantities.illuminance]
        [templates.box.sensors.env.quantities.temperature]
        [templates.box.sensors.env.quantities.humidity]
        [templates.box.sensors.env2.quantities.temperature]
        [templates.box.sensors.env2.quantities.humidity]
        """,
    )
    messages = play(scenario, 3.0, payload="flat")
    assert {topic for _, (topic, _, _) in messages} == {"edgetwin/box-000/telemetry/env"}
    assert len(messages) == 3


def test_scenario_pickles_for_worker_processes() -> None:
    scenario = load_scenario(EXAMPLE)
    clone = pickle.loads(pickle.dumps(scenario))
    assert clone == scenario
    assert clone.streams() == scenario.streams()


# -- determinism ---------------------------------------------------------------------------------


def test_same_scenario_and_seed_give_identical_payloads_and_labels() -> None:
    one = play(load_scenario(EXAMPLE), 3 * 3600.0, start=START + 6 * 3600)
    two = play(load_scenario(EXAMPLE), 3 * 3600.0, start=START + 6 * 3600)
    assert one == two
    assert labels(one)  # the window holds fault starts: labels are compared too


def test_a_different_seed_gives_different_values() -> None:
    base = load_scenario(EXAMPLE)
    other = msgspec_replace(base, seed=base.seed + 1)
    one = telemetry(play(base, 600.0))
    two = telemetry(play(other, 600.0))
    first = {(r.device, r.sensor): r.values for _, r in one}
    second = {(r.device, r.sensor): r.values for _, r in two}
    assert first.keys() == second.keys()
    assert first != second


def test_values_do_not_depend_on_how_streams_are_split_or_interleaved() -> None:
    scenario = default_scenario(6, seed=3)
    times = [START + k for k in range(20)]
    whole = scenario.generator(TOPICS)
    expected = {
        s.index: [whole.emit(s.index, t + s.phase) for t in times] for s in scenario.streams()
    }
    odd = scenario.generator(TOPICS, streams=[5, 3, 1])
    odd.warm()  # building state ahead changes nothing
    got: dict[int, list[list[Message]]] = {1: [], 3: [], 5: []}
    for t in times:  # another order across streams than above
        for index in (5, 1, 3):
            got[index].append(odd.emit(index, t + scenario.streams()[index].phase))
    assert got == {i: expected[i] for i in (1, 3, 5)}
    with pytest.raises(ScenarioError, match="stream 0"):
        odd.emit(0, START)


# -- faults --------------------------------------------------------------------------------------

FAULTS_TOML = """
seed = 5
start = 2026-11-27T00:00:00Z
interval = 10.0

[templates.dev]
count = 9
id_format = "dev-{index}"
[templates.dev.sensors.env.quantities.temperature]
[templates.dev.sensors.env.quantities.humidity]
[templates.dev.sensors.aux]
interval = 20.0
quantities.pressure = {}

[[faults]]
id = "f-spike"
type = "spike"
devices = "dev-0"
sensor = "env"
quantities = ["temperature"]
magnitude = 7.5
after = "10m"
duration = "5m"

[[faults]]
id = "f-drift"
type = "drift"
devices = "dev-1"
sensor = "env"
per_hour = 6.0
after = "10m"
duration = "20m"

[[faults]]
id = "f-stuck"
type = "stuck"
devices = "dev-2"
sensor = "env"
quantities = ["humidity"]
after = "10m"
duration = "10m"

[[faults]]
id = "f-dropout"
type = "dropout"
devices = "dev-3"
sensor = "env"
after = "10m"
duration = "10m"

[[faults]]
id = "f-noise"
type = "noise"
devices = "dev-4"
sensor = "env"
sigma = 3.0
after = "10m"
duration = "20m"

[[faults]]
id = "f-offline"
type = "offline"
devices = "dev-5"
after = "10m"
duration = "10m"

[[faults]]
id = "f-skew"
type = "clock_skew"
devices = "dev-6"
sensor = "env"
skew = -90.0
after = "10m"
duration = "10m"

[[faults]]
id = "f-dup"
type = "duplicate"
devices = "dev-7"
sensor = "env"
copies = 2
after = "10m"
duration = "10m"
"""
FAULT_START = START + 600.0


def scenario_from(tmp_path: Path, text: str, name: str = "scenario.toml") -> Scenario:
    path = tmp_path / name
    path.write_text(text)
    return load_scenario(path)


def msgspec_replace(scenario: Scenario, **changes: Any) -> Scenario:
    import msgspec

    return msgspec.structs.replace(scenario, **changes)


def by_stream(
    messages: list[tuple[float, Message]],
) -> dict[tuple[str, str], list[tuple[float, Telemetry]]]:
    found: dict[tuple[str, str], list[tuple[float, Telemetry]]] = {}
    for t, reading in telemetry(messages):
        found.setdefault((reading.device, reading.sensor), []).append((t, reading))
    return found


@pytest.fixture(scope="module")
def fault_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("faults")
    faulty = scenario_from(tmp, FAULTS_TOML)
    clean = msgspec_replace(faulty, faults=[])
    messages = play(faulty, 3600.0)
    return {
        "messages": messages,
        "streams": by_stream(messages),
        "clean": by_stream(play(clean, 3600.0)),
        "labels": labels(messages),
        "scenario": faulty,
    }


def windowed(
    readings: list[tuple[float, Telemetry]], start: float, end: float
) -> tuple[list[tuple[float, Telemetry]], list[tuple[float, Telemetry]]]:
    inside = [(t, r) for t, r in readings if start <= t < end]
    outside = [(t, r) for t, r in readings if not start <= t < end]
    return inside, outside


def check_labelled(
    run: Mapping[str, Any], fault_id: str, device: str, sensor: str, end: float
) -> list[tuple[float, Telemetry]]:
    """The stream's readings in the fault's window carry its label, the others none; returns
    the readings inside."""
    inside, outside = windowed(run["streams"][(device, sensor)], FAULT_START, end)
    assert inside, f"{fault_id}: no reading inside the window"
    for _, reading in inside:
        assert reading.anomaly is not None, f"{fault_id}: unlabelled reading in the window"
        assert reading.anomaly.id == fault_id
        assert reading.anomaly.start == FAULT_START
        assert reading.anomaly.end == end
    assert all(r.anomaly is None for _, r in outside)
    return inside


def values_of(readings: list[tuple[float, Telemetry]], quantity: str) -> list[float]:
    return [r.values[quantity].value for _, r in readings]


def test_spike_adds_its_magnitude_to_the_chosen_quantity_only(fault_run: dict[str, Any]) -> None:
    inside = check_labelled(fault_run, "f-spike", "dev-0", "env", FAULT_START + 300)
    assert all(r.anomaly is not None and r.anomaly.type == "spike" for _, r in inside)
    clean = dict(fault_run["clean"][("dev-0", "env")])
    for t, reading in inside:
        base = clean[t]
        assert reading.values["temperature"].value == pytest.approx(
            base.values["temperature"].value + 7.5, abs=0.011
        )
        assert reading.values["humidity"] == base.values["humidity"]
    # Outside the window the stream is exactly what it is without faults.
    _, outside = windowed(fault_run["streams"][("dev-0", "env")], FAULT_START, FAULT_START + 300)
    assert all(r.values == clean[t].values for t, r in outside)
    # Another sensor of the same device is untouched.
    assert all(r.anomaly is None for _, r in fault_run["streams"][("dev-0", "aux")])


def test_drift_grows_linearly_from_the_fault_start(fault_run: dict[str, Any]) -> None:
    inside = check_labelled(fault_run, "f-drift", "dev-1", "env", FAULT_START + 1200)
    clean = dict(fault_run["clean"][("dev-1", "env")])
    for t, reading in inside:
        for quantity in ("temperature", "humidity"):
            expected = clean[t].values[quantity].value + 6.0 * (t - FAULT_START) / 3600
            assert reading.values[quantity].value == pytest.approx(expected, abs=0.011)


def test_stuck_holds_the_last_value_before_the_fault(fault_run: dict[str, Any]) -> None:
    inside = check_labelled(fault_run, "f-stuck", "dev-2", "env", FAULT_START + 600)
    before = [r for t, r in fault_run["streams"][("dev-2", "env")] if t < FAULT_START][-1]
    assert set(values_of(inside, "humidity")) == {before.values["humidity"].value}
    assert len(set(values_of(inside, "temperature"))) > 1  # not chosen: keeps moving


def test_dropout_publishes_nothing_but_its_labels(fault_run: dict[str, Any]) -> None:
    readings = fault_run["streams"][("dev-3", "env")]
    inside, _ = windowed(readings, FAULT_START, FAULT_START + 600)
    assert inside == []
    assert readings, "the stream publishes outside the dropout"
    seqs = [r.seq for _, r in readings]
    assert seqs == list(range(1, len(seqs) + 1))  # readings not taken are not numbered
    assert all(r.anomaly is None for _, r in readings)


def test_noise_burst_adds_noise_of_the_given_sigma(fault_run: dict[str, Any]) -> None:
    inside = check_labelled(fault_run, "f-noise", "dev-4", "env", FAULT_START + 1200)
    clean = dict(fault_run["clean"][("dev-4", "env")])
    residuals = [
        r.values["temperature"].value - clean[t].values["temperature"].value for t, r in inside
    ]
    assert len(residuals) == 120
    assert 2.0 < statistics.stdev(residuals) < 4.0


def test_device_offline_goes_silent_behind_a_retained_last_will(
    fault_run: dict[str, Any],
) -> None:
    end = FAULT_START + 600
    for sensor in ("env", "aux"):
        readings = fault_run["streams"][("dev-5", sensor)]
        assert windowed(readings, FAULT_START, end)[0] == []
        assert any(t >= end for t, _ in readings)
    statuses = [
        (t, topic, Status.decode(payload))
        for t, (topic, payload, retain) in fault_run["messages"]
        if retain
    ]
    assert [(topic, s.state, s.reason, s.boot) for _, topic, s in statuses] == [
        ("edgetwin/dev-5/status", "offline", "connection_lost", 0),
        ("edgetwin/dev-5/status", "online", "birth", 1),
    ]
    assert statuses[0][2].ts == FAULT_START
    assert statuses[1][2].ts == end
    assert FAULT_START <= statuses[0][0] < FAULT_START + 10
    assert end <= statuses[1][0] < end + 10


def test_clock_skew_shifts_ts_only(fault_run: dict[str, Any]) -> None:
    inside = check_labelled(fault_run, "f-skew", "dev-6", "env", FAULT_START + 600)
    clean = dict(fault_run["clean"][("dev-6", "env")])
    for t, reading in inside:
        assert reading.ts == pytest.approx(t - 90.0, abs=1e-5)
        assert reading.values == clean[t].values


def test_duplicates_repeat_each_reading(fault_run: dict[str, Any]) -> None:
    inside = check_labelled(fault_run, "f-dup", "dev-7", "env", FAULT_START + 600)
    seqs = [r.seq for _, r in inside]
    assert len(seqs) == 3 * len(set(seqs))
    assert all(seqs.count(s) == 3 for s in seqs)


def test_every_fault_type_is_labelled_on_the_labels_topic(fault_run: dict[str, Any]) -> None:
    found = fault_run["labels"]
    assert {label["type"] for label in found} == set(FAULT_TYPES)
    by_fault: dict[tuple[str, str | None], list[dict[str, Any]]] = {}
    for label in found:
        by_fault.setdefault((label["id"], label.get("sensor")), []).append(label)
    scenario: Scenario = fault_run["scenario"]
    for spec in scenario.fault_specs():
        sensor = None if spec.type == "offline" else "env"
        events = by_fault[(spec.id, sensor)]
        assert [e["event"] for e in events] == ["start", "end"], spec.id
        for event in events:
            assert event["type"] == spec.type
            assert event["device"] == spec.devices
            assert event["start"] == spec.start == FAULT_START
            assert event["end"] == spec.end
            assert event.get("params", {}) == spec.params()
    assert by_fault[("f-spike", "env")][0]["params"] == {
        "magnitude": 7.5,
        "quantities": ["temperature"],
    }
    # Ground truth matches the payloads: each label's stream has its anomaly in the window.
    assert len(by_fault) == len(scenario.fault_specs())


def test_an_injected_fault_behaves_like_a_scheduled_one(tmp_path: Path) -> None:
    scheduled = scenario_from(tmp_path, FAULTS_TOML)
    plain = msgspec_replace(scheduled, faults=[])
    spike = next(f for f in scheduled.fault_specs() if f.id == "f-spike")
    one = scheduled.generator(TOPICS, streams=[0])
    two = plain.generator(TOPICS, streams=[0])
    phase = scheduled.streams()[0].phase
    out_one: list[list[Message]] = []
    out_two: list[list[Message]] = []
    for k in range(120):
        t = START + phase + 10 * k
        if k == 30:
            two.inject(spike)  # mid-run, before the fault starts
        out_one.append(one.emit(0, t))
        out_two.append(two.emit(0, t))
    assert out_one == out_two
    assert any(topic == LABELS for batch in out_two for topic, _, _ in batch)


def test_inject_reaches_only_the_matching_streams() -> None:
    scenario = default_scenario(4)
    generator = scenario.generator(TOPICS)
    generator.inject(
        FaultSpec(id="x", type="dropout", start=START, duration=100.0, devices=["device_00[12]"])
    )
    silent = {
        s.device
        for s in scenario.streams()
        if not [m for m in generator.emit(s.index, START + 1) if m[0] != LABELS]
    }
    assert silent == {"device_001", "device_002"}


# -- validation ----------------------------------------------------------------------------------


def fault_toml(**fields: object) -> str:
    """A [[faults]] entry on room-000 (TOML literal strings are Python's repr of a str)."""
    fields = {"devices": "room-000", **fields}
    return "[[faults]]\n" + "".join(f"{key} = {value!r}\n" for key, value in fields.items())


VALID = """
seed = 1
[templates.room]
count = 2
[templates.room.sensors.env.quantities.temperature]
"""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            VALID + "intervall = 3\n",
            "unknown key 'templates.room.sensors.env.quantities.temperature.intervall'",
        ),
        (
            VALID.replace("count = 2", "count = 2\nintervall = 2"),
            "unknown key 'templates.room.intervall'",
        ),
        ("seed = 'x'\n" + VALID.replace("seed = 1", ""), "seed: Expected `int`, got `str`"),
        (VALID.replace("count = 2", "count = -1"), "templates.room.count"),
        (VALID + "decimals = 99\n", "templates.room.sensors.env.quantities.temperature.decimals"),
        (
            VALID.replace("count = 2", "count = 2\nid_format = 'Room {index}'"),
            "templates.room.id_format",
        ),
        (VALID.replace("count = 2", "count = 2\nid_format = 'room'"), "templates.room.id_format"),
        (
            VALID + "[templates.room.sensors.env.quantities.level]\n",
            "quantities.level.unit: required",
        ),
        (
            VALID + "[templates.room.sensors.env.quantities.level]\nunit = 'm'\n",
            "quantities.level.signal: no default signal",
        ),
        (
            VALID + "signal = { model = 'wobble' }\n",
            "templates.room.sensors.env.quantities.temperature.signal",
        ),
        (
            VALID + "signal = { model = 'walk', lo = 5, hi = 1, step = 0.1 }\n",
            "temperature.signal: lo must not exceed hi",
        ),
        (
            VALID + "signal = { model = 'replay', file = 'missing.csv' }\n",
            "temperature.signal.file",
        ),
        (
            VALID + fault_toml(type="dropout", magnitude=3, after=10, duration=5),
            "faults[0]: a dropout fault takes no 'magnitude'",
        ),
        (
            VALID + "[[faults]]\ntype = 'spike'\ndevices = 'room-000'\nduration = 5\n",
            "faults[0]: a fault needs exactly one of 'after'",
        ),
        (
            VALID
            + "[[faults]]\ntype = 'spike'\ndevices = 'room-000'\nafter = 'soon'\nduration = 5\n",
            "faults[0]: not a duration",
        ),
        (
            VALID + "[[faults]]\ntype = 'melt'\ndevices = 'room-000'\nafter = 1\nduration = 5\n",
            "faults[0].type",
        ),
        (
            "start = 2026-01-01T00:00:00Z\n"
            + VALID
            + "[[faults]]\ntype = 'spike'\ndevices = 'hall-*'\nafter = 1\nduration = 5\n",
            "faults[0].devices: 'hall-*'",
        ),
        (
            VALID + fault_toml(type="offline", sensor="env", after=1, duration=5),
            "takes the whole device",
        ),
        ("seed = 1\n", "templates"),
        ("seed = [\n", "not valid TOML"),
    ],
)
def test_invalid_scenarios_are_refused_naming_file_and_key(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


def test_duplicate_ids_across_templates_are_refused() -> None:
    document = {
        "templates": {
            "a": {
                "count": 2,
                "id_format": "dev-{index}",
                "sensors": {"s": {"quantities": {"temperature": {}}}},
            },
            "b": {
                "count": 2,
                "id_format": "dev-{index}",
                "sensors": {"s": {"quantities": {"humidity": {}}}},
            },
        }
    }
    with pytest.raises(ScenarioError, match=r"templates\.b\.id_format: device 'dev-0'"):
        parse_scenario(document, where="doc")


def test_relative_faults_need_a_start(tmp_path: Path) -> None:
    scenario = scenario_from(
        tmp_path,
        VALID + "[[faults]]\ntype = 'spike'\ndevices = 'room-000'\nafter = 1\nduration = 5\n",
    )
    with pytest.raises(ScenarioError, match=r"faults\[0\]\.after: the scenario has no start"):
        scenario.generator(TOPICS)
    assert scenario.with_start(START).fault_specs()[0].start == START + 1


def test_the_example_scenario_loads_with_every_fault_type() -> None:
    scenario = load_scenario(EXAMPLE)
    assert scenario.device_count() == 100
    assert {f.type for f in scenario.faults} == set(FAULT_TYPES)
    devices = scenario.streams()
    assert {s.device.split("-")[0] for s in devices} == {"room", "freezer", "tank"}


def test_replayed_and_composed_signals_follow_their_spec(tmp_path: Path) -> None:
    (tmp_path / "rec.csv").write_text("timestamp,level\n0,1.0\n60,2.0\n120,3.0\n")
    scenario = scenario_from(
        tmp_path,
        """
        interval = 60.0
        [templates.tank]
        count = 1
        [templates.tank.sensors.s.quantities.level]
        unit = "m"
        signal = { model = "replay", file = "rec.csv", loop = true }
        [templates.tank.sensors.s.quantities.voltage]
        signal = [{ model = "constant", value = 1.0 }, { model = "daily", amplitude = 0.0 }]
        clamp = false
        """,
    )
    readings = [r for _, r in telemetry(play(scenario, 60.0 * 7))]
    assert [r.values["level"].value for r in readings] == [1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 1.0]
    assert {r.values["voltage"].value for r in readings} == {1.0}


def test_values_are_published_at_the_vocabularys_decimals_unless_the_spec_says(
    tmp_path: Path,
) -> None:
    scenario = scenario_from(
        tmp_path,
        """
        [templates.box]
        count = 1
        [templates.box.sensors.s.quantities]
        voltage = { signal = { model = "constant", value = 1.23456789 } }
        motion = { signal = { model = "constant", value = 1.0 } }
        temperature = { signal = { model = "constant", value = 21.23456789 }, decimals = 4 }
        level = { unit = "m", signal = { model = "constant", value = 0.123456789 } }
        """,
    )
    (_, reading), *_ = telemetry(play(scenario, 1.0))
    values = {name: v.value for name, v in reading.values.items()}
    assert values == {"voltage": 1.235, "motion": 1, "temperature": 21.2346, "level": 0.12}
    assert VOCABULARY["voltage"].decimals == 3
    assert VOCABULARY["motion"].decimals == 0


# -- resizing ------------------------------------------------------------------------------------


def test_resized_keeps_the_mix_and_the_ids() -> None:
    scenario = load_scenario(EXAMPLE)  # rooms 80, freezers 15, tanks 5
    ids = scenario.device_ids()
    assert scenario.resized(100).device_ids() == ids  # its own size: the same fleet
    small = scenario.resized(20).device_ids()
    assert sum(d.startswith("room-") for d in small) == 16
    assert sum(d.startswith("freezer-") for d in small) == 3
    assert sum(d.startswith("tank-") for d in small) == 1
    big = scenario.resized(1000)
    assert big.device_count() == 1000
    big_ids = big.device_ids()
    assert len(set(big_ids)) == 1000
    assert big_ids[:100] == ids  # growing only appends
    assert sum(d.startswith("room-") for d in big_ids) == 800
    # Streams (and their indices) of the devices kept never change.
    streams = scenario.streams()
    assert big.streams()[: len(streams)] == streams
    assert scenario.resized(20).streams() == streams[: len(scenario.resized(20).streams())]
    assert scenario.resized(0).streams() == []
    assert scenario.resized(0).resized(100).device_ids() == ids


def test_resized_default_scenario_keeps_its_id_width() -> None:
    scenario = default_scenario(10)
    assert scenario.resized(1200).device_ids()[1000] == "device_1000"
    assert scenario.resized(1200).device_ids()[:10] == scenario.device_ids()
    with pytest.raises(ScenarioError):
        scenario.resized(-1)
    with pytest.raises(ScenarioError, match="every count is 0"):
        default_scenario(0).resized(5)


# -- virtual time --------------------------------------------------------------------------------


def test_a_virtual_hour_of_100_devices_into_a_file(tmp_path: Path) -> None:
    from edgetwin.gateway.scenario.virtual import JsonLinesSink

    out = tmp_path / "hour.jsonl"
    sink = JsonLinesSink(out)
    scenario = default_scenario(100, interval=10.0)
    try:
        counts = run_virtual(scenario, START, 3600.0, sink)
    finally:
        sink.close()
    assert counts.telemetry == 100 * 360
    lines = out.read_bytes().splitlines()
    assert len(lines) == counts.total
    times = []
    for line in lines[::97]:
        record = json.loads(line)
        assert record["topic"].startswith("edgetwin/device_")
        reading = Telemetry.decode(json.dumps(record["payload"], ensure_ascii=False))
        assert abs(reading.ts - record["t"]) < 1e-5
        times.append(record["t"])
    assert times == sorted(times)
    assert times[0] >= START
    assert times[-1] < START + 3600


# -- shards ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("devices", "count"), [(10, 3), (7, 7), (3, 5), (100_000, 64)])
def test_shards_split_the_fleet_into_consecutive_runs_within_one_of_each_other(
    devices: int, count: int
) -> None:
    shards = [Shard(index=k, count=count) for k in range(count)]
    owners = [[k for k, s in enumerate(shards) if s.plays(p, devices)] for p in range(devices)]
    assert all(len(found) == 1 for found in owners)  # every device played exactly once
    flat = [found[0] for found in owners]
    assert flat == sorted(flat)  # consecutive runs, in shard order
    sizes = [s.size(devices) for s in shards]
    assert sizes == [flat.count(k) for k in range(count)]
    assert max(sizes) - min(sizes) <= 1


def test_a_sharded_scenario_keeps_the_fleets_ids_indices_and_phases() -> None:
    whole = load_scenario(EXAMPLE).resized(30)
    streams = {s.index: s for s in whole.iter_streams()}
    seen: list[int] = []
    for k in range(4):
        part = whole.sharded(Shard(index=k, count=4))
        mine = list(part.iter_streams())
        assert all(streams[s.index] == s for s in mine)
        assert part.device_count() == len({s.device for s in mine}) == len(part.device_ids())
        assert part.fleet_size() == 30
        seen += [s.index for s in mine]
    assert seen == sorted(streams)


@pytest.mark.parametrize(
    ("environ", "hostname", "expected"),
    [
        ({}, "sim-3", None),
        ({"EDGETWIN_SHARD": "2/5"}, "whatever", "2/5"),
        ({"EDGETWIN_SHARD_COUNT": "4"}, "edgetwin-sim-3", "3/4"),
        ({"EDGETWIN_SHARD": "auto/3"}, "0123456789ab", "auto/3"),
        ({"EDGETWIN_SHARD": " auto / 3 "}, "sim-1", "auto/3"),
    ],
)
def test_the_shard_comes_from_the_orchestrators_environment(
    environ: dict[str, str], hostname: str, expected: str | None
) -> None:
    shard = shard_from_environment(environ, hostname)
    assert (None if shard is None else str(shard)) == expected


@pytest.mark.parametrize(
    ("text", "environ", "hostname", "reason"),
    [
        ("3/3", {}, "", "shards count from 0"),
        ("1/0", {}, "", "shard '1/0'"),
        ("half", {}, "", "K/N"),
        (None, {"EDGETWIN_SHARD_COUNT": "4"}, "laptop", "ends in no ordinal"),
        (None, {"EDGETWIN_SHARD_COUNT": "4"}, "sim-4", "shards count from 0"),
        (None, {"EDGETWIN_SHARD": "auto/0"}, "", "N is 1..100000"),
        (None, {"EDGETWIN_SHARD": "auto/x"}, "", "K/N"),
        # A gateway's engine ([engine] shard) has no claims: it is told its shard.
        ("auto/3", {}, "", "only `edgetwin simulate` claims its shard"),
    ],
)
def test_a_bad_shard_is_refused_with_its_reason(
    text: str | None, environ: dict[str, str], hostname: str, reason: str
) -> None:
    def resolve() -> Shard | AutoShard | None:
        return parse_shard(text) if text is not None else shard_from_environment(environ, hostname)

    with pytest.raises(ScenarioError, match=re.escape(reason)):
        resolve()
