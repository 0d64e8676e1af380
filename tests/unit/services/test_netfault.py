"""The fault proxy against a local echo server: each fault's effect, and its healing.

Waits are the sockets' own blocking reads with deadlines. The only short timeouts are
where a test asserts silence (nothing arrives), which has no event to wait for.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from hil.services.netfault import FaultProxy, FaultProxyError, NetworkFaults

WAIT_S = 5.0  # deadline for something that must happen
SILENCE_S = 0.3  # how long "nothing arrives" is watched for


class EchoServer:
    """A threaded echo server on loopback that reports how each connection ended."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.accepted = 0
        self.ended: queue.Queue[str] = queue.Queue()  # "eof" or "reset", one per connection
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                self._conns.append(conn)
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except ConnectionResetError:
                self.ended.put("reset")
                return
            except OSError:
                return
            self.ended.put("eof")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() on Linux
        self.listener.close()
        self._thread.join(WAIT_S)
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", echo.port, name="test") as fault_proxy:
        yield fault_proxy


def connect(proxy: FaultProxy) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=WAIT_S)
    sock.settimeout(WAIT_S)
    return sock


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        data = sock.recv(size - len(buf))
        if not data:
            raise EOFError(f"connection closed after {len(buf)} of {size} bytes")
        buf += data
    return bytes(buf)


def roundtrip(sock: socket.socket, payload: bytes = b"ping") -> float:
    start = time.monotonic()
    sock.sendall(payload)
    assert recv_exactly(sock, len(payload)) == payload
    return time.monotonic() - start


def assert_silent(sock: socket.socket) -> None:
    """Nothing arrives, and the connection is not closed either (no FIN, no RST)."""
    sock.settimeout(SILENCE_S)
    try:
        with pytest.raises(TimeoutError):
            sock.recv(1)
    finally:
        sock.settimeout(WAIT_S)


def test_is_a_network_faults_backend(proxy: FaultProxy) -> None:
    backend: NetworkFaults = proxy
    assert backend is proxy
    assert proxy.host == "127.0.0.1"


def test_forwards_both_ways_and_propagates_an_orderly_close(
    proxy: FaultProxy, echo: EchoServer
) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB: more than one pipe budget and many chunks
    with connect(proxy) as sock:
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        assert recv_exactly(sock, len(payload)) == payload
        sender.join()
        proxy.wait_for_connections(1)
        sock.shutdown(socket.SHUT_WR)  # FIN → proxy → echo server, which closes → FIN back
        assert sock.recv(1) == b""
    assert echo.ended.get(timeout=WAIT_S) == "eof"
    proxy.wait_for_connections(0)


def test_latency_delays_each_direction_and_keeps_order(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        assert roundtrip(sock) < 0.2
        proxy.set_latency(0.15)
        assert 0.3 <= roundtrip(sock) < 2.0  # 0.15 s out and 0.15 s back
        # Chunks sent under a long delay are not overtaken by chunks sent after it drops.
        proxy.set_latency(0.4)
        early = [f"early-{i};".encode() for i in range(20)]
        for message in early:
            sock.sendall(message)
        proxy.set_latency(0.0)
        late = [f"late-{i};".encode() for i in range(20)]
        for message in late:
            sock.sendall(message)
        expected = b"".join(early + late)
        assert recv_exactly(sock, len(expected)) == expected
        assert roundtrip(sock) < 0.2


def test_latency_does_not_cap_throughput(proxy: FaultProxy) -> None:
    proxy.set_latency(0.1)
    messages = [f"msg-{i:04d};".encode() for i in range(400)]  # many small chunks in flight
    with connect(proxy) as sock:
        start = time.monotonic()
        for message in messages:
            sock.sendall(message)
        expected = b"".join(messages)
        assert recv_exactly(sock, len(expected)) == expected
        assert time.monotonic() - start < 2.0  # pipelined, not 400 × 0.2 s


def test_throttle_limits_the_byte_rate_until_lifted(proxy: FaultProxy) -> None:
    payload = b"x" * 20_000
    with connect(proxy) as sock:
        proxy.throttle(40_000)
        elapsed = roundtrip(sock, payload)
        assert elapsed >= 0.45  # 0.5 s per direction at 40 kB/s, the two directions overlap
        proxy.throttle(None)
        assert roundtrip(sock, payload) < 0.3


def test_blackhole_holds_traffic_and_new_connections_hang_until_lifted(
    proxy: FaultProxy, echo: EchoServer
) -> None:
    with connect(proxy) as old:
        roundtrip(old)
        proxy.blackhole(True)
        old.sendall(b"held")
        assert_silent(old)
        with connect(proxy) as new:  # the connect itself succeeds: a half-open path
            new.sendall(b"hung")
            proxy.wait_for_connections(2)
            assert_silent(new)
            assert echo.accepted == 1  # the new one never reached the broker side
            proxy.blackhole(False)
            assert recv_exactly(old, 4) == b"held"  # held, not lost
            assert recv_exactly(new, 4) == b"hung"
            assert echo.accepted == 2
            roundtrip(old)
            roundtrip(new)


def test_half_open_silences_existing_connections_without_closing_them(
    proxy: FaultProxy, echo: EchoServer
) -> None:
    stale = connect(proxy)
    roundtrip(stale)
    assert proxy.half_open() == 1
    stale.sendall(b"lost")
    assert_silent(stale)  # no data, no FIN, no RST: only a keepalive can tell
    with connect(proxy) as fresh:  # new connections are unaffected
        roundtrip(fresh)
        proxy.heal()  # a half-open connection is not a broken path: healing does not revive it
        stale.sendall(b"still lost")
        assert_silent(stale)
        stale.close()
    # The fresh connection's close reaches the server; the stale one's never does.
    assert echo.ended.get(timeout=WAIT_S) == "eof"
    with pytest.raises(queue.Empty):
        echo.ended.get(timeout=SILENCE_S)
    assert proxy.connections == 1  # the stale link stays until its broker side gives up
    assert proxy.reset_all() == 1
    assert echo.ended.get(timeout=WAIT_S) == "reset"


def test_reset_all_sends_rst_both_ways(proxy: FaultProxy, echo: EchoServer) -> None:
    first, second = connect(proxy), connect(proxy)
    with first, second:
        roundtrip(first)
        roundtrip(second)
        assert proxy.reset_all() == 2
        for sock in (first, second):
            with pytest.raises(ConnectionResetError):
                sock.recv(1)
    assert [echo.ended.get(timeout=WAIT_S) for _ in range(2)] == ["reset", "reset"]
    assert proxy.connections == 0
    with connect(proxy) as again:  # the path itself is fine
        roundtrip(again)


def test_partition_refuses_and_stalls_then_heals_by_itself(proxy: FaultProxy) -> None:
    port = proxy.port
    with connect(proxy) as sock:
        roundtrip(sock)
        start = time.monotonic()
        proxy.partition(0.5)
        assert time.monotonic() - start < 0.2  # returns at once
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=WAIT_S).close()
        sock.sendall(b"across")
        assert recv_exactly(sock, 6) == b"across"  # blocks until the partition heals
        assert time.monotonic() - start >= 0.45
    assert proxy.port == port  # the device keeps its broker address
    with connect(proxy) as after:
        roundtrip(after)
    events = [event for _, event in proxy.timeline]
    assert events.index("partition for 0.500 s") < events.index("partition healed")


