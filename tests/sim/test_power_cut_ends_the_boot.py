"""A power cut or a reset ends everything the boot was running (issue #15).

On silicon nothing of a boot survives the power: no task of it takes another step. The
reference firmware runs an OTA request in a task its MQTT handler spawned
(``Firmware.spawn``), not inside the boot's own task, so the board must stop that too:
a download left running after the cut went on writing the update slot, then switched
otadata and restarted the chip under the next boot. These tests run a board in-process
with a small app that does what the firmware's OTA handler does, against a local HTTP
server that holds the second half of the image back until the power is gone.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from hil.images.behaviour import BehaviourRecord
from hil.images.partitions import TWO_OTA_TABLE
from hil.sim.app import AppContext
from hil.sim.board import Board, Mode
from hil.sim.firmware.ota import (
    OtaRequest,
    OtaWriter,
    download_to,
    next_update_partition,
    set_boot_partition,
)
from hil.sim.firmware.tasks.shared import Firmware
from hil.sim.flash import SpiFlash
from hil.sim.registers import ChipIdentity, parse_mac
from hil.sim.resets import ResetCause, RomResetCode

MAC = parse_mac("58:cf:79:0f:00:15")
OTADATA_OFFSET, OTADATA_SIZE = 0xD000, 0x2000
OTA_SLOT = TWO_OTA_TABLE.by_label("ota_0")
BOUND_S = 20.0
"""A bound on each wait of these tests, so a broken board fails them instead of hanging."""


class RecordingFlash(SpiFlash):
    """The board's flash, noting every write and erase with whether the board was
    powered when it landed."""

    board: Board | None = None

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.changes: list[tuple[str, int, bool]] = []
        self.slot_written = asyncio.Event()
        self.slot_offset = -1

    def _note(self, what: str, offset: int) -> None:
        powered = self.board is not None and bool(self.board.state()["powered"])
        self.changes.append((what, offset, powered))
        if what == "write" and offset >= self.slot_offset >= 0:
            self.slot_written.set()

    def write(self, offset: int, data: bytes) -> None:
        self._note("write", offset)
        super().write(offset, data)

    def erase(self, offset: int, length: int) -> None:
        self._note("erase", offset)
        super().erase(offset, length)


class HeldBackImage:
    """An HTTP server with one image: the first half goes out at once, the rest only
    when ``release`` is set."""

    def __init__(self, image: bytes) -> None:
        self.image = image
        self.release = asyncio.Event()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> HeldBackImage:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self.release.set()  # whatever is still being served ends
        self._server.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/update.bin"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            half = len(self.image) // 2
            writer.write(
                f"HTTP/1.1 200 OK\r\nContent-Length: {len(self.image)}\r\nConnection: close\r\n\r\n".encode()
                + self.image[:half]
            )
            await writer.drain()
            await self.release.wait()
            writer.write(self.image[half:])
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the device went away: nothing more to send
        finally:
            writer.close()


class UpdatingApp:
    """One boot that takes an update as the reference firmware's OTA handler does: the
    download, image check, otadata switch and restart run in a task spawned in the
    background (``Firmware.spawn``), while the boot's own task goes on."""

    def __init__(self, image: bytes) -> None:
        self.image = image
        self.url = ""
        """Where the image is served (known once the server listens)."""
        self.handlers: list[asyncio.Future[Any]] = []

    async def run(self, ctx: AppContext) -> None:
        fw = Firmware(BehaviourRecord("reference"), None)
        fw.background = set()
        fw.spawn(self._update(ctx))
        self.handlers.extend(fw.background)
        await asyncio.Event().wait()

    async def _update(self, ctx: AppContext) -> None:
        sha256 = hashlib.sha256(self.image).hexdigest()
        request = OtaRequest(version="9.9.9", url=self.url, size=len(self.image), sha256=sha256, signature="")
        target = next_update_partition(ctx.table, ctx.running)
        writer = OtaWriter(ctx.flash, target, request)
        await download_to(writer, request, ssl_context=None, max_attempts=1)
        writer.end()
        set_boot_partition(ctx.flash, ctx.table, target)
        ctx.restart(ResetCause(RomResetCode.RTC_SW_CPU_RST, hint="SW"))


