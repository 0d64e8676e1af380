"""Update images with trouble of their own (``hil.firmware.catalog.update_image`` params), on the
reference firmware: built with other Wi-Fi credentials (its self-test fails, it is rolled
back), and with a sensor task that hangs at boot (the watchdog rolls it back)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hil.device import contract
from hil.firmware.catalog import update_image
from hil.services.broker import MosquittoBroker
from hil.services.mqtt import MqttObserver
from hil.services.ota import OtaServer, OtaSigner
from tests.sim.conftest import BoardMaker
from tests.sim.test_firmware_e2e import online, payload

pytestmark = pytest.mark.slow


@pytest.fixture
def server(broker: MosquittoBroker) -> Iterator[OtaServer]:
    with OtaServer(tls_ca=broker.ca) as server:
        yield server


def rolled_back(observer: MqttObserver, since: int, timeout: float) -> dict:
    return payload(
        observer.wait_for(
            contract.ota_status_topic("dev1"),
            lambda m: payload(m)["state"] == "rolled_back",
            since=since,
            timeout=timeout,
        )[0]
    )


def test_an_update_built_with_wrong_wifi_credentials_fails_its_self_test_not_the_watchdog(
    make_board: BoardMaker, observer: MqttObserver, server: OtaServer
) -> None:
    signer = OtaSigner()
    # The watchdog is shorter than the self-test: a task waiting for the broker must
    # keep checking in, so that it is the self-test that gives up.
    board = make_board(ota_pubkey=signer.public_pem, config={"watchdog_timeout_s": 2, "ota_selftest_timeout_s": 5})
    online(observer, "dev1")
    image = update_image(None, "1.1.0", wifi_pass="wrong")
    mark = observer.mark()
    _, start = board.control.tx_log()
    observer.publish(contract.ota_update_topic("dev1"), signer.request(image, server.add("w.bin", image), "1.1.0"))
    board.control.wait_tx(r"W \(\d+\) wifi: connect failed ssid=\S+ reason=auth_fail", since=start, timeout=20)
    board.control.wait_tx(r"E \(\d+\) ota: self-test failed", since=start, timeout=20)
    assert rolled_back(observer, mark, timeout=30)["version"] == "1.1.0"
    assert online(observer, "dev1", since=mark)["version"] == "1.0.0"
    text, _ = board.control.tx_log(start)
    assert b"task_wdt" not in text


def test_an_update_whose_sensor_task_hangs_is_rolled_back_by_the_watchdog(
    make_board: BoardMaker, observer: MqttObserver, server: OtaServer
) -> None:
    signer = OtaSigner()
    board = make_board(ota_pubkey=signer.public_pem, config={"watchdog_timeout_s": 2, "ota_selftest_timeout_s": 60})
    online(observer, "dev1")
    image = update_image(None, "1.1.0", hang_at_boot="sensor")
    mark = observer.mark()
    _, start = board.control.tx_log()
    observer.publish(contract.ota_update_topic("dev1"), signer.request(image, server.add("h.bin", image), "1.1.0"))
    board.control.wait_tx(r"E \(\d+\) task_wdt:  - sensor \(CPU 0\)", since=start, timeout=20)
    assert rolled_back(observer, mark, timeout=30)["version"] == "1.1.0"
    assert board.control.state()["app"]["partition"] == "factory"
