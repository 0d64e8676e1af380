"""The otadata partition: which OTA slot boots, and the rollback state of that choice.

Two 4 KiB sectors each hold one esp_ota_select_entry_t; the valid one with the higher
sequence number wins and selects slot (seq - 1) % number_of_ota_apps. The rules and the
write pattern of esp_ota_set_boot_partition are SPEC_FACTS.md §5 (ESP-IDF
`esp_ota_ops.c`, `bootloader_common_loader.c`).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, replace
from enum import IntEnum

OTADATA_SIZE = 0x2000
OTADATA_SECTOR = 0x1000
OTA_ENTRY_LEN = 32
SEQ_ERASED = 0xFFFF_FFFF
LABEL_ERASED = b"\xff" * 20

_ENTRY = struct.Struct("<I20sII")
assert _ENTRY.size == OTA_ENTRY_LEN


class OtaState(IntEnum):
    NEW = 0
    PENDING_VERIFY = 1
    VALID = 2
    INVALID = 3
    ABORTED = 4
    UNDEFINED = 0xFFFF_FFFF


def ota_crc(seq: int) -> int:
    """CRC of an entry: CRC-32 of the 4 little-endian seq bytes, seeded with 0xFFFFFFFF."""
    return zlib.crc32(struct.pack("<I", seq), 0xFFFF_FFFF)


def _as_state(value: int) -> OtaState | int:
    try:
        return OtaState(value)
    except ValueError:
        return value


@dataclass(frozen=True)
class OtaEntry:
    """esp_ota_select_entry_t. `crc=None` means "the right CRC for this seq"."""

    seq: int
    state: OtaState | int
    label: bytes = LABEL_ERASED
    crc: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.seq <= 0xFFFF_FFFF:
            raise ValueError(f"ota seq {self.seq} is not a u32")
        if not 0 <= self.state <= 0xFFFF_FFFF:
            raise ValueError(f"ota state {self.state} is not a u32")
        if len(self.label) != 20:
            raise ValueError(f"ota seq_label must be 20 bytes, got {len(self.label)}")
        object.__setattr__(self, "state", _as_state(int(self.state)))
        if self.crc is None:
            object.__setattr__(self, "crc", ota_crc(self.seq))

    def to_bytes(self) -> bytes:
        crc = ota_crc(self.seq) if self.crc is None else self.crc
        return _ENTRY.pack(self.seq, self.label, int(self.state), crc)

    @classmethod
    def from_bytes(cls, data: bytes) -> OtaEntry:
        seq, label, state, crc = _ENTRY.unpack_from(data)
        return cls(seq=seq, state=state, label=label, crc=crc)

    @property
    def crc_ok(self) -> bool:
        return self.crc == ota_crc(self.seq)

    @property
    def is_valid(self) -> bool:
        """Bootloader's rule: a real seq, not INVALID/ABORTED, and a matching CRC."""
        return (
            self.seq != SEQ_ERASED
            and self.state not in (OtaState.INVALID, OtaState.ABORTED)
            and self.crc_ok
        )


def initial_otadata() -> bytes:
    """ota_data_initial.bin: both sectors erased, so the bootloader picks factory."""
    return b"\xff" * OTADATA_SIZE


@dataclass(frozen=True)
class OtaData:
    """Both otadata sectors; None stands for an erased sector."""

    entries: tuple[OtaEntry | None, OtaEntry | None]

    @classmethod
    def from_bytes(cls, data: bytes) -> OtaData:
        """Read the 0x2000-byte partition; a sector whose entry bytes are all 0xFF is erased."""
        if len(data) < OTADATA_SECTOR + OTA_ENTRY_LEN:
            raise ValueError(
                f"otadata needs at least 0x{OTADATA_SECTOR + OTA_ENTRY_LEN:x} bytes, "
                f"got 0x{len(data):x}"
            )

        def sector(index: int) -> OtaEntry | None:
            raw = data[index * OTADATA_SECTOR : index * OTADATA_SECTOR + OTA_ENTRY_LEN]
            return None if raw == b"\xff" * OTA_ENTRY_LEN else OtaEntry.from_bytes(raw)

        return cls((sector(0), sector(1)))

    def to_bytes(self) -> bytes:
        """The partition image: each sector is its entry followed by erased flash."""
        return b"".join(
            (e.to_bytes() if e is not None else b"").ljust(OTADATA_SECTOR, b"\xff")
            for e in self.entries
        )

    def active_index(self) -> int | None:
        """Sector holding the valid entry with the larger seq (sector 0 on a tie)."""
        valid = [i for i, e in enumerate(self.entries) if e is not None and e.is_valid]
        if not valid:
            return None
        return max(valid, key=lambda i: (self._seq(i), -i))

    def active_entry(self) -> OtaEntry | None:
        index = self.active_index()
        return None if index is None else self.entries[index]

    def active_slot(self, num_ota_apps: int) -> int | None:
        """The ota_N the bootloader would try first: (seq - 1) % number of OTA apps."""
        entry = self.active_entry()
        if entry is None or num_ota_apps <= 0:
            return None
        return (entry.seq - 1) % num_ota_apps

    def with_entry(self, index: int, entry: OtaEntry | None) -> OtaData:
        """A copy with sector `index` replaced (None erases it)."""
        if index not in (0, 1):
            raise ValueError(f"otadata has sectors 0 and 1, not {index}")
        entries = list(self.entries)
        entries[index] = entry
        return OtaData((entries[0], entries[1]))

    def with_state(self, index: int, state: OtaState) -> OtaData:
        """Rewrite one entry's state (what marking valid / aborting does on flash)."""
        entry = self.entries[index]
        if entry is None:
            raise ValueError(f"otadata sector {index} is erased; there is no state to change")
        return self.with_entry(index, replace(entry, state=state))

    def next_seq_for(self, slot: int, num_ota_apps: int) -> int:
        """The seq esp_ota_set_boot_partition writes to select ota_`slot`.

        The smallest (slot + 1) % n + i·n that is ≥ the active seq; slot + 1 from blank
        (or all-invalid) otadata.
        """
        self._check_slot(slot, num_ota_apps)
        active = self.active_entry()
        if active is None:
            return slot + 1
        base = (slot + 1) % num_ota_apps
        i = 0
        while active.seq > base + i * num_ota_apps:
            i += 1
        return base + i * num_ota_apps

    def set_boot(self, slot: int, num_ota_apps: int, *, rollback: bool = True) -> OtaData:
        """What esp_ota_set_boot_partition(ota_`slot`) leaves in otadata.

        The new entry (state NEW with rollback enabled, else UNDEFINED) goes into the
        sector that is *not* active, so a power cut mid-write leaves the old choice intact;
        from blank otadata it goes into sector 0. The sector's old seq_label is kept.
        """
        seq = self.next_seq_for(slot, num_ota_apps)
        active = self.active_index()
        target = 0 if active is None else 1 - active
        old = self.entries[target]
        label = old.label if old is not None else LABEL_ERASED
        state = OtaState.NEW if rollback else OtaState.UNDEFINED
        return self.with_entry(target, OtaEntry(seq=seq, state=state, label=label))

    def _seq(self, index: int) -> int:
        entry = self.entries[index]
        return -1 if entry is None else entry.seq

    @staticmethod
    def _check_slot(slot: int, num_ota_apps: int) -> None:
        if num_ota_apps <= 0:
            raise ValueError("the partition table has no OTA app partitions")
        if not 0 <= slot < num_ota_apps:
            raise ValueError(f"ota slot {slot} does not exist (there are {num_ota_apps})")
