"""Config round trip and failover/failback delays of the gateway twin, on loopback.

    .venv/bin/python bench/twin_bench.py [--pushes 1000] [--rounds 3] [--keepalive 2]

A private mosquitto, the gateway on uvicorn, one `edgetwin agent` process. Prints:
- config round trip: REST PATCH sent -> the agent's reported document says applied (p50, p99);
- failover: SIGKILL of the agent -> first simulated reading on its topic;
- failback: agent process started -> its birth, -> last simulated reading, -> first own reading.
Nothing is asserted; every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import uvicorn
from paho.mqtt.enums import CallbackAPIVersion

from edgetwin.gateway.app import create_app
from edgetwin.gateway.broker import MosquittoBroker, free_port
from edgetwin.gateway.config import GatewayConfig

DEVICE = "bench-pi"
TOKEN = "bench-token"
REPO = Path(__file__).resolve().parent.parent


class Watcher:
    """Every message on the device's topics, with its arrival time, behind a condition."""

    def __init__(self, host: str, port: int) -> None:
        self.cond = threading.Condition()
        self.messages: list[tuple[float, str, dict[str, Any]]] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.subscribe(f"edgetwin/{DEVICE}/#", qos=1)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        body = json.loads(msg.payload) if msg.payload else {}
        with self.cond:
            self.messages.append((time.monotonic(), msg.topic, body))
            self.cond.notify_all()

    def wait(self, match: Any, after: float, timeout: float = 30) -> float:
        """Arrival time of the first message after `after` that `match(topic, body)` accepts."""

        def found() -> float | None:
            for at, topic, body in self.messages:
                if at > after and match(topic, body):
                    return at
            return None

        with self.cond:
            if not self.cond.wait_for(lambda: found() is not None, timeout):
                raise TimeoutError("expected message did not arrive")
            result = found()
            assert result is not None
            return result

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def agent_config(path: Path, port: int, state: Path, keepalive: int) -> None:
    path.write_text(
        f"""
[agent]
device_id = "{DEVICE}"
state_dir = "{state}"
[mqtt]
host = "127.0.0.1"
port = {port}
keepalive = {keepalive}
reconnect_min_delay = 0.1
reconnect_max_delay = 1
[outbox]
commit_interval = 0.05
[sensors.env]
driver = "bme280"
interval = 0.1
backend = "emulated"
"""
    )


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def _seconds(values: list[float]) -> tuple[str, str]:
    if not values:
        return "-", ""
    return f"{statistics.median(values):.2f} s", str([round(v, 2) for v in values])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pushes", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keepalive", type=int, default=2)
    args = parser.parse_args()

    with MosquittoBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        api_port = free_port()
        config = GatewayConfig.from_builtins(
            {
                "mqtt": {"host": broker.host, "port": broker.port, "keepalive": args.keepalive},
                "server": {"host": "127.0.0.1", "port": api_port},
                "api": {"token": TOKEN},
                "presence": {"startup_grace": 0.2},
                "observability": {"log_level": "WARNING"},
                "devices": [
                    {"id": DEVICE, "sensors": {"env": {"driver": "bme280", "interval": 0.1}}}
                ],
            }
        )
        server = uvicorn.Server(
            uvicorn.Config(create_app(config), port=api_port, log_config=None, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        watcher = Watcher(broker.host, broker.port)
        agent_file = Path(tmp) / "agent.toml"
        agent_config(agent_file, broker.port, Path(tmp) / "state", args.keepalive)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, "-m", "edgetwin", "agent", "--config", str(agent_file)]
        agent = subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.DEVNULL)
        http = httpx.Client(
            base_url=f"http://127.0.0.1:{api_port}", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        try:
            watcher.wait(lambda t, b: t.endswith("/status") and b.get("state") == "online", 0, 30)

            round_trips = []
            for i in range(args.pushes):
                started = time.monotonic()
                response = http.patch(
                    f"/devices/{DEVICE}/desired",
                    json={"sensors": {"env": {"interval": 0.1 + (i % 2) / 100}}},
                )
                response.raise_for_status()
                version = response.json()["version"]
                done = watcher.wait(
                    lambda t, b, v=version: (
                        t.endswith("/config/reported") and b.get("applied_version") == v
                    ),
                    started,
                    10,
                )
                round_trips.append((done - started) * 1000)

            failovers, births, silences, resumes = [], [], [], []
            for _ in range(args.rounds):
                watcher.wait(
                    lambda t, b: "/telemetry/" in t and b.get("source") == "emulated",
                    time.monotonic(),
                    10,
                )
                agent.send_signal(signal.SIGKILL)
                agent.wait()
                killed = time.monotonic()
                simulated = watcher.wait(
                    lambda t, b: "/telemetry/" in t and b.get("source") == "simulated", killed, 30
                )
                failovers.append(simulated - killed)
                agent = subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.DEVNULL)
                started = time.monotonic()
                birth = watcher.wait(
                    lambda t, b: t.endswith("/status") and b.get("state") == "online", started, 30
                )
                own = watcher.wait(
                    lambda t, b: "/telemetry/" in t and b.get("source") == "emulated", birth, 30
                )
                with watcher.cond:
                    last_simulated = max(
                        (
                            at
                            for at, t, b in watcher.messages
                            if "/telemetry/" in t and b.get("source") == "simulated"
                        ),
                        default=started,
                    )
                births.append(birth - started)
                silences.append(last_simulated - started)
                resumes.append(own - started)
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=20)
            http.close()
            watcher.close()
            server.should_exit = True
            thread.join(timeout=20)

    rows = [
        (
            f"config round trip p50 ({len(round_trips)} PATCHes)",
            f"{statistics.median(round_trips):.1f} ms",
            "",
        ),
        ("config round trip p99", f"{percentile(round_trips, 99):.1f} ms", ""),
        ("config round trip max", f"{max(round_trips):.1f} ms", ""),
        (
            f"failover: SIGKILL -> first simulated (keepalive {args.keepalive} s)",
            *_seconds(failovers),
        ),
        ("failback: start -> birth (process start, imports)", *_seconds(births)),
        ("failback: start -> last simulated reading", *_seconds(silences)),
        ("failback: start -> first reading of the agent", *_seconds(resumes)),
    ]
    print(f"{'measurement':<56}{'median':>10}  runs")
    for name, value, runs in rows:
        print(f"{name:<56}{value:>10}  {runs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
