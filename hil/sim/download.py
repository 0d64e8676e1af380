"""ESP32-C3 UART download mode: the ROM loader and the flasher stub, transport-free.

A `DownloadSession` is what the chip runs while it is strapped into download mode.
The board feeds it the raw bytes the host sent; it answers through ``send`` with
SLIP frames only (esptool's reader fails on any stray byte, SPEC_FACTS §1.1) and
reports what changes the board itself (baud rate, leaving download mode) through
``on_event``.

Two dialects share the command set (SPEC_FACTS §1.2):

* the **ROM loader**: 4 status bytes ``status, error, 0, 0``, SYNC value ≠ 0,
  MD5 as 32 ASCII hex digits, 1 KiB flash blocks, erase on FLASH_BEGIN;
* the **flasher stub** esptool 5.6.0 uploads by default for the C3, esp-flasher-stub
  ("stub v2", esptool ``targets/stub_flasher/2``, preferred by
  ``StubFlasher.STUB_SUBDIRS = ["2", "1"]``): 2 status bytes holding a big-endian
  u16 code (esptool decodes them with ``struct.unpack(">H")`` in
  ``util.FatalError.WithResult``), SYNC value 0, raw MD5, 16 KiB blocks, and the
  stub-only erase/read commands.

Every command is handled synchronously inside `DownloadSession.feed`; the flash is
programmed before the reply goes out, so a reply always means "done".
"""

from __future__ import annotations

import hashlib
import logging
import struct
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from hil.sim.flash import SECTOR_SIZE, SpiFlash
from hil.sim.registers import RegisterSpace
from hil.sim.slip import SlipDecoder, slip_encode

_log = logging.getLogger(__name__)


class Op(IntEnum):
    """Command opcodes of the ROM loader and the stub (esptool ``ESP_CMDS``)."""

    FLASH_BEGIN = 0x02
    FLASH_DATA = 0x03
    FLASH_END = 0x04
    MEM_BEGIN = 0x05
    MEM_END = 0x06
    MEM_DATA = 0x07
    SYNC = 0x08
    WRITE_REG = 0x09
    READ_REG = 0x0A
    SPI_SET_PARAMS = 0x0B
    SPI_ATTACH = 0x0D
    READ_FLASH_SLOW = 0x0E
    CHANGE_BAUDRATE = 0x0F
    FLASH_DEFL_BEGIN = 0x10
    FLASH_DEFL_DATA = 0x11
    FLASH_DEFL_END = 0x12
    SPI_FLASH_MD5 = 0x13
    GET_SECURITY_INFO = 0x14
    ERASE_FLASH = 0xD0
    ERASE_REGION = 0xD1
    READ_FLASH = 0xD2
    RUN_USER_CODE = 0xD3


@dataclass(frozen=True)
class BaudRateChanged:
    """CHANGE_BAUDRATE was acknowledged at the old rate; switch the UART to ``baud``."""

    baud: int


@dataclass(frozen=True)
class RunUserCode:
    """Leave download mode and boot the app from flash without a reset."""


@dataclass(frozen=True)
class Reboot:
    """Software reset requested (FLASH_END with flag 0)."""


DownloadEvent = BaudRateChanged | RunUserCode | Reboot

SYNC_PAYLOAD = b"\x07\x07\x12\x20" + 32 * b"\x55"
ROM_SYNC_VALUE = 0x20120707
"""The ROM's SYNC reply ``value`` (esptool only checks it is non-zero: stub vs ROM)."""
STUB_GREETING = b"OHAI"
"""The unsolicited frame the stub sends once it runs (esptool ``run_stub``)."""
ROM_DEFAULT_FLASH_SIZE = 2 * 1024 * 1024
"""The ROM assumes 2 MB until SPI_SET_PARAMS (esptool cmds.py ``erase_region`` comment)."""
STUB_MAX_READ_PACKET = 4096

_HEADER = struct.Struct("<BBHI")
_DATA_HEADER = struct.Struct("<IIII")
_CHECKSUM_SEED = 0xEF

# RAM esptool may load into (esptool targets/esp32c3.py MEMORY_MAP: DRAM, IRAM, RTC).
_RAM_REGIONS = (
    (0x3FC80000, 0x3FCE0000),
    (0x4037C000, 0x403E0000),
    (0x50000000, 0x50002000),
)


@dataclass(frozen=True)
class _Failure:
    """A reason a command failed, as the ROM (error byte) and the stub (u16 code) say it."""

    rom: int
    stub: int


