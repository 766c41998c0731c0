"""The broker as the trust boundary: `edgetwin broker-acl`'s files on a real mosquitto over TLS.

Each integration test starts a private TLS broker with the generated ACL and password file
(`start_broker(tls=True, acl_devices=...)` of `edgetwin.testing.broker`) and checks from the
outside: a refused publish is answered with PUBACK 0x87 (MQTT 5, QoS 1), and a subscriber with
the gateway's identity, which reads everything, proves that the forged message never reached
anyone.
"""

from __future__ import annotations

import base64
import shutil
import stat
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from edgetwin.agent.config import AgentConfig, AgentMqttSettings, AgentSection, MqttSettings
from edgetwin.agent.contract import Presence, Status, Telemetry, Topics
from edgetwin.agent.mqtt import MqttLink
from edgetwin.gateway.acl import (
    ENGINE_USER,
    GATEWAY_USER,
    HOMEASSISTANT_USER,
    READER_USER,
    SIMULATE_USER,
    acl_text,
    password_line,
    write_broker_files,
)
from edgetwin.gateway.app import create_app
from edgetwin.gateway.config import GatewayConfig, load_gateway_config
from edgetwin.gateway.engine.link import endpoint_from_mqtt
from edgetwin.gateway.scenario.claims import ShardClaim, ShardClaimError
from edgetwin.testing import agent as testing_agent
from edgetwin.testing.broker import Broker
from edgetwin.testing.endpoint import MqttEndpoint
from edgetwin.testing.waiting import poll
from tests.conftest import BrokerFactory
from tests.fleet_helpers import bme280

DEVICE, OTHER, MISSING = "pi-a", "pi-b", "pi-gone"
TOKEN = "acl-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TOPICS = Topics()
NOT_AUTHORIZED = 0x87

# The `acl_broker` fixture skips, with the reason, where no broker with TLS can run.
integration = pytest.mark.integration


# -- the files ---------------------------------------------------------------------------------


def _env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line[:1].isalpha())


def test_password_lines_are_what_mosquitto_passwd_writes(tmp_path: Path) -> None:
    binary = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not Path(binary).exists():
        pytest.skip("mosquitto_passwd is not installed")
    passwords = tmp_path / "passwords"
    subprocess.run(
        [binary, "-c", "-b", str(passwords), "alice", "s3cret"], check=True, capture_output=True
    )
    theirs = passwords.read_text().strip()
    salt = base64.b64decode(theirs.split("$")[3])
    assert password_line("alice", "s3cret", salt=salt) == theirs
    assert password_line("alice", "other", salt=salt) != theirs


