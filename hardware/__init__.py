"""Hardware abstraction: sensor drivers, their emulators, buses, back ends and signal models.

Knows nothing of MQTT, the agent or the gateway. Beyond the standard library it uses smbus2 for
I2C, gpiozero for GPIO (imported only when a GPIO sensor is opened) and msgspec for recording
files (imported only when one is read).

What a quantity is (unit, physical limits, default resolution and signal) is defined once, in
`hardware.quantities`; recording file formats in `hardware.recordings`.

Adding a sensor: one module under `hardware/drivers/` (register map or file format, pure
conversion functions, the driver taking an injected bus, its emulator, `DRIVER = ...`), its
test under `tests/hardware/`, and one `_register(module.DRIVER)` line in `hardware/registry.py`.
"""

from edgetwin.hardware.backends import Backend, EmulatedBackend, RealBackend, make_backend
from edgetwin.hardware.drivers import DriverInfo, Placement
from edgetwin.hardware.errors import (
    BusError,
    ChipIdError,
    DataError,
    HardwareError,
    SensorMissingError,
    SensorSettingsError,
    SensorTimeoutError,
    UnknownDriverError,
)
from edgetwin.hardware.quantities import default_signal
from edgetwin.hardware.registry import driver_info, list_drivers, open_sensor, reading_quantities
from edgetwin.hardware.sensor import (
    BackendKind,
    Clock,
    Health,
    Measurement,
    Quantity,
    Reading,
    Sensor,
    SensorStatus,
)
from edgetwin.hardware.signals import SignalModel
from edgetwin.hardware.timing import ManualClock, RealTimer, Timer, VirtualTimer

__all__ = [
    "Backend",
    "BackendKind",
    "BusError",
    "ChipIdError",
    "Clock",
    "DataError",
    "DriverInfo",
    "EmulatedBackend",
    "HardwareError",
    "Health",
    "ManualClock",
    "Measurement",
    "Placement",
    "Quantity",
    "Reading",
    "RealBackend",
    "RealTimer",
    "Sensor",
    "SensorMissingError",
    "SensorSettingsError",
    "SensorStatus",
    "SensorTimeoutError",
    "SignalModel",
    "Timer",
    "UnknownDriverError",
    "VirtualTimer",
    "default_signal",
    "driver_info",
    "list_drivers",
    "make_backend",
    "open_sensor",
    "reading_quantities",
]
