"""Home Assistant MQTT discovery: configs Home Assistant accepts, on a real broker.

`check_config` below is Home Assistant's discovery schema for `sensor` and `binary_sensor` as
its documentation states it (integrations/sensor.mqtt, binary_sensor.mqtt, mqtt "Using
availability topics", sensor "Device class" table, binary_sensor "Device class" list): the
keys each takes (Home Assistant refuses a config with others: "extra keys not allowed"), the
required ones, the device classes and the units it accepts for each, state classes,
availability. Templates are rendered with jinja2, the engine Home Assistant's templates run on.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from typing import Any

import jinja2
import pytest

from edgetwin.agent.contract import (
    DesiredConfig,
    OutputSettings,
    SensorBackend,
    SensorSettings,
    Telemetry,
    Topics,
)
from edgetwin.agent.homeassistant import (
    AGENT_ORIGIN,
    GATEWAY_ORIGIN,
    DeviceDescription,
    Discovery,
    entity_kind,
)
from edgetwin.hardware.quantities import VOCABULARY, measured
from edgetwin.hardware.registry import DRIVERS, reading_quantities
from edgetwin.hardware.sensor import Quantity
from edgetwin.testing.agent_fixtures import AgentFactory, GatewayFactory
from edgetwin.testing.broker import Broker
from edgetwin.testing.broker_fixtures import BrokerFactory
from edgetwin.testing.capture import Capture, Message, publish
from edgetwin.testing.endpoint import MqttEndpoint
from edgetwin.testing.waiting import poll

# -- Home Assistant's discovery schema, from its documentation ----------------------------------

_COMMON_KEYS = {
    "availability",
    "availability_mode",
    "availability_template",
    "availability_topic",
    "default_entity_id",
    "device",
    "device_class",
    "enabled_by_default",
    "encoding",
    "entity_category",
    "entity_picture",
    "expire_after",
    "force_update",
    "icon",
    "json_attributes_template",
    "json_attributes_topic",
    "name",
    "object_id",
    "origin",
    "payload_available",
    "payload_not_available",
    "platform",
    "qos",
    "state_topic",
    "unique_id",
    "value_template",
}
SENSOR_KEYS = _COMMON_KEYS | {
    "last_reset_value_template",
    "options",
    "state_class",
    "suggested_display_precision",
    "unit_of_measurement",
}
BINARY_SENSOR_KEYS = _COMMON_KEYS | {"off_delay", "payload_off", "payload_on"}
DEVICE_KEYS = {
    "configuration_url",
    "connections",
    "hw_version",
    "identifiers",
    "manufacturer",
    "model",
    "model_id",
    "name",
    "serial_number",
    "suggested_area",
    "sw_version",
    "via_device",
}
ORIGIN_KEYS = {"name", "sw_version", "support_url"}
AVAILABILITY_KEYS = {"topic", "payload_available", "payload_not_available", "value_template"}

_MICROGRAMS = {"µg/m³"}
_ENERGY = {"J", "kJ", "MJ", "GJ", "mWh", "Wh", "kWh", "MWh", "GWh", "TWh", "cal", "kcal"}
_ENERGY |= {"Mcal", "Gcal"}
_VOLUME = {"mL", "L", "m³", "ft³", "CCF", "fl. oz.", "gal"}
_SPEED = {"m/s", "km/h", "ft/s", "mph", "kn", "Beaufort", "mm/s", "in/s"}
_FLUX = {"mm/d", "mm/h", "in/d", "in/h"}
_PRESSURE = {"Pa", "hPa", "kPa", "bar", "cbar", "mbar", "mmHg", "inHg", "psi"}
_LENGTH = {"mm", "cm", "m", "km", "in", "ft", "yd", "mi"}
_TEMPERATURE = {"°C", "°F", "K"}
# The sensor device classes and the units Home Assistant accepts with each (None: no unit).
# Classes whose unit families are long lists edgetwin maps nothing to carry what the table
# names as their main units.
SENSOR_DEVICE_CLASSES: Mapping[str, AbstractSet[str | None]] = {
    "apparent_power": {"VA", "mVA", "kVA"},
    "aqi": {None},
    "area": {"m²", "cm²", "km²", "mm²", "in²", "ft²", "yd²", "mi²", "ac", "ha"},
    "atmospheric_pressure": _PRESSURE,
    "battery": {"%"},
    "blood_glucose_concentration": {"mg/dL", "mmol/L"},
    "carbon_dioxide": {"ppm"},
    "carbon_monoxide": {"ppm"},
    "conductivity": {"S/cm", "mS/cm", "µS/cm"},
    "current": {"A", "mA"},
    "data_rate": {"bit/s", "kbit/s", "Mbit/s", "Gbit/s", "B/s", "kB/s", "MB/s", "GB/s"},
    "data_size": {"bit", "kbit", "Mbit", "Gbit", "B", "kB", "MB", "GB", "TB", "PB"},
    "date": {None},
    "distance": _LENGTH,
    "duration": {"d", "h", "min", "s", "ms"},
    "energy": _ENERGY,
    "energy_distance": {"kWh/100km", "mi/kWh", "km/kWh"},
    "energy_storage": _ENERGY,
    "enum": {None},
    "frequency": {"Hz", "kHz", "MHz", "GHz"},
    "gas": {"m³", "ft³", "CCF"},
    "humidity": {"%"},
    "illuminance": {"lx"},
    "irradiance": {"W/m²", "BTU/(h⋅ft²)"},
    "moisture": {"%"},
    "monetary": set(),  # an ISO 4217 currency code
    "nitrogen_dioxide": _MICROGRAMS,
    "nitrogen_monoxide": _MICROGRAMS,
    "nitrous_oxide": _MICROGRAMS,
    "ozone": _MICROGRAMS,
    "ph": {None},
    "pm1": _MICROGRAMS,
    "pm10": _MICROGRAMS,
    "pm25": _MICROGRAMS,
    "power": {"W", "kW", "MW", "GW", "TW"},
    "power_factor": {"%", None},
    "precipitation": {"cm", "in", "mm"},
    "precipitation_intensity": _FLUX,
    "pressure": _PRESSURE,
    "reactive_power": {"var"},
    "signal_strength": {"dB", "dBm"},
    "sound_pressure": {"dB", "dBA"},
    "speed": _SPEED | _FLUX,
    "sulphur_dioxide": _MICROGRAMS,
    "temperature": _TEMPERATURE,
    "temperature_delta": _TEMPERATURE,
    "timestamp": {None},
    "volatile_organic_compounds": _MICROGRAMS,
    "volatile_organic_compounds_parts": {"ppm", "ppb"},
    "voltage": {"V", "mV", "µV", "kV", "MV"},
    "volume": _VOLUME,
    "volume_flow_rate": {"m³/h", "ft³/min", "L/min", "gal/min", "mL/s"},
    "volume_storage": _VOLUME,
    "water": {"m³", "L", "ft³", "CCF", "gal"},
    "weight": {"kg", "g", "mg", "µg", "oz", "lb", "st"},
    "wind_direction": {"°"},
    "wind_speed": _SPEED - {"mm/s", "in/s"},
}
NON_NUMERIC_CLASSES = {"date", "enum", "timestamp"}
STATE_CLASSES = {"measurement", "total", "total_increasing"}
BINARY_SENSOR_DEVICE_CLASSES = {
    "battery",
    "battery_charging",
    "carbon_monoxide",
    "cold",
    "connectivity",
    "door",
    "garage_door",
    "gas",
    "heat",
    "light",
    "lock",
    "moisture",
    "motion",
    "moving",
    "occupancy",
    "opening",
    "plug",
    "power",
    "presence",
    "problem",
    "running",
    "safety",
    "smoke",
    "sound",
    "tamper",
    "update",
    "vibration",
    "window",
}
_TOPIC = re.compile(r"^[^#+\x00]+$")
_JINJA = jinja2.Environment(autoescape=False)  # renders JSON values, not HTML


def _problems_of_template(where: str, template: object) -> list[str]:
    if not isinstance(template, str):
        return [f"{where} is not a string"]
    try:
        _JINJA.parse(template)
    except jinja2.TemplateSyntaxError as exc:
        return [f"{where} is no Jinja template: {exc}"]
    return []


def check_config(component: str, config: Mapping[str, Any]) -> list[str]:
    """What Home Assistant would refuse in a `sensor` or `binary_sensor` discovery config."""
    problems: list[str] = []
    keys = SENSOR_KEYS if component == "sensor" else BINARY_SENSOR_KEYS
    problems += [f"unknown key {key!r}" for key in sorted(set(config) - keys)]
    topic = config.get("state_topic")
    if not isinstance(topic, str) or not _TOPIC.fullmatch(topic):
        problems.append(f"state_topic {topic!r} is required, a topic without wildcards")
    device = config.get("device")
    if device is not None:
        if not isinstance(config.get("unique_id"), str):
            problems.append("a config with a device needs a unique_id")
        problems += [f"unknown device key {k!r}" for k in sorted(set(device) - DEVICE_KEYS)]
        if not device.get("identifiers") and not device.get("connections"):
            problems.append("a device needs identifiers or connections")
    origin = config.get("origin")
    if origin is not None:
        problems += [f"unknown origin key {k!r}" for k in sorted(set(origin) - ORIGIN_KEYS)]
        if not isinstance(origin.get("name"), str):
            problems.append("origin needs a name")
    for key in ("value_template", "json_attributes_template"):
        if key in config:
            problems += _problems_of_template(key, config[key])
    if "json_attributes_template" in config and "json_attributes_topic" not in config:
        problems.append("json_attributes_template without json_attributes_topic")
    problems += _availability_problems(config)
    if "expire_after" in config and not (
        isinstance(config["expire_after"], int) and config["expire_after"] > 0
    ):
        problems.append(f"expire_after {config['expire_after']!r} is not a positive integer")
    if config.get("entity_category") not in (None, "diagnostic"):
        problems.append(f"entity_category {config['entity_category']!r} is not for sensors")
    if component == "sensor":
        problems += _sensor_problems(config)
    else:
        device_class = config.get("device_class")
        if device_class is not None and device_class not in BINARY_SENSOR_DEVICE_CLASSES:
            problems.append(f"binary_sensor device_class {device_class!r} does not exist")
    return problems


def _availability_problems(config: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    if "availability" in config and "availability_topic" in config:
        problems.append("availability and availability_topic cannot be used together")
    for entry in config.get("availability", []):
        problems += [
            f"unknown availability key {k!r}" for k in sorted(set(entry) - AVAILABILITY_KEYS)
        ]
        if not isinstance(entry.get("topic"), str) or not _TOPIC.fullmatch(entry["topic"]):
            problems.append(f"availability topic {entry.get('topic')!r} is required")
        if "value_template" in entry:
            problems += _problems_of_template(
                "availability value_template", entry["value_template"]
            )
    if config.get("availability_mode", "latest") not in ("all", "any", "latest"):
        problems.append(f"availability_mode {config['availability_mode']!r}")
    return problems


def _sensor_problems(config: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    device_class = config.get("device_class")
    unit = config.get("unit_of_measurement")
    state_class = config.get("state_class")
    if device_class is not None:
        if device_class not in SENSOR_DEVICE_CLASSES:
            problems.append(f"sensor device_class {device_class!r} does not exist")
        elif unit not in SENSOR_DEVICE_CLASSES[device_class]:
            problems.append(f"{unit!r} is not a unit of device_class {device_class!r}")
        if device_class in NON_NUMERIC_CLASSES and state_class is not None:
            problems.append(f"device_class {device_class!r} takes no state_class")
    if state_class is not None and state_class not in STATE_CLASSES:
        problems.append(f"state_class {state_class!r} does not exist")
    precision = config.get("suggested_display_precision")
    if precision is not None and not (isinstance(precision, int) and precision >= 0):
        problems.append(f"suggested_display_precision {precision!r}")
    return problems


def test_the_validator_refuses_what_home_assistant_refuses() -> None:
    """The check can fail: each of these breaks one documented rule."""
    good = {
        "state_topic": "a/b",
        "unique_id": "x",
        "device": {"identifiers": ["x"]},
        "device_class": "temperature",
        "unit_of_measurement": "°C",
        "state_class": "measurement",
    }
    assert check_config("sensor", good) == []
    broken: list[dict[str, Any]] = [
        {**good, "unit_of_measurement": "%RH"},
        {**good, "device_class": "humidity"},
        {**good, "device_class": "barometric"},
        {**good, "state_class": "average"},
        {**good, "colour": "red"},
        {**good, "state_topic": "a/#"},
        {**good, "device": {"name": "no id"}},
        {**good, "unique_id": None},
        {**good, "value_template": "{{ value_json['values'] "},
        {**good, "availability": [{"payload_available": "online"}]},
        {**good, "expire_after": 0},
    ]
    for config in broken:
        assert check_config("sensor", config), config
    assert check_config("binary_sensor", {"state_topic": "a", "device_class": "contact"})


# -- configs of every driver's quantities ------------------------------------------------------


def _render(template: str, payload: bytes | Mapping[str, Any]) -> str:
    value = json.loads(payload) if isinstance(payload, bytes) else payload
    return _JINJA.from_string(template).render(value_json=value)


def _by_topic(configs: Mapping[str, bytes]) -> dict[str, dict[str, Any]]:
    return {topic: json.loads(payload) for topic, payload in configs.items()}


def _component(topic: str) -> str:
    return topic.split("/")[-4]


def test_every_quantity_of_every_driver_has_a_config_home_assistant_accepts() -> None:
    builder = Discovery(Topics(), "homeassistant", GATEWAY_ORIGIN, "1.0")
    sensors = {name: SensorSettings(driver=name) for name in DRIVERS}
    configs = _by_topic(builder.configs(DeviceDescription("pi-1", sensors, site="lab")))
    expected = {
        f"homeassistant/{entity_kind(q).component}/pi-1/{name}-{q.name}/config"
        for name in DRIVERS
        for q in reading_quantities(name)
    } | {"homeassistant/binary_sensor/pi-1/connectivity/config"}
    assert set(configs) == expected
    for topic, config in configs.items():
        assert check_config(_component(topic), config) == [], topic
    unique_ids = [config["unique_id"] for config in configs.values()]
    assert len(set(unique_ids)) == len(unique_ids)
    temperature = configs["homeassistant/sensor/pi-1/bme280-temperature/config"]
    assert temperature["device_class"] == "temperature"
    assert temperature["unit_of_measurement"] == "°C"
    assert temperature["device"]["suggested_area"] == "lab"
    humidity = configs["homeassistant/sensor/pi-1/sht3x-humidity/config"]
    assert (humidity["device_class"], humidity["unit_of_measurement"]) == ("humidity", "%")
    motion = configs["homeassistant/binary_sensor/pi-1/pir-motion/config"]
    assert motion["device_class"] == "motion"


@pytest.mark.parametrize("name", sorted(VOCABULARY))
def test_every_vocabulary_quantity_maps_to_a_class_with_its_unit_or_to_none(name: str) -> None:
    """Each quantity's class accepts its unit; a quantity unknown to the table gets no class
    and keeps its own unit (Home Assistant accepts any unit without a class)."""
    kind = entity_kind(measured(name))
    if kind.component == "binary_sensor":
        assert kind.device_class in (None, *BINARY_SENSOR_DEVICE_CLASSES)
    elif kind.device_class is not None:
        assert kind.unit in SENSOR_DEVICE_CLASSES[kind.device_class]
    unknown = entity_kind(Quantity("co2", "ppm"))
    assert (unknown.device_class, unknown.unit) == (None, "ppm")


def _reading(device: str, sensor: str, values: Mapping[str, float]) -> dict[str, Any]:
    return Telemetry.from_builtins(
        {
            "v": 1,
            "device": device,
            "sensor": sensor,
            "ts": 1.0,
            "seq": 1,
            "source": "simulated",
            "values": {q: {"value": v, "unit": "x"} for q, v in values.items()},
        }
    ).to_builtins()


@pytest.mark.parametrize("template", ["sensors/{device_id}", "sensors/data"])
def test_on_a_shared_topic_each_entity_takes_only_its_own_stream(template: str) -> None:
    """Home Assistant ignores an empty template result: other streams' readings on the topic
    leave the entity as it was."""
    builder = Discovery(Topics(telemetry_template=template), "homeassistant", AGENT_ORIGIN, "1")
    sensors = {
        "env": SensorSettings(driver="bme280"),
        "air": SensorSettings(driver="sht3x"),
    }
    configs = _by_topic(builder.configs(DeviceDescription("pi-1", sensors)))
    env = configs["homeassistant/sensor/pi-1/env-temperature/config"]
    assert env["state_topic"] == Topics(telemetry_template=template).telemetry("pi-1", "env")
    assert "json_attributes_topic" not in env
    assert _render(env["value_template"], _reading("pi-1", "env", {"temperature": 20.5})) == "20.5"
    assert _render(env["value_template"], _reading("pi-1", "air", {"temperature": 30.0})) == ""
    assert _render(env["value_template"], _reading("pi-2", "env", {"temperature": 9.0})) == (
        "9.0" if "{device_id}" in template else ""
    )
    assert _render(env["value_template"], {"device_id": "pi-1", "temperature": 1.0}) == ""


def test_binary_quantities_render_on_and_off() -> None:
    builder = Discovery(Topics(), "homeassistant", AGENT_ORIGIN, "1")
    sensors = {"hall": SensorSettings(driver="pir", pins={"pin": 4})}
    config = _by_topic(builder.configs(DeviceDescription("pi-1", sensors)))[
        "homeassistant/binary_sensor/pi-1/hall-motion/config"
    ]
    assert _render(config["value_template"], _reading("pi-1", "hall", {"motion": 1.0})) == "ON"
    assert _render(config["value_template"], _reading("pi-1", "hall", {"motion": 0.0})) == "OFF"


def test_outputs_are_switches_and_numbers_set_through_the_twin() -> None:
    builder = Discovery(Topics(), "homeassistant", GATEWAY_ORIGIN, "1")
    outputs = {
        "relay": OutputSettings(driver="digital_output", pin=17, value=1),
        "fan-1": OutputSettings(driver="pca9685", channel=2, value=0.4),
    }
    configs = _by_topic(builder.configs(DeviceDescription("pi-1", {}, outputs=outputs)))
    switch = configs["homeassistant/switch/pi-1/output-relay/config"]
    number = configs["homeassistant/number/pi-1/output-fan-1/config"]
    assert switch["command_topic"] == "edgetwin/pi-1/outputs/relay/set"
    assert number["command_topic"] == "edgetwin/pi-1/outputs/fan-1/set"
    assert switch["state_topic"] == number["state_topic"] == "edgetwin/pi-1/config/reported"
    assert (switch["payload_on"], switch["payload_off"]) == ("1", "0")
    assert (number["min"], number["max"], number["step"]) == (0.0, 1.0, 1 / 4096)
    applied = {"outputs": {"relay": {"value": 1.0}, "fan-1": {"value": 0.4}}}
    assert _render(switch["value_template"], applied) == "ON"
    assert _render(number["value_template"], applied) == "0.4"
    # A report without outputs, or with one that could not be opened, is no value.
    for report in ({}, {"outputs": {"relay": {"value": None}}}):
        assert _render(switch["value_template"], report) == "OFF"
        assert _render(number["value_template"], report) == "0"
    for config in (switch, number):
        assert config["unique_id"].startswith("edgetwin:pi-1:output:")
        assert config["origin"]["name"] == GATEWAY_ORIGIN


# -- on a real broker ---------------------------------------------------------------------------


def _configs_of(capture: Capture, device: str) -> dict[str, Message]:
    """The last message on each discovery topic of `device`, deletions included."""
    latest: dict[str, Message] = {}
    for message in capture.messages(f"homeassistant/+/{device}/+/config"):
        latest[message.topic] = message
    return latest


def _retained_now(endpoint: MqttEndpoint, device: str) -> dict[str, dict[str, Any]]:
    """What a subscriber arriving now gets: the retained configs of `device`. A probe published
    after the subscription comes after every retained message the broker queued for it."""
    probe = f"probe/{uuid.uuid4().hex}"
    with Capture(endpoint, [f"homeassistant/+/{device}/+/config", probe]) as late:
        publish(endpoint, probe, b"done")
        late.wait_for(probe)
        return {
            m.topic: json.loads(m.payload)
            for m in late.messages(f"homeassistant/+/{device}/+/config")
            if m.payload
        }


def _wait_configs(capture: Capture, device: str, predicate: Any, timeout: float = 10) -> None:
    capture.wait_for(lambda m: predicate(_configs_of(capture, device)), timeout=timeout)


@pytest.mark.integration
def test_agent_publishes_configs_whose_templates_read_its_readings(
    broker: Broker, edgetwin_agent: AgentFactory
) -> None:
    device = "ha-pi"
    with Capture(broker.endpoint, ["homeassistant/#", f"edgetwin/{device}/telemetry/+"]) as sub:
        agent = edgetwin_agent(
            {
                "agent": {"device_id": device},
                "homeassistant": {"enabled": True},
                "sensors": {"env": {"driver": "bme280", "address": 0x76, "interval": 0.2}},
            }
        )
        topics = {
            f"homeassistant/sensor/{device}/env-{q}/config"
            for q in ("temperature", "humidity", "pressure")
        } | {f"homeassistant/binary_sensor/{device}/connectivity/config"}
        _wait_configs(sub, device, lambda got: topics <= set(got))
        configs = {t: json.loads(m.payload) for t, m in _configs_of(sub, device).items()}
        assert set(configs) == topics
        for topic, config in configs.items():
            assert check_config(_component(topic), config) == [], topic
            assert config["origin"]["name"] == AGENT_ORIGIN
            assert config["device"]["sw_version"] == agent.agent.version
            assert config["device"]["model"] == "BME280"
        reading_message = sub.wait_for(f"edgetwin/{device}/telemetry/env")[-1]
        reading = reading_message.telemetry()
        for quantity, value in reading.values.items():
            config = configs[f"homeassistant/sensor/{device}/env-{quantity}/config"]
            assert config["state_topic"] == reading_message.topic
            assert float(_render(config["value_template"], reading_message.payload)) == value.value
            attributes = json.loads(
                _render(config["json_attributes_template"], reading_message.payload)
            )
            assert attributes["source"] == "emulated"
        presence = configs[f"homeassistant/binary_sensor/{device}/connectivity/config"]
        birth = agent.status()
        assert birth is not None
        assert _render(presence["value_template"], birth.encode()) == presence["payload_on"]
        availability = configs[f"homeassistant/sensor/{device}/env-pressure/config"]["availability"]
        assert _render(availability[0]["value_template"], birth.encode()) == "online"

        # A new sensor set from the gateway: the removed sensor's configs are deleted.
        publish(
            broker.endpoint,
            f"edgetwin/{device}/config/desired",
            DesiredConfig(
                device=device,
                version=1,
                sensors={
                    "light": SensorSettings(
                        driver="bh1750", address=0x23, backend=SensorBackend.EMULATED
                    )
                },
            ).encode(),
            retain=True,
        )
        light = f"homeassistant/sensor/{device}/light-illuminance/config"
        _wait_configs(
            sub,
            device,
            lambda got: light in got and all(not got[t].payload for t in topics if "/env-" in t),
        )
    retained = _retained_now(broker.endpoint, device)
    assert set(retained) == {light, f"homeassistant/binary_sensor/{device}/connectivity/config"}
    assert retained[light]["device_class"] == "illuminance"
    assert retained[light]["unit_of_measurement"] == "lx"


@pytest.mark.integration
def test_gateway_flags_simulated_devices_and_deletes_their_configs_with_the_device(
    broker: Broker, edgetwin_gateway: GatewayFactory
) -> None:
    device = "ha-sim"
    with Capture(broker.endpoint, ["homeassistant/#", f"edgetwin/{device}/#"]) as sub:
        gateway = edgetwin_gateway(
            [
                {
                    "id": device,
                    "site": "greenhouse",
                    "sensors": {"env": {"driver": "sht3x", "interval": 0.2}},
                }
            ],
            config={"homeassistant": {"enabled": True}},
        )
        topics = {
            f"homeassistant/sensor/{device}/env-temperature/config",
            f"homeassistant/sensor/{device}/env-humidity/config",
            f"homeassistant/binary_sensor/{device}/connectivity/config",
        }
        _wait_configs(sub, device, lambda got: topics <= set(got))
        configs = {t: json.loads(m.payload) for t, m in _configs_of(sub, device).items()}
        for topic, config in configs.items():
            assert check_config(_component(topic), config) == [], topic
            assert config["origin"]["name"] == GATEWAY_ORIGIN
            assert config["device"]["suggested_area"] == "greenhouse"
            assert config["device"]["model"] == "SHT3x"
            assert config["device"]["manufacturer"] == "Sensirion"
        temperature = configs[f"homeassistant/sensor/{device}/env-temperature/config"]
        assert temperature["name"] == "env temperature (simulated)"
        message = sub.wait_for(f"edgetwin/{device}/telemetry/env")[-1]
        reading = message.telemetry()
        assert reading.source == "simulated"
        rendered = _render(temperature["value_template"], message.payload)
        assert float(rendered) == reading.values["temperature"].value
        attributes = json.loads(_render(temperature["json_attributes_template"], message.payload))
        assert attributes == {"source": "simulated", "seq": reading.seq, "anomaly": None}
        # The agent is absent, and the entity is available all the same: the twin says the
        # simulation serves the stream.
        twin = sub.wait_for(f"edgetwin/{device}/twin", lambda m: bool(m.payload))[-1]
        availability = temperature["availability"]
        assert _render(availability[1]["value_template"], twin.payload) == "online"

        gateway.client.delete_device(device)
        _wait_configs(sub, device, lambda got: all(not got[t].payload for t in topics))
    assert _retained_now(broker.endpoint, device) == {}


@pytest.mark.integration
def test_with_both_enabled_the_gateway_owns_the_configs_and_unflags_a_live_agent(
    broker: Broker, edgetwin_gateway: GatewayFactory, edgetwin_agent: AgentFactory
) -> None:
    """One writer per retained topic: the agent stands back from a gateway's configs, and the
    gateway's say the stream is no longer simulated once the agent serves it."""
    device = "ha-both"
    enabled = {"homeassistant": {"enabled": True}}
    with Capture(broker.endpoint, ["homeassistant/#"]) as sub:
        edgetwin_gateway(
            [{"id": device, "sensors": {"env": {"driver": "bme280", "interval": 0.2}}}],
            config=enabled,
        )
        topic = f"homeassistant/sensor/{device}/env-temperature/config"
        _wait_configs(sub, device, lambda got: topic in got)
        agent = edgetwin_agent(
            {
                "agent": {"device_id": device},
                **enabled,
                "sensors": {"env": {"driver": "bme280", "address": 0x76, "interval": 0.2}},
            }
        )
        _wait_configs(
            sub,
            device,
            lambda got: (
                topic in got and json.loads(got[topic].payload)["name"] == "env temperature"
            ),
        )
        # The agent's turn: once it has looked at its node after its connection's grace.
        discovery = agent.agent.discovery
        assert discovery is not None
        poll(
            lambda: discovery.connection == agent.agent.link.connect_count and not discovery.due,
            timeout=10,
            what="the agent's discovery decision",
        )
        assert discovery.yielded
    retained = _retained_now(broker.endpoint, device)
    assert retained
    assert {config["origin"]["name"] for config in retained.values()} == {GATEWAY_ORIGIN}
    assert {json.loads(m.payload)["origin"]["name"] for m in sub.messages() if m.payload} == {
        GATEWAY_ORIGIN
    }
    assert retained[topic]["device"]["sw_version"] == agent.agent.version


