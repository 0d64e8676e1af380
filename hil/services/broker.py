"""A test broker: Debian's mosquitto from a generated config, on free loopback ports.

One broker offers three listeners: plain (username/password), TLS (server certificate
from a per-run CA, username/password) and mutual TLS (client certificate required, its
CN is the username). An ACL lets each device read and write only ``esp32/<its id>/#``
plus its broker→device topics; a test observer account may read everything. The CA,
server and device certificates come from trustme, so nothing is committed.

The broker runs in its own process group and is always stopped (``close``); ``kill``
drops it the hard way (no will delivery from its side, persistence not saved), as a
crashed broker would.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import trustme

from hil.errors import InfrastructureError, UsageError
from hil.processes import die_with_parent
from hil.secret import Secret, write_private
from hil.services.broker_log import BrokerLogReader
from hil.services.device_certs import issue_device_certificate
from hil.services.ports import reserve_port

OBSERVER_USER = "hil-observer"
EMBEDDED_BROKERS = ("embedded", "mosquitto", "amqtt")
"""``--broker`` values for a broker the session runs itself (anything else is a URI)."""
START_TIMEOUT_S = 10.0
SYS_INTERVAL_S = 1
"""How often mosquitto publishes its $SYS counters (default 10 s): a load run reads the
dropped-message count at its end, and should not wait long for a fresh value."""
RELOAD_TIMEOUT_S = 10.0
PROTOCOL_LOG_TYPES = ("all",)
"""A test session's broker logs every packet's header (``debug``: CONNECT flags, SUBSCRIBE,
PUBLISH topic/QoS/retain and the payload's length, never the payload), which
`protocol_log` reads back. The broker lives as long as the run, so the log stays small."""
CONNECTION_LOG_TYPES = ("error", "warning", "notice", "information", "subscribe", "unsubscribe")
"""A long-lived (bench) broker logs connections and subscriptions only: no line per message,
so hours of traffic do not fill the disk (``hil broker up`` also caps the file's size)."""


DEFAULT_MAX_QUEUED_MESSAGES = 10_000
"""Per client: what a session's broker queues for a subscriber (the observer) that falls behind."""
FILES_MARGIN = 64
"""Descriptors a broker holds besides its clients' sockets: listeners, log, persistence, libs."""


class BrokerError(InfrastructureError):
    """The broker could not be set up or started (an infrastructure error)."""


class BrokerLimitError(BrokerError):
    """This host cannot give the broker what a fleet needs; the message says the figure
    and the fix."""


@dataclass(frozen=True)
class BrokerLimits:
    """What a broker is set up for when a fleet loads it (`MosquittoBroker.apply_limits`).

    A session's broker runs without (its defaults: persistence on, 10 000 queued messages
    per client, the descriptors it inherits); a load run sizes it for its fleet."""

    clients: int  # connections it must hold at once: the fleet, its observers, a margin
    max_queued_messages: int = DEFAULT_MAX_QUEUED_MESSAGES  # per client; 0: no limit
    persistence: bool = True

    @property
    def open_files(self) -> int:
        """Descriptors the broker needs: a socket per client and its own few."""
        return self.clients + FILES_MARGIN


def check_open_files(needed: int, who: str, *, limits: tuple[int, int] | None = None) -> None:
    """Raise `BrokerLimitError` when ``needed`` descriptors are above the hard limit this
    process (and so its children) has: the figure, and the fix."""
    hard = (limits or resource.getrlimit(resource.RLIMIT_NOFILE))[1]
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise BrokerLimitError(
            f"{who} needs {needed} open files but the hard limit here is {hard} (ulimit -Hn): raise it to at "
            f"least {needed} (as root: ulimit -Hn {needed} in the shell that runs the tests, a nofile line in "
            f"/etc/security/limits.conf, or LimitNOFILE={needed} for a systemd service), or run fewer devices"
        )


def _raise_soft_limit(needed: int) -> None:
    """``preexec_fn`` part: lift the child's soft descriptor limit to ``needed`` (up to the hard one)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed if hard == resource.RLIM_INFINITY else min(needed, hard), hard))


class BrokerStartCrashed(BrokerError):
    """The broker process died by a signal before it listened, having logged nothing."""


class BrokerUnsupported(BrokerError, UsageError):
    """The broker in use cannot do what was asked (amqtt has no mutual-TLS listener)."""


@dataclass(frozen=True)
class DeviceCredentials:
    """A device's account; the password and private key are `Secret`s (shown as ``***``)."""

    device_id: str
    username: str
    password: Secret
    client_cert_pem: str
    client_key_pem: Secret


def free_port() -> int:
    """A loopback port for a listener that restarts on it (the broker's): reserved for this
    process outside the kernel's ephemeral range (`hil.services.ports`)."""
    return reserve_port()


class MosquittoBroker:
    """mosquitto with plain, TLS and mTLS listeners, a password file and an ACL."""

    name = "mosquitto"
    #: What this broker honours; a test asks with ``@pytest.mark.requires("broker_<feature>")``.
    #: ``protocol_log``: what clients send (CONNECT, SUBSCRIBE, PUBLISH flags) can be read
    #: back from the broker's log (`protocol_log`).
    features: frozenset[str] = frozenset({"tls", "mtls", "password_file", "acl", "persistence", "protocol_log"})

    def __init__(
        self,
        workdir: Path,
        *,
        executable: str | None = None,
        log_path: Path | None = None,
        log_types: tuple[str, ...] = PROTOCOL_LOG_TYPES,
    ) -> None:
        self.workdir = workdir
        self.log_types = log_types
        if not {"all", "debug"} & set(log_types):  # no packet headers in the log to read back
            self.features = self.features - {"protocol_log"}
        # Keys and password files stay in workdir (private); the log can go with the logs.
        self.log_path = log_path or workdir / f"{self.name}.log"
        self.executable = self._find_executable(executable)
        self.ca = trustme.CA()
        self._server_cert = self.ca.issue_cert("127.0.0.1", "localhost")
        self.plain_port = free_port()
        self.tls_port = free_port()
        self.mtls_port: int | None = free_port()
        self.observer_password = Secret(os.urandom(8).hex())
        self._devices: dict[str, DeviceCredentials] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._asked_to_stop = False  # stop/kill/restart: an exit then is no failure
        self._log_origin: int | None = None
        self.limits: BrokerLimits | None = None  # None: a session's defaults

    @staticmethod
    def _find_executable(executable: str | None) -> str:
        found = executable or shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(found).exists():
            raise BrokerError("mosquitto is not installed; run 'apt-get install mosquitto' (setup.sh does)")
        return found

    def _command(self, config: Path) -> list[str]:
        return [self.executable, "-c", str(config)]

    @functools.cached_property
    def version(self) -> str | None:
        """The broker's version (``mosquitto -h`` says it), or None when it does not say:
        what a gate's summary names besides "embedded"."""
        try:
            run = subprocess.run([self.executable, "-h"], capture_output=True, text=True, timeout=5, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        match = re.search(r"mosquitto version (\S+)", run.stdout + run.stderr)
        return match.group(1) if match else None

    @property
    def listeners(self) -> dict[str, int]:
        """The listeners this broker runs: kind (plain, tls, mtls) -> loopback port."""
        ports = {"plain": self.plain_port, "tls": self.tls_port, "mtls": self.mtls_port}
        return {kind: port for kind, port in ports.items() if port is not None}

    # -- identities ---------------------------------------------------------------
    @property
    def ca_pem(self) -> str:
        return self.ca.cert_pem.bytes().decode()

    def add_device(self, device_id: str) -> DeviceCredentials:
        """Create a device account (password and client certificate); restart to apply."""
        cert = issue_device_certificate(self.ca, device_id)
        creds = DeviceCredentials(
            device_id=device_id,
            username=device_id,
            password=Secret(os.urandom(8).hex()),
            client_cert_pem=cert.chain_pem,
            client_key_pem=Secret(cert.key_pem),
        )
        self._devices[device_id] = creds
        return creds

    def credentials(self, device_id: str) -> DeviceCredentials:
        try:
            return self._devices[device_id]
        except KeyError:
            raise BrokerError(f"no account for {device_id!r}; add_device() it before start()") from None

    def uri(self, kind: str = "plain") -> str:
        if kind not in self.listeners:
            raise BrokerUnsupported(f"{self.name} has no {kind!r} listener (it has {sorted(self.listeners)})")
        port = self.listeners[kind]
        return f"{'mqtt' if kind == 'plain' else 'mqtts'}://127.0.0.1:{port}"

    def _users(self) -> dict[str, Secret]:
        """Every account's password: the observer's, then each device's."""
        return {OBSERVER_USER: self.observer_password, **{d.username: d.password for d in self._devices.values()}}

    # -- config -------------------------------------------------------------------
    def _write_config(self) -> Path:
        work = self.workdir
        work.mkdir(parents=True, exist_ok=True)
        (work / "persistence").mkdir(exist_ok=True)
        self.ca.cert_pem.write_to_path(str(work / "ca.pem"))
        write_private(work / "server.key", self._server_cert.private_key_pem.bytes())
        self._server_cert.cert_chain_pems[0].write_to_path(str(work / "server.pem"))
        passwords = work / "passwd"
        # Plain "user:password" lines, hashed in place by one mosquitto_passwd -U: one
        # process instead of one per account (200 devices: 30 ms instead of 1.5 s). The
        # file is 0600 from its creation (mosquitto_passwd keeps the mode).
        write_private(passwords, "".join(f"{user}:{password.reveal()}\n" for user, password in self._users().items()))
        subprocess.run(["mosquitto_passwd", "-U", str(passwords)], check=True, capture_output=True)
        acl = work / "acl"
        acl.write_text(
            # '#' does not match $SYS topics: the observer reads the broker's own counters
            # (messages dropped, for the fleet load gate) by a rule of their own.
            f"user {OBSERVER_USER}\ntopic readwrite #\ntopic read $SYS/#\n\n"
            "pattern readwrite esp32/%u/#\n"
            "pattern read config/update/%u\n"
            "pattern read ota/update/%u\n"
            "pattern read programs/%u/deploy\n"
        )
        config = work / "mosquitto.conf"
        # Started as root, mosquitto would drop to its own user, which cannot reach a
        # private temp dir; it keeps the identity of whoever started the test instead.
        user = "user root\n" if os.geteuid() == 0 else ""
        limits = self.limits
        config.write_text(
            user + "per_listener_settings false\n"
            "allow_anonymous false\n"
            f"password_file {passwords}\n"
            f"acl_file {acl}\n"
            f"persistence {'false' if limits and not limits.persistence else 'true'}\n"
            f"persistence_location {work / 'persistence'}/\n"
            "log_dest stderr\n"
            + "".join(f"log_type {kind}\n" for kind in self.log_types)
            + f"max_queued_messages {limits.max_queued_messages if limits else DEFAULT_MAX_QUEUED_MESSAGES}\n"
            f"sys_interval {SYS_INTERVAL_S}\n"
            f"\nlistener {self.plain_port} 127.0.0.1\n"
            f"\nlistener {self.tls_port} 127.0.0.1\n"
            f"cafile {work / 'ca.pem'}\ncertfile {work / 'server.pem'}\nkeyfile {work / 'server.key'}\n"
            f"\nlistener {self.mtls_port} 127.0.0.1\n"
            f"cafile {work / 'ca.pem'}\ncertfile {work / 'server.pem'}\nkeyfile {work / 'server.key'}\n"
            "require_certificate true\nuse_identity_as_username true\n"
        )
        return config

    # -- lifecycle ----------------------------------------------------------------
    def start(self) -> None:
        try:
            self._start_once()
        except BrokerStartCrashed as exc:
            # Killed by a signal before it listened, with nothing in its log: the fork
            # child died before exec (seen with gRPC's fork handlers loaded, in labgrid
            # sessions). Not the broker's doing; one more start, said in the log.
            with contextlib.suppress(OSError), self.log_path.open("a") as log:
                log.write(f"hil: {exc}; starting it once more\n")
            self._start_once()

    def _start_once(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        config = self._write_config()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        if self._log_origin is None:
            self._log_origin = log_start  # the log may hold earlier runs: this one starts here
        log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            self._command(config),
            stdout=log,
            stderr=log,
            preexec_fn=self._preexec,  # own process group, and gone if we are killed
        )
        self._asked_to_stop = False
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        for port in self.listeners.values():
            while True:
                if self._proc.poll() is not None:
                    tail = self.log_path.read_text(errors="replace")[-2000:]
                    said = self.log_path.read_bytes()[log_start:].strip()
                    crashed = self._proc.returncode < 0 and not said
                    error = BrokerStartCrashed if crashed else BrokerError
                    raise error(f"{self.name} exited with {self._proc.returncode}:\n{tail}")
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
                if time.monotonic() > deadline:
                    self.kill()
                    raise BrokerError(f"{self.name} did not listen on 127.0.0.1:{port} within {START_TIMEOUT_S} s")
                time.sleep(0.02)  # polling a port that has no event to wait on

    def _preexec(self) -> None:
        die_with_parent()
        if self.limits is not None:
            _raise_soft_limit(self.limits.open_files)

    def apply_limits(self, limits: BrokerLimits | None) -> None:
        """Size the broker for a fleet (None: back to a session's defaults), checked first:
        `BrokerLimitError` names the figure and the fix when this host cannot give it.
        A running mosquitto takes the queue limit and persistence on a reload (SIGHUP,
        nobody dropped) and its descriptor limit through prlimit; a restart keeps them."""
        if limits is not None:
            check_open_files(limits.open_files, f"{self.name} for {limits.clients} clients")
        self.limits = limits
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        if limits is not None:
            soft, hard = resource.prlimit(proc.pid, resource.RLIMIT_NOFILE)
            if soft != resource.RLIM_INFINITY and soft < limits.open_files:
                resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (limits.open_files, hard))
        self._apply_running()

    def _apply_running(self) -> None:
        self.reload()

    def open_files_limit(self) -> int | None:
        """The running broker's soft descriptor limit (None: not running)."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return None
        return resource.prlimit(proc.pid, resource.RLIMIT_NOFILE)[0]

    def protocol_log(self) -> BrokerLogReader:
        """What clients sent this broker since it was first started (CONNECT with its
        keepalive, clean-session flag and will; SUBSCRIBE; PUBLISH QoS and retain), read
        from its log: see `hil.services.broker_log`. Marks and waits are the reader's."""
        return BrokerLogReader(self.log_path, origin=self._log_origin or 0)

    def stop(self) -> None:
        """Stop cleanly (persistence saved, sessions kept for the next start)."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """Kill -9: what a crashed broker looks like to its clients."""
        self._signal(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def reload(self) -> None:
        """Apply accounts added since start without dropping anyone: mosquitto re-reads
        its password file and ACL on SIGHUP. Returns once the newest account can log in
        (the reload is asynchronous), so a client started next is not refused."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            self.start()
            return
        self._write_config()
        os.kill(proc.pid, signal.SIGHUP)
        if self._devices:
            newest = list(self._devices.values())[-1]
            _wait_login(self.plain_port, newest.username, newest.password.reveal(), RELOAD_TIMEOUT_S)

    def unexpected_exit(self) -> int | None:
        """The exit status (negative: the signal) of a broker that ended without `stop`,
        `kill` or `restart` asking it to: it died under the session (None: running, asked
        to stop, or never started)."""
        if self._proc is None or self._asked_to_stop:
            return None
        return self._proc.poll()

    def _signal(self, sig: signal.Signals) -> None:
        self._asked_to_stop = True
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    close = stop

    def __enter__(self) -> MosquittoBroker:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class AmqttBroker(MosquittoBroker):
    """amqtt (pure Python), the embedded fallback broker where mosquitto is not installed.

    Same interface, accounts and lifecycle as `MosquittoBroker`, run as its own process
    (``python -m hil.services.amqtt_broker CONFIG``) from a generated JSON config: a plain and a
    TLS listener, a password file (argon2 hashes, amqtt's FileAuthPlugin), and the same
    ACL. amqtt's ACL plugin has no ``%u`` pattern, so the pattern is written out per
    account (accounts are known when the config is written; a restart applies new ones,
    as with mosquitto).

    What amqtt cannot honour, and ``features`` therefore leaves out: a listener that
    *requires* a client certificate and takes its CN as the username (its TLS context
    only asks for one; there is no ``use_identity_as_username``), so there is no mTLS
    listener and ``uri("mtls")`` raises `BrokerUnsupported`; and persistence (retained
    messages and sessions are lost on a restart; amqtt's store needs SQLAlchemy).
    """

    name = "amqtt"
    features: frozenset[str] = frozenset({"tls", "password_file", "acl"})

    def __init__(
        self,
        workdir: Path,
        *,
        executable: str | None = None,
        log_path: Path | None = None,
        log_types: tuple[str, ...] = PROTOCOL_LOG_TYPES,
    ) -> None:
        super().__init__(workdir, executable=executable, log_path=log_path, log_types=log_types)
        self.mtls_port = None

    @staticmethod
    def _find_executable(executable: str | None) -> str:
        if importlib.util.find_spec("amqtt") is None:
            raise BrokerError(
                "neither mosquitto nor amqtt is installed; run 'apt-get install mosquitto' "
                "or 'pip install -e .[dev]' (amqtt)"
            )
        return executable or sys.executable

    def _command(self, config: Path) -> list[str]:
        return [self.executable, "-m", "hil.services.amqtt_broker", str(config)]

    @functools.cached_property
    def version(self) -> str | None:
        """The installed amqtt's version."""
        try:
            return importlib.metadata.version("amqtt")
        except importlib.metadata.PackageNotFoundError:
            return None

    def protocol_log(self) -> BrokerLogReader:
        raise BrokerUnsupported("amqtt does not log the packets clients send (no 'protocol_log' feature)")

    def _apply_running(self) -> None:
        """amqtt has neither a queue limit nor persistence to set, and a reload would be a
        restart: only the descriptor limit (already set) applies."""

    def reload(self) -> None:
        """amqtt reads its accounts only at start: a restart (clients reconnect, and
        without persistence their sessions and retained messages are gone)."""
        self.restart()

    def acl(self) -> dict[str, dict[str, list[str]]]:
        """mosquitto's ACL, per account: the topic filters it may publish to (``publish_acl``)
        and subscribe to (``acl``; amqtt checks reads at SUBSCRIBE time only)."""
        publish = {OBSERVER_USER: ["#"]}
        read = {OBSERVER_USER: ["#"]}
        for device in self._devices.values():
            own = f"esp32/{device.username}/#"
            publish[device.username] = [own]
            read[device.username] = [
                own,
                f"config/update/{device.username}",
                f"ota/update/{device.username}",
                f"programs/{device.username}/deploy",
            ]
        return {"publish_acl": publish, "acl": read}

    def _write_config(self) -> Path:
        # Light argon2 parameters: a test broker's throwaway passwords, and every CONNECT
        # pays the verification (the defaults cost ~0.2 s of CPU each).
        from pwdlib.hashers.argon2 import Argon2Hasher

        work = self.workdir
        work.mkdir(parents=True, exist_ok=True)
        self.ca.cert_pem.write_to_path(str(work / "ca.pem"))
        write_private(work / "server.key", self._server_cert.private_key_pem.bytes())
        self._server_cert.cert_chain_pems[0].write_to_path(str(work / "server.pem"))
        hasher = Argon2Hasher(time_cost=1, memory_cost=1024, parallelism=1)
        passwords = work / "passwd"
        write_private(passwords, "".join(f"{user}:{hasher.hash(pw.reveal())}\n" for user, pw in self._users().items()))
        tls: dict[str, Any] = {
            "type": "tcp",
            "bind": f"127.0.0.1:{self.tls_port}",
            "ssl": True,
            "cafile": str(work / "ca.pem"),
            "certfile": str(work / "server.pem"),
            "keyfile": str(work / "server.key"),
        }
        config: dict[str, Any] = {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.plain_port}"}, "tls": tls},
            "plugins": {
                "amqtt.plugins.authentication.FileAuthPlugin": {"password_file": str(passwords)},
                "amqtt.plugins.topic_checking.TopicAccessControlListPlugin": self.acl(),
            },
        }
        path = work / "amqtt.json"
        path.write_text(json.dumps(config, indent=2))
        return path


def broker_class(choice: str, *, which: Any = shutil.which) -> type[MosquittoBroker]:
    """``--broker`` to a class: 'mosquitto', 'amqtt', or 'embedded' (mosquitto when it is on
    PATH, else amqtt)."""
    if choice == "mosquitto":
        return MosquittoBroker
    if choice == "amqtt" or (choice == "embedded" and which("mosquitto") is None):
        return AmqttBroker
    if choice == "embedded":
        return MosquittoBroker
    raise BrokerError(f"unknown embedded broker {choice!r}: use 'embedded', 'mosquitto' or 'amqtt'")


def _wait_login(port: int, username: str, password: str, timeout: float) -> None:
    """Log in on the plain listener until the broker accepts ``username`` (or raise)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    deadline = time.monotonic() + timeout
    last = "no CONNACK"
    while True:
        answers: list[Any] = []
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"hil-login-probe-{os.getpid()}-{time.monotonic_ns()}")
        client.username_pw_set(username, password)
        client.user_data_set(answers)
        client.on_connect = lambda _c, found, _f, reason, _p: found.append(reason)
        try:
            client.connect("127.0.0.1", port, keepalive=10)
            wait_until = min(deadline, time.monotonic() + 2.0)
            while not answers and time.monotonic() < wait_until:
                client.loop(timeout=0.1)
        except OSError as exc:
            last = str(exc)
        finally:
            with contextlib.suppress(Exception):
                client.disconnect()
                client.loop(timeout=0.01)  # sends DISCONNECT and closes the socket
        if answers and not answers[0].is_failure:
            return
        if answers:
            last = str(answers[0])
        if time.monotonic() >= deadline:
            raise BrokerError(f"127.0.0.1:{port} still refuses {username!r} {timeout} s after a reload: {last}")
        time.sleep(0.05)  # the reload has no event to wait on: ask again shortly
