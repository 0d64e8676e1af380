"""The firmware model's MQTT link: a connection lost before CONNACK fails at once."""

from __future__ import annotations

import asyncio
import time

import aiomqtt
import pytest

from hil.sim.firmware.mqtt_link import fail_fast_before_connack


async def _reset_every_connection() -> asyncio.Server:
    """A listener that accepts and closes at once: a proxy whose broker is down."""

    def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.transport.abort()

    return await asyncio.start_server(accept, "127.0.0.1", 0)


def test_a_connection_closed_before_connack_fails_the_attempt_at_once() -> None:
    async def attempt() -> float:
        server = await _reset_every_connection()
        port = server.sockets[0].getsockname()[1]
        client = aiomqtt.Client("127.0.0.1", port, identifier="dev1", timeout=10)
        fail_fast_before_connack(client)
        started = time.monotonic()
        with pytest.raises(aiomqtt.MqttError, match="before CONNACK"):
            async with client:
                pass
        server.close()
        return time.monotonic() - started

    assert asyncio.run(attempt()) < 2.0  # not the 10 s timeout
