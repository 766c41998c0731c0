"""How long the pieces of edgetwin's pytest plugin take to start, as a user's test waits for them.

    .venv/bin/python bench/testing_bench.py [--runs 5]

Each figure is the median of `--runs` starts, wall time, on a private mosquitto: a broker (plain,
with passwords, with TLS and its certificates made, with the device ACL) until it answers an MQTT
CONNECT; a simulated fleet until a separate subscriber has its first reading and a reading of
every device; an agent on an emulated chip until its first reading arrives (its own thread, and
a process); a gateway until its API answers. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from edgetwin.testing import (
    Capture,
    EmulatedAgent,
    RunningGateway,
    SimulatedFleet,
    start_broker,
)


def median_ms(runs: int, once: Callable[[], float]) -> str:
    return f"{statistics.median(once() for _ in range(runs)) * 1000:8.0f} ms"


def broker_start(**options: object) -> Callable[[], float]:
    def once() -> float:
        t0 = time.perf_counter()
        broker = start_broker(**options)  # type: ignore[arg-type]
        elapsed = time.perf_counter() - t0
        broker.close()
        return elapsed

    return once


def fleet_start(devices: int, every: bool) -> Callable[[], float]:
    def once() -> float:
        with start_broker() as broker, Capture(broker.endpoint, "edgetwin/+/telemetry/+") as seen:
            fleet = SimulatedFleet(broker.endpoint, devices, interval=1.0, seed=1)
            t0 = time.perf_counter()
            fleet.start()
            if every:
                last = f"edgetwin/device_{devices - 1:03d}/telemetry/+"
                seen.wait_for(last, timeout=30)
                heard: set[str] = set()
                deadline = time.monotonic() + 30
                while len(heard) < devices and time.monotonic() < deadline:
                    heard = {m.topic.split("/")[1] for m in seen.messages()}
                    time.sleep(0.01)
            else:
                seen.wait_for(timeout=30)
            elapsed = time.perf_counter() - t0
            fleet.stop()
            return elapsed

    return once


def agent_start(mode: str) -> Callable[[], float]:
    def once() -> float:
        with start_broker() as broker, Capture(broker.endpoint, "edgetwin/+/telemetry/+") as seen:
            config = {
                "agent": {"device_id": "bench-pi", "twin_wait": 0},
                "sensors": {"env": {"driver": "bme280", "interval": 0.1}},
            }
            agent = EmulatedAgent(broker.endpoint, config, mode=mode)  # type: ignore[arg-type]
            t0 = time.perf_counter()
            agent.start(wait=False)
            seen.wait_for(timeout=30)
            elapsed = time.perf_counter() - t0
            agent.close()
            return elapsed

    return once


def gateway_start(mode: str) -> Callable[[], float]:
    def once() -> float:
        with start_broker() as broker:
            gateway = RunningGateway(broker.endpoint, mode=mode)  # type: ignore[arg-type]
            t0 = time.perf_counter()
            gateway.start()
            gateway.client.health()
            elapsed = time.perf_counter() - t0
            gateway.stop()
            return elapsed

    return once


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs
    rows = [
        ("broker (edgetwin_broker)", broker_start()),
        ("broker, auth=True", broker_start(auth=True)),
        ("broker, tls=True (certificates made)", broker_start(tls=True)),
        ("broker, acl_devices=[3 devices]", broker_start(acl_devices=["a", "b", "c"])),
        ("fleet of 10 -> first reading", fleet_start(10, every=False)),
        ("fleet of 10 @1 s -> every device heard", fleet_start(10, every=True)),
        ("fleet of 1,000 @1 s -> every device heard", fleet_start(1000, every=True)),
        ("agent, thread -> first reading", agent_start("thread")),
        ("agent, process -> first reading", agent_start("process")),
        ("gateway, thread -> API answers", gateway_start("thread")),
        ("gateway, process -> API answers", gateway_start("process")),
    ]
    print(f"median of {runs} starts, wall time")
    for label, once in rows:
        print(f"{label:45s} {median_ms(runs, once)}", flush=True)


if __name__ == "__main__":
    main()
