"""hil.device.contract: topics, payload schemas and log patterns of DEVICE_CONTRACT.md, pinned."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hil.device import contract as c
from hil.device.contract import PAYLOAD_SCHEMAS, PayloadKind, validate_payload

DEV = "c3-0001"

# ---------------------------------------------------------------------------------------
# Topics
# ---------------------------------------------------------------------------------------


def test_topic_builders() -> None:
    assert c.sensors_topic(DEV) == "esp32/c3-0001/sensors"
    assert c.health_topic(DEV) == "esp32/c3-0001/health"
    assert c.metrics_topic(DEV) == "esp32/c3-0001/metrics"
    assert c.alerts_topic(DEV) == "esp32/c3-0001/alerts"
    assert c.logs_topic(DEV) == "esp32/c3-0001/logs"
    assert c.status_topic(DEV) == "esp32/c3-0001/status"
    assert c.command_topic(DEV) == "esp32/c3-0001/command"
    assert c.command_ack_topic(DEV) == "esp32/c3-0001/command/ack"
    assert c.emergency_topic(DEV) == "esp32/c3-0001/emergency"
    assert c.config_update_topic(DEV) == "config/update/c3-0001"
    assert c.config_status_topic(DEV) == "esp32/c3-0001/config/status"
    assert c.ota_update_topic(DEV) == "ota/update/c3-0001"
    assert c.ota_status_topic(DEV) == "esp32/c3-0001/ota/status"
    assert c.programs_deploy_topic(DEV) == "programs/c3-0001/deploy"
    assert c.programs_status_topic(DEV) == "esp32/c3-0001/programs/status"
    assert c.program_publish_topic(DEV, "temp") == "esp32/c3-0001/programs/temp"
    assert c.program_publish_topic(DEV, "a/b") == "esp32/c3-0001/programs/a/b"
    assert c.device_publish_prefix(DEV) == "esp32/c3-0001/"


def test_subscriptions_are_exactly_the_inbound_topics() -> None:
    assert c.device_subscriptions(DEV) == (
        "esp32/c3-0001/command",
        "esp32/c3-0001/emergency",
        "config/update/c3-0001",
        "ota/update/c3-0001",
        "programs/c3-0001/deploy",
    )


def test_published_topics_stay_under_the_prefix() -> None:
    published = [
        c.sensors_topic,
        c.health_topic,
        c.metrics_topic,
        c.alerts_topic,
        c.logs_topic,
        c.status_topic,
        c.command_ack_topic,
        c.config_status_topic,
        c.ota_status_topic,
        c.programs_status_topic,
    ]
    for builder in published:
        topic = builder(DEV)
        assert topic.startswith(c.device_publish_prefix(DEV))
        assert topic not in c.device_subscriptions(DEV)


@pytest.mark.parametrize("bad", ["", "a/b", "dev+", "dev#", "x\0y"])
def test_ids_that_break_topics_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="device id"):
        c.sensors_topic(bad)
    with pytest.raises(ValueError, match="device id"):
        c.config_update_topic(bad)


@pytest.mark.parametrize("bad", ["", "a+", "#", "a//b", "/a", "a/"])
def test_program_suffixes_without_wildcards_or_empty_levels(bad: str) -> None:
    with pytest.raises(ValueError, match="suffix"):
        c.program_publish_topic(DEV, bad)


@given(st.text(alphabet=st.characters(blacklist_characters="/+#\0"), min_size=1))
def test_any_usable_id_builds_distinct_topics(device_id: str) -> None:
    subs = c.device_subscriptions(device_id)
    assert len(set(subs)) == 5
    assert all(device_id in topic for topic in subs)


# ---------------------------------------------------------------------------------------
# Names and numbers
# ---------------------------------------------------------------------------------------


def test_names_of_the_contract() -> None:
    assert c.RESET_REASONS == (
        "POWERON",
        "SW",
        "PANIC",
        "INT_WDT",
        "TASK_WDT",
        "WDT",
        "BROWNOUT",
        "DEEPSLEEP",
        "EXT",
        "USB",
    )
    assert set(c.ALERT_CODES) == {
        "sensor_calibration",
        "sensor_out_of_range",
        "sensor_failure",
        "sensor_recovered",
        "low_memory",
        "watchdog_reset",
        "safe_mode",
        "config_rejected",
        "ota_rolled_back",
    }
    assert c.ALERT_LEVELS == ("info", "warning", "critical")
    assert set(c.ALERT_LEVEL_BY_CODE.values()) <= set(c.ALERT_LEVELS)
    assert c.ALERT_LEVEL_BY_CODE["sensor_failure"] == "critical"
    assert c.ALERT_LEVEL_BY_CODE["sensor_recovered"] == "info"
    assert c.ALERT_LEVEL_BY_CODE["safe_mode"] == "critical"
    assert set(c.OTA_STATES) == {
        "downloading",
        "verifying",
        "rebooting",
        "success",
        "rejected",
        "failed",
        "rolled_back",
    }
    assert set(c.PROGRAM_STATES) == {"accepted", "running", "completed", "failed", "rejected"}
    assert c.LOG_LEVELS == ("error", "warn", "info", "debug")


def test_accuracy_and_ranges() -> None:
    assert (c.TEMPERATURE_ACCURACY_C, c.HUMIDITY_ACCURACY_PCT, c.PRESSURE_ACCURACY_HPA) == (
        1.0,
        3.0,
        1.0,
    )
    assert c.TEMPERATURE_RANGE_C == (-40.0, 85.0)
    assert c.HUMIDITY_RANGE_PCT == (0.0, 100.0)
    assert c.PRESSURE_RANGE_HPA == (300.0, 1100.0)


def test_nvs_names() -> None:
    assert c.DEVICE_NAMESPACE == "device"
    assert c.CONFIG_NAMESPACE == "config"
    assert c.SECRET_KEYS == ("wifi_pass", "mqtt_pass", "client_key")
    assert set(c.SECRET_KEYS) <= set(c.PROVISIONING_KEYS)
    assert set(c.PEM_KEYS) <= set(c.PROVISIONING_KEYS)
    assert len(c.PROVISIONING_KEYS) == 10
    # Every NVS key fits NVS's 15 bytes, and none collides with a provisioning key.
    assert set(c.CONFIG_NVS_KEYS) == set(c.CONFIG_KEYS)
    assert all(len(k.encode()) <= 15 for k in (*c.CONFIG_NVS_KEYS.values(), *c.PROVISIONING_KEYS))
    assert not set(c.CONFIG_NVS_KEYS.values()) & set(c.PROVISIONING_KEYS)
    assert len(set(c.CONFIG_NVS_KEYS.values())) == len(c.CONFIG_NVS_KEYS)


def test_config_settings() -> None:
    s = c.CONFIG_INT_SETTINGS
    assert (s["measurement_interval_s"].minimum, s["measurement_interval_s"].maximum) == (1, 86400)
    assert (s["watchdog_timeout_s"].minimum, s["watchdog_timeout_s"].maximum) == (2, 3600)
    assert (s["sensor_timeout_s"].minimum, s["ota_selftest_timeout_s"].maximum) == (5, 600)
    assert [x.default for x in s.values()] == [10, 60, 120, 600, 600, 60]
    assert c.CALIBRATION_OFFSET_RANGE == (-10.0, 10.0)


@pytest.mark.parametrize(
    ("uri", "parts"),
    [
        ("mqtt://broker:1883", ("mqtt", "broker", 1883, False)),
        ("mqtts://broker.lab.example:8883", ("mqtts", "broker.lab.example", 8883, True)),
        ("mqtt://127.0.0.1:1", ("mqtt", "127.0.0.1", 1, False)),
        ("mqtts://[::1]:65535", ("mqtts", "[::1]", 65535, True)),
    ],
)
def test_broker_uris(uri: str, parts: tuple[str, str, int, bool]) -> None:
    parsed = c.parse_broker_uri(uri)
    assert parsed is not None
    assert (parsed.scheme, parsed.host, parsed.port, parsed.tls) == parts
    assert str(parsed) == uri


@pytest.mark.parametrize(
    "uri",
    [
        "mqtt://broker",
        "http://broker:80",
        "mqtt://broker:0",
        "mqtt://broker:65536",
        "mqtt://user:pw@broker:1883",
        "mqtt://broker:1883/path",
        "mqtt://-bad:1883",
        " mqtt://broker:1883",
        "",
    ],
)
def test_malformed_broker_uris(uri: str) -> None:
    assert c.parse_broker_uri(uri) is None


# ---------------------------------------------------------------------------------------
# Serial-log milestones
# ---------------------------------------------------------------------------------------


def _groups(pattern: re.Pattern[str], line: str) -> dict[str, str | Any]:
    match = pattern.search(line)
    assert match is not None, f"{pattern.pattern!r} does not match {line!r}"
    return match.groupdict()


def test_log_milestones() -> None:
    assert _groups(c.SENSOR_FOUND, "I (1234) sensor: bme280 id=0x60 addr=0x76")["ms"] == "1234"
    assert (
        _groups(c.SENSOR_ERROR, "E (88) sensor: chip id 0x58 is not a BME280")["message"]
        == "chip id 0x58 is not a BME280"
    )
    assert _groups(c.WIFI_CONNECTED, "I (2345) wifi: connected ssid=lab-ap rssi=-57") == {
        "ms": "2345",
        "ssid": "lab-ap",
        "rssi": "-57",
    }
    assert (
        _groups(c.MQTT_CONNECTED, "I (3456) mqtt: connected uri=mqtts://broker.local:8883")["uri"]
        == "mqtts://broker.local:8883"
    )
    assert _groups(
        c.MQTT_DISCONNECTED, "W (4567) mqtt: disconnected reason=tcp_timeout retry_ms=2000"
    ) == {"ms": "4567", "reason": "tcp_timeout", "retry_ms": "2000"}
    assert _groups(c.OTA_INFO, "I (10) ota: downloading 1.2.0")["message"] == "downloading 1.2.0"
    assert _groups(c.OTA_ERROR, "E (11) ota: sha256 mismatch")["message"] == "sha256 mismatch"
    assert c.OTA_MARKED_VALID.search("I (12) ota: app marked valid")
    assert (
        _groups(c.OTA_ROLLBACK, "W (13) ota: rollback detected, 1.2.0 failed")["detail"]
        == "detected, 1.2.0 failed"
    )
    assert c.TASK_WDT.search(
        "E (5000) task_wdt: Task watchdog got triggered. The following tasks/users did not "
        "reset the watchdog in time:"
    )
    assert c.NOT_PROVISIONED.search("E (301) app: not provisioned")


def test_log_milestones_do_not_overmatch() -> None:
    assert not c.SENSOR_FOUND.search("I (1) sensor: bme280 id=0x58 addr=0x76")
    assert not c.SENSOR_ERROR.search("W (1) sensor: slow")
    assert not c.OTA_INFO.search("E (1) ota: failed")
    assert not c.OTA_ERROR.search("I (1) ota: app marked valid")
    assert not c.MQTT_DISCONNECTED.search("W (1) mqtt: disconnected reason=x")
    assert not c.WIFI_CONNECTED.search("I (1) wifi: connected ssid=a rssi=strong")
    assert _groups(c.WIFI_WARNING, "W (7000) wifi: connect failed ssid=lab reason=auth_fail") == {
        "level": "W",
        "ms": "7000",
        "message": "connect failed ssid=lab reason=auth_fail",
    }
    assert not c.WIFI_WARNING.search("I (1) wifi: connected ssid=a rssi=-50")


def test_app_information_lines() -> None:
    # IDF >= 5.3 (app_init) and <= 5.2 (cpu_start), as in SPEC_FACTS.md §5.
    assert _groups(c.APP_VERSION, "I (172) app_init: App version:      1.4.2")["version"] == "1.4.2"
    assert _groups(c.APP_VERSION, "I (172) cpu_start: App version:      v2")["version"] == "v2"
    assert _groups(c.PROJECT_NAME, "I (167) app_init: Project name:     blink")["name"] == "blink"


def test_rom_reset_line() -> None:
    assert _groups(c.ROM_RESET, "rst:0xc (RTC_SW_CPU_RST),boot:0xc (SPI_FAST_FLASH_BOOT)") == {
        "code": "c",
        "name": "RTC_SW_CPU_RST",
    }
    assert _groups(c.ROM_RESET, "rst:0x1 (POWERON),boot:0x5 (DOWNLOAD(USB/UART0/1))") == {
        "code": "1",
        "name": "POWERON",
    }
    assert _groups(c.ROM_RESET, "rst:0x15 (USB_UART_CHIP_RESET),boot:0x8")["code"] == "15"


def test_rom_reset_names_and_the_reset_reasons_they_allow() -> None:
    assert c.RESET_REASONS_BY_ROM_RESET["POWERON"] == ("POWERON",)
    assert set(c.RESET_REASONS_BY_ROM_RESET["RTC_SW_CPU_RST"]) == {"SW", "PANIC", "INT_WDT", "TASK_WDT", "BROWNOUT"}
    assert c.RESET_REASONS_BY_ROM_RESET["TG0WDT_SYS_RST"] == ("TASK_WDT",)
    assert all(set(r) <= set(c.RESET_REASONS) for r in c.RESET_REASONS_BY_ROM_RESET.values())


def test_panic_line() -> None:
    line = "Guru Meditation Error: Core  0 panic'ed (Load access fault). Exception was unhandled.\r"
    assert _groups(c.PANIC, line) == {"core": "0", "cause": "Load access fault"}
    assert c.PANIC.search("abort() was called at PC 0x42000000 on core 0") is None


def test_coloured_lines_match_without_the_escape_codes() -> None:
    line = "\x1b[0;31mE (77) sensor: i2c nack\x1b[0m\r"
    assert _groups(c.SENSOR_ERROR, line)["message"] == "i2c nack"
    assert _groups(c.LOG_LINE, line) == {
        "level": "E",
        "ms": "77",
        "tag": "sensor",
        "message": "i2c nack",
    }


# ---------------------------------------------------------------------------------------
# Payload schemas
# ---------------------------------------------------------------------------------------

GOOD: dict[PayloadKind, dict[str, Any]] = {
    PayloadKind.SENSORS: {
        "device_id": DEV,
        "boot_count": 3,
        "seq": 0,
        "timestamp": 1_717_000_000.25,
        "temperature_c": 22.4,
        "humidity_pct": 45,
        "pressure_hpa": 1013.2,
    },
    PayloadKind.HEALTH: {
        "uptime_s": 120,
        "free_heap": 180_000,
        "min_free_heap": 150_000,
        "wifi_rssi": -60,
        "cpu_temp_c": 41.5,
        "last_sensor_reading_age_s": None,
        "version": "1.0.0",
        "reset_reason": "POWERON",
        "boot_count": 1,
        "restart_count": 0,
        "dropped_readings": 0,
        "safe_mode": False,
    },
    PayloadKind.METRICS: {
        "device_id": DEV,
        "timestamp": 1_717_000_000,
        "metrics": {
            "cpu_usage_percent": 12.5,
            "memory_usage_bytes": 90_000,
            "network_latency_ms": 8.2,
            "sensor_read_time_ms": 11,
            "mqtt_publish_time_ms": 3.5,
            "wifi_signal_strength_dbm": -60,
            "uptime_seconds": 120,
            "restart_count": 0,
            "error_count": 2,
        },
    },
    PayloadKind.ALERTS: {
        "level": "critical",
        "code": "sensor_failure",
        "message": "no good reading for 600 s",
        "device_id": DEV,
        "timestamp": 1_717_000_000,
    },
    PayloadKind.LOGS: {"level": "warning", "tag": "mqtt", "message": "slow", "timestamp": 5},
    PayloadKind.STATUS_ONLINE: {
        "state": "online",
        "version": "1.0.0",
        "reset_reason": "TASK_WDT",
        "boot_count": 7,
    },
    PayloadKind.STATUS_OFFLINE: {"state": "offline"},
    PayloadKind.COMMAND_ACK: {"cmd": "report", "ok": True},
    PayloadKind.CONFIG_STATUS: {"ok": True, "applied": {"measurement_interval_s": 2}},
    PayloadKind.OTA_STATUS: {"state": "rejected", "version": "0.9.0", "reason": "downgrade"},
    PayloadKind.PROGRAMS_STATUS: {"name": "avg", "state": "completed", "result": [1, "x"]},
}


def test_every_kind_has_a_schema_and_an_example() -> None:
    assert set(PAYLOAD_SCHEMAS) == set(PayloadKind) == set(GOOD)


@pytest.mark.parametrize("kind", list(PayloadKind))
def test_good_examples_pass(kind: PayloadKind) -> None:
    assert validate_payload(kind, GOOD[kind]) == []
    # Raw MQTT payloads (bytes or str) are decoded first.
    assert validate_payload(kind, json.dumps(GOOD[kind]).encode()) == []
    assert validate_payload(kind.value, json.dumps(GOOD[kind])) == []


@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        (PayloadKind.COMMAND_ACK, {"cmd": "explode", "ok": False, "error": "unknown command"}),
        (PayloadKind.COMMAND_ACK, {"cmd": None, "ok": False, "error": "malformed JSON"}),
        (PayloadKind.CONFIG_STATUS, {"ok": False, "error": "unknown key 'x'"}),
        (PayloadKind.OTA_STATUS, {"state": "rolled_back", "version": "1.2.0"}),
        (PayloadKind.OTA_STATUS, {"state": "downloading", "version": "1.2.0"}),
        (PayloadKind.PROGRAMS_STATUS, {"name": "p", "state": "failed", "error": "budget"}),
        (PayloadKind.PROGRAMS_STATUS, {"name": "p", "state": "completed", "result": None}),
        (PayloadKind.PROGRAMS_STATUS, {"name": "p", "state": "accepted"}),
        (PayloadKind.LOGS, {"level": "error", "tag": "ota", "message": "x", "timestamp": 1.5}),
        (PayloadKind.CONFIG_STATUS, {"ok": True, "applied": ["brokers", "log_level"]}),
        (PayloadKind.CONFIG_STATUS, {"ok": True}),
        (PayloadKind.OTA_STATUS, {"state": "rejected", "version": None, "reason": "no version"}),
        (PayloadKind.PROGRAMS_STATUS, {"name": None, "state": "rejected", "error": "too large"}),
        (PayloadKind.HEALTH, {**GOOD[PayloadKind.HEALTH], "wifi_rssi": None}),
    ],
)
def test_other_good_payloads(kind: PayloadKind, payload: dict[str, Any]) -> None:
    assert validate_payload(kind, payload) == []


def _required(kind: PayloadKind) -> list[tuple[PayloadKind, str]]:
    return [(kind, name) for name, f in PAYLOAD_SCHEMAS[kind].fields.items() if f.required]


@pytest.mark.parametrize(
    ("kind", "name"), [pair for kind in PayloadKind for pair in _required(kind)]
)
def test_missing_required_field(kind: PayloadKind, name: str) -> None:
    payload = dict(GOOD[kind])
    del payload[name]
    assert f"missing field '{name}'" in validate_payload(kind, payload)


@pytest.mark.parametrize("kind", list(PayloadKind))
def test_unknown_fields_are_reported(kind: PayloadKind) -> None:
    payload = {**GOOD[kind], "wifi_pass": "hunter2"}
    assert validate_payload(kind, payload) == ["unknown field 'wifi_pass'"]


@pytest.mark.parametrize(
    ("kind", "field", "value", "expected"),
    [
        (PayloadKind.SENSORS, "seq", True, "field 'seq' must be integer, got boolean"),
        (PayloadKind.SENSORS, "seq", 1.0, "field 'seq' must be integer, got number"),
        (PayloadKind.SENSORS, "temperature_c", "22", "must be number, got string"),
        (
            PayloadKind.SENSORS,
            "temperature_c",
            85.5,
            "field 'temperature_c' = 85.5 is outside -40..85",
        ),
        (PayloadKind.SENSORS, "humidity_pct", -0.1, "is outside 0..100"),
        (PayloadKind.SENSORS, "pressure_hpa", 299, "is outside 300..1100"),
        (PayloadKind.SENSORS, "seq", -1, "field 'seq' = -1 is outside 0..∞"),
        (PayloadKind.SENSORS, "device_id", None, "field 'device_id' must be string, got null"),
        (PayloadKind.HEALTH, "reset_reason", "ESP_RST_SW", "is not one of POWERON, SW"),
        (PayloadKind.HEALTH, "safe_mode", 0, "field 'safe_mode' must be boolean, got integer"),
        (PayloadKind.HEALTH, "wifi_rssi", 3, "field 'wifi_rssi' = 3 is outside -127..0"),
        (PayloadKind.HEALTH, "uptime_s", float("inf"), "field 'uptime_s' is not a finite number"),
        (PayloadKind.ALERTS, "level", "fatal", "field 'level' = \"fatal\" is not one of info"),
        (PayloadKind.ALERTS, "code", "oops", "field 'code' = \"oops\" is not one of"),
        (
            PayloadKind.LOGS,
            "level",
            "info",
            "field 'level' = \"info\" is not one of error, warning",
        ),
        (PayloadKind.STATUS_ONLINE, "state", "offline", "is not one of online"),
        (PayloadKind.METRICS, "metrics", [], "field 'metrics' must be object, got array"),
        (PayloadKind.OTA_STATUS, "state", "done", "field 'state' = \"done\" is not one of"),
    ],
)
def test_wrong_values(kind: PayloadKind, field: str, value: object, expected: str) -> None:
    problems = validate_payload(kind, {**GOOD[kind], field: value})
    assert len(problems) == 1, problems
    assert expected in problems[0]


def test_nested_metrics_are_checked() -> None:
    payload = copy.deepcopy(GOOD[PayloadKind.METRICS])
    payload["metrics"]["cpu_usage_percent"] = 101
    del payload["metrics"]["error_count"]
    payload["metrics"]["fan_rpm"] = 3
    assert sorted(validate_payload(PayloadKind.METRICS, payload)) == [
        "field 'metrics.cpu_usage_percent' = 101 is outside 0..100",
        "missing field 'metrics.error_count'",
        "unknown field 'metrics.fan_rpm'",
    ]


def test_config_status_applied_is_checked() -> None:
    payload = {"ok": True, "applied": {"watchdog_timeout_s": 1, "colour": "red"}}
    assert sorted(validate_payload(PayloadKind.CONFIG_STATUS, payload)) == [
        "field 'applied.watchdog_timeout_s' = 1 is outside 2..3600",
        "unknown field 'applied.colour'",
    ]
    names = {"ok": True, "applied": ["log_level", "colour", 3]}
    assert validate_payload(PayloadKind.CONFIG_STATUS, names) == [
        "field 'applied[1]' = \"colour\" is not one of " + ", ".join(c.CONFIG_KEYS),
        "field 'applied[2]' must be string, got integer",
    ]


@pytest.mark.parametrize(
    ("kind", "payload", "expected"),
    [
        (
            PayloadKind.COMMAND_ACK,
            {"cmd": "reset", "ok": False},
            "missing field 'error' when 'ok' is false",
        ),
        (
            PayloadKind.COMMAND_ACK,
            {"cmd": "reset", "ok": True, "error": ""},
            "field 'error' must be absent when 'ok' is true",
        ),
        (
            PayloadKind.CONFIG_STATUS,
            {"ok": False, "error": "x", "applied": {}},
            "field 'applied' must be absent when 'ok' is false",
        ),
        (
            PayloadKind.OTA_STATUS,
            {"state": "failed", "version": "2"},
            "missing field 'reason' when 'state' is \"failed\"",
        ),
        (
            PayloadKind.PROGRAMS_STATUS,
            {"name": "p", "state": "completed"},
            "missing field 'result' when 'state' is \"completed\"",
        ),
        (
            PayloadKind.PROGRAMS_STATUS,
            {"name": "p", "state": "running", "result": 1},
            "field 'result' must be absent when 'state' is \"running\"",
        ),
        (
            PayloadKind.ALERTS,
            {**GOOD[PayloadKind.ALERTS], "level": "info"},
            'field \'level\' = "info" must be "critical" when \'code\' is "sensor_failure"',
        ),
    ],
)
def test_rules_between_fields(kind: PayloadKind, payload: dict[str, Any], expected: str) -> None:
    assert validate_payload(kind, payload) == [expected]


def test_json_true_is_not_ok_false() -> None:
    # A wrongly typed `ok` is reported once, as a type error, not through the rules.
    assert validate_payload(PayloadKind.COMMAND_ACK, {"cmd": "x", "ok": 0}) == [
        "field 'ok' must be boolean, got integer"
    ]


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"\xff", "payload is not UTF-8"),
        (b"{", "payload is not valid JSON"),
        ('{"state": NaN}', "payload is not valid JSON"),
        (b"[1]", "payload must be a JSON object, got array"),
        ("null", "payload must be a JSON object, got null"),
        (42, "payload must be a JSON object, got integer"),
        (object(), "payload must be a JSON object, got object"),
    ],
)
def test_payloads_that_are_not_objects(payload: object, expected: str) -> None:
    problems = validate_payload(PayloadKind.STATUS_OFFLINE, payload)
    assert len(problems) == 1
    assert problems[0].startswith(expected)


def test_device_id_must_match_when_given() -> None:
    good = GOOD[PayloadKind.SENSORS]
    assert validate_payload(PayloadKind.SENSORS, good, device_id=DEV) == []
    assert validate_payload(PayloadKind.SENSORS, good, device_id="other") == [
        'field \'device_id\' = "c3-0001", expected "other"'
    ]


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(list(PayloadKind)),
    st.dictionaries(
        st.sampled_from(["state", "ok", "error", "metrics", "level", "code", "seq", "x"]),
        _json,
        max_size=6,
    )
    | _json,
)
def test_validation_never_raises(kind: PayloadKind, payload: object) -> None:
    problems = validate_payload(kind, payload)
    assert all(isinstance(p, str) and p for p in problems)
