"""Scenario files: a fleet described as device templates, sensor mixes, signals and faults.

A scenario is parsed once (`load_scenario`), validated with msgspec, and kept as a frozen,
picklable `Scenario`, so that every worker process of the engine can rebuild the same fleet
from it. Everything that varies from device to device (signal seeds, schedule phases) is
derived from the scenario's seed and the stream's name, never from order of creation.
"""

from __future__ import annotations

import fnmatch
import hashlib
import heapq
import math
import re
import tomllib
import types
import typing
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Final, Literal

import msgspec

from edgetwin.agent.contract import (
    MAX_SHARDS,
    ContractError,
    OutputName,
    OutputResponse,
    SensorName,
    check_id,
)
from edgetwin.hardware.quantities import PHYSICAL_LIMITS, UNITS, VOCABULARY
from edgetwin.hardware.recordings import read_columns
from edgetwin.hardware.signals import FirstOrderResponse

if TYPE_CHECKING:
    from edgetwin.agent.contract import Topics
    from edgetwin.gateway.scenario.generator import Generator


class ScenarioError(ValueError):
    """A scenario that cannot be used; the message names the file (when there is one) and
    the key."""


# -- building blocks ---------------------------------------------------------------------------

Positive = Annotated[float, msgspec.Meta(gt=0)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Interval = Annotated[float, msgspec.Meta(gt=0, le=86_400)]
Name = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
QuantityName = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
Unit = Annotated[str, msgspec.Meta(min_length=1, max_length=16)]
FaultId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
# A duration: seconds, or a string of number-unit pairs such as "1d", "2h30m", "90s".
Duration = float | str

DEFAULT_DECIMALS: Final = 2
"""Decimals of a quantity the vocabulary does not know, unless its spec says."""

_DURATION_RE: Final = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|d|h|m|s)")
_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0}


def parse_duration(value: float | str) -> float:
    """Seconds from a number of seconds or a string like "1d", "1h30m", "90s", "250ms"."""
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"a duration must be a finite number of seconds >= 0, got {value}")
        return float(value)
    text = value.strip().replace(" ", "")
    try:
        return parse_duration(float(text))  # "3600": seconds, as a number would be
    except ValueError:
        pass
    pos, total = 0, 0.0
    for match in _DURATION_RE.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"not a duration: {value!r} (examples: 90, '90s', '1h30m', '1d')")
    return total


