"""Sensor drivers, one module per chip, and the record each one registers.

A driver module holds the chip's register map or file format, its pure conversion functions,
the driver class (taking an injected bus, pin factory or sysfs tree) and the chip's emulator,
and exports one `DRIVER: DriverInfo`. `hardware.registry` lists those records, one line per
driver. `DriverInfo` lives here rather than in the registry so that driver modules can build
theirs without importing the registry, which imports them.

What the I2C chip drivers share is in `hardware.drivers.i2c`, what the GPIO ones share in
`hardware.gpio`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

from edgetwin.hardware.bus import I2CBus, I2CDevice
from edgetwin.hardware.errors import SensorSettingsError
from edgetwin.hardware.sensor import BackendKind, Clock, Quantity, Sensor
from edgetwin.hardware.signals import SignalModel
from edgetwin.hardware.timing import Timer

if TYPE_CHECKING:
    from edgetwin.hardware.backends import Backend

Interface = Literal["i2c", "gpio", "sysfs"]
OptionValue = bool | int | float | str


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one sensor is attached. Each interface reads the fields it needs and no others."""

    bus: int = 1
    """I2C adapter number (/dev/i2c-N)."""
    address: int | None = None
    """I2C 7-bit address; None means the driver's default."""
    pins: Mapping[str, int] = field(default_factory=dict)
    """GPIO pins (BCM numbers) by role, e.g. {"pin": 17} or {"trigger": 23, "echo": 24}."""
    device: str | None = None
    """sysfs device name, e.g. a 1-Wire id "28-000005e2fdc3" or "thermal_zone0"."""
    options: Mapping[str, OptionValue] = field(default_factory=dict)
    """Driver settings such as an ADC's gain or a button's debounce time."""

    def key(self) -> tuple[object, ...]:
        """What tells two placements apart, for seeding their signals differently."""
        return (self.bus, self.address, tuple(sorted(self.pins.items())), self.device)


QuantitiesFor = Callable[[Mapping[str, OptionValue]], tuple[Quantity, ...]]
"""The quantities a reading holds at the given driver options; SensorSettingsError for options
the driver refuses."""


class OpenSensor(Protocol):
    """Bring the sensor up on `backend` at `placement`; with an emulated back end, first put an
    emulator driven by `signals` (one model per quantity) where the real chip would be."""

    def __call__(
        self,
        backend: Backend,
        placement: Placement,
        *,
        signals: Mapping[str, SignalModel],
        signals_given: bool,
    ) -> Sensor: ...


@dataclass(frozen=True, slots=True)
class DriverInfo:
    """What the registry knows of a driver: enough to list it, open it and emulate its chip."""

    name: str
    interface: Interface
    quantities: tuple[Quantity, ...]
    description: str
    open: OpenSensor
    default_address: int | None = None
    addresses: tuple[int, ...] = ()
    """I2C: every address the chip can be strapped to; empty means only `default_address`."""
    pins: tuple[str, ...] = ()
    """GPIO: the pin roles the sensor needs, in the order `Placement.pins` must name them."""
    default_device: str | None = None
    """sysfs: the device name used when the placement gives none."""
    default_signals: Mapping[str, str] = field(default_factory=dict)
    """Quantity -> the vocabulary quantity whose `default_signal` plays it when no signal is
    given, where the two differ: a SoC's "temperature" runs warm, as "soc_temperature"."""
    quantities_for: QuantitiesFor | None = None
    """For a driver whose options change what a reading holds (an ADC's channels and gain):
    the quantities at those options. None: always `quantities`."""

    def reading_quantities(self, options: Mapping[str, OptionValue]) -> tuple[Quantity, ...]:
        """The quantities a reading at `options` holds, with the unit and the resolution
        (decimals) the driver's conversion produces; no bus or emulator is touched."""
        return self.quantities if self.quantities_for is None else self.quantities_for(options)

    def default_signal_kind(self, quantity: str) -> str:
        return self.default_signals.get(quantity, quantity)

    def valid_addresses(self) -> tuple[int, ...]:
        if self.addresses:
            return self.addresses
        return () if self.default_address is None else (self.default_address,)


