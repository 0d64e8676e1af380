"""The boundary between the virtual chip and the firmware that runs on it.

The board boots an image the way the ROM and bootloader do, then hands an ``AppContext``
to the firmware model chosen by the image's behaviour record. The context is the app's
whole world: the UART, the flash, what it was booted from, and the ways a real app
leaves (``esp_restart``, a panic, a watchdog). Models are asyncio coroutines so that an
idle device costs nothing: they wait on timers and events, never poll.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from hil.images.app import AppImage, BehaviourRecord
from hil.images.partitions import Partition, PartitionTable
from hil.sim.flash import SpiFlash
from hil.sim.profiles import DEFAULT, BoardProfile
from hil.sim.resets import ResetCause
from hil.sim.sockets import ChipSockets


@dataclass(frozen=True)
class AppContext:
    """What the firmware model gets from the chip it runs on."""

    flash: SpiFlash
    table: PartitionTable
    running: Partition
    image: AppImage
    behaviour: BehaviourRecord | None
    reset_cause: ResetCause
    mac: bytes
    log: Callable[[str, str, str], None]
    """ESP-IDF logging: log(level letter, tag, message) → ``L (ms) tag: message``."""
    write: Callable[[bytes], None]
    """Raw UART TX, for output that is not a log line (panic dumps)."""
    restart: Callable[[ResetCause], None]
    """Reset the chip with this cause (esp_restart → RTC_SW_CPU_RST + hint, watchdog ...)."""
    uptime_ms: Callable[[], int]
    rtc_memory: dict[str, Any] = field(default_factory=dict)
    """RTC slow memory: survives software and watchdog resets, lost at power-on."""
    peripherals: Any = None
    """The rig around the chip (sensor bus, access point), when the board has one."""
    profile: BoardProfile = DEFAULT
    """How long the radio and the network take on this board (`hil.sim.profiles`)."""
    jitter: random.Random = field(default_factory=lambda: random.Random(0))
    """Draws the profile's delays for this boot (seeded by the board's MAC and boot count)."""
    sockets: ChipSockets | None = None
    """The chip's TCP connections: the firmware hands its broker connection to it, so a
    silent board can abandon it when the chip stops (`hil.sim.sockets`)."""


class AppModel(Protocol):
    """A firmware model: runs until the chip resets (its task is then cancelled)."""

    async def run(self, ctx: AppContext) -> None: ...


AppFactory = Callable[[BehaviourRecord | None], AppModel]


class IdleApp:
    """An app that starts and does nothing: what a blank ``app_main`` does on a chip."""

    async def run(self, ctx: AppContext) -> None:
        await asyncio.Event().wait()


def idle_factory(behaviour: BehaviourRecord | None) -> AppModel:
    return IdleApp()
