"""`edgetwin config check FILE`: validate a config as its program would, and say what it runs.

The file's program is told by its sections: `[agent]`, `[outbox]` or `[sensors]` make an
agent's file; anything else is the gateway's, in edgetwin's format or either of the original
simulator's. Validation is the program's own loader, environment overrides included, so a
file that passes here starts; one that does not gets the program's one line and exit 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from edgetwin.agent.config import (
    EXIT_CONFIG,
    ConfigError,
    MqttSettings,
    load_for_program,
    read_toml,
)

if TYPE_CHECKING:
    from edgetwin.agent.config import AgentConfig
    from edgetwin.gateway.config import GatewayConfig

_AGENT_SECTIONS = frozenset({"agent", "outbox", "sensors"})
_LISTED = 5  # ids shown before "..."
PROGRAM = "config check"


def is_agent_file(document: dict[str, object]) -> bool:
    return bool(_AGENT_SECTIONS & document.keys())


def check_config(path: Path) -> int:
    try:
        agent = is_agent_file(read_toml(path))
    except ConfigError as exc:
        print(f"edgetwin {PROGRAM}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    # load_for_program, as the programs start: its `log_config` is applied too (dictConfig is
    # the only full check of such a file), and an error is their one line.
    lines: list[tuple[str, str]]
    if agent:
        from edgetwin.agent.config import load_agent_config

        agent_config = load_for_program(load_agent_config, path, PROGRAM)
        if agent_config is None:
            return EXIT_CONFIG
        lines = describe_agent(agent_config)
    else:
        from edgetwin.gateway.config import load_gateway_config

        gateway_config = load_for_program(load_gateway_config, path, PROGRAM)
        if gateway_config is None:
            return EXIT_CONFIG
        lines = describe_gateway(gateway_config)
    print(f"{path}: valid")
    for name, text in lines:
        print(f"  {name:<10} {text}")
    return 0


def _broker(mqtt: MqttSettings) -> str:
    who = "anonymous"
    if mqtt.username is not None:
        who = f"user {mqtt.username}, " + ("password set" if mqtt.password else "no password")
    tls = ""
    if mqtt.tls is not None:
        tls = f", CA {mqtt.tls.ca_file}" if mqtt.tls.ca_file else ", system CAs"
    topic = f", topic {mqtt.topic}" if mqtt.topic else ""
    return f"{mqtt.url} (MQTT {mqtt.protocol}, {who}{tls}), prefix {mqtt.prefix}{topic}"


def _ids(ids: list[str]) -> str:
    shown = ", ".join(ids[:_LISTED])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > _LISTED else "")


def describe_agent(config: AgentConfig) -> list[tuple[str, str]]:
    sensors = [
        f"{name} ({s.driver}, {s.backend.value}, every {s.interval:g} s)"
        + ("" if s.enabled else " disabled")
        for name, s in config.sensors.items()
    ]
    outbox = config.outbox
    return [
        ("program", "edgetwin agent"),
        ("device", config.agent.device_id),
        ("broker", _broker(config.mqtt)),
        ("sensors", f"{len(sensors)}: " + "; ".join(sensors) if sensors else "none"),
        (
            "outbox",
            f"{outbox.max_messages} messages or {outbox.max_bytes // (1024 * 1024)} MiB while "
            f"offline; state in {config.agent.state_dir or 'the default state directory'}",
        ),
    ]


def describe_gateway(config: GatewayConfig) -> list[tuple[str, str]]:
    from edgetwin.gateway.config import StartDevices, StartScenario

    plan = config.fleet_plan()
    formats = {
        "simulator": "the original simulator's README format ([simulator])",
        "simulation": "the original simulator's code format ([simulation])",
    }
    if isinstance(plan.launch, StartDevices):
        ids = plan.launch_ids()
        named = ids[0] if len(ids) == 1 else f"{ids[0]} ... {ids[-1]}"
        fleet = f"{plan.launch.count} devices at launch ({named}), every {plan.interval:g} s"
    elif isinstance(plan.launch, StartScenario):
        fleet = f"the scenario {plan.launch.name} at launch"
    else:
        fleet = "none at launch"
    fleet += f", from {plan.describe()}" if plan.section else ""
    control = (
        f"/start, /scale, /stop control it (up to {plan.max_devices} devices)"
        if plan.routes
        else "the /engine routes steer it"
    )
    api = config.api
    if api.token is not None:
        writes = "token set"
    elif api.local_no_auth:
        writes = "writes without a token (loopback only)"
    else:
        writes = "no token: writes refused"
    engine = config.engine
    manifest = [device.id for device in config.manifest()]
    return [
        ("program", "edgetwin gateway, " + formats.get(plan.section or "", "edgetwin's format")),
        ("API", f"http://{config.server.host}:{config.server.port} ({writes})"),
        ("broker", _broker(config.mqtt)),
        ("manifest", f"{len(manifest)} devices: {_ids(manifest)}" if manifest else "no devices"),
        ("fleet", f"{fleet}; {control}; QoS {plan.qos}, {plan.payload} payload"),
        (
            "engine",
            f"workers {engine.workers} (at most {engine.max_workers}), up to "
            f"{engine.max_devices} devices"
            + (f"; plays shard {engine.shard} of each /engine fleet" if engine.shard else ""),
        ),
    ]
