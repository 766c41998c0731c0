"""Moves readings from the outbox to the broker, QoS 1, and removes them once acknowledged.

Two lanes after every (re)connect: what was committed before the connection came up is the
backlog, drained oldest first at `drain_rate`; what arrives afterwards is live and goes out at
once. So after an outage the backlog arrives in order without holding live readings back, and
a consumer orders the two by `seq`.

Threads. Readings are read ahead from the outbox into a queue, and published from it while the
window has room. While PUBACKs come in, paho's network thread does both at each PUBACK, topping
the window up the way paho does from its own queue; the caller's loop (`pump`) starts the flow
when nothing is in flight, and reads when asked. So a backlog drains on the network thread
alone, with no hand-over between threads per message: were the loop to read and publish, the
two threads would pass the GIL to and fro at every outbox row and PUBACK. The drain runs at
0.84-0.99 times raw paho (bench/README.md, outbox_bench; docs/design.md, 'Agent'). The
network thread reads only when no commit holds the outbox, so it never waits for the disk; when
one does, it asks the loop to read (`on_room`). One thread at a time reads, and one publishes,
so messages reach paho, and the wire, in the order read.

The window is this publisher's, not paho's (the agent's link turns paho's off: paho rescans
every message in flight at each PUBACK to find the next to send). It is `max_inflight`, within
the broker's MQTT 5 Receive Maximum, which paho does not honour, less `reserved` places for the
caller's own QoS 1 documents.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Final, Literal, Protocol

from edgetwin.agent.metrics import AgentMetrics, NoMetrics
from edgetwin.agent.mqtt import PublishError
from edgetwin.agent.outbox import Entry, Outbox

log = logging.getLogger(__name__)

ThreadName = Literal["loop", "network"]

# Rows read ahead at least, whatever the window: an outbox query costs per query as well as
# per row, and the queue holds only references to rows already read.
_MIN_READ_AHEAD: Final = 64


class Sent(Protocol):
    @property
    def mid(self) -> int: ...


class Link(Protocol):
    """What the publisher needs of `agent.mqtt.MqttLink`."""

    connect_count: int
    receive_maximum: int

    @property
    def connected(self) -> bool: ...

    def publish(self, topic: str, payload: bytes, *, qos: int = 0) -> Sent: ...


class OutboxPublisher:
    def __init__(
        self,
        outbox: Outbox,
        link: Link,
        *,
        max_inflight: int,
        drain_rate: float,
        reserved: int = 0,
        metrics: AgentMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_room: Callable[[], None] | None = None,
    ) -> None:
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be at least 1, not {max_inflight}")
        self._outbox = outbox
        self._link = link
        self._max_inflight = max_inflight
        self._reserved = reserved
        self._window = max_inflight
        # Four windows, refilled by halves: one outbox query per half, not one per message,
        # and enough queued for the network thread to keep publishing through a commit
        # (10-30 ms here) instead of stalling until the loop has read again.
        self._read_ahead = max(4 * max_inflight, _MIN_READ_AHEAD)
        self._low_water = self._read_ahead // 2
        self._on_room = on_room
        self._drain_rate = drain_rate
        self._min_chunk = max(1, min(self._low_water, int(drain_rate / 20)))
        self.metrics = metrics or NoMetrics()
        self._clock = clock
        self._lock = threading.Lock()
        self._ready: deque[Entry] = deque()  # read and cleared to go, not yet given to paho
        self._inflight: dict[int, int] = {}  # paho mid -> outbox id
        self._inflight_ids: set[int] = set()  # ids given to (or being given to) paho
        self._sender: ThreadName | None = None
        self._reading = False
        self._loop_reads = False  # the network thread found the outbox busy and asks the loop
        self._settled_while_reading: set[int] = set()  # not to be queued by that read
        self._generation = 0  # counts connections; a read begun in an earlier one is dropped
        # PUBACKs that beat the recording of their mid: possible only for what the loop
        # publishes, since the network thread itself reads the PUBACKs.
        self._early_acks: set[int] = set()
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
    def window(self) -> int:
        """Messages this publisher lets go unacknowledged on the current connection."""
        return self._window

    @property
    def backlog(self) -> bool:
        """Whether pre-connection readings are still waiting to be sent."""
        return self._backlog_cursor < self._boundary

    def on_delivered(self, mid: int) -> None:
        """PUBACK from the broker, on the network thread: settle it and refill the window."""
        with self._lock:
            entry_id = self._inflight.pop(mid, None)
            if entry_id is None:
                if self._sender == "loop":
                    self._early_acks.add(mid)
                # Otherwise not one of ours: a document the caller published itself.
                return
            self._settle_locked(entry_id)
        self.metrics.published()
        if self._queue_low() and self._refill(wait=False) is None:
            self._loop_reads = True  # a commit holds the outbox: the loop reads once it is done
            if self._on_room is not None:
                self._on_room()
        self._send_ready("network")

    def pump(self) -> int:
        """Read what the lanes allow now and start sending it; returns how many were read."""
        if not self._link.connected:
            return 0
        if self._link.connect_count != self._connects_seen:
            self._connects_seen = self._link.connect_count
            self._new_connection()
        read = 0
        # While PUBACKs come in, the network thread reads; the loop reads only when none will,
        # or when asked. Both at once would pass the GIL between them at every row.
        if self._loop_reads or not self._inflight_ids:
            self._loop_reads = False
            read = self._refill(wait=True) or 0
        self._send_ready("loop")
        return read

    def _new_connection(self) -> None:
        """What was committed before this connection is the backlog, read from the start."""
        boundary = self._outbox.last_id
        room = max(1, self._link.receive_maximum - self._reserved)
        with self._lock:
            self._window = min(self._max_inflight, room)
            self._generation += 1
            self._boundary = boundary
            self._backlog_cursor = 0
            self._live_cursor = boundary
            self._tokens = 0.0
            # Read again from the cursors; what paho still holds, it resends itself.
            self._ready.clear()

    # -- reading ------------------------------------------------------------------------------

    def _refill(self, *, wait: bool) -> int | None:
        """Read the lanes into the queue once it is down to half; one reader at a time.

        Returns how many entries it queued, or None if it had to read but found the outbox
        held by a commit (only with `wait=False`, the network thread's way).
        """
        with self._lock:
            if self._reading or not self._queue_low():
                return 0
            space = self._read_ahead - len(self._ready)
            self._reading = True
            generation = self._generation
            live_cursor = self._live_cursor
            backlog_cursor = self._backlog_cursor
            boundary = self._boundary
            budget = self._backlog_budget() if backlog_cursor < boundary else 0
        read = self._outbox.pending if wait else self._outbox.try_pending
        live: list[Entry] | None = None
        backlog: list[Entry] | None = None
        refused = False
        try:
            # Nothing committed since the last live read: no query (during a rate-limited
            # drain this runs at every PUBACK).
            live = read(space, live_cursor) if self._outbox.last_id > live_cursor else []
            refused = live is None
            if live is not None and min(budget, space - len(live)) > 0:
                backlog = read(min(budget, space - len(live)), backlog_cursor)
                refused = backlog is None
        finally:
            with self._lock:
                self._reading = False
                queued = 0
                if generation == self._generation:
                    queued = self._queue(live, backlog, boundary)
                self._settled_while_reading.clear()
        return None if refused else queued

    def _queue_low(self) -> bool:
        """Down to half the read-ahead: time to read the next half."""
        return len(self._ready) <= self._low_water

    def _backlog_budget(self) -> int:
        if self._drain_rate <= 0:
            return self._read_ahead
        # Token bucket holding at most one second of drain.
        now = self._clock()
        self._tokens = min(
            self._drain_rate, self._tokens + (now - self._last_refill) * self._drain_rate
        )
        self._last_refill = now
        # Read in chunks of at least 50 ms of drain, not a row at each PUBACK.
        return int(self._tokens) if self._tokens >= self._min_chunk else 0

    def _queue(self, live: list[Entry] | None, backlog: list[Entry] | None, boundary: int) -> int:
        """Under the lock: queue what was read, live lane first, and move the cursors past it."""
        entries: list[Entry] = []
        if live:
            self._live_cursor = live[-1].id
            entries.extend(live)
        if backlog is not None:
            old = [e for e in backlog if e.id <= boundary]
            if old:
                self._backlog_cursor = old[-1].id
                self._tokens -= len(old)
                entries.extend(old)
            if not backlog or len(old) < len(backlog):
                self._backlog_cursor = boundary  # nothing from before the connection is left
        # After a reconnect the lanes read from the start again, past what is still in flight
        # or was delivered while this read went on.
        fresh = [
            e
            for e in entries
            if e.id not in self._inflight_ids and e.id not in self._settled_while_reading
        ]
        self._ready.extend(fresh)
        return len(fresh)

    # -- sending ------------------------------------------------------------------------------

    def _send_ready(self, thread: ThreadName) -> None:
        """Publish from the queue while the window has room, unless the other thread is at it.

        Whoever holds the sender's role checks again for room and entries before giving it up,
        so what arrived meanwhile is never left waiting.
        """
        with self._lock:
            batch = self._take_locked(thread)
        while batch:
            mids, refusal = self._publish(batch)
            early = 0
            with self._lock:
                for entry, mid in zip(batch, mids, strict=False):
                    if mid in self._early_acks:
                        self._early_acks.discard(mid)
                        self._settle_locked(entry.id)
                        early += 1
                    else:
                        self._inflight[mid] = entry.id
                if refusal is None:
                    batch = self._take_locked(thread)
                else:
                    unsent = batch[len(mids) :]
                    self._inflight_ids.difference_update(e.id for e in unsent)
                    self._ready.extendleft(reversed(unsent))
                    self._release(thread)
                    batch = []
            for _ in range(early):
                self.metrics.published()
            if refusal is not None:
                self.metrics.publish_failed()
                log.warning("publish refused, will retry", extra={"error": str(refusal)})

    def _take_locked(self, thread: ThreadName) -> list[Entry]:
        """The next entries to publish, taking the sender's role; none, giving it up, if there
        is no room or nothing queued, or if the other thread has the role."""
        if self._sender not in (None, thread):
            return []
        room = self._window - len(self._inflight_ids)
        if room <= 0 or not self._ready:
            self._release(thread)
            return []
        self._sender = thread
        batch = []
        for _ in range(min(room, len(self._ready))):
            entry = self._ready.popleft()
            self._inflight_ids.add(entry.id)
            batch.append(entry)
        return batch

    def _release(self, thread: ThreadName) -> None:
        if self._sender == thread:
            self._sender = None
            self._early_acks.clear()  # unclaimed, so acks of the caller's own documents

    def _publish(self, batch: list[Entry]) -> tuple[list[int], PublishError | None]:
        """Hand `batch` to the link in order; the mids given, and the refusal that stopped it."""
        mids: list[int] = []
        for entry in batch:
            try:
                mids.append(self._link.publish(entry.topic, entry.payload, qos=entry.qos).mid)
            except PublishError as exc:
                return mids, exc
        return mids, None

    def _settle_locked(self, entry_id: int) -> None:
        """Delivered: out of the window, and out of the outbox (its ack never waits)."""
        self._inflight_ids.discard(entry_id)
        self.delivered += 1
        if self._reading:
            self._settled_while_reading.add(entry_id)
        self._outbox.ack((entry_id,))
