"""Telemetry suite (DEVICE_CONTRACT.md §4): the periodic topics come at their configured
periods with values that agree with each other, and warnings and errors are mirrored to
`logs`.

Periods are judged by `hil.device.periodic.spacing_problems` on the device's clock (payload times)
and on the receive clock, within `hil.device.periodic.DEFAULT_TOLERANCE`: the mean spacing within
±10 % of the interval, no single gap above 1.5× or below 0.5× of it. The intervals are the
session's (hil/session.py FAST_INTERVALS, read with `setting`). Everything is judged from
MQTT and the serial port only.
"""

from __future__ import annotations

import itertools

import pytest

from hil.bme280.faults import Fault
from hil.device import contract
from hil.device.periodic import DEFAULT_TOLERANCE, gaps, spacing_problems, wait_timeout
from tests.hil.provisioned import setting

pytestmark = [pytest.mark.hil, pytest.mark.gate_e2e]

# The serial port's level letters and the `logs` topic's levels (§4).
MIRRORED = {"W": "warning", "E": "error"}
# The ESP32-C3's SRAM (its datasheet: 400 KiB): no free heap, in bytes, is larger.
C3_SRAM_BYTES = 400 * 1024


def one_boot_of_metrics(messages: list[dict]) -> list[dict]:
    """Metrics carry no boot_count: a boot starts where `uptime_seconds` falls."""
    boot: list[dict] = []
    for m in messages:
        if boot and m["metrics"]["uptime_seconds"] < boot[-1]["metrics"]["uptime_seconds"]:
            boot = []
        boot.append(m)
    return boot


@pytest.mark.clause("C4.1", "C4.2", "C4.3", "C4.4", "C4.5", "C4.7", "C4.14")
@pytest.mark.guards(
    "interval_ignored", "heartbeat_2x", "metrics_at_heartbeat", "reading_age_from_boot", "heap_in_kib",
    "metrics_timestamp_uptime",
)  # fmt: skip
def test_sensors_health_and_metrics_come_at_their_intervals_with_consistent_values(dut, mqtt, hil_session) -> None:
    did = dut.device_id
    measure = setting(hil_session, "measurement_interval_s")
    heartbeat = setting(hil_session, "heartbeat_interval_s")
    report = setting(hil_session, "status_report_interval_s")
    tol = DEFAULT_TOLERANCE
    mark = mqtt.mark()
    # Four metrics (three periods of the longest interval); the others come meanwhile.
    metrics_got = mqtt.wait_for(contract.metrics_topic(did), since=mark, count=4, timeout=wait_timeout(report, 4))
    health_got = mqtt.wait_for(contract.health_topic(did), since=mark, count=3, timeout=wait_timeout(heartbeat, 3))
    sensors_got = mqtt.collect(contract.sensors_topic(did), since=mark)
    online_got = [m for m in mqtt.collect(contract.status_topic(did)) if m.json()["state"] == "online"][-1]
    online = online_got.json()

    readings = [m.json() for m in sensors_got]
    health = [m.json() for m in health_got]
    metrics = [m.json() for m in metrics_got]
    for kind, payloads in (("sensors", readings), ("health", health), ("metrics", metrics)):
        for p in payloads:
            assert not contract.validate_payload(kind, p, device_id=did), (kind, p)
    assert {r["boot_count"] for r in readings} == {h["boot_count"] for h in health} == {online["boot_count"]}, (
        "the device restarted, or its topics disagree on boot_count"
    )
    assert one_boot_of_metrics(metrics) == metrics, "metrics' uptime went back: the device restarted"
    assert len(readings) >= 3, f"{len(readings)} readings in {report * 3:g} s"

    # C4.3: one reading per period, none skipped; C4.2/C4.5/C4.7: the periods.
    seqs = [r["seq"] for r in readings]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"seq {seqs}"
    problems = spacing_problems(
        measure, device_times=[r["timestamp"] for r in readings], received_times=[m.at for m in sensors_got], what="sensors"
    )
    problems += spacing_problems(
        heartbeat, device_times=[h["uptime_s"] for h in health], received_times=[m.at for m in health_got], what="health"
    )
    problems += spacing_problems(
        report, device_times=[m["timestamp"] for m in metrics], received_times=[m.at for m in metrics_got], what="metrics"
    )
    # Metrics are stamped with the readings' clock (one device, one time base): each lies
    # within the span of the readings around it, give or take one long measurement period
    # (the first metrics may come before the first reading since the mark, the last after).
    margin = tol.max_ratio * measure + tol.latency_s
    span = (readings[0]["timestamp"] - margin, readings[-1]["timestamp"] + margin)
    strays = [m["timestamp"] for m in metrics if not span[0] <= m["timestamp"] <= span[1]]
    if strays:
        problems.append(f"metrics: timestamps {strays} outside the readings' {span[0]:.3f}..{span[1]:.3f} (another clock)")
    # The device's two clocks in metrics agree: uptime runs with the timestamp.
    for a, b in itertools.pairwise(metrics):
        drift = (b["metrics"]["uptime_seconds"] - a["metrics"]["uptime_seconds"]) - (b["timestamp"] - a["timestamp"])
        if abs(drift) > 0.1 * report:
            problems.append(f"metrics: uptime_seconds and timestamp disagree by {drift:.2f} s over one period")
    assert not problems, "\n".join(problems)

    # C4.4: health's values are this boot's, and agree with each other and the other topics.
    # The heap in bytes (§7 draws its low-memory line at 5000 bytes of free heap): no more
    # than the chip's SRAM, and below that line only with `low_memory` raised this boot.
    # (Whether `min_free_heap` is the low-water mark since boot, and so never rises, the
    # contract does not say: only that it is a minimum, so never above `free_heap`.)
    low_memory = [
        m.json() for m in mqtt.collect(contract.alerts_topic(did)) if m.at >= online_got.at and m.json()["code"] == "low_memory"
    ]
    for h in health:
        assert h["version"] == online["version"] == dut.version, h
        assert h["reset_reason"] == online["reset_reason"], (h, online)
        assert h["safe_mode"] is False, h
        assert h["min_free_heap"] <= h["free_heap"] <= C3_SRAM_BYTES, f"not the free heap of a C3 in bytes: {h}"
        assert h["free_heap"] >= contract.LOW_MEMORY_THRESHOLD_BYTES or low_memory, (
            f"free heap {h['free_heap']} (bytes) is below {contract.LOW_MEMORY_THRESHOLD_BYTES}, "
            f"yet no `low_memory` alert in this boot: {h}"
        )
        # Readings flow: the last one is at most one (long) measurement period old (null
        # only before the first reading of the boot).
        age, settled = h["last_sensor_reading_age_s"], h["uptime_s"] > tol.max_ratio * measure + tol.latency_s
        assert (age is None and not settled) or (age is not None and age <= tol.max_ratio * measure + tol.latency_s), (
            f"readings flow, yet {h}"
        )
    assert len({h["restart_count"] for h in health}) == 1, f"restart_count changed without a restart: {health}"
    assert {m["metrics"]["restart_count"] for m in metrics} == {health[0]["restart_count"]}, (health[0], metrics)
    drops = [h["dropped_readings"] for h in health]
    assert drops == sorted(drops) and drops[-1] == drops[0], f"readings dropped while online: {drops}"
    assert all(m["device_id"] == did for m in metrics)


