"""An inventory of two virtual rigs and a serial bench rig, and a private lock directory:
what selection and reservation are tried on."""

from __future__ import annotations

from pathlib import Path

import pytest

CI_VARS = ("CI_JOB_ID", "CI_JOB_URL", "GITHUB_RUN_ID", "BUILD_URL", "BUILD_TAG", "BUILDKITE_JOB_ID")
BENCH_1 = """\
name = "bench-1"
kind = "serial"
chip = "esp32c3"
port = "/dev/serial/by-id/usb-Silicon_Labs_CP2102N-if00-port0"
tags = ["bench"]

[network]
ssid = "hil-lab"
broker_host = "192.168.50.2"
"""


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    rigs_dir = tmp_path / "rigs"
    rigs_dir.mkdir()
    (rigs_dir / "virtual.toml").write_text(
        'name = "virtual"\nkind = "virtual"\ncount = 2\ntags = ["virtual"]\n', encoding="utf-8"
    )
    (rigs_dir / "bench-1.toml").write_text(BENCH_1, encoding="utf-8")
    return rigs_dir


@pytest.fixture
def lock_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "locks"
    monkeypatch.setenv("HIL_LOCK_DIR", str(path))
    for var in (*CI_VARS, "PYTEST_XDIST_WORKER"):
        monkeypatch.delenv(var, raising=False)
    return path
