"""A test session on one rig: reserve it, bring up its broker, console and firmware.

This is the library behind the pytest plugin (which only maps options and fixtures onto
it). The order is the one a lab engineer follows: reserve the rig; start the test
broker; open the serial console (never resetting the board by opening it); flash the
firmware and this rig's provisioning, skipping what is already in flash; reset; wait
until the device says it is online over MQTT. Everything started is stopped by
``close``, in reverse order, even when a step failed half way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from hil.device import contract
from hil.device.settings import Provisioning, provisioning_image
from hil.errors import (
    InfrastructureError,
    InfrastructureFailure,
    RigTakenOut,
    UsageError,
    as_infrastructure_failure,
)
from hil.firmware.catalog import cache_root
from hil.firmware.selection import FirmwareSelection, select_firmware
from hil.images.layout import FlashFile
from hil.images.partitions import Partition
from hil.link.console import Console, ConsoleError, Mark
from hil.link.flasher import AfterReset, Flasher
from hil.processes import clear_stale, owned_dir
from hil.reporting.report import Redactor
from hil.rig.attached import AttachedRig, RigNotStarted, reserve_rig
from hil.rig.backends import BootStrapPower, Power, ReferenceSensor, SensorEmulator, WifiControl
from hil.rig.errors import RigError
from hil.rig.model import Rig
from hil.rig.rigfile import load_rigs, with_profile
from hil.rig.selection import adhoc_name, adhoc_rig, planned_port, select_rigs
from hil.rig.virtual_board import ControlClient, VirtualBoardProcess
from hil.rig.wiring import BackendUnavailable, NoBackend, download_mode
from hil.secret import Secret, optional_secret, write_private
from hil.services.broker import (
    EMBEDDED_BROKERS,
    OBSERVER_USER,
    BrokerError,
    MosquittoBroker,
    broker_class,
)
from hil.services.broker_log import BrokerLog, BrokerLogReader, BrokerLogTimeout
from hil.services.mqtt import MqttObserver, ObserverTimeout
from hil.services.mqtt_login import LoginError, write_login
from hil.services.netfault import FaultProxy
from hil.services.ota import OtaServer, OtaSigner

ONLINE_TIMEOUT_S = 60.0
SUBSCRIBE_TIMEOUT_S = 15.0
"""After the online status, how long the device's SUBSCRIBEs may take to show in the broker's
log: one keepalive (C3.2), within which anything sent on connect reaches the broker on a
working link."""
FAST_INTERVALS = {
    "measurement_interval_s": 1,
    "heartbeat_interval_s": 5,
    "status_report_interval_s": 10,
    "watchdog_timeout_s": 5,
    "sensor_timeout_s": 5,  # the contract's minimum: a sensor_failure episode in seconds
    "ota_selftest_timeout_s": 20,  # an update that cannot connect rolls back in seconds
}


class SessionError(Exception):
    """The session could not be set up. Whose fault it is goes by type: a plain one is the
    device's (it never came online, it booted another version); `SessionInfrastructureError`
    the rig's, `SessionUsageError` the input's; one raised *from* a typed error (a
    `BrokerError`, a `NoBackend`) takes that error's kind (`hil.errors.classify`)."""


class SessionInfrastructureError(SessionError, InfrastructureError):
    """The session's own instruments failed (its broker cannot be reached)."""


class SessionUsageError(SessionError, UsageError):
    """What the session was asked for cannot be (a bad --broker, a rig without a port)."""


class SessionStateError(RuntimeError):
    """A session's state read before the step that sets it (``rig`` before ``reserve()``):
    a bug in the caller, neither the device's nor the rig's."""


BOOT_LOOP_PANICS = 3  # panics after the app started and no MQTT session: a boot loop
ONLINE_POLL_S = 1.0


def wait_online(
    observer: MqttObserver, console: Console, device_id: str, *, since: int, booted: Mark, timeout: float
) -> None:
    """Wait for the device's ``online`` status (published after ``since``). A firmware that
    panics at every boot fails the wait as soon as the console shows the loop, naming the
    panic, instead of after the whole timeout with nothing to go on."""
    deadline = time.monotonic() + timeout
    topic = contract.status_topic(device_id)
    while True:
        left = deadline - time.monotonic()
        try:
            observer.wait_for(
                topic,
                lambda m: m.json().get("state") == "online",
                since=since,
                timeout=max(min(left, ONLINE_POLL_S), 0.0),
            )
            return
        except ObserverTimeout:
            panics = [line for line in console.lines(booted) if contract.PANIC.search(line)]
            if len(panics) >= BOOT_LOOP_PANICS:
                raise SessionError(
                    f"the device never came online: it panics at boot, again and again ({len(panics)} "
                    f"panics since the app started): {panics[-1].strip()}; see {console.log_path}"
                ) from None
            if left <= ONLINE_POLL_S:
                raise


