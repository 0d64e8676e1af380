"""Flash an ESP32-C3 board with esptool, used as a library: checked input, skip-unchanged, verify.

Why a library and not the ``esptool`` command: one connection serves the whole job (check
what is already in flash, write only what differs, verify, reset), progress arrives per
file as numbers rather than as terminal text, errors arrive as exceptions that say which
kind of failure they are (`hil.link.flash_errors`), and a port the console already holds
open can be lent to it (`hil.link.port_borrow`). esptool's output is captured per job
(`hil.link.esptool_log`), not printed.

The job, in order:

1. **Check the input before touching anything** (rule 6): files exist and are not empty,
   offsets are sector-aligned and inside the flash, no two files overlap, each file fits
   the partition it lands in (the partition table being flashed, else the rig's table),
   app and bootloader images are for the ESP32-C3 (header chip id 5) and pass the same
   checks the 2nd-stage bootloader makes. A problem raises `FlashInputError`, naming the
   file, the problem and the fix (`hil.link.flash_checks`).
2. **Connect** (reset into download mode, sync, upload the stub, attach the flash). A
   failure here is the rig's, not the firmware's (rule 4): it is retried once over a fresh
   connection, then raised as `FlashInfrastructureError`. A port that is away when the job
   opens it (a USB-Serial-JTAG board re-enumerating after a power cycle) is waited for up
   to ``port_return_s`` (the rig's `Rig.port_return_s`), the wait noted in the report.
3. **Skip what is already there**: each file's MD5 is compared with the flash MD5 of its
   region (the stub's SPI_FLASH_MD5 command); matching regions are not written.
4. **Write** the others with esptool's ``write_flash`` (compressed, checked by MD5 after
   each file), reporting progress per file.
5. **Verify** (unless ``verify=False``): every file's region is hashed again once all are
   written, so a later write that clobbered an earlier file is caught too. When nothing
   was written, step 3 already was that check.
6. **Reset** as asked (``after``), by default a hard reset into the new firmware.

Over RFC 2217 (a lab host's ``esp_rfc2217_server``, the virtual rig), pyserial's client
renegotiates every serial setting whenever the read timeout changes, and esptool changes
it twice per command: ≥0.2 s per command for a value that only this side uses. The flasher
keeps the timeout local to the client (see `hil.link.rfc2217`); nothing on the wire changes.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

import serial
from esptool.cmds import (
    attach_flash,
    detect_flash_size,
    erase_flash,
    reset_chip,
    run_stub,
    write_flash,
)
from esptool.loader import DEFAULT_CONNECT_ATTEMPTS, ESPLoader
from esptool.targets import CHIP_DEFS
from esptool.util import FatalError, flash_size_bytes

from hil.images.layout import NVS_OFFSET, NVS_SIZE
from hil.images.partitions import FLASH_SIZE_DEFAULT, TWO_OTA_TABLE, PartitionTable
from hil.link.esptool_log import EsptoolCapture, capture_esptool_log
from hil.link.flash_checks import FlashRegion, FlashSource, check_files
from hil.link.flash_errors import (
    FlashError,
    FlashInfrastructureError,
    FlashInputError,
    FlashPortBusyError,
    FlashVerifyError,
)
from hil.link.port_borrow import Link
from hil.link.port_busy import busy_message, is_busy
from hil.link.rfc2217 import Rfc2217Port, hold_strap_longer

if TYPE_CHECKING:
    from hil.device.settings import Provisioning

__all__ = [
    "CHIP",
    "AfterReset",
    "BeforeReset",
    "ChipInfo",
    "FileReport",
    "FlashReport",
    "Flasher",
    "ProgressCallback",
]

CHIP: Final = "esp32c3"
_CONNECT_TRIES = 2  # the first connection and one retry over a fresh one (rule 4)
_PORT_POLLS_PER_RETURN = 20  # how finely an away port is looked for within port_return_s

_log = logging.getLogger(__name__)

ProgressCallback = Callable[[str, int, int], None]
"""``progress(name, bytes_done, bytes_total)``, called while a file is written."""

AfterReset = Literal["hard-reset", "soft-reset", "no-reset", "no-reset-stub", "watchdog-reset"]
BeforeReset = Literal["default-reset", "usb-reset", "no-reset", "no-reset-no-sync"]


def _busy_error(port: str, exc: BaseException) -> FlashPortBusyError:
    return FlashPortBusyError(
        busy_message(port, exc, "Nothing was flashed."),
        attempts=1,
        causes=[f"attempt 1: {type(exc).__name__}: {str(exc).strip()}"],
    )


def _port_name(port: str | serial.SerialBase) -> str:
    return port if isinstance(port, str) else str(getattr(port, "port", None) or port)


# -- the report ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class FileReport:
    """What happened to one file: written or skipped (already in flash), and how long it took
    (writing and esptool's check of it, or the MD5 comparison that skipped it)."""

    name: str
    offset: int
    size: int
    md5: str
    skipped: bool
    seconds: float


@dataclass(frozen=True)
class FlashReport:
    """One flash job: per file, and the totals. `log` is everything esptool said."""

    port: str
    files: tuple[FileReport, ...]
    attempts: int
    connect_seconds: float
    verify_seconds: float
    seconds: float
    verified: bool
    after: AfterReset
    log: tuple[str, ...] = field(default=(), repr=False)
    port_wait_seconds: float = 0.0
    """How long the job waited for a port that was away (re-enumerating) before it opened."""

    @property
    def written(self) -> tuple[FileReport, ...]:
        return tuple(f for f in self.files if not f.skipped)

    @property
    def skipped(self) -> tuple[FileReport, ...]:
        return tuple(f for f in self.files if f.skipped)

    @property
    def bytes_total(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def bytes_written(self) -> int:
        return sum(f.size for f in self.written)

    def summary(self) -> str:
        lines = [
            f"flashed {len(self.written)} of {len(self.files)} file(s) "
            f"({self.bytes_written} of {self.bytes_total} bytes) via {self.port} in "
            f"{self.seconds:.2f} s (connect {self.connect_seconds:.2f} s, "
            f"{self.attempts} attempt(s); verify {self.verify_seconds:.2f} s)"
        ]
        for f in self.files:
            state = "unchanged, skipped" if f.skipped else "written"
            lines.append(f"  0x{f.offset:06x} {f.name}: {f.size} bytes, {state}, {f.seconds:.2f} s")
        return "\n".join(lines)


@dataclass(frozen=True)
class ChipInfo:
    """What a board's ROM loader says about itself (``esptool chip-id`` and ``read-mac``),
    read by `Flasher.identify` without writing anything."""

    port: str
    chip: str | None  # esptool's target name for the chip id read ("esp32c3"), None: unknown
    chip_id: int | None  # the ROM's GET_SECURITY_INFO chip id (ESP32-C3: 5)
    description: str  # esptool's, e.g. "ESP32-C3 (QFN32) (revision v0.4)"
    mac: str  # the base MAC, as esptool read-mac prints it ("58:cf:79:a1:b2:c3")
    flash_size: str | None  # what the flash chip's id says ("4MB"), None: not detected
    before: BeforeReset
    baud: int  # the rate the loader was talked to at, after any switch to flash_baud


# -- the flasher -----------------------------------------------------------------------------------
def _tail(lines: Sequence[str], count: int = 8) -> str:
    return "\n".join(f"  | {line}" for line in lines[-count:])


class Flasher:
    """Flash ESP32-C3 boards with esptool as a library. Stateless between jobs.

    `partition_table` is the rig's table, used to check where files land when the job
    does not flash one itself. `connect_attempts` is esptool's own per-connection number
    of reset-and-sync cycles; the flasher adds one retry over a fresh connection.
    `flash_baud`, if set, is switched to right after the sync, before the stub upload (real
    boards: 460800 or more); `before` is esptool's ``--before`` (a rig's: `Rig.flash_method`).
    """

    def __init__(
        self,
        *,
        baud: int = ESPLoader.ESP_ROM_BAUD,
        flash_baud: int | None = None,
        before: BeforeReset = "default-reset",
        connect_attempts: int = DEFAULT_CONNECT_ATTEMPTS,
        partition_table: PartitionTable = TWO_OTA_TABLE,
        partition_table_name: str = "the rig's partition table (TWO_OTA_TABLE)",
        flash_size: int = FLASH_SIZE_DEFAULT,
        fast_rfc2217: bool = True,
        port_return_s: float | None = None,
    ) -> None:
        if connect_attempts < 1:
            raise ValueError("connect_attempts must be at least 1")
        self.baud = baud
        self.flash_baud = flash_baud
        self.before = before
        self.connect_attempts = connect_attempts
        self.partition_table = partition_table
        self.partition_table_name = partition_table_name
        self.flash_size = flash_size
        self.fast_rfc2217 = fast_rfc2217
        self.port_return_s = port_return_s
        """How long a port that is away when a job opens it is waited for (None: not at all)."""

    # -- rule 6 ----------------------------------------------------------------------------------
    def check(self, files: Sequence[FlashSource]) -> tuple[FlashRegion, ...]:
        """Check everything that can be checked without a board; return the files, sorted.

        Raises FlashInputError naming the file, the problem and the fix.
        """
        return check_files(
            files,
            partition_table=self.partition_table,
            partition_table_name=self.partition_table_name,
            flash_size=self.flash_size,
        )

    # -- the job -------------------------------------------------------------------------------------
    def flash(
        self,
        port: str | serial.SerialBase,
        files: Sequence[FlashSource],
        *,
        progress: ProgressCallback | None = None,
        verify: bool = True,
        skip_unchanged: bool = True,
        after: AfterReset = "hard-reset",
    ) -> FlashReport:
        """Flash `files` to the board on `port` (a URL, or an open pyserial port lent by
        its owner and given back open); see the module docstring for the steps.

        Raises FlashInputError (before opening the port), FlashInfrastructureError (the
        rig: no sync, lost port; after one retry where that is safe), FlashVerifyError
        (flash differs from what was written) or FlashError (esptool refused otherwise).
        """
        return self._flash_regions(
            port,
            self.check(files),
            progress=progress,
            verify=verify,
            skip_unchanged=skip_unchanged,
            after=after,
        )

    def provision(
        self,
        port: str | serial.SerialBase,
        provisioning: Provisioning,
        config: Mapping[str, object] | None = None,
        *,
        progress: ProgressCallback | None = None,
        verify: bool = True,
        skip_unchanged: bool = True,
        after: AfterReset = "hard-reset",
    ) -> FlashReport:
        """Build the provisioning NVS image (namespace ``device``, plus optional factory
        `config` settings) and flash it at the nvs partition, the same way as `flash`."""
        from hil.device.settings import provisioning_image

        nvs = self.partition_table.nvs
        offset, size = (nvs.offset, nvs.size) if nvs is not None else (NVS_OFFSET, NVS_SIZE)
        try:
            image = provisioning_image(provisioning, config, size=size)
        except ValueError as exc:  # NvsError is one too
            raise FlashInputError(
                f"provisioning for {provisioning.device_id!r}: {exc}; fix the value named there"
            ) from None
        name = f"<nvs provisioning of {provisioning.device_id}>"
        regions = self.check([(offset, image)])
        regions = tuple(FlashRegion(name, r.offset, r.data) for r in regions)
        return self._flash_regions(
            port,
            regions,
            progress=progress,
            verify=verify,
            skip_unchanged=skip_unchanged,
            after=after,
        )

    def erase_flash(self, port: str | serial.SerialBase, *, after: AfterReset = "hard-reset") -> None:
        """Erase the whole flash (``esptool erase-flash``): the board is then as blank as
        from the factory, bootloader, identity and all. Errors as for `flash`."""
        with self._job(port, "while erasing") as esp:
            erase_flash(esp)
            reset_chip(esp, after)

    def identify(self, port: str | serial.SerialBase, *, after: AfterReset = "hard-reset") -> ChipInfo:
        """Connect as a flash job does (this flasher's ``before`` and ``flash_baud``, one
        retry), read the chip id, description, base MAC and flash size, reset as asked: the
        checks `hil rigs check` makes without writing anything. Errors as for `flash`."""
        from esptool.targets import ROM_LIST

        with self._job(port, "while reading its chip id", stub=False) as esp:
            try:
                chip_id: int | None = int(esp.get_chip_id())
            except FatalError:  # a ROM without the chip id in its security info
                chip_id = None
            chip = next(
                (
                    cls.CHIP_NAME.lower().replace("-", "")
                    for cls in ROM_LIST
                    if not cls.USES_MAGIC_VALUE and chip_id == cls.IMAGE_CHIP_ID
                ),
                None,
            )
            info = ChipInfo(
                port=_port_name(port),
                chip=chip,
                chip_id=chip_id,
                description=str(esp.get_chip_description()),
                mac=":".join(f"{b:02x}" for b in esp.read_mac("BASE_MAC")),
                flash_size=detect_flash_size(esp),
                before=self.before,
                baud=int(esp._port.baudrate),
            )
            reset_chip(esp, after)
        return info

    @contextlib.contextmanager
    def _job(self, port: str | serial.SerialBase, doing: str, *, stub: bool = True) -> Iterator[Any]:
        """One connection for a short job: a lost port is infrastructure, an esptool error
        a flash error, each with esptool's last lines; the port is released either way."""
        port_name = _port_name(port)
        with capture_esptool_log() as capture:
            link, esp, attempts = self._connect(port, capture, [], stub=stub)
            try:
                yield esp
            except (serial.SerialException, OSError) as exc:
                raise FlashInfrastructureError(
                    f"lost the board on {port_name} {doing}: {exc}\n{_tail(capture.lines)}",
                    attempts=attempts,
                    causes=[str(exc)],
                ) from exc
            except FatalError as exc:
                raise FlashError(f"esptool failed on {port_name}: {exc}\n{_tail(capture.lines)}") from exc
            finally:
                link.release()

    def _flash_regions(
        self,
        port: str | serial.SerialBase,
        regions: Sequence[FlashRegion],
        *,
        progress: ProgressCallback | None,
        verify: bool,
        skip_unchanged: bool,
        after: AfterReset,
    ) -> FlashReport:
        started = time.monotonic()
        port_name = _port_name(port)
        with capture_esptool_log() as capture:
            # With skipping on, the ROM loader compares first (it has SPI_FLASH_MD5 on the
            # C3) and the stub is uploaded only if something is to be written: an unchanged
            # re-flash does not pay for it.
            waits: list[float] = []
            link, esp, attempts = self._connect(port, capture, waits, stub=not skip_unchanged)
            connected = time.monotonic()
            try:
                compared = [self._compare(esp, region, capture) for region in regions] if skip_unchanged else []
                if not all(skipped for skipped, _ in compared):
                    esp = self._run_stub(esp)
                results: list[FileReport] = []
                for i, region in enumerate(regions):
                    skipped, compare_seconds = compared[i] if compared else (None, 0.0)
                    results.append(skipped or self._write_one(esp, region, capture, progress, compare_seconds))
                verify_started = time.monotonic()
                if verify and any(not result.skipped for result in results):
                    self._verify(esp, regions, capture)
                elif verify:
                    # Every region was just compared by MD5 on this connection and nothing
                    # has been written since: hashing them all again would prove nothing new.
                    capture.note_line(f"[hil.link.flasher] verified {len(regions)} region(s) by MD5 (all unchanged)")
                verify_seconds = time.monotonic() - verify_started
                reset_chip(esp, after)
            except KeyboardInterrupt:
                # Ctrl-C mid-write: the board must not stay in download mode with the stub
                # running (the app would never start); reset it with the lines, then stop.
                with contextlib.suppress(Exception):
                    reset_chip(esp, "hard-reset")
                raise
            except (serial.SerialException, OSError) as exc:
                raise FlashInfrastructureError(
                    f"lost the board on {port_name} while flashing: {exc}\n{_tail(capture.lines)}",
                    attempts=attempts,
                    causes=[str(exc)],
                ) from exc
            except FatalError as exc:
                raise FlashError(
                    f"esptool failed on {port_name}: {exc}\n{_tail(capture.lines)}"
                ) from exc
            finally:
                link.release()
        report = FlashReport(
            port=port_name,
            files=tuple(results),
            attempts=attempts,
            connect_seconds=connected - started,
            verify_seconds=verify_seconds,
            seconds=time.monotonic() - started,
            verified=verify,
            after=after,
            log=tuple(capture.lines),
            port_wait_seconds=sum(waits),
        )
        _log.info("%s", report.summary())
        return report

    def _open(self, port: str | serial.SerialBase, capture: EsptoolCapture, waits: list[float]) -> Link:
        """The job's link; a URL whose port is away is tried again until ``port_return_s``
        has passed (a device node that comes back has no event to wait on), the wait noted."""
        if not isinstance(port, str) or self.port_return_s is None:
            return Link.open(port, fast_rfc2217=self.fast_rfc2217)
        started = time.monotonic()
        poll = self.port_return_s / _PORT_POLLS_PER_RETURN
        while True:
            try:
                link = Link.open(port, fast_rfc2217=self.fast_rfc2217)
            except (serial.SerialException, OSError) as exc:
                if is_busy(exc) or time.monotonic() - started + poll > self.port_return_s:
                    raise
                time.sleep(poll)  # polling the port's return: nothing signals it
                continue
            away = time.monotonic() - started
            if away > poll:
                waits.append(away)
                capture.note_line(f"[hil.link.flasher] {port} was away (re-enumerating?); opened after {away:.2f} s")
            return link

    def _connect(
        self, port: str | serial.SerialBase, capture: EsptoolCapture, waits: list[float], *, stub: bool = True
    ) -> tuple[Link, Any, int]:
        """Reset into download mode, sync, run the stub (or not yet), attach the flash; one retry."""
        causes: list[str] = []
        link: Link | None = None
        for attempt in range(1, _CONNECT_TRIES + 1):
            try:
                if link is None:
                    link = self._open(port, capture, waits)
                else:
                    link.refresh()
                esp = self._start(link, stub=stub)
                return link, esp, attempt
            except (FatalError, serial.SerialException, OSError) as exc:
                if link is None and is_busy(exc):
                    raise _busy_error(_port_name(port), exc) from exc
                cause = f"attempt {attempt}: {type(exc).__name__}: {str(exc).strip()}"
                causes.append(cause)
                capture.note_line(f"[hil.link.flasher] connection {cause}")
                if link is not None and link.owned:
                    link.release()
                    link = None
        if link is not None:
            link.release()
        raise FlashInfrastructureError(
            f"could not connect to an ESP32-C3 on {_port_name(port)} after {_CONNECT_TRIES} "
            "attempts (fresh connection each): " + "; ".join(causes) + "\nCheck that the board "
            "is powered and not held in reset, that nothing else holds the port, and that the "
            "rig's reset wiring (DTR/RTS auto-reset) works.\n" + _tail(capture.lines),
            attempts=_CONNECT_TRIES,
            causes=causes,
        )

    def _start(self, link: Link, *, stub: bool) -> Any:
        esp = CHIP_DEFS[CHIP](link.port, self.baud)
        if link.is_rfc2217:
            esp.USES_RFC2217 = True  # as esptool's own detect_chip does for rfc2217 URLs
        if isinstance(link.port, Rfc2217Port):
            hold_strap_longer(esp)
        esp.connect(self.before, self.connect_attempts)
        # The ESP32-C3's ROM loader takes CHANGE_BAUDRATE too: switching before the stub
        # upload sends its ~10 KB at the fast rate (0.8 s at 115200 Bd, a large part of an
        # unchanged re-flash).
        if self.flash_baud and self.flash_baud != self.baud:
            esp.change_baud(self.flash_baud)
        if stub or esp.sync_stub_detected:  # a stub left running (after="no-reset") is free
            esp = run_stub(esp)
        attach_flash(esp)
        detected = detect_flash_size(esp)
        esp._hil_flash_size = flash_size_bytes(detected) if detected else self.flash_size
        esp.flash_set_parameters(esp._hil_flash_size)
        return esp

    @staticmethod
    def _run_stub(esp: Any) -> Any:
        """Upload the stub to a ROM loader whose flash is attached (the stub keeps that
        attachment; esptool attaches only for the ROM) and give it the flash size."""
        if esp.IS_STUB:
            return esp
        size = esp._hil_flash_size
        esp = run_stub(esp)
        esp.flash_set_parameters(size)
        esp._hil_flash_size = size
        return esp

    @staticmethod
    def _compare(esp: Any, region: FlashRegion, capture: EsptoolCapture) -> tuple[FileReport | None, float]:
        """The region's MD5 in flash against the file's: a skipped FileReport when they
        match, and how long the comparison took."""
        started = time.monotonic()
        in_flash = str(esp.flash_md5sum(region.offset, region.size))
        seconds = time.monotonic() - started
        if in_flash != region.md5:
            return None, seconds
        capture.note_line(f"[hil.link.flasher] {region.where()}: unchanged (MD5 {in_flash}), skipped")
        return FileReport(region.name, region.offset, region.size, region.md5, True, seconds), seconds

    def _write_one(
        self,
        esp: Any,
        region: FlashRegion,
        capture: EsptoolCapture,
        progress: ProgressCallback | None,
        compared_seconds: float,
    ) -> FileReport:
        started = time.monotonic()

        def forward(done: int, total: int) -> None:
            if progress is not None and total > 0:
                progress(region.name, region.size * done // total, region.size)

        if progress is not None:
            progress(region.name, 0, region.size)
        capture.on_progress = forward
        try:
            # write_flash checks the chip revision against the image, writes compressed,
            # and compares the region's MD5 with the data once written.
            write_flash(esp, [(region.offset, region.data)])
        except FatalError as exc:
            text = str(exc)
            if "MD5 of file does not match" in text or "written flash region is empty" in text:
                raise FlashVerifyError(
                    f"{region.where()}: flash does not hold what was written ({text}); "
                    f"the board's flash or its link is faulty\n{_tail(capture.lines)}"
                ) from exc
            if "requires chip revision" in text:
                raise FlashInputError(
                    f"{region.where()}: {text}; use a build for this chip revision"
                ) from exc
            raise
        finally:
            capture.on_progress = None
        seconds = compared_seconds + time.monotonic() - started
        return FileReport(region.name, region.offset, region.size, region.md5, False, seconds)

    def _verify(self, esp: Any, regions: Sequence[FlashRegion], capture: EsptoolCapture) -> None:
        """Every region once more, after all writes: a later write may clobber an earlier one."""
        bad = []
        for region in regions:
            in_flash = str(esp.flash_md5sum(region.offset, region.size))
            if in_flash != region.md5:
                bad.append(f"{region.where()}: flash MD5 {in_flash}, file MD5 {region.md5}")
        if bad:
            raise FlashVerifyError(
                "flash does not hold what was written: "
                + "; ".join(bad)
                + "; the board's flash or its link is faulty (or something wrote to it meanwhile)\n"
                + _tail(capture.lines)
            )
        capture.note_line(f"[hil.link.flasher] verified {len(regions)} region(s) by MD5")
