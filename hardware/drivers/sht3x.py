"""Sensirion SHT3x (SHT30, SHT31, SHT35) temperature and humidity sensor on I2C, and its emulator.

The SHT3x is command-based, not register-based: the host writes a 16-bit command, and reads the
answer with a plain read transfer, so the driver talks to it through `i2c_rdwr` messages
(`hardware.bus.i2c_write` / `i2c_read`) rather than SMBus register calls. Every 16-bit word the
chip sends is followed by a CRC-8 that the driver checks. Section and table numbers refer to
the SHT3x-DIS datasheet (Sensirion, version 6, 2019).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Self

from edgetwin.hardware.bus import (
    MISSING_ERRNOS,
    NACK_ERRNO,
    I2CBus,
    I2CDevice,
    dropout_error,
    i2c_read,
    i2c_write,
    translate_os_error,
)
from edgetwin.hardware.drivers import OptionValue, i2c_driver
from edgetwin.hardware.drivers.i2c import I2CSensor, SignalInputs
from edgetwin.hardware.errors import DataError, HardwareError, SensorTimeoutError
from edgetwin.hardware.quantities import decimals_for, measured
from edgetwin.hardware.sensor import BackendKind, Clock
from edgetwin.hardware.signals import Constant, SignalModel
from edgetwin.hardware.timing import RealTimer, Timer

# -- addresses and commands (section 4, tables 7, 9, 13, 16) ---------------------------------

ADDRESS_DEFAULT: Final = 0x44
"""ADDR pin tied to VSS, the usual breakout strapping."""
ADDRESS_ALTERNATE: Final = 0x45
"""ADDR pin tied to VDD."""
ADDRESSES: Final = (ADDRESS_DEFAULT, ADDRESS_ALTERNATE)

CMD_MEASURE_HIGH: Final = 0x2400
"""Single shot, high repeatability, clock stretching disabled (table 9)."""
CMD_MEASURE_MEDIUM: Final = 0x240B
CMD_MEASURE_LOW: Final = 0x2416
CMD_SOFT_RESET: Final = 0x30A2
CMD_READ_STATUS: Final = 0xF32D
CMD_CLEAR_STATUS: Final = 0x3041
CMD_HEATER_ON: Final = 0x306D
CMD_HEATER_OFF: Final = 0x3066
CMD_BREAK: Final = 0x3093
"""Stops periodic acquisition; accepted, and harmless, in single-shot mode."""

MEASUREMENT_LENGTH: Final = 6
"""T msb, T lsb, T CRC, RH msb, RH lsb, RH CRC (section 4.4)."""
STATUS_LENGTH: Final = 3
"""Status msb, lsb, CRC (section 4.11)."""

# -- status register bits (table 17) ---------------------------------------------------------

STATUS_ALERT_PENDING: Final = 1 << 15
STATUS_HEATER_ON: Final = 1 << 13
STATUS_RH_ALERT: Final = 1 << 11
STATUS_T_ALERT: Final = 1 << 10
STATUS_RESET_DETECTED: Final = 1 << 4
"""Set by a power-up, a soft reset or a supply dip; cleared only by CMD_CLEAR_STATUS."""
STATUS_COMMAND_FAILED: Final = 1 << 1
"""The last command was not processed: unknown, or failed its checksum."""
STATUS_WRITE_CRC_FAILED: Final = 1 << 0
STATUS_AFTER_RESET: Final = STATUS_ALERT_PENDING | STATUS_RESET_DETECTED
"""0x8010: the defaults table 17 gives for bits 15 and 4, what a freshly reset chip reads."""
_CLEARABLE: Final = STATUS_ALERT_PENDING | STATUS_RH_ALERT | STATUS_T_ALERT | STATUS_RESET_DETECTED

# -- timing (table 4) ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Repeatability:
    """One single-shot measurement command and how long the chip takes over it."""

    command: int
    typical: float
    """Seconds; what the emulator takes by default."""
    maximum: float
    """Seconds; by then the chip guarantees a result."""


REPEATABILITY: Final = {
    "high": Repeatability(CMD_MEASURE_HIGH, 12.5e-3, 15e-3),
    "medium": Repeatability(CMD_MEASURE_MEDIUM, 4.5e-3, 6e-3),
    "low": Repeatability(CMD_MEASURE_LOW, 2.5e-3, 4e-3),
}
"""Measurement duration per repeatability, table 4: high is 12.5 ms typical, 15 ms maximum."""
_BY_COMMAND: Final = {r.command: r for r in REPEATABILITY.values()}

SOFT_RESET_TIME: Final = 1.5e-3
"""t_SR, table 4: at most 1.5 ms from the reset command until the chip answers again."""
POWER_UP_TIME: Final = 1e-3
"""t_PU, table 4: at most 1 ms from power-up until the chip answers."""
POLL_INTERVAL: Final = 1e-3
"""Gap between read attempts while the chip NACKs a measurement in progress: a NACKed read
header costs ~0.1 ms at 100 kHz, so the bus stays mostly free and latency grows by at most 1 ms."""

# -- pure functions: CRC and conversion (sections 4.12 and 4.13) -----------------------------

CRC_POLYNOMIAL: Final = 0x31
"""x^8 + x^5 + x^4 + 1 (table 19)."""
CRC_INIT: Final = 0xFF
RAW_MAX: Final = 0xFFFF
"""The formulas divide by 2^16 - 1: raw 0xFFFF is the top of each scale."""


def crc8(data: Sequence[int] | bytes) -> int:
    """Sensirion's CRC-8 of `data` (table 19): polynomial 0x31, init 0xFF, no reflection, no
    final XOR. The datasheet's example: crc8(b"\\xbe\\xef") == 0x92."""
    crc = CRC_INIT
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ CRC_POLYNOMIAL) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def temperature_from_raw(raw: int) -> float:
    """°C from a 16-bit reading: T = -45 + 175 * S_T / (2^16 - 1) (section 4.13).

    The scale ends are -45 °C (0x0000) and +130 °C (0xFFFF); the chip is specified from -40 to
    125 °C, so readings near either end are already outside what it can measure.
    """
    return -45.0 + 175.0 * raw / RAW_MAX


