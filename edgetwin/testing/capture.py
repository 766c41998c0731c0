"""Record what a broker delivers, and wait for it: the message capture for tests and notebooks.

`Capture` is a real MQTT client (nothing here mocks MQTT): it subscribes to topic filters and
keeps every message that arrives, in order. A test then waits for what it expects with
`wait_for`, which blocks on a condition variable until the messages are there, or fails with an
`AssertionError` that lists what did arrive, and reads the telemetry back as the wire
contract's types (`readings`, `check_sequence`).

    from edgetwin.testing.capture import Capture, publish

    with Capture(endpoint, "edgetwin/#") as capture:
        publish(endpoint, "edgetwin/pi-1/telemetry/env", reading.encode())
        capture.wait_for("edgetwin/+/telemetry/+", count=1, timeout=5)
        assert capture.readings()[0].device == "pi-1"

`connect_client` and `publish` are the one-liners around it: a connected paho client for an
endpoint, and one acknowledged message from a throw-away client.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, Self

import msgspec
import paho.mqtt.client as mqtt
from paho.mqtt.client import topic_matches_sub
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edgetwin.agent.contract import ContractError, FaultLabel, Telemetry
from edgetwin.testing.endpoint import MqttEndpoint

__all__ = [
    "DEFAULT_TIMEOUT",
    "BrokerAddress",
    "Capture",
    "Message",
    "SequenceReport",
    "WaitTimeout",
    "as_endpoint",
    "connect_client",
    "disconnect_client",
    "publish",
]

DEFAULT_TIMEOUT = 5.0
"""Seconds a connect, a subscribe, a publish or a `wait_for` waits unless told otherwise."""


class BrokerAddress(Protocol):
    """Anything that names a broker by `host`, `port` and MQTT `protocol` ("5" or "3.1.1"),
    such as a test suite's own broker object; `as_endpoint` turns it into an `MqttEndpoint`."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...

    @property
    def protocol(self) -> str: ...


def as_endpoint(broker: MqttEndpoint | BrokerAddress) -> MqttEndpoint:
    """`broker` as an `MqttEndpoint`: itself, or an anonymous, plain-TCP endpoint at its
    address. Raises ValueError for a protocol other than "5" and "3.1.1"."""
    if isinstance(broker, MqttEndpoint):
        return broker
    if broker.protocol == "5":
        return MqttEndpoint(broker.host, broker.port, "5")
    if broker.protocol == "3.1.1":
        return MqttEndpoint(broker.host, broker.port, "3.1.1")
    raise ValueError(f"unknown MQTT protocol {broker.protocol!r}; expected '5' or '3.1.1'")


class WaitTimeout(AssertionError, TimeoutError):
    """What `Capture.wait_for` raises when the messages it waits for do not come in time.

    An AssertionError, so that pytest reports it as a failed expectation with its message (the
    list of what did arrive); also a TimeoutError, for code that waits in a retry loop.
    """


@dataclass(frozen=True, slots=True)
class Message:
    """One message as the broker delivered it to a `Capture`."""

    topic: str
    payload: bytes
    retain: bool
    qos: int
    received_at: float
    """`time.monotonic()` at arrival, to measure latency or order across captures."""

    @property
    def text(self) -> str:
        """The payload as UTF-8 text (undecodable bytes replaced)."""
        return self.payload.decode("utf-8", "replace")

    def json(self) -> Any:
        """The payload parsed as JSON; ValueError (msgspec.DecodeError) if it is not JSON."""
        return msgspec.json.decode(self.payload)

    def telemetry(self) -> Telemetry:
        """The payload as a contract `Telemetry` reading; ContractError if it is not one."""
        return Telemetry.decode(self.payload)


