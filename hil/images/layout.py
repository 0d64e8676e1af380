"""The ESP32-C3 flash layout: where each image goes, and the flash set of a firmware.

The one place that says at which offset the session, the bench CLI (``hil flash
--recipe``), the recipe build (its ``flash_args``) and the virtual fleet write what. The
chip fixes two offsets (the ROM loads the 2nd-stage bootloader from 0x0, which reads the
partition table at 0x8000); every other one (nvs, otadata, the factory app) is the
partition table's, so it is read from the table rather than written again as a literal:
change `TWO_OTA_TABLE` and every writer follows.

A **flash set** is a firmware's files and where each goes (provisioning aside: that is
per device, and lands in the nvs partition of the set's layout). A set that carries its own
partition table (a manifest's build) has that table's layout; the others the framework's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hil.images.c3 import BOOTLOADER_OFFSET
from hil.images.partitions import (
    FACTORY,
    NVS,
    OTA,
    PARTITION_TABLE_OFFSET,
    TWO_OTA_TABLE,
    Partition,
    PartitionTable,
    PartitionType,
)

__all__ = [
    "APP_OFFSET",
    "BOOTLOADER_FILE",
    "BOOTLOADER_OFFSET",
    "FLASH_SETTINGS",
    "LAYOUT",
    "NVS_OFFSET",
    "NVS_SIZE",
    "OTADATA_FILE",
    "OTADATA_OFFSET",
    "PARTITION_TABLE_FILE",
    "PARTITION_TABLE_OFFSET",
    "FlashFile",
    "FlashLayout",
    "FlashSet",
    "LayoutError",
    "flash_args",
]

# The names ESP-IDF's build gives the support images (build/flash_args names them so).
BOOTLOADER_FILE = "bootloader.bin"
PARTITION_TABLE_FILE = "partition-table.bin"
OTADATA_FILE = "ota_data_initial.bin"
# The flash settings the images are built for (esptool's write-flash options): 4 MB DIO.
FLASH_SETTINGS = ("--flash-mode", "dio", "--flash-freq", "80m", "--flash-size", "4MB")


class LayoutError(ValueError):
    """A partition table without a partition the layout needs (nvs, otadata, an app)."""


@dataclass(frozen=True)
class FlashFile:
    """One file of a flash set: ``path`` is written at ``offset``."""

    offset: int
    path: Path


@dataclass(frozen=True)
class FlashLayout:
    """Where things go in the flash of a board with this partition table."""

    table: PartitionTable
    bootloader_offset: int = BOOTLOADER_OFFSET
    partition_table_offset: int = PARTITION_TABLE_OFFSET

    def _needed(self, found: Partition | None, what: str) -> Partition:
        if found is None:
            raise LayoutError(f"the partition table has no {what} partition; add one (see TWO_OTA_TABLE)")
        return found

    @property
    def nvs(self) -> Partition:
        """Where provisioning goes."""
        return self._needed(self.table.find(PartitionType.DATA, NVS), "nvs")

    @property
    def otadata(self) -> Partition:
        return self._needed(self.table.find(PartitionType.DATA, OTA), "otadata")

    @property
    def app(self) -> Partition:
        """The partition an app image is flashed to: the factory app, else the first OTA slot
        (the one the bootloader boots from an erased otadata)."""
        found = self.table.find(PartitionType.APP, FACTORY) or next(iter(self.table.ota_apps()), None)
        return self._needed(found, "factory (or ota_0) app")

    def flash_set(self, app: Path, support: Path) -> FlashSet:
        """``app`` with the framework's bootloader, this partition table and an initial
        otadata, as a recipe build lays them out in ``support`` (`BOOTLOADER_FILE`, ...)."""
        return FlashSet(
            (
                FlashFile(self.bootloader_offset, support / BOOTLOADER_FILE),
                FlashFile(self.partition_table_offset, support / PARTITION_TABLE_FILE),
                FlashFile(self.otadata.offset, support / OTADATA_FILE),
                FlashFile(self.app.offset, app),
            ),
            self,
        )


LAYOUT = FlashLayout(TWO_OTA_TABLE)
"""The framework's layout: the partition table its images carry (SPEC_FACTS.md §4)."""

NVS_OFFSET = LAYOUT.nvs.offset
NVS_SIZE = LAYOUT.nvs.size
OTADATA_OFFSET = LAYOUT.otadata.offset
APP_OFFSET = LAYOUT.app.offset


@dataclass(frozen=True)
class FlashSet:
    """A firmware's files by offset, and the layout they make on the board."""

    files: tuple[FlashFile, ...]
    layout: FlashLayout = LAYOUT

    def __post_init__(self) -> None:
        object.__setattr__(self, "files", tuple(sorted(self.files, key=lambda f: f.offset)))

    @classmethod
    def of(cls, files: Iterable[FlashFile]) -> FlashSet:
        """The set of ``files`` (a manifest's): with the layout of the partition table among
        them, else the framework's. A table that does not parse is the flasher's to
        report (its pre-connect checks name the file); the set then keeps the default."""
        listed = tuple(files)
        table_file = next((f for f in listed if f.offset == PARTITION_TABLE_OFFSET), None)
        if table_file is None:
            return cls(listed)
        try:
            table = PartitionTable.from_bytes(table_file.path.read_bytes())
        except (OSError, ValueError):
            return cls(listed)
        return cls(listed, FlashLayout(table))

    @property
    def app(self) -> Path:
        """The app image: the file at the app partition, else the last file (a manifest
        whose app lands elsewhere)."""
        try:
            at = self.layout.app.offset
        except LayoutError:
            at = APP_OFFSET
        return next((f.path for f in self.files if f.offset == at), self.files[-1].path)

    def with_nvs(self, nvs: Path) -> list[FlashFile]:
        """The set's files and a provisioning image at the layout's nvs partition."""
        return [*self.files, FlashFile(self.layout.nvs.offset, nvs)]


def flash_args(files: Sequence[FlashFile]) -> str:
    """esptool's ``@file`` syntax, as ESP-IDF writes build/flash_args: the flash settings,
    then one ``0xOFFSET path`` line per file."""
    lines = [" ".join(FLASH_SETTINGS), *(f"0x{f.offset:x} {f.path.as_posix()}" for f in files)]
    return "\n".join(lines) + "\n"
