"""``hil sim fleet``: many provisioned boards' firmware in one asyncio process, or sharded.

For load and fleet work a process per board is too dear (an interpreter, an RFC 2217
server and a control endpoint each), and nobody drives 200 serial ports anyway. Here
every board is still a whole `Board`: its own flash, programmed as a factory programmer
leaves a new board (bootloader, partition table, otadata, app image, and that board's
provisioning NVS), its own identity and its own `RigPeripherals` (BME280 and AP). It
powers up through the same ROM and bootloader path and runs the reference firmware
unchanged; only the UART goes nowhere (the board's TX tap still records it).

A board's flash is `hil.sim.flash_store`'s: the images every board shares, held once
in a read-only base file in the state dir (``flash-base-<hash>.bin``), and the sectors
the board has of its own (its NVS, later otadata, an OTA slot) in its overlay file.

With ``--processes N`` (or ``auto``) the boards are split over N shard processes
(`hil.sim.fleet_shards`), each running this module on its slice; the process started
keeps one control endpoint and one first line for them all.

The first stdout line is a JSON object, like ``hil sim board``'s: ``pid``, ``count``,
``device_ids`` (``fleet-0000``, ``fleet-0001``, ...), ``state_dir``, ``control`` and
``shards`` (per process that runs boards: ``name``, ``pid``, ``first`` and ``last``
device, ``count``, and ``anon_before_boards``, its anonymous memory before it made any
board, so a reader can tell the cost per device from the cost per process). The process
then runs until SIGTERM or SIGINT.

Layout of the state dir: the base image, and one sub-directory per board, named after its
device id, holding its overlay (``flash.overlay``) and its lock (``board.lock``). Each
board's lock is held while the fleet runs, so a second fleet cannot drive the same flash;
the state dir itself is locked too. Every start programs every board afresh (a new fleet
from the factory): the broker URI, the credentials, the config and the app are whatever
this run was given.

One control endpoint serves the whole fleet (JSON lines, as a board's): ``{"cmd":
"state"}`` gives every board's mode and boot count; any board command (``power``,
``reset``, ``sensor.set``, ``ap.set``, ...) goes to one board with ``"device":
"fleet-0003"`` added.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import math
import os
import resource
import signal
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from hil.device.contract import parse_broker_uri
from hil.device.settings import Provisioning, provisioning_image
from hil.firmware.catalog import FirmwareError, cached_build, load_recipes
from hil.images.layout import LAYOUT
from hil.images.nvs import NvsError
from hil.processes import exit_with_owner
from hil.secret import Secret, optional_secret
from hil.sim.board import Board
from hil.sim.control import ControlServer, JsonLinesServer
from hil.sim.firmware.reference import firmware_factory
from hil.sim.firmware.rig import AccessPoint, RigPeripherals
from hil.sim.flash_store import OverlayFlash, base_image_path
from hil.sim.process import FLASH_FILE, LOCK_FILE, StateDirBusy, default_mac, lock_state_dir
from hil.sim.registers import ChipIdentity

DEVICE_PREFIX = "fleet-"
MAX_COUNT = 10_000
FILES_PER_BOARD = 3  # flash overlay mapping, lock file, MQTT socket
OVERLAY_FILE = "flash.overlay"
FLASH_SIZE = 4 * 1024 * 1024  # a C3 devkit's 4 MB flash, as `hil sim board`'s
POWER_ON_SPREAD_S = 1.0
"""Boards are plugged in one after another over this long, as a real fleet never boots
in lockstep; it also spreads their readings over the measurement interval."""

BOARDS_PER_SENSOR_THREAD = 8
"""The firmware reads its sensor in `asyncio.to_thread`, and the driver sleeps through
the conversion (~10 ms) there, so a read holds a worker thread. 200 boards at 1 Hz keep
two busy on average; one worker per 8 boards leaves room for readings that bunch up
(after a broker outage, say) without one board's read waiting on others'."""


class FleetError(Exception):
    """Bad input, reported before anything is touched; the message names the fix."""


SHARD_DIED_EXIT = 3


class ShardDied(Exception):
    """A shard process of the fleet ended on its own: the fleet is broken (its devices are
    gone); the message names the shard, its devices and how it ended."""


@dataclass(frozen=True)
class FleetOptions:
    count: int
    state_dir: Path
    broker_uri: str
    credentials: Path | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    app: str | None = None  # recipe name; None = the recipe book's baseline
    ca_file: Path | None = None
    ota_pubkey: Path | None = None  # PEM public key every board checks OTA offers with (§6)
    processes: int | None = 1  # shard processes; None = auto (`hil.sim.fleet_shards`)
    shard: Shard | None = None  # set in a shard process: the slice of the fleet it runs


@dataclass(frozen=True)
class Shard:
    """One shard process's slice of the fleet: devices ``start``..``stop - 1``."""

    index: int
    start: int
    stop: int

    @property
    def name(self) -> str:
        return f"shard-{self.index}"


