"""The MQTT observer: records everything a device says, and waits for what a test expects.

paho-mqtt v2 with a background network thread. Every message is kept with its receive
time; ``wait_for`` blocks on a condition variable (no polling) until a matching message
arrives or the deadline passes, and then says what it saw instead.
"""

from __future__ import annotations

import json
import os
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    at: float

    def json(self) -> Any:
        return json.loads(self.payload)


class ObserverTimeout(AssertionError):
    """A wait ran out; the message lists what did arrive on the topic."""


class MqttObserver:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str | None = None,
        password: str | None = None,
        ca_pem: str | None = None,
        client_cert_pem: str | None = None,
        client_key_pem: str | None = None,
        subscribe: str = "#",
    ) -> None:
        self._messages: list[Received] = []
        self._cond = threading.Condition()
        self._connected = threading.Event()
        self._topic_filter = subscribe
        # A persistent session, so that what devices publish while the observer itself is
        # reconnecting (a broker restart drops everyone) is queued for it, not lost.
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"hil-observer-{os.getpid()}-{time.monotonic_ns()}",
            clean_session=False,
        )
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        if username:
            self.client.username_pw_set(username, password)
        if ca_pem:
            context = ssl.create_default_context(cadata=ca_pem)
            if client_cert_pem and client_key_pem:
                _load_client_identity(context, client_cert_pem, client_key_pem)
            self.client.tls_set_context(context)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        if not self._connected.wait(10):
            self.close()
            raise ObserverTimeout(f"observer could not connect to {host}:{port}")

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        # Subscriptions do not survive a reconnect in paho: renew them every time.
        client.subscribe(self._topic_filter, qos=1)
        self._connected.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._cond:
            self._messages.append(Received(message.topic, bytes(message.payload), bool(message.retain), time.monotonic()))
            self._cond.notify_all()

    @property
    def messages(self) -> list[Received]:
        with self._cond:
            return list(self._messages)

    def mark(self) -> int:
        """A position in the record; pass it as ``since`` to ignore what came before."""
        with self._cond:
            return len(self._messages)

    def collect(self, topic: str, *, since: int = 0) -> list[Received]:
        with self._cond:
            return [m for m in self._messages[since:] if mqtt.topic_matches_sub(topic, m.topic)]

    def wait_for(
        self,
        topic: str,
        predicate: Callable[[Received], bool] = lambda m: True,
        *,
        timeout: float,
        since: int = 0,
        count: int = 1,
    ) -> list[Received]:
        """Wait until ``count`` messages on ``topic`` (a filter) satisfy ``predicate``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [
                    m for m in self._messages[since:] if mqtt.topic_matches_sub(topic, m.topic) and predicate(m)
                ]
                if len(found) >= count:
                    return found[:count]
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [m for m in self._messages[since:] if mqtt.topic_matches_sub(topic, m.topic)][-5:]
                    shown = "\n".join(f"  {m.topic}: {m.payload[:300]!r}" for m in seen) or "  (nothing)"
                    raise ObserverTimeout(
                        f"waited {timeout} s for {count} message(s) on {topic!r} matching the predicate; "
                        f"got {len(found)}. Last messages on that topic:\n{shown}"
                    )
                self._cond.wait(left)

    def publish(self, topic: str, payload: bytes | str | dict[str, Any], *, qos: int = 1, retain: bool = False) -> None:
        data = json.dumps(payload).encode() if isinstance(payload, dict) else payload
        self.client.publish(topic, data, qos=qos, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> MqttObserver:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def _load_client_identity(context: ssl.SSLContext, cert_pem: str, key_pem: str) -> None:
    """Mutual TLS: ``ssl`` loads a client identity only from files, so it lives in a
    private temp dir for the moment of loading, then is gone."""
    with tempfile.TemporaryDirectory(prefix="hil-observer-") as private:
        cert, key = Path(private) / "client.pem", Path(private) / "client.key"
        cert.write_text(cert_pem)
        key.touch(mode=0o600)
        key.write_text(key_pem)
        context.load_cert_chain(cert, key)
