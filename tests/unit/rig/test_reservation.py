"""Reservation: OS file locks per rig, holder records, stale locks of dead holders, and
how many xdist workers ``-n auto`` starts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hil.rig.errors import NoRigAvailable, UnknownRig
from hil.rig.reservation import (
    Holder,
    Reservation,
    auto_workers,
    default_lock_dir,
    reserve,
    who_holds,
)
from hil.rig.rigfile import load_rigs

REPO = Path(__file__).resolve().parents[3]


def test_reserve_takes_the_first_free_rig_and_release_gives_it_back(
    inventory: Path, lock_dir: Path
) -> None:
    rigs = load_rigs(inventory)
    first = reserve(rigs)
    second = reserve(rigs)
    assert (first.rig.name, second.rig.name) == ("virtual-0", "virtual-1")
    with pytest.raises(NoRigAvailable) as caught:
        reserve(rigs)
    message = str(caught.value)
    assert f"virtual-0 held by pid {os.getpid()}" in message and "virtual-1 held by" in message
    assert str(lock_dir) in message
    first.release()
    first.release()  # idempotent
    assert first.released and who_holds("virtual-0") is None
    with reserve(rigs) as again:
        assert again.rig.name == "virtual-0"
    assert again.released
    second.release()


def test_the_holder_is_recorded_with_worker_and_ci_job(
    inventory: Path, lock_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw3")
    monkeypatch.setenv("CI_JOB_ID", "4242")
    with reserve(load_rigs(inventory), tag="bench") as held:
        holder = who_holds(held.rig)
        assert holder == held.holder
        assert (holder.pid, holder.worker, holder.ci_job) == (os.getpid(), "gw3", "4242")
        assert "xdist worker gw3, CI job 4242" in holder.describe()
        assert (lock_dir / "bench-1.holder.json").exists()
    assert not (lock_dir / "bench-1.holder.json").exists()


def test_holder_records_round_trip_and_name_the_ci_job() -> None:
    env = {
        "GITHUB_RUN_ID": "77",
        "GITHUB_REPOSITORY": "acme/fw",
        "GITHUB_JOB": "hil",
        "PYTEST_XDIST_WORKER": "gw1",
    }
    holder = Holder.current(env)
    assert holder.ci_job == "https://github.com/acme/fw/actions/runs/77 (hil)"
    assert holder.worker == "gw1" and holder.pid == os.getpid()
    assert Holder.from_json(holder.to_json()) == holder
    assert "unrecorded" in Holder.unrecorded().describe()


def test_lock_directory_default_and_override(tmp_path: Path) -> None:
    assert default_lock_dir({}) == Path("~/.cache/hil/locks").expanduser()
    assert default_lock_dir({"HIL_LOCK_DIR": str(tmp_path)}) == tmp_path
    assert Reservation(tmp_path).lock_file("virtual-0") == tmp_path / "virtual-0.lock"


HOLDER_SCRIPT = """
import sys
from hil.rig.reservation import reserve
from hil.rig.rigfile import load_rigs
held = reserve(load_rigs(sys.argv[1]), name=sys.argv[2])
print(held.rig.name, flush=True)
sys.stdin.readline()
held.release()
"""


def start_holder(inventory: Path, lock_dir: Path, name: str) -> tuple[subprocess.Popen[str], str]:
    env = {
        **os.environ,
        "HIL_LOCK_DIR": str(lock_dir),
        "PYTEST_XDIST_WORKER": "gw7",
        "CI_JOB_ID": "999",
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER_SCRIPT, str(inventory), name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    assert proc.stdout is not None
    held = proc.stdout.readline().strip()  # blocks until the child holds the lock
    assert held, f"holder process exited with {proc.wait()}"
    return proc, held


def test_a_rig_held_by_another_process_is_skipped_and_waited_for(
    inventory: Path, lock_dir: Path
) -> None:
    rigs = load_rigs(inventory)
    proc, held = start_holder(inventory, lock_dir, "virtual-0")
    try:
        assert held == "virtual-0"
        holder = who_holds("virtual-0")
        assert holder is not None and (holder.pid, holder.worker, holder.ci_job) == (
            proc.pid,
            "gw7",
            "999",
        )
        with pytest.raises(
            NoRigAvailable,
            match=rf"virtual-0 held by pid {proc.pid} .*xdist worker gw7, CI job 999",
        ):
            reserve(rigs, name="virtual-0")
        with reserve(rigs, name="virtual") as other:
            assert other.rig.name == "virtual-1"
        # A reservation with a timeout gets the rig once the other process lets it go.
        result: list[str] = []
        waiter = threading.Thread(
            target=lambda: result.append(reserve(rigs, name="virtual-0", timeout=10).rig.name)
        )
        waiter.start()
        assert proc.stdin is not None
        proc.stdin.write("release\n")
        proc.stdin.flush()
        waiter.join(15)
        assert result == ["virtual-0"]
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("detect_with", ["who_holds", "reserve"])
def test_a_holder_killed_with_sigkill_leaves_a_reusable_rig(
    inventory: Path, lock_dir: Path, detect_with: str
) -> None:
    proc, _ = start_holder(inventory, lock_dir, "virtual-0")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    record = lock_dir / "virtual-0.holder.json"
    assert record.exists()  # the dead holder's record is still there: stale
    if detect_with == "who_holds":
        assert who_holds("virtual-0") is None
        assert not record.exists()  # detected and cleared
    else:
        start = time.monotonic()
        with reserve(load_rigs(inventory), name="virtual-0") as taken:
            assert time.monotonic() - start < 1.0
            assert taken.stale_holder is not None and taken.stale_holder.pid == proc.pid
            assert who_holds("virtual-0") == taken.holder


def test_n_auto_is_one_worker_per_free_matching_rig(inventory: Path, lock_dir: Path) -> None:
    rigs = load_rigs(inventory)
    assert auto_workers(rigs, cpus=8, lock_dir=lock_dir) == 2  # the two virtual rigs
    assert auto_workers(rigs, cpus=1, lock_dir=lock_dir) == 1  # virtual boards: no more than the cores
    assert auto_workers(rigs, tag="bench", cpus=1, lock_dir=lock_dir) == 1  # real rigs: not capped by cores
    with reserve(rigs, name="virtual-0", lock_dir=lock_dir):
        assert auto_workers(rigs, cpus=8, lock_dir=lock_dir) == 1  # a held rig is not counted
        with reserve(rigs, name="virtual-1", lock_dir=lock_dir):
            assert auto_workers(rigs, cpus=8, lock_dir=lock_dir) == 1  # never zero: the worker waits or skips
    with pytest.raises(UnknownRig):
        auto_workers(rigs, tag="nope", lock_dir=lock_dir)


def test_a_reader_racing_the_holders_record_waits_for_it(inventory: Path, lock_dir: Path) -> None:
    # The holder takes the lock, then writes its record; a second session asking in that
    # instant is told who holds the rig, not "an unrecorded holder" (CI met this race).
    rigs = load_rigs(inventory)
    reservation = Reservation(lock_dir)
    held = reservation.reserve(rigs, name="virtual-0")
    record = reservation.holder_file("virtual-0")
    text = record.read_text(encoding="utf-8")
    record.unlink()
    writer = threading.Timer(0.3, lambda: record.write_text(text, encoding="utf-8"))
    writer.start()
    try:
        holder = who_holds("virtual-0", lock_dir=lock_dir)
        assert holder is not None and holder.pid == os.getpid(), holder
        with pytest.raises(NoRigAvailable, match=rf"virtual-0 held by pid {os.getpid()}"):
            reservation.reserve(rigs, name="virtual-0")
    finally:
        writer.join()
        held.release()
