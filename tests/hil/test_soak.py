"""Soak: what only a long outage shows. Off by default (HIL_SOAK=1 runs it): at the
contract's fastest measurement interval (1 s) filling the 512-reading offline queue takes
over eight minutes, longer than the whole suite may.

DEVICE_CONTRACT.md §3: while offline, readings queue in RAM (up to 512) and are sent in
order on reconnect; overflow drops the oldest and counts them in `dropped_readings`, so a
loss is always visible, never silent.
"""

from __future__ import annotations

import os

import pytest

from hil.device import contract
from tests.hil.provisioned import setting

pytestmark = [
    pytest.mark.hil,
    pytest.mark.slow,
    pytest.mark.skipif(not os.environ.get("HIL_SOAK"), reason="a soak test (over 8 minutes): run with HIL_SOAK=1"),
]

OVERFLOW = 8
"""Readings past the queue's length taken while offline: that many must be dropped."""


@pytest.mark.requires("network_faults")
@pytest.mark.clause("C3.10", "C3.11", "C4.3")
def test_an_offline_queue_overflow_drops_the_oldest_and_counts_them(dut, mqtt, network, console, hil_session) -> None:
    did, interval = dut.device_id, setting(hil_session, "measurement_interval_s")
    topic = contract.sensors_topic(did)
    mark = mqtt.mark()
    first = mqtt.wait_for(topic, since=mark, timeout=15 + 2 * interval)[0].json()
    report = mqtt.mark()
    mqtt.publish(contract.command_topic(did), {"cmd": "report"})
    dropped_before = mqtt.wait_for(contract.health_topic(did), since=report, timeout=30)[0].json()["dropped_readings"]
    network.partition(3600.0)
    network.reset_all()
    # Offline long enough for the queue's length plus OVERFLOW readings, measured by the
    # device's own announced retry delays (each disconnect line says how long until the next).
    wanted = (contract.OFFLINE_QUEUE_LENGTH + OVERFLOW + 2) * interval
    offline = 0.0
    while offline < wanted:
        lost = console.expect(contract.MQTT_DISCONNECTED, timeout=2 * contract.RECONNECT_BACKOFF_S[1] + 15)
        offline += int(lost["retry_ms"]) / 1000
    back = mqtt.mark()
    network.heal()
    console.expect(contract.MQTT_CONNECTED, timeout=2 * contract.RECONNECT_BACKOFF_S[1] + 15)
    # The whole backlog, then live readings again.
    mqtt.wait_for(topic, since=back, count=contract.OFFLINE_QUEUE_LENGTH + 3, timeout=120)
    received = [m.json()["seq"] for m in mqtt.collect(topic, since=mark) if m.json()["boot_count"] == first["boot_count"]]
    assert received == sorted(received), "readings arrived out of order"
    missing = sorted(set(range(first["seq"], received[-1] + 1)) - set(received))
    # What was lost is one block, the oldest of the outage: everything after it arrived.
    assert len(missing) >= OVERFLOW, (
        f"after {offline:.0f} s offline only {len(missing)} readings are missing: the queue is longer than "
        f"{contract.OFFLINE_QUEUE_LENGTH}, or nothing was dropped"
    )
    assert missing == list(range(missing[0], missing[-1] + 1)), f"the dropped readings are not one block: {missing}"
    replayed = [seq for seq in received if seq > missing[-1]]
    assert replayed[: contract.OFFLINE_QUEUE_LENGTH] == list(range(missing[-1] + 1, missing[-1] + 1 + contract.OFFLINE_QUEUE_LENGTH)), (
        f"the newest {contract.OFFLINE_QUEUE_LENGTH} readings of the outage did not all arrive after the dropped block"
    )
    report = mqtt.mark()
    mqtt.publish(contract.command_topic(did), {"cmd": "report"})
    health = mqtt.wait_for(contract.health_topic(did), since=report, timeout=30)[0].json()
    assert health["dropped_readings"] - dropped_before == len(missing), (
        f"{len(missing)} readings never arrived (seq {missing[0]}..{missing[-1]}) but dropped_readings grew by "
        f"{health['dropped_readings'] - dropped_before}: a loss must be counted exactly"
    )