def humidity_from_raw(raw: int) -> float:
    """%RH from a 16-bit reading: RH = 100 * S_RH / (2^16 - 1) (section 4.13)."""
    return 100.0 * raw / RAW_MAX


def raw_from_temperature(celsius: float) -> int:
    """The 16-bit reading nearest `celsius`, saturating at the scale ends like the chip."""
    return min(RAW_MAX, max(0, round((celsius + 45.0) * RAW_MAX / 175.0)))


def raw_from_humidity(rh: float) -> int:
    """The 16-bit reading nearest `rh` %RH, saturating at 0 and 100 %RH like the chip."""
    return min(RAW_MAX, max(0, round(rh * RAW_MAX / 100.0)))


def pack_words(*words: int) -> bytes:
    """Each 16-bit word big-endian followed by its CRC: what the chip puts on the bus."""
    out = bytearray()
    for word in words:
        pair = bytes((word >> 8, word & 0xFF))
        out += pair + bytes((crc8(pair),))
    return bytes(out)


def unpack_words(data: Sequence[int] | bytes, what: str) -> list[int]:
    """The 16-bit words in `data` (msb, lsb, CRC per word), each CRC checked.

    Raises DataError naming the word whose CRC fails: a flipped bit on the bus, or a chip that
    is not there and leaves SDA high (every byte 0xFF, and crc8(0xFFFF) is 0xAC, not 0xFF).
    """
    if len(data) % 3:
        raise DataError(f"{what}: {len(data)} bytes is not a whole number of CRC-checked words")
    words = []
    for i in range(0, len(data), 3):
        msb, lsb, crc = data[i], data[i + 1], data[i + 2]
        expected = crc8((msb, lsb))
        if crc != expected:
            raise DataError(
                f"{what}: CRC mismatch on word {i // 3} ({msb:02x}{lsb:02x}): "
                f"got {crc:#04x}, expected {expected:#04x}"
            )
        words.append((msb << 8) | lsb)
    return words


QUANTITIES: Final = (
    # At the resolution of one count of the 16-bit results (section 4.13).
    measured(
        "temperature", decimals=decimals_for(temperature_from_raw(1) - temperature_from_raw(0))
    ),
    measured("humidity", decimals=decimals_for(humidity_from_raw(1))),
)


def convert(raw_t: int, raw_rh: int) -> dict[str, float]:
    """Physical values in the driver's units from the two raw words of a measurement."""
    return {"temperature": temperature_from_raw(raw_t), "humidity": humidity_from_raw(raw_rh)}


# -- the driver ------------------------------------------------------------------------------


