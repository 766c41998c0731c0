"""Home Assistant MQTT discovery: the retained configs that make a device's readings entities.

One config per quantity of each sensor (`sensor`, or `binary_sensor` for 0/1 quantities), and
one `binary_sensor` per device for the agent's presence, under
`{discovery_prefix}/{component}/{device}/{object_id}/config`. Home Assistant reads the readings
straight from the contract's telemetry topics: each config's `value_template` takes its
quantity out of the nested `values` of a `Telemetry` payload, so nothing is published twice.

Who writes these topics (one writer per retained topic, as for the contract's own documents):
the gateway for its manifest devices when its `[homeassistant]` is enabled, which covers the
devices it simulates, whose agent is absent; an agent for itself when its own section is
enabled, unless a gateway's config is already there: the gateway knows the site, who serves each
stream and which streams are simulated, so an agent yields to it (README, "Home Assistant").
Configs name their writer in Home Assistant's `origin` block, which is how an agent tells.

This module builds payloads and keeps track of what was published; it imports nothing beyond
the contract and the hardware registry, so the agent can use it and stay light.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from edgetwin.agent.contract import OutputSettings, SensorSettings, Topics
from edgetwin.hardware.errors import HardwareError
from edgetwin.hardware.output import ValueRange
from edgetwin.hardware.registry import output_spec, reading_quantities
from edgetwin.hardware.sensor import Quantity

Component = Literal["sensor", "binary_sensor", "switch", "number"]

AGENT_ORIGIN: Final = "edgetwin agent"
GATEWAY_ORIGIN: Final = "edgetwin gateway"

PAYLOAD_ON: Final = "ON"
PAYLOAD_OFF: Final = "OFF"

# A reading's state expires after this many missed intervals, and never sooner than
# EXPIRE_MIN seconds: an agent's reading waits up to a commit interval in its outbox, and a
# hand-over to the simulation after a lost connection takes the broker's keepalive timeout.
EXPIRE_READINGS: Final = 3
EXPIRE_MIN: Final = 30


@dataclass(frozen=True, slots=True)
class EntityKind:
    """How one quantity appears in Home Assistant."""

    component: Component
    device_class: str | None
    unit: str | None
    """Home Assistant's unit string (it accepts only its own per device class: `%`, not the
    wire's `%RH`); None for binary sensors."""


# Every quantity of hardware/quantities.py. A quantity that Home Assistant has no device class
# for gets none rather than a near miss: a wrong class converts or plots the value wrongly.
# `contact` is a closed contact (a push button), which none of the binary classes means: their
# `opening`/`door` are on while open, the reverse of our 1.
QUANTITY_ENTITIES: Final[Mapping[str, EntityKind]] = {
    "temperature": EntityKind("sensor", "temperature", "°C"),
    "soc_temperature": EntityKind("sensor", "temperature", "°C"),
    "humidity": EntityKind("sensor", "humidity", "%"),
    "pressure": EntityKind("sensor", "atmospheric_pressure", "hPa"),
    "illuminance": EntityKind("sensor", "illuminance", "lx"),
    "voltage": EntityKind("sensor", "voltage", "V"),
    "distance": EntityKind("sensor", "distance", "m"),
    "motion": EntityKind("binary_sensor", "motion", None),
    "contact": EntityKind("binary_sensor", None, None),
}

# The wire unit each entry above expects: a vocabulary change that moves a unit must move the
# mapping with it, or Home Assistant would show hPa values as Pa.
_WIRE_UNITS: Final[Mapping[str, str]] = {
    "temperature": "°C",
    "soc_temperature": "°C",
    "humidity": "%RH",
    "pressure": "hPa",
    "illuminance": "lx",
    "voltage": "V",
    "distance": "m",
    "motion": "bool",
    "contact": "bool",
}

