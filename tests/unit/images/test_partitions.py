"""Partition table: binary codec, MD5 row, lookups, rules, and the bootloader's log rows."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hil.images.partitions import (
    BOOT_LOG_HEADER,
    COREDUMP,
    EFUSE,
    FACTORY,
    LITTLEFS,
    NVS,
    NVS_KEYS,
    OTA,
    OTA_0,
    OTA_1,
    OTA_2,
    PARTITION_TABLE_OFFSET,
    PHY,
    TEST,
    TWO_OTA_TABLE,
    Partition,
    PartitionTable,
    PartitionTableError,
    PartitionType,
    boot_log_rows,
)

labels = st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=16).filter(
    lambda s: len(s.encode()) <= 16
)
partitions = st.builds(
    Partition,
    label=labels,
    type=st.sampled_from([PartitionType.APP, PartitionType.DATA, 0x40, 0xFE]),
    subtype=st.integers(0, 0xFF),
    offset=st.integers(0, 0xFFFF_FFFF),
    size=st.integers(0, 0xFFFF_FFFF),
    flags=st.integers(0, 0xFFFF_FFFF),
)
tables = st.lists(partitions, max_size=95).map(lambda ps: PartitionTable(tuple(ps)))


@given(tables)
@settings(max_examples=100)
def test_table_round_trip(table: PartitionTable) -> None:
    raw = table.to_bytes()
    assert len(raw) == 0xC00
    assert PartitionTable.from_bytes(raw) == table
    assert PartitionTable.from_bytes(raw + b"\xff" * 0x400) == table  # the whole sector


def test_two_ota_table_bytes() -> None:
    raw = TWO_OTA_TABLE.to_bytes()
    assert PARTITION_TABLE_OFFSET == 0x8000
    assert raw[:32] == (
        b"\xaa\x50\x01\x02"
        + (0x9000).to_bytes(4, "little")
        + (0x4000).to_bytes(4, "little")
        + b"nvs".ljust(16, b"\0")
        + bytes(4)
    )
    entries = raw[: 6 * 32]
    assert raw[6 * 32 : 7 * 32] == b"\xeb\xeb" + b"\xff" * 14 + hashlib.md5(entries).digest()
    assert raw[7 * 32 :] == b"\xff" * (0xC00 - 7 * 32)
    TWO_OTA_TABLE.validate()


def test_two_ota_table_lookups() -> None:
    table = TWO_OTA_TABLE
    assert table.nvs == Partition("nvs", PartitionType.DATA, NVS, 0x9000, 0x4000)
    assert table.otadata is not None and (table.otadata.offset, table.otadata.size) == (
        0xD000,
        0x2000,
    )
    assert table.factory is not None and table.factory.offset == 0x10000
    assert [p.label for p in table.ota_apps()] == ["ota_0", "ota_1"]
    assert [p.ota_index for p in table.ota_apps()] == [0, 1]
    assert table.find(PartitionType.DATA, PHY) == table.by_label("phy_init")
    assert table.find(PartitionType.APP, TEST) is None and table.test is None
    assert table.by_label("nope") is None
    assert table.partitions[-1].end == 0x310000


def test_ota_apps_sorted_by_index() -> None:
    table = PartitionTable(
        (
            Partition("b", PartitionType.APP, OTA_2, 0x30000, 0x10000),
            Partition("a", PartitionType.APP, OTA_0, 0x10000, 0x10000),
            Partition("c", PartitionType.APP, OTA_1, 0x20000, 0x10000),
        )
    )
    assert [p.label for p in table.ota_apps()] == ["a", "c", "b"]


def test_boot_log_rows_match_a_real_boot_log() -> None:
    assert BOOT_LOG_HEADER == "## Label            Usage          Type ST Offset   Length"
    assert boot_log_rows(TWO_OTA_TABLE) == [
        " 0 nvs              WiFi data        01 02 00009000 00004000",
        " 1 otadata          OTA data         01 00 0000d000 00002000",
        " 2 phy_init         RF data          01 01 0000f000 00001000",
        " 3 factory          factory app      00 00 00010000 00100000",
        " 4 ota_0            OTA app          00 10 00110000 00100000",
        " 5 ota_1            OTA app          00 11 00210000 00100000",
    ]


@pytest.mark.parametrize(
    ("ptype", "subtype", "usage"),
    [
        (PartitionType.APP, FACTORY, "factory app"),
        (PartitionType.APP, OTA_2, "OTA app"),
        (PartitionType.APP, TEST, "test app"),
        (PartitionType.APP, 0x30, "Unknown app"),
        (PartitionType.DATA, OTA, "OTA data"),
        (PartitionType.DATA, PHY, "RF data"),
        (PartitionType.DATA, NVS, "WiFi data"),
        (PartitionType.DATA, NVS_KEYS, "NVS keys"),
        (PartitionType.DATA, EFUSE, "efuse"),
        (PartitionType.DATA, COREDUMP, "Unknown data"),
        (PartitionType.DATA, LITTLEFS, "Unknown data"),
        (0x40, 0x00, "unknown"),
    ],
)
def test_usage_column(ptype: int, subtype: int, usage: str) -> None:
    assert Partition("p", ptype, subtype, 0x10000, 0x1000).usage == usage


def test_ota_index() -> None:
    assert Partition("p", PartitionType.APP, 0x1F, 0, 0).ota_index == 15
    assert Partition("p", PartitionType.APP, FACTORY, 0, 0).ota_index is None
    assert Partition("p", PartitionType.DATA, 0x10, 0, 0).ota_index is None


def test_wrong_md5_is_rejected() -> None:
    raw = bytearray(TWO_OTA_TABLE.to_bytes())
    raw[40] ^= 1  # inside entry 1
    with pytest.raises(PartitionTableError, match="Incorrect MD5 checksum"):
        PartitionTable.from_bytes(bytes(raw))


def test_wrong_magic_is_rejected() -> None:
    raw = bytearray(TWO_OTA_TABLE.to_bytes())
    raw[64:66] = b"\x12\x34"
    with pytest.raises(PartitionTableError, match="partition 2 invalid magic number 0x3412"):
        PartitionTable.from_bytes(bytes(raw))


def test_table_without_md5_or_terminator() -> None:
    entries = b"".join(p.to_bytes() for p in TWO_OTA_TABLE.partitions)
    assert PartitionTable.from_bytes(entries + b"\xff" * 32) == TWO_OTA_TABLE
    with pytest.raises(PartitionTableError, match="no terminating entry"):
        PartitionTable.from_bytes(TWO_OTA_TABLE.partitions[0].to_bytes() * 96)
    md5_row = TWO_OTA_TABLE.to_bytes()[6 * 32 : 7 * 32]
    with pytest.raises(PartitionTableError, match="Only one MD5"):
        PartitionTable.from_bytes(entries + md5_row + md5_row + b"\xff" * 32)


def test_erased_flash_is_an_empty_table() -> None:
    assert PartitionTable.from_bytes(b"\xff" * 0x1000).partitions == ()


def test_bad_fields() -> None:
    with pytest.raises(PartitionTableError, match="16 bytes"):
        Partition("x" * 17, PartitionType.APP, FACTORY, 0x10000, 0x1000)
    with pytest.raises(PartitionTableError, match="u32"):
        Partition("x", PartitionType.APP, FACTORY, -1, 0x1000)
    with pytest.raises(PartitionTableError, match="at most 95"):
        PartitionTable(tuple(Partition(str(i), 1, 0x81, 0, 0) for i in range(96)))


def _with(*extra: Partition) -> PartitionTable:
    return PartitionTable(TWO_OTA_TABLE.partitions + extra)


@pytest.mark.parametrize(
    ("table", "match"),
    [
        (
            _with(Partition("app2", PartitionType.APP, OTA_2, 0x318000, 0x10000)),
            "partition 6 'app2' offset 0x318000 is not aligned to 0x10000",
        ),
        (
            _with(Partition("fs", PartitionType.DATA, LITTLEFS, 0x310800, 0x1000)),
            "partition 6 'fs' offset 0x310800 is not aligned to 0x1000",
        ),
        (
            _with(Partition("big", PartitionType.DATA, LITTLEFS, 0x310000, 0x100000)),
            "partition 6 invalid - offset 0x310000 size 0x100000 exceeds flash chip size 0x400000",
        ),
        (
            _with(Partition("fs", PartitionType.DATA, LITTLEFS, 0x300000, 0x20000)),
            "partition 6 'fs' at 0x300000 overlaps 'ota_1'",
        ),
        (
            _with(Partition("nvs", PartitionType.DATA, LITTLEFS, 0x310000, 0x1000)),
            "partition 6 'nvs': label is used twice",
        ),
        (
            _with(Partition("early", PartitionType.DATA, LITTLEFS, 0x8000, 0x1000)),
            "overlaps the bootloader or the partition table",
        ),
        (
            _with(Partition("ota2", PartitionType.DATA, OTA, 0x310000, 0x2000)),
            "partition 6 'ota2': found more than one otadata",
        ),
        (
            PartitionTable((Partition("otadata", PartitionType.DATA, OTA, 0xD000, 0x1000),)),
            "partition 0 'otadata': otadata partition must have size 0x2000, not 0x1000",
        ),
    ],
)
def test_validate_names_the_offending_partition(table: PartitionTable, match: str) -> None:
    with pytest.raises(PartitionTableError) as info:
        table.validate()
    assert match in str(info.value)


def test_validate_with_bigger_flash() -> None:
    table = _with(Partition("big", PartitionType.DATA, LITTLEFS, 0x310000, 0x100000))
    table.validate(flash_size=8 * 1024 * 1024)