@dataclass(frozen=True)
class BrokerAccess:
    """How the device and the test's observer reach the broker under test (passwords and
    keys as `Secret`s: ``***`` in any repr, ``pytest -l`` included)."""

    device_uri: str
    username: str | None
    password: Secret | None
    ca_pem: str | None
    client_cert: str | None = None
    client_key: Secret | None = None
    observer_host: str = "127.0.0.1"
    observer_port: int = 1883
    observer_user: str | None = None
    observer_password: Secret | None = None
    observer_tls: bool = False
    observer_client_cert: str | None = None  # an mTLS-only broker needs the observer's own identity
    observer_client_key: Secret | None = None

    def observer(self, *, subscribe: str | Sequence[str] = "#", persistent: bool = True) -> MqttObserver:
        """An MQTT observer logged in with the observer's account (and identity, on TLS)."""
        return MqttObserver(
            self.observer_host,
            self.observer_port,
            username=self.observer_user,
            password=self.observer_password,
            ca_pem=self.ca_pem if self.observer_tls else None,
            client_cert_pem=self.observer_client_cert,
            client_key_pem=self.observer_client_key,
            subscribe=subscribe,
            persistent=persistent,
        )


EXTERNAL_ENV = {
    "username": "HIL_BROKER_USERNAME",
    "password": "HIL_BROKER_PASSWORD",
    "ca_file": "HIL_BROKER_CA_FILE",
    "client_cert_file": "HIL_BROKER_CLIENT_CERT_FILE",
    "client_key_file": "HIL_BROKER_CLIENT_KEY_FILE",
    "observer_cert_file": "HIL_BROKER_OBSERVER_CERT_FILE",
    "observer_key_file": "HIL_BROKER_OBSERVER_KEY_FILE",
}


def external_access(uri: str, env: Mapping[str, str]) -> BrokerAccess:
    """A broker someone else runs (staging): its URI, credentials from the environment."""
    parsed = contract.parse_broker_uri(uri)
    if parsed is None:
        raise SessionUsageError(
            f"--broker {uri!r} is not mqtt://host:port or mqtts://host:port; or use 'embedded' / 'mosquitto' / 'amqtt'"
        )

    def read(key: str) -> str | None:
        path = env.get(EXTERNAL_ENV[key])
        if not path:
            return None
        try:
            return Path(path).read_text()
        except OSError as exc:
            raise SessionUsageError(f"${EXTERNAL_ENV[key]}={path}: {exc.strerror}") from None

    ca = read("ca_file")
    if parsed.tls and ca is None:
        raise SessionUsageError(f"--broker {uri}: TLS needs the broker's CA; set ${EXTERNAL_ENV['ca_file']}")
    return BrokerAccess(
        device_uri=uri,
        username=env.get(EXTERNAL_ENV["username"]),
        password=optional_secret(env.get(EXTERNAL_ENV["password"])),
        ca_pem=ca,
        client_cert=read("client_cert_file"),
        client_key=optional_secret(read("client_key_file")),
        observer_host=parsed.host,
        observer_port=parsed.port,
        observer_user=env.get(EXTERNAL_ENV["username"]),
        observer_password=optional_secret(env.get(EXTERNAL_ENV["password"])),
        observer_tls=parsed.tls,
        observer_client_cert=read("observer_cert_file"),
        observer_client_key=optional_secret(read("observer_key_file")),
    )


def resolve_firmware(choice: str | None) -> FirmwareSelection:
    """``--firmware`` (None: the baseline recipe) resolved, once, into what the session
    flashes, every file checked as the flasher checks before it connects (chip, corrupt,
    size, overlaps): no rig is needed, none is touched. FirmwareError / FlashInputError
    say what is wrong."""
    return select_firmware(choice, check=Flasher().check)


