"""The SMBus stand-in (hil.sim.bme280.SimulatedSMBus) and an off-the-shelf driver reading it."""

from __future__ import annotations

import inspect
import threading

import pytest
import smbus2
from smbus2 import i2c_msg

from hil.bme280.calibration import CALIBRATIONS, DEFAULT_CALIBRATION, Calibration
from hil.bme280.compensation import Environment, measurement_time_s
from hil.bme280.faults import Fault
from hil.sim.bme280 import BME280, SimulatedSMBus


class FakeClock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def dev(clock: FakeClock) -> BME280:
    device = BME280(clock=clock)
    clock.advance(0.01)
    return device


@pytest.fixture
def bus(dev: BME280) -> SimulatedSMBus:
    return SimulatedSMBus(1, devices=[dev])


# --- surface ---

SMBUS_METHODS = [
    "open",
    "close",
    "write_quick",
    "read_byte",
    "write_byte",
    "read_byte_data",
    "write_byte_data",
    "read_word_data",
    "write_word_data",
    "read_i2c_block_data",
    "write_i2c_block_data",
    "i2c_rdwr",
    "__enter__",
    "__exit__",
]


@pytest.mark.parametrize("name", SMBUS_METHODS)
def test_method_signatures_match_smbus2(name: str) -> None:
    ours = inspect.signature(getattr(SimulatedSMBus, name))
    theirs = inspect.signature(getattr(smbus2.SMBus, name))
    assert list(ours.parameters) == list(theirs.parameters)
    for param in theirs.parameters.values():
        if param.default is not inspect.Parameter.empty:
            assert ours.parameters[param.name].default == param.default


def test_byte_and_word_access(bus: SimulatedSMBus) -> None:
    regs = DEFAULT_CALIBRATION.to_registers()
    assert bus.read_byte_data(0x76, 0xD0) == 0x60
    assert bus.read_word_data(0x76, 0x88) == DEFAULT_CALIBRATION.dig_T1  # little-endian word
    assert bus.read_word_data(0x76, 0x8C) == DEFAULT_CALIBRATION.dig_T3 & 0xFFFF
    bus.write_byte_data(0x76, 0xF5, 0x10)
    assert bus.read_byte_data(0x76, 0xF5) == 0x10
    bus.write_byte(0x76, 0x88)  # sets the register pointer
    assert [bus.read_byte(0x76) for _ in range(3)] == [regs[0x88], regs[0x89], regs[0x8A]]
    bus.write_quick(0x76)


def test_block_access(bus: SimulatedSMBus) -> None:
    regs = DEFAULT_CALIBRATION.to_registers()
    block = bus.read_i2c_block_data(0x76, 0x88, 26)
    assert isinstance(block, list) and block == [regs[r] for r in range(0x88, 0xA2)]
    assert Calibration.from_blocks(block, bus.read_i2c_block_data(0x76, 0xE1, 7)) == (
        DEFAULT_CALIBRATION
    )
    # BME280 writes are (register, data) pairs: 0xF2 = 0x01, then 0xF5 = 0x08
    bus.write_i2c_block_data(0x76, 0xF2, [0x01, 0xF5, 0x08])
    assert bus.read_i2c_block_data(0x76, 0xF2, 4) == [0x01, 0x00, 0x00, 0x08]
    with pytest.raises(ValueError, match="32"):
        bus.read_i2c_block_data(0x76, 0x88, 33)
    with pytest.raises(ValueError, match="32"):
        bus.write_i2c_block_data(0x76, 0xF2, [0] * 33)


def test_word_write_is_register_then_two_bytes(bus: SimulatedSMBus) -> None:
    bus.write_word_data(0x76, 0xF2, 0xF503)  # 0xF2 = 0x03; 0xF5 becomes the pointer
    assert bus.read_byte_data(0x76, 0xF2) == 0x03
    assert bus.read_byte_data(0x76, 0xF5) == 0x00


def test_i2c_rdwr_with_real_smbus2_messages(bus: SimulatedSMBus, clock: FakeClock) -> None:
    write = i2c_msg.write(0x76, [0xD0])
    read = i2c_msg.read(0x76, 1)
    bus.i2c_rdwr(write, read)
    assert list(read) == [0x60]
    bus.i2c_rdwr(i2c_msg.write(0x76, [0xF2, 0x05, 0xF4, 0b101_101_01]))  # start a conversion
    clock.advance(measurement_time_s(5, 5, 5))
    burst = i2c_msg.read(0x76, 8)
    bus.i2c_rdwr(i2c_msg.write(0x76, [0xF7]), burst)
    assert bytes(burst) == bus.devices[0x76].read_block(0xF7, 8)  # type: ignore[attr-defined]
    assert bytes(burst) != bytes([0x80, 0, 0, 0x80, 0, 0, 0x80, 0])


def test_missing_device_raises_remote_io_error(bus: SimulatedSMBus) -> None:
    for access in (
        lambda: bus.read_byte_data(0x77, 0xD0),
        lambda: bus.write_byte_data(0x77, 0xF4, 0),
        lambda: bus.read_i2c_block_data(0x77, 0xF7, 8),
        lambda: bus.write_quick(0x50),
        lambda: bus.i2c_rdwr(i2c_msg.write(0x77, [0xD0]), i2c_msg.read(0x77, 1)),
    ):
        with pytest.raises(OSError) as info:
            access()
        assert info.value.args == (121, "Remote I/O error")


