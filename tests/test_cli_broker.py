"""The command-line tools reach a real broker as the agent and gateway do: a broker URL, TLS
files, a password from the environment or a file, or an agent's or gateway's `[mqtt]` section
(edgetwin/connection.py). Against a Mosquitto with TLS and a password file."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from edgetwin.agent.config import MqttSettings
from edgetwin.connection import (
    ConnectionOptionError,
    add_connection_arguments,
    parse_broker_url,
    resolve_settings,
)
from edgetwin.gateway.recording import read_readings
from edgetwin.testing.broker import Broker
from edgetwin.testing.broker_fixtures import BrokerFactory
from edgetwin.testing.capture import Capture, publish
from edgetwin.testing.endpoint import MqttEndpoint
from edgetwin.testing.process import start_edgetwin, stop_process
from tests.fleet_helpers import REPO
from tests.test_recording import sample_stream, write

PASSWORD_ENV = "EDGETWIN_MQTT_PASSWORD"


# -- the options, resolved --------------------------------------------------------------------


def resolve(*argv: str, env: Mapping[str, str] | None = None, **kwargs: str) -> MqttSettings:
    parser = argparse.ArgumentParser()
    add_connection_arguments(parser)
    return resolve_settings(parser.parse_args(argv), environ=env or {}, **kwargs)  # type: ignore[arg-type]


def test_broker_urls() -> None:
    assert parse_broker_url("127.0.0.1:1884").port == 1884
    assert parse_broker_url("localhost").port is None
    assert parse_broker_url("[::1]:1885").host == "::1"
    url = parse_broker_url("mqtts://reader@broker.local:8884")
    assert (url.host, url.port, url.tls, url.username) == ("broker.local", 8884, True, "reader")
    assert parse_broker_url("mqtt://[::1]").tls is False
    for bad in ("host:port", "ws://host", "mqtt://", "mqtts://@host"):
        with pytest.raises(ConnectionOptionError, match="--broker"):
            parse_broker_url(bad)


def test_a_password_in_the_url_is_refused_with_the_reason() -> None:
    with pytest.raises(ConnectionOptionError) as refused:
        resolve("--broker", "mqtts://reader:secret@host:8883")
    message = str(refused.value)
    assert "secret" not in message
    assert "command line" in message
    assert PASSWORD_ENV in message
    assert "--password-file" in message


def test_scheme_port_and_tls_defaults(tmp_path: Path, ca_file: Path) -> None:
    plain = resolve("--broker", "broker.local")
    assert (plain.port, plain.tls, plain.url) == (1883, None, "mqtt://broker.local:1883")
    tls = resolve("--broker", "mqtts://reader@broker.local")
    assert tls.port == 8883
    assert tls.tls is not None
    assert tls.tls.ca_file is None  # the system's CAs
    assert tls.url == "mqtts://reader@broker.local:8883"
    # A CA file alone means TLS, on TLS's port.
    implied = resolve("--broker", "broker.local", "--ca-file", str(ca_file))
    assert implied.tls is not None
    assert (implied.port, implied.tls.ca_file) == (8883, ca_file)
    with pytest.raises(ConnectionOptionError, match=r"--ca-file: .*mqtts://"):
        resolve("--broker", "mqtt://broker.local", "--ca-file", str(ca_file))
    with pytest.raises(ConnectionOptionError, match="--cert and --key go together"):
        resolve("--cert", str(ca_file))


def test_the_password_comes_from_the_environment_or_a_file(tmp_path: Path) -> None:
    env = {PASSWORD_ENV: "from-env", "EDGETWIN_MQTT_USERNAME": "env-user"}
    settings = resolve("--broker", "mqtt://url-user@h", env=env)
    assert settings.username == "url-user"  # the command line wins over the environment
    assert settings.password is not None
    assert settings.password.get_secret_value() == "from-env"
    secret = tmp_path / "password"
    secret.write_text("from-file\n")
    settings = resolve("--broker", "mqtt://u@h", "--password-file", str(secret), env=env)
    assert settings.password is not None
    assert settings.password.get_secret_value() == "from-file"
    with pytest.raises(ConnectionOptionError, match="without a user name"):
        resolve("--broker", "h", "--password-file", str(secret))
    with pytest.raises(ConnectionOptionError, match=r"--password-file .*cannot read"):
        resolve("--broker", "mqtt://u@h", "--password-file", str(tmp_path / "missing"))


def test_bad_values_are_named_by_the_option_or_the_file_key(tmp_path: Path) -> None:
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate\n")
    with pytest.raises(ConnectionOptionError, match=r"^--ca-file: .*not a PEM CA bundle"):
        resolve("--broker", "mqtts://h", "--ca-file", str(not_pem))
    with pytest.raises(ConnectionOptionError, match=r"^--broker: .*not an IP address"):
        resolve("--broker", "999.1.1.1:1883")
    config = tmp_path / "gateway.toml"
    config.write_text('[mqtt]\nport = "many"\n')
    with pytest.raises(ConnectionOptionError, match=rf"^{re.escape(str(config))}: key 'mqtt.port'"):
        resolve("--config", str(config))


def test_an_agent_config_lends_its_broker_not_its_identity(tmp_path: Path, ca_file: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        '[agent]\ndevice_id = "pi-1"\n'
        '[mqtt]\nhost = "broker.local"\nport = 8884\nusername = "pi-1"\nprefix = "farm"\n'
        'client_id = "pi-1"\nprotocol = "3.1.1"\n'
        f'[mqtt.tls]\nca_file = "{ca_file}"\n'
    )
    settings = resolve("--config", str(config), env={PASSWORD_ENV: "pw"})
    assert settings.url == "mqtts://pi-1@broker.local:8884"
    assert (settings.prefix, settings.protocol) == ("farm", "3.1.1")
    # Never the agent's client id (the broker would disconnect the agent) nor its session.
    assert settings.client_id is None
    assert settings.session_expiry == 0
    # The command line wins over the file.
    override = resolve("--config", str(config), "--broker", "mqtts://reader@other", prefix="x")
    assert override.url == "mqtts://reader@other:8883"
    assert override.tls is not None
    assert override.tls.ca_file == ca_file
    assert override.prefix == "x"


# -- against Mosquitto with TLS and a password file ---------------------------------------------


@pytest.fixture(scope="module")
def secure(edgetwin_broker_factory_session: BrokerFactory) -> Iterator[Broker]:
    broker = edgetwin_broker_factory_session(auth=True, tls=True)
    yield broker
    broker.close()


@pytest.fixture
def ca_file(tmp_path: Path, secure: Broker) -> Path:
    assert secure.pki is not None
    return secure.pki.ca.cert


def options(endpoint: MqttEndpoint, tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of a tool that reaches `endpoint`: a URL with the user,
    the CA, and the password in the environment."""
    url = f"mqtts://{endpoint.username}@{endpoint.host}:{endpoint.port}"
    assert endpoint.password is not None
    return ["--broker", url, "--ca-file", str(endpoint.ca_file)], {PASSWORD_ENV: endpoint.password}


