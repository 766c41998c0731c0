"""DS18B20 over w1-therm sysfs: pure functions with datasheet numbers, golden w1_slave files read
by the real driver, and round trips through the emulator on an emulated back end."""

from __future__ import annotations

import errno
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgetwin.hardware import Health, open_sensor
from edgetwin.hardware.backends import EmulatedBackend, RealBackend
from edgetwin.hardware.drivers.ds18b20 import (
    DS18B20,
    EMULATED_DEVICE,
    POWER_ON_SCRATCHPAD,
    W1_DEVICES,
    DS18B20Emulator,
    crc8,
    decode_w1_slave,
    kernel_millicelsius,
    parse_w1_slave,
    raw_temperature,
    scratchpad_for,
)
from edgetwin.hardware.errors import BusError, DataError, SensorMissingError, SensorSettingsError
from edgetwin.hardware.sensor import BackendKind
from edgetwin.hardware.signals import Constant
from edgetwin.hardware.sysfs import FakeSysfsTree, SysfsTree
from edgetwin.hardware.timing import ManualClock

GOLDEN = Path(__file__).parent / "testcases" / "w1"


class Nan:
    """A temperature signal with no measurement."""

    def sample(self, t: float) -> float:
        return math.nan


# -- pure functions --------------------------------------------------------------------------


def test_crc8_matches_maxim_application_note_27() -> None:
    # AN27's worked example: ROM 02 1C B8 01 00 00 00, CRC A2.
    assert crc8(bytes.fromhex("021cb801000000")) == 0xA2
    assert crc8(POWER_ON_SCRATCHPAD[:8]) == POWER_ON_SCRATCHPAD[8] == 0x1C
    assert crc8(b"\xff" * 8) == 0xC9  # what a floating bus gives, as the kernel prints it
    assert crc8(bytes(8)) == 0


@pytest.mark.parametrize(
    ("register", "celsius"),
    # Datasheet table 1, "Temperature/Data Relationship", at 12 bits.
    [
        (0x07D0, 125.0),
        (0x0550, 85.0),
        (0x0191, 25.0625),
        (0x00A2, 10.125),
        (0x0008, 0.5),
        (0x0000, 0.0),
        (0xFFF8, -0.5),
        (0xFF5E, -10.125),
        (0xFE6F, -25.0625),
        (0xFC90, -55.0),
    ],
)
def test_temperature_register_per_datasheet_table_1(register: int, celsius: float) -> None:
    pad = scratchpad_for(celsius)
    assert int.from_bytes(pad[:2], "little") == register
    assert raw_temperature(pad) / 16 == celsius
    assert crc8(pad[:8]) == pad[8]


def test_kernel_millicelsius_truncates_toward_zero_like_c() -> None:
    assert kernel_millicelsius(370) == 23125
    assert kernel_millicelsius(1) == 62
    assert kernel_millicelsius(-1) == -62
    assert kernel_millicelsius(-162) == -10125
    assert kernel_millicelsius(-3) == -187


def test_scratchpad_reserved_byte_follows_genuine_parts() -> None:
    assert scratchpad_for(23.125).hex(" ") == "72 01 4b 46 7f ff 0e 10 57"
    assert scratchpad_for(125.0)[6] == 0x10


def test_parse_w1_slave_fields() -> None:
    reading = parse_w1_slave(
        "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23125\n"
    )
    assert reading.scratchpad == bytes.fromhex("72014b467fff0e1057")
    assert reading.kernel_crc == 0x57
    assert reading.crc_ok
    assert reading.last_good == reading.scratchpad
    assert reading.millicelsius == 23125


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "2 lines"),
        ("72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b t=23125\n", "format"),
        (  # kernel said YES, but the CRC byte does not check
            "72 01 4b 46 7f ff 0e 10 58 : crc=58 YES\n72 01 4b 46 7f ff 0e 10 58 t=23125\n",
            "CRC-8",
        ),
        (  # t= disagrees with the bytes
            "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23000\n",
            "disagrees",
        ),
        (  # the lines hold different scratchpads although the CRC passed
            "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n00 00 00 00 00 00 00 00 00 t=23125\n",
            "lines disagree",
        ),
    ],
)
def test_decode_refuses_inconsistent_files(text: str, match: str) -> None:
    with pytest.raises(DataError, match=match):
        decode_w1_slave(text)


# -- golden files, read by the real driver through SysfsTree ---------------------------------


