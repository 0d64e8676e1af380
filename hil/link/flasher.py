"""Flash an ESP32-C3 board with esptool, used as a library: checked input, skip-unchanged, verify.

Why a library and not the ``esptool`` command: one connection serves the whole job (check
what is already in flash, write only what differs, verify, reset), progress arrives per
file as numbers rather than as terminal text, errors arrive as exceptions that say which
kind of failure they are, and a port the console already holds open can be lent to it.

The job, in order:

1. **Check the input before touching anything** (rule 6): files exist and are not empty,
   offsets are sector-aligned and inside the flash, no two files overlap, each file fits
   the partition it lands in (the partition table being flashed, else the rig's table),
   app and bootloader images are for the ESP32-C3 (header chip id 5) and pass the same
   checks the 2nd-stage bootloader makes. A problem raises `FlashInputError`, naming the
   file, the problem and the fix.
2. **Connect** (reset into download mode, sync, upload the stub, attach the flash). A
   failure here is the rig's, not the firmware's (rule 4): it is retried once over a fresh
   connection, then raised as `FlashInfrastructureError`.
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
keeps the timeout local to the client (see `_Rfc2217Port`); nothing on the wire changes.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import serial
import serial.rfc2217
from esp_pylib.logger import EspLog, EspLogBase
from esptool.cmds import (
    attach_flash,
    detect_flash_size,
    erase_flash,
    reset_chip,
    run_stub,
    write_flash,
)
from esptool.loader import DEFAULT_CONNECT_ATTEMPTS, ESPLoader
from esptool.reset import ClassicReset
from esptool.targets import CHIP_DEFS, ROM_LIST
from esptool.util import FatalError, flash_size_bytes
from rich.errors import MarkupError
from rich.text import Text

from hil.errors import InfrastructureError, UsageError
from hil.firmware.catalog import FlashFile
from hil.images.app import CHIP_ID_ESP32C3, IMAGE_MAGIC, ImageError, check_image
from hil.images.partitions import (
    FLASH_SIZE_DEFAULT,
    PARTITION_TABLE_MAX_LEN,
    PARTITION_TABLE_OFFSET,
    TWO_OTA_TABLE,
    Partition,
    PartitionTable,
    PartitionTableError,
)
from hil.link.port_busy import busy_message, is_busy

if TYPE_CHECKING:
    from hil.device.settings import Provisioning

__all__ = [
    "CHIP",
    "AfterReset",
    "BeforeReset",
    "FileReport",
    "FlashError",
    "FlashInfrastructureError",
    "FlashInputError",
    "FlashPortBusyError",
    "FlashRegion",
    "FlashReport",
    "FlashSource",
    "FlashVerifyError",
    "Flasher",
    "ProgressCallback",
]

CHIP: Final = "esp32c3"
SECTOR_SIZE: Final = 0x1000
BOOTLOADER_OFFSET: Final = 0x0
NVS_OFFSET_DEFAULT: Final = 0x9000
_HEADER_CHIP_ID = struct.Struct("<H")
_HEADER_CHIP_ID_AT = 12  # magic, segments, spi mode, speed/size, entry(4), wp, drive(3)
_HEADER_MIN_REV_FULL_AT = 15
_IMAGE_HEADER_LEN = 24
_CONNECT_TRIES = 2  # the first connection and one retry over a fresh one (rule 4)

_log = logging.getLogger(__name__)

FlashSource = FlashFile | tuple[int, Path | bytes]
"""One thing to flash: a manifest's `FlashFile`, or ``(offset, path or bytes)``."""

ProgressCallback = Callable[[str, int, int], None]
"""``progress(name, bytes_done, bytes_total)``, called while a file is written."""

AfterReset = Literal["hard-reset", "soft-reset", "no-reset", "no-reset-stub", "watchdog-reset"]
BeforeReset = Literal["default-reset", "usb-reset", "no-reset", "no-reset-no-sync"]


# -- errors -----------------------------------------------------------------------------
class FlashError(Exception):
    """Flashing did not complete. The subclasses say whose fault it is."""


