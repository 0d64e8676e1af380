"""esp_app_desc_t and esp_bootloader_desc_t: the identity records inside an image.

The app descriptor (256 bytes at image offset 0x20) is what the bootloader, the OTA code
and `esptool image-info` read to learn an app's version and project; the bootloader
descriptor (80 bytes at the start of the bootloader's DRAM segment) carries the IDF
version and build time that the bootloader prints in its banner.
Layouts: SPEC_FACTS.md §3, ESP-IDF `esp_app_desc.h` / `esp_bootloader_desc.h`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hil.images.c3 import MMU_PAGE_SIZE_LOG2
from hil.images.errors import ImageError

APP_DESC_MAGIC = 0xABCD5432
APP_DESC_SIZE = 256
BOOTLOADER_DESC_MAGIC = 0x50
BOOTLOADER_DESC_SIZE = 80

# C3 defaults of CONFIG_ESP_EFUSE_BLOCK_REV_MIN_FULL / _MAX_FULL (v0.0 .. v1.99).
EFUSE_BLK_REV_MIN_FULL = 0
EFUSE_BLK_REV_MAX_FULL = 199

# magic, secure_version, reserv1[2], version, project_name, time, date, idf_ver,
# app_elf_sha256, min_efuse_blk_rev_full, max_efuse_blk_rev_full, mmu_page_size,
# reserv3[3], reserv2[18]
_APP_DESC = struct.Struct("<II8s32s32s16s16s32s32sHHB3s72s")
# magic_byte, reserved[2], secure_version, version, idf_ver, date_time, reserved2
_BOOT_DESC = struct.Struct("<B2sBI32s24s16s")
assert _APP_DESC.size == APP_DESC_SIZE
assert _BOOT_DESC.size == BOOTLOADER_DESC_SIZE


def encode_cstr(value: str, size: int, field: str) -> bytes:
    """A NUL-terminated, NUL-padded char[size]; like the C compiler, keep room for the NUL."""
    raw = value.encode()
    if b"\0" in raw:
        raise ValueError(f"{field} must not contain NUL characters: {value!r}")
    if len(raw) > size - 1:
        raise ValueError(
            f"{field} {value!r} is {len(raw)} bytes; the field holds at most {size - 1}"
        )
    return raw.ljust(size, b"\0")


def decode_cstr(raw: bytes) -> str:
    """Text up to the first NUL; undecodable bytes are kept visible, not dropped."""
    return raw.split(b"\0", 1)[0].decode("utf-8", errors="replace")


@dataclass(frozen=True)
class AppDescriptor:
    """The fields of esp_app_desc_t a test or the virtual rig cares about.

    The eFuse block revision range and the MMU page size are fixed to what IDF v5.4
    writes for the C3, so they are not fields.
    """

    version: str
    project_name: str
    secure_version: int = 0
    time: str = "00:00:00"
    date: str = "Jan  1 2026"
    idf_ver: str = "v5.4.1"
    elf_sha256: bytes = bytes(32)

    def __post_init__(self) -> None:
        # Encoding validates every length; do it once here so a bad descriptor fails
        # where it is made, not later inside an image build.
        self.to_bytes()

    def to_bytes(self) -> bytes:
        """Exactly 256 bytes, laid out as esp_app_desc_t."""
        if not 0 <= self.secure_version <= 0xFFFF_FFFF:
            raise ValueError(f"secure_version {self.secure_version} is not a u32")
        if len(self.elf_sha256) != 32:
            raise ValueError(f"elf_sha256 must be 32 bytes, got {len(self.elf_sha256)}")
        return _APP_DESC.pack(
            APP_DESC_MAGIC,
            self.secure_version,
            bytes(8),
            encode_cstr(self.version, 32, "version"),
            encode_cstr(self.project_name, 32, "project_name"),
            encode_cstr(self.time, 16, "time"),
            encode_cstr(self.date, 16, "date"),
            encode_cstr(self.idf_ver, 32, "idf_ver"),
            self.elf_sha256,
            EFUSE_BLK_REV_MIN_FULL,
            EFUSE_BLK_REV_MAX_FULL,
            MMU_PAGE_SIZE_LOG2,
            bytes(3),
            bytes(72),
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> AppDescriptor:
        """Parse the first 256 bytes of `data` (an app's first DROM segment)."""
        if len(data) < APP_DESC_SIZE:
            raise ImageError(
                f"app descriptor needs {APP_DESC_SIZE} bytes, only {len(data)} available"
            )
        fields = _APP_DESC.unpack_from(data)
        if fields[0] != APP_DESC_MAGIC:
            raise ImageError(
                f"app descriptor has invalid magic word 0x{fields[0]:08x} "
                f"(expected 0x{APP_DESC_MAGIC:08x})"
            )
        try:
            return cls(
                version=decode_cstr(fields[3]),
                project_name=decode_cstr(fields[4]),
                secure_version=fields[1],
                time=decode_cstr(fields[5]),
                date=decode_cstr(fields[6]),
                idf_ver=decode_cstr(fields[7]),
                elf_sha256=fields[8],
            )
        except ValueError as err:  # e.g. a 32-character version with no NUL
            raise ImageError(f"app descriptor is malformed: {err}") from err

    @property
    def compile_time(self) -> str:
        """ "Mmm dd yyyy HH:MM:SS", as the app_init banner prints it."""
        return f"{self.date} {self.time}"


@dataclass(frozen=True)
class BootloaderDescriptor:
    """esp_bootloader_desc_t: what the bootloader banner prints about itself."""

    idf_ver: str = "v5.4.1"
    date_time: str = "Apr  5 2025 18:11:33"
    version: int = 1
    secure_version: int = 0

    def __post_init__(self) -> None:
        self.to_bytes()

    def to_bytes(self) -> bytes:
        """Exactly 80 bytes, laid out as esp_bootloader_desc_t."""
        if not 0 <= self.secure_version <= 0xFF:
            raise ValueError(f"secure_version {self.secure_version} is not a u8")
        if not 0 <= self.version <= 0xFFFF_FFFF:
            raise ValueError(f"version {self.version} is not a u32")
        return _BOOT_DESC.pack(
            BOOTLOADER_DESC_MAGIC,
            bytes(2),
            self.secure_version,
            self.version,
            encode_cstr(self.idf_ver, 32, "idf_ver"),
            encode_cstr(self.date_time, 24, "date_time"),
            bytes(16),
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> BootloaderDescriptor:
        """Parse the first 80 bytes of `data` (the bootloader's first DRAM segment)."""
        if len(data) < BOOTLOADER_DESC_SIZE:
            raise ImageError(
                f"bootloader descriptor needs {BOOTLOADER_DESC_SIZE} bytes, "
                f"only {len(data)} available"
            )
        magic, _, secure_version, version, idf_ver, date_time, _ = _BOOT_DESC.unpack_from(data)
        if magic != BOOTLOADER_DESC_MAGIC:
            raise ImageError(
                f"bootloader descriptor has invalid magic byte 0x{magic:02x} "
                f"(expected 0x{BOOTLOADER_DESC_MAGIC:02x})"
            )
        try:
            return cls(
                idf_ver=decode_cstr(idf_ver),
                date_time=decode_cstr(date_time),
                version=version,
                secure_version=secure_version,
            )
        except ValueError as err:
            raise ImageError(f"bootloader descriptor is malformed: {err}") from err
