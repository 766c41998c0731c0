"""Signal models: what an emulated or simulated sensor "sees" over time.

A model is sampled with non-decreasing times (seconds since the epoch, possibly virtual) and is
deterministic given its seed and that sequence of times, so a simulated run can be replayed.
Models are plain functions of `t` on whatever clock the caller injects: a simulated day can run
in a fraction of a second. Models compose: `Sum` stacks a daily cycle, a slow walk, a `Drift`
and noise; wrappers such as `Spikes`, `Dropouts` and `Stuck` take an inner model and add a
fault to it; `Clamp` keeps the result physical. Emulators and the gateway's simulated devices
share these. Each quantity's default signal, and the physical limits it is clamped to, are part
of the quantity vocabulary in `hardware.quantities`.

No measurement is NaN: a model returns NaN when there is no measurement at that instant;
emulators turn that into a failed transfer (EIO) so the driver reports a fault. NaN passes
through every wrapper (`Sum`, `Clamp`, `Spikes`, ...) unchanged.

Random events (spikes, dropouts, motion pulses, contact toggles) come from a Poisson process
over time, never from a coin flip per sample: the time line is cut into fixed one-hour
buckets, and each bucket's events are drawn, in time order and only when first needed, from a
generator seeded by (seed, bucket). Event times are therefore a pure function of the seed, the
same whether a model is sampled every second, every ten seconds, in virtual or in real time.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal, Protocol

SECONDS_PER_DAY = 86_400.0
SECONDS_PER_HOUR = 3_600.0

Interpolation = Literal["hold", "linear"]


class Gaussian(Protocol):
    """The one thing a seeded model asks of its random number generator."""

    def gauss(self, mu: float = 0.0, sigma: float = 1.0) -> float: ...


RngFactory = Callable[[int], Gaussian]
"""Builds a model's generator from its seed: `random.Random` by default, `LightRandom` where
thousands of models live at once."""

_MASK64 = (1 << 64) - 1


class LightRandom:
    """A small seeded generator (SplitMix64) offering `random` and `gauss`.

    `random.Random` carries 2.5 KB of Mersenne Twister state; a simulated fleet holds a few
    generators per sensor stream, so fifty thousand devices would spend most of a gigabyte
    on them and lose the CPU cache too. This one holds an integer and a spare normal draw.
    Deterministic from its seed in every process, like `random.Random`, with other numbers.
    """

    __slots__ = ("_spare", "_state")

    def __init__(self, seed: int) -> None:
        self._state = seed & _MASK64
        self._spare: float | None = None

    def _next(self) -> int:
        self._state = state = (self._state + 0x9E3779B97F4A7C15) & _MASK64
        z = ((state ^ (state >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        return z ^ (z >> 31)

    def random(self) -> float:
        """Uniform in [0, 1), 53 bits."""
        return (self._next() >> 11) * (1.0 / 9007199254740992.0)

    def gauss(self, mu: float = 0.0, sigma: float = 1.0) -> float:
        """Normal: Box-Muller on the two 32-bit halves of one draw, the second value kept
        for the next call."""
        spare = self._spare
        if spare is not None:
            self._spare = None
            return mu + sigma * spare
        z = self._next()
        u1 = ((z >> 32) + 1) * (1.0 / 4294967297.0)  # in (0, 1): log(u1) is finite
        u2 = (z & 0xFFFFFFFF) * (2.0 * math.pi / 4294967296.0)
        radius = math.sqrt(-2.0 * math.log(u1))
        self._spare = radius * math.sin(u2)
        return mu + sigma * radius * math.cos(u2)


class SignalModel(Protocol):
    def sample(self, t: float) -> float:
        """The signal's value at time `t` (seconds since the epoch, never less than last call)."""
        ...


class Constant:
    __slots__ = ("value",)

    def __init__(self, value: float) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"Constant({self.value!r})"

    def sample(self, t: float) -> float:
        return self.value


