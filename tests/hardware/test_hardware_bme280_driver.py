"""The real BME280 driver against its register-level emulator on a fake I2C bus."""

from __future__ import annotations

import dataclasses
import errno
import threading
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgetwin.hardware.bus import FakeI2CBus, RegisterDevice
from edgetwin.hardware.drivers.bme280 import (
    ADDRESS_PRIMARY,
    ADDRESS_SECONDARY,
    BME280,
    CALIB_TP_LENGTH,
    MODE_FORCED,
    MODE_NORMAL,
    REG_CALIB_TP,
    REG_CHIP_ID,
    REG_CONFIG,
    REG_CTRL_HUM,
    REG_CTRL_MEAS,
    REG_DATA,
    REG_RESET,
    REG_STATUS,
    SAMPLE_CALIBRATION,
    STATUS_IM_UPDATE,
    STATUS_MEASURING,
    BME280Emulator,
    measurement_time_max,
    measurement_time_typical,
    unpack_data,
)
from edgetwin.hardware.errors import (
    BusError,
    ChipIdError,
    DataError,
    HardwareError,
    SensorMissingError,
    SensorTimeoutError,
)
from edgetwin.hardware.sensor import BackendKind, Health
from edgetwin.hardware.signals import Constant, RandomWalk
from edgetwin.hardware.timing import ManualClock, VirtualTimer

# At x1 oversampling the ADCs resolve 16 bits. One LSB is 0.0051 °C of t_fine (plus 0.005 °C
# rounding to the driver's 0.01 °C output), 2.4..3.0 Pa of pressure across -40..85 °C (the
# datasheet quotes 2.62 Pa) and 0.010..0.013 %RH. The emulator picks the nearest code, or its
# neighbour when the nearest is the "skipped" marker, so readings land within one LSB.
TEMPERATURE_TOLERANCE = 0.01
PRESSURE_TOLERANCE = 0.031
HUMIDITY_TOLERANCE = 0.013


class Rig:
    """A BME280 emulator on a fake bus, and the real driver opened on it."""

    def __init__(self, address: int = ADDRESS_PRIMARY, **emulator_options: Any) -> None:
        self.clock = ManualClock()
        self.timer = VirtualTimer()
        self.bus = FakeI2CBus(1)
        self.address = address
        self.chip = BME280Emulator(clock=self.clock, timer=self.timer, **emulator_options)
        self.bus.attach(address, self.chip)
        self.sensor = BME280(
            self.bus, address, backend=BackendKind.EMULATED, clock=self.clock, timer=self.timer
        )


@pytest.fixture
def rig() -> Rig:
    rig = Rig()
    rig.sensor.open()
    return rig


# -- round trip ------------------------------------------------------------------------------


@settings(deadline=None)
@given(
    temperature=st.floats(min_value=-40, max_value=85),
    humidity=st.floats(min_value=0, max_value=100),
    pressure=st.floats(min_value=300, max_value=1100),
)
def test_round_trip_across_the_operating_range(
    temperature: float, humidity: float, pressure: float
) -> None:
    rig = Rig()
    rig.chip.set_environment(temperature=temperature, humidity=humidity, pressure=pressure)
    reading = rig.sensor.open().read()
    assert reading.values["temperature"].value == pytest.approx(
        temperature, abs=TEMPERATURE_TOLERANCE
    )
    assert reading.values["humidity"].value == pytest.approx(humidity, abs=HUMIDITY_TOLERANCE)
    assert reading.values["pressure"].value == pytest.approx(pressure, abs=PRESSURE_TOLERANCE)


def test_reading_carries_units_timestamp_and_ok_status(rig: Rig) -> None:
    rig.chip.set_environment(temperature=22.5, humidity=40.0, pressure=1000.0)
    reading = rig.sensor.read()
    assert {name: m.unit for name, m in reading.values.items()} == {
        "temperature": "°C",
        "humidity": "%RH",
        "pressure": "hPa",
    }
    assert reading.timestamp == rig.clock()
    assert rig.sensor.status.health is Health.OK
    assert rig.sensor.status.backend is BackendKind.EMULATED


