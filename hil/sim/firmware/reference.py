"""The reference firmware model: the environmental monitor of DEVICE_CONTRACT.md.

Asyncio tasks mirroring the seed firmware's embassy tasks — wifi, mqtt, sensor, health,
metrics, ota, programs — plus the task watchdog. Every wait is a timer or an event; an
idle device costs nothing. Which defects are injected comes from the image's behaviour
record, so flashing (or OTA-ing) another image really changes what runs here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import ssl
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

import aiomqtt

from hil.bme280.driver import BME280Driver, SensorError
from hil.device import contract
from hil.device import defects as D
from hil.device.settings import (
    ConfigRejected,
    DeviceConfig,
    Provisioning,
    factory_reset,
    parse_config_update,
    store_config,
)
from hil.images.app import BehaviourRecord
from hil.images.nvs import NvsError, read_nvs, update_nvs
from hil.images.otadata import OtaState
from hil.images.partitions import Partition
from hil.secret import Secret, reveal
from hil.sim.app import AppContext, AppModel, IdleApp
from hil.sim.firmware.http_client import ssl_context_for_ca
from hil.sim.firmware.mqtt_link import (
    BACKOFF_MAX_S,
    FAILOVER_AFTER,
    Backoff,
    BrokerUri,
    abort,
    fail_fast_before_connack,
    tls_context,
)
from hil.sim.firmware.ota import (
    OtaFailed,
    OtaRejected,
    OtaWriter,
    download_to,
    find_rollback,
    mark_app_invalid,
    mark_app_valid,
    next_update_partition,
    parse_ota_request,
    precheck,
    running_entry_state,
    set_boot_partition,
)
from hil.sim.firmware.programs import (
    MAX_PROGRAM_BYTES,
    Budget,
    ProgramError,
    Rejection,
    parse,
    parse_deployment,
    run_program,
)
from hil.sim.firmware.rig import RigPeripherals
from hil.sim.firmware.watchdog import TaskWatchdog
from hil.sim.resets import ResetCause, RomResetCode

MODEL_NAME = "reference"
READING_QUEUE = 512
OTHER_QUEUE = 64
STATS_NAMESPACE = "stats"
CRASH_WINDOW_S = 600.0
CRASHES_FOR_SAFE_MODE = 5
FREE_HEAP = 182_344


def firmware_factory(peripherals: RigPeripherals | None) -> Any:
    """The AppFactory of a board: the reference model for images that name it."""

    def make(behaviour: BehaviourRecord | None) -> AppModel:
        if behaviour is None or behaviour.model != MODEL_NAME:
            return IdleApp()
        return ReferenceFirmware(behaviour, peripherals)

    return make


@dataclass
class Outbox:
    """What waits to be published: readings (bounded, oldest dropped and counted) first."""

    readings: deque[tuple[str, bytes, bool]] = field(default_factory=lambda: deque(maxlen=READING_QUEUE))
    other: deque[tuple[str, bytes, bool]] = field(default_factory=lambda: deque(maxlen=OTHER_QUEUE))
    dropped_readings: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    newest_first: bool = False
    """The ``backlog_newest_first`` defect: readings are taken from the end (a stack)."""

    def put_reading(self, topic: str, payload: bytes) -> None:
        if len(self.readings) == self.readings.maxlen:
            self.dropped_readings += 1
        self.readings.append((topic, payload, False))
        self.ready.set()

    def put(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.other.append((topic, payload, retain))
        self.ready.set()

    def peek(self) -> tuple[deque[tuple[str, bytes, bool]], tuple[str, bytes, bool]] | None:
        for queue in (self.other, self.readings):
            if queue:
                return queue, queue[-1] if self.newest_first and queue is self.readings else queue[0]
        return None


class ReferenceFirmware:
    """One boot of the reference firmware."""

    def __init__(self, behaviour: BehaviourRecord, peripherals: RigPeripherals | None) -> None:
        self.behaviour = behaviour
        self.defects = frozenset(behaviour.defects)
        self.test_hooks = bool(behaviour.params.get("test_hooks", False))
        self.rig = peripherals

    # -- boot ----------------------------------------------------------------------
    async def run(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.log = ctx.log
        desc = ctx.image.descriptor
        self.version = desc.version if desc else "unknown"
        self.reset_reason = ctx.reset_cause.idf_reason
        if ctx.rtc_memory.pop("reset_command", False) and D.RESET_REPORTS_POWERON in self.defects:
            self.reset_reason = "POWERON"  # the defect: the cold-boot flag was cleared
        self.rng = random.Random(int.from_bytes(ctx.mac, "big") ^ int(time.time() * 1000))
        if D.CRASH_ON_BOOT in self.defects:
            await asyncio.sleep(0.05)  # early in app_main
            self._panic("Load access fault")
            return

        nvs_part = ctx.table.nvs
        if nvs_part is None:
            self.log("E", "app", "no nvs partition")
            await asyncio.Event().wait()
            return
        self.nvs_part: Partition = nvs_part
        try:
            namespaces = read_nvs(self._nvs_image())
        except NvsError as exc:
            self.log("E", "nvs", f"nvs partition unreadable: {exc}")
            namespaces = {}
        prov = Provisioning.from_nvs(namespaces)
        if prov is None:
            self.log("E", "app", "not provisioned")
            if D.REBOOTS_WHEN_UNPROVISIONED in self.defects:
                await asyncio.sleep(0.5)  # app_main goes on to read the missing keys
                self._panic("abort() was called: ESP_ERROR_CHECK failed: ESP_ERR_NVS_NOT_FOUND")
                return
            await asyncio.Event().wait()  # waits for provisioning; never boot-loops
            return
        if "wifi_pass" in self.behaviour.params:
            # Credentials compiled into the build (CONFIG_ESP_WIFI_PASSWORD) win over NVS:
            # the IDT case of an update that cannot connect.
            prov = replace(prov, wifi_pass=Secret(str(self.behaviour.params["wifi_pass"])))
        self.prov = prov
        self.device_id = prov.device_id
        if D.CONFIG_NOT_PERSISTED in self.defects and "config_nvs" in ctx.rtc_memory:
            namespaces = read_nvs(ctx.rtc_memory["config_nvs"])  # survives a SW reset only
        config = DeviceConfig.from_nvs(namespaces)
        # Stored garbage (the no-validation defect) reaches the timers as it would on the
        # chip; the floor in _wait only keeps a zero interval from spinning the host.
        self.config = config if D.CONFIG_WITHOUT_VALIDATION in self.defects else config.clamped()
        self._count_boot(namespaces)
        self.safe_mode = self._boot_loop_guard()

        if D.PRINTS_SECRETS in self.defects:
            self.log("I", "wifi", f"credentials ssid={prov.wifi_ssid} password={reveal(prov.wifi_pass)}")
        self.log("I", "app", f"device_id={self.device_id} version={self.version} reset_reason={self.reset_reason}")

        self.outbox = Outbox(newest_first=D.BACKLOG_NEWEST_FIRST in self.defects)
        self.connected = asyncio.Event()
        self.wifi_up = asyncio.Event()
        self.wifi_down = asyncio.Event()
        self.wifi_down.set()
        self.sensor_ok = asyncio.Event()
        self.last_reading: dict[str, float] | None = None
        self.last_reading_at: float | None = None
        self.seq = 0
        self.error_count = 0
        self.boot_time = time.monotonic()
        self.sensor_failure_raised = False
        self.hang: set[str] = set()
        self.program_task: asyncio.Task[None] | None = None
        self.led = False
        self.deep_sleep = asyncio.Event()
        self.background: set[asyncio.Future[Any]] = set()

        watchdog_s = float(self.config.watchdog_timeout_s)
        if D.WATCHDOG_TIMEOUT_DOUBLED in self.defects:
            watchdog_s *= 2
        if D.WATCHDOG_TIMEOUT_HALVED in self.defects:
            watchdog_s /= 2
        self.watchdog = TaskWatchdog(watchdog_s, log=self.log, on_trigger=self._watchdog_fired)
        self.pending_verify = running_entry_state(ctx.flash, ctx.table, ctx.running) == OtaState.PENDING_VERIFY

        try:
            await self._run_tasks()
        except* _DeepSleep:
            self.log("I", "app", "entering deep sleep until the next power-on")
            await asyncio.Event().wait()

    async def _run_tasks(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._sleep_guard())
            if D.WATCHDOG_DISABLED not in self.defects:
                tasks.create_task(self.watchdog.run())
            tasks.create_task(self._wifi_task())
            tasks.create_task(self._mqtt_task())
            if not self.safe_mode:
                tasks.create_task(self._sensor_task())
            else:
                self.log("W", "app", "safe mode: sensor task not started")
            tasks.create_task(self._health_task())
            tasks.create_task(self._metrics_task())
            tasks.create_task(self._ota_boot_task())

    def _spawn(self, work: Any) -> None:
        """Run a handler in the background, keeping a reference until it is done."""
        task = asyncio.ensure_future(work)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _sleep_guard(self) -> None:
        await self.deep_sleep.wait()
        raise _DeepSleep

    def _count_boot(self, namespaces: dict[str, dict[str, Any]]) -> None:
        stats = namespaces.get(STATS_NAMESPACE, {})
        self.boot_count = int(stats.get("boot_count", 0)) + 1
        counted = self.reset_reason != "POWERON" and D.RESTART_COUNT_STUCK not in self.defects
        self.restart_count = int(stats.get("restart_count", 0)) + (1 if counted else 0)
        self.rollback_seq = int(stats.get("rollback_seq", 0))
        self._store(STATS_NAMESPACE, {"boot_count": self.boot_count, "restart_count": self.restart_count})

    def _nvs_image(self) -> bytes:
        return self.ctx.flash.read(self.nvs_part.offset, self.nvs_part.size)

    def _write_nvs(self, image: bytes) -> None:
        # NOR flash: the partition is erased before the new image goes in.
        self.ctx.flash.erase(self.nvs_part.offset, self.nvs_part.size)
        self.ctx.flash.write(self.nvs_part.offset, image)

    def _store(self, namespace: str, values: dict[str, Any]) -> None:
        self._write_nvs(update_nvs(self._nvs_image(), namespace, values))

    def _boot_loop_guard(self) -> bool:
        if D.NO_BOOT_LOOP_GUARD in self.defects:
            return False  # the defect: the crash count is kept in RAM, lost at every reset
        crashes: list[float] = self.ctx.rtc_memory.setdefault("crash_times", [])
        now = time.monotonic()
        if self.reset_reason in ("PANIC", "TASK_WDT", "INT_WDT", "WDT"):
            crashes.append(now)
        crashes[:] = [t for t in crashes if now - t < CRASH_WINDOW_S]
        return len(crashes) >= CRASHES_FOR_SAFE_MODE

    # -- leaving ------------------------------------------------------------------
    def _restart(self, hint: str) -> None:
        self.ctx.restart(ResetCause(RomResetCode.RTC_SW_CPU_RST, hint=hint))

    def _panic(self, cause: str) -> None:
        write = self.ctx.write
        write(f"Guru Meditation Error: Core  0 panic'ed ({cause}). Exception was unhandled.\r\n\r\n".encode())
        write(b"Core  0 register dump:\r\nMEPC    : 0x42064418  RA      : 0x42061946  SP      : 0x3fccc460  GP      : 0x3fc92200\r\n\r\n")
        write(b"ELF file SHA256: 7c88102a732dcb9b\r\n\r\nRebooting...\r\n")
        self._restart("PANIC")

    def _watchdog_fired(self, late: list[str]) -> None:
        self._restart("TASK_WDT")

    async def _feed_while(self, task: str) -> None:
        while True:
            await self._wait(task, self.watchdog.timeout_s)

    async def _wait(self, task: str, seconds: float) -> None:
        """Sleep ``seconds`` while still feeding the watchdog at least twice per timeout."""
        deadline = time.monotonic() + max(seconds, 0.1)
        while True:
            if task not in self.hang:
                self.watchdog.feed(task)
            left = deadline - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(left, self.watchdog.timeout_s / 2))

    # -- publishing ---------------------------------------------------------------
    def publish(self, topic: str, payload: dict[str, Any], *, retain: bool = False) -> None:
        data = json.dumps(payload).encode()
        if not self.connected.is_set() and topic.endswith("/health"):
            return  # a heartbeat nobody hears is not queued
        self.outbox.put(topic, data, retain=retain)

    def alert(self, level: str, code: str, message: str) -> None:
        self.publish(
            contract.alerts_topic(self.device_id),
            {"level": level, "code": code, "message": message, "device_id": self.device_id, "timestamp": time.time()},
        )

    def log_mirrored(self, level: str, tag: str, message: str) -> None:
        self.log(level, tag, message)
        mirrored = ("E",) if D.WARNINGS_NOT_MIRRORED in self.defects else ("W", "E")
        if level in mirrored and self.connected.is_set():
            name = {"W": "warning", "E": "error"}[level]
            self.outbox.put(
                contract.logs_topic(self.device_id),
                json.dumps({"level": name, "tag": tag, "message": message, "timestamp": time.time()}).encode(),
            )

    # -- wifi ---------------------------------------------------------------------
    async def _wifi_task(self) -> None:
        rig = self.rig
        lost_once = False
        while True:
            if rig is None:
                await asyncio.Event().wait()
                return
            ap = rig.ap
            changed = asyncio.ensure_future(ap.changed())
            try:
                joinable = ap.accepts(self.prov.wifi_ssid, reveal(self.prov.wifi_pass))
                if lost_once and D.NO_WIFI_RECONNECT in self.defects:
                    joinable = False
                if joinable and not self.wifi_up.is_set():
                    self.log("I", "wifi", f"connected ssid={ap.ssid} rssi={ap.rssi}")
                    self.wifi_down.clear()
                    self.wifi_up.set()
                elif not joinable and self.wifi_up.is_set():
                    lost_once = True
                    self.wifi_up.clear()
                    self.wifi_down.set()
                    self.log_mirrored("W", "wifi", "disconnected reason=beacon_timeout")
                elif not joinable:
                    reason = "no_ap_found" if not ap.up or ap.ssid != self.prov.wifi_ssid else "auth_fail"
                    self.log("W", "wifi", f"connect failed ssid={self.prov.wifi_ssid} reason={reason}")
                    if D.REBOOTS_ON_WIFI_FAILURE in self.defects:
                        self._restart("SW")  # the defect: "cannot join, try a reboot"
                        return
                # Wait for the AP to change, or retry a failed join after 5 s.
                timeout = None if self.wifi_up.is_set() else 5.0
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(changed), timeout)
            finally:
                changed.cancel()

    # -- mqtt ---------------------------------------------------------------------
    def _brokers(self) -> list[BrokerUri]:
        uris = list(self.config.brokers) or [self.prov.mqtt_uri or ""]
        if D.NO_BROKER_FAILOVER in self.defects:
            uris = uris[:1]
        return [BrokerUri.parse(u) for u in uris]

    async def _mqtt_task(self) -> None:
        self.watchdog.subscribe("mqtt")
        brokers = self._brokers()
        index = 0
        failures = 0
        backoff = Backoff(
            self.rng,
            enabled=D.RECONNECT_WITHOUT_BACKOFF not in self.defects,
            cap_s=60.0 if D.BACKOFF_CAP_60S in self.defects else BACKOFF_MAX_S,
        )
        while True:
            while not self.wifi_up.is_set():
                self.watchdog.feed("mqtt")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wifi_up.wait(), self.watchdog.timeout_s / 2)
            uri = brokers[index]
            # The task is busy, not hung, while a connection attempt (TCP, TLS, CONNACK:
            # up to 10 s) or a session is under way: it checks in meanwhile, as the C
            # firmware's MQTT event loop does. A `hang` of the mqtt task stops this too.
            feeder = asyncio.ensure_future(self._feed_while("mqtt"))
            try:
                reason = await self._session(uri)
            finally:
                feeder.cancel()
            if reason is None:  # emergency shutdown: disconnected cleanly, now sleep
                if D.SHUTDOWN_WITHOUT_SLEEP not in self.defects:
                    self.deep_sleep.set()
                    return
                reason = "emergency_shutdown"  # the defect: no deep sleep, so it reconnects
            if self._ever_connected_now:
                backoff.reset()  # the backoff restarts after every successful connect
                failures = 0
            else:
                failures += 1
            if len(brokers) > 1 and failures >= FAILOVER_AFTER:
                if D.FAILOVER_NO_WRAP in self.defects:
                    index = min(index + 1, len(brokers) - 1)
                else:
                    index = (index + 1) % len(brokers)
                failures = 0
            delay = backoff.next_delay()
            self.log_mirrored("W", "mqtt", f"disconnected reason={reason} retry_ms={int(delay * 1000)}")
            await self._wait("mqtt", delay)

    async def _session(self, uri: BrokerUri) -> str | None:
        """One connection: returns why it ended, or None after an emergency shutdown."""
        self._ever_connected_now = False
        prov = self.prov
        will = None
        if D.NO_LAST_WILL not in self.defects:
            will = aiomqtt.Will(
                contract.status_topic(self.device_id),
                json.dumps({"state": "offline"}).encode(),
                qos=0 if D.WILL_QOS0 in self.defects else 1,
                retain=D.WILL_NOT_RETAINED not in self.defects,
            )
        try:
            tls = tls_context(prov.ca_cert, prov.client_cert, reveal(prov.client_key)) if uri.tls else None
            if tls is not None and D.TLS_NO_VERIFY in self.defects:
                tls.check_hostname = False
                tls.verify_mode = ssl.CERT_NONE
            if tls is not None and D.TLS_NO_HOSTNAME_CHECK in self.defects:
                tls.check_hostname = False  # the chain is still verified against the CA
        except (ValueError, OSError) as exc:
            return f"tls_config:{type(exc).__name__}"
        client = aiomqtt.Client(
            uri.host,
            uri.port,
            # esp-mqtt's default client id when none is set: ESP32_ and the MAC's last 3 bytes.
            identifier=f"ESP32_{self.ctx.mac[3:].hex().upper()}" if D.DEFAULT_CLIENT_ID in self.defects else self.device_id,
            username=prov.mqtt_user,
            password=reveal(prov.mqtt_pass),
            will=will,
            clean_session=D.CLEAN_SESSION in self.defects,
            keepalive=120 if D.KEEPALIVE_DEFAULT in self.defects else 15,
            tls_context=tls,
            timeout=10,
        )
        fail_fast_before_connack(client)
        ended = "connection_lost"
        try:
            async with client:
                self._ever_connected_now = True
                shown = str(uri)
                if D.CREDENTIALS_IN_URI_LOG in self.defects:
                    shown = f"{uri.scheme}://{prov.mqtt_user}:{reveal(prov.mqtt_pass)}@{uri.host}:{uri.port}"
                if D.LOG_TICKS_AS_MS in self.defects:
                    ticks = self.ctx.uptime_ms() // 10  # xTaskGetTickCount() at 100 Hz
                    self.ctx.write(f"I ({ticks}) mqtt: connected uri={shown}\r\n".encode())
                else:
                    self.log("I", "mqtt", f"connected uri={shown}")
                self.connected.set()
                online = {"state": "online", "version": self.version, "reset_reason": self.reset_reason, "boot_count": self.boot_count}
                await client.publish(
                    contract.status_topic(self.device_id),
                    json.dumps(online).encode(),
                    qos=1,
                    retain=D.ONLINE_NOT_RETAINED not in self.defects,
                )
                if D.PUBLISHES_OUTSIDE_PREFIX in self.defects:
                    await client.publish("esp32/announce", json.dumps({"device_id": self.device_id}).encode(), qos=1)
                for topic in contract.device_subscriptions(self.device_id):
                    if D.WILDCARD_COMMAND_SUBSCRIPTION in self.defects and topic == contract.command_topic(self.device_id):
                        topic = "esp32/+/command"
                    await client.subscribe(topic, qos=1)
                result = await self._connected(client)
                if result == "shutdown":
                    return None
                ended = result
        except aiomqtt.MqttError as exc:
            text = str(exc)
            if "CERTIFICATE_VERIFY_FAILED" in text or "certificate" in text.lower():
                self.log("E", "mqtt", f"tls handshake failed uri={uri}: server certificate not trusted")
                ended = "tls_verify_failed"
            elif "Not authorized" in text or "not authorised" in text.lower() or "Bad user name" in text:
                ended = "not_authorized"
            elif "refused" in text.lower():
                ended = "connection_refused"
            else:
                ended = "connection_lost"
        except asyncio.CancelledError:
            abort(client)  # a chip reset says no goodbye
            raise
        finally:
            self.connected.clear()
        return ended

    async def _connected(self, client: aiomqtt.Client) -> str:
        """Run while connected; return why the connection ended."""
        stop: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def receive() -> None:
            try:
                async for message in client.messages:
                    await self._on_message(client, str(message.topic), bytes(message.payload) if isinstance(message.payload, bytes | bytearray) else str(message.payload).encode(), stop)
            except aiomqtt.MqttError:
                if not stop.done():
                    stop.set_result("connection_lost")

        async def drain() -> None:
            while True:
                item = self.outbox.peek()
                if item is None:
                    self.outbox.ready.clear()
                    await self.outbox.ready.wait()
                    continue
                queue, (topic, payload, retain) = item
                try:
                    qos = 0 if D.TELEMETRY_QOS0 in self.defects and topic.endswith("/sensors") else 1
                    await client.publish(topic, payload, qos=qos, retain=retain, timeout=10)
                except aiomqtt.MqttError:
                    if not stop.done():
                        stop.set_result("publish_failed")
                    return
                _raise_lost_cancel()
                if queue and queue[0] is item[1]:
                    queue.popleft()
                elif queue and queue[-1] is item[1]:
                    queue.pop()  # the backlog_newest_first defect took it from the end

        async def watch_wifi() -> None:
            await self.wifi_down.wait()
            abort(client)
            if not stop.done():
                stop.set_result("wifi_lost")

        workers = [asyncio.ensure_future(w()) for w in (receive, drain, watch_wifi)]
        try:
            _raise_lost_cancel()  # a reset during the connect-time publish and subscribes
            return await stop
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            # Cancelled (a chip reset, power off), `await stop` cancels `stop` too: that is
            # no shutdown, so the link is dropped without DISCONNECT and the will fires.
            shutdown = stop.done() and not stop.cancelled() and stop.result() == "shutdown"
            if not shutdown or D.SHUTDOWN_WITHOUT_DISCONNECT in self.defects:
                abort(client)

    async def _on_message(self, client: aiomqtt.Client, topic: str, payload: bytes, stop: asyncio.Future[str]) -> None:
        did = self.device_id
        if topic == contract.command_topic(did):
            await self._on_command(payload)
        elif topic == contract.emergency_topic(did):
            if payload.strip() in (b"shutdown", b'"shutdown"'):
                self.log("W", "app", "emergency shutdown: disconnecting, entering deep sleep")
                await client.publish(contract.status_topic(did), json.dumps({"state": "offline"}).encode(), qos=1, retain=True)
                if not stop.done():
                    stop.set_result("shutdown")
        elif topic == contract.config_update_topic(did):
            self._on_config(payload)
        elif topic == contract.ota_update_topic(did):
            self._spawn(self._on_ota(payload))
        elif topic == contract.programs_deploy_topic(did):
            self._on_program(payload)

    # -- commands -----------------------------------------------------------------
    async def _on_command(self, payload: bytes) -> None:
        ack = contract.command_ack_topic(self.device_id)
        try:
            request = json.loads(payload)
            cmd = request["cmd"]
        except (ValueError, KeyError, TypeError):
            self.publish(ack, {"cmd": None, "ok": False, "error": "malformed command"})
            return
        if not isinstance(cmd, str):  # the ack names a command only by a string (§4 schema)
            self.publish(ack, {"cmd": None, "ok": False, "error": "malformed command: cmd must be a string"})
            return
        if cmd == "reset":
            self.ctx.rtc_memory["reset_command"] = True
            await self._ack_then(ack, cmd, lambda: self._restart("SW"))
        elif cmd == "report":
            self.publish(ack, {"cmd": cmd, "ok": True})
            self._publish_health()
        elif cmd == "factory_reset":
            self._write_nvs(factory_reset(self._nvs_image()))
            await self._ack_then(ack, cmd, lambda: self._restart("SW"))
        elif cmd == "hang" and self.test_hooks:
            task = request.get("task", "sensor")
            self.hang.add(str(task))
            self.log_mirrored("W", "app", f"test hook: hang task={task}")
            self.publish(ack, {"cmd": cmd, "ok": True})
        elif cmd == "crash" and self.test_hooks:
            await self._ack_then(ack, cmd, lambda: self._panic("Store access fault"))
        else:
            self.publish(ack, {"cmd": cmd, "ok": False, "error": f"unknown command {cmd!r}"})

    async def _ack_then(self, topic: str, cmd: str, then: Any) -> None:
        self.publish(topic, {"cmd": cmd, "ok": True})
        await self._flushed(2.0)
        then()

    async def _flushed(self, timeout: float) -> None:
        """Give the outbox a chance to go out before a restart (as the C firmware waits
        for its PUBACKs), without waiting forever on a dead link."""
        deadline = time.monotonic() + timeout
        while self.outbox.peek() is not None and time.monotonic() < deadline and self.connected.is_set():
            await asyncio.sleep(0.05)

    # -- config -------------------------------------------------------------------
    def _on_config(self, payload: bytes) -> None:
        status = contract.config_status_topic(self.device_id)
        update = parse_config_update(payload, validate=D.CONFIG_WITHOUT_VALIDATION not in self.defects)
        if D.CONFIG_MAX_EXCLUSIVE in self.defects and not isinstance(update, ConfigRejected):
            at_max = [k for k, v in update.values.items() if k in contract.CONFIG_INT_SETTINGS and v >= contract.CONFIG_INT_SETTINGS[k].maximum]
            if at_max:  # the defect: `value < maximum`
                update = ConfigRejected(f"{at_max[0]} out of range", tuple(at_max))
        if isinstance(update, ConfigRejected) and D.REJECTED_CONFIG_APPLIED in self.defects:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                offset = json.loads(payload).get("calibration_offset_temp")  # applied as it was walked
                if isinstance(offset, int | float) and not isinstance(offset, bool) and abs(offset) <= 10:
                    self.config = replace(self.config, calibration_offset_temp=float(offset))
        if isinstance(update, ConfigRejected):
            self.log_mirrored("W", "config", f"rejected: {update.reason}")
            self.publish(status, {"ok": False, "error": update.reason})
            self.alert("warning", "config_rejected", update.reason)
            return
        stored = store_config(self._nvs_image(), self.config, update)
        if D.CONFIG_NOT_PERSISTED in self.defects:
            self.ctx.rtc_memory["config_nvs"] = stored
        else:
            self._write_nvs(stored)
        applied = sorted(update.values)
        self.log("I", "config", f"saved {', '.join(applied)}; restarting")
        self.publish(status, {"ok": True, "applied": applied})
        self._spawn(self._ack_then_restart())

    async def _ack_then_restart(self) -> None:
        await self._flushed(2.0)
        self._restart("SW")

    # -- sensor -------------------------------------------------------------------
    async def _sensor_task(self) -> None:
        self.watchdog.subscribe("sensor")
        if self.behaviour.params.get("hang_at_boot") == "sensor":
            self.hang.add("sensor")  # an image whose sensor init never returns
            await self._sensor_wait()
        if self.rig is None:
            self.log("E", "sensor", "no sensor bus")
            return
        driver = BME280Driver(self.rig.bus, 0x76)
        while True:
            try:
                await asyncio.to_thread(driver.initialise)
                self.log("I", "sensor", "bme280 id=0x60 addr=0x76")
                break
            except SensorError as exc:
                self.log_mirrored("E", "sensor", str(exc))
                if "calibration" in str(exc).lower():
                    self.alert("warning", "sensor_calibration", str(exc))
                self._sensor_failed()
            except OSError as exc:
                self.log_mirrored("E", "sensor", f"i2c error: {exc}")
                self._sensor_failed()
            await self._sensor_wait()
        due = time.monotonic()
        while True:
            started = time.monotonic()
            # A fixed rate, as the firmware's ticker keeps it: each period is due one
            # interval after the last was, however long the read or the wake-up took;
            # fallen behind by more than an interval (a stall), it starts afresh rather
            # than bursting catch-up readings.
            interval = self._measurement_interval_s()
            due = due + interval if started - due <= interval else started + interval
            try:
                reading = await asyncio.to_thread(driver.read)
            except (SensorError, OSError) as exc:
                self.error_count += 1
                self.log_mirrored("E", "sensor", f"read failed: {exc}")
                self._sensor_failed()
            else:
                self.read_time_ms = (time.monotonic() - started) * 1000
                self._on_reading(reading.temperature_c, reading.humidity_pct, reading.pressure_hpa)
            await self._sensor_wait(due)

    def _measurement_interval_s(self) -> float:
        if D.MEASUREMENT_INTERVAL_IGNORED in self.defects:
            return float(DeviceConfig().measurement_interval_s)  # the built-in default
        return float(self.config.measurement_interval_s)

    async def _sensor_wait(self, due: float | None = None) -> None:
        """Wait until ``due`` (the next tick of the measurement period), or one interval."""
        interval = self._measurement_interval_s()
        await self._wait("sensor", interval if due is None else due - time.monotonic())
        if D.PROGRAMS_BLOCK_SENSOR in self.defects and self.program_task is not None:
            await asyncio.wait({self.program_task})  # the defect: programs run on this task
        while "sensor" in self.hang:
            await asyncio.sleep(3600)  # a hung task: stuck, not feeding the watchdog

    def _sensor_failed(self) -> None:
        since = self.last_reading_at or self.boot_time
        if (
            (not self.sensor_failure_raised or D.SENSOR_FAILURE_REPEATED in self.defects)
            and time.monotonic() - since >= self.config.sensor_timeout_s
            and D.IGNORES_SENSOR_TIMEOUT not in self.defects
        ):
            self.sensor_failure_raised = True
            self.alert("critical", "sensor_failure", f"no good reading for {self.config.sensor_timeout_s} s")

    def _on_reading(self, temperature: float, humidity: float, pressure: float) -> None:
        temperature += float(self.config.calibration_offset_temp)
        if D.TEMPERATURE_HIGH_2C in self.defects:
            temperature += 2.0
        t_lo, t_hi = contract.TEMPERATURE_RANGE_C
        h_lo, h_hi = contract.HUMIDITY_RANGE_PCT
        p_lo, p_hi = contract.PRESSURE_RANGE_HPA
        # The defect: the range is checked on whole degrees (int32 centi-degrees / 100 in C).
        checked = float(int(temperature)) if D.RANGE_CHECK_TRUNCATES in self.defects else temperature
        in_range = t_lo <= checked <= t_hi and h_lo <= humidity <= h_hi and p_lo <= pressure <= p_hi
        if not in_range and D.OUT_OF_RANGE_PUBLISHED not in self.defects:
            self.log_mirrored("W", "sensor", f"out of range t={temperature:.2f} h={humidity:.2f} p={pressure:.2f}")
            self.alert("warning", "sensor_out_of_range", f"t={temperature:.2f} h={humidity:.2f} p={pressure:.2f}")
            return
        self.last_reading = {"temperature": temperature, "humidity": humidity, "pressure": pressure}
        self.last_reading_at = time.monotonic()
        self.sensor_ok.set()
        if self.sensor_failure_raised:
            self.sensor_failure_raised = False
            self.alert("warning" if D.RECOVERED_AS_WARNING in self.defects else "info", "sensor_recovered", "readings are back")
        payload = {
            "device_id": self.device_id,
            "boot_count": self.boot_count,
            "seq": self.seq,
            "timestamp": time.time(),
            "temperature_c": round(temperature, 2),
            "humidity_pct": round(humidity, 2),
            "pressure_hpa": round(pressure, 2),
        }
        self.seq += 1
        if not self.connected.is_set() and D.OFFLINE_READINGS_DROPPED in self.defects:
            return  # the defect: "publish failed" is not retried, and nobody counts it
        self.outbox.put_reading(contract.sensors_topic(self.device_id), json.dumps(payload).encode())

    # -- health and metrics -------------------------------------------------------
    def _health(self) -> dict[str, Any]:
        age = None if self.last_reading_at is None else round(time.monotonic() - self.last_reading_at, 1)
        if age is not None and D.READING_AGE_FROM_BOOT in self.defects:
            age = round(time.monotonic() - self.boot_time, 1)  # the defect: counted from boot
        return {
            "uptime_s": round(time.monotonic() - self.boot_time, 1),
            "free_heap": FREE_HEAP,
            "min_free_heap": FREE_HEAP - 4096,
            "wifi_rssi": self.rig.ap.rssi if self.rig is not None and self.wifi_up.is_set() else None,
            "cpu_temp_c": 41.5,
            "last_sensor_reading_age_s": age,
            "version": self.version,
            "reset_reason": self.reset_reason,
            "boot_count": self.boot_count,
            "restart_count": self.restart_count,
            "dropped_readings": self.outbox.dropped_readings,
            "safe_mode": self.safe_mode,
        }

    def _publish_health(self) -> None:
        self.publish(contract.health_topic(self.device_id), self._health())

    async def _health_task(self) -> None:
        self.watchdog.subscribe("health")
        while not self.connected.is_set():  # waiting for the broker is not hanging
            if "health" not in self.hang:
                self.watchdog.feed("health")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.connected.wait(), self.watchdog.timeout_s / 2)
        if self.reset_reason == "TASK_WDT":
            self.alert("warning", "watchdog_reset", "the previous boot ended in a task watchdog reset")
        if self.safe_mode:
            self.alert("critical", "safe_mode", "boot loop detected: safe mode (broker and OTA only)")
        while True:
            self._publish_health()
            await self._wait("health", float(self.config.heartbeat_interval_s))
            if D.HEARTBEAT_DOUBLED in self.defects:
                await self._wait("health", float(self.config.heartbeat_interval_s))

    async def _metrics_task(self) -> None:
        while True:
            period = self.config.status_report_interval_s
            if D.METRICS_AT_HEARTBEAT in self.defects:
                period = self.config.heartbeat_interval_s  # the defect: copied from the health task
            await asyncio.sleep(max(float(period), 0.1))
            self.publish(
                contract.metrics_topic(self.device_id),
                {
                    "device_id": self.device_id,
                    "timestamp": time.time(),
                    "metrics": {
                        "cpu_usage_percent": 3.5,
                        "memory_usage_bytes": 327_680 - FREE_HEAP,
                        "network_latency_ms": 2.0,
                        "sensor_read_time_ms": round(getattr(self, "read_time_ms", 0.0), 2),
                        "mqtt_publish_time_ms": 1.0,
                        "wifi_signal_strength_dbm": self.rig.ap.rssi if self.rig is not None else None,
                        "uptime_seconds": round(time.monotonic() - self.boot_time, 1),
                        "restart_count": self.restart_count,
                        "error_count": self.error_count,
                    },
                },
            )

    # -- OTA ----------------------------------------------------------------------
    async def _ota_boot_task(self) -> None:
        ctx = self.ctx
        status = contract.ota_status_topic(self.device_id)
        rolled = find_rollback(ctx.flash, ctx.table, ctx.running)
        if rolled is not None and rolled.seq != self.rollback_seq:
            self.log_mirrored("W", "ota", f"rollback detected: version {rolled.version} did not confirm itself")
            self.publish(status, {"state": "rolled_back", "version": rolled.version, "reason": "new image failed to confirm"})
            self.alert("warning", "ota_rolled_back", f"version {rolled.version} was rolled back")
            self.rollback_seq = rolled.seq
            self._store(STATS_NAMESPACE, {"rollback_seq": rolled.seq})
        if not self.pending_verify or D.NEVER_MARKS_VALID in self.defects:
            return
        if D.VALID_WITHOUT_SELFTEST not in self.defects:
            selftest_s = float(self.config.ota_selftest_timeout_s)
            if D.OTA_SELFTEST_TIMEOUT_IGNORED in self.defects:
                selftest_s = float(DeviceConfig().ota_selftest_timeout_s)  # the built-in default
            try:
                async with asyncio.timeout(selftest_s):
                    await self.connected.wait()
                    if not self.safe_mode:
                        await self.sensor_ok.wait()
            except TimeoutError:
                self.log_mirrored("E", "ota", "self-test failed; rollback to previously worked partition. Restart.")
                mark_app_invalid(ctx.flash, ctx.table, ctx.running)
                self._restart("SW")
                return
        mark_app_valid(ctx.flash, ctx.table, ctx.running)
        self.pending_verify = False
        self.log("I", "ota", "app marked valid")
        self.publish(status, {"state": "success", "version": self.version})

    async def _on_ota(self, payload: bytes) -> None:
        ctx = self.ctx
        status = contract.ota_status_topic(self.device_id)
        request = parse_ota_request(payload, require_signature=D.OTA_SIGNATURE_OPTIONAL not in self.defects)
        if isinstance(request, OtaRejected):
            self.log_mirrored("E", "ota", f"rejected: {request.reason}")
            self.publish(status, {"state": "rejected", "version": request.version, "reason": request.reason})
            return
        try:
            target = next_update_partition(ctx.table, ctx.running, fixed_slot=D.OTA_FIXED_SLOT in self.defects)
        except OtaFailed as exc:
            self.publish(status, {"state": "rejected", "version": request.version, "reason": exc.reason})
            return
        reason = precheck(
            request,
            running_version=self.version,
            partition_size=target.size,
            pubkey_pem=self.prov.ota_pubkey,
            allow_downgrade=D.ACCEPTS_DOWNGRADE in self.defects,
            check_signature=D.SKIPS_SIGNATURE_CHECK not in self.defects,
            signature_optional=D.OTA_SIGNATURE_OPTIONAL in self.defects,
            compare_as_strings=D.VERSIONS_COMPARED_AS_STRINGS in self.defects,
            check_size=D.OTA_SIZE_CHECKED_LATE not in self.defects,
        )
        if reason is None and self.pending_verify:
            reason = "the running image is still pending verification"
        if reason is not None:
            self.log_mirrored("E", "ota", f"rejected version={request.version}: {reason}")
            self.publish(status, {"state": "rejected", "version": request.version, "reason": reason})
            return
        self.log("I", "ota", f"downloading version={request.version} into {target.label}")
        self.publish(status, {"state": "downloading", "version": request.version})
        try:
            ssl_context = None
            if request.url.startswith("https"):
                if not self.prov.ca_cert:
                    raise OtaFailed("https download but no CA provisioned")
                try:
                    ssl_context = ssl_context_for_ca(self.prov.ca_cert)
                except ValueError as exc:
                    raise OtaFailed(f"provisioned CA unusable: {exc}") from None
            writer = OtaWriter(ctx.flash, target, request, check_sha256=D.OTA_HASH_UNCHECKED not in self.defects)
            await download_to(
                writer, request, ssl_context=ssl_context, resume=D.OTA_DOWNLOAD_RESTARTS not in self.defects
            )
            self.publish(status, {"state": "verifying", "version": request.version})
            writer.end()
            set_boot_partition(ctx.flash, ctx.table, target)
            # The new image reuses sequence numbers; forget the last rollback we reported
            # so that a rollback of this update is reported too.
            self._store(STATS_NAMESPACE, {"rollback_seq": 0})
        except OtaFailed as exc:
            self.log_mirrored("E", "ota", f"failed version={request.version}: {exc.reason}")
            self.publish(status, {"state": "failed", "version": request.version, "reason": exc.reason})
            return
        self.log("I", "ota", f"rebooting into version={request.version}")
        self.publish(status, {"state": "rebooting", "version": request.version})
        await self._flushed(2.0)
        self._restart("SW")

    # -- programs -----------------------------------------------------------------
    def _on_program(self, payload: bytes) -> None:
        status = contract.programs_status_topic(self.device_id)
        deployment = parse_deployment(
            payload,
            check_hash=D.PROGRAM_HASH_UNCHECKED not in self.defects,
            max_bytes=MAX_PROGRAM_BYTES - 1 if D.PROGRAM_SIZE_OFF_BY_ONE in self.defects else MAX_PROGRAM_BYTES,
        )
        if isinstance(deployment, Rejection):
            self.publish(status, {"name": None, "state": "rejected", "error": deployment.reason})
            return
        if self.program_task is not None and not self.program_task.done():
            self.program_task.cancel()
        self.publish(status, {"name": deployment.name, "state": "accepted"})
        self.program_task = asyncio.ensure_future(self._run_program(deployment.name, deployment.source))

    async def _run_program(self, name: str, source: str) -> None:
        status = contract.programs_status_topic(self.device_id)
        self.publish(status, {"name": name, "state": "running"})
        try:
            result = await run_program(parse(source), _ProgramHost(self), Budget())
        except ProgramError as exc:
            self.publish(status, {"name": name, "state": "failed", "error": f"{exc.kind}: {exc}"})
            return
        self.publish(status, {"name": name, "state": "completed", "result": result})


def _raise_lost_cancel() -> None:
    """Re-raise a cancellation that Python 3.11's ``asyncio.wait_for`` lost.

    aiomqtt awaits PUBACKs and SUBACKs in ``wait_for``, which on 3.11 returns the result
    instead of raising when the ack lands in the same loop turn as the cancel (fixed in
    3.12). The reset is then lost and the task runs on, so a board (or a fleet of them,
    where acks arrive every few ms) never finishes stopping. A cancelled task still says
    so in ``cancelling()``; raise it here.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class _DeepSleep(Exception):
    """Raised inside the task group to stop every task of this boot."""


class _ProgramHost:
    """What a deployed program may touch: the last readings, the LED, its own topics."""

    def __init__(self, firmware: ReferenceFirmware) -> None:
        self._fw = firmware
        self.integer_division = D.PROGRAM_INTEGER_DIVISION in firmware.defects

    def sensor(self, quantity: str) -> float:
        reading = self._fw.last_reading
        if reading is None or quantity not in reading:
            raise KeyError(quantity)
        return reading[quantity]

    def led(self, on: bool) -> None:
        self._fw.led = on

    def publish(self, suffix: str, value: Any) -> None:
        self._fw.publish(contract.program_publish_topic(self._fw.device_id, suffix), {"value": value})

    async def sleep(self, ms: int) -> None:
        await asyncio.sleep(ms / 1000)
