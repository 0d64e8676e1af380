"""The defects a virtual-rig image can carry, named in its behaviour record.

Each one is a bug a real firmware team has shipped; each HIL suite is proven against the
image that carries the defect it guards against.
"""

from __future__ import annotations

TEMPERATURE_HIGH_2C = "temperature_high_2c"
"""Reports temperature 2 °C high (a wrong calibration constant)."""
OFFLINE_READINGS_DROPPED = "offline_readings_dropped"
"""Readings taken while the broker is unreachable are silently discarded."""
RECONNECT_WITHOUT_BACKOFF = "reconnect_without_backoff"
"""Reconnects immediately after every failure, hammering the broker."""
NO_LAST_WILL = "no_last_will"
"""Connects without a last will: an ungraceful loss is never announced."""
CLEAN_SESSION = "clean_session"
"""Connects with a clean session: what the broker kept for it while offline is lost."""
SHUTDOWN_WITHOUT_DISCONNECT = "shutdown_without_disconnect"
"""Drops the link without DISCONNECT on an emergency shutdown: the will fires after its
own offline status."""
NO_BROKER_FAILOVER = "no_broker_failover"
"""Uses only the first of `brokers`: no failover however long it stays unreachable."""
REBOOTS_ON_WIFI_FAILURE = "reboots_on_wifi_failure"
"""Restarts after a failed Wi-Fi join: a wrong passphrase boot-loops the device."""
ACCEPTS_DOWNGRADE = "accepts_downgrade"
"""Accepts an OTA image whose version is not greater than the running one."""
SKIPS_SIGNATURE_CHECK = "skips_signature_check"
"""Installs OTA images without verifying their signature."""
OTA_SIGNATURE_OPTIONAL = "ota_signature_optional"
"""Checks a signature when the request has one, and installs an image offered without one
("unsigned means a development build"): anyone who can publish to ota/update can update."""
OTA_HASH_UNCHECKED = "ota_hash_unchecked"
"""Never compares the downloaded image's SHA-256 with the signed one of the request (the
digest is computed for the log, the comparison was lost in a refactor): an image changed
after signing installs as long as it is self-consistent (its own checksum and appended
hash redone), which esp_image_verify alone cannot tell."""
OTA_DOWNLOAD_RESTARTS = "ota_download_restarts"
"""After a dropped connection starts the download over from byte 0 (a new
esp_https_ota_begin, slot erased again) instead of resuming with a Range request: on a
flaky link a large image may never finish."""
OTA_FIXED_SLOT = "ota_fixed_slot"
"""Writes every update to ota_0 (a hard-coded esp_partition_find_first) instead of
esp_ota_get_next_update_partition: the update after one that booted from ota_0 would
overwrite the running app, so esp_ota_begin refuses it (partition conflict)."""
VALID_WITHOUT_SELFTEST = "valid_without_selftest"
"""Marks a new image valid at boot, before its self-test."""
NEVER_MARKS_VALID = "never_marks_valid"
"""Never marks a new image valid, so every update is rolled back at the next reset."""
WATCHDOG_DISABLED = "watchdog_disabled"
"""The task watchdog is never started: a hung task hangs forever."""
PRINTS_SECRETS = "prints_secrets"
"""Prints the Wi-Fi password on the serial port at boot."""
CONFIG_WITHOUT_VALIDATION = "config_without_validation"
"""Stores any config update it can parse, without range or type checks."""
MEASUREMENT_INTERVAL_IGNORED = "measurement_interval_ignored"
"""Measures at the built-in default period (10 s) whatever ``measurement_interval_s`` says:
the ticker is set up before the config is read (an init-order bug); the key is still
accepted and acknowledged."""
CONFIG_NOT_PERSISTED = "config_not_persisted"
"""Keeps an accepted config update in RTC memory (RTC_NOINIT_ATTR: "NVS writes were too
slow") instead of NVS: applied after its own restart, gone after a power cycle."""
CRASH_ON_BOOT = "crash_on_boot"
"""Panics early in app_main, every boot."""
NO_WIFI_RECONNECT = "no_wifi_reconnect"
"""Never rejoins the AP after losing it once."""
IGNORES_SENSOR_TIMEOUT = "ignores_sensor_timeout"
"""Never raises the sensor_failure alert."""
SENSOR_FAILURE_REPEATED = "sensor_failure_repeated"
"""Raises sensor_failure again on every failed read of an episode, not once: an alert storm."""
OUT_OF_RANGE_PUBLISHED = "out_of_range_published"
"""Publishes readings outside the sensor's range as if they were good, with no alert."""
TLS_NO_VERIFY = "tls_no_verify"
"""Accepts any broker certificate (verification turned off to 'fix' a lab problem)."""
REBOOTS_WHEN_UNPROVISIONED = "reboots_when_unprovisioned"
"""Aborts when NVS holds no identity (ESP_ERROR_CHECK on a missing key): a blank device
boot-loops instead of waiting to be provisioned."""
NO_BOOT_LOOP_GUARD = "no_boot_loop_guard"
"""Keeps its crash count in RAM: every reset forgets it, so a boot loop never ends in safe mode."""
RESTART_COUNT_STUCK = "restart_count_stuck"
"""Never counts a restart: restart_count stays where it was after a watchdog or panic reset."""
SHUTDOWN_WITHOUT_SLEEP = "shutdown_without_sleep"
"""An emergency shutdown disconnects cleanly but never sleeps: the device reconnects and works on."""
PROGRAM_HASH_UNCHECKED = "program_hash_unchecked"
"""Runs a deployed program without comparing its source with the sha256 it came with."""
PROGRAMS_BLOCK_SENSOR = "programs_block_sensor"
"""Runs deployed programs on the sensor task: no readings while one runs, and a long one
starves the task watchdog."""
VERSIONS_COMPARED_AS_STRINGS = "versions_compared_as_strings"
"""Compares OTA versions as strings (strcmp): 1.10.0 is refused under 1.9.0, and 1.9.0 is
taken over 1.10.0."""
OTA_SIZE_CHECKED_LATE = "ota_size_checked_late"
"""Never compares an offer's size with the OTA partition before downloading: an oversize
image is only refused by esp_ota_begin, after `downloading` was reported."""
OTA_SELFTEST_TIMEOUT_IGNORED = "ota_selftest_timeout_ignored"
"""Runs the OTA self-test against the built-in 60 s, whatever ``ota_selftest_timeout_s`` says
(the timer is armed before the config is read)."""
TLS_NO_HOSTNAME_CHECK = "tls_no_hostname_check"
"""Verifies the broker's certificate chain against the CA but not the host name
(esp-mqtt's skip_cert_common_name_check): any certificate of that CA is accepted."""
PROGRAM_SIZE_OFF_BY_ONE = "program_size_off_by_one"
"""Refuses a program of exactly 8 KiB (``>=`` where ``>`` was meant)."""
PROGRAM_INTEGER_DIVISION = "program_integer_division"
"""``/`` truncates like C's integer division: ``(/ 7 2)`` is 3, not 3.5."""
RESET_REPORTS_POWERON = "reset_reports_poweron"
"""After a `reset` command the next boot says POWERON (the cold-boot flag in RTC memory is
cleared by the command's restart path), though the ROM saw a software reset."""
LOG_TICKS_AS_MS = "log_ticks_as_ms"
"""The MQTT component's own log macro prints FreeRTOS ticks (100 Hz) where ESP-IDF prints
milliseconds since boot: its lines lag the others' and go backwards within a boot."""
PUBLISHES_OUTSIDE_PREFIX = "publishes_outside_prefix"
"""Announces itself on every connect on the fleet-wide `esp32/announce` (a discovery
feature), outside its own `esp32/{id}/`: the broker's ACL drops it without a word."""
CREDENTIALS_IN_URI_LOG = "credentials_in_uri_log"
"""Logs the broker URI with the credentials in it (``mqtt://user:pass@host:port``), on the
serial port."""

