"""Drivers for `DownloadSession` in tests: frame by frame, or through a pty for real esptool.

`LoopbackHost` talks to a session directly, the way esptool's loader would, and
decodes what comes back. `PtyBoard` stands a session behind a pty: a thread reads
what esptool writes to the slave side and feeds it in, and the replies go back
through the master. A `Reboot` puts the chip back into a fresh ROM session (the
harness keeps it strapped for download), which is what esptool expects after
``--after no-reset`` with the stub.
"""

from __future__ import annotations

import base64
import json
import os
import select
import struct
import subprocess
import sys
import threading
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import esptool

from hil.sim.download import DownloadEvent, DownloadSession, Reboot
from hil.sim.flash import SpiFlash
from hil.sim.registers import ChipIdentity, RegisterSpace, parse_mac
from hil.sim.slip import SlipDecoder, slip_encode

TEST_MAC = "58:cf:79:01:02:03"
ESPTOOL_TIMEOUT_S = 60


@dataclass
class EsptoolResult:
    returncode: int
    output: str

    def __str__(self) -> str:
        return f"esptool exited {self.returncode}:\n{self.output}"


@dataclass
class PtyBoard:
    """A virtual board in download mode on a pty; use as a context manager."""

    flash: SpiFlash
    events: list[DownloadEvent] = field(default_factory=list)
    watchdog_resets: int = 0

    def __post_init__(self) -> None:
        self.registers = RegisterSpace(
            ChipIdentity(mac=parse_mac(TEST_MAC)), self.flash, self._on_watchdog
        )
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.port = os.ttyname(self._slave)
        self._stop_r, self._stop_w = os.pipe()
        self.session = self._new_session()
        self._thread = threading.Thread(target=self._pump, name="pty-board", daemon=True)

    def __enter__(self) -> PtyBoard:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join(timeout=5)
        for fd in (self._master, self._slave, self._stop_r, self._stop_w):
            os.close(fd)

    def esptool(self, *args: str, cwd: Path, stub: bool = True, tool: str = "esptool") -> EsptoolResult:
        """Run the real esptool CLI (or ``tool="espefuse"``) against this board and
        capture its output."""
        cmd = [
            sys.executable,
            "-m",
            tool,
            "--port",
            self.port,
            "--before",
            "no-reset",
            "--after",
            "no-reset",
            *([] if stub else ["--no-stub"]),
            *args,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ESPTOOL_")}
        proc = subprocess.run(
            cmd,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=ESPTOOL_TIMEOUT_S,
            check=False,
        )
        return EsptoolResult(proc.returncode, proc.stdout)

    def _new_session(self) -> DownloadSession:
        return DownloadSession(
            flash=self.flash,
            registers=self.registers,
            send=self._send,
            on_event=self._on_event,
        )

    def _on_event(self, event: DownloadEvent) -> None:
        self.events.append(event)
        if isinstance(event, Reboot):
            self.session = self._new_session()

    def _on_watchdog(self) -> None:
        self.watchdog_resets += 1

    def _send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._master, view)
            view = view[written:]

    def _pump(self) -> None:
        while True:
            ready, _, _ = select.select([self._master, self._stop_r], [], [])
            if self._stop_r in ready:
                return
            try:
                data = os.read(self._master, 65536)
            except OSError:
                return
            self.session.feed(data)


@dataclass
class Reply:
    """One decoded response frame."""

    op: int
    value: int
    data: bytes


class LoopbackHost:
    """Drives a `DownloadSession` directly, the way esptool's loader would."""

    def __init__(self, flash: SpiFlash, *, on_watchdog: Callable[[], None] | None = None) -> None:
        self.registers = RegisterSpace(
            ChipIdentity(mac=parse_mac(TEST_MAC)), flash, on_watchdog or (lambda: None)
        )
        self.log: list[bytes | DownloadEvent] = []
        self._decoder = SlipDecoder()
        self.session = DownloadSession(
            flash=flash, registers=self.registers, send=self._send, on_event=self.log.append
        )

    def _send(self, data: bytes) -> None:
        self.log.extend(self._decoder.feed(data))

    def feed(self, data: bytes) -> list[bytes]:
        """Feed raw bytes; return the frames sent in response."""
        start = len(self.log)
        self.session.feed(data)
        return [item for item in self.log[start:] if isinstance(item, bytes)]

    def request(self, op: int, data: bytes = b"", chk: int = 0) -> list[bytes]:
        return self.feed(slip_encode(struct.pack("<BBHI", 0, op, len(data), chk) + data))

    def command(self, op: int, data: bytes = b"", chk: int = 0) -> Reply:
        """Send one command and return its single reply."""
        frames = self.request(op, data, chk)
        assert len(frames) == 1, frames
        return parse_reply(frames[0])

    def events(self) -> list[DownloadEvent]:
        return [item for item in self.log if not isinstance(item, bytes)]


def parse_reply(frame: bytes) -> Reply:
    direction, op, length, value = struct.unpack_from("<BBHI", frame)
    assert direction == 1, frame.hex()
    assert length == len(frame) - 8, frame.hex()
    return Reply(op, value, frame[8:])


def checksum(data: bytes) -> int:
    value = 0xEF
    for byte in data:
        value ^= byte
    return value


def data_command(seq: int, data: bytes) -> tuple[bytes, int]:
    """A FLASH_DATA/MEM_DATA payload and its header checksum."""
    return struct.pack("<IIII", len(data), seq, 0, 0) + data, checksum(data)


def upload_stub(host: LoopbackHost) -> list[bytes]:
    """Upload esptool's own C3 stub (v2) like esptool does; return the frames after MEM_END."""
    stub = json.loads(STUB_JSON.read_text())
    for field_name, start_name in (("text", "text_start"), ("data", "data_start")):
        blob = base64.b64decode(stub[field_name])
        blocks = [blob[i : i + 0x1800] for i in range(0, len(blob), 0x1800)]
        begin = struct.pack("<IIII", len(blob), len(blocks), 0x1800, stub[start_name])
        assert host.command(0x05, begin).data == bytes(4)
        for seq, block in enumerate(blocks):
            payload, chk = data_command(seq, block)
            assert host.command(0x07, payload, chk).data == bytes(4)
    return host.request(0x06, struct.pack("<II", 0, stub["entry"]))


STUB_JSON = Path(esptool.__file__).parent / "targets" / "stub_flasher" / "2" / "esp32c3.json"
