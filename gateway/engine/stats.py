"""Counters a worker reports and the controller sums: fixed-bucket lateness histograms, so the
fleet's p50/p99 come from adding bucket counts, in bounded memory whatever the message count."""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import msgspec

# Upper bounds of the lateness buckets, seconds: 20 per decade from 10 µs to 100 s (a quantile
# is read to within 12 %), then everything later in the last, open bucket.
BUCKETS_PER_DECADE = 20
LATENESS_EDGES: tuple[float, ...] = tuple(
    1e-5 * 10 ** (i / BUCKETS_PER_DECADE) for i in range(7 * BUCKETS_PER_DECADE + 1)
)


class Lateness:
    """A histogram of publish time minus deadline. `add` costs one bisect."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENESS_EDGES) + 1)
        self.total = 0.0

    def add(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(LATENESS_EDGES, seconds)] += 1
        self.total += seconds


def quantile(counts: Sequence[int], q: float) -> float | None:
    """The upper edge of the bucket holding the q-quantile; None without samples."""
    n = sum(counts)
    if n == 0:
        return None
    rank = q * n
    seen = 0
    for i, count in enumerate(counts):
        seen += count
        if seen >= rank and count:
            return LATENESS_EDGES[min(i, len(LATENESS_EDGES) - 1)]
    return LATENESS_EDGES[-1]


def add_counts(a: Sequence[int], b: Sequence[int]) -> list[int]:
    return [x + y for x, y in zip(a, b, strict=True)]


class WorkerStats(msgspec.Struct, frozen=True):
    """One worker's cumulative counters at wall time `t` (pickled over its pipe)."""

    worker: int
    pid: int
    t: float
    state: str  # "connecting", "running", "paused", "stopped"
    connected: bool
    streams: int
    target_per_s: float  # ticks per second the schedule asks for now (0 while paused)
    ticks: int  # deadlines handed to the generator
    sent: int  # messages whose last byte the socket accepted (telemetry, labels, status)
    acked: int  # QoS 1 messages the broker acknowledged
    rejected: int  # QoS 1 messages the broker acknowledged with a failure reason (MQTT 5)
    lost: int  # messages queued on a connection that dropped: unsent, or QoS 1 without PUBACK
    late_skipped: int  # ticks skipped: too late, or coalesced into a later one
    backlog_skipped: int  # ticks skipped: socket backlog or QoS 1 window full, not connected
    refused: int  # QoS 1 messages the link refused (window full)
    backlog_bytes: int
    qos1_queued: int  # QoS 1 messages published and not yet acknowledged
    lateness: list[int]
    lateness_sum: float
    rss_bytes: int
    cpu_seconds: float
    error: str | None = None
    # Messages per device since the run started; only with `count_by_device`, and only in
    # every few reports.
    sent_by_device: DeviceCounts | None = None


class DeviceCounts(msgspec.Struct, frozen=True):
    """A worker's messages per device, compact on the pipe: the counts as one array of
    unsigned 64-bit integers in the order of the worker's device list, whose names are sent
    once (`names`: those added since the last report, from slot `first`). A dict of 50,000
    device names to counts, unpickled every few seconds, cost the gateway ~20 MB a worker."""

    first: int
    names: list[str]
    counts: bytes
