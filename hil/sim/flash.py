"""The virtual board's SPI NOR flash chip, backed by a file in the board's state dir.

The file is memory-mapped, so every write is in the page cache the moment it
returns: a board process killed with SIGKILL mid-flash leaves exactly the bytes a
real chip would hold after losing power at that point (minus the torn page).
Programming follows NOR rules (bits only go 1 -> 0; only an erase brings them back),
so a tool that writes without erasing corrupts data here just as on hardware.

Not thread-safe: the board drives it from one thread at a time.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Self

SECTOR_SIZE = 0x1000
"""Smallest erasable unit of the NOR flash (4 KiB), the granularity of `erase`."""

_ERASED = 0xFF
_FILL_CHUNK = 1024 * 1024


class SpiFlash:
    """A NOR flash chip of ``size`` bytes whose RDID answer is ``jedec_id``.

    ``jedec_id`` is stored the way the C3 reads it into SPI W0 after RDID:
    ``capacity << 16 | type << 8 | manufacturer`` (0x1640C8 = GigaDevice, 4 MB).
    """

    def __init__(
        self, path: Path, *, size: int = 4 * 1024 * 1024, jedec_id: int = 0x1640C8
    ) -> None:
        if size <= 0 or size % SECTOR_SIZE:
            raise ValueError(
                f"flash size {size:#x} must be a positive multiple of the "
                f"{SECTOR_SIZE:#x}-byte sector"
            )
        if not 0 < jedec_id <= 0xFFFFFF:
            raise ValueError(f"JEDEC id {jedec_id:#x} must be a non-zero 24-bit value")
        self.path = path
        self.size = size
        self.jedec_id = jedec_id
        if not path.exists():
            _create_erased(path, size)
        actual = path.stat().st_size
        if actual != size:
            raise ValueError(
                f"{path}: flash image is {actual:#x} bytes but the board's flash is "
                f"{size:#x} bytes; fix the configured flash size or delete the file "
                "to start from an erased chip"
            )
        self._file = path.open("r+b")
        self._map = mmap.mmap(self._file.fileno(), size)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def read(self, offset: int, length: int) -> bytes:
        """Return ``length`` bytes starting at ``offset``."""
        self._check_range(offset, length)
        return self._map[offset : offset + length]

    def write(self, offset: int, data: bytes) -> None:
        """Program ``data`` at ``offset``: each bit can only be cleared (old AND new)."""
        self._check_range(offset, len(data))
        if not data:
            return
        old = int.from_bytes(self._map[offset : offset + len(data)], "little")
        new = old & int.from_bytes(data, "little")
        self._map[offset : offset + len(data)] = new.to_bytes(len(data), "little")

    def erase(self, offset: int, length: int) -> None:
        """Set whole sectors back to 0xFF; both ends must be 4 KiB aligned."""
        if offset % SECTOR_SIZE or length % SECTOR_SIZE:
            raise ValueError(
                f"erase of {length:#x} bytes at {offset:#x} is not aligned to the "
                f"{SECTOR_SIZE:#x}-byte sector"
            )
        self._check_range(offset, length)
        self._map[offset : offset + length] = bytes([_ERASED]) * length

    def erase_all(self) -> None:
        """Chip erase: every byte back to 0xFF."""
        self.erase(0, self.size)

    def md5(self, offset: int, length: int) -> bytes:
        """Raw 16-byte MD5 of a region, as SPI_FLASH_MD5 computes it on the chip."""
        self._check_range(offset, length)
        with memoryview(self._map) as view:
            return hashlib.md5(view[offset : offset + length]).digest()

    def flush(self) -> None:
        """Push the mapped pages to the file (msync), e.g. before a clean shutdown."""
        self._map.flush()

    def close(self) -> None:
        """Flush and release the mapping; further access raises ValueError."""
        if self._map.closed:
            return
        self._map.flush()
        self._map.close()
        self._file.close()

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(
                f"flash access of {length:#x} bytes at offset {offset:#x} is outside "
                f"the {self.size:#x}-byte flash"
            )


def _create_erased(path: Path, size: int) -> None:
    """Create an erased (all 0xFF) image atomically, so a crash never leaves a short file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as tmp:
            chunk = bytes([_ERASED]) * _FILL_CHUNK
            for start in range(0, size, _FILL_CHUNK):
                tmp.write(chunk[: min(_FILL_CHUNK, size - start)])
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
