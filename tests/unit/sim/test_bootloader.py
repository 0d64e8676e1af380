"""The 2nd-stage bootloader model: slot selection, the rollback state machine, image checks."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hil.images.app import AppDescriptor, build_app_image
from hil.images.bootloader import build_bootloader_image
from hil.images.otadata import OTADATA_SIZE, OtaData, OtaEntry, OtaState
from hil.images.partitions import PARTITION_TABLE_OFFSET, TWO_OTA_TABLE
from hil.sim.bootloader import BootFailure, Bootloader, BootTarget
from hil.sim.flash import SpiFlash

OTADATA = 0xD000
SLOTS = {"factory": 0x10000, "ota_0": 0x110000, "ota_1": 0x210000}


@pytest.fixture(scope="module")
def apps() -> dict[str, bytes]:
    return {name: build_app_image(AppDescriptor(version=name, project_name="t")) for name in SLOTS}


class Recorder:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, level: str, tag: str, message: str) -> None:
        self.lines.append(f"{level} {tag}: {message}")

    def text(self) -> str:
        return "\n".join(self.lines)


def make_flash(
    tmp_path: Path, apps: dict[str, bytes], slots: tuple[str, ...] = tuple(SLOTS)
) -> SpiFlash:
    flash = SpiFlash(tmp_path / "flash.bin")
    flash.write(0, build_bootloader_image())
    flash.write(PARTITION_TABLE_OFFSET, TWO_OTA_TABLE.to_bytes())
    for name in slots:
        flash.write(SLOTS[name], apps[name])
    return flash


def set_otadata(flash: SpiFlash, otadata: OtaData) -> None:
    flash.erase(OTADATA, OTADATA_SIZE)
    flash.write(OTADATA, otadata.to_bytes())


def read_otadata(flash: SpiFlash) -> OtaData:
    return OtaData.from_bytes(flash.read(OTADATA, OTADATA_SIZE))


def boot(flash: SpiFlash) -> tuple[BootTarget | BootFailure, Recorder]:
    log = Recorder()
    return Bootloader(flash, log).run(), log


def booted(result: BootTarget | BootFailure) -> str:
    assert isinstance(result, BootTarget), result
    return result.partition.label


def test_blank_otadata_boots_factory_and_prints_the_table(
    tmp_path: Path, apps: dict[str, bytes]
) -> None:
    flash = make_flash(tmp_path, apps)
    result, log = boot(flash)
    assert booted(result) == "factory"
    text = log.text()
    assert "I boot: ESP-IDF v5.4.1 2nd stage bootloader" in text
    assert "I boot:  4 ota_0            OTA app          00 10 00110000 00100000" in text
    assert "Defaulting to factory image" in text
    assert "I boot: Loaded app from partition at offset 0x10000" in text
    assert "I esp_image: segment 0: paddr=00010020 vaddr=3c" in text


def test_new_becomes_pending_verify_then_aborted_and_previous_boots(
    tmp_path: Path, apps: dict[str, bytes]
) -> None:
    flash = make_flash(tmp_path, apps)
    set_otadata(flash, OtaData((OtaEntry(seq=1, state=OtaState.NEW), None)))

    result, _ = boot(flash)
    assert booted(result) == "ota_0"
    entry = read_otadata(flash).entries[0]
    assert entry is not None and entry.state == OtaState.PENDING_VERIFY

    result, _ = boot(flash)  # the app never marked itself valid
    assert booted(result) == "factory"
    entry = read_otadata(flash).entries[0]
    assert entry is not None and entry.state == OtaState.ABORTED


def test_aborted_update_falls_back_to_the_older_ota_slot(
    tmp_path: Path, apps: dict[str, bytes]
) -> None:
    flash = make_flash(tmp_path, apps)
    # ota_0 is the confirmed app (seq 1 VALID); ota_1 was just installed (seq 2 NEW).
    set_otadata(flash, OtaData((OtaEntry(1, OtaState.VALID), OtaEntry(2, OtaState.NEW))))
    assert booted(boot(flash)[0]) == "ota_1"
    assert booted(boot(flash)[0]) == "ota_0"
    entries = read_otadata(flash).entries
    assert entries[1] is not None and entries[1].state == OtaState.ABORTED
    assert booted(boot(flash)[0]) == "ota_0"  # and it stays there


def test_valid_entry_is_left_alone(tmp_path: Path, apps: dict[str, bytes]) -> None:
    flash = make_flash(tmp_path, apps)
    set_otadata(flash, OtaData((OtaEntry(1, OtaState.VALID), OtaEntry(2, OtaState.VALID))))
    before = flash.read(OTADATA, OTADATA_SIZE)
    assert booted(boot(flash)[0]) == "ota_1"
    assert flash.read(OTADATA, OTADATA_SIZE) == before


def test_no_factory_tries_ota0_and_records_the_sequence(
    tmp_path: Path, apps: dict[str, bytes]
) -> None:
    flash = make_flash(tmp_path, apps, slots=("ota_0",))
    table = TWO_OTA_TABLE.__class__(
        tuple(p for p in TWO_OTA_TABLE.partitions if p.label != "factory")
    )
    flash.erase(PARTITION_TABLE_OFFSET, 0x1000)
    flash.write(PARTITION_TABLE_OFFSET, table.to_bytes())
    result, log = boot(flash)
    assert booted(result) == "ota_0"
    assert "No factory image, trying OTA 0" in log.text()
    assert "Set actual ota_seq=1 in otadata[0]" in log.text()
    entry = read_otadata(flash).entries[0]
    assert entry is not None and entry.seq == 1 and entry.state == OtaState.VALID


def test_corrupt_selected_slot_walks_down_to_factory(
    tmp_path: Path, apps: dict[str, bytes]
) -> None:
    flash = make_flash(tmp_path, apps)
    set_otadata(flash, OtaData((OtaEntry(1, OtaState.VALID), OtaEntry(2, OtaState.VALID))))
    flash.write(SLOTS["ota_1"] + 0x30, b"\x00" * 4)  # NOR write: clears bits, corrupts data
    result, log = boot(flash)
    assert booted(result) == "ota_0"
    assert "OTA app partition slot 1 is not bootable" in log.text()


def test_blank_partition_table_is_an_empty_table(tmp_path: Path) -> None:
    """ESP-IDF's verifier accepts an all-0xFF table as zero entries: nothing to boot."""
    flash = SpiFlash(tmp_path / "flash.bin")
    result, log = boot(flash)
    assert isinstance(result, BootFailure)
    assert "I boot: End of partition table" in log.text()
    assert "E boot: No bootable app partitions in the partition table" in log.text()


