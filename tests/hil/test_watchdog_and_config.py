"""Watchdog resets and remote configuration, through MQTT and the serial port only."""

from __future__ import annotations

import json

import pytest

from hil import contract

pytestmark = [pytest.mark.hil, pytest.mark.gate_e2e]


def online_after(mqtt, device: str, mark: int, timeout: float = 40) -> dict:
    return mqtt.wait_for(
        contract.status_topic(device), lambda m: m.json().get("state") == "online", since=mark, timeout=timeout
    )[0].json()


@pytest.mark.requires("test_hooks")
@pytest.mark.guards("no_watchdog")
def test_a_hung_task_ends_in_a_task_watchdog_reset(dut, mqtt, console) -> None:
    # The session provisions a watchdog timeout of a few seconds (see SessionOptions).
    mark = mqtt.mark()
    mqtt.publish(contract.command_topic(dut.device_id), {"cmd": "hang", "task": "sensor"})
    console.expect(contract.TASK_WDT, timeout=20)  # four watchdog periods
    status = online_after(mqtt, dut.device_id, mark)
    assert status["reset_reason"] == "TASK_WDT"
    health = mqtt.wait_for(
        contract.health_topic(dut.device_id), lambda m: m.json()["reset_reason"] == "TASK_WDT", since=mark, timeout=30
    )[0].json()
    assert not contract.validate_payload("health", health)


@pytest.mark.parametrize(
    "update",
    [
        pytest.param({"measurement_interval_s": 0}, id="zero-interval", marks=pytest.mark.guards("config_unvalidated")),
        pytest.param({"watchdog_timeout_s": "5"}, id="string"),
        pytest.param({"log_level": "chatty"}, id="bad-enum"),
        pytest.param({"colour": "red"}, id="unknown-key"),
    ],
)
def test_an_invalid_config_is_rejected_and_changes_nothing(dut, mqtt, update) -> None:
    mark = mqtt.mark()
    mqtt.publish(contract.config_update_topic(dut.device_id), json.dumps(update).encode())
    status = mqtt.wait_for(contract.config_status_topic(dut.device_id), since=mark, timeout=10)[0].json()
    assert status["ok"] is False, f"accepted {update}"
    mqtt.wait_for(contract.sensors_topic(dut.device_id), since=mqtt.mark(), count=2, timeout=10)
    restarts = [m for m in mqtt.collect(contract.status_topic(dut.device_id), since=mark) if m.json()["state"] == "online"]
    assert restarts == [], "the device restarted on a rejected config"
