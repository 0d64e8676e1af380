"""Flash input checks (rule 6): every refusal happens before a port is opened, fast,
and says which file, what is wrong and how to fix it. No board is involved here."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hil.firmware.catalog import load_manifest, load_recipes
from hil.images.app import build_app_image
from hil.images.layout import FlashFile
from hil.images.partitions import (
    FACTORY,
    NVS,
    OTA,
    Partition,
    PartitionTable,
    PartitionType,
)
from hil.link.flash_checks import FlashRegion
from hil.link.flash_errors import FlashInputError
from hil.link.flasher import Flasher
from hil.link.port_borrow import Link

PORT = "rfc2217://127.0.0.1:9"  # never opened: a refusal must come first


@pytest.fixture(autouse=True)
def no_port_is_ever_opened(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the flasher opened a port before refusing its input")

    monkeypatch.setattr(Link, "open", refuse)


@pytest.fixture
def baseline(firmware_dir: Path) -> list[tuple[int, Path]]:
    return [
        (0x0, firmware_dir / "bootloader.bin"),
        (0x8000, firmware_dir / "partition-table.bin"),
        (0xD000, firmware_dir / "ota_data_initial.bin"),
        (0x10000, firmware_dir / "baseline.bin"),
    ]


def copy(src: Path, dst: Path, edit: bytes | None = None, at: int = 0) -> Path:
    data = bytearray(src.read_bytes())
    if edit is not None:
        data[at : at + len(edit)] = edit
    dst.write_bytes(bytes(data))
    return dst


def refused(
    files: list[tuple[int, Path | bytes]] | list[FlashFile], flasher: Flasher | None = None
) -> str:
    """The refusal's message; the check must finish within 2 s and touch no port."""
    started = time.monotonic()
    with pytest.raises(FlashInputError) as info:
        (flasher or Flasher()).flash(PORT, files)
    assert time.monotonic() - started < 2.0
    assert isinstance(info.value, ValueError)
    return str(info.value)


# -- what passes ----------------------------------------------------------------------------


def test_the_baseline_set_passes_and_is_sorted(baseline: list[tuple[int, Path]]) -> None:
    started = time.monotonic()
    regions = Flasher().check(list(reversed(baseline)))
    assert time.monotonic() - started < 2.0
    assert [r.offset for r in regions] == [0x0, 0x8000, 0xD000, 0x10000]
    assert all(r.size % 4 == 0 for r in regions)
    assert regions[-1].path == baseline[-1][1]


def test_manifest_files_and_bytes_are_accepted(tmp_path: Path, firmware_dir: Path) -> None:
    manifest = tmp_path / "fw.toml"
    manifest.write_text(
        f'name = "env-monitor"\nchip = "esp32c3"\nversion = "1.0.0"\ncontract = "env-monitor/1"\n'
        f'[[flash]]\noffset = "0x0"\nfile = "{firmware_dir / "bootloader.bin"}"\n'
        f'[[flash]]\noffset = "0x10000"\nfile = "{firmware_dir / "baseline.bin"}"\n'
    )
    files: list[FlashFile | tuple[int, Path | bytes]] = [*load_manifest(manifest).flash]
    files.append((0x9000, b"\xff" * 0x4000))
    regions = Flasher().check(files)
    assert [r.offset for r in regions] == [0x0, 0x9000, 0x10000]
    assert regions[1].path is None and regions[1].name == "<16384 bytes>"


def test_odd_sized_data_is_padded_as_esptool_writes_it() -> None:
    (region,) = Flasher().check([(0x9000, b"\x01\x02\x03\x04\x05")])
    assert region.data == b"\x01\x02\x03\x04\x05\xff\xff\xff"
    assert isinstance(region, FlashRegion) and region.end == 0x9008


# -- missing, empty, malformed input --------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    message = refused([(0x10000, tmp_path / "build" / "app.bin")])
    assert str(tmp_path / "build" / "app.bin") in message
    assert "no such file" in message and "build the firmware first" in message


def test_directory_instead_of_file(tmp_path: Path) -> None:
    message = refused([(0x10000, tmp_path)])
    assert str(tmp_path) in message and "is a directory" in message


