"""The slice of the ESP32-C3 address space esptool touches over READ_REG/WRITE_REG.

esptool identifies the chip, reads its MAC and revision from eFuse words, talks to
the SPI flash by driving the SPI1 peripheral's "user command" registers, and arms
the RTC watchdog for ``--after watchdog-reset`` (SPEC_FACTS §1.3, §1.4); espefuse reads
every eFuse block and burns through the eFuse controller (`hil.sim.efuse`). UART0's
version registers read their reset values. Everything else reads 0 and swallows
writes, which is what esptool sees of idle peripherals.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hil.sim.efuse import EfuseArray, EfuseController, factory_blocks
from hil.sim.flash import SpiFlash

_WORD = 0xFFFFFFFF

CHIP_MAGIC_ADDR = 0x40001000
CHIP_MAGIC_VALUE = 0x1B31506F
"""One of the ESP32-C3 values at 0x40001000; tools older than GET_SECURITY_INFO detect by it."""

# eFuse read registers (EFUSE_BASE 0x60008800; the whole controller is hil.sim.efuse).
# Zero in the BLOCK0 words means no flash encryption, no secure boot and manual
# encrypted download allowed.
EFUSE_RD_WR_DIS = 0x6000882C
EFUSE_RD_REPEAT_DATA0 = 0x60008830
EFUSE_RD_REPEAT_DATA1 = 0x60008834
EFUSE_RD_REPEAT_DATA2 = 0x60008838
EFUSE_RD_REPEAT_DATA3 = 0x6000883C
EFUSE_MAC0 = 0x60008844
EFUSE_MAC1 = 0x60008848
EFUSE_SYS_DATA3 = 0x60008850
EFUSE_SYS_DATA4 = 0x60008854
EFUSE_SYS_DATA5 = 0x60008858

# UART0's version registers (ESP-IDF soc/esp32c3/register/soc/uart_reg.h): R/W, and
# these are their reset values. esptool's targets name UART_DATE (and write it with a
# zero mask as an excuse for a delay).
UART_DATE = 0x6000007C
UART_DATE_RESET = 0x02008270
UART_ID = 0x60000080
UART_ID_RESET = 0x40000500  # UART_HIGH_SPEED (bit 30) | UART_ID 0x500
_PERIPHERAL_RESET_VALUES = {UART_DATE: UART_DATE_RESET, UART_ID: UART_ID_RESET}

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
RTC_SLOW_CLOCK_HZ = 136_000
"""The C3's default RTC slow clock (the internal ~136 kHz RC oscillator, RC_SLOW_CLK): the
unit of the RTC WDT's stage hold times (esptool writes 2000 cycles, ≈ 14.7 ms)."""

# Flash vendor codes in EFUSE_SYS_DATA4[2:0] for chips with in-package flash.
_EFUSE_FLASH_VENDOR = {0x20: 1, 0xC8: 2}  # XMC, GD

C3_CHIP_ID = 5
"""The chip id GET_SECURITY_INFO reports for an ESP32-C3 (esptool's IMAGE_CHIP_ID)."""

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


def efuse_array_for(identity: ChipIdentity, flash: SpiFlash, path: Path | None = None) -> EfuseArray:
    """The eFuses of this chip: its factory blocks, and what was burned since (kept in
    ``path`` when given)."""
    vendor = _EFUSE_FLASH_VENDOR.get(flash.jedec_id & 0xFF, 0) if identity.flash_cap else 0
    factory = factory_blocks(
        mac=identity.mac,
        major_rev=identity.major_rev,
        minor_rev=identity.minor_rev,
        pkg=identity.pkg,
        flash_cap=identity.flash_cap,
        flash_vendor=vendor,
    )
    return EfuseArray(factory, path)