@dataclass(frozen=True)
class SequenceReport:
    """How complete one stream's `seq` numbering is, as received (see `Capture.check_sequence`).

    The contract numbers each (device, sensor) stream 1, 2, 3... whoever produces it, so a
    missing number is a lost reading and a repeated one a duplicate (QoS 1 is at least once).
    """

    device: str
    sensor: str
    count: int
    """readings received, duplicates included"""
    first: int | None
    """lowest seq received (None: no reading)"""
    last: int | None
    """highest seq received"""
    gaps: list[tuple[int, int]] = field(default_factory=list)
    """missing numbers as inclusive ranges (first missing, last missing), in order"""
    duplicates: dict[int, int] = field(default_factory=dict)
    """seq -> how many times it arrived, for every seq that arrived more than once"""
    out_of_order: int = 0
    """readings that arrived after one with a higher seq"""

    @property
    def missing(self) -> int:
        """How many numbers the gaps hold in all."""
        return sum(hi - lo + 1 for lo, hi in self.gaps)

    @property
    def complete(self) -> bool:
        """Whether every number from `first` to `last` arrived (duplicates allowed)."""
        return not self.gaps

    def describe(self, limit: int = 20) -> str:
        """One line for a human: the counts, and the first `limit` gaps and duplicates."""
        if self.first is None:
            return f"{self.device}/{self.sensor}: no readings"
        gaps = ", ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in self.gaps[:limit])
        if len(self.gaps) > limit:
            gaps += f", ... {len(self.gaps) - limit} more"
        dups = ", ".join(f"{seq}x{n}" for seq, n in list(self.duplicates.items())[:limit])
        if len(self.duplicates) > limit:
            dups += f", ... {len(self.duplicates) - limit} more"
        return (
            f"{self.device}/{self.sensor}: {self.count} readings, seq {self.first}..{self.last}, "
            f"{self.missing} missing [{gaps or 'none'}], "
            f"{len(self.duplicates)} duplicated [{dups or 'none'}], "
            f"{self.out_of_order} out of order"
        )

    @classmethod
    def of(
        cls, device: str, sensor: str, seqs: Sequence[int], *, start: int | None = None
    ) -> SequenceReport:
        """The report for `seqs` in arrival order. With `start`, numbers from `start` up to the
        first one received count as missing too (e.g. `start=1` for a stream seen from birth)."""
        gaps: list[tuple[int, int]] = []
        if not seqs:
            return cls(device, sensor, 0, None, None, gaps)
        counts = Counter(seqs)
        distinct = sorted(counts)
        if start is not None and distinct[0] > start:
            gaps.append((start, distinct[0] - 1))
        gaps.extend((a + 1, b - 1) for a, b in itertools.pairwise(distinct) if b > a + 1)
        highest, late = -1, 0
        for seq in seqs:
            if seq < highest:
                late += 1
            highest = max(highest, seq)
        return cls(
            device,
            sensor,
            len(seqs),
            distinct[0],
            distinct[-1],
            gaps,
            {seq: n for seq, n in sorted(counts.items()) if n > 1},
            late,
        )


def _client_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def connect_client(
    broker: MqttEndpoint | BrokerAddress,
    *,
    client_id: str | None = None,
    will: tuple[str, bytes | str, int, bool] | None = None,
    keepalive: int = 60,
    timeout: float = DEFAULT_TIMEOUT,
    start_loop: bool = True,
) -> mqtt.Client:
    """A paho client connected to `broker`: CONNACK received and successful.

    `will` is (topic, payload, qos, retain). The client runs paho's network thread; end it
    with `disconnect_client`. With ``start_loop=False`` the client is driven by
    `client.loop()` here until CONNACK and then left alone, which lets a test close its socket
    abruptly (``client.socket().close()``) without a network thread racing it.
    Raises TimeoutError without a CONNACK, ConnectionError when the broker refuses.
    """
    endpoint = as_endpoint(broker)
    cond = threading.Condition()
    connack: list[ReasonCode] = []
    client = endpoint.paho_client(client_id or _client_id("edgetwin-testing"))

    def on_connect(
        _c: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Properties | None
    ) -> None:
        with cond:
            connack.append(reason)
            cond.notify_all()

    client.on_connect = on_connect
    if will is not None:
        topic, payload, qos, retain = will
        client.will_set(topic, payload, qos=qos, retain=retain)
    client.connect(endpoint.host, endpoint.port, keepalive=keepalive)
    if start_loop:
        client.loop_start()
        with cond:
            arrived = cond.wait_for(lambda: bool(connack), timeout)
        if not arrived:
            client.loop_stop()
            raise TimeoutError(f"no CONNACK from {endpoint.url} within {timeout:.1f} s")
    else:
        deadline = time.monotonic() + timeout
        while not connack:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no CONNACK from {endpoint.url} within {timeout:.1f} s")
            client.loop(timeout=0.05)
    if connack[0].is_failure:
        disconnect_client(client)
        raise ConnectionError(f"{endpoint.url} refused the connection: {connack[0]}")
    return client


