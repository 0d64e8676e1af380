"""The reference firmware on virtual boards, against a real mosquitto, with plain clients."""

from __future__ import annotations

import itertools
import json

import pytest

from hil.device import contract
from hil.services.broker import OBSERVER_USER, MosquittoBroker
from hil.services.mqtt import MqttObserver, Received
from tests.sim.conftest import BoardMaker

pytestmark = pytest.mark.slow


def payload(message: Received) -> dict:
    data = message.json()
    assert isinstance(data, dict)
    return data


def valid(kind: str, message: Received) -> dict:
    data = payload(message)
    problems = contract.validate_payload(kind, data)  # type: ignore[arg-type]
    assert not problems, f"{message.topic}: {problems}\n{data}"
    return data


def online(observer: MqttObserver, device: str, *, since: int = 0, timeout: float = 20) -> dict:
    message = observer.wait_for(
        contract.status_topic(device), lambda m: payload(m).get("state") == "online", since=since, timeout=timeout
    )[0]
    return valid("status_online", message)


def test_baseline_telemetry_is_contract_valid_and_the_will_announces_a_dead_board(
    make_board: BoardMaker, observer: MqttObserver
) -> None:
    board = make_board()
    status = online(observer, "dev1")
    assert status["version"] == "1.0.0" and status["reset_reason"] == "POWERON"
    readings = observer.wait_for(contract.sensors_topic("dev1"), count=3, timeout=20)
    data = [valid("sensors", m) for m in readings]
    assert [d["seq"] for d in data] == [data[0]["seq"], data[0]["seq"] + 1, data[0]["seq"] + 2]
    valid("health", observer.wait_for(contract.health_topic("dev1"), timeout=10)[0])
    valid("metrics", observer.wait_for(contract.metrics_topic("dev1"), timeout=10)[0])

    mark = observer.mark()
    board.process.kill()
    will = observer.wait_for(contract.status_topic("dev1"), since=mark, timeout=40)[0]
    assert valid("status_offline", will) == {"state": "offline"}


@pytest.mark.parametrize("listener", ["tls", "mtls"])
def test_tls_and_mutual_tls_with_the_acl(
    make_board: BoardMaker, observer: MqttObserver, broker: MosquittoBroker, listener: str
) -> None:
    """Over TLS (password) and mutual TLS (client certificate, CN = device id): the same
    contract-valid telemetry, a retained online status, the will on a dead board; the
    broker's ACL keeps a device's account under its own topics."""
    board = make_board(listener=listener)
    online(observer, "dev1")
    board.control.wait_tx(r"I \(\d+\) mqtt: connected uri=mqtts://127\.0\.0\.1:\d+")
    valid("sensors", observer.wait_for(contract.sensors_topic("dev1"), timeout=20)[0])
    valid("health", observer.wait_for(contract.health_topic("dev1"), timeout=10)[0])
    valid("metrics", observer.wait_for(contract.metrics_topic("dev1"), timeout=10)[0])

    # Retained: a client that subscribes after the fact gets the status at once, flagged so.
    with MqttObserver(
        "127.0.0.1", broker.plain_port, username=OBSERVER_USER, password=broker.observer_password,
        subscribe=contract.status_topic("dev1"),
    ) as late:  # fmt: skip
        status = late.wait_for(contract.status_topic("dev1"), timeout=10)[0]
        assert status.retain and payload(status)["state"] == "online"

    # The ACL (pattern esp32/%u/#): dev1's own account may publish under esp32/dev1/, not
    # under esp32/dev2/ (mosquitto drops what the ACL refuses without telling the client).
    creds = broker.credentials("dev1")
    with MqttObserver("127.0.0.1", broker.plain_port, username=creds.username, password=creds.password,
                      subscribe="esp32/dev1/acl-probe") as as_dev1:  # fmt: skip
        mark = observer.mark()
        as_dev1.publish(contract.sensors_topic("dev2"), {"forged": True})
        as_dev1.publish("esp32/dev1/acl-probe", {"own": True})
        observer.wait_for("esp32/dev1/acl-probe", since=mark, timeout=10)
        assert observer.collect(contract.sensors_topic("dev2"), since=mark) == []

    log, _ = board.control.tx_log()
    assert b"password" not in log.lower()

    mark = observer.mark()
    board.process.kill()
    will = observer.wait_for(contract.status_topic("dev1"), since=mark, timeout=40)[0]
    assert valid("status_offline", will) == {"state": "offline"}


def test_device_refuses_a_broker_with_the_wrong_ca(make_board: BoardMaker, observer: MqttObserver) -> None:
    import trustme

    other_ca = trustme.CA().cert_pem.bytes().decode()
    board = make_board(listener="tls", ca_pem=other_ca)
    board.control.wait_tx(r"E \(\d+\) mqtt: tls handshake failed .*not trusted", timeout=20)
    board.control.wait_tx(r"W \(\d+\) mqtt: disconnected reason=tls_verify_failed retry_ms=\d+", timeout=20)
    assert observer.collect(contract.status_topic("dev1")) == []


