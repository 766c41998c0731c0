"""`edgetwin sensors`: list, probe and read, with chips emulated behind a board's fake buses."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from edgetwin.hardware import BackendKind, EmulatedBackend, RealBackend, SensorMissingError
from edgetwin.hardware.bus import FakeI2CBus, I2CBus
from edgetwin.hardware.cli import list_command, option_value, probe_command, read_command
from edgetwin.hardware.drivers.bme280 import BME280Emulator
from edgetwin.hardware.probe import Found, i2c_buses, open_first, probe
from edgetwin.hardware.registry import list_drivers
from edgetwin.hardware.timing import VirtualTimer


class FakeBoard(RealBackend):
    """A 'real' back end whose adapters are fake buses: what a Pi with chips wired up looks like
    to the code, so probe's real path runs without hardware."""

    def __init__(self, buses: dict[int, FakeI2CBus], timer: VirtualTimer | None = None) -> None:
        super().__init__()
        # Driver and emulator must share one timer, or the conversion never ends.
        self.timer = timer or VirtualTimer()
        self.fake_buses = buses

    def i2c_bus(self, n: int) -> I2CBus:
        if n not in self.fake_buses:
            raise SensorMissingError(f"/dev/i2c-{n} does not exist")
        return self.fake_buses[n]


def board_with_bme280(bus: int, address: int) -> FakeBoard:
    timer = VirtualTimer()
    fake = FakeI2CBus(bus)
    fake.attach(address, BME280Emulator(timer=timer))
    return FakeBoard({bus: fake}, timer)


def test_probe_names_the_chip_that_answers() -> None:
    board = board_with_bme280(1, 0x77)
    assert probe(board, [1]) == [Found(1, 0x77, "bme280")]


def test_probe_ignores_a_device_that_is_not_the_chip() -> None:
    timer = VirtualTimer()
    fake = FakeI2CBus(1)
    fake.attach(0x76, BME280Emulator(timer=timer, chip_id=0x58))  # a BMP280, not a BME280
    assert probe(FakeBoard({1: fake}, timer), [1]) == []


def test_open_first_falls_back_and_says_which_it_got() -> None:
    board = FakeBoard({})
    with open_first("bme280", [board, EmulatedBackend()], address=0x76) as sensor:
        assert sensor.status.backend is BackendKind.EMULATED
    with open_first("bme280", [board_with_bme280(1, 0x76), EmulatedBackend()]) as sensor:
        assert sensor.status.backend is BackendKind.REAL


def test_open_first_names_every_reason() -> None:
    with pytest.raises(SensorMissingError, match=r"real: /dev/i2c-1 does not exist"):
        open_first("bme280", [FakeBoard({})])


def test_list_shows_every_driver_with_units() -> None:
    out = io.StringIO()
    assert list_command(out) == 0
    text = out.getvalue()
    for info in list_drivers():
        assert info.name in text
        for quantity in info.quantities:
            assert f"{quantity.name} [{quantity.unit}]" in text
    outputs = text.split("\noutputs:\n", 1)[1].splitlines()
    assert outputs[0] == "digital_output  gpio  pin                      digital 0 or 1, safe 0"
    assert outputs[2].split()[:6] == ["pca9685", "i2c", "0x40..0x7f", "ch", "0..15", "pwm"]


def test_read_emulated_prints_a_plausible_reading() -> None:
    out = io.StringIO()
    assert read_command("bme280", backend="emulated", address=0x76, out=out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0] == "bme280 (emulated)"
    values = {line.split()[0]: (float(line.split()[1]), line.split()[2]) for line in lines[1:]}
    assert values.keys() == {"temperature", "humidity", "pressure"}
    assert 10 < values["temperature"][0] < 35
    assert 0 <= values["humidity"][0] <= 100
    assert 950 < values["pressure"][0] < 1080
    assert [unit for _, unit in values.values()] == ["°C", "%RH", "hPa"]


def test_read_reports_a_missing_sensor_without_traceback() -> None:
    out = io.StringIO()
    assert read_command("bme280", backend="real", bus=97, out=out) == 1
    assert "i2c-97" in out.getvalue()


def test_probe_without_adapters(tmp_path: Path) -> None:
    out = io.StringIO()
    assert probe_command(tmp_path, out) == 1
    assert "no I2C adapters" in out.getvalue()
    (tmp_path / "i2c-3").touch()
    (tmp_path / "i2c-1").touch()
    (tmp_path / "i2c-x").touch()
    assert i2c_buses(tmp_path) == [1, 3]


@pytest.mark.parametrize(
    ("text", "value"), [("2.048", 2.048), ("4", 4), ("true", True), ("0,1", "0,1")]
)
def test_option_values_keep_their_type(text: str, value: object) -> None:
    assert option_value(text) == value
    assert type(option_value(text)) is type(value)


def test_cli_entry_point() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgetwin",
            "sensors",
            "read",
            "bme280",
            "--backend",
            "emulated",
            "--address",
            "0x77",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("bme280 (emulated)")
    assert "hPa" in result.stdout
