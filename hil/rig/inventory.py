"""Rig inventory (``rigs/*.toml``), capabilities, and reservation of a rig for a session.

A rig is data: one TOML file per rig, or per pool of virtual rigs::

    name = "bench-1"
    kind = "serial"                      # virtual | serial | rfc2217 | labgrid
    chip = "esp32c3"
    port = "/dev/serial/by-id/usb-Silicon_Labs_CP2102N_0001-if00-port0"
    reset = "classic"                    # classic | usb-jtag | gpio
    flash_baud = 460800                  # optional: esptool's rate once connected (default 115200)
    capabilities = ["power_control", "ota"]
    tags = ["bench", "cp2102n"]

    [power]                              # or power = "none"
    kind = "gpio-expander"
    bus = 1
    address = 0x20
    pin = 3
    chip = "pcf8574"
    # boot_pin = 4                       # reset = "gpio": the expander pin that pulls GPIO9 low

    [sensor]                             # or sensor = "none"
    kind = "reference-bme280"
    bus = 1
    address = 0x76

    [network]
    ssid = "hil-lab"
    broker_host = "192.168.50.2"

A ``kind = "virtual"`` file needs only a name: the virtual rig defaults to everything
it can do (all capabilities, virtual power and sensor, the loopback broker). ``count = N``
makes a pool ``<name>-0`` … ``<name>-<N-1>`` so that pytest-xdist workers each get one.

Loading checks everything before anything is touched, and reports every problem of every
file at once, each with the file, the line when it can be found, the table and key, and
the fix (with the closest known value for a typo).

Reservation takes an OS file lock per rig (``flock`` through filelock) in a lock
directory shared by everyone on the host, so the kernel releases it when the holder dies,
however it dies. Who holds a rig is recorded next to the lock; a record whose lock is free
is stale (its process died) and is cleared.
"""

from __future__ import annotations

import contextlib
import difflib
import getpass
import json
import os
import re
import socket
import time
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, TypeAlias, cast, get_args
from urllib.parse import urlsplit

from filelock import FileLock, Timeout

from hil.errors import InfrastructureError, UsageError

RigKind = Literal["virtual", "serial", "rfc2217", "labgrid"]
ResetMethod = Literal["classic", "usb-jtag", "gpio"]
ExpanderChipName = Literal["pcf8574", "mcp23017"]

RIG_KINDS: tuple[str, ...] = get_args(RigKind)
RESET_METHODS: tuple[str, ...] = get_args(ResetMethod)
EXPANDER_CHIPS: tuple[str, ...] = get_args(ExpanderChipName)
POWER_KINDS = ("none", "virtual", "gpio-expander", "uhubctl")
SENSOR_KINDS = ("none", "virtual", "reference-bme280")
CHIPS = ("esp32c3",)

#: What a rig can declare; a test asks for these with ``@pytest.mark.requires(...)``.
KNOWN_CAPABILITIES: frozenset[str] = frozenset(
    {
        "sensor_emulation",  # the sensor's environment and faults are set by the test
        "power_control",  # the board's supply can be cut and restored
        "network_faults",  # the board reaches the broker through hil.services.netfault's proxy
        "test_hooks",  # the firmware under test accepts the test-only commands
        "ota",  # the board can reach the OTA image server
        "wifi_control",  # the access point the board joins can be taken down and up
    }
)

VIRTUAL_NETWORK_SSID = "hil-lab"
VIRTUAL_BROKER_HOST = "127.0.0.1"
MAX_POOL = 256
LOCK_DIR_ENV = "HIL_LOCK_DIR"
DEFAULT_LOCK_DIR = Path("~/.cache/hil/locks")
POLL_INTERVAL_S = 0.1

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
_HUB_RE = re.compile(r"^\d+(-\d+(\.\d+)*)?$")
_LG_TAG_KEY_RE = re.compile(r"[a-z][a-z0-9_]+")  # labgrid's TAG_KEY
_LG_TAG_VALUE_RE = re.compile(r"[A-Za-z0-9_.:-]+")
_COORDINATOR_RE = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(:\d{1,5})?")
FLASH_BAUD_RANGE = (115200, 5_000_000)
"""What ``flash_baud`` may be: the ROM's own rate up to what the C3's UART (and the fastest
bridges) take; esptool itself sends any rate, so a bad one fails only at the board."""
_TOP_KEYS = (
    "name",
    "kind",
    "chip",
    "port",
    "reset",
    "flash_baud",
    "power",
    "sensor",
    "network",
    "capabilities",
    "tags",
    "count",
    "description",
    "labgrid",
)


# -- the model ----------------------------------------------------------------------
@dataclass(frozen=True)
class NoPowerSpec:
    """The board's supply cannot be switched by the framework."""

    kind: Literal["none"] = "none"


@dataclass(frozen=True)
class VirtualPowerSpec:
    """The virtual rig's control endpoint switches the simulated supply."""

    kind: Literal["virtual"] = "virtual"


@dataclass(frozen=True)
class GpioExpanderSpec:
    """A relay or load switch on a pin of an I2C GPIO expander on the host (smbus2)."""

    bus: int
    address: int
    pin: int
    chip: ExpanderChipName
    kind: Literal["gpio-expander"] = "gpio-expander"
    # Another pin of the same expander, wired to the board's GPIO9 (BOOT) so that driving
    # it low holds the strap: what a ``reset = "gpio"`` rig enters download mode with.
    boot_pin: int | None = None


@dataclass(frozen=True)
class UhubctlSpec:
    """VBUS of a port on a USB hub with per-port power switching (uhubctl)."""

    hub: str
    port: int
    kind: Literal["uhubctl"] = "uhubctl"


@dataclass(frozen=True)
class NoSensorSpec:
    """The board reads its own sensor; the host has nothing to compare with or control."""

    kind: Literal["none"] = "none"


@dataclass(frozen=True)
class VirtualSensorSpec:
    """The virtual rig's register-level BME280, whose environment and faults tests set."""

    kind: Literal["virtual"] = "virtual"


@dataclass(frozen=True)
class ReferenceBme280Spec:
    """A second BME280 next to the board, read by the host through smbus2 as ground truth."""

    bus: int
    address: int
    kind: Literal["reference-bme280"] = "reference-bme280"


