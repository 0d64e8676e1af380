"""A firmware team installs hil into its own environment and writes a test: no conftest.py,
no rigs/ of its own. The fixtures load through the pytest11 entry point, the virtual rig
and its recipes come with the wheel, and `dut` and `mqtt` work as they do here.

The venv is made as a user makes it: the locked dependencies, then `pip install .` (a
real, non-editable install of a wheel built from this tree) in a directory outside it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

USER_TEST = '''
import json

def test_a_reading_arrives_in_range(dut, mqtt):
    reading = mqtt.wait_for(f"esp32/{dut.device_id}/sensors", timeout=60)[0].json()
    assert -40 <= reading["temperature_c"] <= 85
    assert reading["device_id"] == dut.device_id
'''


def run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload, no-any-return]


def test_an_installed_hil_runs_a_users_test_on_the_virtual_rig(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    assert run([sys.executable, "-m", "venv", str(venv)]).returncode == 0
    deps = run([str(python), "-m", "pip", "install", "-q", "--require-hashes", "-r", str(ROOT / "locks" / "dev.txt"),
                "-r", str(ROOT / "locks" / "build.txt")], timeout=600)  # fmt: skip
    assert deps.returncode == 0, deps.stderr[-3000:]
    installed = run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(ROOT)], timeout=300)
    assert installed.returncode == 0, installed.stderr[-3000:]
    project = tmp_path / "user-project"  # no conftest.py, no rigs/, no pytest.ini
    project.mkdir()
    (project / "test_device.py").write_text(USER_TEST)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS")}
    env |= {"HIL_CACHE_DIR": str(tmp_path / "cache"), "HIL_LOCK_DIR": str(tmp_path / "locks")}
    result = run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_device.py"],
                 cwd=project, env=env, timeout=600)  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert "1 passed" in out, out[-2000:]
    # It ran the installed copy, not this tree's.
    where = run([str(python), "-c", "import hil, sys; print(hil.__file__)"], cwd=project, env=env)
    assert str(venv) in where.stdout, where.stdout