def test_a_rerun_keeps_passwords_and_rotates_only_what_it_is_asked(tmp_path: Path) -> None:
    first = write_broker_files(tmp_path, TOPICS, [DEVICE, OTHER])
    assert first.devices == [DEVICE, OTHER]
    creds = tmp_path / "credentials"
    device_env = creds / "devices" / f"{DEVICE}.env"
    services = ("gateway", "simulate", "reader", "homeassistant")
    secret = [device_env, *(creds / f"{n}.env" for n in services)]
    for path in [*secret, tmp_path / "passwords"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(creds.stat().st_mode) == 0o700
    assert _env(device_env)["EDGETWIN_MQTT_USERNAME"] == DEVICE
    before = {path.name: _env(path) for path in creds.rglob("*.env")}

    second = write_broker_files(tmp_path, TOPICS, [DEVICE, OTHER, MISSING], rotate=[OTHER])
    after = {path.name: _env(path) for path in creds.rglob("*.env")}
    assert after[f"{DEVICE}.env"] == before[f"{DEVICE}.env"]
    assert after["gateway.env"] == before["gateway.env"]
    assert after[f"{OTHER}.env"] != before[f"{OTHER}.env"]
    assert MISSING in second.devices
    users = [line.split(":")[0] for line in (tmp_path / "passwords").read_text().splitlines()]
    assert users == [
        *(DEVICE, OTHER, MISSING),
        *(GATEWAY_USER, ENGINE_USER, SIMULATE_USER, READER_USER, HOMEASSISTANT_USER),
    ]
    assert _env(creds / "simulate.env")["EDGETWIN_MQTT_USERNAME"] == SIMULATE_USER

    third = write_broker_files(tmp_path, TOPICS, [DEVICE], rotate=["engine", "simulate"])
    assert third.revoked == [OTHER, MISSING]
    gateway_env = _env(creds / "gateway.env")
    assert gateway_env["EDGETWIN_MQTT_PASSWORD"] == before["gateway.env"]["EDGETWIN_MQTT_PASSWORD"]
    assert (
        gateway_env["EDGETWIN_ENGINE_PASSWORD"] != before["gateway.env"]["EDGETWIN_ENGINE_PASSWORD"]
    )
    simulate_password = _env(creds / "simulate.env")["EDGETWIN_MQTT_PASSWORD"]
    assert simulate_password != before["simulate.env"]["EDGETWIN_MQTT_PASSWORD"]
    assert _env(creds / "reader.env") == before["reader.env"]
    with pytest.raises(ValueError, match="nobody"):
        write_broker_files(tmp_path, TOPICS, [DEVICE], rotate=["nobody"])


def rules_of(acl: str, user: str) -> list[str]:
    """The rule lines of `user`'s section of an ACL file."""
    return acl.split(f"user {user}\n", maxsplit=1)[1].split("\n\n", maxsplit=1)[0].splitlines()


def test_the_acl_follows_prefix_and_telemetry_template() -> None:
    text = acl_text(Topics(prefix="site/a", telemetry_template="sensors/{device_id}"))
    assert "pattern write sensors/%u\n" in text
    assert "pattern write site/a/%u/status\n" in text
    assert "pattern read site/a/%u/config/desired\n" in text
    assert "pattern read site/a/%u/commands/+\n" in text
    assert "pattern write site/a/%u/responses/+\n" in text
    assert "pattern readwrite homeassistant/+/%u/+/config\n" in text
    gateway = rules_of(text, GATEWAY_USER)
    assert gateway == [
        "topic read site/a/#",
        "topic read sensors/+",
        "topic write site/a/+/twin",
        "topic write site/a/+/config/desired",
        "topic write site/a/+/commands/+",
        "topic write site/a/+/config/reported",
        "topic write site/a/+/responses/+",
        "topic write site/a/rebirth",
        "topic write site/a/_index/+",
        "topic write site/a/_gateways/+",
        "topic write site/a/_probe/+",
        "topic write homeassistant/+/+/+/config",
    ]
    engine = rules_of(text, ENGINE_USER)
    assert engine == ["topic write sensors/+", "topic write site/a/labels"]
    simulate = rules_of(text, SIMULATE_USER)
    assert simulate == [*engine, "topic readwrite site/a/_shards/+/+"]
    with_status = acl_text(TOPICS, engine_status=True)
    for user in (ENGINE_USER, SIMULATE_USER):
        rules = rules_of(with_status, user)
        assert "topic write edgetwin/+/status" in rules, user
    homeassistant = rules_of(text, HOMEASSISTANT_USER)
    assert homeassistant == [
        "topic read site/a/#",
        "topic read sensors/+",
        "topic read homeassistant/#",
        "topic write site/a/+/outputs/+/set",
    ]
    shared = acl_text(Topics(telemetry_template="sensors/data"))
    assert "any device may write readings there" in shared


def test_the_engine_logs_in_as_its_own_identity() -> None:
    config = GatewayConfig.from_builtins({"mqtt": {"username": GATEWAY_USER, "password": "g"}})
    assert endpoint_from_mqtt(config.mqtt, config.engine).username == GATEWAY_USER
    environ = {"EDGETWIN_ENGINE_USERNAME": ENGINE_USER, "EDGETWIN_ENGINE_PASSWORD": "e"}
    toml = Path(__file__).resolve().parent.parent / "config" / "gateway.toml"
    loaded = load_gateway_config(toml, environ=environ)
    endpoint = endpoint_from_mqtt(loaded.mqtt, loaded.engine)
    assert (endpoint.username, endpoint.password) == (ENGINE_USER, "e")


# -- a broker with the files -------------------------------------------------------------------


def mqtt_section(broker: Broker, who: str) -> dict[str, Any]:
    """The `[mqtt]` table of an agent or gateway logging in as `who`."""
    endpoint = broker.endpoint_for(who)
    return endpoint.mqtt_settings(keepalive=2, reconnect_min_delay=0.1, reconnect_max_delay=0.5)


@pytest.fixture
def acl_broker(broker_factory: BrokerFactory) -> Broker:
    """A TLS broker with `edgetwin broker-acl`'s ACL and passwords for three devices."""
    return broker_factory(tls=True, acl_devices=[DEVICE, OTHER, MISSING])


class Client:
    """An MQTT client (TLS and login from its endpoint) that records what arrives and every
    PUBACK's reason."""

    def __init__(self, endpoint: MqttEndpoint) -> None:
        self._cond = threading.Condition()
        self.connack: ReasonCode | None = None
        self.acks: dict[int, ReasonCode] = {}
        self.messages: list[mqtt.MQTTMessage] = []
        self.client = endpoint.paho_client(client_id=f"acl-test-{uuid.uuid4().hex[:8]}")
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.subacks: set[int] = set()
        self._endpoint = endpoint

    def connect(self) -> Client:
        self.client.connect(self._endpoint.host, self._endpoint.port, keepalive=10)
        deadline = time.monotonic() + 5
        while self.connack is None and time.monotonic() < deadline:
            if self.client.loop(timeout=0.05) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
        if self.connack is None or self.connack.is_failure:
            raise ConnectionError(f"refused: CONNACK {self.connack}")
        self.client.loop_start()
        return self

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def subscribe(self, *filters: str) -> None:
        _, mid = self.client.subscribe([(f, 1) for f in filters])
        with self._cond:
            assert self._cond.wait_for(lambda: mid in self.subacks, 5), "no SUBACK"

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> int:
        """The PUBACK's failure reason (QoS 1), else 0; at QoS 0, 0 once handed to the socket."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if qos == 0:
            info.wait_for_publish(5)
            return 0
        with self._cond:
            assert self._cond.wait_for(lambda: info.mid in self.acks, 5), f"no PUBACK: {topic}"
            reason = self.acks[info.mid]
            # 0x10, no matching subscribers, is a success too.
            return int(reason.value) if reason.is_failure else 0

    def wait_for(self, topic: str, timeout: float = 10) -> mqtt.MQTTMessage:
        with self._cond:
            assert self._cond.wait_for(lambda: self.topics().count(topic) > 0, timeout), topic
            return next(m for m in self.messages if m.topic == topic)

    def wait_until(
        self, match: Callable[[mqtt.MQTTMessage], bool], what: str, timeout: float = 10
    ) -> None:
        with self._cond:
            arrived = self._cond.wait_for(lambda: any(map(match, self.messages)), timeout)
            assert arrived, f"{what}: not received within {timeout} s"

    def topics(self) -> list[str]:
        with self._cond:
            return [m.topic for m in self.messages]

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        with self._cond:
            self.connack = reason
            self._cond.notify_all()

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
        with self._cond:
            self.acks[mid] = reason
            self._cond.notify_all()

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, _r: Any, _p: Any) -> None:
        with self._cond:
            self.subacks.add(mid)
            self._cond.notify_all()

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(message)
            self._cond.notify_all()


@contextmanager
def client(broker: Broker, who: str, *filters: str) -> Iterator[Client]:
    connected = Client(broker.endpoint_for(who)).connect()
    try:
        if filters:
            connected.subscribe(*filters)
        yield connected
    finally:
        connected.close()


def _forged_status(device: str) -> bytes:
    return Status(
        device=device,
        state=Presence.OFFLINE,
        ts=time.time(),
        boot=10**9,
        agent_version="x",
        reason="shutdown",
    ).encode()


# -- what each identity may do -----------------------------------------------------------------


@integration
def test_only_known_identities_connect(acl_broker: Broker) -> None:
    with pytest.raises(ConnectionError):
        Client(acl_broker.endpoint.as_user(None, None)).connect()
    other_password = acl_broker.endpoint_for(OTHER).password
    with pytest.raises(ConnectionError):
        Client(acl_broker.endpoint.as_user(DEVICE, other_password)).connect()
    with client(acl_broker, DEVICE):
        pass


@integration
def test_a_device_writes_only_its_own_topics(acl_broker: Broker) -> None:
    mine = TOPICS.telemetry(DEVICE, "env")
    with (
        client(acl_broker, GATEWAY_USER, "edgetwin/#") as watcher,
        client(acl_broker, DEVICE) as device,
    ):
        forged = {
            TOPICS.status(OTHER): _forged_status(OTHER),
            TOPICS.telemetry(OTHER, "env"): b"{}",
            TOPICS.state(OTHER): b"{}",
            TOPICS.reported(OTHER): b"{}",
            TOPICS.twin(DEVICE): b"{}",
            TOPICS.twin(OTHER): b"{}",
            TOPICS.desired(DEVICE): b"{}",
            TOPICS.desired(OTHER): b"{}",
            TOPICS.rebirth(): b"{}",
            TOPICS.labels(): b"{}",
        }
        reasons = {
            topic: device.publish(topic, body, retain=True) for topic, body in forged.items()
        }
        assert reasons == dict.fromkeys(forged, NOT_AUTHORIZED)
        device.publish(TOPICS.status(OTHER), _forged_status(OTHER), qos=0, retain=True)
        for topic in (TOPICS.status(DEVICE), TOPICS.state(DEVICE), TOPICS.reported(DEVICE)):
            assert device.publish(topic, b"{}") == 0
        assert device.publish(mine, b"{}") == 0
        # One connection's messages arrive in order: once the last is in, any forged one
        # that got through would be in too.
        watcher.wait_for(mine)
        assert set(watcher.topics()) == {
            TOPICS.status(DEVICE),
            TOPICS.state(DEVICE),
            TOPICS.reported(DEVICE),
            mine,
        }


@integration
def test_a_device_reads_only_its_own_desired_config_and_twin(
    acl_broker: Broker,
) -> None:
    with client(acl_broker, GATEWAY_USER) as gateway:
        for device in (DEVICE, OTHER):
            assert gateway.publish(TOPICS.desired(device), b"{}", retain=True) == 0
            assert gateway.publish(TOPICS.twin(device), b"{}", retain=True) == 0
        with client(acl_broker, OTHER) as other:
            assert other.publish(TOPICS.telemetry(OTHER, "env"), b"{}") == 0
        with client(acl_broker, DEVICE, "edgetwin/#") as reading:
            reading.wait_for(TOPICS.desired(DEVICE))
            reading.wait_for(TOPICS.twin(DEVICE))
            assert gateway.publish(TOPICS.rebirth(), b"{}") == 0
            reading.wait_for(TOPICS.rebirth())
            assert sorted(set(reading.topics())) == sorted(
                [TOPICS.desired(DEVICE), TOPICS.twin(DEVICE), TOPICS.rebirth()]
            )


@integration
def test_commands_and_their_answers_go_only_where_they_must(acl_broker: Broker) -> None:
    """The gateway alone sends commands; a device reads only its own and answers only under
    its own id, so no device can command another or forge another's answer. A gateway may
    answer for any device: it answers for those it simulates (gateway/simulated.py)."""
    mine, theirs = TOPICS.command(DEVICE, "diagnostics"), TOPICS.command(OTHER, "diagnostics")
    answer, forged = TOPICS.response(DEVICE, "gw-a"), TOPICS.response(OTHER, "gw-a")
    with (
        client(acl_broker, GATEWAY_USER, TOPICS.all_responses("gw-a")) as gateway,
        client(acl_broker, DEVICE, "edgetwin/#") as device,
    ):
        for who in (ENGINE_USER, READER_USER, OTHER):
            with client(acl_broker, who) as other:
                assert other.publish(mine, b"{}") == NOT_AUTHORIZED, who
                assert other.publish(answer, b"{}") == NOT_AUTHORIZED, who
        assert device.publish(theirs, b"{}") == NOT_AUTHORIZED
        assert device.publish(mine, b"{}") == NOT_AUTHORIZED  # not even to itself
        assert device.publish(forged, b"{}") == NOT_AUTHORIZED
        assert gateway.publish(theirs, b"{}") == 0
        assert gateway.publish(mine, b"{}") == 0
        device.wait_for(mine)
        assert device.publish(answer, b"{}") == 0
        gateway.wait_for(answer)
        # Each connection's messages arrive in order: anything refused before would be in.
        assert device.topics() == [mine]
        assert gateway.topics() == [answer]


@integration
def test_the_engine_writes_readings_and_labels_only(acl_broker: Broker) -> None:
    with client(acl_broker, ENGINE_USER) as engine:
        for topic in (TOPICS.telemetry(MISSING, "env"), TOPICS.labels()):
            assert engine.publish(topic, b"{}") == 0
        for topic in (
            TOPICS.status(DEVICE),
            TOPICS.twin(DEVICE),
            TOPICS.desired(DEVICE),
            TOPICS.rebirth(),
            TOPICS.gateway("gw-a"),
        ):
            assert engine.publish(topic, b"{}") == NOT_AUTHORIZED, topic
    with client(acl_broker, READER_USER) as reader:
        assert reader.publish(TOPICS.telemetry(DEVICE, "env"), b"{}") == NOT_AUTHORIZED
    with client(acl_broker, DEVICE) as device:
        # A device cannot forge a gateway's lease (its will included: a gateway's membership).
        assert device.publish(TOPICS.gateway("gw-a"), b"{}") == NOT_AUTHORIZED
    with client(acl_broker, GATEWAY_USER) as gateway:
        assert gateway.publish(TOPICS.gateway("gw-a"), b"", retain=True) == 0
        assert gateway.publish(TOPICS.telemetry(DEVICE, "env"), b"{}") == NOT_AUTHORIZED
        assert gateway.publish(TOPICS.status(DEVICE), b"{}") == NOT_AUTHORIZED


@integration
def test_simulation_replicas_claim_shards_and_write_readings_under_their_identity(
    acl_broker: Broker,
) -> None:
    """`edgetwin simulate --shard auto/N` on a broker with the ACL: its identity keeps and
    clears its lease, its last will clears it too, and it writes readings and labels; nothing
    else, and no other identity may write a lease."""
    settings = MqttSettings.from_builtins(mqtt_section(acl_broker, SIMULATE_USER))
    with client(acl_broker, READER_USER, TOPICS.all_shard_leases("fleet")) as reader:
        with ShardClaim(settings, "fleet", 2, 10) as first:
            assert first.claim() == 0
            with ShardClaim(settings, "fleet", 2, 10) as second:
                assert second.claim() == 1
            reader.wait_for(TOPICS.shard_lease("fleet", first.session))
        lease_topic = TOPICS.shard_lease("fleet", "0" * 16)
        dying = Client(acl_broker.endpoint_for(SIMULATE_USER))
        dying.client.will_set(lease_topic, b"", qos=1, retain=True)
        dying.connect()
        for topic in (TOPICS.telemetry(MISSING, "env"), TOPICS.labels(), lease_topic):
            assert dying.publish(topic, b"{}", retain=topic == lease_topic) == 0, topic
        for topic in (TOPICS.status(DEVICE), TOPICS.twin(DEVICE), TOPICS.gateway("gw-a")):
            assert dying.publish(topic, b"{}") == NOT_AUTHORIZED, topic
        reader.wait_for(lease_topic)
        dying.client.loop_stop()
        sock = dying.client.socket()
        assert sock is not None
        sock.close()  # no DISCONNECT: the broker publishes the will
        reader.wait_until(lambda m: m.topic == lease_topic and not m.payload, "the will")
        for who in (ENGINE_USER, DEVICE, GATEWAY_USER):
            with client(acl_broker, who) as other:
                assert other.publish(lease_topic, b"{}") == NOT_AUTHORIZED, who
    engine = MqttSettings.from_builtins(mqtt_section(acl_broker, ENGINE_USER))
    with (
        ShardClaim(engine, "fleet", 2, 10) as refused,
        pytest.raises(ShardClaimError, match="refused this replica's shard lease"),
    ):
        refused.claim(timeout=1)


# -- the whole fleet with the ACL on -----------------------------------------------------------


@integration
def test_the_fleet_runs_end_to_end_with_the_acl_on(acl_broker: Broker, tmp_path: Path) -> None:
    """Agent, gateway and stand-ins each on their own credentials over TLS. The gateway's
    identity may not write telemetry: the simulated readings of the missing device can only
    come from the engine's."""
    engine = acl_broker.engine_endpoint
    config = GatewayConfig.from_builtins(
        {
            "mqtt": mqtt_section(acl_broker, GATEWAY_USER),
            "engine": {"username": engine.username, "password": engine.password},
            "presence": {"startup_grace": 0.3},
            "api": {"token": TOKEN},
            "devices": [
                {"id": DEVICE, "sensors": {"env": bme280(0.2)}},
                {"id": MISSING, "sensors": {"env": bme280(0.2)}},
            ],
        }
    )
    agent = AgentConfig(
        agent=AgentSection(device_id=DEVICE, state_dir=tmp_path / "state", state_interval=0.5),
        mqtt=AgentMqttSettings.from_builtins(mqtt_section(acl_broker, DEVICE)),
        sensors={"env": bme280(0.2)},
    )
    with (
        client(acl_broker, READER_USER, TOPICS.telemetry(MISSING, "+")) as reader,
        TestClient(create_app(config)) as api,
        testing_agent.agent_thread(agent),
    ):

        def view(device: str) -> dict[str, Any]:
            body: dict[str, Any] = api.get(f"/devices/{device}").json()
            return body

        poll(lambda: view(DEVICE)["presence"] == "online", 15, what="agent online")
        pushed = api.patch(
            f"/devices/{DEVICE}/desired",
            json={"sensors": {"env": {"interval": 0.5}}},
            headers={**AUTH, "If-Match": '"0"'},
        )
        assert pushed.status_code == 200, pushed.text
        poll(lambda: view(DEVICE)["config"] == "in_sync", 15, what="config applied")
        assert view(DEVICE)["applied_version"] == 1
        answered = api.post(f"/devices/{DEVICE}/commands/diagnostics", json={}, headers=AUTH)
        assert answered.status_code == 200, answered.text
        assert answered.json()["result"]["config_version"] == 1
        reading = reader.wait_for(TOPICS.telemetry(MISSING, "env"), timeout=15)
        assert Telemetry.decode(bytes(reading.payload)).source == "simulated"


@integration
def test_the_mqtt_link_counts_publishes_the_broker_refused(acl_broker: Broker) -> None:
    link = MqttLink(AgentMqttSettings.from_builtins(mqtt_section(acl_broker, DEVICE)))
    link.start()
    try:
        assert link.wait_connected(10)
        link.publish(TOPICS.status(DEVICE), _forged_status(DEVICE), qos=1).wait(5)
        assert link.rejected == 0
        link.publish(TOPICS.status(OTHER), _forged_status(OTHER), qos=1).wait(5)
        poll(lambda: link.rejected == 1, 5, what="refusal counted")
    finally:
        link.close()


@integration
def test_rotation_and_revocation_take_effect_at_a_reload(acl_broker: Broker) -> None:
    old = acl_broker.endpoint_for(DEVICE)
    files = acl_broker.acl_files
    assert files is not None
    with client(acl_broker, DEVICE) as before:
        write_broker_files(files, TOPICS, [DEVICE, MISSING], rotate=[DEVICE])  # OTHER revoked
        new = acl_broker.endpoint_for(DEVICE)
        assert new.password != old.password
        Client(acl_broker.endpoint_for(OTHER)).connect().close()  # not reloaded yet
        acl_broker.reload()
        # mosquitto checks the connected clients against the reloaded files.
        poll(lambda: not before.client.is_connected(), 10, what="old password disconnected")
    with pytest.raises(ConnectionError):
        Client(old).connect()
    with pytest.raises(ConnectionError):
        Client(acl_broker.endpoint_for(OTHER)).connect()
    with client(acl_broker, DEVICE) as after:
        assert after.publish(TOPICS.status(DEVICE), b"{}") == 0
    with client(acl_broker, MISSING):
        pass


def test_the_command_writes_the_files_from_a_gateway_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edgetwin.cli import main

    config = Path(__file__).resolve().parent.parent / "config" / "gateway.toml"
    out = tmp_path / "out"
    assert main(["broker-acl", "--config", str(config), "--out", str(out), "--device", "x-1"]) == 0
    users = [line.split(":")[0] for line in (out / "passwords").read_text().splitlines()]
    assert users[:3] == ["greenhouse-01", "greenhouse-02", "x-1"]
    conf = (out / "mosquitto.conf").read_text()
    assert f"acl_file {out.resolve() / 'acl'}\n" in conf
    assert "allow_anonymous false\n" in conf
    assert "listener 8883\n" in conf
    args = ["broker-acl", "--config", str(config), "--out", str(out), "--device", "Bad/Id"]
    assert main(args) == 2
    assert "invalid device id 'Bad/Id'" in capsys.readouterr().err