def utc_seconds(moment: datetime) -> float:
    """Seconds since the epoch; a datetime without an offset is UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


class _Spec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


# -- signals -----------------------------------------------------------------------------------


class _Part(_Spec, tag_field="model", frozen=True):
    pass


class DefaultPart(_Part, tag="default", frozen=True, kw_only=True):
    """hardware.quantities.default_signal for the quantity: a realistic indoor signal."""


class ConstantPart(_Part, tag="constant", frozen=True, kw_only=True):
    value: float


class WalkPart(_Part, tag="walk", frozen=True, kw_only=True):
    """A random walk reflected into [lo, hi]; `step` is its spread per sqrt(second)."""

    lo: float
    hi: float
    step: NonNegative
    start: float | None = None


class DailyPart(_Part, tag="daily", frozen=True, kw_only=True):
    mean: float = 0.0
    amplitude: float
    peak_hour: Annotated[float, msgspec.Meta(ge=0, lt=24)] = 15.0


class NoisePart(_Part, tag="noise", frozen=True, kw_only=True):
    sigma: NonNegative


class DriftPart(_Part, tag="drift", frozen=True, kw_only=True):
    """A linear drift from the first sample on, saturating at ±limit."""

    per_day: float
    limit: NonNegative | None = None


class ReplayPart(_Part, tag="replay", frozen=True, kw_only=True):
    """One column of a column table (a `timestamp` column plus quantity columns), or one
    quantity of a telemetry recording's only stream (see `hardware.recordings.read_columns`),
    played from the stream's first sample on. A relative `file` is relative to the scenario
    file."""

    file: str
    column: str | None = None
    loop: bool = True
    speed: Positive = 1.0
    interpolation: Literal["hold", "linear"] = "hold"


SignalPart = DefaultPart | ConstantPart | WalkPart | DailyPart | NoisePart | DriftPart | ReplayPart


class ResponseSpec(_Spec, frozen=True, kw_only=True):
    """How one simulated quantity answers its device's outputs, so that a device the gateway
    simulates closes the loop: a first-order lag (`hardware.signals.FirstOrderResponse`) with
    `time_constant` towards the sum of each output's value times its gain, added to the
    quantity's own signal. `gains = { heater = 6.0, fan = -4.0 }`: the heater on warms the
    room by up to 6 °C, the fan at full duty cools it by 4 °C."""

    sensor: SensorName
    quantity: QuantityName
    time_constant: Duration
    gains: Annotated[dict[OutputName, float], msgspec.Meta(min_length=1, max_length=16)]

    def __post_init__(self) -> None:
        if not self.seconds > 0:
            raise ValueError(f"time_constant must be above 0 s, got {self.time_constant!r}")
        for name, gain in self.gains.items():
            if not math.isfinite(gain):
                raise ValueError(f"gain of output {name!r} must be finite, got {gain}")

    @property
    def seconds(self) -> float:
        """The time constant in seconds."""
        return parse_duration(self.time_constant)

    def model(self, inputs: Mapping[str, float] | None = None) -> FirstOrderResponse:
        """A fresh response, its outputs at `inputs` (output name -> value) from the start."""
        return FirstOrderResponse(self.gains, self.seconds, inputs)

    def to_wire(self) -> OutputResponse:
        """As the twin document carries it (time constant in seconds)."""
        return OutputResponse(
            sensor=self.sensor,
            quantity=self.quantity,
            time_constant=self.seconds,
            gains=dict(self.gains),
        )

    @classmethod
    def from_wire(cls, response: OutputResponse) -> ResponseSpec:
        return cls(
            sensor=response.sensor,
            quantity=response.quantity,
            time_constant=response.time_constant,
            gains=dict(response.gains),
        )


class SpikesSpec(_Spec, frozen=True, kw_only=True):
    rate_per_hour: NonNegative
    magnitude: float
    duration: NonNegative = 5.0
    two_sided: bool = False


class DropoutsSpec(_Spec, frozen=True, kw_only=True):
    rate_per_hour: NonNegative
    duration: NonNegative = 30.0


class StuckSpec(_Spec, frozen=True, kw_only=True):
    """The value freezes `after` the scenario start (or `at` a moment) for `duration`."""

    after: Duration | None = None
    at: datetime | None = None
    duration: Duration | None = None

    def __post_init__(self) -> None:
        if (self.after is None) == (self.at is None):
            raise ValueError("stuck needs exactly one of 'after' (a duration) or 'at'")
        for value in (self.after, self.duration):
            if value is not None:
                parse_duration(value)


class QuantitySpec(_Spec, frozen=True, kw_only=True):
    """One measured quantity: its unit and signal. Without `signal`, the quantity's
    default_signal (known quantities only). `signal` parts are summed; `spikes`, `dropouts`
    and `stuck` wrap the sum; the result is clamped to the quantity's physical limits (or
    `limits`) unless `clamp = false`. Values go on the wire rounded to `decimals`. Units,
    limits and decimals left out are the vocabulary's (`hardware.quantities`)."""

    unit: Unit | None = None
    signal: list[SignalPart] | SignalPart | None = None
    spikes: SpikesSpec | None = None
    dropouts: DropoutsSpec | None = None
    stuck: StuckSpec | None = None
    clamp: bool = True
    limits: tuple[float, float] | None = None
    decimals: Annotated[int, msgspec.Meta(ge=0, le=10)] | None = None

    def resolution(self, quantity: str) -> int:
        """Decimals this quantity is published with: `decimals`, or the vocabulary's for a
        known quantity, or 2."""
        if self.decimals is not None:
            return self.decimals
        known = VOCABULARY.get(quantity)
        return DEFAULT_DECIMALS if known is None else known.decimals

    def parts(self) -> list[SignalPart]:
        if self.signal is None:
            return [DefaultPart()]
        if isinstance(self.signal, list):
            return self.signal
        return [self.signal]


class SensorSpec(_Spec, frozen=True, kw_only=True):
    quantities: Annotated[dict[QuantityName, QuantitySpec], msgspec.Meta(min_length=1)]
    interval: Interval | None = None