def test_nack_fault_looks_like_a_missing_device(bus: SimulatedSMBus, dev: BME280) -> None:
    dev.inject(Fault.NACK)
    with pytest.raises(OSError) as info:
        bus.read_byte_data(0x76, 0xD0)
    assert info.value.errno == 121
    dev.clear_faults()
    assert bus.read_byte_data(0x76, 0xD0) == 0x60


def test_bus_held_low_blocks_the_bus_until_released(bus: SimulatedSMBus, dev: BME280) -> None:
    dev.inject(Fault.BUS_HELD_LOW)
    results: list[int] = []
    reader = threading.Thread(target=lambda: results.append(bus.read_byte_data(0x76, 0xD0)))
    reader.start()
    assert dev.wait_for_blocked(1, timeout=5.0)
    assert reader.is_alive()
    releaser = threading.Thread(target=dev.clear_faults)
    releaser.start()
    releaser.join(timeout=5.0)
    reader.join(timeout=5.0)
    assert not reader.is_alive() and results == [0x60]


def test_two_sensors_on_one_bus_and_wiring_errors(clock: FakeClock, dev: BME280) -> None:
    other = BME280(address=0x77, clock=clock, calibration=CALIBRATIONS["unit_b"])
    bus = SimulatedSMBus(1)
    bus.attach(dev)
    bus.attach(other)
    assert bus.read_word_data(0x77, 0x88) == CALIBRATIONS["unit_b"].dig_T1
    assert bus.read_word_data(0x76, 0x88) == DEFAULT_CALIBRATION.dig_T1
    with pytest.raises(ValueError, match="0x76"):
        bus.attach(BME280(clock=clock))
    bus.detach(0x77)
    with pytest.raises(OSError):
        bus.read_byte_data(0x77, 0xD0)


def test_open_close_and_context_manager(dev: BME280) -> None:
    bus = SimulatedSMBus(devices=[dev])
    with bus as b:
        assert b is bus
        assert b.read_byte_data(0x76, 0xD0) == 0x60
    with pytest.raises(OSError, match="Bad file descriptor"):
        bus.read_byte_data(0x76, 0xD0)
    bus.open(1)
    assert bus.read_byte_data(0x76, 0xD0) == 0x60
    unopened = SimulatedSMBus(None, devices=[BME280(address=0x77)])
    with pytest.raises(OSError):
        unopened.read_byte_data(0x77, 0xD0)
    with pytest.raises(TypeError):
        unopened.open(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        bus.write_byte_data(0x76, 0xF4, 256)


def test_concurrent_users_are_serialised(bus: SimulatedSMBus) -> None:
    errors: list[BaseException] = []
    regs = DEFAULT_CALIBRATION.to_registers()
    expected = [regs[r] for r in range(0x88, 0xA2)]

    def worker() -> None:
        try:
            for _ in range(200):
                # each of these is a pointer write then a read: interleaving would break them
                assert bus.read_i2c_block_data(0x76, 0x88, 26) == expected
                assert bus.read_byte_data(0x76, 0xD0) == 0x60
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


# --- an off-the-shelf smbus2 driver: RPi.bme280 ---

rpi_bme280 = pytest.importorskip("bme280", reason="RPi.bme280 (dev extra) is not installed")

ENVIRONMENTS = [
    Environment(22.0, 45.0, 1013.25),
    Environment(-40.0, 0.0, 300.0),
    Environment(85.0, 100.0, 1100.0),
    Environment(3.3, 97.5, 870.0),
]


@pytest.mark.parametrize("name", list(CALIBRATIONS))
def test_rpi_bme280_reads_the_stand_in(name: str) -> None:
    cal = CALIBRATIONS[name]
    device = BME280(calibration=cal)  # real clock: the driver really sleeps
    bus = SimulatedSMBus(1, devices=[device])
    params = rpi_bme280.load_calibration_params(bus, 0x76)
    assert {k: params[k] for k in cal.__dataclass_fields__} == cal.__dict__
    for env in ENVIRONMENTS:
        device.set_environment(env)
        data = rpi_bme280.sample(bus, 0x76, params)
        # DEVICE_CONTRACT §7 accuracy, and the much tighter fidelity the model really has
        # (×1 oversampling keeps 16 bits of T and P)
        assert abs(data.temperature - env.temperature_c) <= 1.0
        assert abs(data.pressure - env.pressure_hpa) <= 1.0
        assert abs(data.humidity - env.humidity_pct) <= 3.0
        assert data.temperature == pytest.approx(env.temperature_c, abs=0.01)
        assert data.pressure == pytest.approx(env.pressure_hpa, abs=0.02)
        assert data.humidity == pytest.approx(env.humidity_pct, abs=0.01)


def test_rpi_bme280_with_16x_oversampling() -> None:
    device = BME280(environment=Environment(18.25, 61.0, 998.7))
    bus = SimulatedSMBus(1, devices=[device])
    params = rpi_bme280.load_calibration_params(bus, 0x76)
    data = rpi_bme280.sample(bus, 0x76, params, sampling=rpi_bme280.oversampling.x16)
    assert data.temperature == pytest.approx(18.25, abs=0.005)
    assert data.pressure == pytest.approx(998.7, abs=0.005)
    assert data.humidity == pytest.approx(61.0, abs=0.01)
