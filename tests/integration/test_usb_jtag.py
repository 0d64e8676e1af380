"""The virtual board's USB-Serial-JTAG personality through the tools a person uses on such a
board: the real esptool CLI (``--before usb-reset``), and the framework's console and
flasher riding through a power cycle that takes the port off the bus.

What the board did is read through its control endpoint (its TX tap and state), never
through a port another client holds.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil.link.console import Console
from hil.link.flasher import Flasher
from hil.rig.model import Rig
from hil.rig.rigfile import load_rigs
from hil.rig.virtual_board import ControlClient, VirtualBoardProcess
from hil.session import ONLINE_TIMEOUT_S

pytestmark = [pytest.mark.esptool]

MAC = "58:cf:79:a1:b2:c3"
REPO = Path(__file__).resolve().parents[2]
ROM_LOADER = r"rst:0x15 \(USB_UART_CHIP_RESET\),boot:0x5 \(DOWNLOAD\(USB/UART0/1\)\)"
APP_BOOT_BY_USB = r"rst:0x15 \(USB_UART_CHIP_RESET\),boot:0xc \(SPI_FAST_FLASH_BOOT\)"


def esptool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("esptool", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "esptool"]
    result = subprocess.run([*cmd, *args], cwd=cwd, capture_output=True, text=True, timeout=240, check=False)
    assert "Traceback" not in result.stderr, result.stderr
    return result


@pytest.fixture(scope="module")
def twin() -> Rig:
    """The example USB-Serial-JTAG rig's CI twin: its declared re-enumeration time sets the
    waits here, as it does in a session."""
    rigs = {rig.name: rig for rig in load_rigs(REPO / "rigs")}
    rig = rigs["usb-jtag-twin"]
    assert rig.reset == "usb-jtag" and rig.port_return_s is not None
    return rig


@pytest.fixture
def board(tmp_path: Path) -> Iterator[VirtualBoardProcess]:
    with VirtualBoardProcess(tmp_path / "board", mac=MAC, usb_jtag=True) as started:
        yield started


def serial_url(board: VirtualBoardProcess) -> str:
    assert board.endpoints is not None
    return board.endpoints.serial


def control(board: VirtualBoardProcess) -> ControlClient:
    assert board.control is not None
    return board.control


def flash_with_esptool(board: VirtualBoardProcess, firmware_dir: Path) -> subprocess.CompletedProcess[str]:
    return esptool("--port", serial_url(board), "--before", "usb-reset", "write-flash", "@flash_args", cwd=firmware_dir)


def test_usb_reset_chip_id_write_flash_and_read_mac(board: VirtualBoardProcess, firmware_dir: Path) -> None:
    assert control(board).state()["personality"] == "usb-jtag"
    since = control(board).tx_log()[1]
    result = esptool("--port", serial_url(board), "--before", "usb-reset", "chip-id")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ESP32-C3" in result.stdout and MAC in result.stdout
    _, since = control(board).wait_tx(ROM_LOADER, since=since, timeout=5)

    result = flash_with_esptool(board, firmware_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Hash of data verified" in result.stdout
    # esptool's hard reset after the write: RTS alone, which the peripheral reads as a reset
    # into the app (DTR released: no download armed), and the new app boots.
    _, since = control(board).wait_tx(APP_BOOT_BY_USB, since=since, timeout=5)
    control(board).wait_tx(r"App version:\s+\S+", since=since, timeout=ONLINE_TIMEOUT_S)

    result = esptool("--port", serial_url(board), "--before", "usb-reset", "read-mac")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"MAC:                {MAC}" in result.stdout


def test_the_classic_reset_does_not_enter_download_mode(board: VirtualBoardProcess) -> None:
    since = control(board).tx_log()[1]
    # esptool's default reset over RFC 2217: its classic DTR/RTS pulse, short and long.
    result = esptool("--port", serial_url(board), "--connect-attempts", "2", "chip-id")
    assert result.returncode != 0
    assert "Wrong boot mode detected (0xc)" in result.stdout + result.stderr
    data, _ = control(board).tx_log(since)
    assert b"USB_UART_CHIP_RESET),boot:0xc" in data  # each pulse did reset the chip ...
    assert b"waiting for download" not in data  # ... into its app, never its ROM loader


def test_the_console_and_the_flasher_ride_through_a_power_cycle(
    board: VirtualBoardProcess, firmware_dir: Path, twin: Rig, tmp_path: Path
) -> None:
    assert flash_with_esptool(board, firmware_dir).returncode == 0
    assert twin.port_return_s is not None
    with Console(serial_url(board), tmp_path / "console.log", reset="usb-jtag", port_return_s=twin.port_return_s) as console:
        mark = console.mark()
        control(board).request("power", action="cycle", off_s=0.2)
        assert control(board).state()["port"]["present"] is False  # gone with the power

        console.wait_connected()  # within the rig's port_return_s
        # The boot it could not see as it happened: held by the port until read.
        console.expect(r"rst:0x1 \(POWERON\),boot:0xc", timeout=twin.port_return_s, since=mark)
        console.expect(r"App version:\s+\S+", timeout=ONLINE_TIMEOUT_S)
        (gap,) = console.gaps
        assert gap.seconds is not None and 0 < gap.seconds <= twin.port_return_s
        assert control(board).state()["port"]["departures"] == 1

        # The flasher on its own connection: the port is away when the job starts.
        files = [(int(offset, 16), firmware_dir / name) for offset, name in
                 (line.split() for line in (firmware_dir / "flash_args").read_text().splitlines()[1:])]  # fmt: skip
        with console.let_go(to="the flasher"):
            control(board).request("power", action="cycle", off_s=0.2)
            flashed_from = control(board).tx_log()[1]
            flasher = Flasher(before="usb-reset", port_return_s=twin.port_return_s)
            report = flasher.flash(serial_url(board), files)
        assert 0 < report.port_wait_seconds <= twin.port_return_s, report.summary()
        assert all(f.skipped for f in report.files), report.summary()
        # Its hard reset booted the app (what it printed went to the flasher's connection).
        control(board).wait_tx(r"App version:\s+\S+", since=flashed_from, timeout=ONLINE_TIMEOUT_S)
