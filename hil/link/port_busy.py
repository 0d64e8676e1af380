"""A serial port held by another program: how to tell, who holds it, what to say.

The console and the flasher both open ports exclusively (pyserial's ``exclusive=True``,
an flock); when that is refused the person needs the holder's name and the fix, not
pyserial's errno text. A network port (``rfc2217://``, ``socket://``) has no lock: its
server (ser2net, ``esp_rfc2217_server``, the virtual board) serves one client at a time
and closes a second connection at once, which pyserial reports as a broken pipe. Its
holder is the process with a TCP connection to that address; for a local device, the
process with it open. Both are found in /proc (Linux; what this user may see).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

COMMAND_CHARS = 100  # a holder's command line, shortened to this in messages
_ESTABLISHED = "01"  # /proc/net/tcp's state code
_CLOSED_AT_ONCE = (errno.EPIPE, errno.ECONNRESET)


class PortHeld(OSError):
    """Opening a network port failed while a local process holds a connection to it."""

    def __init__(self, port: str, holders: list[str], cause: BaseException) -> None:
        super().__init__(errno.EBUSY, str(cause).strip() or type(cause).__name__)
        self.port = port
        self.holders = holders


def is_busy(exc: BaseException, port: str | None = None) -> bool:
    """Whether ``exc``, raised *opening* a port, means another program holds it: pyserial's
    ``exclusive=True`` lock (flock) or the kernel (TIOCEXCL) refused it; a network port's
    server closed the connection at once (one client at a time); or, given ``port``, a
    local process is connected to that network port. (A second client whose first writes
    went through before the server closed it fails later, with pyserial's "does not seem
    to support RFC2217", as a server that does not speak RFC 2217 does: only a holder
    found, given ``port``, tells the two apart.)"""
    code = getattr(exc, "errno", None)
    if code in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EBUSY) or "exclusively lock" in str(exc):
        return True
    network = port is None or "://" in port
    if network and (code in _CLOSED_AT_ONCE or isinstance(exc, (BrokenPipeError, ConnectionResetError))):
        return True
    return port is not None and "://" in port and bool(port_holders(port))


def port_holders(port: str) -> list[str]:
    """``pid N (command line)`` of the processes holding ``port``: a local device open, or a
    TCP connection to a network port's address (``rfc2217://HOST:PORT``, ``socket://``);
    empty where /proc does not tell (not Linux, another user's process, another host)."""
    if "://" in port:
        return [_describe(pid) for pid in _connected_pids(port)]
    try:
        target = os.path.realpath(port)
    except OSError:
        return []
    return [_describe(pid) for pid in _pids_with(lambda link: link == target, resolve=True)]


def busy_message(port: str, exc: BaseException | None, nothing_done: str, holders: list[str] | None = None) -> str:
    """One message: the port, who holds it, what was not done, and how to free it. ``exc``
    is what opening it raised (None: found held before trying), ``holders`` who holds it
    if known already (else looked up)."""
    holders = port_holders(port) if holders is None else holders
    why = f" ({exc})" if exc is not None else ""
    if "://" not in port:
        held_by = f" by {', '.join(holders)}" if holders else " by another program"
        return (
            f"port {port} is busy: it is held open{held_by}{why}. {nothing_done} "
            "Close the program holding it (a serial monitor such as `hil monitor`, "
            f"`idf.py monitor`, screen or minicom, or another hil session; `fuser -v {port}` "
            "names it), or pick another rig, then run again."
        )
    address = _address(port)
    where = f"{address[0]}:{address[1]}" if address else port
    held_by = (
        f"held by {', '.join(holders)}"
        if holders
        else "held by a client no process on this host accounts for (another host's, or another "
        "user's; or the server does not speak RFC 2217: a ser2net accepter needs telnet(rfc2217))"
    )
    refused = "closed this connection at once" if exc is not None else "would close another one at once"
    return (
        f"port {port} is busy: its server serves one client at a time and {refused}; "
        f"it is {held_by}{why}. {nothing_done} Close the program "
        f"holding it (a serial monitor such as `hil monitor`, esptool, another hil session; "
        f"`ss -tnp dst {where}` names it on this host), or pick another rig, then run again."
    )


# -- /proc --------------------------------------------------------------------------------
def _address(port: str) -> tuple[str, int] | None:
    try:
        parts = urlsplit(port)
        if parts.hostname is None or parts.port is None:
            return None
        return parts.hostname, parts.port
    except ValueError:
        return None


def _connected_pids(port: str) -> list[int]:
    """Processes with an established TCP connection to ``port``'s host and port number."""
    address = _address(port)
    if address is None:
        return []
    host, number = address
    try:
        ips = {ipaddress.ip_address(info[4][0]) for info in socket.getaddrinfo(host, number, type=socket.SOCK_STREAM)}
    except (OSError, ValueError):
        return []
    inodes = {inode for ip, remote_port, inode in _tcp_connections() if remote_port == number and ip in ips}
    if not inodes:
        return []
    wanted = {f"socket:[{inode}]" for inode in inodes}
    return _pids_with(lambda link: link in wanted, resolve=False)


def _tcp_connections() -> list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int, str]]:
    """(remote address, remote port, socket inode) of every established TCP connection."""
    found: list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int, str]] = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) < 10 or fields[3] != _ESTABLISHED:
                continue
            remote_hex, _, port_hex = fields[2].partition(":")
            try:
                remote = _proc_ip(remote_hex)
                found.append((remote, int(port_hex, 16), fields[9]))
            except ValueError:
                continue
    return found


