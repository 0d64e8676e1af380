"""One class per rig kind behind `AttachedRig`: which class a reservation gets, and what
each kind answers for port, power, sensor, Wi-Fi and reset. The fakes sit at the process
and bus boundaries (a board process that reports endpoints, an SMBus, uhubctl's runner, a
labgrid place), never a real board."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest

import hil.rig.labgrid as lp
from hil.bme280.compensation import Environment
from hil.rig.attached import (
    LOCAL_KINDS,
    VIRTUAL_AP,
    AttachedRig,
    LabgridRig,
    Rfc2217Rig,
    RigNotStarted,
    SerialRig,
    VirtualRig,
    attach,
    reserve_rig,
)
from hil.rig.backends import (
    GpioExpanderPower,
    UhubctlPower,
    VirtualPower,
    VirtualSensor,
    VirtualWifi,
)
from hil.rig.model import (
    GpioExpanderSpec,
    LabgridSpec,
    Network,
    NoPowerSpec,
    NoSensorSpec,
    PowerSpec,
    ResetMethod,
    Rig,
    RigKind,
    UhubctlSpec,
    VirtualPowerSpec,
    VirtualSensorSpec,
)
from hil.rig.wiring import NoBackend

PORTS: dict[str, str | None] = {
    "virtual": None,
    "serial": "/dev/serial/by-id/usb-Silicon_Labs_CP2102N-if00-port0",
    "rfc2217": "rfc2217://lab-host:4000",
    "labgrid": None,
}


def make_rig(
    name: str,
    kind: RigKind,
    *,
    tags: tuple[str, ...] = (),
    reset: ResetMethod = "classic",
    power: PowerSpec | None = None,
    flash_baud: int | None = None,
) -> Rig:
    virtual = kind == "virtual"
    return Rig(
        name=name,
        kind=kind,
        chip="esp32c3",
        port=PORTS[kind],
        reset=reset,
        power=power or (VirtualPowerSpec() if virtual else NoPowerSpec()),
        sensor=VirtualSensorSpec() if virtual else NoSensorSpec(),
        network=Network(ssid="lab-ap", broker_host="10.0.0.2"),
        capabilities=frozenset(),
        tags=tags,
        labgrid=LabgridSpec(tags=(("board", "c3"),)) if kind == "labgrid" else None,
        flash_baud=flash_baud,
    )


def held(rig: Rig) -> Any:
    """A reservation's part the classes use: the rig, and its release (counted)."""
    reservation = SimpleNamespace(rig=rig, released=0)
    reservation.release = lambda: setattr(reservation, "released", reservation.released + 1)
    return reservation


# -- the factory: the class is picked once, from the kind ----------------------------------------
INVENTORY = [
    make_rig("virtual-0", "virtual", tags=("sim",)),
    make_rig("bench-1", "serial", tags=("lab",)),
    make_rig("remote-1", "rfc2217"),
    make_rig("lab-c3", "labgrid", tags=("lab", "shared")),
]


@pytest.mark.parametrize(
    ("name", "cls"), [(None, VirtualRig), ("bench-1", SerialRig), ("remote-1", Rfc2217Rig)]
)
def test_a_local_rig_is_reserved_by_its_lock_and_driven_by_its_kind_s_class(
    lock_dir: Path, name: str | None, cls: type[Any]
) -> None:
    attached = reserve_rig(INVENTORY, name=name)
    try:
        assert type(attached) is cls and isinstance(attached, AttachedRig)
        assert (lock_dir / f"{attached.rig.name}.lock").exists()
        assert attached.rig.kind == cls.kind
    finally:
        attached.release()


