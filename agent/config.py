"""Configuration files: TOML validated by msgspec; broker address and secrets from the environment.

The sections shared by agent and gateway (`[mqtt]`, `[observability]`) are defined here once;
the gateway builds its own file model from them. Like the wire contract, these are msgspec
Structs, not pydantic models, to keep the agent light on a Pi.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
import sys
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Self, TypeVar

import msgspec

from edgetwin.agent.contract import (
    DEFAULT_PREFIX,
    DeviceId,
    SensorName,
    SensorSettings,
    Topics,
    locate_error,
)
from edgetwin.hardware.errors import HardwareError, UnknownDriverError
from edgetwin.hardware.registry import check_settings

EXIT_CONFIG: Final = 2
"""Exit status of a program that cannot start as configured: an invalid file, or (the agent)
a state directory it cannot use. The systemd units list it in RestartPreventExitStatus=, since
restarting cannot fix either; every such error ends the process with this status and one line
on stderr."""


class ConfigError(Exception):
    """A configuration file that cannot be used; the message names the file and the key."""


class Secret:
    """A password or token: kept out of reprs and logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def _decode_extra(kind: type, value: Any) -> Any:
    if kind is Path and isinstance(value, str):
        return Path(value)
    if kind is Secret and isinstance(value, str):
        return Secret(value)
    # A TypeError is what msgspec turns into a ValidationError naming the key; anything else
    # (NotImplementedError included) escapes as a traceback.
    raise TypeError(f"Expected `str`, got `{type(value).__name__}`")


def _encode_extra(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Secret):
        return value.get_secret_value()
    raise NotImplementedError


def _must_be_file(path: Path | None, key: str) -> None:
    if path is not None and not path.is_file():
        raise ValueError(f"{key}: no such file {str(path)!r}")


_HOSTNAME: Final = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)*\.?$"
)


def check_host(host: str, key: str) -> None:
    """Refuse a host that no resolver can answer, so that the file names it rather than a
    bind or connect failing later with a traceback. Digits and dots only, or a colon, must be
    an IP address: "999.1.1.1" would otherwise pass for a host name."""
    if ":" in host or re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{key}: {host!r} is not an IP address") from None
    elif not _HOSTNAME.fullmatch(host):
        raise ValueError(f"{key}: {host!r} is neither an IP address nor a host name")


def _check_tls_files(ca_file: Path | None, cert_file: Path | None, key_file: Path | None) -> None:
    # Loaded here as the link will load them, so a file that is not PEM is reported against
    # its key at start-up instead of as ssl.SSLError from inside paho.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise ValueError(f"ca_file: {str(ca_file)!r} is not a PEM CA bundle ({exc})") from None
    if cert_file is not None and key_file is not None:
        try:
            context.load_cert_chain(cert_file, key_file)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise ValueError(
                f"cert_file, key_file: {str(cert_file)!r} and {str(key_file)!r} are not a "
                f"matching PEM certificate and key ({exc})"
            ) from None


def broker_url(host: str, port: int, *, tls: bool, username: str | None = None) -> str:
    """A broker as people write it, user included and never the password:
    mqtts://reader@broker.local:8883 (what `--broker` takes, and what messages name)."""
    user = f"{username}@" if username else ""
    shown = f"[{host}]" if ":" in host else host
    return f"{'mqtts' if tls else 'mqtt'}://{user}{shown}:{port}"


ModelT = TypeVar("ModelT", bound="Section")


class Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A config section. A misspelt key stops start-up rather than being silently ignored.

    Values are converted where TOML or the environment give a string for a number (an
    environment variable is always a string).
    """

    @classmethod
    def from_builtins(cls, data: Mapping[str, Any]) -> Self:
        """Validate parsed TOML (or any plain data); ConfigError says what is wrong where."""
        try:
            return convert(data, cls)
        except msgspec.ValidationError as exc:
            raise ConfigError(describe_error(exc, cls.__name__)) from exc

    def to_builtins(self) -> dict[str, Any]:
        return msgspec.to_builtins(self, enc_hook=_encode_extra)  # type: ignore[no-any-return]

    def replace(self, **changes: Any) -> Self:
        return msgspec.structs.replace(self, **changes)

    def recast(self, kind: type[ModelT]) -> ModelT:
        """This section as `kind` (a sibling or subclass), keeping the fields both have."""
        shared = set(kind.__struct_fields__)
        return kind(**{f: getattr(self, f) for f in self.__struct_fields__ if f in shared})


def convert(data: Any, kind: type[ModelT]) -> ModelT:
    return msgspec.convert(data, kind, strict=False, from_attributes=True, dec_hook=_decode_extra)


def field_default(kind: type[Section], name: str) -> Any:
    """A field's default value, as the documentation and tests quote it."""
    for info in msgspec.structs.fields(kind):
        if info.name == name:
            if info.default_factory is not msgspec.NODEFAULT:
                return info.default_factory()
            return info.default
    raise KeyError(name)


