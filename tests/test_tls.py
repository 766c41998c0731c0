"""MQTT over TLS against a real mosquitto: client certificates, username and password, and the
failures that must stay failures (a wrong CA, a missing certificate, a wrong password).

Certificates come from `edgetwin.testing.certs` (the openssl command) into the test's tmp_path;
the brokers are `edgetwin.testing.broker`'s TLS variants, handed those certificates.
"""

from __future__ import annotations

import re
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edgetwin.agent.config import AgentConfig, load_agent_config
from edgetwin.agent.contract import Status, Telemetry
from edgetwin.agent.runtime import Agent
from edgetwin.testing.agent import agent_thread
from edgetwin.testing.broker import Broker
from edgetwin.testing.certs import OPENSSL_MISSING, KeyPair, Pki, make_pki, openssl_binary
from edgetwin.testing.waiting import poll
from tests.conftest import BrokerFactory

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(openssl_binary() is None, reason=OPENSSL_MISSING),
]

DEVICE = "pi-tls"
SUBSCRIBER = "edgetwin-test-sub"  # the subscriber's certificate name, and its username
USERNAME, PASSWORD = "pi-tls-user", "correct horse battery staple"
TELEMETRY = f"edgetwin/{DEVICE}/telemetry/env"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki", clients=(DEVICE, SUBSCRIBER))


def connections(broker: Broker) -> int:
    """How many TCP connections the broker's only listener has accepted so far (from its log);
    the first is the harness's own readiness probe."""
    return len(re.findall(r"New connection from \S+ on port \d+\.", broker.log_text()))


@pytest.fixture
def cert_broker(pki: Pki, broker_factory: BrokerFactory) -> Broker:
    """Clients must show a certificate from our CA; its common name becomes the username."""
    return broker_factory(tls=pki, client_certificates=(SUBSCRIBER, DEVICE))


@pytest.fixture
def password_broker(pki: Pki, broker_factory: BrokerFactory) -> Broker:
    """Server authentication by TLS, clients by username and password; no anonymous clients."""
    return broker_factory(tls=pki, users={USERNAME: PASSWORD, SUBSCRIBER: "sub-secret"})


# -- a TLS client for the test's side ------------------------------------------------------------


