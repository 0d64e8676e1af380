"""A TLS front for the broker with a certificate of the test's choosing.

DEVICE_CONTRACT.md §8: a device must refuse a broker whose certificate is from its CA but
for another host name. The broker's own TLS listener has a certificate for 127.0.0.1 and
localhost (``hil.services.broker``), so this front terminates TLS on a loopback port of its own with
a certificate the same CA issued for ``hostnames`` (nothing the device dials), and
forwards the plaintext to one of the broker's plain listener. A device that checks host
names never gets past the handshake; one that does not is online through it. Every
handshake's outcome is recorded (``handshakes``), so a test can also say that the TLS
session itself was refused, not only that MQTT never came up.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from types import TracebackType

import trustme

_CHUNK = 16384


class TlsFront:
    """Listens on ``127.0.0.1:port``; TLS with a ``ca``-issued certificate for
    ``hostnames``; forwards to ``upstream`` (host, port) in plaintext."""

    def __init__(self, ca: trustme.CA, hostnames: tuple[str, ...], upstream: tuple[str, int]) -> None:
        if not hostnames:
            raise ValueError("a TLS front needs at least one host name for its certificate")
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(*hostnames).configure_cert(self._context)
        self._upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._handshakes: list[str] = []
        self._sockets: set[socket.socket] = set()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name=f"tls-front-{self.port}", daemon=True)
        self._thread.start()

    @property
    def handshakes(self) -> list[str]:
        """One entry per connection, in order: ``"ok"`` or ``"failed: <reason>"``."""
        with self._lock:
            return list(self._handshakes)

    def uri(self) -> str:
        return f"mqtts://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self._track(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(15)
        try:
            tls = self._context.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            with self._lock:
                self._handshakes.append(f"failed: {exc}")
            conn.close()
            return
        with self._lock:
            self._handshakes.append("ok")
        tls.settimeout(None)
        self._track(tls)
        try:
            upstream = socket.create_connection(self._upstream, timeout=5)
        except OSError:
            tls.close()
            return
        upstream.settimeout(None)
        self._track(upstream)
        threading.Thread(target=self._pump, args=(upstream, tls), daemon=True).start()
        self._pump(tls, upstream)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(_CHUNK):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept(); close() alone does not
        self._listener.close()
        with self._lock:
            sockets, self._sockets = list(self._sockets), set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._thread.join(5)

    def __enter__(self) -> TlsFront:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
