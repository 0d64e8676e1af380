"""The Flasher against virtual boards: real esptool (as a library) over RFC 2217 or a pty.

What is pinned here: the baseline flashes and boots; an unchanged re-flash writes nothing;
a changed app (or flash changed behind the flasher's back) is written; verification
catches flash that does not hold what was written; a board that never syncs is an
infrastructure error after exactly two connections, one whose first sync fails is flashed
on the retry; a port lent open comes back open.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import serial
import serial.rfc2217
from esp_pylib.logger import EspLog

from hil.device.settings import Provisioning, provisioning_image
from hil.images.nvs import read_nvs
from hil.link.flash_errors import FlashInfrastructureError, FlashVerifyError
from hil.link.flasher import Flasher, FlashReport
from hil.link.port_borrow import Link
from hil.link.rfc2217 import Rfc2217Port
from hil.rig.virtual_board import ControlClient, VirtualBoardProcess
from hil.sim.process import FLASH_FILE

pytestmark = [pytest.mark.esptool]

Files = list[tuple[int, Path]]


def baseline_files(firmware_dir: Path, app: str = "baseline.bin") -> Files:
    return [
        (0x0, firmware_dir / "bootloader.bin"),
        (0x8000, firmware_dir / "partition-table.bin"),
        (0xD000, firmware_dir / "ota_data_initial.bin"),
        (0x10000, firmware_dir / app),
    ]


def url(board: VirtualBoardProcess) -> str:
    assert board.endpoints is not None
    return board.endpoints.serial


def control(board: VirtualBoardProcess) -> ControlClient:
    assert board.control is not None
    return board.control


def flash_file(board: VirtualBoardProcess) -> Path:
    assert board.endpoints is not None
    return board.endpoints.state_dir / FLASH_FILE


def corrupt(board: VirtualBoardProcess, offset: int) -> None:
    """Change one byte of the board's flash behind every tool's back. The board maps its
    flash file shared, so it sees this write as a real chip would see a bit flip."""
    with flash_file(board).open("r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([byte ^ 0xFF]))


def names(report: FlashReport, *, skipped: bool) -> set[str]:
    chosen = report.skipped if skipped else report.written
    return {Path(f.name).name for f in chosen}


def count_calls(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> list[int]:
    calls: list[int] = []
    original = getattr(owner, name)

    def spy(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, spy)
    return calls


@pytest.fixture
def board(virtual_board_factory: Callable[..., VirtualBoardProcess]) -> VirtualBoardProcess:
    return virtual_board_factory()


@pytest.fixture
def pty_board(virtual_board_factory: Callable[..., VirtualBoardProcess]) -> VirtualBoardProcess:
    """A board on a pty (no modem lines): put in download mode by its control endpoint."""
    board = virtual_board_factory(pty=True)
    control(board).request("download")
    return board


PTY = {"before": "no-reset"}


def test_flash_baseline_boots_and_an_unchanged_reflash_writes_nothing(
    board: VirtualBoardProcess, firmware_dir: Path
) -> None:
    files = baseline_files(firmware_dir)
    logger_before = EspLog.instance
    seen: list[tuple[str, int, int]] = []
    ctl = control(board)
    full = Flasher().flash(
        url(board), files, skip_unchanged=False, progress=lambda *p: seen.append(p)
    )
    assert EspLog.instance is logger_before  # esptool's global logger is given back
    assert not full.skipped and full.attempts == 1 and full.verified
    assert [f.offset for f in full.files] == [0x0, 0x8000, 0xD000, 0x10000]
    assert [f.size for f in full.files] == [p.stat().st_size for _, p in files]
    assert full.bytes_written == full.bytes_total == sum(p.stat().st_size for _, p in files)
    assert any("Hash of data verified." in line for line in full.log)
    ctl.request("wait_mode", mode="app", timeout=15)
    assert ctl.state()["app"]["version"] == "1.0.0"

    # Progress: per file, from 0 to its size, never backwards.
    for _, path in files:
        mine = [(done, total) for name, done, total in seen if name == str(path)]
        assert mine[0] == (0, path.stat().st_size) and mine[-1] == (path.stat().st_size,) * 2
        assert [d for d, _ in mine] == sorted(d for d, _ in mine)

    again = Flasher().flash(url(board), files)
    assert names(again, skipped=True) == {p.name for _, p in files}
    assert not again.written and again.bytes_written == 0
    assert again.verified and any("all unchanged" in line for line in again.log)  # one MD5 pass, not two
    # Compared by the ROM loader: with nothing to write, no stub upload.
    assert any("Uploading stub flasher" in line for line in full.log)
    assert not any("stub" in line.lower() for line in again.log), again.log
    # Over RFC 2217 the first reset lands in download mode (esptool prints a dot per failed one).
    connecting = next(line for line in again.log if line.startswith("Connecting..."))
    assert not connecting.removeprefix("Connecting...").startswith((".", "_")), connecting
    assert again.seconds < full.seconds
    # The per-file work is where skipping shows: MD5 compares instead of writes.
    assert sum(f.seconds for f in again.files) < 0.5 * sum(f.seconds for f in full.files)
    ctl.request("wait_mode", mode="app", timeout=15)
    assert ctl.state()["app"]["version"] == "1.0.0"


def test_on_a_blank_chip_the_erased_otadata_is_already_there(
    board: VirtualBoardProcess, firmware_dir: Path
) -> None:
    report = Flasher().flash(url(board), baseline_files(firmware_dir))
    # ota_data_initial.bin is all 0xFF: an erased chip already holds it.
    assert names(report, skipped=True) == {"ota_data_initial.bin"}
    assert names(report, skipped=False) == {"bootloader.bin", "partition-table.bin", "baseline.bin"}


def test_a_changed_app_is_written_and_boots(board: VirtualBoardProcess, firmware_dir: Path) -> None:
    ctl = control(board)
    Flasher().flash(url(board), baseline_files(firmware_dir))
    report = Flasher().flash(url(board), baseline_files(firmware_dir, "v1_1_0.bin"))
    assert names(report, skipped=False) == {"v1_1_0.bin"}
    assert names(report, skipped=True) == {
        "bootloader.bin",
        "partition-table.bin",
        "ota_data_initial.bin",
    }
    ctl.request("wait_mode", mode="app", timeout=15)
    assert ctl.state()["app"]["version"] == "1.1.0"


def test_flash_changed_behind_the_flashers_back_is_written_again(
    pty_board: VirtualBoardProcess, firmware_dir: Path
) -> None:
    """Skipping compares with the board's flash, not with what was flashed last time."""
    flasher = Flasher(before="no-reset")
    files = baseline_files(firmware_dir)
    flasher.flash(url(pty_board), files, after="no-reset")
    esptool = [sys.executable, "-m", "esptool", "--port", url(pty_board), "--before", "no-reset"]
    other_app = str(firmware_dir / "v1_1_0.bin")
    subprocess.run(
        [*esptool, "--after", "no-reset", "write-flash", "0x10000", other_app],
        check=True,
        capture_output=True,
        timeout=120,
    )
    report = flasher.flash(url(pty_board), files, after="no-reset")
    assert names(report, skipped=False) == {"baseline.bin"}
    app = (firmware_dir / "baseline.bin").read_bytes()
    assert flash_file(pty_board).read_bytes()[0x10000 : 0x10000 + len(app)] == app


