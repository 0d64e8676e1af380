"""A reserved rig being driven: one class per rig kind behind the small `AttachedRig`
protocol, so that the session asks a rig for its port, power, sensor, Wi-Fi and way of
resetting and never asks what kind of rig it is.

`reserve_rig` reserves (a local rig by its file lock, a labgrid rig by its coordinator's
place) and `attach` picks the class once, from ``rig.kind``:

- `VirtualRig`: starts the virtual board process (``hil sim board``); its port, and its
  control endpoint's power, sensor and access point.
- `SerialRig`: a board on a port of this host; power and sensor from the rig file's
  backends (`hil.rig.wiring`), the lab's access point.
- `Rfc2217Rig`: a board on a lab host's port (``rfc2217://``); the same backends.
- `LabgridRig`: a labgrid place: its own reservation, its port and its power.

A new kind of rig is one class here and one entry in `LOCAL_KINDS` (or its own branch of
`reserve_rig`, for one reserved elsewhere than by a file lock).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

from hil.firmware.catalog import cache_root
from hil.rig.backends import (
    BootStrapPower,
    Power,
    ReferenceSensor,
    SensorEmulator,
    VirtualWifi,
    WifiControl,
)
from hil.rig.model import Rig, RigKind
from hil.rig.reservation import reserve
from hil.rig.selection import select_rigs
from hil.rig.virtual_board import ControlClient, VirtualBoardProcess
from hil.rig.wiring import BusOpener, NoBackend, RigBackends, Runner, rig_flasher

if TYPE_CHECKING:  # labgrid is an optional extra: its module is imported only when used
    from hil.link.console import LineReset
    from hil.link.flasher import Flasher
    from hil.rig.labgrid import HeldPlace

VIRTUAL_AP = ("hil-lab", "hil-lab-password")
"""The virtual rig's access point: the SSID and password its board is provisioned with."""
WIFI_PASSWORD_ENV = "HIL_WIFI_PASSWORD"
"""Where a real rig's Wi-Fi password comes from: the environment, never the rig file."""

BoardFactory = Callable[..., VirtualBoardProcess]
"""A state dir (and ``profile=``, the rig's board profile) -> a board process, not started."""


class RigNotStarted(RuntimeError):
    """Something only a started rig has (a virtual board's control endpoint) was asked for
    before `AttachedRig.start`: a bug in the caller, neither the device's nor the rig's."""


class Held(Protocol):
    """A reservation: a file lock's `ReservedRig`, or a labgrid place's `HeldPlace`."""

    @property
    def rig(self) -> Rig: ...
    def release(self) -> None: ...


@runtime_checkable
class AttachedRig(Protocol):
    """A reserved rig being driven. ``start`` brings up what the rig needs beyond the lab
    (idempotent; a real board is powered by the lab), ``stop`` takes it down and closes the
    buses its backends opened, ``release`` gives the reservation back. The rest says how to
    reach and drive the board. Errors a rig file or host can cause are `NoBackend` (the
    rig has no such thing: usage) or `BackendUnavailable` (its bus or tool failed)."""

    @property
    def rig(self) -> Rig: ...
    @property
    def board(self) -> VirtualBoardProcess | None:
        """The local process that stands in for the board, once started (None: hardware)."""
    def release(self) -> None: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def port(self) -> str:
        """The serial port URL the console and the flasher open."""
    def control(self) -> ControlClient | None:
        """A virtual board's control endpoint (None on a real rig; `RigNotStarted` before
        ``start`` on a virtual one)."""
    def power(self) -> Power: ...
    def boot_power(self) -> BootStrapPower:
        """The power switch that can hold GPIO9 low, for a ``reset = "gpio"`` rig."""
    def sensor(self) -> SensorEmulator | ReferenceSensor: ...
    def wifi(self) -> WifiControl: ...
    def wifi_credentials(self) -> tuple[str, str]:
        """The SSID and password the board is provisioned with."""
    def console_reset(self) -> LineReset:
        """How the console resets the board with the port's modem lines."""
    def flasher(self) -> Flasher:
        """A flasher with the rig's reset method and flash baud."""


