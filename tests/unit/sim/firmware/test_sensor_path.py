"""Environments set on the sensor come back in published readings, within the contract's accuracy.

Host level, on the firmware model's own sensor path: a :class:`hil.sim.bme280.BME280` on a
:class:`hil.sim.bme280.SimulatedSMBus`, read by :class:`hil.bme280.driver.BME280Driver` as
``SensorTask.run`` reads it (``initialise()`` once, then ``read()`` per
interval), each reading handed to ``SensorTask._on_reading`` itself: the model's
publishing transform (calibration offset, range check, rounding to 2 decimals, the sensors
payload), whose output is taken from the model's outbox.  One fake clock runs the part and
the driver's sleeps, so a forced-mode read costs no real time.

The property, over the whole datasheet range and the whole calibration-offset range:

* a published reading is within ±TEMPERATURE_ACCURACY_C of environment + offset, within
  ±HUMIDITY_ACCURACY_PCT and ±PRESSURE_ACCURACY_HPA of the environment, and conforms to
  the sensors schema;
* a reading whose target lies inside the contract range by more than the accuracy is
  published; one outside it by more than the accuracy is not (alert sensor_out_of_range).
  Within the accuracy of an edge either may happen: at exactly 300 hPa the part may read
  299.999 hPa, which the firmware rightly drops as outside the range.

Humidity is clamped to 0…100 %RH by Bosch's compensation, so it never decides a drop.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from hypothesis import example, given, settings, target
from hypothesis import strategies as st

from hil.bme280.calibration import CALIBRATIONS
from hil.bme280.compensation import Environment, Reading
from hil.bme280.driver import BME280Driver, Settings
from hil.device import contract
from hil.device import defects as D
from hil.device.settings import DeviceConfig
from hil.sim.bme280 import BME280, NoiseModel, SimulatedSMBus
from tests.unit.sim.firmware.harness import sensor_task

ACC_T = contract.TEMPERATURE_ACCURACY_C
ACC_H = contract.HUMIDITY_ACCURACY_PCT
ACC_P = contract.PRESSURE_ACCURACY_HPA
T_LO, T_HI = contract.TEMPERATURE_RANGE_C
H_LO, H_HI = contract.HUMIDITY_RANGE_PCT
P_LO, P_HI = contract.PRESSURE_RANGE_HPA
OFFSET_LO, OFFSET_HI = contract.CALIBRATION_OFFSET_RANGE

DEVICE_ID = "hil-path-0001"
ADDRESS = 0x76  # what SensorTask.run reads


class FakeTime:
    """One clock for the part and the driver; the driver's sleeps move it."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        assert dt >= 0
        self.t += dt


class SensorPath:
    """The part, its bus, the firmware's driver and the firmware's publishing step."""

    def __init__(
        self,
        *,
        calibration: str = "bmp280_datasheet",
        offset: float = contract.DEFAULT_CALIBRATION_OFFSET,
        settings: Settings | None = None,
        noise: NoiseModel | None = None,
        defects: Sequence[str] = (),
        rng_seed: int = 1,
    ) -> None:
        self.clock = FakeTime()
        self.device = BME280(
            calibration=CALIBRATIONS[calibration], clock=self.clock, noise=noise, rng_seed=rng_seed
        )
        bus = SimulatedSMBus(1, devices=[self.device])
        # SensorTask.run builds BME280Driver(bus, 0x76); only the clock is the test's (and
        # the oversampling, where a test asks for it)
        self.driver = BME280Driver(
            bus, ADDRESS, settings=settings, clock=self.clock, sleep=self.clock.sleep
        )
        self.driver.initialise()
        self.offset = offset
        self.sensor = sensor_task(DEVICE_ID, DeviceConfig(calibration_offset_temp=offset), defects)
        self.interval_s = float(self.sensor.fw.config.measurement_interval_s)

    def read(self, env: Environment) -> Reading:
        """Expose the part to ``env``, wait one measurement interval, read it."""
        self.device.set_environment(env)
        self.clock.sleep(self.interval_s)
        return self.driver.read()

    def publish(self, reading: Reading) -> dict[str, object] | None:
        """``_on_reading`` as SensorTask.run calls it; the sensors payload, or None if dropped."""
        outbox = self.sensor.fw.outbox
        before_readings, before_other = len(outbox.readings), len(outbox.other)
        self.sensor._on_reading(reading.temperature_c, reading.humidity_pct, reading.pressure_hpa)
        if len(outbox.readings) > before_readings:
            topic, data, retain = outbox.readings[-1]
            assert (topic, retain) == (contract.sensors_topic(DEVICE_ID), False)
            problems = contract.validate_payload("sensors", data, device_id=DEVICE_ID)
            assert problems == [], problems
            payload: dict[str, object] = json.loads(data)
            return payload
        alerts = [
            json.loads(data)
            for topic, data, _ in list(outbox.other)[before_other:]
            if topic == contract.alerts_topic(DEVICE_ID)
        ]
        assert [a["code"] for a in alerts] == ["sensor_out_of_range"], alerts
        return None


@dataclass(frozen=True)
class Errors:
    temperature_c: float
    humidity_pct: float
    pressure_hpa: float