class SHT3x(I2CSensor):
    """An SHT30/31/35 on an I2C bus: one single-shot, high-repeatability measurement per read.

    Clock stretching is off: stretching would hold SCL for up to 15 ms per read, which some
    adapters (the Raspberry Pi's i2c-bcm2835 among them) do not support reliably. Instead the
    chip NACKs a read while it measures, and the driver, having waited the typical time, tries
    again every `POLL_INTERVAL` until the datasheet maximum (15 ms at high repeatability); a
    chip still busy after that is reported as SensorTimeoutError.

    `open()` (or the first read) soft-resets the chip and reads its status register, checking
    the CRC; after any bus error or timeout the next read does that again, since the chip may
    have been swapped or power-cycled, or be wedged in a state only a reset clears.
    """

    driver_name = "sht3x"
    quantities = QUANTITIES
    addresses = ADDRESSES
    address_rule = "an SHT3x answers only at 0x44 or 0x45 (ADDR strapping)"

    def __init__(
        self,
        bus: I2CBus,
        address: int = ADDRESS_DEFAULT,
        *,
        backend: BackendKind = BackendKind.REAL,
        clock: Clock = time.time,
        timer: Timer | None = None,
    ) -> None:
        super().__init__(bus, address, backend=backend, clock=clock, timer=timer)
        self._ready = False
        self._last_status: int | None = None

    @property
    def chip_status(self) -> int | None:
        """The status register as read at the last bring-up or `read_status`, None before."""
        return self._last_status

    def open(self) -> Self:
        """Soft-reset the chip and read its status; raises SensorMissingError, DataError, ..."""
        with self._lock:
            self._bring_up()
        return self

    def read_status(self) -> int:
        """The 16-bit status register (table 17), CRC checked; DataError on a mismatch."""
        with self._lock:
            return self._read_status()

    def _measure(self) -> Mapping[str, float]:
        with self._lock:
            try:
                if not self._ready:
                    self._bring_up()
                raw_t, raw_rh = self._single_shot(REPEATABILITY["high"])
            except OSError:
                # Missing, bus and timeout errors: reset before trusting the chip again.
                self._ready = False
                raise
        return convert(raw_t, raw_rh)

    def _bring_up(self) -> None:
        """Reset and read status. Bring-up follows an error or a first open, either of which may
        come right after power-up, so it first waits t_PU (1 ms), when the chip ignores I2C."""
        self._ready = False
        self._timer.sleep(POWER_UP_TIME)
        self._command(CMD_SOFT_RESET, "soft reset")
        self._timer.sleep(SOFT_RESET_TIME)
        self._read_status()
        self._ready = True

    def _read_status(self) -> int:
        self._command(CMD_READ_STATUS, "read status")
        with self._bus_errors("read status"):
            data = i2c_read(self._bus, self.address, STATUS_LENGTH)
        (status,) = unpack_words(data, f"{self._where()}: status")
        self._last_status = status
        return status

    def _single_shot(self, mode: Repeatability) -> tuple[int, int]:
        """Command one measurement, wait, read it; raw (S_T, S_RH).

        The first read comes after the typical duration, so usually no NACKed read is wasted;
        the wait is bounded by the maximum duration, measured from when the command returned,
        so bus latency only adds slack.
        """
        self._command(mode.command, "start measurement")
        deadline = self._timer.monotonic() + mode.maximum
        self._timer.sleep(mode.typical)
        what = f"{self._where()}: read measurement"
        while True:
            try:
                data = i2c_read(self._bus, self.address, MEASUREMENT_LENGTH)
                break
            except OSError as exc:
                if isinstance(exc, HardwareError) or exc.errno not in MISSING_ERRNOS:
                    raise translate_os_error(exc, what) from exc
                # NACK: the chip acknowledged the command, so it is measuring, not absent.
                if self._timer.monotonic() >= deadline:
                    raise SensorTimeoutError(
                        f"{what}: still busy {mode.maximum * 1000:.0f} ms after the command "
                        "(datasheet maximum)"
                    ) from exc
            self._timer.sleep(POLL_INTERVAL)
        raw_t, raw_rh = unpack_words(data, what)
        return raw_t, raw_rh

    def _command(self, command: int, what: str) -> None:
        with self._bus_errors(what):
            i2c_write(self._bus, self.address, (command >> 8, command & 0xFF))


def open_sht3x(
    bus: I2CBus,
    *,
    address: int = ADDRESS_DEFAULT,
    backend: BackendKind = BackendKind.REAL,
    clock: Clock = time.time,
    timer: Timer | None = None,
    options: Mapping[str, OptionValue] | None = None,
) -> SHT3x:
    """Construct and open an SHT3x: the registry's way in. It takes no options."""
    return SHT3x(bus, address, backend=backend, clock=clock, timer=timer).open()


# -- the emulator ----------------------------------------------------------------------------

DEFAULT_ENVIRONMENT: Final = {"temperature": 21.0, "humidity": 45.0}
"""What an emulator measures when given no signals: a mild room."""


@dataclass(slots=True)
class _Measurement:
    done_at: float
    words: tuple[int, int] | None
    """Raw (S_T, S_RH); None when a signal had no measurement (a dropout)."""