class RegisterSpace:
    """Registers behind READ_REG/WRITE_REG, for both the ROM loader and the stub.

    ``on_watchdog_reset`` is called, synchronously and in the middle of the WRITE_REG
    that arms the RTC WDT, when esptool enables it for ``--after watchdog-reset``;
    ``on_watchdog_locked`` when the armed WDT is write-protected again (esptool's last
    write of that sequence). The WDT's timeout is `rtc_wdt_timeout_s`. The board, not
    this class, decides when the reset happens: esptool expects replies to its writes
    that follow the arming one.

    ``efuse`` is the chip's eFuse array (factory blocks only, in memory, if not given).
    """

    def __init__(
        self,
        identity: ChipIdentity,
        flash: SpiFlash,
        on_watchdog_reset: Callable[[], None],
        *,
        efuse: EfuseArray | None = None,
        on_watchdog_locked: Callable[[], None] | None = None,
    ) -> None:
        self.identity = identity
        self._on_watchdog_reset = on_watchdog_reset
        self._on_watchdog_locked = on_watchdog_locked or (lambda: None)
        self.efuse = EfuseController(efuse if efuse is not None else efuse_array_for(identity, flash))
        self._stored: dict[int, int] = {}
        self._spi = _SpiFlashCommands(flash)

    def chip_reset(self) -> None:
        """A chip reset: peripherals back to their reset values, eFuses read afresh."""
        self._stored.clear()
        self.efuse.reset()

    def read(self, addr: int) -> int:
        """The 32-bit word at ``addr``; 0 for anything not modelled."""
        if addr == CHIP_MAGIC_ADDR:
            return CHIP_MAGIC_VALUE
        if self.efuse.handles(addr):
            return self.efuse.read(addr)
        if addr in self._stored:
            return self._stored[addr]
        return _PERIPHERAL_RESET_VALUES.get(addr, 0)

    def write(self, addr: int, value: int, mask: int = _WORD) -> None:
        """Write the ``mask``ed bits of ``value`` (WRITE_REG semantics)."""
        new = (self.read(addr) & ~mask | value & mask) & _WORD
        if SPI1_BASE <= addr <= SPI_W15:
            self._write_spi(addr, new)
        elif self.efuse.handles(addr):
            self.efuse.write(addr, new)
        elif addr in _PERIPHERAL_RESET_VALUES:
            self._stored[addr] = new
        elif addr in (RTC_WDT_WPROTECT, RTC_SWD_WPROTECT):
            self._write_wprotect(addr, new)
        elif addr in (RTC_WDT_CONFIG0, RTC_WDT_CONFIG1):
            self._write_rtc_wdt(addr, new)
        elif addr == RTC_SWD_CONF and self._stored.get(RTC_SWD_WPROTECT) == RTC_SWD_WKEY:
            self._stored[addr] = new

    @property
    def rtc_wdt_timeout_s(self) -> float:
        """Stage 0 hold time of the RTC WDT as configured (RTC_CNTL_WDTCONFIG1)."""
        return self._stored.get(RTC_WDT_CONFIG1, 0) / RTC_SLOW_CLOCK_HZ

    def security_info(self) -> bytes:
        """GET_SECURITY_INFO's 20 bytes, from the eFuses as the ROM reads them: flags
        (esptool's SECURITY_INFO_FLAG_MAP order), SPI_BOOT_CRYPT_CNT, the six key
        purposes and a zero, chip id 5, then the API/ECO word."""
        data0 = self.read(EFUSE_RD_REPEAT_DATA0)
        data1 = self.read(EFUSE_RD_REPEAT_DATA1)
        data2 = self.read(EFUSE_RD_REPEAT_DATA2)
        data3 = self.read(EFUSE_RD_REPEAT_DATA3)
        flags = 0
        for bit, on in enumerate(
            (
                data2 >> 20 & 1,  # SECURE_BOOT_EN
                data2 >> 21 & 1,  # SECURE_BOOT_AGGRESSIVE_REVOKE
                data3 >> 5 & 1,  # ENABLE_SECURITY_DOWNLOAD
                data1 >> 21 & 1,  # SECURE_BOOT_KEY_REVOKE0..2
                data1 >> 22 & 1,
                data1 >> 23 & 1,
                bin(data0 >> 16 & 0x7).count("1") % 2,  # SOFT_DIS_JTAG (odd = disabled)
                data0 >> 19 & 1,  # DIS_PAD_JTAG
                data0 >> 11 & 1,  # DIS_USB_SERIAL_JTAG
                0,  # no data cache on the C3
                data0 >> 10 & 1,  # DIS_DOWNLOAD_ICACHE
            )
        ):
            flags |= on << bit
        purposes = [data1 >> 24 & 0xF, data1 >> 28 & 0xF] + [data2 >> (4 * i) & 0xF for i in range(4)]
        return struct.pack("<IB7BII", flags, data1 >> 18 & 0x7, *purposes, 0, C3_CHIP_ID, 0)

    def _write_spi(self, addr: int, value: int) -> None:
        if addr == SPI_CMD and value & SPI_CMD_USR:
            self._run_spi_user_command()
            value &= ~SPI_CMD_USR  # the hardware clears USR when the command is done
        self._stored[addr] = value

    def _write_wprotect(self, addr: int, value: int) -> None:
        was_unlocked = self._stored.get(addr) == RTC_WDT_WKEY
        self._stored[addr] = value
        armed = self._stored.get(RTC_WDT_CONFIG0, 0) & _WDT_EN
        if addr == RTC_WDT_WPROTECT and was_unlocked and value != RTC_WDT_WKEY and armed:
            self._on_watchdog_locked()

    def _write_rtc_wdt(self, addr: int, value: int) -> None:
        if self._stored.get(RTC_WDT_WPROTECT) != RTC_WDT_WKEY:
            return  # write-protected, as after reset
        was_armed = self._stored.get(RTC_WDT_CONFIG0, 0) & _WDT_EN
        self._stored[addr] = value
        if addr == RTC_WDT_CONFIG0 and value & _WDT_EN and not was_armed:
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
