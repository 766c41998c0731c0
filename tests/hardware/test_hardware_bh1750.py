"""BH1750: lux maths against the datasheet, the driver against its instruction-level emulator.

Figures from the BH1750FVI datasheet: the worked example on p. 7 (High Byte 1000_0011, Low
Byte 1001_0000, (2^15 + 2^9 + 2^8 + 2^7 + 2^4) / 1.2 ≈ 28067 lx), 1.2 counts per lx at the
default MTreg 69, MTreg 31..254 scaling the result by 69 / MTreg (p. 11), and the H-resolution
measurement time of 180 ms maximum (p. 2).
"""

from __future__ import annotations

import errno
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgetwin.hardware import EmulatedBackend, Health, open_sensor
from edgetwin.hardware.bus import FakeI2CBus, i2c_read
from edgetwin.hardware.drivers.bh1750 import (
    ADDRESS_HIGH,
    ADDRESS_LOW,
    BH1750,
    CONTINUOUS_H_RES,
    MTREG_DEFAULT,
    ONE_TIME_H_RES,
    ONE_TIME_H_RES2,
    ONE_TIME_L_RES,
    POWER_DOWN,
    POWER_ON,
    RESET,
    BH1750Emulator,
    lux_from_raw,
    measurement_time_max,
    mtreg_instructions,
    parse_options,
    raw_from_lux,
)
from edgetwin.hardware.errors import BusError, DataError, SensorMissingError, SensorSettingsError
from edgetwin.hardware.sensor import BackendKind
from edgetwin.hardware.signals import Constant
from edgetwin.hardware.timing import ManualClock, VirtualTimer


class Rig:
    """A BH1750 emulator on a fake bus, and the real driver on it."""

    def __init__(
        self, address: int = ADDRESS_LOW, mtreg: int = MTREG_DEFAULT, **emulator_options: Any
    ) -> None:
        self.clock = ManualClock()
        self.timer = VirtualTimer()
        self.bus = FakeI2CBus(1)
        self.address = address
        self.chip = BH1750Emulator(clock=self.clock, timer=self.timer, **emulator_options)
        self.bus.attach(address, self.chip)
        self.sensor = BH1750(
            self.bus,
            address,
            mtreg=mtreg,
            backend=BackendKind.EMULATED,
            clock=self.clock,
            timer=self.timer,
        )

    def lux(self) -> float:
        return self.sensor.read().values["illuminance"].value


@pytest.fixture
def rig() -> Rig:
    return Rig()


def _lsb(mtreg: int = MTREG_DEFAULT) -> float:
    return lux_from_raw(1, mtreg)


# -- conversion (pure functions) --------------------------------------------------------------


def test_datasheet_worked_example() -> None:
    raw = 0b1000_0011_1001_0000
    assert raw == 2**15 + 2**9 + 2**8 + 2**7 + 2**4 == 0x8390
    assert lux_from_raw(raw) == pytest.approx(28066.667, abs=1e-3)
    assert round(lux_from_raw(raw)) == 28067


def test_formula_on_another_code() -> None:
    # 0x8301 = 33537 counts: 33537 / 1.2 = 27947.5 lx by the datasheet's formula.
    assert lux_from_raw(0x8301) == pytest.approx(27947.5)


def test_resolution_and_full_scale_at_the_default_mtreg() -> None:
    assert _lsb() == pytest.approx(1 / 1.2)  # 0.83 lx per count
    assert lux_from_raw(0xFFFF) == pytest.approx(54612.5)


def test_mtreg_scales_the_result() -> None:
    # p. 11: lux = counts / 1.2 * (69 / MTreg); H-resolution mode2 halves it again.
    assert lux_from_raw(1000, 138) == pytest.approx(1000 / 1.2 / 2)
    assert lux_from_raw(1000, 31) == pytest.approx(1000 / 1.2 * 69 / 31)
    assert lux_from_raw(1, 254, mode2=True) == pytest.approx(0.1132, abs=1e-4)  # finest step
    assert lux_from_raw(0xFFFF, 31) == pytest.approx(121557, abs=1)  # widest range


