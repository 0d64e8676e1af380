"""Structural parser of ESP32-C3 app/bootloader images (SPEC_FACTS.md §3).

Our own parser rather than esptool's `LoadFirmwareImage`: the virtual bootloader must fail
exactly where, and with the words, ESP-IDF's `esp_image_format.c` fails, and it must cope
with `data` being a whole partition read from flash (the image followed by anything).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from functools import reduce
from operator import xor

from hil.images.c3 import (
    CHECKSUM_SEED,
    HASH_LEN,
    IMAGE_HEADER_LEN,
    IMAGE_MAGIC,
    MAX_SEGMENTS,
    SEGMENT_HEADER_LEN,
    SIXTEEN_MB,
    SegmentKind,
    is_drom,
    segment_kind,
)
from hil.images.descriptor import APP_DESC_MAGIC, AppDescriptor
from hil.images.errors import ImageError

# magic, segment_count, spi_mode, spi_speed_size, entry_addr, wp_pin, spi_pin_drv[3],
# chip_id, min_chip_rev, min_chip_rev_full, max_chip_rev_full, reserved[4], hash_appended
_HEADER = struct.Struct("<BBBBIB3sHBHH4sB")
_SEGMENT_HEADER = struct.Struct("<II")
assert _HEADER.size == IMAGE_HEADER_LEN


@dataclass(frozen=True)
class Segment:
    """One image segment. `file_offset` is where its 8-byte header sits in the image."""

    load_addr: int
    data: bytes
    file_offset: int

    @property
    def kind(self) -> SegmentKind:
        """ "map" (flash via MMU), "load" (copied to RAM) or "" (padding)."""
        return segment_kind(self.load_addr)

    @property
    def data_offset(self) -> int:
        """Offset of the segment's data inside the image (header + 8)."""
        return self.file_offset + SEGMENT_HEADER_LEN


@dataclass(frozen=True)
class ImageHeader:
    """The 24-byte image header, decoded (internal: check_image needs it before segments)."""

    segment_count: int
    spi_mode: int
    spi_speed_size: int
    entry: int
    wp_pin: int
    chip_id: int
    min_rev: int
    min_rev_full: int
    max_rev_full: int
    hash_appended: bool


@dataclass(frozen=True)
class AppImage:
    """A parsed image: header fields, segments, and both stored and calculated integrity values."""

    spi_mode: int
    flash_freq: int
    flash_size: int
    entry: int
    chip_id: int
    min_rev_full: int
    max_rev_full: int
    hash_appended: bool
    segments: tuple[Segment, ...]
    checksum_stored: int
    checksum_calculated: int
    sha256_stored: bytes | None
    sha256_calculated: bytes | None
    length: int
    descriptor: AppDescriptor | None

    @property
    def checksum_ok(self) -> bool:
        return self.checksum_stored == self.checksum_calculated

    @property
    def hash_ok(self) -> bool:
        """True when a hash is appended and matches (False when there is none to match)."""
        return self.sha256_stored is not None and self.sha256_stored == self.sha256_calculated


def truncated(flash_offset: int, what: str, need: int, have: int) -> ImageError:
    """Not an IDF message (flash always reads): our data simply ended too early."""
    return ImageError(
        f"image at 0x{flash_offset:x} is truncated: {what} needs {need} bytes, "
        f"only {have} available"
    )


def read_header(data: bytes, flash_offset: int) -> ImageHeader:
    """Decode the header; the magic is checked first, as the bootloader does."""
    if not data or data[0] != IMAGE_MAGIC:
        raise ImageError(
            f"image at 0x{flash_offset:x} has invalid magic byte (nothing flashed here?)"
        )
    if len(data) < IMAGE_HEADER_LEN:
        raise truncated(flash_offset, "the image header", IMAGE_HEADER_LEN, len(data))
    (
        _magic,
        count,
        spi_mode,
        speed_size,
        entry,
        wp_pin,
        _drive,
        chip_id,
        min_rev,
        min_rev_full,
        max_rev_full,
        _reserved,
        hash_appended,
    ) = _HEADER.unpack_from(data)
    return ImageHeader(
        segment_count=count,
        spi_mode=spi_mode,
        spi_speed_size=speed_size,
        entry=entry,
        wp_pin=wp_pin,
        chip_id=chip_id,
        min_rev=min_rev,
        min_rev_full=min_rev_full,
        max_rev_full=max_rev_full,
        # The bootloader tests the byte for non-zero; esptool insists on 0 or 1.
        hash_appended=hash_appended != 0,
    )


