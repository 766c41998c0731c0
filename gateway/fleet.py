"""The gateway's view of the fleet: which devices should exist and which agents are live."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from agent.contract import SensorSettings, Server, Status
from gateway.config import ManifestDevice


class PresenceState(StrEnum):
    UNKNOWN = "unknown"  # never heard of since the gateway started
    ONLINE = "online"
    OFFLINE = "offline"


@dataclass
class DeviceRecord:
    id: str
    sensors: dict[str, SensorSettings]
    in_manifest: bool
    site: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    presence: PresenceState = PresenceState.UNKNOWN
    boot: int | None = None
    agent_version: str | None = None
    last_seen: float | None = None
    last_reason: str | None = None

    @property
    def served_by(self) -> Server | None:
        """Who publishes this device's telemetry now; None for a device we neither own nor see."""
        if self.presence is PresenceState.ONLINE:
            return Server.AGENT
        return Server.SIMULATION if self.in_manifest else None


PresenceListener = Callable[[DeviceRecord], None]
StatusVerdict = Literal["applied", "stale", "unchanged"]


class Fleet:
    """Thread-safe registry; listeners hear every presence change, outside the lock."""

    def __init__(self, manifest: list[ManifestDevice]) -> None:
        self._lock = threading.Lock()
        self._devices: dict[str, DeviceRecord] = {
            d.id: DeviceRecord(d.id, dict(d.sensors), True, d.site, dict(d.labels))
            for d in manifest
        }
        self._listeners: list[PresenceListener] = []

    def subscribe(self, listener: PresenceListener) -> None:
        self._listeners.append(listener)

    def get(self, device_id: str) -> DeviceRecord | None:
        with self._lock:
            return self._devices.get(device_id)

    def snapshot(self) -> list[DeviceRecord]:
        with self._lock:
            return sorted(self._devices.values(), key=lambda d: d.id)

    def apply_status(self, status: Status) -> StatusVerdict:
        """Fold one status message into the registry.

        A status of an older boot than the one we know is a late last will of a dead
        connection and is discarded: without that, it could mark a live agent offline.
        """
        with self._lock:
            record = self._devices.get(status.device)
            if record is None:
                record = DeviceRecord(status.device, {}, in_manifest=False)
                self._devices[status.device] = record
            if record.boot is not None and status.boot < record.boot:
                return "stale"
            presence = PresenceState(status.state.value)
            changed = presence is not record.presence
            record.presence = presence
            record.boot = status.boot
            record.agent_version = status.agent_version
            record.last_seen = status.ts
            record.last_reason = status.reason
        if changed:
            for listener in self._listeners:
                listener(record)
            return "applied"
        return "unchanged"

    def counts(self) -> dict[tuple[str, str], int]:
        """Devices by (presence, served_by), for metrics."""
        result: dict[tuple[str, str], int] = {}
        with self._lock:
            for record in self._devices.values():
                served = record.served_by.value if record.served_by else "none"
                key = (record.presence.value, served)
                result[key] = result.get(key, 0) + 1
        return result
