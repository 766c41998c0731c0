"""Bosch BME280 temperature, humidity and pressure sensor on I2C, and its emulator.

Everything chip-specific lives here: the register map, the datasheet's integer compensation
maths as pure functions, the driver, and a register-level emulator the same driver runs against.
Section numbers refer to the datasheet BST-BME280-DS002.
"""

from __future__ import annotations

import math
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Self

from edgetwin.hardware.bus import I2CBus, RegisterDevice, dropout_error
from edgetwin.hardware.drivers import OptionValue, i2c_driver
from edgetwin.hardware.drivers.i2c import I2CSensor, SignalInputs
from edgetwin.hardware.errors import ChipIdError, DataError, SensorTimeoutError
from edgetwin.hardware.quantities import decimals_for, measured
from edgetwin.hardware.sensor import BackendKind, Clock
from edgetwin.hardware.signals import Constant, SignalModel
from edgetwin.hardware.timing import RealTimer, Timer

# -- register map (section 5.3 and 5.4) ------------------------------------------------------

CHIP_ID: Final = 0x60
ADDRESS_PRIMARY: Final = 0x76
"""SDO tied to GND; the usual strapping of breakout boards."""
ADDRESS_SECONDARY: Final = 0x77
"""SDO tied to VDDIO."""
ADDRESSES: Final = (ADDRESS_PRIMARY, ADDRESS_SECONDARY)

REG_CALIB_TP: Final = 0x88
CALIB_TP_LENGTH: Final = 26
"""0x88..0xA1: dig_T1..dig_P9 as little-endian 16-bit words, 0xA0 unused, dig_H1 at 0xA1."""
REG_CHIP_ID: Final = 0xD0
REG_RESET: Final = 0xE0
RESET_COMMAND: Final = 0xB6
"""Only this value written to 0xE0 resets the chip; any other is ignored."""
REG_CALIB_H: Final = 0xE1
CALIB_H_LENGTH: Final = 7
"""0xE1..0xE7: dig_H2..dig_H6, with dig_H4 and dig_H5 sharing the nibbles of 0xE5."""
REG_CTRL_HUM: Final = 0xF2
REG_STATUS: Final = 0xF3
STATUS_MEASURING: Final = 1 << 3
"""Set while a conversion runs; clear once results are in the data registers."""
STATUS_IM_UPDATE: Final = 1 << 0
"""Set while NVM calibration data is copied to the image registers (after reset, power-up)."""
REG_CTRL_MEAS: Final = 0xF4
REG_CONFIG: Final = 0xF5
REG_DATA: Final = 0xF7
DATA_LENGTH: Final = 8
"""0xF7..0xFE: press msb/lsb/xlsb, temp msb/lsb/xlsb, hum msb/lsb, read in one burst so that
all three belong to the same conversion (the chip locks the data registers during a burst)."""

MODE_SLEEP: Final = 0b00
MODE_FORCED: Final = 0b01
"""0b10 is forced mode too."""
MODE_NORMAL: Final = 0b11

OSRS_SKIPPED: Final = 0
OSRS_X1: Final = 1
OVERSAMPLING: Final = (0, 1, 2, 4, 8, 16, 16, 16)
"""Oversampling factor for each 3-bit osrs_x code; codes 5..7 all mean x16."""
STANDBY_MS: Final = (0.5, 62.5, 125.0, 250.0, 500.0, 1000.0, 10.0, 20.0)
"""Normal-mode t_standby per config.t_sb code; codes 6 and 7 differ from the BMP280's."""

SKIPPED_20BIT: Final = 0x80000
"""Temperature or pressure ADC value left at its reset state: that measurement was skipped."""
SKIPPED_16BIT: Final = 0x8000
"""Humidity ADC value left at its reset state: humidity was skipped."""

STARTUP_TIME: Final = 2e-3
"""t_startup, table 1: time from reset or power-up until the chip answers reliably."""

NVM_COPY_TIMEOUT: Final = 10e-3
"""How long the NVM copy may take after a soft reset. The datasheet gives no figure; Bosch's
reference driver allows about the same (five 2 ms tries) before calling the copy failed."""

POLL_INTERVAL: Final = 1e-3
"""Gap between status polls: one status read costs ~0.2 ms at 100 kHz, so polling every 1 ms
leaves the bus mostly free for other chips and adds at most 1 ms of latency."""

