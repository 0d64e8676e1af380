"""The binary partition table at 0x8000 (SPEC_FACTS.md §4), read and written.

Both sides need it: the provisioning step writes the table, the virtual bootloader reads it
from flash, validates it as ESP-IDF's `esp_partition_table_verify` does (same messages) and
prints it with the exact row format of its boot log.
"""

from __future__ import annotations

import hashlib
import itertools
import struct
from dataclasses import dataclass
from enum import IntEnum

PARTITION_TABLE_OFFSET = 0x8000
PARTITION_TABLE_MAX_LEN = 0xC00
PARTITION_ENTRY_LEN = 32
PARTITION_TABLE_MAX_ENTRIES = PARTITION_TABLE_MAX_LEN // PARTITION_ENTRY_LEN
PARTITION_MAGIC = 0x50AA
PARTITION_MAGIC_MD5 = 0xEBEB
FLASH_SIZE_DEFAULT = 4 * 1024 * 1024
APP_ALIGN = 0x1_0000
DATA_ALIGN = 0x1000
OTADATA_PARTITION_SIZE = 0x2000

FLAG_ENCRYPTED = 1 << 0
FLAG_READONLY = 1 << 1

BOOT_LOG_HEADER = "## Label            Usage          Type ST Offset   Length"


class PartitionType(IntEnum):
    APP = 0x00
    DATA = 0x01


# App subtypes.
FACTORY = 0x00
OTA_0 = 0x10
OTA_1 = 0x11
OTA_2 = 0x12
OTA_3 = 0x13
OTA_4 = 0x14
OTA_5 = 0x15
OTA_6 = 0x16
OTA_7 = 0x17
OTA_8 = 0x18
OTA_9 = 0x19
OTA_10 = 0x1A
OTA_11 = 0x1B
OTA_12 = 0x1C
OTA_13 = 0x1D
OTA_14 = 0x1E
OTA_15 = 0x1F
TEST = 0x20
OTA_FLAG = 0x10
OTA_MASK = 0x0F

# Data subtypes.
OTA = 0x00
PHY = 0x01
NVS = 0x02
COREDUMP = 0x03
NVS_KEYS = 0x04
EFUSE = 0x05
UNDEFINED = 0x06
ESPHTTPD = 0x80
FAT = 0x81
SPIFFS = 0x82
LITTLEFS = 0x83

_ENTRY = struct.Struct("<HBBII16sI")
assert _ENTRY.size == PARTITION_ENTRY_LEN

# The bootloader's "Usage" column (bootloader_utility_load_partition_table).
_DATA_USAGE = {
    OTA: "OTA data",
    PHY: "RF data",
    NVS: "WiFi data",
    NVS_KEYS: "NVS keys",
    EFUSE: "efuse",
}


class PartitionTableError(ValueError):
    """A partition table the bootloader (or gen_esp32part) would reject; says which entry."""


