"""Bosch's compensation (integer and float), its inverse, and the measurement time.

Tests set a physical :class:`Environment`; :func:`raw_from_environment` turns it into the
raw ADC codes that the compensation maps back to that environment, by a monotonic search
on each channel.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields

from hil.bme280.calibration import Calibration
from hil.bme280.registers import ADC_H_MAX, ADC_TP_MAX, OVERSAMPLING_FACTORS

# --- compensation --------------------------------------------------------------------------


@dataclass(frozen=True)
class Reading:
    """A compensated reading in the units people use."""

    temperature_c: float
    pressure_hpa: float
    humidity_pct: float


def _div_trunc(num: int, den: int) -> int:
    """C's integer division (towards zero), which Bosch's 64-bit pressure code relies on."""
    q = abs(num) // abs(den)
    return q if (num >= 0) == (den > 0) else -q


def t_fine_int(cal: Calibration, adc_t: int) -> int:
    """Bosch's integer ``t_fine`` (temperature in 1/5120 °C, fed to P and H)."""
    v1 = (((adc_t >> 3) - (cal.dig_T1 << 1)) * cal.dig_T2) >> 11
    d = (adc_t >> 4) - cal.dig_T1
    v2 = (((d * d) >> 12) * cal.dig_T3) >> 14
    return v1 + v2


def temperature_int(t_fine: int) -> int:
    """Temperature in 0.01 °C from the integer ``t_fine``."""
    return (t_fine * 5 + 128) >> 8


def pressure_int(cal: Calibration, adc_p: int, t_fine: int) -> int:
    """Bosch's 64-bit pressure: Pa * 256 (Q24.8)."""
    a = t_fine - 128000
    b = a * a * cal.dig_P6 + ((a * cal.dig_P5) << 17) + (cal.dig_P4 << 35)
    a = ((a * a * cal.dig_P3) >> 8) + ((a * cal.dig_P2) << 12)
    a = (((1 << 47) + a) * cal.dig_P1) >> 33
    if a == 0:
        return 0  # avoids a division by zero, as Bosch's code does
    p = 1048576 - adc_p
    p = _div_trunc(((p << 31) - b) * 3125, a)
    v1 = (cal.dig_P9 * (p >> 13) * (p >> 13)) >> 25
    v2 = (cal.dig_P8 * p) >> 19
    return ((p + v1 + v2) >> 8) + (cal.dig_P7 << 4)


def _humidity_int_raw(cal: Calibration, adc_h: int, t_fine: int) -> int:
    """Integer humidity before the clamp, in %RH * 1024 * 4096 (monotonic in ``adc_h``)."""
    x = t_fine - 76800
    x = (((adc_h << 14) - (cal.dig_H4 << 20) - cal.dig_H5 * x + 16384) >> 15) * (
        (
            (((((x * cal.dig_H6) >> 10) * (((x * cal.dig_H3) >> 11) + 32768)) >> 10) + 2097152)
            * cal.dig_H2
            + 8192
        )
        >> 14
    )
    return x - (((((x >> 15) * (x >> 15)) >> 7) * cal.dig_H1) >> 4)


def humidity_int(cal: Calibration, adc_h: int, t_fine: int) -> int:
    """Bosch's integer humidity: %RH * 1024 (Q22.10), clamped to 0..100 %RH."""
    x = min(max(_humidity_int_raw(cal, adc_h, t_fine), 0), 419430400)
    return x >> 12


def compensate_int(cal: Calibration, adc_t: int, adc_p: int, adc_h: int) -> Reading:
    """Bosch's integer compensation (32-bit T and H, 64-bit P), converted to °C, hPa, %RH.

    Unlike Bosch's driver this does not clamp T and P to the operating range: a reading
    outside it must stay visible so the firmware's range check can be exercised.
    """
    t_fine = t_fine_int(cal, adc_t)
    return Reading(
        temperature_c=temperature_int(t_fine) / 100.0,
        pressure_hpa=pressure_int(cal, adc_p, t_fine) / 25600.0,
        humidity_pct=humidity_int(cal, adc_h, t_fine) / 1024.0,
    )


