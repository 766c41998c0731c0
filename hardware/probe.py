"""Choosing a back end for a sensor or an output, and finding which known chips answer on the
I2C buses."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetwin.hardware.backends import EmulatedBackend, RealBackend
from edgetwin.hardware.errors import HardwareError, SensorMissingError
from edgetwin.hardware.output import Output
from edgetwin.hardware.registry import list_drivers, open_output, open_sensor
from edgetwin.hardware.sensor import Sensor


def open_first(
    driver: str, backends: Sequence[EmulatedBackend | RealBackend], **where: Any
) -> Sensor:
    """Open `driver` on the first back end where it comes up; `auto` is (real, emulated).

    The sensor's `status.backend` tells which one it got. If none works, the error names every
    back end tried and why, so "missing" on a board explains itself.
    """
    reasons = []
    for backend in backends:
        try:
            return open_sensor(driver, backend=backend, **where)
        except HardwareError as exc:
            reasons.append(f"{backend.kind.value}: {exc}")
    raise SensorMissingError(f"{driver} unavailable ({'; '.join(reasons)})")


def open_output_first(
    driver: str, backends: Sequence[EmulatedBackend | RealBackend], **where: Any
) -> Output:
    """`open_first` for an output: opened, at its safe value, on the first back end where it
    comes up; `output.backend` tells which. If none works, the error names each and why."""
    reasons = []
    for backend in backends:
        try:
            return open_output(driver, backend=backend, **where)
        except HardwareError as exc:
            reasons.append(f"{backend.kind.value}: {exc}")
    raise SensorMissingError(f"{driver} unavailable ({'; '.join(reasons)})")


@dataclass(frozen=True, slots=True)
class Found:
    bus: int
    address: int
    driver: str


def i2c_buses(dev_dir: Path = Path("/dev")) -> list[int]:
    """The I2C adapters this machine has, from the /dev/i2c-N device nodes."""
    numbers = []
    for node in dev_dir.glob("i2c-*"):
        if match := re.fullmatch(r"i2c-(\d+)", node.name):
            numbers.append(int(match[1]))
    return sorted(numbers)


def probe(backend: RealBackend, buses: Iterable[int]) -> list[Found]:
    """Every known I2C chip that answers its driver (chip id, calibration) on `buses`.

    Each candidate is opened by its own driver, so a chip is named only when it behaves like
    that chip, not merely because something acknowledges the address.
    """
    found = []
    i2c_drivers = [info for info in list_drivers() if info.interface == "i2c"]
    for bus in buses:
        for info in i2c_drivers:
            for address in info.valid_addresses():
                try:
                    sensor = open_sensor(info.name, backend=backend, bus=bus, address=address)
                except HardwareError:
                    continue
                sensor.close()
                found.append(Found(bus, address, info.name))
    return found
