"""NXP PCA9685 16-channel, 12-bit PWM controller on I2C (one output per channel), and its
register-level emulator.

Section references are to the NXP PCA9685 product data sheet (7.3.1.1 "Restart mode", 7.3.5
"PWM frequency PRE_SCALE"); "register summary" is its table of registers. Every
channel runs one 12-bit counter at the frequency set by PRE_SCALE: the output goes on when the
counter reaches LEDn_ON and off when it reaches LEDn_OFF, so the duty is (OFF - ON) / 4096;
bit 4 of LEDn_ON_H is "full on", bit 4 of LEDn_OFF_H "full off" (which wins over full on).

The frequency is the chip's, not the channel's (7.3.5): PRE_SCALE can only be written while the
oscillator sleeps (MODE1 SLEEP), and after waking the oscillator needs 500 µs before RESTART may
be written (7.3.1.1). Opening a channel at a frequency the chip does not run at re-programs the
chip, and so every channel on it: give all channels of one chip the same frequency.

The chip keeps its registers while powered, whatever happens to the host: `close()` leaves the
channel at its safe value and the chip running, so the load stays safe after the agent stops
or crashes. At power-up every channel is full off (LEDn_OFF_H = 0x10 in the register summary)
and the chip asleep; a host that never comes back leaves a power-cycled board off.
"""

from __future__ import annotations

import errno
import math
import os
import threading
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, ClassVar, Final, Self

from edgetwin.hardware.bus import (
    NACK_ERRNO,
    NO_DEVICE_ERRNO,
    I2CBus,
    I2CDevice,
    RegisterDevice,
    bus_errors,
)
from edgetwin.hardware.drivers import OptionValue
from edgetwin.hardware.errors import DataError, OutputSettingsError
from edgetwin.hardware.output import (
    Output,
    OutputDriverInfo,
    OutputKind,
    OutputOptions,
    OutputPlacement,
    OutputSpec,
    ValueRange,
)
from edgetwin.hardware.sensor import BackendKind
from edgetwin.hardware.timing import RealTimer, Timer

if TYPE_CHECKING:
    from edgetwin.hardware.backends import Backend

# -- addresses and registers (the register summary) ---------------------------------------------

DEFAULT_ADDRESS: Final = 0x40
"""A5..A0 all low: how every breakout ships."""
ALL_CALL_ADDRESS: Final = 0x70
"""The LED All Call address at power-up (ALLCALLADR 0xE0 >> 1), answered by every PCA9685 on the
bus while MODE1 ALLCALL is set, which it is at power-up."""
ADDRESSES: Final = tuple(a for a in range(0x40, 0x80) if a != ALL_CALL_ADDRESS)
"""Six address pins give 0x40..0x7F; 0x70 is every chip's All Call address at power-up, so a
chip strapped there would be written by every other one's traffic."""

MODE1: Final = 0x00
MODE2: Final = 0x01
SUBADR1: Final = 0x02
SUBADR2: Final = 0x03
SUBADR3: Final = 0x04
ALLCALLADR: Final = 0x05
LED0_ON_L: Final = 0x06
"""LEDn_ON_L, LEDn_ON_H, LEDn_OFF_L, LEDn_OFF_H at 0x06 + 4n."""
LED15_OFF_H: Final = 0x45
ALL_LED_ON_L: Final = 0xFA
ALL_LED_OFF_H: Final = 0xFD
PRE_SCALE: Final = 0xFE
TEST_MODE: Final = 0xFF

CHANNELS: Final = 16

# MODE1 bits
RESTART: Final = 0x80
EXTCLK: Final = 0x40
AI: Final = 0x20
"""Auto-increment: the register pointer moves on after each byte of a transfer."""
SLEEP: Final = 0x10
"""Oscillator off: no PWM, PRE_SCALE writable."""
ALLCALL: Final = 0x01

# MODE2 bits
INVRT: Final = 0x10
OUTDRV: Final = 0x04

FULL: Final = 0x10
"""Bit 4 of LEDn_ON_H (full on) and of LEDn_OFF_H (full off)."""

