"""OTA on the test side: a signing key per session and an image server on loopback.

The server speaks HTTP or HTTPS (certificate from the broker's trustme CA, so a device
provisioned with that CA trusts it) and honours ``Range: bytes=N-`` so downloads can
resume. ``drop_after`` cuts a response after N bytes, to test resume. Signatures are
what the device contract asks for: base64 DER ECDSA P-256 over the image's SHA-256.

``bad_update`` builds the AWS IoT Device Tester's bad updates (LAB_NOTES.md): what is
signed, what is served and how the request is changed, one named variant each, so a lab
suite and a bench script offer the same bad images.
"""

from __future__ import annotations

import base64
import hashlib
import re
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import trustme
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from hil.images.app import parse_image

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


# -- the IDT bad updates ---------------------------------------------------------------------

REJECTED_AT_ONCE = ("corrupt signature", "untrusted signer", "unsigned", "same version", "lower version", "oversize")
"""Bad requests: the device must refuse them before downloading anything."""
FAILS_ITS_CHECKS = (
    "corrupt before signing",
    "corrupt after signing",
    "wrong chip id",
    "one byte",
    "truncated",
    "size mismatch",
    "partition size",
)
"""Good-looking requests for bad images: downloaded, then refused by the image checks.
"partition size" announces exactly the OTA partition's size (the largest an offer may
have, so not refused at once) for a smaller image: refused once the download shows it."""
LOWER_VERSION = "0.1.0"
SIZE_SHORTFALL = 4096  # "size mismatch": the request announces this many bytes too few

Edit = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class BadUpdate:
    """One bad update: the signer signs ``signed``, the server serves ``served``, and
    ``edit`` changes the request after signing (a stripped or forged signature, another
    version or size)."""

    variant: str
    signed: bytes
    served: bytes
    edit: Edit

    def request(self, signer: OtaSigner, url: str, version: str) -> dict[str, Any]:
        """The ``ota/update`` payload for this bad update, ``served`` being at ``url``."""
        return self.edit(signer.request(self.signed, url, version))


