"""Fleet load: N virtual devices against the broker under test, measured from outside.

A load run starts ``hil sim fleet`` (many boards' firmware in one process) as a child
process, exactly as `hil.rig.virtual_board` starts one board: it is reached through its first
stdout line and the broker, never by importing ``hil.sim``, so the same measurement works
against any fleet that speaks the device contract. Every board reaches the broker
through one `FaultProxy`, so a reconnect storm is one call (``reset_all``); a collector
(a plain paho subscriber, logged in with the observer account) connects to the broker
directly and sees the storm from the outside.

What is measured, and how:

* **throughput**: readings (``esp32/+/sensors``) the collector received per second over
  the steady window (``duration_s``), next to what the fleet should publish
  (devices × rate), and the rate the devices themselves took readings at (from their
  timestamps: a fleet process that cannot keep up slows its devices down, it does not
  lose their readings).
* **end-to-end latency**: host wall-clock time when the collector received a reading,
  minus the reading's ``timestamp`` (the device's wall clock when it took the reading;
  DEVICE_CONTRACT.md §4). That spans the device's outbox, its TCP path (the proxy), the
  broker and the delivery to the subscriber. It is only meaningful when the device's
  clock agrees with the host's (the virtual fleet shares the host's clock; a real fleet
  runs SNTP); when readings arrive "before" they were taken (by more than
  `CLOCK_TOLERANCE_S`), the clocks disagree and the latency is reported relative to each
  device's fastest reading instead (queueing delay above its best case), and says so in
  ``latency.basis``. Only readings received in the steady window count; the storm's
  delayed readings show in the recovery time instead.
* **loss**: per device and boot, ``seq`` starts at 0 and has no gaps (§4), so every
  missing ``seq`` below the highest received one is a lost reading. Visible drops are
  the devices' own ``dropped_readings`` counters (health, asked for with the ``report``
  command at the end); ``silent_loss`` is what the seq gaps show beyond them.
  Duplicates (QoS 1 re-sends after a reconnect) are counted, and are not loss.
* **reconnect storm**: every device's connection is reset at once through the proxy;
  ``reconnected_s`` is when every device has announced ``online`` again, and
  ``recovery_s`` when every device has also published a reading over its new connection
  (the first reading received after its ``online``: a client's messages arrive in order).
* **broker drops**: mosquitto's ``$SYS/broker/publish/messages/dropped`` (messages it
  discarded because a client's queue was full), the difference between the start and the
  end of the run, read after two ``$SYS`` updates so the count is current. A broker that
  does not publish it (amqtt, or a broker that hides ``$SYS``) gives ``"unknown"``,
  never 0.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from hil.device import contract
from hil.firmware.catalog import cache_root
from hil.processes import clear_stale, die_with_parent, owned_dir, stop_group
from hil.reporting.gate import LOAD_METRICS_FILE, LoadProfile
from hil.secret import Secret, optional_secret, reveal, write_private
from hil.services.broker import OBSERVER_USER, BrokerError
from hil.services.mqtt import _load_client_identity
from hil.services.netfault import FaultProxy

DEVICE_PREFIX = "fleet-"  # hil sim fleet names its boards fleet-0000, fleet-0001, ...
SYS_DROPPED = "$SYS/broker/publish/messages/dropped"
SYS_TICK = "$SYS/broker/uptime"  # changes at every $SYS update: a clock to wait on
SYS_FIRST_WAIT_S = 3.0  # mosquitto answers the subscription at once (retained $SYS)
CLOCK_TOLERANCE_S = 0.5
CREDENTIALS_ENV = "HIL_LOAD_CREDENTIALS_FILE"
"""External broker: a JSON file ``{"fleet-0000": {"username": ..., "password": ...}, ...}``
with an account per fleet device; without it every device logs in with the session's
``HIL_BROKER_USERNAME``/``HIL_BROKER_PASSWORD``."""


class LoadError(Exception):
    """The load run could not be set up or driven (an infrastructure problem)."""


class LoadUnsupported(LoadError):
    """The broker under test cannot be loaded this way (the message says why)."""


def device_ids(count: int) -> tuple[str, ...]:
    return tuple(f"{DEVICE_PREFIX}{index:04d}" for index in range(count))


# -- where the fleet and the collector connect -------------------------------------------
@dataclass(frozen=True)
class LoadTarget:
    """The broker under test as the fleet and the collector reach it."""

    name: str  # "mosquitto", "amqtt", or the external URI
    host: str
    port: int
    tls: bool = False
    ca_pem: str | None = None
    credentials: Mapping[str, tuple[str, Secret]] | None = None  # device id -> (user, password)
    observer_user: str | None = None
    observer_password: Secret | None = None
    observer_client_cert: str | None = None
    observer_client_key: Secret | None = None
    via_proxy: bool = True
    """False when the devices cannot go through the loopback proxy: a TLS broker elsewhere,
    whose certificate does not name 127.0.0.1. No reconnect storm then."""


def session_target(session: Any, count: int) -> LoadTarget:
    """The session's broker (``hil.session.RigSession``) with accounts for ``count`` fleet
    devices. An embedded broker gets the accounts added and reloaded (nobody connected is
    dropped on mosquitto); an external one is used with the credentials the environment
    names (`CREDENTIALS_ENV`, else the session's own for every device)."""
    ids = device_ids(count)
    if not session.external_broker:
        broker = session.start_broker()
        creds: dict[str, tuple[str, Secret]] = {}
        added = False
        for device in ids:
            try:
                account = broker.credentials(device)
            except BrokerError:
                account = broker.add_device(device)
                added = True
            creds[device] = (account.username, account.password)
        if added:
            try:
                broker.reload()
            except BrokerError as exc:
                raise LoadError(f"the fleet's accounts did not take on {broker.name}: {exc}") from exc
        return LoadTarget(
            name=broker.name,
            host="127.0.0.1",
            port=broker.plain_port,
            credentials=creds,
            observer_user=OBSERVER_USER,
            observer_password=broker.observer_password,
        )
    access = session.broker_access()
    parsed = contract.parse_broker_uri(access.device_uri)
    if parsed is None:  # broker_access has checked it already
        raise LoadError(f"--broker {access.device_uri!r} is not mqtt(s)://host:port")
    if access.client_cert:
        raise LoadUnsupported(
            "the broker wants client certificates; the fleet's boards log in with passwords only "
            "(hil sim fleet has no per-board certificates)"
        )
    return LoadTarget(
        name=access.device_uri,
        host=parsed.host,
        port=parsed.port,
        tls=parsed.tls,
        ca_pem=access.ca_pem,
        credentials=external_credentials(ids, access.username, access.password, os.environ),
        observer_user=access.observer_user,
        observer_password=access.observer_password,
        observer_client_cert=access.observer_client_cert,
        observer_client_key=access.observer_client_key,
        via_proxy=not parsed.tls,
    )


def external_credentials(
    ids: Sequence[str], username: str | None, password: str | Secret | None, env: Mapping[str, str]
) -> dict[str, tuple[str, Secret]] | None:
    """Per-device accounts from `CREDENTIALS_ENV`, else one shared account (or none)."""
    path = env.get(CREDENTIALS_ENV)
    if path:
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise LoadError(f"${CREDENTIALS_ENV}={path}: {exc}") from None
        missing = [d for d in ids if not isinstance(raw, dict) or d not in raw]
        if missing:
            raise LoadError(f"${CREDENTIALS_ENV}={path}: no account for {missing[0]} (and {len(missing) - 1} more)")
        try:
            return {d: (str(raw[d]["username"]), Secret(str(raw[d]["password"]))) for d in ids}
        except (KeyError, TypeError):
            raise LoadError(f'${CREDENTIALS_ENV}={path}: entries are {{"username": ..., "password": ...}}') from None
    if username is None:
        return None  # a broker that takes anonymous clients
    shared = optional_secret(password) or Secret("")
    return {d: (username, shared) for d in ids}


# -- the fleet process ---------------------------------------------------------------------
def start_timeout(count: int) -> float:
    """Every board's flash file is programmed before the first line: allow for that."""
    return 60.0 + 0.1 * count


class FleetProcess:
    """``python -m hil sim fleet ...`` in its own process group; always stopped on exit."""

    def __init__(self, args: Sequence[str], log: Path, *, count: int) -> None:
        self.args = [sys.executable, "-m", "hil", "sim", "fleet", *args]
        self.log = log
        self.count = count
        self.proc: subprocess.Popen[str] | None = None
        self.hello: dict[str, Any] = {}

    def start(self) -> FleetProcess:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("w") as stderr:
            self.proc = subprocess.Popen(
                self.args, stdout=subprocess.PIPE, stderr=stderr, text=True, preexec_fn=die_with_parent
            )
        try:
            line = self._first_line(start_timeout(self.count))
            if not line:
                raise LoadError(f"hil sim fleet exited ({self.proc.poll()}) before its first line:\n{self.tail()}")
            self.hello = json.loads(line)
        except BaseException:
            self.stop()
            raise
        return self

    def tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-3000:]
        return ""

    def _first_line(self, timeout: float) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        stdout = self.proc.stdout
        got: list[str] = []
        reader = threading.Thread(target=lambda: got.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if reader.is_alive():
            raise LoadError(f"hil sim fleet printed nothing in {timeout:.0f} s:\n{self.tail()}")
        return got[0].strip() if got else ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu_seconds(self) -> float:
        """User + system CPU time of the fleet process (all its threads), from /proc."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "; fields from #3 on
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime

    def cpu_wait_seconds(self) -> float:
        """Time the fleet's threads were ready to run but waited for a CPU (all threads,
        /proc/PID/task/*/schedstat): CPU taken by other processes (or its own other threads)."""
        total = 0
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int((task / "schedstat").read_text().split()[1])
        return total / 1e9

    def memory(self) -> dict[str, int]:
        """VmRSS, VmHWM (peak), RssAnon and RssFile in bytes, from /proc/PID/status."""
        found: dict[str, int] = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                found[key] = int(value.split()[0]) * 1024
        return found

    def stop(self) -> int | None:
        """SIGTERM the group, then SIGKILL if it lingers; the fleet's exit code."""
        return None if self.proc is None else stop_group(self.proc, grace_s=30)

    def __enter__(self) -> FleetProcess:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


# -- the collector -------------------------------------------------------------------------
@dataclass(frozen=True)
class Reading:
    seq: int
    boot: int
    taken: float  # the device's wall clock (its payload's timestamp)
    received: float  # the host's wall clock at arrival
    received_mono: float


@dataclass
class _Waiter:
    pending: set[str]
    check: Callable[[str], bool]


class FleetCollector:
    """A paho subscriber that keeps each device's readings, ``online`` announcements and
    last health, and the broker's ``$SYS`` counters.

    `MqttObserver.wait_for` rescans its whole record on every message: right for a few
    messages, quadratic for a fleet. This keeps per-device records and waits on
    per-device conditions, checked only for the device a message came from.
    """

    def __init__(self, target: LoadTarget, devices: Sequence[str]) -> None:
        self.devices = tuple(devices)
        self.readings: dict[str, list[Reading]] = {d: [] for d in devices}
        self.online: dict[str, list[tuple[float, int]]] = {d: [] for d in devices}  # (mono, readings so far)
        self.health: dict[str, tuple[float, dict[str, Any]]] = {}
        self.sys: dict[str, list[tuple[float, str]]] = {SYS_DROPPED: [], SYS_TICK: []}
        self.malformed: list[str] = []
        self._cond = threading.Condition()
        self._waiters: list[_Waiter] = []
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"hil-load-{os.getpid()}-{time.monotonic_ns()}"
        )
        if target.observer_user:
            self.client.username_pw_set(target.observer_user, reveal(target.observer_password))
        if target.tls:
            context = ssl.create_default_context(cadata=target.ca_pem)
            if target.observer_client_cert and target.observer_client_key:
                _load_client_identity(context, target.observer_client_cert, target.observer_client_key.reveal())
            self.client.tls_set_context(context)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        where = f"{target.host}:{target.port}"
        try:
            self.client.connect(target.host, target.port, keepalive=30)
        except OSError as exc:
            raise LoadError(f"collector could not connect to {where}: {exc}") from None
        self.client.loop_start()
        if not self._subscribed.wait(10):
            self.close()
            raise LoadError(f"collector could not subscribe on {where}")

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        client.subscribe(
            [
                ("esp32/+/sensors", 1),
                ("esp32/+/status", 1),
                ("esp32/+/health", 1),
                (SYS_DROPPED, 0),
                (SYS_TICK, 0),
            ]
        )

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        now, mono = time.time(), time.monotonic()
        topic = message.topic
        with self._cond:
            if topic in self.sys:
                if topic == SYS_TICK and message.retain:
                    return  # the value at subscription time, not an update: no tick
                self.sys[topic].append((mono, message.payload.decode(errors="replace")))
                self._cond.notify_all()
                return
            parts = topic.split("/")
            device = parts[1] if len(parts) == 3 else ""
            if device not in self.readings:
                return  # not one of this fleet's devices
            try:
                data = json.loads(message.payload)
                if parts[2] == "sensors":
                    self.readings[device].append(
                        Reading(int(data["seq"]), int(data["boot_count"]), float(data["timestamp"]), now, mono)
                    )
                elif parts[2] == "status":
                    if data.get("state") == "online" and not message.retain:
                        self.online[device].append((mono, len(self.readings[device])))
                elif parts[2] == "health":
                    self.health[device] = (mono, data)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                if len(self.malformed) < 100:
                    self.malformed.append(f"{topic}: {type(exc).__name__}: {message.payload[:200]!r}")
                return
            for waiter in self._waiters:
                if device in waiter.pending and waiter.check(device):
                    waiter.pending.discard(device)
                    if not waiter.pending:
                        self._cond.notify_all()

    def wait_each(self, check: Callable[[str], bool], timeout: float) -> set[str]:
        """Wait until ``check(device)`` holds for every device; the ones it does not hold
        for when ``timeout`` runs out (empty: all done). ``check`` runs under the lock."""
        deadline = time.monotonic() + timeout
        with self._cond:
            waiter = _Waiter({d for d in self.devices if not check(d)}, check)
            self._waiters.append(waiter)
            try:
                while waiter.pending:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                return set(waiter.pending)
            finally:
                self._waiters.remove(waiter)

    def wait_sys(self, topic: str, *, count: int, since: float, timeout: float) -> bool:
        """Wait for ``count`` ``$SYS`` messages on ``topic`` received after ``since``."""
        with self._cond:
            return self._cond.wait_for(lambda: sum(1 for t, _ in self.sys[topic] if t > since) >= count, timeout)

    def sys_value(self, topic: str) -> int | None:
        with self._cond:
            values = self.sys[topic]
            if not values:
                return None
            try:
                return int(values[-1][1].split()[0])
            except (ValueError, IndexError):
                return None

    def count(self, device: str) -> int:
        return len(self.readings[device])

    def snapshot(self) -> dict[str, list[Reading]]:
        with self._cond:
            return {d: list(r) for d, r in self.readings.items()}

    def request_reports(self) -> None:
        """Ask every device for its health now (``report`` command, §5)."""
        for device in self.devices:
            self.client.publish(contract.command_topic(device), json.dumps({"cmd": "report"}), qos=1)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> FleetCollector:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


# -- results --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Latency:
    basis: str
    samples: int
    p50_s: float | None = None
    p99_s: float | None = None
    max_s: float | None = None


@dataclass(frozen=True)
class Storm:
    connections_reset: int
    reconnected_s: float | None  # every device announced online again (None: not all did)
    recovery_s: float | None  # ... and published a reading over its new connection
    not_back: tuple[str, ...] = ()


@dataclass(frozen=True)
class Loss:
    expected: int  # readings the devices took (highest seq + 1, per device and boot)
    received: int  # distinct readings received
    lost: int  # seq gaps
    ratio: float
    visible: int | None  # the devices' own dropped_readings (None: no health from some)
    silent: int | None  # lost beyond what the devices counted
    duplicates: int
    reboots: int
    worst: Mapping[str, Sequence[int]] = field(default_factory=dict)  # device -> first missing seqs


@dataclass(frozen=True)
class LoadResult:
    broker: str
    app: str
    devices: int
    rate_hz: float
    duration_s: float
    startup_s: float  # fleet started -> every device has published
    window_s: float  # the steady window as measured
    readings_in_window: int
    throughput_msgs_per_s: float
    expected_msgs_per_s: float
    latency: Latency
    loss: Loss
    storm: Storm | None
    broker_dropped: int | None
    fleet_cpu_s: float
    fleet_cpu_cores: float  # CPU seconds per wall second over the steady window
    fleet_memory: Mapping[str, int]
    fleet_cpu_wait_s: float = 0.0  # in the window: its threads ready to run, the CPUs busy
    device_rate_hz: tuple[float, float] | None = None  # (median, slowest) device's own reading rate
    malformed: int = 0
    notes: tuple[str, ...] = ()
    timeline: tuple[tuple[float, str], ...] = ()

    @property
    def rss_per_device_bytes(self) -> int:
        return self.fleet_memory.get("VmRSS", 0) // max(self.devices, 1)

    def violations(self, profile: LoadProfile) -> list[str]:
        """Every threshold of ``profile`` this run broke, in words; empty means it held."""
        found = []
        if self.loss.ratio > profile.max_loss:
            found.append(
                f"loss {self.loss.lost} of {self.loss.expected} readings ({self.loss.ratio:.2%}) > max_loss "
                f"{profile.max_loss:.2%} (silent: {self.loss.silent}, counted by the devices: {self.loss.visible}; "
                f"e.g. {dict(list(self.loss.worst.items())[:3])})"
            )
        ratio = self.throughput_msgs_per_s / self.expected_msgs_per_s if self.expected_msgs_per_s else 0.0
        if ratio < profile.min_throughput_ratio:
            found.append(
                f"throughput {self.throughput_msgs_per_s:.1f} msgs/s is {ratio:.1%} of the nominal "
                f"{self.expected_msgs_per_s:.1f} < min_throughput_ratio {profile.min_throughput_ratio:.0%}"
            )
        if self.latency.p99_s is None:
            found.append(f"no latency measured ({self.latency.basis})")
        elif self.latency.p99_s > profile.max_p99_latency_s:
            found.append(f"p99 latency {self.latency.p99_s:.3f} s > max_p99_latency_s {profile.max_p99_latency_s} s")
        if self.storm is not None:
            if self.storm.recovery_s is None:
                found.append(f"{len(self.storm.not_back)} devices never published again after the storm, e.g. {list(self.storm.not_back[:5])}")
            elif self.storm.recovery_s > profile.max_storm_recovery_s:
                found.append(f"storm recovery {self.storm.recovery_s:.2f} s > max_storm_recovery_s {profile.max_storm_recovery_s} s")
        if self.broker_dropped is not None and self.broker_dropped > profile.max_broker_dropped:
            found.append(f"broker dropped {self.broker_dropped} messages > max_broker_dropped {profile.max_broker_dropped}")
        if self.loss.reboots:
            found.append(f"{self.loss.reboots} device reboots during the run")
        if self.malformed:
            found.append(f"{self.malformed} malformed messages")
        return found

    def summary(self) -> str:
        storm = "not run" if self.storm is None else (
            f"{self.storm.recovery_s:.2f} s" if self.storm.recovery_s is not None else f"{len(self.storm.not_back)} devices not back"
        )
        latency = (
            "n/a" if self.latency.p99_s is None or self.latency.p50_s is None
            else f"p50 {self.latency.p50_s * 1000:.1f} ms, p99 {self.latency.p99_s * 1000:.1f} ms"
        )  # fmt: skip
        dropped = "unknown" if self.broker_dropped is None else str(self.broker_dropped)
        return (
            f"{self.devices} devices × {self.rate_hz:g} Hz on {self.broker}: {self.throughput_msgs_per_s:.1f} msgs/s "
            f"(expected {self.expected_msgs_per_s:.1f}); latency {latency}; loss {self.loss.lost}/{self.loss.expected} "
            f"(silent {self.loss.silent if self.loss.silent is not None else 'unknown'}); storm recovery {storm}; "
            f"broker dropped {dropped}; fleet {self.fleet_cpu_cores:.2f} cores, "
            f"{self.rss_per_device_bytes / 1024:.0f} KiB RSS per device"
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["broker_dropped"] = "unknown" if self.broker_dropped is None else self.broker_dropped
        if self.loss.visible is None:
            data["loss"]["visible"] = data["loss"]["silent"] = "unknown"
        data["rss_per_device_bytes"] = self.rss_per_device_bytes
        data["timeline"] = [[round(t, 3), event] for t, event in self.timeline]
        data["summary"] = self.summary()
        return data


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def latency(readings: Mapping[str, Sequence[Reading]], since: float, until: float) -> Latency:
    """End-to-end latency of the readings received in ``[since, until]`` (monotonic)."""
    per_device = {
        d: [r.received - r.taken for r in rs if since <= r.received_mono <= until] for d, rs in readings.items()
    }
    samples = [v for vs in per_device.values() for v in vs]
    if not samples:
        return Latency("no readings received in the window", 0)
    basis = "host receive time - device timestamp (clocks agree)"
    if min(samples) < -CLOCK_TOLERANCE_S:
        skew = -min(samples)
        samples = [v - min(vs) for vs in per_device.values() if vs for v in vs]
        basis = (
            f"device clocks differ from the host's (a reading arrived {skew:.2f} s before it was taken): "
            "relative to each device's fastest reading"
        )
    return Latency(basis, len(samples), percentile(samples, 50), percentile(samples, 99), max(samples))


def device_rates(
    readings: Mapping[str, Sequence[Reading]], since: float, until: float
) -> tuple[float, float] | None:
    """The rate the devices took readings at (by their own timestamps) in the window: the
    median device's and the slowest one's. Below the configured rate, the devices
    themselves fell behind (a loaded fleet process); at it, any shortfall in throughput
    is on the way to the collector."""
    rates = []
    for rs in readings.values():
        taken = sorted(r.taken for r in rs if since <= r.received_mono <= until)
        if len(taken) >= 2 and taken[-1] > taken[0]:
            rates.append((len(taken) - 1) / (taken[-1] - taken[0]))
    if not rates:
        return None
    return statistics.median(rates), min(rates)


def loss(readings: Mapping[str, Sequence[Reading]], health: Mapping[str, tuple[float, dict[str, Any]]]) -> Loss:
    expected = received = duplicates = reboots = 0
    worst: dict[str, list[int]] = {}
    for device, rs in readings.items():
        boots: dict[int, list[int]] = {}
        for r in rs:
            boots.setdefault(r.boot, []).append(r.seq)
        reboots += max(0, len(boots) - 1)
        for seqs in boots.values():
            distinct = set(seqs)
            expected += max(distinct) + 1
            received += len(distinct)
            duplicates += len(seqs) - len(distinct)
            missing = sorted(set(range(max(distinct) + 1)) - distinct)
            if missing:
                worst.setdefault(device, []).extend(missing[:10])
    lost = expected - received
    visible: int | None = None
    if all(d in health for d in readings):
        visible = sum(int(health[d][1].get("dropped_readings") or 0) for d in readings)
    ranked = dict(sorted(worst.items(), key=lambda item: -len(item[1]))[:10])
    return Loss(
        expected=expected,
        received=received,
        lost=lost,
        ratio=lost / expected if expected else 0.0,
        visible=visible,
        silent=None if visible is None else max(0, lost - visible),
        duplicates=duplicates,
        reboots=reboots,
        worst=ranked,
    )


# -- the run ---------------------------------------------------------------------------------
@dataclass
class _Clock:
    start: float = field(default_factory=time.monotonic)
    events: list[tuple[float, str]] = field(default_factory=list)

    def mark(self, event: str) -> float:
        now = time.monotonic()
        self.events.append((now - self.start, event))
        return now


@contextlib.contextmanager
def _private_dir(prefix: str) -> Iterator[Path]:
    # Mode 0700 (it holds passwords), named after this process: a SIGKILLed run's is
    # removed by the next one (`hil.processes.clear_stale`), as a session's run dir is.
    root = cache_root() / "run"
    clear_stale(root)
    path = owned_dir(root, prefix)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_load(
    target: LoadTarget,
    profile: LoadProfile,
    *,
    workdir: Path,
    app: str | None = None,
    storm: bool = True,
    keep_state: bool = False,
    progress: Callable[[str], None] = lambda _line: None,
) -> LoadResult:
    """Run ``profile`` against ``target`` and measure it; see the module docstring.

    ``workdir`` gets the fleet's log (``fleet.log``) and, while it runs, its boards'
    flash files (4 MiB each; removed afterwards unless ``keep_state``).
    """
    ids = device_ids(profile.devices)
    clock = _Clock()
    notes: list[str] = []
    workdir.mkdir(parents=True, exist_ok=True)
    state_dir = workdir / "fleet-state"
    interval = profile.interval_s
    with contextlib.ExitStack() as stack:
        private = stack.enter_context(_private_dir("hil-load-"))
        proxy: FaultProxy | None = None
        host, port = target.host, target.port
        if target.via_proxy:
            proxy = stack.enter_context(FaultProxy(target.host, target.port, name="fleet-broker"))
            host, port = proxy.host, proxy.port
        elif storm:
            notes.append("no reconnect storm: the devices reach this TLS broker directly (no loopback proxy)")
            storm = False
        collector = stack.enter_context(FleetCollector(target, ids))
        sys_ok = collector.wait_sys(SYS_DROPPED, count=1, since=0.0, timeout=SYS_FIRST_WAIT_S)
        dropped_start = collector.sys_value(SYS_DROPPED) if sys_ok else None
        if dropped_start is None:
            notes.append(f"the broker publishes no {SYS_DROPPED} the observer may read: broker drops unknown")
        args = [
            "--count", str(profile.devices),
            "--state-dir", str(state_dir),
            "--broker-uri", f"{'mqtts' if target.tls else 'mqtt'}://{host}:{port}",
            "--config", json.dumps({"measurement_interval_s": interval}),
        ]  # fmt: skip
        if target.credentials is not None:
            creds = private / "credentials.json"
            write_private(
                creds,
                json.dumps({d: {"username": u, "password": p.reveal()} for d, (u, p) in target.credentials.items()}),
            )
            args += ["--credentials", str(creds)]
        if target.tls and target.ca_pem:
            ca = private / "ca.pem"
            ca.write_text(target.ca_pem)
            args += ["--ca-file", str(ca)]
        if app:
            args += ["--app", app]
        progress(f"starting {profile.devices} devices ({app or 'baseline'}) against {target.name}")
        started = clock.mark("fleet starting")
        fleet = FleetProcess(args, workdir / "fleet.log", count=profile.devices)
        stack.callback(lambda: None if keep_state else shutil.rmtree(state_dir, ignore_errors=True))
        stack.enter_context(fleet)
        clock.mark(f"fleet up (pid {fleet.pid}), boards booting")
        silent = collector.wait_each(lambda d: collector.count(d) >= 1, 30.0 + interval + 0.05 * profile.devices)
        if silent:
            raise LoadError(
                f"{len(silent)} of {profile.devices} devices never published a reading, e.g. {sorted(silent)[:5]}; "
                f"fleet log: {fleet.log}:\n{fleet.tail()}"
            )
        startup = clock.mark("every device has published") - started

        # The steady window: it ends when every device has published duration × rate
        # readings more (an event, not a sleep), or at a deadline if the fleet falls behind.
        per_device = max(1, round(profile.duration_s / interval))
        progress(f"steady window: {per_device} readings per device")
        before = {d: collector.count(d) for d in ids}
        cpu_before, wait_before = fleet.cpu_seconds(), fleet.cpu_wait_seconds()
        window_start = clock.mark("steady window starts")
        behind = collector.wait_each(
            lambda d: collector.count(d) >= before[d] + per_device, profile.duration_s * 1.5 + 2 * interval + 5
        )
        window_end = clock.mark("steady window ends" + (f" ({len(behind)} devices behind)" if behind else ""))
        window = window_end - window_start
        cpu_window = fleet.cpu_seconds() - cpu_before
        cpu_wait = fleet.cpu_wait_seconds() - wait_before
        memory = fleet.memory()
        snapshot = collector.snapshot()
        in_window = sum(1 for rs in snapshot.values() for r in rs if window_start <= r.received_mono <= window_end)
        lat = latency(snapshot, window_start, window_end)
        rates = device_rates(snapshot, window_start, window_end)
        if behind:
            notes.append(f"{len(behind)} devices had not published {per_device} readings by the window's deadline")

        storm_result: Storm | None = None
        if storm:
            assert proxy is not None
            progress("reconnect storm: every connection reset at once")
            t0 = clock.mark("storm: reset every device's connection")
            reset = proxy.reset_all()
            timeout = max(30.0, 3 * profile.max_storm_recovery_s)

            def back_online(d: str) -> tuple[float, int] | None:
                return next(((t, n) for t, n in collector.online[d] if t >= t0), None)

            def published_again(d: str) -> bool:
                online = back_online(d)
                return online is not None and collector.count(d) > online[1]

            not_back = collector.wait_each(published_again, timeout)
            clock.mark("storm: every device published again" if not not_back else f"storm: {len(not_back)} not back")
            with collector._cond:
                onlines = [back_online(d) for d in ids]
                reconnected = None if any(o is None for o in onlines) else max(o[0] for o in onlines if o) - t0
                recovery = None
                if not not_back:
                    recovery = max(collector.readings[d][o[1]].received_mono for d, o in zip(ids, onlines, strict=True) if o) - t0
            storm_result = Storm(reset, reconnected, recovery, tuple(sorted(not_back)))
            if reset != profile.devices:
                notes.append(f"the storm reset {reset} connections for {profile.devices} devices")
            # Queued readings go out before new ones: two fresh readings per device mean
            # every outbox has drained (or lost what it lost).
            settle_from = {d: (back_online(d) or (0.0, collector.count(d)))[1] for d in ids}
            collector.wait_each(lambda d: collector.count(d) >= settle_from[d] + 2, 3 * interval + 10)
            clock.mark("storm: outboxes drained")

        # The devices' own account of what they dropped.
        report_from = clock.mark("asking every device for its health")
        collector.request_reports()
        mute = collector.wait_each(lambda d: d in collector.health and collector.health[d][0] >= report_from, 20.0)
        if mute:
            notes.append(f"{len(mute)} devices did not answer the report command, e.g. {sorted(mute)[:5]}")
        final = collector.snapshot()
        with collector._cond:
            health = {d: h for d, h in collector.health.items() if h[0] >= report_from}
        fleet_cpu = fleet.cpu_seconds()
        end = clock.mark("measurements done")

        dropped: int | None = None
        if dropped_start is not None:
            # Two $SYS updates after the end: the counter covers the whole run.
            wait = _sys_wait(collector)
            if collector.wait_sys(SYS_TICK, count=2, since=end, timeout=wait):
                value = collector.sys_value(SYS_DROPPED)
                dropped = None if value is None else value - dropped_start
            else:
                notes.append(f"no two {SYS_TICK} updates within {wait:.0f} s of the end: broker drops unknown")
        code = fleet.stop()
        clock.mark(f"fleet stopped ({code})")
        if code not in (0, None):
            notes.append(f"the fleet exited with {code}; see {fleet.log}")
        malformed = len(collector.malformed)

    return LoadResult(
        broker=target.name,
        app=app or "baseline",
        devices=profile.devices,
        rate_hz=profile.rate_hz,
        duration_s=profile.duration_s,
        startup_s=startup,
        window_s=window,
        readings_in_window=in_window,
        throughput_msgs_per_s=in_window / window if window > 0 else 0.0,
        expected_msgs_per_s=profile.devices * profile.rate_hz,
        latency=lat,
        loss=loss(final, health),
        storm=storm_result,
        broker_dropped=dropped,
        fleet_cpu_s=fleet_cpu,
        fleet_cpu_cores=cpu_window / window if window > 0 else 0.0,
        fleet_memory=memory,
        fleet_cpu_wait_s=cpu_wait,
        device_rate_hz=rates,
        malformed=malformed,
        notes=tuple(notes),
        timeline=tuple(clock.events),
    )


def _sys_wait(collector: FleetCollector) -> float:
    """Long enough for two $SYS updates at the interval this broker has shown."""
    with collector._cond:
        ticks = [t for t, _ in collector.sys[SYS_TICK]]
    gaps = [b - a for a, b in itertools.pairwise(ticks) if b > a]
    return 2.5 * (statistics.median(gaps) if gaps else 10.0) + 1.0  # 10 s: mosquitto's default


def write_metrics(log_dir: Path, test: str, result: LoadResult) -> Path:
    """Add ``result`` under ``test`` to ``log_dir/load-metrics.json`` (``hil gate`` copies
    every such file into summary.json under ``load``)."""
    path = log_dir / LOAD_METRICS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        metrics = dict(json.loads(path.read_text()))
    metrics[test] = result.to_json()
    path.write_text(json.dumps(metrics, indent=2) + "\n")
    return path

