"""Configuration files: TOML validated by pydantic; broker address and secrets from the environment.

The sections shared by agent and gateway (`[mqtt]`, `[observability]`) are defined here once;
the gateway builds its own file model from them.
"""

from __future__ import annotations

import os
import sys
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Self, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FilePath,
    SecretStr,
    StringConstraints,
    ValidationError,
    model_validator,
)

from agent.contract import DEFAULT_PREFIX, DeviceId, SensorName, SensorSettings, Topics


class ConfigError(Exception):
    """A configuration file that cannot be used; the message names the file and the key."""


class Section(BaseModel):
    # A misspelt key must stop start-up rather than be silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsSettings(Section):
    """MQTT over TLS: the broker's CA, and a client certificate where the broker asks for one."""

    ca_file: FilePath | None = Field(default=None, description="CA bundle; None: system CAs")
    cert_file: FilePath | None = Field(default=None, description="client certificate (PEM)")
    key_file: FilePath | None = Field(default=None, description="client private key (PEM)")
    insecure_skip_hostname_check: bool = False

    @model_validator(mode="after")
    def _key_with_cert(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class MqttSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive: int = Field(default=30, ge=1, le=65535, description="seconds")
    qos: Literal[0, 1] = 1
    prefix: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_\-/]{1,64}$")] = DEFAULT_PREFIX
    topic: str | None = Field(
        default=None,
        description="telemetry topic template, e.g. 'sensors/{device_id}'; default under prefix",
    )
    client_id: str | None = None
    reconnect_min_delay: float = Field(default=0.5, gt=0, description="backoff base, seconds")
    reconnect_max_delay: float = Field(default=30.0, gt=0, description="backoff cap, seconds")
    reconnect_reset: float = Field(
        default=60.0, ge=0, description="seconds a connection must last to reset the backoff"
    )
    session_expiry: int = Field(
        default=0, ge=0, description="seconds the broker keeps our session; 0: clean sessions"
    )
    max_inflight: int = Field(default=100, ge=1, le=65535, description="unacknowledged QoS 1")
    tls: TlsSettings | None = None

    @model_validator(mode="after")
    def _topic_template_valid(self) -> Self:
        self.topics()  # a ContractError is a ValueError: pydantic reports it against the file
        return self

    def topics(self) -> Topics:
        return Topics(prefix=self.prefix, telemetry_template=self.topic)


class ObservabilitySettings(Section):
    service_name: str = "edgetwin"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_config: FilePath | None = Field(
        default=None,
        description="TOML file in logging.config.dictConfig form (like the original "
        "simulator's logger.toml); replaces the default JSON logging",
    )
    trace_endpoint: str | None = Field(
        default=None, description="OTLP/HTTP traces URL, e.g. http://otel-collector:4318/v1/traces"
    )
    prometheus_port: int | None = Field(default=None, ge=1, le=65535)
    prometheus_host: str = "0.0.0.0"  # noqa: S104 - scraped from other hosts by design


class AgentSection(Section):
    device_id: DeviceId
    state_dir: Path | None = Field(
        default=None,
        description="outbox, boot counter, last applied config; default: systemd's "
        "StateDirectory, else $XDG_STATE_HOME/edgetwin-agent/DEVICE",
    )
    state_interval: float = Field(
        default=60.0, gt=0, description="seconds between state documents when nothing changes"
    )
    shutdown_timeout: float = Field(
        default=5.0, ge=0, description="seconds to deliver the outbox on a clean stop"
    )
    twin_wait: float = Field(
        default=2.0,
        ge=0,
        description="seconds the first readings wait for the gateway's twin document, to carry "
        "on its seq numbering; 0: do not wait",
    )


class OutboxSettings(Section):
    max_messages: int = Field(default=100_000, ge=1, description="readings kept while offline")
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024, description="payload bytes kept")
    commit_interval: float = Field(
        default=1.0, ge=0, description="seconds between commits (fsyncs); spares SD cards"
    )
    drain_rate: float = Field(
        default=500.0, ge=0, description="backlog messages per second after an outage; 0: no limit"
    )


class AgentMqttSettings(MqttSettings):
    # An agent's session outlives its restarts by default: the broker keeps its subscription
    # and the messages queued for it while it is away.
    session_expiry: int = Field(default=86_400, ge=0, description="seconds; 0: clean sessions")


class AgentConfig(Section):
    agent: AgentSection
    mqtt: AgentMqttSettings = AgentMqttSettings()
    outbox: OutboxSettings = OutboxSettings()
    observability: ObservabilitySettings = ObservabilitySettings(service_name="edgetwin-agent")
    sensors: dict[SensorName, SensorSettings] = Field(default_factory=dict)


# Environment variables win over the file for what differs between machines (broker address)
# and for what must not sit in a world-readable file (secrets).
ENV_OVERRIDES: Final[Mapping[str, tuple[str, str]]] = {
    "EDGETWIN_MQTT_HOST": ("mqtt", "host"),
    "EDGETWIN_MQTT_PORT": ("mqtt", "port"),
    "EDGETWIN_MQTT_USERNAME": ("mqtt", "username"),
    "EDGETWIN_MQTT_PASSWORD": ("mqtt", "password"),
}

ModelT = TypeVar("ModelT", bound=BaseModel)


def apply_env_overrides(
    data: dict[str, Any],
    environ: Mapping[str, str],
    overrides: Mapping[str, tuple[str, str]] = ENV_OVERRIDES,
) -> dict[str, Any]:
    merged = {key: dict(value) if isinstance(value, dict) else value for key, value in data.items()}
    for variable, (section, key) in overrides.items():
        if variable in environ:
            target = merged.setdefault(section, {})
            if isinstance(target, dict):
                target[key] = environ[variable]
    return merged


def describe_errors(exc: ValidationError, source: str) -> str:
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        message = error["msg"]
        if error["type"] == "value_error":
            message = message.removeprefix("Value error, ")  # our own validators' sentences
        if error["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{key}'")
        elif not key:
            lines.append(f"{source}: {message}")  # a rule across sections
        else:
            lines.append(f"{source}: key '{key}': {message}")
    return "\n".join(lines)


def validate(
    model: type[ModelT],
    data: dict[str, Any],
    source: str,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, tuple[str, str]] = ENV_OVERRIDES,
) -> ModelT:
    env = os.environ if environ is None else environ
    try:
        return model.model_validate(apply_env_overrides(data, env, overrides))
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, source)) from exc


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such file") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


def load(
    model: type[ModelT],
    path: Path,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, tuple[str, str]] = ENV_OVERRIDES,
) -> ModelT:
    return validate(model, read_toml(path), str(path), environ, overrides)


def load_for_program(loader: Callable[[Path], ModelT], path: Path, program: str) -> ModelT | None:
    """The program's config, or None after telling the operator on stderr why not.

    Plain text, not JSON: whoever starts the program must read this one at once. The caller
    exits with status 2, which the systemd unit treats as "do not restart".
    """
    try:
        return loader(path)
    except ConfigError as exc:
        print(f"edgetwin {program}: {exc}", file=sys.stderr)
        return None


def load_agent_config(path: Path, environ: Mapping[str, str] | None = None) -> AgentConfig:
    return load(AgentConfig, path, environ)
