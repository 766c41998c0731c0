"""What each stream of a scenario publishes at its scheduled times, faults and labels included.

A `Generator` holds the state of the streams it was given (sequence numbers, signal models,
fault progress) and nothing shared between streams, so the fleet can be split over worker
processes and the payloads of one stream do not depend on when other streams are served. A
stream's models are stateful (a random walk remembers where it was), so its values are a
function of the seed, the stream and the times it has been sampled at: the same scheduled
times give the same bytes, in real or virtual time.

Payloads are formatted from per-stream templates built once, not encoded through the contract
models: that is most of the difference between a few and a few dozen microseconds a reading.
Tests decode them with `agent.contract.Telemetry` to keep the two in step.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Literal, TypeVar

import msgspec

from edgetwin.agent.contract import FaultLabel, FlatReading, Presence, Status, Topics
from edgetwin.gateway.scenario.model import (
    ConstantPart,
    DailyPart,
    DefaultPart,
    DriftPart,
    FaultSpec,
    NoisePart,
    QuantitySpec,
    ReplayPart,
    Scenario,
    ScenarioError,
    SensorSpec,
    SignalPart,
    StreamSpec,
    TemplateSpec,
    WalkPart,
    matches,
    parse_duration,
    replay_path,
    utc_seconds,
)
from edgetwin.hardware.quantities import PHYSICAL_LIMITS, UNITS, default_signal
from edgetwin.hardware.recordings import read_columns
from edgetwin.hardware.sensor import Quantity
from edgetwin.hardware.signals import (
    Clamp,
    Constant,
    DailyCycle,
    Drift,
    Dropouts,
    FirstOrderResponse,
    LightRandom,
    Noise,
    RandomWalk,
    Replay,
    SignalModel,
    Spikes,
    Stuck,
    Sum,
    derive_seed,
)

Message = tuple[str, bytes, bool]
"""(topic, payload, retain)"""

_INF = math.inf
_fsum = math.fsum
_NO_CHANGE = math.inf
_NO_FAULTS: Final[list[Any]] = []  # shared and never appended to: see `_schedule`

T = TypeVar("T")


@functools.cache
def _version() -> str:
    # Imported when a status is first written (offline faults): a worker that never writes
    # one spares importlib.metadata's memory.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edgetwin")
    except PackageNotFoundError:
        return "0"


def _escape(text: str) -> str:
    """`text` as a literal inside a str.format template."""
    return text.replace("{", "{{").replace("}", "}}")


def _json(value: object) -> str:
    return msgspec.json.encode(value).decode()


class _Active:
    """A fault in force on one stream."""

    __slots__ = ("anomaly", "fault", "held", "quantities", "rng")

    def __init__(self, fault: FaultSpec, stream: _Stream, seed: int) -> None:
        self.fault = fault
        self.anomaly = (
            f',"anomaly":{{"type":"{fault.type}","id":"{fault.id}","start":{fault.start!r},'
            f'"end":{fault.end!r}}}'
        )
        # Indices of the quantities a value fault hits.
        wanted = fault.quantities
        self.quantities = [
            i for i, name in enumerate(stream.names) if wanted is None or name in wanted
        ]
        self.rng = (
            LightRandom(
                derive_seed(seed, "fault", fault.id, stream.spec.device, stream.spec.sensor)
            )
            if fault.type == "noise"
            else None
        )
        # Stuck: the last values published before the fault, per quantity index.
        self.held: dict[int, float] = (
            {i: stream.last[i] for i in self.quantities if math.isfinite(stream.last[i])}
            if fault.type == "stuck"
            else {}
        )

    def apply(self, values: list[float], t: float) -> None:
        """A value fault's effect on the reading's values, in place."""
        fault = self.fault
        kind = fault.type
        if kind == "spike":
            magnitude = 10.0 if fault.magnitude is None else fault.magnitude
            for i in self.quantities:
                values[i] += magnitude
        elif kind == "drift":
            rate = 1.0 if fault.per_hour is None else fault.per_hour
            for i in self.quantities:
                values[i] += rate * (t - fault.start) / 3600.0
        elif kind == "noise":
            sigma = 1.0 if fault.sigma is None else fault.sigma
            assert self.rng is not None
            for i in self.quantities:
                values[i] += self.rng.gauss(0.0, sigma)
        elif kind == "stuck":
            for i in self.quantities:
                held = self.held.setdefault(i, values[i])
                if math.isfinite(held):
                    values[i] = held
                else:  # nothing measured before: hold the first measurement there is
                    self.held[i] = values[i]


class _Stream:
    """One stream's state: models, sequence number, payload templates, faults."""

    __slots__ = (
        "active",
        "decimals",
        "fmt",
        "last",
        "leaves",
        "names",
        "next_change",
        "owner",
        "pending",
        "publishes",
        "seq",
        "spans",
        "spec",
        "topic",
        "units",
    )

    def __init__(self, spec: StreamSpec) -> None:
        self.spec = spec
        # names, units, decimals and spans are the same for every stream of a template's
        # sensor: the generator shares one tuple of each among them (`Generator._shared`).
        self.names: tuple[str, ...] = ()
        self.units: tuple[str, ...] = ()
        # The quantities' models flattened (see `_flatten`): every leaf model, and per
        # quantity the slice of leaves it sums and the bounds it is clamped to.
        self.leaves: tuple[SignalModel, ...] = ()
        self.spans: tuple[tuple[int, int, float, float], ...] = ()
        self.decimals: tuple[int, ...] = ()
        self.last: list[float] = []
        self.seq = 0
        self.topic = ""
        self.fmt = ""
        self.owner = False  # publishes the device's status and device-level labels
        self.publishes = True  # flat payloads: only one stream per device goes on the wire
        # Lists once a fault comes (`_schedule`): most streams never have one.
        self.pending: list[FaultSpec] = _NO_FAULTS  # by start, latest first (popped from the end)
        self.active: list[_Active] = _NO_FAULTS
        self.next_change = _NO_CHANGE


