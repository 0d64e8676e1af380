"""Recipes, reproducible builds, the `hil firmware build` command and manifests."""

from __future__ import annotations

import struct
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from hil.firmware.catalog import (
    FirmwareError,
    build_images,
    cached_build,
    load_manifest,
    load_recipes,
    update_image,
)
from hil.images.app import find_behaviour, parse_image
from hil.images.otadata import initial_otadata
from hil.images.partitions import TWO_OTA_TABLE, PartitionTable


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_build_is_reproducible_and_complete(tmp_path: Path) -> None:
    book = load_recipes()
    first = build_images(book, ["baseline", "v1_1_0"], tmp_path / "a")
    build_images(book, ["baseline", "v1_1_0"], tmp_path / "b")
    assert {p.name for p in first} == {
        "bootloader.bin", "partition-table.bin", "ota_data_initial.bin",
        "baseline.bin", "v1_1_0.bin", "flash_args",
    }  # fmt: skip
    for path in first:
        assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes(), path.name
    assert (
        PartitionTable.from_bytes((tmp_path / "a" / "partition-table.bin").read_bytes())
        == TWO_OTA_TABLE
    )
    assert (tmp_path / "a" / "ota_data_initial.bin").read_bytes() == initial_otadata()


def test_each_recipe_carries_its_behaviour(tmp_path: Path) -> None:
    book = load_recipes()
    build_images(book, ["baseline", "v1_1_0"], tmp_path)
    image = parse_image((tmp_path / "v1_1_0.bin").read_bytes())
    assert image.descriptor is not None
    assert image.descriptor.version == "1.1.0"
    assert image.descriptor.project_name == "env-monitor"
    record = find_behaviour(image)
    assert record is not None and record.model == "reference" and record.defects == ()
    baseline = parse_image((tmp_path / "baseline.bin").read_bytes())
    assert (
        baseline.descriptor is not None
        and baseline.descriptor.elf_sha256 != image.descriptor.elf_sha256
    )


def test_flash_args_is_esptool_file_syntax(tmp_path: Path) -> None:
    build_images(load_recipes(), [], tmp_path)
    lines = (tmp_path / "flash_args").read_text().splitlines()
    assert lines[0] == "--flash-mode dio --flash-freq 80m --flash-size 4MB"
    assert lines[1:] == [
        "0x0 bootloader.bin",
        "0x8000 partition-table.bin",
        "0xd000 ota_data_initial.bin",
        "0x10000 baseline.bin",
    ]