class _Attached:
    """What every kind shares: the reservation, the rig file's power and sensor backends,
    the lab's access point, and the reset and flash method of the rig file."""

    kind: ClassVar[RigKind]

    def __init__(self, held: Held, *, open_bus: BusOpener | None = None, run: Runner | None = None) -> None:
        self.held = held
        self._open_bus = open_bus
        self._run = run
        self._backends: RigBackends | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.rig.name}>"

    @property
    def rig(self) -> Rig:
        return self.held.rig

    @property
    def board(self) -> VirtualBoardProcess | None:
        return None

    def release(self) -> None:
        self.held.release()

    def start(self) -> None:
        """Nothing to start: the lab powers a real board."""

    def stop(self) -> None:
        """Close the buses the backends opened (idempotent)."""
        if self._backends is not None:
            self._backends.close()

    def port(self) -> str:
        if self.rig.port is None:
            raise NoBackend(f"rig {self.rig.name!r} has no port")
        return self.rig.port

    def control(self) -> ControlClient | None:
        return None

    def backends(self) -> RigBackends:
        """The rig's power and sensor backends, as its rig file names them (a GPIO expander
        or reference BME280 over smbus2, uhubctl; a virtual board's control endpoint)."""
        if self._backends is None:
            self._backends = RigBackends(self.rig, control=self.control(), open_bus=self._open_bus, run=self._run)
        return self._backends

    def power(self) -> Power:
        return self.backends().power()

    def boot_power(self) -> BootStrapPower:
        return self.backends().boot_power()

    def sensor(self) -> SensorEmulator | ReferenceSensor:
        """The sensor emulator (virtual rigs: set the environment, inject faults), or a
        real rig's reference BME280 (``get`` only: the truth beside the board)."""
        return self.backends().sensor()

    def wifi(self) -> WifiControl:
        raise NoBackend(f"rig {self.rig.name!r}: no Wi-Fi control")

    def wifi_credentials(self) -> tuple[str, str]:
        # Real rigs join the lab's AP; its password comes from the environment, never from
        # the committed rig file.
        return self.rig.network.ssid, os.environ.get(WIFI_PASSWORD_ENV, "")

    def console_reset(self) -> LineReset:
        # A USB-Serial-JTAG board is reset by the request its peripheral decodes, not the EN
        # pulse of a UART bridge's auto-reset circuit (`Console.hard_reset`).
        return "usb-jtag" if self.rig.reset == "usb-jtag" else "classic"

    def flasher(self) -> Flasher:
        return rig_flasher(self.rig)


class VirtualRig(_Attached):
    """The virtual rig: a ``hil sim board`` process started for the session, reached as a
    real board is (its RFC 2217 port), its power, sensor and access point driven through
    its control endpoint."""

    kind = "virtual"

    def __init__(
        self,
        held: Held,
        *,
        boards_dir: Path | None = None,
        board_factory: BoardFactory = VirtualBoardProcess,
        open_bus: BusOpener | None = None,
        run: Runner | None = None,
    ) -> None:
        super().__init__(held, open_bus=open_bus, run=run)
        self._boards_dir = boards_dir  # None: <cache>/boards
        self._board_factory = board_factory
        self._board: VirtualBoardProcess | None = None

    @property
    def board(self) -> VirtualBoardProcess | None:
        return self._board

    def start(self) -> None:
        """Start the board process (once; a board that failed to start is not retried)."""
        if self._board is not None:
            return
        # A stable state dir per rig: the flash survives between sessions, so an unchanged
        # image is not written again (skip-unchanged), as on a real board.
        state = (self._boards_dir or cache_root() / "boards") / self.rig.name
        # A usb-jtag rig (the twin of a board on its own USB port) runs that personality.
        personality = {"usb_jtag": True} if self.rig.reset == "usb-jtag" else {}
        self._board = self._board_factory(state, profile=self.rig.profile, **personality)
        self._board.start()

    def stop(self) -> None:
        super().stop()
        if self._board is not None:
            self._board.stop()

    def port(self) -> str:
        if self._board is not None and self._board.endpoints is not None:
            return self._board.endpoints.serial
        return super().port()

    def control(self) -> ControlClient | None:
        if self._board is None:
            raise RigNotStarted(f"rig {self.rig.name!r}: the virtual board is not running")
        return self._board.control

    def wifi(self) -> WifiControl:
        control = self.control()
        if control is None:
            return super().wifi()
        return VirtualWifi(control, password=VIRTUAL_AP[1])

    def wifi_credentials(self) -> tuple[str, str]:
        return VIRTUAL_AP


