"""Provisioning (DEVICE_CONTRACT.md §1): a blank device waits to be provisioned, the NVS
image flashed at 0x9000 gives it its identity, and an erase and reflash gives the same one
back. Every test rewrites the device's flash; the session's firmware and provisioning are
put back after each."""

from __future__ import annotations

import dataclasses
import re

import pytest

from hil.device import contract
from hil.device.periodic import wait_timeout
from hil.link.console import ConsoleTimeout
from hil.services.mqtt import MqttObserver
from hil.session import RigSession
from tests.hil.provisioned import setting

pytestmark = [pytest.mark.hil, pytest.mark.gate_e2e, pytest.mark.destructive]

# What the ROM prints when the flash holds no bootloader (an erased chip), as on a real C3.
BLANK_FLASH = re.compile(r"invalid header: 0xffffffff")
# The two-OTA layout of the contract (§1): label, offset, size; on 4 MB of flash.
LAYOUT = [
    ("nvs", 0x9000, 0x4000),
    ("otadata", 0xD000, 0x2000),
    ("phy_init", 0xF000, 0x1000),
    ("factory", 0x10000, 0x100000),
    ("ota_0", 0x110000, 0x100000),
    ("ota_1", 0x210000, 0x100000),
]
# The 2nd-stage bootloader's partition table lines (ESP-IDF): "  0 nvs  WiFi data  01 02 00009000 00004000".
PARTITION_LINE = re.compile(r"I \(\d+\) boot:\s+\d+ (?P<label>\S+)\s+.*\s(?P<offset>[0-9a-f]{8}) (?P<size>[0-9a-f]{8})\s*$")
FLASH_SIZE = re.compile(r"SPI Flash Size\s*:\s*(?P<size>\S+)")


def no_reboot_window_s(hil_session) -> float:
    """How long a waiting device must stay up: twice the session's task watchdog timeout,
    so a wait that starves the watchdog, as well as a boot loop (seconds), shows."""
    return 2 * setting(hil_session, "watchdog_timeout_s")


def online(mqtt, device: str, since: int, timeout: float = 60) -> dict:
    return mqtt.wait_for(
        contract.status_topic(device), lambda m: m.payload and m.json()["state"] == "online", since=since, timeout=timeout
    )[0].json()


def first_boot_counts_problem(mqtt: MqttObserver, device: str, since: int, hil_session: RigSession) -> str | None:
    """What is wrong with the counts health reports on the first boot of a device whose
    NVS was just written afresh (nothing counted yet), if anything: C4.4 reads
    `boot_count` as every boot, this one the first, and `restart_count` as the boots
    that were not power-ons, so 0 unless the rig's reset after flashing is not a power-on
    (a USB-JTAG reset reports USB), then 1. Waited for from ``since``, once online: the
    next heartbeat."""
    timeout = wait_timeout(setting(hil_session, "heartbeat_interval_s"), 1)
    health = mqtt.wait_for(contract.health_topic(device), since=since, timeout=timeout)[0].json()
    restarts = 0 if health["reset_reason"] == "POWERON" else 1
    if (health["boot_count"], health["restart_count"]) == (1, restarts):
        return None
    return (
        f"first boot after provisioning (reset_reason {health['reset_reason']}): boot_count "
        f"{health['boot_count']}, restart_count {health['restart_count']}; expected 1 and {restarts}"
    )


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


