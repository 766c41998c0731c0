"""Start edgetwin's own programs against a test broker: config files, processes, threads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from edgetwin.agent.config import AgentConfig, AgentMqttSettings, AgentSection, MqttSettings
from edgetwin.agent.contract import SensorSettings
from edgetwin.agent.metrics import AgentMetrics
from edgetwin.agent.runtime import Agent
from edgetwin.gateway.broker import free_port
from edgetwin.hardware import EmulatedBackend, RealBackend
from edgetwin.testing.capture import BrokerAddress, Message

REPO = Path(__file__).resolve().parent.parent


def mqtt_settings(broker: BrokerAddress, **extra: object) -> MqttSettings:
    return MqttSettings.from_builtins(
        {"host": broker.host, "port": broker.port, "protocol": broker.protocol, **extra}
    )


def agent_mqtt_settings(broker: BrokerAddress, **extra: object) -> AgentMqttSettings:
    """An agent's settings: its persistent session (session_expiry) stays on, as in production."""
    return AgentMqttSettings.from_builtins(
        {"host": broker.host, "port": broker.port, "protocol": broker.protocol, **extra}
    )


def bme280(interval: float, address: int = 0x76) -> SensorSettings:
    return SensorSettings.from_builtins(
        {"driver": "bme280", "interval": interval, "address": address, "backend": "emulated"}
    )


def agent_toml(
    broker: BrokerAddress,
    device: str,
    state_dir: Path,
    *,
    interval: float = 0.2,
    keepalive: int = 2,
    outdoor: bool = True,
) -> str:
    return f"""
[agent]
device_id = "{device}"
state_dir = "{state_dir}"

[mqtt]
host = "{broker.host}"
port = {broker.port}
protocol = "{broker.protocol}"
keepalive = {keepalive}
reconnect_min_delay = 0.2
reconnect_max_delay = 1

[sensors.env]
driver = "bme280"
address = 0x76
interval = {interval}
backend = "emulated"

[sensors.outdoor]
driver = "bme280"
address = 0x77
interval = {interval}
backend = "emulated"
enabled = {"true" if outdoor else "false"}
"""


def start_edgetwin(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Run the installed `edgetwin` command exactly as systemd or a user would."""
    return subprocess.Popen(
        [sys.executable, "-m", "edgetwin", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def stop_process(
    process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15
) -> tuple[int, str]:
    """Send `sig`, wait for the exit, and return (exit code, stderr text)."""
    if process.poll() is None:
        process.send_signal(sig)
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
        raise AssertionError(
            f"process did not stop within {timeout} s; stderr:\n{stderr.decode()}"
        ) from None
    return process.returncode, stderr.decode()


@contextmanager
def agent_thread(
    config: AgentConfig,
    emulated_backend: EmulatedBackend | None = None,
    real_backend: RealBackend | None = None,
    metrics: AgentMetrics | None = None,
) -> Iterator[Agent]:
    """An agent on its own thread (faster to start than a process), stopped on exit; fails the
    test if the agent's loop died on its own meanwhile."""
    agent = Agent(config, emulated_backend=emulated_backend, real_backend=real_backend)
    if metrics is not None:
        agent.metrics = metrics  # before the loop starts: retained documents arrive at once
    stop = threading.Event()
    thread = threading.Thread(
        target=agent.run, args=(stop,), name=f"agent-{config.agent.device_id}", daemon=True
    )
    thread.start()
    try:
        yield agent
        assert thread.is_alive(), "the agent loop died"
    finally:
        stop.set()
        thread.join(timeout=20)
        assert not thread.is_alive(), "agent did not stop"


@contextmanager
def running_agent(
    broker: BrokerAddress, device: str, state_dir: Path, interval: float = 0.2
) -> Iterator[Agent]:
    """An agent with one emulated BME280 on its own thread."""
    config = AgentConfig(
        agent=AgentSection(device_id=device, state_dir=state_dir),
        mqtt=agent_mqtt_settings(
            broker, keepalive=2, reconnect_min_delay=0.2, reconnect_max_delay=1
        ),
        sensors={"env": bme280(interval)},
    )
    with agent_thread(config) as agent:
        yield agent


def payload(message: Message) -> dict[str, object]:
    decoded: dict[str, object] = json.loads(message.payload)
    return decoded


def poll(
    condition: object, timeout: float, interval: float = 0.05, what: str = "condition"
) -> None:
    """Poll a callable until it returns truthy, with a deadline (for state behind an HTTP API)."""
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached within {timeout} s")


@contextmanager
def serving(app: FastAPI, attempts: int = 3) -> Iterator[str]:
    """Run `app` on uvicorn in a thread on a free port; yield its base URL."""
    for _ in range(attempts):
        port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
        thread.start()
        deadline = time.monotonic() + 15
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if server.started:
            break
        server.should_exit = True
        thread.join(timeout=15)  # the port was taken in between: try another
    else:
        raise AssertionError(f"uvicorn did not start in {attempts} attempts")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        assert not thread.is_alive(), "uvicorn did not stop"
