"""A planted password, key and token appear in no file under the Allure results or logs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

PLANTED_TEST = '''
import logging

def test_that_leaks_everything(dut, hil_session, console):
    key = hil_session.broker.credentials(dut.device_id).client_key_pem
    print("device key:", key)
    print("wifi password:", "hil-lab-password")
    print("token=tok_9f8e7d6c5b4a")
    logging.getLogger("leak").error("mqtt_pass=%s", hil_session.broker.credentials(dut.device_id).password)
    assert False, "fail on purpose, so that every capture lands in the report"
'''


def test_planted_secrets_reach_no_report_or_log_file(tmp_path: Path) -> None:
    (tmp_path / "test_leak.py").write_text(PLANTED_TEST)
    allure, logs = tmp_path / "allure", tmp_path / "logs"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HIL_CACHE_DIR": str(tmp_path / "cache"),
        "HIL_LOCK_DIR": str(tmp_path / "locks"),
    }
    result = subprocess.run(
        [
            sys.executable, "-m", "pytest", "test_leak.py", "-p", "fixtures.plugin", "-p", "no:cacheprovider",
            "--rigs-dir", str(ROOT / "rigs"), "--firmware", "prints_secrets",
            "--alluredir", str(allure), "--hil-log-dir", str(logs), "-o", "log_level=INFO",
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout[-3000:]
    assert "fail on purpose" in result.stdout
    console_log = next(logs.rglob("console.log")).read_text()
    assert "credentials ssid=hil-lab password=[REDACTED]" in console_log  # the device did print it

    secrets = ["hil-lab-password", "tok_9f8e7d6c5b4a", "PRIVATE KEY-----\nMI", "BEGIN EC PRIVATE KEY"]
    files = [p for p in [*allure.rglob("*"), *logs.rglob("*")] if p.is_file()]
    # The secrets did reach the report (captured output), and were cut out there.
    assert any("[REDACTED]" in p.read_text(errors="replace") for p in allure.rglob("*") if p.is_file())
    assert len(files) > 5
    for path in files:
        text = path.read_text(errors="replace")
        for secret in secrets:
            assert secret not in text, f"{secret!r} leaked into {path}"
