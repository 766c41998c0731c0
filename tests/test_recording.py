"""Record and replay (gateway/recording.py): files, timelines, and live streams on a real broker."""

from __future__ import annotations

import csv
import itertools
import math
import pickle
import random
import signal
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from edgetwin.agent.config import MqttSettings
from edgetwin.agent.contract import (
    Anomaly,
    FlatReading,
    SensorBackend,
    SensorSettings,
    Source,
    Telemetry,
    Topics,
    Value,
)
from edgetwin.cli import main as edgetwin_main
from edgetwin.gateway.engine import EngineController, EngineInputError, EngineSettings
from edgetwin.gateway.engine.link import Endpoint, endpoint_from_mqtt
from edgetwin.gateway.engine.schedule import Entry, Schedule, Timeline
from edgetwin.gateway.recording import (
    LiveRecorder,
    RecordedReading,
    Recorder,
    Replayer,
    read_readings,
)
from edgetwin.gateway.standins import StandIns
from edgetwin.hardware.recordings import RecordingError
from edgetwin.hardware.signals import Replay, replay_csv
from edgetwin.testing.broker import Broker
from edgetwin.testing.capture import Capture, connect_client, disconnect_client
from edgetwin.testing.process import start_edgetwin
from tests.fleet_helpers import mqtt_settings

T0 = 1_790_000_000.0  # a fixed recorded epoch, far from now, so shifted times stand out


def telemetry(
    seq: int,
    ts: float,
    *,
    device: str = "dev-1",
    sensor: str = "env",
    anomaly: Anomaly | None = None,
    **values: float,
) -> Telemetry:
    units = {"temperature": "°C", "humidity": "%RH", "pressure": "hPa", "illuminance": "lx"}
    return Telemetry(
        device=device,
        sensor=sensor,
        ts=ts,
        seq=seq,
        source=Source.REAL,
        values={name: Value(value=v, unit=units[name]) for name, v in values.items()},
        anomaly=anomaly,
    )


def sample_stream() -> list[Telemetry]:
    """Two streams, a quantity that appears late (widens a CSV), an anomaly, a seq gap."""
    spike = Anomaly(type="spike", id="a-1", start=T0 + 2.0, end=T0 + 3.0)
    return [
        telemetry(7, T0, temperature=21.25, humidity=40.125),
        telemetry(8, T0 + 1.0, temperature=21.5, humidity=40.0),
        telemetry(3, T0 + 1.5, sensor="light", illuminance=312.0),
        telemetry(9, T0 + 2.0, temperature=35.1, humidity=40.5, anomaly=spike),
        telemetry(11, T0 + 4.0, temperature=0.1 + 0.2, humidity=1e-7, pressure=1013.25),
    ]


