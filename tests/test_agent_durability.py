"""The agent loses nothing it promised to keep: broker restarts, SIGKILL, a full outbox."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import pytest

from agent.config import AgentConfig, AgentSection, OutboxSettings
from agent.mqtt import MqttLink
from agent.outbox import Outbox
from agent.publisher import OutboxPublisher
from tests.brokers import BrokerUnderTest
from tests.conftest import BrokerFactory
from tests.fleet_helpers import (
    agent_mqtt_settings,
    agent_thread,
    agent_toml,
    bme280,
    mqtt_settings,
    poll,
    start_edgetwin,
    stop_process,
)
from tests.mqtt_helpers import Subscriber
from tests.session_subscriber import SessionSubscriber

pytestmark = pytest.mark.integration

DEVICE = "pi-durable"
TELEMETRY = f"edgetwin/{DEVICE}/telemetry/+"


def agent_config(broker: BrokerUnderTest, state_dir: Path, **outbox: float) -> AgentConfig:
    return AgentConfig(
        agent=AgentSection(device_id=DEVICE, state_dir=state_dir, shutdown_timeout=10),
        mqtt=agent_mqtt_settings(
            broker, keepalive=2, reconnect_min_delay=0.05, reconnect_max_delay=0.5
        ),
        outbox=OutboxSettings.from_builtins({"commit_interval": 0.05, **outbox}),
        sensors={"env": bme280(0.02), "outdoor": bme280(0.05, address=0x77)},
    )


def test_broker_restarts_lose_nothing_and_backlog_drains_in_order(
    broker_factory: BrokerFactory, tmp_path: Path
) -> None:
    broker = broker_factory(persistence=True)
    outages: list[tuple[float, float]] = []
    with SessionSubscriber(broker, TELEMETRY) as sub:
        with agent_thread(agent_config(broker, tmp_path)) as agent:
            for _ in range(3):
                target = len(sub.payloads) + 20
                sub.wait(lambda: len(sub.payloads) >= target, 10, "readings flowing")  # noqa: B023
                down = time.time()
                broker.stop()
                enough = agent.readings + 30
                poll(lambda: agent.readings >= enough, 10, what="readings while down")  # noqa: B023
                broker.start()
                outages.append((down, time.time()))
            sub.wait(lambda: sub.connects >= 4, 15, "subscriber back after the last restart")
        # The agent stopped cleanly: it delivered its outbox before leaving.
        produced = {name: agent.outbox.last_seq(name) for name in ("env", "outdoor")}
        for sensor, last in produced.items():
            expected = set(range(1, last + 1))
            sub.wait(lambda: sub.distinct(sensor) >= expected, 15, f"all of {sensor}")  # noqa: B023
    with Outbox(tmp_path / "outbox.db") as reopened:
        assert reopened.depth == 0, "a clean stop delivers the outbox"
    for sensor, last in produced.items():
        received = sub.seqs(sensor)
        assert set(received) == set(range(1, last + 1)), f"{sensor}: readings lost"
        duplicates = len(received) - len(set(received))
        print(f"{sensor}: {last} readings, {duplicates} duplicates over 3 broker restarts")
        # Readings taken while the broker was away are the backlog: it drains oldest first.
        backlog = _first_occurrences(
            p["seq"]
            for p in sub.payloads
            if p["sensor"] == sensor and any(a <= p["ts"] <= b for a, b in outages)
        )
        assert backlog == sorted(backlog), f"{sensor}: backlog out of order"


def _first_occurrences(seqs: Iterable[int]) -> list[int]:
    seen: set[int] = set()
    ordered = []
    for seq in seqs:
        if seq not in seen:
            seen.add(seq)
            ordered.append(seq)
    return ordered


def test_sigkill_loses_nothing_that_reached_the_outbox(
    broker_factory: BrokerFactory, tmp_path: Path
) -> None:
    broker = broker_factory(persistence=True)
    config = tmp_path / "agent.toml"
    config.write_text(agent_toml(broker, DEVICE, tmp_path / "state", interval=0.02))
    with SessionSubscriber(broker, TELEMETRY) as sub:
        first = start_edgetwin(["agent", "--config", str(config)])
        try:
            sub.wait(lambda: len(sub.payloads) >= 40, 15, "first run publishing")
        finally:
            stop_process(first, signal.SIGKILL)
        killed_at = max(sub.seqs("env"))
        second = start_edgetwin(["agent", "--config", str(config)])
        try:
            sub.wait(lambda: max(sub.seqs("env")) >= killed_at + 40, 15, "second run publishing")
        finally:
            code, stderr = stop_process(second)
        assert code == 0, stderr
        last = max(sub.seqs("env"))
        sub.wait(lambda: sub.distinct("env") >= set(range(1, last + 1)), 10, "every reading")
    # Readings buffered but not yet committed at the kill never existed as far as the outbox
    # is concerned; their seq numbers are reused after the restart, so the stream has no gap.
    assert sub.distinct("env") == set(range(1, last + 1))


def test_full_outbox_drops_oldest_counts_them_and_keeps_running(
    broker_factory: BrokerFactory, tmp_path: Path
) -> None:
    broker = broker_factory(persistence=True)
    broker.stop()  # the agent starts with no broker at all
    with agent_thread(agent_config(broker, tmp_path, max_messages=25)) as agent:
        poll(lambda: agent.outbox.dropped >= 50, 15, what="drops at the bound")
        assert agent.outbox.depth <= 25
        broker.start()
        with SessionSubscriber(broker, TELEMETRY) as sub:
            poll(
                lambda: agent.outbox.depth == 0 or len(sub.payloads) >= 25,
                15,
                what="backlog delivered",
            )
            reading_count = agent.readings
            poll(lambda: agent.readings > reading_count + 10, 10, what="agent still reading")
        dropped = agent.outbox.dropped
    assert dropped >= 50
    first_delivered = min(p["seq"] for p in sub.payloads if p["sensor"] == "env")
    assert first_delivered > 1, "the oldest readings should have been the ones dropped"


def test_a_backlog_drains_on_room_signals_alone(broker: BrokerUnderTest, tmp_path: Path) -> None:
    """The publisher refills its window by halves and says when half is free: a loop that
    waits for nothing but that signal drains the whole backlog, in order, without stalling."""
    rows = 1000
    room = threading.Event()
    signals = 0

    def on_room() -> None:
        nonlocal signals
        signals += 1
        room.set()

    with Outbox(tmp_path / "outbox.db") as outbox, Subscriber(broker, "drain/#") as sub:
        for _ in range(rows):
            outbox.put("s", lambda seq: str(seq).encode(), "drain/s")
        outbox.commit()
        publisher: OutboxPublisher | None = None

        def delivered(mid: int) -> None:
            assert publisher is not None
            publisher.on_delivered(mid)

        link = MqttLink(mqtt_settings(broker), on_delivered=delivered)
        publisher = OutboxPublisher(outbox, link, max_inflight=100, drain_rate=0, on_room=on_room)
        link.start()
        try:
            assert link.wait_subscribed(10)
            deadline = time.monotonic() + 20
            while publisher.delivered < rows:
                room.clear()
                publisher.pump()
                # Nothing else wakes this loop: a missing signal stalls it to the deadline.
                assert room.wait(max(deadline - time.monotonic(), 0)), "no room signal"
            sub.wait_for("drain/s", count=rows)
        finally:
            link.close()
        assert [int(m.payload) for m in sub.messages()] == list(range(1, rows + 1))
        assert signals > 0
