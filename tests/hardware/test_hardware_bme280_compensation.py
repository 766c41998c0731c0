"""BME280 pure functions: compensation maths, calibration parsing, timing, inversion.

Worked numbers: the calibration and ADC values below are Bosch's worked example for the BMP280
(datasheet BST-BMP280-DS001, section 3.12), whose temperature and pressure formulas the BME280
datasheet (BST-BME280-DS002, section 4.2.3; alternatives in appendix 8.1/8.2) repeats
unchanged. The expected integers were recomputed from those integer formulas with a separately
hand-transcribed script, not with `hardware`, and match the published 25.08 °C and ~100653 Pa.

Humidity has no published example, so it is checked against the datasheet's double-precision
formula (appendix 8.1), transcribed independently below.
"""

from __future__ import annotations

import dataclasses
import struct

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from edgetwin.hardware.drivers.bme280 import (
    SAMPLE_CALIBRATION,
    SKIPPED_16BIT,
    SKIPPED_20BIT,
    Calibration,
    _div_trunc,
    compensate_humidity,
    compensate_pressure,
    compensate_temperature,
    convert,
    measurement_time_max,
    measurement_time_typical,
    raw_humidity,
    raw_pressure,
    raw_temperature,
    unpack_data,
)
from edgetwin.hardware.errors import DataError

DATASHEET_ADC_T = 519888
DATASHEET_ADC_P = 415148


# -- worked example ------------------------------------------------------------------------


def test_datasheet_calibration_is_the_sample_calibration() -> None:
    cal = SAMPLE_CALIBRATION
    assert (cal.dig_T1, cal.dig_T2, cal.dig_T3) == (27504, 26435, -1000)
    assert (
        cal.dig_P1,
        cal.dig_P2,
        cal.dig_P3,
        cal.dig_P4,
        cal.dig_P5,
        cal.dig_P6,
        cal.dig_P7,
        cal.dig_P8,
        cal.dig_P9,
    ) == (36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000)


def test_temperature_worked_example() -> None:
    centi_celsius, t_fine = compensate_temperature(DATASHEET_ADC_T, SAMPLE_CALIBRATION)
    assert t_fine == 128422
    assert centi_celsius == 2508  # 25.08 °C


def test_pressure_worked_example() -> None:
    q24_8 = compensate_pressure(DATASHEET_ADC_P, 128422, SAMPLE_CALIBRATION)
    assert q24_8 == 25767233  # 100653.25 Pa in Q24.8
    assert q24_8 / 256 == pytest.approx(100653, abs=1)


@pytest.mark.parametrize(
    ("a", "b", "quotient"), [(7, 2, 3), (-7, 2, -3), (7, -2, -3), (-7, -2, 3), (-6, 3, -2)]
)
def test_pressure_division_truncates_toward_zero_like_c(a: int, b: int, quotient: int) -> None:
    # Python's // floors (-7 // 2 == -4); the datasheet's C code truncates.
    assert _div_trunc(a, b) == quotient


def test_pressure_guard_against_zero_divisor() -> None:
    blank_p1 = dataclasses.replace(SAMPLE_CALIBRATION, dig_P1=0)
    assert compensate_pressure(DATASHEET_ADC_P, 128422, blank_p1) == 0


# -- double-precision oracles (appendix 8.1), transcribed independently ----------------------


def _temperature_double(adc_t: int, cal: Calibration) -> tuple[float, int]:
    var1 = (adc_t / 16384.0 - cal.dig_T1 / 1024.0) * cal.dig_T2
    var2 = ((adc_t / 131072.0 - cal.dig_T1 / 8192.0) ** 2) * cal.dig_T3
    return (var1 + var2) / 5120.0, int(var1 + var2)


def _pressure_double(adc_p: int, t_fine: int, cal: Calibration) -> float:
    var1 = t_fine / 2.0 - 64000.0
    var2 = var1 * var1 * cal.dig_P6 / 32768.0
    var2 = var2 + var1 * cal.dig_P5 * 2.0
    var2 = var2 / 4.0 + cal.dig_P4 * 65536.0
    var1 = (cal.dig_P3 * var1 * var1 / 524288.0 + cal.dig_P2 * var1) / 524288.0
    var1 = (1.0 + var1 / 32768.0) * cal.dig_P1
    p = 1048576.0 - adc_p
    p = (p - var2 / 4096.0) * 6250.0 / var1
    var1 = cal.dig_P9 * p * p / 2147483648.0
    var2 = p * cal.dig_P8 / 32768.0
    return p + (var1 + var2 + cal.dig_P7) / 16.0


