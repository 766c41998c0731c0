"""How the command-line tools (watch, record, replay, simulate) reach a broker: one set of
options, resolved into the agent's and gateway's own `[mqtt]` model and validated by it.

Precedence, lowest first: an agent's or gateway's `[mqtt]` section (`--config`), the
environment (EDGETWIN_MQTT_HOST, _PORT, _USERNAME, _PASSWORD, as for the programs), then the
command line (`--broker URL`, `--ca-file`, `--cert`, `--key`, `--password-file`). A password
never comes from the command line: anyone on the machine can read it there (ps, shell history).
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgspec

from edgetwin.agent.config import (
    ENV_OVERRIDES,
    AgentMqttSettings,
    ConfigError,
    MqttSettings,
    convert,
    error_key,
    read_toml,
)
from edgetwin.check import is_agent_file

PASSWORD_ENV = "EDGETWIN_MQTT_PASSWORD"  # noqa: S105 - a variable's name, not a password
_DEFAULT_PORTS = {False: 1883, True: 8883}
_SCHEMES = {"mqtt": False, "mqtts": True}
_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<rest>.*)")


class ConnectionOptionError(ValueError):
    """Connection options that cannot be used; the message names the option and says why."""


@dataclass(frozen=True)
class BrokerUrl:
    host: str
    port: int | None  # None: the scheme's default
    tls: bool | None  # None: HOST:PORT without a scheme says nothing about TLS
    username: str | None = None


def parse_broker_url(text: str) -> BrokerUrl:
    """`mqtt://[USER@]HOST[:PORT]`, `mqtts://...`, or plain `HOST[:PORT]` (brackets around an
    IPv6 address)."""
    tls: bool | None = None
    match = _URL.fullmatch(text)
    rest = text
    if match is not None:
        scheme = match["scheme"].lower()
        if scheme not in _SCHEMES:
            raise ConnectionOptionError(
                f"--broker {text!r}: unknown scheme {scheme!r}; use mqtt:// or mqtts://"
            )
        tls = _SCHEMES[scheme]
        rest = match["rest"].rstrip("/")
    username = None
    if "@" in rest:
        userinfo, _, rest = rest.rpartition("@")
        if ":" in userinfo:
            raise ConnectionOptionError(
                "--broker: a password in the URL is refused, since any user of this machine "
                f"can read a command line; give it in {PASSWORD_ENV} or --password-file FILE"
            )
        if not userinfo:
            raise ConnectionOptionError(f"--broker {text!r}: empty user name before '@'")
        username = userinfo
    if rest.startswith("["):  # [IPv6]:PORT
        host, _, after = rest[1:].partition("]")
        port = after.removeprefix(":") if after.startswith(":") or not after else "?"
    elif rest.count(":") == 1:
        host, _, port = rest.partition(":")
    else:  # a host name, or an IPv6 address without brackets and so without a port
        host, port = rest, ""
    if not host or "/" in host or (port and not port.isdigit()):
        raise ConnectionOptionError(
            f"--broker {text!r}: expected mqtt://HOST:PORT, mqtts://USER@HOST:PORT or HOST:PORT"
        )
    return BrokerUrl(host, int(port) if port else None, tls, username)


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of every tool that talks to a broker, in a group of their own."""
    group = parser.add_argument_group(
        "broker connection",
        f"password from {PASSWORD_ENV} or --password-file, never the command line; "
        "file < environment < command line",
    )
    group.add_argument(
        "--broker",
        metavar="URL",
        default=None,
        help="mqtt://HOST:PORT, mqtts://USER@HOST:8883, or HOST:PORT (default 127.0.0.1:1883)",
    )
    group.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="an agent's or gateway's config: its [mqtt] section (host, port, user, TLS, prefix)",
    )
    group.add_argument("--ca-file", type=Path, default=None, metavar="FILE", help="CA bundle (PEM)")
    group.add_argument(
        "--cert", type=Path, default=None, metavar="FILE", help="client certificate (PEM)"
    )
    group.add_argument("--key", type=Path, default=None, metavar="FILE", help="its key (PEM)")
    group.add_argument(
        "--password-file",
        type=Path,
        default=None,
        metavar="FILE",
        help=f"the password in a file (first line); else {PASSWORD_ENV}",
    )


def wants_broker(args: argparse.Namespace) -> bool:
    """Whether the command line names a broker at all (simulate: else it writes a file)."""
    return args.broker is not None or args.config is not None