_BAD_FORMAT = _Failure(0x05, 0xC000)
_NOT_ENOUGH_DATA = _Failure(0x05, 0xC800)
_TOO_MUCH_DATA = _Failure(0x05, 0xC900)
_NOT_IN_FLASH_MODE = _Failure(0x06, 0xC600)
_BAD_CHECKSUM = _Failure(0x07, 0xC100)
_FLASH_WRITE_FAILED = _Failure(0x08, 0xC400)
_FLASH_READ_FAILED = _Failure(0x09, 0xC400)
_BAD_READ_LENGTH = _Failure(0x0A, 0xC000)
_INFLATE_FAILED = _Failure(0x0B, 0xC700)
_BAD_RAM_SIZE = _Failure(0x0E, 0xC900)
_BAD_RAM_ADDRESS = _Failure(0x0F, 0xC000)
_INVALID_COMMAND = _Failure(0x05, 0xC300)


MAX_FRAME_BYTES = 8 + 16 + 0x4000 + 0x400
"""The longest request frame the loaders take: a command header, a data header and the
stub's 16 KiB write block (esptool's FLASH_WRITE_SIZE for the stub; the ROM's is 1 KiB),
with a margin. Neither the ROM nor the stub has room for more; a longer frame is refused
with the ROM's "invalid message" error and its bytes are not kept."""
BAUD_RANGE = (300, 5_000_000)
"""Rates the C3's UART can be set to: its 80 MHz clock divided by at least 16."""


class _CommandError(Exception):
    def __init__(self, failure: _Failure, reason: str) -> None:
        super().__init__(reason)
        self.failure = failure


@dataclass(frozen=True)
class _Reply:
    value: int = 0
    data: bytes = b""


@dataclass
class _FlashTransfer:
    """One FLASH_BEGIN / FLASH_DEFL_BEGIN transaction in progress."""

    cursor: int
    remaining: int
    inflater: zlib._Decompress | None
    next_seq: int = 0


@dataclass
class _RamSegment:
    addr: int
    data: bytearray
    filled: int = 0
    next_seq: int = 0

    def contains(self, addr: int) -> bool:
        return self.addr <= addr < self.addr + len(self.data)


class _Chip:
    """What both loaders act on, and how they talk back."""

    def __init__(
        self,
        flash: SpiFlash,
        registers: RegisterSpace,
        send: Callable[[bytes], None],
        on_event: Callable[[DownloadEvent], None],
    ) -> None:
        self.flash = flash
        self.registers = registers
        self.send = send
        self.on_event = on_event

    def send_frame(self, payload: bytes) -> None:
        self.send(slip_encode(payload))


_Handler = Callable[[bytes, int], _Reply | None]


