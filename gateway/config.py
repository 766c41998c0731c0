"""The gateway's configuration file, and the one model of the fleet it runs (`FleetPlan`).

Three sections describe the purely simulated fleet that the simulation engine runs for the
gateway, and each loads into one `FleetPlan` (`GatewayConfig.fleet_plan`); the gateway reads that
plan, never the sections:

- `[simulator]`, the original sensor simulator's README format (`device_count`,
  `publish_interval`, `device_prefix`, `seed`): `device_count` devices run from the start and
  the original's routes (/start, /scale, /stop) control them;
- `[simulation]`, the original's code format (`frequency_sec`, `max_devices`): nothing runs at
  start, the routes start device_000, ... every `frequency_sec`, up to `max_devices`;
- `[engine] start_devices` / `start_scenario`: an /engine fleet started with the gateway, which
  the routes leave alone.

Both of the original simulator's files are valid here unchanged. Two sections that describe a
fleet cannot be used together. The rest of `[engine]` sets how the engine runs any fleet,
`[[devices]]` the manifest.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Final, Literal

import msgspec

from edgetwin.agent.config import (
    ENV_OVERRIDES,
    ConfigError,
    HomeAssistantSettings,
    MqttSettings,
    ObservabilitySettings,
    Secret,
    Section,
    check_host,
    load,
)
from edgetwin.agent.contract import (
    DeviceId,
    GatewayId,
    LabelKey,
    LabelValue,
    SensorBackend,
    SensorName,
    SensorSettings,
    Site,
)
from edgetwin.gateway.engine.interface import PayloadKind
from edgetwin.gateway.engine.settings import EngineSettings
from edgetwin.gateway.scenario.model import (
    ResponseSpec,
    ScenarioError,
    Shard,
    parse_shard,
    shard_from_environment,
)
from edgetwin.hardware import HardwareError
from edgetwin.hardware.registry import reading_quantities


def default_sensors(interval: float = 5.0) -> dict[str, SensorSettings]:
    return {
        "env": SensorSettings(driver="bme280", interval=interval, backend=SensorBackend.EMULATED)
    }


Interval = Annotated[float, msgspec.Meta(gt=0, le=86_400)]
DeviceCount = Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]


class SimulatorSection(Section, frozen=True):
    """The original simulator's README format: a fleet of purely simulated devices running
    from the start."""

    device_count: DeviceCount = 0
    publish_interval: Interval = 2.0  # seconds
    device_prefix: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,40}$")] = "device_"
    seed: int = 0


class SimulationSection(Section, frozen=True):
    """The original simulator's code format: devices started and scaled through its routes."""

    frequency_sec: Interval = 1.0  # seconds between a device's readings
    max_devices: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 100  # cap on /start, /scale


# Devices that the simulator control routes started carry this label in the manifest and in
# their twin documents: they live as long as the gateway that started them, like the original
# simulator's, so a twin document of theirs left on the broker never brings them back.
COMPAT_LABEL: Final = ("edgetwin.origin", "simulator-api")

# The original simulator's code names its devices device_000, device_001, ...
COMPAT_PREFIX: Final = "device_"
# The routes' cap when no section sets one: the original code's default max_devices.
DEFAULT_COMPAT_CAP: Final = 100


# --- the one model: the fleet the engine runs for the gateway --------------------------------

FleetSection = Literal["simulator", "simulation", "engine"]
"""The section a fleet plan was read from."""


@dataclasses.dataclass(frozen=True)
class IdScheme:
    """Device ids `{prefix}{index}`, the index zero-padded to `width` digits: device_000, ..."""

    prefix: str
    width: int

    @classmethod
    def for_count(cls, prefix: str, count: int) -> IdScheme:
        """Wide enough for indexes up to count - 1, and at least three digits, as the
        original simulator names its devices."""
        return cls(prefix, max(3, len(str(max(count - 1, 0)))))

    def device_id(self, index: int) -> str:
        return f"{self.prefix}{index:0{self.width}d}"

    def device_ids(self, stop: int, start: int = 0) -> list[str]:
        return [self.device_id(i) for i in range(start, stop)]


