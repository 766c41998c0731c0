"""Twin-learned failover: what each real stream has been like, and signals that carry it on.

While an agent reports, `StreamLearning.observe` folds every reading into running statistics of
its stream, one `QuantityStats` per (device, sensor, quantity), in memory that does not grow
with the number of readings:

- level and variability (exponentially weighted mean and variance);
- a daily profile: the mean in each of 24 hour-of-day bins (UTC, as `DailyCycle` counts hours),
  read between bin centres by linear interpolation so that it has no steps;
- how the deviation from that profile behaves in time: its variance and its lag-1 and lag-2
  autocovariances, which fit an Ornstein-Uhlenbeck process plus white noise (the moment
  estimator of an ARMA(1,1)): lag-1 alone cannot tell a slow wander from sensor jitter;
- the correlation between the deviations of the quantities of one sensor, so that humidity
  keeps moving with (or against) temperature as it did.

When the stream goes missing, `signals_for` turns a snapshot of those statistics into one
`LearnedSignal` per quantity (the `hardware.signals.SignalModel` protocol). The signals of one
sensor share a `_Continuation`: it starts exactly at the last real value at the last real time,
the deviation decays towards the learned daily profile at the learned rate, with the learned
variability and correlation, and every value is clamped to `PHYSICAL_LIMITS`. A quantity with
too little history falls back to the default signal, shifted so it still starts at the last
value. Everything is deterministic from the seed given.

Statistics weigh about the last `horizon` seconds (3 days by default): each update uses weight
max(1/n, typical interval / horizon), an exact running mean until the horizon is full, then an
exponential forgetting in time rather than in readings, so a 1 s and a 60 s stream remember the
same span.
"""

from __future__ import annotations

import logging
import math
import threading
from array import array
from collections.abc import Mapping
from dataclasses import dataclass

from edgetwin.agent.contract import SensorSettings, Source, Telemetry
from edgetwin.hardware.errors import HardwareError
from edgetwin.hardware.quantities import PHYSICAL_LIMITS, default_signal
from edgetwin.hardware.registry import driver_info
from edgetwin.hardware.signals import (
    SECONDS_PER_DAY,
    SECONDS_PER_HOUR,
    LightRandom,
    SignalModel,
    Toggle,
    derive_seed,
)

log = logging.getLogger(__name__)

BINS = 24
HORIZON = 3 * SECONDS_PER_DAY
"""Seconds of history the statistics weigh (the time constant of their forgetting)."""
MIN_SAMPLES = 30
"""Readings a quantity needs before its own statistics drive the continuation; the moment
estimates of three lags are noise below a few dozen."""
GAP_FACTOR = 5.0
"""A silence longer than this many typical intervals breaks the chain of lagged products: the
readings on either side of it are not one interval apart. An interval this many times shorter
breaks it too (a burst)."""
NEW_INTERVAL_AFTER = 3
"""Intervals in a row that far from the typical one mean the stream's interval was changed
(a new desired config): the interval and the lagged moments, which depend on it, start over."""
SLOWEST_REVERSION = 1.0 / SECONDS_PER_DAY
"""A deviation reverts to the daily profile with a time constant of at most a day: a walk that
never reverts cannot be told from one reverting over weeks with a few days of history, and an
unbounded continuation would leave the history's range."""
MAX_CORRELATION = 0.99
BINARY_KINDS = frozenset({"motion", "contact"})
"""0/1 signals: a Gaussian continuation means nothing for them; they keep the default models."""


def _weight(n: float, typical_dt: float, horizon: float) -> float:
    """The weight of the n-th reading: an exact mean while n is small, then forgetting over
    `horizon` seconds at readings `typical_dt` apart."""
    return max(1.0 / n, min(1.0, typical_dt / horizon))


