"""Every driver by name: `open_sensor`, the one way the rest of the code gets a sensor, and
`open_output`, the one way it gets an output.

Adding a sensor driver is one `_register(module.DRIVER)` line below, an output driver one
`_register_output(...)` line.
"""

from __future__ import annotations

from collections.abc import Mapping

from edgetwin.hardware.backends import EmulatedBackend, RealBackend
from edgetwin.hardware.drivers import (
    DriverInfo,
    OptionValue,
    Placement,
    ads1115,
    bh1750,
    bme280,
    button,
    ds18b20,
    gpio_output,
    hcsr04,
    pca9685,
    pir,
    sht3x,
    soc_thermal,
)
from edgetwin.hardware.errors import SensorSettingsError, UnknownDriverError
from edgetwin.hardware.output import Output, OutputDriverInfo, OutputPlacement, OutputSpec
from edgetwin.hardware.quantities import default_signal
from edgetwin.hardware.sensor import Quantity, Sensor
from edgetwin.hardware.signals import SignalModel, derive_seed

__all__ = [
    "DRIVERS",
    "OUTPUT_DRIVERS",
    "DriverInfo",
    "OutputDriverInfo",
    "Placement",
    "check_output",
    "check_output_value",
    "check_settings",
    "driver_info",
    "list_drivers",
    "list_output_drivers",
    "open_output",
    "open_sensor",
    "output_driver_info",
    "output_spec",
    "reading_quantities",
]

DRIVERS: dict[str, DriverInfo] = {}
"""Driver name -> DriverInfo. Filled at import by the registration lines below, then read-only
by convention: tests that need an extra driver should build it directly, not register it."""


def _register(info: DriverInfo) -> None:
    if info.name in DRIVERS:
        raise ValueError(f"driver {info.name!r} is registered twice")
    DRIVERS[info.name] = info


_register(bme280.DRIVER)
_register(sht3x.DRIVER)
_register(bh1750.DRIVER)
_register(ads1115.DRIVER)
_register(ds18b20.DRIVER)
_register(soc_thermal.DRIVER)
_register(pir.DRIVER)
_register(button.DRIVER)
_register(hcsr04.DRIVER)


def list_drivers() -> list[DriverInfo]:
    """Every registered driver, sorted by name."""
    return [DRIVERS[name] for name in sorted(DRIVERS)]


def driver_info(name: str) -> DriverInfo:
    try:
        return DRIVERS[name]
    except KeyError:
        known = ", ".join(sorted(DRIVERS)) or "none"
        raise UnknownDriverError(f"no driver named {name!r}; known drivers: {known}") from None


def reading_quantities(
    driver: str, options: Mapping[str, OptionValue] | None = None
) -> tuple[Quantity, ...]:
    """The quantities a reading of `driver` at `options` holds, in the order the driver lists
    them, each with its vocabulary unit and the resolution (`decimals`) the driver's own
    conversion produces: what a stand-in for a missing sensor publishes, learned from the
    driver's metadata without opening a bus or an emulator.

    Options that change the reading (an ADS1115's `channels` and `gain`, a BH1750's `mtreg`)
    are taken into account and checked as the driver checks them; an I2C driver also refuses
    option names it does not take. GPIO and sysfs drivers' options change no quantity and are
    checked when the sensor is opened. Raises UnknownDriverError or SensorSettingsError.
    """
    return driver_info(driver).reading_quantities(dict(options or {}))


def check_settings(driver: str, *, address: int | None = None) -> DriverInfo:
    """Refuse, without touching any hardware, settings that can never work: an unknown driver,
    an address the chip cannot be strapped to. Raises UnknownDriverError or SensorSettingsError."""
    info = driver_info(driver)
    if address is not None and info.interface == "i2c" and address not in info.valid_addresses():
        valid = ", ".join(f"{a:#04x}" for a in info.valid_addresses())
        raise SensorSettingsError(f"{driver} cannot be at {address:#04x}; valid addresses: {valid}")
    if address is not None and info.interface != "i2c":
        raise SensorSettingsError(f"{driver} is a {info.interface} sensor and takes no I2C address")
    return info


def open_sensor(
    driver: str,
    *,
    backend: EmulatedBackend | RealBackend,
    bus: int = 1,
    address: int | None = None,
    pins: Mapping[str, int] | None = None,
    device: str | None = None,
    options: Mapping[str, OptionValue] | None = None,
    signals: Mapping[str, SignalModel] | None = None,
    seed: int = 0,
) -> Sensor:
    """Open `driver` where it is attached: I2C `bus` and `address` (the driver's default when
    None), GPIO `pins` by role, or sysfs `device`; `options` are the driver's own settings.

    With an emulated back end, an emulator of the chip is put where the real one would be,
    unless something is already there (a test may have put a faulty chip in place, or another
    sensor object opened the same chip; `signals` are refused then). Its quantities follow
    `signals`, and any quantity left out follows `default_signal`, seeded from the back end's
    seed, `seed` and the placement, so two sensors on one back end never share a stream.
    The same driver code then runs against either back end, and any HardwareError from bringing
    the chip up propagates.
    """
    info = driver_info(driver)
    placement = Placement(
        bus=bus,
        address=address,
        pins=dict(pins or {}),
        device=device,
        options=dict(options or {}),
    )
    resolved: Mapping[str, SignalModel] = {}
    if isinstance(backend, EmulatedBackend):
        resolved = _signals_for(info, signals, derive_seed(backend.seed, seed, *placement.key()))
    return info.open(backend, placement, signals=resolved, signals_given=signals is not None)