@pytest.mark.parametrize(
    "env",
    [(22.0, 45.0, 1013.25), (-39.5, 5.0, 301.0), (84.5, 95.0, 1099.0), (0.0, 50.0, 850.0)],
)
def test_environment_comes_back_in_readings_within_accuracy(
    make_board: BoardMaker, observer: MqttObserver, env: tuple[float, float, float]
) -> None:
    board = make_board()
    online(observer, "dev1")
    temperature, humidity, pressure = env
    board.control.request("sensor.set", temperature_c=temperature, humidity_pct=humidity, pressure_hpa=pressure)
    mark = observer.mark()
    # The first reading after the change may have been converted before it: take the second.
    reading = valid("sensors", observer.wait_for(contract.sensors_topic("dev1"), since=mark, count=2, timeout=20)[1])
    assert abs(reading["temperature_c"] - temperature) <= contract.TEMPERATURE_ACCURACY_C
    assert abs(reading["humidity_pct"] - humidity) <= contract.HUMIDITY_ACCURACY_PCT
    assert abs(reading["pressure_hpa"] - pressure) <= contract.PRESSURE_ACCURACY_HPA


def test_temperature_defect_image_reads_high(make_board: BoardMaker, observer: MqttObserver) -> None:
    make_board("temp_high_2c")
    online(observer, "dev1")
    reading = valid("sensors", observer.wait_for(contract.sensors_topic("dev1"), timeout=20)[0])
    assert abs(reading["temperature_c"] - 24.0) < 0.1  # the default 22.0 °C, plus the defect


def test_valid_config_is_saved_then_applied_after_a_restart(make_board: BoardMaker, observer: MqttObserver) -> None:
    make_board()
    online(observer, "dev1")
    mark = observer.mark()
    observer.publish(contract.config_update_topic("dev1"), {"measurement_interval_s": 3})
    status = valid("config_status", observer.wait_for(contract.config_status_topic("dev1"), since=mark, timeout=10)[0])
    assert status["ok"] is True
    restarted = online(observer, "dev1", since=mark)
    assert restarted["reset_reason"] == "SW"
    after = observer.mark()
    readings = observer.wait_for(contract.sensors_topic("dev1"), since=after, count=3, timeout=30)
    gaps = [b.at - a.at for a, b in itertools.pairwise(readings)]
    assert all(2.0 < gap < 4.5 for gap in gaps), gaps


@pytest.mark.parametrize(
    "update",
    [
        b"{not json",
        b"[]",
        b"{}",
        json.dumps({"measurement_interval_s": 0}).encode(),
        json.dumps({"measurement_interval_s": "10"}).encode(),
        json.dumps({"watchdog_timeout_s": 7200}).encode(),
        json.dumps({"log_level": "verbose"}).encode(),
        json.dumps({"brokers": ["http://x:1"]}).encode(),
        json.dumps({"colour": "red"}).encode(),
    ],
)
def test_invalid_config_is_rejected_and_the_board_runs_on(
    make_board: BoardMaker, observer: MqttObserver, update: bytes
) -> None:
    make_board()
    online(observer, "dev1")
    mark = observer.mark()
    observer.publish(contract.config_update_topic("dev1"), update)
    status = valid("config_status", observer.wait_for(contract.config_status_topic("dev1"), since=mark, timeout=10)[0])
    assert status["ok"] is False and status["error"]
    alert = observer.wait_for(contract.alerts_topic("dev1"), lambda m: payload(m)["code"] == "config_rejected", since=mark, timeout=10)
    valid("alerts", alert[0])
    observer.wait_for(contract.sensors_topic("dev1"), since=observer.mark(), count=2, timeout=10)
    assert [m for m in observer.collect(contract.status_topic("dev1"), since=mark) if payload(m)["state"] == "online"] == []


def test_hang_command_ends_in_the_task_watchdog(make_board: BoardMaker, observer: MqttObserver) -> None:
    board = make_board(config={"watchdog_timeout_s": 2})
    online(observer, "dev1")
    mark = observer.mark()
    observer.publish(contract.command_topic("dev1"), {"cmd": "hang", "task": "sensor"})
    _, pos = board.control.wait_tx(r"E \(\d+\) task_wdt: Task watchdog got triggered", timeout=15)
    board.control.wait_tx(r"E \(\d+\) task_wdt:  - sensor \(CPU 0\)", since=pos - 200)
    board.control.wait_tx(r"rst:0xc \(RTC_SW_CPU_RST\)", since=pos)
    health = observer.wait_for(
        contract.health_topic("dev1"), lambda m: payload(m)["reset_reason"] == "TASK_WDT", since=mark, timeout=20
    )[0]
    assert valid("health", health)["restart_count"] >= 1