QUANTITIES: Final = (
    # At the resolution of the compensation's integer results (section 4.2.3): 0.01 °C,
    # 1/1024 %RH and 1/256 Pa, the last in hPa.
    measured("temperature", decimals=decimals_for(1 / 100)),
    measured("humidity", decimals=decimals_for(1 / 1024)),
    measured("pressure", decimals=decimals_for(1 / 25600)),
)

_CTRL_HUM_X1: Final = OSRS_X1
_CTRL_MEAS_FORCED_X1: Final = (OSRS_X1 << 5) | (OSRS_X1 << 2) | MODE_FORCED
_CONFIG_NO_FILTER: Final = 0x00
"""t_sb 0.5 ms (unused in forced mode), IIR filter off, 3-wire SPI off."""

_BLANK_BYTES: Final = frozenset({0x00, 0xFF})


# -- calibration (section 4.2.2, table 16) ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Calibration:
    """Per-chip trimming constants, named as in the datasheet."""

    dig_T1: int
    dig_T2: int
    dig_T3: int
    dig_P1: int
    dig_P2: int
    dig_P3: int
    dig_P4: int
    dig_P5: int
    dig_P6: int
    dig_P7: int
    dig_P8: int
    dig_P9: int
    dig_H1: int
    dig_H2: int
    dig_H3: int
    dig_H4: int
    dig_H5: int
    dig_H6: int

    @classmethod
    def from_registers(cls, tp: Sequence[int], h: Sequence[int]) -> Calibration:
        """Parse the two calibration blocks: 0x88..0xA1 (26 bytes) and 0xE1..0xE7 (7 bytes).

        dig_H4 and dig_H5 are signed 12-bit values split around 0xE5: dig_H4 is 0xE4 (its high
        8 bits, signed) then the low nibble of 0xE5; dig_H5 is 0xE6 (high 8 bits, signed) then
        the high nibble of 0xE5. Raises DataError for a block that is all 0x00 or all 0xFF,
        which is what a chip mid-NVM-copy or a stuck bus returns.
        """
        if len(tp) != CALIB_TP_LENGTH or len(h) != CALIB_H_LENGTH:
            raise DataError(
                f"calibration blocks must be {CALIB_TP_LENGTH} and {CALIB_H_LENGTH} bytes, "
                f"got {len(tp)} and {len(h)}"
            )
        for name, block in (("0x88..0xA1", tp), ("0xE1..0xE7", h)):
            if len(set(block)) == 1 and block[0] in _BLANK_BYTES:
                raise DataError(
                    f"calibration block {name} reads all {block[0]:#04x}: "
                    "NVM not loaded or bus stuck"
                )
        t1, t2, t3, p1, p2, p3, p4, p5, p6, p7, p8, p9 = struct.unpack(
            "<HhhHhhhhhhhh", bytes(tp[:24])
        )
        h2, h3 = struct.unpack("<hB", bytes(h[0:3]))
        e4, e5, e6 = h[3], h[4], h[5]
        h4 = (_s8(e4) << 4) | (e5 & 0x0F)
        h5 = (_s8(e6) << 4) | (e5 >> 4)
        calibration = cls(
            t1, t2, t3, p1, p2, p3, p4, p5, p6, p7, p8, p9, tp[25], h2, h3, h4, h5, _s8(h[6])
        )
        if calibration.dig_P1 == 0:
            # The pressure formula divides by a term proportional to dig_P1.
            raise DataError("calibration dig_P1 is 0: NVM content is not valid")
        return calibration

    def to_registers(self) -> tuple[bytes, bytes]:
        """The two blocks `from_registers` parses; what an emulated chip holds in its NVM."""
        for name in ("dig_H4", "dig_H5"):
            value = getattr(self, name)
            if not -2048 <= value <= 2047:
                raise ValueError(f"{name} is a signed 12-bit value, got {value}")
        tp = struct.pack(
            "<HhhHhhhhhhhhBB",
            self.dig_T1,
            self.dig_T2,
            self.dig_T3,
            self.dig_P1,
            self.dig_P2,
            self.dig_P3,
            self.dig_P4,
            self.dig_P5,
            self.dig_P6,
            self.dig_P7,
            self.dig_P8,
            self.dig_P9,
            0,  # 0xA0 is not used
            self.dig_H1,
        )
        e4 = (self.dig_H4 >> 4) & 0xFF
        e5 = (self.dig_H4 & 0x0F) | ((self.dig_H5 & 0x0F) << 4)
        e6 = (self.dig_H5 >> 4) & 0xFF
        h = struct.pack("<hBBBBb", self.dig_H2, self.dig_H3, e4, e5, e6, self.dig_H6)
        return tp, h


