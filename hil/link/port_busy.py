"""A serial port held by another program: how to tell, who holds it, what to say.

The console and the flasher both open ports exclusively (pyserial's ``exclusive=True``,
an flock); when that is refused the person needs the holder's name and the fix, not
pyserial's errno text."""

from __future__ import annotations

import errno
import os


def is_busy(exc: BaseException) -> bool:
    """pyserial's ``exclusive=True`` lock (flock) or the kernel (TIOCEXCL) refused the port."""
    return getattr(exc, "errno", None) in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EBUSY) or (
        "exclusively lock" in str(exc)
    )


def port_holders(port: str) -> list[str]:
    """``pid N (command)`` of the processes holding the local device ``port`` open, as far
    as /proc lets this user see (Linux; empty elsewhere or for a URL)."""
    if "://" in port:
        return []
    try:
        target = os.path.realpath(port)
        pids = [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []
    holders: list[str] = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if not any(os.path.realpath(f"/proc/{pid}/fd/{fd}") == target for fd in fds):
                continue
            with open(f"/proc/{pid}/comm") as comm:
                holders.append(f"pid {pid} ({comm.read().strip()})")
        except OSError:
            continue
    return holders


def busy_message(port: str, exc: BaseException, nothing_done: str) -> str:
    """One message: the port, who holds it, what was not done, and how to free it."""
    holders = port_holders(port)
    held_by = f" by {', '.join(holders)}" if holders else " by another program"
    return (
        f"port {port} is busy: it is held open{held_by} ({exc}). {nothing_done} "
        "Close the program holding it (a serial monitor such as `hil monitor`, "
        f"`idf.py monitor`, screen or minicom, or another hil session; `fuser -v {port}` "
        "names it), or pick another rig, then run again."
    )
