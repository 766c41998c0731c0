"""Stand-ins: the simulation engine plays every manifest sensor that no live agent serves.

The twin decides what to play (`GatewayService._reconcile`); this module turns that into
placements on one run of the simulation engine (gateway/engine), a worker thread of the
gateway with its own broker connection, beside any simulated fleet the engine runs. A stand-in
publishes on its agent's topic, with its agent's payload shape and numbering:

- the same quantities, units and resolution as the real driver at its options, taken from the
  driver's own metadata (`hardware.registry.reading_quantities`), not from running the driver
  on an emulated chip per reading;
- the signals learned from what the agent reported (gateway.learning), or the quantities'
  default signals when nothing was learned;
- `seq` continuing after the agent's last one, and at hand-back the stand-in's last one read
  back from the engine before the twin tells the agent where to continue.

The twin learns the stand-ins' readings as it learns the agents': from the broker.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import msgspec

from edgetwin.agent.contract import FlatReading, SensorSettings
from edgetwin.gateway.engine.controller import EngineController, EngineStateError, EngineStats
from edgetwin.gateway.engine.interface import PayloadKind
from edgetwin.gateway.scenario import PlacedFleet, PlacedStream
from edgetwin.gateway.scenario.model import ResponseSpec
from edgetwin.hardware import HardwareError
from edgetwin.hardware.quantities import default_signal
from edgetwin.hardware.registry import driver_info, reading_quantities
from edgetwin.hardware.signals import (
    LightRandom,
    SignalModel,
    derive_seed,
    response_parts,
    with_term,
)

log = logging.getLogger(__name__)

SignalSource = Callable[[str, str, SensorSettings, int], Mapping[str, SignalModel] | None]
"""(device, sensor, settings, seed) -> the signals a stand-in should play, e.g. the
continuation of what its agent reported (gateway.learning); None for the default signals."""

FLEET = "standins"


def standin_stream(
    device: str,
    sensor: str,
    settings: SensorSettings,
    *,
    seed: int,
    seq: int = 0,
    signals: SignalSource | None = None,
    responses: Sequence[ResponseSpec] = (),
    inputs: Mapping[str, float] | None = None,
) -> PlacedStream:
    """The engine stream standing in for `sensor` of `device`. Raises HardwareError when the
    settings name a driver or options no real sensor could have. `responses`: the device's
    declared answers to its outputs, whose outputs are at `inputs` now."""
    info = driver_info(settings.driver)
    quantities = reading_quantities(settings.driver, settings.options)
    stream_seed = derive_seed("simulation", seed, device, sensor)
    learned = signals(device, sensor, settings, stream_seed) if signals is not None else None
    models: list[SignalModel] = []
    for quantity in quantities:
        model = learned.get(quantity.name) if learned is not None else None
        if model is None:
            model = default_signal(
                info.default_signal_kind(quantity.name),
                derive_seed(stream_seed, quantity.name),
                rng=LightRandom,
            )
        for response in responses:
            if response.sensor == sensor and response.quantity == quantity.name:
                model = with_term(model, response.model(inputs))
        models.append(model)
    return PlacedStream(
        sensor=sensor,
        interval=settings.interval,
        quantities=quantities,
        signals=tuple(models),
        seq=seq,
    )


class StandIns:
    """What the engine plays for the twin, and the last `seq` of every stream it played."""

    def __init__(
        self,
        engine: EngineController,
        *,
        seed: int = 0,
        qos: int = 0,
        payload: PayloadKind = "edgetwin",
        signals: SignalSource | None = None,
    ) -> None:
        self.engine = engine
        self._seed = seed
        self._qos = qos
        self._payload = payload
        self._signals = signals
        self._lock = threading.Lock()
        self._playing: dict[str, dict[str, SensorSettings]] = {}
        # Survives a stream's stop, so one resumed continues where it left off, or after the
        # agent's last number if that is higher.
        self._seq: dict[tuple[str, str], int] = {}
        # Before `start`: what the engine is to play once it runs, by device and sensor.
        self._pending: dict[str, dict[str, PlacedStream]] | None = {}
        # Closing the loop (gateway/simulated.py): how each device's signals answer its
        # outputs, and the outputs' values now, which a stream that starts begins with.
        self._responses: dict[str, tuple[ResponseSpec, ...]] = {}
        self._inputs: dict[str, dict[str, float]] = {}

    def start(self, rate: float = 0.0) -> None:
        """Start the engine run the stand-ins are placed on. `rate`: readings a second if
        every sensor of the manifest were simulated at once; it chooses where the run goes
        (`EngineSettings.choose_workers`): a thread of the gateway for a manifest of a few
        thousand readings a second, worker processes beyond, so that a large manifest whose
        agents all vanish never pins the API's core."""
        # From the rate alone, whatever `[engine] workers` sets for the API's fleets.
        workers = msgspec.structs.replace(self.engine.settings, workers="auto").choose_workers(rate)
        with self._lock:
            self.engine.start(
                PlacedFleet(),
                workers=workers,
                qos=self._qos,
                payload=self._payload,
                fleet=FLEET,
                count_by_device=True,
                placed=True,
            )
            pending, self._pending = self._pending or {}, None
            for device, streams in pending.items():
                self.engine.place(device, (), list(streams.values()))

    def stop(self) -> None:
        self.engine.close()
        with self._lock:
            self._playing.clear()
            self._pending = {}

    # -- what plays -----------------------------------------------------------------------------

    def active_devices(self) -> set[str]:
        with self._lock:
            return set(self._playing)

    def stream_count(self) -> int:
        """Streams played now, of every device."""
        with self._lock:
            return sum(len(streams) for streams in self._playing.values())

    def is_active(self, device: str) -> bool:
        with self._lock:
            return device in self._playing

    def simulated_streams(self, device: str) -> dict[str, int]:
        """The streams of `device` played now, with the last seq known here (the number they
        started after, or a later one read back)."""
        with self._lock:
            return {
                name: self._seq.get((device, name), 0) for name in self._playing.get(device, {})
            }

    def last_seq(self, device: str, sensor: str) -> int:
        with self._lock:
            return self._seq.get((device, sensor), 0)

    def flat_sensor(self, device: str) -> str | None:
        """With flat payloads, the one stream of `device` on the wire: its first played
        sensor measuring temperature and humidity (the engine chooses it the same way)."""
        with self._lock:
            for name, settings in self._playing.get(device, {}).items():
                try:
                    names = {q.name for q in reading_quantities(settings.driver, settings.options)}
                except HardwareError:
                    continue
                if names >= FlatReading.QUANTITIES:
                    return name
        return None

    def sent_by_device(self) -> dict[str, int]:
        return self.engine.sent_by_device()

    def stats(self) -> EngineStats:
        return self.engine.stats()

    @property
    def published(self) -> int:
        """Stand-in readings handed to the socket, as the engine last reported."""
        return self.engine.stats().sent

    # -- steering -------------------------------------------------------------------------------

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Serve many devices at once (a fleet failing over): see `EngineController.batch`."""
        with self.engine.batch():
            yield

    def serve(
        self,
        device: str,
        sensors: Mapping[str, SensorSettings],
        seq_floor: Mapping[str, int] | None = None,
        *,
        responses: Sequence[ResponseSpec] = (),
    ) -> bool:
        """Play exactly `sensors` of `device` from now on; returns whether anything changed.
        `responses`: how its signals answer its outputs (the values `drive` gave last).

        A stream that starts continues after max(its own last seq, `seq_floor`), its first
        reading due at once. A stream whose settings changed restarts with them. Streams not
        named stop, and their last seq is read back from the engine before this returns.
        """
        floor = seq_floor or {}
        wanted = {name: s for name, s in sensors.items() if s.enabled}
        with self._lock:
            if responses:
                self._responses[device] = tuple(responses)
            else:
                self._responses.pop(device, None)
            current = self._playing.get(device, {})
            if current == wanted:
                return False
            keep = [n for n, s in current.items() if wanted.get(n) == s]
            stopping = [n for n in current if n not in keep]
            start, playing = self._streams_to_start(device, wanted, keep, floor)
            if playing == current:
                return False
            if self._pending is not None:
                self._pend(device, keep, start)
                stopped: dict[str, int] | None = {}
            else:
                stopped = self.engine.place(device, keep, start, wait=bool(stopping))
            if stopped is None and stopping:
                log.warning(
                    "simulation did not report where it stopped; the twin's count stands",
                    extra={"device": device, "sensors": sorted(stopping)},
                )
            for name, seq in (stopped or {}).items():
                key = (device, name)
                self._seq[key] = max(self._seq.get(key, 0), seq)
            if playing:
                self._playing[device] = playing
            else:
                self._playing.pop(device, None)
        if start:
            log.info(
                "simulation started", extra={"device": device, "sensors": [s.sensor for s in start]}
            )
        if stopping:
            log.info("simulation stopped", extra={"device": device, "sensors": sorted(stopping)})
        return True

    def drive(self, device: str, inputs: Mapping[str, float]) -> None:
        """`device`'s outputs took `inputs` (output name -> value) now: its played signals
        that answer them follow, and a stream started later begins with them."""
        with self._lock:
            self._inputs.setdefault(device, {}).update(inputs)
            if device not in self._playing or device not in self._responses:
                return
            if self._pending is not None:
                now = time.time()
                for stream in self._pending.get(device, {}).values():
                    for signal in stream.signals:
                        for part in response_parts(signal):
                            part.drive(inputs, now)
                return
            # Stopping: nothing plays the device any more.
            with contextlib.suppress(EngineStateError):
                self.engine.drive(device, inputs)

    def forget_outputs(self, device: str) -> None:
        """`device` left the manifest: its outputs' values go with it."""
        with self._lock:
            self._inputs.pop(device, None)
            self._responses.pop(device, None)

    def stop_devices(self, devices: Iterable[str]) -> None:
        """Stop every stream of `devices` at once, their last seqs read back from the engine in
        one round trip per worker (`EngineController.stop_devices`): for many devices leaving
        together, where `serve(device, {})` would wait on the engine once per device."""
        with self._lock:
            playing = [device for device in devices if device in self._playing]
            if not playing:
                return
            if self._pending is not None:
                stopped: dict[str, dict[str, int]] = {}
                for device in playing:
                    self._pending.pop(device, None)
            else:
                stopped = self.engine.stop_devices(playing)
            for device in playing:
                for name, seq in stopped.get(device, {}).items():
                    key = (device, name)
                    self._seq[key] = max(self._seq.get(key, 0), seq)
                del self._playing[device]
        unanswered = [device for device in playing if device not in stopped]
        if unanswered and self._pending is None:
            log.warning(
                "simulation did not report where it stopped; the twin's count stands",
                extra={"devices": len(unanswered), "first": unanswered[:3]},
            )
        log.info("simulation stopped", extra={"devices": len(playing)})

    def _streams_to_start(
        self,
        device: str,
        wanted: Mapping[str, SensorSettings],
        keep: list[str],
        floor: Mapping[str, int],
    ) -> tuple[list[PlacedStream], dict[str, SensorSettings]]:
        """The new streams of `device` (lock held), and everything it will play with them."""
        start: list[PlacedStream] = []
        playing: dict[str, SensorSettings] = {}
        for name, settings in wanted.items():
            if name in keep:
                playing[name] = settings
                continue
            key = (device, name)
            seq = max(self._seq.get(key, 0), floor.get(name, 0))
            try:
                stream = standin_stream(
                    device,
                    name,
                    settings,
                    seed=self._seed,
                    seq=seq,
                    signals=self._signals,
                    responses=self._responses.get(device, ()),
                    inputs=self._inputs.get(device),
                )
            except HardwareError as exc:
                log.error(
                    "cannot simulate sensor",
                    extra={"device": device, "sensor": name, "error": str(exc)},
                )
                continue
            self._seq[key] = seq
            start.append(stream)
            playing[name] = settings
        return start, playing

    def _pend(self, device: str, keep: list[str], start: list[PlacedStream]) -> None:
        assert self._pending is not None
        before = self._pending.get(device, {})
        streams = {name: before[name] for name in keep if name in before}
        streams.update({s.sensor: s for s in start})
        if streams:
            self._pending[device] = streams
        else:
            self._pending.pop(device, None)
