"""The firmware model's OTA: request checks, HTTP(S) download with resume, slot writing,
otadata as esp_ota_ops writes it, and rollback detection against the virtual bootloader.

The HTTP(S) server here is test-local (asyncio, loopback only) so each test can make it
misbehave exactly once: drop after N bytes, ignore Range, answer 404, stall.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import hashlib
import ipaddress
import json
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.x509.oid import NameOID

from hil.images.app import AppDescriptor, build_app_image
from hil.images.otadata import OTADATA_SECTOR, OtaData, OtaEntry, OtaState
from hil.images.partitions import PARTITION_TABLE_OFFSET, TWO_OTA_TABLE, Partition
from hil.sim.bootloader import Bootloader, BootTarget
from hil.sim.firmware.http_client import (
    ConnectionLost,
    HttpError,
    TlsError,
    fetch_range,
    open_range,
    parse_url,
    ssl_context_for_ca,
)
from hil.sim.firmware.ota import (
    OtaFailed,
    OtaRejected,
    OtaRequest,
    OtaWriter,
    RollbackFailed,
    compare_versions,
    download_to,
    find_rollback,
    mark_app_invalid,
    mark_app_valid,
    next_update_partition,
    ota_begin,
    parse_ota_request,
    precheck,
    read_app_descriptor,
    running_entry_state,
    set_boot_partition,
)
from hil.sim.flash import SpiFlash

TABLE = TWO_OTA_TABLE


def _partition(label: str) -> Partition:
    part = TABLE.by_label(label)
    assert part is not None
    return part


FACTORY = _partition("factory")
OTA_0 = _partition("ota_0")
OTA_1 = _partition("ota_1")
OTADATA = _partition("otadata")

SIGNER = ec.generate_private_key(ec.SECP256R1())
OTHER_SIGNER = ec.generate_private_key(ec.SECP256R1())


def pubkey_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


PUBKEY = pubkey_pem(SIGNER)


def image(version: str, *, chip_id: int = 5) -> bytes:
    return build_app_image(AppDescriptor(version=version, project_name="hil-fw"), chip_id=chip_id)


def request_for(
    data: bytes,
    *,
    version: str = "1.1.0",
    url: str = "http://127.0.0.1:1/fw.bin",
    signer: ec.EllipticCurvePrivateKey = SIGNER,
) -> OtaRequest:
    digest = hashlib.sha256(data).digest()
    signature = signer.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    return OtaRequest(
        version=version,
        url=url,
        size=len(data),
        sha256=digest.hex(),
        signature=base64.b64encode(signature).decode(),
    )


# -- certificates (trustme is not a dependency here: cryptography makes them) ------------------


@dataclass(frozen=True)
class Pki:
    ca_pem: str
    server_context: ssl.SSLContext


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_pki(directory: Path, label: str) -> Pki:
    """A CA and a server certificate for 127.0.0.1 signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"{label} test CA"))
        .issuer_name(_name(f"{label} test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path = directory / f"{label}-server.pem"
    key_path = directory / f"{label}-server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert_path, key_path)
    return Pki(
        ca_pem=ca_cert.public_bytes(serialization.Encoding.PEM).decode(),
        server_context=server_context,
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"), "rig")


@pytest.fixture(scope="module")
def rogue_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("rogue"), "rogue")


# -- the test server ---------------------------------------------------------------------------


@dataclass
class Served:
    range_start: int | None
    sent: int


class ImageServer:
    """Serves one body on 127.0.0.1 with Range support and scripted misbehaviour.

    ``drops``: per request, in order, how many body bytes to send before closing the
    connection (None: the whole body). ``always_drop`` applies to every request after.
    """

    def __init__(
        self,
        body: bytes,
        *,
        tls: ssl.SSLContext | None = None,
        drops: tuple[int | None, ...] = (),
        always_drop: int | None = None,
        ignore_range: bool = False,
        chunked: bool = False,
        status: int | None = None,
        stall: bool = False,
    ) -> None:
        self.body = body
        self.tls = tls
        self.drops = list(drops)
        self.always_drop = always_drop
        self.ignore_range = ignore_range
        self.chunked = chunked
        self.status = status
        self.stall = stall
        self.served: list[Served] = []
        self.url = ""
        self._stop = asyncio.Event()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> ImageServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.tls)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{port}/fw.bin"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def total_sent(self) -> int:
        return sum(s.sent for s in self.served)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            await self._respond(head, writer)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(2):
                    await writer.wait_closed()

    async def _respond(self, head: bytes, writer: asyncio.StreamWriter) -> None:
        if self.stall:
            await self._stop.wait()
            return
        headers = {}
        for line in head.decode("latin-1").split("\r\n")[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        range_start = None
        if "range" in headers:
            range_start = int(headers["range"].removeprefix("bytes=").rstrip("-"))
        if self.status is not None:
            writer.write(f"HTTP/1.1 {self.status} Nope\r\nContent-Length: 0\r\n\r\n".encode())
            self.served.append(Served(range_start, 0))
            return
        start = 0
        total = len(self.body)
        if range_start is not None and not self.ignore_range:
            if range_start >= total:
                writer.write(b"HTTP/1.1 416 Range Not Satisfiable\r\nContent-Length: 0\r\n\r\n")
                self.served.append(Served(range_start, 0))
                return
            start = range_start
            status = f"206 Partial Content\r\nContent-Range: bytes {start}-{total - 1}/{total}"
        else:
            status = "200 OK"
        payload = self.body[start:]
        limit = self.drops.pop(0) if self.drops else self.always_drop
        framing = (
            "Transfer-Encoding: chunked" if self.chunked else f"Content-Length: {len(payload)}"
        )
        writer.write(f"HTTP/1.1 {status}\r\n{framing}\r\nConnection: close\r\n\r\n".encode())
        to_send = payload if limit is None else payload[:limit]
        if self.chunked:
            for i in range(0, len(to_send), 1000):
                piece = to_send[i : i + 1000]
                writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            if limit is None:
                writer.write(b"0\r\n\r\n")
        else:
            writer.write(to_send)
        await writer.drain()
        self.served.append(Served(range_start, len(to_send)))


async def collect(agen: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in agen])


BODY = bytes(range(256)) * 200  # 51200 bytes


# -- HTTP client -------------------------------------------------------------------------------


def test_plain_get_without_range() -> None:
    async def scenario() -> None:
        async with ImageServer(BODY) as server:
            data = await collect(fetch_range(server.url, ssl_context=None, timeout_s=5))
        assert data == BODY
        assert server.served == [Served(None, len(BODY))]

    asyncio.run(scenario())


def test_range_request_gets_206_from_offset() -> None:
    async def scenario() -> None:
        async with (
            ImageServer(BODY) as server,
            open_range(server.url, 1000, ssl_context=None, timeout_s=5) as resp,
        ):
            assert (resp.status, resp.start, resp.total) == (206, 1000, len(BODY))
            assert resp.length == len(BODY) - 1000
            data = b"".join([c async for c in resp.chunks(512)])
        assert data == BODY[1000:]
        assert server.served == [Served(1000, len(BODY) - 1000)]

    asyncio.run(scenario())


def test_server_ignoring_range_answers_200_from_zero() -> None:
    async def scenario() -> None:
        async with ImageServer(BODY, ignore_range=True) as server:
            async with open_range(server.url, 1000, ssl_context=None, timeout_s=5) as resp:
                assert (resp.status, resp.start, resp.total) == (200, 0, len(BODY))
            data = await collect(fetch_range(server.url, 1000, ssl_context=None, timeout_s=5))
        assert data == BODY[1000:]

    asyncio.run(scenario())


def test_chunked_body() -> None:
    async def scenario() -> None:
        async with ImageServer(BODY, chunked=True) as server:
            data = await collect(fetch_range(server.url, 100, ssl_context=None, timeout_s=5))
        assert data == BODY[100:]

    asyncio.run(scenario())


@pytest.mark.parametrize("chunked", [False, True])
def test_early_close_is_connection_lost_with_bytes_received(chunked: bool) -> None:
    async def scenario() -> None:
        got = 0
        async with ImageServer(BODY, drops=(5000,), chunked=chunked) as server:
            with pytest.raises(ConnectionLost) as err:
                async with open_range(server.url, 0, ssl_context=None, timeout_s=5) as resp:
                    async for chunk in resp.chunks():
                        got += len(chunk)
        assert got == err.value.received
        assert got == 5000

    asyncio.run(scenario())


def test_http_error_status() -> None:
    async def scenario() -> None:
        async with ImageServer(BODY, status=404) as server:
            with pytest.raises(HttpError) as err:
                await collect(fetch_range(server.url, ssl_context=None, timeout_s=5))
        assert err.value.status == 404

    asyncio.run(scenario())


def test_https_verified_with_provisioned_ca(pki: Pki) -> None:
    async def scenario() -> None:
        context = ssl_context_for_ca(pki.ca_pem)
        async with ImageServer(BODY, tls=pki.server_context) as server:
            assert server.url.startswith("https://127.0.0.1:")
            data = await collect(fetch_range(server.url, 7, ssl_context=context, timeout_s=5))
        assert data == BODY[7:]

    asyncio.run(scenario())


def test_https_from_untrusted_ca_is_tls_error(pki: Pki, rogue_pki: Pki) -> None:
    async def scenario() -> None:
        context = ssl_context_for_ca(pki.ca_pem)
        async with ImageServer(BODY, tls=rogue_pki.server_context) as server:
            with pytest.raises(TlsError, match="certificate verify failed"):
                await collect(fetch_range(server.url, ssl_context=context, timeout_s=5))
        assert server.served == []

    asyncio.run(scenario())


def test_refused_connection_is_connection_lost() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def scenario() -> None:
        with pytest.raises(ConnectionLost, match=r"connect to 127\.0\.0\.1"):
            await collect(fetch_range(f"http://127.0.0.1:{port}/x", ssl_context=None, timeout_s=5))

    asyncio.run(scenario())


def test_stalled_server_times_out() -> None:
    async def scenario() -> None:
        async with ImageServer(BODY, stall=True) as server:
            with pytest.raises(ConnectionLost, match=r"within 0\.2 s"):
                await collect(fetch_range(server.url, ssl_context=None, timeout_s=0.2))

    asyncio.run(scenario())


def test_bad_ca_pem_and_bad_urls() -> None:
    with pytest.raises(ValueError, match="CA"):
        ssl_context_for_ca("not a certificate")
    with pytest.raises(ValueError, match="scheme"):
        parse_url("ftp://127.0.0.1/fw.bin")
    with pytest.raises(ValueError, match="no host"):
        parse_url("http:///fw.bin")
    assert parse_url("https://example.com/a?b=1").target == "/a?b=1"
    assert parse_url("http://h:8080/").host_header == "h:8080"


# -- request parsing, versions and prechecks ---------------------------------------------------


def test_parse_valid_request() -> None:
    payload = {
        "version": "1.2.0",
        "url": "https://ota.example/fw.bin",
        "size": 1234,
        "sha256": "ab" * 32,
        "signature": "AAAA",
        "extra": True,
    }
    assert parse_ota_request(json.dumps(payload).encode()) == OtaRequest(
        version="1.2.0",
        url="https://ota.example/fw.bin",
        size=1234,
        sha256="ab" * 32,
        signature="AAAA",
    )


@pytest.mark.parametrize(
    ("payload", "reason", "version"),
    [
        (b"{nope", "malformed JSON", None),
        (b"\xff\xfe", "malformed JSON", None),
        (b"[1, 2]", "not a JSON object", None),
        (b'{"version": "2.0"}', "missing field(s): url, size, sha256, signature", "2.0"),
        (
            b'{"version":"2.0","url":"http://h/x","size":"10","sha256":"a","signature":"b"}',
            "'size' must be an integer",
            "2.0",
        ),
        (
            b'{"version":"2.0","url":"http://h/x","size":true,"sha256":"a","signature":"b"}',
            "'size' must be an integer",
            "2.0",
        ),
        (
            b'{"version":"2.0","url":"http://h/x","size":1,"sha256":5,"signature":"b"}',
            "'sha256' must be a string",
            "2.0",
        ),
        (
            b'{"version":"","url":"http://h/x","size":1,"sha256":"a","signature":"b"}',
            "'version' is empty",
            None,
        ),
        (
            b'{"version":"2.0","url":"ftp://h/x","size":1,"sha256":"a","signature":"b"}',
            "bad url",
            "2.0",
        ),
    ],
)
def test_parse_rejections(payload: bytes, reason: str, version: str | None) -> None:
    result = parse_ota_request(payload)
    assert isinstance(result, OtaRejected)
    assert reason in result.reason
    assert result.version == version


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("1.10.0", "1.9.3", 1),
        ("1.9.3", "1.10.0", -1),
        ("1.2", "1.2.0", 0),
        ("v1.2.3", "1.2.3", 0),
        ("2.0.0", "10.0.0", -1),
        ("1.2.x", "1.2.3", 1),
        ("1.0.0-rc1", "1.0.0-rc2", -1),
        ("1.0.1", "1.0.0", 1),
    ],
)
def test_compare_versions(a: str, b: str, expected: int) -> None:
    assert compare_versions(a, b) == expected