def test_measurement_time_scales_with_mtreg() -> None:
    assert measurement_time_max() == pytest.approx(0.180)  # p. 2: t_HR max 180 ms
    assert measurement_time_max(254) == pytest.approx(0.180 * 254 / 69)
    assert measurement_time_max(31) == pytest.approx(0.0809, abs=1e-4)


def test_mtreg_instructions_split_the_byte() -> None:
    # 01000_MT[7:5] then 011_MT[4:0]: 69 = 010_00101, 138 = 100_01010, 254 = 111_11110.
    assert mtreg_instructions(69) == (0x42, 0x65)
    assert mtreg_instructions(138) == (0x44, 0x6A)
    assert mtreg_instructions(254) == (0x47, 0x7E)
    assert mtreg_instructions(31) == (0x40, 0x7F)
    with pytest.raises(ValueError, match=r"31\.\.254"):
        mtreg_instructions(30)


@given(st.integers(0, 0xFFFF), st.integers(31, 254), st.booleans())
def test_inverse_is_exact_on_every_code(raw: int, mtreg: int, mode2: bool) -> None:
    assert raw_from_lux(lux_from_raw(raw, mtreg, mode2=mode2), mtreg, mode2=mode2) == raw


def test_inverse_saturates_like_the_counter() -> None:
    assert raw_from_lux(-5.0) == 0
    assert raw_from_lux(1e6) == 0xFFFF


@pytest.mark.parametrize(
    ("options", "mtreg"), [({}, 69), (None, 69), ({"mtreg": 31}, 31), ({"mtreg": 254}, 254)]
)
def test_parse_options(options: dict[str, int] | None, mtreg: int) -> None:
    assert parse_options(options) == mtreg


@pytest.mark.parametrize("value", [30, 255, "69", 69.0, True])
def test_parse_options_refuses_bad_mtreg(value: Any) -> None:
    with pytest.raises(SensorSettingsError, match="'mtreg'"):
        parse_options({"mtreg": value})


def test_parse_options_refuses_unknown_names() -> None:
    with pytest.raises(SensorSettingsError, match="'gain'"):
        parse_options({"gain": 2})


# -- the driver on the emulator ---------------------------------------------------------------


@settings(deadline=None)
@given(data=st.data(), mtreg=st.integers(31, 254))
def test_round_trip_across_the_range_at_every_mtreg(data: st.DataObject, mtreg: int) -> None:
    rig = Rig(mtreg=mtreg)
    # Up to the last code below saturation: 0xFFFF itself is refused as saturated.
    lux = data.draw(st.floats(0, lux_from_raw(0xFFFE, mtreg)), label="lux")
    rig.chip.set_illuminance(lux)
    assert rig.lux() == pytest.approx(lux, abs=_lsb(mtreg) / 2 + 1e-9)


def test_reading_has_units_and_ok_status(rig: Rig) -> None:
    rig.chip.set_illuminance(500.0)
    reading = rig.sensor.read()
    assert reading.values["illuminance"].unit == "lx"
    assert reading.timestamp == rig.clock()
    assert rig.sensor.status.health is Health.OK


def test_driver_waits_the_datasheet_maximum(rig: Rig) -> None:
    before = rig.timer.monotonic()
    rig.sensor.read()
    assert rig.timer.monotonic() - before == pytest.approx(0.180)
    slow = Rig(mtreg=254)
    before = slow.timer.monotonic()
    slow.sensor.read()
    assert slow.timer.monotonic() - before == pytest.approx(0.180 * 254 / 69)


def test_chip_left_powered_down_between_reads(rig: Rig) -> None:
    rig.sensor.read()
    assert not rig.chip.powered  # one-time mode powers down by itself


def test_mtreg_is_restored_after_a_power_cycle_the_driver_never_saw() -> None:
    rig = Rig(mtreg=138)
    rig.chip.set_illuminance(1000.0)
    assert rig.lux() == pytest.approx(1000.0, abs=_lsb(138))
    rig.chip.power_on()  # brown-out: MTreg back to 69
    assert rig.chip.mtreg == 69
    assert rig.lux() == pytest.approx(1000.0, abs=_lsb(138))
    assert rig.chip.mtreg == 138


