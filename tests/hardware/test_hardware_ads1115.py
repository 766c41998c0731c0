"""ADS1115: codes and volts against the datasheet, the driver against its register-level emulator.

Figures from the ADS111x datasheet (SBAS444): table 3, full-scale range and LSB size per PGA
setting (±6.144 V: 187.5 µV ... ±0.256 V: 7.8125 µV); table 4, ideal output codes (+FS and
beyond 0x7FFF, +1 LSB 0x0001, 0 V 0x0000, -1 LSB 0xFFFF, -FS and beyond 0x8000); the config
register layout and its reset value 0x8583 (table 8); the data rates 8..860 SPS with ±10 %
variation.
"""

from __future__ import annotations

import errno
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgetwin.hardware import EmulatedBackend, Health, open_sensor
from edgetwin.hardware.bus import FakeI2CBus
from edgetwin.hardware.drivers.ads1115 import (
    ADDRESS_GND,
    ADS1115,
    CONFIG_RESET,
    DATA_RATES,
    GAINS,
    OS,
    REG_CONFIG,
    REG_CONVERSION,
    REG_HI_THRESH,
    REG_LO_THRESH,
    ADS1115Emulator,
    Settings,
    config_word,
    conversion_time_max,
    parse_options,
    raw_from_volts,
    signed16,
    volts_from_raw,
)
from edgetwin.hardware.errors import (
    BusError,
    ChipIdError,
    DataError,
    SensorMissingError,
    SensorSettingsError,
    SensorTimeoutError,
)
from edgetwin.hardware.sensor import BackendKind
from edgetwin.hardware.signals import Constant
from edgetwin.hardware.timing import ManualClock, VirtualTimer

LSB_BY_GAIN = {
    6.144: 187.5e-6,
    4.096: 125e-6,
    2.048: 62.5e-6,
    1.024: 31.25e-6,
    0.512: 15.625e-6,
    0.256: 7.8125e-6,
}
"""Table 3: full-scale range (±V) and the LSB size it gives."""


class Rig:
    """An ADS1115 emulator on a fake bus, and the real driver on it."""

    def __init__(
        self,
        address: int = ADDRESS_GND,
        settings: Settings | None = None,
        **emulator_options: Any,
    ) -> None:
        self.clock = ManualClock()
        self.timer = VirtualTimer()
        self.bus = FakeI2CBus(1)
        self.address = address
        self.chip = ADS1115Emulator(clock=self.clock, timer=self.timer, **emulator_options)
        self.bus.attach(address, self.chip)
        self.sensor = ADS1115(
            self.bus,
            address,
            settings=settings,
            backend=BackendKind.EMULATED,
            clock=self.clock,
            timer=self.timer,
        )

    def volts(self) -> dict[str, float]:
        return {name: m.value for name, m in self.sensor.read().values.items()}


@pytest.fixture
def rig() -> Rig:
    rig = Rig()
    rig.sensor.open()
    for channel, volts in enumerate((0.5, 1.0, 1.5, 2.0)):
        rig.chip.set_voltage(channel, volts)
    return rig


def _all_signals(volts: float = 1.0) -> dict[str, Constant]:
    return {f"voltage_{n}": Constant(volts + n / 10) for n in range(4)}


# -- codes and volts (pure functions) ---------------------------------------------------------


@pytest.mark.parametrize(("gain", "lsb"), sorted(LSB_BY_GAIN.items()))
def test_lsb_size_per_full_scale_range(gain: float, lsb: float) -> None:
    assert volts_from_raw(1, gain) == pytest.approx(lsb, rel=1e-12)
    assert volts_from_raw(-0x8000, gain) == -gain