POWER_ON_REGISTERS: Final = {
    MODE1: SLEEP | ALLCALL,
    MODE2: OUTDRV,
    SUBADR1: 0xE2,
    SUBADR2: 0xE4,
    SUBADR3: 0xE8,
    ALLCALLADR: 0xE0,
    PRE_SCALE: 0x1E,
    **{LED0_ON_L + 4 * n + 3: FULL for n in range(CHANNELS)},
}
"""The register summary's reset values that are not zero: asleep, every channel full off,
PRE_SCALE 30."""

OSCILLATOR: Final = 25_000_000.0
"""Hz; the internal oscillator (7.3.5). EXTCLK is not supported here."""
COUNTS: Final = 4096
PRESCALE_MIN: Final = 3
"""7.3.5: "The hardware forces a minimum value that can be loaded into the PRE_SCALE register
at '3'"."""
PRESCALE_MAX: Final = 255
FREQUENCY_MIN: Final = 24.0
FREQUENCY_MAX: Final = 1526.0
"""Hz; the data sheet's range (24 Hz to 1526 Hz), PRE_SCALE 253 to 3."""
DEFAULT_FREQUENCY: Final = 200.0
"""Hz; what the data sheet gives for the power-up PRE_SCALE 0x1E (196.9 Hz by 7.3.5's formula), so
opening a channel at the default never re-programs a fresh chip."""
OSCILLATOR_START: Final = 500e-6
"""s; 7.3.1.1: SLEEP must be 0 for at least 500 µs before RESTART is written."""

DUTY_STEP: Final = 1.0 / COUNTS
VALUE_RANGE: Final = ValueRange(
    0.0, 1.0, "1", step=DUTY_STEP, description="duty cycle in 4096 steps: 0 full off, 1 full on"
)


# -- pure functions ------------------------------------------------------------------------------


def prescale_for(frequency: float) -> int:
    """PRE_SCALE for a PWM `frequency` in Hz (7.3.5): round(25 MHz / (4096 × f)) - 1.

    The data sheet's example: 200 Hz gives 30 (0x1E). ValueError outside 24..1526 Hz.
    """
    if math.isnan(frequency) or not FREQUENCY_MIN <= frequency <= FREQUENCY_MAX:
        raise ValueError(
            f"a PCA9685 runs at {FREQUENCY_MIN:g}..{FREQUENCY_MAX:g} Hz, not {frequency!r}"
        )
    return math.floor(OSCILLATOR / (COUNTS * frequency) + 0.5) - 1


def frequency_for(prescale: int) -> float:
    """The PWM frequency in Hz the chip runs at with `prescale` in PRE_SCALE."""
    return OSCILLATOR / (COUNTS * (prescale + 1))


def counts_for(duty: float) -> int:
    """The 12-bit on-time for `duty` in 0..1, rounded half up: 0 is full off, 4096 full on."""
    return math.floor(duty * COUNTS + 0.5)


def duty_registers(duty: float) -> tuple[int, int, int, int]:
    """LEDn_ON_L, LEDn_ON_H, LEDn_OFF_L, LEDn_OFF_H for `duty` (0..1).

    Every channel switches on at count 0 and off after its on-time; 0 and 1 use the full-off
    and full-on bits, because no ON/OFF pair gives a constant level (OFF = 4096 does not fit
    in 12 bits).
    """
    counts = counts_for(duty)
    if counts <= 0:
        return (0, 0, 0, FULL)
    if counts >= COUNTS:
        return (0, FULL, 0, 0)
    return (0, 0, counts & 0xFF, counts >> 8)


def duty_from_registers(on_l: int, on_h: int, off_l: int, off_h: int) -> float:
    """The duty a channel's four registers describe, with the chip running (full off
    wins over full on; otherwise on from count ON to count OFF, wrapping past 4095)."""
    if off_h & FULL:
        return 0.0
    if on_h & FULL:
        return 1.0
    on = ((on_h & 0x0F) << 8) | on_l
    off = ((off_h & 0x0F) << 8) | off_l
    return ((off - on) % COUNTS) / COUNTS


