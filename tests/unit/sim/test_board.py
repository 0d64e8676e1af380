"""The devkit model in-process: the auto-reset circuit, strapping, reset reasons, boot."""

from __future__ import annotations

import asyncio
import itertools
import re
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from hil.firmware.catalog import build_images, load_recipes
from hil.sim.app import AppContext, AppModel
from hil.sim.board import STRAP_LATCH_DELAY_S, Board, Mode
from hil.sim.control import ControlServer
from hil.sim.flash import SpiFlash
from hil.sim.registers import ChipIdentity, parse_mac
from hil.sim.resets import ResetCause, RomResetCode
from hil.sim.slip import slip_encode

MAC = parse_mac("58:cf:79:01:02:03")


class RestartingApp:
    """Restarts once with a hint, to check the reset-reason plumbing."""

    runs: list[AppContext]

    def __init__(self) -> None:
        self.runs = []

    async def run(self, ctx: AppContext) -> None:
        self.runs.append(ctx)
        if len(self.runs) == 1:
            ctx.restart(ResetCause(RomResetCode.RTC_SW_CPU_RST, hint="TASK_WDT"))
        await asyncio.Event().wait()


@pytest.fixture(scope="module")
def firmware(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fw")
    build_images(load_recipes(), ["baseline"], out)
    return out


def flashed(tmp_path: Path, firmware: Path) -> SpiFlash:
    flash = SpiFlash(tmp_path / "flash.bin")
    for line in (firmware / "flash_args").read_text().splitlines()[1:]:
        offset, name = line.split()
        flash.write(int(offset, 16), (firmware / name).read_bytes())
    return flash


def run(
    scenario: Callable[[Board, bytearray], Awaitable[None]],
    flash: SpiFlash,
    app: AppModel | None = None,
) -> bytearray:
    out = bytearray()

    async def main() -> None:
        model = app
        board = Board(
            flash=flash,
            identity=ChipIdentity(mac=MAC),
            app_factory=lambda behaviour: model if model is not None else _Idle(),
        )
        board.attach_uart(out.extend)
        try:
            await scenario(board, out)
        finally:
            await board.close()

    asyncio.run(main())
    return out


class _Idle:
    async def run(self, ctx: AppContext) -> None:
        await asyncio.Event().wait()


async def set_lines(board: Board, *changes: tuple[bool, bool]) -> None:
    for dtr, rts in changes:
        board.set_host_lines(dtr, rts)
        await asyncio.sleep(0)


def test_power_on_boots_the_baseline(tmp_path: Path, firmware: Path) -> None:
    async def scenario(board: Board, out: bytearray) -> None:
        board.power(True)
        await board.wait_for(lambda: board.mode is Mode.APP, timeout=5)
        assert board.state()["app"]["version"] == "1.0.0"
        assert board.state()["idf_reset_reason"] == "POWERON"

    out = run(scenario, flashed(tmp_path, firmware)).decode()
    assert out.startswith("ESP-ROM:esp32c3-api1-20210207\r\nBuild:Feb  7 2021\r\n")
    assert "rst:0x1 (POWERON),boot:0xc (SPI_FAST_FLASH_BOOT)\r\n" in out
    assert "Saved PC" not in out  # omitted after POWERON
    assert re.search(r"load:0x3fcd5820,len:0x[0-9a-f]+\r\n", out)
    assert re.search(r"I \(\d+\) app_init: Project name:     env-monitor\r\n", out)
    assert re.search(r"I \(\d+\) main_task: Calling app_main\(\)", out)


def test_classic_reset_over_rfc2217_enters_download_mode(tmp_path: Path, firmware: Path) -> None:
    """esptool's ClassicReset passes through (T,T) before GPIO9 goes low; the RC latch
    delay still samples GPIO9 low."""

    async def scenario(board: Board, out: bytearray) -> None:
        board.power(True)
        await board.wait_for(lambda: board.mode is Mode.APP, timeout=5)
        del out[:]
        await set_lines(board, (False, False), (False, True))  # EN low
        assert board.mode is Mode.RESET
        await set_lines(board, (True, True), (True, False))  # EN high, then GPIO9 low
        await board.wait_for(lambda: board.mode is Mode.DOWNLOAD, timeout=1)
        await asyncio.sleep(STRAP_LATCH_DELAY_S)
        await set_lines(board, (False, False))

    out = run(scenario, flashed(tmp_path, firmware)).decode()
    assert "rst:0x1 (POWERON),boot:0x5 (DOWNLOAD(USB/UART0/1))\r\nwaiting for download\r\n" in out


def test_software_reset_keeps_the_latched_boot_mode(tmp_path: Path, firmware: Path) -> None:
    """A stub's FLASH_END(0) reboot (esptool --after no-reset) must not boot the app
    just because the host has released DTR: strapping is latched at chip reset only."""

    async def scenario(board: Board, out: bytearray) -> None:
        board.power(True)
        await board.wait_for(lambda: board.mode is Mode.APP, timeout=5)
        await set_lines(board, (False, True), (True, True), (True, False))
        await board.wait_for(lambda: board.mode is Mode.DOWNLOAD, timeout=1)
        await set_lines(board, (False, False))
        board.restart(ResetCause(RomResetCode.RTC_SW_SYS_RST))
        await board.wait_for(lambda: board.boots == 3 and board.mode is not Mode.BOOTING, timeout=1)
        assert board.mode is Mode.DOWNLOAD
        board.restart(ResetCause(RomResetCode.RTCWDT_RTC_RST))  # an RTC reset re-latches
        await board.wait_for(lambda: board.mode is Mode.APP, timeout=5)

    out = run(scenario, flashed(tmp_path, firmware)).decode()
    assert "rst:0x3 (RTC_SW_SYS_RST),boot:0x5 (DOWNLOAD(USB/UART0/1))" in out
    assert "rst:0x10 (RTCWDT_RTC_RST),boot:0xc (SPI_FAST_FLASH_BOOT)" in out


def test_hard_reset_boots_from_flash(tmp_path: Path, firmware: Path) -> None:
    async def scenario(board: Board, out: bytearray) -> None:
        board.power(True)
        await board.wait_for(lambda: board.mode is Mode.APP, timeout=5)
        await set_lines(board, (False, True))
        await set_lines(board, (False, False))
        await board.wait_for(lambda: board.mode is Mode.APP and board.boots == 2, timeout=5)

    out = run(scenario, flashed(tmp_path, firmware)).decode()
    assert out.count("boot:0xc (SPI_FAST_FLASH_BOOT)") == 2


def test_software_reset_hint_reaches_the_next_boot(tmp_path: Path, firmware: Path) -> None:
    app = RestartingApp()

    async def scenario(board: Board, out: bytearray) -> None:
        board.power(True)
        await board.wait_for(lambda: len(app.runs) == 2 and board.mode is Mode.APP, timeout=5)

    out = run(scenario, flashed(tmp_path, firmware), app).decode()
    assert "rst:0xc (RTC_SW_CPU_RST),boot:0xc (SPI_FAST_FLASH_BOOT)\r\nSaved PC:0x" in out
    assert app.runs[0].reset_cause.idf_reason == "POWERON"
    assert app.runs[1].reset_cause.idf_reason == "TASK_WDT"


def test_brownout_restarts_the_app_with_the_brownout_reason(tmp_path: Path, firmware: Path) -> None:
    app = RecordingApp()

    async def scenario(board: Board, out: bytearray) -> None:
        board.power(True)
        await board.wait_for(lambda: board.mode is Mode.APP, timeout=5)
        board.brownout()
        await board.wait_for(lambda: len(app.runs) == 2 and board.mode is Mode.APP, timeout=5)

    out = run(scenario, flashed(tmp_path, firmware), app).decode()
    assert "Brownout detector was triggered" in out
    assert app.runs[1].reset_cause.idf_reason == "BROWNOUT"


class RecordingApp:
    def __init__(self) -> None:
        self.runs: list[AppContext] = []

    async def run(self, ctx: AppContext) -> None:
        self.runs.append(ctx)
        await asyncio.Event().wait()


def test_power_off_stops_everything_and_keeps_flash(tmp_path: Path, firmware: Path) -> None:
    async def scenario(board: Board, out: bytearray) -> None:
        board.power(True)
        await board.wait_for(lambda: board.mode is Mode.APP, timeout=5)
        board.power(False)
        assert board.mode is Mode.OFF
        assert board.state()["app"] is None
        del out[:]
        board.power(True)
        await board.wait_for(lambda: board.mode is Mode.APP, timeout=5)

    flash = flashed(tmp_path, firmware)
    out = run(scenario, flash).decode()
    assert "rst:0x1 (POWERON)" in out


def test_control_endpoint_rejects_bad_requests(tmp_path: Path) -> None:
    async def scenario(board: Board, out: bytearray) -> None:
        control = ControlServer(board)
        assert (await control.handle_line(b"nonsense"))["ok"] is False
        reply = await control.handle_line(b'{"cmd":"fly"}')
        assert reply["ok"] is False and "known:" in reply["error"]
        reply = await control.handle_line(b'{"cmd":"power","action":"sideways"}')
        assert reply == {"ok": False, "error": 'power needs "action": "on", "off" or "cycle"'}
        reply = await control.handle_line(b'{"cmd":"state"}')
        assert reply["ok"] is True and reply["state"]["powered"] is False
        reply = await control.handle_line(b'{"cmd":"wait_tx","pattern":"never","timeout":0.05}')
        assert reply["ok"] is False and "no match" in reply["error"]

    run(scenario, SpiFlash(tmp_path / "flash.bin"))


# -- the boot log's clock and the flash chip's name -----------------------------------
_STAMP = re.compile(r"^[IWE] \((\d+)\) ([\w.]+): (.*)$")


def _stamps(out: str) -> list[tuple[int, str, str]]:
    return [(int(m[1]), m[2], m[3]) for line in out.splitlines() if (m := _STAMP.match(line))]


def test_boot_log_timestamps_run_like_a_board(tmp_path: Path, firmware: Path) -> None:
    """The ROM banner and the bootloader's lines go out through UART0 at 115200 Bd, so the
    bootloader starts ~24 ms after reset and its table rows are ~6 ms apart (SPEC_FACTS
    §5); the same on every run, however busy the host."""

    async def scenario(board: Board, out: bytearray) -> None:
        board.power(True)
        await board.wait_for(lambda: board.mode is Mode.APP, timeout=5)

    first = _stamps(run(scenario, flashed(tmp_path, firmware)).decode())
    boot = [(ms, msg) for ms, tag, msg in first if tag.startswith("boot")]
    assert 18 <= boot[0][0] <= 30, boot[0]
    rows = [ms for ms, msg in boot if re.match(r" \d ", msg)]
    assert len(rows) == 6 and all(4 <= b - a <= 9 for a, b in itertools.pairwise(rows)), rows
    loaded = next(ms for ms, msg in boot if msg.startswith("Loaded app"))
    app_start = next(ms for ms, tag, _ in first if tag == "cpu_start")
    assert 100 <= loaded < app_start <= loaded + 30
    ms = [ms for ms, _, _ in first]
    assert ms == sorted(ms) and ms[-1] > ms[0]
    assert ("spi_flash", "detected chip: gd") in [(tag, msg) for _, tag, msg in first]

    (tmp_path / "again").mkdir()
    second = _stamps(run(scenario, flashed(tmp_path / "again", firmware)).decode())
    until_app = next(i for i, (_, tag, _) in enumerate(first) if tag == "main_task")
    assert [s[0] for s in second[:until_app]] == [s[0] for s in first[:until_app]]


# -- esptool --after watchdog-reset ---------------------------------------------------
_WDT_ARM = [(0x600080A8, 0x50D83AA1), (0x60008094, 2000), (0x60008090, 1 << 31 | 5 << 28 | 1 << 8 | 2)]
_WDT_LOCK = (0x600080A8, 0)


def _write_reg(addr: int, value: int) -> bytes:
    payload = struct.pack("<IIII", addr, value, 0xFFFFFFFF, 0)
    return slip_encode(struct.pack("<BBHI", 0, 0x09, len(payload), 0) + payload)


async def _into_download(board: Board) -> None:
    board.power(True)
    await board.wait_for(lambda: board.mode is not Mode.OFF, timeout=1)
    await board.pulse_reset(download=True)
    await board.wait_for(lambda: board.mode is Mode.DOWNLOAD, timeout=1)


@pytest.mark.parametrize("host_delay_s", [0.001, 0.08])
def test_watchdog_reset_answers_the_relock_before_resetting(tmp_path: Path, firmware: Path, host_delay_s: float) -> None:
    """esptool arms the RTC WDT, then re-locks it and expects that reply too. Quick
    hosts see the reset when the 2000-cycle hold (~14.7 ms) is up; slow hosts (RFC 2217
    on a busy machine) still get the reply to the re-lock first, then the reset."""
    marks: dict[str, int] = {}

    async def scenario(board: Board, out: bytearray) -> None:
        await _into_download(board)
        del out[:]
        boots = board.boots
        loop = asyncio.get_running_loop()
        for addr, value in _WDT_ARM:
            board.uart_rx(_write_reg(addr, value))
        armed = loop.time()
        await asyncio.sleep(host_delay_s)
        assert board.boots == boots, "reset before the host's re-lock write"
        board.uart_rx(_write_reg(*_WDT_LOCK))
        marks["replies"] = out.count(b"\xc0\x01\x09")
        await board.wait_for(lambda: board.boots > boots, timeout=1)
        assert loop.time() - armed >= 0.014
        await board.wait_for(lambda: board.mode is Mode.APP, timeout=5)

    out = run(scenario, flashed(tmp_path, firmware))
    assert marks["replies"] == 4
    banner = out.index(b"ESP-ROM:")
    assert out[:banner].count(b"\xc0\x01\x09") == 4  # every reply went out before the reset
    assert b"rst:0x10 (RTCWDT_RTC_RST),boot:0xc (SPI_FAST_FLASH_BOOT)" in out


def test_watchdog_armed_and_never_relocked_still_resets(tmp_path: Path, firmware: Path) -> None:
    async def scenario(board: Board, out: bytearray) -> None:
        await _into_download(board)
        boots = board.boots
        for addr, value in _WDT_ARM:
            board.uart_rx(_write_reg(addr, value))
        await board.wait_for(lambda: board.boots > boots, timeout=1)
        assert board.last_cause is not None and board.last_cause.code is RomResetCode.RTCWDT_RTC_RST

    run(scenario, flashed(tmp_path, firmware))


def test_a_reset_in_between_disarms_the_watchdog(tmp_path: Path, firmware: Path) -> None:
    async def scenario(board: Board, out: bytearray) -> None:
        await _into_download(board)
        for addr, value in _WDT_ARM:
            board.uart_rx(_write_reg(addr, value))
        await board.pulse_reset()  # EN pulled: the chip (and its RTC WDT) starts afresh
        await board.wait_for(lambda: board.mode is Mode.APP, timeout=5)
        boots = board.boots
        await asyncio.sleep(0.4)
        assert board.boots == boots

    run(scenario, flashed(tmp_path, firmware))
