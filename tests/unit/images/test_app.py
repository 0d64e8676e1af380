"""App and bootloader images: descriptor codec, build/parse round trips, ESP-IDF's checks
and their exact messages, the behaviour record, and real esptool accepting what we build."""

from __future__ import annotations

import hashlib
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hil.images.app import (
    APP_DESC_MAGIC,
    BEHAVIOUR_LOAD_ADDR,
    BEHAVIOUR_MAGIC,
    CHIP_ID_ESP32C3,
    IMAGE_MAGIC,
    AppDescriptor,
    AppImage,
    BehaviourRecord,
    ImageError,
    Segment,
    build_app_image,
    check_image,
    find_behaviour,
    parse_image,
)
from hil.images.bootloader import (
    BOOTLOADER_COMPILE_TIME,
    BootloaderDescriptor,
    build_bootloader_image,
)

OTA_0 = 0x110000
PART = 0x100000
DESC = AppDescriptor(version="1.2.3", project_name="envmon")

text_chars = st.characters(codec="utf-8", exclude_characters="\0")


def cstr(limit: int) -> st.SearchStrategy[str]:
    return st.text(text_chars, max_size=limit).filter(lambda s: len(s.encode()) <= limit)


descriptors = st.builds(
    AppDescriptor,
    version=cstr(31),
    project_name=cstr(31),
    secure_version=st.integers(0, 0xFFFF_FFFF),
    time=cstr(15),
    date=cstr(15),
    idf_ver=cstr(31),
    elf_sha256=st.binary(min_size=32, max_size=32),
)


def rehash(image: bytes) -> bytes:
    """Recompute the appended SHA-256 after patching header bytes (not in the checksum)."""
    body = len(image) - 32
    return image[:body] + hashlib.sha256(image[:body]).digest()


def patched(image: bytes, offset: int, value: bytes) -> bytes:
    return image[:offset] + value + image[offset + len(value) :]


def image_error(data: bytes, **kwargs: object) -> str:
    with pytest.raises(ImageError) as info:
        check_image(data, **kwargs)  # type: ignore[arg-type]
    return str(info.value)


def reassemble(image: AppImage, addr: int, length: int) -> bytes:
    """Bytes loaded at [addr, addr+length), across segments esptool may have split."""
    out = b""
    while len(out) < length:
        seg = next(s for s in image.segments if s.load_addr == addr + len(out))
        out += seg.data
    return out[:length]


# -- app descriptor --------------------------------------------------------------------------


@given(descriptors)
@settings(max_examples=200)
def test_descriptor_round_trip(desc: AppDescriptor) -> None:
    raw = desc.to_bytes()
    assert len(raw) == 256
    assert AppDescriptor.from_bytes(raw) == desc


def test_descriptor_layout_matches_esp_app_desc_t() -> None:
    raw = AppDescriptor("v9", "proj", secure_version=7, elf_sha256=b"\xab" * 32).to_bytes()
    assert struct.unpack_from("<II", raw) == (APP_DESC_MAGIC, 7)
    assert raw[16:19] == b"v9\0"
    assert raw[48:53] == b"proj\0"
    assert raw[80:89] == b"00:00:00\0"
    assert raw[96:108] == b"Jan  1 2026\0"
    assert raw[112:119] == b"v5.4.1\0"
    assert raw[144:176] == b"\xab" * 32
    assert struct.unpack_from("<HHB", raw, 176) == (0, 199, 16)  # efuse blk revs, log2(64K)
    assert raw[181:] == bytes(75)


@pytest.mark.parametrize(
    ("field", "value"),
    [("version", "x" * 32), ("project_name", "p" * 32), ("time", "t" * 16), ("idf_ver", "v" * 32)],
)
def test_descriptor_field_too_long(field: str, value: str) -> None:
    with pytest.raises(ValueError, match=field):
        fields: dict[str, str] = {"version": "1", "project_name": "p", field: value}
        AppDescriptor(**fields)  # type: ignore[arg-type]


