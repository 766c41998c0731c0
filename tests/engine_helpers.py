"""A small stand-in scenario for the engine's tests and `engine_bench.py --fake-generator`.

The engine is coded against the scenario protocols of gateway/engine/interface.py; these
classes implement them in the simplest honest way, so that engine tests can predict every
payload and the bench can measure the engine's own cost: every device one sensor "env" with
temperature, humidity and pressure, values a smooth function of the seed, the stream and `t`,
payloads the contract's `Telemetry` JSON (or the flat payload). Picklable (a msgspec Struct),
since each worker process builds its own generator from it.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import msgspec

from edgetwin.agent.contract import Source, Telemetry, Topics, Value

Message = tuple[str, bytes, bool]
GOLDEN = 0.6180339887498949  # spreads phases evenly over the interval whatever the count


@dataclass(frozen=True, slots=True)
class StreamSpec:
    index: int
    device: str
    sensor: str
    interval: float
    phase: float


class ScenarioError(Exception):
    pass


class Generator:
    def __init__(
        self,
        scenario: TestScenario,
        topics: Topics,
        streams: Sequence[int] | None,
        payload: Literal["edgetwin", "flat"],
    ) -> None:
        specs = scenario.streams()
        chosen = range(len(specs)) if streams is None else streams
        self._specs = {i: specs[i] for i in chosen}
        self._topics = {i: topics.telemetry(s.device, s.sensor) for i, s in self._specs.items()}
        self._seq = dict.fromkeys(self._specs, 0)
        self._seed = scenario.seed
        self._payload = payload
        self.injected: list[object] = []

    def emit(self, index: int, t: float) -> list[Message]:
        spec = self._specs[index]
        seq = self._seq[index]
        self._seq[index] = seq + 1
        x = self._seed + index * GOLDEN
        temperature = round(21.0 + 3.0 * math.sin(t / 600.0 + x), 2)
        humidity = round(45.0 + 10.0 * math.sin(t / 900.0 + 2 * x), 2)
        pressure = round(1013.0 + 5.0 * math.sin(t / 3600.0 + 3 * x), 2)
        if self._payload == "flat":
            body = msgspec.json.encode(
                {
                    "device_id": spec.device,
                    "timestamp": t,
                    "temperature": temperature,
                    "humidity": humidity,
                }
            )
        else:
            body = Telemetry(
                device=spec.device,
                sensor=spec.sensor,
                ts=t,
                seq=seq,
                source=Source.SIMULATED,
                values={
                    "temperature": Value(value=temperature, unit="°C"),
                    "humidity": Value(value=humidity, unit="%RH"),
                    "pressure": Value(value=pressure, unit="hPa"),
                },
            ).encode()
        return [(self._topics[index], body, False)]

    def label_topic(self) -> str:
        return "edgetwin/labels"

    def warm(self) -> None:
        pass  # every stream's state is built in __init__

    def streams(self) -> list[StreamSpec]:
        return list(self._specs.values())

    def inject(self, fault: object) -> None:
        # This fleet has no fault model: an injected fault is kept, for a test to look at.
        self.injected.append(fault)


class TestScenario(msgspec.Struct, frozen=True):
    __test__ = False  # not a pytest test class despite the name

    devices: int
    interval: float = 1.0
    seed: int = 0

    def streams(self) -> list[StreamSpec]:
        width = max(3, len(str(self.devices - 1)))
        return [
            StreamSpec(
                index=i,
                device=f"device_{i:0{width}d}",
                sensor="env",
                interval=self.interval,
                phase=((self.seed * 0.1 + i * GOLDEN) % 1.0) * self.interval,
            )
            for i in range(self.devices)
        ]

    def iter_streams(self) -> Iterator[StreamSpec]:
        return iter(self.streams())

    def streams_at(self, indices: Collection[int]) -> dict[int, StreamSpec]:
        specs = self.streams()
        return {i: specs[i] for i in indices}

    def resized(self, devices: int) -> TestScenario:
        return TestScenario(devices=devices, interval=self.interval, seed=self.seed)

    def device_count(self) -> int:
        return self.devices

    def generator(
        self,
        topics: Topics,
        streams: Sequence[int] | None = None,
        payload: Literal["edgetwin", "flat"] = "edgetwin",
    ) -> Generator:
        return Generator(self, topics, streams, payload)


def default_scenario(devices: int, interval: float = 1.0, seed: int = 0) -> TestScenario:
    return TestScenario(devices=devices, interval=interval, seed=seed)


def load_scenario(path: object) -> TestScenario:
    raise ScenarioError(f"{path}: the test scenario has no file format")
