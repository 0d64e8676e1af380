"""The serial console against a fake port: a raw TCP server behind a ``socket://`` URL
(stoppable and restartable on the same port, like a lab host's bridge), and a pty pair."""

from __future__ import annotations

import contextlib
import os
import re
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil.link.console import (
    PARTIAL_SETTLE_S,
    READ_TIMEOUT_S,
    Console,
    ConsoleError,
    ConsolePortLost,
    ConsoleTimeout,
    Mark,
)

LOG_LINE = re.compile(r"^\d{2}:\d{2}:\d{2}\.\d{3}  ")


class FakePort:
    """A raw TCP "serial port" for ``socket://``: one client at a time; ``stop`` drops
    the client and the listener, ``start`` listens again on the same port number."""

    def __init__(self) -> None:
        self.port = 0
        self.received = bytearray()
        self.connections = 0
        self._cond = threading.Condition()
        self._client: socket.socket | None = None
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        return f"socket://127.0.0.1:{self.port}"

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(1)
        self.port = listener.getsockname()[1]
        self._listener = listener
        thread = threading.Thread(target=self._serve, args=(listener,), daemon=True)
        thread.start()
        self._threads.append(thread)

    def _serve(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # the listener was shut down
            with self._cond:
                self._client = conn
                self.connections += 1
                self._cond.notify_all()
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    break
                with self._cond:
                    self.received += data
                    self._cond.notify_all()
            with self._cond:
                if self._client is conn:
                    self._client = None
                self._cond.notify_all()
            conn.close()

    def send(self, data: bytes) -> float:
        """Send to the connected client; returns the monotonic time just before sending."""
        with self._cond:
            client = self._client
        assert client is not None, "no console connected to the fake port"
        sent_at = time.monotonic()
        client.sendall(data)
        return sent_at

    def wait(self, predicate_name: str, predicate: object, timeout: float = 5.0) -> None:
        assert callable(predicate)
        with self._cond:
            assert self._cond.wait_for(predicate, timeout), (
                f"fake port: timed out waiting for {predicate_name}"
            )

    def wait_connections(self, count: int, timeout: float = 5.0) -> None:
        self.wait(
            f"{count} connection(s)",
            lambda: self.connections >= count and self._client is not None,
            timeout,
        )

    def wait_disconnected(self, timeout: float = 5.0) -> None:
        self.wait("the client to leave", lambda: self._client is None, timeout)

    def wait_received(self, data: bytes, timeout: float = 5.0) -> None:
        self.wait(f"{data!r}", lambda: data in self.received, timeout)

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
            listener.close()
        with self._cond:
            client = self._client
        if client is not None:
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()


@pytest.fixture
def fake_port() -> Iterator[FakePort]:
    port = FakePort()
    port.start()
    try:
        yield port
    finally:
        port.stop()


@pytest.fixture
def console(fake_port: FakePort, tmp_path: Path) -> Iterator[Console]:
    with Console(fake_port.url, tmp_path / "board.log") as console:
        fake_port.wait_connections(1)
        yield console


def test_expect_returns_the_match_and_logs_timestamped_lines(
    console: Console, fake_port: FakePort
) -> None:
    fake_port.send(b"I (12) boot: ESP-IDF v5.4\r\nI (345) app_init: App version:      1.0.0\r\n")
    match = console.expect(r"App version:\s+(\S+)", timeout=5)
    assert match.group(1) == "1.0.0"
    assert console.lines()[-2:] == [
        "I (12) boot: ESP-IDF v5.4",
        "I (345) app_init: App version:      1.0.0",
    ]

    log = console.log_path.read_text().splitlines()
    assert all(LOG_LINE.match(line) for line in log), log
    assert log[-1].endswith("  I (345) app_init: App version:      1.0.0")  # \r\n stripped


def test_lines_split_on_lf_and_crlf_across_reads(console: Console, fake_port: FakePort) -> None:
    fake_port.send(b"hel")
    console.expect(r"hel$", timeout=5)  # arrived: the next bytes come in a separate read
    fake_port.send(b"lo\r")
    console.expect(r"lo", timeout=5)
    fake_port.send(b"\nworld\nthird\r\n")
    console.expect("third", timeout=5)
    assert console.lines()[-3:] == ["hello", "world", "third"]


def test_expect_matches_the_partial_current_line(console: Console, fake_port: FakePort) -> None:
    fake_port.send(b"esp32c3 login: ")
    assert console.expect(r"login", timeout=5, since=Mark(0)).group(0) == "login"
    started = time.monotonic()
    # A match reaching the end of the line still arriving is taken once the line rests.
    assert console.expect(r"login: $", timeout=5, since=Mark(0)).group(0) == "login: "
    assert time.monotonic() - started >= PARTIAL_SETTLE_S * 0.9
    assert console.lines() == []  # nothing complete yet
    assert console.lines(include_partial=True) == ["esp32c3 login: "]
    fake_port.send(b"root\n")
    console.expect("root", timeout=5)  # continues after the partial match, on the same line
    assert console.lines()[-1] == "esp32c3 login: root"


def test_a_match_at_the_end_of_a_growing_line_waits_for_the_rest(
    console: Console, fake_port: FakePort
) -> None:
    fake_port.send(b"I (345) app_init: App version:      1")
    console.expect("App version:", timeout=5)  # followed by text already: taken at once
    fake_port.send(b".0.0\r\n")
    assert console.expect(r"\s+(\S+)", timeout=5).group(1) == "1.0.0"  # not "1"


def test_expect_consumes_what_it_matched(console: Console, fake_port: FakePort) -> None:
    fake_port.send(b"ready 1\nready 2\n")
    assert console.expect(r"ready (\d)", timeout=5).group(1) == "1"
    assert console.expect(r"ready (\d)", timeout=5).group(1) == "2"
    with pytest.raises(ConsoleTimeout):
        console.expect(r"ready (\d)", timeout=0.2)
    # An explicit mark looks back: the first line is still there.
    assert console.expect(re.compile(r"^ready (\d)$"), timeout=0, since=Mark(0)).group(1) == "1"


def test_marks_and_lines_since(console: Console, fake_port: FakePort) -> None:
    fake_port.send(b"old line\n")
    console.expect("old line", timeout=5)
    mark = console.mark()
    fake_port.send(b"new 1\nnew 2\n")
    console.expect("new 2", timeout=5)
    assert console.lines(since=mark) == ["new 1", "new 2"]
    with pytest.raises(ConsoleTimeout):
        console.expect("old line", timeout=0.1, since=mark)
    assert console.mark() > mark


def test_timeout_message_shows_pattern_what_was_seen_and_the_log(
    console: Console, fake_port: FakePort
) -> None:
    fake_port.send(b"".join(f"line {i:02d}\n".encode() for i in range(30)) + b"half a li")
    console.expect("half a li", timeout=5)
    started = time.monotonic()
    with pytest.raises(ConsoleTimeout) as info:
        console.expect(r"MQTT connected", timeout=0.3, since=Mark(0))
    assert 0.3 <= time.monotonic() - started < 2.0
    message = str(info.value)
    assert isinstance(info.value, AssertionError)  # a product failure, not infrastructure
    assert "/MQTT connected/" in message and "0.3 s" in message
    assert "line 29" in message and "line 11" in message
    assert "line 09" not in message  # only the last ~20 lines
    assert "half a li" in message  # the partial line too
    assert str(console.log_path) in message
    assert info.value.log_path == console.log_path and len(info.value.seen) == 20

    mark = console.mark()
    with pytest.raises(ConsoleTimeout) as info:
        console.expect("anything", timeout=0.05, since=mark)
    assert "nothing received since the search started" in str(info.value)
    assert "line 29" in str(info.value) and "half a li" in str(info.value)


def test_segments_record_a_tests_part_of_the_stream(console: Console, fake_port: FakePort) -> None:
    fake_port.send(b"setup output\n")
    console.expect("setup output", timeout=5)
    with console.segment("test_a") as segment:
        fake_port.send(b"in a 1\nin a 2\n")
        console.expect("in a 2", timeout=5)
        with pytest.raises(ConsoleTimeout):
            console.expect("setup output", timeout=0.05)  # entering moved the default start
    assert segment.end is not None and segment.end > segment.start
    fake_port.send(b"after a\n")
    console.expect("after a", timeout=5)

    text = console.segment_text("test_a")
    assert [line[14:] for line in text.splitlines()] == ["in a 1", "in a 2"]
    assert all(LOG_LINE.match(line) for line in text.splitlines())
    log = console.log_path.read_text()
    assert "--- begin test_a ---" in log and "--- end test_a ---" in log
    with pytest.raises(KeyError, match="test_a"):
        console.segment_text("test_b")


def test_reconnects_after_the_server_restarts_and_keeps_earlier_lines(
    console: Console, fake_port: FakePort
) -> None:
    fake_port.send(b"before 1\nbefore 2\nunfinished")
    console.expect("unfinished", timeout=5)

    fake_port.stop()
    with pytest.raises(ConsolePortLost) as info:  # infrastructure, not a product failure
        console.expect("after", timeout=1.0)
    assert not isinstance(info.value, AssertionError)
    assert "port lost" in str(info.value)
    assert not console.connected

    fake_port.start()  # same port number
    fake_port.wait_connections(2, timeout=10)
    console.wait_connected(timeout=10)
    fake_port.send(b"after\n")
    console.expect("after", timeout=5)

    assert console.lines() == ["before 1", "before 2", "unfinished", "after"]
    assert console.losses == 1
    log = console.log_path.read_text()
    assert re.search(r"--- port lost: .*socket disconnected.* ---", log)
    assert re.search(r"--- port reopened after \d+\.\d\d s \(\d+ attempt\(s\)\) ---", log)
    assert (
        log.index("unfinished")
        < log.index("port lost")
        < log.index("port reopened")
        < log.index("after\n")
    )


def test_write_reaches_the_device_and_waits_out_a_reconnect(
    console: Console, fake_port: FakePort
) -> None:
    console.write(b"help\r\n")
    fake_port.wait_received(b"help\r\n")
    fake_port.stop()
    with pytest.raises(ConsolePortLost):
        console.expect("nothing", timeout=0.5)  # by then the console has seen the loss
    with pytest.raises(ConsolePortLost, match="lost"):
        console.write(b"lost\r\n", timeout=0.2)
    fake_port.start()
    console.write(b"status\r\n", timeout=10)  # waits for the port to come back
    fake_port.wait_received(b"status\r\n")


def test_borrow_lends_the_open_port_and_logging_resumes(
    console: Console, fake_port: FakePort
) -> None:
    fake_port.send(b"before\n")
    console.expect("before", timeout=5)
    with console.borrow() as port:
        port.timeout = 2  # esptool changes the timeout and the baud rate
        port.baudrate = 921600
        fake_port.send(b"\xc0for the flasher\xc0")
        assert port.read(17) == b"\xc0for the flasher\xc0"
        port.write(b"\xc0sync\xc0")
        fake_port.wait_received(b"\xc0sync\xc0")
    assert port.timeout == READ_TIMEOUT_S and port.baudrate == 115200
    assert fake_port.connections == 1  # the port was never closed
    fake_port.send(b"after\n")
    console.expect("after", timeout=5)
    assert "for the flasher" not in "\n".join(console.lines())
    log = console.log_path.read_text()
    assert "--- port lent to a flasher" in log and "--- port returned by the flasher ---" in log


def test_borrow_reopens_a_port_the_flasher_closed(console: Console, fake_port: FakePort) -> None:
    with console.borrow() as port:
        port.close()  # what `with esptool.detect_chip(port) as esp:` does on exit
    fake_port.wait_connections(2)
    fake_port.send(b"still logging\n")
    console.expect("still logging", timeout=5)
    assert console.losses == 0


def test_hard_reset_refuses_a_port_without_modem_lines(console: Console) -> None:
    with pytest.raises(ConsoleError, match="no modem lines"):
        console.hard_reset()


def test_open_failure_is_a_clear_console_error(tmp_path: Path) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    url = f"socket://127.0.0.1:{probe.getsockname()[1]}"
    probe.close()  # nothing listens there now
    with pytest.raises(ConsoleError, match=re.escape(url)):
        Console(url, tmp_path / "board.log")


def test_a_port_another_program_holds_names_the_holder_and_the_fix(tmp_path: Path) -> None:
    import pty

    import serial

    controller, device = pty.openpty()
    name = os.ttyname(device)
    try:
        with serial.Serial(name, exclusive=True), pytest.raises(ConsoleError) as info:  # a monitor has it
            Console(name, tmp_path / "board.log")
    finally:
        os.close(controller)
        os.close(device)
    message = str(info.value)
    assert f"port {name} is busy" in message and f"held open by pid {os.getpid()}" in message
    assert "No console was opened." in message and f"fuser -v {name}" in message


def test_close_stops_the_reader_and_closes_the_port(fake_port: FakePort, tmp_path: Path) -> None:
    console = Console(fake_port.url, tmp_path / "board.log")
    fake_port.wait_connections(1)
    fake_port.send(b"hello\n")
    console.expect("hello", timeout=5)
    console.close()
    fake_port.wait_disconnected()
    assert not [t for t in threading.enumerate() if t.name == f"console {fake_port.url}"]
    with pytest.raises(ConsoleError, match="closed"):
        console.expect("hello", timeout=1)
    console.close()  # twice is fine
    assert console.lines()[-1] == "hello"  # what was received stays readable
    assert console.log_path.read_text().splitlines()[-1].endswith("--- console closed ---")


def test_close_during_reconnect_backoff_returns_promptly(
    fake_port: FakePort, tmp_path: Path
) -> None:
    console = Console(fake_port.url, tmp_path / "board.log")
    fake_port.stop()
    with pytest.raises(ConsolePortLost):
        console.expect("x", timeout=0.5)
    started = time.monotonic()
    console.close()
    assert time.monotonic() - started < 2.0


def test_many_lines_arrive_complete_and_in_order(console: Console, fake_port: FakePort) -> None:
    fake_port.send(b"".join(b"I (%d) sensor: t=21.5 h=40.0 p=1001.2\r\n" % i for i in range(2000)))
    console.expect(r"^I \(1999\) .*p=1001\.2$", timeout=10)
    got = [line for line in console.lines() if line.startswith("I (")]
    assert got == [f"I ({i}) sensor: t=21.5 h=40.0 p=1001.2" for i in range(2000)]
    assert console.log_path.read_text().count("sensor: t=21.5") == 2000


def test_log_file_is_one_per_board_and_appended(fake_port: FakePort, tmp_path: Path) -> None:
    log = tmp_path / "logs" / "dev1.log"
    for word in ("first", "second"):
        with Console(fake_port.url, log) as console:
            fake_port.wait_connections(1 if word == "first" else 2)
            fake_port.send(f"{word}\n".encode())
            console.expect(word, timeout=5)
        fake_port.wait_disconnected()
    text = log.read_text()
    assert text.index("  first") < text.index("  second")
    assert text.count("--- console opened on") == 2


def test_console_on_a_pty(tmp_path: Path) -> None:
    master, slave = os.openpty()
    try:
        with Console(os.ttyname(slave), tmp_path / "board.log") as console:
            os.write(master, b"rst:0x1 (POWERON),boot:0xc (SPI_FAST_FLASH_BOOT)\r\n")
            assert console.expect(r"rst:0x(\w+) \((\w+)\)", timeout=5).group(2) == "POWERON"
            console.write(b"ping\n")
            ready, _, _ = select.select([master], [], [], 5)
            assert ready and os.read(master, 100) == b"ping\n"
            with pytest.raises(ConsoleError, match="RTS/DTR"):
                console.hard_reset()  # a pty has no modem lines
    finally:
        os.close(master)
        os.close(slave)
