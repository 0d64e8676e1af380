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
