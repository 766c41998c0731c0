"""The original simulator's control model: devices device_000, device_001, ... started, scaled
and stopped as one group through its routes (gateway/routers/compat.py).

They are ordinary manifest devices: GET /devices lists them, the simulation engine plays them,
and an agent of the same id that comes online takes its stream over as for any other device.
They are added and removed through the same GatewayService paths as the API's devices, with
two differences:

- No retained desired document per device. Their sensors come from the config file (one
  emulated BME280 every `frequency_sec`), not from an operator, so there is nothing for an
  agent or a restart to recover; and `/start?count=100` should not cost a hundred retained
  writes, then a hundred more to clear them at `/stop`.
- A label (`COMPAT_LABEL`) in their manifest entry and twin document. Like the original's, they
  live as long as the gateway that started them: a clean stop removes them (clearing their
  twin documents), and a twin document of theirs left on the broker by a crash, or published by
  another gateway, never enters this gateway's manifest.

The group is always the first N ids, device_000 to device_{N-1}: /start restarts it from
scratch, /scale adds or removes at the top, as the original does.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass
from typing import Literal

from gateway.config import COMPAT_LABEL, CompatPlan, ManifestDevice, default_sensors
from gateway.service import GatewayService, UnknownDeviceError

log = logging.getLogger(__name__)


class CompatConflictError(Exception):
    """An id the group needs belongs to a manifest device that the group did not start."""


@dataclass(frozen=True)
class Scaled:
    status: Literal["scaled up", "scaled down", "unchanged"]
    changed: int
    running: int


class SimulatorControl:
    """Start, scale and stop the group; thread-safe, one change at a time."""

    def __init__(self, service: GatewayService, plan: CompatPlan) -> None:
        self._service = service
        self._plan = plan
        self._lock = threading.Lock()
        self._count = len(plan.initial)  # the group is device ids 0 .. count-1

    @property
    def max_devices(self) -> int:
        return self._plan.max_devices

    def running_ids(self) -> list[str]:
        """The group's devices still in the manifest, sorted like the original's."""
        with self._lock:
            return self._present(self._ids(0, self._count))

    def start(self, count: int) -> int:
        """Stop the group, then start its first min(count, max_devices) devices afresh."""
        target = min(count, self._plan.max_devices)
        with self._lock:
            wanted = self._ids(0, target)
            self._check_free(wanted, owned=self._ids(0, self._count))
            self._remove(self._ids(0, self._count))
            self._count = 0
            self._add(wanted)
            self._count = target
        log.info("simulator devices started", extra={"count": target})
        return target

    def scale(self, count: int) -> Scaled:
        """Grow or shrink the group to min(count, max_devices) without touching the others."""
        target = min(count, self._plan.max_devices)
        with self._lock:
            current = self._count
            if target > current:
                added = self._ids(current, target)
                self._check_free(added, owned=[])
                self._add(added)
                result = Scaled("scaled up", target - current, target)
            elif target < current:
                self._remove(self._ids(target, current))
                result = Scaled("scaled down", current - target, target)
            else:
                result = Scaled("unchanged", 0, current)
            self._count = target
        if result.changed:
            log.info("simulator devices scaled", extra={"from": current, "to": target})
        return result

    def stop(self) -> None:
        with self._lock:
            self._remove(self._ids(0, self._count))
            self._count = 0
        log.info("simulator devices stopped")

    def shutdown(self) -> None:
        """On a clean stop of the gateway: remove the devices the routes started, so that their
        twin documents do not outlive them. The config file's own devices stay."""
        key, value = COMPAT_LABEL
        with self._lock:
            started = []
            for device_id in self._ids(0, self._count):
                twin = self._service.fleet.get(device_id)
                if twin is not None and twin.in_manifest and twin.labels.get(key) == value:
                    started.append(device_id)
            self._remove(started)

    # -- helpers (with the lock held) ---------------------------------------------------------

    def _ids(self, start: int, stop: int) -> list[str]:
        return [self._plan.device_id(i) for i in range(start, stop)]

    def _present(self, ids: list[str]) -> list[str]:
        fleet = self._service.fleet
        return sorted(i for i in ids if (twin := fleet.get(i)) is not None and twin.in_manifest)

    def _check_free(self, wanted: list[str], owned: list[str]) -> None:
        mine = set(owned)
        taken = [i for i in wanted if i not in mine and i in self._present([i])]
        if taken:
            shown = ", ".join(taken[:5]) + (" ..." if len(taken) > 5 else "")
            raise CompatConflictError(
                f"{len(taken)} id(s) the simulator devices need belong to manifest devices it "
                f"did not start: {shown}; remove them (DELETE /devices/ID) or rename them"
            )

    def _add(self, ids: list[str]) -> None:
        key, value = COMPAT_LABEL
        sensors = default_sensors(self._plan.interval)
        for device_id in ids:
            self._service.add_device(
                ManifestDevice(id=device_id, sensors=sensors, labels={key: value}),
                publish_desired=False,
            )

    def _remove(self, ids: list[str]) -> None:
        for device_id in ids:
            # Gone already if removed through DELETE /devices meanwhile.
            with contextlib.suppress(UnknownDeviceError):
                self._service.remove_device(device_id, clear_desired=False)
