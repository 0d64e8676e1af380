"""The load run's view of the fleet process: its event lines, a broken fleet as
infrastructure, and its memory summed over its processes."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import pytest

from hil.errors import classify
from hil.load.errors import FleetBroken, LoadError, LoadUnsupported
from hil.load.fleet import FleetProcess, mapped_rss

WAIT_S = 10.0  # a child python printing two lines; generous for a loaded machine


def fake_fleet(tmp_path: Path, script: str) -> FleetProcess:
    """A FleetProcess whose child is ``script`` (a stand-in printing what the fleet prints)."""
    fleet = FleetProcess([], tmp_path / "fleet.log", count=1)
    fleet.args = [sys.executable, "-c", script]
    return fleet


def hello_line(state_dir: Path) -> str:
    hello = {
        "pid": 0, "count": 2, "device_ids": ["fleet-0000", "fleet-0001"], "state_dir": str(state_dir),
        "control": "tcp://127.0.0.1:1", "shards": [],
    }  # fmt: skip
    return json.dumps(hello)


def watch(fleet: FleetProcess) -> tuple[list[FleetBroken], threading.Event]:
    seen: list[FleetBroken] = []
    arrived = threading.Event()

    def on_broken(exc: FleetBroken) -> None:
        seen.append(exc)
        arrived.set()

    fleet.when_broken(on_broken)
    return seen, arrived


def test_the_load_errors_are_infrastructure() -> None:
    for error in (LoadError("x"), FleetBroken("x"), LoadUnsupported("x")):
        assert classify(error) == "infrastructure"


def test_a_dead_shard_event_breaks_the_fleet_naming_the_shard(tmp_path: Path) -> None:
    died = {"event": "shard_died", "shard": "shard-1", "pid": 4242, "returncode": -9, "first": "fleet-0001", "last": "fleet-0001"}
    script = f"import sys, time\nprint({hello_line(tmp_path)!r}, flush=True)\nprint({json.dumps(died)!r}, flush=True)\ntime.sleep(60)\n"
    with fake_fleet(tmp_path, script) as fleet:
        seen, arrived = watch(fleet)
        assert arrived.wait(WAIT_S)
        assert fleet.broken is seen[0]
        assert "fleet shard shard-1 (pid 4242, devices fleet-0001..fleet-0001) died (exit -9)" in str(seen[0])
    assert len(seen) == 1  # stopping it afterwards is not a second break


def test_a_fleet_that_ends_on_its_own_breaks_the_run(tmp_path: Path) -> None:
    script = f"import sys\nprint({hello_line(tmp_path)!r}, flush=True)\nsys.exit(5)\n"
    with fake_fleet(tmp_path, script) as fleet:
        seen, arrived = watch(fleet)  # after the break happened: called at once
        assert arrived.wait(WAIT_S)
        assert "exited (5) during the run" in str(seen[0])


def test_a_fleet_stopped_by_the_run_is_not_broken(tmp_path: Path) -> None:
    script = f"import time\nprint({hello_line(tmp_path)!r}, flush=True)\ntime.sleep(60)\n"
    fleet = fake_fleet(tmp_path, script).start()
    seen, _ = watch(fleet)
    fleet.stop()  # returns once the event thread has seen the end of the output
    assert seen == [] and fleet.broken is None


def test_memory_sums_the_fleet_processes_and_finds_its_flash_mappings(tmp_path: Path) -> None:
    script = (
        "import mmap, time\n"
        f"f = open({str(tmp_path / 'state' / 'fleet-0000' / 'flash.overlay')!r}, 'r+b')\n"
        "m = mmap.mmap(f.fileno(), 65536)\n"
        "m[0:65536] = b'x' * 65536\n"  # 16 pages resident
        f"print({hello_line(tmp_path / 'state')!r}, flush=True)\n"
        "time.sleep(60)\n"
    )
    (tmp_path / "state" / "fleet-0000").mkdir(parents=True)
    (tmp_path / "state" / "fleet-0000" / "flash.overlay").write_bytes(b"\0" * 65536)
    with fake_fleet(tmp_path, script) as fleet:
        memory = fleet.memory()
    assert memory["FlashPages"] == 65536
    assert memory["Processes"] == 1 and memory["RssAnon"] > 0
    assert memory["AnonBeforeBoards"] == memory["RssAnon"]  # no shard named: all of it is per process


def test_mapped_rss_counts_only_mappings_under_the_prefix(tmp_path: Path) -> None:
    smaps = tmp_path / "smaps"
    smaps.write_text(
        "7f00-7f10 r--s 00000000 08:01 12 /state/flash-base-1.bin\n"
        "Size:                 64 kB\n"
        "Rss:                  12 kB\n"
        "7f10-7f20 rw-s 00000000 08:01 13 /state/fleet-0000/flash.overlay\n"
        "Rss:                   8 kB\n"
        "VmFlags: rd sh mr mw me ms sd\n"
        "7f20-7f30 rw-p 00000000 00:00 0 \n"
        "Rss:                 100 kB\n"
        "7f30-7f40 r-xp 00000000 08:01 14 /usr/lib/libc.so.6\n"
        "Rss:                 200 kB\n"
    )
    assert mapped_rss(smaps, "/state/") == 20 * 1024
    assert mapped_rss(smaps, "/nowhere/") == 0


@pytest.mark.parametrize("code", [0, 3])
def test_the_fleet_exit_code_is_returned_by_stop(tmp_path: Path, code: int) -> None:
    script = f"import signal, sys\nsignal.signal(signal.SIGTERM, lambda *_: sys.exit({code}))\nprint({hello_line(tmp_path)!r}, flush=True)\nsignal.pause()\n"
    fleet = fake_fleet(tmp_path, script).start()
    assert fleet.stop() == code


def test_shards_left_behind_by_the_fleet_process_are_ended_and_nothing_else(tmp_path: Path) -> None:
    import signal
    import subprocess

    from hil.load.fleet import stop_orphaned_shards

    ready = "import signal, sys, time; {}; sys.stdout.write('up\\n'); sys.stdout.flush(); time.sleep(60)"
    shard_args = ["hil", "sim", "fleet", "--shard", "0:0:1"]
    polite = subprocess.Popen([sys.executable, "-c", ready.format("pass"), *shard_args], stdout=subprocess.PIPE)
    stubborn = subprocess.Popen(  # busy when its SIGTERM comes: it does not act on it
        [sys.executable, "-c", ready.format("signal.signal(signal.SIGTERM, signal.SIG_IGN)"), *shard_args],
        stdout=subprocess.PIPE,
    )
    bystander = subprocess.Popen([sys.executable, "-c", ready.format("pass")], stdout=subprocess.PIPE)
    try:
        for proc in (polite, stubborn, bystander):
            assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
        shards = [{"pid": polite.pid}, {"pid": stubborn.pid}, {"pid": bystander.pid}, {"pid": 0}]
        assert stop_orphaned_shards(shards, grace_s=1.0) == [polite.pid, stubborn.pid]
        assert polite.wait(WAIT_S) == -signal.SIGTERM
        assert stubborn.wait(WAIT_S) == -signal.SIGKILL
        assert bystander.poll() is None  # not a shard: left alone
        assert stop_orphaned_shards([{"pid": polite.pid}]) == []  # gone (a zombie until reaped): nothing to do
    finally:
        for proc in (polite, stubborn, bystander):
            proc.kill()
            proc.wait()


def test_stopping_the_fleet_ends_a_shard_it_left_behind(tmp_path: Path) -> None:
    import os

    # The stand-in fleet starts a "shard" in a session of its own (out of reach of the
    # group's SIGTERM, as a real shard is) that outlives it, and names it on its first line.
    script = (
        "import json, os, subprocess, sys, time\n"
        "shard = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', 'fleet', '--shard', '0:0:1'],"
        " start_new_session=True, stdout=subprocess.DEVNULL)\n"
        "print(json.dumps({'pid': os.getpid(), 'shards': [{'name': 'shard-0', 'pid': shard.pid}]}), flush=True)\n"
        "time.sleep(60)\n"
    )
    import contextlib
    import signal

    fleet = fake_fleet(tmp_path, script)
    fleet.start()
    shard = int(fleet.shards[0]["pid"])
    try:
        assert os.path.exists(f"/proc/{shard}")
        fleet.stop()
        alive = os.path.exists(f"/proc/{shard}")
        state = Path(f"/proc/{shard}/stat").read_text().rsplit(")", 1)[1].split()[0] if alive else "gone"
        assert state in ("gone", "Z"), f"the shard (pid {shard}) outlived the fleet: state {state}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(shard, signal.SIGKILL)
