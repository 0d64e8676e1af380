"""What waits to be published while the broker link is down or busy (DEVICE_CONTRACT §3)."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

READING_QUEUE = 512
OTHER_QUEUE = 64


@dataclass
class Outbox:
    """What waits to be published: readings (bounded, oldest dropped and counted) first."""

    readings: deque[tuple[str, bytes, bool]] = field(default_factory=lambda: deque(maxlen=READING_QUEUE))
    other: deque[tuple[str, bytes, bool]] = field(default_factory=lambda: deque(maxlen=OTHER_QUEUE))
    dropped_readings: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    newest_first: bool = False
    """The ``backlog_newest_first`` defect: readings are taken from the end (a stack)."""

    def put_reading(self, topic: str, payload: bytes) -> None:
        if len(self.readings) == self.readings.maxlen:
            self.dropped_readings += 1
        self.readings.append((topic, payload, False))
        self.ready.set()

    def put(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.other.append((topic, payload, retain))
        self.ready.set()

    def peek(self) -> tuple[deque[tuple[str, bytes, bool]], tuple[str, bytes, bool]] | None:
        for queue in (self.other, self.readings):
            if queue:
                return queue, queue[-1] if self.newest_first and queue is self.readings else queue[0]
        return None
