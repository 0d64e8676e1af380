"""The chip's TCP connections when the chip stops (`hil.sim.sockets`): on a silent board
they are abandoned, never closed or written, until the peer closes its side or the
bound runs out; on the default board nothing changes. Real loopback TCP: what the peer
receives (data, EOF) is what a broker would see."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable, Iterator

import pytest

import hil.sim.sockets as sockets_module
from hil.sim.sockets import ChipSockets

Scenario = Callable[[socket.socket, socket.socket], Awaitable[None]]


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(the chip's connection, the broker's end of it) over loopback TCP."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        chip = socket.create_connection(listener.getsockname())
        peer, _ = listener.accept()
    chip.setblocking(False)
    peer.settimeout(0.3)
    try:
        yield chip, peer
    finally:
        for sock in (chip, peer):
            with contextlib.suppress(OSError):
                sock.close()


def _nothing_arrives(peer: socket.socket) -> None:
    """Neither data nor EOF (which ``recv`` would return as b"") within the timeout."""
    with pytest.raises(TimeoutError):
        peer.recv(100)


def _eof(peer: socket.socket, *, within: float = 2.0) -> None:
    peer.settimeout(within)
    assert peer.recv(100) == b""


def test_a_silent_board_abandons_its_connection_and_the_client_can_no_longer_reach_it(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    chip, peer = pair

    async def scenario() -> ChipSockets:
        sockets = ChipSockets(silent=True)
        sockets.chip_stopped()  # a boot: generation 1
        assert sockets.track(chip, generation=sockets.generation, keepalive_s=15)
        chip.send(b"alive")
        sockets.chip_stopped()  # power cut
        assert sockets.abandoned == 1 and sockets.held == 1
        # Whatever the client does now goes into the void, not to the broker: its writes
        # succeed (a dead link swallows them too), its shutdown and close reach nothing.
        assert chip.send(b"PINGREQ") == 7
        chip.shutdown(socket.SHUT_RDWR)
        chip.close()
        await asyncio.sleep(0.05)
        assert not sockets._voids  # the void's far end let go once the client closed its end
        assert sockets.held == 1  # the connection itself is still held
        return sockets

    sockets = asyncio.run(scenario())
    assert peer.recv(100) == b"alive"
    _nothing_arrives(peer)  # no PINGREQ, no FIN, no RST
    sockets.close()


def test_the_kept_connection_is_let_go_once_the_peer_closes_its_side(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    chip, peer = pair

    async def scenario() -> None:
        sockets = ChipSockets(silent=True)
        sockets.chip_stopped()
        sockets.track(chip, generation=sockets.generation, keepalive_s=15)
        sockets.chip_stopped()
        peer.sendall(b"PUBLISH to a dead chip")  # drained and dropped, never answered
        await asyncio.sleep(0.1)
        assert sockets.held == 1
        peer.close()  # the broker gave up on it (after 1.5 x keepalive)
        for _ in range(50):
            await asyncio.sleep(0.02)
            if sockets.held == 0:
                break
        assert sockets.held == 0

    asyncio.run(scenario())


def test_a_connection_whose_peer_never_closes_is_closed_after_the_bound(
    pair: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    chip, peer = pair
    monkeypatch.setattr(sockets_module, "ABANDONED_SOCKET_BOUND_EXTRA_S", 0.2)

    async def scenario() -> None:
        sockets = ChipSockets(silent=True)
        sockets.chip_stopped()
        sockets.track(chip, generation=sockets.generation, keepalive_s=0.05)
        sockets.chip_stopped()
        await asyncio.sleep(0.1)
        assert sockets.held == 1
        await asyncio.sleep(0.3)  # 2 x 0.05 + 0.2
        assert sockets.held == 0

    asyncio.run(scenario())
    _eof(peer)  # closed at the bound: a FIN then, never data


def test_a_connect_that_finishes_after_the_reset_is_abandoned_at_once(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    chip, _peer = pair

    async def scenario() -> None:
        sockets = ChipSockets(silent=True)
        sockets.chip_stopped()
        opened_for = sockets.generation
        sockets.chip_stopped()  # reset while the executor thread was still connecting
        tracked = await asyncio.to_thread(sockets.track, chip, generation=opened_for, keepalive_s=15)
        assert not tracked  # the caller must not use it
        await asyncio.sleep(0.05)
        assert sockets.abandoned == 1 and sockets.held == 1
        chip.close()
        sockets.close()

    asyncio.run(scenario())


def test_a_lost_link_is_silent_on_a_silent_board_only(pair: tuple[socket.socket, socket.socket]) -> None:
    chip, peer = pair

    async def scenario() -> None:
        loud = ChipSockets(silent=False)
        assert not loud.lose(chip)  # the caller shuts it down as before
        silent = ChipSockets(silent=True)
        silent.chip_stopped()
        assert not silent.lose(chip)  # not tracked: not the chip's to abandon
        silent.track(chip, generation=silent.generation, keepalive_s=15)
        assert silent.lose(chip)
        assert silent.held == 1
        chip.close()
        silent.close()

    asyncio.run(scenario())
    _eof(peer)  # the board process let it go (its end): only then


def test_the_default_board_leaves_its_connections_to_the_firmware(pair: tuple[socket.socket, socket.socket]) -> None:
    chip, peer = pair

    async def scenario() -> None:
        sockets = ChipSockets(silent=False)
        sockets.chip_stopped()
        sockets.track(chip, generation=sockets.generation, keepalive_s=15)
        sockets.chip_stopped()
        await asyncio.sleep(0.05)
        assert sockets.abandoned == 0 and sockets.held == 0
        chip.send(b"still mine")
        chip.close()  # the firmware's teardown: the broker sees it at once

    asyncio.run(scenario())
    assert peer.recv(100) == b"still mine"
    _eof(peer)
