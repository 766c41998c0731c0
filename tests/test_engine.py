"""The scale engine's worker processes against a real mosquitto: delivery, rate, pause, resume,
rate change, resize, stop, QoS 1, and a stalled broker.

Timing is checked on the data, not the clock: each reading's `ts` is its deadline, so the
spacing of one device's readings shows the rate the engine ran at.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgetwin.gateway.engine import Endpoint, EngineController, EngineSettings, EngineStats
from edgetwin.testing.broker import Broker
from edgetwin.testing.capture import Capture, Message
from edgetwin.testing.waiting import poll
from tests.engine_helpers import TestScenario

pytestmark = pytest.mark.integration

TELEMETRY = "edgetwin/+/telemetry/+"


def endpoint(broker: Broker) -> Endpoint:
    return Endpoint(host=broker.host, port=broker.port, protocol=broker.protocol, keepalive=2)


@pytest.fixture
def engine(broker: Broker) -> Iterator[EngineController]:
    controller = EngineController(endpoint(broker), EngineSettings(workers=2, stats_interval=0.2))
    yield controller
    controller.close()


def by_device(messages: list[Message]) -> dict[str, list[dict[str, object]]]:
    found: dict[str, list[dict[str, object]]] = {}
    for m in messages:
        body = json.loads(m.payload)
        found.setdefault(str(body["device"]), []).append(body)
    return found


def spacing(readings: list[dict[str, object]]) -> list[float]:
    ts = [float(r["ts"]) for r in readings]  # type: ignore[arg-type]
    return [round(b - a, 6) for a, b in itertools.pairwise(ts)]


def test_workers_deliver_every_device_at_its_interval(engine: EngineController) -> None:
    with Capture(engine_broker(engine), TELEMETRY, qos=0) as sub:
        stats = engine.start(TestScenario(devices=12, interval=0.1))
        assert stats.state == "running"
        assert stats.workers == 2
        sub.wait_for(TELEMETRY, timeout=10, count=12 * 6)
        readings = by_device(sub.messages())
    assert sorted(readings) == [f"device_{i:03d}" for i in range(12)]
    for device, rows in readings.items():
        assert [r["seq"] for r in rows] == list(range(len(rows))), device
        assert all(gap == pytest.approx(0.1, abs=1e-6) for gap in spacing(rows)), device
    stats = engine.refresh()
    assert stats.streams == 12
    assert stats.target_per_s == pytest.approx(120.0)
    assert {w.streams for w in stats.per_worker} != {0}  # the fleet is split over both
    assert sum(w.streams for w in stats.per_worker) == 12
    assert stats.late_skipped == stats.backlog_skipped == 0
    assert stats.lateness_p99_ms is not None


def engine_broker(engine: EngineController) -> Endpoint:
    return engine.endpoint


def test_pause_resume_rate_resize_and_stop_take_effect(engine: EngineController) -> None:
    with Capture(engine_broker(engine), TELEMETRY, qos=0) as sub:
        engine.start(TestScenario(devices=6, interval=0.2))
        sub.wait_for("edgetwin/device_000/telemetry/env", timeout=10, count=2)

        engine.pause()
        paused_at = time.time()
        engine.refresh()  # every worker has taken the pause by now (its pipe is in order)
        time.sleep(0.6)  # the length of the pause under test, not a wait for sync
        engine.resume()
        resumed_at = time.time()
        sub.wait_for(lambda m: json.loads(m.payload)["ts"] > resumed_at, timeout=10, count=6)
        ts = [json.loads(m.payload)["ts"] for m in sub.messages()]
        # Deadlines skip the paused span: the schedule stood still.
        assert not [t for t in ts if paused_at + 0.05 < t < resumed_at - 0.05]

        engine.set_rate(2.0)
        changed = time.time()
        sub.wait_for(
            lambda m: (
                json.loads(m.payload)["device"] == "device_001"
                and json.loads(m.payload)["ts"] > changed
            ),
            timeout=10,
            count=3,
        )
        rows = [r for r in by_device(sub.messages())["device_001"] if float(str(r["ts"])) > changed]
        assert spacing(rows)[-1] == pytest.approx(0.1, abs=1e-6)

        engine.resize(9)
        sub.wait_for("edgetwin/device_008/telemetry/env", timeout=10)
        engine.resize(3)
        shrunk = time.time()
        engine.refresh()
        assert engine.stats().streams == 3
        sub.wait_for(lambda m: json.loads(m.payload)["ts"] > shrunk + 0.3, timeout=10, count=3)
        late = {
            d for d, rows in by_device(sub.messages()).items()
            if any(float(str(r["ts"])) > shrunk + 0.05 for r in rows)
        }  # fmt: skip
        assert late == {"device_000", "device_001", "device_002"}

        # Through pause, rate change and resizes, a device's seq never restarted.
        seqs = [r["seq"] for r in by_device(sub.messages())["device_000"]]
        assert seqs == list(range(len(seqs)))

        pids = engine.worker_pids()
        stats = engine.stop()
    assert stats.state == "stopped"
    assert stats.sent > 0
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists() and _alive(pid)]
    with pytest.raises(Exception, match="stopped"):
        engine.pause()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_qos1_readings_are_delivered_in_the_flat_payload(broker: Broker) -> None:
    engine = EngineController(endpoint(broker), EngineSettings(workers=1))
    try:
        with Capture(broker, TELEMETRY, qos=1) as sub:
            engine.start(TestScenario(devices=5, interval=0.1), qos=1, payload="flat")
            got = sub.wait_for(TELEMETRY, timeout=10, count=20)
            # The subscriber may see the 20th before the engine has counted its PUBACK.
            poll(lambda: engine.refresh().acked >= 20, 10, what="20 PUBACKs counted")
            stats = engine.refresh()
    finally:
        engine.close()
    assert {m.qos for m in got} == {1}
    assert sorted(json.loads(got[0].payload)) == [
        "device_id",
        "humidity",
        "temperature",
        "timestamp",
    ]
    assert stats.qos == 1
    assert stats.refused == 0
    # Counted when the socket took them, acknowledged on PUBACK: never more acked than sent.
    assert 20 <= stats.acked <= stats.sent
    assert stats.rejected == stats.lost == 0


@pytest.mark.parametrize("qos", [0, 1])
def test_a_stalled_broker_keeps_worker_memory_bounded_and_skips_are_counted(
    broker: Broker, qos: int
) -> None:
    if broker.backend == "inprocess":
        pytest.skip("stalling needs the broker in a process or container of its own (SIGSTOP)")
    bound = 65_536
    window = 200
    engine = EngineController(
        endpoint(broker),
        EngineSettings(
            workers=1,
            qos=1 if qos else 0,
            max_backlog_bytes=bound,
            max_inflight=window,
            stats_interval=0.2,
        ),
    )
    try:
        before = engine.start(TestScenario(devices=400, interval=0.02))  # 20,000 readings/s
        poll(lambda: engine.refresh().sent > 5000, 10, what="readings flowing")
        rss_before = engine.refresh().rss_bytes
        broker.freeze()
        try:
            poll(lambda: engine.refresh().backlog_skipped > 20_000, 15, what="backlog skips")
            stalled: EngineStats = engine.refresh()
        finally:
            broker.thaw()
        # The socket's send buffer is full and the engine's own backlog stays within its
        # bound plus one batch chunk, instead of growing with every skipped reading.
        assert stalled.per_worker[0].backlog_bytes <= bound + 256 * 300
        assert stalled.per_worker[0].qos1_queued <= window
        assert stalled.rss_bytes - rss_before < 30 * 2**20
        assert stalled.lateness_p99_ms is not None
        sent_at_stall = stalled.sent
        poll(
            lambda: engine.refresh().sent > sent_at_stall + 5000,
            20,
            what="readings flowing again after SIGCONT",
        )
    finally:
        engine.close()
    assert before.state == "running"


def test_a_dead_worker_is_reported_and_stop_still_works(engine: EngineController) -> None:
    engine.start(TestScenario(devices=6, interval=0.1))
    victim = engine.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    poll(
        lambda: any(w.state == "failed" for w in engine.stats().per_worker),
        10,
        what="the killed worker reported failed",
    )
    failed = [w for w in engine.stats().per_worker if w.state == "failed"]
    assert [w.pid for w in failed] == [victim]
    assert failed[0].error is not None
    assert "exited" in failed[0].error
    assert engine.stop().state == "stopped"


def test_an_mqtt_311_connection_delivers_too(broker: Broker) -> None:
    if broker.protocol != "5":
        pytest.skip("the broker speaks MQTT 3.1.1 only: every test here already uses it")
    engine = EngineController(
        Endpoint(host=broker.host, port=broker.port, protocol="3.1.1", keepalive=2),
        EngineSettings(workers=1),
    )
    try:
        with Capture(broker, TELEMETRY, qos=0) as sub:
            engine.start(TestScenario(devices=3, interval=0.1))
            got = sub.wait_for(TELEMETRY, timeout=10, count=9)
    finally:
        engine.close()
    assert {json.loads(m.payload)["device"] for m in got} == {f"device_00{i}" for i in range(3)}


def test_a_small_fleet_runs_in_process_and_moves_out_when_it_grows(
    broker: Broker,
) -> None:
    """With workers chosen from the rate, a fleet under `in_process_rate` costs no process; a
    resize past it moves the run to worker processes, and back, without losing a device."""
    settings = EngineSettings(in_process_rate=50, process_rate=1000, stats_interval=0.2)
    controller = EngineController(endpoint(broker), settings)
    try:
        with Capture(broker, TELEMETRY, qos=0) as sub:
            small = controller.start(TestScenario(devices=2, interval=0.1), fleet="test")
            assert (small.workers, small.fleet) == (0, "test")
            assert controller.worker_pids() == [os.getpid()]
            sub.wait_for(TELEMETRY, timeout=10, count=2 * 3)

            grown = controller.resize(8)  # 80 readings/s: past the gateway's thread
            assert (grown.workers, grown.devices, grown.fleet) == (1, 8, "test")
            assert controller.worker_pids() != [os.getpid()]
            moved = time.time()

            def devices_since_the_move() -> set[str]:
                bodies = [json.loads(m.payload) for m in sub.messages()]
                return {str(b["device"]) for b in bodies if b["ts"] > moved}

            poll(
                lambda: devices_since_the_move() == {f"device_{i:03d}" for i in range(8)},
                timeout=10,
                what="all eight devices from the worker process",
            )

            shrunk = controller.resize(3)
            assert (shrunk.workers, shrunk.devices) == (0, 3)
            assert controller.worker_pids() == [os.getpid()]
    finally:
        controller.close()
    assert controller.state == "stopped"