@dataclass(frozen=True)
class SessionOptions:
    rigs_dir: Path
    log_dir: Path
    rig_name: str | None = None
    rig_tag: str | None = None
    firmware: FirmwareSelection | None = None  # `resolve_firmware`'s; None: the baseline recipe
    broker: str = "embedded"  # embedded | mosquitto | amqtt | mqtt(s)://host:port
    config: dict[str, Any] = field(default_factory=lambda: dict(FAST_INTERVALS))
    keep_on_failure: bool = False
    rig_wait_s: float = 0.0  # how long to wait for a busy rig before giving up
    rig_profile: str | None = None  # a virtual board's profile for this run (None: the rig file's)
    port: str | None = None  # --port: a board without a rig file (`hil.rig.selection.adhoc_rig`)
    target: str | None = None  # --target: the chip it must be (esp32c3)

    def rigs(self) -> list[Rig]:
        """What this session picks from: the inventory, or the one rig ``--port`` makes."""
        if self.port is not None:
            return [adhoc_rig(self.port, self.target, os.environ)]
        return with_profile(load_rigs(self.rigs_dir), self.rig_profile)

    def rig_choice(self) -> tuple[str | None, str | None]:
        """The name and tag to reserve by (``--port``'s rig by its name)."""
        if self.port is not None:
            return adhoc_name(self.port), None
        return self.rig_name, self.rig_tag


@dataclass(frozen=True)
class KeptRig:
    """What a person needs to attach to a rig kept by ``--keep-on-failure`` (`RigSession.keep`)."""

    rig: str
    device_id: str
    port: str | None  # the serial port, let go by the session (None: it never opened one)
    port_problem: str | None  # why the console could not lend it (it was closed instead)
    control: str | None  # a virtual board's control endpoint (its URL names the token file)
    login_file: Path | None  # the observer's login: mosquitto_sub's options file, 0600
    broker: str | None  # the broker that login is for
    login_problem: str | None  # why there is no login file although there is a broker
    log_dir: Path


@dataclass
class Dut:
    """The device under test, as the suites see it."""

    device_id: str
    version: str
    console: Console
    rig: Rig
    control: ControlClient | None  # virtual rigs only; suites use the backends instead


