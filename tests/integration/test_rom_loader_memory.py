"""A host that opens a SLIP frame and never closes it cannot grow the virtual board: 60 MB
streamed into one frame of the ROM loader (no closing 0xC0) leave its resident memory
where it was, during the stream and after the connection closes, and the board then
answers ``esptool chip-id`` as before.

The ROM keeps no more of a frame than its largest command (``MAX_FRAME_BYTES`` of the
loader); before that bound the board kept every byte (58 MB → 118 MB RSS, never given
back). Everything is reached as a lab host reaches a board: ``hil sim up``, the control
endpoint's ``download`` (the BOOT button held through a reset), the RFC 2217 port.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

STREAM_BYTES = 60 * 2**20
GROWTH_LIMIT_KB = 16 * 1024  # far below the stream: a board that kept it grows by 60 MB
CHUNK = (bytes(range(0x01, 0xC0)) * 400)[:65536]  # no 0xC0 (END), 0xDB (ESC) or 0xFF (telnet IAC)


def hil(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hil", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL, check=False)  # fmt: skip


def esptool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("esptool", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "esptool"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120, check=False,
                          stdin=subprocess.DEVNULL)  # fmt: skip


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


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


class PeakRss:
    """The highest VmRSS of ``pid`` seen while the block runs (sampled every 20 ms)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_kb = pid, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:  # a process's memory has no event to wait on: sample it
            self.peak_kb = max(self.peak_kb, rss_kb(self.pid))
            if self._stop.wait(0.02):
                return

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kb = max(self.peak_kb, rss_kb(self.pid))


def stream_one_open_frame(serial_url: str, size: int) -> None:
    """Over a raw connection to the RFC 2217 port: 0xC0, a FLASH_DATA header, then
    ``size`` bytes of frame body, never the closing 0xC0; then close our side and wait
    for the board to close its own (it has then read everything)."""
    host, _, port = serial_url.removeprefix("rfc2217://").rpartition(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(b"\xc0" + struct.pack("<BBHI", 0x00, 0x03, 0xFFFF, 0))
        sent = 0
        while sent < size:
            sock.sendall(CHUNK)
            sent += len(CHUNK)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):  # telnet negotiation from the server, then its EOF
            pass


def test_an_endless_slip_frame_does_not_grow_the_board(tmp_path: Path) -> None:
    state = ["--state-dir", str(tmp_path / "bench")]
    up = hil("sim", "up", "--json", *state)
    assert up.returncode == 0, up.stderr
    try:
        board = json.loads(up.stdout)["items"][0]
        pid, serial_url, control_url = board["pid"], board["serial"], board["control"]
        assert "sim board" in Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
        assert control(control_url, "download")["ok"]
        entered = control(control_url, "wait_mode", mode="download", timeout=10)
        assert entered["ok"] and entered["state"]["mode"] == "download", entered
        idle_kb = rss_kb(pid)
        started = time.monotonic()
        with PeakRss(pid) as peak:
            stream_one_open_frame(serial_url, STREAM_BYTES)
        seconds = time.monotonic() - started
        after_kb = rss_kb(pid)
        measured = (f"VmRSS idle {idle_kb} kB, peak {peak.peak_kb} kB while {STREAM_BYTES >> 20} MB streamed "
                    f"in {seconds:.1f} s, {after_kb} kB after the connection closed")  # fmt: skip
        assert peak.peak_kb - idle_kb < GROWTH_LIMIT_KB, (
            f"the board kept the open frame: {measured}"
        )
        assert after_kb - idle_kb < GROWTH_LIMIT_KB, f"memory not given back: {measured}"
        # Still a board: its endpoint answers, and esptool resets it into the loader and reads it.
        assert control(control_url, "state")["ok"]
        chip = esptool("--port", serial_url, "chip-id")
        assert chip.returncode == 0, f"{measured}\n{chip.stdout}\n{chip.stderr}"
        assert "ESP32-C3" in chip.stdout and board["mac"].lower() in chip.stdout.lower(), (
            chip.stdout
        )
        log = Path(board["process"]["log"]).read_text(errors="replace")
        assert "Traceback" not in log, log[-3000:]
        assert os.path.exists(f"/proc/{pid}"), "the board process is gone"
    finally:
        down = hil("sim", "down", *state)
    assert down.returncode == 0, down.stderr
