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

# -- §6 OTA: what a failed or refused update leaves behind, and what the serial port says
OTA_BOOT_SET_BEFORE_HASH = "ota_boot_set_before_hash"
"""Compares the image with the signed SHA-256 only after esp_https_ota_finish has set the boot
partition: a tampered (self-consistent) image is reported ``failed``, yet the next reset boots
it, and its self-test passes."""
ROLLBACK_REPORTED_EVERY_BOOT = "rollback_reported_every_boot"
"""Forgets which rollback it has reported (the NVS seq is never compared): every later boot
reports ``rolled_back`` and raises ``ota_rolled_back`` again."""
OTA_SIZE_TYPE_UNCHECKED = "ota_size_type_unchecked"
"""Takes an offer's ``size`` as it comes (``cJSON->valueint`` without ``cJSON_IsNumber``): a
size given as a string kills the OTA handler, which never answers on ``ota/status``."""
OTA_FAILED_AS_WARNING = "ota_failed_as_warning"
"""Logs a failed update with ESP_LOGW, not ESP_LOGE: no ``E ota:`` line for a ``failed``."""
OTA_PARTITION_SIZE_EXCLUSIVE = "ota_partition_size_exclusive"
"""Refuses an offer whose size *equals* the OTA partition (``>=`` where ``>`` was meant)."""
OTA_PROGRESS_AT_DEBUG = "ota_progress_at_debug"
"""Logs the download's progress with ESP_LOGD, below the default log level: nothing on the
serial port while the image is being downloaded."""
HEALTH_NOT_WATCHED = "health_not_watched"
"""The health task never subscribes to the task watchdog (its esp_task_wdt_add forgotten;
esp_task_wdt_reset from an unsubscribed task is ignored): a hung health task hangs for ever."""
MQTT_NOT_WATCHED = "mqtt_not_watched"
"""The mqtt task never subscribes to the task watchdog: a hung mqtt task hangs for ever."""
BOOT_LOOP_GUARD_PANICS_ONLY = "boot_loop_guard_panics_only"
"""The boot-loop guard counts panic resets only, not task-watchdog ones: a device looping on a
hung I2C bus never enters safe mode."""
OTA_OFF_IN_SAFE_MODE = "ota_off_in_safe_mode"
"""Drops ``ota/update`` requests in safe mode (the handler hangs off the tasks safe mode
skips): a boot-looping device can never be fixed remotely."""
WATCHDOG_FED_ONCE_PER_LOOP = "watchdog_fed_once_per_loop"
"""The sensor task checks in once per loop and then sleeps its whole period
(``esp_task_wdt_reset(); vTaskDelay(interval)``): a measurement interval longer than
``watchdog_timeout_s`` trips the watchdog on a healthy device."""
WATCHDOG_RESET_ALERT_ON_PANIC = "watchdog_reset_alert_on_panic"
"""Raises ``watchdog_reset`` after a panic too (any crash reset taken for a watchdog one):
the backend counts hung tasks that never were."""
SEQ_PER_MEASUREMENT = "seq_per_measurement"
"""Numbers every measurement, not every published reading (``seq++`` before the read): a
withheld out-of-range value or a failed read leaves a hole in ``seq``."""
OUT_OF_RANGE_NOT_A_FAILURE = "out_of_range_not_a_failure"
"""Counts only failed reads towards ``sensor_timeout_s``: a sensor stuck on garbage (the
BME280's 0x80000 "skipped" raw value reads -144 °C) raises ``sensor_out_of_range`` for ever,
never ``sensor_failure``."""
RANGE_CHECKED_BEFORE_OFFSET = "range_checked_before_offset"
"""Checks the range on the compensated value before ``calibration_offset_temp`` is added
(validation in the driver, calibration at publish): with an offset of -10 °C an environment
of -35 °C is published as -45 °C."""
SENSOR_FAILURE_ONCE_PER_BOOT = "sensor_failure_once_per_boot"
"""Latches ``sensor_failure`` per boot (its flag never cleared; ``sensor_recovered`` runs on
another): the first episode looks right, a second one in the same boot raises nothing."""
SENSOR_INIT_ERROR_NOT_MIRRORED = "sensor_init_error_not_mirrored"
"""Logs a sensor that fails its checks at boot (chip id, calibration) with a plain ESP_LOGE,
outside the mirroring logger: the error is on the serial port only, never on ``logs``."""
WIFI_RSSI_FROM_JOIN = "wifi_rssi_from_join"
"""Reports the RSSI of the connect event (cached when the station joined) in health and
metrics, not the station's current one: a signal that fades is never seen."""
PROGRAM_REJECTION_UNNAMED = "program_rejection_unnamed"
"""Reports every refused deployment with ``name: null`` (the status is built before the
request is looked at): a backend cannot tell which of its deployments was refused."""
WIFI_AUTH_FAIL_LOGS_PASSPHRASE = "wifi_auth_fail_logs_passphrase"
"""Logs the passphrase it tried when a Wi-Fi join fails with auth_fail (a debugging aid left
in): a wrong AP password puts the right one on the serial port."""
TLS_FAILURE_LOGS_CREDENTIALS = "tls_failure_logs_credentials"
"""Logs a failed TLS handshake with the broker URI rebuilt with user and password in it
(``mqtts://user:pass@host:port``): only on the failure path, so a happy run never shows it."""
BACKOFF_WAITS_EXTRA_SECOND = "backoff_waits_extra_second"
"""Waits one second more than the delay it announces before each reconnect attempt (a settle
delay left over from debugging): attempts 1 s apart by the log are 2 s apart."""
FAILOVER_COUNTS_THE_LOSS = "failover_counts_the_loss"
"""Counts the end of a connected session as a failed attempt: it leaves a broker it was
connected to after the loss and 2 failed attempts, not 3."""
REPORTS_QOS0 = "reports_qos0"
"""Publishes only readings at QoS 1 ("the rest is diagnostics"): health, metrics, alerts
(a critical ``sensor_failure`` included) and logs go out at QoS 0, unacknowledged."""
FACTORY_RESET_WRITES_DEFAULTS = "factory_reset_writes_defaults"
"""``factory_reset`` writes the built-in defaults into ``config`` instead of erasing it: the
settings provisioned in ``device`` no longer apply (10 s readings, a 600 s watchdog)."""
PROGRAM_MEMORY_UNBOUNDED = "program_memory_unbounded"
"""Runs programs with no memory budget: a program allocates until the heap is gone."""
PROGRAM_OOM_PANICS = "program_oom_panics"
"""A program that runs out of memory crashes the device (malloc's NULL dereferenced, or a
recursive evaluator overflowing its task stack) instead of failing."""
PROGRAM_PRESSURE_IN_PA = "program_pressure_in_pa"
"""``(sensor 'pressure)`` returns the driver's pascals, not hPa as the readings do."""
RESTARTS_ON_AUTH_REFUSAL = "restarts_on_auth_refusal"
"""Treats a CONNACK "not authorised" as fatal and restarts ("start over from a clean
state"): a wrong or rotated MQTT password boot-loops the device instead of backing off."""
FACTORY_RESET_ERASES_STATS = "factory_reset_erases_stats"
"""``factory_reset`` erases namespace ``stats`` (boot and restart counts) along with ``config``
("erase everything but the identity"): ``boot_count`` starts again at 1, and a backend that
keys readings on ``(boot_count, seq)`` takes the new boot's for ones it already has."""
PROGRAM_TOPIC_UNCHECKED = "program_topic_unchecked"
"""Builds a program's publish topic by appending the suffix unchecked: ``(publish "x/#" 1)``
reaches the MQTT client, which refuses a wildcard topic; the publisher dies on it and nothing
more goes out in this boot (on a C firmware the broker closes the connection, and every
reconnect sends the message at the head of the outbox again)."""
ACK_JSON_UNESCAPED = "ack_json_unescaped"
"""Builds the ack of an unknown command with snprintf (``{"cmd":"%s",...}``): a ``cmd`` with a
quote or a backslash in it makes the ack invalid JSON."""
PROGRAM_RESULT_UNESCAPED = "program_result_unescaped"
"""Builds a completed program's status with snprintf (``"result":"%s"``): a string result with
a quote or a backslash in it makes the status invalid JSON."""
PROGRAM_DIVISION_BY_ZERO_IS_ZERO = "program_division_by_zero_is_zero"
"""``(/ x 0)`` gives 0 ("avoid the trap") instead of failing the program: the C shape of
RISC-V's non-trapping ``div``, or of a double ``inf`` that cJSON prints as null."""
MQTT_USER_IGNORED = "mqtt_user_ignored"
"""Logs in to the broker with the device id as user name, not the provisioned ``mqtt_user``:
works only where the two happen to be equal."""
PARTIAL_PROVISIONING_ABORTS = "partial_provisioning_aborts"
"""Takes the device for unprovisioned only when ``nvs_open("device")`` fails; with the namespace
there but no ``device_id`` (a factory that writes the Wi-Fi keys first and the identity at
deployment), ``ESP_ERROR_CHECK(nvs_get_str(...))`` aborts at every boot: a boot loop."""

