"""What the bench commands say about what they wait for: `hil broker down` says what the
stop waits for before waiting, and how long it took; `hil sensor set` says when the change
shows (the device's next reading, within its measurement interval as provisioned)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from hil.bench.state import STOP_TIMEOUT_S
from hil.rig.virtual_board import VirtualBoardProcess

ROOT = Path(__file__).resolve().parents[2]


def hil(*args: str, state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hil", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "HIL_STATE_DIR": str(state)})  # fmt: skip


def test_broker_down_says_what_it_waits_for_then_how_long_it_took(tmp_path: Path) -> None:
    up = hil("broker", "up", "--json", state=tmp_path)
    assert up.returncode == 0, up.stderr
    down = hil("broker", "down", state=tmp_path)
    assert down.returncode == 0, down.stderr
    announced, stopped = down.stdout.strip().splitlines()
    said = re.fullmatch(r"stopping (mosquitto|amqtt) \(pid (\d+)\): (.*)", announced)
    assert said, announced
    assert said.group(3) == (
        "SIGTERM, then waiting for it to close its clients' connections, save its persistence and exit "
        f"(up to {STOP_TIMEOUT_S:g} s, then SIGKILL)"
    )
    took = re.fullmatch(rf"stopped {said.group(1)} \(pid {said.group(2)}\) in (\d+\.\d) s", stopped)
    assert took, stopped
    # A generous bound only: it stopped on its SIGTERM, never needing the SIGKILL (the
    # under-2-s figure is bench/broker_down.py's to measure).
    assert float(took.group(1)) < STOP_TIMEOUT_S
    stat = Path(f"/proc/{said.group(2)}/stat")
    assert not stat.exists() or stat.read_text().rpartition(")")[2].split()[0] == "Z"  # gone (or unreaped)


def test_sensor_set_says_the_next_reading_shows_it_within_the_interval(
    virtual_board: VirtualBoardProcess, tmp_path: Path
) -> None:
    assert virtual_board.endpoints is not None
    result = hil("sensor", "set", "--temperature", "31.5", "--control", virtual_board.endpoints.control, state=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1] == (
        "the device's next reading reflects it: within measurement_interval_s = 10 s (the firmware's default; "
        "provisioned with --config '{\"measurement_interval_s\": 1}', within a second)"
    )