@pytest.mark.parametrize(
    ("device", "celsius"),
    [
        ("28-000005e2fdc3", 23.125),
        ("28-0316a279bdff", -10.125),
        ("28-0417c1b2d3ff", -0.0625),
        ("28-00000b1c2d3e", 125.0),
    ],
)
def test_golden_readings(device: str, celsius: float) -> None:
    sensor = DS18B20(SysfsTree(GOLDEN), device).open()
    reading = sensor.read()
    assert reading.values["temperature"].value == celsius
    assert reading.values["temperature"].unit == "°C"
    assert sensor.status.health is Health.OK


@pytest.mark.parametrize(
    ("device", "match"),
    [
        ("28-01186e4e0aff", "crc=c9 NO"),
        ("28-0000075f3a2b", "power-on reset value"),
        ("28-3c01d607e1a4", "configuration register 0x00"),
        ("28-0000a1b2c3d4", "2 lines"),
    ],
)
def test_golden_faults(device: str, match: str) -> None:
    sensor = DS18B20(SysfsTree(GOLDEN), device).open()
    with pytest.raises(DataError, match=f"ds18b20 {device}: .*{match}"):
        sensor.read()
    assert sensor.status.health is Health.FAULTED


def test_golden_discovery_takes_the_first_28_device_and_skips_the_master() -> None:
    sensor = DS18B20(SysfsTree(GOLDEN)).open()
    assert sensor.device == "28-000005e2fdc3"  # sorted first; w1_bus_master1 is not a sensor


def test_discovery_on_a_bus_without_thermometers(tmp_path: Path) -> None:
    (tmp_path / W1_DEVICES / "w1_bus_master1").mkdir(parents=True)
    (tmp_path / W1_DEVICES / "10-000802b4b2c1").mkdir()  # a DS18S20: another family
    with pytest.raises(SensorMissingError, match="no 28-\\* device"):
        DS18B20(SysfsTree(tmp_path)).open()


def test_no_w1_bus_at_all(tmp_path: Path) -> None:
    with pytest.raises(SensorMissingError, match="dtoverlay=w1-gpio"):
        DS18B20(SysfsTree(tmp_path)).open()


def test_named_device_missing_at_open() -> None:
    with pytest.raises(SensorMissingError, match="28-0000deadbeef"):
        DS18B20(SysfsTree(GOLDEN), "28-0000deadbeef").open()


@pytest.mark.parametrize("bad", ["28-000005E2FDC3", "10-000802b4b2c1", "28-123", "thermal_zone0"])
def test_device_id_must_name_a_ds18b20(bad: str) -> None:
    with pytest.raises(SensorSettingsError, match="not a DS18B20"):
        DS18B20(SysfsTree(GOLDEN), bad)


def test_real_backend_reads_the_golden_tree() -> None:
    sensor = open_sensor(
        "ds18b20", backend=RealBackend(sysfs_root=GOLDEN), device="28-0316a279bdff"
    )
    assert sensor.status.backend is BackendKind.REAL
    assert sensor.read().values["temperature"].value == -10.125


# -- the emulator ----------------------------------------------------------------------------


class Rig:
    def __init__(self, root: Path, device: str = "28-000005e2fdc3") -> None:
        self.clock = ManualClock()
        self.tree = FakeSysfsTree(root)
        self.chip = DS18B20Emulator(device, clock=self.clock)
        self.directory = f"{W1_DEVICES}/{device}"
        self.tree.attach(self.directory, self.chip)
        self.sensor = DS18B20(self.tree, device, backend=BackendKind.EMULATED, clock=self.clock)


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


@settings(deadline=None, max_examples=60)
@given(raw=st.integers(min_value=-55 * 16, max_value=125 * 16))
def test_round_trip_across_the_range_at_one_sixteenth(raw: int) -> None:
    celsius = raw / 16
    with EmulatedBackend() as backend:
        sensor = open_sensor(
            "ds18b20",
            backend=backend,
            device="28-000005e2fdc3",
            signals={"temperature": Constant(celsius)},
        )
        if raw == 85 * 16:
            # Indistinguishable from the power-on reset value: refused by design.
            with pytest.raises(DataError, match="power-on"):
                sensor.read()
        else:
            assert sensor.read().values["temperature"].value == celsius


def test_emulator_rounds_to_the_sensors_resolution(rig: Rig) -> None:
    rig.chip.set_signal(Constant(21.37))
    assert rig.sensor.read().values["temperature"].value == 21.375  # nearest 1/16 °C


