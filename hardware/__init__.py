"""Hardware abstraction: sensor drivers, their emulators, buses, back ends and signal models.

Knows nothing of MQTT, the agent or the gateway. Beyond the standard library it uses smbus2 for
I2C, gpiozero for GPIO (imported only when a GPIO sensor is opened) and msgspec for recording
files (imported only when one is read).

What a quantity is (unit, physical limits, default resolution and signal) is defined once, in
`hardware.quantities`; recording file formats in `hardware.recordings`.

Outputs (relays, PWM, a PCA9685's channels) are `hardware.output.Output`s, opened with
`open_output`; what each accepts and its safe value come from `output_spec` without hardware.

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
    OutputRangeError,
    OutputSettingsError,
    SensorMissingError,
    SensorSettingsError,
    SensorTimeoutError,
    SettingsError,
    UnknownDriverError,
)
from edgetwin.hardware.output import Output, OutputKind, OutputSpec, ValueRange
from edgetwin.hardware.quantities import default_signal
from edgetwin.hardware.registry import (
    check_output_value,
    driver_info,
    list_drivers,
    list_output_drivers,
    open_output,
    open_sensor,
    output_spec,
    reading_quantities,
)
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
    "Output",
    "OutputKind",
    "OutputRangeError",
    "OutputSettingsError",
    "OutputSpec",
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
    "SettingsError",
    "SignalModel",
    "Timer",
    "UnknownDriverError",
    "ValueRange",
    "VirtualTimer",
    "check_output_value",
    "default_signal",
    "driver_info",
    "list_drivers",
    "list_output_drivers",
    "make_backend",
    "open_output",
    "open_sensor",
    "output_spec",
    "reading_quantities",
]
