"""NVS images: esp-idf-nvs-partition-gen writes, our reader reads back, updates rebuild.

The reader is exercised on generator output (round trips) and on entries written by hand
here, so it is not only checked against the tool it is meant to be independent of.
"""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hil.images.nvs import (
    MAX_STR_BYTES,
    NvsError,
    NvsInt,
    NvsValue,
    build_nvs_image,
    erase_namespace,
    read_nvs,
    update_nvs,
)
from hil.images.nvs_reader import read_nvs_typed
from hil.images.nvs_types import INT_TYPE_CODES, IntKind, int_range

PAGE = 4096

names = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=15)
int_kinds: list[IntKind] = ["u8", "i8", "u16", "i16", "u32", "i32", "u64", "i64"]
nvs_ints = st.sampled_from(int_kinds).flatmap(
    lambda kind: st.integers(*int_range(kind)).map(lambda v: NvsInt(v, kind))
)
strings = st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=80) | st.builds(
    lambda c, n: c * n, st.sampled_from("aé€"), st.integers(0, MAX_STR_BYTES // 3)
)
blobs = st.binary(max_size=100) | st.builds(
    lambda n: bytes(i * 7 % 256 for i in range(n)), st.integers(0, 9000)
)
values: st.SearchStrategy[NvsValue] = strings | blobs | nvs_ints | st.integers(-(2**31), 2**32 - 1)
contents = st.dictionaries(
    names, st.dictionaries(names, values, min_size=1, max_size=5), max_size=3
)


def plain(value: NvsValue) -> str | bytes | int:
    return value.value if isinstance(value, NvsInt) else value


@given(contents)
@settings(max_examples=40, deadline=None)
def test_build_read_round_trip(content: dict[str, dict[str, NvsValue]]) -> None:
    image = build_nvs_image(content, size=0x20000)
    assert len(image) == 0x20000
    expected = {ns: {k: plain(v) for k, v in keys.items()} for ns, keys in content.items()}
    assert read_nvs(image) == expected


def test_round_trip_keeps_integer_kinds() -> None:
    content: dict[str, NvsValue] = {
        f"k_{kind}": NvsInt(int_range(kind)[0], kind) for kind in int_kinds
    }
    content.update(pos=7, neg=-7, flag=True)
    typed = read_nvs_typed(build_nvs_image({"ns": content}))["ns"]
    for kind in int_kinds:
        assert typed[f"k_{kind}"] == NvsInt(int_range(kind)[0], kind)
    assert typed["pos"] == NvsInt(7, "u32")
    assert typed["neg"] == NvsInt(-7, "i32")
    assert typed["flag"] == NvsInt(1, "u8")


def test_provisioning_layout_is_idf_format() -> None:
    image = build_nvs_image({"device": {"device_id": "dev-42", "ca_cert": "-----BEGIN..."}})
    assert len(image) == 0x4000
    state, seq, version = struct.unpack_from("<IIB", image)
    assert (state, seq, version) == (0xFFFF_FFFE, 0, 0xFE)  # active, first, format v2
    assert struct.unpack_from("<I", image, 28)[0] == zlib.crc32(image[4:28], 0xFFFF_FFFF)
    assert image[3 * PAGE :] == b"\xff" * PAGE  # the reserved page stays erased
    assert read_nvs(image) == {"device": {"device_id": "dev-42", "ca_cert": "-----BEGIN..."}}


def test_multi_page_blob_and_longest_string() -> None:
    blob = bytes(range(256)) * 40  # 10 KiB: chunks on three pages
    text = "s" * MAX_STR_BYTES
    image = build_nvs_image({"big": {"blob": blob, "text": text}}, size=0x8000)
    assert read_nvs(image) == {"big": {"blob": blob, "text": text}}


def test_erased_partition_reads_empty() -> None:
    assert read_nvs(b"\xff" * 0x4000) == {}
    assert read_nvs(b"") == {}


@pytest.mark.parametrize(
    ("content", "size", "match"),
    [
        ({"ns": {"k" * 16: 1}}, 0x4000, "key 'kkkkkkkkkkkkkkkk' must be 1..15 bytes"),
        ({"n" * 16: {"k": 1}}, 0x4000, "namespace 'nnnnnnnnnnnnnnnn' must be 1..15 bytes"),
        ({"ns": {"": 1}}, 0x4000, "must be 1..15 bytes"),
        ({"ns": {"k": "x" * (MAX_STR_BYTES + 1)}}, 0x4000, "string of 3968 bytes is too long"),
        ({"ns": {"k": "a\0b"}}, 0x4000, "cannot contain NUL"),
        ({"ns": {"k": 2**32}}, 0x4000, "does not fit an NVS u32"),
        ({"ns": {"k": -(2**31) - 1}}, 0x4000, "does not fit an NVS i32"),
        ({"ns": {"k": 1}}, 0x2000, "too small"),
        ({"ns": {"k": 1}}, 0x3800, "not a multiple"),
        ({"ns": {"k": b"x" * 20000}}, 0x4000, "do not fit an NVS partition of 0x4000"),
        ({"ns": {"k": 1.5}}, 0x4000, "unsupported NVS value type float"),
    ],
)
def test_errors(content: dict[str, dict[str, NvsValue]], size: int, match: str) -> None:
    with pytest.raises(NvsError, match=match):
        build_nvs_image(content, size=size)


def test_nvs_int_range_checked() -> None:
    with pytest.raises(NvsError, match="u8"):
        NvsInt(256, "u8")
    with pytest.raises(NvsError, match="kind"):
        NvsInt(1, "u9")  # type: ignore[arg-type]


# -- update / erase ---------------------------------------------------------------------------


def test_update_sets_deletes_and_keeps_the_rest() -> None:
    image = build_nvs_image(
        {"device": {"device_id": "d1", "interval": NvsInt(10, "u16")}, "other": {"x": b"\x01"}}
    )
    updated = update_nvs(image, "device", {"interval": None, "wifi_ssid": "lab", "retries": 3})
    assert len(updated) == len(image)
    assert read_nvs(updated) == {
        "device": {"device_id": "d1", "wifi_ssid": "lab", "retries": 3},
        "other": {"x": b"\x01"},
    }
    kept = update_nvs(image, "config", {"a": "b"})
    assert read_nvs_typed(kept)["device"]["interval"] == NvsInt(10, "u16")
    assert read_nvs(kept)["config"] == {"a": "b"}


def test_update_blank_partition_and_resize() -> None:
    image = update_nvs(b"\xff" * 0x4000, "device", {"device_id": "d2"}, size=0x6000)
    assert len(image) == 0x6000
    assert read_nvs(image) == {"device": {"device_id": "d2"}}
    emptied = update_nvs(image, "device", {"device_id": None})
    assert read_nvs(emptied) == {}


def test_update_rejects_bad_names() -> None:
    with pytest.raises(NvsError, match="key"):
        update_nvs(b"\xff" * 0x4000, "device", {"a" * 16: 1})
    with pytest.raises(NvsError, match="namespace"):
        update_nvs(b"\xff" * 0x4000, "d" * 16, {"a": 1})


def test_erase_namespace() -> None:
    image = build_nvs_image({"device": {"a": 1}, "config": {"b": "c"}})
    erased = erase_namespace(image, "config")
    assert read_nvs(erased) == {"device": {"a": 1}}
    assert erase_namespace(erased, "absent") == erased


# -- the reader on hand-written entries ---------------------------------------------------------


def _entry_offset(page: int, index: int) -> int:
    return page * PAGE + 64 + 32 * index


def _bitmap_state(image: bytes | bytearray, page: int, index: int) -> int:
    bit = 2 * index
    return (image[page * PAGE + 32 + bit // 8] >> (bit % 8)) & 3


def _set_state(image: bytearray, page: int, index: int, state: int) -> None:
    bit = 2 * index
    at = page * PAGE + 32 + bit // 8
    image[at] = (image[at] & ~(3 << (bit % 8))) | (state << (bit % 8))


def _entry(ns: int, item_type: int, span: int, key: str, data: bytes, chunk: int = 0xFF) -> bytes:
    body = key.encode().ljust(16, b"\0") + data
    crc = zlib.crc32(bytes([ns, item_type, span, chunk]) + body, 0xFFFF_FFFF)
    return bytes([ns, item_type, span, chunk]) + struct.pack("<I", crc) + body


def _append(image: bytearray, *entries: bytes) -> None:
    """Write entries into the first free slots of page 0, as nvs_flash would."""
    free = next(i for i in range(126) if _bitmap_state(image, 0, i) == 3)
    for offset, entry in enumerate(entries):
        at = _entry_offset(0, free + offset)
        image[at : at + 32] = entry
        _set_state(image, 0, free + offset, 2)


def _key_index(image: bytes, key: str) -> int:
    return next(
        i for i in range(126) if image[_entry_offset(0, i) + 8 :].startswith(key.encode() + b"\0")
    )


def _varlen(ns: int, item_type: int, key: str, payload: bytes) -> list[bytes]:
    header = _entry(
        ns,
        item_type,
        1 + (len(payload) + 31) // 32,
        key,
        struct.pack("<HHI", len(payload), 0xFFFF, zlib.crc32(payload, 0xFFFF_FFFF)),
    )
    padded = payload.ljust((len(payload) + 31) // 32 * 32, b"\xff")
    return [header] + [padded[i : i + 32] for i in range(0, len(padded), 32)]


@pytest.fixture
def base() -> bytearray:
    return bytearray(build_nvs_image({"device": {"device_id": "d1", "count": 5}}))


def test_later_entry_overrides_earlier(base: bytearray) -> None:
    u32 = INT_TYPE_CODES["u32"]
    _append(base, _entry(1, u32, 1, "count", struct.pack("<I", 6) + b"\xff" * 4))
    _append(base, *_varlen(1, 0x21, "device_id", b"d2\0"))
    assert read_nvs(bytes(base)) == {"device": {"device_id": "d2", "count": 6}}


def test_legacy_blob_and_new_namespace(base: bytearray) -> None:
    _append(base, _entry(0, 0x01, 1, "legacy", bytes([7]) + b"\xff" * 7))
    _append(base, *_varlen(7, 0x41, "old_blob", b"\x00\x01\x02\x03\x04"))
    assert read_nvs(bytes(base))["legacy"] == {"old_blob": b"\x00\x01\x02\x03\x04"}


def test_entry_with_bad_crc_is_skipped(base: bytearray) -> None:
    at = _entry_offset(0, _key_index(bytes(base), "count")) + 24
    base[at] ^= 0xFF
    assert read_nvs(bytes(base)) == {"device": {"device_id": "d1"}}


def test_string_with_bad_data_crc_is_skipped(base: bytearray) -> None:
    at = _entry_offset(0, _key_index(bytes(base), "device_id") + 1)
    base[at] ^= 0xFF
    assert read_nvs(bytes(base)) == {"device": {"count": 5}}


def test_erased_entry_is_skipped(base: bytearray) -> None:
    _set_state(base, 0, _key_index(bytes(base), "count"), 0)
    assert read_nvs(bytes(base)) == {"device": {"device_id": "d1"}}


def test_entry_of_unknown_namespace_is_ignored(base: bytearray) -> None:
    _append(base, _entry(9, INT_TYPE_CODES["u8"], 1, "orphan", b"\x01" + b"\xff" * 7))
    assert read_nvs(bytes(base)) == {"device": {"device_id": "d1", "count": 5}}


def test_page_with_bad_header_crc_is_skipped(base: bytearray) -> None:
    base[8] ^= 1  # the version byte, covered by the header CRC
    assert read_nvs(bytes(base)) == {}


def test_pages_are_read_in_sequence_order() -> None:
    content = {"ns": {f"k{i}": "v" * 200 for i in range(30)}}
    image = build_nvs_image(content, size=0x8000)
    used = [p for p in range(8) if image[p * PAGE : p * PAGE + 4] != b"\xff" * 4]
    assert len(used) >= 2
    shuffled = bytearray(image)
    first, second = used[0], used[1]
    shuffled[first * PAGE : (first + 1) * PAGE] = image[second * PAGE : (second + 1) * PAGE]
    shuffled[second * PAGE : (second + 1) * PAGE] = image[first * PAGE : (first + 1) * PAGE]
    assert read_nvs(bytes(shuffled)) == read_nvs(image) == content


def test_incomplete_multi_page_blob_reads_as_missing() -> None:
    image = bytearray(build_nvs_image({"ns": {"blob": bytes(6000), "x": 1}}, size=0x6000))
    index = next(i for i in range(126) if image[_entry_offset(0, i) + 1] == 0x42)
    _set_state(image, 0, index, 0)
    assert read_nvs(bytes(image)) == {"ns": {"x": 1}}