PowerSpec: TypeAlias = NoPowerSpec | VirtualPowerSpec | GpioExpanderSpec | UhubctlSpec


@dataclass(frozen=True)
class LabgridSpec:
    """How a ``kind = "labgrid"`` rig finds its board: a place with these tags (what
    ``labgrid-client reserve k=v ...`` filters on), through this coordinator (None:
    ``$LG_COORDINATOR``, else labgrid's default). The port and power come from the place."""

    tags: tuple[tuple[str, str], ...]
    coordinator: str | None = None
SensorSpec: TypeAlias = NoSensorSpec | VirtualSensorSpec | ReferenceBme280Spec


@dataclass(frozen=True)
class Network:
    """The Wi-Fi network the board joins and the broker address it is provisioned with."""

    ssid: str
    broker_host: str


EsptoolBefore = Literal["default-reset", "usb-reset", "no-reset"]


@dataclass(frozen=True)
class FlashMethod:
    """How a rig's board is put into its ROM loader and how fast the flasher then talks:
    esptool's ``--before`` and the baud rate it switches to once connected (None: stay at
    the ROM's 115200). ``boot_by_power``: before connecting, the session power-cycles the
    board with GPIO9 held low (``--before no-reset``), and power-cycles it again after,
    with GPIO9 released, to boot the app (a board without an auto-reset circuit)."""

    before: EsptoolBefore
    flash_baud: int | None
    boot_by_power: bool = False


@dataclass(frozen=True)
class Rig:
    """One board a session can reserve, real or virtual."""

    name: str
    kind: RigKind
    chip: str
    port: str | None
    reset: ResetMethod
    power: PowerSpec
    sensor: SensorSpec
    network: Network
    capabilities: frozenset[str]
    tags: tuple[str, ...] = ()
    pool: str | None = None
    description: str = ""
    source: Path | None = field(default=None, compare=False)
    labgrid: LabgridSpec | None = None
    flash_baud: int | None = None

    @property
    def is_virtual(self) -> bool:
        return self.kind == "virtual"

    def flash_method(self) -> FlashMethod:
        """The one mapping from the rig file's ``reset`` and ``flash_baud`` to the flasher.

        classic: esptool's DTR/RTS auto-reset (``default-reset``); usb-jtag: the sequence
        the chip's USB-Serial-JTAG peripheral decodes (``usb-reset``: its lines are not
        wires, the classic pulse does not reach GPIO9); gpio: a power cycle with GPIO9
        held low through the power backend (the loader has checked it has a boot pin)."""
        if self.reset == "gpio":
            return FlashMethod("no-reset", self.flash_baud, boot_by_power=True)
        return FlashMethod("usb-reset" if self.reset == "usb-jtag" else "default-reset", self.flash_baud)

    def has(self, *capabilities: str) -> bool:
        return not self.missing(capabilities)

    def missing(self, required: Iterable[str]) -> tuple[str, ...]:
        """The required capabilities this rig lacks, in the order asked (for skip reasons)."""
        return tuple(cap for cap in required if cap not in self.capabilities)


# -- errors ---------------------------------------------------------------------------
class RigError(Exception):
    """Base of this module's errors."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a rig file: where (file, line, table, key) and what to do."""

    path: Path
    message: str
    line: int | None = None
    table: str | None = None
    key: str | None = None

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else f"{self.path}"
        if self.key is None:
            return f"{where}: {self.message}"
        field_name = f"[{self.table}] {self.key}" if self.table else self.key
        return f"{where}: {field_name}: {self.message}"


