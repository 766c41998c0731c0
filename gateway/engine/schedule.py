"""Deadlines of a worker's streams: periodic cursors over sorted phases, not a task per device.

Every stream fires at schedule times ``k * interval + phase`` (k = 0, 1, ...). Streams sharing
an interval form one `_Group`: their phases sorted once, and a cursor (cycle, position) that
only moves forward. Finding what is due is a walk from the cursor; skipping a backlog is one
bisect, whatever its size. A fleet has a handful of distinct intervals, so the groups are few
and scanned linearly.

Schedule time runs at `rate` times wall time (`Timeline`), so pause, resume and a rate change
re-anchor one mapping and never touch the cursors. Virtual time (gateway/scenario/virtual.py)
runs the same cursors with a clock that jumps ahead instead of following the wall:
`take_through` takes every tick up to a time, never skipping, and names each tick's time in
the run's own frame.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Entry:
    index: int
    interval: float
    phase: float


class Timeline:
    """Wall time (seconds since the epoch) to schedule time and back.

    s = s_anchor + (w - w_anchor) * rate while running; frozen at s_anchor while paused. Every
    worker gets the same anchors from the controller, so a fleet split over processes keeps one
    schedule.
    """

    def __init__(self, wall_start: float, rate: float = 1.0) -> None:
        self.s_anchor = 0.0
        self.w_anchor = wall_start
        self.rate = rate
        self.paused = False

    def schedule_time(self, wall: float) -> float:
        if self.paused:
            return self.s_anchor
        return self.s_anchor + (wall - self.w_anchor) * self.rate

    def wall_time(self, s: float) -> float:
        return self.w_anchor + (s - self.s_anchor) / self.rate

    def set_rate(self, rate: float, wall: float) -> None:
        self.s_anchor = self.schedule_time(wall)
        self.w_anchor = wall
        self.rate = rate

    def pause(self, wall: float) -> None:
        if not self.paused:
            self.s_anchor = self.schedule_time(wall)
            self.w_anchor = wall
            self.paused = True

    def resume(self, wall: float) -> None:
        if self.paused:
            self.w_anchor = wall
            self.paused = False


class _Group:
    __slots__ = ("anchored", "cycle", "indices", "interval", "n", "phases", "pos")

    def __init__(self, interval: float, entries: list[Entry], after: float) -> None:
        entries.sort(key=lambda e: (e.phase, e.index))
        self.interval = interval
        self.phases = [e.phase for e in entries]
        self.indices = [e.index for e in entries]
        self.n = len(entries)
        self.anchored: tuple[float, list[float]] | None = None  # see take_through
        # Start strictly after `after`: a rebuilt schedule must not replay a tick already taken.
        self.cycle = 0
        self.pos = 0
        self._seek(after, strict=True)

    def next_time(self) -> float:
        return self.cycle * self.interval + self.phases[self.pos]

    def _seek(self, s: float, *, strict: bool) -> int:
        """Move the cursor to the first entry at s (strict: after s); return entries passed."""
        cycle = max(math.floor(s / self.interval), 0)
        offset = s - cycle * self.interval
        pos = (
            bisect.bisect_right(self.phases, offset)
            if strict
            else bisect.bisect_left(self.phases, offset)
        )
        if pos == self.n:
            cycle, pos = cycle + 1, 0
        passed = (cycle * self.n + pos) - (self.cycle * self.n + self.pos)
        if passed > 0:
            self.cycle, self.pos = cycle, pos
            return passed
        return 0

    def take(
        self, s_now: float, skip_before: float, limit: int, out: list[tuple[int, float]]
    ) -> int:
        # At most one tick per stream survives a backlog: anything an interval or more behind
        # is coalesced into the latest one.
        skipped = self._seek(max(skip_before, s_now - self.interval), strict=True)
        phases, indices, n, interval = self.phases, self.indices, self.n, self.interval
        cycle, pos = self.cycle, self.pos
        base = cycle * interval
        taken = 0
        while taken < limit:
            s = base + phases[pos]
            if s > s_now:
                break
            out.append((indices[pos], s))
            taken += 1
            pos += 1
            if pos == n:
                pos = 0
                cycle += 1
                base = cycle * interval
        self.cycle, self.pos = cycle, pos
        return skipped

    def skip_to(self, s: float) -> int:
        return self._seek(s, strict=True)

    def take_through(self, s_now: float, origin: float, out: list[tuple[float, int]]) -> None:
        phases, indices, n, interval = self.phases, self.indices, self.n, self.interval
        # The first deadline in `origin`'s frame, once per group and origin.
        if self.anchored is None or self.anchored[0] != origin:
            self.anchored = (origin, [origin + phase for phase in phases])
        anchored = self.anchored[1]
        cycle, pos = self.cycle, self.pos
        base = cycle * interval
        while base + phases[pos] <= s_now:
            out.append((anchored[pos] + base, indices[pos]))
            pos += 1
            if pos == n:
                pos = 0
                cycle += 1
                base = cycle * interval
        self.cycle, self.pos = cycle, pos


class Schedule:
    """The deadlines of one worker's streams in schedule time."""

    def __init__(self, entries: Iterable[Entry], after: float = -1.0) -> None:
        by_interval: dict[float, list[Entry]] = {}
        for entry in entries:
            if not entry.interval > 0:
                raise ValueError(f"stream {entry.index}: interval must be > 0")
            by_interval.setdefault(entry.interval, []).append(entry)
        self._groups = [_Group(i, e, after) for i, e in sorted(by_interval.items())]
        self.streams = sum(g.n for g in self._groups)
        self.per_second = sum(g.n / g.interval for g in self._groups)

    def next_time(self) -> float | None:
        """Schedule time of the earliest tick not yet taken."""
        if not self._groups:
            return None
        return min(g.next_time() for g in self._groups)

    def take_due(
        self, s_now: float, skip_before: float, limit: int
    ) -> tuple[list[tuple[int, float]], int]:
        """Ticks due by `s_now` as (stream index, schedule time), at most `limit`, and how
        many were skipped for being older than `skip_before` (or a whole interval late)."""
        due: list[tuple[int, float]] = []
        skipped = 0
        for group in sorted(self._groups, key=_Group.next_time):
            if len(due) >= limit:
                break
            skipped += group.take(s_now, skip_before, limit - len(due), due)
        return due, skipped

    def skip_to(self, s: float) -> int:
        """Drop every tick up to `s` (they could not be sent); return how many."""
        return sum(g.skip_to(s) for g in self._groups)

    def take_through(self, s_now: float, origin: float = 0.0) -> list[tuple[float, int]]:
        """Every tick due by `s_now`, none skipped or coalesced (virtual time never falls
        behind), as (time, stream index) so that the list sorts by time as it is, group by
        group rather than in time order.

        The time is in the frame of `origin` (schedule time 0): `origin + phase` plus
        `k * interval`, in that order of float operations, so a stream's k-th tick is the same
        float however the run is cut into steps and never drifts over a long run. It differs
        from `origin + s` by a few units in the last place: a caller that orders ticks by it
        must hold back those within that much of `origin + s_now` until the next step.
        """
        out: list[tuple[float, int]] = []
        for group in self._groups:
            group.take_through(s_now, origin, out)
        return out