def test_verify_catches_flash_that_does_not_hold_what_was_written(
    pty_board: VirtualBoardProcess, firmware_dir: Path
) -> None:
    app = firmware_dir / "baseline.bin"

    def flip_a_bit_once_written(name: str, done: int, total: int) -> None:
        if done == total:
            corrupt(pty_board, 0x10000 + 0x100)

    with pytest.raises(FlashVerifyError) as info:
        Flasher(before="no-reset").flash(
            url(pty_board), [(0x10000, app)], progress=flip_a_bit_once_written, after="no-reset"
        )
    assert isinstance(info.value, FlashInfrastructureError)  # the rig's flash, not the firmware
    assert f"{app} (at 0x10000): flash does not hold what was written" in str(info.value)


def test_the_final_verify_catches_an_earlier_file_clobbered_later(
    pty_board: VirtualBoardProcess, firmware_dir: Path
) -> None:
    flasher = Flasher(before="no-reset")
    flasher.flash(url(pty_board), baseline_files(firmware_dir), after="no-reset")

    def clobber_the_bootloader(name: str, done: int, total: int) -> None:
        if done == total:
            corrupt(pty_board, 0x200)

    changed = baseline_files(firmware_dir, "v1_1_0.bin")
    with pytest.raises(
        FlashVerifyError, match=r"bootloader\.bin \(at 0x0\): flash MD5 [0-9a-f]{32}"
    ):
        flasher.flash(url(pty_board), changed, progress=clobber_the_bootloader, after="no-reset")
    # Without the final pass only the written file's own check runs, and it passes.
    corrupt(pty_board, 0x200)  # undo, then clobber again unseen
    report = flasher.flash(
        url(pty_board),
        baseline_files(firmware_dir),
        progress=clobber_the_bootloader,
        verify=False,
        after="no-reset",
    )
    assert not report.verified and names(report, skipped=False) == {"baseline.bin"}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_nothing_behind_the_port_is_an_infrastructure_error_after_two_attempts(
    monkeypatch: pytest.MonkeyPatch, firmware_dir: Path
) -> None:
    opened = count_calls(monkeypatch, Link, "open")
    port = f"socket://127.0.0.1:{closed_port()}"
    with pytest.raises(FlashInfrastructureError) as info:
        Flasher().flash(port, baseline_files(firmware_dir))
    assert not isinstance(info.value, FlashVerifyError)
    assert len(opened) == 2 and info.value.attempts == 2 and len(info.value.causes) == 2
    assert f"could not connect to an ESP32-C3 on {port} after 2 attempts" in str(info.value)
    assert "Connection refused" in str(info.value)


