"""Ctrl-C during ``hil flash``: exit 130 with one line, no traceback, and the board reset
out of download mode (its stub no longer running) into the app it had.

The command runs as a person runs it: on a terminal (a pty that is its controlling
terminal), Ctrl-C typed on it, so the kernel sends SIGINT to the foreground process group.
The board is ``hil sim board --realistic-timing``: it takes a real chip's time to flash,
so there is a flash to interrupt. The Ctrl-C goes in once the progress bar shows the file
being written and the board's control endpoint reports the stub running. What is being
written lies outside every partition: the bootloader and app flashed before stay intact,
and a board reset out of download mode boots that app.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from hil.processes import die_with_parent, stop_group

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

UNPARTITIONED = 0x310000  # after ota_1 (0x210000 + 1 MB): no image check, nothing boots from it
ANSI = re.compile(rb"\x1b(?:\[[0-9;?]*[ -/]*[@-~]|[@-Z\\-_])")


def control(url: str, cmd: str, **fields: Any) -> dict[str, Any]:
    """One request to the board's control endpoint (JSON lines; the token from the file
    its URL names, as every client of the endpoint does)."""
    parsed = urllib.parse.urlparse(url)
    token = Path(urllib.parse.parse_qs(parsed.query)["token_file"][0]).read_text().strip()
    assert parsed.hostname is not None and parsed.port is not None, url
    with socket.create_connection(
        (parsed.hostname, parsed.port), timeout=float(fields.get("timeout", 0)) + 15
    ) as sock:
        sock.sendall(json.dumps({"cmd": cmd, "token": token, **fields}).encode() + b"\n")
        reply: dict[str, Any] = json.loads(sock.makefile("rb").readline())
    return reply


def start_board(state_dir: Path) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "hil", "sim", "board", "--state-dir", str(state_dir), "--realistic-timing"],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        preexec_fn=die_with_parent,  # own process group, and gone if this test's process dies
    )  # fmt: skip
    first: list[str] = []
    reader = threading.Thread(target=lambda: first.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(60)
    if not first or not first[0].strip():
        stop_group(proc, grace_s=5)
        raise AssertionError("hil sim board printed no hello line in 60 s")
    return proc, json.loads(first[0])


def on_a_terminal(args: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    """``args`` with a pty as its controlling terminal (200 columns), in its own session:
    what is typed on the returned master reaches it as it would from a terminal."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))

    def take_the_terminal() -> None:  # after setsid: the pty on fd 0 becomes the ctty
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        # SIGINT's default, as a person's shell gives its commands: a runner started in
        # the background (bash's `&` without job control) ignores SIGINT, every descendant
        # inherits the ignore, and the Ctrl-C would do nothing.
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    env = {**os.environ, "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    try:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdin=slave, stdout=slave, stderr=slave,
                                start_new_session=True, preexec_fn=take_the_terminal)  # fmt: skip
    finally:
        os.close(slave)
    return proc, master


class Screen:
    """What the process wrote on its terminal, read as it comes."""

    def __init__(self, master: int) -> None:
        self.master, self.raw, self.closed = master, b"", False

    def read(self, timeout: float) -> None:
        if self.closed:
            return
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: every holder of the slave side is gone
            data = b""
        self.raw += data
        self.closed = not data

    def wait_for(self, needle: bytes, proc: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.raw:
            assert proc.poll() is None, (
                f"hil flash ended ({proc.returncode}) before {needle!r}:\n{self.text()}"
            )
            assert time.monotonic() < deadline, (
                f"no {needle!r} on the terminal in {timeout} s:\n{self.text()}"
            )
            self.read(0.1)

    def drain(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.closed or proc.poll() is None:
            assert time.monotonic() < deadline, (
                f"hil flash still running {timeout} s after Ctrl-C:\n{self.text()}"
            )
            self.read(0.1)

    def text(self) -> str:
        return ANSI.sub(b"", self.raw).decode(errors="replace")

    def lines(self) -> list[str]:
        """The lines as a terminal would leave them: a carriage return starts the line over."""
        return [
            line.rsplit("\r", 1)[-1].strip()
            for line in self.text().replace("\r\n", "\n").split("\n")
        ]


def test_ctrl_c_during_hil_flash_exits_130_and_resets_the_board_out_of_download_mode(
    tmp_path: Path,
) -> None:
    board, hello = start_board(tmp_path / "board")
    serial_url, control_url = hello["serial"], hello["control"]
    flashing: subprocess.Popen[bytes] | None = None
    master = -1
    try:
        baseline = subprocess.run([sys.executable, "-m", "hil", "flash", "--port", serial_url, "--recipe", "baseline"],
                                  cwd=ROOT, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)  # fmt: skip
        assert baseline.returncode == 0, baseline.stdout + baseline.stderr
        booted = control(control_url, "wait_mode", mode="app", timeout=30)
        assert booted["ok"] and booted["state"]["app"], booted
        boots = booted["state"]["boots"]

        blob = tmp_path / "blob.bin"
        blob.write_bytes(os.urandom(256 * 1024))  # incompressible: ~25 s at the board's real pace
        flashing, master = on_a_terminal([sys.executable, "-m", "hil", "flash", "--port", serial_url, "--force",
                                          f"{blob}@{UNPARTITIONED:#x}"])  # fmt: skip
        screen = Screen(master)
        screen.wait_for(b"blob.bin", flashing, timeout=120)  # its progress row: the write has begun
        during = control(control_url, "state")["state"]
        assert during["mode"] == "download" and during["stub_running"], (
            f"not mid-flash: {during}\n{screen.text()}"
        )
        assert flashing.poll() is None, screen.text()

        os.write(master, b"\x03")  # Ctrl-C, typed on its terminal
        screen.drain(flashing, timeout=60)
        output, lines = screen.text(), [line for line in screen.lines() if line and line != "^C"]
        assert flashing.returncode == 130, f"exit {flashing.returncode}:\n{output}"
        assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
        said = [line for line in lines if "interrupt" in line.lower()]
        assert said == ["hil flash: interrupted"], output
        assert lines[-1] == "hil flash: interrupted", output  # the last word, nothing after it

        # Reset out of download mode: the stub gone, the board booted again into its app.
        after = control(control_url, "wait_mode", mode="app", timeout=30)
        assert after["ok"], f"the board did not boot its app after the Ctrl-C: {after}"
        state = after["state"]
        assert not state["stub_running"] and state["boots"] > boots, state
        assert state["app"] == booted["state"]["app"], state  # the app flashed before, intact
    finally:
        if flashing is not None and flashing.poll() is None:
            os.killpg(flashing.pid, signal.SIGKILL)
            flashing.wait()
        if master >= 0:
            os.close(master)
        stop_group(board, grace_s=10)
