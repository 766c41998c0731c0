"""Config files: strict keys, errors that name file and key, environment overrides."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edgetwin.agent.config import ConfigError, TlsSettings, load_agent_config
from edgetwin.gateway.config import (
    FleetPlan,
    IdScheme,
    StartDevices,
    StartScenario,
    load_gateway_config,
)

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "conf.toml"
    path.write_text(text)
    return path


def test_shipped_examples_load() -> None:
    agent = load_agent_config(REPO / "config" / "agent.toml", environ={})
    assert agent.agent.device_id == "greenhouse-01"
    assert agent.sensors["env"].address == 0x76
    gateway = load_gateway_config(REPO / "config" / "gateway.toml", environ={})
    assert [d.id for d in gateway.manifest()] == ["greenhouse-01", "greenhouse-02"]
    # The [simulator] devices are the engine's fleet from the start, not twins.
    plan = gateway.fleet_plan()
    assert plan.launch_ids() == ["sim-000", "sim-001", "sim-002"]
    assert plan.interval == 5
    # The broker is the trust boundary: the examples speak TLS to its ACL'd listener.
    for mqtt in (agent.mqtt, gateway.mqtt):
        assert (mqtt.port, mqtt.tls) == (8883, TlsSettings())


def test_seed_simulator_config_runs_unchanged() -> None:
    config = load_gateway_config(REPO / "config" / "simulator.toml", environ={})
    assert config.manifest() == []
    plan = config.fleet_plan()
    assert plan.launch_ids() == [f"device_{i:03d}" for i in range(10)]
    assert plan.interval == 2
    assert config.mqtt.topics().telemetry("device_000", "env") == "sensors/device_000"
    assert config.mqtt.qos == 0
    assert config.observability.service_name == "simulator"
    assert config.observability.prometheus_port == 8000


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[simulator]\ndevice_count = 2\npublish_intervall = 3\n")
    with pytest.raises(ConfigError) as info:
        load_gateway_config(path, environ={})
    assert str(path) in str(info.value)
    assert "simulator.publish_intervall" in str(info.value)
    assert "unknown key" in str(info.value)


def test_wrong_type_names_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[agent]\ndevice_id = "pi"\n[mqtt]\nport = "lots"\n')
    with pytest.raises(ConfigError, match=r"key 'mqtt\.port'"):
        load_agent_config(path, environ={})


def test_bad_device_id_refused(tmp_path: Path) -> None:
    path = write(tmp_path, '[agent]\ndevice_id = "Pi 01"\n')
    with pytest.raises(ConfigError, match=r"agent\.device_id"):
        load_agent_config(path, environ={})


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_agent_config(write(tmp_path, "[agent\n"), environ={})
    with pytest.raises(ConfigError, match="no such file"):
        load_agent_config(tmp_path / "absent.toml", environ={})


def test_environment_overrides_broker_and_secrets(tmp_path: Path) -> None:
    path = write(tmp_path, '[agent]\ndevice_id = "pi"\n[mqtt]\nhost = "file-host"\n')
    config = load_agent_config(
        path,
        environ={
            "EDGETWIN_MQTT_HOST": "env-host",
            "EDGETWIN_MQTT_PORT": "1884",
            "EDGETWIN_MQTT_USERNAME": "pi",
            "EDGETWIN_MQTT_PASSWORD": "s3cret",
        },
    )
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.username) == ("env-host", 1884, "pi")
    assert config.mqtt.password is not None
    assert config.mqtt.password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(config)


def test_bad_environment_value_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, '[agent]\ndevice_id = "pi"\n')
    with pytest.raises(ConfigError, match=r"mqtt\.port"):
        load_agent_config(path, environ={"EDGETWIN_MQTT_PORT": "not-a-port"})


def test_two_fleets_at_launch_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "[simulator]\ndevice_count = 2\n[engine]\nstart_devices = 5\n")
    with pytest.raises(ConfigError, match="one fleet at a time"):
        load_gateway_config(path, environ={})


def test_duplicate_manifest_ids_refused(tmp_path: Path) -> None:
    path = write(tmp_path, '[simulator]\ndevice_count = 2\n[[devices]]\nid = "device_001"\n')
    with pytest.raises(ConfigError, match="appears twice"):
        load_gateway_config(path, environ={})


# --- one model of the gateway's fleet: every input format loads into a FleetPlan ----------


def plan_of(tmp_path: Path, text: str) -> FleetPlan:
    return load_gateway_config(write(tmp_path, text), environ={}).fleet_plan()


def test_readme_format_loads_into_a_fleet_run_from_the_start(tmp_path: Path) -> None:
    """`[simulator]`: its devices start with the gateway, the routes control them, with the
    original's per-device metric and `[mqtt]`'s qos and payload."""
    plan = plan_of(
        tmp_path,
        '[simulator]\ndevice_count = 3\npublish_interval = 0.5\ndevice_prefix = "sim-"\n'
        'seed = 7\n[mqtt]\nqos = 0\npayload = "flat"\n[engine]\nqos = 1\nworkers = 0\n',
    )
    assert plan == FleetPlan(
        section="simulator",
        launch=StartDevices(3),
        ids=IdScheme("sim-", 3),
        interval=0.5,
        seed=7,
        max_devices=100,
        routes=True,
        per_device_metric=True,
        qos=0,
        payload="flat",
    )
    assert plan.launch_ids() == ["sim-000", "sim-001", "sim-002"]
    # More than 100 devices raise the routes' cap to device_count, and widen the ids with it.
    big = plan_of(tmp_path, "[simulator]\ndevice_count = 1500\n")
    assert (big.max_devices, big.ids, big.interval) == (1500, IdScheme("device_", 4), 2.0)
    assert big.launch_ids()[0] == "device_0000"
    assert big.launch_ids()[-1] == "device_1499"
    # No device_count: the routes' group of the README format, nothing at launch.
    idle = plan_of(tmp_path, "[simulator]\npublish_interval = 3\n")
    assert (idle.section, idle.launch, idle.routes, idle.interval) == ("simulator", None, True, 3)


def test_the_originals_readme_file_loads_into_its_plan() -> None:
    config = load_gateway_config(REPO / "config" / "simulator.toml", environ={})
    assert config.fleet_plan() == FleetPlan(
        section="simulator",
        launch=StartDevices(10),
        ids=IdScheme("device_", 3),
        interval=2.0,
        seed=0,
        max_devices=100,
        routes=True,
        per_device_metric=True,
        qos=0,
        payload="edgetwin",
    )


def test_code_format_loads_into_a_fleet_the_routes_start() -> None:
    """`[simulation]`: nothing at launch; /start?count=N starts device_000..., every
    frequency_sec, up to max_devices."""
    config = load_gateway_config(REPO / "config" / "simulator-code.toml", environ={})
    assert config.fleet_plan() == FleetPlan(
        section="simulation",
        launch=None,
        ids=IdScheme("device_", 3),
        interval=1.0,
        seed=0,
        max_devices=100,
        routes=True,
        per_device_metric=True,
        qos=0,
        payload="edgetwin",
    )


def test_engine_start_devices_loads_into_an_engine_fleet_from_the_start(tmp_path: Path) -> None:
    """`[engine] start_devices`: an /engine fleet at launch, with `[engine]`'s qos and
    payload; the routes do not control it and it has no per-device metric."""
    plan = plan_of(
        tmp_path,
        "[mqtt]\nqos = 0\n"
        '[engine]\nstart_devices = 4\nstart_interval = 0.2\nqos = 1\npayload = "flat"\n',
    )
    assert plan == FleetPlan(
        section="engine",
        launch=StartDevices(4),
        ids=IdScheme("device_", 3),
        interval=0.2,
        seed=0,
        max_devices=200_000,
        routes=False,
        per_device_metric=False,
        qos=1,
        payload="flat",
    )
    assert plan.describe() == "[engine] start_devices"
    assert plan_of(tmp_path, "[engine]\nstart_devices = 1001\n").launch_ids()[-1] == "device_1000"


def test_engine_start_scenario_loads_into_an_engine_fleet_from_a_file(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path, f'[engine]\nscenarios_dir = "{tmp_path}"\nstart_scenario = "day.toml"\n'
    )
    assert (plan.section, plan.launch, plan.routes, plan.per_device_metric) == (
        "engine",
        StartScenario("day.toml"),
        False,
        False,
    )
    assert (plan.qos, plan.payload) == (0, "edgetwin")  # [engine]'s defaults
    assert plan.launch_ids() == []  # the file names its devices
    assert plan.describe() == "[engine] start_scenario"


def test_no_fleet_section_loads_into_a_plan_with_nothing_at_launch(tmp_path: Path) -> None:
    """No section describes a fleet: nothing at launch; the routes start the README
    format's default devices, without the original's per-device metric."""
    assert plan_of(tmp_path, '[mqtt]\nhost = "broker"\n') == FleetPlan(
        section=None,
        launch=None,
        ids=IdScheme("device_", 3),
        interval=2.0,
        seed=0,
        max_devices=100,
        routes=True,
        per_device_metric=False,
        qos=1,
        payload="edgetwin",
    )


@pytest.mark.parametrize(
    ("text", "first", "second"),
    [
        (
            "[simulator]\ndevice_count = 10\n[simulation]\nmax_devices = 5\n",
            "[simulator]",
            "[simulation]",
        ),
        (
            "[simulator]\ndevice_count = 2\n[engine]\nstart_devices = 5\n",
            "[simulator]",
            "[engine] start_devices",
        ),
        (
            "[simulator]\npublish_interval = 1\n[engine]\nstart_devices = 5\n",
            "[simulator]",
            "[engine] start_devices",
        ),
        (
            "[simulation]\nfrequency_sec = 1.0\n[engine]\nstart_devices = 5\n",
            "[simulation]",
            "[engine] start_devices",
        ),
        (
            '[simulation]\n[engine]\nscenarios_dir = "."\nstart_scenario = "a.toml"\n',
            "[simulation]",
            "[engine] start_scenario",
        ),
    ],
)
def test_two_sections_describing_the_fleet_are_refused(
    tmp_path: Path, text: str, first: str, second: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_gateway_config(path, environ={})
    message = str(info.value)
    assert message.startswith(f"{path}: {first}"), message
    assert second in message
    assert "keep one of them" in message


def test_engine_settings_beside_an_original_format_are_not_a_conflict(tmp_path: Path) -> None:
    """`[engine]` keys other than start_devices/start_scenario say how the engine runs, not
    which fleet: the original's fleet keeps `[mqtt]`'s qos and payload."""
    plan = plan_of(
        tmp_path,
        '[simulation]\n[mqtt]\nqos = 0\n[engine]\nworkers = 1\nqos = 1\npayload = "flat"\n'
        "start_interval = 9\n",
    )
    assert (plan.section, plan.interval, plan.qos, plan.payload) == (
        "simulation",
        1.0,
        0,
        "edgetwin",
    )


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[simulator]\ndevice_count = 2\npublish_intervall = 3\n", "simulator.publish_intervall"),
        ("[simulation]\nfrequency = 1.0\n", "simulation.frequency"),
        ("[engine]\nstart_device = 3\n", "engine.start_device"),
        ("[simulations]\nmax_devices = 3\n", "simulations"),
    ],
)
def test_unknown_fleet_keys_are_refused(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_gateway_config(path, environ={})
    assert str(info.value).startswith(str(path))
    assert f"unknown key '{key}'" in str(info.value)


def test_an_engine_fleet_id_in_the_manifest_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, '[engine]\nstart_devices = 3\n[[devices]]\nid = "device_002"\n')
    with pytest.raises(ConfigError) as info:
        load_gateway_config(path, environ={})
    message = str(info.value)
    assert "'device_002' appears twice" in message
    assert "[[devices]]" in message
    assert "[engine] start_devices" in message


def test_readme_examples_load_into_the_plans_it_describes(tmp_path: Path) -> None:
    """The README's section on the one model: each example is the format it says."""
    readme = (REPO / "README.md").read_text()
    section = readme[
        readme.index("## Configuration: one model, three input formats") : readme.index(
            "## Gateway API"
        )
    ]
    blocks = re.findall(r"```toml\n(.*?)```", section, re.DOTALL)
    plans = [plan_of(tmp_path, block) for block in blocks]
    assert [(p.section, p.launch, p.routes) for p in plans] == [
        ("simulator", StartDevices(10), True),
        ("simulation", None, True),
        ("engine", StartDevices(5000), False),
        ("engine", StartScenario("greenhouse.toml"), False),
    ]