SAMPLE_CALIBRATION: Final = Calibration(
    # Temperature and pressure: the worked example Bosch prints for the BMP280, whose T and P
    # formulas the BME280 shares, so tests can check against published numbers.
    dig_T1=27504,
    dig_T2=26435,
    dig_T3=-1000,
    dig_P1=36477,
    dig_P2=-10685,
    dig_P3=3024,
    dig_P4=2855,
    dig_P5=140,
    dig_P6=-7,
    dig_P7=15500,
    dig_P8=-14600,
    dig_P9=6000,
    # Humidity: no published example exists; these are typical of values read from real parts.
    dig_H1=75,
    dig_H2=362,
    dig_H3=0,
    dig_H4=313,
    dig_H5=50,
    dig_H6=30,
)


def _s8(byte: int) -> int:
    return byte - 0x100 if byte & 0x80 else byte


# -- compensation (section 4.2.3), integer versions ------------------------------------------
# Python integers do not overflow, so these match the C reference wherever the C code does not
# overflow, which holds for every ADC value with a valid calibration.


def compensate_temperature(adc_t: int, cal: Calibration) -> tuple[int, int]:
    """Temperature in 0.01 °C and t_fine, from a 20-bit ADC value ("5123" is 51.23 °C).

    t_fine, the temperature in 1/5120 °C, is an input to the pressure and humidity formulas;
    the datasheet keeps it in a global, here it is returned.
    """
    var1 = (((adc_t >> 3) - (cal.dig_T1 << 1)) * cal.dig_T2) >> 11
    var2 = (((((adc_t >> 4) - cal.dig_T1) * ((adc_t >> 4) - cal.dig_T1)) >> 12) * cal.dig_T3) >> 14
    t_fine = var1 + var2
    return (t_fine * 5 + 128) >> 8, t_fine


def compensate_pressure(adc_p: int, t_fine: int, cal: Calibration) -> int:
    """Pressure in Pa as Q24.8 ("24674867" is 24674867/256 = 96386.2 Pa), 64-bit version."""
    var1 = t_fine - 128000
    var2 = var1 * var1 * cal.dig_P6
    var2 = var2 + ((var1 * cal.dig_P5) << 17)
    var2 = var2 + (cal.dig_P4 << 35)
    var1 = ((var1 * var1 * cal.dig_P3) >> 8) + ((var1 * cal.dig_P2) << 12)
    var1 = (((1 << 47) + var1) * cal.dig_P1) >> 33
    if var1 == 0:
        return 0  # the datasheet's guard against dividing by zero
    p = 1048576 - adc_p
    p = _div_trunc(((p << 31) - var2) * 3125, var1)
    var1 = (cal.dig_P9 * (p >> 13) * (p >> 13)) >> 25
    var2 = (cal.dig_P8 * p) >> 19
    return ((p + var1 + var2) >> 8) + (cal.dig_P7 << 4)


def compensate_humidity(adc_h: int, t_fine: int, cal: Calibration) -> int:
    """Relative humidity in %RH as Q22.10 ("47445" is 47445/1024 = 46.333 %RH), 0..100 %RH."""
    v = t_fine - 76800
    offset_removed = (((adc_h << 14) - (cal.dig_H4 << 20) - (cal.dig_H5 * v)) + 16384) >> 15
    temperature_gain = (
        ((((v * cal.dig_H6) >> 10) * (((v * cal.dig_H3) >> 11) + 32768)) >> 10) + 2097152
    ) * cal.dig_H2 + 8192
    v = offset_removed * (temperature_gain >> 14)
    v = v - (((((v >> 15) * (v >> 15)) >> 7) * cal.dig_H1) >> 4)
    v = min(max(v, 0), 419430400)
    return v >> 12


