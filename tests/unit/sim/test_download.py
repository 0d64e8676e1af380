"""ROM download mode and the flasher stub, first frame by frame, then with real esptool."""

from __future__ import annotations

import hashlib
import re
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil.sim.download import BaudRateChanged, Reboot, RunUserCode
from hil.sim.flash import SpiFlash
from hil.sim.registers import (
    ChipIdentity,
    RegisterSpace,
    parse_mac,
)
from hil.sim.slip import slip_encode
from tests.unit.sim.download_harness import (
    TEST_MAC,
    LoopbackHost,
    PtyBoard,
    data_command,
    parse_reply,
    upload_stub,
)

SYNC = b"\x07\x07\x12\x20" + 32 * b"\x55"
OK_ROM = bytes(4)
OK_STUB = bytes(2)


@pytest.fixture
def flash(tmp_path: Path) -> Iterator[SpiFlash]:
    with SpiFlash(tmp_path / "flash.bin") as chip:
        yield chip


@pytest.fixture
def host(flash: SpiFlash) -> LoopbackHost:
    return LoopbackHost(flash)


@pytest.fixture
def stub_host(host: LoopbackHost) -> LoopbackHost:
    frames = upload_stub(host)
    assert frames[-1] == b"OHAI"
    return host


def _rom_begin(host: LoopbackHost, size: int, offset: int, op: int = 0x02) -> bytes:
    blocks = -(-size // 0x400)
    return host.command(op, struct.pack("<IIIII", size, blocks, 0x400, offset, 0)).data


# -- ROM loader --------------------------------------------------------------------


def test_rom_sync_sends_eight_identical_nonzero_replies(host: LoopbackHost) -> None:
    frames = host.request(0x08, SYNC)
    assert len(frames) == 8
    assert len(set(frames)) == 1
    reply = parse_reply(frames[0])
    assert (reply.op, reply.data) == (0x08, OK_ROM)
    assert reply.value != 0


def test_rom_read_reg_gives_mac_words(host: LoopbackHost) -> None:
    assert host.command(0x0A, struct.pack("<I", 0x60008844)).value == 0x79010203
    assert host.command(0x0A, struct.pack("<I", 0x60008848)).value == 0x58CF
    reply = host.command(0x0A, struct.pack("<I", 0x60008850))
    assert (reply.value >> 18) & 7 == 4  # minor revision 4
    assert reply.data == OK_ROM


def test_write_reg_takes_records_with_the_delay_dummy(host: LoopbackHost) -> None:
    """esptool appends a write to 0x6000007C (UART date) as an excuse to delay."""
    records = struct.pack("<IIII", 0x60002028, 23, 0xFFFFFFFF, 0)
    records += struct.pack("<IIII", 0x6000007C, 0, 0, 100)
    assert host.command(0x09, records).data == OK_ROM
    assert host.command(0x0A, struct.pack("<I", 0x60002028)).value == 23
    assert host.command(0x09, records[:10]).data[:2] == bytes([1, 0x05])


def test_rom_security_info_says_c3(host: LoopbackHost) -> None:
    reply = host.command(0x14)
    assert len(reply.data) == 20 + 4
    flags, crypt_cnt, *_purposes, chip_id, _api = struct.unpack("<IB7BII", reply.data[:20])
    assert (flags, crypt_cnt, chip_id) == (0, 0, 5)
    assert reply.data[20:] == OK_ROM


def test_rom_checksum_error_then_retry(host: LoopbackHost, flash: SpiFlash) -> None:
    assert _rom_begin(host, 0x400, 0x10000) == OK_ROM
    block = bytes(range(256)) * 4
    payload, chk = data_command(0, block)
    bad = host.command(0x03, payload, chk ^ 1)
    assert bad.data == bytes([1, 0x07, 0, 0])
    assert host.command(0x03, payload, chk).data == OK_ROM
    assert flash.read(0x10000, 0x400) == block


def test_rom_rejects_out_of_sequence_block(host: LoopbackHost) -> None:
    _rom_begin(host, 0x800, 0x10000)
    payload, chk = data_command(1, b"\x00" * 0x400)
    assert host.command(0x03, payload, chk).data[:2] == bytes([1, 0x05])


def test_rom_write_then_md5_in_hex(host: LoopbackHost, flash: SpiFlash) -> None:
    image = bytes(range(256)) * 12  # 3 KiB, the ROM erases a whole sector
    flash.write(0x20000, b"\x00" * 0x1000)  # stale data that FLASH_BEGIN must erase
    assert _rom_begin(host, len(image), 0x20000) == OK_ROM
    for seq in range(3):
        payload, chk = data_command(seq, image[seq * 0x400 : (seq + 1) * 0x400])
        assert host.command(0x03, payload, chk).data == OK_ROM
    reply = host.command(0x13, struct.pack("<IIII", 0x20000, len(image), 0, 0))
    assert reply.data == hashlib.md5(image).hexdigest().encode() + OK_ROM
    assert flash.read(0x20000 + len(image), 0x400) == b"\xff" * 0x400


def test_rom_deflate_write(host: LoopbackHost, flash: SpiFlash) -> None:
    image = b"compressible " * 500
    packed = zlib.compress(image, 9)
    size = -(-len(image) // 0x400) * 0x400
    host.command(0x10, struct.pack("<IIIII", size, -(-len(packed) // 0x400), 0x400, 0x3000, 0))
    for seq in range(0, len(packed), 0x400):
        payload, chk = data_command(seq // 0x400, packed[seq : seq + 0x400])
        assert host.command(0x11, payload, chk).data == OK_ROM
    assert flash.read(0x3000, len(image)) == image


def test_rom_flash_size_defaults_to_2mb_until_spi_set_params(host: LoopbackHost) -> None:
    assert _rom_begin(host, 0x1000, 0x200000)[:2] == bytes([1, 0x08])
    params = struct.pack("<IIIIII", 0, 4 * 1024 * 1024, 0x10000, 0x1000, 0x100, 0xFFFF)
    assert host.command(0x0B, params).data == OK_ROM
    assert _rom_begin(host, 0x1000, 0x200000) == OK_ROM
    assert _rom_begin(host, 0x2000, 0x3FF000)[:2] == bytes([1, 0x08])


def test_rom_erase_needs_sector_aligned_start(host: LoopbackHost) -> None:
    assert _rom_begin(host, 0x1000, 0x10100)[:2] == bytes([1, 0x08])


def test_rom_read_flash_slow_pads_to_64(host: LoopbackHost, flash: SpiFlash) -> None:
    flash.write(0x100, b"abc")
    reply = host.command(0x0E, struct.pack("<II", 0x100, 3))
    assert reply.data[:3] == b"abc"
    assert len(reply.data) == 64 + 4
    assert host.command(0x0E, struct.pack("<II", 0, 65)).data[:2] == bytes([1, 0x0A])


def test_rom_unknown_opcode_reads_as_unsupported(host: LoopbackHost) -> None:
    """esptool's UnsupportedCommandError needs a different opcode and ``≠0, 05``."""
    reply = host.command(0xD0)
    assert reply.op != 0xD0
    assert reply.data[0] != 0 and reply.data[1] == 0x05


def test_malformed_frames_get_no_stray_bytes(host: LoopbackHost) -> None:
    assert host.feed(b"garbage outside frames\r\n") == []
    assert host.feed(slip_encode(b"\x00\x08")) == []  # shorter than a header
    reply = parse_reply(host.request(0x0A, b"\x00\x00")[0])  # READ_REG with 2 arg bytes
    assert reply.data[:2] == bytes([1, 0x05])


def test_rom_change_baudrate_replies_before_switching(host: LoopbackHost) -> None:
    host.request(0x0F, struct.pack("<II", 921600, 0))
    assert isinstance(host.log[-2], bytes)
    assert host.log[-1] == BaudRateChanged(921600)


@pytest.mark.parametrize(("flag", "event"), [(0, Reboot()), (1, RunUserCode())])
def test_rom_flash_end(host: LoopbackHost, flag: int, event: object) -> None:
    _rom_begin(host, 0, 0)
    assert host.command(0x04, struct.pack("<I", flag)).data == OK_ROM
    assert host.events() == [event]
    assert host.request(0x08, SYNC) == []  # the chip has left download mode


def test_rom_checks_ram_upload(host: LoopbackHost) -> None:
    assert host.command(0x05, struct.pack("<IIII", 16, 1, 0x1800, 0x10)).data[:2] == b"\x01\x0f"
    assert host.command(0x05, struct.pack("<IIII", 16, 1, 0x1800, 0x40380000)).data == OK_ROM
    payload, chk = data_command(0, b"\x00" * 16)
    assert host.command(0x07, payload, chk ^ 0xFF).data[:2] == b"\x01\x07"
    entry_elsewhere = struct.pack("<II", 0, 0x40390000)
    assert host.command(0x06, entry_elsewhere).data[:2] == b"\x01\x0f"


# -- stub ------------------------------------------------------------------------


def test_stub_starts_with_ohai_after_mem_end_reply(host: LoopbackHost) -> None:
    assert not host.session.stub_running
    frames = upload_stub(host)
    assert parse_reply(frames[0]).data == OK_ROM
    assert frames[1:] == [b"OHAI"]
    assert host.session.stub_running


def test_stub_sync_value_zero_and_two_status_bytes(stub_host: LoopbackHost) -> None:
    frames = stub_host.request(0x08, SYNC)
    assert len(frames) == 8
    assert all(parse_reply(f).value == 0 and parse_reply(f).data == OK_STUB for f in frames)


def test_stub_errors_are_big_endian_codes(stub_host: LoopbackHost) -> None:
    stub_host.command(0x02, struct.pack("<IIIII", 0x4000, 1, 0x4000, 0x10000, 0))
    payload, chk = data_command(0, b"\x00" * 0x4000)
    assert stub_host.command(0x03, payload, chk ^ 1).data == b"\xc1\x00"
    assert stub_host.command(0xD1, struct.pack("<II", 0x10, 0x1000)).data == b"\xc0\x00"
    assert stub_host.command(0xD1, struct.pack("<II", 0x400000, 0x1000)).data == b"\xc4\x00"
    assert stub_host.command(0x42).data == b"\xc3\x00"


def test_stub_deflate_write_and_raw_md5(stub_host: LoopbackHost, flash: SpiFlash) -> None:
    image = bytes(range(256)) * 100 + b"tail"
    packed = zlib.compress(image, 9)
    begin = struct.pack("<IIIII", len(image), -(-len(packed) // 0x4000), 0x4000, 0x10004, 0)
    assert stub_host.command(0x10, begin).data == OK_STUB
    payload, chk = data_command(0, packed)
    assert stub_host.command(0x11, payload, chk).data == OK_STUB
    assert stub_host.command(0x12, struct.pack("<I", 1)).data == OK_STUB
    assert flash.read(0x10004, len(image)) == image
    assert flash.read(0x10000, 4) == b"\xff" * 4  # unaligned start: its sector was erased
    reply = stub_host.command(0x13, struct.pack("<IIII", 0x10004, len(image), 0, 0))
    assert reply.data == hashlib.md5(image).digest() + OK_STUB
    assert stub_host.events() == []  # FLASH_END(1) keeps the stub running


def test_stub_flash_end_needs_all_data(stub_host: LoopbackHost) -> None:
    stub_host.command(0x02, struct.pack("<IIIII", 10, 1, 0x4000, 0, 0))
    assert stub_host.command(0x04, struct.pack("<I", 1)).data == b"\xc0\x00"


def test_stub_read_flash_keeps_one_frame_in_flight(
    stub_host: LoopbackHost, flash: SpiFlash
) -> None:
    data = bytes(i % 251 for i in range(10000))
    flash.write(0x1000, data)
    frames = stub_host.request(0xD2, struct.pack("<IIII", 0x1000, len(data), 0x1000, 64))
    assert parse_reply(frames[0]).data == OK_STUB
    assert frames[1:] == [data[:0x1000]]
    received = frames[1]
    while len(received) < len(data):
        more = stub_host.feed(slip_encode(struct.pack("<I", len(received))))
        assert len(more) == 1
        received += more[0]
    assert received == data
    assert stub_host.feed(slip_encode(struct.pack("<I", len(received)))) == [
        hashlib.md5(data).digest()
    ]
    assert stub_host.command(0x0A, struct.pack("<I", 0x60008848)).value == 0x58CF


def test_stub_empty_read_flash_sends_only_the_md5(stub_host: LoopbackHost) -> None:
    frames = stub_host.request(0xD2, struct.pack("<IIII", 0, 0, 0x1000, 64))
    assert frames[1:] == [hashlib.md5(b"").digest()]
    assert stub_host.command(0x0A, struct.pack("<I", 0x60008844)).value == 0x79010203


def test_stub_erase_commands(stub_host: LoopbackHost, flash: SpiFlash) -> None:
    flash.write(0, b"\x00" * 0x3000)
    assert stub_host.command(0xD1, struct.pack("<II", 0x1000, 0x1000)).data == OK_STUB
    assert flash.read(0, 0x3000) == b"\x00" * 0x1000 + b"\xff" * 0x1000 + b"\x00" * 0x1000
    assert stub_host.command(0xD0).data == OK_STUB
    assert flash.read(0, 0x3000) == b"\xff" * 0x3000


def test_stub_run_user_code_has_no_reply(stub_host: LoopbackHost) -> None:
    assert stub_host.request(0xD3) == []
    assert stub_host.events() == [RunUserCode()]


def test_stub_soft_reset_reboots_after_reply(stub_host: LoopbackHost) -> None:
    stub_host.command(0x02, struct.pack("<IIIII", 0, 0, 0x4000, 0, 0))
    assert stub_host.command(0x04, struct.pack("<I", 0)).data == OK_STUB
    assert stub_host.events() == [Reboot()]


def test_stub_change_baudrate(stub_host: LoopbackHost) -> None:
    assert stub_host.command(0x0F, struct.pack("<II", 460800, 115200)).data == OK_STUB
    assert stub_host.events() == [BaudRateChanged(460800)]


# -- registers ---------------------------------------------------------------------


def _spi_command(regs: RegisterSpace, opcode: int, miso_bits: int, addr: int | None = None) -> int:
    """The register sequence of esptool's run_spiflash_command on a C3."""
    base = 0x60002000
    regs.write(base + 0x28, miso_bits - 1)
    flags = 1 << 31 | 1 << 28
    if addr is not None:
        regs.write(base + 0x1C, (24 - 1) << 26 | 7)
        flags |= 1 << 30 | 1 << 29
    regs.write(base + 0x18, flags)
    regs.write(base + 0x20, 7 << 28 | opcode)
    if addr is not None:
        regs.write(base + 0x04, addr)
    regs.write(base + 0x58, 0)
    regs.write(base, 1 << 18)
    assert regs.read(base) & (1 << 18) == 0
    return regs.read(base + 0x58)


def test_spi_flash_identification(flash: SpiFlash) -> None:
    regs = RegisterSpace(ChipIdentity(mac=parse_mac(TEST_MAC)), flash, lambda: None)
    assert _spi_command(regs, 0x9F, 24) == 0x1640C8
    assert _spi_command(regs, 0x5A, 32, addr=0) == 0x50444653  # "SFDP"
    assert _spi_command(regs, 0x5A, 8, addr=0x10) != 0x20  # not an XMC chip
    flash.write(0x40, b"\x12\x34\x56\x78")
    assert _spi_command(regs, 0x03, 32, addr=0x40) == 0x78563412


def test_rtc_watchdog_fires_only_when_unlocked_and_enabled(flash: SpiFlash) -> None:
    fired: list[bool] = []
    regs = RegisterSpace(ChipIdentity(mac=parse_mac(TEST_MAC)), flash, lambda: fired.append(True))
    regs.write(0x60008090, 0x80000000 | 5 << 28 | 1 << 8 | 2)
    assert fired == []  # write-protected
    regs.write(0x600080A8, 0x50D83AA1)
    regs.write(0x60008090, 0)  # esptool's disable_watchdogs
    assert fired == []
    regs.write(0x60008094, 2000)
    regs.write(0x60008090, 0x80000000 | 5 << 28 | 1 << 8 | 2)
    assert fired == [True]


def test_chip_magic_and_unknown_registers(flash: SpiFlash) -> None:
    regs = RegisterSpace(ChipIdentity(mac=parse_mac(TEST_MAC)), flash, lambda: None)
    assert regs.read(0x40001000) in (0x6921506F, 0x1B31506F, 0x4881606F, 0x4361606F)
    # UART_DATE reads the C3's reset value; esptool's zero-mask "delay" write leaves it.
    assert regs.read(0x6000007C) == 0x02008270
    regs.write(0x6000007C, 0, 0)
    assert regs.read(0x6000007C) == 0x02008270
    regs.write(0x60000100, 0xFFFFFFFF)  # not modelled: swallowed
    assert regs.read(0x60000100) == 0
    assert regs.read(0x60008838) == 0  # no secure boot


@pytest.mark.parametrize("text", ["58:cf:79:01:02", "58-cf-79-01-02-03", "58:cf:79:01:02:zz", ""])
def test_parse_mac_rejects_junk(text: str) -> None:
    with pytest.raises(ValueError, match="58:cf:79:01:02:03"):
        parse_mac(text)


def test_identity_validates_fields() -> None:
    with pytest.raises(ValueError, match="multicast"):
        ChipIdentity(mac=parse_mac("59:cf:79:01:02:03"))
    with pytest.raises(ValueError, match="minor_rev"):
        ChipIdentity(mac=parse_mac(TEST_MAC), minor_rev=16)


# -- the real esptool through a pty --------------------------------------------------

IMAGE_SIZE = 70_000


@pytest.fixture
def board(flash: SpiFlash) -> Iterator[PtyBoard]:
    with PtyBoard(flash) as pty_board:
        yield pty_board


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """Half compressible, half random: exercises both deflate and plain paths."""
    noise = b"".join(hashlib.sha256(i.to_bytes(4, "little")).digest() for i in range(2000))
    data = (bytes(range(256)) * 200)[: IMAGE_SIZE // 2] + noise[: IMAGE_SIZE - IMAGE_SIZE // 2]
    path = tmp_path / "app.bin"
    path.write_bytes(data)
    return path


def _ok(board: PtyBoard, *args: str, cwd: Path, stub: bool = True) -> str:
    result = board.esptool(*args, cwd=cwd, stub=stub)
    assert result.returncode == 0, str(result)
    return result.output


@pytest.mark.esptool
@pytest.mark.parametrize("chip", ["auto", "esp32c3"])
def test_esptool_chip_id_and_mac(board: PtyBoard, tmp_path: Path, chip: str) -> None:
    out = _ok(board, "--chip", chip, "chip-id", cwd=tmp_path)
    assert "Chip type:          ESP32-C3 (QFN32) (revision v0.4)" in out
    assert f"MAC:                {TEST_MAC}" in out
    assert "Stub flasher running." in out


@pytest.mark.esptool
def test_esptool_read_mac_from_rom(board: PtyBoard, tmp_path: Path) -> None:
    out = _ok(board, "read-mac", cwd=tmp_path, stub=False)
    assert f"MAC:                {TEST_MAC}" in out


@pytest.mark.esptool
@pytest.mark.parametrize("stub", [True, False])
def test_esptool_flash_id(board: PtyBoard, tmp_path: Path, stub: bool) -> None:
    out = _ok(board, "flash-id", cwd=tmp_path, stub=stub)
    assert "Manufacturer: c8" in out
    assert "Device: 4016" in out
    assert "Detected flash size: 4MB" in out


@pytest.mark.esptool
@pytest.mark.parametrize(
    ("stub", "baud", "write_args"),
    [
        (True, [], []),
        (False, [], []),
        (True, ["-b", "921600"], []),
        (False, ["-b", "921600"], []),
        (False, [], ["--compress"]),
        (True, [], ["--no-compress"]),
    ],
    ids=["stub", "rom", "stub-921600", "rom-921600", "rom-deflate", "stub-plain"],
)
def test_esptool_write_verify_read(
    board: PtyBoard,
    flash: SpiFlash,
    tmp_path: Path,
    image: Path,
    stub: bool,
    baud: list[str],
    write_args: list[str],
) -> None:
    out = _ok(
        board, *baud, "write-flash", *write_args, "0x10000", image.name, cwd=tmp_path, stub=stub
    )
    assert "Hash of data verified." in out
    assert flash.read(0x10000, IMAGE_SIZE) == image.read_bytes()
    if baud:
        assert BaudRateChanged(921600) in board.events
    out = _ok(board, "verify-flash", "0x10000", image.name, cwd=tmp_path, stub=stub)
    assert "Verification successful (digest matched)." in out
    _ok(board, "read-flash", "0x10000", str(IMAGE_SIZE), "back.bin", cwd=tmp_path, stub=stub)
    assert (tmp_path / "back.bin").read_bytes() == image.read_bytes()


@pytest.mark.esptool
def test_esptool_verify_flash_detects_difference(
    board: PtyBoard, flash: SpiFlash, tmp_path: Path, image: Path
) -> None:
    _ok(board, "write-flash", "0x10000", image.name, cwd=tmp_path)
    flash.write(0x10000 + 100, b"\x00")
    result = board.esptool("verify-flash", "0x10000", image.name, cwd=tmp_path)
    assert result.returncode != 0
    assert "Verification failed" in result.output


@pytest.mark.esptool
@pytest.mark.parametrize("stub", [True, False])
def test_esptool_erase_region(board: PtyBoard, flash: SpiFlash, tmp_path: Path, stub: bool) -> None:
    flash.write(0x20000, b"\x00" * 0x3000)
    _ok(board, "erase-region", "0x21000", "0x1000", cwd=tmp_path, stub=stub)
    assert flash.read(0x20000, 0x3000) == b"\x00" * 0x1000 + b"\xff" * 0x1000 + b"\x00" * 0x1000


@pytest.mark.esptool
def test_esptool_erase_flash(board: PtyBoard, flash: SpiFlash, tmp_path: Path) -> None:
    flash.write(0, b"\x00" * 16)
    flash.write(flash.size - 16, b"\x00" * 16)
    out = _ok(board, "erase-flash", cwd=tmp_path)
    assert "Flash memory erased successfully" in out
    assert flash.read(0, 16) == flash.read(flash.size - 16, 16) == b"\xff" * 16


@pytest.mark.esptool
def test_esptool_prints_no_warnings_beyond_the_ptys(
    board: PtyBoard, tmp_path: Path, image: Path
) -> None:
    """Only the pty's missing USB VID/PID is worth a note; nothing is a warning."""
    out = _ok(board, "write-flash", "0x10000", image.name, cwd=tmp_path)
    assert not re.search(r"warn", out, re.IGNORECASE), out
    notes = [line for line in out.splitlines() if line.startswith("NOTE:")]
    for note in notes:
        assert "Failed to get VID/PID" in note or 'option "no-reset" was selected' in note, note


@pytest.mark.esptool
def test_esptool_watchdog_reset(board: PtyBoard, tmp_path: Path) -> None:
    result = board.esptool("--after", "watchdog-reset", "read-mac", cwd=tmp_path, stub=False)
    assert result.returncode == 0, str(result)
    assert board.watchdog_resets == 1


# -- hostile input --------------------------------------------------------------------


def test_an_over_long_frame_is_refused_as_invalid_and_not_kept(host: LoopbackHost) -> None:
    from hil.sim.download import MAX_FRAME_BYTES

    frames = host.request(0x07, b"\x55" * (MAX_FRAME_BYTES + 100))  # MEM_DATA far past any block
    assert [parse_reply(frame).data for frame in frames] == [b"\x01\x05\x00\x00"]  # failed: invalid message
    assert [parse_reply(frame).data for frame in host.request(0x08, SYNC)] == [OK_ROM] * 8  # the loader goes on


def test_a_frame_that_never_closes_grows_nothing(host: LoopbackHost) -> None:
    from hil.sim.download import MAX_FRAME_BYTES

    host.feed(b"\xc0" + b"\x11" * (4 * MAX_FRAME_BYTES))  # 60 MB in the field; the bound is what matters
    decoder = host.session._decoder
    assert len(decoder._frame) <= MAX_FRAME_BYTES + 1
    host.feed(b"\xc0")  # the host gives up: the frame is refused, not acted on
    assert [parse_reply(frame).data for frame in host.request(0x08, SYNC)] == [OK_ROM] * 8


@pytest.mark.parametrize("baud", [0, 299, 5_000_001, 0xFFFFFFFF])
def test_rom_change_baudrate_refuses_rates_the_uart_cannot_take(host: LoopbackHost, baud: int) -> None:
    reply = host.command(0x0F, struct.pack("<II", baud, 0))
    assert reply.data == b"\x01\x05\x00\x00"
    assert host.events() == []  # the UART stays at its rate
