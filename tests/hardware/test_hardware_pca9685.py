"""PCA9685: prescale and duty maths against the data sheet, the emulator's register rules, and
the driver against the emulated chip behind a fake bus.

Figures from the NXP PCA9685 data sheet: the prescale formula of 7.3.5 with its 200 Hz example
(PRE_SCALE 30, 0x1E), the 24..1526 Hz range, the minimum PRE_SCALE of 3, the LED register
examples (ON 0x199 / OFF 0x4CC: delay 10 %, duty 20 %; ON 0xE66 / OFF 0xCCC: delay 90 %, duty
90 %, wrapping), the restart procedure of 7.3.1.1 and the register summary's power-up values.
"""

from __future__ import annotations

import errno
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgetwin.hardware import EmulatedBackend, open_output
from edgetwin.hardware.bus import FakeI2CBus, I2CDevice
from edgetwin.hardware.drivers.pca9685 import (
    AI,
    ALL_CALL_ADDRESS,
    ALL_LED_OFF_H,
    ALL_LED_ON_L,
    ALLCALL,
    DEFAULT_ADDRESS,
    FULL,
    INVRT,
    LED0_ON_L,
    MODE1,
    MODE2,
    PRE_SCALE,
    RESTART,
    SLEEP,
    PCA9685Emulator,
    PCA9685Output,
    duty_from_registers,
    duty_registers,
    frequency_for,
    prescale_for,
    quantised,
)
from edgetwin.hardware.errors import (
    BusError,
    DataError,
    HardwareError,
    OutputRangeError,
    OutputSettingsError,
    SensorMissingError,
)
from edgetwin.hardware.sensor import BackendKind
from edgetwin.hardware.timing import VirtualTimer


class Rig:
    """A PCA9685 emulator on a fake bus, and the real driver for one channel of it."""

    def __init__(self, address: int = DEFAULT_ADDRESS) -> None:
        self.timer = VirtualTimer()
        self.bus = FakeI2CBus(1)
        self.address = address
        self.chip = PCA9685Emulator(timer=self.timer)
        self.bus.attach(address, self.chip)

    def output(self, channel: int = 0, **kwargs: Any) -> PCA9685Output:
        return PCA9685Output(
            self.bus,
            self.address,
            channel,
            backend=BackendKind.EMULATED,
            timer=self.timer,
            **kwargs,
        ).open()

    def write(self, register: int, value: int) -> None:
        self.bus.write_byte_data(self.address, register, value)

    def read(self, register: int) -> int:
        return self.bus.read_byte_data(self.address, register)


# -- pure functions --------------------------------------------------------------------------


def test_prescale_matches_the_data_sheet() -> None:
    assert prescale_for(200) == 0x1E  # 7.3.5's example
    assert prescale_for(1526) == 3  # the top of the range is the minimum PRE_SCALE
    assert prescale_for(24) == 253
    assert prescale_for(50) == 121
    assert frequency_for(0x1E) == pytest.approx(196.89, abs=0.01)  # "200 Hz" at power-up
    for bad in (23.9, 1527.0, float("nan")):
        with pytest.raises(ValueError, match=r"24\.\.1526 Hz"):
            prescale_for(bad)


@given(st.floats(24, 1526))
def test_the_applied_frequency_is_the_nearest_the_prescaler_can_make(frequency: float) -> None:
    prescale = prescale_for(frequency)
    assert 3 <= prescale <= 255
    applied = frequency_for(prescale)
    # No other PRE_SCALE gets closer in period (7.3.5 rounds the period).
    for other in (prescale - 1, prescale + 1):
        if 3 <= other <= 255:
            assert (
                abs(1 / frequency_for(other) - 1 / frequency)
                >= abs(1 / applied - 1 / frequency) - 1e-12
            )


def test_register_examples_of_the_data_sheet() -> None:
    # Example 1: delay 10 %, duty 20 %: ON 0x199 (409), OFF 0x4CC (1228), 819 counts high.
    assert duty_from_registers(0x99, 0x01, 0xCC, 0x04) == 819 / 4096
    # Example 2: delay 90 %, duty 90 %: ON 0xE66 (3686), OFF 0xCCC (3276), wrapping past 4095.
    assert duty_from_registers(0x66, 0x0E, 0xCC, 0x0C) == 3686 / 4096
    # Full on, full off, and full off winning over full on.
    assert duty_from_registers(0, FULL, 0, 0) == 1.0
    assert duty_from_registers(0, 0, 0, FULL) == 0.0
    assert duty_from_registers(0, FULL, 0, FULL) == 0.0