def refuse_signals_for_present(existing: object | None, where: str, signals_given: bool) -> None:
    """Opening a sensor where an emulator already sits reuses that emulator; if the caller
    asked for particular signals, silently measuring something else would be worse."""
    if existing is not None and signals_given:
        raise SensorSettingsError(
            f"signals given, but {existing!r} is already at {where}: detach it first, "
            "or change the signals on that emulator"
        )


# -- I2C drivers: one generic way to put an emulator on the bus and open the driver -------------


class OpenI2CDriver(Protocol):
    """Construct the driver on a bus and bring the chip up; raises HardwareError on failure.

    `options` are the placement's driver settings, their names already checked against the
    driver's list; the driver checks their values (SensorSettingsError naming the option).
    """

    def __call__(
        self,
        bus: I2CBus,
        *,
        address: int,
        backend: BackendKind,
        clock: Clock,
        timer: Timer,
        options: Mapping[str, OptionValue],
    ) -> Sensor: ...


class BuildI2CEmulator(Protocol):
    """Construct the chip's emulator, its quantities driven by `signals`.

    It gets the same `options` as the driver, for chips whose wiring they describe; settings
    the driver sends to the chip over the bus reach the emulator that way instead.
    """

    def __call__(
        self,
        *,
        signals: Mapping[str, SignalModel],
        clock: Clock,
        timer: Timer,
        options: Mapping[str, OptionValue],
    ) -> I2CDevice: ...


def i2c_driver(
    *,
    name: str,
    quantities: tuple[Quantity, ...],
    description: str,
    default_address: int,
    open_driver: OpenI2CDriver,
    build_emulator: BuildI2CEmulator,
    addresses: tuple[int, ...] = (),
    options: tuple[str, ...] = (),
    default_signals: Mapping[str, str] | None = None,
    quantities_for: QuantitiesFor | None = None,
) -> DriverInfo:
    """The DriverInfo of an I2C chip: the same driver code runs on a real or a fake bus.

    `options` names the settings the driver takes from `Placement.options`; any other name is
    refused with SensorSettingsError before anything touches a bus, so a typo in a config file
    stops start-up instead of being silently ignored.
    """

    def open_i2c(
        backend: Backend,
        placement: Placement,
        *,
        signals: Mapping[str, SignalModel],
        signals_given: bool,
    ) -> Sensor:
        from edgetwin.hardware.backends import EmulatedBackend

        _refuse_unknown_options(name, placement.options, options)
        address = default_address if placement.address is None else placement.address
        valid = addresses or (default_address,)
        if address not in valid:
            listed = ", ".join(f"{a:#04x}" for a in valid)
            raise SensorSettingsError(
                f"{name} cannot be at {address:#04x}; valid addresses: {listed}"
            )
        bus: I2CBus
        if isinstance(backend, EmulatedBackend):
            fake = backend.i2c_bus(placement.bus)
            refuse_signals_for_present(
                fake.device_at(address), f"{address:#04x} on bus {placement.bus}", signals_given
            )
            fake.attach_if_free(
                address,
                lambda: build_emulator(
                    signals=signals,
                    clock=backend.clock,
                    timer=backend.timer,
                    options=placement.options,
                ),
            )
            bus = fake
        else:
            bus = backend.i2c_bus(placement.bus)
        return open_driver(
            bus,
            address=address,
            backend=backend.kind,
            clock=backend.clock,
            timer=backend.timer,
            options=placement.options,
        )

    def reading_quantities(given: Mapping[str, OptionValue]) -> tuple[Quantity, ...]:
        _refuse_unknown_options(name, given, options)
        return quantities if quantities_for is None else quantities_for(given)

    return DriverInfo(
        name=name,
        interface="i2c",
        quantities=quantities,
        description=description,
        open=open_i2c,
        default_address=default_address,
        addresses=addresses,
        default_signals=dict(default_signals or {}),
        quantities_for=reading_quantities,
    )


def _refuse_unknown_options(
    driver: str, given: Mapping[str, OptionValue], accepted: tuple[str, ...]
) -> None:
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        listed = f"options: {', '.join(accepted)}" if accepted else "it takes no options"
        raise SensorSettingsError(
            f"{driver} has no option {', '.join(map(repr, unknown))}; {listed}"
        )
