"""A bounded recent history per telemetry stream (device, sensor), for the page's charts.

Each stream is a ring of columns: `ts` (float64), `seq` (int64), a source code and an anomaly
code (one byte each) and one float32 column per quantity. Columns rather than a tuple per
point: a three-quantity point costs 30 bytes here against about 270 as Python objects, which
is what makes 50,000 streams of 300 points fit (README, 'Gateway API'). float32 keeps about
seven significant digits, more than any driver's resolution; the API rounds to that on output.

`record` runs on the MQTT network thread for every reading the twin takes (10,000+ a second):
it appends to, or overwrites in, preallocated columns, in O(1), and moves the stream to the
young end of an LRU order. Beyond `max_streams` the stream heard from least recently is
evicted, and counted.
"""

from __future__ import annotations

import math
import threading
from array import array
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from edgetwin.agent.contract import Source, Telemetry

SOURCES: Final = (Source.REAL.value, Source.EMULATED.value, Source.SIMULATED.value)
_SOURCE_CODE: Final = {Source(name): code for code, name in enumerate(SOURCES)}
_NAN: Final = math.nan
MAX_ANOMALY_TYPES: Final = 255
"""Distinct anomaly types one gateway names (code 0 is none); later ones are kept as "other"."""
OTHER_ANOMALY: Final = "other"


class _Ring:
    """One stream's points, oldest at `head` once the ring is full."""

    __slots__ = ("anomaly", "head", "quantities", "seq", "source", "ts", "units")

    def __init__(self) -> None:
        self.ts = array("d")
        self.seq = array("q")
        self.source = bytearray()
        self.anomaly = bytearray()
        self.quantities: dict[str, array[float]] = {}
        self.units: dict[str, str] = {}
        self.head = 0

    def order(self) -> list[int]:
        n = len(self.ts)
        return [*range(self.head, n), *range(0, self.head)]


@dataclass(frozen=True)
class Series:
    """One stream's points, oldest first, as columns (what the API returns)."""

    ts: list[float]
    seq: list[int]
    source: list[str]
    anomaly: list[str | None]
    quantities: dict[str, tuple[str, list[float | None]]]
    """quantity -> (unit, values); None where a point lacks the quantity."""