def test_a_sync_that_fails_once_is_retried_once_and_the_flash_succeeds(
    monkeypatch: pytest.MonkeyPatch, board: VirtualBoardProcess, firmware_dir: Path
) -> None:
    """Rule 4's 'retried once' on its good side: the board is held in reset for the first
    connection (esptool's sync fails for real) and let go before the second."""
    ctl = control(board)
    ctl.request("hold_reset", hold=True)
    original = Flasher._start
    attempts: list[str] = []

    def start_then_release(self: Flasher, link: object, *, stub: bool) -> object:
        try:
            return original(self, link, stub=stub)  # type: ignore[arg-type]
        except Exception as exc:
            attempts.append(f"failed: {exc}")
            ctl.request("hold_reset", hold=False)  # a person pressing nothing: the rig recovers
            raise
        finally:
            attempts.append("started")

    monkeypatch.setattr(Flasher, "_start", start_then_release)
    report = Flasher(connect_attempts=1).flash(url(board), baseline_files(firmware_dir))
    assert report.attempts == 2, report.summary()
    assert attempts.count("started") == 2 and len([a for a in attempts if a.startswith("failed")]) == 1
    assert "Failed to connect to ESP32-C3" in attempts[0]
    assert any("connection attempt 1: FatalError" in line for line in report.log), report.log[-10:]
    # The retry's connection was a whole one: the files were written and verified on it.
    assert report.verified and "baseline.bin" in names(report, skipped=False)
    again = Flasher().flash(url(board), baseline_files(firmware_dir))
    assert again.attempts == 1 and not again.written  # the flash holds what was written


