"""Benchmark of the scale engine (gateway/engine): flat-out rate beside raw paho, and held load.

Run: ``.venv/bin/python bench/engine_bench.py --fake-generator`` (``--help`` for options).
Prints tables; asserts nothing. Bounded in time: about 2 x duration + 3 x flat seconds plus
start-up. Only 127.0.0.1: a private mosquitto on a free port (gateway.broker.MosquittoBroker).

Delivered messages are counted on the broker, from ``$SYS/broker/publish/messages/received``
(``sys_interval 1``): no subscriber receives the fleet's traffic, so none can be the bottleneck.
Rates are the counter's slope between its first and last update inside the window.

1. Flat-out, QoS 0, 10,000 devices, realistic JSON: the engine with 1 worker at a rate
   multiplier so high that it is always behind, then raw paho-mqtt (a child process running
   ``client.publish()`` in a plain loop, once with ``loop_start()``, once without a loop
   thread, where publish() writes at once) publishing pre-built payloads of the same size on
   the same topics; the ratio is against the better of the two. msgs/s per core = msgs/s /
   (CPU seconds of the publishing processes / wall seconds).
2. Held load at 1 Hz for ``--duration`` seconds, per fleet size, of a real ``edgetwin
   gateway`` process whose ``[engine] start_devices`` starts the fleet: delivered rate against
   target, p50/p99 lateness (publish time minus deadline, from the workers' histograms over the
   window, read from GET /engine/status), and the peak memory of the gateway with all its
   children, as the sum of RSS and as the sum of PSS.

Without ``--fake-generator`` the scenario comes from ``gateway.scenario.default_scenario``; with
it (for 0 and 1 only), from the engine tests' stand-in (tests/engine_helpers.py), which emits
payloads of the same shape at almost no cost: the engine's own share.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from procstat import children, cpu_seconds, pss_bytes, rss_bytes

from edgetwin.agent.contract import Topics
from edgetwin.gateway.broker import MosquittoBroker, free_port
from edgetwin.gateway.engine import Endpoint, EngineController, EngineSettings
from edgetwin.gateway.engine.stats import quantile


class BrokerCounter:
    """Follows mosquitto's count of PUBLISH packets received, as $SYS announces it."""

    TOPIC = "$SYS/broker/publish/messages/received"

    def __init__(self, broker: MosquittoBroker) -> None:
        self.samples: list[tuple[float, int]] = []
        self._lock = threading.Lock()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-sys")
        self._client.on_connect = lambda c, *a: c.subscribe(self.TOPIC)
        self._client.on_message = self._on_message
        self._client.connect(broker.host, broker.port)
        self._client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.samples.append((time.monotonic(), int(msg.payload)))

    def latest(self) -> tuple[float, int] | None:
        with self._lock:
            return self.samples[-1] if self.samples else None

    def rate(self, start: float, end: float) -> float:
        with self._lock:
            inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return float("nan")
        (t0, v0), (t1, v1) = inside[0], inside[-1]
        return (v1 - v0) / (t1 - t0)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def make_scenario(devices: int, fake: bool) -> Any:
    if fake:
        # The engine tests' stand-in: contract-shaped payloads from a few sines, almost free.
        from tests.engine_helpers import TestScenario

        return TestScenario(devices=devices)
    from edgetwin.gateway.scenario import default_scenario

    return default_scenario(devices)


