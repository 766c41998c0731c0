"""Where the engine's inputs come from in a gateway: the broker endpoint from the `[mqtt]`
section, and scenarios from the `gateway.scenario` package, looked up when first needed."""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Any, Protocol

from gateway.engine.controller import EngineError, EngineInputError
from gateway.engine.interface import ScenarioLike
from gateway.engine.link import Endpoint


class EngineUnavailableError(EngineError):
    """What the engine needs is not installed (the scenario package)."""


class ScenarioSource(Protocol):
    def load(self, path: Path) -> ScenarioLike: ...

    def default(self, devices: int, interval: float, seed: int) -> ScenarioLike: ...


class PackageScenarios:
    """Scenarios from `gateway.scenario` (briefs/interface.md); its ScenarioError, which names
    the file and the key, becomes an EngineInputError."""

    def __init__(self, module: str = "gateway.scenario") -> None:
        self._name = module
        self._module: Any = None

    def _package(self) -> Any:
        if self._module is None:
            try:
                self._module = importlib.import_module(self._name)
            except ImportError as exc:
                raise EngineUnavailableError(
                    f"scenarios need the {self._name} package, which is not installed"
                ) from exc
        return self._module

    def load(self, path: Path) -> ScenarioLike:
        package = self._package()
        try:
            return self._anchored(package.load_scenario(path))
        except (package.ScenarioError, OSError) as exc:
            raise EngineInputError(str(exc)) from exc

    def default(self, devices: int, interval: float, seed: int) -> ScenarioLike:
        package = self._package()
        try:
            return self._anchored(package.default_scenario(devices, interval, seed))
        except package.ScenarioError as exc:
            raise EngineInputError(str(exc)) from exc

    def _anchored(self, scenario: Any) -> ScenarioLike:
        # Faults given as `after` a duration count from the run's start: the scenario is
        # loaded when the run starts, so now is that start.
        if scenario.origin is None:
            scenario = scenario.with_start(time.time())
        anchored: ScenarioLike = scenario
        return anchored


def endpoint_from_mqtt(mqtt: Any) -> Endpoint:
    """The worker's broker endpoint from an `[mqtt]` section (agent.config.MqttSettings or the
    gateway's), through attribute access only."""
    tls = mqtt.tls
    password = mqtt.password.get_secret_value() if mqtt.password is not None else None
    return Endpoint(
        host=mqtt.host,
        port=mqtt.port,
        protocol=mqtt.protocol,
        keepalive=mqtt.keepalive,
        username=mqtt.username,
        password=password,
        tls=tls is not None,
        ca_file=str(tls.ca_file) if tls is not None and tls.ca_file else None,
        cert_file=str(tls.cert_file) if tls is not None and tls.cert_file else None,
        key_file=str(tls.key_file) if tls is not None and tls.key_file else None,
        tls_insecure=bool(tls.insecure_skip_hostname_check) if tls is not None else False,
        prefix=mqtt.prefix,
        telemetry_template=mqtt.topic,
    )