def test_a_selection_of_labgrid_rigs_only_is_reserved_through_the_coordinator(
    lock_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    place = SimpleNamespace(rig=INVENTORY[3], place="c3-1", power=None, release=lambda: None)
    asked: list[tuple[str, float]] = []

    def fake_reserve_place(rig: Rig, *, timeout: float) -> Any:
        asked.append((rig.name, timeout))
        return place

    monkeypatch.setattr(lp, "reserve_place", fake_reserve_place)
    attached = reserve_rig(INVENTORY, tag="shared", timeout=5.0)
    assert type(attached) is LabgridRig and attached.held is place and attached.place == "c3-1"
    assert asked == [("lab-c3", 5.0)]
    assert not lock_dir.exists() or not any(lock_dir.iterdir())  # no local lock taken

    # A selection that also matches a local rig takes that one, by its lock.
    mixed = reserve_rig(INVENTORY, tag="lab")
    try:
        assert type(mixed) is SerialRig and mixed.rig.name == "bench-1" and len(asked) == 1
    finally:
        mixed.release()


def test_attach_knows_every_local_kind_and_sends_labgrid_to_its_coordinator() -> None:
    assert sorted(LOCAL_KINDS) == ["rfc2217", "serial", "virtual"]
    for rig in INVENTORY[:3]:
        assert attach(held(rig)).rig is rig
    with pytest.raises(ValueError, match="reserved through its coordinator"):
        attach(held(INVENTORY[3]))


def test_release_gives_the_reservation_back() -> None:
    reservation = held(INVENTORY[1])
    attach(reservation).release()
    assert reservation.released == 1


# -- the virtual rig: a board process and its control endpoint ---------------------------------
class FakeControl:
    """A board's control endpoint: the requests it got."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, Any]]] = []

    def request(self, cmd: str, **fields: Any) -> dict[str, Any]:
        self.requests.append((cmd, fields))
        sensor = {"temperature_c": 21.0, "humidity_pct": 40.0, "pressure_hpa": 1000.0}
        return {"ok": True, "sensor": sensor}


class FakeBoard:
    """A ``hil sim board`` process as `VirtualBoardProcess` shows it: endpoints once started."""

    made: ClassVar[list[FakeBoard]] = []

    def __init__(self, state_dir: Path, *, profile: str = "default") -> None:
        self.state_dir = state_dir
        self.profile = profile
        self.endpoints: Any = None
        self.control: Any = None
        self.starts = self.stops = 0
        FakeBoard.made.append(self)

    def start(self) -> Any:
        self.starts += 1
        self.endpoints = SimpleNamespace(serial="rfc2217://127.0.0.1:40001", control="tcp://127.0.0.1:40002")
        self.control = FakeControl()
        return self.endpoints

    def stop(self) -> None:
        self.stops += 1


@pytest.fixture
def virtual(tmp_path: Path) -> VirtualRig:
    FakeBoard.made = []
    return VirtualRig(held(INVENTORY[0]), boards_dir=tmp_path / "boards", board_factory=FakeBoard)  # type: ignore[arg-type]


def test_the_virtual_rig_starts_its_board_once_in_a_state_dir_of_its_own(virtual: VirtualRig, tmp_path: Path) -> None:
    assert virtual.board is None
    with pytest.raises(RigNotStarted, match="the virtual board is not running"):
        virtual.control()
    with pytest.raises(NoBackend, match="rig 'virtual-0' has no port"):
        virtual.port()
    virtual.start()
    virtual.start()
    (board,) = FakeBoard.made
    assert board.starts == 1 and board.state_dir == tmp_path / "boards" / "virtual-0"
    assert virtual.board is board and virtual.control() is board.control
    assert virtual.port() == "rfc2217://127.0.0.1:40001"
    virtual.stop()
    assert board.stops == 1


def test_the_virtual_rig_starts_its_board_with_the_rig_s_profile(tmp_path: Path) -> None:
    FakeBoard.made = []
    slow = dataclasses.replace(INVENTORY[0], profile="real-board")
    VirtualRig(held(slow), boards_dir=tmp_path, board_factory=FakeBoard).start()  # type: ignore[arg-type]
    VirtualRig(held(INVENTORY[0]), boards_dir=tmp_path, board_factory=FakeBoard).start()  # type: ignore[arg-type]
    assert [board.profile for board in FakeBoard.made] == ["real-board", "default"]


def test_a_board_process_is_asked_for_its_profile_on_the_command_line(tmp_path: Path) -> None:
    from hil.rig.virtual_board import VirtualBoardProcess

    slow = VirtualBoardProcess(tmp_path, profile="real-board")
    assert slow._args[-2:] == ["--profile", "real-board"] and slow.profile == "real-board"
    assert "--profile" not in VirtualBoardProcess(tmp_path)._args  # the default: the command as before


def test_the_virtual_rig_s_power_sensor_and_wifi_are_its_control_endpoint(
    virtual: VirtualRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HIL_WIFI_PASSWORD", "the-lab-s")
    virtual.start()
    control = virtual.control()
    power, sensor, wifi = virtual.power(), virtual.sensor(), virtual.wifi()
    assert isinstance(power, VirtualPower) and isinstance(sensor, VirtualSensor)
    assert isinstance(wifi, VirtualWifi) and wifi.password == VIRTUAL_AP[1]
    power.cycle()
    sensor.set(Environment(25.0, 50.0, 1010.0))
    wifi.ap(up=False)
    wifi.restore()
    assert [cmd for cmd, _ in control.requests] == ["power", "sensor.set", "ap.set", "ap.set"]  # type: ignore[union-attr]
    assert control.requests[-1][1] == {"up": True, "password": "hil-lab-password"}  # type: ignore[union-attr]
    assert virtual.wifi_credentials() == VIRTUAL_AP  # its own AP, whatever the environment says
    assert virtual.console_reset() == "classic"


# -- real rigs: the rig file's backends, the lab's access point ------------------------------------
class FakeBus:
    """An SMBus: the bytes written to it, and whether it was closed."""

    def __init__(self) -> None:
        self.writes: list[int] = []
        self.closed = False

    def write_byte(self, i2c_addr: int, value: int, force: bool | None = None) -> None:
        self.writes.append(value)

    def close(self) -> None:
        self.closed = True


EXPANDER = GpioExpanderSpec(bus=1, address=0x20, pin=3, chip="pcf8574", boot_pin=4)


def test_a_serial_rig_is_its_port_and_its_rig_file_s_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIL_WIFI_PASSWORD", "s3cret")
    bus = FakeBus()
    rig = make_rig("bench-2", "serial", reset="gpio", power=EXPANDER, flash_baud=460800)
    attached = attach(held(rig), open_bus=lambda number: bus)
    assert type(attached) is SerialRig
    attached.start()  # nothing to start: the lab powers it
    assert attached.board is None and attached.control() is None
    assert attached.port() == PORTS["serial"]
    power = attached.power()
    assert isinstance(power, GpioExpanderPower) and attached.boot_power() is power
    power.off()
    assert bus.writes == [0xF7]  # pin 3 low
    assert attached.wifi_credentials() == ("lab-ap", "s3cret")  # the password from the environment
    with pytest.raises(NoBackend, match=re.escape("rig 'bench-2': no Wi-Fi control")):
        attached.wifi()
    with pytest.raises(NoBackend, match="no sensor backend"):
        attached.sensor()
    flasher = attached.flasher()
    assert (flasher.before, flasher.flash_baud) == ("no-reset", 460800)  # gpio: power-cycled into download
    attached.stop()
    assert bus.closed


def test_a_serial_rig_without_a_port_says_so() -> None:
    rig = make_rig("bench-3", "serial")
    portless = dataclasses.replace(rig, port=None)
    with pytest.raises(NoBackend, match="rig 'bench-3' has no port"):
        attach(held(portless)).port()


def test_an_rfc2217_rig_is_a_remote_port_with_the_same_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HIL_WIFI_PASSWORD", raising=False)
    ran: list[list[str]] = []

    def run(args: list[str]) -> Any:
        ran.append(args)
        return SimpleNamespace(returncode=0, stderr="")

    rig = make_rig("remote-2", "rfc2217", reset="classic", power=UhubctlSpec(hub="1-1", port=2))
    attached = attach(held(rig), run=run)
    assert type(attached) is Rfc2217Rig and attached.port() == "rfc2217://lab-host:4000"
    power = attached.power()
    assert isinstance(power, UhubctlPower)
    power.cycle(1.0)
    assert ran == [["uhubctl", "-l", "1-1", "-p", "2", "-a", "cycle", "-d", "1.0"]]
    with pytest.raises(NoBackend, match="cannot hold GPIO9"):
        attached.boot_power()
    assert attached.wifi_credentials() == ("lab-ap", "")
    assert attached.console_reset() == "classic"
    flasher = attached.flasher()
    assert (flasher.before, flasher.flash_baud) == ("default-reset", None)


def test_a_usb_jtag_rig_is_reset_by_its_peripheral_s_request() -> None:
    attached = attach(held(make_rig("bench-4", "serial", reset="usb-jtag", flash_baud=921600)))
    assert attached.console_reset() == "usb-jtag"
    flasher = attached.flasher()
    assert (flasher.before, flasher.flash_baud) == ("usb-reset", 921600)


# -- a labgrid place: its own port and power ------------------------------------------------------
class RecordingPower:
    def __init__(self) -> None:
        self.actions: list[str] = []

    def on(self) -> None:
        self.actions.append("on")

    def off(self) -> None:
        self.actions.append("off")

    def cycle(self, off_s: float = 0.5) -> None:
        self.actions.append("cycle")


def place(power: RecordingPower | None) -> Any:
    built = dataclasses.replace(INVENTORY[3], name="c3-1", port="rfc2217://10.0.0.5:4001")
    return SimpleNamespace(rig=built, place="c3-1", power=power, release=lambda: None)


def test_a_labgrid_place_is_its_port_and_its_pdu() -> None:
    pdu = RecordingPower()
    attached = LabgridRig(place(pdu))
    attached.start()
    assert attached.port() == "rfc2217://10.0.0.5:4001" and attached.board is None
    assert attached.power() is pdu
    attached.power().cycle()
    assert pdu.actions == ["cycle"]
    with pytest.raises(NoBackend, match="no Wi-Fi control"):
        attached.wifi()
    with pytest.raises(NoBackend, match=re.escape("rig 'c3-1': labgrid place c3-1 has no power resource")):
        LabgridRig(place(None)).power()


# -- the session asks the protocol, never the kind -------------------------------------------------
def test_the_session_chooses_no_behaviour_by_rig_kind() -> None:
    source = (Path(__file__).resolve().parents[3] / "hil" / "session.py").read_text()
    found = re.findall(r"\.kind\s*[!=]=|is_virtual|ReservedRig|HeldPlace|isinstance\([^)]*Rig\b", source)
    assert found == [], f"hil/session.py branches on the rig's kind: {found}"
