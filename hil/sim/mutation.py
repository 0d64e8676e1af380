"""Mutants and line recording inside a board process, for ``bench/mutate.py``.

Two switches, read from the environment when ``hil sim board`` (or ``hil sim fleet``)
starts, before any firmware module is imported (``hil/__main__.py`` calls
``install_from_environment``):

- ``HIL_MUTANT=<dotted.module>=<mutant id>``: an import hook compiles that one module
  from its source with that one mutation (``hil.sim.mutants``). Nothing is written to
  disk (no file, no ``__pycache__``), so the tree stays as it is for everyone else, and
  only this process runs the mutant: the pytest process that started the board imports
  the same modules unmutated.
- ``HIL_MUTATION_TRACE=<dir>``: record which lines of the firmware modules run, per test.
  The test being run is named by the pytest plugin in the file ``$HIL_MUTATION_CONTEXT``
  (it writes the test's node id there as each test starts); lines go to
  ``<dir>/lines-<pid>.tsv`` as ``context<TAB>file<TAB>line<TAB>source``, each once per
  context, appended as they are first seen, so a board killed with SIGKILL loses nothing.
  ``source`` names the text the board ran (``<dir>/source-<sha>.py``, read as it starts):
  others edit these files during a run, and a line number means something only together
  with the text it was counted in.

The recorder is a ``sys.settrace`` hook that traces only the firmware files: coverage.py
is not in the project's lock, and line hits per test are all that is needed here.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import CodeType, FrameType, ModuleType
from typing import IO, Any

MUTANT_ENV = "HIL_MUTANT"
TRACE_ENV = "HIL_MUTATION_TRACE"
CONTEXT_ENV = "HIL_MUTATION_CONTEXT"
# The modules whose lines are recorded (and the only ones a mutant may name): the
# firmware model and the library code it runs as the device (config validation, sensor
# driver, the contract's topics and ranges).
TRACED_MODULES = (
    "hil.sim.firmware.reference",
    "hil.sim.firmware.mqtt_link",
    "hil.sim.firmware.watchdog",
    "hil.sim.firmware.ota",
    "hil.sim.firmware.http_client",
    # The reference app's tasks (reference.py only wires them together).
    "hil.sim.firmware.tasks.shared",
    "hil.sim.firmware.tasks.outbox",
    "hil.sim.firmware.tasks.boot",
    "hil.sim.firmware.tasks.wifi",
    "hil.sim.firmware.tasks.mqtt",
    "hil.sim.firmware.tasks.sensor",
    "hil.sim.firmware.tasks.health",
    "hil.sim.firmware.tasks.commands",
    "hil.sim.firmware.tasks.config_update",
    "hil.sim.firmware.tasks.ota_update",
    "hil.sim.firmware.tasks.program_runner",
    # The program runtime is a package: its modules, not its re-exporting __init__.
    "hil.sim.firmware.programs.interface",
    "hil.sim.firmware.programs.errors",
    "hil.sim.firmware.programs.reader",
    "hil.sim.firmware.programs.values",
    "hil.sim.firmware.programs.printer",
    "hil.sim.firmware.programs.frames",
    "hil.sim.firmware.programs.nodes",
    "hil.sim.firmware.programs.compiler",
    "hil.sim.firmware.programs.procedures",
    "hil.sim.firmware.programs.machine",
    "hil.sim.firmware.programs.deploy",
    "hil.device.settings",
    "hil.bme280.driver",
    "hil.device.contract",
)


class MutationError(Exception):
    """A mutant could not be applied (bad id, module already imported)."""


class _MutantLoader(importlib.machinery.SourceFileLoader):
    """Compiles its module from source with one mutation; never reads or writes bytecode."""

    def __init__(self, fullname: str, path: str, mutant_id: str) -> None:
        super().__init__(fullname, path)
        self.mutant_id = mutant_id

    def get_code(self, fullname: str) -> CodeType:
        from hil.sim.mutants import mutate

        source = self.get_data(self.path).decode("utf-8")
        tree, _mutant = mutate(source, fullname, self.mutant_id)
        code: CodeType = compile(tree, self.path, "exec", dont_inherit=True)
        return code


class MutantFinder(importlib.abc.MetaPathFinder):
    """Finds ``module`` as usual, then hands it to a loader that applies the mutant."""

    def __init__(self, module: str, mutant_id: str) -> None:
        self.module = module
        self.mutant_id = mutant_id

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.module:
            return None  # every other module loads as it always does
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.origin is None:
            raise MutationError(f"{MUTANT_ENV}: module {fullname} not found")
        spec.loader = _MutantLoader(fullname, spec.origin, self.mutant_id)
        spec.cached = None  # no __pycache__ entry for a mutant
        return spec


def parse_mutant(value: str) -> tuple[str, str]:
    """``module=id`` from ``$HIL_MUTANT``."""
    module, sep, mutant_id = value.partition("=")
    if not sep or module not in TRACED_MODULES:
        raise MutationError(f"{MUTANT_ENV}={value!r}: expected MODULE=ID with MODULE one of {', '.join(TRACED_MODULES)}")
    return module, mutant_id


def install_mutant(module: str, mutant_id: str) -> MutantFinder:
    if module in sys.modules:
        raise MutationError(f"{MUTANT_ENV}: {module} is already imported; install the hook earlier")
    finder = MutantFinder(module, mutant_id)
    sys.meta_path.insert(0, finder)
    return finder


class LineRecorder:
    """Records (context, file, line) for the traced files, each the first time it runs."""

    def __init__(self, out_dir: Path, files: set[str], context_file: Path | None) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self._out: IO[str] = (out_dir / f"lines-{os.getpid()}.tsv").open("a", buffering=1)
        self._files = files
        self._traced: dict[str, str | None] = {}  # co_filename -> its real path if traced
        self._source: dict[str, str] = {}  # real path -> the sha of the text it ran
        for path in files:
            text = Path(path).read_bytes()
            sha = hashlib.sha1(text).hexdigest()[:12]
            saved = out_dir / f"source-{sha}.py"
            if not saved.exists():
                saved.write_bytes(text)
            self._source[path] = sha
        self._context_file = context_file
        self._context = ""
        self._context_stamp = -1.0
        self._seen: set[tuple[str, str, int]] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        self._refresh_context()
        poller = threading.Thread(target=self._poll_context, name="mutation-context", daemon=True)
        poller.start()
        # Threads started from now on (asyncio.to_thread's workers) are traced too.
        threading.settrace(self._on_call)
        sys.settrace(self._on_call)

    def _poll_context(self) -> None:
        # The test changes a few times a minute; a 20 ms poll attributes all but the
        # first instants of a test to it (those are its own setup's requests anyway).
        while True:
            self._refresh_context()
            time.sleep(0.02)

    def _refresh_context(self) -> None:
        if self._context_file is None:
            return
        try:
            stamp = self._context_file.stat().st_mtime_ns
            if stamp != self._context_stamp:
                self._context_stamp = stamp
                self._context = self._context_file.read_text().strip()
        except OSError:
            pass

    def _on_call(self, frame: FrameType, event: str, arg: Any) -> Any:
        name = frame.f_code.co_filename
        if name not in self._traced:
            real = os.path.realpath(name)
            self._traced[name] = real if real in self._files else None
        if self._traced[name] is not None:
            self._on_line(frame, "line", None)  # where a resumed coroutine goes on
            return self._on_line
        return None

    def _on_line(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            key = (self._context, self._traced[frame.f_code.co_filename] or "", frame.f_lineno)
            if key not in self._seen:
                with self._lock:
                    if key not in self._seen:
                        self._seen.add(key)
                        self._out.write(f"{key[0]}\t{key[1]}\t{key[2]}\t{self._source.get(key[1], '')}\n")
        return self._on_line


def module_file(module: str) -> str:
    """The source path of a traced module, without importing it."""
    spec = importlib.machinery.PathFinder.find_spec(module.rsplit(".", 1)[-1], _package_path(module))
    if spec is None or spec.origin is None:
        raise MutationError(f"module {module} not found")
    return os.path.realpath(spec.origin)


def _package_path(module: str) -> list[str]:
    package = module.rsplit(".", 1)[0]
    return list(importlib.import_module(package).__path__)


def install_from_environment(environ: dict[str, str] | None = None) -> None:
    """Apply ``$HIL_MUTANT`` and start the ``$HIL_MUTATION_TRACE`` recorder, if set."""
    env = os.environ if environ is None else environ
    mutant = env.get(MUTANT_ENV)
    if mutant:
        install_mutant(*parse_mutant(mutant))
    trace = env.get(TRACE_ENV)
    if trace:
        files = {module_file(m) for m in TRACED_MODULES}
        context = env.get(CONTEXT_ENV)
        LineRecorder(Path(trace), files, Path(context) if context else None).start()
