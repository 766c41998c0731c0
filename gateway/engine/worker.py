"""One engine worker process: a slice of the fleet, one MQTT connection, one loop.

The loop: read commands from the controller's pipe, take the ticks that are due (a bounded
batch), ask the generator for their messages, queue them on the link, flush with one send(),
record lateness, sleep in select() until the next deadline, a command or the socket. Nothing
here grows with time: ticks the worker cannot send (too late, socket backlog over its bound,
not connected, QoS 1 window full for longer than `max_lateness`) are skipped and counted.

Messages count as sent when the link has handed their last byte to the socket, and at QoS 1
as acknowledged on their PUBACK (gateway/engine/link.py), never when they are queued.
"""

from __future__ import annotations

import gc
import os
import random
import select
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Protocol

from edgetwin.agent.contract import Topics
from edgetwin.gateway.engine.interface import (
    GeneratorLike,
    PayloadKind,
    PlacingGeneratorLike,
    ScenarioLike,
    StreamSpecLike,
)
from edgetwin.gateway.engine.link import Endpoint, EngineLink
from edgetwin.gateway.engine.schedule import Entry, Schedule, Timeline
from edgetwin.gateway.engine.settings import EngineSettings
from edgetwin.gateway.engine.stats import DeviceCounts, Lateness, WorkerStats

_CHUNK = 256  # ticks between two flushes inside a batch: bounds the lateness a batch adds
_IDLE_WAIT = 0.25  # seconds; the longest select() when nothing is due (keep-alive, commands)
_PAGE = os.sysconf("SC_PAGE_SIZE")
_DEVICE_COUNTS_EVERY = 4  # stats reports between two of the per-device counts


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    worker: int
    endpoint: Endpoint
    settings: EngineSettings
    qos: int
    payload: PayloadKind
    in_process: bool = False  # a thread of the gateway, not a process of its own
    count_by_device: bool = False


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


class Lease(Protocol):
    """A monotonic time shared with the controller (a shared-memory double), after which the
    worker publishes nothing until it moves again (`EngineController.hold_after`)."""

    value: float


