"""Connectivity: outages of the broker and the Wi-Fi, with no reading lost."""

from __future__ import annotations

import pytest

from hil import contract

pytestmark = [pytest.mark.hil, pytest.mark.gate_e2e]


def gapless(mqtt, topic: str, since: int) -> list[int]:
    seqs = sorted({m.json()["seq"] for m in mqtt.collect(topic, since=since)})
    missing = sorted(set(range(seqs[0], seqs[-1] + 1)) - set(seqs))
    assert not missing, f"readings lost: seq {missing}"
    return seqs


@pytest.mark.guards("offline_drop")
def test_a_broker_restart_loses_no_reading(dut, mqtt, broker) -> None:
    topic = contract.sensors_topic(dut.device_id)
    mark = mqtt.mark()
    mqtt.wait_for(topic, since=mark, timeout=15)
    broker.stop()
    dut.console.expect(contract.MQTT_DISCONNECTED, timeout=30)
    dut.console.expect(contract.MQTT_DISCONNECTED, timeout=30)  # a failed retry: time offline
    broker.start()
    after = mqtt.mark()
    mqtt.wait_for(topic, since=after, count=3, timeout=60)
    gapless(mqtt, topic, mark)


@pytest.mark.requires("wifi_control")
@pytest.mark.guards("no_lwt")
def test_wifi_loss_fires_the_will_and_the_device_returns(dut, mqtt, wifi) -> None:
    status = contract.status_topic(dut.device_id)
    mark = mqtt.mark()
    wifi.ap(up=False)
    will = mqtt.wait_for(status, lambda m: m.json()["state"] == "offline", since=mark, timeout=40)[0]
    assert will.json() == {"state": "offline"}
    wifi.ap(up=True)
    back = mqtt.wait_for(status, lambda m: m.json()["state"] == "online", since=mark, timeout=60)[0].json()
    assert back["boot_count"] >= 1