@pytest.mark.requires("sensor_emulation")
@pytest.mark.clause("C4.9", "C2.5", "C5.6", "C4.3", "C7.5", "C7.6", "C4.7", "C4.8")
@pytest.mark.guards(
    "warnings_not_mirrored", "seq_per_measurement", "logs_timestamp_since_boot", "recovered_after_any_failed_read",
    "alerts_timestamp_uptime",
)  # fmt: skip
def test_warnings_and_errors_are_mirrored_to_logs_with_their_level_and_tag(dut, mqtt, console, sensor, hil_session) -> None:
    did = dut.device_id
    logs, readings = contract.logs_topic(did), contract.sensors_topic(did)
    interval = setting(hil_session, "measurement_interval_s")
    serial, mark = console.mark(), mqtt.mark()
    # A warning: a rejected config update (§5), which the device logs as one.
    mqtt.publish(contract.config_update_topic(did), {"colour": "red"})
    mqtt.wait_for(contract.config_status_topic(did), since=mark, timeout=10)
    mqtt.wait_for(readings, since=mark, timeout=10 * interval + 10)  # one before the failed reads
    # C4.7: the metrics' error count before the errors (no error logged since the mark yet).
    report = setting(hil_session, "status_report_interval_s")
    counted_before = mqtt.wait_for(contract.metrics_topic(did), since=mark, timeout=wait_timeout(report, 1))[0].json()
    # Errors: a sensor that stops answering, for two reads (well inside sensor_timeout_s).
    sensor.fault(Fault.NACK.value)
    try:
        console.expect(contract.SENSOR_ERROR, since=serial, timeout=10 * interval + 10)
        mqtt.wait_for(logs, lambda m: m.json()["level"] == "error", since=mark, count=2, timeout=10 * interval + 10)
    finally:
        sensor.clear_faults()
    mqtt.wait_for(readings, since=mqtt.mark(), timeout=10 * interval + 10)
    # C4.7: `error_count` counts the errors, each once: the metrics after the failed reads
    # (none since) are up by as many as the serial port reported as errors meanwhile.
    counted_after = mqtt.wait_for(contract.metrics_topic(did), since=mqtt.mark(), timeout=wait_timeout(report, 1))[0].json()
    errors = [line for line in console.lines(serial) if (m := contract.LOG_LINE.search(line)) and m["level"] == "E"]
    before_m, after_m = counted_before["metrics"], counted_after["metrics"]
    assert after_m["uptime_seconds"] > before_m["uptime_seconds"], f"the device restarted: {counted_before} then {counted_after}"
    assert after_m["error_count"] - before_m["error_count"] == len(errors), (
        f"error_count {before_m['error_count']} before the failed reads, {after_m['error_count']} after them; "
        f"the serial port reported {len(errors)} error(s) meanwhile: {errors}"
    )
    # C4.3: the failed reads took no seq; the numbering runs on across them.
    mqtt.assert_gapless(readings, since=mark, single_boot=True)
    # A glitch of two reads is no sensor failure (C7.5: none for sensor_timeout_s), so there
    # is no recovery to announce either (C7.6). Each alert would have come before the
    # reading after it.
    timeout_s = setting(hil_session, "sensor_timeout_s")
    silent = max(gaps([m.json()["timestamp"] for m in mqtt.collect(readings, since=mark)]))
    assert silent < timeout_s, f"no reading for {silent:.2f} s, sensor_timeout_s {timeout_s:g} s: not a glitch"
    episode = [a for m in mqtt.collect(contract.alerts_topic(did), since=mark) if (a := m.json())["code"] in ("sensor_failure", "sensor_recovered")]
    assert episode == [], f"a glitch of two failed reads raised {episode}"

    lines = [m for line in console.lines(serial) if (m := contract.LOG_LINE.search(line))]
    on_serial = [(MIRRORED[m["level"]], m["tag"], m["message"]) for m in lines if m["level"] in MIRRORED]
    assert any(level == "warning" for level, _, _ in on_serial), f"no warning on the serial port: {lines}"
    assert any(level == "error" and tag == "sensor" for level, tag, _ in on_serial), on_serial
    # Every warning and error of the serial port (the device stayed online) is on `logs`
    # with its level, tag and message; nothing else is.
    for level, tag, message in on_serial:
        mqtt.wait_for(
            logs,
            lambda m, want=(level, tag, message): (m.json()["level"], m.json()["tag"], m.json()["message"]) == want,
            since=mark,
            timeout=10,
        )
    mirrored = [m.json() for m in mqtt.collect(logs, since=mark)]
    for entry in mirrored:
        assert not contract.validate_payload("logs", entry), entry
    serial_now = [(MIRRORED.get(m["level"], m["level"]), m["tag"], m["message"]) for line in console.lines(serial) if (m := contract.LOG_LINE.search(line))]
    strays = [e for e in mirrored if (e["level"], e["tag"], e["message"]) not in serial_now]
    assert not strays, f"mirrored but never logged as a warning or an error: {strays}"
    stamps = [e["timestamp"] for e in mirrored]
    assert stamps == sorted(stamps), f"mirrored out of order: {stamps}"
    # Stamped with the clock of the other topics (not the serial line's milliseconds since
    # boot): each entry lies within the span of the readings around the test, give or take
    # one long measurement period.
    tol = DEFAULT_TOLERANCE
    margin = tol.max_ratio * interval + tol.latency_s
    around = [m.json()["timestamp"] for m in mqtt.collect(readings, since=mark)]
    span = (min(around) - margin, max(around) + margin)
    strays = [e for e in mirrored if not span[0] <= e["timestamp"] <= span[1]]
    assert not strays, f"mirrored with timestamps outside the readings' {span[0]:.3f}..{span[1]:.3f}: {strays}"
    # C4.8 and §4's one time base: the alerts of the test (the rejected update's
    # `config_rejected` among them) carry the readings' clock too, not an uptime.
    alerts = [m.json() for m in mqtt.collect(contract.alerts_topic(did), since=mark)]
    assert any(a["code"] == "config_rejected" for a in alerts), f"no config_rejected alert for the rejected update: {alerts}"
    strays = [a for a in alerts if not span[0] <= a["timestamp"] <= span[1]]
    assert not strays, f"alerts with timestamps outside the readings' {span[0]:.3f}..{span[1]:.3f}: {strays}"