def test_a_board_held_in_reset_fails_twice_and_the_lent_port_comes_back_open(
    monkeypatch: pytest.MonkeyPatch, board: VirtualBoardProcess, firmware_dir: Path
) -> None:
    ctl = control(board)
    ctl.request("hold_reset", hold=True)
    lent = serial.serial_for_url(url(board), timeout=0.5)
    try:
        started = count_calls(monkeypatch, Flasher, "_start")
        with pytest.raises(FlashInfrastructureError) as info:
            Flasher(connect_attempts=1).flash(lent, baseline_files(firmware_dir))
        assert len(started) == 2 and info.value.attempts == 2
        assert "Failed to connect to ESP32-C3" in str(info.value)
        # esptool closes a port whose sync failed; the lender gets it back as it was.
        assert lent.is_open and type(lent) is serial.rfc2217.Serial and lent.timeout == 0.5

        ctl.request("hold_reset", hold=False)
        report = Flasher().flash(lent, baseline_files(firmware_dir))
        assert report.attempts == 1 and report.port == url(board)
        assert lent.is_open and type(lent) is serial.rfc2217.Serial and lent.timeout == 0.5
        # The lender goes on reading the board's console on the same port.
        lent.timeout = 15
        boot = lent.read_until(b"app_init: App version:      1.0.0")
        assert boot.endswith(b"App version:      1.0.0"), boot[-500:]
    finally:
        lent.close()


def test_provision_writes_the_nvs_image_at_the_nvs_partition(
    pty_board: VirtualBoardProcess,
) -> None:
    provisioning = Provisioning(
        device_id="dev-7", wifi_ssid="hil-lab", wifi_pass="secret", mqtt_uri="mqtt://10.0.0.1"
    )
    config = {"measurement_interval_s": 5}
    flasher = Flasher(before="no-reset")
    report = flasher.provision(url(pty_board), provisioning, config, after="no-reset")
    (nvs,) = report.files
    assert nvs.offset == 0x9000 and nvs.size == 0x4000 and not nvs.skipped
    assert "dev-7" in nvs.name
    image = provisioning_image(provisioning, config)
    stored = flash_file(pty_board).read_bytes()[0x9000:0xD000]
    assert stored == image
    assert read_nvs(stored)["device"]["device_id"] == "dev-7"
    again = flasher.provision(url(pty_board), provisioning, config, after="no-reset")
    assert again.files[0].skipped


def test_erase_flash_leaves_a_blank_chip_that_a_reflash_brings_back(
    board: VirtualBoardProcess, firmware_dir: Path
) -> None:
    ctl = control(board)
    Flasher().flash(url(board), baseline_files(firmware_dir))
    Flasher().erase_flash(url(board))
    assert set(flash_file(board).read_bytes()) == {0xFF}
    report = Flasher().flash(url(board), baseline_files(firmware_dir))
    assert names(report, skipped=False) == {"bootloader.bin", "partition-table.bin", "baseline.bin"}
    ctl.request("wait_mode", mode="app", timeout=15)
    assert ctl.state()["app"]["version"] == "1.0.0"


def test_a_fast_flash_baud_is_taken_in_the_rom_before_the_stub_upload(
    board: VirtualBoardProcess, firmware_dir: Path
) -> None:
    report = Flasher(flash_baud=921600).flash(url(board), baseline_files(firmware_dir), skip_unchanged=False)
    log = "\n".join(report.log)
    assert "Changed." in log and log.index("Changing baud rate to 921600") < log.index("Uploading stub flasher")
    control(board).request("wait_mode", mode="app", timeout=15)
    assert control(board).state()["app"]["version"] == "1.0.0"


def test_the_rfc2217_port_awaits_acknowledgements_without_napping(
    board: VirtualBoardProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pyserial's client sleeps 50 ms before each look for an answer (and 0.3 s after a
    close); the flasher's port is told by its reader thread when the answer came."""
    port = Rfc2217Port()
    port.port = url(board)
    port.open()

    def no_nap(seconds: float) -> None:
        raise AssertionError(f"slept {seconds} s waiting for the server")

    monkeypatch.setattr(serial.rfc2217.time, "sleep", no_nap)
    try:
        for level in (True, False, True, False):
            port.dtr = level
            port.rts = not level
        port.baudrate = 460800
        port.reset_input_buffer()
        assert port.baudrate == 460800
    finally:
        port.close()
    assert not port.is_open
    # The close returned once the server had let go: the next client is served at once
    # (the board, like ser2net, refuses a second client while it still holds the first).
    monkeypatch.undo()
    again = serial.serial_for_url(url(board), timeout=1)
    try:
        again.dtr = False
        assert again.is_open
    finally:
        again.close()
