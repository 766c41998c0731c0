"""Virtual time: play a scenario from a start for a duration as fast as the machine allows.

Every stream's readings fall due at start + phase + k * interval; one heap orders them, so a
day of a fleet comes out in time order without waiting for it. Messages go to a JSON lines
file (one object a line: virtual time `t`, `topic`, `retain`, and the `payload` document
itself) or are published to a broker.
"""

from __future__ import annotations

import heapq
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal, Protocol

import msgspec

from agent.config import MqttSettings
from agent.contract import Topics
from agent.mqtt import Delivery, MqttError, MqttLink
from gateway.scenario.generator import Message
from gateway.scenario.model import Scenario, ScenarioError


class Sink(Protocol):
    def write(self, t: float, message: Message) -> None: ...

    def close(self) -> None: ...


@dataclass
class Counts:
    telemetry: int = 0
    labels: int = 0
    status: int = 0

    @property
    def total(self) -> int:
        return self.telemetry + self.labels + self.status


class JsonLinesSink:
    """One JSON object a line. The payload is embedded as the JSON document it is, so the
    file reads with any JSON lines tool and `payload` re-encodes to the bytes sent."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("wb")
        self._topics: dict[str, bytes] = {}

    def write(self, t: float, message: Message) -> None:
        topic, payload, retain = message
        head = self._topics.get(topic)
        if head is None:
            head = self._topics[topic] = b',"topic":' + msgspec.json.encode(topic)
        self._file.write(
            b'{"t":%r%s,"retain":%s,"payload":%s}\n'
            % (round(t, 6), head, b"true" if retain else b"false", payload)
        )

    def close(self) -> None:
        self._file.close()


class BrokerSink:
    """Publishes through the agent's MQTT adapter, keeping at most `window` messages
    unacknowledged (QoS 1) or unsent (QoS 0): the run goes at the broker's pace and memory
    stays bounded."""

    def __init__(self, host: str, port: int, qos: Literal[0, 1] = 1, window: int = 1000) -> None:
        self._qos = qos
        self._window = window
        self._link = MqttLink(
            MqttSettings(host=host, port=port, max_inflight=min(window, 65535)),
            client_id=None,
        )
        self._pending: deque[Delivery] = deque()
        self._link.start()
        if not self._link.wait_connected(10.0):
            self._link.close(1.0)
            raise ScenarioError(f"cannot connect to the broker at {host}:{port}")

    def write(self, t: float, message: Message) -> None:
        topic, payload, retain = message
        try:
            delivery = self._link.publish(
                topic, payload, qos=1 if retain else self._qos, retain=retain
            )
        except MqttError as exc:
            raise ScenarioError(str(exc)) from exc
        self._pending.append(delivery)
        while len(self._pending) > self._window:
            if not self._pending.popleft().wait(30.0):
                raise ScenarioError("the broker stopped acknowledging messages")

    def close(self) -> None:
        try:
            for delivery in self._pending:
                delivery.wait(30.0)
        finally:
            self._link.close()


class Progress:
    """A one-line bar on a terminal stream, redrawn at most five times a second."""

    def __init__(self, total: float, stream: IO[str] | None = None, width: int = 30) -> None:
        self._total = total
        self._stream = stream if stream is not None else sys.stderr
        self._width = width
        self._started = time.monotonic()
        self._drawn = 0.0

    def update(self, done: float, messages: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._drawn < 0.2:
            return
        self._drawn = now
        fraction = min(1.0, done / self._total) if self._total > 0 else 1.0
        filled = round(fraction * self._width)
        elapsed = max(now - self._started, 1e-9)
        self._stream.write(
            f"\r[{'#' * filled}{'.' * (self._width - filled)}] {fraction:6.1%} "
            f"{messages:,} messages, {messages / elapsed:,.0f}/s"
        )
        if final:
            self._stream.write("\n")
        self._stream.flush()


def run_virtual(
    scenario: Scenario,
    start: float,
    duration: float,
    sink: Sink,
    *,
    topics: Topics | None = None,
    payload: Literal["edgetwin", "flat"] = "edgetwin",
    progress: Callable[[float, int], None] | None = None,
) -> Counts:
    """Every message of `scenario` from `start` for `duration` seconds, in time order, into
    `sink`. `progress(virtual seconds done, messages so far)` is called every few thousand
    messages."""
    topics = topics or Topics()
    scenario = scenario.with_start(start)
    generator = scenario.generator(topics, payload=payload)
    end = start + duration
    label_topic = generator.label_topic()
    counts = Counts()
    # (due time, stream index, readings so far); times computed from k, not summed, so they
    # do not drift over a long run.
    heap = [(start + s.phase, s.index, 0) for s in generator.streams()]
    heapq.heapify(heap)
    intervals = {s.index: (s.interval, start + s.phase) for s in generator.streams()}
    emit = generator.emit
    write = sink.write
    since_report = 0
    while heap and heap[0][0] < end:
        t, index, k = heap[0]
        for message in emit(index, t):
            write(t, message)
            if message[2]:
                counts.status += 1
            elif message[0] == label_topic:
                counts.labels += 1
            else:
                counts.telemetry += 1
        interval, first = intervals[index]
        heapq.heapreplace(heap, (first + (k + 1) * interval, index, k + 1))
        since_report += 1
        if progress is not None and since_report >= 4096:
            since_report = 0
            progress(t - start, counts.total)
    if progress is not None:
        progress(duration, counts.total)
    return counts


def simulate_command(
    scenario_path: Path | None,
    *,
    devices: int | None,
    start: str | None,
    duration: str,
    out: Path | None,
    broker: str | None,
    prefix: str,
    topic: str | None,
    payload: Literal["edgetwin", "flat"],
    qos: Literal[0, 1],
    quiet: bool = False,
) -> int:
    """`edgetwin simulate --virtual`: returns the exit code; errors go to stderr."""
    from datetime import UTC, datetime

    from agent.contract import ContractError
    from gateway.recording import parse_broker
    from gateway.scenario.model import parse_duration, scenario_for

    try:
        scenario = scenario_for(scenario_path, devices)
        seconds = parse_duration(duration)
        if start is not None:
            moment = datetime.fromisoformat(start)
            begin = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
        elif scenario.origin is not None:
            begin = scenario.origin
        else:
            raise ScenarioError("--start: required when the scenario has no `start`")
        topics = Topics(prefix=prefix, telemetry_template=topic)
        sink: Sink
        if out is not None:
            sink = JsonLinesSink(out)
        else:
            assert broker is not None
            sink = BrokerSink(*parse_broker(broker), qos=qos)
    except (ScenarioError, ContractError, ValueError, OSError) as exc:
        print(f"edgetwin simulate: {exc}", file=sys.stderr)
        return 2
    bar = None if quiet else Progress(seconds)
    started = time.monotonic()
    try:
        counts = run_virtual(
            scenario,
            begin,
            seconds,
            sink,
            topics=topics,
            payload=payload,
            progress=None if bar is None else bar.update,
        )
    except ScenarioError as exc:
        print(f"\nedgetwin simulate: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nedgetwin simulate: interrupted", file=sys.stderr)
        return 130
    finally:
        sink.close()
    if bar is not None:
        bar.update(seconds, counts.total, final=True)
    elapsed = time.monotonic() - started
    where = str(out) if out is not None else f"mqtt://{broker}"
    print(
        f"{counts.total} messages ({counts.telemetry} telemetry, {counts.labels} labels, "
        f"{counts.status} status) from {scenario.device_count()} devices over "
        f"{seconds:g} virtual seconds to {where} in {elapsed:.1f} s"
    )
    return 0
