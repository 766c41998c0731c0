"""Config files: strict keys, errors that name file and key, environment overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import ConfigError, load_agent_config
from gateway.config import load_gateway_config

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