RAW = textwrap.dedent(
    """
    import sys, time, json
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    host, port = sys.argv[1], int(sys.argv[2])
    seconds, size, devices = float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    threaded = sys.argv[6] == "thread"
    topics = [f"edgetwin/device_{i:04d}/telemetry/env" for i in range(devices)]
    payloads = [(b'{"seq":%d,' % i).ljust(size - 1, b" ") + b"}" for i in range(1000)]
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-raw")
    c.connect(host, port)
    if threaded:
        c.loop_start()
        time.sleep(0.5)
    else:
        while not c.is_connected():
            c.loop(timeout=0.1)
    sys.stdout.write("go\\n"); sys.stdout.flush()
    n = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for i in range(1000):
            c.publish(topics[n % devices], payloads[i])
            n += 1
        if not threaded:
            c.loop(timeout=0)  # without a loop thread, publish() writes at once
    sys.stdout.write(json.dumps({"queued": n}) + "\\n"); sys.stdout.flush()
    c.disconnect()
    if threaded:
        c.loop_stop()
    """
)

RAW_MODES = {
    "thread": "raw paho, loop_start()",
    "direct": "raw paho, no loop thread",
}


def per_message(broker: MosquittoBroker, args: argparse.Namespace) -> None:
    """Where a message's time goes, in this process: the generator, paho's publish path, and
    the engine's link (its own PUBLISH encoding, one send() per batch)."""
    from edgetwin.gateway.engine.link import EngineLink

    n = 50_000
    scenario = make_scenario(10_000, args.fake_generator)
    generator = scenario.generator(Topics(), list(range(10_000)))
    generator.warm()  # as a worker does before its first deadline
    t0 = time.perf_counter()
    for i in range(n):
        messages = generator.emit(i % 10_000, 1.8e9 + i)
    rows = [("generator emit (payload encoded)", (time.perf_counter() - t0) / n)]
    topic, payload, _ = messages[0]

    def paho_client(external_loop: bool) -> mqtt.Client:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        if external_loop:
            client.on_socket_register_write = lambda *_: None
        client.connect(broker.host, broker.port)
        client.loop(0.2)
        return client

    client = paho_client(external_loop=False)
    t0 = time.perf_counter()
    for _ in range(n):
        client.publish(topic, payload)
    rows.append(
        ("paho publish(), written at once (no loop thread)", (time.perf_counter() - t0) / n)
    )
    client.disconnect()
    client = paho_client(external_loop=True)
    t0 = time.perf_counter()
    for _ in range(n):
        client.publish(topic, payload)
    t1 = time.perf_counter()
    client.loop_write()
    t2 = time.perf_counter()
    rows.append(("paho publish(), queued only", (t1 - t0) / n))
    rows.append(("paho loop_write(), one send() per packet", (t2 - t1) / n))
    client.disconnect()
    link = EngineLink(Endpoint(host=broker.host, port=broker.port), worker=0, max_inflight=10)
    link.connect()
    deadline = time.monotonic() + 5
    while not link.connected and time.monotonic() < deadline:
        link.on_readable()
    t0 = time.perf_counter()
    for _ in range(n):
        link.publish0(topic, payload, False)
    t1 = time.perf_counter()
    link.flush()
    t2 = time.perf_counter()
    link.close()
    rows.append(("engine link publish0() (own PUBLISH encoding)", (t1 - t0) / n))
    rows.append(("engine link flush(), one send() per batch", (t2 - t1) / n))
    print(f"\n(0) cost per message in one process, {n} messages of {len(payload)} bytes")
    for name, seconds in rows:
        print(f"{name:52} {seconds * 1e6:7.2f} µs")