def test_precheck_accepts_a_signed_newer_image() -> None:
    data = image("1.1.0")
    assert (
        precheck(
            request_for(data),
            running_version="1.0.0",
            partition_size=OTA_0.size,
            pubkey_pem=PUBKEY,
        )
        is None
    )


def test_signature_over_digest_is_signature_over_image() -> None:
    """Prehashed(SHA256) over the digest is the same signature scheme as signing the image."""
    data = image("1.1.0")
    signature = SIGNER.sign(data, ec.ECDSA(hashes.SHA256()))
    req = request_for(data)
    req = OtaRequest(
        req.version, req.url, req.size, req.sha256, base64.b64encode(signature).decode()
    )
    assert (
        precheck(req, running_version="1.0.0", partition_size=OTA_0.size, pubkey_pem=PUBKEY) is None
    )


def check(
    req: OtaRequest,
    *,
    pubkey: str | None = PUBKEY,
    allow_downgrade: bool = False,
    check_signature: bool = True,
) -> str | None:
    """precheck as the firmware calls it while running 1.0.0 with an ota_0-sized slot."""
    return precheck(
        req,
        running_version="1.0.0",
        partition_size=OTA_0.size,
        pubkey_pem=pubkey,
        allow_downgrade=allow_downgrade,
        check_signature=check_signature,
    )


