"""Reading rig files (``rigs/*.toml``) into the rig model, checking everything first.

A rig is data: one TOML file per rig, or per pool of virtual rigs::

    name = "bench-1"
    kind = "serial"                      # virtual | serial | rfc2217 | labgrid
    chip = "esp32c3"
    port = "/dev/serial/by-id/usb-Silicon_Labs_CP2102N_0001-if00-port0"
    reset = "classic"                    # classic | usb-jtag | gpio
    # reenumeration_s = 1.5              # optional: how long the port takes to come back after power-on
    flash_baud = 460800                  # optional: esptool's rate once connected (default 115200)
    mac = "58:cf:79:a1:b2:c3"            # optional: the board's base MAC (hil rigs check proves it)
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

    [twin]                               # optional: a virtual stand-in for CI
    name = "bench-1-twin"                # optional (default "<name>-twin")
    profile = "real-board"               # optional: default | real-board (see below)

A ``kind = "virtual"`` file needs only a name: the virtual rig defaults to everything
it can do (all capabilities, virtual power and sensor, the loopback broker). ``count = N``
makes a pool ``<name>-0`` … ``<name>-<N-1>`` so that pytest-xdist workers each get one.
``profile = "real-board"`` makes its boards as slow and unforgiving as a C3 on a lab
Wi-Fi (boot, UART, flash, Wi-Fi join, DHCP, DNS, TLS and connect times; power cuts and
resets that kill TCP silently); ``"default"`` (the default) is as fast as the host.
``pytest --rig-profile`` overrides it for a run. A real rig has no profile (its board is
real); its ``[twin]`` may name one. ``reset = "usb-jtag"`` gives a virtual rig the board's
USB-Serial-JTAG personality (``hil sim board --usb-jtag``).

A port that leaves with the board's power (a USB-Serial-JTAG port, or a bridge powered
through a switched hub port) comes back when the host has enumerated it again:
``reenumeration_s`` declares how long that takes on this host (default 1.0 s for
``reset = "usb-jtag"``; none otherwise: the port stays). The console and the flasher wait
for a lost port `PORT_RETURN_SLACK` times that before they call it gone.

A real rig's ``[twin]`` adds a second rig to the inventory: a virtual board with the real
rig's capabilities, reset method (where the virtual board has that circuit:
`VIRTUAL_RESETS`) and flash baud, virtual power and sensor where the real rig has such
backends, on the virtual network, tagged ``twin``. CI runs the suites on it
(``--rig bench-1-twin``) so the rig file's choices are exercised without the board; the
default selection never takes a twin (`hil.rig.selection`).

Loading checks everything before anything is touched, and reports every problem of every
file at once, each with the file, the line when it can be found, the table and key, and
the fix (with the closest known value for a typo).
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

from hil.rig.errors import Problem, RigConfigError, or_list, suggest
from hil.rig.model import (
    CHIPS,
    DEFAULT_PROFILE,
    EXPANDER_CHIPS,
    KNOWN_CAPABILITIES,
    MAC_RE,
    POWER_KINDS,
    RESET_METHODS,
    RIG_KINDS,
    RIG_NAME_RE,
    SENSOR_KINDS,
    USB_REENUMERATION_S,
    VIRTUAL_PROFILES,
    VIRTUAL_RESETS,
    ExpanderChipName,
    GpioExpanderSpec,
    LabgridSpec,
    Network,
    NoPowerSpec,
    NoSensorSpec,
    PowerSpec,
    ReferenceBme280Spec,
    ResetMethod,
    Rig,
    RigKind,
    SensorSpec,
    UhubctlSpec,
    VirtualPowerSpec,
    VirtualSensorSpec,
)

VIRTUAL_NETWORK_SSID = "hil-lab"
VIRTUAL_BROKER_HOST = "127.0.0.1"
MAX_POOL = 256

_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
_HUB_RE = re.compile(r"^\d+(-\d+(\.\d+)*)?$")
_LG_TAG_KEY_RE = re.compile(r"[a-z][a-z0-9_]+")  # labgrid's TAG_KEY
_LG_TAG_VALUE_RE = re.compile(r"[A-Za-z0-9_.:-]+")
_COORDINATOR_RE = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(:\d{1,5})?")
REENUMERATION_RANGE_S = (0.0, 30.0)
"""What ``reenumeration_s`` may be: a port that takes longer than half a minute to come
back is a fault to fix, not a figure to wait for."""
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
    "mac",
    "twin",
    "profile",
    "reenumeration_s",
)


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
            self.problem(f"must be a string, one of {or_list(choices)}", table=table, key=key)
            return None
        if value in choices:
            return value
        self.problem(
            f"{value!r} is not a known {what}; {suggest(value, choices)}", table=table, key=key
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
                    f"unknown field in {where}; {suggest(key, allowed)}",
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
        if name is not None and not RIG_NAME_RE.fullmatch(name):
            self.problem(
                f"{name!r} is not a valid rig name: use up to 64 letters, digits, '.', '_', '-' "
                "(it names the rig's lock file)",
                key="name",
            )
            name = None
        kind_value = data.get("kind", _MISSING)
        if kind_value is _MISSING:
            self.problem(f"missing; add kind = one of {or_list(RIG_KINDS)}", key="kind")
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
            self.integer(
                data, "flash_baud", table=None, low=FLASH_BAUD_RANGE[0], high=FLASH_BAUD_RANGE[1]
            )
            if "flash_baud" in data
            else None
        )
        sensor = self._sensor(data, kind)
        network = self._network(data, kind)
        tags = self.string_list(data, "tags", pattern=_TAG_RE) or ()
        labgrid = self._labgrid(data, kind)
        mac = self._mac(data, kind)
        profile = self._profile(data, kind)
        reenumeration_s = self._reenumeration(data, kind, reset)
        twin = self._twin(data, kind, name)
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
                mac=mac,
                profile=profile or DEFAULT_PROFILE,
                reenumeration_s=reenumeration_s,
            )

        if count is None:
            single = rig(name, None)
            return [single] if twin is None else [single, make_twin(single, twin[0], profile=twin[1])]
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
                    f"{value!r}: this framework drives {or_list(CHIPS)} boards only; "
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
        if kind == "virtual" and reset not in VIRTUAL_RESETS:
            self.problem(
                "the virtual board has the devkit's DTR/RTS auto-reset circuit or the chip's own "
                f"USB-Serial-JTAG port, no GPIO relay; use reset = {or_list(VIRTUAL_RESETS)} or remove reset",
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

    def _reenumeration(
        self, data: Mapping[str, Any], kind: RigKind | None, reset: ResetMethod | None
    ) -> float | None:
        """How long the port takes to come back after power-on (None: it never leaves)."""
        value = data.get("reenumeration_s", _MISSING)
        default = USB_REENUMERATION_S if reset == "usb-jtag" else None
        if value is _MISSING:
            return default
        if kind in ("rfc2217", "labgrid"):
            self.problem(
                "a lab host's port stays while the board is off (ser2net keeps listening); "
                "reenumeration_s is for a port on this host that leaves with the power: remove it",
                key="reenumeration_s",
            )
            return None
        low, high = REENUMERATION_RANGE_S
        if isinstance(value, bool) or not isinstance(value, int | float) or not low < value <= high:
            self.problem(
                f"must be the seconds the port takes to come back after power-on, more than {low:g} "
                f"and at most {high:g}, like reenumeration_s = 1.5; not {_toml(value)}",
                key="reenumeration_s",
            )
            return None
        return float(value)

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
                    f"missing; add kind = one of {or_list(kinds)} to [{table}]",
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
        self.unknown_keys(
            table, ("kind", "bus", "address", "pin", "chip", "boot_pin"), table="power"
        )
        bus = self.integer(table, "bus", table="power", low=0, high=255)
        chip_value = table.get("chip", _MISSING)
        if chip_value is _MISSING:
            self.problem(
                f"missing; add chip = one of {or_list(EXPANDER_CHIPS)} to [power]",
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
                    f"{suggest(capability, sorted(KNOWN_CAPABILITIES))}",
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

    def _mac(self, data: Mapping[str, Any], kind: RigKind | None) -> str | None:
        """The board's base MAC, normalized as esptool prints it: what `hil rigs check`
        holds the board on the port to (a by-id path can outlive a board swap)."""
        value = data.get("mac", _MISSING)
        if value is _MISSING:
            return None
        if kind == "virtual":
            self.problem(
                "a virtual board's MAC is its own (stable per state dir); remove mac", key="mac"
            )
            return None
        if kind == "labgrid":
            self.problem(
                "a labgrid rig stands for any place with its tags, whichever board it holds; "
                "pin a board by its place's tags and remove mac",
                key="mac",
            )
            return None
        example = 'mac = "58:cf:79:a1:b2:c3"'
        if not isinstance(value, str):
            self.problem(f"must be a string, like {example} (esptool read-mac)", key="mac")
            return None
        normalized = value.strip().lower().replace("-", ":")
        if not MAC_RE.fullmatch(normalized):
            self.problem(
                f"{value!r} is not a MAC address; write six hex bytes as esptool read-mac "
                f"prints them, like {example}",
                key="mac",
            )
            return None
        return normalized

    def _profile(self, data: Mapping[str, Any], kind: RigKind | None) -> str | None:
        """A virtual rig's board profile (None: the default, or a problem reported)."""
        value = data.get("profile", _MISSING)
        if value is _MISSING:
            return None
        if kind not in ("virtual", None):
            self.problem(
                "a real board is as real as it gets: profile is for virtual boards; remove it, "
                'or give this rig\'s virtual twin one: [twin] with profile = "real-board"',
                key="profile",
            )
            return None
        return self.choice(value, VIRTUAL_PROFILES, "board profile", table=None, key="profile")

    def _twin(
        self, data: Mapping[str, Any], kind: RigKind | None, name: str | None
    ) -> tuple[str, str] | None:
        """The rig's virtual twin: its name and board profile (None: it has none)."""
        value = data.get("twin", _MISSING)
        if value is _MISSING:
            return None
        if kind == "virtual":
            self.problem("a virtual rig needs no twin (it is virtual already); remove [twin]", key="twin")
            return None
        example = f'[twin] with name = "{name or "bench-1"}-twin" (or an empty [twin] table)'
        if not isinstance(value, dict):
            self.problem(f"must be a table: write {example}", key="twin")
            return None
        self.unknown_keys(value, ("name", "profile"), table="twin")
        profile = DEFAULT_PROFILE
        if "profile" in value:
            chosen = self.choice(
                value["profile"], VIRTUAL_PROFILES, "board profile", table="twin", key="profile"
            )
            if chosen is None:
                return None
            profile = chosen
        twin = value.get("name", _MISSING)
        if twin is _MISSING:
            return (f"{name}-twin", profile) if name is not None else None
        if not isinstance(twin, str) or not RIG_NAME_RE.fullmatch(twin):
            self.problem(
                f"{_toml(twin)} is not a valid rig name: use up to 64 letters, digits, '.', "
                "'_', '-'",
                table="twin",
                key="name",
            )
            return None
        if twin == name:
            self.problem(
                f"the twin needs a name of its own, not the rig's; like name = \"{name}-twin\"",
                table="twin",
                key="name",
            )
            return None
        return twin, profile

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


