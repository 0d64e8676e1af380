"""UART0 of the virtual board, exposed the way lab hosts expose real ones.

Two transports carry the same byte stream:

* an RFC 2217 server on 127.0.0.1 (pyserial's server-side ``PortManager``). DTR/RTS
  changes from the client reach the board's auto-reset circuit, so esptool's default
  reset and ``--after hard-reset`` work unmodified, as against ``esp_rfc2217_server``;
* a pty, for tools that insist on a tty. A pty has no modem lines, so resets then come
  from the control endpoint, as they would from a relay on a real rig.

Only one RFC 2217 client is served at a time, like ser2net: a second connection is
refused rather than allowed to interleave with the first.

For the USB-Serial-JTAG personality (`hil.sim.usb_jtag`) the server can also hold what the
board writes while no client is connected (``hold_bytes``) and give it to the next one, and
can leave the bus and come back (`Rfc2217Server.set_present`) on the same TCP port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import termios
import tty
from collections.abc import Callable
from typing import Protocol

from serial import rfc2217

log = logging.getLogger(__name__)

OPEN_FALLBACK_S = 0.5
"""When a client that never purges (not pyserial) counts as having opened the port."""

LineChange = Callable[[bool, bool], None]
"""Called with (dtr, rts) as the host asserts them (pyserial's True = asserted = low)."""


class UartSink(Protocol):
    """What the board needs from a transport: somewhere to put its TX bytes."""

    def send(self, data: bytes) -> None: ...


class ModemLines:
    """The serial-port object pyserial's ``PortManager`` drives.

    ``PortManager`` expects a ``serial.Serial``; the board has no real port, so this
    object records the line settings and turns DTR/RTS writes into reset-circuit events.

    ``together_at_open``: the line writes a client makes while it opens the port reach the
    board as one change once it has opened (`opened`). A host's driver raises DTR and RTS
    in one request when a ``ttyACM`` is opened; pyserial's RFC 2217 client sends them one
    after the other, passing through DTR-without-RTS, which a USB-Serial-JTAG peripheral
    would take for esptool's request to arm download mode.
    """

    def __init__(
        self,
        on_lines: LineChange,
        on_opened: Callable[[], None] = lambda: None,
        *,
        together_at_open: bool = False,
    ) -> None:
        self._on_lines = on_lines
        self._on_opened = on_opened
        self._deferred = together_at_open
        self._opened = False
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
        if not self._deferred:
            self._on_lines(self._dtr, self._rts)

    @property
    def rts(self) -> bool:
        return self._rts

    @rts.setter
    def rts(self, value: bool) -> None:
        self._rts = bool(value)
        if not self._deferred:
            self._on_lines(self._dtr, self._rts)

    def opened(self) -> None:
        """The client has opened the port (once): lines held back reach the board now."""
        if self._opened:
            return
        self._opened = True
        if self._deferred:
            self._deferred = False
            self._on_lines(self._dtr, self._rts)
        self._on_opened()

    def reset_input_buffer(self) -> None:
        """Nothing is buffered on the board side: bytes go to the chip as they arrive."""

    def reset_output_buffer(self) -> None:
        """Nothing is buffered on the board side: TX goes straight to the socket. A client
        purges last when it opens the port (pyserial: input, then output), so this is when
        it is ready to read."""
        self.opened()


class Rfc2217Server:
    """Serves the board's UART over RFC 2217 on a loopback TCP port.

    ``hold_bytes``: keep up to this many bytes written while no client is connected and
    send them to the next client first (a USB port's host not reading); None drops them
    (a UART with nobody listening). ``lines_together_at_open``: see `ModemLines`."""

    def __init__(
        self,
        on_rx: Callable[[bytes], None],
        on_lines: LineChange,
        *,
        hold_bytes: int | None = None,
        lines_together_at_open: bool = False,
    ) -> None:
        self._lines_together_at_open = lines_together_at_open
        self._on_rx = on_rx
        self._on_lines = on_lines
        self._server: asyncio.Server | None = None
        self._client: tuple[asyncio.StreamWriter, rfc2217.PortManager] | None = None
        self._host = "127.0.0.1"
        self.port = 0
        self._hold_bytes = hold_bytes
        self._held = bytearray()
        self.dropped = 0
        """Bytes written while nobody read, beyond what the hold keeps."""
        self.present = False
        """Whether the port is on the bus (listening)."""
        self.departures = 0
        """How many times the port left the bus."""
        self._presence = asyncio.Lock()
        self._want_present = True
        self._placeholder: socket.socket | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._server = await asyncio.start_server(self._serve, host, port)
        self.port = self._server.sockets[0].getsockname()[1]
        self.present = True

    @property
    def url(self) -> str:
        return f"rfc2217://127.0.0.1:{self.port}"

    @property
    def held(self) -> int:
        return len(self._held)

    def send(self, data: bytes) -> None:
        if self._client is None or not self.present:
            self._hold(data)
            return
        writer, manager = self._client
        if not writer.is_closing():
            writer.write(b"".join(manager.escape(data)))

    def _hold(self, data: bytes) -> None:
        if self._hold_bytes is None:
            return  # a UART with nobody listening: the bytes are gone, as on a board
        room = max(0, self._hold_bytes - len(self._held))
        self._held += data[:room]
        self.dropped += len(data) - min(room, len(data))

    # -- on and off the bus (a USB device) ----------------------------------------------
    async def set_present(self, present: bool) -> None:
        """Leave the bus (stop listening, drop the client: connections are refused as a
        missing device node fails to open) or come back on the same port. The latest wish
        wins when calls overlap."""
        self._want_present = present
        async with self._presence:
            if self._want_present == self.present:
                return
            if self._want_present:
                await self._listen_again()
            else:
                await self._leave()

    async def _leave(self) -> None:
        self.present = False
        self.departures += 1
        # Keep the port number while away: bound, not listening (connects are refused),
        # so nobody else takes it and the device comes back under the same name.
        placeholder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        placeholder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server, self._server = self._server, None
        if server is not None:
            server.close()
        if self._client is not None:
            self._client[0].close()  # the host's driver hangs up the port
        if server is not None:
            await server.wait_closed()
        placeholder.bind((self._host, self.port))
        self._placeholder = placeholder

    async def _listen_again(self) -> None:
        self._server = await asyncio.start_server(self._serve, self._host, self.port, reuse_address=True)
        if self._placeholder is not None:
            self._placeholder.close()
            self._placeholder = None
        self.present = True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._client is not None or not self.present:
            writer.close()
            return
        connection = _WriterConnection(writer)

        def release_held() -> None:
            # What the chip wrote while nobody read goes to the new reader once it has
            # opened the port: pyserial's open purges its input last, and would drop it.
            if self._held and self._client is not None and self._client[0] is writer and not writer.is_closing():
                held, self._held = bytes(self._held), bytearray()
                writer.write(b"".join(manager.escape(held)))

        lines = ModemLines(self._on_lines, on_opened=release_held, together_at_open=self._lines_together_at_open)
        manager = rfc2217.PortManager(lines, connection)
        self._client = (writer, manager)
        # A client that never purges (a raw telnet) counts as open a moment after connecting.
        fallback = asyncio.get_running_loop().call_later(OPEN_FALLBACK_S, lines.opened)
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
            fallback.cancel()
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
        if self._placeholder is not None:
            self._placeholder.close()
            self._placeholder = None


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
