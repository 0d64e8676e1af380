"""Provisioning (DEVICE_CONTRACT.md §1): a blank device waits to be provisioned, the NVS
image flashed at 0x9000 gives it its identity, and an erase and reflash gives the same one
back. Every test rewrites the device's flash; the session's firmware and provisioning are
put back after each."""

from __future__ import annotations

import dataclasses
import re

import pytest

from hil import contract
from hil.console import ConsoleTimeout

pytestmark = [pytest.mark.hil, pytest.mark.gate_e2e, pytest.mark.destructive]

# What the ROM prints when the flash holds no bootloader (an erased chip), as on a real C3.
BLANK_FLASH = re.compile(r"invalid header: 0xffffffff")
# How long a waiting device must stay up: a boot loop restarts well within it.
NO_REBOOT_WINDOW_S = 8


def online(mqtt, device: str, since: int, timeout: float = 60) -> dict:
    return mqtt.wait_for(
        contract.status_topic(device), lambda m: m.payload and m.json()["state"] == "online", since=since, timeout=timeout
    )[0].json()


@pytest.fixture
def provision(restore_firmware, hil_session):
    """Flash a provisioning of the test's own (None: an erased NVS partition) and reset;
    the session's provisioning is restored after the test."""
    return hil_session.reprovision


@pytest.fixture
def another_identity(dut, hil_session, broker, mqtt):
    """The session's provisioning under another device id, with that id's own broker
    account. After the test: the session's provisioning back, the other id's retained
    status cleared."""
    other = f"{dut.device_id}-b"
    creds = broker.add_device(other)
    broker.restart()  # mosquitto reads new accounts at start
    prov = dataclasses.replace(
        hil_session.device_provisioning(), device_id=other, mqtt_user=creds.username, mqtt_pass=creds.password
    )
    try:
        yield prov
    finally:
        hil_session.restore()
        mqtt.publish(contract.status_topic(other), b"", retain=True)


@pytest.mark.guards("unprovisioned_reboot")
def test_a_blank_device_says_it_is_not_provisioned_and_waits(provision, dut, mqtt, console) -> None:
    mark = mqtt.mark()
    since = provision(None)
    console.expect(contract.NOT_PROVISIONED, timeout=30, since=since)
    try:  # a reboot prints the ROM banner
        reboot = console.expect(contract.ROM_RESET, timeout=NO_REBOOT_WINDOW_S)
    except ConsoleTimeout:
        pass
    else:
        pytest.fail(f"it restarted ({reboot[0]}) instead of waiting to be provisioned")
    said = [line for line in console.lines(since) if contract.NOT_PROVISIONED.search(line)]
    assert len(said) == 1, f"'not provisioned' {len(said)} times: the device restarted"
    assert [m for m in mqtt.collect(contract.status_topic(dut.device_id), since=mark) if m.json()["state"] == "online"] == []


def test_provisioning_a_blank_device_brings_it_online(provision, hil_session, dut, mqtt, console) -> None:
    console.expect(contract.NOT_PROVISIONED, timeout=30, since=provision(None))
    mark = mqtt.mark()
    since = provision(hil_session.device_provisioning())
    console.expect(contract.MQTT_CONNECTED, timeout=60, since=since)
    assert online(mqtt, dut.device_id, mark)["version"] == dut.version
    reading = mqtt.wait_for(contract.sensors_topic(dut.device_id), since=mark, timeout=30)[0].json()
    assert reading["device_id"] == dut.device_id


def test_reprovisioning_with_another_device_id_changes_its_identity(another_identity, hil_session, dut, mqtt) -> None:
    other = another_identity.device_id
    mark = mqtt.mark()
    hil_session.reprovision(another_identity)
    assert online(mqtt, other, mark)["version"] == dut.version
    readings = mqtt.wait_for(contract.sensors_topic(other), since=mark, count=2, timeout=30)
    assert {r.json()["device_id"] for r in readings} == {other}
    # It listens on its new topics: a command there is answered there.
    mqtt.publish(contract.command_topic(other), {"cmd": "report"})
    ack = mqtt.wait_for(contract.command_ack_topic(other), since=mark, timeout=15)[0].json()
    assert ack == {"cmd": "report", "ok": True}
    # And nothing more under its old identity.
    later = mqtt.mark()
    mqtt.wait_for(contract.sensors_topic(other), since=later, count=2, timeout=30)
    assert mqtt.collect(contract.sensors_topic(dut.device_id), since=later) == []


def test_after_an_erase_and_reflash_the_device_is_back_with_the_same_identity(
    restore_firmware, hil_session, mqtt, console
) -> None:
    dut = restore_firmware
    console.expect(BLANK_FLASH, timeout=30, since=hil_session.erase_flash())
    mark = mqtt.mark()
    hil_session.restore()  # the session's flashing: firmware and provisioning, all written again
    assert online(mqtt, dut.device_id, mark)["version"] == dut.version
    reading = mqtt.wait_for(contract.sensors_topic(dut.device_id), since=mark, timeout=30)[0].json()
    assert reading["device_id"] == dut.device_id
