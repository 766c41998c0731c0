"""The agent's and gateway's one module that touches paho-mqtt, through its public API only
(ruff's SLF001 keeps it so; the engine's worker link speaks MQTT itself, gateway/engine/link.py).

The rest of edgetwin sees `MqttLink`: start, publish, subscribe, a birth hook, a message
callback carrying plain `Message` values, and a delivery callback for QoS 1 acknowledgements.
paho's return codes, userdata and types stay here.

The link runs its own network thread instead of paho's `loop_start`, for one reason: paho's
reconnect delay doubles without jitter, so a broker restart makes a whole fleet reconnect in
lockstep. Here each wait is drawn uniformly from [0, min(cap, base * 2**attempt)] ("full
jitter"), and the attempt count resets once a connection has stayed up for a while.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.matcher import MQTTMatcher
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from edgetwin.agent.config import MqttSettings

log = logging.getLogger(__name__)

LOOP_TIMEOUT = 0.2  # seconds one network-loop pass may block; bounds how fast close() returns
_CLOSE_DRAIN_TIMEOUT = 1.0  # seconds close() waits for the broker to end the connection
_NO_RECEIVE_MAXIMUM = 65_535  # MQTT 5's value when the broker names none, and 3.1.1's in effect
# MQTT 5 reason codes, as paho also reports its own socket events.
_UNSPECIFIED = 0x80  # paho: the peer closed the socket
_KEEPALIVE_TIMEOUT = 0x8D  # paho: nothing heard within keepalive
_SESSION_TAKEN_OVER = 0x8E


class MqttError(Exception):
    """Root of the MQTT adapter's errors."""


class PublishError(MqttError):
    """A publish that the client refused."""


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    retain: bool
    qos: int
    user_properties: tuple[tuple[str, str], ...] = ()
    # MQTT 5 request/response: where the sender wants its answer, and what to quote in it.
    response_topic: str | None = None
    correlation_data: bytes | None = None


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


class Delivery:
    """Handle of one publish; `wait` blocks until the broker acknowledged it (QoS 1)."""

    __slots__ = ("_info",)

    def __init__(self, info: paho.MQTTMessageInfo) -> None:
        self._info = info

    @property
    def mid(self) -> int:
        return self._info.mid

    @property
    def done(self) -> bool:
        try:
            return self._info.is_published()
        except (RuntimeError, ValueError):
            return False

    def wait(self, timeout: float) -> bool:
        try:
            self._info.wait_for_publish(timeout)
        except (RuntimeError, ValueError):
            return False
        return self._info.is_published()


@dataclass
class Backoff:
    """Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff And
    Jitter"): spreads a fleet's reconnects over the whole window instead of synchronising them."""

    base: float
    cap: float
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def next(self) -> float:
        ceiling = min(self.cap, self.base * (2**self.attempt))
        self.attempt = min(self.attempt + 1, 32)
        return self.rng.uniform(0, ceiling)

    def reset(self) -> None:
        self.attempt = 0


def end_gracefully(sock: object, timeout: float = _CLOSE_DRAIN_TIMEOUT) -> None:
    """After our DISCONNECT, end our side of the connection and read until the broker ends its.

    For paho's `on_socket_close`: paho closes the socket right after writing DISCONNECT, and
    input not yet read (a PUBACK, a message for us) then makes the kernel reset the connection
    instead of closing it. A broker that sees the reset before it has read everything drops the
    rest: mosquitto kept 101 of 500 retained messages that way, and lost the DISCONNECT too, so
    it published the last will of a client that had said goodbye. Seen in CI: the last twin
    document a stopping gateway cleared came back.
    """
    if not isinstance(sock, socket.socket):
        return
    deadline = time.monotonic() + timeout
    try:
        sock.shutdown(socket.SHUT_WR)
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if not sock.recv(65536):
                return
    except (OSError, ValueError):
        return  # reset, or timed out: nothing more to save


ConnectHook = Callable[["MqttLink"], None]
MessageHandler = Callable[[Message], None]
DeliveryHandler = Callable[[int], None]


