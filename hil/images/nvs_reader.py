"""Our own reader of NVS partitions, independent of the generator that writes them.

The firmware model reads its configuration back from flash after tests, OTA and its own
writes, so reading must follow the format the way ESP-IDF's nvs_flash does rather than
trusting the writer: pages in sequence order, header and entry CRCs verified, erased and
corrupt entries skipped, later entries overriding earlier ones, multi-page blobs
reassembled from their index and chunks.

Format (ESP-IDF nvs_page.hpp / nvs_types.hpp): 4096-byte pages; a 32-byte header
(u32 state, u32 seq, u8 version, 19 reserved, u32 CRC-32 of bytes 4..27), a 32-byte
entry-state bitmap (2 bits per entry: 11 empty, 10 written, 00 erased), then 126 entries
of 32 bytes (u8 ns, u8 type, u8 span, u8 chunk index, u32 CRC-32 of bytes 0..3 and
8..31, char key[16], u8 data[8]).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from hil.images.nvs_types import (
    INT_KINDS,
    TYPE_BLOB,
    TYPE_BLOB_DATA,
    TYPE_BLOB_IDX,
    TYPE_STR,
    NvsInt,
    StoredValue,
)

PAGE_SIZE = 4096
ENTRY_SIZE = 32
ENTRY_COUNT = 126
FIRST_ENTRY_OFFSET = 64
BITMAP_OFFSET = 32

PAGE_ACTIVE = 0xFFFF_FFFE
PAGE_FULL = 0xFFFF_FFFC
PAGE_FREEING = 0xFFFF_FFF8
_READABLE_PAGES = (PAGE_ACTIVE, PAGE_FULL, PAGE_FREEING)

ENTRY_EMPTY = 0b11
ENTRY_WRITTEN = 0b10

_INT_FORMATS = {
    "u8": "<B",
    "i8": "<b",
    "u16": "<H",
    "i16": "<h",
    "u32": "<I",
    "i32": "<i",
    "u64": "<Q",
    "i64": "<q",
}


def nvs_crc32(data: bytes) -> int:
    """NVS's CRC-32: the standard polynomial seeded with 0xFFFFFFFF (esp_rom_crc32_le)."""
    return zlib.crc32(data, 0xFFFF_FFFF)


@dataclass(frozen=True)
class _BlobIndex:
    size: int
    chunk_count: int
    chunk_start: int


_Item = StoredValue | _BlobIndex


def _page_header_ok(page: bytes) -> bool:
    crc: int = struct.unpack_from("<I", page, 28)[0]
    return nvs_crc32(page[4:28]) == crc


