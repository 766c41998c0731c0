"""Maxim DS18B20 1-Wire thermometer through the Linux w1-gpio / w1-therm sysfs interface.

With `dtoverlay=w1-gpio` (GPIO4 by default) the kernel's w1 core searches the bus and makes a
directory per device, /sys/bus/w1/devices/28-xxxxxxxxxxxx ("28" is the DS18B20's family code,
then the 48-bit serial). Reading its `w1_slave` file makes w1-therm run one conversion and read
the 9-byte scratchpad back (drivers/w1/slaves/w1_therm.c, w1_slave_show), and shows two lines:

    72 01 4b 46 7f ff 0e 10 57 : crc=57 YES
    72 01 4b 46 7f ff 0e 10 57 t=23125

the scratchpad as read, the CRC-8 the kernel computed over its first 8 bytes and whether it
matched byte 9; then the scratchpad again and the temperature in m°C. On a CRC failure the
second line shows the last scratchpad that passed (zeros if none did) while t= comes from the
failed one. The read blocks for the conversion: up to 750 ms at 12 bits (datasheet t_CONV),
real time that an agent's read loop pays for every DS18B20.

The driver parses both lines and trusts neither blindly: it recomputes the CRC itself, checks
the configuration register's fixed bits, converts the temperature from the scratchpad bytes
and checks that t= agrees. Section, table and figure names are those of the Maxim DS18B20
datasheet (19-7487).
"""

from __future__ import annotations

import errno
import math
import os
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Self

from edgetwin.hardware.backends import Backend, EmulatedBackend
from edgetwin.hardware.drivers import DriverInfo, Placement, refuse_signals_for_present
from edgetwin.hardware.errors import DataError, SensorMissingError, SensorSettingsError
from edgetwin.hardware.quantities import decimals_for, measured
from edgetwin.hardware.sensor import BackendKind, Clock, Sensor
from edgetwin.hardware.signals import Constant, SignalModel
from edgetwin.hardware.sysfs import FakeSysfsTree, SysfsDevice, SysfsTree

FAMILY: Final = 0x28
"""DS18B20's 1-Wire family code; DS18S20 (0x10), DS1822 (0x22) and DS1825 (0x3B) differ in
resolution or scratchpad layout and are not handled here."""

W1_DEVICES: Final = "bus/w1/devices"
"""Relative to the sysfs root: one entry per device the w1 master found, plus the master."""
W1_SLAVE: Final = "w1_slave"

DEVICE_ID: Final = re.compile(r"28-[0-9a-f]{12}")
EMULATED_DEVICE: Final = "28-000000000001"
"""The id an emulated back end gives a DS18B20 opened without a device id on an empty bus."""

SCRATCHPAD_LENGTH: Final = 9
RANGE_RAW: Final = (-55 * 16, 125 * 16)
"""-55..+125 °C ("Operation—Measuring Temperature") in 1/16 °C."""
POWER_ON_RAW: Final = 0x0550
"""85 °C: the temperature register's power-on reset value (table 1, "Temperature/Data
Relationship"). A reading of it means the sensor reset since its last conversion (a brown-out
on parasite power, a loose VDD) and is refused, at the price of losing a true reading of
exactly 85.0000 °C: genuine parts could be told apart by byte 6 (0x0C only at power-up), but
clones do not keep to that."""
POWER_ON_SCRATCHPAD: Final = bytes.fromhex("50054b467fff0c101c")
"""The scratchpad at power-up (the "Memory Map" figure): 85 °C, TH 75 °C, TL 70 °C, 12 bits,
and its CRC."""
CONFIG_FIXED_MASK: Final = 0x9F
CONFIG_FIXED_BITS: Final = 0x1F
"""The "Configuration Register" figure: bit 7 reads 0 and bits 0..4 read 1 on every DS18B20.
An all-zero scratchpad passes the CRC (CRC-8 of zeros is zero) but fails this: it is what a
sensor without VDD, or a data line stuck low, reads as."""
CONFIG_12_BIT: Final = 0x7F
TH_DEFAULT: Final = 0x4B
TL_DEFAULT: Final = 0x46

CONVERSION_TIME: Final = 0.75
"""Seconds, 12-bit t_CONV max: how long the kernel's read of w1_slave blocks."""

QUANTITIES: Final = (
    # The 12-bit register counts 1/16 °C.
    measured(
        "temperature", decimals=decimals_for(1 / 16), description="temperature of the DS18B20 probe"
    ),
)

