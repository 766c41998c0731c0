"""The shipped broker harness, `edgetwin.testing.broker`: lifecycle, variants and back ends.

Against a real mosquitto wherever one runs; the Docker path is exercised where an engine
answers and skipped with the reason elsewhere, and its generated config is checked without
Docker, by running it on the local mosquitto. ACL depth lives in tests/test_broker_acl.py,
TLS depth in tests/test_tls.py; here each variant gets its one defining check.
"""

from __future__ import annotations

import dataclasses
import os
import re
import ssl
import subprocess
from pathlib import Path

import pytest

import edgetwin.testing.broker as harness
import edgetwin.testing.certs
from edgetwin.agent.contract import Topics
from edgetwin.gateway.acl import (
    ENGINE_USER,
    GATEWAY_USER,
    HOMEASSISTANT_USER,
    READER_USER,
    SIMULATE_USER,
)
from edgetwin.gateway.broker import MosquittoBroker, free_port
from edgetwin.testing.broker import (
    DEFAULT_USER,
    ENV_VAR,
    Broker,
    BrokerUnavailable,
    DockerMosquitto,
    mqtt_handshake,
    requested_backend,
    start_broker,
)
from edgetwin.testing.capture import Capture, publish
from edgetwin.testing.certs import OPENSSL_MISSING, openssl_binary
from edgetwin.testing.endpoint import MqttEndpoint
from edgetwin.testing.waiting import poll
from tests.conftest import BrokerFactory
from tests.test_broker_acl import NOT_AUTHORIZED, Client

pytestmark = pytest.mark.integration

TOPICS = Topics()
REFUSED = r"Not authorized|Bad user name or password"
needs_openssl = pytest.mark.skipif(openssl_binary() is None, reason=OPENSSL_MISSING)


def _accepted(endpoint: MqttEndpoint) -> None:
    """A real client connects with `endpoint` and gets a QoS 1 publish through."""
    client = Client(endpoint).connect()
    try:
        assert client.publish("harness/check", b"1") == 0
    finally:
        client.close()


# -- lifecycle ---------------------------------------------------------------------------------


def test_broker_fixture_face(broker: Broker) -> None:
    port = broker.port
    assert broker.url == f"mqtt://{broker.host}:{port}"
    assert broker.endpoint == MqttEndpoint(broker.host, port, protocol=broker.protocol)
    # Without an ACL every identity is the anonymous default one.
    assert broker.device_endpoint("pi-1") == broker.gateway_endpoint == broker.endpoint
    with Capture(broker, "face/#") as sub:
        publish(broker, "face/1", b"1")
        sub.wait_for("face/1")
    broker.restart()
    assert broker.port == port
    broker.kill()
    assert not broker.is_running
    broker.start()
    with Capture(broker, "face/#") as sub:
        publish(broker, "face/2", b"2")
        sub.wait_for("face/2")
    broker.stop()
    assert not broker.is_running
    assert broker.port == port


@pytest.mark.parametrize("fault", ["restart", "kill"])
def test_the_port_and_retained_messages_survive(broker_factory: BrokerFactory, fault: str) -> None:
    durable = broker_factory(persistence=True)
    port = durable.port
    publish(durable, "t/state", b"on", retain=True)
    if fault == "restart":
        durable.restart()
    else:
        server = durable.server
        if not isinstance(server, MosquittoBroker):
            pytest.skip("only mosquitto's database file shows when a change is saved")
        # mosquitto saves right after the PUBACK; a kill before the save would lose it.
        db = server.persistence_path
        assert db is not None
        poll(db.exists, 5, what="the database saved")
        durable.kill()
        durable.start()
    assert durable.port == port
    with Capture(durable, "t/state") as sub:
        assert sub.wait_for("t/state")[0].payload == b"on"


def test_close_deletes_the_files_and_a_given_workdir_is_kept(tmp_path: Path) -> None:
    broker = start_broker("mosquitto", auth=True)
    files = broker.workdir
    assert (files / "passwords").is_file()
    broker.close()
    broker.close()
    assert not files.exists()
    with start_broker("mosquitto", auth=True, workdir=tmp_path / "mine") as kept:
        assert kept.workdir == tmp_path / "mine"
    assert (tmp_path / "mine" / "passwords").is_file()


