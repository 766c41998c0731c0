"""Texas Instruments ADS1115 16-bit ADC on I2C, four single-ended channels, and its emulator.

The ADS1115 has four 16-bit registers behind an address pointer: conversion (0x00), config
(0x01) and two comparator thresholds. The driver runs single-shot conversions, one channel at
a time: write the config with OS=1, poll OS until the conversion is done, read the conversion
register. Section and table numbers refer to the ADS111x datasheet (TI SBAS444D, 2018).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Self

from edgetwin.hardware.bus import I2CBus, I2CDevice, dropout_error
from edgetwin.hardware.drivers import OptionValue, i2c_driver
from edgetwin.hardware.drivers.i2c import I2CSensor, SignalInputs
from edgetwin.hardware.errors import ChipIdError, DataError, SensorSettingsError, SensorTimeoutError
from edgetwin.hardware.quantities import decimals_for, measured
from edgetwin.hardware.sensor import BackendKind, Clock, Quantity
from edgetwin.hardware.signals import Constant, SignalModel
from edgetwin.hardware.timing import RealTimer, Timer

# -- addresses and registers (sections 9.5.1.1 and 9.6) --------------------------------------

ADDRESS_GND: Final = 0x48
"""ADDR pin tied to GND, the usual breakout strapping; VDD gives 0x49, SDA 0x4A, SCL 0x4B."""
ADDRESSES: Final = (0x48, 0x49, 0x4A, 0x4B)

REG_CONVERSION: Final = 0x00
"""The last result: 16-bit two's complement, big-endian (section 9.6.2)."""
REG_CONFIG: Final = 0x01
REG_LO_THRESH: Final = 0x02
REG_HI_THRESH: Final = 0x03

# -- config register fields (section 9.6.3, table 8) -----------------------------------------

OS: Final = 1 << 15
"""Write 1: start a single conversion. Read: 0 while converting, 1 when idle."""
MUX_SHIFT: Final = 12
MUX_SINGLE_ENDED: Final = 0b100
"""MUX codes 100..111 are AIN0..AIN3 against GND; 000..011 the differential pairs."""
PGA_SHIFT: Final = 9
MODE_SINGLE_SHOT: Final = 1 << 8
"""Set: single-shot and power-down (the reset state); clear: continuous conversion."""
DR_SHIFT: Final = 5
COMP_QUE_DISABLE: Final = 0b11
"""Comparator off and ALERT/RDY high impedance: the reset state of bits 1..0."""
CONFIG_RESET: Final = 0x8583
"""The config register after power-up: AIN0-AIN1, ±2.048 V, single-shot, 128 SPS, comparator off."""

FULL_SCALE: Final = (6.144, 4.096, 2.048, 1.024, 0.512, 0.256, 0.256, 0.256)
"""±FSR in V per PGA code (table 3); codes 5, 6 and 7 all mean ±0.256 V."""
GAINS: Final = FULL_SCALE[:6]
"""The full-scale ranges a configuration may name."""
DATA_RATES: Final = (8, 16, 32, 64, 128, 250, 475, 860)
"""Samples per second per DR code (table 8)."""

CODE_MAX: Final = 0x7FFF
CODE_MIN: Final = -0x8000
"""Table 4: inputs at or beyond ±FS read 0x7FFF or 0x8000; the ADC clips, it never wraps."""

DATA_RATE_TOLERANCE: Final = 0.10
"""Electrical characteristics, "data rate variation": the internal oscillator makes every data
rate up to 10 % slow, so a conversion may take 1.1 / DR."""
WAKE_UP_TIME: Final = 25e-6
"""Section 9.4.2: from power-down, the device powers up in about 25 µs before converting."""

DEFAULT_GAIN: Final = 2.048
DEFAULT_DATA_RATE: Final = 128
CHANNELS: Final = (0, 1, 2, 3)
OPTIONS: Final = ("gain", "channels", "data_rate")


# -- pure functions --------------------------------------------------------------------------


def volts_from_raw(raw: int, full_scale: float) -> float:
    """Volts from a signed conversion code: raw * FSR / 2^15 (table 3: one LSB is FSR / 2^15,
    62.5 µV at ±2.048 V). 0x7FFF is one LSB short of +FSR; -0x8000 is exactly -FSR."""
    return raw * full_scale / 32768