def test_open_reads_the_chips_own_calibration() -> None:
    # Another part's trimming: the driver must use what the chip holds, not the sample.
    custom = dataclasses.replace(
        SAMPLE_CALIBRATION, dig_T2=25654, dig_T3=50, dig_H2=376, dig_H4=286
    )
    rig = Rig(calibration=custom)
    rig.sensor.open()
    assert rig.sensor.calibration == custom
    rig.chip.set_environment(temperature=-10.0, humidity=80.0)
    values = rig.sensor.read().values
    assert values["temperature"].value == pytest.approx(-10.0, abs=TEMPERATURE_TOLERANCE)
    assert values["humidity"].value == pytest.approx(80.0, abs=HUMIDITY_TOLERANCE)


def test_secondary_address() -> None:
    rig = Rig(address=ADDRESS_SECONDARY)
    rig.chip.set_environment(temperature=30.0)
    assert rig.sensor.open().read().values["temperature"].value == pytest.approx(30.0, abs=0.01)


def test_address_outside_the_chips_two_is_refused(bus: FakeI2CBus) -> None:
    with pytest.raises(ValueError, match="0x76 or 0x77"):
        BME280(bus, 0x48)


def test_first_read_opens_the_chip_lazily() -> None:
    rig = Rig()
    assert rig.sensor.calibration is None
    rig.chip.set_environment(pressure=950.0)
    assert rig.sensor.read().values["pressure"].value == pytest.approx(950.0, abs=0.031)
    assert rig.sensor.calibration == SAMPLE_CALIBRATION


def test_signals_are_sampled_at_measurement_time(rig: Rig) -> None:
    walk = RandomWalk(10.0, 30.0, step=0.5, seed=4)
    reference = RandomWalk(10.0, 30.0, step=0.5, seed=4)
    rig.chip.set_signal("temperature", walk)
    for _ in range(5):
        rig.clock.advance(60.0)
        expected = reference.sample(rig.clock())
        assert rig.sensor.read().values["temperature"].value == pytest.approx(expected, abs=0.01)


# -- faults ----------------------------------------------------------------------------------


def test_wrong_chip_id_is_a_chip_id_error() -> None:
    rig = Rig(chip_id=0x58)
    with pytest.raises(ChipIdError, match=r"0x58.*BMP280") as info:
        rig.sensor.open()
    assert isinstance(info.value, ValueError)


def test_wrong_chip_on_first_read_faults_the_sensor() -> None:
    rig = Rig(chip_id=0x61)
    with pytest.raises(ChipIdError):
        rig.sensor.read()
    assert rig.sensor.status.health is Health.FAULTED


def test_nothing_at_the_address_is_missing(bus: FakeI2CBus, timer: VirtualTimer) -> None:
    sensor = BME280(bus, timer=timer)
    with pytest.raises(SensorMissingError, match="0x76"):
        sensor.open()


def test_unplugged_sensor_is_missing_and_recovers_after_replug(rig: Rig) -> None:
    rig.bus.unplug(ADDRESS_PRIMARY)
    for attempt in (1, 2):
        with pytest.raises(SensorMissingError) as info:
            rig.sensor.read()
        assert info.value.errno == errno.ENXIO
        assert isinstance(info.value.__cause__, OSError)
        assert rig.sensor.status.health is Health.MISSING
        assert rig.sensor.status.consecutive_errors == attempt

    rig.bus.replug(ADDRESS_PRIMARY)  # the chip powers up again with its registers reset
    rig.chip.set_environment(temperature=18.0, humidity=55.0)
    values = rig.sensor.read().values
    assert values["temperature"].value == pytest.approx(18.0, abs=TEMPERATURE_TOLERANCE)
    assert values["humidity"].value == pytest.approx(55.0, abs=HUMIDITY_TOLERANCE)
    assert rig.sensor.status.health is Health.OK
    assert rig.sensor.status.consecutive_errors == 0


