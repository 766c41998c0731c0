"""Driver registry, open_sensor on both back ends, and the package's public face."""

from __future__ import annotations

import dataclasses
import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgetwin import hardware
from edgetwin.hardware import (
    BackendKind,
    ChipIdError,
    EmulatedBackend,
    HardwareError,
    Health,
    RealBackend,
    SensorMissingError,
    SensorSettingsError,
    UnknownDriverError,
    driver_info,
    list_drivers,
    open_sensor,
)
from edgetwin.hardware.backends import make_backend
from edgetwin.hardware.bus import FakeI2CBus
from edgetwin.hardware.drivers.bme280 import BME280Emulator
from edgetwin.hardware.errors import BusError
from edgetwin.hardware.quantities import PHYSICAL_LIMITS, decimals_for
from edgetwin.hardware.registry import reading_quantities
from edgetwin.hardware.signals import Constant
from edgetwin.hardware.timing import ManualClock, VirtualTimer


@pytest.fixture
def backend(clock: ManualClock) -> EmulatedBackend:
    return EmulatedBackend(clock=clock, seed=7)


# -- registry --------------------------------------------------------------------------------


def test_list_drivers() -> None:
    drivers = list_drivers()
    assert [d.name for d in drivers] == [
        "ads1115",
        "bh1750",
        "bme280",
        "button",
        "ds18b20",
        "hcsr04",
        "pir",
        "sht3x",
        "soc_thermal",
    ]
    info = driver_info("bme280")
    assert info.interface == "i2c"
    assert info.default_address == 0x76
    assert info.valid_addresses() == (0x76, 0x77)
    assert [(q.name, q.unit) for q in info.quantities] == [
        ("temperature", "°C"),
        ("humidity", "%RH"),
        ("pressure", "hPa"),
    ]
    assert "BME280" in info.description


@pytest.mark.parametrize("name", [info.name for info in list_drivers()])
def test_every_driver_reads_emulated_without_any_signal_given(name: str) -> None:
    """Each quantity of each driver has a default signal, so any sensor can be simulated."""
    info = driver_info(name)
    pins = {role: 5 + n for n, role in enumerate(info.pins)}
    with EmulatedBackend() as backend, open_sensor(name, backend=backend, pins=pins) as sensor:
        reading = sensor.read()
    assert set(reading.values) <= {q.name for q in info.quantities}
    assert reading.values
    for quantity, measurement in reading.values.items():
        low, high = PHYSICAL_LIMITS[info.default_signal_kind(quantity)]
        assert low <= measurement.value <= high, (quantity, measurement)


def test_emulated_soc_runs_warmer_than_the_room() -> None:
    with EmulatedBackend() as backend, open_sensor("soc_thermal", backend=backend) as soc:
        assert soc.read().values["temperature"].value > 35


def test_driver_info_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        driver_info("bme280").name = "other"  # type: ignore[misc]


def test_unknown_driver_names_the_known_ones() -> None:
    with pytest.raises(UnknownDriverError, match="bme280") as info:
        driver_info("bmp999")
    assert isinstance(info.value, LookupError)
    with pytest.raises(UnknownDriverError):
        open_sensor("bmp999", backend=EmulatedBackend())


# -- open_sensor, emulated -------------------------------------------------------------------


def test_open_sensor_emulated_reads_plausible_values(backend: EmulatedBackend) -> None:
    sensor = open_sensor("bme280", backend=backend)
    reading = sensor.read()
    assert sensor.status.backend is BackendKind.EMULATED
    assert sensor.status.health is Health.OK
    assert 15 < reading.values["temperature"].value < 27
    assert 25 < reading.values["humidity"].value < 75
    assert 1008 < reading.values["pressure"].value < 1019
    assert reading.timestamp == backend.clock()


def test_open_sensor_attaches_an_emulator_at_the_address(backend: EmulatedBackend) -> None:
    open_sensor("bme280", backend=backend, bus=3, address=0x77)
    assert isinstance(backend.i2c_bus(3).device_at(0x77), BME280Emulator)
    assert backend.i2c_bus(3).device_at(0x76) is None
    assert backend.i2c_bus(1).device_at(0x77) is None