class _Loader(ABC):
    """Command dispatch and the behaviour the ROM loader and the stub share."""

    def __init__(self, chip: _Chip) -> None:
        self._chip = chip
        self._transfer: _FlashTransfer | None = None
        self._ram: list[_RamSegment] = []
        self._after_reply: list[Callable[[], None]] = []
        self.left_download_mode = False
        self._handlers: dict[int, _Handler] = {
            Op.SYNC: self._sync,
            Op.READ_REG: self._read_reg,
            Op.WRITE_REG: self._write_reg,
            Op.GET_SECURITY_INFO: self._security_info,
            Op.SPI_ATTACH: self._spi_attach,
            Op.SPI_SET_PARAMS: self._spi_set_params,
            Op.CHANGE_BAUDRATE: self._change_baudrate,
            Op.FLASH_BEGIN: lambda payload, _chk: self._begin(payload, compressed=False),
            Op.FLASH_DEFL_BEGIN: lambda payload, _chk: self._begin(payload, compressed=True),
            Op.FLASH_DATA: self._flash_data,
            Op.FLASH_DEFL_DATA: self._flash_defl_data,
            Op.FLASH_END: self._flash_end,
            Op.FLASH_DEFL_END: self._flash_end,
            Op.SPI_FLASH_MD5: self._flash_md5,
            Op.MEM_BEGIN: self._mem_begin,
            Op.MEM_DATA: self._mem_data,
            Op.MEM_END: self._mem_end,
        }

    # -- framing ---------------------------------------------------------------

    def on_frame(self, frame: bytes) -> None:
        """Handle one de-SLIPped frame from the host."""
        if len(frame) < _HEADER.size:
            return  # not a request; the chip ignores it too
        direction, op, length, checksum = _HEADER.unpack_from(frame)
        if len(frame) > MAX_FRAME_BYTES:
            _log.debug("frame of over %d bytes (command %#04x) refused", MAX_FRAME_BYTES, op)
            self._chip.send_frame(self._response(op, _Reply(), _BAD_FORMAT))
            return
        payload = frame[_HEADER.size :]
        handler = self._handlers.get(op)
        if direction != 0 or handler is None:
            self._reject(op)
            return
        try:
            if length != len(payload):
                raise _CommandError(_BAD_FORMAT, f"length field {length} != {len(payload)}")
            reply = handler(payload, checksum)
        except _CommandError as err:
            _log.debug("command %#04x failed: %s", op, err)
            self._after_reply.clear()
            self._chip.send_frame(self._response(op, _Reply(), err.failure))
            return
        if reply is not None:
            self._chip.send_frame(self._response(op, reply, None))
        actions, self._after_reply = self._after_reply, []
        for action in actions:
            action()

    def _response(self, op: int, reply: _Reply, failure: _Failure | None) -> bytes:
        body = reply.data + self._status(failure)
        return _HEADER.pack(1, op, len(body), reply.value) + body

    @abstractmethod
    def _status(self, failure: _Failure | None) -> bytes:
        """The status bytes that end every reply."""

    @abstractmethod
    def _reject(self, op: int) -> None:
        """Answer a frame that is not a command this loader knows."""

    def _leave(self, event: RunUserCode | Reboot) -> None:
        """After the reply: the chip stops listening and the board takes over."""
        self.left_download_mode = True
        self._chip.on_event(event)

    # -- limits ------------------------------------------------------------------

    def _flash_limit(self) -> int:
        """Highest flash address (exclusive) this loader will touch."""
        return self._chip.flash.size

    def _check_flash_range(self, offset: int, length: int, failure: _Failure) -> None:
        if offset + length > self._flash_limit():
            raise _CommandError(
                failure,
                f"{length:#x} bytes at {offset:#x} exceed the {self._flash_limit():#x}-byte flash",
            )

    def _erase(self, offset: int, length: int) -> None:
        self._check_flash_range(offset, length, _FLASH_WRITE_FAILED)
        self._chip.flash.erase(offset, length)

    def _program(self, transfer: _FlashTransfer, data: bytes) -> None:
        self._check_flash_range(transfer.cursor, len(data), _FLASH_WRITE_FAILED)
        self._chip.flash.write(transfer.cursor, data)
        transfer.cursor += len(data)

    # -- commands shared by both loaders -------------------------------------

    @abstractmethod
    def _sync(self, payload: bytes, checksum: int) -> _Reply:
        """Answer SYNC with eight identical replies (SPEC_FACTS §1.2)."""

    def _read_reg(self, payload: bytes, checksum: int) -> _Reply:
        (addr,) = _unpack("<I", payload)
        return _Reply(value=self._chip.registers.read(addr))

    def _write_reg(self, payload: bytes, checksum: int) -> _Reply:
        """Records of addr, value, mask, delay_us; delays are meaningless here."""
        if not payload or len(payload) % 16:
            raise _CommandError(_NOT_ENOUGH_DATA, f"{len(payload)} bytes of WRITE_REG records")
        for addr, value, mask, _delay_us in struct.iter_unpack("<IIII", payload):
            self._chip.registers.write(addr, value, mask)
        return _Reply()

    def _security_info(self, payload: bytes, checksum: int) -> _Reply:
        """20 bytes: flags, crypt_cnt, 7 key purposes, chip_id, api version, from eFuse."""
        _unpack("", payload)
        return _Reply(data=self._chip.registers.security_info())

    @abstractmethod
    def _spi_attach(self, payload: bytes, checksum: int) -> _Reply:
        """Attach the flash; nothing to do but check the argument size."""

    def _spi_set_params(self, payload: bytes, checksum: int) -> _Reply:
        _unpack("<IIIIII", payload)
        return _Reply()

    def _change_baudrate(self, payload: bytes, checksum: int) -> _Reply:
        new_baud, _old_baud = _unpack("<II", payload)
        if not BAUD_RANGE[0] <= new_baud <= BAUD_RANGE[1]:
            raise _CommandError(_BAD_FORMAT, f"baud rate {new_baud} outside {BAUD_RANGE}")
        self._after_reply.append(lambda: self._chip.on_event(BaudRateChanged(new_baud)))
        return _Reply()

    @abstractmethod
    def _begin(self, payload: bytes, *, compressed: bool) -> _Reply:
        """FLASH_BEGIN / FLASH_DEFL_BEGIN: erase and open a transfer."""

    @abstractmethod
    def _flash_data(self, payload: bytes, checksum: int) -> _Reply:
        """FLASH_DATA: program one block."""

    @abstractmethod
    def _flash_defl_data(self, payload: bytes, checksum: int) -> _Reply:
        """FLASH_DEFL_DATA: inflate one block of the zlib stream and program it."""

    @abstractmethod
    def _flash_end(self, payload: bytes, checksum: int) -> _Reply:
        """FLASH_END / FLASH_DEFL_END: close the transfer, maybe leave."""

    @abstractmethod
    def _flash_md5(self, payload: bytes, checksum: int) -> _Reply:
        """SPI_FLASH_MD5 in this loader's encoding."""

    def _md5_range(self, payload: bytes) -> bytes:
        addr, size, _, _ = _unpack("<IIII", payload)
        self._check_flash_range(addr, size, _FLASH_READ_FAILED)
        return self._chip.flash.md5(addr, size)

    def _mem_begin(self, payload: bytes, checksum: int) -> _Reply:
        size, _blocks, _block_size, addr = _unpack("<IIII", payload)
        region = next((r for r in _RAM_REGIONS if r[0] <= addr < r[1]), None)
        if region is None:
            raise _CommandError(_BAD_RAM_ADDRESS, f"{addr:#x} is not RAM")
        if addr + size > region[1]:
            raise _CommandError(_BAD_RAM_SIZE, f"{size:#x} bytes at {addr:#x} overrun RAM")
        self._ram.append(_RamSegment(addr, bytearray(size)))
        return _Reply()

    def _mem_data(self, payload: bytes, checksum: int) -> _Reply:
        segment = self._ram[-1] if self._ram else None
        if segment is None:
            raise _CommandError(_NOT_IN_FLASH_MODE, "MEM_DATA without MEM_BEGIN")
        self._check_mem_block(segment, payload, checksum)
        data = payload[_DATA_HEADER.size :]
        end = segment.filled + len(data)
        if end > len(segment.data):
            raise _CommandError(_BAD_RAM_SIZE, "more data than MEM_BEGIN announced")
        segment.data[segment.filled : end] = data
        segment.filled = end
        segment.next_seq += 1
        return _Reply()

    @abstractmethod
    def _check_mem_block(self, segment: _RamSegment, payload: bytes, checksum: int) -> None:
        """Loader-specific MEM_DATA validation (the stub checks less than the ROM)."""

    @abstractmethod
    def _mem_end(self, payload: bytes, checksum: int) -> _Reply:
        """MEM_END: finish the RAM upload, maybe run it."""