class TlsClient:
    """A paho client over TLS that records what it receives; waits use a Condition."""

    def __init__(
        self,
        endpoint: Broker,
        *,
        ca: Path,
        client_cert: KeyPair | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self._endpoint = endpoint
        self._cond = threading.Condition()
        self.connack: ReasonCode | None = None
        self.subacks: dict[int, list[ReasonCode]] = {}
        self.messages: list[mqtt.MQTTMessage] = []
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"edgetwin-test-tls-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.tls_set(
            ca_certs=str(ca),
            certfile=str(client_cert.cert) if client_cert else None,
            keyfile=str(client_cert.key) if client_cert else None,
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def connect(self, timeout: float = 5) -> TlsClient:
        """Connect, or raise: ssl.SSLError when the handshake fails on our side, ConnectionError
        when the broker refuses us or hangs up before its CONNACK."""
        self.client.connect(self._endpoint.host, self._endpoint.port, keepalive=10)
        # Driven by hand until CONNACK: a hang-up shows at once, where paho's own thread would
        # notice it only at its next one-second select().
        deadline = time.monotonic() + timeout
        while self.connack is None and time.monotonic() < deadline:
            if self.client.loop(timeout=0.05) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break  # the broker closed the connection
        if self.connack is None or self.connack.is_failure:
            self.client.disconnect()
            raise ConnectionError(f"refused: CONNACK {self.connack}")
        self.client.loop_start()
        return self

    def subscribe(self, topic_filter: str, timeout: float = 5) -> None:
        _, mid = self.client.subscribe(topic_filter, qos=1)
        assert mid is not None, "SUBSCRIBE not sent"
        with self._cond:
            assert self._cond.wait_for(lambda: mid in self.subacks, timeout), "no SUBACK"
        assert not any(code.is_failure for code in self.subacks[mid])

    def wait_for(self, topic_filter: str, count: int = 1, timeout: float = 10) -> list[Any]:
        def matching() -> list[mqtt.MQTTMessage]:
            return [m for m in self.messages if mqtt.topic_matches_sub(topic_filter, m.topic)]

        with self._cond:
            if not self._cond.wait_for(lambda: len(matching()) >= count, timeout):
                raise TimeoutError(f"{count} message(s) on {topic_filter} not received")
            return matching()

    def received(self, topic_filter: str = "#") -> list[mqtt.MQTTMessage]:
        with self._cond:
            return [m for m in self.messages if mqtt.topic_matches_sub(topic_filter, m.topic)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(
        self, _c: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Properties | None
    ) -> None:
        with self._cond:
            self.connack = reason
            self._cond.notify_all()

    def _on_subscribe(
        self, _c: mqtt.Client, _u: Any, mid: int, reasons: list[ReasonCode], _p: Any
    ) -> None:
        with self._cond:
            self.subacks[mid] = reasons
            self._cond.notify_all()

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(message)
            self._cond.notify_all()


@contextmanager
def subscribed(client: TlsClient, topic_filter: str) -> Iterator[TlsClient]:
    client.connect()
    try:
        client.subscribe(topic_filter)
        yield client
    finally:
        client.close()


# -- the agent ---------------------------------------------------------------------------------


def agent_config(
    tmp_path: Path,
    endpoint: Broker,
    tls: dict[str, Path],
    credentials: str = "",
    environ: dict[str, str] | None = None,
) -> AgentConfig:
    """The agent's TOML, TLS settings as an inline table, loaded as the CLI loads it."""
    inline = ", ".join(f'{key} = "{path}"' for key, path in tls.items())
    path = tmp_path / "agent.toml"
    path.write_text(f"""
[agent]
device_id = "{DEVICE}"
state_dir = "{tmp_path / "state"}"
shutdown_timeout = 2
twin_wait = 0  # no gateway here, no twin document to wait for

[mqtt]
host = "{endpoint.host}"
port = {endpoint.port}
keepalive = 2
reconnect_min_delay = 0.05
reconnect_max_delay = 0.2
{credentials}
tls = {{ {inline} }}

[outbox]
commit_interval = 0.02

[sensors.env]
driver = "bme280"
interval = 0.05
backend = "emulated"
""")
    return load_agent_config(path, environ or {})


def assert_kept_out(agent: Agent, endpoint: Broker, watcher: TlsClient) -> None:
    """The agent reads on, retries the broker, and never gets a reading through."""
    # Two connections are the harness's readiness probe and the watcher's.
    poll(lambda: connections(endpoint) >= 4, 10, what="the agent's repeated attempts")
    poll(lambda: agent.readings >= 10, 10, what="readings while refused")
    assert agent.link.connect_count == 0
    assert not agent.link.connected
    assert agent.outbox.depth > 0, "the readings wait in the outbox"
    assert watcher.received() == []


# -- client certificates --------------------------------------------------------------------------


def test_agent_publishes_with_a_client_certificate(
    pki: Pki, cert_broker: Broker, tmp_path: Path
) -> None:
    tls = {"ca_file": pki.ca.cert, "cert_file": pki.clients[DEVICE].cert}
    tls["key_file"] = pki.clients[DEVICE].key
    config = agent_config(tmp_path, cert_broker, tls)
    assert config.mqtt.tls is not None
    watcher = TlsClient(cert_broker, ca=pki.ca.cert, client_cert=pki.clients[SUBSCRIBER])
    with subscribed(watcher, f"edgetwin/{DEVICE}/#"), agent_thread(config) as agent:
        readings = watcher.wait_for(TELEMETRY, count=3)
        birth = watcher.wait_for(f"edgetwin/{DEVICE}/status")
        assert agent.link.connected
    telemetry = [Telemetry.decode(m.payload) for m in readings]
    assert [t.seq for t in telemetry] == list(range(1, len(telemetry) + 1))
    assert Status.decode(birth[0].payload).state == "online"
    # use_identity_as_username: the broker knows the agent by its certificate's name.
    log = cert_broker.log_text()
    assert re.search(rf"as edgetwin-agent-{DEVICE} \(.*u'{DEVICE}'\)", log), log


def test_agent_trusting_the_wrong_ca_keeps_retrying(
    pki: Pki, cert_broker: Broker, tmp_path: Path
) -> None:
    tls = {"ca_file": pki.other_ca.cert, "cert_file": pki.clients[DEVICE].cert}
    tls["key_file"] = pki.clients[DEVICE].key
    watcher = TlsClient(cert_broker, ca=pki.ca.cert, client_cert=pki.clients[SUBSCRIBER])
    with (
        subscribed(watcher, f"edgetwin/{DEVICE}/#"),
        agent_thread(agent_config(tmp_path, cert_broker, tls)) as agent,
    ):
        assert_kept_out(agent, cert_broker, watcher)


def test_test_clients_see_the_same_refusals(pki: Pki, cert_broker: Broker) -> None:
    """The failures above, one handshake each, with their causes."""
    wrong_ca = TlsClient(cert_broker, ca=pki.other_ca.cert, client_cert=pki.clients[SUBSCRIBER])
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        wrong_ca.connect()
    # No client certificate: with TLS 1.3 the broker's refusal may come after our side of the
    # handshake has finished, as a closed connection instead of an exception.
    anonymous = TlsClient(cert_broker, ca=pki.ca.cert)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        anonymous.connect()
    # A certificate from the wrong CA: refused by the broker.
    stranger = TlsClient(cert_broker, ca=pki.ca.cert, client_cert=pki.other_ca)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        stranger.connect()
    TlsClient(cert_broker, ca=pki.ca.cert, client_cert=pki.clients[SUBSCRIBER]).connect().close()


# -- username and password ----------------------------------------------------------------------


def test_agent_publishes_with_username_and_password(
    pki: Pki, password_broker: Broker, tmp_path: Path
) -> None:
    # The password comes from the environment, as a systemd credential or EnvironmentFile would
    # give it; only the username is in the file.
    config = agent_config(
        tmp_path,
        password_broker,
        {"ca_file": pki.ca.cert},
        credentials=f'username = "{USERNAME}"',
        environ={"EDGETWIN_MQTT_PASSWORD": PASSWORD},
    )
    watcher = TlsClient(password_broker, ca=pki.ca.cert, username=SUBSCRIBER, password="sub-secret")
    with subscribed(watcher, f"edgetwin/{DEVICE}/#"), agent_thread(config):
        readings = watcher.wait_for(TELEMETRY, count=3)
    assert Telemetry.decode(readings[0].payload).device == DEVICE


def test_wrong_password_is_refused(pki: Pki, password_broker: Broker, tmp_path: Path) -> None:
    intruder = TlsClient(password_broker, ca=pki.ca.cert, username=USERNAME, password="guess")
    with pytest.raises(ConnectionError, match=r"Not authorized|Bad user name or password"):
        intruder.connect()
    nobody = TlsClient(password_broker, ca=pki.ca.cert)
    with pytest.raises(ConnectionError, match=r"Not authorized|Bad user name or password"):
        nobody.connect()

    config = agent_config(
        tmp_path,
        password_broker,
        {"ca_file": pki.ca.cert},
        credentials=f'username = "{USERNAME}"\npassword = "guess"',
    )
    watcher = TlsClient(password_broker, ca=pki.ca.cert, username=SUBSCRIBER, password="sub-secret")
    with subscribed(watcher, f"edgetwin/{DEVICE}/#"), agent_thread(config) as agent:
        assert_kept_out(agent, password_broker, watcher)
