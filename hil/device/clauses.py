"""The device contract's normative statements, each with an id a test can name.

docs/device-contract.md states the contract in prose with these ids; this module is the
same list as data, so that the suites say which clauses they assert
(``@pytest.mark.clause("C3.4")``), ``pytest --clauses`` prints the matrix clause → tests,
and a meta test fails when a normative clause has no asserting test. An id never changes
meaning: a clause that is dropped keeps its id retired, a new one takes the next number.

``normative=False`` marks a clause no suite can assert on any rig through rig interfaces
(it is stated for completeness, with the reason in ``untestable``); every other clause
must have at least one asserting test.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final


@dataclass(frozen=True)
class Clause:
    id: str
    text: str
    normative: bool = True
    untestable: str = ""
    """Why no suite asserts a non-normative clause."""

    @property
    def section(self) -> int:
        return int(self.id[1:].split(".")[0])


SECTIONS: Final[Mapping[int, str]] = MappingProxyType(
    {
        1: "Flash layout and provisioning",
        2: "Serial port",
        3: "MQTT session",
        4: "Topics (device → broker)",
        5: "Topics (broker → device)",
        6: "OTA and rollback",
        7: "Sensor, alerts and watchdog",
        8: "Security",
        9: "Program runtime",
    }
)

_C = Clause
CLAUSES: Final[tuple[Clause, ...]] = (
    # §1 flash layout and provisioning
    _C("C1.1", "The image set is the two-OTA layout: bootloader at 0x0, partition table at 0x8000 with nvs 0x9000/0x4000, otadata 0xd000/0x2000, phy_init 0xf000/0x1000, factory 0x10000/1M, ota_0 0x110000/1M, ota_1 0x210000/1M, on 4 MB of flash."),
    _C("C1.2", "Identity and settings are read from NVS namespace `device` (device_id, wifi_ssid, wifi_pass, mqtt_uri, mqtt_user, mqtt_pass, ca_cert, client_cert, client_key, ota_pubkey); the device uses exactly what was provisioned."),
    _C("C1.3", "A device with no `device_id` logs `E (t) app: not provisioned` and waits; it never boot-loops."),
    _C("C1.4", "Secrets (passwords, private keys) never appear on the serial port, in MQTT payloads or in logs."),
    # §2 serial port
    _C("C2.1", "Each boot starts with the ROM banner `rst:0x.. (REASON)` naming the cause of the reset."),
    _C("C2.2", "After the ROM banner, the 2nd-stage bootloader's lines, then `app_init:` lines with the project name and the app version."),
    _C("C2.3", "Application lines are `L (ms) tag: text`, with the milliseconds since boot, never decreasing within a boot."),
    _C("C2.4", "`I (t) sensor: bme280 id=0x60 addr=0x76` when the sensor is found."),
    _C("C2.5", "`E (t) sensor: ...` on a sensor error (NACK, bad chip id, bad calibration)."),
    _C("C2.6", "`I (t) wifi: connected ssid=S rssi=R` when Wi-Fi is up, with the provisioned SSID."),
    _C("C2.7", "`I (t) mqtt: connected uri=U` when the broker session is up, with the URI in use."),
    _C("C2.8", "`W (t) mqtt: disconnected reason=R retry_ms=N` for each lost connection and each failed attempt, N being the delay before the next attempt."),
    _C("C2.9", "OTA progress as `I (t) ota: ...`, failures as `E (t) ota: ...`, `I (t) ota: app marked valid` after a passed self-test, `W (t) ota: rollback ...` when a rollback is detected."),
    _C("C2.10", "`E (t) task_wdt: Task watchdog got triggered...` when the task watchdog fires (ESP-IDF's wording)."),
    # §3 MQTT session
    _C("C3.1", "The MQTT client id is the `device_id`."),
    _C("C3.2", "Keepalive is 15 s."),
    _C("C3.3", "The session is persistent (clean session off): commands sent while the device is offline arrive when it returns."),
    _C("C3.4", "The last will is `esp32/{id}/status` = `{\"state\":\"offline\"}`, retained, QoS 1; the broker publishes it when the device is lost without a clean disconnect."),
    _C("C3.5", "On every connect the device publishes, retained, `{\"state\":\"online\",\"version\",\"reset_reason\",\"boot_count\"}` on its status topic, describing the running boot."),
    _C("C3.6", "Reconnect attempts back off exponentially from 1 s, doubling up to a 30 s cap, each delay with ±20 % jitter."),
    _C("C3.7", "The backoff starts again from its first delay after a successful connect."),
    _C("C3.8", "With `brokers` set, after 3 failed attempts the device moves to the next URI, round robin."),
    _C("C3.9", "Telemetry is published with QoS 1."),
    _C("C3.10", "While offline, readings queue in RAM (up to 512) and are sent in order on reconnect: none lost, none reordered."),
    _C("C3.11", "A queue overflow drops the oldest readings and counts them in `dropped_readings`: a loss is always visible."),
    # §4 device → broker
    _C("C4.1", "`esp32/{id}/sensors` carries device_id, boot_count, seq, timestamp, temperature_c, humidity_pct, pressure_hpa."),
    _C("C4.2", "A reading is published every `measurement_interval_s`."),
    _C("C4.3", "`seq` starts at 0 each boot and has no gaps."),
    _C("C4.4", "`esp32/{id}/health` carries uptime_s, free_heap, min_free_heap, wifi_rssi, cpu_temp_c, last_sensor_reading_age_s, version, reset_reason, boot_count, restart_count, dropped_readings, safe_mode."),
    _C("C4.5", "Health is published every `heartbeat_interval_s`."),
    _C("C4.6", "Health is published at once on the `report` command."),
    _C("C4.7", "`esp32/{id}/metrics` carries device_id, timestamp and metrics{cpu_usage_percent, memory_usage_bytes, network_latency_ms, sensor_read_time_ms, mqtt_publish_time_ms, wifi_signal_strength_dbm, uptime_seconds, restart_count, error_count}, every `status_report_interval_s`."),
    _C("C4.8", "`esp32/{id}/alerts` carries level (info/warning/critical), code, message, device_id, timestamp; each code has the level the contract gives it."),
    _C("C4.9", "Warnings and errors (and only they) are mirrored to `esp32/{id}/logs` as level, tag, message, timestamp."),
    _C("C4.10", "`esp32/{id}/command/ack` carries cmd, ok and error? after each command (an unknown or malformed command: ok false, with the error)."),
    _C("C4.11", "`esp32/{id}/config/status` carries ok, error? and applied? after each config update."),
    _C("C4.12", "`esp32/{id}/ota/status` carries state (downloading/verifying/rebooting/success/rejected/failed/rolled_back), version and reason? during an OTA."),
    _C("C4.13", "`esp32/{id}/programs/status` carries name, state (accepted/running/completed/failed/rejected), result?, error?."),
    _C("C4.14", "`reset_reason` uses ESP-IDF's names without the prefix (POWERON, SW, PANIC, INT_WDT, TASK_WDT, WDT, BROWNOUT, DEEPSLEEP, EXT, USB) and names the actual cause."),
    # §5 broker → device
    _C("C5.1", "`{\"cmd\":\"reset\"}` restarts the device with reset reason SW."),
    _C("C5.2", "`{\"cmd\":\"factory_reset\"}` erases the `config` namespace and restarts: what was provisioned (or the default) applies again."),
    _C("C5.3", "Test builds: `{\"cmd\":\"hang\",\"task\":T}` hangs task T, logging `W (t) app: test hook: hang task=T` as it takes effect; `{\"cmd\":\"crash\"}` panics."),
    _C("C5.4", "`esp32/{id}/emergency` `shutdown`: a clean disconnect (no last will), all work stopped, deep sleep until the next power-on."),
    _C("C5.5", "A config update with every key inside its range (both edges included) is accepted: measurement_interval_s, heartbeat_interval_s, status_report_interval_s 1–86400, watchdog_timeout_s 2–3600, sensor_timeout_s 5–86400, ota_selftest_timeout_s 5–600, calibration_offset_temp −10–10, log_level error/warn/info/debug, brokers 1–4 URIs."),
    _C("C5.6", "Unknown keys, wrong types, out-of-range values or malformed JSON: the update is rejected as a whole, `config/status` says why, alert `config_rejected`."),
    _C("C5.7", "After a rejected update the device keeps running unchanged: every setting as it was, no restart."),
    _C("C5.8", "A valid update is saved to NVS namespace `config`, acknowledged, then the device restarts (reason SW) and applies it from boot; it survives a power cycle."),
    _C("C5.9", "Defaults apply where no config was given: measurement 10 s, heartbeat 60 s, status report 120 s, watchdog 600 s, sensor timeout 600 s, OTA self-test 60 s, offset 0, log level info."),
    # §6 OTA and rollback
    _C("C6.1", "An offer whose version is not greater than the running one (semantic versions compared part by part as numbers) is rejected at once: `rejected` with a reason, no download, no reboot."),
    _C("C6.2", "An offer with an invalid signature (base64 DER ECDSA P-256 over the image's SHA-256, checked with `ota_pubkey`) or invalid fields is rejected at once."),
    _C("C6.3", "An offer whose size exceeds the OTA partition is rejected at once."),
    _C("C6.4", "The image is downloaded over HTTP or HTTPS into the next OTA slot, resuming with Range requests after a dropped connection."),
    _C("C6.5", "Size, SHA-256 and the image itself (magic 0xE9, chip id 5, segment checksum, appended SHA-256) are checked; any failure: `failed` with a reason, the slot left unbootable, the old app keeps running."),
    _C("C6.6", "A good image: the boot partition is set (otadata NEW), `rebooting` is reported, the device restarts into it."),
    _C("C6.7", "The new app's self-test (sensor read and broker connected within `ota_selftest_timeout_s`) passed: marked valid, `ota: app marked valid` logged, `success` reported."),
    _C("C6.8", "A failed self-test marks the app invalid and restarts into the previous one."),
    _C("C6.9", "Any reset of a PENDING_VERIFY app before it is marked valid rolls back: the previous app runs, logs `ota: rollback ...`, reports `rolled_back` with the version that failed and raises alert `ota_rolled_back`."),
    _C("C6.10", "A power loss at any point of an OTA leaves a bootable device on the old or the new version, never neither."),
    # §7 sensor, alerts, watchdog
    _C("C7.1", "A chip id other than 0x60 is a sensor error: no readings are published from it."),
    _C("C7.2", "Calibration with dig_T1 == 0 or dig_H1 == 0 is corrupt: alert `sensor_calibration`, warning, and no readings from it."),
    _C("C7.3", "Readings are compensated with Bosch's formulas plus `calibration_offset_temp`, within ±1 °C, ±3 %RH, ±1 hPa of the true environment."),
    _C("C7.4", "Values outside −40–85 °C, 0–100 %RH, 300–1100 hPa are not published as readings: alert `sensor_out_of_range`, warning."),
    _C("C7.5", "No good reading for `sensor_timeout_s`: alert `sensor_failure`, critical, once per episode."),
    _C("C7.6", "When readings return after a failure: alert `sensor_recovered`, info."),
    _C("C7.7", "Free heap below 5000 bytes: alert `low_memory`, warning.", normative=False,
       untestable="no rig interface lowers the device's free heap; the firmware model's unit tests cover it"),
    _C("C7.8", "A task (sensor, mqtt, health) that does not check in within `watchdog_timeout_s` makes the task watchdog fire with ESP-IDF's lines, then a panic reboot; not before the timeout, and soon after it."),
    _C("C7.9", "On the boot after a watchdog reset `reset_reason` is TASK_WDT, `restart_count` is one higher, and alert `watchdog_reset` is raised."),
    _C("C7.10", "5 watchdog or panic resets within 10 minutes put the device in safe mode: broker and OTA only, no sensor task, `safe_mode: true` in health, alert `safe_mode`, critical."),
    # §8 security
    _C("C8.1", "`mqtts://` uses TLS verified against the provisioned CA."),
    _C("C8.2", "With `client_cert`/`client_key` the device does mutual TLS."),
    _C("C8.3", "A server certificate from another CA: the device refuses to connect and says so on the serial port."),
    _C("C8.4", "A server certificate from the right CA for another host name: the device refuses to connect and says so on the serial port."),
    _C("C8.5", "The device publishes only under `esp32/{own id}/`."),
    _C("C8.6", "The device subscribes only to its own command, emergency, config, ota and program topics (no wildcard, no other device's topics)."),
    _C("C8.7", "The broker in front of the devices enforces it too: clients without valid credentials are refused, and each device's account may use only its own topics."),
    # §9 program runtime
    _C("C9.1", "A program over 8 KiB is rejected."),
    _C("C9.2", "A program whose `sha256` does not match its source is rejected."),
    _C("C9.3", "A program that does not parse is rejected."),
    _C("C9.4", "A program is `accepted`, then `completed` with the value of its last expression."),
    _C("C9.5", "A program that exceeds its step budget (100000) or memory budget, or raises an error, reports `failed` with the error."),
    _C("C9.6", "A running program never stops telemetry or the watchdog."),
    _C("C9.7", "The subset behaves as Scheme: numbers, strings, booleans, define, lambda, let, if, begin, arithmetic and comparison, `(sensor 'temperature|humidity|pressure)`, `(led 'on|'off)`, `(publish \"suffix\" value)` under `esp32/{id}/programs/`, `(sleep ms)`."),
)

BY_ID: Final[Mapping[str, Clause]] = MappingProxyType({clause.id: clause for clause in CLAUSES})
NORMATIVE: Final[tuple[str, ...]] = tuple(clause.id for clause in CLAUSES if clause.normative)


def unknown(ids: list[str] | tuple[str, ...]) -> list[str]:
    """The ids in ``ids`` that name no clause (a typo in a marker)."""
    return [clause_id for clause_id in ids if clause_id not in BY_ID]
