"""The project's reference driver (hil.bme280.driver) against the simulated part."""

from __future__ import annotations

import math

import pytest

from hil.bme280.calibration import CALIBRATIONS
from hil.bme280.compensation import Environment
from hil.bme280.driver import (
    BME280Driver,
    CorruptCalibration,
    SensorBusError,
    SensorError,
    SensorTimeout,
    Settings,
    WrongChipId,
)
from hil.bme280.faults import Fault
from hil.sim.bme280 import BME280, SimulatedSMBus


class FakeTime:
    """One clock for the part and the driver; the driver's sleeps move it."""

    def __init__(self) -> None:
        self.t = 50.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        assert dt >= 0
        self.sleeps.append(dt)
        self.t += dt


def rig(
    env: Environment = Environment(22.0, 45.0, 1013.25),  # noqa: B008
    calibration: str = "bmp280_datasheet",
    settings: Settings | None = None,
) -> tuple[BME280, BME280Driver, FakeTime]:
    clock = FakeTime()
    device = BME280(clock=clock, environment=env, calibration=CALIBRATIONS[calibration])
    bus = SimulatedSMBus(1, devices=[device])
    driver = BME280Driver(bus, 0x76, settings=settings, clock=clock, sleep=clock.sleep)
    return device, driver, clock


@pytest.mark.parametrize("name", list(CALIBRATIONS))
def test_reads_the_environment(name: str) -> None:
    env = Environment(-12.5, 83.0, 640.0)
    device, driver, _ = rig(env, name)
    assert driver.initialise() == CALIBRATIONS[name]
    r = driver.read()
    assert r.temperature_c == pytest.approx(env.temperature_c, abs=0.01)
    assert r.pressure_hpa == pytest.approx(env.pressure_hpa, abs=0.02)
    assert r.humidity_pct == pytest.approx(env.humidity_pct, abs=0.01)
    device.set_environment(Environment(40.0, 10.0, 1090.0))
    r = driver.read()
    assert (round(r.temperature_c, 1), round(r.humidity_pct), round(r.pressure_hpa)) == (
        40.0,
        10,
        1090,
    )


def test_waits_on_the_status_bit_without_long_sleeps() -> None:
    _, driver, clock = rig(settings=Settings(16, 16, 16))
    driver.read()
    t_max = driver.measurement_time_s()
    assert t_max == pytest.approx(0.1128)
    assert max(clock.sleeps) == pytest.approx(t_max)  # one sleep of the computed time
    assert sum(clock.sleeps) < t_max + 0.01  # plus the 2 ms NVM copy after reset


def test_initialise_resets_and_sets_the_filter() -> None:
    device, driver, _ = rig(settings=Settings(2, 4, 8, iir_filter=16))
    device.write_register(0xF2, 5)
    driver.initialise()
    assert device.read_register(0xF2) == 0  # soft reset happened
    assert device.read_register(0xF5) == 4 << 2
    driver.read()
    assert device.read_register(0xF2) == 4
    assert device.read_register(0xF4) == (2 << 5) | (3 << 2)  # forced, back to sleep


def test_skipped_channels_read_as_nan() -> None:
    _, driver, _ = rig(settings=Settings(oversampling_p=0, oversampling_h=0))
    r = driver.read()
    assert r.temperature_c == pytest.approx(22.0, abs=0.01)
    assert math.isnan(r.pressure_hpa) and math.isnan(r.humidity_pct)


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="oversampling_p"):
        Settings(oversampling_p=3)
    with pytest.raises(ValueError, match="temperature"):
        Settings(oversampling_t=0)
    with pytest.raises(ValueError, match="iir_filter"):
        Settings(iir_filter=5)
    with pytest.raises(ValueError, match="0x76 or 0x77"):
        BME280Driver(SimulatedSMBus(1), 0x40)


def test_wrong_chip_id() -> None:
    device, driver, _ = rig()
    device.inject(Fault.WRONG_CHIP_ID)
    with pytest.raises(WrongChipId) as info:
        driver.read()
    assert (info.value.address, info.value.chip_id) == (0x76, 0x58)
    assert "0x76" in str(info.value) and "0x58" in str(info.value) and "BMP280" in str(info.value)
    assert isinstance(info.value, SensorError)


@pytest.mark.parametrize(
    ("fault", "field"),
    [(Fault.CORRUPT_CALIBRATION_T, "dig_T1"), (Fault.CORRUPT_CALIBRATION_H, "dig_H1")],
)
def test_corrupt_calibration(fault: Fault, field: str) -> None:
    device, driver, _ = rig()
    device.inject(fault)
    with pytest.raises(CorruptCalibration) as info:
        driver.initialise()
    assert (info.value.address, info.value.field, info.value.value) == (0x76, field, 0)
    assert field in str(info.value)
    device.clear_faults()
    assert driver.initialise() == CALIBRATIONS["bmp280_datasheet"]


def test_nack_is_a_sensor_bus_error_and_an_oserror() -> None:
    device, driver, _ = rig()
    driver.initialise()
    device.inject(Fault.NACK)
    with pytest.raises(SensorBusError) as info:
        driver.read()
    assert isinstance(info.value, OSError) and info.value.errno == 121
    assert info.value.address == 0x76
    assert isinstance(info.value.__cause__, OSError)


def test_missing_sensor() -> None:
    driver = BME280Driver(SimulatedSMBus(1), 0x77)
    with pytest.raises(
        SensorBusError, match=r"0x77: reading the chip id failed: \[Errno 121\] Remote I/O error"
    ):
        driver.read()


class Freezable:
    """The part's clock: follows the driver's until frozen."""

    def __init__(self, source: FakeTime) -> None:
        self.source = source
        self.frozen: float | None = None

    def __call__(self) -> float:
        return self.source() if self.frozen is None else self.frozen


@pytest.mark.parametrize("stage", ["NVM copy after soft reset", "conversion"])
def test_timeout_when_a_status_bit_never_clears(stage: str) -> None:
    driver_time = FakeTime()
    part_time = Freezable(driver_time)
    device = BME280(clock=part_time)
    driver = BME280Driver(
        SimulatedSMBus(1, devices=[device]),
        timeout_s=0.25,
        clock=driver_time,
        sleep=driver_time.sleep,
    )
    if stage == "conversion":
        driver.initialise()
    part_time.frozen = driver_time.t  # whatever the part is doing now never ends
    with pytest.raises(SensorTimeout) as info:
        driver.read()
    assert info.value.waited_for == stage
    assert info.value.status & (0x01 if stage.startswith("NVM") else 0x08)
    assert info.value.waited_s == pytest.approx(0.25)
    assert f"0x76: {stage} still running after 250.0 ms" in str(info.value)
    first_sleep = 0.002 if stage.startswith("NVM") else driver.measurement_time_s()
    sleeps = driver_time.sleeps
    last_long = max(i for i, dt in enumerate(sleeps) if dt > 0.0011)
    assert sleeps[last_long] == pytest.approx(first_sleep)
    assert 240 < len(sleeps) - last_long - 1 <= 251  # then it polls every 1 ms to the deadline
