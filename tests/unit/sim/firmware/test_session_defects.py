"""The firmware model's §3 defects that are not just a flag handed to aiomqtt, against the
reference behaviour they break: the backlog's order (``backlog_newest_first``) and the
backoff's cap (``backoff_cap_60s``). The CONNECT/SUBSCRIBE/QoS defects are shown on a rig,
through the broker's log (tests/hil/test_mqtt_session.py)."""

from __future__ import annotations

import asyncio
import json
import random

from hil.device import contract
from hil.sim.firmware.mqtt_link import Backoff
from hil.sim.firmware.tasks.outbox import Outbox


def drain(outbox: Outbox) -> list[int]:
    """Send everything as the model's drain loop does: peek, publish, then remove that entry."""
    sent = []
    while (head := outbox.peek()) is not None:
        queue, entry = head
        sent.append(json.loads(entry[1])["seq"])
        if queue[0] is entry:
            queue.popleft()
        elif queue[-1] is entry:
            queue.pop()
    return sent


def test_the_backlog_goes_oldest_first_and_the_defect_reverses_it() -> None:
    async def scenario() -> tuple[list[int], list[int]]:
        runs = []
        for newest_first in (False, True):
            outbox = Outbox(newest_first=newest_first)
            for seq in range(5):
                outbox.put_reading("esp32/d/sensors", json.dumps({"seq": seq}).encode())
            runs.append(drain(outbox))
        return runs[0], runs[1]

    reference, defect = asyncio.run(scenario())
    assert reference == [0, 1, 2, 3, 4]
    assert defect == [4, 3, 2, 1, 0]


def nominal_delays(backoff: Backoff, n: int) -> list[float]:
    """Delays with the jitter divided out (the rng draws are known: a fixed seed)."""
    rng = random.Random(7)
    jitters = [1 + rng.uniform(-contract.RECONNECT_JITTER, contract.RECONNECT_JITTER) for _ in range(n)]
    return [round(backoff.next_delay() / j, 6) for j in jitters]


def test_the_backoff_doubles_to_the_contracts_cap_and_the_defect_to_60_s() -> None:
    first, cap = contract.RECONNECT_BACKOFF_S
    assert nominal_delays(Backoff(random.Random(7)), 8) == [1, 2, 4, 8, 16, cap, cap, cap]
    assert first == 1
    assert nominal_delays(Backoff(random.Random(7), cap_s=60.0), 8) == [1, 2, 4, 8, 16, 32, 60, 60]