def test_descriptor_bad_magic_and_short_data() -> None:
    with pytest.raises(ImageError, match="magic"):
        AppDescriptor.from_bytes(bytes(256))
    with pytest.raises(ImageError, match="256"):
        AppDescriptor.from_bytes(DESC.to_bytes()[:100])


# -- build and parse ---------------------------------------------------------------------------

dram_payloads = st.lists(st.binary(min_size=1, max_size=600), max_size=3)


@given(
    desc=descriptors,
    rodata=st.binary(max_size=3000),
    text=st.binary(max_size=3000),
    payloads=dram_payloads,
    page=st.integers(1, 60),
)
@settings(max_examples=30, deadline=None)
def test_build_parse_round_trip(
    desc: AppDescriptor, rodata: bytes, text: bytes, payloads: list[bytes], page: int
) -> None:
    data_segments = [(0x3FC9_0000 + i * 0x1000, p) for i, p in enumerate(payloads)]
    image_bytes = build_app_image(desc, rodata=rodata, text=text, data_segments=data_segments)
    flash_offset = page * 0x10000
    image = check_image(image_bytes, flash_offset=flash_offset, partition_size=None)

    assert image.descriptor == desc
    assert image.checksum_ok and image.hash_ok
    assert image.length == len(image_bytes)
    assert image.length % 16 == 0
    assert image.chip_id == CHIP_ID_ESP32C3
    assert (image.spi_mode, image.flash_freq, image.flash_size) == (2, 0xF, 2)
    assert image_bytes[:4] == bytes([IMAGE_MAGIC, len(image.segments), 0x02, 0x2F])
    assert image_bytes[8] == 0xEE
    first = image.segments[0]
    assert first.kind == "map" and first.file_offset == 0x18
    assert first.data[:256] == desc.to_bytes()
    assert first.data[256 : 256 + len(rodata)] == rodata
    irom = next(s for s in image.segments if 0x4200_0000 <= s.load_addr < 0x4280_0000)
    if text:
        assert irom.data[: len(text)] == text
    for addr, payload in data_segments:
        assert reassemble(image, addr, len(payload)) == payload
    for seg in image.segments:
        if seg.kind == "map":
            assert (flash_offset + seg.data_offset) % 0x10000 == seg.load_addr % 0x10000
    assert parse_image(image_bytes) == image


def test_build_is_reproducible_and_input_sensitive() -> None:
    one = build_app_image(DESC, rodata=b"r" * 10)
    assert one == build_app_image(DESC, rodata=b"r" * 10)
    assert one != build_app_image(AppDescriptor("1.2.4", "envmon"), rodata=b"r" * 10)


def test_default_app_looks_like_an_idf_app() -> None:
    image = parse_image(build_app_image(DESC, data_segments=[(0x4038_0000, b"\x13" * 64)]))
    kinds = [s.kind for s in image.segments]
    assert kinds[0] == "map" and kinds[-1] == "map" and "load" in kinds
    assert len(image.segments[-1].data) > 0x1000  # stand-in code
    assert image.entry == 0x4038_0000
    assert (image.min_rev_full, image.max_rev_full) == (3, 199)
    # C3 I/D buses share the MMU: rodata is linked after the pages the code occupies.
    assert image.segments[0].load_addr == 0x3C01_0020


def test_data_longer_than_the_image_is_ignored() -> None:
    image_bytes = build_app_image(DESC)
    image = check_image(image_bytes + b"\xff" * 5000, flash_offset=OTA_0, partition_size=PART)
    assert image.length == len(image_bytes)


def test_secure_pad_ends_on_an_mmu_page() -> None:
    assert len(build_app_image(DESC, secure_pad=True)) % 0x10000 == 0


