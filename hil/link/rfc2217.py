"""An RFC 2217 client for flashing: pyserial's, without its per-setting waits.

Over RFC 2217 (a lab host's ``esp_rfc2217_server`` or ser2net, the virtual rig), pyserial's
client renegotiates every serial setting whenever the read timeout changes, and esptool
changes it twice per command: ≥0.2 s per command for a value that only this side uses.
`Rfc2217Port` keeps the timeout local to the client and hears the server's answers as they
arrive; nothing on the wire changes. Because those answers now come as fast as the link,
`hold_strap_longer` lengthens esptool's first reset pulse to match (see `STRAP_HOLD_S`).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Sequence
from typing import Any, Final

import serial
import serial.rfc2217
from esptool.reset import ClassicReset

__all__ = ["STRAP_HOLD_S", "Rfc2217Port", "hold_strap_longer"]


class Rfc2217Port(serial.rfc2217.Serial):  # type: ignore[misc]
    """pyserial's RFC 2217 client, with the read timeout kept on this side and the server's
    acknowledgements awaited as they arrive.

    pyserial's client treats a new ``timeout`` like a new line setting: it re-sends baud
    rate, data bits, parity, stop bits and flow control and waits for the server to
    acknowledge each, polling every 50 ms. Yet the timeout is only how long `read` here
    waits for bytes; RFC 2217 has no such setting. esptool sets it before and after almost
    every command, so each command cost ≥0.2 s over RFC 2217, and connecting, uploading the
    stub and attaching the flash ~16 s on the virtual rig (~1.2 s with this class). Here
    only that local value changes; baud rate and the modem lines are negotiated as before.

    The acknowledgements themselves (a modem line, a purge, the line settings) pyserial
    awaits by sleeping 50 ms before each look, though on a LAN an answer takes a
    millisecond: a classic reset (seven modem-line changes), an open and two purges cost
    ~0.8 s of such naps per flash. Here the reader thread says when an answer came. And a
    close does not end in pyserial's fixed 0.3 s pause "in case of quick reconnects": it
    waits for the server to hang up its side, which is when the next client may connect.
    """

    @property
    def timeout(self) -> float | None:
        value: float | None = self._timeout
        return value

    @timeout.setter
    def timeout(self, timeout: float | None) -> None:
        if timeout is not None and timeout < 0:
            raise ValueError(f"Not a valid timeout: {timeout!r}")
        self._timeout = timeout

    @property
    def write_timeout(self) -> float | None:
        value: float | None = self._write_timeout
        return value

    @write_timeout.setter
    def write_timeout(self, timeout: float | None) -> None:
        # pyserial's client supports none, but says so only after a renegotiation.
        if timeout is not None:
            raise NotImplementedError("write_timeout is currently not supported")
        self._write_timeout = None

    # -- acknowledgements, awaited ---------------------------------------------------------
    def _answers(self) -> threading.Condition:
        # Created on first use: a lent port becomes this class without __init__ running.
        # dict.setdefault is atomic, so the reader thread and a waiter share one condition.
        answers: threading.Condition = self.__dict__.setdefault("_hil_answers", threading.Condition())
        return answers

    def _telnet_process_subnegotiation(self, suboption: bytes) -> None:
        super()._telnet_process_subnegotiation(suboption)  # on the reader thread
        answers = self._answers()
        with answers:
            answers.notify_all()

    def _await_acknowledged(self, items: Sequence[Any], what: str) -> None:
        """Until the server has acknowledged every item (pyserial's ``is_ready`` raises
        ValueError when it refused one), or the network timeout passes."""
        answers = self._answers()
        with answers:
            if not answers.wait_for(lambda: all(item.is_ready() for item in items), self._network_timeout):
                raise serial.SerialException(
                    f"the RFC 2217 server did not acknowledge {what} within {self._network_timeout} s"
                )

    def rfc2217_set_control(self, value: bytes) -> None:
        if self._ignore_set_control_answer:  # the URL asked to expect no answer: pyserial's way
            super().rfc2217_set_control(value)
            return
        item = self._rfc2217_options["control"]
        item.set(value)
        self._await_acknowledged([item], "a modem-line or flow-control change")

    def rfc2217_send_purge(self, value: bytes) -> None:
        item = self._rfc2217_options["purge"]
        item.set(value)
        self._await_acknowledged([item], "a buffer purge")

    def _reconfigure_port(self) -> None:
        """Send the line settings together, await the server's acknowledgements, then set
        the flow control (RFC 2217 SET-BAUDRATE, -DATASIZE, -PARITY, -STOPSIZE, -CONTROL)."""
        if self._socket is None:
            raise serial.SerialException("Can only operate on open ports")
        if not 0 < self._baudrate < 2**32:
            raise ValueError(f"invalid baudrate: {self._baudrate!r}")
        rfc = serial.rfc2217
        settings = self._rfc2217_port_settings
        settings["baudrate"].set(struct.pack("!I", self._baudrate))
        settings["datasize"].set(struct.pack("!B", self._bytesize))
        settings["parity"].set(struct.pack("!B", rfc.RFC2217_PARITY_MAP[self._parity]))
        settings["stopsize"].set(struct.pack("!B", rfc.RFC2217_STOPBIT_MAP[self._stopbits]))
        self._await_acknowledged(list(settings.values()), f"the line settings ({self._baudrate} Bd)")
        if self._rtscts and self._xonxoff:
            raise ValueError("xonxoff and rtscts together are not supported")
        if self._rtscts:
            self.rfc2217_set_control(rfc.SET_CONTROL_USE_HW_FLOW_CONTROL)
        elif self._xonxoff:
            self.rfc2217_set_control(rfc.SET_CONTROL_USE_SW_FLOW_CONTROL)
        else:
            self.rfc2217_set_control(rfc.SET_CONTROL_USE_NO_FLOW_CONTROL)

    def close(self) -> None:
        """Hang up, and return once the server has let go of the port: it closes its side
        when it has released the line, so a client that connects next is not refused
        (ser2net and the virtual board serve one client at a time)."""
        self.is_open = False
        sock: socket.socket | None = getattr(self, "_socket", None)
        reader: threading.Thread | None = getattr(self, "_thread", None)
        deadline = time.monotonic() + _SERVER_LET_GO_S
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
        if reader is not None:
            reader.join(_SERVER_LET_GO_S)  # it stops at the next data or at the server's EOF
            if not reader.is_alive():
                self._thread = None
        if sock is not None:
            if self._thread is None:  # the reader is gone: read on here until that EOF
                with contextlib.suppress(OSError):
                    while (left := deadline - time.monotonic()) > 0:
                        sock.settimeout(left)
                        if not sock.recv(4096):
                            break
            with contextlib.suppress(OSError):
                sock.close()
        if self._thread is not None:  # still in recv after the deadline: the close ends it
            self._thread.join(7)
            self._thread = None
        self._socket = None


_SERVER_LET_GO_S: Final = 1.0
"""How long a close waits for the RFC 2217 server to hang up its side (pyserial instead
sleeps 0.3 s after every close, "in case of quick reconnects")."""

STRAP_HOLD_S: Final = 0.15
"""How long the first reset attempt over RFC 2217 holds GPIO9 low after EN rises.

esptool's ClassicReset holds it 0.05 s (0.55 s on its second attempt). Over a network
port the chip latches its strapping pins wherever the acknowledgements put EN's rise: a
devkit within milliseconds of it, the virtual board 0.12 s after it (sized for pyserial's
stock client, whose 50 ms polls come between EN's rise and GPIO9's fall). With this
client's acknowledgements as fast as the link, 0.05 s misses the latter and every flash
paid a failed attempt and the long one (~0.6 s); 0.15 s covers both on the first.
"""


def hold_strap_longer(esp: Any) -> None:
    """Make the first of esptool's reset strategies hold GPIO9 low ``STRAP_HOLD_S``."""
    construct = esp._construct_reset_strategy_sequence

    def sequence(mode: str) -> tuple[Any, ...]:
        strategies = tuple(construct(mode))
        first = strategies[0] if strategies else None
        if isinstance(first, ClassicReset) and first.reset_delay < STRAP_HOLD_S:
            first.reset_delay = STRAP_HOLD_S
        return strategies

    esp._construct_reset_strategy_sequence = sequence
