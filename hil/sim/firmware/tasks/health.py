"""The health and metrics tasks: heartbeats every ``heartbeat_interval_s`` (and on the
``report`` command), metrics every ``status_report_interval_s``."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from hil.device import contract
from hil.device import defects as D
from hil.sim.firmware.tasks.shared import Firmware

FREE_HEAP = 182_344


def station_rssi(fw: Firmware) -> int | None:
    """The station's RSSI now (``esp_wifi_sta_get_ap_info``), for health and metrics."""
    if fw.rig is None:
        return None
    if D.WIFI_RSSI_FROM_JOIN in fw.defects:
        return fw.joined_rssi  # the defect: the connect event's, however the signal changed since
    return fw.rig.ap.rssi


class HealthTask:
    """Heartbeats on ``health``; the task watchdog watches this task."""

    def __init__(self, fw: Firmware) -> None:
        self.fw = fw
        self._last_heartbeat: dict[str, Any] | None = None
        """The last heartbeat's payload (the ``report_health_cached`` defect answers with it)."""

    def _health(self) -> dict[str, Any]:
        fw = self.fw
        age = None if fw.last_reading_at is None else round(time.monotonic() - fw.last_reading_at, 1)
        if age is not None and D.READING_AGE_FROM_BOOT in fw.defects:
            age = round(time.monotonic() - fw.boot_time, 1)  # the defect: counted from boot
        # The defect: KiB, from a debug print's `esp_get_free_heap_size() / 1024`.
        unit = 1024 if D.HEAP_REPORTED_IN_KIB in fw.defects else 1
        return {
            "uptime_s": round(time.monotonic() - fw.boot_time, 1),
            "free_heap": FREE_HEAP // unit,
            "min_free_heap": (FREE_HEAP - 4096) // unit,
            "wifi_rssi": station_rssi(fw) if fw.wifi_up.is_set() else None,
            "cpu_temp_c": 41.5,
            "last_sensor_reading_age_s": age,
            "version": fw.version,
            "reset_reason": fw.reset_reason,
            "boot_count": fw.boot_count,
            "restart_count": fw.restart_count,
            "dropped_readings": fw.outbox.dropped_readings,
            "safe_mode": fw.safe_mode,
        }

    def publish_health(self) -> None:
        """A heartbeat: the health now."""
        self._last_heartbeat = self._health()
        self.fw.publish(contract.health_topic(self.fw.device_id), self._last_heartbeat)

    def report(self) -> None:
        """The answer to the ``report`` command: the health now, as a heartbeat's."""
        if D.REPORT_HEALTH_CACHED in self.fw.defects and self._last_heartbeat is not None:
            self.fw.publish(contract.health_topic(self.fw.device_id), self._last_heartbeat)  # the defect: stale
            return
        if D.REPORT_AT_NEXT_HEARTBEAT in self.fw.defects:
            return  # the defect: a flag for the health task, which answers at its next heartbeat
        self.publish_health()

    async def run(self) -> None:
        fw = self.fw
        if D.HEALTH_NOT_WATCHED not in fw.defects:  # the defect: never subscribed
            fw.watchdog.subscribe("health")
        while not fw.connected.is_set():  # waiting for the broker is not hanging
            if "health" not in fw.hang:
                fw.watchdog.feed("health")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fw.connected.wait(), fw.watchdog.timeout_s / 2)
        if D.CONFIG_ACK_AFTER_RESTART in fw.defects and "config_ack" in fw.ctx.rtc_memory:
            # The defect: the saved update is acknowledged from the boot that runs it.
            fw.publish(contract.config_status_topic(fw.device_id), fw.ctx.rtc_memory.pop("config_ack"))
        if fw.reset_reason == "TASK_WDT" or (fw.reset_reason == "PANIC" and D.WATCHDOG_RESET_ALERT_ON_PANIC in fw.defects):
            fw.alert("warning", "watchdog_reset", "the previous boot ended in a task watchdog reset")
        if fw.safe_mode:
            fw.alert("critical", "safe_mode", "boot loop detected: safe mode (broker and OTA only)")
        while True:
            self.publish_health()
            await fw.wait("health", float(fw.config.heartbeat_interval_s))
            if D.HEARTBEAT_DOUBLED in fw.defects:
                await fw.wait("health", float(fw.config.heartbeat_interval_s))


class MetricsTask:
    """Metrics on ``metrics``; not watched."""

    def __init__(self, fw: Firmware) -> None:
        self.fw = fw

    async def run(self) -> None:
        fw = self.fw
        while True:
            period = fw.config.status_report_interval_s
            if D.METRICS_AT_HEARTBEAT in fw.defects:
                period = fw.config.heartbeat_interval_s  # the defect: copied from the health task
            await asyncio.sleep(max(float(period), 0.1))
            stamp = time.time()
            if D.METRICS_TIMESTAMP_UPTIME in fw.defects:
                stamp = round(time.monotonic() - fw.boot_time, 1)  # the defect: esp_timer's uptime
            fw.publish(
                contract.metrics_topic(fw.device_id),
                {
                    "device_id": fw.device_id,
                    "timestamp": stamp,
                    "metrics": {
                        "cpu_usage_percent": 3.5,
                        "memory_usage_bytes": 327_680 - FREE_HEAP,
                        "network_latency_ms": 2.0,
                        "sensor_read_time_ms": round(getattr(fw, "read_time_ms", 0.0), 2),
                        "mqtt_publish_time_ms": 1.0,
                        "wifi_signal_strength_dbm": station_rssi(fw),
                        "uptime_seconds": round(time.monotonic() - fw.boot_time, 1),
                        "restart_count": fw.restart_count,
                        "error_count": fw.error_count,
                    },
                },
            )