class _Emitter:
    """The emit path every source of streams shares: a stream's state in, its messages out.

    Subclasses say where a stream's state comes from (`_open`): a scenario's templates
    (`Generator`) or definitions handed over one device at a time (`PlacedStreams`).
    """

    def __init__(
        self, topics: Topics, payload: Literal["edgetwin", "flat"], source: str, seed: int
    ) -> None:
        self._topics = topics
        self._flat = payload == "flat"
        self._source = source
        self._seed = seed
        self._interned: dict[Any, Any] = {}
        self._states: dict[int, _Stream] = {}
        self._boots: dict[str, int] = {}
        self._label_topic = topics.labels()

    def emit(self, index: int, t: float) -> list[Message]:
        """What stream `index` publishes at its scheduled time `t` (seconds since epoch)."""
        st = self._states.get(index)
        if st is None:
            st = self._open(index)
        out: list[Message] | None = None
        if t >= st.next_change:
            out = self._advance(st, t)
        raw = [leaf.sample(t) for leaf in st.leaves]
        values: list[float] = []
        for a, b, lo, hi in st.spans:
            value = raw[a] if b - a == 1 else _fsum(raw[a:b])
            # NaN fails both tests and passes through, as in hardware.signals.Clamp.
            if value < lo:
                value = lo
            elif value > hi:
                value = hi
            values.append(value)
        if st.active:
            return self._emit_faulty(st, t, values, out or [])
        st.last = values
        if not st.publishes:
            return out or []
        total = sum(values)
        if total - total != 0.0:  # NaN or infinity somewhere: the careful path
            return self._emit_faulty(st, t, values, out or [])
        st.seq += 1
        # The format rounds (`_number`): no round() and repr() per value.
        payload = st.fmt.format(st.spec.device, t, st.seq, *values).encode()
        if out:
            out.append((st.topic, payload, False))
            return out
        return [(st.topic, payload, False)]

    def _open(self, index: int) -> _Stream:
        raise NotImplementedError

    def _build(
        self,
        st: _Stream,
        names: tuple[str, ...],
        units: tuple[str, ...],
        decimals: tuple[int, ...],
        models: Sequence[SignalModel],
    ) -> None:
        """Fill in `st`'s models, quantities and payload templates."""
        leaves: list[SignalModel] = []
        spans: list[tuple[int, int, float, float]] = []
        for model in models:
            parts, lo, hi = _flatten(model)
            spans.append((len(leaves), len(leaves) + len(parts), lo, hi))
            leaves.extend(self._stateless(part) for part in parts)
        st.leaves = tuple(leaves)
        # A 50,000-device fleet holds 50,000 of each: one copy, not one a stream.
        st.names = self._shared(names)
        st.units = self._shared(units)
        st.decimals = self._shared(
            tuple(FlatReading.DECIMALS for _ in decimals) if self._flat else decimals
        )
        st.spans = self._shared(tuple(spans))
        st.last = [math.nan] * len(st.names)
        st.topic = self._topics.telemetry(st.spec.device, st.spec.sensor)
        if self._flat:
            st.fmt = self._shared(_flat_format(st.names))
        else:
            # The values object closed; then the reading, with or without its anomaly label.
            st.fmt = self._shared(self._telemetry_format(st) + "}}")
            # With the anomaly label: `fmt` with one more field before its closing brace,
            # "{}}" in format terms; rare, so not kept twice.

    def _stateless(self, model: SignalModel) -> SignalModel:
        """One instance of a model that keeps no state, for every stream with an equal one:
        every stream of a 50,000-device fleet has the same daily cycles."""
        if type(model) is DailyCycle:
            key: tuple[object, ...] = ("daily", model.mean, model.amplitude, model.peak_hour)
        elif type(model) is Constant:
            key = ("constant", model.value)
        else:
            return model
        return self._interned.setdefault(key, model)  # type: ignore[no-any-return]

    def _shared(self, value: T) -> T:
        """One instance of an immutable value for every stream that has an equal one."""
        return self._interned.setdefault(value, value)  # type: ignore[no-any-return]

    def _telemetry_format(self, st: _Stream) -> str:
        """The reading's payload as a format of (device, ts, seq, *values), one for every
        stream of the same sensor and quantities: ids need no JSON escaping (ID_PATTERN)."""
        head = (
            _escape('{"v":1,"device":"')
            + "{}"
            + _escape(f'","sensor":{_json(st.spec.sensor)},"ts":')
        )
        middle = _escape(f',"source":"{self._source}","values":{{')
        values = ",".join(
            _escape(f'{_json(name)}:{{"value":')
            + _number(decimals)
            + _escape(f',"unit":{_json(unit)}}}')
            for name, unit, decimals in zip(st.names, st.units, st.decimals, strict=True)
        )
        return head + "{:" + _TS + "}" + _escape(',"seq":') + "{}" + middle + values + "}}"

    # -- faults ---------------------------------------------------------------------------------

    def _advance(self, st: _Stream, t: float) -> list[Message]:
        """Start and end the faults due by `t`; the labels and statuses that go with them."""
        out: list[Message] = []
        pending = st.pending
        while pending and pending[-1].start <= t:
            fault = pending.pop()
            active = _Active(fault, st, self._seed)
            st.active.append(active)
            out.extend(self._fault_edge(st, fault, "start", fault.start))
        still: list[_Active] = []
        for active in st.active:
            fault = active.fault
            if fault.end <= t:
                out.extend(self._fault_edge(st, fault, "end", fault.end))
            else:
                still.append(active)
        st.active = still
        ends = [a.fault.end for a in still]
        starts = [pending[-1].start] if pending else []
        st.next_change = min(ends + starts, default=_NO_CHANGE)
        return out

    def _fault_edge(
        self, st: _Stream, fault: FaultSpec, event: Literal["start", "end"], at: float
    ) -> list[Message]:
        device = st.spec.device
        if fault.type == "offline":
            if not st.owner:
                return []  # the device's first stream speaks for the device
            sensor = None
        else:
            sensor = st.spec.sensor
        label = FaultLabel(
            event=event,
            id=fault.id,
            type=fault.type,
            device=device,
            sensor=sensor,
            start=fault.start,
            end=fault.end,
            params=dict(fault.params()),
        )
        out: list[Message] = []
        if fault.type == "offline":
            out.append(self._status(device, event, at))
        out.append((self._label_topic, label.encode(), False))
        return out

    def _status(self, device: str, event: str, at: float) -> Message:
        """The retained status a broker would publish as the device's last will (start), and
        the birth of its reconnection (end), with the next boot number."""
        boot = self._boots.get(device, 0)
        if event == "end":
            boot += 1
            self._boots[device] = boot
        status = Status(
            device=device,
            state=Presence.OFFLINE if event == "start" else Presence.ONLINE,
            ts=at,
            boot=boot,
            agent_version=f"edgetwin-scenario/{_version()}",
            reason="connection_lost" if event == "start" else "birth",
        )
        return (self._topics.status(device), status.encode(), True)

    def _emit_faulty(
        self, st: _Stream, t: float, values: list[float], out: list[Message]
    ) -> list[Message]:
        """The reading with the active faults applied (and any non-finite value left out)."""
        skew = 0.0
        copies = 0
        anomaly = ""
        if any(a.fault.type in ("offline", "dropout") for a in st.active):
            st.last = values
            return out
        for active in st.active:
            fault = active.fault
            if fault.type == "clock_skew":
                skew += 300.0 if fault.skew is None else fault.skew
            elif fault.type == "duplicate":
                copies += 1 if fault.copies is None else fault.copies
            else:
                active.apply(values, t)
            anomaly = active.anomaly  # the latest started one wins
        if not any(a.fault.type == "stuck" for a in st.active):
            st.last = values
        if not st.publishes:
            return out
        finite = [math.isfinite(v) for v in values]
        if not any(finite) or (self._flat and not all(finite)):
            return out  # no measurement (or not both flat ones): nothing, as an agent would
        st.seq += 1
        message = (st.topic, self._payload(st, t + skew, values, anomaly), False)
        out.extend([message] * (1 + copies))
        return out

    def _payload(self, st: _Stream, ts: float, values: list[float], anomaly: str) -> bytes:
        if self._flat:
            return st.fmt.format(st.spec.device, ts, st.seq, *values).encode()
        if not all(math.isfinite(v) for v in values):
            return self._partial(st, ts, values, anomaly)
        if anomaly:
            return (
                (st.fmt[:-2] + "{}}}").format(st.spec.device, ts, st.seq, *values, anomaly).encode()
            )
        return st.fmt.format(st.spec.device, ts, st.seq, *values).encode()

    def _partial(self, st: _Stream, ts: float, values: list[float], anomaly: str) -> bytes:
        """A reading without its unmeasured quantities."""
        parts = [
            f'{_json(name)}:{{"value":{v:.{d}f},"unit":{_json(unit)}}}'
            for name, unit, v, d in zip(st.names, st.units, values, st.decimals, strict=True)
            if math.isfinite(v)
        ]
        spec = st.spec
        return (
            f'{{"v":1,"device":{_json(spec.device)},"sensor":{_json(spec.sensor)},"ts":{ts:{_TS}},'
            f'"seq":{st.seq},"source":"{self._source}","values":{{{",".join(parts)}}}'
            f"{anomaly}}}"
        ).encode()


