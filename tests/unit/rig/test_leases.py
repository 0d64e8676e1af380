"""Leases (`hil rigs lock | release | wait`): a rig held beyond one process, honoured by
every reservation of another owner, ending by itself at its time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hil.rig import reservation as reservation_module
from hil.rig.errors import NoRigAvailable, ReservationError
from hil.rig.reservation import Holder, Reservation

ALICE = Holder(pid=4242, host="ci-7", user="alice", since=time.time())
ROOT = Path(__file__).resolve().parents[3]


def test_another_owner_s_lease_keeps_sessions_out_and_says_who_until_when(inventory: Path, lock_dir: Path) -> None:
    from hil.rig.rigfile import load_rigs

    rigs = load_rigs(inventory)
    leases = Reservation(lock_dir)
    lease = leases.lock("virtual-0", 3600, holder=ALICE)
    assert lease.until is not None and lease.until > time.time() + 3500
    held = leases.who_holds("virtual-0")
    assert held == lease
    assert held.describe().startswith("alice on ci-7 (hil rigs lock, pid 4242)")
    assert "(a lease)" in held.describe()
    # A session takes the pool's other rig; asked for this one, it is refused naming alice.
    assert leases.reserve(rigs, name="virtual").rig.name == "virtual-1"
    with pytest.raises(NoRigAvailable, match=r"virtual-0 held by alice on ci-7 \(hil rigs lock, pid 4242\).*until"):
        leases.reserve(rigs, name="virtual-0")
    with pytest.raises(NoRigAvailable, match="held by alice on ci-7"):
        leases.lock("virtual-0", 60)  # nor can another owner lease it over hers


def test_the_leaseholder_s_own_sessions_may_use_the_rig(inventory: Path, lock_dir: Path) -> None:
    from hil.rig.rigfile import load_rigs

    leases = Reservation(lock_dir)
    leases.lock("virtual-0", 3600)
    with leases.reserve(load_rigs(inventory), name="virtual-0") as held:
        assert held.rig.name == "virtual-0"
        with pytest.raises(NoRigAvailable, match=f"held by pid {os.getpid()} on "):
            leases.lock("virtual-0", 60)  # a session holds it now: named, not leased over


def test_a_lease_ends_by_itself_at_its_time(inventory: Path, lock_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hil.rig.rigfile import load_rigs

    leases = Reservation(lock_dir)
    lease = leases.lock("virtual-0", 7200, holder=ALICE)
    assert lease.until is not None
    later = lease.until + 1
    monkeypatch.setattr(reservation_module.time, "time", lambda: later)  # two hours on
    assert leases.who_holds("virtual-0") is None
    assert not leases.lease_file("virtual-0").exists()  # cleared
    with leases.reserve(load_rigs(inventory), name="virtual-0") as held:
        assert held.rig.name == "virtual-0"


def test_only_the_owner_releases_a_lease_unless_forced(lock_dir: Path) -> None:
    leases = Reservation(lock_dir)
    leases.lock("virtual-0", 3600, holder=ALICE)
    with pytest.raises(ReservationError, match=r"leased by alice on ci-7.*not by you"):
        leases.release_lease("virtual-0")
    assert leases.release_lease("virtual-0", anyone=True) is not None
    assert leases.who_holds("virtual-0") is None
    mine = leases.lock("virtual-0", 3600)
    assert leases.release_lease("virtual-0") == mine
    assert leases.release_lease("virtual-0") is None


def test_wait_free_returns_at_once_when_free_and_names_who_holds_at_its_timeout(lock_dir: Path) -> None:
    leases = Reservation(lock_dir)
    assert leases.wait_free("virtual-0", timeout=0) is None
    leases.lock("virtual-0", 3600, holder=ALICE)
    still = leases.wait_free("virtual-0", timeout=0)
    assert still is not None and still.user == "alice"
    leases.lock("virtual-1", 3600)  # one's own lease is no reason to wait
    assert leases.wait_free("virtual-1", timeout=0) is None


def test_wait_free_ends_when_the_holder_lets_go(lock_dir: Path) -> None:
    """A session in another process holds the rig; the wait ends when it exits."""
    leases = Reservation(lock_dir)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from hil.rig.reservation import Reservation; "
         f"lock = Reservation({str(lock_dir)!r})._lock('virtual-0'); lock.acquire(); print('held', flush=True); "
         "sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert leases.wait_free("virtual-0", timeout=0) is not None
        assert holder.stdin is not None
        holder.stdin.close()  # it exits: the kernel drops its flock
        assert leases.wait_free("virtual-0", timeout=30) is None
    finally:
        holder.kill()
        holder.wait()


def test_hil_rigs_lock_lists_release_and_refuses_bad_input(lock_dir: Path) -> None:
    def hil(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hil", "rigs", *args, "--lock-dir", str(lock_dir)],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip

    locked = hil("lock", "virtual-0", "--for", "1h30m")
    assert locked.returncode == 0, locked.stderr
    assert "virtual-0 locked by " in locked.stdout and "release it with: hil rigs release virtual-0" in locked.stdout
    lease = json.loads(Reservation(lock_dir).lease_file("virtual-0").read_text())
    assert 5300 < lease["until"] - time.time() <= 5400
    listing = subprocess.run([sys.executable, "-m", "hil", "rigs", "--json", "--lock-dir", str(lock_dir)],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    rows = {row["name"]: row for row in json.loads(listing.stdout)}
    assert "until" in rows["virtual-0"]["held_by"] and "(a lease)" in rows["virtual-0"]["held_by"]
    assert rows["virtual-1"]["held_by"] is None
    released = hil("release", "virtual-0")
    assert released.returncode == 0 and "virtual-0 released" in released.stdout
    assert not Reservation(lock_dir).lease_file("virtual-0").exists()
    for args, said in (
        (("lock", "virtual-0", "--for", "0"), "give a duration > 0"),
        (("lock", "virtual-0", "--for", "soon"), "give a duration like 2h"),
        (("lock", "virtual"), "'virtual' is a pool: name one of its rigs"),
        (("wait", "virtal-0"), "did you mean 'virtual-0'"),
    ):
        result = hil(*args)
        assert result.returncode == 2 and said in result.stderr, (args, result.stderr)
