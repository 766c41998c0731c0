"""ROHM BH1750FVI ambient light sensor on I2C, and its emulator.

The BH1750 has no registers: the host writes one-byte instructions (power on, reset, start a
measurement, set the measurement time) and reads the 16-bit result with a plain two-byte read.
An SMBus register read would first write a register byte, which the chip takes as another
instruction, so the result is read with `i2c_rdwr` (`hardware.bus.i2c_read`). Page references
are to the BH1750FVI datasheet (ROHM, rev. D, 2011).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Self

from edgetwin.hardware.bus import I2CBus, I2CDevice, dropout_error, i2c_read
from edgetwin.hardware.drivers import OptionValue, i2c_driver
from edgetwin.hardware.drivers.i2c import I2CSensor
from edgetwin.hardware.errors import DataError, SensorSettingsError
from edgetwin.hardware.quantities import decimals_for, measured
from edgetwin.hardware.sensor import BackendKind, Clock, Quantity
from edgetwin.hardware.signals import Constant, SignalModel
from edgetwin.hardware.timing import RealTimer, Timer

# -- addresses and instructions (p. 5 "Instruction Set Architecture", p. 10) -----------------

ADDRESS_LOW: Final = 0x23
"""ADDR pin at or below 0.3 VCC: the usual breakout strapping."""
ADDRESS_HIGH: Final = 0x5C
"""ADDR pin at or above 0.7 VCC."""
ADDRESSES: Final = (ADDRESS_LOW, ADDRESS_HIGH)

POWER_DOWN: Final = 0x00
POWER_ON: Final = 0x01
RESET: Final = 0x07
"""Clears the data register to 0; only accepted in the power-on state."""
CONTINUOUS_H_RES: Final = 0x10
CONTINUOUS_H_RES2: Final = 0x11
CONTINUOUS_L_RES: Final = 0x13
ONE_TIME_H_RES: Final = 0x20
"""One measurement at 1 lx resolution, then the chip powers down by itself."""
ONE_TIME_H_RES2: Final = 0x21
ONE_TIME_L_RES: Final = 0x23
MTREG_HIGH: Final = 0x40
"""01000_MT[7:5]: the three high bits of MTreg."""
MTREG_LOW: Final = 0x60
"""011_MT[4:0]: the five low bits of MTreg."""

MTREG_DEFAULT: Final = 69
MTREG_MIN: Final = 31
MTREG_MAX: Final = 254
"""p. 11: MTreg may be set from 31 to 254; 69 is the power-on default the lux formula assumes."""

RAW_SATURATED: Final = 0xFFFF
"""The counter's top: the light is at or beyond the range (or SDA is stuck high)."""

LUX_PER_COUNT: Final = 1 / 1.2
"""p. 2, "Measurement Accuracy": 1.2 counts per lx typical (0.96..1.44 from part to part)."""

H_RES_TIME_TYPICAL: Final = 120e-3
H_RES_TIME_MAX: Final = 180e-3
"""p. 2, t_HR: H-resolution measurement time 120 ms typical, 180 ms maximum at MTreg 69."""
L_RES_TIME_TYPICAL: Final = 16e-3
L_RES_TIME_MAX: Final = 24e-3
"""p. 2, t_LR: L-resolution measurement time 16 ms typical, 24 ms maximum at MTreg 69."""

OPTIONS: Final = ("mtreg",)


# -- pure functions (p. 7 and p. 11) ---------------------------------------------------------


def lux_from_raw(raw: int, mtreg: int = MTREG_DEFAULT, *, mode2: bool = False) -> float:
    """Illuminance in lx from a 16-bit result: raw / 1.2 * (69 / MTreg), halved in H-res mode2.

    The datasheet's example (p. 7): 0x8390, "1000_0011 1001_0000", is (2^15 + 2^9 + 2^8 + 2^7
    + 2^4) / 1.2 ≈ 28067 lx. A larger MTreg integrates longer, so each count is less light.
    """
    lux = raw * LUX_PER_COUNT * MTREG_DEFAULT / mtreg
    return lux / 2 if mode2 else lux


def raw_from_lux(lux: float, mtreg: int = MTREG_DEFAULT, *, mode2: bool = False) -> int:
    """The 16-bit result nearest `lux`, saturating at 0 and 0xFFFF like the chip's counter."""
    counts = lux / LUX_PER_COUNT * mtreg / MTREG_DEFAULT * (2 if mode2 else 1)
    return min(RAW_SATURATED, max(0, round(counts)))


