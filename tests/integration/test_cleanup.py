"""A SIGKILLed test run leaves no board or broker behind, and the next run passes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


def wait_until(condition, timeout: float, what: str) -> None:
    # Other processes' lifetimes have no event we can wait on from here: poll /proc.
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def test_sigkill_of_pytest_leaves_nothing_and_the_next_run_passes(tmp_path: Path) -> None:
    env = {**os.environ, "HIL_CACHE_DIR": str(tmp_path / "cache"), "HIL_LOCK_DIR": str(tmp_path / "locks")}
    logs = tmp_path / "logs"
    # The smoke suite: enough to bring a board and broker up, and short enough to rerun.
    cmd = [sys.executable, "-m", "pytest", "tests/hil/test_smoke.py", "-p", "no:cacheprovider", "-q", "--hil-log-dir", str(logs)]
    run = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Kill it once its board and broker are up (the console log appears after both).
        wait_until(lambda: any(logs.rglob("console.log")) or run.poll() is not None, 120, "the rig to come up")
        assert run.poll() is None, "the run ended before it could be killed"
        assert processes_mentioning(str(tmp_path))  # board and broker are running
        run.send_signal(signal.SIGKILL)
        run.wait()
        wait_until(lambda: not processes_mentioning(str(tmp_path)), 15, "orphans to exit")
    finally:
        if run.poll() is None:
            run.kill()
    rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert not processes_mentioning(str(tmp_path))