class RigSession:
    def __init__(self, options: SessionOptions) -> None:
        self.options = options
        self.redactor = Redactor()
        self._cleanups: list[Callable[[], None]] = []
        self.reserved: AttachedRig | None = None  # the rig, driven as its kind is (`reserve`)
        self._started = False
        self.broker: MosquittoBroker | None = None
        self.observer: MqttObserver | None = None
        self.console: Console | None = None
        self.signer = OtaSigner()
        self._ota_server: OtaServer | None = None
        self._proxy: FaultProxy | None = None
        self._dut: Dut | None = None
        self._run_dir: Path | None = None
        self._port: str | None = None
        self._firmware: FirmwareSelection | None = None
        self.taken_out: str | None = None  # why the rig left the run (`take_out`)

    def __repr__(self) -> str:  # never reserves: only what the session already holds
        held = self.reserved.rig.name if self.reserved is not None else "no rig yet"
        return f"<RigSession {held}>"

    # -- setup steps: methods, each done once however often called, in the order a session
    # takes them (the operations below call the ones they need). The properties after them
    # only report what a step did, and say which step has not run.
    def prepare_run_dir(self) -> Path:
        """This session's private files (broker keys, password file, ACL, NVS images with
        secrets): a 0700 dir under ``<cache>/run/<host>/`` named after this process, so a
        session that finds one whose process is dead (a SIGKILLed run's) removes it."""
        if self._run_dir is None:
            root = cache_root() / "run"
            clear_stale(root)
            self._run_dir = owned_dir(root, "session-")
            path = self._run_dir
            self._cleanups.append(lambda: shutil.rmtree(path, ignore_errors=True))
        return self._run_dir

    def reserve(self) -> Rig:
        """Reserve the rig the options select, for the session's whole life: a local rig by
        its OS file lock, a labgrid rig by its coordinator's place. Waits up to
        ``rig_wait_s`` for a busy one (then `NoRigAvailable`)."""
        if self.reserved is None:
            name, tag = self.options.rig_choice()
            self.reserved = reserve_rig(self.options.rigs(), name=name, tag=tag, timeout=self.options.rig_wait_s)
            self._cleanups.append(self.reserved.release)
        return self.reserved.rig

    def start_board(self) -> AttachedRig:
        """Reserve, and start what the rig needs (a virtual rig's board process; nothing on a
        real rig: its board is powered by the lab). Returns the rig being driven."""
        self.reserve()
        attached = self._attached()
        if not self._started:  # once: a board that failed to start is not started again
            self._started = True
            self._cleanups.append(attached.stop)
            attached.start()
        return attached

    def start_port(self) -> str:
        """The rig's serial port URL, the board started first (`start_board`)."""
        if self._port is None:
            self._port = _rig_call(self.start_board().port)
        return self._port

    @property
    def run_dir(self) -> Path:
        """The dir `prepare_run_dir` made."""
        if self._run_dir is None:
            raise SessionStateError("RigSession.run_dir read before prepare_run_dir(): no run dir yet")
        return self._run_dir

    def _attached(self) -> AttachedRig:
        if self.reserved is None:
            raise SessionStateError("RigSession.rig read before reserve(): no rig is reserved yet")
        return self.reserved

    @property
    def rig(self) -> Rig:
        """The rig `reserve` took."""
        return self._attached().rig

    @property
    def board(self) -> VirtualBoardProcess | None:
        """The process standing in for the board (a virtual rig's, once started), or None."""
        return None if self.reserved is None else self.reserved.board

    @property
    def device_id(self) -> str:
        return f"hil-{self.rig.name}"

    @property
    def port(self) -> str:
        """The port URL `start_port` found."""
        if self._port is None:
            raise SessionStateError("RigSession.port read before start_port(): the port is not known yet")
        return self._port

    @property
    def control(self) -> ControlClient | None:
        """The virtual board's control endpoint (None on a real rig), once `start_board` ran."""
        try:
            return self._attached().control()
        except RigNotStarted:
            raise SessionStateError("RigSession.control read before start_board(): the virtual board is not running") from None

    def start_broker(self) -> MosquittoBroker:
        if self.broker is None:
            if self.external_broker:
                raise SessionUsageError(f"the broker is external ({self.options.broker!r}): the session runs none")
            self.reserve()  # the broker holds the rig's device account
            private = self.prepare_run_dir() / "broker"
            private.mkdir(exist_ok=True)
            try:
                # embedded: mosquitto when it is on PATH, else amqtt (same interface).
                kind = broker_class(self.options.broker)
                broker = kind(private, log_path=self.options.log_dir / f"{kind.name}.log")
                creds = broker.add_device(self.device_id)
                self.redactor.add(creds.password, creds.client_key_pem, broker.observer_password)
                broker.start()
            except BrokerError as exc:
                raise SessionError(str(exc)) from exc
            self._cleanups.append(broker.kill)
            self.broker = broker
        return self.broker

    @property
    def external_broker(self) -> bool:
        return self.options.broker not in EMBEDDED_BROKERS

    def broker_access(self) -> BrokerAccess:
        if self.external_broker:
            access = external_access(self.options.broker, os.environ)
            self.redactor.add(access.password, access.client_key, access.observer_client_key)
            return access
        broker = self.start_broker()
        creds = broker.credentials(self.device_id)
        return BrokerAccess(
            device_uri=f"mqtt://127.0.0.1:{self.network_path().port}",
            username=creds.username,
            password=creds.password,
            ca_pem=broker.ca_pem,
            observer_port=broker.plain_port,
            observer_user=OBSERVER_USER,
            observer_password=broker.observer_password,
        )

    def mqtt(self) -> MqttObserver:
        if self.observer is None:
            access = self.broker_access()
            try:
                self.observer = access.observer()
            except OSError as exc:  # ObserverConnectError: refused, or no CONNACK
                raise SessionInfrastructureError(
                    f"broker {access.observer_host}:{access.observer_port} unreachable: {exc}"
                ) from exc
            self._cleanups.append(self.observer.close)
        return self.observer

    def open_console(self) -> Console:
        if self.console is None:
            port = self.start_port()
            log = self.options.log_dir / self.rig.name / "console.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            self.console = Console(
                port, log, redact=self.redactor, reset=self._attached().console_reset(),
                port_return_s=self.rig.port_return_s,
            )
            self._cleanups.append(self.console.close)
        return self.console

    def firmware(self) -> FirmwareSelection:
        """What is under test: the options' resolved ``--firmware``, else the baseline recipe
        (resolved here, once, by the same `resolve_firmware`)."""
        if self._firmware is None:
            self._firmware = self.options.firmware or resolve_firmware(None)
        return self._firmware

    def network_path(self) -> FaultProxy:
        """The fault proxy the device reaches the broker through (its provisioned URI)."""
        if self._proxy is None:
            broker = self.start_broker()
            self._proxy = FaultProxy("127.0.0.1", broker.plain_port, name=f"{self.rig.name}-broker").start()
            self._cleanups.append(self._proxy.close)
        return self._proxy

    def device_provisioning(self) -> Provisioning:
        """The identity, network and keys the session provisions the device with."""
        self.reserve()
        access = self.broker_access()
        ssid, password = self._attached().wifi_credentials()  # the virtual AP's, or the lab's
        self.redactor.add(password)
        return Provisioning(
            device_id=self.device_id,
            wifi_ssid=ssid,
            wifi_pass=Secret(password),
            mqtt_uri=access.device_uri,
            mqtt_user=access.username,
            mqtt_pass=access.password,
            ca_cert=access.ca_pem,
            client_cert=access.client_cert,
            client_key=access.client_key,
            ota_pubkey=self.signer.public_pem,
        )

    def provisioning(self) -> bytes:
        """The session's NVS image: `device_provisioning` and the session's config."""
        return provisioning_image(self.device_provisioning(), self.options.config, size=self._nvs().size)

    def _nvs(self) -> Partition:
        """Where provisioning goes: the nvs partition of the firmware's flash layout."""
        return self.firmware().flash_set.layout.nvs

    def dut(self) -> Dut:
        """Flash (if needed), provision, reset and wait until the device is online."""
        if self._dut is None:
            version = self.flash_and_boot()
            assert self.console is not None
            self._dut = Dut(self.device_id, version, self.console, self.rig, self.control)
        return self._dut

    def restore(self) -> None:
        """Put the session's firmware back (after a test that updated or broke it): only
        what differs is written (an OTA slot's otadata, say), then reset and wait online."""
        self.flash_and_boot()

    def reprovision(self, prov: Provisioning | None, *, omit: Collection[str] = ()) -> Mark:
        """Flash another provisioning (with the session's config), or with None an erased
        NVS partition (a device never provisioned), and reset; ``omit`` leaves provisioning
        keys out (``device_id``: partly provisioned). Nothing is awaited: what the device
        does next is the test's to see, from the returned console mark. `restore` puts the
        session's provisioning back."""
        nvs_partition = self._nvs()
        image = b"\xff" * nvs_partition.size
        if prov is not None:
            self.redactor.add(*prov.secrets())
            image = provisioning_image(prov, self.options.config, size=nvs_partition.size, omit=omit)
        console = self.open_console()
        mark = console.mark()
        with tempfile.TemporaryDirectory(prefix="nvs-", dir=self.prepare_run_dir()) as private:
            nvs = write_private(Path(private) / "nvs.bin", image)
            with self._flashing(console) as (flasher, port, after):
                flasher.flash(port, [FlashFile(nvs_partition.offset, nvs)], after=after)
        return mark

    def erase_flash(self) -> Mark:
        """Erase the whole flash (``esptool erase-flash``) and reset: a blank board, no
        firmware, no identity. `restore` flashes and provisions it again."""
        console = self.open_console()
        mark = console.mark()
        with self._flashing(console) as (flasher, port, after):
            flasher.erase_flash(port, after=after)
        return mark

    def flash_and_boot(self) -> str:
        firmware = self.firmware()
        observer = self.mqtt()
        console = self.open_console()
        mark = observer.mark()
        broker_log = self._protocol_log()
        log_mark = broker_log.mark() if broker_log is not None else None
        # The NVS image holds the device's secrets: a private temp file, gone after use.
        with tempfile.TemporaryDirectory(prefix="nvs-", dir=self.prepare_run_dir()) as private:
            nvs = write_private(Path(private) / "nvs.bin", self.provisioning())  # 0600 from creation
            with self._flashing(console) as (flasher, port, after):
                flasher.flash(port, firmware.flash_set.with_nvs(nvs), after=after)
        self._await_online(observer, console, firmware.version, since=mark, what="flashed")
        if broker_log is not None:
            self._await_subscribed(broker_log, since=log_mark)
        return firmware.version

    def _protocol_log(self) -> BrokerLogReader | None:
        """The session's own broker's record of what clients send, where it keeps one."""
        if self.external_broker:
            return None
        broker = self.start_broker()
        return broker.protocol_log() if "protocol_log" in broker.features else None

    def _await_subscribed(self, broker_log: BrokerLogReader, *, since: int | None) -> None:
        """Until the device's request topics are subscribed. The device subscribes after its
        online status (C3.3 asks only that it does on connect), and on a broker that has
        never seen it no session keeps a request published before that SUBSCRIBE: a test's
        first request would be lost to the race, on a board as on the virtual rig. Later
        connects are safe (the persistent session holds the subscriptions)."""
        expected = len(contract.device_subscriptions(self.device_id))

        def subscribed(log: BrokerLog) -> bool:
            connects = log.connects_of(client_id=self.device_id)
            return bool(connects) and len(connects[-1].subscriptions) >= expected

        try:
            broker_log.wait_for(subscribed, since=since, timeout=SUBSCRIBE_TIMEOUT_S, what="the device's SUBSCRIBEs")
        except BrokerLogTimeout as exc:
            raise SessionError(
                f"the device came online but did not subscribe to its {expected} request topics "
                f"within {SUBSCRIBE_TIMEOUT_S:g} s (C3.3): {exc}"
            ) from None

    @contextlib.contextmanager
    def _flashing(self, console: Console) -> Iterator[tuple[Flasher, Any, AfterReset]]:
        """The console's port lent to a flasher built for this rig (its reset method and
        flash baud), with the board put into download mode as the rig needs; yields the
        flasher, the port and the ``after`` to flash with (the board boots its app after)."""
        with console.borrow() as port, download_mode(self.rig, self._boot_power, "hard-reset") as after:
            yield self._attached().flasher(), port, after

    def _boot_power(self) -> BootStrapPower:
        return _rig_call(self.start_board().boot_power)

    def _await_online(
        self, observer: MqttObserver, console: Console, version: str, *, since: int, what: str, boot: Mark | None = None
    ) -> None:
        """Booted (the serial port says which app started, after ``boot``), then online
        (MQTT says so, after the observer's mark ``since``)."""
        booted = console.expect(contract.APP_VERSION, timeout=ONLINE_TIMEOUT_S, since=boot)
        if booted.group("version") != version:
            raise SessionError(
                f"{what} {version} but the device booted {booted.group('version')}; see {console.log_path}"
            )
        wait_online(observer, console, self.device_id, since=since, booted=console.mark(), timeout=ONLINE_TIMEOUT_S)

    def fresh_boot(self, how: Literal["auto", "reset", "power"] = "auto") -> Dut:
        """Boot the device afresh, nothing flashed: a reset (EN pulse through RTS) or a power
        cycle, then wait until it booted the session's firmware and is online again.
        ``auto`` resets where the port has the modem lines for it (classic, USB-JTAG) and
        power-cycles a rig reset by GPIO or reached over a raw TCP port."""
        dut = self.dut()
        observer, console = self.mqtt(), self.open_console()
        if how == "auto":
            how = "power" if self.rig.reset == "gpio" or console.url.startswith("socket://") else "reset"
        mark = observer.mark()
        if how == "power":
            power = self.power()
            boot = console.mark()
            power.cycle()
        else:
            boot = console.hard_reset()
        self._await_online(observer, console, dut.version, since=mark, what="after a fresh boot expected", boot=boot)
        return dut

    # -- rig interfaces: what the rig's kind drives them with (`hil.rig.attached`) ----------
    def power(self) -> Power:
        """The rig's power switch: the virtual board's, the rig file's backend (GPIO
        expander, uhubctl) or a labgrid place's PDU."""
        return _rig_call(self.start_board().power)

    def sensor(self) -> SensorEmulator | ReferenceSensor:
        """The sensor emulator (virtual rigs: set the environment, inject faults), or a
        real rig's reference BME280 (``get`` only: the truth beside the board)."""
        return _rig_call(self.start_board().sensor)

    def wifi(self) -> WifiControl:
        """The access point the board joins (the virtual rig's)."""
        return _rig_call(self.start_board().wifi)

    def ota_server(self) -> OtaServer:
        if self._ota_server is None:
            # HTTPS with the embedded broker's CA (which devices trust); plain HTTP when
            # the broker, and so the provisioned CA, belongs to someone else.
            self._ota_server = OtaServer(tls_ca=None if self.external_broker else self.start_broker().ca)
            self._cleanups.append(self._ota_server.close)
        return self._ota_server

    # -- infrastructure, told from the device ----------------------------------------------
    def infrastructure_fault(self) -> str | None:
        """What of the rig's infrastructure died under the session, in words (None: all
        alive). Asked after a test failed: a device cannot kill the board process or the
        test broker, so a failure with one of them dead is the rig's (the test then timed
        out on MQTT, an AssertionError that says nothing of why)."""
        faults = []
        if self.board is not None and (code := self.board.returncode) is not None:
            pid = self.board.endpoints.pid if self.board.endpoints is not None else "?"
            faults.append(f"the virtual board process (pid {pid}) {_exit_words(code)}")
        if self.broker is not None and (code := self.broker.unexpected_exit()) is not None:
            faults.append(f"the test broker ({self.broker.name}) {_exit_words(code)}")
        if not faults and self.console is not None and not self.console.connected:
            try:  # a USB port re-enumerating after a power cycle is back within this
                self.console.wait_connected(PORT_GRACE_S)
            except ConsoleError as exc:
                faults.append(f"the console port is gone: {exc}")
        return "; ".join(faults) or None

    def take_out(self, why: str) -> str:
        """Take the rig out of the run: its remaining tests are broken at once with the
        returned reason (the first one given stays)."""
        if self.taken_out is None:
            name = self.reserved.rig.name if self.reserved is not None else "(none reserved)"
            self.taken_out = f"rig {name} taken out of this run: {why} (logs: {self.options.log_dir})"
        return self.taken_out

    def judge_failure(self, exc: BaseException) -> InfrastructureFailure | None:
        """Whether a failure of one of this session's tests is the rig's: the error
        ``exc`` is infrastructure by type, or the rig was taken out, or something of it
        died (then it is taken out now). Returns what the test reports instead (with
        ``exc`` as its cause), or None: the failure stands, the device's or the test's."""
        if isinstance(exc, InfrastructureFailure):
            return None  # judged already (`RigTakenOut` from the dut fixture)
        fault = None if self.taken_out is not None else self.infrastructure_fault()
        if fault is not None:
            self.take_out(f"{fault}; the test saw {type(exc).__name__}: {_first_line(exc)}")
        if self.taken_out is not None:
            return RigTakenOut(self.taken_out)
        return as_infrastructure_failure(exc)

    def environment(self) -> dict[str, str]:
        """What the report's environment.properties says about this session."""
        import esptool

        env = {"esptool": esptool.__version__, "broker": self.options.broker}
        if self.broker is not None:  # which one 'embedded' turned out to be, and its limits
            env["broker"] = f"{self.options.broker} ({self.broker.name}: {', '.join(sorted(self.broker.features))})"
            env["broker_name"] = self.broker.name
            env["broker_version"] = self.broker.version or "unknown"
        if self.reserved is not None:
            env.update({"rig": self.rig.name, "rig_kind": self.rig.kind, "chip": self.rig.chip})
            if self.board is not None:  # a process stands in for the board: how real it is
                env["rig_profile"] = self.board.profile
        if self._dut is not None:
            env.update({"firmware_version": self._dut.version, "device_id": self._dut.device_id})
            env["firmware"] = self.firmware().choice or "baseline"
        if self._firmware is not None:
            env["firmware_sha256"] = self._firmware.sha256
        return env

    def used(self) -> list[str]:
        """What this session used, as far as it got: the rig it reserved and its port, the
        firmware (name, version, app sha256), the broker (and its version)."""
        if self.reserved is None:
            return []
        lines = [f"rig: {self.rig.name} ({self.rig.kind}, {self.rig.chip}), port {self._port or '(not opened)'}"]
        if self._firmware is not None:
            fw = self._firmware
            lines.append(f"firmware: {fw.name} {fw.version} ({fw.kind}), app sha256 {fw.sha256}")
        if self.broker is not None:
            lines.append(f"broker: {self.options.broker} ({self.broker.name} {self.broker.version or '(version unknown)'}, "
                         f"{self.broker.uri('plain')})")  # fmt: skip
        elif self.external_broker:
            lines.append(f"broker: {_broker_words(self.options.broker)}")
        return lines

    @contextlib.contextmanager
    def keep(self) -> Iterator[KeptRig]:
        """Keep the rig for a person to attach to (``--keep-on-failure``), as the failure
        left it: still reserved and powered; the serial port let go (the console closes it,
        so that ``hil monitor`` and esptool can open it; on exit the console opens it again,
        as a test's teardown may need it); the observer's login written to a 0600 file
        (mosquitto_sub's options file, which ``hil mqtt watch --credentials`` reads too),
        removed on exit."""
        attached = self._attached()
        login_dir = self.prepare_run_dir() / "mqtt-login"
        login_problem = None
        try:
            login = self._write_observer_login(login_dir)
        except LoginError as exc:  # an external broker's password mosquitto_sub cannot take
            login, login_problem = None, str(exc)
        board = attached.board
        control = board.endpoints.control if board is not None and board.endpoints is not None else None
        try:
            with contextlib.ExitStack() as stack:
                problem = None
                if self.console is not None:
                    try:
                        stack.enter_context(self.console.let_go(to="a person (--keep-on-failure)"))
                    except ConsoleError as exc:  # lost, and reopening: closed, so it lets go for good
                        problem = f"{exc}; the console is closed"
                        self.console.close()
                yield KeptRig(
                    rig=attached.rig.name,
                    device_id=self.device_id,
                    port=self._port,
                    port_problem=problem,
                    control=control,
                    login_file=login[0] if login is not None else None,
                    broker=login[1] if login is not None else None,
                    login_problem=login_problem,
                    log_dir=self.options.log_dir,
                )
        finally:
            shutil.rmtree(login_dir, ignore_errors=True)  # the password goes with the hold

    def _write_observer_login(self, directory: Path) -> tuple[Path, str] | None:
        """The session observer's login written into ``directory`` (`write_login`): the
        file and the broker's URL; None while the session has no broker to watch."""
        if self.broker is not None:
            path = write_login(directory, host="127.0.0.1", port=self.broker.plain_port, username=OBSERVER_USER,
                               password=self.broker.observer_password)  # fmt: skip
            return path, self.broker.uri("plain")
        if self.external_broker and self.observer is not None:
            access = external_access(self.options.broker, os.environ)
            path = write_login(
                directory,
                host=access.observer_host,
                port=access.observer_port,
                username=access.observer_user,
                password=access.observer_password,
                ca_pem=access.ca_pem if access.observer_tls else None,
                client_cert_pem=access.observer_client_cert,
                client_key_pem=access.observer_client_key,
            )
            return path, self.options.broker
        return None

    def close(self) -> None:
        while self._cleanups:
            cleanup = self._cleanups.pop()
            with contextlib.suppress(Exception):
                cleanup()