def _number(payload: dict[str, object], key: str) -> float:
    value = payload[key]
    assert isinstance(value, int | float), (key, value)
    return float(value)


def published_errors(payload: dict[str, object], env: Environment, offset: float) -> Errors:
    return Errors(
        temperature_c=abs(_number(payload, "temperature_c") - (env.temperature_c + offset)),
        humidity_pct=abs(_number(payload, "humidity_pct") - env.humidity_pct),
        pressure_hpa=abs(_number(payload, "pressure_hpa") - env.pressure_hpa),
    )


def accuracy_problems(errors: Errors) -> list[str]:
    problems = []
    if errors.temperature_c > ACC_T:
        problems.append(f"temperature off by {errors.temperature_c:.3f} °C (±{ACC_T})")
    if errors.humidity_pct > ACC_H:
        problems.append(f"humidity off by {errors.humidity_pct:.3f} %RH (±{ACC_H})")
    if errors.pressure_hpa > ACC_P:
        problems.append(f"pressure off by {errors.pressure_hpa:.3f} hPa (±{ACC_P})")
    return problems


def check_published(path: SensorPath, env: Environment) -> dict[str, object] | None:
    """Read ``env`` through the path and assert the property; the payload if published."""
    payload = path.publish(path.read(env))
    target_t = env.temperature_c + path.offset
    clearly_inside = (T_LO + ACC_T <= target_t <= T_HI - ACC_T) and (
        P_LO + ACC_P <= env.pressure_hpa <= P_HI - ACC_P
    )
    clearly_outside = not (T_LO - ACC_T <= target_t <= T_HI + ACC_T) or not (
        P_LO - ACC_P <= env.pressure_hpa <= P_HI + ACC_P
    )
    if payload is None:
        assert not clearly_inside, f"{env} with offset {path.offset} was not published"
        return None
    assert not clearly_outside, f"{env} with offset {path.offset} was published: {payload}"
    errors = published_errors(payload, env, path.offset)
    assert accuracy_problems(errors) == [], (env, path.offset, payload)
    return payload


# --- the property over the whole range ----------------------------------------------------

environments = st.builds(
    Environment,
    temperature_c=st.floats(T_LO, T_HI),
    humidity_pct=st.floats(H_LO, H_HI),
    pressure_hpa=st.floats(P_LO, P_HI),
)
CORNERS = [Environment(t, h, p) for t in (T_LO, T_HI) for h in (H_LO, H_HI) for p in (P_LO, P_HI)]


@settings(max_examples=400, deadline=None)
@given(
    calibration=st.sampled_from(sorted(CALIBRATIONS)),
    offset=st.one_of(st.just(0.0), st.floats(OFFSET_LO, OFFSET_HI)),
    envs=st.lists(environments, min_size=1, max_size=4),
)
@example(calibration="bmp280_datasheet", offset=0.0, envs=CORNERS)
@example(calibration="unit_a", offset=0.0, envs=CORNERS)
@example(calibration="unit_b", offset=0.0, envs=CORNERS)
@example(calibration="unit_b", offset=OFFSET_HI, envs=[Environment(T_HI, 50.0, 1013.25)])
@example(calibration="unit_a", offset=OFFSET_LO, envs=[Environment(T_LO, 50.0, 1013.25)])
def test_environments_come_back_in_published_readings(
    calibration: str, offset: float, envs: list[Environment]
) -> None:
    path = SensorPath(calibration=calibration, offset=offset)
    published: list[Errors] = []
    for env in envs:
        payload = check_published(path, env)
        if payload is not None:
            assert payload["seq"] == len(published)  # consecutive, as each reading goes out
            published.append(published_errors(payload, env, offset))
    # steer the search towards the largest errors
    for field, label in (
        ("temperature_c", "temperature error °C"),
        ("humidity_pct", "humidity error %RH"),
        ("pressure_hpa", "pressure error hPa"),
    ):
        target(max((getattr(e, field) for e in published), default=0.0), label=label)


def test_published_values_are_the_reading_plus_offset_rounded() -> None:
    path = SensorPath(calibration="unit_a", offset=-2.35)
    env = Environment(21.123, 47.891, 1009.876)
    reading = path.read(env)
    payload = path.publish(reading)
    assert payload is not None
    assert payload["temperature_c"] == round(reading.temperature_c - 2.35, 2)
    assert payload["humidity_pct"] == round(reading.humidity_pct, 2)
    assert payload["pressure_hpa"] == round(reading.pressure_hpa, 2)
    assert payload["temperature_c"] == pytest.approx(21.123 - 2.35, abs=0.01)


def test_the_property_catches_a_firmware_that_reads_2c_high() -> None:
    """The same check fails on the defect that adds 2 °C (so the property has teeth)."""
    path = SensorPath(defects=[D.TEMPERATURE_HIGH_2C])
    env = Environment(20.0, 50.0, 1000.0)
    payload = path.publish(path.read(env))
    assert payload is not None
    problems = accuracy_problems(published_errors(payload, env, 0.0))
    assert len(problems) == 1 and problems[0].startswith("temperature off by 2.0")


