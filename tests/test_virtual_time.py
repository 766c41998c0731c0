"""Virtual time (gateway/scenario/virtual.py): the exact bytes and order of a run, pinned.

`run_virtual` once ordered the readings with a heap of its own; it now steps the engine's
schedule. These tests pin what it wrote before that change, byte for byte, for scenarios that
exercise every source of ordering: faults (offline statuses, labels, duplicates), several
intervals, streams whose first deadlines are equal, either exactly (phases forced equal) or
after rounding to a float near the epoch (5,000 devices at 1 Hz have a few such pairs). The
`records` digests below were taken from the heap implementation (commit 18e5cba); a change that
moves any byte, or the order of two messages, of a virtual run fails here. The `jsonl` digests
were taken again when the file's `t` went from microseconds to the float's every bit (the
key shards' files merge by), with `records` unchanged: the same messages, in the same order.

The order is also stated as a rule and checked against a reference: messages come in the order
of (t, stream index), t being a stream's first deadline `start + phase` plus `k * interval`,
computed in that order of float operations; a stream's messages at one tick in the order its
generator returns them.
"""

from __future__ import annotations

import hashlib
import heapq
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from edgetwin.agent.contract import Topics
from edgetwin.gateway.scenario import Message, Scenario, default_scenario, load_scenario
from edgetwin.gateway.scenario.virtual import Counts, JsonLinesSink, run_virtual

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "scenario.toml"
START = 1_795_737_600.0  # 2026-11-27T00:00:00Z

# Three templates, four intervals (0.5, 10, 15, 20 s), every fault type; dev-2's offline fault
# covers a device with two sensors, so one status speaks for both.
FAULTS_TOML = """
seed = 11
start = 2026-11-27T00:00:00Z
interval = 10.0

[templates.dev]
count = 8
id_format = "dev-{index}"
[templates.dev.sensors.env.quantities.temperature]
[templates.dev.sensors.env.quantities.humidity]
[templates.dev.sensors.aux]
interval = 20.0
quantities.pressure = {}

[templates.fast]
count = 2
interval = 0.5
[templates.fast.sensors.env.quantities.temperature]
[templates.fast.sensors.env.quantities.humidity]

[templates.slow]
count = 3
interval = 15.0
[templates.slow.sensors.probe.quantities.temperature]
signal = [{ model = "constant", value = 4.0 }, { model = "noise", sigma = 0.2 }]

[[faults]]
type = "spike"
devices = "dev-0"
sensor = "env"
quantities = ["temperature"]
magnitude = 7.5
after = "5m"
duration = "5m"

[[faults]]
type = "drift"
devices = ["dev-1", "fast-000"]
per_hour = 6.0
after = "10m"
duration = "20m"

[[faults]]
type = "stuck"
devices = "dev-2"
sensor = "env"
after = "10m"
duration = "10m"

[[faults]]
type = "offline"
devices = "dev-2"
after = "12m"
duration = "4m"

[[faults]]
type = "dropout"
devices = "slow-*"
after = "10m"
duration = "10m"

[[faults]]
type = "noise"
devices = "dev-4"
sigma = 3.0
after = "15m"
duration = "20m"

[[faults]]
type = "offline"
devices = "fast-001"
after = "20m"
duration = "90s"

[[faults]]
type = "clock_skew"
devices = "dev-6"
skew = -90.0
after = "10m"
duration = "10m"

[[faults]]
type = "duplicate"
devices = ["dev-7", "fast-001"]
copies = 2
after = "25m"
duration = "10m"
"""


@dataclass(frozen=True)
class Pin:
    """What a run wrote: sha256 of every (t, topic, retain, payload) the sink got, with `t`
    as repr (the broker sink publishes exactly this sequence); sha256 of the JSON lines file;
    the counts `run_virtual` returns."""

    records: str
    jsonl: str
    counts: tuple[int, int, int]  # telemetry, labels, status


class RecordingSink:
    """Hashes what it is given, and writes the JSON lines file beside it."""

    def __init__(self, path: Path) -> None:
        self.digest = hashlib.sha256()
        self.jsonl = JsonLinesSink(path)
        self.messages: list[tuple[float, Message]] = []

    def write(self, t: float, message: Message) -> None:
        topic, payload, retain = message
        self.digest.update(b"%r %s %d %s\n" % (t, topic.encode(), retain, payload))
        self.messages.append((t, message))
        self.jsonl.write(t, message)

    def close(self) -> None:
        self.jsonl.close()


def faults_scenario(tmp_path: Path) -> Scenario:
    path = tmp_path / "faults.toml"
    path.write_text(FAULTS_TOML)
    return load_scenario(path)