@pytest.mark.parametrize("gain", GAINS)
def test_ideal_output_codes(gain: float) -> None:
    lsb = gain / 2**15
    assert raw_from_volts(gain * (2**15 - 1) / 2**15, gain) == 0x7FFF
    assert raw_from_volts(gain, gain) == 0x7FFF  # +FS and beyond clip
    assert raw_from_volts(2 * gain, gain) == 0x7FFF
    assert raw_from_volts(lsb, gain) == 0x0001
    assert raw_from_volts(0.0, gain) == 0
    assert raw_from_volts(-lsb, gain) & 0xFFFF == 0xFFFF
    assert raw_from_volts(-gain, gain) & 0xFFFF == 0x8000
    assert raw_from_volts(-2 * gain, gain) & 0xFFFF == 0x8000


def test_signed_codes() -> None:
    assert signed16(0x7F, 0xFF) == 32767
    assert signed16(0x00, 0x01) == 1
    assert signed16(0xFF, 0xFF) == -1
    assert signed16(0x80, 0x00) == -32768


@given(st.integers(-0x8000, 0x7FFF), st.sampled_from(GAINS))
def test_inverse_is_exact_on_every_code(code: int, gain: float) -> None:
    assert raw_from_volts(volts_from_raw(code, gain), gain) == code


def test_config_word_layout() -> None:
    # OS=1, MUX=100 (AIN0-GND), PGA=010 (±2.048 V), MODE=1, DR=100 (128 SPS), COMP_QUE=11.
    assert config_word(0, 2.048, 128, start=True) == 0xC583
    assert config_word(3, 2.048, 128, start=True) == 0xF583  # MUX=111: AIN3-GND
    assert config_word(0, 6.144, 860, start=False) == 0x41E3
    # The reset value is the same word with MUX=000 (AIN0-AIN1).
    assert config_word(0, 2.048, 128, start=True) & ~(0b111 << 12) == CONFIG_RESET == 0x8583


def test_conversion_time_bound() -> None:
    assert conversion_time_max(128) == pytest.approx(1.1 / 128 + 25e-6)  # 8.6 ms
    assert conversion_time_max(8) == pytest.approx(0.1375, abs=1e-4)


def test_parse_options_defaults() -> None:
    assert parse_options(None) == Settings(gain=2.048, channels=(0, 1, 2, 3), data_rate=128)
    assert parse_options({}) == Settings()


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"gain": 4.096}, Settings(gain=4.096)),
        ({"gain": 1.024, "data_rate": 860}, Settings(gain=1.024, data_rate=860)),
        ({"channels": "0, 2"}, Settings(channels=(0, 2))),
        ({"channels": "3,1"}, Settings(channels=(1, 3))),
        ({"channels": 2}, Settings(channels=(2,))),
        ({"data_rate": 8}, Settings(data_rate=8)),
    ],
)
def test_parse_options(options: dict[str, Any], expected: Settings) -> None:
    assert parse_options(options) == expected


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"gain": 3.0}, "'gain'"),
        ({"gain": "2.048"}, "'gain'"),
        ({"gain": True}, "'gain'"),
        ({"channels": ""}, "'channels'"),
        ({"channels": "4"}, "'channels'"),
        ({"channels": "0,0"}, "'channels'"),
        ({"channels": True}, "'channels'"),
        ({"data_rate": 100}, "'data_rate'"),
        ({"data_rate": 128.0}, "'data_rate'"),
        ({"rate": 128}, "'rate'"),
    ],
)
def test_parse_options_refusals_name_the_option(options: dict[str, Any], named: str) -> None:
    with pytest.raises(SensorSettingsError, match=named):
        parse_options(options)


# -- the driver on the emulator ---------------------------------------------------------------


@settings(deadline=None)
@given(data=st.data(), gain=st.sampled_from(GAINS))
def test_round_trip_across_the_range_at_every_gain(data: st.DataObject, gain: float) -> None:
    rig = Rig(settings=Settings(gain=gain))
    top = gain * (2**15 - 1) / 2**15
    inputs = [data.draw(st.floats(-gain, top), label=f"AIN{n}") for n in range(4)]
    for channel, volts in enumerate(inputs):
        rig.chip.set_voltage(channel, volts)
    values = rig.volts()
    for channel, volts in enumerate(inputs):
        assert values[f"voltage_{channel}"] == pytest.approx(volts, abs=LSB_BY_GAIN[gain] / 2)


