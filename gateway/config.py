"""The gateway's configuration file.

Both files of the original sensor simulator are valid here unchanged, as input formats of one
model: the simulator's device group (`CompatPlan`), a fleet of the simulation engine. Its
README's (`[simulator]`, `[mqtt]`, `[observability]`): `device_count` devices run from the
start. Its code's (`[simulation]`, `[server]`, `[mqtt]`, `[observability]`): no device runs at
start; its control routes (/start, /scale, /stop) start them, every `frequency_sec` seconds, up
to `max_devices`. `[engine]` sets how the engine runs any fleet, `[[devices]]` the manifest.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Final, Literal

import msgspec

from agent.config import (
    ENV_OVERRIDES,
    MqttSettings,
    ObservabilitySettings,
    Secret,
    Section,
    load,
)
from agent.contract import (
    DeviceId,
    LabelKey,
    LabelValue,
    SensorBackend,
    SensorName,
    SensorSettings,
    Site,
)
from gateway.engine.settings import EngineSettings


def default_sensors(interval: float = 5.0) -> dict[str, SensorSettings]:
    return {
        "env": SensorSettings(driver="bme280", interval=interval, backend=SensorBackend.EMULATED)
    }


Interval = Annotated[float, msgspec.Meta(gt=0, le=86_400)]
DeviceCount = Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]


class SimulatorSection(Section, frozen=True):
    """The original simulator's section: a fleet of purely simulated devices."""

    device_count: DeviceCount = 0
    publish_interval: Interval = 2.0  # seconds
    device_prefix: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,40}$")] = "device_"
    seed: int = 0

    @staticmethod
    def id_width(count: int) -> int:
        return max(3, len(str(count - 1)))

    def device_ids(self) -> list[str]:
        width = self.id_width(self.device_count)
        return [f"{self.device_prefix}{i:0{width}d}" for i in range(self.device_count)]


class SimulationSection(Section, frozen=True):
    """The original simulator's code's section: devices started and scaled through its API."""

    frequency_sec: Interval = 1.0  # seconds between a device's readings
    max_devices: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 100  # cap on /start, /scale


# Devices that the simulator control routes started carry this label in the manifest and in
# their twin documents: they live as long as the gateway that started them, like the original
# simulator's, so a twin document of theirs left on the broker never brings them back.
COMPAT_LABEL: Final = ("edgetwin.origin", "simulator-api")

# The original simulator's code names its devices device_000, device_001, ...
COMPAT_PREFIX: Final = "device_"
DEFAULT_COMPAT_CAP: Final = 100


@dataclass(frozen=True)
class CompatPlan:
    """How the simulator control routes name, pace and cap the devices they run."""

    prefix: str
    width: int
    interval: float
    max_devices: int
    initial: tuple[str, ...]
    """devices running from the start: the README-style `[simulator]` ones"""

    def device_id(self, index: int) -> str:
        return f"{self.prefix}{index:0{self.width}d}"


class GatewayMqttSettings(MqttSettings, frozen=True):
    # Telemetry payload of simulated devices: 'edgetwin' (the contract's Telemetry) or 'flat',
    # the original simulator's {device_id, timestamp, temperature, humidity}.
    payload: Literal["edgetwin", "flat"] = "edgetwin"


class ServerSection(Section, frozen=True):
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8080


class ApiSection(Section, frozen=True):
    token: Secret | None = None  # bearer token every write must carry; or EDGETWIN_API_TOKEN
    # Accept writes without a token; allowed only with a loopback server.host.
    local_no_auth: bool = False


class ManifestDevice(Section, frozen=True):
    id: DeviceId
    sensors: dict[SensorName, SensorSettings] = msgspec.field(default_factory=default_sensors)
    # The twin document carries these on the wire: the contract's limits apply from the start.
    site: Site | None = None
    labels: dict[LabelKey, LabelValue] = msgspec.field(default_factory=dict)


class PresenceSection(Section, frozen=True):
    # Retained status messages arrive right after subscribing; until then a device's presence is
    # unknown, and simulating it at once would double a live agent's stream for a moment.
    startup_grace: Annotated[float, msgspec.Meta(ge=0, le=60)] = 1.0  # seconds


class GatewayConfig(Section, frozen=True):
    # None rather than a default section: the README format's section and the code format's
    # one cannot be used together, and only an absent [simulator] tells that apart.
    simulator: SimulatorSection | None = None
    simulation: SimulationSection | None = None
    mqtt: GatewayMqttSettings = msgspec.field(default_factory=GatewayMqttSettings)
    observability: ObservabilitySettings = msgspec.field(
        default_factory=lambda: ObservabilitySettings(service_name="edgetwin-gateway")
    )
    server: ServerSection = msgspec.field(default_factory=ServerSection)
    presence: PresenceSection = msgspec.field(default_factory=PresenceSection)
    api: ApiSection = msgspec.field(default_factory=ApiSection)
    # The scale engine for purely simulated fleets (/engine routes).
    engine: EngineSettings = msgspec.field(default_factory=EngineSettings)
    devices: list[ManifestDevice] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        if self.api.local_no_auth and not _is_loopback(self.server.host):
            raise ValueError(
                f"api.local_no_auth needs server.host on loopback, not {self.server.host!r}"
            )
        if self.simulation is not None and self.simulator is not None:
            raise ValueError(
                "[simulator] (the original simulator's README format: device_count, "
                "publish_interval) and [simulation] (its code's format: frequency_sec, "
                "max_devices) cannot be used together; keep one of them"
            )
        if self.simulator_section.device_count and (
            self.engine.start_devices is not None or self.engine.start_scenario is not None
        ):
            raise ValueError(
                "[simulator] device_count and [engine] start_devices/start_scenario both start "
                "a fleet at launch; the simulation engine runs one fleet at a time: keep one"
            )
        seen: set[str] = set()
        for device_id in [d.id for d in self.devices] + self.simulator_section.device_ids():
            if device_id in seen:
                raise ValueError(f"device id {device_id!r} appears twice in the manifest")
            seen.add(device_id)

    @property
    def simulator_section(self) -> SimulatorSection:
        return self.simulator or SimulatorSection()

    def manifest(self) -> list[ManifestDevice]:
        """The devices the twin follows (the `[simulator]` ones are an engine fleet instead,
        see `compat_plan`)."""
        return list(self.devices)

    def compat_plan(self) -> CompatPlan:
        """The simulator control routes' devices: under `[simulation]` the original code's
        device_000, ... none at start; otherwise the `[simulator]` devices, running from the
        start, which the routes may stop and scale (capped at 100 or device_count)."""
        if self.simulation is not None:
            return CompatPlan(
                prefix=COMPAT_PREFIX,
                width=3,
                interval=self.simulation.frequency_sec,
                max_devices=self.simulation.max_devices,
                initial=(),
            )
        simulator = self.simulator_section
        cap = max(DEFAULT_COMPAT_CAP, simulator.device_count)
        return CompatPlan(
            prefix=simulator.device_prefix,
            width=simulator.id_width(cap),
            interval=simulator.publish_interval,
            max_devices=cap,
            initial=tuple(simulator.device_ids()),
        )


# The API address is not in the original simulator's file; containers and tests set it here.
GATEWAY_ENV_OVERRIDES: Final[Mapping[str, tuple[str, str]]] = {
    **ENV_OVERRIDES,
    "EDGETWIN_SERVER_HOST": ("server", "host"),
    "EDGETWIN_SERVER_PORT": ("server", "port"),
    "EDGETWIN_API_TOKEN": ("api", "token"),
    "EDGETWIN_PROMETHEUS_HOST": ("observability", "prometheus_host"),
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
