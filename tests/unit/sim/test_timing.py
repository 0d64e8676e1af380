"""The virtual board's opt-in real-chip timing: NOR durations, a paced UART, a busy chip.

Durations are checked against a monotonic clock: a modelled operation must take at
least its modelled time, and without the option nothing may be paced at all."""

from __future__ import annotations

import asyncio
import struct
import time
from pathlib import Path

import pytest

from hil.sim.board import Board, Mode
from hil.sim.flash import SpiFlash
from hil.sim.registers import ChipIdentity, parse_mac
from hil.sim.slip import SlipDecoder, slip_encode
from hil.sim.timing import BusyClock, ChipTiming, PacedLine, TimedFlash

TIMING = ChipTiming()
FLASH_BEGIN = 0x02


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("offset", "length", "expected"),
    [
        (0x0, 0x1000, TIMING.sector_erase_s),
        (0x10000, 0x10000, TIMING.block64_erase_s),
        (0x8000, 0x8000, TIMING.block32_erase_s),
        # 7 sectors up to 0x8000, a 32 KiB block to 0x10000, then one sector
        (0x1000, 0x10000, 7 * TIMING.sector_erase_s + TIMING.block32_erase_s + TIMING.sector_erase_s),
        (0x10000, 0x20000 + 0x3000, 2 * TIMING.block64_erase_s + 3 * TIMING.sector_erase_s),
    ],
)
def test_an_erase_is_the_largest_aligned_units_it_can_use(offset: int, length: int, expected: float) -> None:
    assert TIMING.erase_seconds(offset, length) == pytest.approx(expected)


def test_erasing_the_whole_chip_is_one_chip_erase() -> None:
    size = 4 * 1024 * 1024
    assert TIMING.erase_seconds(0, size, flash_size=size) == TIMING.chip_erase_s
    assert TIMING.erase_seconds(0, size) == pytest.approx(64 * TIMING.block64_erase_s)


@pytest.mark.parametrize(
    ("offset", "length", "pages"), [(0, 256, 1), (0, 257, 2), (255, 2, 2), (0x10000, 0x10000, 256), (7, 0, 0)]
)
def test_programming_costs_one_page_time_per_page_touched(offset: int, length: int, pages: int) -> None:
    assert TIMING.program_seconds(offset, length) == pytest.approx(pages * TIMING.page_program_s)


def test_the_uart_carries_ten_bits_per_byte() -> None:
    assert ChipTiming.uart_seconds(11520, 115200) == pytest.approx(1.0)
    assert ChipTiming.uart_seconds(46080, 460800) == pytest.approx(1.0)


def test_the_timed_flash_charges_the_chip_and_changes_nothing_else(tmp_path: Path) -> None:
    clock = FakeClock()
    busy = BusyClock(clock)
    with SpiFlash(tmp_path / "flash.bin") as flash:
        timed = TimedFlash(flash, TIMING, busy)
        timed.erase(0x10000, 0x10000)
        assert busy.until == pytest.approx(100.0 + TIMING.block64_erase_s)
        timed.write(0x10000, b"\x00" * 512)
        assert busy.until == pytest.approx(100.0 + TIMING.block64_erase_s + 2 * TIMING.page_program_s)
        clock.now = 200.0  # idle since: the next work starts now, not at the old deadline
        assert timed.md5(0, 0x100000) == flash.md5(0, 0x100000)
        assert busy.until == pytest.approx(200.0 + 0x100000 / TIMING.md5_bytes_per_s)
        assert timed.read(0x10000, 4) == b"\x00" * 4 and timed.size == flash.size
        timed.close()  # a view: the board's flash stays open
        assert flash.read(0x10000, 1) == b"\x00"