def test_empty_file(tmp_path: Path) -> None:
    empty = tmp_path / "app.bin"
    empty.write_bytes(b"")
    message = refused([(0x10000, empty)])
    assert "app.bin (at 0x10000)" in message and "is empty" in message and "rebuild" in message


def test_nothing_to_flash() -> None:
    assert "nothing to flash" in refused([])


def test_not_a_source() -> None:
    with pytest.raises(FlashInputError, match=r"files\[0\].*neither a FlashFile"):
        Flasher().check(["app.bin"])  # type: ignore[list-item]
    with pytest.raises(FlashInputError, match=r"files\[0\].*not a path or bytes"):
        Flasher().check([(0x10000, 42)])  # type: ignore[list-item]


def test_unaligned_offset(firmware_dir: Path) -> None:
    message = refused([(0x10100, firmware_dir / "baseline.bin")])
    assert "baseline.bin (at 0x10100)" in message
    assert "not a multiple of the 0x1000-byte flash sector" in message
    assert "flash_args" in message


def test_past_the_end_of_flash(firmware_dir: Path) -> None:
    message = refused([(0x3F0000, firmware_dir / "baseline.bin")])
    assert "baseline.bin (at 0x3f0000)" in message and "past the end of the 4 MB flash" in message


# -- overlaps ------------------------------------------------------------------------------------


def test_overlapping_files(firmware_dir: Path) -> None:
    message = refused(
        [(0x10000, firmware_dir / "baseline.bin"), (0x20000, firmware_dir / "v1_1_0.bin")]
    )
    assert "baseline.bin (0x10000-0x26050) overlaps" in message
    assert "v1_1_0.bin (at 0x20000)" in message and "fix the offsets" in message


def test_same_offset_twice(firmware_dir: Path) -> None:
    message = refused(
        [(0x10000, firmware_dir / "baseline.bin"), (0x10000, firmware_dir / "v1_1_0.bin")]
    )
    assert "overlaps" in message


# -- images: chip, integrity ---------------------------------------------------------------------


def test_image_for_another_chip(tmp_path: Path) -> None:
    recipe = load_recipes().get("baseline")
    s3 = tmp_path / "s3-app.bin"
    s3.write_bytes(build_app_image(recipe.descriptor(), chip_id=9))  # an otherwise valid image
    message = refused([(0x10000, s3)])
    assert "s3-app.bin (at 0x10000)" in message
    assert "ESP32-S3 (header chip id 9)" in message and "not the ESP32-C3 (chip id 5)" in message
    assert "set-target esp32c3" in message


def test_bootloader_for_another_chip(tmp_path: Path, firmware_dir: Path) -> None:
    bootloader = copy(
        firmware_dir / "bootloader.bin", tmp_path / "bootloader.bin", b"\x00\x00", at=12
    )
    message = refused([(0x0, bootloader)])
    assert "bootloader.bin (at 0x0)" in message and "ESP32 (header chip id 0)" in message


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("segment", "Checksum failed"),
        ("hash", "Image hash failed - image is corrupt"),
    ],
)
def test_corrupt_app_image(tmp_path: Path, firmware_dir: Path, where: str, expected: str) -> None:
    source = firmware_dir / "baseline.bin"
    index = 0x100 if where == "segment" else source.stat().st_size - 5
    byte = source.read_bytes()[index] ^ 0x01
    corrupt = copy(source, tmp_path / "app.bin", bytes([byte]), at=index)
    message = refused([(0x10000, corrupt)])
    assert "app.bin (at 0x10000): corrupt image" in message and expected in message
    assert "rebuild it" in message


def test_truncated_app_image(tmp_path: Path, firmware_dir: Path) -> None:
    truncated = tmp_path / "app.bin"
    truncated.write_bytes((firmware_dir / "baseline.bin").read_bytes()[:40000])
    message = refused([(0x10000, truncated)])
    assert "app.bin (at 0x10000): corrupt image" in message and "truncated" in message


