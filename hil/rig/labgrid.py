"""labgrid places as rigs: a shared lab hands its boards out through labgrid's coordinator.

A ``kind = "labgrid"`` rig names the tags of a place (``[labgrid] tags = {...}``). A
session reserves a place with those tags, as ``labgrid-client reserve --wait k=v`` does,
acquires the place it is given, and builds its rig from the place's resources: the
``NetworkSerialPort`` becomes the rig's ``rfc2217://host:port`` (the exporter's ser2net),
a ``NetworkPowerPort`` becomes its power backend (driven by labgrid's own
``NetworkPowerDriver``, so every PDU model labgrid knows works) and the capability
``power_control``. The place is released, and the reservation cancelled, when the session
closes and when the process gets SIGTERM (a cancelled CI job): the coordinator keeps a
place acquired by a dead client for ever, so nobody else could have it.

Who holds a place is the coordinator's ``host/user`` owner name; ours says which xdist
worker, which process and which CI job hold it (``ci-7/alice,gw1,pid4711,job=...``), and
is how a place left acquired by a process killed outright (SIGKILL) is recognised on the
same host by the next session and released (its reservation cancelled), as stale file
locks are.

labgrid is an optional extra (``pip install 'hil[labgrid]'``). This module imports it only
in `GrpcCoordinator` and `LabgridPower`, and ``hil.rig.attached`` imports this module only
when a labgrid rig is reserved: without the extra, everything else works. The
coordinator is reached through labgrid's own client (``ClientSession`` and its gRPC stub,
what ``labgrid-client`` runs on) behind the small `Coordinator` protocol, which is where
the unit tests put their fake.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

from hil.errors import UsageError
from hil.rig.backends import Power
from hil.rig.errors import NoRigAvailable, ReservationError, UnknownRig
from hil.rig.model import Rig
from hil.rig.reservation import Holder

COORDINATOR_ENV = "LG_COORDINATOR"
DEFAULT_COORDINATOR = "127.0.0.1:20408"  # labgrid-client's default
POLL_S = 1.0  # as labgrid-client reserve --wait; a reservation lapses 60 s after its last poll
RPC_TIMEOUT_S = 30.0

# labgrid's ClientSession's keepalive settings (see its __attrs_post_init__).
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 7500),
    ("grpc.keepalive_timeout_ms", 10000),
    ("grpc.http2.ping_timeout_ms", 10000),
    ("grpc.http2.max_pings_without_data", 0),
]

_T = TypeVar("_T")
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class LabgridError(ReservationError):
    """The coordinator is unreachable or refused a request, or a place cannot be a rig."""


class LabgridUnavailable(LabgridError, UsageError):
    """labgrid (the optional extra) is not installed."""


class NoPlaceAvailable(NoRigAvailable):
    """Places with the tags exist, but none was allocated to us in time (all in use)."""


# -- what the coordinator tells us ---------------------------------------------------------
@dataclass(frozen=True)
class PlaceInfo:
    name: str
    tags: Mapping[str, str]
    acquired: str | None  # the owner name ("host/user") of whoever holds it
    reservation: str | None  # the token of the reservation it is allocated to


@dataclass(frozen=True)
class PlaceResource:
    """One resource of an acquired place, as the exporter publishes it."""

    cls: str  # NetworkSerialPort, NetworkPowerPort, ...
    name: str  # its name in the place (labgrid's rename, else the class)
    params: Mapping[str, Any]
    avail: bool


@dataclass(frozen=True)
class ReservationInfo:
    token: str
    owner: str
    state: str  # waiting | allocated | acquired | expired | invalid (labgrid's ReservationState)
    place: str | None  # the place allocated to it


class Coordinator(Protocol):
    """The part of labgrid's coordinator a session uses (`GrpcCoordinator`, or a fake)."""

    address: str

    def places(self) -> list[PlaceInfo]: ...
    def reservations(self) -> list[ReservationInfo]: ...
    def create_reservation(self, tags: Mapping[str, str]) -> ReservationInfo: ...
    def poll_reservation(self, token: str) -> ReservationInfo: ...
    def cancel_reservation(self, token: str) -> None: ...
    def acquire(self, place: str) -> None: ...
    def release(self, place: str, *, from_owner: str | None = None) -> None: ...
    def resources(self, place: str) -> list[PlaceResource]: ...
    def close(self) -> None: ...