@dataclasses.dataclass(frozen=True)
class StartDevices:
    """At launch: `count` devices of the default scenario (one sensor `env`: temperature,
    humidity, pressure), named by the plan's `ids`, every `interval` s, from its `seed`."""

    count: int


@dataclasses.dataclass(frozen=True)
class StartScenario:
    """At launch: the scenario file `name` in `[engine] scenarios_dir`, which names, paces and
    seeds its own devices."""

    name: str


@dataclasses.dataclass(frozen=True)
class FleetPlan:
    """The fleet the simulation engine runs for the gateway, whichever section described it.

    The gateway reads this and never the sections: `[simulator]`, `[simulation]` and
    `[engine] start_devices`/`start_scenario` are input formats of this one model (README,
    "Configuration: one model, three input formats"). Broker, topic and prefix are `[mqtt]`'s:
    the engine's connection, shared by every fleet it runs.
    """

    section: FleetSection | None
    """where it was read from; None: no section describes a fleet"""
    launch: StartDevices | StartScenario | None
    """the fleet started with the gateway; None: nothing runs until asked"""
    ids: IdScheme
    """how devices of the default scenario are named"""
    interval: float
    """seconds between a default device's readings"""
    seed: int
    """the same seed simulates the same values"""
    max_devices: int
    """cap on the devices /start and /scale run (larger counts are cut to it)"""
    routes: bool
    """whether the original's /start, /scale and /stop control this fleet; otherwise /start
    and /scale refuse, and the /engine routes steer it"""
    per_device_metric: bool
    """keep `mqtt_sent_total{device_id}` for it (the original's metric): only where one of
    the original's formats describes the fleet, since at 50,000 devices it costs"""
    qos: Literal[0, 1]
    payload: PayloadKind

    def launch_ids(self) -> list[str]:
        """Ids of the devices started with the gateway that the plan names (a scenario file
        names its own)."""
        if isinstance(self.launch, StartDevices):
            return self.ids.device_ids(self.launch.count)
        return []

    def describe(self) -> str:
        """The keys that set this fleet, for messages: '[simulator]', '[engine] start_devices'..."""
        if self.section is None:
            return "no section"
        if self.section == "engine":
            key = "start_scenario" if isinstance(self.launch, StartScenario) else "start_devices"
            return f"[engine] {key}"
        return f"[{self.section}]"


def plan_from_simulator(simulator: SimulatorSection, mqtt: GatewayMqttSettings) -> FleetPlan:
    """The README format: `device_count` devices run from the start; the routes stop and scale
    them, up to 100 or `device_count`, whichever is more."""
    cap = max(DEFAULT_COMPAT_CAP, simulator.device_count)
    return FleetPlan(
        section="simulator",
        launch=StartDevices(simulator.device_count) if simulator.device_count else None,
        ids=IdScheme.for_count(simulator.device_prefix, cap),
        interval=simulator.publish_interval,
        seed=simulator.seed,
        max_devices=cap,
        routes=True,
        per_device_metric=True,
        qos=mqtt.qos,
        payload=mqtt.payload,
    )


def plan_from_simulation(simulation: SimulationSection, mqtt: GatewayMqttSettings) -> FleetPlan:
    """The code format: nothing at start; /start?count=N starts device_000, ..."""
    return FleetPlan(
        section="simulation",
        launch=None,
        ids=IdScheme(COMPAT_PREFIX, 3),
        interval=simulation.frequency_sec,
        seed=0,
        max_devices=simulation.max_devices,
        routes=True,
        per_device_metric=True,
        qos=mqtt.qos,
        payload=mqtt.payload,
    )


def plan_from_engine(engine: EngineSection) -> FleetPlan | None:
    """`[engine] start_devices` or `start_scenario`: an /engine fleet from the start, with
    `[engine]`'s qos and payload, as POST /engine/start's; None without either key."""
    launch: StartDevices | StartScenario
    if engine.start_scenario is not None:
        launch = StartScenario(engine.start_scenario)
        ids = IdScheme(COMPAT_PREFIX, 3)
    elif engine.start_devices is not None:
        launch = StartDevices(engine.start_devices)
        ids = IdScheme.for_count(COMPAT_PREFIX, engine.start_devices)
    else:
        return None
    return FleetPlan(
        section="engine",
        launch=launch,
        ids=ids,
        interval=engine.start_interval,
        seed=0,
        max_devices=engine.max_devices,
        routes=False,
        per_device_metric=False,
        qos=engine.qos,
        payload=engine.payload,
    )