def _humidity_double(adc_h: int, t_fine: int, cal: Calibration) -> float:
    h = t_fine - 76800.0
    h = (adc_h - (cal.dig_H4 * 64.0 + cal.dig_H5 / 16384.0 * h)) * (
        cal.dig_H2
        / 65536.0
        * (1.0 + cal.dig_H6 / 67108864.0 * h * (1.0 + cal.dig_H3 / 67108864.0 * h))
    )
    h = h * (1.0 - cal.dig_H1 * h / 524288.0)
    return min(max(h, 0.0), 100.0)


def test_double_oracle_reproduces_worked_example() -> None:
    celsius, t_fine = _temperature_double(DATASHEET_ADC_T, SAMPLE_CALIBRATION)
    assert celsius == pytest.approx(25.08, abs=0.005)
    assert t_fine == 128422
    assert _pressure_double(DATASHEET_ADC_P, t_fine, SAMPLE_CALIBRATION) == pytest.approx(
        100653.27, abs=0.05
    )


# ADC ranges that map to -40..85 °C and roughly 300..1100 hPa with the sample calibration.
adc_t_values = st.integers(min_value=313_000, max_value=713_000)
adc_p_values = st.integers(min_value=150_000, max_value=900_000)
adc_h_values = st.integers(min_value=0, max_value=0xFFFF)


@given(adc_t=adc_t_values)
def test_integer_temperature_matches_double_formula(adc_t: int) -> None:
    centi_celsius, _ = compensate_temperature(adc_t, SAMPLE_CALIBRATION)
    expected, _ = _temperature_double(adc_t, SAMPLE_CALIBRATION)
    assert centi_celsius / 100 == pytest.approx(expected, abs=0.01)


@given(adc_t=adc_t_values, adc_p=adc_p_values)
def test_integer_pressure_matches_double_formula(adc_t: int, adc_p: int) -> None:
    _, t_fine = compensate_temperature(adc_t, SAMPLE_CALIBRATION)
    pa = compensate_pressure(adc_p, t_fine, SAMPLE_CALIBRATION) / 256
    assert pa == pytest.approx(_pressure_double(adc_p, t_fine, SAMPLE_CALIBRATION), abs=0.1)


@given(adc_t=adc_t_values, adc_h=adc_h_values)
def test_integer_humidity_matches_double_formula(adc_t: int, adc_h: int) -> None:
    _, t_fine = compensate_temperature(adc_t, SAMPLE_CALIBRATION)
    rh = compensate_humidity(adc_h, t_fine, SAMPLE_CALIBRATION) / 1024
    assert 0.0 <= rh <= 100.0
    assert rh == pytest.approx(_humidity_double(adc_h, t_fine, SAMPLE_CALIBRATION), abs=0.01)


# -- calibration parsing ---------------------------------------------------------------------

# The sample calibration as a chip would hold it, encoded by hand from the datasheet's table 16
# (little-endian words; 0xA0 unused; dig_H4/dig_H5 split around 0xE5).
SAMPLE_TP_BYTES = bytes.fromhex(
    "706b"
    "4367"
    "18fc"  # dig_T1 27504, dig_T2 26435, dig_T3 -1000
    "7d8e"
    "43d6"
    "d00b"  # dig_P1 36477 (above 32767: unsigned), dig_P2 -10685, dig_P3 3024
    "270b"
    "8c00"
    "f9ff"  # dig_P4 2855, dig_P5 140, dig_P6 -7
    "8c3c"
    "f8c6"
    "7017"  # dig_P7 15500, dig_P8 -14600, dig_P9 6000
    "00"
    "4b"  # 0xA0 unused, dig_H1 75
)
SAMPLE_H_BYTES = bytes.fromhex(
    "6a01"
    "00"  # dig_H2 362, dig_H3 0
    "13"
    "29"
    "03"  # 0xE4..0xE6: dig_H4 = 0x13<<4 | 0x9 = 313, dig_H5 = 0x03<<4 | 0x2 = 50
    "1e"  # dig_H6 30
)


def test_parse_sample_calibration_bytes() -> None:
    assert Calibration.from_registers(SAMPLE_TP_BYTES, SAMPLE_H_BYTES) == SAMPLE_CALIBRATION


def test_parse_negative_nibble_packed_h4_h5_and_signed_h6() -> None:
    h = bytes.fromhex(
        "ffff"  # dig_H2 -1
        "ff"  # dig_H3 255: unsigned
        "fe"
        "9a"
        "81"  # dig_H4 = (-2 << 4) | 0xA = -22; dig_H5 = (-127 << 4) | 0x9 = -2023
        "f6"  # dig_H6 -10
    )
    cal = Calibration.from_registers(SAMPLE_TP_BYTES, h)
    assert (cal.dig_H2, cal.dig_H3, cal.dig_H4, cal.dig_H5, cal.dig_H6) == (
        -1,
        255,
        -22,
        -2023,
        -10,
    )


def test_sample_calibration_encodes_to_the_hand_written_bytes() -> None:
    assert SAMPLE_CALIBRATION.to_registers() == (SAMPLE_TP_BYTES, SAMPLE_H_BYTES)


s16 = st.integers(min_value=-32768, max_value=32767)
u16 = st.integers(min_value=0, max_value=0xFFFF)
s12 = st.integers(min_value=-2048, max_value=2047)
u8 = st.integers(min_value=0, max_value=0xFF)
s8 = st.integers(min_value=-128, max_value=127)


@given(
    st.builds(
        Calibration,
        dig_T1=u16,
        dig_T2=s16,
        dig_T3=s16,
        dig_P1=st.integers(min_value=1, max_value=0xFFFF),
        dig_P2=s16,
        dig_P3=s16,
        dig_P4=s16,
        dig_P5=s16,
        dig_P6=s16,
        dig_P7=s16,
        dig_P8=s16,
        dig_P9=s16,
        dig_H1=u8,
        dig_H2=s16,
        dig_H3=u8,
        dig_H4=s12,
        dig_H5=s12,
        dig_H6=s8,
    )
)
def test_calibration_round_trips_through_register_bytes(cal: Calibration) -> None:
    tp, h = cal.to_registers()
    # A block of one repeated 0x00 or 0xFF is rejected as unloaded NVM (tested below).
    assume(all(len(set(block)) > 1 or block[0] not in (0x00, 0xFF) for block in (tp, h)))
    assert Calibration.from_registers(tp, h) == cal


@pytest.mark.parametrize("blank", [0x00, 0xFF])
def test_blank_calibration_is_a_data_error(blank: int) -> None:
    with pytest.raises(DataError, match="NVM"):
        Calibration.from_registers(bytes([blank] * 26), SAMPLE_H_BYTES)


def test_zero_dig_p1_is_a_data_error() -> None:
    tp = bytearray(SAMPLE_TP_BYTES)
    tp[6:8] = struct.pack("<H", 0)
    with pytest.raises(DataError, match="dig_P1"):
        Calibration.from_registers(tp, SAMPLE_H_BYTES)


def test_wrong_block_length_is_a_data_error() -> None:
    with pytest.raises(DataError, match="26 and 7"):
        Calibration.from_registers(SAMPLE_TP_BYTES[:24], SAMPLE_H_BYTES)


def test_out_of_range_h4_cannot_be_encoded() -> None:
    cal = dataclasses.replace(SAMPLE_CALIBRATION, dig_H4=2048)
    with pytest.raises(ValueError, match="dig_H4"):
        cal.to_registers()


# -- data registers and conversion -----------------------------------------------------------


def test_unpack_data_registers() -> None:
    # press 0x65 0x5A 0xC0 -> 0x655AC; temp 0x7E 0xED 0x00 -> 0x7EED0; hum 0x6F 0x2A
    assert unpack_data([0x65, 0x5A, 0xC0, 0x7E, 0xED, 0x00, 0x6F, 0x2A]) == (
        0x655AC,
        0x7EED0,
        0x6F2A,
    )


def test_convert_worked_example_to_driver_units() -> None:
    values = convert(DATASHEET_ADC_P, DATASHEET_ADC_T, 0x6F2A, SAMPLE_CALIBRATION)
    assert values["temperature"] == 25.08
    assert values["pressure"] == pytest.approx(1006.5325, abs=1e-4)
    assert 0.0 <= values["humidity"] <= 100.0


@pytest.mark.parametrize(
    ("adc_p", "adc_t", "adc_h", "skipped"),
    [
        (DATASHEET_ADC_P, SKIPPED_20BIT, 0x6F2A, "temperature"),
        (SKIPPED_20BIT, DATASHEET_ADC_T, 0x6F2A, "pressure"),
        (DATASHEET_ADC_P, DATASHEET_ADC_T, SKIPPED_16BIT, "humidity"),
    ],
)
def test_skipped_measurement_is_a_data_error(
    adc_p: int, adc_t: int, adc_h: int, skipped: str
) -> None:
    with pytest.raises(DataError, match=skipped):
        convert(adc_p, adc_t, adc_h, SAMPLE_CALIBRATION)


# -- measurement time (section 9.1) ----------------------------------------------------------


def test_measurement_times_at_x1() -> None:
    assert measurement_time_typical(1, 1, 1) == pytest.approx(8.0e-3)
    assert measurement_time_max(1, 1, 1) == pytest.approx(9.3e-3)


def test_measurement_time_drops_skipped_terms() -> None:
    assert measurement_time_max(1, 0, 0) == pytest.approx(3.55e-3)
    assert measurement_time_typical(16, 16, 16) == pytest.approx(98.0e-3)


# -- inverse compensation used by the emulator -----------------------------------------------


@given(celsius=st.floats(min_value=-40, max_value=85))
@example(celsius=26.4608)  # the nearest code would be 0x80000, "skipped"; a run found it
def test_raw_temperature_is_the_nearest_16_bit_value(celsius: float) -> None:
    adc = raw_temperature(celsius, SAMPLE_CALIBRATION, bits=16)
    assert adc % 16 == 0
    target = celsius * 5120

    def error(a: int) -> float:
        return abs(compensate_temperature(a, SAMPLE_CALIBRATION)[1] - target)

    # 0x80000 is the chip's "measurement skipped": never a reading, so near 26.46 °C (with
    # this calibration) the nearest code the emulator may give is the one beside it.
    assert adc != SKIPPED_20BIT
    neighbours = [a for a in (adc - 16, adc + 16) if a != SKIPPED_20BIT]
    assert error(adc) <= min(map(error, neighbours))


@given(hpa=st.floats(min_value=300, max_value=1100), celsius=st.floats(min_value=-40, max_value=85))
def test_raw_pressure_is_the_nearest_value(hpa: float, celsius: float) -> None:
    _, t_fine = compensate_temperature(
        raw_temperature(celsius, SAMPLE_CALIBRATION), SAMPLE_CALIBRATION
    )
    adc = raw_pressure(hpa, t_fine, SAMPLE_CALIBRATION)

    def error(a: int) -> float:
        return abs(compensate_pressure(a, t_fine, SAMPLE_CALIBRATION) / 25600 - hpa)

    assert adc != SKIPPED_20BIT
    if adc - 1 != SKIPPED_20BIT and adc + 1 != SKIPPED_20BIT:
        # A value halfway between two codes may round either way: its errors tie, but for
        # the last bits of the doubles.
        tie = 1e-9
        assert error(adc) <= min(error(adc - 1), error(adc + 1)) + tie


def test_inversion_never_returns_the_skipped_marker() -> None:
    # Aim straight at the values the markers would compensate to.
    cal = SAMPLE_CALIBRATION
    _, t_fine = compensate_temperature(DATASHEET_ADC_T, cal)
    at_marker_t = compensate_temperature(SKIPPED_20BIT, cal)[1] / 5120
    at_marker_p = compensate_pressure(SKIPPED_20BIT, t_fine, cal) / 25600
    at_marker_h = compensate_humidity(SKIPPED_16BIT, t_fine, cal) / 1024
    assert raw_temperature(at_marker_t, cal) != SKIPPED_20BIT
    assert raw_pressure(at_marker_p, t_fine, cal) != SKIPPED_20BIT
    assert raw_humidity(at_marker_h, t_fine, cal) != SKIPPED_16BIT
    assert raw_temperature(at_marker_t, cal, bits=16) in (SKIPPED_20BIT - 16, SKIPPED_20BIT + 16)


def test_inversion_saturates_outside_the_adc_range() -> None:
    _, t_fine = compensate_temperature(DATASHEET_ADC_T, SAMPLE_CALIBRATION)
    assert raw_humidity(-5.0, t_fine, SAMPLE_CALIBRATION) == 0
    assert (
        compensate_humidity(
            raw_humidity(120.0, t_fine, SAMPLE_CALIBRATION), t_fine, SAMPLE_CALIBRATION
        )
        == 102400
    )
    assert raw_temperature(500.0, SAMPLE_CALIBRATION) == (1 << 20) - 1