class _RomLoader(_Loader):
    """The ESP32-C3 ROM's UART download mode."""

    def __init__(self, chip: _Chip, start_stub: Callable[[], None]) -> None:
        super().__init__(chip)
        self._start_stub = start_stub
        self._flash_size = ROM_DEFAULT_FLASH_SIZE
        self._handlers[Op.READ_FLASH_SLOW] = self._read_flash_slow

    def _status(self, failure: _Failure | None) -> bytes:
        return bytes([1, failure.rom, 0, 0]) if failure else bytes(4)

    def _reject(self, op: int) -> None:
        """Answer with opcode 0 and ``01 05``: esptool raises UnsupportedCommandError
        only for a reply whose opcode differs and whose data starts ``≠0, 0x05``
        (loader.py ``ESPLoader.command``); a same-opcode error would read as a failure."""
        self._chip.send_frame(_HEADER.pack(1, 0, 4, 0) + self._status(_INVALID_COMMAND))

    def _flash_limit(self) -> int:
        return min(self._flash_size, self._chip.flash.size)

    def _sync(self, payload: bytes, checksum: int) -> _Reply:
        """Eight identical replies; the non-zero value tells esptool it is the ROM."""
        if payload != SYNC_PAYLOAD:
            raise _CommandError(_BAD_FORMAT, "not the SYNC pattern")
        reply = _Reply(value=ROM_SYNC_VALUE)
        for _ in range(7):
            self._chip.send_frame(self._response(Op.SYNC, reply, None))
        return reply

    def _spi_attach(self, payload: bytes, checksum: int) -> _Reply:
        """The ROM takes the pin config plus a 4-byte 'is legacy' word (loader.py)."""
        _unpack("<II", payload)
        return _Reply()

    def _spi_set_params(self, payload: bytes, checksum: int) -> _Reply:
        """The ROM bounds every flash access by the size given here."""
        _fl_id, total_size, *_ = _unpack("<IIIIII", payload)
        self._flash_size = total_size
        return _Reply()

    def _begin(self, payload: bytes, *, compressed: bool) -> _Reply:
        """The ROM erases the whole announced region up front, in whole sectors.

        ``FLASH_BEGIN(0, 0)`` (nothing to write) is how esptool prepares FLASH_END,
        and a FLASH_BEGIN never followed by data is its ROM ``erase-region``.
        """
        size, _blocks, _block_size, offset = _begin_params(payload)
        if size and offset % SECTOR_SIZE:
            raise _CommandError(_FLASH_WRITE_FAILED, f"erase start {offset:#x} not sector aligned")
        self._erase(offset, _round_up(size, SECTOR_SIZE))
        self._transfer = _FlashTransfer(offset, size, zlib.decompressobj() if compressed else None)
        return _Reply()

    def _flash_data(self, payload: bytes, checksum: int) -> _Reply:
        """1 KiB blocks, the last one padded with 0xFF; the ROM programs all of it."""
        transfer, data = self._next_block(payload, checksum, deflate=False)
        self._program(transfer, data)
        transfer.next_seq += 1
        return _Reply()

    def _flash_defl_data(self, payload: bytes, checksum: int) -> _Reply:
        """Inflate as the blocks arrive and program the output right away."""
        transfer, data = self._next_block(payload, checksum, deflate=True)
        assert transfer.inflater is not None
        out = _inflate(transfer.inflater, data)
        if len(out) > transfer.remaining:
            raise _CommandError(_INFLATE_FAILED, "inflated past the announced size")
        self._program(transfer, out)
        transfer.remaining -= len(out)
        transfer.next_seq += 1
        return _Reply()

    def _next_block(
        self, payload: bytes, checksum: int, *, deflate: bool
    ) -> tuple[_FlashTransfer, bytes]:
        transfer = self._transfer
        if transfer is None or (transfer.inflater is not None) != deflate:
            raise _CommandError(_NOT_IN_FLASH_MODE, "data without the matching BEGIN")
        data = _data_block(payload)
        _, seq, _, _ = _DATA_HEADER.unpack_from(payload)
        if _checksum(data) != checksum:
            raise _CommandError(_BAD_CHECKSUM, f"block {seq} checksum mismatch")
        if seq != transfer.next_seq:
            raise _CommandError(_BAD_FORMAT, f"block {seq} arrived, expected {transfer.next_seq}")
        return transfer, data

    def _flash_end(self, payload: bytes, checksum: int) -> _Reply:
        """Flag 0 reboots; 1 runs the app (esptool ``--after soft-reset`` with the ROM)."""
        (run_user_code,) = _unpack("<I", payload)
        self._transfer = None
        event: RunUserCode | Reboot = RunUserCode() if run_user_code else Reboot()
        self._after_reply.append(lambda: self._leave(event))
        return _Reply()

    def _flash_md5(self, payload: bytes, checksum: int) -> _Reply:
        """The ROM answers with 32 lowercase hex digits (esptool ``RESP_DATA_LEN = 32``)."""
        return _Reply(data=self._md5_range(payload).hex().encode("ascii"))

    def _read_flash_slow(self, payload: bytes, checksum: int) -> _Reply:
        """Up to 64 bytes per command; the reply always carries a 64-byte buffer."""
        offset, length = _unpack("<II", payload)
        if length > 64:
            raise _CommandError(_BAD_READ_LENGTH, f"READ_FLASH_SLOW of {length} bytes")
        self._check_flash_range(offset, length, _FLASH_READ_FAILED)
        return _Reply(data=self._chip.flash.read(offset, length).ljust(64, b"\x00"))

    def _check_mem_block(self, segment: _RamSegment, payload: bytes, checksum: int) -> None:
        data = _data_block(payload)
        _, seq, _, _ = _DATA_HEADER.unpack_from(payload)
        if _checksum(data) != checksum:
            raise _CommandError(_BAD_CHECKSUM, f"RAM block {seq} checksum mismatch")
        if seq != segment.next_seq:
            raise _CommandError(_BAD_FORMAT, f"RAM block {seq}, expected {segment.next_seq}")

    def _mem_end(self, payload: bytes, checksum: int) -> _Reply:
        """Jump to the uploaded code; the only program this model runs is the stub."""
        no_entry, entry = _unpack("<II", payload)
        if not no_entry:
            if not any(segment.contains(entry) for segment in self._ram):
                raise _CommandError(_BAD_RAM_ADDRESS, f"entry {entry:#x} is not in loaded RAM")
            self._after_reply.append(self._start_stub)
        return _Reply()


