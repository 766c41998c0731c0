"""Bus faults: what FakeI2CBus can inject, and every registered I2C driver through each of them.

The first half checks the fake bus itself: plain transfers through smbus2's `i2c_msg`, command
devices beside register devices, and each injectable fault. The second half is a matrix: every
driver the registry lists as I2C, opened through `open_sensor` on an emulated back end, meets
every fault and must (1) raise the typed error the fault calls for, (2) show it in its status,
MISSING or FAULTED with a reason naming the chip, and (3) recover to OK on the next good read.
A new I2C driver gets these tests by registering itself; if its quantities use a new unit, add
a value for it to `VALUE_BY_UNIT`.
"""

from __future__ import annotations

import errno
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from smbus2 import i2c_msg

from edgetwin.hardware import EmulatedBackend, Health, list_drivers, open_sensor
from edgetwin.hardware.bus import (
    I2C_RDWR_MAX_MSGS,
    NACK_ERRNO,
    FakeI2CBus,
    I2CDevice,
    RegisterDevice,
    i2c_read,
    i2c_write,
)
from edgetwin.hardware.drivers import DriverInfo
from edgetwin.hardware.errors import (
    BusError,
    ChipIdError,
    DataError,
    HardwareError,
    SensorMissingError,
    SensorTimeoutError,
)
from edgetwin.hardware.sensor import Sensor
from edgetwin.hardware.timing import ManualClock

# -- fakes -----------------------------------------------------------------------------------


