"""The firmware model's sensor alerts (DEVICE_CONTRACT.md §7), and the defects that break
them: ``sensor_failure`` once per episode (``sensor_failure_repeated`` raises it on every
failed read, ``sensor_failure_once_per_boot`` only in the first episode), also when the
values are out of range (``out_of_range_not_a_failure`` counts failed reads only), and
out-of-range values withheld with an alert (``out_of_range_published`` publishes them as
readings, ``range_checked_before_offset`` checks them before the calibration offset).

Host level: ``SensorTask._sensor_failed`` and ``_on_reading`` as ``SensorTask.run`` calls
them, their output taken from the model's outbox.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence

import pytest

from hil.device import contract
from hil.device import defects as D
from hil.device.settings import DeviceConfig
from hil.sim.firmware.tasks.sensor import SensorTask
from tests.unit.sim.firmware.harness import sensor_task

DEVICE_ID = "hil-alerts-0001"
TIMEOUT_S = 5


def firmware(defects: Sequence[str] = ()) -> SensorTask:
    return sensor_task(DEVICE_ID, DeviceConfig(sensor_timeout_s=TIMEOUT_S), defects)

def alert_codes(sensor: SensorTask) -> list[str]:
    return [json.loads(data)["code"] for topic, data, _ in sensor.fw.outbox.other if topic == contract.alerts_topic(DEVICE_ID)]


def readings(sensor: SensorTask) -> list[dict[str, object]]:
    return [json.loads(data) for _, data, _ in sensor.fw.outbox.readings]


def failed_reads_after_the_timeout(sensor: SensorTask, count: int) -> None:
    sensor.fw.last_reading_at = time.monotonic() - TIMEOUT_S - 1
    for _ in range(count):
        sensor._sensor_failed()


def test_sensor_failure_is_raised_once_per_episode_and_cleared_by_a_reading() -> None:
    sensor = firmware()
    sensor.fw.last_reading_at = time.monotonic()
    sensor._sensor_failed()
    assert alert_codes(sensor) == [], "raised before sensor_timeout_s"
    failed_reads_after_the_timeout(sensor, 4)
    assert alert_codes(sensor) == ["sensor_failure"]
    sensor._on_reading(22.0, 45.0, 1013.25)
    failed_reads_after_the_timeout(sensor, 2)
    assert alert_codes(sensor) == ["sensor_failure", "sensor_recovered", "sensor_failure"]


def test_the_repeated_failure_defect_raises_it_on_every_failed_read() -> None:
    sensor = firmware([D.SENSOR_FAILURE_REPEATED])
    failed_reads_after_the_timeout(sensor, 3)
    assert alert_codes(sensor) == ["sensor_failure"] * 3


@pytest.mark.parametrize(("t", "h", "p"), [(-45.0, 45.0, 1013.25), (90.0, 45.0, 1013.25), (22.0, 45.0, 280.0), (22.0, 45.0, 1120.0)])
def test_out_of_range_values_are_withheld_with_an_alert(t: float, h: float, p: float) -> None:
    sensor = firmware()
    sensor._on_reading(t, h, p)
    assert readings(sensor) == []
    assert alert_codes(sensor) == ["sensor_out_of_range"]


def test_the_out_of_range_defect_publishes_them_without_an_alert() -> None:
    sensor = firmware([D.OUT_OF_RANGE_PUBLISHED])
    sensor._on_reading(90.0, 45.0, 1013.25)
    assert [r["temperature_c"] for r in readings(sensor)] == [90.0]
    assert alert_codes(sensor) == []


def test_the_measurement_period_waits_for_its_tick_not_a_whole_interval() -> None:
    """A fixed rate (the firmware's ticker): with the next tick 0.6 s away (a read took
    0.4 s of a 1 s interval) it waits 0.6 s, so slow reads and late wake-ups on a loaded
    host do not stretch the period."""
    sensor = firmware()
    sensor.fw.config = DeviceConfig(measurement_interval_s=1)
    sensor.fw.hang = set()
    sensor.fw.program_task = None
    waits: list[float] = []

    async def record(task: str, seconds: float) -> None:
        waits.append(seconds)

    sensor.fw.wait = record  # type: ignore[method-assign]
    asyncio.run(sensor._sensor_wait(time.monotonic() + 0.6))
    asyncio.run(sensor._sensor_wait())  # no read to account for (the init retries): a whole interval
    assert 0.5 < waits[0] <= 0.6 and waits[1] == 1.0


def out_of_range_after_the_timeout(sensor: SensorTask, count: int) -> None:
    sensor.fw.last_reading_at = time.monotonic() - TIMEOUT_S - 1
    for _ in range(count):
        sensor._on_reading(-45.0, 45.0, 1013.25)


def test_values_out_of_range_for_the_sensor_timeout_raise_sensor_failure_once() -> None:
    """C7.5: a value withheld is no good reading either."""
    sensor = firmware()
    out_of_range_after_the_timeout(sensor, 3)
    assert alert_codes(sensor) == ["sensor_out_of_range", "sensor_failure", "sensor_out_of_range", "sensor_out_of_range"]
    sensor._on_reading(22.0, 45.0, 1013.25)
    assert alert_codes(sensor)[-1] == "sensor_recovered"


def test_the_out_of_range_not_a_failure_defect_never_raises_it() -> None:
    sensor = firmware([D.OUT_OF_RANGE_NOT_A_FAILURE])
    out_of_range_after_the_timeout(sensor, 3)
    assert alert_codes(sensor) == ["sensor_out_of_range"] * 3


@pytest.mark.parametrize(("defects", "published"), [((), []), ((D.RANGE_CHECKED_BEFORE_OFFSET,), [-45.0])])
def test_the_range_is_checked_on_the_calibrated_value(defects: Sequence[str], published: list[float]) -> None:
    sensor = firmware(defects)
    sensor.fw.config = DeviceConfig(sensor_timeout_s=TIMEOUT_S, calibration_offset_temp=-10.0)
    sensor.fw.last_reading_at = time.monotonic()
    sensor._on_reading(-35.0, 45.0, 1013.25)
    assert [r["temperature_c"] for r in readings(sensor)] == published


def test_the_once_per_boot_defect_misses_the_second_episode() -> None:
    sensor = firmware([D.SENSOR_FAILURE_ONCE_PER_BOOT])
    failed_reads_after_the_timeout(sensor, 2)
    sensor._on_reading(22.0, 45.0, 1013.25)
    failed_reads_after_the_timeout(sensor, 2)
    assert alert_codes(sensor) == ["sensor_failure", "sensor_recovered"]
