"""``hil sim board``: one virtual board as one OS process.

The first stdout line is a JSON object other tools rely on (keep its fields stable):
``serial`` (the port URL or pty path), ``control`` (the control endpoint URL), ``pid``,
``mac`` and ``state_dir``. The process then runs until SIGTERM or SIGINT.

The state dir holds the board's persistent parts: the 4 MB flash image and the eFuse
bits burned since the factory (``efuse.bin``), both kept across power cycles and process
restarts, and ``board.json`` with its identity. A lock on
``board.lock`` keeps two processes from driving the same flash; the OS drops it when
the holder dies, so a SIGKILLed board never blocks the next one.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from hil.processes import exit_with_owner
from hil.sim.board import Board
from hil.sim.control import ControlServer
from hil.sim.efuse import EfuseArray
from hil.sim.firmware.reference import firmware_factory
from hil.sim.firmware.rig import RigPeripherals
from hil.sim.flash import SpiFlash
from hil.sim.profiles import PROFILES, profile_named
from hil.sim.registers import ChipIdentity, efuse_array_for, parse_mac
from hil.sim.timing import ChipTiming
from hil.sim.uart import PtyTransport, Rfc2217Server
from hil.sim.usb_jtag import HELD_OUTPUT_BYTES, REENUMERATION_S

FLASH_FILE = "flash.bin"
IDENTITY_FILE = "board.json"
EFUSE_FILE = "efuse.bin"
LOCK_FILE = "board.lock"


class StateDirBusy(Exception):
    pass


class BoardSetupError(Exception):
    """The board cannot start with these options (state dir, MAC, flash file): one line
    naming the input and the fix, before anything is served."""


@dataclass(frozen=True)
class BoardOptions:
    state_dir: Path
    mac: str | None = None
    pty: bool = False
    realistic_timing: bool = False  # pace the UART, give flash work its real duration
    profile: str = "default"  # hil.sim.profiles: "real-board" is as slow and unforgiving as a C3
    usb_jtag: bool = False  # the chip's own USB port instead of a devkit's UART (hil.sim.usb_jtag)


def default_mac(state_dir: Path) -> bytes:
    """A stable MAC per state dir, under Espressif's 58:cf:79 OUI."""
    digest = hashlib.sha256(str(state_dir.resolve()).encode()).digest()
    return bytes([0x58, 0xCF, 0x79]) + digest[:3]


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def _identity(options: BoardOptions) -> ChipIdentity:
    path = options.state_dir / IDENTITY_FILE
    saved = json.loads(path.read_text()) if path.exists() else {}
    if options.mac is not None:
        mac = parse_mac(options.mac)
    elif "mac" in saved:
        mac = parse_mac(saved["mac"])
    else:
        mac = default_mac(options.state_dir)
    path.write_text(json.dumps({"mac": format_mac(mac)}) + "\n")
    return ChipIdentity(mac=mac)