def _div_trunc(a: int, b: int) -> int:
    """C's integer division, which truncates toward zero where Python's `//` floors."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


# -- measurement time (section 9.1) ----------------------------------------------------------


def measurement_time_typical(osrs_t: int, osrs_p: int, osrs_h: int) -> float:
    """Typical seconds for one conversion; arguments are oversampling factors, 0 = skipped."""
    ms = 1.0 + 2.0 * osrs_t
    ms += 2.0 * osrs_p + 0.5 if osrs_p else 0.0
    ms += 2.0 * osrs_h + 0.5 if osrs_h else 0.0
    return ms / 1000.0


def measurement_time_max(osrs_t: int, osrs_p: int, osrs_h: int) -> float:
    """Maximum seconds for one conversion; 9.3 ms with every oversampling at x1."""
    ms = 1.25 + 2.3 * osrs_t
    ms += 2.3 * osrs_p + 0.575 if osrs_p else 0.0
    ms += 2.3 * osrs_h + 0.575 if osrs_h else 0.0
    return ms / 1000.0


# -- the driver ------------------------------------------------------------------------------


class BME280(I2CSensor):
    """A BME280 on an I2C bus, measured in forced mode: one conversion per `read()`.

    Forced mode suits slow polling (an agent reading every few seconds): the chip sleeps between
    reads at 0.1 µA and every reading is fresh, where normal mode would hand back whatever the
    last periodic conversion left. Oversampling is x1 everywhere and the IIR filter off, Bosch's
    recommendation for weather monitoring (section 3.5.1).

    The constructor does not touch the bus; `open()` (or the first read) checks the chip id,
    soft-resets and reads the calibration. After the chip goes missing the next read does all
    of that again, since what answers afterwards may be another, or a power-cycled, chip.
    """

    driver_name = "bme280"
    quantities = QUANTITIES
    addresses = ADDRESSES
    address_rule = "a BME280 answers only at 0x76 or 0x77 (SDO strapping)"

    def __init__(
        self,
        bus: I2CBus,
        address: int = ADDRESS_PRIMARY,
        *,
        backend: BackendKind = BackendKind.REAL,
        clock: Clock = time.time,
        timer: Timer | None = None,
    ) -> None:
        super().__init__(bus, address, backend=backend, clock=clock, timer=timer)
        self._calibration: Calibration | None = None

    @property
    def calibration(self) -> Calibration | None:
        """The calibration read at the last successful open, None before it."""
        return self._calibration

    def open(self) -> Self:
        """Bring the chip up; raises ChipIdError, SensorMissingError, BusError, ..."""
        with self._lock:
            self._bring_up()
        return self

    def _measure(self) -> Mapping[str, float]:
        with self._lock:
            try:
                calibration = self._calibration or self._bring_up()
                adc_p, adc_t, adc_h = self._forced_conversion()
            except OSError:
                # Missing, bus and timeout errors are all OSErrors. After any of them the chip
                # may have been swapped, browned out or wedged, and a fresh bring-up (which
                # soft-resets) is cheap next to a reading built on a stale calibration.
                self._calibration = None
                raise
        return convert(adc_p, adc_t, adc_h, calibration)

    def _bring_up(self) -> Calibration:
        self._calibration = None
        chip_id = self._read_byte(REG_CHIP_ID, "read chip id")
        if chip_id != CHIP_ID:
            raise ChipIdError(
                f"{self._where()}: chip id {chip_id:#04x}, expected {CHIP_ID:#04x}"
                f"{_CHIP_HINTS.get(chip_id, '')}"
            )
        self._write_byte(REG_RESET, RESET_COMMAND, "soft reset")
        self._wait_for_nvm_copy()
        tp = self._read_block(REG_CALIB_TP, CALIB_TP_LENGTH, "read calibration 0x88..0xA1")
        h = self._read_block(REG_CALIB_H, CALIB_H_LENGTH, "read calibration 0xE1..0xE7")
        calibration = Calibration.from_registers(tp, h)
        # config is only reliably written in sleep mode, which is where the reset left us.
        self._write_byte(REG_CONFIG, _CONFIG_NO_FILTER, "write config")
        self._calibration = calibration
        return calibration

    def _wait_for_nvm_copy(self) -> None:
        """Poll im_update after a reset: calibration read mid-copy would be garbage."""
        self._timer.sleep(STARTUP_TIME)
        deadline = self._timer.monotonic() + NVM_COPY_TIMEOUT
        while self._read_byte(REG_STATUS, "read status") & STATUS_IM_UPDATE:
            if self._timer.monotonic() >= deadline:
                raise SensorTimeoutError(
                    f"{self._where()}: NVM copy still running "
                    f"{(STARTUP_TIME + NVM_COPY_TIMEOUT) * 1000:.0f} ms after reset"
                )
            self._timer.sleep(POLL_INTERVAL)

    def _forced_conversion(self) -> tuple[int, int, int]:
        """Trigger one forced-mode conversion, wait for it, return raw (adc_P, adc_T, adc_H).

        The wait is bounded by the datasheet's maximum measurement time (section 9.1; 9.3 ms at
        x1): the chip guarantees a result by then, so a measuring bit still set afterwards
        means a wedged chip, reported as SensorTimeoutError instead of a hung sensor loop. The
        clock starts after the trigger write returns, so bus latency only adds slack. The first
        poll comes after the typical time, which spares the bus useless reads and also avoids
        reading status in the instant before the conversion has set the measuring bit.
        """
        # ctrl_hum takes effect only on the next ctrl_meas write; writing it every time also
        # restores it after a brown-out reset that the driver never saw.
        self._write_byte(REG_CTRL_HUM, _CTRL_HUM_X1, "write ctrl_hum")
        self._write_byte(REG_CTRL_MEAS, _CTRL_MEAS_FORCED_X1, "trigger forced conversion")
        deadline = self._timer.monotonic() + measurement_time_max(1, 1, 1)
        self._timer.sleep(measurement_time_typical(1, 1, 1))
        while self._read_byte(REG_STATUS, "read status") & STATUS_MEASURING:
            if self._timer.monotonic() >= deadline:
                raise SensorTimeoutError(
                    f"{self._where()}: conversion still running after "
                    f"{measurement_time_max(1, 1, 1) * 1000:.1f} ms (datasheet maximum)"
                )
            self._timer.sleep(POLL_INTERVAL)
        raw = self._read_block(REG_DATA, DATA_LENGTH, "read data 0xF7..0xFE")
        return unpack_data(raw)

    # Every transfer goes through these three so OSError is translated in one place.

    def _read_byte(self, register: int, what: str) -> int:
        with self._bus_errors(what):
            return self._bus.read_byte_data(self.address, register)

    def _read_block(self, register: int, length: int, what: str) -> list[int]:
        with self._bus_errors(what):
            return self._bus.read_i2c_block_data(self.address, register, length)

    def _write_byte(self, register: int, value: int, what: str) -> None:
        with self._bus_errors(what):
            self._bus.write_byte_data(self.address, register, value)


_CHIP_HINTS: Final = {
    0x56: " (a BMP280 sample: no humidity; use a BMP280 driver)",
    0x57: " (a BMP280 sample: no humidity; use a BMP280 driver)",
    0x58: " (a BMP280: no humidity; use a BMP280 driver)",
    0x61: " (a BME680)",
}


def unpack_data(raw: Sequence[int]) -> tuple[int, int, int]:
    """Raw (adc_P, adc_T, adc_H) from the 8 data bytes 0xF7..0xFE (20, 20 and 16 bits)."""
    adc_p = (raw[0] << 12) | (raw[1] << 4) | (raw[2] >> 4)
    adc_t = (raw[3] << 12) | (raw[4] << 4) | (raw[5] >> 4)
    adc_h = (raw[6] << 8) | raw[7]
    return adc_p, adc_t, adc_h


def convert(adc_p: int, adc_t: int, adc_h: int, cal: Calibration) -> dict[str, float]:
    """Physical values in the driver's units from raw ADC values; DataError if one was skipped."""
    skipped = [
        name
        for name, value, marker in (
            ("temperature", adc_t, SKIPPED_20BIT),
            ("pressure", adc_p, SKIPPED_20BIT),
            ("humidity", adc_h, SKIPPED_16BIT),
        )
        if value == marker
    ]
    if skipped:
        raise DataError(
            f"bme280 returned the reset value for {', '.join(skipped)}: "
            "measurement skipped or never completed"
        )
    centi_celsius, t_fine = compensate_temperature(adc_t, cal)
    return {
        "temperature": centi_celsius / 100.0,
        "humidity": compensate_humidity(adc_h, t_fine, cal) / 1024.0,
        "pressure": compensate_pressure(adc_p, t_fine, cal) / 25600.0,
    }


