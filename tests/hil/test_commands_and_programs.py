"""Commands, the emergency shutdown and program delivery (the AWS IoT "Steel" runtime, §9),
through MQTT only."""

from __future__ import annotations

import hashlib

import pytest

from hil import contract
from hil.bme280 import Environment
from hil.mqtt import ObserverTimeout

pytestmark = [pytest.mark.hil, pytest.mark.gate_e2e]


def online_after(mqtt, device: str, mark: int, timeout: float = 40) -> dict:
    return mqtt.wait_for(
        contract.status_topic(device), lambda m: m.json()["state"] == "online", since=mark, timeout=timeout
    )[0].json()


def restarts_since(mqtt, device: str, mark: int) -> list[dict]:
    return [s for m in mqtt.collect(contract.status_topic(device), since=mark) if (s := m.json())["state"] == "online"]


def ack_of(mqtt, device: str, cmd: str | None, mark: int) -> dict:
    ack = mqtt.wait_for(contract.command_ack_topic(device), lambda m: m.json()["cmd"] == cmd, since=mark, timeout=15)[0].json()
    assert not contract.validate_payload("command_ack", ack), ack
    return ack


def reading_after(mqtt, device: str, mark: int, boot: int | None = None) -> dict:
    return mqtt.wait_for(
        contract.sensors_topic(device),
        lambda m: boot is None or m.json()["boot_count"] == boot,
        since=mark,
        timeout=30,
    )[0].json()


# -- commands (§5) -------------------------------------------------------------------------


def test_report_publishes_health_at_once(dut, mqtt) -> None:
    device = dut.device_id
    mqtt.wait_for(contract.health_topic(device), since=mqtt.mark(), timeout=30)  # a heartbeat: the next is far
    mark = mqtt.mark()
    mqtt.publish(contract.command_topic(device), {"cmd": "report"})
    assert ack_of(mqtt, device, "report", mark) == {"cmd": "report", "ok": True}
    health = mqtt.wait_for(contract.health_topic(device), since=mark, timeout=3.5)[0].json()  # heartbeat: 5 s
    assert not contract.validate_payload("health", health), health
    assert restarts_since(mqtt, device, mark) == []


def test_reset_restarts_the_device_with_reason_sw(dut, mqtt) -> None:
    device = dut.device_id
    before = reading_after(mqtt, device, mqtt.mark())
    mark = mqtt.mark()
    mqtt.publish(contract.command_topic(device), {"cmd": "reset"})
    assert ack_of(mqtt, device, "reset", mark) == {"cmd": "reset", "ok": True}
    status = online_after(mqtt, device, mark)
    assert status["reset_reason"] == "SW" and status["boot_count"] == before["boot_count"] + 1
    first = reading_after(mqtt, device, mark, boot=status["boot_count"])
    assert first["seq"] == 0, "seq starts at 0 each boot"


@pytest.mark.requires("sensor_emulation")
def test_factory_reset_erases_the_config_and_returns_to_the_provisioned_settings(restore_firmware, mqtt, sensor) -> None:
    dut = restore_firmware  # a failure half way must not leave the offset behind
    device = dut.device_id
    env = Environment(21.0, 40.0, 1005.0)
    sensor.set(env)
    mark = mqtt.mark()
    mqtt.publish(contract.config_update_topic(device), {"calibration_offset_temp": 4.0})
    boot = online_after(mqtt, device, mark)["boot_count"]
    assert abs(reading_after(mqtt, device, mark, boot)["temperature_c"] - (env.temperature_c + 4.0)) <= 1.0
    mark = mqtt.mark()
    mqtt.publish(contract.command_topic(device), {"cmd": "factory_reset"})
    assert ack_of(mqtt, device, "factory_reset", mark) == {"cmd": "factory_reset", "ok": True}
    status = online_after(mqtt, device, mark)
    assert status["reset_reason"] == "SW"
    reading = reading_after(mqtt, device, mark, status["boot_count"])
    assert abs(reading["temperature_c"] - env.temperature_c) <= contract.TEMPERATURE_ACCURACY_C, "the offset survived"


