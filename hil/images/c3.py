"""ESP32-C3 facts that image building and checking share: chip id, header codes, memory map.

Kept in one place so the builder, the checker and the virtual bootloader cannot disagree
about which addresses are flash-mapped, which are loaded into RAM, and which RAM the
2nd-stage bootloader itself occupies while it loads an app.

Sources: SPEC_FACTS.md §3; ESP-IDF `soc/esp32c3/include/soc/soc.h` and
`bootloader/subproject/main/ld/esp32c3/bootloader.memory.ld.in`.
"""

from __future__ import annotations

from typing import Literal

CHIP_ID_ESP32C3 = 5
IMAGE_MAGIC = 0xE9
CHECKSUM_SEED = 0xEF
MAX_SEGMENTS = 16
SIXTEEN_MB = 0x100_0000
MMU_PAGE_SIZE = 0x1_0000
MMU_PAGE_SIZE_LOG2 = 16

IMAGE_HEADER_LEN = 24
SEGMENT_HEADER_LEN = 8
HASH_LEN = 32

# Where the ROM finds the 2nd-stage bootloader on the C3 (other chips: 0x1000 / 0x2000).
BOOTLOADER_OFFSET = 0x0

# Header byte 2 and byte 3 codes (esptool's FLASH_MODES / FLASH_SIZES / FLASH_FREQUENCY).
SPI_MODE_QIO = 0
SPI_MODE_QOUT = 1
SPI_MODE_DIO = 2
SPI_MODE_DOUT = 3
FLASH_FREQ_80M = 0xF
FLASH_SIZE_4MB = 0x2
WP_PIN_DISABLED = 0xEE

# Flash-mapped ("map") windows.
DROM_LOW, DROM_HIGH = 0x3C00_0000, 0x3C80_0000
IROM_LOW, IROM_HIGH = 0x4200_0000, 0x4280_0000
# RAM the bootloader loads into ("load").
DRAM_LOW, DRAM_HIGH = 0x3FC8_0000, 0x3FCE_0000
IRAM_LOW, IRAM_HIGH = 0x4037_C000, 0x403E_0000
RTC_LOW, RTC_HIGH = 0x5000_0000, 0x5000_2000
# The part of IRAM that is the same SRAM as DRAM, seen on the instruction bus.
DIRAM_IRAM_LOW, DIRAM_IRAM_HIGH = 0x4038_0000, 0x403E_0000
DIRAM_DRAM_LOW, DIRAM_DRAM_HIGH = 0x3FC8_0000, 0x3FCE_0000
IRAM_DRAM_OFFSET = 0x70_0000
# Addresses below this are never loaded: 0x0 marks a padding segment.
PADDING_LIMIT = 0x1000_0000

# What the running 2nd-stage bootloader occupies (bootloader.memory.ld.in, IDF v5.x):
# its static data (dram_seg), its "loader" code (iram_loader_seg) and the ROM stack it
# runs on, of which it keeps a 32 KiB headroom below the stack pointer.
BOOTLOADER_DATA = (0x3FCD_5710, 0x3FCD_A710)
BOOTLOADER_LOADER_IRAM = (0x403C_E710, 0x403D_5710)
ROM_STACK_START = 0x3FCD_E710
STACK_LOAD_HEADROOM = 0x8000
BOOTLOADER_STACK = (ROM_STACK_START - STACK_LOAD_HEADROOM, ROM_STACK_START)

SegmentKind = Literal["map", "load", ""]


def is_drom(addr: int) -> bool:
    """Data bus flash window (rodata, the app descriptor)."""
    return DROM_LOW <= addr < DROM_HIGH


def is_irom(addr: int) -> bool:
    """Instruction bus flash window (code executed from flash)."""
    return IROM_LOW <= addr < IROM_HIGH


def is_dram(addr: int) -> bool:
    return DRAM_LOW <= addr < DRAM_HIGH


def is_iram(addr: int) -> bool:
    return IRAM_LOW <= addr < IRAM_HIGH


def is_rtc(addr: int) -> bool:
    return RTC_LOW <= addr < RTC_HIGH


def segment_kind(load_addr: int) -> SegmentKind:
    """How the bootloader treats a segment: mapped through the MMU, loaded, or skipped.

    Mirrors ESP-IDF's should_map()/should_load(): anything not flash-mapped at or above
    0x10000000 is loaded (whether the address is sane is a separate check); lower
    addresses are padding.
    """
    if is_drom(load_addr) or is_irom(load_addr):
        return "map"
    if load_addr < PADDING_LIMIT:
        return ""
    return "load"