def lock_state_dir(state_dir: Path) -> IO[str]:
    """Hold the state dir for this process (released by the OS when it dies)."""
    handle = (state_dir / LOCK_FILE).open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise StateDirBusy(
            f"{state_dir} is in use by {holder}; stop that board or pick another --state-dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()
    return handle


def _prepare(options: BoardOptions) -> tuple[IO[str], SpiFlash, ChipIdentity, EfuseArray]:
    """The state dir held, its flash file open, the chip's identity and eFuses;
    BoardSetupError (and nothing left held) for a bad MAC, a state dir that cannot be one,
    a flash or eFuse file of the wrong size or a state file that is a symlink (it would
    write through the link)."""
    state = options.state_dir
    if options.profile not in PROFILES:
        raise BoardSetupError(f"--profile {options.profile}: unknown; use one of {', '.join(sorted(PROFILES))}")
    if options.usb_jtag and options.pty:
        raise BoardSetupError(
            "--usb-jtag with --pty: the USB-Serial-JTAG port is served over RFC 2217 (its DTR/RTS "
            "carry esptool's usb-reset, a pty has none); drop one of them"
        )
    if state.exists() and not state.is_dir():
        raise BoardSetupError(f"--state-dir {state}: is a file, not a directory; give a directory")
    try:
        state.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BoardSetupError(f"--state-dir {state}: cannot create it ({exc.strerror}); give a writable directory") from None
    for name in (FLASH_FILE, IDENTITY_FILE, LOCK_FILE, EFUSE_FILE):
        if (state / name).is_symlink():
            raise BoardSetupError(f"--state-dir {state}: {name} is a symlink; the board writes its state only to plain files")
    if options.mac is not None:
        try:
            ChipIdentity(mac=parse_mac(options.mac))  # unicast, six bytes
        except ValueError as exc:
            raise BoardSetupError(f"--mac {options.mac}: {exc}") from None
    try:
        lock = lock_state_dir(state)
    except OSError as exc:
        raise BoardSetupError(f"--state-dir {state}: cannot write its lock file ({exc.strerror})") from None
    try:
        flash = SpiFlash(state / FLASH_FILE)
    except (ValueError, OSError) as exc:
        lock.close()
        raise BoardSetupError(str(exc)) from None
    try:
        identity = _identity(options)
    except (ValueError, OSError) as exc:
        flash.close()
        lock.close()
        raise BoardSetupError(f"{state / IDENTITY_FILE}: {exc}; delete it to start from the default MAC") from None
    try:
        efuse = efuse_array_for(identity, flash, state / EFUSE_FILE)
    except (ValueError, OSError) as exc:
        flash.close()
        lock.close()
        raise BoardSetupError(str(exc)) from None
    return lock, flash, identity, efuse


async def serve_board(options: BoardOptions, *, out: IO[str] = sys.stdout) -> None:
    lock, flash, identity, efuse = _prepare(options)
    profile = profile_named(options.profile)
    rig = RigPeripherals()
    board = Board(
        flash=flash,
        identity=identity,
        app_factory=firmware_factory(rig),
        peripherals=rig,
        timing=ChipTiming() if options.realistic_timing or profile.realistic_timing else None,
        efuse=efuse,
        profile=profile,
        usb_jtag=options.usb_jtag,
    )
    control = ControlServer(board)
    control.require_token(options.state_dir)
    rig.register(control)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    pty: PtyTransport | None = None
    rfc: Rfc2217Server | None = None
    try:
        if options.pty:
            pty = PtyTransport(board.uart_rx)
            pty.start()
            board.attach_uart(pty.send)
            serial_url = pty.path
        else:
            rfc = Rfc2217Server(
                board.uart_rx,
                board.set_host_lines,
                hold_bytes=HELD_OUTPUT_BYTES if options.usb_jtag else None,
                lines_together_at_open=options.usb_jtag,
            )
            await rfc.start()
            board.attach_uart(rfc.send)
            serial_url = rfc.url
            if options.usb_jtag:
                UsbAttachment(board, rfc)
        await control.start()
        hello = {
            "serial": serial_url,
            "control": control.url,
            "pid": os.getpid(),
            "mac": format_mac(identity.mac),
            "state_dir": str(options.state_dir.resolve()),
            "profile": profile.name,
            "personality": "usb-jtag" if options.usb_jtag else "devkit",
        }
        out.write(json.dumps(hello) + "\n")
        out.flush()
        board.power(True)  # plugged in: the chip powers up and boots
        await stop.wait()
    finally:
        await control.close()
        if rfc is not None:
            await rfc.close()
        await board.close()
        if pty is not None:
            pty.close()
        flash.close()
        lock.close()


class UsbAttachment:
    """The chip's USB port on the host's bus: it leaves with the supply and comes back
    `REENUMERATION_S` after power returns (`hil.sim.usb_jtag`). The board is plugged in when
    the process starts, so its port is there from the first line of output."""

    def __init__(self, board: Board, server: Rfc2217Server, *, reenumeration_s: float = REENUMERATION_S) -> None:
        self._server = server
        self._reenumeration_s = reenumeration_s
        self._loop = asyncio.get_running_loop()
        self._arrival: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        board.on_power(self._power)
        board.port_state = self.state

    def _power(self, on: bool) -> None:
        if self._arrival is not None:
            self._arrival.cancel()
            self._arrival = None
        if on:
            self._arrival = self._loop.call_later(self._reenumeration_s, self._present, True)
        else:
            self._present(False)

    def _present(self, present: bool) -> None:
        self._arrival = None
        task = self._loop.create_task(self._server.set_present(present))
        self._tasks.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._tasks.discard)

    def state(self) -> dict[str, object]:
        return {
            "kind": "usb-jtag",
            "present": self._server.present,
            "departures": self._server.departures,
            "held_bytes": self._server.held,
            "dropped_bytes": self._server.dropped,
            "reenumeration_s": self._reenumeration_s,
        }


def run_board(options: BoardOptions) -> int:
    exit_with_owner()
    try:
        asyncio.run(serve_board(options))
    except (StateDirBusy, BoardSetupError) as exc:
        print(f"hil sim board: {exc}", file=sys.stderr)
        return 2
    return 0
