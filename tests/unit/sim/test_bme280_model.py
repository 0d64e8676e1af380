"""The register-level BME280 model (hil.sim.bme280.BME280), stepped with a fake clock."""

from __future__ import annotations

import errno
import statistics
import threading

import pytest

from hil.bme280.calibration import CALIBRATIONS, DEFAULT_CALIBRATION
from hil.bme280.compensation import (
    Environment,
    compensate_int,
    measurement_time_s,
    raw_from_environment,
)
from hil.bme280.faults import Fault
from hil.bme280.registers import STANDBY_S
from hil.sim.bme280 import BME280, NoiseModel

ENV_A = Environment(22.0, 45.0, 1013.25)
ENV_B = Environment(30.5, 60.0, 950.0)


class FakeClock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def make(clock: FakeClock, **kwargs: object) -> BME280:
    dev = BME280(clock=clock, **kwargs)  # type: ignore[arg-type]
    clock.advance(0.01)  # past the power-on NVM copy
    return dev


def raw_data(dev: BME280) -> tuple[int, int, int]:
    d = dev.read_block(0xF7, 8)
    return (
        (d[3] << 12) | (d[4] << 4) | (d[5] >> 4),
        (d[0] << 12) | (d[1] << 4) | (d[2] >> 4),
        (d[6] << 8) | d[7],
    )


def forced(dev: BME280, clock: FakeClock, osrs: tuple[int, int, int] = (5, 5, 5)) -> None:
    """Run one forced conversion to completion."""
    t, p, h = osrs
    dev.write_register(0xF2, h)
    dev.write_register(0xF4, (t << 5) | (p << 2) | 0b01)
    clock.advance(measurement_time_s(t, p, h))


# --- register map and reset ---


def test_register_map_after_power_on() -> None:
    clock = FakeClock(0.0)
    dev = BME280(clock=clock)
    assert dev.read_register(0xF3) & 0x01  # NVM copy running right after power-on
    clock.advance(0.002)
    assert dev.read_register(0xF3) == 0x00
    assert dev.read_register(0xD0) == 0x60
    assert dev.read_register(0xE0) == 0x00
    regs = DEFAULT_CALIBRATION.to_registers()
    assert dev.read_block(0x88, 26) == bytes(regs[r] for r in range(0x88, 0xA2))
    assert dev.read_block(0xE1, 7) == bytes(regs[r] for r in range(0xE1, 0xE8))
    assert dev.read_block(0xF2, 4) == bytes([0, 0, 0, 0])  # ctrl_hum, status, ctrl_meas, config
    assert dev.read_block(0xF7, 8) == bytes([0x80, 0, 0, 0x80, 0, 0, 0x80, 0])


def test_read_only_and_reserved_bits_ignore_writes() -> None:
    clock = FakeClock()
    dev = make(clock)
    dev.write_register(0xD0, 0x12)
    dev.write_register(0x88, 0x00)
    dev.write_register(0xF7, 0x00)
    assert dev.read_register(0xD0) == 0x60
    assert dev.read_register(0x88) == DEFAULT_CALIBRATION.to_registers()[0x88]
    dev.write_register(0xF2, 0xFF)
    dev.write_register(0xF5, 0xFF)
    assert dev.read_register(0xF2) == 0x07
    assert dev.read_register(0xF5) == 0xFD