@pytest.mark.parametrize(
    ("payload", "cmd"),
    [
        pytest.param({"cmd": "self_destruct"}, "self_destruct", id="unknown-command"),
        pytest.param(b"reset", None, id="not-json"),
        pytest.param({"task": "sensor"}, None, id="no-cmd"),
        pytest.param({"cmd": ["reset"]}, None, id="cmd-not-a-string"),
    ],
)
def test_an_unknown_or_malformed_command_is_refused_and_changes_nothing(dut, mqtt, payload, cmd) -> None:
    device = dut.device_id
    mark = mqtt.mark()
    mqtt.publish(contract.command_topic(device), payload)
    ack = ack_of(mqtt, device, cmd, mark)
    assert ack["ok"] is False and ack["error"], ack
    reading_after(mqtt, device, mqtt.mark())
    assert restarts_since(mqtt, device, mark) == []


@pytest.mark.requires("power_control")
@pytest.mark.guards("shutdown_no_sleep")
def test_emergency_shutdown_disconnects_cleanly_and_stops_until_the_next_power_on(dut, mqtt, power) -> None:
    device = dut.device_id
    status = contract.status_topic(device)
    mark = mqtt.mark()
    mqtt.publish(contract.emergency_topic(device), contract.EMERGENCY_SHUTDOWN.encode())
    mqtt.wait_for(status, lambda m: m.json()["state"] == "offline", since=mark, timeout=15)
    quiet = mqtt.mark()
    # Asleep: no reconnect, no reading, no heartbeat (5 s) for longer than the first backoff.
    with pytest.raises(ObserverTimeout):
        mqtt.wait_for(contract.device_publish_prefix(device) + "#", lambda m: m.topic != status, since=quiet, timeout=8)
    offline = [m.json() for m in mqtt.collect(status, since=mark)]
    assert offline == [{"state": "offline"}], f"a clean disconnect fires no last will: {offline}"
    mark = mqtt.mark()
    power.cycle()
    assert online_after(mqtt, device, mark)["reset_reason"] == "POWERON"
    reading_after(mqtt, device, mark)


# -- programs (§9) -------------------------------------------------------------------------


def deploy(mqtt, device: str, name: str, source: str, sha256: str | None = None) -> int:
    mark = mqtt.mark()
    digest = sha256 or hashlib.sha256(source.encode()).hexdigest()
    mqtt.publish(contract.programs_deploy_topic(device), {"name": name, "source": source, "sha256": digest})
    return mark


def program_statuses(mqtt, device: str, mark: int, final: str, timeout: float = 30) -> list[dict]:
    """Every programs/status since ``mark`` up to the first ``final`` state, each checked."""
    topic = contract.programs_status_topic(device)
    mqtt.wait_for(topic, lambda m: m.json()["state"] == final, since=mark, timeout=timeout)
    statuses = [m.json() for m in mqtt.collect(topic, since=mark)]
    for status in statuses:
        assert not contract.validate_payload("programs_status", status), status
    states = [s["state"] for s in statuses]
    return statuses[: states.index(final) + 1]


def ran(statuses: list[dict], final: str) -> bool:
    states = [s["state"] for s in statuses]
    return states[0] == "accepted" and states[-1] == final and set(states[1:-1]) <= {"running"}


def test_a_program_runs_and_reports_the_value_of_its_last_expression(dut, mqtt) -> None:
    source = "(define (square x) (* x x))\n(let ((a 12)) (if (> a 10) (square a) 0))"
    mark = deploy(mqtt, dut.device_id, "square", source)
    statuses = program_statuses(mqtt, dut.device_id, mark, "completed")
    assert ran(statuses, "completed"), statuses
    assert statuses[-1] == {"name": "square", "state": "completed", "result": 144}


