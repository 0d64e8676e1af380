"""`hil sim status` tells a stalled board from a running one, and `hil sim down` says
"stopped" only for what is gone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hil.bench import sim
from hil.bench.state import BenchError

ROOT = Path(__file__).resolve().parents[2]


def hil(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hil.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL, check=False)  # fmt: skip


def test_a_board_whose_loop_does_not_answer_is_stalled(tmp_path: Path) -> None:
    sd = ["--state-dir", str(tmp_path)]
    assert hil("sim", "up", *sd).returncode == 0
    try:
        board = json.loads(hil("sim", "status", "--json", *sd).stdout)["items"][0]
        assert board["state"] == "running"
        os.kill(board["pid"], signal.SIGSTOP)  # as a frozen event loop looks from outside
        try:
            stalled = hil("sim", "status", *sd)
            assert "stalled" in stalled.stdout, stalled.stdout
            assert json.loads(hil("sim", "status", "--json", *sd).stdout)["items"][0]["state"] == "stalled"
        finally:
            os.kill(board["pid"], signal.SIGCONT)
    finally:
        down = hil("sim", "down", *sd)
    assert down.returncode == 0 and "stopped board-0" in down.stdout, down


def test_down_does_not_say_stopped_for_a_process_that_outlived_sigkill(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sd = ["--state-dir", str(tmp_path)]
    assert hil("sim", "up", *sd).returncode == 0
    try:
        monkeypatch.setattr(sim.ProcessRecord, "stop", lambda self, timeout=0: False)  # stuck in the kernel
        with pytest.raises(BenchError, match=r"board-0 \(pid \d+\) still running after SIGTERM and SIGKILL"):
            sim.down(tmp_path)
        assert sim.status(tmp_path).kind is not None  # still listed, not forgotten
    finally:
        monkeypatch.undo()
        assert hil("sim", "down", *sd).returncode == 0