def test_data_file_at_an_app_partition(tmp_path: Path) -> None:
    elf = tmp_path / "app.elf"
    elf.write_bytes(b"\x7fELF" + b"\0" * 60)
    message = refused([(0x10000, elf)])
    assert "app.elf (at 0x10000)" in message and "not an ESP app image (first byte 0x7f" in message
    assert "app partition 'factory'" in message and "not the ELF" in message


# -- sizes against the partition table -------------------------------------------------------


def test_app_too_big_for_the_partition_table_being_flashed(
    tmp_path: Path, firmware_dir: Path
) -> None:
    small = PartitionTable(
        (
            Partition("nvs", PartitionType.DATA, NVS, 0x9000, 0x4000),
            Partition("otadata", PartitionType.DATA, OTA, 0xD000, 0x2000),
            Partition("factory", PartitionType.APP, FACTORY, 0x10000, 0x10000),
        )
    )
    table = tmp_path / "partition-table.bin"
    table.write_bytes(small.to_bytes())
    message = refused([(0x8000, table), (0x10000, firmware_dir / "baseline.bin")])
    assert "baseline.bin (at 0x10000): 90192 bytes do not fit partition 'factory'" in message
    assert "(0x10000 bytes at 0x10000) of " + str(table) in message
    assert "make the image smaller or flash a partition table with a bigger partition" in message


def test_data_too_big_for_the_rigs_partition_table() -> None:
    message = refused([(0x9000, b"\0" * 0x5000)])
    assert "<20480 bytes> (at 0x9000): 20480 bytes do not fit partition 'nvs'" in message
    assert "the rig's partition table (TWO_OTA_TABLE)" in message


def test_a_file_that_starts_inside_a_partition_and_runs_past_it() -> None:
    message = refused([(0x30F000, b"\0" * 0x2000)])
    assert (
        "do not fit partition 'ota_1' (0x100000 bytes at 0x210000 from offset 0xff000)" in message
    )


def test_a_file_in_unpartitioned_flash_is_allowed_unless_it_runs_into_a_partition() -> None:
    Flasher().check([(0x310000, b"\0" * 0x1000)])
    table = PartitionTable((Partition("factory", PartitionType.APP, FACTORY, 0x20000, 0x100000),))
    message = refused([(0x10000, b"\0" * 0x11000)], Flasher(partition_table=table))
    assert "runs from unpartitioned flash into partition 'factory' at 0x20000" in message


def test_bootloader_running_into_the_partition_table(tmp_path: Path, firmware_dir: Path) -> None:
    big = tmp_path / "merged.bin"
    big.write_bytes((firmware_dir / "bootloader.bin").read_bytes() + b"\xff" * 0x8000)
    message = refused([(0x0, big)])
    assert "merged.bin (at 0x0)" in message and "into the partition table" in message
    assert "merge-bin" in message


def test_invalid_partition_table(tmp_path: Path, firmware_dir: Path) -> None:
    table = copy(
        firmware_dir / "partition-table.bin", tmp_path / "partition-table.bin", b"\x55", at=38
    )
    message = refused([(0x8000, table), (0x10000, firmware_dir / "baseline.bin")])
    assert "partition-table.bin (at 0x8000): not a valid partition table" in message
    assert "Incorrect MD5 checksum" in message and "regenerate it" in message


def test_partition_table_too_big_for_its_sector(firmware_dir: Path) -> None:
    data = (firmware_dir / "partition-table.bin").read_bytes() + b"\xff" * 0x1000
    message = refused([(0x8000, data)])
    assert "do not fit the partition table's sector" in message


def test_data_running_from_the_bootloader_region_into_the_table() -> None:
    message = refused([(0x7000, b"\0" * 0x2000)])
    assert (
        "<8192 bytes> (at 0x7000): 8192 bytes run past 0x8000, into the partition table" in message
    )


# -- provisioning refusals ---------------------------------------------------------------------


def test_provisioning_that_does_not_fit_is_refused_before_connecting() -> None:
    from hil.device.settings import Provisioning

    with pytest.raises(
        FlashInputError, match=r"provisioning for 'dev-1': provisioning config rejected"
    ):
        Flasher().provision(
            PORT, Provisioning(device_id="dev-1"), {"measurement_interval_s": "often"}
        )