def test_each_channel_is_converted_on_its_own_input(rig: Rig) -> None:
    values = rig.volts()
    assert values == pytest.approx(
        {"voltage_0": 0.5, "voltage_1": 1.0, "voltage_2": 1.5, "voltage_3": 2.0}, abs=62.5e-6
    )


def test_units_and_only_the_configured_channels() -> None:
    rig = Rig(settings=Settings(channels=(1, 3)))
    rig.chip.set_voltage(1, 0.25)
    rig.chip.set_voltage(3, 0.75)
    reading = rig.sensor.open().read()
    assert {n: m.unit for n, m in reading.values.items()} == {"voltage_1": "V", "voltage_3": "V"}
    assert [q.name for q in rig.sensor.quantities] == ["voltage_1", "voltage_3"]
    assert [q.name for q in ADS1115.quantities] == [f"voltage_{n}" for n in range(4)]


def test_input_beyond_full_scale_clips_like_the_adc() -> None:
    rig = Rig(settings=Settings(gain=2.048, channels=(0, 1)))
    rig.chip.set_voltage(0, 3.3)
    rig.chip.set_voltage(1, -0.3)
    values = rig.volts()
    assert values["voltage_0"] == 2.048 * 32767 / 32768  # 0x7FFF
    assert values["voltage_1"] == pytest.approx(-0.3, abs=62.5e-6)
    narrow = Rig(settings=Settings(gain=0.256, channels=(0,)))
    narrow.chip.set_voltage(0, -1.0)
    assert narrow.volts()["voltage_0"] == -0.256  # 0x8000


@pytest.mark.parametrize("data_rate", DATA_RATES)
def test_conversion_waits_follow_the_data_rate(data_rate: int) -> None:
    rig = Rig(settings=Settings(channels=(0,), data_rate=data_rate))
    before = rig.timer.monotonic()
    rig.sensor.read()
    elapsed = rig.timer.monotonic() - before
    assert 1 / data_rate <= elapsed <= conversion_time_max(data_rate)


def test_slow_oscillator_is_waited_for() -> None:
    rig = Rig(settings=Settings(channels=(2,)), conversion_time=1.1 / 128)
    rig.chip.set_voltage(2, 1.2345)
    assert rig.volts()["voltage_2"] == pytest.approx(1.2345, abs=62.5e-6)


def test_conversion_that_never_ends_times_out_then_recovers() -> None:
    rig = Rig(settings=Settings(channels=(0,)), conversion_time=1.0)
    with pytest.raises(SensorTimeoutError, match=r"AIN0 conversion still running after 8\.6 ms"):
        rig.sensor.read()
    assert rig.sensor.status.health is Health.FAULTED
    rig.chip.conversion_time = None
    rig.timer.sleep(1.0)  # the stuck conversion ends at last
    rig.chip.set_voltage(0, 0.125)
    assert rig.volts()["voltage_0"] == pytest.approx(0.125, abs=62.5e-6)


# All ones, all zeros, and data bit 2 stuck low (PGA bit 10 of the config's first byte).
@pytest.mark.parametrize(("and_mask", "or_mask"), [(0xFF, 0xFF), (0x00, 0x00), (0xFB, 0x00)])
def test_stuck_bits_are_caught_by_the_config_read_back(
    rig: Rig, and_mask: int, or_mask: int
) -> None:
    rig.bus.stick_bits(rig.address, and_mask=and_mask, or_mask=or_mask)
    with pytest.raises(DataError, match="config reads back"):
        rig.sensor.read()
    assert rig.sensor.status.health is Health.FAULTED
    rig.bus.clear_faults(rig.address)
    assert rig.volts()["voltage_3"] == pytest.approx(2.0, abs=62.5e-6)
    assert rig.sensor.status.health is Health.OK


