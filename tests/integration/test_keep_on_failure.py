"""--keep-on-failure as a person at 3 a.m. uses it: the test fails, the rig stays
reserved and powered, the terminal says how to attach, and Ctrl-C lets it all go."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hil.rig.virtual_board import ControlClient, VirtualBoardError

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_a_failed_test_keeps_the_rig_and_prints_how_to_attach(tmp_path: Path) -> None:
    (tmp_path / "test_fails.py").write_text("def test_the_device_misbehaves(dut):\n    assert False, 'on purpose'\n")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        "HIL_CACHE_DIR": str(tmp_path / "cache"),
        "HIL_LOCK_DIR": str(tmp_path / "locks"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "test_fails.py", "-p", "no:cacheprovider",
         f"--rigs-dir={ROOT / 'rigs'}", f"--hil-log-dir={tmp_path / 'logs'}", "--keep-on-failure"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if "Stop with Ctrl-C" in line:
                break
        text = "".join(seen)
        assert "test_fails.py F" in text, text[-3000:]  # the failure, then the rig kept (the report follows on Ctrl-C)
        assert "stays reserved and powered" in text, text[-3000:]
        assert re.search(r"hil monitor --port rfc2217://127\.0\.0\.1:\d+ --no-reset", text)
        control = re.search(r"control:\s+(tcp://127\.0\.0\.1:\d+\S*)", text)  # with its token file
        assert control and "esp32/hil-virtual-0/#" in text
        board = ControlClient(control.group(1), timeout=5)
        assert board.state()["powered"] is True  # powered, and still running the app
        held = subprocess.run(
            [sys.executable, "-m", "hil.cli", "rigs", "--json", "--lock-dir", str(tmp_path / "locks")],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        rows = {row["name"]: row["held_by"] for row in json.loads(held.stdout)}
        assert rows["virtual-0"] and f"pid {proc.pid}" in rows["virtual-0"]
        board.close()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    with pytest.raises((VirtualBoardError, OSError)):
        ControlClient(control.group(1), timeout=2).state()  # let go: the board is gone