class QuantityStats:
    """Running statistics of one quantity of one stream, in constant memory (see the module)."""

    __slots__ = (
        "bin_mean",
        "bin_n",
        "chain",
        "dev_mean",
        "dev_n",
        "dev_sq",
        "dt_mean",
        "dt_n",
        "horizon",
        "lag1",
        "lag1_n",
        "lag2",
        "lag2_n",
        "last_t",
        "last_value",
        "mean",
        "n",
        "off_interval",
        "prev1",
        "prev2",
        "var",
    )

    def __init__(self, horizon: float = HORIZON) -> None:
        self.horizon = horizon
        self.n = 0
        self.last_t = 0.0
        self.last_value = 0.0
        self.mean = 0.0
        self.var = 0.0
        self.bin_n = array("d", bytes(8 * BINS))
        self.bin_mean = array("d", bytes(8 * BINS))
        self.dev_n = 0
        self.dev_mean = 0.0
        self.dev_sq = 0.0
        self.lag1_n = 0
        self.lag1 = 0.0
        self.lag2_n = 0
        self.lag2 = 0.0
        self.dt_n = 0
        self.dt_mean = 0.0
        self.prev1 = 0.0
        self.prev2 = 0.0
        self.chain = 0  # how many of prev1, prev2 belong to an unbroken run of readings
        self.off_interval = 0  # intervals in a row far from the typical one

    def profile_at(self, t: float) -> float:
        """The learned daily profile at time `t`, interpolated between bin centres; bins not
        yet seen are bridged from their nearest seen neighbours; the mean before any."""
        position = (t % SECONDS_PER_DAY) / SECONDS_PER_HOUR - 0.5
        below = math.floor(position)
        frac = position - below
        v0 = self._bin_value(below % BINS)
        v1 = self._bin_value((below + 1) % BINS)
        return v0 + (v1 - v0) * frac

    def _bin_value(self, b: int) -> float:
        if self.bin_n[b] > 0:
            return self.bin_mean[b]
        for back in range(1, BINS):
            if self.bin_n[(b - back) % BINS] > 0:
                break
        else:
            return self.mean
        for ahead in range(1, BINS):  # found one behind, so there is one ahead too
            if self.bin_n[(b + ahead) % BINS] > 0:
                break
        v_back = self.bin_mean[(b - back) % BINS]
        v_ahead = self.bin_mean[(b + ahead) % BINS]
        return v_back + (v_ahead - v_back) * back / (back + ahead)

    def observe(self, t: float, x: float) -> float | None:
        """Fold the reading `x` at `t` in; returns its deviation from the profile, or None when
        the reading is not newer than the last one (a backlog drained late, a duplicate)."""
        if self.n and t <= self.last_t:
            return None
        deviation: float | None = None
        if self.n:
            dt = t - self.last_t
            if self.dt_n >= 3 and not (
                self.dt_mean / GAP_FACTOR <= dt <= GAP_FACTOR * self.dt_mean
            ):
                self.chain = 0  # the readings either side of a silence are not one step apart
                self.off_interval += 1
                if self.off_interval >= NEW_INTERVAL_AFTER:
                    self.dt_n = self.lag1_n = self.lag2_n = self.off_interval = 0
            else:
                self.off_interval = 0
                self.dt_n += 1
                self.dt_mean += (dt - self.dt_mean) * _weight(self.dt_n, self.dt_mean, self.horizon)
            deviation = x - self.profile_at(t)
        typical = self.dt_mean
        self.n += 1
        w = _weight(self.n, typical, self.horizon)
        diff = x - self.mean
        self.mean += w * diff
        self.var = (1.0 - w) * (self.var + w * diff * diff)
        if deviation is not None:
            d = deviation
            self.dev_n += 1
            w = _weight(self.dev_n, typical, self.horizon)
            self.dev_mean += w * (d - self.dev_mean)
            self.dev_sq += w * (d * d - self.dev_sq)
            if self.chain >= 1:
                self.lag1_n += 1
                w = _weight(self.lag1_n, typical, self.horizon)
                self.lag1 += w * (d * self.prev1 - self.lag1)
            if self.chain >= 2:
                self.lag2_n += 1
                w = _weight(self.lag2_n, typical, self.horizon)
                self.lag2 += w * (d * self.prev2 - self.lag2)
            self.prev2, self.prev1 = self.prev1, d
            self.chain = min(self.chain + 1, 2)
        b = int((t % SECONDS_PER_DAY) // SECONDS_PER_HOUR) % BINS
        self.bin_n[b] += 1.0
        w = _weight(self.bin_n[b], BINS * typical, self.horizon)
        self.bin_mean[b] += w * (x - self.bin_mean[b])
        self.last_t = t
        self.last_value = x
        return deviation

    def deviation_variance(self) -> float:
        return max(0.0, self.dev_sq - self.dev_mean * self.dev_mean)

    def fit(self) -> Fit:
        """Ornstein-Uhlenbeck plus white noise around the profile, by the method of moments.

        With phi the lag-1 autoregression of the slow part, an AR(1) of variance s2 plus white
        noise of variance w2 has V = s2 + w2, C1 = phi s2, C2 = phi^2 s2, so phi = C2 / C1;
        phi is kept between C1 / V (no white noise at all) and the slowest reversion allowed.
        """
        mean2 = self.dev_mean * self.dev_mean
        v = self.deviation_variance()
        c1 = self.lag1 - mean2
        c2 = self.lag2 - mean2
        dt = self.dt_mean if self.dt_n else 0.0
        profile = tuple(self._bin_value(b) for b in range(BINS))
        if v <= 0.0 or dt <= 0.0 or self.lag1_n < 2 or c1 <= 0.0:
            # No memory from one reading to the next: the deviation is all white noise, and
            # the last one is forgotten at once (an infinite reversion rate).
            return Fit(profile, theta=math.inf, sigma_slow=0.0, sigma_white=math.sqrt(v))
        rho1 = c1 / v
        if rho1 < 2.0 / math.sqrt(min(self.lag1_n, self.horizon / dt)):
            # Within two standard errors of no autocorrelation: C2 / C1 would be noise over
            # noise, and could dress white noise up as a slow process.
            return Fit(profile, theta=math.inf, sigma_slow=0.0, sigma_white=math.sqrt(v))
        phi_max = math.exp(-SLOWEST_REVERSION * dt)
        phi = c2 / c1 if self.lag2_n >= 2 and c2 > 0.0 else rho1
        phi = min(max(phi, rho1), phi_max)
        slow2 = min(v, c1 / phi)
        return Fit(
            profile,
            theta=-math.log(phi) / dt,
            sigma_slow=math.sqrt(slow2),
            sigma_white=math.sqrt(max(0.0, v - slow2)),
        )


@dataclass(frozen=True, slots=True)
class Fit:
    """A quantity's continuation model: deviation from `profile` (24 bin means) is an OU
    process reverting at `theta` per second with stationary spread `sigma_slow`, plus white
    noise `sigma_white` per reading."""

    profile: tuple[float, ...]
    theta: float
    sigma_slow: float
    sigma_white: float

    def profile_at(self, t: float) -> float:
        position = (t % SECONDS_PER_DAY) / SECONDS_PER_HOUR - 0.5
        below = math.floor(position)
        frac = position - below
        v0 = self.profile[below % BINS]
        v1 = self.profile[(below + 1) % BINS]
        return v0 + (v1 - v0) * frac


class StreamStats:
    """The statistics of one (device, sensor) stream: per quantity, and between quantities."""

    __slots__ = ("horizon", "pairs", "quantities", "skipped")

    def __init__(self, horizon: float = HORIZON) -> None:
        self.horizon = horizon
        self.quantities: dict[str, QuantityStats] = {}
        # (a, b) with a < b -> [readings counted, mean of d_a * d_b]
        self.pairs: dict[tuple[str, str], array[float]] = {}
        self.skipped = 0

    def observe(self, t: float, values: Mapping[str, float]) -> None:
        deviations: dict[str, float] = {}
        for name, value in values.items():
            if not math.isfinite(value):
                continue
            stats = self.quantities.get(name)
            if stats is None:
                stats = self.quantities[name] = QuantityStats(self.horizon)
            if stats.n and t <= stats.last_t:
                self.skipped += 1
                continue
            d = stats.observe(t, value)
            if d is not None:
                deviations[name] = d
        names = sorted(deviations)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                pair = self.pairs.get((a, b))
                if pair is None:
                    pair = self.pairs[(a, b)] = array("d", (0.0, 0.0))
                pair[0] += 1.0
                typical = self.quantities[a].dt_mean
                w = _weight(pair[0], typical, self.horizon)
                pair[1] += w * (deviations[a] * deviations[b] - pair[1])

    def correlation(self, a: str, b: str) -> float:
        """Correlation of the deviations of quantities `a` and `b` from their profiles."""
        key = (a, b) if a < b else (b, a)
        pair = self.pairs.get(key)
        qa, qb = self.quantities.get(a), self.quantities.get(b)
        if pair is None or qa is None or qb is None or pair[0] < 2:
            return 0.0
        va, vb = qa.deviation_variance(), qb.deviation_variance()
        if va <= 0.0 or vb <= 0.0:
            return 0.0
        r = (pair[1] - qa.dev_mean * qb.dev_mean) / math.sqrt(va * vb)
        return max(-MAX_CORRELATION, min(MAX_CORRELATION, r))


class StreamLearning:
    """Running statistics of every stream an agent reports, and learned failover signals.

    Thread-safe: readings arrive on the MQTT thread, signals are asked for wherever the
    simulation is reconciled.
    """

    def __init__(self, *, horizon: float = HORIZON, min_samples: int = MIN_SAMPLES) -> None:
        self.horizon = horizon
        self.min_samples = min_samples
        self._streams: dict[tuple[str, str], StreamStats] = {}
        self._lock = threading.Lock()

    def observe(self, telemetry: Telemetry) -> None:
        """Learn from an agent's reading; the simulation's own readings teach nothing."""
        if telemetry.source is Source.SIMULATED:
            return
        self.observe_values(
            telemetry.device,
            telemetry.sensor,
            telemetry.ts,
            {name: v.value for name, v in telemetry.values.items()},
        )

    def observe_values(
        self, device: str, sensor: str, t: float, values: Mapping[str, float]
    ) -> None:
        with self._lock:
            stream = self._streams.get((device, sensor))
            if stream is None:
                stream = self._streams[(device, sensor)] = StreamStats(self.horizon)
            stream.observe(t, values)

    def stream(self, device: str, sensor: str) -> StreamStats | None:
        """The live statistics of a stream (read them under no lock only in tests)."""
        with self._lock:
            return self._streams.get((device, sensor))

    def forget(self, device: str) -> None:
        with self._lock:
            for key in [k for k in self._streams if k[0] == device]:
                del self._streams[key]

    def __len__(self) -> int:
        with self._lock:
            return len(self._streams)

    def signals_for(
        self, device: str, sensor: str, settings: SensorSettings, seed: int
    ) -> dict[str, SignalModel] | None:
        """Signals continuing the stream `sensor` of `device`, one per quantity of its driver,
        or None when no real reading of it was ever seen (the default signals then apply)."""
        try:
            return self._signals_for(device, sensor, settings, seed)
        except Exception:
            # Failover must happen, learned or not: a fault here costs the realism only.
            log.exception("learned signals failed", extra={"device": device, "sensor": sensor})
            return None

    def _signals_for(
        self, device: str, sensor: str, settings: SensorSettings, seed: int
    ) -> dict[str, SignalModel] | None:
        try:
            info = driver_info(settings.driver)
        except HardwareError:
            return None
        with self._lock:
            stream = self._streams.get((device, sensor))
            if stream is None or not stream.quantities:
                return None
            learned: dict[str, _Start] = {}
            anchored: dict[str, tuple[float, float]] = {}
            for q in info.quantities:
                stats = stream.quantities.get(q.name)
                kind = info.default_signal_kind(q.name)
                if stats is None or stats.n == 0:
                    continue
                if stats.n >= self.min_samples and kind not in BINARY_KINDS:
                    learned[q.name] = _Start(
                        stats.fit(), stats.last_t, stats.last_value, PHYSICAL_LIMITS[kind]
                    )
                else:
                    anchored[q.name] = (stats.last_t, stats.last_value)
            names = sorted(learned)
            correlation = [
                [1.0 if a == b else stream.correlation(a, b) for b in names] for a in names
            ]
        if not learned and not anchored:
            return None
        signals: dict[str, SignalModel] = {}
        if learned:
            group = _Continuation(
                {n: learned[n] for n in names},
                _cholesky(correlation),
                derive_seed(seed, "learned", device, sensor),
            )
            signals.update({n: LearnedSignal(group, n) for n in names})
        for q in info.quantities:
            if q.name not in signals:
                kind = info.default_signal_kind(q.name)
                signals[q.name] = _fallback(kind, derive_seed(seed, q.name), anchored.get(q.name))
        return signals


def _fallback(kind: str, seed: int, anchor: tuple[float, float] | None) -> SignalModel:
    """The default signal of `kind`, taking over at the last reading `anchor` (t, value)."""
    if anchor is None:
        return default_signal(kind, seed, rng=LightRandom)
    last_t, last_value = anchor
    if kind == "contact":
        return Toggle(0.2, seed, initial=last_value >= 0.5, origin=last_t)
    if kind in BINARY_KINDS:
        return default_signal(kind, seed, rng=LightRandom)
    return Anchored(
        default_signal(kind, seed, rng=LightRandom), last_t, last_value, PHYSICAL_LIMITS[kind]
    )


@dataclass(frozen=True, slots=True)
class _Start:
    fit: Fit
    t: float
    value: float
    limits: tuple[float, float]


class _Continuation:
    """The joint continuation of one sensor's learned quantities, advanced once per instant
    so that their innovations can be correlated; each `LearnedSignal` reads its share."""

    def __init__(self, starts: Mapping[str, _Start], cholesky: list[list[float]], seed: int):
        self._names = list(starts)
        self._starts = dict(starts)
        self._chol = cholesky
        # A light generator: a stand-in crosses a pipe to the engine's worker, and the
        # Mersenne Twister's 2.5 KB of state a stream made a fleet's failover slow to send.
        self._rng = LightRandom(seed)
        self._t = max(s.t for s in starts.values())
        # The slow part carries the whole last deviation, so the first value is the last one.
        self._slow = [s.value - s.fit.profile_at(s.t) for s in starts.values()]
        self._values = {name: s.value for name, s in starts.items()}
        self._lock = threading.Lock()

    # A stand-in's signals go to the engine's worker through a pipe: pickled without the lock.
    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def fit(self, name: str) -> Fit:
        return self._starts[name].fit

    def value(self, name: str, t: float) -> float:
        with self._lock:
            if t > self._t:
                self._advance(t)
            # Not later than the last instant (the start, or a clock behind the agent's): hold.
            return self._values[name]

    def _advance(self, t: float) -> None:
        dt = t - self._t
        slow_z = self._correlated()
        white_z = self._correlated()
        for i, name in enumerate(self._names):
            start = self._starts[name]
            fit = start.fit
            decay = math.exp(-fit.theta * dt)
            self._slow[i] = (
                self._slow[i] * decay
                + fit.sigma_slow * math.sqrt(max(0.0, 1.0 - decay * decay)) * slow_z[i]
            )
            x = fit.profile_at(t) + self._slow[i] + fit.sigma_white * white_z[i]
            lo, hi = start.limits
            self._values[name] = min(hi, max(lo, x))
        self._t = t

    def _correlated(self) -> list[float]:
        z = [self._rng.gauss(0.0, 1.0) for _ in self._names]
        return [sum(row[j] * z[j] for j in range(i + 1)) for i, row in enumerate(self._chol)]


class LearnedSignal:
    """One quantity of a learned continuation (see the module docstring)."""

    def __init__(self, continuation: _Continuation, quantity: str) -> None:
        self._continuation = continuation
        self.quantity = quantity

    def __repr__(self) -> str:
        fit = self._continuation.fit(self.quantity)
        return (
            f"LearnedSignal({self.quantity!r}, theta={fit.theta:.3g}/s, "
            f"slow={fit.sigma_slow:.3g}, white={fit.sigma_white:.3g})"
        )

    def sample(self, t: float) -> float:
        return self._continuation.value(self.quantity, t)


class Anchored:
    """`model` shifted so that it reads `value` at `t`: a default signal that takes over from
    the last real reading of a stream too short to learn from. Clamped to `limits`."""

    def __init__(
        self, model: SignalModel, t: float, value: float, limits: tuple[float, float]
    ) -> None:
        self.model = model
        self.t = t
        self.value = value
        self.limits = limits
        self._offset: float | None = None

    def __repr__(self) -> str:
        return f"Anchored({self.model!r}, at {self.t!r} = {self.value!r})"

    def sample(self, t: float) -> float:
        if t <= self.t:
            return self.value
        if self._offset is None:
            self._offset = self.value - self.model.sample(self.t)
        x = self.model.sample(t)
        if math.isnan(x):
            return x
        lo, hi = self.limits
        return min(hi, max(lo, x + self._offset))


def _cholesky(matrix: list[list[float]]) -> list[list[float]]:
    """Lower-triangular L with L L^T = `matrix`, a correlation matrix; estimated pairwise, it
    may not quite be positive definite, so its off-diagonal is shrunk until it is."""
    n = len(matrix)
    for shrink in (1.0, 0.9, 0.75, 0.5, 0.25, 0.0):
        lower = [[0.0] * n for _ in range(n)]
        try:
            for i in range(n):
                for j in range(i + 1):
                    a = matrix[i][j] * (shrink if i != j else 1.0)
                    s = a - sum(lower[i][k] * lower[j][k] for k in range(j))
                    if i == j:
                        if s <= 1e-9:
                            raise ValueError("not positive definite")
                        lower[i][j] = math.sqrt(s)
                    else:
                        lower[i][j] = s / lower[j][j]
        except ValueError:
            continue
        return lower
    raise AssertionError("the identity is positive definite")  # pragma: no cover