WATCHDOG_TIMEOUT_IDF_DEFAULT = "watchdog_timeout_idf_default"
"""Never calls ``esp_task_wdt_reconfigure()``: the task watchdog keeps ESP-IDF's
``CONFIG_ESP_TASK_WDT_TIMEOUT_S`` (5 s) whatever ``watchdog_timeout_s`` says."""
SENSOR_TIMEOUT_FROM_PROVISIONING = "sensor_timeout_from_provisioning"
"""The sensor task reads ``sensor_timeout_s`` once from the provisioned namespace ``device``:
an update saves it in ``config``, where the sensor task never looks."""
BOOT_COUNT_IN_RTC = "boot_count_in_rtc"
"""Keeps ``boot_count`` in RTC memory (``RTC_NOINIT_ATTR``), not NVS: it survives software,
panic and watchdog resets, and starts again at 1 after every power-on."""
CONFIG_UPDATE_REPLACES_SAVED = "config_update_replaces_saved"
"""Saves an update by erasing namespace ``config`` and writing only the keys it carries
("no stale keys"): every earlier update is undone, the provisioned values show through."""
CONFIG_ERROR_UNSPECIFIC = "config_error_unspecific"
"""The validator returns only a bool: a rejected update's ``config/status`` error (and its
alert and log line) is "invalid config" whatever was wrong."""
READINGS_STAMPED_WHEN_SENT = "readings_stamped_when_sent"
"""Queues raw readings and stamps ``timestamp`` when the publisher serialises them
(``time(NULL)`` at send): a backlog sent on reconnect reads as several readings of one
instant, ``seq`` still gapless."""
OTA_SUCCESS_EVERY_BOOT = "ota_success_every_boot"
"""Runs the self-test and marks the app valid at every boot of an OTA slot, not only on
trial (the IDF example's unconditional mark-valid): ``success`` and ``ota: app marked valid``
again at every power-on and reset."""
HEAP_REPORTED_IN_KIB = "heap_reported_in_kib"
"""Reports ``free_heap`` and ``min_free_heap`` in KiB (a debug print's ``/ 1024`` turned into
the payload): 178 "bytes" free, below the low-memory line, with no ``low_memory`` alert."""
OTA_MARKED_VALID_EVERY_BOOT = "ota_marked_valid_every_boot"
"""Marks the app valid and logs ``ota: app marked valid`` at every boot of an OTA slot (the
IDF example's unconditional mark-valid), while ``success`` is reported once: the serial
port says a self-test passed at boots that had none."""