def test_a_flipped_bit_in_the_config_read_back_is_a_data_error(rig: Rig) -> None:
    rig.bus.corrupt_reads(rig.address, count=1, mask=0x01)  # MODE bit of the first poll
    with pytest.raises(DataError):
        rig.sensor.read()
    rig.volts()
    assert rig.sensor.status.health is Health.OK


def test_open_refuses_a_register_that_does_not_hold_the_config() -> None:
    rig = Rig()
    rig.bus.stick_bits(rig.address, and_mask=0x00)
    with pytest.raises(ChipIdError, match="not an ADS1115"):
        rig.sensor.open()


def test_nack_eio_unplug_and_recovery(rig: Rig) -> None:
    rig.bus.inject_nack(rig.address)
    with pytest.raises(SensorMissingError, match="ads1115 at 0x48: start conversion of AIN0"):
        rig.sensor.read()
    assert rig.sensor.status.health is Health.MISSING
    rig.bus.inject_error(rig.address, errno.EIO)
    with pytest.raises(BusError):
        rig.sensor.read()
    assert rig.sensor.status.health is Health.FAULTED
    rig.bus.unplug(rig.address)
    with pytest.raises(SensorMissingError):
        rig.sensor.read()
    rig.bus.replug(rig.address)  # power-up keeps the emulator's inputs
    assert rig.volts()["voltage_1"] == pytest.approx(1.0, abs=62.5e-6)
    assert rig.sensor.status.consecutive_errors == 0


def test_signal_dropout_is_a_bus_error_for_that_reading_only(rig: Rig) -> None:
    rig.chip.set_signal("voltage_2", Constant(math.nan))
    with pytest.raises(BusError, match="read AIN2 result") as info:
        rig.sensor.read()
    assert info.value.errno == errno.EIO
    rig.chip.set_voltage(2, 1.75)
    assert rig.volts()["voltage_2"] == pytest.approx(1.75, abs=62.5e-6)


def test_nothing_at_the_address_is_missing(bus: FakeI2CBus, timer: VirtualTimer) -> None:
    with pytest.raises(SensorMissingError, match="ads1115 at 0x48: write config"):
        ADS1115(bus, timer=timer).open()


def test_invalid_address_is_refused(bus: FakeI2CBus) -> None:
    with pytest.raises(ValueError, match=r"0x48\.\.0x4B"):
        ADS1115(bus, 0x50)


# -- the registry ----------------------------------------------------------------------------


@pytest.mark.parametrize("address", [0x48, 0x49, 0x4A, 0x4B])
def test_open_sensor_at_each_address_with_options(address: int) -> None:
    backend = EmulatedBackend(clock=ManualClock())
    sensor = open_sensor(
        "ads1115",
        backend=backend,
        address=address,
        options={"gain": 4.096, "channels": "0,3", "data_rate": 250},
        signals=_all_signals(1.0),
    )
    assert isinstance(sensor, ADS1115)
    assert sensor.settings == Settings(gain=4.096, channels=(0, 3), data_rate=250)
    values = sensor.read().values
    assert set(values) == {"voltage_0", "voltage_3"}
    assert values["voltage_0"].value == pytest.approx(1.0, abs=125e-6)
    assert values["voltage_3"].value == pytest.approx(1.3, abs=125e-6)


def test_open_sensor_refuses_bad_options() -> None:
    backend = EmulatedBackend(clock=ManualClock())
    with pytest.raises(SensorSettingsError, match=r"'gain'.*6\.144, 4\.096"):
        open_sensor("ads1115", backend=backend, options={"gain": 5}, signals=_all_signals())
    with pytest.raises(
        SensorSettingsError, match="ads1115 has no option 'pga'; options: gain, channels"
    ):
        open_sensor("ads1115", backend=backend, options={"pga": 1}, signals=_all_signals())


# -- the emulator on its own -----------------------------------------------------------------


def _word(bus: FakeI2CBus, register: int) -> int:
    msb, lsb = bus.read_i2c_block_data(ADDRESS_GND, register, 2)
    return (msb << 8) | lsb


