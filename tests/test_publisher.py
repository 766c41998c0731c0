"""OutboxPublisher against a link that lives in memory: refusals and PUBACKs that come early.

The integration tests (test_agent_durability.py) drive it over a real broker, where these
moments are rare and cannot be chosen; here the fake link makes them happen on cue.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgetwin.agent.metrics import NoMetrics
from edgetwin.agent.mqtt import PublishError
from edgetwin.agent.outbox import Outbox
from edgetwin.agent.publisher import OutboxPublisher


@dataclass(frozen=True)
class Sent:
    mid: int


class MemoryLink:
    """Records what is published; refuses on cue; can acknowledge inside publish(), before the
    caller has even seen the mid, as paho's network thread may."""

    connected = True
    connect_count = 1
    receive_maximum = 65_535

    def __init__(self) -> None:
        self.wire: list[tuple[int, bytes]] = []
        self.refuse_next = 0
        self.ack_inline: Callable[[int], None] | None = None
        self._mid = 0
        self._acked = 0

    def publish(self, topic: str, payload: bytes, *, qos: int = 0) -> Sent:
        if self.refuse_next:
            self.refuse_next -= 1
            raise PublishError("outgoing queue full")
        self._mid += 1
        self.wire.append((self._mid, payload))
        if self.ack_inline is not None:
            self.ack_inline(self._mid)
        return Sent(self._mid)

    def acknowledge(self, publisher: OutboxPublisher) -> None:
        """Acknowledge, oldest first, what is on the wire now and not yet acknowledged (not
        what those acknowledgements send in turn)."""
        for mid, _ in self.wire[self._acked :]:
            self._acked += 1
            publisher.on_delivered(mid)


class CountingMetrics(NoMetrics):
    def __init__(self) -> None:
        self.ok = 0
        self.failed = 0

    def published(self, count: int = 1) -> None:
        self.ok += count

    def publish_failed(self, count: int = 1) -> None:
        self.failed += count


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    box = Outbox(tmp_path / "outbox.db")
    for _ in range(50):
        box.put("s", lambda seq: str(seq).encode(), "t/s")
    box.commit()
    return box


def payloads(link: MemoryLink) -> list[int]:
    return [int(payload) for _, payload in link.wire]


def test_a_refused_publish_is_retried_in_order_and_counted(outbox: Outbox) -> None:
    link = MemoryLink()
    metrics = CountingMetrics()
    publisher = OutboxPublisher(outbox, link, max_inflight=10, drain_rate=0, metrics=metrics)
    link.refuse_next = 1
    publisher.pump()  # refused on the loop's turn: nothing on the wire, all of it still queued
    assert link.wire == []
    assert metrics.failed == 1
    publisher.pump()
    assert payloads(link) == list(range(1, 11))
    link.refuse_next = 2
    link.acknowledge(publisher)  # refused twice on the network thread's turn, then resumed
    assert metrics.failed == 3
    while publisher.delivered < 50:
        publisher.pump()
        link.acknowledge(publisher)
    assert payloads(link) == list(range(1, 51))
    assert metrics.ok == 50
    assert outbox.depth == 0


def test_pubacks_that_beat_the_recording_of_their_mids_settle_once(outbox: Outbox) -> None:
    link = MemoryLink()
    metrics = CountingMetrics()
    publisher = OutboxPublisher(outbox, link, max_inflight=10, drain_rate=0, metrics=metrics)
    link.ack_inline = publisher.on_delivered  # every PUBACK arrives inside publish()
    publisher.pump()  # each early PUBACK frees its place, so the loop sends on to the end
    assert payloads(link) == list(range(1, 51))  # none sent twice
    assert publisher.delivered == metrics.ok == 50
    assert publisher.inflight == 0
    assert outbox.depth == 0


def test_the_window_bounds_what_is_unacknowledged(outbox: Outbox) -> None:
    link = MemoryLink()
    publisher = OutboxPublisher(outbox, link, max_inflight=7, drain_rate=0)
    publisher.pump()
    assert len(link.wire) == 7
    publisher.pump()  # the loop finds no room
    assert len(link.wire) == 7
    link.acknowledge(publisher)  # each PUBACK makes room for one more, on its own thread
    assert len(link.wire) == 14
    assert publisher.inflight == 7
