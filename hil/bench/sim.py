"""``hil sim up|down|status``: virtual boards (or a fleet) in the background, for a person.

``up`` starts ``hil sim board`` processes (or one ``hil sim fleet``) detached, so they keep
running after the command returns, records them in the bench state dir (`hil.bench.state`)
and says how to attach: the serial URL (``hil monitor``, ``esptool``), the control endpoint
(``hil sensor``, ``hil power``). ``status`` lists them, alive or not; ``down`` stops them.
Each board keeps its flash in ``boards/board-N`` between ``down`` and the next ``up``, as a
real board keeps its firmware when unplugged.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hil.bench.state import (
    BenchError,
    BenchInputError,
    ProcessRecord,
    item,
    locked,
    processes,
    read_record,
    spawn_detached,
    write_record,
)
from hil.device.contract import parse_broker_uri

RECORD = "sim.json"
MAX_BOARDS = 32  # one process each; beyond that, a fleet is the tool


@dataclass(frozen=True)
class FleetRequest:
    count: int
    broker_uri: str | None = None
    credentials: Path | None = None
    config: str | None = None
    app: str | None = None
    ca_file: Path | None = None


@dataclass(frozen=True)
class SimStatus:
    """What a state dir's record says, and which of its processes still run."""

    state_dir: Path
    kind: str | None  # "boards", "fleet", or None when nothing was started here
    items: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"state_dir": str(self.state_dir), "kind": self.kind, "items": self.items}


def _record_path(directory: Path) -> Path:
    return directory / RECORD


def status(directory: Path) -> SimStatus:
    record = read_record(_record_path(directory))
    if record is None:
        return SimStatus(directory, None)
    items = []
    for entry, proc in zip(record["items"], processes(record), strict=True):
        alive = proc.alive()
        items.append({**entry, "alive": alive, "state": _liveness(entry) if alive else "stopped"})
    return SimStatus(directory, record["kind"], items)


PROBE_TIMEOUT_S = 2.0
"""How long a running board's control endpoint has to answer ``state`` before the board
counts as stalled: its event loop serves the endpoint and the serial port alike, so a loop
that does not answer in 2 s does not answer esptool either."""


def _liveness(entry: dict[str, Any]) -> str:
    """``running`` when the process answers on its control endpoint, else ``stalled``."""
    from hil.rig.virtual_board import ControlClient, VirtualBoardError

    try:
        client = ControlClient(entry["control"], timeout=PROBE_TIMEOUT_S)
        try:
            client.request("state")
        finally:
            client.close()
    except (OSError, VirtualBoardError):
        return "stalled"
    return "running"


def _clear_stale(directory: Path) -> None:
    current = status(directory)
    if current.kind is None:
        return
    if any(entry["alive"] for entry in current.items):
        alive = sum(entry["alive"] for entry in current.items)
        raise BenchInputError(
            f"{directory} already runs {alive} virtual {current.kind} process(es); "
            "run 'hil sim down' first, or give another --state-dir"
        )
    _record_path(directory).unlink()  # stale: its processes died without a 'down'


def up(directory: Path, *, count: int = 1, fleet: FleetRequest | None = None) -> SimStatus:
    """Start ``count`` boards (or a fleet) detached; record them; return their status."""
    if fleet is None and not 1 <= count <= MAX_BOARDS:
        raise BenchInputError(f"--count {count}: give 1..{MAX_BOARDS} boards (more: --fleet N)")
    if fleet is not None:
        fleet = _check_fleet(directory, fleet)
    with locked(directory):
        _clear_stale(directory)
        if fleet is not None:
            entry = _start_fleet(directory, fleet)
            write_record(_record_path(directory), {"kind": "fleet", "items": [entry]})
        else:
            entries: list[dict[str, Any]] = []
            try:
                for index in range(count):
                    entries.append(_start_board(directory, index))
            except BaseException:
                for started in entries:
                    ProcessRecord(**started["process"]).stop()
                raise
            write_record(_record_path(directory), {"kind": "boards", "items": entries})
    return status(directory)


def _start_board(directory: Path, index: int) -> dict[str, Any]:
    name = f"board-{index}"
    board_dir = directory / "boards" / name
    args = [sys.executable, "-m", "hil", "sim", "board", "--state-dir", str(board_dir)]
    proc, hello = spawn_detached(args, directory / "logs", name)
    return item(proc, hello, name=name)