def planned(options: SessionOptions) -> list[str]:
    """What a session with ``options`` will use, for the run's header, before any rig is
    reserved (reading the session's rig would reserve it): the rig (or the rigs it takes
    the first free of) and its port, the firmware (name, version, app sha256) and the
    broker. A problem is shown in its place: the session reports it when it runs."""
    lines = []
    name, tag = options.rig_choice()
    try:
        rigs = select_rigs(options.rigs(), name=name, tag=tag)
        kinds = {(rig.kind, rig.chip, planned_port(rig)) for rig in rigs}
        if len(rigs) == 1 or len(kinds) == 1:
            kind, chip, port = next(iter(kinds))
            names = rigs[0].name if len(rigs) == 1 else f"the first free of {', '.join(rig.name for rig in rigs)}"
            lines.append(f"rig: {names} ({kind}, {chip}), port {port}")
        else:
            described = "; ".join(f"{rig.name} ({rig.kind}, {rig.chip}), port {planned_port(rig)}" for rig in rigs)
            lines.append(f"rig: the first free of {described}")
    except (RigError, OSError) as exc:
        lines.append(f"rig: {exc}")
    try:
        firmware = options.firmware or resolve_firmware(None)
        given = f", --firmware {firmware.choice}" if firmware.choice else ""
        lines.append(f"firmware: {firmware.name} {firmware.version} ({firmware.kind}{given}), app sha256 {firmware.sha256}")
    except UsageError as exc:
        lines.append(f"firmware: {exc}")
    lines.append(f"broker: {_broker_words(options.broker)}")
    return lines


def _broker_words(choice: str) -> str:
    if choice in EMBEDDED_BROKERS:
        try:
            return f"{choice} ({broker_class(choice).name}, started by the session on 127.0.0.1)"
        except BrokerError as exc:
            return f"{choice} ({exc})"
    parts = urlsplit(choice)
    if parts.username or parts.password:  # never a password in a log
        return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
    return choice


PORT_GRACE_S = 5.0  # a lost console port that is back within this was only re-enumerating

_T = TypeVar("_T")


def _rig_call(call: Callable[[], _T]) -> _T:
    """A rig interface, its errors said as the session's: a rig without the thing asked
    for is usage (`NoBackend`), a bus or tool that failed is infrastructure (by cause)."""
    try:
        return call()
    except NoBackend as exc:
        raise SessionUsageError(str(exc)) from exc
    except BackendUnavailable as exc:
        raise SessionError(str(exc)) from exc


def _exit_words(code: int) -> str:
    """A child's exit status as a person says it: ``was killed by SIGKILL``."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else "(no message)"
