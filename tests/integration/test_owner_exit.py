"""What a test starts detached (`hil sim up`, `hil broker up`) ends with the run that
started it, even a run killed outright: the plugin names itself in HIL_OWNER_PID and the
detached processes wait on that pid (hil.processes.exit_with_owner)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

from hil.processes import OWNER_ENV

ROOT = Path(__file__).resolve().parents[2]


def _hil(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hil.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)  # fmt: skip


def _ends_within(pid: int, timeout_s: float) -> bool:
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        ready, _, _ = select.select([fd], [], [], timeout_s)
        return bool(ready)
    finally:
        os.close(fd)


def test_the_plugin_names_its_run_as_the_owner() -> None:
    assert os.environ[OWNER_ENV] == str(os.getpid())


def test_detached_board_and_broker_end_when_their_owner_is_killed(tmp_path: Path) -> None:
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    env = {**os.environ, OWNER_ENV: str(owner.pid)}
    state = ["--state-dir", str(tmp_path / "bench")]
    try:
        up = _hil("sim", "up", *state, env=env)
        assert up.returncode == 0, up.stderr
        broker = _hil("broker", "up", *state, env=env)
        assert broker.returncode == 0, broker.stderr
        board_pid = json.loads(_hil("sim", "status", "--json", *state, env=env).stdout)["items"][0]["pid"]
        keeper_pid = json.loads(_hil("broker", "status", "--json", *state, env=env).stdout)["pid"]
        assert not _ends_within(board_pid, 1.0) and not _ends_within(keeper_pid, 0.1), "ended before the owner did"
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        assert _ends_within(board_pid, 30), f"board {board_pid} outlived its owner"
        assert _ends_within(keeper_pid, 30), f"broker keeper {keeper_pid} outlived its owner"
    finally:
        owner.kill()
        owner.wait()
        _hil("sim", "down", *state, env=env)
        _hil("broker", "down", *state, env=env)
