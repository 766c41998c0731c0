"""The engine worker's own MQTT client (gateway/engine/link.py).

Against a real mosquitto: delivery in order at QoS 0 and 1 over MQTT 5 and 3.1.1, the broker's
Receive Maximum as the window, keep-alive, a clean close that loses nothing, TLS with a client
certificate, and username/password refused with the broker's reason. Against a fake broker (a
listening socket in this test, speaking raw bytes): what mosquitto will not do on demand, such
as a PUBACK with a failure reason, a refused CONNACK with a reason string, a silent broker, and
a socket that takes only part of a batch.
"""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Callable, Iterator

import msgspec
import pytest

from edgetwin.gateway.broker import MosquittoBroker
from edgetwin.gateway.engine.link import Endpoint, EngineLink
from edgetwin.gateway.engine.mqtt_wire import (
    CONNECT,
    PINGREQ,
    PUBLISH,
    PacketReader,
    remaining_length,
)
from edgetwin.testing.broker import Broker
from edgetwin.testing.capture import Capture
from edgetwin.testing.certs import OPENSSL_MISSING, Pki, openssl_binary
from tests.test_tls import (  # noqa: F401  (fixtures, used by name)
    PASSWORD,
    SUBSCRIBER,
    USERNAME,
    TlsClient,
    cert_broker,
    password_broker,
    pki,
)

TOPIC = "edgetwin/link-test/telemetry/env"


def pump(link: EngineLink, done: Callable[[], bool], timeout: float = 5.0) -> None:
    """Drive the link as a worker's loop does (read, flush) until `done()` or the deadline."""
    deadline = time.monotonic() + timeout
    while not done():
        left = deadline - time.monotonic()
        fd = link.fileno()
        if left <= 0 or fd is None:
            raise TimeoutError(f"not reached within {timeout} s (link error: {link.error})")
        writers = [fd] if link.backlog_bytes() else []
        readable, writable, _ = select.select([fd], writers, [], min(left, 0.05))
        if readable:
            link.on_readable()
        if writable:
            link.flush()


def connected_link(endpoint: Endpoint, max_inflight: int = 1000) -> EngineLink:
    link = EngineLink(endpoint, worker=0, max_inflight=max_inflight)
    link.connect()
    pump(link, lambda: link.connected or link.fileno() is None)
    assert link.connected, link.error
    return link


def seq_payload(i: int) -> bytes:
    return json.dumps({"seq": i, "pad": "x" * 200}).encode()


def publish_seq(link: EngineLink, i: int, qos: int) -> None:
    """Queue reading `i` on TOPIC; at QoS 1, once the window has room for it."""
    if qos:
        pump(link, lambda: link.window_free() > 0)
        assert link.publish1(TOPIC, seq_payload(i), False)
    else:
        link.publish0(TOPIC, seq_payload(i), False)


# -- against mosquitto ---------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
@pytest.mark.parametrize("qos", [0, 1])
def test_messages_arrive_in_order_and_are_counted_as_sent_and_acked(
    broker: Broker, protocol: str, qos: int
) -> None:
    if protocol == "5" and broker.protocol != "5":
        pytest.skip("the broker speaks MQTT 3.1.1 only")
    n = 300
    link = connected_link(Endpoint(broker.host, broker.port, protocol=protocol))
    try:
        with Capture(broker, TOPIC, qos=qos) as sub:
            for i in range(n):
                publish_seq(link, i, qos)
                if i % 50 == 49:
                    link.flush()
            link.publish0(TOPIC + "/retained", b"kept", True)
            link.flush()
            got = sub.wait_for(TOPIC, count=n, timeout=10)
            pump(link, lambda: link.qos1_queued() == 0)
    finally:
        link.close()
    assert [json.loads(m.payload)["seq"] for m in got] == list(range(n))
    assert {m.qos for m in got} == {qos}
    assert link.sent == n + 1
    assert link.acked == (n if qos else 0)
    assert link.refused == link.lost == link.rejected == 0


