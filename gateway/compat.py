"""The gateway's fleet on the engine, as its `FleetPlan` describes it: started at launch, and,
where the plan says so, the original simulator's control model: devices device_000,
device_001, ... started, scaled and stopped as one group through its routes
(gateway/routers/compat.py).

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

A plan from `[engine] start_devices` or `start_scenario` is an /engine fleet instead: it starts
with the gateway, the /engine routes steer it, and /start and /scale refuse (409).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from edgetwin.gateway.config import FleetPlan, StartDevices, StartScenario
from edgetwin.gateway.engine import EngineController, EngineError
from edgetwin.gateway.engine.interface import ScenarioLike
from edgetwin.gateway.engine.sources import ScenarioSource
from edgetwin.gateway.scenario import Scenario, default_scenario

log = logging.getLogger(__name__)

FLEET: Literal["simulator"] = "simulator"
"""The engine's name for a run of this group (EngineStats.fleet)."""
ENGINE_FLEET: Literal["api"] = "api"
"""The engine's name for a run the /engine routes steer, POST /engine/start's or the plan's."""

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
    """Start the plan's fleet at launch; start, scale and stop the group on the engine where the
    plan gives it to the routes. Thread-safe, one change at a time."""

    def __init__(
        self,
        engine: EngineController,
        plan: FleetPlan,
        *,
        taken: Taken,
        scenarios: ScenarioSource,
    ) -> None:
        self._engine = engine
        self._plan = plan
        self._taken = taken
        self._scenarios = scenarios
        self._lock = threading.Lock()
        self._count = 0  # the group is device ids 0 .. count-1 while it runs
        self._starting: threading.Thread | None = None
        self._starting_fleet: str = FLEET  # the fleet `_starting` starts

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
        prefix = self._plan.ids.prefix
        digits = device_id.removeprefix(prefix)
        if digits == device_id or not digits.isdigit():
            return False
        index = int(digits)
        # The id must be spelled as the group spells it: device_7 is not device_007.
        return index < self.running_count() and self._plan.ids.device_id(index) == device_id

    def start_at_launch(self) -> None:
        """Start the plan's fleet at launch, if any, without waiting for the workers. A failure
        is logged; the routes (or POST /engine/start) can try again."""
        launch = self._plan.launch
        if launch is None:
            return
        if self._plan.routes and isinstance(launch, StartDevices):
            self.start(launch.count)
            return
        with self._lock:
            self._join_start()
            self._start_in_background(lambda: self._launch_scenario(launch), ENGINE_FLEET)

    def start(self, count: int) -> int:
        """Stop the group, then start its first min(count, max_devices) devices afresh."""
        self._check_routes()
        target = min(count, self._plan.max_devices)
        with self._lock:
            self._join_start()
            self._check_engine()
            self._check_free(self._ids(0, target))
            if self._ours():
                self._engine.stop()
            self._count = target
            if target:
                self._start_in_background(lambda: self._scenario(target), FLEET)
        log.info("simulator devices started", extra={"count": target})
        return target

    def scale(self, count: int) -> Scaled:
        """Grow or shrink the group to min(count, max_devices) without touching the others."""
        self._check_routes()
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
                self._start_in_background(lambda: self._scenario(target), FLEET)
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
        """Stop the group if it runs (an /engine fleet runs on: the gateway's shutdown closes
        the engine)."""
        with self._lock:
            self._join_start()
            if self._ours():
                self._engine.stop()
            self._count = 0
        log.info("simulator devices stopped")

    # -- helpers (with the lock held) ---------------------------------------------------------

    def _scenario(self, count: int) -> Scenario:
        plan = self._plan
        return default_scenario(
            count, plan.interval, plan.seed, prefix=plan.ids.prefix, width=plan.ids.width
        )

    def _launch_scenario(self, launch: StartDevices | StartScenario) -> ScenarioLike:
        """The /engine fleet the plan starts with the gateway, as POST /engine/start would."""
        if isinstance(launch, StartScenario):
            return self._scenarios.load(launch.name)
        return self._scenarios.default(launch.count, self._plan.interval, self._plan.seed)

    def _ours(self) -> bool:
        starting = self._starting is not None and self._starting.is_alive()
        return (starting and self._starting_fleet == FLEET) or self._engine.fleet == FLEET

    def _start_in_background(self, scenario: Callable[[], ScenarioLike], fleet: str) -> None:
        plan = self._plan
        what = "simulator devices" if fleet == FLEET else "engine fleet"

        def run() -> None:
            try:
                stats = self._engine.start(
                    scenario(),
                    qos=plan.qos,
                    payload=plan.payload,
                    fleet=fleet,
                    count_by_device=plan.per_device_metric,
                )
            except EngineError as exc:
                log.error(what + " did not start", extra={"error": str(exc)})
                return
            log.info(what + " running", extra={"devices": stats.devices, "workers": stats.workers})

        name = "simulator-start" if fleet == FLEET else "engine-autostart"
        self._starting = threading.Thread(target=run, name=name, daemon=True)
        self._starting_fleet = fleet
        self._starting.start()

    def _join_start(self) -> None:
        if self._starting is not None:
            self._starting.join()
            self._starting = None
            if self._engine.fleet != FLEET:
                self._count = 0  # the start failed (logged): nothing runs

    def _check_routes(self) -> None:
        if not self._plan.routes:
            raise CompatConflictError(
                f"this gateway's fleet is {self._plan.describe()}'s, an /engine fleet: "
                "/start and /scale control the fleet of [simulator] or [simulation] only; "
                "use POST /engine/start, PUT /engine/size and POST /engine/stop"
            )

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
        return self._plan.ids.device_ids(stop, start)
