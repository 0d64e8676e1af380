"""A small asyncio HTTP/1.1 GET client: what esp_http_client is to an ESP-IDF app.

The firmware model downloads OTA images with it, so it does what esp_https_ota needs and
no more: one GET per connection (``Connection: close``), an optional ``Range: bytes=N-``
to resume, the server certificate verified against the CA provisioned on the device, and
a body streamed in chunks as it arrives (Content-Length, chunked, or up to EOF). A body
never sits in memory whole: a 1 MB image goes to flash 4 KiB at a time, as on a chip.

Errors say what a caller can do about them:
- ``ConnectionLost``: the transport failed (refused, reset, timed out, closed early);
  retry, resuming from what was received (``received``).
- ``HttpError``: the server answered with a status we cannot use (404, 416, 5xx...).
- ``TlsError``: the handshake failed, typically an untrusted certificate; retrying will
  not help.
- ``ProtocolError``: the response is not well-formed HTTP/1.1.

No new dependency: aiohttp/httpx would do this, but the device side of the rig must stay
as small as the thing it models, and ``asyncio.open_connection`` already speaks TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

USER_AGENT = "ESP32 HTTP Client/1.0"
"""esp_http_client's default User-Agent, so server logs look like a real device's."""

DEFAULT_CHUNK = 4096
_MAX_HEADERS = 100
_CLOSE_TIMEOUT_S = 1.0
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


class HttpClientError(Exception):
    """Base of everything this client raises about a transfer."""


class ConnectionLost(HttpClientError):
    """The connection failed or ended early; ``received`` body bytes had arrived by then."""

    def __init__(self, message: str, *, received: int = 0) -> None:
        super().__init__(f"{message} (after {received} body bytes)")
        self.received = received


class HttpError(HttpClientError):
    """The server answered with an unusable status."""

    def __init__(self, status: int, reason: str, url: str) -> None:
        super().__init__(f"HTTP {status} {reason} from {url}")
        self.status = status
        self.reason = reason
        self.url = url


class TlsError(HttpClientError):
    """The TLS handshake failed (server certificate not trusted, wrong host, ...)."""


class ProtocolError(HttpClientError):
    """The server's response is not valid HTTP/1.1 (or contradicts our Range request)."""


def ssl_context_for_ca(ca_pem: str) -> ssl.SSLContext:
    """A client context that trusts exactly the provisioned CA and checks the host name.

    This is what the firmware does with the CA PEM from NVS (esp_tls ``cacert_pem_buf``):
    the system trust store plays no part. Raises ValueError for a PEM that holds no
    usable certificate.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED + check_hostname
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_verify_locations(cadata=ca_pem)
    except (ssl.SSLError, ValueError) as exc:
        raise ValueError(f"the provisioned CA is not a usable PEM certificate: {exc}") from exc
    return context


@dataclass(frozen=True)
class Url:
    """The parts of an http(s) URL a request needs."""

    scheme: str
    host: str
    port: int
    target: str
    """Path and query, as sent on the request line."""

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def parse_url(url: str) -> Url:
    """Split an ``http://`` or ``https://`` URL; ValueError says what is wrong with it."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"unsupported URL scheme {parts.scheme!r} in {url!r} (http or https)")
    if not parts.hostname:
        raise ValueError(f"URL {url!r} has no host")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"URL {url!r} has a bad port: {exc}") from exc
    if port is None:
        port = 443 if scheme == "https" else 80
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return Url(scheme=scheme, host=parts.hostname, port=port, target=target)