_LINE_CRC: Final = re.compile(r"((?:[0-9a-f]{2} ){9}): crc=([0-9a-f]{2}) (YES|NO)")
_LINE_T: Final = re.compile(r"((?:[0-9a-f]{2} ){9})t=(-?[0-9]+)")


# -- pure functions ----------------------------------------------------------------------------


def crc8(data: bytes | Sequence[int]) -> int:
    """Dallas/Maxim 1-Wire CRC-8: x^8 + x^5 + x^4 + 1 (0x31), bits in reversed order (0x8C),
    initial value 0; the kernel's w1_calc_crc8 computes the same with a table. The CRC of the
    first 8 scratchpad bytes is byte 9 (datasheet "CRC generation"; Maxim application note 27).
    """
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8C if crc & 1 else crc >> 1
    return crc


def raw_temperature(scratchpad: bytes | Sequence[int]) -> int:
    """The temperature register, bytes 0 (LSB) and 1 (MSB): 1/16 °C, two's complement."""
    return int.from_bytes(bytes(scratchpad[:2]), "little", signed=True)


def kernel_millicelsius(raw: int) -> int:
    """What w1-therm prints as t= for a 12-bit register: `(int)t * 1000 / 16` in C, which
    truncates toward zero, so -0.0625 °C shows as t=-62 and 0.0625 °C as t=62."""
    scaled = raw * 1000
    quotient = abs(scaled) // 16
    return quotient if scaled >= 0 else -quotient


def scratchpad_for(celsius: float) -> bytes:
    """The scratchpad a DS18B20 at 12 bits holds after converting `celsius` (rounded to
    1/16 °C, clamped to the sensor's range), with TH/TL at their usual factory values.

    Byte 6 is "reserved" in the datasheet; genuine Maxim parts hold 0x0C there at power-up and
    0x10 - (LSB & 0x0F) after a conversion, a leftover of the DS18S20's COUNT_REMAIN.
    """
    raw = min(max(round(celsius * 16), RANGE_RAW[0]), RANGE_RAW[1])
    lsb, msb = (raw & 0xFFFF).to_bytes(2, "little")
    reserved = 0x10 - (lsb & 0x0F)
    body = bytes((lsb, msb, TH_DEFAULT, TL_DEFAULT, CONFIG_12_BIT, 0xFF, reserved, 0x10))
    return body + bytes((crc8(body),))


@dataclass(frozen=True, slots=True)
class W1SlaveReading:
    """The two lines of a w1_slave file, parsed but not yet judged."""

    scratchpad: bytes
    kernel_crc: int
    crc_ok: bool
    last_good: bytes
    millicelsius: int


def parse_w1_slave(text: str) -> W1SlaveReading:
    """Split a w1_slave file into its fields; DataError if it does not have w1-therm's format."""
    lines = text.splitlines()
    if len(lines) != 2:
        raise DataError(f"w1_slave should have 2 lines, got {len(lines)}: {text!r}")
    first = _LINE_CRC.fullmatch(lines[0].rstrip())
    second = _LINE_T.fullmatch(lines[1].rstrip())
    if first is None or second is None:
        raise DataError(f"w1_slave is not in w1-therm's format: {text!r}")
    return W1SlaveReading(
        scratchpad=bytes.fromhex(first.group(1)),
        kernel_crc=int(first.group(2), 16),
        crc_ok=first.group(3) == "YES",
        last_good=bytes.fromhex(second.group(1)),
        millicelsius=int(second.group(2)),
    )


