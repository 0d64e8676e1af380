"""hil.services.tls_front: a certificate for another host name, and the plaintext forwarded."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator

import pytest
import trustme

from hil.services.tls_front import TlsFront

OTHER = "mqtt.other-host.invalid"


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(1024):
                    conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()
    server.close()


def client(ca: trustme.CA, server_hostname: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=ca.cert_pem.bytes().decode())
    assert context.check_hostname
    return context


def test_a_client_that_checks_the_host_name_is_refused_and_the_front_records_it(echo: tuple[str, int]) -> None:
    ca = trustme.CA()
    with TlsFront(ca, (OTHER,), echo) as front:
        raw = socket.create_connection(("127.0.0.1", front.port), timeout=5)
        with pytest.raises(ssl.SSLCertVerificationError):
            client(ca, "127.0.0.1").wrap_socket(raw, server_hostname="127.0.0.1")
        raw.close()
        assert front.uri() == f"mqtts://127.0.0.1:{front.port}"


def test_the_certificate_is_from_the_ca_for_the_other_name_and_bytes_are_forwarded(echo: tuple[str, int]) -> None:
    ca = trustme.CA()
    with TlsFront(ca, (OTHER,), echo) as front:
        raw = socket.create_connection(("127.0.0.1", front.port), timeout=5)
        with client(ca, OTHER).wrap_socket(raw, server_hostname=OTHER) as tls:
            tls.sendall(b"ping")
            assert tls.recv(4) == b"ping"
        assert front.handshakes[0] == "ok"


def test_a_front_needs_a_host_name() -> None:
    with pytest.raises(ValueError, match="host name"):
        TlsFront(trustme.CA(), (), ("127.0.0.1", 1))
