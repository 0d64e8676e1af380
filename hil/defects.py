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

ALL = frozenset(
    value for name, value in dict(globals()).items() if name.isupper() and isinstance(value, str)
)