# -- variants ----------------------------------------------------------------------------------


def test_auth_refuses_anonymous_clients_and_wrong_passwords(broker_factory: BrokerFactory) -> None:
    broker = broker_factory(auth=True, users={"alice": "s3cret"})
    assert broker.identities == (DEFAULT_USER, "alice")
    assert broker.endpoint.username == DEFAULT_USER
    with pytest.raises(ConnectionError, match=REFUSED):
        Client(broker.endpoint.as_user(None, None)).connect()
    with pytest.raises(ConnectionError, match=REFUSED):
        Client(broker.endpoint.as_user("alice", "guess")).connect()
    _accepted(broker.endpoint)
    _accepted(broker.endpoint_for("alice"))
    assert broker.endpoint_for("alice").password == "s3cret"
    with pytest.raises(KeyError, match="bob"):
        broker.endpoint_for("bob")


@needs_openssl
def test_tls_refuses_plaintext_and_a_wrong_ca(broker_factory: BrokerFactory) -> None:
    broker = broker_factory(tls=True)
    assert broker.pki is not None
    assert broker.url == f"mqtts://{broker.host}:{broker.port}"
    assert broker.endpoint.ca_file == broker.pki.ca.cert
    assert broker.endpoint.mqtt_settings()["tls"] == {"ca_file": str(broker.pki.ca.cert)}
    plaintext = dataclasses.replace(broker.endpoint, ca_file=None)
    with pytest.raises(ConnectionError):
        Client(plaintext).connect()
    wrong_ca = dataclasses.replace(broker.endpoint, ca_file=broker.pki.other_ca.cert)
    with pytest.raises(ssl.SSLCertVerificationError):
        Client(wrong_ca).connect()
    _accepted(broker.endpoint)
    broker.restart()
    _accepted(broker.endpoint)


@needs_openssl
def test_client_certificates_are_demanded(broker_factory: BrokerFactory) -> None:
    broker = broker_factory(client_certificates=["pi-a"])
    assert broker.identities == (DEFAULT_USER, "pi-a")
    no_certificate = dataclasses.replace(broker.endpoint, cert_file=None, key_file=None)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        Client(no_certificate).connect()
    _accepted(broker.endpoint)
    _accepted(broker.endpoint_for("pi-a"))
    # use_identity_as_username: the broker knows the client by its certificate's name.
    assert re.search(r"as \S+ \(.*u'pi-a'\)", broker.log_text())


def test_acl_a_device_cannot_write_another_devices_topics(broker_factory: BrokerFactory) -> None:
    broker = broker_factory(acl_devices=["pi-a", "pi-b"])
    assert set(broker.identities) == {
        "pi-a", "pi-b", GATEWAY_USER, ENGINE_USER, SIMULATE_USER, READER_USER, HOMEASSISTANT_USER,
    }  # fmt: skip
    assert broker.endpoint == broker.gateway_endpoint
    assert broker.engine_endpoint.username == ENGINE_USER
    assert broker.simulate_endpoint.username == SIMULATE_USER
    assert broker.reader_endpoint.username == READER_USER
    device = Client(broker.device_endpoint("pi-a")).connect()
    try:
        assert device.publish(TOPICS.status("pi-b"), b"{}") == NOT_AUTHORIZED
        assert device.publish(TOPICS.status("pi-a"), b"{}") == 0
    finally:
        device.close()
    with pytest.raises(KeyError, match="pi-c"):
        broker.device_endpoint("pi-c")


def test_variants_that_cannot_go_together_say_so() -> None:
    with pytest.raises(ValueError, match="client_certificates"):
        Broker("mosquitto", auth=True, client_certificates=["x"])
    with pytest.raises(ValueError, match="users"):
        Broker("mosquitto", acl_devices=["x"], users={"a": "b"})


# -- back ends ---------------------------------------------------------------------------------