class Recorder(I2CDevice):
    """A command chip that records every write and answers reads from a queue."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.answers: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def read(self, length: int) -> bytes:
        answer = self.answers.pop(0) if self.answers else b""
        return (answer + b"\xff" * length)[:length]


class Memory(RegisterDevice):
    """256 bytes of auto-incrementing RAM."""

    def __init__(self) -> None:
        self.cells = bytearray(256)

    def read_register(self, reg: int) -> int:
        return self.cells[reg]

    def write_register(self, reg: int, value: int) -> None:
        self.cells[reg] = value


@pytest.fixture
def recorder(bus: FakeI2CBus) -> Recorder:
    device = Recorder()
    bus.attach(0x44, device)
    return device


@pytest.fixture
def memory(bus: FakeI2CBus) -> Memory:
    device = Memory()
    device.cells[0x10:0x14] = bytes([1, 2, 3, 4])
    bus.attach(0x50, device)
    return device


def _errno_of(call: Callable[[], object]) -> int | None:
    with pytest.raises(OSError) as info:
        call()
    return info.value.errno


# -- plain transfers -------------------------------------------------------------------------


def test_plain_write_and_read_reach_a_command_device(bus: FakeI2CBus, recorder: Recorder) -> None:
    i2c_write(bus, 0x44, [0x24, 0x00])
    recorder.answers.append(b"\x12\x34\x56")
    assert i2c_read(bus, 0x44, 3) == b"\x12\x34\x56"
    assert recorder.writes == [b"\x24\x00"]


def test_i2c_rdwr_fills_smbus2_read_messages_in_place(bus: FakeI2CBus, recorder: Recorder) -> None:
    recorder.answers.append(b"\xbe\xef")
    write, read = i2c_msg.write(0x44, [0xF3, 0x2D]), i2c_msg.read(0x44, 2)
    bus.i2c_rdwr(write, read)  # one combined transaction, repeated start in between
    assert bytes(read) == b"\xbe\xef"
    assert list(bytes(read)) == [0xBE, 0xEF]
    assert recorder.writes == [b"\xf3\x2d"]


def test_i2c_rdwr_on_a_register_device_is_pointer_then_read(
    bus: FakeI2CBus, memory: Memory
) -> None:
    read = i2c_msg.read(0x50, 3)
    bus.i2c_rdwr(i2c_msg.write(0x50, [0x11]), read)
    assert bytes(read) == bytes([2, 3, 4])
    bus.i2c_rdwr(i2c_msg.write(0x50, [0x20, 9, 8]))
    assert memory.cells[0x20:0x22] == bytes([9, 8])
    bus.i2c_rdwr(i2c_msg.write(0x50, []))  # an address-only write changes nothing
    assert bus.read_i2c_block_data(0x50, 0x20, 2) == [9, 8]


def test_smbus_calls_on_a_command_device_are_plain_transfers(
    bus: FakeI2CBus, recorder: Recorder
) -> None:
    bus.write_byte(0x44, 0x01)
    bus.write_byte_data(0x44, 0x30, 0xA2)
    bus.write_i2c_block_data(0x44, 0x24, [0x00])
    recorder.answers += [b"\x07", b"\x08\x09"]
    assert bus.read_byte(0x44) == 0x07
    assert bus.read_i2c_block_data(0x44, 0xE0, 2) == [0x08, 0x09]
    assert recorder.writes == [b"\x01", b"\x30\xa2", b"\x24\x00", b"\xe0"]


def test_a_failed_transaction_has_no_effect(bus: FakeI2CBus, memory: Memory) -> None:
    bus.inject_error(0x50, errno.EIO)
    assert _errno_of(lambda: bus.i2c_rdwr(i2c_msg.write(0x50, [0x10, 0xAA]))) == errno.EIO
    assert memory.cells[0x10] == 1
    # A transaction touching a missing address fails before its other messages run.
    missing = i2c_msg.write(0x51, [0x00])
    assert _errno_of(lambda: bus.i2c_rdwr(i2c_msg.write(0x50, [0x10, 0xBB]), missing)) == (
        errno.ENXIO
    )
    assert memory.cells[0x10] == 1


def test_i2c_rdwr_limits_like_i2c_dev(bus: FakeI2CBus, memory: Memory) -> None:
    too_many = [i2c_msg.read(0x50, 1)] * (I2C_RDWR_MAX_MSGS + 1)
    assert _errno_of(lambda: bus.i2c_rdwr(*too_many)) == errno.EINVAL
    assert _errno_of(bus.i2c_rdwr) == errno.EINVAL
    bus.close()
    assert _errno_of(lambda: bus.i2c_rdwr(i2c_msg.read(0x50, 1))) == errno.EBADF


# -- injected faults -------------------------------------------------------------------------


def test_nack_hits_the_next_transfers_with_the_pis_errno(
    bus: FakeI2CBus, recorder: Recorder
) -> None:
    assert NACK_ERRNO == errno.EREMOTEIO
    bus.inject_nack(0x44, count=2)
    for _ in range(2):
        assert _errno_of(lambda: i2c_write(bus, 0x44, [1, 2])) == errno.EREMOTEIO
    i2c_write(bus, 0x44, [1, 2])
    assert recorder.writes == [b"\x01\x02"]


def test_corruption_flips_the_next_bytes_read_only(bus: FakeI2CBus, memory: Memory) -> None:
    bus.corrupt_reads(0x50, count=3, mask=0x80)
    assert bus.read_i2c_block_data(0x50, 0x10, 2) == [0x81, 0x82]
    bus.write_byte_data(0x50, 0x30, 0x05)  # writes are not corrupted, nor do they count
    assert bus.read_byte_data(0x50, 0x30) == 0x85
    assert bus.read_i2c_block_data(0x50, 0x10, 2) == [1, 2]
    assert memory.cells[0x30] == 0x05


def test_corruption_reaches_plain_reads_too(bus: FakeI2CBus, recorder: Recorder) -> None:
    recorder.answers.append(b"\x00\x00")
    bus.corrupt_reads(0x44)
    assert i2c_read(bus, 0x44, 2) == b"\x01\x00"


def test_stuck_bits_last_until_cleared(bus: FakeI2CBus, memory: Memory) -> None:
    bus.stick_bits(0x50, or_mask=0xFF)
    assert bus.read_i2c_block_data(0x50, 0x10, 4) == [0xFF] * 4
    assert bus.read_byte(0x50) == 0xFF
    bus.stick_bits(0x50, and_mask=0xFE)
    assert bus.read_i2c_block_data(0x50, 0x10, 4) == [0, 2, 2, 4]
    bus.clear_faults(0x50)
    assert bus.read_i2c_block_data(0x50, 0x10, 4) == [1, 2, 3, 4]


def test_clear_faults_drops_pending_errors_but_not_an_unplug(
    bus: FakeI2CBus, memory: Memory
) -> None:
    bus.inject_error(0x50, errno.EIO, count=5)
    bus.corrupt_reads(0x50, count=5)
    bus.clear_faults(0x50)
    assert bus.read_byte_data(0x50, 0x10) == 1
    bus.unplug(0x50)
    bus.clear_faults(0x50)
    assert _errno_of(lambda: bus.read_byte_data(0x50, 0x10)) == errno.ENXIO


def test_faults_are_per_address_and_go_with_a_detached_device(
    bus: FakeI2CBus, memory: Memory, recorder: Recorder
) -> None:
    bus.stick_bits(0x44, or_mask=0xFF)
    assert bus.read_byte_data(0x50, 0x10) == 1
    bus.stick_bits(0x50, or_mask=0x0F)
    bus.detach(0x50)
    bus.attach(0x50, Memory())
    assert bus.read_byte_data(0x50, 0x10) == 0


@pytest.mark.parametrize(
    "inject",
    [
        lambda bus: bus.corrupt_reads(0x50, count=0),
        lambda bus: bus.corrupt_reads(0x50, mask=0),
        lambda bus: bus.corrupt_reads(0x50, mask=0x100),
        lambda bus: bus.stick_bits(0x50, and_mask=-1),
        lambda bus: bus.inject_nack(0x50, count=0),
    ],
)
def test_fault_arguments_are_checked(bus: FakeI2CBus, inject: Callable[[FakeI2CBus], None]) -> None:
    with pytest.raises(ValueError):
        inject(bus)


# -- every I2C driver through every fault ----------------------------------------------------

I2C_DRIVERS = [info for info in list_drivers() if info.interface == "i2c"]

VALUE_BY_UNIT = {"°C": 21.5, "%RH": 45.0, "hPa": 1000.0, "lx": 321.0, "V": 1.234}
"""A healthy constant for each unit, inside every registered chip's range."""