# -- owner names ----------------------------------------------------------------------------
def owner_name(holder: Holder, env: Mapping[str, str] | None = None) -> str:
    """The coordinator's ``host/user`` for this process: labgrid's ``LG_HOSTNAME`` and
    ``LG_USERNAME`` (else the host and user), the user part extended with the xdist
    worker, the pid and the CI job. labgrid splits the name at its one ``/``, so slashes
    in a CI job's URL are percent-encoded."""
    env = os.environ if env is None else env
    host = (env.get("LG_HOSTNAME") or holder.host).replace("/", "_")
    user = (env.get("LG_USERNAME") or holder.user).replace("/", "_")
    parts = [user, holder.worker or "main", f"pid{holder.pid}"]
    if holder.ci_job:
        parts.append("job=" + quote(holder.ci_job, safe=":@"))
    return f"{host}/{','.join(parts)}"


def parse_owner(name: str) -> tuple[str, int | None]:
    """The host and pid in an owner name of ours (pid None for anyone else's)."""
    host, _, user = name.partition("/")
    pids = [int(part[3:]) for part in user.split(",")[1:] if re.fullmatch(r"pid\d+", part)]
    return host, (pids[0] if pids else None)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clear_stale(
    coordinator: Coordinator, host: str, *, alive: Callable[[int], bool] = _pid_alive
) -> list[str]:
    """Release the places, and cancel the reservations, of our own sessions on ``host``
    whose process is gone (killed outright, so it released nothing). Returns the places."""
    released = []
    for place in coordinator.places():
        if place.acquired is None:
            continue
        owner_host, pid = parse_owner(place.acquired)
        if owner_host == host and pid is not None and not alive(pid):
            coordinator.release(place.name, from_owner=place.acquired)
            released.append(place.name)
    for reservation in coordinator.reservations():
        owner_host, pid = parse_owner(reservation.owner)
        if owner_host == host and pid is not None and not alive(pid):
            with contextlib.suppress(LabgridError):  # it may have expired meanwhile
                coordinator.cancel_reservation(reservation.token)
    return released


# -- reserving a place ------------------------------------------------------------------------
PowerFactory = Callable[[str, PlaceResource], Power]


class HeldPlace:
    """A place this process holds until ``release()`` (session close, or SIGTERM)."""

    def __init__(
        self,
        rig: Rig,
        place: str,
        token: str,
        owner: str,
        coordinator: Coordinator,
        power: Power | None,
        stale: Sequence[str] = (),
    ) -> None:
        self.rig = rig
        self.place = place
        self.token = token
        self.owner = owner
        self.power = power
        #: Places of our own dead sessions this one found acquired and released first.
        self.stale_places = tuple(stale)
        self._coordinator = coordinator
        self._released = False
        self._previous_sigterm: Any = None
        self._sigterm_installed = False

    @property
    def released(self) -> bool:
        return self._released

    def release(self) -> None:
        """Release the place and cancel its reservation. Idempotent."""
        if self._released:
            return
        self._released = True
        self._restore_sigterm()
        errors: list[str] = []
        try:
            self._coordinator.release(self.place)
        except LabgridError as exc:
            errors.append(f"release {self.place}: {exc}")
        try:
            self._coordinator.cancel_reservation(self.token)
        except LabgridError as exc:
            errors.append(f"cancel reservation {self.token}: {exc}")
        self._coordinator.close()
        if errors:
            raise LabgridError(
                f"labgrid place {self.place} may still be held by {self.owner} ("
                + "; ".join(errors)
                + f"); free it with: labgrid-client -p {self.place} release-from '{self.owner}'"
            )

    # -- SIGTERM: a cancelled CI job must not keep the place
    def release_on_sigterm(self) -> None:
        """Install a SIGTERM handler that releases the place, then lets the signal do what
        it did before (by default: end the process). Only the main thread can install one;
        elsewhere the session's own teardown is the release."""
        if threading.current_thread() is not threading.main_thread():
            return
        self._previous_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)
        self._sigterm_installed = True

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        previous = self._previous_sigterm
        with contextlib.suppress(Exception):
            self.release()  # also puts the previous handler back
        if callable(previous):
            previous(signum, frame)
        elif previous in (signal.SIG_DFL, None):
            os.kill(
                os.getpid(), signal.SIGTERM
            )  # the default action: terminate, as the sender meant

    def _restore_sigterm(self) -> None:
        if not self._sigterm_installed or threading.current_thread() is not threading.main_thread():
            return
        self._sigterm_installed = False
        with contextlib.suppress(ValueError, TypeError):
            if signal.getsignal(signal.SIGTERM) == self._on_sigterm:
                signal.signal(signal.SIGTERM, self._previous_sigterm or signal.SIG_DFL)

    def __enter__(self) -> HeldPlace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self._released else "held"
        return f"<HeldPlace {self.place} {state} by {self.owner}>"