@pytest.mark.parametrize(
    ("addr", "match"),
    [(0x3C00_0000, "not a RAM"), (0x3FC9_0002, "word-aligned"), (0x6000_0000, "not a RAM")],
)
def test_build_refuses_bad_data_segments(addr: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_app_image(DESC, data_segments=[(addr, b"1234")])


def test_build_refuses_overlapping_data_segments() -> None:
    with pytest.raises(ValueError, match="overlaps"):
        build_app_image(DESC, data_segments=[(0x3FC9_0000, b"a" * 64), (0x3FC9_0020, b"b" * 4)])


def test_segment_kinds() -> None:
    def kind(addr: int) -> str:
        return Segment(addr, b"", 0).kind

    assert kind(0x3C00_0020) == "map" and kind(0x4200_0020) == "map"
    assert kind(0x3FC8_A000) == "load" and kind(0x4038_0000) == "load"
    assert kind(0x5000_0000) == "load"
    assert kind(0x0) == "" and kind(0x4) == ""


# -- ESP-IDF's checks, in order, with its messages -----------------------------------------------


@pytest.fixture(scope="module")
def app() -> bytes:
    record = BehaviourRecord("reference")
    return build_app_image(DESC, data_segments=[(BEHAVIOUR_LOAD_ADDR, record.to_bytes())])


@pytest.fixture(scope="module")
def parsed(app: bytes) -> AppImage:
    return parse_image(app)


def test_good_image_passes(app: bytes) -> None:
    check_image(app, flash_offset=0x10000, partition_size=PART)
    check_image(app, flash_offset=OTA_0, partition_size=PART)


@pytest.mark.parametrize("first", [b"\x00", b"\xff"])
def test_invalid_magic(app: bytes, first: bytes) -> None:
    message = image_error(first + app[1:], flash_offset=OTA_0, partition_size=PART)
    assert message == "image at 0x110000 has invalid magic byte (nothing flashed here?)"
    with pytest.raises(ImageError, match="image at 0x210000 has invalid magic"):
        parse_image(b"\xff" * 64, flash_offset=0x210000)
    assert "invalid magic" in image_error(b"", flash_offset=OTA_0, partition_size=PART)


def test_wrong_chip_id() -> None:
    image = build_app_image(DESC, chip_id=9)
    assert parse_image(image).hash_ok  # a well-formed image, just for another chip
    assert image_error(image, flash_offset=OTA_0, partition_size=PART) == (
        "mismatch chip ID, expected 5, found 9"
    )


def test_min_revision() -> None:
    assert image_error(
        build_app_image(DESC), flash_offset=OTA_0, partition_size=PART, chip_rev_full=1
    ) == ("Image requires chip rev >= v0.3, but chip is v0.1")
    image = build_app_image(DESC, min_rev_full=101)
    assert image_error(image, flash_offset=OTA_0, partition_size=PART, chip_rev_full=4) == (
        "Image requires chip rev >= v1.1, but chip is v0.4"
    )


def test_max_revision() -> None:
    image = build_app_image(DESC, max_rev_full=99)
    assert image_error(image, flash_offset=OTA_0, partition_size=PART, chip_rev_full=101) == (
        "Image requires chip rev <= v0.99, but chip is v1.1"
    )
    # 0 and 0xFFFF mean "no maximum".
    check_image(
        build_app_image(DESC, max_rev_full=0),
        flash_offset=OTA_0,
        partition_size=PART,
        chip_rev_full=300,
    )


def test_chip_id_is_checked_before_revision() -> None:
    image = build_app_image(DESC, chip_id=12, min_rev_full=50)
    assert "mismatch chip ID" in image_error(image, flash_offset=OTA_0, partition_size=PART)


def test_segment_count(app: bytes) -> None:
    bad = patched(app, 1, b"\x11")
    assert image_error(bad, flash_offset=0x10000, partition_size=PART) == (
        "image at 0x10000 segment count 17 exceeds max 16"
    )
    with pytest.raises(ImageError, match="segment count 17 exceeds max 16"):
        parse_image(bad)


def test_segment_length_not_multiple_of_4(app: bytes) -> None:
    bad = patched(app, 0x18 + 4, struct.pack("<I", 0x101))
    assert (
        image_error(bad, flash_offset=OTA_0, partition_size=PART) == "invalid segment length 0x101"
    )
    with pytest.raises(ImageError, match="invalid segment length 0x101"):
        parse_image(bad)


def test_misaligned_map_segment(app: bytes, parsed: AppImage) -> None:
    first = parsed.segments[0]
    offset = OTA_0 + 0x8000  # 4 KiB-aligned, not 64 KiB-aligned
    expected = (
        f"Segment 0 load address 0x{first.load_addr:08x}, "
        f"doesn't match data 0x{offset + first.data_offset:08x}"
    )
    assert expected == "Segment 0 load address 0x3c010020, doesn't match data 0x00118020"
    assert image_error(app, flash_offset=offset, partition_size=PART) == expected


def test_misaligned_segment_is_reported_before_checksum(app: bytes) -> None:
    flipped = patched(app, 0x40, bytes([app[0x40] ^ 0xFF]))
    message = image_error(flipped, flash_offset=OTA_0 + 0x1000, partition_size=PART)
    assert message.startswith("Segment 0 load address")


def test_flipped_segment_byte_fails_checksum(app: bytes, parsed: AppImage) -> None:
    at = parsed.segments[0].data_offset + 300
    bad = patched(app, at, bytes([app[at] ^ 0x5A]))
    calculated = parsed.checksum_stored ^ 0x5A
    assert image_error(bad, flash_offset=OTA_0, partition_size=PART) == (
        f"Checksum failed. Calculated 0x{calculated:x} read 0x{parsed.checksum_stored:x}"
    )
    result = parse_image(bad)  # structure is fine; integrity is reported, not judged
    assert not result.checksum_ok and not result.hash_ok


def test_checksum_message_has_no_zero_padding() -> None:
    # ESP-IDF prints with %x: 0x5, not 0x05.
    image = build_app_image(DESC)
    parsed = parse_image(image)
    cks_at = parsed.length - 33
    stored = (parsed.checksum_calculated ^ 0x05) & 0xFF
    bad = patched(image, cks_at, bytes([stored]))
    assert image_error(bad, flash_offset=OTA_0, partition_size=PART) == (
        f"Checksum failed. Calculated 0x{parsed.checksum_calculated:x} read 0x{stored:x}"
    )


def test_flipped_byte_after_the_segments_fails_the_hash(app: bytes, parsed: AppImage) -> None:
    last = parsed.segments[-1]
    padding_at = last.data_offset + len(last.data)  # zero padding before the checksum byte
    assert padding_at < parsed.length - 33
    bad_padding = patched(app, padding_at, b"\x77")
    bad_hash = patched(app, len(app) - 1, bytes([app[-1] ^ 1]))
    for bad in (bad_padding, bad_hash):
        assert image_error(bad, flash_offset=OTA_0, partition_size=PART) == (
            "Image hash failed - image is corrupt"
        )
        check_image(bad, flash_offset=OTA_0, partition_size=PART, check_hash=False)


def test_image_too_big_for_partition(app: bytes) -> None:
    assert image_error(app, flash_offset=OTA_0, partition_size=len(app) - 1) == (
        f"Image length {len(app)} doesn't fit in partition length {len(app) - 1}"
    )
    check_image(app, flash_offset=OTA_0, partition_size=len(app))


def test_fit_is_checked_after_checksum(app: bytes, parsed: AppImage) -> None:
    at = parsed.segments[0].data_offset + 8
    bad = patched(app, at, bytes([app[at] ^ 1]))
    assert image_error(bad, flash_offset=OTA_0, partition_size=100).startswith("Checksum failed")


def test_partition_larger_than_16mb(app: bytes) -> None:
    assert image_error(app, flash_offset=OTA_0, partition_size=0x2000000) == (
        "partition size 0x2000000 invalid, larger than 16MB"
    )


@pytest.mark.parametrize(
    ("addr", "reason", "shown"),
    [
        (0x3FCD_8000, "overlaps bootloader stack", 0x3FCD_8000),
        (0x403C_F000, "overlaps loader IRAM", 0x403C_F000),
        # Plain DRAM below the stack, but the same SRAM as the loader's IRAM: the
        # bootloader checks it under its instruction-bus address.
        (0x3FCC_F000, "overlaps loader IRAM", 0x403C_F000),
    ],
)
def test_ram_segment_clobbering_the_bootloader(addr: int, reason: str, shown: int) -> None:
    image = build_app_image(DESC, data_segments=[(addr, b"\x01" * 0x100)])
    index = next(i for i, s in enumerate(parse_image(image).segments) if s.load_addr == addr)
    assert image_error(image, flash_offset=OTA_0, partition_size=PART) == (
        f"Segment {index} 0x{shown:08x}-0x{shown + 0x100:08x} invalid: {reason}"
    )


def test_bad_load_address_range(app: bytes, parsed: AppImage) -> None:
    index, seg = next((i, s) for i, s in enumerate(parsed.segments) if s.kind == "load")
    bad = rehash(patched(app, seg.file_offset, struct.pack("<I", 0x6000_0000)))
    end = 0x6000_0000 + len(seg.data)
    assert image_error(bad, flash_offset=OTA_0, partition_size=PART) == (
        f"Segment {index} 0x60000000-0x{end:08x} invalid: bad load address range"
    )


@pytest.mark.parametrize("cut", [10, 30, 0x200, -40, -1])
def test_truncated_image(app: bytes, cut: int) -> None:
    with pytest.raises(ImageError, match="truncated"):
        parse_image(app[:cut], flash_offset=OTA_0)


# -- behaviour record ------------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
records = st.builds(
    BehaviourRecord,
    model=st.text(min_size=1, max_size=30),
    defects=st.lists(st.text(max_size=20), max_size=5).map(tuple),
    params=st.dictionaries(st.text(max_size=10), json_values, max_size=5),
)


@given(records)
@settings(max_examples=200)
def test_behaviour_record_round_trip(record: BehaviourRecord) -> None:
    raw = record.to_bytes()
    assert raw.startswith(BEHAVIOUR_MAGIC) and len(raw) % 4 == 0
    assert BehaviourRecord.from_bytes(raw) == record


def test_behaviour_record_is_canonical_json() -> None:
    record = BehaviourRecord("ref", ("b", "a"), {"z": 1, "a": [1, 2]})
    body = b'{"defects":["b","a"],"model":"ref","params":{"a":[1,2],"z":1}}'
    assert record.to_bytes() == (BEHAVIOUR_MAGIC + struct.pack("<I", len(body)) + body).ljust(
        76, b"\0"
    )
    assert record.params["z"] == 1
    with pytest.raises(TypeError):
        record.params["z"] = 2  # type: ignore[index]


def test_behaviour_record_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="JSON"):
        BehaviourRecord("ref", params={"x": object()})
    with pytest.raises(ValueError, match="model"):
        BehaviourRecord("")
    with pytest.raises(ImageError, match="magic"):
        BehaviourRecord.from_bytes(b"NOTMAGIC" + bytes(8))
    raw = BehaviourRecord("ref").to_bytes()
    with pytest.raises(ImageError, match="truncated"):
        BehaviourRecord.from_bytes(raw[:14])
    broken = raw[:12] + b"x" + raw[13:]
    with pytest.raises(ImageError, match="corrupt"):
        BehaviourRecord.from_bytes(broken)


