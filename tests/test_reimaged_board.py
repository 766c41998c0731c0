"""A re-imaged board, a wiped state directory, a corrupt outbox set aside: the agent starts
again at boot 1. The gateway used to drop its statuses as stale (an older
boot than the one it knew) and go on simulating, and both published the stream: the same seq
numbers with different values."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from edgetwin.agent.contract import Telemetry
from edgetwin.gateway.app import create_app
from edgetwin.gateway.config import GatewayConfig, ManifestDevice
from edgetwin.testing.agent import EmulatedAgent
from edgetwin.testing.broker import Broker
from edgetwin.testing.capture import Capture, Message, as_endpoint
from edgetwin.testing.waiting import poll
from tests.fleet_helpers import bme280, mqtt_settings, one_bme280, payload

pytestmark = pytest.mark.integration

DEVICE = "reimaged-01"
INTERVAL = 0.2


def gateway_config(broker: Broker) -> GatewayConfig:
    return GatewayConfig.from_builtins(
        {
            "mqtt": mqtt_settings(
                broker, keepalive=2, reconnect_min_delay=0.1, reconnect_max_delay=0.5
            ),
            "presence": {"startup_grace": 0.3},
            "api": {"token": "t0ken"},
            "devices": [ManifestDevice(id=DEVICE, sensors={"env": bme280(INTERVAL)})],
        }
    )


def from_source(source: str, after: float = 0.0) -> Callable[[Message], bool]:
    def match(message: Message) -> bool:
        return payload(message)["source"] == source and message.received_at > after

    return match


def seq_of(message: Message) -> int:
    return Telemetry.decode(message.payload).seq


def served_by(client: TestClient) -> str:
    return str(client.get(f"/devices/{DEVICE}").json()["sensors"]["env"]["served_by"])


def test_a_wiped_state_directory_is_a_new_life_that_continues_the_stream(
    broker: Broker, tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    agent = EmulatedAgent(
        as_endpoint(broker), one_bme280(DEVICE, INTERVAL), mode="process", state_dir=state_dir
    )
    with (
        Capture(broker, f"edgetwin/{DEVICE}/telemetry/env") as sub,
        TestClient(create_app(gateway_config(broker))) as client,
        contextlib.closing(agent),
    ):
        # A few lives, so that the boot count is well above where a wiped disk restarts it.
        for _ in range(3):
            started = time.monotonic()
            agent.start(wait=False)
            try:
                sub.wait_for(from_source("emulated", started), count=3, timeout=15)
            finally:
                agent.stop()
            assert agent.exit_code == 0, agent.log_text()
        stopped = time.monotonic()
        sub.wait_for(from_source("simulated", stopped), count=5, timeout=15)
        # The card is re-flashed: outbox, boot counter and applied config are gone.
        shutil.rmtree(state_dir)
        simulated_last = max(
            seq_of(m) for m in sub.messages() if payload(m)["source"] == "simulated"
        )
        agent.start(wait=False)
        restarted = time.monotonic()
        try:
            back = sub.wait_for(from_source("emulated", restarted), count=5, timeout=20)
            poll(lambda: served_by(client) == "agent", 10, what="the twin shows the agent")
            # The simulation has stopped: nothing simulated arrives an interval after the
            # agent's first reading, while the agent keeps publishing.
            settled = back[0].received_at + INTERVAL
            sub.wait_for(from_source("emulated", settled + 1.0), count=3, timeout=10)
        finally:
            stopping = time.monotonic()
            agent.stop()
        assert agent.exit_code == 0, agent.log_text()
        messages = sub.messages()
    late_simulated = [
        m
        for m in messages
        if payload(m)["source"] == "simulated" and settled < m.received_at < stopping
    ]
    assert late_simulated == [], "the gateway went on simulating the re-imaged board"
    # The returning agent carried on above the simulation's numbers.
    assert min(seq_of(m) for m in back) > simulated_last
    # And no number ever meant two readings (the same reading sent twice is allowed).
    payloads: dict[int, bytes] = {}
    for message in messages:
        seq = seq_of(message)
        assert payloads.setdefault(seq, message.payload) == message.payload, (
            f"seq {seq} published twice with different values"
        )