def test_soft_reset_restores_reset_values_and_runs_the_nvm_copy() -> None:
    clock = FakeClock()
    dev = make(clock)
    dev.write_register(0xF5, 0b101_010_00)
    forced(dev, clock)
    dev.write_register(0xF4, 0b001_001_11)  # normal mode
    assert dev.read_block(0xF7, 8) != bytes([0x80, 0, 0, 0x80, 0, 0, 0x80, 0])
    dev.write_register(0xE0, 0x42)  # any other value is ignored
    assert dev.read_register(0xF4) == 0b001_001_11
    dev.write_register(0xE0, 0xB6)
    assert dev.read_register(0xE0) == 0x00
    assert dev.read_block(0xF2, 4) == bytes([0, 0x01, 0, 0])  # im_update during the copy
    assert dev.read_block(0xF7, 8) == bytes([0x80, 0, 0, 0x80, 0, 0, 0x80, 0])
    clock.advance(0.0019)
    assert dev.read_register(0xF3) == 0x01
    clock.advance(0.0002)
    assert dev.read_register(0xF3) == 0x00
    clock.advance(1.0)
    assert dev.read_block(0xF7, 8) == bytes([0x80, 0, 0, 0x80, 0, 0, 0x80, 0])  # asleep


# --- modes and timing ---


@pytest.mark.parametrize("osrs", [(1, 1, 1), (5, 5, 5), (2, 3, 4), (1, 0, 0), (0, 1, 0), (7, 6, 5)])
def test_forced_mode_runs_one_conversion_then_sleeps(osrs: tuple[int, int, int]) -> None:
    clock = FakeClock()
    dev = make(clock)
    t, p, h = osrs
    t_meas = measurement_time_s(t, p, h)
    dev.write_register(0xF2, h)
    dev.write_register(0xF4, (t << 5) | (p << 2) | 0b01)
    assert dev.read_register(0xF3) == 0x09  # measuring, NVM copy before the conversion
    clock.advance(t_meas / 2)
    assert dev.read_register(0xF3) == 0x08
    assert dev.read_register(0xF4) & 0b11 == 0b01
    assert dev.read_block(0xF7, 8) == bytes([0x80, 0, 0, 0x80, 0, 0, 0x80, 0])
    clock.advance(t_meas / 2)
    assert dev.read_register(0xF3) == 0x00
    assert dev.read_register(0xF4) == (t << 5) | (p << 2)  # mode bits back to 00
    first = dev.read_block(0xF7, 8)
    clock.advance(5.0)
    assert dev.read_block(0xF7, 8) == first  # no further conversions


def test_forced_mode_code_10_is_forced_too() -> None:
    clock = FakeClock()
    dev = make(clock)
    dev.write_register(0xF4, 0b001_001_10)
    assert dev.read_register(0xF3) & 0x08
    clock.advance(measurement_time_s(1, 1, 0))
    assert dev.read_register(0xF4) == 0b001_001_00


def test_typical_measurement_times_drive_the_status_bit() -> None:
    clock = FakeClock()
    dev = make(clock)
    forced(dev, clock, (1, 1, 1))
    dev.write_register(0xF2, 1)
    dev.write_register(0xF4, 0b001_001_01)
    clock.advance(0.00799)
    assert dev.read_register(0xF3) == 0x08  # 1 + 2 + 2.5 + 2.5 = 8 ms typical
    clock.advance(0.00002)
    assert dev.read_register(0xF3) == 0x00


@pytest.mark.parametrize("t_sb", range(8))
def test_normal_mode_is_periodic_with_the_standby_time(t_sb: int) -> None:
    clock = FakeClock()
    dev = make(clock)
    dev.write_register(0xF5, t_sb << 5)
    dev.write_register(0xF2, 1)
    t_meas = measurement_time_s(1, 1, 1)
    period = t_meas + STANDBY_S[t_sb]
    start = clock.t
    dev.write_register(0xF4, 0b001_001_11)
    assert dev.read_register(0xF4) == 0b001_001_11
    for k in range(3):
        clock.t = start + k * period + t_meas / 2
        assert dev.read_register(0xF3) & 0x08, f"cycle {k} should be measuring"
        clock.t = start + k * period + t_meas + STANDBY_S[t_sb] / 2
        assert dev.read_register(0xF3) == 0x00, f"cycle {k} should be in standby"
        assert dev.read_register(0xF4) == 0b001_001_11


