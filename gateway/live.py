"""GET /events: the fleet's changes pushed to pages as Server-Sent Events.

Hand-over between threads: the MQTT network thread only adds a device id to the twin's set of
changed devices (`Fleet.take_changes`), under the lock it already holds for the reading. One
task on the event loop (`LiveHub.run`) swaps that set out every `[live] interval` seconds,
builds the summaries of the changed devices that some client shows, once for all clients, and
offers each client its own event through a bounded queue. Nothing here ever makes the MQTT
thread wait on the event loop or on a client.

Per client: a filter (exact device, id prefix, site, free text) and a page (offset, limit) of
the matching devices sorted by id; a cycle's cost follows the changes of the pages shown, not
the fleet's. It first gets a `snapshot` event (its page, with each
sensor's sparkline from the history, and the fleet's counts), then `devices` events with the
changed devices of its page and `fleet` events with changed counts. A device added or removed
within its filter, or a queue that overflowed because the client reads too slowly, is answered
with a fresh snapshot instead of a backlog: a slow client costs the gateway at most `queue`
events, never unbounded memory. EventSource reconnects by itself, and every connection starts
with a snapshot, so a page resyncs after a gateway restart.

A client that asks for the scale engine instead (`engine`: the page's engine panel) gets no
devices: an `engine` event with the engine's status, the fault types it takes and the points
of the last few minutes, then one `engine` event a second with the status and the new point
while the engine runs, and one when it stops. Pushed rather than polled by each open panel: the
points are sampled once for all clients, and kept here, so a panel opened mid-run draws the
minutes before it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from edgetwin.gateway.engine import EngineController, EngineStats
from edgetwin.gateway.engine.stats import quantile
from edgetwin.gateway.fleet import DeviceTwin
from edgetwin.gateway.metrics import GatewayMetrics
from edgetwin.gateway.scenario.model import FAULT_PARAMS, FAULT_TYPES
from edgetwin.gateway.service import GatewayService
from edgetwin.gateway.views import device_summary, fleet_counts

log = logging.getLogger(__name__)

HEARTBEAT: Final = 15.0
"""Seconds of silence after which a comment line is sent: proxies and the page's watchdog
then know the stream is alive."""
RETRY_MS: Final = 1000
"""EventSource's reconnection delay after a lost stream."""
SPARK_POINTS: Final = 60
FLEET_EVERY: Final = 1.0
"""Seconds between two recounts of the fleet (O(devices)) while anything changes."""
ENGINE_EVERY: Final = 1.0
"""Seconds between two samples of the scale engine's figures while it runs."""
ENGINE_POINTS: Final = 300
"""Samples kept for the engine panel's charts: five minutes at ENGINE_EVERY."""

_WAKE: Final = b""
_END: Final = b"\x00"


@dataclass(frozen=True)
class LiveFilter:
    device: str | None = None
    prefix: str | None = None
    site: str | None = None
    q: str | None = None
    offset: int = 0
    limit: int = 100
    engine: bool = False
    """The scale engine's figures instead of devices."""

    def matches(self, twin: DeviceTwin) -> bool:
        if self.device is not None and twin.id != self.device:
            return False
        if self.prefix and not twin.id.startswith(self.prefix):
            return False
        if self.site is not None and twin.site != self.site:
            return False
        if self.q:
            needle = self.q.lower()
            texts = [twin.id, twin.site or "", *(f"{k}={v}" for k, v in twin.labels.items())]
            return any(needle in text.lower() for text in texts)
        return True


class EnginePoint(msgspec.Struct, frozen=True, array_like=True):
    """One sample of the engine for the panel's charts (a JSON array on the wire: five
    minutes of them come in a panel's first event). Rates are per second; the lateness
    quantiles (ms) and the skipped ticks are over the ticks since the previous sample, not
    since the run's start, so a chart shows the engine now rather than its average."""

    t: float
    state: str
    target: float
    scheduled: float
    delivered: float
    p50_ms: float | None
    p99_ms: float | None
    skipped: float


def engine_point(
    stats: EngineStats, previous: EngineStats | None, t: float, dt: float
) -> EnginePoint:
    if stats.state == "stopped":
        # A stopped engine still shows its last run's figures; the charts show it idle.
        return EnginePoint(round(t, 3), stats.state, 0.0, 0.0, 0.0, None, None, 0.0)
    counts = stats.lateness_counts
    skipped = stats.late_skipped + stats.backlog_skipped
    if previous is not None and previous.state != "stopped":
        before = previous.lateness_counts
        diff = [a - b for a, b in zip(counts, before, strict=True)]
        gone = previous.late_skipped + previous.backlog_skipped
        if min(diff, default=0) >= 0 and skipped >= gone:
            counts, skipped = diff, skipped - gone
        # else: counters went down, a new run (a resize that moved the fleet): its own totals.
    p50, p99 = quantile(counts, 0.5), quantile(counts, 0.99)
    return EnginePoint(
        t=round(t, 3),
        state=stats.state,
        target=stats.target_per_s,
        scheduled=stats.scheduled_per_s,
        delivered=stats.delivered_per_s,
        p50_ms=None if p50 is None else round(p50 * 1000, 3),
        p99_ms=None if p99 is None else round(p99 * 1000, 3),
        skipped=round(skipped / dt, 3) if dt > 0 else 0.0,
    )