# Chip names and makers as people know them; a driver without a single maker (a PIR module, a
# button, the board's own thermal zone) names none.
DRIVER_MODELS: Final[Mapping[str, tuple[str, str | None]]] = {
    "bme280": ("BME280", "Bosch Sensortec"),
    "sht3x": ("SHT3x", "Sensirion"),
    "bh1750": ("BH1750", "ROHM Semiconductor"),
    "ads1115": ("ADS1115", "Texas Instruments"),
    "ds18b20": ("DS18B20", "Analog Devices"),
    "soc_thermal": ("SoC thermal zone", None),
    "pir": ("PIR motion sensor", None),
    "button": ("Push button", None),
    "hcsr04": ("HC-SR04", None),
}


def entity_kind(quantity: Quantity) -> EntityKind:
    """The entity of `quantity`: its own entry (`voltage_0` is a `voltage`), else a plain
    sensor in the wire's unit and without a device class."""
    name = quantity.name
    if name.startswith("voltage_") and name[len("voltage_") :].isdigit():
        name = "voltage"
    kind = QUANTITY_ENTITIES.get(name)
    if kind is None or _WIRE_UNITS[name] != quantity.unit:
        return EntityKind("sensor", None, quantity.unit)
    return kind


def expire_after(interval: float) -> int:
    """Seconds without a reading after which Home Assistant shows the state as unavailable."""
    return max(EXPIRE_MIN, math.ceil(EXPIRE_READINGS * interval))


@dataclass(frozen=True)
class DeviceDescription:
    """What the configs of one device are built from."""

    device: str
    sensors: Mapping[str, SensorSettings]
    simulated: frozenset[str] = frozenset()
    """Sensors the gateway's simulation serves now: their entities say so in their name."""
    site: str | None = None
    agent_version: str | None = None
    outputs: Mapping[str, OutputSettings] = field(default_factory=dict)
    """The desired document's outputs: a `switch` (0 or 1) or a `number` each, whose commands
    go to `Topics.output_set` (the gateway alone describes them: it alone writes desired)."""