@pytest.mark.integration
def test_disabled_by_default_nothing_is_published(
    broker: Broker, edgetwin_gateway: GatewayFactory, edgetwin_agent: AgentFactory
) -> None:
    device = "ha-off"
    with Capture(broker.endpoint, ["homeassistant/#", f"edgetwin/{device}/#"]) as sub:
        edgetwin_gateway([{"id": device, "sensors": {"env": {"driver": "bme280"}}}])
        sub.wait_for(f"edgetwin/{device}/twin")
        edgetwin_agent({"agent": {"device_id": device}, **_bme280(0.2)})
        # Well past the agent's retained grace after its connection, and the gateway's
        # reconcile that follows its birth.
        first = sub.wait_for(f"edgetwin/{device}/telemetry/env", lambda m: "emulated" in m.text)
        sub.wait_for(
            f"edgetwin/{device}/telemetry/env",
            lambda m: m.received_at > first[0].received_at + 1.5,
        )
        assert sub.messages("homeassistant/#") == []


def _bme280(interval: float) -> dict[str, Any]:
    return {"sensors": {"env": {"driver": "bme280", "address": 0x76, "interval": interval}}}


@pytest.mark.integration
def test_under_the_broker_acl_an_agent_and_the_gateway_may_write_their_configs(
    broker_factory: BrokerFactory,
    edgetwin_gateway: GatewayFactory,
    edgetwin_agent: AgentFactory,
) -> None:
    """`edgetwin broker-acl` lets a device write and read back its own node's configs, the
    gateway write any device's, and the reader (Home Assistant's identity) read them."""
    acl = broker_factory(acl_devices=["ha-acl", "ha-acl-sim"])
    with Capture(acl.reader_endpoint, ["homeassistant/#"]) as sub:
        agent = edgetwin_agent(
            {"agent": {"device_id": "ha-acl"}, "homeassistant": {"enabled": True}, **_bme280(1)},
            broker=acl,
        )
        own = "homeassistant/sensor/ha-acl/env-temperature/config"
        sub.wait_for(own)
        discovery = agent.agent.discovery
        assert discovery is not None
        poll(lambda: own in discovery.retained, timeout=10, what="the agent's config read back")
        edgetwin_gateway(
            [{"id": "ha-acl-sim", "sensors": {"env": {"driver": "bme280"}}}],
            broker=acl,
            config={"homeassistant": {"enabled": True}},
        )
        sub.wait_for("homeassistant/sensor/ha-acl-sim/env-temperature/config")
    assert agent.agent.link.rejected == 0