class _StubLoader(_Loader):
    """esp-flasher-stub as uploaded by esptool 5.6.0 (``stub_flasher/2/esp32c3.json``).

    Status codes, argument checks, the unchecked sequence numbers and the READ_FLASH
    flow follow esp-flasher-stub's ``command_handler.c``. Two things do not: that
    stub leaves "reboot on FLASH_END(0)" and RUN_USER_CODE as TODOs, while esptool
    (``soft_reset``) and the legacy stub mean a software reset and a boot of the
    app; this model does what esptool means. Where the stub reports an error one
    command late (it writes after acknowledging), this model reports it at once.
    """

    def __init__(self, chip: _Chip) -> None:
        super().__init__(chip)
        self._read: _FlashReadStream | None = None
        self._handlers.update(
            {
                Op.ERASE_FLASH: self._erase_flash,
                Op.ERASE_REGION: self._erase_region,
                Op.READ_FLASH: self._read_flash,
                Op.RUN_USER_CODE: self._run_user_code,
            }
        )

    def on_frame(self, frame: bytes) -> None:
        """While READ_FLASH streams, the host's frames are its acknowledgements."""
        if self._read is not None:
            if self._read.on_ack(frame):
                self._read = None
            return
        super().on_frame(frame)

    def _status(self, failure: _Failure | None) -> bytes:
        return struct.pack(">H", failure.stub if failure else 0)

    def _reject(self, op: int) -> None:
        self._chip.send_frame(self._response(op, _Reply(), _INVALID_COMMAND))

    def _sync(self, payload: bytes, checksum: int) -> _Reply:
        """Eight replies with value 0, which esptool reads as 'stub already running'."""
        if len(payload) != len(SYNC_PAYLOAD):
            raise _CommandError(_BAD_FORMAT, "SYNC of the wrong length")
        for _ in range(7):
            self._chip.send_frame(self._response(Op.SYNC, _Reply(), None))
        return _Reply()

    def _spi_attach(self, payload: bytes, checksum: int) -> _Reply:
        _unpack("<I", payload)
        return _Reply()

    def _begin(self, payload: bytes, *, compressed: bool) -> _Reply:
        """Erase the sectors the write touches, so an unaligned start loses its sector head.

        ``size`` is the exact byte count for both plain and compressed writes (esptool
        ``flash_defl_begin``: "stub expects number of bytes here").
        """
        size, _blocks, _block_size, offset = _begin_params(payload)
        start = offset - offset % SECTOR_SIZE
        self._erase(start, _round_up(offset + size, SECTOR_SIZE) - start)
        self._transfer = _FlashTransfer(offset, size, zlib.decompressobj() if compressed else None)
        return _Reply()

    def _flash_data(self, payload: bytes, checksum: int) -> _Reply:
        """Program only what FLASH_BEGIN announced; the 0xFF padding is dropped."""
        transfer, data = self._next_block(payload, checksum, deflate=False)
        data = data[: transfer.remaining]
        self._program(transfer, data)
        transfer.remaining -= len(data)
        return _Reply()

    def _flash_defl_data(self, payload: bytes, checksum: int) -> _Reply:
        transfer, data = self._next_block(payload, checksum, deflate=True)
        if transfer.remaining == 0:
            raise _CommandError(_TOO_MUCH_DATA, "compressed data after the last byte")
        assert transfer.inflater is not None
        out = _inflate(transfer.inflater, data)
        if len(out) > transfer.remaining:
            raise _CommandError(_TOO_MUCH_DATA, "inflated past the announced size")
        self._program(transfer, out)
        transfer.remaining -= len(out)
        return _Reply()

    def _next_block(
        self, payload: bytes, checksum: int, *, deflate: bool
    ) -> tuple[_FlashTransfer, bytes]:
        """The stub checks length and checksum but not the sequence number."""
        if len(payload) < _DATA_HEADER.size:
            raise _CommandError(_NOT_ENOUGH_DATA, "data command shorter than its header")
        transfer = self._transfer
        if transfer is None or (transfer.inflater is not None) != deflate:
            raise _CommandError(_NOT_IN_FLASH_MODE, "data without the matching BEGIN")
        data = payload[_DATA_HEADER.size :]
        (length,) = struct.unpack_from("<I", payload)
        if length != len(data):
            raise _CommandError(_TOO_MUCH_DATA, f"data header says {length}, carries {len(data)}")
        if _checksum(data) != checksum:
            raise _CommandError(_BAD_CHECKSUM, "block checksum mismatch")
        return transfer, data

    def _flash_end(self, payload: bytes, checksum: int) -> _Reply:
        """Succeeds once everything announced was written; flag 0 reboots.

        esptool sends flag 1 after write-flash (stay in the stub) and
        ``FLASH_BEGIN(0, 0)`` + ``FLASH_END(0)`` for ``--after no-reset``.
        """
        (stay,) = _unpack("<I", payload)
        if self._transfer is None:
            raise _CommandError(_NOT_IN_FLASH_MODE, "FLASH_END without FLASH_BEGIN")
        if self._transfer.remaining:
            raise _CommandError(_BAD_FORMAT, f"{self._transfer.remaining} bytes still expected")
        self._transfer = None
        if not stay:
            self._after_reply.append(lambda: self._leave(Reboot()))
        return _Reply()

    def _flash_md5(self, payload: bytes, checksum: int) -> _Reply:
        """The stub answers with the 16 raw digest bytes (esptool ``RESP_DATA_LEN_STUB``)."""
        return _Reply(data=self._md5_range(payload))

    def _check_mem_block(self, segment: _RamSegment, payload: bytes, checksum: int) -> None:
        """The stub checks only the length word."""
        if len(payload) < _DATA_HEADER.size:
            raise _CommandError(_NOT_ENOUGH_DATA, "MEM_DATA shorter than its header")
        (length,) = struct.unpack_from("<I", payload)
        if length != len(payload) - _DATA_HEADER.size:
            raise _CommandError(_TOO_MUCH_DATA, "MEM_DATA length word does not match")

    def _mem_end(self, payload: bytes, checksum: int) -> _Reply:
        """Accepted, but the model runs no RAM code other than the stub itself."""
        _unpack("<II", payload)
        if not self._ram:
            raise _CommandError(_NOT_IN_FLASH_MODE, "MEM_END without MEM_BEGIN")
        self._ram.clear()
        return _Reply()

    def _erase_flash(self, payload: bytes, checksum: int) -> _Reply:
        self._chip.flash.erase_all()
        return _Reply()

    def _erase_region(self, payload: bytes, checksum: int) -> _Reply:
        """Both offset and size must be whole sectors (esp-flasher-stub: bad length)."""
        offset, size = _unpack("<II", payload)
        if offset % SECTOR_SIZE or size % SECTOR_SIZE:
            raise _CommandError(_BAD_FORMAT, f"erase {size:#x} at {offset:#x} not sector aligned")
        self._erase(offset, size)
        return _Reply()

    def _read_flash(self, payload: bytes, checksum: int) -> _Reply:
        """Args: offset, length, packet size (esptool: 4096), max in flight (ignored)."""
        offset, length, packet_size, _max_in_flight = _unpack("<IIII", payload)
        if not 0 < packet_size <= STUB_MAX_READ_PACKET:
            raise _CommandError(_BAD_FORMAT, f"read packet size {packet_size}")
        self._check_flash_range(offset, length, _FLASH_READ_FAILED)
        stream = _FlashReadStream(self._chip, offset, length, packet_size)
        self._after_reply.append(lambda: self._stream(stream))
        return _Reply()

    def _stream(self, stream: _FlashReadStream) -> None:
        self._read = None if stream.start() else stream

    def _run_user_code(self, payload: bytes, checksum: int) -> None:
        """No reply: the stub returns into the ROM's normal boot path."""
        self._after_reply.append(lambda: self._leave(RunUserCode()))
        return None


