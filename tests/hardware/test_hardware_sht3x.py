"""SHT3x: CRC and conversion against the datasheet, the driver against its command-level emulator.

Figures from the SHT3x-DIS datasheet: the CRC-8 example CRC(0xBEEF) = 0x92 (table 19), the
conversion formulas' end points (section 4.13: raw 0 is -45 °C / 0 %RH, raw 0xFFFF is 130 °C /
100 %RH), measurement durations (table 4: high repeatability 12.5 ms typical, 15 ms maximum).
"""

from __future__ import annotations

import errno
import math
import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgetwin.hardware import EmulatedBackend, Health, open_sensor
from edgetwin.hardware.bus import NACK_ERRNO, FakeI2CBus, I2CDevice, i2c_read, i2c_write
from edgetwin.hardware.drivers.sht3x import (
    ADDRESS_ALTERNATE,
    ADDRESS_DEFAULT,
    CMD_CLEAR_STATUS,
    CMD_HEATER_ON,
    CMD_MEASURE_HIGH,
    CMD_MEASURE_LOW,
    CMD_READ_STATUS,
    CMD_SOFT_RESET,
    POWER_UP_TIME,
    RAW_MAX,
    REPEATABILITY,
    SOFT_RESET_TIME,
    STATUS_AFTER_RESET,
    STATUS_COMMAND_FAILED,
    STATUS_HEATER_ON,
    SHT3x,
    SHT3xEmulator,
    crc8,
    humidity_from_raw,
    pack_words,
    raw_from_humidity,
    raw_from_temperature,
    temperature_from_raw,
    unpack_words,
)
from edgetwin.hardware.errors import (
    BusError,
    DataError,
    SensorMissingError,
    SensorSettingsError,
    SensorTimeoutError,
)
from edgetwin.hardware.sensor import BackendKind
from edgetwin.hardware.signals import Constant
from edgetwin.hardware.timing import ManualClock, VirtualTimer

T_LSB = 175.0 / RAW_MAX
"""°C per count: 0.00267 °C; the emulator picks the nearest code, so readings land within half."""
RH_LSB = 100.0 / RAW_MAX
HIGH = REPEATABILITY["high"]


class Rig:
    """An SHT3x emulator on a fake bus, and the real driver on it."""

    def __init__(self, address: int = ADDRESS_DEFAULT, **emulator_options: Any) -> None:
        self.clock = ManualClock()
        self.timer = VirtualTimer()
        self.bus = FakeI2CBus(1)
        self.address = address
        self.chip = SHT3xEmulator(clock=self.clock, timer=self.timer, **emulator_options)
        self.bus.attach(address, self.chip)
        self.sensor = SHT3x(
            self.bus, address, backend=BackendKind.EMULATED, clock=self.clock, timer=self.timer
        )

    def values(self) -> dict[str, float]:
        return {name: m.value for name, m in self.sensor.read().values.items()}


@pytest.fixture
def rig() -> Rig:
    rig = Rig()
    rig.sensor.open()
    return rig


def _command(rig: Rig, command: int) -> None:
    i2c_write(rig.bus, rig.address, [command >> 8, command & 0xFF])


def _errno_of(call: object) -> int | None:
    assert callable(call)
    with pytest.raises(OSError) as info:
        call()
    return info.value.errno


# -- CRC and conversion (pure functions) ------------------------------------------------------


def test_crc_of_the_datasheet_example() -> None:
    assert crc8(b"\xbe\xef") == 0x92  # table 19: CRC(0xBEEF) = 0x92


def test_crc_of_an_empty_status_word() -> None:
    # Init 0xFF means even a zero word has a non-zero CRC: a bus stuck low cannot pass.
    assert crc8(b"\x00\x00") == 0x81
    assert crc8(b"\xff\xff") == 0xAC  # ... nor one stuck high (0xFF would be needed)


def test_conversion_end_points() -> None:
    # Section 4.13: T = -45 + 175 * S_T / (2^16 - 1), RH = 100 * S_RH / (2^16 - 1).
    assert temperature_from_raw(0) == -45.0
    assert temperature_from_raw(0xFFFF) == 130.0
    assert humidity_from_raw(0) == 0.0
    assert humidity_from_raw(0xFFFF) == 100.0
    assert temperature_from_raw(0x6666) == pytest.approx(25.0, abs=T_LSB)  # 26214 counts


@given(st.integers(0, RAW_MAX))
def test_inverse_conversion_is_exact_on_every_code(raw: int) -> None:
    assert raw_from_temperature(temperature_from_raw(raw)) == raw
    assert raw_from_humidity(humidity_from_raw(raw)) == raw