@dataclass(frozen=True)
class Discovery:
    """Builds the discovery configs of devices for one writer (`origin`)."""

    topics: Topics
    discovery_prefix: str
    origin: str
    version: str

    def node_filter(self, device: str) -> str:
        """Every discovery config topic of `device`, as a subscription filter."""
        return f"{self.discovery_prefix}/+/{device}/+/config"

    def config_topic(self, component: Component, device: str, object_id: str) -> str:
        return f"{self.discovery_prefix}/{component}/{device}/{object_id}/config"

    def owns(self, topic: str, device: str) -> bool:
        """Whether `topic` is a discovery config topic of `device` (any component)."""
        parts = topic.split("/")
        head = self.discovery_prefix.split("/")
        return (
            len(parts) == len(head) + 4
            and parts[: len(head)] == head
            and parts[len(head) + 1] == device
            and parts[-1] == "config"
        )

    def configs(self, description: DeviceDescription) -> dict[str, bytes]:
        """Topic -> retained payload of every config of the device: one per quantity of each
        sensor whose driver is known, and its presence. Payloads are canonical JSON (sorted
        keys), so the same description always gives the same bytes and publishing again is a
        no-op for Home Assistant."""
        device = description.device
        block = self._device_block(description)
        result: dict[str, bytes] = {}
        for sensor, settings in description.sensors.items():
            if not settings.enabled:
                continue
            try:
                quantities = reading_quantities(settings.driver, settings.options)
            except HardwareError:
                continue  # a driver this build lacks, or options it refuses: nothing to show
            for quantity in quantities:
                kind = entity_kind(quantity)
                object_id = f"{sensor}-{quantity.name}"
                payload = self._quantity_config(
                    description,
                    sensor=sensor,
                    settings=settings,
                    quantity=quantity,
                    kind=kind,
                    block=block,
                )
                result[self.config_topic(kind.component, device, object_id)] = _encode(payload)
        for name, output in description.outputs.items():
            try:
                spec = output_spec(output.driver, output.options)
            except HardwareError:
                continue
            component: Component = "switch" if spec.value_range.levels else "number"
            payload = self._output_config(device, name, component, spec.value_range, block)
            result[self.config_topic(component, device, f"output-{name}")] = _encode(payload)
        result[self.config_topic("binary_sensor", device, "connectivity")] = _encode(
            self._presence_config(device, block)
        )
        return result

    # -- payloads -------------------------------------------------------------------------------

    def _device_block(self, description: DeviceDescription) -> dict[str, Any]:
        models: list[str] = []
        makers: set[str | None] = set()
        for settings in description.sensors.values():
            if not settings.enabled:
                continue
            model, maker = DRIVER_MODELS.get(settings.driver, (settings.driver, None))
            if model not in models:
                models.append(model)
            makers.add(maker)
        block: dict[str, Any] = {
            "identifiers": [f"edgetwin:{description.device}"],
            "name": description.device,
        }
        if models:
            block["model"] = " + ".join(models)
        if len(makers) == 1 and None not in makers:
            block["manufacturer"] = next(iter(makers))
        if description.agent_version is not None:
            block["sw_version"] = description.agent_version
        if description.site:
            block["suggested_area"] = description.site
        return block

    def _origin(self) -> dict[str, str]:
        return {"name": self.origin, "sw_version": self.version}

    def _quantity_config(
        self,
        description: DeviceDescription,
        *,
        sensor: str,
        settings: SensorSettings,
        quantity: Quantity,
        kind: EntityKind,
        block: dict[str, Any],
    ) -> dict[str, Any]:
        device = description.device
        topic = self.topics.telemetry(device, sensor)
        guards = self._stream_guards(device, sensor)
        simulated = sensor in description.simulated
        label = f"{sensor} {quantity.name.replace('_', ' ')}"
        config: dict[str, Any] = {
            "name": f"{label} (simulated)" if simulated else label,
            "unique_id": f"edgetwin:{device}:{sensor}:{quantity.name}",
            "state_topic": topic,
            "value_template": _value_template(quantity.name, guards, binary=kind.unit is None),
            "expire_after": expire_after(settings.interval),
            "availability": self._availability(device, sensor),
            "availability_mode": "any",
            "device": block,
            "origin": self._origin(),
        }
        if kind.device_class is not None:
            config["device_class"] = kind.device_class
        if kind.component == "sensor":
            config["state_class"] = "measurement"
            config["suggested_display_precision"] = quantity.decimals
            if kind.unit is not None:
                config["unit_of_measurement"] = kind.unit
        else:
            config["payload_on"] = PAYLOAD_ON
            config["payload_off"] = PAYLOAD_OFF
        if not guards:
            # Only on a topic of this stream alone: on a shared one the attributes of every
            # other stream would overwrite these (Home Assistant applies any dict it gets).
            config["json_attributes_topic"] = topic
            config["json_attributes_template"] = _ATTRIBUTES_TEMPLATE
        return config

    def _output_config(
        self,
        device: str,
        name: str,
        component: Component,
        value_range: ValueRange,
        block: dict[str, Any],
    ) -> dict[str, Any]:
        """An output as its device applies it (the reported document's value, whoever applied
        it: the agent, or the gateway that simulates the device), set through the twin."""
        # Subscripts and `is defined`, no methods: an output name may hold a '-', and Home
        # Assistant's sandbox is no place to count on dict methods.
        output = f"value_json['outputs'][{_literal(name)}]"
        known = f"value_json['outputs'] is defined and {output} is defined"
        applied = f"{known} and {output}['value'] is not none"
        config: dict[str, Any] = {
            "name": f"output {name}",
            "unique_id": f"edgetwin:{device}:output:{name}",
            "command_topic": self.topics.output_set(device, name),
            "state_topic": self.topics.reported(device),
            "device": block,
            "origin": self._origin(),
        }
        if component == "switch":
            config["value_template"] = (
                f"{{{{ 'ON' if {applied} and {output}['value'] == 1 else 'OFF' }}}}"
            )
            config["state_on"], config["state_off"] = PAYLOAD_ON, PAYLOAD_OFF
            config["payload_on"], config["payload_off"] = "1", "0"
        else:
            config["value_template"] = f"{{{{ {output}['value'] if {applied} else 0 }}}}"
            config["min"], config["max"] = value_range.lo, value_range.hi
            config["step"] = value_range.step or 0.001
            config["mode"] = "slider"
        return config

    def _presence_config(self, device: str, block: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": "agent",
            "unique_id": f"edgetwin:{device}:agent",
            "state_topic": self.topics.status(device),
            "value_template": "{{ value_json['state'] }}",
            "payload_on": "online",
            "payload_off": "offline",
            "device_class": "connectivity",
            "entity_category": "diagnostic",
            "device": block,
            "origin": self._origin(),
        }

    def _availability(self, device: str, sensor: str) -> list[dict[str, str]]:
        """Available while the agent is online, or while the gateway's twin says the
        simulation serves this stream (its readings flow then too): `availability_mode` any."""
        served = f"value_json['sensors'][{_literal(sensor)}]"
        return [
            {
                "topic": self.topics.status(device),
                "value_template": "{{ value_json['state'] }}",
                "payload_available": "online",
                "payload_not_available": "offline",
            },
            {
                "topic": self.topics.twin(device),
                "value_template": (
                    f"{{{{ 'online' if {served} is defined and "
                    f"{served}['served_by'] == 'simulation' else 'offline' }}}}"
                ),
                "payload_available": "online",
                "payload_not_available": "offline",
            },
        ]

    def _stream_guards(self, device: str, sensor: str) -> list[str]:
        """Conditions that pick this stream's readings out of a topic it shares: a template
        without {device_id} or {sensor} puts several streams on one topic, told apart by the
        payload's `device` and `sensor`."""
        template = self.topics.telemetry_template
        if template is None:
            return []
        guards = []
        if "{device_id}" not in template:
            guards.append(f"value_json['device'] == {_literal(device)}")
        if "{sensor}" not in template:
            guards.append(f"value_json['sensor'] == {_literal(sensor)}")
        return guards


