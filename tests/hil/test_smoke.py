"""Smoke: the baseline firmware comes online and reports the environment it is in.

Runs on any rig through the rig interfaces only (console, MQTT, sensor emulator)."""

from __future__ import annotations

import pytest

from hil.bme280.compensation import Environment
from hil.device import contract
from hil.device.periodic import wait_timeout
from tests.hil.live import wait_until_live
from tests.hil.provisioned import setting

pytestmark = [pytest.mark.hil, pytest.mark.gate_e2e]


@pytest.mark.clause("C3.5", "C2.2")
@pytest.mark.guards("crash_on_boot")
def test_the_device_is_online_and_says_which_firmware_it_runs(dut, mqtt, console) -> None:
    status = [m.json() for m in mqtt.collect(contract.status_topic(dut.device_id)) if m.json()["state"] == "online"]
    assert status and status[-1]["version"] == dut.version
    assert not contract.validate_payload("status_online", status[-1])
    versions = [m.group("version") for line in console.lines() if (m := contract.APP_VERSION.search(line))]
    assert versions and versions[-1] == dut.version


@pytest.mark.clause("C7.3", "C4.1")
@pytest.mark.requires("sensor_emulation")
@pytest.mark.guards("temp_high_2c")
def test_a_reading_matches_the_sensor_environment(dut, mqtt, sensor, hil_session) -> None:
    sensors = contract.sensors_topic(dut.device_id)
    interval = setting(hil_session, "measurement_interval_s")
    # Readings queued while the device connected come in a burst after `online`: judge by
    # `seq`, once the cadence is live, not by arrival.
    start = mqtt.mark()
    wait_until_live(mqtt, sensors, start, interval, timeout=wait_timeout(interval, 4) + 30)
    latest = max((m.json() for m in mqtt.collect(sensors, since=start)), key=lambda r: (r["boot_count"], r["seq"]))
    env = Environment(temperature_c=23.5, humidity_pct=41.0, pressure_hpa=1002.0)
    sensor.set(env)
    # The next reading may have been converted before the change: judge the one after it.
    reading = mqtt.wait_for(
        sensors,
        lambda m: m.json()["boot_count"] == latest["boot_count"] and m.json()["seq"] >= latest["seq"] + 2,
        since=start,
        timeout=wait_timeout(interval, 3),
    )[0].json()
    assert not contract.validate_payload("sensors", reading)
    assert abs(reading["temperature_c"] - env.temperature_c) <= contract.TEMPERATURE_ACCURACY_C
    assert abs(reading["humidity_pct"] - env.humidity_pct) <= contract.HUMIDITY_ACCURACY_PCT
    assert abs(reading["pressure_hpa"] - env.pressure_hpa) <= contract.PRESSURE_ACCURACY_HPA


@pytest.mark.clause("C3.10", "C4.3")
@pytest.mark.requires("network_faults")
@pytest.mark.guards("offline_drop")
def test_readings_taken_during_a_network_partition_arrive_without_gaps(dut, mqtt, network) -> None:
    topic = contract.sensors_topic(dut.device_id)
    mark = mqtt.mark()
    mqtt.wait_for(topic, since=mark, timeout=15)
    # Cut the link hard (RST) and keep the broker unreachable for a while: the device is
    # offline for several measurement intervals and must queue what it measures.
    network.partition(4.0)
    network.reset_all()
    after = mqtt.mark()
    mqtt.wait_for(topic, since=after, count=3, timeout=40)  # the queue, then live readings
    seqs = sorted({m.json()["seq"] for m in mqtt.collect(topic, since=mark)})
    assert seqs == list(range(seqs[0], seqs[-1] + 1)), f"lost: {sorted(set(range(seqs[0], seqs[-1])) - set(seqs))}"
