"""UART0 of the virtual board, exposed the way lab hosts expose real ones.

Two transports carry the same byte stream:

* an RFC 2217 server on 127.0.0.1 (pyserial's server-side ``PortManager``). DTR/RTS
  changes from the client reach the board's auto-reset circuit, so esptool's default
  reset and ``--after hard-reset`` work unmodified, as against ``esp_rfc2217_server``;
* a pty, for tools that insist on a tty. A pty has no modem lines, so resets then come
  from the control endpoint, as they would from a relay on a real rig.

Only one RFC 2217 client is served at a time, like ser2net: a second connection is
refused rather than allowed to interleave with the first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import termios
import tty
from collections.abc import Callable
from typing import Protocol

from serial import rfc2217

log = logging.getLogger(__name__)

LineChange = Callable[[bool, bool], None]
"""Called with (dtr, rts) as the host asserts them (pyserial's True = asserted = low)."""


class UartSink(Protocol):
    """What the board needs from a transport: somewhere to put its TX bytes."""

    def send(self, data: bytes) -> None: ...


class ModemLines:
    """The serial-port object pyserial's ``PortManager`` drives.

    ``PortManager`` expects a ``serial.Serial``; the board has no real port, so this
    object records the line settings and turns DTR/RTS writes into reset-circuit events.
    """

    def __init__(self, on_lines: LineChange) -> None:
        self._on_lines = on_lines
        self._dtr = False
        self._rts = False
        self.baudrate = 115200
        self.bytesize = 8
        self.parity = "N"
        self.stopbits = 1
        self.xonxoff = False
        self.rtscts = False
        self.break_condition = False
        self.cts = False
        self.dsr = False
        self.ri = False
        self.cd = False

    @property
    def dtr(self) -> bool:
        return self._dtr

    @dtr.setter
    def dtr(self, value: bool) -> None:
        self._dtr = bool(value)
        self._on_lines(self._dtr, self._rts)

    @property
    def rts(self) -> bool:
        return self._rts

    @rts.setter
    def rts(self, value: bool) -> None:
        self._rts = bool(value)
        self._on_lines(self._dtr, self._rts)

    def reset_input_buffer(self) -> None:
        """Nothing is buffered on the board side: bytes go to the chip as they arrive."""

    def reset_output_buffer(self) -> None:
        """Nothing is buffered on the board side: TX goes straight to the socket."""


class Rfc2217Server:
    """Serves the board's UART over RFC 2217 on a loopback TCP port."""

    def __init__(self, on_rx: Callable[[bytes], None], on_lines: LineChange) -> None:
        self._on_rx = on_rx
        self._on_lines = on_lines
        self._server: asyncio.Server | None = None
        self._client: tuple[asyncio.StreamWriter, rfc2217.PortManager] | None = None
        self.port = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = await asyncio.start_server(self._serve, host, port)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"rfc2217://127.0.0.1:{self.port}"

    def send(self, data: bytes) -> None:
        if self._client is None:
            return  # a UART with nobody listening: the bytes are gone, as on a board
        writer, manager = self._client
        if not writer.is_closing():
            writer.write(b"".join(manager.escape(data)))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._client is not None:
            writer.close()
            return
        connection = _WriterConnection(writer)
        lines = ModemLines(self._on_lines)
        manager = rfc2217.PortManager(lines, connection)
        self._client = (writer, manager)
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                data = b"".join(manager.filter(chunk))
                if data:
                    self._on_rx(data)
        except (ConnectionError, OSError) as exc:
            log.debug("rfc2217 client dropped: %s", exc)
        finally:
            self._client = None
            # Closing a tty drops DTR and RTS (HUPCL); both released leaves EN high.
            self._on_lines(False, False)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def close(self) -> None:
        if self._client is not None:
            self._client[0].close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class _WriterConnection:
    """The ``connection`` PortManager writes telnet replies to."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    def write(self, data: bytes) -> None:
        if not self._writer.is_closing():
            self._writer.write(data)


class PtyTransport:
    """The board's UART as a pseudo-terminal; the slave path is what tools open."""

    def __init__(self, on_rx: Callable[[bytes], None]) -> None:
        self._on_rx = on_rx
        self._master, self._slave = os.openpty()
        # Raw mode: no echo, no newline translation, so SLIP frames pass untouched.
        tty.setraw(self._slave, termios.TCSANOW)
        os.set_blocking(self._master, False)
        self.path = os.ttyname(self._slave)

    def start(self) -> None:
        asyncio.get_running_loop().add_reader(self._master, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self._master, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return  # EIO while no client holds the slave open; our own fd keeps it alive
        if data:
            self._on_rx(data)

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._master, view)
            except BlockingIOError:
                # The tty buffer is full because nobody reads: drop the rest, as a UART would.
                return
            view = view[written:]

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().remove_reader(self._master)
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)