def test_duty_registers_use_the_full_bits_at_the_ends() -> None:
    assert duty_registers(0.0) == (0, 0, 0, FULL)
    assert duty_registers(1.0) == (0, FULL, 0, 0)
    assert duty_registers(0.5) == (0, 0, 0x00, 0x08)
    assert duty_registers(1 / 8192) == (0, 0, 1, 0)  # half a step rounds up
    # Within half a step of the ends, the ends.
    assert duty_registers(0.4 / 4096) == (0, 0, 0, FULL)
    assert duty_registers(1 - 0.4 / 4096) == (0, FULL, 0, 0)


@given(st.floats(0, 1))
def test_quantised_duty_is_what_the_registers_say_within_half_a_step(duty: float) -> None:
    applied = quantised(duty)
    assert duty_from_registers(*duty_registers(duty)) == applied
    assert abs(applied - duty) <= 0.5 / 4096
    assert applied * 4096 == int(applied * 4096)


# -- the emulated chip, by its registers -------------------------------------------------------


def test_power_up_state_of_the_register_summary() -> None:
    rig = Rig()
    assert rig.read(MODE1) == SLEEP | ALLCALL
    assert rig.read(MODE2) == 0x04
    assert rig.read(PRE_SCALE) == 0x1E
    assert rig.chip.channel_registers(7) == (0, 0, 0, FULL)
    assert all(rig.chip.output_duty(channel) == 0.0 for channel in range(16))


def test_pre_scale_is_writable_only_while_asleep_and_never_below_3() -> None:
    rig = Rig()
    rig.write(MODE1, AI)  # awake
    rig.write(PRE_SCALE, 100)
    assert rig.read(PRE_SCALE) == 0x1E  # blocked: SLEEP is 0
    rig.write(MODE1, AI | SLEEP)
    rig.write(PRE_SCALE, 100)
    assert rig.read(PRE_SCALE) == 100
    rig.write(PRE_SCALE, 1)
    assert rig.read(PRE_SCALE) == 3  # the hardware forces 3


def test_outputs_run_only_while_awake() -> None:
    rig = Rig()
    rig.bus.write_i2c_block_data(rig.address, LED0_ON_L, [0])  # AI off: one register at a time
    for offset, value in enumerate((0, 0, 0x00, 0x08)):
        rig.write(LED0_ON_L + offset, value)
    assert rig.chip.output_duty(0) == 0.0  # asleep at power-up
    rig.write(MODE1, ALLCALL)
    assert rig.chip.output_duty(0) == 0.5


def test_sleep_with_channels_running_holds_them_until_a_restart_500_us_after_waking() -> None:
    rig = Rig()
    rig.write(MODE1, AI)
    rig.bus.write_i2c_block_data(rig.address, LED0_ON_L + 4 * 2, [0, 0, 0x00, 0x04])
    assert rig.chip.output_duty(2) == 0.25
    rig.write(MODE1, AI | SLEEP)
    assert rig.read(MODE1) & RESTART  # set because a channel was running
    rig.write(MODE1, AI)  # wake: the channels stay held
    assert rig.chip.output_duty(2) == 0.0
    rig.write(MODE1, AI | RESTART)  # too early: the oscillator has not had 500 µs
    assert rig.read(MODE1) & RESTART
    assert rig.chip.output_duty(2) == 0.0
    rig.timer.sleep(500e-6)
    rig.write(MODE1, AI | RESTART)
    assert not rig.read(MODE1) & RESTART
    assert rig.chip.output_duty(2) == 0.25


def test_sleep_with_nothing_running_leaves_restart_clear() -> None:
    rig = Rig()
    rig.write(MODE1, AI)
    rig.write(MODE1, AI | SLEEP)
    assert not rig.read(MODE1) & RESTART
    rig.write(MODE1, AI | RESTART)  # writing 1 with RESTART clear does nothing either
    assert not rig.read(MODE1) & RESTART


def test_a_pwm_register_write_clears_restart() -> None:
    rig = Rig()
    rig.write(MODE1, AI)
    rig.bus.write_i2c_block_data(rig.address, LED0_ON_L, [0, FULL, 0, 0])
    rig.write(MODE1, AI | SLEEP)
    rig.write(MODE1, AI)
    assert rig.chip.output_duty(0) == 0.0
    rig.bus.write_i2c_block_data(rig.address, LED0_ON_L + 4, [0, 0, 0, 0x08])
    assert not rig.read(MODE1) & RESTART
    assert rig.chip.output_duty(0) == 1.0
    assert rig.chip.output_duty(1) == 0.5