@dataclass(eq=False)
class LiveClient:
    filter: LiveFilter
    queue: asyncio.Queue[bytes]
    resync: bool = True
    matching: set[str] = field(default_factory=set)
    """Every device id the filter matched at the last snapshot."""
    page: set[str] = field(default_factory=set)
    """The ids of its page."""
    membership: int = -1
    """`Fleet.membership` when its page was last made."""
    sent: int = 0
    """Bytes handed to its stream."""


def event(kind: str, data: Any) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + msgspec.json.encode(data) + b"\n\n"


class LiveHub:
    def __init__(
        self,
        service: GatewayService,
        metrics: GatewayMetrics,
        interval: float,
        queue: int,
        engine: EngineController | None = None,
    ) -> None:
        self._service = service
        self._engine = engine
        self.engine_points: deque[EnginePoint] = deque(maxlen=ENGINE_POINTS)
        self._engine_last: EngineStats | None = None
        self._engine_sampled = 0.0
        self._metrics = metrics
        self.interval = interval
        self._queue_size = queue
        self._clients: set[LiveClient] = set()
        self._sent: dict[str, bytes] = {}
        """Each shown device's summary as last sent, to skip changes that change nothing."""
        self._fleet_sent = b""
        self._fleet_due = 0.0
        self._closing = False
        self.cycles = 0
        self.cycle_seconds = 0.0
        """CPU spent in `cycle` so far (process time), for bench/page_bench.py."""
        self.bytes_sent = 0
        self.snapshots = 0

    # -- clients ------------------------------------------------------------------------------

    def open(self, live_filter: LiveFilter) -> LiveClient:
        client = LiveClient(live_filter, asyncio.Queue(self._queue_size))
        self._clients.add(client)
        self._metrics.live_clients.set(len(self._clients))
        return client

    @property
    def clients(self) -> list[LiveClient]:
        return list(self._clients)

    def _close(self, client: LiveClient) -> None:
        self._clients.discard(client)
        self._metrics.live_clients.set(len(self._clients))

    def shutdown(self) -> None:
        """End every stream: the server waits for open responses before it stops."""
        self._closing = True
        for client in list(self._clients):
            _drain(client.queue)
            client.queue.put_nowait(_END)

    async def stream(self, client: LiveClient) -> AsyncIterator[bytes]:
        try:
            yield f"retry: {RETRY_MS}\n\n".encode()
            while not self._closing:
                if client.resync:
                    client.resync = False
                    data = self.snapshot(client)
                else:
                    try:
                        data = await asyncio.wait_for(client.queue.get(), HEARTBEAT)
                    except TimeoutError:
                        data = b": ping\n\n"
                    if data == _END:
                        return
                    if not data:
                        continue  # a wake-up: resync is due
                self.bytes_sent += len(data)
                client.sent += len(data)
                yield data
        finally:
            self._close(client)

    def _offer(self, client: LiveClient, data: bytes) -> None:
        try:
            client.queue.put_nowait(data)
        except asyncio.QueueFull:
            # The client reads slower than the fleet changes: what it has not read is stale
            # anyway. Drop it and send one fresh snapshot when it reads again.
            _drain(client.queue)
            client.resync = True
            self._metrics.live_resyncs.inc()
            client.queue.put_nowait(_WAKE)

    # -- building events ----------------------------------------------------------------------

    def snapshot(self, client: LiveClient) -> bytes:
        if client.filter.engine:
            return self._engine_snapshot()
        service = self._service
        twins = service.fleet.snapshot()
        live_filter = client.filter
        matching = [t for t in twins if live_filter.matches(t)]
        page = matching[live_filter.offset : live_filter.offset + live_filter.limit]
        client.matching = {t.id for t in matching}
        client.page = {t.id for t in page}
        client.membership = service.fleet.membership
        self.snapshots += 1
        now = time.monotonic()
        devices = []
        for twin in page:
            summary = device_summary(twin, service.played, now)
            for name, sensor in summary["sensors"].items():
                sensor["spark"] = service.history.spark(twin.id, name, SPARK_POINTS)
            devices.append(summary)
            # What this client holds now may be newer than what was last broadcast.
            self._sent.pop(twin.id, None)
        counts = fleet_counts(service.fleet, service.played)
        return event(
            "snapshot",
            {
                "total": len(matching),
                "offset": live_filter.offset,
                "limit": live_filter.limit,
                "devices": devices,
                "fleet": counts,
                "history_points": service.history.points,
            },
        )

    def cycle(self) -> None:
        """Send every client the changes of its page since the last cycle."""
        started = time.process_time()
        changed = self._service.fleet.take_changes()
        if not self._clients or not changed:
            return
        fleet = self._service.fleet
        played = self._service.played
        now = time.monotonic()
        built: dict[str, bytes] = {}
        for client in list(self._clients):
            if client.resync or client.filter.engine:
                continue  # a snapshot is on its way, or devices are not what it shows
            parts = self._page_changes(client, changed, built, now)
            if client.resync:
                self._offer(client, _WAKE)
            elif parts:
                body = b'{"devices":[' + b",".join(parts) + b"]}"
                self._offer(client, b"event: devices\ndata: " + body + b"\n\n")
        self._sent.update(built)
        if len(self._sent) > 4 * len(built) + 10_000:
            self._sent.clear()  # devices no page shows any more
        if now >= self._fleet_due:
            self._fleet_due = now + FLEET_EVERY
            counts = msgspec.json.encode(fleet_counts(fleet, played))
            if counts != self._fleet_sent:
                self._fleet_sent = counts
                data = b"event: fleet\ndata: " + counts + b"\n\n"
                for client in list(self._clients):
                    if not client.resync and not client.filter.engine:
                        self._offer(client, data)
        self.cycles += 1
        self.cycle_seconds += time.process_time() - started

    def _page_changes(
        self, client: LiveClient, changed: set[str], built: dict[str, bytes], now: float
    ) -> list[bytes]:
        """The summaries of `client`'s page among `changed` (built once per cycle, in
        `built`); sets `client.resync` when devices came or went, or a filter's fields moved.
        Its cost follows the page's changes, not the fleet's."""
        fleet = self._service.fleet
        if fleet.membership != client.membership:
            client.resync = True
            return []
        parts: list[bytes] = []
        for device in changed & client.page:
            twin = fleet.get(device)
            if twin is None:
                client.resync = True
                return []
            encoded = built.get(device)
            if encoded is None:
                encoded = msgspec.json.encode(device_summary(twin, self._service.played, now))
                built[device] = encoded
            if self._sent.get(device) != encoded:
                parts.append(encoded)
        return parts

    # -- the scale engine ---------------------------------------------------------------------

    def _engine_snapshot(self) -> bytes:
        # The last sample, at most ENGINE_EVERY old: asking the engine here, on the event loop,
        # could wait on its lock. Only a gateway whose engine never ran has none.
        status = self._engine_last
        if status is None and self._engine is not None:
            status = self._engine.stats()
        return event(
            "engine",
            {
                "status": status,
                "points": list(self.engine_points),
                "fault_types": FAULT_TYPES,
                # Each fault type's own parameter and its default: the panel's form.
                "fault_params": {k: v for k, v in FAULT_PARAMS.items() if v is not None},
                "every": ENGINE_EVERY,
            },
        )

    def sample_engine(self, now: float | None = None) -> EngineStats | None:
        """Take one sample of the engine into `engine_points` while it runs (and one as it
        stops); the stats sampled, or None when there was nothing new. Runs on a thread: the
        engine's lock may be held for a while by a resize or a start."""
        engine = self._engine
        if engine is None:
            return None
        previous = self._engine_last
        if engine.state == "stopped" and (previous is None or previous.state == "stopped"):
            return None
        t = time.time() if now is None else now
        stats = engine.stats()
        # The first sample of a run holds its totals so far: count them over one period.
        fresh = previous is None or previous.state == "stopped"
        dt = ENGINE_EVERY if fresh else t - self._engine_sampled
        point = engine_point(stats, previous, t, dt)
        self._engine_last, self._engine_sampled = stats, t
        self.engine_points.append(point)
        return stats

    def _offer_engine(self, stats: EngineStats) -> None:
        data = event("engine", {"status": stats, "points": [self.engine_points[-1]]})
        for client in list(self._clients):
            if client.filter.engine and not client.resync:
                self._offer(client, data)

    async def _run_engine(self) -> None:
        while not self._closing:
            await asyncio.sleep(ENGINE_EVERY)
            try:
                stats = await asyncio.to_thread(self.sample_engine)
                if stats is not None:
                    self._offer_engine(stats)
            except Exception:
                log.exception("live feed: engine sample failed")

    async def _run_devices(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.interval)
            try:
                self.cycle()
            except Exception:
                log.exception("live feed cycle failed")

    async def run(self) -> None:
        await asyncio.gather(self._run_devices(), self._run_engine())


def _drain(queue: asyncio.Queue[bytes]) -> None:
    with contextlib.suppress(asyncio.QueueEmpty):
        while True:
            queue.get_nowait()