class TlsSettings(Section, frozen=True):
    """MQTT over TLS: the broker's CA, and a client certificate where the broker asks for one."""

    ca_file: Path | None = None  # CA bundle; None: the system's CAs
    cert_file: Path | None = None  # client certificate (PEM)
    key_file: Path | None = None  # client private key (PEM)
    insecure_skip_hostname_check: bool = False

    def __post_init__(self) -> None:
        for key in ("ca_file", "cert_file", "key_file"):
            _must_be_file(getattr(self, key), key)
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        _check_tls_files(self.ca_file, self.cert_file, self.key_file)


Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
Seconds = Annotated[float, msgspec.Meta(gt=0)]
SecondsOrZero = Annotated[float, msgspec.Meta(ge=0)]


class MqttSettings(Section, frozen=True):
    host: str = "127.0.0.1"
    port: Port = 1883
    username: str | None = None
    password: Secret | None = None
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive: Port = 30  # seconds
    qos: Literal[0, 1] = 1
    prefix: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_\-/]{1,64}$")] = DEFAULT_PREFIX
    # Telemetry topic template, e.g. 'sensors/{device_id}'; default: under the prefix.
    topic: str | None = None
    client_id: str | None = None
    reconnect_min_delay: Seconds = 0.5  # backoff base
    reconnect_max_delay: Seconds = 30.0  # backoff cap
    # Seconds a connection must last to reset the backoff.
    reconnect_reset: SecondsOrZero = 60.0
    # Seconds the broker keeps our session; 0: clean sessions.
    session_expiry: Annotated[int, msgspec.Meta(ge=0)] = 0
    max_inflight: Port = 100  # unacknowledged QoS 1 messages
    tls: TlsSettings | None = None

    def __post_init__(self) -> None:
        self.topics()  # a ContractError is a ValueError: reported against the file
        check_host(self.host, "host")

    def topics(self) -> Topics:
        return Topics(prefix=self.prefix, telemetry_template=self.topic)

    @property
    def url(self) -> str:
        return broker_url(self.host, self.port, tls=self.tls is not None, username=self.username)


class ObservabilitySettings(Section, frozen=True):
    service_name: str = "edgetwin"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # A TOML file in logging.config.dictConfig form (like the original simulator's
    # logger.toml); replaces the default JSON logging.
    log_config: Path | None = None
    # OTLP/HTTP traces URL, e.g. http://otel-collector:4318/v1/traces
    trace_endpoint: str | None = None
    prometheus_port: Port | None = None
    prometheus_host: str = "0.0.0.0"  # noqa: S104 - scraped from other hosts by design

    def __post_init__(self) -> None:
        _must_be_file(self.log_config, "log_config")
        check_host(self.prometheus_host, "prometheus_host")


class HomeAssistantSettings(Section, frozen=True):
    """`[homeassistant]`: MQTT discovery configs for Home Assistant (agent/homeassistant.py).

    Off by default: the configs are retained documents on the broker outside the prefix, which
    nobody should find there without asking for them."""

    enabled: bool = False
    # Home Assistant's own default; change it only where its MQTT integration was changed too.
    discovery_prefix: Annotated[
        str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}(/[A-Za-z0-9_-]{1,64}){0,3}$")
    ] = "homeassistant"


class AgentSection(Section, frozen=True):
    device_id: DeviceId
    # Outbox, boot counter, last applied config; default: systemd's StateDirectory, else
    # $XDG_STATE_HOME/edgetwin-agent/DEVICE.
    state_dir: Path | None = None
    state_interval: Seconds = 60.0  # between state documents when nothing changes
    shutdown_timeout: SecondsOrZero = 5.0  # to deliver the outbox on a clean stop
    # Seconds the first readings wait for the gateway's twin document, to carry on its seq
    # numbering; 0: do not wait.
    twin_wait: SecondsOrZero = 2.0
    # Seconds without the broker after which every output is held at its safe value, until
    # the desired document comes again; 0: never. Longer than a broker restart plus the
    # reconnect backoff's longest wait (30 s), so that a routine restart does not switch loads.
    safe_after_broker_away: SecondsOrZero = 60.0


