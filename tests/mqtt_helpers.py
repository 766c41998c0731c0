"""Real paho-mqtt clients for tests: a message-collecting `Subscriber` and a few one-liners.

Nothing here mocks MQTT (docs/design.md, 'Testing'): every helper talks to the broker under
test.
Waiting is done on a `threading.Condition` with a deadline, never with a bare sleep.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, Self

import paho.mqtt.client as mqtt
from paho.mqtt.client import topic_matches_sub
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

__all__ = [
    "Endpoint",
    "Message",
    "Subscriber",
    "connect_client",
    "disconnect_client",
    "mqtt_version",
    "publish",
]

DEFAULT_TIMEOUT = 5.0


class Endpoint(Protocol):
    """What a helper needs to know about a broker; every test broker back end has it."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...

    @property
    def protocol(self) -> str: ...


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retain: bool
    qos: int
    received_at: float
    """`time.monotonic()` at arrival, to measure latency or order across subscribers."""


def mqtt_version(protocol: str) -> MQTTProtocolVersion:
    """Map a broker's `protocol` ("5" or "3.1.1") to paho's constant."""
    versions = {"5": MQTTProtocolVersion.MQTTv5, "3.1.1": MQTTProtocolVersion.MQTTv311}
    try:
        return versions[protocol]
    except KeyError:
        raise ValueError(
            f"unknown MQTT protocol {protocol!r}; expected one of {list(versions)}"
        ) from None


