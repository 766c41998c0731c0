"""Three gateways on one prefix through a `kill -9` of one and its return, measured from outside.

    .venv/bin/python bench/gateways_bench.py                    # ~60 s: 3,000 devices at 1 s
    .venv/bin/python bench/gateways_bench.py --devices 300 --interval 0.2 --keepalive 2
    .venv/bin/python bench/gateways_bench.py --help

The figure: "with three gateways, `kill -9` one: its devices are simulated again by the others
within 1.5 x keepalive, with `seq` continuing; it comes back and the fleet rebalances without a
gap". Everything runs on 127.0.0.1:

- a private mosquitto on a free port (gateway.broker.MosquittoBroker);
- three `python -m edgetwin gateway --config FILE` processes, gw-a, gw-b and gw-c, with one
  manifest of `--devices` devices, each with one BME280 `env` at `--interval` seconds and no
  agent, so every stream is simulated and every one has exactly one owner among the gateways;
- a separate subscriber on the readings and on the twin documents (`edgetwin/+/twin`), whose
  `gateway` field names the gateway that plays the device.

Steps: gw-a and gw-b start; gw-c joins (about a third of the devices are handed to it); after
`--warmup`, gw-c is killed with SIGKILL; once the others play its devices, it is started again
under the same id and gets them back; `--tail` seconds later everything stops. For gw-c's
devices: when every one is claimed by gw-a or gw-b, the longest silence of each stream around
the kill and around the return, and for every stream of the fleet the seq numbers as the
subscriber received them: gaps and repeats (a second writer shows as repeats). Also each
gateway's PSS and CPU, and the broker's `$SYS` count of messages received against the
subscriber's.

Prints a table; asserts nothing; exits 0. Every wait is bounded.
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procstat import tree_cpu_seconds, tree_pss_bytes

from edgetwin.agent.contract import Telemetry, Topics, TwinSummary
from edgetwin.gateway.broker import MosquittoBroker, free_port
from edgetwin.gateway.membership import rendezvous_owner

TOPICS = Topics()
GATEWAYS = ("gw-a", "gw-b", "gw-c")


class Observer:
    """Every reading's arrival time and seq, and each device's latest claim."""

    def __init__(self, host: str, port: int) -> None:
        self.lock = threading.Lock()
        self.readings: dict[str, list[tuple[float, int]]] = defaultdict(list)
        self.claims: dict[str, str | None] = {}
        self.sys_received: int | None = None
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="gateways-bench", protocol=mqtt.MQTTv5
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, *_: object) -> None:
        client.subscribe(
            [
                (TOPICS.all_telemetry(), 0),
                (TOPICS.all_twin(), 0),
                ("$SYS/broker/messages/received", 0),
            ]
        )

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        now = time.monotonic()
        if msg.topic.startswith("$SYS"):
            self.sys_received = int(msg.payload)
            return
        if msg.topic.endswith("/twin"):
            if msg.payload:
                twin = TwinSummary.decode(msg.payload)
                with self.lock:
                    self.claims[twin.device] = twin.gateway
            return
        reading = Telemetry.decode(msg.payload)
        with self.lock:
            self.readings[reading.device].append((now, reading.seq))

    def claimed_by_owners(self, devices: list[str], live: tuple[str, ...]) -> bool:
        with self.lock:
            return all(self.claims.get(d) == rendezvous_owner(d, live) for d in devices)

    def played_after(self, devices: list[str], since: float) -> bool:
        with self.lock:
            return all(self.readings[d] and self.readings[d][-1][0] > since for d in devices)

    def longest_silence(self, device: str, start: float, end: float) -> float:
        """The longest time without a reading of `device` between `start` and `end`."""
        with self.lock:
            times = [start, *(t for t, _ in self.readings[device] if start < t < end), end]
        return max(b - a for a, b in itertools.pairwise(times))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def gateway_toml(
    path: Path, gateway: str, broker: MosquittoBroker, args: argparse.Namespace
) -> int:
    api_port = free_port()
    lines = [
        "[gateway]",
        f'id = "{gateway}"',
        f"rebalance_delay = {args.rebalance_delay}",
        "[mqtt]",
        f'host = "{broker.host}"',
        f"port = {broker.port}",
        f"keepalive = {args.keepalive}",
        "[server]",
        'host = "127.0.0.1"',
        f"port = {api_port}",
        "[observability]",
        'log_level = "WARNING"',
        "",
    ]
    for index in range(args.devices):
        lines += [
            "[[devices]]",
            f'id = "dev-{index:05d}"',
            "[devices.sensors.env]",
            'driver = "bme280"',
            f"interval = {args.interval}",
            "",
        ]
    path.write_text("\n".join(lines))
    return api_port


def start_gateway(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "edgetwin", "gateway", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_until(check: Callable[[], object], timeout: float, step: float = 0.02) -> float | None:
    """Seconds until `check()` held, None if it did not within `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(step)
    return None


def spread(values: list[float]) -> str:
    if not values:
        return "none"
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return (
        f"min {ordered[0]:.2f} / p50 {statistics.median(ordered):.2f} / "
        f"p99 {p99:.2f} / max {ordered[-1]:.2f} s"
    )


def run(args: argparse.Namespace) -> None:
    devices = [f"dev-{i:05d}" for i in range(args.devices)]
    rows: list[tuple[str, str]] = []
    budget = 1.5 * args.keepalive
    with (
        MosquittoBroker(extra_config=["sys_interval 1"]) as broker,
        tempfile.TemporaryDirectory(prefix="edgetwin-gateways-") as tmp,
    ):
        observer = Observer(broker.host, broker.port)
        observer.subscribed.wait(5)
        configs = {g: Path(tmp) / f"{g}.toml" for g in GATEWAYS}
        for gateway, path in configs.items():
            gateway_toml(path, gateway, broker, args)
        logs = {g: Path(os.environ.get("GATEWAYS_BENCH_LOGS", tmp)) / f"{g}.log" for g in GATEWAYS}
        procs = {g: start_gateway(configs[g], logs[g]) for g in ("gw-a", "gw-b")}
        took = wait_until(lambda: observer.claimed_by_owners(devices, ("gw-a", "gw-b")), 60)
        rows.append(
            ("gw-a, gw-b: every device claimed by its owner", f"{took:.2f} s" if took else "NO")
        )
        procs["gw-c"] = start_gateway(configs["gw-c"], logs["gw-c"])
        took = wait_until(lambda: observer.claimed_by_owners(devices, GATEWAYS), 60)
        rows.append(
            ("gw-c joins: every device claimed by its owner", f"{took:.2f} s" if took else "NO")
        )
        c_devices = [d for d in devices if rendezvous_owner(d, GATEWAYS) == "gw-c"]
        rows.append(("devices owned by gw-c", f"{len(c_devices)} of {len(devices)}"))
        time.sleep(args.warmup)
        for gateway, proc in procs.items():
            rows.append(
                (
                    f"{gateway}: PSS (process tree) / CPU over the run so far",
                    f"{tree_pss_bytes(proc.pid) / 2**20:.0f} MB / "
                    f"{tree_cpu_seconds(proc.pid):.1f} s",
                )
            )

        killed = time.monotonic()
        os.killpg(procs["gw-c"].pid, signal.SIGKILL)
        procs["gw-c"].wait(5)
        settled = wait_until(lambda: observer.claimed_by_owners(devices, ("gw-a", "gw-b")), 30)
        wait_until(lambda: observer.played_after(c_devices, killed + args.rebalance_delay), 30)
        time.sleep(2 * args.interval)
        after_kill = time.monotonic()
        # No stream silent longer than its interval means the others took it over between two
        # of its readings: the silence, not the time to a first reading, is the figure.
        silences = [observer.longest_silence(d, killed, after_kill) for d in c_devices]
        within = sum(s <= budget for s in silences)
        rows += [
            (
                "kill -9 gw-c: every device claimed by gw-a or gw-b after",
                f"{settled:.2f} s" if settled is not None else "NO",
            ),
            (f"  longest silence per stream (interval {args.interval} s)", spread(silences)),
            (
                f"  streams silent at most 1.5 x keepalive ({budget:.1f} s)",
                f"{within} / {len(c_devices)}",
            ),
        ]

        returned = time.monotonic()
        procs["gw-c"] = start_gateway(configs["gw-c"], logs["gw-c"])
        took = wait_until(lambda: observer.claimed_by_owners(devices, GATEWAYS), 60)
        time.sleep(args.tail)
        end = time.monotonic()
        back = [observer.longest_silence(d, returned, end) for d in c_devices]
        rows += [
            ("gw-c back: every device claimed by its owner", f"{took:.2f} s" if took else "NO"),
            ("  longest silence per handed-back stream", spread(back)),
        ]
        for proc in procs.values():
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs.values():
            proc.wait(15)
        time.sleep(1.5)  # one more $SYS period, after the last reading
        observer.close()

    gaps = repeats = readings = 0
    for device in devices:
        seqs = [seq for _, seq in observer.readings[device]]
        readings += len(seqs)
        distinct = sorted(set(seqs))
        repeats += len(seqs) - len(distinct)
        gaps += sum(b - a - 1 for a, b in itertools.pairwise(distinct))
    rows += [
        ("readings received by the subscriber", f"{readings:,}"),
        (
            "broker $SYS messages received (all clients, incl. documents)",
            f"{observer.sys_received or 0:,}",
        ),
        ("seq missing, over every stream of the run", f"{gaps}"),
        ("seq repeated (a second writer, or a redelivery)", f"{repeats}"),
    ]
    width = max(len(name) for name, _ in rows)
    print(
        f"\n{args.devices} devices at {args.interval} s, keepalive {args.keepalive} s, "
        f"rebalance_delay {args.rebalance_delay} s, three gateways on one mosquitto"
    )
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=3000)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--keepalive", type=int, default=5)
    parser.add_argument("--rebalance-delay", type=float, default=0.5)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--tail", type=float, default=5.0)
    run(parser.parse_args())
    return 0


if __name__ == "__main__":
    sys.exit(main())
