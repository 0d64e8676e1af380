"""Value types of NVS entries, shared by the NVS image builder and reader."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

IntKind = Literal["u8", "i8", "u16", "i16", "u32", "i32", "u64", "i64"]

# Item type codes of the NVS format (ESP-IDF nvs_types.hpp ItemType).
INT_TYPE_CODES: dict[IntKind, int] = {
    "u8": 0x01,
    "i8": 0x11,
    "u16": 0x02,
    "i16": 0x12,
    "u32": 0x04,
    "i32": 0x14,
    "u64": 0x08,
    "i64": 0x18,
}
INT_KINDS: dict[int, IntKind] = {code: kind for kind, code in INT_TYPE_CODES.items()}
TYPE_STR = 0x21
TYPE_BLOB = 0x41  # legacy single-page blob (NVS format version 1)
TYPE_BLOB_DATA = 0x42
TYPE_BLOB_IDX = 0x48

MAX_KEY_LEN = 15
MAX_NAMESPACES = 254


class NvsError(ValueError):
    """An NVS image that cannot be built or a value that NVS cannot hold; says which key."""


def int_range(kind: IntKind) -> tuple[int, int]:
    """Inclusive value range of an integer kind."""
    bits = int(kind[1:])
    if kind.startswith("u"):
        return 0, (1 << bits) - 1
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


@dataclass(frozen=True)
class NvsInt:
    """An integer stored with an explicit NVS width and signedness."""

    value: int
    kind: IntKind

    def __post_init__(self) -> None:
        if self.kind not in INT_TYPE_CODES:
            raise NvsError(f"unknown NVS integer kind {self.kind!r}")
        low, high = int_range(self.kind)
        if not low <= self.value <= high:
            raise NvsError(f"{self.value} does not fit an NVS {self.kind} ({low}..{high})")


NvsValue: TypeAlias = str | bytes | int | NvsInt
StoredValue: TypeAlias = str | bytes | NvsInt


def as_stored(value: NvsValue) -> StoredValue:
    """The value as it will sit in flash: a bare int is u32 when ≥ 0, else i32."""
    if isinstance(value, bool):
        return NvsInt(int(value), "u8")
    if isinstance(value, int):
        return NvsInt(value, "u32" if value >= 0 else "i32")
    return value
