"""The smoke suite against each broker mode: the session's own mosquitto ('embedded',
'mosquitto') and an external broker over TLS (a local mosquitto standing in for staging)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hil.services.broker import OBSERVER_USER, MosquittoBroker

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
SMOKE = "tests/hil/test_smoke.py::test_a_reading_matches_the_sensor_environment"


def run_smoke(tmp_path: Path, broker: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "HIL_CACHE_DIR": str(tmp_path / "cache"),
        "HIL_LOCK_DIR": str(tmp_path / "locks"),
        **(extra_env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "pytest", SMOKE, "-p", "no:cacheprovider", "-q", "--broker", broker,
         "--hil-log-dir", str(tmp_path / "logs")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.parametrize("mode", ["embedded", "mosquitto"])
def test_smoke_with_the_sessions_own_broker(tmp_path: Path, mode: str) -> None:
    result = run_smoke(tmp_path, mode)
    assert result.returncode == 0, result.stdout[-3000:]


def test_smoke_against_an_external_tls_broker(tmp_path: Path) -> None:
    staging = MosquittoBroker(tmp_path / "staging")
    staging.start()
    try:
        ca = tmp_path / "staging-ca.pem"
        ca.write_text(staging.ca_pem)
        result = run_smoke(
            tmp_path,
            staging.uri("tls"),
            {
                "HIL_BROKER_USERNAME": OBSERVER_USER,
                "HIL_BROKER_PASSWORD": staging.observer_password.reveal(),
                "HIL_BROKER_CA_FILE": str(ca),
            },
        )
    finally:
        staging.stop()
    assert result.returncode == 0, result.stdout[-3000:]
    log = (tmp_path / "staging" / "mosquitto.log").read_text()
    assert "New client connected" in log and "hil-virtual-" in log  # the device really used it
    assert staging.observer_password.reveal() not in (tmp_path / "logs").joinpath("main", "virtual-0", "console.log").read_text()