def test_normal_mode_data_follow_the_environment_cycle_by_cycle() -> None:
    clock = FakeClock()
    dev = make(clock, environment=ENV_A)
    dev.write_register(0xF5, 6 << 5)  # 10 ms standby
    dev.write_register(0xF2, 5)
    t_meas = measurement_time_s(5, 5, 5)
    period = t_meas + 0.010
    start = clock.t
    dev.write_register(0xF4, 0b101_101_11)
    clock.t = start + t_meas + 0.005  # first conversion done, in standby
    raw_a = raw_data(dev)
    assert raw_a == raw_from_environment(DEFAULT_CALIBRATION, ENV_A)
    dev.set_environment(ENV_B)
    clock.t = start + period + t_meas - 0.0001  # second conversion still running
    assert raw_data(dev) == raw_a
    clock.t = start + period + t_meas + 0.0001
    assert raw_data(dev) == raw_from_environment(DEFAULT_CALIBRATION, ENV_B)


def test_environment_changes_apply_only_to_conversions_not_yet_finished() -> None:
    clock = FakeClock()
    dev = make(clock, environment=ENV_A)
    dev.write_register(0xF2, 5)
    dev.write_register(0xF4, 0b101_101_01)
    clock.advance(1.0)  # the conversion finished long ago, nobody looked
    dev.set_environment(ENV_B)
    assert raw_data(dev) == raw_from_environment(DEFAULT_CALIBRATION, ENV_A)


def test_long_unobserved_normal_mode_stays_cheap_and_current() -> None:
    clock = FakeClock()
    dev = make(clock, environment=ENV_A)
    dev.write_register(0xF5, 0b000_100_00)  # 0.5 ms standby, filter 16
    dev.write_register(0xF2, 5)
    dev.write_register(0xF4, 0b101_101_11)
    clock.advance(0.5)
    dev.set_environment(ENV_B)
    clock.advance(24 * 3600.0)  # a day of cycles
    adc_t, adc_p, adc_h = raw_data(dev)
    r = compensate_int(DEFAULT_CALIBRATION, adc_t, adc_p, adc_h)
    assert r.temperature_c == pytest.approx(ENV_B.temperature_c, abs=0.01)
    assert r.pressure_hpa == pytest.approx(ENV_B.pressure_hpa, abs=0.01)


def test_a_mode_change_waits_for_the_running_measurement() -> None:
    """Datasheet §3.3.1: mode switches are delayed to the end of the running measurement;
    meanwhile further ctrl_meas writes and ctrl_hum writes are ignored."""
    clock = FakeClock()
    dev = make(clock, environment=ENV_A)
    t_meas = measurement_time_s(5, 5, 5)
    dev.write_register(0xF2, 5)
    dev.write_register(0xF4, 0b101_101_11)  # normal mode, first measurement starts now
    clock.advance(t_meas / 2)
    dev.write_register(0xF4, 0b101_101_00)  # sleep: delayed
    dev.write_register(0xF4, 0b001_001_01)  # ignored: a mode change is pending
    dev.write_register(0xF2, 1)  # ignored too
    assert dev.read_register(0xF2) == 5
    assert dev.read_register(0xF4) == 0b101_101_11
    assert dev.read_register(0xF3) & 0x08
    clock.advance(t_meas / 2)
    assert dev.read_register(0xF4) == 0b101_101_00  # executed at the end of the measurement
    assert dev.read_register(0xF3) == 0
    assert raw_data(dev) == raw_from_environment(DEFAULT_CALIBRATION, ENV_A)  # it completed
    dev.set_environment(ENV_B)
    clock.advance(1.0)
    assert raw_data(dev) == raw_from_environment(DEFAULT_CALIBRATION, ENV_A)  # asleep since
    dev.write_register(0xF2, 1)
    assert dev.read_register(0xF2) == 1  # accepted again