def bad_update(variant: str, image: bytes, *, running_version: str, partition_size: int) -> BadUpdate:
    """The IDT case ``variant`` (one of REJECTED_AT_ONCE or FAILS_ITS_CHECKS) made from a
    good, newer ``image``; ``partition_size`` is the OTA slot's (for "oversize" and
    "partition size")."""
    def both(data: bytes, edit: Edit = _unchanged) -> tuple[bytes, bytes, Edit]:
        return data, data, edit

    builders: dict[str, Callable[[], tuple[bytes, bytes, Edit]]] = {
        "corrupt signature": lambda: both(image, corrupt_signature),
        "untrusted signer": lambda: both(image, _signed_by(OtaSigner(), image)),
        "unsigned": lambda: both(image, unsigned),
        "same version": lambda: both(image, _with_field("version", running_version)),
        "lower version": lambda: both(image, _with_field("version", LOWER_VERSION)),
        "oversize": lambda: both(oversize(image, partition_size)),
        "corrupt before signing": lambda: both(flipped(image)),
        "corrupt after signing": lambda: (image, tampered(image), _unchanged),
        "wrong chip id": lambda: both(with_chip_id(image, 2)),  # an ESP32-S2 build
        "one byte": lambda: both(image[:1]),
        "truncated": lambda: both(image[: len(image) // 2]),
        "size mismatch": lambda: both(image, _with_field("size", len(image) - SIZE_SHORTFALL)),
        "partition size": lambda: both(image, _with_field("size", partition_size)),
    }
    if variant not in builders:
        raise ValueError(f"unknown bad update {variant!r}; known: {sorted(builders)}")
    signed, served, edit = builders[variant]()
    return BadUpdate(variant, signed, served, edit)


def flipped(image: bytes, at: int | None = None) -> bytes:
    """``image`` with the byte at ``at`` (default: the middle) inverted: its checksum and
    appended hash no longer match."""
    out = bytearray(image)
    out[len(image) // 2 if at is None else at] ^= 0xFF
    return bytes(out)


def tampered(image: bytes) -> bytes:
    """``image`` changed the way an attacker who cannot sign would change it: one byte in
    the middle of its largest segment inverted, and the checksum and appended SHA-256
    redone, so the image checks itself as good (esp_image_verify passes) and only the
    signed digest of the request tells it apart."""
    parsed = parse_image(image)
    segment = max(parsed.segments, key=lambda s: len(s.data))
    at = segment.data_offset + len(segment.data) // 2
    out = bytearray(image)
    out[at] ^= 0xFF
    hash_len = 32 if parsed.hash_appended else 0
    out[parsed.length - hash_len - 1] ^= 0xFF  # the checksum is the XOR of segment data
    if parsed.hash_appended:
        out[parsed.length - 32 : parsed.length] = hashlib.sha256(out[: parsed.length - 32]).digest()
    return bytes(out)


def with_chip_id(image: bytes, chip_id: int) -> bytes:
    """The image built for another chip: header chip id patched, appended SHA-256 redone
    (the checksum covers segment data only)."""
    parsed = parse_image(image)
    out = bytearray(image)
    out[12:14] = chip_id.to_bytes(2, "little")
    if parsed.hash_appended:
        out[parsed.length - 32 : parsed.length] = hashlib.sha256(out[: parsed.length - 32]).digest()
    return bytes(out)


def oversize(image: bytes, partition_size: int) -> bytes:
    """``image`` padded with zeros to one byte more than the OTA partition holds."""
    if len(image) > partition_size:
        return image
    return image + bytes(partition_size + 1 - len(image))


def unsigned(request: dict[str, Any]) -> dict[str, Any]:
    """The request without its signature."""
    return {key: value for key, value in request.items() if key != "signature"}


def corrupt_signature(request: dict[str, Any]) -> dict[str, Any]:
    """The request with one byte of its DER signature changed (inside the r integer)."""
    raw = bytearray(base64.b64decode(request["signature"]))
    raw[8] ^= 0x55
    return {**request, "signature": base64.b64encode(raw).decode()}


def _signed_by(signer: OtaSigner, image: bytes) -> Edit:
    """The request signed by another key (one the device was not provisioned with)."""
    return lambda request: {**request, "signature": signer.sign(image)}


def _with_field(name: str, value: object) -> Edit:
    return lambda request: {**request, name: value}


def _unchanged(request: dict[str, Any]) -> dict[str, Any]:
    return request


@dataclass
class _Shared:
    files: dict[str, bytes] = field(default_factory=dict)
    drop_after: int | None = None
    rate: int | None = None  # body bytes per second; None: full speed
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: dict[str, int] = field(default_factory=dict)  # body bytes gone out, per name
    progress: threading.Condition = field(default_factory=threading.Condition)


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
            rate = shared.rate
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
            if self._send(name, body[:drop_after], rate):
                self.close_connection = True
                self.connection.shutdown(2)
            return
        self._send(name, body, rate)

    def _send(self, name: str, body: bytes, rate: int | None) -> bool:
        """Write ``body``, paced to ``rate`` bytes/s in 50 ms slices when throttled,
        counting what went out; False if the client went away (a device losing power)."""
        step = len(body) if rate is None else max(1, rate // 20)
        for at in range(0, len(body), max(step, 1)):
            chunk = body[at : at + step]
            try:
                self.wfile.write(chunk)
                self.wfile.flush()
            except OSError:  # BrokenPipe, ConnectionReset, SSLError: the peer is gone
                self.close_connection = True
                return False
            with self.shared.progress:
                self.shared.sent[name] = self.shared.sent.get(name, 0) + len(chunk)
                self.shared.progress.notify_all()
            if rate is not None:
                time.sleep(len(chunk) / rate)  # the server's pacing, not a test's wait
        return True

    def log_message(self, format: str, *args: Any) -> None:
        """Requests are recorded in ``requests``; no stderr noise."""


class _FleetHTTPServer(ThreadingHTTPServer):
    # socketserver's accept queue is 5: an update offered to a fleet at once has its
    # devices' requests arrive together, and those beyond the queue wait for a SYN
    # retransmit (1 s, 3 s) the device's download timeout counts. The kernel caps this
    # at somaxconn.
    request_queue_size = 1024


class OtaServer:
    """Serves images by name at ``http(s)://127.0.0.1:PORT/<name>``."""

    def __init__(self, *, tls_ca: trustme.CA | None = None) -> None:
        self._shared = _Shared()
        handler = type("Handler", (_Handler,), {"shared": self._shared})
        self._httpd = _FleetHTTPServer(("127.0.0.1", 0), handler)
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

    def drop_next_after(self, count: int | None) -> None:
        """Cut the next response after ``count`` body bytes (a dropped connection); None
        disarms a cut that no request has used up (the device never asked)."""
        with self._shared.lock:
            self._shared.drop_after = count

    def throttle(self, bytes_per_s: int | None) -> None:
        """Serve bodies at ``bytes_per_s`` (None: full speed), so that a download lasts
        long enough for a test to act while it runs (cut the power, say)."""
        if bytes_per_s is not None and (isinstance(bytes_per_s, bool) or bytes_per_s <= 0):
            raise ValueError(f"throttle takes a positive byte rate or None, not {bytes_per_s!r}")
        with self._shared.lock:
            self._shared.rate = bytes_per_s

    def wait_sent(self, name: str, count: int, timeout: float) -> int:
        """Block until ``count`` body bytes of ``name`` have gone out (all responses
        together); returns how many have. TimeoutError, saying how far it got, otherwise."""
        shared = self._shared
        with shared.progress:
            if not shared.progress.wait_for(lambda: shared.sent.get(name, 0) >= count, timeout):
                raise TimeoutError(
                    f"{self.url(name)}: {shared.sent.get(name, 0)} of {count} bytes sent after {timeout} s; "
                    f"requests so far: {self.requests}"
                )
            return shared.sent[name]

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
