"""What can be checked before a board is touched (rule 6): the files to flash, where they
land, and what the bootloader would make of the images among them.

Files exist and are not empty, offsets are sector-aligned and inside the flash, no two
files overlap, each file fits the partition it lands in (the partition table being
flashed, else the rig's table), and app and bootloader images are for the ESP32-C3
(header chip id 5) and pass the same checks the 2nd-stage bootloader makes. A problem
raises `FlashInputError`, naming the file, the problem and the fix.
"""

from __future__ import annotations

import hashlib
import itertools
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Final

from esptool.targets import ROM_LIST

from hil.images.app import CHIP_ID_ESP32C3, IMAGE_MAGIC, ImageError, check_image
from hil.images.layout import FlashFile
from hil.images.partitions import (
    PARTITION_TABLE_MAX_LEN,
    PARTITION_TABLE_OFFSET,
    Partition,
    PartitionTable,
    PartitionTableError,
)
from hil.link.flash_errors import FlashInputError

__all__ = ["BOOTLOADER_OFFSET", "SECTOR_SIZE", "FlashRegion", "FlashSource", "check_files"]

SECTOR_SIZE: Final = 0x1000
BOOTLOADER_OFFSET: Final = 0x0
_HEADER_CHIP_ID = struct.Struct("<H")
_HEADER_CHIP_ID_AT = 12  # magic, segments, spi mode, speed/size, entry(4), wp, drive(3)
_HEADER_MIN_REV_FULL_AT = 15
_IMAGE_HEADER_LEN = 24

FlashSource = FlashFile | tuple[int, Path | bytes]
"""One thing to flash: a manifest's `FlashFile`, or ``(offset, path or bytes)``."""


@dataclass(frozen=True)
class FlashRegion:
    """One checked file: its bytes (padded to 4 as esptool writes them) and where they go."""

    name: str
    offset: int
    data: bytes = field(repr=False)
    path: Path | None = None

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def end(self) -> int:
        return self.offset + len(self.data)

    @property
    def md5(self) -> str:
        return hashlib.md5(self.data).hexdigest()

    def where(self) -> str:
        return f"{self.name} (at 0x{self.offset:x})"


def _chip_names() -> dict[int, str]:
    names: dict[int, str] = {}
    for cls in ROM_LIST:
        chip_id = getattr(cls, "IMAGE_CHIP_ID", None)
        if isinstance(chip_id, int):
            names.setdefault(chip_id, str(cls.CHIP_NAME))
    return names


