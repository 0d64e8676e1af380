"""The eFuse array and controller: factory blocks, the burn sequence, OR semantics,
read-back, RS check results, protection and persistence; then real espefuse on a pty."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil.sim.efuse import (
    BLOCK_USR_DATA,
    BLOCKS,
    CMD,
    CONF,
    DATE,
    EFUSE_BASE,
    EFUSE_FILE_BYTES,
    PGM_CHECK_VALUE0,
    PGM_CMD,
    PGM_DATA0,
    RD_RS_ERR0,
    READ_CMD,
    READ_OP_CODE,
    WRITE_OP_CODE,
    EfuseArray,
    EfuseController,
    calibration_for,
    factory_blocks,
    rs_check_bytes,
    unique_id_for,
)
from hil.sim.flash import SpiFlash
from hil.sim.registers import ChipIdentity, RegisterSpace, efuse_array_for, parse_mac
from tests.unit.sim.download_harness import TEST_MAC, PtyBoard

MAC = parse_mac(TEST_MAC)
BLOCK3_READ = EFUSE_BASE + BLOCKS[BLOCK_USR_DATA].read_offset


@pytest.fixture
def flash(tmp_path: Path) -> Iterator[SpiFlash]:
    with SpiFlash(tmp_path / "flash.bin") as chip:
        yield chip


def factory(mac: bytes = MAC) -> list[bytes]:
    return factory_blocks(mac=mac, major_rev=0, minor_rev=4, pkg=0, flash_cap=0, flash_vendor=0)


def controller(path: Path | None = None, mac: bytes = MAC) -> EfuseController:
    return EfuseController(EfuseArray(factory(mac), path))


def burn(ctl: EfuseController, block: int, data: bytes, check: bytes | None = None) -> None:
    """espefuse's sequence: program registers, CONF write op, CMD PGM | block, then read."""
    words = [int.from_bytes(data[i : i + 4], "little") for i in range(0, 32, 4)]
    check = rs_check_bytes(data) if check is None else check
    for i, word in enumerate(words):
        ctl.write(EFUSE_BASE + PGM_DATA0 + 4 * i, word)
    for i in range(3):
        ctl.write(EFUSE_BASE + PGM_CHECK_VALUE0 + 4 * i, int.from_bytes(check[4 * i : 4 * i + 4], "little"))
    ctl.write(EFUSE_BASE + CONF, WRITE_OP_CODE)
    ctl.write(EFUSE_BASE + CMD, PGM_CMD | block << 2)
    assert ctl.read(EFUSE_BASE + CMD) & (PGM_CMD | READ_CMD) == 0  # self-clearing


def read_cmd(ctl: EfuseController) -> None:
    ctl.write(EFUSE_BASE + CONF, READ_OP_CODE)
    ctl.write(EFUSE_BASE + CMD, READ_CMD)
    assert ctl.read(EFUSE_BASE + CMD) & READ_CMD == 0


def block3(ctl: EfuseController) -> bytes:
    return b"".join(ctl.read(BLOCK3_READ + 4 * i).to_bytes(4, "little") for i in range(8))


# -- Reed-Solomon ----------------------------------------------------------------------
def test_rs_check_bytes_match_espefuse_reedsolo() -> None:
    reedsolo = pytest.importorskip("reedsolo")
    codec = reedsolo.RSCodec(12)
    for data in (bytes(32), bytes(range(32)), b"\xff" * 32, os.urandom(32)):
        assert rs_check_bytes(data) == bytes(codec.encode(data))[32:]


# -- what the factory burns ------------------------------------------------------------
def test_factory_blocks_decode_as_esptool_reads_a_c3_v0_4(flash: SpiFlash) -> None:
    regs = RegisterSpace(ChipIdentity(mac=MAC), flash, lambda: None)
    block1 = 0x60008844
    word = [regs.read(block1 + 4 * i) for i in range(6)]
    # esptool targets/esp32c3.py: read_mac, get_pkg_version, get_{minor,major}_chip_version
    mac = (word[1] & 0xFFFF).to_bytes(2, "big") + word[0].to_bytes(4, "big")
    assert mac == MAC
    assert (word[3] >> 21) & 7 == 0  # PKG_VERSION 0: "ESP32-C3 (QFN32)"
    assert ((word[5] >> 23) & 1) << 3 | (word[3] >> 18) & 7 == 4  # v0.4
    assert (word[5] >> 24) & 3 == 0
    assert (word[3] >> 27) & 7 == 0  # external flash: no FLASH_CAP, no vendor
    assert (word[3] >> 24) & 7 == 2  # BLK_VERSION_MINOR
    block2 = [regs.read(0x6000885C + 4 * i) for i in range(8)]
    unique_id = b"".join(w.to_bytes(4, "little") for w in block2[:4])
    assert unique_id == unique_id_for(MAC) and any(unique_id)
    assert block2[4] & 3 == 1  # BLK_VERSION_MAJOR 1: "With calibration"
    temp_calib = (block2[4] >> 3) & 0x1FF
    assert temp_calib >> 8 == 1 and 60 <= temp_calib & 0xFF <= 110  # -6.0 .. -11.0 °C
    assert 75 <= (block2[4] >> 12) & 0xFF <= 105  # OCODE


