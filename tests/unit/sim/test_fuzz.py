"""Bounded fuzzing of what a hostile local process can send the virtual board: its control
endpoint (JSON lines) and its ROM loader (SLIP on the UART). Whatever arrives, the
endpoint answers with a reply object and keeps answering, and the loader raises nothing,
keeps no more than one frame's worth of bytes, and still syncs. Bounded for CI: a few
hundred examples each, well under a minute together."""

from __future__ import annotations

import asyncio
import json
import struct
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hil.sim.control import ControlServer
from hil.sim.download import MAX_FRAME_BYTES
from hil.sim.firmware.rig import RigPeripherals
from hil.sim.flash import SpiFlash
from hil.sim.slip import slip_encode
from tests.unit.sim.download_harness import LoopbackHost, parse_reply
from tests.unit.sim.test_control_robustness import idle_board

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

COMMANDS = ["state", "power", "reset", "hold_reset", "download", "brownout", "wait_mode", "tx_log", "wait_tx",
            "sensor.get", "sensor.set", "sensor.ramp", "sensor.noise", "sensor.fault", "ap.get", "ap.set"]  # fmt: skip
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
# Requests shaped like the protocol's (a known command, plausible keys, any values), raw
# bytes, and JSON of any shape: the first find type and range holes, the others parsing ones.
SHAPED = st.fixed_dictionaries(
    {"cmd": st.sampled_from(COMMANDS)},
    optional={key: JSON_VALUES for key in ("action", "off_s", "hold", "mode", "timeout", "since", "pattern",
                                           "temperature_c", "duration_s", "fault", "active", "rssi", "up", "ssid")},
).map(lambda request: json.dumps(request).encode())  # fmt: skip
LINES = SHAPED | st.binary(max_size=300).filter(lambda b: b"\n" not in b) | JSON_VALUES.map(lambda v: json.dumps(v).encode())


@FUZZ
@given(lines=st.lists(LINES, min_size=1, max_size=5))
def test_the_control_endpoint_answers_anything_and_goes_on(tmp_path: Path, lines: list[bytes]) -> None:
    async def main() -> None:
        board = idle_board(tmp_path)
        control = ControlServer(board)
        RigPeripherals().register(control)
        try:
            for line in lines:
                # A fuzzed wait_mode may ask for up to 600 s (the endpoint's limit): the
                # test waits at most 15 s for any one reply.
                reply: Any = await asyncio.wait_for(control.answer(line), timeout=15)
                assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool), reply
                assert reply["ok"] or isinstance(reply.get("error"), str), reply
                json.dumps(reply)  # every reply can go on the wire
            state = await control.answer(b'{"cmd":"state"}')
            assert state["ok"] is True
        finally:
            await board.close()

    asyncio.run(main())


OPS = st.sampled_from([0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0D, 0x0F, 0x10, 0x11, 0x12,
                       0x13, 0x14, 0xD0, 0xD1, 0xD2, 0xD3, 0x42])  # fmt: skip
FRAMES = st.builds(
    lambda op, body, lie: slip_encode(struct.pack("<BBHI", 0, op, max(len(body) + lie, 0), 0) + body),
    OPS, st.binary(max_size=64), st.sampled_from([0, 0, 0, 1, -1]),
)
UART = st.lists(FRAMES | st.binary(max_size=200), min_size=1, max_size=8).map(b"".join)


@FUZZ
@given(data=UART)
def test_the_rom_loader_takes_anything_and_still_syncs(tmp_path: Path, data: bytes) -> None:
    host = LoopbackHost(SpiFlash(tmp_path / "flash.bin"))
    host.feed(data)
    assert len(host.session._decoder._frame) <= MAX_FRAME_BYTES + 1
    if host.session._loader.left_download_mode:
        return  # a fuzzed RUN_USER_CODE / FLASH_END(reboot) handed the chip to the app: that is the chip's right
    host.feed(b"\xc0")  # end whatever frame the fuzz left open
    replies = [parse_reply(frame) for frame in host.request(0x08, b"\x07\x07\x12\x20" + 32 * b"\x55")]
    assert replies and all(reply.op == 0x08 for reply in replies)
