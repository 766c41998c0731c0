"""A stand-in scenario for `engine_bench.py --fake-generator`, until `gateway.scenario` lands.

It follows briefs/interface.md: one sensor "env" per device with temperature, humidity and
pressure, payloads shaped exactly like the contract's Telemetry JSON (~230 bytes), encoded
with msgspec. Picklable, so the engine's worker processes can build their own generators.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

GOLDEN = 0.6180339887498949


@dataclass(frozen=True, slots=True)
class StreamSpec:
    index: int
    device: str
    sensor: str
    interval: float
    phase: float


class FakeGenerator:
    def __init__(
        self, scenario: FakeScenario, topics: Any, streams: Sequence[int] | None, payload: str
    ) -> None:
        specs = scenario.streams()
        chosen = range(len(specs)) if streams is None else streams
        self._device = {i: specs[i].device for i in chosen}
        self._topic = {i: topics.telemetry(specs[i].device, "env") for i in chosen}
        self._seq = dict.fromkeys(chosen, 0)
        self._seed = scenario.seed
        self._flat = payload == "flat"
        self._encode = msgspec.json.Encoder().encode

    def emit(self, index: int, t: float) -> list[tuple[str, bytes, bool]]:
        seq = self._seq[index]
        self._seq[index] = seq + 1
        x = self._seed + index * GOLDEN
        temperature = round(21.0 + 3.0 * math.sin(t / 600.0 + x), 2)
        humidity = round(45.0 + 10.0 * math.sin(t / 900.0 + 2 * x), 2)
        if self._flat:
            body = {
                "device_id": self._device[index],
                "timestamp": t,
                "temperature": temperature,
                "humidity": humidity,
            }
        else:
            body = {
                "v": 1,
                "device": self._device[index],
                "sensor": "env",
                "ts": t,
                "seq": seq,
                "source": "simulated",
                "values": {
                    "temperature": {"value": temperature, "unit": "°C"},
                    "humidity": {"value": humidity, "unit": "%RH"},
                    "pressure": {
                        "value": round(1013.0 + 5.0 * math.sin(t / 3600.0 + 3 * x), 2),
                        "unit": "hPa",
                    },
                },
            }
        return [(self._topic[index], self._encode(body), False)]


class FakeScenario(msgspec.Struct, frozen=True):
    devices: int
    interval: float = 1.0
    seed: int = 0

    def streams(self) -> list[StreamSpec]:
        width = max(3, len(str(self.devices - 1)))
        return [
            StreamSpec(
                i,
                f"device_{i:0{width}d}",
                "env",
                self.interval,
                ((self.seed * 0.1 + i * GOLDEN) % 1.0) * self.interval,
            )
            for i in range(self.devices)
        ]

    def resized(self, devices: int) -> FakeScenario:
        return FakeScenario(devices, self.interval, self.seed)

    def device_count(self) -> int:
        return self.devices

    def generator(
        self,
        topics: Any,
        streams: Sequence[int] | None = None,
        payload: Literal["edgetwin", "flat"] = "edgetwin",
    ) -> FakeGenerator:
        return FakeGenerator(self, topics, streams, payload)
