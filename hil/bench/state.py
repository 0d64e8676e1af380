"""The bench state dir: what ``hil sim up`` and ``hil broker up`` left running, and how to
find and stop it again from another command, another shell, or after a crash.

Unlike a test session's children (which die with the session, `hil.processes`), bench
processes are meant to outlive the command that started them: they run detached in their
own session, and a JSON record in the state dir names each one by pid *and* kernel start
time, so a pid the kernel has since given to another process is never signalled. A record
whose processes are all gone is stale (the machine rebooted, someone SIGKILLed them) and is
cleared by the next ``up`` (rule 5).

Layout (``--state-dir``, else ``$HIL_STATE_DIR``, else ``<hil cache root>/bench``)::

    sim.json            the boards (or the fleet) hil sim up started
    boards/board-N/     each board's flash and identity (kept by ``down``, as a real
                        board keeps its flash; ``down --purge`` removes them)
    fleet/              the fleet's boards
    broker.json         the broker hil broker up started
    broker/             its config, CA, keys and credentials.json (mode 0700)
    logs/               stdout and stderr of every process started here
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from hil.firmware.catalog import cache_root

STATE_DIR_ENV = "HIL_STATE_DIR"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
POLL_S = 0.05  # a detached process has no event to wait on but its output and its /proc entry
LOCK_TIMEOUT_S = 60.0


class BenchError(Exception):
    """A bench command cannot do what was asked; the message names the problem and the fix."""


class BenchInputError(BenchError):
    """Bad input (exit code 2): reported before anything is started or touched."""


def state_dir(explicit: str | Path | None = None) -> Path:
    """``--state-dir``, else ``$HIL_STATE_DIR``, else ``<cache root>/bench``."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get(STATE_DIR_ENV)
    return Path(env).expanduser() if env else cache_root() / "bench"


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """One ``up``/``down`` at a time per state dir (an OS lock, gone if its holder dies)."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(directory / "bench.lock"), timeout=LOCK_TIMEOUT_S):
            yield
    except Timeout:
        raise BenchError(f"{directory} is locked by another hil command for {LOCK_TIMEOUT_S:.0f} s") from None


# -- processes ----------------------------------------------------------------------------
def start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), None if it is gone or a
    zombie. With the pid, it names one process for good: pids are reused, this pair is not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2 (comm) may hold spaces and parentheses: split after its closing one.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


@dataclass(frozen=True)
class ProcessRecord:
    """A detached process: its pid (also its process group) and its kernel start time."""

    pid: int
    started: int
    log: str

    def alive(self) -> bool:
        return start_time(self.pid) == self.started

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> bool:
        """SIGTERM its process group, wait, then SIGKILL what is left. A process that is
        already gone (or whose pid now belongs to another) is left alone. True once it is
        gone; False if it outlived SIGKILL too (stuck in the kernel): never say "stopped" then."""
        if not self.alive():
            return True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            time.sleep(POLL_S)  # not our child: nothing to wait() on
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            deadline = time.monotonic() + timeout
            while self.alive() and time.monotonic() < deadline:
                time.sleep(POLL_S)
        return not self.alive()


def spawn_detached(
    args: Sequence[str], logs: Path, name: str, *, timeout: float = START_TIMEOUT_S
) -> tuple[ProcessRecord, dict[str, Any]]:
    """Start ``args`` in its own session, detached from this command (it survives it),
    stdout to ``logs/<name>.out``, stderr to ``logs/<name>.log``; wait for the first stdout
    line, a JSON object (the hello of ``hil sim board`` and friends), and return both."""
    logs.mkdir(parents=True, exist_ok=True)
    out_path, log_path = logs / f"{name}.out", logs / f"{name}.log"
    with out_path.open("w") as out, log_path.open("w") as log:
        proc = subprocess.Popen(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=log,
            start_new_session=True,  # own session and process group: no terminal, no Ctrl-C
            close_fds=True,
        )
    started = start_time(proc.pid)
    record = ProcessRecord(proc.pid, started if started is not None else -1, str(log_path))
    deadline = time.monotonic() + timeout
    while True:
        text = out_path.read_text()
        if "\n" in text:
            hello: dict[str, Any] = json.loads(text.split("\n", 1)[0])
            return record, hello
        code = proc.poll()
        if code is not None:
            tail = log_path.read_text(errors="replace").strip()[-2000:]
            if code == 2:  # the convention of every hil command: bad input, nothing touched
                raise BenchInputError(tail.splitlines()[-1] if tail else f"{name}: bad input")
            raise BenchError(f"{name} exited with {code} before it was ready: {tail or '(no output)'}")
        if time.monotonic() > deadline:
            record.stop()
            proc.wait()
            raise BenchError(f"{name} printed nothing in {timeout:.0f} s; see {log_path}")
        time.sleep(POLL_S)


# -- records --------------------------------------------------------------------------------
def read_record(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise BenchError(f"{path}: corrupt ({exc}); stop what it names by hand and delete it") from None
    return data


def write_record(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def processes(record: dict[str, Any]) -> list[ProcessRecord]:
    return [ProcessRecord(**p["process"]) for p in record.get("items", [])]


def item(process: ProcessRecord, hello: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"process": asdict(process), **hello, **extra}
