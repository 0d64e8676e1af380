"""The reference firmware model: the environmental monitor of DEVICE_CONTRACT.md.

Asyncio tasks mirroring the seed firmware's embassy tasks — wifi, mqtt, sensor, health,
metrics, ota, programs — plus the task watchdog. Every wait is a timer or an event; an
idle device costs nothing. Which defects are injected comes from the image's behaviour
record, so flashing (or OTA-ing) another image really changes what runs here.

This module only wires one boot together: each task is its own module in
``hil.sim.firmware.tasks``, all of them sharing one ``tasks.shared.Firmware``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hil.device import defects as D
from hil.images.app import BehaviourRecord
from hil.sim.app import AppContext, AppModel, IdleApp
from hil.sim.firmware.rig import RigPeripherals
from hil.sim.firmware.tasks.boot import boot
from hil.sim.firmware.tasks.commands import CommandHandler
from hil.sim.firmware.tasks.config_update import ConfigHandler
from hil.sim.firmware.tasks.health import HealthTask, MetricsTask
from hil.sim.firmware.tasks.mqtt import Handlers, MqttTask
from hil.sim.firmware.tasks.ota_update import OtaTask
from hil.sim.firmware.tasks.program_runner import ProgramRunner
from hil.sim.firmware.tasks.sensor import SensorTask
from hil.sim.firmware.tasks.shared import Firmware
from hil.sim.firmware.tasks.wifi import WifiTask

MODEL_NAME = "reference"


def firmware_factory(peripherals: RigPeripherals | None) -> Any:
    """The AppFactory of a board: the reference model for images that name it."""

    def make(behaviour: BehaviourRecord | None) -> AppModel:
        if behaviour is None or behaviour.model != MODEL_NAME:
            return IdleApp()
        return ReferenceFirmware(behaviour, peripherals)

    return make


class ReferenceFirmware:
    """One boot of the reference firmware: its shared state (``fw``) and its tasks."""

    def __init__(self, behaviour: BehaviourRecord, peripherals: RigPeripherals | None) -> None:
        self.fw = fw = Firmware(behaviour, peripherals)
        self.wifi = WifiTask(fw)
        self.sensor = SensorTask(fw)
        self.health = HealthTask(fw)
        self.metrics = MetricsTask(fw)
        self.ota = OtaTask(fw)
        self.commands = CommandHandler(fw, self.health)
        self.config_updates = ConfigHandler(fw)
        self.programs = ProgramRunner(fw)
        self.mqtt = MqttTask(
            fw,
            Handlers(
                command=self.commands.on_command,
                config=self.config_updates.on_config,
                ota=self.ota.on_update,
                program=self.programs.on_deploy,
            ),
        )

    async def run(self, ctx: AppContext) -> None:
        if not await boot(self.fw, ctx):
            return
        try:
            await self._run_tasks()
        except* _DeepSleep:
            self.fw.log("I", "app", "entering deep sleep until the next power-on")
            await asyncio.Event().wait()

    async def _run_tasks(self) -> None:
        fw = self.fw
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._sleep_guard())
            if D.WATCHDOG_DISABLED not in fw.defects:
                tasks.create_task(fw.watchdog.run())
            tasks.create_task(self.wifi.run())
            tasks.create_task(self.mqtt.run())
            if not fw.safe_mode:
                tasks.create_task(self.sensor.run())
            else:
                fw.log("W", "app", "safe mode: sensor task not started")
            tasks.create_task(self.health.run())
            tasks.create_task(self.metrics.run())
            tasks.create_task(self.ota.run())

    async def _sleep_guard(self) -> None:
        await self.fw.deep_sleep.wait()
        raise _DeepSleep


class _DeepSleep(Exception):
    """Raised inside the task group to stop every task of this boot."""
