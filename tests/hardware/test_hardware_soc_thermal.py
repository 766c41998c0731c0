"""SoC temperature from thermal zones: golden zone files and the emulated zone."""

from __future__ import annotations

import errno
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgetwin.hardware import Health, open_sensor
from edgetwin.hardware.backends import EmulatedBackend, RealBackend
from edgetwin.hardware.drivers.soc_thermal import (
    THERMAL,
    SoCThermal,
    ThermalZoneEmulator,
    parse_millicelsius,
)
from edgetwin.hardware.errors import BusError, DataError, SensorMissingError, SensorSettingsError
from edgetwin.hardware.sensor import BackendKind
from edgetwin.hardware.signals import Constant
from edgetwin.hardware.sysfs import FakeSysfsTree, SysfsTree
from edgetwin.hardware.timing import ManualClock

GOLDEN = Path(__file__).parent / "testcases" / "thermal"


@pytest.mark.parametrize(
    ("zone", "zone_type", "celsius"),
    [
        ("thermal_zone0", "cpu-thermal", 48.312),
        ("thermal_zone1", "x86_pkg_temp", 45.0),
        ("thermal_zone4", "gpu-thermal", -5.25),
    ],
)
def test_golden_zones(zone: str, zone_type: str, celsius: float) -> None:
    sensor = SoCThermal(SysfsTree(GOLDEN), zone).open()
    assert sensor.zone_type == zone_type
    reading = sensor.read().values["temperature"]
    assert reading.value == celsius
    assert reading.unit == "°C"


@pytest.mark.parametrize(
    ("zone", "error", "match"),
    [
        ("thermal_zone2", DataError, "THERMAL_TEMP_INVALID"),
        ("thermal_zone3", DataError, "integer"),
        ("thermal_zone5", SensorMissingError, "temp does not exist"),
    ],
)
def test_golden_faults(zone: str, error: type[Exception], match: str) -> None:
    sensor = SoCThermal(SysfsTree(GOLDEN), zone).open()
    with pytest.raises(error, match=f"soc_thermal {zone}: .*{match}"):
        sensor.read()
    assert sensor.status.health is not Health.OK


def test_missing_zone_fails_at_open() -> None:
    with pytest.raises(SensorMissingError, match="thermal_zone9/type"):
        SoCThermal(SysfsTree(GOLDEN), "thermal_zone9").open()


@pytest.mark.parametrize("bad", ["zone0", "thermal_zone", "thermal_zone0/..", "cpu-thermal"])
def test_zone_name_is_checked(bad: str) -> None:
    with pytest.raises(SensorSettingsError, match="thermal_zoneN"):
        SoCThermal(SysfsTree(GOLDEN), bad)


def test_parse_millicelsius() -> None:
    assert parse_millicelsius("48312\n") == 48.312
    assert parse_millicelsius("-40000") == -40.0
    with pytest.raises(DataError, match="below absolute zero"):
        parse_millicelsius("-300000")


def test_real_backend_default_zone_reads_the_golden_tree() -> None:
    sensor = open_sensor("soc_thermal", backend=RealBackend(sysfs_root=GOLDEN))
    assert sensor.read().values["temperature"].value == 48.312


# -- emulated --------------------------------------------------------------------------------


@settings(deadline=None, max_examples=40)
@given(celsius=st.floats(min_value=-40.0, max_value=125.0))
def test_round_trip_to_a_millidegree(celsius: float) -> None:
    with EmulatedBackend() as backend:
        sensor = open_sensor(
            "soc_thermal", backend=backend, signals={"temperature": Constant(celsius)}
        )
        # Rounding to the millidegree errs by half of one at most; a tie such as 0.0625 °C
        # sits exactly there, so the float comparison needs a hair of slack.
        half_millidegree = 5e-4 + 1e-9
        assert sensor.read().values["temperature"].value == pytest.approx(
            celsius, abs=half_millidegree
        )


def test_emulated_zone_files(tmp_path: Path) -> None:
    clock = ManualClock()
    tree = FakeSysfsTree(tmp_path)
    zone = ThermalZoneEmulator(clock=clock, zone_type="soc-thermal")
    tree.attach(f"{THERMAL}/thermal_zone1", zone)
    zone.set_signal(Constant(61.2345))
    assert tree.read_text(f"{THERMAL}/thermal_zone1/temp") == "61234\n"
    sensor = SoCThermal(tree, "thermal_zone1", backend=BackendKind.EMULATED, clock=clock).open()
    assert sensor.zone_type == "soc-thermal"
    assert sensor.read().values["temperature"].value == 61.234


def test_emulated_zone_dropout_is_a_bus_error(tmp_path: Path) -> None:
    tree = FakeSysfsTree(tmp_path)
    zone = ThermalZoneEmulator()
    tree.attach(f"{THERMAL}/thermal_zone0", zone)
    zone.set_signal(Constant(math.nan))
    with pytest.raises(BusError) as info:
        SoCThermal(tree).open().read()
    assert info.value.errno == errno.EIO


def test_default_signal_runs_warmer_than_the_room() -> None:
    with EmulatedBackend(seed=2) as backend:
        soc = open_sensor("soc_thermal", backend=backend)
        assert isinstance(soc, SoCThermal)
        assert soc.zone_type == "cpu-thermal"
        # The default "soc_temperature" signal: a warm board, 48 ± 3 °C daily, ± 5 °C of load.
        value = soc.read().values["temperature"].value
        assert 38 < value < 58


def test_open_sensor_picks_the_zone_and_refuses_signals_for_one_already_there() -> None:
    with EmulatedBackend() as backend:
        open_sensor("soc_thermal", backend=backend, device="thermal_zone3")
        assert isinstance(backend.sysfs.device_at(f"{THERMAL}/thermal_zone3"), ThermalZoneEmulator)
        assert backend.sysfs.device_at(f"{THERMAL}/thermal_zone0") is None
        with pytest.raises(SensorSettingsError, match="already at"):
            open_sensor(
                "soc_thermal",
                backend=backend,
                device="thermal_zone3",
                signals={"temperature": Constant(50.0)},
            )
