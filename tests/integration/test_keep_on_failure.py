"""--keep-on-failure as a person at 3 a.m. uses it: the test fails, the failure is printed,
the rig stays reserved and powered, and every command the terminal prints to attach is run
here exactly as printed (through a shell): the monitor attaches to the port the session
let go and sees the board boot after the printed power cycle, esptool reads the chip, the
printed MQTT login shows a reading. Ctrl-C, or --keep-timeout, lets it all go and the run
exits with the failure."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hil.rig.virtual_board import ControlClient, VirtualBoardError

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
FAILING_TEST = "def test_the_device_misbehaves(dut):\n    assert False, 'on purpose'\n"


class Output:
    """A process's output, read by a thread as it comes (nothing blocks on a full pipe)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._cond = threading.Condition()
        assert proc.stdout is not None
        self._thread = threading.Thread(target=self._read, args=(proc.stdout,), daemon=True)
        self._thread.start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self.lines.append("")  # EOF
            self._cond.notify_all()

    @property
    def text(self) -> str:
        with self._cond:
            return "".join(self.lines)

    def wait_for(self, found: Callable[[str], bool], timeout: float) -> str:
        """The first line for which ``found`` holds; AssertionError with the output if none comes."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    if found(line):
                        return line
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or (self.lines and self.lines[-1] == ""):
                    raise AssertionError(f"not seen within {timeout} s; output:\n{''.join(self.lines)[-4000:]}")
                self._cond.wait(left)


def start_run(tmp_path: Path, *options: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], Output]:
    (tmp_path / "test_fails.py").write_text(FAILING_TEST)
    environ = {k: v for k, v in os.environ.items() if k != "CI"}
    environ.update(
        PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", HIL_CACHE_DIR=str(tmp_path / "cache"),
        HIL_LOCK_DIR=str(tmp_path / "locks"), **(env or {}),
    )  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "test_fails.py", "-p", "no:cacheprovider",
         f"--rigs-dir={ROOT / 'rigs'}", f"--hil-log-dir={tmp_path / 'logs'}", "--keep-on-failure", *options],
        cwd=tmp_path, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=ctrl_c_as_in_a_shell,
    )  # fmt: skip
    return proc, Output(proc)


def ctrl_c_as_in_a_shell() -> None:
    """The run gets SIGINT's default, as a person's shell gives its commands: a runner
    started in the background (bash's ``&`` without job control) ignores SIGINT, every
    descendant inherits the ignore, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def printed_commands(text: str) -> dict[str, str]:
    """The commands of the 'rig kept' block (lines indented four spaces), by what they run."""
    block = text.split(" rig kept ", 1)[1]
    commands = [line.strip() for line in block.splitlines() if line.startswith("    ") and line.strip()]
    kinds = {" monitor --port ": "monitor", " chip-id": "chip-id", " mqtt watch ": "watch",
             " mosquitto_sub -t ": "mosquitto_sub", " sensor get ": "get", " power cycle ": "cycle"}  # fmt: skip
    named = {}
    for command in commands:
        kind = [name for needle, name in kinds.items() if needle in f" {command} "]
        assert len(kind) == 1, (command, kind)
        named[kind[0]] = command
    return named


def shell(command: str) -> subprocess.Popen[str]:
    """``command`` exactly as printed, through bash (which runs a simple command in its own
    place, so a signal to the group reaches it as Ctrl-C in a terminal would), in a process
    group of its own."""
    return subprocess.Popen(
        command, shell=True, executable="/bin/bash", cwd=ROOT, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip


def run_printed(command: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``command`` exactly as printed, through bash, to its end."""
    return subprocess.run(
        command, shell=True, executable="/bin/bash", cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def stop(proc: subprocess.Popen[str], sig: signal.Signals = signal.SIGINT, timeout: float = 20) -> int:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    try:
        return proc.wait(timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_a_failed_test_keeps_the_rig_and_every_printed_command_works(tmp_path: Path) -> None:
    proc, out = start_run(tmp_path)
    try:
        out.wait_for(lambda line: line.startswith("Held until Ctrl-C"), timeout=180)
        text = out.text
        # The failure first (its traceback and message), then the rig kept: not only at Ctrl-C.
        assert "test_fails.py F" in text, text[-3000:]
        assert text.index("test_fails.py F") < text.index("AssertionError: on purpose") < text.index(" rig kept "), text
        assert "stays reserved and powered" in text and "(hil-virtual-0)" in text, text[-3000:]
        commands = printed_commands(text)
        assert set(commands) >= {"monitor", "chip-id", "watch", "get", "cycle"}, commands
        assert re.search(r"monitor --port rfc2217://127\.0\.0\.1:\d+ --no-reset$", commands["monitor"])

        held = subprocess.run(
            [sys.executable, "-m", "hil.cli", "rigs", "--json", "--lock-dir", str(tmp_path / "locks")],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        rows = {row["name"]: row["held_by"] for row in json.loads(held.stdout)}
        assert rows["virtual-0"] and f"pid {proc.pid}" in rows["virtual-0"]
        control_url = shlex.split(commands["get"])[-1]
        board = ControlClient(control_url, timeout=5)
        assert board.state()["powered"] is True  # powered, and still running the app
        board.close()
        got = run_printed(commands["get"], timeout=60)
        assert got.returncode == 0 and "temperature" in got.stdout, got.stderr

        # The serial port is free: the printed monitor attaches, and sees the board boot
        # after the printed power cycle.
        monitor = shell(commands["monitor"])
        try:
            seen = Output(monitor)
            seen.wait_for(lambda line: "non-interactive mode" in line, timeout=60)
            cycled = run_printed(commands["cycle"], timeout=60)
            assert cycled.returncode == 0, cycled.stderr
            seen.wait_for(lambda line: "rst:0x1 (POWERON)" in line, timeout=60)
            assert "Broken pipe" not in seen.text and "busy" not in seen.text
        finally:
            assert stop(monitor) == 0, seen.text[-3000:]

        # ... and, the monitor gone, esptool has it.
        chip = run_printed(commands["chip-id"], timeout=180)
        assert chip.returncode == 0, chip.stdout[-3000:] + chip.stderr[-3000:]
        assert "ESP32-C3" in chip.stdout and "MAC:" in chip.stdout, chip.stdout[-3000:]

        # The observer's login: a 0600 file in a 0700 dir; the printed watch shows a reading.
        login = Path(shlex.split(commands["watch"])[shlex.split(commands["watch"]).index("--credentials") + 1])
        assert stat.S_IMODE(login.stat().st_mode) == 0o600 and stat.S_IMODE(login.parent.stat().st_mode) == 0o700
        password = next(line.split(" ", 1)[1] for line in login.read_text().splitlines() if line.startswith("-P "))
        watch = shell(commands["watch"])
        try:
            lines = Output(watch)
            lines.wait_for(lambda line: re.search(r"\bhil-virtual-0\s+sensors\s+.*temperature_c=", line) is not None, 60)
        finally:
            assert stop(watch, signal.SIGTERM) == 0, lines.text[-3000:]  # SIGTERM ends it cleanly
        assert password not in lines.text

        if "mosquitto_sub" in commands:  # printed where mosquitto-clients is installed
            sub = shell(commands["mosquitto_sub"])
            try:
                raw = Output(sub)
                raw.wait_for(lambda line: line.startswith("esp32/hil-virtual-0/sensors {"), timeout=30)
            finally:
                stop(sub)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # Ctrl-C: the hold ends
        code = proc.wait(60)
    text = out.text
    assert code == 1, text[-3000:]  # the run ends with the test's failure, not "interrupted"
    assert "Ctrl-C: rig 'virtual-0' let go" in text and "1 failed" in text, text[-3000:]
    assert not login.exists()  # the password went with the hold
    with pytest.raises((VirtualBoardError, OSError)):
        ControlClient(control_url, timeout=2).state()  # let go: the board is gone


def test_the_hold_ends_at_keep_timeout(tmp_path: Path) -> None:
    proc, out = start_run(tmp_path, "--keep-timeout", "3", env={"CI": "true"})
    try:
        banner = out.wait_for(lambda line: line.startswith("Held for"), timeout=180)
        held_at = time.monotonic()
        assert "Held for 3 s (--keep-timeout)" in banner, banner
        code = proc.wait(60)
        ended_after = time.monotonic() - held_at
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.text
    assert code == 1, text[-3000:]
    assert "--keep-timeout 3 s ran out: rig 'virtual-0' let go" in text, text[-3000:]
    assert 2.5 <= ended_after < 45, ended_after
    console_log = (tmp_path / "logs" / "main" / "virtual-0" / "console.log").read_text()
    # The console let the port go for the hold and took it back for the teardown.
    let_go = console_log.index("--- port let go for a person (--keep-on-failure)")
    assert let_go < console_log.index("--- port taken back ---") < console_log.index("--- console closed ---")
