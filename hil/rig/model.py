"""The rig model: a rig as data (what ``rigs/*.toml`` describes, once read and checked),
the capabilities a rig can declare, and how its reset method maps onto the flasher.

Nothing here reads files or takes locks: `hil.rig.rigfile` builds these from rig files,
`hil.rig.selection` and `hil.rig.reservation` pick and hold them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeAlias, get_args

RigKind = Literal["virtual", "serial", "rfc2217", "labgrid"]
ResetMethod = Literal["classic", "usb-jtag", "gpio"]
ExpanderChipName = Literal["pcf8574", "mcp23017"]

RIG_KINDS: tuple[str, ...] = get_args(RigKind)
RESET_METHODS: tuple[str, ...] = get_args(ResetMethod)
EXPANDER_CHIPS: tuple[str, ...] = get_args(ExpanderChipName)
POWER_KINDS = ("none", "virtual", "gpio-expander", "uhubctl")
SENSOR_KINDS = ("none", "virtual", "reference-bme280")
CHIPS = ("esp32c3",)
VIRTUAL_PROFILES: tuple[str, ...] = ("default", "real-board")
"""How real a virtual board is (``hil sim board --profile``): ``default``, as fast as the
host; ``real-board``, a C3's boot, Wi-Fi, TLS and connect times and silent TCP on power
cuts and resets. The simulator's ``hil.sim.profiles.PROFILES`` holds the figures under
the same names (the test side never imports the simulator; a unit test holds the two
lists together)."""
DEFAULT_PROFILE = "default"


@dataclass(frozen=True)
class BoardTiming:
    """How long a rig's board takes where a test waits on it, and what a reset does to its
    TCP connections: what the rig declares, for the test side (which never imports the
    simulator). Each figure is an upper bound; a wait adds it to what the contract allows.

    For a virtual board these are the upper ends of its profile's ranges
    (`hil.sim.profiles`, docs/virtual-rig.md, where each figure's source is given); a real
    board is taken to be as slow as the ``real-board`` profile, which models a C3 devkit on
    a lab Wi-Fi."""

    boot_to_app_s: float
    """Power-on or EN released to ``app_main`` (ROM, 2nd-stage bootloader, app start-up)."""
    wifi_join_s: float
    """``app_main`` or a lost AP's return to an IP address: Wi-Fi start, the scan for the
    SSID, authentication and association, DHCP."""
    broker_connect_s: float
    """One broker connection up to CONNACK on plain ``mqtt://``: DNS, the TCP handshake and
    the CONNECT round trip."""
    tls_handshake_s: float
    """What ``mqtts://`` adds to a broker connection (0: the board is as fast as the host)."""
    silent_tcp_on_reset: bool
    """A power cut or any chip reset sends nothing (no FIN, no RST): the broker notices when
    1.5 × keepalive pass without a packet (MQTT 3.1.1 §3.1.2.10) and only then publishes the
    will, unless the board is back and has taken its session over first."""

    def boot_to_online_s(self, *, tls: bool = False) -> float:
        """The longest from power-on or a reset to the ``online`` status on a healthy path."""
        return self.boot_to_app_s + self.wifi_join_s + self.broker_connect_s + (self.tls_handshake_s if tls else 0.0)


FAST_BOARD_TIMING = BoardTiming(
    # The default profile takes no modelled time: what is left is the host's (the strap
    # latch of 20 ms, the firmware model's start-up); measured ~0.14 s from EN to online
    # (docs/virtual-rig.md), bounded here at a second for a loaded host.
    boot_to_app_s=0.5,
    wifi_join_s=0.25,
    broker_connect_s=0.25,
    tls_handshake_s=0.0,
    silent_tcp_on_reset=False,
)
REAL_BOARD_TIMING = BoardTiming(
    # The upper ends of hil.sim.profiles.REAL_BOARD (sources in docs/virtual-rig.md):
    # boot clock to app_main ~0.3 s; wifi_start 0.3 + scan 0.8 + join 0.15 + DHCP 1.6 s;
    # DNS 0.15 + two LAN round trips 2 × 0.11 s; TLS handshake 2.2 s.
    boot_to_app_s=0.3,
    wifi_join_s=0.3 + 0.8 + 0.15 + 1.6,
    broker_connect_s=0.15 + 2 * 0.11,
    tls_handshake_s=2.2,
    silent_tcp_on_reset=True,
)
BOARD_TIMINGS: dict[str, BoardTiming] = {"default": FAST_BOARD_TIMING, "real-board": REAL_BOARD_TIMING}
"""Each of `VIRTUAL_PROFILES`' declared timing."""
VIRTUAL_RESETS: tuple[ResetMethod, ...] = ("classic", "usb-jtag")
"""The reset circuits the virtual board has: a virtual rig (and the twin of a real rig) may
use these. A twin of a rig whose reset is not among them resets the classic way. usb-jtag
is the board's USB-Serial-JTAG personality (``hil sim board --usb-jtag``)."""
USB_REENUMERATION_S = 1.0
"""How long a USB-Serial-JTAG board's port takes to come back after power-on (the USB 2.0
attach debounce, reset and recovery, enumeration, the kernel's cdc_acm and udev: ~1 s on
a desktop Linux host; `hil.sim.usb_jtag.REENUMERATION_S` is the virtual board's, held
equal by a unit test). A rig file's ``reenumeration_s`` declares its own host's figure."""
PORT_RETURN_SLACK = 3.0
"""A lost port is waited for this many times the rig's declared re-enumeration time before
it counts as gone: enumeration is paced by the host and its hubs, and a loaded host takes
longer than the typical figure a rig file declares."""
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
"""A base MAC as a rig file writes it (lower case, colons), as ``esptool read-mac`` prints it."""

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

RIG_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
"""What a rig name may be: it names the rig's lock file (`hil.rig.reservation`)."""


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
    port_return_s: float | None = None
    """How long the flasher waits for a port that is away (re-enumerating after a power
    cycle) before the job fails as the rig's: `Rig.port_return_s`."""


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
    # The board's base MAC as the rig file pins it (None: any board on the port will do).
    mac: str | None = None
    # The real rig this virtual rig stands in for in CI (a rig file's [twin] table): never
    # part of the default selection, taken only when named (`hil.rig.selection`).
    twin_of: str | None = None
    # A virtual board's profile (`VIRTUAL_PROFILES`): the rig file's ``profile`` (a twin's
    # from its [twin] table), overridden for a run by ``--rig-profile``. A real board is
    # real: its rig keeps the default, which means nothing for it.
    profile: str = DEFAULT_PROFILE
    # How long the board's port takes to come back after power-on when it leaves with the
    # power (a USB-Serial-JTAG port: `USB_REENUMERATION_S` unless the rig file says);
    # None: the port stays (a UART bridge powered by the host).
    reenumeration_s: float | None = None

    @property
    def is_virtual(self) -> bool:
        return self.kind == "virtual"

    @property
    def timing(self) -> BoardTiming:
        """How long this rig's board takes where tests wait (`BoardTiming`): a virtual
        board's profile's, a real board's as a C3 on a lab Wi-Fi takes."""
        return BOARD_TIMINGS[self.profile] if self.is_virtual else REAL_BOARD_TIMING

    @property
    def port_return_s(self) -> float | None:
        """The longest a lost port is waited for (the console's reopen, the flasher's
        connect) before it counts as gone: the declared re-enumeration time with
        `PORT_RETURN_SLACK`. None: a port that stays never needs waiting for."""
        if self.reenumeration_s is None:
            return None
        return self.reenumeration_s * PORT_RETURN_SLACK

    def flash_method(self) -> FlashMethod:
        """The one mapping from the rig file's ``reset`` and ``flash_baud`` to the flasher.

        classic: esptool's DTR/RTS auto-reset (``default-reset``); usb-jtag: the sequence
        the chip's USB-Serial-JTAG peripheral decodes (``usb-reset``: its lines are not
        wires, the classic pulse does not reach GPIO9); gpio: a power cycle with GPIO9
        held low through the power backend (the loader has checked it has a boot pin)."""
        if self.reset == "gpio":
            return FlashMethod("no-reset", self.flash_baud, boot_by_power=True, port_return_s=self.port_return_s)
        return FlashMethod(
            "usb-reset" if self.reset == "usb-jtag" else "default-reset",
            self.flash_baud,
            port_return_s=self.port_return_s,
        )

    def has(self, *capabilities: str) -> bool:
        return not self.missing(capabilities)

    def missing(self, required: Iterable[str]) -> tuple[str, ...]:
        """The required capabilities this rig lacks, in the order asked (for skip reasons)."""
        return tuple(cap for cap in required if cap not in self.capabilities)
