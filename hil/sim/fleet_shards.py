"""``hil sim fleet --processes N``: one fleet over N shard processes, with one face.

One process tops out at its event loop (bench/RESULTS.md: about 1000 boards at a reading
a second each); a host's other cores need processes of their own. The process started
(the parent) checks every input as a single fleet does and writes the shared base image
(`hil.sim.flash_store`), then starts N shards (``hil sim fleet`` again, each told its
slice with the hidden ``--shard``) and reads each one's first line. From then on it
answers for them all: one first line (the whole fleet's ids, and every shard's pid and
slice under ``shards``) and one control endpoint (``state`` merged, a board command
forwarded to the shard that runs the board). Nothing else changes for whoever uses the
fleet: the devices reach the broker as before, and one collector subscribed there sees
every shard's devices.

A shard that ends on its own takes its devices with it: the fleet is broken, not its
devices. The parent prints an event line on stdout (``{"event": "shard_died", "shard":
"shard-1", "pid": ..., "returncode": -9, "first": "fleet-0500", "last": "fleet-0999"}``),
says the same on stderr, stops the other shards and exits with `SHARD_DIED_EXIT`; a load
run (`hil.load.fleet`) reads that line and stops with an infrastructure error naming the
shard.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import urllib.parse
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from hil.processes import die_with_parent
from hil.sim.flash_store import base_image_path
from hil.sim.fleet import FLASH_SIZE, FleetOptions, FleetRouter, Shard, ShardDied, plan
from hil.sim.process import lock_state_dir

SHARD_DEVICES_MIN = 250
"""``auto`` gives a shard no fewer boards than this: at a reading a second, 250 boards
take about a fifth of a core (bench/RESULTS.md: ~1300 devices per core), less than a
process of its own costs to start and to keep (an interpreter: ~35 MiB, a second or two)."""
STOP_GRACE_S = 30.0
"""How long a stopped shard may take to close its boards before it is killed."""
REPLY_LIMIT = 64 * 1024 * 1024
"""The longest reply line read from a shard: ``state`` of thousands of boards."""


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, not the machine's count)."""
    return len(os.sched_getaffinity(0))


def auto_processes(count: int, cores: int) -> int:
    """``--processes auto``: a process per core, but none with fewer than
    `SHARD_DEVICES_MIN` boards (a small fleet stays one process)."""
    return max(1, min(cores, math.ceil(count / SHARD_DEVICES_MIN)))


def plan_shards(count: int, processes: int) -> tuple[Shard, ...]:
    """``count`` boards in ``processes`` contiguous slices whose sizes differ by at most
    one (never more slices than boards)."""
    if count < 1 or processes < 1:
        raise ValueError(f"a fleet of {count} boards over {processes} processes")
    processes = min(processes, count)
    size, extra = divmod(count, processes)
    shards: list[Shard] = []
    start = 0
    for index in range(processes):
        stop = start + size + (1 if index < extra else 0)
        shards.append(Shard(index, start, stop))
        start = stop
    return tuple(shards)


def shard_command(options: FleetOptions, shard: Shard) -> list[str]:
    """``hil sim fleet`` for one shard: the parent's options and the shard's slice."""
    command = [
        sys.executable, "-m", "hil", "sim", "fleet",
        "--count", str(options.count),
        "--state-dir", str(options.state_dir),
        "--broker-uri", options.broker_uri,
        "--config", json.dumps(dict(options.config)),
        "--shard", f"{shard.index}:{shard.start}:{shard.stop}",
    ]  # fmt: skip
    if options.credentials is not None:
        command += ["--credentials", str(options.credentials)]
    if options.app is not None:
        command += ["--app", options.app]
    if options.ca_file is not None:
        command += ["--ca-file", str(options.ca_file)]
    if options.ota_pubkey is not None:
        command += ["--ota-pubkey", str(options.ota_pubkey)]
    return command


async def spawn_shard(command: Sequence[str]) -> asyncio.subprocess.Process:
    """A shard process, its stdout read with `REPLY_LIMIT`: its first line names every
    device id it runs (5000 of them are ~75 KiB, past asyncio's 64 KiB default)."""
    return await asyncio.create_subprocess_exec(
        *command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        preexec_fn=die_with_parent,  # its own session: only this process stops it
        limit=REPLY_LIMIT,
    )


def parse_shard(text: str, count: int) -> Shard:
    """The hidden ``--shard INDEX:START:STOP``; ValueError when it does not fit ``count``."""
    index, start, stop = (int(part) for part in text.split(":"))
    if not (index >= 0 and 0 <= start < stop <= count):
        raise ValueError(f"--shard {text}: not a slice of {count} boards")
    return Shard(index, start, stop)


class ShardLink:
    """A client of one shard's control endpoint: one connection, one request at a time."""

    def __init__(self, url: str) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.port is None:
            raise ValueError(f"control URL {url!r} has no port")
        self.port = parsed.port
        token_file = urllib.parse.parse_qs(parsed.query).get("token_file", [None])[0]
        self._token = Path(token_file).read_text().strip() if token_file else None
        self._lock = asyncio.Lock()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(self, request: dict[str, Any]) -> dict[str, Any]:
        line = json.dumps({**request, "token": self._token} if self._token else request).encode() + b"\n"
        async with self._lock:
            for attempt in range(2):  # once more on a fresh connection: the old one may be stale
                try:
                    if self._reader is None or self._writer is None:
                        self._reader, self._writer = await asyncio.open_connection(
                            "127.0.0.1", self.port, limit=REPLY_LIMIT
                        )
                    self._writer.write(line)
                    await self._writer.drain()
                    reply = await self._reader.readline()
                    if not reply:
                        raise ConnectionError("the shard closed the connection")
                    answer = json.loads(reply)
                    if not isinstance(answer, dict):
                        raise ConnectionError(f"the shard answered {reply[:200]!r}")
                    return answer
                except (ConnectionError, OSError, ValueError):
                    await self.close()
                    if attempt:
                        raise
        raise AssertionError("unreachable")

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()