def run(
    args: list[str], env: Mapping[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgetwin", *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.integration
def test_watch_prints_readings(secure: Broker, tmp_path: Path) -> None:
    topic = "edgetwin/watched/telemetry/env"
    publish(secure.endpoint, topic, '{"seq": 1}', retain=True)
    try:
        args, env = options(secure.endpoint, tmp_path)
        result = run(["watch", *args, "--topic", topic, "--count", "1"], env)
    finally:
        publish(secure.endpoint, topic, b"", retain=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f'{topic} (retained) {{"seq": 1}}\n'


@pytest.mark.integration
def test_record_and_replay_through_a_config_file_and_a_password_file(
    secure: Broker, tmp_path: Path
) -> None:
    """record takes a gateway's [mqtt] section with the password from the environment; replay
    a URL with the password in a file."""
    endpoint = secure.endpoint
    assert endpoint.password is not None
    assert endpoint.ca_file is not None
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[mqtt]\nhost = "{endpoint.host}"\nport = {endpoint.port}\n'
        f'username = "{endpoint.username}"\nprefix = "edgetwin"\n'
        f'[mqtt.tls]\nca_file = "{endpoint.ca_file}"\n'
    )
    out = tmp_path / "recorded.csv"
    stream = sample_stream()
    recorder = start_edgetwin(
        ["record", "--config", str(config), "--out", str(out), "--count", str(len(stream))],
        env={PASSWORD_ENV: endpoint.password},
    )
    try:
        assert recorder.stderr is not None
        line = recorder.stderr.readline().decode()
        assert line.startswith("recording edgetwin/+/telemetry/+"), line
        source = write(tmp_path / "source.jsonl", stream)
        password = tmp_path / "password"
        password.write_text(endpoint.password + "\n")
        url = f"mqtts://{endpoint.username}@{endpoint.host}:{endpoint.port}"
        with Capture(endpoint, "edgetwin/+/telemetry/+") as sub:
            replay = run(
                ["replay", str(source), "--broker", url, "--ca-file", str(endpoint.ca_file),
                 "--password-file", str(password), "--speed", "50"],
                {},
            )  # fmt: skip
            assert replay.returncode == 0, replay.stderr
            assert replay.stdout.startswith(f"replayed {len(stream)} readings")
            sub.wait_for("edgetwin/+/telemetry/+", count=len(stream))
        assert recorder.wait(timeout=30) == 0
    finally:
        code, stderr = stop_process(recorder)
    assert code == 0, stderr
    assert [r.payload.values for r in read_readings(out)] == [s.values for s in stream]  # type: ignore[union-attr]


@pytest.mark.integration
@pytest.mark.parametrize("virtual", [True, False], ids=["virtual", "realtime"])
def test_simulate_publishes_and_its_exit_line_agrees_with_a_capture(
    secure: Broker, tmp_path: Path, virtual: bool
) -> None:
    args, env = options(secure.endpoint, tmp_path)
    if virtual:
        mode = ["--virtual", "--start", "2026-01-01T00:00:00", "--duration", "30s"]
    else:
        mode = ["--duration", "1", "--workers", "1"]
    with Capture(secure.endpoint, "edgetwin/#") as sub:
        result = run(["simulate", "--devices", "3", *mode, *args, "--qos", "1", "--quiet"], env)
        assert result.returncode == 0, result.stderr
        if virtual:
            sent = int(result.stdout.split(" messages ")[0])
            assert f"to mqtts://{secure.endpoint.username}@" in result.stdout
        else:
            sent = int(result.stdout.split("; ")[1].split(" sent in all")[0])
        assert sent > 0
        sub.wait_for("edgetwin/#", count=sent)
        assert len(sub.messages()) == sent


TOOLS = {
    "watch": ["watch"],
    "record": ["record", "--out", "{tmp}/r.csv"],
    "replay": ["replay", "{tmp}/source.jsonl"],
    "simulate --virtual": ["simulate", "--virtual", "--duration", "10s", "--start", "2026-01-01"],
    "simulate": ["simulate", "--duration", "1"],
}


@pytest.mark.integration
@pytest.mark.parametrize("tool", sorted(TOOLS))
@pytest.mark.parametrize("wrong", ["password", "ca"])
def test_a_wrong_password_or_ca_is_one_line_and_a_failure(
    secure: Broker, tmp_path: Path, tool: str, wrong: str
) -> None:
    write(tmp_path / "source.jsonl", sample_stream())
    endpoint = secure.endpoint
    assert secure.pki is not None
    args, env = options(endpoint, tmp_path)
    if wrong == "password":
        env = {PASSWORD_ENV: "not-the-password"}
    else:
        args[args.index("--ca-file") + 1] = str(secure.pki.other_ca.cert)
    command = [part.format(tmp=tmp_path) for part in TOOLS[tool]]
    result = run([*command, *args], env, timeout=30)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    program = command[0]
    assert lines[0].startswith(f"edgetwin {program}: cannot connect to mqtts://"), lines[0]
    if wrong == "password":
        assert "refused the connection" in lines[0]
        assert "not-the-password" not in lines[0]
    else:
        assert "certificate is not trusted" in lines[0]


# -- habits ------------------------------------------------------------------------------------


def test_version() -> None:
    from importlib.metadata import version

    result = run(["--version"], {})
    assert result.returncode == 0
    assert result.stdout == f"edgetwin {version('edgetwin')}\n"


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts_are_printed_for_install(shell: str) -> None:
    result = run(["completion", shell], {})
    assert result.returncode == 0, result.stderr
    assert "edgetwin" in result.stdout
    assert "_ARGCOMPLETE" in result.stdout


def test_completion_answers_from_the_parser(tmp_path: Path) -> None:
    """What the installed script asks `edgetwin` when TAB is pressed."""
    answer = tmp_path / "answer"
    line = "edgetwin watch --ca"
    env = {
        "_ARGCOMPLETE": "1",
        "_ARGCOMPLETE_STDOUT_FILENAME": str(answer),
        "COMP_LINE": line,
        "COMP_POINT": str(len(line)),
        "_ARGCOMPLETE_IFS": "\n",
    }
    result = run([], env)
    assert result.returncode == 0, result.stderr
    assert answer.read_text().split() == ["--ca-file"]
