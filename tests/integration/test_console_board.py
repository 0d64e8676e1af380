"""The console against a virtual board over RFC 2217, reached only through its port URL
and control endpoint: opening does not reset it, ``hard_reset`` boots it, esptool (as a
library) borrows the open port, and a lab host's RFC 2217 server may go away and return."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from esptool.cmds import detect_chip

from hil.firmware.catalog import load_recipes
from hil.link.console import Console, ConsolePortLost
from hil.rig.virtual_board import ControlClient, VirtualBoardProcess

FLASH_SIZE = 4 * 1024 * 1024
MAC = "58:cf:79:c0:de:01"
BOOT_TIMEOUT_S = 20.0


def write_factory_flash(state_dir: Path, images: Path) -> None:
    """The raw flash a factory programmer leaves (bootloader, partition table, otadata,
    baseline app), written into the board's state dir before the board starts."""
    image = bytearray(b"\xff" * FLASH_SIZE)
    for line in (images / "flash_args").read_text().splitlines()[1:]:
        offset, name = line.split()
        data = (images / name).read_bytes()
        start = int(offset, 16)
        image[start : start + len(data)] = data
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "flash.bin").write_bytes(image)


@pytest.fixture
def board(
    virtual_board_factory: Callable[..., VirtualBoardProcess], firmware_dir: Path, tmp_path: Path
) -> VirtualBoardProcess:
    """A flashed board that has booted its app, with nobody on its serial port yet."""
    state = tmp_path / "board"
    write_factory_flash(state, firmware_dir)
    board = virtual_board_factory(state_dir=state, mac=MAC)
    control(board).request("wait_mode", mode="app", timeout=BOOT_TIMEOUT_S)
    return board


def control(board: VirtualBoardProcess) -> ControlClient:
    assert board.control is not None
    return board.control


def serial_url(board: VirtualBoardProcess) -> str:
    assert board.endpoints is not None
    return board.endpoints.serial


def baseline_version() -> str:
    book = load_recipes()
    return book.get(book.baseline).version


def test_opening_does_not_reset_and_hard_reset_boots_the_app(
    board: VirtualBoardProcess, tmp_path: Path
) -> None:
    boots = control(board).state()["boots"]
    with Console(serial_url(board), tmp_path / "board.log") as console:
        # Open returns after the server acknowledged DTR/RTS: a reset would have begun.
        state = control(board).state()
        assert (state["boots"], state["mode"]) == (boots, "app")

        console.hard_reset()
        console.expect(r"rst:0x1 \(POWERON\),boot:0xc \(SPI_FAST_FLASH_BOOT\)", timeout=10)
        match = console.expect(r"App version:\s+(\S+)", timeout=BOOT_TIMEOUT_S)
        assert match.group(1) == baseline_version()
        console.expect(r"E \(\d+\) app: not provisioned", timeout=10)  # in order, after the version
        assert control(board).state()["boots"] == boots + 1  # the pulse, and nothing else

    log = (tmp_path / "board.log").read_text()
    assert "--- hard reset (RTS pulse) ---" in log
    assert log.index("hard reset") < log.index("rst:0x1 (POWERON)") < log.index("App version:")


def test_esptool_borrows_the_open_port_and_logging_resumes(
    board: VirtualBoardProcess, tmp_path: Path
) -> None:
    with Console(serial_url(board), tmp_path / "board.log") as console:
        with console.borrow() as port:
            esp = detect_chip(port)  # default reset over RFC 2217: download mode
            assert esp.CHIP_NAME == "ESP32-C3"
            assert ":".join(f"{b:02x}" for b in esp.read_mac()) == MAC
            esp.hard_reset()  # the boot that follows waits in the open port for the console
        assert port.is_open
        console.expect(r"rst:0x1 \(POWERON\)", timeout=10)
        console.expect(r"App version:\s+\S+", timeout=BOOT_TIMEOUT_S)
        assert control(board).state()["mode"] == "app"
        assert not any(
            "\ufffd" in line or "\xc0" in line for line in console.lines()
        )  # no SLIP logged

        # esptool's `with ESPLoader` closes the port on exit: the console reopens it.
        with console.borrow() as port, detect_chip(port) as esp:
            esp.read_mac()
        assert control(board).state()["mode"] == "download"  # reopening reset nothing
        console.hard_reset()
        console.expect(r"App version:\s+\S+", timeout=BOOT_TIMEOUT_S)
        assert console.losses == 0
    log = (tmp_path / "board.log").read_text()
    assert (
        log.index("port lent to a flasher") < log.index("port returned") < log.index("App version:")
    )


