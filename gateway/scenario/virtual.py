"""Virtual time: play a scenario from a start for a duration as fast as the machine allows.

The engine's schedule (`gateway.engine.schedule`) and the scenario's generator, as a real-time
run uses them, with a clock that jumps ahead instead of following the wall: every stream's
readings fall due at start + phase + k * interval, so a day of a fleet comes out in time order
without waiting for it. Messages go to a JSON lines file (one object a line: virtual time `t`,
`topic`, `retain`, and the `payload` document itself) or are published to a broker.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NoReturn, Protocol

import msgspec

from edgetwin.agent.config import MqttSettings
from edgetwin.agent.contract import Topics
from edgetwin.agent.mqtt import describe_connect_error
from edgetwin.gateway.engine.link import EngineLink, endpoint_from_mqtt, endpoint_url
from edgetwin.gateway.engine.schedule import Entry, Schedule
from edgetwin.gateway.scenario.generator import Message
from edgetwin.gateway.scenario.model import Scenario, ScenarioError, Shard

_STEP_TICKS = 4096  # ticks a step of the virtual clock takes, on average
_BACKLOG_BYTES = 1 << 20  # encoded bytes a broker sink holds before it waits for the socket
_STALL_TIMEOUT = 30.0  # seconds a broker sink waits for the window or the socket to move


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
    file reads with any JSON lines tool and `payload` re-encodes to the bytes sent. `t` is
    the tick's time to the last bit (repr), the key `merge_datasets` orders shards' files by:
    rounded, ticks of different streams within a microsecond could not be told apart."""

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
            % (t, head, b"true" if retain else b"false", payload)
        )

    def close(self) -> None:
        self._file.close()


class BrokerUnreachable(ScenarioError):
    """The broker refused or could not be reached: not the scenario's fault, exit status 1."""