HEARTBEAT_DOUBLED = "heartbeat_doubled"
"""The health task waits the heartbeat interval twice per loop (a second delay left behind
when the watchdog feeding was reworked): health every 2 × ``heartbeat_interval_s``."""
METRICS_AT_HEARTBEAT = "metrics_at_heartbeat"
"""The metrics task is timed by ``heartbeat_interval_s`` (copied from the health task), not
by ``status_report_interval_s``."""
WARNINGS_NOT_MIRRORED = "warnings_not_mirrored"
"""Mirrors only error lines to ``logs``; warnings stay on the serial port."""
RANGE_CHECK_TRUNCATES = "range_check_truncates"
"""Checks the temperature range on the whole degrees (C integer division of the centi-degree
value), so 85.5 °C and -40.5 °C pass as 85 and -40 and are published."""
CONFIG_MAX_EXCLUSIVE = "config_max_exclusive"
"""Checks the integer settings with ``value < maximum``: the maximum of every range (86400,
3600, 600) is rejected as out of range."""
REJECTED_CONFIG_APPLIED = "rejected_config_applied"
"""Applies ``calibration_offset_temp`` at once as it walks an update, before a later key
makes the update rejected: a rejected update still changes the readings."""
WATCHDOG_TIMEOUT_DOUBLED = "watchdog_timeout_doubled"
"""Arms the task watchdog with twice ``watchdog_timeout_s`` (seconds × 2000 into a field in
ms): a hung task is caught late."""
WATCHDOG_TIMEOUT_HALVED = "watchdog_timeout_halved"
"""Arms the task watchdog with half ``watchdog_timeout_s`` (the feeding period taken for the
timeout): it fires before a task has been silent for the timeout."""
RECOVERED_AS_WARNING = "recovered_as_warning"
"""Raises ``sensor_recovered`` at level warning, not info."""
READING_AGE_FROM_BOOT = "reading_age_from_boot"
"""Health's ``last_sensor_reading_age_s`` counts from boot, not from the last good reading."""
# -- §3 MQTT session: CONNECT, SUBSCRIBE, retained status, backlog order, backoff, failover
KEEPALIVE_DEFAULT = "keepalive_default"
"""Leaves the keepalive at esp-mqtt's default (120 s) instead of 15 s: a dead link is noticed
(and the will fired) minutes late."""
DEFAULT_CLIENT_ID = "default_client_id"
"""Leaves the client id unset, so esp-mqtt makes one (``ESP32_<last 3 MAC bytes>``): the
broker keeps the persistent session under a name nobody configured."""
ONLINE_NOT_RETAINED = "online_not_retained"
"""Publishes the ``online`` status without the retain flag: a newcomer sees the last will
(or nothing) while the device is up."""
WILL_NOT_RETAINED = "will_not_retained"
"""Sets the last will without the retain flag: a newcomer keeps seeing ``online`` after the
device is gone."""
WILL_QOS0 = "will_qos0"
"""Sets the last will at QoS 0 (the esp-mqtt struct's default): it may be lost on the way."""
WILDCARD_COMMAND_SUBSCRIPTION = "wildcard_command_subscription"
"""Subscribes to ``esp32/+/command`` (a fleet-wide command channel left over from a prototype)
instead of its own command topic: only the broker's ACL keeps other devices' commands away."""
TELEMETRY_QOS0 = "telemetry_qos0"
"""Publishes readings at QoS 0 ("to save air time"): nothing acknowledges them."""
BACKLOG_NEWEST_FIRST = "backlog_newest_first"
"""Keeps the offline readings in a stack: after a reconnect the backlog is sent newest first."""
BACKOFF_CAP_60S = "backoff_cap_60s"
"""Caps the reconnect backoff at 60 s instead of 30 s (a cap in ms compared with seconds × 2000)."""
FAILOVER_NO_WRAP = "failover_no_wrap"
"""Moves to the next of ``brokers`` but never wraps around: from the last URI it retries the
last URI for ever, never the first again."""

ALL = frozenset(
    value for name, value in dict(globals()).items() if name.isupper() and isinstance(value, str)
)
