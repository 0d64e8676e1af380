"""The slice of the ESP32-C3 address space esptool touches over READ_REG/WRITE_REG.

esptool identifies the chip, reads its MAC and revision from eFuse words, talks to
the SPI flash by driving the SPI1 peripheral's "user command" registers, and arms
the RTC watchdog for ``--after watchdog-reset`` (SPEC_FACTS §1.3, §1.4). Everything
else reads 0 and swallows writes, which is what esptool sees on a chip with blank
eFuses and idle peripherals.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from hil.sim.flash import SpiFlash

_WORD = 0xFFFFFFFF

CHIP_MAGIC_ADDR = 0x40001000
CHIP_MAGIC_VALUE = 0x1B31506F
"""One of the ESP32-C3 values at 0x40001000; tools older than GET_SECURITY_INFO detect by it."""

# eFuse read registers (EFUSE_BASE 0x60008800). Zero in the BLOCK0 words means no
# flash encryption, no secure boot and manual encrypted download allowed.
EFUSE_RD_REPEAT_DATA0 = 0x60008830
EFUSE_RD_REPEAT_DATA1 = 0x60008834
EFUSE_RD_REPEAT_DATA2 = 0x60008838
EFUSE_MAC0 = 0x60008844
EFUSE_MAC1 = 0x60008848
EFUSE_SYS_DATA3 = 0x60008850
EFUSE_SYS_DATA4 = 0x60008854
EFUSE_SYS_DATA5 = 0x60008858

# SPI1 (the flash controller) "user command" registers, base 0x60002000.
SPI1_BASE = 0x60002000
SPI_CMD = SPI1_BASE + 0x00
SPI_ADDR = SPI1_BASE + 0x04
SPI_USER = SPI1_BASE + 0x18
SPI_USER1 = SPI1_BASE + 0x1C
SPI_USER2 = SPI1_BASE + 0x20
SPI_MOSI_DLEN = SPI1_BASE + 0x24
SPI_MISO_DLEN = SPI1_BASE + 0x28
SPI_W0 = SPI1_BASE + 0x58
SPI_W15 = SPI_W0 + 15 * 4
SPI_CMD_USR = 1 << 18
_USR_COMMAND = 1 << 31
_USR_ADDR = 1 << 30
_USR_MISO = 1 << 28
_USR_MOSI = 1 << 27

# RTC watchdog, the only way esptool can reset a C3 without DTR/RTS.
RTC_WDT_CONFIG0 = 0x60008090
RTC_WDT_CONFIG1 = 0x60008094
RTC_WDT_WPROTECT = 0x600080A8
RTC_SWD_CONF = 0x600080AC
RTC_SWD_WPROTECT = 0x600080B0
RTC_WDT_WKEY = 0x50D83AA1
RTC_SWD_WKEY = 0x8F1D312A
_WDT_EN = 1 << 31

# Flash vendor codes in EFUSE_SYS_DATA4[2:0] for chips with in-package flash.
_EFUSE_FLASH_VENDOR = {0x20: 1, 0xC8: 2}  # XMC, GD

_MAC_TEXT = re.compile(r"[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}")


@dataclass(frozen=True)
class ChipIdentity:
    """What the eFuses say about this chip: base MAC, revision, package, flash.

    The defaults describe an ESP32-C3 (QFN32) v0.4 with external flash, which is
    what esptool prints as ``ESP32-C3 (QFN32) (revision v0.4)``.
    """

    mac: bytes
    major_rev: int = 0
    minor_rev: int = 4
    pkg: int = 0
    flash_cap: int = 0

    def __post_init__(self) -> None:
        if len(self.mac) != 6:
            raise ValueError(f"MAC must be 6 bytes, got {len(self.mac)}")
        if self.mac[0] & 1:
            raise ValueError(f"MAC {format_mac(self.mac)} is multicast; a base MAC must be unicast")
        for name, value, bits in (
            ("major_rev", self.major_rev, 2),
            ("minor_rev", self.minor_rev, 4),
            ("pkg", self.pkg, 3),
            ("flash_cap", self.flash_cap, 3),
        ):
            if not 0 <= value < 1 << bits:
                raise ValueError(f"{name}={value} does not fit its {bits}-bit eFuse field")


def parse_mac(text: str) -> bytes:
    """Parse ``58:cf:79:01:02:03`` into 6 bytes."""
    if not _MAC_TEXT.fullmatch(text.strip()):
        raise ValueError(
            f"MAC {text!r} is not six colon-separated hex bytes like 58:cf:79:01:02:03"
        )
    return bytes(int(part, 16) for part in text.strip().split(":"))


def format_mac(mac: bytes) -> str:
    """The colon form esptool prints (``58:cf:79:01:02:03``)."""
    return ":".join(f"{b:02x}" for b in mac)


class RegisterSpace:
    """Registers behind READ_REG/WRITE_REG, for both the ROM loader and the stub.

    ``on_watchdog_reset`` is called, synchronously and in the middle of the
    WRITE_REG that arms the RTC WDT, when esptool enables it for
    ``--after watchdog-reset``. esptool still expects a reply to that write and to
    the following write that re-locks the WDT, so the board should let the
    configured timeout (RTC_WDT_CONFIG1, 2000 slow-clock cycles ≈ 13 ms) pass
    before it resets the chip.
    """

    def __init__(
        self,
        identity: ChipIdentity,
        flash: SpiFlash,
        on_watchdog_reset: Callable[[], None],
    ) -> None:
        self.identity = identity
        self._on_watchdog_reset = on_watchdog_reset
        self._efuse = _efuse_words(identity, flash)
        self._stored: dict[int, int] = {}
        self._spi = _SpiFlashCommands(flash)

    def read(self, addr: int) -> int:
        """The 32-bit word at ``addr``; 0 for anything not modelled."""
        if addr == CHIP_MAGIC_ADDR:
            return CHIP_MAGIC_VALUE
        if addr in self._efuse:
            return self._efuse[addr]
        return self._stored.get(addr, 0)

    def write(self, addr: int, value: int, mask: int = _WORD) -> None:
        """Write the ``mask``ed bits of ``value`` (WRITE_REG semantics)."""
        new = (self.read(addr) & ~mask | value & mask) & _WORD
        if SPI1_BASE <= addr <= SPI_W15:
            self._write_spi(addr, new)
        elif addr in (RTC_WDT_WPROTECT, RTC_SWD_WPROTECT):
            self._stored[addr] = new
        elif addr in (RTC_WDT_CONFIG0, RTC_WDT_CONFIG1):
            self._write_rtc_wdt(addr, new)
        elif addr == RTC_SWD_CONF and self._stored.get(RTC_SWD_WPROTECT) == RTC_SWD_WKEY:
            self._stored[addr] = new

    def _write_spi(self, addr: int, value: int) -> None:
        if addr == SPI_CMD and value & SPI_CMD_USR:
            self._run_spi_user_command()
            value &= ~SPI_CMD_USR  # the hardware clears USR when the command is done
        self._stored[addr] = value

    def _write_rtc_wdt(self, addr: int, value: int) -> None:
        if self._stored.get(RTC_WDT_WPROTECT) != RTC_WDT_WKEY:
            return  # write-protected, as after reset
        self._stored[addr] = value
        if addr == RTC_WDT_CONFIG0 and value & _WDT_EN:
            self._on_watchdog_reset()

    def _run_spi_user_command(self) -> None:
        """Execute what esptool's run_spiflash_command set up, like the SPI1 hardware."""
        user = self._stored.get(SPI_USER, 0)
        if not user & _USR_COMMAND:
            return
        opcode = self._stored.get(SPI_USER2, 0) & 0xFF
        addr: int | None = None
        if user & _USR_ADDR:
            addr_bits = ((self._stored.get(SPI_USER1, 0) >> 26) & 0x3F) + 1
            # On the C3 the address sits in the low bits of SPI_ADDR (not MSB-aligned).
            addr = self._stored.get(SPI_ADDR, 0) & ((1 << addr_bits) - 1)
        mosi = b""
        if user & _USR_MOSI:
            mosi_len = (self._stored.get(SPI_MOSI_DLEN, 0) + 8) // 8
            mosi = b"".join(self.read(SPI_W0 + 4 * i).to_bytes(4, "little") for i in range(16))
            mosi = mosi[:mosi_len]
        miso_len = (self._stored.get(SPI_MISO_DLEN, 0) + 8) // 8 if user & _USR_MISO else 0
        answer = self._spi.run(opcode, addr, mosi, min(miso_len, 64))
        for i in range(0, len(answer), 4):
            word = answer[i : i + 4].ljust(4, b"\x00")
            self._stored[SPI_W0 + i] = int.from_bytes(word, "little")