def test_saturation_is_a_data_error_and_a_lower_mtreg_measures_it() -> None:
    rig = Rig()
    rig.chip.set_illuminance(80_000.0)  # bright sun, beyond 54612 lx at MTreg 69
    with pytest.raises(DataError, match=r"saturated.*54612 lx at MTreg 69.*'mtreg'"):
        rig.sensor.read()
    assert rig.sensor.status.health is Health.FAULTED
    wide = Rig(mtreg=31)
    wide.chip.set_illuminance(80_000.0)
    assert wide.lux() == pytest.approx(80_000.0, abs=_lsb(31))


def test_stuck_high_is_a_data_error_until_cleared(rig: Rig) -> None:
    rig.bus.stick_bits(rig.address, or_mask=0xFF)
    with pytest.raises(DataError, match="stuck high"):
        rig.sensor.read()
    rig.bus.clear_faults(rig.address)
    rig.chip.set_illuminance(10.0)
    assert rig.lux() == pytest.approx(10.0, abs=_lsb())


def test_nack_eio_and_unplug(rig: Rig) -> None:
    rig.bus.inject_nack(rig.address)
    with pytest.raises(SensorMissingError, match="bh1750 at 0x23: power on"):
        rig.sensor.read()
    assert rig.sensor.status.health is Health.MISSING
    rig.bus.inject_error(rig.address, errno.EIO)
    with pytest.raises(BusError):
        rig.sensor.read()
    assert rig.sensor.status.health is Health.FAULTED
    rig.bus.unplug(rig.address)
    with pytest.raises(SensorMissingError):
        rig.sensor.read()
    rig.bus.replug(rig.address)
    rig.chip.set_illuminance(250.0)
    assert rig.lux() == pytest.approx(250.0, abs=_lsb())
    assert rig.sensor.status.health is Health.OK
    assert rig.sensor.status.consecutive_errors == 0


def test_signal_dropout_is_a_bus_error_for_that_reading_only(rig: Rig) -> None:
    rig.chip.set_signal("illuminance", Constant(math.nan))
    with pytest.raises(BusError, match="read result") as info:
        rig.sensor.read()
    assert info.value.errno == errno.EIO
    rig.chip.set_illuminance(42.0)
    assert rig.lux() == pytest.approx(42.0, abs=_lsb())


def test_a_measurement_that_never_completes_reads_zero_not_a_stale_value() -> None:
    # The chip has no busy flag, so this cannot be detected; the reset before each measurement
    # at least makes it read 0 lx rather than repeat the previous value.
    rig = Rig()
    rig.chip.set_illuminance(700.0)
    assert rig.lux() == pytest.approx(700.0, abs=_lsb())
    rig.chip.conversion_time = 10.0
    assert rig.lux() == 0.0


def test_open_checks_that_the_chip_answers(bus: FakeI2CBus, timer: VirtualTimer) -> None:
    with pytest.raises(SensorMissingError, match="bh1750 at 0x23: power on"):
        BH1750(bus, timer=timer).open()


def test_invalid_address_and_mtreg_are_refused(bus: FakeI2CBus) -> None:
    with pytest.raises(ValueError, match="0x23 or 0x5C"):
        BH1750(bus, 0x24)
    with pytest.raises(ValueError, match=r"31\.\.254"):
        BH1750(bus, mtreg=300)


def test_high_address() -> None:
    rig = Rig(address=ADDRESS_HIGH)
    rig.chip.set_illuminance(3.0)
    assert rig.lux() == pytest.approx(3.0, abs=_lsb())


# -- the registry ----------------------------------------------------------------------------


def test_open_sensor_with_mtreg_option() -> None:
    backend = EmulatedBackend(clock=ManualClock())
    sensor = open_sensor(
        "bh1750",
        backend=backend,
        address=0x5C,
        options={"mtreg": 138},
        signals={"illuminance": Constant(321.0)},
    )
    assert isinstance(sensor, BH1750)
    assert sensor.mtreg == 138
    assert sensor.read().values["illuminance"].value == pytest.approx(321.0, abs=_lsb(138))


def test_open_sensor_with_default_signal() -> None:
    sensor = open_sensor("bh1750", backend=EmulatedBackend(clock=ManualClock(), seed=2))
    assert sensor.read().values["illuminance"].value >= 0.0