# -- §1/§6/§8/§9 review (session 4)
OTA_PATCH_IGNORED = "ota_patch_ignored"
"""Compares OTA versions on major and minor only (``sscanf(v, "%d.%d", ...)``): a patch
release (1.0.1 under 1.0.0) is refused as not newer."""
OTA_SIZE_SIGN_UNCHECKED = "ota_size_sign_unchecked"
"""Checks an offer's ``size`` against the partition only (``size > part->size``), never that it
is positive: a size of 0 or below is taken, the download starts, and only esp_ota_begin
refuses it, after ``downloading``."""
OTA_SIGNATURE_PARSE_ERROR_ACCEPTED = "ota_signature_parse_error_accepted"
"""Refuses an offer only when its signature decodes and fails verification
(``ret == MBEDTLS_ERR_ECP_VERIFY_FAILED``): a signature that is not base64, or not DER, is a
decode error the check lets through, so garbage in ``signature`` installs."""
OTA_DOWNLOAD_ERROR_UNREPORTED = "ota_download_error_unreported"
"""A download that fails (HTTP error, server unreachable) ends the OTA task with a log line
only (the error path's ``goto cleanup`` skips the status): no ``failed`` on ``ota/status``."""
OTA_SELFTEST_WITHOUT_SENSOR = "ota_selftest_without_sensor"
"""The new app's self-test waits for the broker only, not for a good sensor read: an update
whose sensor never reads is marked valid and kept."""
ROLLBACK_ALERT_WITHOUT_DEVICE_ID = "rollback_alert_without_device_id"
"""Raises ``ota_rolled_back`` from the early rollback check, before the identity is read from
NVS: the alert's ``device_id`` is empty."""
PROGRAM_FAILURE_UNNAMED = "program_failure_unnamed"
"""Reports a program that failed with ``name: null`` (the error path builds the status without
the deployment at hand): a backend cannot tell which program failed."""
PROGRAM_GT_AS_GE = "program_gt_as_ge"
"""The program runtime's ``>`` is ``>=`` (a copy-paste in the built-in table): ``(> 2 2)`` is #t."""
PROGRAM_SLEEP_IN_US = "program_sleep_in_us"
"""``(sleep ms)`` calls ``esp_rom_delay_us(ms)``: it waits microseconds, a thousandth of what
the program asked for."""
UNPROVISIONED_RUNS_AS_MAC_ID = "unprovisioned_runs_as_mac_id"
"""Without a ``device_id`` it logs ``not provisioned``, then makes one from the MAC
(``esp32-xxxxxx``) and runs with the rest of namespace ``device``: a half-provisioned device
joins the fleet under a name nobody gave it."""
OTA_HTTP_REFUSED = "ota_http_refused"
"""Built without ``CONFIG_ESP_HTTPS_OTA_ALLOW_HTTP`` (esp_https_ota's default): an update offered
at an ``http://`` URL is ``failed`` ("http not allowed"), only HTTPS ones install."""


