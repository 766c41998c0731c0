"""Benchmark of the scenario generator (gateway/scenario): microseconds per `Generator.emit`.

Run: ``.venv/bin/python bench/generator_bench.py`` (``--help`` for options). Prints a table;
asserts nothing. About ten seconds with the defaults.

Each case builds `default_scenario(N)` (one sensor "env" per device: temperature, humidity,
pressure, realistic default signals), opens every stream once (first readings, not timed),
then times `rounds` further readings of every stream in schedule order, the way the engine
and virtual time call it. Reported: CPU microseconds per call (process time, best of
`repeat` runs: the machine is shared), and the size of the payload one call returns.
Setup costs (streams(), Generator(), the first emit of each stream, which builds its signal
models) and memory per opened stream are shown once.
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
from collections.abc import Callable
from typing import Literal

from edgetwin.agent.contract import Telemetry, Topics
from edgetwin.gateway.scenario import FaultSpec, Generator, default_scenario
from edgetwin.gateway.scenario.model import FaultType

START = 1_795_737_600.0


def timed(fn: Callable[[], object]) -> float:
    """CPU seconds of `fn`: on a machine shared with other work, wall time would count the
    time this process waits for a core."""
    gc.collect()
    began = time.process_time()
    fn()
    return time.process_time() - began


def run_rounds(generator: Generator, phases: list[float], rounds: int, first: int) -> None:
    emit = generator.emit
    for k in range(first, first + rounds):
        base = START + k
        for index, phase in enumerate(phases):
            emit(index, base + phase)


def case(
    name: str,
    devices: int,
    rounds: int,
    repeat: int,
    *,
    payload: Literal["edgetwin", "flat"] = "edgetwin",
    fault: FaultType | None = None,
) -> tuple[str, float, int]:
    scenario = default_scenario(devices, seed=1)
    phases = [s.phase for s in scenario.streams()]
    generator = scenario.generator(Topics(), payload=payload)
    if fault is not None:
        generator.inject(FaultSpec(id="bench", type=fault, start=START, duration=1e9, devices="*"))
    run_rounds(generator, phases, 1, 0)  # opens every stream
    sample = generator.emit(0, START + 1 + phases[0])
    size = len(sample[-1][1]) if sample else 0
    if payload == "edgetwin" and sample:
        Telemetry.decode(sample[-1][1])  # what is timed must be a valid reading
    runs = []
    for r in range(repeat):
        first = 2 + r * rounds  # later times each run: a stream's times never go back
        runs.append(timed(lambda: run_rounds(generator, phases, rounds, first)))  # noqa: B023
    best = min(runs)
    return name, best / (rounds * devices) * 1e6, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--devices", type=int, default=10_000, help="streams in the timed cases")
    parser.add_argument("--rounds", type=int, default=20, help="readings per stream per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; the best counts")
    parser.add_argument("--fleet", type=int, default=50_000, help="fleet size for setup costs")
    args = parser.parse_args()

    rows = [
        case("emit, edgetwin payload, 3 quantities", args.devices, args.rounds, args.repeat),
        case("emit, flat payload", args.devices, args.rounds, args.repeat, payload="flat"),
        case(
            "emit, spike fault active (labelled)",
            args.devices,
            args.rounds,
            args.repeat,
            fault="spike",
        ),
    ]
    print(
        f"Generator.emit, {args.devices:,} streams x {args.rounds} readings, best of {args.repeat}"
    )
    print(f"{'case':<42} {'us/call':>8} {'bytes':>6}")
    for name, micros, size in rows:
        print(f"{name:<42} {micros:>8.2f} {size:>6}")

    scenario = default_scenario(args.fleet)
    streams_s = timed(scenario.streams)
    holder: list[Generator] = []
    build_s = timed(lambda: holder.append(scenario.generator(Topics())))
    generator = holder[0]
    phases = [s.phase for s in scenario.streams()]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    open_s = timed(lambda: run_rounds(generator, phases, 1, 0))
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    print()
    print(f"setup for {args.fleet:,} devices")
    print(f"{'Scenario.streams()':<42} {streams_s * 1e3:>8.0f} ms")
    print(f"{'Scenario.generator()':<42} {build_s * 1e3:>8.0f} ms")
    print(f"{'first emit of every stream (models built)':<42} {open_s * 1e3:>8.0f} ms (traced)")
    print(f"{'memory per opened stream':<42} {(after - before) / args.fleet:>8.0f} bytes")


if __name__ == "__main__":
    main()