def test_heal_ends_every_fault_early(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        roundtrip(sock)
        proxy.set_latency(5.0)
        proxy.throttle(10)
        proxy.blackhole(True)
        proxy.partition(30.0)
        sock.sendall(b"waiting")
        assert_silent(sock)
        start = time.monotonic()
        proxy.heal()
        assert recv_exactly(sock, 7) == b"waiting"
        assert time.monotonic() - start < 1.0
        with connect(proxy) as new:
            assert roundtrip(new) < 0.2


def test_a_later_partition_replaces_the_earlier_deadline(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        roundtrip(sock)
        start = time.monotonic()
        proxy.partition(0.2)
        proxy.partition(0.6)
        sock.sendall(b"x")
        assert recv_exactly(sock, 1) == b"x"
        assert time.monotonic() - start >= 0.55


def test_an_unreachable_upstream_resets_the_device_side() -> None:
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        dead_port = placeholder.getsockname()[1]
    with FaultProxy("127.0.0.1", dead_port) as proxy:
        # The RST may even beat the client's own connect() to the finish line.
        with pytest.raises(ConnectionResetError), connect(proxy) as sock:
            sock.recv(1)
        proxy.wait_for_connections(0)
        assert any("failed" in event for _, event in proxy.timeline)


def test_timeline_records_faults_in_order_with_monotonic_times(proxy: FaultProxy) -> None:
    before = time.monotonic()
    proxy.set_latency(0.01)
    proxy.throttle(1000)
    proxy.throttle(None)
    proxy.blackhole(True)
    proxy.heal()
    timeline = proxy.timeline
    times = [stamp for stamp, _ in timeline]
    assert times == sorted(times)
    recent = [event for stamp, event in timeline if stamp >= before]
    assert recent == [
        "latency 0.010 s",
        "throttle 1000 B/s",
        "throttle off",
        "blackhole on",
        "heal",
    ]


def test_bad_arguments_are_refused_before_anything_changes(proxy: FaultProxy) -> None:
    with pytest.raises(ValueError, match="latency"):
        proxy.set_latency(-1)
    with pytest.raises(ValueError, match="throttle"):
        proxy.throttle(0)
    with pytest.raises(ValueError, match="partition"):
        proxy.partition(0)
    with pytest.raises(ValueError, match="partition"):
        proxy.partition(float("inf"))


def test_wait_for_connections_says_what_it_saw(proxy: FaultProxy) -> None:
    with pytest.raises(TimeoutError, match=r"waited 0.1 s for 3 proxied connection\(s\), saw 0"):
        proxy.wait_for_connections(3, timeout=0.1)


def test_close_stops_listening_and_controls(echo: EchoServer) -> None:
    proxy = FaultProxy("127.0.0.1", echo.port).start()
    port = proxy.port
    sock = connect(proxy)
    roundtrip(sock)
    proxy.close()
    proxy.close()  # idempotent
    with sock:
        assert sock.recv(1) == b""
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=WAIT_S).close()
    with pytest.raises(FaultProxyError, match="not running"):
        proxy.blackhole(True)
    assert echo.ended.get(timeout=WAIT_S) == "eof"