class FakeClock:
    """Virtual time: `wait` moves the clock instead of sleeping."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.now

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        self.now += seconds
        return False


def topic_of(payload: Telemetry | FlatReading) -> str:
    if isinstance(payload, Telemetry):
        return Topics().telemetry(payload.device, payload.sensor)
    return "sensors/data"


def write(path: Path, payloads: Sequence[Telemetry | FlatReading]) -> Path:
    with Recorder(path) as recorder:
        for i, payload in enumerate(payloads):
            recorder.add(RecordedReading(payload, topic_of(payload), T0 + 100 + i))
    return path


# -- files ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_recording_reads_back_exactly(tmp_path: Path, suffix: str) -> None:
    flat = FlatReading(device_id="device_000", timestamp=T0 + 5.0, temperature=22.5, humidity=41.0)
    payloads: list[Telemetry | FlatReading] = [*sample_stream(), flat]
    path = write(tmp_path / f"rec{suffix}", payloads)

    readings = read_readings(path)

    assert [r.payload for r in readings] == payloads
    if suffix == ".jsonl":
        assert [r.topic for r in readings] == [topic_of(p) for p in payloads]
        assert [r.received for r in readings] == [T0 + 100 + i for i in range(len(payloads))]
    else:
        assert {r.topic for r in readings} == {None}


def test_csv_columns_name_quantities_with_units_and_grow_as_they_appear(tmp_path: Path) -> None:
    path = write(tmp_path / "rec.csv", list(sample_stream()))
    with path.open(encoding="utf-8", newline="") as file:
        rows = list(csv.reader(file))
    assert rows[0] == [
        "device",
        "sensor",
        "ts",
        "seq",
        "source",
        "temperature[°C]",
        "humidity[%RH]",
        "illuminance[lx]",
        "pressure[hPa]",
        "anomaly",
        "anomaly_id",
        "anomaly_start",
        "anomaly_end",
    ]
    assert all(len(row) == len(rows[0]) for row in rows)
    assert rows[1][:7] == ["dev-1", "env", repr(T0), "7", "real", "21.25", "40.125"]
    assert rows[4][-4:] == ["spike", "a-1", repr(T0 + 2.0), repr(T0 + 3.0)]
    assert not (tmp_path / "rec.csv.tmp").exists()


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_rows_reach_the_file_as_they_come_not_at_close(tmp_path: Path, suffix: str) -> None:
    clock = FakeClock(T0)
    path = tmp_path / f"rec{suffix}"
    recorder = Recorder(path, flush_rows=3, flush_interval=10.0, clock=clock)
    stream = sample_stream()
    try:
        recorder.add(RecordedReading(stream[0]))
        recorder.add(RecordedReading(stream[1]))
        before = path.read_bytes()
        recorder.add(RecordedReading(stream[2]))  # third row: a flush by count
        assert len(read_readings(path)) == 3
        recorder.add(RecordedReading(stream[3]))
        clock.now += 10.0
        recorder.flush_if_due()  # an idle stream: a flush by time
        assert len(read_readings(path)) == 4
    finally:
        recorder.close()
    assert b"21.5" not in before  # the second row was still buffered


def test_recorder_refuses_to_overwrite_unless_told(tmp_path: Path) -> None:
    path = write(tmp_path / "rec.jsonl", sample_stream()[:1])
    with pytest.raises(RecordingError, match="exists"):
        Recorder(path)
    with Recorder(path, overwrite=True) as recorder:
        recorder.add(RecordedReading(sample_stream()[1]))
    assert [r.payload.seq for r in read_readings(path)] == [8]  # type: ignore[union-attr]


def test_messages_that_are_not_readings_are_skipped_and_counted(tmp_path: Path) -> None:
    with Recorder(tmp_path / "rec.jsonl") as recorder:
        assert recorder.add_message("t", sample_stream()[0].encode())
        assert not recorder.add_message("t", b"not json")
        assert not recorder.add_message("t", b'{"device": "dev-1", "state": "online"}')
        assert not recorder.add_message("t", b"[1, 2]")
    assert (recorder.count, recorder.skipped) == (1, 3)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("rec.txt", "x", "unknown recording format '.txt'"),
        ("rec.csv", "", "empty file"),
        ("rec.csv", "timestamp,temperature\n1,2\n", "not an edgetwin recording"),
        (
            "rec.csv",
            "device,sensor,ts,seq,source,temperature,anomaly,anomaly_id,anomaly_start,anomaly_end\n",
            "column 'temperature' is not a quantity",
        ),
        (
            "rec.csv",
            "device,sensor,ts,seq,source,t[°C],anomaly,anomaly_id,anomaly_start,anomaly_end\n"
            "dev-1,env,1,0,real,21,,,,\n"
            "dev-1,env,2,x,real,21,,,,\n",
            "line 3: invalid literal for int",
        ),
        (
            "rec.csv",
            "device,sensor,ts,seq,source,t[°C],anomaly,anomaly_id,anomaly_start,anomaly_end\n"
            "Bad/Device,env,1,0,real,21,,,,\n",
            "line 2: invalid Telemetry payload",
        ),
        (
            "rec.csv",
            "device,sensor,ts,seq,source,t[°C],anomaly,anomaly_id,anomaly_start,anomaly_end\n",
            "no readings",
        ),
        ("rec.jsonl", '{"topic": "t", "received": 1, "payload": {"v": 1}}\n', "line 1: invalid"),
        ("rec.jsonl", "\n{not json\n", "line 2"),
    ],
)
def test_bad_files_are_refused_with_the_reason(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(RecordingError, match=message):
        read_readings(path)


def test_a_missing_file_is_a_recording_error(tmp_path: Path) -> None:
    with pytest.raises(RecordingError, match="cannot read"):
        read_readings(tmp_path / "absent.csv")


# -- replay on the engine's schedule (virtual time) -----------------------------------------------


ORIGIN = 2_000_000_000.0


def engine_run(
    replayer: Replayer,
    seconds: float,
    *,
    origin: float = ORIGIN,
    step: float = 0.005,
    limit: int | None = None,
    starts: list[float] | None = None,
) -> list[tuple[float, str, bytes]]:
    """What an engine worker publishes for `replayer` over `seconds` of wall time from
    `origin`: the engine's Schedule and Timeline at a rate of the replay's speed, taking what
    is due every `step` seconds (the worker's tick) with the worker's coalescing, the
    generator's messages as (the tick's wall time, topic, payload). No thread, no broker.
    `starts` receives the start the generator took from its first tick."""
    schedule = Schedule(Entry(s.index, s.interval, s.phase) for s in replayer.streams())
    timeline = Timeline(origin, replayer.speed)
    generator = replayer.generator(Topics())
    if starts is not None:
        starts.append(math.nan)
    out: list[tuple[float, str, bytes]] = []
    for k in range(int(seconds / step) + 1):
        due, _ = schedule.take_due(
            timeline.schedule_time(origin + k * step), skip_before=-math.inf, limit=1_000_000
        )
        for index, s in due:
            t = timeline.wall_time(s)
            out.extend((t, topic, payload) for topic, payload, _ in generator.emit(index, t))
            if starts is not None and generator.start is not None:
                starts[-1] = generator.start
            if limit is not None and len(out) >= limit:
                return out[:limit]
    return out


def test_replay_shifts_time_to_the_start_and_scales_gaps(tmp_path: Path) -> None:
    readings = read_readings(write(tmp_path / "rec.jsonl", sample_stream()))
    replayer = Replayer(readings, speed=4.0)

    sent = engine_run(replayer, 2.0)

    out = [Telemetry.decode(p) for _, _, p in sent]
    assert len(out) == 5
    # The first reading falls on the run's origin, the others at their gaps over the speed.
    assert [m.ts for m in out] == [ORIGIN + (r.ts - T0) / 4.0 for r in readings]
    assert [t for t, _, _ in sent] == pytest.approx([m.ts for m in out], abs=1e-6)
    assert sent[-1][0] - ORIGIN == pytest.approx(4.0 / 4.0)  # the recording spans 4 s
    assert [m.seq for m in out] == [7, 8, 3, 9, 11]
    assert [m.values for m in out] == [r.payload.values for r in readings]  # type: ignore[union-attr]
    assert {m.source for m in out} == {Source.SIMULATED}
    assert out[3].anomaly == Anomaly(type="spike", id="a-1", start=ORIGIN + 0.5, end=ORIGIN + 0.75)
    assert [t for _, t, _ in sent] == [r.topic for r in readings]  # recorded topics kept


def test_replay_loops_with_seq_counting_on() -> None:
    readings = [
        RecordedReading(telemetry(seq, T0 + seq, temperature=float(seq))) for seq in range(3)
    ]
    replayer = Replayer(readings, loop=True, device="replayed")

    sent = [Telemetry.decode(p) for _, _, p in engine_run(replayer, 10.0, limit=7)]

    assert [m.seq for m in sent] == list(range(7))
    assert [m.ts - sent[0].ts for m in sent] == [float(i) for i in range(7)]  # one period: 3 s
    assert {m.device for m in sent} == {"replayed"}


def jittery_recording() -> list[RecordedReading]:
    """Two devices: `a/env` every second with up to 40 ms of jitter, a 10 s outage, and one
    reading recorded twice; `a/light` every 5 s, on another phase; `b/env` every 2 s."""
    rng = random.Random(7)
    readings = []
    for k in range(60):
        if 20 <= k < 30:
            continue  # the outage: a gap that must stay one
        ts = T0 + k + rng.uniform(0.0, 0.04)
        readings.append(RecordedReading(telemetry(k, ts, device="a", temperature=float(k))))
        if k == 40:
            readings.append(RecordedReading(telemetry(k, ts, device="a", temperature=float(k))))
    for k in range(12):
        reading = telemetry(k, T0 + 2.5 + 5 * k, device="a", sensor="light", illuminance=1.0)
        readings.append(RecordedReading(reading))
    for k in range(30):
        ts = T0 + 0.7 + 2 * k
        readings.append(RecordedReading(telemetry(k, ts, device="b", humidity=float(k))))
    return readings


@pytest.mark.parametrize(
    ("speed", "step", "loop"),
    [
        (1.0, 0.005, False),
        (10.0, 0.005, True),
        (60.0, 0.5, False),  # a worker far behind its ticks: most are coalesced
    ],
)
def test_the_engine_sends_each_reading_once_on_its_streams_first_tick_after_it_is_due(
    speed: float, step: float, loop: bool
) -> None:
    replayer = Replayer(jittery_recording(), speed=speed, loop=loop)
    passes = 3 if loop else 1
    longest = max(s.interval for s in replayer.streams())
    starts: list[float] = []
    sent = engine_run(
        replayer, (passes * replayer.period + longest) / speed + step, step=step, starts=starts
    )
    # The replay starts on the first tick the engine serves: the run's origin, unless that
    # tick was coalesced into a later one (the worker far behind from the start).
    start = starts[0]
    assert start == ORIGIN if step == 0.005 else ORIGIN <= start < ORIGIN + step

    # The very messages of the replay's timeline, bytes and all: none lost, none twice.
    timeline = replayer.schedule(start)
    expected = list(itertools.islice(timeline, (passes + 1) * len(replayer) if loop else None))
    due = {(m.topic, m.payload): m.due for m in expected}
    if loop:  # up to the end of the passes counted; later ones have begun
        end = start + passes * replayer.period / speed
        expected = [m for m in expected if m.due < end]
        sent = [m for m in sent if due[(m[1], m[2])] < end]
    assert sorted((m.topic, m.payload) for m in expected) == sorted((t, p) for _, t, p in sent)
    streams = {s.device + "/" + s.sensor: s for s in replayer.streams()}
    for stream in streams.values():
        ours = [m for m in sent if f"/{stream.device}/telemetry/{stream.sensor}" in m[1]]
        mine = [m for m in expected if f"/{stream.device}/telemetry/{stream.sensor}" in m.topic]
        # Each stream's readings in their recorded order (the duplicate right after itself).
        assert [p for _, _, p in ours] == [m.payload for m in mine]
        for tick, topic, payload in ours:
            lateness = tick - due[(topic, payload)]
            assert lateness >= -1e-5, "sent before it was due"
            # The stream's first tick served at or after it is due: the next tick, or, with
            # ticks coalesced, the worker's next pass.
            assert lateness <= stream.interval / speed + (step if step > 0.005 else 1e-5)
    if step == 0.005 and not loop:
        # A regular stream with jitter (40 ms) goes out within about twice its jitter (the
        # median spacing, its grid, is a little off a second) and the worker's tick, not an
        # interval (1 s) late.
        a_env = [m for m in sent if "/a/telemetry/env" in m[1]]
        assert max(tick - due[(t, p)] for tick, t, p in a_env) <= 0.1 / speed + step
    # The outage stays a gap on the wire.
    a_times = sorted(Telemetry.decode(p).ts for _, t, p in sent if "/a/telemetry/env" in t)
    gaps = [b - a for a, b in itertools.pairwise(a_times)]
    assert max(gaps) == pytest.approx(11.0 / speed, abs=0.05 / speed)


def test_replay_picks_and_renames_devices() -> None:
    readings = jittery_recording()
    only_b = Replayer(readings, only="b", device="bee")
    sent = [Telemetry.decode(p) for _, _, p in engine_run(only_b, 60.0, step=0.5)]
    assert len(sent) == 30
    assert {(m.device, m.sensor) for m in sent} == {("bee", "env")}
    assert [m.seq for m in sent] == list(range(30))
    assert only_b.device_count() == 1
    assert [(s.device, s.sensor) for s in only_b.streams()] == [("bee", "env")]
    both = Replayer(readings)
    assert both.device_count() == 2
    assert [(s.device, s.sensor) for s in both.streams()] == [
        ("a", "env"),
        ("b", "env"),
        ("a", "light"),
    ]
    assert both.resized(2) is both
    with pytest.raises(RecordingError, match="2 devices it recorded"):
        both.resized(3)


def test_a_replay_crosses_to_a_worker_process_intact() -> None:
    # Engine workers are spawned processes: the scenario they get is pickled.
    replayer = Replayer(jittery_recording(), speed=5.0, only="a", loop=True)
    copy = pickle.loads(pickle.dumps(replayer))
    assert engine_run(copy, 30.0) == engine_run(replayer, 30.0)


@pytest.mark.parametrize("rate", [0.0, -1.0, math.inf, math.nan])
def test_the_engine_refuses_a_starting_rate_that_is_no_speed(rate: float) -> None:
    engine = EngineController(Endpoint(host="127.0.0.1", port=1))
    replayer = Replayer([RecordedReading(telemetry(0, T0, temperature=1.0))])
    with pytest.raises(EngineInputError, match="rate must be a positive number"):
        engine.start(replayer, workers=0, rate=rate)
    assert engine.state == "stopped"


def test_replay_refuses_what_it_cannot_play() -> None:
    two_devices = [
        RecordedReading(telemetry(0, T0, device="a", temperature=1.0)),
        RecordedReading(telemetry(0, T0 + 1, device="b", temperature=1.0)),
    ]
    with pytest.raises(RecordingError, match="2 devices"):
        Replayer(two_devices, device="x")
    with pytest.raises(RecordingError, match="no device 'c'"):
        Replayer(two_devices, only="c")
    with pytest.raises(RecordingError, match="speed"):
        Replayer(two_devices, speed=0)
    with pytest.raises(RecordingError, match="loop"):
        Replayer(two_devices[:1], loop=True)
    flat = [RecordedReading(FlatReading(device_id="d", timestamp=T0, temperature=1, humidity=2))]
    with pytest.raises(RecordingError, match="template"):
        Replayer(flat)
    replayer = Replayer(flat, topics=Topics(telemetry_template="sensors/data"))
    sent = engine_run(replayer, 1.0)
    assert [t for _, t, _ in sent] == ["sensors/data"]
    assert FlatReading.decode(sent[0][2]).timestamp == ORIGIN


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_recording_is_a_signal_source(tmp_path: Path, suffix: str) -> None:
    duplicate = telemetry(9, T0 + 2.0, temperature=99.0, humidity=1.0)
    path = write(tmp_path / f"rec{suffix}", [*sample_stream(), duplicate])
    with pytest.raises(ValueError, match="streams found: dev-1/env, dev-1/light"):
        Replay.from_csv(path, "temperature")

    models = replay_csv(path, device="dev-1", sensor="env", start=0.0)

    assert sorted(models) == ["humidity", "pressure", "temperature"]  # no illuminance: not env's
    temperature = models["temperature"]
    assert [temperature.sample(t) for t in (0.0, 1.5, 2.0, 4.0)] == [21.25, 21.5, 35.1, 0.1 + 0.2]
    assert math.isnan(models["pressure"].sample(1.0))  # not measured then
    light = Replay.from_csv(path, "illuminance", sensor="light", start=0.0)
    assert light.sample(0.0) == 312.0


# -- live, on a real broker ----------------------------------------------------------------------


def settings(broker: Broker) -> MqttSettings:
    return mqtt_settings(broker)


@pytest.mark.integration
def test_record_a_live_stream_to_csv_and_jsonl(broker: Broker, tmp_path: Path) -> None:
    stream = sample_stream()
    topics = Topics()
    with (
        LiveRecorder(settings(broker), Recorder(tmp_path / "rec.csv"), count=5) as as_csv,
        LiveRecorder(settings(broker), Recorder(tmp_path / "rec.jsonl"), count=5) as as_jsonl,
    ):
        assert as_csv.wait_ready(10)
        assert as_jsonl.wait_ready(10)
        client = connect_client(broker)
        try:
            # Not readings: a status on a telemetry topic is skipped, an agent status unseen.
            client.publish(topics.telemetry("dev-1", "env"), b'{"state": "online"}', qos=1)
            client.publish(topics.status("dev-1"), b"{}", qos=1)
            for payload in stream:
                client.publish(
                    topics.telemetry(payload.device, payload.sensor), payload.encode(), qos=1
                )
            assert as_csv.done.wait(10)
            assert as_jsonl.done.wait(10)
        finally:
            disconnect_client(client)

    for name in ("rec.csv", "rec.jsonl"):
        assert [r.payload for r in read_readings(tmp_path / name)] == stream
    jsonl = read_readings(tmp_path / "rec.jsonl")
    assert [r.topic for r in jsonl] == [topics.telemetry(p.device, p.sensor) for p in stream]
    assert all(r.received is not None and r.received > T0 for r in jsonl)
    assert as_jsonl.recorder.skipped == 1


@pytest.mark.integration
def test_replay_reproduces_the_file_on_the_wire(broker: Broker, tmp_path: Path) -> None:
    source = write(tmp_path / "source.csv", sample_stream())
    readings = read_readings(source)
    speed = 8.0
    endpoint = Endpoint(host=broker.host, port=broker.port, protocol=broker.protocol)
    engine = EngineController(endpoint, EngineSettings(workers=0))
    with LiveRecorder(settings(broker), Recorder(tmp_path / "replayed.jsonl"), count=5) as live:
        assert live.wait_ready(10)
        before = time.time()
        engine.start(Replayer(readings, speed=speed), qos=1, rate=speed)
        try:
            assert live.done.wait(10)
            after = time.time()
        finally:
            engine.close()
    assert engine.stats().acked == 5

    replayed = read_readings(tmp_path / "replayed.jsonl")
    original = [r.payload for r in readings]
    out = [r.payload for r in replayed]
    assert all(isinstance(p, Telemetry) for p in out)
    out_t = [p for p in out if isinstance(p, Telemetry)]
    orig_t = [p for p in original if isinstance(p, Telemetry)]
    assert [(p.device, p.sensor, p.seq, p.values) for p in out_t] == [
        (p.device, p.sensor, p.seq, p.values) for p in orig_t
    ]
    assert {p.source for p in out_t} == {Source.SIMULATED}
    assert before <= out_t[0].ts <= after
    for got, want in zip(out_t, orig_t, strict=True):
        assert got.ts - out_t[0].ts == pytest.approx((want.ts - T0) / speed, abs=1e-6)
    # Each went out once due, at its stream's tick: within the worker's 5 ms tick of it.
    for got, record in zip(out_t, replayed, strict=True):
        assert record.received is not None
        assert -0.001 <= record.received - got.ts <= 0.1
    # CSV keeps no topics: the replay builds them from the contract.
    assert [r.topic for r in replayed] == [Topics().telemetry(p.device, p.sensor) for p in orig_t]


@pytest.mark.integration
def test_the_cli_records_until_stopped_and_replays(broker: Broker, tmp_path: Path) -> None:
    source = write(tmp_path / "source.jsonl", sample_stream())
    out = tmp_path / "cli.csv"
    address = f"{broker.host}:{broker.port}"
    process = start_edgetwin(["record", "--broker", address, "--out", str(out)])
    try:
        assert process.stderr is not None
        # Printed once the broker has granted the subscription.
        assert process.stderr.readline().startswith(b"recording edgetwin/+/telemetry/+")
        status = edgetwin_main(["replay", str(source), "--broker", address, "--speed", "20"])
        assert status == 0
        deadline = time.monotonic() + 10
        while _rows(out) < 5:  # rows are flushed as they come, while the recorder runs
            assert time.monotonic() < deadline, "recorded rows never reached the file"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=15)
    assert process.returncode == 0, stderr.decode()
    assert stdout.decode().startswith(f"recorded 5 readings to {out}")
    assert [r.payload.values for r in read_readings(out)] == [  # type: ignore[union-attr]
        p.values for p in sample_stream()
    ]


@pytest.mark.integration
def test_the_cli_loops_for_its_duration_and_counts_what_reached_the_socket(
    broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write(tmp_path / "source.jsonl", sample_stream())
    address = f"{broker.host}:{broker.port}"
    args = ["--speed", "10", "--loop", "--duration", "1.2", "--device", "replayed", "--qos", "0"]
    with Capture(broker, "edgetwin/replayed/telemetry/+") as sub:
        began = time.monotonic()
        assert edgetwin_main(["replay", str(source), "--broker", address, *args]) == 0
        took = time.monotonic() - began
        printed = capsys.readouterr().out
        sent = int(printed.removeprefix("replayed ").split(" ")[0])
        received = sub.wait_for("edgetwin/replayed/telemetry/+", count=sent, timeout=10)
    assert printed == f"replayed {sent} readings\n"
    assert 1.2 <= took < 5
    # A pass of the recording (4.75 s with its median gap) takes 0.475 s at 10x: two passes
    # and a half in 1.2 s, seq counting on from pass to pass, five readings a pass.
    readings = [Telemetry.decode(m.payload) for m in received]
    assert len(readings) == sent
    assert 10 <= sent <= 15
    env = [r.seq for r in readings if r.sensor == "env"]
    assert env[:8] == [7, 8, 9, 11, 12, 13, 14, 16]  # seq steps by 5 (7..11) each pass
    assert {r.device for r in readings} == {"replayed"}


def test_the_cli_names_a_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("nonsense\n", encoding="utf-8")
    assert edgetwin_main(["replay", str(path), "--broker", "127.0.0.1:1"]) == 2
    assert "not an edgetwin recording" in capsys.readouterr().err


def _rows(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open(encoding="utf-8", newline="") as file:
        return max(0, sum(1 for _ in csv.reader(file)) - 1)


@pytest.mark.integration
def test_a_recorder_that_cannot_write_stops_with_the_reason(broker: Broker, tmp_path: Path) -> None:
    recorder = Recorder(tmp_path / "rec.jsonl")
    with LiveRecorder(settings(broker), recorder) as live:
        assert live.wait_ready(10)
        recorder.close()  # what a vanished disk looks like from here: every write fails
        client = connect_client(broker)
        try:
            payload = sample_stream()[0]
            client.publish(Topics().telemetry(payload.device, payload.sensor), payload.encode())
            assert live.done.wait(10)
        finally:
            disconnect_client(client)
    assert live.error is not None
    assert "is closed" in str(live.error)


def test_the_cli_refuses_bad_bounds(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = str(tmp_path / "x.csv")
    assert edgetwin_main(["record", "--broker", "127.0.0.1:1", "--out", out, "--count", "0"]) == 2
    assert "--count must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


@pytest.mark.integration
def test_record_the_gateway_simulation(broker: Broker, tmp_path: Path) -> None:
    standins = StandIns(EngineController(endpoint_from_mqtt(settings(broker))))
    env = SensorSettings(
        driver="bme280", address=0x76, interval=0.02, backend=SensorBackend.EMULATED
    )
    with LiveRecorder(settings(broker), Recorder(tmp_path / "sim.csv"), count=10) as live:
        assert live.wait_ready(10)
        standins.start()
        try:
            standins.serve("sim-1", {"env": env})
            assert live.done.wait(10)
        finally:
            standins.stop()

    readings = read_readings(tmp_path / "sim.csv")
    assert len(readings) == 10
    assert {(r.device, r.sensor) for r in readings} == {("sim-1", "env")}
    payloads = [r.payload for r in readings if isinstance(r.payload, Telemetry)]
    assert [p.seq for p in payloads] == list(range(payloads[0].seq, payloads[0].seq + 10))
    assert {p.source for p in payloads} == {Source.SIMULATED}
    assert {name: v.unit for name, v in payloads[0].values.items()} == {
        "temperature": "°C",
        "humidity": "%RH",
        "pressure": "hPa",
    }