@given(record=records)
@settings(max_examples=15, deadline=None)
def test_find_behaviour_in_built_image(record: BehaviourRecord) -> None:
    image = build_app_image(DESC, data_segments=[(BEHAVIOUR_LOAD_ADDR, record.to_bytes())])
    assert find_behaviour(parse_image(image)) == record


def test_find_behaviour_across_a_split_segment() -> None:
    # Bigger than the gap esptool fills before the IROM segment, so it gets split in two.
    record = BehaviourRecord("ref", ("slow_sensor",), {"blob": "x" * 70_000})
    image = parse_image(
        build_app_image(DESC, data_segments=[(BEHAVIOUR_LOAD_ADDR, record.to_bytes())])
    )
    pieces = [s for s in image.segments if BEHAVIOUR_LOAD_ADDR <= s.load_addr < 0x3FCA_0000]
    assert len(pieces) == 2
    assert find_behaviour(image) == record


def test_image_without_behaviour() -> None:
    assert find_behaviour(parse_image(build_app_image(DESC))) is None


# -- bootloader ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bootloader() -> bytes:
    return build_bootloader_image()


def test_bootloader_layout(bootloader: bytes) -> None:
    image = check_image(bootloader, flash_offset=0x0, partition_size=None)
    assert image.entry == 0x403C_C710
    assert [(s.load_addr, len(s.data), s.kind) for s in image.segments] == [
        (0x3FCD_5820, 0x16A0, "load"),
        (0x403C_C710, 0x968, "load"),
        (0x403C_E710, 0x2E78, "load"),
    ]
    assert image.hash_ok and image.checksum_ok and image.descriptor is None
    assert bootloader[2:4] == b"\x02\x2f"
    desc = BootloaderDescriptor.from_bytes(image.segments[0].data)
    assert desc == BootloaderDescriptor(idf_ver="v5.4.1", date_time=BOOTLOADER_COMPILE_TIME)
    assert image.segments[0].data[0] == 0x50


