"""The fleet process: ``hil sim fleet`` (many boards' firmware in one process) as a child
process, reached through its first stdout line and the broker, never by importing
``hil.sim``; its CPU and memory read from /proc."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from hil.load.errors import LoadError
from hil.processes import die_with_parent, stop_group


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
        return self

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
        """User + system CPU time of the fleet process (all its threads), from /proc."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "; fields from #3 on
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime

    def cpu_wait_seconds(self) -> float:
        """Time the fleet's threads were ready to run but waited for a CPU (all threads,
        /proc/PID/task/*/schedstat): CPU taken by other processes (or its own other threads)."""
        total = 0
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int((task / "schedstat").read_text().split()[1])
        return total / 1e9

    def memory(self) -> dict[str, int]:
        """VmRSS, VmHWM (peak), RssAnon and RssFile in bytes, from /proc/PID/status."""
        found: dict[str, int] = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                found[key] = int(value.split()[0]) * 1024
        return found

    def stop(self) -> int | None:
        """SIGTERM the group, then SIGKILL if it lingers; the fleet's exit code."""
        return None if self.proc is None else stop_group(self.proc, grace_s=30)

    def __enter__(self) -> FleetProcess:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
