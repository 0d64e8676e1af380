"""The test-side OTA image server: Range, a one-shot cut, throttling and how far a
download got (what the HIL OTA suite times its power cuts on)."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Iterator

import pytest

from hil.services.ota import OtaServer

IMAGE = bytes(range(256)) * 64  # 16 KiB


@pytest.fixture
def server() -> Iterator[OtaServer]:
    with OtaServer() as server:
        server.add("a.bin", IMAGE)
        yield server


def get(server: OtaServer, name: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", f"/{name}", headers=headers or {})
        response = conn.getresponse()
        try:
            return response.status, response.read()
        except http.client.IncompleteRead as exc:
            return response.status, exc.partial
    finally:
        conn.close()


def test_range_and_a_one_shot_cut(server: OtaServer) -> None:
    server.drop_next_after(1000)
    assert get(server, "a.bin") == (200, IMAGE[:1000])
    assert get(server, "a.bin", {"Range": "bytes=1000-"}) == (206, IMAGE[1000:])
    assert server.requests == [("a.bin", None), ("a.bin", "bytes=1000-")]


def test_a_cut_can_be_disarmed(server: OtaServer) -> None:
    server.drop_next_after(1000)
    server.drop_next_after(None)
    assert get(server, "a.bin") == (200, IMAGE)


def test_throttled_bodies_take_their_time_and_progress_is_awaitable(server: OtaServer) -> None:
    server.throttle(len(IMAGE) * 2)  # half a second for the whole image
    got: list[tuple[int, bytes]] = []
    started = time.monotonic()
    reader = threading.Thread(target=lambda: got.append(get(server, "a.bin")))
    reader.start()
    assert server.wait_sent("a.bin", len(IMAGE) // 4, timeout=5) < len(IMAGE)  # caught mid-body
    reader.join(10)
    assert got == [(200, IMAGE)]
    assert time.monotonic() - started >= 0.4
    server.throttle(None)
    # The last slice is counted just after the client has it: wait for it, briefly.
    assert server.wait_sent("a.bin", len(IMAGE), timeout=5) == len(IMAGE)


def test_wait_sent_says_how_far_it_got(server: OtaServer) -> None:
    with pytest.raises(TimeoutError, match=r"a\.bin: 0 of 10 bytes sent"):
        server.wait_sent("a.bin", 10, timeout=0.1)
    with pytest.raises(ValueError, match="positive byte rate"):
        server.throttle(0)
