"""ESP-IDF's task watchdog, as the firmware model's tasks see it.

Each subscribed task must ``feed`` within the timeout. One asyncio timer sleeps until
the earliest deadline (no polling); when a task misses it, the watchdog prints ESP-IDF's
lines and aborts, which reboots the chip with reset reason TASK_WDT.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable


class TaskWatchdog:
    def __init__(
        self,
        timeout_s: float,
        *,
        log: Callable[[str, str, str], None],
        on_trigger: Callable[[list[str]], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeout_s = timeout_s
        self._log = log
        self._on_trigger = on_trigger
        self._clock = clock
        self._last_fed: dict[str, float] = {}
        self._rearm = asyncio.Event()

    def subscribe(self, task: str) -> None:
        self._last_fed[task] = self._clock()
        self._rearm.set()

    def unsubscribe(self, task: str) -> None:
        self._last_fed.pop(task, None)

    def feed(self, task: str) -> None:
        if task in self._last_fed:
            self._last_fed[task] = self._clock()

    async def run(self) -> None:
        while True:
            if not self._last_fed:
                await self._rearm.wait()
                self._rearm.clear()
                continue
            now = self._clock()
            oldest = min(self._last_fed.values())
            wait = oldest + self.timeout_s - now
            if wait > 0:
                self._rearm.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._rearm.wait(), timeout=wait)
                continue
            late = sorted(t for t, fed in self._last_fed.items() if fed + self.timeout_s <= now)
            self._trigger(late)
            return

    def _trigger(self, late: list[str]) -> None:
        self._log("E", "task_wdt", "Task watchdog got triggered. The following tasks/users did not reset the watchdog in time:")
        for task in late:
            self._log("E", "task_wdt", f" - {task} (CPU 0)")
        self._log("E", "task_wdt", "Tasks currently running:")
        self._log("E", "task_wdt", "CPU 0: IDLE")
        self._log("E", "task_wdt", "Aborting.")
        self._on_trigger(late)
