"""labgrid places as rigs (hil.rig.labgrid), with a fake coordinator at the boundary:
reserve by tags, acquire, build the rig from the place's resources, release on close and
on SIGTERM, owner names, stale places of dead sessions; the [labgrid] table of a rig file;
the session's dispatch; the virtual boards' REST power switch that labgrid drives."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hil.rig import labgrid as lp
from hil.rig.errors import RigConfigError, UnknownRig
from hil.rig.model import LabgridSpec, Network, NoPowerSpec, NoSensorSpec, Rig
from hil.rig.reservation import Holder
from hil.rig.rigfile import load_rigs

REPO = Path(__file__).resolve().parents[3]
# Live pids: a holder whose pid is dead is a stale one, released by the next session.
HOLDER = Holder(pid=os.getpid(), host="ci-7", user="alice", since=0.0, worker="gw1")
OTHER = Holder(pid=os.getppid(), host="ci-7", user="alice", since=0.0, worker="gw2")
BOB = Holder(pid=os.getppid(), host="ci-7", user="bob", since=0.0)
_RESERVE_PLACE = lp.reserve_place


def labgrid_rig(tags: Mapping[str, str] = {"board": "c3"}, coordinator: str | None = None) -> Rig:
    return Rig(
        name="lab-c3",
        kind="labgrid",
        chip="esp32c3",
        port=None,
        reset="classic",
        power=NoPowerSpec(),
        sensor=NoSensorSpec(),
        network=Network("lab-iot", "10.0.0.2"),
        capabilities=frozenset({"ota"}),
        tags=("lab",),
        labgrid=LabgridSpec(tags=tuple(tags.items()), coordinator=coordinator),
    )


def serial(host: str = "10.0.0.5", port: int = 4001, **params: Any) -> lp.PlaceResource:
    return lp.PlaceResource(
        "NetworkSerialPort",
        "NetworkSerialPort",
        {"host": host, "port": port, "protocol": "rfc2217", **params},
        True,
    )


POWER = lp.PlaceResource(
    "NetworkPowerPort",
    "NetworkPowerPort",
    {"model": "rest", "host": "http://pdu/{index}", "index": "3"},
    True,
)


# -- the fake coordinator: labgrid's scheduling, reduced to what a session sees -----------------
@dataclass
class FakePlace:
    name: str
    tags: dict[str, str]
    resources: list[lp.PlaceResource]
    acquired: str | None = None
    reservation: str | None = None


@dataclass
class FakeCoordinator:
    places_: dict[str, FakePlace]
    owner: str = ""
    address: str = "coord:20408"
    reservations_: dict[str, lp.ReservationInfo] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    closed: bool = False

    def _schedule(self) -> None:
        for token, res in list(self.reservations_.items()):
            if res.state != "waiting":
                continue
            wanted = dict(json.loads(token.split("|", 1)[1]))
            for place in self.places_.values():
                if (
                    place.acquired is None
                    and place.reservation is None
                    and wanted.items() <= {**place.tags, "name": place.name}.items()
                ):
                    place.reservation = token
                    self.reservations_[token] = lp.ReservationInfo(
                        token, res.owner, "allocated", place.name
                    )
                    break

    def places(self) -> list[lp.PlaceInfo]:
        return [
            lp.PlaceInfo(p.name, dict(p.tags), p.acquired, p.reservation)
            for p in self.places_.values()
        ]

    def reservations(self) -> list[lp.ReservationInfo]:
        return list(self.reservations_.values())

    def create_reservation(self, tags: Mapping[str, str]) -> lp.ReservationInfo:
        token = f"T{len(self.reservations_)}|{json.dumps(sorted(tags.items()))}"
        self.reservations_[token] = lp.ReservationInfo(token, self.owner, "waiting", None)
        self.calls.append("reserve")
        self._schedule()
        return self.reservations_[token]

    def poll_reservation(self, token: str) -> lp.ReservationInfo:
        self._schedule()
        return self.reservations_[token]

    def cancel_reservation(self, token: str) -> None:
        self.calls.append(f"cancel {token.split('|')[0]}")
        res = self.reservations_.pop(token, None)
        if res is None:
            raise lp.LabgridError(f"Reservation {token} does not exist")
        for place in self.places_.values():
            if place.reservation == token:
                place.reservation = None
        self._schedule()

    def acquire(self, place: str) -> None:
        self.calls.append(f"acquire {place}")
        target = self.places_[place]
        if target.acquired:
            raise lp.LabgridError(f"Place {place} is already acquired")
        if target.reservation and self.reservations_[target.reservation].owner != self.owner:
            raise lp.LabgridError(f"Place {place} was not reserved for {self.owner}")
        target.acquired = self.owner

    def release(self, place: str, *, from_owner: str | None = None) -> None:
        self.calls.append(f"release {place}" + (f" from {from_owner}" if from_owner else ""))
        target = self.places_[place]
        if target.acquired is None:
            raise lp.LabgridError(f"Place {place} is not acquired")
        if from_owner is not None and target.acquired != from_owner:
            return
        target.acquired = None
        self._schedule()

    def resources(self, place: str) -> list[lp.PlaceResource]:
        return list(self.places_[place].resources)

    def close(self) -> None:
        self.closed = True


def lab(*places: FakePlace) -> FakeCoordinator:
    return FakeCoordinator({p.name: p for p in places})


@dataclass
class RecordingPower:
    place: str
    resource: lp.PlaceResource
    actions: list[str] = field(default_factory=list)

    def on(self) -> None:
        self.actions.append("on")

    def off(self) -> None:
        self.actions.append("off")

    def cycle(self, off_s: float = 0.5) -> None:
        self.actions.append("cycle")


def reserve(coordinator: FakeCoordinator, rig: Rig | None = None, **kwargs: Any) -> lp.HeldPlace:
    kwargs.setdefault("holder", HOLDER)
    kwargs.setdefault("env", {})
    kwargs.setdefault("sigterm", False)
    kwargs.setdefault("power_factory", RecordingPower)
    coordinator.owner = lp.owner_name(kwargs["holder"], {})  # who the coordinator sees calling
    return _RESERVE_PLACE(rig or labgrid_rig(), coordinator=coordinator, **kwargs)


# -- reserve, acquire, build, release -----------------------------------------------------------
def test_a_place_is_reserved_by_tags_acquired_and_becomes_the_rig() -> None:
    coordinator = lab(
        FakePlace("other", {"board": "s3"}, [serial(port=4000)]),
        FakePlace("c3-1", {"board": "c3", "lab": "a"}, [serial(), POWER]),
    )
    held = reserve(coordinator)
    assert held.place == "c3-1" and coordinator.places_["c3-1"].acquired == held.owner
    rig = held.rig
    assert rig.name == "c3-1" and rig.pool == "lab-c3" and rig.kind == "labgrid"
    assert rig.port == "rfc2217://10.0.0.5:4001"
    assert rig.capabilities == {"ota", "power_control"}  # the place's NetworkPowerPort adds it
    assert isinstance(held.power, RecordingPower) and held.power.resource == POWER
    assert "labgrid place c3-1 on coord:20408" in rig.description
    held.release()
    assert coordinator.places_["c3-1"].acquired is None and coordinator.reservations_ == {}
    assert coordinator.closed and held.released
    held.release()  # idempotent
    assert coordinator.calls.count("release c3-1") == 1


def test_a_place_without_power_gives_a_rig_without_power_control() -> None:
    held = reserve(lab(FakePlace("c3-1", {"board": "c3"}, [serial()])))
    assert held.power is None and held.rig.capabilities == {"ota"}
    held.release()


def test_two_sessions_get_different_places_and_a_third_is_told_who_holds_them() -> None:
    coordinator = lab(
        FakePlace("c3-1", {"board": "c3"}, [serial(port=4001)]),
        FakePlace("c3-2", {"board": "c3"}, [serial(port=4002)]),
    )
    first = reserve(coordinator)
    second = reserve(coordinator, holder=OTHER)
    assert {first.rig.port, second.rig.port} == {
        "rfc2217://10.0.0.5:4001",
        "rfc2217://10.0.0.5:4002",
    }
    with pytest.raises(lp.NoPlaceAvailable) as info:
        reserve(coordinator, holder=BOB)
    message = str(info.value)
    assert (
        "board=c3" in message
        and f"c3-1 held by ci-7/alice,gw1,pid{os.getpid()}" in message
        and "c3-2 held by" in message
    )
    assert not any(
        r.owner.startswith("ci-7/bob") for r in coordinator.reservations()
    )  # its reservation was cancelled


def test_a_waiting_session_gets_the_place_when_it_is_released() -> None:
    coordinator = lab(FakePlace("c3-1", {"board": "c3"}, [serial()]))
    first = reserve(coordinator)
    polls: list[float] = []

    def sleep(seconds: float) -> None:
        polls.append(seconds)
        if len(polls) == 2:
            first.release()  # the other session ends while we wait

    clock = iter(range(100))
    held = reserve(
        coordinator, holder=BOB, timeout=30, sleep=sleep, clock=lambda: float(next(clock))
    )
    assert held.place == "c3-1" and polls == [lp.POLL_S, lp.POLL_S]
    assert coordinator.places_["c3-1"].acquired == lp.owner_name(BOB, {})


def test_tags_no_place_has_are_an_unknown_rig_naming_the_places() -> None:
    coordinator = lab(FakePlace("s3-1", {"board": "s3"}, [serial()]))
    with pytest.raises(UnknownRig) as info:
        reserve(coordinator)
    assert "no place on the labgrid coordinator coord:20408 has the tags board=c3" in str(
        info.value
    )
    assert "s3-1 (board=s3)" in str(info.value) and "set-tags board=c3" in str(info.value)
    assert coordinator.closed and "reserve" not in coordinator.calls


def test_the_place_name_is_a_tag_as_in_labgrid() -> None:
    coordinator = lab(FakePlace("c3-1", {}, [serial()]), FakePlace("c3-2", {}, [serial(port=4002)]))
    held = reserve(coordinator, labgrid_rig({"name": "c3-2"}))
    assert held.place == "c3-2"
    held.release()


@pytest.mark.parametrize(
    ("resources", "fragment"),
    [
        ([POWER], "has 0 NetworkSerialPort resources"),
        ([serial(), serial(port=4002)], "has 2 NetworkSerialPort resources"),
        ([serial(protocol="raw")], "speaks 'raw'"),
        (
            [
                lp.PlaceResource(
                    "NetworkSerialPort", "NetworkSerialPort", {"host": "h", "port": 1}, False
                )
            ],
            "not available",
        ),
        ([serial(extra={"proxy_required": True})], "isolated"),
    ],
)
def test_a_place_that_cannot_be_a_rig_is_released_again(
    resources: list[lp.PlaceResource], fragment: str
) -> None:
    coordinator = lab(FakePlace("c3-1", {"board": "c3"}, resources))
    with pytest.raises(lp.LabgridError, match=fragment):
        reserve(coordinator)
    assert coordinator.places_["c3-1"].acquired is None and coordinator.reservations_ == {}
    assert coordinator.calls[-2:] == ["release c3-1", "cancel T0"] and coordinator.closed


def test_an_ipv6_exporter_address_is_bracketed_in_the_url() -> None:
    held = reserve(lab(FakePlace("c3-1", {"board": "c3"}, [serial(host="fd00::5")])))
    assert held.rig.port == "rfc2217://[fd00::5]:4001"
    held.release()


def test_a_failed_release_says_how_to_free_the_place() -> None:
    coordinator = lab(FakePlace("c3-1", {"board": "c3"}, [serial()]))
    held = reserve(coordinator)
    coordinator.places_["c3-1"].acquired = None  # someone kicked us meanwhile
    with pytest.raises(lp.LabgridError, match=rf"release-from 'ci-7/alice,gw1,pid{os.getpid()}"):
        held.release()
    assert coordinator.closed and coordinator.reservations_ == {}


# -- owner names and stale places -------------------------------------------------------------------
def test_the_owner_names_host_user_worker_pid_and_ci_job_with_one_slash() -> None:
    name = lp.owner_name(
        Holder(
            4711, "ci-7", "alice", 0.0, worker="gw1", ci_job="https://gitlab.example/g/p/-/jobs/99"
        ),
        {},
    )
    assert name == "ci-7/alice,gw1,pid4711,job=https:%2F%2Fgitlab.example%2Fg%2Fp%2F-%2Fjobs%2F99"
    assert name.count("/") == 1  # labgrid splits host/user at it
    assert lp.parse_owner(name) == ("ci-7", 4711)
    assert (
        lp.owner_name(Holder(1, "h", "u", 0.0), {"LG_HOSTNAME": "rack/2", "LG_USERNAME": "ci"})
        == "rack_2/ci,main,pid1"
    )
    assert lp.parse_owner("lab-pc/bob") == ("lab-pc", None)  # someone using labgrid-client


def test_places_of_dead_sessions_on_this_host_are_released_first() -> None:
    dead, alive = "ci-7/alice,gw0,pid100", "ci-7/alice,gw1,pid200"
    coordinator = lab(
        FakePlace("c3-1", {"board": "c3"}, [serial()], acquired=dead),
        FakePlace("c3-2", {"board": "c3"}, [serial()], acquired=alive),
        FakePlace("c3-3", {"board": "c3"}, [serial()], acquired="other-host/alice,gw0,pid100"),
        FakePlace("c3-4", {"board": "c3"}, [serial()], acquired="ci-7/bob"),
    )
    coordinator.reservations_["OLD|[]"] = lp.ReservationInfo("OLD|[]", dead, "acquired", "c3-1")
    released = lp.clear_stale(coordinator, "ci-7", alive=lambda pid: pid == 200)
    assert released == ["c3-1"] and coordinator.calls == [f"release c3-1 from {dead}", "cancel OLD"]
    assert [p.name for p in coordinator.places_.values() if p.acquired is None] == ["c3-1"]


def test_the_coordinator_address_comes_from_the_rig_then_lg_coordinator() -> None:
    assert (
        lp.coordinator_address(labgrid_rig(coordinator="lab:1"), {"LG_COORDINATOR": "env:2"})
        == "lab:1"
    )
    assert lp.coordinator_address(labgrid_rig(), {"LG_COORDINATOR": "env:2"}) == "env:2"
    assert lp.coordinator_address(labgrid_rig(), {}) == "127.0.0.1:20408"


# -- SIGTERM -------------------------------------------------------------------------------------------
def test_sigterm_releases_the_place_then_runs_the_previous_handler() -> None:
    coordinator = lab(FakePlace("c3-1", {"board": "c3"}, [serial()]))
    seen: list[int] = []
    original = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        held = reserve(coordinator, sigterm=True)
        os.kill(os.getpid(), signal.SIGTERM)
        assert (
            seen == [signal.SIGTERM]
            and held.released
            and coordinator.places_["c3-1"].acquired is None
        )
        assert signal.getsignal(signal.SIGTERM) is not held._on_sigterm  # ours is gone again
        held2 = reserve(lab(FakePlace("c3-1", {"board": "c3"}, [serial()])), sigterm=True)
        held2.release()  # a normal release puts the previous handler back too
        os.kill(os.getpid(), signal.SIGTERM)
        assert seen == [signal.SIGTERM, signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, original)


def test_sigterm_with_the_default_handler_releases_and_still_ends_the_process(
    tmp_path: Path,
) -> None:
    """In a child: reserve with the fake, then SIGTERM; the record says released, and the
    process died of the signal as it would have without us."""
    record = tmp_path / "calls.json"
    script = textwrap.dedent(
        f"""
        import json, os, signal, sys, time
        sys.path[:0] = [{str(REPO)!r}, {str(Path(__file__).parent)!r}]
        import test_labgrid as t
        coordinator = t.lab(t.FakePlace("c3-1", {{"board": "c3"}}, [t.serial()]))
        coordinator.close = lambda: open({str(record)!r}, "w").write(json.dumps(coordinator.calls))
        held = t.reserve(coordinator, sigterm=True)
        print("held", flush=True)
        time.sleep(30)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        child.send_signal(signal.SIGTERM)
        assert child.wait(10) == -signal.SIGTERM
    finally:
        child.kill()
        child.wait()
    assert json.loads(record.read_text()) == [
        "reserve",
        "acquire c3-1",
        "release c3-1",
        "cancel T0",
    ]