def raw_from_volts(volts: float, full_scale: float) -> int:
    """The code nearest `volts` at ±`full_scale`, clipped to 0x7FFF / -0x8000 like the ADC."""
    return min(CODE_MAX, max(CODE_MIN, round(volts * 32768 / full_scale)))


def signed16(msb: int, lsb: int) -> int:
    """A big-endian two's complement 16-bit value."""
    value = (msb << 8) | lsb
    return value - 0x10000 if value & 0x8000 else value


def conversion_time_max(data_rate: int) -> float:
    """Seconds a single-shot conversion may take: wake-up plus 1 / DR, 10 % slow (datasheet
    data rate variation): 8.6 ms at 128 SPS."""
    return WAKE_UP_TIME + (1 + DATA_RATE_TOLERANCE) / data_rate


def config_word(channel: int, gain: float, data_rate: int, *, start: bool) -> int:
    """The config register for one single-shot conversion of AIN`channel` against GND."""
    return (
        (OS if start else 0)
        | ((MUX_SINGLE_ENDED | channel) << MUX_SHIFT)
        | (GAINS.index(gain) << PGA_SHIFT)
        | MODE_SINGLE_SHOT
        | (DATA_RATES.index(data_rate) << DR_SHIFT)
        | COMP_QUE_DISABLE
    )


@dataclass(frozen=True, slots=True)
class Settings:
    """What the placement options ask of the ADC."""

    gain: float = DEFAULT_GAIN
    """±full-scale range in V, one of `GAINS`."""
    channels: tuple[int, ...] = CHANNELS
    """Single-ended inputs to convert, ascending, each 0..3."""
    data_rate: int = DEFAULT_DATA_RATE
    """Samples per second, one of `DATA_RATES`."""


def parse_options(options: Mapping[str, OptionValue] | None) -> Settings:
    """Settings from placement options {"gain": 2.048, "channels": "0,1,2,3", "data_rate": 128}.

    `channels` is a comma-separated list (or a single integer); `gain` is the full-scale range
    in volts. Raises SensorSettingsError naming the option and the values it may take.
    """
    options = options or {}
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise SensorSettingsError(
            f"ads1115 has no option {', '.join(map(repr, unknown))}; options: {', '.join(OPTIONS)}"
        )
    return Settings(
        gain=_parse_gain(options.get("gain", DEFAULT_GAIN)),
        channels=_parse_channels(options.get("channels", ",".join(map(str, CHANNELS)))),
        data_rate=_parse_data_rate(options.get("data_rate", DEFAULT_DATA_RATE)),
    )


def reading_quantities(settings: Settings) -> tuple[Quantity, ...]:
    """What a reading at these settings holds: one voltage per configured channel, at the
    resolution of one LSB at the gain."""
    decimals = decimals_for(volts_from_raw(1, settings.gain))
    return tuple(measured(f"voltage_{n}", decimals=decimals) for n in settings.channels)


QUANTITIES: Final = reading_quantities(Settings())
"""Every channel at the default gain."""


def _parse_gain(value: OptionValue) -> float:
    if not isinstance(value, bool) and isinstance(value, int | float):
        for gain in GAINS:
            if math.isclose(value, gain, rel_tol=1e-9):
                return gain
    raise SensorSettingsError(
        f"ads1115 option 'gain' is the full-scale range in volts, one of "
        f"{', '.join(map(str, GAINS))}; got {value!r}"
    )


def _parse_channels(value: OptionValue) -> tuple[int, ...]:
    if isinstance(value, bool):
        parts: list[str] = []
    elif isinstance(value, int):
        parts = [str(value)]
    elif isinstance(value, str):
        parts = [part.strip() for part in value.split(",")]
    else:
        parts = []
    if not parts or any(part not in {"0", "1", "2", "3"} for part in parts):
        raise SensorSettingsError(
            f"ads1115 option 'channels' lists inputs 0..3, e.g. \"0,2\"; got {value!r}"
        )
    channels = [int(part) for part in parts]
    if len(set(channels)) != len(channels):
        raise SensorSettingsError(f"ads1115 option 'channels' repeats an input: {value!r}")
    return tuple(sorted(channels))