class SerialRig(_Attached):
    """A board on a serial port of this host (``/dev/serial/by-id/...``): its power and
    sensor are the rig file's backends, its access point the lab's."""

    kind = "serial"


class Rfc2217Rig(_Attached):
    """A board on a lab host's serial port (``rfc2217://host:port``, its
    ``esp_rfc2217_server``): driven as a local one, its backends on this host as the rig
    file names them."""

    kind = "rfc2217"


class LabgridRig(_Attached):
    """A labgrid place: reserved and acquired through the coordinator, its port the
    place's ``NetworkSerialPort`` and its power the place's ``NetworkPowerPort``."""

    kind = "labgrid"
    held: HeldPlace

    def __init__(self, held: HeldPlace) -> None:
        super().__init__(held)

    @classmethod
    def reserve(cls, rig: Rig, *, timeout: float) -> LabgridRig:
        """A place with ``rig``'s tags, waited for up to ``timeout`` (no local lock)."""
        from hil.rig.labgrid import reserve_place

        return cls(reserve_place(rig, timeout=timeout))

    @property
    def place(self) -> str:
        return self.held.place

    def power(self) -> Power:
        if self.held.power is None:  # a place without a NetworkPowerPort
            raise NoBackend(f"rig {self.rig.name!r}: labgrid place {self.place} has no power resource")
        return self.held.power


LocalKind = type[VirtualRig] | type[SerialRig] | type[Rfc2217Rig]
LOCAL_KINDS: dict[str, LocalKind] = {cls.kind: cls for cls in (VirtualRig, SerialRig, Rfc2217Rig)}
"""The kinds reserved by a file lock on this host, and the class that drives each."""


def attach(held: Held, *, open_bus: BusOpener | None = None, run: Runner | None = None) -> AttachedRig:
    """The rig ``held`` (a file lock's reservation) driven by the class of its kind."""
    kind = LOCAL_KINDS.get(held.rig.kind)
    if kind is None:
        raise ValueError(
            f"rig {held.rig.name!r} is a {held.rig.kind} rig: it is reserved through its "
            "coordinator (reserve_rig), not a local lock"
        )
    return kind(held, open_bus=open_bus, run=run)


def reserve_rig(
    rigs: Sequence[Rig],
    *,
    name: str | None = None,
    tag: str | None = None,
    timeout: float = 0.0,
    lock_dir: Path | str | None = None,
) -> AttachedRig:
    """Reserve a rig matching ``name`` and ``tag`` (with neither, a virtual one) and attach
    it. A selection of labgrid rigs only is a shared lab: its coordinator hands out the
    place. Otherwise local rigs are taken by their file lock in ``lock_dir`` (None: the
    default, ``$HIL_LOCK_DIR``; a selection that also matches labgrid rigs takes the local
    ones). Waits up to ``timeout`` for a busy one."""
    wanted = select_rigs(rigs, name=name, tag=tag)
    if all(rig.kind == "labgrid" for rig in wanted):
        return LabgridRig.reserve(wanted[0], timeout=timeout)
    local = [rig for rig in rigs if rig.kind in LOCAL_KINDS]
    return attach(reserve(local, name=name, tag=tag, timeout=timeout, lock_dir=lock_dir))