# -- the rig file's [labgrid] table -------------------------------------------------------------------
RIG = 'name = "lab-c3"\nkind = "labgrid"\nchip = "esp32c3"\nnetwork = { ssid = "lab", broker_host = "10.0.0.2" }\n'


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[labgrid]\ntags = {}\n", "must be a table of the place's tags"),
        ('[labgrid]\ntags = { Board = "c3" }\n', "'Board' is not a labgrid tag name"),
        ('[labgrid]\ntags = { board = "c 3" }\n', 'board = "c 3": a tag\'s value'),
        (
            '[labgrid]\ntags = { board = "c3" }\ncoordinator = "grpc://x:1"\n',
            "not a coordinator address",
        ),
        ('[labgrid]\ntags = { board = "c3" }\ncordinator = "x:1"\n', "did you mean 'coordinator'?"),
        ('[labgrid]\nplace = "c3-1"\n', "missing; add tags ="),
        (
            'capabilities = ["power_control"]\n[labgrid]\ntags = { board = "c3" }\n',
            "when its place has a NetworkPowerPort",
        ),
    ],
)
def test_a_bad_labgrid_table_is_refused_with_the_fix(
    tmp_path: Path, text: str, fragment: str
) -> None:
    (tmp_path / "lab.toml").write_text(RIG + text)
    with pytest.raises(RigConfigError) as info:
        load_rigs(tmp_path)
    assert fragment in str(info.value) and "lab.toml" in str(info.value)