@dataclass(frozen=True)
class _Plan:
    """Everything checked and read before any board dir is touched."""

    device_ids: tuple[str, ...]  # the whole fleet's
    images: tuple[tuple[int, bytes], ...]  # (offset, bytes): the app's flash set (hil.images.layout)
    nvs_offset: int
    provisioning: dict[str, bytes]  # device id -> its NVS image, for this process's boards


@dataclass
class FleetBoard:
    device_id: str
    board: Board
    flash: OverlayFlash
    control: ControlServer  # never listens: the fleet endpoint hands it requests


def parse_config(text: str) -> dict[str, Any]:
    """``--config``: a JSON object of §5 settings (as in a config update), e.g.
    ``{"measurement_interval_s": 1}``; provisioned as every board's factory settings."""
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise FleetError(f"--config {text!r}: not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise FleetError(f'--config {text!r}: expected a JSON object, e.g. {{"measurement_interval_s": 1}}')
    return config


def parse_processes(text: str) -> int | None:
    """``--processes``: a positive number, or ``auto`` (None)."""
    if text == "auto":
        return None
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise FleetError(f"--processes {text!r}: give a number of processes (1 or more) or 'auto'")


def device_ids(count: int) -> tuple[str, ...]:
    return tuple(f"{DEVICE_PREFIX}{index:04d}" for index in range(count))


def load_credentials(path: Path, ids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """``{device_id: {"username": ..., "password": ...}}`` from a JSON file, for every id."""
    try:
        raw = json.loads(path.read_text())
    except OSError as exc:
        raise FleetError(f"--credentials {path}: cannot read it: {exc.strerror}") from None
    except ValueError as exc:
        raise FleetError(f"--credentials {path}: not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise FleetError(f'--credentials {path}: expected an object {{"fleet-0000": {{"username": ..., "password": ...}}, ...}}')
    missing = [device for device in ids if device not in raw]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise FleetError(f"--credentials {path}: no entry for {shown}; add one per device id, or lower --count")
    found: dict[str, tuple[str, str]] = {}
    for device in ids:
        entry = raw[device]
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("username"), str)
            and isinstance(entry.get("password"), str)
        ):
            raise FleetError(f'--credentials {path}: {device} must be {{"username": "...", "password": "..."}} (strings)')
        found[device] = (entry["username"], entry["password"])
    return found


def plan(options: FleetOptions, *, keep: range | None = None) -> _Plan:
    """Check every input and build every image; raises FleetError naming what to fix.
    Only the NVS images of the devices in ``keep`` (by index; default all) are kept."""
    if not 1 <= options.count <= MAX_COUNT:
        raise FleetError(f"--count {options.count}: give 1..{MAX_COUNT} boards")
    if parse_broker_uri(options.broker_uri) is None:
        raise FleetError(
            f"--broker-uri {options.broker_uri!r} is not mqtt://HOST:PORT or mqtts://HOST:PORT"
        )
    ids = device_ids(options.count)
    creds = load_credentials(options.credentials, ids) if options.credentials else {}
    ca_pem = _read_pem(options.ca_file, "--ca-file", "CERTIFICATE", "certificate")
    ota_pubkey = _read_pem(options.ota_pubkey, "--ota-pubkey", "PUBLIC KEY", "public key")
    try:
        book = load_recipes()
        app = book.get(options.app or book.baseline).name
        images = cached_build(book, [app])
    except FirmwareError as exc:
        raise FleetError(f"--app: {exc}") from None
    flash_set = LAYOUT.flash_set(images / f"{app}.bin", images)
    nvs = flash_set.layout.nvs
    ap = AccessPoint()  # each board's rig has this AP: every board is provisioned for it
    provisioning: dict[str, bytes] = {}
    kept = range(len(ids)) if keep is None else keep
    for index, device in enumerate(ids):
        username, password = creds.get(device, (None, None))
        prov = Provisioning(
            device_id=device,
            wifi_ssid=ap.ssid,
            wifi_pass=Secret(ap.password),
            mqtt_uri=options.broker_uri,
            mqtt_user=username,
            mqtt_pass=optional_secret(password),
            ca_cert=ca_pem,
            ota_pubkey=ota_pubkey,
        )
        try:
            image = provisioning_image(prov, options.config, size=nvs.size)
        except (ValueError, NvsError) as exc:
            raise FleetError(f"--config: {exc}") from None
        if index in kept:
            provisioning[device] = image
    written = tuple((f.offset, f.path.read_bytes()) for f in flash_set.files)
    return _Plan(ids, written, nvs.offset, provisioning)


def _raise_open_files_limit(count: int) -> None:
    """Each board holds a few descriptors; lift the soft limit as far as needed (and allowed)."""
    needed = count * FILES_PER_BOARD + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise FleetError(
            f"--count {count} needs about {needed} open files but the hard limit is {hard}; "
            "raise it (ulimit -Hn) or lower --count"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def program_flash(board_dir: Path, base: Path, nvs_offset: int, nvs: bytes) -> OverlayFlash:
    """A new chip from the factory programmer: the fleet's shared images (``base``), and
    this board's provisioning in its own overlay."""
    (board_dir / OVERLAY_FILE).unlink(missing_ok=True)  # a new overlay reads as the base
    # A whole-chip flash file of an earlier layout (or of `hil sim board` in this dir) is
    # not this board's flash any more: gone, rather than left to mislead.
    (board_dir / FLASH_FILE).unlink(missing_ok=True)
    flash = OverlayFlash(board_dir / OVERLAY_FILE, base)
    try:
        flash.write(nvs_offset, nvs)
    except BaseException:
        flash.close()
        raise
    return flash


def lock_board_dir(board_dir: Path) -> int:
    """Hold a board's dir for this process, as `lock_state_dir` holds a board's (same lock
    file, same record, same refusal), on a bare descriptor: a fleet holds thousands, and a
    file object per board would cost 5 KiB of each board's memory."""
    fd = os.open(board_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise StateDirBusy(f"{board_dir} is in use by {holder}; stop that board or pick another --state-dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
    return fd


def _read_pem(path: Path | None, option: str, label: str, what: str) -> str | None:
    """The PEM text of ``path`` (None when not given); a FleetError naming ``option`` when
    it cannot be read or holds no ``-----BEGIN {label}-----`` block."""
    if path is None:
        return None
    try:
        text = path.read_text()
    except OSError as exc:
        raise FleetError(f"{option} {path}: cannot read it: {exc.strerror}") from None
    if f"-----BEGIN {label}-----" not in text:
        raise FleetError(f"{option} {path}: no PEM {what} in it")
    return text


def anonymous_memory() -> int:
    """This process's anonymous resident memory in bytes (RssAnon, /proc/self/status)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


class FleetRouter(JsonLinesServer):
    """A fleet's one control endpoint: ``state`` without a device is fleet-wide; any
    command with ``"device"`` goes to that device. Subclasses say where a device lives."""

    async def handle_line(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
        except ValueError as exc:
            return {"ok": False, "error": f"not JSON: {exc}"}
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            return {"ok": False, "error": 'a request is a JSON object with a string "cmd"'}
        device = request.get("device")
        if device is None:
            if request["cmd"] == "state":
                return await self.fleet_state()
            return {
                "ok": False,
                "error": f'fleet commands: state; board commands ({request["cmd"]!r} too) need '
                '"device": a device id',
            }
        reply = await self.to_device(device, request) if isinstance(device, str) else None
        if reply is None:
            return {"ok": False, "error": f"no device {device!r} in this fleet ({self.device_count()} boards)"}
        return reply

    async def fleet_state(self) -> dict[str, Any]:
        raise NotImplementedError

    async def to_device(self, device: str, request: dict[str, Any]) -> dict[str, Any] | None:
        """The device's reply to ``request``; None when the fleet has no such device."""
        raise NotImplementedError

    def device_count(self) -> int:
        raise NotImplementedError


class FleetControl(FleetRouter):
    """The control endpoint of a fleet in this process: board commands to the board's own."""

    def __init__(self, boards: Sequence[FleetBoard]) -> None:
        super().__init__()
        self._boards = {b.device_id: b for b in boards}

    async def fleet_state(self) -> dict[str, Any]:
        return {"ok": True, "state": self.state()}

    async def to_device(self, device: str, request: dict[str, Any]) -> dict[str, Any] | None:
        target = self._boards.get(device)
        if target is None:
            return None
        forwarded = {key: value for key, value in request.items() if key != "device"}
        return await target.control.handle_line(json.dumps(forwarded).encode())

    def device_count(self) -> int:
        return len(self._boards)

    def state(self) -> dict[str, Any]:
        boards = []
        for fb in self._boards.values():
            state = fb.board.state()
            app = state["app"] or {}
            boards.append(
                {
                    "device_id": fb.device_id,
                    "mode": state["mode"],
                    "boots": state["boots"],
                    "reset_reason": state["idf_reset_reason"],
                    "version": app.get("version"),
                }
            )
        return {"count": len(boards), "modes": dict(Counter(b["mode"] for b in boards)), "boards": boards}


async def _power_on(boards: Sequence[FleetBoard]) -> None:
    for fb in boards:
        fb.board.power(True)
        await asyncio.sleep(POWER_ON_SPREAD_S / len(boards))  # pacing the plugging-in itself


async def serve_fleet(options: FleetOptions, *, out: IO[str] = sys.stdout) -> None:
    if options.shard is None:
        from hil.sim import fleet_shards  # the parent of shards is this module's caller too

        processes = options.processes or fleet_shards.auto_processes(options.count, fleet_shards.available_cores())
        if processes > 1:
            await fleet_shards.serve_sharded(options, processes, out=out)
            return
    shard = options.shard or Shard(0, 0, options.count)
    checked = plan(options, keep=range(shard.start, shard.stop))
    mine = checked.device_ids[shard.start : shard.stop]
    _raise_open_files_limit(len(mine))
    loop = asyncio.get_running_loop()
    workers = max(32, math.ceil(len(mine) / BOARDS_PER_SENSOR_THREAD))
    loop.set_default_executor(ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fleet-io"))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    options.state_dir.mkdir(parents=True, exist_ok=True)
    state_lock: IO[str] | None = None
    locks: list[int] = []
    boards: list[FleetBoard] = []
    control: FleetControl | None = None
    powering: asyncio.Task[None] | None = None
    try:
        if options.shard is None:  # a shard's parent holds the state dir
            state_lock = lock_state_dir(options.state_dir)
        for device in mine:
            board_dir = options.state_dir / device
            board_dir.mkdir(exist_ok=True)
            locks.append(lock_board_dir(board_dir))
        base = base_image_path(options.state_dir, FLASH_SIZE, checked.images)
        anon_before = anonymous_memory()
        for device in mine:
            board_dir = options.state_dir / device
            nvs = checked.provisioning.pop(device)  # programmed: not kept for the run
            flash = program_flash(board_dir, base, checked.nvs_offset, nvs)
            rig = RigPeripherals()
            # No UART: the board's default TX sink drops the bytes (its TX tap keeps the tail).
            board = Board(
                flash=flash,
                identity=ChipIdentity(mac=default_mac(board_dir)),
                app_factory=firmware_factory(rig),
                peripherals=rig,
            )
            board_control = ControlServer(board)
            rig.register(board_control)
            boards.append(FleetBoard(device, board, flash, board_control))
        control = FleetControl(boards)
        token_dir = options.state_dir
        if options.shard is not None:  # the parent's token is the fleet's; each shard has its own
            token_dir = options.state_dir / "shards" / shard.name
            token_dir.mkdir(parents=True, exist_ok=True)
        control.require_token(token_dir)
        await control.start()
        hello = {
            "pid": os.getpid(),
            "count": len(boards),
            "device_ids": list(mine),
            "state_dir": str(options.state_dir.resolve()),
            "control": control.url,
            "shards": [shard_record(shard, checked.device_ids, os.getpid(), anon_before)],
        }
        out.write(json.dumps(hello) + "\n")
        out.flush()
        powering = loop.create_task(_power_on(boards))
        await stop.wait()
    finally:
        if powering is not None:
            powering.cancel()
        if control is not None:
            await control.close()
        await asyncio.gather(*(fb.board.close() for fb in boards), return_exceptions=True)
        for fb in boards:
            fb.flash.close()
        for fd in locks:
            os.close(fd)
        if state_lock is not None:
            state_lock.close()


def shard_record(shard: Shard, ids: Sequence[str], pid: int, anon_before: int) -> dict[str, Any]:
    """A shard as the first line describes it."""
    return {
        "name": shard.name,
        "pid": pid,
        "first": ids[shard.start],
        "last": ids[shard.stop - 1],
        "count": shard.stop - shard.start,
        "anon_before_boards": anon_before,
    }


def run_fleet(options: FleetOptions) -> int:
    exit_with_owner()
    try:
        asyncio.run(serve_fleet(options))
    except (FleetError, StateDirBusy) as exc:
        print(f"hil sim fleet: {exc}", file=sys.stderr)
        return 2
    except ShardDied as exc:
        print(f"hil sim fleet: {exc}", file=sys.stderr)
        return SHARD_DIED_EXIT
    return 0