def coordinator_address(rig: Rig, env: Mapping[str, str] | None = None) -> str:
    """The rig's coordinator, else ``$LG_COORDINATOR``, else labgrid's default."""
    env = os.environ if env is None else env
    spec = rig.labgrid
    return (spec.coordinator if spec else None) or env.get(COORDINATOR_ENV) or DEFAULT_COORDINATOR


def reserve_place(
    rig: Rig,
    *,
    timeout: float = 0.0,
    coordinator: Coordinator | None = None,
    holder: Holder | None = None,
    env: Mapping[str, str] | None = None,
    power_factory: PowerFactory | None = None,
    sigterm: bool = True,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> HeldPlace:
    """Reserve a place with ``rig``'s tags, acquire it and build its rig.

    ``timeout`` is how long to wait for a place to be allocated (0: only a free one now),
    polling as ``labgrid-client reserve --wait`` does. Raises `UnknownRig` when no place
    has the tags, `NoPlaceAvailable` when none came free, `LabgridError` otherwise.
    """
    if rig.kind != "labgrid" or rig.labgrid is None:
        raise ValueError(f"rig {rig.name!r} is not a labgrid rig")
    env = os.environ if env is None else env
    holder = holder or Holder.current(env)
    owner = owner_name(holder, env)
    tags = dict(rig.labgrid.tags)
    wanted = " ".join(f"{key}={value}" for key, value in tags.items())
    if coordinator is None:
        coordinator = GrpcCoordinator(coordinator_address(rig, env), owner)
    token: str | None = None
    acquired: str | None = None
    try:
        stale = clear_stale(coordinator, owner.partition("/")[0])
        places = coordinator.places()
        matching = [p for p in places if tags.items() <= {**p.tags, "name": p.name}.items()]
        if not matching:
            listing = "; ".join(f"{p.name} ({_tag_text(p.tags)})" for p in places) or "none"
            raise UnknownRig(
                f"rig {rig.name!r} ({rig.source}): no place on the labgrid coordinator "
                f"{coordinator.address} has the tags {wanted}; places: {listing}. Tag one with "
                f"labgrid-client -p PLACE set-tags {wanted}"
            )
        reservation = coordinator.create_reservation(tags)
        token = reservation.token
        deadline = clock() + max(0.0, timeout)
        while reservation.state == "waiting":
            left = deadline - clock()
            if left <= 0:
                holders = "".join(
                    f"\n  {p.name} held by {p.acquired or 'a reservation ' + str(p.reservation)}"
                    for p in matching
                )
                raise NoPlaceAvailable(
                    f"every labgrid place with the tags {wanted} on {coordinator.address} is in "
                    f"use (waited {timeout:g} s):{holders}\nWait longer (--rig-wait), or see "
                    "labgrid-client who / reservations."
                )
            sleep(min(POLL_S, left))
            reservation = coordinator.poll_reservation(token)
        if reservation.state != "allocated" or reservation.place is None:
            raise LabgridError(
                f"reservation {token} for {wanted} on {coordinator.address} is "
                f"{reservation.state}, not allocated"
            )
        coordinator.acquire(reservation.place)
        acquired = reservation.place
        built, power = build_rig(
            rig, acquired, coordinator.resources(acquired), coordinator.address, power_factory
        )
    except BaseException:
        with contextlib.suppress(Exception):
            if acquired is not None:
                coordinator.release(acquired)
            if token is not None:
                coordinator.cancel_reservation(token)
        coordinator.close()
        raise
    held = HeldPlace(built, acquired, token, owner, coordinator, power, stale)
    if sigterm:
        held.release_on_sigterm()
    return held


def _tag_text(tags: Mapping[str, str]) -> str:
    return " ".join(f"{key}={value}" for key, value in sorted(tags.items())) or "no tags"


def build_rig(
    rig: Rig,
    place: str,
    resources: Sequence[PlaceResource],
    address: str,
    power_factory: PowerFactory | None = None,
) -> tuple[Rig, Power | None]:
    """The rig of an acquired place: its ``NetworkSerialPort`` as the port, its
    ``NetworkPowerPort`` (if any) as the power backend and ``power_control``."""
    serial = [r for r in resources if r.cls == "NetworkSerialPort"]
    if len(serial) != 1:
        found = ", ".join(f"{r.name} ({r.cls})" for r in resources) or "none"
        raise LabgridError(
            f"labgrid place {place} has {len(serial)} NetworkSerialPort resources; a rig needs "
            f"exactly one (the board's UART). Its resources: {found}. Match one with "
            f"labgrid-client -p {place} add-match EXPORTER/GROUP/NetworkSerialPort"
        )
    port = serial[0]
    if not port.avail:
        raise LabgridError(
            f"labgrid place {place}: its serial port {port.name} is not available (exporter down?)"
        )
    protocol = str(port.params.get("protocol", "rfc2217"))
    if protocol != "rfc2217":
        raise LabgridError(
            f"labgrid place {place}: serial port {port.name} speaks {protocol!r}; flashing and "
            "resets need RFC 2217 (DTR/RTS), set protocol: rfc2217 in the exporter"
        )
    extra = port.params.get("extra") or {}
    if isinstance(extra, Mapping) and extra.get("proxy_required"):
        raise LabgridError(
            f"labgrid place {place}: its exporter is isolated (reachable only through an SSH "
            "proxy), which this framework does not tunnel; export the port on a routable address"
        )
    host, tcp_port = port.params.get("host"), port.params.get("port")
    if not host or not isinstance(tcp_port, int):
        raise LabgridError(
            f"labgrid place {place}: serial port {port.name} has no host/port ({dict(port.params)})"
        )
    url = f"rfc2217://{_url_host(str(host))}:{tcp_port}"
    power: Power | None = None
    power_ports = [r for r in resources if r.cls == "NetworkPowerPort"]
    if power_ports:
        power = (power_factory or LabgridPower.for_resource)(place, power_ports[0])
    capabilities = set(rig.capabilities)
    if power is not None:
        capabilities.add("power_control")
    built = dataclasses.replace(
        rig,
        name=_rig_name(place),
        pool=rig.name,
        port=url,
        capabilities=frozenset(capabilities),
        description=f"labgrid place {place} on {address}"
        + (f"; {rig.description}" if rig.description else ""),
    )
    return built, power


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _rig_name(place: str) -> str:
    """The place's name as a rig name (it names logs and the device id)."""
    name = _NAME_UNSAFE.sub("-", place).strip("-._")[:64]
    return name or "place"


# -- labgrid itself ---------------------------------------------------------------------------
def _import_error(exc: ImportError) -> LabgridUnavailable:
    return LabgridUnavailable(
        f"a labgrid rig needs labgrid, the optional extra: pip install 'hil[labgrid]' ({exc})"
    )


class LabgridPower:
    """Power through labgrid's ``NetworkPowerDriver`` on a place's ``NetworkPowerPort``."""

    def __init__(self, driver: Any, sleep: Callable[[float], None] = time.sleep) -> None:
        self._driver = driver
        self._sleep = sleep

    @classmethod
    def for_resource(cls, place: str, resource: PlaceResource) -> LabgridPower:
        try:
            from labgrid import Target, target_factory
        except ImportError as exc:
            raise _import_error(exc) from exc
        target = Target(place)
        args = {
            key: resource.params[key]
            for key in ("model", "host", "index")
            if key in resource.params
        }
        try:
            target_factory.make_resource(target, "NetworkPowerPort", "power", args)
            driver = target_factory.make_driver(target, "NetworkPowerDriver", None, {})
            target.activate(driver)
        except Exception as exc:  # labgrid raises its own config and import errors
            raise LabgridError(
                f"labgrid place {place}: its NetworkPowerPort {args} cannot be driven: {exc}"
            ) from exc
        return cls(driver)

    def on(self) -> None:
        self._driver.on()

    def off(self) -> None:
        self._driver.off()

    def cycle(self, off_s: float = 0.5) -> None:
        self.off()
        self._sleep(off_s)  # the off time is the point of a power cycle
        self.on()

    def probe(self) -> str:
        """The outlet's state, asked of the PDU (``NetworkPowerDriver.get``): nothing switched."""
        return f"the place's power outlet is {'on' if self._driver.get() else 'off'}"


class GrpcCoordinator:
    """labgrid's coordinator through labgrid's own client session, on an event loop in a
    thread of its own (the session's message pump keeps places and resources current, and
    the test process's own asyncio use is left alone). One per held place."""

    def __init__(self, address: str, owner: str, *, timeout: float = RPC_TIMEOUT_S) -> None:
        try:
            from labgrid.remote.client import ClientSession
            from labgrid.remote.common import Reservation
            from labgrid.remote.generated import labgrid_coordinator_pb2 as pb2
            from labgrid.remote.generated import labgrid_coordinator_pb2_grpc as pb2_grpc
            from labgrid.util.proxy import proxymanager
        except ImportError as exc:
            raise _import_error(exc) from exc
        self.address = address
        self.owner = owner
        self._pb2: Any = pb2
        self._reservation_cls: Any = Reservation
        self._timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="labgrid-client", daemon=True
        )
        self._thread.start()
        host, _, user = owner.partition("/")
        grpc_address = proxymanager.get_grpc_address(address, default_port=20408)

        async def start() -> Any:
            import grpc

            session = ClientSession(address=grpc_address, loop=self._loop)
            # A connection of its own: gRPC shares one TCP connection among a process's
            # channels to the same address, and the coordinator refuses a second client
            # stream from the same peer (a test process observing while it holds a place).
            shared = session.channel
            session.channel = grpc.aio.insecure_channel(
                grpc_address, options=[*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
            )
            session.stub = pb2_grpc.CoordinatorStub(session.channel)
            await shared.close()
            # The owner name the coordinator records for our places and reservations.
            session.gethostname = lambda: host
            session.getuser = lambda: user
            await session.start()
            return session

        try:
            self._session: Any = self._run(start())
        except BaseException as exc:
            self._stop_loop()
            raise LabgridError(f"labgrid coordinator {address} unreachable: {exc}") from None

    # -- plumbing
    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(self._timeout)
        except TimeoutError:
            future.cancel()
            raise LabgridError(
                f"labgrid coordinator {self.address}: no answer in {self._timeout:g} s"
            ) from None

    def _rpc(self, method: str, request: Any) -> Any:
        async def call() -> Any:
            import grpc

            try:
                response = await getattr(self._session.stub, method)(request)
            except grpc.aio.AioRpcError as exc:
                raise LabgridError(
                    f"labgrid coordinator {self.address}: {method}: {exc.details()}"
                ) from None
            await self._session.sync_with_coordinator()  # our view includes what it changed
            return response

        return self._run(call())

    def _reservation(self, pb: Any) -> ReservationInfo:
        res = self._reservation_cls.from_pb2(pb)
        places = [name for group in res.allocations.values() for name in group]
        return ReservationInfo(res.token, res.owner, res.state.name, places[0] if places else None)

    # -- Coordinator
    def places(self) -> list[PlaceInfo]:
        async def snapshot() -> list[PlaceInfo]:
            await self._session.sync_with_coordinator()
            return [
                PlaceInfo(p.name, dict(p.tags), p.acquired or None, p.reservation or None)
                for p in self._session.places.values()
            ]

        return self._run(snapshot())

    def reservations(self) -> list[ReservationInfo]:
        response = self._rpc("GetReservations", self._pb2.GetReservationsRequest())
        return [self._reservation(pb) for pb in response.reservations]

    def create_reservation(self, tags: Mapping[str, str]) -> ReservationInfo:
        request = self._pb2.CreateReservationRequest(
            filters={"main": self._pb2.Reservation.Filter(filter=dict(tags))}, prio=0.0
        )
        return self._reservation(self._rpc("CreateReservation", request).reservation)

    def poll_reservation(self, token: str) -> ReservationInfo:
        request = self._pb2.PollReservationRequest(token=token)
        return self._reservation(self._rpc("PollReservation", request).reservation)

    def cancel_reservation(self, token: str) -> None:
        self._rpc("CancelReservation", self._pb2.CancelReservationRequest(token=token))

    def acquire(self, place: str) -> None:
        self._rpc("AcquirePlace", self._pb2.AcquirePlaceRequest(placename=place))

    def release(self, place: str, *, from_owner: str | None = None) -> None:
        request = self._pb2.ReleasePlaceRequest(placename=place)
        if from_owner is not None:
            request.fromuser = from_owner
        self._rpc("ReleasePlace", request)

    def resources(self, place: str) -> list[PlaceResource]:
        async def snapshot() -> list[PlaceResource]:
            await self._session.sync_with_coordinator()
            entry = self._session.places.get(place)
            if entry is None:
                raise LabgridError(f"labgrid coordinator {self.address}: no place {place}")
            try:
                found = self._session.get_target_resources(entry)
            except Exception as exc:  # labgrid's UserError/ServerError (orphaned resource, ...)
                raise LabgridError(f"labgrid place {place}: {exc}") from None
            return [
                PlaceResource(cls, name, dict(res.params), bool(res.avail))
                for (name, cls), res in found.items()
            ]

        return self._run(snapshot())

    def close(self) -> None:
        if not self._loop.is_running():
            return

        async def shutdown() -> None:
            with contextlib.suppress(Exception):
                await self._session.stop()
            with contextlib.suppress(Exception):
                await self._session.close()

        with contextlib.suppress(Exception):
            self._run(shutdown())
        self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()