# -- §4/§5/§7 review (session 4): counters, clocks, acks and the boot-loop guard
RESTART_COUNT_CRASHES_ONLY = "restart_count_crashes_only"
"""Counts only crash resets (panic, watchdogs) in ``restart_count`` ("unexpected restarts"):
a ``reset`` command, a config update or a factory reset restarts the device uncounted."""
CONFIG_ACK_AFTER_RESTART = "config_ack_after_restart"
"""Saves an accepted config update and restarts at once, leaving a "pending ack" flag in RTC
memory: ``config/status`` ok comes from the next boot, after its online status, from a device
already running the new settings."""
BOOT_LOOP_GUARD_COUNTS_SW = "boot_loop_guard_counts_sw"
"""The boot-loop guard counts every reset but a power-on: a reset command or config update
among a few crashes within ten minutes puts the device in safe mode early."""
LOGS_TIMESTAMP_SINCE_BOOT = "logs_timestamp_since_boot"
"""Stamps mirrored log entries with ``esp_log_timestamp()`` (the serial line's milliseconds
since boot) instead of the wall-clock time every other topic carries."""
METRICS_TIMESTAMP_UPTIME = "metrics_timestamp_uptime"
"""Stamps metrics with the uptime (``esp_timer_get_time()`` in seconds) instead of the
wall-clock time the readings carry: the backend files them in January 1970."""
CRASH_REASON_STICKY = "crash_reason_sticky"
"""Keeps the last crash's reason in RTC memory (``RTC_NOINIT_ATTR``) and never clears it: after
a watchdog or panic reset, every later software reset boots with that reason again (and a
watchdog one raises ``watchdog_reset`` again), until a power-on."""
OFFSET_APPLIED_TO_HUMIDITY = "offset_applied_to_humidity"
"""Adds ``calibration_offset_temp`` to the humidity as well (one offset loop over the channels):
with an offset set, humidity is off by it."""
REPORT_HEALTH_CACHED = "report_health_cached"
"""Answers ``report`` with the last heartbeat's payload (kept for a retry) instead of building a
new one: the health "now" is up to a heartbeat interval old."""
FLOAT_TIMEOUT_TRUNCATED = "float_timeout_truncated"
"""Validates ``watchdog_timeout_s`` and ``sensor_timeout_s`` as numbers, not integers
(``cJSON_IsNumber`` then ``valueint``): 2.5 is accepted and saved as 2."""
CHIP_ID_ALERTED_AS_CALIBRATION = "chip_id_alerted_as_calibration"
"""Raises ``sensor_calibration`` for any sensor that fails its checks at boot, a wrong chip id
included: the backend sends a technician to recalibrate a part that is not a BME280."""
SENSOR_FAILURE_AT_ONCE_WITHOUT_READING = "sensor_failure_at_once_without_reading"
"""Times ``sensor_timeout_s`` from the last good reading only: with none yet in this boot (a
sensor that fails its checks at boot), ``sensor_failure`` is raised at the first failed attempt."""
RECOVERED_AFTER_ANY_FAILED_READ = "recovered_after_any_failed_read"
"""Raises ``sensor_recovered`` at the first good reading after any failed read (the flag is set
by the read error, not by the ``sensor_failure`` alert): a one-read glitch, well inside
``sensor_timeout_s``, raises a recovery from a failure nobody was told of."""

