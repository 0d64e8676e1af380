"""The firmware's MQTT link: broker URIs, TLS contexts, backoff, and abrupt connection loss.

A chip that resets or loses its AP does not send DISCONNECT. On the default profile the
broker learns of it from the closed TCP connection at once (and publishes the last will):
``abort`` shuts the socket down under paho instead of disconnecting. On a silent profile
(`hil.sim.profiles`: real-board) the connection is handed to the chip's socket table
(``track_connection``) and abandoned when the chip stops or the AP goes (`hil.sim.sockets`):
nothing at all reaches the broker, which waits out 1.5 × keepalive, as with a real C3.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import socket
import ssl
import tempfile
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import aiomqtt

from hil.device import defects as D
from hil.sim.sockets import ChipSockets

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

    @property
    def named(self) -> bool:
        """The host is a name to resolve (DNS), not an address."""
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return True
        return False

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


class _ChipHandshake(ssl.SSLSocket):
    """A TLS socket whose handshake first spends the chip's CPU time on it (mbedTLS on a
    160 MHz RISC-V core: `hil.sim.profiles.BoardProfile.tls_handshake`). paho runs the
    handshake on aiomqtt's executor thread, after the TCP connect, so the wait lands
    where a C3 spends it: a refused TCP connect costs nothing of it, a certificate the
    chip rejects all of it."""

    cpu_s = 0.0

    def do_handshake(self, block: bool = False) -> None:
        time.sleep(self.cpu_s)  # the executor thread, not the event loop
        super().do_handshake(block)


def slow_handshake(context: ssl.SSLContext, seconds: float) -> ssl.SSLContext:
    """``context``, its TLS handshakes taking ``seconds`` of chip time (none: unchanged)."""
    if seconds > 0:
        context.sslsocket_class = type("ChipHandshake", (_ChipHandshake,), {"cpu_s": seconds})
    return context


class Backoff:
    """Exponential backoff from 1 s to 30 s with ±20 % jitter, reset on success."""

    def __init__(
        self,
        rng: random.Random,
        *,
        enabled: bool = True,
        cap_s: float = BACKOFF_MAX_S,
        defects: frozenset[str] = frozenset(),
    ) -> None:
        self._rng = rng
        self._enabled = enabled
        self._cap_s = cap_s  # another cap only for the backoff_cap_60s defect
        self.defects = defects
        self._next = BACKOFF_MIN_S
        if D.BACKOFF_ZERO_AT_BOOT in self.defects:
            self._next = 0.0  # the defect: a zero-initialised static, set only by reset()

    def reset(self) -> None:
        self._next = BACKOFF_MIN_S

    def next_delay(self) -> float:
        if not self._enabled:
            return 0.05  # the defect: retry at once (a token pause keeps the loop schedulable)
        base = self._next
        self._next = min(self._next * 2, self._cap_s)
        jitter = self._rng.uniform(-BACKOFF_JITTER, BACKOFF_JITTER)
        if D.BACKOFF_JITTER_ONCE in self.defects:  # the defect: the first draw kept for every delay
            self.first_jitter: float = getattr(self, "first_jitter", jitter)
            jitter = self.first_jitter
        return base * (1 + jitter)


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


def abort(client: aiomqtt.Client, sockets: ChipSockets | None = None) -> None:
    """Drop the TCP connection without DISCONNECT, as a reset chip or a lost AP does.

    On a silent board (``sockets.silent``) the connection is abandoned: nothing is sent.
    Otherwise it is shut down, and the broker sees it closed at once."""
    paho = client._client
    sock = paho.socket()
    silent = sockets is not None and isinstance(sock, socket.socket) and sockets.lose(sock)
    if isinstance(sock, socket.socket | ssl.SSLSocket) and not silent:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    _disconnected(client, "connection aborted")


def track_connection(client: aiomqtt.Client, sockets: ChipSockets, *, keepalive_s: float) -> None:
    """Hand ``client``'s TCP connection to the chip's socket table as paho opens it, so a
    silent board abandons it when the chip stops (`ChipSockets.chip_stopped`): paho keeps
    a socket that leads nowhere and gives it up in its own time, without a word reaching
    the broker.

    The chip generation is the one of now: a connect that completes on its executor
    thread after a reset (the task that awaited it long cancelled) belongs to a chip that
    no longer exists; its socket is abandoned at once and the connect fails, so no ghost
    CONNECT from a dead chip takes the new boot's session over."""
    paho = client._client
    inner = paho.on_socket_open
    generation = sockets.generation

    def on_socket_open(paho_client: Any, userdata: Any, sock: Any) -> None:
        if isinstance(sock, socket.socket) and not sockets.track(
            sock, generation=generation, keepalive_s=keepalive_s
        ):
            paho._sock = None
            sock.close()  # the void now under its number; the connection is kept apart
            raise ConnectionAbortedError("the chip was reset while this connection was being set up")
        if inner is not None:
            inner(paho_client, userdata, sock)

    paho.on_socket_open = on_socket_open


def _disconnected(client: aiomqtt.Client, why: str) -> None:
    disconnected = client._disconnected
    if not disconnected.done():
        disconnected.set_exception(aiomqtt.MqttError(why))
        disconnected.exception()  # retrieved: nobody else needs to see it