def test_signals_override_defaults(backend: EmulatedBackend) -> None:
    sensor = open_sensor("bme280", backend=backend, signals={"temperature": Constant(30.0)})
    values = sensor.read().values
    assert values["temperature"].value == pytest.approx(30.0, abs=0.01)
    assert 1008 < values["pressure"].value < 1019  # still the default pressure signal


def test_unknown_signal_name_is_refused(backend: EmulatedBackend) -> None:
    with pytest.raises(ValueError, match="temprature"):
        open_sensor("bme280", backend=backend, signals={"temprature": Constant(30.0)})


def test_invalid_address_is_refused(backend: EmulatedBackend) -> None:
    with pytest.raises(ValueError, match="0x76, 0x77"):
        open_sensor("bme280", backend=backend, address=0x40)


def test_a_chip_already_in_place_is_used_as_is(backend: EmulatedBackend) -> None:
    impostor = BME280Emulator(chip_id=0x58, timer=backend.timer)
    backend.i2c_bus(1).attach(0x76, impostor)
    with pytest.raises(ChipIdError):
        open_sensor("bme280", backend=backend)
    assert backend.i2c_bus(1).device_at(0x76) is impostor


def test_two_sensors_on_one_chip_share_it(backend: EmulatedBackend) -> None:
    first = open_sensor("bme280", backend=backend, signals={"humidity": Constant(61.0)})
    second = open_sensor("bme280", backend=backend)
    assert second.read().values["humidity"].value == pytest.approx(61.0, abs=0.013)
    assert first.read().values["humidity"].value == pytest.approx(61.0, abs=0.013)


def test_signals_for_a_chip_already_in_place_are_refused(backend: EmulatedBackend) -> None:
    open_sensor("bme280", backend=backend)
    with pytest.raises(ValueError, match="already at 0x76"):
        open_sensor("bme280", backend=backend, signals={"humidity": Constant(5.0)})


def _series(backend: EmulatedBackend, clock: ManualClock, address: int = 0x76) -> list[float]:
    sensor = open_sensor("bme280", backend=backend, address=address, seed=1)
    values = []
    for _ in range(20):
        clock.advance(60.0)
        reading = sensor.read().values
        values += [reading[q].value for q in ("temperature", "humidity", "pressure")]
    return values


def test_emulated_sensors_are_reproducible_from_the_seed() -> None:
    runs = []
    for backend_seed in (7, 7, 8):
        clock = ManualClock()
        runs.append(_series(EmulatedBackend(clock=clock, seed=backend_seed), clock))
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_sensors_at_two_addresses_get_different_streams() -> None:
    clock_a, clock_b = ManualClock(), ManualClock()
    backend = EmulatedBackend(clock=clock_a, seed=7)
    other = EmulatedBackend(clock=clock_b, seed=7)
    assert _series(backend, clock_a, 0x76) != _series(other, clock_b, 0x77)


def test_emulated_reads_cost_no_real_sleep(backend: EmulatedBackend) -> None:
    assert isinstance(backend.timer, VirtualTimer)
    sensor = open_sensor("bme280", backend=backend)
    before = backend.timer.monotonic()
    for _ in range(50):
        sensor.read()
    # 50 conversions of at least 8 ms each passed in virtual time.
    assert backend.timer.monotonic() - before >= 50 * 8e-3


def test_emulated_sensor_fault_cycle_through_the_backend(backend: EmulatedBackend) -> None:
    sensor = open_sensor("bme280", backend=backend, signals={"temperature": Constant(0.5)})
    backend.i2c_bus(1).unplug(0x76)
    with pytest.raises(SensorMissingError):
        sensor.read()
    assert sensor.status.health is Health.MISSING
    backend.i2c_bus(1).replug(0x76)
    assert sensor.read().values["temperature"].value == pytest.approx(0.5, abs=0.01)
    assert sensor.status.health is Health.OK