class History:
    """Thread-safe: the MQTT thread records, API requests and the live feed read."""

    def __init__(self, points: int, max_streams: int = 50_000) -> None:
        self.points = points
        self.max_streams = max_streams
        self._lock = threading.Lock()
        self._streams: OrderedDict[tuple[str, str], _Ring] = OrderedDict()
        self._by_device: dict[str, set[str]] = {}
        self._anomaly_codes: dict[str, int] = {}
        self._anomaly_names: list[str | None] = [None]
        self.evicted = 0
        """Streams dropped to make room for newer ones, since start."""

    @property
    def enabled(self) -> bool:
        return self.points > 0

    def __len__(self) -> int:
        return len(self._streams)

    def record(self, telemetry: Telemetry) -> None:
        capacity = self.points
        if capacity <= 0:
            return
        key = (telemetry.device, telemetry.sensor)
        anomaly = 0 if telemetry.anomaly is None else self._anomaly_code(telemetry.anomaly.type)
        values = telemetry.values
        with self._lock:
            streams = self._streams
            ring = streams.get(key)
            if ring is None:
                ring = self._new_stream(key)
            else:
                streams.move_to_end(key)
            columns = ring.quantities
            if len(columns) != len(values) or any(q not in columns for q in values):
                self._new_quantities(ring, values)
            n = len(ring.ts)
            if n < capacity:
                ring.ts.append(telemetry.ts)
                ring.seq.append(telemetry.seq)
                ring.source.append(_SOURCE_CODE[telemetry.source])
                ring.anomaly.append(anomaly)
                for quantity, column in columns.items():
                    value = values.get(quantity)
                    column.append(_NAN if value is None else value.value)
            else:
                i = ring.head
                ring.head = i + 1 if i + 1 < n else 0
                ring.ts[i] = telemetry.ts
                ring.seq[i] = telemetry.seq
                ring.source[i] = _SOURCE_CODE[telemetry.source]
                ring.anomaly[i] = anomaly
                for quantity, column in columns.items():
                    value = values.get(quantity)
                    column[i] = _NAN if value is None else value.value

    def _new_stream(self, key: tuple[str, str]) -> _Ring:
        """Caller holds the lock."""
        if len(self._streams) >= self.max_streams:
            (device, sensor), _ = self._streams.popitem(last=False)
            self._drop_index(device, sensor)
            self.evicted += 1
        ring = self._streams[key] = _Ring()
        self._by_device.setdefault(key[0], set()).add(key[1])
        return ring

    def _drop_index(self, device: str, sensor: str) -> None:
        sensors = self._by_device.get(device)
        if sensors is not None:
            sensors.discard(sensor)
            if not sensors:
                del self._by_device[device]

    @staticmethod
    def _new_quantities(ring: _Ring, values: Mapping[str, object]) -> None:
        """A quantity the stream had not carried (a new driver): a column of NaN up to now.
        Units are those of the latest reading naming them."""
        n = len(ring.ts)
        for quantity, value in values.items():
            if quantity not in ring.quantities:
                ring.quantities[quantity] = array("f", [_NAN]) * n
            ring.units[quantity] = getattr(value, "unit", "")

    def _anomaly_code(self, kind: str) -> int:
        code = self._anomaly_codes.get(kind)
        if code is None:
            with self._lock:
                code = self._anomaly_codes.get(kind)
                if code is None:
                    if len(self._anomaly_names) < MAX_ANOMALY_TYPES:
                        code = len(self._anomaly_names)
                        self._anomaly_names.append(kind)
                    else:
                        code = self._anomaly_codes.get(OTHER_ANOMALY, MAX_ANOMALY_TYPES - 1)
                        self._anomaly_names[code] = OTHER_ANOMALY
                    self._anomaly_codes[kind] = code
        return code

    def forget(self, device: str) -> None:
        """A device left the manifest: its streams go."""
        with self._lock:
            for sensor in self._by_device.pop(device, set()):
                self._streams.pop((device, sensor), None)

    def sensors(self, device: str) -> list[str]:
        with self._lock:
            return sorted(self._by_device.get(device, ()))

    def series(self, device: str, sensor: str, since: float | None = None) -> Series | None:
        """The stream's points after `since` (all when None), oldest first."""
        with self._lock:
            ring = self._streams.get((device, sensor))
            if ring is None:
                return None
            order = ring.order()
            if since is not None:
                order = [i for i in order if ring.ts[i] > since]
            names = self._anomaly_names
            return Series(
                ts=[ring.ts[i] for i in order],
                seq=[ring.seq[i] for i in order],
                source=[SOURCES[ring.source[i]] for i in order],
                anomaly=[names[ring.anomaly[i]] for i in order],
                quantities={
                    q: (ring.units.get(q, ""), [_short(column[i]) for i in order])
                    for q, column in ring.quantities.items()
                },
            )

    def spark(self, device: str, sensor: str, points: int) -> dict[str, object] | None:
        """The last `points` of the stream's first quantity, for a sparkline: `t`, `v` and
        `s` (one letter per point: r real, e emulated, s simulated)."""
        with self._lock:
            ring = self._streams.get((device, sensor))
            if ring is None or not ring.quantities:
                return None
            order = ring.order()[-points:]
            quantity, column = next(iter(ring.quantities.items()))
            return {
                "q": quantity,
                "t": [ring.ts[i] for i in order],
                "v": [_short(column[i]) for i in order],
                "s": "".join(SOURCES[ring.source[i]][0] for i in order),
            }


def _short(value: float) -> float | None:
    """A float32 as the decimal it stood for (7 significant digits); NaN as None."""
    if math.isnan(value):
        return None
    return float(f"{value:.7g}")
