"""A run stopped with SIGTERM (as CI cancels a job) unwinds like Ctrl-C: the boards its
tests started, even detached ones (`hil sim up`), stop with it; nothing is left running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PLANTED = '''
import os, subprocess, sys, threading
from pathlib import Path

def test_holds_a_bench_board_until_stopped():
    sd = os.environ["STATE_DIR"]
    subprocess.run([sys.executable, "-m", "hil.cli", "sim", "up", "--state-dir", sd], check=True, capture_output=True)
    try:
        Path(os.environ["READY"]).write_text("up")
        threading.Event().wait(120)  # until the run is stopped
    finally:
        subprocess.run([sys.executable, "-m", "hil.cli", "sim", "down", "--state-dir", sd], capture_output=True)
'''


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_sigterm_stops_the_boards_a_test_started(tmp_path: Path) -> None:
    (tmp_path / "test_planted.py").write_text(PLANTED)
    ready, state = tmp_path / "ready", tmp_path / "bench"
    env = {**os.environ, "STATE_DIR": str(state), "READY": str(ready), "PYTHONPATH": str(ROOT)}
    run = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--rootdir={tmp_path}",
                            "test_planted.py"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while not ready.exists():
            assert run.poll() is None and time.monotonic() < deadline, "the planted test never got its board up"
            time.sleep(0.1)  # polling a file another process writes: there is no event to await
        status = subprocess.run([sys.executable, "-m", "hil.cli", "sim", "status", "--json", "--state-dir", str(state)],
                                capture_output=True, text=True, check=True, cwd=ROOT)  # fmt: skip
        pid = json.loads(status.stdout)["items"][0]["pid"]
        assert _alive(pid)
        run.send_signal(signal.SIGTERM)
        out, _ = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode != 0, out  # interrupted, not passed
    assert not _alive(pid), f"the board (pid {pid}) outlived the run stopped by SIGTERM:\n{out}"