def quantised(duty: float) -> float:
    """The duty actually applied for `duty`: the nearest of 0, 1/4096, ..., 4095/4096, 1."""
    return min(counts_for(duty), COUNTS) / COUNTS


def pca9685_spec(options: Mapping[str, OptionValue]) -> OutputSpec:
    parsed = OutputOptions("pca9685", options)
    frequency = parsed.number("frequency", DEFAULT_FREQUENCY, lo=FREQUENCY_MIN, hi=FREQUENCY_MAX)
    safe = parsed.safe_value(VALUE_RANGE, 0.0)
    parsed.check_all_read()
    return OutputSpec(VALUE_RANGE, safe, {"frequency": frequency, "safe_value": safe})


# -- the driver ----------------------------------------------------------------------------------


class PCA9685Output(Output):
    """One channel of a PCA9685 on an injected I2C bus (an smbus2 `SMBus` on a Pi).

    `open()` brings the chip up (PRE_SCALE for the frequency while asleep, wake, wait for the
    oscillator, RESTART only if the chip says it is held, auto-increment on) and sets the
    channel to its safe value. A duty is one four-byte block write to the channel's registers,
    which the chip takes at the STOP (MODE2 OCH = 0), so the output never shows half a value.
    """

    driver_name = "pca9685"
    kind = OutputKind.PWM

    _chip_lock: ClassVar[threading.Lock] = threading.Lock()
    """Taken around every sequence of transfers, for every chip: the bring-up of one channel
    sleeps and wakes the whole chip, which another channel's write must not interleave with."""

    def __init__(
        self,
        bus: I2CBus,
        address: int = DEFAULT_ADDRESS,
        channel: int = 0,
        *,
        frequency: float = DEFAULT_FREQUENCY,
        safe_value: float = 0.0,
        backend: BackendKind = BackendKind.REAL,
        timer: Timer | None = None,
        name: str | None = None,
    ) -> None:
        if address not in ADDRESSES:
            raise OutputSettingsError(
                f"a PCA9685 answers at 0x40..0x7f except 0x70, not {address:#04x}"
            )
        if isinstance(channel, bool) or not isinstance(channel, int) or not 0 <= channel < 16:
            raise OutputSettingsError(f"a PCA9685 has channels 0..15, not {channel!r}")
        spec = pca9685_spec({"frequency": frequency, "safe_value": safe_value})
        super().__init__(
            value_range=spec.value_range,
            safe_value=spec.safe_value,
            backend=backend,
            name=name or f"pca9685 at {address:#04x} channel {channel}",
        )
        self.address = address
        self.channel = channel
        self.frequency = frequency
        self.prescale = prescale_for(frequency)
        self._bus = bus
        self._timer: Timer = timer if timer is not None else RealTimer()

    def open(self) -> Self:
        """Bring the chip up at this channel's frequency and set the channel to its safe value.

        Raises SensorMissingError when nothing answers, BusError on a failed transfer and
        DataError when the chip does not take the PRE_SCALE it was given (not a PCA9685).
        """
        with self._lock, self._chip_lock:
            self._bring_up()
            self.applied = self._write_locked(self.safe_value)
        return self

    def read_frequency(self) -> float:
        """The PWM frequency the chip runs at now, in Hz, from its PRE_SCALE."""
        with self._lock, self._chip_lock, self._bus_errors("read PRE_SCALE"):
            self._check_open()
            return frequency_for(self._bus.read_byte_data(self.address, PRE_SCALE))

    def _bring_up(self) -> None:
        with self._bus_errors("bring up"):
            mode1 = self._bus.read_byte_data(self.address, MODE1)
            # RESTART is written as 0 below unless meant: writing 0 leaves it as it is, writing 1
            # while it is set restarts the held channels.
            mode1 &= ~RESTART
            asleep = bool(mode1 & SLEEP)
            if self._bus.read_byte_data(self.address, PRE_SCALE) != self.prescale:
                if not asleep:
                    self._bus.write_byte_data(self.address, MODE1, mode1 | SLEEP)
                    asleep = True
                self._bus.write_byte_data(self.address, PRE_SCALE, self.prescale)
            if asleep:
                awake = (mode1 & ~SLEEP) | AI
                self._bus.write_byte_data(self.address, MODE1, awake)
                self._timer.sleep(OSCILLATOR_START)
                # Only a chip put to sleep with channels running sets RESTART; writing 1
                # otherwise is no restart at all (the Zephyr driver once assumed it always was).
                if self._bus.read_byte_data(self.address, MODE1) & RESTART:
                    self._bus.write_byte_data(self.address, MODE1, awake | RESTART)
            elif not mode1 & AI:
                self._bus.write_byte_data(self.address, MODE1, mode1 | AI)
            prescale = self._bus.read_byte_data(self.address, PRE_SCALE)
        if prescale != self.prescale:
            raise DataError(
                f"{self.name}: PRE_SCALE reads {prescale} after writing {self.prescale}: "
                "not a PCA9685, or it ignored the write"
            )

    def _write(self, value: float) -> float:
        with self._chip_lock:
            return self._write_locked(value)

    def _write_locked(self, value: float) -> float:
        registers = duty_registers(value)
        with self._bus_errors("read MODE1"):
            mode1 = self._bus.read_byte_data(self.address, MODE1)
        if mode1 & SLEEP or not mode1 & AI:
            # Asleep without auto-increment is the power-up state: the chip lost power since
            # it was opened (a brown-out, a board re-plugged). Without AI the block write
            # below would put all four bytes into LEDn_ON_L, so bring it up again first.
            self._bring_up()
        with self._bus_errors("write duty"):
            self._bus.write_i2c_block_data(self.address, self._base(), list(registers))
        return quantised(value)

    def _read(self) -> float:
        with self._chip_lock, self._bus_errors("read duty"):
            # Byte reads, not a block: they do not depend on the chip's auto-increment.
            mode1 = self._bus.read_byte_data(self.address, MODE1)
            mode2 = self._bus.read_byte_data(self.address, MODE2)
            registers = [self._bus.read_byte_data(self.address, self._base() + i) for i in range(4)]
        if mode1 & (SLEEP | RESTART):
            return 0.0  # oscillator off, or channels held until a restart: nothing runs
        duty = duty_from_registers(*registers)
        return 1.0 - duty if mode2 & INVRT else duty

    def _release(self) -> None:
        """Nothing to let go of: the chip keeps the channel at its safe value, running."""

    def _base(self) -> int:
        return LED0_ON_L + 4 * self.channel

    def _bus_errors(self, what: str) -> AbstractContextManager[None]:
        return bus_errors(f"{self.name}: {what}")