def test_an_observability_section_without_service_name_keeps_the_programs_name(
    tmp_path: Path,
) -> None:
    """Before: with an [observability] section that did not name the service, logs and
    traces said "edgetwin", not the documented edgetwin-agent / edgetwin-gateway."""
    gateway = tmp_path / "gateway.toml"
    gateway.write_text('[observability]\nlog_level = "DEBUG"\n')
    assert load_gateway_config(gateway, environ={}).observability.service_name == (
        "edgetwin-gateway"
    )
    agent = tmp_path / "agent.toml"
    agent.write_text('[agent]\ndevice_id = "pi"\n\n[observability]\nlog_level = "DEBUG"\n')
    assert load_agent_config(agent, environ={}).observability.service_name == "edgetwin-agent"
    # Without the section, as before.
    gateway.write_text("")
    assert load_gateway_config(gateway, environ={}).observability.service_name == (
        "edgetwin-gateway"
    )


def test_a_statefulset_replica_takes_its_engine_shard_from_its_host_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "[engine]\nstart_devices = 10\n")
    monkeypatch.setattr("socket.gethostname", lambda: "edgetwin-gateway-2")
    config = load_gateway_config(path, environ={"EDGETWIN_SHARD_COUNT": "3"})
    assert config.engine.shard == "2/3"
    # An explicit shard wins over the ordinal.
    explicit = {"EDGETWIN_SHARD_COUNT": "3", "EDGETWIN_SHARD": "0/3"}
    assert load_gateway_config(path, environ=explicit).engine.shard == "0/3"
    monkeypatch.setattr("socket.gethostname", lambda: "laptop")
    with pytest.raises(ConfigError, match="ends in no ordinal"):
        load_gateway_config(path, environ={"EDGETWIN_SHARD_COUNT": "3"})