class TemplateSpec(_Spec, frozen=True, kw_only=True):
    """`count` devices named by `id_format` (a str.format pattern with `{index}` from 0 and
    `{template}`; default "{template}-{index:03d}")."""

    count: Annotated[int, msgspec.Meta(ge=0, le=10_000_000)]
    sensors: Annotated[dict[Name, SensorSpec], msgspec.Meta(min_length=1)]
    id_format: str | None = None
    interval: Interval | None = None

    def device_id(self, name: str, index: int) -> str:
        return (self.id_format or "{template}-{index:03d}").format(template=name, index=index)


# -- faults ------------------------------------------------------------------------------------

FaultType = Literal[
    "spike", "drift", "stuck", "dropout", "noise", "offline", "clock_skew", "duplicate"
]
FAULT_TYPES: Final[tuple[str, ...]] = (
    "spike",
    "drift",
    "stuck",
    "dropout",
    "noise",
    "offline",
    "clock_skew",
    "duplicate",
)
# Each type's own parameter, with its default; a parameter of another type is refused.
FAULT_PARAMS: Final[Mapping[str, tuple[str, float | int] | None]] = {
    "spike": ("magnitude", 10.0),  # added to the value, in the quantity's unit
    "drift": ("per_hour", 1.0),  # units per hour from the fault's start
    "stuck": None,  # the last value before the start, held
    "dropout": None,  # nothing published
    "noise": ("sigma", 1.0),  # Gaussian noise added, standard deviation in the unit
    "offline": None,  # the device's retained status goes offline, nothing published
    "clock_skew": ("skew", 300.0),  # seconds added to `ts`
    "duplicate": ("copies", 1),  # extra copies of every message
}
VALUE_FAULTS: Final = frozenset({"spike", "drift", "stuck", "noise"})


class _FaultFields(_Spec, frozen=True, kw_only=True):
    type: FaultType
    devices: list[str] | str
    """device ids or glob patterns (`room-0*`)"""
    sensor: str = "*"
    """sensor name or glob; device offline faults take the whole device"""
    quantities: list[QuantityName] | None = None
    """value faults: the quantities hit (default: all of the sensor's)"""
    magnitude: float | None = None
    per_hour: float | None = None
    sigma: NonNegative | None = None
    skew: float | None = None
    copies: Annotated[int, msgspec.Meta(ge=1, le=100)] | None = None

    def __post_init__(self) -> None:
        if not all(p.strip() for p in self.device_patterns()) or not self.device_patterns():
            raise ValueError("devices: name at least one device id or pattern, none blank")
        own = FAULT_PARAMS[self.type]
        for name in ("magnitude", "per_hour", "sigma", "skew", "copies"):
            if getattr(self, name) is not None and (own is None or own[0] != name):
                raise ValueError(f"a {self.type} fault takes no {name!r}")
        if self.type == "offline" and self.sensor != "*":
            raise ValueError("a device offline fault takes the whole device, not a sensor")
        if self.quantities is not None and self.type not in VALUE_FAULTS:
            raise ValueError(f"a {self.type} fault takes no 'quantities'")

    def device_patterns(self) -> tuple[str, ...]:
        return (self.devices,) if isinstance(self.devices, str) else tuple(self.devices)

    def params(self) -> dict[str, float | int | list[str]]:
        """The fault's parameters as labelled: its own one (default filled in), quantities."""
        found: dict[str, float | int | list[str]] = {}
        own = FAULT_PARAMS[self.type]
        if own is not None:
            value = getattr(self, own[0])
            found[own[0]] = own[1] if value is None else value
        if self.quantities is not None:
            found["quantities"] = list(self.quantities)
        return found


class FaultSpec(_FaultFields, frozen=True, kw_only=True):
    """A fault on absolute time: from `start` (seconds since the epoch) for `duration`
    seconds, on every stream of `devices` and `sensor`. What `Generator.inject` takes."""

    id: FaultId
    start: float
    duration: Positive

    @property
    def end(self) -> float:
        return self.start + self.duration


class FaultRequest(_FaultFields, frozen=True, kw_only=True):
    """A fault asked for on demand (POST /engine/faults): from `after` seconds from now, for
    `duration` seconds. The id defaults to one made of the type and the start."""

    id: FaultId | None = None
    after: Annotated[float, msgspec.Meta(ge=0, le=86_400)] = 0.0
    duration: Positive

    def at(self, now: float) -> FaultSpec:
        start = now + self.after
        fields = {f: getattr(self, f) for f in _FaultFields.__struct_fields__}
        return FaultSpec(
            **fields,
            id=self.id or f"{self.type}-{int(start * 1000)}",
            start=start,
            duration=self.duration,
        )