# -- the emulator --------------------------------------------------------------------------------


class PCA9685Emulator(RegisterDevice):
    """A PCA9685 at register level, for the driver to talk to through a fake bus.

    Modelled: the register file with its power-up values; auto-increment (MODE1 AI), rolling
    over from LED15_OFF_H and from PRE_SCALE to MODE1 as the register summary's remark says,
    and without AI a block landing on one register; PRE_SCALE writable only while asleep, and
    never below 3; SLEEP setting RESTART when channels were running, RESTART taking a written
    1 only when set and 500 µs (on `timer`) after waking, and cleared by any write to a PWM
    register; the ALL_LED registers loading every channel and reading 0; reserved registers
    not acknowledged; INVRT; the All Call address through `all_call_port()`.

    Not modelled: EXTCLK, the OE pin and OUTNE, OCH = 1 (outputs change on ACK), sub-addresses,
    the software reset, timing within a PWM period. Two modelling choices where the data sheet
    says nothing: while asleep, or held for a restart, every output is low (the counter does
    not run); a channel whose ON and OFF counts are equal is off.
    """

    def __init__(self, *, timer: Timer | None = None) -> None:
        self._timer: Timer = timer if timer is not None else RealTimer()
        self._lock = threading.RLock()
        self._registers = bytearray(256)
        self._awake_since: float | None = None
        self.power_on()

    def __repr__(self) -> str:
        return (
            f"PCA9685Emulator(mode1={self.mode1:#04x}, prescale={self.prescale}, "
            f"asleep={self.asleep})"
        )

    def power_on(self) -> None:
        with self._lock:
            self._registers[:] = bytes(256)
            for register, value in POWER_ON_REGISTERS.items():
                self._registers[register] = value
            self._awake_since = None
            self._pointer = 0

    # -- what a test looks at ------------------------------------------------------------------

    @property
    def mode1(self) -> int:
        return self._registers[MODE1]

    @property
    def asleep(self) -> bool:
        return bool(self.mode1 & SLEEP)

    @property
    def prescale(self) -> int:
        return self._registers[PRE_SCALE]

    @property
    def frequency(self) -> float:
        return frequency_for(self.prescale)

    def channel_registers(self, channel: int) -> tuple[int, int, int, int]:
        base = LED0_ON_L + 4 * channel
        with self._lock:
            return tuple(self._registers[base : base + 4])  # type: ignore[return-value]

    def output_duty(self, channel: int) -> float:
        """The fraction of each period pin LEDn is high now: what the load on it gets."""
        with self._lock:
            if self.mode1 & (SLEEP | RESTART):
                duty = 0.0
            else:
                on_l, on_h, off_l, off_h = self.channel_registers(channel)
                if off_h & FULL:
                    duty = 0.0
                elif on_h & FULL:
                    duty = 1.0
                else:
                    # The counter runs 0..4095; the pin is high from count ON up to count OFF.
                    on = (on_h & 0x0F) << 8 | on_l
                    off = (off_h & 0x0F) << 8 | off_l
                    high = off - on if off >= on else COUNTS - on + off
                    duty = high / COUNTS
            return 1.0 - duty if self._registers[MODE2] & INVRT else duty

    def all_call_port(self) -> I2CDevice:
        """This chip as seen at its All Call address (ALLCALLADR >> 1, 0x70 at power-up):
        attach it there on the fake bus. It takes writes while MODE1 ALLCALL is set and is not
        acknowledged otherwise; reads through it are not acknowledged (write-only here)."""
        return _AllCallPort(self)

    # -- RegisterDevice ------------------------------------------------------------------------

    def read_register(self, reg: int) -> int:
        with self._lock:
            self._acknowledge(reg)
            if ALL_LED_ON_L <= reg <= ALL_LED_OFF_H:
                return 0  # the register summary: "write/read zero"
            return self._registers[reg]

    def write_register(self, reg: int, value: int) -> None:
        with self._lock:
            self._acknowledge(reg)
            if reg == MODE1:
                self._write_mode1(value)
            elif reg == PRE_SCALE:
                if self.asleep:  # "writes to PRE_SCALE are blocked when SLEEP is 0"
                    self._registers[PRE_SCALE] = max(value, PRESCALE_MIN)
            elif LED0_ON_L <= reg <= LED15_OFF_H:
                self._registers[reg] = value
                self._registers[MODE1] &= ~RESTART
            elif ALL_LED_ON_L <= reg <= ALL_LED_OFF_H:
                offset = reg - ALL_LED_ON_L
                for channel in range(CHANNELS):
                    self._registers[LED0_ON_L + 4 * channel + offset] = value
                self._registers[MODE1] &= ~RESTART
            elif reg == TEST_MODE:
                pass  # "may cause unpredictable results": the model stays predictable
            else:
                self._registers[reg] = value

    def read_block(self, reg: int, length: int) -> list[int]:
        with self._lock:
            values = []
            for _ in range(length):
                values.append(self.read_register(reg))
                reg = self._next(reg)
            self._pointer = reg
            return values

    def write_block(self, reg: int, data: Sequence[int]) -> None:
        with self._lock:
            for value in data:
                self.write_register(reg, value)
                reg = self._next(reg)
            self._pointer = reg

    def read_next(self) -> int:
        with self._lock:
            value = self.read_register(self._pointer)
            self._pointer = self._next(self._pointer)
            return value

    # -- internals -----------------------------------------------------------------------------

    def _next(self, reg: int) -> int:
        if not self.mode1 & AI:
            return reg
        if reg in (LED15_OFF_H, PRE_SCALE, TEST_MODE):
            return MODE1
        return (reg + 1) & 0xFF

    @staticmethod
    def _acknowledge(reg: int) -> None:
        if LED15_OFF_H < reg < ALL_LED_ON_L:
            raise OSError(NACK_ERRNO, f"PCA9685 register {reg:#04x} is reserved")

    def _write_mode1(self, value: int) -> None:
        old = self.mode1
        now = self._timer.monotonic()
        new = (value & ~RESTART) | (old & RESTART)
        if not old & SLEEP and value & SLEEP:
            if any(self.output_duty(channel) > 0 for channel in range(CHANNELS)):
                new |= RESTART  # 7.3.1.1: set at the end of the PWM cycle it was running
            self._awake_since = None
        elif old & SLEEP and not value & SLEEP:
            self._awake_since = now
        elif (
            value & RESTART
            and old & RESTART
            and not value & SLEEP
            and self._awake_since is not None
            and now - self._awake_since >= OSCILLATOR_START
        ):
            new &= ~RESTART
        self._registers[MODE1] = new