def plan_without_section(mqtt: GatewayMqttSettings) -> FleetPlan:
    """No section: nothing at start; the routes start the README format's default devices
    (device_000, ... every 2 s, up to 100), without the per-device metric."""
    default = plan_from_simulator(SimulatorSection(), mqtt)
    return dataclasses.replace(default, section=None, per_device_metric=False)


class EngineSection(EngineSettings, frozen=True):
    """The gateway file's `[engine]`: how the engine runs (EngineSettings), and the fleet the
    gateway starts by itself, as the original simulator did, which only the fleet plan reads
    (`plan_from_engine`): the default scenario with `start_devices` devices `start_interval`
    seconds apart, or the scenario file `start_scenario` from scenarios_dir. Neither: the
    engine waits for POST /engine/start."""

    start_devices: Annotated[int, msgspec.Meta(ge=1)] | None = None
    start_interval: Annotated[float, msgspec.Meta(gt=0, le=86_400)] = 1.0
    start_scenario: str | None = None
    # "K/N": this gateway's engine plays the K-th of N shares of every /engine fleet (the API's
    # and start_*), one of N replicas (EDGETWIN_SHARD, or EDGETWIN_SHARD_COUNT with the host
    # name's StatefulSet ordinal). The original simulator's group is not sharded.
    shard: str | None = None

    def shard_spec(self) -> Shard | None:
        return None if self.shard is None else parse_shard(self.shard)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.shard is not None:
            try:
                parse_shard(self.shard)
            except ScenarioError as exc:
                raise ValueError(f"engine: {exc}") from None
        if self.start_devices is not None and self.start_scenario is not None:
            raise ValueError("engine: start_devices and start_scenario cannot be used together")
        if self.start_scenario is not None and self.scenarios_dir is None:
            raise ValueError("engine: start_scenario needs scenarios_dir, the directory it is in")
        if self.start_devices is not None and self.start_devices > self.max_devices:
            raise ValueError(f"engine: start_devices is above max_devices ({self.max_devices})")


class GatewayMqttSettings(MqttSettings, frozen=True):
    # Telemetry payload of simulated devices: 'edgetwin' (the contract's Telemetry) or 'flat',
    # the original simulator's {device_id, timestamp, temperature, humidity}.
    payload: Literal["edgetwin", "flat"] = "edgetwin"


class ServerSection(Section, frozen=True):
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8080

    def __post_init__(self) -> None:
        check_host(self.host, "host")


class ApiSection(Section, frozen=True):
    token: Secret | None = None  # bearer token every write must carry; or EDGETWIN_API_TOKEN
    # Accept writes without a token; allowed only with a loopback server.host.
    local_no_auth: bool = False
    # What a request may ask of the gateway, token or not: a larger body gets 413 unread, and
    # a device of more sensors, or polled faster, gets 422.
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 1024 * 1024
    max_sensors: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 64  # per device
    min_interval: Annotated[float, msgspec.Meta(gt=0, le=86_400)] = 0.05  # seconds


class ManifestDevice(Section, frozen=True):
    id: DeviceId
    sensors: dict[SensorName, SensorSettings] = msgspec.field(default_factory=default_sensors)
    # The twin document carries these on the wire: the contract's limits apply from the start.
    site: Site | None = None
    labels: dict[LabelKey, LabelValue] = msgspec.field(default_factory=dict)
    # How the simulated device's signals answer its outputs (a heater warms, a fan cools):
    # `[[devices.responses]]`, played whenever the gateway simulates the sensor.
    responses: Annotated[list[ResponseSpec], msgspec.Meta(max_length=64)] = msgspec.field(
        default_factory=list
    )

    def __post_init__(self) -> None:
        seen: set[tuple[str, str]] = set()
        for response in self.responses:
            where = f"device {self.id!r}: response of {response.sensor}.{response.quantity}"
            key = (response.sensor, response.quantity)
            if key in seen:
                raise ValueError(f"{where} is declared twice")
            seen.add(key)
            settings = self.sensors.get(response.sensor)
            if settings is None:
                raise ValueError(f"{where}: no sensor {response.sensor!r} in the device")
            try:
                names = [q.name for q in reading_quantities(settings.driver, settings.options)]
            except HardwareError as exc:
                raise ValueError(f"{where}: {exc}") from None
            if response.quantity not in names:
                raise ValueError(f"{where}: sensor {response.sensor!r} reads {names}")