@pytest.mark.requires("sensor_emulation")
def test_a_program_reads_the_sensor_and_publishes_under_its_own_topic(dut, mqtt, sensor) -> None:
    env = Environment(24.0, 50.0, 990.0)
    sensor.set(env)
    reading_after(mqtt, dut.device_id, mqtt.mark())  # a reading taken in the new environment
    reading_after(mqtt, dut.device_id, mqtt.mark())
    source = "(publish \"probe\" (sensor 'temperature))\n(led 'on)\n(sensor 'humidity)"
    mark = deploy(mqtt, dut.device_id, "probe", source)
    result = program_statuses(mqtt, dut.device_id, mark, "completed")[-1]["result"]
    assert abs(result - env.humidity_pct) <= contract.HUMIDITY_ACCURACY_PCT
    published = mqtt.wait_for(contract.program_publish_topic(dut.device_id, "probe"), since=mark, timeout=5)[0].json()
    value = published["value"] if isinstance(published, dict) else published
    assert abs(value - env.temperature_c) <= contract.TEMPERATURE_ACCURACY_C, published


def test_a_program_over_its_step_budget_fails_and_the_device_carries_on(dut, mqtt) -> None:
    mark = deploy(mqtt, dut.device_id, "forever", "(define (loop n) (loop (+ n 1)))\n(loop 0)")
    statuses = program_statuses(mqtt, dut.device_id, mark, "failed")
    assert ran(statuses, "failed"), statuses
    assert "budget" in statuses[-1]["error"], statuses[-1]
    reading_after(mqtt, dut.device_id, mqtt.mark())
    assert restarts_since(mqtt, dut.device_id, mark) == []


_TOO_LARGE = "(+ 1 2)" + " " * contract.PROGRAM_MAX_BYTES


@pytest.mark.parametrize(
    ("source", "sha256", "why"),
    [
        pytest.param("(+ 1 2", None, "parse", id="parse-error"),
        pytest.param(
            "(+ 1 2)", hashlib.sha256(b"(+ 1 3)").hexdigest(), "hash", id="hash-mismatch",
            marks=pytest.mark.guards("program_no_hash"),
        ),
        pytest.param(_TOO_LARGE, None, "large", id="too-large"),
    ],
)
def test_a_bad_program_is_rejected_without_running(dut, mqtt, source, sha256, why) -> None:
    mark = deploy(mqtt, dut.device_id, "bad", source, sha256)
    statuses = program_statuses(mqtt, dut.device_id, mark, "rejected", timeout=15)
    assert [s["state"] for s in statuses] == ["rejected"], statuses
    assert why in statuses[-1]["error"].lower(), statuses[-1]
    assert restarts_since(mqtt, dut.device_id, mark) == []


def test_a_malformed_deployment_is_rejected(dut, mqtt) -> None:
    mark = mqtt.mark()
    mqtt.publish(contract.programs_deploy_topic(dut.device_id), b'{"name": "x", "source": ')
    statuses = program_statuses(mqtt, dut.device_id, mark, "rejected", timeout=15)
    assert [s["state"] for s in statuses] == ["rejected"] and statuses[-1]["error"], statuses


@pytest.mark.guards("program_blocks_sensor")
def test_telemetry_and_the_watchdog_carry_on_while_a_program_runs(dut, mqtt) -> None:
    device = dut.device_id
    # About 8 s of (sleep ...), longer than the session's 5 s watchdog and one heartbeat.
    source = "(define (tick n) (if (= n 0) 'done (begin (sleep 250) (tick (- n 1)))))\n(tick 32)"
    mark = deploy(mqtt, device, "ticker", source)
    statuses = program_statuses(mqtt, device, mark, "completed", timeout=40)
    assert ran(statuses, "completed") and statuses[-1]["result"] == "done", statuses
    readings = [m.json() for m in mqtt.collect(contract.sensors_topic(device), since=mark)]
    seqs = [r["seq"] for r in readings]
    assert len(readings) >= 5, f"{len(readings)} readings while the program ran"
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"gaps in seq: {seqs}"
    assert mqtt.collect(contract.health_topic(device), since=mark), "no heartbeat while the program ran"
    assert restarts_since(mqtt, device, mark) == []