def open_bme280(
    bus: I2CBus,
    *,
    address: int = ADDRESS_PRIMARY,
    backend: BackendKind = BackendKind.REAL,
    clock: Clock = time.time,
    timer: Timer | None = None,
    options: Mapping[str, OptionValue] | None = None,
) -> BME280:
    """Construct and open a BME280: the registry's way in. It has no `options` (the registry
    refuses any); the parameter exists because every I2C driver's opener takes it."""
    return BME280(bus, address, backend=backend, clock=clock, timer=timer).open()


# -- inverse compensation, for the emulator --------------------------------------------------


def raw_temperature(celsius: float, cal: Calibration, *, bits: int = 20) -> int:
    """The `bits`-resolution ADC value whose t_fine comes nearest `celsius`.

    At x1 oversampling the chip resolves 16 bits (section 3.4): the low 4 of the 20 are 0.
    """
    step = 1 << (20 - bits)
    k = _nearest(
        lambda k: compensate_temperature(k * step, cal)[1],
        celsius * 5120.0,
        0,
        (1 << bits) - 1,
        avoid=SKIPPED_20BIT // step,
    )
    return k * step


def raw_pressure(hpa: float, t_fine: int, cal: Calibration, *, bits: int = 20) -> int:
    """The `bits`-resolution ADC value that compensates nearest `hpa` at temperature t_fine."""
    step = 1 << (20 - bits)
    # Pressure falls as adc_P rises; negating both sides gives the search a rising function.
    k = _nearest(
        lambda k: -compensate_pressure(k * step, t_fine, cal),
        -hpa * 25600.0,
        0,
        (1 << bits) - 1,
        avoid=SKIPPED_20BIT // step,
    )
    return k * step