def disconnect_client(client: mqtt.Client) -> None:
    """Send DISCONNECT (so the broker publishes no last will) and stop the network thread."""
    client.disconnect()
    client.loop_stop()


def publish(
    broker: MqttEndpoint | BrokerAddress,
    topic: str,
    payload: bytes | str,
    *,
    qos: int = 1,
    retain: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> None:
    """Publish one message from a throw-away client and return once the broker has it.

    At QoS 1 or 2 that means its PUBACK or PUBCOMP arrived, so a retained message is stored on
    the broker by then, and a `Capture` subscribed before the call receives it.
    """
    client = connect_client(broker, timeout=timeout)
    try:
        info = client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise TimeoutError(f"publish to {topic!r} not acknowledged within {timeout:.1f} s")
    finally:
        disconnect_client(client)


Predicate = Callable[[Message], bool]


class Capture:
    """A real MQTT client that subscribes to topic filters and records every message.

    Constructing one connects and subscribes, and returns once CONNACK and every SUBACK are
    in, so any message published afterwards is certain to be recorded. Use it as a context
    manager (or call `close`) to disconnect. Every method may be called from any thread;
    paho's network thread appends messages as they arrive.

    `topics` are the filters to subscribe to at once (more with `subscribe`), `qos` the QoS of
    every subscription (1: the broker delivers at least once what it got at QoS 1).
    """

    def __init__(
        self,
        endpoint: MqttEndpoint | BrokerAddress,
        topics: str | Sequence[str] = (),
        *,
        qos: int = 1,
        client_id: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.endpoint = as_endpoint(endpoint)
        self._qos = qos
        self._timeout = timeout
        self._cond = threading.Condition()
        self._subacks: dict[int, list[ReasonCode]] = {}
        self._messages: list[Message] = []
        self._filters: list[str] = []
        client = connect_client(
            self.endpoint, client_id=client_id or _client_id("edgetwin-capture"), timeout=timeout
        )
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        self._client: mqtt.Client | None = client
        try:
            self.subscribe(*([topics] if isinstance(topics, str) else topics))
        except BaseException:
            self.close()
            raise

    @property
    def filters(self) -> list[str]:
        """The topic filters subscribed to so far."""
        return list(self._filters)

    def subscribe(self, *topic_filters: str) -> None:
        """Subscribe to more filters; returns once the broker has granted them all.

        Raises ConnectionError if the broker refuses one (an ACL, a malformed filter).
        """
        if not topic_filters:
            return
        client = self._connected()
        result, mid = client.subscribe([(f, self._qos) for f in topic_filters])
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise ConnectionError(f"SUBSCRIBE {list(topic_filters)} failed: {result}")
        # The SUBACK may be in already: acks are kept by mid, so waiting after is race-free.
        with self._cond:
            if not self._cond.wait_for(lambda: mid in self._subacks, self._timeout):
                raise TimeoutError(
                    f"no SUBACK for {list(topic_filters)} within {self._timeout:.1f} s"
                )
            granted = self._subacks.pop(mid)
        refused = [str(code) for code in granted if code.is_failure]
        if refused:
            raise ConnectionError(f"broker refused subscriptions {list(topic_filters)}: {refused}")
        self._filters.extend(f for f in topic_filters if f not in self._filters)

    def close(self) -> None:
        """Disconnect (no last will); what was recorded stays readable. Idempotent."""
        client, self._client = self._client, None
        if client is not None:
            disconnect_client(client)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- reading ------------------------------------------------------------------------------

    def messages(self, topic_filter: str | None = None) -> list[Message]:
        """A snapshot of the messages recorded so far, in arrival order, optionally only those
        whose topic matches the MQTT filter `topic_filter`."""
        with self._cond:
            received = list(self._messages)
        if topic_filter is None:
            return received
        return [m for m in received if topic_matches_sub(topic_filter, m.topic)]

    def clear(self) -> None:
        """Forget what was recorded so far, e.g. between two phases of a test."""
        with self._cond:
            self._messages.clear()

    def wait_for(
        self,
        topic_filter: str | Predicate = "#",
        predicate: Predicate | None = None,
        *,
        count: int = 1,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> list[Message]:
        """Block until `count` recorded messages match; return every matching one so far.

        A message matches when its topic matches the MQTT filter `topic_filter` and
        `predicate(message)` is true. `topic_filter` may also be a predicate alone
        (``capture.wait_for(lambda m: m.retain)``). Messages recorded before the call count
        too; `clear` first to wait for new ones only. Raises `WaitTimeout` (an AssertionError)
        after `timeout` seconds, listing what did arrive.
        """
        match = _matcher(topic_filter, predicate)
        found: list[Message] = []
        scanned = 0

        def enough() -> bool:
            # Only what arrived since the last look is matched: rescanning everything at each
            # arrival made waiting for 20,000 messages quadratic (minutes on a busy box).
            nonlocal scanned
            if scanned > len(self._messages):  # cleared meanwhile
                found.clear()
                scanned = 0
            found.extend(m for m in self._messages[scanned:] if match(m))
            scanned = len(self._messages)
            return len(found) >= count

        with self._cond:
            if self._cond.wait_for(enough, timeout):
                return list(found)
            received = list(self._messages)
            matched = len(found)
        raise WaitTimeout(
            f"expected {count} message(s) {_describe(topic_filter, predicate)} within "
            f"{timeout:g} s, {matched} matched; {_summary(received)}"
        )

    def readings(
        self,
        topic_filter: str = "#",
        *,
        device: str | None = None,
        sensor: str | None = None,
        strict: bool = False,
    ) -> list[Telemetry]:
        """The telemetry readings recorded so far, decoded as the contract's `Telemetry`, in
        arrival order, optionally of one `device` and/or `sensor`.

        Messages under `topic_filter` that are not telemetry (statuses, labels, twins...) are
        left out; with `strict`, a non-retained one that does not decode raises ContractError
        naming its topic (use it with a telemetry filter to catch malformed readings).
        """
        decoded: list[Telemetry] = []
        for message in self.messages(topic_filter):
            try:
                reading = Telemetry.decode(message.payload)
            except ContractError as exc:
                if strict and not message.retain:
                    raise ContractError(f"{message.topic}: {exc}") from exc
                continue
            if (device is None or reading.device == device) and (
                sensor is None or reading.sensor == sensor
            ):
                decoded.append(reading)
        return decoded

    def labels(self, topic_filter: str = "#") -> list[FaultLabel]:
        """The fault labels (`{prefix}/labels` documents) recorded so far, decoded."""
        decoded: list[FaultLabel] = []
        for message in self.messages(topic_filter):
            try:
                decoded.append(FaultLabel.decode(message.payload))
            except ContractError:
                continue
        return decoded

    def check_sequence(
        self, device: str, sensor: str, *, topic_filter: str = "#", start: int | None = None
    ) -> SequenceReport:
        """The gaps and duplicates in the `seq` numbers of one stream received so far.

        With `start`, numbers from `start` to the first one received count as missing too.
        """
        seqs = [r.seq for r in self.readings(topic_filter, device=device, sensor=sensor)]
        return SequenceReport.of(device, sensor, seqs, start=start)

    def assert_sequence_complete(
        self,
        device: str,
        sensor: str,
        *,
        topic_filter: str = "#",
        start: int | None = None,
        allow_duplicates: bool = True,
        min_count: int = 1,
    ) -> SequenceReport:
        """Raise AssertionError, listing the gaps, unless the stream's `seq` numbers received
        so far run without a gap (at least `min_count` readings; duplicates only if
        `allow_duplicates`, which QoS 1 delivery permits). Returns the report."""
        report = self.check_sequence(device, sensor, topic_filter=topic_filter, start=start)
        if report.gaps or report.count < min_count or (report.duplicates and not allow_duplicates):
            raise AssertionError(f"incomplete sequence: {report.describe()}")
        return report

    # -- paho callbacks (its network thread) --------------------------------------------------

    def _connected(self) -> mqtt.Client:
        if self._client is None:
            raise RuntimeError("this Capture is closed")
        return self._client

    def _on_subscribe(
        self,
        _c: mqtt.Client,
        _u: Any,
        mid: int,
        reasons: list[ReasonCode],
        _p: Properties | None,
    ) -> None:
        with self._cond:
            self._subacks[mid] = reasons
            self._cond.notify_all()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        message = Message(
            topic=msg.topic,
            payload=bytes(msg.payload),
            retain=bool(msg.retain),
            qos=msg.qos,
            received_at=time.monotonic(),
        )
        with self._cond:
            self._messages.append(message)
            self._cond.notify_all()


def _matcher(topic_filter: str | Predicate, predicate: Predicate | None) -> Predicate:
    if not isinstance(topic_filter, str):
        if predicate is not None:
            raise TypeError("give a topic filter and a predicate, or a predicate alone")
        return topic_filter
    if predicate is None:
        return lambda m: topic_matches_sub(topic_filter, m.topic)
    test = predicate
    return lambda m: topic_matches_sub(topic_filter, m.topic) and test(m)


def _name(predicate: Predicate) -> str:
    return getattr(predicate, "__qualname__", None) or repr(predicate)


def _describe(topic_filter: str | Predicate, predicate: Predicate | None) -> str:
    if not isinstance(topic_filter, str):
        return f"matching {_name(topic_filter)}"
    where = f"on {topic_filter!r}"
    return where if predicate is None else f"{where} matching {_name(predicate)}"


def _line(message: Message, head: int = 60) -> str:
    payload = message.payload[:head]
    more = f"...(+{len(message.payload) - head} B)" if len(message.payload) > head else ""
    return f"{message.topic} {payload!r}{more}{' (retained)' if message.retain else ''}"


def _summary(messages: Sequence[Message], limit: int = 20) -> str:
    """What arrived, for a failure message: how many on each topic, then the first and last
    few messages with the head of their payloads."""
    if not messages:
        return "nothing arrived"
    by_topic = Counter(m.topic for m in messages)
    topics = ", ".join(f"{t} x{n}" for t, n in by_topic.most_common(limit))
    if len(by_topic) > limit:
        topics += f", ... {len(by_topic) - limit} more topics"
    if len(messages) <= limit:
        shown = [_line(m) for m in messages]
    else:
        half = limit // 2
        shown = [
            *(_line(m) for m in messages[:half]),
            f"... {len(messages) - 2 * half} more ...",
            *(_line(m) for m in messages[-half:]),
        ]
    lines = "\n  ".join(shown)
    return f"{len(messages)} arrived ({topics}):\n  {lines}"