class TcpRelay:
    """A TCP forwarder on a fixed port in front of the board's RFC 2217 server. Stopping
    and starting it is a lab host's RFC 2217 server going away and coming back."""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("rfc2217://").rsplit(":", 1)
        self._target = (host, int(port))
        self.port = 0
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"rfc2217://127.0.0.1:{self.port}"

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(1)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._spawn(self._accept, listener)

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target)
            with self._lock:
                self._sockets += [client, upstream]
            self._spawn(self._pump, client, upstream)
            self._spawn(self._pump, upstream, client)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()
        for sock in sockets:
            sock.close()


@pytest.fixture
def relay(board: VirtualBoardProcess) -> Iterator[TcpRelay]:
    relay = TcpRelay(serial_url(board))
    relay.start()
    try:
        yield relay
    finally:
        relay.stop()


def test_rfc2217_server_going_away_and_returning(
    board: VirtualBoardProcess, relay: TcpRelay, tmp_path: Path
) -> None:
    boots = control(board).state()["boots"]
    with Console(relay.url, tmp_path / "board.log") as console:
        console.hard_reset()
        console.expect(r"App version:", timeout=BOOT_TIMEOUT_S)

        relay.stop()
        with pytest.raises(ConsolePortLost, match="port lost"):  # infrastructure, not the device
            console.expect("never printed", timeout=1.0)

        relay.start()  # same port
        console.wait_connected(timeout=10)
        assert control(board).state()["boots"] == boots + 1  # reconnecting reset nothing
        console.hard_reset()  # modem lines work on the new session
        console.expect(r"App version:", timeout=BOOT_TIMEOUT_S)
        assert control(board).state()["boots"] == boots + 2

        assert sum("App version:" in line for line in console.lines()) == 2  # nothing lost before
        assert console.losses == 1
    log = (tmp_path / "board.log").read_text()
    assert log.index("--- port lost:") < log.index("--- port reopened after")


def test_board_gone_for_good_is_a_port_lost_error(
    board: VirtualBoardProcess, tmp_path: Path
) -> None:
    with Console(serial_url(board), tmp_path / "board.log") as console:
        console.hard_reset()
        console.expect(r"not provisioned", timeout=BOOT_TIMEOUT_S)
        board.kill()
        with pytest.raises(ConsolePortLost) as info:
            console.expect(r"App version:", timeout=1.0)
        assert str(tmp_path / "board.log") in str(info.value)
        assert any("not provisioned" in line for line in console.lines())


def test_console_on_the_boards_pty(
    virtual_board_factory: Callable[..., VirtualBoardProcess], firmware_dir: Path, tmp_path: Path
) -> None:
    state = tmp_path / "board"
    write_factory_flash(state, firmware_dir)
    board = virtual_board_factory(state_dir=state, pty=True)
    control(board).request("wait_mode", mode="app", timeout=BOOT_TIMEOUT_S)
    with Console(serial_url(board), tmp_path / "board.log") as console:
        mark = console.mark()
        control(board).request("reset")  # a pty has no modem lines: the rig's reset
        console.expect(r"App version:\s+\S+", timeout=BOOT_TIMEOUT_S, since=mark)
