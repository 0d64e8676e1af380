"""A suite that cannot fail is a defect: each HIL check is run against the firmware image
that carries the defect it guards against, and must fail there (and pass on baseline)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

# (the HIL test, the defect image that must make it fail)
GUARDS = [
    ("tests/hil/test_ota.py::test_a_bad_update_is_rejected_and_the_device_stays[corrupt signature]", "skips_signature"),
    ("tests/hil/test_ota.py::test_a_bad_update_is_rejected_and_the_device_stays[lower version]", "accepts_downgrade"),
    ("tests/hil/test_connectivity.py::test_a_broker_restart_loses_no_reading", "offline_drop"),
    ("tests/hil/test_connectivity.py::test_wifi_loss_fires_the_will_and_the_device_returns", "no_lwt"),
    ("tests/hil/test_security.py::test_no_secret_on_the_serial_port_or_in_mqtt", "prints_secrets"),
    ("tests/hil/test_watchdog_and_config.py::test_a_hung_task_ends_in_a_task_watchdog_reset", "no_watchdog"),
    ("tests/hil/test_watchdog_and_config.py::test_an_invalid_config_is_rejected_and_changes_nothing[zero-interval]", "config_unvalidated"),
    ("tests/hil/test_smoke.py::test_a_reading_matches_the_sensor_environment", "temp_high_2c"),
    ("tests/hil/test_smoke.py::test_readings_taken_during_a_network_partition_arrive_without_gaps", "offline_drop"),
]


def run_hil(test: str, firmware: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HIL_CACHE_DIR": str(tmp_path / "cache"), "HIL_LOCK_DIR": str(tmp_path / "locks")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", test, "-p", "no:cacheprovider", "-q", "--firmware", firmware,
         "--hil-log-dir", str(tmp_path / "logs")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.parametrize(("test", "defect"), GUARDS, ids=[d for _, d in GUARDS])
def test_the_check_fails_on_the_defect_image(test: str, defect: str, tmp_path: Path) -> None:
    result = run_hil(test, defect, tmp_path)
    assert result.returncode == 1, f"{test} did not fail on {defect}:\n{result.stdout[-2000:]}"
    assert "1 failed" in result.stdout
