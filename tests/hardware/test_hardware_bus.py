"""FakeI2CBus behaves like Linux i2c-dev; OSError is translated once at the driver edge."""

from __future__ import annotations

import errno
import threading

import pytest

from edgetwin.hardware.bus import (
    MISSING_ERRNOS,
    NO_DEVICE_ERRNO,
    FakeI2CBus,
    RegisterDevice,
    bus_errors,
    translate_os_error,
)
from edgetwin.hardware.errors import BusError, DataError, HardwareError, SensorMissingError


class Memory(RegisterDevice):
    """256 bytes of RAM behind an I2C address, auto-incrementing like an EEPROM."""

    def __init__(self) -> None:
        self.cells = bytearray(256)
        self.power_cycles = 0

    def read_register(self, reg: int) -> int:
        return self.cells[reg]

    def write_register(self, reg: int, value: int) -> None:
        self.cells[reg] = value

    def power_on(self) -> None:
        self.power_cycles += 1
        self.cells[:] = bytes(256)


@pytest.fixture
def memory(bus: FakeI2CBus) -> Memory:
    device = Memory()
    bus.attach(0x50, device)
    return device


def _errno_of(call: object) -> int | None:
    assert callable(call)
    with pytest.raises(OSError) as info:
        call()
    return info.value.errno


# -- transfers -------------------------------------------------------------------------------


def test_byte_data_and_block_transfers(bus: FakeI2CBus, memory: Memory) -> None:
    bus.write_byte_data(0x50, 0x10, 0xAB)
    bus.write_i2c_block_data(0x50, 0x20, [1, 2, 3])
    assert bus.read_byte_data(0x50, 0x10) == 0xAB
    assert bus.read_i2c_block_data(0x50, 0x1F, 5) == [0, 1, 2, 3, 0]
    assert memory.cells[0x20:0x23] == bytes([1, 2, 3])


def test_receive_byte_reads_on_from_the_pointer(bus: FakeI2CBus, memory: Memory) -> None:
    memory.cells[0x30:0x33] = bytes([7, 8, 9])
    bus.write_byte(0x50, 0x30)
    assert [bus.read_byte(0x50) for _ in range(3)] == [7, 8, 9]


def test_block_reads_wrap_at_the_end_of_the_register_space(bus: FakeI2CBus, memory: Memory) -> None:
    memory.cells[0xFF] = 0xEE
    memory.cells[0x00] = 0x11
    assert bus.read_i2c_block_data(0x50, 0xFF, 2) == [0xEE, 0x11]


def test_smbus_limits_are_enforced(bus: FakeI2CBus, memory: Memory) -> None:
    with pytest.raises(ValueError, match="32"):
        bus.read_i2c_block_data(0x50, 0, 33)
    with pytest.raises(ValueError, match="32"):
        bus.write_i2c_block_data(0x50, 0, [0] * 33)
    with pytest.raises(ValueError, match="one byte"):
        bus.write_byte_data(0x50, 0, 256)
    with pytest.raises(ValueError, match="7-bit"):
        bus.read_byte(0x80)


def test_force_keyword_is_accepted_like_smbus2(bus: FakeI2CBus, memory: Memory) -> None:
    bus.write_byte_data(0x50, 1, 2, force=True)
    assert bus.read_byte_data(0x50, 1, force=True) == 2


# -- missing devices and faults ---------------------------------------------------------------


def test_empty_address_raises_enxio(bus: FakeI2CBus) -> None:
    assert NO_DEVICE_ERRNO == errno.ENXIO
    assert _errno_of(lambda: bus.read_byte_data(0x50, 0)) == errno.ENXIO
    assert _errno_of(lambda: bus.write_byte(0x50, 0)) == errno.ENXIO


def test_unplug_and_replug(bus: FakeI2CBus, memory: Memory) -> None:
    bus.write_byte_data(0x50, 5, 55)
    bus.unplug(0x50)
    assert _errno_of(lambda: bus.read_byte_data(0x50, 5)) == errno.ENXIO
    assert bus.device_at(0x50) is memory  # still wired, just not answering
    bus.replug(0x50)
    assert memory.power_cycles == 1
    assert bus.read_byte_data(0x50, 5) == 0  # RAM lost its contents on power-up


def test_replug_of_a_plugged_device_does_not_power_cycle_it(
    bus: FakeI2CBus, memory: Memory
) -> None:
    bus.replug(0x50)
    assert memory.power_cycles == 0


def test_injected_errors_hit_the_next_transfers_only(bus: FakeI2CBus, memory: Memory) -> None:
    bus.inject_error(0x50, errno.EIO, count=2)
    assert _errno_of(lambda: bus.write_byte_data(0x50, 0, 1)) == errno.EIO
    assert _errno_of(lambda: bus.read_byte_data(0x50, 0)) == errno.EIO
    assert memory.cells[0] == 0  # the failed write never reached the device
    assert bus.read_byte_data(0x50, 0) == 0