def test_eremoteio_counts_as_missing_as_on_a_raspberry_pi(rig: Rig) -> None:
    rig.bus.inject_error(ADDRESS_PRIMARY, errno.EREMOTEIO)
    with pytest.raises(SensorMissingError):
        rig.sensor.read()
    assert rig.sensor.status.health is Health.MISSING


def test_eio_is_a_bus_error_and_the_next_read_recovers(rig: Rig) -> None:
    rig.bus.inject_error(ADDRESS_PRIMARY, errno.EIO)
    with pytest.raises(BusError) as info:
        rig.sensor.read()
    assert info.value.errno == errno.EIO
    assert isinstance(info.value.__cause__, OSError)
    assert not isinstance(info.value.__cause__, HardwareError)
    assert rig.sensor.status.health is Health.FAULTED
    assert rig.sensor.status.reason is not None
    assert "bme280 at 0x76" in rig.sensor.status.reason

    rig.chip.set_environment(temperature=24.0)
    assert rig.sensor.read().values["temperature"].value == pytest.approx(24.0, abs=0.01)
    assert rig.sensor.status.health is Health.OK
    assert rig.sensor.status.reason is None


@pytest.mark.parametrize("failing_transfer", range(1, 5))
def test_eio_at_any_step_of_a_measurement_recovers(rig: Rig, failing_transfer: int) -> None:
    # A measurement is four transfers: ctrl_hum, ctrl_meas, status poll, data burst. Whichever
    # one fails, the driver must report it and recover on the next read.
    device = rig.bus.detach(ADDRESS_PRIMARY)
    assert isinstance(device, RegisterDevice)
    rig.bus.attach(ADDRESS_PRIMARY, _FailNth(device, failing_transfer))
    with pytest.raises(BusError):
        rig.sensor.read()
    rig.chip.set_environment(humidity=33.0)
    assert rig.sensor.read().values["humidity"].value == pytest.approx(33.0, abs=0.013)


def test_skipped_humidity_is_a_data_error() -> None:
    rig = Rig()
    rig.bus.detach(ADDRESS_PRIMARY)
    chip = _HumidityStuckOff(clock=rig.clock, timer=rig.timer)
    rig.bus.attach(ADDRESS_PRIMARY, chip)
    with pytest.raises(DataError, match="humidity"):
        rig.sensor.read()
    assert rig.sensor.status.health is Health.FAULTED


# -- polling and timing ----------------------------------------------------------------------


def test_driver_waits_for_a_slow_conversion() -> None:
    # Worst-case chip: conversion takes the datasheet maximum, past the driver's first poll.
    slowest = measurement_time_max(1, 1, 1)
    rig = Rig(conversion_time=slowest)
    rig.sensor.open()
    rig.chip.set_environment(temperature=5.0)
    before = rig.timer.monotonic()
    assert rig.sensor.read().values["temperature"].value == pytest.approx(5.0, abs=0.01)
    assert rig.timer.monotonic() - before >= slowest


def test_typical_conversion_needs_no_extra_polling(rig: Rig) -> None:
    before = rig.timer.monotonic()
    rig.sensor.read()
    assert rig.timer.monotonic() - before < measurement_time_max(1, 1, 1)


def test_stuck_conversion_times_out_then_recovers() -> None:
    rig = Rig(conversion_time=2 * measurement_time_max(1, 1, 1))
    rig.sensor.open()
    with pytest.raises(SensorTimeoutError, match="datasheet maximum") as info:
        rig.sensor.read()
    assert isinstance(info.value, TimeoutError)
    assert rig.sensor.status.health is Health.FAULTED

    rig.chip.conversion_time = None
    rig.chip.set_environment(temperature=-20.0)
    assert rig.sensor.read().values["temperature"].value == pytest.approx(-20.0, abs=0.01)


def test_open_waits_for_a_slow_nvm_copy() -> None:
    rig = Rig(nvm_copy_time=6e-3)
    rig.sensor.open()
    assert rig.sensor.calibration == SAMPLE_CALIBRATION