def test_sensor_bus_held_low_ends_in_the_task_watchdog(make_board: BoardMaker, observer: MqttObserver) -> None:
    board = make_board(config={"watchdog_timeout_s": 2})
    online(observer, "dev1")
    board.control.request("sensor.fault", fault="bus_held_low", active=True)
    board.control.wait_tx(r"E \(\d+\) task_wdt: Task watchdog got triggered", timeout=15)
    board.control.request("sensor.fault", fault="none")
    mark = observer.mark()
    health = observer.wait_for(
        contract.health_topic("dev1"), lambda m: payload(m)["reset_reason"] == "TASK_WDT", since=mark - 50, timeout=20
    )[0]
    valid("health", health)


def test_program_completes_and_an_endless_one_fails_on_its_budget(make_board: BoardMaker, observer: MqttObserver) -> None:
    import hashlib

    make_board()
    online(observer, "dev1")
    observer.wait_for(contract.sensors_topic("dev1"), timeout=10)

    def deploy(name: str, source: str) -> None:
        observer.publish(
            contract.programs_deploy_topic("dev1"),
            {"name": name, "source": source, "sha256": hashlib.sha256(source.encode()).hexdigest()},
        )

    mark = observer.mark()
    deploy("double", "(define t (sensor 'temperature)) (* 2 t)")
    done = observer.wait_for(
        contract.programs_status_topic("dev1"), lambda m: payload(m)["state"] == "completed", since=mark, timeout=10
    )[0]
    assert abs(valid("programs_status", done)["result"] - 44.0) < 0.2

    mark = observer.mark()
    deploy("spin", "(define (f) (f)) (f)")
    failed = observer.wait_for(
        contract.programs_status_topic("dev1"), lambda m: payload(m)["state"] == "failed", since=mark, timeout=20
    )[0]
    assert "step_budget" in valid("programs_status", failed)["error"]
    # Telemetry went on through it, with no gap.
    readings = observer.wait_for(contract.sensors_topic("dev1"), since=mark, count=2, timeout=10)
    assert payload(readings[1])["seq"] == payload(readings[0])["seq"] + 1


def test_unprovisioned_board_waits_without_boot_looping(
    broker: MosquittoBroker, images, virtual_board_factory, tmp_path
) -> None:
    from tests.sim.conftest import write_factory_flash

    state = tmp_path / "blank-nvs"
    write_factory_flash(state, images, "baseline", b"\xff" * 0x4000)
    board = virtual_board_factory(state_dir=state)
    assert board.control is not None
    board.control.wait_tx(r"E \(\d+\) app: not provisioned", timeout=15)
    assert board.control.state()["boots"] == 1


def test_the_unprovisioned_reboot_defect_boot_loops_a_blank_board(images, virtual_board_factory, tmp_path) -> None:
    from tests.sim.conftest import write_factory_flash

    state = tmp_path / "blank-nvs"
    write_factory_flash(state, images, "unprovisioned_reboot", b"\xff" * 0x4000)
    board = virtual_board_factory(state_dir=state)
    assert board.control is not None
    _, end = board.control.wait_tx(r"E \(\d+\) app: not provisioned", timeout=15)
    board.control.wait_tx(r"Guru Meditation Error(?s:.*)E \(\d+\) app: not provisioned", since=end, timeout=15)
    assert board.control.state()["boots"] >= 2


def test_rig_controls_ramp_noise_and_rssi_reach_the_readings(make_board: BoardMaker, observer: MqttObserver) -> None:
    """The control endpoint's sensor ramp and noise and the AP's RSSI, as the firmware
    reports them (docs/virtual-rig.md)."""
    board = make_board()
    online(observer, "dev1")
    topic = contract.sensors_topic("dev1")
    still = [valid("sensors", m)["temperature_c"] for m in observer.wait_for(topic, count=3, timeout=20)]
    assert len(set(still)) == 1, f"no noise configured, yet the readings vary: {still}"

    board.control.request("sensor.ramp", temperature_c=32.0, humidity_pct=45.0, pressure_hpa=1013.25, duration_s=5)
    mark = observer.mark()
    ramp = [valid("sensors", m)["temperature_c"] for m in observer.wait_for(topic, since=mark, count=8, timeout=30)]
    assert ramp == sorted(ramp), f"a ramp up went down: {ramp}"
    assert any(still[0] + 1 < t < 32.0 - 1 for t in ramp), f"no reading on the way: {ramp}"
    assert abs(ramp[-1] - 32.0) <= contract.TEMPERATURE_ACCURACY_C, ramp

    board.control.request("sensor.noise", temperature_sigma_c=1.0)
    mark = observer.mark()
    noisy = [valid("sensors", m)["temperature_c"] for m in observer.wait_for(topic, since=mark, count=6, timeout=20)][1:]
    assert len(set(noisy)) > 1, f"noise configured, yet the readings are constant: {noisy}"

    board.control.request("ap.set", rssi=-71)
    mark = observer.mark()
    health = observer.wait_for(contract.health_topic("dev1"), since=mark, count=2, timeout=20)[1]
    assert valid("health", health)["wifi_rssi"] == -71