def flat_out(broker: MosquittoBroker, counter: BrokerCounter, args: argparse.Namespace) -> None:
    devices = 10_000
    scenario = make_scenario(devices, args.fake_generator)
    sample = scenario.generator(Topics(), [0]).emit(0, time.time())
    size = len(sample[0][1])
    rows = []
    for workers in args.flat_workers:
        engine = EngineController(
            Endpoint(host=broker.host, port=broker.port), EngineSettings(workers=workers)
        )
        engine.start(scenario)
        engine.set_rate(1000.0)  # 10 million ticks/s asked: always behind, always publishing
        time.sleep(1.5)
        pids = engine.worker_pids()
        c0 = sum(cpu_seconds(p) for p in pids)
        t0 = time.monotonic()
        time.sleep(args.flat)
        c1 = sum(cpu_seconds(p) for p in pids)
        t1 = time.monotonic()
        engine.stop()
        rate = counter.rate(t0, t1)
        cores = (c1 - c0) / (t1 - t0)
        rows.append((f"engine, {workers} worker(s)", rate, cores))
    for mode, label in RAW_MODES.items():
        raw = subprocess.Popen(
            [
                sys.executable,
                "-c",
                RAW,
                broker.host,
                str(broker.port),
                str(args.flat + 1.5),
                str(size),
                str(devices),
                mode,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert raw.stdout is not None
        raw.stdout.readline()
        time.sleep(1.0)
        c0, t0 = cpu_seconds(raw.pid), time.monotonic()
        time.sleep(args.flat)
        c1, t1 = cpu_seconds(raw.pid), time.monotonic()
        raw.communicate(timeout=30)
        rows.append((label, counter.rate(t0, t1), (c1 - c0) / (t1 - t0)))

    print(
        f"\n(1) flat-out, QoS 0, {devices} devices, {size}-byte JSON payloads, "
        f"{args.flat:.0f} s windows"
    )
    print(f"{'publisher':34} {'msgs/s':>9} {'cores':>6} {'msgs/s/core':>12}")
    per_core = {}
    for name, rate, cores in rows:
        per_core[name] = rate / cores if cores else float("nan")
        print(f"{name:34} {rate:9.0f} {cores:6.2f} {per_core[name]:12.0f}")
    # Against the better of paho's two ways of running: the engine must beat paho at its best.
    raw_pc = max(per_core[label] for label in RAW_MODES.values())
    for name, value in per_core.items():
        if name.startswith("engine"):
            print(f"{name}: {value / raw_pc:.2f} x raw paho's best per core (goal >= 0.8)")


def gateway_toml(directory: Path, broker: MosquittoBroker, devices: int, args: Any) -> Path:
    """The gateway's config for one held-load row, in the form `args.form` names: the engine's
    own section, or one of the original simulator's two formats, as its users would write."""
    path = directory / f"gateway-{devices}.toml"
    workers = "" if args.workers is None else f"workers = {args.workers}"
    engine = f"""
[engine]
{workers}
qos = {args.qos}
max_inflight = {args.max_inflight}
"""
    fleet = {
        "engine": f"{engine}start_devices = {devices}\nstart_interval = 1.0\n",
        # The original simulator's README format: the fleet runs from the start.
        "simulator": f"""
[simulator]
device_count = {devices}
publish_interval = 1
{engine}""",
        # Its code's format: nothing runs until GET /start?count=N.
        "simulation": f"""
[simulation]
frequency_sec = 1.0
max_devices = {devices}

[api]
local_no_auth = true
{engine}""",
    }[args.form]
    topic = {"engine": "", "simulator": "sensors/{device_id}", "simulation": "sensors/data"}
    path.write_text(
        f"""
[mqtt]
host = "{broker.host}"
port = {broker.port}
qos = {args.qos}
{f'topic = "{topic[args.form]}"' if topic[args.form] else ""}

[server]
port = {free_port()}

[observability]
log_level = "WARNING"
{fleet}"""
    )
    return path


def engine_status(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/engine/status", timeout=10) as answer:
        status: dict[str, Any] = json.load(answer)
        return status


FORMS = {
    "engine": "[engine] start_devices",
    "simulator": "the original README's [simulator] device_count, topic sensors/{device_id}",
    "simulation": "the original code's [simulation] max_devices, then GET /start?count=N",
}


def held(broker: MosquittoBroker, counter: BrokerCounter, args: argparse.Namespace) -> None:
    print(
        f"\n(2) held load at 1 Hz, QoS {args.qos}, workers {args.workers or 'auto'}, "
        f"{args.duration:.0f} s window after {args.warmup:.0f} s warm-up; "
        f"`edgetwin gateway` with {FORMS[args.form]}"
    )
    print(
        f"{'devices':>8} {'workers':>7} {'target/s':>9} {'delivered/s':>12} {'%':>6} "
        f"{'p50 ms':>7} "
        f"{'p99 ms':>7} {'skipped':>8} {'RSS MB':>7} {'PSS MB':>7} {'gateway MB':>10} "
        f"{'CPU %':>6} {'µs/msg':>7} {'gw CPU %':>8}"
    )
    for devices in args.devices:
        with tempfile.TemporaryDirectory() as tmp:
            config = gateway_toml(Path(tmp), broker, devices, args)
            port = int(config.read_text().split("[server]\nport = ")[1].split()[0])
            log = (Path(tmp) / "gateway.log").open("w")
            gateway = subprocess.Popen(
                [sys.executable, "-m", "edgetwin", "gateway", "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                row = _held_row(gateway, port, devices, counter, args)
            finally:
                gateway.terminate()
                gateway.wait(timeout=60)
                log.close()
        print(row)
    print(
        "RSS MB, PSS MB: peak sums over the gateway process and all its children (workers, "
        "multiprocessing's resource tracker); RSS counts shared pages once per process, PSS "
        "once in all; gateway MB: the gateway process's own RSS; CPU %: workers, of one core; "
        "µs/msg: their CPU per broker-counted message; gw CPU %: the gateway process (API, "
        "twin, MQTT), of one core"
    )


def _held_row(
    gateway: subprocess.Popen[bytes],
    port: int,
    devices: int,
    counter: BrokerCounter,
    args: argparse.Namespace,
) -> str:
    started = ""
    if args.form == "simulation":
        started = _start_route(port, devices)
    deadline = time.monotonic() + 120
    while True:
        if gateway.poll() is not None:
            raise SystemExit(f"the gateway exited with {gateway.returncode}")
        try:
            if engine_status(port)["state"] == "running":
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("the gateway's engine did not start within 120 s")
        time.sleep(0.5)
    time.sleep(args.warmup)
    before = engine_status(port)
    # A fleet run in the gateway's own process has the gateway's pid: its CPU is in gw CPU %.
    workers = [w["pid"] for w in before["per_worker"] if w["pid"] != gateway.pid]
    c0 = sum(cpu_seconds(p) for p in workers)
    g0 = cpu_seconds(gateway.pid)
    t0 = time.monotonic()
    peak_rss = peak_pss = own = 0
    end = t0 + args.duration
    while time.monotonic() < end:
        time.sleep(min(1.0, max(end - time.monotonic(), 0)))
        group = [gateway.pid, *children(gateway.pid)]
        peak_rss = max(peak_rss, sum(rss_bytes(p) for p in group))
        peak_pss = max(peak_pss, sum(pss_bytes(p) for p in group))
        own = max(own, rss_bytes(gateway.pid))
    t1 = time.monotonic()
    c1 = sum(cpu_seconds(p) for p in workers)
    g1 = cpu_seconds(gateway.pid)
    after = engine_status(port)
    counts = [
        b - a for a, b in zip(before["lateness_counts"], after["lateness_counts"], strict=True)
    ]
    p50, p99 = quantile(counts, 0.5), quantile(counts, 0.99)
    rate = counter.rate(t0, t1)
    skipped = (after["late_skipped"] + after["backlog_skipped"]) - (
        before["late_skipped"] + before["backlog_skipped"]
    )
    return (
        f"{devices:8d} {after['workers']:7d} {devices:9d} {rate:12.0f} "
        f"{100 * rate / devices:6.1f} "
        f"{(p50 or 0) * 1000:7.2f} {(p99 or 0) * 1000:7.2f} {skipped:8d} "
        f"{peak_rss / 2**20:7.0f} {peak_pss / 2**20:7.0f} {own / 2**20:10.0f} "
        f"{100 * (c1 - c0) / (t1 - t0):6.0f} {1e6 * (c1 - c0) / (t1 - t0) / rate:7.1f} "
        f"{100 * (g1 - g0) / (t1 - t0):8.0f}{started}"
    )


FINAL_LINE = re.compile(
    r"(?P<devices>\d+) devices: (?P<rate>\d+)/s handed to the socket"
    r"(?:, (?P<acked_rate>\d+)/s acknowledged)? over (?P<seconds>[\d.]+) s, "
    r"target (?P<target>\d+)/s; (?P<sent>\d+) sent in all"
    r"(?:, (?P<acked>\d+) acknowledged, (?P<refused>\d+) refused)?, (?P<lost>\d+) lost, "
    r"(?P<skipped>\d+) ticks skipped"
)


def simulate_cli(broker: MosquittoBroker, counter: BrokerCounter, args: argparse.Namespace) -> None:
    """`edgetwin simulate --broker` as a user runs it, in a child process: what the broker
    counted against what the command printed, and the CPU of its process tree."""
    print(
        f"\n(3) `edgetwin simulate --devices N --broker ... --qos {args.qos} --workers "
        f"{args.workers or 'default'}`, {args.duration:.0f} s window after "
        f"{args.warmup:.0f} s warm-up"
    )
    print(
        f"{'devices':>8} {'held %':>7} {'broker/s':>9} {'printed/s':>10} {'diff %':>7} "
        f"{'sent':>9} {'broker n':>9} {'diff %':>7} {'cores':>6} {'µs/msg':>7} "
        f"{'run CPU s':>9}"
    )
    for devices in args.devices:
        print(_simulate_row(broker, counter, devices, args))
    print(
        "held %: broker-counted rate in the window / target; printed/s: the exit line's rate "
        "(messages handed to the socket from start to stop); broker/s: the broker's count over "
        "the command's whole run / the exit line's seconds; sent: the exit line's total, "
        "broker n: the broker's count over the whole run; cores, µs/msg: CPU of the command and "
        "its workers in the window, per broker-counted message; run CPU s: the whole run, "
        "start-up (building every stream) included (wait4 rusage)"
    )


def _count_when(counter: BrokerCounter, ready: Callable[[int], bool], timeout: float) -> int:
    """The broker's count once `ready(count)`. mosquitto announces a $SYS counter only when
    it changed, so an idle broker sends no update to wait for."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        latest = counter.latest()
        if latest is not None and ready(latest[1]):
            return latest[1]
        time.sleep(0.1)
    raise SystemExit(f"the broker's $SYS count did not get there within {timeout} s")


def _simulate_row(
    broker: MosquittoBroker, counter: BrokerCounter, devices: int, args: argparse.Namespace
) -> str:
    before = _count_when(counter, lambda _: True, 10)
    run_for = args.warmup + args.duration + 2
    command = [
        sys.executable, "-m", "edgetwin", "simulate", "--devices", str(devices),
        "--broker", f"{broker.host}:{broker.port}", "--qos", str(args.qos),
        "--duration", str(run_for), "--quiet",
    ]  # fmt: skip
    if args.workers is not None:
        command += ["--workers", str(args.workers)]
    with tempfile.TemporaryFile("w+") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        # Running once the broker's count moves (start-up builds every stream first).
        try:
            _count_when(counter, lambda n: n > before or process.poll() is not None, 120)
        finally:
            if process.poll() is not None:
                out.seek(0)
                raise SystemExit(f"edgetwin simulate ended early:\n{out.read()}")
        time.sleep(args.warmup)
        group = [process.pid, *children(process.pid)]
        c0, t0 = sum(cpu_seconds(p) for p in group), time.monotonic()
        time.sleep(args.duration)
        c1, t1 = sum(cpu_seconds(p) for p in group), time.monotonic()
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        ended = time.monotonic()
        out.seek(0)
        text = out.read()
    time.sleep(max(ended + 2.5 - time.monotonic(), 0))  # two $SYS periods: the last count
    after = _count_when(counter, lambda _: True, 10)
    found = FINAL_LINE.search(text)
    if process.returncode != 0 or found is None:
        raise SystemExit(f"edgetwin simulate exited {process.returncode}:\n{text}")
    rate = counter.rate(t0, t1)
    printed = int(found["rate"] if args.qos == 0 else found["acked_rate"])
    seconds = float(found["seconds"])
    broker_total = after - before
    broker_rate = broker_total / seconds
    sent = int(found["sent"])
    cores = (c1 - c0) / (t1 - t0)
    return (
        f"{devices:8d} {100 * rate / devices:7.1f} {broker_rate:9.0f} {printed:10d} "
        f"{100 * (printed - broker_rate) / broker_rate:+7.2f} {sent:9d} {broker_total:9d} "
        f"{100 * (sent - broker_total) / broker_total:+7.2f} {cores:6.2f} "
        f"{1e6 * cores / rate:7.1f} {usage.ru_utime + usage.ru_stime:9.1f}"
    )


def _start_route(port: int, devices: int) -> str:
    """GET /start?count=N as the original's users call it; how long it took to answer."""
    deadline = time.monotonic() + 60
    url = f"http://127.0.0.1:{port}/start?count={devices}"
    while True:
        t0 = time.monotonic()
        try:
            with urllib.request.urlopen(url, timeout=30) as answer:
                answer.read()
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit("the gateway's API did not answer within 60 s") from None
            time.sleep(0.2)
            continue
        return f"  /start answered in {1000 * (time.monotonic() - t0):.0f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--fake-generator",
        action="store_true",
        help="use the engine tests' stand-in (tests/engine_helpers.py) instead of gateway.scenario",
    )
    parser.add_argument("--duration", type=float, default=60.0, help="held-load window, s")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--flat", type=float, default=10.0, help="flat-out window, s")
    parser.add_argument("--flat-workers", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--devices", type=int, nargs="*", default=[10_000, 50_000])
    parser.add_argument(
        "--workers", type=int, default=None, help="worker processes (default: chosen by rate)"
    )
    parser.add_argument(
        "--form",
        choices=sorted(FORMS),
        default="engine",
        help="held load: which config starts the fleet",
    )
    parser.add_argument("--qos", type=int, choices=(0, 1), default=0)
    parser.add_argument("--max-inflight", type=int, default=EngineSettings().max_inflight)
    parser.add_argument(
        "--broker-inflight",
        type=int,
        default=None,
        help="mosquitto's max_inflight_messages, the MQTT 5 Receive Maximum it announces and "
        "the engine keeps to (default: mosquitto's own, 20)",
    )
    parser.add_argument("--skip-micro", action="store_true")
    parser.add_argument("--skip-flat", action="store_true")
    parser.add_argument("--skip-held", action="store_true")
    parser.add_argument(
        "--simulate-cli",
        action="store_true",
        help="also (3): `edgetwin simulate` in a child process, per --devices, at --qos",
    )
    args = parser.parse_args()
    extra = ["sys_interval 1", "max_queued_messages 1000"]
    if args.broker_inflight is not None:
        extra.append(f"max_inflight_messages {args.broker_inflight}")
    with MosquittoBroker(extra_config=extra) as broker:
        counter = BrokerCounter(broker)
        try:
            print(
                f"mosquitto {broker.url}, {os.cpu_count()} cores, python {sys.version.split()[0]}"
            )
            if not args.skip_micro:
                per_message(broker, args)
            if not args.skip_flat:
                flat_out(broker, counter, args)
            if not args.skip_held:
                held(broker, counter, args)
            if args.simulate_cli:
                simulate_cli(broker, counter, args)
        finally:
            counter.close()


if __name__ == "__main__":
    main()
