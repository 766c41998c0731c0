"""Signal models: what an emulated or simulated sensor "sees" over time.

A model is sampled with non-decreasing times (seconds since the epoch, possibly virtual) and is
deterministic given its seed and that sequence of times, so a simulated run can be replayed.
Models compose: `Sum` stacks a daily cycle, a slow walk and noise; `Clamp` keeps the result
physical. Emulators and the gateway's simulated devices share these.
"""

from __future__ import annotations

import math
import random
from typing import Protocol

SECONDS_PER_DAY = 86_400.0


class SignalModel(Protocol):
    def sample(self, t: float) -> float:
        """The signal's value at time `t` (seconds since the epoch, never less than last call)."""
        ...


class Constant:
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

    def __init__(
        self,
        lo: float,
        hi: float,
        step: float,
        seed: int,
        start: float | None = None,
    ) -> None:
        if not lo <= hi:
            raise ValueError(f"RandomWalk needs lo <= hi, got {lo} > {hi}")
        if step < 0:
            raise ValueError(f"RandomWalk step must not be negative, got {step}")
        self.lo = lo
        self.hi = hi
        self.step = step
        self._rng = random.Random(seed)
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

    def __init__(self, sigma: float, seed: int) -> None:
        if sigma < 0:
            raise ValueError(f"Noise sigma must not be negative, got {sigma}")
        self.sigma = sigma
        self._rng = random.Random(seed)

    def __repr__(self) -> str:
        return f"Noise({self.sigma!r})"

    def sample(self, t: float) -> float:
        return self._rng.gauss(0.0, self.sigma)


class Sum:
    def __init__(self, *models: SignalModel) -> None:
        self.models = models

    def __repr__(self) -> str:
        return f"Sum({', '.join(map(repr, self.models))})"

    def sample(self, t: float) -> float:
        # Every part is sampled every time, so stateful parts keep their own time line intact.
        return math.fsum(model.sample(t) for model in self.models)


class Clamp:
    def __init__(self, model: SignalModel, lo: float, hi: float) -> None:
        if not lo <= hi:
            raise ValueError(f"Clamp needs lo <= hi, got {lo} > {hi}")
        self.model = model
        self.lo = lo
        self.hi = hi

    def __repr__(self) -> str:
        return f"Clamp({self.model!r}, {self.lo!r}, {self.hi!r})"

    def sample(self, t: float) -> float:
        return min(self.hi, max(self.lo, self.model.sample(t)))


def derive_seed(*parts: object) -> int:
    """A 64-bit seed from any parts, stable across runs and Python processes.

    Seeding `random.Random` with a str hashes it with SHA-512 (unlike `hash()`, which is
    salted per process), so the same parts always give the same seed.
    """
    return random.Random(":".join(map(str, parts))).getrandbits(64)


def default_signal(quantity: str, seed: int) -> SignalModel:
    """A physically plausible indoor signal for `quantity`, reproducible from `seed`.

    Each quantity and component draws from its own stream, so that with one seed the humidity
    walk is not a scaled copy of the temperature walk.
    """

    def sub(component: str) -> int:
        return derive_seed(seed, quantity, component)

    if quantity == "temperature":
        # °C: a room around 21 °C, warmest mid-afternoon, wandering ±2 °C, 0.05 °C of jitter.
        return Sum(
            DailyCycle(21.0, 3.0, peak_hour=15.0),
            RandomWalk(-2.0, 2.0, step=0.01, seed=sub("walk"), start=0.0),
            Noise(0.05, seed=sub("noise")),
        )
    if quantity == "humidity":
        # %RH: relative humidity falls as the room warms, so the cycle peaks before dawn.
        return Clamp(
            Sum(
                RandomWalk(35.0, 65.0, step=0.05, seed=sub("walk")),
                DailyCycle(0.0, 5.0, peak_hour=5.0),
                Noise(0.3, seed=sub("noise")),
            ),
            0.0,
            100.0,
        )
    if quantity == "pressure":
        # hPa: weather moves pressure by a few hPa over hours; standard atmosphere in the middle.
        return RandomWalk(1008.25, 1018.25, step=0.005, seed=sub("walk"), start=1013.25)
    raise ValueError(
        f"no default signal for quantity {quantity!r}; known: humidity, pressure, temperature"
    )


def _reflect(x: float, lo: float, hi: float) -> float:
    """Fold `x` back into [lo, hi] as if bouncing off both walls, however far it overshot."""
    span = hi - lo
    if span == 0:
        return lo
    y = (x - lo) % (2 * span)
    return lo + (y if y <= span else 2 * span - y)
