"""Where and as whom a client reaches a broker: one value that every testing helper takes.

A broker started by `edgetwin.testing` hands out an `MqttEndpoint` per identity (anonymous, a
user with a password, a device of its ACL), so a capture, a simulated fleet, an agent and a
gateway all connect the same way, TLS and credentials included.
"""

from __future__ import annotations

import dataclasses
import ssl
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion


@dataclass(frozen=True)
class MqttEndpoint:
    """A broker address with the protocol, credentials and TLS files to reach it with.

    `ca_file` set means TLS: the broker's certificate must chain to it and name `host`.
    `cert_file`/`key_file` are a client certificate, for brokers that ask for one.
    """

    host: str
    port: int
    protocol: Literal["5", "3.1.1"] = "5"
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @property
    def tls(self) -> bool:
        return self.ca_file is not None

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def as_user(self, username: str | None, password: str | None) -> MqttEndpoint:
        """The same broker reached under another identity."""
        return dataclasses.replace(self, username=username, password=password)

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.ca_file is None:
            return None
        context = ssl.create_default_context(cafile=str(self.ca_file))
        if self.cert_file is not None and self.key_file is not None:
            context.load_cert_chain(str(self.cert_file), str(self.key_file))
        return context

    def paho_client(self, client_id: str | None = None) -> mqtt.Client:
        """A paho client set up for this endpoint (protocol, credentials, TLS), not connected."""
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id or f"edgetwin-testing-{uuid.uuid4().hex[:12]}",
            protocol=(
                MQTTProtocolVersion.MQTTv5 if self.protocol == "5" else MQTTProtocolVersion.MQTTv311
            ),
        )
        if self.username is not None:
            client.username_pw_set(self.username, self.password)
        context = self.ssl_context()
        if context is not None:
            client.tls_set_context(context)
        return client

    def mqtt_settings(self, **extra: Any) -> dict[str, Any]:
        """The `[mqtt]` table of an agent's or gateway's config that reaches this broker.

        `extra` adds or overrides keys (`prefix`, `keepalive`, `client_id`, ...).
        """
        settings: dict[str, Any] = {"host": self.host, "port": self.port}
        settings["protocol"] = self.protocol
        if self.username is not None:
            settings["username"] = self.username
        if self.password is not None:
            settings["password"] = self.password
        if self.ca_file is not None:
            tls: dict[str, Any] = {"ca_file": str(self.ca_file)}
            if self.cert_file is not None and self.key_file is not None:
                tls["cert_file"] = str(self.cert_file)
                tls["key_file"] = str(self.key_file)
            settings["tls"] = tls
        settings.update(extra)
        return settings