def _parse_data_rate(value: OptionValue) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in DATA_RATES:
        raise SensorSettingsError(
            f"ads1115 option 'data_rate' is samples per second, one of "
            f"{', '.join(map(str, DATA_RATES))}; got {value!r}"
        )
    return value


# -- the driver ------------------------------------------------------------------------------


class ADS1115(I2CSensor):
    """An ADS1115 on an I2C bus: the configured single-ended channels, one conversion each.

    Single-shot mode keeps the ADC powered down between reads and makes each value a fresh
    conversion of the right channel; in continuous mode a MUX change would hand back a result
    of the previous channel until the next conversion completes. The driver polls OS (one
    2-byte register read, about 0.3 ms at 100 kHz) every tenth of a conversion period after
    waiting one period, up to the datasheet's bound of 1.1 / DR; a conversion that never ends
    is reported as SensorTimeoutError.

    Each poll also checks that the config register reads back as written (all but OS): a chip
    stuck at all ones or zeros, or a garbled transfer, is reported as DataError instead of
    being taken for a valid voltage. A result at the clip codes (0x7FFF, -0x8000) is returned
    as ±full scale: the input is at or beyond the range, and the other channels stay usable.
    """

    driver_name = "ads1115"
    quantities = QUANTITIES
    addresses = ADDRESSES
    address_rule = "an ADS1115 answers only at 0x48..0x4B (ADDR strapping)"

    def __init__(
        self,
        bus: I2CBus,
        address: int = ADDRESS_GND,
        *,
        settings: Settings | None = None,
        backend: BackendKind = BackendKind.REAL,
        clock: Clock = time.time,
        timer: Timer | None = None,
    ) -> None:
        super().__init__(bus, address, backend=backend, clock=clock, timer=timer)
        self.settings = settings if settings is not None else Settings()
        # This instance measures only the configured channels, and says so.
        self.quantities = reading_quantities(self.settings)

    def __repr__(self) -> str:
        s = self.settings
        return (
            f"ADS1115(address={self.address:#04x}, gain=±{s.gain} V, channels={s.channels}, "
            f"data_rate={s.data_rate}, backend={self.status.backend.value})"
        )

    def open(self) -> Self:
        """Write an idle config and read it back: ChipIdError if the register does not hold it.

        The ADS1115 has no id register; a config register that keeps what was written is the
        best evidence available that the chip at the address is one of the ADS111x family.
        """
        s = self.settings
        idle = config_word(s.channels[0], s.gain, s.data_rate, start=False)
        with self._lock:
            self._write_register(REG_CONFIG, idle, "write config")
            read_back = self._read_register(REG_CONFIG, "read config")
        if read_back & ~OS != idle:
            raise ChipIdError(
                f"{self._where()}: config register reads {read_back:#06x} after writing "
                f"{idle:#06x}: not an ADS1115, or the bus is stuck"
            )
        return self

    def _measure(self) -> Mapping[str, float]:
        values: dict[str, float] = {}
        with self._lock:
            for channel in self.settings.channels:
                raw = self._single_shot(channel)
                values[f"voltage_{channel}"] = volts_from_raw(raw, self.settings.gain)
        return values

    def _single_shot(self, channel: int) -> int:
        """Start one conversion of AIN`channel`, wait for OS, return the signed code."""
        s = self.settings
        config = config_word(channel, s.gain, s.data_rate, start=True)
        self._write_register(REG_CONFIG, config, f"start conversion of AIN{channel}")
        deadline = self._timer.monotonic() + conversion_time_max(s.data_rate)
        poll = max(1e-4, 0.1 / s.data_rate)
        self._timer.sleep(WAKE_UP_TIME + 1 / s.data_rate)
        while True:
            status = self._read_register(REG_CONFIG, f"poll conversion of AIN{channel}")
            if status & ~OS != config & ~OS:
                raise DataError(
                    f"{self._where()}: config reads back {status:#06x}, "
                    f"written {config & ~OS:#06x} (OS aside): bus stuck or data garbled"
                )
            if status & OS:
                break
            if self._timer.monotonic() >= deadline:
                raise SensorTimeoutError(
                    f"{self._where()}: AIN{channel} conversion still running after "
                    f"{conversion_time_max(s.data_rate) * 1000:.1f} ms "
                    f"(datasheet: 1/DR at {s.data_rate} SPS, +10 %)"
                )
            self._timer.sleep(poll)
        return self._read_signed(REG_CONVERSION, f"read AIN{channel} result")

    def _read_register(self, register: int, what: str) -> int:
        with self._bus_errors(what):
            msb, lsb = self._bus.read_i2c_block_data(self.address, register, 2)
        return (msb << 8) | lsb

    def _read_signed(self, register: int, what: str) -> int:
        with self._bus_errors(what):
            msb, lsb = self._bus.read_i2c_block_data(self.address, register, 2)
        return signed16(msb, lsb)

    def _write_register(self, register: int, value: int, what: str) -> None:
        with self._bus_errors(what):
            self._bus.write_i2c_block_data(self.address, register, [value >> 8, value & 0xFF])