class Generator(_Emitter):
    """Readings, labels and statuses of some streams of a scenario (all by default)."""

    def __init__(
        self,
        scenario: Scenario,
        topics: Topics,
        streams: Sequence[int] | None = None,
        payload: Literal["edgetwin", "flat"] = "edgetwin",
    ) -> None:
        super().__init__(topics, payload, scenario.source, scenario.seed)
        self._scenario = scenario
        # The plan of the streams served here, by index: built when first needed. A worker
        # (streams given, then `warm`) never holds it: its streams are built as the scenario
        # is dealt, device by device, and a 50,000-stream plan is ~30 MB that a process does
        # not give back once freed.
        self._plan: dict[int, tuple[StreamSpec, TemplateSpec, SensorSpec]] | None = None
        self._our_devices: set[str] | None = None
        if streams is None:
            self._plan = {entry[0].index: entry for entry in scenario.iter_plan()}
            self._ours = frozenset(self._plan)
        else:
            self._ours = frozenset(streams)
            self._our_devices = {s.device for s in scenario.iter_streams() if s.index in self._ours}
        # Every fault injected so far, in order, by the device it names (None: a pattern):
        # a stream built later takes those that name it.
        self._faults: dict[str | None, list[tuple[int, FaultSpec]]] = {}
        self._fault_count = 0
        # Our built streams by device, for faults naming devices: made at the first such fault.
        self._by_device: dict[str, list[int]] | None = None
        self._recordings: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
        self._origin = scenario.origin
        for fault in scenario.fault_specs():
            self.inject(fault)

    # -- public face ----------------------------------------------------------------------------

    def label_topic(self) -> str:
        return self._label_topic

    def streams(self) -> list[StreamSpec]:
        """The streams this generator serves, in index order."""
        if all(i in self._states for i in self._ours):
            return [self._states[i].spec for i in sorted(self._ours)]
        plan = self._ensure_plan()
        return [plan[i][0] for i in sorted(self._ours)]

    def warm(self) -> None:
        """Build every stream's state now instead of at its first `emit` (some 75 us a stream,
        mostly seeding): a worker can pay it before its first deadline rather than late."""
        if self._plan is not None:
            for index in sorted(self._ours):
                if index not in self._states:
                    self._open(index)
            return
        assert self._our_devices is not None
        device: list[tuple[StreamSpec, TemplateSpec, SensorSpec]] = []
        for entry in self._scenario.iter_plan(self._our_devices.__contains__):
            if device and entry[0].device != device[0][0].device:
                self._open_device(device)
                device = []
            device.append(entry)
        if device:
            self._open_device(device)
        self._check_ours_built()

    def inject(self, fault: FaultSpec) -> None:
        """Apply `fault` to every stream of this generator it names, labelled like a scheduled
        one. A fault whose start has passed takes effect at each stream's next reading."""
        patterns = fault.device_patterns()
        exact = all(not any(c in p for c in "*?[") for p in patterns)
        self._fault_count += 1
        for key in patterns if exact else [None]:
            self._faults.setdefault(key, []).append((self._fault_count, fault))
        if exact:
            if self._by_device is None:
                self._by_device = {}
                for i, state in self._states.items():
                    self._by_device.setdefault(state.spec.device, []).append(i)
            candidates = [i for p in patterns for i in self._by_device.get(p, ())]
        else:
            candidates = list(self._states)
        for i in sorted(set(candidates)):
            state = self._states[i]
            if matches(fault, state.spec.device, state.spec.sensor):
                _schedule(state, fault)

    # -- streams --------------------------------------------------------------------------------

    def _ensure_plan(self) -> dict[int, tuple[StreamSpec, TemplateSpec, SensorSpec]]:
        if self._plan is None:
            assert self._our_devices is not None
            self._plan = {
                entry[0].index: entry
                for entry in self._scenario.iter_plan(self._our_devices.__contains__)
            }
            missing = sorted(self._ours - self._plan.keys())
            if missing:
                self._no_stream(missing[0])
        return self._plan

    def _check_ours_built(self) -> None:
        missing = sorted(self._ours - self._states.keys())
        if missing:
            self._no_stream(missing[0])

    def _no_stream(self, index: int) -> None:
        total = sum(1 for _ in self._scenario.iter_streams())
        raise ScenarioError(f"no stream {index}: the scenario has {total}")

    def _open(self, index: int) -> _Stream:
        if index not in self._ours:
            raise ScenarioError(f"stream {index} is not served by this generator")
        plan = self._ensure_plan()
        spec, _, sensor = plan[index]
        first = self._first_of_device(index)
        flat = self._flat_stream(first) if self._flat else None
        return self._make(spec, sensor, owner=first == index, publishes=flat == index)

    def _open_device(self, entries: list[tuple[StreamSpec, TemplateSpec, SensorSpec]]) -> None:
        """Build the streams of one device (all its plan entries, in order) that are ours."""
        flat = next(
            (
                spec.index
                for spec, _, sensor in entries
                if {"temperature", "humidity"} <= sensor.quantities.keys()
            ),
            None,
        )
        first = entries[0][0].index
        for spec, _, sensor in entries:
            if spec.index in self._ours and spec.index not in self._states:
                self._make(
                    spec,
                    sensor,
                    owner=spec.index == first,
                    publishes=not self._flat or spec.index == flat,
                )

    def _make(
        self, spec: StreamSpec, sensor: SensorSpec, *, owner: bool, publishes: bool
    ) -> _Stream:
        st = _Stream(spec)
        quantities = sensor.quantities
        self._build(
            st,
            tuple(quantities),
            tuple(q.unit or UNITS[name] for name, q in quantities.items()),
            tuple(q.resolution(name) for name, q in quantities.items()),
            [self._signal(spec, name, q) for name, q in quantities.items()],
        )
        st.owner = owner
        if self._flat:
            st.publishes = publishes
        for _, fault in sorted(
            self._faults.get(spec.device, []) + self._faults.get(None, []),
            key=lambda numbered: numbered[0],
        ):
            if matches(fault, spec.device, spec.sensor):
                _schedule(st, fault)
        self._states[spec.index] = st
        self._by_device = None
        return st

    def _first_of_device(self, index: int) -> int:
        """The first stream of the device of stream `index` (a device's streams are
        consecutive in the plan)."""
        plan = self._ensure_plan()
        device = plan[index][0].device
        while (entry := plan.get(index - 1)) is not None and entry[0].device == device:
            index -= 1
        return index

    def _flat_stream(self, index: int) -> int | None:
        """The first stream measuring temperature and humidity of the device whose first
        stream is `index`."""
        plan = self._ensure_plan()
        device = plan[index][0].device
        while (entry := plan.get(index)) is not None and entry[0].device == device:
            if {"temperature", "humidity"} <= entry[2].quantities.keys():
                return index
            index += 1
        return None

    def _signal(self, spec: StreamSpec, quantity: str, q: QuantitySpec) -> SignalModel:
        base = derive_seed(self._scenario.seed, spec.device, spec.sensor, quantity)
        parts = q.parts()
        built: list[SignalModel] = []
        for j, part in enumerate(parts):
            seed = base if j == 0 else derive_seed(base, j)
            built.append(self._part(part, quantity, seed))
        model: SignalModel = built[0] if len(built) == 1 else Sum(*built)
        if q.stuck is not None:
            stuck = q.stuck
            if stuck.at is not None:
                start = utc_seconds(stuck.at)
            else:
                start = self._anchor("stuck.after") + parse_duration(stuck.after or 0.0)
            duration = None if stuck.duration is None else parse_duration(stuck.duration)
            model = Stuck(model, start, duration)
        if q.spikes is not None:
            s = q.spikes
            model = Spikes(
                model,
                s.rate_per_hour,
                s.magnitude,
                s.duration,
                derive_seed(base, "spikes"),
                two_sided=s.two_sided,
            )
        if q.dropouts is not None:
            d = q.dropouts
            model = Dropouts(model, d.rate_per_hour, d.duration, derive_seed(base, "dropouts"))
        plain_default = len(parts) == 1 and isinstance(parts[0], DefaultPart) and model is built[0]
        if q.clamp and not (plain_default and q.limits is None):
            limits = q.limits or PHYSICAL_LIMITS.get(quantity)
            if limits is not None:
                model = Clamp(model, *limits)
        return model

    def _part(self, part: SignalPart, quantity: str, seed: int) -> SignalModel:
        if isinstance(part, DefaultPart):
            return default_signal(quantity, seed, rng=LightRandom)
        if isinstance(part, WalkPart):
            return RandomWalk(part.lo, part.hi, part.step, seed, part.start, rng=LightRandom)
        if isinstance(part, DriftPart):
            return Drift(part.per_day, limit=part.limit)
        if isinstance(part, ReplayPart):
            path = str(replay_path(self._scenario, part))
            recording = self._recordings.get(path)
            if recording is None:
                recording = self._recordings[path] = read_columns(path)
            column = part.column or next(iter(recording))
            times, values = recording[column]
            return Replay(
                times,
                values,
                loop=part.loop,
                speed=part.speed,
                interpolation=part.interpolation,
            )
        if isinstance(part, ConstantPart):
            return Constant(part.value)
        if isinstance(part, DailyPart):
            return DailyCycle(part.mean, part.amplitude, part.peak_hour)
        if isinstance(part, NoisePart):
            return Noise(part.sigma, seed, rng=LightRandom)
        raise AssertionError(f"unhandled signal part {part!r}")

    def _anchor(self, key: str) -> float:
        if self._origin is None:
            raise ScenarioError(
                f"{key}: the scenario has no start; set `start` in the file or use "
                "Scenario.with_start(t) before building generators"
            )
        return self._origin


