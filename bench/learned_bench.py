"""Benchmark of learned failover (gateway/learning.py): memory per stream and the cost of learning.

Run: ``.venv/bin/python bench/learned_bench.py`` (``--help`` for options). Prints a table;
asserts nothing. A few seconds.

1. Memory: N BME280-like streams (temperature, humidity, pressure) of distinct devices, each fed
   1000 readings: every structure exists by then (the hour bins are fixed arrays made with the
   stream, lags and pairs exist after three readings) and the counters are past the small ints
   Python shares; nothing grows after, which tests/test_learned.py checks. tracemalloc's count
   of what the learner holds, divided by N, key tuples and device names included: what the
   gateway holds per stream, not only the arithmetic.
2. Learning: `StreamLearning.observe` on decoded telemetry, the gateway's path, readings/s.
3. Failover: `signals_for` (fit, correlation, Cholesky), and `LearnedSignal.sample` per
   reading of the three quantities of a failed-over stream.
"""

from __future__ import annotations

import argparse
import gc
import random
import time
import tracemalloc

from edgetwin.agent.contract import SensorSettings, Source, Telemetry, Value
from edgetwin.gateway.learning import StreamLearning

START = 1_795_000_000.0
UNITS = {"temperature": "°C", "humidity": "%RH", "pressure": "hPa"}


def reading(rng: random.Random, device: str, seq: int, t: float) -> Telemetry:
    values = {
        "temperature": 21.0 + rng.gauss(0, 1),
        "humidity": 50.0 + rng.gauss(0, 3),
        "pressure": 1013.0 + rng.gauss(0, 0.5),
    }
    return Telemetry(
        device=device,
        sensor="env",
        ts=t,
        seq=seq,
        source=Source.EMULATED,
        values={q: Value(value=v, unit=UNITS[q]) for q, v in values.items()},
    )


def memory_per_stream(streams: int, readings: int) -> float:
    rng = random.Random(1)
    template = [
        (START + 60.0 * i, {q: v.value for q, v in reading(rng, "x", i + 1, START).values.items()})
        for i in range(readings)
    ]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    learning = StreamLearning()
    for d in range(streams):
        device = f"dev-{d:05d}"
        for t, values in template:
            learning.observe_values(device, "env", t, values)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    held = sum(
        s.size_diff
        for s in after.compare_to(before, "filename")
        if s.traceback[0].filename.endswith(("learning.py", "bench/learned_bench.py"))
    )
    assert len(learning) == streams
    return held / streams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=100, help="streams for the memory figure")
    parser.add_argument("--readings", type=int, default=1000, help="readings per stream")
    parser.add_argument("--observe", type=int, default=50_000, help="readings timed in observe")
    args = parser.parse_args()

    per_stream = memory_per_stream(args.streams, args.readings)

    rng = random.Random(2)
    learning = StreamLearning()
    telemetry = [reading(rng, "dev-1", i + 1, START + 10.0 * i) for i in range(args.observe)]
    began = time.perf_counter()
    for t in telemetry:
        learning.observe(t)
    observe_s = time.perf_counter() - began

    settings = SensorSettings(driver="bme280", interval=10.0, address=0x76)
    rounds = 2000
    began = time.perf_counter()
    for seed in range(rounds):
        signals = learning.signals_for("dev-1", "env", settings, seed=seed)
    signals_s = (time.perf_counter() - began) / rounds
    assert signals is not None
    last = telemetry[-1].ts
    samples = 100_000
    began = time.perf_counter()
    for k in range(1, samples + 1):
        at = last + 10.0 * k
        for model in signals.values():
            model.sample(at)
    sample_s = (time.perf_counter() - began) / samples

    print(f"{'figure':<52} {'value':>14}")
    print(f"{'memory per stream (3 quantities, all bins full)':<52} {per_stream:>10,.0f} B")
    print(f"{'memory per quantity (the above / 3)':<52} {per_stream / 3:>10,.0f} B")
    print(
        f"{'observe(): readings of 3 quantities per second':<52} {args.observe / observe_s:>12,.0f}"
    )
    print(f"{'signals_for(): one failover, 3 quantities':<52} {signals_s * 1e6:>11,.0f} µs")
    print(
        f"{'LearnedSignal.sample(): one reading of 3 quantities':<52} {sample_s * 1e6:>11,.1f} µs"
    )


if __name__ == "__main__":
    main()
