"""setup.sh refuses a mosquitto older than the tests support, with one clear line, before
it touches the venv."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run_setup_with_mosquitto(tmp_path: Path, version_line: str) -> subprocess.CompletedProcess[str]:
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "mosquitto").write_text(f"#!/bin/sh\necho '{version_line}'\nexit 3\n")  # as `mosquitto -h` does
    (fake / "mosquitto").chmod(0o755)
    # A copy of the script in an empty tree: nothing of the project's venv can be touched.
    tree = tmp_path / "tree"
    tree.mkdir()
    shutil.copy(ROOT / "setup.sh", tree / "setup.sh")
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}
    return subprocess.run(["bash", str(tree / "setup.sh")], env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.skipif(shutil.which("ser2net") is None and not Path("/usr/sbin/ser2net").exists(),
                    reason="ser2net missing: setup.sh would try apt-get first")
def test_an_old_mosquitto_is_refused_in_one_line(tmp_path: Path) -> None:
    result = _run_setup_with_mosquitto(tmp_path, "mosquitto version 1.6.9")
    assert result.returncode == 1
    assert "setup.sh: mosquitto 1.6.9 (" in result.stdout  # the versions found are printed
    errors = result.stderr.strip().splitlines()
    assert errors == [errors[0]] and "older than 2.0.0" in errors[0], result.stderr
    assert not (tmp_path / "tree" / ".venv").exists()