@pytest.mark.requires("wifi_control")
@pytest.mark.clause("C4.4", "C4.7")
@pytest.mark.guards("rssi_from_join")
def test_health_and_metrics_carry_the_stations_rssi(dut, mqtt, wifi, hil_session) -> None:
    did = dut.device_id
    heartbeat = setting(hil_session, "heartbeat_interval_s")
    report = setting(hil_session, "status_report_interval_s")
    # The rig's own bound on what the board measures against what it was set to: exact on
    # the virtual AP (0 dB), an RF box's calibration on a real one.
    tolerance = wifi.rssi_tolerance_db
    # The signal changes after the join, by more than twice the tolerance: the value the
    # device reports now (and at the join) cannot pass for the new one.
    mark = mqtt.mark()
    mqtt.publish(contract.command_topic(did), {"cmd": "report"})
    now = mqtt.wait_for(contract.health_topic(did), since=mark, timeout=heartbeat + 10)[0].json()["wifi_rssi"]
    step = 2 * tolerance + 10
    rssi = now - step if now - step >= -90 else now + step
    wifi.ap(rssi=rssi)

    def station(value: int | None) -> bool:
        return value is not None and abs(value - rssi) <= tolerance

    # Health on `report` and the next metrics say so (one already on its way may not; a
    # timeout shows what they said instead).
    mark = mqtt.mark()
    mqtt.publish(contract.command_topic(did), {"cmd": "report"})
    health = mqtt.wait_for(
        contract.health_topic(did), lambda m: station(m.json()["wifi_rssi"]), since=mark, timeout=heartbeat + 10
    )[0].json()
    assert not contract.validate_payload("health", health, device_id=did), health
    mqtt.wait_for(
        contract.metrics_topic(did),
        lambda m: station(m.json()["metrics"]["wifi_signal_strength_dbm"]),
        since=mark,
        timeout=wait_timeout(report, 2),
    )