class _SpiFlashCommands:
    """The flash chip's side of SPI user commands: IDs, SFDP, status, plain reads."""

    RDID = 0x9F
    RDSFDP = 0x5A
    READ = 0x03
    FAST_READ = 0x0B
    RDSR = (0x05, 0x35, 0x15)
    WRSR = (0x01, 0x31, 0x11)

    def __init__(self, flash: SpiFlash) -> None:
        self._flash = flash
        self._status = bytearray(3)
        self._sfdp = _sfdp_table(flash)

    def run(self, opcode: int, addr: int | None, mosi: bytes, miso_len: int) -> bytes:
        """Return the ``miso_len`` bytes the chip shifts out for this command."""
        if opcode == self.RDID:
            answer = self._flash.jedec_id.to_bytes(3, "little")
        elif opcode == self.RDSFDP:
            start = addr or 0
            answer = self._sfdp[start : start + miso_len]
        elif opcode in (self.READ, self.FAST_READ):
            answer = self._read_wrapping(addr or 0, miso_len)
        elif opcode in self.RDSR:
            index = self.RDSR.index(opcode)
            answer = bytes(self._status[index:])
        elif opcode in self.WRSR:
            # A 16-bit WRSR (status 1 and 2 at once) is what many chips accept.
            start = self.WRSR.index(opcode)
            for offset, value in enumerate(mosi[: 3 - start]):
                self._status[start + offset] = value
            answer = b""
        else:
            # Reset (0x66/0x99), write enable/disable, power-down and the XMC
            # start-up sequence: accepted, nothing to model.
            answer = b""
        return answer[:miso_len].ljust(miso_len, b"\xff")

    def _read_wrapping(self, addr: int, length: int) -> bytes:
        """NOR chips wrap around at the end of the array on a sequential read."""
        out = bytearray()
        while len(out) < length:
            addr %= self._flash.size
            chunk = min(length - len(out), self._flash.size - addr)
            out += self._flash.read(addr, chunk)
            addr += chunk
        return bytes(out)


def _efuse_words(identity: ChipIdentity, flash: SpiFlash) -> dict[int, int]:
    """The eFuse read registers esptool decodes (esptool targets/esp32c3.py)."""
    mac = identity.mac
    return {
        EFUSE_RD_REPEAT_DATA0: 0,
        EFUSE_RD_REPEAT_DATA1: 0,
        EFUSE_RD_REPEAT_DATA2: 0,
        EFUSE_MAC0: int.from_bytes(mac[2:], "big"),
        EFUSE_MAC1: int.from_bytes(mac[:2], "big"),
        EFUSE_SYS_DATA3: (identity.minor_rev & 0x7) << 18
        | identity.pkg << 21
        | identity.flash_cap << 27,
        EFUSE_SYS_DATA4: _EFUSE_FLASH_VENDOR.get(flash.jedec_id & 0xFF, 0)
        if identity.flash_cap
        else 0,
        EFUSE_SYS_DATA5: (identity.minor_rev >> 3) << 23 | identity.major_rev << 24,
    }


def _sfdp_table(flash: SpiFlash) -> bytes:
    """A minimal JEDEC SFDP image: signature, the basic parameter table, a vendor header.

    esptool reads the signature at 0 to confirm a NOR chip is attached and the
    byte at 0x10 (the second parameter header's ID, i.e. the vendor) to spot an
    XMC chip that needs its start-up fix; only an XMC id (0x20) there triggers it.
    """
    header = b"SFDP" + bytes([0x06, 0x01, 0x01, 0xFF])
    basic = bytes([0x00, 0x06, 0x01, 0x10, 0x30, 0x00, 0x00, 0xFF])
    vendor = bytes([flash.jedec_id & 0xFF, 0x00, 0x01, 0x03, 0x90, 0x00, 0x00, 0xFF])
    table = bytearray(b"\xff" * 0x100)
    table[0:24] = header + basic + vendor
    density = (flash.size * 8 - 1).to_bytes(4, "little")
    table[0x34:0x38] = density  # basic table DWORD 2: density in bits, minus one
    return bytes(table)
