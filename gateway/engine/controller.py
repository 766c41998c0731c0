"""`EngineController`: the gateway-side owner of the worker processes.

The fleet is split by device (crc32 of the id, so a device keeps its worker across resizes and
all its sensors share one connection) over N processes started with `spawn` (the gateway runs
threads; forking them is unsafe). Commands go down one pipe per worker; a reader thread takes
the workers' periodic `WorkerStats` off the same pipes and `stats()` sums them.

Pause, resume and rate changes carry the wall time at which they take effect, so every worker
re-anchors its schedule to the same instant and the fleet stays one schedule.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import threading
import time
import zlib
from array import array
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from multiprocessing.connection import Connection, wait
from multiprocessing.context import ForkServerContext, SpawnContext
from multiprocessing.process import BaseProcess
from typing import Any, Literal

import msgspec

from edgetwin.gateway.engine.interface import PayloadKind, ScenarioLike
from edgetwin.gateway.engine.link import Endpoint
from edgetwin.gateway.engine.settings import EngineSettings
from edgetwin.gateway.engine.stats import LATENESS_EDGES, WorkerStats, add_counts, quantile
from edgetwin.gateway.engine.worker import Lease, WorkerSpec, worker_main

log = logging.getLogger(__name__)

State = Literal["stopped", "starting", "running", "paused"]
_RATE_WINDOW = 5.0  # seconds of stats history behind a delivered rate
_START_DELAY = 0.05  # seconds between "go" and the schedule's origin: every worker has it by then
MAX_RATE = 1000.0


class EngineError(Exception):
    """Root of the engine's errors."""


class EngineInputError(EngineError, ValueError):
    """A bad argument: a worker count, QoS, payload, rate or size out of range."""


class EngineStateError(EngineError):
    """A command that the engine's current state does not allow (pause while stopped...)."""


class WorkerSummary(msgspec.Struct, frozen=True):
    worker: int
    pid: int
    state: str
    connected: bool
    streams: int
    target_per_s: float
    scheduled_per_s: float
    delivered_per_s: float
    messages_per_s: float
    acked_per_s: float
    ticks: int
    sent: int
    acked: int
    rejected: int
    lost: int
    late_skipped: int
    backlog_skipped: int
    refused: int
    backlog_bytes: int
    qos1_queued: int
    lateness_p50_ms: float | None
    lateness_p99_ms: float | None
    rss_bytes: int
    cpu_seconds: float
    error: str | None


class EngineStats(msgspec.Struct, frozen=True):
    """The fleet's figures: counters are totals since `start`, rates over the last seconds.

    `target_per_s`: ticks (readings) per second the schedule asks for; `scheduled_per_s`: ticks
    the workers served (handed to the generator), whether or not their messages got out;
    `delivered_per_s`: messages whose bytes the socket accepted (QoS 0) or that the broker
    acknowledged (QoS 1); `messages_per_s`: messages handed to the socket, either QoS;
    `acked_per_s`: QoS 1 acknowledgements. `sent` counts messages handed to the socket, not
    queued; `lost`, messages queued or in flight on a connection that dropped (never resent).
    """

    state: State
    fleet: str | None  # who started the run: "api" (/engine), "simulator" (/start...)
    devices: int
    streams: int
    workers: int  # worker processes; 0 while the fleet runs in the gateway's own process
    qos: int
    payload: str
    rate: float
    target_per_s: float
    scheduled_per_s: float
    delivered_per_s: float
    messages_per_s: float
    acked_per_s: float
    ticks: int
    sent: int
    acked: int
    rejected: int
    lost: int
    late_skipped: int
    backlog_skipped: int
    refused: int
    lateness_p50_ms: float | None
    lateness_p99_ms: float | None
    lateness_counts: list[int]
    lateness_sum: float
    rss_bytes: int
    cpu_seconds: float
    per_worker: list[WorkerSummary]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def fleet_rate(scenario: ScenarioLike) -> float:
    """Readings a second the scenario's streams ask for."""
    return sum(1.0 / spec.interval for spec in scenario.iter_streams())