def test_injected_errors_queue_in_order(bus: FakeI2CBus, memory: Memory) -> None:
    bus.inject_error(0x50, errno.ETIMEDOUT)
    bus.inject_error(0x50, errno.EAGAIN)
    assert _errno_of(lambda: bus.read_byte(0x50)) == errno.ETIMEDOUT
    assert _errno_of(lambda: bus.read_byte(0x50)) == errno.EAGAIN
    bus.read_byte(0x50)


def test_injected_errors_are_per_address(bus: FakeI2CBus, memory: Memory) -> None:
    other = Memory()
    bus.attach(0x51, other)
    bus.inject_error(0x51, errno.EIO)
    assert bus.read_byte_data(0x50, 0) == 0
    assert _errno_of(lambda: bus.read_byte_data(0x51, 0)) == errno.EIO


def test_inject_error_needs_a_positive_count(bus: FakeI2CBus) -> None:
    with pytest.raises(ValueError, match="count"):
        bus.inject_error(0x50, errno.EIO, count=0)


def test_closed_bus_refuses_transfers(bus: FakeI2CBus, memory: Memory) -> None:
    with bus:
        assert bus.read_byte_data(0x50, 0) == 0
    assert _errno_of(lambda: bus.read_byte_data(0x50, 0)) == errno.EBADF


# -- wiring ----------------------------------------------------------------------------------


def test_two_devices_on_one_address_is_refused(bus: FakeI2CBus, memory: Memory) -> None:
    with pytest.raises(ValueError, match="0x50"):
        bus.attach(0x50, Memory())


def test_detach(bus: FakeI2CBus, memory: Memory) -> None:
    assert bus.detach(0x50) is memory
    assert bus.device_at(0x50) is None
    with pytest.raises(KeyError):
        bus.detach(0x50)


def test_attach_if_free_keeps_what_is_there(bus: FakeI2CBus, memory: Memory) -> None:
    assert bus.attach_if_free(0x50, Memory) is memory
    fresh = bus.attach_if_free(0x51, Memory)
    assert bus.device_at(0x51) is fresh


def test_concurrent_transfers_stay_consistent(bus: FakeI2CBus, memory: Memory) -> None:
    # Each thread writes and reads back its own register pair; a torn transfer would show.
    errors: list[BaseException] = []

    def worker(base: int) -> None:
        try:
            for i in range(200):
                bus.write_i2c_block_data(0x50, base, [i, 255 - i])
                assert bus.read_i2c_block_data(0x50, base, 2) == [i, 255 - i]
        except BaseException as exc:  # re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(base,)) for base in range(0, 16, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


# -- translation at the driver edge ----------------------------------------------------------


@pytest.mark.parametrize("code", sorted(MISSING_ERRNOS))
def test_no_answer_errnos_mean_missing(code: int) -> None:
    error = translate_os_error(OSError(code, "no answer"), "chip at 0x76: read id")
    assert isinstance(error, SensorMissingError)
    assert error.errno == code
    assert "chip at 0x76: read id" in str(error)


@pytest.mark.parametrize("code", [errno.EIO, errno.ETIMEDOUT, errno.EAGAIN])
def test_other_errnos_are_bus_errors(code: int) -> None:
    error = translate_os_error(OSError(code, "boom"), "chip")
    assert isinstance(error, BusError)
    assert error.errno == code


def test_bus_errors_chains_the_original() -> None:
    original = OSError(errno.EIO, "Input/output error")
    with pytest.raises(BusError) as info, bus_errors("chip at 0x76: write ctrl"):
        raise original
    assert info.value.__cause__ is original


def test_bus_errors_passes_hardware_errors_through_untouched() -> None:
    # BusError is itself an OSError; translating it again would wrap it in itself.
    first = BusError(errno.EIO, "already translated")
    with pytest.raises(BusError) as info, bus_errors("chip"):
        raise first
    assert info.value is first
    assert info.value.__cause__ is None


def test_bus_errors_leaves_other_exceptions_alone() -> None:
    with pytest.raises(DataError), bus_errors("chip"):
        raise DataError("bad crc")
    with pytest.raises(KeyError), bus_errors("chip"):
        raise KeyError("x")


def test_hardware_errors_inherit_matching_builtins() -> None:
    assert issubclass(SensorMissingError, OSError)
    assert issubclass(BusError, OSError)
    assert issubclass(DataError, ValueError)
    assert all(issubclass(e, HardwareError) for e in (SensorMissingError, BusError, DataError))
