"""Connectivity behaviour of the reference firmware: outages, AP loss, shutdown, safe mode."""

from __future__ import annotations

import re

import pytest

from hil.device import contract
from hil.services.broker import MosquittoBroker
from hil.services.mqtt import MqttObserver
from tests.sim.conftest import BoardMaker
from tests.sim.test_firmware_e2e import online, payload, valid

pytestmark = pytest.mark.slow


def seqs(observer: MqttObserver, *, since: int = 0) -> list[int]:
    return [payload(m)["seq"] for m in observer.collect(contract.sensors_topic("dev1"), since=since)]


@pytest.mark.parametrize("app", ["baseline", "offline_drop"])
def test_readings_taken_during_a_broker_outage_arrive_afterwards(
    make_board: BoardMaker, observer: MqttObserver, broker: MosquittoBroker, app: str
) -> None:
    board = make_board(app)
    online(observer, "dev1")
    observer.wait_for(contract.sensors_topic("dev1"), count=2, timeout=10)
    broker.stop()
    # Offline for two measurement periods (1 s) at least, by the retry delays the board
    # announced before each attempt: a reading is surely taken while offline.
    offline_s, pos = 0.0, 0
    while offline_s < 2.0:
        text, pos = board.control.wait_tx(r"W \(\d+\) mqtt: disconnected reason=\S+ retry_ms=(\d+)", since=pos, timeout=20)
        offline_s += int(re.findall(r"retry_ms=(\d+)", text)[-1]) / 1000
    board.control.wait_tx(r"W \(\d+\) mqtt: disconnected", since=pos, timeout=20)  # that long has passed
    broker.start()
    mark = observer.mark()
    online(observer, "dev1", since=mark, timeout=40)
    observer.wait_for(contract.sensors_topic("dev1"), since=mark, count=3, timeout=20)  # the queue, then live ones
    seen = sorted(set(seqs(observer)))
    expected = list(range(seen[0], seen[-1] + 1))
    if app == "baseline":
        assert seen[: len(expected)] == expected, f"gap in seq: {sorted(set(expected) - set(seen))}"
    else:
        assert set(expected) - set(seen), "the defect image should have lost the offline readings"


def test_ap_loss_drops_the_link_and_the_will_fires_then_the_board_comes_back(
    make_board: BoardMaker, observer: MqttObserver
) -> None:
    board = make_board()
    online(observer, "dev1")
    mark = observer.mark()
    board.control.request("ap.set", up=False)
    will = observer.wait_for(contract.status_topic("dev1"), since=mark, timeout=40)[0]
    assert payload(will) == {"state": "offline"}
    board.control.request("ap.set", up=True)
    status = online(observer, "dev1", since=mark, timeout=40)
    assert status["reset_reason"] == "POWERON"  # reconnected, not rebooted


def test_emergency_shutdown_disconnects_cleanly_and_sleeps(make_board: BoardMaker, observer: MqttObserver) -> None:
    board = make_board()
    online(observer, "dev1")
    mark = observer.mark()
    observer.publish(contract.emergency_topic("dev1"), b"shutdown")
    board.control.wait_tx(r"entering deep sleep until the next power-on", timeout=10)
    offline = observer.wait_for(contract.status_topic("dev1"), since=mark, timeout=10)
    assert payload(offline[0]) == {"state": "offline"}
    quiet = observer.mark()
    board.control.request("power", action="cycle")
    online(observer, "dev1", since=quiet, timeout=20)
    observer.wait_for(contract.sensors_topic("dev1"), since=quiet, timeout=10)  # awake again


def test_repeated_crashes_enter_safe_mode(make_board: BoardMaker, observer: MqttObserver) -> None:
    board = make_board()
    for _ in range(5):
        mark = observer.mark()
        online(observer, "dev1", since=mark if _ else 0)
        observer.publish(contract.command_topic("dev1"), {"cmd": "crash"})
        board.control.wait_tx(r"Guru Meditation Error", since=board.control.tx_log()[1] - 4000, timeout=10)
    health = observer.wait_for(contract.health_topic("dev1"), lambda m: payload(m)["safe_mode"] is True, timeout=30)[0]
    assert valid("health", health)["reset_reason"] == "PANIC"
    observer.wait_for(contract.alerts_topic("dev1"), lambda m: payload(m)["code"] == "safe_mode", timeout=10)
    board.control.wait_tx(r"safe mode: sensor task not started")