@given(st.floats(-45, 130), st.floats(0, 100))
def test_inverse_conversion_picks_the_nearest_code(celsius: float, rh: float) -> None:
    assert temperature_from_raw(raw_from_temperature(celsius)) == pytest.approx(
        celsius, abs=T_LSB / 2 + 1e-9
    )
    assert humidity_from_raw(raw_from_humidity(rh)) == pytest.approx(rh, abs=RH_LSB / 2 + 1e-9)


def test_inverse_conversion_saturates_like_the_chip() -> None:
    assert raw_from_temperature(-60.0) == 0
    assert raw_from_temperature(200.0) == RAW_MAX
    assert raw_from_humidity(-3.0) == 0
    assert raw_from_humidity(104.0) == RAW_MAX


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
def test_words_round_trip_with_their_crcs(first: int, second: int) -> None:
    data = pack_words(first, second)
    assert len(data) == 6
    assert data[2] == crc8(data[0:2])
    assert unpack_words(data, "test") == [first, second]


@given(st.integers(0, 0xFFFF), st.integers(0, 23))
def test_every_single_bit_flip_fails_the_crc(word: int, bit: int) -> None:
    data = bytearray(pack_words(word))
    data[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(DataError, match="CRC mismatch on word 0"):
        unpack_words(data, "test")


def test_unpack_refuses_a_partial_word() -> None:
    with pytest.raises(DataError, match="whole number"):
        unpack_words(b"\x01\x02", "test")


# -- the driver on the emulator ---------------------------------------------------------------


@settings(deadline=None)
@given(celsius=st.floats(-45, 130), rh=st.floats(0, 100))
def test_round_trip_across_the_whole_scale(celsius: float, rh: float) -> None:
    rig = Rig()
    rig.chip.set_environment(temperature=celsius, humidity=rh)
    values = rig.values()
    assert values["temperature"] == pytest.approx(celsius, abs=T_LSB / 2 + 1e-9)
    assert values["humidity"] == pytest.approx(rh, abs=RH_LSB / 2 + 1e-9)


def test_reading_has_units_timestamp_and_ok_status(rig: Rig) -> None:
    reading = rig.sensor.read()
    assert {n: m.unit for n, m in reading.values.items()} == {
        "temperature": "°C",
        "humidity": "%RH",
    }
    assert reading.timestamp == rig.clock()
    assert rig.sensor.status.health is Health.OK


def test_open_resets_and_reads_the_status_register() -> None:
    rig = Rig()
    assert rig.sensor.chip_status is None
    rig.sensor.open()
    # Table 17 defaults after a reset: alert pending (bit 15) and reset detected (bit 4).
    assert rig.sensor.chip_status == STATUS_AFTER_RESET == 0x8010


def test_read_status_checks_its_crc(rig: Rig) -> None:
    _command(rig, CMD_HEATER_ON)
    assert rig.sensor.read_status() & STATUS_HEATER_ON
    rig.bus.corrupt_reads(rig.address, count=1, mask=0x04)
    with pytest.raises(DataError, match="status: CRC mismatch"):
        rig.sensor.read_status()


def test_alternate_address() -> None:
    rig = Rig(address=ADDRESS_ALTERNATE)
    rig.chip.set_environment(temperature=-12.0)
    assert rig.values()["temperature"] == pytest.approx(-12.0, abs=T_LSB)


def test_address_outside_the_chips_two_is_refused(bus: FakeI2CBus) -> None:
    with pytest.raises(ValueError, match="0x44 or 0x45"):
        SHT3x(bus, 0x40)


def test_first_read_opens_the_chip_lazily() -> None:
    rig = Rig()
    rig.chip.set_environment(humidity=77.0)
    assert rig.values()["humidity"] == pytest.approx(77.0, abs=RH_LSB)
    assert rig.sensor.chip_status == STATUS_AFTER_RESET


def test_a_typical_measurement_costs_one_read(rig: Rig) -> None:
    before = rig.timer.monotonic()
    rig.sensor.read()
    assert rig.timer.monotonic() - before == pytest.approx(HIGH.typical)


def test_driver_polls_through_nacks_up_to_the_datasheet_maximum() -> None:
    rig = Rig(conversion_time=HIGH.maximum)  # the slowest chip the datasheet allows
    rig.chip.set_environment(temperature=33.0)
    rig.sensor.open()
    before = rig.timer.monotonic()
    assert rig.values()["temperature"] == pytest.approx(33.0, abs=T_LSB)
    assert rig.timer.monotonic() - before >= HIGH.maximum


def test_measurement_that_never_ends_times_out_then_recovers_after_power_cycle() -> None:
    rig = Rig(conversion_time=1.0)
    rig.sensor.open()
    with pytest.raises(SensorTimeoutError, match="15 ms") as info:
        rig.sensor.read()
    assert isinstance(info.value, TimeoutError)
    assert rig.sensor.status.health is Health.FAULTED
    # Still measuring, the chip ignores its address: even the driver's reset goes unanswered.
    with pytest.raises(SensorMissingError):
        rig.sensor.read()
    rig.chip.conversion_time = None
    rig.bus.unplug(rig.address)
    rig.bus.replug(rig.address)
    rig.chip.set_environment(temperature=5.0)
    assert rig.values()["temperature"] == pytest.approx(5.0, abs=T_LSB)
    assert rig.sensor.status.health is Health.OK


@pytest.mark.parametrize("position", range(6))
def test_a_flipped_bit_in_any_byte_of_a_measurement_is_a_data_error(
    rig: Rig, position: int
) -> None:
    rig.bus.detach(rig.address)
    rig.bus.attach(rig.address, _FlipOneByte(rig.chip, position))
    with pytest.raises(DataError, match=f"word {position // 3}"):
        rig.sensor.read()
    assert rig.sensor.status.health is Health.FAULTED
    assert rig.sensor.status.reason is not None
    assert "sht3x at 0x44: read measurement: CRC mismatch" in rig.sensor.status.reason
    rig.values()  # the next measurement is clean
    assert rig.sensor.status.health is Health.OK


@pytest.mark.parametrize(("and_mask", "or_mask"), [(0xFF, 0xFF), (0x00, 0x00), (0xFE, 0x00)])
def test_stuck_bits_fail_the_crc_until_cleared(rig: Rig, and_mask: int, or_mask: int) -> None:
    rig.bus.stick_bits(rig.address, and_mask=and_mask, or_mask=or_mask)
    for _ in range(2):
        with pytest.raises(DataError, match="CRC"):
            rig.sensor.read()
    rig.bus.clear_faults(rig.address)
    rig.chip.set_environment(temperature=40.0)
    assert rig.values()["temperature"] == pytest.approx(40.0, abs=T_LSB)


def test_nack_is_missing_and_the_next_read_recovers(rig: Rig) -> None:
    rig.bus.inject_nack(rig.address)
    with pytest.raises(SensorMissingError, match="start measurement") as info:
        rig.sensor.read()
    assert info.value.errno == errno.EREMOTEIO
    assert rig.sensor.status.health is Health.MISSING
    rig.values()
    assert rig.sensor.status.health is Health.OK


def test_eio_is_a_bus_error_and_the_next_read_recovers(rig: Rig) -> None:
    rig.bus.inject_error(rig.address, errno.EIO)
    with pytest.raises(BusError):
        rig.sensor.read()
    assert rig.sensor.status.health is Health.FAULTED
    rig.values()
    assert rig.sensor.status.health is Health.OK


def test_unplugged_is_missing_and_replug_recovers(rig: Rig) -> None:
    rig.bus.unplug(rig.address)
    with pytest.raises(SensorMissingError) as info:
        rig.sensor.read()
    assert info.value.errno == errno.ENXIO
    assert rig.sensor.status.health is Health.MISSING
    rig.bus.replug(rig.address)
    rig.chip.set_environment(humidity=12.5)
    assert rig.values()["humidity"] == pytest.approx(12.5, abs=RH_LSB)


def test_signal_dropout_is_a_bus_error_for_that_reading_only(rig: Rig) -> None:
    rig.chip.set_signal("humidity", Constant(math.nan))
    with pytest.raises(BusError, match="read measurement") as info:
        rig.sensor.read()
    assert info.value.errno == errno.EIO
    rig.chip.set_signal("humidity", Constant(50.0))
    assert rig.values()["humidity"] == pytest.approx(50.0, abs=RH_LSB)


def test_nothing_at_the_address_is_missing(bus: FakeI2CBus, timer: VirtualTimer) -> None:
    with pytest.raises(SensorMissingError, match="sht3x at 0x44: soft reset"):
        SHT3x(bus, timer=timer).open()


def test_concurrent_reads_do_not_interleave(rig: Rig) -> None:
    rig.chip.set_environment(temperature=12.34, humidity=56.0)
    failures: list[BaseException] = []

    def reader() -> None:
        try:
            for _ in range(25):
                assert rig.values()["temperature"] == pytest.approx(12.34, abs=T_LSB)
        except BaseException as exc:  # re-raised in the main thread
            failures.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


# -- the registry ----------------------------------------------------------------------------


def test_open_sensor_at_the_alternate_address() -> None:
    backend = EmulatedBackend(clock=ManualClock(), seed=3)
    sensor = open_sensor("sht3x", backend=backend, address=0x45)
    values = sensor.read().values
    assert 10 < values["temperature"].value < 32
    assert 0 <= values["humidity"].value <= 100
    assert isinstance(backend.i2c_bus(1).device_at(0x45), SHT3xEmulator)


def test_open_sensor_with_signals_and_refusals() -> None:
    backend = EmulatedBackend(clock=ManualClock())
    sensor = open_sensor("sht3x", backend=backend, signals={"temperature": Constant(-3.5)})
    assert sensor.read().values["temperature"].value == pytest.approx(-3.5, abs=T_LSB)
    with pytest.raises(SensorSettingsError, match="0x44, 0x45"):
        open_sensor("sht3x", backend=backend, address=0x46)
    with pytest.raises(SensorSettingsError, match="sht3x has no option 'heater'"):
        open_sensor("sht3x", backend=backend, address=0x45, options={"heater": True})


# -- the emulator on its own -----------------------------------------------------------------


def test_emulator_nacks_while_powering_up_and_while_measuring(timer: VirtualTimer) -> None:
    bus = FakeI2CBus(1)
    bus.attach(0x44, SHT3xEmulator(timer=timer))
    assert _errno_of(lambda: i2c_write(bus, 0x44, [0x24, 0x00])) == NACK_ERRNO
    timer.sleep(POWER_UP_TIME)
    i2c_write(bus, 0x44, [0x24, 0x00])
    timer.sleep(HIGH.typical / 2)
    assert _errno_of(lambda: i2c_read(bus, 0x44, 6)) == NACK_ERRNO
    assert _errno_of(lambda: i2c_write(bus, 0x44, [0xF3, 0x2D])) == NACK_ERRNO
    timer.sleep(HIGH.typical)
    assert len(unpack_words(i2c_read(bus, 0x44, 6), "result")) == 2


def test_emulator_sends_a_result_once(rig: Rig) -> None:
    _command(rig, CMD_MEASURE_LOW)
    rig.timer.sleep(REPEATABILITY["low"].typical)
    first = i2c_read(rig.bus, rig.address, 6)
    assert _errno_of(lambda: i2c_read(rig.bus, rig.address, 6)) == NACK_ERRNO
    assert unpack_words(first, "result")[0] == raw_from_temperature(21.0)


def test_emulator_pads_past_the_result_with_ones(rig: Rig) -> None:
    _command(rig, CMD_READ_STATUS)
    data = i2c_read(rig.bus, rig.address, 5)
    assert data[3:] == b"\xff\xff"


def test_emulator_reading_only_temperature(rig: Rig) -> None:
    _command(rig, CMD_MEASURE_HIGH)
    rig.timer.sleep(HIGH.typical)
    assert unpack_words(i2c_read(rig.bus, rig.address, 3), "t") == [raw_from_temperature(21.0)]


def test_emulator_status_bits(rig: Rig) -> None:
    _command(rig, CMD_CLEAR_STATUS)
    assert rig.sensor.read_status() == 0
    _command(rig, 0x1234)  # no such command
    assert rig.sensor.read_status() & STATUS_COMMAND_FAILED
    i2c_write(rig.bus, rig.address, [0x24])  # half a command
    assert rig.sensor.read_status() & STATUS_COMMAND_FAILED
    _command(rig, CMD_SOFT_RESET)
    rig.timer.sleep(SOFT_RESET_TIME)
    assert rig.sensor.read_status() == STATUS_AFTER_RESET


def test_emulator_ignores_its_address_during_soft_reset(rig: Rig) -> None:
    _command(rig, CMD_SOFT_RESET)
    assert _errno_of(lambda: _command(rig, CMD_READ_STATUS)) == NACK_ERRNO
    rig.timer.sleep(SOFT_RESET_TIME)
    _command(rig, CMD_READ_STATUS)


def test_emulator_answers_the_usual_smbus_snippet(rig: Rig) -> None:
    # Many SHT31 examples send the command as "register" 0x24 with data [0x00], then read a
    # "register" block: the first byte goes out as a one-byte write, which the chip ignores.
    rig.chip.set_environment(temperature=30.0)
    rig.bus.write_i2c_block_data(rig.address, 0x24, [0x00])
    rig.timer.sleep(HIGH.maximum)
    words = unpack_words(rig.bus.read_i2c_block_data(rig.address, 0x00, 6), "result")
    assert temperature_from_raw(words[0]) == pytest.approx(30.0, abs=T_LSB)


def test_emulator_rejects_unknown_quantities() -> None:
    with pytest.raises(ValueError, match="pressure"):
        SHT3xEmulator(signals={"pressure": Constant(1000.0)})


# -- fakes -----------------------------------------------------------------------------------


class _FlipOneByte(I2CDevice):
    """Wraps a chip so that byte `position` of the next 6-byte read has its low bit flipped."""

    def __init__(self, inner: I2CDevice, position: int) -> None:
        self._inner = inner
        self._position: int | None = position

    def write(self, data: bytes) -> None:
        self._inner.write(data)

    def read(self, length: int) -> bytes:
        data = bytearray(self._inner.read(length))
        if length == 6 and self._position is not None:
            data[self._position] ^= 0x01
            self._position = None
        return bytes(data)
