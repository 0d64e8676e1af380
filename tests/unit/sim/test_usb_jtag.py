"""The virtual board's USB-Serial-JTAG personality in-process: the peripheral's reading of
DTR/RTS, the boot mode and reset cause it gives, output held while no host reads, and a
port that leaves the bus and comes back on the same TCP port."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from hil.rig.model import USB_REENUMERATION_S
from hil.sim.board import Board, Mode
from hil.sim.flash import SpiFlash
from hil.sim.registers import ChipIdentity, parse_mac
from hil.sim.uart import ModemLines, Rfc2217Server
from hil.sim.usb_jtag import REENUMERATION_S, UsbResetDecoder

MAC = parse_mac("58:cf:79:01:02:03")

# (DTR, RTS) as each pyserial write leaves them, from esp_pylib's sequences (esptool 5.6):
# every RTS write is followed by a write of DTR as it is.
USB_RESET = [(False, False), (False, False), (True, False), (True, False), (True, True), (True, True),
             (False, True), (False, True), (False, True), (False, False), (False, False)]  # fmt: skip
CLASSIC_RESET = [(False, False), (False, True), (False, True), (True, True), (True, False), (True, False),
                 (False, False)]  # fmt: skip
HARD_RESET = [(False, True), (False, True), (False, False), (False, False)]


def decode(changes: list[tuple[bool, bool]], start: tuple[bool, bool] = (True, True)) -> list[tuple[bool, bool]]:
    """Each reset the decoder asserted, as (download, still held at the end)."""
    decoder = UsbResetDecoder()
    decoder.lines(*start)
    resets = []
    for dtr, rts in changes:
        was = decoder.in_reset
        decoder.lines(dtr, rts)
        if decoder.in_reset and not was:
            resets.append(decoder.reset_download)
    return [(download, decoder.in_reset) for download in resets]


def test_esptool_s_usb_reset_resets_into_download_mode() -> None:
    assert decode(USB_RESET) == [(True, False)]


@pytest.mark.parametrize("start", [(False, False), (True, True)], ids=["lines-released", "lines-raised-at-open"])
def test_the_classic_pulse_and_the_hard_reset_reset_into_the_app(start: tuple[bool, bool]) -> None:
    assert decode(CLASSIC_RESET, start) == [(False, False)]
    assert decode(HARD_RESET, start) == [(False, False)]


def test_a_power_cut_forgets_an_armed_download() -> None:
    decoder = UsbResetDecoder()
    decoder.lines(True, False)
    decoder.power_lost()
    decoder.lines(False, True)
    assert decoder.in_reset and not decoder.reset_download


def test_the_virtual_board_re_enumerates_in_the_time_a_usb_jtag_rig_declares_by_default() -> None:
    assert REENUMERATION_S == USB_REENUMERATION_S


def board_run(tmp_path: Path, scenario: Callable[[Board, bytearray], Awaitable[None]], *, usb_jtag: bool = True) -> bytearray:
    out = bytearray()

    class Idle:
        async def run(self, ctx: object) -> None:
            await asyncio.Event().wait()

    async def main() -> None:
        board = Board(
            flash=SpiFlash(tmp_path / "flash.bin"),
            identity=ChipIdentity(mac=MAC),
            app_factory=lambda behaviour: Idle(),
            usb_jtag=usb_jtag,
        )
        board.attach_uart(out.extend)
        try:
            await scenario(board, out)
        finally:
            await board.close()

    asyncio.run(main())
    return out


async def lines(board: Board, changes: list[tuple[bool, bool]]) -> None:
    for dtr, rts in changes:
        board.set_host_lines(dtr, rts)
        await asyncio.sleep(0)


def test_the_board_enters_its_rom_loader_on_usb_reset_with_the_usb_reset_cause(tmp_path: Path) -> None:
    async def scenario(board: Board, out: bytearray) -> None:
        board.power(True)
        await board.wait_for(lambda: board.mode is not Mode.OFF and board.boots == 1, timeout=2)
        await lines(board, [(True, True), *USB_RESET])
        await board.wait_for(lambda: board.mode is Mode.DOWNLOAD, timeout=2)
        assert board.state()["reset_reason"] == "USB_UART_CHIP_RESET"
        assert board.state()["personality"] == "usb-jtag"

    out = board_run(tmp_path, scenario)
    assert b"rst:0x15 (USB_UART_CHIP_RESET),boot:0x5 (DOWNLOAD(USB/UART0/1))" in out


def test_the_classic_pulse_boots_the_app_on_usb_jtag_but_the_rom_loader_on_a_devkit(tmp_path: Path) -> None:
    entered_download: dict[bool, bool] = {}

    def scenario_for(usb_jtag: bool) -> Callable[[Board, bytearray], Awaitable[None]]:
        async def scenario(board: Board, out: bytearray) -> None:
            board.power(True)
            await board.wait_for(lambda: board.boots == 1, timeout=2)
            since = board.tx_total
            # ClassicReset with its long delay: GPIO9 is still low when a devkit latches it.
            await lines(board, CLASSIC_RESET[:-1])
            await asyncio.sleep(0.55)
            board.set_host_lines(False, False)
            await board.wait_tx(re.compile(rb"boot:0x[0-9a-f]+").search, since, timeout=2)
            entered_download[usb_jtag] = board.mode is Mode.DOWNLOAD

        return scenario

    usb = board_run(tmp_path, scenario_for(True))
    board_run(tmp_path, scenario_for(False), usb_jtag=False)
    assert entered_download == {True: False, False: True}
    assert b"rst:0x15 (USB_UART_CHIP_RESET),boot:0xc (SPI_FAST_FLASH_BOOT)" in usb


def test_held_output_is_bounded_keeps_the_first_bytes_and_counts_the_rest() -> None:
    async def main() -> None:
        server = Rfc2217Server(lambda data: None, lambda dtr, rts: None, hold_bytes=10)
        server.send(b"0123456")
        server.send(b"789abc")
        assert (server.held, server.dropped) == (10, 3)
        dropping = Rfc2217Server(lambda data: None, lambda dtr, rts: None)  # a UART: nothing kept
        dropping.send(b"0123")
        assert dropping.held == 0

    asyncio.run(main())


def test_the_port_leaves_the_bus_refusing_connections_and_comes_back_on_the_same_port() -> None:
    async def main() -> None:
        server = Rfc2217Server(lambda data: None, lambda dtr, rts: None, hold_bytes=64)
        await server.start()
        port = server.port
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await server.set_present(False)
            assert not server.present and server.departures == 1
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection("127.0.0.1", port)
            # Nobody else can take the port while the device is away.
            other = socket.socket()
            with pytest.raises(OSError):
                other.bind(("127.0.0.1", port))
            other.close()
            await server.set_present(True)
            assert server.present and server.port == port
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
        finally:
            await server.close()

    asyncio.run(main())


def test_lines_a_client_sets_while_opening_reach_the_board_as_one_change() -> None:
    """pyserial's RFC 2217 open raises DTR, then RTS: one at a time, DTR-without-RTS would
    arm download mode; a host's driver raises both in one request."""
    seen: list[tuple[bool, bool]] = []
    lines = ModemLines(lambda dtr, rts: seen.append((dtr, rts)), together_at_open=True)
    lines.dtr = True
    lines.rts = True
    assert seen == []
    lines.reset_output_buffer()  # pyserial's last step of open
    lines.rts = False
    assert seen == [(True, True), (True, False)]
    devkit: list[tuple[bool, bool]] = []
    wired = ModemLines(lambda dtr, rts: devkit.append((dtr, rts)))  # a UART bridge: wires, as they come
    wired.dtr = True
    assert devkit == [(True, False)]
