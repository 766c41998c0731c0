"""The only module that touches paho-mqtt.

The rest of edgetwin sees `MqttLink`: connect, publish, subscribe, a birth hook and a message
callback carrying plain `Message` values. paho's return codes, userdata and types stay here.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.config import MqttSettings

log = logging.getLogger(__name__)


class MqttError(Exception):
    """Root of the MQTT adapter's errors."""


class PublishError(MqttError):
    """A publish that the client refused or could not complete in time."""


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    retain: bool
    qos: int


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


ConnectHook = Callable[["MqttLink"], None]
MessageHandler = Callable[[Message], None]


class MqttLink:
    """One MQTT connection with automatic reconnect, run on paho's network thread.

    `on_connect` runs on every (re)connect, before queued messages flow on: that is where the
    caller publishes its birth message. Subscriptions are replayed on reconnect.
    """

    def __init__(
        self,
        settings: MqttSettings,
        *,
        client_id: str | None = None,
        will: Will | None = None,
        on_connect: ConnectHook | None = None,
        on_message: MessageHandler | None = None,
        max_queued: int = 0,
    ) -> None:
        self.settings = settings
        self.client_id = client_id or settings.client_id or f"edgetwin-{uuid.uuid4().hex[:12]}"
        self._protocol = paho.MQTTv5 if settings.protocol == "5" else paho.MQTTv311
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=self._protocol,
            # MQTT 3.1.1 takes the session flag here; MQTT 5 takes clean_start at connect.
            clean_session=True if self._protocol == paho.MQTTv311 else None,
        )
        if settings.username is not None:
            password = settings.password.get_secret_value() if settings.password else None
            self._client.username_pw_set(settings.username, password)
        if will is not None:
            self._client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        self._client.reconnect_delay_set(
            min_delay=max(1, round(settings.reconnect_min_delay)),
            max_delay=max(1, round(settings.reconnect_max_delay)),
        )
        # Bounded: past this, publish() refuses instead of growing memory without limit.
        self._client.max_queued_messages_set(max_queued)
        self._client.on_connect = self._handle_connect
        self._client.on_disconnect = self._handle_disconnect
        self._client.on_message = self._handle_message
        self._on_connect = on_connect
        self._on_message = on_message
        self._subscriptions: dict[str, int] = {}
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._started = False
        self.connect_count = 0
        self.unsolicited = 0

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        """Connect in the background; returns at once, reconnects for ever until `close`."""
        if self._started:
            return
        self._started = True
        self._client.connect_async(
            self.settings.host, self.settings.port, keepalive=self.settings.keepalive
        )
        self._client.loop_start()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def subscribe(self, topic_filters: Iterable[str], qos: int = 1) -> None:
        with self._lock:
            new = {f: qos for f in topic_filters if f not in self._subscriptions}
            self._subscriptions.update(new)
        if new and self.connected:
            self._client.subscribe(list(new.items()))

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False
    ) -> Delivery:
        """Queue one message. While disconnected, QoS 1 waits in paho's queue; QoS 0 is lost."""
        try:
            info = self._client.publish(topic, payload, qos=qos, retain=retain)
        except ValueError as exc:
            raise PublishError(f"cannot publish to {topic!r}: {exc}") from exc
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            raise PublishError(f"outgoing queue full, message to {topic!r} refused")
        return Delivery(info)

    def close(self) -> None:
        """Disconnect cleanly: the broker drops the last will. Wait for deliveries first."""
        if not self._started:
            return
        self._started = False
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()

    def _handle_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.warning(
                "broker refused connection",
                extra={
                    "broker": f"{self.settings.host}:{self.settings.port}",
                    "reason": str(reason_code),
                },
            )
            return
        self.connect_count += 1
        log.info(
            "connected to broker",
            extra={
                "broker": f"{self.settings.host}:{self.settings.port}",
                "client_id": self.client_id,
            },
        )
        with self._lock:
            subscriptions = list(self._subscriptions.items())
        if subscriptions:
            client.subscribe(subscriptions)
        if self._on_connect is not None:
            try:
                self._on_connect(self)
            except Exception:
                log.exception("connect hook failed")
        self._connected.set()

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
        if was_connected and self._started:
            log.warning("lost broker connection, reconnecting", extra={"reason": str(reason_code)})

    def _handle_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        if self._on_message is None:
            return
        with self._lock:
            filters = list(self._subscriptions)
        # amqtt's broker (the demo's fallback) hands new subscribers retained messages that match
        # none of their filters; a message we did not ask for is dropped here, once for all.
        if not any(paho.topic_matches_sub(f, msg.topic) for f in filters):
            self.unsolicited += 1
            return
        try:
            self._on_message(Message(msg.topic, bytes(msg.payload), bool(msg.retain), msg.qos))
        except Exception:
            # One bad message must not kill paho's network thread.
            log.exception("message handler failed", extra={"topic": msg.topic})
