"""What esptool says during a flash job: kept as lines, progress forwarded as numbers.

esptool reports through one process-wide logger (``esp_pylib``'s ``EspLog.instance``),
which prints Rich markup to the terminal. A flash job inside a test run must not scribble
over pytest's output, and two jobs on two threads must not mix their lines:
`capture_esptool_log` sends each thread's output to its own `EsptoolCapture` and gives the
logger back when the last job ends.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

from esp_pylib.logger import EspLog, EspLogBase
from rich.errors import MarkupError
from rich.text import Text

__all__ = ["EsptoolCapture", "capture_esptool_log"]

_log = logging.getLogger(__name__)


def _plain(markup: str) -> str:
    """esptool's messages are Rich markup (escaped brackets, styles); keep the text."""
    try:
        return Text.from_markup(markup).plain
    except MarkupError:
        return markup


class EsptoolCapture(EspLogBase):
    """What esptool says during one flash job: kept as lines, progress forwarded.

    Lines go to the report and to this module's `logging` logger at DEBUG; nothing is
    printed, so a flash inside a test run does not scribble over pytest's output.
    """

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.on_progress: Callable[[int, int], None] | None = None
        self._partial = ""

    def _add(self, text: str, *, markup: bool = True) -> None:
        *complete, self._partial = (self._partial + text).split("\n")
        for raw in complete:
            line = (_plain(raw) if markup else raw).rstrip()
            if line.strip():
                self.lines.append(line)
                _log.debug("esptool: %s", line)

    def note_line(self, line: str) -> None:
        """A line of our own, in the same log."""
        self.flush()
        self._add(line + "\n", markup=False)

    def flush(self) -> None:
        if self._partial:
            self._add("\n")

    def print(self, *args: Any, **kwargs: Any) -> None:
        sep, end = kwargs.get("sep", " "), kwargs.get("end", "\n")
        self._add(str(sep).join(str(a) for a in args) + str(end))

    def err(self, *args: Any, suggestion: str | None = None) -> None:
        self._add("Error: " + " ".join(str(a) for a in args) + "\n")

    def warn(self, *args: Any, suggestion: str | None = None) -> None:
        self._add("Warning: " + " ".join(str(a) for a in args) + "\n")

    def warning(self, message: str, suggestion: str | None = None) -> None:
        self.warn(message, suggestion=suggestion)

    def error(self, message: str, suggestion: str | None = None) -> None:
        self.err(message, suggestion=suggestion)

    def note(self, *args: Any) -> None:
        self._add("Note: " + " ".join(str(a) for a in args) + "\n")

    def hint(self, *args: Any) -> None:
        self._add("Hint: " + " ".join(str(a) for a in args) + "\n")

    def debug(self, *args: Any) -> None:
        pass

    def set_verbosity(self, mode: int | str) -> None:
        pass

    def progress_bar(
        self,
        cur_iter: int,
        total_iters: int,
        prefix: str = "",
        suffix: str = "",
        bar_length: int = 30,
    ) -> None:
        if self.on_progress is not None:
            self.on_progress(cur_iter, total_iters)


class _ThreadLogRouter(EspLogBase):
    """esptool's logger is one global; this sends each thread's esptool output to the
    capture of the flash job that thread runs, and everything else where it went before.

    Installed while at least one job runs, so flashing two boards from two threads works
    and esptool used elsewhere in the process is left alone.
    """

    def __init__(self, fallback: EspLogBase) -> None:
        self.fallback = fallback
        self.local = threading.local()

    def _target(self) -> EspLogBase:
        capture: EspLogBase | None = getattr(self.local, "capture", None)
        return capture if capture is not None else self.fallback

    def print(self, *args: Any, **kwargs: Any) -> None:
        self._target().print(*args, **kwargs)

    def err(self, *args: Any, suggestion: str | None = None) -> None:
        self._target().err(*args, suggestion=suggestion)

    def warn(self, *args: Any, suggestion: str | None = None) -> None:
        self._target().warn(*args, suggestion=suggestion)

    def warning(self, message: str, suggestion: str | None = None) -> None:
        self.warn(message, suggestion=suggestion)

    def error(self, message: str, suggestion: str | None = None) -> None:
        self.err(message, suggestion=suggestion)

    def note(self, *args: Any) -> None:
        self._target().note(*args)

    def hint(self, *args: Any) -> None:
        self._target().hint(*args)

    def debug(self, *args: Any) -> None:
        self._target().debug(*args)

    def stage(self, finish: bool = False) -> None:
        self._target().stage(finish=finish)

    def set_verbosity(self, mode: int | str) -> None:
        self._target().set_verbosity(mode)

    def set_info_stream(self, stream: Any) -> None:
        self._target().set_info_stream(stream)

    def progress_bar(
        self,
        cur_iter: int,
        total_iters: int,
        prefix: str = "",
        suffix: str = "",
        bar_length: int = 30,
    ) -> None:
        self._target().progress_bar(cur_iter, total_iters, prefix, suffix, bar_length)

    def counter_line(self, prefix: str, suffix: str, *, final: bool = False) -> None:
        self._target().counter_line(prefix, suffix, final=final)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target(), name)


_router_lock = threading.Lock()
_router: _ThreadLogRouter | None = None
_router_users = 0


@contextlib.contextmanager
def capture_esptool_log() -> Iterator[EsptoolCapture]:
    """What esptool says on this thread while the block runs, in a fresh `EsptoolCapture`."""
    global _router, _router_users
    capture = EsptoolCapture()
    with _router_lock:
        if _router is None:
            previous = EspLog.instance
            if previous is None:  # esptool installs its logger on import; be safe anyway
                from esptool.logger import EsptoolLogger

                previous = EsptoolLogger()
            _router = _ThreadLogRouter(previous)
            EspLog.instance = _router
        _router_users += 1
        router = _router
    router.local.capture = capture
    try:
        yield capture
    finally:
        router.local.capture = None
        capture.flush()
        with _router_lock:
            _router_users -= 1
            if _router_users == 0 and _router is not None:
                if EspLog.instance is _router:
                    EspLog.instance = _router.fallback
                _router = None
