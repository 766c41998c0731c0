"""The face every sensor driver shows: typed readings with units, health, open/close."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import Self

from edgetwin.hardware.errors import HardwareError, SensorMissingError

Clock = Callable[[], float]
"""Seconds since the epoch; injected so that tests and virtual-time runs control it."""


class Health(StrEnum):
    OK = "ok"
    FAULTED = "faulted"
    MISSING = "missing"


class BackendKind(StrEnum):
    REAL = "real"
    EMULATED = "emulated"


@dataclass(frozen=True, slots=True)
class Measurement:
    value: float
    unit: str


@dataclass(frozen=True, slots=True)
class Reading:
    """One sample of every quantity a sensor measures, taken at one instant."""

    timestamp: float
    values: Mapping[str, Measurement]


@dataclass(frozen=True, slots=True)
class Quantity:
    """One quantity a driver measures. Drivers build theirs with `hardware.quantities.measured`,
    which takes the unit from the vocabulary."""

    name: str
    unit: str
    description: str = ""
    decimals: int = 2
    """The resolution the driver's conversion produces, as decimals to publish a value with."""


@dataclass(slots=True)
class SensorStatus:
    health: Health = Health.OK
    reason: str | None = None
    backend: BackendKind = BackendKind.EMULATED
    consecutive_errors: int = field(default=0)


class Sensor(ABC):
    """A driver bound to one device on one bus. Drivers never create their bus: it is injected."""

    driver_name: str
    quantities: tuple[Quantity, ...]

    def __init__(self, backend: BackendKind, clock: Clock = time.time) -> None:
        self.clock = clock
        self.status = SensorStatus(backend=backend)

    @abstractmethod
    def _measure(self) -> Mapping[str, float]:
        """Take one measurement; values keyed by quantity name, in the quantity's unit.

        Raises a `hardware.errors.HardwareError` subclass on any bus or chip fault.
        """

    def read(self) -> Reading:
        """Measure once and keep `status` current; hardware faults propagate as HardwareError."""
        try:
            raw = self._measure()
        except SensorMissingError as exc:
            self.status.health = Health.MISSING
            self.status.reason = str(exc)
            self.status.consecutive_errors += 1
            raise
        except HardwareError as exc:
            self.status.health = Health.FAULTED
            self.status.reason = str(exc)
            self.status.consecutive_errors += 1
            raise
        self.status.health = Health.OK
        self.status.reason = None
        self.status.consecutive_errors = 0
        units = {q.name: q.unit for q in self.quantities}
        return Reading(
            timestamp=self.clock(),
            values={name: Measurement(value, units[name]) for name, value in raw.items()},
        )

    def close(self) -> None:  # noqa: B027 - drivers without resources need not override
        """Release the bus or pins; the default holds nothing."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