def _signals_for(
    info: DriverInfo, signals: Mapping[str, SignalModel] | None, seed: int
) -> dict[str, SignalModel]:
    given = dict(signals or {})
    names = [q.name for q in info.quantities]
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise SensorSettingsError(
            f"{info.name} measures {', '.join(names)}; no signal for {unknown}"
        )
    return {
        name: given[name]
        if name in given
        else default_signal(info.default_signal_kind(name), derive_seed(seed, name))
        for name in names
    }


# -- outputs ------------------------------------------------------------------------------------

OUTPUT_DRIVERS: dict[str, OutputDriverInfo] = {}
"""Output driver name -> OutputDriverInfo; filled at import like DRIVERS, read-only after."""


def _register_output(info: OutputDriverInfo) -> None:
    if info.name in OUTPUT_DRIVERS or info.name in DRIVERS:
        raise ValueError(f"driver {info.name!r} is registered twice")
    OUTPUT_DRIVERS[info.name] = info


_register_output(gpio_output.DIGITAL_DRIVER)
_register_output(gpio_output.PWM_DRIVER)
_register_output(pca9685.DRIVER)


def list_output_drivers() -> list[OutputDriverInfo]:
    """Every registered output driver, sorted by name."""
    return [OUTPUT_DRIVERS[name] for name in sorted(OUTPUT_DRIVERS)]


def output_driver_info(name: str) -> OutputDriverInfo:
    try:
        return OUTPUT_DRIVERS[name]
    except KeyError:
        known = ", ".join(sorted(OUTPUT_DRIVERS)) or "none"
        raise UnknownDriverError(
            f"no output driver named {name!r}; known output drivers: {known}"
        ) from None


def output_spec(driver: str, options: Mapping[str, OptionValue] | None = None) -> OutputSpec:
    """The range of values an output of `driver` at `options` accepts and its safe value,
    from the driver's metadata alone: no bus, pin or emulator is touched and gpiozero is not
    imported. Options are checked as the driver checks them (names and values, the safe value
    within the range). Raises UnknownDriverError or OutputSettingsError."""
    return output_driver_info(driver).spec(dict(options or {}))


def check_output_value(
    driver: str, value: object, options: Mapping[str, OptionValue] | None = None
) -> float:
    """`value` as a float if an output of `driver` at `options` accepts it, without hardware:
    what the agent and the twin check a desired value with before it goes anywhere near a pin.
    Raises OutputRangeError (refused, never clamped), OutputSettingsError or
    UnknownDriverError."""
    spec = output_spec(driver, options)
    return spec.value_range.check(value, f"{driver} value")


def check_output(
    driver: str,
    *,
    bus: int = 1,
    address: int | None = None,
    channel: int | None = None,
    pin: int | None = None,
    options: Mapping[str, OptionValue] | None = None,
) -> tuple[OutputSpec, OutputPlacement]:
    """Refuse, without touching any hardware, an output that can never work: an unknown
    driver, options it does not take, a place its interface cannot be attached to. Returns
    what it accepts and its safe value, and the placement with the driver's default address
    filled in (which tells two outputs on one chip apart from two chips). Raises
    UnknownDriverError or OutputSettingsError."""
    info = output_driver_info(driver)
    placement = info.check_placement(
        OutputPlacement(
            bus=bus, address=address, channel=channel, pin=pin, options=dict(options or {})
        )
    )
    return info.spec(placement.options), placement


def open_output(
    driver: str,
    *,
    backend: EmulatedBackend | RealBackend,
    bus: int = 1,
    address: int | None = None,
    channel: int | None = None,
    pin: int | None = None,
    options: Mapping[str, OptionValue] | None = None,
    name: str | None = None,
) -> Output:
    """Open an output of `driver` where it is attached (GPIO `pin`, or I2C `bus`, `address`
    and `channel`), already at its safe value. `options` are the driver's (every output takes
    "safe_value"); `name` labels it in errors (by default the driver and where it is).

    With an emulated back end the load or chip is emulated where the real one would be (see
    each driver module); the same driver code runs against either back end.
    """
    info = output_driver_info(driver)
    placement = info.check_placement(
        OutputPlacement(
            bus=bus, address=address, channel=channel, pin=pin, options=dict(options or {})
        )
    )
    return info.open(backend, placement, name=name)
