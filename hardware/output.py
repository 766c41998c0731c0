"""The face every output driver shows: a declared range, a safe value, apply and read back.

An output is the other half of a device's pins: a relay or an LED (digital), a fan's duty cycle
(PWM), a channel of a PWM controller chip. Whatever drives it, it declares the values it takes
(`ValueRange`) and a safe value inside that range, the state it must fall back to when nobody
is in control (a clean stop, a crash, a lost broker: the agent's business, not this layer's).

A value outside the declared range is refused with `OutputRangeError` before anything is
written, never clamped: a desired 1.5 for a duty cycle is a bug upstream, and quietly running
the fan at full speed would hide it. Values inside the range may still be quantised by the
hardware (12-bit duty on a PCA9685); `apply` returns the value actually applied, so the caller
can report what the device really does.

What an output driver takes and accepts is known from its `OutputDriverInfo` alone
(`hardware.registry.output_spec`), so the agent, the twin and the wire contract can validate a
desired value without opening any hardware, as `reading_quantities` does for sensors.
"""

from __future__ import annotations

import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import TracebackType
from typing import TYPE_CHECKING, ClassVar, Literal, Protocol, Self

from edgetwin.hardware.errors import (
    HardwareError,
    OutputRangeError,
    OutputSettingsError,
    SettingsError,
)
from edgetwin.hardware.options import DriverOptions
from edgetwin.hardware.sensor import BackendKind

if TYPE_CHECKING:
    from edgetwin.hardware.backends import Backend
    from edgetwin.hardware.drivers import OptionValue

BCM_PINS = range(28)
"""GPIO0..GPIO27, as in `hardware.gpio` (which imports gpiozero; this module must not)."""


class OutputKind(StrEnum):
    DIGITAL = "digital"
    """Off or on: 0 or 1."""
    PWM = "pwm"
    """A duty cycle: the fraction of each period the output is on, 0..1."""


@dataclass(frozen=True, slots=True)
class ValueRange:
    """The values an output accepts: `lo`..`hi`, or only `levels` when they are given.

    `step` is the hardware's resolution where it has one (1/4096 for a PCA9685): a value in
    range is applied as the nearest step, and `apply` says which.
    """

    lo: float
    hi: float
    unit: str
    """"1" for the dimensionless on/off level and duty fraction, as SI writes it."""
    levels: tuple[float, ...] = ()
    step: float | None = None
    description: str = ""

    def check(self, value: object, what: str) -> float:
        """`value` as a float if this range accepts it; OutputRangeError naming `what` if not.

        Numbers only (a bool counts as 0 or 1, as in Python); NaN and infinities are refused
        like any other value outside the range.
        """
        if not isinstance(value, int | float):
            raise OutputRangeError(f"{what} takes a number, got {value!r}")
        number = float(value)
        if self.levels:
            if number not in self.levels:
                listed = " or ".join(f"{level:g}" for level in self.levels)
                raise OutputRangeError(f"{what} takes {listed}, got {value!r}")
            return number
        if math.isnan(number) or not self.lo <= number <= self.hi:
            raise OutputRangeError(
                f"{what} takes {self.lo:g}..{self.hi:g}, got {value!r}; "
                "values outside the range are refused, not clamped"
            )
        return number


DIGITAL_RANGE = ValueRange(0.0, 1.0, "1", levels=(0.0, 1.0), description="0 off, 1 on")
DUTY_RANGE = ValueRange(0.0, 1.0, "1", description="duty cycle: 0 off .. 1 fully on")


@dataclass(frozen=True, slots=True)
class OutputSpec:
    """What an output at given options accepts: its range and its safe value; also the
    options as the driver parsed them (defaults filled in), for opening it."""

    value_range: ValueRange
    safe_value: float
    settings: Mapping[str, OptionValue] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OutputPlacement:
    """Where one output is attached. Each interface reads the fields it needs and no others."""

    bus: int = 1
    """I2C adapter number (/dev/i2c-N)."""
    address: int | None = None
    """I2C 7-bit address; None means the driver's default."""
    channel: int | None = None
    """The output on a multi-channel chip (a PCA9685's 0..15)."""
    pin: int | None = None
    """GPIO (BCM number). Outputs have no default pin: one guessed wrong drives whatever is
    wired there."""
    options: Mapping[str, OptionValue] = field(default_factory=dict)


class OpenOutput(Protocol):
    """Bring the output up on `backend` at `placement`, at its safe value; with an emulated
    back end, first put an emulator where the real load or chip would be."""

    def __call__(
        self, backend: Backend, placement: OutputPlacement, *, name: str | None
    ) -> Output: ...


class SpecFor(Protocol):
    """Parse and check `options` (OutputSettingsError), touching no hardware."""

    def __call__(self, options: Mapping[str, OptionValue]) -> OutputSpec: ...