# -- §2/§3 review (session 4): the serial port's reconnect lines and the MQTT session
CONNECTED_LOGS_PROVISIONED_URI = "connected_logs_provisioned_uri"
"""Logs ``mqtt: connected uri=`` with the provisioned ``mqtt_uri`` (the config struct's field)
instead of the URI the client is connected to: after a failover the serial port names a
broker the device is not on."""
WIFI_LOSS_NOT_LOGGED = "wifi_loss_not_logged"
"""Says nothing on the mqtt tag when the session ends because Wi-Fi went ("the wifi task
already said so"): a lost broker connection with no ``mqtt: disconnected`` line."""
TIMEOUT_LOSS_NOT_LOGGED = "timeout_loss_not_logged"
"""Logs no ``mqtt: disconnected`` line when a live session ends in a publish timeout (the
client aborts on its own outbox timeout and raises no MQTT_EVENT_DISCONNECTED): on a dead
path the serial port shows only the failed attempts that follow, the loss itself never."""
SUBSCRIBES_QOS0 = "subscribes_qos0"
"""Subscribes to its request topics at QoS 0 (``esp_mqtt_client_subscribe(..., 0)``): the
broker keeps nothing for the persistent session while the device is away, so a command
sent meanwhile is lost."""
BACKLOG_COUNTED_AS_DROPPED = "backlog_counted_as_dropped"
"""Adds the backlog found at each reconnect to ``dropped_readings`` ("readings that missed
their live publish"), though every one of them is then sent: an outage that lost nothing
reports losses."""
FAILOVER_COUNT_KEPT_ON_MOVE = "failover_count_kept_on_move"
"""Does not clear the failed-attempt count when it moves to the next of ``brokers``: after
the first move every URI gets a single attempt, not 3."""
FAILOVER_COUNT_KEPT_ON_CONNECT = "failover_count_kept_on_connect"
"""Does not clear the failed-attempt count after a successful connect: failures before a
connect count towards the next failover, which comes after fewer than 3 attempts."""
BACKOFF_RESET_ON_FAILOVER = "backoff_reset_on_failover"
"""Starts the backoff again from 1 s whenever it moves to the next of ``brokers`` ("a new
broker: start afresh"), though no connect succeeded: with every broker down it retries at
1, 2, 4 s for ever, never backing off to the cap."""
BACKOFF_JITTER_ONCE = "backoff_jitter_once"
"""Draws the backoff's jitter once, when the MQTT task starts (kept in the backoff struct),
not for each delay: every delay of a boot is off its nominal value by the same fraction, so
devices that lost the broker together keep retrying in step."""
BACKOFF_ZERO_AT_BOOT = "backoff_zero_at_boot"
"""Leaves the backoff delay zero-initialised at boot (a static set to 1 s only by the reset
after a connect): a device that boots with its broker unreachable retries at once, over
and over, until its first connect."""
CLEAN_SESSION_AT_BOOT = "clean_session_at_boot"
"""Connects with a clean session at the first connect of each boot ("start from a clean
slate after a restart"), persistent only on reconnects: what the broker kept while the
device was off or restarting is lost."""
WIFI_RSSI_LOGGED_UNSIGNED = "wifi_rssi_logged_unsigned"
"""Prints the connect line's RSSI from a ``uint8_t`` copy of the AP record's ``int8_t``: a
station at -67 dBm says ``rssi=189``."""
WIFI_WARNINGS_IN_TICKS = "wifi_warnings_in_ticks"
"""The Wi-Fi event handler's failed-join warning goes through a log macro of its own that
prints FreeRTOS ticks (100 Hz) where ESP-IDF prints milliseconds since boot: while the AP is
away those lines lag the others' and the times go backwards within a boot."""