@pytest.mark.integration
def test_a_switch_sets_an_output_through_the_twin_and_shows_what_was_applied(
    broker: Broker, edgetwin_gateway: GatewayFactory
) -> None:
    """Home Assistant's switch publishes ON on the output's set topic: the gateway makes it the
    next desired version, the device (here simulated by the gateway) applies it, and the
    reported document the switch reads says ON. A value the output refuses changes nothing."""
    device = "ha-heater"
    relay = {"driver": "digital_output", "pin": 17, "value": 0}
    config_topic = f"homeassistant/switch/{device}/output-heater/config"
    with Capture(broker.endpoint, ["homeassistant/#", f"edgetwin/{device}/#"]) as sub:
        gateway = edgetwin_gateway(
            [{"id": device, "sensors": {"env": {"driver": "sht3x", "interval": 0.5}}}],
            config={"homeassistant": {"enabled": True}},
        )
        version = 0  # none yet
        gateway.client.put_desired(
            device, {"env": {"driver": "sht3x", "interval": 0.5}}, if_match=version,
            outputs={"heater": relay},
        )  # fmt: skip
        _wait_configs(sub, device, lambda got: config_topic in got)
        switch = json.loads(_configs_of(sub, device)[config_topic].payload)
        reported = Topics().reported(device)
        sub.wait_for(reported, lambda m: _render(switch["value_template"], m.payload) == "OFF")

        publish(broker.endpoint, switch["command_topic"], switch["payload_on"].encode())
        sub.wait_for(reported, lambda m: _render(switch["value_template"], m.payload) == "ON")
        desired, after = gateway.client.desired(device)
        assert after == version + 2
        assert desired["outputs"]["heater"]["value"] == 1

        publish(broker.endpoint, switch["command_topic"], b"2")  # a relay takes 0 or 1
        publish(broker.endpoint, switch["command_topic"], switch["payload_off"].encode())
        sub.wait_for(reported, lambda m: _render(switch["value_template"], m.payload) == "OFF")
        assert gateway.client.desired(device)[1] == version + 3, "the refused value made none"
