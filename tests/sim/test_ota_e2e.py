"""OTA on the reference firmware: update, rollback and rejection, end to end."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil.device import contract
from hil.services.broker import MosquittoBroker
from hil.services.mqtt import MqttObserver, Received
from hil.services.ota import OtaServer, OtaSigner
from tests.sim.conftest import BoardMaker
from tests.sim.test_firmware_e2e import online, payload, valid

pytestmark = pytest.mark.slow


@pytest.fixture
def signer() -> OtaSigner:
    return OtaSigner()


@pytest.fixture
def server(broker: MosquittoBroker) -> Iterator[OtaServer]:
    with OtaServer(tls_ca=broker.ca) as server:
        yield server


def ota_states(observer: MqttObserver, *, since: int) -> list[str]:
    return [payload(m)["state"] for m in observer.collect(contract.ota_status_topic("dev1"), since=since)]


def wait_state(observer: MqttObserver, state: str, *, since: int, timeout: float = 30) -> Received:
    message = observer.wait_for(
        contract.ota_status_topic("dev1"), lambda m: payload(m)["state"] == state, since=since, timeout=timeout
    )[0]
    valid("ota_status", message)
    return message


def test_newer_signed_image_over_https_with_a_dropped_connection_ends_in_success(
    make_board: BoardMaker, observer: MqttObserver, images: Path, signer: OtaSigner, server: OtaServer
) -> None:
    board = make_board(ota_pubkey=signer.public_pem)
    online(observer, "dev1")
    image = (images / "v1_1_0.bin").read_bytes()
    url = server.add("v1_1_0.bin", image)
    server.drop_next_after(20_000)
    mark = observer.mark()
    observer.publish(contract.ota_update_topic("dev1"), signer.request(image, url, "1.1.0"))
    wait_state(observer, "success", since=mark, timeout=60)
    assert ota_states(observer, since=mark) == ["downloading", "verifying", "rebooting", "success"]
    assert ("v1_1_0.bin", "bytes=20000-") in server.requests  # resumed, not restarted
    status = online(observer, "dev1", since=mark)
    assert status["version"] == "1.1.0" and status["reset_reason"] == "SW"
    board.control.wait_tx(r"I \(\d+\) ota: app marked valid")
    assert board.control.state()["app"]["partition"] == "ota_0"


def test_image_that_crashes_on_boot_is_rolled_back(
    make_board: BoardMaker, observer: MqttObserver, images: Path, signer: OtaSigner, server: OtaServer
) -> None:
    board = make_board(ota_pubkey=signer.public_pem)
    online(observer, "dev1")
    image = (images / "crash_on_boot.bin").read_bytes()
    mark = observer.mark()
    observer.publish(contract.ota_update_topic("dev1"), signer.request(image, server.add("c.bin", image), "1.1.0"))
    rolled = wait_state(observer, "rolled_back", since=mark, timeout=60)
    assert payload(rolled)["version"] == "1.1.0"
    observer.wait_for(contract.alerts_topic("dev1"), lambda m: payload(m)["code"] == "ota_rolled_back", since=mark, timeout=10)
    status = online(observer, "dev1", since=mark)
    assert status["version"] == "1.0.0"
    board.control.wait_tx(r"Guru Meditation Error")
    board.control.wait_tx(r"W \(\d+\) ota: rollback")
    assert board.control.state()["app"]["partition"] == "factory"


@pytest.mark.parametrize("defect", ["bad_signature", "untrusted_signer", "same_version", "lower_version"])
def test_bad_requests_are_rejected_without_a_reboot(
    make_board: BoardMaker, observer: MqttObserver, images: Path, signer: OtaSigner, server: OtaServer, defect: str
) -> None:
    board = make_board(ota_pubkey=signer.public_pem)
    online(observer, "dev1")
    image = (images / "v1_1_0.bin").read_bytes()
    request = signer.request(image, server.add("v.bin", image), "1.1.0")
    if defect == "bad_signature":
        raw = bytearray(base64.b64decode(request["signature"]))
        raw[-1] ^= 0x01
        request["signature"] = base64.b64encode(raw).decode()
    elif defect == "untrusted_signer":
        request["signature"] = OtaSigner().sign(image)
    else:
        request["version"] = {"same_version": "1.0.0", "lower_version": "0.9.0"}[defect]
    boots = board.control.state()["boots"]
    mark = observer.mark()
    observer.publish(contract.ota_update_topic("dev1"), request)
    rejected = wait_state(observer, "rejected", since=mark)
    assert payload(rejected)["reason"]
    observer.wait_for(contract.sensors_topic("dev1"), since=observer.mark(), count=2, timeout=10)
    assert board.control.state()["boots"] == boots
    assert server.requests == []  # nothing downloaded