def test_bootloader_is_reproducible_per_idf_version(bootloader: bytes) -> None:
    assert build_bootloader_image() == bootloader
    other = build_bootloader_image(idf_ver="v5.3.2")
    assert other != bootloader
    desc = BootloaderDescriptor.from_bytes(parse_image(other).segments[0].data)
    assert desc.idf_ver == "v5.3.2"


def test_bootloader_hash_is_not_checked_at_offset_0(bootloader: bytes) -> None:
    # ESP-IDF (no secure boot) skips the bootloader's appended hash: esptool may rewrite
    # its header when flashing.
    bad = patched(bootloader, len(bootloader) - 1, bytes([bootloader[-1] ^ 1]))
    check_image(bad, flash_offset=0x0, partition_size=None)


def test_bootloader_descriptor_round_trip_and_errors() -> None:
    desc = BootloaderDescriptor(idf_ver="v5.4.1", version=3, secure_version=2)
    raw = desc.to_bytes()
    assert len(raw) == 80 and raw[0] == 0x50 and raw[3] == 2
    assert BootloaderDescriptor.from_bytes(raw) == desc
    with pytest.raises(ImageError, match="magic"):
        BootloaderDescriptor.from_bytes(bytes(80))
    with pytest.raises(ValueError, match="date_time"):
        BootloaderDescriptor(date_time="x" * 24)