SIGNED = request_for(image("1.1.0"))


@pytest.mark.parametrize(
    ("req", "pubkey", "reason"),
    [
        (replace(SIGNED, version="1.0.0"), PUBKEY, "version 1.0.0 is not newer than running 1.0.0"),
        (replace(SIGNED, version="0.9.9"), PUBKEY, "not newer"),
        (replace(SIGNED, size=0), PUBKEY, "size 0 is not positive"),
        (replace(SIGNED, size=OTA_0.size + 1), PUBKEY, "exceeds the OTA partition"),
        (replace(SIGNED, sha256="xyz"), PUBKEY, "sha256 is not 64 hex digits"),
        (replace(SIGNED, signature="!!!"), PUBKEY, "not valid base64"),
        (replace(SIGNED, signature=base64.b64encode(b"0\x00").decode()), PUBKEY, "does not verify"),
        (SIGNED, None, "no ota_pubkey"),
        (SIGNED, "garbage", "not a PEM public key"),
        (SIGNED, pubkey_pem(OTHER_SIGNER), "does not verify"),
    ],
)
def test_precheck_rejections(req: OtaRequest, pubkey: str | None, reason: str) -> None:
    result = check(req, pubkey=pubkey)
    assert result is not None
    assert reason in result


def test_untrusted_signer_and_tampered_digest_are_rejected() -> None:
    data = image("1.1.0")
    rogue = request_for(data, signer=OTHER_SIGNER)
    assert "does not verify" in (check(rogue) or "")
    tampered = replace(request_for(data), sha256=hashlib.sha256(data + b"x").hexdigest())
    assert "does not verify" in (check(tampered) or "")


