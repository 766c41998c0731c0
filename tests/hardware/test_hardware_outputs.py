"""Outputs: the registry's metadata without hardware, and the GPIO outputs (digital, PWM) on
gpiozero mock pins, asserted through the pin the emulated load sees."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from edgetwin.hardware import (
    EmulatedBackend,
    HardwareError,
    OutputKind,
    OutputRangeError,
    OutputSettingsError,
    UnknownDriverError,
    check_output_value,
    list_output_drivers,
    open_output,
    open_sensor,
    output_spec,
)
from edgetwin.hardware.drivers.gpio_output import DigitalOutput, PWMOutput, emulator_for
from edgetwin.hardware.drivers.pca9685 import PCA9685Emulator
from edgetwin.hardware.registry import check_output, output_driver_info


@pytest.fixture
def backend() -> Iterator[EmulatedBackend]:
    with EmulatedBackend() as backend:
        yield backend


# -- what each driver accepts, without hardware ------------------------------------------------


def test_output_drivers_are_listed_with_kind_range_and_safe_value() -> None:
    rows = [
        (d.name, d.kind, d.interface, d.value_range.lo, d.value_range.hi, d.default_safe_value)
        for d in list_output_drivers()
    ]
    assert rows == [
        ("digital_output", OutputKind.DIGITAL, "gpio", 0.0, 1.0, 0.0),
        ("pca9685", OutputKind.PWM, "i2c", 0.0, 1.0, 0.0),
        ("pwm_output", OutputKind.PWM, "gpio", 0.0, 1.0, 0.0),
    ]
    pca = output_driver_info("pca9685")
    assert pca.default_address == 0x40
    assert pca.channels == 16
    assert 0x70 not in pca.valid_addresses()
    assert pca.value_range.step == 1 / 4096
    assert output_driver_info("digital_output").value_range.levels == (0.0, 1.0)


def test_desired_values_are_checked_without_hardware() -> None:
    assert check_output_value("digital_output", 1) == 1.0
    assert check_output_value("digital_output", True) == 1.0
    assert check_output_value("pwm_output", 0.35) == 0.35
    assert check_output_value("pca9685", 0.35, {"frequency": 50}) == 0.35
    with pytest.raises(OutputRangeError, match=r"takes 0 or 1, got 0\.5"):
        check_output_value("digital_output", 0.5)
    for bad in (1.01, -0.01, float("nan"), "0.5", None):
        with pytest.raises(OutputRangeError):
            check_output_value("pwm_output", bad)
    with pytest.raises(OutputRangeError, match="refused, not clamped"):
        check_output_value("pca9685", 2)
    with pytest.raises(UnknownDriverError, match="known output drivers: digital_output"):
        check_output_value("servo", 0)


def test_options_are_checked_without_hardware() -> None:
    spec = output_spec("digital_output", {"active_high": False, "safe_value": 1})
    assert (spec.safe_value, spec.settings["active_high"]) == (1.0, False)
    assert output_spec("pwm_output").settings == {"frequency": 100.0, "safe_value": 0.0}
    with pytest.raises(OutputSettingsError, match="safe_value"):
        output_spec("pwm_output", {"safe_value": 1.2})
    with pytest.raises(OutputSettingsError, match="safe_value"):
        output_spec("digital_output", {"safe_value": 0.5})
    with pytest.raises(OutputSettingsError, match="no option 'activ_high'"):
        output_spec("digital_output", {"activ_high": False})
    with pytest.raises(OutputSettingsError, match="frequency"):
        output_spec("pca9685", {"frequency": 10})


def test_placements_are_checked_without_hardware() -> None:
    spec, placement = check_output("pca9685", channel=3, options={"frequency": 50})
    assert (placement.bus, placement.address, placement.channel) == (1, 0x40, 3)
    assert spec.settings["frequency"] == 50.0
    assert check_output("digital_output", pin=17)[1].pin == 17
    refused: list[tuple[str, dict[str, Any], str]] = [
        ("digital_output", {}, "no default pin"),
        ("digital_output", {"pin": 28}, r"0\.\.27"),
        ("pwm_output", {"pin": 5, "address": 0x40}, "no I2C address or channel"),
        ("pca9685", {}, r"needs its channel, 0\.\.15"),
        ("pca9685", {"channel": 16}, r"has channels 0\.\.15, not 16"),
        ("pca9685", {"channel": True}, "not True"),
        ("pca9685", {"channel": 0, "pin": 4}, "no GPIO pin"),
        (
            "pca9685",
            {"channel": 0, "address": 0x70},
            r"valid addresses: 0x40\.\.0x6f, 0x71\.\.0x7f",
        ),
    ]
    for driver, where, reason in refused:
        with pytest.raises(OutputSettingsError, match=reason):
            check_output(driver, **where)
    with pytest.raises(OutputSettingsError, match="no option 'duty'"):
        check_output("pca9685", channel=0, options={"duty": 1})
    with pytest.raises(UnknownDriverError):
        check_output("servo", pin=4)


def test_validating_outputs_loads_neither_gpiozero_nor_smbus2() -> None:
    code = (
        "import sys; from edgetwin.hardware import check_output_value; "
        "from edgetwin.hardware.registry import check_output; check_output('pca9685', channel=1); "
        "check_output_value('pwm_output', 0.5); check_output_value('pca9685', 1); "
        "print(','.join(sorted({m.split('.')[0] for m in sys.modules} & {'gpiozero', 'smbus2'})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert result.stdout.strip() == ""


# -- digital output ----------------------------------------------------------------------------


def test_digital_output_drives_the_pin(backend: EmulatedBackend) -> None:
    output = open_output("digital_output", backend=backend, pin=17)
    assert isinstance(output, DigitalOutput)
    load = emulator_for(backend, output)
    assert (load.driven, load.level, output.applied) == (True, 0.0, 0.0)
    assert output.apply(1) == 1.0
    assert (load.level, load.power, output.read_back()) == (1.0, 1.0, 1.0)
    with pytest.raises(OutputRangeError):
        output.apply(0.5)
    assert load.level == 1.0  # nothing written


def test_active_low_output_opens_off_without_a_pulse(backend: EmulatedBackend) -> None:
    output = open_output("digital_output", backend=backend, pin=22, options={"active_high": False})
    load = emulator_for(backend, output)
    assert load.level == 1.0  # high is off for an active-low relay module
    assert load.power == 0.0
    # The pin went from its idle level straight to high: never low (on) while being opened.
    assert load.levels() == [0.0, 1.0]
    output.apply(1)
    assert (load.level, load.power, output.read_back()) == (0.0, 1.0, 1.0)


def test_digital_safe_value_on_open_and_to_safe(backend: EmulatedBackend) -> None:
    output = open_output("digital_output", backend=backend, pin=5, options={"safe_value": 1})
    load = emulator_for(backend, output)
    assert load.power == 1.0  # a pump that must run when nobody is in control
    output.apply(0)
    assert load.power == 0.0
    assert output.to_safe() == 1.0
    assert load.power == 1.0


def test_digital_close_leaves_the_released_pin_at_the_safe_level(
    backend: EmulatedBackend,
) -> None:
    output = open_output("digital_output", backend=backend, pin=6, options={"active_high": False})
    load = emulator_for(backend, output)
    output.apply(1)
    output.close()
    assert not load.driven  # released: an input, held only by the board's pull resistor
    assert load.power == 0.0  # at the safe (off) level when it let go
    with pytest.raises(HardwareError, match="closed"):
        output.apply(1)
    # The pin is free again.
    open_output("digital_output", backend=backend, pin=6).close()


# -- PWM output --------------------------------------------------------------------------------


def test_pwm_duty_and_frequency_read_back_from_the_mock_pin(backend: EmulatedBackend) -> None:
    output = open_output("pwm_output", backend=backend, pin=18, options={"frequency": 25})
    assert isinstance(output, PWMOutput)
    load = emulator_for(backend, output)
    assert (load.level, load.frequency) == (0.0, 25.0)
    assert output.apply(0.35) == 0.35
    assert load.level == 0.35
    assert output.read_back() == 0.35
    assert output.read_frequency() == 25.0
    with pytest.raises(OutputRangeError):
        output.apply(1.5)
    assert load.level == 0.35


def test_pwm_to_safe_and_close(backend: EmulatedBackend) -> None:
    output = open_output("pwm_output", backend=backend, pin=13, options={"safe_value": 0.2})
    load = emulator_for(backend, output)
    assert load.level == 0.2
    output.apply(0.9)
    assert output.to_safe() == 0.2
    assert load.level == 0.2
    output.close()
    # PWM stopped and the pin released: low, off for the active-high load, whatever the safe
    # duty was (why a load that must keep running belongs on a PCA9685).
    assert (load.driven, load.level, load.frequency) == (False, 0.0, None)


def test_a_pin_in_use_or_without_pwm_is_refused(backend: EmulatedBackend) -> None:
    first = open_output("digital_output", backend=backend, pin=4)
    with pytest.raises(OutputSettingsError, match="GPIO4"):
        open_output("digital_output", backend=backend, pin=4)
    with pytest.raises(OutputSettingsError, match="MockPin"):
        open_output("pwm_output", backend=backend, pin=4)  # a mock pin cannot become PWM
    sensor = open_sensor("pir", backend=backend, pins={"pin": 27})
    with pytest.raises(OutputSettingsError, match="in use"):
        open_output("digital_output", backend=backend, pin=27)
    sensor.close()
    first.close()


def test_gpio_placement_errors(backend: EmulatedBackend) -> None:
    with pytest.raises(OutputSettingsError, match="no default pin"):
        open_output("digital_output", backend=backend)
    with pytest.raises(OutputSettingsError, match=r"0\.\.27"):
        open_output("pwm_output", backend=backend, pin=40)
    with pytest.raises(OutputSettingsError, match="no I2C address"):
        open_output("digital_output", backend=backend, pin=5, channel=1)


# -- every kind ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("driver", "pin", "channel"),
    [("digital_output", 20, None), ("pwm_output", 21, None), ("pca9685", None, 9)],
)
def test_to_safe_on_every_kind(
    backend: EmulatedBackend, driver: str, pin: int | None, channel: int | None
) -> None:
    output = open_output(driver, backend=backend, pin=pin, channel=channel)
    assert output.applied == output.safe_value == 0.0
    output.apply(1)
    assert output.read_back() == 1.0
    assert output.to_safe() == 0.0
    assert output.read_back() == 0.0
    if driver == "pca9685":
        chip = backend.i2c_bus(1).device_at(0x40)
        assert isinstance(chip, PCA9685Emulator)
        assert chip.output_duty(9) == 0.0
    else:
        assert isinstance(output, DigitalOutput | PWMOutput)
        assert emulator_for(backend, output).power == 0.0
    output.close()