# `value_json['values']`, never `value_json.values`: Jinja looks attributes up first, and a
# dict's `values` attribute is its method.
_ATTRIBUTES_TEMPLATE: Final = (
    "{{ {'source': value_json['source'], 'seq': value_json['seq'], "
    "'anomaly': value_json['anomaly']['type'] if value_json['anomaly'] is defined else none}"
    " | tojson }}"
)


def _value_template(quantity: str, guards: list[str], *, binary: bool) -> str:
    """Renders the quantity's value, or nothing for a reading of another stream or without
    the quantity: Home Assistant ignores an empty result instead of taking it for a state."""
    entry = f"value_json['values'][{_literal(quantity)}]"
    condition = " and ".join([*guards, f"{entry} is defined"])
    if binary:
        shown = f"'{PAYLOAD_ON}' if {entry}['value'] >= 0.5 else '{PAYLOAD_OFF}'"
    else:
        shown = f"{entry}['value']"
    return f"{{% if {condition} %}}{{{{ {shown} }}}}{{% endif %}}"


def _literal(text: str) -> str:
    # Ids and quantity names match the contract's patterns ([a-z0-9_-]): no quote to escape.
    return f"'{text}'"


def _encode(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def origin_of(payload: bytes) -> str | None:
    """The `origin` name of a retained discovery config, None if it has none or is not one."""
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if not isinstance(body, dict):
        return None
    origin = body.get("origin", body.get("o"))
    name = origin.get("name") if isinstance(origin, dict) else None
    return name if isinstance(name, str) else None


@dataclass
class PublishedConfigs:
    """What one writer has put on the broker, per device: topic -> payload.

    `changes` says what to publish so the broker holds exactly the wanted configs: new and
    changed ones, and an empty retained payload (Home Assistant's deletion) for each config
    published before and wanted no longer.
    """

    _by_device: dict[str, dict[str, bytes | None]] = field(default_factory=dict)

    def changes(self, device: str, wanted: Mapping[str, bytes]) -> list[tuple[str, bytes]]:
        sent = self._by_device.setdefault(device, {})
        messages = [(topic, body) for topic, body in wanted.items() if sent.get(topic) != body]
        messages += [(topic, b"") for topic in sent if topic not in wanted]
        self._by_device[device] = dict[str, bytes | None](wanted)
        return messages

    def remove(self, device: str) -> list[tuple[str, bytes]]:
        """Empty retained payloads for every config of `device` published before."""
        return [(topic, b"") for topic in self._by_device.pop(device, {})]

    def devices(self) -> list[str]:
        return list(self._by_device)

    def invalidate(self) -> None:
        """After a new connection, the broker may have lost everything (no persistence): keep
        the topics, forget that their payloads were delivered, so all are published again."""
        for sent in self._by_device.values():
            for topic in sent:
                sent[topic] = None


class AgentDiscovery:
    """One agent's own discovery configs, kept in step with what the broker holds on its node.

    The agent subscribes to its node (`Discovery.node_filter`), so it hears every config there,
    its own echoes and a gateway's alike (`note`). `messages` then says what to publish for
    the broker to hold exactly the wanted configs, or nothing while any config there comes
    from a gateway: the gateway owns this device's configs then.
    """

    def __init__(self, discovery: Discovery, device: str) -> None:
        self.discovery = discovery
        self.device = device
        self.retained: dict[str, bytes] = {}
        """Our node's configs on the broker, as last heard."""
        self.sent: dict[str, bytes] = {}
        """What the current connection published; cleared at each new connection."""
        self.yielded = False
        self.due = False
        """Whether the configs may differ from what should be on the broker."""
        self.connection = 0
        """The link's `connect_count` that `sent` belongs to."""
        self.noticed = 0.0
        """When (monotonic) the agent noticed that connection."""
        self.site: str | None = None
        """The device's site, from the gateway's twin document."""

    def owns(self, topic: str) -> bool:
        return self.discovery.owns(topic, self.device)

    def note(self, topic: str, payload: bytes) -> bool:
        """Record a config heard on our node; True when a gateway wrote it and the agent was
        not yet standing back (worth acting on at once)."""
        if payload:
            self.retained[topic] = payload
        else:
            self.retained.pop(topic, None)
        return not self.yielded and origin_of(payload) == GATEWAY_ORIGIN

    def new_connection(self, connection: int, now: float) -> None:
        """A new connection: the broker may have lost every config (no persistence)."""
        self.connection = connection
        self.noticed = now
        self.sent.clear()
        self.due = True

    def gateway_owns(self) -> bool:
        return any(origin_of(p) == GATEWAY_ORIGIN for p in self.retained.values())

    def messages(self, description: DeviceDescription) -> list[tuple[str, bytes]]:
        """What to publish now: wanted configs the broker lacks or holds otherwise, and an
        empty payload for each config of ours it holds that is no longer wanted. None at all
        while a gateway owns the device (`yielded` tells)."""
        self.yielded = self.gateway_owns()
        if self.yielded:
            return []
        wanted = self.discovery.configs(description)
        messages = [
            (topic, payload)
            for topic, payload in wanted.items()
            if payload not in (self.retained.get(topic), self.sent.get(topic))
        ]
        messages += [
            (topic, b"")
            for topic in self.retained
            if topic not in wanted and self.sent.get(topic) != b""
        ]
        return messages
