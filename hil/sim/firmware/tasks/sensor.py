"""The sensor task: BME280 readings at the measurement interval, published as telemetry.

Through the board's I2C bus and the project's driver (``hil.bme280.driver``), Bosch
compensation, ``calibration_offset_temp``; out-of-range readings withheld with an alert;
``sensor_failure`` once per episode with no good reading (reads failing, or every value out
of range) for ``sensor_timeout_s``, ``sensor_recovered`` after.
"""

from __future__ import annotations

import asyncio
import errno
import json
import time

from hil.bme280.driver import BME280Driver, SensorBusError, SensorError
from hil.device import contract
from hil.device import defects as D
from hil.device.settings import DeviceConfig
from hil.sim.firmware.tasks.shared import Firmware


def esp_error(exc: BaseException) -> str:
    """A failed bus transfer as ESP-IDF's I2C driver reports it (``esp_err_to_name`` of what
    ``i2c_master_cmd_begin`` returns): ``ESP_FAIL`` when the chip did not acknowledge,
    ``ESP_ERR_TIMEOUT`` when the bus stayed busy (SCL or SDA held); never a host errno. A
    driver-level check (chip id, calibration, a measurement that never ends) keeps its words."""
    if not isinstance(exc, OSError):
        return str(exc)
    name = "ESP_ERR_TIMEOUT" if exc.errno == errno.ETIMEDOUT else "ESP_FAIL"
    return f"{exc.operation}: {name}" if isinstance(exc, SensorBusError) else name


