"""The firmware model's offline queue (DEVICE_CONTRACT §3): readings wait in order, up to
512; past that the oldest go, counted in ``dropped_readings``, so a loss is visible."""

from __future__ import annotations

import asyncio
import json

from hil.sim.firmware.tasks.outbox import READING_QUEUE, Outbox


def reading(seq: int) -> bytes:
    return json.dumps({"seq": seq}).encode()


def test_readings_queue_in_order_and_overflow_drops_the_oldest_counted() -> None:
    async def scenario() -> None:
        outbox = Outbox()
        for seq in range(READING_QUEUE + 88):
            outbox.put_reading("esp32/d/sensors", reading(seq))
        outbox.put("esp32/d/health", b"{}")
        assert outbox.dropped_readings == 88
        assert len(outbox.readings) == READING_QUEUE == 512
        # Other messages go first; the readings that remain are the newest, in order.
        sent = []
        while (head := outbox.peek()) is not None:
            queue, (topic, payload, _) = head
            queue.popleft()
            sent.append((topic, payload))
        assert sent[0] == ("esp32/d/health", b"{}")
        seqs = [json.loads(p)["seq"] for t, p in sent[1:]]
        assert seqs == list(range(88, READING_QUEUE + 88))
        assert outbox.ready.is_set()

    asyncio.run(scenario())


def test_no_drop_is_counted_below_the_limit() -> None:
    async def scenario() -> None:
        outbox = Outbox()
        for seq in range(READING_QUEUE):
            outbox.put_reading("esp32/d/sensors", reading(seq))
        assert outbox.dropped_readings == 0 and len(outbox.readings) == READING_QUEUE

    asyncio.run(scenario())
