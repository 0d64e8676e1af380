"""Loopback ports for listeners that must get the same port back after a restart.

A broker restarted under a test, or a fault proxy ending a partition, listens again on the
port it had: the device keeps its address. A port picked with ``bind(0)`` comes from the
kernel's ephemeral range, which the kernel also hands to every outgoing connection and to
every other process's ``bind(0)``: while the listener is down, any of them may take it
("Address already in use" on the restart, a rig taken out for nothing; CI met this with
three workers). So these ports come from below the ephemeral range, which the kernel never
assigns by itself, and each is held for this process's life by a file lock in a directory
shared by every session on the host, so two processes never pick the same one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import socket
import tempfile
import threading
from pathlib import Path
from typing import IO

LISTEN_HOST = "127.0.0.1"
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
# Where picking below the ephemeral range stops making sense (privileged and well-known
# ports); above it is the fallback for a host whose ephemeral range starts that low.
LOWEST = 10_000
HIGHEST = 65_535
ATTEMPTS = 200

_held: dict[int, IO[bytes]] = {}
_lock = threading.Lock()


class PortsExhausted(OSError):
    """No free port outside the ephemeral range could be reserved."""


def ephemeral_range(path: Path = EPHEMERAL_RANGE_FILE) -> tuple[int, int]:
    """The kernel's ephemeral port range (Linux's default when it cannot be read)."""
    try:
        low, high = (int(part) for part in path.read_text().split())
    except (OSError, ValueError):
        return 32_768, 60_999
    return low, high


def candidate_range(ephemeral: tuple[int, int]) -> range:
    """Ports the kernel never assigns: below its ephemeral range, else above it."""
    low, high = ephemeral
    if low - LOWEST >= 1_000:
        return range(LOWEST, low)
    return range(high + 1, HIGHEST + 1)


def lock_dir() -> Path:
    path = Path(tempfile.gettempdir()) / f"hil-ports-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def reserve_port(*, candidates: range | None = None, locks: Path | None = None) -> int:
    """A loopback TCP port nobody listens on, outside the ephemeral range, reserved for this
    process until it exits (or `release_port`)."""
    pool = candidates if candidates is not None else candidate_range(ephemeral_range())
    directory = locks if locks is not None else lock_dir()
    rng = random.Random()
    with _lock:
        for _ in range(ATTEMPTS):
            port = rng.choice(pool)
            if port in _held:
                continue
            handle = (directory / f"{port}.lock").open("ab")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # another process holds it
                handle.close()
                continue
            if not _bindable(port):  # someone outside hil listens there
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()
                continue
            _held[port] = handle
            return port
    raise PortsExhausted(f"no free loopback port in {pool.start}-{pool.stop - 1} after {ATTEMPTS} tries")


def release_port(port: int) -> None:
    """Give a reserved port back (a process's ports are released when it exits anyway)."""
    with _lock:
        handle = _held.pop(port, None)
    if handle is not None:
        with contextlib.suppress(OSError):
            fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LISTEN_HOST, port))
        except OSError:
            return False
    return True