class BrokerSink:
    """Publishes on the engine's own MQTT link (gateway/engine/link.py), the write path of
    every simulated stream, driven here without a loop of its own: QoS 1 messages wait for
    room in the window (`window`, at most the broker's Receive Maximum) and QoS 0 bytes for
    room in the socket, so the run goes at the broker's pace and memory stays bounded.
    Retained documents (statuses) always go at QoS 1."""

    def __init__(
        self,
        settings: MqttSettings,
        qos: Literal[0, 1] = 1,
        window: int = 1000,
        *,
        close_timeout: float = 30.0,
        connect_timeout: float = 10.0,
    ) -> None:
        self._qos = qos
        self._close_timeout = close_timeout
        # Messages the broker did not acknowledge (QoS 1) or that never reached the socket
        # (QoS 0) by the end of `close`.
        self.unconfirmed = 0
        endpoint = msgspec.structs.replace(
            endpoint_from_mqtt(settings), client_id_prefix="edgetwin-simulate"
        )
        self._link = EngineLink(endpoint, worker=0, max_inflight=min(window, 65535))
        where = f"cannot connect to {endpoint_url(endpoint)}"
        try:
            self._link.connect()
        except OSError as exc:
            raise BrokerUnreachable(f"{where}: {describe_connect_error(exc)}") from None
        error = self._link.await_connack(connect_timeout)
        if error is not None:
            self._link.close()
            raise BrokerUnreachable(f"{where}: {error}")

    def write(self, t: float, message: Message) -> None:
        topic, payload, retain = message
        link = self._link
        if retain or self._qos == 1:
            deadline = time.monotonic() + _STALL_TIMEOUT
            while not link.publish1(topic, payload, retain):
                self._wait(deadline, "acknowledging messages")
        else:
            if not link.connected:
                self._lost()
            link.publish0(topic, payload, retain)
        if link.backlog_bytes() >= _BACKLOG_BYTES:
            deadline = time.monotonic() + _STALL_TIMEOUT
            while link.backlog_bytes() >= _BACKLOG_BYTES:
                self._wait(deadline, "reading")

    def _wait(self, deadline: float, doing: str) -> None:
        if not self._link.pump(deadline):
            if not self._link.connected:
                self._lost()
            raise ScenarioError(f"the broker stopped {doing} for {_STALL_TIMEOUT:g} s")

    def _lost(self) -> NoReturn:
        raise ScenarioError(f"lost the broker: {self._link.error or 'connection closed'}")

    def close(self) -> None:
        """Wait up to `close_timeout` seconds in all for what is still unwritten or
        unacknowledged; what did not make it is counted in `unconfirmed`."""
        link = self._link
        deadline = time.monotonic() + self._close_timeout
        try:
            while (link.backlog_bytes() or link.qos1_queued()) and link.pump(deadline):
                pass
        finally:
            link.close()  # counts what is still queued or unacknowledged as lost
            self.unconfirmed = link.lost + link.rejected


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
    messages.

    The engine's schedule decides what is due; the clock, instead of following the wall,
    jumps a step of schedule time ahead each time (`_STEP_TICKS` ticks' worth). A step's
    ticks are sorted by (time, stream index), time being `start + phase + k * interval`
    (`Schedule.take_through`); those within `slack` of the step's end wait for the next
    step, since a tick not yet taken may round to an earlier time than they do. The order
    is therefore exact, step size aside: ties go to the lower stream index.
    """
    topics = topics or Topics()
    scenario = scenario.with_start(start)
    generator = scenario.generator(topics, payload=payload)
    schedule = Schedule(Entry(s.index, s.interval, s.phase) for s in generator.streams())
    end = start + duration
    label_topic = generator.label_topic()
    counts = Counts()
    step = _STEP_TICKS / schedule.per_second if schedule.per_second else 1.0
    # A tick's time and `start` plus its schedule time are a few units in the last place of
    # the largest time in play apart (see Schedule.take_through); `slack` is many times that
    # and still far below any interval.
    slack = 64 * math.ulp(abs(start) + duration + step)
    step = max(step, 1024 * slack)
    emit = generator.emit
    write = sink.write
    held: list[tuple[float, int]] = []
    running = True
    while running and (s_next := schedule.next_time()) is not None:
        s_now = s_next + step
        due = held + schedule.take_through(s_now, start)
        due.sort()
        ready = bisect.bisect_left(due, (start + s_now - slack,))
        held = due[ready:]
        for t, index in itertools.islice(due, ready):
            if t >= end:
                running = False
                break
            for message in emit(index, t):
                write(t, message)
                if message[2]:
                    counts.status += 1
                elif message[0] == label_topic:
                    counts.labels += 1
                else:
                    counts.telemetry += 1
        if progress is not None and running and ready:
            progress(due[ready - 1][0] - start, counts.total)
    if progress is not None:
        progress(duration, counts.total)
    return counts


def _open_sink(out: Path | None, broker: MqttSettings | None, qos: Literal[0, 1]) -> Sink:
    if broker is not None:
        return BrokerSink(broker, qos=qos)
    assert out is not None
    return JsonLinesSink(out)


def simulate_command(
    scenario_path: Path | None,
    *,
    devices: int | None,
    start: str | None,
    duration: str,
    out: Path | None,
    broker: MqttSettings | None,
    topics: Topics,
    payload: Literal["edgetwin", "flat"],
    qos: Literal[0, 1],
    quiet: bool = False,
    shard: Shard | None = None,
) -> int:
    """`edgetwin simulate --virtual`: returns the exit code; errors go to stderr."""
    from datetime import UTC, datetime

    from edgetwin.agent.contract import ContractError
    from edgetwin.gateway.progress import Progress
    from edgetwin.gateway.scenario.model import parse_duration, scenario_for

    try:
        scenario = scenario_for(scenario_path, devices).sharded(shard)
        seconds = parse_duration(duration)
        if start is not None:
            moment = datetime.fromisoformat(start)
            begin = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
        elif scenario.origin is not None:
            begin = scenario.origin
        else:
            raise ScenarioError("--start: required when the scenario has no `start`")
        if (out is None) == (broker is None):
            raise ScenarioError("--virtual writes to --out FILE or publishes to a broker: one")
    except (ScenarioError, ContractError, ValueError) as exc:
        print(f"edgetwin simulate: {exc}", file=sys.stderr)
        return 2
    try:
        sink = _open_sink(out, broker, qos)
    except (BrokerUnreachable, OSError) as exc:
        print(f"edgetwin simulate: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, BrokerUnreachable) else 2
    where = str(out) if broker is None else broker.url
    bar = None if quiet else Progress(seconds, what="virtual time")
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
        print(f"edgetwin simulate: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("edgetwin simulate: interrupted", file=sys.stderr)
        return 130
    finally:
        sink.close()
        if bar is not None:
            bar.close()
    elapsed = time.monotonic() - started
    unconfirmed = sink.unconfirmed if isinstance(sink, BrokerSink) else 0
    print(
        f"{counts.total} messages ({counts.telemetry} telemetry, {counts.labels} labels, "
        f"{counts.status} status) from {scenario.device_count()} devices"
        + (f" (shard {shard} of a fleet of {scenario.fleet_size()})" if shard else "")
        + " over "
        f"{seconds:g} virtual seconds to {where} in {elapsed:.1f} s"
        + (f"; {unconfirmed} of them not confirmed sent" if unconfirmed else "")
    )
    return 1 if unconfirmed else 0


def _line_time(line: bytes) -> float:
    # Every line starts {"t":<float>, as JsonLinesSink writes it.
    if not line.startswith(b'{"t":'):
        raise ValueError('a line that does not start with {"t":')
    return float(line[5 : line.index(b",", 5)])


def merge_datasets(shards: Sequence[Path], out: Path) -> int:
    """Merge the `--virtual` files of a fleet's shards, given in shard order, into `out`:
    byte for byte the file one process writes for the whole fleet. Lines are taken in order of
    `t` (every bit of it: JsonLinesSink), ties to the earlier shard, whose streams come first in
    the fleet (`Shard`); one file's lines keep their order. Returns the lines written."""
    files = [path.open("rb") for path in shards]
    written = 0
    try:
        with out.open("wb") as sink:
            for line in heapq.merge(*files, key=_line_time):
                # A file's last line may lack its newline.
                sink.write(line if line.endswith(b"\n") else line + b"\n")
                written += 1
    finally:
        for file in files:
            file.close()
    return written


def merge_command(shards: Sequence[Path], out: Path) -> int:
    """`edgetwin merge`: exit code 0, or 2 with one line on stderr."""
    if out.resolve() in {path.resolve() for path in shards}:
        print("edgetwin merge: --out is one of the files to merge", file=sys.stderr)
        return 2
    try:
        lines = merge_datasets(shards, out)
    except (OSError, ValueError) as exc:
        print(f"edgetwin merge: {exc}", file=sys.stderr)
        return 2
    print(f"{lines} lines from {len(shards)} files to {out}")
    return 0
