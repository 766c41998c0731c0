"""Twin-learned failover (docs/design.md, 'Learned signals'): running statistics of real
streams, and the simulation that continues a stream like its own history when its sensor goes
missing."""

from __future__ import annotations

import itertools
import math
import random
import signal
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Mapping
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from edgetwin.agent.contract import SensorSettings, Source, Telemetry, Topics, Value
from edgetwin.gateway.app import create_app
from edgetwin.gateway.config import load_gateway_config
from edgetwin.gateway.learning import (
    Anchored,
    LearnedSignal,
    QuantityStats,
    StreamLearning,
    StreamStats,
)
from edgetwin.gateway.scenario.generator import PlacedStream, PlacedStreams
from edgetwin.gateway.standins import standin_stream
from edgetwin.hardware import EmulatedBackend, ManualClock, open_sensor
from edgetwin.hardware.registry import reading_quantities
from edgetwin.hardware.signals import (
    Constant,
    DailyCycle,
    Noise,
    RandomWalk,
    SignalModel,
    Sum,
    derive_seed,
)
from edgetwin.testing.broker import Broker
from edgetwin.testing.capture import Capture, Message
from edgetwin.testing.process import stop_process
from edgetwin.testing.waiting import poll
from tests.fleet_helpers import REPO
from tests.fridge_agent import FRIDGE_HUMIDITY, FRIDGE_TEMPERATURE

START = 1_795_000_000.0  # a virtual epoch, 2026-11-18 07:06:40 UTC
DEVICE = "lab-01"
SETTINGS = SensorSettings(driver="bme280", interval=10.0, address=0x76)


def feed(stats: QuantityStats, values: list[float], dt: float, t0: float = START) -> None:
    for i, x in enumerate(values):
        stats.observe(t0 + i * dt, x)


def ou_with_noise(
    n: int, phi: float, sigma_slow: float, sigma_white: float, seed: int
) -> list[float]:
    """An AR(1) of stationary spread `sigma_slow` plus white noise: what the fit assumes."""
    rng = random.Random(seed)
    slow = rng.gauss(0, sigma_slow)
    out = []
    for _ in range(n):
        slow = phi * slow + sigma_slow * math.sqrt(1 - phi * phi) * rng.gauss(0, 1)
        out.append(10.0 + slow + rng.gauss(0, sigma_white))
    return out


# -- statistics against known series ------------------------------------------------------------


def test_level_and_variance_are_the_exact_ones_within_the_horizon() -> None:
    rng = random.Random(1)
    values = [rng.uniform(-5, 30) for _ in range(1000)]
    stats = QuantityStats()
    feed(stats, values, dt=1.0)  # 1000 s, far inside the 3-day horizon: plain running moments
    assert stats.n == 1000
    assert stats.mean == pytest.approx(statistics.fmean(values), rel=1e-12)
    assert stats.var == pytest.approx(statistics.pvariance(values), rel=1e-9)
    assert (stats.last_t, stats.last_value) == (START + 999, values[-1])


