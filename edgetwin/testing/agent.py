"""A real edgetwin agent on emulated chips, started from code, with its chips breakable.

`EmulatedAgent` runs the agent of `edgetwin agent` (edgetwin.agent.runtime) either on a thread
of the caller (fast to start, its objects reachable) or as its own process (`python -m
edgetwin agent --config FILE`, which can be killed with SIGKILL like a board losing power).
Either way it connects through an `MqttEndpoint`, keeps its state directory (outbox, boot
counter, applied config) in a temporary directory unless given one, and lets the caller:

- break a sensor's emulated I2C chip while it runs (NACK, EIO, unplug/replug, stuck bits,
  corrupted bytes), in both modes: in a process through the command file of
  `edgetwin.hardware.fault_channel`;
- read its outbox (`OutboxView`: what waits for the broker, by seq) at any moment;
- see the documents it publishes about itself (status, state, reported config).

Example::

    from edgetwin.testing.agent import EmulatedAgent
    from edgetwin.testing._toml import toml_document
from edgetwin.testing.endpoint import MqttEndpoint

    config = {
        "agent": {"device_id": "pi-01"},
        "sensors": {"env": {"driver": "bme280", "address": 0x76, "interval": 0.2}},
    }
    with EmulatedAgent(MqttEndpoint("127.0.0.1", 1883), config) as agent:
        agent.nack("env")                      # the chip stops acknowledging
        agent.wait_for_state(lambda s: s.sensors["env"].health == "missing")
        agent.clear_faults("env")
        print(agent.outbox.pending())
"""

from __future__ import annotations

import copy
import errno
import logging
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import paho.mqtt.client as mqtt

from edgetwin.agent.config import AgentConfig
from edgetwin.agent.contract import (
    ContractError,
    DeviceState,
    Presence,
    ReportedConfig,
    Status,
    Telemetry,
)
from edgetwin.agent.metrics import AgentMetrics
from edgetwin.agent.runtime import Agent
from edgetwin.hardware import EmulatedBackend, RealBackend
from edgetwin.hardware.fault_channel import (
    FAULTS_ENV,
    UNTIL_CLEARED,
    BusFault,
    FaultChannel,
    apply_fault,
)
from edgetwin.hardware.registry import check_settings
from edgetwin.hardware.signals import derive_seed
from edgetwin.testing._toml import toml_document
from edgetwin.testing.endpoint import MqttEndpoint
from edgetwin.testing.process import start_edgetwin, stop_process

__all__ = [
    "TEST_DEFAULTS",
    "AgentThread",
    "EmulatedAgent",
    "OutboxView",
    "StoredReading",
    "agent_config_toml",
    "agent_thread",
]

log = logging.getLogger(__name__)

Mode = Literal["thread", "process"]

TEST_DEFAULTS: Mapping[str, Mapping[str, Any]] = {
    # A broker that goes away is noticed in seconds and reconnected to at once, and a reading
    # is published a tenth of a second after it is taken, not a second (the production
    # commit_interval, chosen to spare SD cards).
    "mqtt": {"keepalive": 2, "reconnect_min_delay": 0.2, "reconnect_max_delay": 1.0},
    "outbox": {"commit_interval": 0.1},
}
"""Settings an `EmulatedAgent` uses where its config gives none: quick to notice and recover
from a lost broker, quick to publish. Any key of the config overrides them."""

DEFAULT_SENSORS: Mapping[str, Mapping[str, Any]] = {
    "env": {"driver": "bme280", "address": 0x76, "interval": 1.0},
}
"""The sensors of an agent whose config names none: one BME280 read every second."""


# -- the agent's config as a file ------------------------------------------------------------


def agent_config_toml(config: Mapping[str, Any]) -> str:
    """An agent config file's text for `config`, a dict in the file's own structure.

    `config` maps section names (`agent`, `mqtt`, `outbox`, `observability`, `sensors`) to
    their keys; tables inside a section (each sensor's, `tls`, `pins`, `options`) become inline
    tables. Nothing is checked here: `AgentConfig.from_builtins(config)` does.
    """
    return toml_document(config)


