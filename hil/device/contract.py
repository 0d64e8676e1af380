"""The device contract (docs: DEVICE_CONTRACT.md) as data: topics, payloads, log lines, NVS keys.

Both sides import this module: the virtual rig's firmware model publishes what it says, and
the HIL suites assert what it says. A team whose firmware differs in names or formats adapts
this one module instead of the suites.

Payload schemas are closed: a field the contract does not name is reported as a problem,
because an unexpected field is how renamed keys and leaked secrets show up (a secret must
never reach MQTT, §1). A team that publishes extra fields opens a kind by building its
`Schema` with ``closed=False``. The schema language itself is ``hil.device.schema``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from hil.device.schema import ANY_JSON, Condition, Field, JsonType, Schema, check_json, show
from hil.images.layout import LAYOUT

__all__ = [
    "ALERT_CODES",
    "ALERT_LEVELS",
    "ALERT_LEVEL_BY_CODE",
    "ANY_JSON",
    "APP_VERSION",
    "BOOT_LOOP_RESETS",
    "BOOT_LOOP_WINDOW_S",
    "BROKER_FAILOVER_ATTEMPTS",
    "CALIBRATION_OFFSET_RANGE",
    "COMMANDS",
    "CONFIG_INT_SETTINGS",
    "CONFIG_KEYS",
    "CONFIG_NAMESPACE",
    "CONFIG_NVS_KEYS",
    "DEFAULT_CALIBRATION_OFFSET",
    "DEFAULT_LOG_LEVEL",
    "DEVICE_NAMESPACE",
    "EMERGENCY_SHUTDOWN",
    "HUMIDITY_ACCURACY_PCT",
    "HUMIDITY_RANGE_PCT",
    "LOG_LEVELS",
    "LOG_LINE",
    "LOW_MEMORY_THRESHOLD_BYTES",
    "MAX_BROKERS",
    "MIRRORED_LOG_LEVELS",
    "MQTT_CONNECTED",
    "MQTT_DISCONNECTED",
    "MQTT_KEEPALIVE_S",
    "NOT_PROVISIONED",
    "NVS_OFFSET",
    "NVS_SIZE",
    "OFFLINE_QUEUE_LENGTH",
    "OTA_ERROR",
    "OTA_INFO",
    "OTA_MARKED_VALID",
    "OTA_ROLLBACK",
    "OTA_STATES",
    "PANIC",
    "PAYLOAD_SCHEMAS",
    "PEM_KEYS",
    "PRESSURE_ACCURACY_HPA",
    "PRESSURE_RANGE_HPA",
    "PROGRAM_MAX_BYTES",
    "PROGRAM_STATES",
    "PROGRAM_STEP_BUDGET",
    "PROJECT_NAME",
    "PROVISIONING_KEYS",
    "RECONNECT_BACKOFF_S",
    "RECONNECT_JITTER",
    "RESET_REASONS",
    "RESET_REASONS_BY_ROM_RESET",
    "ROM_RESET",
    "SECRET_KEYS",
    "SENSOR_ERROR",
    "SENSOR_FOUND",
    "TASK_WDT",
    "TEMPERATURE_ACCURACY_C",
    "TEMPERATURE_RANGE_C",
    "TEST_HOOK_COMMANDS",
    "TEST_HOOK_HANG",
    "WATCHED_TASKS",
    "WIFI_CONNECTED",
    "WIFI_WARNING",
    "BrokerUri",
    "Condition",
    "Field",
    "IntSetting",
    "JsonType",
    "PayloadKind",
    "Schema",
    "alerts_topic",
    "command_ack_topic",
    "command_topic",
    "config_status_topic",
    "config_update_topic",
    "device_publish_prefix",
    "device_subscriptions",
    "emergency_topic",
    "health_topic",
    "logs_topic",
    "metrics_topic",
    "ota_status_topic",
    "ota_update_topic",
    "parse_broker_uri",
    "program_publish_topic",
    "programs_deploy_topic",
    "programs_status_topic",
    "sensors_topic",
    "status_topic",
    "validate_payload",
]

# ---------------------------------------------------------------------------------------
# Topics (§4, §5, §8)
# ---------------------------------------------------------------------------------------

_TOPIC_FORBIDDEN = frozenset("/+#\0")


def _check_id(device_id: str) -> str:
    # A '/' would move the device into another one's subtree and '+'/'#' are wildcards a
    # publisher may not use: such an id cannot honour "only under esp32/{own id}/" (§8).
    if not device_id or _TOPIC_FORBIDDEN & set(device_id):
        raise ValueError(
            f"device id {device_id!r} cannot be used in MQTT topics: it must be non-empty "
            "and contain none of '/', '+', '#', NUL"
        )
    return device_id


def device_publish_prefix(device_id: str) -> str:
    """Every topic the device publishes starts with this (its ACL subtree)."""
    return f"esp32/{_check_id(device_id)}/"


def sensors_topic(device_id: str) -> str:
    return device_publish_prefix(device_id) + "sensors"


def health_topic(device_id: str) -> str:
    return device_publish_prefix(device_id) + "health"


def metrics_topic(device_id: str) -> str:
    return device_publish_prefix(device_id) + "metrics"


def alerts_topic(device_id: str) -> str:
    return device_publish_prefix(device_id) + "alerts"


def logs_topic(device_id: str) -> str:
    return device_publish_prefix(device_id) + "logs"


def status_topic(device_id: str) -> str:
    """Online/offline status: retained, and the last will's topic (§3)."""
    return device_publish_prefix(device_id) + "status"


