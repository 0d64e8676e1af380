"""The board's control endpoint: JSON lines over TCP on 127.0.0.1.

It offers what a real lab rig has besides the serial port — a power switch, a relay on
EN, a BOOT button — and, later, the sensor and access-point controls. One request per
line, one reply per line::

    → {"cmd": "power", "action": "cycle"}
    ← {"ok": true, "state": {...}}
    → {"cmd": "bogus"}
    ← {"ok": false, "error": "unknown command 'bogus'; known: ..."}

Commands are a registry (name → handler) so that the firmware model can add its own
(sensor environment and faults, AP up/down) without this module knowing about them.
The protocol is documented in docs/virtual-rig.md.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
import math
import os
import secrets
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import regex

from hil.sim.board import Board, Mode

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

MAX_LINE_BYTES = 64 * 1024
"""The longest request line the endpoint reads; a longer one gets an error reply (and is
skipped up to its newline), so a runaway client cannot grow the board's memory."""
MAX_WAIT_S = 600.0
"""The longest a request may ask the board to wait (a wait, a power-off)."""
PATTERN_BUDGET_S = 0.25
"""How long one search of a ``wait_tx`` pattern may take. The board's serial port and
this endpoint share one event loop: a pattern with catastrophic backtracking would freeze
both, so it is matched with a time budget and refused when it runs over."""


TOKEN_FILE = "control.token"
"""The per-board credential in the state dir, mode 0600: every control request carries
it as ``"token"``. Who can read the file can drive the board (power, reset, download
mode, sensor faults, the AP's password); on a shared lab host, share the file."""


class ControlError(Exception):
    """A request the endpoint refuses; the message goes back to the client."""


def write_token(directory: Path) -> tuple[str, Path]:
    """A fresh random token in ``directory/control.token``, created 0600 (never chmod-ed
    after the fact: no moment where another user could read it), refusing a symlink."""
    path = directory / TOKEN_FILE
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a stale token of an earlier run; O_EXCL below refuses any race
    token = secrets.token_hex(16)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token, path


def control_url(port: int, token_file: Path | None) -> str:
    """``tcp://127.0.0.1:PORT``, with ``?token_file=PATH`` naming the board's credential so
    that every client handed the URL (bench commands, the session, printed attach lines)
    can authenticate; the token itself never appears in a URL or in output."""
    url = f"tcp://127.0.0.1:{port}"
    if token_file is not None:
        url += "?" + urllib.parse.urlencode({"token_file": str(token_file)})
    return url


def finite(key: str, value: object, what: str = "a finite number") -> float:
    """``value`` as a float, or ControlError naming ``key``: JSON ``true``, strings, NaN and
    the infinities Python's json accepts are not numbers here."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ControlError(f"{key} must be {what}, not {value!r}")
    return float(value)


def number(request: dict[str, Any], key: str, *, default: float, low: float, high: float) -> float:
    """``request[key]`` as a finite number within [low, high] (``default`` when absent);
    ControlError naming the key and the range otherwise."""
    value = finite(key, request.get(key, default), f"a finite number of seconds in [{low:g}, {high:g}]")
    if not low <= value <= high:
        raise ControlError(f"{key} must be in [{low:g}, {high:g}], not {value!r}")
    return float(value)


class JsonLinesServer:
    """A JSON-lines endpoint on 127.0.0.1: one request a line, one reply a line.

    Subclasses answer in ``handle_line``; this class owns the socket and the loop."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self.port = 0
        self.token: str | None = None
        """When set, a request without this ``"token"`` is refused (``require_token``)."""
        self.token_file: Path | None = None

    def require_token(self, directory: Path) -> None:
        """Write a fresh token file in ``directory`` and refuse requests without it."""
        self.token, self.token_file = write_token(directory)

    @property
    def url(self) -> str:
        return control_url(self.port, self.token_file)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_LINE_BYTES)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError as exc:  # the client closed
                    if not exc.partial.strip():
                        break
                    line = exc.partial
                except asyncio.LimitOverrunError:
                    await _skip_line(reader)
                    reply: dict[str, Any] = {
                        "ok": False, "error": f"request line over {MAX_LINE_BYTES} bytes: refused",
                    }  # fmt: skip
                else:
                    reply = await self.answer(line)
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
                if reader.at_eof():
                    break
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def answer(self, line: bytes) -> dict[str, Any]:
        """``handle_line``'s reply, or an error reply for anything it raises: a bad request
        must never drop the connection or reach the loop's exception handler."""
        try:
            if self.token is not None:
                line = self._authenticated(line)
            return await self.handle_line(line)
        except ControlError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:
            log.exception("control request %r failed", line[:200])
            return {"ok": False, "error": f"bad request ({type(exc).__name__}: {exc})"}

    async def handle_line(self, line: bytes) -> dict[str, Any]:
        raise NotImplementedError

    def _authenticated(self, line: bytes) -> bytes:
        """The request without its token, or ControlError when the token is not this board's."""
        assert self.token is not None
        try:
            request = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            request = None
        given = request.pop("token", None) if isinstance(request, dict) else None
        if not isinstance(given, str) or not hmac.compare_digest(given.encode(), self.token.encode()):
            raise ControlError(
                'unauthorized: every request needs the board\'s "token" (its control URL names the '
                f"token file, {TOKEN_FILE} in the board's state dir)"
            )
        return json.dumps(request).encode()