def test_emulated_backend_buses_are_created_once_and_closed(clock: ManualClock) -> None:
    with EmulatedBackend(clock=clock) as backend:
        bus = backend.i2c_bus(1)
        assert isinstance(bus, FakeI2CBus)
        assert backend.i2c_bus(1) is bus
        assert backend.kind is BackendKind.EMULATED
    with pytest.raises(OSError, match="Bad file descriptor"):
        bus.read_byte(0x76)


# -- real back end, without hardware ---------------------------------------------------------


def test_real_backend_missing_device_node(tmp_path: Path) -> None:
    backend = RealBackend(dev_dir=tmp_path)
    assert backend.kind is BackendKind.REAL
    with pytest.raises(SensorMissingError, match=f"{tmp_path}/i2c-1 does not exist") as info:
        backend.i2c_bus(1)
    assert isinstance(info.value.__cause__, FileNotFoundError)


def test_open_sensor_on_a_real_backend_without_i2c(tmp_path: Path) -> None:
    with pytest.raises(SensorMissingError, match="i2c-4"):
        open_sensor("bme280", backend=RealBackend(dev_dir=tmp_path), bus=4)


def test_real_backend_refuses_a_file_that_is_not_an_adapter(tmp_path: Path) -> None:
    (tmp_path / "i2c-1").write_bytes(b"")
    with pytest.raises(BusError, match="not a usable I2C adapter"):
        RealBackend(dev_dir=tmp_path).i2c_bus(1)


@pytest.mark.skipif(os.geteuid() == 0, reason="root opens any file regardless of mode")
def test_real_backend_permission_denied(tmp_path: Path) -> None:
    node = tmp_path / "i2c-1"
    node.write_bytes(b"")
    node.chmod(0)
    with pytest.raises(HardwareError, match="'i2c' group"):
        RealBackend(dev_dir=tmp_path).i2c_bus(1)


def test_make_backend_from_configuration() -> None:
    assert isinstance(make_backend("emulated", seed=3), EmulatedBackend)
    assert isinstance(make_backend(BackendKind.REAL), RealBackend)
    with pytest.raises(ValueError, match="known: real, emulated"):
        make_backend("simulated")


# -- the package's public face ---------------------------------------------------------------


def test_public_names_are_exported() -> None:
    for name in (
        "Sensor",
        "Reading",
        "Measurement",
        "Quantity",
        "Health",
        "BackendKind",
        "HardwareError",
        "BusError",
        "SensorMissingError",
        "ChipIdError",
        "DataError",
        "UnknownDriverError",
        "EmulatedBackend",
        "RealBackend",
        "open_sensor",
        "list_drivers",
        "driver_info",
        "SignalModel",
    ):
        assert name in hardware.__all__
        assert hasattr(hardware, name)


