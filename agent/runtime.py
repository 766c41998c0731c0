"""The agent's main loop: read sensors on their schedules and publish what they measure."""

from __future__ import annotations

import heapq
import logging
import threading
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version

from agent.config import AgentConfig
from agent.contract import (
    DeviceState,
    Presence,
    SensorBackend,
    SensorHealth,
    SensorSettings,
    SensorState,
    Source,
    Status,
    Telemetry,
    Value,
)
from agent.mqtt import Delivery, MqttLink, Will
from agent.persist import MemoryFile
from agent.sensors import open_configured
from hardware import (
    BackendKind,
    EmulatedBackend,
    HardwareError,
    Health,
    RealBackend,
    Sensor,
)
from hardware.sensor import Clock
from hardware.signals import derive_seed

log = logging.getLogger(__name__)

SHUTDOWN_FLUSH_SECONDS = 3.0
STATE_REFRESH_SECONDS = 60.0


def agent_version() -> str:
    try:
        return version("edgetwin")
    except PackageNotFoundError:
        return "0+unknown"


@dataclass
class SensorSlot:
    """One configured sensor: its settings, its driver once opened, and its stream counter."""

    name: str
    settings: SensorSettings
    sensor: Sensor | None = None
    seq: int = 0
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


@dataclass(order=True)
class _Due:
    deadline: float
    name: str = field(compare=False)


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        *,
        clock: Clock = time.time,
        emulated_backend: EmulatedBackend | None = None,
        real_backend: RealBackend | None = None,
    ) -> None:
        self.config = config
        self.device = config.agent.device_id
        self.topics = config.mqtt.topics()
        self.clock = clock
        self.version = agent_version()
        self._emulated = emulated_backend or EmulatedBackend(
            clock=clock, seed=derive_seed("agent", self.device)
        )
        self._real = real_backend
        self._memory_file = MemoryFile(
            config.agent.state_dir / "agent.json" if config.agent.state_dir else None
        )
        self.memory = self._memory_file.load()
        self.memory.boot += 1
        self._memory_file.save(self.memory)
        self.started_at = clock()
        self.slots = {
            name: SensorSlot(name, settings, seq=self.memory.seq.get(name, 0))
            for name, settings in config.sensors.items()
            if settings.enabled
        }
        self._last_health: dict[str, SensorState] = {}
        self.link = MqttLink(
            config.mqtt,
            client_id=config.mqtt.client_id or f"edgetwin-agent-{self.device}",
            will=Will(
                self.topics.status(self.device), self._status(Presence.OFFLINE, "connection_lost")
            ),
            on_connect=self._birth,
        )
        self.published = 0

    def _status(self, state: Presence, reason: str) -> bytes:
        return Status(
            device=self.device,
            state=state,
            ts=self.clock(),
            boot=self.memory.boot,
            agent_version=self.version,
            reason=reason,
        ).encode()

    def _birth(self, link: MqttLink) -> None:
        link.publish(
            self.topics.status(self.device),
            self._status(Presence.ONLINE, "birth"),
            qos=1,
            retain=True,
        )
        self._publish_state(link)

    def _publish_state(self, link: MqttLink) -> None:
        states = {name: slot.state() for name, slot in self.slots.items()}
        self._last_health = states
        document = DeviceState(
            device=self.device,
            ts=self.clock(),
            agent_version=self.version,
            uptime_s=max(0.0, self.clock() - self.started_at),
            sensors=states,
        )
        link.publish(self.topics.state(self.device), document.encode(), qos=1, retain=True)

    def _backends(self, choice: SensorBackend) -> list[EmulatedBackend | RealBackend]:
        if self._real is None and choice is not SensorBackend.EMULATED:
            self._real = RealBackend(clock=self.clock)
        real: list[EmulatedBackend | RealBackend] = [self._real] if self._real else []
        if choice is SensorBackend.REAL:
            return real
        if choice is SensorBackend.EMULATED:
            return [self._emulated]
        return [*real, self._emulated]

    def _open(self, slot: SensorSlot) -> None:
        settings = slot.settings
        backends = self._backends(settings.backend)
        try:
            slot.sensor = open_configured(
                settings, backends, seed=derive_seed("agent", self.device, slot.name)
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
            extra={"sensor": slot.name, "driver": settings.driver, "backend": slot.backend.value},
        )

    def _read_and_publish(self, slot: SensorSlot) -> Delivery | None:
        if slot.sensor is None:
            self._open(slot)
            if slot.sensor is None:
                return None
        try:
            reading = slot.sensor.read()
        except HardwareError as exc:
            log.warning("sensor read failed", extra={"sensor": slot.name, "error": str(exc)})
            if slot.sensor.status.health is Health.MISSING:
                slot.sensor.close()
                slot.sensor = None
                slot.missing_reason = str(exc)
            return None
        telemetry = Telemetry(
            device=self.device,
            sensor=slot.name,
            ts=reading.timestamp,
            seq=slot.seq,
            source=Source.REAL if slot.backend is BackendKind.REAL else Source.EMULATED,
            values={q: Value(value=m.value, unit=m.unit) for q, m in reading.values.items()},
        )
        slot.seq += 1
        self.published += 1
        return self.link.publish(
            self.topics.telemetry(self.device, slot.name),
            telemetry.encode(),
            qos=self.config.mqtt.qos,
        )

    def run(self, stop: threading.Event) -> int:
        """Run until `stop` is set; returns the process exit code."""
        log.info(
            "agent starting",
            extra={"device": self.device, "boot": self.memory.boot, "sensors": list(self.slots)},
        )
        for slot in self.slots.values():
            self._open(slot)
        self.link.start()
        now = self.clock()
        schedule = [_Due(now, name) for name in self.slots]
        heapq.heapify(schedule)
        next_state = now + STATE_REFRESH_SECONDS
        while not stop.is_set():
            wait = (schedule[0].deadline if schedule else now + 1.0) - self.clock()
            if wait > 0 and stop.wait(min(wait, 1.0)):
                break
            now = self.clock()
            while schedule and schedule[0].deadline <= now:
                due = heapq.heappop(schedule)
                slot = self.slots[due.name]
                self._read_and_publish(slot)
                # Absolute deadlines keep the period exact; a stall skips missed beats rather
                # than bursting to catch up.
                deadline = due.deadline + slot.settings.interval
                if deadline <= now:
                    deadline = now + slot.settings.interval
                heapq.heappush(schedule, _Due(deadline, due.name))
            states = {name: slot.state() for name, slot in self.slots.items()}
            if self.link.connected and (states != self._last_health or now >= next_state):
                self._publish_state(self.link)
                next_state = now + STATE_REFRESH_SECONDS
        self._shutdown()
        return 0

    def _shutdown(self) -> None:
        log.info("agent stopping", extra={"device": self.device})
        if self.link.connected:
            delivery = self.link.publish(
                self.topics.status(self.device),
                self._status(Presence.OFFLINE, "shutdown"),
                qos=1,
                retain=True,
            )
            delivery.wait(SHUTDOWN_FLUSH_SECONDS)
        self.link.close()
        for slot in self.slots.values():
            if slot.sensor is not None:
                slot.sensor.close()
        self.memory.seq = {name: slot.seq for name, slot in self.slots.items()}
        self._memory_file.save(self.memory)
        log.info("agent stopped", extra={"device": self.device, "published": self.published})
