"""Who holds a port: a process with a local device open, or with a TCP connection to a
network port's address (what an RFC 2217 server's one-client rule refuses a second
client for), named with its pid and command line."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from hil.link.port_busy import busy_message, is_busy, port_holders

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")

HOLD_TCP = """
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
print("held", flush=True)
sys.stdin.read()
"""
HOLD_FILE = """
import sys
f = open(sys.argv[1], "rb", buffering=0)
print("held", flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def holding(script: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    """A process that holds something until its stdin closes; yielded once it says so."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    try:
        yield server
    finally:
        server.close()


def test_the_client_of_a_network_port_is_named_with_its_pid_and_command(listener: socket.socket) -> None:
    number = listener.getsockname()[1]
    url = f"rfc2217://127.0.0.1:{number}"
    assert port_holders(url) == []
    with holding(HOLD_TCP, str(number)) as proc:
        accepted, _ = listener.accept()  # this process's end has the client's port as remote
        with accepted:
            holders = port_holders(url)
            assert len(holders) == 1, holders
            assert holders[0].startswith(f"pid {proc.pid} (python -c ")
            assert f"pid {os.getpid()} " not in holders[0]
            assert port_holders(f"socket://localhost:{number}") == holders
            assert port_holders(f"rfc2217://127.0.0.1:{number + 1 if number < 65535 else 1}") == []


def test_the_process_with_a_tty_open_is_named_with_its_command_line() -> None:
    master, slave = os.openpty()
    path = os.ttyname(slave)
    try:
        with holding(HOLD_FILE, path) as proc:
            os.close(slave)  # only the holder has it open now
            slave = -1
            holders = port_holders(path)
            assert len(holders) == 1, holders
            assert holders[0].startswith(f"pid {proc.pid} (python -c")
            assert "\n" not in holders[0]
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)


def test_a_hil_command_is_named_as_typed() -> None:
    from hil.link.port_busy import _short_command

    venv = "/work/x/.venv/bin"
    assert _short_command([f"{venv}/python", f"{venv}/hil", "monitor", "--port", "X"]) == "hil monitor --port X"
    assert _short_command(["/usr/bin/python3", "-m", "esp_idf_monitor"]) == "python3 -m esp_idf_monitor"
    assert len(_short_command(["esptool", "x" * 500])) == 100


def test_the_busy_message_names_the_holder_and_the_way_to_find_it(listener: socket.socket) -> None:
    number = listener.getsockname()[1]
    url = f"rfc2217://127.0.0.1:{number}"
    with holding(HOLD_TCP, str(number)) as proc:
        accepted, _ = listener.accept()
        with accepted:
            message = busy_message(url, BrokenPipeError(errno.EPIPE, "Broken pipe"), "Nothing was flashed.")
    assert f"held by pid {proc.pid} (python -c" in message
    assert "Nothing was flashed." in message
    assert f"ss -tnp dst 127.0.0.1:{number}" in message
    nobody = busy_message(url, None, "Nothing was flashed.", holders=[])
    assert "no process on this host accounts for" in nobody


def test_a_connection_closed_at_once_is_busy_only_for_a_network_port() -> None:
    closed = BrokenPipeError(errno.EPIPE, "Broken pipe")
    assert is_busy(closed)
    assert is_busy(closed, "rfc2217://127.0.0.1:1")
    assert not is_busy(closed, "/dev/ttyUSB0")
    assert is_busy(OSError(errno.EAGAIN, "Resource temporarily unavailable"), "/dev/ttyUSB0")
    assert not is_busy(ConnectionRefusedError(errno.ECONNREFUSED, "refused"), "rfc2217://127.0.0.1:1")
    refused = OSError("Remote does not seem to support RFC2217 or BINARY mode [we-BINARY:False(INACTIVE)]")
    assert not is_busy(refused)  # a server that does not speak RFC 2217 says the same: only a holder tells