def partition(scenario: ScenarioLike, workers: int) -> list[list[int]]:
    """Stream indices per worker, by a stable hash of the device id."""
    parts: list[list[int]] = [[] for _ in range(workers)]
    for spec in scenario.iter_streams():
        parts[zlib.crc32(spec.device.encode()) % workers].append(spec.index)
    return parts


class _InProcess:
    """A worker run as a thread of this process: the face of a `BaseProcess` the handle uses."""

    def __init__(self, conn: Connection, spec: WorkerSpec, lease: Lease) -> None:
        self._thread = threading.Thread(
            target=worker_main,
            args=(conn, spec, lease),
            name=f"engine-worker-{spec.worker}",
            daemon=True,
        )
        self.pid: int | None = os.getpid()

    def start(self) -> None:
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def terminate(self) -> None:
        pass  # a thread cannot be killed: it ends at its next look at the pipe ("stop")

    @property
    def exitcode(self) -> int | None:
        return None if self._thread.is_alive() else 0


class _WorkerHandle:
    def __init__(self, index: int, process: BaseProcess | _InProcess, conn: Connection) -> None:
        self.index = index
        self.process = process
        self.conn = conn
        self.history: deque[WorkerStats] = deque()
        self.dead = False
        # With count_by_device: the worker's device names, and its last counts in their order.
        self.device_names: list[str] = []
        self.device_counts: array[int] = array("Q")
        # Placements answered, by token: a stream's last seq by sensor, or for many devices at
        # once (`stop_devices`) by device and sensor.
        self.answers: dict[int, Any] = {}

    def by_device(self) -> dict[str, int]:
        return dict(zip(self.device_names, self.device_counts, strict=False))

    @property
    def last(self) -> WorkerStats | None:
        return self.history[-1] if self.history else None

    def record(self, stats: WorkerStats) -> None:
        counts = stats.sent_by_device
        if counts is not None:
            del self.device_names[counts.first :]
            self.device_names.extend(counts.names)
            self.device_counts = array("Q", counts.counts)
        self.history.append(stats)
        while len(self.history) > 2 and stats.t - self.history[0].t > _RATE_WINDOW:
            self.history.popleft()

    def rates(self) -> tuple[float, float, float]:
        """Ticks served, messages handed to the socket and QoS 1 acknowledgements per second
        over the history window."""
        if len(self.history) < 2:
            return 0.0, 0.0, 0.0
        first, last = self.history[0], self.history[-1]
        span = last.t - first.t
        if span <= 0:
            return 0.0, 0.0, 0.0
        return (
            (last.ticks - first.ticks) / span,
            (last.sent - first.sent) / span,
            (last.acked - first.acked) / span,
        )

    def send(self, command: tuple[Any, ...]) -> None:
        if self.dead:
            return
        try:
            self.conn.send(command)
        except (BrokenPipeError, OSError):
            self.dead = True