class Worker:
    def __init__(self, conn: Connection, spec: WorkerSpec, lease: Lease | None = None) -> None:
        self.conn = conn
        self.spec = spec
        self.lease = lease
        self.settings = spec.settings
        self.topics = Topics(
            prefix=spec.endpoint.prefix, telemetry_template=spec.endpoint.telemetry_template
        )
        self.link = EngineLink(
            spec.endpoint,
            worker=spec.worker,
            max_inflight=spec.settings.max_inflight,
        )
        # Which generator serves each stream: after a resize, streams that kept their index
        # and identity keep their generator (and so their seq counters and fault state).
        self.generator_of: dict[int, GeneratorLike] = {}
        self.scenario: ScenarioLike | None = None
        self.scenario_entries: list[Entry] = []
        # A placed run's streams (see `place`), and whether the schedule must take them in.
        self.placed: PlacingGeneratorLike | None = None
        self.replan = False
        self.schedule = Schedule(())
        self.timeline: Timeline | None = None
        self.s_done = -1.0  # schedule time up to which ticks were taken or skipped
        self.lateness = Lateness()
        self.ticks = 0
        self.late_skipped = 0
        self.backlog_skipped = 0
        self.stopping = False
        self.error: str | None = None
        self.next_connect = 0.0
        self.backoff = 0.1
        self.next_stats = 0.0
        self.next_tick = 0.0
        self.reported_connected = False
        # With count_by_device: messages per device, in slots of an array (a device keeps its
        # slot for the run), each stream index's slot, and how many names were reported.
        self.sent_of: array[int] | None = array("Q") if spec.count_by_device else None
        self.device_slot: dict[str, int] = {}
        self.device_names: list[str] = []
        self.slot_of: dict[int, int] = {}
        self.names_reported = 0
        self.reports = 0

    # -- commands ---------------------------------------------------------------------------

    def handle(self, command: tuple[Any, ...]) -> None:  # noqa: PLR0912 - a branch per command
        kind = command[0]
        if kind == "streams":
            self.set_streams(command[1], command[2])
        elif kind == "go":
            self.timeline = Timeline(command[1], command[2])
            self.s_done = -1.0
        elif kind == "pause" and self.timeline is not None:
            self.timeline.pause(command[1])
        elif kind == "resume" and self.timeline is not None:
            self.timeline.resume(command[1])
        elif kind == "rate" and self.timeline is not None:
            self.timeline.set_rate(command[1], command[2])
        elif kind == "inject":
            # Each generator applies the fault to the streams it serves that it names.
            for generator in {id(g): g for g in self.generator_of.values()}.values():
                generator.inject(command[1])
        elif kind == "place":
            self.place(*command[1:])
        elif kind == "place_many":
            token = command[2] if len(command) > 2 else None
            stopped = {
                device: self.place(device, keep, start, None) for device, keep, start in command[1]
            }
            if token is not None:
                self.conn.send(("placed", (token, stopped)))
        elif kind == "drive":
            if self.placed is not None:
                # Signals are sampled at wall times (`run_due`): the change is one too.
                self.placed.drive(command[1], command[2], time.time())
        elif kind == "stats":
            self.next_stats = 0.0
        elif kind == "stop":
            self.stopping = True

    def set_streams(self, scenario: ScenarioLike, indices: Sequence[int]) -> None:
        # After a resize, a stream that kept its index and identity keeps its generator.
        kept: dict[int, GeneratorLike] = {}
        if self.scenario_entries:
            wanted = scenario.streams_at(indices)
            before = {
                s.index: (s.device, s.sensor) for s in self._specs(self.scenario_generators())
            }
            kept = {
                i: self.generator_of[i]
                for i in indices
                if before.get(i) == (wanted[i].device, wanted[i].sensor)
            }
            del wanted, before
        fresh = [i for i in indices if i not in kept]
        if fresh:
            generator = scenario.generator(self.topics, streams=fresh, payload=self.spec.payload)
            # Each stream's state (some 75 us to build) is built now, not late at its first
            # deadline.
            generator.warm()
            kept.update(dict.fromkeys(fresh, generator))
            if not self.spec.in_process:
                # The streams' state lives as long as the run: out of the cyclic collector's
                # sight. A full pass over 25,000 streams takes ~0.2 s, which would be the p99
                # lateness at 50,000 devices. Not in a thread of the gateway: frozen objects
                # are never collected, and the gateway's are not ours to freeze.
                gc.collect()
                gc.freeze()
        self.scenario = scenario
        self.generator_of = kept
        self.scenario_entries = [
            Entry(s.index, s.interval, s.phase)
            for s in self._specs(self.scenario_generators())
            if s.index in kept
        ]
        self.plan()

    def scenario_generators(self) -> list[GeneratorLike]:
        placed = self.placed
        return list({id(g): g for g in self.generator_of.values() if g is not placed}.values())

    @staticmethod
    def _specs(generators: Sequence[GeneratorLike]) -> list[StreamSpecLike]:
        return [spec for generator in generators for spec in generator.streams()]

    def place(
        self, device: str, keep: Sequence[str], start: Sequence[Any], token: int | None
    ) -> dict[str, int]:
        """Give `device` exactly the streams `keep` (running) and `start` (new; the first
        reading due at once); answer with the last seq of the streams that stopped when the
        controller waits for it (`token`), and return them."""
        if self.placed is None:
            assert self.scenario is not None, "a placement before the run's streams"
            generator = self.scenario.generator(self.topics, streams=(), payload=self.spec.payload)
            if not isinstance(generator, PlacingGeneratorLike):
                raise TypeError("this run's scenario takes no placed streams")
            self.placed = generator
        s_now = self.timeline.schedule_time(time.time()) if self.timeline is not None else 0.0
        # Strictly after what was taken: a schedule rebuilt from s_done starts after it.
        stopped = self.placed.place(device, keep, start, max(s_now, self.s_done + 1e-6))
        self.replan = True
        if token is not None:
            self.conn.send(("placed", (token, stopped)))
        return stopped

    def plan(self) -> None:
        """The schedule of the scenario's streams and the placed ones, from where it was."""
        scenario_indices = {e.index for e in self.scenario_entries}
        generator_of = {i: g for i, g in self.generator_of.items() if i in scenario_indices}
        entries = list(self.scenario_entries)
        if self.placed is not None:
            for spec in self.placed.streams():
                generator_of[spec.index] = self.placed
                entries.append(Entry(spec.index, spec.interval, spec.phase))
        self.generator_of = generator_of
        if self.sent_of is not None:
            generators = list({id(g): g for g in generator_of.values()}.values())
            self.slot_of = {s.index: self._slot(s.device) for s in self._specs(generators)}
        self.schedule = Schedule(entries, after=self.s_done)
        self.replan = False

    # -- publishing -------------------------------------------------------------------------

    def backlogged(self) -> bool:
        return self.link.backlog_bytes() > self.settings.max_backlog_bytes

    def run_due(self, now: float) -> bool:
        """Publish what is due; True when more is due at once (batch limit reached)."""
        timeline = self.timeline
        if timeline is None or timeline.paused:
            return False
        s_now = timeline.schedule_time(now)
        # Past its lease the run may no longer be the one writer of its streams (its gateway
        # was frozen or cut off long enough for another to take over): what is due is skipped,
        # as while disconnected, and no seq is used up.
        out_of_lease = self.lease is not None and time.monotonic() > self.lease.value
        if not self.link.connected or self.backlogged() or out_of_lease:
            self.backlog_skipped += self.schedule.skip_to(s_now)
            self.s_done = max(self.s_done, s_now)
            return False
        skip_before = s_now - self.settings.max_lateness * timeline.rate
        qos1 = self.spec.qos == 1
        limit = self._qos1_room(skip_before) if qos1 else self.settings.batch_limit
        if limit == 0:
            return False
        due, skipped = self.schedule.take_due(s_now, skip_before, limit)
        self.late_skipped += skipped
        # Up to where a rebuilt schedule must not replay: s_now, unless the limit cut the pass
        # short.
        done = due[-1][1] if len(due) >= limit else s_now
        self.s_done = max(self.s_done, done)
        generator_of = self.generator_of
        wall = timeline.wall_time
        publish0 = self.link.publish0
        publish1 = self.link.publish1
        add = self.lateness.add
        for start in range(0, len(due), _CHUNK):
            chunk = due[start : start + _CHUNK]
            deadlines = []
            for index, s in chunk:
                t = wall(s)
                deadlines.append(t)
                for topic, payload, retain in generator_of[index].emit(index, t):
                    if qos1:
                        publish1(topic, payload, retain)  # a refusal is counted by the link
                    else:
                        publish0(topic, payload, retain)
            if not self.link.flush():
                break
            if self.sent_of is not None:
                self.count_by_device(chunk)
            published = time.time()
            for t in deadlines:
                add(published - t)
            self.ticks += len(chunk)
            if self.backlogged():
                self.backlog_skipped += len(due) - start - len(chunk)
                break
        # More is due at once only when the batch limit cut the pass; a full QoS 1 window
        # waits for PUBACKs in select().
        return len(due) >= self.settings.batch_limit

    def _qos1_room(self, skip_before: float) -> int:
        """Ticks that fit the QoS 1 window now. Due ticks wait for room (PUBACKs wake the
        loop) rather than being taken and refused; those that waited too long are skipped for
        the backlog."""
        room = self.link.window_free()
        if room == 0:
            self.backlog_skipped += self.schedule.skip_to(skip_before)
            self.s_done = max(self.s_done, skip_before)
            return 0
        return min(self.settings.batch_limit, room)

    def _slot(self, device: str) -> int:
        slot = self.device_slot.get(device)
        if slot is None:
            assert self.sent_of is not None
            slot = self.device_slot[device] = len(self.device_names)
            self.device_names.append(device)
            self.sent_of.append(0)
        return slot

    def count_by_device(self, chunk: Sequence[tuple[int, float]]) -> None:
        """Count a flushed chunk's readings per device. A tick is one reading here: the
        per-device count serves the original simulator's fleets, which have no faults that
        add labels or copies."""
        sent_of = self.sent_of
        assert sent_of is not None
        slot_of = self.slot_of
        for index, _ in chunk:
            sent_of[slot_of[index]] += 1

    def device_counts(self) -> DeviceCounts:
        assert self.sent_of is not None
        first = self.names_reported
        self.names_reported = len(self.device_names)
        return DeviceCounts(first, self.device_names[first:], self.sent_of.tobytes())

    # -- the loop ---------------------------------------------------------------------------

    def stats(self, now: float, *, final: bool = False) -> WorkerStats:
        timeline = self.timeline
        running = timeline is not None and not timeline.paused
        if self.stopping:
            state = "stopped"
        elif not self.link.connected:
            state = "connecting"
        elif timeline is None:
            state = "ready"
        else:
            state = "running" if running else "paused"
        target = self.schedule.per_second * timeline.rate if timeline and running else 0.0
        by_device = None
        if self.sent_of is not None and (self.reports % _DEVICE_COUNTS_EVERY == 0 or final):
            by_device = self.device_counts()
        self.reports += 1
        return WorkerStats(
            worker=self.spec.worker,
            pid=os.getpid(),
            t=now,
            state=state,
            connected=self.link.connected,
            streams=self.schedule.streams,
            target_per_s=target,
            ticks=self.ticks,
            sent=self.link.sent,
            acked=self.link.acked,
            rejected=self.link.rejected,
            lost=self.link.lost,
            late_skipped=self.late_skipped,
            backlog_skipped=self.backlog_skipped,
            refused=self.link.refused,
            backlog_bytes=self.link.backlog_bytes(),
            qos1_queued=self.link.qos1_queued(),
            lateness=list(self.lateness.counts),
            lateness_sum=self.lateness.total,
            rss_bytes=_rss_bytes(),
            cpu_seconds=time.process_time(),
            error=self.error,
            sent_by_device=by_device,
        )

    def maintain(self, mono: float) -> None:
        """Connect, reconnect with jittered exponential backoff, and keep the session alive."""
        link = self.link
        if link.fileno() is None:
            if mono >= self.next_connect:
                # Whatever happens next, the attempt after it waits: a broker that accepts and
                # drops at once must not make this loop spin.
                self.lost(mono)
                try:
                    link.connect()
                except OSError as exc:
                    self.error = (
                        f"cannot connect to {link.endpoint.host}:{link.endpoint.port}: {exc}"
                    )
            return
        if mono >= self.next_tick:
            self.next_tick = mono + 0.5
            if not link.tick():
                self.lost(mono)
            elif link.connected:
                self.error = None
                self.backoff = 0.1  # a session that reached CONNACK resets the backoff

    def lost(self, mono: float) -> None:
        if self.link.error is not None:
            self.error = self.link.error  # e.g. a refused CONNACK, with the broker's reason
        self.next_connect = mono + random.uniform(0, self.backoff)
        self.backoff = min(self.backoff * 2, 5.0)

    def wait(self, more_due: bool, woke: float) -> None:
        timeout = _IDLE_WAIT
        if more_due:
            timeout = 0.0
        elif self.timeline is not None and not self.timeline.paused:
            s_next = self.schedule.next_time()
            if s_next is not None:
                now = time.time()
                until_due = self.timeline.wall_time(s_next) - now
                until_tick = woke + self.settings.tick - now
                timeout = min(timeout, max(until_due, until_tick, 0.0))
        readers: list[Any] = [self.conn]
        writers: list[int] = []
        fd = self.link.fileno()
        if fd is not None:
            readers.append(fd)
            if self.link.backlog_bytes():
                writers.append(fd)
        readable, writable, _ = select.select(readers, writers, [], timeout)
        if fd is not None and fd in readable and not self.link.on_readable():
            self.lost(time.monotonic())
        if fd is not None and fd in writable:
            self.link.flush()

    def run(self) -> None:
        try:
            while not self.stopping:
                while self.conn.poll():
                    self.handle(self.conn.recv())
                    if self.stopping:
                        break
                if self.replan:  # once for every placement read above, not once each
                    self.plan()
                mono = time.monotonic()
                self.maintain(mono)
                now = time.time()
                more = self.run_due(now)
                if self.link.connected != self.reported_connected:
                    # The controller waits for this to start the clock: report at once.
                    self.reported_connected = self.link.connected
                    self.next_stats = 0.0
                if mono >= self.next_stats:
                    self.next_stats = mono + self.settings.stats_interval
                    self.conn.send(("stats", self.stats(now)))
                self.wait(more, now)
        except (EOFError, BrokenPipeError, KeyboardInterrupt):
            return  # the controller is gone: nothing left to report to
        except Exception as exc:
            # A generator or scenario bug: tell the controller why before the process ends.
            self.error = f"worker {self.spec.worker} failed: {type(exc).__name__}: {exc}"
            self.stopping = True
        finally:
            self.link.close()
        self.conn.send(("stats", self.stats(time.time(), final=True)))


def worker_main(conn: Connection, spec: WorkerSpec, lease: Lease | None = None) -> None:
    """Entry point of a worker process (multiprocessing target) or thread."""
    try:
        Worker(conn, spec, lease).run()
    finally:
        # The controller learns the worker is gone from the end of its pipe; a thread's end
        # does not close by itself as a process's does when it exits.
        conn.close()