class FlashInputError(FlashError, UsageError, ValueError):
    """What was asked to be flashed is wrong; raised before any port is opened (except a
    chip-revision mismatch, which only the connected board can reveal; esptool checks it).

    The message names the file, the problem and the fix.
    """


class FlashInfrastructureError(FlashError, InfrastructureError):
    """The rig failed, not the firmware: the port did not open, the chip did not sync, the
    connection dropped mid-write. Reported as *broken*, never as a product failure.

    `attempts` is how many connections were tried; `causes` what each one died of.
    """

    def __init__(self, message: str, *, attempts: int = 1, causes: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.causes = tuple(causes)


class FlashPortBusyError(FlashInfrastructureError):
    """The port is held by another program (a serial monitor, another session): no board
    was touched, and a retry would only find it held again, so it is not retried."""


class FlashVerifyError(FlashInfrastructureError):
    """The flash does not hold what was written (MD5 mismatch after writing).

    The firmware under test cannot cause this: the board's flash, its wiring or the link
    corrupted the data, so it is an infrastructure failure too.
    """


# -- input --------------------------------------------------------------------------------
@dataclass(frozen=True)
class FlashRegion:
    """One checked file: its bytes (padded to 4 as esptool writes them) and where they go."""

    name: str
    offset: int
    data: bytes = field(repr=False)
    path: Path | None = None

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def end(self) -> int:
        return self.offset + len(self.data)

    @property
    def md5(self) -> str:
        return hashlib.md5(self.data).hexdigest()

    def where(self) -> str:
        return f"{self.name} (at 0x{self.offset:x})"


def _chip_names() -> dict[int, str]:
    names: dict[int, str] = {}
    for cls in ROM_LIST:
        chip_id = getattr(cls, "IMAGE_CHIP_ID", None)
        if isinstance(chip_id, int):
            names.setdefault(chip_id, str(cls.CHIP_NAME))
    return names


def _load(source: object, index: int) -> tuple[int, str, bytes, Path | None]:
    """Offset, display name, bytes and path of one source; FlashInputError if unusable."""
    if isinstance(source, FlashFile):
        offset, payload = source.offset, source.path
    elif isinstance(source, tuple) and len(source) == 2:
        offset, payload = source
    else:
        raise FlashInputError(
            f"files[{index}]: {source!r} is neither a FlashFile nor an (offset, path-or-bytes) "
            "pair; pass e.g. (0x10000, Path('build/app.bin'))"
        )
    if isinstance(payload, str | PathLike):
        path = Path(payload)
        where = f"{path} (at 0x{offset:x})" if isinstance(offset, int) else str(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise FlashInputError(
                f"{where}: no such file; build the firmware first or fix the path"
            ) from None
        except IsADirectoryError:
            raise FlashInputError(
                f"{where}: is a directory, not an image file; fix the path"
            ) from None
        except OSError as exc:
            raise FlashInputError(
                f"{where}: cannot be read ({exc.strerror}); fix its permissions"
            ) from None
        name = str(path)
    elif isinstance(payload, bytes | bytearray | memoryview):
        data, path = bytes(payload), None
        name = f"<{len(data)} bytes>"
    else:
        raise FlashInputError(
            f"files[{index}]: {type(payload).__name__} is not a path or bytes; pass a Path or the image bytes"
        )
    if not isinstance(offset, int) or isinstance(offset, bool):
        raise FlashInputError(f"{name}: offset {offset!r} is not an integer; write e.g. 0x10000")
    return offset, name, data, path


@dataclass(frozen=True)
class _Checker:
    """The pre-connection checks of rule 6, for one set of files."""

    table: PartitionTable
    table_name: str
    flash_size: int

    def partition_at(self, offset: int) -> Partition | None:
        return next((p for p in self.table.partitions if p.offset <= offset < p.end), None)

    def check_region(self, region: FlashRegion) -> None:
        where = region.where()
        if region.offset < PARTITION_TABLE_OFFSET:
            if region.end > PARTITION_TABLE_OFFSET:
                merged = (
                    " (a merged image from `esptool merge-bin` is not supported: flash its "
                    "parts at their offsets)"
                    if region.offset == BOOTLOADER_OFFSET
                    else ""
                )
                raise FlashInputError(
                    f"{where}: {region.size} bytes run past 0x{PARTITION_TABLE_OFFSET:x}, into the "
                    f"partition table; the bootloader region must end before it{merged}"
                )
            if region.offset == BOOTLOADER_OFFSET:
                self.check_image(region, PARTITION_TABLE_OFFSET, "the bootloader region")
            return
        if region.offset == PARTITION_TABLE_OFFSET:
            if region.size > SECTOR_SIZE:
                raise FlashInputError(
                    f"{where}: {region.size} bytes do not fit the partition table's sector "
                    f"(0x{SECTOR_SIZE:x} bytes); this is not a partition table, fix the offset"
                )
            return
        part = self.partition_at(region.offset)
        if part is None:
            crossed = next(
                (
                    p
                    for p in self.table.partitions
                    if p.offset < region.end and region.offset < p.end
                ),
                None,
            )
            if crossed is not None:
                raise FlashInputError(
                    f"{where}: runs from unpartitioned flash into partition '{crossed.label}' "
                    f"at 0x{crossed.offset:x} of {self.table_name}; fix the offset"
                )
            return
        if region.end > part.end:
            inside = (
                ""
                if region.offset == part.offset
                else f" from offset 0x{region.offset - part.offset:x}"
            )
            raise FlashInputError(
                f"{where}: {region.size} bytes do not fit partition '{part.label}' "
                f"(0x{part.size:x} bytes at 0x{part.offset:x}{inside}) of {self.table_name}; "
                "make the image smaller or flash a partition table with a bigger partition"
            )
        if part.is_app and region.offset == part.offset:
            self.check_image(region, part.size, f"app partition '{part.label}'")

    def check_image(self, region: FlashRegion, room: int, what: str) -> None:
        where, data = region.where(), region.data
        if data[0] != IMAGE_MAGIC:
            raise FlashInputError(
                f"{where}: is not an ESP app image (first byte 0x{data[0]:02x}, expected "
                f"0x{IMAGE_MAGIC:02x}) but lands at the start of {what}; flash the .bin that "
                "the build made for it (not the ELF or a data file), or fix the offset"
            )
        if len(data) < _IMAGE_HEADER_LEN:
            raise FlashInputError(
                f"{where}: {len(data)} bytes is too short for an image header; the file is "
                "truncated, rebuild it or copy it again"
            )
        (chip_id,) = _HEADER_CHIP_ID.unpack_from(data, _HEADER_CHIP_ID_AT)
        if chip_id != CHIP_ID_ESP32C3:
            chip = _chip_names().get(chip_id, "an unknown chip")
            raise FlashInputError(
                f"{where}: image is built for {chip} (header chip id {chip_id}), not the "
                f"ESP32-C3 (chip id {CHIP_ID_ESP32C3}); use the esp32c3 build "
                "(idf.py set-target esp32c3) or pick the right firmware"
            )
        # The board's revision is unknown until connected (esptool checks it then), so the
        # revision checks here only reject an image whose own range is impossible.
        (min_rev_full,) = _HEADER_CHIP_ID.unpack_from(data, _HEADER_MIN_REV_FULL_AT)
        try:
            check_image(
                data, flash_offset=region.offset, partition_size=room, chip_rev_full=min_rev_full
            )
        except ImageError as exc:
            raise FlashInputError(
                f"{where}: corrupt image, the bootloader would refuse it: {exc}; rebuild it "
                "or copy it again (a partial download or an edited file looks like this)"
            ) from None


# -- esptool's log --------------------------------------------------------------------------
def _plain(markup: str) -> str:
    """esptool's messages are Rich markup (escaped brackets, styles); keep the text."""
    try:
        return Text.from_markup(markup).plain
    except MarkupError:
        return markup


class _EsptoolCapture(EspLogBase):
    """What esptool says during one flash job: kept as lines, progress forwarded.

    Lines go to the report and to this module's `logging` logger at DEBUG; nothing is
    printed, so a flash inside a test run does not scribble over pytest's output.
    """

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.on_progress: Callable[[int, int], None] | None = None
        self._partial = ""

    def _add(self, text: str, *, markup: bool = True) -> None:
        *complete, self._partial = (self._partial + text).split("\n")
        for raw in complete:
            line = (_plain(raw) if markup else raw).rstrip()
            if line.strip():
                self.lines.append(line)
                _log.debug("esptool: %s", line)

    def note_line(self, line: str) -> None:
        """A line of our own, in the same log."""
        self.flush()
        self._add(line + "\n", markup=False)

    def flush(self) -> None:
        if self._partial:
            self._add("\n")

    def print(self, *args: Any, **kwargs: Any) -> None:
        sep, end = kwargs.get("sep", " "), kwargs.get("end", "\n")
        self._add(str(sep).join(str(a) for a in args) + str(end))

    def err(self, *args: Any, suggestion: str | None = None) -> None:
        self._add("Error: " + " ".join(str(a) for a in args) + "\n")

    def warn(self, *args: Any, suggestion: str | None = None) -> None:
        self._add("Warning: " + " ".join(str(a) for a in args) + "\n")

    def warning(self, message: str, suggestion: str | None = None) -> None:
        self.warn(message, suggestion=suggestion)

    def error(self, message: str, suggestion: str | None = None) -> None:
        self.err(message, suggestion=suggestion)

    def note(self, *args: Any) -> None:
        self._add("Note: " + " ".join(str(a) for a in args) + "\n")

    def hint(self, *args: Any) -> None:
        self._add("Hint: " + " ".join(str(a) for a in args) + "\n")

    def debug(self, *args: Any) -> None:
        pass

    def set_verbosity(self, mode: int | str) -> None:
        pass

    def progress_bar(
        self,
        cur_iter: int,
        total_iters: int,
        prefix: str = "",
        suffix: str = "",
        bar_length: int = 30,
    ) -> None:
        if self.on_progress is not None:
            self.on_progress(cur_iter, total_iters)


class _ThreadLogRouter(EspLogBase):
    """esptool's logger is one global; this sends each thread's esptool output to the
    capture of the flash job that thread runs, and everything else where it went before.

    Installed while at least one job runs, so flashing two boards from two threads works
    and esptool used elsewhere in the process is left alone.
    """

    def __init__(self, fallback: EspLogBase) -> None:
        self.fallback = fallback
        self.local = threading.local()

    def _target(self) -> EspLogBase:
        capture: EspLogBase | None = getattr(self.local, "capture", None)
        return capture if capture is not None else self.fallback

    def print(self, *args: Any, **kwargs: Any) -> None:
        self._target().print(*args, **kwargs)

    def err(self, *args: Any, suggestion: str | None = None) -> None:
        self._target().err(*args, suggestion=suggestion)

    def warn(self, *args: Any, suggestion: str | None = None) -> None:
        self._target().warn(*args, suggestion=suggestion)

    def warning(self, message: str, suggestion: str | None = None) -> None:
        self.warn(message, suggestion=suggestion)

    def error(self, message: str, suggestion: str | None = None) -> None:
        self.err(message, suggestion=suggestion)

    def note(self, *args: Any) -> None:
        self._target().note(*args)

    def hint(self, *args: Any) -> None:
        self._target().hint(*args)

    def debug(self, *args: Any) -> None:
        self._target().debug(*args)

    def stage(self, finish: bool = False) -> None:
        self._target().stage(finish=finish)

    def set_verbosity(self, mode: int | str) -> None:
        self._target().set_verbosity(mode)

    def set_info_stream(self, stream: Any) -> None:
        self._target().set_info_stream(stream)

    def progress_bar(
        self,
        cur_iter: int,
        total_iters: int,
        prefix: str = "",
        suffix: str = "",
        bar_length: int = 30,
    ) -> None:
        self._target().progress_bar(cur_iter, total_iters, prefix, suffix, bar_length)

    def counter_line(self, prefix: str, suffix: str, *, final: bool = False) -> None:
        self._target().counter_line(prefix, suffix, final=final)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target(), name)


_router_lock = threading.Lock()
_router: _ThreadLogRouter | None = None
_router_users = 0


@contextlib.contextmanager
def _capture_esptool_log() -> Iterator[_EsptoolCapture]:
    global _router, _router_users
    capture = _EsptoolCapture()
    with _router_lock:
        if _router is None:
            previous = EspLog.instance
            if previous is None:  # esptool installs its logger on import; be safe anyway
                from esptool.logger import EsptoolLogger

                previous = EsptoolLogger()
            _router = _ThreadLogRouter(previous)
            EspLog.instance = _router
        _router_users += 1
        router = _router
    router.local.capture = capture
    try:
        yield capture
    finally:
        router.local.capture = None
        capture.flush()
        with _router_lock:
            _router_users -= 1
            if _router_users == 0 and _router is not None:
                if EspLog.instance is _router:
                    EspLog.instance = _router.fallback
                _router = None


# -- the port ---------------------------------------------------------------------------------
class _Rfc2217Port(serial.rfc2217.Serial):  # type: ignore[misc]
    """pyserial's RFC 2217 client, with the read timeout kept on this side and the server's
    acknowledgements awaited as they arrive.

    pyserial's client treats a new ``timeout`` like a new line setting: it re-sends baud
    rate, data bits, parity, stop bits and flow control and waits for the server to
    acknowledge each, polling every 50 ms. Yet the timeout is only how long `read` here
    waits for bytes; RFC 2217 has no such setting. esptool sets it before and after almost
    every command, so each command cost ≥0.2 s over RFC 2217, and connecting, uploading the
    stub and attaching the flash ~16 s on the virtual rig (~1.2 s with this class). Here
    only that local value changes; baud rate and the modem lines are negotiated as before.

    The acknowledgements themselves (a modem line, a purge, the line settings) pyserial
    awaits by sleeping 50 ms before each look, though on a LAN an answer takes a
    millisecond: a classic reset (seven modem-line changes), an open and two purges cost
    ~0.8 s of such naps per flash. Here the reader thread says when an answer came. And a
    close does not end in pyserial's fixed 0.3 s pause "in case of quick reconnects": it
    waits for the server to hang up its side, which is when the next client may connect.
    """

    @property
    def timeout(self) -> float | None:
        value: float | None = self._timeout
        return value

    @timeout.setter
    def timeout(self, timeout: float | None) -> None:
        if timeout is not None and timeout < 0:
            raise ValueError(f"Not a valid timeout: {timeout!r}")
        self._timeout = timeout

    @property
    def write_timeout(self) -> float | None:
        value: float | None = self._write_timeout
        return value

    @write_timeout.setter
    def write_timeout(self, timeout: float | None) -> None:
        # pyserial's client supports none, but says so only after a renegotiation.
        if timeout is not None:
            raise NotImplementedError("write_timeout is currently not supported")
        self._write_timeout = None

    # -- acknowledgements, awaited ---------------------------------------------------------
    def _answers(self) -> threading.Condition:
        # Created on first use: a lent port becomes this class without __init__ running.
        # dict.setdefault is atomic, so the reader thread and a waiter share one condition.
        answers: threading.Condition = self.__dict__.setdefault("_hil_answers", threading.Condition())
        return answers

    def _telnet_process_subnegotiation(self, suboption: bytes) -> None:
        super()._telnet_process_subnegotiation(suboption)  # on the reader thread
        answers = self._answers()
        with answers:
            answers.notify_all()

    def _await_acknowledged(self, items: Sequence[Any], what: str) -> None:
        """Until the server has acknowledged every item (pyserial's ``is_ready`` raises
        ValueError when it refused one), or the network timeout passes."""
        answers = self._answers()
        with answers:
            if not answers.wait_for(lambda: all(item.is_ready() for item in items), self._network_timeout):
                raise serial.SerialException(
                    f"the RFC 2217 server did not acknowledge {what} within {self._network_timeout} s"
                )

    def rfc2217_set_control(self, value: bytes) -> None:
        if self._ignore_set_control_answer:  # the URL asked to expect no answer: pyserial's way
            super().rfc2217_set_control(value)
            return
        item = self._rfc2217_options["control"]
        item.set(value)
        self._await_acknowledged([item], "a modem-line or flow-control change")

    def rfc2217_send_purge(self, value: bytes) -> None:
        item = self._rfc2217_options["purge"]
        item.set(value)
        self._await_acknowledged([item], "a buffer purge")

    def _reconfigure_port(self) -> None:
        """Send the line settings together, await the server's acknowledgements, then set
        the flow control (RFC 2217 SET-BAUDRATE, -DATASIZE, -PARITY, -STOPSIZE, -CONTROL)."""
        if self._socket is None:
            raise serial.SerialException("Can only operate on open ports")
        if not 0 < self._baudrate < 2**32:
            raise ValueError(f"invalid baudrate: {self._baudrate!r}")
        rfc = serial.rfc2217
        settings = self._rfc2217_port_settings
        settings["baudrate"].set(struct.pack("!I", self._baudrate))
        settings["datasize"].set(struct.pack("!B", self._bytesize))
        settings["parity"].set(struct.pack("!B", rfc.RFC2217_PARITY_MAP[self._parity]))
        settings["stopsize"].set(struct.pack("!B", rfc.RFC2217_STOPBIT_MAP[self._stopbits]))
        self._await_acknowledged(list(settings.values()), f"the line settings ({self._baudrate} Bd)")
        if self._rtscts and self._xonxoff:
            raise ValueError("xonxoff and rtscts together are not supported")
        if self._rtscts:
            self.rfc2217_set_control(rfc.SET_CONTROL_USE_HW_FLOW_CONTROL)
        elif self._xonxoff:
            self.rfc2217_set_control(rfc.SET_CONTROL_USE_SW_FLOW_CONTROL)
        else:
            self.rfc2217_set_control(rfc.SET_CONTROL_USE_NO_FLOW_CONTROL)

    def close(self) -> None:
        """Hang up, and return once the server has let go of the port: it closes its side
        when it has released the line, so a client that connects next is not refused
        (ser2net and the virtual board serve one client at a time)."""
        self.is_open = False
        sock: socket.socket | None = getattr(self, "_socket", None)
        reader: threading.Thread | None = getattr(self, "_thread", None)
        deadline = time.monotonic() + _SERVER_LET_GO_S
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
        if reader is not None:
            reader.join(_SERVER_LET_GO_S)  # it stops at the next data or at the server's EOF
            if not reader.is_alive():
                self._thread = None
        if sock is not None:
            if self._thread is None:  # the reader is gone: read on here until that EOF
                with contextlib.suppress(OSError):
                    while (left := deadline - time.monotonic()) > 0:
                        sock.settimeout(left)
                        if not sock.recv(4096):
                            break
            with contextlib.suppress(OSError):
                sock.close()
        if self._thread is not None:  # still in recv after the deadline: the close ends it
            self._thread.join(7)
            self._thread = None
        self._socket = None


_SERVER_LET_GO_S: Final = 1.0
"""How long a close waits for the RFC 2217 server to hang up its side (pyserial instead
sleeps 0.3 s after every close, "in case of quick reconnects")."""

STRAP_HOLD_S: Final = 0.15
"""How long the first reset attempt over RFC 2217 holds GPIO9 low after EN rises.

esptool's ClassicReset holds it 0.05 s (0.55 s on its second attempt). Over a network
port the chip latches its strapping pins wherever the acknowledgements put EN's rise: a
devkit within milliseconds of it, the virtual board 0.12 s after it (sized for pyserial's
stock client, whose 50 ms polls come between EN's rise and GPIO9's fall). With this
client's acknowledgements as fast as the link, 0.05 s misses the latter and every flash
paid a failed attempt and the long one (~0.6 s); 0.15 s covers both on the first.
"""


def _hold_strap_longer(esp: Any) -> None:
    """Make the first of esptool's reset strategies hold GPIO9 low ``STRAP_HOLD_S``."""
    construct = esp._construct_reset_strategy_sequence

    def sequence(mode: str) -> tuple[Any, ...]:
        strategies = tuple(construct(mode))
        first = strategies[0] if strategies else None
        if isinstance(first, ClassicReset) and first.reset_delay < STRAP_HOLD_S:
            first.reset_delay = STRAP_HOLD_S
        return strategies

    esp._construct_reset_strategy_sequence = sequence


def _busy_error(port: str, exc: BaseException) -> FlashPortBusyError:
    return FlashPortBusyError(
        busy_message(port, exc, "Nothing was flashed."),
        attempts=1,
        causes=[f"attempt 1: {type(exc).__name__}: {str(exc).strip()}"],
    )


def _port_name(port: str | serial.SerialBase) -> str:
    return port if isinstance(port, str) else str(getattr(port, "port", None) or port)


@dataclass
class _Link:
    """A serial port for one connection attempt: opened from a URL, or lent and given back
    as it was (open, same settings) even when esptool closed it after a failed sync."""

    port: Any
    owned: bool
    restore: Callable[[], None] = lambda: None

    @property
    def is_rfc2217(self) -> bool:
        return str(getattr(self.port, "name", "") or "").startswith("rfc2217:")

    @classmethod
    def open(cls, port: str | serial.SerialBase, *, fast_rfc2217: bool) -> _Link:
        if isinstance(port, str):
            if fast_rfc2217 and port.startswith("rfc2217:"):
                opened = _Rfc2217Port()
                opened.port = port
                opened.open()
            else:
                opened = serial.serial_for_url(port, exclusive=True)
            return cls(opened, owned=True)
        return cls.borrow(port, fast_rfc2217=fast_rfc2217)

    @classmethod
    def borrow(cls, port: serial.SerialBase, *, fast_rfc2217: bool) -> _Link:
        was_open = bool(port.is_open)
        original_class = type(port)
        saved = (port.baudrate, port.timeout, port.write_timeout)
        if not was_open:
            port.open()
        if fast_rfc2217 and original_class is serial.rfc2217.Serial:
            # The lender's object, same state; only timeout setting skips the renegotiation.
            port.__class__ = _Rfc2217Port

        def restore() -> None:
            port.__class__ = original_class
            if not was_open:
                port.close()
                return
            with contextlib.suppress(serial.SerialException, OSError, ValueError):
                if not port.is_open:  # esptool closes the port when a sync fails
                    port.open()
                baudrate, timeout, write_timeout = saved
                if port.baudrate != baudrate:
                    port.baudrate = baudrate
                if port.timeout != timeout:
                    port.timeout = timeout
                if port.write_timeout != write_timeout:
                    with contextlib.suppress(NotImplementedError):
                        port.write_timeout = write_timeout

        return cls(port, owned=False, restore=restore)

    def refresh(self) -> None:
        """A fresh connection on a lent port: close it and open it again."""
        if self.owned:
            return
        with contextlib.suppress(serial.SerialException, OSError):
            if self.port.is_open:
                self.port.close()
        self.port.open()

    def release(self) -> None:
        if self.owned:
            with contextlib.suppress(serial.SerialException, OSError):
                self.port.close()
        else:
            self.restore()


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

    # -- rule 6 ----------------------------------------------------------------------------------
    def check(self, files: Sequence[FlashSource]) -> tuple[FlashRegion, ...]:
        """Check everything that can be checked without a board; return the files, sorted.

        Raises FlashInputError naming the file, the problem and the fix.
        """
        if isinstance(files, str | bytes | Path | FlashFile) or not isinstance(files, Sequence):
            raise FlashInputError(
                f"files must be a sequence of FlashFile or (offset, path) pairs, not {type(files).__name__}"
            )
        if not files:
            raise FlashInputError(
                "nothing to flash: files is empty; pass at least one (offset, path)"
            )
        regions: list[FlashRegion] = []
        for index, source in enumerate(files):
            offset, name, data, path = _load(source, index)
            where = f"{name} (at 0x{offset:x})" if offset >= 0 else f"{name} (at {offset})"
            if not data:
                raise FlashInputError(
                    f"{where}: is empty (0 bytes); the build failed or the copy did, rebuild it"
                )
            if offset < 0:
                raise FlashInputError(f"{where}: a negative offset ({offset}) is not a place in flash; use e.g. 0x10000")
            if offset % SECTOR_SIZE:
                raise FlashInputError(
                    f"{where}: offset 0x{offset:x} is not a multiple of the 0x{SECTOR_SIZE:x}-byte "
                    "flash sector; use the offset from the build's flash_args or partition table"
                )
            padded = data + b"\xff" * (-len(data) % 4)  # what esptool writes
            region = FlashRegion(name=name, offset=offset, data=padded, path=path)
            if region.end > self.flash_size:
                raise FlashInputError(
                    f"{where}: {len(data)} bytes end at 0x{region.end:x}, past the end of the "
                    f"{self.flash_size // (1024 * 1024)} MB flash; fix the offset or the flash size"
                )
            regions.append(region)
        regions.sort(key=lambda r: r.offset)
        for first, second in itertools.pairwise(regions):
            if first.end > second.offset:
                raise FlashInputError(
                    f"{first.name} (0x{first.offset:x}-0x{first.end:x}) overlaps {second.name} "
                    f"(at 0x{second.offset:x}); each file needs its own flash region, fix the offsets "
                    "(or drop the file that is not meant to be there)"
                )
        checker = _Checker(*self._table_for(regions), flash_size=self.flash_size)
        for region in regions:
            checker.check_region(region)
        return tuple(regions)

    def _table_for(self, regions: Sequence[FlashRegion]) -> tuple[PartitionTable, str]:
        table_file = next((r for r in regions if r.offset == PARTITION_TABLE_OFFSET), None)
        if table_file is None:
            return self.partition_table, self.partition_table_name
        try:
            table = PartitionTable.from_bytes(table_file.data[:PARTITION_TABLE_MAX_LEN])
            table.validate(self.flash_size)
        except PartitionTableError as exc:
            raise FlashInputError(
                f"{table_file.where()}: not a valid partition table ({exc}); regenerate it "
                "(idf.py partition-table / gen_esp32part.py) or fix the offset"
            ) from None
        if not table.partitions:
            raise FlashInputError(
                f"{table_file.where()}: the partition table is empty (erased?); regenerate it"
            )
        return table, table_file.name

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
        offset, size = (nvs.offset, nvs.size) if nvs is not None else (NVS_OFFSET_DEFAULT, 0x4000)
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
        port_name = _port_name(port)
        with _capture_esptool_log() as capture:
            link, esp, attempts = self._connect(port, capture)
            try:
                erase_flash(esp)
                reset_chip(esp, after)
            except (serial.SerialException, OSError) as exc:
                raise FlashInfrastructureError(
                    f"lost the board on {port_name} while erasing: {exc}\n{_tail(capture.lines)}",
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
        with _capture_esptool_log() as capture:
            # With skipping on, the ROM loader compares first (it has SPI_FLASH_MD5 on the
            # C3) and the stub is uploaded only if something is to be written: an unchanged
            # re-flash does not pay for it.
            link, esp, attempts = self._connect(port, capture, stub=not skip_unchanged)
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
        )
        _log.info("%s", report.summary())
        return report

    def _connect(
        self, port: str | serial.SerialBase, capture: _EsptoolCapture, *, stub: bool = True
    ) -> tuple[_Link, Any, int]:
        """Reset into download mode, sync, run the stub (or not yet), attach the flash; one retry."""
        causes: list[str] = []
        link: _Link | None = None
        for attempt in range(1, _CONNECT_TRIES + 1):
            try:
                if link is None:
                    link = _Link.open(port, fast_rfc2217=self.fast_rfc2217)
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

    def _start(self, link: _Link, *, stub: bool) -> Any:
        esp = CHIP_DEFS[CHIP](link.port, self.baud)
        if link.is_rfc2217:
            esp.USES_RFC2217 = True  # as esptool's own detect_chip does for rfc2217 URLs
        if isinstance(link.port, _Rfc2217Port):
            _hold_strap_longer(esp)
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
    def _compare(esp: Any, region: FlashRegion, capture: _EsptoolCapture) -> tuple[FileReport | None, float]:
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
        capture: _EsptoolCapture,
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

    def _verify(self, esp: Any, regions: Sequence[FlashRegion], capture: _EsptoolCapture) -> None:
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
