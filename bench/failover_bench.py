"""Failover of a whole fleet at once: N manifest devices whose agents all vanish together.

    .venv/bin/python bench/failover_bench.py                      # ~45 s: 1,000 devices at 1 s
    .venv/bin/python bench/failover_bench.py --persistence off    # a broker that keeps nothing
    .venv/bin/python bench/failover_bench.py --failure agents-killed   # control: wills delivered
    .venv/bin/python bench/failover_bench.py --help               # sizes, timings, broker stop

The figure: "1,000 manifest devices whose agents all vanish at once (one broker restart with no
agents coming back): every stream simulated within 2 s, no `seq` gap." Measured from outside,
as a consumer of the fleet would see it. Everything runs on 127.0.0.1:

- a private mosquitto on a free port (gateway.broker.MosquittoBroker). `--persistence on` (the
  default) is what Debian's package runs: `persistence true`, saved every `autosave_interval`
  (1800 s) and at a clean shutdown; the bench asks for one save (SIGUSR1) once the fleet is up,
  standing for the periodic save of a broker that has run for more than half an hour;
- `python -m edgetwin gateway --config FILE` as a child process, with a manifest of `--devices`
  devices, each with one emulated BME280 `env` at `--interval` seconds;
- one light agent stand-in per device, many in one process (`--agent-procs`): an MQTT 5
  connection per device as agent/runtime.py makes it (client id `edgetwin-agent-ID`, persistent
  session, retained last will `offline`/`connection_lost`), its own desired and twin topics
  subscribed, a retained birth status (`online`, `boot`), a retained state document (env ok),
  and readings with seq 1, 2, 3... at the interval, QoS 1, phases spread over the interval.
  Every document is built with agent/contract.py's Structs;
- subscribers on the contract's topics (`edgetwin/+/telemetry/+`, statuses, states, twins).

Then the failure (`--failure broker-restart`, the default): the stand-ins stop reading and
wait for their last acknowledgements, the broker is killed with SIGKILL (no last will is
delivered: the agents "vanish"), the stand-ins are killed, and the broker is started again on
the same port; no agent ever comes back. A fresh subscriber connects to the restarted broker.
For every device: the time from the moment the restarted broker accepts connections to its
first reading with source `simulated` (min, p50, p99, max; how many within 2 s and within
`--timeout`), and whether the simulated stream continues the agent's last acknowledged seq
(first simulated seq == last agent seq + 1), with gaps and duplicates counted at the hand-over
and inside the simulated stream. Also the gateway's twin as its API shows it (GET /fleet two
seconds after the restart and at the end, GET /devices), the retained documents the restarted
broker holds, the gateway's log, its PSS (smaps_rollup, whole process tree) and CPU.

`--failure agents-killed` is the ordinary case for comparison: the stand-ins' process is
killed while the broker runs, so the broker publishes every last will at once; times count
from the kill. `--broker-stop term` restarts the broker cleanly (SIGTERM) instead of killing it.

Prints a table; asserts nothing; exits 0. Every wait is bounded: about 25 s of set-up,
`--warmup`, then at most `--timeout` + `--tail` seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import selectors
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from procstat import children, cpu_seconds, pss_bytes, tree

from edgetwin.agent.contract import (
    ContractError,
    DeviceState,
    Presence,
    SensorHealth,
    SensorState,
    Source,
    Status,
    Telemetry,
    Topics,
    TwinSummary,
    Value,
)
from edgetwin.gateway.broker import MosquittoBroker, free_port
from edgetwin.hardware.registry import reading_quantities

REPO = Path(__file__).resolve().parent.parent
SENSOR = "env"
DRIVER = "bme280"
AGENT_VERSION = "bench-stand-in"
SESSION_EXPIRY = 86_400  # the agent's default ([mqtt] session_expiry)
STATE_INTERVAL = 60.0  # the agent's default ([agent] state_interval)
WITHIN = 2.0  # the figure's bound, seconds


# -- /proc ------------------------------------------------------------------------------------


def broker_pid() -> int | None:
    """The mosquitto child of this process (its pid changes at each restart)."""
    for pid in children(os.getpid()):
        try:
            if b"mosquitto" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            continue
    return None


# -- the agent stand-ins (run in child processes: `--stand-in SPEC`) --------------------------


def device_ids(count: int) -> list[str]:
    return [f"fo-{i:04d}" for i in range(count)]


class StandIn:
    """One device's agent as the gateway sees it on the wire (agent/runtime.py, agent/mqtt.py):
    an MQTT 5 connection with a persistent session and a retained last will, its desired and
    twin topics subscribed, a retained birth and state document on connect, one BME280 stream.
    The network loop is the worker's (one selector for every connection): no thread per device.
    """

    def __init__(self, device: str, topics: Topics, spec: dict[str, Any]) -> None:
        self.device = device
        self.topics = topics
        self.boot: int = spec["boot"]
        self.started = time.time()
        self.seq = 0  # last seq handed out
        self.acked = 0  # highest seq the broker acknowledged
        self.pending: dict[int, int] = {}  # mid -> seq (0: a retained document)
        self.connected = False
        self.lost = False
        self.born = False
        self.birth_mid = -1
        self.state_due = 0.0
        self.sock: Any = None
        self.telemetry_topic = topics.telemetry(device, SENSOR)
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"edgetwin-agent-{device}",
            protocol=mqtt.MQTTv5,
        )
        client.will_set(
            topics.status(device),
            self._status(Presence.OFFLINE, "connection_lost"),
            qos=1,
            retain=True,
        )
        client.on_connect = self._on_connect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        self.client = client

    def _status(self, state: Presence, reason: Any) -> bytes:
        return Status(
            device=self.device,
            state=state,
            ts=time.time(),
            boot=self.boot,
            agent_version=AGENT_VERSION,
            reason=reason,
        ).encode()

    def _state(self) -> bytes:
        return DeviceState(
            device=self.device,
            ts=time.time(),
            agent_version=AGENT_VERSION,
            uptime_s=max(0.0, time.time() - self.started),
            sensors={SENSOR: SensorState(health=SensorHealth.OK, backend="emulated")},
        ).encode()

    def connect(self, host: str, port: int, keepalive: int) -> None:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = SESSION_EXPIRY
        self.client.connect(
            host, port, keepalive=keepalive, clean_start=False, properties=properties
        )
        self.sock = self.client.socket()

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self.lost = True
            return
        # As MqttLink does: subscriptions first, then the birth hook (status, then state).
        options = SubscribeOptions(qos=1)
        client.subscribe(
            [
                (self.topics.desired(self.device), options),
                (self.topics.twin(self.device), options),
            ]
        )
        info = client.publish(
            self.topics.status(self.device),
            self._status(Presence.ONLINE, "birth"),
            qos=1,
            retain=True,
        )
        self.birth_mid = info.mid
        self.pending[info.mid] = 0
        self.publish_state()
        self.connected = True

    def publish_state(self) -> None:
        info = self.client.publish(
            self.topics.state(self.device), self._state(), qos=1, retain=True
        )
        self.pending[info.mid] = 0
        self.state_due = time.monotonic() + STATE_INTERVAL

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        seq = self.pending.pop(mid, None)
        if seq:
            self.acked = max(self.acked, seq)
        if mid == self.birth_mid:
            self.born = True

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # Agent._adopt_twin: continue after the simulation's last number.
        if msg.topic != self.topics.twin(self.device) or not msg.payload:
            return
        try:
            twin = TwinSummary.decode(bytes(msg.payload))
        except ContractError:
            return
        serving = twin.sensors.get(SENSOR)
        if twin.device == self.device and serving is not None:
            self.seq = max(self.seq, serving.seq)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.connected = False
        self.lost = True

    def read(self, values: dict[str, Value]) -> None:
        self.seq += 1
        payload = Telemetry(
            device=self.device,
            sensor=SENSOR,
            ts=time.time(),
            seq=self.seq,
            source=Source.EMULATED,
            values=values,
        ).encode()
        info = self.client.publish(self.telemetry_topic, payload, qos=1)
        self.pending[info.mid] = self.seq


QUANTITIES = reading_quantities(DRIVER)  # names, units and decimals of the driver's reading
BASE = {"temperature": 21.0, "humidity": 45.0, "pressure": 1013.25}


def _values(index: int, now: float) -> dict[str, Value]:
    """A plausible BME280 reading, in the driver's own quantities, units and resolution."""
    wobble = (index % 40) / 10 + ((now * 7 + index) % 10) / 100
    return {
        q.name: Value(value=round(BASE.get(q.name, 1.0) + wobble, q.decimals), unit=q.unit)
        for q in QUANTITIES
    }