def check_segment_count(header: ImageHeader, flash_offset: int) -> None:
    if header.segment_count > MAX_SEGMENTS:
        raise ImageError(
            f"image at 0x{flash_offset:x} segment count {header.segment_count} "
            f"exceeds max {MAX_SEGMENTS}"
        )


def read_segment(data: bytes, index: int, offset: int, flash_offset: int) -> Segment:
    """Read segment `index` whose header is at image offset `offset`; length rules apply."""
    end_of_header = offset + SEGMENT_HEADER_LEN
    if end_of_header > len(data):
        raise truncated(flash_offset, f"segment {index} header", end_of_header, len(data))
    load_addr, data_len = _SEGMENT_HEADER.unpack_from(data, offset)
    if data_len % 4 != 0 or data_len >= SIXTEEN_MB:
        raise ImageError(f"invalid segment length 0x{data_len:x}")
    end = end_of_header + data_len
    if end > len(data):
        raise truncated(flash_offset, f"segment {index} data", end, len(data))
    return Segment(load_addr=load_addr, data=bytes(data[end_of_header:end]), file_offset=offset)


def xor_of_bytes(data: bytes) -> int:
    """XOR of all bytes, folded as one big integer so a 1 MB image costs milliseconds."""
    width = len(data)
    folded = int.from_bytes(data, "little")
    while width > 1:
        half = (width + 1) // 2
        folded = (folded & ((1 << (8 * half)) - 1)) ^ (folded >> (8 * half))
        width = half
    return folded


def checksum_of(segments: tuple[Segment, ...]) -> int:
    """0xEF XOR every byte of every segment's data (headers excluded)."""
    return reduce(xor, (xor_of_bytes(s.data) for s in segments), CHECKSUM_SEED)


def checksum_offset(end_of_segments: int) -> int:
    """The checksum is the last byte of the 16-byte block the segments end in."""
    return ((end_of_segments + 1 + 15) & ~15) - 1


def first_descriptor(segments: tuple[Segment, ...]) -> AppDescriptor | None:
    """The app descriptor, if the first segment is DROM and starts with its magic."""
    if not segments or not is_drom(segments[0].load_addr):
        return None
    first = segments[0].data
    if len(first) < 4 or struct.unpack_from("<I", first)[0] != APP_DESC_MAGIC:
        return None
    try:
        return AppDescriptor.from_bytes(first)
    except ImageError:
        # A descriptor the bootloader does not read at boot cannot make an image unbootable.
        return None


def finish_image(
    data: bytes, header: ImageHeader, segments: tuple[Segment, ...], flash_offset: int
) -> AppImage:
    """Read checksum and appended hash after the last segment and assemble the result."""
    end = segments[-1].data_offset + len(segments[-1].data) if segments else IMAGE_HEADER_LEN
    cks_at = checksum_offset(end)
    if cks_at >= len(data):
        raise truncated(flash_offset, "the checksum", cks_at + 1, len(data))
    length = cks_at + 1
    sha_stored: bytes | None = None
    sha_calc: bytes | None = None
    if header.hash_appended:
        if length + HASH_LEN > len(data):
            raise truncated(flash_offset, "the appended SHA-256", length + HASH_LEN, len(data))
        sha_stored = bytes(data[length : length + HASH_LEN])
        sha_calc = hashlib.sha256(data[:length]).digest()
        length += HASH_LEN
    return AppImage(
        spi_mode=header.spi_mode,
        flash_freq=header.spi_speed_size & 0x0F,
        flash_size=header.spi_speed_size >> 4,
        entry=header.entry,
        chip_id=header.chip_id,
        min_rev_full=header.min_rev_full,
        max_rev_full=header.max_rev_full,
        hash_appended=header.hash_appended,
        segments=segments,
        checksum_stored=data[cks_at],
        checksum_calculated=checksum_of(segments),
        sha256_stored=sha_stored,
        sha256_calculated=sha_calc,
        length=length,
        descriptor=first_descriptor(segments),
    )


def parse_image(data: bytes, *, flash_offset: int = 0) -> AppImage:
    """Parse an image's structure without judging it (checksum/hash are reported, not checked).

    Raises ImageError for a bad magic byte, more than 16 segments, a segment length that
    is not a multiple of 4, or data that ends before the image does. `flash_offset` only
    appears in messages.
    """
    header = read_header(data, flash_offset)
    check_segment_count(header, flash_offset)
    segments: list[Segment] = []
    offset = IMAGE_HEADER_LEN
    for index in range(header.segment_count):
        segment = read_segment(data, index, offset, flash_offset)
        segments.append(segment)
        offset = segment.data_offset + len(segment.data)
    return finish_image(data, header, tuple(segments), flash_offset)