def reading_quantities(mtreg: int = MTREG_DEFAULT) -> tuple[Quantity, ...]:
    """What a reading at this MTreg holds: illuminance at the resolution of one count."""
    return (measured("illuminance", decimals=decimals_for(lux_from_raw(1, mtreg))),)


QUANTITIES: Final = reading_quantities()


def measurement_time_max(mtreg: int = MTREG_DEFAULT) -> float:
    """Seconds an H-resolution measurement may take: 180 ms at MTreg 69, in proportion to MTreg
    (p. 11: the measurement time is set by MTreg), so 662 ms at MTreg 254."""
    return H_RES_TIME_MAX * mtreg / MTREG_DEFAULT


def measurement_time_typical(mtreg: int = MTREG_DEFAULT) -> float:
    """Seconds an H-resolution measurement typically takes: 120 ms at MTreg 69, scaled alike."""
    return H_RES_TIME_TYPICAL * mtreg / MTREG_DEFAULT


def mtreg_instructions(mtreg: int) -> tuple[int, int]:
    """The two instructions that set MTreg: its high three bits, then its low five (p. 11)."""
    if not MTREG_MIN <= mtreg <= MTREG_MAX:
        raise ValueError(f"MTreg must be {MTREG_MIN}..{MTREG_MAX}, got {mtreg}")
    return MTREG_HIGH | (mtreg >> 5), MTREG_LOW | (mtreg & 0x1F)


def parse_options(options: Mapping[str, OptionValue] | None) -> int:
    """MTreg from the placement options ({"mtreg": 31..254}, default 69).

    Raises SensorSettingsError naming the option: an unknown name, or a value that is not an
    integer in range.
    """
    options = options or {}
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise SensorSettingsError(f"bh1750 has no option {', '.join(map(repr, unknown))}")
    mtreg = options.get("mtreg", MTREG_DEFAULT)
    if isinstance(mtreg, bool) or not isinstance(mtreg, int):
        raise SensorSettingsError(f"bh1750 option 'mtreg' must be an integer, got {mtreg!r}")
    if not MTREG_MIN <= mtreg <= MTREG_MAX:
        raise SensorSettingsError(
            f"bh1750 option 'mtreg' must be {MTREG_MIN}..{MTREG_MAX} (datasheet p. 11), got {mtreg}"
        )
    return mtreg


# -- the driver ------------------------------------------------------------------------------


class BH1750(I2CSensor):
    """A BH1750 on an I2C bus: one one-time high-resolution measurement per read.

    One-time mode leaves the chip powered down (about 1 µA) between reads, and each read
    starts from a cleared data register, so a measurement that never completes reads as 0 lx
    rather than as a stale value. The chip has no ready flag: the driver waits the datasheet's
    maximum measurement time (180 ms at MTreg 69, proportionally longer at higher MTreg) and
    then reads. MTreg is written before every measurement because a supply dip that the driver
    never sees puts it back to 69, which would silently scale every later reading.

    A result of 0xFFFF is reported as DataError: it is the counter's top, the light is beyond
    the range at this MTreg (lower `mtreg` to extend it), or SDA is stuck high. Either way it
    is not a measurement.
    """

    driver_name = "bh1750"
    quantities = QUANTITIES
    addresses = ADDRESSES
    address_rule = "a BH1750 answers only at 0x23 or 0x5C (ADDR strapping)"

    def __init__(
        self,
        bus: I2CBus,
        address: int = ADDRESS_LOW,
        *,
        mtreg: int = MTREG_DEFAULT,
        backend: BackendKind = BackendKind.REAL,
        clock: Clock = time.time,
        timer: Timer | None = None,
    ) -> None:
        super().__init__(bus, address, backend=backend, clock=clock, timer=timer)
        self._mtreg_instructions = mtreg_instructions(mtreg)
        self.mtreg = mtreg
        self.quantities = reading_quantities(mtreg)

    def __repr__(self) -> str:
        return (
            f"BH1750(address={self.address:#04x}, mtreg={self.mtreg}, "
            f"backend={self.status.backend.value})"
        )

    @property
    def full_scale(self) -> float:
        """The largest illuminance measurable at this MTreg, in lx (one count below 0xFFFF)."""
        return lux_from_raw(RAW_SATURATED - 1, self.mtreg)

    def open(self) -> Self:
        """Check that the chip answers (power on, then down again); SensorMissingError if not."""
        with self._lock:
            self._instruction(POWER_ON, "power on")
            self._instruction(POWER_DOWN, "power down")
        return self

    def _measure(self) -> Mapping[str, float]:
        with self._lock:
            self._instruction(POWER_ON, "power on")
            self._instruction(RESET, "reset data register")
            high, low = self._mtreg_instructions
            self._instruction(high, "set MTreg high bits")
            self._instruction(low, "set MTreg low bits")
            self._instruction(ONE_TIME_H_RES, "start measurement")
            self._timer.sleep(measurement_time_max(self.mtreg))
            with self._bus_errors("read result"):
                data = i2c_read(self._bus, self.address, 2)
        raw = (data[0] << 8) | data[1]
        if raw == RAW_SATURATED:
            raise DataError(
                f"{self._where()}: result saturated at 0xFFFF: brighter than "
                f"{self.full_scale:.0f} lx at MTreg {self.mtreg} (set a lower 'mtreg'), "
                "or SDA stuck high"
            )
        return {"illuminance": lux_from_raw(raw, self.mtreg)}

    def _instruction(self, instruction: int, what: str) -> None:
        with self._bus_errors(what):
            self._bus.write_byte(self.address, instruction)