def raw_humidity(rh: float, t_fine: int, cal: Calibration) -> int:
    """The 16-bit ADC value that compensates nearest `rh` %RH at temperature t_fine."""
    return _nearest(
        lambda k: compensate_humidity(k, t_fine, cal),
        rh * 1024.0,
        0,
        0xFFFF,
        avoid=SKIPPED_16BIT,
    )


def _nearest(f: Callable[[int], float], target: float, lo: int, hi: int, *, avoid: int) -> int:
    """The k in [lo, hi] other than `avoid` whose f(k) is nearest `target`, f non-decreasing.

    `avoid` is the "skipped" reset value: a real chip may output it for a genuine reading, but
    the driver must treat it as skipped, so the emulator steps to the better neighbour instead
    and stays within one resolution step of the target.
    """
    best = _bracket(f, target, lo, hi)
    if best != avoid:
        return best
    neighbours = [x for x in (best - 1, best + 1) if lo <= x <= hi]
    return min(neighbours, key=lambda x: abs(f(x) - target))


def _bracket(f: Callable[[int], float], target: float, lo: int, hi: int) -> int:
    """The k in [lo, hi] whose f(k) is nearest `target`, for non-decreasing f.

    A safeguarded secant search: the temperature and pressure curves are nearly straight, so a
    secant through the last two points finds the answer in about six calls, where bisection over
    2**16 values takes seventeen (humidity, flat where it clamps at 0 and 100 %RH, takes about
    eleven). Two rounds in a row that fail to halve the bracket earn a bisection step, which
    bounds the worst case. Speed matters because a simulated fleet inverts three curves per
    reading per device.
    """
    f_lo, f_hi = f(lo), f(hi)
    if target <= f_lo:
        return lo
    if target >= f_hi:
        return hi
    # Invariant: f(lo) < target <= f(hi). (x0, f0), (x1, f1) are the latest two points.
    x0, f0, x1, f1 = lo, f_lo, hi, f_hi
    slow_rounds = 0
    while hi - lo > 1:
        width = hi - lo
        if slow_rounds >= 2 or f1 == f0:
            x = (lo + hi) // 2
        else:
            x = round(x1 + (target - f1) * (x1 - x0) / (f1 - f0))
            x = min(max(x, lo + 1), hi - 1)
        fx = f(x)
        if fx < target:
            lo, f_lo = x, fx
        else:
            hi, f_hi = x, fx
        x0, f0, x1, f1 = x1, f1, x, fx
        slow_rounds = slow_rounds + 1 if hi - lo > width // 2 else 0
    return lo if target - f_lo <= f_hi - target else hi


# -- the emulator ----------------------------------------------------------------------------


DEFAULT_ENVIRONMENT: Final = {"temperature": 21.0, "humidity": 45.0, "pressure": 1013.25}
"""What an emulator measures when given no signals: a mild room at standard pressure."""


@dataclass(slots=True)
class _Conversion:
    done_at: float
    raw: tuple[int, int, int]


