"""The agent's main loop.

One thread reads the sensors on absolute deadlines and writes each reading to the durable
outbox; the publisher moves committed readings to the broker and removes them once
acknowledged; desired configuration from the gateway is validated and applied between two
readings, atomically. paho's network thread hands incoming messages to the loop and never acts
on them; it publishes the birth documents on connect, and at each acknowledgement the
publisher settles the reading and sends the next ones on that thread (agent/publisher.py).
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import logging
import os
import queue
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from edgetwin.agent.commands import command_desk
from edgetwin.agent.config import AgentConfig
from edgetwin.agent.contract import (
    ContractError,
    DesiredConfig,
    DeviceState,
    Presence,
    ReportedConfig,
    SensorBackend,
    SensorHealth,
    SensorSettings,
    SensorState,
    Source,
    Status,
    Telemetry,
    TwinSummary,
    Value,
)
from edgetwin.agent.desired import AlreadyApplied, DesiredStore, Rejection, validate_desired
from edgetwin.agent.homeassistant import AGENT_ORIGIN, AgentDiscovery, DeviceDescription, Discovery
from edgetwin.agent.metrics import AgentMetrics, NoMetrics, PrometheusMetrics
from edgetwin.agent.mqtt import Delivery, Message, MqttLink, PublishError, Will
from edgetwin.agent.outbox import Outbox, OutboxError
from edgetwin.agent.outputs import MARKER_NAME, Hold, OutputBank
from edgetwin.agent.publisher import OutboxPublisher
from edgetwin.agent.sensors import open_configured
from edgetwin.agent.systemd import Notifier
from edgetwin.agent.tracing import Tracing, setup_tracing
from edgetwin.hardware import (
    BackendKind,
    EmulatedBackend,
    HardwareError,
    Health,
    Reading,
    RealBackend,
    Sensor,
)
from edgetwin.hardware.fault_channel import FaultReceiver
from edgetwin.hardware.sensor import Clock
from edgetwin.hardware.signals import derive_seed

if TYPE_CHECKING:
    from opentelemetry.context import Context

log = logging.getLogger(__name__)

IDLE_WAIT = 1.0  # seconds the loop sleeps at most, so shutdown and watchdog stay prompt
RETAINED_GRACE = 0.5  # seconds after connecting by which retained messages have arrived
# Longest wait between two commit attempts while the state directory refuses writes: a full
# disk is retried often enough to notice soon that space came back, and not so often that a
# failing card is hammered.
STORAGE_RETRY_MAX = 10.0
# QoS 1 readings sent unstored (see `Agent._commit`) that may await their PUBACK at once. The
# publisher leaves these places free in the broker's Receive Maximum, beside those of the
# agent's own documents: mosquitto refuses a publish beyond it (quota exceeded), others
# disconnect. One: a reading per round trip is more than live readings need, and each place
# is taken from the backlog drain's window (17 of mosquitto's default 20, now 16).
UNSTORED_INFLIGHT = 1


class StateDirError(Exception):
    """The state directory cannot be used at start-up: read-only, not a directory, full."""


def check_state_dir(path: Path) -> None:
    """Make the directory and prove it takes a byte, or say why not in one StateDirError.

    At start-up, a read-only mount, a path under a regular file or a full disk is not
    something a restart cures; the agent stops with the path and the cause instead of a
    traceback from deep inside SQLite.
    """
    try:
        if path.exists() and not path.is_dir():
            raise StateDirError(f"state directory {path}: not a directory")
        path.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=path, prefix=".write-probe-")
        try:
            os.write(handle, b"\0")
            os.fsync(handle)
        finally:
            os.close(handle)
            os.unlink(probe)
    except OSError as exc:
        cause = exc.strerror or str(exc)
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(path) else ""
        raise StateDirError(f"state directory {path}: {cause}{where}") from exc


def agent_version() -> str:
    try:
        return version("edgetwin")
    except PackageNotFoundError:
        return "0+unknown"


def resolve_state_dir(
    configured: Path | None, device: str, environ: dict[str, str] | None = None
) -> Path:
    """The configured directory, else systemd's StateDirectory, else the user's XDG state."""
    env = dict(os.environ) if environ is None else environ
    if configured is not None:
        return configured
    if "STATE_DIRECTORY" in env:
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    base = Path(env.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "edgetwin-agent" / device


@dataclass
class SensorSlot:
    """One configured sensor: its settings and its driver once opened."""

    name: str
    settings: SensorSettings
    sensor: Sensor | None = None
    missing_reason: str | None = "not opened yet"
    backend: BackendKind = BackendKind.EMULATED

    def state(self) -> SensorState:
        if self.sensor is None:
            return SensorState(
                health=SensorHealth.MISSING, backend=self.backend.value, reason=self.missing_reason
            )
        status = self.sensor.status
        return SensorState(
            health=SensorHealth(status.health.value),
            backend=status.backend.value,
            reason=status.reason,
        )

    def close(self) -> None:
        if self.sensor is not None:
            self.sensor.close()
            self.sensor = None


@dataclass(order=True)
class _Due:
    deadline: float
    generation: int = field(compare=False)
    name: str = field(compare=False)


class Agent:
    def __init__(  # noqa: PLR0915 - every part of the agent is made and wired here, in one place
        self,
        config: AgentConfig,
        *,
        clock: Clock = time.time,
        emulated_backend: EmulatedBackend | None = None,
        real_backend: RealBackend | None = None,
        notifier: Notifier | None = None,
        fault_channel: Path | None = None,
    ) -> None:
        """`fault_channel` names a command file of bus faults for this agent's emulated chips
        (edgetwin.hardware.fault_channel), read between two readings: how a test breaks a chip
        inside an agent running in another process."""
        self.config = config
        self.device = config.agent.device_id
        self.topics = config.mqtt.topics()
        self.clock = clock
        self.version = agent_version()
        self.notifier = notifier or Notifier()
        # The state directory first: nothing else (the emulated back end writes files too)
        # may fail before it is known to be usable.
        self.state_dir = resolve_state_dir(config.agent.state_dir, self.device)
        check_state_dir(self.state_dir)
        settings = config.outbox
        outbox: Outbox | None = None
        try:
            outbox = Outbox(
                self.state_dir / "outbox.db",
                max_messages=settings.max_messages,
                max_bytes=settings.max_bytes,
                commit_interval=settings.commit_interval,
            )
            self.boot = outbox.next_boot()
        except OutboxError as exc:
            if outbox is not None:
                outbox.close_quietly()
            raise StateDirError(f"state directory {self.state_dir}: {exc}") from exc
        self.outbox = outbox
        # This life's id: the boot counter above starts again at 1 on a wiped disk, this never
        # repeats (docs/design.md, '`boot`, `session` and stale last wills').
        self.session = secrets.token_hex(8)
        self._emulated = emulated_backend or EmulatedBackend(
            clock=clock, seed=derive_seed("agent", self.device)
        )
        self._real = real_backend
        # Back ends made here are closed at shutdown (the emulated sysfs tree is a temporary
        # directory); injected ones belong to the caller.
        self._own_backends: list[EmulatedBackend | RealBackend] = (
            [self._emulated] if emulated_backend is None else []
        )
        self._faults = (
            None if fault_channel is None else FaultReceiver(fault_channel, self._emulated)
        )
        self.started_at = clock()
        self._desired_store = DesiredStore(self.state_dir / "desired.json")
        self.applied: DesiredConfig | None = self._desired_store.load(self.device)
        self._reported: ReportedConfig | None = None
        self.slots: dict[str, SensorSlot] = {}
        self._schedule: list[_Due] = []
        self._generation = 0
        self._inbox: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self._twin_any = threading.Event()  # some twin document, perhaps from an earlier boot
        self._twin_seen = threading.Event()  # the gateway's answer to this session's birth
        self._wake = threading.Event()
        self._last_watchdog = float("-inf")
        self._last_states: dict[str, SensorState] | None = None
        self._state_due = 0.0
        self.metrics: AgentMetrics = NoMetrics()
        self.tracing: Tracing = setup_tracing(None, config.observability.service_name)
        self.link = MqttLink(
            config.mqtt,
            client_id=config.mqtt.client_id or f"edgetwin-agent-{self.device}",
            will=Will(
                self.topics.status(self.device), self._status(Presence.OFFLINE, "connection_lost")
            ),
            on_connect=self._on_connect,
            on_message=self._on_message,
            on_delivered=self._on_delivered,
            max_inflight=0,  # the publisher keeps the window
        )
        self.publisher = OutboxPublisher(
            self.outbox,
            self.link,
            max_inflight=config.mqtt.max_inflight,
            drain_rate=settings.drain_rate,
            # In the broker's Receive Maximum, room for our status, state and reported
            # documents, which may be in flight at once, and for readings sent unstored.
            reserved=3 + UNSTORED_INFLIGHT,
            # The network thread found the outbox busy: the loop reads once the commit is done.
            on_room=self._wake.set,
        )
        self.readings = 0
        # Riding out a state directory that refuses writes (see `_commit`).
        self.storage_error: str | None = None
        self.unstored = 0
        self._storage_failures = 0
        self._storage_retry_at = 0.0
        self._unstored_inflight: list[Delivery] = []
        self._depth = 0
        self.discovery = self._discovery(config)
        # Commands with an answer (agent/commands.py); `pulse_output` drives the output bank's.
        self.commands = command_desk(self, lambda: self.outputs)

    @functools.cached_property
    def outputs(self) -> OutputBank:
        """The outputs of the applied document; made, and the crash marker of a run that did
        not stop cleanly read, before any output is opened."""
        return OutputBank(self.state_dir / MARKER_NAME, self._backends)

    def _discovery(self, config: AgentConfig) -> AgentDiscovery | None:
        """Home Assistant discovery (agent/homeassistant.py), when `[homeassistant]` enables it."""
        ha = config.homeassistant
        if not ha.enabled:
            return None
        builder = Discovery(self.topics, ha.discovery_prefix, AGENT_ORIGIN, self.version)
        return AgentDiscovery(builder, self.device)

    # -- identity and documents ----------------------------------------------------------------

    @property
    def applied_version(self) -> int:
        return self.applied.version if self.applied else 0

    def sensor_settings(self) -> dict[str, SensorSettings]:
        """The running sensor set: the gateway's last applied document, else the file's."""
        return dict(self.applied.sensors if self.applied else self.config.sensors)

    def _status(
        self, state: Presence, reason: Literal["birth", "shutdown", "connection_lost"]
    ) -> bytes:
        return Status(
            device=self.device,
            state=state,
            ts=self.clock(),
            boot=self.boot,
            agent_version=self.version,
            reason=reason,
            session=self.session,
        ).encode()

    def _states(self) -> dict[str, SensorState]:
        return {name: slot.state() for name, slot in self.slots.items()}

    def _state_document(self) -> bytes:
        return DeviceState(
            device=self.device,
            ts=self.clock(),
            agent_version=self.version,
            uptime_s=max(0.0, self.clock() - self.started_at),
            sensors=self._states(),
            outbox_depth=self._outbox_depth(),
            dropped=self.outbox.dropped,
            storage_error=self.storage_error,
            unstored=self.unstored,
        ).encode()

    def _outbox_depth(self) -> int:
        # Counting takes in acks, which may read the disk: a failing card must not turn a
        # state document, or the birth that sends one, into an exception.
        with contextlib.suppress(OutboxError):
            self._depth = self.outbox.depth
        return self._depth

    # -- network thread callbacks: messages are handed over; births and acks act here ----------

    def _on_connect(self, link: MqttLink) -> None:
        link.publish(
            self.topics.status(self.device),
            self._status(Presence.ONLINE, "birth"),
            qos=1,
            retain=True,
        )
        link.publish(self.topics.state(self.device), self._state_document(), qos=1, retain=True)
        if self._reported is not None:
            link.publish(
                self.topics.reported(self.device), self._reported.encode(), qos=1, retain=True
            )
        if link.connect_count > 1:
            self.metrics.reconnected()
        self._wake.set()

    def _on_message(self, message: Message) -> None:
        if message.topic == self.topics.rebirth():
            # Answered here, on the network thread, like the birth itself: the gateway counts
            # an agent that stays silent for a second as gone.
            self.link.publish(
                self.topics.status(self.device),
                self._status(Presence.ONLINE, "birth"),
                qos=1,
                retain=True,
            )
            return
        self._inbox.put(message)
        self._wake.set()

    def _on_delivered(self, mid: int) -> None:
        self.publisher.on_delivered(mid)
        if self._unstored_inflight:
            self._wake.set()  # a place for the next unstored reading may be free

    # -- sensors --------------------------------------------------------------------------------

    def _backends(self, choice: SensorBackend) -> list[EmulatedBackend | RealBackend]:
        if self._real is None and choice is not SensorBackend.EMULATED:
            self._real = RealBackend(clock=self.clock)
            self._own_backends.append(self._real)
        real: list[EmulatedBackend | RealBackend] = [self._real] if self._real else []
        if choice is SensorBackend.REAL:
            return real
        if choice is SensorBackend.EMULATED:
            return [self._emulated]
        return [*real, self._emulated]

    def _open(self, slot: SensorSlot) -> None:
        backends = self._backends(slot.settings.backend)
        try:
            slot.sensor = open_configured(
                slot.settings, backends, seed=derive_seed("agent", self.device, slot.name)
            )
        except HardwareError as exc:
            slot.missing_reason = str(exc)
            slot.backend = backends[-1].kind
            log.warning(
                "sensor unavailable", extra={"sensor": slot.name, "reason": slot.missing_reason}
            )
            return
        slot.backend = slot.sensor.status.backend
        slot.missing_reason = None
        log.info(
            "sensor opened",
            extra={
                "sensor": slot.name,
                "driver": slot.settings.driver,
                "backend": slot.backend.value,
            },
        )

    def _install(self, sensors: dict[str, SensorSettings]) -> None:
        """Replace the running sensor set; unchanged sensors keep their driver and schedule."""
        now = self.clock()
        wanted = {name: s for name, s in sensors.items() if s.enabled}
        for name in list(self.slots):
            if name not in wanted or wanted[name] != self.slots[name].settings:
                self.slots.pop(name).close()
        self._generation += 1
        fresh = [name for name in wanted if name not in self.slots]
        for name in fresh:
            slot = SensorSlot(name, wanted[name])
            self.slots[name] = slot
            self._open(slot)
        # Rebuild the heap under a new generation; kept sensors keep their next deadline.
        kept = {
            due.name: due.deadline
            for due in self._schedule
            if due.name in self.slots and due.name not in fresh
        }
        self._schedule = [_Due(kept.get(name, now), self._generation, name) for name in self.slots]
        heapq.heapify(self._schedule)
        if self.discovery is not None:
            self.discovery.due = True

    def reopen_sensor(self, name: str) -> SensorSlot:
        """Close a running sensor and open it again now (the `restart_sensors` command): a
        wedged chip gets a fresh start without a restart of the agent."""
        slot = self.slots[name]
        slot.close()
        self._open(slot)
        return slot

    def _read(self, slot: SensorSlot) -> None:
        if slot.sensor is None:
            self._open(slot)
            if slot.sensor is None:
                return
        started = time.perf_counter()
        try:
            reading = slot.sensor.read()
        except HardwareError as exc:
            self.metrics.sensor_error(slot.name)
            log.warning("sensor read failed", extra={"sensor": slot.name, "error": str(exc)})
            if slot.sensor.status.health is Health.MISSING:
                slot.close()
                slot.missing_reason = str(exc)
            return
        self.metrics.reading(slot.name, time.perf_counter() - started)
        self._enqueue(slot, reading)

    def _enqueue(self, slot: SensorSlot, reading: Reading) -> None:
        source = (
            Source.REAL
            if slot.sensor and slot.sensor.status.backend is BackendKind.REAL
            else Source.EMULATED
        )
        values = {q: Value(value=m.value, unit=m.unit) for q, m in reading.values.items()}

        def payload(seq: int) -> bytes:
            return Telemetry(
                device=self.device,
                sensor=slot.name,
                ts=reading.timestamp,
                seq=seq,
                source=source,
                values=values,
            ).encode()

        self.outbox.put(
            slot.name, payload, self.topics.telemetry(self.device, slot.name), self.config.mqtt.qos
        )
        self.readings += 1

    def _run_due(self) -> None:
        now = self.clock()
        while self._schedule and self._schedule[0].deadline <= now:
            due = heapq.heappop(self._schedule)
            slot = self.slots.get(due.name)
            if slot is None or due.generation != self._generation:
                continue
            self._read(slot)
            # Absolute deadlines keep the period exact; a stall skips missed beats rather than
            # bursting to catch up. A slow sensor delays only the readings queued behind it in
            # this pass, never the schedule itself.
            deadline = due.deadline + slot.settings.interval
            if deadline <= now:
                deadline = now + slot.settings.interval
            heapq.heappush(self._schedule, _Due(deadline, due.generation, due.name))

    # -- desired configuration ------------------------------------------------------------------

    def _handle_inbox(self) -> None:
        while True:
            try:
                message = self._inbox.get_nowait()
            except queue.Empty:
                return
            if self.discovery is not None and self.discovery.owns(message.topic):
                if self.discovery.note(message.topic, message.payload):
                    self.discovery.due = True  # a gateway took this device over: stand back
                continue
            if self.commands.owns(message.topic):
                self.commands.receive(message)
                continue
            if not message.payload:
                continue  # a cleared retained document: nothing to apply, keep what runs
            if message.topic == self.topics.desired(self.device):
                self._apply_desired(message)
            elif message.topic == self.topics.twin(self.device):
                self._adopt_twin(message)

    def _adopt_twin(self, message: Message) -> None:
        """Continue each stream after the last number the gateway's simulation gave it.

        While this agent was away the gateway played its sensors on the same topics; carrying
        on from the simulation's seq gives consumers one stream without a gap or a repeat.
        Informational only: a twin document never changes what the agent runs.
        """
        # A document that cannot be used (malformed, out of the contract's bounds: anyone who
        # may publish on the broker can forge one) is as good as none: one warning, and the
        # agent carries on with its own numbering. Never fatal.
        try:
            twin = TwinSummary.decode(message.payload)
        except ContractError as exc:
            log.warning("ignoring malformed twin document", extra={"error": str(exc)})
            return
        if twin.device != self.device:
            return
        if self.discovery is not None and twin.site != self.discovery.site:
            self.discovery.site = twin.site  # the area Home Assistant suggests for the device
            self.discovery.due = True
        for name, serving in twin.sensors.items():
            try:
                self.outbox.raise_seq(name, serving.seq)
            except ValueError as exc:
                log.warning("ignoring unusable twin document", extra={"error": str(exc)})
                return
        self._twin_any.set()
        answers = twin.boot == self.boot if twin.session is None else twin.session == self.session
        if answers:
            self._twin_seen.set()

    def _apply_desired(self, message: Message) -> None:
        with self.tracing.tracer("edgetwin.agent").start_as_current_span(
            "config.apply", context=self._trace_context(message), attributes={"device": self.device}
        ) as span:
            try:
                desired = validate_desired(
                    message.payload, self.device, self.applied_version, self.applied
                )
            except AlreadyApplied:
                span.set_attribute("outcome", "already_applied")
                # The broker's retained copy, sent again as it came back: the operator's will
                # stands, and outputs held while it was away follow it again.
                if self.outputs.resume(Hold.BROKER_AWAY):
                    self._report_outputs()
                return
            except Rejection as exc:
                span.set_attribute("outcome", "rejected")
                self.metrics.config("rejected")
                log.warning(
                    "desired config rejected", extra={"reason": exc.reason, "version": exc.version}
                )
                self._report(rejected_version=exc.version, reason=exc.reason)
                return
            self._desired_store.save(desired)
            self.applied = desired
            self.outputs.drop_unwanted(desired.outputs)  # frees pins before sensors take them
            self._install(dict(desired.sensors))
            self.outputs.install(desired.outputs, new_version=True)
            span.set_attribute("outcome", "applied")
            span.set_attribute("version", desired.version)
            self.metrics.config("applied")
            log.info(
                "desired config applied",
                extra={"version": desired.version, "sensors": sorted(self.slots)},
            )
            self._report()
            self._state_due = 0.0

    def _trace_context(self, message: Message) -> Context | None:
        if not self.tracing.enabled or not message.user_properties:
            return None
        from opentelemetry.propagate import extract

        return extract(dict(message.user_properties))

    def _report(self, *, rejected_version: int | None = None, reason: str | None = None) -> None:
        self._reported = ReportedConfig(
            device=self.device,
            ts=self.clock(),
            status="applied" if reason is None else "rejected",
            applied_version=self.applied_version,
            rejected_version=rejected_version,
            reason=None if reason is None else reason[:1024],
            outputs=self.outputs.report(),
        )
        if self.link.connected:
            self.link.publish(
                self.topics.reported(self.device), self._reported.encode(), qos=1, retain=True
            )

    def _report_outputs(self) -> None:
        """Report what the outputs do now; the last document's verdict stays as it was."""
        if self._reported is None:
            return  # nothing applied yet, so no outputs either
        self._reported = self._reported.replace(ts=self.clock(), outputs=self.outputs.report())
        if self.link.connected:
            self.link.publish(
                self.topics.reported(self.device), self._reported.encode(), qos=1, retain=True
            )

    def _guard_outputs(self) -> None:
        """Hold the outputs at their safe values once the broker has been away longer than
        `safe_after_broker_away` (nobody could switch them off meanwhile; reported when it is
        back), and try again to open those the hardware refused."""
        held = self.outputs.watch_broker(
            self.link.connected, self.config.agent.safe_after_broker_away
        )
        reopened = self.outputs.retry()
        if held or reopened:
            self._report_outputs()

    # -- the loop -------------------------------------------------------------------------------

    def _publish_state_if_due(self) -> None:
        if not self.link.connected:
            return
        states = self._states()
        now = self.clock()
        if states != self._last_states or now >= self._state_due:
            self._last_states = states
            self._state_due = now + self.config.agent.state_interval
            self.link.publish(
                self.topics.state(self.device), self._state_document(), qos=1, retain=True
            )

    # -- Home Assistant discovery ---------------------------------------------------------------

    def _publish_discovery_if_due(self) -> None:
        """Make the broker hold exactly this agent's discovery configs: after each connection
        (a broker without persistence lost them), and when the sensors or the site change;
        configs of sensors no longer run are deleted (an empty retained payload).

        Only once the broker has replayed what it holds on our node (the subscription's
        retained messages, RETAINED_GRACE after the SUBACK): a config there that a gateway
        wrote means the gateway owns this device's configs, and the agent leaves them alone.

        QoS 0: each connection publishes them all again, so none needs a redelivery, and a
        QoS 1 burst would take places in the broker's Receive Maximum from the readings.
        """
        discovery = self.discovery
        if discovery is None or not self.link.connected:
            return
        if self.link.connect_count != discovery.connection:
            discovery.new_connection(self.link.connect_count, time.monotonic())
        if not discovery.due or not self.link.wait_subscribed(0):
            return
        if time.monotonic() - discovery.noticed < RETAINED_GRACE:
            return  # `_next_wait` wakes the loop when the grace is over
        discovery.due = False
        was_yielded = discovery.yielded
        messages = discovery.messages(
            DeviceDescription(
                device=self.device,
                sensors={name: slot.settings for name, slot in self.slots.items()},
                site=discovery.site,
                agent_version=self.version,
            )
        )
        if discovery.yielded and not was_yielded:
            log.info(
                "a gateway publishes this device's Home Assistant discovery; the agent leaves "
                "it to the gateway",
                extra={"device": self.device},
            )
        for topic, payload in messages:
            try:
                self.link.publish(topic, payload, qos=0, retain=True)
            except PublishError as exc:
                log.warning("discovery config not published", extra={"error": str(exc)})
                discovery.due = True
                return
            discovery.sent[topic] = payload

    def _next_wait(self) -> float:
        now = self.clock()
        wait = IDLE_WAIT
        if self._schedule:
            wait = min(wait, self._schedule[0].deadline - now)
        if self.publisher.backlog and self.link.connected:
            wait = min(wait, 0.01)
        if self.outbox.uncommitted:
            wait = min(wait, self.config.outbox.commit_interval)
        hold_in = self.outputs.broker_hold_in(self.config.agent.safe_after_broker_away)
        if hold_in is not None:
            wait = min(wait, hold_in)
        wait = min(wait, self.commands.next_wait())
        if self.discovery is not None and self.discovery.due and self.link.connected:
            # Discovery waits for the SUBACK and the retained grace, neither of which wakes
            # the loop: look again soon.
            grace_left = self.discovery.noticed + RETAINED_GRACE - time.monotonic()
            wait = min(wait, max(0.05, grace_left))
        return max(wait, 0.0)

    def _watchdog_if_due(self) -> float:
        """Ping systemd's watchdog once half its timeout has passed; seconds to the next ping.

        Called only from the agent's own loops: a hung loop stops the pings and systemd
        restarts us. The caller waits no longer than the returned time, else the pings drift
        towards the full timeout whenever a sensor deadline wakes the loop just before one.
        """
        interval = self.notifier.watchdog_interval
        if interval is None:
            return IDLE_WAIT
        if time.monotonic() - self._last_watchdog >= interval:
            self.notifier.watchdog()
            self._last_watchdog = time.monotonic()
        return max(0.0, self._last_watchdog + interval - time.monotonic())

    def _await_twin(self, stop: threading.Event) -> None:
        """Hold the first readings briefly for the gateway's answer to our birth: the twin
        document in which it stopped simulating us, with the simulation's last seq, so that our
        readings carry on its numbering. Bounded: with no broker the agent starts reading after
        `twin_wait`, and with no gateway (no twin document at all) right after connecting."""
        deadline = time.monotonic() + self.config.agent.twin_wait
        connected_at: float | None = None
        while not stop.is_set() and not self._twin_seen.is_set() and time.monotonic() < deadline:
            self._handle_inbox()
            self._watchdog_if_due()
            if self.link.connected and connected_at is None:
                connected_at = time.monotonic()
            no_gateway = not self._twin_any.is_set()
            if (
                no_gateway
                and connected_at is not None
                and time.monotonic() - connected_at > RETAINED_GRACE
            ):
                return  # connected, and no twin came with the retained messages: none exists
            self._wake.wait(0.02)
            self._wake.clear()

    def run(self, stop: threading.Event) -> int:
        """Run until `stop` is set; returns the process exit code."""
        observability = self.config.observability
        if observability.trace_endpoint:
            self.tracing = setup_tracing(observability.trace_endpoint, observability.service_name)
        if observability.prometheus_port is not None:
            self.metrics = PrometheusMetrics(
                observability.prometheus_port,
                observability.prometheus_host,
                outbox_depth=self._outbox_depth,
                outbox_dropped=lambda: self.outbox.dropped,
                storage_failing=lambda: float(self.storage_error is not None),
                unstored=lambda: self.unstored,
            )
            self.publisher.metrics = self.metrics
        log.info(
            "agent starting",
            extra={
                "device": self.device,
                "boot": self.boot,
                "session": self.session,
                "state_dir": str(self.state_dir),
                "applied_version": self.applied_version,
            },
        )
        self.outputs.install(self.applied.outputs if self.applied else {}, new_version=False)
        self._install(self.sensor_settings())
        if self.applied is not None:
            self._reported = ReportedConfig(
                device=self.device,
                ts=self.clock(),
                status="applied",
                applied_version=self.applied_version,
                outputs=self.outputs.report(),
            )
        # Only our own desired document configures us; our twin document tells where the
        # gateway's simulation left our streams; our node's discovery configs, which of them
        # are on the broker and who wrote them.
        filters = [
            self.topics.desired(self.device),
            self.topics.twin(self.device),
            self.topics.rebirth(),
            self.topics.commands(self.device),
        ]
        if self.discovery is not None:
            filters.append(self.discovery.discovery.node_filter(self.device))
        self.link.subscribe(filters)
        self.link.start()
        # Ready once config is loaded and the outbox open: readings are kept from now on,
        # whether or not the broker answers.
        self.notifier.ready(f"{len(self.slots)} sensors, outbox depth {self.outbox.depth}")
        self._await_twin(stop)
        while not stop.is_set():
            self._handle_inbox()
            if self._faults is not None:
                self._faults.poll()
            self._run_due()
            self._guard_outputs()
            # Between reads, a few at a time: a burst of commands never holds readings back.
            self.commands.run_pending()
            self._commit()
            try:
                self.publisher.pump()
            except OutboxError as exc:
                self._storage_failed(exc)
            self._publish_state_if_due()
            self._publish_discovery_if_due()
            wait = min(self._next_wait(), self._watchdog_if_due())
            if wait > 0:
                self._wake.wait(wait)
                self._wake.clear()
        self._shutdown()
        return 0

    # -- a state directory that refuses writes ---------------------------------------------------

    def _commit(self) -> None:
        """Commit the outbox when due; ride out a disk that refuses (full, failing card).

        While commits fail, readings still go to the broker when it is there, unstored
        (counted in `unstored`; at QoS 1 at most UNSTORED_INFLIGHT unacknowledged, the rest
        wait their turn) and, with no broker, wait in memory within the outbox's bounds; in
        both cases oldest first. Commits are retried with exponential backoff, and the first
        that succeeds ends the condition. The state document and the metrics report it
        meanwhile.
        """
        if self.storage_error is None:
            started = time.perf_counter()
            try:
                wrote = self.outbox.maybe_commit()
            except OutboxError as exc:
                self._storage_failed(exc)
            else:
                if wrote:  # the loop calls this every turn; only real transactions are timed
                    self.metrics.committed(time.perf_counter() - started)
        elif time.monotonic() >= self._storage_retry_at:
            try:
                self.outbox.commit()
            except OutboxError as exc:
                self._storage_failed(exc)
            else:
                self._storage_recovered()
        if self.storage_error is not None:
            self._send_unstored()

    def _storage_failed(self, exc: OutboxError) -> None:
        first = self.storage_error is None
        self.storage_error = str(exc)[:1024]
        base = max(self.config.outbox.commit_interval, 0.1)
        delay = min(STORAGE_RETRY_MAX, base * 2 ** min(self._storage_failures, 16))
        self._storage_failures += 1
        self._storage_retry_at = time.monotonic() + delay
        if first:
            # One line for the whole condition, however long it lasts: the retries are in the
            # state document and the metrics, not in the journal (which may share the disk).
            log.warning(
                "outbox cannot write; readings go to the broker unstored until it can",
                extra={"path": str(self.outbox.path), "error": self.storage_error},
            )
            self._state_due = 0.0

    def _storage_recovered(self) -> None:
        log.info(
            "outbox writes again",
            extra={"path": str(self.outbox.path), "unstored": self.unstored},
        )
        self.storage_error = None
        self._storage_failures = 0
        self._state_due = 0.0

    def _send_unstored(self) -> None:
        if not self.link.connected:
            return  # they wait in memory, bounded by the outbox, for the broker or the disk
        qos = self.config.mqtt.qos
        room = self.outbox.uncommitted
        if qos:
            self._unstored_inflight = [d for d in self._unstored_inflight if not d.done]
            room = min(room, UNSTORED_INFLIGHT - len(self._unstored_inflight))
        for topic, payload in self.outbox.take_uncommitted(room):
            try:
                delivery = self.link.publish(topic, payload, qos=qos)
            except PublishError:
                self.metrics.publish_failed()
            else:
                if qos:
                    self._unstored_inflight.append(delivery)
            self.unstored += 1

    def _shutdown(self) -> None:
        self.notifier.stopping()
        log.info("agent stopping", extra={"device": self.device})
        # Outputs first: safe before anything that may take the rest of the stop's time.
        if self.outputs.hold_safe(Hold.SHUTDOWN, "shutdown"):
            self._report_outputs()
        deadline = time.monotonic() + self.config.agent.shutdown_timeout
        try:
            self.outbox.commit()
        except OutboxError as exc:
            self._storage_failed(exc)
            self._send_unstored()
        # Deliver what we can in the time we have; the rest waits in the outbox for next time.
        while self.link.connected and self._outbox_depth() and time.monotonic() < deadline:
            try:
                self.publisher.pump()
            except OutboxError:
                break
            self._wake.wait(0.05)
            self._wake.clear()
        if self.link.connected:
            delivery = self.link.publish(
                self.topics.status(self.device),
                self._status(Presence.OFFLINE, "shutdown"),
                qos=1,
                retain=True,
            )
            delivery.wait(max(0.1, deadline - time.monotonic()))
        self.link.close()
        self.outputs.close()
        for slot in self.slots.values():
            slot.close()
        for backend in self._own_backends:
            backend.close()
        try:
            self.outbox.close()
        except OutboxError as exc:
            log.warning(
                "outbox could not store its last readings",
                extra={"path": str(self.outbox.path), "error": str(exc)},
            )
        self.metrics.close()
        self.tracing.shutdown()
        self.notifier.close()
        log.info(
            "agent stopped",
            extra={
                "device": self.device,
                "readings": self.readings,
                "delivered": self.publisher.delivered,
            },
        )