# -- an agent on a thread ---------------------------------------------------------------------


class AgentThread:
    """`edgetwin.agent.runtime.Agent` running on a daemon thread of this process.

    Starts in a fraction of a second (no interpreter to launch) and leaves the `Agent` object
    reachable as `.agent`. `emulated_backend` and `real_backend` are the agent's hardware; pass
    your own `EmulatedBackend` to reach the fake buses its drivers use. `metrics` replaces the
    agent's metrics before its loop starts.
    """

    def __init__(
        self,
        config: AgentConfig,
        emulated_backend: EmulatedBackend | None = None,
        real_backend: RealBackend | None = None,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self.config = config
        self._emulated = emulated_backend
        self._real = real_backend
        self._metrics = metrics
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._agent: Agent | None = None
        self.error: BaseException | None = None
        """What ended the agent's loop, if an exception did."""

    @property
    def agent(self) -> Agent:
        """The running agent; RuntimeError before `start()`."""
        if self._agent is None:
            raise RuntimeError("the agent thread has not been started")
        return self._agent

    @property
    def alive(self) -> bool:
        """Whether the agent's loop is still running."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> Agent:
        """Build the agent (which opens its outbox: StateDirError if it cannot) and start its
        loop; returns at once, before it has connected."""
        agent = Agent(self.config, emulated_backend=self._emulated, real_backend=self._real)
        if self._metrics is not None:
            agent.metrics = (
                self._metrics
            )  # before the loop starts: retained documents arrive at once
        self._agent = agent
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"agent-{self.config.agent.device_id}", daemon=True
        )
        self._thread.start()
        return agent

    def _run(self) -> None:
        try:
            self.agent.run(self._stop)
        except BaseException as exc:
            self.error = exc
            log.exception("agent loop died", extra={"device": self.config.agent.device_id})

    def stop(self, timeout: float = 20) -> None:
        """Ask the loop to stop (a clean shutdown: outbox delivered within the agent's
        `shutdown_timeout`, offline status published) and wait for it; RuntimeError if it does
        not end within `timeout` seconds."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            if self._thread.is_alive():
                raise RuntimeError(f"agent {self.config.agent.device_id} did not stop")


@contextmanager
def agent_thread(
    config: AgentConfig,
    emulated_backend: EmulatedBackend | None = None,
    real_backend: RealBackend | None = None,
    metrics: AgentMetrics | None = None,
) -> Iterator[Agent]:
    """An `AgentThread` for a `with` block: yields the running `Agent` and stops it on exit.

    Raises RuntimeError on exit if the agent's loop had died on its own meanwhile, so a test
    that never looks cannot pass over a crashed agent.
    """
    runner = AgentThread(config, emulated_backend, real_backend, metrics)
    agent = runner.start()
    try:
        yield agent
        if not runner.alive:
            raise RuntimeError("the agent loop died") from runner.error
    finally:
        runner.stop()


# -- the outbox, read from outside ------------------------------------------------------------


@dataclass(frozen=True)
class StoredReading:
    """A reading committed to the agent's outbox and not yet acknowledged by the broker."""

    id: int
    sensor: str
    seq: int
    topic: str
    telemetry: Telemetry
    created: float
    """Wall-clock time (time.time()) at which the reading entered the outbox."""


class OutboxView:
    """A read-only look into an agent's SQLite outbox at `path`, safe while the agent runs.

    Each call opens its own read-only connection, so it sees the agent's last commit and never
    holds a lock the agent waits for. It sees committed readings only: those taken within the
    last `commit_interval` are still in the agent's memory, and those acknowledged since the
    last commit are still listed (the agent deletes them at its next commit).
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection | None]:
        if not self.path.exists():
            yield None
            return
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5)
        try:
            yield conn
        finally:
            conn.close()

    def pending(self) -> int:
        """How many readings wait in the outbox for the broker."""
        with self._connect() as conn:
            if conn is None:
                return 0
            return int(conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def readings(self, sensor: str | None = None) -> list[StoredReading]:
        """The waiting readings, oldest first; only `sensor`'s if given."""
        query = "SELECT id, stream, seq, topic, payload, created FROM outbox"
        params: tuple[str, ...] = ()
        if sensor is not None:
            query += " WHERE stream = ?"
            params = (sensor,)
        with self._connect() as conn:
            if conn is None:
                return []
            rows = conn.execute(query + " ORDER BY id", params).fetchall()
        return [
            StoredReading(id, stream, seq, topic, Telemetry.decode(payload), created)
            for id, stream, seq, topic, payload, created in rows
        ]

    def last_seq(self, sensor: str) -> int:
        """The last seq number handed out to `sensor`'s stream (0 if none): survives restarts."""
        with self._connect() as conn:
            if conn is None:
                return 0
            row = conn.execute("SELECT last_seq FROM streams WHERE stream = ?", (sensor,))
            found = row.fetchone()
        return int(found[0]) if found else 0

    def _meta(self, key: str) -> int:
        with self._connect() as conn:
            if conn is None:
                return 0
            found = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(found[0]) if found else 0

    @property
    def boot(self) -> int:
        """The agent's boot counter: how many times it has started on this state directory."""
        return self._meta("boot")

    @property
    def dropped(self) -> int:
        """Readings dropped, oldest first, because the outbox was full."""
        return self._meta("dropped")


# -- the documents an agent publishes about itself ---------------------------------------------


@dataclass(frozen=True)
class _Received:
    at: float  # time.monotonic() on arrival
    document: Status | DeviceState | ReportedConfig


class _Documents:
    """A subscription to one device's status, state and reported documents, kept in order."""

    def __init__(self, endpoint: MqttEndpoint, topics: dict[str, type[Any]]) -> None:
        self._topics = topics
        self._received: list[_Received] = []
        self._changed = threading.Condition()
        self._client = endpoint.paho_client()
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.reconnect_delay_set(1, 2)
        self._client.connect_async(endpoint.host, endpoint.port, keepalive=10)
        self._client.loop_start()

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        client.subscribe([(topic, 1) for topic in self._topics])

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        kind = self._topics.get(message.topic)
        if kind is None or not message.payload:
            return
        try:
            document = kind.decode(message.payload)
        except ContractError:
            return
        with self._changed:
            self._received.append(_Received(time.monotonic(), document))
            self._changed.notify_all()

    def latest(self, kind: type[Any]) -> Any:
        with self._changed:
            for received in reversed(self._received):
                if isinstance(received.document, kind):
                    return received.document
        return None

    def wait_for(
        self, kind: type[Any], match: Callable[[Any], bool], after: float, timeout: float
    ) -> Any:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for received in self._received:
                    if (
                        received.at >= after
                        and isinstance(received.document, kind)
                        and match(received.document)
                    ):
                        return received.document
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no matching {kind.__name__} document within {timeout} s")
                self._changed.wait(left)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


# -- the agent --------------------------------------------------------------------------------


def _merged(defaults: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = copy.deepcopy(dict(defaults))
    for section, keys in config.items():
        if isinstance(keys, Mapping) and section != "sensors":
            merged[section] = {**merged.get(section, {}), **copy.deepcopy(dict(keys))}
        else:
            merged[section] = copy.deepcopy(keys)
    return merged


class EmulatedAgent:
    """An edgetwin agent on emulated chips, connected through `endpoint`.

    `config` is the agent TOML's structure as a dict: `agent` (`device_id` required;
    `state_dir` optional), `sensors` ({name: {driver, address, interval, ...}}; one BME280
    named "env" if absent), `outbox`, `observability`, and `mqtt` keys beyond the endpoint's
    (`prefix`, `topic`, `qos`, ...). The broker address, protocol, credentials and TLS always
    come from `endpoint`. `TEST_DEFAULTS` fill what the config leaves out, and every sensor
    without a `backend` gets "emulated", so the agent never touches a real bus by accident.

    `mode` is "thread" (the agent on a thread of this process) or "process" (`python -m
    edgetwin agent`: `kill()` is a real SIGKILL). `state_dir` wins over the config's; with
    neither, a temporary directory is used and removed by `close()`. `env` adds environment
    variables for the process. `observer` is the identity that follows the agent's status and
    state documents (default `endpoint`; on a broker with the device ACL, whose device
    identities may not read their own documents back, its reader identity).

    Nothing runs until `start()` (or `with`). The config is checked at construction:
    edgetwin.agent.config.ConfigError says what is wrong where.
    """

    def __init__(
        self,
        endpoint: MqttEndpoint,
        config: Mapping[str, Any],
        *,
        mode: Mode = "thread",
        state_dir: Path | None = None,
        env: Mapping[str, str] | None = None,
        observer: MqttEndpoint | None = None,
    ) -> None:
        if mode not in ("thread", "process"):
            raise ValueError(f"mode must be 'thread' or 'process', not {mode!r}")
        self.endpoint = endpoint
        self._observer = observer or endpoint
        self.mode: Mode = mode
        self._env = dict(env or {})
        self._workdir = tempfile.TemporaryDirectory(prefix="edgetwin-agent-")
        work = Path(self._workdir.name)
        merged = _merged(TEST_DEFAULTS, config)
        merged["mqtt"] = endpoint.mqtt_settings(**merged.get("mqtt", {}))
        merged.setdefault("sensors", copy.deepcopy(dict(DEFAULT_SENSORS)))
        for settings in merged["sensors"].values():
            settings.setdefault("backend", "emulated")
        section = merged.setdefault("agent", {})
        if state_dir is not None:
            section["state_dir"] = str(state_dir)
        section.setdefault("state_dir", str(work / "state"))
        self.config = AgentConfig.from_builtins(merged)
        """The validated configuration the agent runs with."""
        self.config_file = work / "agent.toml"
        """The config file a process-mode agent reads (written in both modes, for reference)."""
        self.config_file.write_text(agent_config_toml(merged), encoding="utf-8")
        self.log_file = work / "agent.log"
        """Where a process-mode agent's stdout and stderr (JSON logs) go."""
        self.device_id: str = self.config.agent.device_id
        assert self.config.agent.state_dir is not None
        self.state_dir: Path = self.config.agent.state_dir
        self.outbox = OutboxView(self.state_dir / "outbox.db")
        """The agent's outbox, readable at any time, running or not."""
        self.topics = self.config.mqtt.topics()
        self._fault_channel = FaultChannel(work / "faults.jsonl") if mode == "process" else None
        self._backend: EmulatedBackend | None = None
        self._runner: AgentThread | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._documents: _Documents | None = None
        self._started_at = 0.0
        self.exit_code: int | None = None
        """The process's exit status after `stop()` or `kill()` (process mode)."""

    # -- life cycle ------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the agent's loop (thread mode) or process is alive."""
        if self._runner is not None:
            return self._runner.alive
        return self._process is not None and self._process.poll() is None

    @property
    def agent(self) -> Agent:
        """The `Agent` object of a thread-mode agent; RuntimeError in process mode or when
        stopped."""
        if self._runner is None:
            raise RuntimeError("no agent object: not running on a thread")
        return self._runner.agent

    @property
    def process(self) -> subprocess.Popen[bytes]:
        """The agent's process (process mode); RuntimeError otherwise or when stopped."""
        if self._process is None:
            raise RuntimeError("no agent process: not running as a process")
        return self._process

    def start(self, *, wait: bool = True, timeout: float = 20) -> Self:
        """Start the agent; with `wait`, return once its birth (online status) is on the broker.

        Its sensors are open by then, so faults can be injected. TimeoutError if the birth does
        not come within `timeout` seconds (the broker is down, or the agent failed: see
        `log_file` in process mode).
        """
        if self.running:
            raise RuntimeError(f"agent {self.device_id} is already running")
        if self._documents is None:
            self._documents = _Documents(
                self._observer,
                {
                    self.topics.status(self.device_id): Status,
                    self.topics.state(self.device_id): DeviceState,
                    self.topics.reported(self.device_id): ReportedConfig,
                },
            )
        previous_boot = self.outbox.boot
        self._started_at = time.monotonic()
        self.exit_code = None
        if self.mode == "thread":
            self._backend = EmulatedBackend(seed=derive_seed("agent", self.device_id))
            self._runner = AgentThread(self.config, emulated_backend=self._backend)
            self._runner.start()
        else:
            assert self._fault_channel is not None
            self._log = self.log_file.open("ab")
            self._process = start_edgetwin(
                ["agent", "--config", str(self.config_file)],
                env={**self._env, FAULTS_ENV: str(self._fault_channel.path)},
                log_file=self._log,
            )
        if wait:
            try:
                self.wait_for_status(
                    lambda s: s.state == Presence.ONLINE and s.boot > previous_boot,
                    timeout=timeout,
                )
            except TimeoutError:
                if self.mode == "process" and not self.running:
                    raise RuntimeError(
                        f"agent process exited with {self.process.returncode}: "
                        f"{self.log_file.read_text(errors='replace')[-2000:]}"
                    ) from None
                raise
        return self

    def stop(self, timeout: float = 20) -> None:
        """Stop the agent cleanly, as SIGTERM does: what the outbox holds is delivered within
        `shutdown_timeout`, the offline status is published. Does nothing if not running."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            try:
                runner.stop(timeout)
            finally:
                self._close_backend()
            if runner.error is not None:
                raise RuntimeError("the agent loop had died") from runner.error
        elif self._process is not None:
            self._end_process(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL the agent's process: no shutdown at all, as when a board loses power; the
        broker publishes its last will. Process mode only: a thread cannot be killed."""
        if self.mode != "process":
            raise RuntimeError("kill() needs mode='process': a thread cannot be killed")
        if self._process is not None:
            self._end_process(signal.SIGKILL, 15)

    def restart(self, *, kill: bool = False, wait: bool = True, timeout: float = 20) -> Self:
        """Stop (or with `kill`, SIGKILL) the agent and start it again on the same state
        directory: same outbox, so its streams carry on from their last committed seq."""
        if kill:
            self.kill()
        else:
            self.stop()
        return self.start(wait=wait, timeout=timeout)

    def close(self) -> None:
        """Stop the agent if it runs, end the document subscription, and remove the temporary
        directories (the state directory too, unless it was given)."""
        try:
            if self.mode == "process" and self._process is not None:
                self._end_process(signal.SIGTERM, 20)
            else:
                self.stop()
        finally:
            if self._documents is not None:
                self._documents.close()
                self._documents = None
            self._workdir.cleanup()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def log_text(self) -> str:
        """What a process-mode agent has written to stdout and stderr so far (its JSON logs,
        and the reason when it failed to start); empty in thread mode or after `close()`."""
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def _end_process(self, sig: int, timeout: float) -> None:
        process, self._process = self._process, None
        assert process is not None
        try:
            self.exit_code, _ = stop_process(process, sig, timeout)
        finally:
            self._log.close()

    def _close_backend(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None

    # -- documents ------------------------------------------------------------------------------

    def status(self) -> Status | None:
        """The last status document seen (online/offline, boot, session), or None."""
        return self._latest(Status)  # type: ignore[no-any-return]

    def state(self) -> DeviceState | None:
        """The last state document seen (each sensor's health and reason, outbox depth)."""
        return self._latest(DeviceState)  # type: ignore[no-any-return]

    def reported(self) -> ReportedConfig | None:
        """The last reported-config document seen (desired config applied or rejected)."""
        return self._latest(ReportedConfig)  # type: ignore[no-any-return]

    def _latest(self, kind: type[Any]) -> Any:
        return None if self._documents is None else self._documents.latest(kind)

    def wait_for_status(self, match: Callable[[Status], bool], timeout: float = 10) -> Status:
        """The first status document since the last `start()` for which `match` is true,
        waiting up to `timeout` seconds for it (TimeoutError)."""
        return self._wait(Status, match, timeout)  # type: ignore[no-any-return]

    def wait_for_state(
        self, match: Callable[[DeviceState], bool], timeout: float = 10
    ) -> DeviceState:
        """The first state document since the last `start()` for which `match` is true,
        e.g. ``lambda s: s.sensors["env"].health == "missing"``; TimeoutError after `timeout`."""
        return self._wait(DeviceState, match, timeout)  # type: ignore[no-any-return]

    def wait_for_reported(
        self, match: Callable[[ReportedConfig], bool], timeout: float = 10
    ) -> ReportedConfig:
        """The first reported-config document since the last `start()` for which `match` is
        true, e.g. ``lambda r: r.applied_version == 2``; TimeoutError after `timeout`."""
        return self._wait(ReportedConfig, match, timeout)  # type: ignore[no-any-return]

    def _wait(self, kind: type[Any], match: Callable[[Any], bool], timeout: float) -> Any:
        if self._documents is None:
            raise RuntimeError("the agent has not been started")
        return self._documents.wait_for(kind, match, self._started_at, timeout)

    # -- bus faults -----------------------------------------------------------------------------

    def nack(self, sensor: str, count: int | None = None) -> None:
        """The sensor's chip stops acknowledging: for `count` transfers, or until
        `clear_faults`. The agent reports the sensor missing ("Remote I/O error")."""
        self._inject(sensor, "nack", count=count or UNTIL_CLEARED)

    def eio(self, sensor: str, count: int | None = None) -> None:
        """Transfers to the sensor's chip fail with EIO: for `count` transfers, or until
        `clear_faults`. The agent reports the sensor faulted ("Input/output error")."""
        self._inject(sensor, "error", count=count or UNTIL_CLEARED, errno_code=errno.EIO)

    def unplug(self, sensor: str) -> None:
        """Pull the sensor's cable: its chip answers nothing (missing) until `replug`."""
        self._inject(sensor, "unplug")

    def replug(self, sensor: str) -> None:
        """Plug the sensor's chip back in; it powers up again, as after a real replug."""
        self._inject(sensor, "replug")

    def stick_bits(self, sensor: str, *, and_mask: int = 0xFF, or_mask: int = 0x00) -> None:
        """Every byte read from the sensor's chip becomes `(byte & and_mask) | or_mask` until
        `clear_faults`: or_mask=0xFF is a chip stuck at all ones (reported faulted)."""
        self._inject(sensor, "stick", and_mask=and_mask, or_mask=or_mask)

    def corrupt_reads(self, sensor: str, count: int = 1, mask: int = 0x01) -> None:
        """XOR `mask` into the next `count` bytes read from the sensor's chip (noise on SDA)."""
        self._inject(sensor, "corrupt", count=count, mask=mask)

    def clear_faults(self, sensor: str) -> None:
        """End every fault on the sensor's chip and plug it back in if it was unplugged."""
        self._inject(sensor, "clear")

    def _inject(self, sensor: str, kind: Any, **arguments: int) -> None:
        # A thread-mode agent knows its running sensor set, a desired config's sensors included;
        # a process is known by the config it was started with.
        running = self._runner.agent.sensor_settings() if self._runner is not None else {}
        settings = running.get(sensor) or self.config.sensors.get(sensor)
        if settings is None:
            raise KeyError(f"agent {self.device_id} has no sensor {sensor!r}")
        info = check_settings(settings.driver, address=settings.address)
        if info.interface != "i2c":
            raise ValueError(
                f"sensor {sensor!r} ({settings.driver}) is a {info.interface} sensor: bus faults "
                "are injected into emulated I2C chips only"
            )
        address = settings.address if settings.address is not None else info.default_address
        assert address is not None
        fault = BusFault(kind=kind, bus=settings.bus, address=address, **arguments)
        if self._fault_channel is not None:
            if not self.running:
                raise RuntimeError(f"agent {self.device_id} is not running")
            self._fault_channel.send(fault)
        else:
            if self._backend is None:
                raise RuntimeError(f"agent {self.device_id} is not running")
            apply_fault(fault, self._backend)
