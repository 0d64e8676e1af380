"""Runs killed at random moments leave nothing behind, and no secret readable meanwhile.

``tests/hil/test_smoke.py`` (a session: board, broker, provisioning) and
``tests/integration/test_console_board.py`` (tests that start their own boards) are run in
an isolated root (``HIL_CACHE_DIR``, ``HIL_LOCK_DIR``, ``TMPDIR``, ``XDG_CACHE_HOME`` and
``HIL_STATE_DIR`` all under one temp dir) and stopped at random moments: pytest alone is
SIGKILLed (not its process group: that is what a crash looks like, so its children must
die by themselves) or SIGTERMed (as CI cancels a job). After every kill:

* no process is left: none whose command line or environment names the isolated root,
  none of the killed run's descendants (bounded wait);
* a run that ended before its kill moment passed (a leftover of the previous kill would
  have made it fail).

All along, a watcher scans the root every 50 ms (and once more after each kill) for files
that hold a secret with any group or other permission bit (mode & 0o077): keys, the
broker's password file, NVS images, board tokens, a board flash whose NVS partition is
programmed, any file with a PEM private key or a mosquitto password line. At the end both
modules run once more and pass, and the killed runs' private run dirs and secret files
are gone (the next session removes a dead owner's dir).

Not used here: modules whose tests start boards detached with ``hil sim up``
(test_bench_cli, test_sim_liveness). Those boards are built to outlive the command that
started them, so only SIGTERM gets rid of them (it unwinds the test's ``finally``). After a
SIGKILL they keep running, orphaned.

Scale: by default (CI) 4 SIGKILLs and 2 SIGTERMs, shared between the two modules;
``HIL_KILL_STORM=full`` gives the issue's 20 SIGKILLs and 5 SIGTERMs (about 4 minutes on
two cores). The kill moments come from a seeded random: the seed is in every assertion
message, and ``HIL_KILL_STORM_SEED=N`` replays a run.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FULL = os.environ.get("HIL_KILL_STORM", "").lower() == "full"
SIGKILLS, SIGTERMS = (20, 5) if FULL else (4, 2)
MODULES = ("tests/hil/test_smoke.py", "tests/integration/test_console_board.py")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200 if FULL else 600)]

POLL_S = 0.05
GONE_WITHIN_S = 30.0  # after the kill: PDEATHSIG'd boards and brokers shut down in this time
TERM_EXIT_WITHIN_S = 90.0  # a SIGTERMed run unwinds (teardown stops its rig) in this time

SECRET_NAMES = {"server.key", "passwd", "nvs.bin", "control.token", "credentials.json", "key.pem"}
SECRET_MARKERS = (b"PRIVATE KEY", b":$7$", b"$argon2")  # PEM keys; mosquitto / amqtt password lines
BOARD_STATE = {
    "control.token",
    "flash.bin",
}  # a board's own, kept between runs as a real board keeps its flash
NVS = slice(
    0x9000, 0xD000
)  # the nvs partition of the virtual rig's table: provisioning lives there
CONTENT_LIMIT = 1 << 20


# -- what holds a secret -------------------------------------------------------------------
def holds_secret(path: Path) -> bool:
    name = path.name
    if name in SECRET_NAMES or name.endswith(".key"):
        return True
    try:
        if name == "flash.bin":  # a board's flash holds the device's secrets once provisioned
            with path.open("rb") as handle:
                handle.seek(NVS.start)
                return handle.read(NVS.stop - NVS.start).strip(b"\xff") != b""
        if path.stat().st_size > CONTENT_LIMIT:
            return False
        data = path.read_bytes()
    except OSError:  # gone meanwhile
        return False
    return any(marker in data for marker in SECRET_MARKERS)


def files(root: Path) -> Iterator[tuple[Path, os.stat_result]]:
    """Every regular file under ``root`` (symlinks not followed), with its lstat."""
    stack = [root]
    while stack:
        with contextlib.suppress(OSError), os.scandir(stack.pop()) as entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    stack.append(Path(entry.path))
                elif stat.S_ISREG(st.st_mode):
                    yield Path(entry.path), st


class SecretWatch:
    """Scans ``root`` every 50 ms for secret-holding files others may read. A file's
    content is judged once per (inode, size, mtime): only lax files are read at all."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.phase = "setup"
        self.found: dict[str, str] = {}  # path -> "mode 0o644 during <phase>"
        self.scans = 0
        self._judged: dict[tuple[str, int, int, int], bool] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def scan(self) -> None:
        for path, st in files(self.root):
            if not st.st_mode & 0o077:
                continue
            key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
            if key not in self._judged:
                self._judged[key] = holds_secret(path)
            if self._judged[key]:
                self.found.setdefault(
                    str(path), f"mode {oct(stat.S_IMODE(st.st_mode))} during {self.phase}"
                )
        self.scans += 1

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):  # files have no event to wait on from here
            self.scan()

    def __enter__(self) -> SecretWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.scan()


