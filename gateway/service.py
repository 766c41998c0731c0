"""The gateway's MQTT side: the twin from retained documents, config pushes, and failover.

Every change that can move a stream (presence, an agent's state, a desired document, the
manifest) ends in `_reconcile`, which makes the simulation play exactly the expected sensors
no live agent serves, and publishes the device's twin document when that changes.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import threading
import time
from collections.abc import Mapping
from typing import Final, Literal

import msgspec
from opentelemetry.propagate import inject
from opentelemetry.trace import Tracer

from edgetwin.agent.contract import (
    ContractError,
    DesiredConfig,
    DeviceState,
    FlatReading,
    GatewayLease,
    OutputSettings,
    ParsedTopic,
    Presence,
    RebirthRequest,
    ReportedConfig,
    SensorSettings,
    Server,
    Source,
    Status,
    StreamServing,
    Telemetry,
    TwinIndex,
    TwinSummary,
    Value,
)
from edgetwin.agent.desired import check_outputs
from edgetwin.agent.homeassistant import (
    GATEWAY_ORIGIN,
    PAYLOAD_OFF,
    PAYLOAD_ON,
    DeviceDescription,
    Discovery,
    PublishedConfigs,
)
from edgetwin.agent.mqtt import Message, MqttLink, PublishError, Will
from edgetwin.agent.runtime import agent_version
from edgetwin.agent.tracing import Tracing
from edgetwin.gateway.commands import CommandClient
from edgetwin.gateway.config import COMPAT_LABEL, GatewayConfig, ManifestDevice
from edgetwin.gateway.duplicates import DuplicateWatch
from edgetwin.gateway.engine.controller import EngineController
from edgetwin.gateway.engine.link import endpoint_from_mqtt
from edgetwin.gateway.fleet import MAX_VERSION, DeviceTwin, Fleet, PresenceState, Serving
from edgetwin.gateway.history import History
from edgetwin.gateway.learning import StreamLearning
from edgetwin.gateway.lograte import LogLimiter
from edgetwin.gateway.membership import Membership, MembershipChange
from edgetwin.gateway.metrics import GatewayMetrics
from edgetwin.gateway.ownership import Decision, Ownership, PlayedStreams
from edgetwin.gateway.scenario.model import ResponseSpec
from edgetwin.gateway.simulated import LastReading, SimulatedDevices
from edgetwin.gateway.standins import StandIns
from edgetwin.gateway.twin_index import TwinIndexKeeper
from edgetwin.hardware.errors import HardwareError
from edgetwin.hardware.quantities import UNITS
from edgetwin.hardware.registry import check_output_value
from edgetwin.hardware.sensor import Clock

log = logging.getLogger(__name__)

TRACE_SAMPLE_SECONDS = 10.0
# A restarted gateway reads its twin's documents this many devices at a time: five retained
# documents each, 750 messages, within the 1,000 a stock mosquitto queues for a client.
FETCH_DEVICES = 150
FETCH_TIMEOUT = 10.0  # seconds the broker may take to send one portion
MALFORMED_LOG_INTERVAL = 60.0  # seconds between log lines on one device's malformed messages
# Seconds a stopping gateway waits for the broker to take its offline lease.
LEASE_STOP_TIMEOUT = 2.0
# The user property on a twin document cleared through a gateway's API: which gateway removed
# the device, so that the others drop it too and the remover ignores its own.
REMOVED_BY: Final = "edgetwin-removed-by"
_SERVERS: Final = frozenset({"agent", "simulation"})  # a Serving that is someone, not "none"


class ConflictError(Exception):
    """The caller's view of a desired document is out of date (optimistic concurrency)."""


class UnknownDeviceError(LookupError):
    pass