def _client_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class _Waiter:
    """Turns paho's callbacks, which run on its network thread, into blocking waits."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.connack: ReasonCode | None = None
        self.subacks: dict[int, list[ReasonCode]] = {}

    def wait(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        with self.cond:
            if not self.cond.wait_for(ready, timeout):
                raise TimeoutError(f"no {what} within {timeout:.1f} s")


def connect_client(
    broker: Endpoint,
    *,
    client_id: str | None = None,
    will: tuple[str, bytes | str, int, bool] | None = None,
    keepalive: int = 60,
    timeout: float = DEFAULT_TIMEOUT,
    start_loop: bool = True,
) -> mqtt.Client:
    """A paho client connected to `broker` (CONNACK received and successful).

    `will` is (topic, payload, qos, retain). With ``start_loop=False`` the client is driven by
    `client.loop()` here until CONNACK and then left alone, which lets a test close its socket
    abruptly (``client.socket().close()``) without a network thread racing it.
    """
    waiter = _Waiter()
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id or _client_id("edgetwin-test"),
        protocol=mqtt_version(broker.protocol),
    )

    def on_connect(
        _c: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Properties | None
    ) -> None:
        with waiter.cond:
            waiter.connack = reason
            waiter.cond.notify_all()

    client.on_connect = on_connect
    if will is not None:
        topic, payload, qos, retain = will
        client.will_set(topic, payload, qos=qos, retain=retain)
    client.connect(broker.host, broker.port, keepalive=keepalive)
    if start_loop:
        client.loop_start()
        try:
            waiter.wait(lambda: waiter.connack is not None, timeout, "CONNACK")
        except TimeoutError:
            client.loop_stop()
            raise
    else:
        deadline = time.monotonic() + timeout
        while waiter.connack is None:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no CONNACK within {timeout:.1f} s")
            client.loop(timeout=0.05)
    assert waiter.connack is not None
    if waiter.connack.is_failure:
        disconnect_client(client)
        raise ConnectionError(f"broker refused the connection: {waiter.connack}")
    return client


def disconnect_client(client: mqtt.Client) -> None:
    """Send DISCONNECT (so no last will fires) and stop the network thread."""
    client.disconnect()
    client.loop_stop()


def publish(
    broker: Endpoint,
    topic: str,
    payload: bytes | str,
    *,
    qos: int = 1,
    retain: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> None:
    """Publish one message from a throw-away client and return once the broker has it.

    With qos >= 1 that means PUBACK/PUBCOMP; a retained message is then stored on the broker.
    """
    client = connect_client(broker, timeout=timeout)
    try:
        info = client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise TimeoutError(f"publish to {topic!r} not acknowledged within {timeout:.1f} s")
    finally:
        disconnect_client(client)


Predicate = Callable[[Message], bool] | str


class Subscriber:
    """A real MQTT client that subscribes to topic filters and records what arrives.

    Use as a context manager: entering returns once CONNACK and every SUBACK are in, so a
    message published afterwards is certain to be seen.
    """

    def __init__(
        self,
        broker: Endpoint,
        topics: str | Sequence[str] = "#",
        *,
        qos: int = 1,
        client_id: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._broker = broker
        self._topics = [topics] if isinstance(topics, str) else list(topics)
        self._qos = qos
        self._client_id = client_id or _client_id("edgetwin-test-sub")
        self._timeout = timeout
        self._waiter = _Waiter()
        self._messages: list[Message] = []
        self._client: mqtt.Client | None = None

    @property
    def client(self) -> mqtt.Client:
        if self._client is None:
            raise RuntimeError("Subscriber is not connected")
        return self._client

    def connect(self) -> Self:
        client = connect_client(self._broker, client_id=self._client_id, timeout=self._timeout)
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        self._client = client
        try:
            self.subscribe(*self._topics)
        except BaseException:
            self.close()
            raise
        return self

    def subscribe(self, *topic_filters: str) -> None:
        """Subscribe to more filters, returning once the broker has granted them."""
        if not topic_filters:
            return
        result, mid = self.client.subscribe([(t, self._qos) for t in topic_filters])
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise ConnectionError(f"SUBSCRIBE {topic_filters} failed: {result}")
        # The SUBACK may already be in: acks are kept by mid, so checking after is race-free.
        with self._waiter.cond:
            if not self._waiter.cond.wait_for(lambda: mid in self._waiter.subacks, self._timeout):
                raise TimeoutError(f"no SUBACK for {topic_filters} within {self._timeout:.1f} s")
            granted = self._waiter.subacks.pop(mid)
        refused = [str(code) for code in granted if code.is_failure]
        if refused:
            raise ConnectionError(f"broker refused subscriptions {topic_filters}: {refused}")
        self._topics.extend(t for t in topic_filters if t not in self._topics)

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            disconnect_client(client)

    def __enter__(self) -> Self:
        return self.connect()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _on_subscribe(
        self,
        _c: mqtt.Client,
        _u: Any,
        mid: int,
        reasons: list[ReasonCode],
        _p: Properties | None,
    ) -> None:
        with self._waiter.cond:
            self._waiter.subacks[mid] = reasons
            self._waiter.cond.notify_all()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        message = Message(
            topic=msg.topic,
            payload=bytes(msg.payload),
            retain=bool(msg.retain),
            qos=msg.qos,
            received_at=time.monotonic(),
        )
        with self._waiter.cond:
            self._messages.append(message)
            self._waiter.cond.notify_all()

    def messages(self, topic_filter: str | None = None) -> list[Message]:
        """A snapshot of the messages received so far, optionally matching an MQTT filter."""
        with self._waiter.cond:
            received = list(self._messages)
        if topic_filter is None:
            return received
        return [m for m in received if topic_matches_sub(topic_filter, m.topic)]

    def clear(self) -> None:
        """Forget what was received so far, e.g. between two phases of a test."""
        with self._waiter.cond:
            self._messages.clear()

    def wait_for(
        self,
        predicate: Predicate = "#",
        timeout: float = DEFAULT_TIMEOUT,
        *,
        count: int = 1,
    ) -> list[Message]:
        """Block until `count` received messages match, and return all matching ones so far.

        `predicate` is a function of one `Message` or an MQTT topic filter string. Messages
        received before the call count too. Raises TimeoutError listing what did arrive.
        """
        match = _as_predicate(predicate)
        found: list[Message] = []
        scanned = 0

        def enough() -> bool:
            # Only what arrived since the last look is matched: rescanning everything at each
            # arrival made waiting for 20,000 messages quadratic (over 2 minutes on a busy box).
            nonlocal scanned
            if scanned > len(self._messages):  # cleared meanwhile
                found.clear()
                scanned = 0
            found.extend(m for m in self._messages[scanned:] if match(m))
            scanned = len(self._messages)
            return len(found) >= count

        with self._waiter.cond:
            if self._waiter.cond.wait_for(enough, timeout):
                return list(found)
            received = _summary(self._messages)
        raise TimeoutError(
            f"{count} message(s) matching {predicate!r} not received within {timeout:.1f} s; "
            f"received: {received}"
        )


def _as_predicate(predicate: Predicate) -> Callable[[Message], bool]:
    if isinstance(predicate, str):
        topic_filter = predicate
        return lambda m: topic_matches_sub(topic_filter, m.topic)
    return predicate


def _summary(messages: Iterable[Message], limit: int = 20) -> str:
    shown = [f"{m.topic}={m.payload[:40]!r}{' (retained)' if m.retain else ''}" for m in messages]
    if len(shown) > limit:
        shown = [*shown[:limit], f"... {len(shown) - limit} more"]
    return "[" + ", ".join(shown) + "]" if shown else "nothing"
