"""Benchmark of the recent history per stream (gateway/history.py): memory and cost per reading.

Run: ``.venv/bin/python bench/history_bench.py`` (``--help`` for options). Prints a table;
asserts nothing. A few seconds.

1. Memory: N three-quantity streams (BME280-like: temperature, humidity, pressure) of distinct
   devices, each filled past its capacity; tracemalloc's count of what the history holds,
   divided by N (ring columns, key tuples, the LRU order and the device index included).
2. Cost per reading: `Fleet.apply_telemetry`, the twin's path on the MQTT thread, over decoded
   readings of 10,000 streams, with the history off (`points = 0`) and on; the difference is
   what the history adds per message. `History.record` alone too, and with the stream bound
   reached (every reading of a new stream evicts one).
"""

from __future__ import annotations

import argparse
import gc
import random
import time
import tracemalloc

from edgetwin.agent.contract import Source, Telemetry, Value
from edgetwin.gateway.config import ManifestDevice
from edgetwin.gateway.fleet import Fleet
from edgetwin.gateway.history import History

START = 1_795_000_000.0
UNITS = {"temperature": "°C", "humidity": "%RH", "pressure": "hPa"}


def readings(streams: int, per_stream: int) -> list[Telemetry]:
    rng = random.Random(1)
    out = []
    for seq in range(1, per_stream + 1):
        for d in range(streams):
            values = {
                "temperature": round(21.0 + rng.gauss(0, 1), 2),
                "humidity": round(50.0 + rng.gauss(0, 3), 2),
                "pressure": round(1013.0 + rng.gauss(0, 0.5), 2),
            }
            out.append(
                Telemetry(
                    device=f"dev-{d:05d}",
                    sensor="env",
                    ts=START + seq,
                    seq=seq,
                    source=Source.EMULATED,
                    values={q: Value(value=v, unit=UNITS[q]) for q, v in values.items()},
                )
            )
    return out


def memory_per_stream(streams: int, points: int) -> float:
    # Readings share their objects across streams (the history copies values into columns):
    # what is counted is the history's own.
    template = readings(1, points + 10)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    history = History(points, max_streams=streams)
    for d in range(streams):
        device = f"dev-{d:05d}"
        for t in template:
            history.record(t.replace(device=device) if d else t)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    held = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert len(history) == streams
    return held / streams


def per_reading(points: int, streams: int, rounds: int) -> float:
    batch = readings(streams, rounds)
    fleet = Fleet(
        [ManifestDevice(id=f"dev-{d:05d}", sensors={}) for d in range(streams)],
        History(points),
    )
    for t in batch[:streams]:  # streams exist, as after the first minute
        fleet.apply_telemetry(t)
    gc.collect()
    started = time.perf_counter()
    for t in batch:
        fleet.apply_telemetry(t)
    return (time.perf_counter() - started) / len(batch)


def record_alone(points: int, streams: int, rounds: int, max_streams: int) -> float:
    batch = readings(streams, rounds)
    history = History(points, max_streams=max_streams)
    for t in batch[:streams]:
        history.record(t)
    started = time.perf_counter()
    for t in batch:
        history.record(t)
    return (time.perf_counter() - started) / len(batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=300)
    parser.add_argument("--memory-streams", type=int, default=2000)
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()

    per_stream = memory_per_stream(args.memory_streams, args.points)
    print(f"{'figure':<58} {'measured':>14}")
    print(
        f"{'memory per 3-quantity stream, full (' + str(args.points) + ' points)':<58}"
        f" {per_stream / 1024:>11.1f} KiB"
    )
    print(f"{'  per point':<58} {per_stream / args.points:>12.1f} B")
    print(f"{'  50,000 streams':<58} {per_stream * 50_000 / 2**20:>11.0f} MiB")
    costs = {}
    for points in (0, args.points):
        best = min(per_reading(points, args.streams, args.rounds) for _ in range(3))
        costs[points] = best
        label = "off" if points == 0 else f"{points} points"
        print(f"{'Fleet.apply_telemetry, history ' + label:<58} {best * 1e6:>11.2f} µs")
    added = costs[args.points] - costs[0]
    print(f"{'  added by the history per reading':<58} {added * 1e6:>11.2f} µs")
    alone = min(record_alone(args.points, args.streams, args.rounds, 50_000) for _ in range(3))
    print(f"{'History.record alone':<58} {alone * 1e6:>11.2f} µs")
    evicting = min(record_alone(args.points, args.streams, 2, args.streams // 2) for _ in range(3))
    print(f"{'History.record, every reading evicting a stream':<58} {evicting * 1e6:>11.2f} µs")


if __name__ == "__main__":
    main()