def command_topic(device_id: str) -> str:
    return device_publish_prefix(device_id) + "command"


def command_ack_topic(device_id: str) -> str:
    return device_publish_prefix(device_id) + "command/ack"


def emergency_topic(device_id: str) -> str:
    return device_publish_prefix(device_id) + "emergency"


def config_status_topic(device_id: str) -> str:
    return device_publish_prefix(device_id) + "config/status"


def ota_status_topic(device_id: str) -> str:
    return device_publish_prefix(device_id) + "ota/status"


def programs_status_topic(device_id: str) -> str:
    return device_publish_prefix(device_id) + "programs/status"


def config_update_topic(device_id: str) -> str:
    """Broker → device; outside the device's own subtree (§5)."""
    return f"config/update/{_check_id(device_id)}"


def ota_update_topic(device_id: str) -> str:
    """Broker → device; outside the device's own subtree (§5)."""
    return f"ota/update/{_check_id(device_id)}"


def programs_deploy_topic(device_id: str) -> str:
    """Broker → device; outside the device's own subtree (§5)."""
    return f"programs/{_check_id(device_id)}/deploy"


def program_publish_topic(device_id: str, suffix: str) -> str:
    """Where a program's ``(publish "suffix" value)`` lands (§9).

    The suffix may have levels of its own ("a/b") but no wildcards, NULs or empty levels.
    """
    if not suffix or any(c in suffix for c in "+#\0") or "" in suffix.split("/"):
        raise ValueError(
            f"program topic suffix {suffix!r} must be non-empty, without '+', '#', NUL "
            "or empty levels"
        )
    return device_publish_prefix(device_id) + f"programs/{suffix}"


def device_subscriptions(device_id: str) -> tuple[str, ...]:
    """Exactly the topics a device subscribes to (§8): nothing else, no wildcards."""
    return (
        command_topic(device_id),
        emergency_topic(device_id),
        config_update_topic(device_id),
        ota_update_topic(device_id),
        programs_deploy_topic(device_id),
    )


# ---------------------------------------------------------------------------------------
# Names (§3, §4, §5, §7, §9)
# ---------------------------------------------------------------------------------------