class RandomWalk:
    """Brownian motion reflected into [lo, hi].

    Each sample moves by a normal step with standard deviation `step * sqrt(dt)`, so the spread
    after an hour does not depend on how often the walk is sampled. Reflecting at the bounds,
    rather than clamping, keeps the walk from sticking to a bound after a large step. When `t`
    goes backwards (a wall-clock step) the value holds: a clock jump must not kill a sensor loop.
    """

    # Slots: a simulated fleet holds a few of these per stream, tens of thousands at once.
    __slots__ = ("_last_t", "_rng", "_value", "hi", "lo", "step")

    def __init__(
        self,
        lo: float,
        hi: float,
        step: float,
        seed: int,
        start: float | None = None,
        *,
        rng: RngFactory = random.Random,
    ) -> None:
        if not lo <= hi:
            raise ValueError(f"RandomWalk needs lo <= hi, got {lo} > {hi}")
        if step < 0:
            raise ValueError(f"RandomWalk step must not be negative, got {step}")
        self.lo = lo
        self.hi = hi
        self.step = step
        self._rng = rng(seed)
        self._value = _reflect((lo + hi) / 2 if start is None else start, lo, hi)
        self._last_t: float | None = None

    def __repr__(self) -> str:
        return f"RandomWalk(lo={self.lo!r}, hi={self.hi!r}, step={self.step!r})"

    def sample(self, t: float) -> float:
        if self._last_t is None:
            self._last_t = t
        elif t > self._last_t:
            sigma = self.step * math.sqrt(t - self._last_t)
            self._value = _reflect(self._value + self._rng.gauss(0.0, sigma), self.lo, self.hi)
            self._last_t = t
        return self._value


class DailyCycle:
    """A cosine with a 24 h period peaking at `peak_hour` UTC: the sun's effect on a room."""

    __slots__ = ("amplitude", "mean", "peak_hour")

    def __init__(self, mean: float, amplitude: float, peak_hour: float = 15.0) -> None:
        self.mean = mean
        self.amplitude = amplitude
        self.peak_hour = peak_hour

    def __repr__(self) -> str:
        return f"DailyCycle({self.mean!r}, {self.amplitude!r}, peak_hour={self.peak_hour!r})"

    def sample(self, t: float) -> float:
        hours_from_peak = (t % SECONDS_PER_DAY) / 3600.0 - self.peak_hour
        return self.mean + self.amplitude * math.cos(2 * math.pi * hours_from_peak / 24.0)


class Noise:
    """White Gaussian noise around zero: a fresh draw at every sample."""

    __slots__ = ("_rng", "sigma")

    def __init__(self, sigma: float, seed: int, *, rng: RngFactory = random.Random) -> None:
        if sigma < 0:
            raise ValueError(f"Noise sigma must not be negative, got {sigma}")
        self.sigma = sigma
        self._rng = rng(seed)

    def __repr__(self) -> str:
        return f"Noise({self.sigma!r})"

    def sample(self, t: float) -> float:
        return self._rng.gauss(0.0, self.sigma)


class Drift:
    """A linear drift of `per_day` units per day from `start`, zero before it.

    An ageing sensor's offset: use it as a term in `Sum`. With `limit` the drift saturates at
    ±`limit`. Without `start` the drift starts at the first sample time.
    """

    def __init__(
        self, per_day: float, *, start: float | None = None, limit: float | None = None
    ) -> None:
        if limit is not None and limit < 0:
            raise ValueError(f"Drift limit must not be negative, got {limit}")
        self.per_day = per_day
        self.start = start
        self.limit = limit

    def __repr__(self) -> str:
        return f"Drift({self.per_day!r}, start={self.start!r}, limit={self.limit!r})"

    def sample(self, t: float) -> float:
        if self.start is None:
            self.start = t
        offset = self.per_day * max(0.0, t - self.start) / SECONDS_PER_DAY
        if self.limit is not None:
            offset = min(self.limit, max(-self.limit, offset))
        return offset


class Sum:
    def __init__(self, *models: SignalModel) -> None:
        self.models = models

    def __repr__(self) -> str:
        return f"Sum({', '.join(map(repr, self.models))})"

    def sample(self, t: float) -> float:
        # Every part is sampled every time, so stateful parts keep their own time line intact.
        return math.fsum([model.sample(t) for model in self.models])


class Clamp:
    """Keeps `model` within [lo, hi]; NaN (no measurement) passes through unchanged."""

    def __init__(self, model: SignalModel, lo: float, hi: float) -> None:
        if not lo <= hi:
            raise ValueError(f"Clamp needs lo <= hi, got {lo} > {hi}")
        self.model = model
        self.lo = lo
        self.hi = hi

    def __repr__(self) -> str:
        return f"Clamp({self.model!r}, {self.lo!r}, {self.hi!r})"

    def sample(self, t: float) -> float:
        value = self.model.sample(t)
        if math.isnan(value):
            return value
        return min(self.hi, max(self.lo, value))


