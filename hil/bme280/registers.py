"""The BME280's register map, modes and datasheet limits (SPEC_FACTS.md §6)."""

from __future__ import annotations

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
