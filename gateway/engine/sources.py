"""Where the engine's inputs come from in a gateway: the broker endpoint from the `[mqtt]`
section, and scenarios from `gateway.scenario`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Protocol

from edgetwin.gateway.engine.controller import EngineInputError
from edgetwin.gateway.engine.interface import ScenarioLike
from edgetwin.gateway.engine.link import Endpoint
from edgetwin.gateway.scenario import Scenario, ScenarioError, default_scenario, load_scenario


class ScenarioSource(Protocol):
    def load(self, name: str) -> ScenarioLike: ...

    def default(self, devices: int, interval: float, seed: int) -> ScenarioLike: ...


class Scenarios:
    """Scenarios for runs started through the API: the default fleet, or a file from the
    gateway's scenarios directory (`[engine] scenarios_dir`), named relative to it. The API
    must not become a way to read any file on the gateway's machine, so a name that leaves the
    directory is refused, and without a directory no file is read at all."""

    def __init__(self, directory: Path | None) -> None:
        self._directory = directory.resolve() if directory is not None else None

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

    @staticmethod
    def _anchored(scenario: Scenario) -> Scenario:
        # Faults given as `after` a duration count from the run's start: the scenario is
        # loaded when the run starts, so now is that start.
        return scenario if scenario.origin is not None else scenario.with_start(time.time())


def endpoint_from_mqtt(mqtt: Any, engine: Any = None) -> Endpoint:
    """The worker's broker endpoint from an `[mqtt]` section (agent.config.MqttSettings or the
    gateway's), through attribute access only; with the identity of `engine` (the `[engine]`
    section) when it names one, so that the broker can tell simulated publishes from the
    gateway's own."""
    tls = mqtt.tls
    identity = engine if engine is not None and engine.username is not None else mqtt
    password = identity.password.get_secret_value() if identity.password is not None else None
    return Endpoint(
        host=mqtt.host,
        port=mqtt.port,
        protocol=mqtt.protocol,
        keepalive=mqtt.keepalive,
        username=identity.username,
        password=password,
        tls=tls is not None,
        ca_file=str(tls.ca_file) if tls is not None and tls.ca_file else None,
        cert_file=str(tls.cert_file) if tls is not None and tls.cert_file else None,
        key_file=str(tls.key_file) if tls is not None and tls.key_file else None,
        tls_insecure=bool(tls.insecure_skip_hostname_check) if tls is not None else False,
        prefix=mqtt.prefix,
        telemetry_template=mqtt.topic,
    )
