"""The fleet process: ``hil sim fleet`` (many boards' firmware in one process, or in
shard processes behind one) as a child process, reached through its first stdout line
and the broker, never by importing ``hil.sim``; its CPU and memory read from /proc, over
the fleet process and every shard its first line names.

After the first line the fleet prints only events: ``{"event": "shard_died", ...}`` when
a shard ended on its own. A thread reads them (and the end of the output, when the
fleet process itself ends) and calls ``on_broken`` with a message naming what broke, so a
load run stops at once with `FleetBroken` (infrastructure) instead of waiting out its
timeouts and reading the missing devices as lost readings."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from hil.load.errors import FleetBroken, LoadError
from hil.processes import die_with_parent, stop_group

WATCHER_JOIN_S = 5.0
"""How long `FleetProcess.stop` waits for the event thread once the fleet's output has ended."""
SHARD_STOP_GRACE_S = 10.0
"""How long a shard left behind by its parent has to end on SIGTERM before SIGKILL."""


def start_timeout(count: int) -> float:
    """Every board's flash file is programmed before the first line: allow for that."""
    return 60.0 + 0.1 * count


class FleetProcess:
    """``python -m hil sim fleet ...`` in its own process group; always stopped on exit."""

    def __init__(self, args: Sequence[str], log: Path, *, count: int) -> None:
        self.args = [sys.executable, "-m", "hil", "sim", "fleet", *args]
        self.log = log
        self.count = count
        self.proc: subprocess.Popen[str] | None = None
        self.hello: dict[str, Any] = {}
        self.broken: FleetBroken | None = None
        """Set (once) when a shard or the fleet process ended on its own."""
        self._on_broken: Callable[[FleetBroken], None] = lambda _exc: None
        self._lock = threading.Lock()
        self._stopping = False
        self._watcher: threading.Thread | None = None

    def start(self) -> FleetProcess:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("w") as stderr:
            self.proc = subprocess.Popen(
                self.args, stdout=subprocess.PIPE, stderr=stderr, text=True, preexec_fn=die_with_parent
            )
        try:
            line = self._first_line(start_timeout(self.count))
            if not line:
                raise LoadError(f"hil sim fleet exited ({self.proc.poll()}) before its first line:\n{self.tail()}")
            self.hello = json.loads(line)
        except BaseException:
            self.stop()
            raise
        self._watcher = threading.Thread(target=self._watch, name="fleet-events", daemon=True)
        self._watcher.start()
        return self

    def _watch(self) -> None:
        """Read the fleet's event lines until its output ends (the fleet process ended)."""
        assert self.proc is not None and self.proc.stdout is not None
        died: dict[str, Any] | None = None
        with contextlib.suppress(OSError, ValueError):  # ValueError: stdout closed by stop()
            for line in self.proc.stdout:
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    if isinstance(event, dict) and event.get("event") == "shard_died":
                        died = event
                        self._broke(
                            f"fleet shard {event.get('shard')} (pid {event.get('pid')}, devices "
                            f"{event.get('first')}..{event.get('last')}) died (exit {event.get('returncode')}): "
                            f"the fleet is broken, not its devices; fleet log: {self.log}"
                        )
        if died is None and not self._stopping:
            code = self.proc.wait()
            self._broke(f"hil sim fleet (pid {self.pid}) exited ({code}) during the run; fleet log: {self.log}")

    def _broke(self, message: str) -> None:
        with self._lock:
            if self.broken is not None or self._stopping:
                return
            self.broken = FleetBroken(message)
            callback = self._on_broken
        callback(self.broken)

    def when_broken(self, callback: Callable[[FleetBroken], None]) -> None:
        """Call ``callback`` (from the watching thread) when the fleet breaks; at once if
        it already has."""
        with self._lock:
            self._on_broken = callback
            broken = self.broken
        if broken is not None:
            callback(broken)

    @property
    def shards(self) -> list[dict[str, Any]]:
        """The fleet's shards as its first line names them (one, itself, when unsharded)."""
        shards = self.hello.get("shards")
        return list(shards) if isinstance(shards, list) else []

    def pids(self) -> list[int]:
        """The fleet process and its shard processes."""
        return list(dict.fromkeys([self.pid, *(int(s["pid"]) for s in self.shards)]))

    def tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-3000:]
        return ""

    def _first_line(self, timeout: float) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        stdout = self.proc.stdout
        got: list[str] = []
        reader = threading.Thread(target=lambda: got.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if reader.is_alive():
            raise LoadError(f"hil sim fleet printed nothing in {timeout:.0f} s:\n{self.tail()}")
        return got[0].strip() if got else ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu_seconds(self) -> float:
        """User + system CPU time of the fleet's processes (all their threads), from /proc;
        a process gone since counts nothing more."""
        total = 0.0
        for pid in self.pids():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = Path(f"/proc/{pid}/stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "; fields from #3 on
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
        return total

    def cpu_wait_seconds(self) -> float:
        """Time the fleet's threads were ready to run but waited for a CPU (all threads,
        /proc/PID/task/*/schedstat): CPU taken by other processes (or its own other threads)."""
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                for task in Path(f"/proc/{pid}/task").iterdir():
                    with contextlib.suppress(OSError, ValueError, IndexError):
                        total += int((task / "schedstat").read_text().split()[1])
        return total / 1e9

    def memory(self) -> dict[str, int]:
        """Over the fleet's processes, in bytes: VmRSS, VmHWM (the sum of their peaks),
        RssAnon and RssFile from /proc/PID/status; ``FlashPages``, the resident pages of the
        boards' flash (the mappings of files in the fleet's state dir, from
        /proc/PID/smaps); ``AnonBeforeBoards``, what the shards held before they made any
        board, and all the parent of shards holds (their interpreters and imports: a cost
        per process, not per device); and
        ``Processes``, how many processes the sums are over."""
        found = dict.fromkeys(("VmRSS", "VmHWM", "RssAnon", "RssFile"), 0)
        state_dir = str(self.hello.get("state_dir", "")) + os.sep
        flash = 0
        per_process = sum(int(s.get("anon_before_boards", 0)) for s in self.shards)
        shard_pids = {int(s["pid"]) for s in self.shards}
        for pid in self.pids():
            with contextlib.suppress(OSError, ValueError, IndexError):
                status = _status(pid)
                for key in found:
                    found[key] += status.get(key, 0)
                if pid not in shard_pids:  # the parent of shards runs no board: all of it is per process
                    per_process += status.get("RssAnon", 0)
                flash += mapped_rss(Path(f"/proc/{pid}/smaps"), state_dir)
        found["FlashPages"] = flash
        found["AnonBeforeBoards"] = per_process
        found["Processes"] = len(self.pids())
        return found

    def stop(self) -> int | None:
        """SIGTERM the group, then SIGKILL if it lingers; the fleet's exit code."""
        with self._lock:
            self._stopping = True
        if self.proc is None:
            return None
        code = stop_group(self.proc, grace_s=30)
        stop_orphaned_shards(self.shards)
        if self._watcher is not None:
            self._watcher.join(WATCHER_JOIN_S)  # its output has ended: no callback after this
        return code

    def __enter__(self) -> FleetProcess:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def stop_orphaned_shards(shards: list[dict[str, Any]], grace_s: float = SHARD_STOP_GRACE_S) -> list[int]:
    """End the shard processes that outlived the fleet process; the pids it had to end.

    The parent stops its shards on SIGTERM, but one SIGKILLed first (`stop_group`'s grace
    ran out: 10 000 boards under load take long to close) leaves them in their own
    sessions, and their parent-death SIGTERM can come while they are still too busy to
    act on it: two 5000-board shards ran on for 25 minutes at half a core each. A pid
    counts only while it is still a ``hil sim fleet --shard`` process (no reused pid)."""
    left = [int(s["pid"]) for s in shards if _is_shard(int(s.get("pid", 0)))]
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for pid in left:
        if not _wait_gone(pid, max(0.0, deadline - time.monotonic())):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, 5.0)
    return left


def _is_shard(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and b"fleet" in argv and b"--shard" in argv


def _wait_gone(pid: int, timeout: float) -> bool:
    """Until ``pid`` has ended (its pidfd readable), at most ``timeout`` s."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def mapped_rss(smaps: Path, prefix: str) -> int:
    """Resident bytes of the mappings in ``smaps`` (a /proc/PID/smaps) whose file is
    under ``prefix``."""
    total = 0
    counting = False
    with smaps.open() as lines:
        for line in lines:
            first = line.split(maxsplit=1)[0]
            if not first.endswith(":"):  # a mapping's header: "start-end perms offset dev inode [path]"
                fields = line.split(maxsplit=5)
                counting = len(fields) == 6 and fields[5].startswith(prefix)
            elif counting and first == "Rss:":
                total += int(line.split()[1]) * 1024
    return total


def _status(pid: int) -> dict[str, int]:
    """The ``kB`` fields of /proc/PID/status, in bytes."""
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields = value.split()
        if len(fields) == 2 and fields[1] == "kB":
            found[key] = int(fields[0]) * 1024
    return found
