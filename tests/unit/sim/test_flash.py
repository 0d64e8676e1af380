"""The file-backed NOR flash: erase/program rules, bounds, persistence."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hil.sim.flash import SECTOR_SIZE, SpiFlash

SMALL = 4 * SECTOR_SIZE
REPO_ROOT = Path(__file__).resolve().parents[3]


def test_new_flash_is_erased_and_sized(tmp_path: Path) -> None:
    with SpiFlash(tmp_path / "state" / "flash.bin") as flash:
        assert flash.size == 4 * 1024 * 1024
        assert flash.jedec_id == 0x1640C8
        assert flash.read(0, 16) == b"\xff" * 16
        assert flash.read(flash.size - 16, 16) == b"\xff" * 16
    assert (tmp_path / "state" / "flash.bin").stat().st_size == 4 * 1024 * 1024
    assert list((tmp_path / "state").iterdir()) == [tmp_path / "state" / "flash.bin"]


def test_write_only_clears_bits(tmp_path: Path) -> None:
    with SpiFlash(tmp_path / "f.bin", size=SMALL) as flash:
        flash.write(0x10, b"\xf0\x0f\xaa")
        flash.write(0x10, b"\x3c\x3c\xff")
        assert flash.read(0x10, 3) == bytes([0xF0 & 0x3C, 0x0F & 0x3C, 0xAA])


def test_erase_restores_whole_sectors(tmp_path: Path) -> None:
    with SpiFlash(tmp_path / "f.bin", size=SMALL) as flash:
        flash.write(0, b"\x00" * SMALL)
        flash.erase(SECTOR_SIZE, SECTOR_SIZE)
        assert flash.read(SECTOR_SIZE - 1, 1) == b"\x00"
        assert flash.read(SECTOR_SIZE, SECTOR_SIZE) == b"\xff" * SECTOR_SIZE
        assert flash.read(2 * SECTOR_SIZE, 1) == b"\x00"
        flash.erase_all()
        assert flash.read(0, SMALL) == b"\xff" * SMALL


@pytest.mark.parametrize(("offset", "length"), [(1, SECTOR_SIZE), (0, 100), (SECTOR_SIZE, 1)])
def test_erase_must_be_sector_aligned(tmp_path: Path, offset: int, length: int) -> None:
    with (
        SpiFlash(tmp_path / "f.bin", size=SMALL) as flash,
        pytest.raises(ValueError, match="aligned"),
    ):
        flash.erase(offset, length)


@pytest.mark.parametrize(
    "access",
    [
        lambda f: f.read(SMALL - 1, 2),
        lambda f: f.write(SMALL, b"x"),
        lambda f: f.erase(SMALL, SECTOR_SIZE),
        lambda f: f.md5(-1, 4),
    ],
)
def test_out_of_bounds_access_names_offset_and_size(tmp_path: Path, access: object) -> None:
    with SpiFlash(tmp_path / "f.bin", size=SMALL) as flash, pytest.raises(ValueError) as err:
        access(flash)  # type: ignore[operator]
    assert f"{SMALL:#x}" in str(err.value)
    assert "offset" in str(err.value)


def test_md5_is_raw_digest_of_region(tmp_path: Path) -> None:
    with SpiFlash(tmp_path / "f.bin", size=SMALL) as flash:
        flash.write(100, b"hello")
        assert flash.md5(100, 5) == hashlib.md5(b"hello").digest()
        assert flash.md5(0, SMALL) == hashlib.md5(flash.read(0, SMALL)).digest()


def test_contents_survive_reopen(tmp_path: Path) -> None:
    with SpiFlash(tmp_path / "f.bin", size=SMALL) as flash:
        flash.write(SECTOR_SIZE, b"persist")
    with SpiFlash(tmp_path / "f.bin", size=SMALL) as flash:
        assert flash.read(SECTOR_SIZE, 7) == b"persist"


def test_writes_survive_a_killed_process(tmp_path: Path) -> None:
    script = (
        "import os, signal\n"
        "from pathlib import Path\n"
        "from hil.sim.flash import SpiFlash\n"
        f"f = SpiFlash(Path({str(tmp_path / 'f.bin')!r}), size={SMALL})\n"
        "f.write(8, b'killed')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], check=False, cwd=REPO_ROOT)
    assert proc.returncode == -9
    with SpiFlash(tmp_path / "f.bin", size=SMALL) as flash:
        assert flash.read(8, 6) == b"killed"


def test_wrong_file_size_is_an_error_not_a_truncation(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"\x00" * SECTOR_SIZE)
    with pytest.raises(ValueError, match="delete the file"):
        SpiFlash(path, size=SMALL)
    assert path.read_bytes() == b"\x00" * SECTOR_SIZE


@pytest.mark.parametrize("size", [0, 100, SECTOR_SIZE + 1])
def test_size_must_be_whole_sectors(tmp_path: Path, size: int) -> None:
    with pytest.raises(ValueError, match="sector"):
        SpiFlash(tmp_path / "f.bin", size=size)
    assert not (tmp_path / "f.bin").exists()


def test_closed_flash_refuses_access(tmp_path: Path) -> None:
    flash = SpiFlash(tmp_path / "f.bin", size=SMALL)
    flash.close()
    flash.close()
    with pytest.raises(ValueError):
        flash.read(0, 1)


operations = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(0, SMALL - 1), st.binary(min_size=1, max_size=300)),
        st.tuples(st.just("erase"), st.integers(0, 3), st.integers(1, 4)),
    ),
    max_size=20,
)


@settings(max_examples=50, deadline=None)
@given(ops=operations)
def test_behaves_like_a_nor_model(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int, object]]
) -> None:
    model = bytearray(b"\xff" * SMALL)
    with SpiFlash(tmp_path_factory.mktemp("nor") / "f.bin", size=SMALL) as flash:
        for kind, a, b in ops:
            if kind == "write":
                assert isinstance(b, bytes)
                data = b[: SMALL - a]
                flash.write(a, data)
                for i, byte in enumerate(data):
                    model[a + i] &= byte
            else:
                assert isinstance(b, int)
                sectors = min(b, 4 - a)
                flash.erase(a * SECTOR_SIZE, sectors * SECTOR_SIZE)
                model[a * SECTOR_SIZE : (a + sectors) * SECTOR_SIZE] = b"\xff" * (
                    sectors * SECTOR_SIZE
                )
        assert flash.read(0, SMALL) == bytes(model)