def test_defect_flags_skip_their_checks() -> None:
    req = request_for(image("0.9.0"), version="0.9.0", signer=OTHER_SIGNER)
    assert "not newer" in (check(req) or "")
    assert "does not verify" in (check(req, allow_downgrade=True) or "")
    assert check(req, pubkey=None, allow_downgrade=True, check_signature=False) is None


# -- flash, slots and the writer ---------------------------------------------------------------


@pytest.fixture
def flash(tmp_path: Path) -> Iterator[SpiFlash]:
    """A 4 MB chip with the two-OTA table, a factory app 1.0.0 and blank otadata."""
    with SpiFlash(tmp_path / "flash.bin") as chip:
        chip.write(PARTITION_TABLE_OFFSET, TABLE.to_bytes())
        chip.write(FACTORY.offset, image("1.0.0"))
        yield chip


def boot(flash: SpiFlash) -> Partition:
    """Run the virtual 2nd-stage bootloader; the partition it boots."""
    result = Bootloader(flash, lambda level, tag, msg: None).run()
    assert isinstance(result, BootTarget), result
    return result.partition


def otadata(flash: SpiFlash) -> OtaData:
    return OtaData.from_bytes(flash.read(OTADATA.offset, OTADATA.size))


def install(flash: SpiFlash, running: Partition, data: bytes, version: str) -> Partition:
    """Write an image into the next slot as an OTA would, without the network."""
    writer = ota_begin(flash, TABLE, running, request_for(data, version=version))
    writer.write(0, data)
    writer.end()
    return writer.partition