def _check_fleet(directory: Path, fleet: FleetRequest) -> FleetRequest:
    """A fleet needs a broker: the one given, or the one ``hil broker up`` runs here."""
    from hil.bench import broker as bench_broker

    if fleet.broker_uri is not None:
        if parse_broker_uri(fleet.broker_uri) is None:
            raise BenchInputError(f"--broker-uri {fleet.broker_uri!r} is not mqtt://HOST:PORT or mqtts://HOST:PORT")
        return fleet
    running = bench_broker.status(directory)
    if not running.alive:
        raise BenchInputError(
            "--fleet needs a broker: give --broker-uri mqtt://HOST:PORT, or start one with "
            f"'hil broker up --fleet-accounts {fleet.count}' first"
        )
    creds_file = Path(running.record["credentials_file"])
    accounts = json.loads(creds_file.read_text())
    missing = [f"fleet-{n:04d}" for n in range(fleet.count) if f"fleet-{n:04d}" not in accounts]
    if missing and fleet.credentials is None:
        raise BenchInputError(
            f"the bench broker has no account for {missing[0]} (and {len(missing) - 1} more); "
            f"restart it with 'hil broker down && hil broker up --fleet-accounts {fleet.count}'"
        )
    return FleetRequest(
        count=fleet.count,
        broker_uri=running.record["urls"]["plain"],
        credentials=fleet.credentials or creds_file,
        config=fleet.config,
        app=fleet.app,
        ca_file=fleet.ca_file,
    )


def _start_fleet(directory: Path, fleet: FleetRequest) -> dict[str, Any]:
    assert fleet.broker_uri is not None
    args = [
        sys.executable, "-m", "hil", "sim", "fleet", "--count", str(fleet.count),
        "--state-dir", str(directory / "fleet"), "--broker-uri", fleet.broker_uri,
    ]  # fmt: skip
    for flag, value in (
        ("--credentials", fleet.credentials),
        ("--config", fleet.config),
        ("--app", fleet.app),
        ("--ca-file", fleet.ca_file),
    ):
        if value is not None:
            args += [flag, str(value)]
    proc, hello = spawn_detached(args, directory / "logs", "fleet")
    return item(proc, hello, name="fleet", broker_uri=fleet.broker_uri)


def down(directory: Path, *, purge: bool = False) -> SimStatus:
    """Stop every process ``up`` started here; drop the record (and, with ``purge``, the
    boards' flash). Returns what was stopped."""
    with locked(directory):
        stopped = status(directory)
        record = read_record(_record_path(directory))
        if record is not None:
            survivors = [entry for entry, proc in zip(record["items"], processes(record), strict=True) if not proc.stop()]
            if survivors:  # the record stays, so that status still shows them
                names = ", ".join(f"{e['name']} (pid {e['pid']})" for e in survivors)
                raise BenchError(f"{names} still running after SIGTERM and SIGKILL; see 'ps -o stat,wchan -p PID'")
            _record_path(directory).unlink()
        if purge:
            for sub in ("boards", "fleet"):
                shutil.rmtree(directory / sub, ignore_errors=True)
    return stopped


def attach_hints(entry: dict[str, Any], directory: Path) -> list[str]:
    """How a person reaches one running board (or the fleet), as commands to paste."""
    sd = f" --state-dir {directory}"
    if entry["name"] == "fleet":
        first = entry["device_ids"][0]
        return [
            f"control  {entry['control']}   (JSON lines; board commands take \"device\")",
            f"broker   {entry.get('broker_uri', '?')}",
            f"sensor   hil sensor get --device {first}{sd}",
            f"power    hil power cycle --device {first}{sd}",
        ]
    board = "" if entry["name"] == "board-0" else f" --board {entry['name'].split('-')[1]}"
    return [
        f"serial   {entry['serial']}",
        f"control  {entry['control']}",
        f"flash    hil flash --recipe baseline{board}{sd}",
        f"monitor  hil monitor --port {entry['serial']}",
        f"esptool  esptool --port {entry['serial']} chip-id",
        f"sensor   hil sensor get{board}{sd}",
        f"power    hil power cycle{board}{sd}",
    ]


def find_board(directory: Path, board: int | None = None, device: str | None = None) -> dict[str, Any]:
    """The running board (or fleet) a bench command without ``--port``/``--control`` means."""
    current = status(directory)
    if current.kind is None:
        raise BenchInputError(
            f"no virtual board is up in {directory}; run 'hil sim up' first, or give --port / --control"
        )
    if current.kind == "fleet":
        entry = current.items[0]
        if device is None:
            raise BenchInputError(
                f"{directory} runs a fleet: name the board with --device (e.g. {entry['device_ids'][0]})"
            )
        if device not in entry["device_ids"]:
            raise BenchInputError(f"--device {device!r}: not in the fleet ({entry['count']} boards, fleet-0000..)")
    else:
        index = board or 0
        if device is not None:
            raise BenchInputError("--device names a fleet board, but single boards run here; use --board N")
        if not 0 <= index < len(current.items):
            raise BenchInputError(f"--board {index}: {directory} runs board 0..{len(current.items) - 1}")
        entry = current.items[index]
    if not entry["alive"]:
        raise BenchError(f"{entry['name']} in {directory} is not running any more; 'hil sim down' then 'hil sim up'")
    return entry
