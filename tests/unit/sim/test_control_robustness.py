"""The virtual board's control endpoint answers every request, over a real TCP connection,
and stays up: garbage, non-UTF-8, over-long lines, wrong types, non-finite numbers and a
pattern with catastrophic backtracking each get an error reply naming the problem, and the
same connection then still answers. Nothing leaves the board off."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from hil.sim.app import AppContext
from hil.sim.board import Board
from hil.sim.control import MAX_LINE_BYTES, ControlServer
from hil.sim.firmware.rig import RigPeripherals
from hil.sim.flash import SpiFlash
from hil.sim.registers import ChipIdentity, parse_mac

REDOS = r"(?:.|\n)*(?:.|\n)*(?:.|\n)*QQZQ"


class _Idle:
    async def run(self, ctx: AppContext) -> None:
        await asyncio.Event().wait()


def idle_board(directory: Path) -> Board:
    """A board whose app does nothing, its UART output dropped: the endpoint under test is
    all that runs (also used by tests/unit/sim/test_fuzz.py)."""
    board = Board(flash=SpiFlash(directory / "flash.bin"), identity=ChipIdentity(mac=parse_mac("58:cf:79:01:02:03")),
                  app_factory=lambda behaviour: _Idle())  # fmt: skip
    board.attach_uart(lambda data: None)
    return board


Client = Callable[[bytes], Awaitable[dict[str, Any]]]


def serve(tmp_path: Path, scenario: Callable[[Board, Client], Awaitable[None]]) -> None:
    """A board with its control endpoint (and the rig's sensor and AP commands) on a
    loopback port; ``scenario`` talks to it over one connection, line by line."""

    async def main() -> None:
        board = idle_board(tmp_path)
        control = ControlServer(board)
        RigPeripherals().register(control)
        await control.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", control.port, limit=2**20)

        async def send(raw: bytes) -> dict[str, Any]:
            writer.write(raw if raw.endswith(b"\n") else raw + b"\n")
            await writer.drain()
            reply: dict[str, Any] = json.loads(await asyncio.wait_for(reader.readline(), 10))
            return reply

        try:
            board.power(True)
            await scenario(board, send)
        finally:
            writer.close()
            await control.close()
            await board.close()

    asyncio.run(main())


async def still_answers(send: Client) -> None:
    reply = await send(b'{"cmd":"state"}')
    assert reply["ok"] is True and reply["state"]["powered"] is True, reply


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"\x00\xff\xfe garbage", "not UTF-8"),
        (b"\xc3\x28", "not UTF-8"),
        (b"{not json", "not JSON"),
        (b"[1, 2]", 'JSON object with a string "cmd"'),
        (b'{"cmd": 5}', 'JSON object with a string "cmd"'),
        (b'{"cmd": "fly"}', "unknown command 'fly'"),
        (b'{"cmd":"power","action":"cycle","off_s":"abc"}', "off_s must be a finite number"),
        (b'{"cmd":"power","action":"cycle","off_s":Infinity}', "off_s must be a finite number"),
        (b'{"cmd":"power","action":"cycle","off_s":NaN}', "off_s must be a finite number"),
        (b'{"cmd":"power","action":"cycle","off_s":-5}', "off_s must be in [0, 600]"),
        (b'{"cmd":"power","action":"cycle","off_s":true}', "off_s must be a finite number"),
        (b'{"cmd":"wait_mode","mode":"app","timeout":"x"}', "timeout must be a finite number"),
        (b'{"cmd":"wait_tx","pattern":"x","timeout":1e309}', "timeout must be a finite number"),
        (b'{"cmd":"wait_tx","pattern":"x","since":"0"}', 'wait_tx needs "pattern"'),
        (b'{"cmd":"wait_tx","pattern":"(unclosed"}', "bad pattern"),
        (b'{"cmd":"tx_log","since":"0"}', "tx_log needs"),
        (b'{"cmd":"sensor.ramp","temperature_c":30,"duration_s":NaN}', "duration_s must be a finite number"),
        (b'{"cmd":"sensor.ramp","temperature_c":30,"duration_s":Infinity}', "duration_s must be a finite number"),
        (b'{"cmd":"sensor.ramp","temperature_c":30,"duration_s":0}', "duration_s > 0"),
        (b'{"cmd":"sensor.ramp","temperature_c":30}', "needs duration_s"),
        (b'{"cmd":"sensor.set","temperature_c":NaN}', "temperature_c must be a finite number"),
        (b'{"cmd":"sensor.noise","temperature_c":Infinity}', "must be a finite number"),
        (b'{"cmd":"sensor.fault","fault":"melted"}', "sensor.fault needs"),
        (b'{"cmd":"ap.set","rssi":"loud"}', "rssi must be int"),
        (b'{"cmd":"hold_reset","hold":"yes"}', "hold_reset needs"),
    ],
    ids=lambda value: value.decode("utf-8", "replace")[:50] if isinstance(value, bytes) else None,
)
def test_a_bad_request_gets_an_error_reply_and_changes_nothing(tmp_path: Path, raw: bytes, error: str) -> None:
    async def scenario(board: Board, send: Client) -> None:
        before = board.state()
        reply = await send(raw)
        assert reply["ok"] is False and error in reply["error"], reply
        assert board.state()["powered"] is True and board.state()["boots"] == before["boots"]
        await still_answers(send)

    serve(tmp_path, scenario)


@pytest.mark.parametrize("size", [MAX_LINE_BYTES + 1, 10 * 2**20], ids=["64KiB+1", "10MiB"])
def test_an_over_long_line_is_refused_and_the_connection_goes_on(tmp_path: Path, size: int) -> None:
    async def scenario(board: Board, send: Client) -> None:
        reply = await send(b'{"cmd":"state","pad":"' + b"x" * size + b'"}')
        assert reply == {"ok": False, "error": f"request line over {MAX_LINE_BYTES} bytes: refused"}
        await still_answers(send)

    serve(tmp_path, scenario)


@pytest.mark.parametrize("pattern", [r"(x+x+)+y", r"(x|xx)+y"])
def test_a_catastrophic_pattern_is_refused_within_two_seconds(tmp_path: Path, pattern: str) -> None:
    async def scenario(board: Board, send: Client) -> None:
        board.log("I", "app", "x" * 3000)  # something for the pattern to backtrack over
        start = time.monotonic()
        reply = await send(json.dumps({"cmd": "wait_tx", "pattern": pattern, "timeout": 5}).encode())
        assert time.monotonic() - start < 2.0
        assert reply["ok"] is False and "catastrophic backtracking" in reply["error"], reply
        await still_answers(send)

    serve(tmp_path, scenario)


def test_the_pattern_that_froze_the_board_is_a_plain_wait_now(tmp_path: Path) -> None:
    """With ``re`` this pattern took 7 s on 300 bytes and the loop with it; the matcher
    now fails it fast, so it is an ordinary wait that ends at its timeout."""

    async def scenario(board: Board, send: Client) -> None:
        board.log("I", "app", "x" * 3000)
        start = time.monotonic()
        reply = await send(json.dumps({"cmd": "wait_tx", "pattern": REDOS, "timeout": 1}).encode())
        assert time.monotonic() - start < 2.0
        assert reply["ok"] is False and "no match" in reply["error"], reply
        await still_answers(send)

    serve(tmp_path, scenario)


def test_a_power_cycle_ends_powered_and_a_good_pattern_still_matches(tmp_path: Path) -> None:
    async def scenario(board: Board, send: Client) -> None:
        reply = await send(b'{"cmd":"power","action":"cycle","off_s":0.05}')
        assert reply["ok"] is True and reply["state"]["powered"] is True
        board.log("I", "app", "hello 42")
        reply = await send(b'{"cmd":"wait_tx","pattern":"hello (\\\\d+)","timeout":2}')
        assert reply["ok"] is True and reply["match"] == "hello 42", reply

    serve(tmp_path, scenario)


# -- the per-board token ------------------------------------------------------------------
def test_without_the_boards_token_nothing_is_done(tmp_path: Path) -> None:
    import stat

    from hil.rig.virtual_board import ControlClient, VirtualBoardError

    async def main() -> None:
        board = idle_board(tmp_path)
        board.power(True)
        control = ControlServer(board)
        control.require_token(tmp_path)
        await control.start()
        try:
            assert control.token_file is not None
            assert stat.S_IMODE(control.token_file.stat().st_mode) == 0o600
            assert control.url.startswith(f"tcp://127.0.0.1:{control.port}?token_file=")
            assert control.token is not None and control.token not in control.url
            bare = f"tcp://127.0.0.1:{control.port}"
            for request in ({"cmd": "power", "action": "off"}, {"cmd": "power", "action": "off", "token": "0" * 32},
                            {"cmd": "power", "action": "off", "token": 5}):  # fmt: skip
                reply = await control.answer(json.dumps(request).encode())
                assert reply["ok"] is False and reply["error"].startswith("unauthorized"), reply
            assert board.state()["powered"] is True
            with pytest.raises(VirtualBoardError, match="unauthorized"):
                await asyncio.to_thread(ControlClient(bare, timeout=5).request, "power", action="off")
            assert board.state()["powered"] is True
            # The URL as the board prints it carries the way to the token: clients just work.
            state = await asyncio.to_thread(ControlClient(control.url, timeout=5).state)
            assert state["powered"] is True
            reply = await control.answer(json.dumps({"cmd": "sensor.noise", "token": control.token}).encode())
            assert "unknown command" in reply["error"]  # the token is not passed on as a field
        finally:
            await control.close()
            await board.close()

    asyncio.run(main())


def test_a_token_file_that_is_a_symlink_is_not_written_through(tmp_path: Path) -> None:
    from hil.sim.control import TOKEN_FILE, write_token

    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / TOKEN_FILE).symlink_to(victim)
    token, path = write_token(tmp_path)  # the stale link is removed, a plain file made
    assert victim.read_text() == "keep" and not path.is_symlink() and path.read_text().strip() == token


def test_a_client_without_access_to_the_token_file_says_so(tmp_path: Path) -> None:
    from hil.rig.virtual_board import ControlClient, VirtualBoardError

    with pytest.raises(VirtualBoardError, match=r"cannot read its token file .* share it"):
        ControlClient(f"tcp://127.0.0.1:9?token_file={tmp_path / 'nope'}")
