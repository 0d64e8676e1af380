"""The serial console of one board: a reader thread, one timestamped log file, expect().

One ``Console`` per board for the whole session. Its log file is the source of truth
(as in pytest-embedded): every received line is written there as it completes, and
``expect`` looks at the same lines kept in memory. What differs from pytest-embedded:

* one hop, no polling: a thread blocks in ``read`` (short timeout only so that it can
  notice ``close`` and ``borrow``) and wakes ``expect`` through a condition variable;
* opening never resets a devkit: DTR and RTS are released *before* the port opens;
* the port may vanish (USB re-enumeration, an RFC 2217 server restarting); the reader
  logs it, reopens with backoff, and keeps everything received before; each gap is
  recorded (`Console.gaps`), and a rig whose port leaves with the power says how long it
  may take to come back (``port_return_s``): the reopen polls finely enough to land soon
  after, and waits for the port (a write, a reset) last at least that long;
* the flasher borrows the open port instead of closing and reopening it, so nothing is
  reset by a close and the console carries on logging afterwards.

Positions in the stream are ``Mark``s: (line number, column). ``expect`` searches from
a mark, by default from just after its previous match (pexpect's "consume" semantics),
so ``expect(A); expect(B)`` finds B after A. Entering a ``segment``, ``hard_reset`` and
``borrow`` move that default to "now": output from before belongs to another test or to
the chip's previous life. A match that runs to the end of the line still arriving is
only taken once that line completes or rests (see ``PARTIAL_SETTLE_S``).
"""

from __future__ import annotations

import contextlib
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TextIO

import serial
from serial import rfc2217

from hil.errors import InfrastructureError
from hil.link.port_busy import busy_message, is_busy

BAUDRATE = 115200
READ_TIMEOUT_S = 0.05
"""How long one ``read`` blocks. Data returns at once; this only bounds how quickly the
reader notices ``close()`` or ``borrow()``."""
RECONNECT_BACKOFF_S = (0.05, 1.0)
"""First and longest delay between attempts to reopen a lost port (doubling)."""
RECONNECT_POLLS_PER_RETURN = 20
"""With a declared ``port_return_s``, the longest delay between reopen attempts is that
over this: a port back after re-enumerating is reopened within 5 % of the time allowed."""
RESET_PULSE_S = 0.1
"""How long EN is held low by ``hard_reset`` (esptool's HardReset for UART bridges)."""
USB_RESET_PULSE_S = 0.2
"""How long a USB-Serial-JTAG board's reset request is held (esptool's HardReset for a
chip on its internal USB peripheral)."""
LineReset = Literal["classic", "usb-jtag"]
"""How ``hard_reset`` drives DTR/RTS: through a UART bridge's auto-reset circuit (RTS is
wired to EN), or to the C3's own USB-Serial-JTAG peripheral (the rig's ``reset``)."""
TAIL_LINES = 20
"""How many lines a timeout message shows."""
PARTIAL_SETTLE_S = 0.1
r"""A match that reaches the end of the line still being received is only taken once no
byte has arrived for this long (or the line completes): ``App version:\s+(\S+)`` must
not return ``1`` while ``.0.0`` is on its way. A prompt (``login: $``) costs this much."""
MAX_PARTIAL_BYTES = 64 * 1024
"""A 'line' longer than this is cut: binary garbage must not grow without bound."""


class ConsoleError(InfrastructureError):
    """Infrastructure trouble with the port (not a product failure): reported as broken."""


class ConsolePortLost(ConsoleError):
    """The port is gone and did not come back in time."""


class ConsoleTimeout(AssertionError):
    """``expect`` ran out of time: the device did not print what the test waited for.

    The message shows the pattern, the last lines seen instead and the log file.
    """

    def __init__(self, message: str, *, pattern: str, seen: list[str], log_path: Path) -> None:
        super().__init__(message)
        self.pattern = pattern
        self.seen = seen
        self.log_path = log_path


@dataclass(frozen=True, order=True)
class Mark:
    """A position in the console's stream: line number (from 0 at open) and column."""

    line: int
    column: int = 0


