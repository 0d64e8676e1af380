"""The reference firmware model at host level, for tests of its sensor path: the sensor
task with the state ``boot()`` sets up that ``_on_reading`` and ``_sensor_failed`` use,
online (nothing held back for being offline), its output in ``task.fw.outbox``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from hil.device.settings import DeviceConfig
from hil.images.app import BehaviourRecord
from hil.sim.firmware.reference import MODEL_NAME
from hil.sim.firmware.tasks.outbox import Outbox
from hil.sim.firmware.tasks.sensor import SensorTask
from hil.sim.firmware.tasks.shared import Firmware


def sensor_task(device_id: str, config: DeviceConfig, defects: Sequence[str] = ()) -> SensorTask:
    fw = Firmware(BehaviourRecord(MODEL_NAME, tuple(defects)), peripherals=None)
    fw.config = config
    fw.device_id = device_id
    fw.boot_count = 1
    fw.seq = 0
    fw.outbox = Outbox()
    fw.connected = asyncio.Event()
    fw.connected.set()
    fw.sensor_ok = asyncio.Event()
    fw.last_reading = None
    fw.last_reading_at = None
    fw.boot_time = time.monotonic()
    fw.sensor_failure_raised = False
    fw.log = lambda level, tag, message: None
    return SensorTask(fw)