class ScheduledFault(_FaultFields, frozen=True, kw_only=True):
    """A fault in a scenario file: `after` the scenario's start, or `at` a moment."""

    id: FaultId | None = None
    after: Duration | None = None
    at: datetime | None = None
    duration: Duration

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.after is None) == (self.at is None):
            raise ValueError("a fault needs exactly one of 'after' (a duration) or 'at'")
        parse_duration(self.duration)
        if self.after is not None:
            parse_duration(self.after)

    def resolve(self, position: int, origin: float | None) -> FaultSpec:
        if self.at is not None:
            start = utc_seconds(self.at)
        else:
            if origin is None:
                raise ScenarioError(
                    f"faults[{position}].after: the scenario has no start; set `start` in "
                    "the file or run it with a start time"
                )
            start = origin + parse_duration(self.after or 0.0)
        return FaultSpec(
            id=self.id or f"{self.type}-{position}",
            type=self.type,
            start=start,
            duration=parse_duration(self.duration),
            devices=self.devices,
            sensor=self.sensor,
            quantities=self.quantities,
            magnitude=self.magnitude,
            per_hour=self.per_hour,
            sigma=self.sigma,
            skew=self.skew,
            copies=self.copies,
        )


# -- streams -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamSpec:
    index: int
    """position in Scenario.streams()"""
    device: str
    sensor: str
    interval: float
    """seconds between readings"""
    phase: float
    """first deadline offset in [0, interval), from the seed: spreads the fleet's load"""