def decode_w1_slave(text: str) -> float:
    """°C from a w1_slave file, or DataError saying what is wrong with it.

    Refused, in order: a malformed file; the kernel's CRC verdict NO; a CRC that does not
    check when recomputed here (a kernel that said YES wrongly, or a corrupted file); second
    line bytes that differ from the first; configuration bits no DS18B20 has (an all-zero
    scratchpad, which passes the CRC); t= disagreeing with the scratchpad; the 85 °C power-on
    reset value; a temperature outside -55..125 °C.
    """
    reading = parse_w1_slave(text)
    pad = reading.scratchpad
    if not reading.crc_ok:
        raise DataError(
            f"CRC check failed, the kernel reports crc={reading.kernel_crc:02x} NO for "
            f"scratchpad {pad.hex(' ')} (noise on the bus, a long cable, a weak pull-up)"
        )
    crc = crc8(pad[:8])
    if crc != pad[8] or crc != reading.kernel_crc:
        raise DataError(
            f"CRC-8 of {pad[:8].hex(' ')} is {crc:02x}, but the scratchpad says "
            f"{pad[8]:02x} and the kernel crc={reading.kernel_crc:02x} YES"
        )
    if reading.last_good != pad:
        raise DataError(
            f"w1_slave lines disagree: {pad.hex(' ')} then {reading.last_good.hex(' ')}"
        )
    config = pad[4]
    if config & CONFIG_FIXED_MASK != CONFIG_FIXED_BITS:
        raise DataError(
            f"configuration register {config:#04x} is not a DS18B20's (bits 0-4 must read 1, "
            "bit 7 must read 0): no VDD, a data line stuck low, or another device"
        )
    raw = raw_temperature(pad)
    if kernel_millicelsius(raw) != reading.millicelsius:
        raise DataError(
            f"t={reading.millicelsius} disagrees with scratchpad temperature {raw}/16 °C"
        )
    if raw == POWER_ON_RAW:
        raise DataError(
            "85 °C is the power-on reset value: the sensor reset before converting "
            "(parasite power too weak, loose VDD)"
        )
    if not RANGE_RAW[0] <= raw <= RANGE_RAW[1]:
        raise DataError(f"{raw / 16} °C is outside the DS18B20's -55..125 °C")
    return raw / 16


def check_device_id(device: str) -> str:
    """`device` if it names a DS18B20 (28-xxxxxxxxxxxx, as w1 names it), else a settings error."""
    if DEVICE_ID.fullmatch(device) is None:
        raise SensorSettingsError(
            f"ds18b20 device {device!r} is not a DS18B20 1-Wire id: expected '28-' and 12 "
            "lowercase hex digits, as listed in /sys/bus/w1/devices"
        )
    return device


def first_device(sysfs: SysfsTree) -> str | None:
    """The first DS18B20 id the w1 master lists, in sorted order; None when there is none.

    Raises SensorMissingError when there is no w1 bus at all.
    """
    try:
        names = sysfs.list(W1_DEVICES, what="ds18b20")
    except SensorMissingError as exc:
        raise SensorMissingError(
            errno.ENOENT,
            f"{exc.strerror}: no 1-Wire bus (add dtoverlay=w1-gpio to /boot/firmware/config.txt)",
        ) from exc
    return next((name for name in names if DEVICE_ID.fullmatch(name)), None)


# -- the driver --------------------------------------------------------------------------------


class DS18B20(Sensor):
    """One DS18B20 read through sysfs: `device` is its id, or None for the first one found.

    The constructor does not touch sysfs; `open()` (or the first read) settles the device id
    and checks that its directory exists. Once settled the id never changes, so a second probe
    plugged in later cannot silently take over the readings.
    """

    driver_name = "ds18b20"
    quantities = QUANTITIES

    def __init__(
        self,
        sysfs: SysfsTree,
        device: str | None = None,
        *,
        backend: BackendKind = BackendKind.REAL,
        clock: Clock = time.time,
    ) -> None:
        super().__init__(backend, clock)
        self.sysfs = sysfs
        self.device = None if device is None else check_device_id(device)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"DS18B20(device={self.device!r}, backend={self.status.backend.value})"

    def open(self) -> Self:
        """Settle the device id; SensorMissingError if no such device is on the bus."""
        with self._lock:
            device = self._settle()
            self.sysfs.list(f"{W1_DEVICES}/{device}", what=self._where())
        return self

    def _settle(self) -> str:
        if self.device is None:
            found = first_device(self.sysfs)
            if found is None:
                raise SensorMissingError(
                    errno.ENODEV,
                    f"ds18b20: no 28-* device under {self.sysfs.path(W1_DEVICES)} "
                    "(check the wiring and the 4.7 kΩ pull-up on DQ)",
                )
            self.device = found
        return self.device

    def _measure(self) -> Mapping[str, float]:
        with self._lock:
            device = self._settle()
            text = self.sysfs.read_text(f"{W1_DEVICES}/{device}/{W1_SLAVE}", what=self._where())
        try:
            return {"temperature": decode_w1_slave(text)}
        except DataError as exc:
            raise DataError(f"{self._where()}: {exc}") from exc

    def _where(self) -> str:
        return f"ds18b20 {self.device or '(not found yet)'}"


# -- the emulator ------------------------------------------------------------------------------