@pytest.mark.parametrize(
    ("running", "expected"), [(FACTORY, OTA_0), (OTA_0, OTA_1), (OTA_1, OTA_0)]
)
def test_next_update_partition(running: Partition, expected: Partition) -> None:
    assert next_update_partition(TABLE, running) == expected


def test_writer_writes_checks_and_returns_the_image(flash: SpiFlash) -> None:
    data = image("1.1.0")
    writer = OtaWriter(flash, OTA_0, request_for(data))
    writer.begin()
    for offset in range(0, len(data), 4096):
        writer.write(offset, data[offset : offset + 4096])
    checked = writer.end()
    assert checked.descriptor is not None and checked.descriptor.version == "1.1.0"
    assert flash.read(OTA_0.offset, len(data)) == data
    desc = read_app_descriptor(flash, OTA_0)
    assert desc is not None and desc.version == "1.1.0"


def test_writer_begin_erases_stale_bytes(flash: SpiFlash) -> None:
    """NOR: without an erase the new image would be ANDed into the old one."""
    flash.write(OTA_0.offset, image("0.5.0"))
    data = image("1.1.0")
    writer = OtaWriter(flash, OTA_0, request_for(data))
    writer.begin()
    writer.write(0, data)
    writer.end()


def _failing_writer(flash: SpiFlash, data: bytes, req: OtaRequest) -> OtaFailed:
    writer = OtaWriter(flash, OTA_0, req)
    writer.begin()
    writer.write(0, data)
    with pytest.raises(OtaFailed) as err:
        writer.end()
    assert flash.read(OTA_0.offset, 0x1000) == b"\xff" * 0x1000, "slot must be unbootable"
    assert read_app_descriptor(flash, OTA_0) is None
    return err.value


def test_writer_truncated(flash: SpiFlash) -> None:
    data = image("1.1.0")
    err = _failing_writer(flash, data[:-100], request_for(data))
    assert err.reason == f"size mismatch: received {len(data) - 100} of {len(data)} bytes"