def _phase(seed: int, device: str, sensor: str, interval: float) -> float:
    # blake2b rather than derive_seed: a microsecond instead of six, for every stream of a
    # large fleet each time streams() is called.
    digest = hashlib.blake2b(f"{seed}:{device}:{sensor}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64 * interval


# -- the scenario ------------------------------------------------------------------------------


class Shard(_Spec, frozen=True, kw_only=True):
    """One of `count` replicas that play one fleet between them: the `index`-th of `count`
    runs of consecutive devices in fleet order (`Scenario.resized`), sizes within one of each
    other. A device keeps its id, seed, phase, signals and faults whichever replica plays
    it, so the replicas together publish what one process would, and a replica's streams keep
    their indices in the whole fleet (consecutive runs: shard order is stream order)."""

    index: Annotated[int, msgspec.Meta(ge=0)]
    count: Annotated[int, msgspec.Meta(ge=1, le=MAX_SHARDS)]

    def __post_init__(self) -> None:
        if self.index >= self.count:
            raise ValueError(f"shard {self.index} of {self.count}: shards count from 0")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def plays(self, position: int, devices: int) -> bool:
        """Whether the device at `position` (0-based, fleet order) of `devices` is this
        replica's."""
        return position * self.count // devices == self.index

    def size(self, devices: int) -> int:
        """How many of `devices` this replica plays."""
        first = -(-self.index * devices // self.count)
        end = -(-(self.index + 1) * devices // self.count)
        return end - first


@dataclass(frozen=True, slots=True)
class AutoShard:
    """`auto/N`: one of N alike replicas, which an orchestrator does not number (Compose's
    `--scale`), each claiming the lowest shard no other holds through leases on the broker
    (gateway/scenario/claims.py)."""

    count: int

    def __str__(self) -> str:
        return f"auto/{self.count}"


_AUTO_SHARD: Final = re.compile(r"\s*auto\s*/\s*(\d+)\s*")


def parse_shard(text: str) -> Shard:
    """`K/N`, the K-th (from 0) of N replicas."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if match is None:
        if _AUTO_SHARD.fullmatch(text):
            raise ScenarioError(
                f"shard {text!r}: only `edgetwin simulate` claims its shard (auto/N); here give K/N"
            )
        raise ScenarioError(f"shard: K/N (the K-th of N replicas, from 0), not {text!r}")
    try:
        return Shard(index=int(match[1]), count=int(match[2]))
    except (ValueError, msgspec.ValidationError) as exc:
        raise ScenarioError(f"shard {text!r}: {exc}") from None


def parse_shard_request(text: str) -> Shard | AutoShard:
    """`K/N`, or `auto/N` for a replica that claims its shard when it starts."""
    match = _AUTO_SHARD.fullmatch(text)
    if match is None:
        return parse_shard(text)
    count = int(match[1])
    if not 1 <= count <= MAX_SHARDS:
        raise ScenarioError(f"shard {text!r}: N is 1..{MAX_SHARDS}")
    return AutoShard(count)


def shard_from_environment(environ: Mapping[str, str], hostname: str) -> Shard | AutoShard | None:
    """The replica's shard from its orchestrator: `EDGETWIN_SHARD=K/N` (or `auto/N`), or
    `EDGETWIN_SHARD_COUNT=N` with K the ordinal a Kubernetes StatefulSet ends its pods' host
    names with (`sim-2` is 2); None when neither is set."""
    if text := environ.get("EDGETWIN_SHARD"):
        return parse_shard_request(text)
    if count := environ.get("EDGETWIN_SHARD_COUNT"):
        ordinal = re.search(r"-(\d+)$", hostname)
        if ordinal is None:
            raise ScenarioError(
                f"EDGETWIN_SHARD_COUNT is set but the host name {hostname!r} ends in no "
                "ordinal (-K, as a StatefulSet's pods do): set EDGETWIN_SHARD=K/N"
            )
        return parse_shard(f"{ordinal[1]}/{count}")
    return None


class Scenario(_Spec, frozen=True, kw_only=True):
    """A parsed scenario file. `devices`, when set, scales the templates' counts to that
    total (see `resized`)."""

    templates: Annotated[dict[Name, TemplateSpec], msgspec.Meta(min_length=1)]
    seed: int = 0
    start: datetime | None = None
    interval: Interval = 1.0
    source: Literal["simulated", "emulated"] = "simulated"
    devices: Annotated[int, msgspec.Meta(ge=0, le=10_000_000)] | None = None
    faults: list[ScheduledFault] = msgspec.field(default_factory=list)
    base_dir: str | None = None
    """where relative replay files are found (the scenario file's folder)"""
    shard: Shard | None = None
    """play only this replica's share of the fleet (`--shard K/N`)"""

    # -- fleet ---------------------------------------------------------------------------------

    def fleet_size(self) -> int:
        """Devices in the whole fleet, every replica's."""
        if self.devices is not None:
            return self.devices
        return sum(t.count for t in self.templates.values())

    def device_count(self) -> int:
        """Devices this run plays: the fleet, or the shard's share of it."""
        size = self.fleet_size()
        return size if self.shard is None else self.shard.size(size)

    def sharded(self, shard: Shard | None) -> Scenario:
        """The same fleet, of which this run plays `shard`'s share (None: all of it)."""
        return msgspec.structs.replace(self, shard=shard)

    def resized(self, devices: int) -> Scenario:
        """The same mix with `devices` devices in all.

        Devices are dealt to templates one at a time, each to the template furthest below
        its share of the file's counts (D'Hondt). The deal is one fixed sequence, so growing
        the fleet only appends devices (and streams) and shrinking removes the last ones:
        the ids and stream indices of the devices kept never change; at the file's own total
        every template gets exactly its count.
        """
        if devices < 0:
            raise ScenarioError(f"devices: must be >= 0, got {devices}")
        if devices and not any(t.count for t in self.templates.values()):
            raise ScenarioError("templates: every count is 0, so there is no mix to scale")
        resized = msgspec.structs.replace(self, devices=devices)
        resized.check_ids()
        return resized

    def _deal(self) -> Iterator[tuple[str, TemplateSpec, int]]:
        """(template name, template, index within it) of every device, in fleet order."""
        items = list(self.templates.items())
        weights = [t.count for _, t in items]
        given = [0] * len(items)
        # Priority w / (given + 1), ties to the earlier template. Equal fractions give equal
        # floats (division is correctly rounded), so ties are real ties.
        heap = [(-float(w), i) for i, w in enumerate(weights) if w > 0]
        heapq.heapify(heap)
        for _ in range(self.fleet_size()):
            if not heap:
                return
            _, i = heapq.heappop(heap)
            name, template = items[i]
            yield name, template, given[i]
            given[i] += 1
            heapq.heappush(heap, (-weights[i] / (given[i] + 1), i))

    def device_ids(self) -> list[str]:
        """The ids of the devices this run plays, in fleet order."""
        shard, size = self.shard, self.fleet_size()
        return [
            t.device_id(name, k)
            for position, (name, t, k) in enumerate(self._deal())
            if shard is None or shard.plays(position, size)
        ]

    def streams(self) -> list[StreamSpec]:
        """Every stream, devices in fleet order (see `resized`), each device's sensors in the
        file's order."""
        return list(self.iter_streams())

    def iter_streams(self) -> Iterator[StreamSpec]:
        """`streams()` one at a time: a 100,000-device fleet's list is some 25 MB, which a
        process that only walks it (to split or rate the fleet) need not hold."""
        return (stream for stream, _, _ in self.iter_plan())

    def streams_at(self, indices: Collection[int]) -> dict[int, StreamSpec]:
        """The streams at `indices`, by index."""
        wanted = set(indices)
        return {s.index: s for s in self.iter_streams() if s.index in wanted}

    def plan(self) -> list[tuple[StreamSpec, TemplateSpec, SensorSpec]]:
        """`streams()` with the template and sensor spec each stream comes from."""
        return list(self.iter_plan())

    def iter_plan(
        self, keep_device: Callable[[str], bool] | None = None
    ) -> Iterator[tuple[StreamSpec, TemplateSpec, SensorSpec]]:
        """`plan()` one stream at a time; with `keep_device`, only the streams of the devices
        it accepts (their indices stay the fleet's). A sharded scenario's plan is its shard's
        streams, with their indices in the whole fleet."""
        index = 0
        shard, size = self.shard, self.fleet_size()
        for position, (name, template, k) in enumerate(self._deal()):
            if shard is not None and not shard.plays(position, size):
                index += len(template.sensors)
                continue
            device = template.device_id(name, k)
            if keep_device is not None and not keep_device(device):
                index += len(template.sensors)
                continue
            for sensor, spec in template.sensors.items():
                interval = spec.interval or template.interval or self.interval
                phase = _phase(self.seed, device, sensor, interval)
                yield StreamSpec(index, device, sensor, interval, phase), template, spec
                index += 1

    # -- time ----------------------------------------------------------------------------------

    @property
    def origin(self) -> float | None:
        """The scenario's start in seconds since the epoch, if it has one."""
        return None if self.start is None else utc_seconds(self.start)

    def with_start(self, t: float) -> Scenario:
        """The scenario anchored at `t` (seconds since the epoch): faults given `after` a
        duration and stuck signals start relative to it."""
        return msgspec.structs.replace(self, start=datetime.fromtimestamp(t, UTC))

    def fault_specs(self) -> list[FaultSpec]:
        return [fault.resolve(i, self.origin) for i, fault in enumerate(self.faults)]

    # -- generation ----------------------------------------------------------------------------

    def generator(
        self,
        topics: Topics,
        streams: Sequence[int] | None = None,
        payload: Literal["edgetwin", "flat"] = "edgetwin",
    ) -> Generator:
        from edgetwin.gateway.scenario.generator import Generator

        return Generator(self, topics, streams, payload)

    # -- checks --------------------------------------------------------------------------------

    def check_ids(self) -> None:
        """Raise ScenarioError when a template deals an invalid device id or one another
        template deals too (called by the loader and by `resized`)."""
        seen: dict[str, str] = {}
        for name, template, k in self._deal():
            device = template.device_id(name, k)
            try:
                check_id(device)
            except ContractError as exc:
                raise ScenarioError(f"templates.{name}.id_format: {exc}") from exc
            if device in seen:
                raise ScenarioError(
                    f"templates.{name}.id_format: device {device!r} also comes from "
                    f"template {seen[device]!r}"
                )
            seen[device] = name


# -- loading -----------------------------------------------------------------------------------

_UNKNOWN_RE: Final = re.compile(
    r"Object contains unknown field `(?P<key>[^`]+)`(?: - at `\$(?P<at>[^`]*)`)?"
)
_AT_RE: Final = re.compile(r"^(?P<msg>.*?) - at `\$(?P<at>[^`]*)`$")


_STEP_RE: Final = re.compile(r"\.(?P<name>[A-Za-z_]\w*)|\[(?P<index>\.\.\.|\d+)\]")


def _key_path(at: str, document: object) -> str:
    """msgspec's `$.templates[...].interval` as `templates.room.interval`.

    msgspec does not name dictionary keys in its error paths; the key is found again by
    converting each entry of that dictionary alone until one fails the same way.
    """
    try:
        return _locate(at, document)
    except Exception:
        return at.lstrip(".")


def _locate(at: str, document: object) -> str:
    tp: object = Scenario
    node = document
    parts: list[str] = []
    for step in _STEP_RE.finditer(at):
        tp = _concrete(tp, node)
        if step.group("name"):
            name = step.group("name")
            assert isinstance(tp, type)
            hints = typing.get_type_hints(tp, include_extras=True)
            if name not in hints:  # a tagged union's tag: not a field, and the last step
                parts.append(f".{name}")
                break
            tp = hints[name]
            node = node.get(name) if isinstance(node, dict) else None
            parts.append(f".{name}")
        elif step.group("index") == "...":
            assert isinstance(node, dict)
            key = next(k for k, v in node.items() if not _converts({k: v}, tp))
            node = node[key]
            tp = typing.get_args(tp)[1]
            parts.append(f".{key}")
        else:
            index = int(step.group("index"))
            node = node[index] if isinstance(node, list) else None
            tp = typing.get_args(tp)[0]
            parts.append(f"[{index}]")
    return "".join(parts).lstrip(".")


def _concrete(tp: object, node: object) -> object:
    """The member of an annotated or union type that `node` is meant to be."""
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        members = [_concrete(m, node) for m in typing.get_args(tp)]
        if isinstance(node, list):
            return next(m for m in members if typing.get_origin(m) is list)
        if isinstance(node, dict):
            objects = [m for m in members if typing.get_origin(m) is dict or isinstance(m, type)]
            tag = node.get("model")
            for m in objects:
                config = getattr(m, "__struct_config__", None)
                if config is not None and config.tag == tag:
                    return m
            return next(m for m in objects if m is not type(None))
        return members[0]
    return tp


def _converts(value: object, tp: object) -> bool:
    try:
        msgspec.convert(value, tp)
    except msgspec.ValidationError:
        return False
    return True


def _explain(exc: msgspec.ValidationError, document: object) -> str:
    text = str(exc)
    unknown = _UNKNOWN_RE.fullmatch(text)
    if unknown:
        at = _key_path(unknown.group("at") or "", document)
        key = f"{at}.{unknown.group('key')}" if at else unknown.group("key")
        return f"unknown key {key!r}"
    located = _AT_RE.fullmatch(text)
    if located:
        return f"{_key_path(located.group('at'), document)}: {located.group('msg')}"
    return text


def parse_scenario(document: Mapping[str, object], *, where: str = "scenario") -> Scenario:
    """A Scenario from a parsed TOML document; ScenarioError names `where` and the key."""
    try:
        scenario = msgspec.convert(document, Scenario)
    except msgspec.ValidationError as exc:
        raise ScenarioError(f"{where}: {_explain(exc, document)}") from exc
    try:
        check_scenario(scenario)
    except ScenarioError as exc:
        raise ScenarioError(f"{where}: {exc}") from exc
    return scenario


def load_scenario(path: Path) -> Scenario:
    """Read and validate a scenario TOML file."""
    try:
        with path.open("rb") as file:
            document = tomllib.load(file)
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from exc
    document.setdefault("base_dir", str(path.resolve().parent))
    return parse_scenario(document, where=str(path))


def check_scenario(scenario: Scenario) -> None:
    """What the types cannot say: ids, units, signals that build, faults that hit something."""
    for name, template in scenario.templates.items():
        try:
            template.device_id(name, 0)
        except (KeyError, IndexError, ValueError) as exc:
            raise ScenarioError(
                f"templates.{name}.id_format: {template.id_format!r} is not a pattern with "
                f"{{index}} and {{template}}: {exc}"
            ) from exc
        if template.id_format is not None and template.device_id(name, 0) == template.device_id(
            name, 1
        ):
            raise ScenarioError(
                f"templates.{name}.id_format: {template.id_format!r} gives every device the "
                "same id; use {index}"
            )
        for sensor, spec in template.sensors.items():
            for quantity, q in spec.quantities.items():
                _check_quantity(
                    scenario,
                    f"templates.{name}.sensors.{sensor}.quantities.{quantity}",
                    quantity,
                    q,
                )
    scenario.check_ids()
    ids: set[str] = set()
    streams = scenario.streams()
    for i, fault in enumerate(scenario.faults):
        key = f"faults[{i}]"
        fault_id = fault.id or f"{fault.type}-{i}"
        if fault_id in ids:
            raise ScenarioError(f"{key}.id: {fault_id!r} is used twice")
        ids.add(fault_id)
        if fault.at is None and scenario.start is None:
            continue  # resolved when the scenario gets its start
        resolved = fault.resolve(i, scenario.origin)
        if not any(matches(resolved, s.device, s.sensor) for s in streams):
            raise ScenarioError(
                f"{key}.devices: {fault.devices!r} / sensor {fault.sensor!r} match no stream"
            )


def _check_quantity(scenario: Scenario, key: str, quantity: str, spec: QuantitySpec) -> None:
    if spec.unit is None and quantity not in UNITS:
        raise ScenarioError(f"{key}.unit: required for a quantity without a default unit")
    if spec.limits is not None and not spec.limits[0] <= spec.limits[1]:
        raise ScenarioError(f"{key}.limits: lo must not exceed hi")
    for j, part in enumerate(spec.parts()):
        where = f"{key}.signal" if not isinstance(spec.signal, list) else f"{key}.signal[{j}]"
        _check_part(scenario, where, quantity, part)


def _check_part(scenario: Scenario, where: str, quantity: str, part: SignalPart) -> None:
    if isinstance(part, DefaultPart) and quantity not in PHYSICAL_LIMITS:
        raise ScenarioError(
            f"{where}: no default signal for {quantity!r} "
            f"(known: {', '.join(sorted(PHYSICAL_LIMITS))}); give a signal"
        )
    if isinstance(part, WalkPart) and not part.lo <= part.hi:
        raise ScenarioError(f"{where}: lo must not exceed hi")
    if isinstance(part, ReplayPart):
        path = replay_path(scenario, part)
        try:
            recording = read_columns(path)
        except (OSError, ValueError) as exc:
            raise ScenarioError(f"{where}.file: {exc}") from exc
        column = part.column or (next(iter(recording)) if len(recording) == 1 else None)
        if column not in recording:
            raise ScenarioError(f"{where}.column: choose one of {sorted(recording)} in {path}")


def replay_path(scenario: Scenario, part: ReplayPart) -> Path:
    path = Path(part.file)
    if not path.is_absolute() and scenario.base_dir is not None:
        path = Path(scenario.base_dir) / path
    return path


def matches(fault: FaultSpec, device: str, sensor: str) -> bool:
    return any(fnmatch.fnmatchcase(device, p) for p in fault.device_patterns()) and (
        fault.type == "offline" or fnmatch.fnmatchcase(sensor, fault.sensor)
    )


# -- the default fleet -------------------------------------------------------------------------


def scenario_for(path: Path | None, devices: int | None, default_devices: int = 10) -> Scenario:
    """What the command line asks for: the file resized to `devices`, or the default fleet."""
    if path is None:
        return default_scenario(devices or default_devices)
    scenario = load_scenario(path)
    return scenario if devices is None else scenario.resized(devices)


def default_scenario(
    devices: int,
    interval: float = 1.0,
    seed: int = 0,
    *,
    prefix: str = "device_",
    width: int | None = None,
) -> Scenario:
    """`devices` devices {prefix}000... (ids zero-padded to `width`, default max(3, digits)),
    each with one sensor "env" measuring temperature, humidity and pressure with realistic
    default signals: the original simulator's fleet."""
    if devices < 0:
        raise ScenarioError(f"devices: must be >= 0, got {devices}")
    if not 0 < interval <= 86_400:
        raise ScenarioError(f"interval: must be in (0, 86400] seconds, got {interval}")
    if width is None:
        width = max(3, len(str(max(devices - 1, 0))))
    env = SensorSpec(
        quantities={q: QuantitySpec() for q in ("temperature", "humidity", "pressure")}
    )
    template = TemplateSpec(
        count=devices, sensors={"env": env}, id_format=f"{prefix}{{index:0{width}d}}"
    )
    return Scenario(templates={"device": template}, seed=seed, interval=interval)