def test_garbage_partition_table_fails_like_esp_idf(tmp_path: Path) -> None:
    flash = SpiFlash(tmp_path / "flash.bin")
    flash.write(PARTITION_TABLE_OFFSET, b"\x12\x34" + bytes(30))
    result, log = boot(flash)
    assert isinstance(result, BootFailure)
    assert "E flash_parts: partition 0 invalid magic number 0x3412" in log.text()
    assert "E boot: load partition table error!" in log.text()


def test_nothing_bootable(tmp_path: Path, apps: dict[str, bytes]) -> None:
    flash = make_flash(tmp_path, apps, slots=())
    result, log = boot(flash)
    assert isinstance(result, BootFailure)
    assert "image at 0x10000 has invalid magic byte (nothing flashed here?)" in log.text()
    assert "No bootable app partitions in the partition table" in log.text()


states = st.sampled_from(list(OtaState))
entries = st.one_of(st.none(), st.builds(OtaEntry, seq=st.integers(1, 6), state=states))


@settings(max_examples=60, deadline=None)
@given(first=entries, second=entries)
def test_rollback_state_machine_properties(
    tmp_path_factory: pytest.TempPathFactory,
    apps: dict[str, bytes],
    first: OtaEntry | None,
    second: OtaEntry | None,
) -> None:
    """Whatever otadata holds, a boot never leaves PENDING_VERIFY behind except on the
    slot it boots, never boots an INVALID/ABORTED slot, and always boots something."""
    flash = make_flash(tmp_path_factory.mktemp("p"), apps)
    set_otadata(flash, OtaData((first, second)))
    result, _ = boot(flash)
    label = booted(result)
    after = read_otadata(flash).entries
    pending = [
        i for i, e in enumerate(after) if e is not None and e.state == OtaState.PENDING_VERIFY
    ]
    for index in pending:
        entry = after[index]
        assert entry is not None
        assert f"ota_{(entry.seq - 1) % 2}" == label
    before = (first, second)
    for index, entry in enumerate(before):
        if entry is not None and entry.state == OtaState.PENDING_VERIFY:
            now = after[index]
            assert now is not None and now.state == OtaState.ABORTED
    if label != "factory":
        active = read_otadata(flash).active_index()
        assert active is not None
        chosen = after[active]
        assert chosen is not None and f"ota_{(chosen.seq - 1) % 2}" == label
