"""otadata: entry codec, CRC vectors, active-slot selection and esp_ota_set_boot_partition."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hil.images.otadata import (
    OTADATA_SECTOR,
    OTADATA_SIZE,
    OtaData,
    OtaEntry,
    OtaState,
    initial_otadata,
    ota_crc,
)

entries = st.builds(
    OtaEntry,
    seq=st.integers(0, 0xFFFF_FFFF),
    state=st.sampled_from(list(OtaState)) | st.integers(0, 0xFFFF_FFFF),
    label=st.binary(min_size=20, max_size=20),
    crc=st.none() | st.integers(0, 0xFFFF_FFFF),
)


@pytest.mark.parametrize(
    ("seq", "crc"),
    [(1, 0x4743989A), (2, 0x55F63774), (3, 0xED4A5011), (4, 0x709D68A8)],
)
def test_crc_vectors(seq: int, crc: int) -> None:
    assert ota_crc(seq) == crc


@given(entries)
@settings(max_examples=200)
def test_entry_round_trip(entry: OtaEntry) -> None:
    raw = entry.to_bytes()
    assert len(raw) == 32
    assert OtaEntry.from_bytes(raw) == entry


def test_entry_layout() -> None:
    raw = OtaEntry(seq=1, state=OtaState.VALID).to_bytes()
    assert raw == struct.pack("<I", 1) + b"\xff" * 20 + struct.pack("<II", 2, 0x4743989A)


def test_entry_validity() -> None:
    assert OtaEntry(1, OtaState.NEW).is_valid
    assert OtaEntry(1, OtaState.PENDING_VERIFY).is_valid
    assert OtaEntry(1, OtaState.UNDEFINED).is_valid  # UNDEFINED is bootable
    assert not OtaEntry(1, OtaState.INVALID).is_valid
    assert not OtaEntry(1, OtaState.ABORTED).is_valid
    assert not OtaEntry(0xFFFF_FFFF, OtaState.VALID).is_valid
    bad_crc = OtaEntry(1, OtaState.VALID, crc=0x1234)
    assert not bad_crc.crc_ok and not bad_crc.is_valid
    assert OtaEntry(1, 7).state == 7 and OtaEntry(1, 2).state is OtaState.VALID


def test_entry_rejects_bad_fields() -> None:
    with pytest.raises(ValueError, match="20 bytes"):
        OtaEntry(1, OtaState.NEW, label=b"x")
    with pytest.raises(ValueError, match="u32"):
        OtaEntry(-1, OtaState.NEW)


def test_initial_otadata_is_blank() -> None:
    assert initial_otadata() == b"\xff" * 0x2000 and OTADATA_SIZE == 0x2000
    blank = OtaData.from_bytes(initial_otadata())
    assert blank.entries == (None, None)
    assert blank.active_index() is None and blank.active_slot(2) is None
    assert blank.to_bytes() == initial_otadata()


@given(st.none() | entries, st.none() | entries)
@settings(max_examples=100)
def test_otadata_round_trip(first: OtaEntry | None, second: OtaEntry | None) -> None:
    # An entry that happens to be all 0xFF is indistinguishable from an erased sector.
    erased = OtaEntry.from_bytes(b"\xff" * 32)
    expected = tuple(None if e == erased else e for e in (first, second))
    raw = OtaData((first, second)).to_bytes()
    assert len(raw) == OTADATA_SIZE
    assert raw[OTADATA_SECTOR + 32 : 2 * OTADATA_SECTOR] == b"\xff" * (OTADATA_SECTOR - 32)
    assert OtaData.from_bytes(raw).entries == expected


def test_active_entry_is_the_valid_one_with_larger_seq() -> None:
    one, two = OtaEntry(1, OtaState.VALID), OtaEntry(2, OtaState.NEW)
    data = OtaData((one, two))
    assert data.active_index() == 1 and data.active_slot(2) == 1
    assert OtaData((two, one)).active_index() == 0
    aborted = OtaData((one, OtaEntry(2, OtaState.ABORTED)))
    assert aborted.active_index() == 0 and aborted.active_slot(2) == 0
    corrupt = OtaData((one, OtaEntry(2, OtaState.VALID, crc=0)))
    assert corrupt.active_index() == 0
    assert OtaData((OtaEntry(5, OtaState.VALID), None)).active_slot(3) == 1  # (5-1) % 3


@pytest.mark.parametrize(
    ("entries", "slot", "expected"),
    [
        ((None, None), 0, 1),  # from blank otadata -> ota_0 gives 1
        ((None, None), 1, 2),
        ((OtaEntry(1, OtaState.VALID), None), 1, 2),  # seq1 -> ota_1 gives 2
        ((OtaEntry(1, OtaState.VALID), OtaEntry(2, OtaState.VALID)), 0, 3),  # seq2 -> ota_0: 3
        ((OtaEntry(1, OtaState.VALID), OtaEntry(2, OtaState.VALID)), 1, 2),  # already ota_1
        ((OtaEntry(3, OtaState.VALID), OtaEntry(2, OtaState.VALID)), 1, 4),
        ((OtaEntry(1, OtaState.INVALID), OtaEntry(2, OtaState.ABORTED)), 1, 2),  # all invalid
    ],
)
def test_next_seq_for(
    entries: tuple[OtaEntry | None, OtaEntry | None], slot: int, expected: int
) -> None:
    assert OtaData(entries).next_seq_for(slot, 2) == expected


def test_next_seq_with_three_slots() -> None:
    data = OtaData((OtaEntry(4, OtaState.VALID), None))  # active slot 0
    assert [data.next_seq_for(s, 3) for s in range(3)] == [4, 5, 6]


@given(st.lists(st.integers(0, 2), min_size=1, max_size=12))
@settings(max_examples=100)
def test_set_boot_always_selects_the_requested_slot(slots: list[int]) -> None:
    data = OtaData.from_bytes(initial_otadata())
    previous_seq = 0
    for slot in slots:
        before = data.active_index()
        data = data.set_boot(slot, 3)
        assert data.active_slot(3) == slot
        entry = data.active_entry()
        assert entry is not None and entry.state is OtaState.NEW and entry.crc_ok
        assert entry.seq >= previous_seq
        previous_seq = entry.seq
        # Written to the inactive sector (re-selecting the active slot repeats its seq,
        # and on a tie the bootloader takes sector 0 — either way the same slot).
        written = data.entries[0 if before is None else 1 - before]
        assert written is not None and written.seq == entry.seq


def test_set_boot_writes_inactive_sector_and_state() -> None:
    data = OtaData.from_bytes(initial_otadata()).set_boot(0, 2)
    assert data.entries == (OtaEntry(1, OtaState.NEW), None)
    data = data.with_state(0, OtaState.VALID).set_boot(1, 2, rollback=False)
    assert data.entries == (OtaEntry(1, OtaState.VALID), OtaEntry(2, OtaState.UNDEFINED))
    data = data.set_boot(0, 2)
    assert data.entries == (OtaEntry(3, OtaState.NEW), OtaEntry(2, OtaState.UNDEFINED))
    raw = data.to_bytes()
    assert (
        raw[:4] == struct.pack("<I", 3)
        and raw[OTADATA_SECTOR : OTADATA_SECTOR + 4] == b"\x02\0\0\0"
    )


def test_set_boot_keeps_the_sector_label() -> None:
    label = b"label".ljust(20, b"\0")
    data = OtaData((OtaEntry(1, OtaState.VALID), OtaEntry(0xFFFF_FFFF, OtaState.UNDEFINED, label)))
    assert data.set_boot(1, 2).entries[1] == OtaEntry(2, OtaState.NEW, label)


def test_bad_slot_arguments() -> None:
    blank = OtaData((None, None))
    with pytest.raises(ValueError, match="no OTA app"):
        blank.set_boot(0, 0)
    with pytest.raises(ValueError, match="slot 2 does not exist"):
        blank.next_seq_for(2, 2)
    with pytest.raises(ValueError, match="sectors 0 and 1"):
        blank.with_entry(2, None)
    with pytest.raises(ValueError, match="erased"):
        blank.with_state(0, OtaState.VALID)
    with pytest.raises(ValueError, match="at least"):
        OtaData.from_bytes(b"\xff" * 100)
