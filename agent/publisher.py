"""Moves readings from the outbox to the broker, QoS 1, and removes them once acknowledged.

Two lanes after every (re)connect: what was committed before the connection came up is the
backlog, drained oldest first at `drain_rate`; what arrives afterwards is live and goes out at
once. So after an outage the backlog arrives in order without holding live readings back, and
a consumer orders the two by `seq`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from agent.metrics import AgentMetrics, NoMetrics
from agent.mqtt import MqttLink, PublishError
from agent.outbox import Entry, Outbox

log = logging.getLogger(__name__)


class OutboxPublisher:
    def __init__(
        self,
        outbox: Outbox,
        link: MqttLink,
        *,
        max_inflight: int,
        drain_rate: float,
        metrics: AgentMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_room: Callable[[], None] | None = None,
    ) -> None:
        self._outbox = outbox
        self._link = link
        self._max_inflight = max_inflight
        # The window is refilled by halves, not a message at a time: one outbox read and one
        # wake-up of the caller per half window rather than per PUBACK. Measured draining a
        # backlog: 16-18k msgs/s against 11-14k one at a time (raw paho: 28k).
        self._refill_at = max(1, max_inflight // 2)
        self._on_room = on_room
        self._drain_rate = drain_rate
        self.metrics = metrics or NoMetrics()
        self._clock = clock
        self._lock = threading.Lock()
        self._inflight: dict[int, int] = {}  # paho mid -> outbox id
        self._inflight_ids: set[int] = set()
        self._early_acks: set[int] = set()  # PUBACKs that beat the recording of their mid
        self._connects_seen = 0
        self._boundary = 0
        self._backlog_cursor = 0
        self._live_cursor = 0
        self._tokens = 0.0
        self._last_refill = clock()
        self.delivered = 0

    @property
    def inflight(self) -> int:
        with self._lock:
            return len(self._inflight)

    @property
    def backlog(self) -> bool:
        """Whether pre-connection readings are still waiting to be sent."""
        return self._backlog_cursor < self._boundary

    def on_delivered(self, mid: int) -> None:
        """PUBACK from the broker, on the network thread."""
        with self._lock:
            entry_id = self._inflight.pop(mid, None)
            if entry_id is None:
                self._early_acks.add(mid)
                return
            self._inflight_ids.discard(entry_id)
            room = self._max_inflight - len(self._inflight) >= self._refill_at
        self._outbox.ack([entry_id])
        self.delivered += 1
        self.metrics.published()
        if room and self._on_room is not None:
            self._on_room()

    def pump(self) -> int:
        """Publish what the lanes allow now; returns how many messages were handed to the link."""
        if not self._link.connected:
            return 0
        if self._link.connect_count != self._connects_seen:
            self._connects_seen = self._link.connect_count
            self._boundary = self._outbox.last_id
            self._backlog_cursor = 0
            self._live_cursor = self._boundary
            self._tokens = 0.0
        sent = self._send_live()
        sent += self._send_backlog()
        return sent

    def _room(self) -> int:
        """Free places in the window; none until half of it is free."""
        with self._lock:
            room = self._max_inflight - len(self._inflight)
        return room if room >= self._refill_at else 0

    def _send_live(self) -> int:
        room = self._room()
        if room <= 0:
            return 0
        entries = self._outbox.pending(room, after_id=self._live_cursor)
        sent = self._send(entries)
        if sent:
            self._live_cursor = entries[sent - 1].id
        return sent

    def _send_backlog(self) -> int:
        if not self.backlog:
            return 0
        now = self._clock()
        if self._drain_rate > 0:
            # Token bucket holding at most one second of drain.
            self._tokens = min(
                self._drain_rate, self._tokens + (now - self._last_refill) * self._drain_rate
            )
            self._last_refill = now
            budget = int(self._tokens)
        else:
            budget = self._max_inflight
        room = min(self._room(), budget)
        if room <= 0:
            return 0
        entries = [
            e
            for e in self._outbox.pending(room, after_id=self._backlog_cursor)
            if e.id <= self._boundary
        ]
        if not entries:
            self._backlog_cursor = self._boundary
            return 0
        sent = self._send(entries)
        if sent:
            self._backlog_cursor = entries[sent - 1].id
            self._tokens -= sent
        return sent

    def _send(self, entries: list[Entry]) -> int:
        """Hand entries to the link in order; stops at the first refusal. Returns how many."""
        count = 0
        for entry in entries:
            with self._lock:
                already = entry.id in self._inflight_ids
            if not already:
                try:
                    delivery = self._link.publish(entry.topic, entry.payload, qos=entry.qos)
                except PublishError as exc:
                    self.metrics.publish_failed()
                    log.warning("publish refused, will retry", extra={"error": str(exc)})
                    return count
                acked_early = False
                with self._lock:
                    if delivery.mid in self._early_acks:
                        self._early_acks.discard(delivery.mid)
                        acked_early = True
                    else:
                        self._inflight[delivery.mid] = entry.id
                        self._inflight_ids.add(entry.id)
                if acked_early:
                    self._outbox.ack([entry.id])
                    self.delivered += 1
                    self.metrics.published()
            count += 1
        return count