# esp_reset_reason() names without the ESP_RST_ prefix.
RESET_REASONS: Final = (
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

ALERT_LEVELS: Final = ("info", "warning", "critical")

# The contract names the levels of sensor_calibration, sensor_out_of_range, sensor_failure,
# sensor_recovered, low_memory and safe_mode (§7). It leaves watchdog_reset, config_rejected
# and ota_rolled_back open; they are "warning" here: something went wrong and was handled,
# the device is running. The alerts validator holds every alert to this table.
ALERT_LEVEL_BY_CODE: Final[Mapping[str, str]] = MappingProxyType(
    {
        "sensor_calibration": "warning",
        "sensor_out_of_range": "warning",
        "sensor_failure": "critical",
        "sensor_recovered": "info",
        "low_memory": "warning",
        "watchdog_reset": "warning",
        "safe_mode": "critical",
        "config_rejected": "warning",
        "ota_rolled_back": "warning",
    }
)
ALERT_CODES: Final = tuple(ALERT_LEVEL_BY_CODE)

OTA_STATES: Final = (
    "downloading",
    "verifying",
    "rebooting",
    "success",
    "rejected",
    "failed",
    "rolled_back",
)
PROGRAM_STATES: Final = ("accepted", "running", "completed", "failed", "rejected")

# log_level of the configuration (§5), most to least severe.
LOG_LEVELS: Final = ("error", "warn", "info", "debug")
# Levels of the `logs` topic: only warnings and errors are mirrored (§4), named like the
# alert levels (not like log_level's "warn").
MIRRORED_LOG_LEVELS: Final = ("error", "warning")

COMMANDS: Final = ("reset", "report", "factory_reset")
# Only in firmware built with test hooks (rig capability `test_hooks`).
TEST_HOOK_COMMANDS: Final = ("hang", "crash")
# Tasks the task watchdog watches; also the `task` of the `hang` command.
WATCHED_TASKS: Final = ("sensor", "mqtt", "health")
EMERGENCY_SHUTDOWN: Final = "shutdown"

# ---------------------------------------------------------------------------------------
# Numbers (§3, §7, §9)
# ---------------------------------------------------------------------------------------

TEMPERATURE_ACCURACY_C: Final = 1.0
HUMIDITY_ACCURACY_PCT: Final = 3.0
PRESSURE_ACCURACY_HPA: Final = 1.0
# Inclusive; readings outside are not published (alert sensor_out_of_range).
TEMPERATURE_RANGE_C: Final = (-40.0, 85.0)
HUMIDITY_RANGE_PCT: Final = (0.0, 100.0)
PRESSURE_RANGE_HPA: Final = (300.0, 1100.0)

MQTT_KEEPALIVE_S: Final = 15
RECONNECT_BACKOFF_S: Final = (1.0, 30.0)  # first delay, cap
RECONNECT_JITTER: Final = 0.2  # ± fraction of each delay
BROKER_FAILOVER_ATTEMPTS: Final = 3  # failed attempts before moving to the next broker
OFFLINE_QUEUE_LENGTH: Final = 512
LOW_MEMORY_THRESHOLD_BYTES: Final = 5000
BOOT_LOOP_RESETS: Final = 5  # watchdog or panic resets ...
BOOT_LOOP_WINDOW_S: Final = 600  # ... within this window → safe mode
PROGRAM_MAX_BYTES: Final = 8 * 1024
PROGRAM_STEP_BUDGET: Final = 100_000

# ---------------------------------------------------------------------------------------
# NVS (§1, §5)
# ---------------------------------------------------------------------------------------

# Where provisioning lands: the nvs partition of the flash layout (hil.images.layout).
NVS_OFFSET: Final = LAYOUT.nvs.offset
NVS_SIZE: Final = LAYOUT.nvs.size
DEVICE_NAMESPACE: Final = "device"
CONFIG_NAMESPACE: Final = "config"

PROVISIONING_KEYS: Final = (
    "device_id",
    "wifi_ssid",
    "wifi_pass",
    "mqtt_uri",
    "mqtt_user",
    "mqtt_pass",
    "ca_cert",
    "client_cert",
    "client_key",
    "ota_pubkey",
)
# Never on the serial port, in MQTT payloads or in logs (§1).
SECRET_KEYS: Final = ("wifi_pass", "mqtt_pass", "client_key")
# PEM texts among the provisioning keys.
PEM_KEYS: Final = ("ca_cert", "client_cert", "client_key", "ota_pubkey")


@dataclass(frozen=True)
class IntSetting:
    """An integer configuration key: inclusive range and default (§5)."""

    minimum: int
    maximum: int
    default: int


CONFIG_INT_SETTINGS: Final[Mapping[str, IntSetting]] = MappingProxyType(
    {
        "measurement_interval_s": IntSetting(1, 86400, 10),
        "heartbeat_interval_s": IntSetting(1, 86400, 60),
        "status_report_interval_s": IntSetting(1, 86400, 120),
        "watchdog_timeout_s": IntSetting(2, 3600, 600),
        "sensor_timeout_s": IntSetting(5, 86400, 600),
        "ota_selftest_timeout_s": IntSetting(5, 600, 60),
    }
)
CALIBRATION_OFFSET_RANGE: Final = (-10.0, 10.0)
DEFAULT_CALIBRATION_OFFSET: Final = 0.0
DEFAULT_LOG_LEVEL: Final = "info"
MAX_BROKERS: Final = 4
# The keys a config update may carry, in the contract's order.
CONFIG_KEYS: Final = (
    *CONFIG_INT_SETTINGS,
    "calibration_offset_temp",
    "log_level",
    "brokers",
)

# NVS key of each configuration key (NVS keys hold at most 15 bytes, so the JSON names do
# not fit). Config updates store them in namespace `config`; the provisioning step may also
# put them in `device` (§1). `config` wins over `device`, and factory_reset erases `config`,
# so a device returns to its provisioned settings. Encoding: integers as i32, the
# calibration offset as the decimal text of the float (Python repr, exact round trip),
# log_level as a string, brokers as one string of the URIs joined by "\n" ("" for none).
CONFIG_NVS_KEYS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "measurement_interval_s": "meas_int_s",
        "heartbeat_interval_s": "hb_int_s",
        "status_report_interval_s": "status_int_s",
        "watchdog_timeout_s": "wdt_timeout_s",
        "sensor_timeout_s": "sensor_tmo_s",
        "ota_selftest_timeout_s": "ota_test_tmo_s",
        "calibration_offset_temp": "cal_off_temp",
        "log_level": "log_level",
        "brokers": "brokers",
    }
)