DATA_FAULTS = (DataError, ChipIdError, SensorTimeoutError)
"""What a chip reading all ones may look like to its driver: a failed CRC or plausibility
check, a wrong chip id, or a busy flag that never clears (the BME280's status bit 3)."""


class Switchable:
    """A constant signal that can drop out (NaN: no measurement now)."""

    def __init__(self, value: float) -> None:
        self.value = value
        self.dropping = False

    def sample(self, t: float) -> float:
        return math.nan if self.dropping else self.value


@dataclass
class Rig:
    info: DriverInfo
    backend: EmulatedBackend
    bus: FakeI2CBus
    address: int
    signals: dict[str, Switchable]
    sensor: Sensor

    def check_healthy(self) -> None:
        reading = self.sensor.read()
        assert self.sensor.status.health is Health.OK
        assert self.sensor.status.reason is None
        assert self.sensor.status.consecutive_errors == 0
        for name, measurement in reading.values.items():
            expected = self.signals[name].value
            assert measurement.value == pytest.approx(expected, abs=max(0.05, 2e-3 * expected))

    def check_failed(self, error: type[HardwareError] | tuple[type[HardwareError], ...]) -> None:
        with pytest.raises(error) as info:
            self.sensor.read()
        missing = isinstance(info.value, SensorMissingError)
        assert self.sensor.status.health is (Health.MISSING if missing else Health.FAULTED)
        assert self.sensor.status.reason is not None
        assert f"{self.info.name} at {self.address:#04x}" in self.sensor.status.reason


@pytest.fixture(params=I2C_DRIVERS, ids=lambda info: info.name)
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    info: DriverInfo = request.param
    missing_units = {q.unit for q in info.quantities} - set(VALUE_BY_UNIT)
    assert not missing_units, f"add a test value to VALUE_BY_UNIT for {missing_units}"
    signals = {q.name: Switchable(VALUE_BY_UNIT[q.unit]) for q in info.quantities}
    with EmulatedBackend(clock=ManualClock(), seed=11) as backend:
        sensor = open_sensor(info.name, backend=backend, signals=signals)
        assert info.default_address is not None
        rig = Rig(info, backend, backend.i2c_bus(1), info.default_address, signals, sensor)
        rig.check_healthy()
        yield rig


def test_registry_lists_the_i2c_drivers() -> None:
    assert {info.name for info in I2C_DRIVERS} >= {"bme280", "sht3x", "bh1750", "ads1115"}


def test_unplug_is_missing_until_replugged(rig: Rig) -> None:
    rig.bus.unplug(rig.address)
    for _ in range(2):
        rig.check_failed(SensorMissingError)
    assert rig.sensor.status.consecutive_errors == 2
    rig.bus.replug(rig.address)
    rig.check_healthy()


def test_nack_is_missing_then_recovers(rig: Rig) -> None:
    rig.bus.inject_nack(rig.address)
    rig.check_failed(SensorMissingError)
    rig.check_healthy()


def test_a_burst_of_nacks_counts_each_failed_read(rig: Rig) -> None:
    rig.bus.inject_nack(rig.address, count=3)
    for _ in range(3):
        rig.check_failed(SensorMissingError)
    assert rig.sensor.status.consecutive_errors == 3
    rig.check_healthy()


def test_eio_is_a_bus_error_then_recovers(rig: Rig) -> None:
    rig.bus.inject_error(rig.address, errno.EIO)
    rig.check_failed(BusError)
    rig.check_healthy()


def test_a_chip_stuck_at_all_ones_never_yields_a_reading(rig: Rig) -> None:
    rig.bus.stick_bits(rig.address, or_mask=0xFF)
    for _ in range(2):
        rig.check_failed(DATA_FAULTS)
    rig.bus.clear_faults(rig.address)
    rig.check_healthy()


def test_signal_dropout_is_a_bus_error_for_that_reading(rig: Rig) -> None:
    for signal in rig.signals.values():
        signal.dropping = True
    rig.check_failed(BusError)
    for signal in rig.signals.values():
        signal.dropping = False
    rig.check_healthy()


def test_corrupted_bytes_are_caught_or_pass_as_one_bad_reading(rig: Rig) -> None:
    # Only chips with a CRC or a read-back check can see a flipped bit; for the others it is a
    # wrong reading. Either way nothing but a typed error escapes, and the next read is clean.
    rig.bus.corrupt_reads(rig.address, count=64)
    caught: HardwareError | None = None
    try:
        rig.sensor.read()
    except HardwareError as exc:
        caught = exc
    if caught is not None:
        assert isinstance(caught, DataError), caught
        assert rig.sensor.status.health is Health.FAULTED
    rig.bus.clear_faults(rig.address)
    rig.check_healthy()
