"""OTA on the test side: a signing key per session and an image server on loopback.

The server speaks HTTP or HTTPS (certificate from the broker's trustme CA, so a device
provisioned with that CA trusts it) and honours ``Range: bytes=N-`` so downloads can
resume. ``drop_after`` cuts a response after N bytes, to test resume. Signatures are
what the device contract asks for: base64 DER ECDSA P-256 over the image's SHA-256.
"""

from __future__ import annotations

import base64
import hashlib
import re
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import trustme
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

_RANGE = re.compile(r"bytes=(\d+)-$")


class OtaSigner:
    """An ECDSA P-256 key; its public half is what devices are provisioned with."""

    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())

    @property
    def public_pem(self) -> str:
        return (
            self._key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )

    def sign(self, image: bytes) -> str:
        digest = hashlib.sha256(image).digest()
        signature = self._key.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        return base64.b64encode(signature).decode()

    def request(self, image: bytes, url: str, version: str) -> dict[str, Any]:
        """The ``ota/update/{id}`` payload for this image."""
        return {
            "version": version,
            "url": url,
            "size": len(image),
            "sha256": hashlib.sha256(image).hexdigest(),
            "signature": self.sign(image),
        }


@dataclass
class _Shared:
    files: dict[str, bytes] = field(default_factory=dict)
    drop_after: int | None = None
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    shared: _Shared

    def do_GET(self) -> None:
        shared = self.shared
        name = self.path.lstrip("/")
        with shared.lock:
            shared.requests.append((name, self.headers.get("Range")))
            data = shared.files.get(name)
            drop_after = shared.drop_after
            shared.drop_after = None  # one cut per arming
        if data is None:
            self.send_error(404)
            return
        start = 0
        match = _RANGE.match(self.headers.get("Range", ""))
        if match:
            start = int(match.group(1))
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if drop_after is not None:
            self.wfile.write(body[:drop_after])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Requests are recorded in ``requests``; no stderr noise."""


class OtaServer:
    """Serves images by name at ``http(s)://127.0.0.1:PORT/<name>``."""

    def __init__(self, *, tls_ca: trustme.CA | None = None) -> None:
        self._shared = _Shared()
        handler = type("Handler", (_Handler,), {"shared": self._shared})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self.scheme = "http"
        if tls_ca is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls_ca.issue_cert("127.0.0.1").configure_cert(context)
            self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
            self.scheme = "https"
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def add(self, name: str, data: bytes) -> str:
        with self._shared.lock:
            self._shared.files[name] = data
        return self.url(name)

    def url(self, name: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/{name}"

    def drop_next_after(self, count: int) -> None:
        """Cut the next response after ``count`` body bytes (a dropped connection)."""
        with self._shared.lock:
            self._shared.drop_after = count

    @property
    def requests(self) -> list[tuple[str, str | None]]:
        with self._shared.lock:
            return list(self._shared.requests)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def __enter__(self) -> OtaServer:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
