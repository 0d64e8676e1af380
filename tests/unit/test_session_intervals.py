"""The session's fast intervals (hil/session.py FAST_INTERVALS) are settings a device boots
with, short enough for the HIL suites to see what the contract times in seconds."""

from __future__ import annotations

from pathlib import Path

from hil.device import contract
from hil.device.settings import DeviceConfig, Provisioning, provisioning_image
from hil.images.nvs import read_nvs
from hil.session import FAST_INTERVALS, SessionOptions


def test_the_fast_intervals_are_a_valid_config_the_device_boots_with() -> None:
    image = provisioning_image(Provisioning(device_id="hil-unit"), FAST_INTERVALS)
    config = DeviceConfig.from_nvs(read_nvs(image))
    assert {key: getattr(config, key) for key in FAST_INTERVALS} == FAST_INTERVALS


def test_a_sensor_failure_episode_takes_seconds_not_minutes() -> None:
    # The sensor suite waits for sensor_failure: at the default (600 s) it could not.
    config = SessionOptions(rigs_dir=Path("rigs"), log_dir=Path("hil-logs")).config
    assert config["sensor_timeout_s"] == contract.CONFIG_INT_SETTINGS["sensor_timeout_s"].minimum
    assert config["sensor_timeout_s"] >= 2 * config["measurement_interval_s"]