def test_a_labgrid_table_on_another_kind_of_rig_is_refused(tmp_path: Path) -> None:
    (tmp_path / "v.toml").write_text(
        'name = "v"\nkind = "virtual"\n[labgrid]\ntags = { board = "c3" }\n'
    )
    with pytest.raises(
        RigConfigError, match=r'only a kind = "labgrid" rig has a \[labgrid\] table'
    ):
        load_rigs(tmp_path)


def test_a_labgrid_rig_file_loads(tmp_path: Path) -> None:
    (tmp_path / "lab.toml").write_text(
        RIG
        + '[labgrid]\ntags = { board = "esp32c3-devkit", lab = "a" }\ncoordinator = "[::1]:20408"\n'
    )
    (rig,) = load_rigs(tmp_path)
    assert rig.labgrid == LabgridSpec(
        tags=(("board", "esp32c3-devkit"), ("lab", "a")), coordinator="[::1]:20408"
    )


# -- the session: a labgrid rig goes through the coordinator --------------------------------------
def test_the_session_reserves_a_labgrid_rig_through_its_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hil.session import RigSession, SessionError, SessionOptions

    rigs = tmp_path / "rigs"
    rigs.mkdir()
    (rigs / "lab.toml").write_text(RIG + 'tags = ["lab"]\n[labgrid]\ntags = { board = "c3" }\n')
    (rigs / "virtual.toml").write_text('name = "sim"\nkind = "virtual"\ntags = ["sim"]\n')
    coordinator = lab(
        FakePlace("c3-1", {"board": "c3"}, [serial(), POWER]),
        FakePlace("c3-2", {"board": "c3"}, [serial(port=4002)]),
    )
    asked: list[tuple[str, float]] = []

    def fake_reserve_place(rig: Rig, *, timeout: float) -> lp.HeldPlace:
        asked.append((rig.name, timeout))
        return reserve(coordinator, rig)

    monkeypatch.setattr(lp, "reserve_place", fake_reserve_place)  # what hil.rig.attached imports
    session = RigSession(
        SessionOptions(rigs_dir=rigs, log_dir=tmp_path / "logs", rig_tag="lab", rig_wait_s=5.0)
    )
    assert session.reserve().name == "c3-1" and session.start_port() == "rfc2217://10.0.0.5:4001"
    assert session.rig.name == "c3-1" and session.port == "rfc2217://10.0.0.5:4001"
    assert asked == [("lab-c3", 5.0)] and session.device_id == "hil-c3-1"
    power = session.power()
    power.cycle()
    assert isinstance(power, RecordingPower) and power.actions == ["cycle"]
    session.close()
    assert coordinator.places_["c3-1"].acquired is None and coordinator.closed

    coordinator.closed = False
    without_power = RigSession(
        SessionOptions(rigs_dir=rigs, log_dir=tmp_path / "logs", rig_name="lab-c3")
    )
    coordinator.places_["c3-1"].acquired = "lab-pc/bob"  # taken meanwhile, by hand
    assert without_power.reserve().name == "c3-2"
    with pytest.raises(SessionError, match="labgrid place c3-2 has no power resource"):
        without_power.power()
    without_power.close()