class PresenceSection(Section, frozen=True):
    # Retained status messages arrive right after subscribing; until then a device's presence is
    # unknown, and simulating it at once would double a live agent's stream for a moment.
    startup_grace: Annotated[float, msgspec.Meta(ge=0, le=60)] = 1.0  # seconds


class HistorySection(Section, frozen=True):
    # Recent points kept per telemetry stream (device, sensor) for the page's charts; 0 keeps
    # none. About 30 bytes a point for a three-quantity stream (README, 'Gateway API').
    points: Annotated[int, msgspec.Meta(ge=0, le=100_000)] = 300
    # Streams kept; beyond it the one heard from least recently is evicted (counted in
    # edgetwin_history_evicted_streams_total).
    max_streams: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 50_000


class LiveSection(Section, frozen=True):
    # Seconds between two change events of GET /events: changes in between are coalesced.
    interval: Annotated[float, msgspec.Meta(ge=0.05, le=10)] = 0.5
    # Events waiting for one slow client; beyond it they are dropped and the client gets a
    # fresh snapshot once it reads again.
    queue: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 16


class GatewaySection(Section, frozen=True):
    """This gateway among the others on its prefix (gateway/membership.py)."""

    # Its name in the membership and the lease topic; the same across restarts of one replica,
    # so that a restart gets back the devices it owned. None: from the host name, which a
    # StatefulSet keeps per replica (`default_gateway_id`); or EDGETWIN_GATEWAY_ID.
    id: GatewayId | None = None
    # The URL other gateways and clients reach this one's API at, published in its lease
    # (for forwarding writes to a device's owner); None publishes none.
    advertise_url: (
        Annotated[str, msgspec.Meta(pattern=r"^https?://\S+$", max_length=256)] | None
    ) = None

    # How long a change of the live gateways must stand before devices move: a gateway's
    # network blip (its will, then its birth) moves nothing, and the last readings a killed
    # gateway had in flight reach the others before they continue its streams.
    rebalance_delay: Annotated[float, msgspec.Meta(ge=0, le=60)] = 0.5
    # How long a new owner waits for the old one, still alive, to hand a device over (its
    # release) before it takes the device anyway. Meanwhile the old owner plays the device;
    # the wait only guards against one that holds its lease but never lets go (a hung
    # process). Long, because taking a device too soon makes two writers: an overloaded
    # gateway reads the membership change late, and releases late.
    handoff_timeout: Annotated[float, msgspec.Meta(gt=0, le=600)] = 30.0

    def gateway_id(self, hostname: str | None = None) -> str:
        return self.id or default_gateway_id(socket.gethostname() if hostname is None else hostname)


def default_gateway_id(hostname: str) -> str:
    """A contract id from a host name: lower case, the domain dropped, any other character
    made '-', at most 64 characters. `gateway-0.gateway.ns.svc` gives `gateway-0`; a host name
    with nothing usable gives "gateway"."""
    name = hostname.split(".", 1)[0].lower()
    name = re.sub(r"[^a-z0-9_-]", "-", name).lstrip("-_")[:64]
    return name or "gateway"


class GatewayObservability(ObservabilitySettings, frozen=True):
    # The program's own name when the section is there without one (the inherited default
    # would log every gateway as the agent's generic "edgetwin").
    service_name: str = "edgetwin-gateway"


