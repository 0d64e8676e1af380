"""A SIGKILLed test run leaves no board or broker behind, nor its private files once the
next run starts, and the next run passes."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.test_secret_files import secret_files

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


def descendants(pid: int) -> dict[int, str]:
    """Every process below ``pid`` (boards and brokers run in their own sessions, but are
    still its children), with its command line."""
    parents: dict[int, int] = {}
    cmdlines: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])
        cmdlines[int(entry.name)] = cmdline
    found: dict[int, str] = {}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in found:
                found[child] = cmdlines[child]
                frontier.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigkill_of_pytest_leaves_nothing_and_the_next_run_passes(tmp_path: Path) -> None:
    env = {**os.environ, "HIL_CACHE_DIR": str(tmp_path / "cache"), "HIL_LOCK_DIR": str(tmp_path / "locks")}
    env.pop("PYTEST_XDIST_WORKER", None)
    runs = tmp_path / "cache" / "run"  # the sessions' private dirs (broker keys, password file)
    logs, relogs = tmp_path / "logs", tmp_path / "relogs"
    # The smoke suite: enough to bring a board and broker up, and short enough to rerun.
    cmd = [sys.executable, "-m", "pytest", "tests/hil/test_smoke.py", "-p", "no:cacheprovider", "-q"]
    run = subprocess.Popen(
        [*cmd, "--hil-log-dir", str(logs)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        # Kill it once its board and broker are up (the console log appears after both).
        wait_until(lambda: any(logs.rglob("console.log")) or run.poll() is not None, 120, "the rig to come up")
        assert run.poll() is None, "the run ended before it could be killed"
        children = descendants(run.pid)
        # Its board and its broker are running (the fault proxy is a thread of pytest's own).
        assert any("mosquitto" in cmd or "amqtt_broker" in cmd for cmd in children.values()), children
        assert any("sim board" in cmd or "hil.sim" in cmd for cmd in children.values()), children
        private = [p for p in runs.glob("*/session-*") if (p / "broker").is_dir()]
        assert len(private) == 1, list(runs.rglob("*"))
        run.send_signal(signal.SIGKILL)
        run.wait()
    finally:
        if run.poll() is None:
            run.kill()
    # What the killed run cannot remove itself is still there for the next run to find,
    # and meanwhile readable by nobody else: a 0700 dir, every secret file in it 0600.
    assert private[0].exists()
    assert stat.S_IMODE(private[0].stat().st_mode) == 0o700
    lax = {str(p): oct(mode) for p, mode in secret_files(private[0], []) if mode != 0o600}
    assert not lax, f"the killed run left secret files others may read: {lax}"
    rerun = subprocess.Popen(
        [*cmd, "--hil-log-dir", str(relogs)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # Once the next run's rig is up: nothing of the killed run is left.
        wait_until(lambda: any(relogs.rglob("console.log")) or rerun.poll() is not None, 120, "the rerun's rig")
        survivors = {pid: cmd for pid, cmd in children.items() if alive(pid)}
        assert not survivors, f"left behind by the killed run: {survivors}"
        assert not private[0].exists(), f"the killed run's broker dir {private[0]} is still there"
        output, _ = rerun.communicate(timeout=300)
    finally:
        if rerun.poll() is None:
            rerun.kill()
            rerun.wait()
    assert rerun.returncode == 0, output[-3000:]
    passed = re.search(r"(\d+) passed", output)
    assert passed and int(passed[1]) > 0, output[-3000:]  # it ran tests, not just exited 0
    # And the rerun, ending normally, removed its own.
    assert not processes_mentioning(str(tmp_path))
    assert not list(runs.glob("*/session-*")), list(runs.rglob("*"))