def test_hardware_imports_nothing_from_upper_layers() -> None:
    code = (
        "import sys, hardware; "
        "bad = sorted({m.split('.')[0] for m in sys.modules} & "
        "{'paho', 'fastapi', 'pydantic', 'agent', 'gateway', 'uvicorn', 'smbus2'}); "
        "print(','.join(bad))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    # smbus2 too: it is imported only when a real bus is opened.
    assert result.stdout.strip() == ""


# -- what a reading holds, from the metadata alone ---------------------------------------------


class Staircase:
    """A signal climbing by a step that starts at `delta` and grows 3 % a sample.

    The first steps are a small fraction of the driver's resolution, so successive readings
    land on the same or the next value of its conversion and the smallest gap between the
    distinct values read is one conversion step; the growth carries the climb over many steps
    even where a driver's step is hundreds of times its stated decimals' (1/16 °C at 4).
    """

    def __init__(self, start: float, delta: float) -> None:
        self.value = start
        self.delta = delta

    def sample(self, t: float) -> float:
        self.value += self.delta
        self.delta *= 1.03
        return self.value


# Where each kind of signal starts its climb: inside every driver's range for the quantity.
STAIRCASE_START = {
    "temperature": 40.0,
    "soc_temperature": 40.0,
    "humidity": 40.0,
    "pressure": 1000.0,
    "illuminance": 300.0,
    "voltage_0": 0.01,  # within ±0.256 V, the narrowest gain
    "voltage_1": 0.02,
    "voltage_2": 0.03,
    "voltage_3": 0.04,
}
# No conversion step to observe: an echo's timing, and on/off levels.
NO_STEP = {"distance", "motion", "contact"}

# Every registered driver at its defaults, and the drivers whose options change the reading.
DRIVER_SETTINGS: list[tuple[str, dict[str, hardware.drivers.OptionValue]]] = [
    (info.name, {}) for info in list_drivers()
] + [
    ("ads1115", {"gain": 4.096, "channels": "1,3"}),
    ("ads1115", {"gain": 0.256, "channels": 2}),
    ("bh1750", {"mtreg": 31}),
    ("bh1750", {"mtreg": 254}),
]


@pytest.mark.parametrize(("name", "options"), DRIVER_SETTINGS, ids=str)
def test_reading_quantities_are_what_the_driver_reads_on_its_emulated_chip(
    name: str, options: dict[str, hardware.drivers.OptionValue]
) -> None:
    quantities = reading_quantities(name, options)
    info = driver_info(name)
    stepped = [q for q in quantities if q.name not in NO_STEP]
    signals = {
        q.name: Staircase(STAIRCASE_START[info.default_signal_kind(q.name)], 0.1 * 10**-q.decimals)
        for q in stepped
    }
    pins = {role: 5 + n for n, role in enumerate(info.pins)}
    reads = 300 if stepped else 3
    with (
        EmulatedBackend() as backend,
        open_sensor(name, backend=backend, pins=pins, options=options, signals=signals) as sensor,
    ):
        readings = [sensor.read() for _ in range(reads)]
    assert tuple(sensor.quantities) == quantities
    for reading in readings:
        assert {n: m.unit for n, m in reading.values.items()} == {
            q.name: q.unit for q in quantities
        }
    for q in stepped:
        distinct = sorted({r.values[q.name].value for r in readings})
        assert len(distinct) >= 3, (
            f"{q.name}: the driver's steps are coarser than {q.decimals} decimals"
        )
        step = min(b - a for a, b in itertools.pairwise(distinct))
        assert decimals_for(step) == q.decimals, (q.name, step)
        # Published at those decimals, no two readings the driver told apart become one.
        assert len({round(v, q.decimals) for v in distinct}) == len(distinct)
        if step * 10**q.decimals == pytest.approx(round(step * 10**q.decimals), abs=1e-6):
            assert all(round(v, q.decimals) == pytest.approx(v, abs=1e-9) for v in distinct)
    for q in quantities:
        if q.name in NO_STEP and q.decimals == 0:
            assert {r.values[q.name].value for r in readings} <= {0.0, 1.0}


def test_reading_quantities_follow_the_options_and_check_them() -> None:
    assert [q.name for q in reading_quantities("ads1115", {"channels": "3,0"})] == [
        "voltage_0",
        "voltage_3",
    ]
    assert reading_quantities("ads1115", {"gain": 0.256})[0].decimals == 6  # 7.8125 µV
    assert reading_quantities("ads1115")[0].decimals == 5  # 62.5 µV at ±2.048 V
    assert reading_quantities("bh1750", {"mtreg": 31})[0].decimals == 0  # 1.86 lx a count
    assert [(q.name, q.unit, q.decimals) for q in reading_quantities("bme280")] == [
        ("temperature", "°C", 2),
        ("humidity", "%RH", 4),
        ("pressure", "hPa", 5),
    ]
    assert reading_quantities("ds18b20")[0].decimals == 4  # 1/16 °C, exactly
    with pytest.raises(SensorSettingsError, match="channels"):
        reading_quantities("ads1115", {"channels": "4"})
    with pytest.raises(SensorSettingsError, match="no option 'gain'"):
        reading_quantities("bme280", {"gain": 1})
    with pytest.raises(UnknownDriverError, match="nope"):
        reading_quantities("nope")