# -- answers to outputs ----------------------------------------------------------------------


class FirstOrderResponse:
    """What a device's outputs add to a signal: a first-order lag towards the sum of each
    output's value times its gain. A heater relay (value 0 or 1, gain +6 °C) warms a room by
    up to 6 °C, a fan at duty 0.5 with gain -4 cools it by 2; after `time_constant` seconds
    the offset has covered 63 % of the way to that sum, after three of them 95 %.

    A term of a `Sum` beside the signal the room has on its own (`with_term`). It starts at
    zero offset: the room as its own signal has it, whatever the outputs are at that moment.
    The offset is advanced exactly for inputs that hold between changes, whatever the spacing
    of the samples, so it is the same sampled every second or every minute; `drive` takes the
    change's time, and one that arrives for an instant already sampled takes effect from the
    last sample on (time only goes forward).
    """

    __slots__ = ("_inputs", "_t", "gains", "offset", "time_constant")

    def __init__(
        self,
        gains: Mapping[str, float],
        time_constant: float,
        inputs: Mapping[str, float] | None = None,
    ) -> None:
        if not time_constant > 0 or not math.isfinite(time_constant):
            raise ValueError(f"a time constant must be finite and > 0, got {time_constant}")
        self.gains = dict(gains)
        self.time_constant = time_constant
        self.offset = 0.0
        given = inputs or {}
        self._inputs = {name: float(given[name]) for name in self.gains if name in given}
        self._t: float | None = None

    def __repr__(self) -> str:
        return f"FirstOrderResponse({self.gains!r}, {self.time_constant!r})"

    @property
    def inputs(self) -> dict[str, float]:
        return dict(self._inputs)

    def target(self) -> float:
        """The offset the outputs lead to if they hold."""
        return math.fsum(gain * self._inputs.get(name, 0.0) for name, gain in self.gains.items())

    def _advance(self, t: float) -> None:
        if self._t is None:
            self._t = t
            return
        if t <= self._t:
            return
        target = self.target()
        self.offset = target + (self.offset - target) * math.exp((self._t - t) / self.time_constant)
        self._t = t

    def drive(self, inputs: Mapping[str, float], at: float) -> None:
        """The outputs changed at time `at`: the names this response has a gain for take
        their new values; the others are not its business."""
        self._advance(at)
        for name, value in inputs.items():
            if name in self.gains and math.isfinite(value):
                self._inputs[name] = float(value)

    def sample(self, t: float) -> float:
        self._advance(t)
        return self.offset


def response_parts(model: SignalModel) -> list[FirstOrderResponse]:
    """The parts of `model` that answer outputs (within its `Clamp` and `Sum`)."""
    if isinstance(model, FirstOrderResponse):
        return [model]
    if isinstance(model, Clamp):
        return response_parts(model.model)
    if isinstance(model, Sum):
        return [part for inner in model.models for part in response_parts(inner)]
    return []


def with_term(model: SignalModel, term: SignalModel) -> SignalModel:
    """`model` plus `term`, keeping `model`'s clamp outermost: `Clamp(Sum(a, b))` becomes
    `Clamp(Sum(a, b, term))`, so the engine's flattened sum (one list of parts, one clamp)
    still sees every part."""
    if isinstance(model, Clamp):
        return Clamp(with_term(model.model, term), model.lo, model.hi)
    if isinstance(model, Sum):
        return Sum(*model.models, term)
    return Sum(model, term)


# -- random events ---------------------------------------------------------------------------


