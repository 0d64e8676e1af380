"""Boot (app_main up to the tasks): NVS, provisioning, settings, boot counts, safe mode.

Reads NVS (``device`` = provisioning, ``config`` = settings, ``stats`` = boot/restart
counts); an unprovisioned device logs ``not provisioned`` and waits. Counts the boot,
decides safe mode from the crashes of the last ten minutes (RTC memory), prints the
banner and sets up what the tasks share: the outbox, the link events, the task watchdog.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import replace
from typing import Any, NoReturn

from hil.device import defects as D
from hil.device.contract import DEVICE_NAMESPACE
from hil.device.settings import DeviceConfig, Provisioning
from hil.images.nvs import NvsError, read_nvs
from hil.images.otadata import OtaState
from hil.secret import Secret, reveal
from hil.sim.app import AppContext
from hil.sim.firmware.ota import running_entry_state
from hil.sim.firmware.tasks.outbox import Outbox
from hil.sim.firmware.tasks.shared import STATS_NAMESPACE, Firmware
from hil.sim.firmware.watchdog import TaskWatchdog

CRASH_WINDOW_S = 600.0
CRASHES_FOR_SAFE_MODE = 5


async def boot(fw: Firmware, ctx: AppContext) -> bool:
    """Set ``fw`` up for its tasks: True when they may start, False after a panic (the
    reset it scheduled ends this boot). A device that cannot boot never returns."""
    fw.ctx = ctx
    fw.log = ctx.log
    fw.profile, fw.jitter, fw.sockets = ctx.profile, ctx.jitter, ctx.sockets
    desc = ctx.image.descriptor
    fw.version = desc.version if desc else "unknown"
    fw.reset_reason = ctx.reset_cause.idf_reason
    if ctx.rtc_memory.pop("reset_command", False) and D.RESET_REPORTS_POWERON in fw.defects:
        fw.reset_reason = "POWERON"  # the defect: the cold-boot flag was cleared
    if D.CRASH_REASON_STICKY in fw.defects:  # the defect: an RTC_NOINIT crash reason, never cleared
        if fw.reset_reason in ("PANIC", "TASK_WDT"):
            ctx.rtc_memory["crash_reason"] = fw.reset_reason
        elif fw.reset_reason == "SW" and "crash_reason" in ctx.rtc_memory:
            fw.reset_reason = ctx.rtc_memory["crash_reason"]
    fw.rng = random.Random(int.from_bytes(ctx.mac, "big") ^ int(time.time() * 1000))
    if D.CRASH_ON_BOOT in fw.defects:
        await asyncio.sleep(0.05)  # early in app_main
        fw.panic("Load access fault")
        return False

    nvs_part = ctx.table.nvs
    if nvs_part is None:
        fw.log("E", "app", "no nvs partition")
        await _wait_for_reset()
    fw.nvs_part = nvs_part
    try:
        namespaces = read_nvs(fw.nvs_image())
    except NvsError as exc:
        fw.log("E", "nvs", f"nvs partition unreadable: {exc}")
        namespaces = {}
    prov = Provisioning.from_nvs(namespaces)
    if prov is None and D.PARTIAL_PROVISIONING_ABORTS in fw.defects and DEVICE_NAMESPACE in namespaces:
        # The defect: "not provisioned" only when nvs_open("device") fails; with the namespace
        # there, ESP_ERROR_CHECK(nvs_get_str(h, "device_id", ...)) aborts.
        await asyncio.sleep(0.5)  # after the Wi-Fi and settings reads that found their keys
        fw.panic("abort() was called: ESP_ERROR_CHECK failed: ESP_ERR_NVS_NOT_FOUND")
        return False
    if prov is None:
        fw.log("E", "app", "not provisioned")
        if D.UNPROVISIONED_RUNS_AS_MAC_ID in fw.defects and DEVICE_NAMESPACE in namespaces:
            # The defect: an identity made up from the MAC, the rest of `device` used as found.
            made_up = {**namespaces[DEVICE_NAMESPACE], "device_id": "esp32-" + ctx.mac[-3:].hex()}
            prov = Provisioning.from_nvs({DEVICE_NAMESPACE: made_up})
    if prov is None:
        if D.REBOOTS_WHEN_UNPROVISIONED in fw.defects:
            await asyncio.sleep(0.5)  # app_main goes on to read the missing keys
            fw.panic("abort() was called: ESP_ERROR_CHECK failed: ESP_ERR_NVS_NOT_FOUND")
            return False
        await _wait_for_reset()  # waits for provisioning; never boot-loops
    if "wifi_pass" in fw.behaviour.params:
        # Credentials compiled into the build (CONFIG_ESP_WIFI_PASSWORD) win over NVS:
        # the IDT case of an update that cannot connect.
        prov = replace(prov, wifi_pass=Secret(str(fw.behaviour.params["wifi_pass"])))
    fw.prov = prov
    fw.device_id = prov.device_id
    if D.CONFIG_NOT_PERSISTED in fw.defects and "config_nvs" in ctx.rtc_memory:
        namespaces = read_nvs(ctx.rtc_memory["config_nvs"])  # survives a SW reset only
    config = DeviceConfig.from_nvs(namespaces)
    # Stored garbage (the no-validation defect) reaches the timers as it would on the
    # chip; the floor in Firmware.wait only keeps a zero interval from spinning the host.
    fw.config = config if D.CONFIG_WITHOUT_VALIDATION in fw.defects else config.clamped()
    if D.SENSOR_TIMEOUT_FROM_PROVISIONING in fw.defects:  # the defect: `config` never read for it
        provisioned = DeviceConfig.from_nvs({DEVICE_NAMESPACE: namespaces.get(DEVICE_NAMESPACE, {})}).clamped()
        fw.config = replace(fw.config, sensor_timeout_s=provisioned.sensor_timeout_s)
    _count_boot(fw, namespaces)
    fw.safe_mode = _boot_loop_guard(fw)

    if D.PRINTS_SECRETS in fw.defects:
        fw.log("I", "wifi", f"credentials ssid={prov.wifi_ssid} password={reveal(prov.wifi_pass)}")
    fw.log("I", "app", f"device_id={fw.device_id} version={fw.version} reset_reason={fw.reset_reason}")

    fw.outbox = Outbox(newest_first=D.BACKLOG_NEWEST_FIRST in fw.defects)
    fw.connected = asyncio.Event()
    fw.wifi_up = asyncio.Event()
    fw.wifi_down = asyncio.Event()
    fw.wifi_down.set()
    fw.sensor_ok = asyncio.Event()
    fw.last_reading = None
    fw.last_reading_at = None
    fw.seq = 0
    if D.SEQ_FROM_ONE in fw.defects:
        fw.seq = 1  # the defect: `reading.seq = ++seq`
    fw.error_count = 0
    fw.boot_time = time.monotonic()
    fw.sensor_failure_raised = False
    if D.RECOVERED_AT_BOOT in fw.defects:
        fw.sensor_failure_raised = True  # the defect: "no reading yet" counts as a failure
    fw.hang = set()
    fw.program_task = None
    fw.led = False
    fw.deep_sleep = asyncio.Event()
    fw.background = set()

    watchdog_s = float(fw.config.watchdog_timeout_s)
    if D.WATCHDOG_TIMEOUT_IDF_DEFAULT in fw.defects:
        watchdog_s = 5.0  # the defect: CONFIG_ESP_TASK_WDT_TIMEOUT_S, never reconfigured
    if D.WATCHDOG_TIMEOUT_DOUBLED in fw.defects:
        watchdog_s *= 2
    if D.WATCHDOG_TIMEOUT_HALVED in fw.defects:
        watchdog_s /= 2
    fw.watchdog = TaskWatchdog(watchdog_s, log=fw.log, on_trigger=fw.watchdog_fired)
    fw.pending_verify = running_entry_state(ctx.flash, ctx.table, ctx.running) == OtaState.PENDING_VERIFY
    return True


async def _wait_for_reset() -> NoReturn:
    """Where app_main stops when it cannot go on: nothing more runs until a reset."""
    await asyncio.Event().wait()
    raise AssertionError("unreachable: nothing sets this event")


def _count_boot(fw: Firmware, namespaces: dict[str, dict[str, Any]]) -> None:
    stats = namespaces.get(STATS_NAMESPACE, {})
    fw.boot_count = int(stats.get("boot_count", 0)) + 1
    if D.BOOT_COUNT_IN_RTC in fw.defects:  # the defect: RTC_NOINIT_ATTR, lost at power-on
        fw.boot_count = int(fw.ctx.rtc_memory.get("boot_count", 0)) + 1
        fw.ctx.rtc_memory["boot_count"] = fw.boot_count
    counted = fw.reset_reason != "POWERON" and D.RESTART_COUNT_STUCK not in fw.defects
    if D.RESTART_COUNT_CRASHES_ONLY in fw.defects:  # the defect: "unexpected restarts" only
        counted = fw.reset_reason in ("PANIC", "TASK_WDT", "INT_WDT", "WDT")
    fw.restart_count = int(stats.get("restart_count", 0)) + (1 if counted else 0)
    fw.rollback_seq = int(stats.get("rollback_seq", 0))
    fw.store(STATS_NAMESPACE, {"boot_count": fw.boot_count, "restart_count": fw.restart_count})


def _boot_loop_guard(fw: Firmware) -> bool:
    if D.NO_BOOT_LOOP_GUARD in fw.defects:
        return False  # the defect: the crash count is kept in RAM, lost at every reset
    crashes: list[float] = fw.ctx.rtc_memory.setdefault("crash_times", [])
    now = time.monotonic()
    counted = ("PANIC",) if D.BOOT_LOOP_GUARD_PANICS_ONLY in fw.defects else ("PANIC", "TASK_WDT", "INT_WDT", "WDT")
    if D.BOOT_LOOP_GUARD_COUNTS_SW in fw.defects:
        counted = (*counted, "SW")  # the defect: every reset but a power-on
    if fw.reset_reason in counted:
        crashes.append(now)
    crashes[:] = [t for t in crashes if now - t < CRASH_WINDOW_S]
    return len(crashes) >= CRASHES_FOR_SAFE_MODE
