"""The quantity vocabulary: one definition per quantity, which every driver follows."""

from __future__ import annotations

import pytest

from edgetwin.hardware.quantities import (
    PHYSICAL_LIMITS,
    UNITS,
    VOCABULARY,
    decimals_for,
    default_signal,
    measured,
    quantity_info,
)
from edgetwin.hardware.registry import list_drivers

T0 = 1_700_000_000.0


@pytest.mark.parametrize("name", [info.name for info in list_drivers()])
def test_every_driver_measures_vocabulary_quantities_in_their_unit(name: str) -> None:
    info = next(i for i in list_drivers() if i.name == name)
    assert info.quantities
    for q in info.quantities:
        assert q.name in VOCABULARY, q
        assert q.unit == VOCABULARY[q.name].unit, q
        assert q.description
        assert 0 <= q.decimals <= 10, q
        assert info.default_signal_kind(q.name) in VOCABULARY


def test_every_entry_is_named_by_its_key_and_has_a_unit_range_and_signal() -> None:
    for name, q in VOCABULARY.items():
        assert q.name == name
        assert q.unit
        assert q.description
        assert q.limits[0] < q.limits[1]
        assert q.signal in VOCABULARY
        assert 0 <= q.decimals <= 10
    assert {n: q.limits for n, q in VOCABULARY.items()} == PHYSICAL_LIMITS
    assert {n: q.unit for n, q in VOCABULARY.items()} == UNITS


def test_measured_takes_the_unit_from_the_vocabulary() -> None:
    q = measured("pressure", decimals=5)
    assert (q.name, q.unit, q.description, q.decimals) == (
        "pressure",
        "hPa",
        VOCABULARY["pressure"].description,
        5,
    )
    assert measured("temperature", description="probe").description == "probe"
    assert measured("illuminance").decimals == VOCABULARY["illuminance"].decimals
    with pytest.raises(ValueError, match="co2"):
        measured("co2")
    with pytest.raises(ValueError, match="co2"):
        quantity_info("co2")


def test_an_adc_channel_plays_the_voltage_signal_within_the_voltage_limits() -> None:
    times = [T0 + 60.0 * i for i in range(100)]
    channel = default_signal("voltage_2", 7)
    voltage = default_signal("voltage", 7)
    assert [channel.sample(t) for t in times] == [voltage.sample(t) for t in times]
    assert PHYSICAL_LIMITS["voltage_2"] == PHYSICAL_LIMITS["voltage"]


@pytest.mark.parametrize(
    ("step", "decimals"),
    [
        (1.0, 0),
        (0.01, 2),  # BME280 temperature: exact
        (1 / 16, 4),  # DS18B20 at 12 bits: 0.0625 exactly
        (0.001, 3),  # a thermal zone's m°C
        (1 / 1024, 4),  # BME280 humidity: no short decimal, so 0.0001 <= step
        (175 / 65535, 3),  # SHT3x temperature
        (1 / 25600, 5),  # BME280 pressure in hPa
        (1 / 1.2, 1),  # BH1750 at its default sensitivity
        (2.5, 1),
        (2.048 / 32768, 5),  # ADS1115 at ±2.048 V: 62.5 µV, exact only at 7 decimals
    ],
)
def test_decimals_for_a_conversion_step(step: float, decimals: int) -> None:
    assert decimals_for(step) == decimals


def test_decimals_for_refuses_a_step_that_is_no_step() -> None:
    for step in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="step"):
            decimals_for(step)