def test_nvm_copy_that_never_ends_times_out() -> None:
    rig = Rig(nvm_copy_time=1.0)
    with pytest.raises(SensorTimeoutError, match="NVM"):
        rig.sensor.open()


def test_concurrent_reads_do_not_interleave(rig: Rig) -> None:
    rig.chip.set_environment(temperature=12.34, humidity=56.0, pressure=987.0)
    failures: list[BaseException] = []

    def reader() -> None:
        try:
            for _ in range(25):
                values = rig.sensor.read().values
                assert values["temperature"].value == pytest.approx(12.34, abs=0.01)
        except BaseException as exc:  # collected and re-raised in the main thread
            failures.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


# -- the emulator on its own -----------------------------------------------------------------


def test_emulator_power_on_state(bus: FakeI2CBus, timer: VirtualTimer) -> None:
    bus.attach(0x76, BME280Emulator(timer=timer))
    assert bus.read_byte_data(0x76, REG_CHIP_ID) == 0x60
    assert bus.read_byte_data(0x76, REG_STATUS) & STATUS_IM_UPDATE
    # Mid-copy the calibration image is not valid yet.
    assert bus.read_i2c_block_data(0x76, REG_CALIB_TP, CALIB_TP_LENGTH) == [0] * CALIB_TP_LENGTH
    timer.sleep(2e-3)
    assert bus.read_byte_data(0x76, REG_STATUS) == 0
    assert (
        bytes(bus.read_i2c_block_data(0x76, REG_CALIB_TP, CALIB_TP_LENGTH))
        == (SAMPLE_CALIBRATION.to_registers()[0])
    )
    # Data registers hold the "skipped" reset values until a conversion completes.
    assert bus.read_i2c_block_data(0x76, REG_DATA, 8) == [0x80, 0, 0, 0x80, 0, 0, 0x80, 0]


def test_forced_conversion_sets_measuring_then_returns_to_sleep(
    bus: FakeI2CBus, timer: VirtualTimer
) -> None:
    chip = BME280Emulator(timer=timer)
    chip.set_environment(temperature=25.0)
    bus.attach(0x76, chip)
    bus.write_byte_data(0x76, REG_CTRL_HUM, 0x01)
    bus.write_byte_data(0x76, REG_CTRL_MEAS, 0x25)
    assert bus.read_byte_data(0x76, REG_STATUS) & STATUS_MEASURING
    assert bus.read_byte_data(0x76, REG_CTRL_MEAS) & 0b11 == MODE_FORCED
    timer.sleep(measurement_time_typical(1, 1, 1))
    assert not bus.read_byte_data(0x76, REG_STATUS) & STATUS_MEASURING
    assert bus.read_byte_data(0x76, REG_CTRL_MEAS) & 0b11 == 0
    adc_p, adc_t, adc_h = unpack_data(bus.read_i2c_block_data(0x76, REG_DATA, 8))
    assert adc_t % 16 == 0  # 16-bit resolution at x1
    assert adc_p % 16 == 0
    assert 0 < adc_h < 0xFFFF


def test_ctrl_hum_takes_effect_only_on_the_next_ctrl_meas_write(
    bus: FakeI2CBus, timer: VirtualTimer
) -> None:
    chip = BME280Emulator(timer=timer)
    bus.attach(0x76, chip)
    bus.write_byte_data(0x76, REG_CTRL_HUM, 0x01)
    bus.write_byte_data(0x76, REG_CTRL_MEAS, (1 << 5) | (1 << 2) | MODE_NORMAL)
    bus.write_byte_data(0x76, REG_CTRL_HUM, 0x00)  # not latched: normal mode keeps humidity
    timer.sleep(0.1)
    hum = bus.read_i2c_block_data(0x76, REG_DATA + 6, 2)
    assert hum != [0x80, 0x00]


