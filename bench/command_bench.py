"""Command round trip through the real API, against raw paho MQTT 5 request/response.

    .venv/bin/python bench/command_bench.py [--requests 500] [--concurrent 8]
        [--command read_sensor|diagnostics] [--max-seconds 60] [--simulated]

A private mosquitto on 127.0.0.1, an `edgetwin gateway` process and an `edgetwin agent` process
(one emulated BME280). Each command is timed from the HTTP POST /devices/{id}/commands/{name}
to its HTTP answer: POST -> gateway -> MQTT request -> agent's loop runs it -> MQTT answer ->
gateway -> HTTP response. `--requests` one after the other, then as many again with
`--concurrent` in flight at once (throughput too). The baseline, in the same run and on the
same broker: a raw paho requester and a raw paho responder in a process of its own, MQTT 5
response topic and correlation data, payloads of the same sizes, request at QoS 1 and answer at
QoS 0 as edgetwin sends them, TCP_NODELAY on both as on edgetwin's links. Prints p50, p99 and
max of each and the ratios of the p50s. Every phase is bounded by `--max-seconds`; nothing is
asserted.

With `--simulated` no agent runs: the device is the gateway's simulated one, and its answers
come from the gateway's own desk (gateway/simulated.py): POST -> gateway -> MQTT request ->
broker -> the same gateway's simulated device -> MQTT answer -> gateway -> HTTP response.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from procstat import cpu_seconds

from edgetwin.agent.contract import CommandRequest
from edgetwin.gateway.broker import MosquittoBroker, free_port

REPO = Path(__file__).resolve().parent.parent
DEVICE = "bench-pi"
TOKEN = "bench-token"
RAW_REQUESTS = "bench/raw/commands/read_sensor"
RAW_ANSWERS = "bench/raw/responses/bench"
WARM_UP = 20


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def no_delay(_client: mqtt.Client, _userdata: Any, sock: Any) -> None:
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def raw_client(host: str, port: int, name: str) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
    client.on_socket_open = no_delay
    client.connect(host, port)
    return client


# -- the baseline: raw paho request/response ------------------------------------------------------


def raw_responder(host: str, port: int, answer: bytes, ready: EventType) -> None:
    """A child process answering every request on its response topic, correlation quoted."""
    client = raw_client(host, port, "bench-raw-responder")

    def on_message(c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.CorrelationData = message.properties.CorrelationData  # type: ignore[union-attr]
        c.publish(message.properties.ResponseTopic, answer, qos=0, properties=properties)  # type: ignore[union-attr]

    client.on_message = on_message
    client.on_subscribe = lambda *_: ready.set()
    client.subscribe(RAW_REQUESTS, qos=1)
    client.loop_forever()


class RawRequester:
    """Sends requests with response topic and correlation data; times each to its answer."""

    def __init__(self, host: str, port: int) -> None:
        self.client = raw_client(host, port, "bench-raw-requester")
        self._cond = threading.Condition()
        self._answered: dict[bytes, float] = {}
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.subscribe(RAW_ANSWERS, qos=1)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise TimeoutError("raw requester: no SUBACK")

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        correlation = getattr(message.properties, "CorrelationData", b"")
        with self._cond:
            self._answered[bytes(correlation)] = time.perf_counter()
            self._cond.notify_all()

    def send(self, payload: bytes) -> tuple[bytes, float]:
        correlation = secrets.token_bytes(16)
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.ResponseTopic = RAW_ANSWERS
        properties.CorrelationData = correlation
        started = time.perf_counter()
        self.client.publish(RAW_REQUESTS, payload, qos=1, properties=properties)
        return correlation, started

    def wait(self, correlation: bytes, started: float, timeout: float = 10) -> float:
        with self._cond:
            if not self._cond.wait_for(lambda: correlation in self._answered, timeout):
                raise TimeoutError("raw requester: no answer")
            return (self._answered.pop(correlation) - started) * 1000

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def raw_sequential(raw: RawRequester, payload: bytes, count: int, limit: float) -> list[float]:
    times: list[float] = []
    deadline = time.monotonic() + limit
    for i in range(WARM_UP + count):
        if time.monotonic() > deadline:
            break
        ms = raw.wait(*raw.send(payload))
        if i >= WARM_UP:
            times.append(ms)
    return times


def raw_concurrent(
    raw: RawRequester, payload: bytes, count: int, in_flight: int, limit: float
) -> tuple[list[float], float]:
    """`count` requests, `in_flight` outstanding at a time; their times and the throughput."""
    times: list[float] = []
    lock = threading.Lock()
    deadline = time.monotonic() + limit
    left = iter(range(count))

    def worker() -> None:
        for _ in left:  # the iterator is shared: each request is taken once
            if time.monotonic() > deadline:
                return
            ms = raw.wait(*raw.send(payload))
            with lock:
                times.append(ms)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(in_flight)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return times, len(times) / (time.perf_counter() - started)


# -- through the API ------------------------------------------------------------------------------


def start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        return subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout} s")
        time.sleep(0.1)


def answered(http: httpx.Client, command: str, body: dict[str, Any]) -> bool:
    """Whether the device answers `command` now (a simulated device, once it is played)."""
    try:
        return http.post(f"/devices/{DEVICE}/commands/{command}", json=body).status_code == 200
    except httpx.HTTPError:
        return False


def online(http: httpx.Client) -> bool:
    try:
        response = http.get(f"/devices/{DEVICE}")
    except httpx.HTTPError:
        return False
    return response.status_code == 200 and response.json()["presence"] == "online"


def api_sequential(
    http: httpx.Client, command: str, body: dict[str, Any], count: int, limit: float
) -> tuple[list[float], int]:
    times: list[float] = []
    refused = 0
    deadline = time.monotonic() + limit
    for i in range(WARM_UP + count):
        if time.monotonic() > deadline:
            break
        started = time.perf_counter()
        response = http.post(f"/devices/{DEVICE}/commands/{command}", json=body)
        ms = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            refused += 1
        elif i >= WARM_UP:
            times.append(ms)
    return times, refused


async def api_concurrent(
    url: str, command: str, body: dict[str, Any], count: int, in_flight: int, limit: float
) -> tuple[list[float], int, float]:
    times: list[float] = []
    refused = 0
    deadline = time.monotonic() + limit
    left = iter(range(count))
    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits) as http:

        async def worker() -> None:
            nonlocal refused
            for _ in left:
                if time.monotonic() > deadline:
                    return
                started = time.perf_counter()
                response = await http.post(f"/devices/{DEVICE}/commands/{command}", json=body)
                if response.status_code == 200:
                    times.append((time.perf_counter() - started) * 1000)
                else:
                    refused += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
    return times, refused, len(times) / (time.perf_counter() - started)


def configs(tmp: Path, broker: MosquittoBroker, api_port: int) -> tuple[Path, Path]:
    gateway = tmp / "gateway.toml"
    gateway.write_text(
        f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n\n'
        f'[server]\nhost = "127.0.0.1"\nport = {api_port}\n\n[api]\ntoken = "{TOKEN}"\n\n'
        '[observability]\nlog_level = "WARNING"\n\n'
        f'[[devices]]\nid = "{DEVICE}"\n[devices.sensors.env]\ndriver = "bme280"\ninterval = 1\n'
    )
    agent = tmp / "agent.toml"
    agent.write_text(
        f'[agent]\ndevice_id = "{DEVICE}"\nstate_dir = "{tmp / "state"}"\n\n'
        f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n\n'
        '[observability]\nlog_level = "WARNING"\n\n'
        '[sensors.env]\ndriver = "bme280"\ninterval = 1\nbackend = "emulated"\n'
    )
    return gateway, agent


def row(name: str, times: list[float], note: str = "") -> str:
    if not times:
        return f"{name:<52}{'-':>9}{'-':>9}{'-':>9}  {note}"
    return (
        f"{name:<52}{statistics.median(times):>7.2f}ms{percentile(times, 99):>7.2f}ms"
        f"{max(times):>7.2f}ms  {len(times)} {note}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=500, help="per phase (after 20 warm-up)")
    parser.add_argument("--concurrent", type=int, default=8, help="in flight at once")
    parser.add_argument("--command", default="read_sensor", choices=["read_sensor", "diagnostics"])
    parser.add_argument("--max-seconds", type=float, default=60, help="bound of each phase")
    parser.add_argument(
        "--simulated", action="store_true", help="no agent: the gateway's simulated device answers"
    )
    args = parser.parse_args()
    # A short deadline: the agent keeps an answer per id until its deadline has passed, at
    # most 1,024 of them, and answers "busy" beyond (agent/commands.py); 1 s leaves room for
    # 1,000 commands a second, and a loopback answer takes milliseconds.
    body: dict[str, Any] = {"timeout": 1}
    if args.command == "read_sensor":
        body["args"] = {"sensor": "env"}
    request_size = len(
        CommandRequest(
            device=DEVICE,
            id=secrets.token_hex(16),
            deadline=time.time(),
            args=body.get("args", {}),
        ).encode()
    )

    with MosquittoBroker() as broker, tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        api_port = free_port()
        url = f"http://127.0.0.1:{api_port}"
        gateway_toml, agent_toml = configs(tmp, broker, api_port)
        edgetwin = [sys.executable, "-m", "edgetwin"]
        gateway = start([*edgetwin, "gateway", "--config", str(gateway_toml)], tmp / "gw.log")
        agent = (
            gateway
            if args.simulated
            else start([*edgetwin, "agent", "--config", str(agent_toml)], tmp / "agent.log")
        )
        http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"})
        try:
            if args.simulated:
                wait_for(lambda: answered(http, args.command, body), "the simulated device")
            else:
                wait_for(lambda: online(http), "agent online in the twin")
            first = http.post(f"/devices/{DEVICE}/commands/{args.command}", json=body)
            first.raise_for_status()
            answer_size = len(first.content)
            cpu_before = cpu_seconds(gateway.pid), cpu_seconds(agent.pid), time.process_time()
            sequential, refused_seq = api_sequential(
                http, args.command, body, args.requests, args.max_seconds
            )
            done = WARM_UP + len(sequential) + refused_seq
            cpu_ms = [
                (after - before) / done * 1000
                for before, after in zip(
                    cpu_before,
                    (cpu_seconds(gateway.pid), cpu_seconds(agent.pid), time.process_time()),
                    strict=True,
                )
            ]
            concurrent, refused_con, rate = asyncio.run(
                api_concurrent(
                    url, args.command, body, args.requests, args.concurrent, args.max_seconds
                )
            )
        finally:
            http.close()
            for process in {agent.pid: agent, gateway.pid: gateway}.values():
                process.terminate()
                process.wait(timeout=30)

        ready = multiprocessing.get_context("spawn").Event()
        responder = multiprocessing.get_context("spawn").Process(
            target=raw_responder, args=(broker.host, broker.port, b"x" * answer_size, ready)
        )
        responder.start()
        try:
            if not ready.wait(20):
                raise TimeoutError("raw responder did not subscribe")
            raw = RawRequester(broker.host, broker.port)
            try:
                payload = b"x" * request_size
                raw_seq = raw_sequential(raw, payload, args.requests, args.max_seconds)
                raw_con, raw_rate = raw_concurrent(
                    raw, payload, args.requests, args.concurrent, args.max_seconds
                )
            finally:
                raw.close()
        finally:
            responder.terminate()
            responder.join(timeout=10)

    print(
        f"command {args.command!r}: request {request_size} B, HTTP answer {answer_size} B; "
        f"{args.concurrent} in flight in the concurrent phases; load average at the end "
        f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    )
    device = "simulated device" if args.simulated else "agent"
    if args.simulated:
        print(
            "CPU per command, sequential: gateway (its simulated device included) "
            f"{cpu_ms[0]:.2f} ms, this HTTP client {cpu_ms[2]:.2f} ms"
        )
    else:
        print(
            "CPU per command, sequential: gateway {:.2f} ms, agent {:.2f} ms, this HTTP client "
            "{:.2f} ms".format(*cpu_ms)
        )
    print(f"{'round trip':<52}{'p50':>9}{'p99':>9}{'max':>9}  count")
    print(row(f"API -> {device} -> API, sequential", sequential, f"(not 200: {refused_seq})"))
    print(row("raw paho MQTT 5 request/response, sequential", raw_seq))
    print(
        row(
            f"API -> {device} -> API, {args.concurrent} concurrent",
            concurrent,
            f"(not 200: {refused_con}) {rate:,.0f} commands/s",
        )
    )
    print(row(f"raw paho, {args.concurrent} concurrent", raw_con, f"{raw_rate:,.0f} requests/s"))
    if sequential and raw_seq and concurrent and raw_con:
        print(
            f"ratio of p50s, API / raw: sequential "
            f"{statistics.median(sequential) / statistics.median(raw_seq):.1f} x, "
            f"concurrent {statistics.median(concurrent) / statistics.median(raw_con):.1f} x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