def test_auto_increment_and_its_roll_over() -> None:
    rig = Rig()
    # AI off: a block lands on one register, the last byte staying.
    rig.bus.write_i2c_block_data(rig.address, LED0_ON_L, [1, 2, 3])
    assert rig.chip.channel_registers(0) == (3, 0, 0, FULL)
    rig.write(MODE1, SLEEP | AI)
    # Past LED15_OFF_H the pointer rolls over to MODE1.
    values = rig.bus.read_i2c_block_data(rig.address, LED0_ON_L + 4 * 15 + 3, 2)
    assert values == [FULL, SLEEP | AI]
    # Past PRE_SCALE too (250..254, then 0).
    assert rig.bus.read_i2c_block_data(rig.address, PRE_SCALE, 2) == [0x1E, SLEEP | AI]


def test_all_led_registers_load_every_channel_and_read_zero() -> None:
    rig = Rig()
    rig.write(MODE1, AI)
    rig.bus.write_i2c_block_data(rig.address, ALL_LED_ON_L, [0, 0, 0x00, 0x02])
    assert rig.bus.read_i2c_block_data(rig.address, ALL_LED_ON_L, 4) == [0, 0, 0, 0]
    assert all(rig.chip.output_duty(channel) == 0.125 for channel in range(16))
    rig.write(ALL_LED_OFF_H, FULL)  # the data sheet's fast orderly shutdown
    assert all(rig.chip.output_duty(channel) == 0.0 for channel in range(16))


def test_reserved_registers_are_not_acknowledged() -> None:
    rig = Rig()
    with pytest.raises(OSError) as caught:
        rig.read(0x50)
    assert caught.value.errno == errno.EREMOTEIO


def test_invert_flips_the_output() -> None:
    rig = Rig()
    output = rig.output(0)
    output.apply(0.25)
    rig.write(MODE2, 0x04 | INVRT)
    assert rig.chip.output_duty(0) == 0.75
    assert output.read_back() == 0.75


def test_all_call_address_reaches_every_chip_while_enabled() -> None:
    bus = FakeI2CBus(1)
    chips = [PCA9685Emulator(timer=VirtualTimer()) for _ in range(2)]
    bus.attach(0x40, chips[0])
    bus.attach(0x41, chips[1])

    class Both(I2CDevice):
        """Two chips answering one address, as on a real bus."""

        def write(self, data: bytes) -> None:
            for chip in chips:
                chip.all_call_port().write(data)

        def read(self, length: int) -> bytes:
            raise AssertionError("All Call is written, never read")

    bus.attach(ALL_CALL_ADDRESS, Both())
    bus.write_byte_data(ALL_CALL_ADDRESS, MODE1, AI | ALLCALL)
    assert [chip.mode1 for chip in chips] == [AI | ALLCALL, AI | ALLCALL]
    bus.write_byte_data(0x41, MODE1, AI)  # chip 1 stops listening to All Call
    with pytest.raises(OSError):
        chips[1].all_call_port().write(bytes([MODE1, AI | SLEEP]))
    with pytest.raises(OSError):
        chips[0].all_call_port().read(1)


# -- the driver on the emulated chip -----------------------------------------------------------


def test_open_brings_the_chip_up_at_the_frequency_with_the_channel_safe() -> None:
    rig = Rig()
    output = rig.output(3, frequency=1000, safe_value=0.25)
    assert rig.chip.prescale == prescale_for(1000) == 5
    assert not rig.chip.asleep
    assert rig.chip.mode1 & AI
    assert rig.chip.output_duty(3) == 0.25
    assert output.applied == 0.25
    assert output.read_frequency() == pytest.approx(1017.25, abs=0.01)


def test_duty_is_quantised_to_12_bits_and_read_back() -> None:
    rig = Rig()
    output = rig.output(0)
    applied = output.apply(0.3)
    assert applied == 1229 / 4096  # 0.3 × 4096 = 1228.8
    assert rig.chip.output_duty(0) == applied
    assert output.read_back() == applied
    assert output.apply(1e-5) == 0.0
    assert rig.chip.channel_registers(0) == (0, 0, 0, FULL)


def test_full_on_and_full_off() -> None:
    rig = Rig()
    output = rig.output(5)
    assert output.apply(1.0) == 1.0
    assert rig.chip.channel_registers(5) == (0, FULL, 0, 0)
    assert rig.chip.output_duty(5) == 1.0
    assert output.apply(0.0) == 0.0
    assert rig.chip.channel_registers(5)[3] & FULL
    assert output.read_back() == 0.0


def test_channels_are_independent() -> None:
    rig = Rig()
    outputs = [rig.output(channel) for channel in range(16)]
    for channel, output in enumerate(outputs):
        output.apply(channel / 16)
    assert [rig.chip.output_duty(channel) for channel in range(16)] == [
        channel / 16 for channel in range(16)
    ]
    outputs[7].to_safe()
    assert rig.chip.output_duty(7) == 0.0
    assert rig.chip.output_duty(8) == 0.5