# -- real esptool is the judge ------------------------------------------------------------------


def esptool_image_info(path: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "esptool", "--chip", "esp32c3", "image-info", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_esptool_image_info_accepts_the_app(app: bytes, parsed: AppImage, tmp_path: Path) -> None:
    path = tmp_path / "app.bin"
    path.write_bytes(app)
    out = esptool_image_info(path)
    assert "ESP32-C3" in out
    assert "Chip ID: 5 (ESP32-C3)" in out
    assert "App version: 1.2.3" in out
    assert "Project name: envmon" in out
    assert "Minimal chip revision: v0.3" in out
    assert "Maximal chip revision: v1.99" in out
    assert f"Checksum: 0x{parsed.checksum_stored:02x} (valid)" in out
    assert f"Validation hash: {hashlib.sha256(app[:-32]).hexdigest()} (valid)" in out
    assert "MMU page size: 64 KB" in out


def test_esptool_image_info_accepts_the_bootloader(bootloader: bytes, tmp_path: Path) -> None:
    path = tmp_path / "bootloader.bin"
    path.write_bytes(bootloader)
    out = esptool_image_info(path)
    assert "ESP32-C3" in out
    assert "Checksum:" in out and "(valid)" in out
    assert "Validation hash:" in out and "invalid" not in out
    assert "Bootloader version: 1" in out
    assert "ESP-IDF: v5.4.1" in out
    assert f"Compile time: {BOOTLOADER_COMPILE_TIME}" in out
