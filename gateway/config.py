"""The gateway's configuration file.

A file written for the original sensor simulator (`[simulator]`, `[mqtt]`, `[observability]`)
is valid here unchanged: its `device_count` devices become simulated members of the fleet.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Final, Self

from pydantic import Field, SecretStr, StringConstraints, model_validator

from agent.config import ENV_OVERRIDES, MqttSettings, ObservabilitySettings, Section, load
from agent.contract import DeviceId, LabelKey, LabelValue, SensorName, SensorSettings, Site


def default_sensors(interval: float = 5.0) -> dict[str, SensorSettings]:
    return {"env": SensorSettings(driver="bme280", interval=interval, backend="emulated")}


class SimulatorSection(Section):
    """The original simulator's section: a fleet of purely simulated devices."""

    device_count: int = Field(default=0, ge=0, le=1_000_000)
    publish_interval: float = Field(default=2.0, gt=0, le=86_400, description="seconds")
    device_prefix: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,40}$")] = (
        "device_"
    )
    seed: int = 0

    def device_ids(self) -> list[str]:
        width = max(3, len(str(self.device_count - 1)))
        return [f"{self.device_prefix}{i:0{width}d}" for i in range(self.device_count)]


class ServerSection(Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)


class ApiSection(Section):
    token: SecretStr | None = Field(
        default=None, description="bearer token every write must carry; or EDGETWIN_API_TOKEN"
    )
    local_no_auth: bool = Field(
        default=False,
        description="accept writes without a token; allowed only with a loopback server.host",
    )


class ManifestDevice(Section):
    id: DeviceId
    sensors: dict[SensorName, SensorSettings] = Field(default_factory=default_sensors)
    # The twin document carries these on the wire: the contract's limits apply from the start.
    site: Site | None = None
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict)


class PresenceSection(Section):
    # Retained status messages arrive right after subscribing; until then a device's presence is
    # unknown, and simulating it at once would double a live agent's stream for a moment.
    startup_grace: float = Field(default=1.0, ge=0, le=60, description="seconds")


class GatewayConfig(Section):
    simulator: SimulatorSection = SimulatorSection()
    mqtt: MqttSettings = MqttSettings()
    observability: ObservabilitySettings = ObservabilitySettings(service_name="edgetwin-gateway")
    server: ServerSection = ServerSection()
    presence: PresenceSection = PresenceSection()
    api: ApiSection = ApiSection()
    devices: list[ManifestDevice] = Field(default_factory=list)

    @model_validator(mode="after")
    def _no_auth_only_on_loopback(self) -> Self:
        if self.api.local_no_auth and not _is_loopback(self.server.host):
            raise ValueError(
                f"api.local_no_auth needs server.host on loopback, not {self.server.host!r}"
            )
        return self

    @model_validator(mode="after")
    def _ids_unique(self) -> Self:
        seen: set[str] = set()
        for device_id in [d.id for d in self.devices] + self.simulator.device_ids():
            if device_id in seen:
                raise ValueError(f"device id {device_id!r} appears twice in the manifest")
            seen.add(device_id)
        return self

    def manifest(self) -> list[ManifestDevice]:
        """Every device the fleet should have: listed ones, then the simulator's."""
        generated = [
            ManifestDevice(id=device_id, sensors=default_sensors(self.simulator.publish_interval))
            for device_id in self.simulator.device_ids()
        ]
        return [*self.devices, *generated]


# The API address is not in the original simulator's file; containers and tests set it here.
GATEWAY_ENV_OVERRIDES: Final[Mapping[str, tuple[str, str]]] = {
    **ENV_OVERRIDES,
    "EDGETWIN_SERVER_HOST": ("server", "host"),
    "EDGETWIN_SERVER_PORT": ("server", "port"),
    "EDGETWIN_API_TOKEN": ("api", "token"),
}


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_gateway_config(path: Path, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    return load(GatewayConfig, path, environ, GATEWAY_ENV_OVERRIDES)
