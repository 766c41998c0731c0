"""The agent loses nothing it promised to keep: broker restarts, SIGKILL, a full outbox."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from edgetwin.agent.config import AgentConfig, AgentSection, OutboxSettings
from edgetwin.agent.mqtt import MqttLink, Will
from edgetwin.agent.outbox import Outbox
from edgetwin.agent.publisher import OutboxPublisher
from edgetwin.gateway.broker import MosquittoBroker
from edgetwin.testing.agent import agent_thread
from edgetwin.testing.broker import Broker
from edgetwin.testing.capture import BrokerAddress, Capture
from edgetwin.testing.process import start_edgetwin, stop_process
from edgetwin.testing.waiting import poll
from tests.conftest import BrokerFactory
from tests.fleet_helpers import agent_mqtt_settings, agent_toml, bme280, mqtt_settings
from tests.session_subscriber import SessionSubscriber

pytestmark = pytest.mark.integration

DEVICE = "pi-durable"
TELEMETRY = f"edgetwin/{DEVICE}/telemetry/+"


def agent_config(broker: Broker, state_dir: Path, **outbox: float) -> AgentConfig:
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


def committed_backlog(outbox: Outbox, rows: int, topic: str) -> None:
    for _ in range(rows):
        outbox.put("s", lambda seq: str(seq).encode(), topic)
    outbox.commit()


class Drain:
    """An OutboxPublisher over an MqttLink, wired as agent.runtime wires them."""

    def __init__(
        self,
        outbox: Outbox,
        broker: BrokerAddress,
        *,
        max_inflight: int = 100,
        reserved: int = 0,
        drain_rate: float = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.room_signals = 0
        self.room = threading.Event()
        self.max_seen_inflight = 0
        self.link = MqttLink(mqtt_settings(broker), on_delivered=self._delivered, max_inflight=0)
        self.publisher = OutboxPublisher(
            outbox,
            self.link,
            max_inflight=max_inflight,
            reserved=reserved,
            drain_rate=drain_rate,
            on_room=self._on_room,
            clock=clock,
        )

    def _delivered(self, mid: int) -> None:
        self.max_seen_inflight = max(self.max_seen_inflight, self.publisher.inflight)
        self.publisher.on_delivered(mid)

    def _on_room(self) -> None:
        self.room_signals += 1
        self.room.set()

    def __enter__(self) -> Drain:
        self.link.start()
        assert self.link.wait_subscribed(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.link.close()


def test_the_network_thread_drains_a_backlog_without_the_loop(
    broker: Broker, tmp_path: Path
) -> None:
    """One pump starts the drain; PUBACKs alone carry it on, reading the outbox as they go."""
    rows = 1000
    with Outbox(tmp_path / "outbox.db") as outbox, Capture(broker, "drain/#") as sub:
        committed_backlog(outbox, rows, "drain/s")
        with Drain(outbox, broker) as drain:
            drain.publisher.pump()
            poll(lambda: drain.publisher.delivered == rows, 20, 0.01, "backlog delivered")
            sub.wait_for("drain/s", count=rows)
        assert [int(m.payload) for m in sub.messages()] == list(range(1, rows + 1))
        assert drain.room_signals == 0  # the loop was never needed
        assert outbox.depth == 0


def test_a_busy_outbox_hands_the_read_back_to_the_loop(broker: Broker, tmp_path: Path) -> None:
    """While a commit holds the outbox the network thread does not wait for it: it asks the
    loop to read, and the loop's pump carries the drain on, in order."""
    rows = 500
    with Outbox(tmp_path / "outbox.db") as outbox, Capture(broker, "busy/#") as sub:
        committed_backlog(outbox, rows, "busy/s")
        holding, release = threading.Event(), threading.Event()

        def slow_payload(seq: int) -> bytes:
            holding.set()  # the outbox's lock is held while this runs, as during a commit
            release.wait(20)
            return b"late"

        with Drain(outbox, broker) as drain:
            drain.publisher.pump()  # reads and sends the first window
            writer = threading.Thread(target=outbox.put, args=("w", slow_payload, "busy/w"))
            writer.start()
            try:
                assert holding.wait(10)
                assert drain.room.wait(10), "the network thread never asked the loop to read"
            finally:
                release.set()
                writer.join(10)
            deadline = time.monotonic() + 20
            while drain.publisher.delivered < rows and time.monotonic() < deadline:
                drain.room.clear()
                drain.publisher.pump()
                drain.room.wait(0.05)
            sub.wait_for("busy/s", count=rows)
        assert [int(m.payload) for m in sub.messages() if m.topic == "busy/s"] == list(
            range(1, rows + 1)
        )


class ManualClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_backlog_drains_at_drain_rate_and_live_readings_go_at_once(
    broker: Broker, tmp_path: Path
) -> None:
    """The backlog gets `drain_rate` messages a second of the clock (here a manual one, so
    the test never races real time); live readings committed meanwhile do not wait for it."""
    clock = ManualClock()
    with Outbox(tmp_path / "outbox.db") as outbox, Capture(broker, "rate/#") as sub:
        committed_backlog(outbox, 200, "rate/old")
        with Drain(outbox, broker, drain_rate=100, clock=clock) as drain:
            drain.publisher.pump()  # the connection's boundary: 200 rows of backlog
            assert drain.publisher.backlog
            for _ in range(3):
                outbox.put("live", lambda seq: str(seq).encode(), "rate/live")
            outbox.commit()
            drain.publisher.pump()
            sub.wait_for("rate/live", count=3)
            poll(lambda: drain.publisher.delivered == 3, 10, 0.01, "the live readings acked")
            assert drain.publisher.inflight == 0, "no clock time passed: no backlog yet"
            assert outbox.depth == 200

            clock.now += 0.2  # 20 messages of backlog allowed
            drain.publisher.pump()
            poll(lambda: drain.publisher.delivered == 23, 10, 0.01, "20 backlog messages")
            drain.publisher.pump()  # the clock stood still: nothing more may go
            assert drain.publisher.inflight == 0
            assert drain.publisher.delivered == 23
            assert outbox.depth == 180

            clock.now += 5  # a bucket holds one second of drain, so 100 more at most
            drain.publisher.pump()
            poll(lambda: drain.publisher.delivered == 123, 10, 0.01, "100 more")
            drain.publisher.pump()
            assert drain.publisher.inflight == 0
            assert drain.publisher.delivered == 123
            sub.wait_for("rate/old", count=120)
        old = [int(m.payload) for m in sub.messages() if m.topic == "rate/old"]
        assert old == list(range(1, 121))


@pytest.mark.skipif(not MosquittoBroker.available(), reason="needs the mosquitto binary")
def test_the_window_stays_within_the_brokers_receive_maximum(tmp_path: Path) -> None:
    """paho ignores the Receive Maximum a MQTT 5 broker announces; the publisher keeps to it,
    less the places it leaves for the agent's own documents."""
    rows = 300
    with (
        MosquittoBroker(extra_config=["max_inflight_messages 10"]) as small,
        Outbox(tmp_path / "outbox.db") as outbox,
        Capture(small, "rm/#") as sub,
    ):
        committed_backlog(outbox, rows, "rm/s")
        with Drain(outbox, small, max_inflight=100, reserved=3) as drain:
            assert drain.link.receive_maximum == 10
            drain.publisher.pump()
            assert drain.publisher.window == 7
            poll(lambda: drain.publisher.delivered == rows, 20, 0.01, "backlog delivered")
            sub.wait_for("rm/s", count=rows)
        assert 0 < drain.max_seen_inflight <= 7
        assert [int(m.payload) for m in sub.messages()] == list(range(1, rows + 1))


def test_a_closing_link_loses_nothing_it_queued_and_sends_no_will(
    broker: Broker,
) -> None:
    """close() right after publishing, with input still unread (the broker echoes our own
    messages back): every message reaches the broker, and so does the DISCONNECT, so the
    broker publishes no last will. Closing with unread input used to reset the connection,
    and the broker dropped what it had not read yet."""
    rounds, per_round = 10, 20
    for round_ in range(rounds):
        link = MqttLink(
            mqtt_settings(broker),
            client_id=f"closing-{round_}",
            will=Will(f"closing/{round_}/will", b"gone"),
        )
        link.subscribe(["closing/#"])
        link.start()
        assert link.wait_subscribed(10)
        for k in range(per_round):
            link.publish(f"closing/{round_}/{k}", b"kept", qos=1, retain=True)
        link.close()
    with Capture(broker, ["closing/#", "marker"]) as sub:
        # The broker sends a new subscriber the retained messages (a will among them, if one
        # went out) before anything published after it subscribed, such as this marker.
        marker = MqttLink(mqtt_settings(broker))
        marker.start()
        assert marker.wait_connected(10)
        assert marker.publish("marker", b"", qos=1).wait(10)
        marker.close()
        sub.wait_for("marker")
        topics = {m.topic for m in sub.messages("closing/#")}
    assert topics == {f"closing/{r}/{k}" for r in range(rounds) for k in range(per_round)}
