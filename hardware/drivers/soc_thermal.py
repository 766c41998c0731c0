"""The board's own SoC temperature, from a Linux thermal zone in sysfs, and its emulator.

The kernel's thermal framework (Documentation/driver-api/thermal/sysfs-api.rst) shows each
sensor as /sys/class/thermal/thermal_zoneN with, among others, `type` (the zone's name, e.g.
"cpu-thermal" on a Raspberry Pi, "x86_pkg_temp" on an Intel CPU) and `temp` ("current
temperature as reported by thermal zone (sensor)", in m°C). The Pi has one zone; PCs and
phones have many, and `Placement.device` picks one ("thermal_zone0" by default).

A zone whose sensor cannot currently measure may show THERMAL_TEMP_INVALID (-274000, below
absolute zero, include/linux/thermal.h) or fail the read (EAGAIN, ENODATA, EIO); the first is
a DataError, the second a BusError.
"""

from __future__ import annotations

import errno
import math
import os
import re
import threading
import time
from collections.abc import Mapping
from typing import Final, Self

from edgetwin.hardware.backends import Backend, EmulatedBackend
from edgetwin.hardware.drivers import DriverInfo, Placement, refuse_signals_for_present
from edgetwin.hardware.errors import DataError, SensorSettingsError
from edgetwin.hardware.quantities import decimals_for, measured
from edgetwin.hardware.sensor import BackendKind, Clock, Sensor
from edgetwin.hardware.signals import Constant, SignalModel
from edgetwin.hardware.sysfs import SysfsDevice, SysfsTree

THERMAL: Final = "class/thermal"
DEFAULT_ZONE: Final = "thermal_zone0"
ZONE: Final = re.compile(r"thermal_zone[0-9]+")

THERMAL_TEMP_INVALID: Final = -274000
"""m°C; what a zone reports for "no valid temperature" (include/linux/thermal.h)."""
ABSOLUTE_ZERO_MILLI: Final = -273150

QUANTITIES: Final = (
    # The kernel reports whole m°C.
    measured(
        "temperature",
        decimals=decimals_for(1 / 1000),
        description="SoC die temperature (thermal zone)",
    ),
)


def parse_millicelsius(text: str) -> float:
    """°C from a thermal zone's `temp` file (an integer in m°C); DataError otherwise."""
    stripped = text.strip()
    try:
        milli = int(stripped)
    except ValueError:
        raise DataError(f"temp should be an integer in m°C, got {text!r}") from None
    if milli == THERMAL_TEMP_INVALID:
        raise DataError("the zone reports THERMAL_TEMP_INVALID: its sensor has no reading")
    if milli < ABSOLUTE_ZERO_MILLI:
        raise DataError(f"{milli} m°C is below absolute zero")
    return milli / 1000.0


def check_zone(zone: str) -> str:
    if ZONE.fullmatch(zone) is None:
        raise SensorSettingsError(
            f"soc_thermal device {zone!r} is not a thermal zone: expected thermal_zoneN, as "
            "listed in /sys/class/thermal"
        )
    return zone


class SoCThermal(Sensor):
    """One thermal zone read through sysfs. `open()` reads the zone's `type` (`zone_type`)
    and so fails with SensorMissingError when the zone does not exist."""

    driver_name = "soc_thermal"
    quantities = QUANTITIES

    def __init__(
        self,
        sysfs: SysfsTree,
        zone: str = DEFAULT_ZONE,
        *,
        backend: BackendKind = BackendKind.REAL,
        clock: Clock = time.time,
    ) -> None:
        super().__init__(backend, clock)
        self.sysfs = sysfs
        self.zone = check_zone(zone)
        self.zone_type: str | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SoCThermal(zone={self.zone!r}, type={self.zone_type!r})"

    def open(self) -> Self:
        with self._lock:
            self.zone_type = self.sysfs.read_text(
                f"{THERMAL}/{self.zone}/type", what=self._where()
            ).strip()
        return self

    def _measure(self) -> Mapping[str, float]:
        text = self.sysfs.read_text(f"{THERMAL}/{self.zone}/temp", what=self._where())
        try:
            return {"temperature": parse_millicelsius(text)}
        except DataError as exc:
            raise DataError(f"{self._where()}: {exc}") from exc

    def _where(self) -> str:
        return f"soc_thermal {self.zone}"


class ThermalZoneEmulator(SysfsDevice):
    """A thermal zone: `type` fixed, `temp` rendered from the "temperature" signal (°C) at
    each read, in whole m°C. A NaN sample fails the read with EIO."""

    def __init__(
        self,
        *,
        signals: Mapping[str, SignalModel] | None = None,
        clock: Clock = time.time,
        zone_type: str = "cpu-thermal",
    ) -> None:
        unknown = set(signals or {}) - {"temperature"}
        if unknown:
            raise ValueError(f"thermal zone emulator has no quantity {sorted(unknown)}")
        self.signal: SignalModel = (signals or {}).get("temperature", Constant(48.0))
        self.clock = clock
        self.zone_type = zone_type
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ThermalZoneEmulator({self.zone_type!r})"

    def set_signal(self, model: SignalModel) -> None:
        with self._lock:
            self.signal = model

    def file_names(self) -> tuple[str, ...]:
        return ("type", "temp")

    def render(self, name: str) -> str:
        if name == "type":
            return f"{self.zone_type}\n"
        with self._lock:
            celsius = self.signal.sample(self.clock())
        if math.isnan(celsius):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return f"{round(celsius * 1000)}\n"


def open_soc_thermal(
    backend: Backend,
    placement: Placement,
    *,
    signals: Mapping[str, SignalModel],
    signals_given: bool,
) -> Sensor:
    """Open thermal zone `placement.device` (default thermal_zone0).

    On an emulated back end a `ThermalZoneEmulator` is put there unless one is already; with
    no signals given it follows the default "soc_temperature" signal: a Pi runs warm.
    """
    zone = check_zone(placement.device or DEFAULT_ZONE)
    if isinstance(backend, EmulatedBackend):
        tree = backend.sysfs
        directory = f"{THERMAL}/{zone}"
        refuse_signals_for_present(tree.device_at(directory), directory, signals_given)
        model = signals["temperature"]
        tree.attach_if_free(
            directory,
            lambda: ThermalZoneEmulator(signals={"temperature": model}, clock=backend.clock),
        )
    sensor = SoCThermal(backend.sysfs, zone, backend=backend.kind, clock=backend.clock)
    return sensor.open()


DRIVER: Final = DriverInfo(
    name="soc_thermal",
    interface="sysfs",
    quantities=QUANTITIES,
    description="SoC temperature from a Linux thermal zone (sysfs)",
    open=open_soc_thermal,
    default_device=DEFAULT_ZONE,
    default_signals={"temperature": "soc_temperature"},
)