def test_writer_corrupt_byte_is_sha_mismatch(flash: SpiFlash) -> None:
    data = image("1.1.0")
    corrupt = bytearray(data)
    corrupt[5000] ^= 0x01
    err = _failing_writer(flash, bytes(corrupt), request_for(data))
    assert err.reason.startswith("sha256 mismatch")


def test_writer_wrong_chip_image(flash: SpiFlash) -> None:
    data = image("1.1.0", chip_id=9)
    err = _failing_writer(flash, data, request_for(data))
    assert err.reason == "invalid image: mismatch chip ID, expected 5, found 9"


def test_writer_one_byte_image(flash: SpiFlash) -> None:
    err = _failing_writer(flash, b"\xe9", request_for(b"\xe9"))
    assert err.reason.startswith("invalid image:")
    err = _failing_writer(flash, b"\x00", request_for(b"\x00"))
    assert "invalid magic byte" in err.reason


def test_writer_refuses_more_than_announced(flash: SpiFlash) -> None:
    data = image("1.1.0")
    writer = OtaWriter(flash, OTA_0, request_for(data[:100]))
    writer.begin()
    with pytest.raises(OtaFailed, match="more than the announced 100 bytes"):
        writer.write(0, data[:101])
    in_order = OtaWriter(flash, OTA_0, request_for(data))
    in_order.begin()
    with pytest.raises(ValueError, match="expected the next byte 0"):
        in_order.write(10, data[10:20])


def test_ota_begin_refuses_while_pending_verify(flash: SpiFlash) -> None:
    slot = install(flash, FACTORY, image("1.1.0"), "1.1.0")
    set_boot_partition(flash, TABLE, slot)
    assert boot(flash) == OTA_0
    assert running_entry_state(flash, TABLE, OTA_0) == OtaState.PENDING_VERIFY
    with pytest.raises(OtaFailed, match="pending verification"):
        ota_begin(flash, TABLE, OTA_0, request_for(image("1.2.0")))


# -- download ------------------------------------------------------------------------------------


def _download(
    flash: SpiFlash,
    server: ImageServer,
    data: bytes,
    *,
    ssl_context: ssl.SSLContext | None = None,
    max_attempts: int = 5,
) -> tuple[OtaWriter, list[int]]:
    progress: list[int] = []

    async def scenario() -> OtaWriter:
        async with server:
            req = request_for(data, url=server.url)
            writer = OtaWriter(flash, OTA_0, req)
            await download_to(
                writer,
                req,
                ssl_context=ssl_context,
                max_attempts=max_attempts,
                on_progress=lambda done, total: progress.append(done),
                timeout_s=5,
                retry_delay_s=0,
            )
            return writer

    return asyncio.run(scenario()), progress


def test_download_resumes_without_refetching(flash: SpiFlash) -> None:
    data = image("1.1.0")
    server = ImageServer(data, drops=(30000, 20000))
    writer, progress = _download(flash, server, data)
    writer.end()
    assert [s.range_start for s in server.served] == [None, 30000, 50000]
    assert server.total_sent == len(data), "no byte was downloaded twice"
    assert progress == sorted(progress) and progress[-1] == len(data)


def test_download_resumes_over_https(flash: SpiFlash, pki: Pki) -> None:
    data = image("1.1.0")
    server = ImageServer(data, tls=pki.server_context, drops=(12345,))
    writer, _ = _download(flash, server, data, ssl_context=ssl_context_for_ca(pki.ca_pem))
    writer.end()
    assert [s.range_start for s in server.served] == [None, 12345]
    assert server.total_sent == len(data)


def test_download_from_server_ignoring_range(flash: SpiFlash) -> None:
    data = image("1.1.0")
    server = ImageServer(data, drops=(30000,), ignore_range=True)
    writer, _ = _download(flash, server, data)
    writer.end()
    assert [s.range_start for s in server.served] == [None, 30000]
    assert flash.read(OTA_0.offset, len(data)) == data