@pytest.mark.integration
def test_the_window_is_the_brokers_receive_maximum_and_a_message_past_it_is_refused() -> None:
    if not MosquittoBroker.available():
        pytest.skip("needs the mosquitto binary (max_inflight_messages in its config)")
    with MosquittoBroker(extra_config=["max_inflight_messages 5"]) as broker:
        link = connected_link(Endpoint(broker.host, broker.port), max_inflight=100)
        try:
            assert link.window == 5  # mosquitto announces max_inflight_messages
            assert all(link.publish1(TOPIC, b"x", False) for _ in range(5))
            assert not link.publish1(TOPIC, b"x", False)
            assert link.refused == 1
            assert link.qos1_queued() == 5
            link.flush()
            pump(link, lambda: link.acked == 5)
            assert link.window_free() == 5
        finally:
            link.close()
        three = connected_link(Endpoint(broker.host, broker.port, protocol="3.1.1"), 3)
        three.close()
    assert three.window == 3  # no Receive Maximum in 3.1.1: our own bound


@pytest.mark.integration
def test_close_writes_everything_before_disconnect() -> None:
    if not MosquittoBroker.available():
        pytest.skip("needs the mosquitto binary (an unbounded queue for the subscriber)")
    n = 20_000
    with (
        MosquittoBroker(extra_config=["max_queued_messages 0"]) as broker,
        Capture(broker, TOPIC, qos=1) as sub,
    ):
        link = connected_link(Endpoint(broker.host, broker.port))
        for i in range(n):
            link.publish0(TOPIC, seq_payload(i), False)
        link.close()  # no flush before: close() must write the whole batch, then DISCONNECT
        got = sub.wait_for(TOPIC, count=n, timeout=30)
    assert [json.loads(m.payload)["seq"] for m in got] == list(range(n))
    assert link.sent == n
    assert link.lost == 0


@pytest.mark.integration
def test_keepalive_pings_keep_an_idle_connection_up(broker: Broker) -> None:
    link = connected_link(Endpoint(broker.host, broker.port, protocol=broker.protocol, keepalive=1))
    try:
        idle_until = time.monotonic() + 2.6  # two and a half keep-alive periods of silence
        while time.monotonic() < idle_until:
            assert link.tick(), link.error
            fd = link.fileno()
            assert fd is not None
            if select.select([fd], [], [], 0.1)[0]:
                assert link.on_readable(), link.error
        assert link.connected
    finally:
        link.close()


# -- TLS and authentication ------------------------------------------------------------------------

needs_tls = pytest.mark.skipif(
    openssl_binary() is None or not MosquittoBroker.available(),
    reason=f"TLS listeners need the mosquitto binary; {OPENSSL_MISSING}",
)


@pytest.mark.integration
@needs_tls
@pytest.mark.parametrize("qos", [0, 1])
def test_tls_with_a_client_certificate(
    pki: Pki,  # noqa: F811
    cert_broker: Broker,  # noqa: F811
    qos: int,
) -> None:
    client = pki.clients[SUBSCRIBER]
    endpoint = Endpoint(
        cert_broker.host,
        cert_broker.port,
        tls=True,
        ca_file=str(pki.ca.cert),
        cert_file=str(client.cert),
        key_file=str(client.key),
    )
    # Many TLS records and, at QoS 1, far more than the broker's window of 20; fewer than the
    # 1000 messages mosquitto queues for a subscriber by default.
    n = 800
    watcher = TlsClient(cert_broker, ca=pki.ca.cert, client_cert=client).connect()
    try:
        watcher.subscribe(TOPIC)
        link = connected_link(endpoint)
        try:
            for i in range(n):
                publish_seq(link, i, qos)
            link.flush()
            got = watcher.wait_for(TOPIC, count=n, timeout=20)
            pump(link, lambda: link.acked == (n if qos else 0))
        finally:
            link.close()
    finally:
        watcher.close()
    assert [json.loads(m.payload)["seq"] for m in got] == list(range(n))
    assert link.sent == n


