"""Start and drive a virtual board process through its public interfaces only.

This is the test side of the virtual rig: it runs ``hil sim board`` as a child process
in its own process group, reads the first-line JSON, and talks to the control endpoint
over its socket. It never imports ``hil.sim``, so what it does works the same against
a board started by someone else (``hil sim up``, a lab host) given the same URLs.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlparse

from hil.errors import InfrastructureError
from hil.processes import die_with_parent, stop_group

START_TIMEOUT_S = 20.0


class VirtualBoardError(InfrastructureError):
    """The board process could not be started, or its control endpoint refused a request."""


@dataclass(frozen=True)
class BoardEndpoints:
    """The first-line JSON of ``hil sim board``."""

    serial: str
    control: str
    pid: int
    mac: str
    state_dir: Path

    @classmethod
    def from_json(cls, line: str) -> BoardEndpoints:
        data = json.loads(line)
        return cls(
            serial=data["serial"],
            control=data["control"],
            pid=int(data["pid"]),
            mac=data["mac"],
            state_dir=Path(data["state_dir"]),
        )


def _read_token(url: str, token_file: str | None) -> str | None:
    """The board's control token from the file its URL names (None: an endpoint without one)."""
    if token_file is None:
        return None
    try:
        return Path(token_file).read_text().strip()
    except OSError as exc:
        raise VirtualBoardError(
            f"control endpoint {url}: cannot read its token file {token_file} ({exc.strerror}); "
            "the board's owner must share it with you"
        ) from None


class ControlClient:
    """A JSON-lines client for a board's control endpoint (``tcp://127.0.0.1:PORT``)."""

    def __init__(self, url: str, *, timeout: float = 30.0) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "tcp" or parsed.hostname is None or parsed.port is None:
            raise VirtualBoardError(f"control endpoint {url!r} is not tcp://HOST:PORT[?token_file=PATH]")
        self.url = url
        self._token = _read_token(url, parse_qs(parsed.query).get("token_file", [None])[0])
        self._address = (parsed.hostname, parsed.port)
        self._timeout = timeout
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._buffer = b""

    def __repr__(self) -> str:
        return f"<ControlClient {self.url}>"

    def request(self, cmd: str, **fields: Any) -> dict[str, Any]:
        """Send one command; return the reply, or raise VirtualBoardError if it failed."""
        with self._lock:
            if self._sock is None:
                self._sock = socket.create_connection(self._address, timeout=self._timeout)
            # A request that waits on the board gets that long on top of the usual timeout.
            self._sock.settimeout(self._timeout + float(fields.get("timeout", 0)))
            request = {"cmd": cmd, **fields} if self._token is None else {"cmd": cmd, "token": self._token, **fields}
            self._sock.sendall(json.dumps(request).encode() + b"\n")
            while b"\n" not in self._buffer:
                chunk = self._sock.recv(65536)
                if not chunk:
                    self.close()
                    raise VirtualBoardError(f"control endpoint {self.url} closed the connection")
                self._buffer += chunk
            line, self._buffer = self._buffer.split(b"\n", 1)
        reply: dict[str, Any] = json.loads(line)
        if not reply.get("ok"):
            raise VirtualBoardError(f"{cmd}: {reply.get('error')}")
        return reply

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = self.request("state")["state"]
        return state

    def tx_log(self, since: int = 0) -> tuple[bytes, int]:
        """What the board transmitted after byte position ``since``, and the new position."""
        reply = self.request("tx_log", since=since)
        return base64.b64decode(reply["data"]), int(reply["end"])

    def wait_tx(self, pattern: str, *, since: int = 0, timeout: float = 10.0) -> tuple[str, int]:
        """Wait (on the board's side) until its TX after ``since`` matches ``pattern``.

        Returns the matched text and the position just after it, to chain waits.
        """
        reply = self.request("wait_tx", pattern=pattern, since=since, timeout=timeout)
        return str(reply["match"]), int(reply["end"])

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
            self._buffer = b""


class VirtualBoardProcess:
    """A ``hil sim board`` child process; a context manager that always cleans up."""

    def __init__(
        self,
        state_dir: Path,
        *,
        mac: str | None = None,
        pty: bool = False,
        realistic_timing: bool = False,
        profile: str = "default",
        usb_jtag: bool = False,
    ) -> None:
        self.state_dir = state_dir
        self.profile = profile
        self.usb_jtag = usb_jtag
        self._args = [sys.executable, "-m", "hil", "sim", "board", "--state-dir", str(state_dir)]
        if mac:
            self._args += ["--mac", mac]
        if pty:
            self._args.append("--pty")
        if realistic_timing:  # a paced UART and real flash durations (benchmarks); slow
            self._args.append("--realistic-timing")
        if profile != "default":  # e.g. real-board: a C3's timing, silent TCP on power cuts
            self._args += ["--profile", profile]
        if usb_jtag:  # the chip's own USB port: usb-reset, a port that leaves with the power
            self._args.append("--usb-jtag")
        self._proc: subprocess.Popen[str] | None = None
        self.endpoints: BoardEndpoints | None = None
        self.control: ControlClient | None = None

    def start(self) -> BoardEndpoints:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        stderr = (self.state_dir / "board.stderr.log").open("w")
        self._proc = subprocess.Popen(
            self._args,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            preexec_fn=die_with_parent,  # own process group, and gone if we are killed
        )
        stderr.close()
        line = self._first_line()
        if not line:
            self.stop()
            log = (self.state_dir / "board.stderr.log").read_text()
            raise VirtualBoardError(f"hil sim board exited before reporting its ports:\n{log}")
        self.endpoints = BoardEndpoints.from_json(line)
        self.control = ControlClient(self.endpoints.control)
        return self.endpoints

    def _first_line(self) -> str:
        assert self._proc is not None and self._proc.stdout is not None
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(self._proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(START_TIMEOUT_S)
        if reader.is_alive():
            self.stop()
            raise VirtualBoardError(f"hil sim board printed nothing in {START_TIMEOUT_S:.0f} s")
        return result[0].strip() if result else ""

    def stop(self) -> None:
        if self.control is not None:
            self.control.close()
        if self._proc is not None:
            stop_group(self._proc, grace_s=10)

    def kill(self) -> None:
        """SIGKILL the board: its sockets close without a word, as when a board loses power
        and its host port goes with it."""
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def __enter__(self) -> VirtualBoardProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