_BROKER_URI = re.compile(
    r"(?P<scheme>mqtts?)://"
    r"(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])"
    r":(?P<port>[0-9]{1,5})"
)


@dataclass(frozen=True)
class BrokerUri:
    """A broker address as the contract writes it: ``mqtt://host:port`` or ``mqtts://...``."""

    scheme: str
    host: str
    port: int

    @property
    def tls(self) -> bool:
        return self.scheme == "mqtts"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


def parse_broker_uri(uri: str) -> BrokerUri | None:
    """The parts of a `mqtt_uri` or `brokers` entry, or None when it is not of that form.

    The port is required (1–65535); no user info, path or query is allowed.
    """
    match = _BROKER_URI.fullmatch(uri)
    if match is None:
        return None
    port = int(match["port"])
    if not 1 <= port <= 65535:
        return None
    return BrokerUri(match["scheme"], match["host"], port)


# ---------------------------------------------------------------------------------------
# Serial-log milestones (§2; formats of SPEC_FACTS.md §1.6 and §5)
# ---------------------------------------------------------------------------------------
# Unanchored, so they are used with `search` and also match lines that carry ANSI colour
# codes; free-text groups stop at a CR, LF or ESC so a colour reset is not captured.

_TEXT = r"[^\r\n\x1b]*"
_WORD = r"[^\s\x1b]+"


def _log(level: str, tag: str, body: str) -> re.Pattern[str]:
    return re.compile(rf"{level} \((?P<ms>\d+)\) {tag}: {body}")


