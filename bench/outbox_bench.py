"""Benchmark of the agent's outbox (agent/outbox.py): enqueue rate, fsyncs, drain rate.

Run: ``.venv/bin/python bench/outbox_bench.py`` (``--help`` for options). Prints a table;
asserts nothing. Everything is bounded in time (well under a minute by default).

1. Enqueue: N realistic ~250-byte JSON readings through `Outbox.put` + `maybe_commit`,
   once with the default commit interval (1 s) and once committing after every put, the
   way a naive outbox would. fsyncs are counted by re-running each workload in a child
   process under ``strace -c`` (fsync + fdatasync), when strace is installed, so the timed
   runs are not slowed by tracing.
2. Drain: the N readings of step 1, committed, are published to a private mosquitto on
   127.0.0.1 (`gateway.broker.MosquittoBroker`) at QoS 1 by the agent's own path,
   `agent.publisher.OutboxPublisher` over `agent.mqtt.MqttLink`, built as `agent.runtime`
   builds them: each row leaves the outbox on its PUBACK. Beside it, raw paho QoS 1
   publishing of the same payloads to the same broker, with the same window of messages in
   flight, is the baseline; the ratio is agent / raw. The broker announces that window as
   its MQTT 5 Receive Maximum, which the agent honours and raw paho ignores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edgetwin.agent.config import MqttSettings
from edgetwin.agent.mqtt import MqttLink
from edgetwin.agent.outbox import Outbox
from edgetwin.agent.publisher import OutboxPublisher
from edgetwin.gateway.broker import MosquittoBroker

DEVICE = "pi-bench"
STREAMS = ("env", "outdoor", "cpu")


def make_payload(stream: str) -> Callable[[int], bytes]:
    """A reading shaped like agent.contract.Telemetry, about 250 bytes of JSON."""

    def build(seq: int) -> bytes:
        reading = {
            "device": DEVICE,
            "sensor": stream,
            "ts": round(time.time(), 3),
            "seq": seq,
            "source": "agent",
            "values": {
                "temperature": {"value": round(21.5 + (seq % 97) / 10, 2), "unit": "°C"},
                "humidity": {"value": round(40 + (seq % 31) / 3, 2), "unit": "%"},
                "pressure": {"value": round(1013.25 - (seq % 13) / 7, 2), "unit": "hPa"},
            },
            "anomaly": None,
        }
        return json.dumps(reading, ensure_ascii=False).encode()

    return build


def topic_of(stream: str) -> str:
    return f"edgetwin/{DEVICE}/telemetry/{stream}"


# -- enqueue ---------------------------------------------------------------------------------


def enqueue(path: Path, n: int, seconds: float, commit_each: bool) -> dict[str, float]:
    """Put up to ``n`` readings (or for ``seconds``), the way the agent loop would."""
    builders = {s: make_payload(s) for s in STREAMS}
    interval = 0.0 if commit_each else 1.0
    start = time.perf_counter()
    deadline = start + seconds
    puts = 0
    with Outbox(path, commit_interval=interval) as box:
        while puts < n and (puts % 100 or time.perf_counter() < deadline):
            stream = STREAMS[puts % len(STREAMS)]
            box.put(stream, builders[stream], topic_of(stream))
            if commit_each:
                box.commit()
            else:
                box.maybe_commit()
            puts += 1
        box.commit()
        elapsed = time.perf_counter() - start
        commits = box.commits
    return {"puts": puts, "seconds": elapsed, "commits": commits}


def count_fsyncs(n: int, seconds: float, commit_each: bool, workdir: Path) -> dict[str, Any]:
    """Re-run an enqueue workload in a child under strace; count fsync + fdatasync calls."""
    strace = shutil.which("strace")
    if strace is None:
        return {"fsyncs": None, "note": "strace not installed"}
    out = workdir / f"strace-{commit_each}.txt"
    db = workdir / f"strace-{commit_each}.db"
    args = [sys.executable, __file__, "--child", str(db), str(n), str(seconds)]
    if commit_each:
        args.append("--commit-each")
    # --seccomp-bpf stops the child only at the traced calls, not at every syscall.
    cmd = [strace, "-f", "-qq", "--seccomp-bpf", "-c", "-e", "trace=fsync,fdatasync", "-o"]
    try:
        result = subprocess.run(
            [*cmd, str(out), *args],
            capture_output=True,
            text=True,
            timeout=seconds + 20,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"fsyncs": None, "note": "strace run timed out"}
    if result.returncode != 0:
        return {"fsyncs": None, "note": f"strace failed: {result.stderr.strip()[-200:]}"}
    child = json.loads(result.stdout.strip().splitlines()[-1])
    calls = sum(
        int(m.group(1))
        for m in re.finditer(
            r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?f(?:data)?sync$",
            out.read_text(),
            re.MULTILINE,
        )
    )
    return {"fsyncs": calls, "child": child}


# -- drain -----------------------------------------------------------------------------------


@dataclass
class Session:
    """A connected paho client with a PUBACK hook; paho stays inside this bench file."""

    broker: MosquittoBroker
    inflight: int
    tag: str
    on_ack: Callable[[int, bool], None] = lambda mid, ok: None
    client: mqtt.Client = field(init=False)

    def __post_init__(self) -> None:
        protocol = mqtt.MQTTv5 if self.broker.protocol == "5" else mqtt.MQTTv311
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"outbox-bench-{self.tag}", protocol=protocol
        )
        self.client.max_inflight_messages_set(self.inflight)
        connected = threading.Event()
        self.client.on_connect = lambda *_: connected.set()
        self.client.on_publish = self._on_publish
        self.client.connect(self.broker.host, self.broker.port, keepalive=30)
        self.client.loop_start()
        if not connected.wait(10):
            raise RuntimeError(f"no CONNACK from {self.broker.url}")

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.on_ack(mid, not reason_code.is_failure)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def drain_raw(
    broker: MosquittoBroker, payloads: list[tuple[str, bytes]], inflight: int, timeout: float
) -> dict[str, float]:
    """Baseline: publish every payload at QoS 1 with plain paho; wait for every PUBACK."""
    done = threading.Event()
    acked = 0
    failed = 0
    lock = threading.Lock()

    def on_ack(mid: int, ok: bool) -> None:
        nonlocal acked, failed
        with lock:
            acked += 1
            failed += not ok
            if acked == len(payloads):
                done.set()

    session = Session(broker, inflight, "raw", on_ack)
    try:
        start = time.perf_counter()
        for topic, payload in payloads:
            session.client.publish(topic, payload, qos=1)
        finished = done.wait(timeout)
        elapsed = time.perf_counter() - start
    finally:
        session.close()
    return {"msgs": acked, "seconds": elapsed, "failed": failed, "complete": finished}


def drain_agent(
    broker: MosquittoBroker, path: Path, inflight: int, timeout: float
) -> dict[str, float]:
    """The agent's own path: agent.publisher.OutboxPublisher over agent.mqtt.MqttLink (TCP
    nodelay, its own network thread, paho's window off), with no drain-rate limit, pumped as
    agent.runtime's loop pumps it during a backlog: every 10 ms, or when the publisher asks
    (`on_room`), committing as it goes."""
    room = threading.Event()
    with Outbox(path) as box:
        total = box.depth
        publisher: OutboxPublisher | None = None

        def delivered(mid: int) -> None:
            assert publisher is not None
            publisher.on_delivered(mid)

        settings = MqttSettings(
            host=broker.host, port=broker.port, protocol=broker.protocol, max_inflight=inflight
        )
        link = MqttLink(
            settings, on_delivered=delivered, on_connect=lambda _link: room.set(), max_inflight=0
        )
        publisher = OutboxPublisher(
            box, link, max_inflight=inflight, drain_rate=0, on_room=room.set
        )
        link.start()
        try:
            if not link.wait_subscribed(10):
                raise RuntimeError(f"no connection to {broker.url}")
            commits_before = box.commits
            start = time.perf_counter()
            deadline = start + timeout
            while publisher.delivered < total and time.perf_counter() < deadline:
                room.clear()
                publisher.pump()
                box.maybe_commit()
                room.wait(0.01)
            box.commit()
            elapsed = time.perf_counter() - start
        finally:
            link.close()
        return {
            "msgs": publisher.delivered,
            "seconds": elapsed,
            "failed": 0,
            "complete": box.depth == 0,
            "left": box.depth,
            "commits": box.commits - commits_before,
        }


def drain_local(path: Path, batch: int) -> dict[str, float]:
    """The outbox's share of a drain: pending, ack and commit, with no network at all."""
    with Outbox(path) as box:
        start = time.perf_counter()
        msgs = 0
        last_id: int | None = None
        while entries := box.pending(batch, after_id=last_id):
            box.ack(e.id for e in entries)
            msgs += len(entries)
            last_id = entries[-1].id
            box.maybe_commit()
        box.commit()
        elapsed = time.perf_counter() - start
    return {"msgs": msgs, "seconds": elapsed}