class _PoissonEvents:
    """Events of a Poisson process at `rate_per_hour`, each lasting `duration` seconds.

    The event times are a pure function of (seed, salt): every one-hour bucket of the time line
    draws its own events from its own generator, lazily and in time order, so no sampling
    pattern can change them. Each event also carries a uniform draw in [0, 1) (`mark`) for
    per-event choices such as a spike's sign. A few recent buckets are cached.
    """

    BUCKET = SECONDS_PER_HOUR
    _CACHED_BUCKETS = 8

    def __init__(self, rate_per_hour: float, duration: float, seed: int, salt: str) -> None:
        if rate_per_hour < 0:
            raise ValueError(f"event rate must not be negative, got {rate_per_hour}")
        if duration < 0:
            raise ValueError(f"event duration must not be negative, got {duration}")
        self.rate_per_hour = rate_per_hour
        self.duration = duration
        self._seed = seed
        self._salt = salt
        self._buckets: dict[int, tuple[list[float], list[float]]] = {}

    def bucket(self, k: int) -> tuple[list[float], list[float]]:
        """Start times and marks of the events starting in [k * BUCKET, (k + 1) * BUCKET)."""
        cached = self._buckets.get(k)
        if cached is not None:
            return cached
        starts: list[float] = []
        marks: list[float] = []
        if self.rate_per_hour > 0:
            rng = random.Random(derive_seed(self._seed, self._salt, k))
            rate = self.rate_per_hour / SECONDS_PER_HOUR
            t, end = k * self.BUCKET, (k + 1) * self.BUCKET
            while (t := t + rng.expovariate(rate)) < end:
                starts.append(t)
                marks.append(rng.random())
        if len(self._buckets) >= self._CACHED_BUCKETS:
            del self._buckets[next(iter(self._buckets))]
        self._buckets[k] = (starts, marks)
        return starts, marks

    def active(self, t: float) -> float | None:
        """The mark of the latest event covering `t` (start <= t < start + duration), if any."""
        k = math.floor(t / self.BUCKET)
        first = math.floor((t - self.duration) / self.BUCKET)
        while k >= first:
            starts, marks = self.bucket(k)
            i = bisect.bisect_right(starts, t) - 1
            if i >= 0 and t < starts[i] + self.duration:
                return marks[i]
            k -= 1
        return None

    def between(self, t0: float, t1: float) -> list[tuple[float, float]]:
        """(start, end) of every event starting in [t0, t1), in time order."""
        found: list[tuple[float, float]] = []
        for k in range(math.floor(t0 / self.BUCKET), math.floor(t1 / self.BUCKET) + 1):
            found.extend((s, s + self.duration) for s in self.bucket(k)[0] if t0 <= s < t1)
        return found


class Spikes:
    """Adds `magnitude` to `model` during rare short excursions.

    Spikes start at `rate_per_hour` on average (a Poisson process, see the module docstring)
    and last `duration` seconds; overlapping spikes do not stack. With `two_sided` each spike
    goes up or down with equal chance.
    """

    def __init__(
        self,
        model: SignalModel,
        rate_per_hour: float,
        magnitude: float,
        duration: float,
        seed: int,
        *,
        two_sided: bool = False,
    ) -> None:
        self.model = model
        self.magnitude = magnitude
        self.two_sided = two_sided
        self._events = _PoissonEvents(rate_per_hour, duration, seed, "spikes")

    def __repr__(self) -> str:
        return (
            f"Spikes({self.model!r}, {self._events.rate_per_hour!r}/h, {self.magnitude!r}, "
            f"{self._events.duration!r} s, two_sided={self.two_sided!r})"
        )

    def windows(self, t0: float, t1: float) -> list[tuple[float, float]]:
        """(start, end) of the spikes starting in [t0, t1)."""
        return self._events.between(t0, t1)

    def sample(self, t: float) -> float:
        value = self.model.sample(t)
        mark = self._events.active(t)
        if mark is None:
            return value
        return value + (-self.magnitude if self.two_sided and mark < 0.5 else self.magnitude)


class Dropouts:
    """NaN (no measurement) during periods of `duration` seconds, at `rate_per_hour`.

    The wrapped model is still sampled during a dropout, so its own time line is kept.
    """

    def __init__(
        self, model: SignalModel, rate_per_hour: float, duration: float, seed: int
    ) -> None:
        self.model = model
        self._events = _PoissonEvents(rate_per_hour, duration, seed, "dropouts")

    def __repr__(self) -> str:
        return (
            f"Dropouts({self.model!r}, {self._events.rate_per_hour!r}/h, "
            f"{self._events.duration!r} s)"
        )

    def windows(self, t0: float, t1: float) -> list[tuple[float, float]]:
        """(start, end) of the dropouts starting in [t0, t1)."""
        return self._events.between(t0, t1)

    def sample(self, t: float) -> float:
        value = self.model.sample(t)
        return math.nan if self._events.active(t) is not None else value


