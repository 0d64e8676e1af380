"""The fleet's flash store: a shared read-only base image, each board's sectors as an overlay."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hil.firmware.catalog import build_images, load_recipes
from hil.sim.app import AppContext
from hil.sim.board import Board, Mode
from hil.sim.flash import SECTOR_SIZE, SpiFlash
from hil.sim.flash_store import (
    BASE,
    DATA,
    ERASED,
    INTERNED_READ_MIN,
    SHARED_SLICE_MIN,
    BaseImage,
    OverlayFlash,
    base_image_path,
)
from hil.sim.registers import ChipIdentity, parse_mac

SECTORS = 8
SMALL = SECTORS * SECTOR_SIZE
REPO_ROOT = Path(__file__).resolve().parents[3]
# A base with something in every sector but the last: a pattern, so read-through is visible.
PATTERN = bytes(range(256)) * ((SMALL - SECTOR_SIZE) // 256)


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return base_image_path(tmp_path / "base", SMALL, [(0, PATTERN)])


def test_base_image_is_named_by_content_and_read_only(tmp_path: Path) -> None:
    first = base_image_path(tmp_path, SMALL, [(0, PATTERN)])
    assert base_image_path(tmp_path, SMALL, [(0, PATTERN)]) == first  # found again, not rewritten
    other = base_image_path(tmp_path, SMALL, [(SECTOR_SIZE, b"\x00")])
    assert other != first
    assert first.read_bytes() == PATTERN + b"\xff" * SECTOR_SIZE
    assert other.read_bytes()[SECTOR_SIZE - 1 : SECTOR_SIZE + 2] == b"\xff\x00\xff"
    assert first.stat().st_mode & 0o222 == 0
    assert sorted(p.name.endswith(".bin") for p in tmp_path.iterdir()) == [True, True]  # no temp left


def test_a_new_overlay_reads_as_the_base(tmp_path: Path, base: Path) -> None:
    with OverlayFlash(tmp_path / "dev.overlay", base) as flash:
        assert flash.size == SMALL and flash.jedec_id == 0x1640C8
        assert flash.read(0, SMALL) == PATTERN + b"\xff" * SECTOR_SIZE
        assert flash.overlaid() == 0
        assert flash.md5(100, 5000) == hashlib.md5(PATTERN[100:5100]).digest()


def test_writes_go_to_the_overlay_with_nor_rules_and_leave_the_base_alone(tmp_path: Path, base: Path) -> None:
    before = base.read_bytes()
    with OverlayFlash(tmp_path / "dev.overlay", base) as flash:
        # Across a sector boundary: both sectors copied up, then ANDed.
        flash.write(SECTOR_SIZE - 2, b"\x0f\x0f\x0f\x0f")
        expected = bytearray(PATTERN + b"\xff" * SECTOR_SIZE)
        for i in range(4):
            expected[SECTOR_SIZE - 2 + i] &= 0x0F
        assert flash.read(0, SMALL) == bytes(expected)
        assert [flash.state(s) for s in range(3)] == [DATA, DATA, BASE]
        assert flash.md5(0, SMALL) == hashlib.md5(expected).digest()
    assert base.read_bytes() == before
    with OverlayFlash(tmp_path / "other.overlay", base) as other:
        assert other.read(0, SMALL) == before  # another board sharing the base sees none of it


def test_erase_is_whole_sectors_of_ff_and_takes_no_page(tmp_path: Path, base: Path) -> None:
    with OverlayFlash(tmp_path / "dev.overlay", base) as flash:
        flash.write(0, b"\x00" * SECTOR_SIZE)
        flash.erase(0, 2 * SECTOR_SIZE)
        assert [flash.state(s) for s in range(3)] == [ERASED, ERASED, BASE]
        assert flash.read(2 * SECTOR_SIZE - 2, 3) == b"\xff\xff" + PATTERN[2 * SECTOR_SIZE : 2 * SECTOR_SIZE + 1]
        assert flash.md5(0, 2 * SECTOR_SIZE) == hashlib.md5(b"\xff" * 2 * SECTOR_SIZE).digest()
        flash.write(SECTOR_SIZE + 1, b"\x12")  # an erased sector written again: 0xFF AND data
        assert flash.read(SECTOR_SIZE, 3) == b"\xff\x12\xff"
        with pytest.raises(ValueError, match="aligned"):
            flash.erase(1, SECTOR_SIZE)
        with pytest.raises(ValueError, match="outside"):
            flash.read(SMALL - 1, 2)
        flash.erase_all()
        assert flash.read(0, SMALL) == b"\xff" * SMALL
    # The overlay file is sparse: the erased sectors' blocks were handed back.
    assert os.stat(tmp_path / "dev.overlay").st_blocks * 512 <= 2 * SECTOR_SIZE


def test_the_overlay_survives_a_power_cycle_and_a_reopen(tmp_path: Path, base: Path) -> None:
    with OverlayFlash(tmp_path / "dev.overlay", base) as flash:
        flash.erase(3 * SECTOR_SIZE, SECTOR_SIZE)
        flash.write(3 * SECTOR_SIZE + 8, b"persist")
        flash.erase(5 * SECTOR_SIZE, SECTOR_SIZE)
    with OverlayFlash(tmp_path / "dev.overlay", base) as flash:
        assert flash.read(3 * SECTOR_SIZE + 8, 7) == b"persist"
        assert flash.read(5 * SECTOR_SIZE, SECTOR_SIZE) == b"\xff" * SECTOR_SIZE
        assert flash.read(0, 16) == PATTERN[:16]
        assert flash.overlaid() == 2


def test_writes_survive_a_killed_process(tmp_path: Path, base: Path) -> None:
    script = (
        "import os, signal\n"
        "from pathlib import Path\n"
        "from hil.sim.flash_store import OverlayFlash\n"
        f"f = OverlayFlash(Path({str(tmp_path / 'dev.overlay')!r}), Path({str(base)!r}))\n"
        "f.erase(0, 4096)\n"
        "f.write(8, b'killed')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], check=False, cwd=REPO_ROOT)
    assert proc.returncode == -9
    with OverlayFlash(tmp_path / "dev.overlay", base) as flash:
        assert flash.read(8, 6) == b"killed"


def test_an_overlay_of_the_wrong_size_is_an_error(tmp_path: Path, base: Path) -> None:
    (tmp_path / "dev.overlay").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="delete it"):
        OverlayFlash(tmp_path / "dev.overlay", base)


def test_boards_share_one_mapping_of_the_base_and_large_reads(tmp_path: Path, base: Path) -> None:
    with (
        OverlayFlash(tmp_path / "a.overlay", base) as a,
        OverlayFlash(tmp_path / "b.overlay", base) as b,
    ):
        assert a.base is b.base
        big_a, big_b = a.read(0, 5 * SECTOR_SIZE), b.read(0, 5 * SECTOR_SIZE)
        assert big_a is big_b
        # A slice of a shared read is shared, and bytes() of it is the same object: how
        # every board's parsed app image holds the same segment bytes.
        assert bytes(big_a[100:5000]) is bytes(big_b[100:5000])
        assert big_a[100:5000] == PATTERN[100:5000]
        assert big_a[100:110] == PATTERN[100:110] and big_a[7] == PATTERN[7]
        assert big_a[::2] == PATTERN[: 5 * SECTOR_SIZE : 2]
        b.write(0, b"\x00")  # b's own sector: its reads are its own from now on
        assert b.read(0, 5 * SECTOR_SIZE) is not big_a
        assert b.read(0, 5 * SECTOR_SIZE)[:2] == b"\x00" + PATTERN[1:2]
    assert base.resolve() not in BaseImage._open  # released with the last board


def test_boards_that_wrote_the_same_large_region_share_its_reads(tmp_path: Path) -> None:
    """An OTA slot with the same update on two boards: the bootloader's read of it is one
    object (by content); a board with other content, or a short read, gets its own."""
    size = 32 * SECTOR_SIZE  # room for a 64 KiB "slot" beside the base's pattern
    base = base_image_path(tmp_path / "base", size, [(0, PATTERN)])
    update = bytes(range(251)) * (INTERNED_READ_MIN // 251 + 1)
    slot, length = 16 * SECTOR_SIZE, INTERNED_READ_MIN
    with (
        OverlayFlash(tmp_path / "a.overlay", base) as a,
        OverlayFlash(tmp_path / "b.overlay", base) as b,
        OverlayFlash(tmp_path / "c.overlay", base) as c,
    ):
        for flash, data in ((a, update), (b, update), (c, update[::-1])):
            flash.erase(slot, length)
            flash.write(slot, data[:length])
        read_a, read_b, read_c = (f.read(slot, length) for f in (a, b, c))
        assert read_a == update[:length] and read_a is read_b
        assert read_c == update[::-1][:length] and read_c is not read_a
        assert bytes(read_a[8:40000]) is bytes(read_b[8:40000])  # segments shared as well
        assert a.read(slot, length - SECTOR_SIZE) is not b.read(slot, length - SECTOR_SIZE)  # short: copies


operations = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(0, SMALL - 1), st.binary(min_size=1, max_size=5000)),
        st.tuples(st.just("erase"), st.integers(0, SECTORS - 1), st.integers(1, SECTORS)),
        st.tuples(st.just("reopen"), st.just(0), st.just(0)),
    ),
    max_size=20,
)


@settings(max_examples=50, deadline=None)
@given(ops=operations)
def test_behaves_like_a_nor_chip_programmed_with_the_base(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int, object]]
) -> None:
    work = tmp_path_factory.mktemp("overlay")
    base = base_image_path(work, SMALL, [(0, PATTERN)])
    model = SpiFlash(work / "model.bin", size=SMALL)
    model.write(0, PATTERN)
    flash = OverlayFlash(work / "dev.overlay", base)
    try:
        for kind, a, b in ops:
            if kind == "write":
                assert isinstance(b, bytes)
                data = b[: SMALL - a]
                flash.write(a, data)
                model.write(a, data)
            elif kind == "erase":
                assert isinstance(b, int)
                sectors = min(b, SECTORS - a)
                flash.erase(a * SECTOR_SIZE, sectors * SECTOR_SIZE)
                model.erase(a * SECTOR_SIZE, sectors * SECTOR_SIZE)
            else:
                flash.close()
                flash = OverlayFlash(work / "dev.overlay", base)
            assert flash.read(0, SMALL) == model.read(0, SMALL)
            assert flash.md5(0, SMALL) == model.md5(0, SMALL)
    finally:
        flash.close()
        model.close()


# -- a board on the store ----------------------------------------------------------------


class _Idle:
    def __init__(self, seen: list[AppContext]) -> None:
        self.seen = seen

    async def run(self, ctx: AppContext) -> None:
        self.seen.append(ctx)
        await asyncio.Event().wait()


def test_boards_on_one_base_boot_and_share_their_app_segments(tmp_path: Path) -> None:
    images = tmp_path / "fw"
    build_images(load_recipes(), ["baseline"], images)
    written = [
        (int(offset, 16), (images / name).read_bytes())
        for offset, name in (line.split() for line in (images / "flash_args").read_text().splitlines()[1:])
    ]
    base = base_image_path(tmp_path, 4 * 1024 * 1024, written)
    seen: list[AppContext] = []

    async def power_cycle(board: Board) -> None:
        await board.wait_for(lambda: board.mode is Mode.APP, timeout=5)
        boots = board.boots
        board.power(False)
        board.power(True)
        await board.wait_for(lambda: board.mode is Mode.APP and board.boots > boots, timeout=5)

    async def main() -> None:
        boards = [
            Board(
                flash=OverlayFlash(tmp_path / f"{n}.overlay", base),
                identity=ChipIdentity(mac=parse_mac(f"58:cf:79:01:02:0{n}")),
                app_factory=lambda behaviour: _Idle(seen),
            )
            for n in range(2)
        ]
        try:
            for board in boards:
                board.power(True)
            for board in boards:
                await power_cycle(board)
        finally:
            for board in boards:
                await board.close()
                board.flash.close()

    asyncio.run(main())
    assert len(seen) == 4 and all(ctx.image.descriptor is not None for ctx in seen)
    first, second = seen[0].image.segments, seen[1].image.segments
    assert [len(s.data) for s in first] == [len(s.data) for s in second]
    # Every segment worth sharing is one object for both boards (short ones are copies).
    pairs = list(zip(first, second, strict=True))
    assert sum(len(a.data) for a, _ in pairs) > 64 * 1024
    assert all(a.data is b.data for a, b in pairs if len(a.data) >= SHARED_SLICE_MIN)
    assert sum(len(a.data) for a, b in pairs if a.data is not b.data) < len(pairs) * SHARED_SLICE_MIN