def copy_of(db: Path, name: str) -> Path:
    # The backlog was closed, so its WAL is checkpointed and the file alone is the database.
    target = db.with_name(f"{name}.db")
    shutil.copyfile(db, target)
    return target


# -- report ----------------------------------------------------------------------------------


def median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    return sorted(runs, key=lambda r: r["msgs"] / r["seconds"])[(len(runs) - 1) // 2]


def rates(runs: list[dict[str, float]]) -> str:
    return ", ".join(fmt_rate(r["msgs"], r["seconds"]) for r in runs)


def fmt_rate(count: float, seconds: float) -> str:
    return f"{count / seconds:,.0f}" if seconds > 0 else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=20_000, help="readings (default 20000)")
    parser.add_argument(
        "--inflight", type=int, default=100, help="QoS 1 messages in flight (window)"
    )
    parser.add_argument("--batch", type=int, default=50, help="pending() batch, outbox alone")
    parser.add_argument("--dir", type=Path, default=None, help="where the outbox files go")
    parser.add_argument("--enqueue-seconds", type=float, default=4.0, help="per enqueue run")
    parser.add_argument("--drain-seconds", type=float, default=6.0, help="per drain run")
    parser.add_argument("--rounds", type=int, default=5, help="drain runs of each kind")
    parser.add_argument(
        "--budget", type=float, default=50.0, help="no new drain round after this many seconds"
    )
    parser.add_argument("--child", nargs=3, metavar=("DB", "N", "SECONDS"), help=argparse.SUPPRESS)
    parser.add_argument("--commit-each", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:  # the strace'd re-run of an enqueue workload
        db, n, seconds = args.child
        print(json.dumps(enqueue(Path(db), int(n), float(seconds), args.commit_each)))
        return

    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="outbox-bench-", dir=args.dir))
    rows: list[tuple[str, str, str]] = []
    try:
        backlog = workdir / "outbox.db"
        # 1. Enqueue. The default-interval run builds the backlog that step 2 drains.
        batched = enqueue(backlog, args.n, args.enqueue_seconds, commit_each=False)
        each = enqueue(workdir / "each.db", args.n, args.enqueue_seconds, commit_each=True)
        for label, res, commit_each in (
            ("enqueue, commit every 1 s (default)", batched, False),
            ("enqueue, commit after every put", each, True),
        ):
            traced = count_fsyncs(int(res["puts"]), args.enqueue_seconds, commit_each, workdir)
            if traced["fsyncs"] is None:
                fsyncs = traced["note"]
            else:
                fsyncs = f"{traced['fsyncs']} fsyncs for {traced['child']['commits']} commits"
            rows.append(
                (
                    label,
                    f"{fmt_rate(res['puts'], res['seconds'])} puts/s",
                    f"{int(res['puts'])} puts, {int(res['commits'])} commits; {fsyncs}",
                )
            )

        # 2. Drain the backlog, and the same payloads with raw paho. Runs alternate and the
        # median of each is reported: on two cores the broker, paho's thread and ours share
        # them, and a single run is noisy.
        with sqlite3.connect(backlog) as conn:
            payloads = [
                (str(t), bytes(p))
                for t, p in conn.execute("SELECT topic, payload FROM outbox ORDER BY id")
            ]
        conn.close()
        size = sum(len(p) for _, p in payloads) / max(len(payloads), 1)
        rows.append(("payload size (mean)", f"{size:.0f} B", "JSON like agent.contract.Telemetry"))
        local = drain_local(copy_of(backlog, "local"), args.batch)
        if not MosquittoBroker.available():
            rows.append(("drain", "skipped", "mosquitto binary not found"))
            return
        raws: list[dict[str, float]] = []
        agents: list[dict[str, float]] = []
        receive_maximum = [f"max_inflight_messages {args.inflight}"]
        with MosquittoBroker(extra_config=receive_maximum) as broker:
            for round_ in range(args.rounds):
                left = args.budget - (time.monotonic() - started)
                if round_ and left < 2 * args.drain_seconds:
                    break  # another round might overrun the time budget
                raws.append(drain_raw(broker, payloads, args.inflight, args.drain_seconds))
                agent_copy = copy_of(backlog, f"agent-{round_}")
                agents.append(drain_agent(broker, agent_copy, args.inflight, args.drain_seconds))
        raw = median_run(raws)
        agent = median_run(agents)
        agent_rate = agent["msgs"] / agent["seconds"]
        raw_rate = raw["msgs"] / raw["seconds"]
        rows.append(
            (
                "outbox alone: pending -> ack -> commit",
                f"{fmt_rate(local['msgs'], local['seconds'])} msgs/s",
                f"{int(local['msgs'])} rows, no MQTT: the outbox's own cost",
            )
        )
        rows.append(
            (
                "raw paho QoS 1 publish (baseline)",
                f"{raw_rate:,.0f} msgs/s",
                f"{int(raw['msgs'])}/{len(payloads)} PUBACKs in {raw['seconds']:.2f} s"
                + ("" if raw["complete"] else " (TIMED OUT)")
                + f"; runs: {rates(raws)}",
            )
        )
        rows.append(
            (
                "agent: OutboxPublisher + MqttLink",
                f"{agent_rate:,.0f} msgs/s",
                f"{int(agent['msgs'])}/{len(payloads)} acked in {agent['seconds']:.2f} s, "
                f"{int(agent['commits'])} commits, depth left {int(agent['left'])}"
                + ("" if agent["complete"] else " (TIMED OUT)")
                + f"; runs: {rates(agents)}",
            )
        )
        rows.append(("ratio agent / raw (median runs)", f"{agent_rate / raw_rate:.2f}", ""))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        print_table(args, rows, time.monotonic() - started)


def print_table(args: argparse.Namespace, rows: list[tuple[str, str, str]], took: float) -> None:
    print(
        f"outbox bench: N={args.n}, ~250-byte JSON readings, {args.inflight} QoS 1 messages "
        f"in flight, pending batch (outbox alone)={args.batch}"
    )
    print(
        f"python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"{os.cpu_count()} CPUs, files in {args.dir or tempfile.gettempdir()}, took {took:.0f} s"
    )
    if not rows:
        return
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    header = ("measurement", "rate", "details")
    widths = [max(w, len(h)) for w, h in zip(widths, header, strict=True)]
    line = "  ".join("-" * w for w in widths)
    print(line)
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    print(line)
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    print(line)


if __name__ == "__main__":
    main()