class RangeResponse:
    """A response whose headers have arrived; the body is read with ``chunks()``.

    ``start`` is the offset in the resource of the first body byte: the requested start
    on 206, 0 when the server ignored the Range header and answered 200. ``length`` is
    the number of body bytes to come and ``total`` the size of the whole resource, each
    None when the server did not say.
    """

    def __init__(
        self,
        *,
        url: str,
        status: int,
        reason: str,
        headers: dict[str, str],
        start: int,
        length: int | None,
        total: int | None,
        chunked: bool,
        reader: asyncio.StreamReader,
        timeout_s: float,
    ) -> None:
        self.url = url
        self.status = status
        self.reason = reason
        self.headers = headers
        self.start = start
        self.length = length
        self.total = total
        self.received = 0
        self._chunked = chunked
        self._reader = reader
        self._timeout_s = timeout_s
        self.complete = False
        """True once the whole body has been read."""

    async def chunks(self, size: int = DEFAULT_CHUNK) -> AsyncGenerator[bytes, None]:
        """Yield the body as it arrives, at most ``size`` bytes at a time.

        Raises ConnectionLost if the connection ends before the body does (with
        Content-Length or chunked framing; a body that runs to EOF cannot be cut short
        as far as HTTP can tell).
        """
        if size <= 0:
            raise ValueError(f"chunk size must be positive, not {size}")
        if self._chunked:
            async for data in self._chunked_body(size):
                yield data
        elif self.length is not None:
            remaining = self.length
            while remaining:
                data = await self._read(min(size, remaining))
                if not data:
                    raise ConnectionLost(
                        f"connection closed {remaining} bytes before the end of the body",
                        received=self.received,
                    )
                remaining -= len(data)
                yield data
        else:
            while data := await self._read(size):
                yield data
        self.complete = True

    async def _chunked_body(self, size: int) -> AsyncGenerator[bytes, None]:
        while True:
            line = await self._readline()
            try:
                chunk_len = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ProtocolError(f"bad chunk size line {line!r} from {self.url}") from None
            if chunk_len == 0:
                while (await self._readline()).strip():
                    pass  # trailers
                return
            remaining = chunk_len
            while remaining:
                data = await self._read(min(size, remaining))
                if not data:
                    raise ConnectionLost("connection closed inside a chunk", received=self.received)
                remaining -= len(data)
                yield data
            if (await self._readline()).strip():
                raise ProtocolError(f"chunk of {chunk_len} bytes not followed by CRLF")

    async def _read(self, size: int) -> bytes:
        try:
            async with asyncio.timeout(self._timeout_s):
                data = await self._reader.read(size)
        except TimeoutError:
            raise ConnectionLost(
                f"no data for {self._timeout_s:g} s", received=self.received
            ) from None
        except OSError as exc:  # reset, TLS record error after an abrupt close, ...
            raise ConnectionLost(f"connection lost: {exc}", received=self.received) from exc
        self.received += len(data)
        return data

    async def _readline(self) -> bytes:
        try:
            async with asyncio.timeout(self._timeout_s):
                line = await self._reader.readuntil(b"\n")
        except TimeoutError:
            raise ConnectionLost(
                f"no data for {self._timeout_s:g} s", received=self.received
            ) from None
        except asyncio.IncompleteReadError as exc:
            raise ConnectionLost("connection closed mid-line", received=self.received) from exc
        except asyncio.LimitOverrunError as exc:
            raise ProtocolError(f"line too long in the response from {self.url}") from exc
        except OSError as exc:
            raise ConnectionLost(f"connection lost: {exc}", received=self.received) from exc
        return line


@contextlib.asynccontextmanager
async def open_range(
    url: str,
    start: int = 0,
    *,
    ssl_context: ssl.SSLContext | None,
    timeout_s: float,
) -> AsyncIterator[RangeResponse]:
    """GET ``url`` from byte ``start`` on; yields the response once its headers are in.

    Sends ``Range: bytes=start-`` when ``start`` > 0. Accepts 206 (Content-Range must
    begin at ``start``) and 200 (the server ignored Range: ``response.start`` is 0 and
    the caller skips what it already has). Anything else raises HttpError.
    ``ssl_context`` is used for https (None: the system trust store, like
    esp_crt_bundle); ``timeout_s`` bounds the connect and header phase and each read.
    The connection is closed when the block exits.
    """
    if start < 0:
        raise ValueError(f"range start must be >= 0, not {start}")
    parsed = parse_url(url)
    context: ssl.SSLContext | None = None
    if parsed.scheme == "https":
        context = ssl_context if ssl_context is not None else ssl.create_default_context()
    reader, writer = await _connect(parsed, context, timeout_s)
    ok = False
    try:
        response = await _request(url, parsed, start, reader, writer, timeout_s)
        yield response
        ok = True
    finally:
        await _close(writer, graceful=ok)


async def fetch_range(
    url: str,
    start: int = 0,
    *,
    ssl_context: ssl.SSLContext | None,
    timeout_s: float,
    chunk_size: int = DEFAULT_CHUNK,
) -> AsyncIterator[bytes]:
    """The resource's bytes from ``start`` on, in chunks, whatever Range support it has.

    On a 200 answer to a ranged request the first ``start`` bytes are read and dropped,
    so the caller always sees the resource from ``start``. Errors as for ``open_range``.
    """
    async with open_range(url, start, ssl_context=ssl_context, timeout_s=timeout_s) as resp:
        skip = start - resp.start
        async with contextlib.aclosing(resp.chunks(chunk_size)) as chunks:
            async for data in chunks:
                if skip >= len(data):
                    skip -= len(data)
                    continue
                yield data[skip:]
                skip = 0


