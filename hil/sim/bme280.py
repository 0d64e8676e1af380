"""The simulated Bosch BME280 at register level, and an SMBus stand-in.

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
import errno
import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, Self

from hil.bme280.calibration import DEFAULT_CALIBRATION, Calibration
from hil.bme280.compensation import Environment, measurement_time_s, raw_from_environment
from hil.bme280.faults import Fault
from hil.bme280.registers import (
    ADC_TP_MAX,
    BMP280_CHIP_ID,
    CHIP_ID,
    DATA_LEN,
    FILTER_COEFFICIENTS,
    MODE_FORCED,
    MODE_NORMAL,
    MODE_SLEEP,
    NVM_COPY_AFTER_RESET_S,
    NVM_COPY_BEFORE_CONVERSION_S,
    OVERSAMPLING_FACTORS,
    REG_CHIP_ID,
    REG_CONFIG,
    REG_CTRL_HUM,
    REG_CTRL_MEAS,
    REG_DATA,
    REG_RESET,
    REG_STATUS,
    RESET_WORD,
    SKIPPED_H,
    SKIPPED_TP,
    STANDBY_S,
    STATUS_IM_UPDATE,
    STATUS_MEASURING,
)

if TYPE_CHECKING:
    from smbus2 import i2c_msg

#: an event is due when the clock is within 1 ns of it, so a fake clock stepped by sums of
#: the durations this model computes lands on the boundary, not a rounding error before it
_TIME_SLACK_S = 1e-9
_EREMOTEIO = 121  # errno.EREMOTEIO on Linux; spelled out so the value is right everywhere


def _remote_io_error() -> OSError:
    """The error smbus2 raises when nothing acknowledges the address (as the kernel reports)."""
    return OSError(_EREMOTEIO, "Remote I/O error")


#: a sensor's environment until a test sets one
ROOM = Environment(22.0, 45.0, 1013.25)


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
        environment: Environment = ROOM,
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