def test_the_daily_profile_is_the_mean_of_each_hour() -> None:
    cycle = DailyCycle(20.0, 3.0, peak_hour=15.0)
    stats = QuantityStats()
    t0 = 1_795_000_000.0 - 1_795_000_000.0 % 86_400  # midnight UTC
    times = [t0 + i * 300.0 for i in range(2 * 288)]  # two days, every 5 minutes
    for t in times:
        stats.observe(t, cycle.sample(t))
    for hour in range(24):
        in_bin = [cycle.sample(t) for t in times if int((t % 86_400) // 3600) == hour]
        assert stats.bin_mean[hour] == pytest.approx(statistics.fmean(in_bin), abs=1e-9)
    # Between bin centres the profile interpolates: at the peak, halfway between the means of
    # 14:00-15:00 and 15:00-16:00, a cosine averaged that way keeps cos(7.5°) x 0.997 of its
    # amplitude: 2.966 of 3.
    assert stats.profile_at(t0 + 15 * 3600) == pytest.approx(22.966, abs=0.002)
    assert stats.profile_at(t0 + 3 * 3600) == pytest.approx(17.034, abs=0.002)


def test_hours_not_seen_yet_are_bridged_from_their_neighbours() -> None:
    stats = QuantityStats()
    t0 = 1_795_000_000.0 - 1_795_000_000.0 % 86_400
    stats.observe(t0 + 2.5 * 3600, 10.0)  # the 02:00 bin
    stats.observe(t0 + 6.5 * 3600, 20.0)  # the 06:00 bin
    assert stats.profile_at(t0 + 4.5 * 3600) == pytest.approx(15.0)  # halfway, at 04:30
    # The other way round the clock: 20 hours from 06:00 back to 02:00.
    assert stats.profile_at(t0 + 16.5 * 3600) == pytest.approx(20.0 - 10.0 * 10 / 20)


def test_a_slow_process_with_sensor_noise_is_told_apart_from_the_noise() -> None:
    phi, dt = 0.95, 10.0
    stats = QuantityStats()
    feed(stats, ou_with_noise(20_000, phi, 1.0, 0.3, seed=2), dt=dt)
    fit = stats.fit()
    # 20,000 readings: the moment estimates carry a few per cent of sampling error; phi from
    # C2 / C1 is the least certain, and theta = -ln(phi) / dt magnifies it near 1.
    assert fit.theta == pytest.approx(-math.log(phi) / dt, rel=0.25)
    assert fit.sigma_slow == pytest.approx(1.0, rel=0.1)
    assert fit.sigma_white == pytest.approx(0.3, rel=0.25)


def test_white_noise_alone_has_no_memory() -> None:
    rng = random.Random(3)
    stats = QuantityStats()
    feed(stats, [5.0 + rng.gauss(0, 0.5) for _ in range(5000)], dt=1.0)
    fit = stats.fit()
    # What one reading passes on to the next, through the slow part, is next to nothing.
    assert fit.sigma_slow * math.exp(-fit.theta * 1.0) < 0.05
    assert math.sqrt(fit.sigma_slow**2 + fit.sigma_white**2) == pytest.approx(0.5, rel=0.05)


def test_correlation_between_the_quantities_of_a_sensor() -> None:
    rng = random.Random(4)
    stream = StreamStats()
    for i in range(5000):
        a, b = rng.gauss(0, 1), rng.gauss(0, 1)
        stream.observe(START + i, {"temperature": 20 + a, "humidity": 50 - 0.8 * a + 0.6 * b})
    assert stream.correlation("temperature", "humidity") == pytest.approx(-0.8, abs=0.05)
    assert stream.correlation("humidity", "temperature") == stream.correlation(
        "temperature", "humidity"
    )
    assert stream.correlation("temperature", "pressure") == 0.0


def test_a_silence_breaks_the_lag_chain_and_old_readings_are_skipped() -> None:
    stream = StreamStats()
    for i in range(10):
        stream.observe(START + i, {"temperature": 20.0 + i % 2})
    for i in range(10):
        stream.observe(START + 86_400 + i, {"temperature": 20.0 + i % 2})
    stats = stream.quantities["temperature"]
    # Each run of 10 readings gives 9 deviations (the very first has no profile to deviate
    # from), hence 8 lag-1 pairs; the run after the silence starts a new chain: 8 + 9 in all.
    assert stats.lag1_n == 8 + 9
    assert stats.dt_mean == pytest.approx(1.0)
    stream.observe(START + 86_400 + 5, {"temperature": 99.0})  # a backlog reading, drained late
    stream.observe(START + 86_400 + 9, {"temperature": 99.0})  # a duplicate
    assert stream.skipped == 2
    assert stats.n == 20
    assert stats.last_value == 21.0


def test_a_new_interval_is_adopted_after_a_few_readings() -> None:
    stats = QuantityStats()
    rng = random.Random(7)
    feed(stats, [rng.gauss(0, 1) for _ in range(100)], dt=10.0)
    assert stats.dt_mean == pytest.approx(10.0)
    # The desired config moved the stream to one reading a minute: after three such intervals
    # in a row the typical one starts over from them, as do the moments lagged by it.
    feed(stats, [rng.gauss(0, 1) for _ in range(10)], dt=60.0, t0=stats.last_t + 60.0)
    assert stats.dt_mean == pytest.approx(60.0)
    # The third starts the new chain; each of the seven after it pairs with its predecessor.
    assert stats.lag1_n == 10 - 3
    # ... and back to a reading every second.
    feed(stats, [rng.gauss(0, 1) for _ in range(10)], dt=1.0, t0=stats.last_t + 1.0)
    assert stats.dt_mean == pytest.approx(1.0)


def test_memory_per_stream_does_not_grow_with_readings() -> None:
    learning = StreamLearning()
    rng = random.Random(5)

    def readings(start: int, count: int) -> None:
        for i in range(start, start + count):
            learning.observe_values(
                DEVICE,
                "env",
                START + 10.0 * i,
                {"temperature": rng.gauss(20, 1), "humidity": rng.gauss(50, 3)},
            )

    readings(0, 9000)  # every hour bin, pair and lag already seen
    tracemalloc.start()
    try:
        # Every number held is replaced on the next readings: after these, all are traced.
        readings(9000, 100)
        before = tracemalloc.take_snapshot()
        readings(9100, 20_000)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(
        d.size_diff
        for d in after.compare_to(before, "filename")
        if d.traceback[0].filename.endswith("learning.py")
    )
    assert grown <= 0, f"{grown} bytes more after 20,000 more readings"


def test_simulated_readings_teach_nothing() -> None:
    learning = StreamLearning()
    reading = Telemetry(
        device=DEVICE,
        sensor="env",
        ts=START,
        seq=1,
        source=Source.SIMULATED,
        values={"temperature": Value(value=20.0, unit="°C")},
    )
    learning.observe(reading)
    assert learning.stream(DEVICE, "env") is None
    assert learning.signals_for(DEVICE, "env", SETTINGS, seed=1) is None


def test_a_removed_device_is_forgotten() -> None:
    learning = StreamLearning()
    learning.observe_values(DEVICE, "env", START, {"temperature": 20.0})
    learning.observe_values(DEVICE, "outdoor", START, {"temperature": 5.0})
    learning.observe_values("other", "env", START, {"temperature": 20.0})
    learning.forget(DEVICE)
    assert len(learning) == 1
    assert learning.stream("other", "env") is not None


# -- the continuation ---------------------------------------------------------------------------


def learned_from_ou(seed: int = 6) -> StreamLearning:
    """Two days of an OU temperature (time constant 1000 s) around 10 °C, 0.2 °C of noise."""
    learning = StreamLearning()
    values = ou_with_noise(17_280, math.exp(-10.0 / 1000.0), 1.0, 0.2, seed=seed)
    for i, x in enumerate(values):
        learning.observe_values(DEVICE, "env", START + 10.0 * i, {"temperature": x})
    return learning


def test_the_continuation_starts_at_the_last_value_and_is_reproducible() -> None:
    learning = learned_from_ou()
    stats = learning.stream(DEVICE, "env")
    assert stats is not None
    last_t, last = (
        stats.quantities["temperature"].last_t,
        stats.quantities["temperature"].last_value,
    )

    def run(seed: int) -> list[float]:
        signals = learning.signals_for(DEVICE, "env", SETTINGS, seed=seed)
        assert signals is not None
        temperature = signals["temperature"]
        assert isinstance(temperature, LearnedSignal)
        assert temperature.sample(last_t - 5) == last  # a clock behind the agent's: hold
        assert temperature.sample(last_t) == last
        return [temperature.sample(last_t + 10.0 * k) for k in range(1, 100)]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_the_continuation_reverts_to_the_profile_with_the_learned_spread() -> None:
    learning = learned_from_ou()
    stats = learning.stream(DEVICE, "env")
    assert stats is not None
    fit = stats.quantities["temperature"].fit()
    signals = learning.signals_for(DEVICE, "env", SETTINGS, seed=9)
    assert signals is not None
    last_t = stats.quantities["temperature"].last_t
    # Ten days every 600 s: 1440 samples 0.6 time constants apart (correlated 0.55), the start
    # long forgotten. The mean deviation's standard error is then about 0.05 of the spread,
    # the spread's own relative error about 3 %.
    times = [last_t + 600.0 * k for k in range(1, 1441)]
    values = [signals["temperature"].sample(t) for t in times]
    deviations = [x - fit.profile_at(t) for t, x in zip(times, values, strict=True)]
    spread = math.hypot(fit.sigma_slow, fit.sigma_white)
    assert abs(statistics.fmean(deviations)) < 0.2 * spread
    assert statistics.pstdev(deviations) == pytest.approx(spread, rel=0.1)
    # Profile and deviation together spread like the history (part of a slow wander is
    # learned as daily profile from two days, so neither alone need match it).
    history_sd = math.sqrt(stats.quantities["temperature"].var)
    assert statistics.pstdev(values) == pytest.approx(history_sd, rel=0.15)


def test_the_continuation_stays_within_physical_limits() -> None:
    learning = StreamLearning()
    rng = random.Random(10)
    for i in range(2000):  # a soaked sensor: near saturation, very noisy
        learning.observe_values(
            DEVICE, "env", START + 10.0 * i, {"humidity": min(100.0, rng.gauss(97, 5))}
        )
    signals = learning.signals_for(DEVICE, "env", SETTINGS, seed=1)
    assert signals is not None
    values = [signals["humidity"].sample(START + 20_000 + 10.0 * k) for k in range(1000)]
    assert max(values) == 100.0  # the clamp is at work: unclamped, a third would be above
    assert min(values) >= 0.0


def test_a_short_history_falls_back_to_the_default_signal_from_the_last_value() -> None:
    learning = StreamLearning()
    for i in range(5):
        learning.observe_values(DEVICE, "env", START + i, {"temperature": 4.0, "humidity": 85.0})
    signals = learning.signals_for(DEVICE, "env", SETTINGS, seed=1)
    assert signals is not None
    temperature = signals["temperature"]
    assert isinstance(temperature, Anchored)
    assert temperature.sample(START + 4) == 4.0
    # The default room signal moves by under a degree in ten minutes; it was at ~21 °C.
    later = [temperature.sample(START + 4 + 10.0 * k) for k in range(1, 60)]
    assert all(abs(x - 4.0) < 1.0 for x in later)
    assert not isinstance(signals["pressure"], Anchored)  # never reported: the plain default
    assert learning.signals_for(DEVICE, "other", SETTINGS, seed=1) is None


# -- the test: a day and more of real-looking readings, then an hour of simulation ------


class Scaled:
    def __init__(self, model: SignalModel, factor: float) -> None:
        self.model, self.factor = model, factor

    def sample(self, t: float) -> float:
        return self.factor * self.model.sample(t)


def server_room(seed: int) -> dict[str, SignalModel]:
    """A warm server room whose humidity falls as its temperature wanders up (one shared walk:
    RandomWalk returns the same value when sampled twice at one instant)."""
    walk = RandomWalk(-0.8, 0.8, step=0.004, seed=derive_seed(seed, "walk"), start=0.0)
    return {
        "temperature": Sum(DailyCycle(27.0, 1.5, peak_hour=16.0), walk, Noise(0.05, seed=seed)),
        "humidity": Sum(
            DailyCycle(35.0, 3.0, peak_hour=4.0), Scaled(walk, -4.0), Noise(0.3, seed=seed + 1)
        ),
        "pressure": Sum(Constant(990.0), Noise(0.02, seed=seed + 2)),
    }


HISTORY_INTERVAL = 60.0
HISTORY_DAYS = 2


def record_history(
    learning: StreamLearning, clock: ManualClock, signals: dict[str, SignalModel] | None, seed: int
) -> dict[str, list[tuple[float, float]]]:
    """Two days of an agent's readings, every minute of virtual time, from an emulated BME280
    read by the real driver, taught to the gateway the way its telemetry arrives: as payloads."""
    backend = EmulatedBackend(clock=clock, seed=seed)
    sensor = open_sensor("bme280", backend=backend, address=0x76, signals=signals)
    history: dict[str, list[tuple[float, float]]] = {}
    for seq in range(1, int(HISTORY_DAYS * 86_400 / HISTORY_INTERVAL) + 1):
        if seq > 1:
            clock.advance(HISTORY_INTERVAL)
        reading = sensor.read()
        wire = Telemetry(
            device=DEVICE,
            sensor="env",
            ts=reading.timestamp,
            seq=seq,
            source=Source.EMULATED,
            values={q: Value(value=m.value, unit=m.unit) for q, m in reading.values.items()},
        ).encode()
        learning.observe(Telemetry.decode(wire))
        for q, m in reading.values.items():
            history.setdefault(q, []).append((reading.timestamp, m.value))
    sensor.close()
    backend.close()
    return history


def simulate_hour(
    clock: ManualClock, signals: Mapping[str, SignalModel] | None
) -> dict[str, list[float]]:
    """An hour of the failover simulation, every 10 s: the driver reading an emulated chip that
    measures `signals` (the default ones when None), as the simulation engine opens it."""
    backend = EmulatedBackend(clock=clock, seed=123)
    sensor = open_sensor("bme280", backend=backend, address=0x76, signals=signals)
    out: dict[str, list[float]] = {}
    for _ in range(360):
        for q, m in sensor.read().values.items():
            out.setdefault(q, []).append(m.value)
        clock.advance(10.0)
    backend.close()
    return out


def hourly(series: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """The mean and the standard deviation of each whole hour of `series`."""
    hours: dict[int, list[float]] = {}
    for t, x in series:
        hours.setdefault(int(t // 3600), []).append(x)
    full = [xs for xs in hours.values() if len(xs) == 60]
    return [statistics.fmean(xs) for xs in full], [statistics.pstdev(xs) for xs in full]


def check_continuation(
    history: list[tuple[float, float]], simulated: list[float], quantity: str
) -> None:
    """The bounds of the issue's test, for one quantity.

    - Start: the first simulated reading, half an interval after the last real one, is within
      four standard deviations of the real stream's own step-to-step change of the last value.
    - Level: the simulated hour's mean lies within the range of the real history's hourly
      means and its last value (where a stream stops at a new extreme, its continuation starts
      there), give or take one standard deviation of the real change from one hour's mean to
      the next: the continuation sits where this sensor has been, not elsewhere. The margin is
      needed because a true continuation may step just past the extremes of 48 hours as well.
    - Spread: the simulated hour's standard deviation lies between half the smallest and twice
      the largest of the real hourly ones: as jittery and as wandering as an hour of this
      sensor, not a held or smoothed value, not noise of another scale. An hour of a wandering
      signal has a broad spread of spreads, so a 49th hour falls outside the range of 48 about
      once in 25 even when it is real: hence the factor of two.
    """
    values = [x for _, x in history]
    steps = [b - a for a, b in itertools.pairwise(values)]
    assert abs(simulated[0] - values[-1]) <= 4 * statistics.pstdev(steps), (
        quantity,
        simulated[0],
        values[-1],
    )
    means, sds = hourly(history)
    margin = statistics.pstdev([b - a for a, b in itertools.pairwise(means)])
    mean, sd = statistics.fmean(simulated), statistics.pstdev(simulated)
    lo, hi = min(*means, values[-1]) - margin, max(*means, values[-1]) + margin
    assert lo <= mean <= hi, (quantity, mean, means, values[-1], margin)
    assert min(sds) / 2 <= sd <= 2 * max(sds), (quantity, sd, min(sds), max(sds))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_stopped_stream_continues_within_its_own_history(seed: int) -> None:
    """Default indoor signals (daily cycle, weather walk, sensor noise) as the real stream."""
    clock = ManualClock(START)
    learning = StreamLearning()
    history = record_history(learning, clock, None, seed)
    clock.advance(HISTORY_INTERVAL / 2)  # failover half an interval after
    signals = learning.signals_for(DEVICE, "env", SETTINGS, seed=seed)
    assert signals is not None
    simulated = simulate_hour(clock, signals)
    for quantity in ("temperature", "humidity", "pressure"):
        check_continuation(history[quantity], simulated[quantity], quantity)


def test_the_continuation_is_this_sensors_and_not_generic_noise() -> None:
    clock = ManualClock(START)
    learning = StreamLearning()
    history = record_history(learning, clock, server_room(4), seed=4)
    clock.advance(HISTORY_INTERVAL / 2)
    failover = clock()
    signals = learning.signals_for(DEVICE, "env", SETTINGS, seed=4)
    assert signals is not None
    simulated = simulate_hour(clock, signals)
    for quantity in ("temperature", "humidity", "pressure"):
        check_continuation(history[quantity], simulated[quantity], quantity)

    # The generic simulation of the same chip fails these bounds: a 21 °C room at 1013 hPa,
    # where this one is at 25-29 °C and 990 hPa.
    clock = ManualClock(failover)
    generic = simulate_hour(clock, None)
    for quantity in ("temperature", "pressure"):
        with pytest.raises(AssertionError):
            check_continuation(history[quantity], generic[quantity], quantity)

    # Humidity moves against temperature as it did: their deviations from the learned daily
    # profiles are correlated as in the history (-0.9 or so: a shared walk under the noise).
    stats = learning.stream(DEVICE, "env")
    assert stats is not None
    learned = stats.correlation("temperature", "humidity")
    assert learned < -0.8
    fits = {q: stats.quantities[q].fit() for q in ("temperature", "humidity")}
    times = [failover + 10.0 * k for k in range(360)]
    deviation = {
        q: [x - fits[q].profile_at(t) for t, x in zip(times, simulated[q], strict=True)]
        for q in fits
    }
    assert statistics.correlation(deviation["temperature"], deviation["humidity"]) < -0.5


# -- the stand-in stream ------------------------------------------------------------------------


def test_a_stand_in_plays_the_learned_signals_at_the_drivers_resolution() -> None:
    clock = ManualClock(START)
    learning = StreamLearning()
    history = record_history(learning, clock, server_room(5), seed=5)
    last = {q: series[-1][1] for q, series in history.items()}
    outdoor = SensorSettings(driver="bme280", interval=10.0, address=0x77)
    streams = PlacedStreams(Topics())

    def stand_in(sensor: str, settings: SensorSettings, seq: int) -> PlacedStream:
        return standin_stream(
            DEVICE, sensor, settings, seed=0, seq=seq, signals=learning.signals_for
        )

    def read(sensor: str) -> Telemetry:
        index = next(s.index for s in streams.streams() if s.sensor == sensor)
        [(topic, payload, retain)] = streams.emit(index, clock())
        assert topic == f"edgetwin/{DEVICE}/telemetry/{sensor}"
        assert not retain
        return Telemetry.decode(payload)

    assert (
        streams.place(
            DEVICE, [], [stand_in("env", SETTINGS, 41), stand_in("outdoor", outdoor, 0)], clock()
        )
        == {}
    )
    first = read("env")
    assert (first.source, first.seq) == (Source.SIMULATED, 42)
    # No time has passed since the last real reading (the clock stands still): the stand-in
    # gives exactly the last value, at the driver's resolution and in its units.
    resolution = {q.name: q.decimals for q in reading_quantities("bme280")}
    for quantity in ("temperature", "humidity", "pressure"):
        value = first.values[quantity].value
        assert value == pytest.approx(last[quantity], abs=10 ** -resolution[quantity])
        assert value == round(value, resolution[quantity])
    assert {q: v.unit for q, v in first.values.items()} == {
        "temperature": "°C",
        "humidity": "%RH",
        "pressure": "hPa",
    }
    # The device's other sensor has no history: the default signals play it.
    assert read("outdoor").seq == 1
    # The stream stops, its numbering handed back, while its neighbour goes on; restarted
    # later, it continues the learned signals and the numbering.
    assert streams.place(DEVICE, ["outdoor"], [], clock()) == {"env": 42}
    clock.advance(5.0)
    assert streams.place(DEVICE, ["outdoor"], [stand_in("env", SETTINGS, 42)], clock()) == {}
    assert {s.sensor for s in streams.streams()} == {"env", "outdoor"}
    again = read("env")
    assert again.seq == 43
    assert again.values["temperature"].value == pytest.approx(last["temperature"], abs=0.5)
    assert read("outdoor").seq == 2


# -- end to end: an agent killed, its stream continued by the gateway ---------------------------

FRIDGE = "fridge-01"
TOKEN = "learned-token"
AGENT_INTERVAL = 0.1


def gateway_toml(broker: Broker) -> str:
    return f"""
[mqtt]
host = "{broker.host}"
port = {broker.port}
protocol = "{broker.protocol}"
keepalive = 2
reconnect_min_delay = 0.1
reconnect_max_delay = 0.5

[presence]
startup_grace = 0.3

[api]
token = "{TOKEN}"

[[devices]]
id = "{FRIDGE}"
[devices.sensors.env]
driver = "bme280"
address = 0x76
interval = {AGENT_INTERVAL}
"""


def fridge_agent_toml(broker: Broker, state_dir: Path) -> str:
    return f"""
[agent]
device_id = "{FRIDGE}"
state_dir = "{state_dir}"

[mqtt]
host = "{broker.host}"
port = {broker.port}
protocol = "{broker.protocol}"
keepalive = 1

[outbox]
commit_interval = 0.1

[sensors.env]
driver = "bme280"
address = 0x76
interval = {AGENT_INTERVAL}
backend = "emulated"
"""


def reading(message: Message) -> Telemetry:
    return Telemetry.decode(message.payload)


@pytest.mark.integration
def test_gateway_continues_a_killed_agents_stream_from_its_last_value(
    broker: Broker, tmp_path: Path
) -> None:
    gateway_file = tmp_path / "gateway.toml"
    gateway_file.write_text(gateway_toml(broker))
    agent_file = tmp_path / "agent.toml"
    agent_file.write_text(fridge_agent_toml(broker, tmp_path / "state"))
    with (
        Capture(broker, f"edgetwin/{FRIDGE}/telemetry/env") as sub,
        TestClient(create_app(load_gateway_config(gateway_file))) as client,
    ):
        agent = subprocess.Popen(
            [sys.executable, "-m", "tests.fridge_agent", str(agent_file)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            poll(
                lambda: client.get(f"/devices/{FRIDGE}").json()["presence"] == "online",
                15,
                what="fridge agent online",
            )
            # Enough readings for the gateway to learn from (30), and then some.
            sub.wait_for(lambda m: reading(m).source is Source.EMULATED, count=40, timeout=15)
            agent.kill()
            killed = time.monotonic()
            sub.wait_for(
                lambda m: reading(m).source is Source.SIMULATED and m.received_at > killed,
                count=20,
                timeout=10,
            )
        finally:
            stop_process(agent, signal.SIGKILL)
    # Before the agent came up the gateway simulated the fridge from nothing; what matters is
    # what follows its last real reading.
    messages = [reading(m) for m in sub.messages()]
    last = max(i for i, t in enumerate(messages) if t.source is Source.EMULATED)
    last_real = messages[last]
    simulated = messages[last + 1 :]
    assert simulated
    assert all(t.source is Source.SIMULATED for t in simulated)
    start = simulated[0]
    # The fridge's readings jitter by 0.05 °C and 0.3 %RH around 4 °C and 85 %RH (the default
    # simulation would say ~21 °C, ~50 %RH): the first simulated reading is the last real one
    # plus at most a few of those jitters, and the next ones stay in the fridge.
    assert start.values["temperature"].value == pytest.approx(
        last_real.values["temperature"].value, abs=0.3
    )
    assert start.values["humidity"].value == pytest.approx(
        last_real.values["humidity"].value, abs=1.8
    )
    assert start.seq == last_real.seq + 1
    temperatures = [t.values["temperature"].value for t in simulated]
    humidities = [t.values["humidity"].value for t in simulated]
    assert all(abs(x - FRIDGE_TEMPERATURE) < 0.5 for x in temperatures), temperatures
    assert all(abs(x - FRIDGE_HUMIDITY) < 3.0 for x in humidities), humidities
