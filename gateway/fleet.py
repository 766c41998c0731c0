"""The twin of every device: manifest, desired and reported config, state, presence, streams.

Everything here is a cache of what the broker holds in retained messages (status, state,
desired, reported, twin) plus what passes by on telemetry, so a restarted gateway, or a second
one, rebuilds the same view by subscribing.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final, Literal

from edgetwin.agent.contract import (
    MAX_INT,
    DesiredConfig,
    DeviceState,
    Presence,
    ReportedConfig,
    SensorHealth,
    SensorSettings,
    Server,
    Source,
    Status,
    Telemetry,
)
from edgetwin.gateway.config import ManifestDevice
from edgetwin.gateway.history import History
from edgetwin.gateway.scenario.model import ResponseSpec


class PresenceState(StrEnum):
    UNKNOWN = "unknown"  # never heard of since the gateway started
    ONLINE = "online"
    OFFLINE = "offline"


ConfigSync = Literal["in_sync", "pending", "rejected", "no_desired"]
Serving = Literal["agent", "simulation", "none"]
"""Who serves a sensor's stream, as the twin decides it: the agent, the gateway's stand-in, or
nobody (the agent is away and the grace has not ended, or the sensor left the config)."""

HANDOVERS_KEPT: Final = 20
"""Hand-overs remembered per device: enough to read the last few failovers and failbacks of
every sensor on the device's page, and at 10,000 devices a few megabytes at worst (a record is
made only when who serves a stream changes)."""

# A desired version is a contract integer: the twin never hands out one beyond them.
MAX_VERSION: Final = MAX_INT
"""The highest desired config version: above it JSON numbers lose integers in many decoders.
The same bound as the wire contract's integers (agent/contract.py), kept here so the twin does
not depend on when that lands."""


@dataclass
class StreamView:
    """The last reading the gateway saw on one sensor stream, from whichever source."""

    seq: int = 0
    ts: float | None = None
    source: str | None = None
    values: dict[str, tuple[float, str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HandOver:
    """Who took over one sensor's stream, when (gateway wall clock), and the stream's last
    `seq` then: the new server continues after it."""

    ts: float
    sensor: str
    served_by: Serving
    previous: Serving | None  # None: the first decision the gateway made for the stream
    seq: int
    presence: str  # the agent's presence at the change, which usually explains it


@dataclass
class DeviceTwin:
    id: str
    in_manifest: bool
    manifest_sensors: dict[str, SensorSettings] = field(default_factory=dict)
    site: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    responses: tuple[ResponseSpec, ...] = ()
    """How the device's simulated signals answer its outputs (its manifest entry's)."""
    presence: PresenceState = PresenceState.UNKNOWN
    boot: int | None = None
    session: str | None = None
    past_sessions: list[str] = field(default_factory=list)
    """Sessions of this device's earlier lives, newest last: their statuses are stale."""
    agent_version: str | None = None
    last_seen: float | None = None
    last_reason: str | None = None
    desired: DesiredConfig | None = None
    reported: ReportedConfig | None = None
    state: DeviceState | None = None
    streams: dict[str, StreamView] = field(default_factory=dict)
    heard: float = -math.inf
    """When the agent was last heard live (a message sent now, not a retained one), on the
    gateway's monotonic clock: see `Fleet.silent_since`."""
    duplicate_id: str | None = None
    """Why more than one agent seems to use this id (gateway/duplicates.py), until the
    monotonic time `duplicate_until`."""
    duplicate_until: float = -math.inf
    serving: dict[str, Serving] = field(default_factory=dict)
    """Who serves each stream now, as the last reconcile decided."""
    handovers: tuple[HandOver, ...] = ()
    """The last changes of `serving`, oldest first: the gateway's own memory, not a retained
    document, so it starts empty at each gateway start. A tuple replaced whole, so an API
    thread reads it without the fleet's lock."""

    def duplicate_suspected(self, now: float) -> str | None:
        return self.duplicate_id if now < self.duplicate_until else None

    def expected_sensors(self) -> dict[str, SensorSettings]:
        """The sensors this device should have: its desired config, else its manifest entry."""
        sensors = self.desired.sensors if self.desired is not None else self.manifest_sensors
        return {name: s for name, s in sensors.items() if s.enabled}

    def sensors_to_simulate(self, grace_over: bool) -> dict[str, SensorSettings]:
        """The expected sensors no live agent serves: all of them while the agent is away, else
        those its state reports faulted or missing, or does not run at all."""
        if not self.in_manifest:
            return {}
        expected = self.expected_sensors()
        if self.presence is PresenceState.UNKNOWN:
            return expected if grace_over else {}
        if self.presence is PresenceState.OFFLINE:
            return expected
        if self.state is None:
            return {}  # online, its first state document is on its way
        return {
            name: settings
            for name, settings in expected.items()
            if name not in self.state.sensors
            or self.state.sensors[name].health is not SensorHealth.OK
        }

    def config_sync(self) -> ConfigSync:
        if self.desired is None:
            return "no_desired"
        if self.reported is None:
            return "pending"
        # The rejection first: an agent that refuses a version runs an older one, or one of a
        # higher number (a device deleted and added again), and that is not the desired one.
        if (
            self.reported.status == "rejected"
            and self.reported.rejected_version == self.desired.version
        ):
            return "rejected"
        if self.reported.applied_version == self.desired.version:
            return "in_sync"
        return "pending"

    def delta(self) -> dict[str, object]:
        """What the agent runs differently from what is desired, by sensor; empty when in sync."""
        if self.desired is None or self.config_sync() == "in_sync":
            return {}
        running = self.state.sensors if self.state is not None else {}
        wanted = self.expected_sensors()
        return {
            "add": sorted(set(wanted) - set(running)),
            "remove": sorted(set(running) - set(wanted)),
            "desired_version": self.desired.version,
            "applied_version": self.reported.applied_version if self.reported else None,
        }