def _entry_state(page: bytes, index: int) -> int:
    bit = index * 2
    return (page[BITMAP_OFFSET + bit // 8] >> (bit % 8)) & 0b11


def _entry(page: bytes, index: int) -> bytes:
    start = FIRST_ENTRY_OFFSET + index * ENTRY_SIZE
    return page[start : start + ENTRY_SIZE]


def _readable_pages(data: bytes) -> list[bytes]:
    """Pages that hold entries, in the order they were written (by sequence number)."""
    pages: list[tuple[int, bytes]] = []
    for start in range(0, len(data) - PAGE_SIZE + 1, PAGE_SIZE):
        page = data[start : start + PAGE_SIZE]
        state, seq = struct.unpack_from("<II", page)
        if state in _READABLE_PAGES and _page_header_ok(page):
            pages.append((seq, page))
    return [page for _, page in sorted(pages, key=lambda item: item[0])]


class _Collector:
    """Accumulates the effect of entries in write order."""

    def __init__(self) -> None:
        self.namespaces: dict[int, str] = {}
        self.items: dict[tuple[int, str], _Item] = {}
        self.chunks: dict[tuple[int, str, int], bytes] = {}

    def put(self, ns: int, key: str, item: _Item) -> None:
        # The newest write wins, and takes the newest position.
        self.items.pop((ns, key), None)
        self.items[(ns, key)] = item

    def read_page(self, page: bytes) -> None:
        index = 0
        while index < ENTRY_COUNT:
            index += self._read_entry(page, index)

    def _read_entry(self, page: bytes, index: int) -> int:
        """Interpret entry `index`; returns how many entries it occupies (its span)."""
        if _entry_state(page, index) != ENTRY_WRITTEN:
            return 1
        entry = _entry(page, index)
        header: tuple[int, int, int, int, int] = struct.unpack_from("<BBBBI", entry)
        ns, item_type, span, chunk_index, crc = header
        if nvs_crc32(entry[:4] + entry[8:]) != crc:
            return 1
        if span == 0 or index + span > ENTRY_COUNT:
            return 1
        key = entry[8:24].split(b"\0", 1)[0].decode("utf-8", errors="replace")
        payload = entry[24:32]
        if item_type in INT_KINDS:
            kind = INT_KINDS[item_type]
            fmt = _INT_FORMATS[kind]
            value: int = struct.unpack_from(fmt, payload)[0]
            if ns == 0 and kind == "u8":
                self.namespaces[value] = key
            else:
                self.put(ns, key, NvsInt(value, kind))
            return 1
        if item_type in (TYPE_STR, TYPE_BLOB, TYPE_BLOB_DATA):
            size, _reserved, data_crc = struct.unpack_from("<HHI", payload)
            start = FIRST_ENTRY_OFFSET + (index + 1) * ENTRY_SIZE
            if size > (span - 1) * ENTRY_SIZE:
                return span
            data = page[start : start + size]
            if nvs_crc32(data) != data_crc:
                return span
            if item_type == TYPE_STR:
                self.put(ns, key, data.split(b"\0", 1)[0].decode("utf-8", errors="replace"))
            elif item_type == TYPE_BLOB:
                self.put(ns, key, bytes(data))
            else:
                self.chunks[(ns, key, chunk_index)] = bytes(data)
            return span
        if item_type == TYPE_BLOB_IDX:
            size, count, start_chunk = struct.unpack_from("<IBB", payload)
            self.put(ns, key, _BlobIndex(size, count, start_chunk))
            return span
        return span  # an item type this reader does not know: step over it

    def resolve(self) -> dict[str, dict[str, StoredValue]]:
        result: dict[str, dict[str, StoredValue]] = {}
        for (ns, key), item in self.items.items():
            name = self.namespaces.get(ns)
            if name is None:
                continue
            if isinstance(item, _BlobIndex):
                blob = self._assemble(ns, key, item)
                if blob is None:
                    continue  # an incomplete blob reads as "not found", as in nvs_get_blob
                result.setdefault(name, {})[key] = blob
            else:
                result.setdefault(name, {})[key] = item
        return result

    def _assemble(self, ns: int, key: str, index: _BlobIndex) -> bytes | None:
        parts = []
        for chunk in range(index.chunk_start, index.chunk_start + index.chunk_count):
            part = self.chunks.get((ns, key, chunk))
            if part is None:
                return None
            parts.append(part)
        blob = b"".join(parts)
        return blob if len(blob) == index.size else None


def read_nvs_typed(data: bytes) -> dict[str, dict[str, StoredValue]]:
    """All namespaces with at least one key, integers kept with their stored width."""
    collector = _Collector()
    for page in _readable_pages(data):
        collector.read_page(page)
    return collector.resolve()


def read_nvs(data: bytes) -> dict[str, dict[str, str | bytes | int]]:
    """Namespace → key → value (str, bytes, or int) of an NVS partition image.

    An erased (all 0xFF) partition reads as {}; namespaces without keys are left out.
    """
    return {
        ns: {
            key: value.value if isinstance(value, NvsInt) else value for key, value in keys.items()
        }
        for ns, keys in read_nvs_typed(data).items()
    }
