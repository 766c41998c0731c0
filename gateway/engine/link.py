"""The engine worker's MQTT connection: paho-mqtt owns the session, the worker owns the loop.

paho's own network loop costs two system calls per QoS 0 message: `publish()` pokes its
wake-up socket pair, then `send()`s that one packet. A worker publishing tens of thousands of
messages a second cannot afford that, so here paho runs in its "external event loop" mode
(`on_socket_register_write` set: `publish()` only queues) and `flush()` writes everything
queued with one `send()`. QoS 0 PUBLISH packets are encoded here directly (fixed header, topic,
an empty MQTT 5 property block, payload) rather than through `Client.publish`, which spends
about 6 µs per message on checks, a locked message id and an info object nobody reads.
Everything else (CONNECT, keep-alive, QoS 1 with its PUBACKs, reconnects) stays with paho.

This reaches into two private members of paho's `Client`: `_out_packet`, the queue of encoded
packets, and `_sock`. Both are stable across paho 1.6 to 2.1; the test suite runs this module
against a real broker, so a paho release that changes them fails loudly there.
"""

from __future__ import annotations

import socket
import ssl
import time
import uuid
from typing import Any

import msgspec
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.mqtt import end_gracefully

_PUBLISH = 0x30
_DISCONNECT = 0xE0
_SEND_CHUNK = 1 << 20  # bytes per send(): larger gains nothing and holds a big copy


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


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