def test_download_gives_up_after_max_attempts(flash: SpiFlash) -> None:
    data = image("1.1.0")
    server = ImageServer(data, always_drop=1000)
    with pytest.raises(OtaFailed, match="after 3 attempts"):
        _download(flash, server, data, max_attempts=3)
    assert len(server.served) == 3
    assert [s.range_start for s in server.served] == [None, 1000, 2000]
    assert flash.read(OTA_0.offset, 0x1000) == b"\xff" * 0x1000


def test_download_404_fails_at_once(flash: SpiFlash) -> None:
    data = image("1.1.0")
    server = ImageServer(data, status=404)
    with pytest.raises(OtaFailed, match="HTTP 404"):
        _download(flash, server, data)
    assert len(server.served) == 1


def test_download_untrusted_server_fails_at_once(flash: SpiFlash, pki: Pki, rogue_pki: Pki) -> None:
    data = image("1.1.0")
    server = ImageServer(data, tls=rogue_pki.server_context)
    with pytest.raises(OtaFailed, match="certificate verify failed"):
        _download(flash, server, data, ssl_context=ssl_context_for_ca(pki.ca_pem))


def test_download_size_disagreement(flash: SpiFlash) -> None:
    data = image("1.1.0")
    server = ImageServer(data + b"extra")
    with pytest.raises(OtaFailed, match=r"server has \d+ bytes, request says"):
        _download(flash, server, data)


def test_download_chunked_without_total(flash: SpiFlash) -> None:
    data = image("1.1.0")
    writer, _ = _download(flash, ImageServer(data, chunked=True, drops=(7000,)), data)
    writer.end()


def test_download_of_more_than_announced_without_total(flash: SpiFlash) -> None:
    data = image("1.1.0")
    with pytest.raises(OtaFailed, match="more than the announced"):
        _download(flash, ImageServer(data + b"extra", chunked=True), data)
    assert flash.read(OTA_0.offset, 0x1000) == b"\xff" * 0x1000


# -- otadata -------------------------------------------------------------------------------------


def test_set_boot_partition_seq_sequence(flash: SpiFlash) -> None:
    """SPEC_FACTS §5: blank → ota_0 is seq 1; seq1 → ota_1 gives 2; seq2 → ota_0 gives 3."""
    flash.write(OTA_0.offset, image("1.1.0"))
    flash.write(OTA_1.offset, image("1.2.0"))

    set_boot_partition(flash, TABLE, OTA_0)
    assert otadata(flash).entries == (OtaEntry(1, OtaState.NEW), None)

    set_boot_partition(flash, TABLE, OTA_1)
    assert otadata(flash).entries == (OtaEntry(1, OtaState.NEW), OtaEntry(2, OtaState.NEW))

    set_boot_partition(flash, TABLE, OTA_0, rollback=False)
    assert otadata(flash).entries == (OtaEntry(3, OtaState.UNDEFINED), OtaEntry(2, OtaState.NEW))
    assert otadata(flash).active_slot(2) == 0

    set_boot_partition(flash, TABLE, FACTORY)
    assert otadata(flash).entries == (None, None)
    assert boot(flash) == FACTORY


def test_set_boot_partition_validates_the_image(flash: SpiFlash) -> None:
    flash.write(OTA_1.offset, image("1.2.0", chip_id=9))
    with pytest.raises(OtaFailed, match="invalid image in ota_1: mismatch chip ID"):
        set_boot_partition(flash, TABLE, OTA_1)
    with pytest.raises(OtaFailed, match="invalid magic byte"):
        set_boot_partition(flash, TABLE, OTA_0)
    assert otadata(flash).entries == (None, None)


def test_update_marked_valid(flash: SpiFlash) -> None:
    slot = install(flash, FACTORY, image("1.1.0"), "1.1.0")
    set_boot_partition(flash, TABLE, slot)
    assert running_entry_state(flash, TABLE, FACTORY) is None
    assert boot(flash) == OTA_0
    assert running_entry_state(flash, TABLE, OTA_0) == OtaState.PENDING_VERIFY
    assert mark_app_valid(flash, TABLE, OTA_0) is True
    assert mark_app_valid(flash, TABLE, OTA_0) is False
    assert running_entry_state(flash, TABLE, OTA_0) == OtaState.VALID
    assert boot(flash) == OTA_0, "a valid app survives a reset"
    assert find_rollback(flash, TABLE, OTA_0) is None
    with pytest.raises(OtaFailed, match="does not select the running app"):
        mark_app_valid(flash, TABLE, FACTORY)