def test_identity_and_calibration_are_stable_per_chip_and_differ_between_chips() -> None:
    other = parse_mac("58:cf:79:01:02:04")
    assert factory(MAC) == factory(MAC)
    assert unique_id_for(MAC) != unique_id_for(other)
    assert factory(MAC)[2] != factory(other)[2]
    cal = calibration_for(MAC)
    assert cal.adc1_init_code[0] >> 9 == 0  # atten0 init code positive, like real parts
    assert all(code >> 9 == 1 for code in cal.adc1_init_code[1:])
    assert cal.thres_hvt in (400, 500)


def test_factory_coded_blocks_carry_a_valid_rs_code() -> None:
    array = EfuseArray(factory())
    for layout in BLOCKS[1:]:
        data, check = array.block(layout.index)
        assert rs_check_bytes(data) == check


def test_uart_date_and_efuse_date_read_their_reset_values(flash: SpiFlash) -> None:
    regs = RegisterSpace(ChipIdentity(mac=MAC), flash, lambda: None)
    assert regs.read(0x6000007C) == 0x02008270  # UART_DATE (uart_reg.h)
    assert regs.read(EFUSE_BASE + DATE) == 0x2007200  # EFUSE_DATE (efuse_reg.h)


# -- the burn sequence -----------------------------------------------------------------
def test_burn_is_read_back_only_after_a_read_command() -> None:
    ctl = controller()
    data = bytes(range(1, 33))
    burn(ctl, BLOCK_USR_DATA, data)
    assert block3(ctl) == bytes(32)  # the read registers still hold what was loaded
    read_cmd(ctl)
    assert block3(ctl) == data
    assert ctl.read(EFUSE_BASE + RD_RS_ERR0) == 0


def test_bits_only_ever_get_set() -> None:
    ctl = controller()
    burn(ctl, BLOCK_USR_DATA, b"\x0f" * 32)
    burn(ctl, BLOCK_USR_DATA, b"\x00" * 32)  # zeros program nothing
    read_cmd(ctl)
    assert block3(ctl) == b"\x0f" * 32
    burn(ctl, BLOCK_USR_DATA, b"\xf0" * 32, check=bytes(12))
    read_cmd(ctl)
    assert block3(ctl) == b"\xff" * 32  # OR of both burns


def test_a_block_whose_code_no_longer_matches_reads_back_flagged() -> None:
    """Burning a coded block twice ORs two codewords into one that fails the RS check;
    espefuse finds BLOCK3's result in RD_RS_ERR0: err_num at [10:8], fail at bit 15."""
    ctl = controller()
    burn(ctl, BLOCK_USR_DATA, b"\x01" * 32)
    burn(ctl, BLOCK_USR_DATA, b"\x02" * 32)
    read_cmd(ctl)
    err0 = ctl.read(EFUSE_BASE + RD_RS_ERR0)
    assert (err0 >> 8) & 7 == 7
    assert err0 >> 15 & 1


def test_wrong_op_code_does_nothing() -> None:
    ctl = controller()
    for i in range(8):
        ctl.write(EFUSE_BASE + PGM_DATA0 + 4 * i, 0xFFFFFFFF)
    ctl.write(EFUSE_BASE + CONF, READ_OP_CODE)  # the read code, not the write code
    ctl.write(EFUSE_BASE + CMD, PGM_CMD | BLOCK_USR_DATA << 2)
    read_cmd(ctl)
    assert block3(ctl) == bytes(32)


def test_write_protected_block_ignores_burns() -> None:
    ctl = controller()
    wr_dis = bytearray(32)
    wr_dis[0:4] = (1 << BLOCKS[BLOCK_USR_DATA].write_disable_bit).to_bytes(4, "little")  # type: ignore[operator]
    burn(ctl, 0, bytes(wr_dis))
    burn(ctl, BLOCK_USR_DATA, b"\xaa" * 32)
    read_cmd(ctl)
    assert block3(ctl) == bytes(32)


