"""Plays every device that has no live agent, on the agent's own topics and payload shape.

One thread and one deadline heap serve the whole simulated fleet: no thread or task per
device. A simulated sensor is the real driver reading an emulated chip, so its payload has the
same quantities, units and resolution as the real device's; only `source` differs.

With flat payloads (the original simulator's `{device_id, timestamp, temperature, humidity}`),
each device publishes only its first simulated sensor that measures both temperature and
humidity; its other sensors stay scheduled but silent.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from opentelemetry.trace import Tracer

from agent.contract import FlatReading, SensorSettings, Source, Telemetry, Topics, Value
from agent.sensors import open_configured
from hardware import EmulatedBackend, HardwareError, Sensor
from hardware.sensor import Clock
from hardware.signals import SignalModel, derive_seed

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], None]
SignalSource = Callable[[str, str, SensorSettings, int], Mapping[str, SignalModel] | None]
"""(device, sensor, settings, seed) -> the signals a simulated stream should measure, e.g. the
continuation of what its agent reported (gateway.learning); None for the default signals."""

TRACE_SAMPLE_SECONDS = 10.0


@dataclass
class _Stream:
    device: str
    name: str
    settings: SensorSettings
    sensor: Sensor
    topic: str
    climate: bool  # measures temperature and humidity: a candidate for flat payloads
    # A stream measuring signals of its own gets a chip of its own, closed with it: an emulator
    # left on the device's shared back end by an earlier run would otherwise be reused.
    backend: EmulatedBackend | None = None


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
        on_published: Callable[[Telemetry], None] | None = None,
        tracer: Tracer | None = None,
        payload: Literal["edgetwin", "flat"] = "edgetwin",
        signals: SignalSource | None = None,
    ) -> None:
        self._publish = publish
        self._topics = topics
        self._clock = clock
        self._seed = seed
        self._on_published = on_published
        self._tracer = tracer
        self._signals = signals
        self._cond = threading.Condition()
        self._heap: list[_Due] = []
        self._streams: dict[str, dict[str, _Stream]] = {}
        self._backends: dict[str, EmulatedBackend] = {}
        self._generation: dict[tuple[str, str], int] = {}
        # Sequence numbers survive a stream's pause, so a stream resumed by simulation continues
        # where it left off, or after the agent's last number if that is higher.
        self._seq: dict[tuple[str, str], int] = {}
        self._flat = payload == "flat"
        # With flat payloads: the one stream of each device that goes on the wire.
        self._flat_stream: dict[str, str] = {}
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.published = 0

    def active_devices(self) -> set[str]:
        with self._cond:
            return {device for device, streams in self._streams.items() if streams}

    def is_active(self, device: str) -> bool:
        with self._cond:
            return bool(self._streams.get(device))

    def simulated_streams(self, device: str) -> dict[str, int]:
        """The streams of `device` the simulation plays now, with their last seq."""
        with self._cond:
            return {
                name: self._seq.get((device, name), 0) for name in self._streams.get(device, {})
            }

    def last_seq(self, device: str, sensor: str) -> int:
        with self._cond:
            return self._seq.get((device, sensor), 0)

    def serve(
        self,
        device: str,
        sensors: Mapping[str, SensorSettings],
        seq_floor: Mapping[str, int] | None = None,
    ) -> bool:
        """Play exactly `sensors` of `device` from now on; returns whether anything changed.

        A stream that starts continues after max(its own last seq, `seq_floor`), so a consumer
        sees the agent's numbering carry on; its first reading is due at once. A stream whose
        settings changed restarts with them. Streams not named stop.
        """
        floor = seq_floor or {}
        with self._cond:
            current = self._streams.get(device, {})
            stopping = [
                n for n, st in current.items() if n not in sensors or st.settings != sensors[n]
            ]
            starting = {n: st for n, st in sensors.items() if n not in current or n in stopping}
            if not stopping and not starting:
                return False
            for name in stopping:
                key = (device, name)
                self._generation[key] = self._generation.get(key, 0) + 1
            closed = [current.pop(name) for name in stopping]
        for stream in closed:
            stream.sensor.close()
            if stream.backend is not None:
                stream.backend.close()
        opened = self._open_streams(device, starting)
        now = self._clock()
        with self._cond:
            streams = self._streams.setdefault(device, {})
            for name, stream in opened.items():
                key = (device, name)
                self._seq[key] = max(self._seq.get(key, 0), floor.get(name, 0))
                self._generation[key] = self._generation.get(key, 0) + 1
                streams[name] = stream
                heapq.heappush(self._heap, _Due(now, self._generation[key], device, name))
            flat = next((n for n in sensors if n in streams and streams[n].climate), None)
            if flat is None:
                self._flat_stream.pop(device, None)
            else:
                self._flat_stream[device] = flat
            if not streams:
                del self._streams[device]
                backend = self._backends.pop(device, None)
                if backend is not None:
                    backend.close()
            self._cond.notify()
        if opened:
            log.info("simulation started", extra={"device": device, "sensors": sorted(opened)})
        if stopping:
            log.info("simulation stopped", extra={"device": device, "sensors": sorted(stopping)})
        return True

    def activate(self, device: str, sensors: Mapping[str, SensorSettings]) -> None:
        """Play every sensor of `device`."""
        self.serve(device, sensors)

    def deactivate(self, device: str) -> None:
        self.serve(device, {})

    def _open_streams(
        self, device: str, sensors: Mapping[str, SensorSettings]
    ) -> dict[str, _Stream]:
        with self._cond:
            backend = self._backends.get(device)
            if backend is None:
                backend = EmulatedBackend(
                    clock=self._clock, seed=derive_seed("simulation", self._seed, device)
                )
                self._backends[device] = backend
        opened: dict[str, _Stream] = {}
        for name, settings in sensors.items():
            if not settings.enabled:
                continue
            seed = derive_seed("simulation", self._seed, device, name)
            signals = self._signals(device, name, settings, seed) if self._signals else None
            own = None if signals is None else EmulatedBackend(clock=self._clock, seed=seed)
            try:
                sensor = open_configured(
                    settings, [own if own is not None else backend], seed=seed, signals=signals
                )
            except HardwareError as exc:
                if own is not None:
                    own.close()
                log.error(
                    "cannot simulate sensor",
                    extra={"device": device, "sensor": name, "error": str(exc)},
                )
                continue
            quantities = {q.name for q in sensor.quantities}
            opened[name] = _Stream(
                device,
                name,
                settings,
                sensor,
                self._topics.telemetry(device, name),
                climate=quantities >= FlatReading.QUANTITIES,
                backend=own,
            )
        return opened

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
                if self._generation.get((head.device, head.stream)) != head.generation:
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
                silent = self._flat and self._flat_stream.get(due.device) != due.stream
            if stream is None:
                continue
            now = self._clock()
            if silent:
                pass  # kept on schedule: it takes over should it become the flat stream
            elif self._tracer is not None and now >= next_trace:
                # A span for a sample of publishes, never one per message: per-message spans
                # cut the original simulator's rate at 10,000 devices to about a ninth.
                next_trace = now + TRACE_SAMPLE_SECONDS
                with self._tracer.start_as_current_span(
                    "simulation.publish", attributes={"device": due.device, "sensor": due.stream}
                ):
                    self._emit(stream)
            else:
                self._emit(stream)
            deadline = due.deadline + stream.settings.interval
            if deadline <= now:
                deadline = now + stream.settings.interval
            with self._cond:
                if self._generation.get((due.device, due.stream)) == due.generation:
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
        with self._cond:
            seq = self._seq.get(key, 0) + 1
            self._seq[key] = seq
        telemetry = Telemetry(
            device=stream.device,
            sensor=stream.name,
            ts=reading.timestamp,
            seq=seq,
            source=Source.SIMULATED,
            values={q: Value(value=m.value, unit=m.unit) for q, m in reading.values.items()},
        )
        if self._flat:
            flat = FlatReading.from_telemetry(telemetry)
            if flat is None:  # the emulated chip left a quantity out: nothing to send
                return
            payload = flat.encode()
        else:
            payload = telemetry.encode()
        try:
            self._publish(stream.topic, payload)
        except Exception:
            log.exception("simulated publish failed", extra={"device": stream.device})
            return
        self.published += 1
        if self._on_published is not None:
            self._on_published(telemetry)
