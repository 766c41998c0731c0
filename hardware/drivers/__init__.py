"""Sensor drivers, one module per chip, and the record each one registers.

A driver module holds the chip's register map, its pure conversion functions, the driver class
(taking an injected bus) and the chip's emulator, and exports one `DRIVER: DriverInfo`.
`hardware.registry` lists those records, one line per driver. `DriverInfo` lives here rather
than in the registry so that driver modules can build theirs without importing the registry,
which imports them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from hardware.bus import I2CBus, RegisterDevice
from hardware.sensor import BackendKind, Clock, Quantity, Sensor
from hardware.signals import SignalModel
from hardware.timing import Timer


class OpenDriver(Protocol):
    """Construct the driver on a bus and bring the chip up; raises HardwareError on failure."""

    def __call__(
        self,
        bus: I2CBus,
        *,
        address: int,
        backend: BackendKind,
        clock: Clock,
        timer: Timer,
    ) -> Sensor: ...


class BuildEmulator(Protocol):
    """Construct the chip's register-level emulator, its quantities driven by `signals`."""

    def __call__(
        self,
        *,
        signals: Mapping[str, SignalModel],
        clock: Clock,
        timer: Timer,
    ) -> RegisterDevice: ...


@dataclass(frozen=True, slots=True)
class DriverInfo:
    """What the registry knows of a driver: enough to list it, open it and emulate its chip."""

    name: str
    bus: Literal["i2c"]
    quantities: tuple[Quantity, ...]
    default_address: int
    description: str
    open_driver: OpenDriver
    build_emulator: BuildEmulator
    addresses: tuple[int, ...] = ()
    """Every address the chip can be strapped to; empty means only `default_address`."""

    def valid_addresses(self) -> tuple[int, ...]:
        return self.addresses or (self.default_address,)