def test_normal_mode_keeps_converting(bus: FakeI2CBus, timer: VirtualTimer) -> None:
    clock = ManualClock()
    chip = BME280Emulator(timer=timer, clock=clock)
    bus.attach(0x76, chip)
    bus.write_byte_data(0x76, REG_CONFIG, 0b110 << 5)  # t_standby 10 ms
    bus.write_byte_data(0x76, REG_CTRL_HUM, 0x01)
    bus.write_byte_data(0x76, REG_CTRL_MEAS, (1 << 5) | (1 << 2) | MODE_NORMAL)
    assert bus.read_byte_data(0x76, REG_STATUS) & STATUS_MEASURING
    timer.sleep(9e-3)  # conversion done (8 ms), in standby
    assert not bus.read_byte_data(0x76, REG_STATUS) & STATUS_MEASURING
    first = bus.read_i2c_block_data(0x76, REG_DATA, 8)
    chip.set_environment(temperature=40.0)
    timer.sleep(18e-3)  # the next cycle's conversion has completed
    assert bus.read_i2c_block_data(0x76, REG_DATA, 8) != first
    assert bus.read_byte_data(0x76, REG_CTRL_MEAS) & 0b11 == MODE_NORMAL


def test_block_write_is_register_value_pairs(bus: FakeI2CBus, timer: VirtualTimer) -> None:
    bus.attach(0x76, BME280Emulator(timer=timer))
    # ctrl_hum = 0x01, then the pair (ctrl_meas, 0x25): one transfer, two registers.
    bus.write_i2c_block_data(0x76, REG_CTRL_HUM, [0x01, REG_CTRL_MEAS, 0x25])
    assert bus.read_byte_data(0x76, REG_CTRL_HUM) == 0x01
    assert bus.read_byte_data(0x76, REG_STATUS) & STATUS_MEASURING


def test_soft_reset_needs_the_magic_value(bus: FakeI2CBus, timer: VirtualTimer) -> None:
    bus.attach(0x76, BME280Emulator(timer=timer))
    bus.write_byte_data(0x76, REG_CTRL_HUM, 0x05)
    bus.write_byte_data(0x76, REG_RESET, 0x01)
    assert bus.read_byte_data(0x76, REG_CTRL_HUM) == 0x05
    bus.write_byte_data(0x76, REG_RESET, 0xB6)
    assert bus.read_byte_data(0x76, REG_CTRL_HUM) == 0x00


def test_read_only_registers_ignore_writes(bus: FakeI2CBus, timer: VirtualTimer) -> None:
    bus.attach(0x76, BME280Emulator(timer=timer))
    bus.write_byte_data(0x76, REG_CHIP_ID, 0x00)
    assert bus.read_byte_data(0x76, REG_CHIP_ID) == 0x60


def test_emulator_rejects_unknown_quantities() -> None:
    with pytest.raises(ValueError, match="co2"):
        BME280Emulator(signals={"co2": Constant(400.0)})


# -- fakes -----------------------------------------------------------------------------------


class _HumidityStuckOff(BME280Emulator):
    """A chip whose humidity oversampling never sticks, so humidity is always skipped."""

    def write_register(self, reg: int, value: int) -> None:
        super().write_register(reg, 0 if reg == REG_CTRL_HUM else value)


class _FailNth(RegisterDevice):
    """Wraps a chip so that the n-th transfer reaching it fails with EIO.

    It fails inside the device, after the bus has routed the transfer, the way a glitch
    mid-frame does; the bus passes the OSError on as i2c-dev would.
    """

    def __init__(self, inner: RegisterDevice, n: int) -> None:
        self._inner = inner
        self._remaining = n

    def _tick(self) -> None:
        self._remaining -= 1
        if self._remaining == 0:
            raise OSError(errno.EIO, "Input/output error")

    def read_register(self, reg: int) -> int:
        return self._inner.read_register(reg)

    def write_register(self, reg: int, value: int) -> None:
        self._inner.write_register(reg, value)

    def read_block(self, reg: int, length: int) -> list[int]:
        self._tick()
        return self._inner.read_block(reg, length)

    def write_block(self, reg: int, data: Sequence[int]) -> None:
        self._tick()
        self._inner.write_block(reg, data)