# --- noise, oversampling and the filter ---------------------------------------------------

#: Per-conversion noise at ×1 oversampling of the order the BME280 datasheet gives (a few
#: Pa of pressure, hundredths of %RH, temperature about its 0.01 °C resolution), rounded
#: up to the pessimistic side.
REALISTIC_NOISE = NoiseModel(
    temperature_sigma_c=0.01, pressure_sigma_hpa=0.05, humidity_sigma_pct=0.1
)
#: A much noisier part: at ×1 one sigma is a third of the accuracy on every channel, so
#: 3σ reaches the limits (here pressure goes past ±1 hPa at ×1); ×16 oversampling
#: (σ/4) is what keeps it well inside.
NOISY_PART = NoiseModel(temperature_sigma_c=0.3, pressure_sigma_hpa=0.3, humidity_sigma_pct=1.0)

NOISE_ENVIRONMENTS = [
    Environment(-35.0, 5.0, 320.0),
    Environment(22.0, 45.0, 1013.25),
    Environment(80.0, 95.0, 1080.0),
]
READS_PER_ENVIRONMENT = 60


def noisy_run(
    noise: NoiseModel, settings: Settings, *, within_accuracy: bool = True
) -> dict[str, list[float]]:
    """Signed published errors per channel: many reads of each environment, each on a part
    powered up in it (so the IIR filter, where set, starts there instead of lagging a step).
    With ``within_accuracy`` every reading is checked against the contract as it comes."""
    signed: dict[str, list[float]] = {"t": [], "h": [], "p": []}
    for seed, env in enumerate(NOISE_ENVIRONMENTS):
        path = SensorPath(calibration="unit_b", settings=settings, noise=noise, rng_seed=seed)
        for _ in range(READS_PER_ENVIRONMENT):
            if within_accuracy:
                payload = check_published(path, env)
            else:
                payload = path.publish(path.read(env))
            assert payload is not None
            signed["t"].append(_number(payload, "temperature_c") - env.temperature_c)
            signed["h"].append(_number(payload, "humidity_pct") - env.humidity_pct)
            signed["p"].append(_number(payload, "pressure_hpa") - env.pressure_hpa)
    return signed


@pytest.mark.parametrize(
    "settings",
    [
        Settings(),  # what the firmware runs: ×1, filter off
        Settings(4, 4, 4),
        Settings(16, 16, 16),
        Settings(16, 16, 16, iir_filter=4),
    ],
    ids=["x1-firmware", "x4", "x16", "x16-iir4"],
)
def test_realistic_noise_stays_within_accuracy(settings: Settings) -> None:
    signed = noisy_run(REALISTIC_NOISE, settings)
    for channel, bound in (("t", ACC_T), ("h", ACC_H), ("p", ACC_P)):
        worst = max(abs(e) for e in signed[channel])
        assert worst <= bound / 2, f"{channel}: worst {worst}"  # far inside the contract
    # the noise is really there (pressure: σ is above the ~0.03 hPa step at ×1)
    assert statistics.pstdev(signed["p"]) > 0.0


def test_oversampling_keeps_a_noisy_part_within_accuracy() -> None:
    x1 = noisy_run(NOISY_PART, Settings(), within_accuracy=False)  # 3σ reaches the limits
    x16 = noisy_run(NOISY_PART, Settings(16, 16, 16))
    for channel, bound, sigma in (
        ("t", ACC_T, NOISY_PART.temperature_sigma_c),
        ("h", ACC_H, NOISY_PART.humidity_sigma_pct),
        ("p", ACC_P, NOISY_PART.pressure_sigma_hpa),
    ):
        spread_x1 = statistics.pstdev(x1[channel])
        spread_x16 = statistics.pstdev(x16[channel])
        # the model's noise reaches the payload, and averaging 16 samples divides it by √16
        assert spread_x1 == pytest.approx(sigma, rel=0.25), channel
        assert spread_x16 == pytest.approx(sigma / math.sqrt(16), rel=0.25), channel
        assert max(abs(e) for e in x16[channel]) <= bound / 2, channel


def test_a_failed_transfer_reads_as_esp_idf_reports_it() -> None:
    # The firmware's log speaks ESP-IDF (esp_err_to_name), never the host's errno text.
    import errno as errno_codes

    from hil.bme280.driver import SensorBusError, WrongChipId
    from hil.sim.firmware.tasks.sensor import esp_error

    reading = "reading the measurement"
    nack = SensorBusError(address=0x76, operation=reading, cause=OSError(errno_codes.EREMOTEIO, "Remote I/O error"))
    held = SensorBusError(address=0x76, operation=reading, cause=OSError(errno_codes.ETIMEDOUT, "Connection timed out"))
    assert esp_error(nack) == "reading the measurement: ESP_FAIL"
    assert esp_error(held) == "reading the measurement: ESP_ERR_TIMEOUT"
    assert esp_error(OSError(errno_codes.EREMOTEIO, "Remote I/O error")) == "ESP_FAIL"
    wrong = WrongChipId(address=0x76, chip_id=0x58)
    assert esp_error(wrong) == str(wrong)  # a driver check keeps its own words