async def _skip_line(reader: asyncio.StreamReader) -> None:
    """Drop an over-long line: what the buffer holds, then chunks up to the newline."""
    while True:
        try:
            await reader.readuntil(b"\n")
            return
        except asyncio.LimitOverrunError as exc:
            await reader.readexactly(exc.consumed)
        except asyncio.IncompleteReadError:
            return


class ControlServer(JsonLinesServer):
    def __init__(self, board: Board) -> None:
        super().__init__()
        self._board = board
        self.handlers: dict[str, Handler] = {
            "state": self._state,
            "power": self._power,
            "reset": self._reset,
            "hold_reset": self._hold_reset,
            "download": self._download,
            "brownout": self._brownout,
            "wait_mode": self._wait_mode,
            "tx_log": self._tx_log,
            "wait_tx": self._wait_tx,
        }

    async def handle_line(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line.decode("utf-8"))
            if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
                raise ControlError('a request is a JSON object with a string "cmd"')
            handler = self.handlers.get(request["cmd"])
            if handler is None:
                known = ", ".join(sorted(self.handlers))
                raise ControlError(f"unknown command {request['cmd']!r}; known: {known}")
            result = await handler(request)
        except UnicodeDecodeError as exc:
            return {"ok": False, "error": f"not UTF-8: {exc}"}
        except json.JSONDecodeError as exc:
            return {"ok": False, "error": f"not JSON: {exc}"}
        except ControlError as exc:
            return {"ok": False, "error": str(exc)}
        except TimeoutError:
            return {"ok": False, "error": "timed out", "state": self._board.state()}
        return {"ok": True, **result}

    # -- handlers -------------------------------------------------------------------
    async def _state(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"state": self._board.state()}

    async def _power(self, request: dict[str, Any]) -> dict[str, Any]:
        action = request.get("action")
        if action == "on":
            self._board.power(True)
        elif action == "off":
            self._board.power(False)
        elif action == "cycle":
            off_s = number(request, "off_s", default=0.1, low=0.0, high=MAX_WAIT_S)  # checked before the switch
            self._board.power(False)
            try:
                await asyncio.sleep(off_s)  # how long power stays off
            finally:  # a cycle always ends powered, even when the request is abandoned
                self._board.power(True)
        else:
            raise ControlError('power needs "action": "on", "off" or "cycle"')
        return {"state": self._board.state()}

    async def _reset(self, request: dict[str, Any]) -> dict[str, Any]:
        await self._board.pulse_reset(download=False)
        return {"state": self._board.state()}

    async def _download(self, request: dict[str, Any]) -> dict[str, Any]:
        await self._board.pulse_reset(download=True)
        return {"state": self._board.state()}

    async def _brownout(self, request: dict[str, Any]) -> dict[str, Any]:
        self._board.brownout()
        return {"state": self._board.state()}

    async def _hold_reset(self, request: dict[str, Any]) -> dict[str, Any]:
        hold = request.get("hold")
        if not isinstance(hold, bool):
            raise ControlError('hold_reset needs "hold": true or false')
        self._board.hold_reset(hold)
        return {"state": self._board.state()}

    async def _wait_mode(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            wanted = Mode(str(request.get("mode")))
        except ValueError:
            raise ControlError(f"mode must be one of {[m.value for m in Mode]}") from None
        timeout = number(request, "timeout", default=10.0, low=0.0, high=MAX_WAIT_S)
        await self._board.wait_for(lambda: self._board.mode is wanted, timeout=timeout)
        return {"state": self._board.state()}

    async def _tx_log(self, request: dict[str, Any]) -> dict[str, Any]:
        since = request.get("since", 0)
        if not isinstance(since, int) or since < 0:
            raise ControlError('tx_log needs "since": a byte position >= 0 (0 = oldest kept)')
        data, end = self._board.tx_since(since)
        return {"data": base64.b64encode(data).decode(), "end": end}

    async def _wait_tx(self, request: dict[str, Any]) -> dict[str, Any]:
        pattern, since = request.get("pattern"), request.get("since", 0)
        if not isinstance(pattern, str) or not isinstance(since, int):
            raise ControlError('wait_tx needs "pattern" (a regex) and "since" (a byte position)')
        since = max(since, 0)  # before the oldest byte kept: from the oldest (as tx_since clamps)
        try:
            compiled = regex.compile(pattern.encode())
        except (regex.error, ValueError) as exc:
            raise ControlError(f"bad pattern {pattern!r}: {exc}") from None
        timeout = number(request, "timeout", default=10.0, low=0.0, high=MAX_WAIT_S)

        def search(data: bytes) -> Any:
            try:
                return compiled.search(data, timeout=PATTERN_BUDGET_S)
            except TimeoutError:
                raise ControlError(
                    f"pattern {pattern!r} took over {PATTERN_BUDGET_S} s on {len(data)} bytes "
                    "(catastrophic backtracking?): refused; simplify it"
                ) from None

        try:
            match, end = await self._board.wait_tx(search, since, timeout=timeout)
        except TimeoutError:
            data, _ = self._board.tx_since(since)
            tail = data[-2000:].decode("utf-8", "replace")
            raise ControlError(f"no match for {pattern!r} in {timeout} s; last output:\n{tail}") from None
        return {"match": match.group(0).decode("utf-8", "replace"), "end": end}