def test_values_outside_the_range_are_refused_and_nothing_is_written() -> None:
    rig = Rig()
    output = rig.output(0)
    output.apply(0.5)
    for bad in (1.0001, -0.1, float("nan"), float("inf")):
        with pytest.raises(OutputRangeError, match=r"0\.\.1"):
            output.apply(bad)
    assert rig.chip.output_duty(0) == 0.5
    assert output.applied == 0.5


def test_reprogramming_the_frequency_restarts_the_running_channels() -> None:
    rig = Rig()
    first = rig.output(0, frequency=200)
    first.apply(0.5)
    rig.output(1, frequency=50)  # re-programs the chip: sleep, PRE_SCALE, wake, restart
    assert rig.chip.prescale == prescale_for(50)
    assert not rig.chip.mode1 & RESTART
    assert rig.chip.output_duty(0) == 0.5
    assert first.read_frequency() == pytest.approx(50.03, abs=0.01)


def test_a_chip_that_lost_power_is_brought_up_again_on_the_next_write() -> None:
    rig = Rig()
    output = rig.output(2, frequency=1000)
    output.apply(0.5)
    rig.bus.unplug(rig.address)
    rig.bus.replug(rig.address)  # power-up: asleep, AI off, every channel off
    assert rig.chip.output_duty(2) == 0.0
    assert output.read_back() == 0.0
    output.apply(0.75)
    assert rig.chip.prescale == 5
    assert rig.chip.output_duty(2) == 0.75


def test_close_leaves_the_channel_at_its_safe_value_and_the_chip_running() -> None:
    rig = Rig()
    output = rig.output(4, safe_value=0.125)
    output.apply(1.0)
    output.close()
    output.close()  # idempotent
    assert rig.chip.output_duty(4) == 0.125
    assert not rig.chip.asleep
    assert output.closed
    with pytest.raises(HardwareError, match="closed"):
        output.apply(0.5)


def test_bus_faults_become_hardware_errors() -> None:
    rig = Rig()
    output = rig.output(0)
    rig.bus.inject_error(rig.address, errno.EIO)
    with pytest.raises(BusError, match="pca9685 at 0x40 channel 0"):
        output.apply(0.5)
    rig.bus.unplug(rig.address)
    with pytest.raises(SensorMissingError):
        output.apply(0.5)
    with pytest.raises(SensorMissingError):
        PCA9685Output(FakeI2CBus(1), 0x40, 0).open()


def test_a_chip_that_ignores_pre_scale_is_not_a_pca9685() -> None:
    rig = Rig()
    rig.bus.stick_bits(rig.address, and_mask=0x00)  # every byte reads 0: PRE_SCALE too
    with pytest.raises(DataError, match="PRE_SCALE"):
        rig.output(0)


def test_bad_settings_are_refused() -> None:
    bus = FakeI2CBus(1)
    with pytest.raises(OutputSettingsError, match=r"0\.\.15"):
        PCA9685Output(bus, 0x40, 16)
    with pytest.raises(OutputSettingsError, match="0x70"):
        PCA9685Output(bus, 0x70, 0)
    with pytest.raises(OutputSettingsError, match="frequency"):
        PCA9685Output(bus, 0x40, 0, frequency=2000)
    with pytest.raises(OutputSettingsError, match="safe_value"):
        PCA9685Output(bus, 0x40, 0, safe_value=1.5)


# -- through the registry ----------------------------------------------------------------------


def test_open_output_shares_one_emulated_chip_between_channels() -> None:
    with EmulatedBackend() as backend:
        a = open_output("pca9685", backend=backend, channel=0, options={"frequency": 400})
        b = open_output("pca9685", backend=backend, channel=1, options={"frequency": 400})
        chip = backend.i2c_bus(1).device_at(0x40)
        assert isinstance(chip, PCA9685Emulator)
        a.apply(0.5)
        b.apply(0.25)
        assert (chip.output_duty(0), chip.output_duty(1)) == (0.5, 0.25)
        assert chip.prescale == prescale_for(400) == 14  # 406.9 Hz: the nearest it can make
        with pytest.raises(OutputSettingsError, match="channel"):
            open_output("pca9685", backend=backend)
        with pytest.raises(OutputSettingsError, match="no GPIO pin"):
            open_output("pca9685", backend=backend, channel=2, pin=4)
        with pytest.raises(OutputSettingsError, match="no option 'duty'"):
            open_output("pca9685", backend=backend, channel=2, options={"duty": 1})
