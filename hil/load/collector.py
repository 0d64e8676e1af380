"""The collector: a plain paho subscriber, logged in with the observer account, straight to
the broker: every device's readings, ``online`` announcements and health, and the
broker's ``$SYS`` counters."""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from hil.device import contract
from hil.load.errors import LoadError
from hil.load.target import LoadTarget
from hil.secret import reveal
from hil.services.mqtt import _load_client_identity

SYS_DROPPED = "$SYS/broker/publish/messages/dropped"
SYS_TICK = "$SYS/broker/uptime"  # changes at every $SYS update: a clock to wait on


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
        self._aborted: BaseException | None = None
        self._subscribed = threading.Event()
        self.subscribed_at: list[float] = []  # monotonic: each (re)subscription the broker granted
        # On the run's own broker the session is persistent: what the broker holds for the
        # collector (its queue, in flight) survives a restart of the broker (the restart
        # storm) with persistence on. Never on an external broker: a session left there
        # would queue the fleet's topics for a client that is gone.
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"hil-load-{os.getpid()}-{time.monotonic_ns()}",
            clean_session=target.restartable is None,
        )
        if target.observer_user:
            self.client.username_pw_set(target.observer_user, reveal(target.observer_password))
        if target.tls:
            context = ssl.create_default_context(cadata=target.ca_pem)
            if target.observer_client_cert and target.observer_client_key:
                _load_client_identity(context, target.observer_client_cert, target.observer_client_key.reveal())
            self.client.tls_set_context(context)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
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

    def _on_subscribe(self, *_args: Any) -> None:
        with self._cond:
            self.subscribed_at.append(time.monotonic())
            self._cond.notify_all()
        self._subscribed.set()

    def wait_subscribed(self, since: float, timeout: float) -> bool:
        """Wait until the collector has subscribed again after ``since`` (monotonic): after
        a broker restart it reconnects on its own (paho), and resubscribes in on_connect."""
        with self._cond:
            done = self._cond.wait_for(
                lambda: self._aborted is not None or any(t > since for t in self.subscribed_at), timeout
            )
            self._check_aborted()
            return done

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

    def abort(self, exc: BaseException) -> None:
        """Make every wait, now and later, raise ``exc`` (the fleet broke: waiting for its
        devices would only time out). Callable from any thread."""
        with self._cond:
            if self._aborted is None:
                self._aborted = exc
            self._cond.notify_all()

    def _check_aborted(self) -> None:
        if self._aborted is not None:
            raise self._aborted

    def wait_each(self, check: Callable[[str], bool], timeout: float) -> set[str]:
        """Wait until ``check(device)`` holds for every device; the ones it does not hold
        for when ``timeout`` runs out (empty: all done). ``check`` runs under the lock.
        Raises what `abort` was given, if it was."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._check_aborted()
            waiter = _Waiter({d for d in self.devices if not check(d)}, check)
            self._waiters.append(waiter)
            try:
                while waiter.pending:
                    self._check_aborted()
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                self._check_aborted()
                return set(waiter.pending)
            finally:
                self._waiters.remove(waiter)

    def wait_sys(self, topic: str, *, count: int, since: float, timeout: float) -> bool:
        """Wait for ``count`` ``$SYS`` messages on ``topic`` received after ``since``."""
        with self._cond:
            done = self._cond.wait_for(
                lambda: self._aborted is not None or sum(1 for t, _ in self.sys[topic] if t > since) >= count,
                timeout,
            )
            self._check_aborted()
            return done

    def sys_value(self, topic: str) -> int | None:
        with self._cond:
            values = self.sys[topic]
            if not values:
                return None
            try:
                return int(values[-1][1].split()[0])
            except (ValueError, IndexError):
                return None

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """Hold the collector still (no message is recorded meanwhile) while a caller reads
        several of its fields that must agree with each other."""
        with self._cond:
            yield

    def caught_up(self, since_wall: float, timeout: float) -> set[str]:
        """Wait until every device's newest reading received was taken at ``since_wall``
        (host wall clock) or later: a device's messages arrive in order, so nothing it
        published before then is still on its way here. The devices that are not there at
        the deadline."""
        return self.wait_each(lambda d: bool(self.readings[d]) and self.readings[d][-1].taken >= since_wall, timeout)

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