def make_twin(rig: Rig, name: str, *, profile: str = DEFAULT_PROFILE) -> Rig:
    """The virtual twin of the real ``rig``: what CI runs the suites on in its place.

    It keeps what the rig file decides about the board (capabilities, reset method, flash
    baud) and swaps the lab for the virtual rig's own: the board process, virtual power
    where the rig has a power backend, the virtual BME280 where it has a sensor, the virtual
    network. Its board runs ``profile`` (the [twin] table's ``profile``; ``real-board`` makes
    it as slow and unforgiving as the board it stands in for). Its only tag is ``twin``, so
    ``--rig-tag`` of the real rig never lands on it."""
    reset: ResetMethod = rig.reset if rig.reset in VIRTUAL_RESETS else "classic"
    note = (
        ""
        if reset == rig.reset
        else f"; resets the classic way: the virtual board has no {rig.reset!r} circuit yet"
    )
    if reset == "usb-jtag":
        note = "; on its USB-Serial-JTAG port (usb-reset, a port that leaves with the power)"
    return Rig(
        name=name,
        kind="virtual",
        chip=rig.chip,
        port=None,
        reset=reset,
        power=NoPowerSpec() if isinstance(rig.power, NoPowerSpec) else VirtualPowerSpec(),
        sensor=NoSensorSpec() if isinstance(rig.sensor, NoSensorSpec) else VirtualSensorSpec(),
        network=Network(ssid=VIRTUAL_NETWORK_SSID, broker_host=VIRTUAL_BROKER_HOST),
        capabilities=rig.capabilities,
        tags=("twin",),
        description=f"virtual twin of {rig.name}{note}",
        source=rig.source,
        flash_baud=rig.flash_baud,
        twin_of=rig.name,
        profile=profile,
        reenumeration_s=rig.reenumeration_s,
    )


def with_profile(rigs: Sequence[Rig], profile: str | None) -> list[Rig]:
    """``rigs`` with every virtual one (twins too) running ``profile``: ``pytest
    --rig-profile`` for one run. None keeps each rig's own; a real rig is left as it is."""
    if profile is None:
        return list(rigs)
    if profile not in VIRTUAL_PROFILES:
        raise ValueError(f"unknown board profile {profile!r}; use one of {or_list(VIRTUAL_PROFILES)}")
    return [replace(rig, profile=profile) if rig.is_virtual else rig for rig in rigs]


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
