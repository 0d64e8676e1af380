"""Smoke: the baseline firmware comes online and reports the environment it is in.

Runs on any rig through the rig interfaces only (console, MQTT, sensor emulator)."""

from __future__ import annotations

import pytest

from hil.bme280.compensation import Environment
from hil.device import contract

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
def test_a_reading_matches_the_sensor_environment(dut, mqtt, sensor) -> None:
    env = Environment(temperature_c=23.5, humidity_pct=41.0, pressure_hpa=1002.0)
    sensor.set(env)
    mark = mqtt.mark()
    # The first reading may have been converted before the change: judge the second.
    reading = mqtt.wait_for(contract.sensors_topic(dut.device_id), since=mark, count=2, timeout=15)[1].json()
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
