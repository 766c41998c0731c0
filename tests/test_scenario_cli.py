"""`edgetwin simulate --virtual`, end to end: the command as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgetwin.agent.contract import Status, Telemetry
from edgetwin.testing.broker import Broker
from edgetwin.testing.capture import Capture
from tests.fleet_helpers import mqtt_settings

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "scenario.toml"


def simulate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgetwin", "simulate", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_virtual_run_writes_every_message_and_repeats_byte_for_byte(tmp_path: Path) -> None:
    # Two separate processes: nothing may depend on per-process hashing or wall time.
    runs = []
    for name in ("one.jsonl", "two.jsonl"):
        out = tmp_path / name
        result = simulate(
            "--scenario", str(EXAMPLE), "--virtual", "--devices", "30",
            "--duration", "2h10m", "--out", str(out),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        runs.append((out.read_bytes(), result))
    (first, result), (second, _) = runs
    assert first == second
    lines = [json.loads(line) for line in first.splitlines()]
    # The final count is printed, and the progress bar went to stderr.
    summary = result.stdout.strip()
    assert summary.startswith(f"{len(lines)} messages (")
    assert "100.0%" in result.stderr
    kinds = {"telemetry": 0, "labels": 0, "status": 0}
    for record in lines:
        payload = json.dumps(record["payload"], ensure_ascii=False)
        if record["topic"] == "edgetwin/labels":
            kinds["labels"] += 1
        elif record["retain"]:
            kinds["status"] += 1
            Status.decode(payload)
        else:
            kinds["telemetry"] += 1
            Telemetry.decode(payload)
    assert summary.startswith(
        f"{len(lines)} messages ({kinds['telemetry']} telemetry, {kinds['labels']} labels, "
        f"{kinds['status']} status) from 30 devices"
    )
    # The fleet is resized to its first 30 devices; from the file's start, 2 h in, the
    # example's temperature spike on room-007 starts and ends.
    devices = {r["payload"]["device"] for r in lines if r["topic"] != "edgetwin/labels"}
    assert len(devices) == 30
    events = [
        (r["payload"]["device"], r["payload"]["event"])
        for r in lines
        if r["topic"] == "edgetwin/labels"
    ]
    assert events == [("room-007", "start"), ("room-007", "end")]
    assert kinds["status"] == 0


def test_flat_payloads_and_a_topic_template(tmp_path: Path) -> None:
    out = tmp_path / "flat.jsonl"
    result = simulate(
        "--virtual", "--devices", "3", "--start", "2026-01-01T00:00:00Z", "--duration", "10s",
        "--payload", "flat", "--topic", "sensors/data", "--out", str(out), "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 30
    assert {r["topic"] for r in records} == {"sensors/data"}
    assert set(records[0]["payload"]) == {"device_id", "timestamp", "temperature", "humidity"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--virtual", "--duration", "1h"], "--start: required"),
        (["--virtual", "--start", "2026-01-01", "--duration", "soon"], "not a duration"),
        (["--start", "2026-01-01"], "only with --virtual"),
    ],
)
def test_bad_invocations_exit_2_with_the_reason(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = simulate(*args, "--out", str(tmp_path / "x.jsonl"))
    assert result.returncode == 2
    assert message in result.stderr


def test_a_bad_scenario_file_is_named_with_its_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[templates.room]\ncount = 1\nsensors.env.quantities.temperature.unti = 'C'\n")
    result = simulate("--scenario", str(path), "--virtual", "--out", str(tmp_path / "x.jsonl"))
    assert result.returncode == 2
    assert f"{path}: unknown key 'templates.room.sensors.env.quantities.temperature.unti'" in (
        result.stderr
    )


@pytest.mark.integration
def test_a_virtual_run_publishes_to_a_broker(broker: Broker, tmp_path: Path) -> None:
    scenario = tmp_path / "offline.toml"
    scenario.write_text(
        """
        seed = 3
        [templates.dev]
        count = 4
        [templates.dev.sensors.env.quantities.temperature]
        [[faults]]
        type = "offline"
        devices = "dev-001"
        after = "10s"
        duration = "20s"
        """
    )
    with Capture(broker, "edgetwin/#") as sub:
        result = simulate(
            "--scenario", str(scenario), "--virtual", "--start", "2026-01-01T00:00:00",
            "--duration", "60s", "--broker", f"{broker.host}:{broker.port}", "--quiet",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("224 messages (220 telemetry, 2 labels, 2 status)")
        received = sub.wait_for("edgetwin/#", count=224, timeout=15)
    statuses = [Status.decode(m.payload) for m in received if m.topic.endswith("/status")]
    assert [s.state for s in statuses] == ["offline", "online"]
    # The online status is what stays retained for late subscribers.
    with Capture(broker, "edgetwin/dev-001/status") as late:
        retained = late.wait_for("edgetwin/dev-001/status", timeout=10)
    assert Status.decode(retained[0].payload).state == "online"


@pytest.mark.integration
def test_a_real_time_run_plays_the_fleet_on_the_broker_until_its_duration(
    broker: Broker,
) -> None:
    """Without --virtual the scale engine plays the scenario now, straight to the broker."""
    with Capture(broker, "edgetwin/+/telemetry/+") as sub:
        result = simulate(
            "--devices", "3", "--broker", f"{broker.host}:{broker.port}",
            "--duration", "2", "--workers", "1", "--qos", "0",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        # The exit line reports what reached the socket, never the target as if reached.
        assert result.stdout.startswith("3 devices: ")
        assert "/s handed to the socket over " in result.stdout
        sent = int(result.stdout.split("; ")[1].split(" sent in all")[0])
        sub.wait_for("edgetwin/+/telemetry/+", count=sent)
        readings = [Telemetry.decode(m.payload) for m in sub.messages()]
    assert len(readings) == sent
    assert {r.device for r in readings} == {"device_000", "device_001", "device_002"}
    # One a second per device for two seconds, give or take the start and stop.
    assert 3 <= len(readings) <= 12


@pytest.mark.integration
def test_the_broker_sink_counts_what_the_broker_never_confirmed(broker: Broker) -> None:
    from edgetwin.gateway.scenario.virtual import BrokerSink

    sink = BrokerSink(mqtt_settings(broker), qos=1, close_timeout=0.5)
    broker.kill()
    sink.write(1.0, ("edgetwin/dev/telemetry/env", b"{}", False))
    sink.write(2.0, ("edgetwin/dev/telemetry/env", b"{}", False))
    sink.close()
    assert sink.unconfirmed == 2


@pytest.mark.integration
@pytest.mark.parametrize("qos", [0, 1])
def test_the_broker_sink_keeps_to_a_small_window_and_delivers_everything(
    broker: Broker, qos: int
) -> None:
    """More messages than the window (QoS 1) and than the sink's byte backlog (QoS 0): the
    sink waits for the broker rather than queueing without bound, and loses nothing."""
    from edgetwin.gateway.scenario.virtual import BrokerSink

    payload = b"x" * 2000
    # QoS 0: 3 MB, past the 1 MiB backlog at which a write waits for the socket. QoS 1: 160
    # windows, and below mosquitto's queue of 1,000 for a subscriber slower than the sink.
    count = 800 if qos else 1500
    with Capture(broker, "edgetwin/dev/#") as sub:
        sink = BrokerSink(mqtt_settings(broker), qos=1 if qos else 0, window=5)
        for n in range(count):
            sink.write(float(n), (f"edgetwin/dev/telemetry/s{n % 3}", payload, False))
        sink.close()
        assert sink.unconfirmed == 0
        received = sub.wait_for("edgetwin/dev/#", count=count, timeout=20)
    assert len(received) == count