# -- mutation review G3 (session 4): OTA and the program runtime
ROLLBACK_SEQ_KEPT_AFTER_UPDATE = "rollback_seq_kept_after_update"
"""Keeps the otadata seq of the rollback it last reported when it installs the next update:
esp_ota_set_boot_partition from all-invalid otadata reuses seq 1, so the next update of the
same slot that fails too is taken for the rollback already reported, and never reported."""

# -- mutation review G1 (session 4): the MQTT link and connectivity
SHUTDOWN_OFFLINE_NOT_RETAINED = "shutdown_offline_not_retained"
"""Publishes its own `offline` on an emergency shutdown without the retain flag: subscribers
online at the time see it, but the broker keeps the retained `online`, so anyone who looks
later is told a device in deep sleep is online."""

# -- mutation review G2 (session 4): periodic tasks, the sensor path, commands and config
REPORT_AT_NEXT_HEARTBEAT = "report_at_next_heartbeat"
"""Acknowledges `report` at once but only sets a flag for the health task, which publishes at
its next heartbeat: the answer comes up to `heartbeat_interval_s` late, not at once."""
RECOVERED_AT_BOOT = "recovered_at_boot"
"""Starts each boot with its sensor-failure flag set (`static bool sensor_failed = true`: no
reading yet), so the first good reading of every boot raises `sensor_recovered` after no
failure."""
SEQ_FROM_ONE = "seq_from_one"
"""Numbers readings with a pre-increment (`reading.seq = ++seq`): the first reading of each
boot carries seq 1, not 0."""
CONFIG_BROKER_ITEM_UNCHECKED = "config_broker_item_unchecked"
"""Checks each `brokers` entry with `strncmp(item->valuestring, "mqtt", 4)` without checking
that the item is a string: a number in the array is a NULL dereference, a panic and a
reboot, where the update was to be rejected with `config/status`."""

