"""Benchmark of record and replay (gateway/recording.py): readings per second.

Run: ``.venv/bin/python bench/recording_bench.py`` (``--help`` for options). Prints a table;
asserts nothing; bounded in time (well under a minute by default).

1. Live recording: N realistic telemetry messages (~250 bytes of JSON) published at QoS 1 by a
   paho-mqtt client to a private mosquitto on 127.0.0.1, received by a `LiveRecorder` writing
   CSV, then JSONL; beside it, a bare `MqttLink` subscriber that only counts is the baseline.
   Rate = N / (time from the first publish to the last message received).
   mosquitto's per-client queue is unbounded here, so that nothing is dropped.
2. Files: `read_readings` of the two files written in step 1.
3. Replay: the JSONL recording as engine streams (`Replayer`), every tick of one pass taken
   from the engine's schedule at once and handed to the replay's generator, whose messages are
   dropped: the cost of the schedule, shifting and re-encoding readings, without the network.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgetwin.agent.config import MqttSettings
from edgetwin.agent.contract import Source, Telemetry, Topics, Value
from edgetwin.agent.mqtt import Message, MqttLink
from edgetwin.gateway.broker import MosquittoBroker
from edgetwin.gateway.engine.schedule import Entry, Schedule
from edgetwin.gateway.recording import LiveRecorder, Recorder, Replayer, read_readings

TOPICS = Topics()


def payloads(n: int) -> list[tuple[str, bytes]]:
    start = time.time()
    out = []
    for seq in range(n):
        device = f"dev-{seq % 100:03d}"
        reading = Telemetry(
            device=device,
            sensor="env",
            ts=start + seq * 0.01,
            seq=seq // 100,
            source=Source.SIMULATED,
            values={
                "temperature": Value(value=21.5 + (seq % 97) / 10, unit="°C"),
                "humidity": Value(value=40.0 + (seq % 53) / 10, unit="%RH"),
                "pressure": Value(value=1013.25 - (seq % 31) / 10, unit="hPa"),
            },
        )
        out.append((TOPICS.telemetry(device, "env"), reading.encode()))
    return out


def pump(broker: MosquittoBroker, messages: list[tuple[str, bytes]]) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.max_inflight_messages_set(100)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(30)
    finally:
        client.disconnect()
        client.loop_stop()


def timed_live(
    broker: MosquittoBroker, messages: list[tuple[str, bytes]], out: Path | None
) -> float:
    settings = MqttSettings(host=broker.host, port=broker.port, protocol="3.1.1")
    n = len(messages)
    if out is None:
        seen = 0
        done = threading.Event()

        def count(_: Message) -> None:
            nonlocal seen
            seen += 1
            if seen >= n:
                done.set()

        link = MqttLink(settings, on_message=count)
        link.subscribe([TOPICS.all_telemetry()], qos=1)
        link.start()
        try:
            assert link.wait_subscribed(10)
            began = time.perf_counter()
            pump(broker, messages)
            assert done.wait(60), f"only {seen} of {n} received"
            return n / (time.perf_counter() - began)
        finally:
            link.close()
    with LiveRecorder(settings, Recorder(out, overwrite=True), count=n) as live:
        assert live.wait_ready(10)
        began = time.perf_counter()
        pump(broker, messages)
        assert live.done.wait(60), f"only {live.recorder.count} of {n} recorded"
        return n / (time.perf_counter() - began)


def replay_rate(replayer: Replayer) -> float:
    """Readings a second of CPU through the engine's schedule and the replay's generator."""
    schedule = Schedule(Entry(s.index, s.interval, s.phase) for s in replayer.streams())
    generator = replayer.generator()
    longest = max(s.interval for s in replayer.streams())
    began = time.perf_counter()
    ticks = schedule.take_through(replayer.period + longest, 1_000_000_000.0)
    ticks.sort()
    emit = generator.emit
    emitted = sum(len(emit(index, t)) for t, index in ticks)
    elapsed = time.perf_counter() - began
    assert emitted == len(replayer), f"{emitted} of {len(replayer)} readings"
    return emitted / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=50_000)
    args = parser.parse_args()
    messages = payloads(args.messages)
    size = sum(len(p) for _, p in messages) / len(messages)
    rows: list[tuple[str, str]] = []
    # The publisher runs ahead of a subscriber; mosquitto's default queue (1,000 messages per
    # client) would drop the rest, and the figures would count losses as speed.
    unbounded = ["max_queued_messages 0"]
    with MosquittoBroker(extra_config=unbounded) as broker, tempfile.TemporaryDirectory() as tmp:
        baseline = timed_live(broker, messages, None)
        rows.append(("live, bare MqttLink subscriber (baseline)", f"{baseline:,.0f} msgs/s"))
        for suffix in (".csv", ".jsonl"):
            path = Path(tmp) / f"rec{suffix}"
            rate = timed_live(broker, messages, path)
            rows.append(
                (f"live, LiveRecorder to {suffix}", f"{rate:,.0f} msgs/s ({rate / baseline:.2f} ×)")
            )
        for suffix in (".csv", ".jsonl"):
            path = Path(tmp) / f"rec{suffix}"
            began = time.perf_counter()
            readings = read_readings(path)
            rate = len(readings) / (time.perf_counter() - began)
            per_row = path.stat().st_size / len(readings)
            rows.append(
                (f"read_readings {suffix}", f"{rate:,.0f} readings/s ({per_row:.0f} B/row)")
            )
        rate = replay_rate(Replayer(readings))
        rows.append(
            ("replay generator on the engine's schedule, no network", f"{rate:,.0f} readings/s")
        )
    print(f"{args.messages:,} readings of {size:.0f} bytes, QoS 1, mosquitto on 127.0.0.1")
    width = max(len(name) for name, _ in rows)
    for name, figure in rows:
        print(f"{name:<{width}}  {figure}")


if __name__ == "__main__":
    main()
