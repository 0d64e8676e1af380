"""The project's reference BME280 driver, for a real ``smbus2.SMBus`` or the simulated bus.

A rig's reference sensor on a lab host is read with this driver, and so is the virtual
rig's sensor in the framework's own tests; it is typed against a small :class:`SMBusLike`
protocol so either bus fits.  It does what the datasheet asks and no more: check the chip
id, soft-reset and wait for the NVM copy, read and sanity-check the calibration, then take
forced-mode measurements, sleeping for the computed maximum measurement time and polling
the ``measuring`` bit against a deadline.  Compensation is Bosch's integer code
(:func:`hil.bme280.compensation.compensate_int`), the one firmware runs.

Failures are :class:`SensorError` subclasses that carry the address and the value seen,
so a report says *which* sensor answered *what*.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from hil.bme280.calibration import Calibration
from hil.bme280.compensation import Reading, compensate_int, measurement_time_s
from hil.bme280.registers import (
    CHIP_ID,
    DATA_LEN,
    NVM_COPY_AFTER_RESET_S,
    REG_CALIB_H,
    REG_CALIB_TP,
    REG_CHIP_ID,
    REG_CONFIG,
    REG_CTRL_HUM,
    REG_CTRL_MEAS,
    REG_DATA,
    REG_RESET,
    REG_STATUS,
    RESET_WORD,
    STATUS_IM_UPDATE,
    STATUS_MEASURING,
)

__all__ = [
    "BME280Driver",
    "CorruptCalibration",
    "SMBusLike",
    "SensorBusError",
    "SensorError",
    "SensorTimeout",
    "Settings",
    "WrongChipId",
]

_KNOWN_IDS = {0x56: "a BMP280 sample", 0x57: "a BMP280 sample", 0x58: "a BMP280", 0x60: "a BME280"}
_OSRS_CODES = {0: 0, 1: 1, 2: 2, 4: 3, 8: 4, 16: 5}
_FILTER_CODES = {0: 0, 2: 1, 4: 2, 8: 3, 16: 4}
_MODE_FORCED = 0b01


class SMBusLike(Protocol):
    """The part of ``smbus2.SMBus`` this driver uses (``SimulatedSMBus`` has it too)."""

    def read_byte_data(self, i2c_addr: int, register: int, force: bool | None = None) -> int: ...

    def write_byte_data(
        self, i2c_addr: int, register: int, value: int, force: bool | None = None
    ) -> None: ...

    def read_i2c_block_data(
        self, i2c_addr: int, register: int, length: int, force: bool | None = None
    ) -> list[int]: ...


class SensorError(Exception):
    """Base of the driver's errors; ``address`` is the sensor's I2C address."""

    def __init__(self, message: str, *, address: int) -> None:
        super().__init__(f"BME280 at 0x{address:02X}: {message}")
        self.address = address


class WrongChipId(SensorError):
    """The id register does not read 0x60: another part, or none answering properly."""

    def __init__(self, *, address: int, chip_id: int) -> None:
        what = _KNOWN_IDS.get(chip_id, "an unknown part")
        super().__init__(
            f"chip id 0x{chip_id:02X} ({what}), expected 0x{CHIP_ID:02X}", address=address
        )
        self.chip_id = chip_id


class CorruptCalibration(SensorError):
    """A calibration word that no trimmed part has (zero where compensation divides by it)."""

    def __init__(self, *, address: int, field: str, value: int) -> None:
        super().__init__(f"calibration {field}={value} is corrupt", address=address)
        self.field = field
        self.value = value


class SensorTimeout(SensorError):
    """A status bit did not clear before the deadline."""

    def __init__(self, *, address: int, waited_for: str, status: int, waited_s: float) -> None:
        super().__init__(
            f"{waited_for} still running after {waited_s * 1000:.1f} ms (status 0x{status:02X})",
            address=address,
        )
        self.waited_for = waited_for
        self.status = status
        self.waited_s = waited_s


class SensorBusError(SensorError, OSError):
    """The bus transfer failed (NACK, timeout); also an ``OSError`` with the bus's errno."""

    def __init__(self, *, address: int, operation: str, cause: OSError) -> None:
        SensorError.__init__(self, f"{operation} failed: {cause}", address=address)
        self.errno = cause.errno
        self.strerror = cause.strerror
        self.operation = operation

    def __str__(self) -> str:
        return str(self.args[0])  # OSError's own str would show only "[Errno N] ..."


@dataclass(frozen=True)
class Settings:
    """Oversampling factors per channel (0 skips P or H) and the IIR filter coefficient."""

    oversampling_t: int = 1
    oversampling_p: int = 1
    oversampling_h: int = 1
    iir_filter: int = 0  #: 0 = off, else 2, 4, 8 or 16

    def __post_init__(self) -> None:
        for name in ("oversampling_t", "oversampling_p", "oversampling_h"):
            factor = getattr(self, name)
            if factor not in _OSRS_CODES:
                raise ValueError(f"Settings.{name}={factor!r}: use one of 0, 1, 2, 4, 8, 16")
        if self.oversampling_t == 0:
            raise ValueError("Settings.oversampling_t=0: temperature compensates P and H")
        if self.iir_filter not in _FILTER_CODES:
            raise ValueError(f"Settings.iir_filter={self.iir_filter!r}: use 0, 2, 4, 8 or 16")

    @property
    def codes(self) -> tuple[int, int, int]:
        """The osrs register codes (t, p, h)."""
        return (
            _OSRS_CODES[self.oversampling_t],
            _OSRS_CODES[self.oversampling_p],
            _OSRS_CODES[self.oversampling_h],
        )


