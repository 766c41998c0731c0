"""The engine worker's MQTT connection: a small publish-only MQTT client the worker's loop drives.

A worker publishes tens of thousands of messages a second and receives nothing but
acknowledgements, so it owns its session outright rather than borrowing paho's: paho's own
loop costs two system calls per QoS 0 message and its `publish()` ~6 µs of checks, and at QoS
1 it rescans every message it holds at each PUBACK. Here every packet is encoded by
`mqtt_wire` (PUBLISH inline, the hot path), queued, and written by `flush()` with as few
`send()` calls as the socket allows; partial writes stay queued, in order.

What it does: CONNECT (MQTT 5 or 3.1.1, clean start, username and password, keep-alive),
CONNACK (a refusal ends the connection with the broker's reason in `error`), PINGREQ/PINGRESP,
PUBLISH at QoS 0 and at QoS 1 with its own packet ids, PUBACK, DISCONNECT, TLS through `ssl`.
The QoS 1 window is `max_inflight`, and never more than the broker's MQTT 5 Receive Maximum:
a QoS 1 message past it is refused and counted, never queued.

What it does not: resend. The engine is a simulation whose ticks are skipped, not delayed, when
they cannot go out, so a session is always started clean, and QoS 1 messages still without a
PUBACK when the connection drops are counted in `lost`, with every message that was queued and
never reached the socket, and not sent again.

Counters, cumulative over the link's connections: `sent` counts PUBLISH packets whose last byte
`send()` accepted (handed to the kernel, not yet known to be delivered), `acked` QoS 1 messages
the broker acknowledged, `rejected` those it acknowledged with an MQTT 5 failure reason (e.g.
not authorized), `refused` QoS 1 messages refused for a full window or no connection.
"""

from __future__ import annotations

import contextlib
import itertools
import select
import socket
import ssl
import time
import uuid
from collections import deque
from typing import Any

import msgspec

from edgetwin.agent.config import broker_url
from edgetwin.agent.mqtt import describe_connect_error, end_gracefully
from edgetwin.gateway.engine.mqtt_wire import (
    CONNACK,
    DISCONNECT,
    DISCONNECT_PACKET,
    PINGREQ_PACKET,
    PINGRESP,
    PUBACK,
    Connack,
    PacketReader,
    ProtocolError,
    encode_connect,
    parse_connack,
    parse_disconnect,
    parse_puback,
    reason_name,
    varint,
)

_PUBLISH = 0x30
_PUBLISH1 = 0x32
_SEND_CHUNK = 1 << 20  # bytes per send(): larger gains nothing and holds a big copy
_RECV_SIZE = 1 << 16
_CONNECT_TIMEOUT = 5.0  # seconds for TCP connect and the TLS handshake (blocking, as paho's)
_CONNACK_TIMEOUT = 30.0  # seconds to wait for CONNACK when keep-alive is off (0)
_CLOSE_TIMEOUT = 1.0  # seconds close() spends on outstanding bytes and PUBACKs


class Endpoint(msgspec.Struct, frozen=True):
    """Where and how a worker connects; picklable, plain values only."""

    host: str
    port: int
    protocol: str = "5"  # "5" or "3.1.1"
    keepalive: int = 30
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False
    prefix: str = "edgetwin"
    telemetry_template: str | None = None
    client_id_prefix: str = "edgetwin-engine"


def endpoint_from_mqtt(mqtt: Any, engine: Any = None) -> Endpoint:
    """The worker's broker endpoint from an `[mqtt]` section (agent.config.MqttSettings or the
    gateway's), through attribute access only; with the identity of `engine` (the `[engine]`
    section) when it names one, so that the broker can tell simulated publishes from the
    gateway's own."""
    tls = mqtt.tls
    identity = engine if engine is not None and engine.username is not None else mqtt
    password = identity.password.get_secret_value() if identity.password is not None else None
    return Endpoint(
        host=mqtt.host,
        port=mqtt.port,
        protocol=mqtt.protocol,
        keepalive=mqtt.keepalive,
        username=identity.username,
        password=password,
        tls=tls is not None,
        ca_file=str(tls.ca_file) if tls is not None and tls.ca_file else None,
        cert_file=str(tls.cert_file) if tls is not None and tls.cert_file else None,
        key_file=str(tls.key_file) if tls is not None and tls.key_file else None,
        tls_insecure=bool(tls.insecure_skip_hostname_check) if tls is not None else False,
        prefix=mqtt.prefix,
        telemetry_template=mqtt.topic,
    )


def endpoint_url(endpoint: Endpoint) -> str:
    return broker_url(endpoint.host, endpoint.port, tls=endpoint.tls, username=endpoint.username)