def _load(source: object, index: int) -> tuple[int, str, bytes, Path | None]:
    """Offset, display name, bytes and path of one source; FlashInputError if unusable."""
    if isinstance(source, FlashFile):
        offset, payload = source.offset, source.path
    elif isinstance(source, tuple) and len(source) == 2:
        offset, payload = source
    else:
        raise FlashInputError(
            f"files[{index}]: {source!r} is neither a FlashFile nor an (offset, path-or-bytes) "
            "pair; pass e.g. (0x10000, Path('build/app.bin'))"
        )
    if isinstance(payload, str | PathLike):
        path = Path(payload)
        where = f"{path} (at 0x{offset:x})" if isinstance(offset, int) else str(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise FlashInputError(
                f"{where}: no such file; build the firmware first or fix the path"
            ) from None
        except IsADirectoryError:
            raise FlashInputError(
                f"{where}: is a directory, not an image file; fix the path"
            ) from None
        except OSError as exc:
            raise FlashInputError(
                f"{where}: cannot be read ({exc.strerror}); fix its permissions"
            ) from None
        name = str(path)
    elif isinstance(payload, bytes | bytearray | memoryview):
        data, path = bytes(payload), None
        name = f"<{len(data)} bytes>"
    else:
        raise FlashInputError(
            f"files[{index}]: {type(payload).__name__} is not a path or bytes; pass a Path or the image bytes"
        )
    if not isinstance(offset, int) or isinstance(offset, bool):
        raise FlashInputError(f"{name}: offset {offset!r} is not an integer; write e.g. 0x10000")
    return offset, name, data, path


@dataclass(frozen=True)
class _Checker:
    """The pre-connection checks of rule 6, for one set of files."""

    table: PartitionTable
    table_name: str
    flash_size: int

    def partition_at(self, offset: int) -> Partition | None:
        return next((p for p in self.table.partitions if p.offset <= offset < p.end), None)

    def check_region(self, region: FlashRegion) -> None:
        where = region.where()
        if region.offset < PARTITION_TABLE_OFFSET:
            if region.end > PARTITION_TABLE_OFFSET:
                merged = (
                    " (a merged image from `esptool merge-bin` is not supported: flash its "
                    "parts at their offsets)"
                    if region.offset == BOOTLOADER_OFFSET
                    else ""
                )
                raise FlashInputError(
                    f"{where}: {region.size} bytes run past 0x{PARTITION_TABLE_OFFSET:x}, into the "
                    f"partition table; the bootloader region must end before it{merged}"
                )
            if region.offset == BOOTLOADER_OFFSET:
                self.check_image(region, PARTITION_TABLE_OFFSET, "the bootloader region")
            return
        if region.offset == PARTITION_TABLE_OFFSET:
            if region.size > SECTOR_SIZE:
                raise FlashInputError(
                    f"{where}: {region.size} bytes do not fit the partition table's sector "
                    f"(0x{SECTOR_SIZE:x} bytes); this is not a partition table, fix the offset"
                )
            return
        part = self.partition_at(region.offset)
        if part is None:
            crossed = next(
                (
                    p
                    for p in self.table.partitions
                    if p.offset < region.end and region.offset < p.end
                ),
                None,
            )
            if crossed is not None:
                raise FlashInputError(
                    f"{where}: runs from unpartitioned flash into partition '{crossed.label}' "
                    f"at 0x{crossed.offset:x} of {self.table_name}; fix the offset"
                )
            return
        if region.end > part.end:
            inside = (
                ""
                if region.offset == part.offset
                else f" from offset 0x{region.offset - part.offset:x}"
            )
            raise FlashInputError(
                f"{where}: {region.size} bytes do not fit partition '{part.label}' "
                f"(0x{part.size:x} bytes at 0x{part.offset:x}{inside}) of {self.table_name}; "
                "make the image smaller or flash a partition table with a bigger partition"
            )
        if part.is_app and region.offset == part.offset:
            self.check_image(region, part.size, f"app partition '{part.label}'")

    def check_image(self, region: FlashRegion, room: int, what: str) -> None:
        where, data = region.where(), region.data
        if data[0] != IMAGE_MAGIC:
            raise FlashInputError(
                f"{where}: is not an ESP app image (first byte 0x{data[0]:02x}, expected "
                f"0x{IMAGE_MAGIC:02x}) but lands at the start of {what}; flash the .bin that "
                "the build made for it (not the ELF or a data file), or fix the offset"
            )
        if len(data) < _IMAGE_HEADER_LEN:
            raise FlashInputError(
                f"{where}: {len(data)} bytes is too short for an image header; the file is "
                "truncated, rebuild it or copy it again"
            )
        (chip_id,) = _HEADER_CHIP_ID.unpack_from(data, _HEADER_CHIP_ID_AT)
        if chip_id != CHIP_ID_ESP32C3:
            chip = _chip_names().get(chip_id, "an unknown chip")
            raise FlashInputError(
                f"{where}: image is built for {chip} (header chip id {chip_id}), not the "
                f"ESP32-C3 (chip id {CHIP_ID_ESP32C3}); use the esp32c3 build "
                "(idf.py set-target esp32c3) or pick the right firmware"
            )
        # The board's revision is unknown until connected (esptool checks it then), so the
        # revision checks here only reject an image whose own range is impossible.
        (min_rev_full,) = _HEADER_CHIP_ID.unpack_from(data, _HEADER_MIN_REV_FULL_AT)
        try:
            check_image(
                data, flash_offset=region.offset, partition_size=room, chip_rev_full=min_rev_full
            )
        except ImageError as exc:
            raise FlashInputError(
                f"{where}: corrupt image, the bootloader would refuse it: {exc}; rebuild it "
                "or copy it again (a partial download or an edited file looks like this)"
            ) from None


def check_files(
    files: Sequence[FlashSource],
    *,
    partition_table: PartitionTable,
    partition_table_name: str,
    flash_size: int,
) -> tuple[FlashRegion, ...]:
    """Check everything that can be checked without a board; return the files, sorted.

    Raises FlashInputError naming the file, the problem and the fix.
    """
    if isinstance(files, str | bytes | Path | FlashFile) or not isinstance(files, Sequence):
        raise FlashInputError(
            f"files must be a sequence of FlashFile or (offset, path) pairs, not {type(files).__name__}"
        )
    if not files:
        raise FlashInputError(
            "nothing to flash: files is empty; pass at least one (offset, path)"
        )
    regions: list[FlashRegion] = []
    for index, source in enumerate(files):
        offset, name, data, path = _load(source, index)
        where = f"{name} (at 0x{offset:x})" if offset >= 0 else f"{name} (at {offset})"
        if not data:
            raise FlashInputError(
                f"{where}: is empty (0 bytes); the build failed or the copy did, rebuild it"
            )
        if offset < 0:
            raise FlashInputError(f"{where}: a negative offset ({offset}) is not a place in flash; use e.g. 0x10000")
        if offset % SECTOR_SIZE:
            raise FlashInputError(
                f"{where}: offset 0x{offset:x} is not a multiple of the 0x{SECTOR_SIZE:x}-byte "
                "flash sector; use the offset from the build's flash_args or partition table"
            )
        padded = data + b"\xff" * (-len(data) % 4)  # what esptool writes
        region = FlashRegion(name=name, offset=offset, data=padded, path=path)
        if region.end > flash_size:
            raise FlashInputError(
                f"{where}: {len(data)} bytes end at 0x{region.end:x}, past the end of the "
                f"{flash_size // (1024 * 1024)} MB flash; fix the offset or the flash size"
            )
        regions.append(region)
    regions.sort(key=lambda r: r.offset)
    for first, second in itertools.pairwise(regions):
        if first.end > second.offset:
            raise FlashInputError(
                f"{first.name} (0x{first.offset:x}-0x{first.end:x}) overlaps {second.name} "
                f"(at 0x{second.offset:x}); each file needs its own flash region, fix the offsets "
                "(or drop the file that is not meant to be there)"
            )
    checker = _Checker(
        *_table_for(regions, partition_table, partition_table_name, flash_size),
        flash_size=flash_size,
    )
    for region in regions:
        checker.check_region(region)
    return tuple(regions)


def _table_for(
    regions: Sequence[FlashRegion],
    partition_table: PartitionTable,
    partition_table_name: str,
    flash_size: int,
) -> tuple[PartitionTable, str]:
    table_file = next((r for r in regions if r.offset == PARTITION_TABLE_OFFSET), None)
    if table_file is None:
        return partition_table, partition_table_name
    try:
        table = PartitionTable.from_bytes(table_file.data[:PARTITION_TABLE_MAX_LEN])
        table.validate(flash_size)
    except PartitionTableError as exc:
        raise FlashInputError(
            f"{table_file.where()}: not a valid partition table ({exc}); regenerate it "
            "(idf.py partition-table / gen_esp32part.py) or fix the offset"
        ) from None
    if not table.partitions:
        raise FlashInputError(
            f"{table_file.where()}: the partition table is empty (erased?); regenerate it"
        )
    return table, table_file.name