def test_the_package_works_without_labgrid(tmp_path: Path) -> None:
    """With labgrid unimportable, the session and this module import; only using a labgrid
    coordinator says to install the extra."""
    script = textwrap.dedent(
        """
        import sys
        sys.modules["labgrid"] = None  # as if the extra were not installed
        import hil.session, hil.cli
        from hil.rig import labgrid as labgrid_places
        try:
            labgrid_places.GrpcCoordinator("127.0.0.1:1", "h/u")
        except labgrid_places.LabgridUnavailable as exc:
            print(exc)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "pip install 'hil[labgrid]'" in result.stdout


# -- power: the virtual boards' REST switch, driven by labgrid's NetworkPowerDriver ------------------
@dataclass
class FakeControl:
    powered: bool = True
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def request(self, cmd: str, **fields: Any) -> dict[str, Any]:
        self.requests.append((cmd, fields))
        if cmd == "power":
            self.powered = fields["action"] == "on"
        return {"ok": True, "state": {"powered": self.powered}}


def test_the_virtual_pdu_switches_a_board_over_http() -> None:
    from hil.rig.virtual_pdu import VirtualPdu

    board = FakeControl()
    with VirtualPdu({3: board}) as pdu:
        url = pdu.url_template.format(index=3)
        assert urllib.request.urlopen(url, timeout=5).read() == b"1"
        urllib.request.urlopen(
            urllib.request.Request(url, data=b"0", method="PUT"), timeout=5
        ).read()
        assert not board.powered and urllib.request.urlopen(url, timeout=5).read() == b"0"
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(pdu.url_template.format(index=4), timeout=5)
        assert missing.value.code == 404
        with pytest.raises(urllib.error.HTTPError) as bad:
            urllib.request.urlopen(
                urllib.request.Request(url, data=b"yes", method="PUT"), timeout=5
            )
        assert bad.value.code == 400
    assert ("power", {"action": "off"}) in board.requests


def test_labgrids_network_power_driver_drives_the_virtual_pdu() -> None:
    pytest.importorskip("labgrid", reason="labgrid (the optional extra) is not installed")
    from hil.rig.virtual_pdu import VirtualPdu

    board = FakeControl()
    with VirtualPdu({0: board}) as pdu:
        resource = lp.PlaceResource(
            "NetworkPowerPort",
            "NetworkPowerPort",
            {"model": "rest", "host": pdu.url_template, "index": "0"},
            True,
        )
        slept: list[float] = []
        power = lp.LabgridPower.for_resource("c3-1", resource)
        power._sleep = slept.append
        power.off()
        assert not board.powered
        power.cycle(0.2)
        assert board.powered and slept == [0.2]
        assert [f["action"] for cmd, f in board.requests if cmd == "power"] == ["off", "off", "on"]


def test_an_unknown_power_model_is_a_clear_error() -> None:
    pytest.importorskip("labgrid", reason="labgrid (the optional extra) is not installed")
    resource = lp.PlaceResource(
        "NetworkPowerPort",
        "NetworkPowerPort",
        {"model": "no_such_pdu", "host": "h", "index": "0"},
        True,
    )
    with pytest.raises(lp.LabgridError, match=r"c3-1: its NetworkPowerPort .* cannot be driven"):
        lp.LabgridPower.for_resource("c3-1", resource)