def _proc_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address as /proc/net/tcp{,6} writes it: 32-bit words in host (little-endian) order."""
    raw = bytes.fromhex(text)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(words)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _pids_with(matches: Callable[[str], bool], *, resolve: bool) -> list[int]:
    """Pids of the processes with an open fd whose link (resolved, for files) ``matches``."""
    try:
        pids = sorted(int(name) for name in os.listdir("/proc") if name.isdigit())
    except OSError:
        return []
    holders: list[int] = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            path = f"/proc/{pid}/fd/{fd}"
            try:
                link = os.path.realpath(path) if resolve else os.readlink(path)
            except OSError:
                continue
            if matches(link):
                holders.append(pid)
                break
    return holders


def _describe(pid: int) -> str:
    """``pid N (hil monitor --port ...)``: the command line says more than the process name
    (every hil command is a ``python``), shortened; the name where the line is unreadable."""
    command = _command_of(pid)
    if not command:
        try:
            command = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            command = "?"
    described = f"pid {pid} ({command})"
    parent = _parent(pid)
    if parent is not None:  # esp-idf-monitor under `hil monitor`: the command the person typed
        parent_command = _command_of(parent)
        words = parent_command.split()
        if words[:1] == ["hil"] or (len(words) > 2 and words[1:3] == ["-m", "hil"]):
            described += f", run by pid {parent} ({parent_command})"
    return described


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rpartition(")")[2].split()[1])  # after the name, which may hold spaces
    except (OSError, ValueError, IndexError):
        return None


def _command_of(pid: int) -> str:
    try:
        argv = [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        return ""
    return _short_command(argv)


def _short_command(argv: list[str]) -> str:
    """``python /venv/bin/hil monitor ...`` as ``hil monitor ...``; ``python -m m`` kept."""
    if not argv:
        return ""
    words = list(argv)
    if os.path.basename(words[0]).startswith("python") and len(words) > 1 and not words[1].startswith("-"):
        words = words[1:]
    words[0] = os.path.basename(words[0])
    text = " ".join(" ".join(word.split()) for word in words)  # one line, whatever the argv held
    return text if len(text) <= COMMAND_CHARS else text[: COMMAND_CHARS - 3] + "..."