class RunningShard:
    """A shard process: its slice, its process, and (once up) its first line and link."""

    def __init__(self, shard: Shard, ids: Sequence[str], proc: asyncio.subprocess.Process) -> None:
        self.shard = shard
        self.ids = ids
        self.proc = proc
        self.record: dict[str, Any] = {}
        self.link: ShardLink | None = None

    def describe(self) -> str:
        first, last = self.ids[self.shard.start], self.ids[self.shard.stop - 1]
        return f"{self.shard.name} (pid {self.proc.pid}, {self.shard.stop - self.shard.start} boards {first}..{last})"

    async def up(self) -> None:
        """Its first line read, its control endpoint linked; ShardDied if it ended first."""
        assert self.proc.stdout is not None
        line = await self.proc.stdout.readline()
        if not line:
            code = await self.proc.wait()
            raise ShardDied(f"{self.describe()} exited ({code}) before its boards were up; its error is above")
        hello = json.loads(line)
        self.record = hello["shards"][0]
        self.link = ShardLink(hello["control"])

    def death(self, code: int) -> dict[str, Any]:
        """The event line for a shard that ended on its own."""
        return {
            "event": "shard_died",
            "shard": self.shard.name,
            "pid": self.proc.pid,
            "returncode": code,
            "first": self.ids[self.shard.start],
            "last": self.ids[self.shard.stop - 1],
        }

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after `STOP_GRACE_S`; the shard's own session goes too."""
        if self.link is not None:
            await self.link.close()
        if self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), STOP_GRACE_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()


class ShardedControl(FleetRouter):
    """The fleet's one control endpoint over its shards': ``state`` merged, board commands
    forwarded to the shard that runs the board."""

    def __init__(self, shards: Sequence[RunningShard], ids: Sequence[str]) -> None:
        super().__init__()
        self._shards = shards
        self._owner = {device: running for running in shards for device in ids[running.shard.start : running.shard.stop]}

    async def to_device(self, device: str, request: dict[str, Any]) -> dict[str, Any] | None:
        owner = self._owner.get(device)
        return None if owner is None else await self._ask(owner, request)

    def device_count(self) -> int:
        return len(self._owner)

    async def _ask(self, running: RunningShard, request: dict[str, Any]) -> dict[str, Any]:
        if running.link is None or running.proc.returncode is not None:
            return {"ok": False, "error": f"{running.describe()} is not running"}
        try:
            return await running.link.request(request)
        except (ConnectionError, OSError, ValueError) as exc:
            return {"ok": False, "error": f"{running.describe()} does not answer: {exc}"}

    async def fleet_state(self) -> dict[str, Any]:
        replies = await asyncio.gather(*(self._ask(r, {"cmd": "state"}) for r in self._shards))
        for reply in replies:
            if not reply.get("ok"):
                return reply
        boards = [board for reply in replies for board in reply["state"]["boards"]]
        shards = [
            {**running.record, "alive": running.proc.returncode is None, "modes": reply["state"]["modes"]}
            for running, reply in zip(self._shards, replies, strict=True)
        ]
        modes = Counter(board["mode"] for board in boards)
        return {"ok": True, "state": {"count": len(boards), "modes": dict(modes), "boards": boards, "shards": shards}}


async def serve_sharded(options: FleetOptions, processes: int, *, out: IO[str]) -> None:
    """Run the fleet over ``processes`` shards until SIGTERM/SIGINT; ShardDied when one
    of them ends on its own (after the event line, with the others stopped)."""
    checked = plan(options, keep=range(0))  # every input checked; each shard builds its own NVS
    ids = checked.device_ids
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    options.state_dir.mkdir(parents=True, exist_ok=True)
    lock = lock_state_dir(options.state_dir)
    running: list[RunningShard] = []
    control: ShardedControl | None = None
    stopping = loop.create_task(stop.wait())
    try:
        base_image_path(options.state_dir, FLASH_SIZE, checked.images)  # once, before the shards look for it
        for shard in plan_shards(options.count, processes):
            proc = await spawn_shard(shard_command(options, shard))
            running.append(RunningShard(shard, ids, proc))
        starting = loop.create_task(_all_up(running))
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            return
        starting.result()  # ShardDied, if one ended before it was up

        control = ShardedControl(running, ids)
        control.require_token(options.state_dir)
        await control.start()
        hello = {
            "pid": os.getpid(),
            "count": options.count,
            "device_ids": list(ids),
            "state_dir": str(options.state_dir.resolve()),
            "control": control.url,
            "shards": [r.record for r in running],
        }
        out.write(json.dumps(hello) + "\n")
        out.flush()

        ended = {loop.create_task(r.proc.wait()): r for r in running}
        done, _ = await asyncio.wait({stopping, *ended}, return_when=asyncio.FIRST_COMPLETED)
        for task in ended:
            task.cancel()
        dead = [ended[task] for task in done if task in ended]
        if dead and not stop.is_set():
            first = dead[0]
            code = first.proc.returncode if first.proc.returncode is not None else -1
            out.write(json.dumps(first.death(code)) + "\n")
            out.flush()
            raise ShardDied(
                f"{first.describe()} died (exit {code}): the fleet is broken; its other shards are stopped"
            )
    finally:
        stopping.cancel()
        if control is not None:
            await control.close()
        await asyncio.gather(*(r.stop() for r in running), return_exceptions=True)
        lock.close()


async def _all_up(running: Sequence[RunningShard]) -> None:
    await asyncio.gather(*(r.up() for r in running))