@dataclass(frozen=True)
class Partition:
    """One 32-byte table entry. `label` is at most 16 bytes of UTF-8."""

    label: str
    type: PartitionType | int
    subtype: int
    offset: int
    size: int
    flags: int = 0

    def __post_init__(self) -> None:
        if len(self.label.encode()) > 16 or "\0" in self.label:
            raise PartitionTableError(
                f"partition label {self.label!r} must be at most 16 bytes without NULs"
            )
        if not (0 <= self.type <= 0xFE and 0 <= self.subtype <= 0xFF):
            raise PartitionTableError(
                f"partition {self.label!r}: type 0x{self.type:x} / subtype 0x{self.subtype:x} "
                "out of range"
            )
        for name in ("offset", "size", "flags"):
            value = getattr(self, name)
            if not 0 <= value <= 0xFFFF_FFFF:
                raise PartitionTableError(f"partition {self.label!r}: {name} {value} is not a u32")
        if self.type in (PartitionType.APP, PartitionType.DATA):
            object.__setattr__(self, "type", PartitionType(self.type))

    @property
    def end(self) -> int:
        return self.offset + self.size

    @property
    def is_app(self) -> bool:
        return self.type == PartitionType.APP

    @property
    def ota_index(self) -> int | None:
        """N for an ota_N app partition, else None."""
        if self.is_app and self.subtype & ~OTA_MASK == OTA_FLAG:
            return self.subtype & OTA_MASK
        return None

    @property
    def usage(self) -> str:
        """The bootloader's Usage column for this entry."""
        if self.type == PartitionType.APP:
            if self.subtype == FACTORY:
                return "factory app"
            if self.subtype == TEST:
                return "test app"
            return "OTA app" if self.ota_index is not None else "Unknown app"
        if self.type == PartitionType.DATA:
            return _DATA_USAGE.get(self.subtype, "Unknown data")
        return "unknown"

    def to_bytes(self) -> bytes:
        return _ENTRY.pack(
            PARTITION_MAGIC,
            self.type,
            self.subtype,
            self.offset,
            self.size,
            self.label.encode().ljust(16, b"\0"),
            self.flags,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Partition:
        magic, ptype, subtype, offset, size, label, flags = _ENTRY.unpack_from(data)
        if magic != PARTITION_MAGIC:
            raise PartitionTableError(f"invalid partition entry magic 0x{magic:04x}")
        return cls(
            label=label.split(b"\0", 1)[0].decode("utf-8", errors="replace"),
            type=ptype,
            subtype=subtype,
            offset=offset,
            size=size,
            flags=flags,
        )


@dataclass(frozen=True)
class PartitionTable:
    """An ordered partition table; order matters (the boot log numbers rows by it)."""

    partitions: tuple[Partition, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "partitions", tuple(self.partitions))
        if len(self.partitions) > PARTITION_TABLE_MAX_ENTRIES - 1:
            raise PartitionTableError(
                f"{len(self.partitions)} partitions do not fit: the table holds at most "
                f"{PARTITION_TABLE_MAX_ENTRIES - 1} entries plus its MD5 row"
            )

    def to_bytes(self) -> bytes:
        """Exactly 0xC00 bytes: entries, the MD5 row (EB EB, 14×FF, MD5), 0xFF fill."""
        entries = b"".join(p.to_bytes() for p in self.partitions)
        md5_row = b"\xeb\xeb" + b"\xff" * 14 + hashlib.md5(entries).digest()
        return (entries + md5_row).ljust(PARTITION_TABLE_MAX_LEN, b"\xff")

    @classmethod
    def from_bytes(cls, data: bytes) -> PartitionTable:
        """Parse as esp_partition_table_verify does: entries until an erased (FF FF) row.

        An MD5 row is optional (gen_esp32part --disable-md5sum) but, when present, must
        match the entries before it.
        """
        partitions: list[Partition] = []
        md5_seen = False
        for index in range(PARTITION_TABLE_MAX_ENTRIES):
            start = index * PARTITION_ENTRY_LEN
            row = data[start : start + PARTITION_ENTRY_LEN]
            if len(row) < PARTITION_ENTRY_LEN:
                break
            (magic,) = struct.unpack_from("<H", row)
            if magic == PARTITION_MAGIC:
                partitions.append(Partition.from_bytes(row))
            elif magic == PARTITION_MAGIC_MD5:
                if md5_seen:
                    raise PartitionTableError("Only one MD5 checksum is allowed")
                md5_seen = True
                if hashlib.md5(data[:start]).digest() != row[16:]:
                    raise PartitionTableError("Incorrect MD5 checksum")
            elif magic == 0xFFFF:
                return cls(tuple(partitions))
            else:
                raise PartitionTableError(f"partition {index} invalid magic number 0x{magic:x}")
        raise PartitionTableError("partition table has no terminating entry, not valid")

    # -- lookups ---------------------------------------------------------------------------

    def find(self, type: PartitionType | int, subtype: int) -> Partition | None:
        """First partition of this type and subtype, as esp_partition_find_first does."""
        return next((p for p in self.partitions if p.type == type and p.subtype == subtype), None)

    def by_label(self, label: str) -> Partition | None:
        return next((p for p in self.partitions if p.label == label), None)

    def ota_apps(self) -> tuple[Partition, ...]:
        """The ota_N app partitions, by N."""
        apps = [p for p in self.partitions if p.ota_index is not None]
        return tuple(sorted(apps, key=lambda p: p.ota_index or 0))

    @property
    def factory(self) -> Partition | None:
        return self.find(PartitionType.APP, FACTORY)

    @property
    def test(self) -> Partition | None:
        return self.find(PartitionType.APP, TEST)

    @property
    def otadata(self) -> Partition | None:
        return self.find(PartitionType.DATA, OTA)

    @property
    def nvs(self) -> Partition | None:
        return self.find(PartitionType.DATA, NVS)

    # -- rules -----------------------------------------------------------------------------

    def validate(self, flash_size: int = FLASH_SIZE_DEFAULT) -> None:
        """Raise PartitionTableError naming the first partition that breaks a rule.

        Rules of gen_esp32part and the bootloader: unique labels, nothing before the end of
        the table's sector, app partitions on 64 KiB boundaries and data on 4 KiB ones,
        otadata exactly 0x2000 and at most one, no overlaps, everything inside the flash.
        """
        table_end = PARTITION_TABLE_OFFSET + DATA_ALIGN
        seen: set[str] = set()
        for index, part in enumerate(self.partitions):
            name = f"partition {index} '{part.label}'"
            if part.label in seen:
                raise PartitionTableError(f"{name}: label is used twice; labels must be unique")
            seen.add(part.label)
            if part.size == 0:
                raise PartitionTableError(f"{name}: size is 0")
            if part.offset < table_end:
                raise PartitionTableError(
                    f"{name} at 0x{part.offset:x} overlaps the bootloader or the partition "
                    f"table; partitions start at 0x{table_end:x} or later"
                )
            align = APP_ALIGN if part.is_app else DATA_ALIGN
            if part.offset % align:
                kind = "app" if part.is_app else "data"
                raise PartitionTableError(
                    f"{name} offset 0x{part.offset:x} is not aligned to 0x{align:x} "
                    f"({kind} partitions must be)"
                )
            if part.type == PartitionType.DATA and part.subtype == OTA:
                if part.size != OTADATA_PARTITION_SIZE:
                    raise PartitionTableError(
                        f"{name}: otadata partition must have size 0x{OTADATA_PARTITION_SIZE:x}, "
                        f"not 0x{part.size:x}"
                    )
                if part is not self.otadata:
                    raise PartitionTableError(f"{name}: found more than one otadata partition")
            if part.end > flash_size:
                raise PartitionTableError(
                    f"partition {index} invalid - offset 0x{part.offset:x} size 0x{part.size:x} "
                    f"exceeds flash chip size 0x{flash_size:x}"
                )
        ordered = sorted(enumerate(self.partitions), key=lambda item: item[1].offset)
        for (_, lower), (index, upper) in itertools.pairwise(ordered):
            if upper.offset < lower.end:
                raise PartitionTableError(
                    f"partition {index} '{upper.label}' at 0x{upper.offset:x} overlaps "
                    f"'{lower.label}' (0x{lower.offset:x}-0x{lower.end:x})"
                )


def boot_log_rows(table: PartitionTable) -> list[str]:
    """The bootloader's partition rows: "%2d %-16s %-16s %02x %02x %08x %08x"."""
    return [
        f"{i:2d} {p.label:<16s} {p.usage:<16s} {int(p.type):02x} {p.subtype:02x} "
        f"{p.offset:08x} {p.size:08x}"
        for i, p in enumerate(table.partitions)
    ]


TWO_OTA_TABLE = PartitionTable(
    (
        Partition("nvs", PartitionType.DATA, NVS, 0x9000, 0x4000),
        Partition("otadata", PartitionType.DATA, OTA, 0xD000, 0x2000),
        Partition("phy_init", PartitionType.DATA, PHY, 0xF000, 0x1000),
        Partition("factory", PartitionType.APP, FACTORY, 0x1_0000, 0x10_0000),
        Partition("ota_0", PartitionType.APP, OTA_0, 0x11_0000, 0x10_0000),
        Partition("ota_1", PartitionType.APP, OTA_1, 0x21_0000, 0x10_0000),
    )
)
