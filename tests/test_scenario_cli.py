"""`edgetwin simulate --virtual`, end to end: the command as a user runs it."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from edgetwin.agent.contract import Status, Telemetry
from edgetwin.gateway.broker import free_port
from edgetwin.testing.broker import Broker
from edgetwin.testing.capture import Capture
from edgetwin.testing.process import start_edgetwin, stop_process
from edgetwin.testing.waiting import poll
from tests.fleet_helpers import mqtt_settings

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "scenario.toml"


def edgetwin(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgetwin", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def simulate(*args: str) -> subprocess.CompletedProcess[str]:
    return edgetwin("simulate", *args)


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


def merge(*args: str) -> subprocess.CompletedProcess[str]:
    return edgetwin("merge", *args)


@pytest.mark.parametrize(
    ("fleet", "shards", "ties"),
    [
        # Faults on patterns and single devices, offline statuses, labels, several intervals.
        (["--scenario", str(EXAMPLE), "--devices", "30", "--duration", "2h10m"], 3, False),
        # 10,000 devices at 1 Hz: ticks of streams of different shards within a microsecond
        # of each other (dozens a second), which only the file's full-precision t orders.
        (["--devices", "10000", "--start", "2026-01-01T00:00:00", "--duration", "3s"], 4, True),
    ],
    ids=["example-scenario", "microsecond-ties"],
)
def test_shards_virtual_files_merge_into_the_one_process_file_byte_for_byte(
    tmp_path: Path, fleet: list[str], shards: int, ties: bool
) -> None:
    whole = tmp_path / "whole.jsonl"
    result = simulate(*fleet, "--virtual", "--quiet", "--out", str(whole))
    assert result.returncode == 0, result.stderr
    parts = []
    for k in range(shards):
        part = tmp_path / f"shard-{k}.jsonl"
        played = simulate(
            *fleet, "--virtual", "--quiet", "--shard", f"{k}/{shards}", "--out", str(part)
        )
        assert played.returncode == 0, played.stderr
        assert f"(shard {k}/{shards} of a fleet of " in played.stdout
        parts.append(part)
    shard_devices = [
        {json.loads(line)["payload"].get("device") for line in part.read_bytes().splitlines()}
        - {None}
        for part in parts
    ]
    # Every shard plays devices of its own, all of them together the whole fleet's.
    assert all(shard_devices)
    assert sum(len(devices) for devices in shard_devices) == len(set().union(*shard_devices))
    merged = tmp_path / "merged.jsonl"
    result = merge("--out", str(merged), *map(str, parts))
    assert result.returncode == 0, result.stderr
    assert merged.read_bytes() == whole.read_bytes()
    if ties:
        # Neighbours in the one-process file, a later shard's first, whose times agree to the
        # microsecond: a merge by microseconds would have put them the other way round.
        shard_of = {device: k for k, devices in enumerate(shard_devices) for device in devices}
        lines = [json.loads(line) for line in whole.read_bytes().splitlines()]
        reversed_ties = sum(
            1
            for a, b in itertools.pairwise(lines)
            if round(a["t"], 6) == round(b["t"], 6)
            and shard_of[a["payload"]["device"]] > shard_of[b["payload"]["device"]]
        )
        assert reversed_ties > 0


def test_merge_refuses_to_overwrite_its_input_and_names_a_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"topic": "x"}\n')
    result = merge("--out", str(bad), str(bad))
    assert result.returncode == 2
    assert "--out is one of the files" in result.stderr
    result = merge("--out", str(tmp_path / "out.jsonl"), str(bad))
    assert result.returncode == 2
    assert 'does not start with {"t":' in result.stderr
    missing = merge("--out", str(tmp_path / "out.jsonl"), str(tmp_path / "none.jsonl"))
    assert missing.returncode == 2
    assert "none.jsonl" in missing.stderr


@pytest.mark.integration
def test_a_real_time_replica_plays_its_shard_of_the_fleet_from_its_host_name(
    broker: Broker,
) -> None:
    """A StatefulSet's pod `sim-1` of two: EDGETWIN_SHARD_COUNT and the host name's ordinal
    give shard 1/2, the second half of the fleet, under the fleet's own device ids."""
    with Capture(broker, "edgetwin/+/telemetry/+") as sub:
        result = subprocess.run(
            [
                "unshare", "--uts", "--map-root-user", "sh", "-c",
                f'hostname sim-1 && exec "{sys.executable}" -m edgetwin simulate --devices 4 '
                f"--broker {broker.host}:{broker.port} --duration 2 --workers 1 --qos 0",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "EDGETWIN_SHARD_COUNT": "2"},
        )  # fmt: skip
        if result.returncode != 0 and "unshare" in result.stderr:
            pytest.skip(f"no UTS namespace to set a host name in: {result.stderr.strip()}")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("2 devices: "), result.stdout
        sent = int(result.stdout.split("; ")[1].split(" sent in all")[0])
        sub.wait_for("edgetwin/+/telemetry/+", count=sent)
    assert {Telemetry.decode(m.payload).device for m in sub.messages()} == {
        "device_002",
        "device_003",
    }


def scrape(port: int) -> dict[str, float]:
    """The unlabelled samples of a Prometheus text page (enough for the engine's gauges)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


@pytest.mark.integration
def test_a_real_time_replica_serves_the_engines_metrics_while_it_runs(broker: Broker) -> None:
    """What an orchestrator probes and Prometheus scrapes on a simulation replica: the
    engine's figures (the gateway's edgetwin_engine_* families) and the process's."""
    port = free_port()
    process = start_edgetwin(
        [
            "simulate", "--devices", "6", "--shard", "0/2", "--broker",
            f"{broker.host}:{broker.port}", "--workers", "1", "--qos", "0",
            "--metrics-port", str(port), "--quiet",
        ]
    )  # fmt: skip
    try:

        def sending() -> bool:
            try:
                return scrape(port).get("edgetwin_engine_messages_total", 0) > 0
            except httpx.TransportError:
                return False

        poll(sending, timeout=20, what="the replica's engine metrics")
        samples = scrape(port)
        assert samples["edgetwin_engine_devices"] == 3
        assert samples["edgetwin_engine_workers"] == 1
        assert samples["edgetwin_engine_target_rate"] == 3
        assert samples["process_resident_memory_bytes"] > 0
    finally:
        code, stderr = stop_process(process)
    assert code == 0, stderr
    refused = simulate("--virtual", "--metrics-port", "1", "--out", "x.jsonl")
    assert refused.returncode == 2
    assert "only in real time" in refused.stderr