# Any application log line: level letter, milliseconds since boot, tag, text.
LOG_LINE: Final = re.compile(
    rf"(?P<level>[EWIDV]) \((?P<ms>\d+)\) (?P<tag>[^\s:\x1b]+): (?P<message>{_TEXT})"
)
SENSOR_FOUND: Final = _log("I", "sensor", r"bme280 id=0x(?P<chip_id>60) addr=0x(?P<addr>76)")
SENSOR_ERROR: Final = _log("E", "sensor", rf"(?P<message>{_TEXT})")
WIFI_CONNECTED: Final = _log("I", "wifi", rf"connected ssid=(?P<ssid>{_WORD}) rssi=(?P<rssi>-?\d+)")
# A Wi-Fi warning or error: a lost AP, a failed join (wrong passphrase, no AP). The contract
# names no wording; a device that cannot join says so on every attempt, never silently.
WIFI_WARNING: Final = _log("(?P<level>[WE])", "wifi", rf"(?P<message>{_TEXT})")
MQTT_CONNECTED: Final = _log("I", "mqtt", rf"connected uri=(?P<uri>{_WORD})")
MQTT_DISCONNECTED: Final = _log(
    "W", "mqtt", rf"disconnected reason=(?P<reason>{_WORD}) retry_ms=(?P<retry_ms>\d+)"
)
OTA_INFO: Final = _log("I", "ota", rf"(?P<message>{_TEXT})")
OTA_ERROR: Final = _log("E", "ota", rf"(?P<message>{_TEXT})")
OTA_MARKED_VALID: Final = _log("I", "ota", "app marked valid")
OTA_ROLLBACK: Final = _log("W", "ota", rf"rollback(?: (?P<detail>{_TEXT}))?")
TASK_WDT: Final = _log("E", "task_wdt", "Task watchdog got triggered")
# Test builds: the `hang` command says which task it hangs, as a warning (so mirrored to
# `logs` too), the moment it takes effect: the device-clock start of a watchdog measurement.
TEST_HOOK_HANG: Final = _log("W", "app", r"test hook: hang task=(?P<task>\w+)")
NOT_PROVISIONED: Final = _log("E", "app", "not provisioned")
# IDF ≥ 5.3 prints the app information under `app_init`, earlier versions under `cpu_start`.
APP_VERSION: Final = _log(
    "I", "(?P<tag>app_init|cpu_start)", rf"App version:\s+(?P<version>{_WORD})"
)
PROJECT_NAME: Final = _log(
    "I", "(?P<tag>app_init|cpu_start)", rf"Project name:\s+(?P<name>{_WORD})"
)
# The ROM banner's hardware reset cause, e.g. `rst:0xc (RTC_SW_CPU_RST)`; the code has one or
# two hex digits (`rst:0x1 (POWERON)`). These are ROM names, not RESET_REASONS.
ROM_RESET: Final = re.compile(r"rst:0x(?P<code>[0-9a-fA-F]+) \((?P<name>\w+)\)")
# The `reset_reason`s (esp_reset_reason(), IDF v5 on the C3) each ROM name allows: a software
# reset is refined by the hint the app left before it (SPEC_FACTS.md §2), so the serial port
# and the health payload can be checked against each other.
_SOFTWARE_RESET: Final = ("SW", "PANIC", "INT_WDT", "TASK_WDT", "BROWNOUT")
RESET_REASONS_BY_ROM_RESET: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        "POWERON": ("POWERON",),
        "RTC_SW_SYS_RST": _SOFTWARE_RESET,
        "DSLEEP": ("DEEPSLEEP",),
        "TG0WDT_SYS_RST": ("TASK_WDT",),
        "TG1WDT_SYS_RST": ("INT_WDT",),
        "RTCWDT_SYS_RST": ("WDT",),
        "RTC_SW_CPU_RST": _SOFTWARE_RESET,
        "RTCWDT_RTC_RST": ("WDT",),
        "USB_UART_CHIP_RESET": ("USB",),
    }
)
# The first line of a panic (SPEC_FACTS.md §2); the reboot after it has reset_reason PANIC.
PANIC: Final = re.compile(
    r"Guru Meditation Error: Core\s+(?P<core>\d+) panic'ed \((?P<cause>[^)\r\n\x1b]*)\)"
)

# ---------------------------------------------------------------------------------------
# Payload schemas (§3, §4)
# ---------------------------------------------------------------------------------------


