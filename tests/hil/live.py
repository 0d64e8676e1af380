"""When a device's readings are live again: its backlog is all in and the measurement
cadence is back, so a test can tell a reading measured before a change from one after."""

from __future__ import annotations

import itertools
import time

from hil.device.periodic import DEFAULT_TOLERANCE, queued_before_connect, wait_timeout


def wait_until_live(mqtt, topic: str, since: int, interval: float, timeout: float = 60, key: str = "seq") -> None:
    """Wait until the backlog sent on reconnect is all in: the queue goes out in order, in one
    burst, so once two readings in a row have each come at least half an interval
    (`Tolerance.min_ratio`) after the one before, the live cadence is back. A reading heard
    again (a copy a healed path delivers late, then the resend) counts at its first arrival.
    Until then a check of the backlog would judge part of it, and the rest would land in the
    next test's window.

    The same holds after every boot: what the device measures between its start and its
    broker connection (seconds on a real board: Wi-Fi join, DHCP, TLS) goes out in a burst
    right after `online`, so a check of the receive-clock spacing starts once this returns.
    ``key``: the payload field that tells two messages apart (``seq`` for readings; the
    device's ``timestamp`` for metrics, ``uptime_s`` for health)."""
    deadline = time.monotonic() + timeout
    count = 3
    while True:
        got = mqtt.wait_for(topic, since=since, count=count, timeout=max(deadline - time.monotonic(), 0.01))
        arrived: dict[int, float] = {}
        for message in got:
            arrived.setdefault(message.json()[key], message.at)
        times = list(arrived.values())
        if len(times) >= 3 and all(b - a >= DEFAULT_TOLERANCE.min_ratio * interval for a, b in itertools.pairwise(times[-3:])):
            return
        count += 1


def broker_uses_tls(hil_session) -> bool:
    """Whether the device's broker connection carries a TLS handshake (``mqtts://``)."""
    return hil_session.device_provisioning().mqtt_uri.startswith("mqtts://")


def boot_to_online_s(hil_session) -> float:
    """The longest the rig declares from power-on or a reset to the device's ``online``
    (`hil.rig.model.BoardTiming`: its boot, Wi-Fi join, DHCP, the broker connection and
    a TLS handshake if the broker asks for one)."""
    return hil_session.rig.timing.boot_to_online_s(tls=broker_uses_tls(hil_session))


def wait_for_live_run(
    mqtt, hil_session, topic: str, since: int, interval: float, count: int, predicate=lambda m: True, clock: str = "timestamp"
):
    """The messages of one boot on ``topic`` since ``since`` (those ``predicate`` takes)
    and how many of the first were held back for the broker connection
    (`queued_before_connect`, by the payload's device time ``clock``: ``timestamp``, or
    ``uptime_s`` for health); waits until ``count`` have come after those. The receive
    clock judges ``messages[held:]``. Bounded by the rig's declared boot to online (the
    held-back ones go out on connect) and ``count`` periods at the worst spacing the
    tolerance allows; on a board that connects at once this is the wait for ``count``."""
    deadline = time.monotonic() + boot_to_online_s(hil_session) + wait_timeout(interval, count)
    wanted = count
    while True:
        got = mqtt.wait_for(topic, predicate, since=since, count=wanted, timeout=max(deadline - time.monotonic(), 0.01))
        held = queued_before_connect([m.json()[clock] for m in got], [m.at for m in got])
        if len(got) - held >= count:
            return got[: held + count], held
        wanted = held + count