class RigConfigError(RigError, UsageError):
    """The inventory is invalid; ``problems`` lists every problem found, each with its fix."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        if len(self.problems) == 1:
            text = str(self.problems[0])
        else:
            text = f"{len(self.problems)} problems in the rig inventory:\n" + "\n".join(
                f"  {problem}" for problem in self.problems
            )
        super().__init__(text)


class ReservationError(RigError, InfrastructureError):
    """A rig could not be reserved (all are taken, the lock dir is unusable); one that
    matches nothing is a usage error (`UnknownRig`)."""


class UnknownRig(ReservationError, UsageError):
    """No rig in the inventory matches the name or tag asked for."""


class NoRigAvailable(ReservationError):
    """Rigs match, but every one of them is held by someone else."""


# -- loading --------------------------------------------------------------------------
BUILTIN_RIGS_DIR = Path(__file__).resolve().parent / "builtin_rigs"
"""The virtual rig alone, packaged with hil: what a team that installs hil gets before it
writes a rig file of its own."""


def default_rigs_dir(cwd: Path | None = None) -> Path:
    """``rigs/`` of the directory pytest runs in (a lab's repository keeps its inventory
    there), else the packaged virtual rig."""
    here = (cwd or Path.cwd()) / "rigs"
    return here if here.is_dir() else BUILTIN_RIGS_DIR


def load_rigs(directory: Path | str) -> list[Rig]:
    """Every rig of ``directory/*.toml`` (pools expanded), in file-name order.

    Raises ``RigConfigError`` listing every problem in every file.
    """
    root = Path(directory)
    if not root.is_dir():
        raise RigConfigError(
            [
                Problem(
                    root,
                    "no rig inventory here: create the directory with one TOML file per rig "
                    "(rigs/virtual.toml is the virtual rig)",
                )
            ]
        )
    problems: list[Problem] = []
    rigs: list[Rig] = []
    for path in sorted(root.glob("*.toml")):
        loaded, found = _load_file(path)
        rigs.extend(loaded)
        problems.extend(found)
    seen: dict[str, Rig] = {}
    for rig in rigs:
        first = seen.setdefault(rig.name, rig)
        if first is not rig:
            assert rig.source is not None
            problems.append(
                Problem(
                    rig.source,
                    f"rig {rig.name!r} is also defined in {first.source}; "
                    "rig names must be unique across the inventory (rename one)",
                    key="name",
                )
            )
    if problems:
        raise RigConfigError(problems)
    return rigs


def load_rig_file(path: Path | str) -> list[Rig]:
    """The rig (or pool) of one file."""
    rigs, problems = _load_file(Path(path))
    if problems:
        raise RigConfigError(problems)
    return rigs


def _load_file(path: Path) -> tuple[list[Rig], list[Problem]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        return [], [
            Problem(path, f"not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8")
        ]
    except OSError as exc:
        return [], [Problem(path, f"cannot read: {exc.strerror}")]
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = re.search(r"\(at line (\d+), column (\d+)\)", message)
        line = int(match.group(1)) if match else None
        detail = message[: match.start()].strip() if match else message
        column = f", column {match.group(2)}" if match else ""
        return [], [
            Problem(path, f"TOML syntax error: {detail}{column}; fix the syntax", line=line)
        ]
    reader = _FileReader(path, text)
    rigs = reader.rigs(data)
    return rigs, reader.problems


class _Missing:
    pass


_MISSING = _Missing()


class _FileReader:
    """Reads one parsed file into rigs, collecting problems instead of stopping at the first."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.problems: list[Problem] = []
        self._lines = _key_lines(text)

    # -- reporting
    def problem(self, message: str, *, table: str | None = None, key: str | None = None) -> None:
        line = self._lines.get((table, key)) if key is not None else None
        if line is None and table is not None:
            line = self._lines.get((None, table))
        self.problems.append(Problem(self.path, message, line=line, table=table, key=key))

    def choice(
        self, value: object, choices: Sequence[str], what: str, *, table: str | None, key: str
    ) -> str | None:
        if not isinstance(value, str):
            self.problem(f"must be a string, one of {_or_list(choices)}", table=table, key=key)
            return None
        if value in choices:
            return value
        self.problem(
            f"{value!r} is not a known {what}; {_suggest(value, choices)}", table=table, key=key
        )
        return None

    def string(
        self, data: Mapping[str, Any], key: str, *, table: str | None = None, example: str
    ) -> str | None:
        value = data.get(key, _MISSING)
        if value is _MISSING:
            where = f"[{table}]" if table else "the file"
            self.problem(f"missing; add {key} = {example} to {where}", table=table, key=key)
            return None
        if not isinstance(value, str) or not value.strip():
            self.problem(
                f"must be a non-empty string, like {key} = {example}", table=table, key=key
            )
            return None
        return value

    def integer(
        self,
        data: Mapping[str, Any],
        key: str,
        *,
        table: str | None,
        low: int,
        high: int,
        hex_: bool = False,
    ) -> int | None:
        fmt = (lambda n: f"0x{n:02x}") if hex_ else str
        value = data.get(key, _MISSING)
        if value is _MISSING:
            where = f"[{table}]" if table else "the file"
            self.problem(
                f"missing; add {key} = {fmt(low)} (from {fmt(low)} to {fmt(high)}) to {where}",
                table=table,
                key=key,
            )
            return None
        if isinstance(value, str) and _is_int_literal(value):
            self.problem(
                f"is the string {value!r}; write the number without quotes: {key} = {value}",
                table=table,
                key=key,
            )
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(
                f"must be an integer from {fmt(low)} to {fmt(high)}, not {_toml(value)}",
                table=table,
                key=key,
            )
            return None
        if not low <= value <= high:
            self.problem(
                f"{fmt(value)} is out of range; use {fmt(low)} to {fmt(high)}", table=table, key=key
            )
            return None
        return value

    def unknown_keys(
        self, data: Mapping[str, Any], allowed: Sequence[str], *, table: str | None
    ) -> None:
        for key in data:
            if key not in allowed:
                where = f"[{table}]" if table else "a rig file"
                self.problem(
                    f"unknown field in {where}; {_suggest(key, allowed)}",
                    table=table,
                    key=key,
                )

    def string_list(
        self, data: Mapping[str, Any], key: str, *, pattern: re.Pattern[str]
    ) -> tuple[str, ...] | None:
        value = data.get(key, _MISSING)
        if value is _MISSING:
            return None
        if isinstance(value, str):
            self.problem(f"must be a list of strings; write {key} = [{json.dumps(value)}]", key=key)
            return ()
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            self.problem(f'must be a list of strings, like {key} = ["a", "b"]', key=key)
            return ()
        bad = [item for item in value if not pattern.fullmatch(item)]
        if bad:
            self.problem(
                f"{bad[0]!r} is not a valid entry: use letters, digits, '.', '_', '-'", key=key
            )
        return tuple(dict.fromkeys(value))

    # -- the file
    def rigs(self, data: dict[str, Any]) -> list[Rig]:
        self.unknown_keys(data, _TOP_KEYS, table=None)
        name = self.string(data, "name", example='"bench-1"')
        if name is not None and not _NAME_RE.fullmatch(name):
            self.problem(
                f"{name!r} is not a valid rig name: use up to 64 letters, digits, '.', '_', '-' "
                "(it names the rig's lock file)",
                key="name",
            )
            name = None
        kind_value = data.get("kind", _MISSING)
        if kind_value is _MISSING:
            self.problem(f"missing; add kind = one of {_or_list(RIG_KINDS)}", key="kind")
            kind = None
        else:
            kind = cast(
                RigKind | None,
                self.choice(kind_value, RIG_KINDS, "rig kind", table=None, key="kind"),
            )
        virtual = kind == "virtual"

        chip = self._chip(data, kind)
        port = self._port(data, kind)
        reset = self._reset(data, kind)
        power = self._power(data, kind)
        if reset == "gpio" and power is not None and not self._can_hold_boot(power):
            reset = None
        flash_baud = (
            self.integer(data, "flash_baud", table=None, low=FLASH_BAUD_RANGE[0], high=FLASH_BAUD_RANGE[1])
            if "flash_baud" in data
            else None
        )
        sensor = self._sensor(data, kind)
        network = self._network(data, kind)
        tags = self.string_list(data, "tags", pattern=_TAG_RE) or ()
        labgrid = self._labgrid(data, kind)
        capabilities = self._capabilities(data, virtual, power, sensor)
        count = self._count(data, kind)
        description = data.get("description", "")
        if not isinstance(description, str):
            self.problem(
                'must be a string, like description = "CP2102N devkit on hub port 2"',
                key="description",
            )
            description = ""

        if self.problems or name is None or kind is None or chip is None or reset is None:
            return []
        assert (
            power is not None
            and sensor is not None
            and network is not None
            and capabilities is not None
        )

        def rig(rig_name: str, pool: str | None) -> Rig:
            return Rig(
                name=rig_name,
                kind=kind,
                chip=chip,
                port=port,
                reset=reset,
                power=power,
                sensor=sensor,
                network=network,
                capabilities=capabilities,
                tags=tags,
                pool=pool,
                description=description,
                source=self.path,
                labgrid=labgrid,
                flash_baud=flash_baud,
            )

        if count is None:
            return [rig(name, None)]
        return [rig(f"{name}-{index}", name) for index in range(count)]

    def _chip(self, data: Mapping[str, Any], kind: RigKind | None) -> str | None:
        value = data.get("chip", _MISSING)
        if value is _MISSING:
            if kind in ("virtual", None):  # a virtual rig's chip goes without saying
                return CHIPS[0]
            self.problem(f'missing; add chip = "{CHIPS[0]}" (the chip on the board)', key="chip")
            return None
        if isinstance(value, str) and value not in CHIPS:
            normalized = re.sub(r"[-_ ]", "", value.lower())
            if normalized in CHIPS:
                self.problem(
                    f'{value!r} is spelled differently here; write chip = "{normalized}"',
                    key="chip",
                )
                return None
            if normalized.startswith("esp"):
                self.problem(
                    f"{value!r}: this framework drives {_or_list(CHIPS)} boards only; "
                    f'use chip = "{CHIPS[0]}" or remove the rig',
                    key="chip",
                )
                return None
        return self.choice(value, CHIPS, "chip", table=None, key="chip")

    def _port(self, data: Mapping[str, Any], kind: RigKind | None) -> str | None:
        value = data.get("port", _MISSING)
        if kind == "virtual":
            if value is not _MISSING:
                self.problem(
                    "a virtual rig serves its own RFC 2217 port when it starts; remove port",
                    key="port",
                )
            return None
        if kind == "labgrid":
            if value is not _MISSING:
                self.problem(
                    "a labgrid rig's port comes from the place it acquires; remove port "
                    "(the place is matched by tags)",
                    key="port",
                )
            return None
        if kind is None:
            return value if isinstance(value, str) else None
        example = '"/dev/serial/by-id/usb-..."' if kind == "serial" else '"rfc2217://lab-host:4000"'
        port = self.string(data, "port", example=example)
        if port is None:
            return None
        if kind == "serial":
            if port.startswith("rfc2217://"):
                self.problem(
                    f'{port!r} is a network port; set kind = "rfc2217" for a lab host', key="port"
                )
                return None
            if not port.startswith("/dev/"):
                self.problem(
                    f"{port!r} is not a local serial device; use a stable path like "
                    "/dev/serial/by-id/usb-... (ls /dev/serial/by-id/)",
                    key="port",
                )
                return None
            return port
        if port.startswith("/dev/"):
            self.problem(
                f'{port!r} is a local device; set kind = "serial", or give rfc2217://host:port',
                key="port",
            )
            return None
        parts = urlsplit(port)
        try:
            url_port = parts.port
        except ValueError:
            url_port = None
        if parts.scheme != "rfc2217" or not parts.hostname or url_port is None or url_port == 0:
            self.problem(
                f"{port!r} is not an RFC 2217 URL; write rfc2217://host:port "
                "(the lab host's esp_rfc2217_server)",
                key="port",
            )
            return None
        return port

    def _reset(self, data: Mapping[str, Any], kind: RigKind | None) -> ResetMethod | None:
        value = data.get("reset", _MISSING)
        if value is _MISSING:
            return "classic"
        reset = cast(
            ResetMethod | None,
            self.choice(value, RESET_METHODS, "reset method", table=None, key="reset"),
        )
        if reset is None:
            return None
        if kind == "virtual" and reset != "classic":
            self.problem(
                "the virtual rig has the devkit's DTR/RTS auto-reset circuit; "
                'use reset = "classic" or remove reset',
                key="reset",
            )
            return None
        if kind in ("rfc2217", "labgrid") and reset == "usb-jtag":
            self.problem(
                "USB-Serial-JTAG cannot be reset over a remote RFC 2217 port (esptool needs the "
                'local USB device); attach the board to this host (kind = "serial") or use a '
                "UART bridge with classic reset",
                key="reset",
            )
            return None
        return reset

    def _can_hold_boot(self, power: PowerSpec) -> bool:
        """A ``reset = "gpio"`` rig enters download mode by a power cycle with GPIO9 held
        low: only a GPIO expander with a boot pin can hold it (a hub port or a labgrid
        place switches power only), so any other rig is refused here, not at its first flash."""
        if isinstance(power, GpioExpanderSpec) and power.boot_pin is not None:
            return True
        has = "no power backend" if isinstance(power, NoPowerSpec) else f"power {power.kind!r}"
        self.problem(
            f'"gpio" enters download mode by power-cycling the board with GPIO9 (BOOT) held low, '
            f"and this rig has {has}, which cannot hold GPIO9; give it a [power] table with "
            'kind = "gpio-expander" and boot_pin = <the expander pin wired to GPIO9>, or use '
            'reset = "classic" (DTR/RTS auto-reset) or "usb-jtag"',
            key="reset",
        )
        return False

    def _kind_of(self, value: object, kinds: Sequence[str], what: str, table: str) -> str | None:
        """The kind of a backend written as ``x = "kind"`` or as a ``[x]`` table with ``kind``."""
        if isinstance(value, str):
            return self.choice(value, kinds, what, table=None, key=table)
        if isinstance(value, dict):
            if "kind" not in value:
                self.problem(
                    f"missing; add kind = one of {_or_list(kinds)} to [{table}]",
                    table=table,
                    key="kind",
                )
                return None
            return self.choice(value["kind"], kinds, what, table=table, key="kind")
        self.problem(f'must be a string like {table} = "none", or a [{table}] table', key=table)
        return None

    def _power(self, data: Mapping[str, Any], kind: RigKind | None) -> PowerSpec | None:
        value = data.get("power", _MISSING)
        if value is _MISSING:
            return VirtualPowerSpec() if kind == "virtual" else NoPowerSpec()
        power_kind = self._kind_of(value, POWER_KINDS, "power backend", "power")
        if power_kind is None:
            return None
        table = value if isinstance(value, dict) else {}
        at_table, at_key = ("power", "kind") if table else (None, "power")
        if power_kind in ("gpio-expander", "uhubctl") and not isinstance(value, dict):
            fields = "bus, address, pin, chip" if power_kind == "gpio-expander" else "hub, port"
            self.problem(
                f"{power_kind!r} needs its settings: write a [power] table with kind = "
                f'"{power_kind}" and {fields}',
                key="power",
            )
            return None
        if kind == "virtual" and power_kind not in ("virtual", "none"):
            self.problem(
                f'a virtual rig has virtual power; use power = "virtual" (or "none"), not {power_kind!r}',
                table=at_table,
                key=at_key,
            )
            return None
        if kind not in ("virtual", None) and power_kind == "virtual":
            self.problem(
                'virtual power exists only on virtual rigs; use "none", "gpio-expander" or "uhubctl"',
                table=at_table,
                key=at_key,
            )
            return None
        if power_kind == "none":
            self.unknown_keys(table, ("kind",), table="power")
            return NoPowerSpec()
        if power_kind == "virtual":
            self.unknown_keys(table, ("kind",), table="power")
            return VirtualPowerSpec()
        if power_kind == "uhubctl":
            self.unknown_keys(table, ("kind", "hub", "port"), table="power")
            hub = self.string(table, "hub", table="power", example='"1-1.4" (uhubctl -l)')
            if hub is not None and not _HUB_RE.fullmatch(hub):
                self.problem(
                    f"{hub!r} is not a uhubctl hub location; use what 'uhubctl' lists, like \"1-1.4\"",
                    table="power",
                    key="hub",
                )
                hub = None
            hub_port = self.integer(table, "port", table="power", low=1, high=255)
            if hub is None or hub_port is None:
                return None
            return UhubctlSpec(hub=hub, port=hub_port)
        self.unknown_keys(table, ("kind", "bus", "address", "pin", "chip", "boot_pin"), table="power")
        bus = self.integer(table, "bus", table="power", low=0, high=255)
        chip_value = table.get("chip", _MISSING)
        if chip_value is _MISSING:
            self.problem(
                f"missing; add chip = one of {_or_list(EXPANDER_CHIPS)} to [power]",
                table="power",
                key="chip",
            )
            chip = None
        else:
            chip = self.choice(
                chip_value, EXPANDER_CHIPS, "GPIO expander", table="power", key="chip"
            )
        if chip == "mcp23017":
            address = self.integer(table, "address", table="power", low=0x20, high=0x27, hex_=True)
            pin = self.integer(table, "pin", table="power", low=0, high=15)
            pins = 15
        else:
            # PCF8574 answers at 0x20-0x27, the PCF8574A at 0x38-0x3f.
            address = self.integer(table, "address", table="power", low=0x20, high=0x3F, hex_=True)
            if address is not None and 0x27 < address < 0x38:
                self.problem(
                    f"0x{address:02x} is no PCF8574 address; use 0x20-0x27 (PCF8574) "
                    "or 0x38-0x3f (PCF8574A)",
                    table="power",
                    key="address",
                )
                address = None
            pin = self.integer(table, "pin", table="power", low=0, high=7)
            pins = 7
        boot_pin = None
        if "boot_pin" in table:
            boot_pin = self.integer(table, "boot_pin", table="power", low=0, high=pins)
            if boot_pin is not None and boot_pin == pin:
                self.problem(
                    f"{boot_pin} is the power pin too; GPIO9 needs a pin of its own",
                    table="power",
                    key="boot_pin",
                )
                boot_pin = None
            if boot_pin is None:
                return None
        if bus is None or address is None or pin is None or chip is None:
            return None
        return GpioExpanderSpec(
            bus=bus, address=address, pin=pin, chip=cast(ExpanderChipName, chip), boot_pin=boot_pin
        )

    def _sensor(self, data: Mapping[str, Any], kind: RigKind | None) -> SensorSpec | None:
        value = data.get("sensor", _MISSING)
        if value is _MISSING:
            return VirtualSensorSpec() if kind == "virtual" else NoSensorSpec()
        sensor_kind = self._kind_of(value, SENSOR_KINDS, "sensor backend", "sensor")
        if sensor_kind is None:
            return None
        table = value if isinstance(value, dict) else {}
        at_table, at_key = ("sensor", "kind") if table else (None, "sensor")
        if kind == "virtual" and sensor_kind != "virtual":
            self.problem(
                f'a virtual rig has the virtual BME280; use sensor = "virtual", not {sensor_kind!r}',
                table=at_table,
                key=at_key,
            )
            return None
        if kind not in ("virtual", None) and sensor_kind == "virtual":
            self.problem(
                'the virtual sensor exists only on virtual rigs; use "none" or a '
                '[sensor] table with kind = "reference-bme280"',
                table=at_table,
                key=at_key,
            )
            return None
        if sensor_kind == "reference-bme280":
            if not isinstance(value, dict):
                self.problem(
                    '"reference-bme280" needs its settings: write a [sensor] table with kind = '
                    '"reference-bme280", bus and address',
                    key="sensor",
                )
                return None
            self.unknown_keys(table, ("kind", "bus", "address"), table="sensor")
            bus = self.integer(table, "bus", table="sensor", low=0, high=255)
            address = self.integer(table, "address", table="sensor", low=0x76, high=0x77, hex_=True)
            if bus is None or address is None:
                return None
            return ReferenceBme280Spec(bus=bus, address=address)
        self.unknown_keys(table, ("kind",), table="sensor")
        return VirtualSensorSpec() if sensor_kind == "virtual" else NoSensorSpec()

    def _network(self, data: Mapping[str, Any], kind: RigKind | None) -> Network | None:
        value = data.get("network", _MISSING)
        if value is _MISSING:
            if kind == "virtual":
                return Network(ssid=VIRTUAL_NETWORK_SSID, broker_host=VIRTUAL_BROKER_HOST)
            if (
                kind is None
            ):  # the kind is already reported; whether a network is needed is not known
                return None
            self.problem(
                'missing; add a [network] table with ssid = "..." and broker_host = "..." '
                "(what the board is provisioned with)",
                key="network",
            )
            return None
        if not isinstance(value, dict):
            self.problem("must be a [network] table with ssid and broker_host", key="network")
            return None
        self.unknown_keys(value, ("ssid", "broker_host"), table="network")
        ssid = self.string(value, "ssid", table="network", example='"hil-lab"')
        if ssid is not None and len(ssid.encode()) > 32:
            self.problem(
                f"{ssid!r} is {len(ssid.encode())} bytes; an 802.11 SSID has at most 32",
                table="network",
                key="ssid",
            )
            ssid = None
        host = self.string(value, "broker_host", table="network", example='"192.168.50.2"')
        if host is not None and ("://" in host or any(ch.isspace() for ch in host) or "/" in host):
            self.problem(
                f"{host!r} is not a host name or address; write just the host, "
                'like broker_host = "192.168.50.2"',
                table="network",
                key="broker_host",
            )
            host = None
        if ssid is None or host is None:
            return None
        return Network(ssid=ssid, broker_host=host)

    def _capabilities(
        self,
        data: Mapping[str, Any],
        virtual: bool,
        power: PowerSpec | None,
        sensor: SensorSpec | None,
    ) -> frozenset[str] | None:
        declared = self.string_list(data, "capabilities", pattern=re.compile(r".+"))
        if declared is None:
            if not virtual:
                return frozenset()
            # The virtual rig can do everything its configuration does not rule out.
            ruled_out = set()
            if isinstance(power, NoPowerSpec):
                ruled_out.add("power_control")
            return KNOWN_CAPABILITIES - ruled_out
        ok = True
        for capability in declared:
            if capability not in KNOWN_CAPABILITIES:
                self.problem(
                    f"{capability!r} is not a known capability; "
                    f"{_suggest(capability, sorted(KNOWN_CAPABILITIES))}",
                    key="capabilities",
                )
                ok = False
        if "power_control" in declared and isinstance(power, NoPowerSpec):
            self.problem(
                '"power_control" needs a power backend; add a [power] table '
                "(gpio-expander or uhubctl) or drop the capability (a labgrid rig has it "
                "when its place has a NetworkPowerPort)",
                key="capabilities",
            )
            ok = False
        if (
            "sensor_emulation" in declared
            and sensor is not None
            and not isinstance(sensor, VirtualSensorSpec)
        ):
            self.problem(
                '"sensor_emulation" needs the virtual sensor, which only virtual rigs have; '
                "drop the capability",
                key="capabilities",
            )
            ok = False
        return frozenset(declared) if ok else None

    def _labgrid(self, data: Mapping[str, Any], kind: RigKind | None) -> LabgridSpec | None:
        value = data.get("labgrid", _MISSING)
        if kind != "labgrid":
            if value is not _MISSING and kind is not None:
                self.problem(
                    'only a kind = "labgrid" rig has a [labgrid] table; remove it', key="labgrid"
                )
            return None
        example = 'tags = { board = "esp32c3" }'
        if value is _MISSING:
            self.problem(
                "a labgrid rig is found by its place tags; add a [labgrid] table with "
                f"{example} (the place's labgrid-client set-tags)",
                key="labgrid",
            )
            return None
        if not isinstance(value, dict):
            self.problem(f"must be a [labgrid] table with {example}", key="labgrid")
            return None
        self.unknown_keys(value, ("tags", "coordinator"), table="labgrid")
        tags = value.get("tags", _MISSING)
        pairs: list[tuple[str, str]] = []
        if tags is _MISSING:
            self.problem(f"missing; add {example} to [labgrid]", table="labgrid", key="tags")
        elif not isinstance(tags, dict) or not tags:
            self.problem(
                f"must be a table of the place's tags, like {example}", table="labgrid", key="tags"
            )
        else:
            for tag_key, tag_value in tags.items():
                if not _LG_TAG_KEY_RE.fullmatch(tag_key):
                    self.problem(
                        f"{tag_key!r} is not a labgrid tag name: lower-case letters, digits "
                        "and '_', starting with a letter, at least 2 characters",
                        table="labgrid",
                        key="tags",
                    )
                elif not isinstance(tag_value, str) or not _LG_TAG_VALUE_RE.fullmatch(tag_value):
                    self.problem(
                        f"{tag_key} = {_toml(tag_value)}: a tag's value is a string of letters, "
                        "digits, '.', '_', ':', '-'",
                        table="labgrid",
                        key="tags",
                    )
                else:
                    pairs.append((tag_key, tag_value))
        coordinator = value.get("coordinator")
        if coordinator is not None and (
            not isinstance(coordinator, str) or not _COORDINATOR_RE.fullmatch(coordinator)
        ):
            self.problem(
                f"{_toml(coordinator)} is not a coordinator address; write host:port, like "
                'coordinator = "lab-coordinator:20408" (or leave it out for $LG_COORDINATOR)',
                table="labgrid",
                key="coordinator",
            )
            return None
        if not isinstance(tags, dict) or not tags or len(pairs) != len(tags):
            return None
        return LabgridSpec(tags=tuple(pairs), coordinator=coordinator)

    def _count(self, data: Mapping[str, Any], kind: RigKind | None) -> int | None:
        if "count" not in data:
            return None
        if kind not in ("virtual", None):
            self.problem(
                "count makes a pool of virtual rigs; a real board needs a file of its own "
                "(remove count)",
                key="count",
            )
            return None
        value = data["count"]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_POOL:
            self.problem(
                f"must be a whole number of virtual rigs from 1 to {MAX_POOL}, not {_toml(value)}",
                key="count",
            )
            return None
        return value


def _toml(value: object) -> str:
    """A value as it was written in TOML (``true``, not ``True``), for messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def _is_int_literal(text: str) -> bool:
    try:
        int(text, 0)
    except ValueError:
        return False
    return True


def _suggest(value: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(value, known, n=1, cutoff=0.6)
    if not close:
        close = [k for k in known if k.lower() == value.lower()]
    listing = f"use one of {_or_list(known)}"
    return f"did you mean {close[0]!r}? ({listing})" if close else listing


def _or_list(items: Iterable[str]) -> str:
    quoted = [f'"{item}"' for item in items]
    return ", ".join(quoted[:-1]) + f" or {quoted[-1]}" if len(quoted) > 1 else "".join(quoted)


_HEADER_RE = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.\"-]+?)\s*\]\]?\s*(#.*)?$")
_KEY_RE = re.compile(r'^\s*("?)([A-Za-z0-9_.-]+)\1\s*=')
_INLINE_KEY_RE = re.compile(r"[{,]\s*([A-Za-z0-9_-]+)\s*=")


def _key_lines(text: str) -> dict[tuple[str | None, str], int]:
    """Best-effort ``(table, key) -> line`` map, so field errors can name the line.

    tomllib keeps no positions, so this reads the text the simple way: table headers,
    ``key =`` lines (dotted keys too) and the keys of one-line inline tables.
    """
    lines: dict[tuple[str | None, str], int] = {}
    table: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER_RE.match(line)
        if header:
            table = header.group(1).replace('"', "")
            lines.setdefault((None, table), number)
            continue
        key = _KEY_RE.match(line)
        if not key:
            continue
        parts = key.group(2).split(".")
        owner = ".".join([table, *parts[:-1]]) if table else ".".join(parts[:-1]) or None
        lines.setdefault((owner, parts[-1]), number)
        if len(parts) > 1:
            lines.setdefault((None, parts[0]), number)
        rest = line[key.end() :]
        if rest.lstrip().startswith("{"):
            inline = ".".join([owner, parts[-1]]) if owner else parts[-1]
            for inner in _INLINE_KEY_RE.finditer(rest):
                lines.setdefault((inline, inner.group(1)), number)
    return lines


# -- selection ------------------------------------------------------------------------
def select_rigs(
    rigs: Sequence[Rig], *, name: str | None = None, tag: str | None = None
) -> list[Rig]:
    """The rigs matching ``name`` (a rig or a pool) and ``tag``; with neither, the virtual rigs.

    The virtual rig is the default so that a bench or CI run never lands on a real board
    nobody asked for. Raises ``UnknownRig`` when nothing matches.
    """
    if name is None and tag is None:
        matching = [rig for rig in rigs if rig.is_virtual]
        if not matching:
            raise UnknownRig(
                "no rig named and no virtual rig in the inventory to default to; "
                f"pick one by name ({_names(rigs)}) or by tag ({_tags(rigs)})"
            )
        return matching
    matching = list(rigs)
    if name is not None:
        matching = [rig for rig in matching if name in (rig.name, rig.pool)]
        if not matching:
            known = sorted({rig.name for rig in rigs} | {rig.pool for rig in rigs if rig.pool})
            raise UnknownRig(f"no rig or pool named {name!r}; {_suggest(name, known)}")
    if tag is not None:
        tagged = [rig for rig in matching if tag in rig.tags]
        if not tagged:
            scope = f"rig {name!r}" if name is not None else "the inventory"
            raise UnknownRig(f"no rig with tag {tag!r} in {scope}; tags in use: {_tags(matching)}")
        matching = tagged
    return matching


def auto_workers(
    rigs: Sequence[Rig],
    *,
    name: str | None = None,
    tag: str | None = None,
    cpus: int = 1,
    lock_dir: Path | str | None = None,
) -> int:
    """How many pytest-xdist workers ``-n auto`` should start: one per matching rig that
    no other session holds, since each worker holds one rig for its whole session.

    Virtual rigs are processes on this host: more of them than cores only makes each
    slower (and their timing less like a board's), so they count up to ``cpus``.
    """
    free = [rig for rig in select_rigs(rigs, name=name, tag=tag) if who_holds(rig, lock_dir=lock_dir) is None]
    real = sum(1 for rig in free if not rig.is_virtual)
    virtual = min(len(free) - real, max(cpus, 1))
    return max(real + virtual, 1)


def _names(rigs: Sequence[Rig]) -> str:
    return ", ".join(rig.name for rig in rigs) or "none"


def _tags(rigs: Sequence[Rig]) -> str:
    return ", ".join(sorted({tag for rig in rigs for tag in rig.tags})) or "none"


# -- reservation ----------------------------------------------------------------------
@dataclass(frozen=True)
class Holder:
    """Who holds a rig: enough to find the process, the xdist worker and the CI job."""

    pid: int
    host: str
    user: str
    since: float
    worker: str | None = None
    ci_job: str | None = None

    @classmethod
    def current(cls, env: Mapping[str, str] | None = None) -> Holder:
        env = os.environ if env is None else env
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = str(os.getuid())
        return cls(
            pid=os.getpid(),
            host=socket.gethostname(),
            user=user,
            since=time.time(),
            worker=env.get("PYTEST_XDIST_WORKER") or None,
            ci_job=_ci_job(env),
        )

    @classmethod
    def unrecorded(cls) -> Holder:
        """A holder whose lock is held but whose record is not (yet) written."""
        return cls(pid=0, host="", user="", since=0.0)

    def describe(self) -> str:
        if self.pid == 0:
            return "an unrecorded holder (the lock is held, its record not written yet)"
        parts = [f"pid {self.pid} on {self.host} ({self.user})"]
        if self.worker:
            parts.append(f"xdist worker {self.worker}")
        if self.ci_job:
            parts.append(f"CI job {self.ci_job}")
        parts.append("since " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since)))
        return ", ".join(parts)

    def to_json(self) -> str:
        return json.dumps(
            {
                "pid": self.pid,
                "host": self.host,
                "user": self.user,
                "since": self.since,
                "worker": self.worker,
                "ci_job": self.ci_job,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Holder:
        data = json.loads(text)
        return cls(
            pid=int(data["pid"]),
            host=str(data["host"]),
            user=str(data["user"]),
            since=float(data["since"]),
            worker=data.get("worker"),
            ci_job=data.get("ci_job"),
        )


def _ci_job(env: Mapping[str, str]) -> str | None:
    """The CI job this process runs in, as a link when the CI says where it is."""
    if env.get("CI_JOB_ID"):  # GitLab
        return env.get("CI_JOB_URL") or env["CI_JOB_ID"]
    if env.get("GITHUB_RUN_ID"):  # GitHub Actions
        server = env.get("GITHUB_SERVER_URL", "https://github.com")
        repo = env.get("GITHUB_REPOSITORY", "")
        job = env.get("GITHUB_JOB", "")
        url = (
            f"{server}/{repo}/actions/runs/{env['GITHUB_RUN_ID']}" if repo else env["GITHUB_RUN_ID"]
        )
        return f"{url} ({job})" if job else url
    if env.get("BUILD_URL") or env.get("BUILD_TAG"):  # Jenkins
        return env.get("BUILD_URL") or env.get("BUILD_TAG")
    if env.get("BUILDKITE_JOB_ID"):
        return env["BUILDKITE_JOB_ID"]
    return None


def default_lock_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$HIL_LOCK_DIR``, else ``~/.cache/hil/locks``: shared by every session on this host."""
    env = os.environ if env is None else env
    configured = env.get(LOCK_DIR_ENV)
    return Path(configured).expanduser() if configured else DEFAULT_LOCK_DIR.expanduser()


class ReservedRig:
    """A rig held by this process until ``release()`` (or the end of a ``with`` block, or death)."""

    def __init__(
        self, rig: Rig, holder: Holder, lock: FileLock, holder_file: Path, stale: Holder | None
    ) -> None:
        self.rig = rig
        self.holder = holder
        #: The record of an earlier holder that died without releasing (cleared when taken).
        self.stale_holder = stale
        self._lock = lock
        self._holder_file = holder_file

    @property
    def released(self) -> bool:
        return not self._lock.is_locked

    def release(self) -> None:
        """Give the rig back. Idempotent."""
        if not self._lock.is_locked:
            return
        with contextlib.suppress(FileNotFoundError):
            self._holder_file.unlink()  # while still locked: nobody else can have written it
        self._lock.release(force=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self.released else "held"
        return f"<ReservedRig {self.rig.name} {state} by pid {self.holder.pid}>"


class Reservation:
    """Rig reservation through one lock directory (an OS file lock per rig)."""

    def __init__(self, lock_dir: Path | str | None = None) -> None:
        self.lock_dir = Path(lock_dir).expanduser() if lock_dir is not None else default_lock_dir()

    def lock_file(self, rig: Rig | str) -> Path:
        return self.lock_dir / f"{_rig_name(rig)}.lock"

    def holder_file(self, rig: Rig | str) -> Path:
        return self.lock_dir / f"{_rig_name(rig)}.holder.json"

    def reserve(
        self,
        rigs: Sequence[Rig],
        *,
        name: str | None = None,
        tag: str | None = None,
        timeout: float = 0,
    ) -> ReservedRig:
        """Take the first free rig matching ``name`` (rig or pool) and ``tag``.

        With neither, the virtual rigs match. ``timeout`` is how long to wait for one to
        come free (locks on several files cannot be waited on together, so this polls).
        """
        candidates = select_rigs(rigs, name=name, tag=tag)
        self._ensure_dir()
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            for rig in candidates:
                taken = self._try(rig)
                if taken is not None:
                    return taken
            if time.monotonic() >= deadline:
                break
            time.sleep(min(POLL_INTERVAL_S, max(0.0, deadline - time.monotonic())))
        held = "".join(
            f"\n  {rig.name} held by {(self._recorded_holder(rig) or Holder.unrecorded()).describe()}"
            for rig in candidates
        )
        wanted = " and ".join(
            part
            for part in (f"name {name!r}" if name else "", f"tag {tag!r}" if tag else "")
            if part
        )
        raise NoRigAvailable(
            f"every rig matching {wanted or 'the default (the virtual rigs)'} is taken "
            f"(waited {timeout:g} s):{held}\n"
            f"Locks are in {self.lock_dir}. Reserve with a timeout, pick another rig, or stop the holder."
        )

    def who_holds(self, rig: Rig | str) -> Holder | None:
        """The live holder of ``rig``, or None if it is free (a stale record is cleared).

        The lock itself is the truth, so this probes it with a non-blocking acquire; a
        ``reserve`` without timeout racing that instant may skip the rig once.
        """
        self._ensure_dir()
        lock = self._lock(rig)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return self._recorded_holder(rig) or Holder.unrecorded()
        try:
            with contextlib.suppress(FileNotFoundError):
                self.holder_file(rig).unlink()  # its process died holding the rig
            return None
        finally:
            lock.release(force=True)

    # -- internals
    def _ensure_dir(self) -> None:
        try:
            self.lock_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ReservationError(
                f"cannot create the rig lock directory {self.lock_dir}: {exc.strerror}; "
                f"set {LOCK_DIR_ENV} to a writable local directory"
            ) from exc

    def _lock(self, rig: Rig | str) -> FileLock:
        # flock (kernel-released when the holder dies); never the soft fallback, whose
        # marker file would outlive a killed holder.
        return FileLock(
            self.lock_file(rig), thread_local=False, fallback_to_soft=False, preserve_lock_file=True
        )

    def _try(self, rig: Rig) -> ReservedRig | None:
        lock = self._lock(rig)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return None
        except OSError as exc:
            raise ReservationError(
                f"cannot lock {self.lock_file(rig)}: {exc}; "
                f"set {LOCK_DIR_ENV} to a local directory that supports flock"
            ) from exc
        try:
            stale = self._recorded_holder(rig)
            holder = Holder.current()
            path = self.holder_file(rig)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(holder.to_json() + "\n", encoding="utf-8")
            os.replace(tmp, path)
        except BaseException:
            lock.release(force=True)
            raise
        return ReservedRig(rig, holder, lock, path, stale)

    def _recorded_holder(self, rig: Rig | str) -> Holder | None:
        try:
            return Holder.from_json(self.holder_file(rig).read_text(encoding="utf-8"))
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _rig_name(rig: Rig | str) -> str:
    name = rig.name if isinstance(rig, Rig) else rig
    if not _NAME_RE.fullmatch(name):
        raise ValueError(f"{name!r} is not a rig name")
    return name


def reserve(
    rigs: Sequence[Rig],
    *,
    name: str | None = None,
    tag: str | None = None,
    timeout: float = 0,
    lock_dir: Path | str | None = None,
) -> ReservedRig:
    """Reserve a rig through the default lock directory (see ``Reservation.reserve``)."""
    return Reservation(lock_dir).reserve(rigs, name=name, tag=tag, timeout=timeout)


def who_holds(rig: Rig | str, *, lock_dir: Path | str | None = None) -> Holder | None:
    """The live holder of ``rig`` in the default lock directory, or None."""
    return Reservation(lock_dir).who_holds(rig)