def test_a_paced_line_delivers_in_order_no_faster_than_the_baud_rate() -> None:
    arrivals: list[tuple[float, bytes]] = []

    async def main() -> float:
        line = PacedLine(lambda data: arrivals.append((time.monotonic(), data)), lambda: 115200)
        started = time.monotonic()
        for chunk in (b"a" * 1152, b"b" * 1152, b"c"):
            line.put(chunk)
        while len(arrivals) < 3:
            await asyncio.sleep(0.01)
        return started

    started = asyncio.run(main())
    assert [data[:1] for _, data in arrivals] == [b"a", b"b", b"c"]
    assert arrivals[0][0] - started >= 0.1  # 1152 bytes at 115200 Bd
    assert arrivals[1][0] - started >= 0.2  # the second waits for the first on the wire


def test_a_paced_line_holds_delivery_while_the_chip_is_busy() -> None:
    arrivals: list[float] = []

    async def main() -> float:
        loop = asyncio.get_running_loop()
        started = time.monotonic()  # before the hold is set: it runs 0.3 s from here at the latest
        busy_until = loop.time() + 0.3
        line = PacedLine(lambda data: arrivals.append(time.monotonic()), lambda: 1_000_000, hold=lambda: busy_until)
        line.put(b"x")
        while not arrivals:
            await asyncio.sleep(0.01)
        return started

    started = asyncio.run(main())
    # asyncio runs a timer up to its clock resolution early: allow that, nothing more.
    assert arrivals[0] - started >= 0.3 - 0.005


def erase_64k_in_download_mode(tmp_path: Path, timing: ChipTiming | None) -> tuple[float, bytes]:
    """ROM FLASH_BEGIN of 64 KiB at 0x10000 (the ROM erases there); the seconds from the
    command leaving the host to its whole reply arriving, and the reply."""
    received = bytearray()
    decoder = SlipDecoder()
    frames: list[bytes] = []

    async def main() -> float:
        with SpiFlash(tmp_path / "flash.bin") as flash:
            flash.write(0x10000, b"\x00" * 16)
            board = Board(
                flash=flash,
                identity=ChipIdentity(mac=parse_mac("58:cf:79:01:02:03")),
                app_factory=lambda behaviour: None,  # type: ignore[arg-type,return-value]
                timing=timing,
            )
            board.attach_uart(lambda data: (received.extend(data), frames.extend(decoder.feed(data))))
            board.power(True)
            try:
                await board.pulse_reset(download=True)
                await board.wait_for(lambda: board.mode is Mode.DOWNLOAD, timeout=5)
                while b"waiting for download\r\n" not in received:  # the banner, off the wire
                    await asyncio.sleep(0.005)
                payload = struct.pack("<IIIII", 0x10000, 64, 0x400, 0x10000, 0)
                started = time.monotonic()
                board.uart_rx(slip_encode(struct.pack("<BBHI", 0, FLASH_BEGIN, len(payload), 0) + payload))
                while not frames:
                    await asyncio.sleep(0.005)
                elapsed = time.monotonic() - started
                assert flash.read(0x10000, 16) == b"\xff" * 16  # erased
                return elapsed
            finally:
                await board.close()

    return asyncio.run(main()), frames[0]


def test_a_64k_erase_takes_at_least_its_modelled_time(tmp_path: Path) -> None:
    elapsed, reply = erase_64k_in_download_mode(tmp_path, TIMING)
    assert reply[:2] == b"\x01\x02"  # the FLASH_BEGIN response
    command_on_wire = ChipTiming.uart_seconds(8 + 20 + 2, 115200)
    reply_on_wire = ChipTiming.uart_seconds(len(slip_encode(reply)), 115200)
    assert elapsed >= TIMING.block64_erase_s + command_on_wire + reply_on_wire


def test_without_realistic_timing_nothing_is_paced(tmp_path: Path) -> None:
    elapsed, reply = erase_64k_in_download_mode(tmp_path, None)
    assert reply[:2] == b"\x01\x02"
    assert elapsed < TIMING.block64_erase_s / 3  # answered at once: no erase time, no wire time