class BME280Emulator(RegisterDevice):
    """A BME280 at register level, measuring values from signal models.

    Modelled: chip id, calibration NVM (reading 0 while the copy after reset runs), soft reset,
    ctrl_hum taking effect on the next ctrl_meas write, sleep/forced/normal modes, the status
    bits on the shared `timer`, oversampling codes (skipped -> reset value, resolution 16..20
    bits), register/value-pair block writes, and data registers holding ADC values found by
    inverting the compensation, so the real driver reads back the physical value within the
    chip's resolution. Not modelled: the IIR filter, SPI, and noise of the chip itself (put
    noise in the signal models).

    Signals are sampled on `clock` (seconds since the epoch) when a conversion starts;
    conversion and NVM copy times run on `timer`, which must be the driver's timer too.
    """

    def __init__(
        self,
        *,
        signals: Mapping[str, SignalModel] | None = None,
        clock: Clock = time.time,
        timer: Timer | None = None,
        calibration: Calibration = SAMPLE_CALIBRATION,
        chip_id: int = CHIP_ID,
        conversion_time: float | None = None,
        nvm_copy_time: float = 1e-3,
        options: Mapping[str, OptionValue] | None = None,
    ) -> None:
        """`conversion_time` None means the datasheet's typical time for the oversampling set.

        `nvm_copy_time` has no datasheet figure; the default sits inside t_startup (2 ms).
        `options` (placement settings) mean nothing to this chip and are ignored.
        """
        self._signals = SignalInputs("bme280", DEFAULT_ENVIRONMENT, signals)
        self._clock = clock
        self._timer: Timer = timer if timer is not None else RealTimer()
        self._calibration = calibration
        self._nvm = calibration.to_registers()
        self.chip_id = chip_id
        self.conversion_time = conversion_time
        self.nvm_copy_time = nvm_copy_time
        self._regs = bytearray(256)
        self._osrs_h_latched = 0
        self._nvm_done_at = 0.0
        self._conversion: _Conversion | None = None
        self._normal_since = 0.0
        self._normal_done = 0
        self._lock = threading.RLock()
        self.power_on()

    def __repr__(self) -> str:
        return f"BME280Emulator(chip_id={self.chip_id:#04x})"

    @property
    def calibration(self) -> Calibration:
        """What this chip's NVM holds; fixed at construction, as it is at the factory."""
        return self._calibration

    # -- environment -------------------------------------------------------------------------

    def set_environment(
        self,
        *,
        temperature: float | None = None,
        humidity: float | None = None,
        pressure: float | None = None,
    ) -> None:
        """Hold quantities at fixed values (°C, %RH, hPa) from the next conversion on."""
        with self._lock:
            for name, value in (
                ("temperature", temperature),
                ("humidity", humidity),
                ("pressure", pressure),
            ):
                if value is not None:
                    self._signals.set(name, Constant(value))

    def set_signal(self, quantity: str, model: SignalModel) -> None:
        with self._lock:
            self._signals.set(quantity, model)

    # -- power and reset ---------------------------------------------------------------------

    def power_on(self) -> None:
        """Power-on reset: registers to their reset values, NVM copied again (im_update set)."""
        with self._lock:
            regs = self._regs
            regs[:] = bytes(256)
            regs[REG_CHIP_ID] = self.chip_id
            regs[REG_CALIB_TP : REG_CALIB_TP + CALIB_TP_LENGTH] = self._nvm[0]
            regs[REG_CALIB_H : REG_CALIB_H + CALIB_H_LENGTH] = self._nvm[1]
            # Data registers reset to 0x80 0x00 0x00 (P, T) and 0x80 0x00 (H): "skipped".
            regs[REG_DATA] = regs[REG_DATA + 3] = regs[REG_DATA + 6] = 0x80
            self._osrs_h_latched = 0
            self._conversion = None
            self._nvm_done_at = self._timer.monotonic() + self.nvm_copy_time

    # -- RegisterDevice ----------------------------------------------------------------------

    def read_register(self, reg: int) -> int:
        with self._lock:
            now = self._timer.monotonic()
            measuring = self._advance(now)
            if reg == REG_STATUS:
                status = STATUS_MEASURING if measuring else 0
                return status | (STATUS_IM_UPDATE if now < self._nvm_done_at else 0)
            if now < self._nvm_done_at and _is_calibration(reg):
                return 0x00
            return self._regs[reg]

    def write_register(self, reg: int, value: int) -> None:
        with self._lock:
            now = self._timer.monotonic()
            self._advance(now)
            mode = self._regs[REG_CTRL_MEAS] & 0b11
            if reg == REG_RESET:
                if value == RESET_COMMAND:
                    self.power_on()
            elif reg == REG_CTRL_HUM:
                self._regs[reg] = value & 0b111
            elif reg == REG_CONFIG:
                if mode != MODE_NORMAL:  # section 5.4.6: writes in normal mode may be ignored
                    self._regs[reg] = value & 0b1111_1101
            elif reg == REG_CTRL_MEAS:
                self._regs[reg] = value
                self._osrs_h_latched = self._regs[REG_CTRL_HUM] & 0b111
                self._start_mode(value & 0b11, now)
            # Every other register is read-only; the chip ignores writes to it.

    def write_block(self, reg: int, data: Sequence[int]) -> None:
        """Section 6.2.1: the BME280 does not auto-increment on writes; a multi-byte write is
        the first register's value followed by register/value pairs."""
        with self._lock:
            if not data:
                self.set_pointer(reg)
                return
            self.write_register(reg, data[0])
            rest = list(data[1:])
            for i in range(0, len(rest) - 1, 2):
                self.write_register(rest[i], rest[i + 1])

    # -- internals ---------------------------------------------------------------------------

    def _oversampling(self) -> tuple[int, int, int]:
        ctrl = self._regs[REG_CTRL_MEAS]
        return (
            OVERSAMPLING[(ctrl >> 5) & 0b111],
            OVERSAMPLING[(ctrl >> 2) & 0b111],
            OVERSAMPLING[self._osrs_h_latched],
        )

    def _conversion_time(self) -> float:
        if self.conversion_time is not None:
            return self.conversion_time
        return measurement_time_typical(*self._oversampling())

    def _start_mode(self, mode: int, now: float) -> None:
        self._conversion = None
        if mode in (0b01, 0b10):
            self._conversion = _Conversion(now + self._conversion_time(), self._convert())
        elif mode == MODE_NORMAL:
            self._normal_since = now
            self._normal_done = 0

    def _advance(self, now: float) -> bool:
        """Bring the registers up to `now`; True while a conversion is running."""
        mode = self._regs[REG_CTRL_MEAS] & 0b11
        if mode == MODE_NORMAL:
            conversion = self._conversion_time()
            period = conversion + STANDBY_MS[self._regs[REG_CONFIG] >> 5] / 1000.0
            elapsed = now - self._normal_since
            cycle = int(elapsed // period)
            measuring = elapsed - cycle * period < conversion
            done = cycle if measuring else cycle + 1
            if done > self._normal_done:
                # Cycles nobody looked at leave no trace; only the latest result matters.
                self._normal_done = done
                self._latch(self._convert())
            return measuring
        if self._conversion is None:
            return False
        if now < self._conversion.done_at:
            return True
        self._latch(self._conversion.raw)
        self._conversion = None
        self._regs[REG_CTRL_MEAS] &= 0b1111_1100  # forced mode falls back to sleep when done
        return False

    def _convert(self) -> tuple[int, int, int]:
        """Raw (adc_P, adc_T, adc_H) for the environment now, at the current oversampling."""
        t = self._clock()
        # Sample every signal at every conversion so each model's time line stays regular.
        celsius = self._signals["temperature"].sample(t)
        rh = self._signals["humidity"].sample(t)
        hpa = self._signals["pressure"].sample(t)
        if math.isnan(celsius) or math.isnan(rh) or math.isnan(hpa):
            # NaN is a signal's "no measurement now": fail the transfer that started it (EIO).
            raise dropout_error()
        osrs_t, osrs_p, osrs_h = self._oversampling()
        cal = self._calibration
        adc_t = raw_temperature(celsius, cal, bits=_bits(osrs_t))
        _, t_fine = compensate_temperature(adc_t, cal)
        adc_p = raw_pressure(hpa, t_fine, cal, bits=_bits(osrs_p))
        adc_h = raw_humidity(rh, t_fine, cal)
        return (
            adc_p if osrs_p else SKIPPED_20BIT,
            adc_t if osrs_t else SKIPPED_20BIT,
            adc_h if osrs_h else SKIPPED_16BIT,
        )

    def _latch(self, raw: tuple[int, int, int]) -> None:
        adc_p, adc_t, adc_h = raw
        self._regs[REG_DATA : REG_DATA + DATA_LENGTH] = bytes(
            (
                adc_p >> 12,
                (adc_p >> 4) & 0xFF,
                (adc_p & 0x0F) << 4,
                adc_t >> 12,
                (adc_t >> 4) & 0xFF,
                (adc_t & 0x0F) << 4,
                adc_h >> 8,
                adc_h & 0xFF,
            )
        )


def _bits(oversampling: int) -> int:
    """ADC resolution with the IIR filter off (section 3.4): 16 bits at x1, +1 per doubling."""
    return 16 + max(oversampling, 1).bit_length() - 1


def _is_calibration(reg: int) -> bool:
    return (
        REG_CALIB_TP <= reg < REG_CALIB_TP + CALIB_TP_LENGTH
        or REG_CALIB_H <= reg < REG_CALIB_H + CALIB_H_LENGTH
    )


DRIVER: Final = i2c_driver(
    name="bme280",
    quantities=QUANTITIES,
    default_address=ADDRESS_PRIMARY,
    addresses=ADDRESSES,
    description="Bosch BME280: temperature, humidity and barometric pressure (I2C)",
    open_driver=open_bme280,
    build_emulator=BME280Emulator,
)