@dataclass(frozen=True, slots=True)
class PlacedStream:
    """One stream handed to the engine at run time (a stand-in for a missing sensor), with
    everything its readings need: no scenario file behind it."""

    sensor: str
    interval: float
    quantities: tuple[Quantity, ...]
    """name, unit and decimals of each quantity, in the order the payload lists them"""
    signals: tuple[SignalModel, ...]
    """the model of each quantity"""
    seq: int = 0
    """the last sequence number already on the wire: the first reading is seq + 1"""


class PlacedStreams(_Emitter):
    """Streams placed and taken away one device at a time while the engine runs.

    `place` gives a device exactly the streams named: new ones are built at once and fall due
    at the schedule time the caller gives; kept ones go on untouched; the others stop. Stream
    indices are handed out here and never reused within a run.
    """

    def __init__(
        self,
        topics: Topics,
        payload: Literal["edgetwin", "flat"] = "edgetwin",
        source: str = "simulated",
        first_index: int = 0,
    ) -> None:
        super().__init__(topics, payload, source, 0)
        self._next_index = first_index
        # device -> sensor -> index, in the order the device's streams were placed
        self._of_device: dict[str, dict[str, int]] = {}

    def place(
        self, device: str, keep: Sequence[str], start: Sequence[PlacedStream], s_first: float
    ) -> dict[str, int]:
        """Run `keep` (streams of `device` already running) and `start` from now on; every
        other stream of the device stops. A started stream that replaces one of the same name
        continues its numbering if that is higher than its own `seq`. Returns the last seq of
        each stream that stopped."""
        current = self._of_device.get(device, {})
        started = {p.sensor for p in start}
        stopped: dict[str, int] = {}
        kept: dict[str, int] = {}
        for sensor, index in current.items():
            if sensor in keep and sensor not in started:
                kept[sensor] = index
            else:
                stopped[sensor] = self._states.pop(index).seq
        for placed in start:
            index = self._next_index
            self._next_index += 1
            spec = StreamSpec(
                index, device, placed.sensor, placed.interval, s_first % placed.interval
            )
            st = _Stream(spec)
            self._build(
                st,
                tuple(q.name for q in placed.quantities),
                tuple(q.unit for q in placed.quantities),
                tuple(q.decimals for q in placed.quantities),
                placed.signals,
            )
            st.seq = max(placed.seq, stopped.get(placed.sensor, 0))
            self._states[index] = st
            kept[placed.sensor] = index
        if kept:
            self._of_device[device] = kept
            self._choose_flat(kept)
        else:
            self._of_device.pop(device, None)
        return {name: seq for name, seq in stopped.items() if name not in started}

    def drive(self, device: str, inputs: Mapping[str, float], at: float) -> int:
        """`device`'s outputs took `inputs` (output name -> value) at time `at` (the wall time
        its signals are sampled on, as `emit` is called with): every
        part of its streams' signals that answers outputs (`FirstOrderResponse`) follows from
        then on. Returns how many parts took them."""
        driven = 0
        for index in self._of_device.get(device, {}).values():
            for leaf in self._states[index].leaves:
                if isinstance(leaf, FirstOrderResponse):
                    leaf.drive(inputs, at)
                    driven += 1
        return driven

    def _choose_flat(self, streams: dict[str, int]) -> None:
        """With flat payloads, one stream a device goes on the wire: its first placed one
        measuring temperature and humidity."""
        if not self._flat:
            return
        speaker = next(
            (i for i in streams.values() if set(self._states[i].names) >= FlatReading.QUANTITIES),
            None,
        )
        for index in streams.values():
            self._states[index].publishes = index == speaker

    def streams(self) -> list[StreamSpec]:
        """The streams running now."""
        return [self._states[i].spec for s in self._of_device.values() for i in s.values()]

    def seqs(self, device: str) -> dict[str, int]:
        return {name: self._states[i].seq for name, i in self._of_device.get(device, {}).items()}

    def warm(self) -> None:
        """Nothing to do: placed streams are built when placed."""

    def inject(self, fault: Any) -> None:
        """Placed streams take no injected faults: they stand in for real sensors."""

    def _open(self, index: int) -> _Stream:
        raise ScenarioError(f"stream {index} is not placed here")


