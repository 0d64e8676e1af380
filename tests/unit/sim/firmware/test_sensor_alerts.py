"""The firmware model's sensor alerts (DEVICE_CONTRACT.md §7), and the two defects that
break them: ``sensor_failure`` once per episode (``sensor_failure_repeated`` raises it on
every failed read) and out-of-range values withheld with an alert
(``out_of_range_published`` publishes them as readings).

Host level: ``ReferenceFirmware._sensor_failed`` and ``_on_reading`` as ``_sensor_task``
calls them, their output taken from the model's outbox.
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
from hil.sim.firmware.reference import ReferenceFirmware
from tests.unit.sim.firmware.harness import sensor_firmware

DEVICE_ID = "hil-alerts-0001"
TIMEOUT_S = 5


def firmware(defects: Sequence[str] = ()) -> ReferenceFirmware:
    return sensor_firmware(DEVICE_ID, DeviceConfig(sensor_timeout_s=TIMEOUT_S), defects)

def alert_codes(fw: ReferenceFirmware) -> list[str]:
    return [json.loads(data)["code"] for topic, data, _ in fw.outbox.other if topic == contract.alerts_topic(DEVICE_ID)]


def readings(fw: ReferenceFirmware) -> list[dict[str, object]]:
    return [json.loads(data) for _, data, _ in fw.outbox.readings]


def failed_reads_after_the_timeout(fw: ReferenceFirmware, count: int) -> None:
    fw.last_reading_at = time.monotonic() - TIMEOUT_S - 1
    for _ in range(count):
        fw._sensor_failed()


def test_sensor_failure_is_raised_once_per_episode_and_cleared_by_a_reading() -> None:
    fw = firmware()
    fw.last_reading_at = time.monotonic()
    fw._sensor_failed()
    assert alert_codes(fw) == [], "raised before sensor_timeout_s"
    failed_reads_after_the_timeout(fw, 4)
    assert alert_codes(fw) == ["sensor_failure"]
    fw._on_reading(22.0, 45.0, 1013.25)
    failed_reads_after_the_timeout(fw, 2)
    assert alert_codes(fw) == ["sensor_failure", "sensor_recovered", "sensor_failure"]


def test_the_repeated_failure_defect_raises_it_on_every_failed_read() -> None:
    fw = firmware([D.SENSOR_FAILURE_REPEATED])
    failed_reads_after_the_timeout(fw, 3)
    assert alert_codes(fw) == ["sensor_failure"] * 3


@pytest.mark.parametrize(("t", "h", "p"), [(-45.0, 45.0, 1013.25), (90.0, 45.0, 1013.25), (22.0, 45.0, 280.0), (22.0, 45.0, 1120.0)])
def test_out_of_range_values_are_withheld_with_an_alert(t: float, h: float, p: float) -> None:
    fw = firmware()
    fw._on_reading(t, h, p)
    assert readings(fw) == []
    assert alert_codes(fw) == ["sensor_out_of_range"]


def test_the_out_of_range_defect_publishes_them_without_an_alert() -> None:
    fw = firmware([D.OUT_OF_RANGE_PUBLISHED])
    fw._on_reading(90.0, 45.0, 1013.25)
    assert [r["temperature_c"] for r in readings(fw)] == [90.0]
    assert alert_codes(fw) == []


def test_the_measurement_period_waits_for_its_tick_not_a_whole_interval() -> None:
    """A fixed rate (the firmware's ticker): with the next tick 0.6 s away (a read took
    0.4 s of a 1 s interval) it waits 0.6 s, so slow reads and late wake-ups on a loaded
    host do not stretch the period."""
    fw = firmware()
    fw.config = DeviceConfig(measurement_interval_s=1)
    fw.hang = set()
    fw.program_task = None
    waits: list[float] = []

    async def record(task: str, seconds: float) -> None:
        waits.append(seconds)

    fw._wait = record  # type: ignore[method-assign]
    asyncio.run(fw._sensor_wait(time.monotonic() + 0.6))
    asyncio.run(fw._sensor_wait())  # no read to account for (the init retries): a whole interval
    assert 0.5 < waits[0] <= 0.6 and waits[1] == 1.0
