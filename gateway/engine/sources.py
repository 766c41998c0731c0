"""Where the engine's inputs come from in a gateway: the broker endpoint from the `[mqtt]`
section, and scenarios from `gateway.scenario`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol

from edgetwin.gateway.engine.controller import EngineInputError
from edgetwin.gateway.engine.interface import ScenarioLike
from edgetwin.gateway.scenario import Scenario, ScenarioError, default_scenario, load_scenario
from edgetwin.gateway.scenario.model import Shard


class ScenarioSource(Protocol):
    def load(self, name: str) -> ScenarioLike: ...

    def default(self, devices: int, interval: float, seed: int) -> ScenarioLike: ...


class Scenarios:
    """Scenarios for runs started through the API: the default fleet, or a file from the
    gateway's scenarios directory (`[engine] scenarios_dir`), named relative to it. The API
    must not become a way to read any file on the gateway's machine, so a name that leaves the
    directory is refused, and without a directory no file is read at all."""

    def __init__(self, directory: Path | None, shard: Shard | None = None) -> None:
        self._directory = directory.resolve() if directory is not None else None
        self._shard = shard

    def load(self, name: str) -> ScenarioLike:
        if self._directory is None:
            raise EngineInputError(
                "scenario files are off: set [engine] scenarios_dir to the directory they are in"
            )
        if not name or any(ord(c) < 0x20 or c == "\x7f" for c in name):
            # resolve() raises ValueError on a NUL byte; no scenario file has control characters.
            raise EngineInputError(f"scenario name {name!r} is empty or has control characters")
        path = (self._directory / name).resolve()
        if not path.is_relative_to(self._directory):
            raise EngineInputError(f"scenario {name!r} is outside the scenarios directory")
        try:
            return self._anchored(load_scenario(path))
        except ScenarioError as exc:
            raise EngineInputError(str(exc).replace(str(self._directory) + "/", "")) from exc

    def default(self, devices: int, interval: float, seed: int) -> ScenarioLike:
        try:
            return self._anchored(default_scenario(devices, interval, seed))
        except ScenarioError as exc:
            raise EngineInputError(str(exc)) from exc

    def _anchored(self, scenario: Scenario) -> Scenario:
        # Faults given as `after` a duration count from the run's start: the scenario is
        # loaded when the run starts, so now is that start. A replica plays its shard of it.
        if self._shard is not None:
            scenario = scenario.sharded(self._shard)
        return scenario if scenario.origin is not None else scenario.with_start(time.time())