@dataclass(frozen=True, slots=True)
class PlacedFleet:
    """The scenario of a placed run (`EngineController.start(..., placed=True)`): no streams
    of its own, only the generator that takes the streams placed while it runs."""

    source: str = "simulated"
    seed: int = 0

    # Placed streams' indices start here, clear of any scenario's in the same worker.
    FIRST_INDEX: ClassVar[int] = 1 << 40

    def streams(self) -> list[StreamSpec]:
        return []

    def iter_streams(self) -> Iterator[StreamSpec]:
        return iter(())

    def streams_at(self, indices: Collection[int]) -> dict[int, StreamSpec]:
        return {}

    def device_count(self) -> int:
        return 0

    def resized(self, devices: int) -> PlacedFleet:
        raise ScenarioError("a placed run has no size of its own: its owner places devices")

    def generator(
        self,
        topics: Topics,
        streams: Sequence[int] | None = None,
        payload: Literal["edgetwin", "flat"] = "edgetwin",
    ) -> PlacedStreams:
        return PlacedStreams(topics, payload, self.source, first_index=self.FIRST_INDEX)


def _flatten(model: SignalModel) -> tuple[list[SignalModel], float, float]:
    """`Clamp(Sum(a, b, ...))` as ([a, b, ...], lo, hi), to be summed with fsum and clamped
    by the caller: the same numbers as `model.sample`, without two layers of calls per
    quantity and reading."""
    lo, hi = -_INF, _INF
    if isinstance(model, Clamp):
        lo, hi, model = model.lo, model.hi, model.model
    if isinstance(model, Sum) and model.models:
        return list(model.models), lo, hi
    return [model], lo, hi


