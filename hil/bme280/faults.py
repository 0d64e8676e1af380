"""Faults a rig can inject into its sensor (the names are the control endpoint's)."""

from __future__ import annotations

import enum

# --- faults and noise ----------------------------------------------------------------------


class Fault(enum.Enum):
    """Faults the rig can inject into the sensor (values are the control endpoint's names)."""

    NACK = "nack"  #: nothing acknowledges: every access raises OSError(121)
    BUS_HELD_LOW = "bus_held_low"  #: SDA held low: every access blocks until cleared
    WRONG_CHIP_ID = "wrong_chip_id"  #: the id reads 0x58 (a BMP280)
    CORRUPT_CALIBRATION_T = "corrupt_calibration_t"  #: dig_T1 reads 0
    CORRUPT_CALIBRATION_H = "corrupt_calibration_h"  #: dig_H1 reads 0
    STUCK = "stuck"  #: the data registers freeze at their last values