# -- processes -----------------------------------------------------------------------------
def _stat_fields(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline")
            .read_bytes()
            .replace(b"\0", b" ")
            .decode(errors="replace")
            .strip()
        )
    except OSError:
        return "?"


def processes_naming(marker: str) -> dict[int, str]:
    """Live processes (not zombies) whose command line or environment contains ``marker``."""
    needle = marker.encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            named = (
                needle in (entry / "cmdline").read_bytes()
                or needle in (entry / "environ").read_bytes()
            )
        except OSError:
            continue
        fields = _stat_fields(int(entry.name))
        if named and fields is not None and fields[0] != "Z":
            found[int(entry.name)] = _cmdline(int(entry.name))
    return found


@dataclass(frozen=True)
class Proc:
    pid: int
    start: str  # kernel start time: a reused pid is another process
    cmdline: str


def descendants(pid: int) -> list[Proc]:
    parents: dict[int, int] = {}
    starts: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))) is not None:
            parents[int(entry.name)], starts[int(entry.name)] = int(fields[1]), fields[19]
    found: list[Proc] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent:
                found.append(Proc(child, starts[child], _cmdline(child)))
                frontier.append(child)
    return found


def alive(proc: Proc) -> bool:
    fields = _stat_fields(proc.pid)
    return fields is not None and fields[0] != "Z" and fields[19] == proc.start


# -- runs ----------------------------------------------------------------------------------
@dataclass
class Storm:
    root: Path
    seed: int
    env: dict[str, str] = field(default_factory=dict)
    runs: int = 0

    def start(self, module: str) -> tuple[subprocess.Popen[bytes], Path]:
        self.runs += 1
        out = self.root / "out" / f"{self.runs:02d}-{Path(module).stem}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pytest", module, "-p", "no:cacheprovider", "-q",
               "--hil-log-dir", str(self.root / "logs" / f"{self.runs:02d}")]  # fmt: skip
        with out.open("wb") as handle:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=handle,
                                    stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        return proc, out

    def clean_run(self, module: str) -> float:
        """Run ``module`` to its end; it must pass. Returns its wall time."""
        started = time.monotonic()
        proc, out = self.start(module)
        try:
            proc.wait(timeout=400)
        finally:
            stop(proc)
        text = out.read_text(errors="replace")
        assert proc.returncode == 0 and re.search(r"\d+ passed", text), (
            f"seed {self.seed}: {module} did not pass in the isolated root ({proc.returncode}):\n{text[-4000:]}"
        )
        return time.monotonic() - started

    def wait_until_nothing_left(self, tree: list[Proc], what: str) -> None:
        deadline = time.monotonic() + GONE_WITHIN_S
        while True:
            left = {p.pid: p.cmdline for p in tree if alive(p)} | processes_naming(str(self.root))
            if not left:
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"seed {self.seed}: {GONE_WITHIN_S:.0f} s after {what}, still running: {left}"
                )
            time.sleep(POLL_S)  # other processes' deaths have no event to wait on from here


