"""Plays every device that has no live agent, on the agent's own topics and payload shape.

One thread and one deadline heap serve the whole simulated fleet: no thread or task per
device. A simulated sensor is the real driver reading an emulated chip, so its payload has the
same quantities, units and resolution as the real device's; only `source` differs.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from opentelemetry.trace import Tracer

from agent.contract import SensorSettings, Source, Telemetry, Topics, Value
from agent.sensors import open_configured
from hardware import EmulatedBackend, HardwareError, Sensor
from hardware.sensor import Clock
from hardware.signals import derive_seed

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], None]

TRACE_SAMPLE_SECONDS = 10.0


@dataclass
class _Stream:
    device: str
    name: str
    interval: float
    sensor: Sensor
    topic: str


@dataclass(order=True, frozen=True)
class _Due:
    deadline: float
    generation: int
    device: str
    stream: str


class SimulationEngine:
    def __init__(
        self,
        publish: Publish,
        topics: Topics,
        *,
        clock: Clock = time.time,
        seed: int = 0,
        on_published: Callable[[int], None] | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self._publish = publish
        self._topics = topics
        self._clock = clock
        self._seed = seed
        self._on_published = on_published
        self._tracer = tracer
        self._cond = threading.Condition()
        self._heap: list[_Due] = []
        self._streams: dict[str, dict[str, _Stream]] = {}
        self._generation: dict[str, int] = {}
        # Sequence numbers survive a device's deactivation, so a stream resumed by simulation
        # continues where the simulation left it instead of starting over at 0.
        self._seq: dict[tuple[str, str], int] = {}
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.published = 0

    def active_devices(self) -> set[str]:
        with self._cond:
            return set(self._streams)

    def is_active(self, device: str) -> bool:
        with self._cond:
            return device in self._streams

    def activate(self, device: str, sensors: Mapping[str, SensorSettings]) -> None:
        """Start playing `device`; its first readings are due at once. Idempotent."""
        with self._cond:
            if device in self._streams:
                return
        backend = EmulatedBackend(
            clock=self._clock, seed=derive_seed("simulation", self._seed, device)
        )
        streams: dict[str, _Stream] = {}
        for name, settings in sensors.items():
            if not settings.enabled:
                continue
            try:
                sensor = open_configured(
                    settings, [backend], seed=derive_seed("simulation", self._seed, device, name)
                )
            except HardwareError as exc:
                log.error(
                    "cannot simulate sensor",
                    extra={"device": device, "sensor": name, "error": str(exc)},
                )
                continue
            streams[name] = _Stream(
                device, name, settings.interval, sensor, self._topics.telemetry(device, name)
            )
        now = self._clock()
        with self._cond:
            if device in self._streams:
                for stream in streams.values():
                    stream.sensor.close()
                return
            generation = self._generation.get(device, 0) + 1
            self._generation[device] = generation
            self._streams[device] = streams
            for name in streams:
                heapq.heappush(self._heap, _Due(now, generation, device, name))
            self._cond.notify()
        log.info("simulation started", extra={"device": device, "sensors": sorted(streams)})

    def deactivate(self, device: str) -> None:
        with self._cond:
            streams = self._streams.pop(device, None)
            if streams is None:
                return
            # Heap entries of the old generation are skipped when they come due.
            self._generation[device] = self._generation.get(device, 0) + 1
        for stream in streams.values():
            stream.sensor.close()
        log.info("simulation stopped", extra={"device": device})

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="simulation", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        for device in list(self.active_devices()):
            self.deactivate(device)

    def _next_due(self) -> _Due | None:
        """Pop the next live entry once it is due; wait on the condition until then."""
        with self._cond:
            while not self._stopping:
                if not self._heap:
                    self._cond.wait()
                    continue
                head = self._heap[0]
                if self._generation.get(head.device) != head.generation:
                    heapq.heappop(self._heap)
                    continue
                delay = head.deadline - self._clock()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                return heapq.heappop(self._heap)
        return None

    def _run(self) -> None:
        next_trace = 0.0
        while (due := self._next_due()) is not None:
            with self._cond:
                stream = self._streams.get(due.device, {}).get(due.stream)
            if stream is None:
                continue
            now = self._clock()
            if self._tracer is not None and now >= next_trace:
                # A span for a sample of publishes, never one per message: per-message spans
                # cut the original simulator's rate at 10,000 devices to about a ninth.
                next_trace = now + TRACE_SAMPLE_SECONDS
                with self._tracer.start_as_current_span(
                    "simulation.publish", attributes={"device": due.device, "sensor": due.stream}
                ):
                    self._emit(stream)
            else:
                self._emit(stream)
            deadline = due.deadline + stream.interval
            if deadline <= now:
                deadline = now + stream.interval
            with self._cond:
                if self._generation.get(due.device) == due.generation:
                    heapq.heappush(
                        self._heap, _Due(deadline, due.generation, due.device, due.stream)
                    )

    def _emit(self, stream: _Stream) -> None:
        try:
            reading = stream.sensor.read()
        except HardwareError as exc:
            log.warning(
                "simulated sensor failed",
                extra={"device": stream.device, "sensor": stream.name, "error": str(exc)},
            )
            return
        key = (stream.device, stream.name)
        seq = self._seq.get(key, 0) + 1
        self._seq[key] = seq
        payload = Telemetry(
            device=stream.device,
            sensor=stream.name,
            ts=reading.timestamp,
            seq=seq,
            source=Source.SIMULATED,
            values={q: Value(value=m.value, unit=m.unit) for q, m in reading.values.items()},
        ).encode()
        try:
            self._publish(stream.topic, payload)
        except Exception:
            log.exception("simulated publish failed", extra={"device": stream.device})
            return
        self.published += 1
        if self._on_published is not None:
            self._on_published(1)