def open_ads1115(
    bus: I2CBus,
    *,
    address: int = ADDRESS_GND,
    backend: BackendKind = BackendKind.REAL,
    clock: Clock = time.time,
    timer: Timer | None = None,
    options: Mapping[str, OptionValue] | None = None,
) -> ADS1115:
    """Construct and open an ADS1115 with `options` (see `parse_options`): the registry's way in."""
    settings = parse_options(options)
    return ADS1115(
        bus, address, settings=settings, backend=backend, clock=clock, timer=timer
    ).open()


# -- the emulator ----------------------------------------------------------------------------

DEFAULT_INPUTS: Final = {q.name: 0.0 for q in QUANTITIES}
"""V: what an emulator measures when given no signals, every input tied to GND."""

_DIFFERENTIAL: Final = ((0, 1), (0, 3), (1, 3), (2, 3))
"""AINp, AINn for MUX codes 000..011."""


@dataclass(slots=True)
class _Conversion:
    done_at: float
    code: int | None
    """None when a signal had no measurement (a dropout)."""


class ADS1115Emulator(I2CDevice):
    """An ADS1115 at register level, converting voltages from signal models.

    Modelled: the pointer register (bits 1..0), the four 16-bit registers written MSB first,
    the config fields OS, MUX (all eight inputs, differential ones too), PGA, MODE and DR;
    single-shot conversions with OS reading 0 until done and the device powering down after,
    continuous mode converting every 1 / DR; results clipped at ±full scale to 0x7FFF / 0x8000
    like the ADC. Not modelled: the comparator and ALERT/RDY pin, input impedance, noise (put
    it in the signal models), the absolute input limits (GND - 0.3 V to VDD + 0.3 V).

    Signals, keyed "voltage_0".."voltage_3", are sampled on `clock` when a conversion starts
    (only the inputs its MUX setting uses); conversion times run on `timer`, which must be the
    driver's. A NaN fails the next read of the conversion register with EIO.
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
        """`conversion_time` None means wake-up plus 1 / DR; set it to model a slow or stuck
        oscillator. `options` are ignored: the driver configures the chip over the bus."""
        self._signals = SignalInputs("ads1115", DEFAULT_INPUTS, signals)
        self._clock = clock
        self._timer: Timer = timer if timer is not None else RealTimer()
        self.conversion_time = conversion_time
        self.config = CONFIG_RESET
        self.conversion = 0
        self.lo_thresh = 0x8000
        self.hi_thresh = 0x7FFF
        self._pointer = REG_CONVERSION
        self._single: _Conversion | None = None
        self._continuous_next: float | None = None
        self._dropped = False
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"ADS1115Emulator(config={self.config:#06x})"

    def set_voltage(self, channel: int, volts: float) -> None:
        """Hold AIN`channel` at `volts` from the next conversion on."""
        self.set_signal(f"voltage_{channel}", Constant(volts))

    def set_signal(self, quantity: str, model: SignalModel) -> None:
        with self._lock:
            self._signals.set(quantity, model)

    def power_on(self) -> None:
        with self._lock:
            self._reset()

    # -- I2CDevice -----------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        with self._lock:
            now = self._timer.monotonic()
            self._advance(now)
            if not data:
                return
            self._pointer = data[0] & 0b11
            if len(data) < 3:
                return  # a pointer write, or an incomplete register write the chip drops
            value = (data[1] << 8) | data[2]
            if self._pointer == REG_CONFIG:
                self._write_config(value, now)
            elif self._pointer == REG_LO_THRESH:
                self.lo_thresh = value
            elif self._pointer == REG_HI_THRESH:
                self.hi_thresh = value
            # The conversion register is read-only.

    def read(self, length: int) -> bytes:
        with self._lock:
            self._advance(self._timer.monotonic())
            if self._pointer == REG_CONVERSION:
                if self._dropped:
                    self._dropped = False
                    raise dropout_error()
                value = self.conversion & 0xFFFF
            elif self._pointer == REG_CONFIG:
                # OS reads 0 while converting; in continuous mode the ADC never stops.
                busy = self._single is not None or self._continuous_next is not None
                value = (self.config & ~OS) | (0 if busy else OS)
            elif self._pointer == REG_LO_THRESH:
                value = self.lo_thresh
            else:
                value = self.hi_thresh
            word = bytes((value >> 8, value & 0xFF))
            return word[:length] + b"\xff" * max(0, length - 2)

    # -- internals -----------------------------------------------------------------------------

    def _reset(self) -> None:
        """Power-on state (section 9.6): registers at their reset values, powered down."""
        self.config = CONFIG_RESET
        self.conversion = 0
        self.lo_thresh = 0x8000
        self.hi_thresh = 0x7FFF
        self._pointer = REG_CONVERSION
        self._single = None
        self._continuous_next = None
        self._dropped = False

    def _write_config(self, value: int, now: float) -> None:
        self.config = value & ~OS
        if not value & MODE_SINGLE_SHOT:
            if self._continuous_next is None:
                self._single = None
                self._continuous_next = now + self._duration()
            return
        self._continuous_next = None
        if value & OS and self._single is None:
            # Section 9.4.2: OS=1 in power-down starts one conversion; ignored mid-conversion.
            self._single = _Conversion(now + self._duration(), self._sample())

    def _duration(self) -> float:
        if self.conversion_time is not None:
            return self.conversion_time
        return WAKE_UP_TIME + 1 / DATA_RATES[(self.config >> DR_SHIFT) & 0b111]

    def _sample(self) -> int | None:
        """The code for the inputs the MUX selects now; None for a dropout."""
        mux = (self.config >> MUX_SHIFT) & 0b111
        t = self._clock()
        if mux & MUX_SINGLE_ENDED:
            volts = self._signals[f"voltage_{mux & 0b11}"].sample(t)
        else:
            positive, negative = _DIFFERENTIAL[mux]
            volts = self._signals[f"voltage_{positive}"].sample(t) - self._signals[
                f"voltage_{negative}"
            ].sample(t)
        if math.isnan(volts):
            return None
        return raw_from_volts(volts, FULL_SCALE[(self.config >> PGA_SHIFT) & 0b111])

    def _latch(self, code: int | None) -> None:
        if code is None:
            self._dropped = True
        else:
            self.conversion = code
            self._dropped = False

    def _advance(self, now: float) -> None:
        """Complete whatever conversion has finished by `now`."""
        if self._single is not None and now >= self._single.done_at:
            self._latch(self._single.code)
            self._single = None  # back to power-down; OS reads 1
        if self._continuous_next is not None and now >= self._continuous_next:
            period = self._duration()
            # Only the latest result survives; conversions nobody read leave no trace.
            missed = math.floor((now - self._continuous_next) / period)
            self._continuous_next += (missed + 1) * period
            self._latch(self._sample())


DRIVER: Final = i2c_driver(
    name="ads1115",
    quantities=QUANTITIES,
    default_address=ADDRESS_GND,
    addresses=ADDRESSES,
    description="TI ADS1115: 16-bit ADC, four single-ended voltages (I2C)",
    open_driver=open_ads1115,
    build_emulator=ADS1115Emulator,
    options=OPTIONS,
    quantities_for=lambda options: reading_quantities(parse_options(options)),
)