class DS18B20Emulator(SysfsDevice):
    """A DS18B20 as w1-therm shows it: `w1_slave` rendered from the "temperature" signal.

    Every read is a conversion of the signal at that instant (`clock`), at 12 bits, with a
    correct CRC and the kernel's two-line format. Faults: `inject_crc_error` (a bit flipped on
    the wire: crc NO, second line from the last good read), `inject_power_on_reset` (the 85 °C
    power-up scratchpad) and, through the tree, `unplug` (the directory disappears). A NaN
    sample fails the read with EIO.
    """

    def __init__(
        self,
        device: str = EMULATED_DEVICE,
        *,
        signals: Mapping[str, SignalModel] | None = None,
        clock: Clock = time.time,
    ) -> None:
        unknown = set(signals or {}) - {"temperature"}
        if unknown:
            raise ValueError(f"ds18b20 emulator has no quantity {sorted(unknown)}")
        self.device = check_device_id(device)
        self.signal: SignalModel = (signals or {}).get("temperature", Constant(21.0))
        self.clock = clock
        self._last_good = bytes(SCRATCHPAD_LENGTH)  # w1-therm's family_data starts zeroed
        self._crc_errors = 0
        self._resets = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"DS18B20Emulator({self.device!r})"

    def set_signal(self, model: SignalModel) -> None:
        with self._lock:
            self.signal = model

    def inject_crc_error(self, count: int = 1) -> None:
        """Corrupt the next `count` reads on the wire: the kernel reports crc NO."""
        with self._lock:
            self._crc_errors += count

    def inject_power_on_reset(self, count: int = 1) -> None:
        """The next `count` reads find the power-up scratchpad (85 °C), as after a brown-out."""
        with self._lock:
            self._resets += count

    def file_names(self) -> tuple[str, ...]:
        return (W1_SLAVE, "name")

    def render(self, name: str) -> str:
        if name == "name":
            return f"{self.device}\n"
        with self._lock:
            celsius = self.signal.sample(self.clock())
            if math.isnan(celsius):
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            if self._resets:
                self._resets -= 1
                pad = POWER_ON_SCRATCHPAD
            else:
                pad = scratchpad_for(celsius)
            if self._crc_errors:
                self._crc_errors -= 1
                pad = bytes((pad[0] ^ 0x04,)) + pad[1:]  # one bit flipped in transit
            crc = crc8(pad[:8])
            ok = crc == pad[8]
            if ok:
                self._last_good = pad
            return (
                f"{_hex(pad)} : crc={crc:02x} {'YES' if ok else 'NO'}\n"
                f"{_hex(self._last_good)} t={kernel_millicelsius(raw_temperature(pad))}\n"
            )


def _hex(data: bytes) -> str:
    return " ".join(f"{byte:02x}" for byte in data)


def _attach_emulator(
    tree: FakeSysfsTree,
    device: str | None,
    signals: Mapping[str, SignalModel],
    signals_given: bool,
    clock: Clock,
) -> str:
    """Put a DS18B20 emulator on the emulated w1 bus unless one is at `device` already."""
    tree.write_text(f"{W1_DEVICES}/w1_bus_master1/w1_master_name", "w1_bus_master1\n")
    if device is None:
        device = first_device(tree) or EMULATED_DEVICE
    directory = f"{W1_DEVICES}/{device}"
    refuse_signals_for_present(tree.device_at(directory), directory, signals_given)
    tree.attach_if_free(directory, lambda: DS18B20Emulator(device, signals=signals, clock=clock))
    return device


def open_ds18b20(
    backend: Backend,
    placement: Placement,
    *,
    signals: Mapping[str, SignalModel],
    signals_given: bool,
) -> Sensor:
    """Open the DS18B20 `placement.device`, or the first one on the bus when it is None."""
    device = placement.device
    if device is not None:
        check_device_id(device)
    if isinstance(backend, EmulatedBackend):
        device = _attach_emulator(backend.sysfs, device, signals, signals_given, backend.clock)
    sensor = DS18B20(backend.sysfs, device, backend=backend.kind, clock=backend.clock)
    return sensor.open()


DRIVER: Final = DriverInfo(
    name="ds18b20",
    interface="sysfs",
    quantities=QUANTITIES,
    description="Maxim DS18B20 1-Wire thermometer (Linux w1-therm sysfs)",
    open=open_ds18b20,
    default_device=None,
)