# Ended sessions remembered per device: enough for the late wills of a few quick restarts.
_PAST_SESSIONS: Final = 8

# How far ahead of a stream's seq a reading from a source that does not serve the stream may
# be. The hand-overs keep one numbering (each side continues the other's), so a legitimate
# straggler (a reading in flight at a hand-over) is within a few of it; the margin leaves room
# for a backlog, and refuses a forged number a step of the contract's 2**53 would allow.
MAX_FOREIGN_SEQ_JUMP: Final = 10_000

PresenceListener = Callable[[DeviceTwin], None]
StatusVerdict = Literal["applied", "stale", "unchanged"]


class Fleet:
    """Thread-safe registry of twins; listeners hear every change that may move a stream."""

    def __init__(self, manifest: list[ManifestDevice], history: History | None = None) -> None:
        self._lock = threading.Lock()
        self.history = history if history is not None else History(0)
        # Devices changed since the live feed last looked (`take_changes`): a set add on the
        # MQTT thread is all a change costs it; the feed reads them on its own schedule.
        self._changed: set[str] = set()
        self.membership = 0
        """Counts changes of which devices there are, or of what a filter looks at (site,
        labels): the live feed sends fresh pages when it moves."""
        self._devices: dict[str, DeviceTwin] = {
            d.id: DeviceTwin(
                d.id, True, dict(d.sensors), d.site, dict(d.labels), tuple(d.responses)
            )
            for d in manifest
        }
        self._listeners: list[PresenceListener] = []
        # Devices removed through this gateway: a twin document of theirs still in flight must
        # not bring them back.
        self._removed: set[str] = set()
        # The highest config version seen per device id (desired, applied or rejected), kept
        # past a removal: an agent refuses any version below the one it runs, and a retained
        # report outlives the DELETE that cleared the desired document.
        self._versions: dict[str, int] = {}

    def subscribe(self, listener: PresenceListener) -> None:
        self._listeners.append(listener)

    def get(self, device_id: str) -> DeviceTwin | None:
        with self._lock:
            return self._devices.get(device_id)

    def snapshot(self) -> list[DeviceTwin]:
        with self._lock:
            return sorted(self._devices.values(), key=lambda d: d.id)

    def _twin(self, device_id: str, *, revive: bool = False) -> DeviceTwin | None:
        """The twin of `device_id`, created on first news of it; None for a device removed
        here, whose documents and readings may still be in flight, unless `revive` (an agent
        announcing itself is news worth a record again)."""
        twin = self._devices.get(device_id)
        if twin is None:
            if device_id in self._removed and not revive:
                return None
            twin = self._devices[device_id] = DeviceTwin(device_id, in_manifest=False)
            self.membership += 1
        return twin

    def take_changes(self) -> set[str]:
        """The ids of devices changed since the last call (added, removed, or any document or
        reading of theirs)."""
        with self._lock:
            changed, self._changed = self._changed, set()
        return changed

    def mark_changed(self, device_id: str) -> None:
        with self._lock:
            self._changed.add(device_id)

    def _notify(self, twin: DeviceTwin) -> None:
        self.mark_changed(twin.id)
        for listener in self._listeners:
            listener(twin)

    def add(
        self, device: ManifestDevice, *, responses: Sequence[ResponseSpec] | None = None
    ) -> DeviceTwin:
        with self._lock:
            self._removed.discard(device.id)
            twin = self._twin(device.id)
            assert twin is not None
            twin.in_manifest = True
            twin.manifest_sensors = dict(device.sensors)
            twin.site = device.site
            twin.labels = dict(device.labels)
            twin.responses = tuple(device.responses if responses is None else responses)
            self.membership += 1
        self._notify(twin)
        return twin

    def remove(self, device_id: str) -> DeviceTwin | None:
        with self._lock:
            twin = self._devices.get(device_id)
            if twin is None or not twin.in_manifest:
                return None
            self._removed.add(device_id)
            self.membership += 1
            twin.in_manifest = False
            twin.desired = None
            if twin.presence is PresenceState.UNKNOWN:
                del self._devices[device_id]
        self._notify(twin)
        return twin

    def apply_status(self, status: Status, heard: float | None = None) -> StatusVerdict:
        """Fold one status message into the registry; `heard`: when it was heard live (None
        for a retained one, replayed by the broker).

        A status of an older boot than the one we know is a late last will of a dead
        connection and is discarded: without that, it could mark a live agent offline. A
        session not seen before is a new life whatever its boot (a wiped disk counts boots
        from 1 again), and one seen before but ended is stale.
        """
        with self._lock:
            twin = self._twin(status.device, revive=True)
            assert twin is not None
            if heard is not None:
                twin.heard = max(twin.heard, heard)
            if _stale(twin, status):
                return "stale"
            if status.session is not None and status.session != twin.session:
                if twin.session is not None:
                    twin.past_sessions = [*twin.past_sessions, twin.session][-_PAST_SESSIONS:]
                twin.session = status.session
            presence = PresenceState(status.state.value)
            changed = presence is not twin.presence
            twin.presence = presence
            twin.boot = status.boot
            twin.agent_version = status.agent_version
            twin.last_seen = status.ts
            twin.last_reason = status.reason
            self._changed.add(twin.id)
        if changed:
            self._notify(twin)
            return "applied"
        return "unchanged"

    def heard_live(self, device_id: str, at: float) -> None:
        """The device's agent spoke just now (a reading or a state document, not a retained
        document replayed). One taken for gone for its silence is back online: an agent that
        publishes is there, whatever it failed to answer."""
        with self._lock:
            twin = self._devices.get(device_id)
            if twin is None:
                return
            twin.heard = max(twin.heard, at)
            revived = twin.presence is PresenceState.OFFLINE and twin.last_reason == "silent"
            if revived:
                twin.presence = PresenceState.ONLINE
                twin.last_reason = "heard"
        if revived:
            self._notify(twin)

    def silent_since(self, since: float) -> list[str]:
        """Devices marked online whose agent has not been heard live since `since`."""
        with self._lock:
            return [
                t.id
                for t in self._devices.values()
                if t.presence is PresenceState.ONLINE and t.heard < since
            ]

    def mark_silent(self, device_id: str, since: float) -> bool:
        """Take a device that is online only by a retained status, and silent since `since`,
        for gone (reason "silent"); returns whether it was."""
        with self._lock:
            twin = self._devices.get(device_id)
            if twin is None or twin.presence is not PresenceState.ONLINE or twin.heard >= since:
                return False
            twin.presence = PresenceState.OFFLINE
            twin.last_reason = "silent"
        self._notify(twin)
        return True

    def apply_state(self, state: DeviceState) -> None:
        with self._lock:
            twin = self._twin(state.device)
            if twin is None:
                return
            before = twin.state.sensors if twin.state else None
            twin.state = state
            twin.last_seen = max(twin.last_seen or 0.0, state.ts)
            self._changed.add(twin.id)
        if before != state.sensors:
            self._notify(twin)

    def _saw_version(self, device_id: str, *versions: int | None) -> None:
        """Caller holds the lock. Versions beyond MAX_VERSION are outside the contract and are
        not counted: one rogue document must not use up the device's version space."""
        seen = [v for v in versions if v is not None and v <= MAX_VERSION]
        if seen:
            self._versions[device_id] = max(self._versions.get(device_id, 0), *seen)

    def next_version(self, device_id: str) -> int:
        """The version a new desired document of `device_id` needs: above every one seen."""
        with self._lock:
            return self._versions.get(device_id, 0) + 1

    def apply_reported(self, reported: ReportedConfig) -> None:
        with self._lock:
            self._saw_version(reported.device, reported.applied_version, reported.rejected_version)
            twin = self._twin(reported.device)
            if twin is not None:
                twin.reported = reported
                self._changed.add(twin.id)

    def apply_desired(self, desired: DesiredConfig | None, device_id: str) -> None:
        """A desired document seen on the broker (ours, or another replica's), or its removal."""
        with self._lock:
            if desired is not None:
                self._saw_version(device_id, desired.version)
            twin = self._twin(device_id) if desired is not None else self._devices.get(device_id)
            if twin is None:
                return
            if (
                desired is not None
                and twin.desired is not None
                and desired.version < twin.desired.version
            ):
                return
            twin.desired = desired
        self._notify(twin)

    def apply_manifest(
        self, device: ManifestDevice, responses: Sequence[ResponseSpec] = ()
    ) -> None:
        """A twin document of another replica (or an earlier run) names a manifest device,
        and how its signals answer its outputs (checked against its sensors where it plays
        them: the document names no sensors of its own)."""
        with self._lock:
            twin = self._devices.get(device.id)
            if device.id in self._removed or (twin is not None and twin.in_manifest):
                return
        self.add(device, responses=responses)

    def apply_telemetry(self, telemetry: Telemetry) -> bool:
        """A reading updates its device's stream. A real device's reading makes a record of a
        device not heard of before; a simulated one does not: the scale engine's fleet (or
        another simulator's) is not part of the twin.

        Returns False for a reading ignored as implausible: a seq far ahead of the stream's
        from a source that does not serve it now. The stream's seq is what the simulation and
        the returning agent continue from, so a forged one would move both far ahead.
        """
        with self._lock:
            if telemetry.source is Source.SIMULATED and telemetry.device not in self._devices:
                return True
            twin = self._twin(telemetry.device)
            if twin is None:
                return True
            stream = twin.streams.get(telemetry.sensor)
            if (
                stream is not None
                and stream.ts is not None
                and telemetry.seq > stream.seq + MAX_FOREIGN_SEQ_JUMP
                and not _serves(twin, telemetry)
            ):
                return False
            stream = twin.streams.setdefault(telemetry.sensor, StreamView())
            stream.seq = max(stream.seq, telemetry.seq)
            stream.ts = telemetry.ts
            stream.source = telemetry.source.value
            stream.values = {q: (v.value, v.unit) for q, v in telemetry.values.items()}
            self._changed.add(twin.id)
        # Outside the fleet's lock: the history has its own, and API reads of the one must
        # not wait on the other.
        self.history.record(telemetry)
        return True

    def note_serving(
        self, device_id: str, serving: Mapping[str, Serving], seqs: Mapping[str, int], ts: float
    ) -> list[HandOver]:
        """Record who serves each stream of `device_id` now (`serving`; a stream left out is
        served by nobody any more); returns the hand-overs this makes, which are kept in the
        twin's bounded log. `seqs`: each stream's last seq, whoever sent it."""
        made: list[HandOver] = []
        with self._lock:
            twin = self._devices.get(device_id)
            if twin is None:
                return made
            before = twin.serving
            now = dict(serving)
            for name in sorted(set(before) | set(now)):
                served = now.get(name, "none")
                previous = before.get(name)
                if served == previous or (previous is None and served == "none"):
                    continue
                made.append(
                    HandOver(
                        ts=ts,
                        sensor=name,
                        served_by=served,
                        previous=previous,
                        seq=seqs.get(name, 0),
                        presence=twin.presence.value,
                    )
                )
            twin.serving = now | {name: "none" for name in before if name not in now}
            if made:
                twin.handovers = (*twin.handovers, *made)[-HANDOVERS_KEPT:]
        return made

    def last_seqs(self, device_id: str) -> dict[str, int]:
        with self._lock:
            twin = self._devices.get(device_id)
            return {name: s.seq for name, s in twin.streams.items()} if twin else {}

    def tally(self) -> tuple[int, int, dict[str, int], dict[str, int]]:
        """Devices, manifest devices, devices by presence, manifest devices by config sync: one
        pass, unsorted (the live feed recounts a 10,000-device fleet every second)."""
        presence: dict[str, int] = {}
        config: dict[str, int] = {}
        in_manifest = 0
        with self._lock:
            twins = list(self._devices.values())
        for twin in twins:
            key = twin.presence.value
            presence[key] = presence.get(key, 0) + 1
            if twin.in_manifest:
                in_manifest += 1
                sync = twin.config_sync()
                config[sync] = config.get(sync, 0) + 1
        return len(twins), in_manifest, presence, config

    def last_readings(self) -> Iterator[tuple[str, str, str, str, str, float]]:
        """Each stream's last values, as (device, sensor, quantity, unit, source, value), for
        metrics. Source and values are taken together under the lock (a reading replaces the
        values dict whole), so each stream's figures come from one reading."""
        with self._lock:
            streams = [
                (twin.id, name, stream.source, stream.values)
                for twin in self._devices.values()
                for name, stream in twin.streams.items()
                if stream.source is not None
            ]
        for device, sensor, source, values in streams:
            assert source is not None
            for quantity, (value, unit) in values.items():
                yield device, sensor, quantity, unit, source, value

    def counts(self) -> dict[tuple[str, str], int]:
        """Devices by (presence, served_by), for metrics."""
        result: dict[tuple[str, str], int] = {}
        with self._lock:
            for twin in self._devices.values():
                served = _device_server(twin)
                key = (twin.presence.value, served)
                result[key] = result.get(key, 0) + 1
        return result


