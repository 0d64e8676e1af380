"""What a failed flash job raises: one base, and a subclass per party at fault.

`FlashInputError` is a usage error (the files asked for are wrong), the others are the
rig's (`InfrastructureError`): reports, the plugin and the bench commands decide by type,
so these live apart from the flasher and its esptool import.
"""

from __future__ import annotations

from collections.abc import Sequence

from hil.errors import InfrastructureError, UsageError

__all__ = [
    "FlashError",
    "FlashInfrastructureError",
    "FlashInputError",
    "FlashPortBusyError",
    "FlashVerifyError",
]


class FlashError(Exception):
    """Flashing did not complete. The subclasses say whose fault it is."""


class FlashInputError(FlashError, UsageError, ValueError):
    """What was asked to be flashed is wrong; raised before any port is opened (except a
    chip-revision mismatch, which only the connected board can reveal; esptool checks it).

    The message names the file, the problem and the fix.
    """


class FlashInfrastructureError(FlashError, InfrastructureError):
    """The rig failed, not the firmware: the port did not open, the chip did not sync, the
    connection dropped mid-write. Reported as *broken*, never as a product failure.

    `attempts` is how many connections were tried; `causes` what each one died of.
    """

    def __init__(self, message: str, *, attempts: int = 1, causes: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.causes = tuple(causes)


class FlashPortBusyError(FlashInfrastructureError):
    """The port is held by another program (a serial monitor, another session): no board
    was touched, and a retry would only find it held again, so it is not retried."""


class FlashVerifyError(FlashInfrastructureError):
    """The flash does not hold what was written (MD5 mismatch after writing).

    The firmware under test cannot cause this: the board's flash, its wiring or the link
    corrupted the data, so it is an infrastructure failure too.
    """
