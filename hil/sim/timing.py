"""Realistic timing for the virtual board (opt-in: ``hil sim board --realistic-timing``).

By default the virtual board answers as fast as the host can copy bytes, which keeps CI
fast but makes a flashing benchmark measure only its fixed costs. With a `ChipTiming`
the board takes the time a devkit takes where flashing spends it:

* the **UART** carries 10 bits per byte (8N1) at the chip's current baud rate, in both
  directions (`PacedLine`): a frame reaches the chip when its last byte would have, and
  a reply reaches the host no earlier than the wire could carry it;
* **SPI NOR** page program, sector/block/chip erase and the flash **MD5** take their
  typical durations (`TimedFlash`); while the chip works it reads no further command
  (`BusyClock`), and its reply leaves when the work is done.

Only download mode (ROM loader and stub) is timed; the app's own flash writes are not.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from hil.sim.flash import SECTOR_SIZE, SpiFlash

BITS_PER_BYTE = 10
"""8N1: a start bit, 8 data bits, a stop bit."""

PAGE_SIZE = 0x100
BLOCK32_SIZE = 0x8000
BLOCK64_SIZE = 0x10000


@dataclass(frozen=True)
class ChipTiming:
    """How long the chip's slow operations take.

    Flash durations are the *typical* values of a 32 Mbit 3 V SPI NOR of the
    W25Q32JV / GD25Q32 class (Winbond W25Q32JV datasheet, "AC Electrical
    Characteristics": tPP 0.4 ms, tSE 45 ms, tBE1 120 ms, tBE2 150 ms, tCE 10 s;
    GigaDevice's GD25Q32 lists the same order: 0.6 ms, 50 ms, 150 ms, 150 ms, 10 s).
    SPEC_FACTS has no timing facts for the flash.

    The MD5 rate is the least certain number: the stub reads flash through the ROM SPI
    routines 4 KiB at a time and hashes in software, and reports range from about
    0.2 MB/s (an ESP32-S3 verifying 7 MB in ~40 s) to a few MB/s; esptool budgets 8 s
    per MB as a timeout (``MD5_TIMEOUT_PER_MB``). 1 MB/s is taken as a middle value.
    """

    page_program_s: float = 0.0004
    sector_erase_s: float = 0.045
    block32_erase_s: float = 0.120
    block64_erase_s: float = 0.150
    chip_erase_s: float = 10.0
    md5_bytes_per_s: float = 1_000_000.0

    def erase_seconds(self, offset: int, length: int, *, flash_size: int | None = None) -> float:
        """Erase of a sector-aligned range: the largest aligned unit at each step (64 KiB
        block, 32 KiB block, 4 KiB sector), as ESP-IDF's and the ROM's erase routines
        do; the whole chip is one chip erase."""
        if flash_size is not None and offset == 0 and length == flash_size:
            return self.chip_erase_s
        seconds = 0.0
        end = offset + length
        while offset < end:
            for size, cost in (
                (BLOCK64_SIZE, self.block64_erase_s),
                (BLOCK32_SIZE, self.block32_erase_s),
                (SECTOR_SIZE, self.sector_erase_s),
            ):
                if offset % size == 0 and offset + size <= end:
                    seconds += cost
                    offset += size
                    break
            else:  # an unaligned tail: the flash can only erase whole sectors
                seconds += self.sector_erase_s
                offset += SECTOR_SIZE - offset % SECTOR_SIZE
        return seconds

    def program_seconds(self, offset: int, length: int) -> float:
        """Page program: one tPP per 256-byte page the data touches."""
        if length <= 0:
            return 0.0
        first = offset // PAGE_SIZE
        last = (offset + length - 1) // PAGE_SIZE
        return (last - first + 1) * self.page_program_s

    def md5_seconds(self, length: int) -> float:
        return length / self.md5_bytes_per_s

    @staticmethod
    def uart_seconds(nbytes: int, baud: int) -> float:
        return nbytes * BITS_PER_BYTE / baud


class BusyClock:
    """When the chip will be done with the work it was given (event-loop time)."""

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now
        self.until = 0.0

    def charge(self, seconds: float) -> None:
        self.until = max(self._now(), self.until) + seconds


class TimedFlash(SpiFlash):
    """A `SpiFlash` whose program, erase and MD5 make the chip busy for their duration.

    It wraps the board's flash (same file, same bytes); only the download session
    uses it, so the app's own writes are not timed.
    """

    def __init__(self, flash: SpiFlash, timing: ChipTiming, busy: BusyClock) -> None:
        # Deliberately not SpiFlash.__init__: this is a view of an open flash, not a new one.
        self.inner = flash
        self.path = flash.path
        self.size = flash.size
        self.jedec_id = flash.jedec_id
        self.timing = timing
        self.busy = busy

    def read(self, offset: int, length: int) -> bytes:
        return self.inner.read(offset, length)

    def write(self, offset: int, data: bytes) -> None:
        self.inner.write(offset, data)
        self.busy.charge(self.timing.program_seconds(offset, len(data)))

    def erase(self, offset: int, length: int) -> None:
        self.inner.erase(offset, length)
        self.busy.charge(self.timing.erase_seconds(offset, length, flash_size=self.size))

    def erase_all(self) -> None:
        self.inner.erase_all()
        self.busy.charge(self.timing.chip_erase_s)

    def md5(self, offset: int, length: int) -> bytes:
        digest = self.inner.md5(offset, length)
        self.busy.charge(self.timing.md5_seconds(length))
        return digest

    def flush(self) -> None:
        self.inner.flush()

    def close(self) -> None:
        """The board owns (and closes) the flash; a view has nothing of its own."""


class PacedLine:
    """One direction of a UART: bytes arrive in order, no faster than ``baud()`` carries
    them at 10 bits per byte, and not before ``hold()`` (the chip busy with earlier work).

    A chunk is delivered whole when its last byte would have arrived: the chip acts on
    whole SLIP frames, and the host reads replies, so finer grain changes nothing.
    """

    def __init__(
        self,
        deliver: Callable[[bytes], None],
        baud: Callable[[], int],
        *,
        hold: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self._deliver = deliver
        self._baud = baud
        self._hold = hold
        self._pending: deque[tuple[float, bytes]] = deque()
        self._free_at = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def put(self, data: bytes, *, not_before: float = 0.0) -> float:
        """Queue ``data``; returns the loop time at which its last byte is on the far side."""
        loop = asyncio.get_running_loop()
        start = max(loop.time(), self._free_at, not_before)
        self._free_at = start + ChipTiming.uart_seconds(len(data), self._baud())
        self._pending.append((self._free_at, data))
        self._schedule(loop)
        return self._free_at

    def clear(self) -> None:
        """Drop what is still on the wire (the far end went away)."""
        self._pending.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is None and self._pending:
            self._timer = loop.call_at(max(self._pending[0][0], self._hold()), self._flush)

    def _flush(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        while self._pending:
            now = loop.time()
            due, data = self._pending[0]
            if due > now or self._hold() > now:
                break
            self._pending.popleft()
            self._deliver(data)
        self._schedule(loop)