class SensorTask:
    """Reads, checks and queues one reading per measurement period."""

    def __init__(self, fw: Firmware) -> None:
        self.fw = fw
        self.failure_alerted = False
        """Whether this boot has raised ``sensor_failure`` at all (any episode)."""
        self.glitched = False
        """A read failed since the last good one (the ``recovered_after_any_failed_read`` defect)."""
        self.recovery_armed = False
        """A good reading came since ``sensor_failure`` (the ``recovered_debounced`` defect)."""

    async def run(self) -> None:
        fw = self.fw
        fw.watchdog.subscribe("sensor")
        if fw.behaviour.params.get("hang_at_boot") == "sensor":
            fw.hang.add("sensor")  # an image whose sensor init never returns
            await self._sensor_wait()
        if fw.rig is None:
            fw.log("E", "sensor", "no sensor bus")
            return
        driver = BME280Driver(fw.rig.bus, 0x76)
        while True:
            try:
                await asyncio.to_thread(driver.initialise)
                fw.log("I", "sensor", "bme280 id=0x60 addr=0x76")
                break
            except SensorError as exc:
                # The defect: a plain ESP_LOGE, outside the mirroring logger.
                log = fw.log if D.SENSOR_INIT_ERROR_NOT_MIRRORED in fw.defects else fw.log_mirrored
                log("E", "sensor", str(exc))
                if "calibration" in str(exc).lower():
                    fw.alert("warning", "sensor_calibration", str(exc))
                elif D.CHIP_ID_ALERTED_AS_CALIBRATION in fw.defects:
                    fw.alert("warning", "sensor_calibration", str(exc))  # the defect: any init failure
                self._sensor_failed()
            except OSError as exc:
                fw.log_mirrored("E", "sensor", f"i2c error: {esp_error(exc)}")
                self._sensor_failed()
            await self._sensor_wait()
        due = time.monotonic()
        while True:
            started = time.monotonic()
            # A fixed rate, as the firmware's ticker keeps it: each period is due one
            # interval after the last was, however long the read or the wake-up took;
            # fallen behind by more than an interval (a stall), it starts afresh rather
            # than bursting catch-up readings.
            interval = self._measurement_interval_s()
            due = due + interval if started - due <= interval else started + interval
            seq_before = fw.seq
            try:
                reading = await asyncio.to_thread(driver.read)
            except (SensorError, OSError) as exc:
                fw.error_count += 1
                if D.RECOVERED_AFTER_ANY_FAILED_READ in fw.defects:
                    self.glitched = True
                fw.log_mirrored("E", "sensor", f"read failed: {esp_error(exc)}")
                self._sensor_failed()
            else:
                fw.read_time_ms = (time.monotonic() - started) * 1000
                self._on_reading(reading.temperature_c, reading.humidity_pct, reading.pressure_hpa)
            if D.SEQ_PER_MEASUREMENT in fw.defects and fw.seq == seq_before:
                fw.seq += 1  # the defect: the measurement's number is spent, published or not
            await self._sensor_wait(due)

    def _measurement_interval_s(self) -> float:
        if D.MEASUREMENT_INTERVAL_IGNORED in self.fw.defects:
            return float(DeviceConfig().measurement_interval_s)  # the built-in default
        return float(self.fw.config.measurement_interval_s)

    async def _sensor_wait(self, due: float | None = None) -> None:
        """Wait until ``due`` (the next tick of the measurement period), or one interval."""
        fw = self.fw
        interval = self._measurement_interval_s()
        if D.WATCHDOG_FED_ONCE_PER_LOOP in fw.defects:
            if "sensor" not in fw.hang:
                fw.watchdog.feed("sensor")  # the defect: once, then the whole period asleep
            await asyncio.sleep(max(interval if due is None else due - time.monotonic(), 0.1))
        else:
            await fw.wait("sensor", interval if due is None else due - time.monotonic())
        if D.PROGRAMS_BLOCK_SENSOR in fw.defects and fw.program_task is not None:
            await asyncio.wait({fw.program_task})  # the defect: programs run on this task
        while "sensor" in fw.hang:
            await asyncio.sleep(3600)  # a hung task: stuck, not feeding the watchdog

    def _sensor_failed(self) -> None:
        fw = self.fw
        since = fw.last_reading_at or fw.boot_time
        if D.SENSOR_FAILURE_AT_ONCE_WITHOUT_READING in fw.defects and fw.last_reading_at is None:
            since = fw.boot_time - fw.config.sensor_timeout_s  # the defect: no reading yet is a timeout
        if D.SENSOR_FAILURE_LATE_WITHOUT_READING in fw.defects and fw.last_reading_at is None:
            since = fw.boot_time + fw.config.sensor_timeout_s  # the defect: the clock starts as init gives up
        if (
            (not fw.sensor_failure_raised or D.SENSOR_FAILURE_REPEATED in fw.defects)
            and time.monotonic() - since >= fw.config.sensor_timeout_s
            and D.IGNORES_SENSOR_TIMEOUT not in fw.defects
            and not (self.failure_alerted and D.SENSOR_FAILURE_ONCE_PER_BOOT in fw.defects)
        ):
            fw.sensor_failure_raised = True
            self.failure_alerted = True
            if D.RECOVERED_DEBOUNCED in fw.defects:
                self.recovery_armed = False
            fw.alert("critical", "sensor_failure", f"no good reading for {fw.config.sensor_timeout_s} s")

    def _on_reading(self, temperature: float, humidity: float, pressure: float) -> None:
        fw = self.fw
        temperature += float(fw.config.calibration_offset_temp)
        if D.OFFSET_APPLIED_TO_HUMIDITY in fw.defects:
            humidity += float(fw.config.calibration_offset_temp)  # the defect: every channel
        if D.TEMPERATURE_HIGH_2C in fw.defects:
            temperature += 2.0
        t_lo, t_hi = contract.TEMPERATURE_RANGE_C
        h_lo, h_hi = contract.HUMIDITY_RANGE_PCT
        p_lo, p_hi = contract.PRESSURE_RANGE_HPA
        # The defect: the range is checked on whole degrees (int32 centi-degrees / 100 in C).
        checked = float(int(temperature)) if D.RANGE_CHECK_TRUNCATES in fw.defects else temperature
        if D.RANGE_CHECKED_BEFORE_OFFSET in fw.defects:
            checked -= float(fw.config.calibration_offset_temp)  # the defect: the driver's check, uncalibrated
        in_range = t_lo <= checked <= t_hi and h_lo <= humidity <= h_hi and p_lo <= pressure <= p_hi
        if not in_range and D.OUT_OF_RANGE_PUBLISHED not in fw.defects:
            fw.log_mirrored("W", "sensor", f"out of range t={temperature:.2f} h={humidity:.2f} p={pressure:.2f}")
            fw.alert("warning", "sensor_out_of_range", f"t={temperature:.2f} h={humidity:.2f} p={pressure:.2f}")
            # C7.5: a value withheld is no good reading; the sensor timeout runs on (the
            # defect: only failed reads count).
            if D.OUT_OF_RANGE_NOT_A_FAILURE not in fw.defects:
                self._sensor_failed()
            return
        fw.last_reading = {"temperature": temperature, "humidity": humidity, "pressure": pressure}
        fw.last_reading_at = time.monotonic()
        fw.sensor_ok.set()
        if D.RECOVERED_AFTER_ANY_FAILED_READ in fw.defects and self.glitched and not fw.sensor_failure_raised:
            fw.alert("info", "sensor_recovered", "readings are back")  # the defect: no failure was raised
        if D.RECOVERED_AFTER_ANY_FAILED_READ in fw.defects:
            self.glitched = False
        if D.RECOVERED_DEBOUNCED in fw.defects and fw.sensor_failure_raised and not self.recovery_armed:
            self.recovery_armed = True  # the defect: the first good reading back only arms the recovery
        elif fw.sensor_failure_raised:
            fw.sensor_failure_raised = False
            fw.alert("warning" if D.RECOVERED_AS_WARNING in fw.defects else "info", "sensor_recovered", "readings are back")
        payload = {
            "device_id": fw.device_id,
            "boot_count": fw.boot_count,
            "seq": fw.seq,
            "timestamp": time.time(),
            "temperature_c": round(temperature, 2),
            "humidity_pct": round(humidity, 2),
            "pressure_hpa": round(pressure, 2),
        }
        fw.seq += 1
        if not fw.connected.is_set() and D.OFFLINE_READINGS_DROPPED in fw.defects:
            return  # the defect: "publish failed" is not retried, and nobody counts it
        fw.outbox.put_reading(contract.sensors_topic(fw.device_id), json.dumps(payload).encode())