@dataclass(frozen=True)
class Line:
    """One line as received: text without its line ending, and when it completed."""

    text: str
    monotonic: float
    wallclock: float
    marker: bool = False
    """A line the console wrote itself (port lost, borrowed, ...), not the device."""

    def format(self) -> str:
        """The log file's line format: ``HH:MM:SS.mmm  text``."""
        stamp = datetime.fromtimestamp(self.wallclock)
        return f"{stamp:%H:%M:%S}.{stamp.microsecond // 1000:03d}  {self.text}"


@dataclass(frozen=True)
class PortGap:
    """A time the port was away: lost (``lost_at``, wall clock) and reopened ``seconds``
    later (None: still away), after ``attempts`` tries."""

    lost_at: float
    seconds: float | None
    attempts: int = 0


@dataclass
class Segment:
    """The part of the stream one test (or phase) owns; ``end`` is None while it runs."""

    name: str
    start: Mark
    end: Mark | None = None


class Console:
    """The serial console of one board, opened on any pyserial URL.

    ``url`` is a device path, ``rfc2217://host:port`` (a lab host, the virtual rig),
    ``socket://host:port`` (a raw TCP bridge) or any other ``serial_for_url`` URL.
    ``log_path`` is the board's one log file; lines are appended to it.
    Opening raises ``ConsoleError`` if the port cannot be opened at all.
    """

    def __init__(
        self,
        url: str,
        log_path: Path,
        *,
        baudrate: int = BAUDRATE,
        max_lines: int = 200_000,
        redact: Callable[[str], str] | None = None,
        reset: LineReset = "classic",
        port_return_s: float | None = None,
    ) -> None:
        self.url = url
        self.reset = reset
        self.port_return_s = port_return_s
        """How long the port may be away (re-enumerating after a power cycle) before it
        counts as gone: the rig's `Rig.port_return_s`; None: no such allowance."""
        # The log file (and segment texts for reports) go through ``redact``; the lines
        # kept in memory stay raw, so a test can still catch a device printing a secret.
        self._redact = redact or (lambda text: text)
        self.log_path = Path(log_path)
        self.baudrate = baudrate
        self._max_lines = max_lines
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._borrow_lock = threading.Lock()
        self._write_lock = threading.Lock()
        # Everything below is guarded by _cond.
        self._lines: list[Line] = []
        self._base = 0  # absolute number of _lines[0] (older lines were dropped)
        self._partial = bytearray()
        self._partial_at = 0.0  # when the partial line last grew
        self._cursor = Mark(0)
        self._segments: dict[str, Segment] = {}
        self._port: Any = None  # serial.Serial while connected, None while lost
        self._pause = False
        self._parked = False
        self._closed = False
        self._failure: BaseException | None = None
        self.losses = 0
        """How many times the port was lost (and the reader started to reopen it)."""
        self._gaps: list[PortGap] = []
        self._lost_at = 0.0  # monotonic time the port was last lost

        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log: TextIO = self.log_path.open("a", encoding="utf-8", newline="\n")
        try:
            self._port = self._open_port()
        except (serial.SerialException, OSError, ValueError) as exc:
            self._log.close()
            if is_busy(exc, url):
                raise ConsoleError(busy_message(url, exc, "No console was opened.")) from exc
            raise ConsoleError(f"cannot open console port {url}: {exc}") from exc
        opened = datetime.now().astimezone().isoformat(timespec="milliseconds")
        with self._cond:
            self._add_marker(f"--- console opened on {url} at {opened} ---")
        self._thread = threading.Thread(target=self._run, name=f"console {url}", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:  # what a failure report shows of a Dut: the port, not an address
        return f"<Console {self.url}>"

    # -- positions and lines -------------------------------------------------------
    def mark(self) -> Mark:
        """The current end of the stream: what arrives from now on is after it."""
        with self._cond:
            return self._end()

    def lines(self, since: Mark | None = None, *, include_partial: bool = False) -> list[str]:
        """Device lines from ``since`` (default: all kept), without the console's markers."""
        with self._cond:
            picked = self._slice(since or Mark(0), None, include_partial=include_partial)
        return [line.text for line in picked if not line.marker]

    def records(self, since: Mark | None = None) -> list[Line]:
        """Complete lines from ``since`` with their timestamps, markers included."""
        with self._cond:
            return self._slice(since or Mark(0), None, include_partial=False)

    @property
    def connected(self) -> bool:
        with self._cond:
            return self._port is not None

    @property
    def gaps(self) -> list[PortGap]:
        """Every time the port was away so far (the last one open-ended while it still is)."""
        with self._cond:
            return list(self._gaps)

    def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until the port is open again (after a power cycle re-enumerated USB, or
        a lab host's RFC 2217 server restarted); ``ConsolePortLost`` if it stays away.
        ``timeout`` None: the rig's ``port_return_s`` (else 5 s)."""
        if timeout is None:
            timeout = self.port_return_s if self.port_return_s is not None else 5.0
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._port is None:
                self._raise_if_unusable()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ConsolePortLost(
                        f"console port {self.url} did not come back within {timeout:g} s"
                    )
                self._cond.wait(remaining)

    # -- expect --------------------------------------------------------------------
    def expect(
        self, pattern: str | re.Pattern[str], timeout: float, *, since: Mark | None = None
    ) -> re.Match[str]:
        """Wait until a line (or the line still being received) matches ``pattern``.

        Searches from ``since``, by default from just after the previous match. Returns
        the match; the next default search starts after it. A match that runs to the end
        of the line still arriving waits ``PARTIAL_SETTLE_S`` for the line to go on. On timeout raises
        ``ConsoleTimeout`` (an AssertionError: the device did not say it) unless the port
        is lost at that moment, then ``ConsolePortLost`` (infrastructure).
        """
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._cond:
            start = since if since is not None else self._cursor
            scan_from = start
            while True:
                self._raise_if_unusable()
                found = self._search(regex, scan_from, start)
                now = time.monotonic()
                if found is not None:
                    match, end, unsettled = found
                    if not unsettled or now >= deadline:
                        self._cursor = end
                        return match
                # Complete lines searched so far cannot match later; only the partial can grow.
                scan_from = max(start, Mark(self._base + len(self._lines)))
                remaining = deadline - now
                if remaining <= 0:
                    raise self._timeout_error(regex, timeout, start)
                if found is not None:
                    remaining = min(remaining, self._partial_at + PARTIAL_SETTLE_S - now)
                self._cond.wait(remaining)

    def _search(
        self, regex: re.Pattern[str], scan_from: Mark, start: Mark
    ) -> tuple[re.Match[str], Mark, bool] | None:
        """The first match from ``start``: (match, mark after it, still unsettled)."""
        first = max(scan_from.line, self._base)
        for number in range(first, self._base + len(self._lines)):
            line = self._lines[number - self._base]
            if line.marker:
                continue
            match = regex.search(line.text, start.column if number == start.line else 0)
            if match is not None:
                return match, Mark(number, match.end()), False
        partial_number = self._base + len(self._lines)
        if partial_number >= start.line:
            text = self._partial_text()
            match = regex.search(text, start.column if partial_number == start.line else 0)
            if match is not None:
                unsettled = (
                    match.end() == len(text)
                    and time.monotonic() - self._partial_at < PARTIAL_SETTLE_S
                )
                return match, Mark(partial_number, match.end()), unsettled
        return None

    def _timeout_error(
        self, regex: re.Pattern[str], timeout: float, start: Mark
    ) -> ConsoleError | ConsoleTimeout:
        seen = self._slice(start, None, include_partial=True)
        tail = [line.format() for line in seen[-TAIL_LINES:]]
        if seen:
            shown = f"last {len(tail)} of {len(seen)} line(s) seen instead:"
        else:
            before = self._slice(Mark(max(start.line - 5, 0)), start, include_partial=True)
            tail = [line.format() for line in before]
            shown = "nothing received since the search started; the lines before it:"
        body = "\n".join(f"  {text}" for text in tail) or "  (none)"
        where = f"full log: {self.log_path}"
        if self._port is None:
            return ConsolePortLost(
                f"console port {self.url} is lost (reopening) while waiting {timeout:g} s for "
                f"/{regex.pattern}/; {shown}\n{body}\n{where}"
            )
        message = f"/{regex.pattern}/ not seen on {self.url} within {timeout:g} s; {shown}\n{body}\n{where}"
        return ConsoleTimeout(message, pattern=regex.pattern, seen=tail, log_path=self.log_path)

    # -- segments ------------------------------------------------------------------
    @contextlib.contextmanager
    def segment(self, name: str) -> Iterator[Segment]:
        """Record the part of the stream between enter and exit under ``name`` (a test's
        node id, say). Entering moves ``expect``'s default start to now."""
        with self._cond:
            segment = Segment(name, self._end())
            self._segments[name] = segment
            self._cursor = segment.start
            self._log_marker(f"--- begin {name} ---")
        try:
            yield segment
        finally:
            with self._cond:
                segment.end = self._end()
                self._log_marker(f"--- end {name} ---")

    def segment_text(self, name: str) -> str:
        """The segment's lines as in the log file (timestamps, markers), for reports."""
        with self._cond:
            segment = self._segments.get(name)
            if segment is None:
                known = ", ".join(self._segments) or "none"
                raise KeyError(f"no console segment {name!r} (known: {known})")
            picked = self._slice(segment.start, segment.end, include_partial=True)
        return "\n".join(self._redact(line.format()) for line in picked)

    # -- writing, resets, borrowing --------------------------------------------------
    def write(self, data: bytes, *, timeout: float = 5.0) -> None:
        """Send bytes to the device. If the port is being reopened, or lent to a
        flasher, waits up to ``timeout`` for it (at least the rig's ``port_return_s``)."""
        deadline = time.monotonic() + self._allowing_return(timeout)
        while True:
            port = self._usable_port(deadline - time.monotonic())
            with self._write_lock:
                try:
                    port.write(data)
                    return
                except (serial.SerialException, OSError) as exc:
                    failure = exc
            # Most likely the port just went away: once the reader has seen that and
            # reopened it, write again to the new one.
            with self._cond:
                while self._port is port:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise ConsolePortLost(f"write to {self.url} failed: {failure}") from failure
                    self._cond.wait(remaining)

    def hard_reset(self, *, timeout: float = 5.0) -> Mark:
        """Reset the chip into its app through the modem lines, as esptool's HardReset does.

        classic: pulse EN through RTS (DTR released). usb-jtag: the C3's USB-Serial-JTAG
        peripheral has no wires to pulse; it decodes the line state. Both lines released
        first clears its download flag (DTR asserted at the reset would boot the ROM
        loader), then RTS alone asserted resets the chip, which drops off the USB bus at
        once: the release that follows may find the port gone, and the reader reopens it
        when the board re-enumerates.

        Returns the mark taken just before the reset, and makes it ``expect``'s default
        start: what the chip printed before the reset is not what a test waits for after.
        Over RFC 2217 the line changes are acknowledged by the server, so the pulse keeps
        its length on the board's side.
        """
        if self.url.startswith("socket://"):
            raise ConsoleError(
                f"{self.url}: a raw TCP port has no modem lines, so hard_reset() cannot pulse EN; "
                "use rfc2217:// (esp_rfc2217_server, ser2net in RFC 2217 mode) or the rig's power control"
            )
        port = self._usable_port(self._allowing_return(timeout))
        usb = self.reset == "usb-jtag"
        with self._cond:
            mark = self._end()
            self._cursor = mark
            self._log_marker("--- hard reset (USB-Serial-JTAG reset request) ---" if usb else "--- hard reset (RTS pulse) ---")
        with self._write_lock:
            pulsed = False
            try:
                port.dtr = False
                if usb:
                    port.rts = False  # both released: the download flag is clear
                port.rts = True  # EN low (usb-jtag: the peripheral resets the chip)
                time.sleep(USB_RESET_PULSE_S if usb else RESET_PULSE_S)  # the pulse's length, not a wait
                pulsed = True
                port.rts = False  # EN high: the chip boots
            except (serial.SerialException, OSError) as exc:
                if not (usb and pulsed):
                    raise ConsoleError(
                        f"{self.url}: cannot drive RTS/DTR ({exc}); a port without modem lines "
                        "(a pty, USB-Serial-JTAG behind some bridges) needs the rig's reset control"
                    ) from exc
                with self._cond:  # expected: the board left the bus with its reset
                    self._log_marker("--- port gone with the reset (USB re-enumeration) ---")
        return mark

    @contextlib.contextmanager
    def borrow(self, *, timeout: float = 10.0) -> Iterator[Any]:
        """Lend the open ``serial.Serial`` to a flasher (esptool as a library).

        The reader parks without closing the port, so no close drops DTR/RTS and nothing
        is reset by it. What the flasher reads is not logged. On exit the console restores
        its baud rate and read timeout (esptool changes both), reopens the port if the
        flasher closed it, and carries on logging. Like ``hard_reset``, lending moves
        ``expect``'s default start to now: what came before is the old firmware's.

        Don't let the flasher close the port (esptool's ``with ESPLoader(...)``): what the
        chip prints while nobody holds it (the boot after ``--after hard-reset``) is gone.
        Left open, those bytes wait in the port and the console logs them on return.
        """
        lent = "--- port lent to a flasher; what it reads is not logged ---"
        with self._lent(timeout, lent=lent, returned="--- port returned by the flasher ---", holder="the flasher") as port:
            yield port

    @contextlib.contextmanager
    def let_go(self, *, to: str, timeout: float = 10.0) -> Iterator[None]:
        """Close the port for a while so that another program can open it (a person's
        ``hil monitor`` or esptool on a rig kept by ``--keep-on-failure``); ``to`` names
        who for the log. The console keeps its lines, marks and log; on exit it opens the
        port again (lines released first: no reset). If the other program still holds the
        port then, the reader keeps trying, as after a lost port."""
        lent = f"--- port let go for {to}: closed, nothing is logged until it is taken back ---"
        with self._lent(timeout, lent=lent, returned="--- port taken back ---", holder=to) as port:
            with contextlib.suppress(serial.SerialException, OSError):
                port.close()
            yield

    @contextlib.contextmanager
    def _lent(self, timeout: float, *, lent: str, returned: str, holder: str) -> Iterator[Any]:
        """Park the reader and hand out the port (`borrow`, `let_go`); on exit take it back
        as the reader wants it (reopened if closed) and let the reader carry on."""
        with self._borrow_lock:
            deadline = time.monotonic() + timeout
            with self._cond:
                self._raise_if_unusable()
                self._pause = True
                self._cond.notify_all()
                while not self._parked:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._closed or self._failure is not None:
                        self._pause = False
                        self._cond.notify_all()
                        raise ConsolePortLost(
                            f"console port {self.url} not available to lend within {timeout:g} s"
                        )
                    self._cond.wait(remaining)
                port = self._port
                self._flush_partial()
                self._add_marker(lent)
                self._cursor = self._end()
            try:
                yield port
            finally:
                problem = self._restore(port, holder)
                with self._cond:
                    if problem is not None:
                        self._port = None
                        self.losses += 1
                        self._gaps.append(PortGap(time.time(), None))
                        self._lost_at = time.monotonic()
                        self._add_marker(f"--- port lost: {problem} ---")
                    else:
                        self._add_marker(returned)
                    self._pause = False
                    self._cond.notify_all()

    def _restore(self, port: Any, holder: str) -> str | None:
        """Put the port back as the reader wants it; a reason if that failed."""
        try:
            if not port.is_open:
                port.dtr = False
                port.rts = False
                port.open()
            port.timeout = READ_TIMEOUT_S
            if port.baudrate != self.baudrate:
                port.baudrate = self.baudrate
        except (serial.SerialException, OSError, ValueError) as exc:
            with contextlib.suppress(serial.SerialException, OSError):
                port.close()
            return f"cannot take the port back from {holder}: {exc}"
        return None

    # -- lifecycle -------------------------------------------------------------------
    def close(self) -> None:
        """Stop the reader and close the port and the log. Safe to call twice."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._stop.set()
            self._cond.notify_all()
        self._thread.join(timeout=15)
        with self._cond:
            port, self._port = self._port, None
            self._flush_partial()
            self._add_marker("--- console closed ---")
            self._cond.notify_all()
        if port is not None:
            with contextlib.suppress(serial.SerialException, OSError):
                port.close()
        self._log.close()

    def __enter__(self) -> Console:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the reader thread -------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                with self._cond:
                    port = self._port
                    if self._pause and port is not None:
                        self._park()
                        continue
                if port is None:
                    self._reopen()  # also while a borrow waits: there must be a port to lend
                    continue
                try:
                    data = _read_available(port)
                except (serial.SerialException, OSError) as exc:
                    self._lost(port, exc)
                    continue
                if data:
                    self._feed(data)
        except BaseException as exc:  # a bug here must surface in expect(), not vanish
            with self._cond:
                self._failure = exc
                self._add_marker(f"--- console reader failed: {exc!r} ---")
                self._cond.notify_all()

    def _park(self) -> None:
        """Hold still (the port stays open) while a flasher has it. Called with _cond held."""
        self._parked = True
        self._cond.notify_all()
        while self._pause and not self._stop.is_set():
            self._cond.wait()
        self._parked = False

    def _feed(self, data: bytes) -> None:
        mono, wall = time.monotonic(), time.time()
        with self._cond:
            self._partial += data
            self._partial_at = mono
            if b"\n" in data:
                *complete, rest = self._partial.split(b"\n")
                self._partial = bytearray(rest)
                for raw in complete:
                    self._append(Line(_decode(bytes(raw)), mono, wall))
            if len(self._partial) > MAX_PARTIAL_BYTES:
                self._flush_partial()
            self._cond.notify_all()

    def _allowing_return(self, timeout: float) -> float:
        """``timeout``, or the time a lost port may take to come back if that is longer."""
        return max(timeout, self.port_return_s or 0.0)

    def _lost(self, port: Any, exc: BaseException) -> None:
        leftover = _rfc2217_leftover(port)
        if leftover:
            self._feed(leftover)
        with self._cond:
            if self._port is port:
                self._port = None
            self.losses += 1
            self._gaps.append(PortGap(time.time(), None))
            self._lost_at = time.monotonic()
            self._flush_partial()
            self._add_marker(f"--- port lost: {exc} ---")
            self._cond.notify_all()
        # After telling the waiters: pyserial's close of a network port sleeps 0.3 s.
        with contextlib.suppress(serial.SerialException, OSError):
            port.close()

    def _reopen(self) -> None:
        """Reopen the lost port with backoff until it opens or the console closes."""
        with self._cond:
            lost_at = self._lost_at or time.monotonic()
        delay, longest = RECONNECT_BACKOFF_S
        if self.port_return_s is not None:
            longest = max(delay, min(longest, self.port_return_s / RECONNECT_POLLS_PER_RETURN))
        attempts = 0
        while not self._stop.is_set():
            attempts += 1
            try:
                port = self._open_port()
            except Exception:  # any failure to open only means "not back yet"
                self._stop.wait(delay)
                delay = min(delay * 2, longest)
                continue
            with self._cond:
                if not self._stop.is_set():
                    self._port = port
                    away = time.monotonic() - lost_at
                    if self._gaps and self._gaps[-1].seconds is None:
                        self._gaps[-1] = PortGap(self._gaps[-1].lost_at, away, attempts)
                    self._add_marker(f"--- port reopened after {away:.2f} s ({attempts} attempt(s)) ---")
                    self._cond.notify_all()
                    return
            # Closed while opening: the new port is ours to close.
            with contextlib.suppress(serial.SerialException, OSError):
                port.close()
            return

    def _open_port(self) -> Any:
        port = serial.serial_for_url(self.url, do_not_open=True, exclusive=True)
        port.baudrate = self.baudrate
        port.timeout = READ_TIMEOUT_S
        # Released before open: a devkit's auto-reset circuit then never sees EN pulled low.
        port.dtr = False
        port.rts = False
        port.open()
        return port

    # -- helpers (called with _cond held) ------------------------------------------------
    def _usable_port(self, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                self._raise_if_unusable()
                if self._port is not None and not self._pause:
                    return self._port
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    state = "lent to a flasher" if self._pause else "lost (reopening)"
                    raise ConsolePortLost(
                        f"console port {self.url} is {state}; waited {timeout:g} s"
                    )
                self._cond.wait(remaining)

    def _raise_if_unusable(self) -> None:
        if self._failure is not None:
            raise ConsoleError(
                f"console reader for {self.url} failed: {self._failure!r}"
            ) from self._failure
        if self._closed:
            raise ConsoleError(f"console on {self.url} is closed")

    def _end(self) -> Mark:
        return Mark(self._base + len(self._lines), len(self._partial_text()))

    def _partial_text(self) -> str:
        return _decode(bytes(self._partial))

    def _flush_partial(self) -> None:
        if self._partial:
            self._append(Line(self._partial_text(), time.monotonic(), time.time()))
            self._partial = bytearray()

    def _add_marker(self, text: str) -> None:
        """A line of the console's own, in memory and in the log. Flush the partial first
        if it must not be split (port lost, lent): markers take a line number."""
        self._flush_partial()
        self._append(Line(text, time.monotonic(), time.time(), marker=True))

    def _log_marker(self, text: str) -> None:
        """A note in the log file only: it takes no line number, so marks stay valid
        even if the device is in the middle of a line."""
        self._write_log(Line(text, time.monotonic(), time.time(), marker=True))

    def _append(self, line: Line) -> None:
        self._lines.append(line)
        self._write_log(line)
        if len(self._lines) > self._max_lines:
            drop = max(len(self._lines) - self._max_lines, self._max_lines // 10)
            del self._lines[:drop]
            self._base += drop

    def _write_log(self, line: Line) -> None:
        if self._log.closed:
            return
        # One write and flush per line: `tail -f` works, and a crash loses nothing.
        self._log.write(self._redact(line.format()) + "\n")
        self._log.flush()

    def _slice(self, start: Mark, end: Mark | None, *, include_partial: bool) -> list[Line]:
        """Lines between two marks, the first and last cut at the marks' columns."""
        stop = self._base + len(self._lines) if end is None else end.line
        picked: list[Line] = []
        for number in range(max(start.line, self._base), stop + 1):
            if number < self._base + len(self._lines):
                line = self._lines[number - self._base]
            elif include_partial and self._partial:
                line = Line(self._partial_text(), time.monotonic(), time.time())
            else:
                break
            text = line.text
            if end is not None and number == end.line:
                text = text[: end.column]
                if not text:
                    break  # the end mark sits at the start of a line that is not part of it
            if number == start.line and start.column:
                text = text[start.column :]
                if not text:
                    continue  # nothing after the mark on the line it was taken in
            picked.append(
                Line(text, line.monotonic, line.wallclock, line.marker)
                if text != line.text
                else line
            )
        return picked


def _read_available(port: Any) -> bytes:
    """Block (up to the read timeout) for the first byte, then take what else is there.

    Feeding a burst at once, not byte by byte, wakes ``expect`` once per burst. (Some
    ports report ``in_waiting`` as 0/1 only, ``socket://`` for one; this still works.)
    """
    data = bytearray(port.read(port.in_waiting or 1))
    while data and len(data) < MAX_PARTIAL_BYTES:
        waiting = port.in_waiting
        if not waiting:
            break
        data += port.read(waiting)
    return bytes(data)


def _decode(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace")
    return text[:-1] if text.endswith("\r") else text


def _rfc2217_leftover(port: Any) -> bytes:
    """Bytes pyserial's RFC 2217 client received before the connection dropped.

    Its ``read`` refuses to return them once its telnet thread has died (it checks the
    thread before the buffer), so without this the last lines before a server loss —
    often the interesting ones — would never reach the log.
    """
    if not isinstance(port, rfc2217.Serial):
        return b""
    buffer = getattr(port, "_read_buffer", None)
    if not isinstance(buffer, queue.Queue):
        return b""
    data = bytearray()
    while True:
        try:
            item = buffer.get_nowait()
        except queue.Empty:
            break
        if isinstance(item, bytes | bytearray):
            data += item
    return bytes(data)