class GatewayService:
    """Owns the broker link, the twin registry and the simulation engine, and joins them."""

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
        self.tracer: Tracer = tracing.tracer("edgetwin.gateway")
        # Recent points per stream for the page's charts, fed by the twin's own telemetry path.
        self.history = History(config.history.points, config.history.max_streams)
        self.fleet = Fleet(config.manifest(), self.history)
        # This gateway among the others on its prefix (gateway/membership.py): its id lasts
        # across restarts of the replica, its session is this start's alone.
        self.gateway_id = config.gateway.gateway_id()
        self.session = secrets.token_hex(8)
        # Wall-clock time, not the twin's clock (which a test may make virtual): other
        # gateways order this life against the id's others by it.
        self.started = time.time()
        self.membership = Membership(self.gateway_id, self.session)
        metrics.gateways_live.set_function(lambda: len(self.membership.live_ids()))
        # Which of the manifest's devices this gateway plays (gateway/ownership.py).
        self.ownership = Ownership(self.gateway_id, config.gateway.handoff_timeout)
        self.membership.subscribe(self._on_membership_change)
        self._rebalance_lock = threading.Lock()
        self._rebalance_timer: threading.Timer | None = None
        self._handoff_timer: threading.Timer | None = None
        self.link = MqttLink(
            config.mqtt,
            # The gateway id in it: replicas of one config must not share a client id, or each
            # connection takes the other's over (and has the broker publish its will).
            client_id=config.mqtt.client_id
            or f"edgetwin-gateway-{config.observability.service_name}-{self.gateway_id}",
            # The lease, offline, for the broker to publish when it loses this gateway. Fixed
            # for the process's life: its `since` and session order it against later lives.
            will=Will(
                self.topics.gateway(self.gateway_id),
                self._lease(Presence.OFFLINE, "connection_lost", ts=self.started).encode(),
                qos=1,
                retain=True,
            ),
            on_connect=self._on_connect,
            on_message=self._on_message,
            on_disconnect=self._on_disconnect,
        )
        # Commands with an answer (gateway/commands.py): answers come back to this gateway's id.
        self.commands = CommandClient(self.link, self.topics, self.gateway_id, metrics.registry)
        # What agents report teaches the simulation that stands in for them (docs/design.md,
        # 'Learned signals').
        self.learning = StreamLearning()
        # Stand-ins for the manifest's missing devices and sensors: a run of the simulation
        # engine of its own, beside the fleet the API may run (app.state.engine).
        self.standins = StandIns(
            EngineController(endpoint_from_mqtt(config.mqtt, config.engine), config.engine),
            seed=config.fleet_plan().seed,
            qos=config.mqtt.qos,
            payload=config.mqtt.payload,
            signals=self.learning.signals_for,
        )
        # What else a device this gateway plays does as its agent would: apply the desired
        # outputs (the signals that answer them follow) and answer commands.
        self.simulated = SimulatedDevices(
            self.link,
            self.topics,
            gateway_id=self.gateway_id,
            drive=self.standins.drive,
            last_reading=self._last_reading,
            played_sensors=lambda device: sorted(self.standins.simulated_streams(device)),
        )
        # The whole fleet's simulated streams, this gateway's and the others' (for the API).
        self.played = PlayedStreams(self.standins, self.ownership)
        metrics.count_simulated(lambda: self.standins.stats().sent)
        metrics.count_history(lambda: len(self.history), lambda: self.history.evicted)
        metrics.count_devices(self.fleet.counts)
        metrics.count_readings(self.fleet.last_readings)
        metrics.count_config_sync(lambda: self.fleet.tally()[3])
        metrics.simulated_devices.set_function(lambda: len(self.standins.active_devices()))
        metrics.mqtt_sent.add_source(self._standin_counts)
        self._tracer_sampled = (
            tracing.tracer("edgetwin.gateway.simulation") if tracing.enabled else None
        )
        self._next_trace = 0.0
        self.fleet.subscribe(self._reconcile)
        self._reconcile_lock = threading.RLock()
        self._published_twins: dict[str, TwinSummary] = {}
        # Home Assistant discovery of the manifest's devices (agent/homeassistant.py).
        ha = config.homeassistant
        self.discovery = (
            Discovery(self.topics, ha.discovery_prefix, GATEWAY_ORIGIN, agent_version())
            if ha.enabled
            else None
        )
        self._discovery_sent = PublishedConfigs()
        self._grace_over = threading.Event()
        self._index = TwinIndexKeeper(self.topics, self._publish_retained)
        # Each connection's rebuild (`_rebuild`) runs in a thread of its own; a newer
        # connection's generation tells an older one to give up.
        self._generation = 0
        self._stopping = threading.Event()
        # From each connection until its presence check: the broker replays every retained
        # document, and changes are only noted, then reconciled in one pass at the check.
        # Reading that flood must be quick: a stock mosquitto queues at most 1,000 messages
        # for a client that reads slower than it sends, and silently drops the rest.
        self._settling = threading.Event()
        self._desired_lock = threading.Lock()
        self._shared_telemetry_watched = False
        self._malformed_log = LogLimiter(MALFORMED_LOG_INTERVAL)
        self.duplicates = DuplicateWatch()
        metrics.duplicate_ids.set_function(
            lambda: sum(
                1
                for twin in self.fleet.snapshot()
                if twin.duplicate_suspected(time.monotonic()) is not None
            )
        )

    def _standin_counts(self) -> dict[str, int]:
        """The stand-ins' counts of devices still in the manifest: the engine keeps a count
        for its run's life, and a deleted device's series must go with it."""
        return {
            device: count
            for device, count in self.standins.sent_by_device().items()
            if (twin := self.fleet.get(device)) is not None and twin.in_manifest
        }

    def start(self) -> None:
        topics = self.topics
        # QoS 0: every document here is retained, so the broker sends them all again at each
        # (re)subscription, and nothing is lost with a connection that QoS 1 would redeliver.
        # At QoS 1 a stock mosquitto queues at most max_inflight_messages (20) +
        # max_queued_messages (1,000) for a client: a gateway starting against 300 devices'
        # 1,500 retained documents received 1,020 of them and knew none of the devices.
        # On MQTT 5 these bring only what is published from now on: the retained documents
        # come through `_rebuild`, in portions, after each connection.
        self.link.subscribe(self._document_filters(), qos=0, retained=False)
        self.link.subscribe([topics.all_twin_index()], qos=0, retained=False)
        # The other gateways' leases: a few documents, so all of them at every subscription
        # (a resubscription after a reconnect refreshes the view), at QoS 1 since each matters.
        self.link.subscribe([topics.all_gateways()], qos=1)
        # Other gateways' rebirth requests, which this one answers with its lease as agents
        # answer with their births (`_on_membership`); its own are no news (no-local).
        self.link.subscribe([topics.rebirth()], qos=1, no_local=True)
        self.commands.start()
        self.simulated.start()
        if self.discovery is not None:
            # Home Assistant's switches and numbers of outputs ask here (`_on_output_set`).
            self.link.subscribe([topics.all_output_sets()], qos=1)
        # Agents' readings tell us their last seq, so a simulation that takes over a stream
        # continues its numbering. Only the twin's devices are watched: the engine's fleet on
        # the same topics would otherwise flow through this process, a core's work at 50,000
        # readings a second.
        for twin in self.fleet.snapshot():
            self._watch_telemetry(twin.id)
        self.link.start()
        threading.Thread(target=self._keep_lease, name="stand-in-lease", daemon=True).start()
        self.standins.start(
            sum(
                1.0 / sensor.interval
                for twin in self.fleet.snapshot()
                if twin.in_manifest
                for sensor in twin.expected_sensors().values()
            )
        )

    def _document_filters(self, device: str = "+") -> list[str]:
        topics = self.topics
        return [
            topics.status(device),
            topics.state(device),
            topics.reported(device),
            topics.desired(device),
            topics.twin(device),
        ]

    def stop(self) -> None:
        self._stopping.set()
        self._index.cancel()
        with self._rebalance_lock:
            for timer in (self._rebalance_timer, self._handoff_timer):
                if timer is not None:
                    timer.cancel()
        if self.link.connected and len(self.ownership.live) > 1:
            self._release_all()
        self.standins.stop()
        self.simulated.stop()
        # After the stand-ins stopped: when other gateways take this one's devices on, it no
        # longer writes them. A clean DISCONNECT has the broker drop the will, so the offline
        # lease is published here.
        if self.link.connected:
            try:
                delivery = self.link.publish(
                    self.topics.gateway(self.gateway_id),
                    self._lease(Presence.OFFLINE, "shutdown").encode(),
                    qos=1,
                    retain=True,
                )
                delivery.wait(LEASE_STOP_TIMEOUT)
            except PublishError:
                log.warning("could not publish the offline lease at stop")
        self.link.close()
        self.metrics.mqtt_connected.set(0)

    # -- broker -----------------------------------------------------------------------------

    def _lease(
        self,
        state: Presence,
        reason: Literal["birth", "shutdown", "connection_lost"],
        ts: float | None = None,
    ) -> GatewayLease:
        return GatewayLease(
            gateway=self.gateway_id,
            state=state,
            session=self.session,
            since=self.started,
            ts=time.time() if ts is None else ts,
            version=agent_version(),
            reason=reason,
            api=self.config.gateway.advertise_url,
        )

    def _publish_lease(self, link: MqttLink) -> None:
        link.publish(
            self.topics.gateway(self.gateway_id),
            self._lease(Presence.ONLINE, "birth").encode(),
            qos=1,
            retain=True,
        )

    def _confirm_members(self, connected: float, generation: int) -> None:
        if generation == self._generation and not self._stopping.is_set():
            self.membership.confirm(connected)

    def _on_connect(self, link: MqttLink) -> None:
        """After every connection, a retained "online" status is a claim to check: the broker
        may have crashed and lost the agents' connections and their last wills, or replay
        the births of agents long gone. Every live agent is asked to publish its birth again;
        those not heard from within `startup_grace` are taken for gone and simulated (see
        `_confirm_presence`). Twin documents are published again too: a broker without
        persistence lost them."""
        self.metrics.mqtt_connected.set(1)
        self._settling.set()
        connected = time.monotonic()
        with self._reconcile_lock:
            self._published_twins.clear()
            self._discovery_sent.invalidate()
        # Birth before the rebirth request: a gateway that answers the request has this
        # lease already.
        self._publish_lease(link)
        link.publish(
            self.topics.rebirth(), RebirthRequest(ts=self.clock()).encode(), qos=1, retain=False
        )
        self._generation += 1
        # The other gateways answer the rebirth request with their leases; those that did not
        # within the grace are taken for gone (Membership.confirm). A timer, not the rebuild:
        # a large twin's rebuild takes seconds, and the view must not wait for it.
        check = threading.Timer(
            self.config.presence.startup_grace,
            self._confirm_members,
            args=(connected, self._generation),
        )
        check.daemon = True
        check.start()
        threading.Thread(
            target=self._rebuild,
            args=(connected, self._generation),
            name="twin-rebuild",
            daemon=True,
        ).start()

    def _rebuild(self, connected: float, generation: int) -> None:
        """Read every retained document of the twin, then check presence (`_confirm_presence`)
        once the rebuild is done and `startup_grace` has passed since the connection: only
        after the retained statuses had their chance to arrive do we decide that a device has
        no agent."""
        try:
            self._rebuild_once(connected, generation)
        except Exception:
            if not self._stopping.is_set():  # a stop closes the link under a rebuild: no news
                log.exception("rebuilding the twin failed")

    def _rebuild_once(self, connected: float, generation: int) -> None:
        complete = self._fetch_documents(generation)
        if generation != self._generation:
            return
        rest = connected + self.config.presence.startup_grace - time.monotonic()
        if self._stopping.wait(max(0.0, rest)) or generation != self._generation:
            return
        self._confirm_presence(connected)
        if complete:
            self._index.settle(lambda device: self.fleet.get(device) is not None)
        self._index.republish()

    def _fetch_documents(self, generation: int) -> bool:
        """Have the broker send the retained documents of every device in the twin index, a
        portion at a time; without an index on the broker (an empty broker, or one written by
        a gateway older than the index), of every device at once. Returns whether all came.

        A stock mosquitto queues at most 1,000 messages for a client that reads slower than it
        sends and drops the rest: a wildcard subscription to 10,000 devices' documents hands a
        restarted gateway 50,000 at once, and it lost most of them."""
        link = self.link
        if not link.mqtt5:
            return True  # MQTT 3.1.1 has no retain handling: the wildcards brought them all
        probe = self.topics.probe(link.client_id)
        self._index.forget_broker()
        if not link.fetch_retained([self.topics.all_twin_index()], probe, FETCH_TIMEOUT):
            return False
        devices = self._index.loaded()
        if not devices:
            return link.fetch_retained(self._document_filters(), probe, FETCH_TIMEOUT)
        started = time.monotonic()
        complete = True
        for first in range(0, len(devices), FETCH_DEVICES):
            if generation != self._generation or self._stopping.is_set():
                return False
            portion = devices[first : first + FETCH_DEVICES]
            filters = [topic for d in portion for topic in self._document_filters(d)]
            if not link.fetch_retained(filters, probe, FETCH_TIMEOUT):
                log.warning(
                    "the broker did not send a portion of the twin's documents in time",
                    extra={"devices": portion[:3], "timeout_s": FETCH_TIMEOUT},
                )
                complete = False
        log.info(
            "twin documents read",
            extra={"devices": len(devices), "seconds": round(time.monotonic() - started, 3)},
        )
        return complete

    def _publish_retained(self, topic: str, payload: bytes) -> None:
        if self.link.connected:
            self.link.publish(topic, payload, qos=1, retain=True)

    def _confirm_presence(self, connected: float) -> None:
        # The members first, then the owners by them, at once: the devices are decided next,
        # and must not be by a view that still holds a gateway gone while this one was away.
        self.membership.confirm(connected)
        self.ownership.settle(self.membership.live_ids())
        self._grace_over.set()
        silent = self.fleet.silent_since(connected)
        if silent:
            log.warning(
                "agents silent since the gateway connected are taken for gone",
                extra={"devices": len(silent), "first": sorted(silent)[:5]},
            )
        with self.standins.batch():
            for device in silent:
                self.fleet.mark_silent(device, connected)
            self._settling.clear()
            for twin in self.fleet.snapshot():
                self._reconcile(twin)
            self._sweep_discovery()

    def _on_message(self, message: Message) -> None:  # noqa: PLR0912 - a branch per message kind
        try:
            parsed = self.topics.parse(message.topic)
            heard = None if message.retain else time.monotonic()
            if parsed.kind == "telemetry":
                self._on_telemetry(parsed, message.payload, heard)
            elif parsed.kind == "status":
                self._on_status(parsed, message.payload, heard)
            elif parsed.kind == "state":
                state = DeviceState.decode(message.payload)
                _same_device(state.device, parsed.device)
                self.fleet.apply_state(state)
                if heard is not None:
                    self.fleet.heard_live(state.device, heard)
            elif parsed.kind == "reported":
                reported = ReportedConfig.decode(message.payload)
                _same_device(reported.device, parsed.device)
                self.fleet.apply_reported(reported)
            elif parsed.kind == "desired":
                desired = DesiredConfig.decode(message.payload) if message.payload else None
                if desired is not None:
                    _same_device(desired.device, parsed.device)
                assert parsed.device is not None  # only telemetry topics may be shared
                self.fleet.apply_desired(desired, parsed.device)
            elif parsed.kind == "index" and message.payload:
                self._index.load(TwinIndex.decode(message.payload))
            elif parsed.kind in ("gateway", "rebirth"):
                self._on_membership(parsed, message, heard)
            elif parsed.kind == "twin":
                self._on_twin(parsed, message)
            elif parsed.kind == "response":
                self.commands.on_response(parsed, message)
            elif parsed.kind == "command":
                self.simulated.receive(parsed, message)
            elif parsed.kind == "output_set":
                self._on_output_set(parsed, message)
        except (ContractError, ValueError, RecursionError) as exc:
            # ValueError, RecursionError: the lenient JSON reads (`_is_flat`) of any payload.
            if message.topic.endswith("/status"):
                self.metrics.status_messages.labels("rejected").inc()
            self._malformed(message.topic, exc)

    def _on_twin(self, parsed: ParsedTopic, message: Message) -> None:
        assert parsed.device is not None
        payload = message.payload
        if not payload:
            # Cleared through another gateway's API: the device left the manifest. This
            # gateway's own clearing is no news, and must not undo an add that followed it.
            remover = dict(message.user_properties).get(REMOVED_BY)
            if remover is not None and remover != self.gateway_id:
                self._forget_device(parsed.device)
            return
        twin = TwinSummary.decode(payload)
        _same_device(twin.device, parsed.device)
        key, value = COMPAT_LABEL
        if twin.labels.get(key) == value:
            # Started by some gateway's simulator routes: that gateway's alone, and gone with
            # it; a restart must not bring it back.
            return
        claim_changed = self.ownership.note_document(twin)
        self.fleet.apply_manifest(
            ManifestDevice(id=twin.device, site=twin.site, labels=twin.labels, sensors={}),
            responses=[ResponseSpec.from_wire(r) for r in twin.responses],
        )
        if twin.gateway != self.gateway_id:
            # The page shows who plays the device's streams, whichever gateway it asks.
            self.fleet.mark_changed(twin.device)
        if claim_changed and (known := self.fleet.get(twin.device)) is not None:
            self._reconcile(known)  # released: this gateway may be the one to take it on

    def _on_membership(self, parsed: ParsedTopic, message: Message, heard: float | None) -> None:
        """A gateway's lease, or a gateway's rebirth request, which this one answers with its
        lease (live only: a retained request is no one asking now)."""
        if parsed.kind == "gateway":
            self.membership.apply(message.topic.rsplit("/", 1)[1], message.payload, heard)
        elif heard is not None:
            RebirthRequest.decode(message.payload)
            if self.link.connected:
                self._publish_lease(self.link)

    def _on_status(self, parsed: ParsedTopic, payload: bytes, heard: float | None) -> None:
        status = Status.decode(payload)
        _same_device(status.device, parsed.device)
        verdict = self.fleet.apply_status(status, heard)
        self.metrics.status_messages.labels(verdict).inc()
        if heard is not None and status.state is Presence.ONLINE:
            self._note_birth(status, heard)
        if verdict == "stale":
            log.info("discarded stale status", extra={"device": status.device, "boot": status.boot})

    def _note_birth(self, status: Status, heard: float) -> None:
        suspicion = self.duplicates.birth(status.device, status.boot, heard, status.session)
        twin = self.fleet.get(status.device)
        if suspicion is None or twin is None:
            return
        twin.duplicate_id = suspicion.reason
        twin.duplicate_until = suspicion.until
        if suspicion.new:
            log.warning(
                "device id used by more than one agent",
                extra={"device": status.device, "boot": status.boot, "reason": suspicion.reason},
            )

    def _malformed(self, topic: str, error: Exception) -> None:
        """Any client of the broker can publish garbage on our topics as fast as it likes: it
        is counted, and logged in one line per device and minute, never with a traceback."""
        kind: str = "unknown"
        device: str | None = None
        try:
            parsed = self.topics.parse(topic)
            kind, device = parsed.kind, parsed.device
        except ContractError:
            pass
        self.metrics.malformed_messages.labels(kind).inc()
        held_back = self._malformed_log.allow(device or topic)
        if held_back is None:
            return
        log.warning(
            "ignoring malformed message",
            extra={
                "topic": topic,
                "device": device,
                "error": str(error)[:300],
                "held_back": held_back,
            },
        )

    def _on_telemetry(self, parsed: ParsedTopic, payload: bytes, heard: float | None) -> None:
        """A reading of an agent or of a stand-in (never one of ours on this connection: MQTT 5
        no-local): it tells the twin the stream's last seq and values. On a topic every device
        shares, the payload names the device."""
        try:
            telemetry = Telemetry.decode(payload)
        except ContractError:
            if _is_flat(payload):
                self._on_flat(payload)
                return
            self.metrics.telemetry_ignored.labels("malformed").inc()
            raise
        if parsed.device is not None:
            _same_device(telemetry.device, parsed.device)
        if not self.fleet.apply_telemetry(telemetry):
            self.metrics.telemetry_ignored.labels("seq_jump").inc()
            log.debug(
                "ignored a seq jump from a source not serving the stream",
                extra={"device": telemetry.device, "sensor": telemetry.sensor},
            )
            return
        if telemetry.source is Source.SIMULATED:
            self._trace_standin(telemetry)
        else:
            self.learning.observe(telemetry)
            if heard is not None:
                self.fleet.heard_live(telemetry.device, heard)

    def _on_flat(self, payload: bytes) -> None:
        """The original simulator's payload (ours with `[mqtt] payload = "flat"`, or a producer
        written for it): no seq or source. A stand-in's shows the twin its values, on the
        stream the engine chose to speak for the device; any other is passed over."""
        try:
            flat = FlatReading.decode(payload)
        except ContractError:
            return
        sensor = self.standins.flat_sensor(flat.device_id)
        if sensor is None:
            return
        self.fleet.apply_telemetry(
            Telemetry(
                device=flat.device_id,
                sensor=sensor,
                ts=flat.timestamp,
                seq=0,
                source=Source.SIMULATED,
                values={
                    "temperature": Value(value=flat.temperature, unit=UNITS["temperature"]),
                    "humidity": Value(value=flat.humidity, unit=UNITS["humidity"]),
                },
            )
        )

    def _trace_standin(self, telemetry: Telemetry) -> None:
        """A span for a sample of the stand-ins' readings as the twin sees them come back,
        never one per message: per-message spans cut the original simulator's rate at 10,000
        devices to about a ninth."""
        if self._tracer_sampled is None:
            return
        now = self.clock()
        if now < self._next_trace:
            return
        self._next_trace = now + TRACE_SAMPLE_SECONDS
        with self._tracer_sampled.start_as_current_span(
            "simulation.publish",
            attributes={
                "device": telemetry.device,
                "sensor": telemetry.sensor,
                "seq": telemetry.seq,
            },
        ):
            pass

    # -- failover -----------------------------------------------------------------------------

    @property
    def _telemetry_names_device(self) -> bool:
        """Whether each device's readings have topics of their own (not `sensors/data`)."""
        return "{device_id}" in (self.topics.telemetry_template or "{device_id}")

    def _watch_telemetry(self, device: str) -> None:
        """Receive `device`'s readings (our own simulated ones excepted, MQTT 5 no-local).

        On a topic every device shares (`sensors/data`) that means every reading on it, so it
        is subscribed to only once the twin has a device: a gateway that runs nothing but the
        original simulator's fleet there does not receive that fleet back.
        """
        if self._telemetry_names_device:
            self.link.subscribe([self.topics.telemetry(device, "+")], qos=0, no_local=True)
        elif not self._shared_telemetry_watched:
            self._shared_telemetry_watched = True
            self.link.subscribe([self.topics.all_telemetry()], qos=0, no_local=True)

    def _reconcile(self, twin: DeviceTwin) -> None:
        """Simulate exactly the expected sensors of `twin` that no live agent serves, if this
        gateway is the one to play the device (gateway/ownership.py)."""
        self._index.note(twin.id, self.fleet.get(twin.id) is not None)
        if self._settling.is_set():
            return  # `_confirm_presence` reconciles every device when the check ends
        if self._stopping.is_set():
            return  # the stand-ins are going (or gone) with the gateway
        self._watch_telemetry(twin.id)
        with self._reconcile_lock:
            missing = twin.sensors_to_simulate(self._grace_over.is_set())
            decision = self.ownership.decide(twin.id) if twin.in_manifest else Decision.SERVE
            wanted = missing if decision is Decision.SERVE else {}
            log.debug(
                "reconcile",
                extra={
                    "device": twin.id,
                    "presence": twin.presence.value,
                    "boot": twin.boot,
                    "simulate": sorted(wanted),
                    "state": {n: s.health.value for n, s in twin.state.sensors.items()}
                    if twin.state
                    else None,
                },
            )
            seqs = self._seq_floor(twin.id)
            self.standins.serve(twin.id, wanted, seqs, responses=twin.responses)
            # The whole device played, its agent away: its outputs and commands too.
            away = twin.presence is PresenceState.OFFLINE or (
                twin.presence is PresenceState.UNKNOWN and self._grace_over.is_set()
            )
            self.simulated.update(
                twin.id,
                twin.desired,
                plays=decision is Decision.SERVE and twin.in_manifest and away,
            )
            # Every gateway keeps the hand-over log (any gateway's API shows it); the owner
            # alone counts them, so that a sum over gateways counts each once.
            self._note_serving(twin, missing, seqs, count=decision is Decision.SERVE)
            if decision is Decision.SERVE:
                self._publish_twin(twin, wanted)
                self._publish_discovery(twin, wanted)
            elif self.ownership.claimed(twin.id):
                self._publish_twin(twin, missing, claim=False)  # the release
                log.info(
                    "device handed to its owner",
                    extra={"device": twin.id, "owner": self.ownership.owner(twin.id)},
                )
            if decision is Decision.WAIT:
                self._schedule_handoff_check()

    def _on_output_set(self, parsed: ParsedTopic, message: Message) -> None:
        """A plain MQTT client (Home Assistant's switch or number, from the discovery configs)
        asks for a new value of one output: the device's owner among the gateways makes it the
        next desired version, as `PATCH /devices/{id}/desired` would; the others leave it to
        the owner, so one request is one version. ContractError (counted and logged as
        malformed) for a value the output refuses, or an output the document does not have."""
        device, name = parsed.device, parsed.name
        assert device is not None
        assert name is not None
        if (
            message.retain
            or self.discovery is None
            or self.ownership.owner(device) != self.gateway_id
        ):
            return
        twin = self.fleet.get(device)
        outputs = dict(twin.desired.outputs) if twin is not None and twin.desired else {}
        if twin is None or name not in outputs:
            raise ContractError(f"no output {name!r} in the desired document of {device!r}")
        text = message.payload.decode("utf-8", "replace").strip()
        switch = {PAYLOAD_ON: 1.0, PAYLOAD_OFF: 0.0}
        try:
            value = switch[text.upper()] if text.upper() in switch else float(text)
        except ValueError:
            raise ContractError(f"output {name!r}: not a value: {text[:32]!r}") from None
        try:
            value = check_output_value(outputs[name].driver, value, outputs[name].options)
        except HardwareError as exc:
            raise ContractError(f"output {name!r}: {exc}") from None
        if value == outputs[name].value:
            return  # already desired: no new version for nothing
        outputs[name] = msgspec.structs.replace(outputs[name], value=value)
        try:
            self.set_desired(
                device, dict(twin.expected_sensors()), expected_version=None, outputs=outputs
            )
        except (ConflictError, UnknownDeviceError) as exc:
            log.warning("output set not applied", extra={"device": device, "error": str(exc)})

    def _last_reading(self, device: str, sensor: str) -> LastReading | None:
        """The last reading the twin saw on `device`'s stream `sensor` (time and values), for
        a played device's `read_sensor`; None before its first."""
        twin = self.fleet.get(device)
        view = None if twin is None else twin.streams.get(sensor)
        if view is None or view.ts is None:
            return None
        return view.ts, dict(view.values)

    def simulates(self, device: str) -> bool:
        """Whether some gateway plays the whole of `device` now (its agent away, its streams
        simulated): a command to it is answered by that gateway (gateway/simulated.py)."""
        twin = self.fleet.get(device)
        return (
            twin is not None
            and twin.in_manifest
            and twin.presence is not PresenceState.ONLINE
            and "simulation" in twin.serving.values()
        )

    def _seq_floor(self, device: str) -> dict[str, int]:
        """Each stream's last seq: the highest of what this gateway saw on the stream and what
        the device's twin document (another gateway's release) says was played."""
        seqs = self.fleet.last_seqs(device)
        for name, seq in self.ownership.floor(device).items():
            seqs[name] = max(seqs.get(name, 0), seq)
        return seqs

    # -- several gateways -----------------------------------------------------------------------

    def _on_membership_change(self, change: MembershipChange) -> None:
        """Move devices once the live set has stood for `rebalance_delay`: each change restarts
        the wait, so a blip (a will, then a birth) moves nothing. A gateway that joins is
        given its `startup_grace` on top (this one's, as replicas share a config): it publishes
        its birth at its connection but decides nothing before its presence check, and a
        device released to it sooner would wait that long unplayed."""
        if not self._grace_over.is_set():
            return  # `_confirm_presence` settles the owners first thing
        delay = self.config.gateway.rebalance_delay
        if change.joined:
            delay += self.config.presence.startup_grace
        with self._rebalance_lock:
            if self._rebalance_timer is not None:
                self._rebalance_timer.cancel()
            self._rebalance_timer = threading.Timer(delay, self._rebalance)
            self._rebalance_timer.daemon = True
            self._rebalance_timer.start()

    def _rebalance(self) -> None:
        if self._stopping.is_set():
            return
        live = self.membership.live_ids()
        before = self.ownership.settle(live)
        if before == live:
            return
        left = frozenset(before) - frozenset(live)
        moved = {
            twin.id
            for twin in self.fleet.snapshot()
            if twin.in_manifest
            and self.ownership.owner(twin.id, before) != self.ownership.owner(twin.id, live)
        }
        moved.update(self.ownership.claims_of(left))
        log.info(
            "devices change hands between gateways",
            extra={"live": list(live), "before": list(before), "devices": len(moved)},
        )
        with self._reconcile_lock:
            # Those this gateway gives up, stopped together (their seqs read back at once).
            self.standins.stop_devices(
                d for d in moved if self.ownership.owner(d) != self.gateway_id
            )
        with self.standins.batch():
            for device in sorted(moved):
                if (twin := self.fleet.get(device)) is not None:
                    self._reconcile(twin)

    def _schedule_handoff_check(self) -> None:
        """Wake when the first wait for a release runs out (`Ownership.decide` then takes the
        device); a release that comes in time wakes the device on its own (`_on_twin`)."""
        deadline = self.ownership.next_deadline()
        if deadline is None:
            return
        with self._rebalance_lock:
            if self._handoff_timer is not None and self._handoff_timer.is_alive():
                return
            delay = max(0.0, deadline - time.monotonic()) + 0.01
            self._handoff_timer = threading.Timer(delay, self._check_handoffs)
            self._handoff_timer.daemon = True
            self._handoff_timer.start()

    def _check_handoffs(self) -> None:
        with self._rebalance_lock:
            self._handoff_timer = None
        if self._stopping.is_set():
            return
        for device in self.ownership.expired_waits():
            if (twin := self.fleet.get(device)) is not None:
                self._reconcile(twin)
        self._schedule_handoff_check()

    def _release_all(self) -> None:
        """At a clean stop beside other gateways: stop every stream this one plays and release
        its devices with their last seqs, so that their next owners continue them exactly, at
        once, without waiting out the rebalance delay for stragglers."""
        with self._reconcile_lock:
            claimed = self.ownership.claimed_devices()
            self.standins.stop_devices(claimed)
            for device in claimed:
                if (twin := self.fleet.get(device)) is not None:
                    self._publish_twin(twin, twin.sensors_to_simulate(grace_over=True), claim=False)

    def _keep_lease(self) -> None:
        """Beside other gateways, keep the stand-ins' lease (`EngineController.hold_after`)
        just inside the time the broker keeps this gateway's connection alive: each message
        the broker acknowledges proves the connection up when it was sent, and the broker
        publishes the will no sooner than 1.5 x keepalive after the last packet it heard.
        Others take over only after the will, so stand-ins held to that never play beside
        them, even when this process wakes from a freeze before it notices its connection
        is gone. Alone on the prefix, nobody would take over: no limit."""
        keepalive = self.config.mqtt.keepalive
        engine = self.standins.engine
        while not self._stopping.wait(max(0.2, keepalive / 4)):
            if len(self.ownership.live) < 2:
                engine.hold_after(math.inf)
                continue
            if not self.link.connected:
                continue
            sent = time.monotonic()
            try:
                # A topic nobody subscribes to: the broker only acknowledges it.
                beat = self.link.publish(self.topics.probe(self.link.client_id), b"", qos=1)
            except PublishError:
                continue
            if beat.wait(keepalive):
                engine.hold_after(sent + 1.5 * keepalive)

    def _on_disconnect(self, link: MqttLink) -> None:
        """Cut off from the broker while other gateways are live: they take this one's devices
        once its will is out, so its stand-ins stop now, before their engine connection gets
        back sooner than this one and plays beside them. Alone, it keeps playing: nobody else
        would, and the twin continues from the stand-ins' own numbers."""
        if len(self.ownership.live) < 2 or self._stopping.is_set():
            return
        self._settling.set()  # no reconcile until the presence check after the next connection
        with self._reconcile_lock:
            self.standins.stop_devices(self.standins.active_devices())
        log.warning("cut off from the broker: stand-ins stopped until the gateways are known")

    def _note_serving(
        self,
        twin: DeviceTwin,
        simulated: Mapping[str, SensorSettings],
        seqs: Mapping[str, int],
        *,
        count: bool = True,
    ) -> None:
        """Keep the device's hand-over log (shown on its page): who serves each expected
        stream after this reconcile, and the seq the new server continues after (`seqs`: the
        streams' last seqs in the twin, as the reconcile read them)."""
        online = twin.presence is PresenceState.ONLINE
        serving: dict[str, Serving] = {
            name: "simulation" if name in simulated else ("agent" if online else "none")
            for name in (twin.expected_sensors() if twin.in_manifest else {})
        }
        # Every stream's, also one leaving the config: its record says where it stopped.
        last = {
            name: max(seqs.get(name, 0), self.standins.last_seq(twin.id, name))
            for name in set(seqs) | set(serving) | set(twin.serving)
        }
        for handover in self.fleet.note_serving(twin.id, serving, last, self.clock()):
            # edgetwin_handovers_total counts changes of hands only: a stream taken up from
            # nobody (start-up, a sensor added) or left to nobody is not handed over.
            if count and handover.previous in _SERVERS and handover.served_by in _SERVERS:
                self.metrics.handovers.labels(handover.served_by).inc()
            # Debug: a broker outage hands a whole fleet over at once.
            log.debug(
                "hand-over",
                extra={
                    "device": twin.id,
                    "sensor": handover.sensor,
                    "served_by": handover.served_by,
                    "previous": handover.previous,
                    "seq": handover.seq,
                },
            )

    def _publish_twin(
        self, twin: DeviceTwin, simulated: Mapping[str, SensorSettings], *, claim: bool = True
    ) -> None:
        """The device's twin document, claiming the device for this gateway, or (`claim`
        False) releasing it with the last seq of every stream for the next owner."""
        if not self.link.connected:
            return
        if not twin.in_manifest:
            if self._published_twins.pop(twin.id, None) is not None:
                self.link.publish(self.topics.twin(twin.id), b"", qos=1, retain=True)
            self.ownership.forget(twin.id)
            return
        seqs = self.fleet.last_seqs(twin.id)
        sensors = {
            name: StreamServing(
                served_by=Server.SIMULATION if name in simulated else Server.AGENT,
                seq=max(seqs.get(name, 0), self.standins.last_seq(twin.id, name)),
            )
            for name in twin.expected_sensors()
        }
        summary = TwinSummary(
            device=twin.id,
            ts=self.clock(),
            presence=twin.presence.value,
            boot=twin.boot,
            session=twin.session,
            sensors=sensors,
            site=twin.site,
            labels=twin.labels,
            responses=[r.to_wire() for r in twin.responses],
            gateway=self.gateway_id if claim else None,
        )
        previous = self._published_twins.get(twin.id)
        if (
            previous is not None
            and _same_twin(previous, summary)
            # Not written over since: a late release of the gateway that had the device
            # before clears the claim on the broker, and it must be made again.
            and self.ownership.claimed(twin.id) == claim
        ):
            return
        if claim:
            self._published_twins[twin.id] = summary
        else:
            self._published_twins.pop(twin.id, None)
        # Noted before the publish: the document coming back must find the claim as it is.
        self.ownership.note_published(twin.id, claim=claim)
        self.link.publish(self.topics.twin(twin.id), summary.encode(), qos=1, retain=True)

    def _publish_discovery(self, twin: DeviceTwin, simulated: Mapping[str, SensorSettings]) -> None:
        """Home Assistant's configs of a manifest device, published where they changed: its
        expected sensors, those the simulation serves flagged as simulated, its site and its
        agent's version; and deleted (empty retained payloads) when it leaves the manifest.
        Caller holds the reconcile lock."""
        if self.discovery is None or not self.link.connected:
            return
        if not twin.in_manifest:
            messages = self._discovery_sent.remove(twin.id)
        else:
            description = DeviceDescription(
                device=twin.id,
                sensors=twin.expected_sensors(),
                simulated=frozenset(simulated),
                site=twin.site,
                agent_version=twin.agent_version,
                outputs=twin.desired.outputs if twin.desired is not None else {},
            )
            messages = self._discovery_sent.changes(twin.id, self.discovery.configs(description))
        for topic, payload in messages:
            self.link.publish(topic, payload, qos=1, retain=True)

    def _sweep_discovery(self) -> None:
        """Delete the configs of devices that left the manifest while the broker was away
        (their twin may be gone from the fleet, and is never reconciled again)."""
        if self.discovery is None:
            return
        with self._reconcile_lock:
            for device in self._discovery_sent.devices():
                twin = self.fleet.get(device)
                if twin is None or not twin.in_manifest:
                    for topic, payload in self._discovery_sent.remove(device):
                        self.link.publish(topic, payload, qos=1, retain=True)

    # -- manifest and desired config (the API's write side) -----------------------------------

    def add_device(self, device: ManifestDevice, *, publish_desired: bool = True) -> DeviceTwin:
        """Add `device` to the manifest; it is simulated until its agent comes online.

        Its sensors become its first desired config, retained, so that they survive a restart
        and reach its agent. With `publish_desired=False` they stay in the manifest entry only,
        as for the devices of the config file: for devices that live as long as this gateway.
        """
        if publish_desired and device.sensors and self.fleet.next_version(device.id) > MAX_VERSION:
            # Refused before the twin exists: a device added without its config would run none.
            raise ConflictError(
                f"desired config of {device.id} has used every version up to {MAX_VERSION}"
            )
        twin = self.fleet.add(device)
        if publish_desired and twin.desired is None and device.sensors:
            self.set_desired(device.id, dict(device.sensors), expected_version=None)
        if publish_desired and not self.ownership.documented(device.id):
            # Added through this gateway's API, owned by another: a document claiming nothing
            # tells the owner (and every gateway) of the device; the owner then claims it.
            with self._reconcile_lock:
                self._publish_twin(twin, {}, claim=False)
        return twin

    def remove_device(self, device_id: str, *, clear_desired: bool = True) -> None:
        """Take `device_id` out of the manifest: its simulation stops, its twin document is
        cleared, and (unless `clear_desired` is False) its retained desired document too."""
        if not self._forget_device(device_id):
            raise UnknownDeviceError(device_id)
        # For the other gateways on the prefix, whichever of them plays the device.
        self.link.publish(
            self.topics.twin(device_id),
            b"",
            qos=1,
            retain=True,
            user_properties={REMOVED_BY: self.gateway_id},
        )
        if clear_desired:
            # Clearing the retained documents removes the device for every replica and restart.
            self.link.publish(self.topics.desired(device_id), b"", qos=1, retain=True)

    def _forget_device(self, device_id: str) -> bool:
        """Take the device out of the manifest and forget what was learned of it; False if it
        was in none."""
        if self.fleet.remove(device_id) is None:
            return False
        self.learning.forget(device_id)
        self.history.forget(device_id)
        self.duplicates.forget(device_id)
        self.ownership.forget(device_id)
        self.standins.forget_outputs(device_id)
        return True

    def set_desired(
        self,
        device_id: str,
        sensors: dict[str, SensorSettings],
        *,
        expected_version: int | None,
        outputs: Mapping[str, OutputSettings] | None = None,
    ) -> DesiredConfig:
        """Publish the next version of a device's desired config, retained.

        `expected_version` is the version the caller based its change on (from the ETag or the
        body); None skips the check. A mismatch raises ConflictError: another write won.
        `outputs` None keeps the current document's outputs, so a writer that knows only
        sensors never removes them by accident. Outputs that can never work or would fight
        over a pin, a channel or a chip's frequency raise ContractError with the reason
        (`check_outputs`, the agent's own check), and nothing is published.
        """
        with self._desired_lock:
            twin = self.fleet.get(device_id)
            if twin is None or not twin.in_manifest:
                raise UnknownDeviceError(device_id)
            current = twin.desired.version if twin.desired else 0
            if expected_version is not None and expected_version != current:
                self.metrics.config_pushes.labels("conflict").inc()
                raise ConflictError(
                    f"desired config of {device_id} is at version {current}, not {expected_version}"
                )
            version = self.fleet.next_version(device_id)
            if version > MAX_VERSION:
                self.metrics.config_pushes.labels("conflict").inc()
                raise ConflictError(
                    f"desired config of {device_id} has used every version up to {MAX_VERSION}"
                )
            if outputs is None:
                outputs = twin.desired.outputs if twin.desired else {}
            check_outputs(outputs, sensors)
            desired = DesiredConfig(
                device=device_id, version=version, sensors=sensors, outputs=dict(outputs)
            )
            with self.tracer.start_as_current_span(
                "config.push", attributes={"device": device_id, "version": desired.version}
            ):
                carrier: dict[str, str] = {}
                inject(carrier)  # traceparent travels to the agent in MQTT 5 user properties
                self.link.publish(
                    self.topics.desired(device_id),
                    desired.encode(),
                    qos=1,
                    retain=True,
                    user_properties=carrier,
                )
            self.fleet.apply_desired(desired, device_id)
            self.metrics.config_pushes.labels("published").inc()
            log.info(
                "desired config published", extra={"device": device_id, "version": desired.version}
            )
            return desired


def _is_flat(payload: bytes) -> bool:
    """Whether `payload` has the original simulator's shape: an object naming its `device_id`,
    without the contract's schema version. The gateway reads nothing from such payloads, so it
    need not judge the rest of them."""
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested past the stack
        return False
    return isinstance(body, dict) and "device_id" in body and "v" not in body


def _same_device(in_payload: str, in_topic: str | None) -> None:
    if in_payload != in_topic:
        raise ContractError(f"payload for {in_payload!r} on the topic of {in_topic!r}")


def _same_twin(a: TwinSummary, b: TwinSummary) -> bool:
    return a.replace(ts=0.0) == b.replace(ts=0.0)