class Pulses:
    """A binary signal: 1.0 for `duration` seconds at events arriving at `rate_per_hour`.

    A PIR motion sensor's output. Overlapping pulses merge into one longer pulse.
    """

    def __init__(self, rate_per_hour: float, duration: float, seed: int) -> None:
        self._events = _PoissonEvents(rate_per_hour, duration, seed, "pulses")

    def __repr__(self) -> str:
        return f"Pulses({self._events.rate_per_hour!r}/h, {self._events.duration!r} s)"

    def windows(self, t0: float, t1: float) -> list[tuple[float, float]]:
        """(start, end) of the pulses starting in [t0, t1)."""
        return self._events.between(t0, t1)

    def sample(self, t: float) -> float:
        return 0.0 if self._events.active(t) is None else 1.0


class Toggle:
    """A binary signal that flips between 0.0 and 1.0 at events arriving at `rate_per_hour`.

    A door's reed contact. It is `initial` at `origin` (default: the first sample time) and
    flips at each event after it; the events themselves do not depend on `origin`.
    """

    def __init__(
        self, rate_per_hour: float, seed: int, *, initial: bool = True, origin: float | None = None
    ) -> None:
        self.initial = initial
        self.origin = origin
        self._events = _PoissonEvents(rate_per_hour, 0.0, seed, "toggles")
        # (first bucket not yet counted, parity of the flips counted before it)
        self._counted: tuple[int, int] | None = None

    def __repr__(self) -> str:
        return (
            f"Toggle({self._events.rate_per_hour!r}/h, initial={self.initial!r}, "
            f"origin={self.origin!r})"
        )

    def sample(self, t: float) -> float:
        if self.origin is None:
            self.origin = t
        origin = self.origin
        if t < origin:
            return float(self.initial)
        bucket = _PoissonEvents.BUCKET
        last = math.floor(t / bucket)
        if self._counted is None or self._counted[0] > last:
            self._counted = (math.floor(origin / bucket), 0)
        k, parity = self._counted
        while k < last:
            parity ^= sum(s >= origin for s in self._events.bucket(k)[0]) & 1
            k += 1
        self._counted = (k, parity)
        parity ^= sum(origin <= s <= t for s in self._events.bucket(last)[0]) & 1
        return float(self.initial ^ bool(parity))


# -- held and recorded values ----------------------------------------------------------------


class Stuck:
    """From `start`, for `duration` seconds (default: for ever), `model`'s output freezes.

    The value held is the wrapped model's last measurement before `start` (NaN skipped), or,
    if it was never sampled before, its value at the first sample in the window. The wrapped
    model is still sampled while stuck, and afterwards the output follows it again.
    """

    def __init__(self, model: SignalModel, start: float, duration: float | None = None) -> None:
        if duration is not None and duration < 0:
            raise ValueError(f"Stuck duration must not be negative, got {duration}")
        self.model = model
        self.start = start
        self.duration = duration
        self._held: float | None = None

    def __repr__(self) -> str:
        return f"Stuck({self.model!r}, start={self.start!r}, duration={self.duration!r})"

    def sample(self, t: float) -> float:
        value = self.model.sample(t)
        if t < self.start:
            if not math.isnan(value):
                self._held = value
            return value
        if self.duration is not None and t >= self.start + self.duration:
            return value
        if self._held is None:
            self._held = value
        return self._held