def open_bh1750(
    bus: I2CBus,
    *,
    address: int = ADDRESS_LOW,
    backend: BackendKind = BackendKind.REAL,
    clock: Clock = time.time,
    timer: Timer | None = None,
    options: Mapping[str, OptionValue] | None = None,
) -> BH1750:
    """Construct and open a BH1750 with `options` {"mtreg": 31..254}: the registry's way in."""
    mtreg = parse_options(options)
    return BH1750(bus, address, mtreg=mtreg, backend=backend, clock=clock, timer=timer).open()


# -- the emulator ----------------------------------------------------------------------------

DEFAULT_ILLUMINANCE: Final = 300.0
"""lx: what an emulator measures when given no signal, an office desk."""

_MODES: Final = {
    CONTINUOUS_H_RES: (False, "h"),
    CONTINUOUS_H_RES2: (False, "h2"),
    CONTINUOUS_L_RES: (False, "l"),
    ONE_TIME_H_RES: (True, "h"),
    ONE_TIME_H_RES2: (True, "h2"),
    ONE_TIME_L_RES: (True, "l"),
}
"""Measurement instruction -> (one-time, resolution)."""


@dataclass(slots=True)
class _Measurement:
    started_at: float
    done_at: float
    raw: int | None
    """None when the signal had no measurement (a dropout)."""
    one_time: bool
    resolution: str