def test_open_sensor_refuses_bad_options() -> None:
    backend = EmulatedBackend(clock=ManualClock())
    with pytest.raises(SensorSettingsError, match=r"'mtreg' must be 31\.\.254"):
        open_sensor("bh1750", backend=backend, options={"mtreg": 20})
    with pytest.raises(SensorSettingsError, match="bh1750 has no option 'mtregg'; options: mtreg"):
        open_sensor("bh1750", backend=backend, options={"mtregg": 20})


# -- the emulator on its own -----------------------------------------------------------------


def _read_raw(bus: FakeI2CBus, address: int = ADDRESS_LOW) -> int:
    data = i2c_read(bus, address, 2)
    return (data[0] << 8) | data[1]


@pytest.fixture
def chip(bus: FakeI2CBus, timer: VirtualTimer) -> BH1750Emulator:
    device = BH1750Emulator(timer=timer, signals={"illuminance": Constant(120.0)})
    bus.attach(ADDRESS_LOW, device)
    return device


def test_reset_is_ignored_while_powered_down(
    bus: FakeI2CBus, timer: VirtualTimer, chip: BH1750Emulator
) -> None:
    bus.write_byte(ADDRESS_LOW, ONE_TIME_H_RES)
    timer.sleep(0.120)
    assert _read_raw(bus) == raw_from_lux(120.0)
    bus.write_byte(ADDRESS_LOW, RESET)  # powered down after the one-time measurement
    assert _read_raw(bus) == raw_from_lux(120.0)
    bus.write_byte(ADDRESS_LOW, POWER_ON)
    bus.write_byte(ADDRESS_LOW, RESET)
    assert _read_raw(bus) == 0


def test_read_before_completion_returns_the_register_as_it_stands(
    bus: FakeI2CBus, timer: VirtualTimer, chip: BH1750Emulator
) -> None:
    bus.write_byte(ADDRESS_LOW, ONE_TIME_H_RES)
    timer.sleep(0.100)  # typical is 120 ms
    assert _read_raw(bus) == 0
    timer.sleep(0.020)
    assert _read_raw(bus) == raw_from_lux(120.0)


def test_continuous_mode_keeps_measuring(
    bus: FakeI2CBus, timer: VirtualTimer, chip: BH1750Emulator
) -> None:
    bus.write_byte(ADDRESS_LOW, CONTINUOUS_H_RES)
    timer.sleep(0.120)
    assert _read_raw(bus) == raw_from_lux(120.0)
    chip.set_illuminance(600.0)
    timer.sleep(0.240)
    assert _read_raw(bus) == raw_from_lux(600.0)
    assert chip.powered
    bus.write_byte(ADDRESS_LOW, POWER_DOWN)
    assert not chip.powered


def test_resolution_modes(bus: FakeI2CBus, timer: VirtualTimer, chip: BH1750Emulator) -> None:
    chip.set_illuminance(101.0)
    bus.write_byte(ADDRESS_LOW, ONE_TIME_H_RES2)
    timer.sleep(0.120)
    assert _read_raw(bus) == raw_from_lux(101.0, mode2=True)  # two counts per lx unit
    bus.write_byte(ADDRESS_LOW, ONE_TIME_L_RES)
    timer.sleep(0.016)
    assert _read_raw(bus) == raw_from_lux(100.0)  # 4 lx steps


def test_mtreg_halves_and_measurement_time(
    bus: FakeI2CBus, timer: VirtualTimer, chip: BH1750Emulator
) -> None:
    high, low = mtreg_instructions(138)
    bus.write_byte(ADDRESS_LOW, high)
    assert chip.mtreg == 0b100_00101  # high bits changed, low bits still from 69
    bus.write_byte(ADDRESS_LOW, low)
    assert chip.mtreg == 138
    bus.write_byte(ADDRESS_LOW, ONE_TIME_H_RES)
    timer.sleep(0.120)
    assert _read_raw(bus) == 0  # twice the integration time: not done yet
    timer.sleep(0.120)
    assert _read_raw(bus) == raw_from_lux(120.0, 138)


def test_emulator_rejects_unknown_quantities() -> None:
    with pytest.raises(ValueError, match="lux"):
        BH1750Emulator(signals={"lux": Constant(1.0)})
