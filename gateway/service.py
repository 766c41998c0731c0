"""The gateway's MQTT side: presence from status topics, failover to simulation and back."""

from __future__ import annotations

import logging
import threading
import time

from agent.contract import ContractError, Status, TwinSummary
from agent.mqtt import Message, MqttLink
from agent.tracing import Tracing
from gateway.config import GatewayConfig
from gateway.fleet import DeviceRecord, Fleet, PresenceState
from gateway.metrics import GatewayMetrics
from gateway.simulation import SimulationEngine
from hardware.sensor import Clock

log = logging.getLogger(__name__)


class GatewayService:
    """Owns the broker link, the fleet registry and the simulation engine, and joins them."""

    def __init__(
        self,
        config: GatewayConfig,
        metrics: GatewayMetrics,
        tracing: Tracing,
        *,
        clock: Clock = time.time,
    ) -> None:
        self.config = config
        self.topics = config.mqtt.topics()
        self.metrics = metrics
        self.clock = clock
        self.fleet = Fleet(config.manifest())
        self.link = MqttLink(
            config.mqtt,
            client_id=config.mqtt.client_id
            or f"edgetwin-gateway-{config.observability.service_name}",
            on_connect=self._on_connect,
            on_message=self._on_message,
        )
        self.engine = SimulationEngine(
            self._publish_telemetry,
            self.topics,
            clock=clock,
            seed=config.simulator.seed,
            on_published=metrics.simulated_messages.inc,
            tracer=tracing.tracer("edgetwin.gateway.simulation") if tracing.enabled else None,
        )
        self.fleet.subscribe(self._on_presence_change)
        self._grace_timer: threading.Timer | None = None
        self._grace_over = threading.Event()

    def start(self) -> None:
        self.link.subscribe([self.topics.all_status()])
        self.link.start()
        self.engine.start()
        self._refresh_metrics()

    def stop(self) -> None:
        if self._grace_timer is not None:
            self._grace_timer.cancel()
        self.engine.stop()
        self.link.close()
        self.metrics.mqtt_connected.set(0)

    def _publish_telemetry(self, topic: str, payload: bytes) -> None:
        self.link.publish(topic, payload, qos=self.config.mqtt.qos)

    def _on_connect(self, link: MqttLink) -> None:
        self.metrics.mqtt_connected.set(1)
        if self._grace_over.is_set() or self._grace_timer is not None:
            return
        # Only after the retained statuses had their chance to arrive do we decide that an
        # unknown device has no agent.
        self._grace_timer = threading.Timer(self.config.presence.startup_grace, self._end_grace)
        self._grace_timer.daemon = True
        self._grace_timer.start()

    def _end_grace(self) -> None:
        self._grace_over.set()
        for record in self.fleet.snapshot():
            self._reconcile(record)

    def _on_message(self, message: Message) -> None:
        try:
            parsed = self.topics.parse(message.topic)
            if parsed.kind != "status":
                return
            status = Status.decode(message.payload)
            if status.device != parsed.device:
                raise ContractError(
                    f"status for {status.device!r} on the topic of {parsed.device!r}"
                )
        except ContractError as exc:
            self.metrics.status_messages.labels("rejected").inc()
            log.warning(
                "ignoring malformed status", extra={"topic": message.topic, "error": str(exc)}
            )
            return
        verdict = self.fleet.apply_status(status)
        self.metrics.status_messages.labels(verdict).inc()
        if verdict == "stale":
            log.info("discarded stale status", extra={"device": status.device, "boot": status.boot})

    def _on_presence_change(self, record: DeviceRecord) -> None:
        log.info("presence changed", extra={"device": record.id, "presence": record.presence.value})
        self._reconcile(record)

    def _reconcile(self, record: DeviceRecord) -> None:
        """Simulate a manifest device exactly when no live agent serves it."""
        wanted = record.in_manifest and record.presence is not PresenceState.ONLINE
        if record.presence is PresenceState.UNKNOWN and not self._grace_over.is_set():
            wanted = False
        if wanted:
            self.engine.activate(record.id, record.sensors)
        else:
            self.engine.deactivate(record.id)
        self._publish_twin(record)
        self._refresh_metrics()

    def _publish_twin(self, record: DeviceRecord) -> None:
        if not record.in_manifest or not self.link.connected:
            return
        served = record.served_by
        assert served is not None
        summary = TwinSummary(
            device=record.id,
            ts=self.clock(),
            presence=record.presence.value,
            sensors=dict.fromkeys(record.sensors, served),
        )
        self.link.publish(self.topics.twin(record.id), summary.encode(), qos=1, retain=True)

    def _refresh_metrics(self) -> None:
        self.metrics.devices.clear()
        for (presence, served_by), count in self.fleet.counts().items():
            self.metrics.devices.labels(presence, served_by).set(count)
        self.metrics.simulated_devices.set(len(self.engine.active_devices()))