def test_cli_builds_named_recipes(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hil", "firmware", "build", "v2_0_0", "--out", str(tmp_path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "v2_0_0.bin").exists() and (tmp_path / "baseline.bin").exists()
    bad = subprocess.run(
        [sys.executable, "-m", "hil", "firmware", "build", "nope", "--out", str(tmp_path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert bad.returncode == 2
    assert "no recipe 'nope'; known recipes: " in bad.stderr and "baseline" in bad.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[recipes]\n", "[recipes] is missing or empty"),
        ('[recipes.a]\nversion = "1"\n', "recipes.a.project is missing"),
        (
            '[defaults]\nproject="p"\nmodel="m"\ncontract="c"\n[recipes.a]\nversion="1"\ncolour="red"\n',
            "unknown field(s) ['colour']",
        ),
        (
            '[defaults]\nproject="p"\nmodel="m"\ncontract="c"\n[recipes.a]\nversion="1"\n',
            "baseline = 'baseline' names no recipe",
        ),
        ("not toml [", "not valid TOML"),
    ],
)
def test_recipe_errors_name_file_and_field(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "recipes.toml", text)
    with pytest.raises(FirmwareError) as info:
        load_recipes(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_unknown_defect_is_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path / "recipes.toml",
        '[defaults]\nproject="p"\nmodel="m"\ncontract="c"\n[recipes.baseline]\nversion="1"\ndefects=["tempreature_high_2c"]\n',
    )
    with pytest.raises(FirmwareError, match=r"unknown defect\(s\) \['tempreature_high_2c'\]; known: \["):
        load_recipes(path)


def test_manifest_loads_and_orders_files(tmp_path: Path) -> None:
    (tmp_path / "app.bin").write_bytes(b"\xe9" + bytes(100))
    (tmp_path / "boot.bin").write_bytes(b"\xe9" + bytes(100))
    path = write(
        tmp_path / "fw.toml",
        'name="x"\nchip="esp32c3"\nversion="1.0"\ncontract="env-monitor/1"\n'
        '[[flash]]\noffset="0x10000"\nfile="app.bin"\n[[flash]]\noffset=0\nfile="boot.bin"\n',
    )
    manifest = load_manifest(path)
    assert [(f.offset, f.path.name) for f in manifest.flash] == [
        (0, "boot.bin"),
        (0x10000, "app.bin"),
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('chip="esp32s3"\n[[flash]]\noffset="0x0"\nfile="a.bin"\n', "chip = 'esp32s3'"),
        ('chip="esp32c3"\n', "no [[flash]] entries"),
        ('chip="esp32c3"\n[[flash]]\noffset="0x0"\nfile="missing.bin"\n', "flash[0].file"),
        ('chip="esp32c3"\n[[flash]]\noffset="0x10"\nfile="a.bin"\n', "not a multiple of the 4 KiB"),
        ('chip="esp32c3"\n[[flash]]\noffset="zero"\nfile="a.bin"\n', "is not a number"),
        (
            'chip="esp32c3"\n[[flash]]\noffset="0x0"\nfile="a.bin"\nelf="a.elf"\n',
            "exactly one of 'file' or 'elf'",
        ),
        (
            'chip="esp32c3"\n[[flash]]\noffset="0x0"\nfile="big.bin"\n[[flash]]\noffset="0x1000"\nfile="a.bin"\n',
            "overlaps",
        ),
    ],
)
def test_manifest_errors_name_file_field_and_fix(tmp_path: Path, body: str, message: str) -> None:
    (tmp_path / "a.bin").write_bytes(bytes(16))
    (tmp_path / "big.bin").write_bytes(bytes(0x2000))
    path = write(tmp_path / "fw.toml", 'name="x"\nversion="1"\ncontract="c"\n' + body)
    with pytest.raises(FirmwareError) as info:
        load_manifest(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_update_image_is_the_recipe_rebuilt_at_another_version_with_extra_params() -> None:
    image = parse_image(update_image("never_valid", "9.1.0", wifi_pass="elsewhere"))
    assert image.descriptor is not None and image.descriptor.version == "9.1.0"
    record = find_behaviour(image)
    assert record is not None and record.defects == ("never_marks_valid",)
    assert record.params["wifi_pass"] == "elsewhere" and record.params["test_hooks"] is True
    assert parse_image(update_image(None, "1.0.0")) == parse_image(load_recipes().get("baseline").build())
    with pytest.raises(FirmwareError, match="manifest"):
        update_image("firmware/app.toml", "2.0.0")


def test_sessions_sharing_a_cold_cache_all_get_complete_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """xdist workers and parallel CI jobs start on one cold cache at the same moment (the
    first CI run on a new machine errored every test of one worker: two builders renamed
    the same temporary file). Threads here, so that they really collide."""
    monkeypatch.setenv("HIL_CACHE_DIR", str(tmp_path / "cache"))
    with ThreadPoolExecutor(8) as pool:
        built = set(pool.map(lambda _: cached_build(), range(8)))
    assert len(built) == 1
    out = built.pop()
    assert not list(out.glob("*.tmp")), "a temporary file was left behind"
    for name in load_recipes().recipes:
        parse_image((out / f"{name}.bin").read_bytes())
    # and the writer itself: many at once into one directory, every file complete
    with ThreadPoolExecutor(8) as pool:
        for _ in pool.map(lambda _: build_images(load_recipes(), ["baseline"], tmp_path / "d"), range(8)):
            pass
    assert (tmp_path / "d" / "baseline.bin").read_bytes() == (out / "baseline.bin").read_bytes()


def riscv_elf(path: Path, sections: list[tuple[str, int, bytes, int]], entry: int) -> Path:
    """A minimal ELF32 RISC-V executable: one PT_LOAD segment and one section per
    (name, address, data, sh_flags), plus .shstrtab; enough for esptool's elf2image."""
    names = b"\0" + b"".join(name.encode() + b"\0" for name, *_ in sections) + b".shstrtab\0"
    phoff = 52
    offset = phoff + 32 * len(sections)
    offsets = []
    for _, _, data, _ in sections:
        offsets.append(offset)
        offset += len(data)
    shstr_offset, shoff = offset, (offset + len(names) + 3) & ~3
    out = bytearray(b"\x7fELF" + bytes([1, 1, 1, 0]) + bytes(8))
    out += struct.pack("<HHIIIIIHHHHHH", 2, 0xF3, 1, entry, phoff, shoff, 0, 52, 32, len(sections), 40,
                       len(sections) + 2, len(sections) + 1)  # fmt: skip
    for (_, addr, data, flags), at in zip(sections, offsets, strict=True):
        out += struct.pack("<8I", 1, at, addr, addr, len(data), len(data), 5 if flags & 4 else 4, 4)
    for _, _, data, _ in sections:
        out += data
    out += names + bytes(shoff - len(out) - len(names)) + bytes(40)
    name_at = 1
    for (name, addr, data, flags), at in zip(sections, offsets, strict=True):
        out += struct.pack("<10I", name_at, 1, flags, addr, at, len(data), 0, 0, 4, 0)
        name_at += len(name) + 1
    out += struct.pack("<10I", name_at, 3, 0, 0, shstr_offset, len(names), 0, 0, 1, 0)
    path.write_bytes(bytes(out))
    return path


def test_a_manifest_elf_is_converted_with_elf2image_once(tmp_path: Path) -> None:
    riscv_elf(tmp_path / "app.elf", [
        (".flash.rodata", 0x3C000020, bytes(range(256)) * 4, 0x2),  # SHF_ALLOC
        (".iram0.text", 0x40380000, b"\x13\x00\x00\x00" * 64, 0x6),  # SHF_ALLOC | SHF_EXECINSTR: nop
    ], entry=0x40380000)  # fmt: skip
    manifest = write(tmp_path / "fw.toml", (
        'name = "env-monitor"\nchip = "esp32c3"\nversion = "1.4.2"\ncontract = "env-monitor/1"\n'
        '[[flash]]\noffset = "0x10000"\nelf = "app.elf"\n'
    ))  # fmt: skip
    first = load_manifest(manifest, convert_dir=tmp_path / "converted").flash[0]
    assert first.offset == 0x10000 and first.path.parent == tmp_path / "converted"
    image = first.path.read_bytes()
    assert image[0] == 0xE9 and image[12] == 5  # magic, extended header's chip id: ESP32-C3
    info = subprocess.run([sys.executable, "-m", "esptool", "image-info", str(first.path)],
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "ESP32-C3" in info and "0x40380000" in info
    made = first.path.stat().st_mtime_ns
    again = load_manifest(manifest, convert_dir=tmp_path / "converted").flash[0]
    assert again.path == first.path and again.path.stat().st_mtime_ns == made  # not converted twice
