"""The real esptool CLI, unmodified, against a virtual board started by a fixture.

Each case runs esptool the way a person would (a subprocess, default reset over
RFC 2217) and checks its exit code and output, then checks what the board did through
its control endpoint's TX tap (the port itself is exclusive, as on a lab host).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hil.firmware.catalog import load_recipes
from hil.images.otadata import OtaData, OtaEntry, OtaState
from hil.rig.virtual_board import VirtualBoardProcess

pytestmark = [pytest.mark.esptool]

MAC = "58:cf:79:a1:b2:c3"
DTR_RTS_WARNING = "Setting RTS/DTR lines is not supported"


def esptool(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("esptool", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "esptool"]
    result = subprocess.run(
        [*cmd, *args], cwd=cwd, capture_output=True, text=True, timeout=240, check=False
    )
    if check:
        assert result.returncode == 0, f"esptool {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return result


@pytest.fixture
def board(virtual_board_factory) -> VirtualBoardProcess:
    return virtual_board_factory(mac=MAC)


def port(board: VirtualBoardProcess) -> str:
    assert board.endpoints is not None
    return board.endpoints.serial


def control(board: VirtualBoardProcess):
    assert board.control is not None
    return board.control


def flash_baseline(board: VirtualBoardProcess, firmware_dir: Path, *extra: str) -> None:
    esptool("--port", port(board), *extra, "write-flash", "@flash_args", cwd=firmware_dir)


# What esptool prints for a real ESP32-C3 too (the C3 has no chip-id register).
REAL_CHIP_WARNINGS = ("ESP32-C3 has no chip ID. Reading MAC address instead.",)


def assert_no_warning(result: subprocess.CompletedProcess[str]) -> None:
    """No warning of any case on either stream (esptool 5 writes both "Warning:" and
    "WARNING:"), in particular not the one about DTR/RTS on a port, beyond those a real
    ESP32-C3 gets as well."""
    text = result.stdout + result.stderr
    assert DTR_RTS_WARNING not in text
    for line in text.splitlines():
        if re.search(r"\bwarning\b", line, re.IGNORECASE):
            assert any(known in line for known in REAL_CHIP_WARNINGS), line


def test_chip_id_read_mac_flash_id(board: VirtualBoardProcess) -> None:
    result = esptool("--port", port(board), "chip-id")
    assert "ESP32-C3" in result.stdout
    assert_no_warning(result)

    result = esptool("--port", port(board), "read-mac")
    assert re.search(rf"^MAC:\s+{MAC}$", result.stdout, re.MULTILINE), result.stdout
    assert_no_warning(result)

    result = esptool("--port", port(board), "flash-id")
    assert "Manufacturer: c8" in result.stdout
    assert "Device: 4016" in result.stdout
    assert "Detected flash size: 4MB" in result.stdout
    assert_no_warning(result)


@pytest.mark.parametrize("stub", ["stub", "no-stub"])
@pytest.mark.parametrize("baud", ["115200", "921600"])
def test_write_flash_then_hard_reset_boots_the_app(
    board: VirtualBoardProcess, firmware_dir: Path, stub: str, baud: str
) -> None:
    extra = ["-b", baud] + (["--no-stub"] if stub == "no-stub" else [])
    before = control(board).tx_log()[1]
    result = esptool("--port", port(board), *extra, "write-flash", "@flash_args", cwd=firmware_dir)
    assert result.stdout.count("Hash of data verified.") == 4
    assert "Hard resetting via RTS pin" in result.stdout
    assert_no_warning(result)

    ctl = control(board)
    _, pos = ctl.wait_tx(r"rst:0x1 \(POWERON\),boot:0xc \(SPI_FAST_FLASH_BOOT\)", since=before)
    _, pos = ctl.wait_tx(r"I \(\d+\) boot: Partition Table:", since=pos)
    _, pos = ctl.wait_tx(r"boot:  5 ota_1\s+OTA app\s+00 11 00210000 00100000", since=pos)
    _, pos = ctl.wait_tx(r"boot: Loaded app from partition at offset 0x10000", since=pos)
    _, pos = ctl.wait_tx(r"app_init: App version:      1\.0\.0", since=pos)
    assert ctl.state()["app"]["version"] == "1.0.0"


@pytest.fixture
def pty_board(virtual_board_factory) -> VirtualBoardProcess:
    """A board on a pty, already in download mode: esptool runs with no reset and pays
    none of pyserial's ~0.2 s per-command RFC 2217 renegotiation, so the data-path tests
    stay fast. The reset paths are covered over RFC 2217 above."""
    board = virtual_board_factory(mac=MAC, pty=True)
    control(board).request("download")
    return board


def esptool_pty(board: VirtualBoardProcess, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return esptool("--port", port(board), "--before", "no-reset", "--after", "no-reset", *args, check=check)


@pytest.mark.parametrize(
    "extra", [(), ("--no-stub",), ("-b", "921600"), ("--no-stub", "-b", "921600")],
    ids=["stub-115200", "no-stub-115200", "stub-921600", "no-stub-921600"],
)  # fmt: skip
def test_write_app_verify_and_read_back(
    pty_board: VirtualBoardProcess, firmware_dir: Path, tmp_path: Path, extra: tuple[str, ...]
) -> None:
    app = firmware_dir / "v1_1_0.bin"
    written = esptool_pty(pty_board, *extra, "write-flash", "0x10000", str(app))
    assert "Hash of data verified." in written.stdout
    out = esptool_pty(pty_board, "verify-flash", "0x10000", str(app)).stdout
    assert "Verification successful (digest matched)" in out

    back = tmp_path / "back.bin"
    esptool_pty(pty_board, "read-flash", "0x10000", str(app.stat().st_size), str(back))
    assert back.read_bytes() == app.read_bytes()
    esptool_pty(pty_board, "--no-stub", "read-flash", "0x10000", "0x1000", str(back))
    assert back.read_bytes() == app.read_bytes()[:0x1000]


@pytest.mark.parametrize("stub", ["stub", "no-stub"])
def test_erase_region(pty_board: VirtualBoardProcess, firmware_dir: Path, tmp_path: Path, stub: str) -> None:
    extra = ["--no-stub"] if stub == "no-stub" else []
    app = firmware_dir / "v1_1_0.bin"
    esptool_pty(pty_board, *extra, "-b", "921600", "write-flash", "0x10000", str(app))
    esptool_pty(pty_board, *extra, "erase-region", "0x11000", "0x1000")
    back = tmp_path / "back.bin"
    esptool_pty(pty_board, "read-flash", "0x10000", "0x3000", str(back))
    data = app.read_bytes()
    assert back.read_bytes() == data[:0x1000] + b"\xff" * 0x1000 + data[0x2000:0x3000]
    mismatch = esptool_pty(pty_board, "verify-flash", "0x10000", str(app), check=False)
    assert mismatch.returncode != 0
    assert "Verification failed" in mismatch.stdout + mismatch.stderr


def test_erase_flash(pty_board: VirtualBoardProcess, firmware_dir: Path, tmp_path: Path) -> None:
    esptool_pty(pty_board, "write-flash", "0x10000", str(firmware_dir / "v1_1_0.bin"))
    esptool_pty(pty_board, "erase-flash")
    everything = tmp_path / "all.bin"
    esptool_pty(pty_board, "read-flash", "0x0", "0x40000", str(everything))
    assert everything.read_bytes() == b"\xff" * 0x40000


def test_after_no_reset_stays_in_download_mode(board: VirtualBoardProcess, firmware_dir: Path) -> None:
    flash_baseline(board, firmware_dir, "--after", "no-reset")
    assert control(board).state()["mode"] == "download"


def test_after_watchdog_reset_over_rfc2217_answers_then_boots(board: VirtualBoardProcess, firmware_dir: Path) -> None:
    """esptool arms the RTC WDT, re-locks it and reads that reply too before it sleeps:
    on a bench the whole sequence fits in the ~15 ms hold time. Over RFC 2217 (pyserial's
    round trips, a busy host) it need not; the board still answers every write first,
    then resets through the RTC WDT and boots the app from flash."""
    flash_baseline(board, firmware_dir, "--after", "no-reset")
    ctl = control(board)
    before = ctl.tx_log()[1]
    result = esptool("--port", port(board), "--after", "watchdog-reset", "chip-id")
    assert "Hard resetting with a watchdog..." in result.stdout
    assert_no_warning(result)
    _, pos = ctl.wait_tx(r"rst:0x10 \(RTCWDT_RTC_RST\),boot:0xc \(SPI_FAST_FLASH_BOOT\)", since=before)
    ctl.wait_tx(r"app_init: App version:      1\.0\.0", since=pos)
    assert ctl.state()["reset_reason"] == "RTCWDT_RTC_RST"


def test_boot_log_names_the_gigadevice_flash_and_keeps_board_time(board: VirtualBoardProcess, firmware_dir: Path) -> None:
    """ESP-IDF's GD driver logs ``detected chip: gd``; the bootloader's stamps are the
    ms a C3 spends there (its first line ~24 ms after reset, table rows ~6 ms apart)."""
    ctl = control(board)
    before = ctl.tx_log()[1]
    flash_baseline(board, firmware_dir)
    _, start = ctl.wait_tx(r"rst:0x1 \(POWERON\),boot:0xc \(SPI_FAST_FLASH_BOOT\)", since=before)
    ctl.wait_tx(r"I \(\d+\) spi_flash: detected chip: gd\r\n", since=start)
    boot = ctl.tx_log(start)[0].decode(errors="replace")
    stamps = [int(ms) for ms in re.findall(r"^I \((\d+)\) boot: ", boot, re.MULTILINE)]
    assert len(set(stamps)) > 10, stamps
    assert stamps == sorted(stamps) and stamps[0] >= 15 and stamps[-1] >= 100, stamps
    assert "detected chip: generic" not in boot


def test_blank_flash_boots_like_a_blank_chip(board: VirtualBoardProcess) -> None:
    ctl = control(board)
    _, pos = ctl.wait_tx(r"rst:0x1 \(POWERON\),boot:0xc")
    ctl.wait_tx(r"invalid header: 0xffffffff", since=pos)
    ctl.wait_tx(r"rst:0x7 \(TG0WDT_SYS_RST\)", since=pos, timeout=15)
    assert ctl.state()["app"] is None


def test_rollback_new_image_that_never_marks_itself_valid(
    pty_board: VirtualBoardProcess, firmware_dir: Path, tmp_path: Path
) -> None:
    otadata = tmp_path / "otadata.bin"
    otadata.write_bytes(OtaData((OtaEntry(seq=1, state=OtaState.NEW), None)).to_bytes())
    esptool_pty(
        pty_board, "write-flash",
        "0x0", str(firmware_dir / "bootloader.bin"),
        "0x8000", str(firmware_dir / "partition-table.bin"),
        "0x10000", str(firmware_dir / "baseline.bin"),
        "0x110000", str(firmware_dir / "v1_1_0.bin"),
        "0xd000", str(otadata),
    )  # fmt: skip
    ctl = control(pty_board)
    # Reset 1: NEW becomes PENDING_VERIFY and the new app runs.
    ctl.request("reset")
    ctl.request("wait_mode", mode="app", timeout=15)
    assert ctl.state()["app"]["version"] == "1.1.0"
    assert ctl.state()["app"]["partition"] == "ota_0"
    # Reset 2: the app never confirmed itself, so the bootloader aborts it.
    pos = ctl.tx_log()[1]
    ctl.request("reset")
    ctl.request("wait_mode", mode="app", timeout=15)
    ctl.wait_tx(r"app_init: App version:      1\.0\.0", since=pos)
    assert ctl.state()["app"]["partition"] == "factory"

    ctl.request("download")
    back = tmp_path / "otadata-back.bin"
    esptool_pty(pty_board, "read-flash", "0xd000", "0x2000", str(back))
    entry = OtaData.from_bytes(back.read_bytes()).entries[0]
    assert entry is not None and entry.state == OtaState.ABORTED and entry.seq == 1


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("segment", r"E \(\d+\) esp_image: Checksum failed\. Calculated 0x[0-9a-f]+ read 0x[0-9a-f]+"),
        ("hash", r"E \(\d+\) esp_image: Image hash failed - image is corrupt"),
    ],
)
def test_bootloader_refuses_an_app_with_one_flipped_byte(
    pty_board: VirtualBoardProcess, firmware_dir: Path, tmp_path: Path, where: str, message: str
) -> None:
    app = bytearray((firmware_dir / "baseline.bin").read_bytes())
    index = 0x100 if where == "segment" else len(app) - 5  # inside segment 0 / the SHA-256
    app[index] ^= 0x01
    corrupt = tmp_path / "corrupt.bin"
    corrupt.write_bytes(app)
    esptool_pty(
        pty_board, "write-flash",
        "0x0", str(firmware_dir / "bootloader.bin"),
        "0x8000", str(firmware_dir / "partition-table.bin"),
        "0x10000", str(corrupt),
    )  # fmt: skip
    ctl = control(pty_board)
    before = ctl.tx_log()[1]
    ctl.request("reset")
    _, pos = ctl.wait_tx(message, since=before)
    ctl.wait_tx(r"E \(\d+\) boot: Factory app partition is not bootable", since=pos)
    ctl.wait_tx(r"No bootable app partitions in the partition table", since=pos)
    data, _ = ctl.tx_log(before)
    assert b"App version" not in data
    assert ctl.state()["app"] is None


def test_image_info_accepts_every_image_we_build(firmware_dir: Path) -> None:
    for image in sorted(firmware_dir.glob("*.bin")):
        if image.name in ("partition-table.bin", "ota_data_initial.bin"):
            continue
        out = esptool("image-info", str(image)).stdout
        assert "ESP32-C3" in out, image.name
        assert re.search(r"Checksum: 0x[0-9a-f]+ \(valid\)", out), out
        assert re.search(r"Validation hash: [0-9a-f]+ \(valid\)", out), out
        if image.name != "bootloader.bin":
            version = load_recipes().get(image.stem).version
            assert f"App version: {version}" in out, out


def test_pty_board_enters_download_mode_from_the_control_endpoint(virtual_board_factory) -> None:
    board = virtual_board_factory(mac=MAC, pty=True)
    ctl = control(board)
    ctl.request("download")
    ctl.request("wait_mode", mode="download", timeout=5)
    out = esptool("--port", port(board), "--before", "no-reset", "--after", "no-reset", "read-mac").stdout
    assert MAC in out