# -- issue #12 (contract-complete suites): §5 config, §6 OTA
REJECTED_CONFIG_SAVED = "rejected_config_saved"
"""Checks and saves a config update key by key (``nvs_set_*`` as each passes, one commit):
the first invalid key rejects the update, but the keys before it are in NVS already. The
running boot is unchanged; the next boot, whatever restarts it, runs on them."""
OTA_VERSION_PARTS_EACH_NEWER = "ota_version_parts_each_newer"
"""Takes an offer for newer only when none of its version's parts is lower than the running
one's (``major >= && minor >= && patch >=``, one greater): 2.0.0 is refused under 1.10.0."""
OTA_SELFTEST_TIMEOUT_FROM_PROVISIONING = "ota_selftest_timeout_from_provisioning"
"""Times the OTA self-test by the provisioned ``ota_selftest_timeout_s`` (namespace
``device``), never reading namespace ``config``: a config update of it is acknowledged,
saved and restarted into, and ignored by the one task that uses it."""
OTA_REFUSED_IN_SAFE_MODE = "ota_refused_in_safe_mode"
"""Answers every ``ota/update`` in safe mode with ``rejected`` ("updates are disabled in safe
mode"): the handler is alive, but a boot-looping device can never be fixed remotely."""

# -- issue #12 (contract-complete suites): §9 program runtime
PROGRAM_REJECTION_FALLS_THROUGH = "program_rejection_falls_through"
"""Publishes a deployment's `rejected` and goes on (no ``return`` after the refusal): a
program refused for its size or its hash is accepted and run anyway."""
PROGRAM_HASH_PREFIX_ONLY = "program_hash_prefix_only"
"""Compares the deployment's sha256 with ``strncmp(hex, given, 32)``: the first half of the
64 hex digits (32 bytes taken for 32 characters), so a hash wrong only in its second half passes."""
PROGRAM_COMPARE_FIRST_TWO = "program_compare_first_two"
"""The comparison built-ins compare their first two arguments only (``args[0] < args[1]``),
the rest evaluated and ignored: ``(< 1 3 2)`` is #t."""
PROGRAM_ERROR_GENERIC = "program_error_generic"
"""Reports every failed program with one fixed error, ``"program failed"``: a backend cannot
tell a step budget from a memory budget from an error the program raised."""

# -- issue #12 (contract-complete suites): §7 sensor alerts' timing
SENSOR_FAILURE_LATE_WITHOUT_READING = "sensor_failure_late_without_reading"
"""Starts the no-good-reading clock when the sensor task gives up retrying its init
(``sensor_timeout_s`` of failed attempts, then ``last_ok = now`` before the read loop): in a boot
with no good reading yet, ``sensor_failure`` comes a whole timeout late, 2 × ``sensor_timeout_s``
after the boot."""
RECOVERED_DEBOUNCED = "recovered_debounced"
"""Raises ``sensor_recovered`` only on the second good reading in a row after a failure (a
debounce against a flapping sensor): the first reading back is published without it, and the
alert comes a measurement period late."""

# -- issue #12 (contract-complete suites): §4 one time base on every topic (tests/hil/test_telemetry.py)
ALERTS_TIMESTAMP_UPTIME = "alerts_timestamp_uptime"
"""Stamps alerts with the uptime (``esp_timer_get_time()`` in seconds) instead of the
wall-clock time the readings carry: a backend files every alert in January 1970."""
# -- issue #12 (contract-complete suites): §3 QoS of the backlog (tests/hil/test_mqtt_session.py)
BACKLOG_QOS0 = "backlog_qos0"
"""Sends the readings queued while offline at QoS 0 on reconnect ("flush the backlog fast,
without waiting for each PUBACK"): live readings go at QoS 1, the backlog unacknowledged."""

ALL = frozenset(
    value for name, value in dict(globals()).items() if name.isupper() and isinstance(value, str)
)
