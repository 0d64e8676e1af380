"""``hil flash --monitor``: flash, then esp-idf-monitor on the same port, as ``idf.py flash
monitor`` (the monitor resets the chip as it starts: the whole boot of the new firmware is
shown). Driven as a script drives it: esp-idf-monitor's line commands on stdin wait for
the app's version line, then quit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hil.firmware.catalog import load_recipes
from hil.rig.virtual_board import VirtualBoardProcess

ROOT = Path(__file__).resolve().parents[2]


def hil(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hil", *args], cwd=ROOT, input=stdin, capture_output=True, text=True, timeout=120
    )


def test_flash_then_monitor_shows_the_new_firmware_boot(virtual_board: VirtualBoardProcess) -> None:
    assert virtual_board.endpoints is not None
    url = virtual_board.endpoints.serial
    version = load_recipes().get("baseline").version
    result = hil("flash", "--port", url, "--recipe", "baseline", "--monitor",
                 stdin=f"expect --timeout 60 App version: +{version}\nexit\n")  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    _, _, monitored = result.stdout.partition(f"flashed via {url}")
    assert monitored, result.stdout[-2000:]  # the flash report first ...
    assert "ESP-ROM:esp32c3" in monitored  # ... then the monitor's reset: a boot from the ROM
    assert f"App version:      {version}" in monitored
    assert f"hil flash: monitor on {url}" in result.stderr
    assert f"Expect pattern 'App version: +{version}' matched" in result.stderr


def test_monitor_options_without_monitor_or_with_no_reset_are_refused(virtual_board: VirtualBoardProcess) -> None:
    assert virtual_board.endpoints is not None
    url = virtual_board.endpoints.serial
    for args, said in (
        (["--monitor", "--no-reset"], "--no-reset would leave the chip in download mode"),
        (["--monitor-timeout", "5"], "--elf and --monitor-timeout go with --monitor"),
        (["--monitor", "--monitor-timeout", "0"], "--monitor-timeout 0: give a number of seconds > 0"),
    ):
        result = hil("flash", "--port", url, "--recipe", "baseline", *args)
        assert result.returncode == 2 and said in result.stderr, (args, result.stderr)
        assert "flashed via" not in result.stdout  # refused before anything was flashed