class _FlashReadStream:
    """The stub's READ_FLASH data phase, after its normal reply.

    Data frames of up to ``packet_size`` bytes, each acknowledged by the host with
    the running total as u32 LE. esp-flasher-stub keeps one frame in flight
    whatever the host asks for. Once the host has acknowledged everything, the MD5
    of the data follows as a 16-byte frame. A frame that is not a 4-byte ack ends
    the stream early (the stub then sends the MD5 of what it sent) and is dropped.
    """

    def __init__(self, chip: _Chip, offset: int, length: int, packet_size: int) -> None:
        self._chip = chip
        self._cursor = offset
        self._end = offset + length
        self._length = length
        self._packet_size = packet_size
        self._acked = 0
        self._unacked_frames = 0
        self._md5 = hashlib.md5()

    def start(self) -> bool:
        """Send the first frame (or, for an empty read, the MD5); True when over."""
        return self._pump()

    def on_ack(self, frame: bytes) -> bool:
        """Take one host frame; True when the stream is over."""
        if len(frame) != 4:
            self._finish()
            return True
        (self._acked,) = struct.unpack("<I", frame)
        self._unacked_frames = 0
        return self._pump()

    def _pump(self) -> bool:
        if self._cursor < self._end and self._unacked_frames == 0:
            chunk = self._chip.flash.read(
                self._cursor, min(self._packet_size, self._end - self._cursor)
            )
            self._md5.update(chunk)
            self._chip.send_frame(chunk)
            self._cursor += len(chunk)
            self._unacked_frames = 1
            return False
        if self._cursor >= self._end and self._acked >= self._length:
            self._finish()
            return True
        return False

    def _finish(self) -> None:
        self._chip.send_frame(self._md5.digest())


