"""Which board a bench command acts on, and through what.

In order: an explicit ``--port`` URL (serial) or ``--control`` URL (a virtual board's control
endpoint); a rig of the inventory (``--rig NAME``: its port and its power and sensor
backends, reserved for the length of the command so that no test session is disturbed
mid-run); else the board ``hil sim up`` runs in the bench state dir (``--board N``, or
``--device ID`` in a fleet). Errors name what was missing and how to give it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from hil.bench.sim import find_board
from hil.bench.state import BenchError, BenchInputError
from hil.link.port_busy import busy_message, port_holders
from hil.rig.backends import Power, ReferenceSensor, SensorEmulator, VirtualPower, VirtualSensor
from hil.rig.errors import RigError
from hil.rig.model import Rig
from hil.rig.reservation import reserve
from hil.rig.rigfile import default_rigs_dir, load_rigs
from hil.rig.virtual_board import ControlClient, VirtualBoardError
from hil.rig.wiring import BackendUnavailable, NoBackend, RigBackends

T = TypeVar("T")
DEFAULT_RIGS_DIR = default_rigs_dir()


@dataclass(frozen=True)
class Target:
    """What the person named on the command line (everything optional)."""

    state_dir: Path
    port: str | None = None
    control: str | None = None
    rig: str | None = None
    rigs_dir: Path = DEFAULT_RIGS_DIR
    board: int | None = None
    device: str | None = None
    lock_dir: Path | None = None


class DeviceControl:
    """A control client that addresses one board of a fleet (adds ``"device"``)."""

    def __init__(self, client: ControlClient, device: str | None) -> None:
        self.client = client
        self.device = device

    def request(self, cmd: str, **fields: Any) -> dict[str, Any]:
        if self.device is not None:
            fields["device"] = self.device
        try:
            return self.client.request(cmd, **fields)
        except OSError as exc:
            raise BenchError(f"control endpoint {self.client.url} unreachable: {exc}") from None
        except VirtualBoardError as exc:
            raise BenchError(str(exc)) from None

    def close(self) -> None:
        self.client.close()


def find_rig(target: Target) -> Rig:
    assert target.rig is not None
    try:
        rigs = load_rigs(target.rigs_dir)
    except RigError as exc:
        raise BenchInputError(str(exc)) from None
    for rig in rigs:
        if rig.name == target.rig:
            if rig.is_virtual:
                raise BenchInputError(
                    f"--rig {rig.name}: a virtual rig has no fixed port; its board exists while a test "
                    "session runs it. At the bench, run 'hil sim up' and leave out --rig"
                )
            return rig
    raise BenchInputError(f"--rig {target.rig!r}: no such rig in {target.rigs_dir} ({', '.join(r.name for r in rigs)})")


@contextlib.contextmanager
def reserved(target: Target) -> Iterator[Rig | None]:
    """Hold ``--rig`` (if given) while the command runs; a rig a session holds is refused."""
    if target.rig is None:
        yield None
        return
    rig = find_rig(target)
    try:
        held = reserve([rig], name=rig.name, timeout=0, lock_dir=target.lock_dir)
    except RigError as exc:
        raise BenchError(f"--rig {rig.name}: {exc}") from None
    with held:
        yield rig


def serial_port(target: Target, rig: Rig | None = None) -> str:
    if target.port:
        return target.port
    if rig is not None:
        if rig.port is None:
            raise BenchInputError(f"--rig {rig.name}: the rig file gives no port; add port = \"...\"")
        return rig.port
    entry = find_board(target.state_dir, target.board, target.device)
    if "serial" not in entry:
        raise BenchInputError("fleet boards have no serial port; bring one up alone with 'hil sim up'")
    return str(entry["serial"])


def ensure_port_free(port: str, nothing_done: str) -> None:
    """Refuse a port another program holds, naming it (pid and command line) before
    anything is started: esp-idf-monitor would share a tty with it, or fail on a network
    port with a broken pipe; the flasher would find out only after its reset."""
    holders = port_holders(port)
    if holders:
        raise BenchError(busy_message(port, None, nothing_done, holders))


def control(target: Target) -> DeviceControl:
    if target.control:
        try:
            return DeviceControl(ControlClient(target.control, timeout=10), target.device)
        except VirtualBoardError as exc:
            raise BenchInputError(f"--control: {exc}") from None
    entry = find_board(target.state_dir, target.board, target.device)
    return DeviceControl(ControlClient(entry["control"], timeout=10), target.device)


def power(target: Target, rig: Rig | None) -> Power:
    if rig is None:
        return VirtualPower(control(target))
    return _backend(rig, lambda backends: backends.power())


def sensor(target: Target, rig: Rig | None) -> SensorEmulator | ReferenceSensor:
    """The virtual board's sensor emulator, or a real rig's reference BME280 (read-only)."""
    if rig is None:
        return VirtualSensor(control(target))
    return _backend(rig, lambda backends: backends.sensor())


def _backend(rig: Rig, build: Callable[[RigBackends], T]) -> T:
    """A backend of ``rig`` from the library's factory (the one the test session uses);
    its buses stay open for the command's life."""
    try:
        return build(RigBackends(rig))
    except NoBackend as exc:
        raise BenchInputError(f"--rig {rig.name}: {exc}") from None
    except BackendUnavailable as exc:
        raise BenchError(f"--rig {rig.name}: {exc}") from None