def equal_phases(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Scenario:
    # Every stream's phase 0: all first deadlines tie, and the 0.5, 10, 15 and 20 s streams
    # meet again on every common multiple. Phases come from a hash, so only this forces it.
    import edgetwin.gateway.scenario.model as model

    monkeypatch.setattr(model, "_phase", lambda seed, device, sensor, interval: 0.0)
    return faults_scenario(tmp_path)


def example(_monkeypatch: pytest.MonkeyPatch, _tmp_path: Path) -> Scenario:
    return load_scenario(EXAMPLE).resized(30)


CASES: dict[str, tuple[float, Literal["edgetwin", "flat"], Topics | None]] = {
    # name: (duration, payload, topics)
    "faults": (3600.0, "edgetwin", None),
    "faults-flat": (1800.0, "flat", Topics(prefix="plant", telemetry_template="sensors/data")),
    "equal-phases": (3600.0, "edgetwin", None),
    # 5,000 devices at 1 Hz: a few pairs of streams whose first deadlines round to one float
    # near START, two of them with the later index on the smaller phase.
    "float-ties": (3.0, "edgetwin", None),
    # The example's mix resized to 30 devices; its spike on room-007 starts at 2 h.
    "example": (7800.0, "edgetwin", Topics(telemetry_template="sensors/{device_id}")),
}

PINS: dict[str, Pin] = {
    "faults": Pin(
        records="cd010dcfea3f841a2facd5ffe101521947434b79c2fcc55e0d37e4bcda4f7fd7",
        jsonl="ec5ac26f4944576432607240ab802e99848b84a3a5d0aab27f2e5fa13e53b4f3",
        counts=(21684, 34, 4),
    ),
    "faults-flat": Pin(
        records="c53a374f9a2b8eef8d70a2b4fb5ce63752586e8dd38e14882f4ddbe104fda458",
        jsonl="f2202408efc90e87f10078e71b3ca52b1cf47c6901e06297831fc0784372ce04",
        counts=(9696, 26, 4),
    ),
    "equal-phases": Pin(
        records="35617f9a3c37da2fbd7219384675e475822814c18e99852877afee846a3236a1",
        jsonl="c009625973c77e2375e599b0c025616a165bf9bce25a6af5a3c3c523fad1ab6c",
        counts=(21684, 34, 4),
    ),
    "float-ties": Pin(
        records="8a0d301736dee99eff18933e6605a41b7c1e42b86e85b1721c27fa0c4b32519c",
        jsonl="600dab58108ee3f0f7e4a8cffc43104fcbd2f90d24b527eed5f91016be414360",
        counts=(15000, 0, 0),
    ),
    "example": Pin(
        records="4dc82e84ea8895af69c07d66b11fc88ee1f789f984c33bacc76d358854713224",
        jsonl="5ae530f082b48de2b5101c7942a34cb4f11d14654c0304da78ba7ff19750b157",
        counts=(23918, 2, 0),
    ),
}


def scenario_of(name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Scenario:
    if name in ("faults", "faults-flat"):
        return faults_scenario(tmp_path)
    if name == "equal-phases":
        return equal_phases(monkeypatch, tmp_path)
    if name == "float-ties":
        return default_scenario(5000)
    return example(monkeypatch, tmp_path)


def run_case(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> tuple[Pin, Counts, RecordingSink]:
    duration, payload, topics = CASES[name]
    scenario = scenario_of(name, monkeypatch, tmp_path)
    sink = RecordingSink(tmp_path / f"{name}.jsonl")
    try:
        counts = run_virtual(scenario, START, duration, sink, topics=topics, payload=payload)
    finally:
        sink.close()
    pin = Pin(
        records=sink.digest.hexdigest(),
        jsonl=hashlib.sha256((tmp_path / f"{name}.jsonl").read_bytes()).hexdigest(),
        counts=(counts.telemetry, counts.labels, counts.status),
    )
    return pin, counts, sink


@pytest.mark.parametrize("name", list(CASES))
def test_a_virtual_run_writes_what_it_wrote_before(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pin, _, _ = run_case(name, monkeypatch, tmp_path)
    assert pin == PINS[name]


def reference_order(
    scenario: Scenario,
    start: float,
    duration: float,
    topics: Topics | None = None,
    payload: Literal["edgetwin", "flat"] = "edgetwin",
) -> list[tuple[float, Message]]:
    """The ordering rule, spelled as the heap that first implemented it."""
    generator = scenario.with_start(start).generator(topics or Topics(), payload=payload)
    end = start + duration
    heap = [(start + s.phase, s.index, 0) for s in generator.streams()]
    heapq.heapify(heap)
    first = {s.index: (s.interval, start + s.phase) for s in generator.streams()}
    out: list[tuple[float, Message]] = []
    while heap and heap[0][0] < end:
        t, index, k = heap[0]
        out.extend((t, message) for message in generator.emit(index, t))
        interval, t0 = first[index]
        heapq.heapreplace(heap, (t0 + (k + 1) * interval, index, k + 1))
    return out


@pytest.mark.parametrize(
    ("devices", "interval", "start", "duration"),
    [
        (3000, 0.1, START, 0.6),
        (2000, 1.0, START + 0.123456789, 3.0),
        (500, 7.0, 1e9 + 0.5, 60.0),  # another binade of the epoch
        (50, 0.25, 0.0, 30.0),  # near zero: the finest floats
    ],
)
def test_the_order_is_deadline_then_stream_index(
    devices: int, interval: float, start: float, duration: float
) -> None:
    scenario = default_scenario(devices, interval=interval)
    sink = RecordingSink(Path("/dev/null"))
    run_virtual(scenario, start, duration, sink)
    sink.close()
    assert sink.messages == reference_order(scenario, start, duration)