def _schedule(st: _Stream, fault: FaultSpec) -> None:
    if st.pending is _NO_FAULTS:
        st.pending = []
    if st.active is _NO_FAULTS:
        st.active = []
    st.pending.append(fault)
    st.pending.sort(key=lambda f: f.start, reverse=True)
    st.next_change = min(st.next_change, fault.start)


# Numbers are written with a fixed number of decimals by the payload's format itself: that
# rounds as round() does (correctly, to the nearest), at half the cost of round() and repr().
# Timestamps keep microseconds.
_TS: Final = ".6f"


def _number(decimals: int, position: int | None = None) -> str:
    """A format field writing a value with `decimals` decimals."""
    return "{" + ("" if position is None else str(position)) + f":.{decimals}f" + "}"


def _flat_format(names: Sequence[str]) -> str:
    """The original simulator's payload, formatted with (device, ts, seq, *values) like
    telemetry."""
    if not {"temperature", "humidity"} <= set(names):
        return ""
    temperature = names.index("temperature") + 3
    humidity = names.index("humidity") + 3
    return (
        _escape('{"device_id":"')
        + "{0}"
        + _escape('","timestamp":')
        + "{1:"
        + _TS
        + "}"
        + _escape(',"temperature":')
        + _number(FlatReading.DECIMALS, temperature)
        + _escape(',"humidity":')
        + _number(FlatReading.DECIMALS, humidity)
        + "}}"
    )
