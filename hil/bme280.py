"""Simulated Bosch BME280 at register level, its compensation, the inverse, and an SMBus stand-in.

The virtual rig needs a sensor that off-the-shelf smbus2-based BME280 drivers read unchanged,
so this module models the part where drivers look: the register map (SPEC_FACTS.md §6),
calibration bytes with their odd H4/H5 nibble packing, sleep/forced/normal modes with the
typical measurement time, the ``measuring``/``im_update`` status bits, oversampling and
resolution, the IIR filter, soft reset, and a consistent shadow for burst reads.

Tests set a physical :class:`Environment`; the model turns it into the raw ADC codes that
Bosch's compensation (integer *and* float) maps back to that environment, by a monotonic
search on each channel (:func:`raw_from_environment`).  Time comes from an injectable
clock, so a test can step through conversions without sleeping.

:class:`SimulatedSMBus` has the method surface and signatures of ``smbus2.SMBus``; devices
are attached by address and reached through raw I2C transactions, exactly as a Linux
adapter would reach them.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, Self

if TYPE_CHECKING:
    from smbus2 import i2c_msg

__all__ = [
    "BME280",
    "CALIBRATIONS",
    "CHIP_ID",
    "DEFAULT_CALIBRATION",
    "OVERSAMPLING_FACTORS",
    "Calibration",
    "Environment",
    "Fault",
    "I2CTarget",
    "NoiseModel",
    "Reading",
    "SimulatedSMBus",
    "compensate_float",
    "compensate_int",
    "humidity_float",
    "humidity_int",
    "measurement_time_s",
    "pressure_float",
    "pressure_int",
    "raw_from_environment",
    "t_fine_float",
    "t_fine_int",
    "temperature_int",
]

# --- register map (SPEC_FACTS.md §6) -------------------------------------------------------

REG_CALIB_TP = 0x88  #: first of the 26 bytes 0x88–0xA1 (T1..P9, 0xA0 unused, H1 at 0xA1)
REG_CALIB_H = 0xE1  #: first of the 7 bytes 0xE1–0xE7 (H2..H6)
REG_CHIP_ID = 0xD0
REG_RESET = 0xE0
REG_CTRL_HUM = 0xF2
REG_STATUS = 0xF3
REG_CTRL_MEAS = 0xF4
REG_CONFIG = 0xF5
REG_DATA = 0xF7  #: press_msb; the burst 0xF7–0xFE holds press, temp, hum
DATA_LEN = 8

CHIP_ID = 0x60
BMP280_CHIP_ID = 0x58
RESET_WORD = 0xB6

STATUS_MEASURING = 0x08
STATUS_IM_UPDATE = 0x01

MODE_SLEEP = 0b00
MODE_FORCED = 0b01  #: 0b10 is forced too
MODE_NORMAL = 0b11

#: oversampling factor per 3-bit osrs code; 0 means the channel is skipped
OVERSAMPLING_FACTORS: tuple[int, ...] = (0, 1, 2, 4, 8, 16, 16, 16)
#: IIR filter coefficient per 3-bit filter code; 1 means off
FILTER_COEFFICIENTS: tuple[int, ...] = (1, 2, 4, 8, 16, 16, 16, 16)
#: standby time in seconds per t_sb code (BME280 values; the BMP280 differs for 6 and 7)
STANDBY_S: tuple[float, ...] = (0.0005, 0.0625, 0.125, 0.25, 0.5, 1.0, 0.010, 0.020)

SKIPPED_TP = 0x80000  #: output of a skipped temperature or pressure channel (and reset value)
SKIPPED_H = 0x8000  #: output of a skipped humidity channel (and reset value)
ADC_TP_MAX = 0xFFFFF
ADC_H_MAX = 0xFFFF

#: time the NVM copy keeps ``im_update`` set after power-on or soft reset (SPEC_FACTS: ~2 ms)
NVM_COPY_AFTER_RESET_S = 0.002
#: ``im_update`` is also set while the NVM is copied before each conversion; the datasheet
#: gives no duration, so this short window (inside the measurement) is an assumption
NVM_COPY_BEFORE_CONVERSION_S = 0.0001

#: datasheet operating range the inverse is guaranteed over
TEMPERATURE_RANGE_C = (-40.0, 85.0)
HUMIDITY_RANGE_PCT = (0.0, 100.0)
PRESSURE_RANGE_HPA = (300.0, 1100.0)

#: an event is due when the clock is within 1 ns of it, so a fake clock stepped by sums of
#: the durations this model computes lands on the boundary, not a rounding error before it
_TIME_SLACK_S = 1e-9
_EREMOTEIO = 121  # errno.EREMOTEIO on Linux; spelled out so the value is right everywhere


def _remote_io_error() -> OSError:
    """The error smbus2 raises when nothing acknowledges the address (as the kernel reports)."""
    return OSError(_EREMOTEIO, "Remote I/O error")


# --- calibration ---------------------------------------------------------------------------


def _u8(value: int) -> int:
    return value & 0xFF


def _s8(byte: int) -> int:
    return byte - 0x100 if byte & 0x80 else byte


def _u16(lo: int, hi: int) -> int:
    return lo | (hi << 8)


def _s16(lo: int, hi: int) -> int:
    word = _u16(lo, hi)
    return word - 0x10000 if word & 0x8000 else word


_FIELD_RANGES: dict[str, tuple[int, int]] = {
    "dig_T1": (0, 0xFFFF),
    "dig_T2": (-0x8000, 0x7FFF),
    "dig_T3": (-0x8000, 0x7FFF),
    "dig_P1": (0, 0xFFFF),
    **{f"dig_P{i}": (-0x8000, 0x7FFF) for i in range(2, 10)},
    "dig_H1": (0, 0xFF),
    "dig_H2": (-0x8000, 0x7FFF),
    "dig_H3": (0, 0xFF),
    "dig_H4": (-0x800, 0x7FF),  # 12 bits: signed byte * 16 + a nibble
    "dig_H5": (-0x800, 0x7FF),
    "dig_H6": (-0x80, 0x7F),
}


@dataclass(frozen=True)
class Calibration:
    """The trimming parameters a BME280 carries in NVM (names as in the datasheet)."""

    dig_T1: int
    dig_T2: int
    dig_T3: int
    dig_P1: int
    dig_P2: int
    dig_P3: int
    dig_P4: int
    dig_P5: int
    dig_P6: int
    dig_P7: int
    dig_P8: int
    dig_P9: int
    dig_H1: int
    dig_H2: int
    dig_H3: int
    dig_H4: int
    dig_H5: int
    dig_H6: int

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            lo, hi = _FIELD_RANGES[f.name]
            if not isinstance(value, int) or not lo <= value <= hi:
                raise ValueError(f"Calibration.{f.name}={value!r} is outside {lo}..{hi}")

    def to_registers(self) -> dict[int, int]:
        """The NVM bytes as the part shows them: 0x88–0xA1 and 0xE1–0xE7 (0xA0 reads 0)."""
        regs: dict[int, int] = {}
        words = [
            self.dig_T1, self.dig_T2, self.dig_T3,
            self.dig_P1, self.dig_P2, self.dig_P3, self.dig_P4, self.dig_P5,
            self.dig_P6, self.dig_P7, self.dig_P8, self.dig_P9,
        ]  # fmt: skip
        for i, word in enumerate(words):
            regs[REG_CALIB_TP + 2 * i] = word & 0xFF
            regs[REG_CALIB_TP + 2 * i + 1] = (word >> 8) & 0xFF
        regs[0xA0] = 0x00
        regs[0xA1] = self.dig_H1
        regs[0xE1] = self.dig_H2 & 0xFF
        regs[0xE2] = (self.dig_H2 >> 8) & 0xFF
        regs[0xE3] = self.dig_H3
        # H4 = (s8)E4 * 16 + E5[3:0];  H5 = (s8)E6 * 16 + E5[7:4]
        regs[0xE4] = _u8(self.dig_H4 >> 4)
        regs[0xE5] = (self.dig_H4 & 0x0F) | ((self.dig_H5 & 0x0F) << 4)
        regs[0xE6] = _u8(self.dig_H5 >> 4)
        regs[0xE7] = _u8(self.dig_H6)
        return regs

    @classmethod
    def from_registers(cls, regs: Mapping[int, int]) -> Calibration:
        """Decode the calibration from register bytes (keys 0x88–0xA1 and 0xE1–0xE7)."""
        needed = [*range(REG_CALIB_TP, 0xA0), 0xA1, *range(REG_CALIB_H, 0xE8)]
        missing = [reg for reg in needed if reg not in regs]
        if missing:
            listed = ", ".join(f"0x{reg:02X}" for reg in missing)
            raise ValueError(f"calibration bytes missing for registers {listed}")
        b = {reg: regs[reg] & 0xFF for reg in needed}

        def word(reg: int, signed: bool) -> int:
            return (_s16 if signed else _u16)(b[reg], b[reg + 1])

        e5 = b[0xE5]
        return cls(
            dig_T1=word(0x88, False),
            dig_T2=word(0x8A, True),
            dig_T3=word(0x8C, True),
            dig_P1=word(0x8E, False),
            dig_P2=word(0x90, True),
            dig_P3=word(0x92, True),
            dig_P4=word(0x94, True),
            dig_P5=word(0x96, True),
            dig_P6=word(0x98, True),
            dig_P7=word(0x9A, True),
            dig_P8=word(0x9C, True),
            dig_P9=word(0x9E, True),
            dig_H1=b[0xA1],
            dig_H2=word(0xE1, True),
            dig_H3=b[0xE3],
            dig_H4=_s8(b[0xE4]) * 16 + (e5 & 0x0F),
            dig_H5=_s8(b[0xE6]) * 16 + (e5 >> 4),
            dig_H6=_s8(b[0xE7]),
        )

    @classmethod
    def from_blocks(
        cls, tp_block: bytes | Sequence[int], h_block: bytes | Sequence[int]
    ) -> Calibration:
        """Decode from the two burst reads a driver makes: 26 bytes at 0x88, 7 bytes at 0xE1."""
        if len(tp_block) != 26 or len(h_block) != 7:
            raise ValueError(
                f"expected 26 bytes from 0x88 and 7 from 0xE1, got {len(tp_block)} and {len(h_block)}"
            )
        regs = {REG_CALIB_TP + i: v for i, v in enumerate(tp_block)}
        regs.update({REG_CALIB_H + i: v for i, v in enumerate(h_block)})
        return cls.from_registers(regs)


#: Calibration sets modelled on real parts.  ``bmp280_datasheet`` has the T/P trimming of the
#: BMP280 datasheet's worked example (same formulas on the BME280) with humidity trimming of
#: the kind BME280 parts ship with; the other two are within the ranges seen on real parts.
CALIBRATIONS: dict[str, Calibration] = {
    "bmp280_datasheet": Calibration(
        dig_T1=27504, dig_T2=26435, dig_T3=-1000,
        dig_P1=36477, dig_P2=-10685, dig_P3=3024, dig_P4=2855, dig_P5=140,
        dig_P6=-7, dig_P7=15500, dig_P8=-14600, dig_P9=6000,
        dig_H1=75, dig_H2=362, dig_H3=0, dig_H4=313, dig_H5=50, dig_H6=30,
    ),
    "unit_a": Calibration(
        dig_T1=28485, dig_T2=26735, dig_T3=50,
        dig_P1=37987, dig_P2=-10637, dig_P3=3024, dig_P4=7364, dig_P5=-150,
        dig_P6=-7, dig_P7=9900, dig_P8=-10230, dig_P9=4285,
        dig_H1=75, dig_H2=359, dig_H3=0, dig_H4=339, dig_H5=0, dig_H6=30,
    ),
    "unit_b": Calibration(
        dig_T1=28163, dig_T2=26243, dig_T3=50,
        dig_P1=36852, dig_P2=-10650, dig_P3=3024, dig_P4=7042, dig_P5=-110,
        dig_P6=-7, dig_P7=9900, dig_P8=-10230, dig_P9=4285,
        dig_H1=75, dig_H2=370, dig_H3=0, dig_H4=298, dig_H5=50, dig_H6=30,
    ),
}  # fmt: skip
DEFAULT_CALIBRATION = CALIBRATIONS["bmp280_datasheet"]


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


# --- faults and noise ----------------------------------------------------------------------


class Fault(enum.Enum):
    """Faults the rig can inject into the sensor (values are the control endpoint's names)."""

    NACK = "nack"  #: nothing acknowledges: every access raises OSError(121)
    BUS_HELD_LOW = "bus_held_low"  #: SDA held low: every access blocks until cleared
    WRONG_CHIP_ID = "wrong_chip_id"  #: the id reads 0x58 (a BMP280)
    CORRUPT_CALIBRATION_T = "corrupt_calibration_t"  #: dig_T1 reads 0
    CORRUPT_CALIBRATION_H = "corrupt_calibration_h"  #: dig_H1 reads 0
    STUCK = "stuck"  #: the data registers freeze at their last values


@dataclass(frozen=True)
class NoiseModel:
    """Gaussian noise per channel and a linear drift, in physical units.

    The noise is per conversion at ×1 oversampling and shrinks with √(oversampling), as
    averaging N samples does; the IIR filter then smooths it further on its own.  Drift
    counts from the sensor's construction (power-on), not from resets.
    """

    temperature_sigma_c: float = 0.0
    pressure_sigma_hpa: float = 0.0
    humidity_sigma_pct: float = 0.0
    temperature_drift_c_per_h: float = 0.0
    pressure_drift_hpa_per_h: float = 0.0
    humidity_drift_pct_per_h: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not math.isfinite(value) or ("sigma" in f.name and value < 0):
                raise ValueError(f"NoiseModel.{f.name}={value!r} must be finite (sigmas >= 0)")


# --- the register model --------------------------------------------------------------------


class I2CTarget(Protocol):
    """A device on a :class:`SimulatedSMBus`: raw I2C transactions addressed to it."""

    @property
    def address(self) -> int: ...

    def i2c_write(self, data: bytes) -> None:
        """One write transaction (the bytes after the address byte)."""
        ...

    def i2c_read(self, length: int) -> bytes:
        """One read transaction of ``length`` bytes."""
        ...


@dataclass(frozen=True)
class _Conversion:
    """One measurement cycle, with the settings latched when it started."""

    start: float
    end: float
    osrs_t: int
    osrs_p: int
    osrs_h: int
    filter_code: int
    forced: bool


def _mode_kind(ctrl_meas: int) -> int:
    """The mode of a ctrl_meas value: sleep, forced (01 and 10 alike) or normal."""
    mode = ctrl_meas & 0b11
    return MODE_FORCED if mode == 0b10 else mode


def _encode20(value: int) -> tuple[int, int, int]:
    return (value >> 12) & 0xFF, (value >> 4) & 0xFF, (value & 0x0F) << 4


def _quantize(value: int, bits: int) -> int:
    """Keep ``bits`` of a 20-bit code (the ADC's resolution), rounding to the nearest step."""
    step = 1 << (20 - bits)
    top = (ADC_TP_MAX // step) * step
    return min(max(round(value / step) * step, 0), top)


class BME280:
    """A BME280 at register level, driven by a clock.

    State advances lazily: every bus access and every environment change first brings the
    conversions up to the clock's ``now`` (with the environment as it was), so a fake clock
    steps the part exactly and a real one runs it in real time.  All state is behind one
    lock; fault gating happens outside it, so :meth:`clear_faults` from another thread
    releases an access blocked by :attr:`Fault.BUS_HELD_LOW`.
    """

    #: in normal mode, cycles that elapsed unobserved beyond this many are folded into the
    #: filter in closed form (noise-free) instead of being simulated one by one
    CATCH_UP_CYCLES = 8

    def __init__(
        self,
        *,
        calibration: Calibration = DEFAULT_CALIBRATION,
        address: int = 0x76,
        clock: Callable[[], float] = time.monotonic,
        environment: Environment = Environment(22.0, 45.0, 1013.25),
        noise: NoiseModel | None = None,
        rng_seed: int | None = None,
        bus_hold_timeout_s: float | None = None,
    ) -> None:
        if address not in (0x76, 0x77):
            raise ValueError(f"BME280 address must be 0x76 or 0x77, not 0x{address:02X}")
        self._calibration = calibration
        self._calib_regs = calibration.to_registers()
        self._address = address
        self._clock = clock
        self._env = environment
        self._noise = noise
        self._rng = random.Random(rng_seed)
        #: how long an access blocked by BUS_HELD_LOW waits before failing with ETIMEDOUT,
        #: as a Linux adapter with a timeout would; None blocks until the fault is cleared
        self.bus_hold_timeout_s = bus_hold_timeout_s

        self._lock = threading.RLock()
        self._fault_lock = threading.Lock()
        self._faults: set[Fault] = set()
        self._bus_released = threading.Event()
        self._bus_released.set()
        self._blocked = 0
        self._blocked_cond = threading.Condition()

        self._raw_cache: tuple[Environment, tuple[int, int, int]] | None = None
        self._t0 = clock()
        self._pointer = 0
        self._power_on_reset(self._t0)

    # -- public control surface (not bus accesses) --

    @property
    def address(self) -> int:
        return self._address

    @property
    def calibration(self) -> Calibration:
        return self._calibration

    @property
    def environment(self) -> Environment:
        return self._env

    def set_noise(self, noise: NoiseModel | None) -> None:
        """Change (or remove, with None) the noise and drift model from now on."""
        with self._lock:
            self._advance(self._clock())
            self._noise = noise

    def set_environment(self, env: Environment) -> None:
        """Change what the sensor is exposed to; conversions already due keep the old one."""
        with self._lock:
            self._advance(self._clock())
            self._env = env

    @property
    def faults(self) -> frozenset[Fault]:
        with self._fault_lock:
            return frozenset(self._faults)

    def inject(self, fault: Fault) -> None:
        """Activate a fault (idempotent)."""
        with self._fault_lock:
            self._faults.add(fault)
            if fault is Fault.BUS_HELD_LOW:
                self._bus_released.clear()

    def clear_fault(self, fault: Fault) -> None:
        with self._fault_lock:
            self._faults.discard(fault)
            if fault is Fault.BUS_HELD_LOW:
                self._bus_released.set()

    def clear_faults(self) -> None:
        """Clear every fault; safe from any thread, releases blocked accesses."""
        with self._fault_lock:
            self._faults.clear()
            self._bus_released.set()

    def wait_for_blocked(self, count: int = 1, timeout: float | None = None) -> bool:
        """Wait until ``count`` accesses are blocked by BUS_HELD_LOW (lets tests avoid sleeps)."""
        with self._blocked_cond:
            return self._blocked_cond.wait_for(lambda: self._blocked >= count, timeout)

    # -- bus accesses --

    def i2c_write(self, data: bytes) -> None:
        """A write transaction: register address, then (data, register, data, ...) pairs."""
        self._gate()
        with self._lock:
            self._bus_write(data)

    def i2c_read(self, length: int) -> bytes:
        """A read transaction from the register pointer, auto-incrementing.

        The whole burst is taken from one snapshot, as the part's shadow registers make a
        burst of 0xF7–0xFE consistent.
        """
        self._gate()
        with self._lock:
            return self._bus_read(length)

    def read_register(self, reg: int) -> int:
        return self.read_block(reg, 1)[0]

    def write_register(self, reg: int, value: int) -> None:
        self.write_block(reg, bytes([value]))

    def read_block(self, reg: int, n: int) -> bytes:
        """Set the pointer and read ``n`` bytes in one combined transaction (repeated start)."""
        self._gate()
        with self._lock:
            self._bus_write(bytes([reg]))
            return self._bus_read(n)

    def write_block(self, reg: int, data: bytes | Sequence[int]) -> None:
        """Write ``reg`` then ``data`` as one I2C write: ``data`` is d0, r1, d1, r2, d2, ...

        The BME280 does not auto-increment on writes; further registers are addressed by
        (register, data) pairs inside the same transaction.
        """
        self.i2c_write(bytes([reg, *data]))

    # -- internals --

    def _bus_write(self, data: bytes) -> None:
        now = self._clock()
        self._advance(now)
        if not data:
            return  # an address probe (write_quick): acknowledged, nothing changes
        reg = data[0]
        self._pointer = reg
        for i, byte in enumerate(data[1:]):
            if i % 2 == 0:
                self._write(reg, byte, now)
            else:
                reg = byte
                self._pointer = reg

    def _bus_read(self, length: int) -> bytes:
        now = self._clock()
        self._advance(now)
        faults = self.faults
        out = bytes(self._peek((self._pointer + i) & 0xFF, now, faults) for i in range(length))
        self._pointer = (self._pointer + length) & 0xFF
        return out

    def _gate(self) -> None:
        """Apply the bus-level faults before an access touches the part."""
        if not self._bus_released.is_set():
            with self._blocked_cond:
                self._blocked += 1
                self._blocked_cond.notify_all()
            try:
                released = self._bus_released.wait(self.bus_hold_timeout_s)
            finally:
                with self._blocked_cond:
                    self._blocked -= 1
            if not released:
                raise OSError(errno.ETIMEDOUT, "Connection timed out")
        if Fault.NACK in self.faults:
            raise _remote_io_error()

    def _power_on_reset(self, now: float) -> None:
        self._ctrl_hum = 0
        self._ctrl_meas = 0
        self._config = 0
        self._osrs_h_latched = 0
        self._pending_ctrl_meas: int | None = None
        self._data = bytearray([0x80, 0x00, 0x00, 0x80, 0x00, 0x00, 0x80, 0x00])
        self._filter_t: float | None = None
        self._filter_p: float | None = None
        self._conversion: _Conversion | None = None
        self._next_start: float | None = None
        self._nvm_until = now + NVM_COPY_AFTER_RESET_S

    @property
    def _mode(self) -> int:
        return self._ctrl_meas & 0b11

    def _peek(self, reg: int, now: float, faults: frozenset[Fault]) -> int:
        if REG_DATA <= reg < REG_DATA + DATA_LEN:
            return self._data[reg - REG_DATA]
        if reg == REG_STATUS:
            return self._status(now)
        if reg == REG_CTRL_HUM:
            return self._ctrl_hum
        if reg == REG_CTRL_MEAS:
            return self._ctrl_meas
        if reg == REG_CONFIG:
            return self._config
        if reg == REG_CHIP_ID:
            return BMP280_CHIP_ID if Fault.WRONG_CHIP_ID in faults else CHIP_ID
        if reg in (0x88, 0x89) and Fault.CORRUPT_CALIBRATION_T in faults:
            return 0
        if reg == 0xA1 and Fault.CORRUPT_CALIBRATION_H in faults:
            return 0
        return self._calib_regs.get(reg, 0x00)  # 0xE0 (reset) and unused addresses read 0

    def _status(self, now: float) -> int:
        now += _TIME_SLACK_S
        status = 0
        if now < self._nvm_until:
            status |= STATUS_IM_UPDATE
        conv = self._conversion
        if conv is not None and conv.start <= now < conv.end:
            status |= STATUS_MEASURING
            if now < conv.start + NVM_COPY_BEFORE_CONVERSION_S:
                status |= STATUS_IM_UPDATE
        return status

    def _write(self, reg: int, value: int, now: float) -> None:
        value &= 0xFF
        if reg == REG_RESET:
            if value == RESET_WORD:
                self._power_on_reset(now)
        elif reg == REG_CTRL_HUM:
            if self._pending_ctrl_meas is None:  # ignored while a mode change waits
                self._ctrl_hum = value & 0x07  # bits 7:3 are reserved; latched by ctrl_meas
        elif reg == REG_CTRL_MEAS:
            self._write_ctrl_meas(value, now)
        elif reg == REG_CONFIG:
            # The datasheet: "writes to the config register in normal mode may be ignored;
            # in sleep mode writes are not ignored".  Modelled strictly (always ignored), so
            # a driver that relies on it fails here as it may on a real part.
            if self._mode == MODE_NORMAL:
                return
            self._config = value & 0xFD  # bit 1 is reserved
            # "When writing to the register filter, the filter is reset": the next samples
            # pass unchanged and become the filter's memory.
            self._filter_t = self._filter_p = None
        # every other register is read-only; writes to it are ignored

    def _write_ctrl_meas(self, value: int, now: float) -> None:
        """A ctrl_meas write, with the datasheet's rules for switching modes (§3.3.1).

        A mode change written while a measurement runs is delayed until that measurement
        ends; until then further ctrl_meas writes and ctrl_hum writes are ignored.
        """
        if self._pending_ctrl_meas is not None:
            return
        if self._conversion is not None and _mode_kind(value) != _mode_kind(self._ctrl_meas):
            self._pending_ctrl_meas = value
            return
        self._apply_ctrl_meas(value, now)

    def _apply_ctrl_meas(self, value: int, at: float) -> None:
        previous = _mode_kind(self._ctrl_meas)
        self._ctrl_meas = value
        self._osrs_h_latched = self._ctrl_hum  # ctrl_hum takes effect on this write only
        mode = _mode_kind(value)
        if mode == previous and self._conversion is not None:
            return  # same mode while measuring: new settings apply from the next measurement
        if mode == MODE_SLEEP:
            self._next_start = None
        elif mode == MODE_NORMAL:
            if previous != MODE_NORMAL:
                self._next_start = at
        else:  # forced
            self._next_start = None
            self._conversion = self._new_conversion(at, forced=True)

    def _new_conversion(self, start: float, *, forced: bool) -> _Conversion:
        osrs_t = (self._ctrl_meas >> 5) & 7
        osrs_p = (self._ctrl_meas >> 2) & 7
        osrs_h = self._osrs_h_latched
        return _Conversion(
            start=start,
            end=start + measurement_time_s(osrs_t, osrs_p, osrs_h),
            osrs_t=osrs_t,
            osrs_p=osrs_p,
            osrs_h=osrs_h,
            filter_code=(self._config >> 2) & 7,
            forced=forced,
        )

    def _advance(self, now: float) -> None:
        """Run every conversion that completed by ``now`` and start those that are due."""
        while True:
            conv = self._conversion
            if conv is not None:
                if conv.end > now + _TIME_SLACK_S:
                    return
                self._complete(conv)
                self._conversion = None
                if conv.forced:
                    self._ctrl_meas &= ~0b11  # back to sleep: mode bits read 00
                else:
                    self._next_start = conv.end + STANDBY_S[(self._config >> 5) & 7]
                pending = self._pending_ctrl_meas
                if pending is not None:  # the delayed mode change executes now
                    self._pending_ctrl_meas = None
                    self._apply_ctrl_meas(pending, conv.end)
                continue
            due = self._next_start
            if self._mode != MODE_NORMAL or due is None or due > now + _TIME_SLACK_S:
                return
            sample = self._new_conversion(due, forced=False)
            period = (sample.end - sample.start) + STANDBY_S[(self._config >> 5) & 7]
            elapsed = math.floor((now - due) / period)
            if elapsed > self.CATCH_UP_CYCLES:
                skipped = elapsed - self.CATCH_UP_CYCLES
                self._fold_into_filter(sample, skipped)
                due += skipped * period
                self._next_start = due
                sample = self._new_conversion(due, forced=False)
            self._conversion = sample

    def _true_environment(self, at: float) -> Environment:
        env = self._env
        noise = self._noise
        if noise is None:
            return env
        hours = (at - self._t0) / 3600.0
        return Environment(
            temperature_c=env.temperature_c + noise.temperature_drift_c_per_h * hours,
            humidity_pct=env.humidity_pct + noise.humidity_drift_pct_per_h * hours,
            pressure_hpa=env.pressure_hpa + noise.pressure_drift_hpa_per_h * hours,
        )

    def _raw(self, env: Environment) -> tuple[int, int, int]:
        cached = self._raw_cache
        if cached is not None and cached[0] == env:
            return cached[1]
        raw = raw_from_environment(self._calibration, env)
        self._raw_cache = (env, raw)
        return raw

    def _sample(self, conv: _Conversion) -> tuple[int, int, int]:
        """The raw codes of one conversion, noise included (before filter and resolution)."""
        env = self._true_environment(conv.end)
        noise = self._noise
        if noise is not None:

            def jitter(sigma: float, code: int) -> float:
                factor = OVERSAMPLING_FACTORS[code]
                if sigma == 0.0 or factor == 0:
                    return 0.0
                return self._rng.gauss(0.0, sigma / math.sqrt(factor))

            env = Environment(
                temperature_c=env.temperature_c + jitter(noise.temperature_sigma_c, conv.osrs_t),
                humidity_pct=env.humidity_pct + jitter(noise.humidity_sigma_pct, conv.osrs_h),
                pressure_hpa=env.pressure_hpa + jitter(noise.pressure_sigma_hpa, conv.osrs_p),
            )
        return self._raw(env)

    def _fold_into_filter(self, conv: _Conversion, cycles: int) -> None:
        """Apply ``cycles`` identical noise-free samples to the IIR state in closed form."""
        coeff = FILTER_COEFFICIENTS[conv.filter_code]
        if coeff == 1:
            return
        adc_t, adc_p, _ = self._raw(self._true_environment(conv.end))
        keep = ((coeff - 1) / coeff) ** cycles
        if conv.osrs_t:
            prev = self._filter_t if self._filter_t is not None else float(adc_t)
            self._filter_t = adc_t + (prev - adc_t) * keep
        if conv.osrs_p:
            prev = self._filter_p if self._filter_p is not None else float(adc_p)
            self._filter_p = adc_p + (prev - adc_p) * keep

    def _complete(self, conv: _Conversion) -> None:
        adc_t, adc_p, adc_h = self._sample(conv)
        coeff = FILTER_COEFFICIENTS[conv.filter_code]

        def tp_output(code: int, adc: int, state: float | None) -> tuple[int, float | None]:
            if OVERSAMPLING_FACTORS[code] == 0:
                return SKIPPED_TP, state
            if coeff == 1:
                return _quantize(adc, 16 + min(code, 5) - 1), None
            # Out = (prev·(c−1) + new)/c, started by the first sample; the state keeps its
            # fractions, the register shows 20 bits.
            state = float(adc) if state is None else (state * (coeff - 1) + adc) / coeff
            return _quantize(round(state), 20), state

        out_t, self._filter_t = tp_output(conv.osrs_t, adc_t, self._filter_t)
        out_p, self._filter_p = tp_output(conv.osrs_p, adc_p, self._filter_p)
        out_h = SKIPPED_H if OVERSAMPLING_FACTORS[conv.osrs_h] == 0 else adc_h
        if Fault.STUCK in self.faults:
            return  # conversions run, the data registers keep their last values
        self._data[0:3] = bytes(_encode20(out_p))
        self._data[3:6] = bytes(_encode20(out_t))
        self._data[6:8] = bytes([(out_h >> 8) & 0xFF, out_h & 0xFF])


# --- the SMBus stand-in --------------------------------------------------------------------

_I2C_M_RD = 0x0001  # linux/i2c.h: the message is a read
_BLOCK_MAX = 32  # I2C_SMBUS_BLOCK_MAX


def _check_byte(name: str, value: int) -> int:
    if not 0 <= value <= 0xFF:
        raise ValueError(f"{name}={value!r} is not a byte")
    return value


class SimulatedSMBus:
    """A stand-in for ``smbus2.SMBus`` whose devices are simulated :class:`I2CTarget`\\ s.

    Same method names, signatures and errors as smbus2 (``force`` is accepted and has no
    effect): a missing device raises ``OSError(121, 'Remote I/O error')``, block transfers
    are limited to 32 bytes, a closed bus raises ``OSError(EBADF)``.  Unlike smbus2 the
    constructor opens bus 1 by default, since there is no device node to name.  One lock per bus serialises transactions as the kernel does;
    a device that blocks (bus held low) therefore blocks the whole bus, as on real wires.
    """

    def __init__(
        self, bus: int | str | None = 1, force: bool = False, *, devices: Iterable[I2CTarget] = ()
    ) -> None:
        self._lock = threading.RLock()
        self._devices: dict[int, I2CTarget] = {}
        self._open = False
        self.bus: int | str | None = None
        self.force = force
        for device in devices:
            self.attach(device)
        if bus is not None:
            self.open(bus)

    # -- wiring --

    def attach(self, device: I2CTarget) -> None:
        with self._lock:
            if device.address in self._devices:
                raise ValueError(f"address 0x{device.address:02X} is already taken on this bus")
            self._devices[device.address] = device

    def detach(self, address: int) -> None:
        with self._lock:
            self._devices.pop(address, None)

    @property
    def devices(self) -> dict[int, I2CTarget]:
        with self._lock:
            return dict(self._devices)

    # -- smbus2 surface --

    def open(self, bus: int | str) -> None:
        if not isinstance(bus, int | str):
            raise TypeError(f"Unexpected type(bus)={type(bus)}")
        with self._lock:
            self.bus = bus
            self._open = True

    def close(self) -> None:
        with self._lock:
            self._open = False

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        self.close()

    def write_quick(self, i2c_addr: int, force: bool | None = None) -> None:
        with self._lock:
            self._device(i2c_addr).i2c_write(b"")

    def read_byte(self, i2c_addr: int, force: bool | None = None) -> int:
        with self._lock:
            return self._device(i2c_addr).i2c_read(1)[0]

    def write_byte(self, i2c_addr: int, value: int, force: bool | None = None) -> None:
        with self._lock:
            self._device(i2c_addr).i2c_write(bytes([_check_byte("value", value)]))

    def read_byte_data(self, i2c_addr: int, register: int, force: bool | None = None) -> int:
        return self._read(i2c_addr, register, 1)[0]

    def write_byte_data(
        self, i2c_addr: int, register: int, value: int, force: bool | None = None
    ) -> None:
        self._write(i2c_addr, register, [_check_byte("value", value)])

    def read_word_data(self, i2c_addr: int, register: int, force: bool | None = None) -> int:
        data = self._read(i2c_addr, register, 2)
        return data[0] | (data[1] << 8)  # SMBus words are little-endian

    def write_word_data(
        self, i2c_addr: int, register: int, value: int, force: bool | None = None
    ) -> None:
        if not 0 <= value <= 0xFFFF:
            raise ValueError(f"value={value!r} is not a 16-bit word")
        self._write(i2c_addr, register, [value & 0xFF, value >> 8])

    def read_i2c_block_data(
        self, i2c_addr: int, register: int, length: int, force: bool | None = None
    ) -> list[int]:
        if length > _BLOCK_MAX:
            raise ValueError(f"Desired block length over {_BLOCK_MAX} bytes")
        return list(self._read(i2c_addr, register, length))

    def write_i2c_block_data(
        self, i2c_addr: int, register: int, data: Sequence[int], force: bool | None = None
    ) -> None:
        if len(data) > _BLOCK_MAX:
            raise ValueError(f"Data length cannot exceed {_BLOCK_MAX} bytes")
        self._write(i2c_addr, register, [_check_byte("data", b) for b in data])

    def i2c_rdwr(self, *i2c_msgs: i2c_msg) -> None:
        """Run ``smbus2.i2c_msg`` messages as one combined transaction (repeated starts)."""
        with self._lock:
            self._require_open()
            for msg in i2c_msgs:
                device = self._device(int(msg.addr))
                length = int(msg.len)
                if int(msg.flags) & _I2C_M_RD:
                    data = device.i2c_read(length)
                    ctypes.memmove(msg.buf, data, length)
                else:
                    device.i2c_write(bytes(msg))

    # -- internals --

    def _require_open(self) -> None:
        if not self._open:
            raise OSError(errno.EBADF, "Bad file descriptor")

    def _device(self, address: int) -> I2CTarget:
        self._require_open()
        device = self._devices.get(address)
        if device is None:
            raise _remote_io_error()
        return device

    def _read(self, address: int, register: int, length: int) -> bytes:
        with self._lock:
            device = self._device(address)
            device.i2c_write(bytes([_check_byte("register", register)]))
            return device.i2c_read(length)

    def _write(self, address: int, register: int, data: list[int]) -> None:
        with self._lock:
            self._device(address).i2c_write(bytes([_check_byte("register", register), *data]))