def test_a_forced_request_during_normal_measurement_runs_after_it() -> None:
    clock = FakeClock()
    dev = make(clock, environment=ENV_A)
    t_meas = measurement_time_s(1, 1, 0)
    dev.write_register(0xF4, 0b001_001_11)
    clock.advance(t_meas / 2)
    dev.write_register(0xF4, 0b001_001_01)
    clock.advance(t_meas / 2)  # the normal measurement ends, the forced one starts
    assert dev.read_register(0xF3) & 0x08
    assert dev.read_register(0xF4) == 0b001_001_01
    clock.advance(t_meas)
    assert dev.read_register(0xF3) == 0
    assert dev.read_register(0xF4) == 0b001_001_00
    data = dev.read_block(0xF7, 8)
    clock.advance(1.0)
    assert dev.read_block(0xF7, 8) == data  # no more normal cycles


def test_ctrl_hum_takes_effect_only_after_the_next_ctrl_meas_write() -> None:
    clock = FakeClock()
    dev = make(clock)
    dev.write_register(0xF5, 6 << 5)  # 10 ms standby
    dev.write_register(0xF4, 0b001_001_11)  # normal, humidity skipped (ctrl_hum = 0)
    clock.advance(0.05)
    assert dev.read_block(0xFD, 2) == bytes([0x80, 0x00])
    dev.write_register(0xF2, 0x01)
    assert dev.read_register(0xF2) == 0x01  # reads back at once ...
    clock.advance(0.1)
    assert dev.read_block(0xFD, 2) == bytes([0x80, 0x00])  # ... but is not in effect
    dev.write_register(0xF4, 0b001_001_11)
    clock.advance(0.1)
    assert dev.read_block(0xFD, 2) != bytes([0x80, 0x00])


def test_skipped_channels_read_0x80000_and_0x8000() -> None:
    clock = FakeClock()
    dev = make(clock)
    forced(dev, clock, (1, 0, 0))
    d = dev.read_block(0xF7, 8)
    assert d[0:3] == bytes([0x80, 0, 0]) and d[6:8] == bytes([0x80, 0])
    assert d[3:6] != bytes([0x80, 0, 0])
    forced(dev, clock, (0, 1, 1))
    d = dev.read_block(0xF7, 8)
    assert d[3:6] == bytes([0x80, 0, 0])
    assert d[0:3] != bytes([0x80, 0, 0]) and d[6:8] != bytes([0x80, 0])


@pytest.mark.parametrize("code", [1, 2, 3, 4, 5])
def test_resolution_without_filter_is_16_plus_osrs_minus_1_bits(code: int) -> None:
    clock = FakeClock()
    env = Environment(21.123, 44.4, 1001.111)
    dev = make(clock, environment=env)
    raw_t, raw_p, raw_h = raw_from_environment(DEFAULT_CALIBRATION, env)
    forced(dev, clock, (code, code, code))
    adc_t, adc_p, adc_h = raw_data(dev)
    step = 1 << (20 - (16 + code - 1))
    for got, true in ((adc_t, raw_t), (adc_p, raw_p)):
        assert got % step == 0
        assert abs(got - true) <= step // 2
    assert adc_h == raw_h  # humidity is always 16 bit


def test_filter_gives_20_bit_output() -> None:
    clock = FakeClock()
    env = Environment(21.123, 44.4, 1001.111)
    dev = make(clock, environment=env)
    dev.write_register(0xF5, 0b000_001_00)  # filter 2
    forced(dev, clock, (1, 1, 1))
    assert raw_data(dev) == raw_from_environment(DEFAULT_CALIBRATION, env)


@pytest.mark.parametrize(("code", "coeff"), [(1, 2), (2, 4), (3, 8), (4, 16), (7, 16)])
def test_iir_filter_on_temperature_and_pressure(code: int, coeff: int) -> None:
    clock = FakeClock()
    dev = make(clock, environment=ENV_A)
    dev.write_register(0xF5, code << 2)
    a_t, a_p, _ = raw_from_environment(DEFAULT_CALIBRATION, ENV_A)
    b_t, b_p, b_h = raw_from_environment(DEFAULT_CALIBRATION, ENV_B)
    forced(dev, clock)
    assert raw_data(dev)[:2] == (a_t, a_p)  # the first sample initialises the filter
    dev.set_environment(ENV_B)
    state_t, state_p = float(a_t), float(a_p)
    for _ in range(3):
        forced(dev, clock)
        state_t = (state_t * (coeff - 1) + b_t) / coeff
        state_p = (state_p * (coeff - 1) + b_p) / coeff
        adc_t, adc_p, adc_h = raw_data(dev)
        assert adc_t == round(state_t) and adc_p == round(state_p)
        assert adc_h == b_h  # humidity is not filtered