def test_crash_before_valid_rolls_back_and_is_found(flash: SpiFlash) -> None:
    slot = install(flash, FACTORY, image("1.1.0"), "1.1.0")
    set_boot_partition(flash, TABLE, slot)
    assert boot(flash) == OTA_0  # NEW → PENDING_VERIFY
    assert boot(flash) == FACTORY  # reset before marking valid: ABORTED, factory boots
    assert otadata(flash).entries[0] == OtaEntry(1, OtaState.ABORTED)
    assert running_entry_state(flash, TABLE, FACTORY) is None
    rolled = find_rollback(flash, TABLE, FACTORY)
    assert rolled is not None
    assert (rolled.slot_label, rolled.version, rolled.state, rolled.seq) == (
        "ota_0",
        "1.1.0",
        OtaState.ABORTED,
        1,
    )


def test_failed_self_test_marks_invalid_and_previous_app_notices(flash: SpiFlash) -> None:
    # 1.1.0 in ota_0, valid.
    set_boot_partition(flash, TABLE, install(flash, FACTORY, image("1.1.0"), "1.1.0"))
    assert boot(flash) == OTA_0
    mark_app_valid(flash, TABLE, OTA_0)
    # 1.2.0 into ota_1: seq 2, fails its self-test.
    slot = install(flash, OTA_0, image("1.2.0"), "1.2.0")
    assert slot == OTA_1
    set_boot_partition(flash, TABLE, slot)
    assert boot(flash) == OTA_1
    mark_app_invalid(flash, TABLE, OTA_1)
    assert otadata(flash).entries == (OtaEntry(1, OtaState.VALID), OtaEntry(2, OtaState.INVALID))
    assert boot(flash) == OTA_0
    rolled = find_rollback(flash, TABLE, OTA_0)
    assert rolled is not None
    assert (rolled.slot_label, rolled.version, rolled.state, rolled.seq) == (
        "ota_1",
        "1.2.0",
        OtaState.INVALID,
        2,
    )
    # The next update to ota_1 overwrites the INVALID entry (same seq): nothing to report.
    set_boot_partition(flash, TABLE, install(flash, OTA_0, image("1.3.0"), "1.3.0"))
    assert find_rollback(flash, TABLE, OTA_0) is None
    assert otadata(flash).entries[1] == OtaEntry(2, OtaState.NEW)


def test_rollback_found_even_when_the_failed_slot_is_unreadable(flash: SpiFlash) -> None:
    set_boot_partition(flash, TABLE, install(flash, FACTORY, image("1.1.0"), "1.1.0"))
    boot(flash)
    boot(flash)
    flash.erase(OTA_0.offset, 0x1000)
    rolled = find_rollback(flash, TABLE, FACTORY)
    assert rolled is not None and rolled.version is None


def test_mark_invalid_without_fallback_is_rollback_failed(tmp_path: Path) -> None:
    """No factory and no other valid entry: IDF returns ROLLBACK_FAILED, otadata untouched."""
    table = type(TABLE)(tuple(p for p in TABLE.partitions if p.label != "factory"))
    with SpiFlash(tmp_path / "nofactory.bin") as chip:
        chip.write(PARTITION_TABLE_OFFSET, table.to_bytes())
        chip.write(OTA_0.offset, image("1.1.0"))
        set_boot_partition(chip, table, OTA_0)
        sector = chip.read(OTADATA.offset, OTADATA_SECTOR)
        with pytest.raises(RollbackFailed):
            mark_app_invalid(chip, table, OTA_0)
        assert chip.read(OTADATA.offset, OTADATA_SECTOR) == sector
