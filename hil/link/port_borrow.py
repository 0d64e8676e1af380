"""The port a flash job talks through: opened from a URL, or borrowed from its owner.

The console lends its open port for a flash (`Console.borrow`) rather than closing it, so
no close resets the board and it carries on logging afterwards. The flasher's side of that
loan is `Link.borrow`: the lent object is used as it is (over RFC 2217, as an
`Rfc2217Port` for the job) and given back open, with its baud rate and timeouts as they
were, even when esptool closed it after a failed sync. A URL is opened for the job
instead, and closed after it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import serial
import serial.rfc2217

from hil.link.port_busy import PortHeld, is_busy, port_holders
from hil.link.rfc2217 import Rfc2217Port

__all__ = ["Link"]


@dataclass
class Link:
    """A serial port for one connection attempt: opened from a URL, or lent and given back
    as it was (open, same settings) even when esptool closed it after a failed sync."""

    port: Any
    owned: bool
    restore: Callable[[], None] = lambda: None

    @property
    def is_rfc2217(self) -> bool:
        return str(getattr(self.port, "name", "") or "").startswith("rfc2217:")

    @classmethod
    def open(cls, port: str | serial.SerialBase, *, fast_rfc2217: bool) -> Link:
        if isinstance(port, str):
            try:
                opened = _open_url(port, fast_rfc2217=fast_rfc2217)
            except (serial.SerialException, OSError) as exc:
                if "://" not in port:
                    raise
                # A network port's server refuses a second client by closing it (a broken
                # pipe, or pyserial's "does not support RFC2217"): a local process connected
                # to it is the holder. With none in sight it may be a client just gone whose
                # end the server has not seen yet: not "busy", so the flasher's fresh retry runs.
                holders = port_holders(port)
                if holders:
                    raise PortHeld(port, holders, exc) from exc
                if is_busy(exc):  # said without pyserial's words, which would read as busy again
                    raise serial.SerialException(
                        f"{port}: the server dropped the connection at once ({type(exc).__name__}); "
                        "a client of it may just have left, or it does not speak RFC 2217"
                    ) from exc
                raise
            return cls(opened, owned=True)
        return cls.borrow(port, fast_rfc2217=fast_rfc2217)

    @classmethod
    def borrow(cls, port: serial.SerialBase, *, fast_rfc2217: bool) -> Link:
        was_open = bool(port.is_open)
        original_class = type(port)
        saved = (port.baudrate, port.timeout, port.write_timeout)
        if not was_open:
            port.open()
        if fast_rfc2217 and original_class is serial.rfc2217.Serial:
            # The lender's object, same state; only timeout setting skips the renegotiation.
            port.__class__ = Rfc2217Port

        def restore() -> None:
            port.__class__ = original_class
            if not was_open:
                port.close()
                return
            with contextlib.suppress(serial.SerialException, OSError, ValueError):
                if not port.is_open:  # esptool closes the port when a sync fails
                    port.open()
                baudrate, timeout, write_timeout = saved
                if port.baudrate != baudrate:
                    port.baudrate = baudrate
                if port.timeout != timeout:
                    port.timeout = timeout
                if port.write_timeout != write_timeout:
                    with contextlib.suppress(NotImplementedError):
                        port.write_timeout = write_timeout

        return cls(port, owned=False, restore=restore)

    def refresh(self) -> None:
        """A fresh connection on a lent port: close it and open it again."""
        if self.owned:
            return
        with contextlib.suppress(serial.SerialException, OSError):
            if self.port.is_open:
                self.port.close()
        self.port.open()

    def release(self) -> None:
        if self.owned:
            with contextlib.suppress(serial.SerialException, OSError):
                self.port.close()
        else:
            self.restore()


def _open_url(port: str, *, fast_rfc2217: bool) -> Any:
    if fast_rfc2217 and port.startswith("rfc2217:"):
        opened = Rfc2217Port()
        opened.port = port
        opened.open()
        return opened
    return serial.serial_for_url(port, exclusive=True)
