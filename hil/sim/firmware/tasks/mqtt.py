"""The mqtt task: the broker session, the outbox drained into it, and reconnecting.

aiomqtt, client id = device id, keepalive 15 s, persistent session, last will
``{"state":"offline"}`` retained, retained ``online`` status on connect; TLS with the
provisioned CA, mutual TLS with the client cert. Backoff 1→30 s ±20 % jitter, reset
after a connect; failover over ``brokers`` after 3 failures. What arrives on the
device's request topics goes to their handlers (``Handlers``); the emergency shutdown
is the session's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import aiomqtt

from hil.device import contract
from hil.device import defects as D
from hil.secret import reveal
from hil.sim.firmware.mqtt_link import (
    BACKOFF_MAX_S,
    FAILOVER_AFTER,
    Backoff,
    BrokerUri,
    abort,
    fail_fast_before_connack,
    slow_handshake,
    tls_context,
    track_connection,
)
from hil.sim.firmware.tasks.shared import Firmware


@dataclass(frozen=True)
class Handlers:
    """Who handles each request topic of the device (DEVICE_CONTRACT.md §4)."""

    command: Callable[[bytes], Awaitable[None]]
    config: Callable[[bytes], None]
    ota: Callable[[bytes], Coroutine[Any, Any, None]]
    """Run in the background: a download must not hold up the session."""
    program: Callable[[bytes], None]


class MqttTask:
    """Connects, stays connected while Wi-Fi is up, and reconnects with backoff."""

    def __init__(self, fw: Firmware, handlers: Handlers) -> None:
        self.fw = fw
        self.handlers = handlers

    def _brokers(self) -> list[BrokerUri]:
        uris = list(self.fw.config.brokers) or [self.fw.prov.mqtt_uri or ""]
        if D.NO_BROKER_FAILOVER in self.fw.defects:
            uris = uris[:1]
        return [BrokerUri.parse(u) for u in uris]

    async def run(self) -> None:
        fw = self.fw
        if D.MQTT_NOT_WATCHED not in fw.defects:  # the defect: never subscribed
            fw.watchdog.subscribe("mqtt")
        brokers = self._brokers()
        index = 0
        failures = 0
        backoff = Backoff(
            fw.rng,
            enabled=D.RECONNECT_WITHOUT_BACKOFF not in fw.defects,
            cap_s=60.0 if D.BACKOFF_CAP_60S in fw.defects else BACKOFF_MAX_S,
            defects=fw.defects,
        )
        while True:
            while not fw.wifi_up.is_set():
                fw.watchdog.feed("mqtt")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(fw.wifi_up.wait(), fw.watchdog.timeout_s / 2)
            uri = brokers[index]
            # The task is busy, not hung, while a connection attempt (TCP, TLS, CONNACK:
            # up to 10 s) or a session is under way: it checks in meanwhile, as the C
            # firmware's MQTT event loop does. A `hang` of the mqtt task stops this too.
            feeder = asyncio.ensure_future(fw.feed_while("mqtt"))
            try:
                reason = await self._session(uri)
            finally:
                feeder.cancel()
            if reason is None:  # emergency shutdown: disconnected cleanly, now sleep
                if D.SHUTDOWN_WITHOUT_SLEEP not in fw.defects:
                    fw.deep_sleep.set()
                    return
                reason = "emergency_shutdown"  # the defect: no deep sleep, so it reconnects
            if self._ever_connected_now:
                backoff.reset()  # the backoff restarts after every successful connect
                if D.FAILOVER_COUNT_KEPT_ON_CONNECT not in fw.defects:
                    failures = 0
                if D.FAILOVER_COUNTS_THE_LOSS in fw.defects:
                    failures = 1  # the lost session counted as a failed attempt
            else:
                failures += 1
            if len(brokers) > 1 and failures >= FAILOVER_AFTER:
                if D.FAILOVER_NO_WRAP in fw.defects:
                    index = min(index + 1, len(brokers) - 1)
                else:
                    index = (index + 1) % len(brokers)
                if D.FAILOVER_COUNT_KEPT_ON_MOVE not in fw.defects:
                    failures = 0
                if D.BACKOFF_RESET_ON_FAILOVER in fw.defects:
                    backoff.reset()  # "a new broker: start afresh"
            delay = backoff.next_delay()
            if D.WIFI_LOSS_NOT_LOGGED in fw.defects and reason == "wifi_lost":
                pass  # the defect: "the wifi task already said so"
            elif D.TIMEOUT_LOSS_NOT_LOGGED in fw.defects and reason == "publish_failed":
                pass  # the defect: the client's own outbox timeout raises no disconnect event
            else:
                fw.log_mirrored("W", "mqtt", f"disconnected reason={reason} retry_ms={int(delay * 1000)}")
            if reason == "not_authorized" and D.RESTARTS_ON_AUTH_REFUSAL in fw.defects:
                fw.restart("SW")  # "a refused login is fatal: start over"
                return
            if D.BACKOFF_WAITS_EXTRA_SECOND in fw.defects:
                await fw.wait("mqtt", 1.0)  # a settle delay left over from debugging, not announced
            await fw.wait("mqtt", delay)

    async def _session(self, uri: BrokerUri) -> str | None:
        """One connection: returns why it ended, or None after an emergency shutdown."""
        fw = self.fw
        self._ever_connected_now = False
        prov = fw.prov
        will = None
        if D.NO_LAST_WILL not in fw.defects:
            will = aiomqtt.Will(
                contract.status_topic(fw.device_id),
                json.dumps({"state": "offline"}).encode(),
                qos=0 if D.WILL_QOS0 in fw.defects else 1,
                retain=D.WILL_NOT_RETAINED not in fw.defects,
            )
        try:
            tls = tls_context(prov.ca_cert, prov.client_cert, reveal(prov.client_key)) if uri.tls else None
            if tls is not None and D.TLS_NO_VERIFY in fw.defects:
                tls.check_hostname = False
                tls.verify_mode = ssl.CERT_NONE
            if tls is not None and D.TLS_NO_HOSTNAME_CHECK in fw.defects:
                tls.check_hostname = False  # the chain is still verified against the CA
        except (ValueError, OSError) as exc:
            return f"tls_config:{type(exc).__name__}"
        profile, jitter = fw.profile, fw.jitter
        if tls is not None:
            slow_handshake(tls, profile.tls_handshake.draw(jitter))
        clean_session = D.CLEAN_SESSION in fw.defects
        if D.CLEAN_SESSION_AT_BOOT in fw.defects:  # the defect: clean at the boot's first connect
            clean_session = not getattr(self, "connected_in_this_boot", False)
        client = aiomqtt.Client(
            uri.host,
            uri.port,
            # esp-mqtt's default client id when none is set: ESP32_ and the MAC's last 3 bytes.
            identifier=f"ESP32_{fw.ctx.mac[3:].hex().upper()}" if D.DEFAULT_CLIENT_ID in fw.defects else fw.device_id,
            username=fw.device_id if D.MQTT_USER_IGNORED in fw.defects else prov.mqtt_user,
            password=reveal(prov.mqtt_pass),
            will=will,
            clean_session=clean_session,
            keepalive=120 if D.KEEPALIVE_DEFAULT in fw.defects else 15,
            tls_context=tls,
            timeout=10,
        )
        fail_fast_before_connack(client)
        sockets = fw.sockets
        if sockets is not None and sockets.silent:
            track_connection(client, sockets, keepalive_s=client._keepalive)
        ended = "connection_lost"
        try:
            # The resolver and the TCP handshake's round trip come first (the TLS
            # handshake's CPU time is spent inside the connect: `slow_handshake`).
            await _spend((profile.dns.draw(jitter) if uri.named else 0.0) + profile.lan_round_trip.draw(jitter))
            async with client:
                await _spend(profile.lan_round_trip.draw(jitter))  # CONNACK: a round trip after CONNECT
                self._ever_connected_now = True
                if D.CLEAN_SESSION_AT_BOOT in fw.defects:
                    self.connected_in_this_boot = True
                shown = str(uri)
                if D.CONNECTED_LOGS_PROVISIONED_URI in fw.defects:
                    shown = prov.mqtt_uri or shown  # the config struct's URI, not the client's
                if D.CREDENTIALS_IN_URI_LOG in fw.defects:
                    shown = f"{uri.scheme}://{prov.mqtt_user}:{reveal(prov.mqtt_pass)}@{uri.host}:{uri.port}"
                if D.LOG_TICKS_AS_MS in fw.defects:
                    ticks = fw.ctx.uptime_ms() // 10  # xTaskGetTickCount() at 100 Hz
                    fw.ctx.write(f"I ({ticks}) mqtt: connected uri={shown}\r\n".encode())
                else:
                    fw.log("I", "mqtt", f"connected uri={shown}")
                fw.connected.set()
                self.backlog_left = len(fw.outbox.readings)  # queued while offline (the backlog_qos0 defect)
                if D.BACKLOG_COUNTED_AS_DROPPED in fw.defects:
                    fw.outbox.dropped_readings += len(fw.outbox.readings)  # "missed their live publish"
                online = {"state": "online", "version": fw.version, "reset_reason": fw.reset_reason, "boot_count": fw.boot_count}
                await client.publish(
                    contract.status_topic(fw.device_id),
                    json.dumps(online).encode(),
                    qos=1,
                    retain=D.ONLINE_NOT_RETAINED not in fw.defects,
                )
                if D.PUBLISHES_OUTSIDE_PREFIX in fw.defects:
                    await client.publish("esp32/announce", json.dumps({"device_id": fw.device_id}).encode(), qos=1)
                granted = 0 if D.SUBSCRIBES_QOS0 in fw.defects else 1
                for topic in contract.device_subscriptions(fw.device_id):
                    if D.WILDCARD_COMMAND_SUBSCRIPTION in fw.defects and topic == contract.command_topic(fw.device_id):
                        topic = "esp32/+/command"
                    await client.subscribe(topic, qos=granted)
                result = await self._connected(client)
                if result == "shutdown":
                    return None
                ended = result
        except aiomqtt.MqttError as exc:
            text = str(exc)
            if "CERTIFICATE_VERIFY_FAILED" in text or "certificate" in text.lower():
                shown = str(uri)
                if D.TLS_FAILURE_LOGS_CREDENTIALS in fw.defects:
                    shown = f"{uri.scheme}://{prov.mqtt_user}:{reveal(prov.mqtt_pass)}@{uri.host}:{uri.port}"
                fw.log("E", "mqtt", f"tls handshake failed uri={shown}: server certificate not trusted")
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
            fw.connected.clear()
        return ended

    async def _connected(self, client: aiomqtt.Client) -> str:
        """Run while connected; return why the connection ended."""
        fw = self.fw
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
                item = fw.outbox.peek()
                if item is None:
                    fw.outbox.ready.clear()
                    await fw.outbox.ready.wait()
                    continue
                queue, (topic, payload, retain) = item
                if D.READINGS_STAMPED_WHEN_SENT in fw.defects and topic.endswith("/sensors"):
                    payload = json.dumps({**json.loads(payload), "timestamp": time.time()}).encode()
                try:
                    qos = 0 if D.TELEMETRY_QOS0 in fw.defects and topic.endswith("/sensors") else 1
                    if D.REPORTS_QOS0 in fw.defects and not topic.endswith("/sensors"):
                        qos = 0  # "only readings matter": health, metrics, alerts, logs, acks unacknowledged
                    if D.BACKLOG_QOS0 in fw.defects and topic.endswith("/sensors") and self.backlog_left > 0:
                        self.backlog_left -= 1
                        qos = 0  # the defect: the backlog flushed without waiting for PUBACKs
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
            await fw.wifi_down.wait()
            abort(client, fw.sockets)  # a silent board's link just goes quiet
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
            if not shutdown or D.SHUTDOWN_WITHOUT_DISCONNECT in fw.defects:
                abort(client)

    async def _on_message(self, client: aiomqtt.Client, topic: str, payload: bytes, stop: asyncio.Future[str]) -> None:
        fw = self.fw
        did = fw.device_id
        if topic == contract.command_topic(did):
            await self.handlers.command(payload)
        elif topic == contract.emergency_topic(did):
            if payload.strip() in (b"shutdown", b'"shutdown"'):
                fw.log("W", "app", "emergency shutdown: disconnecting, entering deep sleep")
                await client.publish(
                    contract.status_topic(did),
                    json.dumps({"state": "offline"}).encode(),
                    qos=1,
                    retain=D.SHUTDOWN_OFFLINE_NOT_RETAINED not in fw.defects,
                )
                if not stop.done():
                    stop.set_result("shutdown")
        elif topic == contract.config_update_topic(did):
            self.handlers.config(payload)
        elif topic == contract.ota_update_topic(did):
            if fw.safe_mode and D.OTA_OFF_IN_SAFE_MODE in fw.defects:
                return  # the defect: no OTA in safe mode
            if fw.safe_mode and D.OTA_REFUSED_IN_SAFE_MODE in fw.defects:
                _refuse_in_safe_mode(fw, payload)  # the defect: answered, never installed
                return
            fw.spawn(self.handlers.ota(payload))
        elif topic == contract.programs_deploy_topic(did):
            self.handlers.program(payload)


def _refuse_in_safe_mode(fw: Firmware, payload: bytes) -> None:
    """The ``ota_refused_in_safe_mode`` defect: every offer ``rejected`` while in safe mode."""
    try:
        offered = json.loads(payload).get("version")
    except (ValueError, AttributeError):
        offered = None
    version = offered if isinstance(offered, str) else None
    fw.log_mirrored("E", "ota", f"rejected version={version}: updates are disabled in safe mode")
    fw.publish(
        contract.ota_status_topic(fw.device_id),
        {"state": "rejected", "version": version, "reason": "updates are disabled in safe mode"},
    )


async def _spend(seconds: float) -> None:
    """Take ``seconds`` (the profile's network time); none at all on the default profile,
    where no delay is drawn, so its runs keep exactly their old await points."""
    if seconds > 0:
        await asyncio.sleep(seconds)


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