@pytest.mark.parametrize("second", [2 << 2, 4 << 2])
def test_writing_the_filter_resets_it(second: int) -> None:
    """'When writing to the register filter, the filter is reset', same value or not."""
    clock = FakeClock()
    dev = make(clock, environment=ENV_A)
    dev.write_register(0xF5, 4 << 2)
    forced(dev, clock)
    dev.set_environment(ENV_B)
    dev.write_register(0xF5, second)
    forced(dev, clock)
    assert raw_data(dev) == raw_from_environment(DEFAULT_CALIBRATION, ENV_B)


def test_a_skipped_channel_keeps_its_filter_memory() -> None:
    clock = FakeClock()
    dev = make(clock, environment=ENV_A)
    dev.write_register(0xF5, 1 << 2)  # coefficient 2
    a_t, a_p, _ = raw_from_environment(DEFAULT_CALIBRATION, ENV_A)
    b_t, b_p, _ = raw_from_environment(DEFAULT_CALIBRATION, ENV_B)
    forced(dev, clock)
    dev.set_environment(ENV_B)
    forced(dev, clock, (5, 0, 5))  # pressure skipped: reads 0x80000, memory kept
    assert raw_data(dev)[1] == 0x80000
    forced(dev, clock)
    assert raw_data(dev)[1] == round((a_p + b_p) / 2)  # filtered from the old memory
    assert raw_data(dev)[0] == round(((a_t + b_t) / 2 + b_t) / 2)


def test_config_writes_are_ignored_in_normal_mode() -> None:
    clock = FakeClock()
    dev = make(clock)
    dev.write_register(0xF5, 0b010_001_00)
    dev.write_register(0xF4, 0b001_001_11)
    dev.write_register(0xF5, 0b101_100_00)
    assert dev.read_register(0xF5) == 0b010_001_00
    dev.write_register(0xF4, 0b001_001_00)  # sleep, once the running measurement ends
    clock.advance(measurement_time_s(1, 1, 0))
    assert dev.read_register(0xF4) == 0b001_001_00
    dev.write_register(0xF5, 0b101_100_00)  # in sleep mode writes are taken
    assert dev.read_register(0xF5) == 0b101_100_00


# --- burst reads, pointer, write pairs ---


def test_burst_is_consistent_where_single_reads_can_tear() -> None:
    clock = FakeClock()
    dev = make(clock, environment=ENV_A)
    forced(dev, clock)
    bytes_a = dev.read_block(0xF7, 8)
    dev.set_environment(ENV_B)
    dev.write_register(0xF2, 5)
    dev.write_register(0xF4, 0b101_101_01)
    clock.advance(measurement_time_s(5, 5, 5) - 0.0001)
    assert dev.read_block(0xF7, 8) == bytes_a  # one burst: all from the old sample
    torn = bytes(dev.read_block(0xF7, 3))  # pressure, old sample
    clock.advance(0.0002)  # the conversion ends between two transactions
    torn += dev.read_block(0xFA, 5)
    bytes_b = dev.read_block(0xF7, 8)
    assert bytes_b != bytes_a
    assert torn == bytes_a[:3] + bytes_b[3:]