class GatewayConfig(Section, frozen=True):
    # None rather than a default section: the README format's section and the code format's
    # one cannot be used together, and only an absent [simulator] tells that apart.
    simulator: SimulatorSection | None = None
    simulation: SimulationSection | None = None
    mqtt: GatewayMqttSettings = msgspec.field(default_factory=GatewayMqttSettings)
    observability: GatewayObservability = msgspec.field(default_factory=GatewayObservability)
    server: ServerSection = msgspec.field(default_factory=ServerSection)
    presence: PresenceSection = msgspec.field(default_factory=PresenceSection)
    api: ApiSection = msgspec.field(default_factory=ApiSection)
    history: HistorySection = msgspec.field(default_factory=HistorySection)
    live: LiveSection = msgspec.field(default_factory=LiveSection)
    # The scale engine for purely simulated fleets (/engine routes).
    engine: EngineSection = msgspec.field(default_factory=EngineSection)
    # Home Assistant discovery for the manifest's devices, simulated ones included.
    homeassistant: HomeAssistantSettings = msgspec.field(default_factory=HomeAssistantSettings)
    devices: list[ManifestDevice] = msgspec.field(default_factory=list)
    gateway: GatewaySection = msgspec.field(default_factory=GatewaySection)

    def __post_init__(self) -> None:
        if self.api.local_no_auth and not _is_loopback(self.server.host):
            raise ValueError(
                f"api.local_no_auth needs server.host on loopback, not {self.server.host!r}"
            )
        plan = self.fleet_plan()  # refuses two sections that describe a fleet
        seen: set[str] = set()
        for device in self.devices:
            if device.id in seen:
                raise ValueError(f"device id {device.id!r} appears twice in the manifest")
            seen.add(device.id)
        for device_id in plan.launch_ids():
            if device_id in seen:
                raise ValueError(
                    f"device id {device_id!r} appears twice: in [[devices]] and in the fleet "
                    f"of {plan.describe()}; rename one of them"
                )

    @property
    def simulator_section(self) -> SimulatorSection:
        """The raw `[simulator]` section, defaults if absent. The gateway reads `fleet_plan()`
        instead (`.seed` is the same value)."""
        return self.simulator or SimulatorSection()

    def manifest(self) -> list[ManifestDevice]:
        """The devices the twin follows (the fleet of `fleet_plan` is an engine fleet
        instead)."""
        return list(self.devices)

    def fleet_plan(self) -> FleetPlan:
        """The fleet the engine runs for this gateway, from whichever section describes it;
        ValueError if two do."""
        if self.simulator is not None and self.simulation is not None:
            raise ValueError(
                "[simulator] (the original simulator's README format: device_count, "
                "publish_interval) and [simulation] (its code's format: frequency_sec, "
                "max_devices) cannot be used together; keep one of them"
            )
        original: FleetPlan | None = None
        if self.simulator is not None:
            original = plan_from_simulator(self.simulator, self.mqtt)
        elif self.simulation is not None:
            original = plan_from_simulation(self.simulation, self.mqtt)
        engine = plan_from_engine(self.engine)
        if original is not None and engine is not None:
            raise ValueError(
                f"{original.describe()} (the original simulator's fleet, run by /start, /scale, "
                f"/stop) and {engine.describe()} (an /engine fleet started with the gateway) "
                "both describe the gateway's fleet; the simulation engine runs one fleet at a "
                "time: keep one of them"
            )
        return original or engine or plan_without_section(self.mqtt)


# The API address is not in the original simulator's file; containers and tests set it here.
GATEWAY_ENV_OVERRIDES: Final[Mapping[str, tuple[str, str]]] = {
    **ENV_OVERRIDES,
    "EDGETWIN_SERVER_HOST": ("server", "host"),
    "EDGETWIN_SERVER_PORT": ("server", "port"),
    "EDGETWIN_API_TOKEN": ("api", "token"),
    "EDGETWIN_PROMETHEUS_HOST": ("observability", "prometheus_host"),
    "EDGETWIN_ENGINE_USERNAME": ("engine", "username"),
    "EDGETWIN_ENGINE_PASSWORD": ("engine", "password"),
    "EDGETWIN_SHARD": ("engine", "shard"),
    "EDGETWIN_GATEWAY_ID": ("gateway", "id"),
}


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_gateway_config(path: Path, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    env = os.environ if environ is None else environ
    if "EDGETWIN_SHARD_COUNT" in env and "EDGETWIN_SHARD" not in env:
        # A StatefulSet's replica: its shard from the ordinal its host name ends with.
        try:
            shard = shard_from_environment(env, socket.gethostname())
        except ScenarioError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        env = {**env, "EDGETWIN_SHARD": str(shard)}
    return load(GatewayConfig, path, env, GATEWAY_ENV_OVERRIDES)