def stop(proc: subprocess.Popen[bytes]) -> None:
    """End a run this test started, with its whole process group (cleanup only)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def isolated_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "HIL_"))}
    dirs = {"HIL_CACHE_DIR": "cache", "HIL_LOCK_DIR": "locks", "TMPDIR": "tmp", "XDG_CACHE_HOME": "xdg",
            "HIL_STATE_DIR": "bench"}  # fmt: skip
    for var, name in dirs.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        env[var] = str(root / name)
    env["PYTHONPATH"] = str(ROOT)
    return env


def schedule(rng: random.Random) -> list[tuple[str, signal.Signals]]:
    """The kills, shared between the modules (each gets both kinds), in random order."""
    plan: list[tuple[str, signal.Signals]] = []
    for i, module in enumerate(MODULES):
        kills = SIGKILLS // len(MODULES) + (i < SIGKILLS % len(MODULES))
        terms = SIGTERMS // len(MODULES) + (i < SIGTERMS % len(MODULES))
        plan += [(module, signal.SIGKILL)] * kills + [(module, signal.SIGTERM)] * terms
    rng.shuffle(plan)
    return plan


def run_dirs(root: Path) -> list[Path]:
    """Sessions' private run dirs (broker keys, password file, NVS images)."""
    return sorted((root / "cache" / "run").glob("*/session-*"))


def test_runs_killed_at_random_moments_leave_nothing_and_the_next_run_passes(
    tmp_path: Path,
) -> None:
    seed = int(os.environ.get("HIL_KILL_STORM_SEED") or random.SystemRandom().randrange(2**32))
    rng = random.Random(seed)
    print(f"kill storm: seed {seed} (HIL_KILL_STORM_SEED={seed} replays it)", flush=True)
    root = tmp_path / "storm"
    storm = Storm(root, seed, isolated_env(root))
    started = time.monotonic()
    log: list[str] = []
    try:
        with SecretWatch(root) as watch:
            # One clean run of each: it passes here, builds the firmware cache, and says how
            # long a run lasts, the window the kill moments are drawn from.
            durations = {}
            for module in MODULES:
                watch.phase = f"the clean run of {module}"
                durations[module] = storm.clean_run(module)
            for n, (module, sig) in enumerate(schedule(rng), 1):
                at = rng.uniform(0.2, durations[module])
                what = f"kill {n} ({sig.name} of {module} at {at:.2f} s)"
                watch.phase = what
                proc, out = storm.start(module)
                try:
                    try:
                        proc.wait(timeout=at)
                    except subprocess.TimeoutExpired:
                        tree = descendants(proc.pid)
                        proc.send_signal(sig)  # pytest alone, not its group
                        try:
                            proc.wait(timeout=TERM_EXIT_WITHIN_S)
                        except subprocess.TimeoutExpired:
                            raise AssertionError(f"seed {seed}: {what}: the run did not end in "
                                                 f"{TERM_EXIT_WITHIN_S:.0f} s") from None  # fmt: skip
                        log.append(f"{what}: exit {proc.returncode}, {len(tree)} descendants")
                        print(log[-1], flush=True)  # shown with the failure, or live with -s
                    else:  # it ended before its moment: then it must have passed
                        text = out.read_text(errors="replace")
                        assert proc.returncode == 0, (
                            f"seed {seed}: {what}: failed by itself:\n{text[-4000:]}"
                        )
                        tree = []
                        log.append(f"{what}: ended first, passed")
                        print(log[-1], flush=True)
                    storm.wait_until_nothing_left(tree, what)
                    watch.scan()  # what the dead run left, judged at least once
                finally:
                    stop(proc)
            stale = run_dirs(root)
            # The next runs pass, the smoke suite's last: its session clears dead owners' dirs.
            for module in reversed(MODULES):
                watch.phase = f"the final run of {module}"
                storm.clean_run(module)
                storm.wait_until_nothing_left([], f"the final run of {module}")
        summary = (
            f"seed {seed}, {len(log)} kills in {time.monotonic() - started:.0f} s:\n"
            + "\n".join(log)
        )
        assert watch.scans > 0 and not watch.found, (
            f"secret files others could read ({summary}): {watch.found}"
        )
        left = sorted({str(d) for d in [*stale, *run_dirs(root)] if d.exists()})
        assert not left, f"private run dirs not cleared by the next run ({summary}): {left}"
        secrets_left = [
            str(p) for p, _ in files(root) if p.name not in BOARD_STATE and holds_secret(p)
        ]
        assert not secrets_left, f"secret files left behind ({summary}): {secrets_left}"
    finally:
        for pid in processes_naming(str(root)):  # only what this test's runs started
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
