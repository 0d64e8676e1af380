"""A gate's live progress: counts, done/total and an ETA from the last run's durations.

``hil gate`` tails the events its pytest run writes (`hil.reporting.gate_events`) and
shows them here: on a terminal one status line that updates in place; elsewhere (CI
logs) a status line every `EVERY` tests or every `INTERVAL_S` seconds. A failed or
broken test gets a line of its own as soon as it is done, in both.

The ETA adds up, for every test not done yet, its duration in the previous run
(``durations.json`` in the gate's output directory, kept per test across runs), less
what a running test has already spent; a test the previous run did not have counts as
the previous run's mean. Without a previous run the mean of this run's finished tests
stands in. With several workers the sum is divided among them.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

DURATIONS_FILE = "durations.json"
EVERY = 10  # tests between two status lines off a terminal
INTERVAL_S = 30.0  # seconds between two status lines off a terminal, whatever happens
REDRAW_S = 1.0  # a terminal's status line: its clock, at least this often
POLL_S = 0.25
MARKS = {"failed": "FAILED", "broken": "BROKEN"}


def load_durations(path: Path) -> dict[str, float]:
    """The per-test durations a previous gate run kept (``{}`` when there are none)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    found = data.get("durations") if isinstance(data, dict) else None
    if not isinstance(found, dict):
        return {}
    return {
        str(k): float(v) for k, v in found.items() if isinstance(v, int | float) and not isinstance(v, bool) and v >= 0
    }


def save_durations(path: Path, durations: Mapping[str, float]) -> None:
    """Keep this run's durations for the next run's ETA, over the ones kept before (a run
    of some tests only, a re-run, keeps the others' durations)."""
    kept = {**load_durations(path), **{k: round(v, 3) for k, v in durations.items()}}
    updated = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    path.write_text(json.dumps({"updated_at": updated, "durations": dict(sorted(kept.items()))}, indent=1) + "\n")


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class Progress:
    """What a gate's run has done so far, written to ``stream`` as it goes."""

    def __init__(
        self,
        stream: TextIO,
        *,
        tty: bool | None = None,
        every: int = EVERY,
        interval_s: float = INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        width: Callable[[], int] | None = None,
    ) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.every = max(1, every)
        self.interval_s = interval_s
        self.clock = clock
        self.width = width or (lambda: shutil.get_terminal_size().columns)
        self.begin("", {})

    # -- a run (an attempt: the first, or a re-run of broken tests) ------------------------
    def begin(self, title: str, history: Mapping[str, float], *, workers: int = 1, note: str = "") -> None:
        self.title = title
        self.history = dict(history)
        self.workers = max(1, workers)
        self.nodeids: list[str] | None = None
        self.counts: Counter[str] = Counter()
        self.durations: dict[str, float] = {}
        self.running: dict[str, float] = {}
        self.started = self.clock()
        self._last_line = self.started
        self._last_draw = 0.0
        self._drawn = False
        self._shown_done: int | None = None  # off a terminal: the count the last status line showed
        if title:
            self._line(f"{title}: {note}" if note else title)

    def event(self, event: Mapping[str, Any]) -> None:
        kind = event.get("event")
        if kind == "collected":
            self.nodeids = [str(n) for n in event.get("nodeids", [])]
            self._show()
        elif kind == "start":
            self.running[str(event.get("nodeid"))] = self.clock()
            if self.tty:
                self._draw()
        elif kind == "case":
            nodeid, outcome = str(event.get("nodeid")), str(event.get("outcome"))
            self.running.pop(nodeid, None)
            self.counts[outcome] += 1
            duration = event.get("duration_s")
            if isinstance(duration, int | float):
                self.durations[nodeid] = float(duration)
            if outcome in MARKS:
                message = str(event.get("message") or "")
                self._line(f"  {MARKS[outcome]} {nodeid}" + (f": {message}" if message else ""))
            if self.tty or self.done % self.every == 0:
                self._show()

    def tick(self) -> None:
        """Time passes: the terminal's clock, or a line off a terminal every ``interval_s``."""
        now = self.clock()
        if self.tty and now - self._last_draw >= REDRAW_S:
            self._draw()
        elif not self.tty and now - self._last_line >= self.interval_s:
            self._show()

    def end(self) -> None:
        if self.title and self.nodeids is not None and (self.tty or self._shown_done != self.done):
            self._show()
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False

    # -- what is shown -------------------------------------------------------------------
    @property
    def done(self) -> int:
        return sum(self.counts.values())

    def eta_s(self) -> float | None:
        """Seconds until the run is done, or None when nothing tells yet."""
        if self.nodeids is None:
            return None
        known = self.history or self.durations  # the previous run's, else this run's so far
        fallback = sum(known.values()) / len(known) if known else None
        now = self.clock()
        left = 0.0
        for nodeid in self.nodeids:
            if nodeid in self.durations:
                continue
            expected = self.history.get(nodeid, fallback)
            if expected is None:
                return None
            if nodeid in self.running:
                expected = max(0.0, expected - (now - self.running[nodeid]))
            left += expected
        return left / self.workers

    def status(self) -> str:
        elapsed = format_duration(self.clock() - self.started)
        if self.nodeids is None:
            return f"  collecting tests; {elapsed} elapsed"
        counts = ", ".join(f"{self.counts[o]} {o}" for o in ("passed", "failed", "broken", "skipped"))
        eta = self.eta_s()
        left = "ETA not known yet" if eta is None else f"ETA {format_duration(eta)}"
        return f"  {self.done}/{len(self.nodeids)} done: {counts}; {elapsed} elapsed, {left}"

    def _show(self) -> None:
        if self.tty:
            self._draw()
        else:
            self._line(self.status())
            self._shown_done = self.done

    def _draw(self) -> None:
        text = self.status()
        if self.running:
            text += f" | {next(reversed(self.running))}"
        width = max(20, self.width() - 1)  # never wrap: a wrapped line cannot be redrawn
        self.stream.write("\r\x1b[K" + (text if len(text) <= width else text[: width - 1] + "…"))
        self.stream.flush()
        self._drawn = True
        self._last_draw = self.clock()

    def _line(self, text: str) -> None:
        if self.tty and self._drawn:
            self.stream.write("\r\x1b[K")
        self.stream.write(text + "\n")
        self.stream.flush()
        self._last_line = self.clock()
        if self.tty and self._drawn:
            self._draw()


class EventTail:
    """Feeds the lines a pytest run appends to ``path`` to ``progress``, from a thread,
    while the run goes on (``with EventTail(...): run()``); the rest when it is over."""

    def __init__(self, path: Path, progress: Progress, *, poll_s: float = POLL_S) -> None:
        self.path = path
        self.progress = progress
        self.poll_s = poll_s
        self._offset = 0
        self._partial = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hil-gate-progress", daemon=True)

    def __enter__(self) -> EventTail:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
        self._drain()
        self.progress.end()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._drain()
            self.progress.tick()

    def _drain(self) -> None:
        try:
            with self.path.open("rb") as file:
                file.seek(self._offset)
                data = file.read()
        except OSError:
            return
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    self.progress.event(event)