class _AllCallPort(I2CDevice):
    def __init__(self, chip: PCA9685Emulator) -> None:
        self.chip = chip

    def write(self, data: bytes) -> None:
        if not self.chip.mode1 & ALLCALL:
            raise OSError(NO_DEVICE_ERRNO, os.strerror(NO_DEVICE_ERRNO))
        self.chip.write(data)

    def read(self, length: int) -> bytes:
        raise OSError(errno.EREMOTEIO, "PCA9685 All Call address: reads not acknowledged")


# -- opening through the registry ----------------------------------------------------------------


def open_pca9685(
    backend: Backend, placement: OutputPlacement, *, name: str | None
) -> PCA9685Output:
    """Open channel `placement.channel` of the PCA9685 at `placement.address` (0x40 default)
    on I2C bus `placement.bus`; options "frequency" (Hz) and "safe_value".

    On an emulated back end a `PCA9685Emulator` is attached at the address unless a device is
    there already (another channel of the same chip, or one a test put in place).
    """
    from edgetwin.hardware.backends import EmulatedBackend

    spec = pca9685_spec(placement.options)
    address = DEFAULT_ADDRESS if placement.address is None else placement.address
    if placement.pin is not None:
        raise OutputSettingsError("pca9685 is an I2C output and takes no GPIO pin")
    if placement.channel is None:
        raise OutputSettingsError("pca9685 needs its channel, 0..15")
    if address not in ADDRESSES:
        raise OutputSettingsError(
            f"pca9685 cannot be at {address:#04x}; valid addresses: 0x40..0x7f except 0x70"
        )
    bus: I2CBus
    if isinstance(backend, EmulatedBackend):
        fake = backend.i2c_bus(placement.bus)
        fake.attach_if_free(address, lambda: PCA9685Emulator(timer=backend.timer))
        bus = fake
    else:
        bus = backend.i2c_bus(placement.bus)
    output = PCA9685Output(
        bus,
        address,
        placement.channel,
        frequency=float(spec.settings["frequency"]),
        safe_value=spec.safe_value,
        backend=backend.kind,
        timer=backend.timer,
        name=name,
    )
    return output.open()


DRIVER: Final = OutputDriverInfo(
    name="pca9685",
    kind=OutputKind.PWM,
    interface="i2c",
    description="NXP PCA9685: 16 PWM channels, 12-bit duty, 24..1526 Hz (I2C)",
    value_range=VALUE_RANGE,
    default_safe_value=0.0,
    options=("frequency", "safe_value"),
    spec=pca9685_spec,
    open=open_pca9685,
    default_address=DEFAULT_ADDRESS,
    addresses=ADDRESSES,
    channels=CHANNELS,
)