def t_fine_float(cal: Calibration, adc_t: int, *, truncate: bool = False) -> float:
    """The float ``t_fine``; the datasheet's code truncates it to an int, host drivers don't."""
    v1 = (adc_t / 16384.0 - cal.dig_T1 / 1024.0) * cal.dig_T2
    d = adc_t / 131072.0 - cal.dig_T1 / 8192.0
    v2 = d * d * cal.dig_T3
    t_fine = v1 + v2
    return float(math.trunc(t_fine)) if truncate else t_fine


def pressure_float(cal: Calibration, adc_p: int, t_fine: float) -> float:
    """Bosch's double-precision pressure in Pa."""
    a = t_fine / 2.0 - 64000.0
    b = a * a * cal.dig_P6 / 32768.0
    b = b + a * cal.dig_P5 * 2.0
    b = b / 4.0 + cal.dig_P4 * 65536.0
    a = (cal.dig_P3 * a * a / 524288.0 + cal.dig_P2 * a) / 524288.0
    a = (1.0 + a / 32768.0) * cal.dig_P1
    if a == 0.0:
        return 0.0
    p = 1048576.0 - adc_p
    p = (p - b / 4096.0) * 6250.0 / a
    v1 = cal.dig_P9 * p * p / 2147483648.0
    v2 = p * cal.dig_P8 / 32768.0
    return p + (v1 + v2 + cal.dig_P7) / 16.0


def _humidity_float_raw(cal: Calibration, adc_h: int, t_fine: float) -> float:
    """Float humidity before the clamp (monotonic in ``adc_h``)."""
    h = t_fine - 76800.0
    h = (adc_h - (cal.dig_H4 * 64.0 + cal.dig_H5 / 16384.0 * h)) * (
        cal.dig_H2
        / 65536.0
        * (1.0 + cal.dig_H6 / 67108864.0 * h * (1.0 + cal.dig_H3 / 67108864.0 * h))
    )
    return h * (1.0 - cal.dig_H1 * h / 524288.0)


def humidity_float(cal: Calibration, adc_h: int, t_fine: float) -> float:
    """Bosch's double-precision humidity in %RH, clamped to 0..100."""
    return min(max(_humidity_float_raw(cal, adc_h, t_fine), 0.0), 100.0)


def compensate_float(
    cal: Calibration, adc_t: int, adc_p: int, adc_h: int, *, truncate_t_fine: bool = False
) -> Reading:
    """Bosch's double-precision compensation (°C, hPa, %RH), as host drivers use it.

    ``truncate_t_fine`` reproduces the datasheet's code, which casts ``t_fine`` to an int
    before it feeds P and H; common host drivers (RPi.bme280 among them) keep the float.
    """
    t_fine = t_fine_float(cal, adc_t, truncate=truncate_t_fine)
    return Reading(
        temperature_c=t_fine / 5120.0,
        pressure_hpa=pressure_float(cal, adc_p, t_fine) / 100.0,
        humidity_pct=humidity_float(cal, adc_h, t_fine),
    )


# --- the inverse ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Environment:
    """What the sensor is exposed to."""

    temperature_c: float
    humidity_pct: float
    pressure_hpa: float

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"Environment.{f.name}={value!r} must be a finite number")


# Codes around the float crossing that are ranked with the integer compensation too.  The
# integer code drops the 3 low bits of adc_T (t_fine moves in steps of ~8 codes) and 1 bit of
# adc_H, and its t_fine differs from the float one, so the best code for both can sit a few
# codes away from where the float value crosses the target.
_WINDOW_T = 12
_WINDOW_P = 4
_WINDOW_H = 4