class SHT3xEmulator(I2CDevice):
    """An SHT3x at command level, measuring values from signal models.

    Modelled: the single-shot commands without clock stretching at the three repeatabilities,
    the chip NACKing every transfer while it measures or resets (as the datasheet's section
    4.5 describes for a read header sent too early), results read once and then gone (a second
    read is NACKed), CRCs on every word, the status register with its reset, heater and
    command-failed bits, soft reset and power-up times. Readings are the raw words nearest the
    physical values (inverse conversion), saturating at the scale ends like the chip. Not
    modelled: periodic mode, clock stretching, alerts, ART, the heater's effect.

    Signals are sampled on `clock` when a measurement starts; durations run on `timer`, which
    must be the driver's timer too. A NaN from a signal fails the read of that measurement
    with EIO.
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
        """`conversion_time` None means the datasheet's typical duration for the repeatability
        commanded; set it to model a slow or wedged chip. `options` are ignored."""
        self._signals = SignalInputs("sht3x", DEFAULT_ENVIRONMENT, signals)
        self._clock = clock
        self._timer: Timer = timer if timer is not None else RealTimer()
        self.conversion_time = conversion_time
        self.status = 0
        self._busy_until = 0.0
        self._measurement: _Measurement | None = None
        self._output: bytes | None = None
        self._lock = threading.RLock()
        self._reset(POWER_UP_TIME)

    def __repr__(self) -> str:
        return f"SHT3xEmulator(status={self.status:#06x})"

    def set_environment(
        self, *, temperature: float | None = None, humidity: float | None = None
    ) -> None:
        """Hold quantities at fixed values (°C, %RH) from the next measurement on."""
        with self._lock:
            if temperature is not None:
                self._signals.set("temperature", Constant(temperature))
            if humidity is not None:
                self._signals.set("humidity", Constant(humidity))

    def set_signal(self, quantity: str, model: SignalModel) -> None:
        with self._lock:
            self._signals.set(quantity, model)

    def power_on(self) -> None:
        with self._lock:
            self._reset(POWER_UP_TIME)

    # -- I2CDevice -----------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        with self._lock:
            now = self._timer.monotonic()
            self._check_awake(now)
            if len(data) != 2:
                # Not a command: the chip does not process it and flags that in its status.
                self.status |= STATUS_COMMAND_FAILED
                return
            command = (data[0] << 8) | data[1]
            self._output = None
            if command != CMD_READ_STATUS:  # reading status must not change what it reports
                self.status &= ~STATUS_COMMAND_FAILED
            mode = _BY_COMMAND.get(command)
            if mode is not None:
                duration = mode.typical if self.conversion_time is None else self.conversion_time
                self._measurement = _Measurement(now + duration, self._sample())
            elif command == CMD_SOFT_RESET:
                self._reset(SOFT_RESET_TIME)
            elif command == CMD_READ_STATUS:
                self._output = pack_words(self.status)
            elif command == CMD_CLEAR_STATUS:
                self.status &= ~_CLEARABLE
            elif command == CMD_HEATER_ON:
                self.status |= STATUS_HEATER_ON
            elif command == CMD_HEATER_OFF:
                self.status &= ~STATUS_HEATER_ON
            elif command != CMD_BREAK:
                self.status |= STATUS_COMMAND_FAILED

    def read(self, length: int) -> bytes:
        with self._lock:
            now = self._timer.monotonic()
            self._check_awake(now)
            measurement = self._measurement
            if measurement is not None:
                self._measurement = None
                if measurement.words is None:
                    raise dropout_error()
                self._output = pack_words(*measurement.words)
            if self._output is None:
                raise _nack()  # nothing to send: the read header is not acknowledged
            data, self._output = self._output, None
            # Past the end the chip lets SDA float high: the host reads 0xFF.
            return data[:length] + b"\xff" * max(0, length - len(data))

    # -- internals -----------------------------------------------------------------------------

    def _check_awake(self, now: float) -> None:
        """NACK while resetting, powering up or measuring: the chip ignores its address then."""
        if now < self._busy_until:
            raise _nack()
        if self._measurement is not None and now < self._measurement.done_at:
            raise _nack()

    def _reset(self, duration: float) -> None:
        self.status = STATUS_AFTER_RESET
        self._measurement = None
        self._output = None
        self._busy_until = self._timer.monotonic() + duration

    def _sample(self) -> tuple[int, int] | None:
        t = self._clock()
        # Sample every signal every time so each model's time line stays regular.
        celsius = self._signals["temperature"].sample(t)
        rh = self._signals["humidity"].sample(t)
        if math.isnan(celsius) or math.isnan(rh):  # a signal's "no measurement now"
            return None
        return raw_from_temperature(celsius), raw_from_humidity(rh)


def _nack() -> OSError:
    return OSError(NACK_ERRNO, os.strerror(NACK_ERRNO))


DRIVER: Final = i2c_driver(
    name="sht3x",
    quantities=QUANTITIES,
    default_address=ADDRESS_DEFAULT,
    addresses=ADDRESSES,
    description="Sensirion SHT3x (SHT30/31/35): temperature and relative humidity (I2C)",
    open_driver=open_sht3x,
    build_emulator=SHT3xEmulator,
)