def test_docker_backend(broker_factory: BrokerFactory) -> None:
    """The testcontainers path; skipped with the reason where no Docker engine answers."""
    broker = broker_factory(backend="docker", auth=True)
    port = broker.port
    _accepted(broker.endpoint)
    broker.restart()
    assert broker.port == port
    broker.kill()
    broker.start()
    assert broker.port == port
    assert mqtt_handshake(broker.endpoint)


def test_docker_without_an_engine_is_unavailable_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(harness, "docker_engine_error", lambda: "no socket")
    broker = Broker("docker")
    try:
        with pytest.raises(BrokerUnavailable, match="no Docker engine answers: no socket"):
            broker.start()
    finally:
        broker.close()


@needs_openssl
def test_the_docker_config_carries_every_variant_and_mosquitto_runs_it(tmp_path: Path) -> None:
    """What the container would get, checked without Docker: every file the config names is
    copied in, and the local mosquitto, given the same files, accepts the gateway identity."""
    broker = Broker("docker", persistence=True, tls=True, acl_devices=["pi-a"])
    try:
        server = broker.server
        assert isinstance(server, DockerMosquitto)
        conf = server.config_text()
        copies = {path: content for content, path in server.copies()}
        assert copies["/mosquitto/config/mosquitto.conf"] == conf.encode()
        named = re.findall(
            r"^(?:password_file|acl_file|cafile|certfile|keyfile) (\S+)$", conf, re.M
        )
        assert len(named) == 5
        assert set(named) <= set(copies)
        assert broker.acl_files is not None
        assert copies[server.container_path("acl")] == (broker.acl_files / "acl").read_bytes()
        for line in ("listener 1883", "allow_anonymous false", "persistence true"):
            assert f"\n{line}\n" in conf
        if not MosquittoBroker.available():
            pytest.skip("the rest runs the config on the mosquitto binary")
        # The container's paths made local, and a free port for its listener.
        port = free_port()
        for path, content in copies.items():
            (tmp_path / Path(path).name).write_bytes(content)
        local = (
            conf.replace("/mosquitto/config/", f"{tmp_path}/")
            .replace("/mosquitto/data/", f"{tmp_path}/")
            .replace("listener 1883", f"listener {port} 127.0.0.1")
        )
        if os.geteuid() == 0:
            local += "user root\n"  # else mosquitto drops to a user that cannot read tmp_path
        (tmp_path / "mosquitto.conf").write_text(local)
        proc = subprocess.Popen(
            [MosquittoBroker().binary, "-c", str(tmp_path / "mosquitto.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            gateway = dataclasses.replace(broker.endpoint, port=port)
            poll(lambda: mqtt_handshake(gateway), 5, what="mosquitto on the Docker config")
            assert not mqtt_handshake(gateway.as_user(None, None))
        finally:
            proc.kill()
            proc.wait()
    finally:
        broker.close()


def test_forced_backend_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, expected in [("", None), ("auto", None), (" Docker ", "docker")]:
        monkeypatch.setenv(ENV_VAR, value)
        assert requested_backend() == expected
    monkeypatch.setenv(ENV_VAR, "rabbitmq")
    with pytest.raises(ValueError, match="mosquitto, docker, inprocess"):
        requested_backend()


def test_forced_inprocess_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "inprocess")
    with start_broker() as broker:
        assert broker.backend == "inprocess"
        assert broker.protocol == "3.1.1"
        assert mqtt_handshake(broker.endpoint)
    with pytest.raises(BrokerUnavailable, match="no TLS, passwords nor ACL"):
        Broker(auth=True)


def test_no_backend_is_unavailable_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(MosquittoBroker, "available", classmethod(lambda cls: False))
    monkeypatch.setattr(harness, "docker_engine_error", lambda: "no socket")
    with pytest.raises(BrokerUnavailable, match="no mosquitto binary and no Docker engine"):
        start_broker()


def test_tls_without_openssl_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(edgetwin.testing.certs, "openssl_binary", lambda: None)
    with pytest.raises(BrokerUnavailable, match="openssl"):
        Broker("mosquitto", tls=True)