@pytest.mark.parametrize(
    "nvs",
    [
        pytest.param("erased", marks=pytest.mark.guards("unprovisioned_reboot")),
        # Namespace `device` there (the session's Wi-Fi, broker and keys, its settings), no
        # `device_id`: a factory that writes the identity last. As unprovisioned as erased:
        # it waits, it does not make up an identity and go on with the rest.
        pytest.param("no-device-id", marks=pytest.mark.guards("partial_provisioning_aborts", "unprovisioned_runs_as_mac_id")),
    ],
)
@pytest.mark.clause("C1.3")
def test_a_blank_device_says_it_is_not_provisioned_and_waits(provision, hil_session, dut, mqtt, console, nvs) -> None:
    """`not provisioned` once, then nothing: no restart for twice the watchdog timeout, and
    no broker session under any name (waiting is not running on a made-up identity)."""
    mark = mqtt.mark()
    if nvs == "erased":
        since = provision(None)
    else:
        since = provision(hil_session.device_provisioning(), omit=("device_id",))
    console.expect(contract.NOT_PROVISIONED, timeout=30, since=since)
    try:  # a reboot prints the ROM banner
        reboot = console.expect(contract.ROM_RESET, timeout=no_reboot_window_s(hil_session))
    except ConsoleTimeout:
        pass
    else:
        pytest.fail(f"it restarted ({reboot[0]}) instead of waiting to be provisioned")
    said = [line for line in console.lines(since) if contract.NOT_PROVISIONED.search(line)]
    assert len(said) == 1, f"'not provisioned' {len(said)} times: the device restarted"
    sessions = [line for line in console.lines(since) if contract.MQTT_CONNECTED.search(line)]
    assert sessions == [], f"an unprovisioned device connected to a broker: {sessions}"
    assert [m for m in mqtt.collect(contract.status_topic(dut.device_id), since=mark) if m.json()["state"] == "online"] == []


@pytest.mark.clause("C1.2", "C2.6", "C2.7", "C4.4")
def test_provisioning_a_blank_device_brings_it_online(provision, hil_session, dut, mqtt, console) -> None:
    """It uses exactly what was provisioned: the SSID, the broker URI, the device id. Its
    NVS erased and written afresh, its health counts this boot as its first."""
    prov = hil_session.device_provisioning()
    console.expect(contract.NOT_PROVISIONED, timeout=30, since=provision(None))
    mark = mqtt.mark()
    since = provision(prov)
    wifi = console.expect(contract.WIFI_CONNECTED, timeout=60, since=since)
    assert wifi["ssid"] == prov.wifi_ssid, wifi[0]
    connected = console.expect(contract.MQTT_CONNECTED, timeout=60, since=since)
    assert connected["uri"] == prov.mqtt_uri, f"connected to {connected['uri']}, provisioned {prov.mqtt_uri}"
    assert online(mqtt, dut.device_id, mark)["version"] == dut.version
    reading = mqtt.wait_for(contract.sensors_topic(dut.device_id), since=mark, timeout=30)[0].json()
    assert reading["device_id"] == prov.device_id
    assert first_boot_counts_problem(mqtt, dut.device_id, mark, hil_session) is None


@pytest.mark.clause("C1.2", "C4.10")
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


@pytest.mark.clause("C1.1", "C1.2", "C4.4")
def test_after_an_erase_and_reflash_the_device_is_back_with_the_same_identity(
    restore_firmware, hil_session, mqtt, console
) -> None:
    """Erased, then flashed as the session flashes: the bootloader reads the contract's
    two-OTA partition table on 4 MB of flash, and the device is back as itself, its
    health counting this boot as its first (the erase took the counts with it)."""
    dut = restore_firmware
    console.expect(BLANK_FLASH, timeout=30, since=hil_session.erase_flash())
    mark, flashed = mqtt.mark(), console.mark()
    hil_session.restore()  # the session's flashing: firmware and provisioning, all written again
    console.expect(contract.APP_VERSION, timeout=30, since=flashed)
    boot = console.lines(flashed)
    table = [(m["label"], int(m["offset"], 16), int(m["size"], 16)) for line in boot if (m := PARTITION_LINE.search(line))]
    assert table == LAYOUT, f"the bootloader read the partition table {table}"
    sizes = {m["size"] for line in boot if (m := FLASH_SIZE.search(line))}
    assert sizes == {"4MB"}, f"flash size {sizes}"
    assert online(mqtt, dut.device_id, mark)["version"] == dut.version
    reading = mqtt.wait_for(contract.sensors_topic(dut.device_id), since=mark, timeout=30)[0].json()
    assert reading["device_id"] == dut.device_id
    assert first_boot_counts_problem(mqtt, dut.device_id, mark, hil_session) is None
