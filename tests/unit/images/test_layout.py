"""The flash layout: offsets read from the partition table, and the flash set of a firmware."""

from __future__ import annotations

from pathlib import Path

import pytest

from hil.images.layout import (
    APP_OFFSET,
    BOOTLOADER_OFFSET,
    LAYOUT,
    NVS_OFFSET,
    NVS_SIZE,
    OTADATA_OFFSET,
    PARTITION_TABLE_OFFSET,
    FlashFile,
    FlashLayout,
    FlashSet,
    LayoutError,
    flash_args,
)
from hil.images.partitions import (
    FACTORY,
    NVS,
    OTA,
    OTA_0,
    TWO_OTA_TABLE,
    Partition,
    PartitionTable,
    PartitionType,
)


def test_the_offsets_are_the_chips_and_the_partition_tables() -> None:
    # DEVICE_CONTRACT C1.1: bootloader 0x0, table 0x8000, nvs 0x9000/0x4000, otadata 0xd000, factory 0x10000.
    assert (BOOTLOADER_OFFSET, PARTITION_TABLE_OFFSET) == (0x0, 0x8000)
    assert (NVS_OFFSET, NVS_SIZE, OTADATA_OFFSET, APP_OFFSET) == (0x9000, 0x4000, 0xD000, 0x10000)
    assert LAYOUT.table is TWO_OTA_TABLE
    assert LAYOUT.nvs == TWO_OTA_TABLE.nvs and LAYOUT.otadata == TWO_OTA_TABLE.otadata
    assert LAYOUT.app == TWO_OTA_TABLE.factory


def test_an_apps_flash_set_is_the_support_images_and_the_app(tmp_path: Path) -> None:
    app = tmp_path / "build" / "app.bin"
    flash_set = LAYOUT.flash_set(app, tmp_path / "support")
    assert [(f.offset, f.path) for f in flash_set.files] == [
        (0x0, tmp_path / "support" / "bootloader.bin"),
        (0x8000, tmp_path / "support" / "partition-table.bin"),
        (0xD000, tmp_path / "support" / "ota_data_initial.bin"),
        (0x10000, app),
    ]
    assert flash_set.app == app and flash_set.layout is LAYOUT
    nvs = tmp_path / "nvs.bin"
    assert flash_set.with_nvs(nvs) == [*flash_set.files, FlashFile(0x9000, nvs)]


def test_flash_args_is_what_esp_idf_writes() -> None:
    files = LAYOUT.flash_set(Path("baseline.bin"), Path()).files
    assert flash_args(files).splitlines() == [
        "--flash-mode dio --flash-freq 80m --flash-size 4MB",
        "0x0 bootloader.bin",
        "0x8000 partition-table.bin",
        "0xd000 ota_data_initial.bin",
        "0x10000 baseline.bin",
    ]


def test_a_set_with_its_own_partition_table_has_that_tables_layout(tmp_path: Path) -> None:
    table = PartitionTable(
        (
            Partition("otadata", PartitionType.DATA, OTA, 0xD000, 0x2000),
            Partition("nvs", PartitionType.DATA, NVS, 0xF000, 0x6000),
            Partition("ota_0", PartitionType.APP, OTA_0, 0x20000, 0x100000),
        )
    )
    (tmp_path / "pt.bin").write_bytes(table.to_bytes())
    files = [FlashFile(0x20000, tmp_path / "app.bin"), FlashFile(0x8000, tmp_path / "pt.bin")]
    flash_set = FlashSet.of(files)
    assert [f.offset for f in flash_set.files] == [0x8000, 0x20000]  # by offset
    assert flash_set.layout.table == table and flash_set.layout.nvs.offset == 0xF000
    assert flash_set.app == tmp_path / "app.bin"  # no factory partition: the first OTA slot
    assert flash_set.with_nvs(tmp_path / "nvs.bin")[-1] == FlashFile(0xF000, tmp_path / "nvs.bin")


def test_a_set_without_a_table_has_the_frameworks_layout(tmp_path: Path) -> None:
    files = [FlashFile(0x10000, tmp_path / "app.bin"), FlashFile(0x0, tmp_path / "boot.bin")]
    flash_set = FlashSet.of(files)
    assert flash_set.layout is LAYOUT and flash_set.app == tmp_path / "app.bin"
    elsewhere = FlashSet.of([FlashFile(0x110000, tmp_path / "ota.bin")])
    assert elsewhere.app == tmp_path / "ota.bin"  # not at the app partition: the last file
    unreadable = FlashSet.of([FlashFile(0x8000, tmp_path / "missing.bin")])
    assert unreadable.layout is LAYOUT  # the flasher's checks name the missing file


def test_a_table_without_nvs_says_which_partition_is_missing() -> None:
    layout = FlashLayout(PartitionTable((Partition("factory", PartitionType.APP, FACTORY, 0x10000, 0x100000),)))
    assert layout.app.offset == 0x10000
    with pytest.raises(LayoutError, match="no nvs partition"):
        layout.nvs  # noqa: B018
    with pytest.raises(LayoutError, match="no otadata partition"):
        layout.flash_set(Path("app.bin"), Path())