class BH1750Emulator(I2CDevice):
    """A BH1750 at instruction level, measuring illuminance from a signal model.

    Modelled: power down/on, reset (ignored while powered down, as p. 5 says), the six
    measurement modes with their times scaled by MTreg, one-time modes powering down when
    done, MTreg set in two halves, saturation at 0xFFFF, and a read before a measurement
    completes returning the data register as it stands (the chip has no busy signal). H-res
    mode2 counts twice per lx; L-res counts in 4 lx steps. Not modelled: the spectral
    response, the optical window.

    The signal is sampled on `clock` when a measurement starts; durations run on `timer`, which
    must be the driver's. A NaN fails the first read after that measurement with EIO.
    """

    def __init__(
        self,
        *,
        signals: Mapping[str, SignalModel] | None = None,
        clock: Clock = time.time,
        timer: Timer | None = None,
        conversion_time: float | None = None,
        options: Mapping[str, OptionValue] | None = None,
    ) -> None:
        """`conversion_time` None means the typical time for the mode and MTreg; set it to
        model a slow or stuck chip. `options` are ignored: MTreg comes over the bus."""
        unknown = set(signals or {}) - {"illuminance"}
        if unknown:
            raise ValueError(f"bh1750 emulator has no quantity {sorted(unknown)}")
        self._signal: SignalModel = (signals or {}).get(
            "illuminance", Constant(DEFAULT_ILLUMINANCE)
        )
        self._clock = clock
        self._timer: Timer = timer if timer is not None else RealTimer()
        self.conversion_time = conversion_time
        self.powered = False
        self.mtreg = MTREG_DEFAULT
        self.data = 0
        self._measurement: _Measurement | None = None
        self._dropped = False
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"BH1750Emulator(powered={self.powered}, mtreg={self.mtreg})"

    def set_illuminance(self, lux: float) -> None:
        """Hold the light at `lux` from the next measurement on."""
        with self._lock:
            self._signal = Constant(lux)

    def set_signal(self, quantity: str, model: SignalModel) -> None:
        if quantity != "illuminance":
            raise ValueError(f"bh1750 emulator has no quantity {quantity!r}")
        with self._lock:
            self._signal = model

    def power_on(self) -> None:
        """Supply applied: power-down state, MTreg back to 69, data register cleared."""
        with self._lock:
            self.powered = False
            self.mtreg = MTREG_DEFAULT
            self.data = 0
            self._measurement = None
            self._dropped = False

    # -- I2CDevice -----------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        with self._lock:
            now = self._timer.monotonic()
            self._advance(now)
            for instruction in data:
                self._execute(instruction, now)

    def read(self, length: int) -> bytes:
        with self._lock:
            self._advance(self._timer.monotonic())
            if self._dropped:
                self._dropped = False
                raise dropout_error()
            result = bytes((self.data >> 8, self.data & 0xFF))
            return result[:length] + b"\xff" * max(0, length - 2)

    # -- internals -----------------------------------------------------------------------------

    def _execute(self, instruction: int, now: float) -> None:
        if instruction == POWER_DOWN:
            self.powered = False
            self._measurement = None
        elif instruction == POWER_ON:
            self.powered = True
        elif instruction == RESET:
            if self.powered:
                self.data = 0
        elif instruction in _MODES:
            one_time, resolution = _MODES[instruction]
            self.powered = True
            self._start(now, one_time, resolution)
        elif instruction & 0xF8 == MTREG_HIGH:
            self.mtreg = (self.mtreg & 0x1F) | ((instruction & 0x07) << 5)
        elif instruction & 0xE0 == MTREG_LOW:
            self.mtreg = (self.mtreg & 0xE0) | (instruction & 0x1F)
        # Anything else is not an instruction; the chip ignores it.

    def _start(self, now: float, one_time: bool, resolution: str) -> None:
        if self.conversion_time is not None:
            duration = self.conversion_time
        else:
            typical = L_RES_TIME_TYPICAL if resolution == "l" else H_RES_TIME_TYPICAL
            duration = typical * self.mtreg / MTREG_DEFAULT
        self._measurement = _Measurement(
            now, now + duration, self._sample(resolution), one_time, resolution
        )

    def _sample(self, resolution: str) -> int | None:
        lux = self._signal.sample(self._clock())
        if math.isnan(lux):
            return None
        if resolution == "l":
            lux = math.floor(lux / 4.0) * 4.0  # p. 2: L-resolution mode resolves 4 lx
        return raw_from_lux(lux, self.mtreg, mode2=resolution == "h2")

    def _advance(self, now: float) -> None:
        """Latch what has completed by `now`.

        A one-time measurement latches the value sampled when it started, then powers down. In
        a continuous mode the chip integrates period after period; the register holds the last
        completed one, so the light is sampled at that period's end, and periods nobody read
        leave no trace.
        """
        measurement = self._measurement
        if measurement is None or now < measurement.done_at:
            return
        if measurement.one_time:
            self._latch(measurement.raw)
            self._measurement = None
            self.powered = False
            return
        period = measurement.done_at - measurement.started_at
        missed = math.floor((now - measurement.done_at) / period) if period > 0 else 0
        measurement.started_at = measurement.done_at + missed * period
        measurement.done_at = measurement.started_at + period
        self._latch(self._sample(measurement.resolution))

    def _latch(self, raw: int | None) -> None:
        if raw is None:
            self._dropped = True
        else:
            self.data = raw


DRIVER: Final = i2c_driver(
    name="bh1750",
    quantities=QUANTITIES,
    default_address=ADDRESS_LOW,
    addresses=ADDRESSES,
    description="ROHM BH1750FVI: ambient light in lux (I2C)",
    open_driver=open_bh1750,
    build_emulator=BH1750Emulator,
    options=OPTIONS,
    quantities_for=lambda options: reading_quantities(parse_options(options)),
)