async def _connect(
    url: Url, context: ssl.SSLContext | None, timeout_s: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        async with asyncio.timeout(timeout_s):
            return await asyncio.open_connection(
                url.host,
                url.port,
                ssl=context,
                server_hostname=url.host if context is not None else None,
            )
    except TimeoutError:
        raise ConnectionLost(
            f"connect to {url.host}:{url.port} timed out after {timeout_s:g} s"
        ) from None
    except ssl.SSLError as exc:  # includes certificate verification failures
        raise TlsError(f"TLS handshake with {url.host}:{url.port} failed: {exc}") from exc
    except OSError as exc:
        raise ConnectionLost(f"connect to {url.host}:{url.port} failed: {exc}") from exc


async def _request(
    raw_url: str,
    url: Url,
    start: int,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    timeout_s: float,
) -> RangeResponse:
    lines = [
        f"GET {url.target} HTTP/1.1",
        f"Host: {url.host_header}",
        f"User-Agent: {USER_AGENT}",
        "Accept-Encoding: identity",
        "Connection: close",
    ]
    if start:
        lines.append(f"Range: bytes={start}-")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    try:
        async with asyncio.timeout(timeout_s):
            writer.write(request)
            await writer.drain()
            status_line = await reader.readuntil(b"\n")
            header_lines: list[bytes] = []
            while (line := await reader.readuntil(b"\n")).strip():
                header_lines.append(line)
                if len(header_lines) > _MAX_HEADERS:
                    raise ProtocolError(f"more than {_MAX_HEADERS} headers from {raw_url}")
    except TimeoutError:
        raise ConnectionLost(f"no response headers within {timeout_s:g} s") from None
    except asyncio.IncompleteReadError as exc:
        raise ConnectionLost("connection closed before the response headers ended") from exc
    except asyncio.LimitOverrunError as exc:
        raise ProtocolError(f"header line too long from {raw_url}") from exc
    except OSError as exc:
        raise ConnectionLost(f"connection lost while requesting: {exc}") from exc

    status, reason = _parse_status(status_line, raw_url)
    headers = _parse_headers(header_lines, raw_url)
    if status not in (200, 206):
        raise HttpError(status, reason, raw_url)

    chunked = "chunked" in headers.get("transfer-encoding", "").lower()
    length: int | None = None
    if not chunked and "content-length" in headers:
        length = _parse_int(headers["content-length"], "Content-Length", raw_url)

    if status == 206:
        first, last, total = _parse_content_range(headers.get("content-range"), raw_url)
        if first != start:
            raise ProtocolError(f"asked {raw_url} for bytes from {start}, got a range from {first}")
        if length is not None and length != last - first + 1:
            raise ProtocolError(
                f"Content-Length {length} disagrees with Content-Range {first}-{last}"
            )
        if length is None and not chunked:
            length = last - first + 1
        body_start = first
    else:
        total = length
        body_start = 0
    return RangeResponse(
        url=raw_url,
        status=status,
        reason=reason,
        headers=headers,
        start=body_start,
        length=length,
        total=total,
        chunked=chunked,
        reader=reader,
        timeout_s=timeout_s,
    )


def _parse_status(line: bytes, url: str) -> tuple[int, str]:
    text = line.decode("latin-1").strip()
    parts = text.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError(f"malformed status line {text!r} from {url}")
    return int(parts[1]), parts[2] if len(parts) > 2 else ""


def _parse_headers(lines: list[bytes], url: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    for raw in lines:
        text = raw.decode("latin-1").strip()
        name, sep, value = text.partition(":")
        if not sep or not name.strip():
            raise ProtocolError(f"malformed header line {text!r} from {url}")
        key = name.strip().lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


def _parse_int(value: str, name: str, url: str) -> int:
    if not value.strip().isdigit():
        raise ProtocolError(f"bad {name} {value!r} from {url}")
    return int(value)


def _parse_content_range(value: str | None, url: str) -> tuple[int, int, int | None]:
    if value is None:
        raise ProtocolError(f"206 from {url} without a Content-Range header")
    match = _CONTENT_RANGE.match(value.strip())
    if match is None or int(match[2]) < int(match[1]):
        raise ProtocolError(f"bad Content-Range {value!r} from {url}")
    total = None if match[3] == "*" else int(match[3])
    return int(match[1]), int(match[2]), total


async def _close(writer: asyncio.StreamWriter, *, graceful: bool) -> None:
    """Close politely after a complete exchange; abort at once after a failure."""
    if not graceful:
        writer.transport.abort()
        return
    writer.close()
    try:
        async with asyncio.timeout(_CLOSE_TIMEOUT_S):
            await writer.wait_closed()
    except (TimeoutError, OSError):
        writer.transport.abort()