def stand_in_worker(spec: dict[str, Any]) -> int:
    """Run `spec["devices"]`'s stand-ins until killed or stdin closes.

    Commands on stdin, one a line: `start` (begin reading), `stop` (no more readings; answer,
    once every reading in flight is acknowledged or after 5 s, with each device's last seq
    handed out and acknowledged). Answers are JSON lines on stdout.
    """
    topics = Topics()
    interval: float = spec["interval"]
    agents = [StandIn(d, topics, spec) for d in spec["devices"]]
    # Phases spread over the interval across every worker, as unsynchronised agents would be.
    phases = [interval * (spec["offset"] + i) / spec["total"] for i in range(len(agents))]
    selector = selectors.DefaultSelector()
    stdin = sys.stdin.fileno()
    os.set_blocking(stdin, False)
    selector.register(stdin, selectors.EVENT_READ, None)
    for agent in agents:
        agent.connect(spec["host"], spec["port"], spec["keepalive"])
        selector.register(agent.sock, selectors.EVENT_READ, agent)

    def answer(message: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    def lose(agent: StandIn) -> None:
        agent.lost = True
        agent.connected = False
        if agent.sock is not None:
            with contextlib.suppress(KeyError, ValueError):
                selector.unregister(agent.sock)
            agent.sock = None

    buffer = b""
    ready_sent = False
    reading = False
    silent = False  # after `stop`: nothing more from these agents
    stopping_until: float | None = None
    start = 0.0
    ticks = 0
    sent = skipped = 0
    next_sweep = time.monotonic() + 1.0
    deadline_ready = time.monotonic() + 60.0
    count = len(agents)
    while True:
        now = time.monotonic()
        timeout = max(0.0, next_sweep - now)
        if reading and count:
            due = start + (ticks // count) * interval + phases[ticks % count]
            timeout = min(timeout, max(0.0, due - now))
        if stopping_until is not None:
            timeout = min(timeout, 0.05)
        for key, _ in selector.select(timeout):
            if key.data is None:
                try:
                    chunk = os.read(stdin, 4096)
                except BlockingIOError:
                    continue
                if not chunk:
                    return 0  # the bench is gone
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    command = line.decode().strip()
                    if command == "start" and not reading:
                        reading = True
                        start = time.monotonic()
                        ticks = 0
                    elif command == "stop":
                        reading = False
                        silent = True
                        stopping_until = time.monotonic() + 5.0
                continue
            agent = key.data
            if agent.client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                lose(agent)
                continue
            if agent.client.want_write():
                agent.client.loop_write()
        now = time.monotonic()
        if reading:
            wall = time.time()
            while True:
                due = start + (ticks // count) * interval + phases[ticks % count]
                if due > now:
                    break
                agent = agents[ticks % count]
                ticks += 1
                if due < now - interval:
                    skipped += 1  # a missed beat is skipped, as the agent's loop does
                    continue
                if agent.connected:
                    agent.read(_values(ticks % count, wall))
                    if agent.client.want_write():
                        agent.client.loop_write()
                    sent += 1
        if now >= next_sweep:
            next_sweep = now + 1.0
            for agent in agents:
                if not agent.connected:
                    continue
                if agent.client.loop_misc() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    lose(agent)
                    continue
                if not silent and now >= agent.state_due:
                    agent.publish_state()  # the agent's state_interval refresh
                if agent.client.want_write():
                    agent.client.loop_write()
        if not ready_sent:
            born = sum(a.born for a in agents)
            if born == count or now > deadline_ready:
                ready_sent = True
                answer({"ready": born, "lost": sum(a.lost for a in agents)})
        if stopping_until is not None:
            in_flight = sum(1 for a in agents for s in a.pending.values() if s)
            if in_flight == 0 or now > stopping_until:
                stopping_until = None
                answer(
                    {
                        "stopped": {a.device: [a.seq, a.acked] for a in agents},
                        "in_flight": in_flight,
                        "sent": sent,
                        "skipped": skipped,
                        "connected": sum(a.connected for a in agents),
                    }
                )


class StandInProcess:
    """One worker process of stand-ins, driven over its stdin and stdout."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.devices: list[str] = spec["devices"]
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--stand-in", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        self._answers: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            with self._cond:
                self._answers.append(message)
                self._cond.notify_all()

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def wait_for(self, key: str, timeout: float) -> dict[str, Any] | None:
        def found() -> dict[str, Any] | None:
            return next((a for a in self._answers if key in a), None)

        with self._cond:
            self._cond.wait_for(lambda: found() is not None, timeout)
            return found()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)


# -- the outside observer ---------------------------------------------------------------------


@dataclass
class Seen:
    """What one subscriber received, with arrival times (time.monotonic())."""

    # device -> [(arrival, seq, source)]
    telemetry: dict[str, list[tuple[float, int, str]]] = field(default_factory=dict)
    retained: Counter[str] = field(default_factory=Counter)
    live: Counter[str] = field(default_factory=Counter)
    live_status: list[tuple[float, str, str, str]] = field(default_factory=list)
    live_twins: list[tuple[float, str]] = field(default_factory=list)  # (arrival, device)
    malformed: int = 0


class Observer:
    """A subscriber on the contract's topics, as any consumer of the fleet would be."""

    def __init__(self, host: str, port: int, name: str) -> None:
        self.topics = Topics()
        self.seen = Seen()
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.subscribed_at = 0.0
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"bench-{name}", protocol=mqtt.MQTTv5
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, *args: Any) -> None:
        topics = self.topics
        client.subscribe(
            [
                (topics.all_telemetry(), SubscribeOptions(qos=1)),
                (topics.all_status(), SubscribeOptions(qos=1)),
                (topics.all_state(), SubscribeOptions(qos=0)),
                (topics.all_twin(), SubscribeOptions(qos=0)),
            ]
        )

    def _on_subscribe(self, *args: Any) -> None:
        self.subscribed_at = time.monotonic()
        self.subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.monotonic()
        kind = msg.topic.rsplit("/", 2)
        with self.lock:
            seen = self.seen
            try:
                if kind[-2] == "telemetry":
                    reading = Telemetry.decode(bytes(msg.payload))
                    seen.telemetry.setdefault(reading.device, []).append(
                        (now, reading.seq, reading.source.value)
                    )
                elif kind[-1] == "status":
                    status = Status.decode(bytes(msg.payload))
                    label = f"status {status.state.value}"
                    if msg.retain:
                        seen.retained[label] += 1
                    else:
                        seen.live[label] += 1
                        seen.live_status.append(
                            (now, status.device, status.state.value, status.reason)
                        )
                elif msg.retain:
                    seen.retained[kind[-1]] += 1
                else:
                    seen.live[kind[-1]] += 1
                    if kind[-1] == "twin" and msg.payload:
                        device = TwinSummary.decode(bytes(msg.payload)).device
                        seen.live_twins.append((now, device))
            except ContractError:
                seen.malformed += 1

    def snapshot(self) -> dict[str, list[tuple[float, int, str]]]:
        with self.lock:
            return {d: list(r) for d, r in self.seen.telemetry.items()}

    def simulated_devices(self, after: float) -> int:
        with self.lock:
            return sum(
                any(at >= after and source == "simulated" for at, _, source in readings)
                for readings in self.seen.telemetry.values()
            )

    def count_since(self, after: float, until: float, source: str) -> int:
        with self.lock:
            return sum(
                1
                for readings in self.seen.telemetry.values()
                for at, _, src in readings
                if after <= at < until and src == source
            )

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# -- the gateway ------------------------------------------------------------------------------


def gateway_toml(path: Path, broker: MosquittoBroker, api_port: int, args: Any) -> None:
    lines = [
        "[mqtt]",
        f'host = "{broker.host}"',
        f"port = {broker.port}",
        "",
        "[server]",
        'host = "127.0.0.1"',
        f"port = {api_port}",
        "",
        "[observability]",
        'log_level = "INFO"',
        "",
    ]
    for device in device_ids(args.devices):
        lines += [
            "[[devices]]",
            f'id = "{device}"',
            f"[devices.sensors.{SENSOR}]",
            f'driver = "{DRIVER}"',
            f"interval = {args.interval}",
            'backend = "emulated"',
            "",
        ]
    path.write_text("\n".join(lines))


def api(port: int, route: str, timeout: float = 10.0) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{route}", timeout=timeout) as answer:
        return json.load(answer)


def wait_until(check: Callable[[], bool], timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return True
        except OSError:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)


def log_events(path: Path, since: float, until: float) -> tuple[Counter[str], list[float]]:
    """The gateway's log lines between two wall-clock times, counted by message; and the times
    at which it connected to the broker."""
    counts: Counter[str] = Counter()
    connects: list[float] = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
            at = datetime.fromisoformat(entry["ts"]).timestamp()
        except (ValueError, KeyError, TypeError):
            continue
        if not since <= at <= until:
            continue
        counts[f"{entry.get('level')}: {entry.get('msg')}"] += 1
        if entry.get("msg") == "connected to broker":
            connects.append(at)
    return counts, connects


# -- figures ----------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


@dataclass
class Streams:
    """The seq check of every stream across the failure."""

    handover_ok: int = 0
    handover_gaps: int = 0  # streams whose first simulated seq skips numbers
    handover_lost: int = 0  # numbers skipped there, over all streams
    handover_dups: int = 0  # streams whose first simulated seq repeats an agent's
    handover_repeated: int = 0
    sim_gaps: int = 0  # inside the simulated streams
    sim_dups: int = 0
    agent_after: int = 0  # agent readings after the failure (none expected)
    examples: list[str] = field(default_factory=list)


def check_streams(
    seen: dict[str, list[tuple[float, int, str]]], last_agent: dict[str, int], since: float
) -> Streams:
    result = Streams()
    for device, readings in seen.items():
        after = [(at, seq) for at, seq, src in readings if at >= since and src == "simulated"]
        result.agent_after += sum(
            1 for at, _, src in readings if at >= since and src != "simulated"
        )
        if not after:
            continue
        after.sort()
        first = after[0][1]
        last = last_agent.get(device, 0)
        if first == last + 1:
            result.handover_ok += 1
        elif first > last + 1:
            result.handover_gaps += 1
            result.handover_lost += first - last - 1
        else:
            result.handover_dups += 1
            result.handover_repeated += last - first + 1
        if first != last + 1 and len(result.examples) < 3:
            result.examples.append(f"{device}: agent's last {last}, first simulated {first}")
        for (_, a), (_, b) in itertools.pairwise(after):
            if b > a + 1:
                result.sim_gaps += 1
            elif b <= a:
                result.sim_dups += 1
    return result


def _fmt_seconds(values: Iterable[float]) -> str:
    values = list(values)
    if not values:
        return "-"
    return (
        f"min {min(values):.2f} s, p50 {statistics.median(values):.2f} s, "
        f"p99 {percentile(values, 99):.2f} s, max {max(values):.2f} s"
    )


# -- the run ----------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> None:
    persistence = args.persistence == "on"
    # Debian's mosquitto.conf: persistence true, autosave every 1800 s (mosquitto's default),
    # not on changes. MosquittoBroker's own persistence settings save after every change.
    extra = ["autosave_on_changes false", "autosave_interval 1800"] if persistence else []
    devices = device_ids(args.devices)
    rows: list[tuple[str, str]] = []
    notes: list[str] = []

    def row(name: str, value: str) -> None:
        rows.append((name, value))

    with (
        MosquittoBroker(persistence=persistence, extra_config=extra) as broker,
        tempfile.TemporaryDirectory(prefix="edgetwin-failover-") as tmp,
    ):
        before = Observer(broker.host, broker.port, "before")
        before.subscribed.wait(5)
        procs = max(1, min(args.agent_procs, len(devices)))
        slices = [devices[i::procs] for i in range(procs)]
        offsets = [0]
        for part in slices[:-1]:
            offsets.append(offsets[-1] + len(part))
        workers = [
            StandInProcess(
                {
                    "devices": part,
                    "host": broker.host,
                    "port": broker.port,
                    "keepalive": args.keepalive,
                    "interval": args.interval,
                    "boot": args.boot,
                    "offset": offset,
                    "total": len(devices),
                }
            )
            for part, offset in zip(slices, offsets, strict=True)
        ]
        t_setup = time.monotonic()
        born = sum((w.wait_for("ready", 90) or {}).get("ready", 0) for w in workers)
        row("agents' stand-ins connected, birth acknowledged", f"{born} / {len(devices)}")
        row("  connect + birth of all, in", f"{time.monotonic() - t_setup:.1f} s")
        for worker in workers:
            worker.send("start")

        api_port = free_port()
        config = Path(tmp) / "gateway.toml"
        gateway_toml(config, broker, api_port, args)
        log_path = Path(os.environ.get("FAILOVER_GATEWAY_LOG", Path(tmp) / "gateway.log"))
        log_file = log_path.open("w")
        gateway = subprocess.Popen(
            [sys.executable, "-m", "edgetwin", "gateway", "--config", str(config)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        try:
            t_gw = time.monotonic()
            online = wait_until(
                lambda: api(api_port, "/fleet")["by_presence"].get("online", 0) == len(devices),
                60,
                0.25,
            )
            fleet0 = api(api_port, "/fleet")
            row(
                "gateway: all devices online in its twin",
                f"{online}, {time.monotonic() - t_gw:.1f} s after its start; /fleet "
                f"{fleet0['by_presence']}, simulated {fleet0['simulated_devices']}",
            )

            # The gateway answers each agent's birth with a retained twin document.
            def twinned() -> int:
                with before.lock:
                    return len({d for _, d in before.seen.live_twins})

            twins = wait_until(lambda: twinned() >= len(devices), 60, 0.1)
            row(
                "  its twin documents published, for every device",
                f"{twinned()} devices ({before.seen.live['twin']} documents) "
                f"{time.monotonic() - t_gw:.1f} s after its start"
                + ("" if twins else " (bench's bound reached)"),
            )
            if persistence:
                pid = broker_pid()
                if pid is not None:
                    log = broker.log_path
                    assert log is not None
                    size = log.stat().st_size
                    os.kill(pid, signal.SIGUSR1)  # the periodic autosave, brought forward
                    saved = wait_until(
                        lambda: b"Saving in-memory" in log.read_bytes()[size:], 5, 0.05
                    )
                    notes.append(
                        "broker: persistence on, autosave_interval 1800; one save (SIGUSR1) "
                        f"with the fleet up: {'done' if saved else 'NOT confirmed in its log'}"
                    )

            # Warm-up: agents serve, the gateway follows their readings.
            sample = [*tree(gateway.pid)]
            gw0 = sum(cpu_seconds(p) for p in sample)
            ag0 = sum(cpu_seconds(w.process.pid) for w in workers)
            bpid = broker_pid()
            br0 = cpu_seconds(bpid) if bpid else 0.0
            me0 = cpu_seconds(os.getpid())
            w0 = time.monotonic()
            time.sleep(args.warmup)
            w1 = time.monotonic()
            window = w1 - w0
            gw_cpu = (sum(cpu_seconds(p) for p in sample) - gw0) / window
            ag_cpu = (sum(cpu_seconds(w.process.pid) for w in workers) - ag0) / window
            br_cpu = ((cpu_seconds(bpid) if bpid else 0.0) - br0) / window
            me_cpu = (cpu_seconds(os.getpid()) - me0) / window
            rate = before.count_since(w0, w1, "emulated") / window
            expected = len(devices) / args.interval
            row(
                f"agents' readings seen from outside, {window:.0f} s warm-up",
                f"{rate:,.0f}/s of {expected:,.0f}/s ({100 * rate / expected:.1f} %)",
            )
            row(
                "  CPU: stand-ins / gateway / broker / bench",
                f"{100 * ag_cpu:.1f} % / {100 * gw_cpu:.1f} % / {100 * br_cpu:.1f} % / "
                f"{100 * me_cpu:.1f} % of a core "
                f"({1e6 * ag_cpu / max(rate, 1):.0f} µs per stand-in reading)",
            )
            pss_warm = sum(pss_bytes(p) for p in tree(gateway.pid))

            # The failure.
            t_stop = time.monotonic()
            for worker in workers:
                worker.send("stop")
            last_agent: dict[str, int] = {}
            unacked = in_flight = skipped = 0
            for worker in workers:
                report = worker.wait_for("stopped", 10) or {}
                in_flight += report.get("in_flight", 0)
                skipped += report.get("skipped", 0)
                for device, (seq, acked) in report.get("stopped", {}).items():
                    last_agent[device] = acked
                    unacked += seq != acked

            def outside_caught_up() -> bool:
                seen = before.snapshot()
                return all(
                    max((s for _, s, _ in seen.get(d, [])), default=0) >= last
                    for d, last in last_agent.items()
                )

            caught_up = wait_until(outside_caught_up, 5, 0.05)
            seen_before = before.snapshot()
            last_outside = {
                d: max((s for _, s, src in r if src != "simulated"), default=0)
                for d, r in seen_before.items()
            }
            row(
                "agents stopped: last seq acknowledged",
                f"{len(last_agent)} streams, {unacked} with readings unacknowledged, "
                f"{skipped} beats skipped in all; seen from outside: "
                f"{'all' if caught_up else 'NOT all'}",
            )
            differ = sum(last_outside.get(d, 0) != s for d, s in last_agent.items())
            if differ:
                notes.append(f"{differ} streams: the outside saw another last seq than acked")

            if args.failure == "broker-restart":
                before.close()  # a fresh subscriber watches the restarted broker
            t_kill = time.monotonic()
            wall_kill = time.time()
            if args.failure == "broker-restart":
                if args.broker_stop == "kill":
                    broker.kill()
                else:
                    broker.stop()
                for worker in workers:
                    worker.kill()  # the agents vanish; their broker is already gone
                broker.start()
                t_up = time.monotonic()
                after = Observer(broker.host, broker.port, "after")
                after.subscribed.wait(5)
                row(
                    "agents stopped -> broker stopped",
                    f"{t_kill - t_stop:.2f} s (their last readings acknowledged, seen outside)",
                )
                row(
                    f"broker stopped ({args.broker_stop.upper()}) -> accepting again",
                    f"{t_up - t_kill:.3f} s",
                )
                row(
                    "  outside subscriber subscribed",
                    f"+{after.subscribed_at - t_up:.3f} s after the broker accepted",
                )
            else:
                for worker in workers:
                    worker.kill()  # the broker sees every socket close: last wills
                t_up = t_kill
                after = before
                row("agents killed (SIGKILL, broker running)", "times count from the kill")

            # Watch the take-over.
            fleet_2s: Any = None
            peak_pss = pss_warm
            f0 = sum(cpu_seconds(p) for p in tree(gateway.pid))
            deadline = t_up + args.timeout
            all_at: float | None = None
            while time.monotonic() < deadline:
                now = time.monotonic()
                if fleet_2s is None and now >= t_up + WITHIN:
                    try:
                        fleet_2s = api(api_port, "/fleet")
                    except OSError as exc:
                        fleet_2s = {"error": str(exc)}
                if all_at is None and after.simulated_devices(t_up) >= len(devices):
                    all_at = now
                if all_at is not None and now >= all_at + args.tail and fleet_2s is not None:
                    break
                peak_pss = max(peak_pss, sum(pss_bytes(p) for p in tree(gateway.pid)))
                time.sleep(0.1)
            t_end = time.monotonic()
            wall_end = time.time()
            fo_cpu = (sum(cpu_seconds(p) for p in tree(gateway.pid)) - f0) / (t_end - t_up)
            fleet_end = api(api_port, "/fleet")
            views = api(api_port, "/devices", timeout=30)
        finally:
            gateway.send_signal(signal.SIGTERM)
            try:
                gateway.wait(timeout=30)
            except subprocess.TimeoutExpired:
                gateway.kill()
                gateway.wait()
            log_file.close()
            for worker in workers:
                worker.kill()

        seen_after = after.snapshot()
        after_seen = after.seen
        after.close()

        # First simulated reading of each device, from the broker's return.
        firsts = {
            d: min(at for at, _, src in r if at >= t_up and src == "simulated")
            for d, r in seen_after.items()
            if any(at >= t_up and src == "simulated" for at, _, src in r)
        }
        delays = [at - t_up for at in firsts.values()]
        within = sum(1 for d in delays if d <= WITHIN)
        row(
            f"devices simulated within {WITHIN:.0f} s of the broker's return",
            f"{within} / {len(devices)}",
        )
        row(
            f"devices simulated within {args.timeout:.0f} s (the bench's bound)",
            f"{len(delays)} / {len(devices)}",
        )
        row("  first simulated reading, per device", _fmt_seconds(delays))
        if delays:
            marks = (0.5, 1.0, 1.5, 2.0, 3.0)
            row(
                "  devices simulated by " + " / ".join(f"{m:g}" for m in marks) + " s",
                " / ".join(str(sum(1 for d in delays if d <= m)) for m in marks),
            )
        streams = check_streams(seen_after, last_agent, t_up)
        row(
            "seq at the hand-over: first simulated == agent's last + 1",
            f"{streams.handover_ok} / {len(delays)} simulated streams",
        )
        row(
            "  gaps / duplicates at the hand-over",
            f"{streams.handover_gaps} streams ({streams.handover_lost} numbers lost) / "
            f"{streams.handover_dups} streams ({streams.handover_repeated} numbers repeated)",
        )
        row(
            "  gaps / duplicates inside the simulated streams",
            f"{streams.sim_gaps} / {streams.sim_dups}",
        )
        if streams.examples:
            row("  e.g.", "; ".join(streams.examples))
        row("agent readings after the failure (none expected)", str(streams.agent_after))

        # Evidence: what the restarted broker holds, what the gateway says, what it logged.
        if args.failure == "broker-restart":
            row(
                "restarted broker's retained documents",
                ", ".join(f"{k} {v}" for k, v in sorted(after_seen.retained.items())) or "none",
            )
        statuses = Counter(
            f"{state} ({reason})" for at, _, state, reason in after_seen.live_status if at >= t_up
        )
        arrivals = [at - t_up for at, _, _, _ in after_seen.live_status if at >= t_up]
        row(
            "statuses published live after the failure",
            ", ".join(f"{k} x{v}" for k, v in sorted(statuses.items()))
            + (f", seen from +{min(arrivals):.2f} s to +{max(arrivals):.2f} s" if arrivals else "")
            or "none",
        )
        twins_after = [(at - t_up, d) for at, d in after_seen.live_twins if at >= t_up]
        row(
            "twin documents published after the failure",
            f"{len(twins_after)} for {len({d for _, d in twins_after})} devices"
            + (
                f", seen from +{min(twins_after)[0]:.2f} s to +{max(twins_after)[0]:.2f} s"
                if twins_after
                else ""
            ),
        )
        row(f"gateway GET /fleet at +{WITHIN:.0f} s", _fleet(fleet_2s))
        row("gateway GET /fleet at the end", _fleet(fleet_end))
        presence = Counter(v["presence"] for v in views)
        served = Counter(str(v["served_by"]) for v in views)
        row(
            "gateway GET /devices at the end",
            f"presence {dict(presence)}, served_by {dict(served)}",
        )
        if views:
            sample_view = views[0]
            last = sample_view["sensors"].get(SENSOR, {}).get("last") or {}
            row(
                f"  {sample_view['id']}",
                f"presence {sample_view['presence']}, boot {sample_view['boot']}, "
                f"served_by {sample_view['served_by']}, simulated {sample_view['simulated']}, "
                f"last seq {last.get('seq')} ({last.get('source')}), last_seen "
                f"{time.time() - (sample_view['last_seen'] or 0):.0f} s ago",
            )
        events, connects = log_events(log_path, wall_kill, wall_end)
        back = [c for c in connects if c >= wall_kill]
        if back and args.failure == "broker-restart":
            # log times are wall clock; the broker's return in wall clock:
            wall_up = wall_kill + (t_up - t_kill)
            row("gateway reconnected", f"{back[0] - wall_up:+.2f} s from the broker's return")
        row(
            "gateway log after the failure",
            "; ".join(f"{k} x{v}" for k, v in events.most_common(6)) or "nothing",
        )
        row(
            "gateway PSS (process tree)",
            f"{pss_warm / 2**20:.0f} MB agents serving, peak {peak_pss / 2**20:.0f} MB after",
        )
        row(
            "gateway CPU",
            f"{100 * gw_cpu:.1f} % of a core agents serving (their {rate:,.0f} readings/s in), "
            f"{100 * fo_cpu:.1f} % after the failure",
        )
        if after_seen.malformed:
            notes.append(f"{after_seen.malformed} messages refused by the contract")
        if args.log_dir is not None:
            args.log_dir.mkdir(parents=True, exist_ok=True)
            (args.log_dir / "gateway.log").write_text(log_path.read_text(errors="replace"))
            (args.log_dir / "mosquitto.log").write_text(broker.log_text())
            notes.append(f"logs kept in {args.log_dir}")

    title = (
        f"failover of {len(devices)} devices ({SENSOR}: {DRIVER} every {args.interval:g} s), "
        f"failure: {args.failure}"
    )
    if args.failure == "broker-restart":
        title += f" ({args.broker_stop}, persistence {args.persistence})"
    print(title)
    width = max(len(name) for name, _ in rows) + 2
    for name, value in rows:
        print(f"{name:<{width}}{value}")
    for note in notes:
        print(f"note: {note}")


def _fleet(summary: Any) -> str:
    if not isinstance(summary, dict) or "by_presence" not in summary:
        return str(summary)
    return (
        f"by_presence {summary['by_presence']}, simulated devices "
        f"{summary['simulated_devices']}, streams {summary['simulated_streams']}"
    )


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--stand-in":
        return stand_in_worker(json.loads(sys.argv[2]))
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument("--devices", type=int, default=1000, help="manifest devices (1000)")
    parser.add_argument(
        "--interval", type=float, default=1.0, help="seconds between a device's readings (1)"
    )
    parser.add_argument(
        "--persistence",
        choices=("on", "off"),
        default="on",
        help="the broker's persistence: on as Debian's package runs it (default), or off",
    )
    parser.add_argument(
        "--failure",
        choices=("broker-restart", "agents-killed"),
        default="broker-restart",
        help="what makes the agents vanish (default: a broker restart)",
    )
    parser.add_argument(
        "--broker-stop",
        choices=("kill", "term"),
        default="kill",
        help="how the broker goes down: SIGKILL, no last will delivered (default), or SIGTERM",
    )
    parser.add_argument("--warmup", type=float, default=10.0, help="agents serving, s (10)")
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="bound on the wait for simulation, s (30)"
    )
    parser.add_argument(
        "--tail", type=float, default=5.0, help="watched after the last device is simulated (5)"
    )
    parser.add_argument("--keepalive", type=int, default=30, help="the agents' keepalive, s (30)")
    parser.add_argument("--boot", type=int, default=1, help="the agents' boot number (1)")
    parser.add_argument(
        "--agent-procs", type=int, default=1, help="processes for the stand-ins (1)"
    )
    parser.add_argument(
        "--log-dir", type=Path, default=None, help="keep the gateway's and broker's logs here"
    )
    args = parser.parse_args()
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