def probe(endpoint: Endpoint, timeout: float = 10.0) -> str | None:
    """Connect once and disconnect: None when the broker accepted the connection, else why not.

    The command-line tools on the engine (replay, simulate) ask this before starting workers:
    a worker retries a refused connection until the engine's start timeout, while a wrong
    password or CA should end the tool at once with the broker's reason."""
    link = EngineLink(endpoint, worker=0, max_inflight=1)
    try:
        link.connect()
    except OSError as exc:
        return f"cannot connect to {endpoint_url(endpoint)}: {describe_connect_error(exc)}"
    try:
        error = link.await_connack(timeout)
        return None if error is None else f"cannot connect to {endpoint_url(endpoint)}: {error}"
    finally:
        link.close()


def tls_context(endpoint: Endpoint) -> ssl.SSLContext:
    """The client side of TLS as paho's `tls_set(cert_reqs=CERT_REQUIRED)` built it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if endpoint.ca_file:
        context.load_verify_locations(cafile=endpoint.ca_file)
    else:
        context.load_default_certs()
    if endpoint.cert_file:
        context.load_cert_chain(endpoint.cert_file, endpoint.key_file)
    if endpoint.tls_insecure:
        context.check_hostname = False  # the certificate is still verified against the CA
    return context


class EngineLink:
    """One MQTT connection driven by the worker's own select loop (see the module docstring)."""

    def __init__(self, endpoint: Endpoint, *, worker: int, max_inflight: int) -> None:
        self.endpoint = endpoint
        self._v5 = endpoint.protocol == "5"
        self.client_id = f"{endpoint.client_id_prefix}-{worker}-{uuid.uuid4().hex[:8]}"
        self._max_inflight = max_inflight
        self._tls: ssl.SSLContext | None = None
        self._sock: socket.socket | None = None
        self._reader = PacketReader()
        # PUBLISH packets since the last flush, and their bytes.
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        # Encoded and not yet accepted by send(); `_base` is the stream offset of its first
        # byte, `_ends` the stream offset where each PUBLISH in it ends: a message counts as
        # sent once send() has taken its last byte.
        self._out = bytearray()
        self._base = 0
        self._ends: deque[int] = deque()
        # QoS 1 packet id -> stream offset where that PUBLISH ends.
        self._inflight: dict[int, int] = {}
        self._next_id = 0
        self.window = max_inflight
        self.connack: Connack | None = None
        self.connected = False
        self.connecting_since: float | None = None
        self.error: str | None = None  # why the last connection ended, or was refused
        self._keepalive = endpoint.keepalive
        self._last_in = self._last_out = 0.0
        self._ping_sent: float | None = None
        self.sent = 0
        self.acked = 0
        self.rejected = 0
        self.refused = 0
        self.lost = 0

    # -- connection ------------------------------------------------------------------------

    def connect(self) -> None:
        """Open the socket (TLS included; blocking, up to 5 s each) and write CONNACK;
        `connected` turns true on CONNACK. Raises OSError (ssl.SSLError included) when the
        broker cannot be reached."""
        self.drop()
        endpoint = self.endpoint
        sock = socket.create_connection((endpoint.host, endpoint.port), timeout=_CONNECT_TIMEOUT)
        try:
            # Small packets must not wait for Nagle's algorithm behind delayed ACKs.
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if endpoint.tls:
                if self._tls is None:
                    self._tls = tls_context(endpoint)
                sock = self._tls.wrap_socket(sock, server_hostname=endpoint.host)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._reader = PacketReader()
        self._keepalive = endpoint.keepalive
        self.connecting_since = self._last_in = self._last_out = time.monotonic()
        self._ping_sent = None
        self.connack = None
        self._out += encode_connect(
            self.client_id,
            v5=self._v5,
            keepalive=endpoint.keepalive,
            username=endpoint.username,
            password=endpoint.password,
        )
        self.flush()

    def drop(self, reason: str | None = None) -> None:
        """Close the socket without DISCONNECT (lost or hopeless connection). What was queued
        and not handed to the socket, and QoS 1 messages without PUBACK, count as lost."""
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        if reason is not None:
            self.error = reason
        self.connected = False
        self.connecting_since = None
        unsent = len(self._ends) + len(self._pending)
        unacked = sum(1 for end in self._inflight.values() if end <= self._base)
        self.lost += unsent + unacked
        self._inflight.clear()
        self._pending.clear()
        self._pending_bytes = 0
        self._base += len(self._out)
        self._out.clear()
        self._ends.clear()

    def close(self) -> None:
        """Write what is queued, wait (up to about a second) for outstanding PUBACKs, then
        DISCONNECT and end the connection so that the broker reads all of it first."""
        deadline = time.monotonic() + _CLOSE_TIMEOUT
        if self._sock is not None and self.connected:
            while (self._out or self._pending or self._inflight) and self.pump(deadline):
                pass
        sock = self._sock
        if sock is not None and self.connected:
            self._queue_control(DISCONNECT_PACKET)
            # Write only: the broker's end of the connection is end_gracefully's to read.
            while self.flush() and self._out and (left := deadline - time.monotonic()) > 0:
                select.select([], [sock], [], left)
            if self._sock is sock and not self._out:
                self._sock = None  # end_gracefully owns it now; drop() must not close it first
                end_gracefully(sock)  # else the last batch and the DISCONNECT may be lost
                with contextlib.suppress(OSError):
                    sock.close()
        self.drop()

    def await_connack(self, timeout: float) -> str | None:
        """After `connect`, for a caller without a loop of its own: None once the broker
        accepted the connection, else why not."""
        deadline = time.monotonic() + timeout
        while not self.connected:
            fd = self.fileno()
            left = deadline - time.monotonic()
            if fd is None or left <= 0:
                return self.error or f"no CONNACK within {timeout:g} s"
            readable, _, _ = select.select([fd], [], [], min(left, 0.5))
            if not (self.on_readable() if readable else self.tick()):
                plain = not self.endpoint.tls and self.connack is None
                hint = " (a TLS listener reached without TLS? use mqtts://)" if plain else ""
                return f"{self.error or 'the connection was lost'}{hint}"
        return None

    def pump(self, deadline: float) -> bool:
        """Write and read once, waiting for the socket up to `deadline`, for a caller without
        a loop of its own; False when the time is up or the connection is gone."""
        sock = self._sock
        left = deadline - time.monotonic()
        if sock is None or left <= 0 or not self.flush():
            return False
        if not self._out and not self._inflight:
            return True  # all written and nothing to hear back: waiting would only idle
        writers = [sock] if self._out else []
        readable, _, _ = select.select([sock], writers, [], left)
        return not readable or self.on_readable()

    def fileno(self) -> int | None:
        sock = self._sock
        return None if sock is None else sock.fileno()

    def on_readable(self) -> bool:
        """Read and handle what the broker sent (CONNACK, PUBACK, PINGRESP, DISCONNECT); False
        when the connection is lost or refused (`error` says why)."""
        sock = self._sock
        if sock is None:
            return False
        try:
            while True:
                data = sock.recv(_RECV_SIZE)
                if not data:
                    self.drop("the broker closed the connection")
                    return False
                self._handle(data)
                if self._sock is None:
                    return False
                # TLS may hold decrypted bytes select() cannot see; plain TCP: a short read
                # emptied the socket.
                if isinstance(sock, ssl.SSLSocket):
                    if not sock.pending():
                        break
                elif len(data) < _RECV_SIZE:
                    break
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass
        except (OSError, ProtocolError) as exc:
            self.drop(f"connection lost: {exc}")
            return False
        return True

    def _handle(self, data: bytes) -> None:
        self._last_in = time.monotonic()
        for first, body in self._reader.feed(data):
            kind = first & 0xF0
            if kind == PUBACK:
                packet_id, code = parse_puback(body, v5=self._v5)
                if self._inflight.pop(packet_id, None) is not None:
                    if code >= 0x80:
                        self.rejected += 1
                    else:
                        self.acked += 1
            elif kind == PINGRESP:
                self._ping_sent = None
            elif kind == CONNACK:
                self._on_connack(parse_connack(body, v5=self._v5))
            elif kind == DISCONNECT:
                code, reason = parse_disconnect(body, v5=self._v5)
                why = f"{reason_name(code, v5=True)} (0x{code:02X})"
                self.drop(f"the broker disconnected: {why}" + (f": {reason}" if reason else ""))
                return
            # Nothing else is expected: the engine subscribes to nothing.

    def _on_connack(self, connack: Connack) -> None:
        if self.connected:
            raise ProtocolError("a second CONNACK")
        self.connack = connack
        if not connack.accepted:
            self.drop(f"the broker refused the connection: {connack.describe()}")
            return
        self.connected = True
        self.connecting_since = None
        self.error = None
        self.window = min(self._max_inflight, connack.receive_maximum)
        if connack.server_keepalive is not None:
            self._keepalive = connack.server_keepalive  # the broker's word wins (MQTT 5 3.2.2.3.14)

    def tick(self) -> bool:
        """Keep-alive and the CONNACK deadline; False when the connection is lost."""
        if self._sock is None:
            self.connected = False
            return False
        now = time.monotonic()
        keepalive = self._keepalive
        if not self.connected:
            patience = keepalive if keepalive > 0 else _CONNACK_TIMEOUT
            if self.connecting_since is not None and now - self.connecting_since > patience:
                # TCP accepted but no CONNACK: e.g. a stopped broker process.
                self.drop("no CONNACK from the broker")
                return False
            return True
        if keepalive <= 0:
            return True
        if self._ping_sent is not None:
            if now - self._ping_sent >= keepalive:
                self.drop(f"no PINGRESP within {keepalive} s")
                return False
        elif now - self._last_out >= keepalive or now - self._last_in >= keepalive:
            # As paho: a QoS 0 stream gets no answers, so silence from the broker is tested too.
            self._ping_sent = now
            self._queue_control(PINGREQ_PACKET)
            return self.flush()
        return True

    # -- publishing -------------------------------------------------------------------------

    def publish0(self, topic: str, payload: bytes, retain: bool) -> None:
        """Queue one QoS 0 PUBLISH; `flush` writes it."""
        t = topic.encode()
        header = _PUBLISH | 1 if retain else _PUBLISH
        if self._v5:
            packet = b"".join(
                (
                    bytes((header,)),
                    varint(len(t) + 3 + len(payload)),
                    len(t).to_bytes(2, "big"),
                    t,
                    b"\x00",  # no properties
                    payload,
                )
            )
        else:
            packet = b"".join(
                (
                    bytes((header,)),
                    varint(len(t) + 2 + len(payload)),
                    len(t).to_bytes(2, "big"),
                    t,
                    payload,
                )
            )
        self._pending.append(packet)
        self._pending_bytes += len(packet)

    def publish1(self, topic: str, payload: bytes, retain: bool) -> bool:
        """Queue one QoS 1 PUBLISH with a packet id of its own; False (and counted in
        `refused`) when the window is full or there is no connection."""
        inflight = self._inflight
        if len(inflight) >= self.window or not self.connected:
            self.refused += 1
            return False
        packet_id = self._next_id
        while True:
            packet_id = packet_id % 0xFFFF + 1
            if packet_id not in inflight:
                break
        self._next_id = packet_id
        t = topic.encode()
        header = _PUBLISH1 | 1 if retain else _PUBLISH1
        properties = b"\x00" if self._v5 else b""
        packet = b"".join(
            (
                bytes((header,)),
                varint(len(t) + 4 + len(properties) + len(payload)),
                len(t).to_bytes(2, "big"),
                t,
                packet_id.to_bytes(2, "big"),
                properties,
                payload,
            )
        )
        self._pending.append(packet)
        self._pending_bytes += len(packet)
        inflight[packet_id] = self._base + len(self._out) + self._pending_bytes
        return True

    def backlog_bytes(self) -> int:
        """Bytes encoded and not yet accepted by the socket."""
        return len(self._out) + self._pending_bytes

    def qos1_queued(self) -> int:
        """QoS 1 messages published and not yet acknowledged (sent or not)."""
        return len(self._inflight)

    def window_free(self) -> int:
        """QoS 1 messages that may be published now."""
        return max(self.window - len(self._inflight), 0) if self.connected else 0

    def _absorb_pending(self) -> None:
        pending = self._pending
        if pending:
            start = self._base + len(self._out)
            self._ends.extend(
                itertools.islice(itertools.accumulate(map(len, pending), initial=start), 1, None)
            )
            self._out += b"".join(pending)
            pending.clear()
            self._pending_bytes = 0

    def _queue_control(self, packet: bytes) -> None:
        self._absorb_pending()  # behind what was published before it
        self._out += packet

    def flush(self) -> bool:
        """Write what is queued with as few send() calls as the socket allows; keep the rest,
        in order, for the next call. False when the connection is lost."""
        sock = self._sock
        if sock is None:
            return False
        self._absorb_pending()
        out = self._out
        if not out:
            return True
        written = 0
        try:
            while written < len(out):
                with memoryview(out) as view, view[written : written + _SEND_CHUNK] as chunk:
                    # A TLS write refused with SSLWantWrite must be retried with the same
                    # bytes: the next call starts at the same offset with at least as many.
                    n = sock.send(chunk)
                if n <= 0:
                    break
                written += n
        except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            pass
        except OSError as exc:
            self._count_written(written)
            self.drop(f"connection lost: {exc}")
            return False
        self._count_written(written)
        return True

    def _count_written(self, written: int) -> None:
        if not written:
            return
        del self._out[:written]
        self._base += written
        self._last_out = time.monotonic()
        ends = self._ends
        if not self._out:
            self.sent += len(ends)
            ends.clear()
            return
        base = self._base
        sent = 0
        while ends and ends[0] <= base:
            ends.popleft()
            sent += 1
        self.sent += sent
