"""``hil monitor``: esp-idf-monitor on a board's port, local or ``rfc2217://``.

esp-idf-monitor is the tool ESP-IDF users already know (``idf.py monitor``): colours by log
level, ``Ctrl+T`` menu, reset and, given the app's ELF, panic backtraces decoded to
functions and lines. ``hil monitor`` only finds the port (a rig, the board ``hil sim up``
started) and runs it with the ESP32-C3's settings; in an interactive terminal it *becomes*
the monitor (exec), so its keys (Ctrl+] quits, Ctrl+T menu) behave exactly as with ``idf.py monitor``.

Without a TTY (a script, a test), esp-idf-monitor reads line commands from stdin; with
``--timeout S`` this runs it for S seconds and then quits it cleanly, so scripts can capture
the boot log of a reset without a terminal. A SIGTERM or SIGINT to ``hil monitor`` quits
the monitor the same way.

Panic decoding needs the ELF of the running app and the RISC-V toolchain's gdb
(``riscv32-esp-elf-gdb``, part of ESP-IDF). The virtual rig's apps are built from recipes
and have no ELF, so on virtual boards the panic lines pass through undecoded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from hil.bench.state import BenchError, BenchInputError

QUIT_GRACE_S = 2.0
QUIT_ATTEMPTS = 3
POLL_S = 0.2  # how soon a quit request is acted on


@dataclass(frozen=True)
class MonitorRequest:
    port: str
    elf: Path | None = None
    no_reset: bool = False
    timeout: float | None = None
    baud: int = 115200
    timestamps: bool = False


def command(request: MonitorRequest) -> list[str]:
    """The esp-idf-monitor command line for ``request``."""
    if request.elf is not None and not request.elf.is_file():
        raise BenchInputError(f"--elf {request.elf}: no such file; give the app's ELF (build/<project>.elf)")
    if request.timeout is not None and request.timeout <= 0:
        raise BenchInputError(f"--timeout {request.timeout}: give a number of seconds > 0")
    args = [
        sys.executable, "-m", "esp_idf_monitor", "--port", request.port, "--baud", str(request.baud),
        "--target", "esp32c3", "--toolchain-prefix", "riscv32-esp-elf-",
    ]  # fmt: skip
    if request.no_reset:
        args.append("--no-reset")
    if request.timestamps:
        args.append("--timestamps")
    if request.elf is not None:
        args += ["--decode-panic", "backtrace", str(request.elf)]
    return args


def check_port(request: MonitorRequest) -> None:
    """A local port that is not there is a failure of ours: esp-idf-monitor says so and
    exits 0, which a script would take for a clean session."""
    if "://" not in request.port and not Path(request.port).exists():
        raise BenchError(f"--port {request.port}: no such serial port (is the board plugged in? ls /dev/serial/by-id)")


def run(request: MonitorRequest, *, interactive: bool | None = None) -> int:
    """Run the monitor until it quits (Ctrl+], EOF, 'exit', SIGTERM/SIGINT, or ``timeout``)."""
    check_port(request)
    args = command(request)
    if interactive is None:
        interactive = sys.stdin.isatty() and request.timeout is None
    if interactive:
        sys.stdout.flush()
        os.execv(sys.executable, args)  # the monitor owns the terminal, as idf.py monitor does
    # With a timeout, a pipe of our own on its stdin (esp-idf-monitor's non-interactive
    # mode, quit by 'exit'); else our stdin, so a script can feed it line commands.
    timed = request.timeout is not None
    proc = subprocess.Popen(args, stdin=subprocess.PIPE if timed else None, text=True)

    def quit_monitor() -> None:
        """'exit' on its stdin pipe, if it has ours; else (or again) its Ctrl+C, SIGINT."""
        if proc.poll() is not None:
            return
        if proc.stdin is not None and not proc.stdin.closed:
            try:
                proc.stdin.write("exit\n")
                proc.stdin.close()
                return
            except (BrokenPipeError, ValueError):
                pass
        proc.send_signal(signal.SIGINT)  # esp-idf-monitor quits cleanly on KeyboardInterrupt

    quitting = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        quitting.set()
        quit_monitor()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    deadline = None if request.timeout is None else time.monotonic() + request.timeout
    try:
        while not quitting.is_set():  # the monitor's end, our signal, or the timeout
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                quitting.set()
                quit_monitor()
                break
            try:
                return rc(proc.wait(timeout=POLL_S if left is None else min(left, POLL_S)))
            except subprocess.TimeoutExpired:
                continue
        # Asked to quit: a Ctrl+C that lands while esp-idf-monitor is still starting up can
        # be lost, so ask again, then terminate it.
        for _ in range(QUIT_ATTEMPTS):
            try:
                return rc(proc.wait(timeout=QUIT_GRACE_S))
            except subprocess.TimeoutExpired:
                quit_monitor()
        proc.terminate()
        return rc(proc.wait())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def rc(code: int) -> int:
    """The monitor's exit code as ours: quitting by a signal we forwarded is a normal end."""
    return 0 if code in (-signal.SIGTERM, -signal.SIGINT) else code


__all__ = ["MonitorRequest", "command", "rc", "run"]