def factory_flash(path: Path, images: Path) -> RecordingFlash:
    flash = RecordingFlash(path)
    for line in (images / "flash_args").read_text().splitlines()[1:]:
        offset, name = line.split()
        flash.write(int(offset, 16), (images / name).read_bytes())
    flash.changes.clear()
    return flash


def run_board(flash: RecordingFlash, app: Any, scenario: Callable[[Board], Awaitable[None]]) -> None:
    async def main() -> None:
        board = Board(flash=flash, identity=ChipIdentity(mac=MAC), app_factory=lambda behaviour: app)
        flash.board = board
        try:
            async with asyncio.timeout(BOUND_S):
                await scenario(board)
        finally:
            await board.close()

    asyncio.run(main())


@pytest.mark.parametrize("cut", ["power", "reset"])
def test_a_cut_mid_download_stops_the_background_download_before_it_writes_again(
    tmp_path: Path, images: Path, cut: str
) -> None:
    """Cut (power off, or EN held low) once the update slot has taken its first bytes, then
    let the server send the rest: not one more byte of the dead boot's download may land,
    and its handler must be over (cancelled), not finishing the update."""
    image = (images / "baseline.bin").read_bytes()
    flash = factory_flash(tmp_path / "flash.bin", images)
    assert OTA_SLOT is not None
    flash.slot_offset = OTA_SLOT.offset  # the slot after factory, where the update goes
    otadata_before = flash.read(OTADATA_OFFSET, OTADATA_SIZE)
    app = UpdatingApp(image)

    async def scenario(board: Board) -> None:
        async with HeldBackImage(image) as server:
            app.url = server.url
            board.power(True)
            await board.wait_for(lambda: board.mode is Mode.APP, timeout=BOUND_S)
            await flash.slot_written.wait()
            if cut == "power":
                board.power(False)
            else:
                board.hold_reset(True)
            at_cut = len(flash.changes)
            server.release.set()
            # Settles either way: cancelled with the boot, or (the bug) done after
            # writing the rest, switching otadata and asking for a restart.
            await asyncio.wait(app.handlers)
            after = flash.changes[at_cut:]
            assert after == [], f"the dead boot changed flash after the {cut} cut: {after[:3]}"
            assert all(task.cancelled() for task in app.handlers), "the download handler outlived its boot"

    run_board(flash, app, scenario)
    assert flash.read(OTADATA_OFFSET, OTADATA_SIZE) == otadata_before


class TeardownFails:
    """An app whose own teardown raises when its boot is stopped: a simulator bug."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[Any]] = []

    async def run(self, ctx: AppContext) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.append(task)
        try:
            await asyncio.Event().wait()
        finally:
            raise RuntimeError("teardown failed")


def test_a_stopped_boot_failing_as_it_unwinds_does_not_halt_the_rom_loader(tmp_path: Path, images: Path) -> None:
    """The previous fix's failure (cancelling the handlers in the app's ``finally``, which
    raised on a boot that had not got that far): the old boot's error arrived after the
    reset and halted the chip under esptool's ROM loader. A boot that no longer runs must
    not halt the one that does."""
    flash = factory_flash(tmp_path / "flash.bin", images)
    app = TeardownFails()

    async def scenario(board: Board) -> None:
        board.power(True)
        await board.wait_for(lambda: board.mode is Mode.APP, timeout=BOUND_S)
        mark = board.tx_total
        await board.pulse_reset(download=True)
        await asyncio.wait(app.tasks)
        assert board.mode is Mode.DOWNLOAD
        assert b"internal error" not in board.tx_since(mark)[0]

    run_board(flash, app, scenario)
