"""Child processes that cannot outlive the test run that started them.

Boards, brokers and proxies run in their own process groups (so a Ctrl-C in the
terminal does not hit them before teardown does, and teardown can kill a whole group).
That alone would orphan them when pytest is SIGKILLed; Linux's parent-death signal makes
the kernel SIGTERM them the moment their parent dies, so the next run finds nothing left.

What a killed run cannot remove itself, its private files, lives in directories named
after their owner process (``owned_dir``); the next run removes those whose owner is dead
(``clear_stale``), as a stale rig lock is cleared.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

_PR_SET_PDEATHSIG = 1
# Resolved here, in the parent: the child between fork and exec of a multi-threaded
# process (pytest with gRPC, paho, board threads) must not dlopen or allocate, only call.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


# The pid of the process that forks, written just before every fork: the child reads it to
# tell whether its parent died before the death signal was armed.
_forking_pid = os.getpid()


def _note_forking_pid() -> None:
    global _forking_pid
    _forking_pid = os.getpid()


os.register_at_fork(before=_note_forking_pid)


def die_with_parent() -> None:
    """``preexec_fn`` for Popen: SIGTERM this child when its parent process dies."""
    os.setsid()
    # The signal mask survives fork and exec: a parent that blocks SIGTERM to sigwait() for
    # it (the bench broker's keeper) would hand on a child that ignores its SIGTERM.
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        # A parent that died between fork and prctl sends no signal: we were re-parented.
        if os.getppid() != _forking_pid:
            os._exit(1)


#: Set by the pytest plugin to its own pid: a process a test starts detached (``hil sim up``,
#: ``hil broker up``) still ends with the run, even a SIGKILLed one.
OWNER_ENV = "HIL_OWNER_PID"


def exit_with_owner() -> None:
    """In a detached process: SIGTERM ourselves when the process named by ``HIL_OWNER_PID``
    ends (waited on as an event, a pidfd), so the normal shutdown runs. Nothing without it."""
    value = os.environ.get(OWNER_ENV, "")
    if not value.isdigit():
        return
    try:
        owner = os.pidfd_open(int(value))
    except ProcessLookupError:  # gone already: we were started by a run that is over
        os.kill(os.getpid(), signal.SIGTERM)
        return
    except OSError:  # no pidfds here (Linux < 5.3): keep the detached behaviour
        return

    def watch() -> None:
        select.select([owner], [], [])
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="owner-watch", daemon=True).start()


def stop_group(proc: subprocess.Popen[str], *, grace_s: float) -> int | None:
    """Stop a child started with ``die_with_parent`` (its own process group): SIGTERM the
    group, SIGKILL it if the child lingers past ``grace_s``, then SIGKILL whatever of the
    group is left (grandchildren). Returns the child's exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.stdout is not None:
        proc.stdout.close()
    return proc.returncode


# -- private run directories a killed run leaves behind ------------------------------------
# A session's private files (broker keys and password file, NVS images with secrets) live
# in a directory named after the process that owns it: ``<prefix><pid>.<start>.<random>``,
# where ``start`` is the process's start time (Linux: /proc/<pid>/stat, in clock ticks
# since boot), so a pid reused by another process does not keep a dead owner's dir alive.
# The name is set atomically by mkdtemp, so there is no moment when a dir exists without
# its owner. Roots are per host (pids mean nothing on another host sharing the cache).
_OWNED_RE = re.compile(r"^(?P<prefix>.*?)(?P<pid>\d+)\.(?P<start>\d+)\.[A-Za-z0-9_]+$")


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat's fields from the state on (field 3), or None without /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()  # the command name may hold spaces and parentheses


def process_start(pid: int) -> int:
    """``pid``'s start time in clock ticks since boot (0 where /proc does not say)."""
    fields = _stat(pid)
    return int(fields[19]) if fields else 0  # field 22


def _alive(pid: int, start: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        pass
    fields = _stat(pid)
    if fields is None:  # no /proc: take the pid's word
        return True
    return fields[0] != "Z" and (start == 0 or int(fields[19]) == start)


def host_root(root: Path) -> Path:
    """``root/<hostname>``: where this host's owned dirs go."""
    host = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "localhost"
    return root / host


def owned_dir(root: Path, prefix: str) -> Path:
    """A new private (0700) dir under ``host_root(root)`` owned by this process: removed by
    ``clear_stale`` once this process is dead, whoever calls it (the next run)."""
    parent = host_root(root)
    parent.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{pid}.{process_start(pid)}.", dir=parent))


def owner_of(path: Path) -> tuple[int, int] | None:
    """(pid, start time) of an owned dir's process, or None for a name not made by ``owned_dir``."""
    found = _OWNED_RE.match(path.name)
    return None if found is None else (int(found["pid"]), int(found["start"]))


def clear_stale(root: Path) -> list[Path]:
    """Remove this host's owned dirs under ``root`` whose process is dead (a SIGKILLed
    run's); return them. Dirs of live processes (other sessions) are left alone."""
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for entry in host_root(root).iterdir():
            owner = owner_of(entry)
            if owner is None or not entry.is_dir() or _alive(*owner):
                continue
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed
