"""Calibration layout, Bosch's compensation and its inverse (hil.bme280.calibration, hil.bme280.compensation)."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hil.bme280.calibration import CALIBRATIONS, DEFAULT_CALIBRATION, Calibration
from hil.bme280.compensation import (
    Environment,
    compensate_float,
    compensate_int,
    measurement_time_s,
    pressure_float,
    pressure_int,
    raw_from_environment,
    t_fine_float,
    t_fine_int,
)
from hil.bme280.registers import ADC_H_MAX, ADC_TP_MAX

# The BMP280 datasheet's worked example (SPEC_FACTS.md §6): same T/P formulas as the BME280.
BMP280_EXAMPLE = Calibration(
    dig_T1=27504, dig_T2=26435, dig_T3=-1000,
    dig_P1=36477, dig_P2=-10685, dig_P3=3024, dig_P4=2855, dig_P5=140,
    dig_P6=-7, dig_P7=15500, dig_P8=-14600, dig_P9=6000,
    dig_H1=75, dig_H2=362, dig_H3=0, dig_H4=313, dig_H5=50, dig_H6=30,
)  # fmt: skip

calibrations = st.builds(
    Calibration,
    dig_T1=st.integers(0, 0xFFFF),
    dig_T2=st.integers(-0x8000, 0x7FFF),
    dig_T3=st.integers(-0x8000, 0x7FFF),
    dig_P1=st.integers(0, 0xFFFF),
    dig_P2=st.integers(-0x8000, 0x7FFF),
    dig_P3=st.integers(-0x8000, 0x7FFF),
    dig_P4=st.integers(-0x8000, 0x7FFF),
    dig_P5=st.integers(-0x8000, 0x7FFF),
    dig_P6=st.integers(-0x8000, 0x7FFF),
    dig_P7=st.integers(-0x8000, 0x7FFF),
    dig_P8=st.integers(-0x8000, 0x7FFF),
    dig_P9=st.integers(-0x8000, 0x7FFF),
    dig_H1=st.integers(0, 0xFF),
    dig_H2=st.integers(-0x8000, 0x7FFF),
    dig_H3=st.integers(0, 0xFF),
    dig_H4=st.integers(-0x800, 0x7FF),
    dig_H5=st.integers(-0x800, 0x7FF),
    dig_H6=st.integers(-0x80, 0x7F),
)


# --- calibration layout ---


@given(calibrations)
def test_calibration_round_trips_through_registers(cal: Calibration) -> None:
    regs = cal.to_registers()
    assert set(regs) == {*range(0x88, 0xA2), *range(0xE1, 0xE8)}
    assert all(0 <= v <= 0xFF for v in regs.values())
    assert Calibration.from_registers(regs) == cal
    tp = bytes(regs[r] for r in range(0x88, 0xA2))
    h = bytes(regs[r] for r in range(0xE1, 0xE8))
    assert Calibration.from_blocks(tp, h) == cal


def test_calibration_byte_layout_including_h4_h5_nibbles() -> None:
    cal = BMP280_EXAMPLE
    regs = cal.to_registers()
    assert (regs[0x88], regs[0x89]) == (27504 & 0xFF, 27504 >> 8)  # T1 u16 LE
    assert (regs[0x8C], regs[0x8D]) == (0x18, 0xFC)  # T3 = -1000 as s16 LE
    assert regs[0xA0] == 0 and regs[0xA1] == 75
    assert (regs[0xE1], regs[0xE2], regs[0xE3]) == (362 & 0xFF, 362 >> 8, 0)
    # H4 = 313 = 0x139: E4 = 0x13, E5[3:0] = 0x9; H5 = 50 = 0x032: E6 = 0x03, E5[7:4] = 0x2
    assert (regs[0xE4], regs[0xE5], regs[0xE6], regs[0xE7]) == (0x13, 0x29, 0x03, 30)


def test_negative_h4_h5_pack_as_signed_byte_times_16_plus_nibble() -> None:
    cal = replace(BMP280_EXAMPLE, dig_H4=-5, dig_H5=-300)
    regs = cal.to_registers()
    e4, e5, e6 = regs[0xE4], regs[0xE5], regs[0xE6]
    assert (e4 - 256) * 16 + (e5 & 0xF) == -5  # E4 = 0xFF
    assert (e6 - 256) * 16 + (e5 >> 4) == -300  # E6 = 0xED
    assert Calibration.from_registers(regs) == cal


def test_calibration_rejects_out_of_range_fields_and_missing_bytes() -> None:
    with pytest.raises(ValueError, match="dig_H4"):
        replace(BMP280_EXAMPLE, dig_H4=2048)
    with pytest.raises(ValueError, match="dig_T1"):
        replace(BMP280_EXAMPLE, dig_T1=-1)
    regs = BMP280_EXAMPLE.to_registers()
    del regs[0xE5]
    with pytest.raises(ValueError, match="0xE5"):
        Calibration.from_registers(regs)
    with pytest.raises(ValueError, match="26 bytes"):
        Calibration.from_blocks(b"\x00" * 24, b"\x00" * 7)


def test_shipped_calibrations_are_plausible_parts() -> None:
    assert DEFAULT_CALIBRATION is CALIBRATIONS["bmp280_datasheet"]
    assert len(CALIBRATIONS) >= 3
    for cal in CALIBRATIONS.values():
        assert cal.dig_T1 and cal.dig_P1 and cal.dig_H1  # none is "corrupt"
        # room temperature and sea-level pressure land mid-scale, as on real parts
        adc_t, adc_p, adc_h = raw_from_environment(cal, Environment(25.0, 50.0, 1013.25))
        assert 400_000 < adc_t < 650_000
        assert 250_000 < adc_p < 500_000
        assert 20_000 < adc_h < 40_000


# --- compensation vectors (SPEC_FACTS.md §6) ---


def test_datasheet_temperature_vector() -> None:
    assert t_fine_int(BMP280_EXAMPLE, 519888) == 128422
    assert compensate_int(BMP280_EXAMPLE, 519888, 415148, 0).temperature_c == 25.08
    assert compensate_float(BMP280_EXAMPLE, 519888, 415148, 0).temperature_c == pytest.approx(
        25.08, abs=0.005
    )


def test_datasheet_pressure_vector() -> None:
    assert pressure_int(BMP280_EXAMPLE, 415148, 128422) == 25767233
    assert compensate_int(BMP280_EXAMPLE, 519888, 415148, 0).pressure_hpa == 25767233 / 25600
    # 100653.26 Pa to two decimals, whether t_fine stays a float (host drivers: 100653.267)
    # or is truncated to an int as in the datasheet's code (100653.258)
    p = pressure_float(BMP280_EXAMPLE, 415148, t_fine_float(BMP280_EXAMPLE, 519888))
    assert math.floor(p * 100) / 100 == 100653.26
    truncated = compensate_float(BMP280_EXAMPLE, 519888, 415148, 0, truncate_t_fine=True)
    assert round(truncated.pressure_hpa * 100, 2) == 100653.26


def test_pressure_guard_against_zero_divisor() -> None:
    cal = replace(BMP280_EXAMPLE, dig_P1=0)
    assert pressure_int(cal, 415148, 128422) == 0
    assert pressure_float(cal, 415148, 128422.0) == 0.0


def test_humidity_is_clamped_to_0_100_by_both_compensations() -> None:
    cal = DEFAULT_CALIBRATION
    for compensate in (compensate_int, compensate_float):
        assert compensate(cal, 519888, 415148, 0).humidity_pct == 0.0
        assert compensate(cal, 519888, 415148, ADC_H_MAX).humidity_pct == 100.0


@given(
    st.sampled_from(list(CALIBRATIONS.values())),
    st.integers(300_000, 730_000),
    st.integers(150_000, 850_000),
    st.integers(15_000, 45_000),
)
def test_integer_and_float_compensation_agree(
    cal: Calibration, adc_t: int, adc_p: int, adc_h: int
) -> None:
    i = compensate_int(cal, adc_t, adc_p, adc_h)
    f = compensate_float(cal, adc_t, adc_p, adc_h)
    assert i.temperature_c == pytest.approx(f.temperature_c, abs=0.01)
    assert i.pressure_hpa == pytest.approx(f.pressure_hpa, abs=0.01)
    assert i.humidity_pct == pytest.approx(f.humidity_pct, abs=0.02)


def test_measurement_time_formula() -> None:
    assert measurement_time_s(1, 1, 1, maximum=True) == pytest.approx(0.0093)
    assert measurement_time_s(5, 5, 5, maximum=True) == pytest.approx(0.1128)
    assert measurement_time_s(1, 1, 1) == pytest.approx(0.008)  # 1 + 2 + 2.5 + 2.5 ms
    assert measurement_time_s(5, 7, 6) == pytest.approx(0.098)  # codes 5-7 are all ×16
    assert measurement_time_s(1, 0, 0) == pytest.approx(0.003)  # skipped terms drop out
    assert measurement_time_s(0, 0, 0) == pytest.approx(0.001)


# --- the inverse ---

# Worst cases over the datasheet range for the shipped calibrations (a 750k-point sweep):
# T: integer 0.005 °C (half its 0.01 °C LSB), float 0.0029 °C; P: 0.0035 hPa both; H:
# 0.0073 %RH both.  P and H cannot reach their output LSB (1/256 Pa, 1/1024 %RH): one ADC
# step is ~0.17 Pa and ~0.006 %RH, Bosch's integer humidity drops adc_H's low bit, and the
# two compensations differ by up to ~0.4 Pa, so one raw code must split the difference.
T_INT_TOL = 0.005 + 1e-9
T_FLOAT_TOL = 0.004
P_TOL_HPA = 0.005
H_TOL = 0.01

environments = st.builds(
    Environment,
    temperature_c=st.floats(-40.0, 85.0),
    humidity_pct=st.floats(0.0, 100.0),
    pressure_hpa=st.floats(300.0, 1100.0),
)


def _assert_reads_back(cal: Calibration, env: Environment) -> None:
    adc_t, adc_p, adc_h = raw_from_environment(cal, env)
    assert 0 <= adc_t <= ADC_TP_MAX and 0 <= adc_p <= ADC_TP_MAX and 0 <= adc_h <= ADC_H_MAX
    i = compensate_int(cal, adc_t, adc_p, adc_h)
    f = compensate_float(cal, adc_t, adc_p, adc_h)
    ft = compensate_float(cal, adc_t, adc_p, adc_h, truncate_t_fine=True)
    assert abs(i.temperature_c - env.temperature_c) <= T_INT_TOL
    for r in (f, ft):
        assert abs(r.temperature_c - env.temperature_c) <= T_FLOAT_TOL
    for r in (i, f, ft):
        assert abs(r.pressure_hpa - env.pressure_hpa) <= P_TOL_HPA
        assert abs(r.humidity_pct - env.humidity_pct) <= H_TOL


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from(list(CALIBRATIONS.values())), environments)
def test_inverse_reads_back_over_the_whole_range(cal: Calibration, env: Environment) -> None:
    _assert_reads_back(cal, env)


def test_worst_case_inverse_error_over_a_seeded_sweep() -> None:
    """A reproducible sweep whose worst cases are the figures quoted above."""
    rng = random.Random(280)
    worst: dict[str, float] = {}

    def note(key: str, err: float) -> None:
        worst[key] = max(worst.get(key, 0.0), err)

    for cal in CALIBRATIONS.values():
        for _ in range(1000):
            env = Environment(rng.uniform(-40, 85), rng.uniform(0, 100), rng.uniform(300, 1100))
            raw = raw_from_environment(cal, env)
            for kind, r in (
                ("int", compensate_int(cal, *raw)),
                ("float", compensate_float(cal, *raw)),
            ):
                note(f"T_{kind}", abs(r.temperature_c - env.temperature_c))
                note(f"P_{kind}", abs(r.pressure_hpa - env.pressure_hpa))
                note(f"H_{kind}", abs(r.humidity_pct - env.humidity_pct))
    assert worst["T_int"] <= T_INT_TOL and worst["T_float"] <= T_FLOAT_TOL
    assert worst["P_int"] <= P_TOL_HPA and worst["P_float"] <= P_TOL_HPA
    assert worst["H_int"] <= H_TOL and worst["H_float"] <= H_TOL
    # and the search is not sloppy: the float temperature is far inside its 0.01 °C LSB
    assert worst["T_float"] < 0.0035


@pytest.mark.parametrize("cal", list(CALIBRATIONS.values()), ids=list(CALIBRATIONS))
@pytest.mark.parametrize("t", [-40.0, 0.0, 85.0])
@pytest.mark.parametrize("h", [0.0, 100.0])
@pytest.mark.parametrize("p", [300.0, 1100.0])
def test_inverse_at_the_corners_of_the_range(
    cal: Calibration, t: float, h: float, p: float
) -> None:
    _assert_reads_back(cal, Environment(t, h, p))


def test_inverse_is_the_best_code_for_temperature() -> None:
    """No neighbouring code reads closer (the search really finds the crossing)."""
    cal = DEFAULT_CALIBRATION
    for target in (-39.123, 0.004, 21.987, 84.999):
        adc_t, _, _ = raw_from_environment(cal, Environment(target, 50.0, 1000.0))
        best_int = min(
            abs(compensate_int(cal, c, 0, 0).temperature_c - target)
            for c in range(adc_t - 64, adc_t + 64)
        )
        chosen = abs(compensate_int(cal, adc_t, 0, 0).temperature_c - target)
        assert chosen == pytest.approx(best_int, abs=1e-12)


def test_inverse_beyond_the_range_saturates_sensibly() -> None:
    cal = DEFAULT_CALIBRATION
    hot = raw_from_environment(cal, Environment(95.0, 150.0, 1200.0))
    r = compensate_int(cal, *hot)
    assert r.temperature_c == pytest.approx(95.0, abs=0.01)  # the ADC has room beyond 85 °C
    assert r.pressure_hpa == pytest.approx(1200.0, abs=0.01)
    assert r.humidity_pct == 100.0  # humidity cannot read above 100 %RH
    far = raw_from_environment(cal, Environment(22.0, 45.0, 1e6))
    assert far[1] == 0  # the nearest the 20-bit ADC gets
    assert not math.isnan(compensate_float(cal, *far).pressure_hpa)


def test_environment_rejects_non_finite_values() -> None:
    with pytest.raises(ValueError, match="temperature_c"):
        Environment(float("nan"), 45.0, 1013.25)