class OutboxSettings(Section, frozen=True):
    max_messages: Annotated[int, msgspec.Meta(ge=1)] = 100_000  # readings kept while offline
    max_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 64 * 1024 * 1024  # payload bytes kept
    commit_interval: SecondsOrZero = 1.0  # between commits (fsyncs); spares SD cards
    drain_rate: SecondsOrZero = 500.0  # backlog messages per second after an outage; 0: no limit


class AgentMqttSettings(MqttSettings, frozen=True):
    # An agent's session outlives its restarts by default: the broker keeps its subscription
    # and the messages queued for it while it is away.
    session_expiry: Annotated[int, msgspec.Meta(ge=0)] = 86_400


class AgentObservability(ObservabilitySettings, frozen=True):
    # The program's documented name also when the section is there without one.
    service_name: str = "edgetwin-agent"


class AgentConfig(Section, frozen=True):
    agent: AgentSection
    mqtt: AgentMqttSettings = msgspec.field(default_factory=AgentMqttSettings)
    outbox: OutboxSettings = msgspec.field(default_factory=OutboxSettings)
    observability: AgentObservability = msgspec.field(default_factory=AgentObservability)
    homeassistant: HomeAssistantSettings = msgspec.field(default_factory=HomeAssistantSettings)
    sensors: dict[SensorName, SensorSettings] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        # A driver this agent does not have can never run: refused here like any other bad
        # value, not left to a warning at every start while the agent runs without it.
        for name, settings in self.sensors.items():
            try:
                check_settings(settings.driver, address=settings.address)
            except UnknownDriverError as exc:
                raise ValueError(f"sensors.{name}.driver: {exc}") from None
            except HardwareError as exc:
                raise ValueError(f"sensors.{name}.address: {exc}") from None


# Environment variables win over the file for what differs between machines (broker address)
# and for what must not sit in a world-readable file (secrets).
ENV_OVERRIDES: Final[Mapping[str, tuple[str, str]]] = {
    "EDGETWIN_MQTT_HOST": ("mqtt", "host"),
    "EDGETWIN_MQTT_PORT": ("mqtt", "port"),
    "EDGETWIN_MQTT_USERNAME": ("mqtt", "username"),
    "EDGETWIN_MQTT_PASSWORD": ("mqtt", "password"),
}


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


def error_key(exc: msgspec.ValidationError) -> tuple[str, str, bool]:
    """Where msgspec's error lies as a dotted key ("" for a rule across sections), its reason,
    and whether the key is an unknown one; a check of our own names the field it refused as
    "field: reason", and the field joins the key."""
    message, path = locate_error(exc)
    where = ".".join(str(part) for part in path)
    unknown = re.fullmatch(r"Object contains unknown field `(?P<key>[^`]+)`", message)
    if unknown is not None:
        return (f"{where}.{unknown['key']}" if where else unknown["key"]), message, True
    own = re.fullmatch(r"(?P<key>[a-z_][a-z0-9_]*(?:\.[a-z0-9_-]+)*): (?P<reason>.+)", message)
    if own is not None:
        where = f"{where}.{own['key']}" if where else own["key"]
        message = own["reason"]
    return where, message, False


def describe_error(exc: msgspec.ValidationError, source: str) -> str:
    """msgspec's reason in the file's terms: "FILE: key 'mqtt.port': Expected `int`..."."""
    where, message, unknown = error_key(exc)
    if unknown:
        return f"{source}: unknown key '{where}'"
    if not where:
        return f"{source}: {message}"  # a rule across sections
    return f"{source}: key '{where}': {message}"


def validate(
    model: type[ModelT],
    data: dict[str, Any],
    source: str,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, tuple[str, str]] = ENV_OVERRIDES,
) -> ModelT:
    env = os.environ if environ is None else environ
    try:
        return convert(apply_env_overrides(data, env, overrides), model)
    except msgspec.ValidationError as exc:
        raise ConfigError(describe_error(exc, source)) from exc


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such file") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"{path}: is a directory, not a TOML file") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text file (not UTF-8 at byte {exc.start})") from exc
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
    """The program's config, with its logging set up, or None after telling the operator on
    stderr why not.

    Plain text, not JSON: whoever starts the program must read this one at once. The caller
    exits with EXIT_CONFIG, which the systemd unit treats as "do not restart".
    """
    from edgetwin.agent.logs import configure_from

    try:
        config = loader(path)
        observability = getattr(config, "observability", None)
        if isinstance(observability, ObservabilitySettings):
            configure_from(observability, source=str(path))
        return config
    except ConfigError as exc:
        print(f"edgetwin {program}: {exc}", file=sys.stderr)
        return None


def load_agent_config(path: Path, environ: Mapping[str, str] | None = None) -> AgentConfig:
    return load(AgentConfig, path, environ)
