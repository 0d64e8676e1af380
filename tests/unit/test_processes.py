"""Owned run dirs: a dead owner's dir is removed by the next run, a live one's never."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hil.processes import clear_stale, host_root, owned_dir, owner_of, process_start


def test_dirs_of_dead_owners_are_cleared_and_live_ones_kept(tmp_path: Path) -> None:
    mine = owned_dir(tmp_path, "session-")
    assert mine.parent == host_root(tmp_path) and mine.stat().st_mode & 0o777 == 0o700
    assert owner_of(mine) == (os.getpid(), process_start(os.getpid()))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = host_root(tmp_path) / f"session-{int(dead.stdout)}.{process_start(os.getpid())}.abc_12"
    (gone / "broker").mkdir(parents=True)
    (gone / "broker" / "passwords").write_text("secret")
    # The parent is alive, but with another start time this is a reused pid: its owner is dead.
    reused = host_root(tmp_path) / f"session-{os.getppid()}.{process_start(os.getppid()) + 1}.xyz"
    reused.mkdir()
    alive = host_root(tmp_path) / f"session-{os.getppid()}.{process_start(os.getppid())}.xyz"
    alive.mkdir()
    foreign = host_root(tmp_path) / "not-ours"
    foreign.mkdir()
    assert sorted(clear_stale(tmp_path)) == sorted([gone, reused])
    assert mine.exists() and alive.exists() and foreign.exists() and not gone.exists()


def test_clearing_a_root_that_does_not_exist_yet_is_nothing(tmp_path: Path) -> None:
    assert clear_stale(tmp_path / "none") == []


def test_a_child_whose_parent_died_before_the_death_signal_was_armed_does_not_run() -> None:
    # The race itself cannot be timed from a test; what the child sees in it can: a parent
    # pid that is not the one that forked it (here, a forking pid that is not our own).
    import hil.processes as processes

    def as_if_reparented() -> None:
        processes._forking_pid = -1
        processes.die_with_parent()

    child = subprocess.run([sys.executable, "-c", "print('ran')"], preexec_fn=as_if_reparented, capture_output=True, text=True)
    assert child.returncode != 0 and "ran" not in child.stdout
    normal = subprocess.run([sys.executable, "-c", "print('ran')"], preexec_fn=processes.die_with_parent, capture_output=True, text=True)
    assert normal.returncode == 0 and normal.stdout == "ran\n"