class EngineController:
    """Start, steer and watch the worker processes of a purely simulated fleet."""

    def __init__(
        self,
        endpoint: Endpoint,
        settings: EngineSettings | None = None,
        *,
        start_method: Literal["spawn", "forkserver"] = "spawn",
    ) -> None:
        self.endpoint = endpoint
        self.settings = settings or EngineSettings()
        self._ctx: SpawnContext | ForkServerContext = (
            multiprocessing.get_context("forkserver")
            if start_method == "forkserver"
            else multiprocessing.get_context("spawn")
        )
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        # Shared with every worker, thread or process: see `hold_after`.
        self._lease: Lease = self._ctx.RawValue("d", math.inf)
        self._workers: list[_WorkerHandle] = []
        self._reader: threading.Thread | None = None
        self._scenario: ScenarioLike | None = None
        self._state: State = "stopped"
        self._rate = 1.0
        self._qos: int = self.settings.qos
        self._payload: PayloadKind = self.settings.payload
        self._fleet = "api"
        self._in_process = False
        self._auto_workers = False
        self._count_by_device = False
        # A placed run's devices and their stream counts; None for a scenario's run.
        self._placed: dict[str, int] | None = None
        self._token = 0
        self._batch: dict[int, list[tuple[str, list[str], list[Any]]]] | None = None
        # Totals of runs already stopped, so the Prometheus counters never go down.
        self.retired = WorkerTotals()
        self._last_handles: list[_WorkerHandle] = []

    # -- commands ---------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def scenario(self) -> ScenarioLike | None:
        return self._scenario

    @property
    def fleet(self) -> str | None:
        """Who started the current run (see `start`); None while stopped."""
        return None if self._state == "stopped" else self._fleet

    def sent_by_device(self) -> dict[str, int]:
        """Messages per device since the controller was made, for runs started with
        `count_by_device` (reported by the workers every few stats intervals and at stop)."""
        with self._lock:
            totals = dict(self.retired.by_device)
            for handle in self._workers:
                for device, count in handle.by_device().items():
                    totals[device] = totals.get(device, 0) + count
        return totals

    def start(
        self,
        scenario: ScenarioLike,
        workers: int | None = None,
        qos: int | None = None,
        payload: PayloadKind | None = None,
        *,
        fleet: str = "api",
        count_by_device: bool = False,
        placed: bool = False,
        rate: float = 1.0,
    ) -> EngineStats:
        """Start workers for `scenario` and return once every one is connected and running.

        `workers` processes, or 0 for one worker thread in this process; None chooses from
        the fleet's rate (`EngineSettings.choose_workers`). `fleet` names who started the run
        (the API's /engine routes, the original simulator's group...). `count_by_device`
        keeps a count of messages per device (`sent_by_device`), which the original
        simulator's per-device metric needs and nothing else pays for. `rate` is the
        schedule's speed from its first tick, as `set_rate` would set it later (a replay's
        speed; not capped by MAX_RATE, which bounds the API's changes).

        `placed`: a run whose streams are given one device at a time (`place`) by its owner,
        such as the twin's stand-ins for missing devices; `scenario` only makes their
        generator (gateway.scenario.PlacedFleet). It returns at once: ticks falling due
        while the workers connect are skipped and counted, as after any connection loss.
        """
        if not (rate > 0 and math.isfinite(rate)):
            raise EngineInputError(f"rate must be a positive number, not {rate}")
        auto = workers is None
        if workers is None:
            workers = self.settings.choose_workers(fleet_rate(scenario) * rate)
        qos = self.settings.qos if qos is None else qos
        payload = self.settings.payload if payload is None else payload
        self._check_start(scenario, workers, qos, payload, placed)
        devices = scenario.device_count()
        with self._lock:
            if self._state != "stopped":
                raise EngineStateError(f"the engine is {self._state}: stop it first")
            # Waiting for the workers below releases the lock: this state keeps a second start
            # (or a stop) from slipping in meanwhile.
            self._state = "starting"
            self._last_handles = []
            self._in_process = workers == 0
            parts = partition(scenario, max(workers, 1))
            handles = [
                self._spawn(index, qos, payload, count_by_device) for index in range(len(parts))
            ]
            self._workers = handles
            self._scenario, self._qos, self._payload, self._rate = scenario, qos, payload, 1.0
            self._fleet = fleet
            self._auto_workers, self._count_by_device = auto, count_by_device
            self._placed = {} if placed else None
            self._reader = threading.Thread(
                target=self._read, args=(handles,), name="engine-stats", daemon=True
            )
            self._reader.start()
            for handle, indices in zip(handles, parts, strict=True):
                handle.send(("streams", scenario, indices))
            if placed:
                return self._go(handles, devices, workers, qos, payload, rate=rate)
            deadline = time.monotonic() + self.settings.start_timeout
            ready = self._cond.wait_for(
                lambda: all(
                    h.dead or (h.last is not None and h.last.state == "ready") for h in handles
                ),
                timeout=max(deadline - time.monotonic(), 0),
            )
            if not ready or any(h.dead for h in handles):
                errors = sorted({h.last.error for h in handles if h.last and h.last.error})
                self._shutdown()
                why = "; ".join(errors) or "no connection to the broker"
                raise EngineError(
                    f"engine workers not ready within {self.settings.start_timeout} s: {why}"
                )
            return self._go(handles, devices, workers, qos, payload, rate=rate)

    def _go(
        self,
        handles: Sequence[_WorkerHandle],
        devices: int,
        workers: int,
        qos: int,
        payload: PayloadKind,
        *,
        rate: float = 1.0,
    ) -> EngineStats:
        """Start the schedule's clock on every worker (lock held)."""
        origin = time.time() + _START_DELAY
        for handle in handles:
            handle.send(("go", origin, rate))
        self._rate = rate
        self._state = "running"
        self._cond.notify_all()
        log.info(
            "engine started",
            extra={
                "fleet": self._fleet,
                "devices": devices,
                "workers": workers,
                "qos": qos,
                "payload": payload,
            },
        )
        return self.stats()

    def place(
        self,
        device: str,
        keep: Sequence[str] = (),
        start: Sequence[Any] = (),
        *,
        wait: bool = False,
    ) -> dict[str, int] | None:
        """Give `device` of a placed run exactly the streams `keep` (running already) and
        `start` (new ones, gateway.scenario.PlacedStream; the first reading due at once); its
        other streams stop. With `wait`, return the last seq of each stream that stopped, as
        its worker saw it (None if the worker did not answer within a second)."""
        with self._lock:
            # No workers: a stop is under way (`_shutdown` lets go of the lock while it waits).
            if self._placed is None or self._state in ("stopped", "starting") or not self._workers:
                raise EngineStateError(f"no placed run: the engine is {self._state}")
            handle = self._workers[zlib.crc32(device.encode()) % len(self._workers)]
            if keep or start:
                self._placed[device] = len(keep) + len(start)
            else:
                self._placed.pop(device, None)
            placement = (device, list(keep), list(start))
            if self._batch is not None and not wait:
                self._batch.setdefault(handle.index, []).append(placement)
                return None
            self._flush_batch()
            token = None
            if wait:
                self._token += 1
                token = self._token
            handle.send(("place", *placement, token))
            if token is None:
                return None
            self._cond.wait_for(lambda: token in handle.answers or handle.dead, timeout=1.0)
            answer: dict[str, int] | None = handle.answers.pop(token, None)
            return answer

    def drive(self, device: str, inputs: Mapping[str, float]) -> None:
        """`device`'s outputs took `inputs` (output name -> value) now: the parts of its placed
        streams' signals that answer outputs follow (gateway/simulated.py closes the loop)."""
        with self._lock:
            if self._placed is None or self._state in ("stopped", "starting") or not self._workers:
                raise EngineStateError(f"no placed run: the engine is {self._state}")
            self._flush_batch()
            handle = self._workers[zlib.crc32(device.encode()) % len(self._workers)]
            handle.send(("drive", device, dict(inputs)))

    def hold_after(self, deadline: float) -> None:
        """Publish nothing after the monotonic time `deadline` until it is moved on (math.inf:
        no limit, the default). A gateway among others keeps it just inside the time the
        broker would keep its connection alive since it last acknowledged one of its
        messages: frozen (SIGSTOP, a stalled VM) or cut off, its stand-ins stop by themselves
        before another gateway can have taken their streams over, even before it notices."""
        self._lease.value = deadline

    @property
    def held_after(self) -> float:
        """The deadline `hold_after` set last."""
        return float(self._lease.value)

    def stop_devices(self, devices: Sequence[str]) -> dict[str, dict[str, int]]:
        """Stop every stream of `devices` of a placed run at once: one message and one answer
        per worker, not a round trip per device (a gateway handing a third of its devices to
        another that joins). Returns the last seq of each stopped stream by device, as the
        workers saw them; the devices of a worker that did not answer within a second are
        missing."""
        with self._lock:
            if self._placed is None or self._state in ("stopped", "starting") or not self._workers:
                raise EngineStateError(f"no placed run: the engine is {self._state}")
            self._flush_batch()
            by_worker: dict[int, list[tuple[str, list[str], list[Any]]]] = {}
            for device in devices:
                handle = self._workers[zlib.crc32(device.encode()) % len(self._workers)]
                self._placed.pop(device, None)
                by_worker.setdefault(handle.index, []).append((device, [], []))
            by_index = {h.index: h for h in self._workers}
            tokens: dict[int, int] = {}
            for index, placements in by_worker.items():
                self._token += 1
                tokens[index] = self._token
                by_index[index].send(("place_many", placements, self._token))
            stopped: dict[str, dict[str, int]] = {}
            for index, token in tokens.items():
                handle = by_index[index]
                self._cond.wait_for(
                    lambda: token in handle.answers or handle.dead,  # noqa: B023
                    timeout=1.0,
                )
                stopped.update(handle.answers.pop(token, None) or {})
            return stopped

    def _check_start(
        self, scenario: ScenarioLike, workers: int, qos: int, payload: PayloadKind, placed: bool
    ) -> None:
        if not 0 <= workers <= self.settings.max_workers:
            raise EngineInputError(
                f"workers must be 0..{self.settings.max_workers} (0: in the gateway's process), "
                f"not {workers}"
            )
        if qos not in (0, 1):
            raise EngineInputError(f"qos must be 0 or 1, not {qos}")
        if payload not in ("edgetwin", "flat"):
            raise EngineInputError(f"payload must be 'edgetwin' or 'flat', not {payload!r}")
        devices = scenario.device_count()
        if placed:
            if scenario.streams():
                raise EngineInputError("a placed run starts with no streams of its own")
        elif not 1 <= devices <= self.settings.max_devices:
            raise EngineInputError(
                f"a scenario of {devices} devices: the engine runs 1..{self.settings.max_devices}"
            )

    def _spawn(
        self, index: int, qos: int, payload: PayloadKind, count_by_device: bool
    ) -> _WorkerHandle:
        """Worker `index`: a process, or a thread of this one while `_in_process`."""
        parent, child = self._ctx.Pipe()
        spec = WorkerSpec(
            index,
            self.endpoint,
            self.settings,
            qos,
            payload,
            in_process=self._in_process,
            count_by_device=count_by_device,
        )
        process: BaseProcess | _InProcess
        if self._in_process:
            process = _InProcess(child, spec, self._lease)
        else:
            process = self._ctx.Process(
                target=worker_main,
                args=(child, spec, self._lease),
                name=f"edgetwin-engine-{index}",
                daemon=True,
            )
        process.start()
        if not self._in_process:
            child.close()  # a thread's end of the pipe is its own: it closes it
        return _WorkerHandle(index, process, parent)

    def stop(self) -> EngineStats:
        with self._lock:
            if self._state == "starting":
                raise EngineStateError("the engine is starting: stop it once it runs")
            if self._state != "stopped":
                self._shutdown()
                log.info("engine stopped")
        return self.stats()

    def pause(self) -> EngineStats:
        with self._lock:
            self._require("running", "pause")
            self._broadcast(("pause", time.time()))
            self._state = "paused"
        return self.stats()

    def resume(self) -> EngineStats:
        with self._lock:
            self._require("paused", "resume")
            self._broadcast(("resume", time.time()))
            self._state = "running"
        return self.stats()

    def set_rate(self, multiplier: float) -> EngineStats:
        """Every stream publishes `multiplier` times as often (1.0: the scenario's intervals)."""
        if not 0 < multiplier <= MAX_RATE:
            raise EngineInputError(
                f"rate multiplier must be in (0, {MAX_RATE:g}], not {multiplier}"
            )
        with self._lock:
            if self._state in ("stopped", "starting"):
                raise EngineStateError(f"the engine is {self._state}: wait until it runs")
            self._broadcast(("rate", multiplier, time.time()))
            self._rate = multiplier
        return self.stats()

    def resize(self, devices: int) -> EngineStats:
        """Run `devices` devices in all, same mix; existing ids keep going.

        Without a restart, unless the run's worker count was chosen from its rate and the new
        rate wants a different kind of run: a fleet grown past what the gateway's thread
        holds moves to worker processes (and one shrunk below it back into the gateway).
        That restart begins every stream's `seq` again and keeps the rate and pause.
        """
        if not 1 <= devices <= self.settings.max_devices:
            raise EngineInputError(f"devices must be 1..{self.settings.max_devices}, not {devices}")
        with self._lock:
            if self._scenario is None or self._state in ("stopped", "starting"):
                raise EngineStateError(f"the engine is {self._state}: wait until it runs")
            scenario = self._scenario.resized(devices)
            if self._auto_workers:
                wanted = self.settings.choose_workers(fleet_rate(scenario))
                if (wanted == 0) != self._in_process:
                    return self._restart(scenario, wanted)
            parts = partition(scenario, len(self._workers))
            for handle, indices in zip(self._workers, parts, strict=True):
                handle.send(("streams", scenario, indices))
            self._scenario = scenario
        return self.stats()

    def _restart(self, scenario: ScenarioLike, workers: int) -> EngineStats:
        """The same run on `scenario` with `workers` (lock held)."""
        rate, paused = self._rate, self._state == "paused"
        fleet, qos, payload = self._fleet, self._qos, self._payload
        log.info(
            "engine moves the fleet",
            extra={"devices": scenario.device_count(), "workers": workers},
        )
        self._shutdown()
        self.start(
            scenario, workers, qos, payload, fleet=fleet, count_by_device=self._count_by_device
        )
        self._auto_workers = True
        if rate != 1.0:
            self.set_rate(rate)
        if paused:
            self.pause()
        return self.stats()

    def inject(self, fault: Any, touches: Callable[[str, str], bool] | None = None) -> EngineStats:
        """Hand an on-demand fault (gateway.scenario.FaultSpec) to every worker; each applies
        it to the streams it serves, labelled like a scheduled one. With `touches(device,
        sensor)`, a fault that touches no stream of the fleet is refused: it would be
        labelled as if it had happened."""
        with self._lock:
            if self._state not in ("running", "paused"):
                raise EngineStateError(f"the engine is {self._state}: start it first")
            scenario = self._scenario
            if (
                touches is not None
                and scenario is not None
                and not any(touches(s.device, s.sensor) for s in scenario.iter_streams())
            ):
                raise EngineInputError("the fault touches no device or sensor of the fleet")
            self._broadcast(("inject", fault))
        return self.stats()

    def close(self) -> None:
        """Stop for good (gateway shutdown), after a start in progress has finished."""
        with self._lock:
            self._cond.wait_for(
                lambda: self._state != "starting", timeout=self.settings.start_timeout + 10
            )
        self.stop()

    # -- figures ----------------------------------------------------------------------------

    def stats(self) -> EngineStats:
        with self._lock:
            # Once stopped, the figures of the last run stay readable until the next start.
            handles = list(self._workers or self._last_handles)
            scenario = self._scenario
            state = self._state
            in_process = self._in_process
            fleet = None if state == "stopped" else self._fleet
            if state == "stopped" or scenario is None:
                devices = 0
            elif self._placed is not None:
                devices = len(self._placed)
            else:
                devices = scenario.device_count()
        summaries = []
        counts = [0] * (len(LATENESS_EDGES) + 1)
        lateness_sum = 0.0
        for handle in handles:
            last = handle.last
            if last is None:
                continue
            ticks_rate, messages_rate, acked_rate = handle.rates()
            counts = add_counts(counts, last.lateness)
            lateness_sum += last.lateness_sum
            error = last.error
            if handle.dead and not error and state != "stopped":
                error = f"worker {handle.index} exited (code {handle.process.exitcode})"
            summaries.append(
                WorkerSummary(
                    worker=last.worker,
                    pid=last.pid,
                    state="failed" if handle.dead and state != "stopped" else last.state,
                    connected=last.connected,
                    streams=last.streams,
                    target_per_s=round(last.target_per_s, 3),
                    scheduled_per_s=round(ticks_rate, 3),
                    # Never the tick rate: what reached the socket, or the broker at QoS 1.
                    delivered_per_s=round(acked_rate if self._qos == 1 else messages_rate, 3),
                    messages_per_s=round(messages_rate, 3),
                    acked_per_s=round(acked_rate, 3),
                    ticks=last.ticks,
                    sent=last.sent,
                    acked=last.acked,
                    rejected=last.rejected,
                    lost=last.lost,
                    late_skipped=last.late_skipped,
                    backlog_skipped=last.backlog_skipped,
                    refused=last.refused,
                    backlog_bytes=last.backlog_bytes,
                    qos1_queued=last.qos1_queued,
                    lateness_p50_ms=_ms(quantile(last.lateness, 0.5)),
                    lateness_p99_ms=_ms(quantile(last.lateness, 0.99)),
                    rss_bytes=last.rss_bytes,
                    cpu_seconds=round(last.cpu_seconds, 3),
                    error=error,
                )
            )
        return EngineStats(
            state=state,
            devices=devices,
            streams=sum(s.streams for s in summaries),
            workers=0 if in_process else len(handles),
            fleet=fleet,
            qos=self._qos,
            payload=self._payload,
            rate=self._rate,
            target_per_s=round(sum(s.target_per_s for s in summaries), 3),
            scheduled_per_s=round(sum(s.scheduled_per_s for s in summaries), 3),
            delivered_per_s=round(sum(s.delivered_per_s for s in summaries), 3),
            messages_per_s=round(sum(s.messages_per_s for s in summaries), 3),
            acked_per_s=round(sum(s.acked_per_s for s in summaries), 3),
            ticks=sum(s.ticks for s in summaries),
            sent=sum(s.sent for s in summaries),
            acked=sum(s.acked for s in summaries),
            rejected=sum(s.rejected for s in summaries),
            lost=sum(s.lost for s in summaries),
            late_skipped=sum(s.late_skipped for s in summaries),
            backlog_skipped=sum(s.backlog_skipped for s in summaries),
            refused=sum(s.refused for s in summaries),
            lateness_p50_ms=_ms(quantile(counts, 0.5)),
            lateness_p99_ms=_ms(quantile(counts, 0.99)),
            lateness_counts=counts,
            lateness_sum=lateness_sum,
            rss_bytes=sum(s.rss_bytes for s in summaries),
            cpu_seconds=round(sum(s.cpu_seconds for s in summaries), 3),
            per_worker=summaries,
        )

    def worker_pids(self) -> list[int]:
        with self._lock:
            return [h.process.pid for h in self._workers if h.process.pid is not None]

    def refresh(self, timeout: float = 2.0) -> EngineStats:
        """Ask every worker for fresh figures and wait until they arrive (or `timeout`)."""
        with self._lock:
            handles = list(self._workers)
            since = {h.index: h.last.t if h.last else 0.0 for h in handles}
            for handle in handles:
                handle.send(("stats",))
            self._cond.wait_for(
                lambda: all(
                    h.dead or (h.last is not None and h.last.t > since[h.index]) for h in handles
                ),
                timeout,
            )
        return self.stats()

    # -- internals --------------------------------------------------------------------------

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Placements made meanwhile (without `wait`) go to each worker as one message when
        the block ends: a thousand devices failing over at once cost one pipe write and one
        wake-up of the worker, not a thousand. A placement that waits sends the batch first."""
        with self._lock:
            outer = self._batch is not None
            if not outer:
                self._batch = {}
        try:
            yield
        finally:
            if not outer:
                with self._lock:
                    self._flush_batch()
                    self._batch = None

    def _flush_batch(self) -> None:
        """Send the placements batched so far (lock held)."""
        if not self._batch:
            return
        batch, self._batch = self._batch, {}
        by_index = {h.index: h for h in self._workers}
        for index, placements in batch.items():
            handle = by_index.get(index)
            if handle is not None:
                handle.send(("place_many", placements))

    def _require(self, state: State, verb: str) -> None:
        if self._state != state:
            raise EngineStateError(f"cannot {verb}: the engine is {self._state}")

    def _broadcast(self, command: tuple[Any, ...]) -> None:
        for handle in self._workers:
            handle.send(command)

    def _read(self, handles: Sequence[_WorkerHandle]) -> None:
        by_fd = {h.conn.fileno(): h for h in handles}
        while by_fd:
            ready = wait([h.conn for h in by_fd.values()], timeout=1.0)
            for conn in ready:
                assert isinstance(conn, Connection)
                handle = by_fd[conn.fileno()]
                try:
                    kind, payload = conn.recv()
                except (EOFError, OSError):
                    with self._cond:
                        handle.dead = True
                        del by_fd[conn.fileno()]
                        self._cond.notify_all()
                    continue
                if kind == "stats" and isinstance(payload, WorkerStats):
                    with self._cond:
                        handle.record(payload)
                        self._cond.notify_all()
                elif kind == "placed":
                    token, seqs = payload
                    with self._cond:
                        handle.answers[token] = seqs
                        self._cond.notify_all()

    def _shutdown(self) -> None:
        """Stop every worker; called with the lock held (the waits below release it, so the
        reader thread can take the final figures and the end of each pipe)."""
        handles, self._workers = self._workers, []
        for handle in handles:
            handle.send(("stop",))
        self._cond.wait_for(lambda: all(h.dead for h in handles), timeout=5.0)
        for handle in handles:
            if handle.process.is_alive() and not handle.dead:
                log.warning(
                    "engine worker did not stop; terminating it", extra={"worker": handle.index}
                )
                handle.process.terminate()
        self._cond.wait_for(lambda: all(h.dead for h in handles), timeout=3.0)
        for handle in handles:
            handle.process.join(1.0)
        if self._reader is not None:
            self._reader.join(2.0)
            self._reader = None
        for handle in handles:
            handle.conn.close()
            if handle.last is not None:
                self.retired.add(handle.last)
            self.retired.add_by_device(handle.by_device())
            handle.device_names, handle.device_counts = [], array("Q")
        self._state = "stopped"
        self._last_handles = handles
        self._cond.notify_all()


class WorkerTotals:
    """Counters of finished runs, folded into the Prometheus totals."""

    def __init__(self) -> None:
        self.ticks = 0
        self.sent = 0
        self.acked = 0
        self.late_skipped = 0
        self.backlog_skipped = 0
        self.lateness = [0] * (len(LATENESS_EDGES) + 1)
        self.lateness_sum = 0.0
        self.by_device: dict[str, int] = {}

    def add_by_device(self, counts: dict[str, int]) -> None:
        by_device = self.by_device
        for device, count in counts.items():
            by_device[device] = by_device.get(device, 0) + count

    def add(self, stats: WorkerStats) -> None:
        self.ticks += stats.ticks
        self.sent += stats.sent
        self.acked += stats.acked
        self.late_skipped += stats.late_skipped
        self.backlog_skipped += stats.backlog_skipped
        self.lateness = add_counts(self.lateness, stats.lateness)
        self.lateness_sum += stats.lateness_sum
