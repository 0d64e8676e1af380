"""Watchdog resets, the boot-loop guard and remote configuration, through MQTT and the serial port only."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from itertools import combinations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hil.bme280.compensation import Environment
from hil.bme280.faults import Fault
from hil.device import contract
from hil.device.periodic import DEFAULT_TOLERANCE, spacing_problems, wait_timeout
from hil.firmware.catalog import update_image
from hil.services.mqtt import ObserverTimeout
from tests.hil.live import wait_for_live_run
from tests.hil.provisioned import setting

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


# ESP-IDF's task watchdog (esp_task_wdt) is a timer of `watchdog_timeout_s`, restarted once
# every subscribed task has reset it; at expiry its ISR prints the `task_wdt:` lines and
# aborts at once. So from a task's last check-in it fires at the timeout, late only by the
# time the other tasks take to complete their round: a fifth of the timeout is "soon after"
# (C7.8) with room for a loaded rig, and still fails a watchdog armed at 1.5× or 2× the timeout.
WATCHDOG_LATE = 0.2  # of the timeout
# A task checks in once per loop: the sensor task's last check-in is no earlier than its
# last reading less one BME280 forced-mode read (a conversion of at most 10 ms, datasheet
# 9.3 ms at oversampling ×1, and a few ms of I2C at 100 kHz), with room for the host.
CHECKIN_BEFORE_READING_S = 0.25


# What each watched task's hang must fail on: the sensor task's, the watchdog's timing both
# ways (only that task's last check-in is known, from its last reading); the mqtt and health
# tasks', that the watchdog watches them at all.
HANG_GUARDS = {
    "sensor": ("no_watchdog", "watchdog_late", "watchdog_early", "restart_count_stuck"),
    "mqtt": ("mqtt_unwatched",),
    "health": ("health_unwatched",),
}


# ESP-IDF's report when the task watchdog fires with its panic option on (SPEC_FACTS.md §2,
# C2.10 "in ESP-IDF's own wording"): after the `triggered` line, one line per task late,
# the tasks running, then `Aborting.` before the reboot.
WDT_LATE_TASK = re.compile(r"E \(\d+\) task_wdt:\s+- (?P<task>\S+) \(CPU \d\)")
WDT_RUNNING = re.compile(r"E \(\d+\) task_wdt: Tasks currently running:")
WDT_RUNNING_CPU = re.compile(r"E \(\d+\) task_wdt: CPU \d: \S+")
WDT_ABORTING = re.compile(r"E \(\d+\) task_wdt: Aborting\.")


def in_order_problems(lines: list[str], steps: tuple[tuple[str, re.Pattern[str]], ...], what: str) -> list[str]:
    """The steps of ``what`` not found in ``lines`` in their order (each after the last found)."""
    problems, at = [], 0
    for step, pattern in steps:
        found = next((i for i in range(at, len(lines)) if pattern.search(lines[i])), None)
        if found is None:
            problems.append(f"{what}: no {step!r} line after line {at} of {len(lines)}")
        else:
            at = found + 1
    return problems


def watchdog_report_problems(lines: list[str], hung: str) -> list[str]:
    """What is missing or out of order in the task watchdog's report in ``lines`` (from
    before it fired to past the reboot), whose late tasks must name ``hung`` (a firmware's
    task may carry a suffix of its own, `sensor_task`)."""
    steps = (
        ("triggered", contract.TASK_WDT),
        ("late task", WDT_LATE_TASK),
        ("tasks running", WDT_RUNNING),
        ("running on a CPU", WDT_RUNNING_CPU),
        ("Aborting.", WDT_ABORTING),
        ("ROM banner", contract.ROM_RESET),
    )
    problems = in_order_problems(lines, steps, "the task watchdog's report")
    late = [m["task"] for line in lines if (m := WDT_LATE_TASK.search(line))]
    if not any(hung in name for name in late):
        problems.append(f"the watchdog's late tasks {late} do not name the hung task {hung!r}")
    return problems


# ESP-IDF's panic handler on the C3 (SPEC_FACTS.md §2): the Guru Meditation line, the
# register dump, then `Rebooting...` before the next boot's ROM banner.
PANIC_REGISTER_DUMP = re.compile(r"Core\s+\d+ register dump:")
PANIC_REBOOTING = re.compile(r"Rebooting\.\.\.")
PANIC_STEPS = (
    ("Guru Meditation", contract.PANIC),
    ("register dump", PANIC_REGISTER_DUMP),
    ("Rebooting...", PANIC_REBOOTING),
    ("ROM banner", contract.ROM_RESET),
)


# ESP-IDF's task watchdog runs at CONFIG_ESP_TASK_WDT_TIMEOUT_S (5 s) until the firmware
# reconfigures it: values from an update must differ from it and from what was provisioned.
IDF_TASK_WDT_TIMEOUT_S = 5


def updated_timeouts(hil_session) -> dict[str, int]:
    """A watchdog and a sensor timeout other than the provisioned ones and the IDF default,
    short enough to time in seconds."""
    provisioned = {key: setting(hil_session, key) for key in ("watchdog_timeout_s", "sensor_timeout_s")}
    return {
        "watchdog_timeout_s": next(s for s in (3, 4) if s not in (provisioned["watchdog_timeout_s"], IDF_TASK_WDT_TIMEOUT_S)),
        "sensor_timeout_s": next(s for s in (8, 9) if s != provisioned["sensor_timeout_s"]),
    }


def sensor_failure_timed(mqtt, sensor, did: str, timeout_s: float, interval: float) -> None:
    """The sensor NACKs until `sensor_failure`: raised no sooner than ``timeout_s`` after the
    last good reading, and at the first measurement past it (within one long measurement
    period more; as test_sensor's NACK episode). Then it answers again and readings return."""
    readings = contract.sensors_topic(did)
    last_good = mqtt.wait_for(readings, since=mqtt.mark(), timeout=10 * interval + 10)[0].json()
    mark = mqtt.mark()
    sensor.fault(Fault.NACK.value)
    failure = alert_after(mqtt, did, "sensor_failure", mark, timeout=timeout_s + 10 * interval + 10)
    last_good = max([last_good, *(m.json() for m in mqtt.collect(readings, since=mark))], key=lambda r: r["timestamp"])
    held = failure["timestamp"] - last_good["timestamp"]
    late = timeout_s + DEFAULT_TOLERANCE.max_ratio * interval + DEFAULT_TOLERANCE.latency_s
    assert timeout_s - 0.5 <= held <= late, (
        f"sensor_failure {held:.2f} s after the last good reading, sensor_timeout_s {timeout_s:g} s"
    )
    sensor.clear_faults()
    mqtt.wait_for(readings, lambda m: m.json()["timestamp"] >= failure["timestamp"], since=mark, timeout=10 * interval + 10)


@pytest.mark.requires("test_hooks")
@pytest.mark.clause("C5.3", "C7.8", "C7.9", "C2.10", "C4.8", "C4.14")
@pytest.mark.parametrize(
    ("task", "after_update"),
    [
        *(
            pytest.param(
                task,
                False,
                id=task,
                marks=[pytest.mark.guards(*HANG_GUARDS[task]), *([pytest.mark.clause("C4.9")] if task == "sensor" else [])],
            )
            for task in contract.WATCHED_TASKS
        ),
        # C5.8 for the two supervision timeouts: the update's, not the provisioned ones nor
        # IDF's default, time a sensor failure (C7.5) and the hang.
        pytest.param(
            "sensor",
            True,
            id="sensor-after-update",
            marks=[
                pytest.mark.requires("sensor_emulation"),
                pytest.mark.clause("C4.9", "C5.8", "C7.5"),
                pytest.mark.guards("watchdog_timeout_idf_default", "sensor_timeout_from_provisioning"),
            ],
        ),
    ],
)
def test_a_hung_task_trips_the_task_watchdog_at_its_timeout(
    dut, mqtt, console, hil_session, forget_crashes, request, task, after_update
) -> None:
    did = dut.device_id
    timeout_s = setting(hil_session, "watchdog_timeout_s")
    interval = setting(hil_session, "measurement_interval_s")
    if after_update:
        request.getfixturevalue("restore_firmware")  # the provisioned timeouts back afterwards
        update = updated_timeouts(hil_session)
        apply_config(mqtt, console, did, update)
        sensor_failure_timed(mqtt, request.getfixturevalue("sensor"), did, update["sensor_timeout_s"], interval)
        timeout_s = update["watchdog_timeout_s"]
    start = mqtt.mark()
    before = health_now(mqtt, did)
    mqtt.wait_for(contract.sensors_topic(did), since=start, timeout=10 * interval + 10)  # the tasks run
    serial, mark = console.mark(), mqtt.mark()
    mqtt.publish(contract.command_topic(did), {"cmd": "hang", "task": task})
    hang = console.expect(contract.TEST_HOOK_HANG, since=serial, timeout=15)
    assert hang["task"] == task, hang[0]
    # Waited for generously; judged on the device's clock below. Soon after the timeout
    # whichever task hangs: its last check-in was at the hang at the latest.
    fired = console.expect(contract.TASK_WDT, since=serial, timeout=3 * timeout_s + 10)
    latency = (int(fired["ms"]) - int(hang["ms"])) / 1000
    assert latency <= timeout_s * (1 + WATCHDOG_LATE), (
        f"task_wdt {latency:.3f} s after the hang of {task} (device clock), timeout {timeout_s:g} s"
    )
    if task == "sensor":
        # Not before the timeout: the sensor task's last check-in was at its last reading
        # at the earliest. (When the mqtt or health task last checked in before its hang,
        # nothing the device publishes says, so theirs has no lower bound.) The hang's
        # mirrored warning ties the serial clock to the payloads' clock.
        hung = mqtt.wait_for(
            contract.logs_topic(did), lambda m: "hang task=sensor" in m.json()["message"], since=mark, timeout=10
        )[0].json()
        last = max(
            (r for m in mqtt.collect(contract.sensors_topic(did), since=start) if (r := m.json())["timestamp"] <= hung["timestamp"]),
            key=lambda r: r["timestamp"],
        )
        silent = latency + (hung["timestamp"] - last["timestamp"])
        assert silent >= timeout_s - CHECKIN_BEFORE_READING_S, (
            f"task_wdt {silent:.3f} s after the task's last reading, timeout {timeout_s:g} s"
        )
    serial_text = "\n".join(console.lines(serial))
    assert not contract.PANIC.search(serial_text), "a panic, not the task watchdog"
    # C7.9: the next boot says why, counts it, and raises watchdog_reset at its level.
    status = online_after(mqtt, did, mark)
    assert status["reset_reason"] == "TASK_WDT"
    # C2.10/C7.8: the watchdog said so in ESP-IDF's words, naming the task that hung, and
    # aborted (the reboot's banner is in by now).
    report = watchdog_report_problems(console.lines(serial), task)
    assert not report, "\n".join(report)
    after = health_after(mqtt, did, mark, lambda h: h["boot_count"] == status["boot_count"])
    assert after["reset_reason"] == "TASK_WDT" and after["boot_count"] == before["boot_count"] + 1, after
    assert after["restart_count"] == before["restart_count"] + 1, (before, after)
    alert = alert_after(mqtt, did, "watchdog_reset", mark)
    assert alert["level"] == contract.ALERT_LEVEL_BY_CODE["watchdog_reset"], alert


@pytest.mark.clause("C7.8", "C7.9", "C2.10", "C4.8")
@pytest.mark.requires("sensor_emulation")
@pytest.mark.guards("no_watchdog", "watchdog_late", "watchdog_early", "restart_count_stuck")
def test_an_i2c_bus_held_low_ends_in_a_task_watchdog_reset(dut, mqtt, console, sensor, hil_session, forget_crashes) -> None:
    did = dut.device_id
    timeout_s = setting(hil_session, "watchdog_timeout_s")
    interval = setting(hil_session, "measurement_interval_s")
    tol = DEFAULT_TOLERANCE
    before = health_now(mqtt, did)
    running = mqtt.mark()
    mqtt.wait_for(contract.sensors_topic(did), since=running, timeout=wait_timeout(interval, 1))  # the task runs
    serial, mark = console.mark(), mqtt.mark()
    sensor.fault("bus_held_low")  # the sensor task blocks in its next I2C transfer
    # That transfer is at most one (long) measurement period after the last reading, and
    # the watchdog fires soon after the timeout from the task's last check-in before it.
    late = tol.max_ratio * interval + timeout_s * (1 + WATCHDOG_LATE)
    console.expect(contract.TASK_WDT, since=serial, timeout=2 * late + 10)
    sensor.fault("bus_held_low", active=False)  # else the next boot hangs on the bus again
    # Judged on the host's clock (nothing ties the serial port's to the readings' here):
    # the watchdog line's arrival against the last reading's, each late by a delivery.
    fired_at = next(r.monotonic for r in console.records(serial) if not r.marker and contract.TASK_WDT.search(r.text))
    # This boot's readings since the task was seen running (an earlier boot of the session
    # can carry the same boot_count after a reprovisioning, with higher seqs).
    last = max(
        (m for m in mqtt.collect(contract.sensors_topic(did), since=running) if m.json()["boot_count"] == before["boot_count"]),
        key=lambda m: m.json()["seq"],
    )
    silent = fired_at - last.at
    assert timeout_s - CHECKIN_BEFORE_READING_S - tol.latency_s <= silent <= late + tol.latency_s, (
        f"task_wdt {silent:.3f} s after the last reading (host clock), timeout {timeout_s:g} s, "
        f"measurement interval {interval:g} s"
    )
    status = online_after(mqtt, did, mark)
    assert status["reset_reason"] == "TASK_WDT", status
    after = health_after(mqtt, did, mark, lambda h: h["boot_count"] == status["boot_count"])
    assert after["reset_reason"] == "TASK_WDT" and after["restart_count"] == before["restart_count"] + 1, (before, after)
    assert after["safe_mode"] is False
    alert = alert_after(mqtt, did, "watchdog_reset", mark)
    assert alert["level"] == contract.ALERT_LEVEL_BY_CODE["watchdog_reset"], alert
    mqtt.wait_for(  # the sensor is back: a reading of the new boot
        contract.sensors_topic(did),
        lambda m: m.json()["boot_count"] == status["boot_count"],
        since=mark,
        timeout=wait_timeout(interval, 1),
    )


@pytest.mark.clause("C4.14", "C2.1", "C5.1", "C5.3", "C7.9", "C3.5", "C4.4", "C4.3", "C7.6", "C1.3")
@pytest.mark.requires("test_hooks", "power_control")
@pytest.mark.parametrize(
    ("trigger", "reason"),
    [
        pytest.param("power cycle", "POWERON", id="poweron", marks=pytest.mark.guards("boot_count_in_rtc")),
        pytest.param(
            "reset command",
            "SW",
            id="sw",
            marks=pytest.mark.guards("restart_count_crashes_only", "recovered_at_boot", "seq_from_one"),
        ),
        pytest.param("hung task", "TASK_WDT", id="task_wdt", marks=pytest.mark.guards("crash_reason_sticky")),
        pytest.param(
            "crash command",
            "PANIC",
            id="panic",
            marks=pytest.mark.guards("restart_count_stuck", "watchdog_alert_on_panic", "crash_reason_sticky"),
        ),
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
    # C3.5/C4.4: boot_count numbers the boots, whatever ended the last one: a power-on too
    # ((boot_count, seq) names a reading across boots; a count kept in RTC memory restarts).
    assert status["boot_count"] == before["boot_count"] + 1, f"after a {reason} reset: {before} then {status}"
    assert reason in contract.RESET_REASONS_BY_ROM_RESET[rom["name"]], f"serial: {rom[0]}, health: {reason}"
    serial = "\n".join(console.lines(since))
    assert bool(contract.PANIC.search(serial)) == (reason == "PANIC"), serial[-2000:]
    assert bool(contract.TASK_WDT.search(serial)) == (reason == "TASK_WDT"), serial[-2000:]
    # C4.4: restart_count counts the boots that were not power-ons, a reset command's too.
    restarted = 0 if reason == "POWERON" else 1
    assert health["restart_count"] == before["restart_count"] + restarted, f"after a {reason} reset: {before} then {health}"
    if reason == "PANIC":  # C5.3: a panic, as ESP-IDF's handler prints one
        printed = in_order_problems(console.lines(since), PANIC_STEPS, "the panic")
        assert not printed, "\n".join(printed)
    # Only a device without `device_id` says it is not provisioned (C1.3): the line the
    # rig tells an unprovisioned device by.
    assert not contract.NOT_PROVISIONED.search(serial), f"a provisioned device said {contract.NOT_PROVISIONED.pattern!r}"
    # C4.3: the new boot numbers its readings from 0 (delivered in order, the first first).
    first = readings_after(mqtt, device, mark, count=1, boot=status["boot_count"])[0]
    assert first["seq"] == 0, f"the first reading after a {reason} reset: {first}"
    # watchdog_reset on the boot after a watchdog reset, and after no other (C7.9); judged
    # once the new boot's health is in (a stray one raised later would pass unseen).
    if reason == "TASK_WDT":
        alert_after(mqtt, device, "watchdog_reset", mark)
    raised = [a for m in mqtt.collect(contract.alerts_topic(device), since=mark) if (a := m.json())["code"] == "watchdog_reset"]
    assert bool(raised) == (reason == "TASK_WDT"), f"after a {reason} reset: {raised}"
    # No other alert since: a healthy sensor read from the new boot's first reading on is
    # no recovery (C7.6 follows a failure), and a reset alone is no cause for any other.
    others = [a for m in mqtt.collect(contract.alerts_topic(device), since=mark) if (a := m.json())["code"] != "watchdog_reset"]
    assert others == [], f"after a {reason} reset and the first reading: {others}"
    if reason in ("PANIC", "TASK_WDT"):
        # A crash's reason is the next boot's alone (C4.14 "names the actual cause"): a reset
        # command after it boots with SW, and raises no watchdog_reset (C7.9), until then and
        # without a power-on in between.
        mark = mqtt.mark()
        command(mqtt, device, {"cmd": "reset"})
        again = online_after(mqtt, device, mark)
        health = health_after(mqtt, device, mark, lambda h: h["boot_count"] == again["boot_count"])
        assert again["reset_reason"] == health["reset_reason"] == "SW", f"a reset command after a {reason} reset: {health}"
        raised = [a for m in mqtt.collect(contract.alerts_topic(device), since=mark) if (a := m.json())["code"] == "watchdog_reset"]
        assert raised == [], f"a reset command after a {reason} reset: {raised}"


# The crash of the boot-loop run that is a watchdog reset (C7.10 counts both kinds).
HUNG_CRASH = 3


@pytest.mark.clause("C7.10", "C5.3")
@pytest.mark.requires("test_hooks", "power_control")
@pytest.mark.guards("no_safe_mode", "wdt_not_counted", "ota_off_in_safe_mode", "boot_loop_guard_counts_sw", "ota_refused_in_safe_mode")
def test_quick_repeated_crashes_enter_safe_mode_and_a_power_cycle_leaves_it(dut, mqtt, power, forget_crashes, rig, request) -> None:
    device = dut.device_id
    mark = mqtt.mark()
    power.cycle()  # the guard counts crashes since power-on: start from none
    online_after(mqtt, device, mark)
    for crash in range(1, contract.BOOT_LOOP_RESETS + 1):
        hung = crash == HUNG_CRASH
        mark = mqtt.mark()
        command(mqtt, device, {"cmd": "hang", "task": "sensor"} if hung else {"cmd": "crash"})
        status = online_after(mqtt, device, mark)
        health = health_after(mqtt, device, mark, lambda h, boot=status["boot_count"]: h["boot_count"] == boot)
        assert health["reset_reason"] == ("TASK_WDT" if hung else "PANIC"), health
        assert health["safe_mode"] is (crash == contract.BOOT_LOOP_RESETS), f"after {crash} crash(es): {health}"
        if crash == contract.BOOT_LOOP_RESETS - 1:
            # A software reset is no crash (C7.10 counts watchdog and panic resets): one more
            # boot, the crash count unchanged, still no safe mode.
            mark = mqtt.mark()
            command(mqtt, device, {"cmd": "reset"})
            status = online_after(mqtt, device, mark)
            health = health_after(mqtt, device, mark, lambda h, boot=status["boot_count"]: h["boot_count"] == boot)
            assert (health["reset_reason"], health["safe_mode"]) == ("SW", False), f"a reset after {crash} crash(es): {health}"
    assert alert_after(mqtt, device, "safe_mode", mark)["level"] == "critical"
    quiet = mqtt.mark()  # safe mode: broker and OTA only, no sensor task
    # OTA is alive: a stale offer (the running version) is judged and refused at once,
    # which needs no download and no OTA server.
    stale = {"version": dut.version, "url": "http://127.0.0.1:9/never.bin", "size": 1024, "sha256": "0" * 64, "signature": "AA=="}
    mqtt.publish(contract.ota_update_topic(device), stale)
    verdict = mqtt.wait_for(contract.ota_status_topic(device), since=quiet, timeout=15)[0].json()
    assert not contract.validate_payload("ota_status", verdict), verdict
    assert verdict["state"] == "rejected" and verdict["version"] == dut.version, f"in safe mode: {verdict}"
    with pytest.raises(ObserverTimeout):
        mqtt.wait_for(contract.sensors_topic(device), since=quiet, timeout=5)
    if "ota" in rig.capabilities:
        # And OTA does what safe mode keeps it for, fixing the boot loop: a newer signed image
        # installs (an answer that refuses every offer in safe mode is no OTA).
        request.getfixturevalue("restore_firmware")  # the session's firmware back afterwards
        offered = safe_mode_update(mqtt, device, dut.version, request)
        assert online_after(mqtt, device, offered, timeout=60)["version"] != dut.version
    mark = mqtt.mark()
    power.cycle()
    status = online_after(mqtt, device, mark)
    health = health_after(mqtt, device, mark, lambda h: h["boot_count"] == status["boot_count"])
    assert health["reset_reason"] == "POWERON" and health["safe_mode"] is False
    mqtt.wait_for(contract.sensors_topic(device), since=mark, timeout=20)


def safe_mode_update(mqtt, device: str, running: str, request) -> int:
    """Offer the firmware under test as its next minor release and wait for its `success`
    (the first verdict); the MQTT mark from just before the offer."""
    hil_session, server, signer = (request.getfixturevalue(name) for name in ("hil_session", "ota_server", "ota_signer"))
    major, minor, *_ = running.split(".")
    version = f"{major}.{int(minor) + 1}.0"
    image = update_image(hil_session.firmware().choice, version)
    mark = mqtt.mark()
    mqtt.publish(contract.ota_update_topic(device), signer.request(image, server.add("safe-mode.bin", image), version))
    verdict = mqtt.wait_for(
        contract.ota_status_topic(device),
        lambda m: m.json()["state"] in ("success", "rejected", "failed", "rolled_back"),
        since=mark,
        timeout=60,
    )[0].json()
    assert (verdict["state"], verdict["version"]) == ("success", version), f"an update offered in safe mode: {verdict}"
    return mark


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


@pytest.mark.clause("C5.8", "C4.2", "C4.11", "C7.3")
@pytest.mark.requires("sensor_emulation", "power_control")
@pytest.mark.guards("config_not_persisted", "config_update_replaces_saved", "config_ack_after_restart")
def test_a_valid_config_is_applied_from_the_next_boot_and_survives_a_power_cycle(
    restore_firmware, mqtt, console, sensor, power, hil_session
) -> None:
    dut = restore_firmware
    env = Environment(20.0, 45.0, 1000.0)
    sensor.set(env)
    update = {"measurement_interval_s": 2, "calibration_offset_temp": 3.0}  # provisioned: 1 s, 0.0
    mark = mqtt.mark()
    mqtt.publish(contract.config_update_topic(dut.device_id), update)
    status = acked_then_restarted(mqtt, dut.device_id, mark, update)
    assert status["reset_reason"] == "SW"
    # A second update carries only the offset (C5.8: "any of" the keys): the interval the
    # first one saved stays, the new offset applies.
    second = {"calibration_offset_temp": 1.0}
    for when, offset in (("after the update", 3.0), ("after a power cycle", 3.0), ("after a second update of the offset alone", 1.0)):
        # What the boot measured before its broker connection comes in a burst on connect
        # (C3.10; seconds of Wi-Fi join and connect on a real board): judged from the live
        # cadence on (`wait_for_live_run`).
        got, live = wait_for_live_run(
            mqtt, hil_session, contract.sensors_topic(dut.device_id), mark, update["measurement_interval_s"], 4,
            lambda m, boot=status["boot_count"]: m.json()["boot_count"] == boot,
        )  # fmt: skip
        got = got[live:]
        readings = [m.json() for m in got]
        problems = spacing_problems(
            update["measurement_interval_s"],
            device_times=[r["timestamp"] for r in readings],
            received_times=[m.at for m in got],
            what=f"sensors {when}",
        )
        assert not problems, "\n".join(problems)
        assert abs(readings[-1]["temperature_c"] - (env.temperature_c + offset)) <= contract.TEMPERATURE_ACCURACY_C, (when, readings[-1])
        assert not untouched_by_the_offset(readings[-1], env), (when, readings[-1], untouched_by_the_offset(readings[-1], env))
        if when == "after the update":
            mark = mqtt.mark()
            power.cycle()
            status = online_after(mqtt, dut.device_id, mark)
            assert status["reset_reason"] == "POWERON"
        elif when == "after a power cycle":
            mark, status = apply_config(mqtt, console, dut.device_id, second)


def check_applied(status: dict, update: dict) -> None:
    """config/status of an accepted update: ok, and `applied` (when given) names every key."""
    assert status["ok"] is True, f"refused {update}: {status}"
    assert not contract.validate_payload("config_status", status), status
    applied = status.get("applied")
    if isinstance(applied, dict):
        assert applied == update, f"applied {applied}, sent {update}"
    elif applied is not None:
        assert set(applied) == set(update), f"applied {applied}, sent {sorted(update)}"


def acked_then_restarted(mqtt, device: str, mark: int, update: dict) -> dict:
    """C5.8 "acknowledged, then the device restarts": config/status of the update sent after
    ``mark`` says it was applied, and comes before the online status of the boot it restarts
    into (an ack from the next boot would come from a device already running the update).
    The new boot's online status."""
    acked = mqtt.wait_for(contract.config_status_topic(device), since=mark, timeout=10)[0]
    check_applied(acked.json(), update)
    online = mqtt.wait_for(
        contract.status_topic(device), lambda m: m.json().get("state") == "online", since=mark, timeout=40
    )[0]
    assert acked.at < online.at, f"config/status {acked.json()} came after the restart's online status {online.json()}"
    return online.json()


def apply_config(mqtt, console, device: str, update: dict) -> tuple[int, dict]:
    """Send a valid update: acknowledged, then a restart (reason SW, a ROM banner, the next
    boot_count). The mark before it and the new boot's online status."""
    serial, mark = console.mark(), mqtt.mark()
    before = [m.json() for m in mqtt.collect(contract.status_topic(device)) if m.json()["state"] == "online"][-1]
    mqtt.publish(contract.config_update_topic(device), update)
    online = acked_then_restarted(mqtt, device, mark, update)
    assert online["reset_reason"] == "SW" and online["boot_count"] == before["boot_count"] + 1, (before, online)
    console.expect(contract.ROM_RESET, since=serial, timeout=10)
    return mark, online


def untouched_by_the_offset(reading: dict, env: Environment) -> list[str]:
    """C7.3: `calibration_offset_temp` is the temperature's: humidity and pressure read the
    environment within their accuracy whatever the offset (problems; empty when they do)."""
    checks = (
        ("humidity_pct", env.humidity_pct, contract.HUMIDITY_ACCURACY_PCT),
        ("pressure_hpa", env.pressure_hpa, contract.PRESSURE_ACCURACY_HPA),
    )
    return [f"{key} = {reading[key]}, true {true:g} ± {acc:g}" for key, true, acc in checks if abs(reading[key] - true) > acc]


def edges(uri: str, end: str) -> dict:
    """Every key of §5 at the minimum or the maximum of its range."""
    low, high = contract.CALIBRATION_OFFSET_RANGE
    # Never reached (the first one answers), so they can be at the edges of what a URI may
    # be (C1.2's `mqtt://h:p` or `mqtts://h:p`): both schemes, the lowest and highest ports.
    spares = ["mqtt://127.0.0.1:1", "mqtts://127.0.0.1:65535", "mqtt://127.0.0.1:2"][: contract.MAX_BROKERS - 1]
    if end == "minimum":
        return {
            **{key: s.minimum for key, s in contract.CONFIG_INT_SETTINGS.items()},
            "calibration_offset_temp": low,
            "log_level": contract.LOG_LEVELS[0],
            "brokers": [uri],
        }
    return {
        **{key: s.maximum for key, s in contract.CONFIG_INT_SETTINGS.items()},
        "calibration_offset_temp": high,
        "log_level": contract.LOG_LEVELS[-1],
        "brokers": [uri, *spares],
    }


@pytest.mark.requires("sensor_emulation")
@pytest.mark.clause("C5.5", "C5.8", "C5.1", "C4.2", "C4.5", "C4.7", "C4.9", "C4.11", "C7.3", "C7.8")
@pytest.mark.guards("config_max_exclusive", "watchdog_fed_once", "offset_applied_to_humidity")
def test_both_edges_of_every_range_are_accepted_and_applied(restore_firmware, mqtt, console, sensor, hil_session) -> None:
    dut = restore_firmware
    did = dut.device_id
    uri = hil_session.device_provisioning().mqtt_uri
    session_interval = setting(hil_session, "measurement_interval_s")
    env = Environment(20.0, 45.0, 1000.0)  # ±10 °C of offset stays inside −40…85 °C
    sensor.set(env)
    low, high = contract.CALIBRATION_OFFSET_RANGE

    # Every maximum: the first reading of the boot carries +10 °C; the next is a day away,
    # so none comes where the session's interval would have brought several.
    mark, online = apply_config(mqtt, console, did, edges(uri, "maximum"))
    booted = mqtt.mark()  # what the boot before published until its restart is not judged
    first = readings_after(mqtt, did, mark, count=1, boot=online["boot_count"])[0]
    assert abs(first["temperature_c"] - (env.temperature_c + high)) <= contract.TEMPERATURE_ACCURACY_C, first
    assert not untouched_by_the_offset(first, env), (high, first, untouched_by_the_offset(first, env))
    with pytest.raises(ObserverTimeout):
        mqtt.wait_for(
            contract.sensors_topic(did),
            lambda m: m.json()["boot_count"] == online["boot_count"],
            since=mark,
            count=2,
            timeout=3 * session_interval,
        )
    assert not mqtt.collect(contract.metrics_topic(did), since=booted), "metrics within a day's status_report_interval_s"
    health = [m for m in mqtt.collect(contract.health_topic(did), since=mark) if m.json()["boot_count"] == online["boot_count"]]
    assert len(health) <= 1, f"{len(health)} health messages within a day's heartbeat_interval_s"

    # Every minimum: a period of 1 s for all three topics, −10 °C, and a 2 s watchdog that
    # the healthy tasks keep fed.
    update = edges(uri, "minimum")
    mark, online = apply_config(mqtt, console, did, update)
    serial = console.mark()
    boot = lambda m: m.json()["boot_count"] == online["boot_count"]  # noqa: E731
    count = 6
    # Each topic judged from its live cadence on: what the boot produced before its broker
    # connection comes in a burst on connect (C3.10; seconds on a real board).
    period = {key: update[key] for key in ("status_report_interval_s", "measurement_interval_s", "heartbeat_interval_s")}
    metrics, live = wait_for_live_run(mqtt, hil_session, contract.metrics_topic(did), mqtt.mark(), period["status_report_interval_s"], count)
    metrics = metrics[live:]
    readings, live = wait_for_live_run(mqtt, hil_session, contract.sensors_topic(did), mark, period["measurement_interval_s"], count, boot)
    readings = readings[live:]
    health, live = wait_for_live_run(mqtt, hil_session, contract.health_topic(did), mark, period["heartbeat_interval_s"], count, boot, clock="uptime_s")
    health = health[live:]
    problems = []
    for what, got, key in (("sensors", readings, "timestamp"), ("health", health, "uptime_s"), ("metrics", metrics, "timestamp")):
        interval = update[{"sensors": "measurement_interval_s", "health": "heartbeat_interval_s", "metrics": "status_report_interval_s"}[what]]
        problems += spacing_problems(
            interval, device_times=[m.json()[key] for m in got], received_times=[m.at for m in got], what=what
        )
    assert not problems, "\n".join(problems)
    for r in (m.json() for m in readings[1:]):
        assert abs(r["temperature_c"] - (env.temperature_c + low)) <= contract.TEMPERATURE_ACCURACY_C, r
        assert not untouched_by_the_offset(r, env), (low, r, untouched_by_the_offset(r, env))
    assert not contract.TASK_WDT.search("\n".join(console.lines(serial))), "the watchdog fired on healthy tasks"
    # The info line of the accepted update (and any other) is not mirrored to `logs` (C4.9).
    for entry in (m.json() for m in mqtt.collect(contract.logs_topic(did), since=mark)):
        assert entry["level"] in contract.MIRRORED_LOG_LEVELS, entry

    # The two log levels between, and an integer for the (number) offset.
    mark, online = apply_config(mqtt, console, did, {"log_level": contract.LOG_LEVELS[1], "calibration_offset_temp": 0})
    reading = readings_after(mqtt, did, mark, count=2, boot=online["boot_count"])[-1]
    assert abs(reading["temperature_c"] - env.temperature_c) <= contract.TEMPERATURE_ACCURACY_C, reading

    # Every setting is independent (C7.8): tasks whose periods are twice the watchdog's
    # timeout still check in within it, so the watchdog leaves a healthy device alone. Three
    # readings of one boot, spaced by that period (so it is in force): four timeouts.
    watchdog_s = contract.CONFIG_INT_SETTINGS["watchdog_timeout_s"].minimum
    slow = 2 * watchdog_s
    update = {"log_level": contract.LOG_LEVELS[2], "watchdog_timeout_s": watchdog_s, "measurement_interval_s": slow, "heartbeat_interval_s": slow}
    serial = console.mark()
    mark, online = apply_config(mqtt, console, did, update)
    count = 3
    # From the live cadence on: the boot's first reading waits for the broker connection
    # (seconds on a real board), which shortens its gap to the next (C3.10).
    got, live = wait_for_live_run(
        mqtt, hil_session, contract.sensors_topic(did), mark, slow, count,
        lambda m: m.json()["boot_count"] >= online["boot_count"],
    )  # fmt: skip
    got = got[live:]
    fired = [line for line in console.lines(serial) if contract.TASK_WDT.search(line)]
    assert fired == [], f"the watchdog fired on healthy tasks with {update}: {fired}"
    assert {m.json()["boot_count"] for m in got} == {online["boot_count"]}, f"the device restarted: {[m.json() for m in got]}"
    problems = spacing_problems(
        slow, device_times=[m.json()["timestamp"] for m in got], received_times=[m.at for m in got], what="sensors"
    )
    assert not problems, "\n".join(problems)


# What is wrong with an invalid update: the key at fault (None: the payload as a whole) and
# how it is wrong. None where a compliant device may read it either way (bytes that are not
# UTF-8 are a malformed payload, or an unknown log level to a parser that does not check).
Why = tuple[str | None, str] | None


def just_outside(uri: str) -> list[tuple[str, dict | bytes, Why]]:
    """One invalid update per way to be wrong: every range just outside both edges, every
    wrong type, the brokers' count, unknown keys, payloads that are no JSON object."""
    low, high = contract.CALIBRATION_OFFSET_RANGE
    cases: list[tuple[str, dict | bytes, Why]] = []
    for key, s in contract.CONFIG_INT_SETTINGS.items():
        cases += [(f"{key} below", {key: s.minimum - 1}, (key, "value")), (f"{key} above", {key: s.maximum + 1}, (key, "value"))]
        # Every wrong type for every integer key, each a value that would be in range as a
        # number (a fraction truncated, a string or a boolean converted, must not pass).
        cases += [
            (f"{key} boolean", {key: True}, (key, "type")),
            (f"{key} fraction", {key: s.minimum + 0.5}, (key, "type")),
            (f"{key} string", {key: str(s.minimum)}, (key, "type")),
            (f"{key} null", {key: None}, (key, "type")),
        ]
    cases += [
        ("offset below", {"calibration_offset_temp": round(low - 0.01, 2)}, ("calibration_offset_temp", "value")),
        ("offset above", {"calibration_offset_temp": round(high + 0.01, 2)}, ("calibration_offset_temp", "value")),
        ("no broker", {"brokers": []}, ("brokers", "value")),
        ("too many brokers", {"brokers": [uri] * (contract.MAX_BROKERS + 1)}, ("brokers", "value")),
        ("broker not mqtt", {"brokers": ["http://127.0.0.1:1883"]}, ("brokers", "value")),
        ("brokers not a list", {"brokers": uri}, ("brokers", "type")),
        ("broker not a string", {"brokers": [1883]}, ("brokers", "type")),
        ("string for number", {"calibration_offset_temp": "1.5"}, ("calibration_offset_temp", "type")),
        ("boolean for number", {"calibration_offset_temp": True}, ("calibration_offset_temp", "type")),
        ("unknown log level", {"log_level": "chatty"}, ("log_level", "value")),
        ("log level not a string", {"log_level": 2}, ("log_level", "type")),
        # null is no number, no level and no list of URIs (C5.5): a wrong type, rejected as a
        # whole (C5.6), never read as "back to the default" (C5.9's defaults are for a key never
        # given; C5.2's factory reset is the way back to them). Each alone, with valid companions:
        # a device that drops a null key applies the rest.
        ("offset null", {"calibration_offset_temp": None}, ("calibration_offset_temp", "type")),
        ("log level null", {"log_level": None}, ("log_level", "type")),
        ("brokers null", {"brokers": None}, ("brokers", "type")),
        ("unknown key", {"colour": "red"}, ("colour", "unknown key")),
        ("malformed JSON", b'{"measurement_interval_s": 2', (None, "not JSON")),
        ("not an object", b"[2]", (None, "not an object")),
        ("not UTF-8", b'{"log_level": "\xff"}', None),
        # An unknown key twice: JSON that may be read either way (RFC 8259 only says names
        # SHOULD be unique), and rejected either way.
        ("unknown key twice", b'{"colour": "red", "colour": "blue"}', None),
        # Every key wrong at once (a config for another firmware): the answer still comes,
        # however long the list of what is wrong.
        ("every key wrong", {**{key: None for key in contract.CONFIG_KEYS}, "colour": "red"}, None),
    ]
    return cases


def unspecific_errors(errors: dict[str, str], why: dict[str, Why]) -> list[str]:
    """C5.6 "config/status says why": an error names what was wrong, the key or the way it is
    wrong (the contract asks no more, so either will do). Two updates wrong in other keys and
    in other ways with one error between them: that error says neither."""
    return [
        f"{a!r} and {b!r} both answered {errors[a]!r}"
        for a, b in combinations(errors, 2)
        if (wa := why[a]) and (wb := why[b]) and wa[0] != wb[0] and wa[1] != wb[1] and errors[a] == errors[b]
    ]


# Valid keys sent along with each invalid one, each a change a device applying part of a
# rejected update would show: other periods, and an offset in every reading.
COMPANIONS = {"measurement_interval_s": 2, "heartbeat_interval_s": 2, "status_report_interval_s": 3, "calibration_offset_temp": 4.0}


@pytest.mark.requires("sensor_emulation")
@pytest.mark.clause("C5.6", "C5.7", "C4.11", "C4.8", "C4.2", "C4.5", "C4.7", "C7.3")
@pytest.mark.guards(
    "config_unvalidated", "rejected_config_leaks", "config_error_unspecific", "float_timeout_truncated",
    "config_broker_item_unchecked", "rejected_config_saved",
)  # fmt: skip
def test_an_invalid_config_is_rejected_as_a_whole_and_changes_nothing(dut, mqtt, console, sensor, hil_session) -> None:
    did = dut.device_id
    intervals = {key: setting(hil_session, key) for key in ("measurement_interval_s", "heartbeat_interval_s", "status_report_interval_s")}
    env = Environment(20.0, 45.0, 1000.0)
    sensor.set(env)
    mqtt.wait_for(contract.sensors_topic(did), since=mqtt.mark(), count=2, timeout=wait_timeout(intervals["measurement_interval_s"], 2))
    serial, mark = console.mark(), mqtt.mark()
    boot = [m.json() for m in mqtt.collect(contract.status_topic(did)) if m.json()["state"] == "online"][-1]["boot_count"]
    cases = just_outside(hil_session.device_provisioning().mqtt_uri)
    errors: dict[str, str] = {}
    for name, case, _ in cases:
        payload = case if isinstance(case, bytes) else json.dumps({**{k: v for k, v in COMPANIONS.items() if k not in case}, **case})
        sent = mqtt.mark()
        mqtt.publish(contract.config_update_topic(did), payload)
        status = mqtt.wait_for(contract.config_status_topic(did), since=sent, timeout=10)[0].json()
        assert status["ok"] is False, f"{name}: accepted {payload!r}"
        # Exactly what a rejection carries (C4.11, C5.6): `ok` false and an `error` that says
        # why; the schema refuses `applied` when `ok` is false (nothing was) and any other key.
        assert not contract.validate_payload("config_status", status) and status["error"], (name, status)
        errors[name] = status["error"]
    unspecific = unspecific_errors(errors, {name: why for name, _, why in cases})
    assert not unspecific, "config/status does not say why:\n" + "\n".join(unspecific[:5])
    alerts = mqtt.wait_for(
        contract.alerts_topic(did), lambda m: m.json()["code"] == "config_rejected", since=mark, count=len(cases), timeout=30
    )
    for alert in (m.json() for m in alerts):
        assert not contract.validate_payload("alerts", alert, device_id=did), alert
        assert alert["level"] == contract.ALERT_LEVEL_BY_CODE["config_rejected"], alert

    # Unchanged: the same boot, every period as it was, readings without any offset.
    count = 3
    metrics = mqtt.wait_for(
        contract.metrics_topic(did), since=mark, count=count, timeout=wait_timeout(intervals["status_report_interval_s"], count)
    )
    got = {
        "measurement_interval_s": ("timestamp", mqtt.collect(contract.sensors_topic(did), since=mark)),
        "heartbeat_interval_s": ("uptime_s", mqtt.collect(contract.health_topic(did), since=mark)),
        "status_report_interval_s": ("timestamp", metrics),
    }
    problems = []
    for key, (clock, messages) in got.items():
        assert len(messages) >= 3, f"{key}: only {len(messages)} messages"
        problems += spacing_problems(
            intervals[key], device_times=[m.json()[clock] for m in messages], received_times=[m.at for m in messages], what=key
        )
    assert not problems, "\n".join(problems)
    readings = [m.json() for m in got["measurement_interval_s"][1]]
    assert {r["boot_count"] for r in readings} == {boot}, "the device restarted on a rejected config"
    off = [r for r in readings if abs(r["temperature_c"] - env.temperature_c) > contract.TEMPERATURE_ACCURACY_C]
    assert not off, f"the calibration changed: true {env.temperature_c} °C, read {off[:3]}"
    restarts = [m for m in mqtt.collect(contract.status_topic(did), since=mark) if m.json()["state"] == "online"]
    assert restarts == [], "the device restarted on a rejected config"
    assert not any(contract.ROM_RESET.search(line) for line in console.lines(serial)), "a ROM banner: the device restarted"

    # Unchanged in NVS too (C5.7 "every setting as it was"; C5.8 saves only a valid update):
    # a device that saved the keys of a rejected update as it walked them, up to the bad one,
    # runs on as before until a restart, then boots into them. After a reset, no offset.
    mark = mqtt.mark()
    command(mqtt, did, {"cmd": "reset"})
    again = online_after(mqtt, did, mark)
    assert again["boot_count"] == boot + 1, again
    reading = readings_after(mqtt, did, mark, count=1, boot=again["boot_count"])[0]
    assert abs(reading["temperature_c"] - env.temperature_c) <= contract.TEMPERATURE_ACCURACY_C, (
        f"after a reset the calibration changed: true {env.temperature_c} °C, read {reading}: a rejected update was saved"
    )


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


@pytest.mark.clause("C5.6", "C5.7", "C4.11")
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
