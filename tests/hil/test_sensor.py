"""Sensor suite (DEVICE_CONTRACT.md §4, §7): what the device measures, when it publishes it,
what it withholds and what it says when the sensor fails.

The environment and the faults are set through the `sensor` fixture (the rig's sensor
emulator); everything is judged from MQTT and the serial port only. Intervals are the
session's (hil/session.py FAST_INTERVALS): readings every second, a sensor timeout of 5 s.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hil.bme280.compensation import Environment
from hil.bme280.faults import Fault
from hil.device import contract
from hil.device.periodic import DEFAULT_TOLERANCE, wait_timeout
from hil.reporting.charts import accuracy_chart
from hil.reporting.report import attach_svg
from hil.services.mqtt import ObserverTimeout
from tests.hil.provisioned import setting

pytestmark = [pytest.mark.hil, pytest.mark.gate_e2e]

ACC_T = contract.TEMPERATURE_ACCURACY_C
ACC_H = contract.HUMIDITY_ACCURACY_PCT
ACC_P = contract.PRESSURE_ACCURACY_HPA
T_LO, T_HI = contract.TEMPERATURE_RANGE_C
H_LO, H_HI = contract.HUMIDITY_RANGE_PCT
P_LO, P_HI = contract.PRESSURE_RANGE_HPA
ROOM = Environment(22.0, 45.0, 1013.25)



def span(low: float, high: float, steps: int = 1000) -> st.SearchStrategy[float]:
    """Values on a grid over low..high: a few examples then spread over the whole span
    (plain floats crowd around 0 and the bounds)."""
    return st.integers(0, steps).map(lambda i: low + (high - low) * i / steps)


# A device must publish every environment that lies inside the range by its accuracy: one
# within the accuracy of an edge may rightly read as just outside it and be withheld.
# Humidity is clamped to 0…100 %RH by Bosch's compensation, so its edges are exact.
inside_the_range = st.builds(
    Environment,
    temperature_c=span(T_LO + ACC_T, T_HI - ACC_T),
    humidity_pct=span(H_LO, H_HI),
    pressure_hpa=span(P_LO + ACC_P, P_HI - ACC_P),
)


def alert(code: str):
    return lambda m: m.json().get("code") == code


@pytest.fixture
def environment(sensor):
    """The sensor emulator, put back to the environment it had after the test."""
    before = sensor.get()
    try:
        yield sensor
    finally:
        sensor.set(before)


@pytest.fixture
def sweep_chart():
    """(true, reported) per quantity over a sweep's examples; on the report as pictures of
    the error against the accuracy band, failed or not (Hypothesis runs every example
    against this one fixture instance)."""
    points: dict[str, list[tuple[float, float]]] = {"temperature_c": [], "humidity_pct": [], "pressure_hpa": []}
    yield points
    for key, band, unit in (("temperature_c", ACC_T, "°C"), ("humidity_pct", ACC_H, "%RH"), ("pressure_hpa", ACC_P, "hPa")):
        if points[key]:
            attach_svg(f"sweep: {key}", accuracy_chart(points[key], band, title=f"{key}: reported - true", unit=unit))


def reading_of(mqtt, device_id: str, env: Environment, sensor, interval_s: float) -> dict:
    """Expose the sensor to ``env`` and return the first reading converted after that."""
    sensor.set(env)
    mark = mqtt.mark()
    # The first reading may have been converted before the change: judge the second.
    return mqtt.wait_for(contract.sensors_topic(device_id), since=mark, count=2, timeout=10 * interval_s + 10)[1].json()


def accuracy_problems(reading: dict, env: Environment) -> list[str]:
    checks = (
        ("temperature_c", env.temperature_c, ACC_T),
        ("humidity_pct", env.humidity_pct, ACC_H),
        ("pressure_hpa", env.pressure_hpa, ACC_P),
    )
    return [
        f"{key} = {reading[key]}, true {true:.3f} ± {tolerance}"
        for key, true, tolerance in checks
        if abs(reading[key] - true) > tolerance
    ]


# -- readings ---------------------------------------------------------------------------
@pytest.mark.clause("C7.3", "C4.1", "C5.9")
@pytest.mark.requires("sensor_emulation")
@pytest.mark.guards("temp_high_2c")
@settings(settings.get_profile("rig"))
@given(env=inside_the_range)
def test_readings_match_the_environment_across_the_range(dut, mqtt, environment, hil_session, sweep_chart, env) -> None:
    reading = reading_of(mqtt, dut.device_id, env, environment, setting(hil_session, "measurement_interval_s"))
    for key, true in (("temperature_c", env.temperature_c), ("humidity_pct", env.humidity_pct), ("pressure_hpa", env.pressure_hpa)):
        if isinstance(reading.get(key), (int, float)):
            sweep_chart[key].append((true, reading[key]))
    assert not contract.validate_payload("sensors", reading, device_id=dut.device_id)
    assert not accuracy_problems(reading, env), f"{env}: {reading}"


@pytest.mark.clause("C7.3", "C7.4", "C4.1")
@pytest.mark.parametrize(
    "env",
    [
        pytest.param(Environment(T_LO + ACC_T, H_LO, P_LO + ACC_P), id="cold-dry-thin"),
        pytest.param(Environment(T_HI - ACC_T, H_HI, P_HI - ACC_P), id="hot-wet-dense"),
        pytest.param(Environment(T_LO + ACC_T, H_HI, P_HI - ACC_P), id="cold-wet-dense"),
        pytest.param(
            Environment(T_HI - ACC_T, H_LO, P_LO + ACC_P), id="hot-dry-thin", marks=pytest.mark.guards("temp_high_2c")
        ),
    ],
)
@pytest.mark.requires("sensor_emulation")
def test_readings_at_the_extremes_of_the_range_are_published(dut, mqtt, environment, hil_session, env) -> None:
    reading = reading_of(mqtt, dut.device_id, env, environment, setting(hil_session, "measurement_interval_s"))
    assert not contract.validate_payload("sensors", reading, device_id=dut.device_id)
    assert not accuracy_problems(reading, env), f"{env}: {reading}"


@pytest.mark.clause("C7.4", "C7.5", "C7.6", "C4.3", "C4.8", "C4.4")
@pytest.mark.parametrize(
    "env",
    [
        pytest.param(
            Environment(T_LO - 5 * ACC_T, 45.0, 1013.25),
            id="too-cold",
            marks=pytest.mark.guards("out_of_range_not_a_failure", "seq_per_measurement"),
        ),
        pytest.param(
            Environment(T_HI + 5 * ACC_T, 45.0, 1013.25), id="too-hot", marks=pytest.mark.guards("publishes_out_of_range")
        ),
        pytest.param(Environment(22.0, 45.0, P_LO - 20 * ACC_P), id="pressure-too-low"),
        pytest.param(Environment(22.0, 45.0, P_HI + 20 * ACC_P), id="pressure-too-high"),
    ],
)
@pytest.mark.requires("sensor_emulation")
def test_out_of_range_values_are_withheld_with_an_alert(dut, mqtt, environment, hil_session, env) -> None:
    did = dut.device_id
    alerts, readings = contract.alerts_topic(did), contract.sensors_topic(did)
    interval, timeout_s = setting(hil_session, "measurement_interval_s"), setting(hil_session, "sensor_timeout_s")
    # A reading before the episode: the seq check at the end spans it.
    before = mqtt.mark()
    mqtt.wait_for(readings, since=before, timeout=10 * interval + 10)
    mark = mqtt.mark()
    environment.set(env)
    first = mqtt.wait_for(alerts, alert("sensor_out_of_range"), since=mark, timeout=10 * interval + 10)
    warning = first[0].json()
    assert not contract.validate_payload("alerts", warning, device_id=did)
    assert warning["level"] == contract.ALERT_LEVEL_BY_CODE["sensor_out_of_range"] == "warning", warning
    # A value withheld is no good reading (C7.5): sensor_timeout_s after the last reading
    # published, sensor_failure.
    failure = mqtt.wait_for(alerts, alert("sensor_failure"), since=mark, timeout=timeout_s + 10 * interval + 10)[0].json()
    assert not contract.validate_payload("alerts", failure, device_id=did)
    assert failure["level"] == contract.ALERT_LEVEL_BY_CODE["sensor_failure"] == "critical", failure
    # Time passes with no good reading (health says how long), and none is published.
    mqtt.wait_for(
        contract.health_topic(did),
        lambda m: (m.json().get("last_sensor_reading_age_s") or 0) >= 3 * interval,
        since=mark,
        timeout=setting(hil_session, "heartbeat_interval_s") + 10 * interval + 10,
    )
    published = [m.json() for m in mqtt.collect(readings, since=before)]
    late = [r for r in published if r["timestamp"] > warning["timestamp"]]
    assert not late, f"published while the environment was {env}: {late}"
    assert_failure_timed(failure, max(published, key=lambda r: r["timestamp"]), timeout_s, interval)
    # Back in range, readings return, and the failure is cleared.
    back = reading_of(mqtt, did, ROOM, environment, interval)
    assert not accuracy_problems(back, ROOM), back
    recovered = mqtt.wait_for(alerts, alert("sensor_recovered"), since=mark, timeout=10 * interval + 10)[0].json()
    assert recovered["level"] == contract.ALERT_LEVEL_BY_CODE["sensor_recovered"] == "info", recovered
    assert_recovered_with_the_first_reading(mqtt, did, mark, failure, recovered, interval)
    episode = [c for m in mqtt.collect(alerts, since=mark) if (c := m.json()["code"]) in ("sensor_failure", "sensor_recovered")]
    assert episode == ["sensor_failure", "sensor_recovered"], f"once per episode, then cleared: got {episode}"
    # C4.3: a value withheld takes no seq; the numbering runs on across the episode.
    mqtt.assert_gapless(readings, since=before, single_boot=True)


def assert_failure_timed(failure: dict, last_good: dict, timeout_s: float, interval: float) -> None:
    """sensor_failure no sooner than sensor_timeout_s after the last good reading, and at the
    first measurement past it: within one (long) measurement period more."""
    held = failure["timestamp"] - last_good["timestamp"]
    assert held >= timeout_s - 0.5, f"raised {held:.2f} s after the last reading: before sensor_timeout_s ({timeout_s:g} s)"
    late = timeout_s + DEFAULT_TOLERANCE.max_ratio * interval + DEFAULT_TOLERANCE.latency_s
    assert held <= late, f"raised {held:.2f} s after the last reading (sensor_timeout_s {timeout_s:g} s)"


def assert_recovered_with_the_first_reading(mqtt, did: str, mark: int, failure: dict, recovered: dict, interval: float) -> None:
    """C7.6 "when readings return": `sensor_recovered` comes with the first good reading after
    the failure, of the same measurement. Device clock against device clock: closer than two
    readings of one period may ever be (the spacing tolerance's least gap), so one period or
    more late (a recovery debounced over readings) fails."""
    back = [r for m in mqtt.collect(contract.sensors_topic(did), since=mark) if (r := m.json())["timestamp"] >= failure["timestamp"]]
    assert back, "no reading after sensor_failure"
    first = min(back, key=lambda r: (r["boot_count"], r["seq"]))
    apart = recovered["timestamp"] - first["timestamp"]
    assert abs(apart) < DEFAULT_TOLERANCE.min_ratio * interval, (
        f"sensor_recovered {apart:+.2f} s from the first reading back (seq {first['seq']}), measurement interval {interval:g} s"
    )


# Just outside each edge by half the accuracy: the device may read such an environment as
# just inside (and publish it) or as outside (and withhold it, with the alert); it may never
# publish a value outside the range (the sensors schema bounds every value to it). A range
# checked on whole degrees, or with its bound a degree off, publishes 85.5 °C.
@pytest.mark.parametrize(
    "env",
    [
        pytest.param(
            Environment(T_HI + ACC_T / 2, 45.0, 1013.25), id="hot-edge", marks=pytest.mark.guards("range_check_truncates")
        ),
        pytest.param(
            Environment(T_LO - ACC_T / 2, 45.0, 1013.25), id="cold-edge", marks=pytest.mark.guards("range_check_truncates")
        ),
        pytest.param(Environment(22.0, 45.0, P_LO - ACC_P / 2), id="thin-edge"),
        pytest.param(Environment(22.0, 45.0, P_HI + ACC_P / 2), id="dense-edge"),
    ],
)
@pytest.mark.requires("sensor_emulation")
@pytest.mark.clause("C7.4", "C4.1", "C4.8")
def test_no_value_outside_the_range_is_published_at_its_edges(dut, mqtt, environment, hil_session, env) -> None:
    did = dut.device_id
    interval = setting(hil_session, "measurement_interval_s")
    mark = mqtt.mark()
    environment.set(env)
    try:
        warning = mqtt.wait_for(contract.alerts_topic(did), alert("sensor_out_of_range"), since=mark, timeout=wait_timeout(interval, 3))[0]
    except ObserverTimeout:
        warning = None  # read as just inside: then its readings say so
    if warning is not None:
        assert not contract.validate_payload("alerts", warning.payload, device_id=did)
        # Withheld: two more periods pass with no good reading.
        mqtt.wait_for(
            contract.health_topic(did),
            lambda m: (m.json().get("last_sensor_reading_age_s") or 0) >= 2 * interval,
            since=mark,
            timeout=setting(hil_session, "heartbeat_interval_s") + wait_timeout(interval, 3),
        )
    published = [m.json() for m in mqtt.collect(contract.sensors_topic(did), since=mark)]
    assert warning is not None or len(published) >= 3, f"{env}: neither readings nor sensor_out_of_range"
    outside = {str(r): found for r in published if (found := contract.validate_payload("sensors", r, device_id=did))}
    assert not outside, f"published while the environment was {env}: {outside}"


# The range holds for the value published, the calibration offset included (C7.4 with
# C7.3): with the lowest offset, an environment inside the range reads outside it. A device
# that checks the range before it adds the offset (validation in the driver, calibration
# at publish) publishes -45 °C.
@pytest.mark.clause("C7.4", "C7.3", "C4.8")
@pytest.mark.requires("sensor_emulation")
@pytest.mark.guards("range_before_offset")
def test_the_range_is_checked_on_the_calibrated_value(restore_firmware, mqtt, environment, hil_session) -> None:
    dut = restore_firmware  # the session's config (no offset) is put back afterwards
    did = dut.device_id
    interval = setting(hil_session, "measurement_interval_s")
    offset = contract.CALIBRATION_OFFSET_RANGE[0]
    env = Environment(T_LO + 5 * ACC_T, 45.0, 1013.25)  # -35 °C; with the offset, -45 °C
    assert env.temperature_c + offset < T_LO - 4 * ACC_T, "out of range by more than the accuracy"
    environment.set(env)
    mark = mqtt.mark()
    mqtt.publish(contract.config_update_topic(did), {"calibration_offset_temp": offset})
    status = mqtt.wait_for(contract.config_status_topic(did), since=mark, timeout=10)[0].json()
    assert status["ok"] is True, status
    online = online_again(mqtt, did, mark)
    # Three measurements of this boot: each out of range, so withheld with its alert.
    alerts, readings = contract.alerts_topic(did), contract.sensors_topic(did)
    measured = mqtt.wait_for(
        contract.device_publish_prefix(did) + "#",
        lambda m: (m.topic == alerts and alert("sensor_out_of_range")(m))
        or (m.topic == readings and m.json()["boot_count"] == online["boot_count"]),
        since=mark,
        count=3,
        timeout=wait_timeout(interval, 3),
    )
    published = [m.json() for m in measured if m.topic == readings]
    assert not published, f"published with calibration_offset_temp {offset:g} in {env}: {published}"
    for warning in (m.json() for m in measured):
        assert not contract.validate_payload("alerts", warning, device_id=did)
        assert warning["level"] == contract.ALERT_LEVEL_BY_CODE["sensor_out_of_range"] == "warning", warning


# -- sensor faults ----------------------------------------------------------------------
def nack_episode(mqtt, sensor, did: str, hil_session, *, linger: bool) -> None:
    """The sensor stops answering until `sensor_failure`, then answers again: one
    `sensor_failure` (critical, timed from the last reading), then `sensor_recovered`
    (info) and readings. ``linger``: the fault lasts a while past the alert, which must not
    come again meanwhile."""
    alerts, readings = contract.alerts_topic(did), contract.sensors_topic(did)
    interval, timeout_s = setting(hil_session, "measurement_interval_s"), setting(hil_session, "sensor_timeout_s")
    last_good = mqtt.wait_for(readings, since=mqtt.mark(), timeout=10 * interval + 10)[0].json()
    mark = mqtt.mark()
    sensor.fault(Fault.NACK.value)
    failure = mqtt.wait_for(alerts, alert("sensor_failure"), since=mark, timeout=timeout_s + 10 * interval + 10)[0].json()
    assert not contract.validate_payload("alerts", failure, device_id=did)
    assert failure["level"] == contract.ALERT_LEVEL_BY_CODE["sensor_failure"] == "critical", failure
    last_good = max([last_good, *(m.json() for m in mqtt.collect(readings, since=mark))], key=lambda r: r["timestamp"])
    assert_failure_timed(failure, last_good, timeout_s, interval)
    if linger:  # the episode goes on for a while: no second sensor_failure
        mqtt.wait_for(
            contract.health_topic(did),
            lambda m: (m.json().get("last_sensor_reading_age_s") or 0) >= timeout_s + 4 * interval,
            since=mark,
            timeout=setting(hil_session, "heartbeat_interval_s") + timeout_s + 10 * interval + 10,
        )
    sensor.clear_faults()
    recovered = mqtt.wait_for(alerts, alert("sensor_recovered"), since=mark, timeout=10 * interval + 10)[0].json()
    assert not contract.validate_payload("alerts", recovered, device_id=did)
    assert recovered["level"] == contract.ALERT_LEVEL_BY_CODE["sensor_recovered"] == "info", recovered
    mqtt.wait_for(readings, lambda m: m.json()["timestamp"] >= failure["timestamp"], since=mark, timeout=10 * interval + 10)
    assert_recovered_with_the_first_reading(mqtt, did, mark, failure, recovered, interval)
    codes = [m.json()["code"] for m in mqtt.collect(alerts, since=mark)]
    episode = [c for c in codes if c in ("sensor_failure", "sensor_recovered")]
    assert episode == ["sensor_failure", "sensor_recovered"], f"once per episode, then cleared: got {episode}"


@pytest.mark.clause("C7.5", "C7.6", "C4.8", "C4.3")
@pytest.mark.requires("sensor_emulation")
@pytest.mark.guards(
    "ignores_sensor_timeout", "repeats_sensor_failure", "recovered_as_warning", "sensor_failure_once_per_boot",
    "seq_per_measurement", "recovered_debounced",
)  # fmt: skip
def test_a_sensor_that_stops_answering_raises_sensor_failure_once_and_recovers(dut, mqtt, sensor, hil_session) -> None:
    did = dut.device_id
    before = mqtt.mark()
    nack_episode(mqtt, sensor, did, hil_session, linger=True)
    # Once per episode, not once per boot: a second episode raises it again.
    nack_episode(mqtt, sensor, did, hil_session, linger=False)
    # C4.3: the failed reads took no seq; the numbering runs on across both episodes.
    mqtt.assert_gapless(contract.sensors_topic(did), since=before, single_boot=True)


def online_again(mqtt, device_id: str, mark: int, timeout: float = 60) -> dict:
    """The online status of the boot a software restart after ``mark`` began."""
    return mqtt.wait_for(
        contract.status_topic(device_id),
        lambda m: m.json().get("state") == "online" and m.json().get("reset_reason") == "SW",
        since=mark,
        timeout=timeout,
    )[0].json()


def reset_and_wait_online(dut, mqtt, timeout: float = 60) -> tuple[int, dict]:
    """Restart the device (`reset` command); the mark before it and its new online status."""
    mark = mqtt.mark()
    mqtt.publish(contract.command_topic(dut.device_id), {"cmd": "reset"})
    return mark, online_again(mqtt, dut.device_id, mark, timeout)


@pytest.mark.clause("C7.1", "C7.2", "C7.5", "C2.4", "C2.5", "C4.9", "C5.1")
@pytest.mark.requires("sensor_emulation")
@pytest.mark.parametrize(
    ("fault", "code"),
    [
        pytest.param(
            Fault.CORRUPT_CALIBRATION_T,
            "sensor_calibration",
            id="dig_T1-zero",
            marks=pytest.mark.guards("sensor_init_error_not_mirrored"),
        ),
        pytest.param(
            Fault.CORRUPT_CALIBRATION_H,
            "sensor_calibration",
            id="dig_H1-zero",
            marks=pytest.mark.guards("sensor_failure_at_once_without_reading", "sensor_failure_late_without_reading"),
        ),
        pytest.param(Fault.WRONG_CHIP_ID, None, id="wrong-chip-id", marks=pytest.mark.guards("chip_id_alerted_as_calibration")),
    ],
)
def test_a_sensor_failing_its_checks_at_boot_is_reported_and_nothing_is_published(
    dut, mqtt, console, sensor, hil_session, rig, fault, code
) -> None:
    did = dut.device_id
    timeout_s = setting(hil_session, "sensor_timeout_s")
    interval = setting(hil_session, "measurement_interval_s")
    sensor.fault(fault.value)
    serial = console.mark()
    mark, online = reset_and_wait_online(dut, mqtt)
    # An `E sensor:` line that says something (the contract fixes no wording).
    line = console.expect(contract.SENSOR_ERROR, since=serial, timeout=30)
    assert line.group("message").strip(), line.group(0)
    # ... mirrored to `logs` (C4.9): level error, its tag and message.
    mqtt.wait_for(
        contract.logs_topic(did),
        lambda m: (m.json()["level"], m.json()["tag"], m.json()["message"]) == ("error", "sensor", line.group("message")),
        since=mark,
        timeout=30,
    )
    if code is not None:
        warning = mqtt.wait_for(contract.alerts_topic(did), alert(code), since=mark, timeout=30)[0].json()
        assert not contract.validate_payload("alerts", warning, device_id=did)
        assert warning["level"] == contract.ALERT_LEVEL_BY_CODE[code] == "warning", warning
    # No reading from a part that cannot be used: the sensor timeout runs out, counted from
    # the boot (there was no good reading in it), so not before sensor_timeout_s after the
    # ROM banner that began it (host clock, the alert late by at most a delivery).
    failure = mqtt.wait_for(contract.alerts_topic(did), alert("sensor_failure"), since=mark, timeout=timeout_s + 30)[0]
    booted = next(r.monotonic for r in console.records(serial) if not r.marker and contract.ROM_RESET.search(r.text))
    assert failure.at - booted >= timeout_s - DEFAULT_TOLERANCE.latency_s, (
        f"sensor_failure {failure.at - booted:.2f} s after the boot began, sensor_timeout_s {timeout_s:g} s"
    )
    # ... and soon after it: the device's clock starts by app_main at the latest (the rig's
    # declared boot time), its attempts come a (long) measurement period apart, and the alert
    # needs the broker session (up by then on a healthy path, but the rig declares how long
    # it may take), then a delivery.
    tls = hil_session.device_provisioning().mqtt_uri.startswith("mqtts://")
    due = timeout_s + rig.timing.boot_to_app_s + DEFAULT_TOLERANCE.max_ratio * interval
    late = max(due, rig.timing.boot_to_online_s(tls=tls)) + DEFAULT_TOLERANCE.latency_s
    assert failure.at - booted <= late, (
        f"sensor_failure {failure.at - booted:.2f} s after the boot began, sensor_timeout_s {timeout_s:g} s, "
        f"measurement interval {interval:g} s: later than {late:.2f} s"
    )
    published = [m.json() for m in mqtt.collect(contract.sensors_topic(did), since=mark)]
    assert [r for r in published if r["boot_count"] == online["boot_count"]] == []
    # Only a corrupt calibration is `sensor_calibration` (C7.2); another part is a sensor
    # error (C7.1) and no calibration alarm.
    raised = {m.json()["code"] for m in mqtt.collect(contract.alerts_topic(did), since=mark)}
    assert code is not None or "sensor_calibration" not in raised, f"{fault.value}: raised {sorted(raised)}"
    # A good part again (and a restart): found, and readings return.
    sensor.clear_faults()
    serial = console.mark()
    mark, _ = reset_and_wait_online(dut, mqtt)
    console.expect(contract.SENSOR_FOUND, since=serial, timeout=30)
    mqtt.wait_for(contract.sensors_topic(did), since=mark, timeout=30)


# -- schemas ----------------------------------------------------------------------------
def schema_kinds(device_id: str) -> dict[str, contract.PayloadKind]:
    """The payload kind of each device → broker topic but `status` (online or offline)."""
    return {
        contract.sensors_topic(device_id): contract.PayloadKind.SENSORS,
        contract.health_topic(device_id): contract.PayloadKind.HEALTH,
        contract.metrics_topic(device_id): contract.PayloadKind.METRICS,
        contract.alerts_topic(device_id): contract.PayloadKind.ALERTS,
        contract.logs_topic(device_id): contract.PayloadKind.LOGS,
        contract.command_ack_topic(device_id): contract.PayloadKind.COMMAND_ACK,
        contract.config_status_topic(device_id): contract.PayloadKind.CONFIG_STATUS,
        contract.ota_status_topic(device_id): contract.PayloadKind.OTA_STATUS,
        contract.programs_status_topic(device_id): contract.PayloadKind.PROGRAMS_STATUS,
    }


def schema_problems(device_id: str, topic: str, payload: bytes) -> list[str]:
    """What is wrong with one message on the device's subtree (nothing for what tests
    send the device, and for a program's own topics, whose values are the program's)."""
    if topic in (contract.command_topic(device_id), contract.emergency_topic(device_id)):
        return []
    if topic.startswith(contract.device_publish_prefix(device_id) + "programs/") and topic != contract.programs_status_topic(device_id):
        return []
    if topic == contract.status_topic(device_id):
        online = contract.validate_payload(contract.PayloadKind.STATUS_ONLINE, payload)
        return online if online and contract.validate_payload(contract.PayloadKind.STATUS_OFFLINE, payload) else []
    kind = schema_kinds(device_id).get(topic)
    if kind is None:
        return ["a topic the contract does not name"]
    return contract.validate_payload(kind, payload, device_id=device_id)


@pytest.mark.clause("C4.1", "C4.4", "C4.7", "C4.8", "C4.9", "C4.10", "C4.11", "C4.12", "C4.13")
def test_every_topic_the_device_publishes_conforms_to_its_schema(dut, mqtt, hil_session) -> None:
    did = dut.device_id
    mark = mqtt.mark()
    # Provoke what is published on request: an ack, a rejected config (status, alert,
    # log), an OTA request rejected at once (no download, no reboot) and a tiny program.
    mqtt.publish(contract.command_topic(did), {"cmd": "report"})
    mqtt.publish(contract.config_update_topic(did), {"colour": "red"})
    bogus = {"version": "0.0.1", "url": "http://127.0.0.1:9/x.bin", "size": 1, "sha256": "0" * 64, "signature": "AA=="}
    mqtt.publish(contract.ota_update_topic(did), bogus)
    source = "(+ 1 2)"
    program = {"name": "schema", "source": source, "sha256": hashlib.sha256(source.encode()).hexdigest()}
    mqtt.publish(contract.programs_deploy_topic(did), program)
    everything = lambda m: True  # noqa: E731
    wanted = {
        contract.sensors_topic(did): everything,
        contract.health_topic(did): everything,
        contract.metrics_topic(did): everything,
        contract.alerts_topic(did): alert("config_rejected"),
        contract.logs_topic(did): everything,
        contract.command_ack_topic(did): lambda m: m.json().get("cmd") == "report",
        contract.config_status_topic(did): everything,
        contract.ota_status_topic(did): lambda m: m.json().get("state") == "rejected",
        contract.programs_status_topic(did): lambda m: m.json().get("state") == "completed",
    }
    assert set(wanted) == set(schema_kinds(did))
    for topic, predicate in wanted.items():
        mqtt.wait_for(topic, predicate, since=mark, timeout=setting(hil_session, "status_report_interval_s") + 30)
    status = mqtt.collect(contract.status_topic(did))[-1:]  # retained: there since the session began
    assert status, "no status message at all"
    problems = {
        f"{m.topic} {m.payload[:200]!r}": found
        for m in status + mqtt.collect(contract.device_publish_prefix(did) + "#", since=mark)
        if (found := schema_problems(did, m.topic, m.payload))
    }
    assert not problems, problems