def test_bursts_stay_consistent_under_concurrent_environment_changes() -> None:
    # the bursts a ×1 conversion of each environment produces, taken on a fake clock
    valid = set()
    for env in (ENV_A, ENV_B):
        clock = FakeClock()
        ref = make(clock, environment=env)
        forced(ref, clock, (1, 1, 1))
        valid.add(ref.read_block(0xF7, 8))
    dev = BME280(environment=ENV_A)  # the real clock: a conversion every 8.5 ms
    dev.write_register(0xF5, 0)  # 0.5 ms standby, no filter
    dev.write_register(0xF2, 1)
    dev.write_register(0xF4, 0b001_001_11)
    stop = threading.Event()

    def toggle() -> None:
        while not stop.is_set():
            for env in (ENV_A, ENV_B):
                dev.set_environment(env)
                stop.wait(0.003)

    thread = threading.Thread(target=toggle)
    thread.start()
    seen = set()
    try:
        done = threading.Event()
        timer = threading.Timer(0.5, done.set)
        timer.start()
        while not done.is_set():
            burst = dev.read_block(0xF7, 8)
            if burst != bytes([0x80, 0, 0, 0x80, 0, 0, 0x80, 0]):
                assert burst in valid
                seen.add(burst)
    finally:
        stop.set()
        thread.join()
    assert seen == valid


def test_register_pointer_auto_increments_and_writes_are_pairs() -> None:
    clock = FakeClock()
    dev = make(clock)
    dev.i2c_write(bytes([0xD0]))
    assert dev.i2c_read(1) == b"\x60"
    dev.i2c_write(bytes([0x88]))
    regs = DEFAULT_CALIBRATION.to_registers()
    assert dev.i2c_read(1)[0] == regs[0x88]
    assert dev.i2c_read(1)[0] == regs[0x89]  # the pointer moved on
    # one write transaction, two registers: (0xF2, 0x03), (0xF5, 0x08); no auto-increment
    dev.write_block(0xF2, bytes([0x03, 0xF5, 0x08]))
    assert dev.read_block(0xF2, 4) == bytes([0x03, 0x00, 0x00, 0x08])


# --- noise and drift ---


def _temperatures(seed: int | None, noise: NoiseModel, n: int = 40, osrs: int = 1) -> list[float]:
    clock = FakeClock()
    dev = make(clock, noise=noise, rng_seed=seed)
    out = []
    for _ in range(n):
        forced(dev, clock, (osrs, osrs, osrs))
        out.append(compensate_int(DEFAULT_CALIBRATION, *raw_data(dev)).temperature_c)
    return out


def test_noise_is_seeded_and_reproducible() -> None:
    noise = NoiseModel(temperature_sigma_c=0.1, pressure_sigma_hpa=0.05, humidity_sigma_pct=0.5)
    assert _temperatures(7, noise) == _temperatures(7, noise)
    assert _temperatures(7, noise) != _temperatures(8, noise)
    spread = statistics.stdev(_temperatures(7, noise, n=200))
    assert 0.07 < spread < 0.13
    quiet = statistics.stdev(_temperatures(7, noise, n=200, osrs=5))  # ×16: σ/4
    assert 0.015 < quiet < 0.035


def test_linear_drift_per_hour() -> None:
    clock = FakeClock(0.0)
    dev = BME280(
        clock=clock,
        noise=NoiseModel(temperature_drift_c_per_h=1.0, pressure_drift_hpa_per_h=-2.0),
    )
    clock.advance(1800.0)
    forced(dev, clock)
    r = compensate_int(DEFAULT_CALIBRATION, *raw_data(dev))
    assert r.temperature_c == pytest.approx(22.5, abs=0.01)
    assert r.pressure_hpa == pytest.approx(1012.25, abs=0.01)
    assert r.humidity_pct == pytest.approx(45.0, abs=0.01)


def test_noise_model_rejects_negative_sigma() -> None:
    with pytest.raises(ValueError, match="sigma"):
        NoiseModel(pressure_sigma_hpa=-1.0)


# --- faults ---