def read_password(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ConnectionOptionError(f"--password-file {path}: cannot read: {why}") from None
    lines = text.splitlines()
    if not lines or not lines[0]:
        raise ConnectionOptionError(f"--password-file {path}: the first line is empty")
    return lines[0]


def _file_section(path: Path) -> tuple[type[MqttSettings], dict[str, Any]]:
    """The `[mqtt]` model of the program that reads `path`, and the section's table."""
    try:
        document = read_toml(path)
    except ConfigError as exc:
        raise ConnectionOptionError(str(exc)) from None
    table = document.get("mqtt", {})
    if not isinstance(table, dict):
        raise ConnectionOptionError(f"{path}: key 'mqtt': expected a table")
    if is_agent_file(document):
        return AgentMqttSettings, dict(table)
    from edgetwin.gateway.config import GatewayMqttSettings

    return GatewayMqttSettings, dict(table)


def resolve_settings(
    args: argparse.Namespace,
    *,
    protocol: Literal["5", "3.1.1"] = "5",
    prefix: str | None = None,
    topic: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> MqttSettings:
    """The broker settings a tool connects with, from `add_connection_arguments`' options.

    `protocol` is the tool's own default when no config file names one; `prefix` and `topic`
    (a tool's `--prefix`, `--topic`) win over the file's.
    """
    env = os.environ if environ is None else environ
    model: type[MqttSettings] = MqttSettings
    data: dict[str, Any] = {"protocol": protocol}
    if args.config is not None:
        model, data = _file_section(args.config)
    # Which option or variable set a key, to name it when the model refuses its value.
    origin: dict[str, str] = {}
    for variable, (_section, key) in ENV_OVERRIDES.items():
        if variable in env:
            data[key] = env[variable]
            origin[key] = variable
    # A tool is a passing client: never an agent's client id (the broker would disconnect the
    # agent) nor its persistent session (a day of messages queued for a tool that left).
    data.pop("client_id", None)
    data["session_expiry"] = 0
    if (args.cert is None) != (args.key is None):
        raise ConnectionOptionError("--cert and --key go together")
    if args.broker is not None:
        _apply_url(data, origin, parse_broker_url(args.broker), args)
    _apply_tls_files(data, origin, args)
    data.setdefault("port", _DEFAULT_PORTS["tls" in data])
    if args.password_file is not None:
        data["password"] = read_password(args.password_file)
        origin["password"] = "--password-file"  # noqa: S105 - the option's name
    if data.get("password") is not None and data.get("username") is None:
        raise ConnectionOptionError(
            f"a password ({origin.get('password', 'from ' + str(args.config))}) without a user "
            "name: give the user in the URL (mqtts://USER@HOST) or EDGETWIN_MQTT_USERNAME"
        )
    for key, value, option in (("prefix", prefix, "--prefix"), ("topic", topic, "--topic")):
        if value is not None:
            data[key] = value
            origin[key] = option
    try:
        return convert(data, model)
    except msgspec.ValidationError as exc:
        raise ConnectionOptionError(_describe(exc, origin, args.config)) from None


def _apply_url(
    data: dict[str, Any], origin: dict[str, str], url: BrokerUrl, args: argparse.Namespace
) -> None:
    data["host"] = url.host
    origin["host"] = "--broker"
    data.pop("port", None)  # the URL's, or its scheme's default
    if url.port is not None:
        data["port"] = url.port
        origin["port"] = "--broker"
    if url.username is not None:
        data["username"] = url.username
        origin["username"] = "--broker"
    if url.tls is False:
        given = [name for name, value in _tls_options(args).items() if value is not None]
        if given:
            raise ConnectionOptionError(
                f"{', '.join(given)}: TLS options with a plain mqtt:// URL; use mqtts://"
            )
        data.pop("tls", None)
    elif url.tls:
        data["tls"] = data.get("tls") or {}


def _apply_tls_files(
    data: dict[str, Any], origin: dict[str, str], args: argparse.Namespace
) -> None:
    files = {"ca_file": args.ca_file, "cert_file": args.cert, "key_file": args.key}
    if all(value is None for value in files.values()):
        return
    tls = dict(data.get("tls") or {})
    for (key, value), option in zip(files.items(), _tls_options(args), strict=True):
        if value is not None:
            tls[key] = str(value)  # as a file gives it; the model makes it a Path
            origin[f"tls.{key}"] = option
    data["tls"] = tls


def _tls_options(args: argparse.Namespace) -> dict[str, Path | None]:
    return {"--ca-file": args.ca_file, "--cert": args.cert, "--key": args.key}


def _describe(exc: msgspec.ValidationError, origin: Mapping[str, str], config: Path | None) -> str:
    """The model's refusal in the terms the value came in: the option, the variable, or the
    config file's key."""
    key, reason, unknown = error_key(exc)
    if key in origin:
        return f"{origin[key]}: {reason}"
    if config is not None:
        if unknown:
            return f"{config}: unknown key 'mqtt.{key}'"
        return f"{config}: key 'mqtt.{key}': {reason}" if key else f"{config}: {reason}"
    return f"{key}: {reason}" if key else reason