class BME280Driver:
    """Forced-mode reads of one BME280.

    ``clock`` and ``sleep`` are injectable so tests drive the simulated part with a fake
    clock; every wait is bounded by ``timeout_s``.
    """

    def __init__(
        self,
        bus: SMBusLike,
        address: int = 0x76,
        *,
        settings: Settings | None = None,
        timeout_s: float = 0.5,
        poll_interval_s: float = 0.001,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if address not in (0x76, 0x77):
            raise ValueError(f"BME280 address must be 0x76 or 0x77, not 0x{address:02X}")
        if timeout_s <= 0 or poll_interval_s <= 0:
            raise ValueError("timeout_s and poll_interval_s must be positive")
        self._bus = bus
        self._address = address
        self._settings = settings if settings is not None else Settings()
        self._timeout_s = timeout_s
        self._poll_s = poll_interval_s
        self._clock = clock
        self._sleep = sleep
        self._calibration: Calibration | None = None

    @property
    def address(self) -> int:
        return self._address

    @property
    def settings(self) -> Settings:
        return self._settings

    @property
    def calibration(self) -> Calibration | None:
        """The calibration read by :meth:`initialise` (None before)."""
        return self._calibration

    def measurement_time_s(self) -> float:
        """The datasheet's maximum conversion time for the configured oversampling."""
        return measurement_time_s(*self._settings.codes, maximum=True)

    def chip_id(self) -> int:
        return self._read_byte(REG_CHIP_ID, "reading the chip id")

    def initialise(self) -> Calibration:
        """Check the id, soft-reset, read and check the calibration, set the filter."""
        chip_id = self.chip_id()
        if chip_id != CHIP_ID:
            raise WrongChipId(address=self._address, chip_id=chip_id)
        self._write_byte(REG_RESET, RESET_WORD, "soft reset")
        self._sleep(NVM_COPY_AFTER_RESET_S)
        self._wait_clear(STATUS_IM_UPDATE, "NVM copy after soft reset")
        tp = self._read_block(REG_CALIB_TP, 26, "reading calibration 0x88-0xA1")
        h = self._read_block(REG_CALIB_H, 7, "reading calibration 0xE1-0xE7")
        calibration = Calibration.from_blocks(tp, h)
        for field in ("dig_T1", "dig_P1", "dig_H1"):
            value = getattr(calibration, field)
            if value == 0:
                raise CorruptCalibration(address=self._address, field=field, value=value)
        # The part is in sleep mode after the reset, so the config write is not ignored.
        self._write_byte(REG_CONFIG, _FILTER_CODES[self._settings.iir_filter] << 2, "config")
        self._calibration = calibration
        return calibration

    def read_raw(self) -> tuple[int, int, int]:
        """One forced conversion: the raw ``(adc_T, adc_P, adc_H)``."""
        if self._calibration is None:
            self.initialise()
        osrs_t, osrs_p, osrs_h = self._settings.codes
        # ctrl_hum only takes effect on the ctrl_meas write that follows it.
        self._write_byte(REG_CTRL_HUM, osrs_h, "ctrl_hum")
        self._write_byte(
            REG_CTRL_MEAS, (osrs_t << 5) | (osrs_p << 2) | _MODE_FORCED, "ctrl_meas (forced)"
        )
        self._sleep(self.measurement_time_s())
        self._wait_clear(STATUS_MEASURING, "conversion")
        d = self._read_block(REG_DATA, DATA_LEN, "reading data 0xF7-0xFE")
        adc_p = (d[0] << 12) | (d[1] << 4) | (d[2] >> 4)
        adc_t = (d[3] << 12) | (d[4] << 4) | (d[5] >> 4)
        adc_h = (d[6] << 8) | d[7]
        return adc_t, adc_p, adc_h

    def read(self) -> Reading:
        """One forced conversion, compensated with Bosch's integer code (NaN if skipped)."""
        adc_t, adc_p, adc_h = self.read_raw()
        assert self._calibration is not None  # read_raw initialised it
        reading = compensate_int(self._calibration, adc_t, adc_p, adc_h)
        nan = float("nan")
        return Reading(
            temperature_c=reading.temperature_c,
            pressure_hpa=reading.pressure_hpa if self._settings.oversampling_p else nan,
            humidity_pct=reading.humidity_pct if self._settings.oversampling_h else nan,
        )

    # -- internals --

    def _wait_clear(self, mask: int, what: str) -> None:
        start = self._clock()
        deadline = start + self._timeout_s
        while True:
            status = self._read_byte(REG_STATUS, f"reading status ({what})")
            if not status & mask:
                return
            now = self._clock()
            if now >= deadline:
                raise SensorTimeout(
                    address=self._address, waited_for=what, status=status, waited_s=now - start
                )
            self._sleep(min(self._poll_s, deadline - now))

    def _read_byte(self, register: int, operation: str) -> int:
        try:
            return self._bus.read_byte_data(self._address, register)
        except OSError as exc:
            raise SensorBusError(address=self._address, operation=operation, cause=exc) from exc

    def _write_byte(self, register: int, value: int, operation: str) -> None:
        try:
            self._bus.write_byte_data(self._address, register, value)
        except OSError as exc:
            raise SensorBusError(address=self._address, operation=operation, cause=exc) from exc

    def _read_block(self, register: int, length: int, operation: str) -> list[int]:
        try:
            data = self._bus.read_i2c_block_data(self._address, register, length)
        except OSError as exc:
            raise SensorBusError(address=self._address, operation=operation, cause=exc) from exc
        if len(data) != length:
            raise SensorBusError(
                address=self._address,
                operation=operation,
                cause=OSError(5, f"short read: {len(data)} of {length} bytes"),
            )
        return data