class DownloadSession:
    """The chip in UART download mode: ROM loader first, the stub once uploaded.

    ``feed`` takes raw bytes from the host in any chunking and handles every
    complete command before it returns; replies go out through ``send`` as whole
    SLIP frames. After a command that leaves download mode (`RunUserCode`,
    `Reboot`) the session ignores further input: the board has taken over.
    """

    def __init__(
        self,
        *,
        flash: SpiFlash,
        registers: RegisterSpace,
        send: Callable[[bytes], None],
        on_event: Callable[[DownloadEvent], None],
    ) -> None:
        self._chip = _Chip(flash, registers, send, on_event)
        self._decoder = SlipDecoder(max_frame=MAX_FRAME_BYTES)
        self._loader: _Loader = _RomLoader(self._chip, self._start_stub)

    @property
    def stub_running(self) -> bool:
        """True once the uploaded stub has greeted the host with ``OHAI``."""
        return isinstance(self._loader, _StubLoader)

    def feed(self, data: bytes) -> None:
        """Handle the host's bytes; replies and events happen before this returns."""
        for frame in self._decoder.feed(data):
            if self._loader.left_download_mode:
                return
            self._loader.on_frame(frame)

    def _start_stub(self) -> None:
        """The stub's first act is an unsolicited OHAI frame (esptool ``run_stub``)."""
        self._loader = _StubLoader(self._chip)
        self._chip.send_frame(STUB_GREETING)