class Replay:
    """Recorded readings played back: `values[i]` was measured at `times[i]`.

    The recording is shifted so that its first sample falls on `start` (default: the first
    sample time) and played `speed` times faster than recorded. Between samples the value is
    held (`interpolation="hold"`) or interpolated linearly. Before the recording starts and
    after it ends there is no measurement (NaN), unless `loop` repeats it: one period is the
    recording's span plus its median sample spacing, so a day recorded every minute from 00:00
    to 23:59 repeats every 24 h. NaN in the recording (an empty CSV cell) plays back as NaN.
    """

    def __init__(
        self,
        times: Sequence[float],
        values: Sequence[float],
        *,
        start: float | None = None,
        loop: bool = False,
        speed: float = 1.0,
        interpolation: Interpolation = "hold",
    ) -> None:
        if not times or len(times) != len(values):
            raise ValueError(
                f"Replay needs as many times as values, at least one: {len(times)} times, "
                f"{len(values)} values"
            )
        for i in range(1, len(times)):
            if not times[i] > times[i - 1]:
                raise ValueError(f"Replay times must increase: sample {i} at {times[i]}")
        if not speed > 0:
            raise ValueError(f"Replay speed must be positive, got {speed}")
        if interpolation not in ("hold", "linear"):
            raise ValueError(f"Replay interpolation is 'hold' or 'linear', got {interpolation!r}")
        self._times = [x - times[0] for x in times]
        self._values = list(values)
        self.start = start
        self.loop = loop
        self.speed = speed
        self.interpolation = interpolation
        span = self._times[-1]
        self._gap = statistics.median(b - a for a, b in itertools.pairwise(times)) if span else 0.0
        self.period = span + self._gap

    @classmethod
    def from_csv(
        cls,
        path: str | Path,
        column: str | None = None,
        *,
        start: float | None = None,
        loop: bool = False,
        speed: float = 1.0,
        interpolation: Interpolation = "hold",
        device: str | None = None,
        sensor: str | None = None,
    ) -> Replay:
        """One column of a column table, or one quantity of a stream of a telemetry recording;
        `column` may be left out when there is only one. See `hardware.recordings.read_columns`
        for the formats, and for `device` and `sensor`, which pick a recording's stream."""
        # Imported here: hardware.recordings needs the vocabulary, which is built on this module.
        from edgetwin.hardware.recordings import read_columns

        recording = read_columns(path, device=device, sensor=sensor)
        if column is None:
            if len(recording) != 1:
                raise ValueError(f"{path}: choose a column among {sorted(recording)}")
            (column,) = recording
        if column not in recording:
            raise ValueError(f"{path}: no column {column!r}; columns: {sorted(recording)}")
        times, values = recording[column]
        return cls(times, values, start=start, loop=loop, speed=speed, interpolation=interpolation)

    def __repr__(self) -> str:
        return (
            f"Replay({len(self._values)} samples over {self._times[-1]!r} s, "
            f"start={self.start!r}, loop={self.loop!r}, speed={self.speed!r}, "
            f"interpolation={self.interpolation!r})"
        )

    def sample(self, t: float) -> float:
        if self.start is None:
            self.start = t
        offset = (t - self.start) * self.speed
        span = self._times[-1]
        if offset < 0 or (offset > span and not (self.loop and self.period > 0)):
            return math.nan
        if self.loop and self.period > 0:
            offset %= self.period
        i = bisect.bisect_right(self._times, offset) - 1
        if self.interpolation == "hold" or offset == self._times[i]:
            return self._values[i]
        if i + 1 < len(self._times):
            t0, t1, v1 = self._times[i], self._times[i + 1], self._values[i + 1]
        else:  # looping: from the last sample back to the first, one spacing later
            t0, t1, v1 = span, self.period, self._values[0]
        v0 = self._values[i]
        return v0 + (v1 - v0) * (offset - t0) / (t1 - t0)


def replay_csv(
    path: str | Path,
    *,
    start: float | None = None,
    loop: bool = False,
    speed: float = 1.0,
    interpolation: Interpolation = "hold",
    device: str | None = None,
    sensor: str | None = None,
) -> dict[str, Replay]:
    """A `Replay` per column of a column table or telemetry recording stream (see
    `hardware.recordings.read_columns`)."""
    from edgetwin.hardware.recordings import read_columns

    return {
        name: Replay(
            times, values, start=start, loop=loop, speed=speed, interpolation=interpolation
        )
        for name, (times, values) in read_columns(path, device=device, sensor=sensor).items()
    }


# -- seeds -----------------------------------------------------------------------------------


def derive_seed(*parts: object) -> int:
    """A 64-bit seed from any parts, stable across runs and Python processes.

    Seeding `random.Random` with a str hashes it with SHA-512 (unlike `hash()`, which is
    salted per process), so the same parts always give the same seed.
    """
    return random.Random(":".join(map(str, parts))).getrandbits(64)


def _reflect(x: float, lo: float, hi: float) -> float:
    """Fold `x` back into [lo, hi] as if bouncing off both walls, however far it overshot."""
    span = hi - lo
    if span == 0:
        return lo
    y = (x - lo) % (2 * span)
    return lo + (y if y <= span else 2 * span - y)
