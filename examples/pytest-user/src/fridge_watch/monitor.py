"""The service under test: it knows MQTT and the edgetwin reading format, nothing of edgetwin's
code, as a production consumer would.

It subscribes to every telemetry stream, raises one alert when a stream's temperature has been
outside the band for `hold` readings in a row, and publishes it to `alerts/fridge/{device}`. An
alert says whether the reading was simulated: on-call staff do not drive to a fridge that a
simulation plays.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

SESSION_EXPIRY = 3600  # seconds the broker keeps our subscription and queue while we are away


@dataclass(frozen=True)
class Alert:
    device: str
    sensor: str
    temperature: float
    seq: int
    simulated: bool
    anomaly: str | None  # the fault label a simulation put on the reading, if any


@dataclass
class _Stream:
    outside: int = 0
    alerted: bool = False
    seqs: list[int] = field(default_factory=list)


class FridgeWatch:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        prefix: str = "edgetwin",
        low: float = 2.0,
        high: float = 8.0,
        hold: int = 3,
        client_id: str = "fridge-watch",
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.low, self.high, self.hold = low, high, hold
        self._prefix = prefix
        self._host, self._port = host, port
        self._lock = threading.Lock()
        self._streams: dict[tuple[str, str], _Stream] = {}
        self._sources: dict[str, str] = {}
        self.alerts: list[Alert] = []
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        if username is not None:
            self._client.username_pw_set(username, password)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._subscribed = threading.Event()
        self._client.reconnect_delay_set(0.1, 1.0)

    def start(self, timeout: float = 10.0) -> None:
        """Connect and return once the broker has confirmed the subscription."""
        # A persistent session: readings published while we reconnect wait for us at the broker.
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = SESSION_EXPIRY
        self._client.connect(
            self._host, self._port, keepalive=5, clean_start=False, properties=properties
        )
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            self.stop()
            raise TimeoutError(f"no subscription on {self._host}:{self._port} in {timeout} s")

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def seqs(self, device: str, sensor: str) -> list[int]:
        with self._lock:
            stream = self._streams.get((device, sensor))
            return list(stream.seqs) if stream else []

    def source(self, device: str) -> str | None:
        with self._lock:
            return self._sources.get(device)

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if not reason.is_failure:
            client.subscribe(f"{self._prefix}/+/telemetry/+", qos=1)

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _m: Any, _r: Any, _p: Any) -> None:
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        try:
            reading = json.loads(message.payload)
            temperature = float(reading["values"]["temperature"]["value"])
            device, sensor, seq = reading["device"], reading["sensor"], int(reading["seq"])
        except (ValueError, KeyError, TypeError):
            return  # not a temperature reading: nothing to watch
        simulated = reading.get("source") == "simulated"
        anomaly = (reading.get("anomaly") or {}).get("type")
        with self._lock:
            self._sources[device] = reading.get("source", "")
            stream = self._streams.setdefault((device, sensor), _Stream())
            stream.seqs.append(seq)
            if self.low <= temperature <= self.high:
                stream.outside, stream.alerted = 0, False
                return
            stream.outside += 1
            if stream.alerted or stream.outside < self.hold:
                return
            stream.alerted = True
            alert = Alert(device, sensor, temperature, seq, simulated, anomaly)
            self.alerts.append(alert)
        client.publish(f"alerts/fridge/{device}", json.dumps(asdict(alert)), qos=1)