def _write_in_the_network_thread(client: paho.Client, userdata: Any, sock: Any) -> None:
    pass  # the network thread's loop() sees the queued packets and writes them


def describe_connect_error(exc: OSError) -> str:
    """Why a TCP connection or a TLS handshake failed, in a few words a person can act on."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"the broker's TLS certificate is not trusted: {exc.verify_message} (is the CA file "
            "the one that signed it?)"
        )
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        if reason == "WRONG_VERSION_NUMBER":
            return "the broker does not speak TLS on this port (a plain mqtt:// listener?)"
        return f"TLS handshake failed: {reason}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return exc.strerror or str(exc)


class MqttLink:
    """One MQTT connection that reconnects until closed.

    `on_connect` runs on every (re)connect, on the network thread, before queued messages flow
    on: that is where the caller publishes its birth message. `on_disconnect` runs, on the same
    thread, when a connection that was up is lost (not at `close`). Subscriptions are replayed on
    every connect. `on_delivered(mid)` runs when the broker acknowledges a QoS 1 publish.
    """

    def __init__(
        self,
        settings: MqttSettings,
        *,
        client_id: str | None = None,
        will: Will | None = None,
        on_connect: ConnectHook | None = None,
        on_message: MessageHandler | None = None,
        on_delivered: DeliveryHandler | None = None,
        on_disconnect: ConnectHook | None = None,
        max_queued: int = 0,
        max_inflight: int | None = None,
    ) -> None:
        """`max_inflight` is paho's window of unacknowledged QoS 1 messages, by default the
        settings'. 0 turns it off, for a caller that keeps a window of its own: paho's looks
        through every message in flight at each PUBACK, which is most of a fast drain's cost."""
        self.settings = settings
        self.client_id = client_id or settings.client_id or f"edgetwin-{uuid.uuid4().hex[:12]}"
        self._v5 = settings.protocol == "5"
        persistent = settings.session_expiry > 0
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=paho.MQTTv5 if self._v5 else paho.MQTTv311,
            # MQTT 3.1.1 takes the session flag here; MQTT 5 takes clean_start at connect.
            clean_session=None if self._v5 else not persistent,
        )
        if settings.username is not None:
            password = settings.password.get_secret_value() if settings.password else None
            self._client.username_pw_set(settings.username, password)
        if settings.tls is not None:
            tls = settings.tls
            self._client.tls_set(
                ca_certs=str(tls.ca_file) if tls.ca_file else None,
                certfile=str(tls.cert_file) if tls.cert_file else None,
                keyfile=str(tls.key_file) if tls.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
            if tls.insecure_skip_hostname_check:
                self._client.tls_insecure_set(True)
        if will is not None:
            self._client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        # Bounded: past this, publish() refuses instead of growing memory without limit.
        self._client.max_queued_messages_set(max_queued)
        self._client.max_inflight_messages_set(
            settings.max_inflight if max_inflight is None else max_inflight
        )
        # Only the network thread writes to the socket. Without a loop thread of its own, paho
        # writes a message from whichever thread publishes it, and two threads taking packets
        # off its queue can put them on the wire out of order (seen: seq 667 before 666). With
        # a write hook registered, publish() only queues and wakes our loop through paho's
        # socket pair.
        self._client.on_socket_register_write = _write_in_the_network_thread
        self._client.on_connect = self._handle_connect
        self._client.on_disconnect = self._handle_disconnect
        self._client.on_message = self._handle_message
        self._client.on_publish = self._handle_publish
        self._client.on_socket_open = self._handle_socket_open
        self._client.on_socket_close = self._handle_socket_close
        self._client.on_subscribe = self._handle_subscribe
        self._on_connect = on_connect
        self._on_message = on_message
        self._on_delivered, self._on_disconnect = on_delivered, on_disconnect
        self._subscriptions: dict[str, SubscribeOptions] = {}
        # The same filters as a topic trie: a message is checked against them in one walk, not
        # one comparison per filter (a gateway watches thousands of devices' topics).
        self._filters = MQTTMatcher()  # type: ignore[no-untyped-call]  # paho's is untyped
        # SUBSCRIBE packets not yet acknowledged, and SUBACKs that beat `_send_subscribe` to the
        # lock (a subscribe from another thread), so `wait_subscribed` never misses one.
        self._pending_subacks: set[int] = set()
        self._early_subacks: set[int] = set()
        self._subscribed = threading.Event()
        # fetch_retained's barriers: probe payloads this link waits to receive back, by topic.
        self._probes: dict[tuple[str, bytes], threading.Event] = {}
        self._probe_topics: set[str] = set()
        self._probe_counter = itertools.count(1)
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._backoff = Backoff(settings.reconnect_min_delay, settings.reconnect_max_delay)
        self.connect_count = self.disconnect_count = 0
        # The broker's MQTT 5 Receive Maximum: QoS 1 messages it takes unacknowledged from us.
        # paho does not enforce it, so a caller keeping its own window should.
        self.receive_maximum = _NO_RECEIVE_MAXIMUM
        self.unsolicited = 0
        self._connack_seen = False
        self._connack_missing_logged = False
        self.rejected = 0  # QoS 1 publishes the broker acknowledged with a failure reason
        # Why the last attempt to connect failed; None once connected. `_attempted` is set by
        # the first attempt's outcome, so that a command-line tool can stop at a wrong password
        # or CA with the reason instead of retrying for ever.
        self.error: str | None = None
        self._attempted = threading.Event()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        """Connect in the background; returns at once, reconnects for ever until `close`."""
        if self._thread is not None:
            return
        self._closing.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"mqtt-{self.client_id}", daemon=True
        )
        self._thread.start()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def wait_attempt(self, timeout: float) -> str | None:
        """Wait for the outcome of the first attempt to connect: None when connected, else why
        not (the broker refused, TLS failed, nobody listens, or nothing within `timeout`)."""
        if not self._attempted.wait(timeout):
            return f"no answer from {self.settings.url} within {timeout:g} s"
        return None if self.connected else self.error or f"cannot connect to {self.settings.url}"

    def wait_subscribed(self, timeout: float) -> bool:
        """Wait until connected with every subscription acknowledged by the broker: from then
        on, a message published to a subscribed topic is certain to reach this link."""
        return self._subscribed.wait(timeout)

    @property
    def mqtt5(self) -> bool:
        return self._v5

    def subscribe(
        self,
        topic_filters: Iterable[str],
        qos: int = 1,
        *,
        no_local: bool = False,
        retained: bool = True,
    ) -> None:
        """Subscribe now and on every reconnect. `no_local` (MQTT 5) keeps the broker from
        sending back what this client publishes itself; MQTT 3.1.1 cannot, and ignores it.
        `retained=False` (MQTT 5 retain handling 2): the broker sends only what is published
        from now on, no retained message at the subscription; `fetch_retained` brings those
        in portions a broker's queue limit can hold. MQTT 3.1.1 always sends them."""
        options = SubscribeOptions(
            qos=qos,
            noLocal=no_local and self._v5,
            retainHandling=(
                SubscribeOptions.RETAIN_SEND_ON_SUBSCRIBE
                if retained or not self._v5
                else SubscribeOptions.RETAIN_DO_NOT_SEND
            ),
        )
        with self._lock:
            new = {f: options for f in topic_filters if f not in self._subscriptions}
            self._subscriptions.update(new)
            for topic_filter in new:
                self._filters[topic_filter] = True
        if new and self.connected:
            self._send_subscribe(new)

    def fetch_retained(
        self, topic_filters: Sequence[str], probe_topic: str, timeout: float
    ) -> bool:
        """Have the broker send the retained messages under `topic_filters` once, through the
        message callback, and return True once every one of them has been handed to it; False
        if not connected, or the connection dropped or `timeout` passed first.

        A broker sends a subscription's retained messages as it handles the SUBSCRIBE, and
        what one client sends reaches a subscriber in order: so a probe published to
        `probe_topic` after subscribing comes back after all of them. The filters are
        unsubscribed again (those also subscribed for good get their own options back, MQTT 5
        retain handling included): a restarted gateway reads
        a large fleet's documents in portions, each within what a stock mosquitto queues for
        a client (max_queued_messages, 1,000), instead of in one flood it would cut short.
        """
        if not self._connected.wait(timeout):  # set just after the connect hook returns
            return False
        token = f"{self.client_id}:{next(self._probe_counter)}".encode()
        arrived = threading.Event()
        qos0 = SubscribeOptions(qos=0)
        with self._lock:
            kept = {f: self._subscriptions[f] for f in topic_filters if f in self._subscriptions}
            transient = [f for f in topic_filters if f not in kept]
            for topic_filter in transient:
                self._filters[topic_filter] = True
            self._probes[(probe_topic, token)] = arrived
            self._probe_topics.add(probe_topic)
        try:
            entries = [(f, qos0) for f in topic_filters] + [(probe_topic, qos0)]
            if self._v5:
                self._client.subscribe(entries)
            else:
                self._client.subscribe([(f, 0) for f, _ in entries])
            self._client.publish(probe_topic, token, qos=0)
            return arrived.wait(timeout) and self.connected
        finally:
            with self._lock:
                self._probes.pop((probe_topic, token), None)
                if not any(topic == probe_topic for topic, _ in self._probes):
                    self._probe_topics.discard(probe_topic)
                for topic_filter in transient:
                    if topic_filter not in self._subscriptions:
                        with contextlib.suppress(KeyError):
                            del self._filters[topic_filter]  # type: ignore[no-untyped-call]
            if self.connected:
                self._client.unsubscribe([*transient, probe_topic])
                if kept:
                    self._send_subscribe(kept)  # as they were, retain handling included

    def _send_subscribe(self, subscriptions: Mapping[str, SubscribeOptions]) -> None:
        self._subscribed.clear()
        if self._v5:
            _, mid = self._client.subscribe(list(subscriptions.items()))
        else:
            _, mid = self._client.subscribe([(f, o.QoS) for f, o in subscriptions.items()])
        if mid is None:
            return
        with self._lock:
            if mid in self._early_subacks:
                self._early_subacks.discard(mid)
            else:
                self._pending_subacks.add(mid)
            if not self._pending_subacks:
                self._subscribed.set()

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 0,
        retain: bool = False,
        user_properties: Mapping[str, str] | None = None,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        expiry: int | None = None,
    ) -> Delivery:
        """Queue one message. While disconnected, QoS 1 waits in paho's queue; QoS 0 is lost.

        User properties, a request's response topic and correlation data, and `expiry` (the
        message expiry interval, seconds: the broker drops the message once it is older) travel
        only over MQTT 5; on 3.1.1 they are dropped.
        """
        properties = None
        if self._v5 and (user_properties or response_topic or correlation_data or expiry):
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if user_properties:
                properties.UserProperty = list(user_properties.items())
            if response_topic:
                properties.ResponseTopic = response_topic
            if correlation_data:
                properties.CorrelationData = correlation_data
            if expiry:
                properties.MessageExpiryInterval = expiry
        try:
            info = self._client.publish(
                topic, payload, qos=qos, retain=retain, properties=properties
            )
        except ValueError as exc:
            raise PublishError(f"cannot publish to {topic!r}: {exc}") from exc
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            raise PublishError(f"outgoing queue full, message to {topic!r} refused")
        return Delivery(info)

    def close(self, timeout: float = 5.0) -> None:
        """Disconnect cleanly: what was queued goes out, then DISCONNECT, and the broker drops
        the last will. QoS 1 messages still beyond paho's window stay unsent."""
        if self._thread is None:
            return
        self._closing.set()
        if self.connected:
            self._client.disconnect()
        self._thread.join(timeout)
        self._thread = None
        self._connected.clear()
        # In case the thread was stuck: the socket must not outlive the link. Through paho's
        # public `socket()`: closed under a stuck loop, paho's next select() fails and its loop
        # returns; a later start() reconnects, and paho closes the old socket first (a second
        # close() is harmless). No graceful end here: the thread that would do it is stuck.
        sock = self._client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    # -- network thread ------------------------------------------------------------------------

    def _connect_once(self, first: bool) -> None:
        if not first:
            self._client.reconnect()
            return
        properties = None
        clean_start: paho.CleanStartOption = paho.MQTT_CLEAN_START_FIRST_ONLY
        if self._v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            if self.settings.session_expiry > 0:
                properties.SessionExpiryInterval = self.settings.session_expiry
                # A session that really persists: resume it even on the first connect after a
                # restart, so subscriptions and messages queued for us while away survive.
                clean_start = False
        self._client.connect(
            self.settings.host,
            self.settings.port,
            keepalive=self.settings.keepalive,
            clean_start=clean_start,
            properties=properties,
        )

    def _run(self) -> None:
        first = True
        while not self._closing.is_set():
            try:
                self._connect_once(first)
                first = False
            except (OSError, ssl.SSLError) as exc:
                self.error = f"cannot connect to {self.settings.url}: {describe_connect_error(exc)}"
                self._attempted.set()
                delay = self._backoff.next()
                log.info(
                    "broker unreachable, retrying",
                    extra={
                        "broker": self._broker(),
                        "error": str(exc),
                        "retry_in_s": round(delay, 3),
                    },
                )
                self._closing.wait(delay)
                continue
            up_since = time.monotonic()
            while not self._closing.is_set():
                if self._client.loop(timeout=LOOP_TIMEOUT) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
            if self._closing.is_set():
                # Let the DISCONNECT packet out before the thread ends.
                deadline = time.monotonic() + 1.0
                while self._client.socket() is not None and time.monotonic() < deadline:
                    if self._client.loop(timeout=LOOP_TIMEOUT) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                        break
                return
            if time.monotonic() - up_since >= self.settings.reconnect_reset:
                self._backoff.reset()
            self._closing.wait(self._backoff.next())

    def _broker(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    def _handle_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._connack_seen = True
        if reason_code.is_failure:
            log.warning(
                "broker refused connection",
                extra={"broker": self._broker(), "reason": str(reason_code)},
            )
            self.error = (
                f"cannot connect to {self.settings.url}: the broker refused the connection: "
                f"{reason_code}"
            )
            self._attempted.set()
            return
        self.receive_maximum = getattr(properties, "ReceiveMaximum", _NO_RECEIVE_MAXIMUM)
        self.connect_count += 1
        self._connack_missing_logged = False
        log.info(
            "connected to broker",
            extra={
                "broker": self._broker(),
                "client_id": self.client_id,
                "session_present": bool(flags.session_present),
            },
        )
        with self._lock:
            subscriptions = dict(self._subscriptions)
        if subscriptions:
            self._send_subscribe(subscriptions)
        else:
            self._subscribed.set()
        if self._on_connect is not None:
            try:
                self._on_connect(self)
            except Exception:
                log.exception("connect hook failed")
        self.error = None
        self._connected.set()
        self._attempted.set()

    def _handle_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        self._subscribed.clear()
        with self._lock:
            self._pending_subacks.clear()
            self._early_subacks.clear()
        if self._closing.is_set():
            return
        if was_connected:
            self.disconnect_count += 1
            if self._on_disconnect is not None:
                try:
                    self._on_disconnect(self)
                except Exception:
                    log.exception("disconnect hook failed")
            log.warning(
                "lost broker connection, reconnecting",
                extra={
                    "broker": self._broker(),
                    "reason": self._why_lost(flags, reason_code),
                    "mqtt_reason": str(reason_code),
                },
            )
        elif not self._connack_seen:
            timed_out = reason_code.value == _KEEPALIVE_TIMEOUT
            self.error = (
                f"cannot connect to {self.settings.url}: no CONNACK within "
                f"{self.settings.keepalive} s"
                if timed_out
                else f"cannot connect to {self.settings.url}: the broker closed the connection "
                "before answering (a TLS listener reached without TLS? then use mqtts://)"
            )
            self._attempted.set()
            if not self._connack_missing_logged:
                # Once per outage: a broker (or a proxy, or a wrong port) that takes the TCP
                # connection and never answers would otherwise leave no trace at all.
                self._connack_missing_logged = True
                log.warning(
                    f"broker sent no CONNACK within {self.settings.keepalive} s, retrying"
                    if timed_out
                    else "broker closed the connection before its CONNACK, retrying",
                    extra={
                        "broker": self._broker(),
                        "timeout_s": self.settings.keepalive,
                        "mqtt_reason": str(reason_code),
                    },
                )

    def _why_lost(self, flags: paho.DisconnectFlags, reason_code: ReasonCode) -> str:
        if reason_code.value == _SESSION_TAKEN_OVER:
            return f"session taken over: another client connected with client id {self.client_id!r}"
        if flags.is_disconnect_packet_from_server:
            return f"disconnected by the broker: {reason_code}"
        if reason_code.value == _UNSPECIFIED:
            # paho's name for a socket the peer closed. Mosquitto closes a taken-over session's
            # socket this way too, without a DISCONNECT to say so.
            return (
                "the broker closed the connection without a reason: it stopped, or another "
                f"client connected with client id {self.client_id!r}"
            )
        return str(reason_code)

    def _handle_subscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        refused = [str(code) for code in reason_codes if code.is_failure]
        if refused:
            log.warning("broker refused a subscription", extra={"reasons": refused})
        with self._lock:
            if mid in self._pending_subacks:
                self._pending_subacks.discard(mid)
            else:
                self._early_subacks.add(mid)
            if not self._pending_subacks:
                self._subscribed.set()

    def _handle_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._connack_seen = False
        # paho leaves Nagle's algorithm on: a small PUBLISH then waits for the ACK of the one
        # before, and with the peer's delayed ACKs a config round trip takes ~90 ms, not ~4.
        if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _handle_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self._closing.is_set():
            end_gracefully(sock)

    def _handle_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            # An MQTT 5 broker acknowledges a publish its ACL refuses (0x87) and drops it;
            # sending it again cannot help, so it still counts as delivered, and is counted
            # here so that the refusal shows.
            self.rejected += 1
            if self.rejected == 1 or self.rejected % 1000 == 0:
                log.warning(
                    "broker refused a publish",
                    extra={"reason": str(reason_code), "refused": self.rejected},
                )
        if self._on_delivered is None:
            return
        try:
            self._on_delivered(mid)
        except Exception:
            log.exception("delivery handler failed")

    def _handle_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        if self._on_message is None:
            return
        with self._lock:
            if msg.topic in self._probe_topics:
                probe = self._probes.get((msg.topic, bytes(msg.payload)))
                if probe is not None:
                    probe.set()
                return
            matches = self._filters.iter_match(msg.topic)  # type: ignore[no-untyped-call]
            solicited = next(matches, False)
        # amqtt's broker (the demo's fallback) hands new subscribers retained messages that match
        # none of their filters; a message we did not ask for is dropped here, once for all.
        if not solicited:
            self.unsolicited += 1
            return
        user_properties: tuple[tuple[str, str], ...] = ()
        if msg.properties is not None and hasattr(msg.properties, "UserProperty"):
            user_properties = tuple(msg.properties.UserProperty)
        # paho sets a property's attribute only when the packet carries it.
        response_topic = getattr(msg.properties, "ResponseTopic", None)
        correlation_data = getattr(msg.properties, "CorrelationData", None)
        try:
            self._on_message(
                Message(
                    msg.topic,
                    bytes(msg.payload),
                    bool(msg.retain),
                    msg.qos,
                    user_properties,
                    response_topic,
                    None if correlation_data is None else bytes(correlation_data),
                )
            )
        except Exception:
            # One bad message must not kill the network thread.
            log.exception("message handler failed", extra={"topic": msg.topic})
