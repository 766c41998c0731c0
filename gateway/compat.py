"""The original simulator's control model: devices device_000, device_001, ... started, scaled
and stopped as one group through its routes (gateway/routers/compat.py).

The group is a fleet of the simulation engine (gateway/engine), not a set of twins: starting,
scaling and stopping it is one engine command whatever its size, and the twin keeps records
for the manifest's devices only. Its devices publish the default fleet's sensor (`env`:
temperature, humidity, pressure) every `interval` seconds on the configured topic and payload.
Like the original's, they live as long as the gateway that started them.

The group is always the first N ids, device_000 to device_{N-1}: /start restarts it from
scratch, /scale adds or removes at the top, as the original does. The engine runs one fleet at
a time, so the routes refuse (409) while it runs a fleet that /engine/start started, and the
group's ids may not be the manifest's: the twin would then have two writers for one device.

A start returns once the engine has been asked: workers connect and build their streams in
the background (a few seconds at 50,000 devices), so /start answers at once as the original's
did. Commands that follow wait for a start in progress.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from gateway.config import CompatPlan
from gateway.engine import EngineController, EngineError
from gateway.engine.interface import PayloadKind
from gateway.scenario import Scenario, default_scenario

log = logging.getLogger(__name__)

FLEET: Literal["simulator"] = "simulator"
"""The engine's name for a run of this group (EngineStats.fleet)."""

Taken = Callable[[Iterable[str]], list[str]]
"""The ids among these that belong to devices of the manifest."""


class CompatConflictError(Exception):
    """The group cannot run now: an id it needs belongs to a manifest device, or the engine
    runs another fleet."""


@dataclass(frozen=True)
class Scaled:
    status: Literal["scaled up", "scaled down", "unchanged"]
    changed: int
    running: int


class SimulatorControl:
    """Start, scale and stop the group on the engine; thread-safe, one change at a time."""

    def __init__(
        self,
        engine: EngineController,
        plan: CompatPlan,
        *,
        taken: Taken,
        qos: int,
        payload: PayloadKind,
        seed: int = 0,
    ) -> None:
        self._engine = engine
        self._plan = plan
        self._taken = taken
        self._qos = qos
        self._payload = payload
        self._seed = seed
        self._lock = threading.Lock()
        self._count = 0  # the group is device ids 0 .. count-1 while it runs
        self._starting: threading.Thread | None = None

    @property
    def max_devices(self) -> int:
        return self._plan.max_devices

    def running_count(self) -> int:
        """Devices of the group running now (or being started)."""
        with self._lock:
            return self._count if self._ours() else 0

    def running_ids(self) -> list[str]:
        """The group's devices, sorted like the original's."""
        return self._ids(0, self.running_count())

    def owns(self, device_id: str) -> bool:
        """Whether `device_id` is a device of the running group."""
        prefix = self._plan.prefix
        digits = device_id.removeprefix(prefix)
        if digits == device_id or not digits.isdigit():
            return False
        index = int(digits)
        # The id must be spelled as the group spells it: device_7 is not device_007.
        return index < self.running_count() and self._plan.device_id(index) == device_id

    def start_initial(self) -> None:
        """Start the config file's own devices (`[simulator] device_count`), if any."""
        if self._plan.initial:
            self.start(len(self._plan.initial))

    def start(self, count: int) -> int:
        """Stop the group, then start its first min(count, max_devices) devices afresh."""
        target = min(count, self._plan.max_devices)
        with self._lock:
            self._join_start()
            self._check_engine()
            self._check_free(self._ids(0, target))
            if self._ours():
                self._engine.stop()
            self._count = target
            if target:
                self._start_in_background(self._scenario(target))
        log.info("simulator devices started", extra={"count": target})
        return target

    def scale(self, count: int) -> Scaled:
        """Grow or shrink the group to min(count, max_devices) without touching the others."""
        target = min(count, self._plan.max_devices)
        with self._lock:
            self._join_start()
            current = self._count if self._ours() else 0
            if target > current:
                self._check_engine()
                self._check_free(self._ids(current, target))
            if target == current:
                return Scaled("unchanged", 0, current)
            if target == 0:
                self._engine.stop()
            elif current == 0:
                self._start_in_background(self._scenario(target))
            else:
                try:
                    self._engine.resize(target)
                except EngineError as exc:
                    raise CompatConflictError(str(exc)) from exc
            self._count = target
        log.info("simulator devices scaled", extra={"from": current, "to": target})
        if target > current:
            return Scaled("scaled up", target - current, target)
        return Scaled("scaled down", current - target, target)

    def stop(self) -> None:
        with self._lock:
            self._join_start()
            if self._ours():
                self._engine.stop()
            self._count = 0
        log.info("simulator devices stopped")

    # -- helpers (with the lock held) ---------------------------------------------------------

    def _scenario(self, count: int) -> Scenario:
        return default_scenario(
            count, self._plan.interval, self._seed, prefix=self._plan.prefix, width=self._plan.width
        )

    def _ours(self) -> bool:
        starting = self._starting is not None and self._starting.is_alive()
        return starting or self._engine.fleet == FLEET

    def _start_in_background(self, scenario: Scenario) -> None:
        def run() -> None:
            try:
                stats = self._engine.start(
                    scenario,
                    qos=self._qos,
                    payload=self._payload,
                    fleet=FLEET,
                    count_by_device=True,
                )
            except EngineError as exc:
                log.error("simulator devices did not start", extra={"error": str(exc)})
                return
            log.info(
                "simulator devices running",
                extra={"devices": stats.devices, "workers": stats.workers},
            )

        self._starting = threading.Thread(target=run, name="simulator-start", daemon=True)
        self._starting.start()

    def _join_start(self) -> None:
        if self._starting is not None:
            self._starting.join()
            self._starting = None
            if self._engine.fleet != FLEET:
                self._count = 0  # the start failed (logged): nothing runs

    def _check_engine(self) -> None:
        fleet = self._engine.fleet
        if fleet is not None and fleet != FLEET:
            raise CompatConflictError(
                f"the simulation engine runs another fleet ({fleet!r}, started by "
                "POST /engine/start); stop it with POST /engine/stop first"
            )

    def _check_free(self, wanted: list[str]) -> None:
        taken = self._taken(wanted)
        if taken:
            shown = ", ".join(sorted(taken)[:5]) + (" ..." if len(taken) > 5 else "")
            raise CompatConflictError(
                f"{len(taken)} id(s) the simulator devices need belong to manifest devices: "
                f"{shown}; remove them (DELETE /devices/ID) or rename them"
            )

    def _ids(self, start: int, stop: int) -> list[str]:
        return [self._plan.device_id(i) for i in range(start, stop)]
