"""OTA and rollback (the AWS IoT Device Tester cases that matter most), end to end."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from hil import contract
from hil.firmware import cached_build

pytestmark = [pytest.mark.hil, pytest.mark.gate_e2e, pytest.mark.destructive]


@pytest.fixture(scope="module")
def images() -> Path:
    return cached_build()


def states(mqtt, device: str, since: int) -> list[str]:
    return [m.json()["state"] for m in mqtt.collect(contract.ota_status_topic(device), since=since)]


def wait_state(mqtt, device: str, state: str, since: int, timeout: float = 60) -> dict:
    return mqtt.wait_for(
        contract.ota_status_topic(device), lambda m: m.json()["state"] == state, since=since, timeout=timeout
    )[0].json()


@pytest.mark.requires("ota")
def test_a_newer_signed_image_is_installed_and_confirmed(restore_firmware, mqtt, ota_server, ota_signer, images) -> None:
    dut = restore_firmware
    image = (images / "v1_1_0.bin").read_bytes()
    mark = mqtt.mark()
    mqtt.publish(contract.ota_update_topic(dut.device_id), ota_signer.request(image, ota_server.add("new.bin", image), "1.1.0"))
    wait_state(mqtt, dut.device_id, "success", mark)
    assert states(mqtt, dut.device_id, mark) == ["downloading", "verifying", "rebooting", "success"]
    dut.console.expect(contract.OTA_MARKED_VALID, timeout=5, since=None)


@pytest.mark.requires("ota")
@pytest.mark.parametrize(
    "variant",
    [
        pytest.param("corrupt signature", marks=pytest.mark.guards("skips_signature")),
        "untrusted signer",
        "same version",
        pytest.param("lower version", marks=pytest.mark.guards("accepts_downgrade")),
    ],
)
def test_a_bad_update_is_rejected_and_the_device_stays(dut, mqtt, ota_server, ota_signer, images, variant) -> None:
    from hil.ota import OtaSigner

    image = (images / "v1_1_0.bin").read_bytes()
    request = ota_signer.request(image, ota_server.add("bad.bin", image), "1.1.0")
    if variant == "corrupt signature":
        raw = bytearray(base64.b64decode(request["signature"]))
        raw[8] ^= 0x55
        request["signature"] = base64.b64encode(raw).decode()
    elif variant == "untrusted signer":
        request["signature"] = OtaSigner().sign(image)
    else:
        request["version"] = {"same version": dut.version, "lower version": "0.1.0"}[variant]
    mark = mqtt.mark()
    mqtt.publish(contract.ota_update_topic(dut.device_id), request)
    rejected = wait_state(mqtt, dut.device_id, "rejected", mark, timeout=15)
    assert rejected["reason"]
    mqtt.wait_for(contract.sensors_topic(dut.device_id), since=mqtt.mark(), count=2, timeout=10)
    restarts = [m for m in mqtt.collect(contract.status_topic(dut.device_id), since=mark) if m.json()["state"] == "online"]
    assert restarts == [], f"the device rebooted on a {variant} update"


@pytest.mark.requires("ota")
def test_an_image_that_crashes_on_boot_is_rolled_back(restore_firmware, mqtt, ota_server, ota_signer, images) -> None:
    dut = restore_firmware
    image = (images / "crash_on_boot.bin").read_bytes()
    mark = mqtt.mark()
    mqtt.publish(contract.ota_update_topic(dut.device_id), ota_signer.request(image, ota_server.add("crash.bin", image), "1.1.0"))
    rolled = wait_state(mqtt, dut.device_id, "rolled_back", mark, timeout=90)
    assert rolled["version"] == "1.1.0"
    back = [m.json() for m in mqtt.collect(contract.status_topic(dut.device_id), since=mark) if m.json()["state"] == "online"]
    assert back and back[-1]["version"] == dut.version
