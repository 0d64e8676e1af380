"""The 2nd-stage bootloader's image checks, in ESP-IDF's order and with its messages.

Order (ESP-IDF `esp_image_format.c`, `bootloader_common_loader.c`; SPEC_FACTS.md §3):
partition size, magic, chip id, chip revision (min, then max), segment count, then per
segment its length, MMU alignment and RAM destination, then checksum, fit in the
partition, and the appended SHA-256. The first failure raises ImageError with the text the
bootloader logs, so the virtual rig can print it and refuse to boot like a real board.
"""

from __future__ import annotations

from hil.images.c3 import (
    BOOTLOADER_DATA,
    BOOTLOADER_LOADER_IRAM,
    BOOTLOADER_OFFSET,
    BOOTLOADER_STACK,
    CHIP_ID_ESP32C3,
    DIRAM_DRAM_HIGH,
    DIRAM_DRAM_LOW,
    DIRAM_IRAM_HIGH,
    DIRAM_IRAM_LOW,
    IMAGE_HEADER_LEN,
    IRAM_DRAM_OFFSET,
    MMU_PAGE_SIZE,
    SIXTEEN_MB,
    is_dram,
    is_iram,
    is_rtc,
)
from hil.images.errors import ImageError
from hil.images.image import (
    AppImage,
    ImageHeader,
    Segment,
    check_segment_count,
    finish_image,
    read_header,
    read_segment,
)


def _rev(full: int) -> str:
    return f"v{full // 100}.{full % 100}"


def _max_rev_set(max_rev_full: int) -> bool:
    return max_rev_full not in (0, 0xFFFF)


def check_chip(header: ImageHeader, chip_rev_full: int, *, check_max: bool) -> None:
    """Chip id, then minimum and (for apps) maximum chip revision."""
    if header.chip_id != CHIP_ID_ESP32C3:
        raise ImageError(f"mismatch chip ID, expected {CHIP_ID_ESP32C3}, found {header.chip_id}")
    if header.min_rev_full > chip_rev_full:
        raise ImageError(
            f"Image requires chip rev >= {_rev(header.min_rev_full)}, "
            f"but chip is {_rev(chip_rev_full)}"
        )
    if check_max and _max_rev_set(header.max_rev_full) and chip_rev_full > header.max_rev_full:
        raise ImageError(
            f"Image requires chip rev <= {_rev(header.max_rev_full)}, "
            f"but chip is {_rev(chip_rev_full)}"
        )


def _overlaps(region: tuple[int, int], start: int, end: int) -> bool:
    return region[1] > start and end > region[0]


def _load_conflict(start: int, end: int, *, recurse: bool = True) -> tuple[int, int, str] | None:
    """Why loading [start, end) would clobber the running bootloader, or None if it is fine.

    Mirrors verify_load_addresses(): DRAM must miss the bootloader's stack headroom and its
    static data, IRAM must miss the loader code, and the shared D/IRAM is checked under its
    other address as well. Returns the (possibly translated) range and the reason.
    """
    if start == end:
        return None
    last = end - 1
    if is_dram(start) and is_dram(last):
        if _overlaps(BOOTLOADER_STACK, start, end):
            return start, end, "overlaps bootloader stack"
        if _overlaps(BOOTLOADER_DATA, start, end):
            return start, end, "overlaps bootloader data"
        if recurse and _overlaps((DIRAM_DRAM_LOW, DIRAM_DRAM_HIGH), start, end):
            lo = max(start, DIRAM_DRAM_LOW) + IRAM_DRAM_OFFSET
            hi = min(end, DIRAM_DRAM_HIGH) + IRAM_DRAM_OFFSET
            return _load_conflict(lo, hi, recurse=False)
        return None
    if is_iram(start) and is_iram(last):
        if _overlaps(BOOTLOADER_LOADER_IRAM, start, end):
            return start, end, "overlaps loader IRAM"
        if recurse and _overlaps((DIRAM_IRAM_LOW, DIRAM_IRAM_HIGH), start, end):
            lo = max(start, DIRAM_IRAM_LOW) - IRAM_DRAM_OFFSET
            hi = min(end, DIRAM_IRAM_HIGH) - IRAM_DRAM_OFFSET
            return _load_conflict(lo, hi, recurse=False)
        return None
    if is_rtc(start) and is_rtc(last):
        return None
    return start, end, "bad load address range"


def check_segment(index: int, segment: Segment, flash_offset: int, *, loading: bool) -> None:
    """MMU alignment for mapped segments; RAM destination for loaded ones (app boot only)."""
    data_addr = flash_offset + segment.data_offset
    if segment.kind == "map" and data_addr % MMU_PAGE_SIZE != segment.load_addr % MMU_PAGE_SIZE:
        raise ImageError(
            f"Segment {index} load address 0x{segment.load_addr:08x}, "
            f"doesn't match data 0x{data_addr:08x}"
        )
    if loading and segment.kind == "load":
        conflict = _load_conflict(segment.load_addr, segment.load_addr + len(segment.data))
        if conflict is not None:
            lo, hi, reason = conflict
            raise ImageError(f"Segment {index} 0x{lo:08x}-0x{hi:08x} invalid: {reason}")


def check_image(
    data: bytes,
    *,
    flash_offset: int,
    partition_size: int | None,
    chip_rev_full: int = 4,
    check_hash: bool = True,
) -> AppImage:
    """Check an image as the 2nd-stage bootloader does before it boots it.

    `data` starts at the image and may run on past it (a whole partition read from
    flash); only the image's own bytes count. The real bootloader reads on past the
    partition end, so an image written across it passes the checksum and then fails the
    fit check; pass flash from the offset to the end of flash to get that, since data
    that ends inside the image raises a "truncated" ImageError (not an IDF message).
    `partition_size=None` skips the fit check.
    The image at flash offset 0x0 is the bootloader itself and is judged the way IDF
    verifies it: no maximum-revision check, no RAM-clobber check (nothing is loaded) and
    no hash check (IDF skips it there without secure boot, since esptool may rewrite the
    header while flashing).
    """
    if partition_size is not None and partition_size > SIXTEEN_MB:
        raise ImageError(f"partition size 0x{partition_size:x} invalid, larger than 16MB")
    is_app = flash_offset != BOOTLOADER_OFFSET
    header = read_header(data, flash_offset)
    check_chip(header, chip_rev_full, check_max=is_app)
    check_segment_count(header, flash_offset)

    segments: list[Segment] = []
    offset = IMAGE_HEADER_LEN
    for index in range(header.segment_count):
        segment = read_segment(data, index, offset, flash_offset)
        check_segment(index, segment, flash_offset, loading=is_app)
        segments.append(segment)
        offset = segment.data_offset + len(segment.data)

    image = finish_image(data, header, tuple(segments), flash_offset)
    if not image.checksum_ok:
        raise ImageError(
            f"Checksum failed. Calculated 0x{image.checksum_calculated:x} "
            f"read 0x{image.checksum_stored:x}"
        )
    if partition_size is not None and image.length > partition_size:
        raise ImageError(
            f"Image length {image.length} doesn't fit in partition length {partition_size}"
        )
    if check_hash and is_app and image.hash_appended and not image.hash_ok:
        raise ImageError("Image hash failed - image is corrupt")
    return image