def _unpack(fmt: str, payload: bytes) -> tuple[int, ...]:
    """Unpack a fixed-size argument block; any other size is a malformed command."""
    size = struct.calcsize(fmt)
    if len(payload) != size:
        raise _CommandError(_BAD_FORMAT, f"{len(payload)} argument bytes, expected {size}")
    return struct.unpack(fmt, payload)


def _begin_params(payload: bytes) -> tuple[int, int, int, int]:
    """FLASH_BEGIN / FLASH_DEFL_BEGIN: four words, plus the encryption flag on the C3."""
    if len(payload) not in (16, 20):
        raise _CommandError(_BAD_FORMAT, f"{len(payload)}-byte BEGIN")
    size, blocks, block_size, offset = _DATA_HEADER.unpack_from(payload)
    return size, blocks, block_size, offset


def _data_block(payload: bytes) -> bytes:
    """The data after a 16-byte ``len, seq, 0, 0`` header, checked against ``len``."""
    if len(payload) < _DATA_HEADER.size:
        raise _CommandError(_BAD_FORMAT, "data command shorter than its header")
    (length,) = struct.unpack_from("<I", payload)
    data = payload[_DATA_HEADER.size :]
    if length != len(data):
        raise _CommandError(_BAD_FORMAT, f"data header says {length}, carries {len(data)}")
    return data


def _checksum(data: bytes) -> int:
    """XOR of all data bytes seeded with 0xEF, sent in the request header's ``chk``."""
    value = _CHECKSUM_SEED
    for byte in data:
        value ^= byte
    return value


def _inflate(inflater: zlib._Decompress, data: bytes) -> bytes:
    try:
        return inflater.decompress(data)
    except zlib.error as err:
        raise _CommandError(_INFLATE_FAILED, str(err)) from err


def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit
