"""Build ESP32-C3 images the way ESP-IDF's build does, so real tools accept them.

Segment placement (MMU-page alignment of flash segments, padding with RAM data, the
checksum block, the appended SHA-256, secure padding) is esptool's `ESP32C3FirmwareImage`
doing what it does for `elf2image`; this module only decides which segments an app has.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from esptool.bin_image import ELFSection, ESP32C3FirmwareImage

from hil.images.c3 import (
    CHIP_ID_ESP32C3,
    DROM_LOW,
    FLASH_FREQ_80M,
    FLASH_SIZE_4MB,
    HASH_LEN,
    MAX_SEGMENTS,
    MMU_PAGE_SIZE,
    SPI_MODE_DIO,
    is_dram,
    is_iram,
    is_rtc,
)
from hil.images.descriptor import AppDescriptor

# Where IDF's C3 linker script puts code executed from flash: page 0 of the IROM window,
# past the 0x20 bytes the image header and first segment header occupy in that page.
IROM_VADDR = 0x4200_0020
# On the C3 the I and D buses share one MMU table, so IDF links rodata into the DROM
# pages that follow the ones the code occupies; the 0x20 keeps data and vaddr congruent.
PAGE_OFFSET = 0x20
# Size of the stand-in code when a caller gives none.
DEFAULT_TEXT_LEN = 0x6000
# call_start_cpu0 lives in IRAM; without an IRAM segment we still point there.
DEFAULT_ENTRY = 0x4038_0000


def filler(seed: bytes, length: int) -> bytes:
    """Deterministic, code-like (high-entropy) bytes: SHA-256 in counter mode."""
    out = bytearray()
    counter = 0
    while len(out) < length:
        out += hashlib.sha256(seed + counter.to_bytes(4, "little")).digest()
        counter += 1
    return bytes(out[:length])


def _pad4(data: bytes) -> bytes:
    return data + bytes(-len(data) % 4)


def _check_u16(name: str, value: int) -> None:
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"{name} {value} does not fit the header's u16 field")


def save_image(
    segments: Sequence[tuple[str, int, bytes]],
    *,
    entry: int,
    chip_id: int = CHIP_ID_ESP32C3,
    min_rev_full: int = 3,
    max_rev_full: int = 199,
    secure_pad: bool = False,
) -> bytes:
    """Lay out (name, load address, data) segments as a DIO/80m/4MB image with a hash.

    esptool always writes the C3 chip id; any other `chip_id` (to make a wrong-chip image
    for tests) is patched into the header afterwards and the hash recomputed over it.
    """
    _check_u16("chip_id", chip_id)
    _check_u16("min_rev_full", min_rev_full)
    _check_u16("max_rev_full", max_rev_full)
    image: Any = ESP32C3FirmwareImage()
    image.flash_mode = SPI_MODE_DIO
    image.flash_size_freq = (FLASH_SIZE_4MB << 4) | FLASH_FREQ_80M
    image.entrypoint = entry
    image.min_rev = min_rev_full % 100  # the legacy byte holds the minor revision on C3
    image.min_rev_full = min_rev_full
    image.max_rev_full = max_rev_full
    image.append_digest = True
    image.secure_pad = "2" if secure_pad else None
    image.segments = [
        ELFSection(name.encode(), addr, _pad4(data), 0) for name, addr, data in segments
    ]
    out = bytearray(image.save(None))
    if out[1] > MAX_SEGMENTS:
        raise ValueError(
            f"image would need {out[1]} segments after MMU padding; the bootloader allows "
            f"{MAX_SEGMENTS}"
        )
    if chip_id != CHIP_ID_ESP32C3:
        out[12:14] = chip_id.to_bytes(2, "little")
        body = len(out) - HASH_LEN
        out[body:] = hashlib.sha256(out[:body]).digest()
    return bytes(out)


def _drom_vaddr(text_len: int) -> int:
    """First DROM address after the MMU pages the code occupies (see PAGE_OFFSET)."""
    pages = (PAGE_OFFSET + text_len + MMU_PAGE_SIZE - 1) // MMU_PAGE_SIZE
    return DROM_LOW + pages * MMU_PAGE_SIZE + PAGE_OFFSET


def _ram_segments(data_segments: Sequence[tuple[int, bytes]]) -> list[tuple[str, int, bytes]]:
    """Validate caller RAM segments: loadable, word-aligned, non-empty, not overlapping."""
    placed: list[tuple[int, int]] = []
    named: list[tuple[str, int, bytes]] = []
    for addr, data in data_segments:
        if not (is_dram(addr) or is_iram(addr) or is_rtc(addr)):
            raise ValueError(
                f"data segment at 0x{addr:08x} is not a RAM (load) address; DRAM is "
                "0x3FC80000-0x3FCE0000, IRAM 0x4037C000-0x403E0000, RTC 0x50000000-0x50002000"
            )
        if addr % 4:
            raise ValueError(f"data segment at 0x{addr:08x} is not word-aligned")
        if not data:
            raise ValueError(f"data segment at 0x{addr:08x} is empty")
        end = addr + len(_pad4(data))
        for start, stop in placed:
            if addr < stop and start < end:
                raise ValueError(
                    f"data segment 0x{addr:08x}-0x{end:08x} overlaps 0x{start:08x}-0x{stop:08x}"
                )
        placed.append((addr, end))
        named.append((".iram0.text" if is_iram(addr) else ".dram0.data", addr, data))
    return named


def build_app_image(
    desc: AppDescriptor,
    *,
    rodata: bytes = b"",
    text: bytes = b"",
    data_segments: Sequence[tuple[int, bytes]] = (),
    chip_id: int = CHIP_ID_ESP32C3,
    min_rev_full: int = 3,
    max_rev_full: int = 199,
    secure_pad: bool = False,
) -> bytes:
    """An app image shaped like an ESP-IDF v5.4 C3 build, byte-for-byte reproducible.

    Segments: DROM (descriptor, then `rodata`), IROM (`text`, or deterministic stand-in
    code), then the RAM segments of `data_segments`, with esptool padding the flash
    segments onto MMU pages so the image boots from any 64 KiB-aligned partition.
    """
    code = _pad4(text) if text else filler(desc.to_bytes() + b".flash.text", DEFAULT_TEXT_LEN)
    ram = _ram_segments(data_segments)
    entry = next((addr for _, addr, _ in ram if is_iram(addr)), DEFAULT_ENTRY)
    segments = [
        (".flash.rodata", _drom_vaddr(len(code)), desc.to_bytes() + rodata),
        (".flash.text", IROM_VADDR, code),
        *ram,
    ]
    return save_image(
        segments,
        entry=entry,
        chip_id=chip_id,
        min_rev_full=min_rev_full,
        max_rev_full=max_rev_full,
        secure_pad=secure_pad,
    )