def test_nack_raises_remote_io_error_until_cleared() -> None:
    clock = FakeClock()
    dev = make(clock)
    dev.inject(Fault.NACK)
    for access in (
        lambda: dev.read_register(0xD0),
        lambda: dev.write_register(0xF4, 1),
        lambda: dev.i2c_read(1),
    ):
        with pytest.raises(OSError) as info:
            access()
        assert info.value.errno == 121
        assert info.value.args == (121, "Remote I/O error")
    dev.clear_faults()
    assert dev.read_register(0xD0) == 0x60


def test_bus_held_low_blocks_until_cleared_from_another_thread() -> None:
    clock = FakeClock()
    dev = make(clock)
    dev.inject(Fault.BUS_HELD_LOW)
    result: list[int] = []
    reader = threading.Thread(target=lambda: result.append(dev.read_register(0xD0)))
    reader.start()
    assert dev.wait_for_blocked(1, timeout=5.0)
    assert reader.is_alive() and not result
    dev.set_environment(ENV_B)  # the rig's controls are not blocked by the bus
    dev.clear_faults()
    reader.join(timeout=5.0)
    assert not reader.is_alive()
    assert result == [0x60]


def test_bus_held_low_timeout_hook() -> None:
    clock = FakeClock()
    dev = make(clock, bus_hold_timeout_s=0.01)
    dev.inject(Fault.BUS_HELD_LOW)
    with pytest.raises(OSError) as info:
        dev.read_register(0xD0)
    assert info.value.errno == errno.ETIMEDOUT
    dev.clear_fault(Fault.BUS_HELD_LOW)
    assert dev.read_register(0xD0) == 0x60


def test_wrong_chip_id_and_corrupt_calibration() -> None:
    clock = FakeClock()
    dev = make(clock, calibration=CALIBRATIONS["unit_a"])
    regs = CALIBRATIONS["unit_a"].to_registers()
    dev.inject(Fault.WRONG_CHIP_ID)
    assert dev.read_register(0xD0) == 0x58
    dev.inject(Fault.CORRUPT_CALIBRATION_T)
    assert dev.read_block(0x88, 3) == bytes([0, 0, regs[0x8A]])
    dev.inject(Fault.CORRUPT_CALIBRATION_H)
    assert dev.read_block(0xA0, 2) == bytes([0, 0])
    assert dev.faults == {
        Fault.WRONG_CHIP_ID,
        Fault.CORRUPT_CALIBRATION_T,
        Fault.CORRUPT_CALIBRATION_H,
    }
    dev.clear_faults()
    assert dev.read_register(0xD0) == 0x60
    assert dev.read_block(0x88, 2) == bytes([regs[0x88], regs[0x89]])
    assert dev.read_register(0xA1) == regs[0xA1]


def test_stuck_data_freeze_while_conversions_go_on() -> None:
    clock = FakeClock()
    dev = make(clock, environment=ENV_A)
    forced(dev, clock)
    frozen = dev.read_block(0xF7, 8)
    dev.inject(Fault.STUCK)
    dev.set_environment(ENV_B)
    dev.write_register(0xF4, 0b101_101_01)
    assert dev.read_register(0xF3) & 0x08  # it still converts ...
    clock.advance(0.2)
    assert dev.read_register(0xF4) & 0b11 == 0
    assert dev.read_block(0xF7, 8) == frozen  # ... but the data do not move
    dev.clear_faults()
    forced(dev, clock)
    assert raw_data(dev) == raw_from_environment(DEFAULT_CALIBRATION, ENV_B)


def test_faults_have_stable_names_for_the_control_endpoint() -> None:
    assert Fault("nack") is Fault.NACK
    assert {f.value for f in Fault} == {
        "nack",
        "bus_held_low",
        "wrong_chip_id",
        "corrupt_calibration_t",
        "corrupt_calibration_h",
        "stuck",
    }


def test_constructor_validates_the_address() -> None:
    with pytest.raises(ValueError, match="0x76 or 0x77"):
        BME280(address=0x40)
    assert BME280(address=0x77).address == 0x77