class PayloadKind(StrEnum):
    SENSORS = "sensors"
    HEALTH = "health"
    METRICS = "metrics"
    ALERTS = "alerts"
    LOGS = "logs"
    STATUS_ONLINE = "status_online"
    STATUS_OFFLINE = "status_offline"
    COMMAND_ACK = "command_ack"
    CONFIG_STATUS = "config_status"
    OTA_STATUS = "ota_status"
    PROGRAMS_STATUS = "programs_status"


def _f(
    *types: JsonType,
    required: bool = True,
    minimum: float | None = None,
    maximum: float | None = None,
    choices: tuple[str, ...] | None = None,
    schema: Schema | None = None,
    items: Field | None = None,
) -> Field:
    return Field(frozenset(types), required, minimum, maximum, choices, schema, items)


def _schema(fields: Mapping[str, Field], *conditions: Condition, closed: bool = True) -> Schema:
    return Schema(MappingProxyType(dict(fields)), closed, conditions)


_S, _I, _N, _B = JsonType.STRING, JsonType.INTEGER, JsonType.NUMBER, JsonType.BOOLEAN
_O, _A, _NULL = JsonType.OBJECT, JsonType.ARRAY, JsonType.NULL

# Seconds since the Unix epoch (SNTP time), integer or fractional.
_TIMESTAMP = _f(_N, minimum=0)
_COUNT = _f(_I, minimum=0)
# null while the station is not associated.
_RSSI = _f(_I, _NULL, minimum=-127, maximum=0)

_CONFIG_APPLIED = _schema(
    {
        **{
            key: _f(_I, required=False, minimum=s.minimum, maximum=s.maximum)
            for key, s in CONFIG_INT_SETTINGS.items()
        },
        "calibration_offset_temp": _f(
            _N,
            required=False,
            minimum=CALIBRATION_OFFSET_RANGE[0],
            maximum=CALIBRATION_OFFSET_RANGE[1],
        ),
        "log_level": _f(_S, required=False, choices=LOG_LEVELS),
        "brokers": _f(_A, required=False),
    }
)

_METRICS = _schema(
    {
        "cpu_usage_percent": _f(_N, minimum=0, maximum=100),
        "memory_usage_bytes": _COUNT,
        "network_latency_ms": _f(_N, minimum=0),
        # null in safe mode, where no sensor task runs.
        "sensor_read_time_ms": _f(_N, _NULL, minimum=0),
        "mqtt_publish_time_ms": _f(_N, minimum=0),
        "wifi_signal_strength_dbm": _RSSI,
        "uptime_seconds": _f(_N, minimum=0),
        "restart_count": _COUNT,
        "error_count": _COUNT,
    }
)

