"""The firmware's MQTT link: broker URIs, TLS contexts, backoff, and abrupt connection loss.

A chip that resets or loses its AP does not send DISCONNECT: the broker only learns of
it from the dead TCP connection (and then publishes the last will). ``abort`` reproduces
that with aiomqtt by shutting the socket down under paho instead of disconnecting.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import ssl
import tempfile
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import aiomqtt

BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 30.0
BACKOFF_JITTER = 0.2
FAILOVER_AFTER = 3


@dataclass(frozen=True)
class BrokerUri:
    scheme: str
    host: str
    port: int

    @classmethod
    def parse(cls, uri: str) -> BrokerUri:
        parsed = urlparse(uri)
        if parsed.scheme not in ("mqtt", "mqtts") or not parsed.hostname:
            raise ValueError(f"broker URI {uri!r} is not mqtt://host:port or mqtts://host:port")
        port = parsed.port or (8883 if parsed.scheme == "mqtts" else 1883)
        return cls(parsed.scheme, parsed.hostname, port)

    @property
    def tls(self) -> bool:
        return self.scheme == "mqtts"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


def tls_context(ca_pem: str | None, client_cert: str | None, client_key: str | None) -> ssl.SSLContext:
    """The device's TLS settings: the provisioned CA only, host name checked, optional mTLS."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca_pem) if ca_pem else ssl.create_default_context()
    if ca_pem is None:
        context.load_verify_locations(cadata="")  # no CA provisioned: trust nothing
    if client_cert and client_key:
        # ssl only loads key pairs from files; they live for the duration of the load.
        with tempfile.TemporaryDirectory() as tmp:
            cert_path = os.path.join(tmp, "cert.pem")
            key_path = os.path.join(tmp, "key.pem")
            with open(cert_path, "w") as handle:
                handle.write(client_cert)
            with open(os.open(key_path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as handle:
                handle.write(client_key)
            context.load_cert_chain(cert_path, key_path)
    return context


class Backoff:
    """Exponential backoff from 1 s to 30 s with ±20 % jitter, reset on success."""

    def __init__(self, rng: random.Random, *, enabled: bool = True, cap_s: float = BACKOFF_MAX_S) -> None:
        self._rng = rng
        self._enabled = enabled
        self._cap_s = cap_s  # another cap only for the backoff_cap_60s defect
        self._next = BACKOFF_MIN_S

    def reset(self) -> None:
        self._next = BACKOFF_MIN_S

    def next_delay(self) -> float:
        if not self._enabled:
            return 0.05  # the defect: retry at once (a token pause keeps the loop schedulable)
        base = self._next
        self._next = min(self._next * 2, self._cap_s)
        return base * (1 + self._rng.uniform(-BACKOFF_JITTER, BACKOFF_JITTER))


def fail_fast_before_connack(client: aiomqtt.Client) -> None:
    """A connection the peer resets or closes before CONNACK fails the attempt at once.

    esp-mqtt reports the transport error and the firmware backs off; aiomqtt ignores a
    disconnect before CONNACK and waits out its whole timeout (10 s per attempt against a
    proxy whose broker is down), which would stretch every backoff delay by that much.
    """
    paho = client._client
    inner = paho.on_disconnect

    def on_disconnect(*args: Any) -> None:
        connecting = client._connected
        if not connecting.done():
            connecting.set_exception(aiomqtt.MqttError("connection lost before CONNACK"))
        if inner is not None:
            inner(*args)

    paho.on_disconnect = on_disconnect


def abort(client: aiomqtt.Client) -> None:
    """Drop the TCP connection without DISCONNECT, as a reset chip or a lost AP does."""
    paho = client._client
    sock = paho.socket()
    if isinstance(sock, socket.socket | ssl.SSLSocket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    disconnected = client._disconnected
    if not disconnected.done():
        disconnected.set_exception(aiomqtt.MqttError("connection aborted"))
        disconnected.exception()  # retrieved: nobody else needs to see it