def _write(bus: FakeI2CBus, register: int, value: int) -> None:
    bus.write_i2c_block_data(ADDRESS_GND, register, [value >> 8, value & 0xFF])


@pytest.fixture
def chip(bus: FakeI2CBus, timer: VirtualTimer) -> ADS1115Emulator:
    device = ADS1115Emulator(timer=timer, signals=_all_signals(0.5))
    bus.attach(ADDRESS_GND, device)
    return device


def test_power_on_registers(bus: FakeI2CBus, chip: ADS1115Emulator) -> None:
    assert _word(bus, REG_CONFIG) == 0x8583
    assert _word(bus, REG_CONVERSION) == 0
    assert _word(bus, REG_LO_THRESH) == 0x8000
    assert _word(bus, REG_HI_THRESH) == 0x7FFF


def test_single_shot_os_bit_and_result(
    bus: FakeI2CBus, timer: VirtualTimer, chip: ADS1115Emulator
) -> None:
    _write(bus, REG_CONFIG, config_word(1, 2.048, 128, start=True))
    assert not _word(bus, REG_CONFIG) & OS  # converting
    timer.sleep(1 / 128)
    assert not _word(bus, REG_CONFIG) & OS  # 25 µs wake-up still to go
    timer.sleep(25e-6)
    assert _word(bus, REG_CONFIG) == config_word(1, 2.048, 128, start=True)
    assert _word(bus, REG_CONVERSION) == raw_from_volts(0.6, 2.048)


def test_conversion_register_is_read_only(bus: FakeI2CBus, chip: ADS1115Emulator) -> None:
    _write(bus, REG_CONVERSION, 0x1234)
    assert _word(bus, REG_CONVERSION) == 0


def test_incomplete_register_write_is_dropped(bus: FakeI2CBus, chip: ADS1115Emulator) -> None:
    bus.write_byte_data(ADDRESS_GND, REG_CONFIG, 0x00)  # pointer and one byte only
    assert _word(bus, REG_CONFIG) == 0x8583


def test_differential_inputs(bus: FakeI2CBus, timer: VirtualTimer, chip: ADS1115Emulator) -> None:
    # MUX=001: AIN0 - AIN3 = 0.5 - 0.8 V.
    _write(bus, REG_CONFIG, OS | (0b001 << 12) | (0b010 << 9) | (1 << 8) | (0b100 << 5) | 0b11)
    timer.sleep(conversion_time_max(128))
    assert signed16(*bus.read_i2c_block_data(ADDRESS_GND, REG_CONVERSION, 2)) == raw_from_volts(
        -0.3, 2.048
    )


def test_continuous_mode_keeps_converting(
    bus: FakeI2CBus, timer: VirtualTimer, chip: ADS1115Emulator
) -> None:
    continuous = config_word(0, 2.048, 860, start=False) & ~(1 << 8)
    _write(bus, REG_CONFIG, continuous)
    assert not _word(bus, REG_CONFIG) & OS
    timer.sleep(2 / 860)
    assert _word(bus, REG_CONVERSION) == raw_from_volts(0.5, 2.048)
    chip.set_voltage(0, 1.0)
    timer.sleep(2 / 860)
    assert _word(bus, REG_CONVERSION) == raw_from_volts(1.0, 2.048)


def test_os_is_ignored_mid_conversion(
    bus: FakeI2CBus, timer: VirtualTimer, chip: ADS1115Emulator
) -> None:
    _write(bus, REG_CONFIG, config_word(0, 2.048, 8, start=True))
    timer.sleep(0.1)
    _write(bus, REG_CONFIG, config_word(0, 2.048, 8, start=True))  # does not restart it
    timer.sleep(0.03)
    assert _word(bus, REG_CONFIG) & OS


def test_emulator_rejects_unknown_quantities() -> None:
    with pytest.raises(ValueError, match="voltage_4"):
        ADS1115Emulator(signals={"voltage_4": Constant(1.0)})