PAYLOAD_SCHEMAS: Final[Mapping[PayloadKind, Schema]] = MappingProxyType(
    {
        PayloadKind.SENSORS: _schema(
            {
                "device_id": _f(_S),
                "boot_count": _COUNT,
                "seq": _COUNT,
                "timestamp": _TIMESTAMP,
                "temperature_c": _f(
                    _N, minimum=TEMPERATURE_RANGE_C[0], maximum=TEMPERATURE_RANGE_C[1]
                ),
                "humidity_pct": _f(
                    _N, minimum=HUMIDITY_RANGE_PCT[0], maximum=HUMIDITY_RANGE_PCT[1]
                ),
                "pressure_hpa": _f(
                    _N, minimum=PRESSURE_RANGE_HPA[0], maximum=PRESSURE_RANGE_HPA[1]
                ),
            }
        ),
        PayloadKind.HEALTH: _schema(
            {
                "uptime_s": _f(_N, minimum=0),
                "free_heap": _COUNT,
                "min_free_heap": _COUNT,
                "wifi_rssi": _RSSI,
                # The C3's internal sensor covers -40..125 °C.
                "cpu_temp_c": _f(_N, minimum=-40, maximum=125),
                # null until the first good reading of this boot (and always in safe mode).
                "last_sensor_reading_age_s": _f(_N, _NULL, minimum=0),
                "version": _f(_S),
                "reset_reason": _f(_S, choices=RESET_REASONS),
                "boot_count": _COUNT,
                "restart_count": _COUNT,
                "dropped_readings": _COUNT,
                "safe_mode": _f(_B),
            }
        ),
        PayloadKind.METRICS: _schema(
            {"device_id": _f(_S), "timestamp": _TIMESTAMP, "metrics": _f(_O, schema=_METRICS)}
        ),
        PayloadKind.ALERTS: _schema(
            {
                "level": _f(_S, choices=ALERT_LEVELS),
                "code": _f(_S, choices=ALERT_CODES),
                "message": _f(_S),
                "device_id": _f(_S),
                "timestamp": _TIMESTAMP,
            },
            *(
                Condition("code", (code,), restricts={"level": (level,)})
                for code, level in ALERT_LEVEL_BY_CODE.items()
            ),
        ),
        PayloadKind.LOGS: _schema(
            {
                "level": _f(_S, choices=MIRRORED_LOG_LEVELS),
                "tag": _f(_S),
                "message": _f(_S),
                "timestamp": _TIMESTAMP,
            }
        ),
        PayloadKind.STATUS_ONLINE: _schema(
            {
                "state": _f(_S, choices=("online",)),
                "version": _f(_S),
                "reset_reason": _f(_S, choices=RESET_REASONS),
                "boot_count": _COUNT,
            }
        ),
        PayloadKind.STATUS_OFFLINE: _schema({"state": _f(_S, choices=("offline",))}),
        PayloadKind.COMMAND_ACK: _schema(
            {
                # null when the command could not be parsed far enough to name it.
                "cmd": _f(_S, _NULL),
                "ok": _f(_B),
                "error": _f(_S, required=False),
            },
            Condition("ok", (False,), requires=("error",)),
            Condition("ok", (True,), forbids=("error",)),
        ),
        PayloadKind.CONFIG_STATUS: _schema(
            {
                "ok": _f(_B),
                "error": _f(_S, required=False),
                # What was saved: the keys with their values, or the list of key names.
                "applied": _f(
                    _O,
                    _A,
                    required=False,
                    schema=_CONFIG_APPLIED,
                    items=_f(_S, choices=CONFIG_KEYS),
                ),
            },
            Condition("ok", (False,), requires=("error",), forbids=("applied",)),
            Condition("ok", (True,), forbids=("error",)),
        ),
        PayloadKind.OTA_STATUS: _schema(
            {
                "state": _f(_S, choices=OTA_STATES),
                # null when a rejected request carried no usable version.
                "version": _f(_S, _NULL),
                "reason": _f(_S, required=False),
            },
            Condition("state", ("rejected", "failed"), requires=("reason",)),
        ),
        PayloadKind.PROGRAMS_STATUS: _schema(
            {
                # null when a rejected deployment carried no usable name.
                "name": _f(_S, _NULL),
                "state": _f(_S, choices=PROGRAM_STATES),
                # The value of the program's last expression: any JSON value.
                "result": Field(ANY_JSON, required=False),
                "error": _f(_S, required=False),
            },
            Condition("state", ("completed",), requires=("result",), forbids=("error",)),
            Condition("state", ("failed", "rejected"), requires=("error",), forbids=("result",)),
            Condition("state", ("accepted", "running"), forbids=("result", "error")),
        ),
    }
)


def validate_payload(
    kind: PayloadKind | str, payload: object, *, device_id: str | None = None
) -> list[str]:
    """Human-readable problems of one device → broker payload; empty when it is conforming.

    ``payload`` is the decoded JSON value, or the raw MQTT payload (bytes or str), which is
    decoded here (NaN and Infinity are not JSON and are reported). With ``device_id``, a
    ``device_id`` field must also equal it.
    """
    schema = PAYLOAD_SCHEMAS[PayloadKind(kind)]
    decoded, problems = check_json(schema, payload)
    if not isinstance(decoded, Mapping):
        return problems
    if device_id is not None and "device_id" in schema.fields:
        got_id = decoded.get("device_id")
        if isinstance(got_id, str) and got_id != device_id:
            problems.append(f"field 'device_id' = {show(got_id)}, expected {show(device_id)}")
    return problems