@dataclass(frozen=True, slots=True)
class OutputDriverInfo:
    """What the registry knows of an output driver: enough to list it, validate values for
    it and open it. `spec` parses options without touching hardware."""

    name: str
    kind: OutputKind
    interface: Literal["i2c", "gpio"]
    description: str
    value_range: ValueRange
    """The range at default options (every driver here keeps one range whatever its options)."""
    default_safe_value: float
    options: tuple[str, ...]
    spec: SpecFor
    open: OpenOutput
    default_address: int | None = None
    addresses: tuple[int, ...] = ()
    channels: int = 0
    """How many outputs one chip has (0 for a GPIO output)."""

    def valid_addresses(self) -> tuple[int, ...]:
        if self.addresses:
            return self.addresses
        return () if self.default_address is None else (self.default_address,)

    def check_placement(self, placement: OutputPlacement) -> OutputPlacement:
        """`placement`, with an I2C output's default address filled in, if this driver's
        interface can be attached there; OutputSettingsError naming what is wrong if not.

        Metadata only, no hardware: a GPIO output needs its pin and takes no address or
        channel; an I2C output takes no pin, needs its channel on a multi-channel chip, and an
        address the chip can be strapped to.
        """
        if self.interface == "gpio":
            check_pin(self.name, placement.pin)
            if placement.address is not None or placement.channel is not None:
                raise OutputSettingsError(
                    f"{self.name} is a GPIO output and takes no I2C address or channel"
                )
            return placement
        if placement.pin is not None:
            raise OutputSettingsError(f"{self.name} is an I2C output and takes no GPIO pin")
        channel = placement.channel
        if self.channels:
            last = self.channels - 1
            if channel is None:
                raise OutputSettingsError(f"{self.name} needs its channel, 0..{last}")
            whole = isinstance(channel, int) and not isinstance(channel, bool)
            if not whole or not 0 <= channel <= last:
                raise OutputSettingsError(f"{self.name} has channels 0..{last}, not {channel!r}")
        elif channel is not None:
            raise OutputSettingsError(f"{self.name} has one output and takes no channel")
        address = self.default_address if placement.address is None else placement.address
        if address is None:
            raise OutputSettingsError(f"{self.name} needs its I2C address")
        if address not in self.valid_addresses():
            raise OutputSettingsError(
                f"{self.name} cannot be at {address:#04x}; valid addresses: "
                f"{address_ranges(self.valid_addresses())}"
            )
        return replace(placement, address=address)


def address_ranges(addresses: tuple[int, ...]) -> str:
    """I2C addresses as runs, "0x40..0x6f, 0x71..0x7f": a PCA9685 has 63 of them."""
    runs: list[list[int]] = []
    for address in sorted(addresses):
        if runs and address == runs[-1][1] + 1:
            runs[-1][1] = address
        else:
            runs.append([address, address])
    return ", ".join(f"{lo:#04x}" if lo == hi else f"{lo:#04x}..{hi:#04x}" for lo, hi in runs)


class OutputOptions(DriverOptions):
    """An output driver's options: `DriverOptions` raising OutputSettingsError, with the
    safe value every output takes."""

    error: ClassVar[type[SettingsError]] = OutputSettingsError

    def safe_value(self, value_range: ValueRange, default: float) -> float:
        """The "safe_value" option, which must lie in the output's own range."""
        self._read.add("safe_value")
        value = self._options.get("safe_value", default)
        try:
            return value_range.check(value, f"{self.driver} option 'safe_value'")
        except OutputRangeError as exc:
            raise OutputSettingsError(str(exc)) from None


def check_pin(driver: str, pin: int | None) -> int:
    if pin is None:
        raise OutputSettingsError(
            f"{driver} needs its GPIO pin (BCM number): an output has no default pin"
        )
    if isinstance(pin, bool) or not isinstance(pin, int) or pin not in BCM_PINS:
        raise OutputSettingsError(f"{driver} pin must be a BCM GPIO number 0..27, got {pin!r}")
    return pin


class Output(ABC):
    """A driver bound to one output. Drivers never create their bus or pins: they are injected.

    `apply` checks the value against `value_range` (OutputRangeError, nothing written), writes
    it and returns what the hardware applied; `read_back` asks the hardware what it shows now.
    `to_safe` applies `safe_value`. `close` drives the safe value, then lets go of the pin or
    channel; each driver documents what the line does once released. Bus or pin faults
    propagate as HardwareError, and `applied` keeps the last value that was written.
    """

    driver_name: ClassVar[str]
    kind: ClassVar[OutputKind]

    def __init__(
        self,
        *,
        value_range: ValueRange,
        safe_value: float,
        backend: BackendKind,
        name: str,
    ) -> None:
        self.value_range = value_range
        self.safe_value = value_range.check(safe_value, f"{name} safe value")
        self.backend = backend
        self.name = name
        self.applied: float | None = None
        """The value last written, as applied; None before the first write."""
        self._closed = False
        # apply, read_back and close are each several pin or bus operations; two threads
        # interleaving them would leave `applied` describing the other's write.
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, backend={self.backend.value})"

    @abstractmethod
    def _write(self, value: float) -> float:
        """Drive the hardware to `value` (already checked); return the value applied."""

    @abstractmethod
    def _read(self) -> float:
        """The value the hardware shows now."""

    @abstractmethod
    def _release(self) -> None:
        """Let go of the pin or channel (it is at the safe value already)."""

    def apply(self, value: float) -> float:
        """Drive the output to `value`; the value actually applied (quantised) is returned.

        Raises OutputRangeError for a value outside `value_range` (nothing is written),
        HardwareError when the write fails or the output is closed.
        """
        checked = self.value_range.check(value, self.name)
        with self._lock:
            self._check_open()
            applied = self._write(checked)
            self.applied = applied
            return applied

    def read_back(self) -> float:
        """What the hardware shows now (the pin level, the chip's registers)."""
        with self._lock:
            self._check_open()
            return self._read()

    def to_safe(self) -> float:
        """Drive the output to its safe value; the value applied is returned."""
        return self.apply(self.safe_value)

    def close(self) -> None:
        """Drive the safe value, then release the hardware; idempotent.

        The safe value is written first so that the output is safe even if releasing fails.
        """
        with self._lock:
            if self._closed:
                return
            try:
                self.applied = self._write(self.safe_value)
            finally:
                self._closed = True
                self._release()

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise HardwareError(f"{self.name} is closed")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