@pytest.mark.integration
@needs_tls
def test_tls_with_username_and_password_and_a_wrong_one_refused_with_the_reason(
    pki: Pki,  # noqa: F811
    password_broker: Broker,  # noqa: F811
) -> None:
    base = Endpoint(password_broker.host, password_broker.port, tls=True, ca_file=str(pki.ca.cert))
    good = connected_link(msgspec.structs.replace(base, username=USERNAME, password=PASSWORD))
    try:
        assert good.publish1(TOPIC, b"x", False)
        good.flush()
        pump(good, lambda: good.acked == 1)
    finally:
        good.close()

    wrong = msgspec.structs.replace(base, username=USERNAME, password="guess")
    bad = EngineLink(wrong, worker=0, max_inflight=10)
    bad.connect()
    pump(bad, lambda: bad.fileno() is None)
    assert not bad.connected
    assert bad.error is not None
    assert bad.error.startswith("the broker refused the connection: ")
    assert "Not authorized (0x87)" in bad.error or "Bad User Name or Password" in bad.error


# -- against a fake broker -------------------------------------------------------------------------


class FakeBroker:
    """A listening socket on 127.0.0.1 that this test drives by hand, packet by packet."""

    def __init__(self, v5: bool = True) -> None:
        self.v5 = v5
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.conn: socket.socket | None = None
        self.reader = PacketReader(max_packet=1 << 24)

    def endpoint(self, **kwargs: object) -> Endpoint:
        protocol = "5" if self.v5 else "3.1.1"
        return msgspec.structs.replace(
            Endpoint("127.0.0.1", self.port, protocol=protocol), **kwargs
        )

    def accept(self, connack: bytes) -> bytes:
        """Take the link's connection, read its CONNECT, answer `connack` (body only)."""
        self.listener.settimeout(5)
        self.conn, _ = self.listener.accept()
        self.conn.settimeout(5)
        (first, body), *_ = self.read(1)
        assert first == CONNECT
        self.send(0x20, connack)
        return body

    def send(self, first: int, body: bytes) -> None:
        assert self.conn is not None
        self.conn.sendall(bytes((first,)) + remaining_length(len(body)) + body)

    def read(self, count: int) -> list[tuple[int, bytes]]:
        """Exactly `count` more packets (fails after 5 s without one)."""
        assert self.conn is not None
        got: list[tuple[int, bytes]] = []
        while len(got) < count:
            data = self.conn.recv(1 << 16)
            assert data, "the link closed the connection"
            got += self.reader.feed(data)
        assert len(got) == count, got
        return got

    def drain(self) -> list[tuple[int, bytes]]:
        """Every complete packet the kernel holds now, without waiting for more."""
        assert self.conn is not None
        got: list[tuple[int, bytes]] = []
        self.conn.setblocking(False)
        try:
            while True:
                data = self.conn.recv(1 << 20)
                if not data:
                    break
                got += self.reader.feed(data)
        except BlockingIOError:
            pass
        finally:
            self.conn.settimeout(5)
        return got

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.listener.close()


@pytest.fixture
def fake() -> Iterator[FakeBroker]:
    broker = FakeBroker()
    yield broker
    broker.close()


def publish_packet_id(body: bytes) -> int:
    topic_length = int.from_bytes(body[:2], "big")
    return int.from_bytes(body[2 + topic_length : 4 + topic_length], "big")


