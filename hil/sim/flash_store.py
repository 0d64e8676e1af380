"""A fleet's flash: one read-only base image every board shares, each board's writes as an overlay.

The boards of a fleet are programmed alike (bootloader, partition table, otadata, app)
and differ in a few sectors: their provisioning NVS, and whatever their firmware writes
later (NVS, otadata, an OTA slot). A 4 MiB flash file per board costs ~2 MiB of pages
per board once its bootloader has read the app partition, and every board's parsed app
image holds its own copy of the app's segments. Here:

* the shared images are one file (`BaseImage`, named after its content), mapped
  read-only once per process: every board of a process reads the same pages, and the
  processes of a sharded fleet share them through the page cache. Large reads from it
  (the bootloader reading a partition) return shared immutable bytes whose large slices
  are shared as well, so every board's parsed app image holds the same segment bytes;
  large reads that touch a board's own sectors (an app slot after an OTA) are shared by
  content, so boards that installed the same update share it too.
* each board's own sectors live in its overlay file (`OverlayFlash`): the flash's
  ``size`` bytes of sector data, sparse (only sectors a board wrote take disk or pages),
  then one state byte per sector: `BASE` (read through to the base image), `DATA` (the
  overlay's copy) or `ERASED` (all 0xFF, no page at all: an OTA slot erased before it is
  written costs nothing until written).

The overlay file is memory-mapped like `SpiFlash`'s whole-chip file, so a write is in
the page cache the moment it returns and survives the board's power cycle, a restart of
its process, and a SIGKILL (minus the torn sector: a sector's data is written before its
state byte says so). NOR rules hold as on `SpiFlash`: a write only clears bits, only an
erase (4 KiB sectors) sets them.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import ClassVar, SupportsIndex

from hil.sim.flash import SECTOR_SIZE, SpiFlash

BASE = 0
DATA = 1
ERASED = 2
_ERASED_BYTE = 0xFF
_ERASED_SECTOR = bytes([_ERASED_BYTE]) * SECTOR_SIZE

SHARED_READ_MIN = 16 * 1024
"""Reads from the base at least this long return shared bytes: the bootloader's read of
a partition (1.5 MiB) and of itself (32 KiB). Shorter reads (headers, NVS pages) copy."""
INTERNED_READ_MIN = 64 * 1024
"""Reads at least this long that touch a board's own sectors are interned by content: an
app partition after an OTA, the same on every board that installed the same update.
Shorter ones (a board's NVS, 24 KiB, its own on every board) are plain copies."""
MAX_INTERNED_BYTES = 32 * 1024 * 1024
"""What a process keeps interned at most (a few app partitions); past it, plain copies."""
SHARED_SLICE_MIN = 1024
"""Slices of a shared read at least this long are shared too: an app's segments."""
MAX_SHARED_READS = 64
MAX_SHARED_SLICES = 4096
"""Caps on what is kept shared (a few ranges for boards that boot alike); past them
reads and slices are plain copies: the same values, only not shared."""


class SharedBytes(bytes):
    """Bytes that many boards hold as one object, and whose large slices are shared too.

    Bytes are immutable, so handing every board the same object for the same content is
    invisible to them, as interning is: ``bytes(shared[a:b])`` is the shared slice itself,
    which is how the boards' parsed app images end up sharing their segments."""

    _slices: dict[tuple[int, int], bytes]

    @classmethod
    def of(cls, data: bytes) -> SharedBytes:
        shared = cls(data)
        shared._slices = {}
        return shared

    def __getitem__(self, key: SupportsIndex | slice) -> bytes | int:  # type: ignore[override]
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step == 1 and stop - start >= SHARED_SLICE_MIN:
                found = self._slices.get((start, stop))
                if found is None:
                    found = super().__getitem__(key)  # a plain bytes object
                    if len(self._slices) < MAX_SHARED_SLICES:
                        self._slices[(start, stop)] = found
                return found
        return super().__getitem__(key)


class BaseImage:
    """A flash image file mapped read-only, one mapping per file and process (`open`),
    and what the process's boards on it share besides: large reads, by range from the
    base and by content from their overlays."""

    _open: ClassVar[dict[Path, BaseImage]] = {}

    def __init__(self, path: Path) -> None:
        self.path = path
        with path.open("rb") as handle:
            self.size = os.fstat(handle.fileno()).st_size
            self._map = mmap.mmap(handle.fileno(), self.size, access=mmap.ACCESS_READ)
        self._users = 0
        self._reads: dict[tuple[int, int], SharedBytes] = {}
        self._interned: dict[tuple[int, bytes], SharedBytes] = {}
        self._interned_bytes = 0

    @classmethod
    def open(cls, path: Path) -> BaseImage:
        """This process's mapping of ``path`` (made on first use); `release` when done."""
        key = path.resolve()
        image = cls._open.get(key)
        if image is None:
            image = cls._open[key] = cls(key)
        image._users += 1
        return image

    def release(self) -> None:
        self._users -= 1
        if self._users <= 0:
            self._open.pop(self.path, None)
            self._reads.clear()
            self._interned.clear()
            self._map.close()

    def copy(self, offset: int, length: int) -> bytes:
        """A private copy of a range (never shared: for a sector about to be written)."""
        return self._map[offset : offset + length]

    def hash_into(self, digest: hashlib._Hash, offset: int, length: int) -> None:
        with memoryview(self._map) as view:
            digest.update(view[offset : offset + length])

    def read(self, offset: int, length: int) -> bytes:
        if length < SHARED_READ_MIN:
            return self._map[offset : offset + length]
        key = (offset, offset + length)
        shared = self._reads.get(key)
        if shared is None:
            shared = SharedBytes.of(self._map[offset : offset + length])
            if len(self._reads) < MAX_SHARED_READS:
                self._reads[key] = shared
        return shared

    def intern(self, data: bytes) -> bytes:
        """``data`` as the one object every board of this process gets for that content
        (while the budget lasts; a plain copy past it)."""
        key = (len(data), hashlib.blake2b(data, digest_size=16).digest())
        shared = self._interned.get(key)
        if shared is None:
            if self._interned_bytes + len(data) > MAX_INTERNED_BYTES:
                return data
            shared = self._interned[key] = SharedBytes.of(data)
            self._interned_bytes += len(data)
        return shared


def base_image_path(directory: Path, size: int, images: Sequence[tuple[int, bytes]]) -> Path:
    """The base image of ``images`` (offset, bytes) on an erased ``size``-byte chip, in
    ``directory`` under a name made of its content: written once (atomically, read-only),
    then found again by every process and every run that programs the same set."""
    digest = hashlib.sha256(size.to_bytes(8, "little"))
    for offset, data in images:
        digest.update(offset.to_bytes(8, "little") + len(data).to_bytes(8, "little"))
        digest.update(data)
    path = directory / f"flash-base-{digest.hexdigest()[:16]}.bin"
    if path.is_file() and path.stat().st_size == size:
        return path
    chip = bytearray([_ERASED_BYTE]) * size
    for offset, data in images:
        if offset < 0 or offset + len(data) > size:
            raise ValueError(f"image of {len(data):#x} bytes at {offset:#x} is outside the {size:#x}-byte flash")
        old = int.from_bytes(chip[offset : offset + len(data)], "little")  # NOR: program clears bits only
        chip[offset : offset + len(data)] = (old & int.from_bytes(data, "little")).to_bytes(len(data), "little")
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(chip)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o444)  # shared by every board: nobody writes it after this
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class OverlayFlash(SpiFlash):
    """A board's flash: `BaseImage` ``base`` read through, its own sectors in ``path``.

    ``path`` is created (nothing overlaid: the chip reads as the base) when missing, and
    reopened as the board left it otherwise. Not thread-safe, as `SpiFlash`."""

    def __init__(self, path: Path, base: Path, *, jedec_id: int = 0x1640C8) -> None:
        # Deliberately not SpiFlash.__init__: no whole-chip file behind this one.
        if not 0 < jedec_id <= 0xFFFFFF:
            raise ValueError(f"JEDEC id {jedec_id:#x} must be a non-zero 24-bit value")
        self.path = path
        self.jedec_id = jedec_id
        self.base = BaseImage.open(base)
        try:
            size = self.size = self.base.size
            if size <= 0 or size % SECTOR_SIZE:
                raise ValueError(f"{base}: base image of {size:#x} bytes is not whole {SECTOR_SIZE:#x}-byte sectors")
            self._sectors = size // SECTOR_SIZE
            file_size = size + self._sectors
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                actual = os.fstat(fd).st_size
                if actual == 0:
                    os.ftruncate(fd, file_size)  # sparse: every state byte BASE, no data
                elif actual != file_size:
                    raise ValueError(
                        f"{path}: overlay is {actual:#x} bytes but a {size:#x}-byte flash needs {file_size:#x}; "
                        "delete it to start from the base image"
                    )
                self._map = mmap.mmap(fd, file_size)
            finally:
                os.close(fd)  # the mapping keeps its own reference to the file
        except BaseException:
            self.base.release()
            raise

    # -- the sector states ------------------------------------------------------------
    def state(self, sector: int) -> int:
        """`BASE`, `DATA` or `ERASED`: where sector ``sector`` is read from."""
        return self._map[self.size + sector]

    def _set_state(self, sector: int, state: int) -> None:
        self._map[self.size + sector] = state

    def overlaid(self) -> int:
        """How many sectors this board has of its own (`DATA` or `ERASED`)."""
        states = self._map[self.size : self.size + self._sectors]
        return self._sectors - states.count(BASE)

    def _runs(self, offset: int, length: int) -> Iterator[tuple[int, int, int]]:
        """(state, start, end) over ``offset``..``offset + length``, adjacent sectors of one
        state merged."""
        end = offset + length
        position = offset
        while position < end:
            sector = position // SECTOR_SIZE
            state = self.state(sector)
            stop = (sector + 1) * SECTOR_SIZE
            while stop < end and self.state(stop // SECTOR_SIZE) == state:
                stop += SECTOR_SIZE
            yield state, position, min(stop, end)
            position = min(stop, end)

    # -- SpiFlash's interface -----------------------------------------------------------
    def read(self, offset: int, length: int) -> bytes:
        self._check_range(offset, length)
        first, last = offset // SECTOR_SIZE, (offset + length - 1) // SECTOR_SIZE
        states = self._map[self.size + first : self.size + last + 1]
        if length == 0 or states.count(BASE) == len(states):
            return self.base.read(offset, length)  # the common case: nothing of its own here
        parts: list[bytes] = []
        for state, start, stop in self._runs(offset, length):
            if state == BASE:
                parts.append(self.base.read(start, stop - start))
            elif state == DATA:
                parts.append(self._map[start:stop])
            else:
                parts.append(bytes([_ERASED_BYTE]) * (stop - start))
        data = b"".join(parts)
        return self.base.intern(data) if length >= INTERNED_READ_MIN else data

    def write(self, offset: int, data: bytes) -> None:
        """Program ``data`` at ``offset``: each bit can only be cleared (old AND new)."""
        self._check_range(offset, len(data))
        position = offset
        while position < offset + len(data):
            sector = position // SECTOR_SIZE
            stop = min(offset + len(data), (sector + 1) * SECTOR_SIZE)
            self._own(sector)
            chunk = data[position - offset : stop - offset]
            old = int.from_bytes(self._map[position:stop], "little")
            self._map[position:stop] = (old & int.from_bytes(chunk, "little")).to_bytes(len(chunk), "little")
            self._set_state(sector, DATA)  # after the data: a torn write reads as before it
            position = stop

    def _own(self, sector: int) -> None:
        """Make the overlay's copy of ``sector`` current before it is written in place."""
        state = self.state(sector)
        if state == DATA:
            return
        start = sector * SECTOR_SIZE
        if state == BASE:
            self._map[start : start + SECTOR_SIZE] = self.base.copy(start, SECTOR_SIZE)
        else:
            self._map[start : start + SECTOR_SIZE] = _ERASED_SECTOR

    def erase(self, offset: int, length: int) -> None:
        """Set whole sectors back to 0xFF; both ends must be 4 KiB aligned. An erased
        sector takes no page (its state byte says it), until it is written again."""
        if offset % SECTOR_SIZE or length % SECTOR_SIZE:
            raise ValueError(
                f"erase of {length:#x} bytes at {offset:#x} is not aligned to the "
                f"{SECTOR_SIZE:#x}-byte sector"
            )
        self._check_range(offset, length)
        for sector in range(offset // SECTOR_SIZE, (offset + length) // SECTOR_SIZE):
            self._set_state(sector, ERASED)
        # The overlay's old copies are garbage now: give their disk blocks and pages back
        # (a hole; where the file system cannot punch one, they merely stay unused).
        if length and offset % mmap.PAGESIZE == 0 and length % mmap.PAGESIZE == 0:
            with contextlib.suppress(OSError, AttributeError):
                self._map.madvise(mmap.MADV_REMOVE, offset, length)

    def md5(self, offset: int, length: int) -> bytes:
        self._check_range(offset, length)
        digest = hashlib.md5()
        for state, start, stop in self._runs(offset, length):
            if state == BASE:
                self.base.hash_into(digest, start, stop - start)
            elif state == DATA:
                with memoryview(self._map) as view:
                    digest.update(view[start:stop])
            else:
                for chunk in range(start, stop, SECTOR_SIZE):
                    digest.update(_ERASED_SECTOR[: min(SECTOR_SIZE, stop - chunk)])
        return digest.digest()

    def flush(self) -> None:
        self._map.flush()

    def close(self) -> None:
        if self._map.closed:
            return
        self._map.flush()
        self._map.close()
        self.base.release()
