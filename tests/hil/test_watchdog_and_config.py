"""Watchdog resets, the boot-loop guard and remote configuration, through MQTT and the serial port only."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hil import contract
from hil.bme280 import Environment
from hil.mqtt import ObserverTimeout

pytestmark = [pytest.mark.hil, pytest.mark.gate_e2e]


def online_after(mqtt, device: str, mark: int, timeout: float = 40) -> dict:
    return mqtt.wait_for(
        contract.status_topic(device), lambda m: m.json().get("state") == "online", since=mark, timeout=timeout
    )[0].json()


def health_after(mqtt, device: str, mark: int, when: Callable[[dict], bool] = lambda h: True, timeout: float = 40) -> dict:
    health = mqtt.wait_for(contract.health_topic(device), lambda m: when(m.json()), since=mark, timeout=timeout)[0].json()
    assert not contract.validate_payload("health", health), health
    return health


def health_now(mqtt, device: str) -> dict:
    """The latest health: on the `report` command (§5), or a heartbeat that came first."""
    mark = mqtt.mark()
    command(mqtt, device, {"cmd": "report"})
    return health_after(mqtt, device, mark, timeout=15)


def command(mqtt, device: str, request: dict) -> dict:
    """Send a command and return its ack, which must say ok."""
    mark = mqtt.mark()
    mqtt.publish(contract.command_topic(device), request)
    ack = mqtt.wait_for(
        contract.command_ack_topic(device), lambda m: m.json()["cmd"] == request["cmd"], since=mark, timeout=15
    )[0].json()
    assert ack == {"cmd": request["cmd"], "ok": True}, ack
    return ack


def alert_after(mqtt, device: str, code: str, mark: int, timeout: float = 30) -> dict:
    alert = mqtt.wait_for(contract.alerts_topic(device), lambda m: m.json()["code"] == code, since=mark, timeout=timeout)[0].json()
    assert not contract.validate_payload("alerts", alert, device_id=device), alert
    return alert


@pytest.fixture
def forget_crashes(dut, mqtt, rig, request) -> Iterator[None]:
    """The boot-loop guard counts watchdog and panic resets until the next power-on: a test
    that causes them power-cycles the board afterwards, so later tests start from none."""
    power = request.getfixturevalue("power") if "power_control" in rig.capabilities else None
    yield
    if power is not None:
        mark = mqtt.mark()
        power.cycle()
        online_after(mqtt, dut.device_id, mark)


# -- watchdog and resets (§7) --------------------------------------------------------------


@pytest.mark.requires("test_hooks")
@pytest.mark.guards("no_watchdog")
def test_a_hung_task_ends_in_a_task_watchdog_reset(dut, mqtt, console, forget_crashes) -> None:
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


@pytest.mark.requires("sensor_emulation")
@pytest.mark.guards("no_watchdog", "restart_count_stuck")
def test_an_i2c_bus_held_low_ends_in_a_task_watchdog_reset(dut, mqtt, console, sensor, forget_crashes) -> None:
    before = health_now(mqtt, dut.device_id)
    mark = mqtt.mark()
    sensor.fault("bus_held_low")  # the sensor task blocks in its next I2C transfer
    console.expect(contract.TASK_WDT, timeout=30)
    sensor.fault("bus_held_low", active=False)  # else the next boot hangs on the bus again
    assert online_after(mqtt, dut.device_id, mark)["reset_reason"] == "TASK_WDT"
    after = health_after(mqtt, dut.device_id, mark, lambda h: h["reset_reason"] == "TASK_WDT")
    assert after["restart_count"] == before["restart_count"] + 1
    assert after["safe_mode"] is False
    alert_after(mqtt, dut.device_id, "watchdog_reset", mark)
    mqtt.wait_for(contract.sensors_topic(dut.device_id), since=mark, timeout=20)  # the sensor is back


@pytest.mark.requires("test_hooks", "power_control")
@pytest.mark.parametrize(
    ("trigger", "reason"),
    [
        pytest.param("power cycle", "POWERON", id="poweron"),
        pytest.param("reset command", "SW", id="sw"),
        pytest.param("hung task", "TASK_WDT", id="task_wdt"),
        pytest.param("crash command", "PANIC", id="panic", marks=pytest.mark.guards("restart_count_stuck")),
    ],
)
def test_the_reset_reason_on_the_serial_port_matches_health(dut, mqtt, console, power, request, trigger, reason) -> None:
    device = dut.device_id
    if reason in ("TASK_WDT", "PANIC"):
        request.getfixturevalue("forget_crashes")
    before = health_now(mqtt, device)
    mark, since = mqtt.mark(), console.mark()
    if trigger == "power cycle":
        power.cycle()
    elif trigger == "reset command":
        command(mqtt, device, {"cmd": "reset"})
    elif trigger == "hung task":
        command(mqtt, device, {"cmd": "hang", "task": "sensor"})
    else:
        command(mqtt, device, {"cmd": "crash"})
    rom = console.expect(contract.ROM_RESET, timeout=30, since=since)
    status = online_after(mqtt, device, mark)
    health = health_after(mqtt, device, mark, lambda h: h["boot_count"] == status["boot_count"])
    assert status["reset_reason"] == health["reset_reason"] == reason
    assert reason in contract.RESET_REASONS_BY_ROM_RESET[rom["name"]], f"serial: {rom[0]}, health: {reason}"
    serial = "\n".join(console.lines(since))
    assert bool(contract.PANIC.search(serial)) == (reason == "PANIC"), serial[-2000:]
    assert bool(contract.TASK_WDT.search(serial)) == (reason == "TASK_WDT"), serial[-2000:]
    if reason in ("PANIC", "TASK_WDT"):
        assert health["restart_count"] == before["restart_count"] + 1
    if reason == "POWERON":
        assert health["restart_count"] == before["restart_count"]


@pytest.mark.requires("test_hooks", "power_control")
@pytest.mark.guards("no_safe_mode")
def test_quick_repeated_crashes_enter_safe_mode_and_a_power_cycle_leaves_it(dut, mqtt, power, forget_crashes) -> None:
    device = dut.device_id
    mark = mqtt.mark()
    power.cycle()  # the guard counts crashes since power-on: start from none
    online_after(mqtt, device, mark)
    for crash in range(1, contract.BOOT_LOOP_RESETS + 1):
        mark = mqtt.mark()
        command(mqtt, device, {"cmd": "crash"})
        status = online_after(mqtt, device, mark)
        health = health_after(mqtt, device, mark, lambda h, boot=status["boot_count"]: h["boot_count"] == boot)
        assert health["reset_reason"] == "PANIC"
        assert health["safe_mode"] is (crash == contract.BOOT_LOOP_RESETS), f"after {crash} crash(es): {health}"
    assert alert_after(mqtt, device, "safe_mode", mark)["level"] == "critical"
    quiet = mqtt.mark()  # safe mode: broker and OTA only, no sensor task
    with pytest.raises(ObserverTimeout):
        mqtt.wait_for(contract.sensors_topic(device), since=quiet, timeout=5)
    mark = mqtt.mark()
    power.cycle()
    status = online_after(mqtt, device, mark)
    health = health_after(mqtt, device, mark, lambda h: h["boot_count"] == status["boot_count"])
    assert health["reset_reason"] == "POWERON" and health["safe_mode"] is False
    mqtt.wait_for(contract.sensors_topic(device), since=mark, timeout=20)


# -- configuration (§5) --------------------------------------------------------------------


def readings_after(mqtt, device: str, mark: int, count: int = 3, boot: int | None = None) -> list[dict]:
    """``count`` readings after ``mark`` (of boot ``boot`` only, if given), all of one boot."""
    readings = [
        m.json()
        for m in mqtt.wait_for(
            contract.sensors_topic(device),
            lambda m: boot is None or m.json()["boot_count"] == boot,
            since=mark,
            count=count,
            timeout=30,
        )
    ]
    assert len({r["boot_count"] for r in readings}) == 1, f"the device restarted: {readings}"
    return readings


def interval_s(readings: list[dict]) -> float:
    stamps = [r["timestamp"] for r in readings]
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1)


@pytest.mark.requires("sensor_emulation", "power_control")
@pytest.mark.guards("config_not_persisted")
def test_a_valid_config_is_applied_from_the_next_boot_and_survives_a_power_cycle(
    restore_firmware, mqtt, sensor, power
) -> None:
    dut = restore_firmware
    env = Environment(20.0, 45.0, 1000.0)
    sensor.set(env)
    update = {"measurement_interval_s": 2, "calibration_offset_temp": 3.0}  # provisioned: 1 s, 0.0
    mark = mqtt.mark()
    mqtt.publish(contract.config_update_topic(dut.device_id), update)
    status = mqtt.wait_for(contract.config_status_topic(dut.device_id), since=mark, timeout=10)[0].json()
    assert status["ok"] is True and not contract.validate_payload("config_status", status), status
    assert set(status.get("applied", update)) == set(update)
    status = online_after(mqtt, dut.device_id, mark)
    assert status["reset_reason"] == "SW"
    for when in ("after the update", "after a power cycle"):
        readings = readings_after(mqtt, dut.device_id, mark, boot=status["boot_count"])
        assert abs(interval_s(readings) - 2.0) <= 0.5, f"{when}: readings every {interval_s(readings):.2f} s"
        assert abs(readings[-1]["temperature_c"] - (env.temperature_c + 3.0)) <= contract.TEMPERATURE_ACCURACY_C, when
        if when == "after the update":
            mark = mqtt.mark()
            power.cycle()
            status = online_after(mqtt, dut.device_id, mark)
            assert status["reset_reason"] == "POWERON"


@pytest.mark.parametrize(
    "update",
    [
        pytest.param({"measurement_interval_s": 0}, id="zero-interval", marks=pytest.mark.guards("config_unvalidated")),
        pytest.param({"watchdog_timeout_s": "5"}, id="string"),
        pytest.param({"log_level": "chatty"}, id="bad-enum"),
        pytest.param({"colour": "red"}, id="unknown-key"),
        pytest.param({"heartbeat_interval_s": 86401}, id="above-range"),
        pytest.param({"watchdog_timeout_s": 1}, id="watchdog-below-range"),
        pytest.param({"ota_selftest_timeout_s": 601}, id="selftest-above-range"),
        pytest.param({"calibration_offset_temp": -10.5}, id="calibration-below-range"),
        pytest.param({"measurement_interval_s": True}, id="boolean-for-integer"),
        pytest.param({"status_report_interval_s": 2.5}, id="float-for-integer"),
        pytest.param({"brokers": ["mqtt://127.0.0.1:1883"] * (contract.MAX_BROKERS + 1)}, id="too-many-brokers"),
        pytest.param({"brokers": ["http://127.0.0.1:1883"]}, id="bad-broker-uri"),
        pytest.param(
            {"measurement_interval_s": 2, "colour": "red"},
            id="valid-with-invalid",
            marks=pytest.mark.guards("config_unvalidated"),
        ),
        pytest.param(b'{"measurement_interval_s": 2', id="malformed-json"),
        pytest.param(b"[2]", id="not-an-object"),
    ],
)
def test_an_invalid_config_is_rejected_and_changes_nothing(dut, mqtt, update) -> None:
    mark = mqtt.mark()
    payload = update if isinstance(update, bytes) else json.dumps(update).encode()
    mqtt.publish(contract.config_update_topic(dut.device_id), payload)
    status = mqtt.wait_for(contract.config_status_topic(dut.device_id), since=mark, timeout=10)[0].json()
    assert status["ok"] is False, f"accepted {update}"
    assert not contract.validate_payload("config_status", status) and status["error"], status
    assert alert_after(mqtt, dut.device_id, "config_rejected", mark, timeout=10)["level"] == "warning"
    readings_after(mqtt, dut.device_id, mqtt.mark(), count=2)
    restarts = [m for m in mqtt.collect(contract.status_topic(dut.device_id), since=mark) if m.json()["state"] == "online"]
    assert restarts == [], "the device restarted on a rejected config"


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
# Whatever else an object holds, a key the contract does not name makes it invalid as a whole.
_invalid_objects = st.builds(
    lambda known, key, value: {**known, key: value},
    st.dictionaries(st.sampled_from(contract.CONFIG_KEYS), _json, max_size=3),
    st.text(min_size=1, max_size=12).filter(lambda key: key not in contract.CONFIG_KEYS),
    _json,
)


def test_arbitrary_config_payloads_never_crash_the_device(dut, mqtt) -> None:
    device = dut.device_id
    mark = mqtt.mark()
    boot = readings_after(mqtt, device, mark, count=1)[0]["boot_count"]

    @settings(settings.get_profile("rig"))  # tests/hil/conftest.py: few examples, derandomized
    @given(payload=_invalid_objects.map(lambda o: json.dumps(o).encode()) | st.binary(max_size=64))
    def answered(payload: bytes) -> None:
        sent = mqtt.mark()
        mqtt.publish(contract.config_update_topic(device), payload)
        status = mqtt.wait_for(contract.config_status_topic(device), since=sent, timeout=10)[0].json()
        assert status["ok"] is False and not contract.validate_payload("config_status", status), (payload, status)

    answered()
    assert readings_after(mqtt, device, mqtt.mark(), count=2)[0]["boot_count"] == boot, "the device restarted"
    restarts = [m for m in mqtt.collect(contract.status_topic(device), since=mark) if m.json()["state"] == "online"]
    assert restarts == [], "the device restarted on a config payload"
