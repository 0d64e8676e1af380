"""ser2net as a lab host runs it (labgrid's exporter does the same): serial ports served
as RFC 2217 on TCP, one port per board.

Each served port has a backend: a local serial device (a board's USB-UART, the real lab)
or another RFC 2217 URL. The second is how a virtual board sits behind ser2net: a pty
carries no modem lines, so DTR/RTS (the auto-reset circuit esptool drives) would stop at
ser2net; chained to the board's own RFC 2217 endpoint, ser2net passes them through as it
passes them to a USB-UART.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

from hil.errors import InfrastructureError
from hil.processes import die_with_parent
from hil.services.broker import free_port

READY_TIMEOUT_S = 10.0


class Ser2netError(InfrastructureError):
    """ser2net is missing, its config is refused, or it did not start serving."""


@dataclass(frozen=True)
class ServedPort:
    name: str
    backend: str  # /dev/ttyUSB0 (a local device) or rfc2217://host:port
    port: int  # the TCP port ser2net serves it on, on 127.0.0.1
    baud: int = 115200

    @property
    def url(self) -> str:
        return f"rfc2217://127.0.0.1:{self.port}"

    def connector(self) -> str:
        if self.backend.startswith("rfc2217://"):
            parts = urlsplit(self.backend)
            if not parts.hostname or not parts.port:
                raise Ser2netError(f"{self.name}: {self.backend!r} is not rfc2217://host:port")
            return f"telnet(rfc2217),tcp,{parts.hostname},{parts.port}"
        # "local": ignore the modem *input* lines (CD); DTR/RTS are still driven.
        return f"serialdev,{self.backend},{self.baud}n81,local"


def config_text(ports: list[ServedPort]) -> str:
    """ser2net 4's YAML: one connection per port, RFC 2217 on the accepter side."""
    blocks = []
    for served in ports:
        blocks.append(
            f"connection: &{served.name}\n"
            f"  accepter: telnet(rfc2217),tcp,127.0.0.1,{served.port}\n"
            f"  connector: {served.connector()}\n"
            "  options:\n"
            "    kickolduser: true\n"  # a crashed client must not lock the port for the next
        )
    return "\n".join(blocks)


class Ser2net:
    """One ser2net process serving ``backends`` (name -> device or RFC 2217 URL)."""

    def __init__(self, workdir: Path, backends: Mapping[str, str], *, executable: str | None = None) -> None:
        self.workdir = workdir
        self.executable = executable or shutil.which("ser2net") or "/usr/sbin/ser2net"
        if not Path(self.executable).exists():
            raise Ser2netError("ser2net is not installed; run 'apt-get install ser2net'")
        self.ports = [ServedPort(name, backend, free_port()) for name, backend in backends.items()]
        self._proc: subprocess.Popen[bytes] | None = None

    def url(self, name: str) -> str:
        for served in self.ports:
            if served.name == name:
                return served.url
        raise KeyError(name)

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "ser2net.yaml"
        config.write_text(config_text(self.ports))
        log = (self.workdir / "ser2net.log").open("wb")
        # -n: stay in the foreground (ours to stop); -d: log to stderr; -P: no pid file.
        self._proc = subprocess.Popen(
            [self.executable, "-n", "-d", "-c", str(config), "-P", str(self.workdir / "ser2net.pid")],
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
        log.close()
        deadline = time.monotonic() + READY_TIMEOUT_S
        pending = [p.port for p in self.ports]
        while pending:
            if self._proc.poll() is not None:
                raise Ser2netError(f"ser2net exited ({self._proc.returncode}): {self._log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise Ser2netError(f"ser2net did not listen on {pending} in {READY_TIMEOUT_S:.0f} s")
            pending = [port for port in pending if not _listening(port)]
            if pending:
                time.sleep(0.05)  # polling a listen socket: there is no event to wait on

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def _log_tail(self) -> str:
        try:
            return (self.workdir / "ser2net.log").read_text(errors="replace")[-1500:]
        except OSError:
            return "(no log)"

    def __enter__(self) -> Ser2net:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def _listening(port: int) -> bool:
    """Is something listening on 127.0.0.1:port? (Checked without connecting: a connection
    would make ser2net open the backend, and its close would be seen by the board.)"""
    try:
        text = Path("/proc/net/tcp").read_text()
    except OSError:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0
    wanted = f"0100007F:{port:04X}"
    return any(line.split()[1] == wanted and line.split()[3] == "0A" for line in text.splitlines()[1:])