def test_read_protected_key_block_reads_zero() -> None:
    ctl = controller()
    burn(ctl, 4, b"\x5a" * 32)
    read_cmd(ctl)
    key0 = EFUSE_BASE + BLOCKS[4].read_offset
    assert ctl.read(key0) == 0x5A5A5A5A
    rd_dis = bytearray(32)
    rd_dis[4] = 1  # RD_DIS bit 0: BLOCK4
    burn(ctl, 0, bytes(rd_dis))
    read_cmd(ctl)
    assert ctl.read(key0) == 0


def test_reset_reloads_and_clears_the_program_registers() -> None:
    ctl = controller()
    burn(ctl, BLOCK_USR_DATA, b"\x11" * 32)
    ctl.write(EFUSE_BASE + PGM_DATA0, 0x1234)
    ctl.reset()
    assert block3(ctl) == b"\x11" * 32
    assert ctl.read(EFUSE_BASE + PGM_DATA0) == 0
    assert ctl.read(EFUSE_BASE + CONF) == 0


# -- persistence -----------------------------------------------------------------------
def test_burned_bits_persist_in_the_state_file(tmp_path: Path) -> None:
    path = tmp_path / "efuse.bin"
    ctl = controller(path)
    assert not path.exists()  # nothing burned yet, nothing written
    burn(ctl, BLOCK_USR_DATA, b"persisted user data, 32 bytes!!!")
    assert path.stat().st_size == EFUSE_FILE_BYTES
    again = controller(path)  # the next power-up of the same board
    assert block3(again) == b"persisted user data, 32 bytes!!!"
    assert block3(controller(None)) == bytes(32)


def test_factory_blocks_follow_the_identity_not_the_file(tmp_path: Path, flash: SpiFlash) -> None:
    """The file keeps only what was burned after the factory: a board restarted with
    another --mac reads its new MAC."""
    path = tmp_path / "efuse.bin"
    array = efuse_array_for(ChipIdentity(mac=MAC), flash, path)
    array.program(BLOCK_USR_DATA, b"\x01" * 32, rs_check_bytes(b"\x01" * 32))
    other = parse_mac("58:cf:79:aa:bb:cc")
    regs = RegisterSpace(ChipIdentity(mac=other), flash, lambda: None, efuse=efuse_array_for(ChipIdentity(mac=other), flash, path))
    assert regs.read(0x60008844) == int.from_bytes(other[2:], "big")
    assert regs.read(BLOCK3_READ) == 0x01010101


def test_a_state_file_of_the_wrong_size_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "efuse.bin"
    path.write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="delete it"):
        EfuseArray(factory(), path)


# -- the real tools on a pty -----------------------------------------------------------
def test_espefuse_summary_burn_block_data_and_security_info(flash: SpiFlash, tmp_path: Path) -> None:
    data = b"espefuse-on-a-virtual-c3-block3!"
    (tmp_path / "usr.bin").write_bytes(data)
    with PtyBoard(flash) as board:
        summary = board.esptool("summary", cwd=tmp_path, tool="espefuse")
        assert summary.returncode == 0, summary
        unique = re.search(r"OPTIONAL_UNIQUE_ID \(BLOCK2\).*\n\s+= ((?:[0-9a-f]{2} ){16})", summary.output)
        assert unique and unique.group(1).strip() != " ".join(["00"] * 16), summary
        assert "= With calibration" in summary.output
        assert re.search(r"TEMP_CALIB \(BLOCK2\)\s+Temperature calibration data\s+= -\d", summary.output)
        assert re.search(r"WAFER_VERSION_MINOR \(BLOCK0\).*= 4 ", summary.output)

        burned = board.esptool("--do-not-confirm", "burn-block-data", "BLOCK_USR_DATA", "usr.bin", cwd=tmp_path, tool="espefuse")
        assert burned.returncode == 0, burned
        assert "BURN BLOCK3  - OK" in burned.output
        after = board.esptool("summary", cwd=tmp_path, tool="espefuse")
        assert " ".join(f"{b:02x}" for b in data) in after.output, after
        assert board.esptool("check-error", cwd=tmp_path, tool="espefuse").returncode == 0

        # Other data into the same coded block is refused by espefuse, as on a chip.
        (tmp_path / "other.bin").write_bytes(b"\xff" * 32)
        again = board.esptool("--do-not-confirm", "burn-block-data", "BLOCK_USR_DATA", "other.bin", cwd=tmp_path, tool="espefuse")
        assert again.returncode != 0, again
        assert " ".join(f"{b:02x}" for b in data) in board.esptool("summary", cwd=tmp_path, tool="espefuse").output

        info = board.esptool("get-security-info", cwd=tmp_path)
        assert info.returncode == 0, info
        assert "Chip ID: 5" in info.output and "Flags: 0x00000000" in info.output
