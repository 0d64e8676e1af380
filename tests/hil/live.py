"""When a device's readings are live again: its backlog is all in and the measurement
cadence is back, so a test can tell a reading measured before a change from one after."""

from __future__ import annotations

import itertools
import time

from hil.device.periodic import DEFAULT_TOLERANCE


def wait_until_live(mqtt, topic: str, since: int, interval: float, timeout: float = 60) -> None:
    """Wait until the backlog sent on reconnect is all in: the queue goes out in order, in one
    burst, so once two readings in a row have each come at least half an interval
    (`Tolerance.min_ratio`) after the one before, the live cadence is back. A reading heard
    again (a copy a healed path delivers late, then the resend) counts at its first arrival.
    Until then a check of the backlog would judge part of it, and the rest would land in the
    next test's window."""
    deadline = time.monotonic() + timeout
    count = 3
    while True:
        got = mqtt.wait_for(topic, since=since, count=count, timeout=max(deadline - time.monotonic(), 0.01))
        arrived: dict[int, float] = {}
        for message in got:
            arrived.setdefault(message.json()["seq"], message.at)
        times = list(arrived.values())
        if len(times) >= 3 and all(b - a >= DEFAULT_TOLERANCE.min_ratio * interval for a, b in itertools.pairwise(times[-3:])):
            return
        count += 1