@pytest.mark.clause("C4.6", "C4.4")
@pytest.mark.guards("report_health_cached", "report_at_next_heartbeat")
def test_report_answers_with_the_health_of_that_moment(dut, mqtt, hil_session) -> None:
    """C4.6 "health is also published at once on report": the health of that moment, not the
    last heartbeat's again. Between two health messages of one boot `uptime_s` advances as
    the receive clock does, within a delivery's jitter at each end (and uptime's 0.1 s
    rounding the device may apply)."""
    did = dut.device_id
    health, readings = contract.health_topic(did), contract.sensors_topic(did)
    heartbeat = setting(hil_session, "heartbeat_interval_s")
    measure = setting(hil_session, "measurement_interval_s")
    tol = DEFAULT_TOLERANCE
    beat = mqtt.wait_for(health, since=mqtt.mark(), timeout=wait_timeout(heartbeat, 1))[0]
    # Half a heartbeat interval on: the heartbeat's uptime is that much behind the device's,
    # far more than the jitter allowed below (readings mark the time passing).
    mqtt.wait_for(readings, lambda m: m.at - beat.at >= heartbeat / 2, since=mqtt.mark(), timeout=heartbeat + wait_timeout(measure, 1))
    mark = mqtt.mark()
    mqtt.publish(contract.command_topic(did), {"cmd": "report"})
    answer = mqtt.wait_for(health, since=mark, timeout=heartbeat + 10)[0]
    # "At once": the health follows the command's ack within a delivery's jitter. The next
    # heartbeat is due half an interval less one measurement period after the report at the
    # soonest (here over a second), so a device that leaves the answer to it is late.
    ack = mqtt.wait_for(
        contract.command_ack_topic(did), lambda m: m.json()["cmd"] == "report", since=mark, timeout=10
    )[0]
    assert answer.at - ack.at <= tol.latency_s, (
        f"health {answer.at - ack.at:.2f} s after the report's ack: not published at once on report"
    )
    before = [m for m in mqtt.collect(health) if m.at < answer.at][-1]  # the heartbeat (or a later one)
    now, then = answer.json(), before.json()
    assert not contract.validate_payload("health", now, device_id=did), now
    assert now["boot_count"] == then["boot_count"], f"the device restarted: {then} then {now}"
    advanced, elapsed = now["uptime_s"] - then["uptime_s"], answer.at - before.at
    assert abs(advanced - elapsed) <= 2 * tol.latency_s + 0.1, (
        f"report answered with uptime_s {now['uptime_s']} ({advanced:+.2f} s), {elapsed:.2f} s after a health with "
        f"uptime_s {then['uptime_s']}: not the health of that moment"
    )
