"""What the tasks of one boot share: its state, and what every task does with it.

Publishing (through the outbox), logging mirrored to the broker, waiting while feeding
the task watchdog, NVS writes, and the ways a boot ends (restart, panic). Each task
module holds a ``Firmware`` and nothing else of the others' (composition: the tasks
never call each other except where ``reference.py`` hands one to another).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from typing import Any

from hil.device import contract
from hil.device import defects as D
from hil.device.settings import DeviceConfig, Provisioning
from hil.images.app import BehaviourRecord
from hil.images.nvs import update_nvs
from hil.images.partitions import Partition
from hil.sim.app import AppContext
from hil.sim.firmware.rig import RigPeripherals
from hil.sim.firmware.tasks.outbox import Outbox
from hil.sim.firmware.watchdog import TaskWatchdog
from hil.sim.profiles import DEFAULT, BoardProfile
from hil.sim.resets import ResetCause, RomResetCode
from hil.sim.sockets import ChipSockets

STATS_NAMESPACE = "stats"


class Firmware:
    """One boot of the reference firmware: the behaviour record it runs, and (once
    ``boot.boot`` has set it up) everything its tasks share."""

    # Set up by boot.boot, in this order.
    ctx: AppContext
    log: Callable[[str, str, str], None]
    version: str
    reset_reason: str
    rng: random.Random
    nvs_part: Partition
    prov: Provisioning
    device_id: str
    config: DeviceConfig
    boot_count: int
    restart_count: int
    rollback_seq: int
    safe_mode: bool
    outbox: Outbox
    connected: asyncio.Event
    wifi_up: asyncio.Event
    wifi_down: asyncio.Event
    sensor_ok: asyncio.Event
    last_reading: dict[str, float] | None
    last_reading_at: float | None
    seq: int
    error_count: int
    boot_time: float
    sensor_failure_raised: bool
    hang: set[str]
    program_task: asyncio.Task[None] | None
    led: bool
    deep_sleep: asyncio.Event
    background: set[asyncio.Future[Any]]
    watchdog: TaskWatchdog
    pending_verify: bool
    read_time_ms: float
    """Set by the sensor task after its first good read; the metrics read it."""
    joined_rssi: int | None = None
    """The AP's RSSI when the station last joined (the connect event's), set by the wifi task."""

    def __init__(self, behaviour: BehaviourRecord, peripherals: RigPeripherals | None) -> None:
        self.behaviour = behaviour
        self.defects = frozenset(behaviour.defects)
        self.test_hooks = bool(behaviour.params.get("test_hooks", False))
        self.rig = peripherals
        # The board's physics (`hil.sim.profiles`), from the chip at boot: how long the radio
        # and the network take, and the socket table a silent board abandons connections in.
        self.profile: BoardProfile = DEFAULT
        self.jitter = random.Random(0)
        self.sockets: ChipSockets | None = None

    def spawn(self, work: Any) -> None:
        """Run a handler in the background, keeping a reference until it is done."""
        task = asyncio.ensure_future(work)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    # -- NVS ----------------------------------------------------------------------
    def nvs_image(self) -> bytes:
        return self.ctx.flash.read(self.nvs_part.offset, self.nvs_part.size)

    def write_nvs(self, image: bytes) -> None:
        # NOR flash: the partition is erased before the new image goes in.
        self.ctx.flash.erase(self.nvs_part.offset, self.nvs_part.size)
        self.ctx.flash.write(self.nvs_part.offset, image)

    def store(self, namespace: str, values: dict[str, Any]) -> None:
        self.write_nvs(update_nvs(self.nvs_image(), namespace, values))

    # -- leaving ------------------------------------------------------------------
    def restart(self, hint: str) -> None:
        self.ctx.restart(ResetCause(RomResetCode.RTC_SW_CPU_RST, hint=hint))

    def panic(self, cause: str) -> None:
        write = self.ctx.write
        write(f"Guru Meditation Error: Core  0 panic'ed ({cause}). Exception was unhandled.\r\n\r\n".encode())
        write(b"Core  0 register dump:\r\nMEPC    : 0x42064418  RA      : 0x42061946  SP      : 0x3fccc460  GP      : 0x3fc92200\r\n\r\n")
        write(b"ELF file SHA256: 7c88102a732dcb9b\r\n\r\nRebooting...\r\n")
        self.restart("PANIC")

    # -- the task watchdog --------------------------------------------------------
    def watchdog_fired(self, late: list[str]) -> None:
        self.restart("TASK_WDT")

    async def feed_while(self, task: str) -> None:
        while True:
            await self.wait(task, self.watchdog.timeout_s)

    async def wait(self, task: str, seconds: float) -> None:
        """Sleep ``seconds`` while still feeding the watchdog at least twice per timeout."""
        deadline = time.monotonic() + max(seconds, 0.1)
        while True:
            if task not in self.hang:
                self.watchdog.feed(task)
            left = deadline - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(left, self.watchdog.timeout_s / 2))

    async def flushed(self, timeout: float) -> None:
        """Give the outbox a chance to go out before a restart (as the C firmware waits
        for its PUBACKs), without waiting forever on a dead link."""
        deadline = time.monotonic() + timeout
        while self.outbox.peek() is not None and time.monotonic() < deadline and self.connected.is_set():
            await asyncio.sleep(0.05)

    # -- publishing ---------------------------------------------------------------
    def publish(self, topic: str, payload: dict[str, Any], *, retain: bool = False) -> None:
        data = json.dumps(payload).encode()
        if not self.connected.is_set() and topic.endswith("/health"):
            return  # a heartbeat nobody hears is not queued
        self.outbox.put(topic, data, retain=retain)

    def alert(self, level: str, code: str, message: str) -> None:
        stamp = time.time()
        if D.ALERTS_TIMESTAMP_UPTIME in self.defects:
            stamp = round(time.monotonic() - self.boot_time, 1)  # the defect: esp_timer's uptime
        self.publish(
            contract.alerts_topic(self.device_id),
            {"level": level, "code": code, "message": message, "device_id": self.device_id, "timestamp": stamp},
        )

    def log_mirrored(self, level: str, tag: str, message: str) -> None:
        self.log(level, tag, message)
        mirrored = ("E",) if D.WARNINGS_NOT_MIRRORED in self.defects else ("W", "E")
        if level in mirrored and self.connected.is_set():
            name = {"W": "warning", "E": "error"}[level]
            stamp = time.time()
            if D.LOGS_TIMESTAMP_SINCE_BOOT in self.defects:
                stamp = int((time.monotonic() - self.boot_time) * 1000)  # the defect: esp_log_timestamp()
            self.outbox.put(
                contract.logs_topic(self.device_id),
                json.dumps({"level": name, "tag": tag, "message": message, "timestamp": stamp}).encode(),
            )