def test_receive_maximum_pubacks_and_a_failure_reason(fake: FakeBroker) -> None:
    link = EngineLink(fake.endpoint(), worker=0, max_inflight=100)
    link.connect()
    fake.accept(b"\x00\x00\x03\x21\x00\x03")  # Receive Maximum 3
    pump(link, lambda: link.connected)
    assert link.window == 3
    assert [link.publish1(TOPIC, b"p", False) for _ in range(4)] == [True, True, True, False]
    assert link.refused == 1
    link.flush()
    packets = fake.read(3)
    assert [first for first, _ in packets] == [PUBLISH | 0x02] * 3
    ids = [publish_packet_id(body) for _, body in packets]
    assert ids == [1, 2, 3]
    fake.send(0x40, b"\x00\x01")  # success, reason code left out
    fake.send(0x40, b"\x00\x02\x87\x00")  # not authorized
    fake.send(0x40, b"\x00\x63")  # an id never sent: ignored
    pump(link, lambda: link.qos1_queued() == 1)
    assert (link.acked, link.rejected) == (1, 1)
    assert link.window_free() == 2
    link.drop()
    assert link.lost == 1  # packet 3, sent and never acknowledged
    assert link.sent == 3


@pytest.mark.parametrize(
    ("v5", "connack", "reason"),
    [
        (True, b"\x00\x87\x07\x1f\x00\x04nope", "Not authorized (0x87): nope"),
        (True, b"\x00\x86", "Bad User Name or Password (0x86)"),
        (False, b"\x00\x05", "Not authorized (0x05)"),
    ],
)
def test_a_refused_connack_ends_the_connection_with_the_brokers_reason(
    v5: bool, connack: bytes, reason: str
) -> None:
    fake = FakeBroker(v5=v5)
    try:
        link = EngineLink(fake.endpoint(username="u", password="p"), worker=0, max_inflight=10)
        link.connect()
        connect = fake.accept(connack)
        assert connect[6] == (5 if v5 else 4)  # protocol level
        assert connect[7] & 0xC0 == 0xC0  # username and password flags
        pump(link, lambda: link.fileno() is None)
    finally:
        fake.close()
    assert not link.connected
    assert link.error == f"the broker refused the connection: {reason}"


def test_a_server_disconnect_is_reported(fake: FakeBroker) -> None:
    link = EngineLink(fake.endpoint(), worker=0, max_inflight=10)
    link.connect()
    fake.accept(b"\x00\x00\x00")
    pump(link, lambda: link.connected)
    fake.send(0xE0, b"\x8b\x00")
    pump(link, lambda: link.fileno() is None)
    assert link.error == "the broker disconnected: Server shutting down (0x8B)"


def test_a_silent_broker_gets_a_pingreq_then_the_connection_is_dropped(fake: FakeBroker) -> None:
    link = EngineLink(fake.endpoint(keepalive=1), worker=0, max_inflight=10)
    link.connect()
    fake.accept(b"\x00\x00\x00")
    pump(link, lambda: link.connected)
    deadline = time.monotonic() + 5
    while link.tick() and time.monotonic() < deadline:
        fd = link.fileno()
        assert fd is not None
        select.select([fd], [], [], 0.1)
    assert link.error == "no PINGRESP within 1 s"
    assert [first for first, _ in fake.drain()] == [PINGREQ]


def test_only_bytes_the_socket_took_count_and_a_partial_batch_stays_in_order(
    fake: FakeBroker,
) -> None:
    """The broker reads nothing until the socket is full: `sent` must equal the complete
    PUBLISH packets the kernel took, and the rest must follow, in order, once it reads."""
    link = EngineLink(fake.endpoint(), worker=0, max_inflight=10)
    link.connect()
    fake.accept(b"\x00\x00\x00")
    pump(link, lambda: link.connected)
    published = 0
    while link.backlog_bytes() == 0:
        for _ in range(1000):
            link.publish0(TOPIC, seq_payload(published), False)
            published += 1
        assert link.flush()
    assert 0 < link.sent < published
    # Everything the kernel accepted reaches the peer; a torn packet stays in its reader.
    received: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + 10
    while len(received) < link.sent and time.monotonic() < deadline:
        received += fake.drain()
    assert len(received) == link.sent
    while len(received) < published and time.monotonic() < deadline:
        link.flush()
        received += fake.drain()
    assert link.sent == published
    seqs = [json.loads(body[2 + len(TOPIC) + 1 :])["seq"] for _, body in received]
    assert seqs == list(range(published))