def _search(
    value: Callable[[int], float],
    score: Callable[[int], tuple[float, float]],
    target: float,
    top: int,
    *,
    increasing: bool,
    window: int,
) -> int:
    """The ADC code in 0..top whose compensated value is closest to ``target``.

    ``value`` (the float compensation of one channel) is monotonic over the ADC range, so a
    bisection finds the crossing; the codes around it are then ranked by ``score``, which
    weighs the integer compensation too (it differs from the float one by a few LSB of
    ``t_fine`` and by its own rounding).
    """
    sign = 1.0 if increasing else -1.0
    goal = sign * target
    lo, hi = 0, top
    if sign * value(hi) < goal:
        crossing = hi
    elif sign * value(lo) >= goal:
        crossing = lo
    else:
        while hi - lo > 1:  # invariant: value(lo) < goal <= value(hi)
            mid = (lo + hi) // 2
            if sign * value(mid) >= goal:
                hi = mid
            else:
                lo = mid
        crossing = hi
    candidates = [c for c in range(crossing - window, crossing + window) if 0 <= c <= top]
    return min(candidates, key=score)


def raw_from_environment(cal: Calibration, env: Environment) -> tuple[int, int, int]:
    """The raw ADC codes ``(adc_T, adc_P, adc_H)`` that read back as ``env``.

    Both :func:`compensate_int` and :func:`compensate_float` map the result back to ``env``
    as closely as the ADC's own step allows, over the datasheet range (−40…85 °C,
    0…100 %RH, 300…1100 hPa).  Temperature is solved first, because ``t_fine`` feeds the
    pressure and humidity compensation.  Humidity is clamped to 0…100 %RH (the formula
    cannot express more); beyond the range T and P get the nearest 20-bit code.
    """
    target_t = env.temperature_c
    target_p = env.pressure_hpa
    target_h = min(max(env.humidity_pct, 0.0), 100.0)

    def t_value(code: int) -> float:
        return t_fine_float(cal, code) / 5120.0

    def t_score(code: int) -> tuple[float, float]:
        err_f = abs(t_value(code) - target_t)
        err_i = abs(temperature_int(t_fine_int(cal, code)) / 100.0 - target_t)
        return (max(err_f, err_i), err_f)

    adc_t = _search(t_value, t_score, target_t, ADC_TP_MAX, increasing=True, window=_WINDOW_T)
    tf_f = t_fine_float(cal, adc_t)
    tf_i = t_fine_int(cal, adc_t)

    def p_value(code: int) -> float:
        return pressure_float(cal, code, tf_f) / 100.0

    def p_score(code: int) -> tuple[float, float]:
        err_f = abs(p_value(code) - target_p)
        err_i = abs(pressure_int(cal, code, tf_i) / 25600.0 - target_p)
        return (max(err_f, err_i), err_f)

    adc_p = _search(p_value, p_score, target_p, ADC_TP_MAX, increasing=False, window=_WINDOW_P)

    def h_value(code: int) -> float:
        return _humidity_float_raw(cal, code, tf_f)

    def h_score(code: int) -> tuple[float, float]:
        err_f = abs(humidity_float(cal, code, tf_f) - target_h)
        err_i = abs(humidity_int(cal, code, tf_i) / 1024.0 - target_h)
        return (max(err_f, err_i), err_f)

    adc_h = _search(h_value, h_score, target_h, ADC_H_MAX, increasing=True, window=_WINDOW_H)
    return adc_t, adc_p, adc_h


# --- timing --------------------------------------------------------------------------------


def measurement_time_s(osrs_t: int, osrs_p: int, osrs_h: int, *, maximum: bool = False) -> float:
    """Duration of one conversion for the given 3-bit osrs codes (0 = skipped).

    Typical: 1 + 2·T + (2·P + 0.5) + (2·H + 0.5) ms; maximum: 1.25 + 2.3·T + (2.3·P + 0.575)
    + (2.3·H + 0.575) ms; terms of skipped channels drop out (SPEC_FACTS.md §6).
    """
    t, p, h = (OVERSAMPLING_FACTORS[code & 7] for code in (osrs_t, osrs_p, osrs_h))
    if maximum:
        ms = 1.25 + 2.3 * t + (2.3 * p + 0.575 if p else 0.0) + (2.3 * h + 0.575 if h else 0.0)
    else:
        ms = 1.0 + 2.0 * t + (2.0 * p + 0.5 if p else 0.0) + (2.0 * h + 0.5 if h else 0.0)
    return ms / 1000.0