class EngineLink:
    """One paho client driven by the worker's own select loop."""

    def __init__(self, endpoint: Endpoint, *, worker: int, max_inflight: int, max_queued: int):
        self.endpoint = endpoint
        self._v5 = endpoint.protocol == "5"
        self.client_id = f"{endpoint.client_id_prefix}-{worker}-{uuid.uuid4().hex[:8]}"
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=paho.MQTTv5 if self._v5 else paho.MQTTv311,
        )
        if endpoint.username is not None:
            client.username_pw_set(endpoint.username, endpoint.password)
        if endpoint.tls:
            client.tls_set(
                ca_certs=endpoint.ca_file,
                certfile=endpoint.cert_file,
                keyfile=endpoint.key_file,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
            if endpoint.tls_insecure:
                client.tls_insecure_set(True)
        client.max_inflight_messages_set(max_inflight)
        # Everything paho holds for QoS 1 (in flight or waiting): bounded, publish() then refuses.
        client.max_queued_messages_set(max_queued)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        # Setting this is what stops publish() from writing to the socket itself.
        client.on_socket_register_write = self._on_register_write
        self._client = client
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self.connected = False
        self.connecting_since: float | None = None
        self.refused = 0
        self._closing = False

    # -- connection ------------------------------------------------------------------------

    def connect(self) -> None:
        """Open the socket and send CONNECT; `connected` turns true on CONNACK. Raises
        OSError when the broker cannot be reached."""
        self.connecting_since = time.monotonic()
        self._pending.clear()
        self._pending_bytes = 0
        self._client.connect(
            self.endpoint.host, self.endpoint.port, keepalive=self.endpoint.keepalive
        )
        self.flush()

    def drop(self) -> None:
        """Close the socket without DISCONNECT (lost or hopeless connection)."""
        self._client._sock_close()
        self.connected = False
        self.connecting_since = None
        self._pending.clear()
        self._pending_bytes = 0

    def close(self) -> None:
        """DISCONNECT cleanly, written with whatever is still queued, then close."""
        if self._client._sock is not None and self.connected:
            self._closing = True
            self._client.disconnect()
            self.flush()
            # paho acts on its own DISCONNECT packet only when it writes it.
            deadline = time.monotonic() + 1.0
            while self._client._out_packet and time.monotonic() < deadline:
                if self._client.loop_write() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
        self.drop()

    def fileno(self) -> int | None:
        sock = self._client._sock
        return None if sock is None else sock.fileno()

    def on_readable(self) -> bool:
        """Let paho read (CONNACK, PUBACK, PINGRESP); False when the connection is lost."""
        rc = self._client.loop_read()
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or self._client._sock is None:
            self.drop()
            return False
        return True

    def tick(self) -> bool:
        """Keep-alive and the CONNACK deadline; False when the connection is lost."""
        if self._client._sock is None:
            self.connected = False
            return False
        if (
            not self.connected
            and self.connecting_since is not None
            and time.monotonic() - self.connecting_since > self.endpoint.keepalive
        ):
            self.drop()  # TCP accepted but no CONNACK: e.g. a stopped broker process
            return False
        self._client.loop_misc()
        if self._client._sock is None:
            self.connected = False
            return False
        return True

    # -- publishing -------------------------------------------------------------------------

    def publish0(self, topic: str, payload: bytes, retain: bool) -> None:
        """Queue one QoS 0 PUBLISH, encoded here; `flush` writes it."""
        t = topic.encode()
        header = _PUBLISH | 1 if retain else _PUBLISH
        if self._v5:
            length = len(t) + 3 + len(payload)
            packet = b"".join(
                (
                    bytes((header,)),
                    _remaining_length(length),
                    len(t).to_bytes(2, "big"),
                    t,
                    b"\x00",  # no properties
                    payload,
                )
            )
        else:
            length = len(t) + 2 + len(payload)
            packet = b"".join(
                (
                    bytes((header,)),
                    _remaining_length(length),
                    len(t).to_bytes(2, "big"),
                    t,
                    payload,
                )
            )
        self._pending.append(packet)
        self._pending_bytes += len(packet)

    def publish1(self, topic: str, payload: bytes, retain: bool) -> bool:
        """Hand one QoS 1 message to paho (it keeps it until PUBACK); False if refused."""
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            self.refused += 1
            return False
        return True

    def backlog_bytes(self) -> int:
        """Bytes encoded and not yet accepted by the socket."""
        out = self._client._out_packet
        return self._pending_bytes + sum(p["to_process"] for p in out)

    def qos1_queued(self) -> int:
        return len(self._client._out_messages)

    def flush(self) -> bool:
        """Write what is queued with as few send() calls as the socket allows; keep the rest
        for the next call. False when the connection is lost."""
        client = self._client
        sock = client._sock
        if sock is None:
            return False
        out = client._out_packet
        if any((p["command"] & 0xF0) == _DISCONNECT for p in out):
            return client.loop_write() == MQTTErrorCode.MQTT_ERR_SUCCESS
        parts: list[bytes | bytearray | memoryview] = []
        while out:
            p = out.popleft()
            parts.append(memoryview(p["packet"])[p["pos"] :] if p["pos"] else p["packet"])
        parts.extend(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        if not parts:
            return True
        data = b"".join(parts)
        sent = 0
        try:
            while sent < len(data):
                n = sock.send(data[sent : sent + _SEND_CHUNK])
                if n <= 0:
                    break
                sent += n
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            pass
        except OSError:
            self.drop()
            return False
        if sent < len(data):
            # The rest goes back to paho's queue as one opaque packet (command 0: neither a
            # PUBLISH nor a DISCONNECT to paho), first in line, so the stream stays in order.
            rest = data[sent:]
            out.appendleft(
                {
                    "command": 0,
                    "mid": 0,
                    "qos": 0,
                    "pos": 0,
                    "to_process": len(rest),
                    "packet": rest,
                    "info": None,
                }
            )
        return True

    # -- paho callbacks ---------------------------------------------------------------------

    def _on_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        pass  # the worker flushes after every batch; nothing to register

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.connected = not reason_code.is_failure
        self.connecting_since = None

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.connected = False

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self._closing:
            end_gracefully(sock)  # else the last batch and the DISCONNECT may be lost

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        # Small packets must not wait for Nagle's algorithm behind delayed ACKs.
        if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
