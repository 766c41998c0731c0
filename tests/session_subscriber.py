"""A subscriber whose session outlives broker restarts, for counting every reading.

A plain subscriber misses what is published while it reconnects. This one keeps a persistent
MQTT 5 session (clean start off, session expiry) on a broker with persistence, so the broker
queues QoS 1 messages for it while it is away: what it finally holds is what the broker
delivered, and a missing reading is the agent's loss, not the test's.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgetwin.testing.capture import BrokerAddress


class SessionSubscriber:
    def __init__(self, broker: BrokerAddress, topic_filter: str) -> None:
        self._broker = broker
        self._filter = topic_filter
        self._cond = threading.Condition()
        self.payloads: list[dict[str, Any]] = []
        self.connects = 0
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"edgetwin-test-session-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self._client.reconnect_delay_set(1, 1)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe(self._filter, qos=1)
        with self._cond:
            self.connects += 1
            self._cond.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.payloads.append(json.loads(msg.payload))
            self._cond.notify_all()

    def __enter__(self) -> Self:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 600
        self._client.connect(
            self._broker.host,
            self._broker.port,
            keepalive=2,
            clean_start=False,
            properties=properties,
        )
        self._client.loop_start()
        self.wait(lambda: self.connects >= 1, 10, "first connection")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        with self._cond:
            if not self._cond.wait_for(predicate, timeout):
                raise TimeoutError(f"{what} not reached within {timeout} s")

    def seqs(self, sensor: str) -> list[int]:
        with self._cond:
            return [p["seq"] for p in self.payloads if p["sensor"] == sensor]

    def distinct(self, sensor: str) -> set[int]:
        return set(self.seqs(sensor))

    def by_sensor(self) -> dict[str, list[int]]:
        result: dict[str, list[int]] = defaultdict(list)
        with self._cond:
            for p in self.payloads:
                result[p["sensor"]].append(p["seq"])
        return dict(result)
