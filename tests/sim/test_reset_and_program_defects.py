"""Defect images of the reference firmware that the watchdog, command and program suites
guard against: each shown doing its wrong thing on a virtual board (the baseline's right
thing is pinned in test_firmware_e2e.py and test_connectivity_e2e.py); and the baseline's
ack of a command that is not named by a string."""

from __future__ import annotations

import hashlib

import pytest

from hil.device import contract
from hil.services.mqtt import MqttObserver
from tests.sim.conftest import BoardMaker

pytestmark = pytest.mark.slow


def online(observer: MqttObserver, since: int, timeout: float = 20) -> dict:
    status = observer.wait_for(
        contract.status_topic("dev1"), lambda m: m.json()["state"] == "online", since=since, timeout=timeout
    )[0].json()
    assert isinstance(status, dict)
    return status


def health_of_boot(observer: MqttObserver, boot: int, since: int) -> dict:
    health = observer.wait_for(
        contract.health_topic("dev1"), lambda m: m.json()["boot_count"] == boot, since=since, timeout=20
    )[0].json()
    assert isinstance(health, dict) and not contract.validate_payload("health", health), health
    return health


def crash(observer: MqttObserver) -> dict:
    """Crash the board with the test hook; the health of the boot after it."""
    mark = observer.mark()
    observer.publish(contract.command_topic("dev1"), {"cmd": "crash"})
    return health_of_boot(observer, online(observer, mark)["boot_count"], mark)


def test_no_boot_loop_guard_never_enters_safe_mode(make_board: BoardMaker, observer: MqttObserver) -> None:
    make_board("no_safe_mode")
    online(observer, 0)
    for _ in range(contract.BOOT_LOOP_RESETS):
        health = crash(observer)
    assert health["reset_reason"] == "PANIC" and health["safe_mode"] is False
    observer.wait_for(contract.sensors_topic("dev1"), since=observer.mark(), timeout=10)


def test_restart_count_stuck_does_not_count_a_crash(make_board: BoardMaker, observer: MqttObserver) -> None:
    make_board("restart_count_stuck")
    online(observer, 0)
    health = crash(observer)
    assert health["reset_reason"] == "PANIC" and health["restart_count"] == 0


def test_shutdown_without_sleep_reconnects_after_an_emergency_shutdown(
    make_board: BoardMaker, observer: MqttObserver
) -> None:
    board = make_board("shutdown_no_sleep")
    online(observer, 0)
    mark = observer.mark()
    observer.publish(contract.emergency_topic("dev1"), b"shutdown")
    observer.wait_for(contract.status_topic("dev1"), lambda m: m.json()["state"] == "offline", since=mark, timeout=10)
    assert online(observer, mark)["reset_reason"] == "POWERON"  # back, without a power-on
    board.control.wait_tx(r"W \(\d+\) mqtt: disconnected reason=emergency_shutdown", timeout=5)


def test_programs_block_sensor_stops_readings_and_starves_the_watchdog(
    make_board: BoardMaker, observer: MqttObserver
) -> None:
    board = make_board("program_blocks_sensor", config={"watchdog_timeout_s": 2})
    online(observer, 0)
    observer.wait_for(contract.sensors_topic("dev1"), timeout=10)
    source = "(define (tick n) (if (= n 0) 'done (begin (sleep 250) (tick (- n 1)))))\n(tick 40)"
    mark = observer.mark()
    observer.publish(
        contract.programs_deploy_topic("dev1"),
        {"name": "ticker", "source": source, "sha256": hashlib.sha256(source.encode()).hexdigest()},
    )
    board.control.wait_tx(r"E \(\d+\) task_wdt:  - sensor \(CPU 0\)", timeout=15)
    status = online(observer, mark)
    assert status["reset_reason"] == "TASK_WDT"
    before = [m for m in observer.collect(contract.sensors_topic("dev1"), since=mark) if m.json()["boot_count"] < status["boot_count"]]
    assert len(before) <= 1, f"{len(before)} readings while the program ran on the sensor task"


@pytest.mark.parametrize("request_", [{"cmd": ["reset"]}, {"cmd": 5}, {"cmd": None}])
def test_a_command_not_named_by_a_string_is_refused_with_a_conforming_ack(
    make_board: BoardMaker, observer: MqttObserver, request_: dict
) -> None:
    make_board()
    online(observer, 0)
    mark = observer.mark()
    observer.publish(contract.command_topic("dev1"), request_)
    ack = observer.wait_for(contract.command_ack_topic("dev1"), since=mark, timeout=10)[0].json()
    assert not contract.validate_payload("command_ack", ack), ack
    assert ack["cmd"] is None and ack["ok"] is False