def _stale(twin: DeviceTwin, status: Status) -> bool:
    if status.session is None or status.session == twin.session:
        return twin.boot is not None and status.boot < twin.boot
    if status.session in twin.past_sessions:
        return True
    # A session never met: a new life, unless it is the last will of one that ended before
    # the one we know began (the gateway started between them).
    return (
        status.state is Presence.OFFLINE
        and twin.presence is PresenceState.ONLINE
        and twin.last_seen is not None
        and status.ts < twin.last_seen
    )


def _serves(twin: DeviceTwin, telemetry: Telemetry) -> bool:
    """Whether the reading's source serves its stream now: the simulation for the sensors it
    stands in for, the agent for the rest."""
    simulated = twin.in_manifest and telemetry.sensor in twin.sensors_to_simulate(grace_over=True)
    return (telemetry.source is Source.SIMULATED) == simulated


def _device_server(twin: DeviceTwin) -> str:
    if twin.presence is PresenceState.ONLINE:
        return Server.AGENT.value
    return Server.SIMULATION.value if twin.in_manifest else "none"


def served_by(twin: DeviceTwin, simulated: Mapping[str, object]) -> dict[str, Server]:
    """Per expected sensor: the simulation where it runs one, else the agent."""
    return {
        name: Server.SIMULATION if name in simulated else Server.AGENT
        for name in twin.expected_sensors()
    }
