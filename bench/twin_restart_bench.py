"""A gateway restarted against a stock broker holding a large fleet's retained documents.

    .venv/bin/python bench/twin_restart_bench.py [--devices 10000]

A private mosquitto with its default limits (max_inflight_messages 20, max_queued_messages
1000), filled with five retained documents per device, as a gateway and its agents leave them:
twin, desired, reported, status (offline) and state, and the twin index (`--no-index`: as a
gateway older than the index left them). Then `python -m edgetwin gateway` starts
with an empty manifest and rebuilds its twins from the broker. Prints the time from the
process start until GET /devices lists every device in the manifest with its desired version,
and the gateway's CPU time and peak memory. Nothing is asserted; every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from procstat import tree_cpu_seconds, tree_pss_bytes

from edgetwin.agent.contract import (
    DesiredConfig,
    DeviceState,
    Presence,
    ReportedConfig,
    SensorSettings,
    Status,
    Topics,
    TwinIndex,
    TwinSummary,
    twin_index_shard,
)
from edgetwin.gateway.broker import MosquittoBroker, free_port

REPO = Path(__file__).resolve().parent.parent


def fill(broker: MosquittoBroker, devices: list[str], index: bool) -> int:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.connect(broker.host, broker.port)
    client.loop_start()
    sensors = {"env": SensorSettings(driver="bme280", interval=1.0)}
    now = time.time()
    published = []
    for device in devices:
        documents = {
            "twin": TwinSummary(device=device, ts=now, presence="offline", sensors={}),
            "config/desired": DesiredConfig(device=device, version=2, sensors=sensors),
            "config/reported": ReportedConfig(
                device=device, ts=now, status="applied", applied_version=2
            ),
            "status": Status(
                device=device,
                state=Presence.OFFLINE,
                ts=now,
                boot=1,
                agent_version="bench",
                reason="connection_lost",
            ),
            "state": DeviceState(
                device=device, ts=now, agent_version="bench", uptime_s=1.0, sensors={}
            ),
        }
        for kind, document in documents.items():
            published.append(
                client.publish(f"edgetwin/{device}/{kind}", document.encode(), qos=1, retain=True)
            )
    if index:
        shards: dict[int, list[str]] = {}
        for device in devices:
            shards.setdefault(twin_index_shard(device), []).append(device)
        topics = Topics()
        for shard, members in shards.items():
            document = TwinIndex(shard=shard, devices=sorted(members))
            published.append(
                client.publish(topics.twin_index(shard), document.encode(), qos=1, retain=True)
            )
    for info in published:
        info.wait_for_publish(60)
    client.disconnect()
    client.loop_stop()
    return len(published)


def devices_known(port: int) -> int:
    """How many devices the twin knows, from /metrics: far cheaper for the gateway to answer
    than /devices, which would load the process it measures if asked four times a second."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            text = answer.read().decode()
    except OSError:
        return 0
    return int(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("edgetwin_devices{")
        )
    )


def devices_rebuilt(port: int, expected: int) -> bool:
    if devices_known(port) < expected:
        return False
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/devices", timeout=10) as answer:
            views = json.load(answer)
    except OSError:
        return False
    return len(views) == expected and all(
        v["in_manifest"] and v["desired_version"] == 2 for v in views
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--log", type=Path, help="keep the gateway's log in this file")
    parser.add_argument(
        "--no-index", action="store_true", help="fill the broker without the twin index"
    )
    parser.add_argument(
        "--max-queued",
        type=int,
        default=None,
        help="the broker's max_queued_messages (default: mosquitto's own, 1000)",
    )
    args = parser.parse_args()
    devices = [f"hall-{i:05d}" for i in range(args.devices)]
    extra = [] if args.max_queued is None else [f"max_queued_messages {args.max_queued}"]
    limits = (
        "stock limits: 20 in flight, 1,000 queued"
        if args.max_queued is None
        else f"max_queued_messages {args.max_queued:,}"
    )
    with MosquittoBroker(extra_config=extra) as broker, tempfile.TemporaryDirectory() as tmp:
        started = time.monotonic()
        documents = fill(broker, devices, index=not args.no_index)
        print(
            f"broker filled: {documents:,} retained documents for {len(devices):,} devices "
            f"in {time.monotonic() - started:.1f} s ({limits})"
        )
        api_port = free_port()
        config = Path(tmp) / "gateway.toml"
        config.write_text(
            f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n\n'
            f'[server]\nhost = "127.0.0.1"\nport = {api_port}\n'
        )
        gateway = subprocess.Popen(
            [sys.executable, "-m", "edgetwin", "gateway", "--config", str(config)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL if args.log is None else args.log.open("wb"),
        )
        try:
            t0 = time.monotonic()
            deadline = t0 + args.timeout
            done = False
            peak_pss = 0
            while time.monotonic() < deadline:
                peak_pss = max(peak_pss, tree_pss_bytes(gateway.pid))
                if devices_rebuilt(api_port, len(devices)):
                    done = True
                    break
                time.sleep(0.1)
            elapsed = time.monotonic() - t0
            cpu = tree_cpu_seconds(gateway.pid)
        finally:
            gateway.terminate()
            gateway.wait(15)
        if done:
            print(
                f"gateway start -> every twin rebuilt with its desired version: {elapsed:.1f} s "
                f"({len(devices):,} devices); gateway CPU {cpu:.1f} s, peak PSS "
                f"{peak_pss / 2**20:.0f} MiB (sampled every 0.1 s, whole process tree)"
            )
        else:
            print(f"not every twin rebuilt within {args.timeout:.0f} s")


if __name__ == "__main__":
    main()
