"""The ESP-IDF v5 2nd-stage bootloader, as a model: what it reads, writes and prints.

It follows ESP-IDF's ``bootloader_utility`` with ``BOOTLOADER_APP_ROLLBACK_ENABLE``
(SPEC_FACTS §4–5): load and print the partition table, pick a slot from otadata (an
entry left PENDING_VERIFY by the previous boot becomes ABORTED; a NEW entry becomes
PENDING_VERIFY before its app starts), then try to load the chosen app, walking down to
factory and then up through the other OTA slots when an image fails its checks. Every
otadata change is a real sector erase and write on the board's flash, so esptool can
read the result back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from hil.images.app import AppImage, ImageError, check_image
from hil.images.otadata import OTADATA_SECTOR, OtaData, OtaEntry, OtaState
from hil.images.partitions import (
    PARTITION_TABLE_OFFSET,
    Partition,
    PartitionTable,
    PartitionTableError,
    boot_log_rows,
)
from hil.sim.bootclock import IMAGE_LOAD_BYTES_PER_MS

LogFn = Callable[[str, str, str], None]
"""log(level letter, tag, message), printed as ``L (ms) tag: message``."""

FACTORY_INDEX = -1
_TABLE_BYTES = 0xC00


class FlashIO(Protocol):
    """The part of the SPI flash the bootloader uses."""

    def read(self, offset: int, length: int) -> bytes: ...

    def write(self, offset: int, data: bytes) -> None: ...

    def erase(self, offset: int, length: int) -> None: ...


@dataclass(frozen=True)
class BootTarget:
    """The app the bootloader hands over to."""

    partition: Partition
    image: AppImage
    table: PartitionTable


@dataclass(frozen=True)
class BootFailure:
    """The bootloader gave up; the chip resets (``bootloader_reset``)."""

    reason: str


@dataclass(frozen=True)
class BootloaderConfig:
    idf_ver: str = "v5.4.1"
    compile_time: str = "Apr  5 2025 18:11:33"
    chip_rev_full: int = 4
    flash_size_text: str = "4MB"


class Bootloader:
    """One run of the 2nd-stage bootloader over a flash chip."""

    def __init__(
        self,
        flash: FlashIO,
        log: LogFn,
        config: BootloaderConfig | None = None,
        *,
        spend_ms: Callable[[float], None] | None = None,
    ) -> None:
        self._flash = flash
        self._log = log
        self._config = config or BootloaderConfig()
        self._spend_ms = spend_ms or (lambda ms: None)  # the chip's clock (hil.sim.bootclock)

    def run(self) -> BootTarget | BootFailure:
        cfg = self._config
        major, minor = divmod(cfg.chip_rev_full, 100)
        self._log("I", "boot", f"ESP-IDF {cfg.idf_ver} 2nd stage bootloader")
        self._log("I", "boot", f"compile time {cfg.compile_time}")
        self._log("I", "boot", f"chip revision: v{major}.{minor}")
        self._log("I", "boot.esp32c3", "SPI Speed      : 80MHz")
        self._log("I", "boot.esp32c3", "SPI Mode       : DIO")
        self._log("I", "boot.esp32c3", f"SPI Flash Size : {cfg.flash_size_text}")
        self._log("I", "boot", "Enabling RNG early entropy source...")

        table = self._load_partition_table()
        if table is None:
            self._log("E", "boot", "load partition table error!")
            return BootFailure("partition table")

        ota_apps = table.ota_apps()
        start_index, initial_otadata = self._select(table, ota_apps)
        target = self._load_from(table, ota_apps, start_index, initial_otadata)
        if target is None:
            self._log("E", "boot", "No bootable app partitions in the partition table")
            return BootFailure("no bootable app")
        self._log("I", "boot", f"Loaded app from partition at offset 0x{target.partition.offset:x}")
        self._log("I", "boot", "Disabling RNG early entropy source...")
        return target

    # -- partition table ------------------------------------------------------------
    def _load_partition_table(self) -> PartitionTable | None:
        raw = self._flash.read(PARTITION_TABLE_OFFSET, _TABLE_BYTES)
        try:
            table = PartitionTable.from_bytes(raw)
        except PartitionTableError as exc:
            magic = int.from_bytes(raw[:2], "little")
            if magic != 0x50AA:
                self._log("E", "flash_parts", f"partition 0 invalid magic number 0x{magic:x}")
            else:
                self._log("E", "flash_parts", f"partition table invalid: {exc}")
            self._log("E", "boot", "Failed to verify partition table")
            return None
        self._log("I", "boot", "Partition Table:")
        self._log("I", "boot", "## Label            Usage          Type ST Offset   Length")
        for row in boot_log_rows(table):
            self._log("I", "boot", row)
        self._log("I", "boot", "End of partition table")
        return table

    # -- slot selection (bootloader_utility_get_selected_boot_partition) --------------
    def _select(self, table: PartitionTable, ota_apps: tuple[Partition, ...]) -> tuple[int, bool]:
        otadata_part = table.otadata
        if otadata_part is None:
            return FACTORY_INDEX, False
        otadata = OtaData.from_bytes(self._flash.read(otadata_part.offset, otadata_part.size))

        # Rollback: whoever was on trial last boot and did not confirm itself is out.
        for index, entry in enumerate(otadata.entries):
            if entry is not None and entry.state == OtaState.PENDING_VERIFY:
                aborted = OtaEntry(seq=entry.seq, state=OtaState.ABORTED, label=entry.label)
                otadata = otadata.with_entry(index, aborted)
                self._write_entry(otadata_part, index, aborted)

        valid = [e is not None and e.is_valid for e in otadata.entries]
        if not any(valid) or not ota_apps:
            if table.factory is not None:
                self._log("I", "boot", "Defaulting to factory image")
                return FACTORY_INDEX, False
            self._log("I", "boot", "No factory image, trying OTA 0")
            initial = all(e is None or not e.crc_ok or e.seq == 0xFFFFFFFF for e in otadata.entries)
            return 0, initial

        active = otadata.active_index()
        if active is None:  # pragma: no cover - any(valid) implies an active entry
            return FACTORY_INDEX, False
        entry = otadata.entries[active]
        assert entry is not None
        slot = (entry.seq - 1) % len(ota_apps)
        if entry.state == OtaState.NEW:
            pending = OtaEntry(seq=entry.seq, state=OtaState.PENDING_VERIFY, label=entry.label)
            self._write_entry(otadata_part, active, pending)
        return slot, False

    def _write_entry(self, otadata_part: Partition, index: int, entry: OtaEntry) -> None:
        sector = otadata_part.offset + OTADATA_SECTOR * index
        self._flash.erase(sector, OTADATA_SECTOR)
        self._flash.write(sector, entry.to_bytes())

    # -- loading (bootloader_utility_load_boot_image) ---------------------------------
    def _load_from(
        self,
        table: PartitionTable,
        ota_apps: tuple[Partition, ...],
        start_index: int,
        initial_otadata: bool,
    ) -> BootTarget | None:
        order = list(range(start_index, FACTORY_INDEX - 1, -1))
        order += list(range(start_index + 1, len(ota_apps)))
        for index in order:
            part = table.factory if index == FACTORY_INDEX else ota_apps[index]
            if part is None:
                continue
            image = self._try_load(part)
            if image is not None:
                if index > FACTORY_INDEX and initial_otadata and table.otadata is not None:
                    entry = OtaEntry(seq=index + 1, state=OtaState.VALID)
                    self._write_entry(table.otadata, 0, entry)
                    self._log("I", "boot", f"Set actual ota_seq={index + 1} in otadata[0]")
                return BootTarget(part, image, table)
            if index == FACTORY_INDEX:
                self._log("E", "boot", "Factory app partition is not bootable")
            else:
                self._log("E", "boot", f"OTA app partition slot {index} is not bootable")
        test = table.find(0x00, 0x20)
        if test is not None:
            image = self._try_load(test)
            if image is not None:
                self._log("W", "boot", "Falling back to test app as last resort")
                return BootTarget(test, image, table)
        return None

    def _try_load(self, part: Partition) -> AppImage | None:
        data = self._flash.read(part.offset, part.size)
        try:
            image = check_image(
                data,
                flash_offset=part.offset,
                partition_size=part.size,
                chip_rev_full=self._config.chip_rev_full,
                check_hash=False,
            )
        except ImageError as exc:
            self._log("E", "esp_image", str(exc))
            return None
        for number, segment in enumerate(image.segments):
            paddr = part.offset + segment.file_offset + 8
            self._log(
                "I",
                "esp_image",
                f"segment {number}: paddr={paddr:08x} vaddr={segment.load_addr:08x} "
                f"size={len(segment.data):05x}h ({len(segment.data):6d}) {segment.kind}".rstrip(),
            )
            self._spend_ms(len(segment.data) / IMAGE_LOAD_BYTES_PER_MS)  # read and hash it
        try:
            check_image(
                data,
                flash_offset=part.offset,
                partition_size=part.size,
                chip_rev_full=self._config.chip_rev_full,
                check_hash=True,
            )
        except ImageError as exc:
            self._log("E", "esp_image", str(exc))
            return None
        return image