def test_emulated_file_has_w1_therms_format(rig: Rig) -> None:
    rig.chip.set_signal(Constant(23.125))
    text = rig.tree.read_text(f"{rig.directory}/w1_slave")
    assert text == "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23125\n"
    assert rig.tree.read_text(f"{rig.directory}/name") == "28-000005e2fdc3\n"


def test_crc_fault_and_recovery(rig: Rig) -> None:
    rig.chip.set_signal(Constant(19.5))
    assert rig.sensor.read().values["temperature"].value == 19.5
    rig.chip.inject_crc_error()
    with pytest.raises(DataError, match="NO"):
        rig.sensor.read()
    assert rig.sensor.status.health is Health.FAULTED
    assert rig.sensor.read().values["temperature"].value == 19.5
    assert rig.sensor.status.health is Health.OK


def test_crc_fault_shows_the_last_good_scratchpad_on_line_two(rig: Rig) -> None:
    rig.chip.inject_crc_error()
    first = rig.tree.read_text(f"{rig.directory}/w1_slave").splitlines()
    assert first[0].endswith("NO")
    assert first[1].startswith("00 00 00 00 00 00 00 00 00 t=")  # nothing good read yet


def test_power_on_reset_value_is_refused(rig: Rig) -> None:
    rig.chip.inject_power_on_reset()
    text = rig.tree.read_text(f"{rig.directory}/w1_slave")
    assert text.endswith("t=85000\n")
    rig.chip.inject_power_on_reset()
    with pytest.raises(DataError, match="power-on reset value"):
        rig.sensor.read()


def test_unplugged_sensor_is_missing_until_replugged(rig: Rig) -> None:
    rig.chip.set_signal(Constant(4.0))
    rig.tree.unplug(rig.directory)
    with pytest.raises(SensorMissingError, match="does not exist"):
        rig.sensor.read()
    assert rig.sensor.status.health is Health.MISSING
    rig.tree.replug(rig.directory)
    assert rig.sensor.read().values["temperature"].value == 4.0


def test_signal_dropout_fails_the_read_with_eio(rig: Rig) -> None:
    rig.chip.set_signal(Nan())
    with pytest.raises(BusError) as info:
        rig.sensor.read()
    assert info.value.errno == errno.EIO


def test_emulator_refuses_unknown_quantities() -> None:
    with pytest.raises(ValueError, match="humidity"):
        DS18B20Emulator(signals={"humidity": Constant(1.0)})


# -- through the registry --------------------------------------------------------------------


def test_open_sensor_with_a_device_id() -> None:
    with EmulatedBackend(seed=5) as backend:
        sensor = open_sensor("ds18b20", backend=backend, device="28-000005e2fdc3")
        value = sensor.read().values["temperature"].value
        assert 14 < value < 28  # the default room signal
        assert isinstance(backend.sysfs.device_at(f"{W1_DEVICES}/28-000005e2fdc3"), DS18B20Emulator)
        assert sensor.status.backend is BackendKind.EMULATED


def test_open_sensor_without_id_finds_or_makes_one() -> None:
    with EmulatedBackend() as backend:
        made = open_sensor("ds18b20", backend=backend)
        assert isinstance(made, DS18B20)
        assert made.device == EMULATED_DEVICE
    with EmulatedBackend() as backend:
        open_sensor("ds18b20", backend=backend, device="28-0000000000bb")
        open_sensor("ds18b20", backend=backend, device="28-0000000000aa")
        found = open_sensor("ds18b20", backend=backend)
        assert isinstance(found, DS18B20)
        assert found.device == "28-0000000000aa"  # the first listed, as on a real bus


def test_open_sensor_refuses_signals_for_a_probe_already_there() -> None:
    with EmulatedBackend() as backend:
        open_sensor("ds18b20", backend=backend, device="28-000005e2fdc3")
        with pytest.raises(SensorSettingsError, match="already at"):
            open_sensor(
                "ds18b20",
                backend=backend,
                device="28-000005e2fdc3",
                signals={"temperature": Constant(3.0)},
            )


def test_open_sensor_refuses_a_bad_device_id() -> None:
    with EmulatedBackend() as backend, pytest.raises(SensorSettingsError, match="28-"):
        open_sensor("ds18b20", backend=backend, device="thermal_zone0")
